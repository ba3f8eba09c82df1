/*-------------------------------------------------------------------------
 *
 * guc.h
 *	  The write_scaling.* settings.
 *
 *-------------------------------------------------------------------------
 */
#ifndef WS_GUC_H
#define WS_GUC_H

extern int	ws_max_event_stores;
extern bool ws_workers_enabled;
extern char *ws_worker_role;
extern int	ws_launcher_naptime;
extern int	ws_snapshot_naptime;
extern int	ws_snapshot_batch_size;
extern int	ws_batch_rows;
extern int	ws_batch_bytes;
extern bool ws_buffered_async_commit;
extern bool ws_shard_one_round_trip;
extern int	ws_queue_workers;
extern int	ws_queue_batch_size;
extern int	ws_queue_naptime;
extern int	ws_queue_rotation;
extern int	ws_request_retention;

extern void ws_define_gucs(void);

#endif							/* WS_GUC_H */

/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  The launcher and the per-database snapshot workers.
 *
 *-------------------------------------------------------------------------
 */
#ifndef WS_WORKER_H
#define WS_WORKER_H

#include "postgres.h"

#include "datatype/timestamp.h"

/* Databases whose workers shared memory can track. */
#define WS_MAX_DATABASES		64

/* One database's worker, as ws.stat_workers shows it. */
typedef struct WsWorkerReport
{
	Oid			dboid;
	int			pid;			/* 0 when not running */
	const char *state;
	TimestampTz last_pass;		/* 0 before the first */
	int64		streams_behind;
	int64		snapshots_taken;
	int64		errors;
} WsWorkerReport;

extern Size ws_worker_shmem_size(void);
extern void ws_worker_shmem_init(void);
extern void ws_register_launcher(void);
extern void ws_worker_register_callbacks(void);
extern int	ws_worker_report(WsWorkerReport **reports);
extern void ws_wake_launcher(void);
extern bool ws_worker_begin_transaction(void);

#endif							/* WS_WORKER_H */

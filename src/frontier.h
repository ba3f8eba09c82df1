/*-------------------------------------------------------------------------
 *
 * frontier.h
 *	  Global positions of event stores and their safe frontier.
 *
 *-------------------------------------------------------------------------
 */
#ifndef WS_FRONTIER_H
#define WS_FRONTIER_H

#include "postgres.h"

/* Counters kept per event store, shown by ws.stat_event_stores. */
typedef enum WsStoreCounter
{
	WS_COUNT_APPENDS,			/* appends that wrote events */
	WS_COUNT_EVENTS,			/* events those appends wrote */
	WS_COUNT_CONFLICTS,			/* appends refused for a wrong version */
	WS_COUNT_REPLAYS,			/* idempotent re-appends that wrote nothing */
	WS_NUM_COUNTERS
} WsStoreCounter;

/* What ws_frontier_report copies out of one store's slot. */
typedef struct WsStoreReport
{
	Oid			relid;
	bool		loaded;			/* false until first use since startup */
	int64		last_position;	/* highest position handed out */
	int64		safe_position;
	int			in_flight;		/* backends with an uncommitted append */
	int64		oldest_in_flight;	/* lowest uncommitted position, or 0 */
	int			oldest_pid;		/* backend holding it, or 0 */
	int64		counters[WS_NUM_COUNTERS];
} WsStoreReport;

extern Size ws_frontier_shmem_size(void);
extern void ws_frontier_shmem_init(void);
extern void ws_frontier_register_callbacks(void);
extern void ws_frontier_require(const char *what);

extern int	ws_frontier_attach(Oid relid);
extern bool ws_frontier_is_loaded(int slot);
extern void ws_frontier_load(int slot, int64 max_position);
extern int64 ws_frontier_reserve(int slot, int count);
extern int64 ws_frontier_safe_position(int slot);
extern void ws_frontier_count(int slot, WsStoreCounter counter, int64 n);
extern void ws_frontier_forget_at_commit(Oid relid);
extern int	ws_frontier_report(WsStoreReport **reports);
extern bool ws_frontier_appended_in_xact(void);

#endif							/* WS_FRONTIER_H */

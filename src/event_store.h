/*-------------------------------------------------------------------------
 *
 * event_store.h
 *	  Event stores: the per-backend catalog cache and the parsed form of the
 *	  events argument of ws.append.
 *
 *-------------------------------------------------------------------------
 */
#ifndef WS_EVENT_STORE_H
#define WS_EVENT_STORE_H

#include "postgres.h"

#include "executor/spi.h"
#include "fmgr.h"
#include "storage/lockdefs.h"
#include "utils/jsonb.h"
#include "utils/relcache.h"

/* The prepared statements kept per store; see store_catalog.c. */
typedef enum StorePlan
{
	PLAN_MAX_POSITION,
	PLAN_FIND_IDS,
	PLAN_INSERT_ONE,
	PLAN_INSERT_MANY,
	PLAN_READ_STREAM,
	PLAN_READ_ALL,
	PLAN_QUEUE_SNAPSHOT,
	NUM_STORE_PLANS
} StorePlan;

/* One event store as this backend knows it. */
typedef struct StoreEntry
{
	char		name[NAMEDATALEN];	/* hash key */
	Oid			relid;			/* its events table */
	char	   *table_name;		/* quoted, qualified; what the plans name */
	int			snapshot_every; /* its snapshot policy's interval, 0 if none */
	bool		valid;			/* cleared by a relcache invalidation */
	int			slot;			/* frontier slot, -1 until attached */
	bool		slot_loaded;	/* the slot's counter is known to be loaded */
	Oid			version_index;	/* the (stream, version) index, once found */
	AttrNumber	version_attnum;	/* "version" in the events table */
	bool		write_directly; /* event_writer.c may write the table */
	SPIPlanPtr	plans[NUM_STORE_PLANS];
} StoreEntry;

/* The events argument of ws.append, checked and split into columns. */
typedef struct EventBatch
{
	int			count;
	bool		any_id;			/* some event carries its own id */
	Datum	   *ids;			/* uuid, or null */
	bool	   *id_nulls;
	Datum	   *types;			/* text */
	Datum	   *data;			/* jsonb */
	Datum	   *metadata;		/* jsonb, or null */
	bool	   *metadata_nulls;
} EventBatch;

/* event_store.c */
extern char *ws_store_arg(FunctionCallInfo fcinfo, int argno);
extern text *ws_stream_name_arg(FunctionCallInfo fcinfo, int argno);

/* store_catalog.c */
extern char *ws_store_name_arg(text *name);
extern StoreEntry *ws_open_store(const char *name, LOCKMODE lockmode);
extern SPIPlanPtr ws_store_plan(StoreEntry *store, StorePlan which);

/* event_input.c */
extern void ws_parse_events(Jsonb *events, EventBatch *batch);

/* snapshot.c */
extern void ws_queue_snapshot(StoreEntry *store, text *stream, int64 due_version);
extern void ws_run_reducers_as_owner(void);

/* event_writer.c */
extern bool ws_can_write_directly(Relation rel);
extern void ws_write_events(Relation rel, int64 first_position, text *stream,
							int64 first_version, EventBatch *batch);

#endif							/* WS_EVENT_STORE_H */

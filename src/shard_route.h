/*-------------------------------------------------------------------------
 *
 * shard_route.h
 *	  What the files that write rows of distributed tables share: a
 *	  distributed table as the routing cache holds it (shard_route.c), the
 *	  COPY streams that carry rows to the shards (shard_send.c), batched
 *	  upserts (shard_upsert.c), and postgres_fdw's connections.
 *
 *-------------------------------------------------------------------------
 */
#ifndef WS_SHARD_ROUTE_H
#define WS_SHARD_ROUTE_H

#include "access/htup.h"
#include "access/tupdesc.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "libpq-fe.h"
#include "utils/relcache.h"

#include "shard.h"

/* One slot of a distributed table, as the cache holds it. */
typedef struct SlotInfo
{
	Oid			partition;		/* the slot's foreign table */
	Oid			serverid;
	char	   *remote_table;	/* schema-qualified, quoted */
	/* Where this backend last locked the partition: no need to again. */
	LocalTransactionId locked_lxid;
	SubTransactionId locked_subid;
} SlotInfo;

typedef struct DistEntry
{
	Oid			view;			/* hash key: the distributed table */
	bool		valid;
	MemoryContext context;		/* holds all of the entry below */
	Oid			partitioned;
	char	   *name;			/* for messages */
	Oid			owner;			/* of the view */
	bool		invoker;		/* the view has security_invoker */
	AttrNumber	key_attnum;
	Oid			key_type;
	int			nslots;
	SlotInfo   *slots;
	char	   *shard_table;	/* on every shard: its slots' parent */
	int			ncolumns;
	char	   *column_list;	/* quoted, comma-separated */
	char	   *copy_columns;	/* the same and ws_slot: a COPY line's */
	char	   *parameters;		/* ($1, ..., $ncolumns) */
	bool		binary;			/* rows travel in COPY's binary format */
	bool		names_objects;	/* a column's text names objects */
	FmgrInfo   *send_functions; /* per column of the view, if binary */
	char	   *binary_forms;	/* per column of the view: copy_binary.c */
	FmgrInfo   *out_functions;	/* per column of the view */
	FmgrInfo   *in_functions;	/* per column of the view: upserts' rows */
	Oid		   *typioparams;	/* per column of the view, for in_functions */
	char	   *upsert_rows;	/* " (columns) SELECT ... FROM unnest($1) ..." */
	char	   *upsert_delimiters;	/* per column: between its values there */
} DistEntry;

/*
 * postgres_fdw's pgfdw_report_error (contrib/postgres_fdw/connection.c):
 * NULL until the first ws_shard_connection loads it, which any caller has
 * a connection from.
 */
typedef void (*pgfdw_report_error_fn) (int elevel, PGresult *res, PGconn *conn,
									   bool clear, const char *sql);
extern pgfdw_report_error_fn ws_fdw_report_error;

/* shard_route.c */
extern PGconn *ws_shard_connection(Oid serverid, Oid userid);
extern PGresult *ws_shard_wait_result(PGconn *conn, const char *sql);
extern void ws_shard_note_routed(Oid serverid, int64 rows);
extern DistEntry *ws_dist_open(Relation view);
extern Oid	ws_dist_mapping_user(DistEntry *dist);
extern int	ws_dist_route_slot(Relation view, Datum *values, bool *nulls, DistEntry **dist_out);
extern int	ws_dist_row_modes(DistEntry *dist);
extern void ws_dist_append_line(StringInfo out, DistEntry *dist, TupleDesc desc, Datum *values,
								bool *nulls, int slot);
extern void ws_dist_copy_command(StringInfo sql, DistEntry *dist, const char *table);
extern Datum ws_returned_row(HeapTuple tuple, MemoryContext caller_context);

/* shard_send.c (the rest of its functions, shard_stream.c's too: shard.h) */
extern RouteStream *ws_route_stream_open(DistEntry *dist, const char *table);
extern void ws_route_stream_add(RouteStream *stream, Oid serverid, const char *lines, int len,
								int64 rows);
extern void ws_route_stream_statement_row(Relation view, Datum *values, bool *nulls);
extern void ws_route_stream_register(void);

struct QueryDesc;

/* An INSERT ... ON CONFLICT into a distributed table, running (shard_upsert.c) */
typedef struct WsUpsert
{
	MemoryContext memory;		/* holds all of this */
	struct QueryDesc *query;	/* whose ModifyTable inserts */
	SubTransactionId subid;		/* where the query began */
	Oid			view;			/* the distributed table */
	bool		single_row;		/* the statement's only row, RETURNING only columns */
	bool		batched;		/* the statement's rows, no RETURNING: in batches */
	struct UpsertRows *waiting; /* rows not sent yet */
	uint64		skipped;		/* rows sent that the shards skipped */
	char	   *clause;			/* " ON CONFLICT ...", for the shards */
	List	   *locals;			/* what its parameters after the row's are */
	struct ParamListInfoData *params;	/* the query's, for locals */
	bool		computed;		/* the values below are set */
	int			nvalues;		/* its parameters after the row's columns */
	char	  **values;			/* as text, NULL for NULL */
} WsUpsert;

/* shard_upsert.c */
extern WsUpsert *ws_upsert_running(Oid view);
extern char *ws_upsert_rows_sql(TupleDesc desc, const char *column_list, char *delimiters);
extern Datum ws_upsert_route_row(Relation view, WsUpsert *upsert, HeapTuple tuple, Datum *values,
								 bool *nulls, MemoryContext caller_context);

#endif							/* WS_SHARD_ROUTE_H */

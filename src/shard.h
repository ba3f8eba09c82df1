/*-------------------------------------------------------------------------
 *
 * shard.h
 *	  Shard maps, the key hash, and routing rows to shard servers.
 *
 *-------------------------------------------------------------------------
 */
#ifndef WS_SHARD_H
#define WS_SHARD_H

#include "postgres.h"

#include "nodes/parsenodes.h"
#include "utils/relcache.h"

/* shard_hash.c */
extern uint64 ws_key_hash(const char *bytes, int len, uint64 seed);
extern int	ws_key_slot(const char *bytes, int len, int nslots);

/* shard_route.c */
extern void ws_shard_register_callbacks(void);
extern bool ws_shard_is_distributed(Relation view);
extern void ws_shard_open_connections(Relation view);
extern Size ws_shard_shmem_size(void);
extern void ws_shard_shmem_init(void);
extern void ws_shard_insert_row(Oid serverid, Oid userid, const char *sql,
								const char *table, int slot, const char *remote_table);
extern void ws_shard_rethrow_write_error(int nrows, const char *table, Oid serverid,
										 int slot, const char *remote_table) pg_attribute_noreturn();
extern bool ws_shard_routes_only(Relation view);
extern bool ws_shard_routes(Relation view);
extern Oid	ws_shard_partitioned_table(Relation view);
extern Oid	ws_shard_mapping_user(Relation view);
extern AttrNumber ws_shard_key_column(Relation view);
extern int	ws_shard_transmission_modes(void);
extern int	ws_shard_parameter_modes(void);
extern struct pg_result *ws_shard_run_in_transaction(Oid serverid, Oid userid, const char *sql,
													 int nparams, const char *const *values);
extern int	ws_shard_spi_connect(void);
extern void ws_shard_spi_finish(int level);

/* shard_upsert.c */
extern void ws_upsert_plan(Query *query, Relation view, List **functions);
extern void ws_shard_upsert_register(void);

/* shard_guard.c */
extern void ws_shard_guard_register(void);
extern bool ws_shard_is_slot_table(Oid relid);
extern void ws_shard_note_use(void);

/* shard_modify.c */
struct PlannedStmt;
extern void ws_shard_modify_plan(struct PlannedStmt *stmt);
extern bool ws_shard_modify_planned(struct PlannedStmt *stmt);
struct ModifyTable;
extern bool ws_returns_columns_only(struct ModifyTable *modify);
extern void ws_shard_modify_register(void);

/* shard_utility.c */
extern void ws_shard_utility_register(void);

/* shard_send.c (what only the routing files use: shard_route.h) */
typedef struct RouteStream RouteStream;
extern RouteStream *ws_route_stream_begin(Relation view);
extern void ws_route_stream_row(RouteStream *stream, Datum *values, bool *nulls);
extern void ws_route_stream_send(RouteStream *stream);
extern uint64 ws_route_stream_end(RouteStream *stream);
extern void ws_route_stream_abort(RouteStream *stream);
extern void ws_route_stream_statement_end(void);

/* shard_stream.c */
extern void ws_shard_stream_register(void);
extern bool ws_shard_streaming_now(Oid view);

/* shard_conn.c */
extern bool ws_shard_can_run_alone(Oid serverid, Oid userid);
extern bool ws_socket_readable(pgsocket sock);
extern struct pg_result *ws_shard_run_alone(Oid serverid, Oid userid, const char *sql,
											int nparams, const char *const *values,
											bool prepare);

/* shard_defer.c */
extern bool ws_defer_may_wait(Oid serverid, Oid userid);
extern bool ws_defer_may_run_now(Oid serverid, Oid userid);
extern void ws_defer_single_row(Oid serverid, Oid userid, const char *sql, const char *literals,
								int nvalues, const char *const *values, const char *table,
								int slot, const char *remote_table);
extern void ws_defer_flush(void);
extern void ws_defer_note_fdw_use(void);
extern void ws_defer_register(void);
extern struct QueryDesc *ws_running_query(void);
extern struct QueryDesc *ws_running_query_swap(struct QueryDesc *query);

#endif							/* WS_SHARD_H */

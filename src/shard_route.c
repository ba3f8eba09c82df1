/*-------------------------------------------------------------------------
 *
 * shard_route.c
 *	  Writes rows of distributed tables to their shard servers.
 *
 * A distributed table is a view over a table hash-partitioned by the key
 * (with the slot operator classes of shard_hash.c) whose partitions, one
 * per slot, are postgres_fdw foreign tables.  Reads go through PostgreSQL's
 * partitioning: pruning to one slot when the query fixes the key, an async
 * Append over all slots otherwise.  Writes go through the view's INSTEAD OF
 * INSERT trigger (ws._route_insert), because postgres_fdw sends several
 * statements per inserted row: the trigger buffers each row as a COPY line
 * (binary where the column types allow) for its slot, and the view's AFTER
 * INSERT statement trigger (ws._route_flush) sends each shard its rows in
 * one COPY into its table of slots (<table>_shard, partitioned by LIST
 * (ws_slot) over the slot tables), all shards at once; a single row goes as
 * an INSERT.  That COPY is a stream (shard_send.c): a large statement
 * (shard_stream.c) hands each shard its rows while it runs rather than at
 * its end.
 *
 * Rows travel on postgres_fdw's own connection (GetConnection, looked up in
 * postgres_fdw.so), so they belong to the same remote transaction as the
 * reads, savepoints and commit that postgres_fdw manages: a rollback takes
 * them back, and a read later in the transaction sees them.  The exceptions go
 * alone, on a connection of ours: the single row of an autocommit INSERT,
 * which waits for the commit unless the transaction does anything else first
 * (shard_defer.c), and an autocommit single-row upsert (shard_upsert.c) or
 * UPDATE or DELETE by key (shard_modify.c), which go at once when they are all
 * their transaction does.
 *
 * The trigger locks the slot's foreign table before trusting the cached
 * placement: ws.rebalance holds that table in SHARE mode while it moves the
 * slot, and replaces it when done, so a writer either goes first or waits
 * and then finds the slot's new place.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/relation.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "access/transam.h"
#include "catalog/pg_class.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "foreign/foreign.h"
#include "libpq-fe.h"
#include "libpq/pqformat.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "parser/parse_relation.h"
#include "partitioning/partbounds.h"
#include "partitioning/partdesc.h"
#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/float.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/partcache.h"
#include "utils/rel.h"
#include "utils/typcache.h"
#include "utils/syscache.h"

#include "bulk.h"
#include "copy_binary.h"
#include "guc.h"
#include "send_encoding.h"
#include "shard_route.h"
#include "shmem.h"

/* A slot's buffer is sent when it holds this many rows or bytes. */
#define ROUTE_BATCH_ROWS	1000
#define ROUTE_BATCH_BYTES	(256 * 1024)

/*
 * postgres_fdw's connection functions (contrib/postgres_fdw/connection.c),
 * and the state it keeps per connection (PgFdwConnState, postgres_fdw.h):
 * an asynchronous fetch of a scan still in flight there.
 */
typedef struct FdwConnState
{
	AsyncRequest *pendingAreq;
} FdwConnState;
typedef PGconn *(*GetConnection_fn) (UserMapping *user, bool will_prep_stmt,
									 FdwConnState **state);
typedef void (*process_pending_request_fn) (AsyncRequest *areq);
typedef PGresult *(*pgfdw_get_result_fn) (PGconn *conn, const char *query);

static GetConnection_fn fdw_get_connection = NULL;
static process_pending_request_fn fdw_process_pending_request = NULL;
static pgfdw_get_result_fn fdw_get_result = NULL;
pgfdw_report_error_fn ws_fdw_report_error = NULL;

/* Rows buffered for one slot; marks remember where each subtransaction began. */
typedef struct SavepointMark
{
	SubTransactionId subid;
	int			offset;
	int			rows;
} SavepointMark;

typedef struct SlotBuffer
{
	Oid			partition;		/* hash key */
	DistEntry  *dist;
	int			slot;
	StringInfoData copy_data;	/* COPY text lines */
	int			ncolumns;		/* of the rows (the table's when buffered) */
	StringInfoData first_row;	/* the first row's values, each ending in \0 */
	int		   *first_offsets;	/* where each is in first_row, -1 for NULL */
	int			rows;
	List	   *marks;
} SlotBuffer;

/* Rows routed to each server since server start, in shared memory. */
#define WS_MAX_SHARD_SERVERS	256

typedef struct ShardCounter
{
	Oid			dboid;			/* InvalidOid when unused */
	Oid			serverid;
	pg_atomic_uint64 rows_routed;
} ShardCounter;

typedef struct WsShardShared
{
	LWLock		lock;
	ShardCounter counters[WS_MAX_SHARD_SERVERS];
} WsShardShared;

static WsShardShared *shard_shared = NULL;

/* Rows this transaction sent, per server, published at commit. */
typedef struct RoutedCount
{
	SubTransactionId subid;
	Oid			serverid;
	int64		rows;
} RoutedCount;

static RoutedCount *routed = NULL;
static int	nrouted = 0;
static int	maxrouted = 0;

static HTAB *dist_cache = NULL;
static uint64 dist_invalidations = 0;	/* counts dist_cache_invalidate calls */
static HTAB *buffers = NULL;	/* in TopTransactionContext */

static void forget_rows(SlotBuffer *buf, SavepointMark *from, int from_index);
static MemoryContext buffer_context = NULL;
static MemoryContext row_context = NULL;

PG_FUNCTION_INFO_V1(write_scaling_route_insert);
PG_FUNCTION_INFO_V1(write_scaling_route_flush);
PG_FUNCTION_INFO_V1(write_scaling_shard_exec);
PG_FUNCTION_INFO_V1(write_scaling_mapping_user);
PG_FUNCTION_INFO_V1(write_scaling_lock_slot);
PG_FUNCTION_INFO_V1(write_scaling_shard_stats);

Size
ws_shard_shmem_size(void)
{
	return MAXALIGN(sizeof(WsShardShared));
}

/*
 * ws_shard_shmem_init lays out the routing counters; the caller holds
 * AddinShmemInitLock.
 */
void
ws_shard_shmem_init(void)
{
	bool		found;

	shard_shared = ShmemInitStruct("write_scaling shards", ws_shard_shmem_size(), &found);
	if (found)
		return;
	memset(shard_shared, 0, sizeof(WsShardShared));
	LWLockInitialize(&shard_shared->lock, ws_lwlock_tranche_id());
	for (int i = 0; i < WS_MAX_SHARD_SERVERS; i++)
		pg_atomic_init_u64(&shard_shared->counters[i].rows_routed, 0);
}

/*
 * ws_shard_note_routed remembers rows sent to a server, for the commit
 * callback.
 */
void
ws_shard_note_routed(Oid serverid, int64 rows)
{
	SubTransactionId subid = GetCurrentSubTransactionId();

	for (int i = 0; i < nrouted; i++)
		if (routed[i].serverid == serverid && routed[i].subid == subid)
		{
			routed[i].rows += rows;
			return;
		}
	if (nrouted == maxrouted)
	{
		maxrouted = Max(8, maxrouted * 2);
		routed = routed == NULL
			? MemoryContextAlloc(TopMemoryContext, sizeof(RoutedCount) * maxrouted)
			: repalloc(routed, sizeof(RoutedCount) * maxrouted);
	}
	routed[nrouted].subid = subid;
	routed[nrouted].serverid = serverid;
	routed[nrouted].rows = rows;
	nrouted++;
}

/*
 * publish_routed adds the committed transaction's rows to the counters.
 */
static void
publish_routed(void)
{
	if (shard_shared == NULL)
		return;
	LWLockAcquire(&shard_shared->lock, LW_EXCLUSIVE);
	for (int r = 0; r < nrouted; r++)
	{
		ShardCounter *free_counter = NULL;
		ShardCounter *counter = NULL;

		for (int i = 0; i < WS_MAX_SHARD_SERVERS && counter == NULL; i++)
		{
			ShardCounter *c = &shard_shared->counters[i];

			if (c->dboid == MyDatabaseId && c->serverid == routed[r].serverid)
				counter = c;
			else if (free_counter == NULL && c->dboid == InvalidOid)
				free_counter = c;
		}
		if (counter == NULL && free_counter != NULL)
		{
			counter = free_counter;
			counter->dboid = MyDatabaseId;
			counter->serverid = routed[r].serverid;
			pg_atomic_write_u64(&counter->rows_routed, 0);
		}
		if (counter != NULL)
			pg_atomic_fetch_add_u64(&counter->rows_routed, routed[r].rows);
	}
	LWLockRelease(&shard_shared->lock);
}

/*
 * ws._shard_stats() returns the rows routed to each server by this
 * database since server start.
 */
Datum
write_scaling_shard_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	if (shard_shared == NULL)
		return (Datum) 0;
	LWLockAcquire(&shard_shared->lock, LW_SHARED);
	for (int i = 0; i < WS_MAX_SHARD_SERVERS; i++)
	{
		ShardCounter *c = &shard_shared->counters[i];
		Datum		values[2];
		bool		nulls[2] = {0};

		if (c->dboid != MyDatabaseId)
			continue;
		values[0] = ObjectIdGetDatum(c->serverid);
		values[1] = Int64GetDatum((int64) pg_atomic_read_u64(&c->rows_routed));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	LWLockRelease(&shard_shared->lock);
	return (Datum) 0;
}

static void
load_postgres_fdw(void)
{
	if (fdw_get_connection != NULL)
		return;
	fdw_get_result = (pgfdw_get_result_fn)
		load_external_function("$libdir/postgres_fdw", "pgfdw_get_result", true, NULL);
	ws_fdw_report_error = (pgfdw_report_error_fn)
		load_external_function("$libdir/postgres_fdw", "pgfdw_report_error", true, NULL);
	fdw_process_pending_request = (process_pending_request_fn)
		load_external_function("$libdir/postgres_fdw", "process_pending_request", true, NULL);
	fdw_get_connection = (GetConnection_fn)
		load_external_function("$libdir/postgres_fdw", "GetConnection", true, NULL);
}

/*
 * ws_shard_connection returns postgres_fdw's connection to serverid for userid,
 * in the remote transaction that matches ours, ready for a command: a
 * fetch that a scan of the statement has in flight there (an asynchronous
 * Append reading a distributed table the rows come from) is taken in
 * first, as postgres_fdw does before its own writes.
 */
PGconn *
ws_shard_connection(Oid serverid, Oid userid)
{
	PGconn	   *conn;
	FdwConnState *state = NULL;

	/* A row waiting for the commit goes first: it was inserted first. */
	ws_defer_flush();
	ws_defer_note_fdw_use();
	ws_shard_note_use();
	ws_bulk_check_fdw_use();
	load_postgres_fdw();
	conn = fdw_get_connection(GetUserMapping(userid, serverid), false, &state);
	if (state != NULL && state->pendingAreq != NULL)
		fdw_process_pending_request(state->pendingAreq);
	/* postgres_fdw's callback is registered now: the buffered path goes first. */
	ws_bulk_get_ahead_of_fdw();
	return conn;
}

/*
 * ws_shard_run_in_transaction runs sql, a statement with nparams text
 * parameters, on postgres_fdw's connection to serverid for userid, in its
 * remote transaction.  Raises the shard's error, if any; returns the
 * statement's result, for the caller to PQclear.
 */
PGresult *
ws_shard_run_in_transaction(Oid serverid, Oid userid, const char *sql, int nparams,
							const char *const *values)
{
	PGconn	   *conn = ws_shard_connection(serverid, userid);
	PGresult   *res;

	if (!PQsendQueryParams(conn, sql, nparams, NULL, values, NULL, NULL, 0))
		ws_fdw_report_error(ERROR, NULL, conn, false, sql);
	res = fdw_get_result(conn, sql);
	if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
		ws_fdw_report_error(ERROR, res, conn, true, sql);
	return res;
}

/*
 * ws_shard_wait_result waits, interruptibly, for conn's next result: that a
 * COPY just sent was accepted, say.  (pgfdw_get_result waits for the end of the
 * command, which for COPY FROM STDIN never comes before the data.)
 */
PGresult *
ws_shard_wait_result(PGconn *conn, const char *sql)
{
	while (PQisBusy(conn))
	{
		int			rc = WaitLatchOrSocket(MyLatch,
										   WL_LATCH_SET | WL_SOCKET_READABLE | WL_EXIT_ON_PM_DEATH,
										   PQsocket(conn), -1L, PG_WAIT_EXTENSION);

		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if ((rc & WL_SOCKET_READABLE) && !PQconsumeInput(conn))
			ws_fdw_report_error(ERROR, NULL, conn, false, sql);
	}
	return PQgetResult(conn);
}

/*
 * remote_command runs sql (one or more commands) on conn and raises the
 * remote error, if any; returns the first value of the last command's
 * result, palloc'd, or NULL if it has none.
 */
static char *
remote_command(PGconn *conn, const char *sql)
{
	PGresult   *res;
	char	   *value = NULL;

	if (!PQsendQuery(conn, sql))
		ws_fdw_report_error(ERROR, NULL, conn, false, sql);
	res = fdw_get_result(conn, sql);
	if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
		ws_fdw_report_error(ERROR, res, conn, true, sql);
	if (PQntuples(res) > 0 && PQnfields(res) > 0 && !PQgetisnull(res, 0, 0))
		value = pstrdup(PQgetvalue(res, 0, 0));
	PQclear(res);
	return value;
}

/*
 * ws._shard_exec(server, sql, as_user) runs a command on a shard server
 * inside this transaction's remote transaction: the one of as_user's user
 * mapping, or the current user's if as_user is 0.  Work on a distributed
 * table that its writes in the same transaction must see passes the
 * table's mapping user (ws._mapping_user).  Returns the first value of the
 * last command's result, or NULL.
 */
Datum
write_scaling_shard_exec(PG_FUNCTION_ARGS)
{
	Name		server = PG_GETARG_NAME(0);
	char	   *sql = text_to_cstring(PG_GETARG_TEXT_PP(1));
	Oid			userid = PG_GETARG_OID(2);
	Oid			serverid = GetForeignServerByName(NameStr(*server), false)->serverid;
	char	   *value;

	value = remote_command(ws_shard_connection(serverid, OidIsValid(userid) ? userid : GetUserId()),
						   sql);
	if (value == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(value));
}

/*
 * ws._mapping_user(table regclass) returns the role whose user mappings a
 * distributed table's rows travel under (ws_dist_mapping_user).
 */
Datum
write_scaling_mapping_user(PG_FUNCTION_ARGS)
{
	Relation	view = relation_open(PG_GETARG_OID(0), AccessShareLock);
	Oid			userid = ws_shard_mapping_user(view);

	relation_close(view, AccessShareLock);
	PG_RETURN_OID(userid);
}

/*
 * ws._lock_slot(slot regclass) holds back the writers of a slot's foreign
 * table until the transaction ends (LOCK TABLE refuses foreign tables):
 * ws._route_insert and UPDATE or DELETE take RowExclusiveLock on it.
 */
Datum
write_scaling_lock_slot(PG_FUNCTION_ARGS)
{
	LockRelationOid(PG_GETARG_OID(0), ShareLock);
	PG_RETURN_VOID();
}

/*
 * ws_shard_spi_connect connects to SPI for a query of the extension's, with
 * a search_path where no caller can have planted a function or operator
 * (the queries name their tables, but an operator is looked up on the
 * path); returns the GUC nest level to give ws_shard_spi_finish.
 */
int
ws_shard_spi_connect(void)
{
	int			level;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	level = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	return level;
}

void
ws_shard_spi_finish(int level)
{
	AtEOXact_GUC(false, level);
	SPI_finish();
}

/* --- the cache of distributed tables ------------------------------------ */

static void
dist_cache_invalidate(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	DistEntry  *entry;

	if (dist_cache == NULL)
		return;
	dist_invalidations++;
	hash_seq_init(&status, dist_cache);
	while ((entry = hash_seq_search(&status)) != NULL)
		if (relid == InvalidOid || relid == entry->view || relid == entry->partitioned)
			entry->valid = false;
}

/*
 * binary_safe tells whether values of a type can travel in COPY's binary
 * format: a built-in type with send and receive functions whose binary form
 * holds no OID that could name something else on another server (the reg*
 * types, and records and arrays of other types, do).
 */
static bool
binary_safe(Oid type)
{
	Oid			element = get_element_type(type);
	HeapTuple	tuple;
	Form_pg_type form;
	bool		safe;

	if (OidIsValid(element))
		return type < FirstGenbkiObjectId && binary_safe(element);
	if (type >= FirstGenbkiObjectId)
		return false;
	tuple = SearchSysCache1(TYPEOID, ObjectIdGetDatum(type));
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for type %u", type);
	form = (Form_pg_type) GETSTRUCT(tuple);
	safe = OidIsValid(form->typsend) && OidIsValid(form->typreceive) &&
		form->typtype == TYPTYPE_BASE &&
		!(type == REGPROCOID || type == REGPROCEDUREOID || type == REGOPEROID ||
		  type == REGOPERATOROID || type == REGCLASSOID || type == REGTYPEOID ||
		  type == REGCOLLATIONOID || type == REGCONFIGOID ||
		  type == REGDICTIONARYOID || type == REGROLEOID || type == REGNAMESPACEOID);
	ReleaseSysCache(tuple);
	return safe;
}

/*
 * names_objects tells whether the text of a type's values can name
 * database objects, which the shard then looks up by name: the reg* types,
 * and arrays and composites of them.
 */
static bool
names_objects(Oid type)
{
	Oid			base = getBaseType(type);
	Oid			element = get_element_type(base);
	bool		names = false;

	if (OidIsValid(element))
		return names_objects(element);
	if (type_is_rowtype(base))
	{
		TupleDesc	desc = lookup_rowtype_tupdesc(base, -1);

		for (int i = 0; i < desc->natts && !names; i++)
			names = !TupleDescAttr(desc, i)->attisdropped &&
				names_objects(TupleDescAttr(desc, i)->atttypid);
		ReleaseTupleDesc(desc);
		return names;
	}
	return base == REGPROCOID || base == REGPROCEDUREOID || base == REGOPEROID ||
		base == REGOPERATOROID || base == REGCLASSOID || base == REGTYPEOID ||
		base == REGCOLLATIONOID || base == REGCONFIGOID || base == REGDICTIONARYOID ||
		base == REGNAMESPACEOID || base == REGROLEOID;
}

/*
 * fill_entry reads a distributed table's slots: the partitions of its
 * partitioned table, in slot order, with their servers and remote names.
 * The new entry is built in a memory context of its own and replaces the
 * old one only when complete, so an error leaves the old one intact.
 */
static void
fill_entry(DistEntry *entry, Relation view)
{
	DistEntry	fresh;
	MemoryContext old;
	TupleDesc	desc = RelationGetDescr(view);
	uint64		invalidations = dist_invalidations;
	Datum		arg = ObjectIdGetDatum(RelationGetRelid(view));
	StringInfoData columns;
	bool		isnull;
	int			guc_level;

	memset(&fresh, 0, sizeof(fresh));
	fresh.view = entry->view;
	fresh.context = AllocSetContextCreate(CurrentMemoryContext, "write_scaling distributed table",
										  ALLOCSET_SMALL_SIZES);

	guc_level = ws_shard_spi_connect();
	if (SPI_execute_with_args("SELECT d.partitioned::oid, d.key_column, m.vnodes,"
							  " d.remote_schema, d.remote_table"
							  " FROM ws.distributed_tables d JOIN ws.shard_maps m USING (map)"
							  " WHERE d.table_name = $1",
							  1, (Oid[]) {OIDOID}, &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read ws.distributed_tables");
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("\"%s\" is not a distributed table", RelationGetRelationName(view))));

	old = MemoryContextSwitchTo(fresh.context);
	fresh.partitioned = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	fresh.name = pstrdup(RelationGetRelationName(view));
	fresh.owner = view->rd_rel->relowner;
	fresh.invoker = RelationHasSecurityInvoker(view);
	fresh.key_attnum = attnameAttNum(view, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2), false);
	fresh.key_type = TupleDescAttr(desc, fresh.key_attnum - 1)->atttypid;
	fresh.nslots = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	fresh.slots = palloc0(sizeof(SlotInfo) * fresh.nslots);
	{
		char	   *remote_schema = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4);
		char	   *remote_table = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5);
		char		name[NAMEDATALEN * 2];

		for (int s = 0; s < fresh.nslots; s++)
		{
			snprintf(name, sizeof(name), "%s_s%03d", remote_table, s);
			fresh.slots[s].remote_table = quote_qualified_identifier(remote_schema, name);
		}
		snprintf(name, sizeof(name), "%s_shard", remote_table);
		fresh.shard_table = quote_qualified_identifier(remote_schema, name);
	}

	/*
	 * Rows travel in COPY's binary format, cheaper to write here and to read
	 * there, when every column's type allows (binary_safe); otherwise as
	 * COPY text.
	 */
	initStringInfo(&columns);
	fresh.out_functions = palloc(sizeof(FmgrInfo) * desc->natts);
	fresh.in_functions = palloc(sizeof(FmgrInfo) * desc->natts);
	fresh.typioparams = palloc(sizeof(Oid) * desc->natts);
	fresh.send_functions = palloc(sizeof(FmgrInfo) * desc->natts);
	fresh.binary_forms = palloc(desc->natts);
	fresh.binary = true;
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (!att->attisdropped && !binary_safe(att->atttypid))
			fresh.binary = false;
		if (!att->attisdropped && names_objects(att->atttypid))
			fresh.names_objects = true;
	}
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		Oid			func;
		bool		varlena;

		if (att->attisdropped)
			continue;
		appendStringInfo(&columns, "%s%s", columns.len > 0 ? ", " : "",
						 quote_identifier(NameStr(att->attname)));
		getTypeOutputInfo(att->atttypid, &func, &varlena);
		fmgr_info_cxt(func, &fresh.out_functions[i], fresh.context);
		getTypeInputInfo(att->atttypid, &func, &fresh.typioparams[i]);
		fmgr_info_cxt(func, &fresh.in_functions[i], fresh.context);
		if (fresh.binary)
		{
			getTypeBinaryOutputInfo(att->atttypid, &func, &varlena);
			fmgr_info_cxt(func, &fresh.send_functions[i], fresh.context);
			fresh.binary_forms[i] = ws_binary_form(att->atttypid);
		}
		fresh.ncolumns++;
	}
	fresh.column_list = columns.data;
	fresh.copy_columns = psprintf("%s, ws_slot", columns.data);
	initStringInfo(&columns);
	for (int i = 1; i <= fresh.ncolumns; i++)
		appendStringInfo(&columns, "%s$%d", i > 1 ? ", " : "(", i);
	appendStringInfoChar(&columns, ')');
	fresh.parameters = columns.data;
	fresh.upsert_delimiters = palloc(fresh.ncolumns);
	fresh.upsert_rows = ws_upsert_rows_sql(desc, fresh.column_list, fresh.upsert_delimiters);
	MemoryContextSwitchTo(old);

	ws_shard_spi_finish(guc_level);

	/*
	 * The slots' foreign tables, from the partition descriptor: what the
	 * catalogs say now, not what a statement's snapshot saw before a
	 * rebalance switched a slot.  All partitions share one modulus, so
	 * the bound's index of remainder r is slot r.
	 */
	{
		Relation	parent = relation_open(fresh.partitioned, AccessShareLock);
		PartitionDesc partdesc = RelationGetPartitionDesc(parent, true);
		PartitionBoundInfo bounds = partdesc->boundinfo;

		for (int r = 0; bounds != NULL && r < Min(bounds->nindexes, fresh.nslots); r++)
		{
			int			index = bounds->indexes[r];

			if (index < 0)
				continue;
			fresh.slots[r].partition = partdesc->oids[index];
			fresh.slots[r].serverid = GetForeignTable(partdesc->oids[index])->serverid;
		}
		/* Only while reading: a writer must not hold back a slot's switch. */
		relation_close(parent, AccessShareLock);
	}

	/*
	 * Complete: it replaces the old entry, and is valid unless news came
	 * meanwhile (then the next use reads again).
	 */
	MemoryContextSetParent(fresh.context, CacheMemoryContext);
	if (entry->context != NULL)
		MemoryContextDelete(entry->context);
	fresh.valid = invalidations == dist_invalidations;
	*entry = fresh;
}

DistEntry *
ws_dist_open(Relation view)
{
	DistEntry  *entry;
	bool		found;

	if (dist_cache == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(DistEntry);
		ctl.hcxt = CacheMemoryContext;
		dist_cache = hash_create("write_scaling distributed tables", 8, &ctl,
								 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		CacheRegisterRelcacheCallback(dist_cache_invalidate, (Datum) 0);
	}
	entry = hash_search(dist_cache, &view->rd_id, HASH_ENTER, &found);
	if (!found)
	{
		entry->valid = false;
		entry->context = NULL;
	}
	if (!entry->valid)
		fill_entry(entry, view);
	return entry;
}

/*
 * ws_shard_is_distributed tells whether a view is a distributed table.
 */
bool
ws_shard_is_distributed(Relation view)
{
	Datum		arg = ObjectIdGetDatum(RelationGetRelid(view));
	bool		distributed;
	int			guc_level = ws_shard_spi_connect();

	if (SPI_execute_with_args("SELECT FROM ws.distributed_tables WHERE table_name = $1",
							  1, (Oid[]) {OIDOID}, &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read ws.distributed_tables");
	distributed = SPI_processed > 0;
	ws_shard_spi_finish(guc_level);
	return distributed;
}

/*
 * ws_dist_mapping_user returns the role whose user mappings a distributed
 * table's rows travel under: the one postgres_fdw uses for the view's reads,
 * updates and deletes (its owner, or the current user if the view has
 * security_invoker), so that they all share one remote session per shard and a
 * transaction reads what it wrote.
 */
Oid
ws_dist_mapping_user(DistEntry *dist)
{
	return dist->invoker ? GetUserId() : dist->owner;
}

/*
 * ws_shard_mapping_user returns ws_dist_mapping_user of a distributed table.
 */
Oid
ws_shard_mapping_user(Relation view)
{
	return ws_dist_mapping_user(ws_dist_open(view));
}

/*
 * ws_shard_key_column returns the attribute number of a distributed table's
 * shard key.
 */
AttrNumber
ws_shard_key_column(Relation view)
{
	return ws_dist_open(view)->key_attnum;
}

/*
 * ws_shard_partitioned_table returns the partitioned table of a distributed
 * table's slots, ws_dist.<table>.
 */
Oid
ws_shard_partitioned_table(Relation view)
{
	return ws_dist_open(view)->partitioned;
}

/*
 * ws_shard_open_connections opens postgres_fdw's connections to every
 * server of a distributed table, starting their remote transactions, so
 * that postgres_fdw's transaction callback is registered.  bulk.c calls it
 * before buffering rows that it may flush at commit.
 */
void
ws_shard_open_connections(Relation view)
{
	DistEntry  *dist = ws_dist_open(view);

	for (int s = 0; s < dist->nslots; s++)
		if (OidIsValid(dist->slots[s].serverid))
			(void) ws_shard_connection(dist->slots[s].serverid, ws_dist_mapping_user(dist));
}

/* --- buffers -------------------------------------------------------------- */

/*
 * append_copy_value appends a value to a COPY text line, escaped.
 */
static void
append_copy_value(StringInfo buf, const char *value)
{
	const char *p = value;

	for (;;)
	{
		size_t		plain = strcspn(p, "\\\t\n\r");

		appendBinaryStringInfo(buf, p, plain);
		p += plain;
		if (*p == '\0')
			break;
		appendStringInfoChar(buf, '\\');
		appendStringInfoChar(buf, *p == '\\' ? '\\' : *p == '\t' ? 't' : *p == '\n' ? 'n' : 'r');
		p++;
	}
}

static SlotBuffer *
buffer_for(DistEntry *dist, int slot)
{
	Oid			partition = dist->slots[slot].partition;
	SlotBuffer *buf;
	bool		found;

	if (buffers == NULL)
	{
		HASHCTL		ctl;

		buffer_context = AllocSetContextCreate(TopTransactionContext,
											   "write_scaling routed rows",
											   ALLOCSET_DEFAULT_SIZES);
		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(SlotBuffer);
		ctl.hcxt = buffer_context;
		buffers = hash_create("write_scaling routed rows", 16, &ctl,
							  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	buf = hash_search(buffers, &partition, HASH_ENTER, &found);
	if (!found)
	{
		MemoryContext old = MemoryContextSwitchTo(buffer_context);

		buf->dist = dist;
		buf->slot = slot;
		initStringInfo(&buf->copy_data);
		initStringInfo(&buf->first_row);
		buf->ncolumns = dist->ncolumns;
		buf->first_offsets = palloc(sizeof(int) * dist->ncolumns);
		buf->rows = 0;
		buf->marks = NIL;
		MemoryContextSwitchTo(old);
	}
	else if (buf->ncolumns != dist->ncolumns)
	{
		/* The view was replaced in this transaction. */
		if (buf->rows > 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("distributed table \"%s\" changed while rows for it were buffered",
							dist->name)));
		buf->ncolumns = dist->ncolumns;
		buf->first_offsets = MemoryContextAlloc(buffer_context, sizeof(int) * dist->ncolumns);
	}
	return buf;
}

/*
 * capture_error takes the error being handled out of the error state, so
 * that it can be raised again with where the rows were going: the copy goes
 * with the transaction that the error aborts.
 */
static ErrorData *
capture_error(void)
{
	MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);
	ErrorData  *edata = CopyErrorData();

	FlushErrorState();
	MemoryContextSwitchTo(old);
	return edata;
}

/*
 * current_rows returns the mark where the current subtransaction's rows
 * begin in buf (and its index), or NULL when there are none.
 */
static SavepointMark *
current_rows(SlotBuffer *buf, int *index)
{
	SubTransactionId subid = GetCurrentSubTransactionId();
	ListCell   *lc;

	foreach(lc, buf->marks)
	{
		SavepointMark *mark = lfirst(lc);

		if (mark->subid == subid)
		{
			*index = foreach_current_index(lc);
			return buf->rows > mark->rows ? mark : NULL;
		}
	}
	return NULL;
}

/*
 * ws_dist_copy_command appends the COPY that takes dist's rows into table.
 */
void
ws_dist_copy_command(StringInfo sql, DistEntry *dist, const char *table)
{
	appendStringInfo(sql, "COPY %s (%s) FROM STDIN%s", table, dist->copy_columns,
					 dist->binary ? " (FORMAT binary)" : "");
}

/*
 * first_row_literals returns the first row of buf as an SQL VALUES list.
 */
static char *
first_row_literals(SlotBuffer *buf)
{
	StringInfoData list;

	initStringInfo(&list);
	for (int i = 0; i < buf->dist->ncolumns; i++)
	{
		int			offset = buf->first_offsets[i];

		appendStringInfoString(&list, i == 0 ? "(" : ", ");
		appendStringInfoString(&list, offset < 0 ? "NULL" :
							   quote_literal_cstr(buf->first_row.data + offset));
	}
	appendStringInfoChar(&list, ')');
	return list.data;
}

/*
 * ws_shard_rethrow_write_error raises the error being handled again, saying
 * which rows were going where.
 */
void
ws_shard_rethrow_write_error(int nrows, const char *table, Oid serverid, int slot,
					const char *remote_table)
{
	ErrorData  *edata = capture_error();

	ereport(ERROR,
			(errcode(edata->sqlerrcode),
			 errmsg("could not write %d row%s of \"%s\" to shard server \"%s\": %s",
					nrows, nrows == 1 ? "" : "s", table,
					GetForeignServer(serverid)->servername, edata->message),
			 edata->detail ? errdetail_internal("%s", edata->detail) : 0,
			 edata->hint ? errhint("%s", edata->hint) : 0,
			 errcontext("slot %d, remote table %s", slot, remote_table)));
}

/*
 * rows_sent notes the rows from mark on as routed, now on their shard, and
 * forgets them.
 */
static void
rows_sent(SlotBuffer *buf, SavepointMark *from, int from_index)
{
	ws_shard_note_routed(buf->dist->slots[buf->slot].serverid, buf->rows - from->rows);
	forget_rows(buf, from, from_index);
}

/*
 * forget_rows drops the rows from mark on from buf.
 */
static void
forget_rows(SlotBuffer *buf, SavepointMark *from, int from_index)
{
	buf->copy_data.len = from->offset;
	buf->copy_data.data[from->offset] = '\0';
	buf->rows = from->rows;
	if (buf->rows == 0)
		resetStringInfo(&buf->first_row);
	/* Statements make marks: a long transaction must not keep them. */
	for (int i = list_length(buf->marks) - 1; i >= from_index; i--)
		pfree(list_nth(buf->marks, i));
	if (from_index == 0)
	{
		list_free(buf->marks);
		buf->marks = NIL;
	}
	else
		buf->marks = list_truncate(buf->marks, from_index);
}

/*
 * send_buffer writes to its shard the rows a slot's buffer holds for the
 * current subtransaction: one INSERT for a single row, a stream ended at
 * once (as send_table's) for more.  Rows buffered by an enclosing
 * subtransaction stay: the statement that buffered them sends them (a
 * nested statement that a savepoint rolls back must not take them along).
 */
static void
send_buffer(SlotBuffer *buf)
{
	SlotInfo   *slot = &buf->dist->slots[buf->slot];
	int			from_index = 0;
	SavepointMark *from = current_rows(buf, &from_index);
	RouteStream *volatile stream;

	if (from == NULL)
		return;
	/* A row waiting for the commit goes first, with its own error. */
	ws_defer_flush();

	if (buf->rows - from->rows == 1 && from->rows == 0)
	{
		char	   *sql = psprintf("INSERT INTO %s (%s) VALUES %s", slot->remote_table,
								   buf->dist->column_list, first_row_literals(buf));

		PG_TRY();
		{
			remote_command(ws_shard_connection(slot->serverid, ws_dist_mapping_user(buf->dist)), sql);
		}
		PG_CATCH();
		{
			ws_shard_rethrow_write_error(1, buf->dist->name, slot->serverid, buf->slot,
										 slot->remote_table);
		}
		PG_END_TRY();
		pfree(sql);
		rows_sent(buf, from, from_index);
		return;
	}

	stream = ws_route_stream_open(buf->dist, buf->dist->name);
	PG_TRY();
	{
		ws_route_stream_add(stream, slot->serverid, buf->copy_data.data + from->offset,
							buf->copy_data.len - from->offset, buf->rows - from->rows);
		(void) ws_route_stream_end(stream);
	}
	PG_CATCH();
	{
		ws_route_stream_abort(stream);
		PG_RE_THROW();
	}
	PG_END_TRY();
	forget_rows(buf, from, from_index);
}

/*
 * defer_row offers the single row of a statement, buf's only row, to wait
 * for the commit and go alone (shard_defer.c); returns false if it may not,
 * and the caller sends it.
 */
static bool
defer_row(SlotBuffer *buf)
{
	SlotInfo   *slot = &buf->dist->slots[buf->slot];
	int			index;
	SavepointMark *from = current_rows(buf, &index);
	const char **values;
	char	   *sql;
	char	   *literals;

	if (from == NULL || from->rows != 0 || buf->rows != 1 ||
		!ws_defer_may_wait(slot->serverid, ws_dist_mapping_user(buf->dist)))
		return false;
	values = palloc(sizeof(char *) * buf->dist->ncolumns);
	for (int i = 0; i < buf->dist->ncolumns; i++)
		values[i] = buf->first_offsets[i] < 0 ? NULL :
			buf->first_row.data + buf->first_offsets[i];
	sql = psprintf("INSERT INTO %s (%s) VALUES %s", slot->remote_table,
				   buf->dist->column_list, buf->dist->parameters);
	literals = psprintf("INSERT INTO %s (%s) VALUES %s", slot->remote_table,
						buf->dist->column_list, first_row_literals(buf));
	ws_defer_single_row(slot->serverid, ws_dist_mapping_user(buf->dist), sql, literals, buf->dist->ncolumns, values,
						buf->dist->name, buf->slot, slot->remote_table);
	rows_sent(buf, from, index);
	return true;
}

/*
 * ws_shard_insert_row sends a statement that inserts one row, through
 * postgres_fdw's connection for userid; an error says where the row was
 * going.
 */
void
ws_shard_insert_row(Oid serverid, Oid userid, const char *sql, const char *table,
					int slot, const char *remote_table)
{
	PG_TRY();
	{
		remote_command(ws_shard_connection(serverid, userid), sql);
	}
	PG_CATCH();
	{
		ws_shard_rethrow_write_error(1, table, serverid, slot, remote_table);
	}
	PG_END_TRY();
}

/*
 * send_table sends the rows of the current subtransaction that the buffers of
 * one distributed table hold: a stream (shard_send.c) that each buffer's rows
 * join, ended at once.  Each server gets its share in one COPY into its table
 * of slots, which routes each line by its ws_slot to the slot's table, and the
 * servers work at the same time.
 */
static void
send_table(DistEntry *dist)
{
	HASH_SEQ_STATUS status;
	SlotBuffer *buf;
	List	   *sending = NIL;
	RouteStream *volatile stream;
	ListCell   *lc;

	hash_seq_init(&status, buffers);
	while ((buf = hash_seq_search(&status)) != NULL)
	{
		int			index;

		if (buf->dist == dist && current_rows(buf, &index) != NULL)
			sending = lappend(sending, buf);
	}
	/* One slot: its single row goes as an INSERT. */
	if (list_length(sending) <= 1)
	{
		if (sending != NIL && !defer_row(linitial(sending)))
			send_buffer(linitial(sending));
		return;
	}

	stream = ws_route_stream_open(dist, dist->name);
	PG_TRY();
	{
		foreach(lc, sending)
		{
			int			index;
			SavepointMark *from;

			buf = lfirst(lc);
			from = current_rows(buf, &index);
			ws_route_stream_add(stream, dist->slots[buf->slot].serverid,
								buf->copy_data.data + from->offset,
								buf->copy_data.len - from->offset, buf->rows - from->rows);
		}
		(void) ws_route_stream_end(stream);
	}
	PG_CATCH();
	{
		ws_route_stream_abort(stream);
		PG_RE_THROW();
	}
	PG_END_TRY();

	foreach(lc, sending)
	{
		int			index;
		SavepointMark *from;

		buf = lfirst(lc);
		from = current_rows(buf, &index);
		forget_rows(buf, from, index);
	}
}

/*
 * send_all sends every buffered row of the current subtransaction, at the
 * end of a statement, one distributed table at a time.
 */
static void
send_all(void)
{
	HASH_SEQ_STATUS status;
	SlotBuffer *buf;
	List	   *tables = NIL;
	ListCell   *lc;

	if (buffers == NULL)
		return;
	hash_seq_init(&status, buffers);
	while ((buf = hash_seq_search(&status)) != NULL)
		tables = list_append_unique_ptr(tables, buf->dist);
	if (tables != NIL)
		ws_defer_flush();	/* before any COPY, with its own error */
	foreach(lc, tables)
		send_table(lfirst(lc));
	list_free(tables);
}

/*
 * ws_shard_transmission_modes makes output functions write values the shard
 * reads back exactly, whatever this session's settings (as postgres_fdw
 * does: its connections use DateStyle ISO): ISO dates, postgres intervals,
 * exact floats (any extra_float_digits above 0 gives the shortest exact
 * form).  Returns the GUC nest level to undo, or -1 when the session's
 * settings already serve, as the defaults do: undoing a level walks every
 * setting, too slow for each row.
 */
int
ws_shard_transmission_modes(void)
{
	int			level;

	if (DateStyle == USE_ISO_DATES && IntervalStyle == INTSTYLE_POSTGRES &&
		extra_float_digits > 0)
		return -1;
	level = NewGUCNestLevel();
	if (DateStyle != USE_ISO_DATES)
		(void) set_config_option("datestyle", "ISO", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
	if (IntervalStyle != INTSTYLE_POSTGRES)
		(void) set_config_option("intervalstyle", "postgres", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
	if (extra_float_digits <= 0)
		(void) set_config_option("extra_float_digits", "3", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
	return level;
}

/*
 * ws_shard_parameter_modes sets postgres_fdw's settings for the parameters
 * it sends (its set_transmission_modes): ws_shard_transmission_modes' and
 * a search_path of pg_catalog alone, so that a regclass or regconfig value
 * names its schema.  Returns the GUC nest level to undo; for values
 * converted once per statement.
 */
int
ws_shard_parameter_modes(void)
{
	int			level = ws_shard_transmission_modes();

	if (level < 0)
		level = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	return level;
}

/*
 * ws_dist_row_modes sets the settings that a row of dist is written under for
 * its shard, and returns the GUC nest level to undo, or -1: postgres_fdw's
 * where the text of a column's values names objects (a regclass of public.t
 * written with a search_path of pg_catalog reads public.t, not a bare t that
 * the shard would look up in pg_catalog), and otherwise only what the
 * session's settings would get wrong, as each row pays for it.
 */
int
ws_dist_row_modes(DistEntry *dist)
{
	return dist->names_objects ? ws_shard_parameter_modes() : ws_shard_transmission_modes();
}

/*
 * ws_dist_append_line appends a row (its values, deformed) to out as a COPY
 * line for slot, the slot last, in COPY's binary format if the table's rows
 * travel so.
 */
void
ws_dist_append_line(StringInfo out, DistEntry *dist, TupleDesc desc, Datum *values,
					bool *nulls, int slot)
{
	int			guc_level = dist->binary ? -1 : ws_dist_row_modes(dist);

	if (dist->binary)
		pq_sendint16(out, dist->ncolumns + 1);
	for (int i = 0, n = 0; i < desc->natts; i++)
	{
		if (TupleDescAttr(desc, i)->attisdropped)
			continue;
		if (dist->binary && nulls[i])
			pq_sendint32(out, -1);
		else if (dist->binary)
			ws_append_binary_value(out, dist->binary_forms[i], &dist->send_functions[i],
								   values[i]);
		else
		{
			if (n > 0)
				appendStringInfoChar(out, '\t');
			if (nulls[i])
				appendStringInfoString(out, "\\N");
			else
				append_copy_value(out, OutputFunctionCall(&dist->out_functions[i], values[i]));
		}
		n++;
	}
	if (guc_level >= 0)
		AtEOXact_GUC(true, guc_level);
	if (dist->binary)
	{
		pq_sendint32(out, sizeof(int16));
		pq_sendint16(out, slot);
	}
	else
	{
		char		slot_text[16];

		slot_text[0] = '\t';
		appendBinaryStringInfo(out, slot_text, 1 + pg_ltoa(slot, slot_text + 1));
		appendStringInfoChar(out, '\n');
	}
}

/*
 * append_row appends a row to buf; the first row of a buffer is also kept
 * as text, for an INSERT.  Called in a short-lived memory context.
 */
static void
append_row(SlotBuffer *buf, TupleDesc desc, Datum *values, bool *nulls)
{
	if (buf->rows == 0)
	{
		int			guc_level = ws_dist_row_modes(buf->dist);

		for (int i = 0, n = 0; i < desc->natts; i++)
		{
			char	   *text;

			if (TupleDescAttr(desc, i)->attisdropped)
				continue;
			buf->first_offsets[n++] = nulls[i] ? -1 : buf->first_row.len;
			if (nulls[i])
				continue;
			text = OutputFunctionCall(&buf->dist->out_functions[i], values[i]);
			appendBinaryStringInfo(&buf->first_row, text, strlen(text) + 1);
		}
		if (guc_level >= 0)
			AtEOXact_GUC(true, guc_level);
	}
	ws_dist_append_line(&buf->copy_data, buf->dist, desc, values, nulls, buf->slot);
}

/*
 * ws_dist_route_slot returns the slot of a row (deformed) of a distributed
 * table, having locked the slot's foreign table, and sets *dist to the table's
 * entry as it stands once the lock is held.
 */
int
ws_dist_route_slot(Relation view, Datum *values, bool *nulls, DistEntry **dist_out)
{
	TupleDesc	desc = RelationGetDescr(view);
	SubTransactionId subid = GetCurrentSubTransactionId();
	DistEntry  *dist;
	int			slot;

	for (;;)
	{
		Datum		key;
		char	   *key_text;
		char		key_digits[MAXINT8LEN + 1];
		int			key_len;
		SlotInfo   *info;

		dist = ws_dist_open(view);
		key = values[dist->key_attnum - 1];
		if (nulls[dist->key_attnum - 1])
			ereport(ERROR,
					(errcode(ERRCODE_NOT_NULL_VIOLATION),
					 errmsg("null value in column \"%s\" of distributed table \"%s\"",
							NameStr(TupleDescAttr(desc, dist->key_attnum - 1)->attname), dist->name),
					 errdetail("The shard key decides where a row lives.")));

		/* The key's text, which the hash reads (int8out's, for integers). */
		key_text = key_digits;
		if (dist->key_type == INT8OID)
			key_len = pg_lltoa(DatumGetInt64(key), key_digits);
		else if (dist->key_type == INT4OID)
			key_len = pg_ltoa(DatumGetInt32(key), key_digits);
		else if (dist->key_type == INT2OID)
			key_len = pg_itoa(DatumGetInt16(key), key_digits);
		else
		{
			key_text = OutputFunctionCall(&dist->out_functions[dist->key_attnum - 1], key);
			key_len = strlen(key_text);
		}
		slot = ws_key_slot(key_text, key_len, dist->nslots);
		info = &dist->slots[slot];
		if (!OidIsValid(info->partition))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("slot %d of distributed table \"%s\" has no partition", slot, dist->name)));

		/*
		 * ws.rebalance holds a moving slot; the lock also brings news of the
		 * move.  Once this subtransaction holds it, taking it again brings
		 * nothing.
		 */
		if (dist->valid && info->locked_lxid == MyProc->lxid && info->locked_subid == subid)
			break;
		LockRelationOid(info->partition, RowExclusiveLock);
		if (dist->valid)
		{
			info->locked_lxid = MyProc->lxid;
			info->locked_subid = subid;
			break;
		}
		UnlockRelationOid(info->partition, RowExclusiveLock);
	}
	*dist_out = dist;
	return slot;
}

/*
 * ws_returned_row is what the trigger returns for the row it was given: a copy
 * in the caller's per-row memory.  A view's rows come in a virtual slot, so
 * ExecIRInsertTriggers hands the trigger a copy of the row made in the
 * statement's memory, and frees it only if the trigger returns another
 * tuple: given its own back, an INSERT ... SELECT of a million rows would
 * hold a million copies until it ends.
 */
Datum
ws_returned_row(HeapTuple tuple, MemoryContext caller_context)
{
	MemoryContextSwitchTo(caller_context);
	return PointerGetDatum(heap_copytuple(tuple));
}

/*
 * ws._route_insert() is the INSTEAD OF INSERT row trigger of a distributed
 * table: it buffers the row for its slot and returns it (or, for an INSERT
 * ... ON CONFLICT, sends it at once and returns what the shard stored).
 */
Datum
write_scaling_route_insert(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	view;
	TupleDesc	desc;
	HeapTuple	tuple;
	DistEntry  *dist;
	SlotBuffer *buf;
	MemoryContext old;
	int			slot;
	Datum	   *values;
	bool	   *nulls;
	int			client_encoding;
	MemoryContext caller_context;
	WsUpsert   *upsert;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_INSTEAD(trigdata->tg_event) ||
		!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event) || !TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("ws._route_insert() must be an INSTEAD OF INSERT row trigger")));
	view = trigdata->tg_relation;
	desc = RelationGetDescr(view);
	tuple = trigdata->tg_trigtuple;

	/*
	 * Values are converted in a context reset for each row; only their
	 * escaped text goes into the buffer (which grows in its own context).
	 */
	if (row_context == NULL)
		row_context = AllocSetContextCreate(TopMemoryContext, "write_scaling routed row",
											ALLOCSET_DEFAULT_SIZES);
	MemoryContextReset(row_context);
	caller_context = MemoryContextSwitchTo(row_context);
	values = palloc(sizeof(Datum) * desc->natts);
	nulls = palloc(sizeof(bool) * desc->natts);
	heap_deform_tuple(tuple, desc, values, nulls);

	upsert = ws_upsert_running(RelationGetRelid(view));
	if (upsert != NULL)
		return ws_upsert_route_row(view, upsert, tuple, values, nulls, caller_context);

	if (ws_shard_streaming_now(RelationGetRelid(view)))
	{
		ws_route_stream_statement_row(view, values, nulls);
		return ws_returned_row(tuple, caller_context);
	}

	slot = ws_dist_route_slot(view, values, nulls, &dist);
	buf = buffer_for(dist, slot);
	old = MemoryContextSwitchTo(buffer_context);
	{
		SubTransactionId subid = GetCurrentSubTransactionId();
		SavepointMark *last = buf->marks != NIL ? llast(buf->marks) : NULL;

		if (last == NULL || last->subid != subid)
		{
			SavepointMark *mark = palloc(sizeof(SavepointMark));

			mark->subid = subid;
			mark->offset = buf->copy_data.len;
			mark->rows = buf->rows;
			buf->marks = lappend(buf->marks, mark);
		}
	}

	MemoryContextSwitchTo(row_context);
	client_encoding = dist->binary ? ws_enter_database_encoding() : -1;
	if (client_encoding < 0)
		append_row(buf, desc, values, nulls);
	else
	{
		PG_TRY();
		{
			append_row(buf, desc, values, nulls);
		}
		PG_FINALLY();
		{
			ws_leave_database_encoding(client_encoding);
		}
		PG_END_TRY();
	}
	buf->rows++;
	MemoryContextSwitchTo(old);

	if (buf->rows >= ROUTE_BATCH_ROWS || buf->copy_data.len >= ROUTE_BATCH_BYTES)
		send_buffer(buf);

	return ws_returned_row(tuple, caller_context);
}

/*
 * ws._route_flush() is the AFTER INSERT statement trigger of a distributed
 * table: every buffered row is sent before the statement ends.
 */
Datum
write_scaling_route_flush(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("ws._route_flush() must be a statement trigger")));
	if (ws_shard_streaming_now(RelationGetRelid(((TriggerData *) fcinfo->context)->tg_relation)))
		ws_route_stream_statement_end();
	send_all();
	return PointerGetDatum(NULL);
}

/*
 * ws_shard_routes_only tells whether a relation is a distributed table whose
 * only triggers are its routing ones, both firing: rows inserted into it
 * need nothing but routing.
 */
bool
ws_shard_routes_only(Relation view)
{
	TriggerDesc *triggers = view->trigdesc;
	bool		route = false;
	bool		flush = false;

	if (view->rd_rel->relkind != RELKIND_VIEW || triggers == NULL)
		return false;
	for (int i = 0; i < triggers->numtriggers; i++)
	{
		Trigger    *trigger = &triggers->triggers[i];
		bool		fires;
		FmgrInfo	function;

		if (SessionReplicationRole == SESSION_REPLICATION_ROLE_REPLICA)
			fires = trigger->tgenabled == TRIGGER_FIRES_ALWAYS ||
				trigger->tgenabled == TRIGGER_FIRES_ON_REPLICA;
		else
			fires = trigger->tgenabled == TRIGGER_FIRES_ALWAYS ||
				trigger->tgenabled == TRIGGER_FIRES_ON_ORIGIN;
		if (!fires)
			continue;
		if (trigger->tgqual != NULL)
			return false;		/* a WHEN clause: not ours */
		fmgr_info(trigger->tgfoid, &function);
		if (function.fn_addr == write_scaling_route_insert &&
			trigger->tgtype == (TRIGGER_TYPE_ROW | TRIGGER_TYPE_INSTEAD | TRIGGER_TYPE_INSERT))
			route = true;
		else if (function.fn_addr == write_scaling_route_flush &&
				 trigger->tgtype == (TRIGGER_TYPE_AFTER | TRIGGER_TYPE_INSERT))
			flush = true;
		else
			return false;
	}
	return route && flush;
}

/*
 * ws_shard_routes tells whether rows inserted into a relation are routed to
 * shards: it is a view with write_scaling's INSTEAD OF INSERT trigger.
 * Unlike ws_shard_is_distributed, it reads no table of the extension.
 */
bool
ws_shard_routes(Relation view)
{
	TriggerDesc *triggers = view->trigdesc;

	if (view->rd_rel->relkind != RELKIND_VIEW || triggers == NULL)
		return false;
	for (int i = 0; i < triggers->numtriggers; i++)
	{
		Trigger    *trigger = &triggers->triggers[i];
		FmgrInfo	function;

		if (!TRIGGER_TYPE_MATCHES(trigger->tgtype, TRIGGER_TYPE_ROW, TRIGGER_TYPE_INSTEAD,
								  TRIGGER_TYPE_INSERT))
			continue;
		fmgr_info(trigger->tgfoid, &function);
		if (function.fn_addr == write_scaling_route_insert)
			return true;
	}
	return false;
}

/* --- transaction callbacks ------------------------------------------------ */

static void
route_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			if (buffers != NULL)
			{
				HASH_SEQ_STATUS status;
				SlotBuffer *buf;

				int			unsent = 0;

				hash_seq_init(&status, buffers);
				while ((buf = hash_seq_search(&status)) != NULL)
					unsent += buf->rows;
				if (unsent > 0)
					ereport(ERROR,
							(errcode(ERRCODE_INTERNAL_ERROR),
							 errmsg("%d rows routed to shards were not sent before commit", unsent)));
			}
			break;
		case XACT_EVENT_COMMIT:
			if (nrouted > 0)
				publish_routed();
			/* FALLTHROUGH */
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
			/* The memory goes with TopTransactionContext. */
			buffers = NULL;
			buffer_context = NULL;
			nrouted = 0;
			break;
		default:
			break;
	}
}

/*
 * A rolled-back subtransaction takes back the rows it buffered, and those
 * of its committed children.
 */
static void
route_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					   SubTransactionId parentSubid, void *arg)
{
	HASH_SEQ_STATUS status;
	SlotBuffer *buf;

	if (event != SUBXACT_EVENT_ABORT_SUB && event != SUBXACT_EVENT_COMMIT_SUB)
		return;
	for (int i = 0; i < nrouted; i++)
		if (routed[i].subid == mySubid)
		{
			if (event == SUBXACT_EVENT_ABORT_SUB)
				routed[i].rows = 0;
			routed[i].subid = parentSubid;
		}
	if (buffers == NULL)
		return;
	hash_seq_init(&status, buffers);
	while ((buf = hash_seq_search(&status)) != NULL)
	{
		ListCell   *lc;

		foreach(lc, buf->marks)
		{
			SavepointMark *mark = lfirst(lc);

			if (mark->subid != mySubid)
				continue;
			if (event == SUBXACT_EVENT_COMMIT_SUB)
			{
				mark->subid = parentSubid;
				continue;
			}
			forget_rows(buf, mark, foreach_current_index(lc));
			break;
		}
	}
}

/*
 * ws_shard_register_callbacks arranges for the end-of-transaction checks.
 */
void
ws_shard_register_callbacks(void)
{
	/* Callbacks run newest first: the check of unsent rows before the wait. */
	ws_shard_stream_register();	/* before shard_defer.c's hooks, inside them */
	ws_shard_upsert_register();
	ws_shard_utility_register();
	ws_shard_guard_register();	/* inside shard_defer.c's planner hook: its lookups are nested */
	ws_shard_modify_register();
	ws_defer_register();
	RegisterXactCallback(route_xact_callback, NULL);
	RegisterSubXactCallback(route_subxact_callback, NULL);
	ws_route_stream_register();
}

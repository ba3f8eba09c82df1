/*-------------------------------------------------------------------------
 *
 * event_store.c
 *	  Event stores: append with an expected version, stream reads, and the
 *	  gap-safe global read.
 *
 * Glossary
 *	  store		an events table registered in ws.event_stores.
 *	  stream	the events of one entity in a store, numbered by version
 *				1, 2, 3 ... without gaps.
 *	  position	an event's place in the store's global order; positions have
 *				gaps (aborted appends) and are handed out by frontier.c.
 *
 * How append locks a stream
 *	  An append takes a transaction-level lock on the stream (an advisory
 *	  lock tag in write_scaling's own namespace: field4 = WS_STREAM_LOCK_ID,
 *	  so it never collides with user advisory locks), then reads the stream's
 *	  version with a fresh snapshot, so that it sees the append it may have
 *	  waited for.  Appends to one stream therefore serialise until commit;
 *	  appends to different streams only share a brief LWLock in frontier.c.
 *	  Two transactions that append to the same two streams in opposite
 *	  orders can deadlock; PostgreSQL's deadlock detector aborts one of them.
 *
 * Idempotency
 *	  When an appended event carries an id that is already stored, the append
 *	  is a replay if every event of the batch is stored, in order, at
 *	  consecutive versions of the same stream (starting right after
 *	  expected_version when one is given): it returns the version the
 *	  original append returned and writes nothing.  Anything else is an
 *	  ERRCODE_WS_EVENT_ID_CONFLICT error.
 *
 * Durability
 *	  An append forces its transaction to commit synchronously, whatever
 *	  synchronous_commit says.  Rows become visible at commit, before an
 *	  asynchronous commit reaches disk; a subscriber could then consume an
 *	  event that a crash erases and whose position is later handed out again.
 *
 * Writing
 *	  A standard events table is written by event_writer.c, as COPY writes;
 *	  one with triggers, rules, row-level security or altered columns goes
 *	  through SPI.  The version is read straight from the (stream, version)
 *	  index, so append checks INSERT and SELECT privileges itself.
 *
 * Global reads
 *	  ws.read_all asks frontier.c for the safe position first and takes its
 *	  snapshot second (GetLatestSnapshot, whatever the isolation level), and
 *	  reads only up to the safe position.  See frontier.c for why that range
 *	  is closed.  A standby refuses global reads: it cannot see the
 *	  primary's in-flight appends.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/relscan.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/uuid.h"

#include "event_store.h"
#include "frontier.h"
#include "ws_errcodes.h"

/* The lock tag namespace of stream locks ("WS"). */
#define WS_STREAM_LOCK_ID	0x5753

/* Longer stream names would not fit in a btree index entry. */
#define WS_MAX_STREAM_NAME	1024

PG_FUNCTION_INFO_V1(write_scaling_append);
PG_FUNCTION_INFO_V1(write_scaling_read_stream);
PG_FUNCTION_INFO_V1(write_scaling_read_all);
PG_FUNCTION_INFO_V1(write_scaling_stream_version);
PG_FUNCTION_INFO_V1(write_scaling_safe_position);
PG_FUNCTION_INFO_V1(write_scaling_forget_event_store);

static void require_privilege(StoreEntry *store, AclMode mode);
static void lock_stream(StoreEntry *store, text *stream);
static int64 stream_version(StoreEntry *store, text *stream, Snapshot snapshot);
static int	store_slot(StoreEntry *store);
static bool is_replay(StoreEntry *store, text *stream, EventBatch *batch,
					  int64 after_version, bool has_expected, int64 *version);
static void insert_events(StoreEntry *store, text *stream, int64 first_position,
						  int64 first_version, EventBatch *batch);
static void put_rows(ReturnSetInfo *rsinfo, SPITupleTable *tuptable,
					 uint64 nrows, bool with_safe, int64 safe);

/*
 * run_plan executes a store plan and checks the SPI result, with a snapshot
 * taken now when latest is set, otherwise with the usual statement snapshot.
 */
static void
run_plan(SPIPlanPtr plan, Datum *values, const char *nulls, bool latest,
		 int expected_rc)
{
	int			rc;

	if (latest)
		rc = SPI_execute_snapshot(plan, values, nulls, GetLatestSnapshot(),
								  InvalidSnapshot, false, true, 0);
	else
		rc = SPI_execute_plan(plan, values, nulls, expected_rc == SPI_OK_SELECT, 0);
	if (rc != expected_rc)
		elog(ERROR, "SPI_execute failed: %s", SPI_result_code_string(rc));
}

static void
connect_spi(void)
{
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
}

/*
 * ws_store_arg returns argument argno, a store name, as a C string.
 */
char *
ws_store_arg(FunctionCallInfo fcinfo, int argno)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("event store name must not be null")));
	return ws_store_name_arg(PG_GETARG_TEXT_PP(argno));
}

/*
 * ws.append(store text, stream text, expected_version bigint, events jsonb)
 * returns the stream's version after the append.
 */
Datum
write_scaling_append(PG_FUNCTION_ARGS)
{
	char	   *name = ws_store_arg(fcinfo, 0);
	text	   *stream = ws_stream_name_arg(fcinfo, 1);
	bool		has_expected = !PG_ARGISNULL(2);
	int64		expected = has_expected ? PG_GETARG_INT64(2) : 0;
	EventBatch	batch;
	StoreEntry *store;
	int			slot;
	int64		current;
	int64		first_position;

	PreventCommandIfReadOnly("ws.append()");
	PreventCommandIfParallelMode("ws.append()");

	if (has_expected && expected < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("expected version must be 0 or greater"),
				 errdetail("The expected version was " INT64_FORMAT ".", expected),
				 errhint("Pass NULL to append at any version, or 0 to start a new stream.")));
	if (PG_ARGISNULL(3))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("events must not be null")));
	ws_parse_events(PG_GETARG_JSONB_P(3), &batch);

	connect_spi();

	store = ws_open_store(name, RowExclusiveLock);
	require_privilege(store, ACL_INSERT);
	require_privilege(store, ACL_SELECT);
	slot = store_slot(store);
	lock_stream(store, stream);
	/* A fresh snapshot sees the append we may have waited for. */
	CommandCounterIncrement();
	current = stream_version(store, stream, GetLatestSnapshot());

	if (batch.any_id)
	{
		int64		replayed;

		if (is_replay(store, stream, &batch, has_expected ? expected : current,
					  has_expected, &replayed))
		{
			ws_frontier_count(slot, WS_COUNT_REPLAYS, 1);
			SPI_finish();
			PG_RETURN_INT64(replayed);
		}
	}

	if (has_expected && expected != current)
	{
		ws_frontier_count(slot, WS_COUNT_CONFLICTS, 1);
		ereport(ERROR,
				(errcode(ERRCODE_WS_WRONG_EXPECTED_VERSION),
				 errmsg("wrong expected version for stream \"%s\" of event store \"%s\"",
						text_to_cstring(stream), name),
				 expected == 0 ?
				 errdetail("Expected the stream not to exist; it is at version " INT64_FORMAT ".",
						   current) :
				 errdetail("Expected version " INT64_FORMAT ", actual version " INT64_FORMAT ".",
						   expected, current),
				 errhint("Read the stream again and retry the append.")));
	}

	first_position = ws_frontier_reserve(slot, batch.count);
	if (store->write_directly)
	{
		Relation	rel = table_open(store->relid, NoLock);

		ws_write_events(rel, first_position, stream, current + 1, &batch);
		table_close(rel, NoLock);
	}
	else
		insert_events(store, stream, first_position, current + 1, &batch);

	/* Crossing a multiple of the snapshot interval makes the stream due. */
	if (store->snapshot_every > 0 &&
		current / store->snapshot_every != (current + batch.count) / store->snapshot_every)
		ws_queue_snapshot(store, stream,
						  (current + batch.count) / store->snapshot_every * store->snapshot_every);

	ForceSyncCommit();
	ws_frontier_count(slot, WS_COUNT_APPENDS, 1);
	ws_frontier_count(slot, WS_COUNT_EVENTS, batch.count);

	SPI_finish();
	PG_RETURN_INT64(current + batch.count);
}

/*
 * ws_stream_name_arg returns argument argno, a stream name, checked.
 */
text *
ws_stream_name_arg(FunctionCallInfo fcinfo, int argno)
{
	text	   *stream;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("stream name must not be null")));
	stream = PG_GETARG_TEXT_PP(argno);
	if (VARSIZE_ANY_EXHDR(stream) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("stream name must not be empty")));
	if (VARSIZE_ANY_EXHDR(stream) > WS_MAX_STREAM_NAME)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("stream name is too long"),
				 errdetail("The name is %d bytes; the limit is %d.",
						   (int) VARSIZE_ANY_EXHDR(stream), WS_MAX_STREAM_NAME)));
	return stream;
}

/*
 * require_privilege raises the usual permission error unless the current
 * user has mode on the store's events table.  Needed because append and
 * stream_version read the table's index directly, without the executor's
 * checks.
 */
static void
require_privilege(StoreEntry *store, AclMode mode)
{
	if (pg_class_aclcheck(store->relid, GetUserId(), mode) != ACLCHECK_OK)
		aclcheck_error(ACLCHECK_NO_PRIV, OBJECT_TABLE, get_rel_name(store->relid));
}

/*
 * lock_stream takes the stream's lock until the end of the transaction.
 */
static void
lock_stream(StoreEntry *store, text *stream)
{
	LOCKTAG		tag;
	uint32		hash = hash_bytes((unsigned char *) VARDATA_ANY(stream),
								  VARSIZE_ANY_EXHDR(stream));

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, store->relid, hash, WS_STREAM_LOCK_ID);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
}

/*
 * describe_table finds the store's (stream, version) index and the attribute
 * number of "version", and decides whether event_writer.c may write the
 * table; heap is the open events table.
 */
static void
describe_table(StoreEntry *store, Relation heap)
{
	List	   *indexes = RelationGetIndexList(heap);
	AttrNumber	stream_attnum = get_attnum(store->relid, "stream");
	ListCell   *lc;

	store->version_attnum = get_attnum(store->relid, "version");
	foreach(lc, indexes)
	{
		Relation	index = index_open(lfirst_oid(lc), AccessShareLock);
		Form_pg_index form = index->rd_index;

		if (form->indisunique && form->indnkeyatts == 2 &&
			form->indkey.values[0] == stream_attnum &&
			form->indkey.values[1] == store->version_attnum)
			store->version_index = RelationGetRelid(index);
		index_close(index, AccessShareLock);
	}
	list_free(indexes);
	store->write_directly = ws_can_write_directly(heap);

	if (!OidIsValid(store->version_index))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("events table %s has no unique index on (stream, version)",
						RelationGetRelationName(heap)),
				 errhint("Event store tables must keep the indexes ws.create_event_store made.")));
}

/*
 * stream_version returns the stream's highest version under snapshot, 0 if
 * it has none, read straight from the (stream, version) index: a backward
 * scan stops at the first visible entry.  The caller holds a lock on the
 * events table.
 */
static int64
stream_version(StoreEntry *store, text *stream, Snapshot snapshot)
{
	Relation	heap = table_open(store->relid, NoLock);
	Relation	index;
	TupleTableSlot *slot;
	IndexScanDesc scan;
	ScanKeyData key;
	int64		version = 0;

	if (!OidIsValid(store->version_index))
		describe_table(store, heap);
	index = index_open(store->version_index, AccessShareLock);
	slot = table_slot_create(heap, NULL);
	snapshot = RegisterSnapshot(snapshot);

	/* ScanKeyInit compares in the C collation, the stream column's. */
	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_TEXTEQ, PointerGetDatum(stream));
	scan = index_beginscan(heap, index, snapshot, 1, 0);
	index_rescan(scan, &key, 1, NULL, 0);
	if (index_getnext_slot(scan, BackwardScanDirection, slot))
	{
		bool		isnull;

		version = DatumGetInt64(slot_getattr(slot, store->version_attnum, &isnull));
	}
	index_endscan(scan);

	UnregisterSnapshot(snapshot);
	ExecDropSingleTupleTableSlot(slot);
	index_close(index, NoLock);
	table_close(heap, NoLock);
	return version;
}

/*
 * store_slot returns the store's frontier slot, loading its counter from the
 * table on first use since startup.
 */
static int
store_slot(StoreEntry *store)
{
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("global positions of event stores are not available during recovery"),
				 errdetail("A standby does not know which appends are still in flight on the primary, so a global read could skip events."),
				 errhint("Run ws.read_all and ws.safe_position on the primary.")));

	if (store->slot < 0)
		store->slot = ws_frontier_attach(store->relid);

	if (store->slot_loaded)
		return store->slot;

	if (!ws_frontier_is_loaded(store->slot))
	{
		bool		isnull;
		Datum		max_position;

		run_plan(ws_store_plan(store, PLAN_MAX_POSITION), NULL, NULL, true,
				 SPI_OK_SELECT);
		max_position = SPI_getbinval(SPI_tuptable->vals[0],
									 SPI_tuptable->tupdesc, 1, &isnull);
		ws_frontier_load(store->slot, isnull ? 0 : DatumGetInt64(max_position));
	}
	store->slot_loaded = true;
	return store->slot;
}

/*
 * is_replay decides whether a batch with ids was appended before (see the
 * file header); after_version is the version the batch would follow: the
 * expected version if given, else the current one.  Returns true and sets
 * *version when it was; raises an error when some id is stored elsewhere;
 * returns false when none is stored.
 */
static bool
is_replay(StoreEntry *store, text *stream, EventBatch *batch,
		  int64 after_version, bool has_expected, int64 *version)
{
	ArrayType  *ids;
	Datum		arg;
	int64		base = 0;
	SPITupleTable *found;
	uint64		nfound;
	char	   *stream_name = text_to_cstring(stream);
	int			nids = 0;
	Datum	   *present = palloc(batch->count * sizeof(Datum));

	for (int i = 0; i < batch->count; i++)
		if (!batch->id_nulls[i])
			present[nids++] = batch->ids[i];
	ids = construct_array(present, nids, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR);
	arg = PointerGetDatum(ids);
	run_plan(ws_store_plan(store, PLAN_FIND_IDS), &arg, NULL, true, SPI_OK_SELECT);
	found = SPI_tuptable;
	nfound = SPI_processed;
	if (nfound == 0)
		return false;

	for (uint64 r = 0; r < nfound; r++)
	{
		bool		isnull;
		pg_uuid_t  *id = DatumGetUUIDP(SPI_getbinval(found->vals[r], found->tupdesc, 1, &isnull));
		char	   *row_stream = SPI_getvalue(found->vals[r], found->tupdesc, 2);
		int64		row_version = DatumGetInt64(SPI_getbinval(found->vals[r], found->tupdesc, 3, &isnull));
		int			index = -1;

		for (int i = 0; i < batch->count && index < 0; i++)
			if (!batch->id_nulls[i] &&
				memcmp(DatumGetUUIDP(batch->ids[i]), id, UUID_LEN) == 0)
				index = i;
		Assert(index >= 0);

		/* The version the first event of the batch has, or must have. */
		if (r == 0)
			base = has_expected ? after_version + 1 : row_version - index;

		if (nfound != (uint64) batch->count || strcmp(row_stream, stream_name) != 0 ||
			row_version != base + index)
			ereport(ERROR,
					(errcode(ERRCODE_WS_EVENT_ID_CONFLICT),
					 errmsg("event id %s is already stored at another position",
							DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(id)))),
					 nfound != (uint64) batch->count ?
					 errdetail("Only " UINT64_FORMAT " of the %d events of this append are stored; this one is version " INT64_FORMAT " of stream \"%s\".",
							   nfound, batch->count, row_version, row_stream) :
					 errdetail("It is version " INT64_FORMAT " of stream \"%s\"; this append would store it as version " INT64_FORMAT " of stream \"%s\".",
							   row_version, row_stream, after_version + 1 + index, stream_name),
					 errhint("An append is replayed only when all of its events are stored at the same versions; give new events new ids.")));
	}

	*version = base + batch->count - 1;
	return true;
}

/*
 * insert_events writes the batch at the reserved positions through SPI, for
 * events tables that event_writer.c does not serve (triggers, row-level
 * security, extra columns).
 */
static void
insert_events(StoreEntry *store, text *stream, int64 first_position,
			  int64 first_version, EventBatch *batch)
{
	Datum		values[7];
	char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};
	int			rc;

	values[0] = Int64GetDatum(first_position);
	values[1] = PointerGetDatum(stream);
	values[2] = Int64GetDatum(first_version);

	if (batch->count == 1)
	{
		values[3] = batch->ids[0];
		nulls[3] = batch->id_nulls[0] ? 'n' : ' ';
		values[4] = batch->types[0];
		values[5] = batch->data[0];
		values[6] = batch->metadata[0];
		nulls[6] = batch->metadata_nulls[0] ? 'n' : ' ';
		rc = SPI_execute_plan(ws_store_plan(store, PLAN_INSERT_ONE), values, nulls,
							  false, 0);
	}
	else
	{
		int			dims[1] = {batch->count};
		int			lbs[1] = {1};

		values[3] = PointerGetDatum(construct_md_array(batch->ids, batch->id_nulls,
													   1, dims, lbs, UUIDOID,
													   UUID_LEN, false, TYPALIGN_CHAR));
		values[4] = PointerGetDatum(construct_array(batch->types, batch->count,
													TEXTOID, -1, false, TYPALIGN_INT));
		values[5] = PointerGetDatum(construct_array(batch->data, batch->count,
													JSONBOID, -1, false, TYPALIGN_INT));
		values[6] = PointerGetDatum(construct_md_array(batch->metadata,
													   batch->metadata_nulls,
													   1, dims, lbs, JSONBOID,
													   -1, false, TYPALIGN_INT));
		rc = SPI_execute_plan(ws_store_plan(store, PLAN_INSERT_MANY), values, nulls,
							  false, 0);
	}
	if (rc != SPI_OK_INSERT || SPI_processed != (uint64) batch->count)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("events table of event store \"%s\" did not store the appended events",
						store->name),
				 errdetail("%d events were appended, " UINT64_FORMAT " rows were inserted.",
						   batch->count, rc == SPI_OK_INSERT ? SPI_processed : 0),
				 errhint("A rule or a BEFORE trigger on the events table must not skip or redirect inserts.")));
}

/*
 * ws.read_stream(store, stream, from_version, max_count) returns setof ws.event
 * in version order.
 */
Datum
write_scaling_read_stream(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *name = ws_store_arg(fcinfo, 0);
	text	   *stream = ws_stream_name_arg(fcinfo, 1);
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};
	StoreEntry *store;

	if (PG_ARGISNULL(2) || PG_GETARG_INT64(2) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("from_version must be 0 or greater")));
	if (!PG_ARGISNULL(3) && PG_GETARG_INT32(3) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_count must be 0 or greater, or null for all")));

	InitMaterializedSRF(fcinfo, 0);
	values[0] = PointerGetDatum(stream);
	values[1] = PG_GETARG_DATUM(2);
	values[2] = PG_ARGISNULL(3) ? (Datum) 0 : Int64GetDatum(PG_GETARG_INT32(3));
	nulls[2] = PG_ARGISNULL(3) ? 'n' : ' ';

	connect_spi();
	store = ws_open_store(name, AccessShareLock);
	run_plan(ws_store_plan(store, PLAN_READ_STREAM), values, nulls, false,
			 SPI_OK_SELECT);
	put_rows(rsinfo, SPI_tuptable, SPI_processed, false, 0);
	SPI_finish();
	return (Datum) 0;
}

/*
 * ws.read_all(store, after, max_count) returns the events after position
 * "after" up to the safe position, in position order, each with the safe
 * position.  The caller passes back the last global_position it received.
 */
Datum
write_scaling_read_all(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *name = ws_store_arg(fcinfo, 0);
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};
	StoreEntry *store;
	int64		safe;

	if (PG_ARGISNULL(1) || PG_GETARG_INT64(1) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("checkpoint \"after\" must be 0 or greater"),
				 errhint("Pass 0 to read from the start, then the last global_position received.")));
	if (!PG_ARGISNULL(2) && PG_GETARG_INT32(2) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_count must be 0 or greater, or null for all")));

	InitMaterializedSRF(fcinfo, 0);

	connect_spi();
	store = ws_open_store(name, AccessShareLock);
	safe = ws_frontier_safe_position(store_slot(store));

	/* The snapshot must be taken after the safe position: run_plan does. */
	values[0] = PG_GETARG_DATUM(1);
	values[1] = Int64GetDatum(safe);
	values[2] = PG_ARGISNULL(2) ? (Datum) 0 : Int64GetDatum(PG_GETARG_INT32(2));
	nulls[2] = PG_ARGISNULL(2) ? 'n' : ' ';
	run_plan(ws_store_plan(store, PLAN_READ_ALL), values, nulls, true,
			 SPI_OK_SELECT);
	put_rows(rsinfo, SPI_tuptable, SPI_processed, true, safe);
	SPI_finish();
	return (Datum) 0;
}

/*
 * put_rows copies SPI rows into the SRF's tuplestore, adding the safe
 * position as a last column when with_safe is set.
 */
static void
put_rows(ReturnSetInfo *rsinfo, SPITupleTable *tuptable, uint64 nrows,
		 bool with_safe, int64 safe)
{
	int			natts = tuptable->tupdesc->natts;
	Datum	   *values = palloc((natts + 1) * sizeof(Datum));
	bool	   *nulls = palloc((natts + 1) * sizeof(bool));

	for (uint64 r = 0; r < nrows; r++)
	{
		heap_deform_tuple(tuptable->vals[r], tuptable->tupdesc, values, nulls);
		if (with_safe)
		{
			values[natts] = Int64GetDatum(safe);
			nulls[natts] = false;
		}
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
}

/*
 * ws.stream_version(store, stream) returns the stream's version, 0 if the
 * stream has no events.
 */
Datum
write_scaling_stream_version(PG_FUNCTION_ARGS)
{
	char	   *name = ws_store_arg(fcinfo, 0);
	text	   *stream = ws_stream_name_arg(fcinfo, 1);
	StoreEntry *store;
	int64		version;

	connect_spi();
	store = ws_open_store(name, AccessShareLock);
	require_privilege(store, ACL_SELECT);
	version = stream_version(store, stream, GetActiveSnapshot());
	SPI_finish();
	PG_RETURN_INT64(version);
}

/*
 * ws.safe_position(store) returns the position up to which ws.read_all can
 * read now.
 */
Datum
write_scaling_safe_position(PG_FUNCTION_ARGS)
{
	char	   *name = ws_store_arg(fcinfo, 0);
	StoreEntry *store;
	int64		safe;

	connect_spi();
	store = ws_open_store(name, AccessShareLock);
	safe = ws_frontier_safe_position(store_slot(store));
	SPI_finish();
	PG_RETURN_INT64(safe);
}

/*
 * ws._forget_event_store(events_table regclass) frees the store's shared
 * memory slot when the calling transaction, which drops the table, commits.
 */
Datum
write_scaling_forget_event_store(PG_FUNCTION_ARGS)
{
	ws_frontier_forget_at_commit(PG_GETARG_OID(0));
	PG_RETURN_VOID();
}

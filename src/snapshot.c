/*-------------------------------------------------------------------------
 *
 * snapshot.c
 *	  Stream state from a reducer: ws.load folds a stream's events, starting
 *	  from its latest usable snapshot; ws.snapshot stores the result.
 *
 * Glossary
 *	  reducer	  a user function (state jsonb, event ws.event) returns jsonb;
 *				  the state is NULL before the first event.
 *	  policy	  ws.snapshot_policies: a store's reducer, reducer_version and
 *				  interval "every".
 *	  usable	  a snapshot whose reducer, reducer_version and fingerprint (a
 *				  hash of the reducer's definition) all match the policy now.
 *				  Any other snapshot is ignored, never applied: replacing the
 *				  reducer's body changes the fingerprint even when the
 *				  function keeps its OID.
 *
 * Folding calls the reducer through fmgr, one call per event, with no SQL
 * statement per event; events are fetched from a cursor a thousand at a
 * time.  The state lives in one of two memory contexts that take turns, so
 * a fold of any length holds at most two states.
 *
 * The worker (worker.c) keeps snapshots fresh: an append queues its stream
 * in ws.snapshot_queue when the stream's version crosses a multiple of the
 * policy's interval (ws_queue_snapshot), so that no pass scans an events
 * table, and the worker calls ws.snapshot for each queued stream.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/regproc.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

#include "event_store.h"

PG_FUNCTION_INFO_V1(write_scaling_load);
PG_FUNCTION_INFO_V1(write_scaling_snapshot);
PG_FUNCTION_INFO_V1(write_scaling_reducer_fingerprint);
PG_FUNCTION_INFO_V1(write_scaling_store_changed);

/* Events fetched per cursor round trip while folding. */
#define FOLD_FETCH_SIZE 1000

/*
 * Set in the snapshot worker: there each reducer runs as the role that owns
 * it, in a security-restricted context, never as the worker's role (a
 * superuser by default).  Sessions run reducers as themselves, as any
 * function they call.
 */
static bool reducers_run_as_owner = false;

/* A store's snapshot policy as ws.load needs it. */
typedef struct SnapshotPolicy
{
	Oid			reducer;
	int32		reducer_version;
	int64		fingerprint;
} SnapshotPolicy;

/* The result of a fold. */
typedef struct FoldResult
{
	Datum		state;			/* jsonb, in the caller's memory context */
	bool		state_isnull;
	int64		version;		/* last event folded, 0 for none */
	int64		snapshot_version;	/* where the fold started */
	int64		events_folded;
} FoldResult;

static int64
fingerprint_of(Oid reducer)
{
	HeapTuple	tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(reducer));
	static const AttrNumber definition[] = {
		Anum_pg_proc_prosrc, Anum_pg_proc_probin, Anum_pg_proc_prosqlbody,
		Anum_pg_proc_proconfig
	};
	bool		isnull;
	uint64		hash;

	if (!HeapTupleIsValid(tuple))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("reducer function with OID %u does not exist", reducer)));

	hash = ((Form_pg_proc) GETSTRUCT(tuple))->prolang;
	for (int i = 0; i < lengthof(definition); i++)
	{
		Datum		d = SysCacheGetAttr(PROCOID, tuple, definition[i], &isnull);
		text	   *t;

		if (isnull)
			continue;
		/* prosqlbody is a node tree, proconfig an array: hash their text. */
		t = definition[i] == Anum_pg_proc_prosqlbody ? DatumGetTextPP(d) :
			definition[i] == Anum_pg_proc_proconfig ?
			cstring_to_text(OidOutputFunctionCall(F_ARRAY_OUT, d)) :
			DatumGetTextPP(d);
		hash = hash_bytes_extended((unsigned char *) VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t),
								   hash + i);
	}
	ReleaseSysCache(tuple);
	return (int64) hash;
}

/*
 * ws._reducer_fingerprint(reducer regprocedure) returns the hash of the
 * reducer's definition that snapshots are stamped with.
 */
Datum
write_scaling_reducer_fingerprint(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(fingerprint_of(PG_GETARG_OID(0)));
}

/*
 * ws._store_changed(events_table regclass) makes every session drop what it
 * caches about the store (its snapshot interval, plans) at its next use.
 */
Datum
write_scaling_store_changed(PG_FUNCTION_ARGS)
{
	CacheInvalidateRelcacheByRelid(PG_GETARG_OID(0));
	PG_RETURN_VOID();
}

/*
 * ws_queue_snapshot queues stream for the snapshot worker.  The caller is
 * connected to SPI.
 */
void
ws_queue_snapshot(StoreEntry *store, text *stream, int64 due_version)
{
	Datum		values[3];
	int			rc;

	values[0] = CStringGetTextDatum(store->name);
	values[1] = PointerGetDatum(stream);
	values[2] = Int64GetDatum(due_version);
	rc = SPI_execute_plan(ws_store_plan(store, PLAN_QUEUE_SNAPSHOT), values, NULL,
						  false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(rc));
}

/*
 * ws_run_reducers_as_owner makes this process run every reducer as its
 * owner; called once by the snapshot worker.
 */
void
ws_run_reducers_as_owner(void)
{
	reducers_run_as_owner = true;
}

/*
 * get_policy reads the store's snapshot policy, or raises an error that says
 * how to set one.  The caller is connected to SPI.
 */
static void
get_policy(const char *name, SnapshotPolicy *policy)
{
	Datum		arg = CStringGetTextDatum(name);
	bool		isnull;
	int			rc;

	rc = SPI_execute_with_args("SELECT reducer::oid, reducer_version FROM ws.snapshot_policies WHERE store = $1",
							   1, (Oid[]) {TEXTOID}, &arg, NULL, true, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("event store \"%s\" has no snapshot policy", name),
				 errhint("Set one with ws.set_snapshot_policy('%s', 'my_reducer(jsonb, ws.event)'::regprocedure).",
						 name)));
	policy->reducer = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0],
													 SPI_tuptable->tupdesc, 1, &isnull));
	policy->reducer_version = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
														  SPI_tuptable->tupdesc, 2, &isnull));
	policy->fingerprint = fingerprint_of(policy->reducer);
}

/*
 * fold computes the stream's state: its latest usable snapshot, then every
 * later event through the reducer.  The caller is connected to SPI and
 * holds AccessShareLock on the events table; the result's state is
 * allocated in result_context.
 */
static void
fold(StoreEntry *store, text *stream, SnapshotPolicy *policy,
	 MemoryContext result_context, FoldResult *result)
{
	Datum		args[5];
	int			rc;
	FmgrInfo	flinfo;
	Oid		   *argtypes;
	int			nargs;
	Oid			event_type;
	Oid			owner = InvalidOid;
	Oid			saved_user = InvalidOid;
	int			saved_context = 0;
	int			guc_level = 0;
	Portal		portal;
	MemoryContext states[2];
	MemoryContext call_context;
	int			current = 0;
	Datum		state = (Datum) 0;
	bool		state_isnull = true;

	result->version = 0;
	result->snapshot_version = 0;
	result->events_folded = 0;

	states[0] = AllocSetContextCreate(CurrentMemoryContext, "write_scaling fold state",
									  ALLOCSET_DEFAULT_SIZES);
	states[1] = AllocSetContextCreate(CurrentMemoryContext, "write_scaling fold state",
									  ALLOCSET_DEFAULT_SIZES);
	call_context = AllocSetContextCreate(CurrentMemoryContext, "write_scaling fold call",
										 ALLOCSET_DEFAULT_SIZES);

	/* The latest usable snapshot, if any. */
	args[0] = CStringGetTextDatum(store->name);
	args[1] = PointerGetDatum(stream);
	args[2] = ObjectIdGetDatum(policy->reducer);
	args[3] = Int32GetDatum(policy->reducer_version);
	args[4] = Int64GetDatum(policy->fingerprint);
	rc = SPI_execute_with_args("SELECT version, state FROM ws.snapshots"
							   " WHERE store = $1 AND stream = $2 COLLATE \"C\""
							   " AND reducer OPERATOR(pg_catalog.=) $3 AND reducer_version = $4 AND fingerprint = $5",
							   5, (Oid[]) {TEXTOID, TEXTOID, REGPROCEDUREOID, INT4OID, INT8OID},
							   args, NULL, true, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 1)
	{
		bool		isnull;
		Datum		d;

		result->snapshot_version = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
															   SPI_tuptable->tupdesc, 1, &isnull));
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &state_isnull);
		if (!state_isnull)
			state = datumCopy(d, false, -1);
		result->version = result->snapshot_version;
	}
	if (!state_isnull)
	{
		MemoryContext old = MemoryContextSwitchTo(states[current]);

		state = datumCopy(state, false, -1);
		MemoryContextSwitchTo(old);
	}

	/* The reducer's second argument is ws.event: the policy checked it. */
	if (reducers_run_as_owner)
	{
		HeapTuple	proc = SearchSysCache1(PROCOID, ObjectIdGetDatum(policy->reducer));

		if (!HeapTupleIsValid(proc))
			elog(ERROR, "cache lookup failed for function %u", policy->reducer);
		owner = ((Form_pg_proc) GETSTRUCT(proc))->proowner;
		ReleaseSysCache(proc);
		GetUserIdAndSecContext(&saved_user, &saved_context);
	}
	else if (pg_proc_aclcheck(policy->reducer, GetUserId(), ACL_EXECUTE) != ACLCHECK_OK)
		aclcheck_error(ACLCHECK_NO_PRIV, OBJECT_FUNCTION, get_func_name(policy->reducer));
	if (func_strict(policy->reducer))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("reducer %s must not be STRICT", format_procedure(policy->reducer)),
				 errdetail("The state is NULL before the first event, and a STRICT function would never be called.")));
	InvokeFunctionExecuteHook(policy->reducer);
	fmgr_info(policy->reducer, &flinfo);
	(void) get_func_signature(policy->reducer, &argtypes, &nargs);
	event_type = argtypes[1];

	args[0] = PointerGetDatum(stream);
	args[1] = Int64GetDatum(result->snapshot_version + 1);
	portal = SPI_cursor_open(NULL, ws_store_plan(store, PLAN_READ_STREAM),
							 args, "  n", true);
	for (;;)
	{
		SPI_cursor_fetch(portal, true, FOLD_FETCH_SIZE);
		if (SPI_processed == 0)
			break;

		for (uint64 r = 0; r < SPI_processed; r++)
		{
			HeapTuple	row = SPI_tuptable->vals[r];
			MemoryContext old;
			Datum		event;
			Datum		next;
			bool		isnull;
			LOCAL_FCINFO(fcinfo, 2);

			old = MemoryContextSwitchTo(call_context);
			event = heap_copy_tuple_as_datum(row, SPI_tuptable->tupdesc);
			HeapTupleHeaderSetTypeId(DatumGetHeapTupleHeader(event), event_type);
			HeapTupleHeaderSetTypMod(DatumGetHeapTupleHeader(event), -1);

			InitFunctionCallInfoData(*fcinfo, &flinfo, 2, InvalidOid, NULL, NULL);
			fcinfo->args[0].value = state;
			fcinfo->args[0].isnull = state_isnull;
			fcinfo->args[1].value = event;
			fcinfo->args[1].isnull = false;
			/*
			 * As its owner, and with its settings undone afterwards, so that
			 * it cannot leave a search_path behind for the worker.  An error
			 * restores both with the (sub)transaction's abort.
			 */
			if (reducers_run_as_owner)
			{
				SetUserIdAndSecContext(owner, saved_context | SECURITY_RESTRICTED_OPERATION);
				guc_level = NewGUCNestLevel();
			}
			next = FunctionCallInvoke(fcinfo);
			if (reducers_run_as_owner)
			{
				AtEOXact_GUC(false, guc_level);
				SetUserIdAndSecContext(saved_user, saved_context);
			}
			isnull = fcinfo->isnull;

			/* Keep the new state in the other context; drop the old one. */
			MemoryContextSwitchTo(states[1 - current]);
			state = isnull ? (Datum) 0 : datumCopy(next, false, -1);
			state_isnull = isnull;
			MemoryContextSwitchTo(old);
			MemoryContextReset(states[current]);
			MemoryContextReset(call_context);
			current = 1 - current;

			result->version = DatumGetInt64(SPI_getbinval(row, SPI_tuptable->tupdesc, 2, &isnull));
			result->events_folded++;
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);

	result->state_isnull = state_isnull;
	result->state = (Datum) 0;
	if (!state_isnull)
	{
		MemoryContext old = MemoryContextSwitchTo(result_context);

		result->state = datumCopy(state, false, -1);
		MemoryContextSwitchTo(old);
	}
	MemoryContextDelete(states[0]);
	MemoryContextDelete(states[1]);
	MemoryContextDelete(call_context);
}

/*
 * ws.load(store, stream) returns table (state jsonb, version bigint): one row,
 * the stream's state after its last event (NULL and 0 for an empty stream).
 */
Datum
write_scaling_load(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *name;
	text	   *stream;
	StoreEntry *store;
	SnapshotPolicy policy;
	FoldResult	result;
	Datum		values[2];
	bool		nulls[2];

	name = ws_store_arg(fcinfo, 0);
	stream = ws_stream_name_arg(fcinfo, 1);

	InitMaterializedSRF(fcinfo, 0);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	store = ws_open_store(name, AccessShareLock);
	get_policy(store->name, &policy);
	fold(store, stream, &policy, rsinfo->econtext->ecxt_per_query_memory, &result);
	SPI_finish();

	values[0] = result.state;
	nulls[0] = result.state_isnull;
	values[1] = Int64GetDatum(result.version);
	nulls[1] = false;
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	return (Datum) 0;
}

/*
 * ws.snapshot(store, stream) folds the stream and stores the result as its
 * snapshot; returns the version covered, 0 for an empty stream (which gets
 * no snapshot).
 */
Datum
write_scaling_snapshot(PG_FUNCTION_ARGS)
{
	char	   *name;
	text	   *stream;
	StoreEntry *store;
	SnapshotPolicy policy;
	FoldResult	result;

	name = ws_store_arg(fcinfo, 0);
	stream = ws_stream_name_arg(fcinfo, 1);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	store = ws_open_store(name, AccessShareLock);
	get_policy(store->name, &policy);
	fold(store, stream, &policy, CurrentMemoryContext, &result);

	if (result.version > result.snapshot_version)
	{
		Datum		args[7];
		char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};
		int			rc;

		args[0] = CStringGetTextDatum(store->name);
		args[1] = PointerGetDatum(stream);
		args[2] = Int64GetDatum(result.version);
		args[3] = result.state;
		nulls[3] = result.state_isnull ? 'n' : ' ';
		args[4] = ObjectIdGetDatum(policy.reducer);
		args[5] = Int32GetDatum(policy.reducer_version);
		args[6] = Int64GetDatum(policy.fingerprint);
		rc = SPI_execute_with_args("INSERT INTO ws.snapshots AS s"
								   " (store, stream, version, state, reducer, reducer_version, fingerprint)"
								   " VALUES ($1, $2, $3, $4, $5, $6, $7)"
								   " ON CONFLICT (store, stream) DO UPDATE"
								   " SET version = excluded.version, state = excluded.state,"
								   " reducer = excluded.reducer, reducer_version = excluded.reducer_version,"
								   " fingerprint = excluded.fingerprint, taken_at = now()"
								   " WHERE s.version < excluded.version"
								   " OR s.reducer OPERATOR(pg_catalog.<>) excluded.reducer"
								   " OR s.reducer_version <> excluded.reducer_version"
								   " OR s.fingerprint <> excluded.fingerprint",
								   7, (Oid[]) {TEXTOID, TEXTOID, INT8OID, JSONBOID, REGPROCEDUREOID, INT4OID, INT8OID},
								   args, nulls, false, 0);
		if (rc != SPI_OK_INSERT)
			elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(rc));
	}
	SPI_finish();
	PG_RETURN_INT64(result.version);
}

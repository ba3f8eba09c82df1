/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The launcher and the per-database workers that keep snapshots fresh.
 *
 * The launcher is a static background worker, started with the server when
 * the library is in shared_preload_libraries and restarted by the
 * postmaster if it dies.  It connects to no database (it reads only the
 * shared catalog pg_database) and keeps one dynamic worker running per
 * database that allows connections.  A worker that finds no write_scaling
 * extension in its database says so in shared memory and exits; the
 * launcher tries that database again after six of its naptimes, or at once
 * when a transaction that ran CREATE EXTENSION write_scaling commits (the
 * install script calls ws._wake_launcher).  The launcher is the workers'
 * bgw_notify_pid, so it learns at once when one stops, and starts it again
 * (no sooner than WORKER_RESTART_DELAY after its last start).
 *
 * A worker loops: take up to write_scaling.snapshot_batch_size queued
 * streams (ws.snapshot_queue) in one transaction, snapshot each in a
 * subtransaction, so that a reducer error rolls back that stream alone and
 * is recorded on its queue row with a retry time; commit; sleep for
 * write_scaling.snapshot_naptime when the queue is empty.  Snapshotting
 * only reads events and writes ws.snapshots, so it never blocks appends.
 *
 * In a database with topics (the database's worker notes it on each pass,
 * ws.create_topic at commit), the launcher also keeps
 * write_scaling.queue_workers queue workers running (queue_worker.c).
 *
 * Signals: SIGHUP reloads the settings; SIGTERM ends the process.  Each
 * process reports itself in shared memory (a slot per database, under
 * WsWorkerShared.lock) for ws.stat_workers.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_database.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "event_store.h"
#include "guc.h"
#include "queue.h"
#include "shmem.h"
#include "worker.h"

/* Minimum time between two starts of one database's worker. */
#define WORKER_RESTART_DELAY_MS 5000

typedef enum WorkerState
{
	WORKER_FREE = 0,			/* slot unused */
	WORKER_STARTING,
	WORKER_IDLE,
	WORKER_SNAPSHOTTING,
	WORKER_NO_EXTENSION,		/* exited: the extension is not there */
	WORKER_STOPPED
} WorkerState;

static const char *const worker_state_names[] = {
	"free", "starting", "idle", "snapshotting", "no extension", "stopped"
};

typedef struct WsWorkerSlot
{
	Oid			dboid;
	int			pid;
	WorkerState state;
	TimestampTz state_since;
	TimestampTz last_pass;
	int64		streams_behind;
	int64		snapshots_taken;
	int64		errors;
} WsWorkerSlot;

typedef struct WsWorkerShared
{
	LWLock		lock;
	Latch	   *launcher_latch; /* NULL when no launcher runs */
	bool		retry_all;		/* look again at "no extension" databases */
	WsWorkerSlot slots[WS_MAX_DATABASES];
} WsWorkerShared;

/* The launcher's own view of the workers it started. */
typedef struct LaunchedWorker
{
	Oid			dboid;
	int			queue_worker;	/* 0 for the database's own worker */
	BackgroundWorkerHandle *handle;
	TimestampTz started_at;
} LaunchedWorker;

static WsWorkerShared *workers = NULL;
static bool wake_launcher_at_commit = false;

PGDLLEXPORT void write_scaling_launcher_main(Datum main_arg);
PGDLLEXPORT void write_scaling_worker_main(Datum main_arg);

PG_FUNCTION_INFO_V1(write_scaling_wake_launcher);

Size
ws_worker_shmem_size(void)
{
	return MAXALIGN(sizeof(WsWorkerShared));
}

/*
 * ws_worker_shmem_init lays out the worker slots; the caller holds
 * AddinShmemInitLock.
 */
void
ws_worker_shmem_init(void)
{
	bool		found;

	workers = ShmemInitStruct("write_scaling workers", ws_worker_shmem_size(), &found);
	if (found)
		return;
	memset(workers, 0, sizeof(WsWorkerShared));
	LWLockInitialize(&workers->lock, ws_lwlock_tranche_id());
}

/*
 * ws_register_launcher registers the launcher; called from _PG_init while
 * shared_preload_libraries is being processed.
 */
void
ws_register_launcher(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "write_scaling");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "write_scaling_launcher_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "write_scaling launcher");
	snprintf(worker.bgw_type, BGW_MAXLEN, "write_scaling launcher");
	RegisterBackgroundWorker(&worker);
}

/*
 * ws_wake_launcher makes the launcher look at every database now.
 */
void
ws_wake_launcher(void)
{
	if (workers == NULL)
		return;
	LWLockAcquire(&workers->lock, LW_EXCLUSIVE);
	workers->retry_all = true;
	if (workers->launcher_latch)
		SetLatch(workers->launcher_latch);
	LWLockRelease(&workers->lock);
}

static void
worker_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT && wake_launcher_at_commit)
		ws_wake_launcher();
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT)
		wake_launcher_at_commit = false;
}

/*
 * ws_worker_register_callbacks arranges for ws._wake_launcher to take effect
 * at commit.
 */
void
ws_worker_register_callbacks(void)
{
	RegisterXactCallback(worker_xact_callback, NULL);
}

/*
 * ws._wake_launcher() asks the launcher to look for databases that need a
 * worker as soon as the calling transaction commits (before that, a new
 * worker could not see the extension).
 */
Datum
write_scaling_wake_launcher(PG_FUNCTION_ARGS)
{
	wake_launcher_at_commit = true;
	PG_RETURN_VOID();
}

/* --- shared-memory slots --------------------------------------------- */

/*
 * slot_for returns the slot of dboid, taking a free one if it has none, or
 * NULL when all are taken.  The caller holds workers->lock exclusively.
 */
static WsWorkerSlot *
slot_for(Oid dboid)
{
	WsWorkerSlot *free_slot = NULL;

	for (int i = 0; i < WS_MAX_DATABASES; i++)
	{
		if (workers->slots[i].dboid == dboid)
			return &workers->slots[i];
		if (free_slot == NULL && workers->slots[i].dboid == InvalidOid)
			free_slot = &workers->slots[i];
	}
	if (free_slot != NULL)
	{
		memset(free_slot, 0, sizeof(WsWorkerSlot));
		free_slot->dboid = dboid;
	}
	return free_slot;
}

static void
set_state(Oid dboid, WorkerState state)
{
	WsWorkerSlot *slot;

	LWLockAcquire(&workers->lock, LW_EXCLUSIVE);
	slot = slot_for(dboid);
	if (slot != NULL)
	{
		slot->state = state;
		slot->state_since = GetCurrentTimestamp();
		slot->pid = (state == WORKER_NO_EXTENSION || state == WORKER_STOPPED) ? 0 : MyProcPid;
	}
	LWLockRelease(&workers->lock);
}

static void
clear_launcher_latch(int code, Datum arg)
{
	LWLockAcquire(&workers->lock, LW_EXCLUSIVE);
	workers->launcher_latch = NULL;
	LWLockRelease(&workers->lock);
}

static void
mark_worker_stopped(int code, Datum arg)
{
	set_state(DatumGetObjectId(arg), code == 0 ? WORKER_NO_EXTENSION : WORKER_STOPPED);
}

/* --- launcher ------------------------------------------------------------ */

/*
 * database_list returns the OIDs and names of the databases that accept
 * connections, allocated in context.
 */
static List *
database_list(MemoryContext context, List **names)
{
	List	   *oids = NIL;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tuple;

	*names = NIL;
	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tuple);
		MemoryContext old;

		if (!db->datallowconn || db->datistemplate)
			continue;
		old = MemoryContextSwitchTo(context);
		oids = lappend_oid(oids, db->oid);
		*names = lappend(*names, pstrdup(NameStr(db->datname)));
		MemoryContextSwitchTo(old);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return oids;
}

static bool
start_worker(Oid dboid, const char *datname, int queue_worker, BackgroundWorkerHandle **handle)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "write_scaling");
	if (queue_worker == 0)
	{
		snprintf(worker.bgw_function_name, BGW_MAXLEN, "write_scaling_worker_main");
		snprintf(worker.bgw_name, BGW_MAXLEN, "write_scaling snapshot worker for %s", datname);
		snprintf(worker.bgw_type, BGW_MAXLEN, "write_scaling snapshot worker");
		strlcpy(worker.bgw_extra, datname, BGW_EXTRALEN);
	}
	else
	{
		WsQueueWorkerArgs args = {0};

		StaticAssertStmt(sizeof(WsQueueWorkerArgs) <= BGW_EXTRALEN, "bgw_extra too small");
		args.worker = queue_worker;
		strlcpy(args.datname, datname, NAMEDATALEN);
		snprintf(worker.bgw_function_name, BGW_MAXLEN, "write_scaling_queue_worker_main");
		snprintf(worker.bgw_name, BGW_MAXLEN, "write_scaling queue worker %d for %s",
				 queue_worker, datname);
		snprintf(worker.bgw_type, BGW_MAXLEN, "write_scaling queue worker");
		memcpy(worker.bgw_extra, &args, sizeof(args));
	}
	worker.bgw_main_arg = ObjectIdGetDatum(dboid);
	worker.bgw_notify_pid = MyProcPid;

	if (!RegisterDynamicBackgroundWorker(&worker, handle))
	{
		ereport(WARNING,
				(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
				 errmsg("could not start a write_scaling worker for database \"%s\"", datname),
				 errhint("Raise max_worker_processes.")));
		return false;
	}
	return true;
}

/*
 * keep_running starts a database's worker (queue_worker 0) or one of its
 * queue workers unless it runs: started by this launcher, or by an earlier
 * one (adopted_pid).  Returns true when it waits for its restart delay or
 * could not be started.
 */
static bool
keep_running(List **launched, MemoryContext context, Oid dboid, const char *datname,
			 int queue_worker, int adopted_pid, TimestampTz now)
{
	LaunchedWorker *lw = NULL;
	ListCell   *lc;
	pid_t		pid;

	foreach(lc, *launched)
	{
		LaunchedWorker *l = lfirst(lc);

		if (l->dboid == dboid && l->queue_worker == queue_worker)
			lw = l;
	}

	/* A worker that could not be registered has no handle. */
	if (lw != NULL && lw->handle != NULL &&
		GetBackgroundWorkerPid(lw->handle, &pid) != BGWH_STOPPED)
		return false;
	/* It clears its pid when it exits. */
	if (lw == NULL && adopted_pid != 0 && kill(adopted_pid, 0) == 0)
		return false;
	if (lw != NULL && !TimestampDifferenceExceeds(lw->started_at, now, WORKER_RESTART_DELAY_MS))
		return true;

	if (lw == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(context);

		lw = palloc0(sizeof(LaunchedWorker));
		lw->dboid = dboid;
		lw->queue_worker = queue_worker;
		*launched = lappend(*launched, lw);
		MemoryContextSwitchTo(old);
	}
	else if (lw->handle != NULL)
		pfree(lw->handle);
	lw->handle = NULL;
	lw->started_at = now;
	if (!start_worker(dboid, datname, queue_worker, &lw->handle))
	{
		lw->handle = NULL;
		return true;
	}
	return false;
}

/*
 * launcher_pass starts the workers that should run and are not running, and
 * stops them all when write_scaling.workers is off.  Returns true when some
 * worker waits for its restart delay.
 */
static bool
launcher_pass(List **launched, MemoryContext context, MemoryContext pass_context)
{
	List	   *names;
	List	   *oids = database_list(pass_context, &names);
	TimestampTz now = GetCurrentTimestamp();
	bool		retry_all;
	bool		pending = false;
	ListCell   *lc_oid;
	ListCell   *lc_name;

	LWLockAcquire(&workers->lock, LW_EXCLUSIVE);
	retry_all = workers->retry_all;
	workers->retry_all = false;
	LWLockRelease(&workers->lock);

	if (!ws_workers_enabled)
	{
		ListCell   *lc;

		foreach(lc, *launched)
		{
			LaunchedWorker *lw = lfirst(lc);
			pid_t		pid;

			if (lw->handle != NULL && GetBackgroundWorkerPid(lw->handle, &pid) != BGWH_STOPPED)
				TerminateBackgroundWorker(lw->handle);
		}
		MemoryContextReset(pass_context);
		return false;
	}

	forboth(lc_oid, oids, lc_name, names)
	{
		Oid			dboid = lfirst_oid(lc_oid);
		const char *datname = lfirst(lc_name);
		WorkerState state = WORKER_FREE;
		TimestampTz since = 0;
		int			pid = 0;

		LWLockAcquire(&workers->lock, LW_SHARED);
		for (int i = 0; i < WS_MAX_DATABASES; i++)
			if (workers->slots[i].dboid == dboid)
			{
				state = workers->slots[i].state;
				since = workers->slots[i].state_since;
				pid = workers->slots[i].pid;
			}
		LWLockRelease(&workers->lock);

		/* A database without the extension is looked at again now and then. */
		if (!(state == WORKER_NO_EXTENSION && !retry_all &&
			  !TimestampDifferenceExceeds(since, now, ws_launcher_naptime * 6)))
			pending |= keep_running(launched, context, dboid, datname, 0, pid, now);

		if (ws_queue_wanted(dboid))
			for (int w = 1; w <= ws_queue_workers; w++)
				pending |= keep_running(launched, context, dboid, datname, w,
										ws_queue_worker_pid(dboid, w), now);
	}

	/* Forget the slots of databases that are gone. */
	LWLockAcquire(&workers->lock, LW_EXCLUSIVE);
	for (int i = 0; i < WS_MAX_DATABASES; i++)
		if (workers->slots[i].dboid != InvalidOid && workers->slots[i].pid == 0 &&
			!list_member_oid(oids, workers->slots[i].dboid))
			workers->slots[i].dboid = InvalidOid;
	LWLockRelease(&workers->lock);
	ws_queue_forget_databases(oids);

	MemoryContextReset(pass_context);
	return pending;
}

/*
 * write_scaling_launcher_main is the launcher's entry point.
 */
void
write_scaling_launcher_main(Datum main_arg)
{
	MemoryContext context;
	MemoryContext pass_context;
	List	   *launched = NIL;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	LWLockAcquire(&workers->lock, LW_EXCLUSIVE);
	workers->launcher_latch = MyLatch;
	workers->retry_all = true;
	LWLockRelease(&workers->lock);
	before_shmem_exit(clear_launcher_latch, (Datum) 0);

	ereport(LOG, (errmsg("write_scaling launcher started")));
	context = AllocSetContextCreate(TopMemoryContext, "write_scaling launcher",
									ALLOCSET_DEFAULT_SIZES);
	pass_context = AllocSetContextCreate(context, "write_scaling launcher pass",
										 ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		bool		pending;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		pending = launcher_pass(&launched, context, pass_context);

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 pending ? Min(1000, ws_launcher_naptime) : ws_launcher_naptime,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/* --- per-database worker ------------------------------------------------- */

/*
 * ws_worker_begin_transaction starts a worker's transaction with a snapshot
 * pushed; if write_scaling is not installed in the database (any more), it
 * ends it again and returns false.
 */
bool
ws_worker_begin_transaction(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (OidIsValid(get_extension_oid("write_scaling", true)))
		return true;
	PopActiveSnapshot();
	CommitTransactionCommand();
	return false;
}

typedef struct QueuedStream
{
	char	   *store;
	char	   *stream;
} QueuedStream;

/*
 * snapshot_one snapshots one queued stream in a subtransaction and removes
 * it from the queue; on error it records the error on the queue row instead.
 * Returns true on success.  The caller is connected to SPI in a transaction.
 */
static bool
snapshot_one(QueuedStream *q)
{
	MemoryContext old = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	Datum		args[4];
	bool		ok = true;

	args[0] = CStringGetTextDatum(q->store);
	args[1] = CStringGetTextDatum(q->stream);

	BeginInternalSubTransaction(NULL);
	PG_TRY();
	{
		bool		isnull;

		if (SPI_execute_with_args("SELECT ws.snapshot($1, $2)", 2,
								  (Oid[]) {TEXTOID, TEXTOID}, args, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "snapshot statement failed");
		/* Rows of crossings the snapshot does not cover stay queued. */
		args[2] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (SPI_execute_with_args("DELETE FROM ws.snapshot_queue"
								  " WHERE store = $1 AND stream = $2 AND due_version <= $3",
								  3, (Oid[]) {TEXTOID, TEXTOID, INT8OID}, args, NULL, false, 0) != SPI_OK_DELETE)
			elog(ERROR, "could not remove snapshotted streams from ws.snapshot_queue");
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(old);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(old);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(old);
		CurrentResourceOwner = owner;

		ereport(LOG,
				(errmsg("write_scaling could not snapshot stream \"%s\" of event store \"%s\": %s",
						q->stream, q->store, edata->message)));
		args[2] = CStringGetTextDatum(edata->message);
		args[3] = CStringGetTextDatum(unpack_sql_state(edata->sqlerrcode));
		if (SPI_execute_with_args("UPDATE ws.snapshot_queue"
								  " SET attempts = attempts + 1, last_error = $3, last_sqlstate = $4,"
								  " next_attempt_at = now() + least(interval '1 second' * power(2, least(attempts, 12)), interval '1 hour')"
								  " WHERE store = $1 AND stream = $2",
								  4, (Oid[]) {TEXTOID, TEXTOID, TEXTOID, TEXTOID},
								  args, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not record a snapshot error");
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

/*
 * snapshot_pass snapshots up to write_scaling.snapshot_batch_size queued
 * streams in one transaction.  Returns how many it took from the queue, or
 * -1 when the extension is gone.
 */
static int
snapshot_pass(Oid dboid)
{
	int			taken = 0;
	int			failed = 0;
	int64		behind = 0;
	uint64		rows;
	List	   *queued = NIL;
	ListCell   *lc;
	Datum		limit = Int32GetDatum(ws_snapshot_batch_size);
	bool		isnull;

	if (!ws_worker_begin_transaction())
		return -1;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	pgstat_report_activity(STATE_RUNNING, "write_scaling: snapshot pass");

	/* Tell the launcher whether this database needs queue workers. */
	if (OidIsValid(get_relname_relid("topics", get_namespace_oid("ws", false))))
	{
		if (SPI_execute("SELECT EXISTS (SELECT FROM ws.topics)", true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read ws.topics");
		ws_queue_note_topics(dboid, DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
															   SPI_tuptable->tupdesc, 1, &isnull)));
	}

	/* One row per crossing: take each stream once. */
	if (SPI_execute_with_args("SELECT store, stream FROM ws.snapshot_queue"
							  " WHERE next_attempt_at <= now()"
							  " ORDER BY queued_at LIMIT $1 FOR UPDATE SKIP LOCKED",
							  1, (Oid[]) {INT4OID}, &limit, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read ws.snapshot_queue");
	rows = SPI_processed;
	for (uint64 i = 0; i < rows; i++)
	{
		char	   *store = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		char	   *stream = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
		bool		seen = false;
		QueuedStream *q;

		foreach(lc, queued)
		{
			q = lfirst(lc);
			seen |= (strcmp(q->store, store) == 0 && strcmp(q->stream, stream) == 0);
		}
		if (seen)
			continue;
		q = palloc(sizeof(QueuedStream));
		q->store = store;
		q->stream = stream;
		queued = lappend(queued, q);
	}

	if (queued != NIL)
		set_state(dboid, WORKER_SNAPSHOTTING);
	foreach(lc, queued)
	{
		if (snapshot_one(lfirst(lc)))
			taken++;
		else
			failed++;
	}

	/* Not read-only: the count must see the deletes made above. */
	if (SPI_execute("SELECT count(DISTINCT (store, stream)) FROM ws.snapshot_queue", false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not count ws.snapshot_queue");
	behind = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));

	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);

	LWLockAcquire(&workers->lock, LW_EXCLUSIVE);
	{
		WsWorkerSlot *slot = slot_for(dboid);

		if (slot != NULL)
		{
			slot->state = WORKER_IDLE;
			slot->last_pass = GetCurrentTimestamp();
			slot->streams_behind = behind;
			slot->snapshots_taken += taken;
			slot->errors += failed;
		}
	}
	LWLockRelease(&workers->lock);

	return (int) rows;
}

/*
 * write_scaling_worker_main is the entry point of a database's worker; the
 * database's name comes in bgw_extra.
 */
void
write_scaling_worker_main(Datum main_arg)
{
	Oid			dboid = DatumGetObjectId(main_arg);
	char		datname[NAMEDATALEN];
	MemoryContext pass_context;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	strlcpy(datname, MyBgworkerEntry->bgw_extra, NAMEDATALEN);
	BackgroundWorkerInitializeConnection(datname,
										 (ws_worker_role && ws_worker_role[0]) ? ws_worker_role : NULL,
										 0);
	set_state(dboid, WORKER_STARTING);
	before_shmem_exit(mark_worker_stopped, ObjectIdGetDatum(dboid));
	ws_run_reducers_as_owner();
	/* The worker's own statements resolve nothing through user schemas. */
	SetConfigOption("search_path", "pg_catalog", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("default_transaction_isolation", "read committed", PGC_SUSET, PGC_S_OVERRIDE);

	pass_context = AllocSetContextCreate(TopMemoryContext, "write_scaling snapshot pass",
										 ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		int			done;
		MemoryContext old;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (!ws_workers_enabled)
			break;

		old = MemoryContextSwitchTo(pass_context);
		done = snapshot_pass(dboid);
		MemoryContextSwitchTo(old);
		MemoryContextReset(pass_context);

		if (done < 0)
		{
			ereport(DEBUG1,
					(errmsg("write_scaling is not installed in database \"%s\"", datname)));
			proc_exit(0);
		}
		if (done == ws_snapshot_batch_size)
			continue;			/* more may be queued: no nap */

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 ws_snapshot_naptime, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	proc_exit(1);
}

/*
 * ws_worker_report copies out the worker slots into a palloc'd array and
 * returns how many are in use.
 */
int
ws_worker_report(WsWorkerReport **reports)
{
	int			n = 0;

	if (workers == NULL)
	{
		*reports = NULL;
		return 0;
	}
	*reports = palloc0(sizeof(WsWorkerReport) * WS_MAX_DATABASES);
	LWLockAcquire(&workers->lock, LW_SHARED);
	for (int i = 0; i < WS_MAX_DATABASES; i++)
	{
		WsWorkerSlot *s = &workers->slots[i];
		WsWorkerReport *r = &(*reports)[n];

		if (s->dboid == InvalidOid)
			continue;
		n++;
		r->dboid = s->dboid;
		r->pid = s->pid;
		r->state = worker_state_names[s->state];
		r->last_pass = s->last_pass;
		r->streams_behind = s->streams_behind;
		r->snapshots_taken = s->snapshots_taken;
		r->errors = s->errors;
	}
	LWLockRelease(&workers->lock);
	return n;
}

/*-------------------------------------------------------------------------
 *
 * queue_worker.c
 *	  Queue workers: apply messages through their topic's handler.
 *
 * The launcher (worker.c) keeps write_scaling.queue_workers of these per
 * database that has topics.  Worker w of n owns the lanes with
 * (topic_id + lane) mod n = w - 1, and reads them in request-id order, so
 * the messages of a key never run concurrently or out of order, and no row
 * lock or lock table is needed to claim them.
 *
 * A batch is one transaction: read up to write_scaling.queue_batch_size
 * runnable messages, call each one's handler (as the topic's owner, with
 * search_path "$user", public, as a new session of the owner has), then
 * delete the applied messages and record them in ws.queue_done.  Effects
 * and removal commit together, so a committed application happens exactly
 * once and a crash loses nothing that was accepted.  If the deletion finds
 * fewer rows than it applied (a drop or an overlapping worker removed
 * some), the whole batch rolls back and is read again.
 *
 * Handlers run without a subtransaction each, because subtransactions that
 * write cost every session (past 64 per transaction, snapshots overflow).
 * When a handler fails, the batch is rolled back and run again with that
 * message in a subtransaction of its own; after a few failures in one
 * batch, every message gets one.  A failed message is retried with
 * exponential backoff from its topic's retry_delay and, after max_attempts,
 * moved to ws.dead_letters.  While a message of a key waits for its retry,
 * the later messages of that key wait too (they are skipped, and the rest
 * of the lane goes on); once it is dead-lettered they proceed.
 *
 * Worker 1 also rotates ws.queue and ws.queue_done (ws._rotate_queue).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "tcop/tcopprot.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "guc.h"
#include "queue.h"
#include "worker.h"

/* Failed messages in one batch after which each gets a subtransaction. */
#define MAX_ISOLATED		8

/* Rows the batch read looks through, per runnable message it wants. */
#define SCAN_FACTOR			10

/* Time between two rotations by worker 1. */
#define ROTATE_INTERVAL_MS	1000

typedef struct TopicInfo
{
	int32		topic_id;
	char	   *name;
	Oid			handler;
	Oid			owner;
	int32		max_attempts;
	Datum		retry_delay;	/* interval */
	MemoryContext context;		/* of the batch */
	FmgrInfo	flinfo;			/* looked up at the first call */
	bool		flinfo_ready;
	TopicCounts counts;
} TopicInfo;

typedef enum Outcome
{
	OUTCOME_NONE = 0,
	OUTCOME_APPLIED,
	OUTCOME_FAILED
} Outcome;

typedef struct Message
{
	int64		id;
	TopicInfo  *topic;
	text	   *key;
	Datum		payload;
	int32		attempts;		/* failed attempts so far */
	bool		isolate;		/* run in a subtransaction */
	Outcome		outcome;
	char	   *error;
	char	   *sqlstate;
} Message;

typedef struct Batch
{
	TopicInfo  *topics;
	int			ntopics;
	Message    *messages;
	int			nmessages;
	List	   *blocked;		/* Messages whose key waits for a retry */
	TimestampTz next_retry;		/* earliest retry seen, 0 if none */
	bool		orphans;		/* messages of a topic that is gone */
	MemoryContext context;
} Batch;

PGDLLEXPORT void write_scaling_queue_worker_main(Datum main_arg);

/*
 * blocked returns whether m's key waits behind an earlier message.
 */
static bool
blocked(Batch *batch, Message *m)
{
	ListCell   *lc;

	foreach(lc, batch->blocked)
	{
		Message    *b = lfirst(lc);

		if (b->topic == m->topic &&
			VARSIZE_ANY_EXHDR(b->key) == VARSIZE_ANY_EXHDR(m->key) &&
			memcmp(VARDATA_ANY(b->key), VARDATA_ANY(m->key), VARSIZE_ANY_EXHDR(m->key)) == 0)
			return true;
	}
	return false;
}

/*
 * read_topics reads every topic; the caller is connected to SPI.
 */
static void
read_topics(Batch *batch, MemoryContext context)
{
	if (SPI_execute("SELECT topic_id, topic, handler::oid, owner::oid, max_attempts, retry_delay"
					" FROM ws.topics", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read ws.topics");
	batch->ntopics = (int) SPI_processed;
	batch->topics = MemoryContextAllocZero(context, sizeof(TopicInfo) * Max(batch->ntopics, 1));
	for (int i = 0; i < batch->ntopics; i++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		TopicInfo  *t = &batch->topics[i];
		bool		isnull;

		t->topic_id = DatumGetInt32(SPI_getbinval(tuple, desc, 1, &isnull));
		t->name = MemoryContextStrdup(context, SPI_getvalue(tuple, desc, 2));
		t->handler = DatumGetObjectId(SPI_getbinval(tuple, desc, 3, &isnull));
		t->owner = DatumGetObjectId(SPI_getbinval(tuple, desc, 4, &isnull));
		t->max_attempts = DatumGetInt32(SPI_getbinval(tuple, desc, 5, &isnull));
		t->retry_delay = datumCopy(SPI_getbinval(tuple, desc, 6, &isnull), false, 16);
		t->counts.topic_id = t->topic_id;
		t->context = context;
	}
	batch->context = context;

	/* ws.drop_topic waits for this batch, and a batch for a drop. */
	for (int i = 0; i < batch->ntopics; i++)
		LockDatabaseObject(get_relname_relid("topics", get_namespace_oid("ws", false)),
						   batch->topics[i].topic_id, 0, AccessShareLock);
}

static TopicInfo *
find_topic(Batch *batch, int32 topic_id)
{
	for (int i = 0; i < batch->ntopics; i++)
		if (batch->topics[i].topic_id == topic_id)
			return &batch->topics[i];
	return NULL;
}

/*
 * read_messages reads this worker's runnable messages in request-id order:
 * those whose retry time has come and whose key waits for no earlier
 * message.  Rows of a topic being dropped are left alone.  The caller is
 * connected to SPI; isolated lists the ids to run in subtransactions.
 */
static void
read_messages(Batch *batch, int worker, List *isolated, bool isolate_all,
			  MemoryContext context)
{
	static SPIPlanPtr plan = NULL;
	int			limit = ws_queue_batch_size;
	int64		after = 0;
	int			scanned = 0;

	if (plan == NULL)
	{
		plan = SPI_prepare("SELECT id, topic_id, key, payload, attempts, next_attempt_at,"
						   " coalesce(next_attempt_at > now(), false)"
						   " FROM ws.queue WHERE (topic_id + lane) % $1 = $2 AND id > $3"
						   " AND ($5 IS NULL OR NOT (topic_id::text || ':' || key) = ANY ($5))"
						   " ORDER BY id LIMIT $4",
						   5, (Oid[]) {INT4OID, INT4OID, INT8OID, INT4OID, TEXTARRAYOID});
		if (plan == NULL || SPI_keepplan(plan) != 0)
			elog(ERROR, "could not prepare the queue worker's read");
	}

	batch->messages = MemoryContextAlloc(context, sizeof(Message) * limit);
	batch->nmessages = 0;
	while (batch->nmessages < limit && scanned < limit * SCAN_FACTOR)
	{
		Datum		args[5];
		char		nulls[5] = "    n";
		uint64		rows;

		args[0] = Int32GetDatum(ws_queue_workers);
		args[1] = Int32GetDatum(worker - 1);
		args[2] = Int64GetDatum(after);
		args[3] = Int32GetDatum(limit);
		/* Keys that wait behind a retry are skipped by the query itself. */
		if (batch->blocked != NIL)
		{
			Datum	   *keys = palloc(sizeof(Datum) * list_length(batch->blocked));
			ListCell   *lc;
			int			n = 0;

			foreach(lc, batch->blocked)
			{
				Message    *b = lfirst(lc);

				keys[n++] = CStringGetTextDatum(psprintf("%d:%s", b->topic->topic_id,
														 text_to_cstring(b->key)));
			}
			args[4] = PointerGetDatum(construct_array(keys, n, TEXTOID, -1, false, TYPALIGN_INT));
			nulls[4] = ' ';
		}
		if (SPI_execute_plan(plan, args, nulls, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read ws.queue");
		rows = SPI_processed;
		for (uint64 r = 0; r < rows && batch->nmessages < limit; r++)
		{
			HeapTuple	tuple = SPI_tuptable->vals[r];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			Message    *m = &batch->messages[batch->nmessages];
			MemoryContext old;
			bool		isnull;
			bool		waiting;

			memset(m, 0, sizeof(Message));
			m->id = after = DatumGetInt64(SPI_getbinval(tuple, desc, 1, &isnull));
			m->topic = find_topic(batch, DatumGetInt32(SPI_getbinval(tuple, desc, 2, &isnull)));
			if (m->topic == NULL)
			{
				batch->orphans = true;
				continue;
			}
			old = MemoryContextSwitchTo(context);
			m->key = DatumGetTextPCopy(SPI_getbinval(tuple, desc, 3, &isnull));
			m->payload = datumCopy(SPI_getbinval(tuple, desc, 4, &isnull), false, -1);
			MemoryContextSwitchTo(old);
			m->attempts = DatumGetInt32(SPI_getbinval(tuple, desc, 5, &isnull));
			waiting = DatumGetBool(SPI_getbinval(tuple, desc, 7, &isnull));
			if (waiting)
			{
				TimestampTz at = DatumGetTimestampTz(SPI_getbinval(tuple, desc, 6, &isnull));

				if (batch->next_retry == 0 || at < batch->next_retry)
					batch->next_retry = at;
			}
			if (blocked(batch, m))
				continue;
			if (waiting)
			{
				/* The array slot is reused: the list keeps a copy. */
				old = MemoryContextSwitchTo(context);
				batch->blocked = lappend(batch->blocked,
										 memcpy(palloc(sizeof(Message)), m, sizeof(Message)));
				MemoryContextSwitchTo(old);
				continue;
			}
			m->isolate = isolate_all || list_member_ptr(isolated, (void *) m->id);
			batch->nmessages++;
		}
		scanned += (int) rows;
		if (rows < (uint64) limit)
			break;
	}
}

/*
 * call_handler applies one message: the handler runs as the topic's owner,
 * sees the effects of the messages before it, and cannot leave settings
 * behind.
 */
static void
call_handler(Message *m)
{
	TopicInfo  *t = m->topic;
	LOCAL_FCINFO(fcinfo, 4);
	Oid			saved_user;
	int			saved_context;
	int			guc_level;

	if (!t->flinfo_ready)
	{
		if (!SearchSysCacheExists1(PROCOID, ObjectIdGetDatum(t->handler)))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_FUNCTION),
					 errmsg("handler of topic \"%s\" does not exist", t->name),
					 errdetail("Function %u was dropped.", t->handler)));
		fmgr_info_cxt(t->handler, &t->flinfo, t->context);
		t->flinfo_ready = true;
	}
	if (pg_proc_aclcheck(t->handler, t->owner, ACL_EXECUTE) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("owner of topic \"%s\" may not execute its handler %s",
						t->name, format_procedure(t->handler))));

	/*
	 * Restricted, as index functions are: handlers of different owners share
	 * this session, so none may leave a temporary object or a setting for
	 * the next.
	 */
	GetUserIdAndSecContext(&saved_user, &saved_context);
	SetUserIdAndSecContext(t->owner, saved_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	guc_level = NewGUCNestLevel();
	/* What a session of the owner would have; the worker's is pg_catalog. */
	(void) set_config_option("search_path", "\"$user\", public", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	PushActiveSnapshot(GetTransactionSnapshot());

	InitFunctionCallInfoData(*fcinfo, &t->flinfo, 4, DEFAULT_COLLATION_OID, NULL, NULL);
	fcinfo->args[0].value = PointerGetDatum(m->key);
	fcinfo->args[0].isnull = false;
	fcinfo->args[1].value = m->payload;
	fcinfo->args[1].isnull = false;
	fcinfo->args[2].value = Int64GetDatum(m->id);
	fcinfo->args[2].isnull = false;
	fcinfo->args[3].value = Int32GetDatum(m->attempts + 1);
	fcinfo->args[3].isnull = false;
	(void) FunctionCallInvoke(fcinfo);

	PopActiveSnapshot();
	AtEOXact_GUC(false, guc_level);
	SetUserIdAndSecContext(saved_user, saved_context);
	CommandCounterIncrement();
}

/*
 * call_isolated applies m in a subtransaction, recording its error if the
 * handler fails.
 */
static void
call_isolated(Message *m, MemoryContext context)
{
	MemoryContext old = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;

	BeginInternalSubTransaction(NULL);
	PG_TRY();
	{
		call_handler(m);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(old);
		CurrentResourceOwner = owner;
		m->outcome = OUTCOME_APPLIED;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(context);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(old);
		CurrentResourceOwner = owner;

		m->outcome = OUTCOME_FAILED;
		m->error = edata->message;
		m->sqlstate = MemoryContextStrdup(context, unpack_sql_state(edata->sqlerrcode));
	}
	PG_END_TRY();
}

/*
 * apply_all runs the handlers of the batch in order.  Returns the id of a
 * message that failed outside a subtransaction (the transaction is then
 * aborted and must be rolled back), or 0.
 */
static int64
apply_all(Batch *batch, MemoryContext context)
{
	volatile int64 failed_id = 0;

	PG_TRY();
	{
		for (int i = 0; i < batch->nmessages; i++)
		{
			Message    *m = &batch->messages[i];

			if (blocked(batch, m))
				continue;
			if (m->isolate)
			{
				call_isolated(m, context);
				if (m->outcome == OUTCOME_FAILED)
					batch->blocked = lappend(batch->blocked, m);
				continue;
			}
			failed_id = m->id;
			call_handler(m);
			failed_id = 0;
			m->outcome = OUTCOME_APPLIED;
		}
	}
	PG_CATCH();
	{
		if (failed_id == 0)
			PG_RE_THROW();
		MemoryContextSwitchTo(context);
		FlushErrorState();
	}
	PG_END_TRY();
	return failed_id;
}

/*
 * record_outcomes removes the applied messages into ws.queue_done, and
 * schedules the retry of failed ones or moves them to ws.dead_letters.  A
 * message that is no longer there raises an error: the batch rolls back.
 */
static void
record_outcomes(Batch *batch)
{
	static SPIPlanPtr done_plan = NULL;
	static SPIPlanPtr retry_plan = NULL;
	static SPIPlanPtr dead_plan = NULL;
	Datum	   *ids = palloc(sizeof(Datum) * Max(batch->nmessages, 1));
	int			napplied = 0;

	if (done_plan == NULL)
	{
		done_plan = SPI_prepare("WITH d AS (DELETE FROM ws.queue q WHERE q.id = ANY ($1)"
								" RETURNING q.id, q.topic_id, q.attempts, q.enqueued_at)"
								" INSERT INTO ws.queue_done (id, topic_id, attempts, enqueued_at, applied_at, slot)"
								" SELECT d.id, d.topic_id, d.attempts + 1, d.enqueued_at, clock_timestamp(), r.current"
								" FROM d, ws.queue_rotation r WHERE r.log = 'queue_done'",
								1, (Oid[]) {INT8ARRAYOID});
		retry_plan = SPI_prepare("UPDATE ws.queue SET attempts = attempts + 1, last_error = $2,"
								 " last_sqlstate = $3, next_attempt_at = now() +"
								 " least($4 * power(2, least(attempts, 20)), interval '1 hour')"
								 " WHERE id = $1",
								 4, (Oid[]) {INT8OID, TEXTOID, TEXTOID, INTERVALOID});
		dead_plan = SPI_prepare("WITH d AS (DELETE FROM ws.queue q WHERE q.id = $1 RETURNING q.*)"
								" INSERT INTO ws.dead_letters (id, topic_id, topic, lane, key, payload,"
								" enqueued_at, attempts, error, sqlstate)"
								" SELECT d.id, d.topic_id, $2, d.lane, d.key, d.payload, d.enqueued_at,"
								" d.attempts + 1, $3, $4 FROM d",
								4, (Oid[]) {INT8OID, TEXTOID, TEXTOID, TEXTOID});
		if (done_plan == NULL || retry_plan == NULL || dead_plan == NULL ||
			SPI_keepplan(done_plan) != 0 || SPI_keepplan(retry_plan) != 0 ||
			SPI_keepplan(dead_plan) != 0)
			elog(ERROR, "could not prepare the queue worker's statements");
	}

	for (int i = 0; i < batch->nmessages; i++)
	{
		Message    *m = &batch->messages[i];

		if (m->outcome == OUTCOME_APPLIED)
		{
			ids[napplied++] = Int64GetDatum(m->id);
			m->topic->counts.applied++;
		}
		else if (m->outcome == OUTCOME_FAILED)
		{
			Datum		args[4];
			bool		dead = m->attempts + 1 >= m->topic->max_attempts;

			args[0] = Int64GetDatum(m->id);
			if (dead)
			{
				args[1] = CStringGetTextDatum(m->topic->name);
				args[2] = CStringGetTextDatum(m->error);
				args[3] = CStringGetTextDatum(m->sqlstate);
				if (SPI_execute_plan(dead_plan, args, NULL, false, 0) != SPI_OK_INSERT || SPI_processed != 1)
					elog(ERROR, "request " INT64_FORMAT " left ws.queue while it was applied", m->id);
				m->topic->counts.dead_lettered++;
				ereport(LOG,
						(errmsg("write_scaling moved request " INT64_FORMAT " of topic \"%s\" to ws.dead_letters after %d attempts: %s",
								m->id, m->topic->name, m->attempts + 1, m->error)));
			}
			else
			{
				args[1] = CStringGetTextDatum(m->error);
				args[2] = CStringGetTextDatum(m->sqlstate);
				args[3] = m->topic->retry_delay;
				if (SPI_execute_plan(retry_plan, args, NULL, false, 0) != SPI_OK_UPDATE || SPI_processed != 1)
					elog(ERROR, "request " INT64_FORMAT " left ws.queue while it was applied", m->id);
				m->topic->counts.retried++;
			}
		}
	}

	if (napplied > 0)
	{
		Datum		array = PointerGetDatum(construct_array(ids, napplied, INT8OID, 8,
															FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));

		if (SPI_execute_plan(done_plan, &array, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not record applied messages");
		if (SPI_processed != (uint64) napplied)
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("%d of the %d messages applied left ws.queue meanwhile",
							napplied - (int) SPI_processed, napplied),
					 errdetail("The batch is rolled back and read again.")));
	}
}

/*
 * remove_orphans deletes the messages of topics that are gone: an enqueue
 * in a repeatable-read transaction can miss a concurrent drop.
 */
static void
remove_orphans(void)
{
	if (SPI_execute("DELETE FROM ws.queue q"
					" WHERE NOT EXISTS (SELECT FROM ws.topics t WHERE t.topic_id = q.topic_id)",
					false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not remove messages of dropped topics");
	if (SPI_processed > 0)
		ereport(LOG,
				(errmsg("write_scaling removed %llu messages of dropped topics from ws.queue",
						(unsigned long long) SPI_processed)));
}

/*
 * queue_batch applies one batch in one transaction.  Returns the number
 * of messages applied or failed, or -1 when this database has no topics
 * (or no write_scaling) left.  *next_retry is set to the earliest retry
 * time among the messages that wait.
 */
static int
queue_batch(int worker, MemoryContext context, TimestampTz *next_retry)
{
	List	   *isolated = NIL;
	bool		isolate_all = false;

	for (;;)
	{
		Batch		batch = {0};
		int64		failed_id;
		int			processed = 0;

		if (!ws_worker_begin_transaction())
			return -1;
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		read_topics(&batch, context);
		if (batch.ntopics == 0)
		{
			SPI_finish();
			PopActiveSnapshot();
			CommitTransactionCommand();
			return -1;
		}
		read_messages(&batch, worker, isolated, isolate_all, context);
		*next_retry = batch.next_retry;
		if (batch.orphans)
			remove_orphans();
		if (batch.nmessages == 0)
		{
			SPI_finish();
			PopActiveSnapshot();
			CommitTransactionCommand();
			return 0;
		}

		pgstat_report_activity(STATE_RUNNING, "write_scaling: applying queued messages");
		ws_queue_worker_set_state(QUEUE_WORKER_APPLYING, batch.messages[0].id,
								  batch.messages[batch.nmessages - 1].id);
		failed_id = apply_all(&batch, context);
		if (failed_id != 0)
		{
			/* Run the batch again, with that message in a subtransaction. */
			AbortCurrentTransaction();
			MemoryContextSwitchTo(context);
			isolated = lappend(isolated, (void *) failed_id);
			isolate_all = list_length(isolated) > MAX_ISOLATED;
			continue;
		}
		record_outcomes(&batch);

		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		MemoryContextSwitchTo(context);
		pgstat_report_activity(STATE_IDLE, NULL);

		{
			TopicCounts *counts = palloc(sizeof(TopicCounts) * batch.ntopics);
			int64		applied = 0;

			for (int i = 0; i < batch.ntopics; i++)
			{
				counts[i] = batch.topics[i].counts;
				applied += counts[i].applied;
				processed += counts[i].applied + counts[i].retried + counts[i].dead_lettered;
			}
			ws_queue_worker_batch_done(counts, batch.ntopics, applied);
		}
		ws_queue_worker_set_state(QUEUE_WORKER_IDLE, 0, 0);
		return processed;
	}
}

/*
 * rotate moves the queue tables on to their next slots when due.
 */
static void
rotate(void)
{
	Datum		args[2];

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	args[0] = Float8GetDatum(ws_queue_rotation / 1000.0);
	args[1] = Float8GetDatum((double) ws_request_retention);
	if (SPI_execute_with_args("SELECT ws._rotate_queue(make_interval(secs => $1),"
							  " make_interval(secs => $2))",
							  2, (Oid[]) {FLOAT8OID, FLOAT8OID}, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not rotate the queue tables");
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/*
 * write_scaling_queue_worker_main is a queue worker's entry point; the
 * worker number and database name come in bgw_extra.
 */
void
write_scaling_queue_worker_main(Datum main_arg)
{
	Oid			dboid = DatumGetObjectId(main_arg);
	WsQueueWorkerArgs args;
	MemoryContext context;
	TimestampTz last_rotation = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	memcpy(&args, MyBgworkerEntry->bgw_extra, sizeof(args));
	BackgroundWorkerInitializeConnection(args.datname,
										 (ws_worker_role && ws_worker_role[0]) ? ws_worker_role : NULL,
										 0);
	ws_queue_worker_attach(dboid, args.worker);
	/* The worker's own statements resolve nothing through user schemas. */
	SetConfigOption("search_path", "pg_catalog", PGC_SUSET, PGC_S_OVERRIDE);
	/* Rotation and batches rely on each statement's fresh snapshot. */
	SetConfigOption("default_transaction_isolation", "read committed", PGC_SUSET, PGC_S_OVERRIDE);

	context = AllocSetContextCreate(TopMemoryContext, "write_scaling queue batch",
									ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		volatile int processed = 0;
		volatile bool failed = false;
		TimestampTz next_retry = 0;
		long		timeout = ws_queue_naptime;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (!ws_workers_enabled || args.worker > ws_queue_workers)
			proc_exit(0);

		MemoryContextSwitchTo(context);
		PG_TRY();
		{
			processed = queue_batch(args.worker, context, &next_retry);
			if (args.worker == 1 && processed >= 0 &&
				TimestampDifferenceExceeds(last_rotation, GetCurrentTimestamp(), ROTATE_INTERVAL_MS))
			{
				rotate();
				ws_queue_forget_slot(dboid);
				last_rotation = GetCurrentTimestamp();
			}
		}
		PG_CATCH();
		{
			/* Report, roll back, and try again after a nap. */
			EmitErrorReport();
			FlushErrorState();
			AbortCurrentTransaction();
			ws_queue_worker_set_state(QUEUE_WORKER_IDLE, 0, 0);
			pgstat_report_activity(STATE_IDLE, NULL);
			processed = 0;
			failed = true;
		}
		PG_END_TRY();
		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(context);

		if (processed < 0)
		{
			ws_queue_note_topics(dboid, false);
			proc_exit(0);
		}
		/* After an error, a full nap: enqueues do not cut it short. */
		if (failed)
		{
			TimestampTz until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ws_queue_naptime);
			long		left;

			while ((left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), until)) > 0)
			{
				(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
								 left, PG_WAIT_EXTENSION);
				ResetLatch(MyLatch);
				CHECK_FOR_INTERRUPTS();
			}
			continue;
		}
		if (processed > 0)
			continue;			/* more may wait: no nap */

		if (next_retry != 0)
		{
			long		until = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), next_retry);

			timeout = Max(1, Min(timeout, until + 1));
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/*-------------------------------------------------------------------------
 *
 * queue.c
 *	  Enqueueing into topics, request status, and the queue's shared state.
 *
 * ws.enqueue inserts a row into ws.queue in the caller's transaction, so a
 * message is accepted exactly when that transaction commits.  The row
 * carries its lane, hash(key) mod the topic's partitions; queue worker w of
 * n applies the lanes with (topic_id + lane) mod n = w - 1 (see
 * queue_worker.c), so the messages of one key are applied by one worker in
 * request-id order.  At commit, the enqueuing backend sets the latch of
 * each worker whose lanes it wrote to: no NOTIFY, no global lock, and no
 * naptime between an enqueue and its application.
 *
 * Callers need no privilege on the queue's tables: the row is written
 * directly into the current slot of ws.queue (heap and index, as catalogs
 * are written), and lookups run as the tables' owner with a pinned
 * search_path.  What a caller needs is EXECUTE on the topic's handler,
 * because enqueueing a message amounts to calling the handler later (as the
 * topic's owner).  REVOKE EXECUTE on a handler closes its topic to PUBLIC.
 *
 * Each backend caches topics by name.  ws.create_topic and ws.drop_topic
 * send a relcache invalidation of ws.topics (ws._topics_changed).  An
 * enqueue takes the topic's lock (a lock on the topic as an object) before
 * trusting the cache: ws.drop_topic takes it exclusively, so it waits for
 * the enqueues in flight, and an enqueue that waited finds the topic gone.
 *
 * Shared memory holds, per database, whether it has topics (for the
 * launcher), one slot per queue worker (pid, latch, the batch it is
 * applying) and per-topic counters for ws.stat_topics.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "nodes/execnodes.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/regproc.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "catalog/index.h"

#include "frontier.h"
#include "guc.h"
#include "queue.h"
#include "shmem.h"
#include "worker.h"

/* A key longer than this is refused: it is compared, not just stored. */
#define WS_MAX_KEY_BYTES	1024

typedef struct QueueWorkerSlot
{
	int			pid;			/* 0 when not running */
	Latch	   *latch;
	QueueWorkerState state;
	int64		batch_first;	/* request ids of the batch being applied */
	int64		batch_last;
	int64		batches;
	int64		applied;
	TimestampTz last_batch;
} QueueWorkerSlot;

typedef struct TopicCounterSlot
{
	int32		topic_id;		/* 0 when unused */
	pg_atomic_uint64 enqueued;
	pg_atomic_uint64 applied;
	pg_atomic_uint64 retried;
	pg_atomic_uint64 dead_lettered;
} TopicCounterSlot;

typedef struct QueueDatabase
{
	Oid			dboid;			/* InvalidOid when unused */
	bool		has_topics;
	pg_atomic_uint32 queue_slot;	/* current slot of ws.queue + 1; 0 unknown */
	QueueWorkerSlot workers[WS_MAX_QUEUE_WORKERS + 1];	/* 1-based */
	TopicCounterSlot topics[WS_MAX_TOPIC_COUNTERS];
} QueueDatabase;

typedef struct WsQueueShared
{
	LWLock		lock;
	QueueDatabase dbs[WS_MAX_DATABASES];
} WsQueueShared;

/* A topic as this backend caches it. */
typedef struct TopicEntry
{
	char		name[NAMEDATALEN];	/* hash key */
	int32		topic_id;
	int32		partitions;
	Oid			handler;
	bool		async_commit;
} TopicEntry;

/* Messages the current transaction enqueued, per subtransaction and topic. */
typedef struct PendingCount
{
	SubTransactionId subid;
	int32		topic_id;
	int64		count;
} PendingCount;

static WsQueueShared *queue_shared = NULL;

/* Catalog of this database, resolved on first use. */
static bool relids_valid = false;
static Oid	queue_relid = InvalidOid;
static Oid	topics_relid = InvalidOid;
static Oid	queue_owner = InvalidOid;
static Oid	queue_seq_relid = InvalidOid;
static Oid	slot_relids[3];
static QueueDatabase *backend_db = NULL;	/* this database's entry */
static HTAB *topic_cache = NULL;
static SPIPlanPtr insert_plan = NULL;
static SPIPlanPtr status_plans[4];

/* State of the current transaction. */
static PendingCount *pending = NULL;
static int	npending = 0;
static int	maxpending = 0;
static uint64 wake_mask = 0;	/* bit w: wake queue worker w at commit */
static bool wake_all_at_commit = false;
static bool topics_changed_at_commit = false;
static bool async_commit_requested = false;
static int32 dropped_topics[8];	/* their counters are freed at commit */
static int	ndropped_topics = 0;

PG_FUNCTION_INFO_V1(write_scaling_enqueue);
PG_FUNCTION_INFO_V1(write_scaling_enqueue_batch);
PG_FUNCTION_INFO_V1(write_scaling_request_status);
PG_FUNCTION_INFO_V1(write_scaling_topics_changed);
PG_FUNCTION_INFO_V1(write_scaling_wake_queue_workers);
PG_FUNCTION_INFO_V1(write_scaling_lock_topic);
PG_FUNCTION_INFO_V1(write_scaling_queue_stats);
PG_FUNCTION_INFO_V1(write_scaling_queue_worker_stats);

/* --- shared memory ------------------------------------------------------- */

Size
ws_queue_shmem_size(void)
{
	return MAXALIGN(sizeof(WsQueueShared));
}

/*
 * ws_queue_shmem_init lays out the queue's shared state; the caller holds
 * AddinShmemInitLock.
 */
void
ws_queue_shmem_init(void)
{
	bool		found;

	queue_shared = ShmemInitStruct("write_scaling queue", ws_queue_shmem_size(), &found);
	if (found)
		return;
	memset(queue_shared, 0, sizeof(WsQueueShared));
	LWLockInitialize(&queue_shared->lock, ws_lwlock_tranche_id());
	for (int d = 0; d < WS_MAX_DATABASES; d++)
	{
		pg_atomic_init_u32(&queue_shared->dbs[d].queue_slot, 0);
		for (int t = 0; t < WS_MAX_TOPIC_COUNTERS; t++)
		{
			TopicCounterSlot *c = &queue_shared->dbs[d].topics[t];

			pg_atomic_init_u64(&c->enqueued, 0);
			pg_atomic_init_u64(&c->applied, 0);
			pg_atomic_init_u64(&c->retried, 0);
			pg_atomic_init_u64(&c->dead_lettered, 0);
		}
	}
}

/*
 * queue_database returns dboid's entry, taking a free one when create is
 * set (the caller then holds the lock exclusively), or NULL.
 */
static QueueDatabase *
queue_database(Oid dboid, bool create)
{
	QueueDatabase *free_db = NULL;

	for (int d = 0; d < WS_MAX_DATABASES; d++)
	{
		QueueDatabase *db = &queue_shared->dbs[d];

		if (db->dboid == dboid)
			return db;
		if (free_db == NULL && db->dboid == InvalidOid)
			free_db = db;
	}
	if (!create || free_db == NULL)
		return NULL;
	free_db->dboid = dboid;
	free_db->has_topics = false;
	pg_atomic_write_u32(&free_db->queue_slot, 0);
	memset(free_db->workers, 0, sizeof(free_db->workers));
	for (int t = 0; t < WS_MAX_TOPIC_COUNTERS; t++)
	{
		free_db->topics[t].topic_id = 0;
		pg_atomic_write_u64(&free_db->topics[t].enqueued, 0);
		pg_atomic_write_u64(&free_db->topics[t].applied, 0);
		pg_atomic_write_u64(&free_db->topics[t].retried, 0);
		pg_atomic_write_u64(&free_db->topics[t].dead_lettered, 0);
	}
	return free_db;
}

/*
 * topic_counters returns the counters of topic_id, taking a free slot if
 * allowed; NULL when all are taken (the counters of further topics are not
 * kept).  The caller holds the lock, exclusively when allocate is set.
 */
static TopicCounterSlot *
topic_counters(QueueDatabase *db, int32 topic_id, bool allocate)
{
	TopicCounterSlot *free_slot = NULL;

	for (int t = 0; t < WS_MAX_TOPIC_COUNTERS; t++)
	{
		if (db->topics[t].topic_id == topic_id)
			return &db->topics[t];
		if (free_slot == NULL && db->topics[t].topic_id == 0)
			free_slot = &db->topics[t];
	}
	if (allocate && free_slot != NULL)
	{
		free_slot->topic_id = topic_id;
		return free_slot;
	}
	return NULL;
}

/*
 * add_counts adds counts to the shared counters of MyDatabaseId.
 */
static void
add_counts(QueueDatabase *db, const TopicCounts *counts, int ncounts, bool exclusive)
{
	for (int i = 0; i < ncounts; i++)
	{
		TopicCounterSlot *c = topic_counters(db, counts[i].topic_id, exclusive);

		if (c == NULL)
			continue;
		pg_atomic_fetch_add_u64(&c->enqueued, counts[i].enqueued);
		pg_atomic_fetch_add_u64(&c->applied, counts[i].applied);
		pg_atomic_fetch_add_u64(&c->retried, counts[i].retried);
		pg_atomic_fetch_add_u64(&c->dead_lettered, counts[i].dead_lettered);
	}
}

/*
 * ws_queue_lane_owner returns the queue worker (1..nworkers) that applies
 * a lane.  queue_worker.c's batch query selects by the same formula.
 */
int
ws_queue_lane_owner(int32 topic_id, int32 lane, int nworkers)
{
	return (int) (((int64) topic_id + lane) % nworkers) + 1;
}

/* --- for the launcher ---------------------------------------------------- */

/*
 * ws_queue_wanted says whether dboid has topics, so needs queue workers.
 */
bool
ws_queue_wanted(Oid dboid)
{
	QueueDatabase *db;
	bool		wanted;

	LWLockAcquire(&queue_shared->lock, LW_SHARED);
	db = queue_database(dboid, false);
	wanted = db != NULL && db->has_topics;
	LWLockRelease(&queue_shared->lock);
	return wanted;
}

/*
 * ws_queue_worker_pid returns the pid of dboid's queue worker, 0 if none.
 */
int
ws_queue_worker_pid(Oid dboid, int worker)
{
	QueueDatabase *db;
	int			pid = 0;

	LWLockAcquire(&queue_shared->lock, LW_SHARED);
	db = queue_database(dboid, false);
	if (db != NULL)
		pid = db->workers[worker].pid;
	LWLockRelease(&queue_shared->lock);
	return pid;
}

/*
 * ws_queue_note_topics records whether dboid has topics; called by the
 * database's worker on each pass, so that queue workers start again after
 * a server restart.  Wakes the launcher when topics appear.
 */
void
ws_queue_note_topics(Oid dboid, bool has_topics)
{
	QueueDatabase *db;
	bool		appeared;

	LWLockAcquire(&queue_shared->lock, LW_EXCLUSIVE);
	db = queue_database(dboid, has_topics);
	appeared = db != NULL && has_topics && !db->has_topics;
	if (db != NULL)
		db->has_topics = has_topics;
	LWLockRelease(&queue_shared->lock);
	if (appeared)
		ws_wake_launcher();
}

/*
 * ws_queue_forget_databases frees the entries of databases that are gone
 * and have no queue worker left.
 */
void
ws_queue_forget_databases(List *live_dboids)
{
	LWLockAcquire(&queue_shared->lock, LW_EXCLUSIVE);
	for (int d = 0; d < WS_MAX_DATABASES; d++)
	{
		QueueDatabase *db = &queue_shared->dbs[d];
		bool		running = false;

		if (db->dboid == InvalidOid || list_member_oid(live_dboids, db->dboid))
			continue;
		for (int w = 1; w <= WS_MAX_QUEUE_WORKERS; w++)
			running |= db->workers[w].pid != 0;
		if (!running)
			db->dboid = InvalidOid;
	}
	LWLockRelease(&queue_shared->lock);
}

/* --- for the queue workers ---------------------------------------------- */

static int	my_worker = 0;
static QueueDatabase *my_db = NULL;

static void
queue_worker_detach(int code, Datum arg)
{
	LWLockAcquire(&queue_shared->lock, LW_EXCLUSIVE);
	my_db->workers[my_worker].pid = 0;
	my_db->workers[my_worker].latch = NULL;
	my_db->workers[my_worker].state = QUEUE_WORKER_STOPPED;
	my_db->workers[my_worker].batch_first = 0;
	my_db->workers[my_worker].batch_last = 0;
	LWLockRelease(&queue_shared->lock);
}

/*
 * ws_queue_worker_attach publishes this process as dboid's queue worker;
 * enqueuers then find its latch.  Exits if all database entries are taken.
 */
void
ws_queue_worker_attach(Oid dboid, int worker)
{
	LWLockAcquire(&queue_shared->lock, LW_EXCLUSIVE);
	my_db = queue_database(dboid, true);
	if (my_db != NULL)
	{
		QueueWorkerSlot *slot = &my_db->workers[worker];

		/* Counters go on from the worker this one replaces. */
		slot->pid = MyProcPid;
		slot->latch = MyLatch;
		slot->state = QUEUE_WORKER_IDLE;
		slot->batch_first = slot->batch_last = 0;
	}
	LWLockRelease(&queue_shared->lock);
	if (my_db == NULL)
		ereport(FATAL,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("write_scaling queue workers can serve at most %d databases",
						WS_MAX_DATABASES)));
	my_worker = worker;
	before_shmem_exit(queue_worker_detach, (Datum) 0);
}

/*
 * ws_queue_worker_set_state publishes what this worker does, and the range
 * of request ids it is applying (ws.request_status says "processing").
 */
void
ws_queue_worker_set_state(QueueWorkerState state, int64 first_id, int64 last_id)
{
	QueueWorkerSlot *slot = &my_db->workers[my_worker];

	LWLockAcquire(&queue_shared->lock, LW_EXCLUSIVE);
	slot->state = state;
	slot->batch_first = first_id;
	slot->batch_last = last_id;
	LWLockRelease(&queue_shared->lock);
}

/*
 * ws_queue_worker_batch_done adds a committed batch to the counters.
 */
void
ws_queue_worker_batch_done(TopicCounts *counts, int ncounts, int64 applied)
{
	QueueWorkerSlot *slot = &my_db->workers[my_worker];

	LWLockAcquire(&queue_shared->lock, LW_EXCLUSIVE);
	add_counts(my_db, counts, ncounts, true);
	slot->batches++;
	slot->applied += applied;
	slot->last_batch = GetCurrentTimestamp();
	LWLockRelease(&queue_shared->lock);
}

/* --- catalog ------------------------------------------------------------- */

static void
queue_cache_invalidate(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == topics_relid || relid == queue_relid)
	{
		if (topic_cache != NULL)
		{
			HASH_SEQ_STATUS status;
			TopicEntry *entry;

			hash_seq_init(&status, topic_cache);
			while ((entry = hash_seq_search(&status)) != NULL)
				(void) hash_search(topic_cache, entry->name, HASH_REMOVE, NULL);
		}
		if (relid != topics_relid)
			relids_valid = false;
	}
}

/*
 * resolve_relids finds ws.queue, ws.topics and the owner the queue's
 * statements run as.  After the extension was dropped and created again,
 * the prepared statements are made anew.
 */
static void
resolve_relids(void)
{
	Oid			nsp;
	HeapTuple	tuple;

	if (relids_valid)
		return;
	if (topic_cache == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = NAMEDATALEN;
		ctl.entrysize = sizeof(TopicEntry);
		ctl.hcxt = CacheMemoryContext;
		topic_cache = hash_create("write_scaling topics", 16, &ctl,
								  HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
		CacheRegisterRelcacheCallback(queue_cache_invalidate, (Datum) 0);
	}
	if (insert_plan != NULL)
		SPI_freeplan(insert_plan);
	insert_plan = NULL;
	for (int i = 0; i < lengthof(status_plans); i++)
	{
		if (status_plans[i] != NULL)
			SPI_freeplan(status_plans[i]);
		status_plans[i] = NULL;
	}

	nsp = get_namespace_oid("ws", false);
	queue_relid = get_relname_relid("queue", nsp);
	topics_relid = get_relname_relid("topics", nsp);
	queue_seq_relid = get_relname_relid("queue_id_seq", nsp);
	for (int i = 0; i < lengthof(slot_relids); i++)
	{
		char		name[NAMEDATALEN];

		snprintf(name, sizeof(name), "queue_%d", i);
		slot_relids[i] = get_relname_relid(name, nsp);
	}
	if (!OidIsValid(queue_relid) || !OidIsValid(topics_relid) || !OidIsValid(queue_seq_relid) ||
		!OidIsValid(slot_relids[0]) || !OidIsValid(slot_relids[1]) || !OidIsValid(slot_relids[2]))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the write_scaling queue tables are missing"),
				 errhint("Drop and create the extension write_scaling again.")));
	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(queue_relid));
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for relation %u", queue_relid);
	queue_owner = ((Form_pg_class) GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);
	relids_valid = true;
}

/*
 * prepare_kept prepares a statement for the life of the backend.
 */
static SPIPlanPtr
prepare_kept(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql,
			 SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "SPI_keepplan failed");
	return plan;
}

/* What enter_owner saved, for leave_owner. */
typedef struct OwnerContext
{
	Oid			user;
	int			sec_context;
	int			guc_level;
} OwnerContext;

/*
 * enter_owner connects to SPI as the owner of the queue's tables, with a
 * search_path where no caller can have planted a function or operator.
 */
static void
enter_owner(OwnerContext *ctx)
{
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	GetUserIdAndSecContext(&ctx->user, &ctx->sec_context);
	SetUserIdAndSecContext(queue_owner, ctx->sec_context | SECURITY_LOCAL_USERID_CHANGE);
	ctx->guc_level = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
}

static void
leave_owner(OwnerContext *ctx)
{
	AtEOXact_GUC(false, ctx->guc_level);
	SetUserIdAndSecContext(ctx->user, ctx->sec_context);
	SPI_finish();
}

/*
 * lookup_topic reads a topic from ws.topics into entry, with a new
 * snapshot (a drop that committed while we waited for a lock is seen);
 * false if there is no such topic.  The caller is inside enter_owner.
 */
static bool
lookup_topic(const char *name, TopicEntry *entry)
{
	static SPIPlanPtr plan = NULL;
	static Oid	plan_relid = InvalidOid;
	Datum		arg = CStringGetTextDatum(name);
	HeapTuple	tuple;
	TupleDesc	desc;
	bool		isnull;

	if (plan == NULL || plan_relid != topics_relid)
	{
		if (plan != NULL)
			SPI_freeplan(plan);
		plan = NULL;
		plan = prepare_kept("SELECT topic_id, partitions, handler::oid, async_commit"
							" FROM ws.topics WHERE topic = $1",
							1, (Oid[]) {TEXTOID});
		plan_relid = topics_relid;
	}
	if (SPI_execute_plan(plan, &arg, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read ws.topics");
	if (SPI_processed == 0)
		return false;
	tuple = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	entry->topic_id = DatumGetInt32(SPI_getbinval(tuple, desc, 1, &isnull));
	entry->partitions = DatumGetInt32(SPI_getbinval(tuple, desc, 2, &isnull));
	entry->handler = DatumGetObjectId(SPI_getbinval(tuple, desc, 3, &isnull));
	entry->async_commit = DatumGetBool(SPI_getbinval(tuple, desc, 4, &isnull));
	return true;
}

/* --- enqueue ------------------------------------------------------------- */

/*
 * note_enqueued remembers n messages of a topic for the commit callback.
 */
static void
note_enqueued(TopicEntry *topic, int64 n)
{
	SubTransactionId subid = GetCurrentSubTransactionId();
	PendingCount *last = npending > 0 ? &pending[npending - 1] : NULL;

	if (last != NULL && last->subid == subid && last->topic_id == topic->topic_id)
	{
		last->count += n;
		return;
	}
	if (npending == maxpending)
	{
		maxpending = Max(16, maxpending * 2);
		pending = pending == NULL
			? MemoryContextAlloc(TopMemoryContext, sizeof(PendingCount) * maxpending)
			: repalloc(pending, sizeof(PendingCount) * maxpending);
	}
	pending[npending].subid = subid;
	pending[npending].topic_id = topic->topic_id;
	pending[npending].count = n;
	npending++;
	async_commit_requested |= topic->async_commit;
}

/*
 * open_topic copies the topic called name into *topic, after checking that
 * the caller may enqueue into it.  The topic's lock (AccessShareLock on the
 * topic as an object) is held to the end of the transaction, so that
 * ws.drop_topic waits for the enqueue to commit, and an enqueue that waited
 * for a drop finds the topic gone.
 */
static void
open_topic(text *name_text, TopicEntry *topic)
{
	char	   *name = text_to_cstring(name_text);

	if (strlen(name) >= NAMEDATALEN)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("topic \"%.*s...\" does not exist", 32, name)));

	resolve_relids();
	/* Taking a lock processes invalidations: the cache is current after. */
	LockRelationOid(queue_relid, RowExclusiveLock);
	resolve_relids();

	for (;;)
	{
		TopicEntry *entry = hash_search(topic_cache, name, HASH_FIND, NULL);

		if (entry == NULL)
		{
			OwnerContext owner;
			bool		exists;

			enter_owner(&owner);
			exists = lookup_topic(name, topic);
			leave_owner(&owner);
			if (!exists)
				ereport(ERROR,
						(errcode(ERRCODE_UNDEFINED_OBJECT),
						 errmsg("topic \"%s\" does not exist", name),
						 errhint("Create it with ws.create_topic().")));
			entry = hash_search(topic_cache, name, HASH_ENTER, NULL);
			entry->topic_id = topic->topic_id;
			entry->partitions = topic->partitions;
			entry->handler = topic->handler;
			entry->async_commit = topic->async_commit;
		}
		memcpy(topic, entry, sizeof(TopicEntry));

		LockDatabaseObject(topics_relid, topic->topic_id, 0, AccessShareLock);
		entry = hash_search(topic_cache, name, HASH_FIND, NULL);
		if (entry != NULL && entry->topic_id == topic->topic_id)
			break;
		/* Dropped or replaced while we waited: look again. */
		UnlockDatabaseObject(topics_relid, topic->topic_id, 0, AccessShareLock);
	}

	if (pg_proc_aclcheck(topic->handler, GetUserId(), ACL_EXECUTE) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for topic \"%s\"", name),
				 errdetail("Enqueueing into a topic needs EXECUTE on its handler %s.",
						   format_procedure(topic->handler))));
}

static text *
key_arg(Datum datum)
{
	text	   *key = DatumGetTextPP(datum);

	if (VARSIZE_ANY_EXHDR(key) > WS_MAX_KEY_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("message key is too long"),
				 errdetail("The key has %d bytes; the limit is %d.",
						   (int) VARSIZE_ANY_EXHDR(key), WS_MAX_KEY_BYTES)));
	return key;
}

/*
 * ws_queue_forget_slot makes enqueuers read the current slot of ws.queue
 * again; called by the worker that rotated it.
 */
void
ws_queue_forget_slot(Oid dboid)
{
	QueueDatabase *db;

	LWLockAcquire(&queue_shared->lock, LW_SHARED);
	db = queue_database(dboid, false);
	if (db != NULL)
		pg_atomic_write_u32(&db->queue_slot, 0);
	LWLockRelease(&queue_shared->lock);
}

/*
 * current_slot returns the slot of ws.queue that takes new messages.  It
 * is read from ws.queue_rotation and kept in shared memory until the next
 * rotation; a stale value only delays the truncation of a slot, because a
 * slot is truncated only once it is empty.
 */
static int
current_slot(void)
{
	static SPIPlanPtr plan = NULL;
	uint32		known = 0;
	bool		isnull;
	int			slot;

	if (queue_shared != NULL && backend_db == NULL)
	{
		LWLockAcquire(&queue_shared->lock, LW_EXCLUSIVE);
		backend_db = queue_database(MyDatabaseId, true);
		LWLockRelease(&queue_shared->lock);
	}
	if (backend_db != NULL)
		known = pg_atomic_read_u32(&backend_db->queue_slot);
	if (known > 0)
		return (int) known - 1;

	{
		OwnerContext owner;

		enter_owner(&owner);
		if (plan == NULL)
			plan = prepare_kept("SELECT current FROM ws.queue_rotation WHERE log = 'queue'", 0, NULL);
		if (SPI_execute_plan(plan, NULL, NULL, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "could not read ws.queue_rotation");
		slot = DatumGetInt16(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		leave_owner(&owner);
	}
	if (slot < 0 || slot >= lengthof(slot_relids))
		elog(ERROR, "ws.queue_rotation names slot %d of ws.queue", slot);
	if (backend_db != NULL)
		pg_atomic_write_u32(&backend_db->queue_slot, (uint32) slot + 1);
	return slot;
}

/* ws.queue's columns, in order, as the direct insert fills them. */
static const Oid queue_column_types[] = {
	INT8OID, INT4OID, INT4OID, TEXTOID, JSONBOID, TIMESTAMPTZOID, INT4OID,
	TIMESTAMPTZOID, TEXTOID, TEXTOID, INT2OID
};

/*
 * insert_directly writes one message into a slot of ws.queue the way
 * CatalogTupleInsert writes catalogs: a heap insert and its index entry,
 * without the executor.  Returns false, writing nothing, unless the slot
 * is exactly as the install script made it: no check constraint, trigger,
 * rule or row-level security, here or on ws.queue, and one index.
 */
static bool
insert_directly(int slot, TopicEntry *topic, int32 lane, text *key, Datum payload, int64 *id)
{
	Relation	rel = table_open(slot_relids[slot], RowExclusiveLock);
	TupleDesc	desc = RelationGetDescr(rel);
	List	   *indexes = RelationGetIndexList(rel);
	Relation	index = NULL;
	IndexInfo  *info = NULL;
	Datum		values[lengthof(queue_column_types)];
	bool		nulls[lengthof(queue_column_types)];
	HeapTuple	tuple;
	Relation	parent = relation_open(queue_relid, NoLock);	/* locked by open_topic */
	bool		plain = rel->rd_rel->relispartition && rel->trigdesc == NULL &&
		rel->rd_rules == NULL && !rel->rd_rel->relrowsecurity &&
		(desc->constr == NULL || desc->constr->num_check == 0) &&
		parent->trigdesc == NULL && !parent->rd_rel->relrowsecurity &&
		desc->natts == lengthof(queue_column_types) && list_length(indexes) == 1;

	relation_close(parent, NoLock);

	for (int i = 0; plain && i < desc->natts; i++)
		plain = !TupleDescAttr(desc, i)->attisdropped &&
			TupleDescAttr(desc, i)->atttypid == queue_column_types[i];
	if (plain)
	{
		index = index_open(linitial_oid(indexes), RowExclusiveLock);
		info = BuildIndexInfo(index);
		plain = info->ii_NumIndexAttrs == 1 && info->ii_IndexAttrNumbers[0] == 1 &&
			info->ii_Expressions == NIL && info->ii_Predicate == NIL;
	}
	if (!plain)
	{
		if (index != NULL)
			index_close(index, RowExclusiveLock);
		table_close(rel, RowExclusiveLock);
		return false;
	}

	*id = nextval_internal(queue_seq_relid, false);
	memset(nulls, false, sizeof(nulls));
	values[0] = Int64GetDatum(*id);
	values[1] = Int32GetDatum(topic->topic_id);
	values[2] = Int32GetDatum(lane);
	values[3] = PointerGetDatum(key);
	values[4] = payload;
	values[5] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());	/* now() */
	values[6] = Int32GetDatum(0);
	nulls[7] = nulls[8] = nulls[9] = true;
	values[10] = Int16GetDatum(slot);
	tuple = heap_form_tuple(desc, values, nulls);
	simple_heap_insert(rel, tuple);
	(void) index_insert(index, values, nulls, &tuple->t_self, rel, UNIQUE_CHECK_NO, false, info);

	index_close(index, NoLock);
	table_close(rel, NoLock);
	return true;
}

/*
 * insert_message inserts one message and returns its request id.
 */
static int64
insert_message(TopicEntry *topic, text *key, Datum payload)
{
	uint32		hash = hash_bytes((unsigned char *) VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key));
	int32		lane = (int32) (hash % (uint32) topic->partitions);
	Datum		args[4];
	bool		isnull;
	int64		id;
	OwnerContext owner;

	if (ws_queue_workers > 0)
		wake_mask |= UINT64CONST(1) << ws_queue_lane_owner(topic->topic_id, lane, ws_queue_workers);
	if (insert_directly(current_slot(), topic, lane, key, payload, &id))
		return id;

	/* A slot someone altered: let the executor apply whatever they added. */
	enter_owner(&owner);
	if (insert_plan == NULL)
		insert_plan = prepare_kept("INSERT INTO ws.queue (id, topic_id, lane, key, payload, slot)"
								   " SELECT nextval('ws.queue_id_seq'), $1, $2, $3, $4, r.current"
								   " FROM ws.queue_rotation r WHERE r.log = 'queue'"
								   " RETURNING id",
								   4, (Oid[]) {INT4OID, INT4OID, TEXTOID, JSONBOID});
	args[0] = Int32GetDatum(topic->topic_id);
	args[1] = Int32GetDatum(lane);
	args[2] = PointerGetDatum(key);
	args[3] = payload;
	if (SPI_execute_plan(insert_plan, args, NULL, false, 0) != SPI_OK_INSERT_RETURNING ||
		SPI_processed != 1)
		elog(ERROR, "could not insert into ws.queue");
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	leave_owner(&owner);
	return id;
}

/*
 * ws.enqueue(topic, key, payload) returns the new message's request id.
 */
Datum
write_scaling_enqueue(PG_FUNCTION_ARGS)
{
	TopicEntry	topic;
	text	   *key;
	int64		id;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("topic name must not be null")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("message key must not be null"),
				 errhint("Messages with the same key are applied in order; use a constant key for a single lane.")));
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("message payload must not be null"),
				 errhint("Pass '{}'::jsonb or 'null'::jsonb for a message without data.")));
	PreventCommandIfReadOnly("ws.enqueue()");

	open_topic(PG_GETARG_TEXT_PP(0), &topic);
	key = key_arg(PG_GETARG_DATUM(1));
	id = insert_message(&topic, key, PG_GETARG_DATUM(2));
	note_enqueued(&topic, 1);
	PG_RETURN_INT64(id);
}

/*
 * ws.enqueue_batch(topic, keys[], payloads[]) enqueues keys[i], payloads[i] in
 * order and returns their request ids in the same order.
 */
Datum
write_scaling_enqueue_batch(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TopicEntry	topic;
	ArrayType  *keys;
	ArrayType  *payloads;
	Datum	   *key_values;
	Datum	   *payload_values;
	bool	   *key_nulls;
	bool	   *payload_nulls;
	int			nkeys;
	int			npayloads;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("topic name must not be null")));
	if (PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("arrays of keys and payloads must not be null")));
	PreventCommandIfReadOnly("ws.enqueue_batch()");

	keys = PG_GETARG_ARRAYTYPE_P(1);
	payloads = PG_GETARG_ARRAYTYPE_P(2);
	if (ARR_NDIM(keys) > 1 || ARR_NDIM(payloads) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("arrays of keys and payloads must be one-dimensional")));
	deconstruct_array(keys, TEXTOID, -1, false, TYPALIGN_INT, &key_values, &key_nulls, &nkeys);
	deconstruct_array(payloads, JSONBOID, -1, false, TYPALIGN_INT,
					  &payload_values, &payload_nulls, &npayloads);
	if (nkeys != npayloads)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("arrays of keys and payloads must have the same length"),
				 errdetail("There are %d keys and %d payloads.", nkeys, npayloads)));
	for (int i = 0; i < nkeys; i++)
	{
		if (key_nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("key of message %d must not be null", i + 1),
					 errdetail("Nothing was enqueued.")));
		if (payload_nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("payload of message %d must not be null", i + 1),
					 errdetail("Nothing was enqueued.")));
	}

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	if (nkeys == 0)
		return (Datum) 0;
	open_topic(PG_GETARG_TEXT_PP(0), &topic);
	for (int i = 0; i < nkeys; i++)
		(void) key_arg(key_values[i]);
	for (int i = 0; i < nkeys; i++)
	{
		Datum		id = Int64GetDatum(insert_message(&topic, DatumGetTextPP(key_values[i]),
													  payload_values[i]));
		bool		isnull = false;

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &id, &isnull);
	}
	note_enqueued(&topic, nkeys);
	return (Datum) 0;
}

/* --- request status ------------------------------------------------------ */

/*
 * request_in_progress says whether a queue worker of this database is
 * applying the batch that holds request id.
 */
static bool
request_in_progress(int64 id, int32 topic_id, int32 lane)
{
	QueueDatabase *db;
	bool		found = false;

	if (queue_shared == NULL || ws_queue_workers <= 0)
		return false;
	LWLockAcquire(&queue_shared->lock, LW_SHARED);
	db = queue_database(MyDatabaseId, false);
	if (db != NULL)
	{
		QueueWorkerSlot *w = &db->workers[ws_queue_lane_owner(topic_id, lane, ws_queue_workers)];

		found = w->state == QUEUE_WORKER_APPLYING &&
			w->batch_first <= id && id <= w->batch_last;
	}
	LWLockRelease(&queue_shared->lock);
	return found;
}

/*
 * ws.request_status(request_id) returns one row saying where the request
 * is, or none when it is unknown or forgotten.  The lookups run as the
 * queue's owner in one snapshot (the function is STABLE), so the request
 * is seen in exactly one place; the caller must be allowed to enqueue into
 * its topic.
 */
Datum
write_scaling_request_status(PG_FUNCTION_ARGS)
{
	static const char *const queries[4] = {
		"SELECT q.topic_id, q.attempts, q.last_error, q.last_sqlstate, q.enqueued_at,"
		" NULL::timestamptz, q.lane FROM ws.queue q WHERE q.id = $1",
		"SELECT d.topic_id, d.attempts, NULL::text, NULL::text, d.enqueued_at, d.applied_at, 0"
		" FROM ws.queue_done d WHERE d.id = $1",
		"SELECT d.topic_id, d.attempts, d.error, d.sqlstate, d.enqueued_at, d.failed_at, d.lane"
		" FROM ws.dead_letters d WHERE d.id = $1",
		"SELECT topic, handler::oid FROM ws.topics WHERE topic_id = $1"
	};
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Datum		id;
	Datum		values[7];
	bool		nulls[7];
	int			where = -1;
	OwnerContext owner;
	Oid			handler = InvalidOid;
	bool		isnull;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("request id must not be null")));
	id = PG_GETARG_DATUM(0);
	InitMaterializedSRF(fcinfo, 0);
	resolve_relids();

	enter_owner(&owner);
	for (int i = 0; i < 3 && where < 0; i++)
	{
		if (status_plans[i] == NULL)
			status_plans[i] = prepare_kept(queries[i], 1, (Oid[]) {INT8OID});
		if (SPI_execute_plan(status_plans[i], &id, NULL, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not look up request");
		if (SPI_processed == 0)
			continue;
		where = i;
		memset(nulls, 0, sizeof(nulls));
		for (int c = 0; c < 6; c++)
			values[c + 1] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
										  c + 1, &nulls[c + 1]);
		/* Copy out of SPI's memory what outlives SPI_finish. */
		for (int c = 3; c <= 4; c++)
			if (!nulls[c])
				values[c] = SPI_datumTransfer(values[c], false, -1);
		if (where == 0 &&
			request_in_progress(DatumGetInt64(id), DatumGetInt32(values[1]),
								DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
															SPI_tuptable->tupdesc, 7, &isnull))))
			where = 3;
	}
	if (where >= 0)
	{
		Datum		topic_id = values[1];

		if (status_plans[3] == NULL)
			status_plans[3] = prepare_kept(queries[3], 1, (Oid[]) {INT4OID});
		if (SPI_execute_plan(status_plans[3], &topic_id, NULL, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read ws.topics");
		nulls[1] = SPI_processed == 0;
		if (SPI_processed > 0)
		{
			values[1] = SPI_datumTransfer(SPI_getbinval(SPI_tuptable->vals[0],
														SPI_tuptable->tupdesc, 1, &isnull),
										  false, -1);
			handler = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0],
													 SPI_tuptable->tupdesc, 2, &isnull));
		}
	}
	leave_owner(&owner);

	/* The request of a dropped topic is as gone as its topic. */
	if (where < 0 || !OidIsValid(handler))
		return (Datum) 0;
	if (pg_proc_aclcheck(handler, GetUserId(), ACL_EXECUTE) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for request " INT64_FORMAT, DatumGetInt64(id)),
				 errdetail("Seeing a request needs EXECUTE on its topic's handler %s.",
						   format_procedure(handler))));

	values[0] = CStringGetTextDatum(((const char *const[]) {"pending", "done", "failed", "processing"})[where]);
	nulls[0] = false;
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	return (Datum) 0;
}

/* --- transaction callbacks and internal functions ------------------------ */

/*
 * ws._topics_changed() makes every backend drop its cached topics, and
 * tells the launcher this database has topics, when the transaction
 * commits.
 */
Datum
write_scaling_topics_changed(PG_FUNCTION_ARGS)
{
	resolve_relids();
	CacheInvalidateRelcacheByRelid(topics_relid);
	topics_changed_at_commit = true;
	wake_all_at_commit = true;
	PG_RETURN_VOID();
}

/*
 * ws._lock_topic(topic_id) locks a topic until the transaction ends:
 * enqueues into it (open_topic) and worker batches wait.  ws.drop_topic
 * calls it, so the topic's counters are freed if the transaction commits.
 */
Datum
write_scaling_lock_topic(PG_FUNCTION_ARGS)
{
	int32		topic_id = PG_GETARG_INT32(0);

	resolve_relids();
	LockDatabaseObject(topics_relid, topic_id, 0, AccessExclusiveLock);
	if (ndropped_topics < lengthof(dropped_topics))
		dropped_topics[ndropped_topics++] = topic_id;
	PG_RETURN_VOID();
}

/*
 * ws._wake_queue_workers() wakes this database's queue workers at commit.
 */
Datum
write_scaling_wake_queue_workers(PG_FUNCTION_ARGS)
{
	wake_all_at_commit = true;
	PG_RETURN_VOID();
}

/*
 * at_commit publishes what the transaction enqueued and wakes the workers
 * that apply it.  Runs after the commit record is flushed (or queued, with
 * asynchronous commit): a woken worker sees the messages.
 */
static void
at_commit(void)
{
	QueueDatabase *db;
	TopicCounts counts[8];
	int			ncounts = 0;
	bool		missing = false;

	if (queue_shared == NULL)
		return;
	if (topics_changed_at_commit)
		ws_queue_note_topics(MyDatabaseId, true);

	LWLockAcquire(&queue_shared->lock, LW_SHARED);
	db = queue_database(MyDatabaseId, false);
	if (db != NULL)
	{
		for (int w = 1; w <= WS_MAX_QUEUE_WORKERS; w++)
			if ((wake_all_at_commit || (wake_mask & (UINT64CONST(1) << w))) &&
				db->workers[w].latch != NULL)
				SetLatch(db->workers[w].latch);

		for (int i = 0; i < npending; i++)
		{
			TopicCounterSlot *c = topic_counters(db, pending[i].topic_id, false);

			if (c != NULL)
				pg_atomic_fetch_add_u64(&c->enqueued, pending[i].count);
			else if (ncounts < lengthof(counts))
			{
				memset(&counts[ncounts], 0, sizeof(TopicCounts));
				counts[ncounts].topic_id = pending[i].topic_id;
				counts[ncounts++].enqueued = pending[i].count;
				missing = true;
			}
		}
	}
	LWLockRelease(&queue_shared->lock);

	/* The first enqueue into a topic since server start takes a slot. */
	if (missing || ndropped_topics > 0)
	{
		LWLockAcquire(&queue_shared->lock, LW_EXCLUSIVE);
		db = queue_database(MyDatabaseId, true);
		if (db != NULL)
		{
			add_counts(db, counts, ncounts, true);
			for (int i = 0; i < ndropped_topics; i++)
			{
				TopicCounterSlot *c = topic_counters(db, dropped_topics[i], false);

				if (c != NULL)
					c->topic_id = 0;
			}
		}
		LWLockRelease(&queue_shared->lock);
	}
}

static void
queue_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			/* An event store append needs its commit flushed: see frontier.c. */
			if (async_commit_requested && npending > 0 && !ws_frontier_appended_in_xact())
				(void) set_config_option("synchronous_commit", "off",
										 PGC_USERSET, PGC_S_SESSION,
										 GUC_ACTION_LOCAL, true, 0, false);
			break;
		case XACT_EVENT_COMMIT:
			if (npending > 0 || wake_all_at_commit || topics_changed_at_commit ||
				ndropped_topics > 0)
				at_commit();
			/* FALLTHROUGH */
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
			npending = 0;
			wake_mask = 0;
			wake_all_at_commit = false;
			topics_changed_at_commit = false;
			async_commit_requested = false;
			ndropped_topics = 0;
			break;
		default:
			break;
	}
}

static void
queue_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					   SubTransactionId parentSubid, void *arg)
{
	int			kept = 0;

	if (event != SUBXACT_EVENT_ABORT_SUB && event != SUBXACT_EVENT_COMMIT_SUB)
		return;
	for (int i = 0; i < npending; i++)
	{
		if (pending[i].subid == mySubid)
		{
			if (event == SUBXACT_EVENT_ABORT_SUB)
				continue;
			pending[i].subid = parentSubid;
		}
		pending[kept++] = pending[i];
	}
	npending = kept;
}

/*
 * ws_queue_register_callbacks arranges for the commit-time work.
 */
void
ws_queue_register_callbacks(void)
{
	RegisterXactCallback(queue_xact_callback, NULL);
	RegisterSubXactCallback(queue_subxact_callback, NULL);
}

/* --- statistics ---------------------------------------------------------- */

/*
 * ws._queue_stats() returns the counters of this database's topics.
 */
Datum
write_scaling_queue_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	QueueDatabase *db;

	InitMaterializedSRF(fcinfo, 0);
	if (queue_shared == NULL)
		return (Datum) 0;
	LWLockAcquire(&queue_shared->lock, LW_SHARED);
	db = queue_database(MyDatabaseId, false);
	for (int t = 0; db != NULL && t < WS_MAX_TOPIC_COUNTERS; t++)
	{
		TopicCounterSlot *c = &db->topics[t];
		Datum		values[5];
		bool		nulls[5] = {0};

		if (c->topic_id == 0)
			continue;
		values[0] = Int32GetDatum(c->topic_id);
		values[1] = Int64GetDatum((int64) pg_atomic_read_u64(&c->enqueued));
		values[2] = Int64GetDatum((int64) pg_atomic_read_u64(&c->applied));
		values[3] = Int64GetDatum((int64) pg_atomic_read_u64(&c->retried));
		values[4] = Int64GetDatum((int64) pg_atomic_read_u64(&c->dead_lettered));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	LWLockRelease(&queue_shared->lock);
	return (Datum) 0;
}

/*
 * ws._queue_worker_stats() returns one row per running or stopped queue
 * worker of any database.
 */
Datum
write_scaling_queue_worker_stats(PG_FUNCTION_ARGS)
{
	static const char *const state_names[] = {"stopped", "idle", "applying"};
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	if (queue_shared == NULL)
		return (Datum) 0;
	LWLockAcquire(&queue_shared->lock, LW_SHARED);
	for (int d = 0; d < WS_MAX_DATABASES; d++)
	{
		QueueDatabase *db = &queue_shared->dbs[d];

		if (db->dboid == InvalidOid)
			continue;
		for (int w = 1; w <= WS_MAX_QUEUE_WORKERS; w++)
		{
			QueueWorkerSlot *s = &db->workers[w];
			Datum		values[7];
			bool		nulls[7] = {0};

			if (s->pid == 0 && s->batches == 0)
				continue;
			values[0] = ObjectIdGetDatum(db->dboid);
			values[1] = Int32GetDatum(w);
			values[2] = Int32GetDatum(s->pid);
			nulls[2] = s->pid == 0;
			values[3] = CStringGetTextDatum(state_names[s->state]);
			values[4] = Int64GetDatum(s->batches);
			values[5] = Int64GetDatum(s->applied);
			values[6] = TimestampTzGetDatum(s->last_batch);
			nulls[6] = s->last_batch == 0;
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
	}
	LWLockRelease(&queue_shared->lock);
	return (Datum) 0;
}

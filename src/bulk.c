/*-------------------------------------------------------------------------
 *
 * bulk.c
 *	  Buffered bulk inserts: ws.buffered_insert keeps rows in a per-session
 *	  buffer per table and writes them through PostgreSQL's own COPY FROM,
 *	  so many small inserts become COPY's multi-inserts.
 *
 * Design
 *	  A buffer lives in a memory context under TopTransactionContext, so a
 *	  rollback discards it with the transaction.  It is flushed when it
 *	  holds write_scaling.batch_rows rows or write_scaling.batch_bytes bytes,
 *	  on ws.flush, and always in XACT_EVENT_PRE_COMMIT (and PRE_PREPARE):
 *	  nothing buffered is written outside its transaction or lost.  Rows
 *	  for a plain table without triggers go straight to table_multi_insert
 *	  with COPY's checks (bulk_direct.c); an error names the row ("buffered
 *	  row N of M").  Any other flush serialises the rows in COPY's binary
 *	  format (each column's send function) and hands them to
 *	  BeginCopyFrom/CopyFrom through a data source callback, so generated
 *	  columns, triggers, partition routing and foreign tables behave exactly
 *	  as for COPY, and an error names the row as COPY does ("COPY t, line
 *	  N": the Nth row of that flush).  A flush at commit runs
 *	  AfterTriggerFireDeferred again, since deferred triggers queued this
 *	  late would otherwise be missed.
 *
 *	  A buffered row is a tuple of the table's columns when it was
 *	  buffered, and remembers them.  A flush refuses rows whose columns have
 *	  since changed type (ALTER TABLE in the same transaction): their stored
 *	  values would no longer fit.  Added columns are fine: COPY fills them
 *	  in.
 *
 * Subtransactions
 *	  Each row remembers the subtransaction that buffered it (its origin).
 *	  A savepoint rolled back drops the rows it buffered.  A flush writes in
 *	  the current subtransaction, so rows of outer levels that it writes are
 *	  also kept in a journal until that subtransaction commits; if it rolls
 *	  back instead, they go back into the buffer, since their write was
 *	  undone but they were not.
 *
 * Durability
 *	  With write_scaling.buffered_async_commit on, a transaction that used
 *	  the buffered path commits with synchronous_commit off (a crash can
 *	  lose its last few hundred milliseconds of commits, never corrupt
 *	  data).  A transaction that also appended to an event store keeps its
 *	  synchronous_commit, so its append stays durable and replicated.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/copy.h"
#include "commands/trigger.h"
#include "foreign/fdwapi.h"
#include "funcapi.h"
#include "libpq/pqformat.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_node.h"
#include "parser/parse_relation.h"
#include "port/atomics.h"
#include "storage/lmgr.h"
#include "storage/shmem.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "bulk.h"
#include "send_encoding.h"
#include "shard.h"
#include "frontier.h"
#include "guc.h"

typedef struct BufferedRow
{
	HeapTuple	tuple;
	TupleDesc	layout;			/* the table's columns when it was buffered */
	SubTransactionId origin;	/* subtransaction that buffered it */
	SubTransactionId flushed_in;	/* journal only: where it was written */
} BufferedRow;

typedef struct RowArray
{
	BufferedRow *rows;
	int			count;
	int			max;
} RowArray;

typedef struct TableBuffer
{
	Oid			relid;			/* hash key */
	Oid			rowtype;		/* checked, with the privileges, at first use */
	RowArray	pending;		/* buffered, not yet written */
	RowArray	journal;		/* outer-level rows written in a subxact */
	Size		bytes;			/* of pending */
	TupleDesc	layout;			/* the columns of the rows buffered now */
	uint64		layout_generation;	/* layout_generation when it was noted */
	bool		each_statement; /* flushed at the end of each statement */

	/* What the last call checked, so that the next may skip it. */
	SubTransactionId locked_in;
	Oid			checked_user;
	int			checked_context;
	uint64		checked_generation;
} TableBuffer;

typedef struct WsBulkShared
{
	pg_atomic_uint64 rows_buffered;
	pg_atomic_uint64 flushes;
	pg_atomic_uint64 rows_flushed;
} WsBulkShared;

static WsBulkShared *bulk_stats = NULL;

/* This transaction's buffers; NULL when it has none. */
static HTAB *buffers = NULL;
static MemoryContext buffer_context = NULL;
static bool used_buffered_path = false;
static bool flushing_at_commit = false;

/*
 * Whether our commit callback runs before postgres_fdw's: so once it has
 * been registered again after postgres_fdw's (which postgres_fdw registers
 * once per backend).  Only then may the flush at commit use postgres_fdw.
 */
static bool ahead_of_fdw = false;

/*
 * Bumped when a pg_class row, a role or a role membership changes: the
 * privileges a call checked may have changed with it.
 */
static uint64 privilege_generation = 0;

/* Bumped by relation cache invalidations: a table's columns may have changed. */
static uint64 layout_generation = 1;

/* The COPY data of the flush in progress, read by copy_source. */
static StringInfo copy_data = NULL;

PG_FUNCTION_INFO_V1(write_scaling_buffered_insert);
PG_FUNCTION_INFO_V1(write_scaling_flush);
PG_FUNCTION_INFO_V1(write_scaling_copy_rows);
PG_FUNCTION_INFO_V1(write_scaling_bulk_stats);

static void count(pg_atomic_uint64 *counter, uint64 n);

Size
ws_bulk_shmem_size(void)
{
	return MAXALIGN(sizeof(WsBulkShared));
}

/*
 * ws_bulk_shmem_init sets up the counters; the caller holds
 * AddinShmemInitLock.
 */
void
ws_bulk_shmem_init(void)
{
	bool		found;

	bulk_stats = ShmemInitStruct("write_scaling bulk", ws_bulk_shmem_size(), &found);
	if (!found)
	{
		pg_atomic_init_u64(&bulk_stats->rows_buffered, 0);
		pg_atomic_init_u64(&bulk_stats->flushes, 0);
		pg_atomic_init_u64(&bulk_stats->rows_flushed, 0);
	}
}

static void
count(pg_atomic_uint64 *counter, uint64 n)
{
	if (bulk_stats != NULL)
		pg_atomic_fetch_add_u64(counter, n);
}

static void
push_row(RowArray *array, BufferedRow row)
{
	if (array->count == array->max)
	{
		array->max = Max(64, array->max * 2);
		array->rows = array->rows == NULL ?
			MemoryContextAlloc(buffer_context, array->max * sizeof(BufferedRow)) :
			repalloc(array->rows, array->max * sizeof(BufferedRow));
	}
	array->rows[array->count++] = row;
}

static void bulk_xact_callback(XactEvent event, void *arg);

/*
 * open_target opens the target table for buffering with RowExclusiveLock,
 * after checking that COPY could write it and that the caller may insert.
 */
static Relation
open_target(Oid relid)
{
	Relation	rel = table_open(relid, RowExclusiveLock);
	char		kind = rel->rd_rel->relkind;

	if (kind == RELKIND_FOREIGN_TABLE)
	{
		FdwRoutine *fdw = GetFdwRoutineForRelation(rel, false);

		if (fdw->ExecForeignInsert == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot buffer rows for foreign table \"%s\"",
							RelationGetRelationName(rel)),
					 errdetail("Its foreign-data wrapper does not support inserts.")));
	}
	else if (kind == RELKIND_VIEW)
	{
		/* As for COPY: a distributed table is such a view (shard_route.c). */
		if (rel->trigdesc == NULL || !rel->trigdesc->trig_insert_instead_row)
			ereport(ERROR,
					(errcode(ERRCODE_WRONG_OBJECT_TYPE),
					 errmsg("cannot buffer rows for view \"%s\"", RelationGetRelationName(rel)),
					 errdetail("Only a view with an INSTEAD OF INSERT trigger, such as a distributed table, can be written through the buffered path."),
					 errhint("Insert into the underlying table instead.")));
	}
	else if (kind != RELKIND_RELATION && kind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("cannot buffer rows for \"%s\"", RelationGetRelationName(rel)),
				 errdetail("Only tables, partitioned tables, foreign tables and distributed tables can be written through the buffered path."),
				 errhint("Insert into the underlying table instead.")));

	if (pg_class_aclcheck(relid, GetUserId(), ACL_INSERT) != ACLCHECK_OK)
		aclcheck_error(ACLCHECK_NO_PRIV, get_relkind_objtype(kind),
					   RelationGetRelationName(rel));
	if (check_enable_rls(relid, InvalidOid, false) == RLS_ENABLED)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot buffer rows for table \"%s\" with row-level security",
						RelationGetRelationName(rel)),
				 errdetail("COPY FROM, which flushes the buffer, does not apply row-level security policies.")));
	return rel;
}

/*
 * buffer_for returns this transaction's buffer for relid, creating it.
 */
static TableBuffer *
buffer_for(Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	TableBuffer *buf;
	bool		found;

	if (buffers == NULL)
	{
		HASHCTL		ctl;

		buffer_context = AllocSetContextCreate(TopTransactionContext,
											   "write_scaling buffered rows",
											   ALLOCSET_DEFAULT_SIZES);
		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(TableBuffer);
		ctl.hcxt = buffer_context;
		buffers = hash_create("write_scaling buffers", 8, &ctl,
							  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	buf = hash_search(buffers, &relid, HASH_ENTER, &found);
	if (!found)
	{
		char		kind = rel->rd_rel->relkind;

		memset(&buf->pending, 0, sizeof(RowArray));
		memset(&buf->journal, 0, sizeof(RowArray));
		buf->rowtype = rel->rd_rel->reltype;
		buf->bytes = 0;
		buf->layout = NULL;
		buf->layout_generation = 0;
		buf->locked_in = InvalidSubTransactionId;
		buf->checked_user = InvalidOid;

		/*
		 * Rows for a foreign table, or a partitioned one (its partitions
		 * may be foreign), go at the end of each statement, not at commit:
		 * their wrapper may have committed by the time our flush runs.
		 */
		buf->each_statement = kind == RELKIND_FOREIGN_TABLE || kind == RELKIND_PARTITIONED_TABLE;

		/*
		 * Rows of a distributed table flushed at commit must reach the
		 * shards before postgres_fdw commits its remote transactions: open
		 * its connections now, and put our callback in front of its.  Too
		 * late once the commit's flush runs (a trigger of it buffering
		 * here): callbacks cannot be moved while they run.
		 */
		if (kind == RELKIND_VIEW && ws_shard_is_distributed(rel))
		{
			if (flushing_at_commit)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot buffer rows for distributed table \"%s\" while the commit flushes buffered rows",
								RelationGetRelationName(rel)),
						 errhint("Buffer rows for it before the commit, or insert them directly.")));
			ws_shard_open_connections(rel);
			ws_bulk_get_ahead_of_fdw();
		}
	}
	return buf;
}

/*
 * check_row_type refuses a row whose type is not the table's row type.
 */
static void
check_row_type(Relation rel, Oid type)
{
	if (type != rel->rd_rel->reltype)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("row of type %s does not match table \"%s\"",
						format_type_be(type), RelationGetRelationName(rel)),
				 errhint("Pass a value of the table's row type, for example ROW(...)::%s.",
						 format_type_be(rel->rd_rel->reltype))));
}

typedef enum LayoutChange
{
	LAYOUT_SAME,				/* dropped columns aside */
	LAYOUT_COLUMNS_ADDED,
	LAYOUT_CHANGED
} LayoutChange;

/*
 * layout_change compares the columns rows were buffered with (then) to the
 * table's columns now.  A dropped column keeps its storage, so its values
 * in old rows are harmless.
 */
static LayoutChange
layout_change(TupleDesc then, TupleDesc now)
{
	if (now->natts < then->natts)
		return LAYOUT_CHANGED;
	for (int i = 0; i < then->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(then, i);
		Form_pg_attribute b = TupleDescAttr(now, i);

		if (a->attlen != b->attlen || a->attalign != b->attalign ||
			a->attbyval != b->attbyval)
			return LAYOUT_CHANGED;
		if (!b->attisdropped &&
			(a->attisdropped || a->atttypid != b->atttypid ||
			 a->atttypmod != b->atttypmod))
			return LAYOUT_CHANGED;
	}
	return now->natts > then->natts ? LAYOUT_COLUMNS_ADDED : LAYOUT_SAME;
}

static bool
same_layout(TupleDesc a, TupleDesc b)
{
	if (a->natts != b->natts)
		return false;
	for (int i = 0; i < a->natts; i++)
	{
		Form_pg_attribute x = TupleDescAttr(a, i);
		Form_pg_attribute y = TupleDescAttr(b, i);

		if (x->atttypid != y->atttypid || x->atttypmod != y->atttypmod ||
			x->attisdropped != y->attisdropped || x->attlen != y->attlen ||
			x->attalign != y->attalign || x->attbyval != y->attbyval)
			return false;
	}
	return true;
}

/*
 * note_layout makes buf->layout the table's columns as they are now, after
 * a relation cache invalidation (ALTER TABLE among others).  Each row keeps
 * the layout it was buffered with, which a flush checks (layout_change).
 */
static void
note_layout(TableBuffer *buf)
{
	Relation	rel = table_open(buf->relid, NoLock);

	buf->layout_generation = layout_generation;
	if (buf->layout == NULL || !same_layout(buf->layout, RelationGetDescr(rel)))
	{
		MemoryContext old = MemoryContextSwitchTo(buffer_context);

		/* Rows keep pointing at the old one: it stays. */
		buf->layout = CreateTupleDescCopy(RelationGetDescr(rel));
		MemoryContextSwitchTo(old);
	}
	table_close(rel, NoLock);
}

static void
add_row(TableBuffer *buf, HeapTupleHeader td)
{
	HeapTupleData tmp;
	BufferedRow row;

	if (buf->layout_generation != layout_generation || buf->layout == NULL)
		note_layout(buf);
	tmp.t_len = HeapTupleHeaderGetDatumLength(td);
	ItemPointerSetInvalid(&tmp.t_self);
	tmp.t_tableOid = InvalidOid;
	tmp.t_data = td;
	row.tuple = MemoryContextAllocHuge(buffer_context, HEAPTUPLESIZE + tmp.t_len);
	row.tuple->t_len = tmp.t_len;
	row.tuple->t_self = tmp.t_self;
	row.tuple->t_tableOid = InvalidOid;
	row.tuple->t_data = (HeapTupleHeader) ((char *) row.tuple + HEAPTUPLESIZE);
	memcpy(row.tuple->t_data, td, tmp.t_len);
	row.layout = buf->layout;
	row.origin = GetCurrentSubTransactionId();
	row.flushed_in = InvalidSubTransactionId;
	push_row(&buf->pending, row);
	buf->bytes += tmp.t_len;
	used_buffered_path = true;
	count(&bulk_stats->rows_buffered, 1);
}

static int
copy_source(void *outbuf, int minread, int maxread)
{
	int			n = Min(maxread, copy_data->len - copy_data->cursor);

	memcpy(outbuf, copy_data->data + copy_data->cursor, n);
	copy_data->cursor += n;
	return n;
}

/*
 * serialise_rows writes rows in COPY's binary format, with the table's
 * current columns (the table may have changed since the rows were
 * buffered; the row type changes with it).  Called in a short-lived memory
 * context.
 */
static void
serialise_rows(Relation rel, RowArray *rows, StringInfo out)
{
	TupleDesc	desc = RelationGetDescr(rel);
	Datum	   *values = palloc(desc->natts * sizeof(Datum));
	bool	   *nulls = palloc(desc->natts * sizeof(bool));
	FmgrInfo   *send = palloc0(desc->natts * sizeof(FmgrInfo));
	int16		ncolumns = 0;
	static const char signature[11] = "PGCOPY\n\377\r\n\0";

	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		Oid			func;
		bool		isvarlena;

		if (att->attisdropped || att->attgenerated)
			continue;
		getTypeBinaryOutputInfo(att->atttypid, &func, &isvarlena);
		fmgr_info(func, &send[i]);
	}
	for (int i = 0; i < desc->natts; i++)
		if (!TupleDescAttr(desc, i)->attisdropped && !TupleDescAttr(desc, i)->attgenerated)
			ncolumns++;

	appendBinaryStringInfo(out, signature, sizeof(signature));
	pq_sendint32(out, 0);		/* flags */
	pq_sendint32(out, 0);		/* header extension length */
	for (int r = 0; r < rows->count; r++)
	{
		heap_deform_tuple(rows->rows[r].tuple, desc, values, nulls);
		pq_sendint16(out, ncolumns);
		for (int i = 0; i < desc->natts; i++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, i);
			bytea	   *bytes;

			if (att->attisdropped || att->attgenerated)
				continue;
			if (nulls[i])
			{
				pq_sendint32(out, -1);
				continue;
			}
			bytes = SendFunctionCall(&send[i], values[i]);
			pq_sendint32(out, VARSIZE(bytes) - VARHDRSZ);
			appendBinaryStringInfo(out, VARDATA(bytes), VARSIZE(bytes) - VARHDRSZ);
			pfree(bytes);
		}
	}
	pq_sendint16(out, -1);		/* trailer */
}

static void
flush_error_context(void *arg)
{
	errcontext("flushing rows buffered by ws.buffered_insert into \"%s\"",
			   (const char *) arg);
}

/*
 * flush_buffer writes the buffer's pending rows through COPY FROM and
 * returns how many it wrote.  Outer-level rows go to the journal (see the
 * file header).
 */
static uint64
flush_buffer(TableBuffer *buf)
{
	MemoryContext context;
	MemoryContext old;
	Relation	rel;
	ParseState *pstate;
	CopyFromState cstate;
	StringInfoData data;
	StringInfo	saved_data = copy_data;
	ErrorContextCallback errcallback;
	SubTransactionId current = GetCurrentSubTransactionId();
	bool		pushed_snapshot = false;
	RowArray	rows = buf->pending;
	uint64		written;
	volatile int client_encoding = -1;
	LayoutChange change;
	bool		direct;
	struct QueryDesc *volatile outer_query = ws_running_query();

	if (rows.count == 0)
		return 0;
	/* SET TRANSACTION READ ONLY may have come after the rows. */
	PreventCommandIfReadOnly("ws.flush()");

	context = AllocSetContextCreate(CurrentMemoryContext, "write_scaling flush",
									ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(context);

	rel = try_table_open(buf->relid, RowExclusiveLock);
	if (rel == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table with OID %u, which has buffered rows, was dropped", buf->relid)));
	change = LAYOUT_SAME;
	for (int r = 0, checked = -1; r < rows.count; r++)
	{
		LayoutChange row_change;

		if (checked >= 0 && rows.rows[r].layout == rows.rows[checked].layout)
			continue;
		checked = r;
		row_change = layout_change(rows.rows[r].layout, RelationGetDescr(rel));
		if (row_change == LAYOUT_CHANGED)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("table \"%s\" changed while rows for it were buffered",
							RelationGetRelationName(rel)),
					 errdetail("A column's type changed after rows were buffered with its old type."),
					 errhint("Call ws.flush() before altering a table that has buffered rows.")));
		change = Max(change, row_change);
	}
	direct = change == LAYOUT_SAME && ws_bulk_direct_applies(rel);

	if (!ActiveSnapshotSet())
	{
		PushActiveSnapshot(GetTransactionSnapshot());
		pushed_snapshot = true;
	}

	errcallback.callback = flush_error_context;
	errcallback.arg = pstrdup(RelationGetRelationName(rel));
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;

	/*
	 * Detach the rows: a trigger fired by this COPY may buffer new rows for
	 * this very table, and they must stay pending.
	 */
	memset(&buf->pending, 0, sizeof(RowArray));
	buf->bytes = 0;
	PG_TRY();
	{
		if (direct)
		{
			HeapTuple  *tuples = palloc(rows.count * sizeof(HeapTuple));

			for (int r = 0; r < rows.count; r++)
				tuples[r] = rows.rows[r].tuple;
			written = ws_bulk_insert_direct(rel, tuples, rows.count);
		}
		else
		{
			/*
			 * Send and receive functions in the database's encoding (see
			 * send_encoding.h); triggers fired by this COPY see it as the
			 * client encoding too.
			 */
			client_encoding = ws_enter_database_encoding();
			initStringInfo(&data);
			serialise_rows(rel, &rows, &data);
			copy_data = &data;
			pstate = make_parsestate(NULL);
			(void) addRangeTableEntryForRelation(pstate, rel, RowExclusiveLock,
												 NULL, false, false);
			cstate = BeginCopyFrom(pstate, rel, NULL, NULL, false, copy_source, NIL,
								   list_make1(makeDefElem("format", (Node *) makeString("binary"), -1)));
			/* Its triggers fire for this COPY, not for the query calling us. */
			outer_query = ws_running_query_swap(NULL);
			written = CopyFrom(cstate);
			(void) ws_running_query_swap(outer_query);
			EndCopyFrom(cstate);
		}
	}
	PG_CATCH();
	{
		RowArray	later = buf->pending;

		/*
		 * Put the rows back, in front of any buffered meanwhile: if a
		 * savepoint catches this error, the rows buffered outside it must
		 * still be written (or fail) at commit.
		 */
		copy_data = saved_data;
		ws_leave_database_encoding(client_encoding);
		(void) ws_running_query_swap(outer_query);
		buf->pending = rows;
		buf->bytes = 0;
		for (int r = 0; r < later.count; r++)
			push_row(&buf->pending, later.rows[r]);
		for (int r = 0; r < buf->pending.count; r++)
			buf->bytes += buf->pending.rows[r].tuple->t_len;
		PG_RE_THROW();
	}
	PG_END_TRY();
	copy_data = saved_data;
	ws_leave_database_encoding(client_encoding);

	error_context_stack = errcallback.previous;
	if (pushed_snapshot)
		PopActiveSnapshot();
	CommandCounterIncrement();
	table_close(rel, NoLock);

	MemoryContextSwitchTo(old);
	MemoryContextDelete(context);

	for (int r = 0; r < rows.count; r++)
	{
		BufferedRow row = rows.rows[r];

		if (row.origin != current)
		{
			row.flushed_in = current;
			push_row(&buf->journal, row);
		}
		else
			pfree(row.tuple);
	}
	if (rows.rows != NULL)
		pfree(rows.rows);

	count(&bulk_stats->flushes, 1);
	count(&bulk_stats->rows_flushed, written);
	return written;
}

/*
 * ws_bulk_get_ahead_of_fdw registers our commit callback again, in front of
 * postgres_fdw's, which must be registered already; not while callbacks
 * run.
 */
void
ws_bulk_get_ahead_of_fdw(void)
{
	if (flushing_at_commit || ahead_of_fdw)
		return;
	UnregisterXactCallback(bulk_xact_callback, NULL);
	RegisterXactCallback(bulk_xact_callback, NULL);
	ahead_of_fdw = true;
}

/*
 * ws_bulk_check_fdw_use refuses a use of postgres_fdw by the commit's flush
 * when postgres_fdw may have committed already: an error then is a clean
 * abort, where a remote transaction begun after postgres_fdw's commit would
 * end in a PANIC.
 */
bool
ws_bulk_flushing_at_commit(void)
{
	return flushing_at_commit;
}

void
ws_bulk_check_fdw_use(void)
{
	if (flushing_at_commit && !ahead_of_fdw)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot use postgres_fdw while the commit flushes buffered rows"),
				 errdetail("postgres_fdw may have committed its remote transactions already."),
				 errhint("Call ws.flush() before the commit.")));
}

/*
 * ws_bulk_end_of_statement flushes the buffers that go at the end of each
 * top-level statement (each_statement).
 */
void
ws_bulk_end_of_statement(void)
{
	HASH_SEQ_STATUS status;
	TableBuffer *buf;

	if (buffers == NULL)
		return;
	hash_seq_init(&status, buffers);
	while ((buf = hash_seq_search(&status)) != NULL)
		if (buf->each_statement)
			(void) flush_buffer(buf);
}

/*
 * ws_bulk_has_rows tells whether this transaction has buffered rows waiting
 * for a flush.
 */
bool
ws_bulk_has_rows(void)
{
	HASH_SEQ_STATUS status;
	TableBuffer *buf;
	bool		any = false;

	if (buffers == NULL)
		return false;
	hash_seq_init(&status, buffers);
	while ((buf = hash_seq_search(&status)) != NULL)
		any |= buf->pending.count > 0;
	return any;
}

static bool
buffer_full(TableBuffer *buf)
{
	return buf->pending.count >= ws_batch_rows ||
		buf->bytes >= (Size) ws_batch_bytes * 1024;
}

/*
 * flush_all flushes every buffer of this transaction; returns rows written.
 */
static uint64
flush_all(void)
{
	HASH_SEQ_STATUS status;
	TableBuffer *buf;
	uint64		written = 0;

	if (buffers == NULL)
		return 0;
	hash_seq_init(&status, buffers);
	while ((buf = hash_seq_search(&status)) != NULL)
		written += flush_buffer(buf);
	return written;
}

/*
 * require_args refuses a null target table or a null second argument, which
 * the user knows as "what".
 */
static void
require_args(FunctionCallInfo fcinfo, const char *what)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("target table must not be null")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", what),
				 errhint("Pass values of the table's row type; columns inside them may be null.")));
}

/*
 * ws.buffered_insert(target regclass, row anyelement) adds row to this
 * transaction's buffer for target; returns how many rows of target are
 * buffered now (0 after a flush).  Returning a value lets PL/pgSQL call it
 * as a simple expression (n := ws.buffered_insert(...)), which costs far
 * less than PERFORM's full query.
 */
Datum
write_scaling_buffered_insert(PG_FUNCTION_ARGS)
{
	Relation	rel;
	TableBuffer *buf;
	Oid			relid;
	Oid			user;
	int			context;

	require_args(fcinfo, "row");
	/* A row waiting to go to a shard at commit goes now (shard_defer.c). */
	ws_defer_flush();
	ws_defer_note_fdw_use();

	/*
	 * After this transaction's first call for the table, which checked
	 * everything, a call checks the row type, takes the lock unless this
	 * subtransaction holds it (a rolled-back savepoint releases it), and
	 * checks the privileges again when the user, the security context
	 * (a SECURITY DEFINER function may have made the first call) or the
	 * catalogs they rest on changed.
	 */
	relid = PG_GETARG_OID(0);
	GetUserIdAndSecContext(&user, &context);
	buf = buffers ? hash_search(buffers, &relid, HASH_FIND, NULL) : NULL;
	if (buf == NULL)
	{
		PreventCommandIfReadOnly("ws.buffered_insert()");
		rel = open_target(relid);
		check_row_type(rel, get_fn_expr_argtype(fcinfo->flinfo, 1));
		buf = buffer_for(rel);
		table_close(rel, NoLock);
	}
	else
	{
		if (buf->locked_in != GetCurrentSubTransactionId())
			LockRelationOid(relid, RowExclusiveLock);
		if (get_fn_expr_argtype(fcinfo->flinfo, 1) != buf->rowtype)
		{
			rel = table_open(relid, NoLock);
			check_row_type(rel, get_fn_expr_argtype(fcinfo->flinfo, 1));
		}
		if (user != buf->checked_user || context != buf->checked_context ||
			privilege_generation != buf->checked_generation)
		{
			if (pg_class_aclcheck(relid, user, ACL_INSERT) != ACLCHECK_OK)
				aclcheck_error(ACLCHECK_NO_PRIV, OBJECT_TABLE, get_rel_name(relid));
			if (check_enable_rls(relid, InvalidOid, false) == RLS_ENABLED)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot buffer rows for table \"%s\" with row-level security",
								get_rel_name(relid))));
		}
	}
	buf->locked_in = GetCurrentSubTransactionId();
	buf->checked_user = user;
	buf->checked_context = context;
	buf->checked_generation = privilege_generation;
	add_row(buf, PG_GETARG_HEAPTUPLEHEADER(1));

	if (buffer_full(buf))
		flush_buffer(buf);
	PG_RETURN_INT64(buf->pending.count);
}

/*
 * ws.flush(target regclass default null) writes the buffered rows of target,
 * or of every table; returns how many rows it wrote.
 */
Datum
write_scaling_flush(PG_FUNCTION_ARGS)
{
	TableBuffer *buf;
	Oid			relid;

	if (PG_ARGISNULL(0))
		PG_RETURN_INT64((int64) flush_all());
	if (buffers == NULL)
		PG_RETURN_INT64(0);
	relid = PG_GETARG_OID(0);
	buf = hash_search(buffers, &relid, HASH_FIND, NULL);
	PG_RETURN_INT64(buf == NULL ? 0 : (int64) flush_buffer(buf));
}

/*
 * ws.copy_rows(target regclass, rows anyarray) writes an array of rows through
 * the buffered path and flushes it; returns how many rows it loaded.
 */
Datum
write_scaling_copy_rows(PG_FUNCTION_ARGS)
{
	Relation	rel;
	TableBuffer *buf;
	ArrayType  *array;
	Datum	   *elems;
	bool	   *elem_nulls;
	int			nelems;
	int16		typlen;
	bool		typbyval;
	char		typalign;

	require_args(fcinfo, "rows");
	PreventCommandIfReadOnly("ws.copy_rows()");
	ws_defer_flush();
	ws_defer_note_fdw_use();

	rel = open_target(PG_GETARG_OID(0));
	array = PG_GETARG_ARRAYTYPE_P(1);
	check_row_type(rel, ARR_ELEMTYPE(array));
	get_typlenbyvalalign(ARR_ELEMTYPE(array), &typlen, &typbyval, &typalign);
	deconstruct_array(array, ARR_ELEMTYPE(array), typlen, typbyval, typalign,
					  &elems, &elem_nulls, &nelems);
	for (int i = 0; i < nelems; i++)
		if (elem_nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("element %d of rows is null", i + 1)));

	buf = buffer_for(rel);
	for (int i = 0; i < nelems; i++)
	{
		add_row(buf, DatumGetHeapTupleHeader(elems[i]));
		if (buffer_full(buf))
			flush_buffer(buf);
	}
	flush_buffer(buf);
	table_close(rel, NoLock);
	PG_RETURN_INT64(nelems);
}

/*
 * ws._bulk_stats() returns the buffered path's counters since server start.
 */
Datum
write_scaling_bulk_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};

	InitMaterializedSRF(fcinfo, 0);
	if (bulk_stats == NULL)
		return (Datum) 0;
	values[0] = Int64GetDatum((int64) pg_atomic_read_u64(&bulk_stats->rows_buffered));
	values[1] = Int64GetDatum((int64) pg_atomic_read_u64(&bulk_stats->flushes));
	values[2] = Int64GetDatum((int64) pg_atomic_read_u64(&bulk_stats->rows_flushed));
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	return (Datum) 0;
}

static void
bulk_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:

			/*
			 * Triggers fired by a flush, deferred ones included, may buffer
			 * more rows: flush until nothing is left.
			 */
			flushing_at_commit = true;
			for (int round = 0; flush_all() > 0; round++)
			{
				AfterTriggerFireDeferred();
				if (round >= 100)
					ereport(ERROR,
							(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
							 errmsg("buffered rows kept buffering more rows at commit"),
							 errdetail("Triggers of the flushed tables buffered new rows 100 times in a row.")));
			}
			flushing_at_commit = false;
			if (used_buffered_path && ws_buffered_async_commit &&
				!ws_frontier_appended_in_xact())
				(void) set_config_option("synchronous_commit", "off",
										 PGC_USERSET, PGC_S_SESSION,
										 GUC_ACTION_LOCAL, true, 0, false);
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PARALLEL_ABORT:
			/* The memory goes with TopTransactionContext. */
			buffers = NULL;
			buffer_context = NULL;
			used_buffered_path = false;
			flushing_at_commit = false;
			copy_data = NULL;
			break;
		default:
			break;
	}
}

static void
bulk_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					  SubTransactionId parentSubid, void *arg)
{
	HASH_SEQ_STATUS status;
	TableBuffer *buf;

	if (buffers == NULL ||
		(event != SUBXACT_EVENT_ABORT_SUB && event != SUBXACT_EVENT_COMMIT_SUB))
		return;

	hash_seq_init(&status, buffers);
	while ((buf = hash_seq_search(&status)) != NULL)
	{
		int			kept = 0;

		if (event == SUBXACT_EVENT_COMMIT_SUB)
		{
			for (int r = 0; r < buf->pending.count; r++)
				if (buf->pending.rows[r].origin == mySubid)
					buf->pending.rows[r].origin = parentSubid;
			for (int r = 0; r < buf->journal.count; r++)
			{
				BufferedRow *row = &buf->journal.rows[r];

				if (row->flushed_in == mySubid)
					row->flushed_in = parentSubid;
				/* Written at its own level now: nothing to undo any more. */
				if (row->flushed_in != row->origin)
					buf->journal.rows[kept++] = *row;
			}
			buf->journal.count = kept;
			continue;
		}

		/* Rolled back: its own rows vanish ... */
		for (int r = 0; r < buf->pending.count; r++)
		{
			if (buf->pending.rows[r].origin != mySubid)
				buf->pending.rows[kept++] = buf->pending.rows[r];
			else
				buf->bytes -= buf->pending.rows[r].tuple->t_len;
		}
		buf->pending.count = kept;

		/* ... and outer rows it wrote are pending again. */
		kept = 0;
		for (int r = 0; r < buf->journal.count; r++)
		{
			BufferedRow row = buf->journal.rows[r];

			if (row.flushed_in == mySubid)
			{
				row.flushed_in = InvalidSubTransactionId;
				push_row(&buf->pending, row);
				buf->bytes += row.tuple->t_len;
			}
			else
				buf->journal.rows[kept++] = row;
		}
		buf->journal.count = kept;
	}
}

/*
 * ws_bulk_register_callbacks hooks the buffers into transaction end.
 */
static void
privileges_changed(Datum arg, int cacheid, uint32 hashvalue)
{
	privilege_generation++;
}

static void
layout_may_have_changed(Datum arg, Oid relid)
{
	layout_generation++;
}

void
ws_bulk_register_callbacks(void)
{
	RegisterXactCallback(bulk_xact_callback, NULL);
	RegisterSubXactCallback(bulk_subxact_callback, NULL);
	CacheRegisterSyscacheCallback(RELOID, privileges_changed, (Datum) 0);
	CacheRegisterSyscacheCallback(AUTHOID, privileges_changed, (Datum) 0);
	CacheRegisterSyscacheCallback(AUTHMEMROLEMEM, privileges_changed, (Datum) 0);
	CacheRegisterRelcacheCallback(layout_may_have_changed, (Datum) 0);
}

/*-------------------------------------------------------------------------
 *
 * bulk_direct.c
 *	  The buffered path's direct flush: rows buffered for a plain table
 *	  without triggers go to table_multi_insert as they are, with the
 *	  checks and index entries COPY FROM would make.
 *
 *	  A buffered row is already a tuple of the table's row type, so sending
 *	  every column through its send and receive functions, as a flush
 *	  through COPY's binary format does, is work for nothing.  Only where
 *	  COPY does nothing more than check constraints, insert in batches and
 *	  add index entries do we take its place: a table with triggers
 *	  (foreign keys and deferrable constraints included), stored generated
 *	  columns, a column whose type involves a domain, or an access method
 *	  other than heap, and a partitioned or foreign table, keep COPY
 *	  (bulk.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/sysattr.h"
#include "access/tableam.h"
#include "catalog/pg_am.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/typcache.h"

#include "bulk.h"

/* As COPY: at most this many rows, or about this many bytes, per batch. */
#define DIRECT_BATCH_ROWS 1000
#define DIRECT_BATCH_BYTES 65535

typedef struct DirectProgress
{
	int			row;			/* 1-based; 0 while no single row is at work */
	int			count;
} DirectProgress;

static void
direct_error_context(void *arg)
{
	DirectProgress *progress = arg;

	if (progress->row > 0)
		errcontext("buffered row %d of %d", progress->row, progress->count);
}

/*
 * involves_domain tells whether values of type may hold a domain's values:
 * the type itself, an array's elements, a row's fields, a range's bounds.
 * COPY's receive functions check such domains' constraints again (one may
 * have gained a constraint since the row was buffered); a stored value
 * would skip the check.
 */
static bool
involves_domain(Oid type)
{
	char		typtype = get_typtype(type);
	Oid			element = get_element_type(type);

	check_stack_depth();
	if (typtype == TYPTYPE_DOMAIN)
		return true;
	if (OidIsValid(element))
		return involves_domain(element);
	if (typtype == TYPTYPE_RANGE)
		return involves_domain(get_range_subtype(type));
	if (typtype == TYPTYPE_MULTIRANGE)
		return involves_domain(get_multirange_range(type));
	if (typtype == TYPTYPE_COMPOSITE)
	{
		TupleDesc	desc = lookup_rowtype_tupdesc(type, -1);
		bool		found = false;

		for (int i = 0; i < desc->natts && !found; i++)
			found = !TupleDescAttr(desc, i)->attisdropped &&
				involves_domain(TupleDescAttr(desc, i)->atttypid);
		ReleaseTupleDesc(desc);
		return found;
	}
	return false;
}

/*
 * ws_bulk_direct_applies tells whether rows for rel may skip COPY: a plain
 * heap table whose inserts fire nothing and whose columns need no checks
 * beyond its constraints.
 */
bool
ws_bulk_direct_applies(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);

	if (rel->rd_rel->relkind != RELKIND_RELATION || rel->trigdesc != NULL ||
		rel->rd_rel->relam != HEAP_TABLE_AM_OID)
		return false;
	if (desc->constr != NULL && desc->constr->has_generated_stored)
		return false;
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (!att->attisdropped && involves_domain(att->atttypid))
			return false;
	}
	return true;
}

/*
 * ws_bulk_insert_direct writes tuples, each a full row of rel's current row
 * type, into rel (locked by the caller) and returns how many it wrote.  Runs
 * in a memory context of the caller's that is thrown away afterwards.
 */
uint64
ws_bulk_insert_direct(Relation rel, HeapTuple *tuples, int ntuples)
{
	EState	   *estate = CreateExecutorState();
	RangeTblEntry *rte = makeNode(RangeTblEntry);
	ResultRelInfo *result = makeNode(ResultRelInfo);
	/*
	 * A copy, not reference-counted: its slots need no resource owner.  With
	 * the defaults, so that a slot reads what the table would.
	 */
	TupleDesc	desc = CreateTupleDescCopyConstr(RelationGetDescr(rel));
	TupleTableSlot *slots[DIRECT_BATCH_ROWS] = {0};
	bool		check_constraints = RelationGetDescr(rel)->constr != NULL;
	bool		is_partition = rel->rd_rel->relispartition;
	CommandId	cid = GetCurrentCommandId(true);
	BulkInsertState bistate;
	DirectProgress progress = {0, ntuples};
	ErrorContextCallback errcallback;

	/* The columns a failing row's description may show, as for COPY. */
	rte->rtekind = RTE_RELATION;
	rte->relid = RelationGetRelid(rel);
	rte->relkind = rel->rd_rel->relkind;
	rte->rellockmode = RowExclusiveLock;
	rte->requiredPerms = ACL_INSERT;
	for (int i = 0; i < desc->natts; i++)
		if (!TupleDescAttr(desc, i)->attisdropped)
			rte->insertedCols = bms_add_member(rte->insertedCols,
											   i + 1 - FirstLowInvalidHeapAttributeNumber);
	ExecInitRangeTable(estate, list_make1(rte));
	ExecInitResultRelation(estate, result, 1);
	CheckValidResultRel(result, CMD_INSERT);
	ExecOpenIndices(result, false);
	bistate = GetBulkInsertState();

	errcallback.callback = direct_error_context;
	errcallback.arg = &progress;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;

	for (int start = 0, end; start < ntuples; start = end)
	{
		Size		bytes = 0;
		int			n = 0;
		MemoryContext old;

		for (end = start; end < ntuples && n < DIRECT_BATCH_ROWS &&
			 bytes < DIRECT_BATCH_BYTES; end++, n++)
		{
			if (slots[n] == NULL)
				slots[n] = MakeSingleTupleTableSlot(desc, &TTSOpsHeapTuple);
			/*
			 * The slot borrows the buffered tuple, marked as its own so that
			 * heap_multi_insert writes it without a copy (the header it sets
			 * is set again by any later write of the row); given back before
			 * the slot is cleared.
			 */
			ExecStoreHeapTuple(tuples[end], slots[n], true);
			/* CHECK constraints may read tableoid. */
			slots[n]->tts_tableOid = RelationGetRelid(rel);
			progress.row = end + 1;
			if (check_constraints)
				ExecConstraints(result, slots[n], estate);
			if (is_partition)
				ExecPartitionCheck(result, slots[n], estate, true);
			bytes += tuples[end]->t_len;
			ResetPerTupleExprContext(estate);
		}

		/* table_multi_insert and the index entries may leak, as CopyFrom notes. */
		progress.row = 0;
		old = MemoryContextSwitchTo(GetPerTupleMemoryContext(estate));
		table_multi_insert(rel, slots, n, cid, 0, bistate);
		for (int i = 0; i < n; i++)
		{
			progress.row = start + i + 1;
			if (result->ri_NumIndices > 0)
				(void) ExecInsertIndexTuples(result, slots[i], estate,
											 false, false, NULL, NIL);
			slots[i]->tts_flags &= ~TTS_FLAG_SHOULDFREE;
			ExecClearTuple(slots[i]);
			ResetPerTupleExprContext(estate);
		}
		MemoryContextSwitchTo(old);
	}
	error_context_stack = errcallback.previous;

	FreeBulkInsertState(bistate);
	table_finish_bulk_insert(rel, 0);
	for (int i = 0; i < DIRECT_BATCH_ROWS && slots[i] != NULL; i++)
		ExecDropSingleTupleTableSlot(slots[i]);
	ExecCloseResultRelations(estate);
	ExecCloseRangeTableRelations(estate);
	FreeExecutorState(estate);
	return ntuples;
}

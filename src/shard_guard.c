/*-------------------------------------------------------------------------
 *
 * shard_guard.c
 *	  Statements a distributed table refuses: before they are planned, and
 *	  when they start, those that would miss the rows of a slot moved
 *	  under their transaction.
 *
 * An UPDATE must not change the shard key.  A row lives in the slot of its
 * key; postgres_fdw updates a row of a foreign partition in place, and a
 * foreign table's partition constraint is not checked, so an UPDATE that
 * changed the key would leave the row in its old slot: reads by the new key
 * would miss it, and a second row with that key would go unnoticed.
 * Moving it would take a delete on one shard and an insert on another;
 * like Citus, we refuse such an UPDATE, whether it names the distributed
 * table (the view, rewritten into an UPDATE of ws_dist.<table>) or the
 * tables in ws_dist.  SET key = key changes nothing and passes.
 *
 * INSERT ... ON CONFLICT goes to the shards with its clause, which the hook
 * takes off the query before PostgreSQL plans it (shard_upsert.c); such an
 * INSERT must be its statement's only INSERT into the table, since the
 * view's trigger cannot tell which of them a row comes from.  After
 * planning, an UPDATE or DELETE of one slot gets the node of
 * shard_modify.c.
 *
 * A slot that moved while a transaction was using the shards
 *	  postgres_fdw's remote transactions are REPEATABLE READ: a transaction
 *	  that began one on a server before ws.rebalance moved a slot there
 *	  does not see the slot's rows, and its UPDATE or DELETE of them would
 *	  find nothing to change, silently.  So what the snapshot of a
 *	  transaction's first statement saw is kept (ws_shard_note_use), and an
 *	  UPDATE, DELETE or row-locking read that reaches a slot whose foreign
 *	  table that snapshot does not see (a move makes a new one: its
 *	  pg_foreign_table row, which ALTER TABLE leaves alone, is new) fails
 *	  with a serialization failure instead.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/parallel.h"
#include "access/relation.h"
#include "access/subtrans.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_class.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_partitioned_table.h"
#include "commands/extension.h"
#include "executor/executor.h"
#include "nodes/parsenodes.h"
#include "nodes/plannodes.h"
#include "optimizer/planner.h"
#include "parser/parsetree.h"
#include "storage/proc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "shard.h"

static planner_hook_type prev_planner = NULL;
static ExecutorStart_hook_type prev_executor_start = NULL;

/*
 * What the snapshot of the transaction's first statement that used the
 * shards saw: enough to tell whether a transaction had committed then.  A
 * copy of the numbers, in TopTransactionContext, not a registered snapshot,
 * which would hold back vacuum for as long as the transaction lasts.
 */
typedef struct FirstUse
{
	TransactionId xmin;			/* every transaction below had ended */
	TransactionId xmax;			/* none from here on had */
	TransactionId *xids;		/* those in progress: xcnt top-level, then
								 * subxcnt subtransactions */
	int			xcnt;
	int			subxcnt;
	bool		overflowed;		/* subtransactions are not listed */
} FirstUse;

static FirstUse *first_use = NULL;

/* The extension's schema ws_dist, looked up again when schemas change. */
static Oid	ws_dist_namespace = InvalidOid;
static bool ws_dist_known = false;
static uint64 namespace_changes = 0;

static void
namespaces_changed(Datum arg, int cacheid, uint32 hashvalue)
{
	ws_dist_known = false;
	namespace_changes++;
}

/*
 * ws_dist_oid returns the OID of write_scaling's schema ws_dist, or
 * InvalidOid if the extension is not installed in this database (a schema
 * of that name that is not the extension's does not count).  Every
 * statement asks: the answer is kept.
 */
static Oid
ws_dist_oid(void)
{
	if (!ws_dist_known)
	{
		uint64		changes = namespace_changes;
		Oid			nsp = get_namespace_oid("ws_dist", true);
		Oid			extension = get_extension_oid("write_scaling", true);

		ws_dist_namespace = OidIsValid(nsp) && OidIsValid(extension) &&
			getExtensionOfObject(NamespaceRelationId, nsp) == extension ? nsp : InvalidOid;
		/* Unless schemas changed during the lookups (or they failed). */
		ws_dist_known = changes == namespace_changes;
	}
	return ws_dist_namespace;
}

/* in_ws_dist tells whether a relation lives in ws_dist. */
static bool
in_ws_dist(Oid relid)
{
	Oid			nsp = ws_dist_oid();

	return OidIsValid(nsp) && get_rel_namespace(relid) == nsp;
}

/*
 * ws_shard_is_slot_table tells whether relid is a slot's foreign table: a
 * foreign partition of a partitioned table in ws_dist.
 */
bool
ws_shard_is_slot_table(Oid relid)
{
	return get_rel_relkind(relid) == RELKIND_FOREIGN_TABLE && get_rel_relispartition(relid) &&
		in_ws_dist(get_partition_parent(relid, true));
}

/*
 * shard_key_of returns the attribute number of the shard key in relid, a
 * distributed table's partitioned table in ws_dist or one of its slots, or
 * InvalidAttrNumber.  Reads the catalogs only: no lock on the parent.
 */
static AttrNumber
shard_key_of(RangeTblEntry *target, char **table)
{
	Oid			root = target->relid;
	HeapTuple	tuple;
	AttrNumber	key;

	if (target->relkind == RELKIND_FOREIGN_TABLE && get_rel_relispartition(root))
		root = get_partition_parent(root, true);
	else if (target->relkind != RELKIND_PARTITIONED_TABLE)
		return InvalidAttrNumber;
	tuple = SearchSysCache1(PARTRELID, ObjectIdGetDatum(root));
	if (!HeapTupleIsValid(tuple))
		return InvalidAttrNumber;
	key = ((Form_pg_partitioned_table) GETSTRUCT(tuple))->partattrs.values[0];
	ReleaseSysCache(tuple);
	if (key == InvalidAttrNumber)
		return InvalidAttrNumber;
	*table = get_rel_name(root);
	if (root == target->relid)
		return key;
	return get_attnum(target->relid, get_attname(root, key, false));
}

/*
 * inserts_into counts the INSERTs into relid in a query and its WITH
 * clauses: the view's trigger cannot tell them apart.
 */
static int
inserts_into(Query *query, Oid relid)
{
	int			count = 0;
	ListCell   *lc;

	foreach(lc, query->cteList)
	{
		CommonTableExpr *cte = lfirst(lc);

		if (IsA(cte->ctequery, Query))
			count += inserts_into((Query *) cte->ctequery, relid);
	}
	if (query->commandType == CMD_INSERT && query->resultRelation != 0 &&
		rt_fetch(query->resultRelation, query->rtable)->relid == relid)
		count++;
	return count;
}

/*
 * check_query raises an error if query, or a query of its WITH clause,
 * updates a distributed table's shard key, and rewrites an INSERT ... ON
 * CONFLICT into a distributed table for the shards, adding to *functions
 * the functions of the user's the plan then depends on; top is the whole
 * statement.  Called on the rewritten query, before planning: an UPDATE of
 * the view is an UPDATE of ws_dist.<table> by then.
 */
static void
check_query(Query *query, Query *top, List **functions)
{
	ListCell   *lc;

	foreach(lc, query->cteList)
	{
		CommonTableExpr *cte = lfirst(lc);

		if (IsA(cte->ctequery, Query))
			check_query((Query *) cte->ctequery, top, functions);
	}
	if (query->resultRelation == 0)
		return;

	if (query->commandType == CMD_UPDATE)
	{
		RangeTblEntry *target = rt_fetch(query->resultRelation, query->rtable);
		char	   *table = NULL;
		AttrNumber	key;

		if (target->relkind != RELKIND_PARTITIONED_TABLE && target->relkind != RELKIND_FOREIGN_TABLE)
			return;
		if (!in_ws_dist(target->relid))
			return;
		key = shard_key_of(target, &table);
		if (key == InvalidAttrNumber)
			return;
		foreach(lc, query->targetList)
		{
			TargetEntry *entry = lfirst(lc);
			Var		   *var = (Var *) entry->expr;

			if (entry->resjunk || entry->resno != key)
				continue;
			/* SET key = key changes nothing: ORMs write every column. */
			if (IsA(var, Var) && var->varno == query->resultRelation &&
				var->varattno == key && var->varlevelsup == 0)
				continue;
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot update the shard key \"%s\" of distributed table \"%s\"",
							get_attname(target->relid, key, false), table),
					 errdetail("The key decides which shard holds a row, and an UPDATE leaves the row where it is."),
					 errhint("DELETE the row and INSERT it with its new key.")));
		}
	}
	else if (query->commandType == CMD_INSERT && query->onConflict != NULL)
	{
		RangeTblEntry *target = rt_fetch(query->resultRelation, query->rtable);
		Relation	view;

		if (target->relkind != RELKIND_VIEW)
			return;
		view = relation_open(target->relid, AccessShareLock);
		if (ws_shard_routes(view))
		{
			if (inserts_into(top, target->relid) > 1)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("INSERT ... ON CONFLICT into distributed table \"%s\" must be the statement's only INSERT into it",
								RelationGetRelationName(view)),
						 errdetail("The table's trigger cannot tell which INSERT of the statement a row comes from."),
						 errhint("Run the INSERTs as statements of their own.")));
			ws_upsert_plan(query, view, functions);
		}
		relation_close(view, AccessShareLock);
	}
}

static PlannedStmt *
guard_planner(Query *parse, const char *query_string, int cursorOptions,
			  ParamListInfo boundParams)
{
	List	   *functions = NIL;
	PlannedStmt *result;
	ListCell   *lc;

	ws_shard_note_use();
	check_query(parse, parse, &functions);
	if (prev_planner != NULL)
		result = prev_planner(parse, query_string, cursorOptions, boundParams);
	else
		result = standard_planner(parse, query_string, cursorOptions, boundParams);
	ws_shard_modify_plan(result);
	foreach(lc, functions)
	{
		PlanInvalItem *item = makeNode(PlanInvalItem);

		item->cacheId = PROCOID;
		item->hashValue = GetSysCacheHashValue1(PROCOID, ObjectIdGetDatum(lfirst_oid(lc)));
		result->invalItems = lappend(result->invalItems, item);
	}
	return result;
}

/* forget_first_use: the first use goes with TopTransactionContext. */
static void
forget_first_use(void *arg)
{
	first_use = NULL;
}

/*
 * ws_shard_note_use keeps what the active snapshot saw, as that of the
 * transaction's first use of the shards, unless the transaction has one.
 * Every statement calls it (when planned, at ExecutorStart, in the utility
 * hook), and so do our writes to the shards: a transaction's first
 * statement counts as its first use, whatever it reaches.  That covers the
 * ways into a remote transaction that a statement does not show (a foreign
 * partition found by routing, a connection made while planning), at the
 * cost of a serialization failure for a transaction that used no shard
 * before a slot moved.  In a database without the extension no slot can
 * move, and in recovery nothing writes: nothing is kept.
 */
void
ws_shard_note_use(void)
{
	Snapshot	snapshot;
	FirstUse   *use;
	MemoryContextCallback *forget;

	if (first_use != NULL || !ActiveSnapshotSet() || IsParallelWorker() ||
		RecoveryInProgress() || !OidIsValid(ws_dist_oid()))
		return;
	snapshot = GetActiveSnapshot();
	use = MemoryContextAlloc(TopTransactionContext, sizeof(FirstUse));
	use->xmin = snapshot->xmin;
	use->xmax = snapshot->xmax;
	use->xcnt = snapshot->xcnt;
	/* An overflowed snapshot's copy keeps no subxip (but its count). */
	use->subxcnt = snapshot->suboverflowed ? 0 : snapshot->subxcnt;
	use->overflowed = snapshot->suboverflowed;
	use->xids = MemoryContextAlloc(TopTransactionContext,
								   sizeof(TransactionId) * Max(use->xcnt + use->subxcnt, 1));
	if (use->xcnt > 0)
		memcpy(use->xids, snapshot->xip, sizeof(TransactionId) * use->xcnt);
	if (use->subxcnt > 0)
		memcpy(use->xids + use->xcnt, snapshot->subxip, sizeof(TransactionId) * use->subxcnt);
	forget = MemoryContextAlloc(TopTransactionContext, sizeof(MemoryContextCallback));
	forget->func = forget_first_use;
	forget->arg = NULL;
	MemoryContextRegisterResetCallback(TopTransactionContext, forget);
	first_use = use;
}

/*
 * committed_at_first_use tells whether xid, a transaction (or subtransaction)
 * that has committed by now, had committed when the first use's snapshot was
 * taken.  An overflowed snapshot lists no subtransactions: a subtransaction is
 * then looked up in pg_subtrans, as XidInMVCCSnapshot does, where pg_subtrans
 * surely still has it (from the xmin this backend holds now, its active
 * snapshot's); older, the answer is no: an error to retry rather than a write
 * that finds nothing.  (Plain xid comparisons: a transaction that lived through
 * 2^31 others would get wrong answers.)
 */
static bool
committed_at_first_use(TransactionId xid)
{
	int			n = first_use->xcnt + first_use->subxcnt;

	if (TransactionIdPrecedes(xid, first_use->xmin))
		return true;
	if (!TransactionIdPrecedes(xid, first_use->xmax))
		return false;
	if (first_use->overflowed)
	{
		/* pg_subtrans keeps what this backend's xmin may need. */
		if (!TransactionIdIsValid(MyProc->xmin) || TransactionIdPrecedes(xid, MyProc->xmin))
			return false;
		xid = SubTransGetTopmostTransaction(xid);
		if (TransactionIdPrecedes(xid, first_use->xmin))
			return true;
	}
	for (int i = 0; i < n; i++)
		if (TransactionIdEquals(xid, first_use->xids[i]))
			return false;
	return true;
}

/*
 * slot_moved tells whether relid, a slot's foreign table, is newer than the
 * transaction's first use of the shards: its pg_foreign_table row, which a
 * move makes anew (ALTER TABLE leaves it alone; ALTER FOREIGN TABLE ...
 * OPTIONS does not, and counts as a move), was made by a transaction that
 * had not committed then.  The row may have been frozen since (nothing
 * holds vacuum back): its xid is read raw, and one older than the first use
 * or from the future (wrapped around since) is as old as can be.
 */
static bool
slot_moved(Oid relid)
{
	HeapTuple	tuple = SearchSysCache1(FOREIGNTABLEREL, ObjectIdGetDatum(relid));
	TransactionId xmin;
	bool		frozen;

	if (!HeapTupleIsValid(tuple))
		return false;
	xmin = HeapTupleHeaderGetRawXmin(tuple->t_data);
	frozen = HeapTupleHeaderXminFrozen(tuple->t_data);
	ReleaseSysCache(tuple);
	if (!TransactionIdIsNormal(xmin) || TransactionIdIsCurrentTransactionId(xmin))
		return false;
	if (frozen && (TransactionIdPrecedes(xmin, first_use->xmin) ||
				   !TransactionIdPrecedes(xmin, ReadNextTransactionId())))
		return false;
	return !committed_at_first_use(xmin);
}

/*
 * updated_or_deleted adds to reached the result relations of plan, if it is
 * an UPDATE or DELETE.
 */
static Bitmapset *
updated_or_deleted(Bitmapset *reached, Plan *plan)
{
	ModifyTable *modify = (ModifyTable *) plan;
	ListCell   *lc;

	if (plan == NULL || !IsA(plan, ModifyTable) ||
		(modify->operation != CMD_UPDATE && modify->operation != CMD_DELETE))
		return reached;
	foreach(lc, modify->resultRelations)
		reached = bms_add_member(reached, lfirst_int(lc));
	return reached;
}

/*
 * check_moved_slots notes the transaction's first use of the shards, or
 * fails a statement that updates, deletes or locks rows of a slot moved
 * since then (see the file header): an UPDATE or DELETE whose result
 * relations (after pruning, in a custom plan), or a read whose row marks,
 * name a slot's foreign table (a foreign table in ws_dist).  Slots it only
 * reads pass: reads miss the moved rows, as README says.  So does an
 * INSERT: the shard checks its unique keys against every committed row.
 */
static void
check_moved_slots(PlannedStmt *stmt)
{
	Bitmapset  *reached = NULL;
	ListCell   *lc;
	int			rti = -1;

	if (IsParallelWorker())
		return;
	if (first_use == NULL)
	{
		ws_shard_note_use();
		return;
	}
	/* ModifyTable heads the plan, or a modifying CTE's subplan. */
	reached = updated_or_deleted(reached, stmt->planTree);
	foreach(lc, stmt->subplans)
		reached = updated_or_deleted(reached, lfirst(lc));
	foreach(lc, stmt->rowMarks)
		if (((PlanRowMark *) lfirst(lc))->strength != LCS_NONE)
			reached = bms_add_member(reached, ((PlanRowMark *) lfirst(lc))->rti);
	while ((rti = bms_next_member(reached, rti)) >= 0)
	{
		RangeTblEntry *rte = rt_fetch(rti, stmt->rtable);

		if (rte->rtekind == RTE_RELATION && rte->relkind == RELKIND_FOREIGN_TABLE &&
			in_ws_dist(rte->relid) && slot_moved(rte->relid))
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not serialize access to \"%s\" due to a slot moved by ws.rebalance",
							get_rel_name(rte->relid)),
					 errdetail("The slot moved to another server after this transaction began; its snapshot there may not see the slot's rows."),
					 errhint("The transaction might succeed if retried.")));
	}
	bms_free(reached);
}

/*
 * guard_executor_start checks a statement against slots moved under its
 * transaction before it starts (plans made once run here each time).
 */
static void
guard_executor_start(QueryDesc *queryDesc, int eflags)
{
	if ((eflags & EXEC_FLAG_EXPLAIN_ONLY) == 0)
		check_moved_slots(queryDesc->plannedstmt);
	if (prev_executor_start != NULL)
		prev_executor_start(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
}

/*
 * ws_shard_guard_register installs the planner and executor hooks; called
 * from _PG_init.
 */
void
ws_shard_guard_register(void)
{
	prev_planner = planner_hook;
	planner_hook = guard_planner;
	prev_executor_start = ExecutorStart_hook;
	ExecutorStart_hook = guard_executor_start;
	CacheRegisterSyscacheCallback(NAMESPACEOID, namespaces_changed, (Datum) 0);
}

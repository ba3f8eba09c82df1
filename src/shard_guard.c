/*-------------------------------------------------------------------------
 *
 * shard_guard.c
 *	  Statements a distributed table refuses when they are planned.
 *
 * An UPDATE must not change the shard key.  A row lives in the slot of its
 * key; postgres_fdw updates a row of a foreign partition in place, and a
 * foreign table's partition constraint is not checked, so an UPDATE that
 * changed the key would leave the row in its old slot: reads by the new key
 * would miss it, and a second row with that key would go unnoticed.  Moving it would take a delete on one shard
 * and an insert on another; like Citus, we refuse such an UPDATE when it is
 * planned, whether it names the distributed table (the view, rewritten into
 * an UPDATE of ws_dist.<table>) or the tables in ws_dist.
 *
 * INSERT ... ON CONFLICT cannot keep its promise: the view's INSTEAD OF
 * trigger takes the rows, and they reach their shards without the clause,
 * so a conflict would fail the statement instead of being skipped.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/relation.h"
#include "access/sysattr.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_class.h"
#include "nodes/bitmapset.h"
#include "nodes/plannodes.h"
#include "optimizer/planner.h"
#include "parser/parsetree.h"
#include "utils/lsyscache.h"
#include "utils/partcache.h"
#include "utils/rel.h"

#include "shard.h"

static planner_hook_type prev_planner = NULL;

/*
 * check_key_not_updated raises an error if rte, a relation of schema
 * ws_dist, is a distributed table's partitioned table or one of its slots
 * and the statement sets the shard key (its partition key).
 */
static void
check_key_not_updated(RangeTblEntry *rte)
{
	Oid			root;
	Relation	rel;
	PartitionKey key;
	char	   *key_name;
	AttrNumber	attnum;

	if (rte->relkind == RELKIND_PARTITIONED_TABLE)
		root = rte->relid;
	else if (get_rel_relispartition(rte->relid))
		root = get_partition_parent(rte->relid, false);
	else
		return;

	rel = relation_open(root, AccessShareLock);
	key = RelationGetPartitionKey(rel);
	if (key == NULL || key->partnatts != 1 || key->partattrs[0] == 0)
	{
		relation_close(rel, AccessShareLock);
		return;
	}
	key_name = get_attname(root, key->partattrs[0], false);
	attnum = root == rte->relid ? key->partattrs[0] : get_attnum(rte->relid, key_name);
	if (attnum != InvalidAttrNumber &&
		bms_is_member(attnum - FirstLowInvalidHeapAttributeNumber, rte->updatedCols))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot update the shard key \"%s\" of distributed table \"%s\"",
						key_name, RelationGetRelationName(rel)),
				 errdetail("The key decides which shard holds a row, and an UPDATE leaves the row where it is."),
				 errhint("DELETE the row and INSERT it with its new key.")));
	relation_close(rel, AccessShareLock);
}

/*
 * check_no_on_conflict raises an error if plan, a ModifyTable, inserts
 * into a distributed table with ON CONFLICT.
 */
static void
check_no_on_conflict(Plan *plan, List *rtable)
{
	ModifyTable *modify = (ModifyTable *) plan;
	RangeTblEntry *target;
	Relation	view;
	bool		distributed;

	if (!IsA(plan, ModifyTable) || modify->operation != CMD_INSERT ||
		modify->onConflictAction == ONCONFLICT_NONE || list_length(modify->resultRelations) != 1)
		return;
	target = rt_fetch(linitial_int(modify->resultRelations), rtable);
	if (target->relkind != RELKIND_VIEW)
		return;
	view = relation_open(target->relid, AccessShareLock);
	distributed = ws_shard_routes(view);
	relation_close(view, AccessShareLock);
	if (distributed)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("INSERT ... ON CONFLICT is not supported on distributed table \"%s\"",
						get_rel_name(target->relid)),
				 errdetail("Rows reach their shards without the ON CONFLICT clause."),
				 errhint("Leave out the rows whose keys are stored already, with WHERE NOT EXISTS for example.")));
}

static PlannedStmt *
guard_planner(Query *parse, const char *query_string, int cursorOptions,
			  ParamListInfo boundParams)
{
	PlannedStmt *plan;
	ListCell   *lc;
	Oid			ws_dist = InvalidOid;

	if (prev_planner != NULL)
		plan = prev_planner(parse, query_string, cursorOptions, boundParams);
	else
		plan = standard_planner(parse, query_string, cursorOptions, boundParams);

	/* Only an UPDATE's targets (ON CONFLICT's too) have updated columns. */
	foreach(lc, plan->rtable)
	{
		RangeTblEntry *rte = lfirst(lc);

		if (rte->rtekind != RTE_RELATION || bms_is_empty(rte->updatedCols) ||
			(rte->relkind != RELKIND_PARTITIONED_TABLE && rte->relkind != RELKIND_FOREIGN_TABLE))
			continue;
		if (!OidIsValid(ws_dist))
			ws_dist = get_namespace_oid("ws_dist", true);
		if (OidIsValid(ws_dist) && get_rel_namespace(rte->relid) == ws_dist)
			check_key_not_updated(rte);
	}
	if (plan->commandType == CMD_INSERT)
		check_no_on_conflict(plan->planTree, plan->rtable);
	if (plan->hasModifyingCTE)
		foreach(lc, plan->subplans)
			if (lfirst(lc) != NULL)
				check_no_on_conflict(lfirst(lc), plan->rtable);
	return plan;
}

/*
 * ws_shard_guard_register installs the planner hook; called from _PG_init.
 */
void
ws_shard_guard_register(void)
{
	prev_planner = planner_hook;
	planner_hook = guard_planner;
}

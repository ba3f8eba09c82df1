/*-------------------------------------------------------------------------
 *
 * shard_truncate.c
 *	  TRUNCATE of a distributed table.
 *
 * A distributed table is a view, which TRUNCATE refuses.  Its rows live in
 * the slot tables on the shards, behind ws_dist.<table>, a partitioned
 * table of postgres_fdw foreign tables; TRUNCATE of that table truncates
 * each shard's slot tables with one remote TRUNCATE per server, in
 * postgres_fdw's remote transaction, so a rollback takes it back.  This
 * hook truncates that table in place of the view.
 *
 * Privileges are the view's: the caller needs TRUNCATE on it, and the
 * partitioned table is truncated as the view's owner (who owns it), as an
 * UPDATE or DELETE through the view reaches it as that owner.  RESTART
 * IDENTITY restarts the sequences the table's serial columns owned before
 * it was distributed (ws.distributed_sequences), which no column owns now.
 *
 * Locks: ws.rebalance locks a slot's foreign table, then the partitioned
 * table to switch the slot; TRUNCATE of a partitioned table locks it, then
 * its partitions.  To move in rebalance's order, not against it, this
 * locks the view (keeping writers out, which lock it first too), then
 * every slot, then lets TRUNCATE lock the partitioned table: a rebalance
 * in the middle of a slot's move finishes it first.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/relation.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "commands/tablecmds.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "storage/lmgr.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "shard.h"

static ProcessUtility_hook_type prev_process_utility = NULL;

/*
 * check_truncate_privilege checks, before the relation is locked, that the
 * user may truncate it; RangeVarGetRelidExtended's callback.
 */
static void
check_truncate_privilege(const RangeVar *relation, Oid relid, Oid oldrelid, void *arg)
{
	AclResult	result;

	if (!OidIsValid(relid))
		return;
	result = pg_class_aclcheck(relid, GetUserId(), ACL_TRUNCATE);
	/* A view here is most likely a distributed table: say "table". */
	if (result != ACLCHECK_OK)
		aclcheck_error(result, OBJECT_TABLE, relation->relname);
}

/*
 * distributed_sequences returns the sequences that the serial columns of a
 * distributed table owned, each checked to be the user's and locked, as
 * TRUNCATE ... RESTART IDENTITY checks and locks a table's sequences.
 */
static List *
distributed_sequences(Oid view)
{
	Datum		arg = ObjectIdGetDatum(view);
	MemoryContext caller_context = CurrentMemoryContext;
	List	   *sequences = NIL;
	ListCell   *lc;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT sequence::oid FROM ws.distributed_sequences WHERE table_name = $1",
							  1, (Oid[]) {OIDOID}, &arg, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read ws.distributed_sequences");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		Datum		sequence = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);
		MemoryContext spi_context = MemoryContextSwitchTo(caller_context);

		sequences = lappend_oid(sequences, DatumGetObjectId(sequence));
		MemoryContextSwitchTo(spi_context);
	}
	SPI_finish();

	foreach(lc, sequences)
	{
		Oid			sequence = lfirst_oid(lc);

		if (!pg_class_ownercheck(sequence, GetUserId()))
			aclcheck_error(ACLCHECK_NOT_OWNER, OBJECT_SEQUENCE, get_rel_name(sequence));
		LockRelationOid(sequence, AccessExclusiveLock);
	}
	return sequences;
}

/*
 * truncate_distributed truncates a distributed table, whose view the caller
 * has locked in AccessExclusiveLock after checking the user's privilege.
 */
static void
truncate_distributed(Relation view, bool restart_seqs, DropBehavior behavior)
{
	Oid			partitioned = ws_shard_partitioned_table(view);
	Oid			owner = view->rd_rel->relowner;
	List	   *sequences = restart_seqs ? distributed_sequences(RelationGetRelid(view)) : NIL;
	TruncateStmt *truncate = makeNode(TruncateStmt);
	Oid			save_userid;
	int			save_sec_context;
	ListCell   *lc;

	/* The slots first, as ws.rebalance locks them (see the file header). */
	foreach(lc, find_inheritance_children(partitioned, NoLock))
		LockRelationOid(lfirst_oid(lc), AccessExclusiveLock);

	truncate->relations = list_make1(makeRangeVar(get_namespace_name(get_rel_namespace(partitioned)),
												  get_rel_name(partitioned), -1));
	truncate->restart_seqs = false;
	truncate->behavior = behavior;
	/* An error restores the user with the (sub)transaction's abort. */
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(owner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	ExecuteTruncate(truncate);
	SetUserIdAndSecContext(save_userid, save_sec_context);

	foreach(lc, sequences)
		ResetSequence(lfirst_oid(lc));
}

static void
truncate_process_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
						 ProcessUtilityContext context, ParamListInfo params,
						 QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	if (IsA(pstmt->utilityStmt, TruncateStmt))
	{
		TruncateStmt *stmt = (TruncateStmt *) pstmt->utilityStmt;
		List	   *others = NIL;
		List	   *views = NIL;
		ListCell   *lc;

		foreach(lc, stmt->relations)
		{
			RangeVar   *rv = lfirst(lc);
			Oid			relid = RangeVarGetRelid(rv, NoLock, true);
			Relation	view;

			if (OidIsValid(relid) && get_rel_relkind(relid) == RELKIND_VIEW)
			{
				relid = RangeVarGetRelidExtended(rv, AccessExclusiveLock, 0,
												 check_truncate_privilege, NULL);
				view = relation_open(relid, NoLock);
				if (ws_shard_routes(view))
				{
					views = lappend(views, view);
					continue;
				}
				relation_close(view, NoLock);
			}
			others = lappend(others, rv);
		}

		if (views != NIL)
		{
			PreventCommandIfReadOnly("TRUNCATE TABLE");
			PreventCommandIfParallelMode("TRUNCATE TABLE");
			foreach(lc, views)
			{
				Relation	view = lfirst(lc);

				truncate_distributed(view, stmt->restart_seqs, stmt->behavior);
				relation_close(view, NoLock);
			}
			if (others == NIL)
			{
				if (qc)
					SetQueryCompletion(qc, CMDTAG_TRUNCATE_TABLE, 0);
				return;
			}
			/* The other tables, as TRUNCATE would have them. */
			pstmt = copyObject(pstmt);
			((TruncateStmt *) pstmt->utilityStmt)->relations = others;
			readOnlyTree = false;
		}
	}
	if (prev_process_utility != NULL)
		prev_process_utility(pstmt, queryString, readOnlyTree, context, params,
							 queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);
}

/*
 * ws_shard_truncate_register installs the utility hook; called from
 * _PG_init.
 */
void
ws_shard_truncate_register(void)
{
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = truncate_process_utility;
}

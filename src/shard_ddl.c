/*-------------------------------------------------------------------------
 *
 * shard_ddl.c
 *	  TRUNCATE and ALTER TABLE ... ADD COLUMN on a distributed table.
 *
 * A distributed table is a view, which both commands refuse.  Its rows
 * live in the slot tables on the shards, behind ws_dist.<table>, a
 * partitioned table of postgres_fdw foreign tables, one per slot.  Remote
 * work happens in postgres_fdw's remote transactions, so a rollback takes
 * it back everywhere (a failed commit may not: there is no two-phase
 * commit).
 *
 * TRUNCATE truncates ws_dist.<table> in place of the view: postgres_fdw
 * sends each shard one TRUNCATE of its slot tables.  Privileges are the
 * view's: the caller needs TRUNCATE on it, and the partitioned table is
 * truncated as the view's owner (who owns it), as an UPDATE or DELETE
 * through the view reaches it as that owner.  RESTART IDENTITY restarts
 * the sequences the table's serial columns owned before it was distributed
 * (ws.distributed_sequences), which no column owns now.
 *
 * ALTER TABLE ... ADD COLUMN (its only subcommand) adds the columns to
 * ws_dist.<table>, which adds them to every slot's foreign table, and then
 * ws._columns_added takes them to the shards' tables, the view and
 * ws.distributed_tables.  Only what every part can hold is accepted: a
 * type, a collation, NOT NULL and a default; other constraints, identity
 * and generated columns are refused.
 *
 * Locks: ws.rebalance locks a slot's foreign table, then the partitioned
 * table to switch the slot; TRUNCATE of a partitioned table locks it, then
 * its partitions.  To move in rebalance's order, not against it, TRUNCATE
 * locks the view (keeping writers out, which lock it first too), then
 * every slot, then lets TRUNCATE lock the partitioned table: a rebalance
 * in the middle of a slot's move finishes it first.  ADD COLUMN locks the
 * view, then waits for the rebalance's current slot as ws.undistribute_table
 * does (the map's row in ws.shard_maps), and no slot moves until it ends.
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
#include "access/xact.h"
#include "commands/tablecmds.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "optimizer/optimizer.h"
#include "rewrite/rewriteHandler.h"
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

/*
 * check_column_definition raises an error unless the column added by cmd
 * is one that a distributed table can hold.
 */
static void
check_column_definition(Relation view, AlterTableCmd *cmd)
{
	ColumnDef  *column = (ColumnDef *) cmd->def;
	ListCell   *lc;

	if (cmd->subtype != AT_AddColumn)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("ALTER TABLE on distributed table \"%s\" can only add columns",
						RelationGetRelationName(view)),
				 errhint("To make other changes, take the table back with ws.undistribute_table, alter it and distribute it again.")));
	if (column->identity || column->generated)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot add identity or generated column \"%s\" to distributed table \"%s\"",
						column->colname, RelationGetRelationName(view)),
				 errhint("Use a DEFAULT: defaults are evaluated on the coordinator.")));
	foreach(lc, column->constraints)
	{
		Constraint *constraint = lfirst(lc);

		if (constraint->contype == CONSTR_NULL || constraint->contype == CONSTR_NOTNULL ||
			constraint->contype == CONSTR_DEFAULT)
			continue;
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot add column \"%s\" with a constraint to distributed table \"%s\"",
						column->colname, RelationGetRelationName(view)),
				 errdetail("A column added to a distributed table can have NOT NULL and a default only."),
				 errhint("To add a constraint, take the table back with ws.undistribute_table, alter it and distribute it again.")));
	}
}

/*
 * ws._default_is_volatile(rel regclass, attnum smallint) tells whether the
 * default of a column calls a volatile function: then each stored row
 * would need a value of its own.
 */
PG_FUNCTION_INFO_V1(write_scaling_default_is_volatile);
Datum
write_scaling_default_is_volatile(PG_FUNCTION_ARGS)
{
	Relation	rel = relation_open(PG_GETARG_OID(0), AccessShareLock);
	Node	   *expr = build_column_default(rel, PG_GETARG_INT16(1));

	relation_close(rel, AccessShareLock);
	PG_RETURN_BOOL(expr != NULL && contain_volatile_functions(expr));
}

/*
 * run_sql runs a query of the extension's with a relation as its parameter.
 */
static void
run_sql(const char *sql, Datum arg)
{
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args(sql, 1, (Oid[]) {REGCLASSOID}, &arg, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not run \"%s\"", sql);
	SPI_finish();
}

/*
 * add_columns adds columns to a distributed table whose view the caller has
 * locked, after checking its ownership: to ws_dist.<table>, through ALTER
 * TABLE itself, then everywhere else (see the file header).  It closes the
 * view, which CREATE OR REPLACE VIEW must find unused; the lock stays.
 */
static void
add_columns(Relation view, PlannedStmt *pstmt, const char *queryString,
			ProcessUtilityContext context, ParamListInfo params,
			QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Oid			partitioned = ws_shard_partitioned_table(view);
	Datum		arg = ObjectIdGetDatum(RelationGetRelid(view));
	AlterTableStmt *alter;
	ListCell   *lc;

	foreach(lc, ((AlterTableStmt *) pstmt->utilityStmt)->cmds)
		check_column_definition(view, lfirst(lc));
	relation_close(view, NoLock);
	run_sql("SELECT FROM ws.shard_maps m"
			" WHERE m.map = (SELECT d.map FROM ws.distributed_tables d WHERE d.table_name = $1)"
			" FOR UPDATE", arg);

	pstmt = copyObject(pstmt);
	alter = (AlterTableStmt *) pstmt->utilityStmt;
	alter->relation = makeRangeVar(get_namespace_name(get_rel_namespace(partitioned)),
								   get_rel_name(partitioned), -1);
	if (prev_process_utility != NULL)
		prev_process_utility(pstmt, queryString, false, context, params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, false, context, params, queryEnv, dest, qc);
	CommandCounterIncrement();
	run_sql("SELECT ws._columns_added($1)", arg);
}

/*
 * distributed_view_of returns the distributed table's view that rv names,
 * open and locked in AccessExclusiveLock once callback has checked the
 * user's rights, or NULL if rv names no distributed table.
 */
static Relation
distributed_view_of(RangeVar *rv, RangeVarGetRelidCallback callback)
{
	Oid			relid = RangeVarGetRelid(rv, NoLock, true);
	Relation	view;

	if (!OidIsValid(relid) || get_rel_relkind(relid) != RELKIND_VIEW)
		return NULL;
	relid = RangeVarGetRelidExtended(rv, AccessExclusiveLock, 0, callback, NULL);
	view = relation_open(relid, NoLock);
	if (ws_shard_routes(view))
		return view;
	relation_close(view, NoLock);
	return NULL;
}

static void
ddl_process_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
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
			Relation	view = distributed_view_of(lfirst(lc), check_truncate_privilege);

			if (view != NULL)
				views = lappend(views, view);
			else
				others = lappend(others, lfirst(lc));
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
	else if (IsA(pstmt->utilityStmt, AlterTableStmt) &&
			 ((AlterTableStmt *) pstmt->utilityStmt)->objtype == OBJECT_TABLE)
	{
		AlterTableStmt *alter = (AlterTableStmt *) pstmt->utilityStmt;
		bool		adds_column = false;
		Relation	view = NULL;
		ListCell   *lc;

		/* Other subcommands on a view are PostgreSQL's to take or refuse. */
		foreach(lc, alter->cmds)
			adds_column |= ((AlterTableCmd *) lfirst(lc))->subtype == AT_AddColumn;
		if (adds_column)
			view = distributed_view_of(alter->relation, RangeVarCallbackOwnsRelation);
		if (view != NULL)
		{
			add_columns(view, pstmt, queryString, context, params, queryEnv, dest, qc);
			return;
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
 * ws_shard_ddl_register installs the utility hook; called from
 * _PG_init.
 */
void
ws_shard_ddl_register(void)
{
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = ddl_process_utility;
}

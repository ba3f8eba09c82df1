/*-------------------------------------------------------------------------
 *
 * shard_utility.c
 *	  Utility commands on a distributed table: TRUNCATE, DROP, COPY ... TO,
 *	  ALTER TABLE ... ADD COLUMN and OWNER TO, and the renames it refuses.
 *
 * A distributed table is a view, which TRUNCATE, COPY ... TO, ADD COLUMN
 * and DROP TABLE refuse.  Its rows live in the slot tables on the shards,
 * behind ws_dist.<table>, a partitioned table of postgres_fdw foreign
 * tables, one per slot.  Remote work happens in postgres_fdw's remote
 * transactions, under the user mapping that routed rows and the view's
 * reads use (ws_shard_mapping_user), so a rollback takes it back everywhere
 * (a failed commit may not: there is no two-phase commit).
 *
 * TRUNCATE truncates ws_dist.<table> and its slots in place of the view:
 * postgres_fdw sends each shard one TRUNCATE of its slot tables.  The
 * privilege checked is the view's: TRUNCATE on it.  RESTART IDENTITY
 * restarts the sequences the table's serial columns owned before it was
 * distributed (ws.distributed_sequences), which no column owns now.
 *
 * COPY ... TO of a distributed table copies from SELECT of its columns, as
 * PostgreSQL does for a view only when asked with COPY (SELECT ...) TO.
 *
 * DROP TABLE of a distributed table drops its view, as DROP VIEW would; an
 * event trigger (ws._distributed_view_dropped) drops what lies behind a
 * distributed table's view however it goes.  Both wait for the map's row
 * before they lock the table (wait_for_maps), as ADD COLUMN and
 * undistribute do; a view dropped with its schema or by DROP OWNED is
 * locked before the trigger waits for that row.
 *
 * A new owner of the view (ALTER TABLE or ALTER VIEW ... OWNER TO) becomes
 * the owner of ws_dist.<table>, its slots and its serials' sequences too:
 * the view's reads reach them as its owner.  A column of the view cannot
 * be renamed: the slot tables keep their names.
 *
 * ALTER TABLE ... ADD COLUMN (its only subcommand) adds the columns to
 * ws_dist.<table>, which adds them to every slot's foreign table, and then
 * ws._columns_added takes them to the shards' tables, the view and
 * ws.distributed_tables.  Only what every part can hold is accepted: a
 * type, a collation, NOT NULL and a default; other constraints, identity
 * and generated columns are refused.
 *
 * Locks: ws.rebalance locks a slot's foreign table, then the partitioned
 * table to switch the slot; TRUNCATE (and ALTER TABLE) of a partitioned
 * table lock it, then its partitions.  To move in rebalance's order, not
 * against it, TRUNCATE and OWNER TO lock the view (keeping writers out,
 * which lock it first too), then every slot, then the partitioned table: a
 * rebalance in the middle of a slot's move finishes it first.  ADD COLUMN
 * waits for the rebalance's current slot (the map's row in ws.shard_maps),
 * then locks the view, as ws.undistribute_table does; no slot moves until
 * it ends.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/relation.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_type.h"
#include "commands/copy.h"
#include "commands/extension.h"
#include "commands/sequence.h"
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
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "shard.h"

static ProcessUtility_hook_type prev_process_utility = NULL;

/*
 * pass_on runs a statement, the user's or one made from it, through the
 * hooks after this one.
 */
static void
pass_on(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
		ProcessUtilityContext context, ParamListInfo params,
		QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	if (prev_process_utility != NULL)
		prev_process_utility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
}

/*
 * run_query runs a query of the extension's with one parameter, on a safe
 * search_path (ws_shard_spi_connect).
 */
static void
run_query(const char *sql, Oid type, Datum arg)
{
	int			guc_level = ws_shard_spi_connect();

	if (SPI_execute_with_args(sql, 1, &type, &arg, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not run \"%s\"", sql);
	ws_shard_spi_finish(guc_level);
}

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
	relid = RangeVarGetRelidExtended(rv, AccessExclusiveLock, RVR_MISSING_OK, callback, NULL);
	if (!OidIsValid(relid))
		return NULL;
	view = relation_open(relid, NoLock);
	if (ws_shard_routes(view))
		return view;
	relation_close(view, NoLock);
	return NULL;
}

/*
 * distributed_sequences returns the sequences that the serial columns of a
 * distributed table owned, each locked and, to be restarted, checked to be
 * the user's, as TRUNCATE ... RESTART IDENTITY checks and locks a table's
 * sequences.
 */
static List *
distributed_sequences(Oid view, bool to_restart)
{
	Datum		arg = ObjectIdGetDatum(view);
	MemoryContext caller_context = CurrentMemoryContext;
	List	   *sequences = NIL;
	ListCell   *lc;
	int			guc_level = ws_shard_spi_connect();

	if (SPI_execute_with_args("SELECT q.sequence::oid FROM ws.distributed_sequences q"
							  " JOIN pg_catalog.pg_class c ON c.oid = q.sequence"
							  " WHERE q.table_name = $1",
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
	ws_shard_spi_finish(guc_level);

	foreach(lc, sequences)
	{
		Oid			sequence = lfirst_oid(lc);

		if (to_restart && !pg_class_ownercheck(sequence, GetUserId()))
			aclcheck_error(ACLCHECK_NOT_OWNER, OBJECT_SEQUENCE, get_rel_name(sequence));
		LockRelationOid(sequence, AccessExclusiveLock);
	}
	return sequences;
}

static int
compare_relids(const ListCell *a, const ListCell *b)
{
	Oid			oid_a = RelationGetRelid((Relation) lfirst(a));
	Oid			oid_b = RelationGetRelid((Relation) lfirst(b));

	return oid_a < oid_b ? -1 : oid_a > oid_b ? 1 : 0;
}

/*
 * lock_slots locks every slot of a distributed table's partitioned table,
 * before the caller locks that table: ws.rebalance's order (see the file
 * header).
 */
static void
lock_slots(Oid partitioned)
{
	ListCell   *lc;

	foreach(lc, find_inheritance_children(partitioned, NoLock))
		LockRelationOid(lfirst_oid(lc), AccessExclusiveLock);
}

/*
 * truncate_distributed truncates distributed tables, whose views the caller
 * has locked in AccessExclusiveLock after checking the user's privilege.
 * It closes the views.
 *
 * Each table's partitioned table and slots are truncated by TRUNCATE's own
 * ExecuteTruncateGuts, as the role whose user mappings the table's rows
 * travel under (ws_shard_mapping_user: postgres_fdw's for the view), so
 * that a transaction's inserts, reads and TRUNCATE share one remote
 * session per shard.  TRUNCATE's privilege checks on those tables are
 * left out: the user's right is the one on the view.
 */
static void
truncate_distributed(List *views, bool restart_seqs, DropBehavior behavior)
{
	List	   *tables = NIL;	/* partitioned tables, one per distributed table */
	List	   *users = NIL;	/* their mapping users */
	List	   *sequences = NIL;
	ListCell   *lc;
	ListCell   *lc2;

	/* In ws.rebalance's order: the tables by OID, every slot first. */
	list_sort(views, compare_relids);
	foreach(lc, views)
	{
		Relation	view = lfirst(lc);
		Oid			partitioned = ws_shard_partitioned_table(view);

		/* "TRUNCATE t, t" truncates t once. */
		if (list_member_oid(tables, partitioned))
			continue;
		lock_slots(partitioned);
		if (restart_seqs)
			sequences = list_concat(sequences, distributed_sequences(RelationGetRelid(view), true));
		tables = lappend_oid(tables, partitioned);
		users = lappend_oid(users, ws_shard_mapping_user(view));
	}
	forboth(lc, tables, lc2, users)
	{
		List	   *rels = NIL;
		List	   *relids = NIL;
		ListCell   *member;
		Oid			save_userid;
		int			save_sec_context;

		foreach(member, find_all_inheritors(lfirst_oid(lc), AccessExclusiveLock, NULL))
		{
			Relation	rel = relation_open(lfirst_oid(member), NoLock);

			CheckTableNotInUse(rel, "TRUNCATE");
			rels = lappend(rels, rel);
			relids = lappend_oid(relids, RelationGetRelid(rel));
		}
		/* An error restores the user with the (sub)transaction's abort. */
		GetUserIdAndSecContext(&save_userid, &save_sec_context);
		SetUserIdAndSecContext(lfirst_oid(lc2),
							   save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
							   SECURITY_RESTRICTED_OPERATION);
		ExecuteTruncateGuts(rels, relids, NIL, behavior, false);
		SetUserIdAndSecContext(save_userid, save_sec_context);
		foreach(member, rels)
			relation_close(lfirst(member), NoLock);
	}
	foreach(lc, sequences)
		ResetSequence(lfirst_oid(lc));
	foreach(lc, views)
		relation_close(lfirst(lc), NoLock);
}

/*
 * check_column_definition raises an error unless the column added by cmd
 * is one that a distributed table can hold.  cmd is a raw parse tree, whose
 * identity and generated columns are still constraints.
 */
static void
check_column_definition(const char *table, AlterTableCmd *cmd)
{
	ColumnDef  *column = (ColumnDef *) cmd->def;
	ListCell   *lc;

	if (cmd->subtype != AT_AddColumn)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("ALTER TABLE on distributed table \"%s\" can only add columns", table),
				 errhint("To make other changes, take the table back with ws.undistribute_table, alter it and distribute it again.")));
	if (strcmp(column->colname, "ws_slot") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_COLUMN),
				 errmsg("cannot add column \"ws_slot\" to distributed table \"%s\"", table),
				 errdetail("The slot tables on the shards have a column of that name.")));
	foreach(lc, column->constraints)
	{
		Constraint *constraint = lfirst(lc);

		if (constraint->contype == CONSTR_NULL || constraint->contype == CONSTR_NOTNULL ||
			constraint->contype == CONSTR_DEFAULT)
			continue;
		if (constraint->contype == CONSTR_IDENTITY || constraint->contype == CONSTR_GENERATED)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot add identity or generated column \"%s\" to distributed table \"%s\"",
							column->colname, table),
					 errhint("Use a DEFAULT: defaults are evaluated on the coordinator.")));
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot add column \"%s\" with a constraint to distributed table \"%s\"",
						column->colname, table),
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
	AttrNumber	attnum = PG_GETARG_INT16(1);
	Node	   *expr;

	if (attnum < 1 || attnum > RelationGetNumberOfAttributes(rel))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("relation \"%s\" has no column %d", RelationGetRelationName(rel), attnum)));
	expr = build_column_default(rel, attnum);
	relation_close(rel, AccessShareLock);
	PG_RETURN_BOOL(expr != NULL && contain_volatile_functions(expr));
}

/*
 * distributed_map returns the shard map of a distributed table, or NULL if
 * relid is not one.  Reads without a lock on relid.
 */
static char *
distributed_map(Oid relid)
{
	Datum		arg = ObjectIdGetDatum(relid);
	MemoryContext caller_context = CurrentMemoryContext;
	char	   *map = NULL;

	int			guc_level;

	/* The library serves databases without the extension too. */
	if (creating_extension || !OidIsValid(get_extension_oid("write_scaling", true)))
		return NULL;
	guc_level = ws_shard_spi_connect();
	if (SPI_execute_with_args("SELECT map FROM ws.distributed_tables WHERE table_name = $1",
							  1, (Oid[]) {OIDOID}, &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read ws.distributed_tables");
	if (SPI_processed == 1)
		map = MemoryContextStrdup(caller_context,
								  SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
	ws_shard_spi_finish(guc_level);
	return map;
}

static int
compare_names(const ListCell *a, const ListCell *b)
{
	return strcmp(strVal(lfirst(a)), strVal(lfirst(b)));
}

/*
 * wait_for_maps waits for, and holds to the end of the transaction, the
 * rows of the shard maps named in maps (String nodes), in name order: a
 * rebalance's current slot finishes first, and ADD COLUMN and
 * undistribute, which also wait for the map's row before they lock the
 * table, take the locks in the same order.  The rows are locked as the
 * owner of ws.shard_maps: the caller has checked the user's right to the
 * table.
 */
static void
wait_for_maps(List *maps)
{
	Oid			shard_maps = get_relname_relid("shard_maps", get_namespace_oid("ws", false));
	HeapTuple	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(shard_maps));
	Oid			owner;
	Oid			save_userid;
	int			save_sec_context;
	ListCell   *lc;

	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for relation %u", shard_maps);
	owner = ((Form_pg_class) GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);
	list_sort(maps, compare_names);
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(owner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	foreach(lc, maps)
		run_query("SELECT FROM ws.shard_maps WHERE map = $1 FOR UPDATE", TEXTOID,
				  CStringGetTextDatum(strVal(lfirst(lc))));
	SetUserIdAndSecContext(save_userid, save_sec_context);
}

/*
 * add_columns adds columns to the distributed table relid, which alter
 * names: to ws_dist.<table>, through ALTER TABLE itself, then everywhere
 * else (see the file header).  Like ws.undistribute_table, it waits for
 * the map's row before it locks the view.
 */
static void
add_columns(Oid relid, const char *map, PlannedStmt *pstmt, const char *queryString,
			ProcessUtilityContext context, ParamListInfo params,
			QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	AlterTableStmt *alter = (AlterTableStmt *) pstmt->utilityStmt;
	Relation	view;
	Oid			partitioned;
	ListCell   *lc;

	if (!pg_class_ownercheck(relid, GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, OBJECT_TABLE, alter->relation->relname);
	foreach(lc, alter->cmds)
		check_column_definition(alter->relation->relname, lfirst(lc));

	wait_for_maps(list_make1(makeString(pstrdup(map))));
	view = distributed_view_of(alter->relation, RangeVarCallbackOwnsRelation);
	if (view == NULL || RelationGetRelid(view) != relid)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("distributed table \"%s\" was changed meanwhile", alter->relation->relname)));
	partitioned = ws_shard_partitioned_table(view);
	/* CREATE OR REPLACE VIEW must find it unused; the lock stays. */
	relation_close(view, NoLock);

	pstmt = copyObject(pstmt);
	alter = (AlterTableStmt *) pstmt->utilityStmt;
	alter->relation = makeRangeVar(get_namespace_name(get_rel_namespace(partitioned)),
								   get_rel_name(partitioned), -1);
	pass_on(pstmt, queryString, false, context, params, queryEnv, dest, qc);
	CommandCounterIncrement();

	run_query("SELECT ws._columns_added($1)", REGCLASSOID, ObjectIdGetDatum(relid));
}

/*
 * distributed_relid returns the OID of the view rv names, without a lock,
 * or InvalidOid if rv names no view: a distributed table is one.
 */
static Oid
distributed_relid(RangeVar *rv)
{
	Oid			relid = RangeVarGetRelid(rv, NoLock, true);

	return OidIsValid(relid) && get_rel_relkind(relid) == RELKIND_VIEW ? relid : InvalidOid;
}

/*
 * owner_changed gives a distributed table's partitioned table, slots and
 * serials' sequences the owner of its view, which ALTER ... OWNER TO just
 * changed (and checked the user's right to): the view's reads reach them
 * as its owner.  Slots are locked before the partitioned table, in
 * ws.rebalance's order.
 */
static void
owner_changed(Oid relid)
{
	Relation	view = relation_open(relid, NoLock);
	Oid			owner = view->rd_rel->relowner;
	Oid			partitioned = ws_shard_partitioned_table(view);
	ListCell   *lc;

	lock_slots(partitioned);
	ATExecChangeOwner(partitioned, owner, true, AccessExclusiveLock);
	foreach(lc, find_inheritance_children(partitioned, AccessExclusiveLock))
		ATExecChangeOwner(lfirst_oid(lc), owner, true, AccessExclusiveLock);
	foreach(lc, distributed_sequences(relid, false))
		ATExecChangeOwner(lfirst_oid(lc), owner, true, AccessExclusiveLock);
	relation_close(view, NoLock);
}

/*
 * select_columns returns the raw parse tree of SELECT columns FROM rv, or
 * of SELECT * if columns (names, as COPY's column list has them) is empty,
 * after COPY's own checks of the list on the view relid.
 */
static SelectStmt *
select_columns(RangeVar *rv, Oid relid, List *columns)
{
	SelectStmt *select = makeNode(SelectStmt);
	Relation	view = relation_open(relid, AccessShareLock);
	ListCell   *lc;

	(void) CopyGetAttnums(RelationGetDescr(view), view, columns);
	relation_close(view, NoLock);
	if (columns == NIL)
		columns = list_make1(NULL);
	foreach(lc, columns)
	{
		ColumnRef  *column = makeNode(ColumnRef);
		ResTarget  *target = makeNode(ResTarget);

		/* Qualified: a column named as the table is not the whole row. */
		column->fields = lfirst(lc) != NULL ?
			list_make2(makeString(rv->relname), copyObject(lfirst(lc))) :
			list_make1(makeNode(A_Star));
		column->location = -1;
		target->val = (Node *) column;
		target->location = -1;
		select->targetList = lappend(select->targetList, target);
	}
	select->fromClause = list_make1(copyObject(rv));
	return select;
}

/*
 * shard_process_utility takes the utility commands on distributed tables of
 * the file header and passes on everything else.
 */
static void
shard_process_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
					ProcessUtilityContext context, ParamListInfo params,
					QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *statement = pstmt->utilityStmt;

	ws_shard_note_use();
	if (IsA(statement, TruncateStmt))
	{
		TruncateStmt *stmt = (TruncateStmt *) statement;
		List	   *others = NIL;
		List	   *views = NIL;
		ListCell   *lc;

		/* As PostgreSQL does for TRUNCATE, before any lock. */
		PreventCommandIfReadOnly("TRUNCATE TABLE");
		PreventCommandIfParallelMode("TRUNCATE TABLE");
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
			/* The other tables first: their checks come before remote work. */
			if (others != NIL)
			{
				pstmt = copyObject(pstmt);
				((TruncateStmt *) pstmt->utilityStmt)->relations = others;
				pass_on(pstmt, queryString, false, context, params, queryEnv, dest, qc);
			}
			truncate_distributed(views, stmt->restart_seqs, stmt->behavior);
			if (qc)
				SetQueryCompletion(qc, CMDTAG_TRUNCATE_TABLE, 0);
			return;
		}
	}
	else if (IsA(statement, AlterTableStmt) &&
			 (((AlterTableStmt *) statement)->objtype == OBJECT_TABLE ||
			  ((AlterTableStmt *) statement)->objtype == OBJECT_VIEW))
	{
		AlterTableStmt *alter = (AlterTableStmt *) statement;
		bool		adds_column = false;
		bool		changes_owner = false;
		ListCell   *lc;

		/* Other subcommands on a view are PostgreSQL's to take or refuse. */
		foreach(lc, alter->cmds)
		{
			adds_column |= ((AlterTableCmd *) lfirst(lc))->subtype == AT_AddColumn;
			changes_owner |= ((AlterTableCmd *) lfirst(lc))->subtype == AT_ChangeOwner;
		}
		if (adds_column || changes_owner)
		{
			Oid			relid = distributed_relid(alter->relation);
			char	   *map = OidIsValid(relid) ? distributed_map(relid) : NULL;

			if (map != NULL && adds_column && alter->objtype == OBJECT_TABLE)
			{
				PreventCommandIfReadOnly("ALTER TABLE");
				PreventCommandIfParallelMode("ALTER TABLE");
				add_columns(relid, map, pstmt, queryString, context, params, queryEnv, dest, qc);
				return;
			}
			if (map != NULL && changes_owner)
			{
				pass_on(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
				CommandCounterIncrement();
				owner_changed(relid);
				return;
			}
		}
	}
	else if (IsA(statement, DropStmt) &&
			 (((DropStmt *) statement)->removeType == OBJECT_TABLE ||
			  ((DropStmt *) statement)->removeType == OBJECT_VIEW))
	{
		DropStmt   *drop = (DropStmt *) statement;
		List	   *tables = NIL;
		List	   *views = NIL;
		List	   *maps = NIL;
		ListCell   *lc;

		foreach(lc, drop->objects)
		{
			RangeVar   *rv = makeRangeVarFromNameList(lfirst(lc));
			Oid			relid = distributed_relid(rv);
			char	   *map = OidIsValid(relid) ? distributed_map(relid) : NULL;

			if (map == NULL)
			{
				tables = lappend(tables, lfirst(lc));
				continue;
			}
			/* DROP's own check, before anything waits on our behalf. */
			if (!pg_class_ownercheck(relid, GetUserId()) &&
				!pg_namespace_ownercheck(get_rel_namespace(relid), GetUserId()))
				aclcheck_error(ACLCHECK_NOT_OWNER, drop->removeType, rv->relname);
			views = lappend(views, lfirst(lc));
			maps = list_append_unique(maps, makeString(map));
		}
		if (views != NIL)
		{
			PreventCommandIfReadOnly(drop->removeType == OBJECT_TABLE ? "DROP TABLE" : "DROP VIEW");
			PreventCommandIfParallelMode(drop->removeType == OBJECT_TABLE ? "DROP TABLE" : "DROP VIEW");
			wait_for_maps(maps);
			/* The tables, then the views: an event trigger does the rest. */
			pstmt = copyObject(pstmt);
			drop = (DropStmt *) pstmt->utilityStmt;
			if (tables != NIL)
			{
				drop->objects = tables;
				pass_on(pstmt, queryString, false, context, params, queryEnv, dest, qc);
			}
			drop->objects = views;
			drop->removeType = OBJECT_VIEW;
			pass_on(pstmt, queryString, false, context, params, queryEnv, dest, qc);
			if (qc)
				SetQueryCompletion(qc, ((DropStmt *) statement)->removeType == OBJECT_TABLE ?
								   CMDTAG_DROP_TABLE : CMDTAG_DROP_VIEW, 0);
			return;
		}
	}
	else if (IsA(statement, CopyStmt) && !((CopyStmt *) statement)->is_from &&
			 ((CopyStmt *) statement)->relation != NULL)
	{
		CopyStmt   *copy = (CopyStmt *) statement;
		Oid			relid = distributed_relid(copy->relation);

		if (OidIsValid(relid) && distributed_map(relid) != NULL)
		{
			pstmt = copyObject(pstmt);
			copy = (CopyStmt *) pstmt->utilityStmt;
			copy->query = (Node *) select_columns(copy->relation, relid, copy->attlist);
			copy->relation = NULL;
			copy->attlist = NIL;
			readOnlyTree = false;
		}
	}
	else if (IsA(statement, RenameStmt) &&
			 ((RenameStmt *) statement)->renameType == OBJECT_COLUMN &&
			 ((RenameStmt *) statement)->relation != NULL)
	{
		RenameStmt *rename = (RenameStmt *) statement;
		Oid			relid = distributed_relid(rename->relation);

		if (OidIsValid(relid) && distributed_map(relid) != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot rename a column of distributed table \"%s\"", rename->relation->relname),
					 errdetail("The slot tables on the shards keep their columns' names."),
					 errhint("Take the table back with ws.undistribute_table, rename the column and distribute it again.")));
	}
	pass_on(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
}

/*
 * ws_shard_utility_register installs the utility hook; called from _PG_init.
 */
void
ws_shard_utility_register(void)
{
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = shard_process_utility;
}

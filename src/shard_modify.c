/*-------------------------------------------------------------------------
 *
 * shard_modify.c
 *	  An UPDATE or DELETE of a distributed table whose WHERE clause fixes the
 *	  key: one statement for one slot's table, run alone when it can be.
 *
 * postgres_fdw runs an UPDATE or DELETE that the shard can do by itself
 * ("direct modify") inside its remote transaction: START TRANSACTION
 * ISOLATION LEVEL REPEATABLE READ, the statement, COMMIT, three round
 * trips; and of two sessions that update one row at once, the second fails
 * with a serialization failure (40001) where on a table it would wait for
 * the first and then update the row as the first left it.
 *
 * When partition pruning leaves one slot's foreign table and postgres_fdw
 * chose a direct modify, the planner hook (shard_guard.c) puts our node in
 * place of postgres_fdw's.  It runs the statement postgres_fdw wrote, with
 * the parameters postgres_fdw would send, and gives the rows the shard
 * returns to the local RETURNING as postgres_fdw would:
 *
 *	- when it is all its autocommit transaction does (ws_defer_may_run_now:
 *	  no pipeline, no other statement) and its RETURNING, if any, lists
 *	  columns only (nothing left to fail), on a connection of ours, as a
 *	  statement that commits on the shard by itself: one round trip, at the
 *	  shard's READ COMMITTED, so that sessions updating one row wait for
 *	  each other, as on a table.  Unprepared: postgres_fdw writes the
 *	  constants in, so each key has a text of its own;
 *	- otherwise in postgres_fdw's remote transaction, as postgres_fdw would.
 *
 * Like a single row sent alone, the statement commits on the shard before
 * the local transaction does, and a cancel that comes while the shard runs
 * it may come too late to stop it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/relation.h"
#include "catalog/pg_class.h"
#include "commands/explain.h"
#include "executor/executor.h"
#include "foreign/foreign.h"
#include "libpq-fe.h"
#include "miscadmin.h"
#include "nodes/extensible.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "nodes/plannodes.h"
#include "parser/parsetree.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "shard.h"

/* postgres_fdw's fdw_private of a direct modify (postgres_fdw.c) */
#define FDW_MODIFY_SQL			0
/* 1: whether the shard returns columns, which FDW_MODIFY_RETRIEVED tells */
#define FDW_MODIFY_RETRIEVED	2
#define FDW_MODIFY_SET_PROCESSED 3

/*
 * Our custom_private: postgres_fdw's, and whether the local RETURNING, if
 * any, lists columns only (nothing of the statement's own left to fail
 * once the shard committed alone).
 */
#define MODIFY_RETURNS_COLUMNS	4

typedef struct ModifyState
{
	CustomScanState css;
	char	   *sql;
	bool		set_processed;	/* the statement's row count is ours */
	List	   *retrieved;		/* attribute numbers of the columns returned */
	bool		returns_columns;	/* may run alone */
	List	   *params;			/* ExprState of each parameter */
	FmgrInfo   *param_out;		/* their output functions */
	FmgrInfo   *column_in;		/* the table's input functions, for RETURNING */
	Oid		   *column_ioparams;
	ResultRelInfo *result_rel;
	bool		done;
	ProjectionInfo *projection; /* of the returned rows, for the ModifyTable */
	List	   *returned;		/* rows for the local RETURNING */
	int			next;			/* the next of them to give */
} ModifyState;

static Node *create_modify_state(CustomScan *cscan);
static void begin_modify(CustomScanState *node, EState *estate, int eflags);
static TupleTableSlot *exec_modify(CustomScanState *node);
static void end_modify(CustomScanState *node);
static void rescan_modify(CustomScanState *node);
static void explain_modify(CustomScanState *node, List *ancestors, ExplainState *es);

static CustomScanMethods modify_plan_methods = {
	.CustomName = "ShardModify",
	.CreateCustomScanState = create_modify_state,
};

static CustomExecMethods modify_exec_methods = {
	.CustomName = "ShardModify",
	.BeginCustomScan = begin_modify,
	.ExecCustomScan = exec_modify,
	.EndCustomScan = end_modify,
	.ReScanCustomScan = rescan_modify,
	.ExplainCustomScan = explain_modify,
};

/*
 * has_triggers tells whether a relation of the plan (locked) has triggers: a
 * statement trigger on a table in ws_dist would run after the shard
 * committed alone.
 */
static bool
has_triggers(Oid relid)
{
	Relation	rel = relation_open(relid, NoLock);
	bool		result = rel->trigdesc != NULL;

	relation_close(rel, NoLock);
	return result;
}

/*
 * uses_postgres_fdw tells whether a server's wrapper is postgres_fdw's, whose
 * fdw_private we read.
 */
static bool
uses_postgres_fdw(Oid serverid)
{
	ForeignDataWrapper *fdw = GetForeignDataWrapper(GetForeignServer(serverid)->fdwid);
	char	   *handler = OidIsValid(fdw->fdwhandler) ? get_func_name(fdw->fdwhandler) : NULL;

	return handler != NULL && strcmp(handler, "postgres_fdw_handler") == 0;
}

/*
 * ws_returns_columns_only tells whether a ModifyTable's RETURNING, if any,
 * lists columns of its table only: nothing to compute that could fail once
 * a shard committed alone.
 */
bool
ws_returns_columns_only(ModifyTable *modify)
{
	ListCell   *lc;

	if (modify->returningLists == NIL)
		return true;
	foreach(lc, linitial(modify->returningLists))
	{
		Var		   *var = (Var *) ((TargetEntry *) lfirst(lc))->expr;

		if (!IsA(var, Var) || var->varattno <= 0)
			return false;
	}
	return true;
}

/*
 * ws_shard_modify_plan puts our node in place of postgres_fdw's when stmt
 * is an UPDATE or DELETE of one slot's foreign table of a distributed table
 * that postgres_fdw runs as a direct modify whose RETURNING asks the shard
 * for no system column (a ctid).
 */
void
ws_shard_modify_plan(PlannedStmt *stmt)
{
	ModifyTable *modify;
	ForeignScan *scan;
	CustomScan *cscan;
	List	   *retrieved;
	ListCell   *lc;
	Oid			relid;

	if ((stmt->commandType != CMD_UPDATE && stmt->commandType != CMD_DELETE) ||
		!IsA(stmt->planTree, ModifyTable) || stmt->subplans != NIL)
		return;
	modify = (ModifyTable *) stmt->planTree;
	scan = (ForeignScan *) outerPlan(modify);
	if (list_length(modify->returningLists) > 1 || list_length(modify->resultRelations) != 1 ||
		modify->plan.initPlan != NIL || scan == NULL || !IsA(scan, ForeignScan) ||
		scan->operation != stmt->commandType || scan->scan.scanrelid == 0 ||
		scan->resultRelation != scan->scan.scanrelid || scan->scan.plan.initPlan != NIL ||
		scan->scan.plan.qual != NIL || scan->fdw_scan_tlist != NIL ||
		list_length(scan->fdw_private) <= FDW_MODIFY_SET_PROCESSED)
		return;
	retrieved = list_nth(scan->fdw_private, FDW_MODIFY_RETRIEVED);
	foreach(lc, retrieved)
		if (lfirst_int(lc) <= 0)
			return;				/* a system column: postgres_fdw's own business */
	relid = rt_fetch(scan->scan.scanrelid, stmt->rtable)->relid;
	if (!ws_shard_is_slot_table(relid) || !uses_postgres_fdw(scan->fs_server) ||
		has_triggers(relid) ||
		(modify->rootRelation != 0 &&
		 has_triggers(rt_fetch(modify->rootRelation, stmt->rtable)->relid)))
		return;

	cscan = makeNode(CustomScan);
	cscan->scan.plan = scan->scan.plan;
	cscan->scan.plan.type = T_CustomScan;
	cscan->scan.scanrelid = scan->scan.scanrelid;
	cscan->flags = 0;
	cscan->custom_plans = NIL;
	cscan->custom_exprs = scan->fdw_exprs;
	cscan->custom_private = lappend(list_copy(scan->fdw_private),
									makeBoolean(ws_returns_columns_only(modify)));
	cscan->custom_scan_tlist = NIL;
	cscan->custom_relids = scan->fs_relids;
	cscan->methods = &modify_plan_methods;
	outerPlan(modify) = (Plan *) cscan;
}

/* The executor's state of our node, from its plan. */
static Node *
create_modify_state(CustomScan *cscan)
{
	ModifyState *state = palloc0(sizeof(ModifyState));

	NodeSetTag(state, T_CustomScanState);
	state->css.methods = &modify_exec_methods;
	state->sql = strVal(list_nth(cscan->custom_private, FDW_MODIFY_SQL));
	state->set_processed = boolVal(list_nth(cscan->custom_private, FDW_MODIFY_SET_PROCESSED));
	state->retrieved = list_nth(cscan->custom_private, FDW_MODIFY_RETRIEVED);
	state->returns_columns = boolVal(list_nth(cscan->custom_private, MODIFY_RETURNS_COLUMNS));
	return (Node *) state;
}

/*
 * tableoid_only returns a copy of our targetlist (postgres_fdw's, with the
 * UPDATE's new values and the row's junk columns) where only the tableoid,
 * by which the ModifyTable finds the result relation, is computed: the
 * rest is never read, and the new values computed again from a row the
 * shard already updated could fail (an overflow, say) after it committed.
 */
static List *
tableoid_only(List *targetlist)
{
	List	   *result = NIL;
	ListCell   *lc;

	foreach(lc, targetlist)
	{
		TargetEntry *entry = flatCopyTargetEntry(lfirst(lc));
		Node	   *expr = (Node *) entry->expr;

		if (!entry->resjunk || entry->resname == NULL || strcmp(entry->resname, "tableoid") != 0)
			entry->expr = (Expr *) makeNullConst(exprType(expr), exprTypmod(expr),
												 exprCollation(expr));
		result = lappend(result, entry);
	}
	return result;
}

/* Prepares the parameters' expressions and output functions, and RETURNING's slot. */
static void
begin_modify(CustomScanState *node, EState *estate, int eflags)
{
	ModifyState *state = (ModifyState *) node;
	CustomScan *cscan = (CustomScan *) node->ss.ps.plan;
	int			n = 0;
	ListCell   *lc;

	if (eflags & EXEC_FLAG_EXPLAIN_ONLY)
		return;
	/* ModifyTable sets up its result relations before its subplan. */
	state->result_rel = estate->es_result_relations[cscan->scan.scanrelid - 1];

	/*
	 * Rows for RETURNING come as heap tuples, as postgres_fdw's do, which
	 * RETURNING may ask for system columns of: a heap tuple slot in place
	 * of the virtual one PostgreSQL 15 gives a custom scan, and a
	 * projection of our targetlist for it.
	 */
	ExecInitScanTupleSlot(estate, &node->ss, RelationGetDescr(node->ss.ss_currentRelation),
						  &TTSOpsHeapTuple);
	state->projection = ExecBuildProjectionInfo(tableoid_only(cscan->scan.plan.targetlist),
												node->ss.ps.ps_ExprContext,
												node->ss.ps.ps_ResultTupleSlot, &node->ss.ps,
												RelationGetDescr(node->ss.ss_currentRelation));
	if (state->retrieved != NIL)
	{
		TupleDesc	desc = RelationGetDescr(node->ss.ss_currentRelation);

		state->column_in = palloc(sizeof(FmgrInfo) * desc->natts);
		state->column_ioparams = palloc(sizeof(Oid) * desc->natts);
		for (int i = 0; i < desc->natts; i++)
		{
			Oid			input;

			if (TupleDescAttr(desc, i)->attisdropped)
				continue;
			getTypeInputInfo(TupleDescAttr(desc, i)->atttypid, &input, &state->column_ioparams[i]);
			fmgr_info(input, &state->column_in[i]);
		}
	}
	state->params = ExecInitExprList(cscan->custom_exprs, &node->ss.ps);
	state->param_out = palloc(sizeof(FmgrInfo) * list_length(cscan->custom_exprs));
	foreach(lc, cscan->custom_exprs)
	{
		Oid			output;
		bool		varlena;

		getTypeOutputInfo(exprType(lfirst(lc)), &output, &varlena);
		fmgr_info(output, &state->param_out[n++]);
	}
}

/* postgres_fdw's context for a shard's error, which its own path adds. */
static void
remote_sql_context(void *arg)
{
	errcontext("remote SQL command: %s", (const char *) arg);
}

/*
 * returned_rows turns the rows the shard returned into tuples of the
 * table's row type, in the query's memory, for the local RETURNING.
 */
static List *
returned_rows(ModifyState *state, PGresult *res, uint64 processed)
{
	Relation	rel = state->css.ss.ss_currentRelation;
	TupleDesc	desc = RelationGetDescr(rel);
	MemoryContext query_memory = state->css.ss.ps.state->es_query_cxt;
	MemoryContext row_memory = state->css.ss.ps.ps_ExprContext->ecxt_per_tuple_memory;
	MemoryContext old = MemoryContextSwitchTo(query_memory);
	Datum	   *values = palloc(sizeof(Datum) * desc->natts);
	bool	   *nulls = palloc(sizeof(bool) * desc->natts);
	List	   *rows = NIL;

	/* Without columns to return (RETURNING 1, say), a row of nulls per row. */
	uint64		nrows = state->retrieved != NIL ? PQntuples(res) : processed;

	if (state->retrieved != NIL && PQnfields(res) != list_length(state->retrieved))
		ereport(ERROR,
				(errcode(ERRCODE_FDW_INVALID_COLUMN_NUMBER),
				 errmsg("remote query result does not match the foreign table")));
	for (uint64 row = 0; row < nrows; row++)
	{
		HeapTuple	tuple;
		int			column = 0;
		ListCell   *lc;

		MemoryContextSwitchTo(row_memory);
		memset(nulls, true, sizeof(bool) * desc->natts);
		foreach(lc, state->retrieved)
		{
			int			i = lfirst_int(lc) - 1;

			nulls[i] = PQgetisnull(res, row, column);
			values[i] = nulls[i] ? (Datum) 0 :
				InputFunctionCall(&state->column_in[i], PQgetvalue(res, row, column),
								  state->column_ioparams[i], TupleDescAttr(desc, i)->atttypmod);
			column++;
		}
		MemoryContextSwitchTo(query_memory);
		tuple = heap_form_tuple(desc, values, nulls);
		/* As postgres_fdw: no transaction of ours wrote it. */
		tuple->t_tableOid = RelationGetRelid(rel);
		HeapTupleHeaderSetXmin(tuple->t_data, InvalidTransactionId);
		HeapTupleHeaderSetXmax(tuple->t_data, InvalidTransactionId);
		HeapTupleHeaderSetCmin(tuple->t_data, InvalidTransactionId);
		rows = lappend(rows, tuple);
		MemoryContextReset(row_memory);
	}
	MemoryContextSwitchTo(old);
	return rows;
}

/*
 * run_statement runs the statement on the shard and keeps what the local
 * RETURNING needs, if any.
 */
static void
run_statement(ModifyState *state)
{
	CustomScanState *node = &state->css;
	EState	   *estate = node->ss.ps.state;
	ExprContext *econtext = node->ss.ps.ps_ExprContext;
	Relation	rel = node->ss.ss_currentRelation;
	RangeTblEntry *rte = exec_rt_fetch(((Scan *) node->ss.ps.plan)->scanrelid, estate);
	Oid			userid = OidIsValid(rte->checkAsUser) ? rte->checkAsUser : GetUserId();
	Oid			serverid = GetForeignTable(RelationGetRelid(rel))->serverid;
	int			nparams = list_length(state->params);
	Datum	   *datums;
	bool	   *nulls;
	const char **values;
	MemoryContext old;
	PGresult   *volatile res;
	uint64		processed;
	int			guc_level;
	int			n = 0;
	ListCell   *lc;

	/* The parameters in the forms postgres_fdw sends them in. */
	old = MemoryContextSwitchTo(econtext->ecxt_per_tuple_memory);
	datums = palloc(sizeof(Datum) * Max(nparams, 1));
	nulls = palloc(sizeof(bool) * Max(nparams, 1));
	values = palloc(sizeof(char *) * Max(nparams, 1));
	foreach(lc, state->params)
	{
		datums[n] = ExecEvalExpr(lfirst(lc), econtext, &nulls[n]);
		n++;
	}
	if (nparams > 0)
	{
		guc_level = ws_shard_parameter_modes();
		for (n = 0; n < nparams; n++)
			values[n] = nulls[n] ? NULL : OutputFunctionCall(&state->param_out[n], datums[n]);
		AtEOXact_GUC(true, guc_level);
	}
	MemoryContextSwitchTo(old);

	if (state->returns_columns && ws_defer_may_run_now(serverid, userid))
	{
		ErrorContextCallback context = {
			.callback = remote_sql_context,
			.arg = state->sql,
			.previous = error_context_stack,
		};

		/* Unprepared: postgres_fdw writes constants in, each key its own text. */
		error_context_stack = &context;
		res = ws_shard_run_alone(serverid, userid, state->sql, nparams, values, false);
		error_context_stack = context.previous;
	}
	else
		res = ws_shard_run_in_transaction(serverid, userid, state->sql, nparams, values);
	PG_TRY();
	{
		processed = strtoul(PQcmdTuples(res), NULL, 10);
		if (state->set_processed)
			estate->es_processed += processed;
		if (state->result_rel->ri_projectReturning == NULL)
		{
			/* For EXPLAIN ANALYZE, as postgres_fdw counts them. */
			if (node->ss.ps.instrument)
				node->ss.ps.instrument->tuplecount += processed;
		}
		else
			state->returned = returned_rows(state, res, processed);
	}
	PG_FINALLY();
	{
		PQclear(res);
	}
	PG_END_TRY();
	ResetExprContext(econtext);
}

/*
 * exec_modify runs the statement, once, then gives the local RETURNING the
 * rows the shard returned, one at a time, as postgres_fdw does: the
 * ModifyTable above computes RETURNING from the scan tuple.
 */
static TupleTableSlot *
exec_modify(CustomScanState *node)
{
	ModifyState *state = (ModifyState *) node;
	TupleTableSlot *slot = node->ss.ss_ScanTupleSlot;

	if (!state->done)
	{
		state->done = true;
		run_statement(state);
	}
	if (state->next >= list_length(state->returned))
		return NULL;
	ExecStoreHeapTuple(list_nth(state->returned, state->next++), slot, false);
	state->result_rel->ri_projectReturning->pi_exprContext->ecxt_scantuple = slot;
	/* The ModifyTable finds the result relation's tableoid in our targetlist. */
	ResetExprContext(node->ss.ps.ps_ExprContext);
	node->ss.ps.ps_ExprContext->ecxt_scantuple = slot;
	return ExecProject(state->projection);
}

static void
end_modify(CustomScanState *node)
{
}

/* A ModifyTable never rescans its subplan; running the statement twice would be wrong. */
static void
rescan_modify(CustomScanState *node)
{
	elog(ERROR, "ShardModify cannot be rescanned");
}

/* EXPLAIN VERBOSE shows the statement, as postgres_fdw does. */
static void
explain_modify(CustomScanState *node, List *ancestors, ExplainState *es)
{
	ModifyState *state = (ModifyState *) node;

	if (es->verbose)
		ExplainPropertyText("Remote SQL", state->sql, es);
}

/*
 * ws_shard_modify_planned tells whether stmt has our node: it may run
 * without postgres_fdw (shard_defer.c).
 */
bool
ws_shard_modify_planned(PlannedStmt *stmt)
{
	Plan	   *scan;

	if (!IsA(stmt->planTree, ModifyTable))
		return false;
	scan = outerPlan(stmt->planTree);
	return scan != NULL && IsA(scan, CustomScan) &&
		((CustomScan *) scan)->methods == &modify_plan_methods;
}

/*
 * ws_shard_modify_register makes the node known by name; called from
 * _PG_init.
 */
void
ws_shard_modify_register(void)
{
	RegisterCustomScanMethods(&modify_plan_methods);
}

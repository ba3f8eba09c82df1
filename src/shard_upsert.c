/*-------------------------------------------------------------------------
 *
 * shard_upsert.c
 *	  INSERT ... ON CONFLICT into a distributed table.
 *
 * Every unique index of a distributed table includes its shard key
 * (ws.distribute_table refuses the others), so rows that conflict share a
 * key, hence a slot: the slot's table on its shard can decide.  Each row
 * goes there alone, as an INSERT ... ON CONFLICT ... RETURNING of its own in
 * postgres_fdw's remote transaction, and the view's trigger returns the row
 * that comes back (as inserted, or as updated), or nothing when the shard
 * skipped it: the row count and the statement's RETURNING are a table's.
 * One round trip per row; an upsert neither streams nor waits for the
 * commit.  Two exceptions:
 *
 * Many rows, no RETURNING
 *	  A top-level INSERT without RETURNING keeps its rows until it ends, or
 *	  until 8MB wait, then sends each slot's rows as one INSERT ... SELECT
 *	  ... ON CONFLICT, each server's in one pipeline (below); the trigger
 *	  returns each row as if stored, and ExecutorRun takes the rows
 *	  the shards skipped off the statement's count.  The shard sees a slot's
 *	  rows in one statement, so a DO UPDATE that meets a key twice fails
 *	  ("cannot affect row a second time") as on a table, unless the 8MB
 *	  sent in between.
 *
 * One row, autocommit
 *	  The single row of an autocommit INSERT (one VALUES list, a RETURNING
 *	  of columns only, if any, no trigger of the user's) goes as a
 *	  statement of its own on a connection of ours when the statement is
 *	  all its transaction does: no other statement in its query string or
 *	  pipeline (shard_defer.c).  Its shard then decides at READ COMMITTED,
 *	  and two sessions counting on one key wait for each other rather than
 *	  fail with postgres_fdw's REPEATABLE READ serialization errors.
 *
 * The clause is translated when the statement is planned, by the planner
 * hook of shard_guard.c (a view has no unique index, so PostgreSQL's planner
 * could not infer an arbiter anyway): ws_upsert_plan writes it as SQL for
 * the shards and leaves in its place an ON CONFLICT DO NOTHING, which the
 * view's trigger makes PostgreSQL ignore, whose WHERE clause is a call of
 * ws._on_conflict(VARIADIC "any") with the SQL and the values: that lives
 * as long as the plan does, and EXPLAIN shows it as the Conflict Filter.
 * The executor never runs it.  The parts of the clause that read the
 * stored row or EXCLUDED run on the shard, so they may use only built-in
 * immutable functions and operators, as postgres_fdw ships; the parts that
 * read neither (a PL/pgSQL variable, now(), a function of the user's) are
 * the call's other arguments, computed here once per execution, when its
 * first row goes, and travel as parameters.  Volatile functions and
 * subqueries are refused: PostgreSQL would run them for each conflicting
 * row only.
 *
 * Elsewhere each row is a statement of its own on the shard, so where two
 * rows of one INSERT ... RETURNING share a key, DO UPDATE updates the
 * stored row twice instead of failing.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "foreign/foreign.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/clauses.h"
#include "optimizer/optimizer.h"
#include "parser/parse_func.h"
#include "parser/parsetree.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/ruleutils.h"

#include "shard_route.h"

/* The stored row's name in the shard's statement. */
#define TARGET_ALIAS "ws_target"

typedef struct ShipContext
{
	const char *table;			/* for messages */
	int			nrow;			/* $1 .. $nrow: the row's columns */
	List	   *locals;			/* computed here: $nrow + 1 on */
} ShipContext;

/*
 * The upserts of the queries running: the list in TopTransactionContext,
 * each upsert in a context of its own under it.
 */
static List *running = NIL;

PG_FUNCTION_INFO_V1(write_scaling_on_conflict);

static ExecutorStart_hook_type prev_executor_start = NULL;
static ExecutorRun_hook_type prev_executor_run = NULL;
static ExecutorEnd_hook_type prev_executor_end = NULL;

static void send_waiting_upserts(WsUpsert *upsert);

static void
refuse(const char *table, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("ON CONFLICT clause of INSERT into distributed table \"%s\" cannot be sent to its shards",
					table),
			 errdetail("%s", detail),
			 errhint("Compute the value in the inserted row and refer to it as EXCLUDED.column.")));
}

/* The shards run what reads the row: built-in and immutable only. */
static bool
not_shippable(Oid funcid, void *context)
{
	return funcid >= FirstGenbkiObjectId || func_volatile(funcid) != PROVOLATILE_IMMUTABLE;
}

/*
 * reads_row tells whether an expression reads the stored row or EXCLUDED
 * (or a CASE's operand, which stands for one).
 */
static bool
reads_row(Node *node, void *context)
{
	if (node == NULL || IsA(node, Query))
		return false;
	if (IsA(node, Var))
		return ((Var *) node)->varlevelsup == 0;
	if (IsA(node, CaseTestExpr))
		return true;
	if (IsA(node, CaseWhen))	/* the walker knows it only inside a CASE */
		return reads_row((Node *) ((CaseWhen *) node)->expr, context) ||
			reads_row((Node *) ((CaseWhen *) node)->result, context);
	return expression_tree_walker(node, reads_row, context);
}

/*
 * ship_mutator copies a part of the ON CONFLICT clause for the shards: what
 * reads the row stays, if the shards may run it; what does not becomes a
 * parameter, its expression added to cxt->locals.
 */
static Node *
ship_mutator(Node *node, ShipContext *cxt)
{
	if (node == NULL)
		return NULL;
	if (!IsA(node, List) && !IsA(node, TargetEntry) && !IsA(node, InferenceElem) &&
		!IsA(node, CaseWhen) && !reads_row(node, NULL))
	{
		Param	   *param;
		Node	   *typed;
		Node	   *folded = eval_const_expressions(NULL, node);

		if (IsA(folded, Const))
			return folded;
		if (contain_subplans(node))
			refuse(cxt->table, "It has a subquery.");
		if (contain_volatile_functions(node))
			refuse(cxt->table, "It calls a volatile function, which would run once for the statement instead of once per conflicting row.");
		cxt->locals = lappend(cxt->locals, node);
		param = makeNode(Param);
		param->paramkind = PARAM_EXTERN;
		param->paramid = cxt->nrow + list_length(cxt->locals);
		param->paramtype = exprType(node);
		param->paramtypmod = exprTypmod(node);
		param->paramcollid = exprCollation(node);
		param->location = -1;
		/* Written with its type, and collation: ($6)::text COLLATE "C". */
		typed = (Node *) makeRelabelType((Expr *) param, param->paramtype, param->paramtypmod,
										 param->paramcollid, COERCE_EXPLICIT_CAST);
		if (OidIsValid(param->paramcollid) &&
			param->paramcollid != get_typcollation(param->paramtype))
		{
			CollateExpr *collate = makeNode(CollateExpr);

			collate->arg = (Expr *) typed;
			collate->collOid = param->paramcollid;
			collate->location = -1;
			typed = (Node *) collate;
		}
		return typed;
	}
	switch (nodeTag(node))
	{
		case T_List:
		case T_TargetEntry:
		case T_InferenceElem:
		case T_Var:
		case T_CaseTestExpr:
		case T_FuncExpr:
		case T_OpExpr:
		case T_DistinctExpr:
		case T_NullIfExpr:
		case T_ScalarArrayOpExpr:
		case T_BoolExpr:
		case T_NullTest:
		case T_BooleanTest:
		case T_CaseExpr:
		case T_CaseWhen:
		case T_CoalesceExpr:
		case T_RelabelType:
		case T_CoerceViaIO:
		case T_ArrayExpr:
		case T_RowExpr:
		case T_CollateExpr:
		case T_FieldSelect:
			break;
		case T_MinMaxExpr:
			if (((MinMaxExpr *) node)->minmaxtype < FirstGenbkiObjectId)
				break;
			/* FALLTHROUGH */
		default:
			refuse(cxt->table, "An expression that reads the stored row or EXCLUDED must be built of columns, constants, and built-in immutable functions and operators.");
	}
	if (check_functions_in_node(node, not_shippable, NULL) ||
		(IsA(node, OpExpr) && ((OpExpr *) node)->opno >= FirstGenbkiObjectId) ||
		(IsA(node, DistinctExpr) && ((DistinctExpr *) node)->opno >= FirstGenbkiObjectId) ||
		(IsA(node, NullIfExpr) && ((NullIfExpr *) node)->opno >= FirstGenbkiObjectId) ||
		(IsA(node, ScalarArrayOpExpr) &&
		 ((ScalarArrayOpExpr *) node)->opno >= FirstGenbkiObjectId))
		refuse(cxt->table, "An expression that reads the stored row or EXCLUDED calls a function or operator that is not built in or not immutable.");
	return expression_tree_mutator(node, ship_mutator, (void *) cxt);
}

/*
 * check_key_kept refuses a DO UPDATE that sets the shard key to anything
 * but itself: the row would stay in the slot of its old key.
 */
static void
check_key_kept(Query *query, Relation view, AttrNumber key)
{
	OnConflictExpr *conflict = query->onConflict;
	ListCell   *lc;

	foreach(lc, conflict->onConflictSet)
	{
		TargetEntry *entry = lfirst(lc);
		Var		   *var = (Var *) entry->expr;

		if (entry->resjunk || entry->resno != key)
			continue;
		if (IsA(var, Var) && var->varlevelsup == 0 && var->varattno == key &&
			(var->varno == query->resultRelation || var->varno == conflict->exclRelIndex))
			continue;
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot update the shard key \"%s\" of distributed table \"%s\"",
						get_attname(RelationGetRelid(view), key, false),
						RelationGetRelationName(view)),
				 errdetail("The key decides which shard holds a row, and an UPDATE leaves the row where it is.")));
	}
}

/*
 * remote_query builds the INSERT that the shards run for each row, for
 * ruleutils to write: the row's columns as parameters, the stored row named
 * TARGET_ALIAS, the clause's other relations (the SELECT or VALUES the rows
 * come from) left empty.
 */
static Query *
remote_query(Query *query, OnConflictExpr *conflict)
{
	Query	   *remote = makeNode(Query);
	int			index = 0;
	ListCell   *lc;

	remote->commandType = CMD_INSERT;
	remote->querySource = QSRC_ORIGINAL;
	remote->canSetTag = true;
	remote->resultRelation = query->resultRelation;
	remote->jointree = makeFromExpr(NIL, NULL);
	remote->onConflict = conflict;
	foreach(lc, query->rtable)
	{
		RangeTblEntry *rte = copyObject(lfirst(lc));

		index++;
		if (index == query->resultRelation)
			rte->alias = makeAlias(TARGET_ALIAS, NIL);
		else if (index != conflict->exclRelIndex)
		{
			rte = makeNode(RangeTblEntry);
			rte->rtekind = RTE_RESULT;
			rte->eref = makeAlias("*RESULT*", NIL);
		}
		remote->rtable = lappend(remote->rtable, rte);
	}
	foreach(lc, query->targetList)
	{
		TargetEntry *entry = lfirst(lc);
		Param	   *param;

		if (entry->resjunk)
			continue;
		param = makeNode(Param);
		param->paramkind = PARAM_EXTERN;
		param->paramid = entry->resno;
		param->paramtype = exprType((Node *) entry->expr);
		param->paramtypmod = -1;
		param->paramcollid = InvalidOid;
		param->location = -1;
		remote->targetList = lappend(remote->targetList,
									 makeTargetEntry((Expr *) param, entry->resno,
													 entry->resname, false));
	}
	return remote;
}

/*
 * deparse_clause writes the ON CONFLICT clause of remote as SQL for the
 * shards: what ruleutils writes for the whole INSERT, less what it writes
 * without the clause.  Names are qualified unless in pg_catalog, the only
 * schema on the path of postgres_fdw's sessions, and values written as
 * postgres_fdw's sessions read them (and strings as standard_conforming_strings
 * reads them, the default there).
 */
static char *
deparse_clause(Query *remote)
{
	int			level = NewGUCNestLevel();
	char	   *whole;
	char	   *prefix;

	(void) set_config_option("search_path", "pg_catalog", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("standard_conforming_strings", "on", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) ws_shard_transmission_modes();	/* undone with level */
	whole = pg_get_querydef(copyObject(remote), false);
	remote->onConflict = NULL;
	prefix = pg_get_querydef(remote, false);
	AtEOXact_GUC(true, level);

	if (strncmp(whole, prefix, strlen(prefix)) != 0)
		elog(ERROR, "could not write the ON CONFLICT clause: \"%s\"", whole);
	return whole + strlen(prefix);
}

/*
 * marker_function returns the OID of ws._on_conflict(VARIADIC "any"),
 * or InvalidOid in a database without the extension.
 */
static Oid
marker_function(void)
{
	Oid			args[1] = {ANYOID};

	return LookupFuncName(list_make2(makeString("ws"), makeString("_on_conflict")),
						  1, args, true);
}

static bool
note_user_function(Oid funcid, void *context)
{
	List	  **functions = (List **) context;

	if (funcid >= FirstNormalObjectId)
		*functions = list_append_unique_oid(*functions, funcid);
	return false;
}

/*
 * user_functions_walker adds to *context the functions of the user's that
 * an expression calls.
 */
static bool
user_functions_walker(Node *node, void *context)
{
	if (node == NULL)
		return false;
	(void) check_functions_in_node(node, note_user_function, context);
	return expression_tree_walker(node, user_functions_walker, context);
}

/*
 * ws_upsert_plan rewrites an INSERT ... ON CONFLICT into view, a distributed
 * table, for the executor (see the file header), and adds to *functions
 * the functions of the user's that the clause calls: they are computed
 * here, or folded into the clause, where the planner does not see them,
 * and the plan must be made again if they change.  Called by the planner
 * hook, before planning, on the rewritten query.
 */
void
ws_upsert_plan(Query *query, Relation view, List **functions)
{
	OnConflictExpr *conflict = copyObject(query->onConflict);
	OnConflictExpr *nothing = makeNode(OnConflictExpr);
	TupleDesc	desc = RelationGetDescr(view);
	ShipContext cxt;
	Const	   *clause;
	Oid			marker;

	/* ON CONSTRAINT names a constraint of the view, which has none. */
	if (OidIsValid(conflict->constraint))
		elog(ERROR, "ON CONSTRAINT on distributed table \"%s\"", RelationGetRelationName(view));
	check_key_kept(query, view, ws_shard_key_column(view));

	cxt.table = RelationGetRelationName(view);
	cxt.nrow = 0;
	for (int i = 0; i < desc->natts; i++)
		if (!TupleDescAttr(desc, i)->attisdropped)
			cxt.nrow++;
	cxt.locals = NIL;
	conflict->arbiterElems = (List *) ship_mutator((Node *) conflict->arbiterElems, &cxt);
	conflict->arbiterWhere = ship_mutator(conflict->arbiterWhere, &cxt);
	conflict->onConflictSet = (List *) ship_mutator((Node *) conflict->onConflictSet, &cxt);
	conflict->onConflictWhere = ship_mutator(conflict->onConflictWhere, &cxt);
	(void) user_functions_walker((Node *) query->onConflict, functions);
	clause = makeConst(TEXTOID, -1, DEFAULT_COLLATION_OID, -1,
					   CStringGetTextDatum(deparse_clause(remote_query(query, conflict))),
					   false, false);

	nothing->action = ONCONFLICT_NOTHING;
	nothing->exclRelIndex = conflict->exclRelIndex;
	nothing->exclRelTlist = conflict->exclRelTlist;
	marker = marker_function();
	if (!OidIsValid(marker))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("function ws._on_conflict does not exist"),
				 errhint("The extension's SQL objects are older than its library: reinstall write_scaling.")));
	nothing->onConflictWhere = (Node *) makeFuncExpr(marker, BOOLOID,
													 lcons(clause, cxt.locals), InvalidOid,
													 InvalidOid, COERCE_EXPLICIT_CALL);
	query->onConflict = nothing;
}

/*
 * marker_call returns the call of ws._on_conflict that an INSERT's plan
 * carries, or NULL.
 */
static FuncExpr *
marker_call(ModifyTable *modify)
{
	Node	   *where = modify->onConflictWhere;
	FuncExpr   *call;

	if (modify->operation != CMD_INSERT || modify->onConflictAction != ONCONFLICT_NOTHING ||
		where == NULL)
		return NULL;
	/* The planner made the qual a list. */
	if (IsA(where, List) && list_length((List *) where) == 1)
		where = linitial((List *) where);
	if (!IsA(where, FuncExpr))
		return NULL;
	call = (FuncExpr *) where;
	if (call->funcid != marker_function() || call->args == NIL ||
		!IsA(linitial(call->args), Const) || ((Const *) linitial(call->args))->constisnull)
		return NULL;
	return call;
}

/*
 * ws._on_conflict(clause, values...) marks an INSERT ... ON CONFLICT into a
 * distributed table in its plan; the executor does not call it.
 */
Datum
write_scaling_on_conflict(PG_FUNCTION_ARGS)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("ws._on_conflict() only marks an INSERT into a distributed table")));
	PG_RETURN_NULL();
}

/*
 * compute_values computes the clause's values that do not read the row, as
 * text for the shards, with the query's parameters: once, when the first
 * row goes, inside the query (a function it calls runs as part of it).
 */
static void
compute_values(WsUpsert *upsert)
{
	MemoryContext old = MemoryContextSwitchTo(upsert->memory);
	ExprContext *econtext = CreateStandaloneExprContext();
	int			i = 0;
	ListCell   *lc;

	Datum	   *datums;
	bool	   *nulls;
	int			level;

	econtext->ecxt_param_list_info = upsert->params;
	upsert->nvalues = list_length(upsert->locals);
	upsert->values = palloc(sizeof(char *) * upsert->nvalues);
	datums = palloc(sizeof(Datum) * upsert->nvalues);
	nulls = palloc(sizeof(bool) * upsert->nvalues);
	foreach(lc, upsert->locals)
	{
		ExprState  *state = ExecInitExprWithParams(lfirst(lc), upsert->params);

		datums[i] = ExecEvalExprSwitchContext(state, econtext, &nulls[i]);
		i++;
	}
	/* Then as text, in the forms postgres_fdw sends. */
	if (upsert->nvalues > 0)
	{
		level = ws_shard_parameter_modes();
		i = 0;
		foreach(lc, upsert->locals)
		{
			Oid			output;
			bool		varlena;

			getTypeOutputInfo(exprType(lfirst(lc)), &output, &varlena);
			upsert->values[i] = nulls[i] ? NULL : OidOutputFunctionCall(output, datums[i]);
			i++;
		}
		AtEOXact_GUC(true, level);
	}
	FreeExprContext(econtext, true);
	upsert->computed = true;
	MemoryContextSwitchTo(old);
}

static void
note_upserts(QueryDesc *queryDesc, Plan *plan)
{
	ModifyTable *modify = (ModifyTable *) plan;
	FuncExpr   *call;
	MemoryContext memory;
	MemoryContext old;
	WsUpsert   *upsert;

	if (plan == NULL || !IsA(plan, ModifyTable) || (call = marker_call(modify)) == NULL)
		return;

	memory = AllocSetContextCreate(TopTransactionContext, "write_scaling upsert",
								   ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(memory);
	upsert = palloc0(sizeof(WsUpsert));
	upsert->memory = memory;
	upsert->query = queryDesc;
	upsert->subid = GetCurrentSubTransactionId();
	upsert->view = rt_fetch(linitial_int(modify->resultRelations),
							queryDesc->plannedstmt->rtable)->relid;
	upsert->clause = TextDatumGetCString(((Const *) linitial(call->args))->constvalue);
	/*
	 * Nothing else of the statement may run after the row (a WITH clause's
	 * INSERT runs at ExecutorFinish, a check option on the returned row):
	 * it could fail the statement once the row went alone.
	 */
	upsert->single_row = plan == queryDesc->plannedstmt->planTree &&
		IsA(outerPlan(plan), Result) && outerPlan(outerPlan(plan)) == NULL &&
		plan->initPlan == NIL && queryDesc->plannedstmt->subplans == NIL &&
		!queryDesc->plannedstmt->hasModifyingCTE && modify->withCheckOptionLists == NIL &&
		ws_returns_columns_only(modify);
	/* Counted by the statement's command tag, which ExecutorRun corrects. */
	upsert->batched = plan == queryDesc->plannedstmt->planTree && modify->canSetTag &&
		modify->returningLists == NIL;
	upsert->locals = list_delete_first(list_copy(call->args));
	upsert->params = queryDesc->params;
	MemoryContextSwitchTo(TopTransactionContext);
	running = lappend(running, upsert);
	MemoryContextSwitchTo(old);
}

static void
upsert_executor_start(QueryDesc *queryDesc, int eflags)
{
	PlannedStmt *stmt = queryDesc->plannedstmt;
	ListCell   *lc;

	if (prev_executor_start != NULL)
		prev_executor_start(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
	if ((eflags & EXEC_FLAG_EXPLAIN_ONLY) != 0 ||
		(stmt->commandType != CMD_INSERT && !stmt->hasModifyingCTE))
		return;
	note_upserts(queryDesc, stmt->planTree);
	foreach(lc, stmt->subplans)
		note_upserts(queryDesc, lfirst(lc));
}

/*
 * upsert_executor_run sends, once the rows of a batched upsert are in, those
 * still waiting, and takes the rows its shards skipped off the statement's
 * count (the trigger had returned each row as if stored).
 */
static void
upsert_executor_run(QueryDesc *queryDesc, ScanDirection direction, uint64 count,
					bool execute_once)
{
	ListCell   *lc;

	if (prev_executor_run != NULL)
		prev_executor_run(queryDesc, direction, count, execute_once);
	else
		standard_ExecutorRun(queryDesc, direction, count, execute_once);
	foreach(lc, running)
	{
		WsUpsert   *upsert = lfirst(lc);

		if (upsert->query != queryDesc || !upsert->batched)
			continue;
		send_waiting_upserts(upsert);
		queryDesc->estate->es_processed -= Min(upsert->skipped, queryDesc->estate->es_processed);
		upsert->skipped = 0;
	}
}

static void
forget_upserts(bool (*gone) (WsUpsert *upsert, void *arg), void *arg)
{
	ListCell   *lc;

	foreach(lc, running)
	{
		WsUpsert   *upsert = lfirst(lc);

		if (gone(upsert, arg))
		{
			running = foreach_delete_current(running, lc);
			MemoryContextDelete(upsert->memory);
		}
	}
}

static bool
of_query(WsUpsert *upsert, void *arg)
{
	return upsert->query == arg;
}

static bool
of_subtransaction(WsUpsert *upsert, void *arg)
{
	return upsert->subid == *(SubTransactionId *) arg;
}

static void
upsert_executor_end(QueryDesc *queryDesc)
{
	if (running != NIL)
		forget_upserts(of_query, queryDesc);
	if (prev_executor_end != NULL)
		prev_executor_end(queryDesc);
	else
		standard_ExecutorEnd(queryDesc);
}

/*
 * ws_upsert_running returns the upsert of the query running now, if it
 * inserts into view with ON CONFLICT, or NULL.
 */
WsUpsert *
ws_upsert_running(Oid view)
{
	QueryDesc  *query;
	ListCell   *lc;

	if (running == NIL)
		return NULL;
	query = ws_running_query();
	foreach(lc, running)
	{
		WsUpsert   *upsert = lfirst(lc);

		if (upsert->query == query && upsert->view == view)
		{
			if (!upsert->computed)
				compute_values(upsert);
			return upsert;
		}
	}
	return NULL;
}

/* --- sending rows ---------------------------------------------------------- */

/*
 * ws_upsert_rows_sql returns the part of a batched upsert's statement that
 * names the columns and reads the rows (send_waiting_upserts), and sets
 * delimiters[n] to what separates the values of the nth column in its
 * array.  Each column's values travel as one array parameter, $1 the first
 * column's: an array of the column's base type, whose elements the shard
 * reads with the type's input function, as it reads a parameter's text (a
 * cast could call a function of its own instead: text to regclass refuses
 * an OID).  The INSERT then applies the column's type modifier and domain.
 * unnest would flatten an array of arrays: array columns travel as text[],
 * each value cast to the column's base type.
 */
char *
ws_upsert_rows_sql(TupleDesc desc, const char *column_list, char *delimiters)
{
	StringInfoData select;
	StringInfoData arrays;
	StringInfoData names;
	int			n = 0;

	initStringInfo(&select);
	initStringInfo(&arrays);
	initStringInfo(&names);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		const char *separator = n > 0 ? ", " : "";
		Oid			base;
		Oid			array;
		int16		typlen;
		bool		typbyval;
		char		typalign;
		Oid			typioparam;
		Oid			func;

		if (att->attisdropped)
			continue;
		n++;
		base = getBaseType(att->atttypid);
		array = get_array_type(base);
		appendStringInfo(&names, "%sv%d", separator, n);
		if (OidIsValid(array) && !OidIsValid(get_element_type(base)))
		{
			appendStringInfo(&select, "%sv%d", separator, n);
			appendStringInfo(&arrays, "%spg_catalog.unnest($%d::%s)", separator, n,
							 format_type_extended(array, -1,
												  FORMAT_TYPE_TYPEMOD_GIVEN | FORMAT_TYPE_FORCE_QUALIFY));
			get_type_io_data(base, IOFunc_input, &typlen, &typbyval, &typalign,
							 &delimiters[n - 1], &typioparam, &func);
		}
		else
		{
			appendStringInfo(&select, "%sv%d::%s", separator, n,
							 format_type_extended(base, -1,
												  FORMAT_TYPE_TYPEMOD_GIVEN | FORMAT_TYPE_FORCE_QUALIFY));
			appendStringInfo(&arrays, "%spg_catalog.unnest($%d::pg_catalog.text[])", separator, n);
			delimiters[n - 1] = ',';
		}
	}
	return psprintf(" (%s) SELECT %s FROM ROWS FROM (%s) AS ws_rows (%s)",
					column_list, select.data, arrays.data, names.data);
}

/*
 * Rows of a batched upsert waiting to be sent, by slot: each slot's rows go
 * as one INSERT ... SELECT ... ON CONFLICT into its table, each column's
 * values an array parameter (ws_upsert_rows_sql), so that the shard checks
 * the rows of a key against each other as PostgreSQL does in one statement
 * ("cannot affect row a second time").  They wait until the statement ends,
 * or until 8MB wait, in a memory context emptied when they are sent.
 */
#define UPSERT_WAIT_BYTES	(8 * 1024 * 1024)

typedef struct UpsertSlot
{
	struct UpsertServer *server;
	int			slot;
	char	   *remote_table;
	int			rows;
	StringInfoData *columns;	/* per column, its values: an array literal */
	char	   *sql;			/* what they go as */
} UpsertSlot;

typedef struct UpsertServer
{
	Oid			serverid;
	int			rows;
	List	   *slots;			/* UpsertSlot, in the order of their first rows */
	PGconn	   *conn;			/* once sending */
} UpsertServer;

typedef struct UpsertRows
{
	MemoryContext memory;		/* the rows, and the lists below */
	Oid			userid;
	const char *table;			/* for messages */
	const char *rows_sql;		/* the statements' part after the table */
	int			ncolumns;
	char	   *delimiters;		/* per column: between its values */
	int			nslots;
	UpsertSlot **slots;			/* by slot number, NULL if none waits */
	List	   *servers;		/* UpsertServer, those with rows waiting */
	Size		bytes;			/* of the values waiting */
} UpsertRows;

/*
 * flush_output sends what libpq holds for conn, a connection in
 * non-blocking mode, waiting interruptibly (and reading what comes
 * meanwhile, so that the shard never waits for us to read).
 */
static void
flush_output(PGconn *conn, const char *sql)
{
	int			rc;

	while ((rc = PQflush(conn)) > 0)
	{
		int			events = WaitLatchOrSocket(MyLatch,
											   WL_LATCH_SET | WL_SOCKET_WRITEABLE |
											   WL_SOCKET_READABLE | WL_EXIT_ON_PM_DEATH,
											   PQsocket(conn), -1L, PG_WAIT_EXTENSION);

		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if ((events & WL_SOCKET_READABLE) && !PQconsumeInput(conn))
			ws_fdw_report_error(ERROR, NULL, conn, false, sql);
	}
	if (rc < 0)
		ws_fdw_report_error(ERROR, NULL, conn, false, sql);
}

/*
 * append_array_value adds value (NULL for NULL) to array, an array literal
 * being written whose values are separated by delimiter: always quoted, so
 * that the empty string, spaces and the word NULL stay what they are.
 */
static void
append_array_value(StringInfo array, const char *value, char delimiter)
{
	if (array->len > 1)
		appendStringInfoChar(array, delimiter);
	if (value == NULL)
	{
		appendStringInfoString(array, "NULL");
		return;
	}
	appendStringInfoChar(array, '"');
	for (;;)
	{
		size_t		plain = strcspn(value, "\"\\");

		appendBinaryStringInfo(array, value, plain);
		if (value[plain] == '\0')
			break;
		appendStringInfoChar(array, '\\');
		appendStringInfoChar(array, value[plain]);
		value += plain + 1;
	}
	appendStringInfoChar(array, '"');
}

/*
 * send_waiting_upserts sends the rows of an upsert that wait, each server's
 * statements in one pipeline (one round trip) on postgres_fdw's connection,
 * in its remote transaction, all servers at once; and adds to
 * upsert->skipped the rows the shards skipped.  After a shard's error,
 * every connection is read to the end and leaves pipeline mode before the
 * error is raised, so that postgres_fdw finds it as it was.  After an
 * interrupt while the servers work, or a connection lost while sending,
 * the connections whose answers were not read stay in pipeline mode, and
 * postgres_fdw gives them up at abort (the shards roll back; in a
 * subtransaction, the rest of the transaction can no longer use those
 * servers).
 */
static void
send_waiting_upserts(WsUpsert *upsert)
{
	UpsertRows *waiting = upsert->waiting;
	int			nparams;
	const char **params;
	UpsertServer *volatile server = NULL;
	UpsertSlot *volatile failed = NULL;
	UpsertServer *volatile failed_server = NULL;
	UpsertSlot *volatile failed_rows = NULL;
	volatile int failed_count = 0;
	PGresult   *volatile error = NULL;
	uint64		skipped = 0;
	ListCell   *lc;
	MemoryContext old;

	if (waiting == NULL || waiting->servers == NIL)
		return;
	old = MemoryContextSwitchTo(waiting->memory);
	nparams = waiting->ncolumns + upsert->nvalues;
	params = palloc(sizeof(char *) * nparams);
	for (int i = 0; i < upsert->nvalues; i++)
		params[waiting->ncolumns + i] = upsert->values[i];
	PG_TRY();
	{
		/* Connections first: a server that is down fails before any sends. */
		foreach(lc, waiting->servers)
		{
			server = lfirst(lc);
			failed = linitial(server->slots);
			failed_count = server->rows;
			server->conn = ws_shard_connection(server->serverid, waiting->userid);
		}
		foreach(lc, waiting->servers)
		{
			ListCell   *ls;

			server = lfirst(lc);
			failed = linitial(server->slots);
			failed_count = server->rows;
			if (PQsetnonblocking(server->conn, 1) != 0 || !PQenterPipelineMode(server->conn))
				ws_fdw_report_error(ERROR, NULL, server->conn, false, failed->sql);
			foreach(ls, server->slots)
			{
				UpsertSlot *rows = lfirst(ls);

				failed = rows;
				for (int i = 0; i < waiting->ncolumns; i++)
				{
					appendStringInfoChar(&rows->columns[i], '}');
					params[i] = rows->columns[i].data;
				}
				/* Non-blocking: libpq sends what the socket takes, keeps the rest. */
				if (!PQsendQueryParams(server->conn, rows->sql, nparams, NULL, params,
									   NULL, NULL, 0))
					ws_fdw_report_error(ERROR, NULL, server->conn, false, rows->sql);
			}
			if (!PQpipelineSync(server->conn))
				ws_fdw_report_error(ERROR, NULL, server->conn, false, failed->sql);
			flush_output(server->conn, failed->sql);
		}
		/* Then each server's answers, to the end. */
		foreach(lc, waiting->servers)
		{
			ListCell   *ls;
			uint64		stored_here = 0;
			PGresult   *sync;

			server = lfirst(lc);
			foreach(ls, server->slots)
			{
				UpsertSlot *rows = lfirst(ls);
				PGresult   *res;

				failed = rows;
				while ((res = ws_shard_wait_result(server->conn, rows->sql)) != NULL)
				{
					if (PQresultStatus(res) == PGRES_COMMAND_OK)
					{
						uint64		stored = strtou64(PQcmdTuples(res), NULL, 10);

						stored_here += stored;
						skipped += rows->rows - Min(stored, rows->rows);
					}
					else if (PQresultStatus(res) != PGRES_PIPELINE_ABORTED && error == NULL)
					{
						error = res;
						failed_server = server;
						failed_rows = rows;
						continue;
					}
					PQclear(res);
				}
			}
			sync = ws_shard_wait_result(server->conn, failed->sql);
			if (PQresultStatus(sync) != PGRES_PIPELINE_SYNC)
				ws_fdw_report_error(ERROR, sync, server->conn, true, failed->sql);
			PQclear(sync);
			if (!PQexitPipelineMode(server->conn) || PQsetnonblocking(server->conn, 0) != 0)
				ws_fdw_report_error(ERROR, NULL, server->conn, false, failed->sql);
			ws_shard_note_routed(server->serverid, stored_here);
		}
		if (error != NULL)
		{
			PGresult   *res = error;

			error = NULL;
			server = failed_server;
			failed = failed_rows;
			failed_count = failed->rows;
			ws_fdw_report_error(ERROR, res, server->conn, true, failed->sql);
		}
	}
	PG_CATCH();
	{
		/* The rows go with the upsert, which the error ends. */
		PQclear(error);
		ws_shard_rethrow_write_error(failed_count, waiting->table, server->serverid,
									 failed->slot, failed->remote_table);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
	upsert->skipped += skipped;
	MemoryContextReset(waiting->memory);
	memset(waiting->slots, 0, sizeof(UpsertSlot *) * waiting->nslots);
	waiting->servers = NIL;
	waiting->bytes = 0;
}

/*
 * wait_row adds a row's values (as text, NULL for NULL) to the rows of
 * upsert waiting for its slot, and sends all that wait past 8MB.
 */
static void
wait_row(WsUpsert *upsert, DistEntry *dist, int slot, const char *const *values)
{
	UpsertRows *waiting = upsert->waiting;
	UpsertSlot *rows;
	MemoryContext old;

	if (waiting == NULL)
	{
		old = MemoryContextSwitchTo(upsert->memory);
		waiting = palloc0(sizeof(UpsertRows));
		waiting->memory = AllocSetContextCreate(upsert->memory, "write_scaling upserts waiting",
												ALLOCSET_DEFAULT_SIZES);
		waiting->userid = ws_dist_mapping_user(dist);
		waiting->table = pstrdup(dist->name);
		waiting->rows_sql = pstrdup(dist->upsert_rows);
		waiting->ncolumns = dist->ncolumns;
		waiting->delimiters = palloc(dist->ncolumns);
		memcpy(waiting->delimiters, dist->upsert_delimiters, dist->ncolumns);
		waiting->nslots = dist->nslots;
		waiting->slots = palloc0(sizeof(UpsertSlot *) * dist->nslots);
		upsert->waiting = waiting;
		MemoryContextSwitchTo(old);
	}
	old = MemoryContextSwitchTo(waiting->memory);
	rows = waiting->slots[slot];
	if (rows == NULL)
	{
		SlotInfo   *info = &dist->slots[slot];
		UpsertServer *server = NULL;
		ListCell   *lc;

		rows = palloc0(sizeof(UpsertSlot));
		rows->slot = slot;
		rows->remote_table = pstrdup(info->remote_table);
		rows->sql = psprintf("INSERT INTO %s AS ws_target%s%s", info->remote_table,
							 waiting->rows_sql, upsert->clause);
		rows->columns = palloc(sizeof(StringInfoData) * waiting->ncolumns);
		for (int i = 0; i < waiting->ncolumns; i++)
		{
			initStringInfo(&rows->columns[i]);
			appendStringInfoChar(&rows->columns[i], '{');
			waiting->bytes += rows->columns[i].maxlen;
		}
		waiting->slots[slot] = rows;
		foreach(lc, waiting->servers)
			if (((UpsertServer *) lfirst(lc))->serverid == info->serverid)
				server = lfirst(lc);
		if (server == NULL)
		{
			server = palloc0(sizeof(UpsertServer));
			server->serverid = info->serverid;
			waiting->servers = lappend(waiting->servers, server);
		}
		server->slots = lappend(server->slots, rows);
		rows->server = server;
	}
	for (int i = 0; i < waiting->ncolumns; i++)
	{
		int			before = rows->columns[i].len;

		append_array_value(&rows->columns[i], values[i], waiting->delimiters[i]);
		waiting->bytes += rows->columns[i].len - before;
	}
	rows->rows++;
	rows->server->rows++;
	MemoryContextSwitchTo(old);
	if (waiting->bytes >= UPSERT_WAIT_BYTES)
		send_waiting_upserts(upsert);
}

/*
 * ws_upsert_route_row sends a row (deformed) of an INSERT ... ON CONFLICT to
 * its slot's table alone, in postgres_fdw's remote transaction, and returns
 * what the trigger returns: the row as the shard stored it, or NULL if the
 * shard skipped it.  The single row of an autocommit statement goes as a
 * statement of its own instead, on our own connection, when the statement is
 * all its transaction does (ws_defer_may_run_now) and the table has no trigger
 * of the user's that could fail it afterwards: one round trip, and the shard's
 * READ COMMITTED rather than postgres_fdw's REPEATABLE READ.  Called in
 * row_context.
 */
Datum
ws_upsert_route_row(Relation view, WsUpsert *upsert, HeapTuple tuple, Datum *values, bool *nulls,
		   MemoryContext caller_context)
{
	TupleDesc	desc = RelationGetDescr(view);
	DistEntry  *dist;
	int			slot = ws_dist_route_slot(view, values, nulls, &dist);
	SlotInfo   *info = &dist->slots[slot];
	int			nparams = dist->ncolumns + upsert->nvalues;
	const char **params = palloc(sizeof(char *) * nparams);
	int			guc_level = ws_dist_row_modes(dist);
	char	   *sql;
	bool		alone;
	PGresult   *volatile res = NULL;
	HeapTuple	stored = NULL;

	for (int i = 0, n = 0; i < desc->natts; i++)
		if (!TupleDescAttr(desc, i)->attisdropped)
			params[n++] = nulls[i] ? NULL : OutputFunctionCall(&dist->out_functions[i], values[i]);
	if (guc_level >= 0)
		AtEOXact_GUC(true, guc_level);
	for (int i = 0; i < upsert->nvalues; i++)
		params[dist->ncolumns + i] = upsert->values[i];

	/* A row waiting for the commit goes first, with its own error. */
	ws_defer_flush();
	/* A trigger of the user's could still fail the statement: not alone. */
	alone = upsert->single_row && ws_shard_routes_only(view) &&
		ws_defer_may_run_now(info->serverid, ws_dist_mapping_user(dist));
	if (upsert->batched && !alone)
	{
		wait_row(upsert, dist, slot, params);
		return ws_returned_row(tuple, caller_context);
	}
	sql = psprintf("INSERT INTO %s AS ws_target (%s) VALUES %s%s RETURNING %s", info->remote_table,
				   dist->column_list, dist->parameters, upsert->clause, dist->column_list);
	PG_TRY();
	{
		if (alone)
			res = ws_shard_run_alone(info->serverid, ws_dist_mapping_user(dist), sql, nparams, params, true);
		else
			res = ws_shard_run_in_transaction(info->serverid, ws_dist_mapping_user(dist), sql,
											  nparams, params);
	}
	PG_CATCH();
	{
		ws_shard_rethrow_write_error(1, dist->name, info->serverid, slot, info->remote_table);
	}
	PG_END_TRY();

	PG_TRY();
	{
		if (PQntuples(res) == 1)
		{
			for (int i = 0, n = 0; i < desc->natts; i++)
			{
				Form_pg_attribute att = TupleDescAttr(desc, i);

				nulls[i] = att->attisdropped || PQgetisnull(res, 0, n);
				values[i] = nulls[i] ? (Datum) 0 :
					InputFunctionCall(&dist->in_functions[i], PQgetvalue(res, 0, n),
									  dist->typioparams[i], att->atttypmod);
				if (!att->attisdropped)
					n++;
			}
			ws_shard_note_routed(info->serverid, 1);
			MemoryContextSwitchTo(caller_context);
			stored = heap_form_tuple(desc, values, nulls);
		}
	}
	PG_FINALLY();
	{
		PQclear(res);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(caller_context);
	return PointerGetDatum(stored);
}


/* An error ends a query without ExecutorEnd. */
static void
upsert_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_COMMIT ||
		event == XACT_EVENT_PREPARE || event == XACT_EVENT_PARALLEL_ABORT)
		running = NIL;			/* gone with TopTransactionContext */
}

static void
upsert_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB && running != NIL)
		forget_upserts(of_subtransaction, &mySubid);
}

/*
 * ws_shard_upsert_register installs the executor hooks; called from
 * _PG_init.
 */
void
ws_shard_upsert_register(void)
{
	prev_executor_start = ExecutorStart_hook;
	ExecutorStart_hook = upsert_executor_start;
	prev_executor_run = ExecutorRun_hook;
	ExecutorRun_hook = upsert_executor_run;
	prev_executor_end = ExecutorEnd_hook;
	ExecutorEnd_hook = upsert_executor_end;
	RegisterXactCallback(upsert_xact_callback, NULL);
	RegisterSubXactCallback(upsert_subxact_callback, NULL);
}

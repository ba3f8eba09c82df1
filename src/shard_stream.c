/*-------------------------------------------------------------------------
 *
 * shard_stream.c
 *	  Large inserts into a distributed table, streamed to the shards.
 *
 * A routed INSERT buffers its rows until the statement ends: the shards
 * wait while the coordinator produces rows, then the coordinator waits
 * while the shards insert.  A stream (shard_send.c) instead hands each
 * server its share in pieces while the statement runs, through one COPY
 * of its own held open on postgres_fdw's connection: producing and
 * inserting overlap.  Two statements stream:
 *
 * COPY ... FROM STDIN
 *	  Here COPY's parser hands each row straight to the router, without the
 *	  view's INSTEAD OF trigger (and its tuple per row).  COPY's own defaults
 *	  and error context serve as ever.
 *
 * INSERT ... SELECT, and any INSERT the planner expects 1,000 rows of
 *	  The view's trigger routes each row as usual, into the stream.  (An
 *	  INSERT of a few rows keeps its buffers, and the single row of an
 *	  autocommit INSERT its one round trip: shard_defer.c.)
 *
 * A connection in the middle of a COPY can serve nothing else, so a
 * statement streams only when nothing of the user's runs until it ends:
 * for COPY, the copied columns' types and the other columns' defaults are
 * built in; for INSERT, the table's column types are built in and the plan
 * calls no function of the user's (the planner lists those in invalItems)
 * and reads no foreign or partitioned table.  The view's own triggers must
 * be its only ones, and there is no WHERE clause (COPY) or ON CONFLICT
 * (INSERT).  Every other insert keeps its buffers, as before.
 *
 * What that leaves: a built-in function that runs SQL of its own
 * (query_to_xml, say) reading a foreign table of a shard server, or a sort
 * with an operator class of the user's.  Such a use of the connection fails
 * cleanly ("another command is already in progress"): an error ends the
 * open COPYs before postgres_fdw rolls back on their connections.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/relation.h"
#include "access/table.h"
#include "access/transam.h"
#include "access/xact.h"
#include "commands/copy.h"
#include "commands/progress.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/nodeFuncs.h"
#include "parser/parse_relation.h"
#include "parser/parsetree.h"
#include "pgstat.h"
#include "rewrite/rewriteHandler.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/rls.h"

#include "shard.h"

/* Fewer rows expected: the INSERT keeps its buffers (and one round trip for one row). */
#define WS_STREAM_MIN_ROWS	1000

static ProcessUtility_hook_type prev_process_utility = NULL;
static ExecutorStart_hook_type prev_executor_start = NULL;
static ExecutorEnd_hook_type prev_executor_end = NULL;

/* The INSERT whose rows stream, while it runs: into what, from where. */
static QueryDesc *streaming_query = NULL;
static Oid	streaming_view = InvalidOid;
static SubTransactionId streaming_subid = InvalidSubTransactionId;

static bool
is_user_defined(Oid func_id, void *context)
{
	return func_id >= FirstNormalObjectId;
}

/* Also a cast to a domain of the user's, whose checks may call anything. */
static bool
calls_user_function(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (check_functions_in_node(node, is_user_defined, context))
		return true;
	if (IsA(node, CoerceToDomain) &&
		((CoerceToDomain *) node)->resulttype >= FirstNormalObjectId)
		return true;
	return expression_tree_walker(node, calls_user_function, context);
}

/*
 * has_user_types tells whether a column of a relation has a type of the
 * user's: its input function, or a domain's checks, may call anything.
 */
static bool
has_user_types(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);

	for (int i = 0; i < desc->natts; i++)
		if (!TupleDescAttr(desc, i)->attisdropped &&
			TupleDescAttr(desc, i)->atttypid >= FirstNormalObjectId)
			return true;
	return false;
}

/*
 * streams_safely tells whether COPY into view, of the columns attnums, runs
 * nothing but built-in code: see the file header.
 */
static bool
streams_safely(Relation view, List *attnums)
{
	TupleDesc	desc = RelationGetDescr(view);

	if (!ws_shard_routes_only(view))
		return false;
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute attr = TupleDescAttr(desc, i);
		Node	   *fill;

		if (attr->attisdropped)
			continue;
		fill = list_member_int(attnums, attr->attnum) ? NULL :
			build_column_default(view, attr->attnum);

		/* Its input function or default, and a domain's checks: built in. */
		if ((fill != NULL || list_member_int(attnums, attr->attnum)) &&
			attr->atttypid >= FirstNormalObjectId)
			return false;
		if (calls_user_function(fill, NULL))
			return false;
	}
	return true;
}

/*
 * copy_streamed runs COPY ... FROM STDIN into a distributed table as a
 * stream to its shards, if it may (see the file header); returns false,
 * having done nothing, if it may not.
 */
static bool
copy_streamed(ParseState *pstate, CopyStmt *stmt, uint64 *processed)
{
	Relation	view;
	List	   *attnums;
	ParseNamespaceItem *item;
	RangeTblEntry *rte;
	ListCell   *lc;
	CopyFromState cstate;
	EState	   *estate;
	ExprContext *econtext;
	Datum	   *values;
	bool	   *nulls;
	RouteStream *stream;
	ErrorContextCallback errcallback;
	int64		rows = 0;

	if (!stmt->is_from || stmt->is_program || stmt->filename != NULL ||
		stmt->whereClause != NULL || stmt->relation == NULL)
		return false;
	foreach(lc, stmt->options)
		if (strcmp(((DefElem *) lfirst(lc))->defname, "freeze") == 0)
			return false;

	/* DoCopy's lock: the trigger's COPY would take the same. */
	view = table_openrv(stmt->relation, RowExclusiveLock);
	attnums = view->rd_rel->relkind == RELKIND_VIEW ?
		CopyGetAttnums(RelationGetDescr(view), view, stmt->attlist) : NIL;
	if (attnums == NIL || !streams_safely(view, attnums) ||
		check_enable_rls(RelationGetRelid(view), InvalidOid, true) == RLS_ENABLED)
	{
		table_close(view, NoLock);
		return false;
	}

	/* DoCopy's checks. */
	item = addRangeTableEntryForRelation(pstate, view, RowExclusiveLock, NULL, false, false);
	rte = item->p_rte;
	rte->requiredPerms = ACL_INSERT;
	foreach(lc, attnums)
		rte->insertedCols = bms_add_member(rte->insertedCols,
										   lfirst_int(lc) - FirstLowInvalidHeapAttributeNumber);
	ExecCheckRTPerms(pstate->p_rtable, true);
	if (XactReadOnly && !view->rd_islocaltemp)
		PreventCommandIfReadOnly("COPY FROM");
	PreventCommandIfParallelMode("COPY FROM");

	ereport(DEBUG1,
			(errmsg_internal("COPY into distributed table \"%s\" streams to its shards",
							 RelationGetRelationName(view))));
	cstate = BeginCopyFrom(pstate, view, NULL, NULL, false, NULL, stmt->attlist, stmt->options);
	estate = CreateExecutorState();
	econtext = GetPerTupleExprContext(estate);
	values = palloc(sizeof(Datum) * RelationGetDescr(view)->natts);
	nulls = palloc(sizeof(bool) * RelationGetDescr(view)->natts);
	stream = ws_route_stream_begin(view);

	/* Bad input names its line; a shard's error, found later, does not. */
	errcallback.callback = CopyFromErrorCallback;
	errcallback.arg = (void *) cstate;

	PG_TRY();
	{
		for (;;)
		{
			MemoryContext old;
			bool		more;

			CHECK_FOR_INTERRUPTS();
			ResetPerTupleExprContext(estate);
			old = MemoryContextSwitchTo(GetPerTupleMemoryContext(estate));
			errcallback.previous = error_context_stack;
			error_context_stack = &errcallback;
			more = NextCopyFrom(cstate, econtext, values, nulls);
			if (more)
			{
				ws_route_stream_row(stream, values, nulls);
				pgstat_progress_update_param(PROGRESS_COPY_TUPLES_PROCESSED, ++rows);
			}
			error_context_stack = errcallback.previous;
			MemoryContextSwitchTo(old);
			if (!more)
				break;
			ws_route_stream_send(stream);
		}
		*processed = ws_route_stream_end(stream);
	}
	PG_CATCH();
	{
		ws_route_stream_abort(stream);
		PG_RE_THROW();
	}
	PG_END_TRY();

	EndCopyFrom(cstate);
	FreeExecutorState(estate);
	table_close(view, NoLock);
	return true;
}

static void
copy_process_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
					 ProcessUtilityContext context, ParamListInfo params,
					 QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	if (IsA(pstmt->utilityStmt, CopyStmt))
	{
		ParseState *pstate = make_parsestate(NULL);
		uint64		processed;

		pstate->p_sourcetext = queryString;
		pstate->p_queryEnv = queryEnv;
		if (copy_streamed(pstate, (CopyStmt *) pstmt->utilityStmt, &processed))
		{
			if (qc)
				SetQueryCompletion(qc, CMDTAG_COPY, processed);
			free_parsestate(pstate);
			return;
		}
		free_parsestate(pstate);
	}
	if (prev_process_utility != NULL)
		prev_process_utility(pstmt, queryString, readOnlyTree, context, params,
							 queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);
}

/*
 * insert_may_stream returns the distributed table an INSERT's plan may
 * stream its rows to (see the file header), or InvalidOid.
 */
static Oid
insert_may_stream(PlannedStmt *plan, int eflags)
{
	ModifyTable *modify = (ModifyTable *) plan->planTree;
	RangeTblEntry *target;
	ListCell   *lc;
	Relation	view;
	bool		routes_only;

	if (plan->commandType != CMD_INSERT || plan->hasModifyingCTE || plan->invalItems != NIL ||
		(eflags & (EXEC_FLAG_EXPLAIN_ONLY | EXEC_FLAG_SKIP_TRIGGERS)) != 0 ||
		list_length(plan->resultRelations) != 1 || !IsA(modify, ModifyTable) ||
		modify->onConflictAction != ONCONFLICT_NONE || outerPlan(modify) == NULL ||
		outerPlan(modify)->plan_rows < WS_STREAM_MIN_ROWS)
		return InvalidOid;
	foreach(lc, plan->rtable)
	{
		RangeTblEntry *rte = lfirst(lc);

		if (rte->rtekind == RTE_RELATION &&
			(rte->relkind == RELKIND_FOREIGN_TABLE || rte->relkind == RELKIND_PARTITIONED_TABLE))
			return InvalidOid;
	}
	target = rt_fetch(linitial_int(plan->resultRelations), plan->rtable);
	if (target->relkind != RELKIND_VIEW)
		return InvalidOid;
	/* Locked by now, as the plan's relations are. */
	view = relation_open(target->relid, NoLock);
	routes_only = ws_shard_routes_only(view) && !has_user_types(view);
	relation_close(view, NoLock);
	return routes_only ? target->relid : InvalidOid;
}

static void
stream_executor_start(QueryDesc *queryDesc, int eflags)
{
	if (prev_executor_start != NULL)
		prev_executor_start(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
	if (streaming_query == NULL)
	{
		Oid			view = insert_may_stream(queryDesc->plannedstmt, eflags);

		if (OidIsValid(view))
		{
			ereport(DEBUG1,
					(errmsg_internal("INSERT into distributed table \"%s\" streams to its shards",
									 get_rel_name(view))));
			streaming_query = queryDesc;
			streaming_view = view;
			streaming_subid = GetCurrentSubTransactionId();
		}
	}
}

static void
stream_executor_end(QueryDesc *queryDesc)
{
	if (prev_executor_end != NULL)
		prev_executor_end(queryDesc);
	else
		standard_ExecutorEnd(queryDesc);
	if (queryDesc == streaming_query)
	{
		streaming_query = NULL;
		ws_route_stream_statement_end();
	}
}

/*
 * ws_shard_streaming_now tells whether rows inserted into view now belong
 * to the INSERT that streams: it is the query running, in the
 * subtransaction it began in.
 */
bool
ws_shard_streaming_now(Oid view)
{
	return streaming_query != NULL && ws_running_query() == streaming_query &&
		view == streaming_view && GetCurrentSubTransactionId() == streaming_subid;
}

/* An error ends the INSERT without ExecutorEnd. */
static void
forget_query_at_abort(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_COMMIT ||
		event == XACT_EVENT_PREPARE || event == XACT_EVENT_PARALLEL_ABORT)
		streaming_query = NULL;
}

static void
forget_query_at_subabort(SubXactEvent event, SubTransactionId mySubid,
						 SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB && mySubid == streaming_subid)
		streaming_query = NULL;
}

/*
 * ws_shard_stream_register installs the hooks; called before shard_defer.c
 * installs its own, which then see a streamed COPY as a statement like any
 * other.
 */
void
ws_shard_stream_register(void)
{
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = copy_process_utility;
	prev_executor_start = ExecutorStart_hook;
	ExecutorStart_hook = stream_executor_start;
	prev_executor_end = ExecutorEnd_hook;
	ExecutorEnd_hook = stream_executor_end;
	RegisterXactCallback(forget_query_at_abort, NULL);
	RegisterSubXactCallback(forget_query_at_subabort, NULL);
}

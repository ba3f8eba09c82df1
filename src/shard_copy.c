/*-------------------------------------------------------------------------
 *
 * shard_copy.c
 *	  COPY FROM STDIN into a distributed table, streamed to the shards.
 *
 * Through the view's INSTEAD OF trigger, COPY forms a tuple for each row
 * and calls the trigger with it, and the shards get their rows only when
 * the statement ends: the coordinator parses while the shards wait, then
 * the shards insert while the coordinator waits.  Here the rows COPY parses
 * go straight to the router, and each shard gets its share in pieces while
 * the COPY still runs, through one COPY of its own held open on
 * postgres_fdw's connection (shard_route.c): parsing and inserting overlap.
 *
 * A connection in the middle of a COPY can serve nothing else, so this path
 * is taken only when nothing but COPY's parsing runs until the end: the
 * copied columns' types and the other columns' defaults are built in, so no
 * user code can query a foreign table meanwhile; the view's only triggers
 * are its routing ones (which this path stands in for); and the data comes
 * from the client, with no WHERE clause.  Every other COPY into a
 * distributed table goes through the trigger.
 *
 * The rows are the same either way: COPY's own parser reads them, fills in
 * the defaults and reports bad input with its usual context, and the rows
 * go in the same remote transactions.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "access/transam.h"
#include "access/xact.h"
#include "commands/copy.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/nodeFuncs.h"
#include "parser/parse_relation.h"
#include "rewrite/rewriteHandler.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/rls.h"

#include "shard.h"

static ProcessUtility_hook_type prev_process_utility = NULL;

static bool
is_user_defined(Oid func_id, void *context)
{
	return func_id >= FirstNormalObjectId;
}

static bool
calls_user_function(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (check_functions_in_node(node, is_user_defined, context))
		return true;
	return expression_tree_walker(node, calls_user_function, context);
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
				ws_route_stream_row(stream, values, nulls);
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
 * ws_shard_copy_register installs the hook; called before shard_defer.c
 * installs its own, which then sees a streamed COPY as a statement like any
 * other.
 */
void
ws_shard_copy_register(void)
{
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = copy_process_utility;
}

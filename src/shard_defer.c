/*-------------------------------------------------------------------------
 *
 * shard_defer.c
 *	  The single row of an autocommit INSERT into a distributed table, held
 *	  until commit and then sent alone, in one round trip.
 *
 * postgres_fdw wraps every use of a shard in a remote transaction: START
 * TRANSACTION, the statement, COMMIT, three round trips.  A transaction
 * whose only remote write is one row needs none of that: at commit the row
 * goes alone, as a statement that commits on the shard by itself, on a
 * connection of our own (shard_conn.c).
 *
 * When a row may wait
 *	  Only at the end of the transaction's first top-level statement,
 *	  outside a transaction block and any savepoint, before the transaction
 *	  used postgres_fdw in any way (a routed write, a query over a foreign
 *	  table, an insert into a partitioned table, which may route to foreign
 *	  partitions) and while ws.buffered_insert holds no rows: then the row
 *	  is the transaction's only remote write, and no flush at commit can
 *	  need postgres_fdw after postgres_fdw has committed.  And only with the
 *	  library preloaded, so that our callbacks are older than postgres_fdw's.  Our commit callback runs after those of bulk.c and
 *	  postgres_fdw (callbacks run newest first, and they register after
 *	  us), so everything else that can fail at commit has, before the row
 *	  goes.  Like postgres_fdw's own commits, the row stays committed on the
 *	  shard if the local commit fails after that.
 *
 * Statements that cannot wait
 *	  An autocommit single-row upsert, and an UPDATE or DELETE by key, need
 *	  the shard's answer before the statement ends; they commit on the
 *	  shard at once (ws_defer_may_run_now), and only when the statement is
 *	  all its transaction does.
 *
 * When it cannot wait any longer
 *	  Anything the transaction does before its commit (a statement, a
 *	  utility command other than transaction control, a routed write) sends
 *	  the row through postgres_fdw first, so the rest of the transaction
 *	  reads it and commits with it.  If that happens inside a subtransaction
 *	  (an AFTER trigger with an exception block, say) that then rolls back,
 *	  the row, which belongs to the enclosing statement, waits again.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_class.h"
#include "executor/executor.h"
#include "libpq-fe.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "optimizer/planner.h"
#include "parser/parsetree.h"
#include "tcop/pquery.h"
#include "tcop/utility.h"
#include "utils/memutils.h"

#include "bulk.h"
#include "guc.h"
#include "shard.h"

/*
 * From libpq/libpq.h, which cannot be included here: it brings in
 * libpq-be.h, and with it GSSAPI's headers, which a Debian server build
 * does not install.
 */
extern void pq_startmsgread(void);
extern void pq_endmsgread(void);
extern bool pq_is_reading_msg(void);
extern int	pq_peekbyte(void);
extern bool pq_buffer_has_data(void);

typedef struct DeferredRow
{
	Oid			serverid;
	Oid			userid;			/* whose user mapping (ws_shard_mapping_user) */
	char	   *sql;			/* with parameters, to send alone */
	char	   *literals;		/* with the values, for postgres_fdw */
	int			nvalues;
	char	  **values;			/* NULL for NULL */
	char	   *table;			/* for messages */
	int			slot;
	char	   *remote_table;
} DeferredRow;

/* In TopTransactionContext. */
static DeferredRow *waiting = NULL;
static DeferredRow *sent = NULL;	/* through postgres_fdw, in sent_in */
static SubTransactionId sent_in = InvalidSubTransactionId;

static bool preloaded = false;
static bool committing = false; /* the commit's callbacks have begun */
static int	nesting = 0;		/* planning or statements inside statements */
static QueryDesc *running_query = NULL;
static int	statements = 0;		/* top-level statements this transaction */
static bool fdw_used = false;

static void defer_commit_begins(XactEvent event, void *arg);

static ExecutorStart_hook_type prev_executor_start = NULL;
static ExecutorRun_hook_type prev_executor_run = NULL;
static ExecutorFinish_hook_type prev_executor_finish = NULL;
static ProcessUtility_hook_type prev_process_utility = NULL;
static planner_hook_type prev_planner = NULL;

/*
 * ws_defer_note_fdw_use records that the transaction used postgres_fdw: no
 * row may wait for the commit any more.
 */
void
ws_defer_note_fdw_use(void)
{
	fdw_used = true;
}

/*
 * ws_defer_may_wait tells whether the single row of the statement ending
 * now, for serverid under userid's user mapping, may wait for the commit
 * (see the file header).
 */
bool
ws_defer_may_wait(Oid serverid, Oid userid)
{
	return ws_shard_one_round_trip && preloaded && !committing &&
		!ws_bulk_flushing_at_commit() && waiting == NULL && sent == NULL &&
		!fdw_used && nesting == 1 && statements == 1 && !IsTransactionBlock() &&
		GetCurrentTransactionNestLevel() == 1 && !ws_bulk_has_rows() &&
		ws_shard_can_run_alone(serverid, userid);
}

/*
 * next_message_is_sync tells whether the client's next message, already
 * read from the socket, is a Sync: the Execute running now is the last of
 * its implicit transaction.  Peeking changes nothing: the message is read
 * as usual afterwards.
 */
static bool
next_message_is_sync(void)
{
	int			next;

	if (pq_is_reading_msg() || !pq_buffer_has_data())
		return false;
	pq_startmsgread();
	next = pq_peekbyte();
	pq_endmsgread();
	return next == 'S';
}

/*
 * ws_defer_may_run_now tells whether the statement running now, for
 * serverid under userid's user mapping, may commit on the shard at once,
 * alone: ws_defer_may_wait's conditions, and the statement is all its
 * transaction will do.  Its portal must run this one plan (a rule can add
 * others), and come from a simple Query message with one statement
 * (several make an implicit transaction block) or from an Execute message
 * that a Sync follows: in a pipeline, Execute messages before the Sync
 * share one transaction, which must roll back whole.  A portal of the
 * extended protocol runs a plan of the plan cache; a Query message's, its
 * own, and it is unnamed and hidden from pg_cursors (an SPI cursor is
 * not; a background worker's portal may run a string of statements in one
 * transaction).
 */
bool
ws_defer_may_run_now(Oid serverid, Oid userid)
{
	Portal		portal = ActivePortal;

	if (running_query == NULL || portal == NULL || list_length(portal->stmts) != 1 ||
		linitial(portal->stmts) != running_query->plannedstmt ||
		MyBackendType != B_BACKEND || !ws_defer_may_wait(serverid, userid))
		return false;
	if (portal->cplan == NULL)
		return !portal->visible && portal->name[0] == '\0';
	return next_message_is_sync();
}

/*
 * ws_defer_single_row holds back the single row of an INSERT, which
 * ws_defer_may_wait allowed, to go under userid's user mapping.  sql takes
 * the values as parameters; literals has them written in.
 */
void
ws_defer_single_row(Oid serverid, Oid userid, const char *sql, const char *literals,
					int nvalues, const char *const *values, const char *table,
					int slot, const char *remote_table)
{
	MemoryContext old;
	DeferredRow *row;

	old = MemoryContextSwitchTo(TopTransactionContext);
	row = palloc(sizeof(DeferredRow));
	row->serverid = serverid;
	row->userid = userid;
	row->sql = pstrdup(sql);
	row->literals = pstrdup(literals);
	row->nvalues = nvalues;
	row->values = palloc(sizeof(char *) * nvalues);
	for (int i = 0; i < nvalues; i++)
		row->values[i] = values[i] ? pstrdup(values[i]) : NULL;
	row->table = pstrdup(table);
	row->slot = slot;
	row->remote_table = pstrdup(remote_table);
	MemoryContextSwitchTo(old);
	waiting = row;

	/* Be the first callback at commit, to know when it begins. */
	UnregisterXactCallback(defer_commit_begins, NULL);
	RegisterXactCallback(defer_commit_begins, NULL);
}

/*
 * ws_defer_flush sends the waiting row, if any, through postgres_fdw now.
 */
void
ws_defer_flush(void)
{
	DeferredRow *row = waiting;

	if (row == NULL)
		return;
	/* postgres_fdw may have committed: no remote transaction may begin. */
	if (committing)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("a statement run at commit needs the row inserted into \"%s\", which waits to go to its shard",
						row->table),
				 errhint("SET write_scaling.shard_one_round_trip = off for such transactions.")));
	waiting = NULL;
	/* In a subtransaction, remember the row, in case it rolls back. */
	if (GetCurrentTransactionNestLevel() > 1)
	{
		sent = row;
		sent_in = GetCurrentSubTransactionId();
	}
	ws_shard_insert_row(row->serverid, row->userid, row->literals, row->table,
						row->slot, row->remote_table);
}

/*
 * send_alone sends the waiting row at commit, as a statement of its own.
 */
static void
send_alone(void)
{
	DeferredRow *row = waiting;

	waiting = NULL;
	PG_TRY();
	{
		PQclear(ws_shard_run_alone(row->serverid, row->userid, row->sql, row->nvalues,
								   (const char *const *) row->values, true));
	}
	PG_CATCH();
	{
		ws_shard_rethrow_write_error(1, row->table, row->serverid, row->slot, row->remote_table);
	}
	PG_END_TRY();
}

/*
 * may_use_fdw tells whether a plan may use postgres_fdw: it reads or writes
 * a foreign table, or inserts into a partitioned table (whose partitions
 * may be foreign tables, found only as rows are routed).  An UPDATE or
 * DELETE of one slot runs alone or uses postgres_fdw through
 * ws_shard_connection, which notes it.
 */
static bool
may_use_fdw(PlannedStmt *plan)
{
	ListCell   *lc;

	/* It says when it does (shard_modify.c). */
	if (ws_shard_modify_planned(plan))
		return false;

	foreach(lc, plan->rtable)
	{
		RangeTblEntry *rte = lfirst(lc);

		if (rte->rtekind == RTE_RELATION && rte->relkind == RELKIND_FOREIGN_TABLE)
			return true;
	}
	foreach(lc, plan->resultRelations)
	{
		RangeTblEntry *rte = rt_fetch(lfirst_int(lc), plan->rtable);

		if (rte->relkind == RELKIND_PARTITIONED_TABLE)
			return true;
	}
	return false;
}

static void
defer_executor_start(QueryDesc *queryDesc, int eflags)
{
	if (nesting == 0)
		statements++;
	/*
	 * Only while a row may still come to wait (or the commit flushes
	 * buffered rows): each query pays for this.
	 */
	if ((statements <= 1 && !fdw_used) || ws_bulk_flushing_at_commit())
	{
		if (may_use_fdw(queryDesc->plannedstmt))
		{
			fdw_used = true;
			ws_bulk_check_fdw_use();
		}
	}
	ws_defer_flush();
	if (prev_executor_start != NULL)
		prev_executor_start(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
}

/* Functions the planner runs (constant folding) run inside a statement. */
static PlannedStmt *
defer_planner(Query *parse, const char *query_string, int cursorOptions,
			  ParamListInfo boundParams)
{
	PlannedStmt *result;

	nesting++;
	PG_TRY();
	{
		if (prev_planner != NULL)
			result = prev_planner(parse, query_string, cursorOptions, boundParams);
		else
			result = standard_planner(parse, query_string, cursorOptions, boundParams);
	}
	PG_FINALLY();
	{
		nesting--;
	}
	PG_END_TRY();
	return result;
}

/*
 * ws_running_query returns the query whose ExecutorRun or ExecutorFinish
 * (where AFTER statement triggers fire) runs now, if any: shard_stream.c
 * tells the streaming INSERT's triggers from those of a nested one, and
 * shard_upsert.c the upsert's from those of a nested insert.
 */
QueryDesc *
ws_running_query(void)
{
	return running_query;
}

/*
 * ws_running_query_swap makes query the one running, returning the one
 * that was: a COPY run by a function of ours (bulk.c) fires the triggers of
 * no query.
 */
QueryDesc *
ws_running_query_swap(QueryDesc *query)
{
	QueryDesc  *outer = running_query;

	running_query = query;
	return outer;
}

static void
defer_executor_run(QueryDesc *queryDesc, ScanDirection direction, uint64 count,
				   bool execute_once)
{
	QueryDesc  *outer = running_query;

	nesting++;
	running_query = queryDesc;
	PG_TRY();
	{
		if (prev_executor_run != NULL)
			prev_executor_run(queryDesc, direction, count, execute_once);
		else
			standard_ExecutorRun(queryDesc, direction, count, execute_once);
	}
	PG_FINALLY();
	{
		nesting--;
		running_query = outer;
	}
	PG_END_TRY();
}

static void
defer_executor_finish(QueryDesc *queryDesc)
{
	QueryDesc  *outer = running_query;

	nesting++;
	running_query = queryDesc;
	PG_TRY();
	{
		if (prev_executor_finish != NULL)
			prev_executor_finish(queryDesc);
		else
			standard_ExecutorFinish(queryDesc);
	}
	PG_FINALLY();
	{
		nesting--;
		running_query = outer;
	}
	PG_END_TRY();
	if (nesting == 0)
		ws_bulk_end_of_statement();
}

static void
defer_process_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
					  ProcessUtilityContext context, ParamListInfo params,
					  QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *statement = pstmt->utilityStmt;
	bool		transaction_control = false;
	QueryDesc  *outer;

	if (IsA(statement, TransactionStmt))
	{
		TransactionStmtKind kind = ((TransactionStmt *) statement)->kind;

		transaction_control = kind == TRANS_STMT_BEGIN || kind == TRANS_STMT_START ||
			kind == TRANS_STMT_COMMIT || kind == TRANS_STMT_ROLLBACK;
	}
	if (!transaction_control)
	{
		if (nesting == 0)
			statements++;
		else
			fdw_used = true;	/* COPY into a foreign table, say */
		ws_defer_flush();
	}
	nesting++;
	/* A COPY's triggers run outside any query. */
	outer = ws_running_query_swap(NULL);
	PG_TRY();
	{
		if (prev_process_utility != NULL)
			prev_process_utility(pstmt, queryString, readOnlyTree, context, params,
								 queryEnv, dest, qc);
		else
			standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
									queryEnv, dest, qc);
	}
	PG_FINALLY();
	{
		nesting--;
		running_query = outer;
	}
	PG_END_TRY();
	if (nesting == 0 && !transaction_control)
		ws_bulk_end_of_statement();
}

static void
defer_commit_begins(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_PRE_COMMIT || event == XACT_EVENT_PRE_PREPARE)
		committing = true;
}

static void
defer_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			if (waiting != NULL)
				send_alone();
			break;
		case XACT_EVENT_PRE_PREPARE:
			/*
			 * PREPARE TRANSACTION, a command, has sent the row; a prepare
			 * that bypasses commands (a logical replication apply worker's)
			 * must not leave it behind.
			 */
			if (waiting != NULL)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that has written to a distributed table")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
			/* The memory goes with TopTransactionContext. */
			waiting = sent = NULL;
			sent_in = InvalidSubTransactionId;
			statements = 0;
			fdw_used = false;
			committing = false;
			break;
		default:
			break;
	}
}

static void
defer_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					   SubTransactionId parentSubid, void *arg)
{
	if (sent == NULL || mySubid != sent_in)
		return;
	if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		sent_in = parentSubid;
		if (parentSubid == TopSubTransactionId)
			sent = NULL;		/* in postgres_fdw's top-level transaction now */
	}
	else if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		/* Its statement goes on: the row waits again. */
		waiting = sent;
		sent = NULL;
		sent_in = InvalidSubTransactionId;
	}
}

/*
 * ws_defer_register installs the hooks and callbacks; called from _PG_init
 * before bulk.c registers its callbacks, so that ours run after its.
 */
void
ws_defer_register(void)
{
	preloaded = process_shared_preload_libraries_in_progress;
	prev_executor_start = ExecutorStart_hook;
	ExecutorStart_hook = defer_executor_start;
	prev_executor_run = ExecutorRun_hook;
	ExecutorRun_hook = defer_executor_run;
	prev_executor_finish = ExecutorFinish_hook;
	ExecutorFinish_hook = defer_executor_finish;
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = defer_process_utility;
	prev_planner = planner_hook;
	planner_hook = defer_planner;
	RegisterXactCallback(defer_xact_callback, NULL);
	RegisterSubXactCallback(defer_subxact_callback, NULL);
}

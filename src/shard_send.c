/*-------------------------------------------------------------------------
 *
 * shard_send.c
 *	  How routed rows travel to their shards: a COPY into each server's
 *	  table of slots, held open on postgres_fdw's connection.
 *
 * The rows a statement buffered (shard_route.c) go through a stream that
 * ends at once: each server gets its share in one COPY, and the servers
 * work at the same time.  A large INSERT or COPY (shard_stream.c) keeps
 * its stream open while it runs and hands each server its rows 16kB at a
 * time, so that the shards insert while the coordinator produces rows.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>
#include <poll.h>
#include <sys/socket.h>

#include "access/xact.h"
#include "foreign/foreign.h"
#include "lib/ilist.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "send_encoding.h"
#include "shard_route.h"

/* COPY's binary format: the header (no flags, no extension) and trailer. */
static const char binary_header[19] = "PGCOPY\n\377\r\n\0\0\0\0\0\0\0\0\0";
static const char binary_trailer[2] = "\377\377";

/* A stream hands a server its rows in pieces of this size. */
#define ROUTE_STREAM_BYTES	(16 * 1024)

/* The stream of the INSERT that streams its rows (shard_stream.c). */
static RouteStream *statement_stream = NULL;
static bool stream_callbacks_ahead = false;

static void stream_callbacks_ahead_of_fdw(void);

/*
 * A stream holds one COPY open on each server's postgres_fdw connection.
 * Such a connection can serve nothing else until its COPY ends, and
 * postgres_fdw, rolling back, waits forever on one left in the middle of a
 * COPY.  So every stream is listed in live_streams from its beginning to
 * its end, and our abort callbacks, which run ahead of postgres_fdw's, end
 * the COPYs of the streams an abort takes (FATAL errors included, which no
 * PG_CATCH sees).  Writes to a shard that stopped reading (waiting for a
 * lock there, say) must not block the backend where no interrupt can reach
 * it: the connection is in nonblocking mode while its COPY runs.
 */

/* A server's share of a stream: one COPY into its table of slots. */
typedef struct ServerStream
{
	Oid			serverid;
	PGconn	   *conn;			/* once its COPY was sent */
	bool		copying;		/* the server takes the COPY's data */
	bool		ended;			/* the COPY's end was queued */
	bool		done;			/* its result was read, or abandoned */
	bool		spoke;			/* seen to send something during this COPY */
	bool		chatty;			/* a restart found no error: no more */
	StringInfoData data;		/* rows not yet handed to libpq */
	int64		rows;
} ServerStream;

struct RouteStream
{
	dlist_node	live;			/* in live_streams until it ends */
	bool		listed;
	Relation	view;			/* rows to route, for ws_route_stream_row */
	char	   *table;			/* for messages */
	SubTransactionId subid;		/* where it began: where it is sent */
	MemoryContext context;		/* under TopTransactionContext */
	char	   *sql;			/* the COPY each server runs */
	Oid			userid;			/* whose user mappings: ws_dist_mapping_user */
	bool		binary;
	List	   *servers;		/* ServerStreams */
	ServerStream *full;			/* one whose rows are due to go */
	uint64		rows;
};

static dlist_head live_streams = DLIST_STATIC_INIT(live_streams);

/*
 * ws_route_stream_begin prepares to stream rows of a distributed table to
 * its shards.  Connections open as each server's first rows are due.
 */
RouteStream *
ws_route_stream_begin(Relation view)
{
	RouteStream *stream = ws_route_stream_open(ws_dist_open(view), RelationGetRelationName(view));

	stream->view = view;
	return stream;
}

/*
 * ws_route_stream_open prepares to send rows of dist to its shards, for
 * ws_route_stream_add (the rows of a routed statement's buffers).
 */
RouteStream *
ws_route_stream_open(DistEntry *dist, const char *table)
{
	/* Abort callbacks may need it after the statement's memory is gone. */
	MemoryContext context = AllocSetContextCreate(TopTransactionContext,
												  "write_scaling COPY stream",
												  ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(context);
	RouteStream *stream = palloc0(sizeof(RouteStream));
	StringInfoData sql;

	stream->context = context;
	stream->table = pstrdup(table);
	stream->subid = GetCurrentSubTransactionId();
	initStringInfo(&sql);
	ws_dist_copy_command(&sql, dist, dist->shard_table);
	stream->sql = sql.data;
	stream->binary = dist->binary;
	stream->userid = ws_dist_mapping_user(dist);
	MemoryContextSwitchTo(old);
	dlist_push_tail(&live_streams, &stream->live);
	stream->listed = true;
	return stream;
}

/* stream_delist takes a stream off live_streams, once. */
static void
stream_delist(RouteStream *stream)
{
	if (stream->listed)
		dlist_delete(&stream->live);
	stream->listed = false;
}

/* stream_free forgets a stream that ended or was aborted. */
static void
stream_free(RouteStream *stream)
{
	stream_delist(stream);
	MemoryContextDelete(stream->context);
}

/*
 * stream_server returns the stream's share for serverid, new if need be.
 */
static ServerStream *
stream_server(RouteStream *stream, Oid serverid)
{
	ServerStream *server;
	ListCell   *lc;
	MemoryContext old;

	foreach(lc, stream->servers)
		if (((ServerStream *) lfirst(lc))->serverid == serverid)
			return lfirst(lc);
	old = MemoryContextSwitchTo(stream->context);
	server = palloc0(sizeof(ServerStream));
	server->serverid = serverid;
	initStringInfo(&server->data);
	stream->servers = lappend(stream->servers, server);
	MemoryContextSwitchTo(old);
	return server;
}

/*
 * stream_error raises the error being handled again, naming the server
 * (as it is, if none).
 */
static void
stream_error(RouteStream *stream, ServerStream *server)
{
	MemoryContext old;
	ErrorData  *edata;

	if (server == NULL)
		PG_RE_THROW();
	old = MemoryContextSwitchTo(stream->context);
	edata = CopyErrorData();
	FlushErrorState();
	MemoryContextSwitchTo(old);
	ereport(ERROR,
			(errcode(edata->sqlerrcode),
			 errmsg("could not write rows of \"%s\" to shard server \"%s\": %s",
					stream->table,
					GetForeignServer(server->serverid)->servername, edata->message),
			 edata->detail ? errdetail_internal("%s", edata->detail) : 0,
			 edata->hint ? errhint("%s", edata->hint) : 0));
}

/*
 * stream_failed raises the error that ended a server's COPY early: the
 * shard's, which libpq keeps as a result, or the connection's.
 */
static void
stream_failed(RouteStream *stream, ServerStream *server)
{
	PGresult   *res;

	while ((res = PQgetResult(server->conn)) != NULL)
	{
		if (PQresultStatus(res) == PGRES_FATAL_ERROR)
			ws_fdw_report_error(ERROR, res, server->conn, true, stream->sql);
		if (PQresultStatus(res) == PGRES_COPY_IN)
		{
			PQclear(res);
			break;
		}
		PQclear(res);
	}
	ws_fdw_report_error(ERROR, NULL, server->conn, false, stream->sql);
}

/*
 * wait_io waits, interruptibly, until a server's socket takes more data or
 * has some to read, and reads it (a shard that sends while we send must
 * not block on us), noting that the server spoke; returns false if the
 * connection failed.
 */
static bool
wait_io(ServerStream *server)
{
	int			rc = WaitLatchOrSocket(MyLatch, WL_LATCH_SET | WL_SOCKET_WRITEABLE |
									   WL_SOCKET_READABLE | WL_EXIT_ON_PM_DEATH,
									   PQsocket(server->conn), -1L, PG_WAIT_EXTENSION);

	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
	if ((rc & WL_SOCKET_READABLE) == 0)
		return true;
	server->spoke = true;
	return PQconsumeInput(server->conn);
}

/*
 * note_input notes that a server spoke if its socket has data to read.  It
 * must look before each send: libpq, finding that the socket takes no
 * more, reads whatever has come, and holds an error read that way unseen
 * until the COPY ends.
 */
static void
note_input(ServerStream *server)
{
	if (!server->spoke && ws_socket_readable(PQsocket(server->conn)))
		server->spoke = true;
}

/*
 * put_copy_data hands data to a server, in nonblocking mode, and sends it
 * all, waiting interruptibly while the server does not read; returns false
 * if the connection failed.
 */
static bool
put_copy_data(ServerStream *server, const char *data, int len)
{
	int			rc;

	for (;;)
	{
		note_input(server);
		if ((rc = PQputCopyData(server->conn, data, len)) != 0)
			break;
		if (!wait_io(server))
			return false;
	}
	if (rc < 0)
		return false;
	for (;;)
	{
		note_input(server);
		if ((rc = PQflush(server->conn)) != 1)
			break;
		if (!wait_io(server))
			return false;
	}
	return rc == 0;
}

/*
 * check_subtransaction refuses to send a stream's rows in another
 * subtransaction than the one it began in: they would go into another
 * remote savepoint, which could roll them back alone.
 */
static void
check_subtransaction(RouteStream *stream)
{
	if (GetCurrentSubTransactionId() != stream->subid)
		elog(ERROR, "rows streamed to shards cannot be sent from another subtransaction");
}

/*
 * copy_begin sends a server the stream's COPY, on conn, and waits until it
 * takes the data.
 */
static void
copy_begin(RouteStream *stream, ServerStream *server, PGconn *conn)
{
	PGresult   *res;

	server->copying = server->ended = server->spoke = false;
	if (!PQsendQuery(conn, stream->sql))
		ws_fdw_report_error(ERROR, NULL, conn, false, stream->sql);
	server->conn = conn;		/* an abort must end the COPY from now on */
	res = ws_shard_wait_result(conn, stream->sql);
	if (PQresultStatus(res) != PGRES_COPY_IN)
		ws_fdw_report_error(ERROR, res, conn, true, stream->sql);
	PQclear(res);
	server->copying = true;
	if (PQsetnonblocking(conn, 1) != 0 ||
		(stream->binary && !put_copy_data(server, binary_header, sizeof(binary_header))))
		stream_failed(stream, server);
}

/*
 * copy_end queues the end of a server's COPY and sends it, leaving the
 * connection blocking, as postgres_fdw has it; the result is the caller's
 * to read.
 */
static void
copy_end(RouteStream *stream, ServerStream *server)
{
	int			rc;

	if ((stream->binary && !put_copy_data(server, binary_trailer, sizeof(binary_trailer))) ||
		PQputCopyEnd(server->conn, NULL) != 1)
		stream_failed(stream, server);
	server->ended = true;		/* queued: an abort must see it out */
	while ((rc = PQflush(server->conn)) == 1)
		if (!wait_io(server))
			break;
	if (rc != 0 || PQsetnonblocking(server->conn, 0) != 0)
		stream_failed(stream, server);
}

/*
 * stream_send hands a server's rows to libpq, beginning its COPY first if
 * need be.
 */
static void
stream_send(RouteStream *stream, ServerStream *server)
{
	check_subtransaction(stream);
	PG_TRY();
	{
		if (server->conn == NULL)
		{
			PGconn	   *conn = ws_shard_connection(server->serverid, stream->userid);

			/* postgres_fdw registers its callbacks with its first connection. */
			stream_callbacks_ahead_of_fdw();
			copy_begin(stream, server, conn);
		}
		if (!put_copy_data(server, server->data.data, server->data.len))
			stream_failed(stream, server);
		resetStringInfo(&server->data);
	}
	PG_CATCH();
	{
		stream_error(stream, server);
	}
	PG_END_TRY();
}

/*
 * stream_send_more sends a server's rows in the middle of a stream.
 *
 * A shard that fails in the middle of a COPY reads the rest and drops it,
 * and libpq returns its error only once the COPY ends.  So a server seen
 * to say something during its COPY (an error, most likely: else a notice)
 * has its COPY ended, which raises the error at once rather than after the
 * last row, and begun again.  One whose restart found no error is not
 * restarted again, since a trigger of its own might give a notice per
 * COPY; a later error of its comes at the end.  So does an error that
 * libpq read while it sent, before we looked.
 */
static void
stream_send_more(RouteStream *stream, ServerStream *server)
{
	stream_send(stream, server);
	if (server->chatty)
		return;
	note_input(server);
	if (!server->spoke)
		return;
	PG_TRY();
	{
		PGresult   *res;

		copy_end(stream, server);
		while ((res = ws_shard_wait_result(server->conn, stream->sql)) != NULL)
		{
			if (PQresultStatus(res) != PGRES_COMMAND_OK)
				ws_fdw_report_error(ERROR, res, server->conn, true, stream->sql);
			PQclear(res);
		}
		copy_begin(stream, server, server->conn);
		server->chatty = true;
	}
	PG_CATCH();
	{
		stream_error(stream, server);
	}
	PG_END_TRY();
}

/*
 * ws_route_stream_add adds rows, COPY lines already, to a server's share, and
 * sends the share once it is large enough.
 */
void
ws_route_stream_add(RouteStream *stream, Oid serverid, const char *lines, int len, int64 rows)
{
	ServerStream *server = stream_server(stream, serverid);

	appendBinaryStringInfo(&server->data, lines, len);
	server->rows += rows;
	stream->rows += rows;
	if (server->data.len >= ROUTE_STREAM_BYTES)
		stream_send(stream, server);
}

/*
 * ws_route_stream_row routes a row (deformed) of the stream's table: the
 * row joins its server's share, which ws_route_stream_send sends once it is
 * large enough.  Called in a short-lived memory context.
 */
void
ws_route_stream_row(RouteStream *stream, Datum *values, bool *nulls)
{
	DistEntry  *dist;
	int			slot = ws_dist_route_slot(stream->view, values, nulls, &dist);
	ServerStream *server = stream_server(stream, dist->slots[slot].serverid);
	int			client_encoding;

	client_encoding = dist->binary ? ws_enter_database_encoding() : -1;
	if (client_encoding < 0)
		ws_dist_append_line(&server->data, dist, RelationGetDescr(stream->view), values, nulls, slot);
	else
	{
		PG_TRY();
		{
			ws_dist_append_line(&server->data, dist, RelationGetDescr(stream->view), values, nulls, slot);
		}
		PG_FINALLY();
		{
			ws_leave_database_encoding(client_encoding);
		}
		PG_END_TRY();
	}
	server->rows++;
	stream->rows++;
	if (server->data.len >= ROUTE_STREAM_BYTES)
		stream->full = server;
}

/*
 * ws_route_stream_send sends the rows of a server whose share grew large
 * enough, if any.
 */
void
ws_route_stream_send(RouteStream *stream)
{
	if (stream->full == NULL)
		return;
	stream_send_more(stream, stream->full);
	stream->full = NULL;
}

/*
 * ws_route_stream_end sends what is left, ends every server's COPY and
 * waits for them all; returns the rows routed.  The stream is gone then.
 */
uint64
ws_route_stream_end(RouteStream *stream)
{
	uint64		rows;
	WaitEventSet *volatile set = NULL;
	ServerStream *volatile current = NULL;
	int			pending = 0;
	ListCell   *lc;

	foreach(lc, stream->servers)
	{
		ServerStream *server = lfirst(lc);

		stream_send(stream, server);
		current = server;
		PG_TRY();
		{
			copy_end(stream, server);
		}
		PG_CATCH();
		{
			stream_error(stream, server);
		}
		PG_END_TRY();
		pending++;
	}

	PG_TRY();
	{
		while (pending > 0)
		{
			WaitEvent	events[16];
			int			n;

			foreach(lc, stream->servers)
			{
				ServerStream *server = lfirst(lc);
				PGresult   *res;

				current = server;
				while (!server->done && !PQisBusy(server->conn))
				{
					res = PQgetResult(server->conn);
					if (res == NULL)
					{
						server->done = true;
						pending--;
						break;
					}
					if (PQresultStatus(res) != PGRES_COMMAND_OK)
						ws_fdw_report_error(ERROR, res, server->conn, true, stream->sql);
					PQclear(res);
				}
			}
			if (pending == 0)
				break;

			/* The servers still working: a finished one's socket may stay readable. */
			set = CreateWaitEventSet(CurrentMemoryContext, pending + 1);
			AddWaitEventToSet(set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
			foreach(lc, stream->servers)
			{
				ServerStream *server = lfirst(lc);

				if (!server->done)
					AddWaitEventToSet(set, WL_SOCKET_READABLE, PQsocket(server->conn), NULL,
									  server);
			}
			n = WaitEventSetWait(set, -1, events, lengthof(events), PG_WAIT_EXTENSION);
			FreeWaitEventSet(set);
			set = NULL;
			for (int i = 0; i < n; i++)
			{
				ServerStream *server = events[i].user_data;

				if (events[i].events & WL_LATCH_SET)
				{
					current = NULL;
					ResetLatch(MyLatch);
					CHECK_FOR_INTERRUPTS();
				}
				current = server;
				if ((events[i].events & WL_SOCKET_READABLE) && !PQconsumeInput(server->conn))
					ws_fdw_report_error(ERROR, NULL, server->conn, false, stream->sql);
			}
		}
	}
	PG_CATCH();
	{
		if (set != NULL)
			FreeWaitEventSet(set);	/* its epoll descriptor */
		stream_error(stream, current);
	}
	PG_END_TRY();

	foreach(lc, stream->servers)
	{
		ServerStream *server = lfirst(lc);

		ws_shard_note_routed(server->serverid, server->rows);
	}
	rows = stream->rows;
	stream_free(stream);
	return rows;
}

/*
 * The abort of a stream raises nothing and takes no interrupt: it runs in
 * PG_CATCH blocks and abort callbacks.  It waits with poll() and one
 * deadline for the whole stream.
 */

/* wait_socket waits until conn's socket is readable or writable, or until. */
static void
wait_socket(PGconn *conn, bool write, TimestampTz until)
{
	struct pollfd fd;
	long		wait = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), until);

	fd.fd = PQsocket(conn);
	fd.events = POLLIN | (write ? POLLOUT : 0);
	fd.revents = 0;
	(void) poll(&fd, 1, (int) Min(wait, INT_MAX));
}

/*
 * cancel_remote asks a server to cancel what its connection runs.  libpq's
 * PQcancel connects with no timeout of its own (postgres_fdw's cancels
 * share that limit): a shard host that drops packets holds it for the
 * kernel's connect timeout.
 */
static void
cancel_remote(PGconn *conn)
{
	PGcancel   *cancel = PQgetCancel(conn);
	char		message[256];

	if (cancel == NULL)
		return;
	(void) PQcancel(cancel, message, sizeof(message));
	PQfreeCancel(cancel);
}

/*
 * cut_off shuts a connection down under postgres_fdw, which then finds it
 * broken (libpq marks it so once a read fails) rather than in the middle
 * of a COPY.
 */
static void
cut_off(PGconn *conn)
{
	shutdown(PQsocket(conn), SHUT_RDWR);
	for (int i = 0; i < 1000 && PQconsumeInput(conn); i++)
		;
}

/*
 * copy_started tells whether a server took the COPY sent to it.  One that
 * has not answered yet (waiting for a lock there, say) is asked to cancel
 * it, then waited for; one that does not answer by until is cut off.
 */
static bool
copy_started(PGconn *conn, TimestampTz until)
{
	bool		cancelled = false;

	for (;;)
	{
		if (!PQconsumeInput(conn))
			return false;
		if (!PQisBusy(conn))
		{
			PGresult   *res = PQgetResult(conn);
			bool		copy_in;

			if (res == NULL)
				return false;	/* the COPY failed, and is over */
			copy_in = PQresultStatus(res) == PGRES_COPY_IN;
			PQclear(res);
			if (copy_in)
				return true;
			continue;
		}
		if (!cancelled)
		{
			cancel_remote(conn);
			cancelled = true;
		}
		if (GetCurrentTimestamp() >= until)
		{
			cut_off(conn);
			return false;
		}
		wait_socket(conn, false, until);
	}
}

/*
 * finish_output sends what libpq holds for a server.  One that does not
 * read it (waiting for a lock there, say) is asked to cancel, and then
 * reads and drops the rest; one that does not by until is cut off.
 * Leaves the connection blocking, as postgres_fdw has it.
 */
static void
finish_output(PGconn *conn, TimestampTz until)
{
	bool		cancelled = false;

	for (;;)
	{
		int			rc = PQflush(conn);

		if (rc == 0)
		{
			(void) PQsetnonblocking(conn, 0);
			return;
		}
		if (rc < 0)
			break;
		if (!cancelled)
		{
			cancel_remote(conn);
			cancelled = true;
		}
		if (GetCurrentTimestamp() >= until)
			break;
		wait_socket(conn, true, until);
		(void) PQconsumeInput(conn);
	}
	cut_off(conn);
}

/*
 * ws_route_stream_abort ends every COPY of a stream still open, so that
 * postgres_fdw, rolling back, finds its connections busy, idle or broken
 * but not in the middle of a COPY, and frees the stream.  Results are left
 * to postgres_fdw, which cancels and drains a busy connection.
 */
void
ws_route_stream_abort(RouteStream *stream)
{
	TimestampTz until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 30000);
	ListCell   *lc;

	stream_delist(stream);
	foreach(lc, stream->servers)
	{
		ServerStream *server = lfirst(lc);
		PGconn	   *conn = server->conn;

		if (conn == NULL || server->done || PQstatus(conn) == CONNECTION_BAD)
			continue;
		server->done = true;
		if (!server->copying && !copy_started(conn, until))
			continue;
		if (!server->ended &&
			PQputCopyEnd(conn, "write_scaling: the statement failed") != 1)
		{
			cut_off(conn);
			continue;
		}
		finish_output(conn, until);
	}
	stream_free(stream);
}

/*
 * ws_route_stream_statement_row routes a row of the INSERT that streams
 * (shard_stream.c) into its stream, begun with its first row.
 */
void
ws_route_stream_statement_row(Relation view, Datum *values, bool *nulls)
{
	if (statement_stream == NULL)
		statement_stream = ws_route_stream_begin(view);
	ws_route_stream_row(statement_stream, values, nulls);
	ws_route_stream_send(statement_stream);
}

/*
 * ws_route_stream_statement_end sends the rows the INSERT that streamed
 * (shard_stream.c) left in its stream: called by the view's AFTER statement
 * trigger, and at ExecutorEnd in case that did not run.
 */
void
ws_route_stream_statement_end(void)
{
	RouteStream *stream = statement_stream;

	if (stream == NULL)
		return;
	statement_stream = NULL;
	PG_TRY();
	{
		(void) ws_route_stream_end(stream);
	}
	PG_CATCH();
	{
		ws_route_stream_abort(stream);
		PG_RE_THROW();
	}
	PG_END_TRY();
}

/*
 * An aborted (sub)transaction ends the COPYs of the streams it takes
 * before postgres_fdw rolls back on their connections: these callbacks run
 * ahead of postgres_fdw's.
 */
static void
stream_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			while (!dlist_is_empty(&live_streams))
				ws_route_stream_abort(dlist_container(RouteStream, live,
													  dlist_head_node(&live_streams)));
			dlist_init(&live_streams);
			statement_stream = NULL;
			break;
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			if (!dlist_is_empty(&live_streams))
				elog(ERROR, "rows streamed to shards were not finished before commit");
			break;
		default:
			break;
	}
}

static void
stream_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						SubTransactionId parentSubid, void *arg)
{
	dlist_mutable_iter iter;

	dlist_foreach_modify(iter, &live_streams)
	{
		RouteStream *stream = dlist_container(RouteStream, live, iter.cur);

		if (stream->subid != mySubid)
			continue;
		if (event == SUBXACT_EVENT_COMMIT_SUB)
			stream->subid = parentSubid;
		else if (event == SUBXACT_EVENT_ABORT_SUB)
		{
			if (stream == statement_stream)
				statement_stream = NULL;
			ws_route_stream_abort(stream);
		}
	}
}

/*
 * stream_callbacks_ahead_of_fdw puts our abort callbacks (registered since
 * the library loaded) in front of postgres_fdw's, registered by now:
 * callbacks run newest first.  Once is enough: postgres_fdw registers its
 * own once per backend.
 */
static void
stream_callbacks_ahead_of_fdw(void)
{
	if (stream_callbacks_ahead)
		return;
	UnregisterXactCallback(stream_xact_callback, NULL);
	RegisterXactCallback(stream_xact_callback, NULL);
	UnregisterSubXactCallback(stream_subxact_callback, NULL);
	RegisterSubXactCallback(stream_subxact_callback, NULL);
	stream_callbacks_ahead = true;
}

/*
 * ws_route_stream_register installs the abort callbacks; called from
 * _PG_init (through ws_shard_register_callbacks).
 */
void
ws_route_stream_register(void)
{
	RegisterXactCallback(stream_xact_callback, NULL);
	RegisterSubXactCallback(stream_subxact_callback, NULL);
}

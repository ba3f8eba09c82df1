/*-------------------------------------------------------------------------
 *
 * shard_conn.c
 *	  Connections of our own to shard servers, outside any remote
 *	  transaction, for statements that commit on a shard by themselves.
 *
 * postgres_fdw wraps every use of a shard in a remote transaction: START
 * TRANSACTION, the statement, COMMIT, three round trips.  An autocommit
 * INSERT of one row needs none of that: sent alone, the remote INSERT
 * commits by itself, in one round trip; so do an autocommit single-row
 * upsert and an autocommit UPDATE or DELETE by key.  These connections
 * exist for that (shard_defer.c decides when it applies).
 *
 * They are opened as postgres_fdw opens its own: the foreign server's and
 * the user mapping's libpq options, and the same session settings, so
 * values read back the same.  postgres_fdw lets a non-superuser connect
 * only with a password that the server asked for (a local server trusting
 * the OS user would otherwise be open to everyone), unless a superuser gave
 * the mapping password_required 'false'; we follow the same rule, and
 * where it is not met, return no connection, so the caller takes
 * postgres_fdw's path, which then reports the problem.
 *
 * The connections live in a hash by user mapping (and whether its user is a
 * superuser: one opened for a superuser without a password must not serve
 * anyone else), for the session, each
 * with the statements prepared on it (one per slot table: the shard then
 * parses and plans each only once; past MAX_PREPARED, the connection starts
 * afresh) and a wait event set of its own.  A statement whose text changes
 * with its values (postgres_fdw's UPDATE by key) goes unprepared.  A
 * change to a foreign server or user mapping closes them all: the next use
 * reconnects with the new options.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <poll.h>

#include "catalog/pg_foreign_server.h"
#include "catalog/pg_user_mapping.h"
#include "commands/defrem.h"
#include "foreign/foreign.h"
#include "libpq-fe.h"
#include "common/hashfn.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/fd.h"
#include "storage/latch.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

#include "shard.h"

typedef struct ConnectionKey
{
	Oid			umid;			/* the user mapping */
	bool		superuser;		/* its user is one */
} ConnectionKey;

/*
 * Statements kept prepared per connection: one per slot table serves
 * INSERTs; an upsert's statements differ by the constants of their clause,
 * so past this many the connection starts afresh.
 */
#define MAX_PREPARED 1000

typedef struct OwnConnection
{
	ConnectionKey key;			/* hash key */
	PGconn	   *conn;			/* NULL when none is open */
	bool		refused;		/* may not be used: postgres_fdw's path only */
	WaitEventSet *wait_set;		/* the latch and the connection's socket */
	MemoryContext memory;		/* of the statements, gone with conn */
	HTAB	   *statements;		/* PreparedStatements on conn */
	int			statements_made;
} OwnConnection;

typedef struct PreparedStatement
{
	uint64		sql_hash;		/* hash key */
	char	   *sql;
	int			number;			/* named ws_<number> on the shard */
} PreparedStatement;

static HTAB *own_connections = NULL;
static bool options_changed = false;
static char connect_error[256];	/* why the last connection failed */

/*
 * is_libpq_option tells whether a foreign server or user mapping option is
 * a connection option of libpq (the others are postgres_fdw's own).
 */
static bool
is_libpq_option(const char *keyword)
{
	static PQconninfoOption *libpq_options = NULL;

	if (libpq_options == NULL)
	{
		libpq_options = PQconndefaults();
		if (libpq_options == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("out of memory")));
	}
	/* As postgres_fdw: no debug options, no replication connections. */
	if (strcmp(keyword, "replication") == 0 ||
		strcmp(keyword, "fallback_application_name") == 0 ||
		strcmp(keyword, "client_encoding") == 0)
		return false;
	for (PQconninfoOption *o = libpq_options; o->keyword != NULL; o++)
		if (strcmp(o->keyword, keyword) == 0)
			return strchr(o->dispchar, 'D') == NULL;
	return false;
}

static void
options_changed_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	options_changed = true;
}

/*
 * close_entry closes an entry's connection, first cancelling a statement
 * still running there (after an error or a cancel while it ran).
 */
static void
close_entry(OwnConnection *entry)
{
	if (entry->conn != NULL)
	{
		if (PQtransactionStatus(entry->conn) == PQTRANS_ACTIVE)
		{
			PGcancel   *cancel = PQgetCancel(entry->conn);
			char		errbuf[256];

			if (cancel != NULL)
			{
				(void) PQcancel(cancel, errbuf, sizeof(errbuf));
				PQfreeCancel(cancel);
			}
		}
		PQfinish(entry->conn);
		ReleaseExternalFD();
	}
	if (entry->wait_set != NULL)
		FreeWaitEventSet(entry->wait_set);
	if (entry->memory != NULL)
		MemoryContextDelete(entry->memory);	/* after the wait set it holds */
	entry->conn = NULL;
	entry->wait_set = NULL;
	entry->memory = NULL;
	entry->statements = NULL;
}

static void
close_all(void)
{
	HASH_SEQ_STATUS status;
	OwnConnection *entry;

	hash_seq_init(&status, own_connections);
	while ((entry = hash_seq_search(&status)) != NULL)
	{
		close_entry(entry);
		entry->refused = false;
	}
}

static PGresult *last_result(OwnConnection *entry);

/*
 * open_connection connects entry as postgres_fdw would connect for user;
 * leaves entry->conn NULL if the server cannot be reached (saying why in
 * connect_error) or the connection may not be used (setting refused).
 */
static void
open_connection(OwnConnection *entry, UserMapping *user)
{
	ForeignServer *server = GetForeignServer(user->serverid);
	List	   *options = list_concat(list_copy(server->options), user->options);
	const char **keywords = palloc((list_length(options) + 3) * sizeof(char *));
	const char **values = palloc((list_length(options) + 3) * sizeof(char *));
	bool		has_password = false;
	bool		password_required = true;
	int			n = 0;
	ListCell   *lc;
	PGconn	   *conn;
	PGresult   *res;
	HASHCTL		ctl;

	foreach(lc, options)
	{
		DefElem    *option = lfirst(lc);

		/* A superuser may have let the mapping go without (postgres_fdw). */
		if (strcmp(option->defname, "password_required") == 0)
			password_required = defGetBoolean(option);
		if (!is_libpq_option(option->defname))
			continue;
		keywords[n] = option->defname;
		values[n] = defGetString(option);
		if (strcmp(option->defname, "password") == 0 && values[n][0] != '\0')
			has_password = true;
		n++;
	}
	keywords[n] = "fallback_application_name";
	values[n++] = "write_scaling";
	keywords[n] = "client_encoding";
	values[n++] = GetDatabaseEncodingName();
	keywords[n] = values[n] = NULL;

	entry->refused = !entry->key.superuser && password_required && !has_password;
	if (entry->refused)
		return;
	if (!AcquireExternalFD())
	{
		snprintf(connect_error, sizeof(connect_error), "out of file descriptors");
		return;
	}
	conn = PQconnectdbParams(keywords, values, false);
	if (conn == NULL || PQstatus(conn) != CONNECTION_OK ||
		(!entry->key.superuser && password_required && !PQconnectionUsedPassword(conn)))
	{
		entry->refused = conn != NULL && PQstatus(conn) == CONNECTION_OK;
		strlcpy(connect_error, conn ? pchomp(PQerrorMessage(conn)) : "out of memory",
				sizeof(connect_error));
		PQfinish(conn);
		ReleaseExternalFD();
		return;
	}

	/* An error from here on closes the connection: no half-built entry. */
	entry->conn = conn;
	PG_TRY();
	{
		entry->memory = AllocSetContextCreate(TopMemoryContext, "write_scaling shard connection",
											  ALLOCSET_SMALL_SIZES);
		entry->wait_set = CreateWaitEventSet(entry->memory, 3);
		AddWaitEventToSet(entry->wait_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
		AddWaitEventToSet(entry->wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
		AddWaitEventToSet(entry->wait_set, WL_SOCKET_READABLE, PQsocket(conn), NULL, NULL);
		ctl.keysize = sizeof(uint64);
		ctl.entrysize = sizeof(PreparedStatement);
		ctl.hcxt = entry->memory;
		entry->statements = hash_create("write_scaling prepared statements", 64, &ctl,
										HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		entry->statements_made = 0;

		/* postgres_fdw's session settings: values travel in these forms. */
		if (!PQsendQuery(conn, "SET search_path = pg_catalog; SET timezone = 'UTC';"
						 " SET datestyle = ISO; SET intervalstyle = postgres;"
						 " SET extra_float_digits = 3"))
			res = NULL;
		else
			res = last_result(entry);
		if (PQresultStatus(res) != PGRES_COMMAND_OK)
		{
			strlcpy(connect_error, pchomp(PQerrorMessage(conn)), sizeof(connect_error));
			PQclear(res);
			close_entry(entry);
		}
		else
			PQclear(res);
	}
	PG_CATCH();
	{
		close_entry(entry);
		PG_RE_THROW();
	}
	PG_END_TRY();
}

/*
 * ws_socket_readable tells, without waiting, whether sock has data to read
 * (or poll cannot tell).
 */
bool
ws_socket_readable(pgsocket sock)
{
	struct pollfd fd = {.fd = sock,.events = POLLIN};

	return poll(&fd, 1, 0) != 0;
}

/*
 * own_connection returns the entry of our own idle connection to serverid
 * for userid, opening it if need be; its conn is NULL when postgres_fdw's
 * connection must serve instead.  Unless about to use it, the caller may
 * skip the check that the server has not closed it.
 */
static OwnConnection *
own_connection(Oid serverid, Oid userid, bool about_to_use)
{
	UserMapping *user = GetUserMapping(userid, serverid);
	ConnectionKey key;
	OwnConnection *entry;
	bool		found;

	if (own_connections == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(ConnectionKey);
		ctl.entrysize = sizeof(OwnConnection);
		ctl.hcxt = TopMemoryContext;
		own_connections = hash_create("write_scaling shard connections", 8, &ctl,
									  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		CacheRegisterSyscacheCallback(FOREIGNSERVEROID, options_changed_callback, (Datum) 0);
		CacheRegisterSyscacheCallback(USERMAPPINGOID, options_changed_callback, (Datum) 0);
	}
	if (options_changed)
	{
		close_all();
		options_changed = false;
	}
	memset(&key, 0, sizeof(key));
	key.umid = user->umid;
	key.superuser = superuser_arg(userid);
	entry = hash_search(own_connections, &key, HASH_ENTER, &found);
	if (!found)
	{
		entry->conn = NULL;
		entry->refused = false;
		entry->wait_set = NULL;
		entry->memory = NULL;
		entry->statements = NULL;
	}
	if (entry->refused)
		return entry;

	/*
	 * A connection left in the middle of a command is replaced, and so is
	 * one the server closed (a restart, idle_session_timeout): an idle
	 * connection has nothing to read unless the server said goodbye.
	 */
	if (entry->conn != NULL &&
		(PQtransactionStatus(entry->conn) != PQTRANS_IDLE ||
		 PQstatus(entry->conn) != CONNECTION_OK ||
		 (about_to_use && ws_socket_readable(PQsocket(entry->conn)))))
		close_entry(entry);
	if (entry->conn == NULL)
		open_connection(entry, user);
	return entry;
}

/*
 * ws_shard_can_run_alone tells whether statements for serverid can go on
 * our own connection (opening it now).
 */
bool
ws_shard_can_run_alone(Oid serverid, Oid userid)
{
	return own_connection(serverid, userid, false)->conn != NULL;
}

/*
 * report_remote_error raises a shard's error with its SQLSTATE, or the
 * connection's error when there is no result.
 */
static void
report_remote_error(PGconn *conn, PGresult *res)
{
	const char *sqlstate = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	const char *detail = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL) : NULL;
	const char *hint = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_HINT) : NULL;
	char	   *message = pstrdup(primary ? primary : PQerrorMessage(conn));
	char	   *detail_copy = detail ? pstrdup(detail) : NULL;
	char	   *hint_copy = hint ? pstrdup(hint) : NULL;
	int			code = ERRCODE_CONNECTION_FAILURE;

	if (sqlstate != NULL && strlen(sqlstate) == 5)
		code = MAKE_SQLSTATE(sqlstate[0], sqlstate[1], sqlstate[2], sqlstate[3], sqlstate[4]);
	PQclear(res);
	ereport(ERROR,
			(errcode(code),
			 errmsg_internal("%s", pchomp(message)),
			 detail_copy ? errdetail_internal("%s", detail_copy) : 0,
			 hint_copy ? errhint("%s", hint_copy) : 0));
}

/*
 * last_result waits, interruptibly, for the end of the command sent on
 * entry's connection and returns its last result (NULL if the connection
 * failed).
 */
static PGresult *
last_result(OwnConnection *entry)
{
	PGresult   *last = NULL;
	PGresult   *res;

	for (;;)
	{
		while (PQisBusy(entry->conn))
		{
			WaitEvent	event;

			(void) WaitEventSetWait(entry->wait_set, -1, &event, 1, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
			if (!PQconsumeInput(entry->conn))
			{
				PQclear(last);
				return NULL;
			}
		}
		res = PQgetResult(entry->conn);
		if (res == NULL)
			return last;
		PQclear(last);
		last = res;
	}
}

/*
 * ws_shard_run_alone runs sql, a statement with nparams text parameters,
 * on our own connection to serverid as a statement of its own: it commits
 * on the shard by itself.  With prepare, it is prepared there once per
 * connection (for statements that come back often, and are few: one per
 * slot table); without, it goes unnamed, kept by neither side.  A
 * connection that fails before the statement went out is opened again,
 * once.  Raises the shard's error, if any; returns the statement's result,
 * for the caller to PQclear.
 */
PGresult *
ws_shard_run_alone(Oid serverid, Oid userid, const char *sql, int nparams,
				   const char *const *values, bool prepare)
{
	OwnConnection *volatile entry = NULL;
	PGresult   *volatile result = NULL;

	PG_TRY();
	{
		PreparedStatement *statement;
		uint64		sql_hash = 0;
		char		name[32];
		bool		found;
		PGresult   *res;

		if (prepare)
			sql_hash = hash_bytes_extended((const unsigned char *) sql, strlen(sql), 0);
		for (int attempt = 0;;)
		{
			bool		sent = true;

			entry = own_connection(serverid, userid, true);
			if (entry->conn == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION),
						 errmsg("could not connect to server \"%s\"",
								GetForeignServer(serverid)->servername),
						 errdetail_internal("%s", connect_error)));
			if (!prepare)
				sent = PQsendQueryParams(entry->conn, sql, nparams, NULL, values, NULL, NULL, 0);
			else
			{
				statement = hash_search(entry->statements, &sql_hash, HASH_FIND, &found);
				/* Statements that differ by their constants (an upsert's) stop at a bound. */
				if (!found && hash_get_num_entries(entry->statements) >= MAX_PREPARED)
				{
					close_entry(entry);
					continue;	/* afresh, not a failed attempt */
				}
				if (found && strcmp(statement->sql, sql) != 0)
					ereport(ERROR,
							(errcode(ERRCODE_INTERNAL_ERROR),
							 errmsg("two statements for shard server \"%s\" share a hash",
									GetForeignServer(serverid)->servername)));
				if (!found)
				{
					/* Prepared first; remembered only once it is. */
					int			number = entry->statements_made++;

					snprintf(name, sizeof(name), "ws_%d", number);
					sent = PQsendPrepare(entry->conn, name, sql, nparams, NULL);
					if (sent)
					{
						char	   *copy;

						res = last_result(entry);
						if (PQresultStatus(res) != PGRES_COMMAND_OK)
							report_remote_error(entry->conn, res);
						PQclear(res);
						copy = MemoryContextStrdup(entry->memory, sql);
						statement = hash_search(entry->statements, &sql_hash, HASH_ENTER, NULL);
						statement->number = number;
						statement->sql = copy;
					}
				}
				else
					snprintf(name, sizeof(name), "ws_%d", statement->number);
				sent = sent && PQsendQueryPrepared(entry->conn, name, nparams, values, NULL, NULL, 0);
			}
			if (sent)
			{
				const char *sqlstate;

				res = last_result(entry);
				sqlstate = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

				/*
				 * A shard that lost the prepared statement (a pooler between
				 * us, say) ran nothing: once more, on a new connection.
				 */
				if (prepare && attempt == 0 && sqlstate != NULL && strcmp(sqlstate, "26000") == 0)
				{
					PQclear(res);
					close_entry(entry);
					attempt++;
					continue;
				}
				if (PQresultStatus(res) != PGRES_COMMAND_OK &&
					PQresultStatus(res) != PGRES_TUPLES_OK)
					report_remote_error(entry->conn, res);
				result = res;
				break;
			}
			if (attempt > 0)
				report_remote_error(entry->conn, NULL);
			close_entry(entry);
			attempt++;
		}
	}
	PG_CATCH();
	{
		/* Cancelled, or the connection failed: its state is in doubt. */
		if (entry != NULL && entry->conn != NULL &&
			(PQstatus(entry->conn) != CONNECTION_OK ||
			 PQtransactionStatus(entry->conn) != PQTRANS_IDLE))
			close_entry(entry);
		PG_RE_THROW();
	}
	PG_END_TRY();
	return result;
}

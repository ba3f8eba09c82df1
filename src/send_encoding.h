/*-------------------------------------------------------------------------
 *
 * send_encoding.h
 *	  Binary send and receive functions in the database's encoding.
 *
 * The binary send functions of text types convert to the session's client
 * encoding, and the receive functions convert back from it.  Where we use
 * them for ourselves (rows we write in COPY's binary format, to COPY them
 * here or on a shard, which reads them in this database's encoding), a
 * client encoding other than the database's would change the text, or fail
 * on a character the client encoding lacks.  Between these two calls, the
 * client encoding is the database's, so nothing is converted.
 *
 *-------------------------------------------------------------------------
 */
#ifndef WS_SEND_ENCODING_H
#define WS_SEND_ENCODING_H

#include "mb/pg_wchar.h"

/*
 * ws_enter_database_encoding makes the client encoding the database's;
 * returns the one to restore, or -1 if they were the same.
 */
static inline int
ws_enter_database_encoding(void)
{
	int			client = pg_get_client_encoding();

	if (client == GetDatabaseEncoding())
		return -1;
	if (SetClientEncoding(GetDatabaseEncoding()) < 0)
		elog(ERROR, "could not switch the client encoding to the database's");
	return client;
}

static inline void
ws_leave_database_encoding(int client)
{
	if (client >= 0 && SetClientEncoding(client) < 0)
		elog(ERROR, "could not restore client encoding \"%s\"", pg_encoding_to_char(client));
}

#endif							/* WS_SEND_ENCODING_H */

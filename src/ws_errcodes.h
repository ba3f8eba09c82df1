/*-------------------------------------------------------------------------
 *
 * ws_errcodes.h
 *	  SQLSTATEs of the write_scaling class "WS".
 *
 * Standard SQLSTATEs are used wherever one fits.  This class holds only the
 * conditions that a client must tell apart to act on them; each one is
 * documented in README.md ("Errors").
 *
 *-------------------------------------------------------------------------
 */
#ifndef WS_ERRCODES_H
#define WS_ERRCODES_H

#include "utils/elog.h"

/* The stream is not at the version the caller expected: re-read, retry. */
#define ERRCODE_WS_WRONG_EXPECTED_VERSION	MAKE_SQLSTATE('W','S','0','0','1')

/* An event id is already stored at another stream or version. */
#define ERRCODE_WS_EVENT_ID_CONFLICT		MAKE_SQLSTATE('W','S','0','0','2')

#endif							/* WS_ERRCODES_H */

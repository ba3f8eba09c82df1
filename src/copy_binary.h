/*-------------------------------------------------------------------------
 *
 * copy_binary.h
 *	  Values in COPY's binary format, written without a send function call
 *	  for the common built-in types.
 *
 *-------------------------------------------------------------------------
 */
#ifndef WS_COPY_BINARY_H
#define WS_COPY_BINARY_H

#include "postgres.h"

#include "fmgr.h"
#include "lib/stringinfo.h"

extern char ws_binary_form(Oid type);
extern void ws_append_binary_value(StringInfo out, char form, FmgrInfo *send, Datum value);

#endif							/* WS_COPY_BINARY_H */

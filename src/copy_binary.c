/*-------------------------------------------------------------------------
 *
 * copy_binary.c
 *	  Values in COPY's binary format, written without a send function call
 *	  for the common built-in types.
 *
 *	  A send function returns a fresh bytea built in a fresh StringInfo of
 *	  1kB; for a routed batch that is most of the coordinator's work per
 *	  value.  The binary forms written here are exactly what the send
 *	  functions write: the integer, floating-point, date and time types
 *	  send their Datum's bits in network byte order, bool one byte, uuid its
 *	  16 bytes, and bytea and the text types their bytes (text in the
 *	  database's encoding: see send_encoding.h).  Any other type calls its
 *	  send function.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "libpq/pqformat.h"
#include "utils/uuid.h"

#include "copy_binary.h"

#define FORM_SEND	0			/* call the send function */
#define FORM_INT2	1
#define FORM_INT4	2
#define FORM_INT8	3
#define FORM_BOOL	4
#define FORM_BYTES	5
#define FORM_UUID	6

/*
 * ws_binary_form says how values of a type are written.
 */
char
ws_binary_form(Oid type)
{
	switch (type)
	{
		case INT2OID:
			return FORM_INT2;
		case INT4OID:
		case OIDOID:
		case DATEOID:
		case FLOAT4OID:
			return FORM_INT4;
		case INT8OID:
		case TIMESTAMPOID:
		case TIMESTAMPTZOID:
		case TIMEOID:
		case FLOAT8OID:
		case CASHOID:
			return FORM_INT8;
		case BOOLOID:
			return FORM_BOOL;
		case TEXTOID:
		case VARCHAROID:
		case BPCHAROID:
		case BYTEAOID:
			return FORM_BYTES;
		case UUIDOID:
			return FORM_UUID;
		default:
			return FORM_SEND;
	}
}

/*
 * ws_append_binary_value appends a non-null value, with its length, as a
 * field of a COPY binary row.  send is the type's send function, used for
 * FORM_SEND.
 */
void
ws_append_binary_value(StringInfo out, char form, FmgrInfo *send, Datum value)
{
	switch (form)
	{
		case FORM_INT2:
			pq_sendint32(out, sizeof(int16));
			pq_sendint16(out, DatumGetUInt16(value));
			break;
		case FORM_INT4:
			/* float4's Datum holds its bits, as float4send sends them. */
			pq_sendint32(out, sizeof(int32));
			pq_sendint32(out, DatumGetUInt32(value));
			break;
		case FORM_INT8:
			pq_sendint32(out, sizeof(int64));
			pq_sendint64(out, DatumGetInt64(value));
			break;
		case FORM_BOOL:
			pq_sendint32(out, 1);
			pq_sendbyte(out, DatumGetBool(value) ? 1 : 0);
			break;
		case FORM_BYTES:
			{
				struct varlena *bytes = pg_detoast_datum_packed((struct varlena *) DatumGetPointer(value));

				pq_sendint32(out, VARSIZE_ANY_EXHDR(bytes));
				appendBinaryStringInfo(out, VARDATA_ANY(bytes), VARSIZE_ANY_EXHDR(bytes));
				if ((Pointer) bytes != DatumGetPointer(value))
					pfree(bytes);
			}
			break;
		case FORM_UUID:
			pq_sendint32(out, UUID_LEN);
			appendBinaryStringInfo(out, (char *) DatumGetUUIDP(value)->data, UUID_LEN);
			break;
		default:
			{
				bytea	   *bytes = SendFunctionCall(send, value);

				pq_sendint32(out, VARSIZE(bytes) - VARHDRSZ);
				appendBinaryStringInfo(out, VARDATA(bytes), VARSIZE(bytes) - VARHDRSZ);
				pfree(bytes);
			}
			break;
	}
}

/*-------------------------------------------------------------------------
 *
 * shard_hash.c
 *	  The key hash that decides on which shard a row lives.
 *
 * The hash decides where data lives, so it must give the same value on
 * every server, PostgreSQL version and architecture.  PostgreSQL's own
 * hash functions do not promise that (hash_bytes reads words in native
 * byte order).  Ours is defined on the bytes of the key's text form:
 *
 *	  h     = fmix64(FNV-1a-64(bytes))
 *	  hash  = h                          for seed 0
 *	        = fmix64(h XOR seed)         otherwise
 *
 * where FNV-1a-64 starts from 0xcbf29ce484222325 and multiplies by
 * 0x100000001b3, and fmix64 is MurmurHash3's 64-bit finaliser.  An integer
 * or uuid key is hashed by its text form too, so 42 and '42' go to the same
 * slot.
 *
 * The hash is the support function of hash operator classes
 * (ws.text_slot_ops and friends), so a distributed table is a hash-
 * partitioned table that PostgreSQL routes and prunes with it.  A key's
 * slot is then, as for any hash partition with one key column,
 *
 *	  slot = hash_combine64(0, hash(key, HASH_PARTITION_SEED)) mod slots
 *
 * which ws.shard_for computes the same way.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/partition.h"
#include "common/hashfn.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/uuid.h"

#include "shard.h"

#define FNV_OFFSET_BASIS	UINT64CONST(0xcbf29ce484222325)
#define FNV_PRIME			UINT64CONST(0x100000001b3)

PG_FUNCTION_INFO_V1(write_scaling_key_hash);
PG_FUNCTION_INFO_V1(write_scaling_key_slot);
PG_FUNCTION_INFO_V1(write_scaling_slot_hash_text);
PG_FUNCTION_INFO_V1(write_scaling_slot_hash_int2);
PG_FUNCTION_INFO_V1(write_scaling_slot_hash_int4);
PG_FUNCTION_INFO_V1(write_scaling_slot_hash_int8);
PG_FUNCTION_INFO_V1(write_scaling_slot_hash_uuid);

static inline uint64
fmix64(uint64 k)
{
	k ^= k >> 33;
	k *= UINT64CONST(0xff51afd7ed558ccd);
	k ^= k >> 33;
	k *= UINT64CONST(0xc4ceb9fe1a85ec53);
	k ^= k >> 33;
	return k;
}

/*
 * ws_key_hash hashes len bytes with seed, as the file header defines.
 */
uint64
ws_key_hash(const char *bytes, int len, uint64 seed)
{
	uint64		h = FNV_OFFSET_BASIS;

	for (int i = 0; i < len; i++)
	{
		h ^= (unsigned char) bytes[i];
		h *= FNV_PRIME;
	}
	h = fmix64(h);
	return seed == 0 ? h : fmix64(h ^ seed);
}

/*
 * ws_key_slot returns the slot of a key's text form among nslots, the
 * hash partition PostgreSQL routes the key to.
 */
int
ws_key_slot(const char *bytes, int len, int nslots)
{
	uint64		row_hash = hash_combine64(0, ws_key_hash(bytes, len, HASH_PARTITION_SEED));

	return (int) (row_hash % (uint64) nslots);
}

/*
 * ws.key_hash(key text) returns the unseeded hash, for documentation and
 * tests (as a signed bigint: the same 64 bits).
 */
Datum
write_scaling_key_hash(PG_FUNCTION_ARGS)
{
	text	   *key = PG_GETARG_TEXT_PP(0);

	PG_RETURN_INT64((int64) ws_key_hash(VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key), 0));
}

/*
 * ws.key_slot(key text, slots int) returns the key's slot among slots.
 */
Datum
write_scaling_key_slot(PG_FUNCTION_ARGS)
{
	text	   *key = PG_GETARG_TEXT_PP(0);
	int32		nslots = PG_GETARG_INT32(1);

	if (nslots < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("number of slots must be at least 1")));
	PG_RETURN_INT32(ws_key_slot(VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key), nslots));
}

/* Support function 2 (extended hash) of the slot operator classes. */

static Datum
hash_cstring(const char *s, int64 seed)
{
	return Int64GetDatum((int64) ws_key_hash(s, strlen(s), (uint64) seed));
}

Datum
write_scaling_slot_hash_text(PG_FUNCTION_ARGS)
{
	text	   *key = PG_GETARG_TEXT_PP(0);

	PG_RETURN_INT64((int64) ws_key_hash(VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key),
										(uint64) PG_GETARG_INT64(1)));
}

Datum
write_scaling_slot_hash_int2(PG_FUNCTION_ARGS)
{
	char		buf[8];

	pg_itoa(PG_GETARG_INT16(0), buf);
	return hash_cstring(buf, PG_GETARG_INT64(1));
}

Datum
write_scaling_slot_hash_int4(PG_FUNCTION_ARGS)
{
	char		buf[12];

	pg_ltoa(PG_GETARG_INT32(0), buf);
	return hash_cstring(buf, PG_GETARG_INT64(1));
}

Datum
write_scaling_slot_hash_int8(PG_FUNCTION_ARGS)
{
	char		buf[MAXINT8LEN + 1];

	pg_lltoa(PG_GETARG_INT64(0), buf);
	return hash_cstring(buf, PG_GETARG_INT64(1));
}

Datum
write_scaling_slot_hash_uuid(PG_FUNCTION_ARGS)
{
	char	   *s = DatumGetCString(DirectFunctionCall1(uuid_out, PG_GETARG_DATUM(0)));

	return hash_cstring(s, PG_GETARG_INT64(1));
}

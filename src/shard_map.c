/*-------------------------------------------------------------------------
 *
 * shard_map.c
 *	  ws.shard_for: which shard server holds a key.
 *
 * A shard map has a fixed number of slots (its vnodes); a key's slot comes
 * from the stable key hash (shard_hash.c), and ws.shard_slots says on
 * which server each slot's rows are placed.  Each backend caches a map's
 * placement in CacheMemoryContext; the functions that change a map send a
 * relcache invalidation of ws.shard_slots (ws._shard_maps_changed), which
 * drops the cache.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "shard.h"

typedef struct MapEntry
{
	char		name[NAMEDATALEN];	/* hash key */
	int			nslots;
	int			nplaced;		/* slots with a server */
	NameData   *placed_on;		/* per slot; empty name when none */
} MapEntry;

static HTAB *map_cache = NULL;
static Oid	slots_relid = InvalidOid;

PG_FUNCTION_INFO_V1(write_scaling_shard_for);
PG_FUNCTION_INFO_V1(write_scaling_shard_maps_changed);

static void
map_cache_invalidate(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	MapEntry   *entry;

	if (map_cache == NULL || (relid != InvalidOid && relid != slots_relid))
		return;
	hash_seq_init(&status, map_cache);
	while ((entry = hash_seq_search(&status)) != NULL)
	{
		if (entry->placed_on != NULL)
			pfree(entry->placed_on);
		(void) hash_search(map_cache, entry->name, HASH_REMOVE, NULL);
	}
	/* After DROP EXTENSION, the table has a new OID: look it up again. */
	slots_relid = InvalidOid;
}

static Oid
shard_slots_relid(void)
{
	if (!OidIsValid(slots_relid))
		slots_relid = get_relname_relid("shard_slots", get_namespace_oid("ws", false));
	return slots_relid;
}

/*
 * load_map fills entry from ws.shard_maps and ws.shard_slots; raises an
 * error if there is no such map.
 */
static void
load_map(const char *name, MapEntry *entry)
{
	static SPIPlanPtr plan = NULL;
	Datum		arg = CStringGetTextDatum(name);
	uint64		rows;
	bool		isnull;
	int			guc_level = ws_shard_spi_connect();

	if (plan == NULL)
	{
		plan = SPI_prepare("SELECT m.vnodes, s.slot, s.placed_on FROM ws.shard_maps m"
						   " LEFT JOIN ws.shard_slots s ON s.map = m.map"
						   " WHERE m.map = $1",
						   1, (Oid[]) {TEXTOID});
		if (plan == NULL || SPI_keepplan(plan) != 0)
			elog(ERROR, "could not prepare the shard map lookup");
	}
	if (SPI_execute_plan(plan, &arg, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read ws.shard_slots");
	rows = SPI_processed;
	if (rows == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("shard map \"%s\" does not exist", name),
				 errhint("Create it with ws.create_shard_map().")));

	entry->nslots = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
												&isnull));
	entry->nplaced = 0;
	entry->placed_on = MemoryContextAllocZero(CacheMemoryContext,
											  sizeof(NameData) * entry->nslots);
	for (uint64 i = 0; i < rows; i++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		slot_null;
		bool		server_null;
		Datum		slot = SPI_getbinval(tuple, desc, 2, &slot_null);
		Datum		server = SPI_getbinval(tuple, desc, 3, &server_null);

		if (slot_null || server_null || DatumGetInt32(slot) >= entry->nslots)
			continue;
		namestrcpy(&entry->placed_on[DatumGetInt32(slot)], NameStr(*DatumGetName(server)));
		entry->nplaced++;
	}
	ws_shard_spi_finish(guc_level);
}

static MapEntry *
open_map(text *name_text)
{
	char	   *name = text_to_cstring(name_text);
	MapEntry   *entry;
	bool		found;

	if (strlen(name) >= NAMEDATALEN)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("shard map \"%.*s...\" does not exist", 32, name)));
	if (map_cache == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = NAMEDATALEN;
		ctl.entrysize = sizeof(MapEntry);
		ctl.hcxt = CacheMemoryContext;
		map_cache = hash_create("write_scaling shard maps", 8, &ctl,
								HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
		CacheRegisterRelcacheCallback(map_cache_invalidate, (Datum) 0);
	}
	(void) shard_slots_relid();

	entry = hash_search(map_cache, name, HASH_FIND, NULL);
	if (entry == NULL)
	{
		MapEntry	loaded;

		load_map(name, &loaded);
		entry = hash_search(map_cache, name, HASH_ENTER, &found);
		entry->nslots = loaded.nslots;
		entry->nplaced = loaded.nplaced;
		entry->placed_on = loaded.placed_on;
	}
	return entry;
}

/*
 * ws.shard_for(map, key) returns the foreign server that holds key's rows.
 */
Datum
write_scaling_shard_for(PG_FUNCTION_ARGS)
{
	MapEntry   *map;
	text	   *key;
	int			slot;
	Name		result;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("shard map name must not be null")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("shard key must not be null"),
				 errdetail("A row without a key belongs to no shard.")));
	/* Detoasting can process invalidations: before the map is looked at. */
	key = PG_GETARG_TEXT_PP(1);
	map = open_map(PG_GETARG_TEXT_PP(0));
	slot = ws_key_slot(VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key), map->nslots);
	if (NameStr(map->placed_on[slot])[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("shard map \"%s\" has no shards", text_to_cstring(PG_GETARG_TEXT_PP(0))),
				 errhint("Add one with ws.add_shard().")));
	result = palloc(NAMEDATALEN);
	memcpy(result, &map->placed_on[slot], NAMEDATALEN);
	PG_RETURN_NAME(result);
}

/*
 * ws._shard_maps_changed() makes every backend reload its shard maps when
 * the transaction commits (and this one at once).
 */
Datum
write_scaling_shard_maps_changed(PG_FUNCTION_ARGS)
{
	CacheInvalidateRelcacheByRelid(shard_slots_relid());
	PG_RETURN_VOID();
}

/*-------------------------------------------------------------------------
 *
 * store_catalog.c
 *	  Finds event stores by name and keeps their prepared statements.
 *
 * ws.event_stores maps a store name to its events table.  Each backend
 * caches that mapping, the store's shared-memory slot and its SPI plans in
 * a hash table in CacheMemoryContext, so an append costs no catalog query.
 * Dropping or altering the events table sends a relcache invalidation; the
 * callback only marks the entry invalid, and the plans are freed when the
 * entry is next filled.  ws_open_store locks the table before trusting the
 * entry, because taking the lock is what processes pending invalidations.
 *
 * Every statement names the table schema-qualified and takes user values
 * only as parameters.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "event_store.h"

/* The columns of ws.event, cast in case the user altered the table. */
#define EVENT_COLUMNS \
	"stream::text, version::bigint, global_position::bigint, id::uuid," \
	" type::text, data::jsonb, metadata::jsonb, recorded_at::timestamptz"

static HTAB *store_cache = NULL;

static void store_cache_invalidate(Datum arg, Oid relid);
static Oid	lookup_store(const char *name, int *snapshot_every);
static void reset_entry(StoreEntry *entry, Oid relid, int snapshot_every);

/*
 * ws_store_name_arg checks a store name argument and returns it as a C
 * string.  A name that does not fit a table name cannot be a store.
 */
char *
ws_store_name_arg(text *name)
{
	char	   *result = text_to_cstring(name);

	if (strlen(result) >= NAMEDATALEN)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("event store \"%.*s...\" does not exist", 32, result),
				 errdetail("Event store names are at most %d characters.", NAMEDATALEN - 1)));
	return result;
}

/*
 * ws_open_store returns the cache entry of the store called name, with its
 * events table locked in lockmode until the end of the transaction.  The
 * caller is connected to SPI.  Raises an error if there is no such store.
 */
StoreEntry *
ws_open_store(const char *name, LOCKMODE lockmode)
{
	if (store_cache == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = NAMEDATALEN;
		ctl.entrysize = sizeof(StoreEntry);
		ctl.hcxt = CacheMemoryContext;
		store_cache = hash_create("write_scaling event stores", 16, &ctl,
								  HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
		CacheRegisterRelcacheCallback(store_cache_invalidate, (Datum) 0);
	}

	for (;;)
	{
		bool		found;
		StoreEntry *entry = hash_search(store_cache, name, HASH_FIND, NULL);

		/* Look the name up before entering it: unknown names leave no entry. */
		if (entry == NULL || !entry->valid)
		{
			int			snapshot_every;
			Oid			relid = lookup_store(name, &snapshot_every);

			entry = hash_search(store_cache, name, HASH_ENTER, &found);
			if (!found)
			{
				memset(entry->plans, 0, sizeof(entry->plans));
				entry->table_name = NULL;
			}
			reset_entry(entry, relid, snapshot_every);
		}

		LockRelationOid(entry->relid, lockmode);
		if (entry->valid)
			return entry;

		/* Invalidated while we waited for the lock: look it up again. */
		UnlockRelationOid(entry->relid, lockmode);
	}
}

/*
 * lookup_store returns the events table of the store called name, from
 * ws.event_stores, and sets *snapshot_every from its snapshot policy (0 if
 * none); raises an error if there is no such store.
 */
static Oid
lookup_store(const char *name, int *snapshot_every)
{
	static SPIPlanPtr lookup_plan = NULL;
	Datum		arg = CStringGetTextDatum(name);
	bool		isnull;
	int			rc;

	if (lookup_plan == NULL)
	{
		Oid			argtypes[1] = {TEXTOID};
		SPIPlanPtr	plan;

		plan = SPI_prepare("SELECT s.events_table::oid, coalesce(p.every, 0)"
						   " FROM ws.event_stores s"
						   " LEFT JOIN ws.snapshot_policies p ON p.store = s.name"
						   " WHERE s.name = $1",
						   1, argtypes);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		lookup_plan = plan;
	}

	rc = SPI_execute_plan(lookup_plan, &arg, NULL, true, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("event store \"%s\" does not exist", name),
				 errhint("Create it with ws.create_event_store().")));

	*snapshot_every = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
												  SPI_tuptable->tupdesc, 2, &isnull));
	return DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0],
										  SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * reset_entry points entry at relid and forgets everything derived from the
 * table it named before.
 */
static void
reset_entry(StoreEntry *entry, Oid relid, int snapshot_every)
{
	char	   *table_name = quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
														get_rel_name(relid));

	/*
	 * Plans of the same table under the same name stay: the plan cache
	 * revalidates them, and one may be running (a trigger on the events table
	 * can call ws.* again).  A new table, or a renamed one (the plans name it
	 * in their text), cannot have a plan running: DROP and ALTER refuse a
	 * table in use.
	 */
	if (relid != entry->relid || entry->table_name == NULL ||
		strcmp(table_name, entry->table_name) != 0)
	{
		for (int i = 0; i < NUM_STORE_PLANS; i++)
		{
			if (entry->plans[i] != NULL)
				SPI_freeplan(entry->plans[i]);
			entry->plans[i] = NULL;
		}
	}
	if (entry->table_name != NULL)
		pfree(entry->table_name);
	entry->table_name = MemoryContextStrdup(CacheMemoryContext, table_name);
	entry->relid = relid;
	entry->snapshot_every = snapshot_every;
	entry->slot = -1;
	entry->slot_loaded = false;
	entry->version_index = InvalidOid;
	entry->valid = true;
}

static void
store_cache_invalidate(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	StoreEntry *entry;

	hash_seq_init(&status, store_cache);
	while ((entry = hash_seq_search(&status)) != NULL)
		if (relid == InvalidOid || entry->relid == relid)
			entry->valid = false;
}

/*
 * ws_store_plan returns one of the store's statements, preparing it on first
 * use.  The caller is connected to SPI and holds a lock on the table.
 */
SPIPlanPtr
ws_store_plan(StoreEntry *store, StorePlan which)
{
	char	   *table;
	const char *sql = NULL;
	Oid			types[7];
	int			nargs = 0;
	SPIPlanPtr	plan;

	if (store->plans[which] != NULL)
		return store->plans[which];

	table = store->table_name;

	switch (which)
	{
		case PLAN_MAX_POSITION:
			sql = "SELECT pg_catalog.max(global_position) FROM %s";
			break;
		case PLAN_FIND_IDS:
			sql = "SELECT id, stream, version FROM %s WHERE id = ANY ($1)";
			types[nargs++] = UUIDARRAYOID;
			break;
		case PLAN_INSERT_ONE:
			sql = "INSERT INTO %s (global_position, stream, version, id, type, data, metadata)"
				" VALUES ($1, $2, $3, coalesce($4, pg_catalog.gen_random_uuid()), $5, $6, $7)";
			types[nargs++] = INT8OID;
			types[nargs++] = TEXTOID;
			types[nargs++] = INT8OID;
			types[nargs++] = UUIDOID;
			types[nargs++] = TEXTOID;
			types[nargs++] = JSONBOID;
			types[nargs++] = JSONBOID;
			break;
		case PLAN_INSERT_MANY:
			sql = "INSERT INTO %s (global_position, stream, version, id, type, data, metadata)"
				" SELECT $1 + e.n - 1, $2, $3 + e.n - 1, coalesce(e.id, pg_catalog.gen_random_uuid()),"
				" e.type, e.data, e.metadata"
				" FROM ROWS FROM (pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6),"
				" pg_catalog.unnest($7)) WITH ORDINALITY AS e (id, type, data, metadata, n)";
			types[nargs++] = INT8OID;
			types[nargs++] = TEXTOID;
			types[nargs++] = INT8OID;
			types[nargs++] = UUIDARRAYOID;
			types[nargs++] = TEXTARRAYOID;
			types[nargs++] = JSONBARRAYOID;
			types[nargs++] = JSONBARRAYOID;
			break;
		case PLAN_READ_STREAM:
			sql = "SELECT " EVENT_COLUMNS
				" FROM %s WHERE stream = $1 COLLATE \"C\" AND version >= $2"
				" ORDER BY version LIMIT $3";
			types[nargs++] = TEXTOID;
			types[nargs++] = INT8OID;
			types[nargs++] = INT8OID;
			break;
		case PLAN_QUEUE_SNAPSHOT:
			sql = "INSERT INTO ws.snapshot_queue (store, stream, due_version)"
				" VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";
			types[nargs++] = TEXTOID;
			types[nargs++] = TEXTOID;
			types[nargs++] = INT8OID;
			break;
		case PLAN_READ_ALL:
			sql = "SELECT " EVENT_COLUMNS
				" FROM %s WHERE global_position > $1 AND global_position <= $2"
				" ORDER BY global_position LIMIT $3";
			types[nargs++] = INT8OID;
			types[nargs++] = INT8OID;
			types[nargs++] = INT8OID;
			break;
		case NUM_STORE_PLANS:
			elog(ERROR, "invalid store plan %d", (int) which);
	}

	plan = SPI_prepare(psprintf(sql, table), nargs, types);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	store->plans[which] = plan;
	return plan;
}

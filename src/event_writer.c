/*-------------------------------------------------------------------------
 *
 * event_writer.c
 *	  Writes an append's events straight into the events table, as COPY FROM
 *	  does: table_multi_insert for the heap (one WAL record per page instead
 *	  of one per row), then the index entries, with constraints checked.
 *
 * This path skips the executor, so it serves only tables that are as
 * ws.create_event_store made them: a plain table with exactly the standard
 * columns, no triggers and no row-level security.  A table the user has
 * customised (a trigger that feeds a projection, say) is written through
 * SPI instead (event_store.c), where every rule applies as usual.
 *
 * The caller holds RowExclusiveLock on the table, has checked privileges,
 * and has reserved the positions.  Everything is allocated in a memory
 * context of its own, deleted before returning.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "nodes/makefuncs.h"
#include "nodes/parsenodes.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "event_store.h"

/* Slots filled before each table_multi_insert, as COPY's buffer. */
#define WS_MULTI_INSERT_SLOTS	1000

/* The columns of an events table, in order, and their types. */
static const char *const event_columns[] = {
	"global_position", "stream", "version", "id", "type", "data", "metadata",
	"recorded_at"
};
static const Oid event_column_types[] = {
	INT8OID, TEXTOID, INT8OID, UUIDOID, TEXTOID, JSONBOID, JSONBOID,
	TIMESTAMPTZOID
};

/*
 * ws_can_write_directly says whether rel is a standard events table that
 * ws_write_events may write: a plain table, not a partition, with exactly
 * the standard columns and types, and no trigger, rule or row-level
 * security.
 */
bool
ws_can_write_directly(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);

	if (rel->rd_rel->relkind != RELKIND_RELATION || rel->rd_rel->relispartition ||
		rel->trigdesc != NULL || rel->rd_rules != NULL ||
		rel->rd_rel->relrowsecurity || desc->natts != lengthof(event_columns))
		return false;

	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped || att->attgenerated ||
			att->atttypid != event_column_types[i] || att->atttypmod != -1 ||
			strcmp(NameStr(att->attname), event_columns[i]) != 0)
			return false;
	}
	return true;
}

/*
 * random_uuid returns a version 4 UUID, as gen_random_uuid() makes.
 */
static Datum
random_uuid(void)
{
	pg_uuid_t  *uuid = palloc(UUID_LEN);

	if (!pg_strong_random(uuid->data, UUID_LEN))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate random values")));
	uuid->data[6] = (uuid->data[6] & 0x0f) | 0x40;	/* version 4 */
	uuid->data[8] = (uuid->data[8] & 0x3f) | 0x80;	/* RFC 4122 variant */
	return UUIDPGetDatum(uuid);
}

/*
 * flush_slots inserts the filled slots into the heap and their entries into
 * every index.
 */
static void
flush_slots(ResultRelInfo *rri, EState *estate, TupleTableSlot **slots, int n)
{
	table_multi_insert(rri->ri_RelationDesc, slots, n,
					   GetCurrentCommandId(true), 0, NULL);
	for (int i = 0; i < n; i++)
	{
		List	   *recheck;

		recheck = ExecInsertIndexTuples(rri, slots[i], estate, false, false,
										NULL, NIL);
		list_free(recheck);
		ResetPerTupleExprContext(estate);
	}
}

/*
 * ws_write_events writes batch to rel at positions first_position ... and
 * versions first_version ... of stream.
 */
void
ws_write_events(Relation rel, int64 first_position, text *stream,
				int64 first_version, EventBatch *batch)
{
	MemoryContext context = AllocSetContextCreate(CurrentMemoryContext,
												  "write_scaling append",
												  ALLOCSET_DEFAULT_SIZES);
	MemoryContext oldcontext = MemoryContextSwitchTo(context);
	EState	   *estate = CreateExecutorState();
	RangeTblEntry *rte = makeNode(RangeTblEntry);
	ResultRelInfo *rri = makeNode(ResultRelInfo);
	int			nslots = Min(batch->count, WS_MULTI_INSERT_SLOTS);
	TupleTableSlot **slots = palloc(nslots * sizeof(TupleTableSlot *));
	Datum		recorded_at = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	bool		check_constraints = (RelationGetDescr(rel)->constr != NULL);
	int			filled = 0;

	/* Privileges were checked by the caller; the range table serves errors. */
	rte->rtekind = RTE_RELATION;
	rte->relid = RelationGetRelid(rel);
	rte->relkind = rel->rd_rel->relkind;
	rte->rellockmode = RowExclusiveLock;
	ExecInitRangeTable(estate, list_make1(rte));
	ExecInitResultRelation(estate, rri, 1);
	ExecOpenIndices(rri, false);

	for (int i = 0; i < nslots; i++)
		slots[i] = table_slot_create(rel, NULL);

	for (int i = 0; i < batch->count; i++)
	{
		TupleTableSlot *slot = slots[filled];
		Datum	   *values = slot->tts_values;
		bool	   *nulls = slot->tts_isnull;

		ExecClearTuple(slot);
		values[0] = Int64GetDatum(first_position + i);
		values[1] = PointerGetDatum(stream);
		values[2] = Int64GetDatum(first_version + i);
		values[3] = batch->id_nulls[i] ? random_uuid() : batch->ids[i];
		values[4] = batch->types[i];
		values[5] = batch->data[i];
		values[6] = batch->metadata[i];
		values[7] = recorded_at;
		memset(nulls, false, lengthof(event_columns) * sizeof(bool));
		nulls[6] = batch->metadata_nulls[i];
		ExecStoreVirtualTuple(slot);
		slot->tts_tableOid = RelationGetRelid(rel);

		if (check_constraints)
			ExecConstraints(rri, slot, estate);

		if (++filled == nslots)
		{
			flush_slots(rri, estate, slots, filled);
			filled = 0;
		}
	}
	if (filled > 0)
		flush_slots(rri, estate, slots, filled);

	for (int i = 0; i < nslots; i++)
		ExecDropSingleTupleTableSlot(slots[i]);
	ExecCloseResultRelations(estate);
	ExecCloseRangeTableRelations(estate);
	FreeExecutorState(estate);

	MemoryContextSwitchTo(oldcontext);
	MemoryContextDelete(context);
}

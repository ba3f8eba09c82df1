/*-------------------------------------------------------------------------
 *
 * event_input.c
 *	  Checks the events argument of ws.append and splits it into columns.
 *
 * The argument is one JSON object or a non-empty array of them.  Each object
 * has a non-empty string "type", a "data" value (any JSON but null), and
 * optionally a "metadata" object and an "id" UUID string; any other key is
 * refused, so that a typo such as "dta" fails loudly.  Everything is checked
 * before the store is touched, so a bad batch writes nothing.  Errors carry
 * a context line naming the event's place in the argument, as COPY names
 * its line.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

#include "event_store.h"

static const char *const event_keys[] = {"type", "data", "metadata", "id"};

static void event_error_context(void *arg);
static void parse_one_event(JsonbValue *value, int index, EventBatch *batch);
static void check_distinct_ids(EventBatch *batch);

/*
 * ws_parse_events fills batch from events; allocations go to the current
 * memory context.
 */
void
ws_parse_events(Jsonb *events, EventBatch *batch)
{
	ErrorContextCallback errcallback;
	int			index = 0;
	int			count;

	if (JB_ROOT_IS_SCALAR(events))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("events must be a JSON object or an array of objects")));

	count = JB_ROOT_IS_ARRAY(events) ? JB_ROOT_COUNT(events) : 1;
	if (count == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("events must not be an empty array")));

	batch->count = count;
	batch->any_id = false;
	batch->ids = palloc(count * sizeof(Datum));
	batch->id_nulls = palloc(count * sizeof(bool));
	batch->types = palloc(count * sizeof(Datum));
	batch->data = palloc(count * sizeof(Datum));
	batch->metadata = palloc(count * sizeof(Datum));
	batch->metadata_nulls = palloc(count * sizeof(bool));

	errcallback.callback = event_error_context;
	errcallback.arg = &index;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;

	if (JB_ROOT_IS_OBJECT(events))
	{
		JsonbValue	whole;

		whole.type = jbvBinary;
		whole.val.binary.data = &events->root;
		whole.val.binary.len = VARSIZE(events) - VARHDRSZ;
		parse_one_event(&whole, 0, batch);
	}
	else
	{
		for (index = 0; index < count; index++)
			parse_one_event(getIthJsonbValueFromContainer(&events->root, index),
							index, batch);
	}

	error_context_stack = errcallback.previous;

	if (batch->any_id && count > 1)
		check_distinct_ids(batch);
}

static void
event_error_context(void *arg)
{
	int			index = *(int *) arg;

	errcontext("event %d of the events argument", index + 1);
}

static void
parse_one_event(JsonbValue *value, int index, EventBatch *batch)
{
	JsonbContainer *obj;
	JsonbValue *type;
	JsonbValue *data;
	JsonbValue *metadata;
	JsonbValue *id;
	int			known = 0;

	if (value->type != jbvBinary || !JsonContainerIsObject(value->val.binary.data))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event %d is not a JSON object", index + 1)));
	obj = value->val.binary.data;

	type = getKeyJsonValueFromContainer(obj, "type", 4, NULL);
	data = getKeyJsonValueFromContainer(obj, "data", 4, NULL);
	metadata = getKeyJsonValueFromContainer(obj, "metadata", 8, NULL);
	id = getKeyJsonValueFromContainer(obj, "id", 2, NULL);
	known = (type != NULL) + (data != NULL) + (metadata != NULL) + (id != NULL);

	if (known < (int) JsonContainerSize(obj))
	{
		JsonbIterator *it = JsonbIteratorInit(obj);
		JsonbValue	key;
		JsonbIteratorToken tok;

		while ((tok = JsonbIteratorNext(&it, &key, true)) != WJB_DONE)
		{
			bool		listed = false;

			if (tok != WJB_KEY)
				continue;
			for (int k = 0; k < lengthof(event_keys); k++)
				listed |= (strlen(event_keys[k]) == key.val.string.len &&
						   memcmp(event_keys[k], key.val.string.val, key.val.string.len) == 0);
			if (!listed)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("event %d has an unknown key \"%.*s\"", index + 1,
								Min(key.val.string.len, 64), key.val.string.val),
						 errhint("An event has the keys \"type\", \"data\", \"metadata\" and \"id\".")));
		}
	}

	if (type == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event %d has no \"type\"", index + 1),
				 errhint("Every event needs a non-empty string \"type\" and a \"data\" value.")));
	if (type->type != jbvString || type->val.string.len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("\"type\" of event %d must be a non-empty string", index + 1)));
	batch->types[index] = PointerGetDatum(cstring_to_text_with_len(type->val.string.val,
																   type->val.string.len));

	if (data == NULL || data->type == jbvNull)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event %d has no \"data\"", index + 1),
				 errhint("Every event needs a non-empty string \"type\" and a \"data\" value; use {} for an event without data.")));
	batch->data[index] = JsonbPGetDatum(JsonbValueToJsonb(data));

	batch->metadata_nulls[index] = (metadata == NULL || metadata->type == jbvNull);
	if (!batch->metadata_nulls[index])
	{
		if (metadata->type != jbvBinary ||
			!JsonContainerIsObject(metadata->val.binary.data))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("\"metadata\" of event %d must be a JSON object", index + 1)));
		batch->metadata[index] = JsonbPGetDatum(JsonbValueToJsonb(metadata));
	}
	else
		batch->metadata[index] = (Datum) 0;

	batch->id_nulls[index] = (id == NULL || id->type == jbvNull);
	if (!batch->id_nulls[index])
	{
		if (id->type != jbvString)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("\"id\" of event %d must be a UUID string", index + 1)));
		batch->ids[index] = DirectFunctionCall1(uuid_in,
												CStringGetDatum(pnstrdup(id->val.string.val,
																		 id->val.string.len)));
		batch->any_id = true;
	}
	else
		batch->ids[index] = (Datum) 0;
}

static int
uuid_cmp_datum(const void *a, const void *b)
{
	return memcmp(DatumGetUUIDP(*(const Datum *) a),
				  DatumGetUUIDP(*(const Datum *) b), UUID_LEN);
}

/*
 * check_distinct_ids refuses a batch that names one id twice: it could
 * never be stored, and a unique violation halfway would be a worse message.
 */
static void
check_distinct_ids(EventBatch *batch)
{
	Datum	   *sorted = palloc(batch->count * sizeof(Datum));
	int			n = 0;

	for (int i = 0; i < batch->count; i++)
		if (!batch->id_nulls[i])
			sorted[n++] = batch->ids[i];
	qsort(sorted, n, sizeof(Datum), uuid_cmp_datum);
	for (int i = 1; i < n; i++)
		if (uuid_cmp_datum(&sorted[i - 1], &sorted[i]) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("event ids must be distinct within one append"),
					 errdetail("Id %s appears more than once.",
							   DatumGetCString(DirectFunctionCall1(uuid_out, sorted[i])))));
	pfree(sorted);
}

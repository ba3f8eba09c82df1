/* write_scaling--0.1.0.sql */

\echo Use "CREATE EXTENSION write_scaling" to load this file. \quit

-- The schema ws is created by CREATE EXTENSION (see write_scaling.control).
GRANT USAGE ON SCHEMA ws TO PUBLIC;

------------------------------------------------------------------------------
-- Event stores
------------------------------------------------------------------------------

CREATE TABLE ws.event_stores (
	name text PRIMARY KEY,
	events_table regclass NOT NULL UNIQUE,
	created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE ws.event_stores IS
	'Event stores created by ws.create_event_store, with their events tables';
SELECT pg_catalog.pg_extension_config_dump('ws.event_stores', '');
GRANT SELECT ON ws.event_stores TO PUBLIC;

CREATE TYPE ws.event AS (
	stream text,
	version bigint,
	global_position bigint,
	id uuid,
	type text,
	data jsonb,
	metadata jsonb,
	recorded_at timestamptz
);
COMMENT ON TYPE ws.event IS
	'One stored event: what ws.read_stream returns and reducers take';

CREATE FUNCTION ws.create_event_store(store text)
RETURNS regclass
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	events_table regclass;
BEGIN
	IF store IS NULL THEN
		RAISE EXCEPTION 'event store name must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF store !~ '^[a-z][a-z0-9_]{0,47}$' THEN
		RAISE EXCEPTION 'invalid event store name "%"', left(store, 64)
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'An event store name has 1 to 48 characters: lower-case letters, digits and underscores, starting with a letter.';
	END IF;
	IF EXISTS (SELECT FROM ws.event_stores s WHERE s.name = store) THEN
		RAISE EXCEPTION 'event store "%" already exists', store
			USING ERRCODE = 'duplicate_object';
	END IF;

	EXECUTE format($ddl$
		CREATE TABLE ws.%1$I (
			global_position bigint NOT NULL,
			stream text COLLATE "C" NOT NULL,
			version bigint NOT NULL,
			id uuid NOT NULL,
			type text NOT NULL,
			data jsonb NOT NULL,
			metadata jsonb,
			recorded_at timestamptz NOT NULL DEFAULT now(),
			CONSTRAINT %2$I PRIMARY KEY (global_position),
			CONSTRAINT %3$I UNIQUE (stream, version),
			CONSTRAINT %4$I UNIQUE (id),
			CONSTRAINT %5$I CHECK (version > 0 AND global_position > 0)
		)$ddl$,
		store || '_events', store || '_events_pkey',
		store || '_events_stream_version_key', store || '_events_id_key',
		store || '_events_check');
	events_table := format('ws.%I', store || '_events')::regclass;
	EXECUTE format('COMMENT ON TABLE %s IS %L', events_table,
				   'Events of event store ' || store || '; write through ws.append only');
	INSERT INTO ws.event_stores (name, events_table) VALUES (store, events_table);
	RETURN events_table;
END
$$;
COMMENT ON FUNCTION ws.create_event_store(text) IS
	'Creates an event store: an append-only events table registered in ws.event_stores';

CREATE FUNCTION ws._forget_event_store(events_table regclass)
RETURNS void
LANGUAGE c STRICT
AS 'MODULE_PATHNAME', 'write_scaling_forget_event_store';
COMMENT ON FUNCTION ws._forget_event_store(regclass) IS
	'Internal: frees the shared memory of a dropped event store when the transaction commits';

CREATE FUNCTION ws.drop_event_store(store text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	dropped regclass;
BEGIN
	IF store IS NULL THEN
		RAISE EXCEPTION 'event store name must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	DELETE FROM ws.event_stores s WHERE s.name = store
		RETURNING s.events_table INTO dropped;
	IF dropped IS NULL THEN
		RAISE EXCEPTION 'event store "%" does not exist', left(store, 64)
			USING ERRCODE = 'undefined_object';
	END IF;
	PERFORM ws._forget_event_store(dropped);
	EXECUTE format('DROP TABLE %s', dropped);
END
$$;
COMMENT ON FUNCTION ws.drop_event_store(text) IS
	'Drops an event store and all its events';

CREATE FUNCTION ws.append(store text, stream text, expected_version bigint,
						  events jsonb)
RETURNS bigint
LANGUAGE c
AS 'MODULE_PATHNAME', 'write_scaling_append';
COMMENT ON FUNCTION ws.append(text, text, bigint, jsonb) IS
	'Appends one event or an array of events to a stream; expected_version NULL = any, 0 = new stream, n = exactly n; returns the new version';

CREATE FUNCTION ws.read_stream(store text, stream text,
							   from_version bigint DEFAULT 1,
							   max_count int DEFAULT NULL)
RETURNS SETOF ws.event
LANGUAGE c
AS 'MODULE_PATHNAME', 'write_scaling_read_stream';
COMMENT ON FUNCTION ws.read_stream(text, text, bigint, int) IS
	'Returns a stream''s events from from_version on, in version order';

CREATE FUNCTION ws.read_all(store text, after bigint DEFAULT 0,
							max_count int DEFAULT 1000)
RETURNS TABLE (stream text, version bigint, global_position bigint, id uuid,
			   type text, data jsonb, metadata jsonb, recorded_at timestamptz,
			   safe_position bigint)
LANGUAGE c
AS 'MODULE_PATHNAME', 'write_scaling_read_all';
COMMENT ON FUNCTION ws.read_all(text, bigint, int) IS
	'Returns the events of all streams after global position "after", never skipping one that commits later; pass back the last global_position received';

CREATE FUNCTION ws.stream_version(store text, stream text)
RETURNS bigint
LANGUAGE c
AS 'MODULE_PATHNAME', 'write_scaling_stream_version';
COMMENT ON FUNCTION ws.stream_version(text, text) IS
	'Returns a stream''s current version, 0 if it has no events';

CREATE FUNCTION ws.safe_position(store text)
RETURNS bigint
LANGUAGE c
AS 'MODULE_PATHNAME', 'write_scaling_safe_position';
COMMENT ON FUNCTION ws.safe_position(text) IS
	'Returns the global position up to which ws.read_all can read now';

REVOKE ALL ON FUNCTION ws.create_event_store(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ws.drop_event_store(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ws._forget_event_store(regclass) FROM PUBLIC;

------------------------------------------------------------------------------
-- Statistics
------------------------------------------------------------------------------

CREATE FUNCTION ws._event_store_stats(
	OUT events_table oid, OUT last_position bigint, OUT safe_position bigint,
	OUT in_flight int, OUT oldest_in_flight_position bigint,
	OUT oldest_in_flight_pid int, OUT appends bigint, OUT events bigint,
	OUT version_conflicts bigint, OUT idempotent_replays bigint,
	OUT loaded bool)
RETURNS SETOF record
LANGUAGE c STRICT
AS 'MODULE_PATHNAME', 'write_scaling_event_store_stats';
COMMENT ON FUNCTION ws._event_store_stats() IS
	'Internal: shared-memory state of this database''s event stores, behind ws.stat_event_stores';

CREATE VIEW ws.stat_event_stores AS
SELECT s.name AS store,
	   st.last_position,
	   st.safe_position,
	   coalesce(st.in_flight, 0) AS in_flight_appends,
	   st.oldest_in_flight_position,
	   st.oldest_in_flight_pid,
	   coalesce(st.appends, 0) AS appends,
	   coalesce(st.events, 0) AS events_appended,
	   coalesce(st.version_conflicts, 0) AS version_conflicts,
	   coalesce(st.idempotent_replays, 0) AS idempotent_replays
FROM ws.event_stores s
LEFT JOIN ws._event_store_stats() st ON st.events_table = s.events_table::oid;
COMMENT ON VIEW ws.stat_event_stores IS
	'One row per event store: positions, in-flight appends holding readers back, and counters since server start';

CREATE VIEW ws.stats AS
SELECT 'event_store'::text AS area, e.store AS object, c.counter, c.value
FROM ws.stat_event_stores e,
	 LATERAL (VALUES ('appends', e.appends),
					 ('events_appended', e.events_appended),
					 ('version_conflicts', e.version_conflicts),
					 ('idempotent_replays', e.idempotent_replays),
					 ('in_flight_appends', e.in_flight_appends::bigint))
	 AS c (counter, value);
COMMENT ON VIEW ws.stats IS
	'Every write_scaling counter, one row per (area, object, counter); counters start at zero at server start';

GRANT SELECT ON ws.stat_event_stores, ws.stats TO PUBLIC;

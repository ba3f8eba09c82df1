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

GRANT SELECT ON ws.stat_event_stores TO PUBLIC;

------------------------------------------------------------------------------
-- Snapshots
------------------------------------------------------------------------------

CREATE TABLE ws.snapshot_policies (
	store text PRIMARY KEY REFERENCES ws.event_stores (name) ON DELETE CASCADE,
	reducer regprocedure NOT NULL,
	every int NOT NULL CHECK (every > 0),
	reducer_version int NOT NULL,
	set_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE ws.snapshot_policies IS
	'Per event store: the reducer that folds events into state, and how often to snapshot';
SELECT pg_catalog.pg_extension_config_dump('ws.snapshot_policies', '');
GRANT SELECT ON ws.snapshot_policies TO PUBLIC;

-- The latest snapshot of each stream.  One is usable only while its
-- reducer, reducer_version and fingerprint (a hash of the reducer's
-- definition) match the store's policy; any other is ignored and rebuilt.
CREATE TABLE ws.snapshots (
	store text NOT NULL REFERENCES ws.event_stores (name) ON DELETE CASCADE,
	stream text COLLATE "C" NOT NULL,
	version bigint NOT NULL CHECK (version > 0),
	state jsonb,
	reducer regprocedure NOT NULL,
	reducer_version int NOT NULL,
	fingerprint bigint NOT NULL,
	taken_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (store, stream)
);
COMMENT ON TABLE ws.snapshots IS
	'Latest snapshot of each stream: state after folding events 1..version through the reducer';
SELECT pg_catalog.pg_extension_config_dump('ws.snapshots', '');
GRANT SELECT ON ws.snapshots TO PUBLIC;

-- Streams the snapshot worker has to visit: an append adds a row when the
-- stream's version crosses a multiple of the policy's "every" (due_version
-- is that multiple), so that no pass scans an events table.  A new row per
-- crossing, never an update: an append never waits for the worker, and a
-- crossing that happens while the worker snapshots the stream is not lost.
-- The worker deletes the rows its snapshot covers.  A reducer error stays
-- here with the error, and is retried with backoff.
CREATE TABLE ws.snapshot_queue (
	store text NOT NULL REFERENCES ws.event_stores (name) ON DELETE CASCADE,
	stream text COLLATE "C" NOT NULL,
	due_version bigint NOT NULL,
	queued_at timestamptz NOT NULL DEFAULT now(),
	attempts int NOT NULL DEFAULT 0 CHECK (attempts >= 0),
	next_attempt_at timestamptz NOT NULL DEFAULT now(),
	last_error text,
	last_sqlstate text,
	PRIMARY KEY (store, stream, due_version)
);
COMMENT ON TABLE ws.snapshot_queue IS
	'Streams due for a snapshot, with the last reducer error of those that failed';
SELECT pg_catalog.pg_extension_config_dump('ws.snapshot_queue', '');
-- Appends (run as the appending role) queue streams here.
GRANT SELECT ON ws.snapshot_queue TO PUBLIC;
GRANT INSERT (store, stream, due_version) ON ws.snapshot_queue TO PUBLIC;

-- Snapshots and queued streams show only to roles that may read (or, to
-- queue, write) the store's events table: row-level security, since the
-- tables are shared by all stores.
CREATE FUNCTION ws._may_access_store(store text, privilege text)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce((SELECT has_table_privilege(s.events_table, privilege)
					 FROM ws.event_stores s WHERE s.name = store), false)
$$;
COMMENT ON FUNCTION ws._may_access_store(text, text) IS
	'Internal: whether the current role has a privilege on a store''s events table';

ALTER TABLE ws.snapshots ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers_of_the_store ON ws.snapshots FOR SELECT
	USING (ws._may_access_store(store, 'SELECT'));
ALTER TABLE ws.snapshot_queue ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers_of_the_store ON ws.snapshot_queue FOR SELECT
	USING (ws._may_access_store(store, 'SELECT'));
CREATE POLICY writers_of_the_store ON ws.snapshot_queue FOR INSERT
	WITH CHECK (ws._may_access_store(store, 'INSERT'));

CREATE VIEW ws.snapshot_errors WITH (security_invoker = true) AS
SELECT DISTINCT ON (store, stream)
	   store, stream, attempts, last_error AS error, last_sqlstate AS sqlstate,
	   next_attempt_at
FROM ws.snapshot_queue
WHERE last_error IS NOT NULL
ORDER BY store, stream, attempts DESC;
COMMENT ON VIEW ws.snapshot_errors IS
	'Streams whose reducer failed in the snapshot worker, with the error; retried with backoff';
GRANT SELECT ON ws.snapshot_errors TO PUBLIC;

CREATE FUNCTION ws._reducer_fingerprint(reducer regprocedure)
RETURNS bigint
LANGUAGE c STRICT STABLE
AS 'MODULE_PATHNAME', 'write_scaling_reducer_fingerprint';
COMMENT ON FUNCTION ws._reducer_fingerprint(regprocedure) IS
	'Internal: hash of a reducer''s definition, stored with each snapshot';

CREATE FUNCTION ws._store_changed(events_table regclass)
RETURNS void
LANGUAGE c STRICT
AS 'MODULE_PATHNAME', 'write_scaling_store_changed';
COMMENT ON FUNCTION ws._store_changed(regclass) IS
	'Internal: makes every session reload what it caches about an event store';

CREATE FUNCTION ws.set_snapshot_policy(store text, reducer regprocedure,
									   every int DEFAULT 100,
									   reducer_version int DEFAULT 1)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	events_table regclass;
	f pg_proc;
BEGIN
	IF store IS NULL OR reducer IS NULL OR every IS NULL OR reducer_version IS NULL THEN
		RAISE EXCEPTION 'arguments of ws.set_snapshot_policy must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT s.events_table INTO events_table FROM ws.event_stores s WHERE s.name = store;
	IF events_table IS NULL THEN
		RAISE EXCEPTION 'event store "%" does not exist', left(store, 64)
			USING ERRCODE = 'undefined_object',
				  HINT = 'Create it with ws.create_event_store().';
	END IF;
	IF every <= 0 THEN
		RAISE EXCEPTION 'snapshot interval "every" must be greater than 0'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The interval was %s.', every);
	END IF;
	SELECT * INTO f FROM pg_proc WHERE oid = reducer;
	IF f.pronargs <> 2 OR f.proargtypes[0] <> 'jsonb'::regtype
	   OR f.proargtypes[1] <> 'ws.event'::regtype OR f.prorettype <> 'jsonb'::regtype
	   OR f.proretset OR f.prokind <> 'f' THEN
		RAISE EXCEPTION 'function % cannot be a reducer', reducer
			USING ERRCODE = 'invalid_function_definition',
				  HINT = 'A reducer is a function (state jsonb, event ws.event) returning jsonb.';
	END IF;
	IF f.proisstrict THEN
		RAISE EXCEPTION 'reducer % must not be STRICT', reducer
			USING ERRCODE = 'invalid_function_definition',
				  DETAIL = 'The state is NULL before the first event, and a STRICT function would never be called.';
	END IF;

	INSERT INTO ws.snapshot_policies AS p (store, reducer, every, reducer_version)
	VALUES (store, reducer, every, reducer_version)
	ON CONFLICT ON CONSTRAINT snapshot_policies_pkey DO UPDATE
		SET reducer = excluded.reducer, every = excluded.every,
			reducer_version = excluded.reducer_version, set_at = now();

	-- Queue every stream that is due under the new policy: those with
	-- "every" events or more past their snapshot, or whose snapshot the new
	-- policy cannot use.  This scans the events table once.
	EXECUTE format($q$
		INSERT INTO ws.snapshot_queue (store, stream, due_version)
		SELECT $1, e.stream, max(e.version) FROM %s e
		LEFT JOIN ws.snapshots s ON s.store = $1 AND s.stream = e.stream
		GROUP BY e.stream, s.version, s.reducer, s.reducer_version, s.fingerprint
		HAVING max(e.version) - coalesce(s.version, 0) >= $2
			OR (s.version IS NOT NULL AND (s.reducer, s.reducer_version, s.fingerprint)
				IS DISTINCT FROM ($3, $4, ws._reducer_fingerprint($3)))
		ON CONFLICT DO NOTHING$q$, events_table)
	USING store, every, reducer, reducer_version;

	PERFORM ws._store_changed(events_table);
END
$$;
COMMENT ON FUNCTION ws.set_snapshot_policy(text, regprocedure, int, int) IS
	'Sets the reducer (state jsonb, event ws.event) -> jsonb of an event store and snapshots streams every n events';

CREATE FUNCTION ws.load(store text, stream text)
RETURNS TABLE (state jsonb, version bigint)
LANGUAGE c
AS 'MODULE_PATHNAME', 'write_scaling_load';
COMMENT ON FUNCTION ws.load(text, text) IS
	'Returns a stream''s current state: its latest usable snapshot folded with the events after it';

CREATE FUNCTION ws.snapshot(store text, stream text)
RETURNS bigint
LANGUAGE c
AS 'MODULE_PATHNAME', 'write_scaling_snapshot';
COMMENT ON FUNCTION ws.snapshot(text, text) IS
	'Takes a snapshot of a stream now; returns the version it covers (0 for an empty stream)';

REVOKE ALL ON FUNCTION ws.set_snapshot_policy(text, regprocedure, int, int) FROM PUBLIC;
REVOKE ALL ON FUNCTION ws._store_changed(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION ws.snapshot(text, text) FROM PUBLIC;

------------------------------------------------------------------------------
-- Background workers
------------------------------------------------------------------------------

CREATE FUNCTION ws._wake_launcher()
RETURNS void
LANGUAGE c
AS 'MODULE_PATHNAME', 'write_scaling_wake_launcher';
COMMENT ON FUNCTION ws._wake_launcher() IS
	'Internal: asks the launcher to start this database''s worker when the transaction commits';
REVOKE ALL ON FUNCTION ws._wake_launcher() FROM PUBLIC;

CREATE FUNCTION ws._worker_stats(
	OUT dboid oid, OUT pid int, OUT state text, OUT last_pass timestamptz,
	OUT streams_behind bigint, OUT snapshots_taken bigint, OUT errors bigint)
RETURNS SETOF record
LANGUAGE c STRICT
AS 'MODULE_PATHNAME', 'write_scaling_worker_stats';
COMMENT ON FUNCTION ws._worker_stats() IS
	'Internal: shared-memory state of the per-database workers, behind ws.stat_workers';

CREATE VIEW ws.stat_workers AS
SELECT d.datname AS database, w.pid, w.state, w.last_pass, w.streams_behind,
	   w.snapshots_taken, w.errors
FROM ws._worker_stats() w
LEFT JOIN pg_catalog.pg_database d ON d.oid = w.dboid;
COMMENT ON VIEW ws.stat_workers IS
	'One row per database with a write_scaling worker: its state, last pass, queue and counters since server start';
GRANT SELECT ON ws.stat_workers TO PUBLIC;

------------------------------------------------------------------------------
-- Buffered bulk inserts
------------------------------------------------------------------------------

CREATE FUNCTION ws.buffered_insert(target regclass, "row" anyelement)
RETURNS bigint
LANGUAGE c
AS 'MODULE_PATHNAME', 'write_scaling_buffered_insert';
COMMENT ON FUNCTION ws.buffered_insert(regclass, anyelement) IS
	'Buffers a row for the table and returns at once, with the number of its rows still buffered; rows are written through COPY FROM in batches, always before commit';

CREATE FUNCTION ws.flush(target regclass DEFAULT NULL)
RETURNS bigint
LANGUAGE c
AS 'MODULE_PATHNAME', 'write_scaling_flush';
COMMENT ON FUNCTION ws.flush(regclass) IS
	'Writes the rows buffered for a table, or for every table; returns how many';

CREATE FUNCTION ws.copy_rows(target regclass, "rows" anyarray)
RETURNS bigint
LANGUAGE c
AS 'MODULE_PATHNAME', 'write_scaling_copy_rows';
COMMENT ON FUNCTION ws.copy_rows(regclass, anyarray) IS
	'Writes an array of rows through the buffered COPY path; returns how many';

CREATE FUNCTION ws._bulk_stats(OUT rows_buffered bigint, OUT flushes bigint,
							   OUT rows_flushed bigint)
RETURNS SETOF record
LANGUAGE c STRICT
AS 'MODULE_PATHNAME', 'write_scaling_bulk_stats';
COMMENT ON FUNCTION ws._bulk_stats() IS
	'Internal: counters of the buffered path since server start, all databases';

------------------------------------------------------------------------------
-- WAL and commit settings
------------------------------------------------------------------------------

CREATE FUNCTION ws._wal_flush_probe(samples int, OUT median_us float8, OUT max_us float8)
RETURNS SETOF record
LANGUAGE c STRICT
AS 'MODULE_PATHNAME', 'write_scaling_wal_flush_probe';
COMMENT ON FUNCTION ws._wal_flush_probe(int) IS
	'Internal: flushes a tiny WAL record n times and reports the median and maximum time, in microseconds';

CREATE FUNCTION ws._alter_system(name text, value text)
RETURNS void
LANGUAGE c STRICT
AS 'MODULE_PATHNAME', 'write_scaling_alter_system';
COMMENT ON FUNCTION ws._alter_system(text, text) IS
	'Internal: ALTER SYSTEM SET name = value, callable from a function (superuser only, not transactional)';

CREATE FUNCTION ws.wal_report()
RETURNS TABLE (setting text, current_value text, recommended text, reason text,
			   needs_restart boolean, based_on text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	flush_us float8;
	flush_max_us float8;
	probe text;
	w pg_stat_wal;
	b pg_stat_bgwriter;
	fpi_share float8;
	requested_share float8;
	lz4 boolean;
BEGIN
	IF pg_is_in_recovery() THEN
		probe := 'no flush probe: the server is in recovery';
	ELSE
		SELECT p.median_us, p.max_us INTO flush_us, flush_max_us FROM ws._wal_flush_probe(20) p;
		probe := format('flush probe: median %s µs, max %s µs over 20 WAL flushes',
						round(flush_us::numeric), round(flush_max_us::numeric));
	END IF;
	SELECT * INTO w FROM pg_stat_wal;
	SELECT * INTO b FROM pg_stat_bgwriter;
	fpi_share := CASE WHEN w.wal_records > 0 THEN w.wal_fpi::float8 / w.wal_records END;
	requested_share := CASE WHEN b.checkpoints_timed + b.checkpoints_req > 0
						    THEN b.checkpoints_req::float8 / (b.checkpoints_timed + b.checkpoints_req) END;
	lz4 := EXISTS (SELECT FROM pg_settings s WHERE s.name = 'wal_compression' AND 'lz4' = ANY (s.enumvals));

	RETURN QUERY
	WITH advice (ord, name, recommended, reason, based_on) AS (VALUES
		(1, 'synchronous_commit',
		 CASE WHEN current_setting('synchronous_commit') IN ('on', 'remote_write', 'remote_apply')
			  THEN current_setting('synchronous_commit') ELSE 'on' END,
		 'Keep commits durable everywhere, and make only the paths that may lose their last few hundred milliseconds of commits asynchronous (write_scaling.buffered_async_commit): that is where synchronous_commit = off pays, without risking the rest.',
		 probe),
		(2, 'commit_delay',
		 CASE WHEN flush_us IS NULL OR flush_us < 1000 THEN '0'
			  ELSE least(round(flush_us / 2), 100000)::text END,
		 CASE WHEN flush_us IS NULL OR flush_us < 1000
			  THEN 'WAL flushes are fast here: a commit_delay makes every commit wait longer than the flush it hopes to share (the often-quoted 10000 cut 8-client INSERT throughput to about 0.13x on such storage).'
			  ELSE 'WAL flushes are slow here: waiting about half a flush lets concurrent commits share one.' END,
		 probe),
		(3, 'commit_siblings', '5',
		 'commit_delay waits only when at least this many other transactions are active.',
		 'PostgreSQL default'),
		(4, 'wal_buffers',
		 CASE WHEN w.wal_buffers_full > 0 AND (SELECT s.setting::bigint * 8 FROM pg_settings s WHERE s.name = 'wal_buffers') < 65536
			  THEN '64MB' ELSE current_setting('wal_buffers') END,
		 CASE WHEN w.wal_buffers_full > 0
			  THEN format('Backends wrote WAL themselves %s times because the WAL buffers were full.', w.wal_buffers_full)
			  ELSE 'The WAL buffers have never been full: they are large enough.' END,
		 format('pg_stat_wal.wal_buffers_full = %s since %s', w.wal_buffers_full, w.stats_reset)),
		(5, 'max_wal_size',
		 CASE WHEN requested_share > 0.1
				   AND (SELECT s.setting::bigint FROM pg_settings s WHERE s.name = 'max_wal_size') < 65536
			  THEN least((SELECT s.setting::bigint * 2 FROM pg_settings s WHERE s.name = 'max_wal_size'), 65536)::text || 'MB'
			  ELSE current_setting('max_wal_size') END,
		 CASE WHEN requested_share > 0.1
			  THEN format('%s%% of checkpoints were forced by WAL volume rather than timed: more room between checkpoints means fewer of them and fewer full-page images.', round((requested_share * 100)::numeric))
			  ELSE 'Checkpoints are rarely forced by WAL volume.' END,
		 format('pg_stat_bgwriter: %s timed, %s requested checkpoints', b.checkpoints_timed, b.checkpoints_req)),
		(6, 'checkpoint_timeout',
		 CASE WHEN current_setting('checkpoint_timeout')::interval < interval '15 min' THEN '15min'
			  ELSE current_setting('checkpoint_timeout') END,
		 'Fewer checkpoints write fewer full-page images after each; crash recovery takes longer in exchange.',
		 format('pg_stat_wal: %s%% of WAL records carry a full-page image', coalesce(round((fpi_share * 100)::numeric, 1), 0))),
		(7, 'checkpoint_completion_target', '0.9',
		 'Spreads checkpoint writes over the whole interval instead of bursts.',
		 'PostgreSQL 14+ default'),
		(8, 'wal_compression',
		 CASE WHEN fpi_share > 0.05 THEN CASE WHEN lz4 THEN 'lz4' ELSE 'pglz' END
			  ELSE current_setting('wal_compression') END,
		 CASE WHEN fpi_share > 0.05
			  THEN 'Full-page images are a large share of WAL: compressing them cuts WAL volume for a little CPU.'
			  ELSE 'Full-page images are a small share of WAL: compression would gain little.' END,
		 format('pg_stat_wal: %s full-page images in %s records', w.wal_fpi, w.wal_records)),
		(9, 'full_page_writes', 'on',
		 'Never off: a page torn by a crash could not be repaired, and data would be corrupt.',
		 'correctness'),
		(10, 'fsync', 'on',
		 'Never off: a crash or power loss could corrupt the whole cluster.',
		 'correctness'),
		(11, 'wal_sync_method', current_setting('wal_sync_method'),
		 'The flush probe measured this method; change it only after pg_test_fsync shows a faster one.',
		 probe)
	)
	SELECT a.name, current_setting(a.name), a.recommended, a.reason,
		   s.context = 'postmaster', a.based_on
	FROM advice a JOIN pg_settings s ON s.name = a.name
	ORDER BY a.ord;
END
$$;
COMMENT ON FUNCTION ws.wal_report() IS
	'One row per setting that decides write throughput and durability: current value, recommendation for a write-heavy profile, why, and what it rests on';

CREATE FUNCTION ws.tune_wal(profile text DEFAULT 'throughput', apply boolean DEFAULT false)
RETURNS TABLE (statement text, applied boolean, needs_restart boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
BEGIN
	IF profile IS DISTINCT FROM 'throughput' THEN
		RAISE EXCEPTION 'unknown WAL profile "%"', left(profile, 64)
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'The profile is ''throughput'' (a write-heavy server).';
	END IF;
	IF apply IS NULL THEN
		RAISE EXCEPTION 'apply must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF apply AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
		RAISE EXCEPTION 'permission denied to apply WAL settings'
			USING ERRCODE = 'insufficient_privilege',
				  HINT = 'Run the statements as a superuser, or call ws.tune_wal(apply => false) to list them.';
	END IF;

	FOR r IN SELECT * FROM ws.wal_report() w
			 WHERE w.recommended IS DISTINCT FROM w.current_value
			   AND w.setting NOT IN ('fsync', 'full_page_writes')
	LOOP
		IF apply THEN
			PERFORM ws._alter_system(r.setting, r.recommended);
		END IF;
		statement := format('ALTER SYSTEM SET %s = %L;', r.setting, r.recommended);
		applied := apply;
		needs_restart := r.needs_restart;
		RETURN NEXT;
	END LOOP;
	IF apply THEN
		PERFORM pg_reload_conf();
	END IF;
	RAISE NOTICE 'ws.tune_wal never turns fsync or full_page_writes off';
END
$$;
COMMENT ON FUNCTION ws.tune_wal(text, boolean) IS
	'Returns the ALTER SYSTEM statements that apply ws.wal_report''s recommendations, and applies them (superuser) when asked; never turns fsync or full_page_writes off';

REVOKE ALL ON FUNCTION ws._wal_flush_probe(int) FROM PUBLIC;
REVOKE ALL ON FUNCTION ws._alter_system(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ws.wal_report() FROM PUBLIC;
REVOKE ALL ON FUNCTION ws.tune_wal(text, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ws.wal_report() TO pg_monitor;
GRANT EXECUTE ON FUNCTION ws._wal_flush_probe(int) TO pg_monitor;

------------------------------------------------------------------------------
-- Async write queue
------------------------------------------------------------------------------

CREATE TABLE ws.topics (
	topic_id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	topic text NOT NULL UNIQUE,
	handler regprocedure NOT NULL,
	owner regrole NOT NULL,
	partitions int NOT NULL CHECK (partitions BETWEEN 1 AND 1024),
	max_attempts int NOT NULL CHECK (max_attempts BETWEEN 1 AND 1000),
	retry_delay interval NOT NULL CHECK (retry_delay > interval '0' AND retry_delay <= interval '1 hour'),
	async_commit boolean NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE ws.topics IS
	'Topics created by ws.create_topic: the handler that applies their messages, run as the topic''s owner';
SELECT pg_catalog.pg_extension_config_dump('ws.topics', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('ws.topics', 'topic_id'), '');

-- A topic's handler runs as its owner, so a topic is owned by the role
-- that created it, whoever was granted INSERT on ws.topics; only a
-- superuser (restoring a dump, say) may name another owner.
CREATE FUNCTION ws._topic_owner_is_creator()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NOT (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user) THEN
		NEW.owner := current_user::regrole;
	END IF;
	RETURN NEW;
END
$$;
CREATE TRIGGER topic_owner_is_creator BEFORE INSERT OR UPDATE ON ws.topics
	FOR EACH ROW EXECUTE FUNCTION ws._topic_owner_is_creator();
GRANT SELECT ON ws.topics TO PUBLIC;

-- Accepted messages wait in ws.queue until a worker applies them.  The
-- table is split in three slots: enqueues go to the current one, and the
-- current slot moves on every write_scaling.queue_rotation once the next
-- slot is empty and truncated.  Applying a message deletes its row, so a
-- retired slot drains and is then truncated: dead rows never outlive a few
-- rotations, whatever vacuum can or cannot do.
CREATE SEQUENCE ws.queue_id_seq;
COMMENT ON SEQUENCE ws.queue_id_seq IS
	'Request ids of ws.enqueue: they order the messages of a key';
SELECT pg_catalog.pg_extension_config_dump('ws.queue_id_seq', '');

CREATE TABLE ws.queue (
	id bigint NOT NULL,
	topic_id int NOT NULL,
	lane int NOT NULL,
	key text NOT NULL,
	payload jsonb NOT NULL,
	enqueued_at timestamptz NOT NULL DEFAULT now(),
	attempts int NOT NULL DEFAULT 0,
	next_attempt_at timestamptz,
	last_error text,
	last_sqlstate text,
	slot smallint NOT NULL
) PARTITION BY LIST (slot);
CREATE TABLE ws.queue_0 PARTITION OF ws.queue FOR VALUES IN (0);
CREATE TABLE ws.queue_1 PARTITION OF ws.queue FOR VALUES IN (1);
CREATE TABLE ws.queue_2 PARTITION OF ws.queue FOR VALUES IN (2);
CREATE INDEX queue_id_idx ON ws.queue (id);
-- pg_dump keeps accepted messages (the partitions hold the rows).
SELECT pg_catalog.pg_extension_config_dump('ws.queue_0', '');
SELECT pg_catalog.pg_extension_config_dump('ws.queue_1', '');
SELECT pg_catalog.pg_extension_config_dump('ws.queue_2', '');
COMMENT ON TABLE ws.queue IS
	'Messages accepted by ws.enqueue and not yet applied; a worker deletes each one in the transaction that applies it';

-- Applied messages, kept write_scaling.request_retention for
-- ws.request_status; rotated the same way, a slot being truncated once
-- everything in it is older than the retention.
CREATE TABLE ws.queue_done (
	id bigint NOT NULL,
	topic_id int NOT NULL,
	attempts int NOT NULL,
	enqueued_at timestamptz NOT NULL,
	applied_at timestamptz NOT NULL,
	slot smallint NOT NULL
) PARTITION BY LIST (slot);
CREATE TABLE ws.queue_done_0 PARTITION OF ws.queue_done FOR VALUES IN (0);
CREATE TABLE ws.queue_done_1 PARTITION OF ws.queue_done FOR VALUES IN (1);
CREATE TABLE ws.queue_done_2 PARTITION OF ws.queue_done FOR VALUES IN (2);
CREATE INDEX queue_done_id_idx ON ws.queue_done (id);
COMMENT ON TABLE ws.queue_done IS
	'Applied messages, kept for write_scaling.request_retention so that ws.request_status can say "done"';

CREATE TABLE ws.queue_rotation (
	log text PRIMARY KEY CHECK (log IN ('queue', 'queue_done')),
	current smallint NOT NULL CHECK (current BETWEEN 0 AND 2),
	switched_at timestamptz NOT NULL,
	retired_at timestamptz[] NOT NULL
);
INSERT INTO ws.queue_rotation VALUES
	('queue', 0, now(), '{-infinity,-infinity,-infinity}'),
	('queue_done', 0, now(), '{-infinity,-infinity,-infinity}');
COMMENT ON TABLE ws.queue_rotation IS
	'Which slot of ws.queue and ws.queue_done takes new rows, and when each slot stopped taking them';

CREATE TABLE ws.dead_letters (
	id bigint PRIMARY KEY,
	topic_id int NOT NULL,
	topic text NOT NULL,
	lane int NOT NULL,
	key text NOT NULL,
	payload jsonb NOT NULL,
	enqueued_at timestamptz NOT NULL,
	attempts int NOT NULL,
	error text NOT NULL,
	sqlstate text NOT NULL,
	failed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_topic_idx ON ws.dead_letters (topic_id, id);
COMMENT ON TABLE ws.dead_letters IS
	'Messages whose handler failed max_attempts times, with the last error; ws.replay_dead_letters puts them back';
SELECT pg_catalog.pg_extension_config_dump('ws.dead_letters', '');

CREATE FUNCTION ws._topics_changed()
RETURNS void
LANGUAGE c
AS 'MODULE_PATHNAME', 'write_scaling_topics_changed';
COMMENT ON FUNCTION ws._topics_changed() IS
	'Internal: makes every session reload its topics, and starts this database''s queue workers, when the transaction commits';

CREATE FUNCTION ws._lock_topic(topic_id int)
RETURNS void
LANGUAGE c STRICT
AS 'MODULE_PATHNAME', 'write_scaling_lock_topic';
COMMENT ON FUNCTION ws._lock_topic(int) IS
	'Internal: locks a topic against enqueues and batches until the transaction ends, and frees its counters if it commits';

CREATE FUNCTION ws._wake_queue_workers()
RETURNS void
LANGUAGE c
AS 'MODULE_PATHNAME', 'write_scaling_wake_queue_workers';
COMMENT ON FUNCTION ws._wake_queue_workers() IS
	'Internal: wakes this database''s queue workers when the transaction commits';

CREATE FUNCTION ws.create_topic(topic text, handler regprocedure,
								partitions int DEFAULT 16,
								max_attempts int DEFAULT 5,
								retry_delay interval DEFAULT '1 second',
								async_commit boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	f pg_proc;
BEGIN
	IF topic IS NULL OR handler IS NULL OR partitions IS NULL OR max_attempts IS NULL
	   OR retry_delay IS NULL OR async_commit IS NULL THEN
		RAISE EXCEPTION 'arguments of ws.create_topic must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF length(topic) NOT BETWEEN 1 AND 63 OR topic ~ '[[:cntrl:]]' THEN
		RAISE EXCEPTION 'invalid topic name "%"', left(topic, 64)
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A topic name has 1 to 63 characters and no control characters.';
	END IF;
	IF partitions NOT BETWEEN 1 AND 1024 THEN
		RAISE EXCEPTION 'partitions must be between 1 and 1024'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The value was %s.', partitions);
	END IF;
	IF max_attempts NOT BETWEEN 1 AND 1000 THEN
		RAISE EXCEPTION 'max_attempts must be between 1 and 1000'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The value was %s.', max_attempts);
	END IF;
	IF retry_delay <= interval '0' OR retry_delay > interval '1 hour' THEN
		RAISE EXCEPTION 'retry_delay must be greater than zero and at most an hour'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The value was %s.', retry_delay);
	END IF;
	SELECT * INTO f FROM pg_proc WHERE oid = handler;
	IF f.pronargs <> 4 OR f.proargtypes[0] <> 'text'::regtype
	   OR f.proargtypes[1] <> 'jsonb'::regtype OR f.proargtypes[2] <> 'bigint'::regtype
	   OR f.proargtypes[3] <> 'integer'::regtype OR f.proretset OR f.prokind <> 'f' THEN
		RAISE EXCEPTION 'function % cannot be a queue handler', handler
			USING ERRCODE = 'invalid_function_definition',
				  HINT = 'A handler is a function (key text, payload jsonb, request_id bigint, attempt int); its result is ignored.';
	END IF;
	IF NOT has_function_privilege(handler, 'EXECUTE') THEN
		RAISE EXCEPTION 'permission denied for function %', handler
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF EXISTS (SELECT FROM ws.topics t WHERE t.topic = create_topic.topic) THEN
		RAISE EXCEPTION 'topic "%" already exists', topic
			USING ERRCODE = 'duplicate_object';
	END IF;

	INSERT INTO ws.topics (topic, handler, owner, partitions, max_attempts, retry_delay, async_commit)
	VALUES (topic, handler, current_user::regrole, partitions, max_attempts, retry_delay, async_commit);
	PERFORM ws._topics_changed();
END
$$;
COMMENT ON FUNCTION ws.create_topic(text, regprocedure, int, int, interval, boolean) IS
	'Creates a topic whose messages a background worker applies through handler(key text, payload jsonb, request_id bigint, attempt int), run as the topic''s owner';

CREATE FUNCTION ws.drop_topic(topic text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t ws.topics;
BEGIN
	IF topic IS NULL THEN
		RAISE EXCEPTION 'topic name must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT * INTO t FROM ws.topics d WHERE d.topic = drop_topic.topic;
	IF t.topic_id IS NULL THEN
		RAISE EXCEPTION 'topic "%" does not exist', left(topic, 64)
			USING ERRCODE = 'undefined_object';
	END IF;
	-- Waits for the topic's enqueues and batches in flight, and holds new
	-- ones back until the topic is gone; other topics go on.
	PERFORM ws._lock_topic(t.topic_id);
	DELETE FROM ws.topics d WHERE d.topic_id = t.topic_id;
	IF NOT pg_has_role(t.owner, 'USAGE') THEN
		RAISE EXCEPTION 'must be owner of topic "%"', topic
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	DELETE FROM ws.queue q WHERE q.topic_id = t.topic_id;
	DELETE FROM ws.dead_letters d WHERE d.topic_id = t.topic_id;
	PERFORM ws._topics_changed();
END
$$;
COMMENT ON FUNCTION ws.drop_topic(text) IS
	'Drops a topic with its pending messages and dead letters';

CREATE FUNCTION ws.enqueue(topic text, key text, payload jsonb)
RETURNS bigint
LANGUAGE c
AS 'MODULE_PATHNAME', 'write_scaling_enqueue';
COMMENT ON FUNCTION ws.enqueue(text, text, jsonb) IS
	'Accepts a message for a topic; returns its request id at once.  It is durable when the transaction commits, and applied by a worker after that';

CREATE FUNCTION ws.enqueue_batch(topic text, keys text[], payloads jsonb[])
RETURNS SETOF bigint
LANGUAGE c
AS 'MODULE_PATHNAME', 'write_scaling_enqueue_batch';
COMMENT ON FUNCTION ws.enqueue_batch(text, text[], jsonb[]) IS
	'Accepts keys[i], payloads[i] for each i, in that order; returns their request ids in the same order';

CREATE FUNCTION ws.request_status(request_id bigint)
RETURNS TABLE (status text, topic text, attempts int, error text, sqlstate text,
			   enqueued_at timestamptz, finished_at timestamptz)
LANGUAGE c STABLE
AS 'MODULE_PATHNAME', 'write_scaling_request_status';
COMMENT ON FUNCTION ws.request_status(bigint) IS
	'Says what became of an enqueued request: pending, processing, done or failed (with the error); no row when unknown or past write_scaling.request_retention';

CREATE FUNCTION ws.replay_dead_letters(topic text, ids bigint[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t ws.topics;
	replayed bigint;
BEGIN
	IF topic IS NULL THEN
		RAISE EXCEPTION 'topic name must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT * INTO t FROM ws.topics x WHERE x.topic = replay_dead_letters.topic;
	IF t.topic_id IS NULL THEN
		RAISE EXCEPTION 'topic "%" does not exist', left(topic, 64)
			USING ERRCODE = 'undefined_object';
	END IF;
	-- Each message goes back under its own request id, so it keeps its
	-- place before the later messages of its key.
	WITH moved AS (
		DELETE FROM ws.dead_letters d
		WHERE d.topic_id = t.topic_id AND (ids IS NULL OR d.id = ANY (ids))
		RETURNING d.*
	)
	INSERT INTO ws.queue (id, topic_id, lane, key, payload, enqueued_at, slot)
	SELECT m.id, m.topic_id, m.lane, m.key, m.payload, m.enqueued_at,
		   (SELECT r.current FROM ws.queue_rotation r WHERE r.log = 'queue')
	FROM moved m ORDER BY m.id;
	GET DIAGNOSTICS replayed = ROW_COUNT;
	IF replayed > 0 THEN
		PERFORM ws._wake_queue_workers();
	END IF;
	RETURN replayed;
END
$$;
COMMENT ON FUNCTION ws.replay_dead_letters(text, bigint[]) IS
	'Puts a topic''s dead letters (all, or those whose request ids are given) back in the queue, in their original order; returns how many';

CREATE FUNCTION ws._rotate_queue(queue_period interval, retention interval)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- Workers' batches lock every slot for a moment: wait a little, not forever.
SET lock_timeout = '1s'
AS $$
DECLARE
	r ws.queue_rotation;
	part regclass;
	busy boolean;
	next_slot int;
BEGIN
	FOR r IN SELECT * FROM ws.queue_rotation ORDER BY log FOR UPDATE LOOP
		FOR s IN 0..2 LOOP
			CONTINUE WHEN s = r.current;
			part := format('ws.%s_%s', r.log, s)::regclass;
			CONTINUE WHEN pg_relation_size(part) = 0;
			CONTINUE WHEN r.log = 'queue_done' AND r.retired_at[s + 1] > now() - retention;
			-- Under the lock no enqueue or batch is using the slot, and (in
			-- read committed) each statement below sees every committed row.
			BEGIN
				EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', part);
			EXCEPTION WHEN lock_not_available THEN
				CONTINUE;
			END;
			IF r.log = 'queue' THEN
				-- Messages waiting for a retry in a slot retired a period ago
				-- move to the current slot, keeping their ids; the others
				-- are being drained.
				IF r.retired_at[s + 1] < now() - queue_period THEN
					UPDATE ws.queue q SET slot = r.current
					WHERE q.slot = s AND q.next_attempt_at > now();
				END IF;
				EXECUTE format('SELECT EXISTS (SELECT FROM %s)', part) INTO busy;
				CONTINUE WHEN busy;
			END IF;
			EXECUTE format('TRUNCATE %s', part);
		END LOOP;

		IF now() - r.switched_at >= (CASE r.log WHEN 'queue' THEN queue_period ELSE retention / 2 END) THEN
			-- The next slot, or the one after it, whichever is empty.
			SELECT n INTO next_slot
			FROM unnest(ARRAY[(r.current + 1) % 3, (r.current + 2) % 3]) WITH ORDINALITY AS x (n, ord)
			WHERE pg_relation_size(format('ws.%s_%s', r.log, n)::regclass) = 0
			ORDER BY ord LIMIT 1;
			IF next_slot IS NOT NULL THEN
				UPDATE ws.queue_rotation x
				SET current = next_slot, switched_at = now(),
					retired_at[r.current + 1] = now()
				WHERE x.log = r.log;
			END IF;
		END IF;
	END LOOP;
END
$$;
COMMENT ON FUNCTION ws._rotate_queue(interval, interval) IS
	'Internal: moves ws.queue and ws.queue_done on to their next slot and truncates the slots that are finished with';

CREATE FUNCTION ws._queue_stats(
	OUT topic_id int, OUT enqueued bigint, OUT applied bigint,
	OUT retried bigint, OUT dead_lettered bigint)
RETURNS SETOF record
LANGUAGE c STRICT
AS 'MODULE_PATHNAME', 'write_scaling_queue_stats';
COMMENT ON FUNCTION ws._queue_stats() IS
	'Internal: shared-memory counters of this database''s topics, behind ws.stat_topics';

CREATE FUNCTION ws._queue_worker_stats(
	OUT dboid oid, OUT worker int, OUT pid int, OUT state text,
	OUT batches bigint, OUT applied bigint, OUT last_batch timestamptz)
RETURNS SETOF record
LANGUAGE c STRICT
AS 'MODULE_PATHNAME', 'write_scaling_queue_worker_stats';
COMMENT ON FUNCTION ws._queue_worker_stats() IS
	'Internal: shared-memory state of the queue workers, behind ws.stat_queue_workers';

CREATE VIEW ws.stat_topics AS
SELECT t.topic,
	   coalesce(s.enqueued, 0) AS enqueued,
	   coalesce(s.applied, 0) AS applied,
	   coalesce(s.retried, 0) AS retried,
	   coalesce(s.dead_lettered, 0) AS dead_lettered,
	   (SELECT count(*) FROM ws.queue q WHERE q.topic_id = t.topic_id) AS queue_depth,
	   now() - (SELECT q.enqueued_at FROM ws.queue q WHERE q.topic_id = t.topic_id
				ORDER BY q.id LIMIT 1) AS oldest_message_age,
	   (SELECT count(*) FROM ws.dead_letters d WHERE d.topic_id = t.topic_id) AS dead_letters
FROM ws.topics t
LEFT JOIN ws._queue_stats() s ON s.topic_id = t.topic_id;
COMMENT ON VIEW ws.stat_topics IS
	'One row per topic: messages enqueued, applied, retried and dead-lettered since server start, and what waits now';
GRANT SELECT ON ws.stat_topics TO PUBLIC;

CREATE VIEW ws.stat_queue_workers AS
SELECT d.datname AS database, w.worker, w.pid, w.state, w.batches, w.applied, w.last_batch
FROM ws._queue_worker_stats() w
LEFT JOIN pg_catalog.pg_database d ON d.oid = w.dboid;
COMMENT ON VIEW ws.stat_queue_workers IS
	'One row per queue worker: its state, and the batches and messages it applied since server start';
GRANT SELECT ON ws.stat_queue_workers TO PUBLIC;

REVOKE ALL ON FUNCTION ws.create_topic(text, regprocedure, int, int, interval, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION ws.drop_topic(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ws.replay_dead_letters(text, bigint[]) FROM PUBLIC;
-- Harmless: it only makes sessions reload their topics, and wakes the launcher.
REVOKE ALL ON FUNCTION ws._wake_queue_workers() FROM PUBLIC;
REVOKE ALL ON FUNCTION ws._lock_topic(int) FROM PUBLIC;
REVOKE ALL ON FUNCTION ws._rotate_queue(interval, interval) FROM PUBLIC;

------------------------------------------------------------------------------
-- Shard maps
------------------------------------------------------------------------------

CREATE TABLE ws.shard_maps (
	map text PRIMARY KEY,
	strategy text NOT NULL CHECK (strategy IN ('hash', 'consistent')),
	vnodes int NOT NULL CHECK (vnodes BETWEEN 1 AND 1024),
	created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE ws.shard_maps IS
	'Shard maps created by ws.create_shard_map: a fixed number of slots (vnodes) spread over shard servers';
SELECT pg_catalog.pg_extension_config_dump('ws.shard_maps', '');
GRANT SELECT ON ws.shard_maps TO PUBLIC;

CREATE TABLE ws.shards (
	map text NOT NULL REFERENCES ws.shard_maps ON DELETE CASCADE,
	server name NOT NULL,
	weight int NOT NULL CHECK (weight > 0),
	position int NOT NULL,
	added_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (map, server)
);
COMMENT ON TABLE ws.shards IS
	'The foreign servers of each shard map, with their weights, in the order they were added';
SELECT pg_catalog.pg_extension_config_dump('ws.shards', '');
GRANT SELECT ON ws.shards TO PUBLIC;

-- owner: where the map wants the slot; placed_on: where its rows are.
-- They differ between add_shard/remove_shard and the end of ws.rebalance.
CREATE TABLE ws.shard_slots (
	map text NOT NULL REFERENCES ws.shard_maps ON DELETE CASCADE,
	slot int NOT NULL,
	owner name,
	placed_on name,
	PRIMARY KEY (map, slot)
);
COMMENT ON TABLE ws.shard_slots IS
	'Per slot of a shard map: the server that should own it and the server its rows are on';
SELECT pg_catalog.pg_extension_config_dump('ws.shard_slots', '');
GRANT SELECT ON ws.shard_slots TO PUBLIC;

CREATE TABLE ws.distributed_tables (
	table_name regclass PRIMARY KEY,
	partitioned regclass NOT NULL UNIQUE,
	key_column name NOT NULL,
	map text NOT NULL REFERENCES ws.shard_maps,
	remote_schema name NOT NULL,
	remote_table name NOT NULL,
	remote_columns text NOT NULL,
	remote_definition text NOT NULL,
	remote_indexes jsonb NOT NULL DEFAULT '[]',
	local_definition text NOT NULL,
	distributed_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE ws.distributed_tables IS
	'Tables made distributed by ws.distribute_table: the view users use, the partitioned table of foreign slots behind it, and what a slot''s table on a shard looks like (its columns, its columns with constraints, and the table''s other indexes: name, unique, and the definition from USING on), and the table''s columns and named constraints, for ws.undistribute_table';
SELECT pg_catalog.pg_extension_config_dump('ws.distributed_tables', '');
GRANT SELECT ON ws.distributed_tables TO PUBLIC;

-- The sequences that columns of distributed tables owned (a serial's): a
-- view's column cannot own one, so ws.undistribute_table gives each back
-- to its column.
CREATE TABLE ws.distributed_sequences (
	sequence regclass PRIMARY KEY,
	table_name regclass NOT NULL,
	column_name name NOT NULL
);
COMMENT ON TABLE ws.distributed_sequences IS
	'Sequences that columns of distributed tables owned before they were distributed, to own again once taken back';
SELECT pg_catalog.pg_extension_config_dump('ws.distributed_sequences', '');
GRANT SELECT ON ws.distributed_sequences TO PUBLIC;

CREATE FUNCTION ws.key_hash(key text)
RETURNS bigint
LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'write_scaling_key_hash';
COMMENT ON FUNCTION ws.key_hash(text) IS
	'The stable 64-bit hash of a shard key''s text form (FNV-1a-64 then MurmurHash3''s fmix64), as a signed bigint';

CREATE FUNCTION ws.key_slot(key text, slots int)
RETURNS int
LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'write_scaling_key_slot';
COMMENT ON FUNCTION ws.key_slot(text, int) IS
	'The slot of a shard key among a map''s slots: the hash partition PostgreSQL routes it to';

-- Hash operator classes whose hash is ws.key_hash of the text form: a
-- table hash-partitioned with them puts each key in the slot
-- ws.key_slot gives, on any server and architecture.  The integer types
-- share a family (42 hashes the same as a smallint, integer or bigint),
-- so that a query comparing across them is pruned to one slot too.  The
-- SQL functions name their operators in full: they run on the caller's
-- search_path, where an operator of anyone's could otherwise be chosen.
CREATE FUNCTION ws._slot_hash(text, bigint) RETURNS bigint
LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'write_scaling_slot_hash_text';
CREATE FUNCTION ws._slot_hash32(text) RETURNS int
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT (ws._slot_hash($1, 0::pg_catalog.int8) OPERATOR(pg_catalog.&) 2147483647::pg_catalog.int8)::pg_catalog.int4 $$;
CREATE FUNCTION ws._slot_hash(smallint, bigint) RETURNS bigint
LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'write_scaling_slot_hash_int2';
CREATE FUNCTION ws._slot_hash32(smallint) RETURNS int
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT (ws._slot_hash($1, 0::pg_catalog.int8) OPERATOR(pg_catalog.&) 2147483647::pg_catalog.int8)::pg_catalog.int4 $$;
CREATE FUNCTION ws._slot_hash(integer, bigint) RETURNS bigint
LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'write_scaling_slot_hash_int4';
CREATE FUNCTION ws._slot_hash32(integer) RETURNS int
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT (ws._slot_hash($1, 0::pg_catalog.int8) OPERATOR(pg_catalog.&) 2147483647::pg_catalog.int8)::pg_catalog.int4 $$;
CREATE FUNCTION ws._slot_hash(bigint, bigint) RETURNS bigint
LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'write_scaling_slot_hash_int8';
CREATE FUNCTION ws._slot_hash32(bigint) RETURNS int
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT (ws._slot_hash($1, 0::pg_catalog.int8) OPERATOR(pg_catalog.&) 2147483647::pg_catalog.int8)::pg_catalog.int4 $$;
CREATE FUNCTION ws._slot_hash(uuid, bigint) RETURNS bigint
LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'write_scaling_slot_hash_uuid';
CREATE FUNCTION ws._slot_hash32(uuid) RETURNS int
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT (ws._slot_hash($1, 0::pg_catalog.int8) OPERATOR(pg_catalog.&) 2147483647::pg_catalog.int8)::pg_catalog.int4 $$;
CREATE OPERATOR FAMILY ws.integer_slot_ops USING hash;
CREATE OPERATOR CLASS ws.text_slot_ops FOR TYPE text USING hash AS
	OPERATOR 1 = (text, text),
	FUNCTION 1 ws._slot_hash32(text),
	FUNCTION 2 ws._slot_hash(text, bigint);
CREATE OPERATOR CLASS ws.int2_slot_ops FOR TYPE smallint USING hash FAMILY ws.integer_slot_ops AS
	OPERATOR 1 = (smallint, smallint),
	FUNCTION 1 ws._slot_hash32(smallint),
	FUNCTION 2 ws._slot_hash(smallint, bigint);
CREATE OPERATOR CLASS ws.int4_slot_ops FOR TYPE integer USING hash FAMILY ws.integer_slot_ops AS
	OPERATOR 1 = (integer, integer),
	FUNCTION 1 ws._slot_hash32(integer),
	FUNCTION 2 ws._slot_hash(integer, bigint);
CREATE OPERATOR CLASS ws.int8_slot_ops FOR TYPE bigint USING hash FAMILY ws.integer_slot_ops AS
	OPERATOR 1 = (bigint, bigint),
	FUNCTION 1 ws._slot_hash32(bigint),
	FUNCTION 2 ws._slot_hash(bigint, bigint);
CREATE OPERATOR CLASS ws.uuid_slot_ops FOR TYPE uuid USING hash AS
	OPERATOR 1 = (uuid, uuid),
	FUNCTION 1 ws._slot_hash32(uuid),
	FUNCTION 2 ws._slot_hash(uuid, bigint);
ALTER OPERATOR FAMILY ws.integer_slot_ops USING hash ADD
	OPERATOR 1 = (smallint, integer),
	OPERATOR 1 = (smallint, bigint),
	OPERATOR 1 = (integer, smallint),
	OPERATOR 1 = (integer, bigint),
	OPERATOR 1 = (bigint, smallint),
	OPERATOR 1 = (bigint, integer);

CREATE FUNCTION ws.shard_for(map text, key text)
RETURNS name
LANGUAGE c STABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'write_scaling_shard_for';
COMMENT ON FUNCTION ws.shard_for(text, text) IS
	'The foreign server that holds the rows of key in a shard map';

CREATE FUNCTION ws._shard_maps_changed()
RETURNS void
LANGUAGE c
AS 'MODULE_PATHNAME', 'write_scaling_shard_maps_changed';
COMMENT ON FUNCTION ws._shard_maps_changed() IS
	'Internal: makes every session reload its shard maps when the transaction commits';

CREATE FUNCTION ws.create_shard_map(map text, strategy text DEFAULT 'consistent',
									vnodes int DEFAULT 150)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF map IS NULL OR strategy IS NULL OR vnodes IS NULL THEN
		RAISE EXCEPTION 'arguments of ws.create_shard_map must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF map !~ '^[a-z][a-z0-9_]{0,47}$' THEN
		RAISE EXCEPTION 'invalid shard map name "%"', left(map, 64)
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A shard map name has 1 to 48 characters: lower-case letters, digits and underscores, starting with a letter.';
	END IF;
	IF strategy NOT IN ('hash', 'consistent') THEN
		RAISE EXCEPTION 'unknown sharding strategy "%"', left(strategy, 64)
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'The strategy is ''consistent'' (adding a shard moves only its share) or ''hash'' (slot mod number of shards).';
	END IF;
	IF vnodes NOT BETWEEN 1 AND 1024 THEN
		RAISE EXCEPTION 'vnodes must be between 1 and 1024'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The value was %s.', vnodes);
	END IF;
	IF EXISTS (SELECT FROM ws.shard_maps m WHERE m.map = create_shard_map.map) THEN
		RAISE EXCEPTION 'shard map "%" already exists', map
			USING ERRCODE = 'duplicate_object';
	END IF;
	INSERT INTO ws.shard_maps (map, strategy, vnodes) VALUES (map, strategy, vnodes);
	INSERT INTO ws.shard_slots (map, slot)
	SELECT create_shard_map.map, s FROM generate_series(0, vnodes - 1) s;
	PERFORM ws._shard_maps_changed();
END
$$;
COMMENT ON FUNCTION ws.create_shard_map(text, text, int) IS
	'Creates a shard map of vnodes slots; strategy ''consistent'' moves only the share of an added or removed shard, ''hash'' places slot mod number of shards';

-- Gives every slot of the map an owner: 'hash' by slot mod total weight;
-- 'consistent' by weight with the fewest moves: slots of removed servers,
-- and (when release is set) each server's slots above its share, go to
-- the servers below their share.
CREATE FUNCTION ws._assign_slots(p_map text, release boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m ws.shard_maps;
	total_weight bigint;
	servers name[];
	targets int[];
BEGIN
	SELECT * INTO m FROM ws.shard_maps x WHERE x.map = p_map;
	SELECT sum(weight) INTO total_weight FROM ws.shards s WHERE s.map = p_map;
	IF total_weight IS NULL THEN
		UPDATE ws.shard_slots s SET owner = NULL WHERE s.map = p_map;
		RETURN;
	END IF;

	IF m.strategy = 'hash' THEN
		WITH w AS (
			SELECT s.server,
				   sum(s.weight) OVER (ORDER BY s.position) - s.weight AS lo,
				   sum(s.weight) OVER (ORDER BY s.position) AS hi
			FROM ws.shards s WHERE s.map = p_map
		)
		UPDATE ws.shard_slots s SET owner = w.server
		FROM w
		WHERE s.map = p_map AND s.slot % total_weight >= w.lo AND s.slot % total_weight < w.hi;
		RETURN;
	END IF;

	-- Each server's share of the slots, by largest remainder.
	WITH exact AS (
		SELECT s.server, s.position,
			   floor(m.vnodes::numeric * s.weight / total_weight)::int AS base,
			   m.vnodes::numeric * s.weight / total_weight
				 - floor(m.vnodes::numeric * s.weight / total_weight) AS remainder
		FROM ws.shards s WHERE s.map = p_map
	), shares AS (
		SELECT e.server, e.position,
			   e.base + CASE WHEN row_number() OVER (ORDER BY e.remainder DESC, e.position)
								  <= m.vnodes - sum(e.base) OVER () THEN 1 ELSE 0 END AS target
		FROM exact e
	)
	SELECT array_agg(server ORDER BY position), array_agg(target ORDER BY position)
	INTO servers, targets FROM shares;

	UPDATE ws.shard_slots s SET owner = NULL
	WHERE s.map = p_map AND s.owner IS NOT NULL AND s.owner <> ALL (servers);

	IF release THEN
		UPDATE ws.shard_slots s SET owner = NULL
		FROM (
			SELECT x.slot
			FROM (SELECT slot, owner,
						 row_number() OVER (PARTITION BY owner ORDER BY slot DESC) AS rn,
						 count(*) OVER (PARTITION BY owner) AS held
				  FROM ws.shard_slots WHERE map = p_map AND owner IS NOT NULL) x
			JOIN unnest(servers, targets) AS t (server, target) ON t.server = x.owner
			WHERE x.rn <= x.held - t.target
		) r
		WHERE s.map = p_map AND s.slot = r.slot;
	END IF;

	WITH held AS (
		SELECT owner, count(*) AS n FROM ws.shard_slots
		WHERE map = p_map AND owner IS NOT NULL GROUP BY owner
	), seats AS (
		SELECT t.server, row_number() OVER (ORDER BY t.ord, g) AS k
		FROM unnest(servers, targets) WITH ORDINALITY AS t (server, target, ord)
		LEFT JOIN held h ON h.owner = t.server
		CROSS JOIN LATERAL generate_series(1, t.target - coalesce(h.n, 0)) g
	), free AS (
		SELECT slot, row_number() OVER (ORDER BY slot) AS k
		FROM ws.shard_slots WHERE map = p_map AND owner IS NULL
	)
	UPDATE ws.shard_slots s SET owner = seats.server
	FROM free JOIN seats USING (k)
	WHERE s.map = p_map AND s.slot = free.slot;

	-- Seats can fall short when a server stays above its share (removal):
	-- what is left goes round the servers.
	UPDATE ws.shard_slots s SET owner = servers[1 + (s.slot % array_length(servers, 1))]
	WHERE s.map = p_map AND s.owner IS NULL;
END
$$;
COMMENT ON FUNCTION ws._assign_slots(text, boolean) IS
	'Internal: gives every slot of a shard map an owner after its servers changed';

-- Where no table is distributed over the map, nothing has to move: the
-- rows' placement follows the owners at once.
CREATE FUNCTION ws._place_unused_slots(p_map text)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
	UPDATE ws.shard_slots s SET placed_on = s.owner
	WHERE s.map = p_map AND s.placed_on IS DISTINCT FROM s.owner
	  AND NOT EXISTS (SELECT FROM ws.distributed_tables d WHERE d.map = p_map);
$$;

CREATE FUNCTION ws._check_shard_server(server name)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	wrapper name;
BEGIN
	SELECT w.fdwname INTO wrapper
	FROM pg_foreign_server s JOIN pg_foreign_data_wrapper w ON w.oid = s.srvfdw
	WHERE s.srvname = server;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'server "%" does not exist', server
			USING ERRCODE = 'undefined_object',
				  HINT = 'Create it with CREATE SERVER ... FOREIGN DATA WRAPPER postgres_fdw, and a user mapping.';
	END IF;
	IF wrapper <> 'postgres_fdw' THEN
		RAISE EXCEPTION 'server "%" does not use postgres_fdw', server
			USING ERRCODE = 'wrong_object_type',
				  DETAIL = format('Its foreign-data wrapper is %s.', wrapper);
	END IF;
END
$$;

CREATE FUNCTION ws.add_shard(map text, server name, weight int DEFAULT 1)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF map IS NULL OR server IS NULL OR weight IS NULL THEN
		RAISE EXCEPTION 'arguments of ws.add_shard must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	PERFORM FROM ws.shard_maps m WHERE m.map = add_shard.map FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'shard map "%" does not exist', left(map, 64)
			USING ERRCODE = 'undefined_object',
				  HINT = 'Create it with ws.create_shard_map().';
	END IF;
	IF weight <= 0 THEN
		RAISE EXCEPTION 'shard weight must be greater than zero'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The weight was %s.', weight);
	END IF;
	PERFORM ws._check_shard_server(server);
	IF EXISTS (SELECT FROM ws.shards s WHERE s.map = add_shard.map AND s.server = add_shard.server) THEN
		RAISE EXCEPTION 'server "%" is already a shard of map "%"', server, map
			USING ERRCODE = 'duplicate_object';
	END IF;
	INSERT INTO ws.shards (map, server, weight, position)
	SELECT add_shard.map, add_shard.server, add_shard.weight, coalesce(max(s.position), 0) + 1
	FROM ws.shards s WHERE s.map = add_shard.map;
	PERFORM ws._assign_slots(map, true);
	PERFORM ws._place_unused_slots(map);
	PERFORM ws._shard_maps_changed();
END
$$;
COMMENT ON FUNCTION ws.add_shard(text, name, int) IS
	'Adds a postgres_fdw server to a shard map; ws.rebalance then moves the rows of the slots it takes over';

CREATE FUNCTION ws.remove_shard(map text, server name)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF map IS NULL OR server IS NULL THEN
		RAISE EXCEPTION 'arguments of ws.remove_shard must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	PERFORM FROM ws.shard_maps m WHERE m.map = remove_shard.map FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'shard map "%" does not exist', left(map, 64)
			USING ERRCODE = 'undefined_object',
				  HINT = 'Create it with ws.create_shard_map().';
	END IF;
	DELETE FROM ws.shards s WHERE s.map = remove_shard.map AND s.server = remove_shard.server;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'server "%" is not a shard of map "%"', server, map
			USING ERRCODE = 'undefined_object';
	END IF;
	IF NOT EXISTS (SELECT FROM ws.shards s WHERE s.map = remove_shard.map)
	   AND EXISTS (SELECT FROM ws.distributed_tables d WHERE d.map = remove_shard.map) THEN
		RAISE EXCEPTION 'cannot remove the last shard of map "%"', map
			USING ERRCODE = 'object_in_use',
				  DETAIL = 'Tables are distributed over the map, and their rows would have nowhere to go.';
	END IF;
	PERFORM ws._assign_slots(map, false);
	PERFORM ws._place_unused_slots(map);
	PERFORM ws._shard_maps_changed();
END
$$;
COMMENT ON FUNCTION ws.remove_shard(text, name) IS
	'Removes a server from a shard map; only its slots get new owners, and ws.rebalance moves their rows';

REVOKE ALL ON FUNCTION ws.create_shard_map(text, text, int) FROM PUBLIC;
REVOKE ALL ON FUNCTION ws.add_shard(text, name, int) FROM PUBLIC;
REVOKE ALL ON FUNCTION ws.remove_shard(text, name) FROM PUBLIC;
REVOKE ALL ON FUNCTION ws._assign_slots(text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION ws._place_unused_slots(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ws._shard_maps_changed() FROM PUBLIC;

------------------------------------------------------------------------------
-- Distributed tables
------------------------------------------------------------------------------

-- ws_dist holds, per distributed table, the hash-partitioned table whose
-- partitions (one per slot) are foreign tables on the shard servers.
CREATE SCHEMA ws_dist;
COMMENT ON SCHEMA ws_dist IS
	'The partitioned tables of foreign slots behind the distributed tables';
GRANT USAGE ON SCHEMA ws_dist TO PUBLIC;

CREATE TABLE ws.shard_cleanup (
	server name NOT NULL,
	remote_schema name NOT NULL,
	remote_table name NOT NULL,
	queued_at timestamptz NOT NULL DEFAULT now(),
	next_try timestamptz NOT NULL DEFAULT '-infinity',
	last_error text,
	PRIMARY KEY (server, remote_schema, remote_table)
);
COMMENT ON TABLE ws.shard_cleanup IS
	'Tables on shard servers that ws.rebalance moved away from and still has to drop, and the new copies of the next move until it commits; no reader sees them';

CREATE TABLE ws.rebalance_log (
	map text NOT NULL,
	table_name regclass NOT NULL,
	slot int NOT NULL,
	from_server name NOT NULL,
	to_server name NOT NULL,
	rows_moved bigint NOT NULL,
	moved_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
COMMENT ON TABLE ws.rebalance_log IS
	'Every slot ws.rebalance moved: which table, from and to which server, how many rows';
GRANT SELECT ON ws.rebalance_log TO PUBLIC;

CREATE FUNCTION ws._shard_exec(server name, command text, as_user oid DEFAULT 0)
RETURNS text
LANGUAGE c STRICT
AS 'MODULE_PATHNAME', 'write_scaling_shard_exec';
COMMENT ON FUNCTION ws._shard_exec(name, text, oid) IS
	'Internal: runs a command on a shard server in this transaction''s postgres_fdw remote transaction, under the user mapping of as_user (0: the current user); returns the first value of its result, if any';

CREATE FUNCTION ws._mapping_user(table_name regclass)
RETURNS oid
LANGUAGE c STRICT
AS 'MODULE_PATHNAME', 'write_scaling_mapping_user';
COMMENT ON FUNCTION ws._mapping_user(regclass) IS
	'Internal: the role whose user mappings a distributed table''s rows travel under: its owner, or the current user if it has security_invoker';

CREATE FUNCTION ws._lock_slot(slot regclass)
RETURNS void
LANGUAGE c STRICT
AS 'MODULE_PATHNAME', 'write_scaling_lock_slot';
COMMENT ON FUNCTION ws._lock_slot(regclass) IS
	'Internal: holds back the writers of a slot''s foreign table until the transaction ends';

CREATE FUNCTION ws._route_insert()
RETURNS trigger
LANGUAGE c
AS 'MODULE_PATHNAME', 'write_scaling_route_insert';
COMMENT ON FUNCTION ws._route_insert() IS
	'Internal: the INSTEAD OF INSERT trigger of a distributed table; buffers each row for its slot';

CREATE FUNCTION ws._on_conflict(VARIADIC "any")
RETURNS boolean
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'write_scaling_on_conflict';
COMMENT ON FUNCTION ws._on_conflict("any") IS
	'Internal: marks an INSERT ... ON CONFLICT into a distributed table in its plan, with the clause its shards run and the values computed for it; never called';

CREATE FUNCTION ws._route_flush()
RETURNS trigger
LANGUAGE c
AS 'MODULE_PATHNAME', 'write_scaling_route_flush';
COMMENT ON FUNCTION ws._route_flush() IS
	'Internal: the AFTER INSERT statement trigger of a distributed table; sends the buffered rows to their shards';

CREATE FUNCTION ws._slot_table(base name, slot int)
RETURNS name
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$ SELECT (base || '_s' || CASE WHEN slot < 1000 THEN lpad(slot::text, 3, '0') ELSE slot::text END)::name $$;

-- Whether a table on a shard is a slot table of base (base_sNNN).
CREATE FUNCTION ws._is_slot_table(remote_table name, base name)
RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT left(remote_table, length(base) + 2) = base || '_s'
		   AND substr(remote_table, length(base) + 3) ~ '^[0-9]+$'
$$;

-- Commands for shard servers that emit no notice when there is nothing to
-- do; the names travel as literals.
CREATE FUNCTION ws._create_schema_command(nsp name)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT format('DO %L', format(
		'BEGIN IF NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = %L) THEN CREATE SCHEMA %I; END IF; END',
		nsp, nsp))
$$;

-- Drops a slot table on a shard, and the shard's table of slots with its
-- last slot.  Dropping a partition locks its parent exclusively, which
-- would hold back the shard's writers of the table while it waits for the
-- transactions using it (any that wrote to it): it waits 200 ms at most,
-- and a later run tries again.
CREATE FUNCTION ws._drop_table_command(nsp name, rel name)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT format('DO %L', format(
		'DECLARE parent regclass; '
		'BEGIN IF to_regclass(%L) IS NOT NULL THEN'
		' PERFORM set_config(''lock_timeout'', ''200ms'', true);'
		' SELECT i.inhparent INTO parent FROM pg_inherits i WHERE i.inhrelid = %L::regclass;'
		' DROP TABLE %s;'
		' IF parent IS NOT NULL AND NOT EXISTS (SELECT FROM pg_inherits i WHERE i.inhparent = parent) THEN'
		' EXECUTE format(''DROP TABLE %%s'', parent); END IF;'
		' END IF; END',
		format('%I.%I', nsp, rel), format('%I.%I', nsp, rel), format('%I.%I', nsp, rel)))
$$;

-- The table on a shard that holds its slots of a distributed table, each
-- slot table a partition of it: a batch of rows for a shard is one COPY into
-- it, whatever the slots.
CREATE FUNCTION ws._shard_table(base name)
RETURNS name
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$ SELECT (base || '_shard')::name $$;

-- The command that makes a slot's table on a shard ready for its rows:
-- created, and attached to the shard's table of slots (created first if
-- missing).  The slot table is created alone and then attached, with a
-- CHECK that spares ATTACH a scan: that locks the parent only in SHARE
-- UPDATE EXCLUSIVE mode, so the shard's writers go on.  Once attached, the
-- CHECK goes: the partition constraint says the same, and every row written
-- would pay for it.  With reuse, an old copy of the slot still there
-- (attached to our table of slots: ours; its drop put off, or left by a move
-- whose local commit failed) is emptied and used again instead, waiting at
-- most 200 ms for its lock.
CREATE FUNCTION ws._create_slot_table_command(d ws.distributed_tables, slot int, reuse boolean)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT format('DO %L', format(
			   'DECLARE timeout text := current_setting(''lock_timeout''); '
			   'BEGIN IF %L AND EXISTS (SELECT FROM pg_inherits i'
			   ' WHERE i.inhrelid = to_regclass(%L) AND i.inhparent = to_regclass(%L)) THEN'
			   ' PERFORM set_config(''lock_timeout'', ''200ms'', true); TRUNCATE %s;'
			   ' PERFORM set_config(''lock_timeout'', timeout, true);'
			   ' ELSE'
			   ' IF to_regclass(%L) IS NULL THEN'
			   ' CREATE TABLE %s (%s, ws_slot smallint NOT NULL) PARTITION BY LIST (ws_slot); END IF;'
			   ' CREATE TABLE %s (%s, ws_slot smallint NOT NULL DEFAULT %s'
			   ' CONSTRAINT ws_slot_attach CHECK (ws_slot = %s));%s'
			   ' ALTER TABLE %s ATTACH PARTITION %s FOR VALUES IN (%s);'
			   ' ALTER TABLE %s DROP CONSTRAINT ws_slot_attach;'
			   ' END IF; END',
			   reuse, slot_table, parent, slot_table,
			   parent, parent, d.remote_columns,
			   slot_table, d.remote_definition, slot, slot,
			   (SELECT string_agg(format(' CREATE %sINDEX ON %s USING %s;',
										 CASE WHEN (e->>'unique')::boolean THEN 'UNIQUE ' END,
										 slot_table, e->>'using'), '' ORDER BY o)
				FROM jsonb_array_elements(d.remote_indexes) WITH ORDINALITY AS x (e, o)),
			   parent, slot_table, slot, slot_table))
	FROM (SELECT format('%I.%I', d.remote_schema, ws._shard_table(d.remote_table)) AS parent,
				 format('%I.%I', d.remote_schema, ws._slot_table(d.remote_table, slot)) AS slot_table) n
$$;

-- The GRANT statements that give target (a qualified name) the privileges
-- that roles other than its owner hold on source, on the whole of it and
-- on its columns.
CREATE FUNCTION ws._grant_commands(source regclass, target text)
RETURNS SETOF text
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT format('GRANT %s%s ON %s TO %s%s', x.privilege_type,
				  CASE WHEN x.attname IS NULL THEN '' ELSE format(' (%I)', x.attname) END, target,
				  CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(g.rolname) END,
				  CASE WHEN x.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
	FROM (SELECT NULL::name AS attname, e.*
		  FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) e
		  WHERE c.oid = source AND e.grantee <> c.relowner
		  UNION ALL
		  SELECT a.attname, e.*
		  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
		  CROSS JOIN LATERAL aclexplode(a.attacl) e
		  WHERE a.attrelid = source AND a.attnum > 0 AND NOT a.attisdropped
			AND e.grantee <> c.relowner) x
	LEFT JOIN pg_roles g ON g.oid = x.grantee
$$;

-- The COMMENT statements that give target (a qualified name of a relation
-- of kind, 'TABLE' or 'VIEW') the comments on source and on its columns.
CREATE FUNCTION ws._comment_commands(source regclass, target text, kind text)
RETURNS SETOF text
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN d.objsubid = 0 THEN format('COMMENT ON %s %s IS %L', kind, target, d.description)
				ELSE format('COMMENT ON COLUMN %s.%I IS %L', target, a.attname, d.description) END
	FROM pg_description d
	LEFT JOIN pg_attribute a ON a.attrelid = d.objoid AND a.attnum = d.objsubid
	WHERE d.objoid = source AND d.classoid = 'pg_class'::regclass
	  AND (d.objsubid = 0 OR NOT a.attisdropped)
$$;

CREATE FUNCTION ws.distribute_table(table_name regclass, key_column name, map text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m ws.shard_maps;
	rel pg_class;
	nsp name;
	key_attnum int2;
	key_type regtype;
	opclass text;
	columns text;
	column_names text;
	constraints text;
	remote_definition text;
	local_definition text;
	indexes jsonb;
	parent text;
	bad text;
	s record;
	servers_ready name[] := '{}';
	old_name name;
	owner_name name;
	dist ws.distributed_tables;
BEGIN
	IF table_name IS NULL OR key_column IS NULL OR map IS NULL THEN
		RAISE EXCEPTION 'arguments of ws.distribute_table must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	-- Serialised with add_shard, remove_shard and ws.rebalance.
	SELECT * INTO m FROM ws.shard_maps x WHERE x.map = distribute_table.map FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'shard map "%" does not exist', left(map, 64)
			USING ERRCODE = 'undefined_object',
				  HINT = 'Create it with ws.create_shard_map().';
	END IF;
	IF EXISTS (SELECT FROM ws.shard_slots x WHERE x.map = m.map AND x.placed_on IS NULL) THEN
		RAISE EXCEPTION 'shard map "%" has no shards', m.map
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'Add one with ws.add_shard().';
	END IF;
	SELECT * INTO rel FROM pg_class c WHERE c.oid = table_name;
	SELECT n.nspname INTO nsp FROM pg_namespace n WHERE n.oid = rel.relnamespace;
	SELECT r.rolname INTO owner_name FROM pg_roles r WHERE r.oid = rel.relowner;
	IF EXISTS (SELECT FROM ws.distributed_tables d WHERE d.table_name = distribute_table.table_name) THEN
		RAISE EXCEPTION 'table "%" is already distributed', table_name
			USING ERRCODE = 'duplicate_object';
	END IF;
	IF rel.relkind <> 'r' THEN
		RAISE EXCEPTION 'cannot distribute "%"', table_name
			USING ERRCODE = 'wrong_object_type',
				  DETAIL = 'Only an ordinary table can be distributed.';
	END IF;
	IF NOT pg_has_role(rel.relowner, 'USAGE') THEN
		RAISE EXCEPTION 'must be owner of table %', table_name
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	-- What the checks below read must hold until the table is replaced:
	-- no index, trigger, policy or rule comes meanwhile; writers go on.
	EXECUTE format('LOCK TABLE %s IN SHARE UPDATE EXCLUSIVE MODE', table_name);
	SELECT * INTO rel FROM pg_class c WHERE c.oid = table_name;
	-- Tables of an earlier distribution of this name that still wait to be
	-- dropped on a shard would be taken for this one's.
	SELECT c.server INTO bad FROM ws.shard_cleanup c
	WHERE c.remote_schema = nsp
	  AND (c.remote_table = ws._shard_table(rel.relname) OR ws._is_slot_table(c.remote_table, rel.relname))
	LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION 'cannot distribute "%": tables of its earlier distribution still wait to be dropped on server "%"',
			table_name, bad
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'ws.rebalance and ws.undistribute_table drop them once the server answers; see ws.shard_cleanup.';
	END IF;
	IF length(rel.relname) > 50 THEN
		RAISE EXCEPTION 'table name "%" is too long to distribute', rel.relname
			USING ERRCODE = 'name_too_long',
				  DETAIL = 'A distributed table''s name has at most 50 characters: its slots are named after it.';
	END IF;
	IF EXISTS (SELECT FROM pg_inherits i WHERE i.inhrelid = table_name OR i.inhparent = table_name) THEN
		RAISE EXCEPTION 'cannot distribute "%": it has inheritance parents or children', table_name
			USING ERRCODE = 'feature_not_supported';
	END IF;
	SELECT a.attnum, a.atttypid::regtype INTO key_attnum, key_type
	FROM pg_attribute a
	WHERE a.attrelid = table_name AND a.attname = key_column AND a.attnum > 0 AND NOT a.attisdropped;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'column "%" of relation "%" does not exist', key_column, table_name
			USING ERRCODE = 'undefined_column';
	END IF;
	opclass := CASE key_type
		WHEN 'text'::regtype THEN 'ws.text_slot_ops'
		WHEN 'character varying'::regtype THEN 'ws.text_slot_ops'
		WHEN 'smallint'::regtype THEN 'ws.int2_slot_ops'
		WHEN 'integer'::regtype THEN 'ws.int4_slot_ops'
		WHEN 'bigint'::regtype THEN 'ws.int8_slot_ops'
		WHEN 'uuid'::regtype THEN 'ws.uuid_slot_ops'
	END;
	IF opclass IS NULL THEN
		RAISE EXCEPTION 'cannot distribute by column "%" of type %', key_column, key_type
			USING ERRCODE = 'datatype_mismatch',
				  HINT = 'A shard key is text, varchar, smallint, integer, bigint or uuid.';
	END IF;
	-- The slot hashes the key's bytes: keys that a collation calls equal
	-- must be equal bytes.
	SELECT c.collname INTO bad
	FROM pg_attribute a JOIN pg_collation c ON c.oid = a.attcollation
	WHERE a.attrelid = table_name AND a.attnum = key_attnum AND NOT c.collisdeterministic;
	IF FOUND THEN
		RAISE EXCEPTION 'cannot distribute by column "%": its collation "%" is nondeterministic', key_column, bad
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'Keys it calls equal could hash to different slots.';
	END IF;
	-- Uniqueness holds among a shard's rows only: a primary key, unique or
	-- exclusion constraint, or a unique index, needs the shard key among
	-- its key columns (those it only INCLUDEs do not count).
	SELECT x.what INTO bad
	FROM (SELECT format('constraint "%s"', c.conname) AS what
		  FROM pg_constraint c
		  WHERE c.conrelid = table_name AND c.contype IN ('p', 'u', 'x') AND key_attnum <> ALL (c.conkey)
		  UNION ALL
		  SELECT format('unique index "%s"', ic.relname)
		  FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
		  WHERE i.indrelid = table_name AND i.indisunique
			AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conrelid = table_name AND c.conindid = i.indexrelid)
			AND key_attnum <> ALL ((i.indkey::int2[])[0:i.indnkeyatts - 1])) x
	LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION 'cannot distribute "%": % does not include the shard key "%"', table_name, bad, key_column
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'Each shard can enforce uniqueness only among its own rows.';
	END IF;
	-- What would stop applying behind the view: its rows go to the shards.
	IF rel.relrowsecurity OR EXISTS (SELECT FROM pg_policy p WHERE p.polrelid = table_name) THEN
		RAISE EXCEPTION 'cannot distribute "%": it has row-level security', table_name
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'Row-level security is enabled on it, or it has policies: they would not apply to the view that takes its place.';
	END IF;
	SELECT t.tgname INTO bad FROM pg_trigger t WHERE t.tgrelid = table_name AND NOT t.tgisinternal LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION 'cannot distribute "%": it has trigger "%"', table_name, bad
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'Its rows would go to the shards without firing it.',
				  HINT = 'Drop the trigger first; the distributed table can have statement-level triggers.';
	END IF;
	SELECT p.pubname INTO bad
	FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
	WHERE r.prrelid = table_name LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION 'cannot distribute "%": it is in publication "%"', table_name, bad
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'Its rows would go to the shards, out of the publication''s reach.',
				  HINT = 'Drop it from the publication first; publish the slot tables on the shards instead.';
	END IF;
	IF rel.relpersistence = 't' THEN
		RAISE EXCEPTION 'cannot distribute temporary table "%"', table_name
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'Its rows would live on other servers, beyond this session.';
	END IF;
	-- The table is dropped once its rows are through the view: what depends
	-- on it would have to go with it.
	SELECT r.ev_class::regclass::text INTO bad
	FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
	WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
	  AND d.refobjid = table_name AND r.ev_class <> table_name
	LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION 'cannot distribute "%": view "%" depends on it', table_name, bad
			USING ERRCODE = 'dependent_objects_still_exist',
				  HINT = 'Drop the view first, and make it again on the distributed table.';
	END IF;
	SELECT r.rulename INTO bad FROM pg_rewrite r WHERE r.ev_class = table_name LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION 'cannot distribute "%": it has rule "%"', table_name, bad
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'The view that takes its place would not apply it.',
				  HINT = 'Drop the rule first.';
	END IF;
	SELECT c.conname INTO bad FROM pg_constraint c
	WHERE c.contype = 'f' AND (c.conrelid = table_name OR c.confrelid = table_name) LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION 'cannot distribute "%": foreign key "%" refers to or from it', table_name, bad
			USING ERRCODE = 'feature_not_supported';
	END IF;
	SELECT a.attname INTO bad FROM pg_attribute a
	WHERE a.attrelid = table_name AND a.attnum > 0 AND NOT a.attisdropped
	  AND (a.attidentity <> '' OR a.attgenerated <> '') LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION 'cannot distribute "%": column "%" is an identity or generated column', table_name, bad
			USING ERRCODE = 'feature_not_supported',
				  HINT = 'Use a DEFAULT (a sequence''s nextval, say): defaults are evaluated on the coordinator.';
	END IF;
	IF to_regclass(format('ws_dist.%I', rel.relname)) IS NOT NULL THEN
		RAISE EXCEPTION 'a distributed table named "%" already exists', rel.relname
			USING ERRCODE = 'duplicate_table',
				  DETAIL = 'Distributed tables are named by their table name alone, whatever their schema.';
	END IF;

	SELECT string_agg(format('%I %s%s%s', a.attname, format_type(a.atttypid, a.atttypmod),
							 CASE WHEN a.attcollation <> t.typcollation
								  THEN ' COLLATE ' || a.attcollation::regcollation::text ELSE '' END,
							 CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END), ', ' ORDER BY a.attnum),
		   string_agg(format('%I', a.attname), ', ' ORDER BY a.attnum)
	INTO columns, column_names
	FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
	WHERE a.attrelid = table_name AND a.attnum > 0 AND NOT a.attisdropped;
	-- Unnamed: each slot table gets its own index names.
	SELECT string_agg(pg_get_constraintdef(c.oid), ', ' ORDER BY c.conname)
	INTO constraints
	FROM pg_constraint c WHERE c.conrelid = table_name AND c.contype IN ('p', 'u', 'c', 'x');
	remote_definition := columns || coalesce(', ' || constraints, '');
	-- Here, ws.undistribute_table gives the constraints back their names
	-- (on a shard, the slot tables of a schema could not share them).
	SELECT columns || coalesce(', ' || string_agg(format('CONSTRAINT %I %s', c.conname, pg_get_constraintdef(c.oid)),
												  ', ' ORDER BY c.conname), '')
	INTO local_definition
	FROM pg_constraint c WHERE c.conrelid = table_name AND c.contype IN ('p', 'u', 'c', 'x');
	-- The indexes no constraint made go to every slot table too, unnamed:
	-- pg_get_indexdef's text after its fixed prefix (CREATE [UNIQUE] INDEX
	-- name ON schema.table USING ) is kept.
	SELECT coalesce(jsonb_agg(jsonb_build_object('name', x.name, 'unique', x.uniq,
												 'using', substr(x.def, length(x.prefix) + 1))
							  ORDER BY x.name), '[]')
	INTO indexes
	FROM (SELECT ic.relname AS name, i.indisunique AS uniq, pg_get_indexdef(i.indexrelid) AS def,
				 format('CREATE %sINDEX %I ON %I.%I USING ', CASE WHEN i.indisunique THEN 'UNIQUE ' END,
						ic.relname, nsp, rel.relname) AS prefix
		  FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
		  WHERE i.indrelid = table_name AND i.indisvalid
			AND NOT EXISTS (SELECT FROM pg_constraint c
							WHERE c.conrelid = table_name AND c.conindid = i.indexrelid)) x;

	-- The partitioned table of slots, each slot a table on its shard.
	parent := format('ws_dist.%I', rel.relname);
	EXECUTE format('CREATE TABLE %s (%s) PARTITION BY HASH (%I %s)', parent, columns, key_column, opclass);
	INSERT INTO ws.distributed_tables (table_name, partitioned, key_column, map, remote_schema,
									   remote_table, remote_columns, remote_definition, remote_indexes,
									   local_definition)
	VALUES (table_name, parent::regclass, key_column, m.map, nsp,
			rel.relname, columns, remote_definition, indexes, local_definition)
	RETURNING * INTO dist;
	FOR s IN SELECT x.slot, x.placed_on FROM ws.shard_slots x WHERE x.map = m.map ORDER BY x.slot LOOP
		IF s.placed_on <> ALL (servers_ready) THEN
			PERFORM ws._shard_exec(s.placed_on, ws._create_schema_command(nsp), rel.relowner);
			servers_ready := servers_ready || s.placed_on;
		END IF;
		-- Under the owner's user mapping, which the view's writes will use.
		PERFORM ws._shard_exec(s.placed_on, ws._create_slot_table_command(dist, s.slot, false), rel.relowner);
		EXECUTE format('CREATE FOREIGN TABLE ws_dist.%I PARTITION OF %s'
					   ' FOR VALUES WITH (MODULUS %s, REMAINDER %s) SERVER %I'
					   ' OPTIONS (schema_name %L, table_name %L, async_capable ''true'', batch_size ''1000'')',
					   ws._slot_table(rel.relname, s.slot), parent, m.vnodes, s.slot, s.placed_on,
					   nsp, ws._slot_table(rel.relname, s.slot));
	END LOOP;

	-- The view takes the table's name; the old table's rows go through it.
	old_name := left(rel.relname, 40) || '_ws_local';
	EXECUTE format('ALTER TABLE %s RENAME TO %I', table_name, old_name);
	EXECUTE format('CREATE VIEW %I.%I AS SELECT %s FROM %s', nsp, rel.relname, column_names, parent);
	EXECUTE format('ALTER VIEW %I.%I OWNER TO %I', nsp, rel.relname, owner_name);
	EXECUTE format('ALTER TABLE %s OWNER TO %I', parent, owner_name);
	-- Whoever could use the table can use the view; its comments go too.
	FOR s IN SELECT ws._grant_commands(table_name, format('%I.%I', nsp, rel.relname)) AS command
			 UNION ALL
			 SELECT ws._comment_commands(table_name, format('%I.%I', nsp, rel.relname), 'VIEW') LOOP
		EXECUTE s.command;
	END LOOP;
	FOR s IN SELECT a.attname, pg_get_expr(d.adbin, d.adrelid) AS expr
			 FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
			 WHERE d.adrelid = table_name LOOP
		EXECUTE format('ALTER VIEW %I.%I ALTER COLUMN %I SET DEFAULT %s', nsp, rel.relname, s.attname, s.expr);
	END LOOP;
	-- A serial's sequence must outlive the old table; its column gets it
	-- back when the table is taken back.
	FOR s IN SELECT d.objid::regclass AS seq, a.attname
			 FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
			 JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
			 WHERE d.refobjid = table_name AND d.classid = 'pg_class'::regclass
			   AND d.deptype = 'a' AND c.relkind = 'S' LOOP
		EXECUTE format('ALTER SEQUENCE %s OWNED BY NONE', s.seq);
		INSERT INTO ws.distributed_sequences (sequence, table_name, column_name)
		VALUES (s.seq, format('%I.%I', nsp, rel.relname)::regclass, s.attname);
	END LOOP;
	EXECUTE format('CREATE TRIGGER ws_route INSTEAD OF INSERT ON %I.%I'
				   ' FOR EACH ROW EXECUTE FUNCTION ws._route_insert()', nsp, rel.relname);
	EXECUTE format('CREATE TRIGGER ws_route_flush AFTER INSERT ON %I.%I'
				   ' FOR EACH STATEMENT EXECUTE FUNCTION ws._route_flush()', nsp, rel.relname);
	-- The view now carries the table's name.
	UPDATE ws.distributed_tables x SET table_name = format('%I.%I', nsp, rel.relname)::regclass
	WHERE x.table_name = distribute_table.table_name;
	EXECUTE format('INSERT INTO %I.%I SELECT * FROM %I.%I', nsp, rel.relname, nsp, old_name);
	EXECUTE format('DROP TABLE %I.%I', nsp, old_name);
	PERFORM ws._shard_maps_changed();
END
$$;
COMMENT ON FUNCTION ws.distribute_table(regclass, name, text) IS
	'Moves a table''s rows to the shards of a map: a slot table on each shard, a view in the table''s place that routes inserts and reads all shards or, for a fixed key, one';

-- The servers that hold, or may hold, tables of a distributed table: those
-- its slots' foreign tables name, and the map's (a move that failed can
-- leave an old copy on either end).
CREATE FUNCTION ws._table_servers(d ws.distributed_tables)
RETURNS SETOF name
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT srv.srvname
	FROM pg_inherits i
	JOIN pg_foreign_table ft ON ft.ftrelid = i.inhrelid
	JOIN pg_foreign_server srv ON srv.oid = ft.ftserver
	WHERE i.inhparent = d.partitioned
	UNION SELECT y.placed_on FROM ws.shard_slots y WHERE y.map = d.map AND y.placed_on IS NOT NULL
	UNION SELECT y.owner FROM ws.shard_slots y WHERE y.map = d.map AND y.owner IS NOT NULL
$$;
COMMENT ON FUNCTION ws._table_servers(ws.distributed_tables) IS
	'Internal: the servers that hold or may hold tables of a distributed table';

-- Queues the table of a distributed table's slots on each of its servers
-- (ws._table_servers) for ws.shard_cleanup: dropping it drops its slot
-- tables.
CREATE FUNCTION ws._queue_shard_tables_drop(d ws.distributed_tables)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
	INSERT INTO ws.shard_cleanup (server, remote_schema, remote_table)
	SELECT x.server, d.remote_schema, ws._shard_table(d.remote_table)
	FROM ws._table_servers(d) AS x (server)
	ON CONFLICT DO NOTHING
$$;
COMMENT ON FUNCTION ws._queue_shard_tables_drop(ws.distributed_tables) IS
	'Internal: queues the tables of a distributed table on its shards for ws.shard_cleanup';

CREATE FUNCTION ws._default_is_volatile(rel regclass, attnum smallint)
RETURNS boolean
LANGUAGE c STRICT
AS 'MODULE_PATHNAME', 'write_scaling_default_is_volatile';
COMMENT ON FUNCTION ws._default_is_volatile(regclass, smallint) IS
	'Internal: whether a column''s default calls a volatile function';

-- ALTER TABLE ... ADD COLUMN on a distributed table (shard_utility.c): the
-- columns were added to its partitioned table of slots (and so to every
-- slot's foreign table), which the caller locked after the view and the
-- map's row.  Here they go to the shards' tables, to the view and to
-- ws.distributed_tables.  A default is the view's, as for every column;
-- the rows stored already get its value, computed once here, as
-- PostgreSQL gives a table's rows a non-volatile default.
CREATE FUNCTION ws._columns_added(p_table regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- A stored value travels as text, read there as postgres_fdw's sessions
-- read values: these settings make a text form that any server reads back.
SET datestyle = 'ISO, YMD'
SET intervalstyle = 'postgres'
SET extra_float_digits = 3
AS $$
DECLARE
	d ws.distributed_tables;
	a record;
	definition text;
	stored text;
	added text := '';
	dropped_defaults text := '';
	later text[] := '{}';
	remote_table text;
	server name;
	old_columns text;
BEGIN
	SELECT * INTO d FROM ws.distributed_tables x WHERE x.table_name = p_table;
	old_columns := d.remote_columns;
	FOR a IN SELECT c.attname, c.attnum, format_type(c.atttypid, c.atttypmod) AS type, c.attnotnull,
					CASE WHEN c.attcollation <> t.typcollation
						 THEN ' COLLATE ' || c.attcollation::regcollation::text ELSE '' END AS collation,
					pg_get_expr(ad.adbin, ad.adrelid) AS expr
			 FROM pg_attribute c JOIN pg_type t ON t.oid = c.atttypid
			 LEFT JOIN pg_attrdef ad ON ad.adrelid = c.attrelid AND ad.adnum = c.attnum
			 WHERE c.attrelid = d.partitioned AND c.attnum > 0 AND NOT c.attisdropped
			   AND NOT EXISTS (SELECT FROM pg_attribute v
							   WHERE v.attrelid = p_table AND v.attname = c.attname AND NOT v.attisdropped)
			 ORDER BY c.attnum LOOP
		definition := format('%I %s%s%s', a.attname, a.type, a.collation,
							 CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END);
		stored := NULL;
		IF a.expr IS NOT NULL THEN
			IF ws._default_is_volatile(d.partitioned, a.attnum) THEN
				RAISE EXCEPTION 'cannot add column "%" with a volatile default to distributed table "%"',
					a.attname, (SELECT c.relname FROM pg_class c WHERE c.oid = p_table)
					USING ERRCODE = 'feature_not_supported',
						  DETAIL = 'Each stored row would need a value of its own.',
						  HINT = 'Add the column without a default, then set one: the stored rows keep NULL.';
			END IF;
			EXECUTE format('SELECT quote_literal((%s)::text)', a.expr) INTO stored;
			dropped_defaults := dropped_defaults || format(', ALTER COLUMN %I DROP DEFAULT', a.attname);
			later := later || format('ALTER VIEW %s ALTER COLUMN %I SET DEFAULT %s', p_table, a.attname, a.expr);
		END IF;
		added := added || format(', ADD COLUMN %s%s', definition,
								 CASE WHEN stored IS NOT NULL THEN format(' DEFAULT %s::%s', stored, a.type) ELSE '' END);
		d.remote_columns := d.remote_columns || ', ' || definition;
	END LOOP;
	IF added = '' THEN
		RETURN;
	END IF;

	-- The shards, in the remote session the table's writes use: every
	-- server that holds a slot of the table, or may hold
	-- an old copy of one (a slot moving back uses it again): the map's
	-- servers and those with copies waiting to be dropped.  Stored rows get
	-- the default; new rows come with every column.
	remote_table := format('%I.%I', d.remote_schema, ws._shard_table(d.remote_table));
	FOR server IN SELECT x.server FROM ws._table_servers(d) AS x (server)
				  UNION
				  SELECT c.server FROM ws.shard_cleanup c
				  WHERE c.remote_schema = d.remote_schema AND ws._is_slot_table(c.remote_table, d.remote_table) LOOP
		PERFORM ws._shard_exec(server, format('DO %L', format(
			'BEGIN IF to_regclass(%L) IS NOT NULL THEN ALTER TABLE %s %s; %s END IF; END',
			remote_table, remote_table, substr(added, 3),
			CASE WHEN dropped_defaults <> '' THEN format('ALTER TABLE %s %s;', remote_table, substr(dropped_defaults, 3)) ELSE '' END)),
			ws._mapping_user(p_table));
	END LOOP;

	-- Here: the defaults go to the view, which gets the new columns.
	IF dropped_defaults <> '' THEN
		EXECUTE format('ALTER TABLE %s %s', d.partitioned, substr(dropped_defaults, 3));
	END IF;
	-- With its options (security_barrier, check_option...), which CREATE OR
	-- REPLACE VIEW would otherwise reset.
	EXECUTE format('CREATE OR REPLACE VIEW %s%s AS SELECT %s FROM %s', p_table,
				   (SELECT ' WITH (' || array_to_string(c.reloptions, ', ') || ')'
					FROM pg_class c WHERE c.oid = p_table),
				   (SELECT string_agg(format('%I', c.attname), ', ' ORDER BY c.attnum)
					FROM pg_attribute c WHERE c.attrelid = d.partitioned AND c.attnum > 0 AND NOT c.attisdropped),
				   d.partitioned);
	FOR i IN 1 .. coalesce(array_length(later, 1), 0) LOOP
		EXECUTE later[i];
	END LOOP;
	-- The definitions start with the columns; the constraints follow.
	UPDATE ws.distributed_tables x
	SET remote_columns = d.remote_columns,
		remote_definition = d.remote_columns || substr(x.remote_definition, length(old_columns) + 1),
		local_definition = d.remote_columns || substr(x.local_definition, length(old_columns) + 1)
	WHERE x.table_name = p_table;
END
$$;
COMMENT ON FUNCTION ws._columns_added(regclass) IS
	'Internal: takes columns added to a distributed table''s partitioned table to its shards, its view and ws.distributed_tables';

-- A distributed table's view dropped by DROP TABLE or DROP VIEW of it, by
-- DROP OWNED, or with its schema: what lies behind it goes too, as a
-- table's storage would.  Its partitioned table of slots goes, and its
-- serials' sequences unless something else uses them (a table's owned
-- sequences go with it); its tables on the shards are queued in
-- ws.shard_cleanup, dropped by the next ws.rebalance of any map once the
-- drop has committed (dropping them now could not be taken back).  A view
-- dropped as a dependent of something else (DROP TYPE ... CASCADE), where a
-- table would lose a column, not its rows, is refused.  PostgreSQL checked
-- the right to drop the view; the rest is the extension's, so this runs as
-- its owner.
CREATE FUNCTION ws._distributed_view_dropped()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	o record;
	d ws.distributed_tables;
	owner oid;
	q record;
BEGIN
	-- Sequences dropped on their own leave no row behind.
	DELETE FROM ws.distributed_sequences x
	WHERE x.sequence::oid IN (SELECT y.objid FROM pg_event_trigger_dropped_objects() y
							  WHERE y.classid = 'pg_class'::regclass AND y.object_type = 'sequence');
	FOR o IN SELECT x.objid, x.original, x.schema_name, x.object_identity FROM pg_event_trigger_dropped_objects() x
			 WHERE x.classid = 'pg_class'::regclass AND x.objsubid = 0 AND x.object_type = 'view' LOOP
		SELECT * INTO d FROM ws.distributed_tables t WHERE t.table_name::oid = o.objid;
		CONTINUE WHEN NOT FOUND;
		IF NOT o.original AND NOT EXISTS (SELECT FROM pg_event_trigger_dropped_objects() y
										  WHERE y.object_type = 'schema' AND y.object_name = o.schema_name) THEN
			RAISE EXCEPTION 'cannot drop distributed table "%" because something it depends on is dropped',
				o.object_identity
				USING ERRCODE = 'dependent_objects_still_exist',
					  DETAIL = 'A table would lose a column; a distributed table would lose its rows.',
					  HINT = 'Drop the distributed table first, or take it back with ws.undistribute_table.';
		END IF;
		-- Serialised with ws.rebalance, as ws.undistribute_table is.
		PERFORM FROM ws.shard_maps m WHERE m.map = d.map FOR UPDATE;
		PERFORM ws._queue_shard_tables_drop(d);
		-- A rebalance drops them once this commits: the commit must not be lost.
		IF current_setting('synchronous_commit') IN ('off', 'local') THEN
			PERFORM set_config('synchronous_commit', 'on', true);
		END IF;
		DELETE FROM ws.distributed_tables t WHERE t.table_name::oid = o.objid;
		-- DROP OWNED drops it with the view: its owner owns both.
		SELECT c.relowner INTO owner FROM pg_class c WHERE c.oid = d.partitioned::oid;
		IF FOUND THEN
			EXECUTE format('DROP TABLE %s', d.partitioned);
		END IF;
		FOR q IN DELETE FROM ws.distributed_sequences x WHERE x.table_name::oid = o.objid
				 RETURNING x.sequence::oid AS seq LOOP
			IF EXISTS (SELECT FROM pg_class c WHERE c.oid = q.seq AND c.relkind = 'S' AND c.relowner = owner)
			   AND NOT EXISTS (SELECT FROM pg_depend p
							   WHERE p.refclassid = 'pg_class'::regclass AND p.refobjid = q.seq
								 AND p.deptype = 'n') THEN
				EXECUTE format('DROP SEQUENCE %s', q.seq::regclass);
			END IF;
		END LOOP;
		PERFORM ws._shard_maps_changed();
		RAISE NOTICE 'the tables of distributed table "%" on its shards are dropped by the next ws.rebalance',
			d.remote_table
			USING DETAIL = 'ws.shard_cleanup lists them.';
	END LOOP;
END
$$;
COMMENT ON FUNCTION ws._distributed_view_dropped() IS
	'Internal: when a distributed table''s view is dropped, drops what lies behind it and queues its tables on the shards for ws.rebalance to drop';
CREATE EVENT TRIGGER ws_distributed_view_dropped ON sql_drop
	EXECUTE FUNCTION ws._distributed_view_dropped();
-- With session_replication_role = replica too: nothing may be left behind.
ALTER EVENT TRIGGER ws_distributed_view_dropped ENABLE ALWAYS;

-- Moves one slot of one distributed table to to_server: copies its rows,
-- checks the copy against the source, and switches the slot's foreign table,
-- all in the caller's transaction, which has already locked the slot of
-- every table of the map (ws._move_slots).  Returns the rows moved.
CREATE FUNCTION ws._move_slot(d ws.distributed_tables, p_slot int, to_server name)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	vnodes int;
	slot_name name := ws._slot_table(d.remote_table, p_slot);
	incoming name := ws._slot_table(d.remote_table, p_slot) || '_in';
	part regclass := format('ws_dist.%I', ws._slot_table(d.remote_table, p_slot))::regclass;
	from_server name;
	owner_name name;
	columns text;
	moved bigint;
	check_query text;
	source_check text;
	copied_check text;
BEGIN
	SELECT m.vnodes INTO vnodes FROM ws.shard_maps m WHERE m.map = d.map;
	-- Where the rows are is what the slot's foreign table says.
	SELECT s.srvname INTO from_server
	FROM pg_foreign_table f JOIN pg_foreign_server s ON s.oid = f.ftserver
	WHERE f.ftrelid = part;
	IF from_server = to_server THEN
		RETURN 0;
	END IF;
	DELETE FROM ws.shard_cleanup c
	WHERE c.server = to_server AND c.remote_schema = d.remote_schema AND c.remote_table = slot_name;
	PERFORM ws._shard_exec(to_server, ws._create_schema_command(d.remote_schema));
	-- No reader can see a table there: the slot points elsewhere.  An old
	-- copy left there is emptied and used again.
	PERFORM ws._shard_exec(to_server, ws._create_slot_table_command(d, p_slot, true));
	-- As a partition, with the collations of the partitioned table.
	SELECT string_agg(format('%I %s%s%s', a.attname, format_type(a.atttypid, a.atttypmod),
							 CASE WHEN a.attcollation <> t.typcollation
								  THEN ' COLLATE ' || a.attcollation::regcollation::text ELSE '' END,
							 CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END), ', ' ORDER BY a.attnum)
	INTO columns
	FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
	WHERE a.attrelid = d.partitioned AND a.attnum > 0 AND NOT a.attisdropped;
	EXECUTE format('CREATE FOREIGN TABLE ws_dist.%I (%s) SERVER %I'
				   ' OPTIONS (schema_name %L, table_name %L, async_capable ''true'', batch_size ''1000'')',
				   incoming, columns, to_server, d.remote_schema, slot_name);

	EXECUTE format('INSERT INTO ws_dist.%I SELECT * FROM %s', incoming, part);
	GET DIAGNOSTICS moved = ROW_COUNT;
	-- Verified on both servers, in the snapshots the copy used (no writer
	-- got in: the slot is held): the count, and a sum of a hash of each row
	-- in its text form (in UTF8), written alike on both: postgres_fdw's
	-- connections set DateStyle, TimeZone, extra_float_digits..., and the
	-- check sets what else could differ between servers.  A row lost,
	-- doubled or changed on the way shows.  SHA-256: MD5 is refused where
	-- OpenSSL runs in FIPS mode.
	SELECT format('SET LOCAL bytea_output = hex; SET LOCAL quote_all_identifiers = off; SET LOCAL lc_monetary = ''C'';'
				  ' SELECT count(*) || '' rows, checksum '' || coalesce(sum((''x'' || left(encode(sha256(convert_to(ROW(%s)::text, ''UTF8'')), ''hex''), 16))::bit(64)::bigint), 0) FROM %I.%I',
				  string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum), d.remote_schema, slot_name)
	INTO check_query
	FROM pg_attribute a
	WHERE a.attrelid = d.partitioned AND a.attnum > 0 AND NOT a.attisdropped;
	source_check := ws._shard_exec(from_server, check_query);
	copied_check := ws._shard_exec(to_server, check_query);
	IF source_check IS DISTINCT FROM copied_check OR split_part(source_check, ' ', 1)::bigint <> moved THEN
		RAISE EXCEPTION 'copy of slot % of table % on server "%" differs from its source', p_slot, d.table_name, to_server
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = format('Server "%s" has %s; %s rows were inserted; server "%s" has %s.  The slot stays on server "%s".',
								  from_server, source_check, moved, to_server, copied_check, from_server),
				  HINT = format('Look for triggers or rules on the slot tables on server "%s", and check that both servers run the same major version of PostgreSQL and of the extensions whose types the table uses.',
								to_server);
	END IF;

	SELECT r.rolname INTO owner_name FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner
	WHERE c.oid = d.partitioned;
	EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', d.partitioned, part);
	EXECUTE format('DROP FOREIGN TABLE %s', part);
	EXECUTE format('ALTER FOREIGN TABLE ws_dist.%I RENAME TO %I', incoming, slot_name);
	EXECUTE format('ALTER FOREIGN TABLE ws_dist.%I OWNER TO %I', slot_name, owner_name);
	EXECUTE format('ALTER TABLE %s ATTACH PARTITION ws_dist.%I FOR VALUES WITH (MODULUS %s, REMAINDER %s)',
				   d.partitioned, slot_name, vnodes, p_slot);
	INSERT INTO ws.shard_cleanup (server, remote_schema, remote_table)
	VALUES (from_server, d.remote_schema, slot_name) ON CONFLICT DO NOTHING;
	INSERT INTO ws.rebalance_log (map, table_name, slot, from_server, to_server, rows_moved)
	VALUES (d.map, d.table_name, p_slot, from_server, to_server, moved);
	RETURN moved;
END
$$;

-- Moves the next slot of a map whose owner changed, for every table of the
-- map, in the caller's transaction; returns (slot, server, rows moved), no
-- row when nothing is left to move, or rows moved -1 when the locks could
-- not be had in time: the caller must then roll back (postgres_fdw's remote
-- transactions keep the snapshot of the first attempt) and try again.
CREATE FUNCTION ws._move_slots(p_map text, OUT slot int, OUT server name, OUT moved bigint)
RETURNS SETOF record
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '5s'
AS $$
DECLARE
	s ws.shard_slots;
	d ws.distributed_tables;
BEGIN
	-- One rebalance per map at a time, and no add_shard or remove_shard
	-- meanwhile: the owner read here is the server the rows go to.  A second
	-- rebalance waits for the first's slot, however long it takes.
	PERFORM set_config('lock_timeout', '0', true);
	PERFORM FROM ws.shard_maps m WHERE m.map = p_map FOR UPDATE;
	PERFORM set_config('lock_timeout', '5s', true);
	SELECT * INTO s FROM ws.shard_slots x
	WHERE x.map = p_map AND x.owner IS DISTINCT FROM x.placed_on
	ORDER BY x.slot LIMIT 1;
	IF NOT FOUND THEN
		RETURN;
	END IF;
	slot := s.slot;
	server := s.owner;
	moved := 0;
	-- An UPDATE or DELETE of the slot's rows holds ws_dist.<table> and waits
	-- for the slot, which the switch below holds while it waits for
	-- ws_dist.<table>: the rebalance checks for that deadlock first, and
	-- gives way (the slot is started over), not the user's statement.
	IF has_parameter_privilege('deadlock_timeout', 'SET') THEN
		PERFORM set_config('deadlock_timeout', '50ms', true);
	END IF;
	BEGIN
		-- Every table's slot is held before the first row is read.
		FOR d IN SELECT * FROM ws.distributed_tables t WHERE t.map = p_map ORDER BY t.table_name::oid LOOP
			PERFORM ws._lock_slot(format('ws_dist.%I', ws._slot_table(d.remote_table, s.slot))::regclass);
		END LOOP;
		FOR d IN SELECT * FROM ws.distributed_tables t WHERE t.map = p_map ORDER BY t.table_name::oid LOOP
			moved := moved + ws._move_slot(d, s.slot, s.owner);
		END LOOP;
	EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
		moved := -1;
		RETURN NEXT;
		RETURN;
	END;
	UPDATE ws.shard_slots x SET placed_on = s.owner WHERE x.map = p_map AND x.slot = s.slot;
	PERFORM ws._shard_maps_changed();
	-- The old copy is dropped after the commit: the commit must not be lost.
	IF current_setting('synchronous_commit') IN ('off', 'local') THEN
		PERFORM set_config('synchronous_commit', 'on', true);
	END IF;
	RETURN NEXT;
END
$$;

-- Whether a table queued for dropping holds rows that readers see: the
-- table a slot's foreign table reads, or the table of slots of a
-- distributed table with slots there.  Nothing should queue one; if
-- something did, its rows stay.
CREATE FUNCTION ws._shard_table_in_use(c ws.shard_cleanup)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT EXISTS (SELECT FROM pg_foreign_table f
				   JOIN pg_foreign_server s ON s.oid = f.ftserver
				   JOIN pg_class r ON r.oid = f.ftrelid
				   WHERE r.relnamespace = 'ws_dist'::regnamespace AND s.srvname = c.server
					 AND f.ftoptions @> ARRAY['schema_name=' || c.remote_schema, 'table_name=' || c.remote_table])
		OR EXISTS (SELECT FROM ws.distributed_tables d
				   WHERE d.remote_schema = c.remote_schema AND ws._shard_table(d.remote_table) = c.remote_table
					 AND c.server IN (SELECT x.server FROM ws._table_servers(d) AS x (server)))
$$;
COMMENT ON FUNCTION ws._shard_table_in_use(ws.shard_cleanup) IS
	'Internal: whether a table queued in ws.shard_cleanup holds rows that readers of a distributed table see';

-- Queues for dropping the tables that the next move of a map's slots makes
-- on its new server (ws.rebalance).
CREATE FUNCTION ws._queue_next_copies(p_map text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	-- After any move under way, as ws._move_slots picks its slot.
	PERFORM FROM ws.shard_maps m WHERE m.map = p_map FOR UPDATE;
	INSERT INTO ws.shard_cleanup (server, remote_schema, remote_table)
	SELECT s.owner, d.remote_schema, ws._slot_table(d.remote_table, s.slot)
	FROM (SELECT x.slot, x.owner FROM ws.shard_slots x
		  WHERE x.map = p_map AND x.owner IS DISTINCT FROM x.placed_on
		  ORDER BY x.slot LIMIT 1) s
	CROSS JOIN ws.distributed_tables d
	WHERE d.map = p_map AND s.owner IS NOT NULL
	ON CONFLICT DO NOTHING;
END
$$;
COMMENT ON FUNCTION ws._queue_next_copies(text) IS
	'Internal: queues in ws.shard_cleanup the copies that the next slot move of a map makes, until it commits';

-- Drops the tables that moved slots left behind, one transaction each.
CREATE FUNCTION ws._shard_cleanup_one()
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c ws.shard_cleanup;
BEGIN
	SELECT * INTO c FROM ws.shard_cleanup y
	WHERE y.next_try <= clock_timestamp()
	ORDER BY y.queued_at LIMIT 1 FOR UPDATE SKIP LOCKED;
	IF NOT FOUND THEN
		RETURN false;
	END IF;
	-- The new copy of a slot whose move to that server is still to come
	-- (queued by ws._queue_next_copies): the move takes the row off.
	IF EXISTS (SELECT FROM ws.distributed_tables d JOIN ws.shard_slots x ON x.map = d.map
			   WHERE d.remote_schema = c.remote_schema AND ws._slot_table(d.remote_table, x.slot) = c.remote_table
				 AND x.owner = c.server AND x.owner IS DISTINCT FROM x.placed_on) THEN
		UPDATE ws.shard_cleanup y SET next_try = clock_timestamp() + interval '1 minute'
		WHERE (y.server, y.remote_schema, y.remote_table) = (c.server, c.remote_schema, c.remote_table);
		RETURN true;
	END IF;
	IF ws._shard_table_in_use(c) THEN
		RAISE WARNING 'old slot table %.% on server "%" is in use: not dropped', c.remote_schema,
			c.remote_table, c.server;
		DELETE FROM ws.shard_cleanup y
		WHERE (y.server, y.remote_schema, y.remote_table) = (c.server, c.remote_schema, c.remote_table);
		RETURN true;
	END IF;
	BEGIN
		PERFORM ws._shard_exec(c.server, ws._drop_table_command(c.remote_schema, c.remote_table));
		DELETE FROM ws.shard_cleanup y
		WHERE (y.server, y.remote_schema, y.remote_table) = (c.server, c.remote_schema, c.remote_table);
	EXCEPTION WHEN OTHERS THEN
		-- A server that is down keeps its old tables until a later run.
		RAISE WARNING 'could not drop old slot table %.% on server "%": %',
			c.remote_schema, c.remote_table, c.server, SQLERRM;
		UPDATE ws.shard_cleanup y SET next_try = clock_timestamp() + interval '1 minute', last_error = SQLERRM
		WHERE (y.server, y.remote_schema, y.remote_table) = (c.server, c.remote_schema, c.remote_table);
	END;
	RETURN true;
END
$$;

-- Drops the old copies that moved slots left, one transaction each, those
-- put off by an earlier try too if asked.  A procedure, to commit each; it
-- cannot pin search_path (that would forbid COMMIT), so every name it uses
-- is qualified.
CREATE PROCEDURE ws._drop_old_copies(retry_put_off boolean)
LANGUAGE plpgsql
AS $$
BEGIN
	IF retry_put_off THEN
		UPDATE ws.shard_cleanup c SET next_try = pg_catalog.clock_timestamp()
		WHERE c.next_try OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp();
	END IF;
	WHILE ws._shard_cleanup_one() LOOP
		COMMIT;
	END LOOP;
	COMMIT;
END
$$;

-- A procedure, to commit each slot.  It cannot pin search_path (that would
-- forbid COMMIT), so every name it uses is qualified.
CREATE PROCEDURE ws.rebalance(map text, INOUT rows_moved jsonb DEFAULT NULL)
LANGUAGE plpgsql
AS $$
DECLARE
	step record;
	attempts int := 0;
BEGIN
	IF map IS NULL THEN
		RAISE EXCEPTION 'shard map name must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF NOT EXISTS (SELECT FROM ws.shard_maps m WHERE m.map OPERATOR(pg_catalog.=) rebalance.map) THEN
		RAISE EXCEPTION 'shard map "%" does not exist', pg_catalog.left(map, 64)
			USING ERRCODE = 'undefined_object';
	END IF;
	rows_moved := '{}'::pg_catalog.jsonb;
	-- A new run tries again every drop that an earlier one put off.
	CALL ws._drop_old_copies(retry_put_off => true);

	LOOP
		-- The next slot's new copies are queued for dropping first, in a
		-- transaction of their own; the move takes them off the queue.  A
		-- move whose copies committed there but not here leaves them
		-- queued, and a later cleanup drops them.
		PERFORM ws._queue_next_copies(map);
		COMMIT;
		SELECT * INTO step FROM ws._move_slots(map);
		IF NOT FOUND THEN
			-- Once more for the drops put off meanwhile.
			CALL ws._drop_old_copies(retry_put_off => true);
			EXIT;
		END IF;
		IF step.moved OPERATOR(pg_catalog.<) 0 THEN
			-- Start the slot over in a new transaction, with new snapshots.
			ROLLBACK;
			attempts := attempts OPERATOR(pg_catalog.+) 1;
			IF attempts OPERATOR(pg_catalog.>=) 10 THEN
				RAISE EXCEPTION 'could not lock slot % of map "%" in 10 attempts', step.slot, map
					USING ERRCODE = 'lock_not_available',
						  HINT = 'Long transactions on the distributed tables hold it; run ws.rebalance again later.';
			END IF;
			PERFORM pg_catalog.pg_sleep(0.2::pg_catalog.float8 OPERATOR(pg_catalog.*) attempts);
			CONTINUE;
		END IF;
		COMMIT;
		attempts := 0;
		rows_moved := pg_catalog.jsonb_set(rows_moved, ARRAY[step.server::pg_catalog.text],
			pg_catalog.to_jsonb(COALESCE((rows_moved OPERATOR(pg_catalog.->>) step.server::pg_catalog.text)::bigint, 0)
								OPERATOR(pg_catalog.+) step.moved));
		CALL ws._drop_old_copies(retry_put_off => false);
	END LOOP;
END
$$;
COMMENT ON PROCEDURE ws.rebalance(text, jsonb) IS
	'Moves the rows of every slot whose owner changed, one slot per transaction, and reports the rows moved to each server; safe to interrupt and run again';

-- Takes a distributed table back: its rows into an ordinary table of the
-- same name here, with its columns, constraints, defaults, owner and
-- grants; its slots' foreign tables dropped; each shard's table of its
-- slots queued in ws.shard_cleanup, to be dropped only after this
-- transaction commits (durably), so that a failed commit loses nothing.
-- Returns the rows brought back.  Must be the first statement of a READ
-- COMMITTED transaction: the rows and the catalogs are read once the table
-- is held, with snapshots taken then.
CREATE FUNCTION ws._undistribute(p_table regclass)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	d ws.distributed_tables;
	rel pg_class;
	nsp name;
	owner_name name;
	column_names text;
	later text[] := '{}';
	moved bigint;
	s record;
BEGIN
	IF p_table IS NULL THEN
		RAISE EXCEPTION 'table name must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF NOT EXISTS (SELECT FROM ws.distributed_tables x WHERE x.table_name = p_table) THEN
		RAISE EXCEPTION '"%" is not a distributed table', p_table
			USING ERRCODE = 'wrong_object_type';
	END IF;
	IF NOT pg_has_role((SELECT c.relowner FROM pg_class c WHERE c.oid = p_table), 'USAGE') THEN
		RAISE EXCEPTION 'must be owner of table %', p_table
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF current_setting('transaction_isolation') <> 'read committed' THEN
		RAISE EXCEPTION 'ws.undistribute_table needs a READ COMMITTED transaction'
			USING ERRCODE = 'invalid_transaction_state';
	END IF;
	IF now() <> statement_timestamp() THEN
		RAISE EXCEPTION 'ws.undistribute_table must be the first statement of its transaction'
			USING ERRCODE = 'active_sql_transaction',
				  DETAIL = 'A remote snapshot taken earlier in the transaction could miss rows.';
	END IF;

	-- Serialised with ws.rebalance, ws.add_shard and ws.remove_shard; then
	-- nobody uses the table until it is back.
	PERFORM FROM ws.shard_maps m
	WHERE m.map = (SELECT x.map FROM ws.distributed_tables x WHERE x.table_name = p_table) FOR UPDATE;
	EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', p_table);
	SELECT * INTO d FROM ws.distributed_tables x WHERE x.table_name = p_table;
	EXECUTE format('LOCK TABLE %s IN EXCLUSIVE MODE', d.partitioned);
	-- The tables on the shards go after the commit: it must not be lost.
	IF current_setting('synchronous_commit') IN ('off', 'local') THEN
		PERFORM set_config('synchronous_commit', 'on', true);
	END IF;
	SELECT * INTO rel FROM pg_class c WHERE c.oid = p_table;
	SELECT n.nspname INTO nsp FROM pg_namespace n WHERE n.oid = rel.relnamespace;
	SELECT r.rolname INTO owner_name FROM pg_roles r WHERE r.oid = rel.relowner;
	SELECT string_agg(format('%I', a.attname), ', ' ORDER BY a.attnum) INTO column_names
	FROM pg_attribute a WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped;

	-- The view's defaults and grants, for the table.
	FOR s IN SELECT a.attname, pg_get_expr(ad.adbin, ad.adrelid) AS expr
			 FROM pg_attrdef ad JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
			 WHERE ad.adrelid = p_table LOOP
		later := later || format('ALTER TABLE %I.%I ALTER COLUMN %I SET DEFAULT %s',
								 nsp, rel.relname, s.attname, s.expr);
	END LOOP;
	later := later || ARRAY(SELECT ws._grant_commands(p_table, format('%I.%I', nsp, rel.relname)))
		|| ARRAY(SELECT ws._comment_commands(p_table, format('%I.%I', nsp, rel.relname), 'TABLE'));
	-- The serials' sequences, where ALTER SEQUENCE allows it still.
	later := later || ARRAY(
		SELECT format('ALTER SEQUENCE %s OWNED BY %I.%I.%I', q.sequence, nsp, rel.relname, q.column_name)
		FROM ws.distributed_sequences q JOIN pg_class c ON c.oid = q.sequence
		WHERE q.table_name = p_table AND c.relnamespace = rel.relnamespace AND c.relowner = rel.relowner);
	DELETE FROM ws.distributed_sequences q WHERE q.table_name = p_table;

	-- On every server that holds or may hold a slot of it (an old copy that
	-- a failed move left, say), the table of its slots, which goes with all
	-- its slot tables.
	PERFORM ws._queue_shard_tables_drop(d);

	-- The table takes the view's place, under its name (and its
	-- constraints' names), with the rows.
	DELETE FROM ws.distributed_tables x WHERE x.table_name = p_table;
	EXECUTE format('DROP VIEW %s', p_table);
	EXECUTE format('CREATE TABLE %I.%I (%s)', nsp, rel.relname, d.local_definition);
	EXECUTE format('INSERT INTO %I.%I (%s) SELECT %s FROM %s',
				   nsp, rel.relname, column_names, column_names, d.partitioned);
	GET DIAGNOSTICS moved = ROW_COUNT;
	FOR s IN SELECT e FROM jsonb_array_elements(d.remote_indexes) x (e) LOOP
		EXECUTE format('CREATE %sINDEX %I ON %I.%I USING %s',
					   CASE WHEN (s.e->>'unique')::boolean THEN 'UNIQUE ' END,
					   s.e->>'name', nsp, rel.relname, s.e->>'using');
	END LOOP;
	EXECUTE format('DROP TABLE %s', d.partitioned);
	EXECUTE format('ALTER TABLE %I.%I OWNER TO %I', nsp, rel.relname, owner_name);
	-- Exactly the view's grants: none of the caller's default privileges.
	FOR s IN SELECT DISTINCT CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(g.rolname) END AS grantee
			 FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) x
			 LEFT JOIN pg_roles g ON g.oid = x.grantee
			 WHERE c.oid = format('%I.%I', nsp, rel.relname)::regclass AND x.grantee <> rel.relowner LOOP
		EXECUTE format('REVOKE ALL ON %I.%I FROM %s', nsp, rel.relname, s.grantee);
	END LOOP;
	FOR i IN 1 .. coalesce(array_length(later, 1), 0) LOOP
		EXECUTE later[i];
	END LOOP;
	PERFORM ws._shard_maps_changed();
	RETURN moved;
END
$$;

-- A procedure, to drop the slot tables on the shards once the rows are
-- back here for good.  It cannot pin search_path (that would forbid
-- COMMIT), so every name it uses is qualified.
CREATE PROCEDURE ws.undistribute_table(table_name regclass, INOUT rows_moved bigint DEFAULT NULL)
LANGUAGE plpgsql
AS $$
BEGIN
	rows_moved := ws._undistribute(table_name);
	COMMIT;
	CALL ws._drop_old_copies(retry_put_off => false);
END
$$;
COMMENT ON PROCEDURE ws.undistribute_table(regclass, bigint) IS
	'Brings a distributed table''s rows back into an ordinary table of the same name and drops its slots, here and, after the commit, on the shards';

CREATE FUNCTION ws._shard_stats(OUT serverid oid, OUT rows_routed bigint)
RETURNS SETOF record
LANGUAGE c STRICT
AS 'MODULE_PATHNAME', 'write_scaling_shard_stats';
COMMENT ON FUNCTION ws._shard_stats() IS
	'Internal: rows routed to each server by this database since server start, behind ws.stat_shards';

CREATE VIEW ws.stat_shards AS
SELECT sh.map, sh.server, sh.weight,
	   (SELECT count(*) FROM ws.shard_slots x WHERE x.map = sh.map AND x.owner = sh.server) AS slots_owned,
	   (SELECT count(*) FROM ws.shard_slots x WHERE x.map = sh.map AND x.placed_on = sh.server) AS slots_placed,
	   coalesce(r.rows_routed, 0) AS rows_routed
FROM ws.shards sh
LEFT JOIN pg_catalog.pg_foreign_server fs ON fs.srvname = sh.server
LEFT JOIN ws._shard_stats() r ON r.serverid = fs.oid;
COMMENT ON VIEW ws.stat_shards IS
	'One row per shard of each map: its weight, the slots it should own and the slots whose rows it holds, and rows routed to it since server start';
GRANT SELECT ON ws.stat_shards TO PUBLIC;

CREATE VIEW ws.stat_rebalance AS
SELECT m.map,
	   (SELECT count(*) FROM ws.shard_slots x WHERE x.map = m.map AND x.owner IS DISTINCT FROM x.placed_on) AS slots_to_move,
	   (SELECT count(*) FROM ws.rebalance_log l WHERE l.map = m.map) AS slots_moved,
	   (SELECT coalesce(sum(l.rows_moved), 0) FROM ws.rebalance_log l WHERE l.map = m.map)::bigint AS rows_moved,
	   (SELECT max(l.moved_at) FROM ws.rebalance_log l WHERE l.map = m.map) AS last_move,
	   (SELECT count(*) FROM ws.shard_cleanup) AS tables_to_drop
FROM ws.shard_maps m;
COMMENT ON VIEW ws.stat_rebalance IS
	'Per shard map: slots waiting for ws.rebalance, slots and rows moved so far, and old slot tables still to drop';
GRANT SELECT ON ws.stat_rebalance TO PUBLIC;

REVOKE ALL ON FUNCTION ws._shard_exec(name, text, oid) FROM PUBLIC;
REVOKE ALL ON FUNCTION ws._lock_slot(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION ws.distribute_table(regclass, name, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ws._grant_commands(regclass, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ws._move_slot(ws.distributed_tables, int, name) FROM PUBLIC;
REVOKE ALL ON FUNCTION ws._move_slots(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ws._shard_cleanup_one() FROM PUBLIC;
REVOKE ALL ON FUNCTION ws._shard_table_in_use(ws.shard_cleanup) FROM PUBLIC;
REVOKE ALL ON FUNCTION ws._queue_next_copies(text) FROM PUBLIC;
REVOKE ALL ON PROCEDURE ws._drop_old_copies(boolean) FROM PUBLIC;
REVOKE ALL ON PROCEDURE ws.rebalance(text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION ws._undistribute(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION ws._columns_added(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION ws._distributed_view_dropped() FROM PUBLIC;
REVOKE ALL ON FUNCTION ws._mapping_user(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION ws._default_is_volatile(regclass, smallint) FROM PUBLIC;
REVOKE ALL ON PROCEDURE ws.undistribute_table(regclass, bigint) FROM PUBLIC;

------------------------------------------------------------------------------
-- Every counter in one view
------------------------------------------------------------------------------

CREATE VIEW ws.stats AS
SELECT 'event_store'::text AS area, e.store AS object, c.counter, c.value
FROM ws.stat_event_stores e,
	 LATERAL (VALUES ('appends', e.appends),
					 ('events_appended', e.events_appended),
					 ('version_conflicts', e.version_conflicts),
					 ('idempotent_replays', e.idempotent_replays),
					 ('in_flight_appends', e.in_flight_appends::bigint))
	 AS c (counter, value)
UNION ALL
SELECT 'snapshot_worker', w.database::text, c.counter, c.value
FROM ws.stat_workers w,
	 LATERAL (VALUES ('snapshots_taken', w.snapshots_taken),
					 ('snapshot_errors', w.errors),
					 ('streams_behind', w.streams_behind),
					 ('seconds_since_last_pass',
					  extract(epoch FROM now() - w.last_pass)::bigint))
	 AS c (counter, value)
WHERE w.database = pg_catalog.current_database()
UNION ALL
SELECT 'queue', t.topic, c.counter, c.value
FROM ws.stat_topics t,
	 LATERAL (VALUES ('enqueued', t.enqueued),
					 ('applied', t.applied),
					 ('retried', t.retried),
					 ('dead_lettered', t.dead_lettered),
					 ('queue_depth', t.queue_depth),
					 ('oldest_message_age_ms',
					  coalesce((extract(epoch FROM t.oldest_message_age) * 1000)::bigint, 0)))
	 AS c (counter, value)
UNION ALL
SELECT 'shard', s.map || '/' || s.server, c.counter, c.value
FROM ws.stat_shards s,
	 LATERAL (VALUES ('rows_routed', s.rows_routed),
					 ('slots_owned', s.slots_owned),
					 ('slots_placed', s.slots_placed))
	 AS c (counter, value)
UNION ALL
SELECT 'rebalance', r.map, c.counter, c.value
FROM ws.stat_rebalance r,
	 LATERAL (VALUES ('slots_to_move', r.slots_to_move),
					 ('slots_moved', r.slots_moved),
					 ('rows_moved', r.rows_moved))
	 AS c (counter, value)
UNION ALL
SELECT 'buffered_insert', 'all databases', c.counter, c.value
FROM ws._bulk_stats() b,
	 LATERAL (VALUES ('rows_buffered', b.rows_buffered),
					 ('flushes', b.flushes),
					 ('rows_flushed', b.rows_flushed))
	 AS c (counter, value);
COMMENT ON VIEW ws.stats IS
	'Every write_scaling counter of this database, one row per (area, object, counter); counters start at zero at server start';
GRANT SELECT ON ws.stats TO PUBLIC;

SELECT ws._wake_launcher();

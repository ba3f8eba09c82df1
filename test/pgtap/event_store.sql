-- pgTAP: event stores.  Every function's normal result, and every error
-- path with its SQLSTATE and a proof that nothing was written.
BEGIN;
SELECT plan(64);

SELECT has_function('ws', 'create_event_store', ARRAY['text']);
SELECT has_function('ws', 'drop_event_store', ARRAY['text']);
SELECT has_function('ws', 'append', ARRAY['text', 'text', 'bigint', 'jsonb']);
SELECT has_function('ws', 'read_stream', ARRAY['text', 'text', 'bigint', 'integer']);
SELECT has_function('ws', 'read_all', ARRAY['text', 'bigint', 'integer']);
SELECT has_function('ws', 'stream_version', ARRAY['text', 'text']);
SELECT has_function('ws', 'safe_position', ARRAY['text']);
SELECT has_type('ws', 'event', 'ws.event exists');
SELECT has_view('ws', 'stats', 'ws.stats exists');
SELECT has_view('ws', 'stat_event_stores', 'ws.stat_event_stores exists');

SELECT is(ws.create_event_store('tap')::text, 'ws.tap_events', 'create_event_store returns the events table');
SELECT has_table('ws', 'tap_events', 'the events table exists');
SELECT col_is_pk('ws', 'tap_events', 'global_position', 'global position is the primary key');
SELECT col_is_unique('ws', 'tap_events', ARRAY['stream', 'version'], '(stream, version) is unique');
SELECT col_is_unique('ws', 'tap_events', ARRAY['id'], 'event id is unique');

-- Normal results.
SELECT is(ws.append('tap', 's1', 0, '{"type": "Opened", "data": {"n": 1}}'), 1::bigint, 'first append makes version 1');
SELECT is(ws.append('tap', 's1', 1, '[{"type": "A", "data": 1}, {"type": "B", "data": 2}]'), 3::bigint, 'batch append returns the last version');
SELECT is(ws.append('tap', 's1', NULL, '{"type": "C", "data": 3}'), 4::bigint, 'NULL expected version appends at any version');
SELECT is(ws.append('tap', 's2', NULL, '{"type": "Opened", "data": {}}'), 1::bigint, 'NULL expected version starts a new stream');
SELECT is(ws.stream_version('tap', 's1'), 4::bigint, 'stream_version');
SELECT is(ws.stream_version('tap', 'none'), 0::bigint, 'stream_version of a missing stream is 0');
SELECT results_eq(
	$$SELECT version, type FROM ws.read_stream('tap', 's1')$$,
	$$VALUES (1::bigint, 'Opened'), (2, 'A'), (3, 'B'), (4, 'C')$$,
	'read_stream returns the stream in version order');
SELECT results_eq(
	$$SELECT version FROM ws.read_stream('tap', 's1', 3)$$,
	$$VALUES (3::bigint), (4)$$,
	'read_stream from a version');
SELECT results_eq(
	$$SELECT version FROM ws.read_stream('tap', 's1', 1, 1)$$,
	$$VALUES (1::bigint)$$,
	'read_stream with max_count');
SELECT results_eq(
	$$SELECT (e).stream, (e).version FROM ws.read_stream('tap', 's2') e$$,
	$$VALUES ('s2', 1::bigint)$$,
	'read_stream returns ws.event values');
-- Inside this transaction the appends are in flight: read_all must not
-- return them yet, and the safe position stays below them.
SELECT is((SELECT count(*) FROM ws.read_all('tap', 0)), 0::bigint,
	'read_all does not return events of an uncommitted transaction, even its own');
SELECT is(ws.safe_position('tap'), 0::bigint, 'the safe position stays below in-flight appends');
SELECT is((SELECT in_flight_appends FROM ws.stat_event_stores WHERE store = 'tap'), 1,
	'stat_event_stores shows the in-flight append');
SELECT is((SELECT oldest_in_flight_pid FROM ws.stat_event_stores WHERE store = 'tap'), pg_backend_pid(),
	'stat_event_stores names the backend that holds readers back');

-- Idempotent replay.
SELECT is(ws.append('tap', 's3', 0, '[{"id": "00000000-0000-4000-8000-000000000001", "type": "A", "data": {}},
                                      {"id": "00000000-0000-4000-8000-000000000002", "type": "B", "data": {}}]'),
	2::bigint, 'append with ids');
SELECT is(ws.append('tap', 's3', 0, '[{"id": "00000000-0000-4000-8000-000000000001", "type": "A", "data": {}},
                                      {"id": "00000000-0000-4000-8000-000000000002", "type": "B", "data": {}}]'),
	2::bigint, 'replayed append returns the original version');
SELECT is(ws.stream_version('tap', 's3'), 2::bigint, 'replay wrote nothing');
SELECT throws_ok(
	$$SELECT ws.append('tap', 's3', 2, '{"id": "00000000-0000-4000-8000-000000000001", "type": "A", "data": {}}')$$,
	'WS002', NULL, 'the same id at another version is WS002');
SELECT throws_ok(
	$$SELECT ws.append('tap', 'other', NULL, '{"id": "00000000-0000-4000-8000-000000000002", "type": "A", "data": {}}')$$,
	'WS002', NULL, 'the same id in another stream is WS002');

-- Version conflicts.
SELECT throws_ok($$SELECT ws.append('tap', 's1', 2, '{"type": "X", "data": {}}')$$,
	'WS001', 'wrong expected version for stream "s1" of event store "tap"', 'stale expected version is WS001');
SELECT throws_ok($$SELECT ws.append('tap', 's1', 0, '{"type": "X", "data": {}}')$$,
	'WS001', NULL, 'expected 0 on an existing stream is WS001');
SELECT throws_ok($$SELECT ws.append('tap', 'new', 5, '{"type": "X", "data": {}}')$$,
	'WS001', NULL, 'expected n on a missing stream is WS001');

-- Bad input: the SQLSTATE, and nothing written.
CREATE TEMP TABLE before AS SELECT count(*) AS n FROM ws.tap_events;
SELECT throws_ok($$SELECT ws.append(NULL, 's', NULL, '{"type": "A", "data": {}}')$$, '22004', NULL, 'NULL store');
SELECT throws_ok($$SELECT ws.append('tap', NULL, NULL, '{"type": "A", "data": {}}')$$, '22004', NULL, 'NULL stream');
SELECT throws_ok($$SELECT ws.append('tap', 's', NULL, NULL)$$, '22004', NULL, 'NULL events');
SELECT throws_ok($$SELECT ws.append('tap', '', NULL, '{"type": "A", "data": {}}')$$, '22023', NULL, 'empty stream name');
SELECT throws_ok($$SELECT ws.append('tap', repeat('s', 2000), NULL, '{"type": "A", "data": {}}')$$, '54000', NULL, 'oversized stream name');
SELECT throws_ok($$SELECT ws.append('tap', 's', NULL, '[]')$$, '22023', NULL, 'empty array');
SELECT throws_ok($$SELECT ws.append('tap', 's', NULL, '1')$$, '22023', NULL, 'scalar events');
SELECT throws_ok($$SELECT ws.append('tap', 's', NULL, '{"data": {}}')$$, '22023', NULL, 'event without type');
SELECT throws_ok($$SELECT ws.append('tap', 's', NULL, '{"type": "A"}')$$, '22023', NULL, 'event without data');
SELECT throws_ok($$SELECT ws.append('tap', 's', NULL, '{"type": "A", "data": {}, "id": 5}')$$, '22023', NULL, 'id of the wrong JSON type');
SELECT throws_ok($$SELECT ws.append('tap', 's', NULL, '{"type": "A", "data": {}, "id": "nope"}')$$, '22P02', NULL, 'id that is not a uuid');
SELECT throws_ok($$SELECT ws.append('tap', 's', -1, '{"type": "A", "data": {}}')$$, '22023', NULL, 'negative expected version');
SELECT throws_ok($$SELECT ws.append('tap', 's', NULL, '[{"type": "A", "data": {}}, {"type": "A", "data": {}, "extra": 1}]')$$,
	'22023', NULL, 'a bad event late in the batch rejects the whole batch');
SELECT throws_ok($$SELECT ws.append('missing', 's', NULL, '{"type": "A", "data": {}}')$$, '42704', NULL, 'unknown store');
SELECT throws_ok($$SELECT ws.append('tap_events; DROP TABLE ws.event_stores', 's', NULL, '{"type": "A", "data": {}}')$$,
	'42704', NULL, 'hostile store name');
CREATE ROLE ws_tap_outsider;
SET LOCAL ROLE ws_tap_outsider;
SELECT throws_ok($$SELECT ws.append('tap', 's', NULL, '{"type": "A", "data": {}}')$$, '42501', NULL,
	'a role without privileges on the events table cannot append');
RESET ROLE;
SELECT is((SELECT count(*) FROM ws.tap_events), (SELECT n FROM before), 'no bad append wrote anything');
SELECT has_table('ws', 'event_stores', 'the catalog survived the hostile name');

SELECT throws_ok($$SELECT ws.create_event_store('a b')$$, '22023', NULL, 'create: invalid name');
SELECT throws_ok($$SELECT ws.create_event_store('x; DROP TABLE ws.event_stores')$$, '22023', NULL, 'create: hostile name');
SELECT throws_ok($$SELECT ws.create_event_store(NULL)$$, '22004', NULL, 'create: NULL name');
SELECT throws_ok($$SELECT ws.create_event_store('tap')$$, '42710', NULL, 'create: duplicate');
SELECT throws_ok($$SELECT ws.drop_event_store('missing')$$, '42704', NULL, 'drop: unknown store');
SELECT throws_ok($$SELECT * FROM ws.read_all('tap', -1)$$, '22023', NULL, 'read_all: negative checkpoint');
SELECT throws_ok($$SELECT * FROM ws.read_stream('missing', 's')$$, '42704', NULL, 'read_stream: unknown store');

SELECT lives_ok($$SELECT ws.drop_event_store('tap')$$, 'drop_event_store');
SELECT hasnt_table('ws', 'tap_events', 'the events table is gone');

SELECT * FROM finish();
ROLLBACK;

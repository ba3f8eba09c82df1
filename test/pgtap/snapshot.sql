-- pgTAP: snapshots.  The contract of set_snapshot_policy, load and
-- snapshot, and every error path with its SQLSTATE.
BEGIN;
SELECT plan(30);

SELECT has_function('ws', 'set_snapshot_policy', ARRAY['text', 'regprocedure', 'integer', 'integer']);
SELECT has_function('ws', 'load', ARRAY['text', 'text']);
SELECT has_function('ws', 'snapshot', ARRAY['text', 'text']);
SELECT has_view('ws', 'snapshot_errors', 'ws.snapshot_errors exists');
SELECT has_view('ws', 'stat_workers', 'ws.stat_workers exists');

SELECT ws.create_event_store('tap_snap');
CREATE FUNCTION tap_count(state jsonb, e ws.event) RETURNS jsonb LANGUAGE sql
AS $$ SELECT jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1, 'v', e.version) $$;
CREATE FUNCTION tap_wrong_args(state jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT state';
CREATE FUNCTION tap_wrong_result(state jsonb, e ws.event) RETURNS text LANGUAGE sql AS 'SELECT 1::text';
CREATE FUNCTION tap_strict(state jsonb, e ws.event) RETURNS jsonb LANGUAGE sql STRICT AS 'SELECT state';

SELECT throws_ok($$SELECT * FROM ws.load('tap_snap', 's')$$, '55000', NULL, 'load without a policy');
SELECT throws_ok($$SELECT ws.snapshot('tap_snap', 's')$$, '55000', NULL, 'snapshot without a policy');
SELECT throws_ok($$SELECT ws.set_snapshot_policy('missing', 'tap_count(jsonb, ws.event)')$$, '42704', NULL, 'unknown store');
SELECT throws_ok($$SELECT ws.set_snapshot_policy('tap_snap', 'tap_wrong_args(jsonb)')$$, '42P13', NULL, 'reducer with the wrong arguments');
SELECT throws_ok($$SELECT ws.set_snapshot_policy('tap_snap', 'tap_wrong_result(jsonb, ws.event)')$$, '42P13', NULL, 'reducer with the wrong result');
SELECT throws_ok($$SELECT ws.set_snapshot_policy('tap_snap', 'tap_strict(jsonb, ws.event)')$$, '42P13', NULL, 'STRICT reducer');
SELECT throws_ok($$SELECT ws.set_snapshot_policy('tap_snap', 'tap_count(jsonb, ws.event)', 0)$$, '22023', NULL, 'every = 0');
SELECT throws_ok($$SELECT ws.set_snapshot_policy('tap_snap', 'tap_count(jsonb, ws.event)', -1)$$, '22023', NULL, 'every < 0');
SELECT throws_ok($$SELECT ws.set_snapshot_policy('tap_snap', NULL)$$, '22004', NULL, 'NULL reducer');
SELECT throws_ok($$SELECT ws.set_snapshot_policy('tap_snap', 'tap_count(jsonb, ws.event)', NULL)$$, '22004', NULL, 'NULL every');
SELECT is((SELECT count(*) FROM ws.snapshot_policies WHERE store = 'tap_snap'), 0::bigint, 'no bad call set a policy');

SELECT lives_ok($$SELECT ws.set_snapshot_policy('tap_snap', 'tap_count(jsonb, ws.event)', 5)$$, 'set_snapshot_policy');
SELECT results_eq($$SELECT state, version FROM ws.load('tap_snap', 'empty')$$,
	$$VALUES (NULL::jsonb, 0::bigint)$$, 'load of an empty stream');
SELECT ws.append('tap_snap', 's', 0, (SELECT jsonb_agg(jsonb_build_object('type', 'T', 'data', i)) FROM generate_series(1, 7) i));
SELECT results_eq($$SELECT state, version FROM ws.load('tap_snap', 's')$$,
	$$VALUES ('{"n": 7, "v": 7}'::jsonb, 7::bigint)$$, 'load folds every event');
SELECT is((SELECT count(*) FROM ws.snapshot_queue WHERE store = 'tap_snap' AND stream = 's'), 1::bigint,
	'crossing "every" queued the stream');
SELECT is(ws.snapshot('tap_snap', 's'), 7::bigint, 'snapshot returns the version it covers');
SELECT results_eq($$SELECT version, state FROM ws.snapshots WHERE store = 'tap_snap'$$,
	$$VALUES (7::bigint, '{"n": 7, "v": 7}'::jsonb)$$, 'the snapshot is stored');
SELECT throws_ok($$SELECT * FROM ws.load(NULL, 's')$$, '22004', NULL, 'load: NULL store');
SELECT throws_ok($$SELECT * FROM ws.load('tap_snap', NULL)$$, '22004', NULL, 'load: NULL stream');

-- Reducers are compared with pg_catalog's operators, not with ones planted
-- on the caller's search_path (regprocedure has no = of its own: one
-- planted for it would be an exact match).
CREATE FUNCTION tap_planted(regprocedure, regprocedure) RETURNS boolean LANGUAGE plpgsql
AS $$ BEGIN RAISE EXCEPTION 'planted operator called'; END $$;
CREATE OPERATOR public.= (LEFTARG = regprocedure, RIGHTARG = regprocedure, FUNCTION = tap_planted);
CREATE OPERATOR public.<> (LEFTARG = regprocedure, RIGHTARG = regprocedure, FUNCTION = tap_planted);
SELECT ws.append('tap_snap', 's', 7, '[{"type": "T", "data": 8}]');
SELECT is(ws.snapshot('tap_snap', 's'), 8::bigint, 'snapshot ignores operators planted on the search_path');
SELECT results_eq($$SELECT state, version FROM ws.load('tap_snap', 's')$$,
	$$VALUES ('{"n": 8, "v": 8}'::jsonb, 8::bigint)$$, 'and so does load');
DROP OPERATOR public.= (regprocedure, regprocedure);
DROP OPERATOR public.<> (regprocedure, regprocedure);

-- Snapshots are shown only to roles that may read the store.
CREATE ROLE ws_tap_stranger;
SET LOCAL ROLE ws_tap_stranger;
SELECT is((SELECT count(*) FROM ws.snapshots), 0::bigint, 'a stranger sees no snapshot');
SELECT throws_ok($$SELECT * FROM ws.load('tap_snap', 's')$$, '42501', NULL, 'nor can load the stream');
RESET ROLE;
GRANT SELECT ON ws.tap_snap_events TO ws_tap_stranger;
SET LOCAL ROLE ws_tap_stranger;
SELECT is((SELECT count(*) FROM ws.snapshots), 1::bigint, 'a reader of the store sees its snapshot');
RESET ROLE;
-- ws.load runs the reducer as the caller, who needs EXECUTE on it.
REVOKE EXECUTE ON FUNCTION tap_count(jsonb, ws.event) FROM PUBLIC;
SET LOCAL ROLE ws_tap_stranger;
SELECT throws_ok($$SELECT * FROM ws.load('tap_snap', 's')$$, '42501', NULL, 'load needs EXECUTE on the reducer');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;

-- Snapshots: ws.load must equal a full replay of the stream through the
-- reducer, with or without snapshots; a policy change makes old snapshots
-- unusable.  The snapshot worker is off here (test/regress.conf).
CREATE EXTENSION write_scaling;
\set SHOW_CONTEXT never
SELECT ws.create_event_store('acct');

-- A reducer: running balance, event count and last type.
CREATE FUNCTION balance(state jsonb, e ws.event) RETURNS jsonb
LANGUAGE sql AS $$
	SELECT jsonb_build_object(
		'balance', coalesce((state->>'balance')::numeric, 0) + (e.data->>'amount')::numeric,
		'n', coalesce((state->>'n')::int, 0) + 1,
		'last', e.type,
		'last_version', e.version)
$$;
-- The same fold, computed from the table without the extension: the oracle.
CREATE FUNCTION replay(s text, upto bigint DEFAULT NULL) RETURNS jsonb
LANGUAGE sql AS $$
	SELECT CASE WHEN count(*) = 0 THEN NULL ELSE jsonb_build_object(
		'balance', sum((data->>'amount')::numeric),
		'n', count(*),
		'last', (array_agg(type ORDER BY version DESC))[1],
		'last_version', max(version)) END
	FROM ws.acct_events WHERE stream = s AND (upto IS NULL OR version <= upto)
$$;

-- Without a policy, load says how to set one.
SELECT * FROM ws.load('acct', 'a');

SELECT ws.set_snapshot_policy('acct', 'balance(jsonb, ws.event)', every => 10);
SELECT store, reducer, every, reducer_version FROM ws.snapshot_policies;

-- Streams of 0, 1, every - 1, every and many events.
SELECT ws.append('acct', 'one', 0, '{"type": "Deposit", "data": {"amount": 5}}');
SELECT ws.append('acct', 'nine', 0, (SELECT jsonb_agg(jsonb_build_object('type', 'Deposit', 'data', jsonb_build_object('amount', i))) FROM generate_series(1, 9) i));
SELECT ws.append('acct', 'ten', 0, (SELECT jsonb_agg(jsonb_build_object('type', 'Deposit', 'data', jsonb_build_object('amount', i))) FROM generate_series(1, 10) i));
SELECT count(ws.append('acct', 'many', NULL, jsonb_build_object('type', CASE WHEN i % 3 = 0 THEN 'Withdrawal' ELSE 'Deposit' END,
                                                                'data', jsonb_build_object('amount', CASE WHEN i % 3 = 0 THEN -i ELSE i END))))
FROM generate_series(1, 1234) i;

SELECT s AS stream, l.version, l.state IS NOT DISTINCT FROM replay(s) AS equals_replay, l.state
FROM unnest(ARRAY['none', 'one', 'nine', 'ten', 'many']) s, ws.load('acct', s) l;

-- Appends queue a stream each time its version crosses a multiple of 10,
-- one row per crossing.
SELECT stream, count(*) AS crossings, max(due_version) FROM ws.snapshot_queue
GROUP BY stream ORDER BY stream;

-- Snapshots, then appends after them: load folds snapshot + tail.
SELECT ws.snapshot('acct', s) FROM unnest(ARRAY['none', 'one', 'nine', 'ten', 'many']) s;
SELECT stream, version FROM ws.snapshots ORDER BY stream;
SELECT ws.append('acct', 'many', NULL, '[{"type": "Deposit", "data": {"amount": 1000}}, {"type": "Fee", "data": {"amount": -1}}]');
SELECT l.version, l.state IS NOT DISTINCT FROM replay('many') AS equals_replay FROM ws.load('acct', 'many') l;

-- Load really starts from the snapshot: doctor its balance and load shows it.
CREATE FUNCTION doctored_by(s text) RETURNS numeric LANGUAGE sql AS $$
	SELECT (l.state->>'balance')::numeric - (replay(s)->>'balance')::numeric FROM ws.load('acct', s) l
$$;
UPDATE ws.snapshots SET state = jsonb_set(state, '{balance}', to_jsonb((state->>'balance')::numeric + 1000000))
WHERE stream = 'many';
SELECT doctored_by('many');

-- A new reducer version makes every snapshot unusable: ignored, never applied.
SELECT ws.set_snapshot_policy('acct', 'balance(jsonb, ws.event)', every => 10, reducer_version => 2);
SELECT doctored_by('many'), l.state IS NOT DISTINCT FROM replay('many') AS equals_replay
FROM ws.load('acct', 'many') l;
-- ... and the policy change queued the streams whose snapshots it obsoleted.
SELECT DISTINCT stream FROM ws.snapshot_queue ORDER BY stream;

-- Replacing the reducer's body (same function, same OID) does too.
SELECT ws.snapshot('acct', 'many');
UPDATE ws.snapshots SET state = jsonb_set(state, '{balance}', to_jsonb((state->>'balance')::numeric + 1000000))
WHERE stream = 'many';
SELECT doctored_by('many');
CREATE OR REPLACE FUNCTION balance(state jsonb, e ws.event) RETURNS jsonb
LANGUAGE sql AS $$
	SELECT jsonb_build_object(
		'balance', coalesce((state->>'balance')::numeric, 0) + (e.data->>'amount')::numeric,
		'n', coalesce((state->>'n')::int, 0) + 1,
		'last', e.type,
		'last_version', e.version)  -- same logic, new definition
$$;
SELECT doctored_by('many'), l.state IS NOT DISTINCT FROM replay('many') AS equals_replay
FROM ws.load('acct', 'many') l;

-- The fingerprint covers SQL-standard bodies (BEGIN ATOMIC) too.
CREATE FUNCTION atomic_count(state jsonb, e ws.event) RETURNS jsonb
LANGUAGE sql BEGIN ATOMIC SELECT jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1); END;
SELECT ws._reducer_fingerprint('atomic_count(jsonb, ws.event)') AS before_replace \gset
CREATE OR REPLACE FUNCTION atomic_count(state jsonb, e ws.event) RETURNS jsonb
LANGUAGE sql BEGIN ATOMIC SELECT jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 2); END;
SELECT ws._reducer_fingerprint('atomic_count(jsonb, ws.event)') <> :before_replace AS fingerprint_changed;

-- A reducer that fails fails the load, with its own error.
CREATE FUNCTION picky(state jsonb, e ws.event) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
	IF e.type = 'Fee' THEN
		RAISE EXCEPTION 'fees are not supported' USING ERRCODE = 'feature_not_supported';
	END IF;
	RETURN coalesce(state, '{}') || jsonb_build_object('v', e.version);
END $$;
SELECT ws.set_snapshot_policy('acct', 'picky(jsonb, ws.event)');
SELECT * FROM ws.load('acct', 'ten');
SELECT * FROM ws.load('acct', 'many');

-- Bad input.
SELECT ws.set_snapshot_policy('nosuch', 'balance(jsonb, ws.event)');
SELECT ws.set_snapshot_policy('acct', 'balance(jsonb, ws.event)', every => 0);
SELECT ws.set_snapshot_policy('acct', 'balance(jsonb, ws.event)', every => -5);
SELECT ws.set_snapshot_policy('acct', NULL);
SELECT ws.set_snapshot_policy(NULL, 'balance(jsonb, ws.event)');
CREATE FUNCTION not_a_reducer(a int, b int) RETURNS int LANGUAGE sql AS 'SELECT a + b';
SELECT ws.set_snapshot_policy('acct', 'not_a_reducer(int, int)');
CREATE FUNCTION strict_reducer(state jsonb, e ws.event) RETURNS jsonb LANGUAGE sql STRICT AS 'SELECT state';
SELECT ws.set_snapshot_policy('acct', 'strict_reducer(jsonb, ws.event)');
SELECT ws.set_snapshot_policy('acct', 'no_such_function(jsonb, ws.event)');
SELECT * FROM ws.load(NULL, 'a');
SELECT * FROM ws.load('acct', NULL);
SELECT * FROM ws.load('nosuch', 'a');
SELECT ws.snapshot('nosuch', 'a');
SELECT store, reducer, every, reducer_version FROM ws.snapshot_policies;

-- Dropping the store drops its policy, snapshots and queue.
SELECT ws.drop_event_store('acct');
SELECT (SELECT count(*) FROM ws.snapshot_policies) AS policies,
       (SELECT count(*) FROM ws.snapshots) AS snapshots,
       (SELECT count(*) FROM ws.snapshot_queue) AS queued;
DROP FUNCTION balance, replay, doctored_by, picky, not_a_reducer, strict_reducer, atomic_count;
DROP EXTENSION write_scaling;

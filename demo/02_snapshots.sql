-- Snapshots: the state of a stream from a reducer, kept fresh by a
-- background worker, so that loading a long stream stays fast.
SELECT ws.create_event_store('accounts');

-- A reducer folds one event into the state (NULL before the first event).
CREATE FUNCTION account_state(state jsonb, e ws.event) RETURNS jsonb
LANGUAGE sql AS $$
	SELECT jsonb_build_object(
		'balance', coalesce((state->>'balance')::numeric, 0) + (e.data->>'amount')::numeric,
		'postings', coalesce((state->>'postings')::int, 0) + 1)
$$;
SELECT ws.set_snapshot_policy('accounts', 'account_state(jsonb, ws.event)', every => 100);

-- 250 postings to one account.
SELECT count(ws.append('accounts', 'acct-7', NULL,
       jsonb_build_object('type', 'Posted', 'data', jsonb_build_object('amount', i))))
FROM generate_series(1, 250) i;

-- The worker notices the stream crossed 100 and 200 events and snapshots it.
DO $$
BEGIN
	FOR i IN 1 .. 100 LOOP
		EXIT WHEN EXISTS (SELECT FROM ws.snapshots WHERE stream = 'acct-7');
		PERFORM pg_sleep(0.1);
	END LOOP;
END $$;
SELECT stream, version, state, taken_at IS NOT NULL AS taken FROM ws.snapshots;

-- load = latest snapshot + the events after it, folded in C.
SELECT * FROM ws.load('accounts', 'acct-7');

SELECT database, state, streams_behind, snapshots_taken, errors FROM ws.stat_workers
WHERE database = current_database();

-- Event stores: the public contract, normal results and every bad input.
-- Error messages, details and hints are part of the contract.
CREATE EXTENSION write_scaling;
\set SHOW_CONTEXT never

SELECT ws.create_event_store('orders');
SELECT name, events_table FROM ws.event_stores;
\d ws.orders_events

-- Versions start at 1; expected_version 0 creates a stream.
SELECT ws.append('orders', 'order-1', 0, '{"type": "OrderPlaced", "data": {"total": 10}}');
SELECT ws.append('orders', 'order-1', 1, '[{"type": "ItemAdded", "data": {"sku": "a"}},
                                           {"type": "ItemAdded", "data": {"sku": "b"}, "metadata": {"user": "ann"}}]');
-- NULL = any version.
SELECT ws.append('orders', 'order-1', NULL, '{"type": "OrderPaid", "data": 10}');
SELECT ws.append('orders', 'order-2', NULL, '{"type": "OrderPlaced", "data": {}}');
SELECT ws.stream_version('orders', 'order-1'), ws.stream_version('orders', 'order-2'),
       ws.stream_version('orders', 'nobody');

SELECT stream, version, global_position, type, data, metadata
FROM ws.read_stream('orders', 'order-1');
SELECT version, type FROM ws.read_stream('orders', 'order-1', 2, 2);
SELECT count(*) FROM ws.read_stream('orders', 'order-1', 1, 0);
SELECT count(*) FROM ws.read_stream('orders', 'nobody');

SELECT global_position, stream, version, type, safe_position FROM ws.read_all('orders');
SELECT global_position, stream, version FROM ws.read_all('orders', 2, 2);
SELECT count(*) FROM ws.read_all('orders', 5);
SELECT ws.safe_position('orders');

-- Version conflicts name the expected and the actual version.
SELECT ws.append('orders', 'order-1', 2, '{"type": "Late", "data": {}}');
SELECT ws.append('orders', 'order-1', 0, '{"type": "Late", "data": {}}');
SELECT ws.append('orders', 'order-9', 3, '{"type": "Late", "data": {}}');

-- Idempotency: replaying the same ids at the same versions writes nothing
-- and returns the version the first append returned.
SELECT ws.append('orders', 'order-3', 0,
       '[{"id": "6f1f6d6e-0000-4000-8000-000000000001", "type": "A", "data": {}},
         {"id": "6f1f6d6e-0000-4000-8000-000000000002", "type": "B", "data": {}}]');
SELECT ws.append('orders', 'order-3', 0,
       '[{"id": "6f1f6d6e-0000-4000-8000-000000000001", "type": "A", "data": {}},
         {"id": "6f1f6d6e-0000-4000-8000-000000000002", "type": "B", "data": {}}]');
SELECT ws.append('orders', 'order-3', NULL,
       '[{"id": "6f1f6d6e-0000-4000-8000-000000000001", "type": "A", "data": {}},
         {"id": "6f1f6d6e-0000-4000-8000-000000000002", "type": "B", "data": {}}]');
SELECT ws.append('orders', 'order-3', NULL,
       '{"id": "6f1f6d6e-0000-4000-8000-000000000002", "type": "B", "data": {}}');
SELECT id, version FROM ws.read_stream('orders', 'order-3');
-- The same id at another position is an error.
SELECT ws.append('orders', 'order-3', 2,
       '{"id": "6f1f6d6e-0000-4000-8000-000000000001", "type": "A", "data": {}}');
SELECT ws.append('orders', 'order-4', NULL,
       '{"id": "6f1f6d6e-0000-4000-8000-000000000001", "type": "A", "data": {}}');
SELECT ws.append('orders', 'order-3', 0,
       '[{"id": "6f1f6d6e-0000-4000-8000-000000000001", "type": "A", "data": {}},
         {"id": "6f1f6d6e-0000-4000-8000-000000000009", "type": "C", "data": {}}]');

-- Bad input: a clear error, and nothing written.
SELECT count(*) AS events_before FROM ws.orders_events \gset
SELECT ws.append(NULL, 'order-1', NULL, '{"type": "A", "data": {}}');
SELECT ws.append('orders', NULL, NULL, '{"type": "A", "data": {}}');
SELECT ws.append('orders', '', NULL, '{"type": "A", "data": {}}');
SELECT ws.append('orders', repeat('x', 1025), NULL, '{"type": "A", "data": {}}');
SELECT ws.append('orders', 'order-1', NULL, NULL);
SELECT ws.append('orders', 'order-1', -1, '{"type": "A", "data": {}}');
SELECT ws.append('orders', 'order-1', NULL, '[]');
SELECT ws.append('orders', 'order-1', NULL, '"just a string"');
SELECT ws.append('orders', 'order-1', NULL, '[{"type": "A", "data": {}}, 42]');
SELECT ws.append('orders', 'order-1', NULL, '{"data": {}}');
SELECT ws.append('orders', 'order-1', NULL, '{"type": "", "data": {}}');
SELECT ws.append('orders', 'order-1', NULL, '{"type": 7, "data": {}}');
SELECT ws.append('orders', 'order-1', NULL, '{"type": "A"}');
SELECT ws.append('orders', 'order-1', NULL, '{"type": "A", "data": null}');
SELECT ws.append('orders', 'order-1', NULL, '{"type": "A", "data": {}, "metadata": [1]}');
SELECT ws.append('orders', 'order-1', NULL, '{"type": "A", "data": {}, "id": 12}');
SELECT ws.append('orders', 'order-1', NULL, '{"type": "A", "data": {}, "dta": 1}');
\set SHOW_CONTEXT errors
SELECT ws.append('orders', 'order-1', NULL, '[{"type": "A", "data": {}}, {"type": "A", "data": {}, "id": "not-a-uuid"}]');
\set SHOW_CONTEXT never
SELECT ws.append('orders', 'order-1', NULL,
       '[{"id": "6f1f6d6e-0000-4000-8000-00000000000a", "type": "A", "data": {}},
         {"id": "6f1f6d6e-0000-4000-8000-00000000000a", "type": "A", "data": {}}]');
SELECT ws.append('nosuchstore', 'order-1', NULL, '{"type": "A", "data": {}}');
SELECT ws.append('orders"; DROP TABLE ws.event_stores; --', 'x', NULL, '{"type": "A", "data": {}}');
SELECT ws.append(repeat('o', 100), 'x', NULL, '{"type": "A", "data": {}}');
SELECT count(*) = :events_before AS nothing_written FROM ws.orders_events;

SELECT * FROM ws.read_stream(NULL, 'order-1');
SELECT * FROM ws.read_stream('orders', NULL);
SELECT * FROM ws.read_stream('orders', 'order-1', -1);
SELECT * FROM ws.read_stream('orders', 'order-1', 1, -5);
SELECT * FROM ws.read_stream('nosuchstore', 'order-1');
SELECT * FROM ws.read_all('orders', NULL);
SELECT * FROM ws.read_all('orders', -1);
SELECT * FROM ws.read_all('orders', 0, -1);
SELECT * FROM ws.read_all('nosuchstore');
SELECT ws.stream_version('orders', NULL);
SELECT ws.stream_version('nosuchstore', 'x');

-- Store names are validated: hostile names cannot inject SQL.
SELECT ws.create_event_store(NULL);
SELECT ws.create_event_store('orders');
SELECT ws.create_event_store('Orders');
SELECT ws.create_event_store('x"; DROP TABLE ws.event_stores; --');
SELECT ws.create_event_store('');
SELECT ws.create_event_store(repeat('a', 49));
SELECT ws.drop_event_store('nosuchstore');
SELECT ws.drop_event_store(NULL);
SELECT count(*) FROM ws.event_stores;

-- Savepoints: a rolled-back append leaves no trace and holds nobody back.
BEGIN;
SELECT ws.append('orders', 'order-5', 0, '{"type": "A", "data": {}}');
SAVEPOINT s1;
SELECT ws.append('orders', 'order-5', 1, '{"type": "B", "data": {}}');
ROLLBACK TO s1;
SELECT ws.append('orders', 'order-5', 1, '{"type": "C", "data": {}}');
COMMIT;
SELECT version, type FROM ws.read_stream('orders', 'order-5');
SELECT ws.safe_position('orders') = max(global_position) AS safe_is_last
FROM ws.orders_events;

-- An appending transaction cannot be prepared.
BEGIN;
SELECT ws.append('orders', 'order-6', 0, '{"type": "A", "data": {}}');
PREPARE TRANSACTION 'ws_append';
SELECT ws.stream_version('orders', 'order-6');

-- Counters.
SELECT store, appends, events_appended, version_conflicts, idempotent_replays,
       in_flight_appends, last_position - safe_position AS aborted_at_the_top
FROM ws.stat_event_stores;
SELECT area, object, counter, value FROM ws.stats WHERE area = 'event_store' ORDER BY counter;

-- An events table the user customised still works: a CHECK constraint is
-- enforced, and a trigger (here one that feeds a projection) fires, since
-- such tables are written through the executor instead of directly.
-- (terse: the failing row's detail holds a random id and the time)
ALTER TABLE ws.orders_events ADD CONSTRAINT no_forbidden CHECK (type <> 'Forbidden');
\set VERBOSITY terse
SELECT ws.append('orders', 'order-7', 0, '[{"type": "A", "data": {}}, {"type": "Forbidden", "data": 5}]');
\set VERBOSITY default
SELECT ws.stream_version('orders', 'order-7');
CREATE TABLE order_totals (stream text PRIMARY KEY, events int);
CREATE FUNCTION project_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO order_totals VALUES (NEW.stream, 1)
	ON CONFLICT (stream) DO UPDATE SET events = order_totals.events + 1;
	RETURN NULL;
END $$;
CREATE TRIGGER project AFTER INSERT ON ws.orders_events
	FOR EACH ROW EXECUTE FUNCTION project_order();
SELECT ws.append('orders', 'order-7', 0, '[{"type": "A", "data": {}}, {"type": "B", "data": {"x": 1}}]');
SELECT ws.append('orders', 'order-7', 2, '{"type": "C", "data": {}}');
\set VERBOSITY terse
SELECT ws.append('orders', 'order-7', 3, '{"type": "Forbidden", "data": []}');
\set VERBOSITY default
SELECT ws.append('orders', 'order-7', 3, '{"type": "D", "data": []}');
SELECT * FROM order_totals;
SELECT version, type FROM ws.read_stream('orders', 'order-7');
DROP TRIGGER project ON ws.orders_events;
DROP TABLE order_totals;
DROP FUNCTION project_order();
ALTER TABLE ws.orders_events DROP CONSTRAINT no_forbidden;

-- A BEFORE trigger that skips the insert: the append fails instead of
-- pretending, and a narrowed column type is enforced.
CREATE FUNCTION skip_it() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE TRIGGER skip BEFORE INSERT ON ws.orders_events FOR EACH ROW EXECUTE FUNCTION skip_it();
SELECT ws.append('orders', 'order-8', 0, '{"type": "A", "data": {}}');
DROP TRIGGER skip ON ws.orders_events;
DROP FUNCTION skip_it();
ALTER TABLE ws.orders_events ALTER COLUMN type TYPE varchar(12);
SELECT ws.append('orders', 'order-8', 0, '{"type": "MuchTooLongForTheColumn", "data": {}}');
SELECT ws.append('orders', 'order-8', 0, '{"type": "Short", "data": {}}');
SELECT version, type FROM ws.read_stream('orders', 'order-8');
ALTER TABLE ws.orders_events ALTER COLUMN type TYPE text;

-- Renaming the events table is followed: this session's kept statements
-- are prepared again for the new name.
SELECT count(*) FROM ws.read_stream('orders', 'order-8');
ALTER TABLE ws.orders_events RENAME TO orders_events_renamed;
SELECT count(*) FROM ws.read_stream('orders', 'order-8');
SELECT ws.append('orders', 'order-8', NULL, '{"type": "Renamed", "data": {}}');
ALTER TABLE ws.orders_events_renamed RENAME TO orders_events;
SELECT version, type FROM ws.read_stream('orders', 'order-8');

-- Appending in a read-only transaction is refused like any write.
BEGIN READ ONLY;
SELECT ws.append('orders', 'order-8', NULL, '{"type": "A", "data": {}}');
ROLLBACK;

-- A drop rolled back with its savepoint leaves the store working.
BEGIN;
SAVEPOINT before_drop;
SELECT ws.drop_event_store('orders');
ROLLBACK TO before_drop;
COMMIT;
SELECT ws.append('orders', 'order-8', 2, '{"type": "AfterUndrop", "data": {}}');
SELECT in_flight_appends, safe_position = last_position AS caught_up FROM ws.stat_event_stores;

-- Dropping a store removes its table; a new store of that name starts anew.
SELECT ws.drop_event_store('orders');
SELECT count(*) FROM ws.event_stores;
SELECT ws.create_event_store('orders');
SELECT ws.append('orders', 'order-1', 0, '{"type": "A", "data": {}}');
SELECT global_position, version FROM ws.read_all('orders');
SELECT ws.drop_event_store('orders');
DROP EXTENSION write_scaling;

-- Event stores: append-only streams with optimistic concurrency,
-- idempotent appends and a global read that never skips an event.
CREATE EXTENSION write_scaling;
SELECT ws.create_event_store('orders');

-- Start a stream (expected version 0 = must not exist yet) and append to it.
SELECT ws.append('orders', 'order-42', 0,
       '{"type": "OrderPlaced", "data": {"customer": "ann", "total": 30}}');
SELECT ws.append('orders', 'order-42', 1,
       '[{"type": "ItemAdded", "data": {"sku": "tea", "qty": 2}},
         {"type": "ItemAdded", "data": {"sku": "cup", "qty": 1}, "metadata": {"by": "web"}}]');

-- A writer that read version 1 and tries to append loses the race, with
-- SQLSTATE WS001 and both versions in the detail.
\set ON_ERROR_STOP 0
SELECT ws.append('orders', 'order-42', 1, '{"type": "OrderPaid", "data": {}}');
\set ON_ERROR_STOP 1
\echo SQLSTATE :LAST_ERROR_SQLSTATE

-- A client that retries an append with the same event ids gets the
-- original result and no duplicate.
SELECT ws.append('orders', 'order-42', 3,
       '{"id": "1b4e28ba-2fa1-4d6e-8d2b-5a1c6b0e0001", "type": "OrderPaid", "data": {"amount": 30}}');
SELECT ws.append('orders', 'order-42', 3,
       '{"id": "1b4e28ba-2fa1-4d6e-8d2b-5a1c6b0e0001", "type": "OrderPaid", "data": {"amount": 30}}')
       AS replayed_version;

SELECT version, type, data FROM ws.read_stream('orders', 'order-42');

-- A subscriber reads all streams by global position.  An append still in
-- flight holds the reader back (and only that), so an event that commits
-- late is never skipped.
BEGIN;
SELECT ws.append('orders', 'order-43', 0, '{"type": "OrderPlaced", "data": {"total": 5}}');
SELECT global_position, stream, version, type, safe_position FROM ws.read_all('orders', 0);
SELECT store, last_position, safe_position, in_flight_appends, oldest_in_flight_pid = pg_backend_pid() AS held_by_me
FROM ws.stat_event_stores;
COMMIT;
SELECT global_position, stream, version, type, safe_position FROM ws.read_all('orders', 0);

SELECT * FROM ws.stats;

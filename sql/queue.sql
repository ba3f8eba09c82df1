-- The async write queue's contract, with the workers off (regress.conf):
-- topics and their handlers, enqueues and their request ids, lanes by key,
-- request status, rollbacks, privileges, dead-letter replay and drop.
-- Applying messages is tested by test/t/008 and 009.
CREATE EXTENSION write_scaling;
\set SHOW_CONTEXT errors

CREATE TABLE shipments (key text, payload jsonb, request_id bigint, attempt int);
CREATE FUNCTION ship(key text, payload jsonb, request_id bigint, attempt int)
RETURNS void LANGUAGE sql AS $$ INSERT INTO shipments VALUES (key, payload, request_id, attempt) $$;
CREATE FUNCTION wrong_args(key text, payload json, request_id bigint, attempt int)
RETURNS void LANGUAGE sql AS $$ SELECT $$;
CREATE PROCEDURE a_procedure(key text, payload jsonb, request_id bigint, attempt int)
LANGUAGE sql AS $$ SELECT $$;

-- Creating topics, and what is refused.
SELECT ws.create_topic('shipments', 'ship(text, jsonb, bigint, int)', partitions => 4);
SELECT topic, handler, partitions, max_attempts, retry_delay, async_commit FROM ws.topics;
SELECT ws.create_topic('shipments', 'ship(text, jsonb, bigint, int)');
SELECT ws.create_topic('other', 'wrong_args(text, json, bigint, int)');
SELECT ws.create_topic('other', 'a_procedure(text, jsonb, bigint, int)');
SELECT ws.create_topic('other', 'ship(text, jsonb, bigint, int)', partitions => 0);
SELECT ws.create_topic('other', 'ship(text, jsonb, bigint, int)', partitions => -3);
SELECT ws.create_topic('other', 'ship(text, jsonb, bigint, int)', max_attempts => 0);
SELECT ws.create_topic('other', 'ship(text, jsonb, bigint, int)', retry_delay => '0 s');
SELECT ws.create_topic('', 'ship(text, jsonb, bigint, int)');
SELECT ws.create_topic(NULL, 'ship(text, jsonb, bigint, int)');
SELECT ws.create_topic('other', 'no_such_function(text, jsonb, bigint, int)');
SELECT count(*) AS topics FROM ws.topics;

-- Enqueues return request ids in call order; a key always maps to the
-- same lane.
SELECT ws.enqueue('shipments', 'order-1', '{"step": 1}') AS first_id \gset
SELECT ws.enqueue('shipments', 'order-1', '{"step": 2}') = :first_id + 1 AS ids_in_order;
SELECT * FROM ws.enqueue_batch('shipments', ARRAY['order-2', 'order-1', 'order-3'],
						 ARRAY['{"step": 1}', '{"step": 3}', '{"step": 1}']::jsonb[]);
SELECT id - :first_id AS n, key, payload, attempts FROM ws.queue ORDER BY id;
SELECT key, count(DISTINCT lane) AS lanes, bool_and(lane BETWEEN 0 AND 3) AS in_range
FROM ws.queue GROUP BY key ORDER BY key;
SELECT status, topic, attempts, error FROM ws.request_status(:first_id);
SELECT count(*) AS unknown_request FROM ws.request_status(-1);

-- What is refused, and writes nothing.
SELECT ws.enqueue('no_such_topic', 'k', '{}');
SELECT ws.enqueue(NULL, 'k', '{}');
SELECT ws.enqueue('shipments', NULL, '{}');
SELECT ws.enqueue('shipments', 'k', NULL);
SELECT ws.enqueue('shipments', repeat('k', 2000), '{}');
SELECT ws.enqueue_batch('shipments', ARRAY['a', 'b'], ARRAY['{}']::jsonb[]);
SELECT ws.enqueue_batch('shipments', ARRAY['a', NULL], ARRAY['{}', '{}']::jsonb[]);
SELECT ws.enqueue_batch('shipments', ARRAY[['a'], ['b']], ARRAY[['{}'], ['{}']]::jsonb[][]);
SELECT count(*) FROM ws.enqueue_batch('shipments', '{}'::text[], '{}'::jsonb[]) AS nothing;
BEGIN READ ONLY;
SELECT ws.enqueue('shipments', 'k', '{}');
ROLLBACK;
SELECT count(*) AS queued FROM ws.queue;

-- A rollback takes its messages back, a rolled-back savepoint its own, and
-- the counters count only what committed.
BEGIN;
SELECT ws.enqueue('shipments', 'order-9', '{}') AS rolled_back_id \gset
ROLLBACK;
SELECT count(*) AS found FROM ws.request_status(:rolled_back_id);
BEGIN;
SELECT FROM ws.enqueue('shipments', 'order-4', '{}');
SAVEPOINT s;
SELECT FROM ws.enqueue('shipments', 'order-5', '{}');
SELECT FROM ws.enqueue_batch('shipments', ARRAY['order-6', 'order-7'], ARRAY['{}', '{}']::jsonb[]);
ROLLBACK TO SAVEPOINT s;
SELECT FROM ws.enqueue('shipments', 'order-8', '{}');
COMMIT;
SELECT array_agg(key ORDER BY id) AS queued_keys FROM ws.queue;
SELECT topic, enqueued, applied, queue_depth FROM ws.stat_topics;
SELECT counter, value FROM ws.stats WHERE area = 'queue' AND counter <> 'oldest_message_age_ms';

-- Enqueueing takes EXECUTE on the handler: the handler will run for it.
CREATE ROLE ws_queue_client;
CREATE ROLE ws_queue_outsider;
REVOKE EXECUTE ON FUNCTION ship(text, jsonb, bigint, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ship(text, jsonb, bigint, int) TO ws_queue_client;
SET ROLE ws_queue_client;
SELECT ws.enqueue('shipments', 'order-10', '{}') > 0 AS client_enqueued;
SELECT status FROM ws.request_status(:first_id);
SET ROLE ws_queue_outsider;
SELECT ws.enqueue('shipments', 'order-11', '{}');
SELECT status FROM ws.request_status(:first_id);
SELECT ws.create_topic('mine', 'ship(text, jsonb, bigint, int)');
RESET ROLE;

-- A dead letter goes back in the queue under its own request id.
INSERT INTO ws.dead_letters (id, topic_id, topic, lane, key, payload, enqueued_at, attempts, error, sqlstate)
SELECT q.id, q.topic_id, 'shipments', q.lane, q.key, q.payload, q.enqueued_at, 5, 'boom', 'P0001'
FROM ws.queue q WHERE q.id = :first_id;
DELETE FROM ws.queue WHERE id = :first_id;
SELECT status, attempts, error, sqlstate FROM ws.request_status(:first_id);
SELECT ws.replay_dead_letters('shipments', ARRAY[-1]::bigint[]) AS replayed_none;
SELECT ws.replay_dead_letters('shipments') AS replayed;
SELECT status, attempts FROM ws.request_status(:first_id);
SELECT ws.replay_dead_letters('no_such_topic');

-- Dropping a topic drops its messages; its name is free again.
SELECT ws.drop_topic('shipments');
SELECT ws.drop_topic('shipments');
SELECT count(*) AS queued FROM ws.queue;
SELECT ws.enqueue('shipments', 'k', '{}');
SELECT ws.create_topic('shipments', 'ship(text, jsonb, bigint, int)');
SELECT ws.enqueue('shipments', 'k', '{}') > :first_id AS enqueued_again;
SELECT ws.drop_topic('shipments');

DROP FUNCTION ship, wrong_args;
DROP PROCEDURE a_procedure;
DROP TABLE shipments;
DROP ROLE ws_queue_client, ws_queue_outsider;
DROP EXTENSION write_scaling;

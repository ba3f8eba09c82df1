-- pgTAP: the queue's functions and views, and every refusal with its
-- SQLSTATE; a refused call writes nothing.
BEGIN;
SELECT plan(42);

SELECT has_function('ws', 'create_topic', ARRAY['text', 'regprocedure', 'integer', 'integer', 'interval', 'boolean']);
SELECT has_function('ws', 'drop_topic', ARRAY['text']);
SELECT has_function('ws', 'enqueue', ARRAY['text', 'text', 'jsonb']);
SELECT has_function('ws', 'enqueue_batch', ARRAY['text', 'text[]', 'jsonb[]']);
SELECT has_function('ws', 'request_status', ARRAY['bigint']);
SELECT has_function('ws', 'replay_dead_letters', ARRAY['text', 'bigint[]']);
SELECT has_table('ws', 'dead_letters', 'dead letters are a table');
SELECT has_view('ws', 'stat_topics', 'per-topic counters');
SELECT has_view('ws', 'stat_queue_workers', 'per-worker state');

CREATE TABLE tap_sink (key text, request_id bigint);
CREATE FUNCTION tap_handler(key text, payload jsonb, request_id bigint, attempt int)
RETURNS void LANGUAGE sql AS $$ INSERT INTO tap_sink VALUES (key, request_id) $$;
CREATE FUNCTION tap_wrong(key text, payload jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
CREATE PROCEDURE tap_proc(key text, payload jsonb, request_id bigint, attempt int) LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION tap_setof(key text, payload jsonb, request_id bigint, attempt int)
RETURNS SETOF int LANGUAGE sql AS $$ SELECT 1 $$;

-- create_topic
SELECT lives_ok($$SELECT ws.create_topic('tap', 'tap_handler(text, jsonb, bigint, int)', partitions => 8)$$,
	'a topic with a handler of the right signature');
SELECT throws_ok($$SELECT ws.create_topic('tap', 'tap_handler(text, jsonb, bigint, int)')$$,
	'42710', NULL, 'a topic name is unique');
SELECT throws_ok($$SELECT ws.create_topic(NULL, 'tap_handler(text, jsonb, bigint, int)')$$,
	'22004', NULL, 'NULL topic name');
SELECT throws_ok($$SELECT ws.create_topic('x', NULL)$$, '22004', NULL, 'NULL handler');
SELECT throws_ok($$SELECT ws.create_topic(repeat('x', 64), 'tap_handler(text, jsonb, bigint, int)')$$,
	'22023', NULL, 'a name of 64 characters');
SELECT throws_ok($$SELECT ws.create_topic(E'a\nb', 'tap_handler(text, jsonb, bigint, int)')$$,
	'22023', NULL, 'a name with a control character');
SELECT throws_ok($$SELECT ws.create_topic('x', 'tap_wrong(text, jsonb)')$$,
	'42P13', NULL, 'a handler with the wrong signature');
SELECT throws_ok($$SELECT ws.create_topic('x', 'tap_proc(text, jsonb, bigint, int)')$$,
	'42P13', NULL, 'a procedure is not a handler');
SELECT throws_ok($$SELECT ws.create_topic('x', 'tap_setof(text, jsonb, bigint, int)')$$,
	'42P13', NULL, 'a set-returning handler');
SELECT throws_ok($$SELECT ws.create_topic('x', 'tap_handler(text, jsonb, bigint, int)', partitions => 0)$$,
	'22023', NULL, 'zero partitions');
SELECT throws_ok($$SELECT ws.create_topic('x', 'tap_handler(text, jsonb, bigint, int)', partitions => -1)$$,
	'22023', NULL, 'negative partitions');
SELECT throws_ok($$SELECT ws.create_topic('x', 'tap_handler(text, jsonb, bigint, int)', max_attempts => 0)$$,
	'22023', NULL, 'zero attempts');
SELECT throws_ok($$SELECT ws.create_topic('x', 'tap_handler(text, jsonb, bigint, int)', retry_delay => '-1 s')$$,
	'22023', NULL, 'a negative retry delay');
SELECT is((SELECT count(*) FROM ws.topics), 1::bigint, 'refused topics were not created');

-- enqueue
SELECT throws_ok($$SELECT ws.enqueue('nope', 'k', '{}')$$, '42704', NULL, 'unknown topic');
SELECT throws_ok($$SELECT ws.enqueue(NULL, 'k', '{}')$$, '22004', NULL, 'NULL topic');
SELECT throws_ok($$SELECT ws.enqueue('tap', NULL, '{}')$$, '22004', NULL, 'NULL key');
SELECT throws_ok($$SELECT ws.enqueue('tap', 'k', NULL)$$, '22004', NULL, 'NULL payload');
SELECT throws_ok($$SELECT ws.enqueue('tap', repeat('k', 1025), '{}')$$, '54000', NULL, 'oversized key');
SELECT throws_ok($$SELECT ws.enqueue_batch('tap', ARRAY['a', 'b'], ARRAY['{}']::jsonb[])$$,
	'2202E', NULL, 'arrays of different lengths');
SELECT throws_ok($$SELECT ws.enqueue_batch('tap', ARRAY['a', 'b'], ARRAY['{}', NULL]::jsonb[])$$,
	'22004', NULL, 'a NULL payload in a batch');
SELECT throws_ok($$SELECT ws.enqueue_batch('tap', NULL, ARRAY['{}']::jsonb[])$$, '22004', NULL, 'NULL keys');
SELECT is((SELECT count(*) FROM ws.queue), 0::bigint, 'refused enqueues wrote nothing');

SELECT is((SELECT count(*) FROM ws.enqueue_batch('tap', ARRAY['a', 'b', 'a'], ARRAY['{}', '{}', '{}']::jsonb[])),
	3::bigint, 'a batch returns one id per message');
SELECT is((SELECT count(DISTINCT lane) FROM ws.queue WHERE key = 'a'), 1::bigint, 'one key, one lane');
SELECT is((SELECT status FROM ws.request_status((SELECT min(id) FROM ws.queue))), 'pending',
	'an accepted message is pending');
SELECT throws_ok($$SELECT * FROM ws.request_status(NULL)$$, '22004', NULL, 'NULL request id');

-- Privileges: enqueueing and looking need EXECUTE on the handler.
SELECT min(id) AS tap_request FROM ws.queue \gset
CREATE ROLE ws_tap_queue_outsider;
REVOKE EXECUTE ON FUNCTION tap_handler(text, jsonb, bigint, int) FROM PUBLIC;
SET LOCAL ROLE ws_tap_queue_outsider;
SELECT throws_ok($$SELECT ws.enqueue('tap', 'k', '{}')$$, '42501', NULL, 'no EXECUTE on the handler, no enqueue');
SELECT throws_ok(format('SELECT * FROM ws.request_status(%s)', :tap_request), '42501', NULL,
	'no EXECUTE on the handler, no status');
SELECT throws_ok($$SELECT ws.create_topic('y', 'tap_handler(text, jsonb, bigint, int)')$$, '42501', NULL,
	'create_topic is not for everyone');
RESET ROLE;

-- A read-only transaction cannot enqueue.
SELECT throws_ok($$SELECT ws.enqueue('tap', 'k', '{}') FROM (SELECT set_config('transaction_read_only', 'on', true)) s$$,
	'25006', NULL, 'no enqueue in a read-only transaction');
SELECT throws_ok($$SELECT ws.drop_topic('nope')$$, '42704', NULL, 'dropping an unknown topic');
SELECT throws_ok($$SELECT ws.replay_dead_letters('nope')$$, '42704', NULL, 'replaying an unknown topic');

SELECT * FROM finish();
ROLLBACK;

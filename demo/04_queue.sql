-- The async write queue: a client gets "accepted" and a request id at once;
-- background workers apply the writes in batches, in order per key, and
-- park what keeps failing in ws.dead_letters.
CREATE TABLE stock (sku text PRIMARY KEY, on_hand int NOT NULL CHECK (on_hand >= 0));
INSERT INTO stock VALUES ('apple', 10), ('pear', 0);

-- The handler applies one message; an error rolls back that message only.
CREATE FUNCTION apply_stock_move(key text, payload jsonb, request_id bigint, attempt int)
RETURNS void LANGUAGE sql AS $$
	UPDATE stock SET on_hand = on_hand + (payload->>'delta')::int WHERE sku = key
$$;
SELECT ws.create_topic('stock_moves', 'apply_stock_move(text, jsonb, bigint, int)',
					   max_attempts => 2, retry_delay => '100 ms');

-- Enqueue returns at once; the messages are durable when this commits.
SELECT ws.enqueue('stock_moves', 'apple', '{"delta": -3}') AS first_request \gset
SELECT * FROM ws.enqueue_batch('stock_moves', ARRAY['apple', 'apple', 'pear'],
							   ARRAY['{"delta": 5}', '{"delta": -12}', '{"delta": -1}']::jsonb[]);

-- Wait for the workers: they were woken by the commit, not by polling.
CREATE PROCEDURE wait_for_queue() LANGUAGE plpgsql AS $$
BEGIN
	FOR i IN 1 .. 100 LOOP
		EXIT WHEN NOT EXISTS (SELECT FROM ws.queue);
		PERFORM pg_sleep(0.1);
	END LOOP;
END $$;
CALL wait_for_queue();

-- apple: 10 - 3 + 5 - 12 = 0, applied in enqueue order (any other order
-- would have gone below zero).  pear cannot go below zero: dead letter.
SELECT * FROM stock ORDER BY sku;
SELECT status, topic, attempts FROM ws.request_status(:first_request);
SELECT id, key, payload, attempts, error, sqlstate FROM ws.dead_letters;

-- Fix the cause, then replay: the message goes through, once.
UPDATE stock SET on_hand = 1 WHERE sku = 'pear';
SELECT ws.replay_dead_letters('stock_moves');
CALL wait_for_queue();
SELECT * FROM stock ORDER BY sku;

SELECT topic, enqueued, applied, retried, dead_lettered, queue_depth FROM ws.stat_topics;

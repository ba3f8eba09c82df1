-- Buffered bulk inserts: rows written through COPY FROM behave as inserted
-- rows do (defaults, generated columns, constraints, triggers, partitions),
-- are flushed by size, on ws.flush and before commit, vanish with a
-- rollback or a rolled-back savepoint, and an error names the row.
CREATE EXTENSION write_scaling;
\set SHOW_CONTEXT errors

CREATE TABLE orders (
	id int PRIMARY KEY,
	customer text NOT NULL,
	qty int NOT NULL CHECK (qty > 0),
	total numeric GENERATED ALWAYS AS (qty * 2.5) STORED,
	created date DEFAULT '2026-01-01'
);
CREATE TABLE audit (order_id int, note text);
CREATE FUNCTION audit_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO audit VALUES (NEW.id, 'buffered ' || NEW.customer);
	NEW.customer := upper(NEW.customer);
	RETURN NEW;
END $$;
CREATE TRIGGER audit BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION audit_order();

-- Nothing is written before a flush; the generated column is computed,
-- the trigger fires, and a NULL stays NULL as with INSERT of a full row.
BEGIN;
SELECT ws.buffered_insert('orders', ROW(1, 'ann', 2, NULL, '2026-05-01')::orders);
SELECT ws.buffered_insert('orders', ROW(2, 'bob', 3, NULL, NULL)::orders);
SELECT count(*) AS before_flush FROM orders;
SELECT ws.flush('orders');
SELECT * FROM orders ORDER BY id;
SELECT * FROM audit ORDER BY order_id;
-- Flushed before commit without asking.
SELECT ws.buffered_insert('orders', ROW(3, 'cy', 1, NULL, NULL)::orders);
COMMIT;
SELECT id, customer FROM orders ORDER BY id;

-- A rollback discards what is buffered and what was flushed.
BEGIN;
SELECT ws.buffered_insert('orders', ROW(4, 'dee', 1, NULL, NULL)::orders);
SELECT ws.flush();
SELECT ws.buffered_insert('orders', ROW(5, 'eve', 1, NULL, NULL)::orders);
ROLLBACK;
SELECT count(*) AS after_rollback FROM orders;

-- A savepoint rolled back discards exactly its rows, even when a flush
-- inside it wrote rows buffered before it.
BEGIN;
SELECT ws.buffered_insert('orders', ROW(10, 'outer', 1, NULL, NULL)::orders);
SAVEPOINT s1;
SELECT ws.buffered_insert('orders', ROW(11, 'inner', 1, NULL, NULL)::orders);
SELECT ws.flush();
ROLLBACK TO s1;
SAVEPOINT s2;
SELECT ws.buffered_insert('orders', ROW(12, 'kept', 1, NULL, NULL)::orders);
RELEASE s2;
COMMIT;
SELECT id, customer FROM orders WHERE id >= 10 ORDER BY id;

-- Flush by size: write_scaling.batch_rows rows.
SET write_scaling.batch_rows = 3;
BEGIN;
SELECT ws.buffered_insert('orders', ROW(i, 'n' || i, 1, NULL, NULL)::orders) FROM generate_series(20, 24) i;
SELECT count(*) AS flushed_by_size FROM orders WHERE id >= 20;
COMMIT;
RESET write_scaling.batch_rows;
SELECT count(*) FROM orders WHERE id >= 20;

-- A constraint violation names the row, as COPY does; nothing of the
-- transaction is written.
BEGIN;
SELECT ws.buffered_insert('orders', ROW(30, 'ok', 1, NULL, NULL)::orders);
SELECT ws.buffered_insert('orders', ROW(31, 'bad', 0, NULL, NULL)::orders);
COMMIT;
SELECT count(*) FROM orders WHERE id >= 30;
\set VERBOSITY terse
SELECT ws.copy_rows('orders', ARRAY[ROW(40, 'a', 1, NULL, NULL), ROW(1, 'dup', 1, NULL, NULL)]::orders[]);
\set VERBOSITY default

-- Text survives a flush whatever the client encoding, even characters it
-- lacks: rows are written and read back in the database's encoding.
SELECT getdatabaseencoding();
CREATE TABLE texts (t text);
SET client_encoding = 'LATIN1';
SELECT ws.copy_rows('texts', ARRAY[ROW(chr(8364) || chr(233))]::texts[]);
RESET client_encoding;
SELECT t = chr(8364) || chr(233) AS same_text FROM texts;
DROP TABLE texts;

-- copy_rows loads an array in one call.
SELECT ws.copy_rows('orders', ARRAY[ROW(50, 'x', 1, NULL, NULL), ROW(51, 'y', 2, NULL, NULL)]::orders[]);
SELECT id, customer, total FROM orders WHERE id >= 50 ORDER BY id;

-- The table may change between two flushes of one transaction.
CREATE TABLE growing (id int);
BEGIN;
SELECT ws.buffered_insert('growing', ROW(1)::growing);
SELECT ws.flush();
ALTER TABLE growing ADD COLUMN note text;
SELECT ws.buffered_insert('growing', ROW(2, 'after')::growing);
COMMIT;
SELECT * FROM growing ORDER BY id;

-- Rows that triggers buffer while a flush runs are written too.
CREATE TABLE chain (id int);
CREATE FUNCTION chain_more() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.id < 100 THEN
		PERFORM ws.buffered_insert('chain', ROW(NEW.id + 100)::chain);
	END IF;
	RETURN NULL;
END $$;
CREATE TRIGGER more AFTER INSERT ON chain FOR EACH ROW EXECUTE FUNCTION chain_more();
SELECT ws.copy_rows('chain', ARRAY[ROW(1), ROW(2), ROW(3)]::chain[]);
SELECT id FROM chain ORDER BY id;

-- A flush error caught inside a savepoint keeps the rows buffered outside it.
BEGIN;
SELECT ws.buffered_insert('orders', ROW(60, 'outside', 1, NULL, NULL)::orders);
DO $$
BEGIN
	PERFORM ws.buffered_insert('orders', ROW(61, 'inside', 0, NULL, NULL)::orders);
	PERFORM ws.flush();
EXCEPTION WHEN check_violation THEN
	RAISE NOTICE 'caught: %', SQLERRM;
END $$;
COMMIT;
SELECT id, customer FROM orders WHERE id >= 60 ORDER BY id;

-- Partition routing.
CREATE TABLE events (at date NOT NULL, what text) PARTITION BY RANGE (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
SELECT ws.copy_rows('events', ARRAY[ROW('2025-06-01', 'old'), ROW('2026-06-01', 'new')]::events[]);
SELECT tableoid::regclass, * FROM events ORDER BY at;

-- Rows for a plain table without triggers go straight to the table, not
-- through COPY, with the same checks: NOT NULL, CHECK, unique keys, a
-- partition's bounds, expression indexes, values that need TOAST, dropped
-- columns.  An error names the buffered row.
CREATE TABLE plain (id int PRIMARY KEY, name text NOT NULL, gone int, qty int CHECK (qty > 0), body text);
CREATE INDEX plain_lower_name ON plain (lower(name));
ALTER TABLE plain DROP COLUMN gone;
BEGIN;
SELECT ws.buffered_insert('plain', ROW(1, 'Ann', 1, (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 1000) i))::plain);
SELECT ws.buffered_insert('plain', ROW(2, 'Bob', 2, NULL)::plain);
COMMIT;
SELECT id, name, qty, length(body) FROM plain ORDER BY id;
SELECT id FROM plain WHERE lower(name) = 'bob';
SELECT pg_relation_size(reltoastrelid) > 0 AS toasted FROM pg_class WHERE oid = 'plain'::regclass;
BEGIN;
SELECT ws.buffered_insert('plain', ROW(3, 'Cy', 1, NULL)::plain);
SELECT ws.buffered_insert('plain', ROW(4, 'Dee', 0, NULL)::plain);
COMMIT;
SELECT ws.copy_rows('plain', ARRAY[ROW(5, 'Eve', 1, NULL), ROW(1, 'again', 1, NULL)]::plain[]);
SELECT ws.copy_rows('plain', ARRAY[ROW(6, NULL, 1, NULL)]::plain[]);
SELECT count(*) AS still_two FROM plain;

-- A partition written directly keeps to its bounds.
CREATE TABLE spans (at date NOT NULL, what text) PARTITION BY RANGE (at);
CREATE TABLE spans_2026 PARTITION OF spans FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
SELECT ws.copy_rows('spans_2026', ARRAY[ROW('2026-03-01', 'fits'), ROW('2025-03-01', 'too early')]::spans_2026[]);
SELECT ws.copy_rows('spans_2026', ARRAY[ROW('2026-03-01', 'fits')]::spans_2026[]);
SELECT * FROM spans;

-- A domain's constraints are checked at the flush too: its column makes
-- the flush go through COPY.
CREATE DOMAIN positive AS int CHECK (VALUE > 0);
CREATE TABLE measured (v positive);
BEGIN;
SELECT ws.buffered_insert('measured', ROW(5)::measured);
ALTER DOMAIN positive ADD CONSTRAINT below_three CHECK (VALUE < 3);
COMMIT;
SELECT count(*) AS no_rows FROM measured;

-- Rows buffered before a column changed type are refused; rows buffered
-- before a column was added get its default.
CREATE TABLE reshaped (id int, v int);
BEGIN;
SELECT ws.buffered_insert('reshaped', ROW(1, 42)::reshaped);
ALTER TABLE reshaped ALTER COLUMN v TYPE text;
COMMIT;
BEGIN;
SELECT ws.buffered_insert('reshaped', ROW(1, 1)::reshaped);
ALTER TABLE reshaped ADD COLUMN note text DEFAULT 'filled in';
SELECT ws.buffered_insert('reshaped', ROW(2, 2, 'given')::reshaped);
ALTER TABLE reshaped DROP COLUMN v;
COMMIT;
SELECT * FROM reshaped ORDER BY id;

-- Batches of 1,000 rows: an error names the row of the whole flush, and a
-- duplicate in another batch of the same flush is caught.
SELECT ws.copy_rows('plain', array_agg(ROW(1000 + i, 'n' || i, CASE WHEN i = 2345 THEN 0 ELSE 1 END, NULL)::plain))
FROM generate_series(1, 2500) i;
SELECT ws.copy_rows('plain', array_agg(ROW(1000 + i % 1500, 'n' || i, 1, NULL)::plain))
FROM generate_series(1, 2500) i;
SELECT ws.copy_rows('plain', array_agg(ROW(1000 + i, 'n' || i, 1, NULL)::plain)) FROM generate_series(1, 2500) i;
SET enable_seqscan = off;
SELECT count(*) AS found_by_index FROM plain WHERE lower(name) IN ('bob', 'n1', 'n2500');
RESET enable_seqscan;

-- CHECK constraints may read tableoid.
CREATE TABLE self_aware (a int CHECK (tableoid = 'self_aware'::regclass));
SELECT ws.copy_rows('self_aware', ARRAY[ROW(1)]::self_aware[]);

-- A domain inside an array is checked at the flush too.
CREATE TABLE measured_many (v positive[]);
BEGIN;
SELECT ws.buffered_insert('measured_many', ROW(ARRAY[5])::measured_many);
ALTER DOMAIN positive ADD CONSTRAINT below_four CHECK (VALUE < 4) NOT VALID;
COMMIT;

-- Each row keeps the columns it was buffered with: a column that changed
-- type and back still refuses the rows buffered in between; rows flushed
-- in a rolled-back savepoint come back with theirs, so a column added
-- before gets its default and one added inside the savepoint is gone.
CREATE TABLE flipped (id int, v int);
BEGIN;
SELECT ws.buffered_insert('flipped', ROW(1, 1)::flipped);
ALTER TABLE flipped ALTER COLUMN v TYPE bigint;
SELECT ws.buffered_insert('flipped', ROW(2, 2)::flipped);
ALTER TABLE flipped ALTER COLUMN v TYPE int;
COMMIT;
BEGIN;
SELECT ws.buffered_insert('flipped', ROW(3, 3)::flipped);
SAVEPOINT s;
SELECT ws.flush();
ALTER TABLE flipped ADD COLUMN c int;
SELECT ws.buffered_insert('flipped', ROW(4, 4, 4)::flipped);
ROLLBACK TO s;
COMMIT;
SELECT * FROM flipped;
CREATE TABLE widened (a int PRIMARY KEY);
BEGIN;
SELECT ws.buffered_insert('widened', ROW(1)::widened);
ALTER TABLE widened ADD COLUMN b int NOT NULL DEFAULT 7;
SAVEPOINT s;
SELECT ws.flush('widened');
SELECT ws.buffered_insert('widened', ROW(2, 8)::widened);
ROLLBACK TO s;
COMMIT;
SELECT * FROM widened;
CREATE TABLE thinned (id int, gone text, kept text);
BEGIN;
SELECT ws.buffered_insert('thinned', ROW(1, 'dropped', 'kept')::thinned);
ALTER TABLE thinned DROP COLUMN gone;
COMMIT;
SELECT * FROM thinned;

-- A call after a rolled-back savepoint takes the table's lock again.
BEGIN;
SAVEPOINT s;
SELECT ws.buffered_insert('plain', ROW(7, 'Fay', 1, NULL)::plain);
ROLLBACK TO s;
SELECT ws.buffered_insert('plain', ROW(8, 'Gus', 1, NULL)::plain);
SELECT mode FROM pg_locks WHERE relation = 'plain'::regclass AND pid = pg_backend_pid();
COMMIT;
SELECT id FROM plain WHERE id BETWEEN 3 AND 999 ORDER BY id;

-- Bad input: rejected at the call.
SELECT ws.buffered_insert(NULL, ROW(1, 'a', 1, NULL, NULL)::orders);
SELECT ws.buffered_insert('orders', NULL::orders);
SELECT ws.buffered_insert('orders', ROW(1, 'a'));
SELECT ws.buffered_insert('orders', ROW('2026-01-01', 'x')::events);
CREATE VIEW order_view AS SELECT * FROM orders;
SELECT ws.buffered_insert('order_view', ROW(1, 'a', 1, NULL, NULL)::order_view);
CREATE SEQUENCE seq;
SELECT ws.buffered_insert('seq', ROW(1, 'a', 1, NULL, NULL)::orders);
SELECT ws.copy_rows('orders', NULL::orders[]);
SELECT ws.copy_rows('orders', ARRAY[NULL]::orders[]);
CREATE ROLE ws_bulk_outsider;
SET ROLE ws_bulk_outsider;
SELECT ws.buffered_insert('orders', ROW(99, 'x', 1, NULL, NULL)::orders);
RESET ROLE;
BEGIN READ ONLY;
SELECT ws.buffered_insert('orders', ROW(99, 'x', 1, NULL, NULL)::orders);
ROLLBACK;
SELECT count(*) FROM orders WHERE id = 99;

SELECT counter, value > 0 AS counted FROM ws.stats WHERE area = 'buffered_insert' ORDER BY counter;

DROP ROLE ws_bulk_outsider;
DROP VIEW order_view;
DROP TABLE orders, audit, events, growing, chain, plain, spans, measured, reshaped,
	self_aware, measured_many, flipped, widened, thinned;
DROP DOMAIN positive;
DROP FUNCTION audit_order(), chain_more();
DROP SEQUENCE seq;
DROP EXTENSION write_scaling;

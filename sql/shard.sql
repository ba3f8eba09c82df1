-- Shard maps without data: the key hash on fixed vectors, placement and
-- balance, the keys that move when a shard is added or removed, and the
-- refusals.  Distributed tables on real shard servers: test/t/010.
CREATE EXTENSION write_scaling;
CREATE EXTENSION postgres_fdw;
\set SHOW_CONTEXT never

-- The hash is defined on the key's text form and must never change: these
-- values are part of the contract (see README, "Sharding").
SELECT key, ws.key_hash(key), ws.key_slot(key, 150) AS slot_of_150, ws.key_slot(key, 4096) AS slot_of_4096
FROM unnest(ARRAY['', '0', '42', 'customer-1042', 'ü', '7a4c3e1d-0b2f-4c55-9e1a-2f6b0c8d9e10']) AS key;
-- Integer and uuid keys hash as their text.
SELECT ws._slot_hash(42::bigint, 0) = ws._slot_hash('42'::text, 0) AS int8_as_text,
	   ws._slot_hash(42::int, 0) = ws._slot_hash(42::smallint, 0) AS int4_as_int2,
	   ws._slot_hash('7a4c3e1d-0b2f-4c55-9e1a-2f6b0c8d9e10'::uuid, 0)
		 = ws._slot_hash('7a4c3e1d-0b2f-4c55-9e1a-2f6b0c8d9e10'::text, 0) AS uuid_as_text;

-- A table hash-partitioned with the slot operator classes routes and
-- prunes by the same slots.
CREATE TABLE routed (k bigint) PARTITION BY HASH (k ws.int8_slot_ops);
DO $$
BEGIN
	FOR r IN 0 .. 9 LOOP
		EXECUTE format('CREATE TABLE routed_%s PARTITION OF routed FOR VALUES WITH (MODULUS 10, REMAINDER %s)', r, r);
	END LOOP;
END $$;
INSERT INTO routed SELECT generate_series(1, 10000);
SELECT count(*) FILTER (WHERE tableoid::regclass::text <> 'routed_' || ws.key_slot(k::text, 10)) AS misrouted
FROM routed;
EXPLAIN (COSTS OFF) SELECT * FROM routed WHERE k = 42;
SELECT 'routed_' || ws.key_slot('42', 10) AS slot_of_42;
DROP TABLE routed;

-- Servers for the maps; nothing connects to them here.
CREATE SERVER shard_a FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '127.0.0.1', port '1');
CREATE SERVER shard_b FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '127.0.0.1', port '1');
CREATE SERVER shard_c FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '127.0.0.1', port '1');
CREATE SERVER shard_d FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '127.0.0.1', port '1');
CREATE FOREIGN DATA WRAPPER not_postgres;
CREATE SERVER not_a_shard FOREIGN DATA WRAPPER not_postgres;

-- Balance over 100,000 keys with 3, 4 and 10 shards: exact by slots.
SELECT ws.create_shard_map('balance', vnodes => 150);
CREATE FUNCTION balance_of(map text) RETURNS TABLE (shards bigint, max_over_mean numeric)
LANGUAGE sql AS $$
	SELECT count(*), round(max(n) / avg(n), 3)
	FROM (SELECT ws.shard_for(map, i::text) AS s, count(*) AS n
		  FROM generate_series(1, 100000) i GROUP BY 1) x
$$;
SELECT ws.add_shard('balance', 'shard_a'), ws.add_shard('balance', 'shard_b'), ws.add_shard('balance', 'shard_c');
SELECT * FROM balance_of('balance');
SELECT ws.add_shard('balance', 'shard_d');
SELECT * FROM balance_of('balance');
DO $$
BEGIN
	FOR i IN 1 .. 6 LOOP
		EXECUTE format('CREATE SERVER extra_%s FOREIGN DATA WRAPPER postgres_fdw', i);
		PERFORM ws.add_shard('balance', format('extra_%s', i)::name);
	END LOOP;
END $$;
SELECT * FROM balance_of('balance');
SELECT server, weight, slots_owned, slots_placed FROM ws.stat_shards WHERE map = 'balance' ORDER BY server;

-- Adding a 4th shard moves its share (ideal 1/4) and nothing else;
-- removing one moves only its keys.
SELECT ws.create_shard_map('moves');
SELECT ws.add_shard('moves', 'shard_a'), ws.add_shard('moves', 'shard_b'), ws.add_shard('moves', 'shard_c');
CREATE TABLE placed_3 AS SELECT i, ws.shard_for('moves', i::text) AS s FROM generate_series(1, 100000) i;
SELECT ws.add_shard('moves', 'shard_d');
CREATE TABLE placed_4 AS SELECT i, ws.shard_for('moves', i::text) AS s FROM generate_series(1, 100000) i;
SELECT round(count(*) FILTER (WHERE a.s <> b.s) / 100000.0 / 0.25, 2) AS moved_vs_ideal,
	   count(*) FILTER (WHERE a.s <> b.s AND b.s <> 'shard_d') AS moved_elsewhere
FROM placed_3 a JOIN placed_4 b USING (i);
SELECT ws.remove_shard('moves', 'shard_b');
CREATE TABLE placed_removed AS SELECT i, ws.shard_for('moves', i::text) AS s FROM generate_series(1, 100000) i;
SELECT count(*) FILTER (WHERE a.s <> b.s AND a.s <> 'shard_b') AS moved_not_from_b,
	   count(*) FILTER (WHERE b.s = 'shard_b') AS left_on_b
FROM placed_4 a JOIN placed_removed b USING (i);

-- The hash strategy: slot mod number of shards moves most keys.
SELECT ws.create_shard_map('modulo', strategy => 'hash', vnodes => 150);
SELECT ws.add_shard('modulo', 'shard_a'), ws.add_shard('modulo', 'shard_b'), ws.add_shard('modulo', 'shard_c');
CREATE TABLE modulo_3 AS SELECT i, ws.shard_for('modulo', i::text) AS s FROM generate_series(1, 100000) i;
SELECT ws.add_shard('modulo', 'shard_d');
SELECT round(count(*) FILTER (WHERE a.s <> ws.shard_for('modulo', a.i::text)) / 100000.0, 2) AS moved
FROM modulo_3 a;
SELECT * FROM balance_of('modulo');

-- Weights: a shard of weight 2 holds twice the slots.
SELECT ws.create_shard_map('weighted', vnodes => 120);
SELECT ws.add_shard('weighted', 'shard_a', weight => 2), ws.add_shard('weighted', 'shard_b');
SELECT server, slots_owned FROM ws.stat_shards WHERE map = 'weighted' ORDER BY server;

-- Refusals.
SELECT ws.create_shard_map('moves');
SELECT ws.create_shard_map('typo', strategy => 'consistant');
SELECT ws.create_shard_map('Bad Name');
SELECT ws.create_shard_map('zero', vnodes => 0);
SELECT ws.create_shard_map(NULL);
SELECT ws.add_shard('no_such_map', 'shard_a');
SELECT ws.add_shard('moves', 'no_such_server');
SELECT ws.add_shard('moves', 'not_a_shard');
SELECT ws.add_shard('moves', 'shard_a');
SELECT ws.add_shard('weighted', 'shard_c', weight => 0);
SELECT ws.remove_shard('moves', 'shard_b');
SELECT ws.shard_for('no_such_map', 'k');
SELECT ws.shard_for('moves', NULL);
SELECT ws.create_shard_map('empty');
SELECT ws.shard_for('empty', 'k');

-- distribute_table refuses what it cannot distribute, before touching a shard.
CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz, body jsonb);
CREATE TABLE by_account (account int, id bigint PRIMARY KEY);
CREATE TABLE keyed_by_jsonb (k jsonb);
CREATE VIEW a_view AS SELECT 1 AS id;
-- A unique index without the key (or with it only as an INCLUDE column).
CREATE TABLE by_email (id bigint PRIMARY KEY, email text);
CREATE UNIQUE INDEX by_email_email ON by_email (email) INCLUDE (id);
-- What would stop applying behind the view: a trigger, row-level security.
CREATE TABLE with_trigger (id bigint PRIMARY KEY, at timestamptz);
CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.at := now(); RETURN NEW; END $$;
CREATE TRIGGER stamp BEFORE INSERT ON with_trigger FOR EACH ROW EXECUTE FUNCTION stamp();
CREATE TABLE with_policy (id bigint PRIMARY KEY, owner name);
ALTER TABLE with_policy ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_rows ON with_policy USING (owner = current_user);
CREATE TABLE published (id bigint PRIMARY KEY);
CREATE TABLE looked_at (id bigint PRIMARY KEY);
CREATE VIEW looking AS SELECT * FROM looked_at;
CREATE TEMPORARY TABLE scratch (id bigint PRIMARY KEY);
CREATE COLLATION any_case (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE TABLE by_name (name text COLLATE any_case PRIMARY KEY);
CREATE TABLE with_rule (id bigint PRIMARY KEY);
CREATE RULE no_deletes AS ON DELETE TO with_rule DO INSTEAD NOTHING;
SET client_min_messages = error;  -- whatever wal_level says
CREATE PUBLICATION some_tables FOR TABLE published;
RESET client_min_messages;
SELECT ws.distribute_table('events', 'id', 'no_such_map');
SELECT ws.distribute_table('events', 'id', 'empty');
SELECT ws.distribute_table('events', 'no_such_column', 'moves');
SELECT ws.distribute_table('keyed_by_jsonb', 'k', 'moves');
SELECT ws.distribute_table('by_account', 'account', 'moves');
SELECT ws.distribute_table('by_email', 'id', 'moves');
SELECT ws.distribute_table('with_trigger', 'id', 'moves');
SELECT ws.distribute_table('with_policy', 'id', 'moves');
SELECT ws.distribute_table('published', 'id', 'moves');
SELECT ws.distribute_table('looked_at', 'id', 'moves');
SELECT ws.distribute_table('scratch', 'id', 'moves');
SELECT ws.distribute_table('by_name', 'name', 'moves');
SELECT ws.distribute_table('with_rule', 'id', 'moves');
-- Tables of an earlier distribution of the name, still to be dropped on a
-- shard, would be taken for the new one's.
INSERT INTO ws.shard_cleanup (server, remote_schema, remote_table) VALUES ('shard_a', 'public', 'events_s007');
SELECT ws.distribute_table('events', 'id', 'moves');
DELETE FROM ws.shard_cleanup;
SELECT ws.distribute_table('a_view', 'id', 'moves');
SELECT ws.distribute_table(NULL, 'id', 'moves');
CALL ws.rebalance('no_such_map');
-- undistribute_table takes back only a distributed table.
CALL ws.undistribute_table('events');
CALL ws.undistribute_table(NULL);
SELECT count(*) AS distributed FROM ws.distributed_tables;

DROP PUBLICATION some_tables;
DROP VIEW looking;
DROP TABLE events, by_account, by_email, with_trigger, with_policy, published, looked_at, scratch, by_name, with_rule, keyed_by_jsonb, placed_3, placed_4, placed_removed, modulo_3;
DROP VIEW a_view;
DROP FUNCTION balance_of;
DROP FUNCTION stamp;
DROP COLLATION any_case;
DROP EXTENSION write_scaling;
DROP EXTENSION postgres_fdw CASCADE;
DROP FOREIGN DATA WRAPPER not_postgres CASCADE;

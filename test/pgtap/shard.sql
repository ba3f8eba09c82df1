-- pgTAP: the sharding functions, the hash's fixed vectors, and every
-- refusal with its SQLSTATE; a refused call changes nothing.
BEGIN;
SELECT plan(30);

SELECT has_function('ws', 'create_shard_map', ARRAY['text', 'text', 'integer']);
SELECT has_function('ws', 'add_shard', ARRAY['text', 'name', 'integer']);
SELECT has_function('ws', 'remove_shard', ARRAY['text', 'name']);
SELECT has_function('ws', 'shard_for', ARRAY['text', 'text']);
SELECT has_function('ws', 'distribute_table', ARRAY['regclass', 'name', 'text']);
SELECT has_view('ws', 'stat_shards', 'per-shard counters');
SELECT has_view('ws', 'stat_rebalance', 'rebalance progress');

-- The hash decides where data lives: these values must never change.
SELECT is(ws.key_hash('42'), -9148190273557349140::bigint, 'hash of ''42''');
SELECT is(ws.key_hash(''), -1166397803181037274::bigint, 'hash of the empty key');
SELECT is(ws.key_slot('customer-1042', 150), 75, 'slot of ''customer-1042'' among 150');

CREATE EXTENSION IF NOT EXISTS postgres_fdw;
CREATE SERVER tap_a FOREIGN DATA WRAPPER postgres_fdw;
CREATE SERVER tap_b FOREIGN DATA WRAPPER postgres_fdw;
CREATE FOREIGN DATA WRAPPER tap_other;
CREATE SERVER tap_other_server FOREIGN DATA WRAPPER tap_other;

SELECT lives_ok($$SELECT ws.create_shard_map('tap', vnodes => 64)$$, 'a map of 64 slots');
SELECT lives_ok($$SELECT ws.add_shard('tap', 'tap_a')$$, 'a postgres_fdw server as a shard');
SELECT is(ws.shard_for('tap', 'any key'), 'tap_a'::name, 'one shard holds every key');
SELECT throws_ok($$SELECT ws.create_shard_map('tap')$$, '42710', NULL, 'a map name is unique');
SELECT throws_ok($$SELECT ws.create_shard_map('x', strategy => 'ring')$$, '22023', NULL, 'a strategy typo');
SELECT throws_ok($$SELECT ws.create_shard_map('x', vnodes => 0)$$, '22023', NULL, 'zero slots');
SELECT throws_ok($$SELECT ws.create_shard_map('X-ray')$$, '22023', NULL, 'a bad map name');
SELECT throws_ok($$SELECT ws.create_shard_map(NULL)$$, '22004', NULL, 'a NULL map name');
SELECT throws_ok($$SELECT ws.add_shard('nope', 'tap_b')$$, '42704', NULL, 'an unknown map');
SELECT throws_ok($$SELECT ws.add_shard('tap', 'nope')$$, '42704', NULL, 'an unknown server');
SELECT throws_ok($$SELECT ws.add_shard('tap', 'tap_other_server')$$, '42809', NULL, 'a server of another wrapper');
SELECT throws_ok($$SELECT ws.add_shard('tap', 'tap_a')$$, '42710', NULL, 'a server twice');
SELECT throws_ok($$SELECT ws.add_shard('tap', 'tap_b', weight => -1)$$, '22023', NULL, 'a negative weight');
SELECT throws_ok($$SELECT ws.remove_shard('tap', 'tap_b')$$, '42704', NULL, 'removing a server that is no shard');
SELECT throws_ok($$SELECT ws.shard_for('nope', 'k')$$, '42704', NULL, 'shard_for of an unknown map');
SELECT throws_ok($$SELECT ws.shard_for('tap', NULL)$$, '22004', NULL, 'a NULL key');
SELECT is((SELECT count(*) FROM ws.shards WHERE map = 'tap'), 1::bigint, 'refused calls added no shard');

CREATE TABLE tap_jsonb_keyed (k jsonb);
CREATE TABLE tap_by_other (a int, id int PRIMARY KEY);
SELECT throws_ok($$SELECT ws.distribute_table('tap_jsonb_keyed', 'k', 'tap')$$, '42804', NULL,
	'a key type without a stable hash');
SELECT throws_ok($$SELECT ws.distribute_table('tap_by_other', 'a', 'tap')$$, '0A000', NULL,
	'a primary key without the shard key');
SELECT throws_ok($$SELECT ws.distribute_table('tap_by_other', 'nope', 'tap')$$, '42703', NULL,
	'an unknown key column');

SELECT * FROM finish();
ROLLBACK;

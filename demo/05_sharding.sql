-- Sharding: the rows of a table live on plain PostgreSQL servers reached
-- through postgres_fdw; this server keeps the map from keys to shards and
-- routes.  Adding a server moves only the slots it takes over.  A
-- statement that writes to several shards commits on them at once
-- (parallel_commit).
CREATE EXTENSION postgres_fdw;
CREATE SERVER shard_a FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '127.0.0.1', port :'shard_a_port', dbname 'postgres', parallel_commit 'true');
CREATE SERVER shard_b FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '127.0.0.1', port :'shard_b_port', dbname 'postgres', parallel_commit 'true');
CREATE SERVER shard_c FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '127.0.0.1', port :'shard_c_port', dbname 'postgres', parallel_commit 'true');
CREATE USER MAPPING FOR CURRENT_USER SERVER shard_a OPTIONS (user 'postgres');
CREATE USER MAPPING FOR CURRENT_USER SERVER shard_b OPTIONS (user 'postgres');
CREATE USER MAPPING FOR CURRENT_USER SERVER shard_c OPTIONS (user 'postgres');

-- A map of 12 slots over two shards.
SELECT ws.create_shard_map('accounts', vnodes => 12);
SELECT ws.add_shard('accounts', 'shard_a');
SELECT ws.add_shard('accounts', 'shard_b');

-- An ordinary table becomes distributed; its rows move to the shards.
CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance numeric NOT NULL DEFAULT 0);
INSERT INTO accounts (id, owner) SELECT i, 'owner ' || i FROM generate_series(1, 1000) i;
SELECT ws.distribute_table('accounts', 'id', 'accounts');

-- Plain SQL keeps working: inserts are routed, reads gather all shards...
INSERT INTO accounts (id, owner, balance) VALUES (1001, 'late owner', 10);
INSERT INTO accounts (id, owner) SELECT i, 'batch ' || i FROM generate_series(1002, 2000) i;
-- A large insert streams its rows to the shards while it runs.
INSERT INTO accounts (id, owner) SELECT i, 'bulk ' || i FROM generate_series(2001, 12000) i;
SELECT count(*), sum(balance) FROM accounts;
-- ...or only the owning shard when the key is fixed.
EXPLAIN (COSTS OFF) SELECT * FROM accounts WHERE id = 42;
SELECT ws.shard_for('accounts', '42');
-- Updates go to the row's shard: by key, as one statement for its slot's
-- table, alone (one round trip, the shard's READ COMMITTED) when autocommit.
EXPLAIN (VERBOSE, COSTS OFF) UPDATE accounts SET balance = balance + 5 WHERE id = 42;
UPDATE accounts SET balance = balance + 5 WHERE id = 42 RETURNING id, balance;
-- Its key cannot change (the row would stay in its old key's slot): delete
-- it and insert it anew.
\set ON_ERROR_STOP 0
UPDATE accounts SET id = 42000 WHERE id = 42;
\set ON_ERROR_STOP 1
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- Upserts decide on the row's shard: 42 is stored and updated, 12001 new.
INSERT INTO accounts (id, owner, balance) VALUES (42, 'ignored', 1), (12001, 'upserted', 1)
ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + excluded.balance
RETURNING id, owner, balance;
-- Without RETURNING, each slot's rows go as one statement: 1,000 upserts in
-- a few round trips, and a key given twice fails as on a table.
INSERT INTO accounts (id, owner, balance)
SELECT i, 'bulk', 1 FROM generate_series(11501, 12500) i
ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + excluded.balance;
\set ON_ERROR_STOP 0
INSERT INTO accounts (id, owner, balance) VALUES (12500, 'twice', 1), (12500, 'twice', 2)
ON CONFLICT (id) DO UPDATE SET balance = excluded.balance;
\set ON_ERROR_STOP 1
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- A new column reaches every shard; the stored rows get its default.
ALTER TABLE accounts ADD COLUMN currency text NOT NULL DEFAULT 'EUR';
SELECT currency, count(*) FROM accounts GROUP BY currency;

-- A third server: it takes over a third of the slots, and only their rows move.
SELECT ws.add_shard('accounts', 'shard_c');
SELECT server, slots_owned, slots_placed FROM ws.stat_shards ORDER BY server;
CALL ws.rebalance('accounts');
SELECT server, slots_owned, slots_placed, rows_routed FROM ws.stat_shards ORDER BY server;
SELECT count(*), sum(balance) FROM accounts;

-- Taken back: the rows come home into an ordinary table, the shards are emptied.
CALL ws.undistribute_table('accounts');
SELECT relkind, (SELECT count(*) FROM accounts) AS rows FROM pg_class WHERE oid = 'accounts'::regclass;

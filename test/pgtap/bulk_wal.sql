-- pgTAP: the buffered path's error paths with their SQLSTATEs, and the WAL
-- report and tuner.
BEGIN;
SELECT plan(24);

SELECT has_function('ws', 'buffered_insert', ARRAY['regclass', 'anyelement']);
SELECT has_function('ws', 'flush', ARRAY['regclass']);
SELECT has_function('ws', 'copy_rows', ARRAY['regclass', 'anyarray']);
SELECT has_function('ws', 'wal_report', '{}'::text[]);
SELECT has_function('ws', 'tune_wal', ARRAY['text', 'boolean']);

CREATE TABLE tap_bulk (id int PRIMARY KEY, v text);
CREATE VIEW tap_bulk_view AS SELECT * FROM tap_bulk;
CREATE EXTENSION file_fdw;
CREATE SERVER tap_files FOREIGN DATA WRAPPER file_fdw;
CREATE FOREIGN TABLE tap_bulk_file (id int, v text) SERVER tap_files OPTIONS (filename '/dev/null');

SELECT throws_ok($$SELECT ws.buffered_insert(NULL, ROW(1, 'a')::tap_bulk)$$, '22004', NULL, 'NULL target');
SELECT throws_ok($$SELECT ws.buffered_insert('tap_bulk', NULL::tap_bulk)$$, '22004', NULL, 'NULL row');
SELECT throws_ok($$SELECT ws.buffered_insert('tap_bulk', ROW(1, 'a'))$$, '42804', NULL, 'a row of the wrong type');
SELECT throws_ok($$SELECT ws.buffered_insert('tap_bulk_view', ROW(1, 'a')::tap_bulk_view)$$, '42809', NULL, 'a view');
SELECT throws_ok($$SELECT ws.buffered_insert('tap_bulk_file', ROW(1, 'a')::tap_bulk_file)$$, '0A000', NULL,
	'a foreign table whose wrapper cannot insert');
CREATE ROLE ws_tap_bulk_outsider;
SET LOCAL ROLE ws_tap_bulk_outsider;
SELECT throws_ok($$SELECT ws.buffered_insert('tap_bulk', ROW(1, 'a')::tap_bulk)$$, '42501', NULL,
	'a table the caller may not insert into');
SELECT throws_ok($$SELECT * FROM ws.tune_wal()$$, '42501', NULL, 'tune_wal is not for everyone');
RESET ROLE;
SELECT is((SELECT count(*) FROM tap_bulk), 0::bigint, 'no bad call wrote anything');

-- A privilege revoked in the transaction counts from the next call on,
-- though the same user made the last one.
GRANT INSERT ON tap_bulk TO ws_tap_bulk_outsider;
SET LOCAL ROLE ws_tap_bulk_outsider;
SELECT lives_ok($$SELECT ws.buffered_insert('tap_bulk', ROW(100, 'granted')::tap_bulk)$$, 'a granted insert is buffered');
RESET ROLE;
REVOKE INSERT ON tap_bulk FROM ws_tap_bulk_outsider;
SET LOCAL ROLE ws_tap_bulk_outsider;
SELECT throws_ok($$SELECT ws.buffered_insert('tap_bulk', ROW(101, 'revoked')::tap_bulk)$$, '42501', NULL,
	'the next call after REVOKE is refused');
RESET ROLE;
SELECT ws.flush();
DELETE FROM tap_bulk;

SELECT lives_ok($$SELECT ws.copy_rows('tap_bulk', ARRAY[ROW(1, 'a'), ROW(2, 'b')]::tap_bulk[])$$, 'copy_rows');
SELECT is((SELECT count(*) FROM tap_bulk), 2::bigint, 'copy_rows wrote its rows');
SELECT throws_ok($$SELECT ws.copy_rows('tap_bulk', ARRAY[ROW(3, 'c'), ROW(1, 'again')]::tap_bulk[])$$, '23505', NULL,
	'a duplicate key fails the flush with the usual SQLSTATE');

SELECT is((SELECT count(*) FROM ws.wal_report()), 11::bigint, 'wal_report has one row per setting');
SELECT is((SELECT recommended FROM ws.wal_report() WHERE setting = 'fsync'), 'on', 'fsync is never advised off');
SELECT throws_ok($$SELECT * FROM ws.tune_wal('fastest')$$, '22023', NULL, 'unknown profile');
SELECT is((SELECT count(*) FROM ws.tune_wal() WHERE statement ~ '(fsync|full_page_writes)'), 0::bigint,
	'tune_wal never touches fsync or full_page_writes');

-- Row-level security is checked on every call, not only on the first of a
-- transaction (which a SECURITY DEFINER function may have made).
CREATE TABLE tap_notes (who text, note text);
ALTER TABLE tap_notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_notes ON tap_notes USING (who = current_user) WITH CHECK (who = current_user);
GRANT INSERT, SELECT ON tap_notes TO ws_tap_bulk_outsider;
CREATE FUNCTION tap_note_as_owner() RETURNS void LANGUAGE sql SECURITY DEFINER
	AS $$ SELECT ws.buffered_insert('tap_notes', ROW('owner', 'via definer')::tap_notes) $$;
GRANT EXECUTE ON FUNCTION tap_note_as_owner() TO ws_tap_bulk_outsider;
SET LOCAL ROLE ws_tap_bulk_outsider;
SELECT lives_ok($$SELECT tap_note_as_owner()$$, 'the owner buffers through a SECURITY DEFINER function');
SELECT throws_ok($$SELECT ws.buffered_insert('tap_notes', ROW('someone else', 'forged')::tap_notes)$$, '0A000', NULL,
	'a later direct call still meets row-level security');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;

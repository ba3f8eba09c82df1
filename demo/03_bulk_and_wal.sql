-- Buffered bulk inserts: many small inserts from a loop become multi-row
-- inserts, flushed by size and always before commit.
CREATE TABLE readings (sensor int, at timestamptz DEFAULT now(), value numeric CHECK (value >= 0));
SET write_scaling.batch_rows = 1000;               -- the default is 10000

BEGIN;
SELECT count(ws.buffered_insert('readings', ROW(s % 10, '2026-11-29 12:00', s * 0.5)::readings))
FROM generate_series(1, 2500) s;
SELECT count(*) AS written_so_far FROM readings;   -- 2 flushes of 1000 rows; 500 still buffered
COMMIT;                                            -- the rest is flushed before the commit
SELECT count(*) AS after_commit FROM readings;

-- A bad row fails the flush, naming the row; nothing of the call is written.
\set ON_ERROR_STOP 0
SELECT ws.copy_rows('readings', ARRAY[ROW(1, now(), 1), ROW(2, now(), -5)]::readings[]);
\set ON_ERROR_STOP 1

SELECT counter, value FROM ws.stats WHERE area = 'buffered_insert';

-- WAL and commit settings, with the measurement each recommendation rests on.
SELECT setting, current_value, recommended, needs_restart, based_on FROM ws.wal_report();
SELECT statement FROM ws.tune_wal();

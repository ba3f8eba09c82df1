# INSERT ... ON CONFLICT into a distributed table, on real clusters: a
# coordinator (with write_scaling) and two plain PostgreSQL shards on
# loopback.  Each row must reach its key's slot table with its clause: DO
# NOTHING skips a stored key, DO UPDATE updates the stored row, and the row
# count and RETURNING are those of a table.  The clause's values that do not
# read the row (parameters, PL/pgSQL variables, now(), the user's
# functions) are computed on the coordinator; what the shards cannot run is
# refused before anything is written.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use ShardTest;

my $vnodes = 16;

my ($coord, $shards) = start_shards([qw(s1 s2)]);
my %shard = %$shards;

$coord->safe_psql('postgres', qq{
	SELECT ws.create_shard_map('m', vnodes => $vnodes);
	SELECT ws.add_shard('m', 's1');
	SELECT ws.add_shard('m', 's2');
	CREATE TABLE counters (
		id bigint PRIMARY KEY,
		name text NOT NULL,
		hits int NOT NULL DEFAULT 1,
		seen timestamptz NOT NULL DEFAULT '2000-01-01');
	SELECT ws.distribute_table('counters', 'id', 'm');
});

# stored ID: "name hits" of the row in its key's slot table on the shard
# that holds the slot, or "none"; dies if the row is anywhere else.
sub stored
{
	my ($id) = @_;
	my ($server, $slot) = split /\|/,
	  $coord->safe_psql('postgres', "SELECT ws.shard_for('m', '$id'), ws.key_slot('$id', $vnodes)");
	my $table = sprintf('counters_s%03d', $slot);
	my $where = '';
	for my $name (sort keys %shard)
	{
		my $elsewhere = $shard{$name}->safe_psql('postgres',
			"SELECT count(*) FROM counters_shard WHERE id = $id"
			  . ($name eq $server ? " AND tableoid <> '$table'::regclass" : ''));
		die "row $id is on $name outside $table" if $elsewhere ne '0';
	}
	my $row = $shard{$server}->safe_psql('postgres', "SELECT name || ' ' || hits FROM $table WHERE id = $id");
	return $row eq '' ? 'none' : $row;
}

# Two keys on each shard, to see both sides.
my %on;
for my $id (1 .. 50)
{
	my $server = $coord->safe_psql('postgres', "SELECT ws.shard_for('m', '$id')");
	push @{ $on{$server} }, $id if @{ $on{$server} || [] } < 2;
}
my ($a1, $a2) = @{ $on{s1} };
my ($b1, $b2) = @{ $on{s2} };

# --- DO NOTHING -------------------------------------------------------------

is($coord->safe_psql('postgres', qq{
	INSERT INTO counters (id, name) VALUES ($a1, 'first') ON CONFLICT DO NOTHING RETURNING id, name}),
	"$a1|first", 'DO NOTHING inserts a new key and returns it');
is($coord->safe_psql('postgres', qq{
	WITH i AS (INSERT INTO counters (id, name) VALUES ($a1, 'second') ON CONFLICT (id) DO NOTHING RETURNING id)
	SELECT count(*) FROM i}),
	'0', 'a stored key is skipped: no row returned');
is(stored($a1), 'first 1', 'the stored row is unchanged');
my ($ret, $out, $err) = $coord->psql('postgres', qq{
	INSERT INTO counters (id, name) VALUES ($a1, 'x'), ($a2, 'x'), ($b1, 'x') ON CONFLICT DO NOTHING});
is($out, '', 'no output');
like($err, qr/^$/, 'no error');
is($coord->safe_psql('postgres', qq{
	WITH i AS (INSERT INTO counters (id, name) VALUES ($a1, 'y'), ($a2, 'y'), ($b1, 'y'), ($b2, 'y')
			   ON CONFLICT DO NOTHING RETURNING id)
	SELECT string_agg(id::text, ',' ORDER BY id) FROM i}),
	join(',', sort { $a <=> $b } $b2), 'a multi-row INSERT returns only the rows it inserted, on both shards');
is(join(' / ', map { stored($_) } $a1, $a2, $b1, $b2), 'first 1 / x 1 / x 1 / y 1',
	'every row on its own slot table, inserted once');

# The command tag counts the rows inserted, as on a table.
my $stored_of_20 = grep { $_ <= 20 } $a1, $a2, $b1, $b2;
is($coord->safe_psql('postgres', qq{
	INSERT INTO counters (id, name) SELECT i, 'z' FROM generate_series(1, 20) i ON CONFLICT DO NOTHING;
	\\echo :ROW_COUNT}),
	20 - $stored_of_20, 'the command tag counts the new keys of an INSERT ... SELECT');

# --- DO UPDATE ----------------------------------------------------------------

is($coord->safe_psql('postgres', qq{
	INSERT INTO counters (id, name) VALUES ($a1, 'renamed')
	ON CONFLICT (id) DO UPDATE SET hits = counters.hits + excluded.hits, name = excluded.name
	RETURNING name, hits}),
	'renamed|2', 'DO UPDATE returns the row as the shard updated it');
is($coord->safe_psql('postgres', qq{
	INSERT INTO counters AS c (id, name, hits) VALUES ($a1, 'a', 5), ($b1, 'b', 7), (1001, 'new', 3)
	ON CONFLICT (id) DO UPDATE SET hits = c.hits + excluded.hits WHERE c.name <> 'x'
	RETURNING id, hits}),
	"$a1|7\n1001|3", 'an alias, and a WHERE that skips a row: the updated and the inserted rows come back');
is(join(' / ', map { stored($_) } $a1, $b1, 1001), 'renamed 7 / x 1 / new 3', 'as stored on the shards');
is($coord->safe_psql('postgres', qq{
	INSERT INTO counters (id, name) VALUES ($b1, 'c')
	ON CONFLICT (id) DO UPDATE SET name = CASE excluded.name WHEN 'c' THEN 'case' ELSE 'other' END,
		hits = greatest(counters.hits, 40) - coalesce(NULL, 1)
	RETURNING name, hits}),
	'case|39', 'CASE, greatest and coalesce run on the shard');

# Values that do not read the row are computed here: a parameter of a
# generic plan, a PL/pgSQL variable, now(), a function of the user's.
is($coord->safe_psql('postgres', qq{
	SET plan_cache_mode = force_generic_plan;
	PREPARE bump(int, text) AS INSERT INTO counters (id, name) VALUES ($a2, \$2)
		ON CONFLICT (id) DO UPDATE SET hits = counters.hits + \$1, name = \$2 || '!' RETURNING hits, name;
	EXECUTE bump(10, 'p');
	EXECUTE bump(100, 'q');}),
	"11|p!\n111|q!", 'parameters of a generic plan');
is($coord->safe_psql('postgres', qq{
	CREATE FUNCTION add_hits(n int) RETURNS int LANGUAGE plpgsql AS \$\$
	DECLARE
		result int;
	BEGIN
		FOR i IN 1 .. 3 LOOP
			INSERT INTO counters (id, name) VALUES ($b2, 'v')
			ON CONFLICT (id) DO UPDATE SET hits = counters.hits + n * i RETURNING hits INTO result;
		END LOOP;
		RETURN result;
	END \$\$;
	SELECT add_hits(1000);}),
	'6001', 'PL/pgSQL variables, one plan run three times');
is($coord->safe_psql('postgres', qq{
	CREATE FUNCTION label(text) RETURNS text LANGUAGE sql STABLE AS \$\$ SELECT 'label ' || \$1 \$\$;
	BEGIN;
	INSERT INTO counters (id, name) VALUES ($a2, 'n') ON CONFLICT (id) DO UPDATE SET seen = now(), name = label('n');
	SELECT seen = now(), name FROM counters WHERE id = $a2;
	COMMIT;}),
	't|label n', "now() and the user's function, computed on the coordinator");
is($coord->safe_psql('postgres', qq{
	SET datestyle = 'SQL, DMY';
	INSERT INTO counters (id, name, seen) VALUES ($a2, 'd', '2026-03-04') ON CONFLICT (id) DO UPDATE SET seen = '2026-05-06'::timestamptz;
	SET datestyle = ISO;
	SELECT seen::date FROM counters WHERE id = $a2}),
	'2026-05-06', 'a date written under DateStyle SQL, DMY arrives as it was meant');

# A data-modifying CTE; a rollback; a savepoint.
is($coord->safe_psql('postgres', qq{
	WITH up AS (INSERT INTO counters (id, name) VALUES ($b1, 'cte'), (2001, 'cte')
				ON CONFLICT (id) DO UPDATE SET name = excluded.name RETURNING id)
	SELECT count(*) FROM up}),
	'2', 'in a WITH clause');
$coord->safe_psql('postgres', qq{
	BEGIN;
	INSERT INTO counters (id, name) VALUES ($b1, 'gone') ON CONFLICT (id) DO UPDATE SET name = excluded.name;
	INSERT INTO counters (id, name) VALUES (3001, 'gone') ON CONFLICT DO NOTHING;
	ROLLBACK;});
is(stored($b1) . ' / ' . stored(3001), 'cte 39 / none', 'a rollback takes the upserts back on the shards');
is($coord->safe_psql('postgres', qq{
	BEGIN;
	INSERT INTO counters (id, name) VALUES ($b1, 'kept') ON CONFLICT (id) DO UPDATE SET name = excluded.name;
	SAVEPOINT s;
	INSERT INTO counters (id, name) VALUES ($b1, 'undone') ON CONFLICT (id) DO UPDATE SET name = excluded.name;
	ROLLBACK TO s;
	SELECT name FROM counters WHERE id = $b1;
	COMMIT;}),
	'kept', 'a savepoint rolls back the upsert after it, and the transaction reads its own');

($ret, $out, $err) = $coord->psql('postgres', q{
	\set VERBOSITY verbose
	SELECT ws._on_conflict(' ON CONFLICT DO NOTHING');});
like($err, qr/0A000: ws\._on_conflict\(\) only marks an INSERT into a distributed table/,
	'the marker of a planned upsert cannot be called');
like($coord->safe_psql('postgres', qq{
	EXPLAIN (VERBOSE, COSTS OFF) INSERT INTO counters (id, name) VALUES (1, 'e')
	ON CONFLICT (id) DO UPDATE SET hits = counters.hits + 1, seen = now()}),
	qr/Conflict Filter: ws\._on_conflict\(' ON CONFLICT\(id\) DO UPDATE SET hits = \(ws_target\.hits \+ 1\), seen = \(\$5\)::timestamp with time zone'::text, now\(\)\)/,
	'EXPLAIN shows what the shards run, and the value computed here');

# Rows read from distributed tables while they are upserted: the reads'
# connections to the shards are the writes', with fetches in flight.
$coord->safe_psql('postgres', q{
	CREATE TABLE sources (id bigint PRIMARY KEY, name text);
	SELECT ws.distribute_table('sources', 'id', 'm');
	INSERT INTO sources SELECT i, 'source ' || i FROM generate_series(1, 3000) i;});
my $stored_of_3000 = $coord->safe_psql('postgres', 'SELECT count(*) FROM counters WHERE id <= 3000');
is($coord->safe_psql('postgres', q{
	WITH up AS (INSERT INTO counters (id, name) SELECT id, name FROM sources
				ON CONFLICT (id) DO UPDATE SET hits = counters.hits + 1 RETURNING hits)
	SELECT count(*), count(*) FILTER (WHERE hits > 1) FROM up}),
	"3000|$stored_of_3000",
	'INSERT ... SELECT from another distributed table: 3000 rows upserted, the stored ones updated');
is($coord->safe_psql('postgres', q{
	WITH up AS (INSERT INTO counters (id, name) SELECT id, name FROM counters WHERE id <= 3000
				ON CONFLICT (id) DO UPDATE SET hits = counters.hits + 1 RETURNING 1)
	SELECT count(*) FROM up}),
	'3000', 'INSERT ... SELECT from the table itself');
is($coord->safe_psql('postgres', q{
	INSERT INTO sources SELECT id + 10000, name FROM sources;
	SELECT count(*) FROM sources}),
	'6000', 'and a plain INSERT ... SELECT of 3000 rows from the table itself (buffers sent while reading)');

# Strings reach the shard as written, whatever standard_conforming_strings.
is($coord->safe_psql('postgres', qq{
	SET standard_conforming_strings = off;
	INSERT INTO counters (id, name) VALUES (1001, 'x') ON CONFLICT (id) DO UPDATE SET name = 'back\\\\slash';
	SET standard_conforming_strings = on;
	SELECT name FROM counters WHERE id = 1001}),
	'back\\slash', 'a backslash in a string, under standard_conforming_strings = off');

# A value computed here keeps its collation.
like($coord->safe_psql('postgres', q{
	PREPARE collated(text) AS INSERT INTO counters (id, name) VALUES (1001, 'x')
	ON CONFLICT (id) DO UPDATE SET hits = 0 WHERE counters.name < ($1 COLLATE "C");
	EXPLAIN (VERBOSE, COSTS OFF) EXECUTE collated('B');}),
	qr/WHERE \(ws_target\.name < \(\(\$5\)::text COLLATE "C"\)\)/, 'a parameter keeps its COLLATE');

# A plan made once calls the function of the user's as it stands now.
is($coord->safe_psql('postgres', q{
	CREATE FUNCTION bonus() RETURNS int LANGUAGE sql STABLE AS 'SELECT 10';
	CREATE FUNCTION folded() RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 100';
	SET plan_cache_mode = force_generic_plan;
	PREPARE with_bonus AS INSERT INTO counters (id, name) VALUES (1001, 'x')
	ON CONFLICT (id) DO UPDATE SET hits = bonus() + folded() RETURNING hits;
	EXECUTE with_bonus;
	DROP FUNCTION bonus();
	CREATE FUNCTION bonus() RETURNS int LANGUAGE sql STABLE AS 'SELECT 20';
	CREATE OR REPLACE FUNCTION folded() RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 200';
	EXECUTE with_bonus;}),
	"110\n220", 'a prepared upsert follows a function dropped and made again, and one replaced');

# Rows a COPY of ws.copy_rows inserts while an upsert runs are its own: no
# ON CONFLICT for them (row 1001 is stored: the COPY fails).
my ($copy_ret, $copy_out, $copy_err) = $coord->psql('postgres', q{
	\set VERBOSITY verbose
	INSERT INTO counters (id, name)
	SELECT 1002, 'a' FROM (SELECT ws.copy_rows('counters', ARRAY[ROW(1001, 'copied', 1, '2000-01-01')::counters])) s
	ON CONFLICT (id) DO UPDATE SET name = 'clobbered';});
like($copy_err, qr/23505: could not write 1 row of "counters" .*duplicate key/s,
	'a COPY inside an upsert inserts, and fails on a stored key');
is(stored(1001), 'back\\slash 220', 'and the stored row is untouched');

# --- refused, with nothing written ---------------------------------------------

my $before = join(' / ', map { stored($_) } $a1, $a2, $b1, $b2);
for my $case (
	[ "ON CONFLICT (id) DO UPDATE SET id = excluded.id + 1", '0A000', qr/cannot update the shard key "id" of distributed table "counters"/ ],
	[ "ON CONFLICT (id) DO UPDATE SET hits = (random() * 10)::int", '0A000', qr/cannot be sent to its shards.*volatile function/s ],
	[ "ON CONFLICT (id) DO UPDATE SET name = (SELECT 'sub')", '0A000', qr/cannot be sent to its shards.*subquery/s ],
	[ "ON CONFLICT (id) DO UPDATE SET name = label(excluded.name)", '0A000', qr/cannot be sent to its shards.*not built in or not immutable/s ],
	[ "ON CONFLICT (id) DO UPDATE SET name = excluded.name || excluded.seen", '0A000', qr/cannot be sent to its shards.*not built in or not immutable/s ],
	[ "ON CONFLICT (name) DO NOTHING", '42P10', qr/could not write \d+ rows? of "counters" to shard server "s\d": there is no unique or exclusion constraint matching the ON CONFLICT specification/ ],
	[ "ON CONFLICT ON CONSTRAINT counters_pkey DO NOTHING", '42704', qr/constraint "counters_pkey" for table "counters" does not exist/ ])
{
	my ($clause, $state, $message) = @$case;
	($ret, $out, $err) = $coord->psql('postgres', qq{
		\\set VERBOSITY verbose
		INSERT INTO counters (id, name) VALUES ($a1, 'no'), ($a2, 'no'), ($b1, 'no'), ($b2, 'no') $clause});
	like($err, qr/$state: .*$message/s, "$state: $clause");
}
($ret, $out, $err) = $coord->psql('postgres', qq{
	\\set VERBOSITY verbose
	WITH a AS (INSERT INTO counters (id, name) VALUES ($a1, 'no') ON CONFLICT DO NOTHING RETURNING id)
	INSERT INTO counters (id, name) VALUES ($a2, 'no')});
like($err, qr/0A000: INSERT \.\.\. ON CONFLICT into distributed table "counters" must be the statement's only INSERT into it.*DETAIL:  The table's trigger cannot tell which INSERT/s,
	'two INSERTs into the table in one statement, one with ON CONFLICT: refused');
is(join(' / ', map { stored($_) } $a1, $a2, $b1, $b2), $before, 'nothing was written by the refused statements');

# --- two sessions, one key ------------------------------------------------------
# The shard decides: a second session's upsert of a key that a first one
# holds waits for it.  Then it depends on where the second row went.  The
# single row of an autocommit INSERT goes alone, on a connection of the
# coordinator's own, at the shard's READ COMMITTED: it skips (or updates)
# the row the first session committed, as on a table.  Any other row goes
# in postgres_fdw's remote transaction, REPEATABLE READ: it fails with a
# serialization failure (40001), since its snapshot does not see the row;
# run again, it skips it.

my $server_of = sub { $coord->safe_psql('postgres', "SELECT ws.shard_for('m', '$_[0]')") };
for my $case (
	[ 4001, 'alone', q{INSERT INTO counters (id, name) VALUES (4001, 'second') ON CONFLICT DO NOTHING},
	  qr/^$/, "= 'write_scaling'" ],
	[ 4002, 'in a transaction block', q{BEGIN; INSERT INTO counters (id, name) VALUES (4002, 'second') ON CONFLICT DO NOTHING; COMMIT},
	  qr/40001: could not write 1 row of "counters" to shard server "s\d": could not serialize access/, "<> 'write_scaling'" ])
{
	my ($id, $how, $sql, $error, $application) = @$case;
	my $first = $coord->background_psql('postgres');
	$first->query_safe(q{BEGIN});
	$first->query_safe(qq{INSERT INTO counters (id, name) VALUES ($id, 'first') ON CONFLICT DO NOTHING});
	my $second = $coord->background_psql('postgres', on_error_stop => 0);
	$second->query_safe(q{\set VERBOSITY verbose});
	$second->query_until(qr/started/, "\\echo started\n$sql;\n\\echo done\n");
	ok($shard{ $server_of->($id) }->poll_query_until('postgres', qq{
		SELECT count(*) > 0 FROM pg_stat_activity
		WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO %ON CONFLICT%' AND application_name $application}),
		"$how: the second session's upsert waits on the shard for the first");
	$first->query_safe(q{COMMIT});
	$first->quit;
	like($second->query_until(qr/done/, ''), qr/done/, "$how: the second session goes on once the first commits");
	like($second->{stderr}, $error, $how eq 'alone' ? "$how: it skips the row, without an error"
		: "$how: with a serialization failure (40001), its snapshot not seeing the row");
	$second->quit;
	is($coord->safe_psql('postgres', qq{
		BEGIN;
		WITH i AS (INSERT INTO counters (id, name) VALUES ($id, 'second') ON CONFLICT DO NOTHING RETURNING id)
		SELECT count(*) FROM i;
		COMMIT;}), '0', "$how: run again, it skips the stored row");
	is(stored($id), 'first 1', "$how: one row, the first session's");
}

# In a pipeline, Execute messages before the Sync share one transaction: a
# single-row upsert that is not the last does not go alone, and a later
# error takes it back.
$coord->safe_psql('postgres', q{INSERT INTO counters (id, name) VALUES (4501, 'piped')});
$coord->pgbench('-n -M extended -t 1', 2, [qr/actually processed: 0\/1/], [qr/division by zero/],
	'an upsert in a pipeline, then an error', {
		'pipeline' => "\\startpipeline\nINSERT INTO counters (id, name) VALUES (4501, 'piped') ON CONFLICT (id) DO UPDATE SET hits = counters.hits + 100;\nSELECT 1/0;\n\\endpipeline\n" },
	'postgres');
is(stored(4501), 'piped 1', 'the pipeline\'s error takes its upsert back');
$coord->pgbench('-n -M prepared -t 2', 0, [qr/actually processed: 2\/2/], [qr/^$/],
	'a prepared single-row upsert, each Execute followed by a Sync', {
		'upsert' => "INSERT INTO counters (id, name) VALUES (4501, 'piped') ON CONFLICT (id) DO UPDATE SET hits = counters.hits + 100 RETURNING hits;\n" },
	'postgres');
is(stored(4501), 'piped 201', 'goes alone and is kept');

# A trigger of the user's on the table could still fail the statement after
# the shard answered: with one, a single-row upsert does not go alone.
$coord->safe_psql('postgres', q{
	CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$;
	CREATE TRIGGER refuse AFTER INSERT ON counters FOR EACH STATEMENT EXECUTE FUNCTION refuse();});
my ($rc, $out, $err) = $coord->psql('postgres',
	q{INSERT INTO counters (id, name) VALUES (4501, 'piped') ON CONFLICT (id) DO UPDATE SET hits = counters.hits + 1000});
like($err, qr/refused/, 'a trigger of the user\'s fails the upsert');
is(stored(4501), 'piped 201', 'and the shard did not keep it');
$coord->safe_psql('postgres', q{DROP TRIGGER refuse ON counters});

# Nor does one whose statement still runs something after it: a WITH
# clause's INSERT into a local table, which fails a check.
$coord->safe_psql('postgres', q{CREATE TABLE local_log (n int CHECK (n > 0))});
($rc, $out, $err) = $coord->psql('postgres', q{
	WITH logged AS (INSERT INTO local_log VALUES (-1))
	INSERT INTO counters (id, name) VALUES (4601, 'cte') ON CONFLICT (id) DO UPDATE SET hits = counters.hits + 1});
like($err, qr/violates check constraint "local_log_n_check"/, 'a WITH clause\'s INSERT fails the upsert after it');
is(stored(4601), 'none', 'and the shard did not keep it');

# Each upsert whose clause has other constants is a statement of its own
# on the shard: past 1,000 of them, the connection starts afresh.
$coord->safe_psql('postgres', join('', map {
	"INSERT INTO counters (id, name) VALUES (4502, 'many') ON CONFLICT (id) DO UPDATE SET hits = counters.hits + $_;\n" } 1 .. 1100));
is(stored(4502), 'many ' . (1 + (1100 * 1101) / 2 - 1), '1,100 upserts, each with other constants, all kept');

# Counting from four sessions at once, each statement its own transaction:
# no increment lost, none failed.  A fifth session holds the key until all
# four wait for it, so that they start together.
four_sessions_at_once($coord, $shard{ $server_of->(5001) },
	q{INSERT INTO counters (id, name) VALUES (5001, 'count') ON CONFLICT (id) DO UPDATE SET hits = counters.hits + 1;},
	50, 'counting by upsert');
is(stored(5001), 'count 201', 'one upsert and four sessions of 50 on one key: 201');

# --- many rows, no RETURNING ----------------------------------------------------
# Such an INSERT keeps its rows until it ends (or until 8MB wait), then
# sends each slot's rows as one statement, each server's statements in one
# pipeline; the command tag then leaves out what the shards skipped.

$coord->safe_psql('postgres', q{
	CREATE TABLE tallies (id bigint PRIMARY KEY, n int NOT NULL CHECK (n >= 0));
	SELECT ws.distribute_table('tallies', 'id', 'm');
	INSERT INTO tallies SELECT i, 1 FROM generate_series(1, 100) i;});
is($coord->safe_psql('postgres', q{
	INSERT INTO tallies SELECT i, 1 FROM generate_series(51, 350) i ON CONFLICT DO NOTHING;
	\echo :ROW_COUNT
	INSERT INTO tallies SELECT i, 5 FROM generate_series(1, 400) i
	ON CONFLICT (id) DO UPDATE SET n = tallies.n + excluded.n WHERE tallies.id % 2 = 0;
	\echo :ROW_COUNT
	SELECT count(*), sum(n) FROM tallies;}),
	"250\n225\n400|1475",
	'batches: 250 new of 300, then 175 even keys updated and 50 inserted of 400');
is($coord->safe_psql('postgres', q{
	DO $$
	DECLARE
		counted bigint;
	BEGIN
		INSERT INTO tallies SELECT i, 0 FROM generate_series(391, 410) i ON CONFLICT DO NOTHING;
		GET DIAGNOSTICS counted = ROW_COUNT;
		RAISE NOTICE 'counted %', counted;
	END $$;
	SELECT count(*) FROM tallies;}),
	'410', 'in PL/pgSQL too');
like(($coord->psql('postgres', q{DO $$ DECLARE c bigint; BEGIN
	INSERT INTO tallies SELECT i, 0 FROM generate_series(401, 420) i ON CONFLICT DO NOTHING;
	GET DIAGNOSTICS c = ROW_COUNT; RAISE NOTICE 'counted %', c; END $$;}))[2],
	qr/counted 10/, 'GET DIAGNOSTICS counts the rows stored, not those skipped');
my $tallies_before = $coord->safe_psql('postgres', 'SELECT count(*) || \' \' || sum(n) FROM tallies');
($ret, $out, $err) = $coord->psql('postgres', q{
	\set VERBOSITY verbose
	INSERT INTO tallies SELECT i, CASE WHEN i = 333 THEN -1 ELSE 1 END FROM generate_series(300, 500) i
	ON CONFLICT (id) DO UPDATE SET n = excluded.n;});
like($err, qr/23514: could not write \d+ rows of "tallies" to shard server "s\d": new row for relation "tallies_s\d+" violates check constraint/,
	'a row of a batch that breaks a check fails the statement, naming the shard');
is($coord->safe_psql('postgres', 'SELECT count(*) || \' \' || sum(n) FROM tallies'), $tallies_before,
	'and nothing of it stays, on either shard');
my $routed_before = $coord->safe_psql('postgres', 'SELECT sum(rows_routed) FROM ws.stat_shards');
is($coord->safe_psql('postgres', q{
	INSERT INTO tallies SELECT i, 2 FROM generate_series(300, 500) i ON CONFLICT (id) DO UPDATE SET n = excluded.n;
	\echo :ROW_COUNT}), '201', 'the connections serve the next batches');
is($coord->safe_psql('postgres', 'SELECT sum(rows_routed) FROM ws.stat_shards') - $routed_before, 201,
	'ws.stat_shards counts the rows of the batches');
is($coord->safe_psql('postgres', q{
	CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL);
	SELECT ws.distribute_table('notes', 'id', 'm');
	INSERT INTO notes SELECT i, repeat('x', 20000) FROM generate_series(1, 60) i ON CONFLICT DO NOTHING;
	INSERT INTO notes SELECT i, repeat('y', 20000) || i FROM generate_series(1, 60) i
	ON CONFLICT (id) DO UPDATE SET body = excluded.body;
	SELECT count(*), sum(length(body)), count(*) FILTER (WHERE body = repeat('y', 20000) || id) FROM notes;}),
	"\n60|1200111|60", 'wide rows');

# Past 8MB waiting, the rows go before the statement ends: a key given
# again after that is a second statement's, and updates the stored row
# instead of failing.
is($coord->safe_psql('postgres', q{
	INSERT INTO notes SELECT i, repeat('z', 100000) FROM generate_series(1, 100) i
	UNION ALL SELECT 1, 'last'
	ON CONFLICT (id) DO UPDATE SET body = excluded.body;
	\echo :ROW_COUNT
	SELECT count(*), sum(length(body)) FROM notes;
	SELECT body FROM notes WHERE id = 1;}),
	"101\n100|9900004\nlast", 'past 8MB, the rows go in two rounds');

# A slot's rows are one statement on its shard, which checks them against
# each other as PostgreSQL does.
my $first_tallies = $coord->safe_psql('postgres', 'SELECT count(*) || \' \' || sum(n) FROM tallies WHERE id <= 20');
($ret, $out, $err) = $coord->psql('postgres', q{
	\set VERBOSITY verbose
	INSERT INTO tallies SELECT i % 20 + 1, 7 FROM generate_series(1, 40) i
	ON CONFLICT (id) DO UPDATE SET n = tallies.n + excluded.n;});
like($err, qr/21000: could not write \d+ rows of "tallies" to shard server "s\d": ON CONFLICT DO UPDATE command cannot affect row a second time.*HINT:  Ensure that no rows proposed for insertion/s,
	'DO UPDATE of one key twice in a statement fails, as on a table');
is($coord->safe_psql('postgres', 'SELECT count(*) || \' \' || sum(n) FROM tallies WHERE id <= 20'), $first_tallies,
	'and nothing of it stays');
is($coord->safe_psql('postgres', q{
	INSERT INTO tallies SELECT i % 20 + 1001, i FROM generate_series(1, 40) i ON CONFLICT DO NOTHING;
	\echo :ROW_COUNT
	SELECT count(*), sum(n) FROM tallies WHERE id > 1000}),
	"20\n20|210", 'DO NOTHING keeps the first row of each key (n 1 to 20) and counts it once');

# Each column's values travel as an array of the column's base type (an
# array column's as a text[], each value cast back): values that array
# syntax would read otherwise arrive as written, a box array keeps its
# semicolons, a domain and char(n) hold, and a regclass of 0, which the
# cast from text would refuse, goes through its input function.
$_->safe_psql('postgres', q{CREATE DOMAIN positive AS int CHECK (VALUE > 0)}) for values %shard;
$coord->safe_psql('postgres', q{
	CREATE DOMAIN positive AS int CHECK (VALUE > 0);
	CREATE TABLE shapes (id int PRIMARY KEY, label text, code varchar(4), pad char(3), n positive,
						 tags text[], boxes box[], doc jsonb, rel regclass, at box);
	SELECT ws.distribute_table('shapes', 'id', 'm');});
is($coord->safe_psql('postgres', q{
	INSERT INTO shapes VALUES
		(1, 'a"b\c', 'ab', 'x', 1, ARRAY['x y', NULL, '', 'NULL', '{}'], ARRAY['((1,1),(0,0))'::box, '((3,3),(2,2))'], '{"k": ["v", 1]}', 'pg_class', '((1,1),(0,0))'),
		(2, '', NULL, NULL, NULL, '{}', NULL, NULL, 0, NULL),
		(3, 'NULL', ' a ', 'yy', 2, NULL, '{}', 'null', NULL, '((2,2),(1,1))'),
		(4, NULL, '{,}', ' ', 3, ARRAY[NULL]::text[], NULL, '"s"', NULL, NULL),
		(5, 'x\"y', '\\', NULL, NULL, ARRAY['\"'], NULL, NULL, NULL, NULL)
	ON CONFLICT DO NOTHING;
	\echo :ROW_COUNT
	SELECT id, coalesce(label, '<null>'), length(label), code, octet_length(pad), n, tags, array_length(tags, 1), boxes, doc,
		   rel, rel::oid, at
	FROM shapes ORDER BY id}),
	qq{5
1|a"b\\c|5|ab|3|1|{"x y",NULL,"","NULL","{}"}|5|{(1,1),(0,0);(3,3),(2,2)}|{"k": ["v", 1]}|pg_class|1259|(1,1),(0,0)
2||0||||{}||||-|0|
3|NULL|4| a |3|2|||{}|null|||(2,2),(1,1)
4|<null>||{,}|3|3|{NULL}|1||"s"|||
5|x\\"y|4|\\|||{"\\\\\\""}|1|||||},
	'quotes, backslashes, braces, commas, the empty string, the word NULL, arrays with NULLs, boxes, json, regclass 0');
my $shapes = $coord->safe_psql('postgres', 'SELECT count(*), md5(string_agg(shapes::text, \',\' ORDER BY id)) FROM shapes');
($ret, $out, $err) = $coord->psql('postgres', q{
	\set VERBOSITY verbose
	INSERT INTO shapes (id, code) VALUES (10, 'ok'), (1, 'ok')
	ON CONFLICT (id) DO UPDATE SET code = excluded.code || '-too-long';});
like($err, qr/22001: could not write \d+ rows? of "shapes" to shard server "s\d": value too long for type character varying\(4\)/,
	'a DO UPDATE that makes a value too long for its column fails on the shard');
is($coord->safe_psql('postgres', 'SELECT count(*), md5(string_agg(shapes::text, \',\' ORDER BY id)) FROM shapes'), $shapes,
	'and nothing of it stays');

# --- values that name objects -----------------------------------------------------
# A regclass or regtype column's text names its object as this session's
# search_path shows it; a shard looks names up with postgres_fdw's,
# pg_catalog alone.  Routed rows are written with pg_catalog alone too, so
# that the text names the schema.
$_->safe_psql('postgres', q{CREATE TABLE lookup (id int)}) for ($coord, values %shard);
$coord->safe_psql('postgres', q{
	CREATE TABLE refs (id int PRIMARY KEY, rel regclass, typ regtype);
	SELECT ws.distribute_table('refs', 'id', 'm');});
is($coord->safe_psql('postgres', q{
	INSERT INTO refs VALUES (1, 'lookup', 'lookup');
	INSERT INTO refs VALUES (2, 'lookup', 'lookup'), (3, 'pg_class', 'int4');
	INSERT INTO refs SELECT i, 'lookup', 'lookup[]' FROM generate_series(4, 40) i ON CONFLICT DO NOTHING;
	SELECT count(*), count(*) FILTER (WHERE rel = 'lookup'::regclass), count(*) FILTER (WHERE typ = 'lookup[]'::regtype)
	FROM refs;}),
	'40|39|37', 'a regclass of public.lookup, one row, rows, upserted: read back as public.lookup');
is(join(',', map { $_->safe_psql('postgres', q{SELECT string_agg(DISTINCT rel::oid::text, ',') FROM refs_shard WHERE id <> 3}) }
		values %shard),
	join(',', map { $_->safe_psql('postgres', q{SELECT 'lookup'::regclass::oid}) } values %shard),
	'on each shard, the OID of its own public.lookup');

# --- the table changes, a shard stops -------------------------------------------

# A prepared upsert is planned again after a column is added.
is($coord->safe_psql('postgres', q{
	SET plan_cache_mode = force_generic_plan;
	PREPARE up(bigint) AS INSERT INTO counters (id, name) VALUES ($1, 'added')
	ON CONFLICT (id) DO UPDATE SET hits = counters.hits + 1 RETURNING hits;
	EXECUTE up(6001);
	ALTER TABLE counters ADD COLUMN note text NOT NULL DEFAULT 'none';
	EXECUTE up(6001);
	INSERT INTO counters (id, name, note) VALUES (6001, 'x', 'new note')
	ON CONFLICT (id) DO UPDATE SET note = excluded.note || ' and ' || counters.note RETURNING hits, note;}),
	"1\n2\n2|new note and none", 'an added column: the prepared upsert is planned again, and the new column takes part');

# A text key, with a collation of its own.
$coord->safe_psql('postgres', q{
	CREATE TABLE by_code (code text COLLATE "C" PRIMARY KEY, n int NOT NULL);
	SELECT ws.distribute_table('by_code', 'code', 'm');});
is($coord->safe_psql('postgres', q{
	INSERT INTO by_code VALUES ('a', 1), ('B', 1) ON CONFLICT (code) DO UPDATE SET n = by_code.n + 1;
	INSERT INTO by_code VALUES ('a', 1), ('b', 1) ON CONFLICT (code) DO UPDATE SET n = by_code.n + 1;
	SELECT string_agg(code || '=' || n, ',' ORDER BY code) FROM by_code;}),
	'B=1,a=2,b=1', 'a text key in collation "C"');

# A stopped shard fails the upserts routed to it, naming it; the other
# shard's go on.
my $b1_before = stored($b1);
$shard{s2}->stop;
($ret, $out, $err) = $coord->psql('postgres', qq{
	\\set VERBOSITY verbose
	INSERT INTO counters (id, name) VALUES ($b1, 'down') ON CONFLICT (id) DO UPDATE SET name = excluded.name});
like($err, qr/08001: could not connect to server "s2"|could not write 1 row of "counters" to shard server "s2"/,
	'an upsert to a stopped shard fails, naming it');
is($coord->safe_psql('postgres', qq{
	INSERT INTO counters (id, name) VALUES ($a1, 'up') ON CONFLICT (id) DO UPDATE SET name = excluded.name RETURNING name}),
	'up', 'an upsert to the other shard goes on');
$shard{s2}->start;
is(stored($b1), $b1_before, 'the stopped shard\'s row is as it was');

done_testing();

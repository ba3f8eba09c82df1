# UPDATE and DELETE of a distributed table whose WHERE clause fixes the key,
# on real clusters: a coordinator (with write_scaling) and two plain
# PostgreSQL shards on loopback.  The only statement of an autocommit
# transaction runs alone, on a connection of the coordinator's own, at the
# shard's READ COMMITTED: sessions that update one row wait for each other
# instead of failing.  Anything else runs in postgres_fdw's remote
# transaction, as before: a rollback, or an error later in the
# transaction, takes the change back.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use ShardTest;

my $vnodes = 16;

# Each statement the shards run is logged with its application_name:
# write_scaling for the coordinator's own connections, postgres_fdw for
# postgres_fdw's.
my ($coord, $shards) = start_shards([qw(s1 s2)], "log_statement = 'all'");
my %shard = %$shards;

$coord->safe_psql('postgres', qq{
	SELECT ws.create_shard_map('m', vnodes => $vnodes);
	SELECT ws.add_shard('m', 's1');
	SELECT ws.add_shard('m', 's2');
	CREATE TABLE accounts (
		id bigint PRIMARY KEY,
		owner text NOT NULL,
		balance int NOT NULL CHECK (balance >= 0));
	SELECT ws.distribute_table('accounts', 'id', 'm');
	INSERT INTO accounts SELECT i, 'o' || i, 100 FROM generate_series(1, 40) i;
});

my $server_of = sub { $coord->safe_psql('postgres', "SELECT ws.shard_for('m', '$_[0]')") };

# stored ID: "owner balance" of the row on the shard that holds its key, or
# "none".
sub stored
{
	my ($id) = @_;
	my $row = $shard{ $server_of->($id) }->safe_psql('postgres',
		"SELECT owner || ' ' || balance FROM accounts_shard WHERE id = $id");
	return $row eq '' ? 'none' : $row;
}

# on_shard ID, SQL: runs SQL on the shard of key ID.
sub on_shard { my ($id, $sql) = @_; return $shard{ $server_of->($id) }->safe_psql('postgres', $sql) }

# logged_by ID, CODE: runs CODE and returns what the shard of key ID logged
# meanwhile.
sub logged_by
{
	my ($id, $code) = @_;
	my $node = $shard{ $server_of->($id) };
	my $offset = -s $node->logfile;
	$code->();
	return PostgreSQL::Test::Utils::slurp_file($node->logfile, $offset);
}

# --- the plan ----------------------------------------------------------------------
like($coord->safe_psql('postgres', q{EXPLAIN (VERBOSE, COSTS OFF) UPDATE accounts SET balance = balance + 1 WHERE id = 7}),
	qr/Custom Scan \(ShardModify\) on ws_dist\.accounts_s\d+.*\n.*\n\s+Remote SQL: UPDATE public\.accounts_s\d+ SET balance = \(balance \+ 1\) WHERE \(\(id = 7\)\)/,
	'an UPDATE by key gets the node, which shows the statement for the shard');
like($coord->safe_psql('postgres', q{EXPLAIN (COSTS OFF) DELETE FROM accounts WHERE id = 7}),
	qr/Custom Scan \(ShardModify\)/, 'so does a DELETE by key');
my $many = $coord->safe_psql('postgres', q{EXPLAIN (COSTS OFF) UPDATE accounts SET balance = balance + 1 WHERE id IN (7, 8, 9, 10, 11, 12)});
unlike($many, qr/ShardModify/, 'an UPDATE of several slots keeps postgres_fdw');
like($many, qr/Foreign Update/, 'and its direct modify');
like($coord->safe_psql('postgres', q{EXPLAIN (COSTS OFF) UPDATE accounts SET balance = balance + 1 WHERE id = 7 RETURNING balance}),
	qr/ShardModify/, 'so does one with RETURNING');

# --- autocommit: alone, one round trip ------------------------------------------------
is($coord->safe_psql('postgres', q{UPDATE accounts SET balance = balance + 5 WHERE id = 7; \echo :ROW_COUNT}),
	'1', 'an autocommit UPDATE by key updates one row');
is(stored(7), 'o7 105', 'on its shard');
is($coord->safe_psql('postgres', q{UPDATE accounts SET balance = 0 WHERE id = 4000; \echo :ROW_COUNT}),
	'0', 'a key without a row updates none');
is($coord->safe_psql('postgres', q{DELETE FROM accounts WHERE id = 8; \echo :ROW_COUNT}),
	'1', 'an autocommit DELETE by key deletes one row');
is(stored(8), 'none', 'from its shard');
is($coord->safe_psql('postgres', q{SELECT count(*) FROM accounts}), '39', 'and no other');

# RETURNING: the rows as the shard left them.
is($coord->safe_psql('postgres', q{UPDATE accounts SET balance = balance + 1 WHERE id = 19 RETURNING owner, balance}),
	'o19|101', 'an UPDATE by key returns the row as updated');
is($coord->safe_psql('postgres', q{UPDATE accounts SET balance = balance + 1 WHERE id = 4000 RETURNING balance}),
	'', 'none for a key without a row');
is($coord->safe_psql('postgres', q{UPDATE accounts SET balance = balance + 1 WHERE id = 19 RETURNING 1}),
	'1', 'a RETURNING of no column gives a row per row updated');
is($coord->safe_psql('postgres', q{DELETE FROM accounts WHERE id = 20 RETURNING *}),
	'20|o20|100', 'a DELETE by key returns the row deleted');
is(stored(20), 'none', 'which is gone');
is($coord->safe_psql('postgres', q{UPDATE accounts SET balance = balance + 1 WHERE id = 19 RETURNING balance \g
\echo :ROW_COUNT}), "103\n1", 'the row count of an UPDATE with RETURNING');
is($coord->safe_psql('postgres', q{BEGIN; UPDATE accounts SET balance = balance - 1 WHERE id = 19 RETURNING balance; COMMIT;}),
	'102', 'in a transaction block too');
is($coord->safe_psql('postgres', q{UPDATE ws_dist.accounts SET balance = balance + 1 WHERE id = 19 RETURNING xmin, xmax, balance}),
	'0|0|103', 'system columns of the returned row are those of a row no local transaction wrote');
# The UPDATE's new values are the shard's: computed again from the row it
# returned, 1,500,000,000 + 600,000,000 would overflow after the commit.
$coord->safe_psql('postgres', q{UPDATE accounts SET balance = 1500000000 WHERE id = 21});
is($coord->safe_psql('postgres', q{UPDATE accounts SET balance = balance + 600000000 WHERE id = 21 RETURNING balance}),
	'2100000000', 'nothing of the SET list is computed again from the returned row');
$coord->safe_psql('postgres', q{UPDATE accounts SET balance = 100 WHERE id = 21});
# A key may have several rows.
$coord->safe_psql('postgres', q{
	CREATE TABLE visits (tenant int NOT NULL, n int NOT NULL);
	SELECT ws.distribute_table('visits', 'tenant', 'm');
	INSERT INTO visits SELECT 1, i FROM generate_series(1, 3) i;
	INSERT INTO visits VALUES (2, 9);});
is(join(',', sort split /\n/, $coord->safe_psql('postgres', q{DELETE FROM visits WHERE tenant = 1 RETURNING n})),
	'1,2,3', 'a DELETE by key returns every row of the key');
is($coord->safe_psql('postgres', q{SELECT string_agg(tenant || ':' || n, ',') FROM visits}), '2:9', 'and deletes only those');
my $log = logged_by(19, sub {
	is($coord->safe_psql('postgres', q{UPDATE accounts SET balance = balance + 1 WHERE id = 19 RETURNING balance * 2}),
		'208', 'a RETURNING that computes');
});
like($log, qr/\] postgres_fdw LOG:  execute <unnamed>: UPDATE public\.accounts_s\d+ SET balance = \(balance \+ 1\) WHERE \(\(id = 19\)\) RETURNING balance/,
	'runs in postgres_fdw\'s remote transaction: it could fail after the shard committed alone');
$log = logged_by(19, sub {
	$coord->safe_psql('postgres', q{UPDATE accounts SET balance = balance + 1 WHERE id = 19 RETURNING balance});
});
like($log, qr/\] write_scaling LOG:  execute <unnamed>: UPDATE public\.accounts_s\d+ SET balance = \(balance \+ 1\) WHERE \(\(id = 19\)\) RETURNING balance/,
	'one that returns columns runs alone');

# The statement runs on a connection of the coordinator's own, named
# write_scaling, as a statement of its own.
my $session = $coord->background_psql('postgres');
$session->query_safe(q{UPDATE accounts SET owner = 'seen' WHERE id = 9});
like(on_shard(9, q{SELECT query FROM pg_stat_activity WHERE application_name = 'write_scaling'}),
	qr/^UPDATE public\.accounts_s\d+ SET owner = 'seen'::text WHERE \(\(id = 9\)\)$/m,
	'it ran on the coordinator\'s own connection, as postgres_fdw wrote it');
$session->quit;
is(stored(9), 'seen 100', 'with its value');

# Errors keep the shard's SQLSTATE, and nothing is written.
my ($rc, $out, $err) = $coord->psql('postgres', q{\set VERBOSITY verbose
UPDATE accounts SET balance = -1 WHERE id = 10});
like($err, qr/23514: new row for relation "accounts_s\d+" violates check constraint/, 'a shard\'s error keeps its SQLSTATE');
like($err, qr/remote SQL command: UPDATE public\.accounts_s\d+ SET balance = .* WHERE \(\(id = 10\)\)/,
	'and says what the shard ran');
is(stored(10), 'o10 100', 'nothing was written');

# The extended protocol: an Execute that a Sync follows is all its
# transaction does, and runs alone, unprepared (postgres_fdw writes each key
# in: prepared, each would stay on the shard).  A generic plan whose key is
# a constant keeps the node and sends its parameters as postgres_fdw would.
$log = logged_by(17, sub {
	local $ENV{PGOPTIONS} = '-c plan_cache_mode=force_generic_plan';
	$coord->pgbench('-n -M prepared -t 3', 0, [qr/actually processed: 3\/3/], [qr/^$/],
		'a prepared UPDATE by key', { 'pay' => "\\set n 10\nUPDATE accounts SET balance = balance - :n WHERE id = 17;\n" },
		'postgres');
});
like($log, qr/\] write_scaling LOG:  execute <unnamed>: UPDATE public\.accounts_s\d+ SET balance = \(balance - \$1::integer\) WHERE \(\(id = 17\)\)\n.*DETAIL:  parameters: \$1 = '10'/,
	'runs alone, unprepared, its parameter sent as postgres_fdw sends it');
unlike($log, qr/\] postgres_fdw /, 'and without postgres_fdw');
is(stored(17), 'o17 70', 'three times 10 taken off');

# A pipeline's Execute messages share a transaction: one that is not the
# last before the Sync runs in postgres_fdw's remote transaction, and a later
# error takes it back.
$log = logged_by(18, sub {
	$coord->pgbench('-n -M extended -t 1', 2, [qr/actually processed: 0\/1/], [qr/division by zero/],
		'an UPDATE in a pipeline, then an error', {
			'pipeline' => "\\startpipeline\nUPDATE accounts SET balance = 0 WHERE id = 18;\nSELECT 1/0;\n\\endpipeline\n" },
		'postgres');
});
is(stored(18), 'o18 100', 'the pipeline\'s error takes its UPDATE back');
like($log, qr/\] postgres_fdw LOG:  execute <unnamed>: UPDATE public\.accounts_s\d+ SET balance = 0 WHERE \(\(id = 18\)\)/,
	'which ran in postgres_fdw\'s remote transaction');

# Parameters: a generic plan whose key is a constant keeps the node and
# sends the other values as parameters.
($rc, $out, $err) = $coord->psql('postgres', q{
	SET plan_cache_mode = force_generic_plan;
	PREPARE pay(int, text) AS UPDATE accounts SET balance = balance - $1, owner = $2 WHERE id = 11;
	EXPLAIN (COSTS OFF) EXECUTE pay(30, 'paid');
	EXECUTE pay(30, 'paid');
	EXECUTE pay(30, NULL);});
like($out, qr/ShardModify/, 'a generic plan whose key is a constant keeps the node');
like($err, qr/23502: |null value in column "owner"/, 'a NULL parameter reaches the shard as NULL');
is(stored(11), 'paid 70', 'the parameters reached the shard');

# --- anything else: postgres_fdw's remote transaction --------------------------------
$coord->safe_psql('postgres', q{BEGIN; UPDATE accounts SET balance = 0 WHERE id = 12; ROLLBACK;});
is(stored(12), 'o12 100', 'in a transaction block, a rollback takes the UPDATE back');
is($coord->safe_psql('postgres', q{BEGIN; DELETE FROM accounts WHERE id = 12; SELECT count(*) FROM accounts WHERE id = 12; COMMIT;}),
	'0', 'and the transaction reads its own DELETE');
is(stored(12), 'none', 'which its commit keeps');
$coord->safe_psql('postgres', q{
	CREATE FUNCTION pay_and_fail(k bigint) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		UPDATE accounts SET balance = 0 WHERE id = k;
		RAISE EXCEPTION 'changed my mind';
	END $$;});
($rc, $out, $err) = $coord->psql('postgres', q{SELECT pay_and_fail(13)});
like($err, qr/changed my mind/, 'a function that updates and then fails');
is(stored(13), 'o13 100', 'leaves the row as it was: its UPDATE ran in the transaction');
$coord->safe_psql('postgres', q{UPDATE accounts SET balance = 1 WHERE id = 14 \; SELECT 1});
is(stored(14), 'o14 1', 'two statements in one query string: the UPDATE commits with the transaction');
($rc, $out, $err) = $coord->psql('postgres', q{UPDATE accounts SET balance = 2 WHERE id = 14 \; SELECT 1/0});
like($err, qr/division by zero/, 'a later error in the same query string');
is(stored(14), 'o14 1', 'takes it back');
$log = logged_by(14, sub {
	$coord->safe_psql('postgres', q{SET write_scaling.shard_one_round_trip = off; UPDATE accounts SET balance = 3 WHERE id = 14});
});
is(stored(14), 'o14 3', 'with write_scaling.shard_one_round_trip off');
like($log, qr/\] postgres_fdw LOG:  execute <unnamed>: UPDATE public\.accounts_s\d+ SET balance = 3 WHERE \(\(id = 14\)\)/,
	'through postgres_fdw');
is($coord->safe_psql('postgres', q{BEGIN; UPDATE accounts SET balance = balance + 1 WHERE id = 14; \echo :ROW_COUNT
ROLLBACK;}), '1', 'in a transaction block, the row count is right too');
like($coord->safe_psql('postgres', q{BEGIN; EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) UPDATE accounts SET balance = balance + 1 WHERE id = 14; ROLLBACK;}),
	qr/Custom Scan \(ShardModify\) on accounts_s\d+ accounts_1 \(actual rows=1 loops=1\)/,
	'and EXPLAIN ANALYZE counts the row');

# A statement trigger on the table in ws_dist would run after a shard
# committed alone: such a table keeps postgres_fdw.
$coord->safe_psql('postgres', q{
	CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$;
	CREATE TRIGGER refuse AFTER UPDATE ON ws_dist.accounts FOR EACH STATEMENT EXECUTE FUNCTION refuse();});
unlike($coord->safe_psql('postgres', q{EXPLAIN (COSTS OFF) UPDATE accounts SET balance = 0 WHERE id = 15}),
	qr/ShardModify/, 'a table with a trigger keeps postgres_fdw');
($rc, $out, $err) = $coord->psql('postgres', q{UPDATE accounts SET balance = 0 WHERE id = 15});
like($err, qr/refused/, 'its trigger fails the UPDATE');
is(stored(15), 'o15 100', 'which the shard did not keep');
$coord->safe_psql('postgres', q{DROP TRIGGER refuse ON ws_dist.accounts});
like($coord->safe_psql('postgres', q{EXPLAIN (COSTS OFF) UPDATE accounts SET balance = 0 WHERE id = 15}),
	qr/ShardModify/, 'without it, the node again');

# --- one row, four sessions ------------------------------------------------------------
# Four sessions each add 1 to one balance 50 times, every statement its own
# transaction: on the shard they wait for each other, as on a table, and
# none fails.  A fifth session holds the row until all four wait for it.
four_sessions_at_once($coord, $shard{ $server_of->(16) },
	q{UPDATE accounts SET balance = balance + 1 WHERE id = 16;}, 50, 'UPDATE by key');
is(stored(16), 'o16 301', 'one UPDATE and four sessions of 50 on one row: 100 + 201');

# The same with RETURNING, through the extended protocol: no session fails.
$coord->pgbench('-n -M prepared -c 4 -t 25', 0, [qr/actually processed: 100\/100/], [qr/^$/],
	'four clients add 1 to one balance 25 times, with RETURNING', {
		'add' => "UPDATE accounts SET balance = balance + 1 WHERE id = 16 RETURNING balance;\n" },
	'postgres');
is(stored(16), 'o16 401', 'and every one counted');

# --- a shard that is down ----------------------------------------------------------------
my ($on_s1) = grep { $server_of->($_) eq 's1' } 21 .. 40;
my ($on_s2) = grep { $server_of->($_) eq 's2' } 21 .. 40;
$shard{s1}->stop;
($rc, $out, $err) = $coord->psql('postgres', qq{\\set VERBOSITY verbose
UPDATE accounts SET balance = 0 WHERE id = $on_s1});
like($err, qr/08001: could not connect to server "s1"/, 'an UPDATE for a shard that is down fails, naming its server');
is($coord->safe_psql('postgres', qq{UPDATE accounts SET balance = 0 WHERE id = $on_s2; \\echo :ROW_COUNT}),
	'1', 'one for the other shard goes on');
$shard{s1}->start;
is(stored($on_s1), "o$on_s1 100", 'the row of the shard that was down is as it was');
is($coord->safe_psql('postgres', qq{UPDATE accounts SET balance = 7 WHERE id = $on_s1; \\echo :ROW_COUNT}),
	'1', 'once the shard is back, its UPDATE works');
is(stored($on_s1), "o$on_s1 7", 'and is stored');

# --- a slot moved while a transaction uses the shards ----------------------------
# postgres_fdw's remote transactions are REPEATABLE READ.  A transaction
# that began one on s1 before s2's slots moved there would not see their
# rows there: its UPDATE would change nothing, silently.  It fails with a
# serialization failure instead.  Its first use of s1 is an INSERT into a
# table of another map, which the move does not wait for.
$coord->safe_psql('postgres', q{
	SELECT ws.create_shard_map('solo', vnodes => 4);
	SELECT ws.add_shard('solo', 's1');
	CREATE TABLE memos (id int PRIMARY KEY, body text);
	SELECT ws.distribute_table('memos', 'id', 'solo');});
my ($moving) = grep { $_ != $on_s2 && $server_of->($_) eq 's2' } 21 .. 40;
my $before_move = stored($moving);
my $w = $coord->background_psql('postgres', on_error_stop => 0);
$w->query_safe(q{BEGIN});
$w->query_safe(q{INSERT INTO memos VALUES (1, 'begins a remote transaction on s1')});
# What its snapshot saw is kept, but not the snapshot: between statements,
# the transaction holds back no vacuum here.
my $w_pid = $w->query_safe(q{SELECT pg_backend_pid()});
is($coord->safe_psql('postgres', "SELECT backend_xmin IS NULL FROM pg_stat_activity WHERE pid = $w_pid"), 't',
	'a transaction that used the shards holds no snapshot between statements');
$coord->safe_psql('postgres', q{SELECT ws.remove_shard('m', 's2'); CALL ws.rebalance('m');});
is($server_of->($moving), 's1', "row $moving now lives on s1");
$w->query(qq{\\set VERBOSITY verbose
UPDATE accounts SET balance = balance + 1 WHERE id = $moving;});
like($w->{stderr}, qr/40001: could not serialize access to "accounts_s\d+" due to a slot moved by ws\.rebalance/,
	'an UPDATE of a row whose slot moved since the transaction began to use the shards fails with 40001');
$w->query(q{ROLLBACK});
$w->quit;
is(stored($moving), $before_move, 'and the row is as it was');
is($coord->safe_psql('postgres', qq{BEGIN;
INSERT INTO memos VALUES (2, 'x');
UPDATE accounts SET balance = balance + 1 WHERE id = $moving;
\\echo :ROW_COUNT
COMMIT;}), '1', 'a transaction that begins after the move updates it');
is($coord->safe_psql('postgres', qq{BEGIN;
INSERT INTO memos VALUES (3, 'x');
ALTER TABLE accounts ADD COLUMN note text;
UPDATE accounts SET note = 'changed here' WHERE id = $moving;
\\echo :ROW_COUNT
ROLLBACK;}), '1', 'and one that changed the slots itself since it began is not taken for a move');
# A column added by another session meanwhile is not a move either.
my $adds = $coord->background_psql('postgres', on_error_stop => 0);
$adds->query_safe(q{BEGIN});
$adds->query_safe(q{INSERT INTO memos VALUES (4, 'begins a remote transaction on s1')});
$coord->safe_psql('postgres', q{ALTER TABLE accounts ADD COLUMN added_meanwhile int});
is($adds->query(qq{UPDATE accounts SET balance = balance + 1 WHERE id = $moving;\n\\echo :ROW_COUNT}), '1',
	'a transaction that began to use the shards before another session added a column updates the row');
is($adds->{stderr}, '', 'without an error');
$adds->query(q{ROLLBACK});
$adds->quit;

# Other first uses of s1 begin its remote transaction too, and a SELECT
# ... FOR UPDATE or a DELETE would find nothing either: each case moves a
# row of s2 to s1 while a transaction that used s1 first in that way is
# open.  A transaction's first statement counts as its first use, whatever
# it reaches: an INSERT into a partitioned table of the user's reaches s1
# only through a partition that routing finds, and a statement that reaches
# no shard counts too.  A generic plan names every slot.  The slot's row in
# pg_foreign_table may be frozen meanwhile.  A statement that only reads
# the moved slot passes (reads miss its rows, as README says).
$shard{s1}->safe_psql('postgres', q{CREATE TABLE notes (id int)});
$coord->safe_psql('postgres', q{
	CREATE FOREIGN TABLE my_notes (id int) SERVER s1 OPTIONS (table_name 'notes');
	CREATE TABLE my_parted (id int) PARTITION BY RANGE (id);
	CREATE FOREIGN TABLE my_parted_1 PARTITION OF my_parted FOR VALUES FROM (0) TO (100)
		SERVER s1 OPTIONS (table_name 'notes');
	CREATE TABLE tally (id bigint, seen int);});
my $fails = qr/could not serialize access to "accounts_s\d+" due to a slot moved by ws\.rebalance/;
# row_on_s2: a stored row whose key lives on s2.
sub row_on_s2
{
	for my $id (split ' ', $coord->safe_psql('postgres', q{SELECT string_agg(id::text, ' ' ORDER BY id) FROM accounts}))
	{
		return $id if $server_of->($id) eq 's2';
	}
	die 'no row on s2';
}
my %then = (
	'UPDATE' => sub { qq{UPDATE accounts SET balance = balance + 1 WHERE id = $_[0]} },
	'SELECT ... FOR UPDATE' => sub { qq{SELECT balance FROM accounts WHERE id = $_[0] FOR UPDATE} },
	'DELETE in a WITH clause' => sub { qq{WITH d AS (DELETE FROM accounts WHERE id = $_[0] RETURNING 1) SELECT count(*) FROM d} },
	'UPDATE of a generic plan' => sub { qq{SET plan_cache_mode = force_generic_plan;
PREPARE bump (bigint) AS UPDATE accounts SET balance = balance + 1 WHERE id = \$1;
EXECUTE bump($_[0])} },
	'UPDATE of a local table that reads it' => sub { qq{INSERT INTO tally VALUES ($_[0], 0);
UPDATE tally SET seen = 1 FROM accounts WHERE accounts.id = tally.id} });
for my $case (
	[ 'a query of a postgres_fdw table of its own', q{SELECT count(*) FROM my_notes}, 'UPDATE' ],
	[ 'a TRUNCATE of a distributed table', q{TRUNCATE memos}, 'UPDATE' ],
	[ 'an INSERT into a table in ws_dist', q{INSERT INTO ws_dist.memos VALUES (10, 'x')}, 'UPDATE' ],
	[ 'an ANALYZE of a table in ws_dist', q{ANALYZE ws_dist.memos}, 'UPDATE' ],
	[ 'an INSERT into a partitioned table of its own', q{INSERT INTO my_parted VALUES (1)}, 'UPDATE' ],
	[ 'a statement that reaches no shard', q{SELECT 1}, 'UPDATE' ],
	[ 'an INSERT', q{INSERT INTO memos VALUES (11, 'x')}, 'SELECT ... FOR UPDATE' ],
	[ 'an INSERT', q{INSERT INTO memos VALUES (12, 'x')}, 'DELETE in a WITH clause' ],
	[ 'an INSERT', q{INSERT INTO memos VALUES (13, 'x')}, 'UPDATE of a generic plan' ],
	[ 'an INSERT, the slot frozen since', q{INSERT INTO memos VALUES (14, 'x')}, 'UPDATE', 'freeze' ],
	[ 'an INSERT', q{INSERT INTO memos VALUES (15, 'x')}, 'UPDATE of a local table that reads it' ])
{
	my ($first_use, $sql, $then, $freeze) = @$case;
	$coord->safe_psql('postgres', q{SELECT ws.add_shard('m', 's2'); CALL ws.rebalance('m');});
	my $row = row_on_s2();
	my $before = stored($row);
	my $session = $coord->background_psql('postgres', on_error_stop => 0);
	$session->query_safe(q{BEGIN});
	$session->query_safe($sql);
	$coord->safe_psql('postgres', q{SELECT ws.remove_shard('m', 's2'); CALL ws.rebalance('m');});
	if ($freeze)
	{
		# Again while another backend (autovacuum) holds the horizon back.
		my $frozen = sprintf(q{
			SELECT f.xmin::text::bigint < c.relfrozenxid::text::bigint
			FROM pg_foreign_table f, pg_class c
			WHERE f.ftrelid = 'ws_dist.accounts_s%03d'::regclass AND c.oid = 'pg_foreign_table'::regclass},
			$coord->safe_psql('postgres', "SELECT ws.key_slot('$row', $vnodes)"));
		my $is_frozen = 'f';
		for (1 .. 50)
		{
			$coord->safe_psql('postgres', q{VACUUM (FREEZE) pg_foreign_table});
			$is_frozen = $coord->safe_psql('postgres', $frozen);
			last if $is_frozen eq 't';
			sleep 1;
		}
		is($is_frozen, 't', 'the moved slot\'s row in pg_foreign_table is frozen');
	}
	$session->query($then{$then}->($row));
	if ($then eq 'UPDATE of a local table that reads it')
	{
		is($session->{stderr}, '', "after $first_use, an $then passes");
	}
	else
	{
		like($session->{stderr}, $fails, "a transaction whose first use of the shards is $first_use: its $then of a moved row fails");
	}
	$session->query(q{ROLLBACK});
	$session->quit;
	is(stored($row), $before, "after $first_use, the row is as it was");
}

# A snapshot whose list of subtransactions overflowed keeps none: sessions
# with one subtransaction each, and one with 70, open while a transaction
# makes its first use (it crashed the server once).  A move's
# subtransaction is then looked up in pg_subtrans: a transaction that
# began after the move (which came after those sessions) updates its rows;
# one that began before fails as above.
$coord->safe_psql('postgres', q{CREATE TABLE subs (i int)});
my @subs;
for my $n (1, 70, 1, 1, 1)
{
	my $held = $coord->background_psql('postgres');
	$held->query_safe(sprintf(q{BEGIN; DO $$ BEGIN FOR i IN 1..%d LOOP BEGIN INSERT INTO subs VALUES (i); EXCEPTION WHEN OTHERS THEN NULL; END; END LOOP; END $$}, $n));
	push @subs, $held;
}
{
	$coord->safe_psql('postgres', q{SELECT ws.add_shard('m', 's2'); CALL ws.rebalance('m');});
	my $row = row_on_s2();
	my $after = $coord->background_psql('postgres', on_error_stop => 0);
	$after->query_safe(q{BEGIN});
	$after->query_safe(q{SELECT 1});
	is($after->query(qq{UPDATE accounts SET balance = balance + 1 WHERE id = $row;\n\\echo :ROW_COUNT}), '1',
		'a transaction that began after a move, its first snapshot overflowed, updates a moved row');
	is($after->{stderr}, '', 'without an error');
	$after->query(q{ROLLBACK});
	$after->quit;
	my $session = $coord->background_psql('postgres', on_error_stop => 0);
	$session->query_safe(q{BEGIN});
	$session->query_safe(q{INSERT INTO memos VALUES (16, 'x')});
	$coord->safe_psql('postgres', q{SELECT ws.remove_shard('m', 's2'); CALL ws.rebalance('m');});
	$session->query(qq{UPDATE accounts SET balance = balance + 1 WHERE id = $row});
	like($session->{stderr}, $fails, 'a transaction whose first snapshot overflowed its subtransactions does not crash, and fails as above');
	$session->query(q{ROLLBACK});
	$session->quit;
}
$_->query_safe('ROLLBACK') for @subs;
$_->quit for @subs;

# hold_first_move: brings s2 back and starts a rebalance in a session of
# its own, held while it reads the first slot it moves (a lock on that
# slot's table on s1).  Returns the slot's table there, a stored row of the
# slot and its balance (read before: reads of it wait too), the session
# holding the lock and the rebalancing one.
sub hold_first_move
{
	$coord->safe_psql('postgres', q{SELECT ws.add_shard('m', 's2')});
	my $slot = $coord->safe_psql('postgres', q{
		SELECT min(slot) FROM ws.shard_slots WHERE map = 'm' AND owner IS DISTINCT FROM placed_on});
	my ($row) = grep { $coord->safe_psql('postgres', "SELECT ws.key_slot('$_', $vnodes)") == $slot }
		split ' ', $coord->safe_psql('postgres', q{SELECT string_agg(id::text, ' ' ORDER BY id) FROM accounts});
	my $table = sprintf('accounts_s%03d', $slot);
	my $balance = $coord->safe_psql('postgres', "SELECT balance FROM accounts WHERE id = $row");
	my $hold = $shard{s1}->background_psql('postgres');
	$hold->query_safe("BEGIN; LOCK TABLE $table IN ACCESS EXCLUSIVE MODE");
	my $moving = $coord->background_psql('postgres', on_error_stop => 0);
	$moving->query_until(qr/started/, "\\echo started\nCALL ws.rebalance('m');\n\\echo rebalanced\n");
	ok($shard{s1}->poll_query_until('postgres', qq{
		SELECT count(*) > 0 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%$table%' AND pid <> pg_backend_pid()}),
		"the rebalance holds $table and waits to read it on s1");
	return ($table, $row, $balance, $hold, $moving);
}

# A move under way when the transaction's first statement ran counts as
# later: its transaction is among those that snapshot lists as running.
{
	my ($table, $row, $balance, $hold, $moving) = hold_first_move();
	# A later transaction ends first, so that the move's is below the
	# snapshot's xmax, found only in its list of running ones.
	$coord->safe_psql('postgres', q{INSERT INTO tally VALUES (0, 0)});
	my $session = $coord->background_psql('postgres', on_error_stop => 0);
	$session->query_safe(q{BEGIN});
	$session->query_safe(q{SELECT 1});
	$hold->query_safe('COMMIT');
	$hold->quit;
	like($moving->query_until(qr/rebalanced/, ''), qr/rebalanced/, 'the rebalance finishes');
	$moving->quit;
	is($server_of->($row), 's2', "row $row moved to s2");
	$session->query(qq{UPDATE accounts SET balance = balance + 1 WHERE id = $row});
	like($session->{stderr}, $fails, 'a transaction that began while the move was under way: its UPDATE of the moved row fails');
	$session->query(q{ROLLBACK});
	$session->quit;
	$coord->safe_psql('postgres', q{SELECT ws.remove_shard('m', 's2'); CALL ws.rebalance('m');});
}

# --- an UPDATE of the slot being moved --------------------------------------------
# It holds ws_dist.accounts and waits for the slot, which the rebalance holds
# until its switch, which waits for ws_dist.accounts.  The rebalance checks
# for the deadlock first and starts the slot over: the UPDATE goes through.
# s2 comes back; the rebalance is held in its first move until the UPDATE
# waits for it.
my ($first_table, $in_first, $row_before, $hold, $rebalance) = hold_first_move();
my $update = $coord->background_psql('postgres', on_error_stop => 0);
$update->query_until(qr/started/, "\\echo started\nUPDATE accounts SET balance = balance + 1 WHERE id = $in_first;\n\\echo updated\n");
ok($coord->poll_query_until('postgres', q{
	SELECT count(*) > 0 FROM pg_locks l JOIN pg_stat_activity a USING (pid)
	WHERE NOT l.granted AND a.query LIKE 'UPDATE accounts%'}),
	'the UPDATE waits for the slot');
is($coord->safe_psql('postgres', "SELECT server FROM ws.shard_cleanup WHERE remote_table = '$first_table'"), 's2',
	'the copy under way on s2 is queued for dropping until the move commits');
$hold->query_safe('COMMIT');
$hold->quit;
like($update->query_until(qr/updated/, ''), qr/updated/, 'the UPDATE finishes');
is($update->{stderr}, '', 'without an error: the rebalance gave way');
$update->quit;
like($rebalance->query_until(qr/rebalanced/, ''), qr/rebalanced/, 'the rebalance finishes');
is($rebalance->{stderr}, '', 'it too without an error');
$rebalance->quit;
is($coord->safe_psql('postgres', "SELECT balance FROM accounts WHERE id = $in_first"), $row_before + 1,
	'the UPDATE counted once');
is($coord->safe_psql('postgres', q{SELECT count(*) FROM ws.shard_slots WHERE map = 'm' AND owner IS DISTINCT FROM placed_on}),
	'0', 'every slot in place');
is($coord->safe_psql('postgres', "SELECT count(*) FROM ws.shard_cleanup WHERE server = 's2'"), '0',
	'and no copy on s2 is queued any more');

# --- ws.shard_cleanup never drops what readers see --------------------------------
# Should a row there ever name a slot's live table, or a table of slots
# that holds slots, a rebalance forgets the row and keeps the table.
my $live_server = $server_of->(1);
my $live_table = sprintf('accounts_s%03d', $coord->safe_psql('postgres', "SELECT ws.key_slot('1', $vnodes)"));
my $row_of_1 = stored(1);
($rc, $out, $err) = $coord->psql('postgres', qq{
	INSERT INTO ws.shard_cleanup (server, remote_schema, remote_table)
	VALUES ('$live_server', 'public', '$live_table'), ('$live_server', 'public', 'accounts_shard');
	CALL ws.rebalance('m');});
like($err, qr/WARNING:  old slot table public\.$live_table on server "$live_server" is in use: not dropped/,
	'a queued table that a slot reads is not dropped, with a warning');
like($err, qr/WARNING:  old slot table public\.accounts_shard on server "$live_server" is in use: not dropped/,
	'nor is the table of slots');
is(stored(1), $row_of_1, 'its rows are there');
is($coord->safe_psql('postgres', 'SELECT count(*) FROM ws.shard_cleanup'), '0', 'and the rows naming them are gone');

# --- a copy that differs from its source ------------------------------------------
# A move checks the copy against the source: the count of rows, and a
# checksum of their contents.  A trigger on s1 that adds 1 to every balance
# that arrives leaves the count right; the checksum stops the move, which
# rolls back: the slot stays where it was, with its rows as they were.  A
# column of a quoted name, bytea values and NULLs, and s1 writing bytea in
# the escape format by default, change nothing there.
$coord->safe_psql('postgres', q{
	ALTER TABLE accounts ADD COLUMN "Odd Name" bytea;
	UPDATE accounts SET "Odd Name" = decode(md5(id::text), 'hex') WHERE id % 3 <> 0;});
$shard{s1}->safe_psql('postgres', q{ALTER DATABASE postgres SET bytea_output = 'escape'});
my $all_rows = q{SELECT count(*) || ' ' || sum(balance) || ' ' || md5(string_agg("Odd Name"::text, ',' ORDER BY id)) FROM accounts};
my $before_tamper = $coord->safe_psql('postgres', $all_rows);
$shard{s1}->safe_psql('postgres', q{
	CREATE FUNCTION tamper() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.balance := NEW.balance + 1; RETURN NEW; END $$;
	CREATE TRIGGER tamper BEFORE INSERT ON accounts_shard FOR EACH ROW EXECUTE FUNCTION tamper();});
($rc, $out, $err) = $coord->psql('postgres', qq{\\set VERBOSITY verbose
SELECT ws.remove_shard('m', 's2');
CALL ws.rebalance('m');});
like($err, qr/55000: copy of slot (\d+) of table public\.accounts on server "s1" differs from its source/,
	'a copy that differs from its source stops the rebalance');
my ($bad_slot) = $err =~ /copy of slot (\d+) of table/;
like($err, qr/DETAIL:  Server "s2" has (\d+) rows, checksum -?\d+; \1 rows were inserted; server "s1" has \1 rows, checksum -?\d+\.  The slot stays on server "s2"\./,
	'the detail shows the counts, which agree, and the checksums');
unlike($err, qr/has \d+ rows, (checksum -?\d+); .* \1\./, 'which do not');
is($coord->safe_psql('postgres', qq{SELECT placed_on FROM ws.shard_slots WHERE map = 'm' AND slot = $bad_slot}), 's2',
	'the slot stays where it was');
is($coord->safe_psql('postgres', $all_rows), $before_tamper, 'and every row reads as before');
is($shard{s1}->safe_psql('postgres', sprintf(q{SELECT to_regclass('accounts_s%03d') IS NULL}, $bad_slot)), 't',
	'no copy is left on s1');
$shard{s1}->safe_psql('postgres', q{DROP TRIGGER tamper ON accounts_shard});
$coord->safe_psql('postgres', q{CALL ws.rebalance('m')});
is($coord->safe_psql('postgres', $all_rows), $before_tamper, 'without the trigger, the rerun moves every row unchanged');
is($coord->safe_psql('postgres', q{SELECT count(*) FROM ws.shard_slots WHERE map = 'm' AND placed_on IS DISTINCT FROM 's1'}),
	'0', 'and every slot to s1');
is($shard{s2}->safe_psql('postgres', q{SELECT to_regclass('accounts_shard') IS NULL}), 't', 'and s2 keeps no table of them');

$coord->stop;
$shard{$_}->stop for keys %shard;
done_testing();

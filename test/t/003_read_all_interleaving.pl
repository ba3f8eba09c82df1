# ws.read_all never skips an event: positions are handed out in allocation
# order but become visible in commit order, and a reader must be held back
# exactly by the appends to its store that are still in flight, and by
# nothing else.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use IPC::Run;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('read_all');
$node->init(allows_streaming => 1);
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'write_scaling'
max_prepared_transactions = 2
max_connections = 40
});
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION write_scaling;
	SELECT ws.create_event_store('il');
	SELECT ws.create_event_store('other');
	CREATE DATABASE elsewhere;
});

sub read_positions
{
	my ($after) = @_;
	return $node->safe_psql('postgres',
		"SELECT string_agg(global_position::text, ',' ORDER BY global_position) FROM ws.read_all('il', $after, NULL)");
}

sub safe { return $node->safe_psql('postgres', q{SELECT ws.safe_position('il')}); }

my $a = $node->background_psql('postgres');
my $b = $node->background_psql('postgres');

# Two writers commit out of order: A takes position 1, B position 2, and B
# commits first.  The reader must not see 2 before 1 is decided.
$a->query_safe('BEGIN');
is($a->query_safe(q{SELECT ws.append('il', 'a', NULL, '{"type": "T", "data": 1}')}), '1', 'A appends, uncommitted');
$b->query_safe(q{SELECT ws.append('il', 'b', NULL, '{"type": "T", "data": 2}')});
is($node->safe_psql('postgres', 'SELECT count(*) FROM ws.il_events'), '1', 'B committed position 2');
is(read_positions(0), '', 'read_all does not pass the in-flight position 1');
is(safe(), '0', 'the safe position stays below the in-flight append');
is( $node->safe_psql('postgres',
		q{SELECT oldest_in_flight_position, oldest_in_flight_pid IS NOT NULL
		  FROM ws.stat_event_stores WHERE store = 'il'}),
	'1|t', 'stat_event_stores shows what holds the reader back');
$a->query_safe('COMMIT');
is(read_positions(0), '1,2', 'after A commits both events arrive, in order');

# The same with an abort: the gap is known at once, no timeout.
$a->query_safe('BEGIN');
$a->query_safe(q{SELECT ws.append('il', 'a', NULL, '{"type": "T", "data": 3}')});
$b->query_safe(q{SELECT ws.append('il', 'b', NULL, '{"type": "T", "data": 4}')});
is(read_positions(2), '', 'held back while A is in flight');
$a->query_safe('ROLLBACK');
is(read_positions(2), '4', 'after A aborts the reader passes the gap at once');

# A savepoint rolled back releases its positions while the transaction
# goes on; a committed subtransaction keeps them.
$a->query_safe('BEGIN');
$a->query_safe(q{SELECT ws.append('il', 'a', NULL, '{"type": "T", "data": 5}')});
$a->query_safe('SAVEPOINT s');
$a->query_safe(q{SELECT ws.append('il', 'a', NULL, '{"type": "T", "data": 6}')});
$a->query_safe('RELEASE s');
$a->query_safe('SAVEPOINT t');
$a->query_safe(q{SELECT ws.append('il', 'a', NULL, '{"type": "T", "data": 7}')});
$a->query_safe('ROLLBACK TO t');
$b->query_safe(q{SELECT ws.append('il', 'b', NULL, '{"type": "T", "data": 8}')});
is(safe(), '4', 'positions of a released savepoint still hold readers back');
$a->query_safe('COMMIT');
is(read_positions(4), '5,6,8', 'the rolled-back savepoint left a gap, nothing else');

# A savepoint that rolls back the only append releases the reader at once.
$a->query_safe('BEGIN');
$a->query_safe('SAVEPOINT s');
$a->query_safe(q{SELECT ws.append('il', 'a', NULL, '{"type": "T", "data": 9}')});
$a->query_safe('ROLLBACK TO s');
$b->query_safe(q{SELECT ws.append('il', 'b', NULL, '{"type": "T", "data": 10}')});
is(read_positions(8), '10', 'a rolled-back savepoint does not hold readers back');
$a->query_safe('COMMIT');

# Unrelated long transactions hold nobody back: one that holds an xid, a
# repeatable-read report, a transaction in another database, and an
# append in flight to another store.
my $long = $node->background_psql('postgres');
my $report = $node->background_psql('postgres');
my $far = $node->background_psql('elsewhere');
my $long_xid = $long->query_safe('BEGIN; CREATE TEMP TABLE hold (x int); SELECT pg_current_xact_id();');
$report->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM ws.il_events;');
$far->query_safe('BEGIN; SELECT txid_current();');
$a->query_safe('BEGIN');
$a->query_safe(q{SELECT ws.append('other', 'x', NULL, '{"type": "T", "data": 0}')});
$b->query_safe(q{SELECT ws.append('il', 'b', NULL, '{"type": "T", "data": 11}')});
is(read_positions(10), '11', 'long unrelated transactions do not hold the reader back');
is( $node->safe_psql('postgres',
		"SELECT pg_snapshot_xmin(pg_current_snapshot()) <= '$long_xid'::xid8"),
	't', 'while a reader based on pg_snapshot_xmin would be held back');
$a->query_safe('COMMIT');
$long->query_safe('COMMIT');
$report->query_safe('COMMIT');
$far->query_safe('COMMIT');

# read_all reads the latest committed events even inside a repeatable-read
# transaction whose snapshot predates them.
$report->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1;');
$b->query_safe(q{SELECT ws.append('il', 'b', NULL, '{"type": "T", "data": 12}')});
is($report->query_safe(q{SELECT string_agg(global_position::text, ',') FROM ws.read_all('il', 11)}),
	'12', 'read_all in an old repeatable-read snapshot still reads up to the safe position');
$report->query_safe('COMMIT');

# Many writers with random commit delays and rollbacks, one reader that
# follows with checkpoints: it must collect every committed event once.
my $file = "${PostgreSQL::Test::Utils::tmp_check}/interleave.pgbench";
PostgreSQL::Test::Utils::append_to_file($file, q{
\set s random(1, 20)
\set fate random(0, 3)
\set delay random(0, 3000)
BEGIN;
SELECT ws.append('il', 'r' || :s, NULL, '[{"type": "T", "data": 1}, {"type": "T", "data": 2}]');
\sleep :delay us
\if :fate = 0
ROLLBACK;
\else
COMMIT;
\endif
});
my ($out, $err) = ('', '');
my $writers = IPC::Run::start(
	[ 'pgbench', '--no-vacuum', '--client=6', '--jobs=2', '--transactions=300',
	  '--file', $file, '-d', $node->connstr('postgres') ],
	'>', \$out, '2>', \$err);

my $reader = $node->background_psql('postgres');
my $checkpoint = 12;
my @seen;
my $ordered = 1;
my $writers_done = 0;
while (1)
{
	my $batch = $reader->query_safe(
		"SELECT string_agg(global_position::text, ',' ORDER BY global_position) FROM ws.read_all('il', $checkpoint, 50)");
	for my $p (grep { length } split /,/, $batch)
	{
		$ordered = 0 if $p <= $checkpoint;
		push @seen, $p;
		$checkpoint = $p;
	}
	next if length $batch;
	last if $writers_done;
	$writers_done = !$writers->pumpable;
	$writers->pump_nb if !$writers_done;
}
$writers->finish;
like($out, qr{processed: 1800/1800}, 'writers finished') or diag("pgbench stderr: $err");
ok($ordered, 'the reader received positions in increasing order');
my $stored = $node->safe_psql('postgres',
	q{SELECT string_agg(global_position::text, ',' ORDER BY global_position) FROM ws.il_events WHERE global_position > 12});
is(join(',', @seen), $stored, 'the reader received every committed event exactly once');
note(scalar(@seen) . ' events followed');

# Crash with an append in flight: its position is never returned, committed
# ones are, and positions continue above all that a reader saw.
$a->query_safe('BEGIN');
$a->query_safe(q{SELECT ws.append('il', 'a', NULL, '{"type": "T", "data": "lost"}')});
my $seen_max = $node->safe_psql('postgres',
	q{SELECT max(global_position) FROM ws.read_all('il', 0, NULL)});
$node->stop('immediate');
$_->quit for ($a, $b, $long, $report, $far, $reader);
$node->start;
is($node->safe_psql('postgres', q{SELECT count(*) FROM ws.il_events WHERE data = '"lost"'}),
	'0', 'the in-flight append died with the crash');
is($node->safe_psql('postgres', q{SELECT ws.safe_position('il')}), $seen_max,
	'after restart the reader resumes where it was');
$node->safe_psql('postgres', q{SELECT ws.append('il', 'after', NULL, '{"type": "T", "data": 0}')});
cmp_ok($node->safe_psql('postgres', q{SELECT global_position FROM ws.il_events WHERE stream = 'after'}),
	'>', $seen_max, 'no position a reader saw is handed out again');

# A standby cannot know which appends are in flight on the primary: it
# refuses global reads instead of risking a skip.
$node->backup('backup');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($node, 'backup', has_streaming => 1);
$standby->start;
$node->wait_for_catchup($standby);
my ($ret, $stdout, $stderr) = $standby->psql('postgres',
	q{SELECT count(*) FROM ws.read_all('il', 0)}, extra_params => ['-v', 'VERBOSITY=verbose']);
like($stderr, qr/0A000: global positions of event stores are not available during recovery/,
	'ws.read_all on a standby is refused with 0A000');
is($standby->safe_psql('postgres', q{SELECT ws.stream_version('il', 'after')}), '1',
	'stream reads work on the standby');
$standby->stop;

$node->stop;
done_testing();

# The buffered path across a crash: every committed transaction's rows are
# there in full, no uncommitted row is.  And ws.wal_report follows ALTER
# SYSTEM after a reload, and ws.tune_wal applies its advice.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use IPC::Run;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('bulk');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'write_scaling'
write_scaling.batch_rows = 7
});
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION write_scaling;
	CREATE TABLE t (session int, txn int, i int, PRIMARY KEY (session, txn, i));
});

# Sessions commit transactions of 20 buffered rows (so each flushes twice
# by size and once at commit) and print an acknowledgement after COMMIT.
my @runs;
for my $s (1 .. 3)
{
	my $script = '';
	for my $txn (1 .. 2000)
	{
		$script .= "BEGIN;\n"
		  . "SELECT count(ws.buffered_insert('t', ROW($s, $txn, i)::t)) FROM generate_series(1, 20) i;\n"
		  . "COMMIT;\nSELECT 'ack|$s|$txn';\n";
	}
	my $file = "${PostgreSQL::Test::Utils::tmp_check}/bulk_session_$s";
	PostgreSQL::Test::Utils::append_to_file("$file.sql", $script);
	push @runs, {
		h => IPC::Run::start(
			[ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-f', "$file.sql" ],
			'>', "$file.out", '2>', "$file.err"),
		out => "$file.out"
	};
}
# And one transaction that buffers and flushes but never commits.
my $open = $node->background_psql('postgres');
$open->query_safe(q{BEGIN; SELECT count(ws.buffered_insert('t', ROW(99, 1, i)::t)) FROM generate_series(1, 50) i; SELECT ws.flush();});

$node->poll_query_until('postgres', q{SELECT count(*) >= 20 * 300 FROM t})
  or die 'the sessions did not progress';
$node->stop('immediate');
my @acked;
for my $r (@runs)
{
	$r->{h}->finish;
	push @acked, grep { /^ack\|\d+\|\d+$/ } split /\n/, PostgreSQL::Test::Utils::slurp_file($r->{out});
}
$open->quit;
$node->start;

cmp_ok(scalar(@acked), '>', 0, 'transactions were acknowledged before the crash');
note(scalar(@acked) . ' transactions acknowledged');
my $values = join(',', map { my (undef, $s, $txn) = split /\|/; "($s,$txn)" } @acked);
is( $node->safe_psql(
		'postgres', qq{
	WITH acked (session, txn) AS (VALUES $values)
	SELECT count(*) FROM acked a
	WHERE (SELECT count(*) FROM t WHERE t.session = a.session AND t.txn = a.txn) <> 20}),
	'0',
	'every acknowledged transaction has all its rows');
is($node->safe_psql('postgres', q{SELECT count(*) FROM (SELECT session, txn FROM t GROUP BY 1, 2 HAVING count(*) <> 20) partial}),
	'0', 'no transaction is half there');
is($node->safe_psql('postgres', q{SELECT count(*) FROM t WHERE session = 99}),
	'0', 'rows of the transaction that never committed are not there');

# wal_report follows ALTER SYSTEM after a reload.
is($node->safe_psql('postgres', q{SELECT current_value FROM ws.wal_report() WHERE setting = 'commit_delay'}),
	'0', 'commit_delay is 0 before');
$node->safe_psql('postgres', q{ALTER SYSTEM SET commit_delay = 300});
$node->reload;
$node->poll_query_until('postgres', q{SELECT current_setting('commit_delay') = '300'});
is($node->safe_psql('postgres', q{SELECT current_value FROM ws.wal_report() WHERE setting = 'commit_delay'}),
	'300', 'wal_report shows the value set by ALTER SYSTEM');
like($node->safe_psql('postgres', q{SELECT based_on FROM ws.wal_report() WHERE setting = 'commit_delay'}),
	qr/flush probe: median \d+ µs/, 'the advice rests on a measured flush');

# tune_wal applies its statements and reloads; it leaves fsync and
# full_page_writes alone (test clusters run with fsync off).
my $before = $node->safe_psql('postgres', q{SELECT current_setting('fsync') || '/' || current_setting('full_page_writes')});
my $statements = $node->safe_psql('postgres', q{SELECT string_agg(statement, ' ') FROM ws.tune_wal(apply => true)});
like($statements, qr/checkpoint_timeout = '15min'/, 'tune_wal returns the statements it applied');
$node->poll_query_until('postgres', q{SELECT current_setting('checkpoint_timeout') = '15min'});
is($node->safe_psql('postgres', q{SELECT current_setting('checkpoint_timeout')}), '15min',
	'tune_wal applied the setting');
like(PostgreSQL::Test::Utils::slurp_file($node->data_dir . '/postgresql.auto.conf'),
	qr/checkpoint_timeout = '15min'/, 'through postgresql.auto.conf, as ALTER SYSTEM does');
is($node->safe_psql('postgres', q{SELECT current_setting('fsync') || '/' || current_setting('full_page_writes')}),
	$before, 'fsync and full_page_writes are left as they were');
unlike($statements, qr/fsync|full_page_writes/, 'no statement touches them');

$node->stop;
done_testing();

# Crash recovery: several sessions append, the server is stopped with
# 'immediate' mid-run and restarted.  Every append that returned must be
# present, no batch may be half-written, and no position is reused.
# synchronous_commit is off on purpose: appends force their own commit to
# be synchronous, so an acknowledged event survives anyway.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use IPC::Run;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('crash');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'write_scaling'
synchronous_commit = off
fsync = on
});
$node->start;
$node->safe_psql('postgres',
	q{CREATE EXTENSION write_scaling; SELECT ws.create_event_store('crash');});

# Each session runs a script of appends of 5 events and prints one line per
# append that returned: session, batch, stream, returned version.
my $sessions = 4;
my @runs;
for my $s (1 .. $sessions)
{
	my $script = '';
	for my $b (1 .. 3000)
	{
		my $stream = "s" . (($s * 7 + $b) % 12);
		$script .= "SELECT '$s|$b|$stream|' || ws.append('crash', '$stream', NULL, "
		  . "(SELECT jsonb_agg(jsonb_build_object('type', 'T', 'data', "
		  . "jsonb_build_object('session', $s, 'batch', $b, 'i', i))) FROM generate_series(1, 5) i));\n";
	}
	my $file = "${PostgreSQL::Test::Utils::tmp_check}/crash_session_$s";
	PostgreSQL::Test::Utils::append_to_file("$file.sql", $script);
	my $h = IPC::Run::start(
		[ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-f', "$file.sql" ],
		'>', "$file.out", '2>', "$file.err");
	push @runs, { h => $h, out => "$file.out" };
}

# Crash once a good share of the appends have committed.
$node->poll_query_until('postgres',
	q{SELECT count(*) >= 5 * 1500 FROM ws.crash_events})
  or die 'appends did not progress';
$node->stop('immediate');

my @acked;
for my $r (@runs)
{
	$r->{h}->finish;
	push @acked, grep { /^\d+\|\d+\|s\d+\|\d+$/ } split /\n/,
	  PostgreSQL::Test::Utils::slurp_file($r->{out});
}
cmp_ok(scalar(@acked), '>', 0, 'some appends returned before the crash');
note(scalar(@acked) . ' appends acknowledged before the crash');

$node->start;

# Every acknowledged append is there, with all 5 of its events at the
# versions the append returned.
my $values = join(',', map { my ($s, $b, $st, $v) = split /\|/; "($s,$b,'$st',$v)" } @acked);
is( $node->safe_psql(
		'postgres', qq{
	WITH acked (session, batch, stream, version) AS (VALUES $values)
	SELECT count(*) FROM acked a
	WHERE (SELECT count(*) FROM ws.crash_events e
		   WHERE e.stream = a.stream
			 AND (e.data->>'session')::int = a.session
			 AND (e.data->>'batch')::int = a.batch
			 AND e.version BETWEEN a.version - 4 AND a.version) <> 5}),
	'0',
	'every acknowledged append is present at the versions it returned');

is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM (
		SELECT data->>'session', data->>'batch' FROM ws.crash_events
		GROUP BY 1, 2 HAVING count(*) <> 5) half}),
	'0',
	'no append is half-written');

is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM (
		SELECT stream FROM ws.crash_events GROUP BY stream
		HAVING count(*) <> max(version) OR count(DISTINCT version) <> count(*)) bad}),
	'0',
	'every stream is still gapless');

# Positions after the restart continue above every position stored before.
my $max_before = $node->safe_psql('postgres', 'SELECT max(global_position) FROM ws.crash_events');
is($node->safe_psql('postgres', q{SELECT ws.safe_position('crash')}),
	$max_before, 'after restart the safe position is the highest stored position');
$node->safe_psql('postgres',
	q{SELECT ws.append('crash', 'after', 0, '{"type": "T", "data": {}}')});
cmp_ok(
	$node->safe_psql('postgres',
		q{SELECT global_position FROM ws.crash_events WHERE stream = 'after'}),
	'>', $max_before, 'a new append gets a position above all earlier ones');
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) = (SELECT count(*) FROM ws.crash_events)
	FROM ws.read_all('crash', 0, NULL)}),
	't',
	'read_all returns every event after the restart');

# After a restart, the first append numbers from the table's real maximum,
# not from a max() planted on that session's search_path.
$node->restart;
$node->safe_psql('postgres', q{
	CREATE FUNCTION planted_max(bigint, bigint) RETURNS bigint LANGUAGE plpgsql
	AS $$ BEGIN RAISE EXCEPTION 'planted aggregate called'; END $$;
	CREATE AGGREGATE public.max(bigint) (SFUNC = planted_max, STYPE = bigint);
});
my $last = $node->safe_psql('postgres', 'SELECT pg_catalog.max(global_position) FROM ws.crash_events');
my ($rc, $out, $err) = $node->psql('postgres', q{
	SET search_path = public, pg_catalog;
	SELECT ws.append('crash', 'planted', 0, '{"type": "T", "data": {}}');
});
is($rc, 0, 'the first append after a restart ignores a max() planted on its search_path')
  or diag($err);
is( $node->safe_psql(
		'postgres', q{SELECT global_position FROM ws.crash_events WHERE stream = 'planted'}),
	$last + 1,
	'and numbers from the real maximum');

$node->stop;
done_testing();

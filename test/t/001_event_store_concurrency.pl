# Concurrent appends: 8 sessions append to the same 10 streams with
# read-then-append retry loops.  Every stream must end with versions 1..n,
# without a gap or a duplicate, and every successful append must be stored.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('concurrency');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'write_scaling'");
$node->start;

$node->safe_psql('postgres', q{
	CREATE EXTENSION write_scaling;
	SELECT ws.create_event_store('conc');
	CREATE TABLE acked (stream text, version bigint, session int);
	-- One append with the usual optimistic loop: read the version, append at
	-- it, and on a version conflict read again.
	CREATE FUNCTION append_with_retry(stream text, OUT attempts int)
	LANGUAGE plpgsql AS $$
	DECLARE
		v bigint;
	BEGIN
		attempts := 0;
		LOOP
			attempts := attempts + 1;
			v := ws.stream_version('conc', stream);
			BEGIN
				PERFORM ws.append('conc', stream, v,
					jsonb_build_object('type', 'Incremented',
									   'data', jsonb_build_object('from', v)));
				INSERT INTO acked VALUES (stream, v + 1, pg_backend_pid());
				RETURN;
			EXCEPTION WHEN SQLSTATE 'WS001' THEN
				-- somebody else appended first: read again
			END;
		END LOOP;
	END
	$$;
});

my $clients = 8;
my $per_client = 400;
$node->pgbench(
	"--no-vacuum --client=$clients --jobs=2 --transactions=$per_client",
	0,
	[qr{processed: @{[ $clients * $per_client ]}/@{[ $clients * $per_client ]}}],
	[qr{^$}],
	'8 sessions append to 10 streams with retry loops',
	{
		'001_append_retry' => q{
\set s random(1, 10)
SELECT append_with_retry('stream-' || :s);
}
	});

my $total = $clients * $per_client;
is($node->safe_psql('postgres', 'SELECT count(*) FROM ws.conc_events'),
	$total, 'one stored event per successful append');
is($node->safe_psql('postgres', 'SELECT count(*) FROM acked'),
	$total, 'every append returned success once');

is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM (
		SELECT stream FROM ws.conc_events GROUP BY stream
		HAVING count(*) <> max(version) OR count(DISTINCT version) <> count(*)
		   OR min(version) <> 1) bad}),
	'0',
	'every stream has versions 1..n without gap or duplicate');

is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM acked a
	FULL JOIN ws.conc_events e USING (stream, version)
	WHERE a.stream IS NULL OR e.stream IS NULL}),
	'0',
	'the acknowledged (stream, version) pairs are exactly the stored ones');

is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM ws.conc_events e
	WHERE (e.data->>'from')::bigint <> e.version - 1}),
	'0',
	'each event was appended at the version its writer read');

# Every event is read exactly once by a global reader, in position order.
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) = count(DISTINCT global_position)
	   AND count(*) = (SELECT count(*) FROM ws.conc_events)
	FROM ws.read_all('conc', 0, NULL)}),
	't',
	'read_all returns every event once');

my $conflicts = $node->safe_psql('postgres',
	q{SELECT version_conflicts FROM ws.stat_event_stores WHERE store = 'conc'});
note("version conflicts retried: $conflicts");

# Batches with expected version "any" from 8 sessions: still gapless.
$node->pgbench(
	"--no-vacuum --client=$clients --jobs=2 --transactions=100",
	0,
	[qr{processed: 800/800}],
	[qr{^$}],
	'8 sessions append batches of 10 at any version',
	{
		'001_append_batch' => q{
\set s random(1, 10)
SELECT ws.append('conc', 'batch-' || :s, NULL,
	(SELECT jsonb_agg(jsonb_build_object('type', 'Batched', 'data', i)) FROM generate_series(1, 10) i));
}
	});
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) || ' ' || sum(n) FROM (
		SELECT stream, count(*) AS n FROM ws.conc_events WHERE stream LIKE 'batch-%'
		GROUP BY stream
		HAVING count(*) = max(version) AND count(DISTINCT version) = count(*)) ok}),
	'10 8000',
	'batch streams are gapless and hold all 8000 events');

$node->stop;
done_testing();

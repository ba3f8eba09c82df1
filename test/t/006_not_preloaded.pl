# Without shared_preload_libraries: what needs shared memory says so with
# SQLSTATE 55000, and everything else works.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('plain');
$node->init;
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION write_scaling;
	SELECT ws.create_event_store('plain');
	CREATE TABLE t (id int, v text);
});

my ($ret, $stdout, $stderr) = $node->psql('postgres',
	q{SELECT ws.append('plain', 's', 0, '{"type": "A", "data": {}}')},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($stderr, qr/55000: appending to or reading an event store requires write_scaling to be loaded via shared_preload_libraries/,
	'append says that it needs preloading, with 55000');
like($stderr, qr/HINT:  Add write_scaling to shared_preload_libraries/, 'and how to fix it');
is($node->safe_psql('postgres', q{SELECT count(*) FROM ws.read_stream('plain', 's')}), '0',
	'read_stream works');
is($node->safe_psql('postgres', q{SELECT ws.stream_version('plain', 's')}), '0',
	'stream_version works');
is($node->safe_psql('postgres', q{SELECT ws.copy_rows('t', ARRAY[ROW(1, 'a'), ROW(2, 'b')]::t[])}), '2',
	'the buffered path works');
is($node->safe_psql('postgres', q{SELECT count(*) FILTER (WHERE value <> 0) || '/' || count(*) FILTER (WHERE area = 'buffered_insert') FROM ws.stats}),
	'0/0', 'ws.stats shows zeros and no shared bulk counters');
is($node->safe_psql('postgres', q{SELECT count(*) FROM ws.wal_report()}), '11',
	'wal_report works');

$node->stop;
done_testing();

# More databases than worker slots: the launcher warns and retries, and the
# server keeps running.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('limits');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'write_scaling'
max_worker_processes = 3
write_scaling.launcher_naptime = 200ms
});
$node->start;
my $started = $node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()');

# postgres, and four more databases: more workers than max_worker_processes.
for my $db (qw(d1 d2 d3 d4))
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, 'CREATE EXTENSION write_scaling');
}
my $offset = -s $node->logfile;
$node->wait_for_log(qr/could not start a write_scaling worker for database/, 0);
$node->wait_for_log(qr/could not start a write_scaling worker for database/, $offset);
ok(1, 'the launcher warns when no worker slot is free, and tries again');
is($node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()'), $started,
	'the server did not restart');
unlike(PostgreSQL::Test::Utils::slurp_file($node->logfile), qr/terminated by signal/,
	'no process crashed');

$node->stop;
done_testing();

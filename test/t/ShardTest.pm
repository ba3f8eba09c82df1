# Helpers of the sharding TAP tests that run a coordinator and shards of
# their own: the clusters, and four sessions writing one row at once.
package ShardTest;

use strict;
use warnings;
use Exporter 'import';
use PostgreSQL::Test::Cluster;
use Test::More;

our @EXPORT = qw(start_shards four_sessions_at_once);

# start_shards(\@names, @shard_conf): a coordinator with write_scaling
# preloaded and postgres_fdw installed, and a plain cluster per name (with
# the postgresql.conf lines @shard_conf), which the coordinator reaches
# through a foreign server of that name.  Returns the coordinator and a
# reference to a hash of the shards by name.
sub start_shards
{
	my ($names, @shard_conf) = @_;
	my $osuser = getpwuid($>);
	my $coord = PostgreSQL::Test::Cluster->new('coordinator');
	$coord->init;
	$coord->append_conf('postgresql.conf', "shared_preload_libraries = 'write_scaling'");
	$coord->start;
	$coord->safe_psql('postgres', q{
		CREATE EXTENSION postgres_fdw;
		CREATE EXTENSION write_scaling;
	});
	my %shard;
	for my $name (@$names)
	{
		my $node = PostgreSQL::Test::Cluster->new("shard_$name");
		$node->init;
		$node->append_conf('postgresql.conf', $_) for @shard_conf;
		$node->start;
		$shard{$name} = $node;
		$coord->safe_psql('postgres', sprintf(q{
			CREATE SERVER %s FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '%s', port '%s', dbname 'postgres');
			CREATE USER MAPPING FOR CURRENT_USER SERVER %s OPTIONS (user '%s');},
			$name, $node->host, $node->port, $name, $osuser));
	}
	return ($coord, \%shard);
}

# four_sessions_at_once($coord, $shard, $sql, $times, $what): four sessions
# on the coordinator each run $sql $times times, every statement its own
# transaction, and none may fail.  A fifth holds the row ($sql in a
# transaction left open) until all four wait for it on $shard, the node
# that holds it, so that they start together.
sub four_sessions_at_once
{
	my ($coord, $shard, $sql, $times, $what) = @_;
	my $holder = $coord->background_psql('postgres');
	$holder->query_safe("BEGIN; $sql");
	my @sessions;
	for (1 .. 4)
	{
		my $psql = $coord->background_psql('postgres');
		$psql->query_until(qr/go/, "\\echo go\n" . ("$sql\n" x $times) . "\\echo done\n");
		push @sessions, $psql;
	}
	ok($shard->poll_query_until('postgres', q{
		SELECT count(*) = 4 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND application_name = 'write_scaling'}),
		"$what: the four sessions wait on the shard for the holder of the row");
	$holder->query_safe('COMMIT');
	$holder->quit;
	for my $psql (@sessions)
	{
		like($psql->query_until(qr/done/, ''), qr/done/, "$what: a session finished");
		is($psql->{stderr}, '', "$what: without an error");
		$psql->quit;
	}
	return;
}

1;

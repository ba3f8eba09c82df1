# The snapshot worker: it keeps every stream within "every" events of its
# snapshot, comes back when killed and after a crash, skips a stream whose
# reducer fails (recording why) while the others go on, and obeys SIGHUP.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $every = 50;
my $node = PostgreSQL::Test::Cluster->new('snapshots');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'write_scaling'
write_scaling.snapshot_naptime = 100ms
write_scaling.launcher_naptime = 1s
});
$node->start;

$node->safe_psql('postgres', qq{
	CREATE EXTENSION write_scaling;
	SELECT ws.create_event_store('acct');
	-- Fails on events of type 'Poison', so one stream can be made to fail.
	CREATE FUNCTION balance(state jsonb, e ws.event) RETURNS jsonb LANGUAGE plpgsql AS \$\$
	BEGIN
		IF e.type = 'Poison' THEN
			RAISE EXCEPTION 'cannot fold a poison event' USING ERRCODE = 'data_exception';
		END IF;
		RETURN jsonb_build_object(
			'balance', coalesce((state->>'balance')::bigint, 0) + (e.data->>'amount')::bigint,
			'n', coalesce((state->>'n')::int, 0) + 1,
			'by', current_user);
	END \$\$;
	-- The worker runs reducers as their owner, not as itself.
	CREATE ROLE reducer_owner;
	ALTER FUNCTION balance(jsonb, ws.event) OWNER TO reducer_owner;
	-- The full replay, computed without the extension.
	CREATE FUNCTION replay(s text, upto bigint) RETURNS jsonb LANGUAGE sql AS \$\$
		SELECT jsonb_build_object('balance', sum((data->>'amount')::bigint), 'n', count(*))
		FROM ws.acct_events WHERE stream = s AND version <= upto
	\$\$;
	SELECT ws.set_snapshot_policy('acct', 'balance(jsonb, ws.event)', every => $every);
});

# Every stream within "every" events of a snapshot, nothing queued.
my $caught_up = qq{
	SELECT bool_and(coalesce(s.version, 0) > v.version - $every)
	   AND (SELECT count(*) FROM ws.snapshot_queue WHERE last_error IS NULL) = 0
	FROM (SELECT stream, max(version) AS version FROM ws.acct_events
		  WHERE stream <> 'poisoned' GROUP BY stream) v
	LEFT JOIN ws.snapshots s ON s.store = 'acct' AND s.stream = v.stream};
# Every snapshot equals the replay up to its version.
my $consistent = q{
	SELECT count(*) FROM ws.snapshots s WHERE s.state - 'by' <> replay(s.stream, s.version)};

sub worker_pid
{
	return $node->safe_psql('postgres',
		q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'write_scaling snapshot worker' AND datname = 'postgres'});
}

# 10,000 events over 100 streams from 4 sessions.
$node->pgbench(
	'--no-vacuum --client=4 --jobs=2 --transactions=2500',
	0,
	[qr{processed: 10000/10000}],
	[qr{^$}],
	'10,000 events appended over 100 streams',
	{
		'004_append' => q{
\set s random(1, 100)
\set amount random(-50, 100)
SELECT ws.append('acct', 'account-' || :s, NULL, jsonb_build_object('type', 'Posted', 'data', jsonb_build_object('amount', :amount)));
}
	});

ok($node->poll_query_until('postgres', $caught_up),
	'every stream gets a snapshot no more than "every" events behind');
is($node->safe_psql('postgres', $consistent), '0', 'every snapshot equals the replay up to its version');
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM (SELECT DISTINCT stream FROM ws.acct_events) v, ws.load('acct', v.stream) l
	WHERE l.state - 'by' <> replay(v.stream, l.version)
	   OR l.version <> (SELECT max(version) FROM ws.acct_events e WHERE e.stream = v.stream)}),
	'0',
	'load equals the full replay for every stream');
cmp_ok($node->safe_psql('postgres', q{SELECT snapshots_taken FROM ws.stat_workers WHERE database = 'postgres'}),
	'>=', 100, 'ws.stat_workers counts the snapshots');
is($node->safe_psql('postgres', q{SELECT string_agg(DISTINCT state->>'by', ',') FROM ws.snapshots}),
	'reducer_owner', 'the worker ran the reducer as its owner');
ok($node->poll_query_until('postgres', q{SELECT streams_behind = 0 FROM ws.stat_workers WHERE database = 'postgres'}),
	'ws.stat_workers shows no stream behind');

# Kill the worker: the launcher starts a new one, which carries on.
my $pid = worker_pid();
ok($pid, "the worker runs (pid $pid)");
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok( $node->poll_query_until(
		'postgres', qq{
	SELECT count(*) = 1 FROM pg_stat_activity
	WHERE backend_type = 'write_scaling snapshot worker' AND datname = 'postgres' AND pid <> $pid}),
	'a new worker replaces the killed one');
$node->safe_psql('postgres',
	q{SELECT ws.append('acct', 'account-1', NULL, jsonb_build_object('type', 'Posted', 'data', jsonb_build_object('amount', 1))) FROM generate_series(1, 120)});
ok($node->poll_query_until('postgres', $caught_up), 'the new worker catches up');

# A restarted launcher leaves the running worker alone.
my $launcher = $node->safe_psql('postgres', q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'write_scaling launcher'});
$node->safe_psql('postgres', "SELECT pg_terminate_backend($launcher)");
ok( $node->poll_query_until(
		'postgres', qq{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'write_scaling launcher' AND pid <> $launcher}),
	'the postmaster restarts the launcher');

# A reducer error on one stream: recorded, the others go on.
$node->safe_psql('postgres', qq{
	SELECT ws.append('acct', 'poisoned', 0, '[{"type": "Poison", "data": {"amount": 0}}]');
	SELECT ws.append('acct', 'poisoned', NULL, jsonb_build_object('type', 'Posted', 'data', jsonb_build_object('amount', 1)))
	FROM generate_series(1, $every);
	SELECT ws.append('acct', 'account-2', NULL, jsonb_build_object('type', 'Posted', 'data', jsonb_build_object('amount', 1)))
	FROM generate_series(1, $every);
});
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 1 FROM ws.snapshot_errors WHERE stream = 'poisoned' AND sqlstate = '22000'}),
	'the failing stream shows in ws.snapshot_errors with its SQLSTATE');
like($node->safe_psql('postgres', q{SELECT error FROM ws.snapshot_errors WHERE stream = 'poisoned'}),
	qr/cannot fold a poison event/, 'with the reducer\'s message');
ok( $node->poll_query_until(
		'postgres', q{
	SELECT s.version = (SELECT max(version) FROM ws.acct_events WHERE stream = 'account-2')
	FROM ws.snapshots s WHERE s.store = 'acct' AND s.stream = 'account-2'}),
	'other streams are still snapshotted');
is($node->safe_psql('postgres', q{SELECT count(*) FROM ws.snapshots WHERE stream = 'poisoned'}),
	'0', 'no snapshot of the failing stream');
cmp_ok($node->safe_psql('postgres', q{SELECT errors FROM ws.stat_workers WHERE database = 'postgres'}),
	'>=', 1, 'ws.stat_workers counts the error');
is($node->safe_psql('postgres', 'SELECT count(*) FROM pg_stat_activity WHERE backend_type = \'write_scaling snapshot worker\''),
	'1', 'the worker survived the reducer error, and the new launcher started no second one');

# Crash in the middle of appends: snapshots stay consistent and the worker
# comes back with the server.
$node->safe_psql('postgres', q{DELETE FROM ws.snapshot_queue WHERE stream = 'poisoned'});
$node->pgbench(
	'--no-vacuum --client=2 --jobs=2 --transactions=1000',
	0,
	[qr{processed: 2000/2000}],
	[qr{^$}],
	'more appends before the crash',
	{
		'004_append_more' => q{
\set s random(1, 100)
SELECT ws.append('acct', 'account-' || :s, NULL, '{"type": "Posted", "data": {"amount": 3}}');
}
	});
$node->stop('immediate');
$node->start;
is($node->safe_psql('postgres', $consistent), '0', 'after the crash every snapshot still equals the replay');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'write_scaling snapshot worker' AND datname = 'postgres'}),
	'the worker is back after the restart');
ok($node->poll_query_until('postgres', $caught_up), 'and catches up');

# SIGHUP: the off switch stops the worker, switching it on brings it back.
$node->append_conf('postgresql.conf', 'write_scaling.workers = off');
$node->reload;
ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'write_scaling snapshot worker'}),
	'write_scaling.workers = off stops the worker on reload');
$node->append_conf('postgresql.conf', 'write_scaling.workers = on');
$node->reload;
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'write_scaling snapshot worker'}),
	'write_scaling.workers = on starts it again');

# A database created later gets its worker without a restart.
$node->safe_psql('postgres', 'CREATE DATABASE later');
$node->safe_psql('later', 'CREATE EXTENSION write_scaling');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'write_scaling snapshot worker' AND datname = 'later'}),
	'CREATE EXTENSION in a new database starts its worker');

$node->stop;
done_testing();

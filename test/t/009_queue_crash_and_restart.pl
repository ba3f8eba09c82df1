# The async write queue across failures: an immediate shutdown in the
# middle of a drain (with an enqueuer still running), queue workers
# terminated or SIGKILLed mid-batch, and write_scaling.queue_workers changed
# while messages flow.  Every time: no accepted message lost, none applied
# twice, the messages of a key applied in enqueue order.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

my $node = PostgreSQL::Test::Cluster->new('queue_crash');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'write_scaling'
max_worker_processes = 16
write_scaling.launcher_naptime = 200ms
write_scaling.queue_rotation = 300ms
write_scaling.snapshot_naptime = 100ms
write_scaling.queue_naptime = 200ms
restart_after_crash = on
});
$node->start;

$node->safe_psql('postgres', q{
	CREATE EXTENSION write_scaling;

	-- Accepted messages, written in the enqueueing transaction.
	CREATE TABLE sent (request_id bigint PRIMARY KEY, key text NOT NULL, seq int NOT NULL);
	CREATE INDEX ON sent (key, seq);

	-- Applications, without a unique key: a message applied twice shows as
	-- two rows (a unique key would turn it into a handler error and a retry).
	CREATE SEQUENCE apply_order;
	CREATE TABLE applied (
		request_id bigint NOT NULL,
		key text NOT NULL,
		seq int NOT NULL,
		prev_request_id bigint NOT NULL,
		applied_order bigint NOT NULL DEFAULT nextval('apply_order'),
		applied_by int NOT NULL DEFAULT pg_backend_pid());
	CREATE INDEX ON applied (key, request_id);

	-- Slow enough (a 1 ms sleep every 3rd message) that a drain takes seconds.
	CREATE FUNCTION apply_slowly(k text, payload jsonb, request_id bigint, attempt int)
	RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		IF request_id % 3 = 0 THEN
			PERFORM pg_sleep(0.001);
		END IF;
		INSERT INTO applied (request_id, key, seq, prev_request_id)
		VALUES (apply_slowly.request_id, k, (payload->>'seq')::int,
				coalesce((SELECT max(a.request_id) FROM applied a WHERE a.key = k), 0));
	END $$;
	SELECT ws.create_topic('slow', 'apply_slowly(text, jsonb, bigint, int)', partitions => 64);

	-- n messages round robin over keys prefix0 .. prefix<nkeys-1>, each key's
	-- seq going on from the last one sent, in one transaction.
	CREATE FUNCTION enqueue_n(prefix text, nkeys int, n int) RETURNS bigint LANGUAGE sql AS $$
		WITH m AS (
			SELECT i + 1 AS o, prefix || (i % nkeys) AS key,
				   (SELECT coalesce(max(s.seq), 0) FROM sent s WHERE s.key = prefix || (i % nkeys))
				   + i / nkeys + 1 AS seq
			FROM generate_series(0, n - 1) i),
		e AS (
			SELECT * FROM ws.enqueue_batch('slow',
				(SELECT array_agg(key ORDER BY o) FROM m),
				(SELECT array_agg(jsonb_build_object('seq', seq) ORDER BY o) FROM m))
			WITH ORDINALITY AS e(id, o)),
		ins AS (INSERT INTO sent SELECT e.id, m.key, m.seq FROM e JOIN m USING (o) RETURNING 1)
		SELECT count(*) FROM ins
	$$;

	-- What went wrong, in one line: messages applied twice, accepted but not
	-- applied, applied but never accepted, applied out of order.
	CREATE FUNCTION verdict() RETURNS text LANGUAGE sql AS $$
		SELECT format('twice=%s lost=%s unknown=%s out_of_order=%s',
			(SELECT count(*) - count(DISTINCT request_id) FROM applied),
			(SELECT count(*) FROM sent s WHERE NOT EXISTS (SELECT FROM applied a WHERE a.request_id = s.request_id)),
			(SELECT count(*) FROM applied a WHERE NOT EXISTS
				(SELECT FROM sent s WHERE s.request_id = a.request_id AND s.key = a.key AND s.seq = a.seq)),
			(SELECT count(*) FROM (
				SELECT request_id, prev_request_id,
					   lag(request_id) OVER (PARTITION BY key ORDER BY applied_order) AS before
				FROM applied) x
			 WHERE prev_request_id >= request_id OR before >= request_id))
	$$;
});
my $clean = 'twice=0 lost=0 unknown=0 out_of_order=0';
my $drained = q{SELECT NOT EXISTS (SELECT FROM ws.queue)};

sub queue_workers
{
	return $node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'write_scaling queue worker' AND datname = 'postgres'});
}

sub worker_pids
{
	return $node->safe_psql('postgres',
		q{SELECT string_agg(pid::text, ',' ORDER BY worker) FROM ws.stat_queue_workers
		  WHERE database = 'postgres' AND pid IS NOT NULL});
}

sub applied_count
{
	return $node->safe_psql('postgres', 'SELECT count(*) FROM applied');
}

ok($node->poll_query_until('postgres', q{SELECT count(*) = 2 FROM pg_stat_activity WHERE backend_type = 'write_scaling queue worker'}),
	'two queue workers run');

# c) Immediate shutdown in the middle of a drain, an enqueuer still running
# (one message every 2 ms or so, each in its own transaction).
my $live_sql = "$PostgreSQL::Test::Utils::tmp_check/009_live_enqueues.sql";
open(my $fh, '>', $live_sql) or die "could not write $live_sql: $!";
for my $i (1 .. 30000)
{
	my $k = 'live' . ($i % 10);
	print $fh "INSERT INTO sent SELECT ws.enqueue('slow', '$k', '{\"seq\": $i}'), '$k', $i FROM pg_sleep(0.002) RETURNING request_id;\n";
}
close($fh);
my ($live_out, $live_err) = ('', '');
my $live = IPC::Run::start(
	[ 'psql', '-XAtq', '-d', $node->connstr('postgres'), '-f', $live_sql ],
	'>', \$live_out, '2>', \$live_err);

for (1 .. 4)
{
	$node->safe_psql('postgres', q{SELECT enqueue_n('k', 200, 5000)});
}
ok($node->poll_query_until('postgres', 'SELECT count(*) >= 2000 FROM applied'),
	'the workers are applying');
ok($node->poll_query_until('postgres', q{SELECT count(*) > 0 FROM sent WHERE key LIKE 'live%'}),
	'the live enqueuer is enqueueing');
my $left = $node->safe_psql('postgres', 'SELECT count(*) FROM ws.queue');
my $applying = $node->safe_psql('postgres',
	q{SELECT count(*) FROM ws.stat_queue_workers WHERE database = 'postgres' AND state = 'applying'});
cmp_ok($left, '>', 5000, "many messages still queued at the crash ($left)");
note("workers applying a batch just before the crash: $applying");
$node->stop('immediate');
$live->finish;
my @acked = grep { /^\d+$/ } split /\n/, $live_out;
note('live enqueuer: ' . scalar(@acked) . " acknowledged; its last words: $live_err");
cmp_ok(scalar(@acked), '>', 0, 'the live enqueuer had enqueues acknowledged before the crash');
cmp_ok(scalar(@acked), '<', 30000, 'and was cut off by the crash');

$node->start;
ok($node->poll_query_until('postgres', q{SELECT count(*) = 2 FROM pg_stat_activity WHERE backend_type = 'write_scaling queue worker'}),
	'the queue workers are back after the restart');
ok($node->poll_query_until('postgres', $drained), 'and drain the queue');
is($node->safe_psql('postgres', 'SELECT verdict()'), $clean,
	'after the crash: every accepted message applied exactly once, in order per key');
is( $node->safe_psql(
		'postgres',
		'SELECT count(*) FROM unnest(ARRAY[' . join(',', @acked) . ']::bigint[]) id
		 WHERE NOT EXISTS (SELECT FROM applied a WHERE a.request_id = id)'),
	'0',
	'every acknowledged enqueue of the live session was applied');
is( $node->safe_psql('postgres', q{SELECT count(*) FROM sent WHERE key LIKE 'k%'}),
	20000, 'the 20000 bulk messages are all there');
is($node->safe_psql('postgres', 'SELECT count(*) FROM ws.dead_letters'), '0', 'nothing dead-lettered');

# d) A queue worker terminated mid-batch comes back and carries on.
my $before = applied_count();
$node->safe_psql('postgres', q{SELECT enqueue_n('k', 200, 6000)});
ok($node->poll_query_until('postgres', 'SELECT count(*) >= ' . ($before + 500) . ' FROM applied'),
	'a new drain is under way');
my $old_pids = worker_pids();
like($old_pids, qr/^\d+,\d+$/, "ws.stat_queue_workers shows both workers' pids ($old_pids)");
$node->safe_psql('postgres',
	q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'write_scaling queue worker'});
ok( $node->poll_query_until(
		'postgres', qq{
	SELECT count(*) = 2 FROM pg_stat_activity
	WHERE backend_type = 'write_scaling queue worker' AND pid NOT IN ($old_pids)}),
	'the launcher starts new queue workers');
my $new_pids = worker_pids();
ok( $new_pids =~ /^(\d+),(\d+)$/ && !grep({ $_ == $1 || $_ == $2 } split(/,/, $old_pids)),
	"ws.stat_queue_workers shows the new pids ($new_pids)");
$node->safe_psql('postgres', q{SELECT enqueue_n('k', 200, 2000)});
ok($node->poll_query_until('postgres', $drained), 'the new workers drain the queue, old and new messages');
is($node->safe_psql('postgres', 'SELECT verdict()'), $clean,
	'after the terminations: every message applied exactly once, in order per key');
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 2 FROM ws.stat_queue_workers WHERE database = 'postgres' AND applied > 0}),
	'both new workers applied messages');

# A queue worker SIGKILLed mid-batch: the postmaster restarts every process.
$before = applied_count();
$node->safe_psql('postgres', q{SELECT enqueue_n('k', 200, 6000)});
ok($node->poll_query_until('postgres', 'SELECT count(*) >= ' . ($before + 500) . ' FROM applied'),
	'another drain is under way');
my ($victim) = split /,/, worker_pids();
my $offset = -s $node->logfile;
kill 'KILL', $victim;
$node->wait_for_log(qr/all server processes terminated; reinitializing/, $offset);
ok(1, "SIGKILL of queue worker $victim makes the server reinitialize");
ok( $node->poll_query_until(
		'postgres', qq{
	SELECT count(*) = 2 FROM pg_stat_activity
	WHERE backend_type = 'write_scaling queue worker' AND pid <> $victim}),
	'the queue workers come back after the crash restart');
$node->safe_psql('postgres', q{SELECT enqueue_n('k', 200, 1000)});
ok($node->poll_query_until('postgres', $drained), 'and drain the queue');
is($node->safe_psql('postgres', 'SELECT verdict()'), $clean,
	'after the SIGKILL: every message applied exactly once, in order per key');

# e) write_scaling.queue_workers 2 -> 3 -> 1 while messages flow.
$before = applied_count();
$node->safe_psql('postgres', q{SELECT enqueue_n('k', 200, 16000)});
ok($node->poll_query_until('postgres', 'SELECT count(*) >= ' . ($before + 500) . ' FROM applied'),
	'a drain is under way');
$node->safe_psql('postgres', 'ALTER SYSTEM SET write_scaling.queue_workers = 3');
$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 3 FROM pg_stat_activity WHERE backend_type = 'write_scaling queue worker'}),
	'queue_workers = 3: a third worker starts');
ok( $node->poll_query_until(
		'postgres', q{SELECT applied > 0 FROM ws.stat_queue_workers WHERE database = 'postgres' AND worker = 3}),
	'and applies messages');
cmp_ok($node->safe_psql('postgres', 'SELECT count(*) FROM ws.queue'), '>', 0, 'messages still queued when going down to 1');
$node->safe_psql('postgres', 'ALTER SYSTEM SET write_scaling.queue_workers = 1');
$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'write_scaling queue worker'}),
	'queue_workers = 1: two workers stop');
is( $node->safe_psql(
		'postgres', q{SELECT string_agg(worker::text, ',') FROM ws.stat_queue_workers WHERE database = 'postgres' AND pid IS NOT NULL}),
	'1', 'worker 1 is the one left');
$node->safe_psql('postgres', q{SELECT enqueue_n('k', 200, 1000)});
ok($node->poll_query_until('postgres', $drained), 'the one worker drains the queue, every lane');
is($node->safe_psql('postgres', 'SELECT verdict()'), $clean,
	'across the changes: every message applied exactly once, in order per key');
is($node->safe_psql('postgres', 'SELECT count(*) FROM ws.dead_letters'), '0', 'nothing dead-lettered');
is( $node->safe_psql('postgres', q{SELECT count(*) FROM sent WHERE key LIKE 'k%'}),
	20000 + 6000 + 2000 + 6000 + 1000 + 16000 + 1000, 'and every bulk message is accounted for');

is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM ws.queue_rotation r, unnest(r.retired_at) t WHERE r.log = 'queue' AND t > '-infinity'}),
	'3',
	'meanwhile ws.queue went through its three slots, truncating the drained ones');

my $log = slurp_file($node->logfile);
my $overlaps = () = $log =~ /left ws\.queue meanwhile/g;
note("batches rolled back because another worker had applied their messages: $overlaps");
my $moved = () = $log =~ /deadlock detected|already moved to another partition/g;
note("batches rolled back on a conflict with the rotation of ws.queue: $moved");
unlike($log, qr/terminated by signal (?!9)\d+|PANIC/, 'no process crashed but the one killed');

$node->stop;
done_testing();

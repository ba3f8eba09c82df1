# The async write queue: every message applied exactly once, the messages
# of a key in enqueue order, with 8 sessions enqueueing at once; a handler
# that fails for some keys: retries, dead letters with the error, the other
# keys going on, and a replay that brings the dead letters through once, in
# order.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('queue_ordering');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'write_scaling'
max_worker_processes = 16
write_scaling.launcher_naptime = 200ms
write_scaling.queue_rotation = 300ms
});
$node->start;

my $sessions = 8;
my $nkeys = 1000;
my $per_session = 12500;
my $total = $sessions * $per_session;

$node->safe_psql('postgres', q{
	CREATE EXTENSION write_scaling;

	-- What the sessions enqueued, written in the enqueueing transaction: a
	-- row is here exactly when its message was accepted.
	CREATE TABLE sent (request_id bigint PRIMARY KEY, key text NOT NULL, seq int NOT NULL);

	-- What the handler applied, in application order (applied_order), with
	-- the key's last applied seq and request id at that moment.
	CREATE SEQUENCE apply_order;
	CREATE TABLE applied (
		request_id bigint PRIMARY KEY,
		key text NOT NULL,
		seq int NOT NULL,
		prev_seq int NOT NULL,
		prev_request_id bigint NOT NULL,
		attempt int NOT NULL,
		rolled_back boolean NOT NULL,
		applied_order bigint NOT NULL DEFAULT nextval('apply_order'),
		applied_by int NOT NULL DEFAULT pg_backend_pid());
	-- One index per max() below, so that each is one index probe whatever
	-- plan the handler's statement gets.
	CREATE INDEX ON applied (key, seq);
	CREATE INDEX ON applied (key, request_id);

	CREATE FUNCTION apply_msg(k text, payload jsonb, request_id bigint, attempt int)
	RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO applied (request_id, key, seq, prev_seq, prev_request_id, attempt, rolled_back)
		VALUES (apply_msg.request_id, k, (payload->>'seq')::int,
				coalesce((SELECT max(a.seq) FROM applied a WHERE a.key = k), 0),
				coalesce((SELECT max(a.request_id) FROM applied a WHERE a.key = k), 0),
				apply_msg.attempt, coalesce((payload->>'rolled_back')::boolean, false));
	END $$;
	SELECT ws.create_topic('orders', 'apply_msg(text, jsonb, bigint, int)');

	-- One enqueueing session: key 'k<i>' belongs to session i % 8, and gets
	-- seq 1, 2, 3... in the order the session enqueues it.  Transactions of
	-- 1 to 300 messages, some with ws.enqueue, some with ws.enqueue_batch,
	-- some mixed; now and then an enqueue rolled back with its
	-- subtransaction, or a whole transaction rolled back.
	CREATE PROCEDURE enqueue_session(s int, total int, nkeys int)
	LANGUAGE plpgsql AS $$
	DECLARE
		own int[] := ARRAY(SELECT k FROM generate_series(0, nkeys - 1) k WHERE k % 8 = s);
		seqs int[];
		saved int[];
		done int := 0;
		tx int := 0;
		size int;
		mode int;
		j int;
		k text;
		ks text[];
		ps jsonb[];
		qs int[];
		ids bigint[];
	BEGIN
		seqs := array_fill(0, ARRAY[cardinality(own)]);
		WHILE done < total LOOP
			tx := tx + 1;
			size := least(total - done, 1 + (tx * 7919 + s * 31) % 300);
			mode := (tx + s) % 3;		-- 0 single, 1 array, 2 mixed
			saved := seqs;
			ks := '{}'; ps := '{}'; qs := '{}';
			FOR i IN 1..size LOOP
				j := 1 + floor(random() * cardinality(own))::int;
				seqs[j] := seqs[j] + 1;
				k := 'k' || own[j];
				IF mode = 0 OR (mode = 2 AND i % 4 = 0) THEN
					IF cardinality(ks) > 0 THEN
						SELECT array_agg(e.id ORDER BY e.o) INTO ids
						FROM ws.enqueue_batch('orders', ks, ps) WITH ORDINALITY AS e(id, o);
						INSERT INTO sent SELECT * FROM unnest(ids, ks, qs);
						ks := '{}'; ps := '{}'; qs := '{}';
					END IF;
					INSERT INTO sent VALUES
						(ws.enqueue('orders', k, jsonb_build_object('seq', seqs[j])), k, seqs[j]);
				ELSE
					ks := ks || k;
					ps := ps || jsonb_build_object('seq', seqs[j]);
					qs := qs || seqs[j];
				END IF;
			END LOOP;
			IF cardinality(ks) > 0 THEN
				SELECT array_agg(e.id ORDER BY e.o) INTO ids
				FROM ws.enqueue_batch('orders', ks, ps) WITH ORDINALITY AS e(id, o);
				INSERT INTO sent SELECT * FROM unnest(ids, ks, qs);
			END IF;
			IF tx % 5 = 0 THEN
				-- An enqueue undone with its subtransaction.
				BEGIN
					PERFORM ws.enqueue('orders', 'k' || own[1], '{"seq": -1, "rolled_back": true}');
					PERFORM ws.enqueue_batch('orders', ARRAY['k' || own[2]], ARRAY['{"seq": -2, "rolled_back": true}'::jsonb]);
					RAISE EXCEPTION 'undo';
				EXCEPTION WHEN raise_exception THEN
					NULL;
				END;
			END IF;
			IF tx % 11 = 0 THEN
				-- The whole transaction rolled back: its seqs are given again.
				ROLLBACK;
				seqs := saved;
			ELSE
				COMMIT;
				done := done + size;
			END IF;
		END LOOP;
	END $$;
});

ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 2 FROM pg_stat_activity WHERE backend_type = 'write_scaling queue worker'}),
	'two queue workers start with the first topic');

# a) 100,000 messages over 1,000 keys from 8 sessions at once.
$node->pgbench(
	"--no-vacuum --client=$sessions --jobs=2 --transactions=1",
	0,
	[qr{processed: $sessions/$sessions}],
	[qr{^$}],
	"$sessions sessions enqueue $total messages over $nkeys keys",
	{ '008_enqueue' => "CALL enqueue_session(:client_id, $per_session, $nkeys);\n" });

is($node->safe_psql('postgres', 'SELECT count(*) || \' \' || count(DISTINCT key) FROM sent'),
	"$total $nkeys", "$total messages accepted over $nkeys keys");

ok($node->poll_query_until('postgres', q{SELECT NOT EXISTS (SELECT FROM ws.queue)}),
	'the workers drain the queue');

is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM sent s FULL JOIN applied a USING (request_id)
	WHERE s.request_id IS NULL OR a.request_id IS NULL OR s.key <> a.key OR s.seq <> a.seq}),
	'0',
	'every accepted message applied, and nothing else (no rolled-back enqueue)');
is($node->safe_psql('postgres', 'SELECT count(*) FROM applied WHERE rolled_back'),
	'0', 'no enqueue that was rolled back is applied');
is($node->safe_psql('postgres', 'SELECT count(*) FROM applied WHERE attempt <> 1'),
	'0', 'every message applied at its first attempt');
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM applied WHERE prev_seq <> seq - 1 OR prev_request_id >= request_id}),
	'0',
	'each message saw exactly the messages before it of its key applied, none after');
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM (
		SELECT seq, request_id,
			   lag(seq) OVER w AS pseq, lag(request_id) OVER w AS pid
		FROM applied WINDOW w AS (PARTITION BY key ORDER BY applied_order)) x
	WHERE pseq IS NOT NULL AND (seq <= pseq OR request_id <= pid)}),
	'0',
	'per key, application order is enqueue order (seq and request id increasing)');
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FILTER (WHERE n > 1) || ' ' || (SELECT count(DISTINCT applied_by) FROM applied)
	FROM (SELECT key, count(DISTINCT applied_by) AS n FROM applied GROUP BY key) x}),
	'0 2',
	'each key applied by one worker, the keys spread over both');

# The counters are added just after each batch commits: poll.
ok( $node->poll_query_until(
		'postgres', q{SELECT enqueued, applied, retried, dead_lettered, queue_depth, dead_letters
					   FROM ws.stat_topics WHERE topic = 'orders'},
		"$total|$total|0|0|0|0"),
	'ws.stat_topics: enqueued = applied = 100000, nothing retried or dead');
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) || ' ' || sum(applied) FROM ws.stat_queue_workers
					   WHERE database = 'postgres' AND applied > 0 AND batches > 0},
		"2 $total"),
	'ws.stat_queue_workers: both workers applied messages, 100000 in all');
is( $node->safe_psql(
		'postgres', q{SELECT count(*) FROM ws.stat_queue_workers w
					   WHERE w.database = 'postgres' AND w.pid IS NOT NULL
					   AND w.pid NOT IN (SELECT pid FROM pg_stat_activity
										 WHERE backend_type = 'write_scaling queue worker')}),
	'0',
	'ws.stat_queue_workers shows the running workers\' pids');
is( $node->safe_psql(
		'postgres', q{SELECT s.status || ' ' || s.topic || ' ' || s.attempts || ' ' || (s.error IS NULL)
					   || ' ' || (s.finished_at >= s.enqueued_at)
					   FROM (SELECT max(request_id) AS id FROM sent) m, ws.request_status(m.id) s}),
	'done orders 1 true true',
	'ws.request_status says done for an applied message');
is($node->safe_psql('postgres', 'SELECT count(*) FROM ws.request_status(-1)'),
	'0', 'and returns no row for an unknown request id');

note('ws.queue_rotation: ' . $node->safe_psql('postgres', q{SELECT string_agg(log || ' ' || current || ' ' || retired_at::text, '; ') FROM ws.queue_rotation}));
note('slot sizes: ' . $node->safe_psql('postgres', q{SELECT string_agg(c.relname || '=' || pg_relation_size(c.oid), ' ' ORDER BY relname) FROM pg_class c WHERE relname ~ '^queue(_done)?_[0-9]$'}));

# b) A handler that fails for the keys listed in "poison" (a null seq: every
# message of the key; otherwise that message only).
my $max_attempts = 3;
$node->safe_psql('postgres', qq{
	CREATE TABLE poison (key text, seq int);
	CREATE TABLE fragile_applied (
		request_id bigint PRIMARY KEY,
		key text NOT NULL,
		seq int NOT NULL,
		prev_seq int NOT NULL,
		applied_order bigint NOT NULL DEFAULT nextval('apply_order'),
		applied_at timestamptz NOT NULL DEFAULT clock_timestamp());
	CREATE FUNCTION fragile(k text, payload jsonb, request_id bigint, attempt int)
	RETURNS void LANGUAGE plpgsql AS \$\$
	BEGIN
		INSERT INTO fragile_applied (request_id, key, seq, prev_seq)
		VALUES (fragile.request_id, k, (payload->>'seq')::int,
				coalesce((SELECT max(a.seq) FROM fragile_applied a WHERE a.key = k), 0));
		IF EXISTS (SELECT FROM poison p WHERE p.key = k AND (p.seq IS NULL OR p.seq = (payload->>'seq')::int)) THEN
			RAISE EXCEPTION 'poisoned message % of key %', payload->>'seq', k USING ERRCODE = 'QX042';
		END IF;
	END \$\$;
	SELECT ws.create_topic('fragile', 'fragile(text, jsonb, bigint, int)',
						   max_attempts => $max_attempts, retry_delay => '50 ms');
	INSERT INTO poison VALUES ('p1', NULL), ('p2', NULL), ('p3', NULL), ('h1', 1);
	-- 24 keys of 4 messages each, interleaved: g1..g20 good, p1..p3 always
	-- failing, h1 failing on its first message only.
	WITH m AS (
		SELECT key, seq, row_number() OVER (ORDER BY seq, key) AS o
		FROM unnest(ARRAY['p1', 'p2', 'p3', 'h1'] || ARRAY(SELECT 'g' || i FROM generate_series(1, 20) i)) key,
			 generate_series(1, 4) seq),
	e AS (
		SELECT * FROM ws.enqueue_batch('fragile',
			(SELECT array_agg(key ORDER BY o) FROM m),
			(SELECT array_agg(jsonb_build_object('seq', seq) ORDER BY o) FROM m)) WITH ORDINALITY AS e(id, o))
	INSERT INTO sent SELECT e.id, m.key, m.seq FROM e JOIN m USING (o);
});
my $dead = 3 * 4 + 1;
my $good = 20 * 4 + 3;

ok( $node->poll_query_until(
		'postgres', q{SELECT NOT EXISTS (SELECT FROM ws.queue q JOIN ws.topics t USING (topic_id)
										 WHERE t.topic = 'fragile')}),
	'the fragile topic drains: applied or dead-lettered');
is( $node->safe_psql(
		'postgres', qq{
	SELECT count(*) FROM ws.dead_letters d JOIN sent s ON s.request_id = d.id
	WHERE d.topic = 'fragile' AND d.key = s.key AND (d.payload->>'seq')::int = s.seq
	  AND d.attempts = $max_attempts AND d.sqlstate = 'QX042'
	  AND d.error = format('poisoned message %s of key %s', s.seq, s.key)
	  AND d.failed_at IS NOT NULL
	  AND (s.key IN ('p1', 'p2', 'p3') OR (s.key, s.seq) = ('h1', 1))}),
	$dead,
	"the $dead poisoned messages are dead letters after $max_attempts attempts, with the handler's error and SQLSTATE");
is($node->safe_psql('postgres', q{SELECT count(*) FROM ws.dead_letters}),
	$dead, 'and nothing else is');
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) || ' ' || count(*) FILTER (WHERE prev_seq = seq - 1 OR key = 'h1')
	FROM fragile_applied}),
	"$good $good",
	'every message of the good keys applied once, in order; none of a poisoned message');
is( $node->safe_psql(
		'postgres', q{
	SELECT string_agg(seq || ':' || prev_seq, ',' ORDER BY applied_order) FROM fragile_applied WHERE key = 'h1'}),
	'2:0,3:2,4:3',
	'the later messages of a key go on once its failing message is dead');
is( $node->safe_psql(
		'postgres', q{
	SELECT bool_and(a.applied_at > d.failed_at)
	FROM fragile_applied a, ws.dead_letters d
	WHERE a.key = 'h1' AND d.key = 'h1'}),
	't',
	'and not before it is dead: they waited through its retries');
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM (
		SELECT id, failed_at, lag(failed_at) OVER (PARTITION BY key ORDER BY id) AS prev
		FROM ws.dead_letters) x
	WHERE prev IS NOT NULL AND failed_at <= prev}),
	'0',
	'the messages of a failing key die one after the other, in order');

my ($dead_id, $good_id) = split /\|/, $node->safe_psql(
	'postgres', q{
	SELECT (SELECT request_id FROM sent WHERE key = 'p2' AND seq = 3),
		   (SELECT request_id FROM sent WHERE key = 'g7' AND seq = 2)});
is( $node->safe_psql(
		'postgres', qq{
	SELECT status, topic, attempts, error, sqlstate, finished_at >= enqueued_at FROM ws.request_status($dead_id)}),
	"failed|fragile|$max_attempts|poisoned message 3 of key p2|QX042|t",
	'ws.request_status says failed, with the error, for a dead letter');
is( $node->safe_psql(
		'postgres', qq{SELECT status, topic, attempts, error IS NULL FROM ws.request_status($good_id)}),
	'done|fragile|1|t',
	'and done for a message of a good key');
ok( $node->poll_query_until(
		'postgres', q{SELECT enqueued, applied, retried, dead_lettered, queue_depth, dead_letters
					   FROM ws.stat_topics WHERE topic = 'fragile'},
		join('|', 96, $good, ($max_attempts - 1) * $dead, $dead, 0, $dead)),
	'ws.stat_topics counts the retries and the dead letters');

# Fix the handler's input and replay: first h1's message alone, then all.
$node->safe_psql('postgres', 'DELETE FROM poison');
is( $node->safe_psql(
		'postgres', q{
	SELECT ws.replay_dead_letters('fragile', ARRAY(SELECT id FROM ws.dead_letters WHERE key = 'h1'))}),
	'1', 'replay_dead_letters with ids replays those');
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 1 FROM fragile_applied WHERE key = 'h1' AND seq = 1}),
	'the replayed message is applied');
is($node->safe_psql('postgres', q{SELECT count(*) FROM ws.dead_letters}),
	$dead - 1, 'the other dead letters stay');
is($node->safe_psql('postgres', q{SELECT ws.replay_dead_letters('fragile')}),
	$dead - 1, 'replay_dead_letters without ids replays the rest');
ok( $node->poll_query_until(
		'postgres', q{
	SELECT NOT EXISTS (SELECT FROM ws.queue)
	   AND NOT EXISTS (SELECT FROM ws.dead_letters)
	   AND (SELECT count(*) FROM fragile_applied) = 96}),
	'every replayed message is applied');
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM sent s FULL JOIN fragile_applied a USING (request_id)
	WHERE s.key ~ '^[gph]' AND (s.request_id IS NULL OR a.request_id IS NULL OR s.seq <> a.seq OR s.key <> a.key)}),
	'0',
	'after the replay, every message of the topic applied exactly once');
is( $node->safe_psql(
		'postgres', q{
	SELECT string_agg(key || ':' || string_agg, ' ' ORDER BY key) FROM (
		SELECT key, string_agg(seq || '/' || prev_seq, ',' ORDER BY applied_order)
		FROM fragile_applied WHERE key IN ('p1', 'p2', 'p3', 'h1') GROUP BY key) x}),
	'h1:2/0,3/2,4/3,1/4 p1:1/0,2/1,3/2,4/3 p2:1/0,2/1,3/2,4/3 p3:1/0,2/1,3/2,4/3',
	'replayed messages are applied in their original order');
is( $node->safe_psql(
		'postgres', qq{SELECT status, topic, error IS NULL FROM ws.request_status($dead_id)}),
	'done|fragile|t',
	'ws.request_status says done for a replayed message');
ok( $node->poll_query_until(
		'postgres', q{SELECT enqueued, applied, dead_lettered, queue_depth, dead_letters
					   FROM ws.stat_topics WHERE topic = 'fragile'},
		join('|', 96, 96, $dead, 0, 0)),
	'ws.stat_topics after the replay');

# The first topic was not disturbed.
is($node->safe_psql('postgres', 'SELECT count(*) FROM applied'), $total, 'the orders topic still has 100000 applications');

unlike(slurp_file($node->logfile), qr/terminated by signal|left ws\.queue/,
	'no process crashed, no batch found its messages gone');

$node->stop;
done_testing();

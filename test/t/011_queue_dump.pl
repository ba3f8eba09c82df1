# pg_dump keeps what the queue has accepted: topics (with their owners),
# pending messages, dead letters and the request-id sequence, and a
# restored database applies the pending messages exactly once.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dump');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'write_scaling'
write_scaling.launcher_naptime = 1s
write_scaling.queue_workers = 0
});
$node->start;

$node->safe_psql('postgres', q{
	CREATE DATABASE source;
});
$node->safe_psql('source', q{
	CREATE EXTENSION write_scaling;
	CREATE ROLE topic_owner;
	GRANT CREATE ON SCHEMA public TO topic_owner;
	CREATE TABLE applied (key text, request_id bigint, by text);
	GRANT INSERT ON applied TO topic_owner;
	CREATE FUNCTION apply(key text, payload jsonb, request_id bigint, attempt int) RETURNS void
	LANGUAGE sql AS $$ INSERT INTO public.applied VALUES (key, request_id, current_user) $$;
	ALTER FUNCTION apply(text, jsonb, bigint, int) OWNER TO topic_owner;
	GRANT EXECUTE ON FUNCTION ws.create_topic(text, regprocedure, int, int, interval, boolean) TO topic_owner;
	GRANT INSERT ON ws.topics TO topic_owner;
	SET ROLE topic_owner;
	SELECT ws.create_topic('jobs', 'apply(text, jsonb, bigint, int)');
	RESET ROLE;
	SELECT count(ws.enqueue('jobs', 'k' || i % 10, jsonb_build_object('i', i))) FROM generate_series(1, 500) i;
	-- A dead letter, as a worker would have left it.
	WITH d AS (DELETE FROM ws.queue WHERE id = 1 RETURNING *)
	INSERT INTO ws.dead_letters (id, topic_id, topic, lane, key, payload, enqueued_at, attempts, error, sqlstate)
	SELECT id, topic_id, 'jobs', lane, key, payload, enqueued_at, 5, 'boom', 'P0001' FROM d;
});
is($node->safe_psql('source', q{SELECT owner FROM ws.topics}), 'topic_owner',
	'a topic is owned by the role that created it');

my $dump = $node->basedir . '/source.dump';
command_ok([ 'pg_dump', '-Fc', '-d', $node->connstr('source'), '-f', $dump ], 'pg_dump of the source');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
command_ok([ 'pg_restore', '-d', $node->connstr('restored'), $dump ], 'pg_restore into a new database');

is($node->safe_psql('restored', q{SELECT topic, owner, handler FROM ws.topics}),
	'jobs|topic_owner|apply(text,jsonb,bigint,integer)', 'the topic is restored with its owner and handler');
is($node->safe_psql('restored', q{SELECT count(*), min(id), max(id) FROM ws.queue}),
	'499|2|500', 'the pending messages are restored');
is($node->safe_psql('restored', q{SELECT id, error FROM ws.dead_letters}),
	'1|boom', 'the dead letter is restored');
cmp_ok($node->safe_psql('restored', q{SELECT ws.enqueue('jobs', 'new', '{}')}), '>', 500,
	'new request ids continue after the restored ones');

# Workers on: the restored database applies every message once, as the owner.
$node->safe_psql('postgres', q{ALTER SYSTEM SET write_scaling.queue_workers = 2; SELECT pg_reload_conf();});
ok($node->poll_query_until('restored', q{SELECT count(*) = 500 FROM applied}),
	'the restored messages are applied');
is($node->safe_psql('restored', q{
	SELECT count(DISTINCT request_id), count(*) FILTER (WHERE by <> 'topic_owner') FROM applied}),
	'500|0', 'each once, by the topic owner');
is($node->safe_psql('restored', q{SELECT count(*) FROM ws.queue}), '0', 'nothing is left in the queue');

$node->stop;
done_testing();

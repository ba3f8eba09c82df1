# Sharding over postgres_fdw on real clusters: a coordinator (with
# write_scaling) and plain PostgreSQL shards on loopback.  100,000 rows go in
# through the coordinator's view by single-row INSERTs, multi-row INSERTs,
# INSERT ... SELECT and COPY; every row must land exactly once, in its key's
# slot table on the server that holds the slot.  Then a fourth shard is added
# and ws.rebalance moves its share while another session keeps inserting;
# a shard is removed and the rebalance is killed twice at chosen points (in
# the cleanup after a committed move, and after a slot's rows were copied but
# before the switch): readers must see every row exactly once at each point,
# and a rerun must finish the job.  Last, a stopped shard: writes to it fail
# naming it, writes and key lookups elsewhere go on.
#
# The map has 32 slots (vnodes => 32) rather than the default 150 to keep the
# number of foreign tables, and the run time, small; nothing below depends on
# the number except the expected share of a new shard (a quarter).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use IPC::Run;
use List::Util qw(sum);
use Test::More;

my $vnodes = 32;
my $osuser = getpwuid($>);

# --- the clusters ---------------------------------------------------------

# UTF8 everywhere, so that a client encoding can differ from the database's.
my @utf8 = (extra => [ '--encoding=UTF8', '--locale=C' ]);
my $coord = PostgreSQL::Test::Cluster->new('coordinator');
$coord->init(@utf8);
$coord->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'write_scaling'
max_locks_per_transaction = 256
});
$coord->start;

my %shard;
sub start_shard
{
	my ($name) = @_;
	my $node = PostgreSQL::Test::Cluster->new("shard_$name");
	$node->init(@utf8);
	$node->start;
	$shard{$name} = $node;
	$coord->safe_psql('postgres', sprintf(q{
		CREATE SERVER %s FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '%s', port '%s', dbname 'postgres');
		CREATE USER MAPPING FOR CURRENT_USER SERVER %s OPTIONS (user '%s');},
		$name, $node->host, $node->port, $name, $osuser));
	return $node;
}

$coord->safe_psql('postgres', q{
	CREATE EXTENSION postgres_fdw;
	CREATE EXTENSION write_scaling;
});
start_shard($_) for qw(s1 s2 s3);

# --- the distributed table ------------------------------------------------

# The expected content of every row follows from its id.  Every tenth
# customer has a tab, a backslash and a newline: COPY text escaping on the
# way to the shards.
$coord->safe_psql('postgres', qq{
	CREATE FUNCTION cust(bigint) RETURNS text LANGUAGE sql IMMUTABLE
	AS \$\$ SELECT 'c' || (\$1 % 97) || CASE WHEN \$1 % 10 = 0 THEN E'\\t\\\\ \\n' ELSE '' END \$\$;
	SELECT ws.create_shard_map('m', vnodes => $vnodes);
	SELECT ws.add_shard('m', 's1');
	SELECT ws.add_shard('m', 's2');
	SELECT ws.add_shard('m', 's3');
	CREATE TABLE orders (
		id bigint PRIMARY KEY,
		customer text NOT NULL,
		amount int CHECK (amount >= 0),
		created_at timestamptz NOT NULL DEFAULT clock_timestamp()
	);
	CREATE INDEX orders_customer ON orders (customer);
	-- Rows that exist before the table is distributed move to the shards.
	INSERT INTO orders (id, customer, amount) SELECT i, cust(i), i % 1000 FROM generate_series(1, 100) i;
	SELECT ws.distribute_table('orders', 'id', 'm');
});

is($coord->safe_psql('postgres', q{SELECT relkind FROM pg_class WHERE oid = 'public.orders'::regclass}),
	'v', 'orders is now a view');
is($coord->safe_psql('postgres', q{
	SELECT count(*) FROM pg_inherits i JOIN pg_foreign_table f ON f.ftrelid = i.inhrelid
	WHERE i.inhparent = 'ws_dist.orders'::regclass}),
	$vnodes, "ws_dist.orders has $vnodes foreign partitions");

# --- indexes ----------------------------------------------------------------
# The indexes no constraint made go to every slot table, exclusion
# constraints too; a unique index holds there; undistribute gives the
# indexes back under their names.
my $index_sql = q{SELECT string_agg(pg_get_indexdef(i.indexrelid), E'\n' ORDER BY pg_get_indexdef(i.indexrelid))
	FROM pg_index i WHERE i.indrelid = 'members'::regclass
	  AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid)};
$coord->safe_psql('postgres', q{
	CREATE TABLE members (
		account int NOT NULL, id int NOT NULL, email text NOT NULL, status text,
		PRIMARY KEY (account, id),
		EXCLUDE USING btree (account WITH =, id WITH =));
	CREATE UNIQUE INDEX members_account_email ON members (account, lower(email));
	CREATE UNIQUE INDEX members_email_account ON members (email, account) WHERE status <> '100%';
	CREATE INDEX members_open ON members (status) WHERE status <> 'closed';
	CREATE INDEX members_email ON members USING hash (email);
	INSERT INTO members VALUES (1, 1, 'a@x', 'open'), (2, 1, 'a@x', 'open');
});
my $indexes_before = $coord->safe_psql('postgres', $index_sql);
$coord->safe_psql('postgres', q{SELECT ws.distribute_table('members', 'account', 'm')});
my ($members_server, $members_slot) = split /\|/,
  $coord->safe_psql('postgres', "SELECT ws.shard_for('m', '1'), ws.key_slot('1', $vnodes)");
my $members_table = sprintf('members_s%03d', $members_slot);
is($shard{$members_server}->safe_psql('postgres', qq{
	SELECT string_agg(d, E'\n' ORDER BY d)
	FROM (SELECT regexp_replace(indexdef, '^.* USING ', '') AS d
		  FROM pg_indexes WHERE tablename = '$members_table') x}),
	join("\n", 'btree (account, id)', 'btree (account, id)', 'btree (account, lower(email))',
		"btree (email, account) WHERE (status <> '100%'::text)",
		"btree (status) WHERE (status <> 'closed'::text)", 'hash (email)'),
	'a slot table has the primary key, the exclusion constraint and the four other indexes');
my ($mem_ret, $mem_out, $mem_err) = $coord->psql('postgres',
	q{INSERT INTO members VALUES (1, 2, 'A@x', 'open')});
like($mem_err, qr/could not write 1 row of "members" .*duplicate key value violates unique constraint "members_s\d+_account_lower_idx"/s,
	'the unique index holds on its shard');
$coord->safe_psql('postgres', q{CALL ws.undistribute_table('members')});
is($coord->safe_psql('postgres', $index_sql), $indexes_before,
	'undistribute gives the indexes back, under their names');
is($coord->safe_psql('postgres', q{SELECT count(*) FROM members}), '2', 'with the rows');
$coord->safe_psql('postgres', q{DROP TABLE members});

# %expected: every id that must be stored, exactly once.
my %expected = map { $_ => 1 } 1 .. 100;

# The slot of every id the test ever inserts, computed once by ws.key_slot.
my %slot_of;
sub learn_slots
{
	my ($from, $to) = @_;
	for (split /\n/, $coord->safe_psql('postgres',
		"SELECT i || ' ' || ws.key_slot(i::text, $vnodes) FROM generate_series($from, $to) i"))
	{
		my ($id, $slot) = split / /;
		$slot_of{$id} = $slot;
	}
}
learn_slots(1, 100000);
learn_slots(200001, 203000);
learn_slots(300001, 300500);

# --- 100,000 rows through the coordinator ----------------------------------

# 300 single-row INSERT statements, each its own transaction.
$coord->safe_psql('postgres', join('', map {
	"INSERT INTO orders (id, customer, amount) VALUES ($_, cust($_), $_ % 1000);\n" } 101 .. 400));
$expected{$_} = 1 for 101 .. 400;

# 200 single-row INSERTs in one transaction (a DO loop), and a multi-row INSERT.
$coord->safe_psql('postgres', q{
	DO $$ BEGIN
		FOR i IN 401 .. 600 LOOP
			INSERT INTO orders (id, customer, amount) VALUES (i, cust(i), i % 1000);
		END LOOP;
	END $$;
	INSERT INTO orders (id, customer, amount)
	VALUES (601, cust(601), 601), (602, cust(602), 602), (603, cust(603), 603), (604, cust(604), 604);
});
$expected{$_} = 1 for 401 .. 604;

# INSERT ... SELECT, one statement.
$coord->safe_psql('postgres', q{
	INSERT INTO orders (id, customer, amount) SELECT i, cust(i), i % 1000 FROM generate_series(605, 60000) i});
$expected{$_} = 1 for 605 .. 60000;

# copy_lines($from, $to): COPY text lines for those ids, as cust() has them.
sub copy_lines
{
	my ($from, $to) = @_;
	my $lines = '';
	for my $i ($from .. $to)
	{
		my $c = 'c' . ($i % 97) . ($i % 10 == 0 ? "\\t\\\\ \\n" : '');
		$lines .= "$i\t$c\t" . ($i % 1000) . "\n";
	}
	return $lines;
}

# COPY FROM STDIN into the view, through psql.  It streams to the shards
# (shard_copy.c), as DEBUG1 says; more below.
{
	my ($ret, $out, $err) = $coord->psql('postgres',
		"SET client_min_messages = debug1;\nCOPY orders (id, customer, amount) FROM STDIN;\n"
		  . copy_lines(60001, 100000) . "\\.\n");
	is($ret, 0, 'COPY of 40,000 rows into the distributed table') or diag($err);
	like($err, qr/COPY into distributed table "orders" streams to its shards/, 'and it streams to the shards');
	$expected{$_} = 1 for 60001 .. 100000;
}

# verify($label): everything the test expects of a distributed table at rest.
#   - count(*) and sum(amount) through the coordinator equal %expected;
#     every row's columns equal what was inserted;
#   - the coordinator's foreign partition of each row is on the server
#     ws.shard_for names and is the slot ws.key_slot gives;
#   - on each shard: its orders_sNNN tables are exactly the slots placed on
#     it plus the ones queued in ws.shard_cleanup for it; in each placed slot
#     table every row's key belongs to that slot; the shards' rows together
#     are %expected, each id exactly once; per shard the same number of rows
#     as the coordinator reads from it.
# Options: settled => every slot is placed on its owner; skip => servers not
# to ask directly.
sub verify
{
	my ($label, %opt) = @_;
	my %skip = map { $_ => 1 } @{ $opt{skip} // [] };
	my $n = scalar keys %expected;
	my $sum = 0;
	$sum += $_ % 1000 for keys %expected;

	is($coord->safe_psql('postgres', q{SELECT count(*) || ' ' || coalesce(sum(amount), 0) FROM orders}),
		"$n $sum", "$label: count(*) and sum(amount) through the coordinator are exact ($n, $sum)");
	is($coord->safe_psql('postgres', q{
		SELECT count(*) FROM orders
		WHERE customer IS DISTINCT FROM cust(id) OR amount IS DISTINCT FROM (id % 1000)::int OR created_at IS NULL}),
		'0', "$label: every row's columns are as inserted");
	is($coord->safe_psql('postgres', qq{
		SELECT count(*) FROM ws_dist.orders o
		JOIN pg_class c ON c.oid = o.tableoid
		JOIN pg_foreign_table f ON f.ftrelid = o.tableoid
		JOIN pg_foreign_server s ON s.oid = f.ftserver
		WHERE ws.shard_for('m', o.id::text) <> s.srvname
		   OR c.relname <> 'orders_s' || lpad(ws.key_slot(o.id::text, $vnodes)::text, 3, '0')}),
		'0', "$label: each row is read from the partition of its slot, on the server ws.shard_for names");
	if ($opt{settled})
	{
		is($coord->safe_psql('postgres', q{
			SELECT count(*) FROM ws.shard_slots WHERE map = 'm' AND (owner IS NULL OR owner IS DISTINCT FROM placed_on)}),
			'0', "$label: every slot is placed on its owner");
		is($coord->safe_psql('postgres', 'SELECT count(*) FROM ws.shard_cleanup'),
			'0', "$label: no cleanup left queued");
	}

	my (%placed, %cleanup);
	for (split /\n/, $coord->safe_psql('postgres', q{SELECT slot || ' ' || placed_on FROM ws.shard_slots WHERE map = 'm'}))
	{
		my ($slot, $server) = split / /;
		push @{ $placed{$server} }, sprintf('orders_s%03d', $slot);
	}
	for (split /\n/, $coord->safe_psql('postgres', q{SELECT server || ' ' || remote_table FROM ws.shard_cleanup WHERE remote_schema = 'public'}))
	{
		my ($server, $table) = split / /;
		push @{ $cleanup{$server} }, $table;
	}
	my %coord_count = map { split / / } split /\n/, $coord->safe_psql('postgres', q{
		SELECT s.srvname || ' ' || count(*) FROM ws_dist.orders o
		JOIN pg_foreign_table f ON f.ftrelid = o.tableoid
		JOIN pg_foreign_server s ON s.oid = f.ftserver GROUP BY s.srvname});

	my (%seen, $dups, $wrong_slot, $wrong_tag);
	$dups = $wrong_slot = $wrong_tag = 0;
	for my $server (sort keys %shard)
	{
		next if $skip{$server};
		my $node = $shard{$server};
		my @have = split /\n/, $node->safe_psql('postgres', q{
			SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE c.relkind IN ('r', 'p', 'f') AND (c.relname LIKE 'orders%' OR n.nspname = 'public')
			ORDER BY c.relname});
		# The slot tables placed there, and of those queued for cleanup the
		# ones there (a move's new copy is queued until the move commits,
		# and may not have been made).  The shard's table of slots, their
		# parent, goes with the last.
		my %queued = map { $_ => 1 } @{ $cleanup{$server} // [] };
		my @want = (@{ $placed{$server} // [] }, grep { $queued{$_} } @have);
		@want = sort(@want, @want ? ('orders_shard') : ());
		@want = do { my %u; grep { !$u{$_}++ } @want };
		is(join(',', @have), join(',', @want),
			"$label: $server holds exactly the slot tables placed on it"
			  . (@{ $cleanup{$server} // [] } ? ' and some queued for cleanup' : ''));
		# The CHECK that let ATTACH skip its scan is gone: each row would pay for it.
		is($node->safe_psql('postgres', q{
			SELECT count(*) FROM pg_constraint
			WHERE contype = 'c' AND pg_get_constraintdef(oid) LIKE '%ws_slot%'}),
			0, "$label: ${server}'s slot tables check their slot only by their partition constraint");
		# The table's index on customer is on every slot table, moved ones too.
		is($node->safe_psql('postgres', q{
			SELECT count(*) FROM pg_indexes
			WHERE tablename ~ '^orders_s[0-9]+$' AND indexdef LIKE '%USING btree (customer)'}),
			scalar(grep { /^orders_s\d+$/ } @want), "$label: each of ${server}'s slot tables has the index on customer");

		my @tables = @{ $placed{$server} // [] };
		my @rows = @tables
		  ? split /\n/, $node->safe_psql('postgres', join(' UNION ALL ',
				map { my $s = substr($_, -3) + 0; "SELECT $s || ' ' || id || ' ' || ws_slot FROM public.$_" } @tables))
		  : ();
		for (@rows)
		{
			my ($slot, $id, $tag) = split / /;
			$dups++ if $seen{$id}++;
			$wrong_tag++ if $tag != $slot;
			$wrong_slot++ unless defined $slot_of{$id} && $slot_of{$id} == $slot;
		}
		is(scalar(@rows), $coord_count{$server} // 0,
			"$label: $server stores as many rows as the coordinator reads from it (" . scalar(@rows) . ')');
	}
	return if %skip;
	is($dups, 0, "$label: no id is stored twice, on one shard or two");
	is($wrong_slot, 0, "$label: every row on the shards is in its key's slot table");
	is($wrong_tag, 0, "$label: and its ws_slot column names that slot");
	is(scalar(grep { !$seen{$_} } keys %expected), 0, "$label: no row is missing from the shards");
	is(scalar(grep { !$expected{$_} } keys %seen), 0, "$label: no unexpected row is on the shards");
}

verify('after 100,000 inserts', settled => 1);
cmp_ok($coord->safe_psql('postgres', q{SELECT min(n) FROM (SELECT count(*) AS n FROM ws.shard_slots WHERE map = 'm' GROUP BY owner) x}),
	'>=', int($vnodes / 3), 'each of the 3 shards owns its share of the slots');

# A query fixing the key reads one slot.
like($coord->safe_psql('postgres', q{EXPLAIN (COSTS OFF) SELECT * FROM orders WHERE id = 4242}),
	qr/Foreign Scan on orders_s\d{3}(?!.*Foreign Scan)/s, 'a lookup by key scans one foreign partition');
is($coord->safe_psql('postgres', q{SELECT amount FROM orders WHERE id = 4242}), '242', 'and finds the row');

# --- the single row of an autocommit INSERT: one round trip -----------------

# It goes at commit, as a statement of its own, on a connection of
# write_scaling's (application_name write_scaling), prepared once there.
learn_slots(160001, 160010);
sub shard_of { return $coord->safe_psql('postgres', "SELECT ws.shard_for('m', '$_[0]')"); }
sub own_connections
{
	my ($server, $condition) = @_;
	return $shard{$server}->safe_psql('postgres', qq{
		SELECT count(*) FROM pg_stat_activity WHERE application_name = 'write_scaling' AND $condition});
}
my $session = $coord->background_psql('postgres', on_error_stop => 0);
$session->query_safe(insert_sql(160001));
$expected{160001} = 1;
is(own_connections(shard_of(160001), sprintf(q{query = 'INSERT INTO public.orders_s%03d (id, customer, amount, created_at) VALUES ($1, $2, $3, $4)'}, $slot_of{160001})),
	'1', 'an autocommit single-row INSERT went to its shard alone, on a connection of its own, as a prepared statement');
is($coord->safe_psql('postgres', q{SELECT customer = cust(160001) FROM orders WHERE id = 160001}), 't',
	'and the row reads back as inserted');

# A duplicate key fails at commit, naming the shard, with the shard's SQLSTATE.
my ($dup_out, $dup_ret) = $session->query(q{\set VERBOSITY verbose
} . insert_sql(160001));
like($session->{stderr}, qr/ERROR:  23505: could not write 1 row of "orders" to shard server "s\d": duplicate key value violates unique constraint "orders_s\d{3}_pkey"/,
	'a duplicate key sent alone fails with 23505, naming the shard server');
$session->{stderr} = '';
$session->query_safe(q{\set VERBOSITY default});
$session->query_safe(insert_sql(160002));
$expected{160002} = 1;
is($coord->safe_psql('postgres', q{SELECT count(*) FROM orders WHERE id IN (160001, 160002)}), '2',
	'the connection serves the next row after the error');

# Only a transaction's first top-level statement may leave its row waiting:
# the rows of a loop go in postgres_fdw's transaction, so a duplicate key on
# the third takes back the first two.
learn_slots(160031, 160040);
my ($loop_out, $loop_ret) = $session->query(q{
	DO $$ BEGIN FOR i IN 160031 .. 160033 LOOP
		INSERT INTO orders (id, customer, amount) VALUES (CASE WHEN i = 160033 THEN 160001 ELSE i END, cust(i), i % 1000);
	END LOOP; END $$;});
like($session->{stderr}, qr/duplicate key value/, 'a loop whose third INSERT is a duplicate key fails');
$session->{stderr} = '';
is($coord->safe_psql('postgres', q{SELECT count(*) FROM orders WHERE id IN (160031, 160032)}), '0',
	'and none of its rows stays on the shards');

# A waiting row sent through postgres_fdw inside a subtransaction (here by
# a trigger with an exception block, running as another role) waits again
# when that subtransaction rolls back, and goes at commit, as the role that
# inserted it.
$coord->safe_psql('postgres', q{
	CREATE ROLE no_mapping;
	GRANT SELECT ON orders TO no_mapping;
	CREATE FUNCTION read_then_undo() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
	BEGIN
		BEGIN
			PERFORM count(*) FROM orders;
			RAISE EXCEPTION 'undone';
		EXCEPTION WHEN raise_exception THEN NULL;
		END;
		RETURN NULL;
	END $$;
	ALTER FUNCTION read_then_undo() OWNER TO no_mapping;
	CREATE TRIGGER zz_read_then_undo AFTER INSERT ON orders FOR EACH STATEMENT EXECUTE FUNCTION read_then_undo();
});
$session->query_safe(insert_sql(160034));
$expected{160034} = 1;
$coord->safe_psql('postgres', q{DROP TRIGGER zz_read_then_undo ON orders; DROP FUNCTION read_then_undo(); DROP OWNED BY no_mapping; DROP ROLE no_mapping;});
is($shard{shard_of(160034)}->safe_psql('postgres', q{SELECT count(*) FROM orders_shard WHERE id = 160034}), '1',
	'a row sent in a subtransaction that rolled back is written at commit all the same');

# A shard restarted between two rows: the connection of our own, closed by
# the restart, is opened again.
my ($same_shard) = grep { shard_of($_) eq shard_of(160034) } 160035 .. 160040;
$shard{shard_of(160034)}->restart;
$session->query_safe(insert_sql($same_shard));
$expected{$same_shard} = 1;
is($coord->safe_psql('postgres', "SELECT count(*) FROM orders WHERE id = $same_shard"), '1',
	'after its shard restarted, the next row goes through a new connection');

# A statement that starts before the commit sends the row through
# postgres_fdw first, and so reads it.
$coord->safe_psql('postgres', q{
	CREATE FUNCTION insert_and_read(bigint) RETURNS bigint LANGUAGE sql AS $$
		INSERT INTO orders (id, customer, amount) VALUES ($1, cust($1), $1 % 1000);
		SELECT count(*) FROM orders WHERE id = $1;
	$$});
is($coord->safe_psql('postgres', 'SELECT insert_and_read(160003)'), '1',
	'a query after the INSERT, in the same transaction, reads the row');
$expected{160003} = 1;

# Nothing goes out for a statement that fails after its INSERT.
my ($failed_out, $failed_ret) = $session->query(q{
	DO $$ BEGIN INSERT INTO orders (id, customer, amount) VALUES (160004, 'c', 4); RAISE EXCEPTION 'after the insert'; END $$;});
like($session->{stderr}, qr/after the insert/, 'a statement fails after its INSERT');
$session->{stderr} = '';
is($coord->safe_psql('postgres', q{SELECT count(*) FROM orders WHERE id = 160004}), '0', 'and its row was not written');
is($shard{shard_of(160004)}->safe_psql('postgres', q{SELECT count(*) FROM orders_shard WHERE id = 160004}), '0',
	'not even on the shard');

# Rows travel in COPY's binary format here (every column has a built-in
# type), written in the database's encoding whatever the client's: a
# character that LATIN1 lacks, and one it has, arrive as they were.
learn_slots(160011, 160030);
$session->query_safe(q{SET client_encoding = 'LATIN1'});
$session->query_safe(q{INSERT INTO orders (id, customer, amount)
	SELECT i, chr(8364) || chr(233) || i, i % 1000 FROM generate_series(160011, 160030) i});
$session->query_safe(q{INSERT INTO orders (id, customer, amount) VALUES (160006, chr(8364) || chr(233), 6)});
$session->query_safe(q{RESET client_encoding});
is($coord->safe_psql('postgres', q{
	SELECT count(*) FROM orders WHERE id BETWEEN 160011 AND 160030 AND customer = chr(8364) || chr(233) || id
	   OR id = 160006 AND customer = chr(8364) || chr(233)}),
	'21', 'text the client encoding lacks arrives on the shards unchanged, in batches and alone');
$expected{$_} = 1 for 160006, 160011 .. 160030;
# verify() knows what cust() gives; these rows have other customers.
$coord->safe_psql('postgres', q{
	UPDATE orders SET customer = cust(id) WHERE id = 160006 OR id BETWEEN 160011 AND 160030});

# A column of a type of the user's own (an enum, created on every server):
# its binary form could name type OIDs that differ between servers, so this
# table's rows travel as COPY text, escapes and all.  It has a map of its
# own, which the rebalances below leave alone.
for my $node ($coord, map { $shard{$_} } qw(s1 s2 s3))
{
	$node->safe_psql('postgres', q{CREATE SCHEMA moods; CREATE TYPE moods.mood AS ENUM ('calm', 'busy')});
}
$coord->safe_psql('postgres', q{
	SELECT ws.create_shard_map('m2', vnodes => 8);
	SELECT ws.add_shard('m2', s) FROM unnest(ARRAY['s1', 's2', 's3']) s;
	CREATE TABLE moods.feelings (id int PRIMARY KEY, mood moods.mood NOT NULL, note text);
	SELECT ws.distribute_table('moods.feelings', 'id', 'm2');
	INSERT INTO moods.feelings
	SELECT i, CASE WHEN i % 2 = 0 THEN 'calm' ELSE 'busy' END::moods.mood, 'n' || i || E'\t\\\n'
	FROM generate_series(1, 1000) i;
	INSERT INTO moods.feelings VALUES (1001, 'busy', NULL);
});
is($coord->safe_psql('postgres', q{
	SELECT count(*) FROM moods.feelings
	WHERE mood = CASE WHEN id % 2 = 0 THEN 'calm' ELSE 'busy' END::moods.mood
	  AND note IS NOT DISTINCT FROM CASE WHEN id <= 1000 THEN 'n' || id || E'\t\\\n' END}),
	'1001', 'a table with an enum column: every row reads back as inserted (COPY text)');
is($coord->safe_psql('postgres', q{
	SELECT count(*) FROM ws_dist.feelings
	WHERE tableoid::regclass::text <> format('ws_dist.feelings_s%s', lpad(ws.key_slot(id::text, 8)::text, 3, '0'))}),
	'0', 'and each row is in its key\'s slot');
my $feelings_on_shards = 0;
for my $server (qw(s1 s2 s3))
{
	my ($rows, $bad_tags) = split /\|/, $shard{$server}->safe_psql('postgres', q{
		SELECT count(*), count(*) FILTER (WHERE ws_slot <> substring(tableoid::regclass::text FROM '_s(\d+)$')::int)
		FROM moods.feelings_shard});
	$feelings_on_shards += $rows;
	is($bad_tags, '0', "$server: each enum-table row's ws_slot names its slot table");
}
is($feelings_on_shards, 1001, 'the shards hold each of those rows once');

# Every type whose binary form we write ourselves (copy_binary.c), at its
# edges and NULL, keyed by an int2 (whose text the hash reads without
# int2out): each row reads back exactly as inserted, and lies in its key's
# slot.
$coord->safe_psql('postgres', q{
	CREATE TABLE moods.typed (id int2 PRIMARY KEY, i4 int4, i8 int8, f4 float4, f8 float8, b bool,
		d date, ts timestamp, tstz timestamptz, t time, o oid, m money, tx text, vc varchar(10),
		bc char(4), by bytea, u uuid, n numeric);
	CREATE TABLE typed_expected (LIKE moods.typed);
	SELECT ws.distribute_table('moods.typed', 'id', 'm2');
	INSERT INTO typed_expected VALUES
		(1, 0, 0, 0, 0, false, '2026-11-29', '2026-11-29 13:30:00.123456', '2026-11-29 13:30:00.5+02',
		 '23:59:59.999999', 0, 0, '', '', '', '', '00000000-0000-0000-0000-000000000000', 0),
		(-32768, -2147483648, -9223372036854775808, '-Infinity', '-0', true, '-infinity', '-infinity',
		 '-infinity', '00:00', 4294967295, '-92233720368547758.08', E'h\u00e9llo \u20ac \\ \t\n',
		 E'tab\there', 'ab', '\x00ff00', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'NaN'),
		(32767, 2147483647, 9223372036854775807, 'NaN', 'Infinity', NULL, 'infinity', 'infinity',
		 'infinity', NULL, NULL, '92233720368547758.07', repeat('x', 5000), NULL, NULL,
		 decode(repeat('ab', 3000), 'hex'), NULL, 1e100),
		(5, NULL, NULL, 3.25, 1e-300, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
	INSERT INTO moods.typed SELECT * FROM typed_expected;
});
is($coord->safe_psql('postgres', q{
	SELECT count(*) FROM (
		(SELECT r::text FROM moods.typed r EXCEPT SELECT e::text FROM typed_expected e)
		UNION ALL
		(SELECT e::text FROM typed_expected e EXCEPT SELECT r::text FROM moods.typed r)) differ}),
	'0', 'a table of every type written in binary without its send function: each row reads back as inserted');
is($coord->safe_psql('postgres', q{
	SELECT count(*) FROM ws_dist.typed
	WHERE tableoid::regclass::text <> format('ws_dist.typed_s%s', lpad(ws.key_slot(id::text, 8)::text, 3, '0'))}),
	'0', 'and each row is in its int2 key\'s slot');

# --- COPY streamed to the shards ---------------------------------------------

# A COPY streams each server its rows while it runs, 64kB at a time: 10,000
# rows give each server over 100kB, so every shard has rows before the last
# line is read.  Whatever fails, no row of the COPY stays on any shard.
learn_slots(700001, 730000);
my $streams = qr/COPY into distributed table "orders" streams to its shards/;

# script_status($ret, $stderr): psql's status for a script run without
# ON_ERROR_STOP, which stays 0 whatever fails: 3 if a statement failed.
sub script_status
{
	my ($ret, $err) = @_;
	return $ret == 0 && $err =~ /^psql:[^\n]*ERROR:/m ? 3 : $ret;
}

# copy_into_orders($sql_before, $lines, %psql_options): runs a COPY of $lines
# after $sql_before, with DEBUG1 and verbose errors; returns ($status, $err),
# $status as script_status gives it.
sub copy_into_orders
{
	my ($before, $lines, %opt) = @_;
	my ($ret, $out, $err) = $coord->psql('postgres',
		"\\set VERBOSITY verbose\nSET client_min_messages = debug1;\n$before\n"
		  . "COPY orders (id, customer, amount) FROM STDIN;\n$lines\\.\n" . ($opt{after} // ''),
		on_error_stop => 0, timeout => $PostgreSQL::Test::Utils::timeout_default);
	return (script_status($ret, $err), $err);
}

# on_shards($from, $to): how many rows with ids in that range all shards hold.
sub on_shards
{
	my ($from, $to) = @_;
	my $n = 0;
	$n += $_->safe_psql('postgres', "SELECT count(*) FROM orders_shard WHERE id BETWEEN $from AND $to")
	  for values %shard;
	return $n;
}

my ($copy_ret, $copy_err) = copy_into_orders('', copy_lines(700001, 710000));
is($copy_ret, 0, 'a streamed COPY of 10,000 rows succeeds') or diag($copy_err);
like($copy_err, $streams, 'and streams');
is(on_shards(700001, 710000), 10000, 'its rows are on the shards');
$expected{$_} = 1 for 700001 .. 710000;

($copy_ret, $copy_err) = copy_into_orders('', copy_lines(710001, 720000) . "720001\tx\tnot a number\n");
like($copy_err, qr/22P02: invalid input syntax for type integer: "not a number"/,
	'bad input on the last line of a streamed COPY fails with its SQLSTATE');
like($copy_err, qr/COPY orders, line 10001, column amount/, 'naming the line and column');
is(on_shards(710001, 720001), 0, 'and none of its rows stays on any shard, though all had some');

($copy_ret, $copy_err) = copy_into_orders('', copy_lines(710001, 720000) . "1\tdup\t1\n");
like($copy_err, qr/23505: could not write rows of "orders" to shard server "s\d": duplicate key value/,
	'a key already on its shard fails the streamed COPY with 23505, naming the shard');
is(on_shards(710001, 720000), 0, 'and none of its rows stays on any shard');

# A duplicate key on the first line of a long COPY stops it soon after,
# not at its end: the shard's error is read as soon as it arrives.  Were it
# read at the end, the bad last line would fail the COPY first.
($copy_ret, $copy_err) = copy_into_orders('',
	"1\tdup\t1\n" . copy_lines(720001, 1020000) . "1020001\tx\tnot a number\n");
like($copy_err, qr/23505: could not write rows of "orders" to shard server "s\d": duplicate key value/,
	'a key already on its shard, on the first line of a long streamed COPY, fails it before its last line');
is(on_shards(720001, 1020000), 0, 'and none of its rows stays on any shard');

($copy_ret, $copy_err) = copy_into_orders('', "710001\tc\t1\n\\N\tc\t2\n");
like($copy_err, qr/23502: null value in column "id" of distributed table "orders"/, 'a NULL key fails with 23502');
like($copy_err, qr/COPY orders, line 2/, 'naming its line');
is(on_shards(710001, 710001), 0, 'and the row before it is not kept');

# In a transaction: the rows are read back before the commit, and go with a
# rollback; a COPY that failed in a savepoint leaves postgres_fdw's
# connection ready for the next.
($copy_ret, $copy_err) = copy_into_orders('BEGIN;', copy_lines(710001, 720000),
	after => "SELECT 'read back ' || count(*) FROM orders WHERE id BETWEEN 710001 AND 720000;\nROLLBACK;\n");
like($copy_err, $streams, 'a COPY in a transaction block streams too');
is(on_shards(710001, 720000), 0, 'and its rows go with a rollback');
{
	my ($ret, $out, $err) = $coord->psql('postgres', "BEGIN;\nCOPY orders (id, customer, amount) FROM STDIN;\n"
		  . copy_lines(710001, 710100) . "\\.\nSELECT count(*) FROM orders WHERE id BETWEEN 710001 AND 710100;\nROLLBACK;\n");
	is($out, '100', 'the transaction reads its COPY back before the commit') or diag($err);
}
($copy_ret, $copy_err) = copy_into_orders("BEGIN;\nSAVEPOINT a;\nCOPY orders (id, customer, amount) FROM STDIN;\n"
	  . copy_lines(710001, 715000) . "2\tdup\t2\n\\.\nROLLBACK TO a;", copy_lines(715001, 720000), after => "COMMIT;\n");
like($copy_err, qr/duplicate key value/, 'a streamed COPY fails in a savepoint');
is(on_shards(710001, 720000), 5000, 'the next COPY in the transaction succeeds, and only its rows are kept');
$expected{$_} = 1 for 715001 .. 720000;

# Input in the client's encoding arrives in the database's.
($copy_ret, $copy_err) = copy_into_orders("SET client_encoding = 'LATIN1';", "720001\t\xe9t\xe9\t1\n");
is($coord->safe_psql('postgres', 'SELECT customer FROM orders WHERE id = 720001'), "\xc3\xa9t\xc3\xa9",
	'LATIN1 input arrives as UTF8') or diag($copy_err);
$coord->safe_psql('postgres', 'UPDATE orders SET customer = cust(id) WHERE id = 720001');
$expected{720001} = 1;

# Other COPYs go through the view's trigger, and are written all the same:
# one with a WHERE clause; one whose default calls a function of the user's
# (which could use postgres_fdw's connection while the COPY holds it); one
# into a view with a trigger of the user's, which fires.
($copy_ret, undef, $copy_err) = $coord->psql('postgres',
	"SET client_min_messages = debug1;\nCOPY orders (id, customer, amount) FROM STDIN WHERE amount >= 0;\n"
	  . copy_lines(720002, 720100) . "\\.\n");
unlike($copy_err, $streams, 'a COPY with a WHERE clause goes through the trigger');
$coord->safe_psql('postgres', q{
	ALTER VIEW orders ALTER COLUMN customer SET DEFAULT cust(0);
	CREATE TABLE copy_audit (n int);
	CREATE FUNCTION copy_audit() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN INSERT INTO copy_audit VALUES (1); RETURN NULL; END $$;
});
($copy_ret, undef, $copy_err) = $coord->psql('postgres',
	"SET client_min_messages = debug1;\nCOPY orders (id, amount) FROM STDIN;\n"
	  . join('', map { "$_\t" . ($_ % 1000) . "\n" } 720101 .. 720200) . "\\.\n");
unlike($copy_err, $streams, 'a COPY whose default calls a function of the user\'s goes through the trigger');
is($coord->safe_psql('postgres', q{SELECT count(*) FROM orders WHERE id BETWEEN 720101 AND 720200 AND customer = cust(0)}),
	'100', 'and fills in the default');
$coord->safe_psql('postgres', q{
	UPDATE orders SET customer = cust(id) WHERE id BETWEEN 720101 AND 720200;
	ALTER VIEW orders ALTER COLUMN customer DROP DEFAULT;
	CREATE TRIGGER copy_audit BEFORE INSERT ON orders FOR EACH STATEMENT EXECUTE FUNCTION copy_audit();
});
($copy_ret, undef, $copy_err) = $coord->psql('postgres',
	"SET client_min_messages = debug1;\nCOPY orders (id, customer, amount) FROM STDIN;\n"
	  . copy_lines(720201, 720300) . "\\.\n");
unlike($copy_err, $streams, 'a COPY into a view with a trigger of the user\'s goes through the trigger');
is($coord->safe_psql('postgres', 'SELECT count(*) FROM copy_audit'), '1', 'which fires');
$coord->safe_psql('postgres', q{DROP TRIGGER copy_audit ON orders; DROP TABLE copy_audit; DROP FUNCTION copy_audit()});
is(on_shards(720002, 720300), 299, 'the rows of all three are on the shards');
$expected{$_} = 1 for 720002 .. 720300;

# An INSERT the planner expects 1,000 rows or more of streams too, through
# the view's trigger, when its plan calls nothing of the user's and reads no
# foreign table.  An error in the middle, with COPYs open on every shard,
# ends them before postgres_fdw rolls back: the session goes on, and no row
# stays, in a transaction or a subtransaction.
learn_slots(730001, 760000);
learn_slots(790001, 850000);
learn_slots(1700001, 1702000);
my $streams_insert = qr/INSERT into distributed table "orders" streams to its shards/;
my $cust_sql = q{'c' || (i % 97) || CASE WHEN i % 10 = 0 THEN E'\t\\\\ \n' ELSE '' END};

# insert_orders($sql): runs $sql with DEBUG1 and verbose errors; returns
# psql's ($ret, $out, $err).  A session that hangs (postgres_fdw rolling
# back on a connection in the middle of a COPY spins) fails the test.
sub insert_orders
{
	my ($sql) = @_;
	my ($ret, $out, $err) = $coord->psql('postgres',
		"\\set VERBOSITY verbose\nSET client_min_messages = debug1;\n$sql",
		on_error_stop => 0, timeout => $PostgreSQL::Test::Utils::timeout_default);
	return (script_status($ret, $err), $out, $err);
}

my ($ins_ret, $ins_out, $ins_err) = insert_orders(
	"INSERT INTO orders (id, customer, amount) SELECT i, $cust_sql, i % 1000 FROM generate_series(730001, 740000) i;");
is($ins_ret, 0, 'an INSERT ... SELECT of 10,000 rows succeeds') or diag($ins_err);
like($ins_err, $streams_insert, 'and streams');
is(on_shards(730001, 740000), 10000, 'its rows are on the shards');
$expected{$_} = 1 for 730001 .. 740000;

($ins_ret, $ins_out, $ins_err) = insert_orders(
	"INSERT INTO orders (id, customer, amount) SELECT i, $cust_sql, i % 1000 FROM generate_series(740001, 750000) i"
	  . " UNION ALL SELECT 1, 'dup', 1;");
like($ins_err, qr/23505: could not write rows of "orders" to shard server "s\d": duplicate key value/,
	'a key already on its shard fails the streamed INSERT with 23505, naming the shard');
is(on_shards(740001, 750000), 0, 'and none of its rows stays on any shard');

($ins_ret, $ins_out, $ins_err) = insert_orders(
	"INSERT INTO orders (id, customer, amount) SELECT i, $cust_sql, abs(1000 / (i - 748000)) FROM generate_series(740001, 750000) i;\n"
	  . "SELECT 'still here';");
like($ins_err, qr/22012: division by zero/, 'an error in the middle of a streamed INSERT, with COPYs open on every shard');
like($ins_out, qr/still here/, 'leaves the session usable');
is(on_shards(740001, 750000), 0, 'and none of its rows on any shard');

($ins_ret, $ins_out, $ins_err) = insert_orders("BEGIN;\nSAVEPOINT a;\n"
	  . "INSERT INTO orders (id, customer, amount) SELECT i, $cust_sql, abs(1000 / (i - 748000)) FROM generate_series(740001, 750000) i;\n"
	  . "ROLLBACK TO a;\n"
	  . "INSERT INTO orders (id, customer, amount) SELECT i, $cust_sql, i % 1000 FROM generate_series(740001, 745000) i;\n"
	  . "COMMIT;");
is(on_shards(740001, 750000), 5000, 'in a transaction, the INSERT after a failed one in a savepoint streams its rows, and only they are kept')
  or diag($ins_err);
$expected{$_} = 1 for 740001 .. 745000;

($ins_ret, $ins_out, $ins_err) = insert_orders(qq{DO \$\$ BEGIN
	BEGIN
		INSERT INTO orders (id, customer, amount) SELECT i, $cust_sql, abs(1000 / (i - 749000)) FROM generate_series(745001, 750000) i;
	EXCEPTION WHEN division_by_zero THEN RAISE NOTICE 'caught';
	END;
	INSERT INTO orders (id, customer, amount) SELECT i, $cust_sql, i % 1000 FROM generate_series(745001, 747000) i;
END \$\$;});
like($ins_err, qr/caught/, 'a PL/pgSQL exception block catches an error in the middle of a streamed INSERT') or diag($ins_err);
is(on_shards(745001, 750000), 2000, 'and the function\'s next streamed INSERT is kept alone');
$expected{$_} = 1 for 745001 .. 747000;

# A statement that fails before any shard got its rows leaves nothing
# behind for the next, in a fresh session.
($ins_ret, $ins_out, $ins_err) = insert_orders(
	"INSERT INTO orders (id, customer, amount) SELECT i, $cust_sql, abs(1000 / (i - 747010)) FROM generate_series(747001, 750000) i;\n"
	  . "INSERT INTO orders (id, customer, amount) VALUES (747001, " . q{'c' || (747001 % 97)} . ", 1);\n"
	  . "SELECT count(*) FROM orders WHERE id BETWEEN 747001 AND 750000;");
like($ins_err, qr/22012: division by zero/, 'a streamed INSERT fails before any shard got rows');
is($ins_out, '1', 'and the next INSERT in the session writes its one row, alone') or diag($ins_err);
$coord->safe_psql('postgres', 'UPDATE orders SET amount = 1 % 1000 WHERE id = 747001');
$coord->safe_psql('postgres', 'UPDATE orders SET amount = 747001 % 1000 WHERE id = 747001');
$expected{747001} = 1;

# A COPY whose start waits on a shard (a lock held there) and is cancelled
# by statement_timeout: the COPY sent but not begun is cancelled and ended,
# and the session goes on.
{
	my $locker = $shard{s1}->background_psql('postgres', on_error_stop => 0);
	$locker->query_safe('BEGIN; LOCK TABLE orders_shard IN ACCESS EXCLUSIVE MODE;');
	my ($ret, $out, $err) = $coord->psql('postgres',
		"\\set VERBOSITY verbose\nSET statement_timeout = '1s';\nCOPY orders (id, customer, amount) FROM STDIN;\n"
		  . copy_lines(750201, 760000) . "\\.\nRESET statement_timeout;\nSELECT 'after the timeout';\n",
		on_error_stop => 0, timeout => $PostgreSQL::Test::Utils::timeout_default);
	like($err, qr/57014: .*canceling statement due to statement timeout/,
		'a streamed COPY waiting on a lock held on a shard is cancelled by statement_timeout');
	# The lock is held until after psql returns: a COPY that waited for it
	# would have run into psql's timeout instead of statement_timeout.
	is($out, 'after the timeout', 'and the session goes on');
	$locker->query_safe('ROLLBACK;');
	$locker->quit;
	is(on_shards(750201, 760000), 0, 'and none of its rows is kept');
}

# An INSERT that fails in a savepoint before its first row reached the
# trigger leaves nothing behind: the next INSERT in the transaction, which
# reads the distributed table and so may not stream, does not.
($ins_ret, $ins_out, $ins_err) = insert_orders("BEGIN;\nSAVEPOINT a;\n"
	  . "INSERT INTO orders (id, customer, amount) SELECT i, $cust_sql, abs(1000 / (i - 760001)) FROM generate_series(760001, 770000) i;\n"
	  . "ROLLBACK TO a;\n"
	  . "INSERT INTO orders (id, customer, amount) SELECT id + 1000000, customer, amount FROM orders WHERE id BETWEEN 702001 AND 703000;\n"
	  . "COMMIT;\nSELECT count(*) FROM orders WHERE id BETWEEN 1702001 AND 1703000;");
is($ins_out, '1000', 'after an INSERT that failed on its first row in a savepoint, the next INSERT goes through the buffers')
  or diag($ins_err);
learn_slots(1702001, 1703000);
$coord->safe_psql('postgres', 'UPDATE orders SET customer = cust(id) WHERE id BETWEEN 1702001 AND 1703000');
$expected{$_} = 1 for 1702001 .. 1703000;

# A session terminated in the middle of a streamed COPY, with COPYs open on
# every shard, exits (postgres_fdw, rolling back, would wait forever on a
# connection in the middle of a COPY), and none of its rows stays.
{
	my ($in, $out, $err) = ("COPY orders (id, customer, amount) FROM STDIN;\n" . copy_lines(770001, 790000), '', '');
	my $h = IPC::Run::start([ 'psql', '-XAtq', '-d', $coord->connstr('postgres'), '-f', '-' ],
		'<', \$in, '>', \$out, '2>', \$err);
	$h->pump while length $in;
	my $copying = q{SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY public.orders_shard%' AND state = 'active'};
	my $all_copying = 1;
	for my $name (qw(s1 s2 s3))
	{
		$all_copying &&= $shard{$name}->poll_query_until('postgres', "$copying", '1');
	}
	ok($all_copying, 'a COPY whose client stops sending holds a COPY open on every shard');
	my $pid = $coord->safe_psql('postgres', q{SELECT pid FROM pg_stat_activity WHERE query LIKE 'COPY orders%' AND state = 'active'});
	$coord->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
	ok($coord->poll_query_until('postgres', "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $pid"),
		'terminated, its backend exits');
	my $ended = 1;
	$ended &&= $shard{$_}->poll_query_until('postgres', $copying, '0') for qw(s1 s2 s3);
	ok($ended, 'and the shards\' COPYs end');
	$h->kill_kill;
	is(on_shards(770001, 790000), 0, 'none of its rows stays on any shard');
}

# A shard that talks while it takes rows (a trigger of the user's there
# raising a NOTICE per row, megabytes of them) is read while the COPY is
# sent: neither side waits for the other forever.  Its COPY, ended and
# begun again to read what it said, is not restarted for each chunk.
$shard{s1}->safe_psql('postgres', q{
	CREATE FUNCTION chatty() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN RAISE NOTICE '%', repeat('x', 200); RETURN NEW; END $$;
	CREATE TRIGGER chatty BEFORE INSERT ON orders_shard FOR EACH ROW EXECUTE FUNCTION chatty();
	CREATE TABLE copies_begun (n int);
	CREATE FUNCTION count_copy() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN INSERT INTO public.copies_begun VALUES (1); RETURN NULL; END $$;
	CREATE TRIGGER count_copy BEFORE INSERT ON orders_shard FOR EACH STATEMENT EXECUTE FUNCTION count_copy();
});
($copy_ret, $copy_err) = copy_into_orders('', copy_lines(790001, 850000));
is($copy_ret, 0, 'a streamed COPY to a shard that sends a NOTICE per row succeeds') or diag(substr($copy_err, 0, 2000));
my $copies_begun = $shard{s1}->safe_psql('postgres', 'SELECT count(*) FROM copies_begun');
ok($copies_begun >= 1 && $copies_begun <= 2, 'its COPY there began at most twice')
  or diag("$copies_begun COPYs began");
$shard{s1}->safe_psql('postgres', 'DROP TRIGGER chatty ON orders_shard; DROP FUNCTION chatty();'
	  . ' DROP TRIGGER count_copy ON orders_shard; DROP FUNCTION count_copy(); DROP TABLE copies_begun');
is(on_shards(790001, 850000), 60000, 'and all its rows are on the shards');
$expected{$_} = 1 for 790001 .. 850000;

# Inserts that do not stream: a few rows; rows from a function of the
# user's; rows read from the distributed table itself (through
# postgres_fdw's connections).
($ins_ret, $ins_out, $ins_err) = insert_orders(
	"INSERT INTO orders (id, customer, amount) SELECT i, $cust_sql, i % 1000 FROM generate_series(750001, 750100) i;");
unlike($ins_err, $streams_insert, 'an INSERT of 100 rows keeps its buffers');
($ins_ret, $ins_out, $ins_err) = insert_orders(
	'INSERT INTO orders (id, customer, amount) SELECT i, cust(i), i % 1000 FROM generate_series(750101, 752000) i;');
unlike($ins_err, $streams_insert, 'an INSERT calling a function of the user\'s does not stream');
($ins_ret, $ins_out, $ins_err) = insert_orders(
	'INSERT INTO orders (id, customer, amount) SELECT id + 1000000, customer, amount FROM orders WHERE id BETWEEN 700001 AND 702000;');
is($ins_ret, 0, 'an INSERT reading the distributed table succeeds') or diag($ins_err);
unlike($ins_err, $streams_insert, 'and does not stream');
$coord->safe_psql('postgres', 'UPDATE orders SET customer = cust(id) WHERE id BETWEEN 1700001 AND 1702000');
is(on_shards(750001, 752000) + on_shards(1700001, 1702000), 4000, 'the rows of all three are on the shards');
$expected{$_} = 1 for 750001 .. 752000, 1700001 .. 1702000;

# The shard key cannot change: postgres_fdw would update the row in place,
# in the slot of its old key.  Refused through the distributed table and
# through the tables behind it.
for my $update ('UPDATE orders SET id = id + 5000000 WHERE id = 750001',
	'WITH u AS (UPDATE orders SET amount = 1, id = 5750001 WHERE id = 750001 RETURNING id) SELECT * FROM u',
	'UPDATE ws_dist.orders SET id = 5750001 WHERE id = 750001',
	'UPDATE ws_dist.orders_s000 SET id = 5750001 WHERE id = 750001')
{
	my ($upd_ret, $upd_out, $upd_err) = $coord->psql('postgres', "\\set VERBOSITY verbose\n$update;");
	like($upd_err, qr/0A000: cannot update the shard key "id" of distributed table "orders"/,
		"refused with 0A000: $update");
}
is($coord->safe_psql('postgres', 'SELECT count(*) FROM orders WHERE id IN (750001, 5750001)')
	  . ' ' . on_shards(750001, 750001), '1 1', 'and the row keeps its key, on its shard');
# SET key = key changes nothing (ORMs write every column), and an UPDATE
# of other columns goes to every shard.
is($coord->safe_psql('postgres', q{
	CREATE VIEW orders_on_top AS SELECT * FROM orders;
	UPDATE orders_on_top SET id = id, amount = amount WHERE id = 750001;
	UPDATE orders SET amount = amount WHERE id BETWEEN 750001 AND 750100 OR customer = 'nobody';
	DROP VIEW orders_on_top;
	SELECT 'done'}), 'done', 'SET id = id, through a view on the view, and an UPDATE of other columns pass');
my ($top_ret, $top_out, $top_err) = $coord->psql('postgres', q{
	\set VERBOSITY verbose
	CREATE VIEW orders_on_top AS SELECT * FROM orders;
	UPDATE orders_on_top SET id = 5750001 WHERE id = 750001;
	DROP VIEW orders_on_top;});
like($top_err, qr/0A000: cannot update the shard key "id" of distributed table "orders"/,
	'an UPDATE of the key through a view on the view is refused');

# INSERT ... ON CONFLICT into a distributed table: 012_shard_upsert.pl.
# The planner hook reads nothing of the extension: a database without it,
# and an ordinary view with an INSTEAD OF trigger, keep ON CONFLICT.
$coord->safe_psql('postgres', 'CREATE DATABASE no_extension');
is($coord->safe_psql('no_extension', q{
	CREATE TABLE t (id int PRIMARY KEY);
	CREATE VIEW v AS SELECT * FROM t;
	CREATE FUNCTION v_insert() RETURNS trigger LANGUAGE plpgsql
	AS $$ BEGIN INSERT INTO t VALUES (NEW.id) ON CONFLICT DO NOTHING; RETURN NEW; END $$;
	CREATE TRIGGER v_insert INSTEAD OF INSERT ON v FOR EACH ROW EXECUTE FUNCTION v_insert();
	INSERT INTO v VALUES (1) ON CONFLICT DO NOTHING;
	INSERT INTO v VALUES (1) ON CONFLICT DO NOTHING;
	SELECT count(*) FROM t;}), '1', 'INSERT ... ON CONFLICT into another view still works, in a database without the extension');
is($coord->safe_psql('no_extension', q{
	CREATE SCHEMA ws_dist;
	CREATE TABLE ws_dist.p (k int) PARTITION BY HASH (k);
	CREATE TABLE ws_dist.p0 PARTITION OF ws_dist.p FOR VALUES WITH (MODULUS 2, REMAINDER 0);
	CREATE TABLE ws_dist.p1 PARTITION OF ws_dist.p FOR VALUES WITH (MODULUS 2, REMAINDER 1);
	INSERT INTO ws_dist.p VALUES (1);
	UPDATE ws_dist.p SET k = 2;
	SELECT k FROM ws_dist.p;}), '2', 'and a schema of its own named ws_dist keeps its partition key updates');
is($coord->safe_psql('no_extension', q{
	CREATE ROLE view_keeper;
	CREATE VIEW plain_view AS SELECT 1 AS a;
	ALTER VIEW plain_view OWNER TO view_keeper;
	ALTER TABLE plain_view RENAME COLUMN a TO b;
	SELECT b FROM plain_view;
	DROP VIEW plain_view;
	DROP ROLE view_keeper;}), '1', 'and its views take OWNER TO, RENAME COLUMN and DROP as ever');
$coord->safe_psql('postgres', 'DROP DATABASE no_extension');

# PostgreSQL gives an INSTEAD OF trigger a copy of each row, made in the
# statement's memory, and frees it only if the trigger returns another
# tuple: a router that returned the row it was given would hold every row
# until the statement ends.  The last of 300,000 rows records the size of
# the statement's memory (ExecutorState), read back before the rollback:
# the subquery is an InitPlan, run when the CASE first needs it.
my $executor_memory = q{(SELECT sum(total_bytes) FROM pg_backend_memory_contexts WHERE name = 'ExecutorState')::text};
for my $case (['streams', q{'c'}, $streams_insert], ['does not stream', 'cust(i)', undef])
{
	my ($what, $customer, $streams) = @$case;
	($ins_ret, $ins_out, $ins_err) = insert_orders(qq{
		BEGIN;
		INSERT INTO orders (id, customer, amount)
		SELECT i, CASE WHEN i = 2300000 THEN $executor_memory ELSE $customer END, 1
		FROM (SELECT generate_series(2000001, 2300000) AS i) s;
		SELECT customer FROM orders WHERE id = 2300000;
		ROLLBACK;});
	is($ins_ret, 0, "an INSERT ... SELECT of 300,000 rows that $what succeeds") or diag($ins_err);
	if ($streams)
	{
		like($ins_err, $streams, 'and streams');
	}
	else
	{
		unlike($ins_err, $streams_insert, 'and keeps its buffers');
	}
	like($ins_out, qr/^\d+$/, 'its last row records the size of the statement\'s memory');
	cmp_ok($ins_out, '<', 8_000_000, 'which stays small by the last row (300,000 rows held would be 50 MB)');
}

# A long transaction of single-row INSERTs (one in 100 followed by one
# failing inside a savepoint, rows still buffered): the router's memory for
# the transaction's rows (write_scaling routed rows) must not grow with the
# statements.  Each statement used to leave a mark behind, about 110 bytes.
sub routed_rows_memory_sql
{
	return q{SELECT used_bytes FROM pg_backend_memory_contexts}
	  . q{ WHERE name = 'write_scaling routed rows' AND parent = 'TopTransactionContext';};
}
sub single_row_statements
{
	my ($from, $to, $failing) = @_;
	my $sql = '';
	for my $i ($from .. $to)
	{
		$sql .= "INSERT INTO orders (id, customer, amount) VALUES ($i, 'c', 1);\n";
		next if !$failing || $i % 100;
		$sql .= "SAVEPOINT s;\n"
		  . "INSERT INTO orders (id, customer, amount) SELECT j, 'c', 1 / (j - $i - 5) FROM generate_series($i + 1, $i + 9) j;\n"
		  . "ROLLBACK TO SAVEPOINT s;\n";
	}
	return $sql;
}
($ins_ret, $ins_out, $ins_err) = insert_orders(
	"BEGIN;\n"
	  . single_row_statements(2400001, 2402000, 1)
	  . routed_rows_memory_sql()
	  . single_row_statements(2402001, 2412000, 1)
	  . routed_rows_memory_sql()
	  . "ROLLBACK;\n");
like($ins_err, qr/22012: division by zero/, 'a transaction of 12,000 single-row INSERTs, some failing in a savepoint, runs');
my ($after_2k, $after_12k) = split /\n/, $ins_out;
cmp_ok($after_12k - $after_2k, '<', 256 * 1024,
	"and the router's memory does not grow with its statements ($after_2k bytes after 2,000, $after_12k after 12,000)");

# Terminated on the shard while idle, the connection is noticed as closed
# and replaced.
learn_slots(160041, 160060);
my ($after_kill) = grep { shard_of($_) eq shard_of(160034) && !$expected{$_} } 160041 .. 160060;
is($shard{shard_of(160034)}->safe_psql('postgres', q{
	SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'write_scaling'}),
	'1', 'the connection of its own is terminated on the shard');
$session->query_safe(insert_sql($after_kill));
$expected{$after_kill} = 1;
is($coord->safe_psql('postgres', "SELECT count(*) FROM orders WHERE id = $after_kill"), '1',
	'and the next row goes through a new one');

# A trigger that buffers rows for a local table (flushed at commit, after
# postgres_fdw's commit) sends the waiting row first.
my ($with_local) = grep { !$expected{$_} } 160041 .. 160060;
$coord->safe_psql('postgres', q{
	CREATE TABLE order_notes (id bigint PRIMARY KEY, note text);
	CREATE FUNCTION note_order() RETURNS trigger LANGUAGE plpgsql AS $$
	DECLARE
		buffered bigint;
	BEGIN
		buffered := ws.buffered_insert('order_notes', ROW(-1, 'noted')::order_notes);
		RETURN NULL;
	END $$;
	CREATE TRIGGER zz_note_order AFTER INSERT ON orders FOR EACH STATEMENT EXECUTE FUNCTION note_order();
});
$session->query_safe(insert_sql($with_local));
$expected{$with_local} = 1;
$coord->safe_psql('postgres', q{DROP TRIGGER zz_note_order ON orders});
is($coord->safe_psql('postgres', "SELECT (SELECT count(*) FROM orders WHERE id = $with_local) || ' ' || (SELECT count(*) FROM order_notes)"),
	'1 1', 'a row and a buffered row of a trigger both commit');

# Rows buffered for a distributed table by a trigger that the commit's
# flush fires come too late: a clear error, and nothing is written.
$coord->safe_psql('postgres', q{
	CREATE FUNCTION note_to_orders() RETURNS trigger LANGUAGE plpgsql AS $$
	DECLARE
		buffered bigint;
	BEGIN
		buffered := ws.buffered_insert('moods.feelings', ROW(5000 + NEW.id::int, 'calm', 'late')::moods.feelings);
		RETURN NEW;
	END $$;
	CREATE TRIGGER forward AFTER INSERT ON order_notes FOR EACH ROW EXECUTE FUNCTION note_to_orders();
});
my ($late_ret, $late_out, $late_err) = $coord->psql('postgres',
	q{SELECT ws.buffered_insert('order_notes', ROW(2, 'x')::order_notes)});
like($late_err, qr/cannot buffer rows for distributed table "feelings" while the commit flushes buffered rows/,
	'buffering for a distributed table during the commit\'s flush is refused');
is($coord->safe_psql('postgres', q{SELECT count(*) FROM order_notes WHERE id = 2}), '0', 'and nothing was written');
$coord->safe_psql('postgres', q{DROP TABLE order_notes; DROP FUNCTION note_order(), note_to_orders();});

# A transaction that cannot see a table distributed after it began fails to
# write to it, and the next transaction writes: the failed read of the
# table's shape left nothing behind.
my $old_snapshot = $coord->background_psql('postgres', on_error_stop => 0);
$old_snapshot->query_safe(q{BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1;});
$coord->safe_psql('postgres', q{
	CREATE TABLE moods.later (id int PRIMARY KEY, note text);
	SELECT ws.distribute_table('moods.later', 'id', 'm2');
});
$old_snapshot->query(q{INSERT INTO moods.later VALUES (1, 'too early'), (2, 'too early');});
like($old_snapshot->{stderr}, qr/not a distributed table/, 'a transaction older than the distribution cannot write to it');
$old_snapshot->{stderr} = '';
$old_snapshot->query_safe(q{ROLLBACK});
$old_snapshot->query_safe(q{INSERT INTO moods.later VALUES (1, 'then'), (2, 'then')});
$old_snapshot->quit;
is($coord->safe_psql('postgres', q{SELECT count(*) FROM moods.later}), '2', 'the same session then writes to it');

# Switched off, the row goes in postgres_fdw's remote transaction.
$session->quit;
ok($shard{shard_of(160005)}->poll_query_until('postgres',
	q{SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name = 'write_scaling'}),
	'the connection of its own closes with the session');
$session = $coord->background_psql('postgres');
$session->query_safe(q{SET write_scaling.shard_one_round_trip = off});
$session->query_safe(insert_sql(160005));
$expected{160005} = 1;
is(own_connections(shard_of(160005), 'true'), '0', 'with write_scaling.shard_one_round_trip off, no connection of its own');
is($coord->safe_psql('postgres', q{SELECT count(*) FROM orders WHERE id = 160005}), '1', 'and the row is stored');
$session->quit;

# --- a fourth shard, rebalanced while another session inserts ----------------

start_shard('s4');
$coord->safe_psql('postgres', q{SELECT ws.add_shard('m', 's4')});
my $to_move = $coord->safe_psql('postgres', q{SELECT count(*) FROM ws.shard_slots WHERE map = 'm' AND owner IS DISTINCT FROM placed_on});
is($to_move, $vnodes / 4, 'adding a 4th shard reassigns a quarter of the slots, all to s4');

# 3,000 single-row INSERTs, each its own transaction, from another session.
# It goes on after an error and prints the id of every row it stored.  A
# millisecond's sleep after each keeps it writing for seconds, longer than
# the rebalance takes here.
my $writer_sql = "${PostgreSQL::Test::Utils::tmp_check}/010_writer.sql";
PostgreSQL::Test::Utils::append_to_file($writer_sql, join('', map {
	"INSERT INTO orders (id, customer, amount) VALUES ($_, cust($_), $_ % 1000) RETURNING id;\n"
	  . "SELECT pg_sleep(0.001) \\g /dev/null\n" } 200001 .. 203000));
my ($w_out, $w_err) = ('', '');
my $writer = IPC::Run::start(
	[ 'psql', '-XAtq', '-d', $coord->connstr('postgres'), '-f', $writer_sql ],
	'>', \$w_out, '2>', \$w_err);
$coord->poll_query_until('postgres', q{SELECT count(*) >= 200 FROM orders WHERE id > 200000})
  or die 'the writer does not progress';

my $t0 = time;
my $moved = $coord->safe_psql('postgres', q{CALL ws.rebalance('m')});
note("rebalance to s4 took " . (time - $t0) . "s, reported $moved");
$writer->finish;
my @stored = grep { /^\d+$/ } split /\n/, $w_out;
$expected{$_} = 1 for @stored;
my @w_errors = grep { /ERROR/ } split /\n/, $w_err;
is(scalar(@stored), 3000, 'every insert of the concurrent writer succeeded during the rebalance')
  or diag(scalar(@w_errors) . " failed, the first with: $w_errors[0]");

my ($log_moved, $log_slots, $log_to) = split /\|/, $coord->safe_psql('postgres', q{
	SELECT sum(rows_moved), count(*), string_agg(DISTINCT to_server, ',') FROM ws.rebalance_log});
is($log_slots, $to_move, 'ws.rebalance_log has one move per reassigned slot');
is($log_to, 's4', 'all moves went to s4');
like($moved, qr/^\{"s4": $log_moved\}$/, "ws.rebalance reports the rows it moved, as logged ($log_moved)");
my $fraction = $log_moved / scalar(keys %expected);
note(sprintf('rebalance moved %d of %d rows: %.3f', $log_moved, scalar(keys %expected), $fraction));
ok($fraction > 0.15 && $fraction < 0.35, sprintf('about a quarter of the rows moved (%.3f)', $fraction));
my $overlap = $coord->safe_psql('postgres', q{
	SELECT count(*) FROM orders
	WHERE id > 200000 AND created_at BETWEEN (SELECT min(moved_at) FROM ws.rebalance_log)
										 AND (SELECT max(moved_at) FROM ws.rebalance_log)});
note("$overlap concurrent inserts were made between the first and last move");
cmp_ok($overlap, '>', 0, 'the writer inserted while the rebalance moved slots');
verify('after adding s4 and rebalancing', settled => 1);

# --- remove s2; kill the rebalance twice ------------------------------------

$coord->safe_psql('postgres', q{SELECT ws.remove_shard('m', 's2')});
my @leaving = split /\n/, $coord->safe_psql('postgres', q{
	SELECT slot FROM ws.shard_slots WHERE map = 'm' AND owner IS DISTINCT FROM placed_on ORDER BY slot});
is($coord->safe_psql('postgres', q{SELECT count(*) FROM ws.shard_slots WHERE map = 'm' AND placed_on = 's2'}),
	scalar(@leaving), 'removing s2 reassigns exactly its slots');
cmp_ok(scalar(@leaving), '>=', 4, 's2 has slots to give away (' . scalar(@leaving) . ')');
my @leaving_tables = map { sprintf('orders_s%03d', $_) } @leaving;
my $log_mark = $coord->safe_psql('postgres', 'SELECT count(*) FROM ws.rebalance_log');
verify('after remove_shard, before the rebalance');

# Two keys of a slot, not used before.
sub keys_of_slot
{
	my ($slot) = @_;
	my @k = grep { $slot_of{$_} == $slot } 300001 .. 300400;
	die "too few keys in slot $slot" if @k < 3;
	return @k[ 0, 1, 2 ];
}

# A statement in its own psql, named so that it can be found.
sub start_psql
{
	my ($name, $sql) = @_;
	my %r = (out => '', err => '', name => $name);
	$r{h} = IPC::Run::start(
		[ 'psql', '-XAtq', '-d', $coord->connstr('postgres') . " application_name=$name", '-c', $sql ],
		'>', \$r{out}, '2>', \$r{err});
	$coord->poll_query_until('postgres', "SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = '$name'")
	  or die "$name did not start";
	$r{pid} = $coord->safe_psql('postgres', "SELECT pid FROM pg_stat_activity WHERE application_name = '$name'");
	return \%r;
}
sub start_rebalance { return start_psql($_[0], "CALL ws.rebalance('m')"); }
sub insert_sql
{
	my ($id) = @_;
	return "INSERT INTO orders (id, customer, amount) VALUES ($id, cust($id), $id % 1000) RETURNING id";
}
# Whether the session named name waits for a lock on relation rel.
sub waits_for
{
	my ($name, $rel, $mode) = @_;
	return $coord->poll_query_until('postgres', qq{
		SELECT EXISTS (SELECT FROM pg_locks l JOIN pg_stat_activity a USING (pid)
					   WHERE a.application_name = '$name' AND NOT l.granted
						 AND l.relation = '$rel'::regclass @{[ $mode ? "AND l.mode = '$mode'" : '' ]})});
}
sub slot_rel { return sprintf('ws_dist.orders_s%03d', $_[0]); }
sub kill_rebalance
{
	my ($r, $label) = @_;
	is($coord->safe_psql('postgres', "SELECT pg_terminate_backend($r->{pid})"), 't', "$label: the rebalance session is terminated");
	ok(!$r->{h}->finish, "$label: CALL ws.rebalance did not complete");
	like($r->{err}, qr/terminating connection due to administrator command/, "$label: it was killed, not failed");
}
sub moves_this_round
{
	return $coord->safe_psql('postgres', "SELECT count(*) FROM (SELECT * FROM ws.rebalance_log OFFSET $log_mark) x");
}

# Kill 1: after the first slot's move committed, its old copy not dropped.
# A transaction on s2 holds that old copy, so the rebalance puts its drop
# off (after 200 ms); a writer holds the second slot, so the rebalance then
# waits there, and is killed.
my $s2_blocker = $shard{s2}->background_psql('postgres');
$s2_blocker->query_safe("BEGIN; LOCK TABLE public.$leaving_tables[0] IN ACCESS SHARE MODE;");
my ($held_key) = keys_of_slot($leaving[1]);
my $slot_holder = $coord->background_psql('postgres');
$slot_holder->query_safe("BEGIN; " . insert_sql($held_key) . ";");
my $r1 = start_rebalance('rebalance_1');
ok(waits_for('rebalance_1', slot_rel($leaving[1])), 'kill 1: the rebalance waits for the second slot, which a writer holds');
like($coord->safe_psql('postgres', qq{SELECT last_error FROM ws.shard_cleanup WHERE remote_table = '$leaving_tables[0]'}),
	qr/lock timeout/, 'kill 1: having put off the drop of the first slot\'s old copy, which a transaction on s2 holds');
kill_rebalance($r1, 'kill 1');
$slot_holder->query_safe('ROLLBACK');
$slot_holder->quit;
$s2_blocker->query_safe('ROLLBACK');
is(moves_this_round(), 1, 'kill 1: one slot was moved before the kill');
is($coord->safe_psql('postgres', qq{SELECT placed_on <> 's2' FROM ws.shard_slots WHERE map = 'm' AND slot = $leaving[0]}),
	't', 'kill 1: that slot is placed on its new owner');
is($coord->safe_psql('postgres', qq{SELECT string_agg(server || '.' || remote_table, ',') FROM ws.shard_cleanup
	WHERE remote_table <> '$leaving_tables[1]'}),
	"s2.$leaving_tables[0]", 'kill 1: its old copy is still queued for cleanup');
is($coord->safe_psql('postgres', qq{SELECT server FROM ws.shard_cleanup WHERE remote_table = '$leaving_tables[1]'}),
	$coord->safe_psql('postgres', qq{SELECT owner FROM ws.shard_slots WHERE map = 'm' AND slot = $leaving[1]}),
	'kill 1: and so is the copy the second slot was going to make on its new owner');
verify('kill 1 (old copy left on s2)');

# Kill 2: after a slot's rows were copied to its new owner, before the
# switch.  Session A inserts a row into the third leaving slot and keeps its
# transaction open, so the rebalance (after moving the second) waits for
# that slot; session B reads the table, so once A commits, the rebalance
# copies the slot and then waits to detach the old partition.
my $k3 = $leaving[2];
my ($a_id, $w1_id) = keys_of_slot($k3);
my $sess_a = $coord->background_psql('postgres');
my $sess_b = $coord->background_psql('postgres');
$sess_a->query_safe("BEGIN; " . insert_sql($a_id) . ";");
my $r2 = start_rebalance('rebalance_2');
ok(waits_for('rebalance_2', slot_rel($k3)), 'kill 2: the rebalance waits for the slot a writer holds');
# Another writer of that slot queues behind the rebalance.
my $w1 = start_psql('writer_1', insert_sql($w1_id));
ok(waits_for('writer_1', slot_rel($k3)), 'kill 2: a second writer of the slot waits behind the rebalance');
is(moves_this_round(), 2, 'kill 2: by then the second slot moved too');
# Session A's transaction uses s2's table of slots (its INSERT checked the
# partition constraint there), so dropping a slot table of it is put off.
is($coord->safe_psql('postgres', q{SELECT count(*) FROM ws.shard_cleanup WHERE last_error LIKE '%lock timeout%'}),
	'2', 'kill 2: the old copies of both wait in the cleanup queue while a transaction uses s2\'s table');
$sess_b->query_safe(q{BEGIN; SELECT count(*) FROM ws_dist.orders WHERE id = 1;});
$sess_a->query_safe('COMMIT');
$expected{$a_id} = 1;
ok(waits_for('rebalance_2', 'ws_dist.orders', 'AccessExclusiveLock'),
	'kill 2: the rebalance copied the slot and waits to switch it');
kill_rebalance($r2, 'kill 2');
$sess_b->query_safe('ROLLBACK');
$w1->{h}->finish;
chomp $w1->{out};
is($w1->{out}, $w1_id, 'kill 2: the writer that waited behind the killed rebalance stored its row')
  or diag($w1->{err});
$expected{$w1_id} = 1 if $w1->{out} eq $w1_id;
$sess_a->quit;
$sess_b->quit;
is(moves_this_round(), 2, 'kill 2: the interrupted slot was not logged as moved');
is($coord->safe_psql('postgres', "SELECT placed_on FROM ws.shard_slots WHERE map = 'm' AND slot = $k3"),
	's2', 'kill 2: the interrupted slot is still placed on s2');
verify('kill 2 (a slot copied, not switched)');

# The rerun finishes the job.  Session A holds the last leaving slot, so
# the rerun (after moving the others) waits for it; a writer of that slot
# queues behind the rerun and must, once the slot has moved, store its row
# on the slot's new server, and go on writing to that slot afterwards.
my $k_last = $leaving[-1];
my ($a2_id, $w2_id, $w3_id) = keys_of_slot($k_last);
$sess_a = $coord->background_psql('postgres');
$sess_a->query_safe("BEGIN; " . insert_sql($a2_id) . ";");
my $r3 = start_rebalance('rebalance_3');
ok(waits_for('rebalance_3', slot_rel($k_last)), 'rerun: the rebalance waits for the slot a writer holds');
is(moves_this_round(), scalar(@leaving) - 1, 'rerun: having moved all the others');
my $w2 = $coord->background_psql('postgres', on_error_stop => 0);
$w2->query_safe(q{SET application_name = 'writer_2'});
$w2->{stdin} .= insert_sql($w2_id) . ";\n";
$w2->{run}->pump_nb;
ok(waits_for('writer_2', slot_rel($k_last)), 'rerun: a second writer of the slot waits behind the rebalance');
$sess_a->query_safe('COMMIT');
$sess_a->quit;
$expected{$a2_id} = 1;
ok($r3->{h}->finish, 'rerun: CALL ws.rebalance completes') or diag($r3->{err});
my ($w2_out) = $w2->query(';');
chomp $w2_out;
is($w2_out, $w2_id, 'rerun: the writer that waited for the moving slot stored its row once the slot moved')
  or diag($w2->{stderr});
$expected{$w2_id} = 1 if $w2_out eq $w2_id;
$w2->{stderr} = '';
my ($w3_out) = $w2->query(insert_sql($w3_id));
chomp $w3_out;
is($w3_out, $w3_id, 'rerun: and the same session then writes to that slot again') or diag($w2->{stderr});
$expected{$w3_id} = 1 if $w3_out eq $w3_id;
$w2->quit;
is(moves_this_round(), scalar(@leaving), 'the rerun moved the remaining slots; each slot logged once');
is($coord->safe_psql('postgres', "SELECT count(*) FROM (SELECT * FROM ws.rebalance_log OFFSET $log_mark) x WHERE from_server <> 's2'"),
	'0', 'every move of this round came from s2');
is($shard{s2}->safe_psql('postgres', q{SELECT count(*) FROM pg_class WHERE relname LIKE 'orders%'}),
	'0', 'no slot table is left on s2');
verify('after the rerun', settled => 1);
my $after_rerun = $coord->safe_psql('postgres', q{SELECT string_agg(owner || ':' || n, ',' ORDER BY owner) FROM (SELECT owner, count(*) AS n FROM ws.shard_slots WHERE map = 'm' GROUP BY owner) x});
note("slots per shard after removing s2: $after_rerun");

# --- a retried slot, and two rebalances at once ------------------------------

# s2 comes back.  A reader keeps the distributed table open, so the first
# attempt to switch the first slot times out (after 5 s); meanwhile a writer
# of that slot waits, and stores its row as soon as the attempt is rolled
# back.  The retry must copy that row too (a new transaction, new remote
# snapshots).  A second rebalance started at the same time waits for the
# first, then finds nothing left: each slot moves once.
$coord->safe_psql('postgres', q{SELECT ws.add_shard('m', 's2')});
my $first = $coord->safe_psql('postgres', q{
	SELECT min(slot) FROM ws.shard_slots WHERE map = 'm' AND owner IS DISTINCT FROM placed_on});
my $round_mark = $coord->safe_psql('postgres', 'SELECT count(*) FROM ws.rebalance_log');
learn_slots(500001, 501000);
my ($late_key) = grep { $slot_of{$_} == $first } 500001 .. 501000;
my $reader = $coord->background_psql('postgres');
$reader->query_safe('BEGIN; SELECT count(*) FROM orders;');
my $ra = start_rebalance('rebalance_a');
my $rb = start_rebalance('rebalance_b');
ok(waits_for('rebalance_a', 'ws_dist.orders', 'AccessExclusiveLock')
	  || waits_for('rebalance_b', 'ws_dist.orders', 'AccessExclusiveLock'),
	'a rebalance waits for the reader to switch the first slot');
my $late = start_psql('late_writer', insert_sql($late_key));
ok($late->{h}->finish, "the writer of slot $first stores its row once the attempt is rolled back")
  or diag($late->{err});
$reader->query_safe('COMMIT;');
$reader->quit;
ok($ra->{h}->finish, 'the first rebalance completes') or diag($ra->{err});
ok($rb->{h}->finish, 'the second rebalance completes') or diag($rb->{err});
$expected{$late_key} = 1;
is($coord->safe_psql('postgres', qq{
	SELECT count(*) FROM (SELECT slot FROM (SELECT * FROM ws.rebalance_log OFFSET $round_mark) x
						  GROUP BY slot HAVING count(*) > 1) y}),
	'0', 'no slot moved twice');
verify('after a retried slot and two rebalances at once', settled => 1);

# --- a shard down ------------------------------------------------------------

$shard{s3}->stop;
my $on_s3 = $coord->safe_psql('postgres', q{SELECT min(i) FROM generate_series(300401, 300500) i WHERE ws.shard_for('m', i::text) = 's3'});
my $on_s1 = $coord->safe_psql('postgres', q{SELECT min(i) FROM generate_series(300401, 300500) i WHERE ws.shard_for('m', i::text) = 's1'});
my $old_on_s4 = $coord->safe_psql('postgres', q{SELECT min(i) FROM generate_series(1, 1000) i WHERE ws.shard_for('m', i::text) = 's4'});
my ($ret, $out, $err) = $coord->psql('postgres', "INSERT INTO orders (id, customer, amount) VALUES ($on_s3, 'x', 1)");
isnt($ret, 0, "with s3 down, an INSERT of a key s3 holds ($on_s3) fails");
like($err, qr/shard server "s3"/, 'and the error names the server');
($ret, $out, $err) = $coord->psql('postgres', "INSERT INTO orders (id, customer, amount) VALUES ($on_s1, cust($on_s1), $on_s1 % 1000), ($on_s3, 'x', 1)");
isnt($ret, 0, 'a multi-row INSERT with a row for s3 fails');
is($coord->safe_psql('postgres', "SELECT count(*) FROM orders WHERE id = $on_s1"), '0', 'and its row for s1 was not kept');
($ret, $out, $err) = $coord->psql('postgres', "COPY orders (id, customer, amount) FROM STDIN;\n"
	  . "$on_s1\t" . "x\t1\n$on_s3\tx\t1\n\\.\n");
like($err, qr/shard server "s3"/, 'a streamed COPY with a row for s3 fails, naming the server');
is($coord->safe_psql('postgres', "SELECT count(*) FROM orders WHERE id = $on_s1"), '0', 'and its row for s1 was not kept');
($ret, $out, $err) = $coord->psql('postgres', "INSERT INTO orders (id, customer, amount) VALUES ($on_s1, cust($on_s1), $on_s1 % 1000)");
is($ret, 0, "an INSERT of a key s1 holds ($on_s1) succeeds") or diag($err);
is($coord->safe_psql('postgres', "SELECT amount FROM orders WHERE id = $on_s1"), $on_s1 % 1000, 'and reads back by key');
is($coord->safe_psql('postgres', "SELECT customer = cust(id) FROM orders WHERE id = $old_on_s4"), 't',
	"a lookup by a key on a live shard ($old_on_s4, on s4) succeeds");
($ret, $out, $err) = $coord->psql('postgres', 'SELECT count(*) FROM orders');
isnt($ret, 0, 'a read of all shards fails while s3 is down');
like($err, qr/"s3"/, 'naming s3');
$expected{$on_s1} = 1;
$shard{s3}->start;
verify('after s3 came back', settled => 1);

# --- buffered inserts into the distributed table ----------------------------

# Rows buffered by ws.buffered_insert are flushed through COPY into the view
# (by size, then at commit) and routed like any insert; a rolled-back
# transaction's buffered rows reach no shard.
$coord->safe_psql('postgres', q{
	SET write_scaling.batch_rows = 700;
	BEGIN;
	SELECT count(ws.buffered_insert('orders', ROW(i, cust(i), (i % 1000)::int, clock_timestamp())::orders))
	FROM generate_series(400001, 402000) i;
	COMMIT;
	BEGIN;
	SELECT count(ws.buffered_insert('orders', ROW(i, cust(i), (i % 1000)::int, clock_timestamp())::orders))
	FROM generate_series(402001, 402100) i;
	ROLLBACK;
});
learn_slots(400001, 402000);
$expected{$_} = 1 for 400001 .. 402000;
verify('after buffered inserts', settled => 1);

# Rows buffered for a postgres_fdw foreign table go at the end of each
# statement, not at commit, where postgres_fdw may have committed already:
# the transaction reads them, and they commit with it.
$shard{s1}->safe_psql('postgres', q{CREATE TABLE plain_notes (id int PRIMARY KEY, note text)});
$coord->safe_psql('postgres', q{
	CREATE FOREIGN TABLE plain_notes (id int, note text) SERVER s1;
	CREATE TABLE local_notes (id int PRIMARY KEY, note text);
});
is($coord->safe_psql('postgres', q{
	BEGIN;
	SELECT ws.buffered_insert('plain_notes', ROW(1, 'one')::plain_notes);
	SELECT ws.buffered_insert('plain_notes', ROW(2, 'two')::plain_notes);
	SELECT count(*) FROM plain_notes;
	COMMIT;}), "1\n1\n2", 'rows buffered for a foreign table go at the end of each statement, and the next reads them');
is($shard{s1}->safe_psql('postgres', q{SELECT count(*) FROM plain_notes}), '2', 'and committed with the transaction');

# A trigger of the commit's flush that writes through postgres_fdw, which
# may have committed already, is refused with a clean error.
$coord->safe_psql('postgres', q{
	CREATE FUNCTION forward_note() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO plain_notes VALUES (NEW.id, NEW.note);
		RETURN NEW;
	END $$;
	CREATE TRIGGER forward AFTER INSERT ON local_notes FOR EACH ROW EXECUTE FUNCTION forward_note();
});
($ret, $out, $err) = $coord->psql('postgres', q{SELECT ws.buffered_insert('local_notes', ROW(3, 'three')::local_notes)});
like($err, qr/cannot use postgres_fdw while the commit flushes buffered rows/,
	'a trigger of the commit\'s flush that uses postgres_fdw is refused');
is($coord->safe_psql('postgres', q{SELECT (SELECT count(*) FROM local_notes) || ' ' || (SELECT count(*) FROM plain_notes)}),
	'0 2', 'and nothing of that transaction was written');

# --- TRUNCATE ----------------------------------------------------------------

# TRUNCATE of a distributed table empties its slot tables on every shard, in
# postgres_fdw's remote transaction (a rollback takes it back).  It needs
# the TRUNCATE privilege on the table, not on what lies behind it; RESTART
# IDENTITY restarts the serial's sequence, which no column owns meanwhile.
sub tick_rows_on_shards
{
	return join ' ', map { $shard{$_}->safe_psql('postgres', 'SELECT count(*) FROM moods.tick_shard') } qw(s1 s2 s3);
}
$coord->safe_psql('postgres', q{
	CREATE TABLE moods.tick (id bigserial PRIMARY KEY, note text);
	SELECT ws.distribute_table('moods.tick', 'id', 'm2');
	INSERT INTO moods.tick (note) SELECT 't' || i FROM generate_series(1, 300) i;
	CREATE TABLE moods.tock (n int);
	INSERT INTO moods.tock VALUES (1);
	CREATE ROLE ticker;
	GRANT USAGE ON SCHEMA moods TO ticker;
});
# It has user mappings of its own; the table's rows still travel under its
# owner's (below).
$coord->safe_psql('postgres', join '', map {
	"CREATE USER MAPPING FOR ticker SERVER $_ OPTIONS (user 'postgres', password_required 'false');" } qw(s1 s2 s3));
my $tick_before = tick_rows_on_shards();
unlike($tick_before, qr/\b0\b/, "moods.tick has rows on every shard ($tick_before)");
is($coord->safe_psql('postgres', q{BEGIN; TRUNCATE moods.tick; SELECT count(*) FROM moods.tick; ROLLBACK;}),
	'0', 'TRUNCATE empties a distributed table');
is($coord->safe_psql('postgres', 'SELECT count(*) FROM moods.tick') . ' ' . tick_rows_on_shards(), "300 $tick_before",
	'and a rollback takes it back, on every shard');
($ret, $out, $err) = $coord->psql('postgres', q{SET ROLE ticker; TRUNCATE moods.tick;});
like($err, qr/ERROR:  permission denied for table tick/, 'TRUNCATE needs the TRUNCATE privilege on the distributed table');
$coord->safe_psql('postgres', 'GRANT TRUNCATE ON moods.tick TO ticker');
($ret, $out, $err) = $coord->psql('postgres', q{SET ROLE ticker; TRUNCATE moods.tick, moods.tock;});
like($err, qr/ERROR:  permission denied for table tock/, 'and on every other table it names');
is($coord->safe_psql('postgres', 'SELECT count(*) FROM moods.tick') . ' ' . tick_rows_on_shards(), "300 $tick_before",
	'a TRUNCATE that fails leaves every row');
($ret, $out, $err) = $coord->psql('postgres', q{SET ROLE ticker; TRUNCATE moods.tick;});
is($ret, 0, 'with the privilege on the distributed table alone, TRUNCATE succeeds') or diag($err);
is($coord->safe_psql('postgres', 'SELECT count(*) FROM moods.tick') . ' ' . tick_rows_on_shards(), '0 0 0 0',
	'and every shard\'s slot tables are empty');
# A role other than the owner, with user mappings of its own, reads and
# updates what it inserted in its transaction, and truncates after it: its
# rows travel under the user mapping that postgres_fdw uses for the view
# (the owner's), in the same remote session as the reads.
$coord->safe_psql('postgres', q{
	GRANT SELECT, INSERT, UPDATE ON moods.tick TO ticker;
	GRANT USAGE ON SEQUENCE moods.tick_id_seq TO ticker});
is($coord->safe_psql('postgres', q{
	SET ROLE ticker;
	BEGIN;
	INSERT INTO moods.tick (note) SELECT 'mine' FROM generate_series(1, 20);
	INSERT INTO moods.tick (note) VALUES ('one');
	UPDATE moods.tick SET note = 'changed' WHERE note IN ('mine', 'one');
	SELECT count(*) FROM moods.tick WHERE note = 'changed';
	ROLLBACK;}),
	'21', 'a role that is not the owner reads and updates the rows it inserted, in its transaction');
$coord->safe_psql('postgres', q{SET ROLE ticker; INSERT INTO moods.tick (note) VALUES ('alone')});
is($coord->safe_psql('postgres', q{
	SET ROLE ticker;
	SET statement_timeout = '30s';
	BEGIN;
	INSERT INTO moods.tick (note) VALUES ('x'), ('y');
	TRUNCATE moods.tick;
	COMMIT;
	SELECT count(*) FROM moods.tick;}),
	'0', 'and truncates after its inserts in one transaction');
$coord->safe_psql('postgres', q{INSERT INTO moods.tick (note) SELECT 'again' FROM generate_series(1, 10)});
is($coord->safe_psql('postgres', q{
	TRUNCATE moods.tick, moods.tock RESTART IDENTITY;
	SELECT (SELECT count(*) FROM moods.tick) + (SELECT count(*) FROM moods.tock);
	INSERT INTO moods.tick (note) VALUES ('first') RETURNING id;}),
	"0\n1", 'TRUNCATE ... RESTART IDENTITY empties both tables and restarts the serial');

# ws.rebalance locks a slot, then the partitioned table to switch it: a
# TRUNCATE that comes meanwhile waits for that slot before it locks the
# partitioned table, so neither deadlocks, and then truncates the slot
# where the move put it.  The first session moves slot 3 as ws.rebalance
# does (the map is left as it was).
$coord->safe_psql('postgres', q{INSERT INTO moods.tick (note) SELECT 'moved' FROM generate_series(1, 200)});
my $tick_from = $coord->safe_psql('postgres', q{
	SELECT s.srvname FROM pg_foreign_table f JOIN pg_foreign_server s ON s.oid = f.ftserver
	WHERE f.ftrelid = 'ws_dist.tick_s003'::regclass});
my ($tick_to) = grep { $_ ne $tick_from } qw(s1 s2 s3);
isnt($coord->safe_psql('postgres', q{SELECT count(*) FROM ws_dist.tick_s003}), '0', 'slot 3 of moods.tick has rows');
my $mover = $coord->background_psql('postgres', on_error_stop => 0);
$mover->query_safe(q{BEGIN; SELECT ws._lock_slot('ws_dist.tick_s003');});
my $truncator = $coord->background_psql('postgres', on_error_stop => 0);
my $truncator_pid = $truncator->query_safe('SELECT pg_backend_pid()');
$truncator->query_until(qr/started/, q{\echo started
TRUNCATE moods.tick;
});
ok($coord->poll_query_until('postgres', qq{
	SELECT EXISTS (SELECT FROM pg_locks WHERE pid = $truncator_pid AND NOT granted
				   AND relation = 'ws_dist.tick_s003'::regclass)}),
	'a TRUNCATE waits for a slot that a rebalance holds');
my ($mover_out, $mover_failed) = $mover->query(qq{
	SELECT ws._move_slot(d, 3, '$tick_to') > 0 FROM ws.distributed_tables d WHERE d.table_name = 'moods.tick'::regclass;
	COMMIT;});
is("$mover_failed $mover_out", '0 t', "the rebalance moves the slot meanwhile, to $tick_to") or diag($mover->{stderr});
my ($tick_count, $truncate_failed) = $truncator->query('SELECT count(*) FROM moods.tick');
is("$truncate_failed $tick_count", '0 0', 'and the TRUNCATE then goes on') or diag($truncator->{stderr});
is($shard{$tick_to}->safe_psql('postgres', 'SELECT count(*) FROM moods.tick_s003'), '0',
	'it truncated the slot where the move put it');
$mover->quit;
$truncator->quit;

# A new owner of the distributed table owns what lies behind it too, so the
# table's reads, which reach the slots as its owner, go on.  Its columns
# cannot be renamed: the slot tables keep their names.
is($coord->safe_psql('postgres', q{
	ALTER TABLE moods.tick OWNER TO ticker;
	INSERT INTO moods.tick (note) VALUES ('owned');
	SELECT count(*) FROM moods.tick;
	SELECT string_agg(DISTINCT r.rolname, ',') FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner
	WHERE c.oid IN (SELECT 'ws_dist.tick'::regclass UNION ALL SELECT inhrelid FROM pg_inherits WHERE inhparent = 'ws_dist.tick'::regclass
					UNION ALL SELECT 'moods.tick_id_seq'::regclass)}),
	"1\nticker", 'ALTER TABLE ... OWNER TO gives the table\'s slots and sequence the new owner, and it reads on');
($ret, $out, $err) = $coord->psql('postgres', q{ALTER TABLE moods.tick RENAME COLUMN note TO remark});
like($err, qr/ERROR:  cannot rename a column of distributed table "tick"/, 'renaming a column is refused');
is($coord->safe_psql('postgres', q{INSERT INTO moods.tick (note) VALUES ('after') RETURNING note}), 'after',
	'and the table takes rows as before');

# A superuser distributes a table with rows that another role owns: the
# slot tables are made in the remote session the owner's user mapping
# opens, which the rows then take.  Adding a column and inserting in one
# transaction share that session too.  The owner, no superuser, can give
# the table away.
$coord->safe_psql('postgres', q{
	CREATE ROLE tab_owner;
	GRANT USAGE, CREATE ON SCHEMA moods TO tab_owner, ticker;
	GRANT ticker TO tab_owner;
	CREATE TABLE moods.owned (id int PRIMARY KEY, note text);
	ALTER TABLE moods.owned OWNER TO tab_owner;
	INSERT INTO moods.owned SELECT i, 'o' || i FROM generate_series(1, 300) i;
} . join('', map {
	"CREATE USER MAPPING FOR tab_owner SERVER $_ OPTIONS (user 'postgres', password_required 'false');" } qw(s1 s2 s3)));
($ret, $out, $err) = $coord->psql('postgres', q{SELECT ws.distribute_table('moods.owned', 'id', 'm2')});
is($ret, 0, 'a superuser distributes a table with rows that another role owns') or diag($err);
is($coord->safe_psql('postgres', q{
	SET statement_timeout = '30s';
	BEGIN;
	ALTER TABLE moods.owned ADD COLUMN tag text NOT NULL DEFAULT 'old';
	INSERT INTO moods.owned VALUES (301, 'o301', 'new');
	SELECT string_agg(tag || ':' || n, ' ' ORDER BY tag) FROM (SELECT tag, count(*) AS n FROM moods.owned GROUP BY tag) x;
	COMMIT;}),
	'new:1 old:300', 'and adds a column and a row in one transaction');
($ret, $out, $err) = $coord->psql('postgres', q{SET ROLE tab_owner; ALTER TABLE moods.owned OWNER TO ticker;});
is($ret, 0, 'its owner, no superuser, gives it to another role') or diag($err);
is($coord->safe_psql('postgres', q{
	SELECT count(*) || ' ' || (SELECT string_agg(DISTINCT r.rolname, ',') FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner
							  WHERE c.oid IN (SELECT 'ws_dist.owned'::regclass UNION ALL
											  SELECT inhrelid FROM pg_inherits WHERE inhparent = 'ws_dist.owned'::regclass))
	FROM moods.owned}),
	'301 ticker', 'which then owns its slots, and reads it');
# Its user mappings need no password (password_required 'false', which a
# superuser set), so an autocommit single row goes alone on a connection of
# write_scaling's, under the new owner's mapping, as postgres_fdw would.
my $alone = $coord->background_psql('postgres');
$alone->query_safe(q{INSERT INTO moods.owned VALUES (302, 'alone', 'x')});
is(sum(map { own_connections($_, q{query LIKE 'INSERT INTO moods.owned_s%'}) } qw(s1 s2 s3)), 1,
	'a non-superuser owner\'s mapping with password_required \'false\' serves the single-row path');
$alone->quit;

# COPY ... TO copies a distributed table as it would a table.
my $copied = $coord->safe_psql('postgres', q{COPY moods.owned TO STDOUT});
is(scalar(split /\n/, $copied) . ' ' . ($copied =~ /^302\talone\tx$/m ? 'has 302' : 'lacks 302'), '302 has 302',
	'COPY ... TO STDOUT of a distributed table copies every row');
is($coord->safe_psql('postgres', q{COPY moods.owned (tag, id) TO STDOUT (FORMAT csv)}) =~ /^new,301$/m ? 'columns' : 'no',
	'columns', 'and the columns it names, in their order');
($ret, $out, $err) = $coord->psql('postgres', q{COPY moods.owned (note, note) TO STDOUT});
like($err, qr/ERROR:  column "note" specified more than once/, 'a column named twice is refused, as COPY refuses it');
($ret, $out, $err) = $coord->psql('postgres', q{COPY moods.owned (owned) TO STDOUT});
like($err, qr/ERROR:  column "owned" of relation "owned" does not exist/, 'and a column the table lacks, even named as the table');

# --- ALTER TABLE ... ADD COLUMN ----------------------------------------------

# Added columns reach every slot table on the shards; the rows stored get a
# default's value, the view gets the default; rows moved by a rebalance, and
# slot tables made on a new shard, have the columns too.  What a shard
# cannot hold, or PostgreSQL could not give every stored row, is refused.
$coord->safe_psql('postgres', q{
	SELECT ws.create_shard_map('m3', vnodes => 8);
	SELECT ws.add_shard('m3', s) FROM unnest(ARRAY['s1', 's2']) s;
	CREATE TABLE moods.grown (id int PRIMARY KEY, note text);
	SELECT ws.distribute_table('moods.grown', 'id', 'm3');
	INSERT INTO moods.grown SELECT i, 'g' || i FROM generate_series(1, 400) i;
});
is($coord->safe_psql('postgres', q{
	ALTER TABLE moods.grown ADD COLUMN amount numeric(12,2) NOT NULL DEFAULT 1.5,
		ADD COLUMN tag text COLLATE "C";
	SELECT count(*) || ' ' || sum(amount) || ' ' || count(tag) FROM moods.grown}),
	'400 600.00 0', 'ALTER TABLE ... ADD COLUMN on a distributed table: the stored rows get the default');
for my $server (qw(s1 s2))
{
	is($shard{$server}->safe_psql('postgres', q{
		SELECT count(*) FILTER (WHERE a.attnotnull AND NOT a.atthasdef) || ' ' || count(*)
		FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = 'moods' AND c.relname LIKE 'grown%' AND a.attname = 'amount'}),
		'5 5', "$server: every slot table, and the table of slots, has the column, NOT NULL and no default of its own");
}
# A stored value is written for any server to read: a date default under
# a DateStyle that writes the day first arrives as that date.  The view
# keeps its options.
is($coord->safe_psql('postgres', q{
	ALTER VIEW moods.grown SET (security_barrier = true);
	SET datestyle = 'SQL, DMY';
	ALTER TABLE moods.grown ADD COLUMN since date NOT NULL DEFAULT '2026-01-02';
	RESET datestyle;
	SELECT count(*) FILTER (WHERE since = '2026-01-02') || ' ' ||
		   (SELECT array_to_string(reloptions, ',') FROM pg_class WHERE oid = 'moods.grown'::regclass)
	FROM moods.grown}),
	'400 security_barrier=true', 'a date default reaches the stored rows as that date; the view keeps its options');
$coord->safe_psql('postgres', q{
	INSERT INTO moods.grown (id, note, tag) VALUES (401, 'single', 'x');
	INSERT INTO moods.grown (id, note, amount, tag) SELECT i, 'g' || i, 2, 't' || i FROM generate_series(402, 1500) i;
});
is($coord->safe_psql('postgres', q{
	SELECT string_agg(amount || ':' || count, ' ' ORDER BY amount)
	FROM (SELECT amount, count(*) FROM moods.grown GROUP BY amount) x}),
	'1.50:401 2.00:1099', 'new rows take the view\'s default or their own value');
($ret, $out, $err) = $coord->psql('postgres', q{ALTER TABLE moods.grown ADD COLUMN at timestamptz DEFAULT clock_timestamp()});
like($err, qr/ERROR:  cannot add column "at" with a volatile default to distributed table "grown"/,
	'a volatile default is refused: each stored row would need its own value');
($ret, $out, $err) = $coord->psql('postgres', q{ALTER TABLE moods.grown ADD COLUMN checked int CHECK (checked > 0)});
like($err, qr/ERROR:  cannot add column "checked" with a constraint to distributed table "grown"/, 'so is a constraint');
($ret, $out, $err) = $coord->psql('postgres', q{ALTER TABLE moods.grown ADD COLUMN n int GENERATED ALWAYS AS IDENTITY});
like($err, qr/ERROR:  cannot add identity or generated column "n" to distributed table "grown"/, 'an identity column');
($ret, $out, $err) = $coord->psql('postgres', q{ALTER TABLE moods.grown ADD COLUMN ws_slot int});
like($err, qr/ERROR:  cannot add column "ws_slot" to distributed table "grown"/, 'and a column named as the slot tables\' own');
($ret, $out, $err) = $coord->psql('postgres', q{ALTER TABLE moods.grown ADD COLUMN x int, DROP COLUMN note});
like($err, qr/ERROR:  ALTER TABLE on distributed table "grown" can only add columns/, 'and any other subcommand');
($ret, $out, $err) = $coord->psql('postgres', q{ALTER TABLE moods.grown ADD COLUMN required int NOT NULL});
like($err, qr/column "required" of relation "grown_s\d+" contains null values/,
	'NOT NULL without a default fails on the shards, whose rows would be null');
is($coord->safe_psql('postgres', q{
	SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute
	WHERE attrelid = 'moods.grown'::regclass AND attnum > 0 AND NOT attisdropped}),
	'id,note,amount,tag,since', 'and the refused columns are nowhere');
is(join(' ', map { $shard{$_}->safe_psql('postgres', q{
	SELECT count(*) FROM pg_attribute WHERE attrelid = 'moods.grown_shard'::regclass AND attname IN ('at', 'checked', 'x', 'required')}) } qw(s1 s2)),
	'0 0', 'not on the shards either');

$coord->safe_psql('postgres', q{SELECT ws.add_shard('m3', 's3'); CALL ws.rebalance('m3');});
is($coord->safe_psql('postgres', q{
	SELECT count(*) || ' ' || sum(amount) || ' ' || count(tag)
	FROM moods.grown WHERE tag IS NULL OR tag = 't' || id OR (id = 401 AND tag = 'x')}),
	'1500 2799.50 1100', 'after a rebalance to a new shard, every row reads back with its new columns');
isnt($shard{s3}->safe_psql('postgres', q{SELECT count(*) FROM moods.grown_shard}), '0', 'the rebalance moved rows to s3');
is($shard{s3}->safe_psql('postgres', q{SELECT count(*) || ' ' || sum(amount) FROM moods.grown_shard})
	  . ' ' . $coord->safe_psql('postgres', q{
	SELECT count(*) || ' ' || sum(amount) FROM moods.grown WHERE ws.shard_for('m3', id::text) = 's3'}),
	join(' ', ($coord->safe_psql('postgres', q{
	SELECT count(*) || ' ' || sum(amount) FROM moods.grown WHERE ws.shard_for('m3', id::text) = 's3'})) x 2),
	'the new shard holds its rows, new columns and all');
is($coord->safe_psql('postgres', q{CALL ws.undistribute_table('moods.grown')}), '1500',
	'a distributed table with added columns is taken back');
is($coord->safe_psql('postgres', q{
	SELECT string_agg(attname || ':' || format_type(atttypid, atttypmod) || ':' || attnotnull, ',' ORDER BY attnum)
	FROM pg_attribute WHERE attrelid = 'moods.grown'::regclass AND attnum > 0 AND NOT attisdropped}),
	'id:integer:true,note:text:false,amount:numeric(12,2):true,tag:text:false,since:date:true',
	'with its added columns, NOT NULL where they were');
is($coord->safe_psql('postgres', q{INSERT INTO moods.grown (id) VALUES (0) RETURNING amount}), '1.50',
	'and their defaults');

# --- undistributing ----------------------------------------------------------

# A table's grants and collations hold for the distributed table.  Taken
# back, every row comes home, into an ordinary table of the same name with
# its key, constraints, defaults, collations, grants and serial; its
# slots are gone, here and on every shard.
$coord->safe_psql('postgres', q{
	CREATE ROLE kept_reader;
	CREATE TABLE moods.kept (id int PRIMARY KEY, noted date NOT NULL DEFAULT '2026-01-01',
		note text COLLATE "C" CONSTRAINT note_given CHECK (note <> ''), line serial);
	GRANT SELECT ON moods.kept TO kept_reader;
	COMMENT ON TABLE moods.kept IS 'kept rows';
	COMMENT ON COLUMN moods.kept.note IS 'a note';
	SELECT ws.distribute_table('moods.kept', 'id', 'm2');
	GRANT UPDATE (note) ON moods.kept TO kept_reader;
	ALTER DEFAULT PRIVILEGES IN SCHEMA moods GRANT DELETE ON TABLES TO kept_reader;
	INSERT INTO moods.kept (id, note) SELECT i, 'k' || i FROM generate_series(1, 500) i;
});
is($coord->safe_psql('postgres', q{
	SELECT has_table_privilege('kept_reader', 'moods.kept', 'SELECT') || ' ' ||
		   (SELECT c.collname FROM pg_attribute a JOIN pg_collation c ON c.oid = a.attcollation
			WHERE a.attrelid = 'moods.kept'::regclass AND a.attname = 'note')}),
	'true C', 'a distributed table keeps the grants and collations of the table it was');
is($coord->safe_psql('postgres', q{
	SELECT obj_description('moods.kept'::regclass, 'pg_class') || ' ' || col_description('moods.kept'::regclass, 3)}),
	'kept rows a note', 'and its comments, and those of its columns');
is($coord->safe_psql('postgres', q{
	SELECT (SELECT sequence || ' ' || column_name FROM ws.distributed_sequences
			WHERE table_name = 'moods.kept'::regclass) || ' ' ||
		   (SELECT max(line) FROM moods.kept) || ' ' ||
		   (SELECT count(*) FROM pg_depend WHERE objid = 'moods.kept_line_seq'::regclass AND deptype = 'a')}),
	'moods.kept_line_seq line 500 0', 'its serial numbers the rows, from a sequence that no column owns meanwhile');
# Only its owner takes a table back, even with the right to call the procedure.
$coord->safe_psql('postgres', q{
	GRANT USAGE ON SCHEMA moods TO kept_reader;
	GRANT EXECUTE ON PROCEDURE ws.undistribute_table(regclass, bigint) TO kept_reader;
	GRANT EXECUTE ON FUNCTION ws._undistribute(regclass) TO kept_reader;
});
($ret, $out, $err) = $coord->psql('postgres', q{SET ROLE kept_reader; CALL ws.undistribute_table('moods.kept');});
like($err, qr/ERROR:  must be owner of table moods\.kept/, 'only the owner of a distributed table takes it back');
$coord->safe_psql('postgres', q{
	REVOKE USAGE ON SCHEMA moods FROM kept_reader;
	REVOKE EXECUTE ON PROCEDURE ws.undistribute_table(regclass, bigint) FROM kept_reader;
	REVOKE EXECUTE ON FUNCTION ws._undistribute(regclass) FROM kept_reader;
});
($ret, $out, $err) = $coord->psql('postgres', q{BEGIN; SELECT 1; CALL ws.undistribute_table('moods.kept');});
like($err, qr/must be the first statement of its transaction/,
	'ws.undistribute_table refuses to run after other statements of its transaction');
($ret, $out, $err) = $coord->psql('postgres',
	q{SET default_transaction_isolation = 'repeatable read'; CALL ws.undistribute_table('moods.kept');});
like($err, qr/needs a READ COMMITTED transaction/, 'and to run at REPEATABLE READ');
is($coord->safe_psql('postgres', q{CALL ws.undistribute_table('moods.kept')}), '500',
	'ws.undistribute_table brings back every row');
is($coord->safe_psql('postgres', q{
	SELECT (SELECT relkind::text FROM pg_class WHERE oid = 'moods.kept'::regclass) || ' ' ||
		   (SELECT count(*) FROM moods.kept WHERE note = 'k' || id AND noted = '2026-01-01')}),
	'r 500', 'into an ordinary table of the same name, each row as it was');
is($coord->safe_psql('postgres', q{INSERT INTO moods.kept (id, note) VALUES (501, 'new') RETURNING noted || ' ' || line}),
	'2026-01-01 501', 'the table keeps its column defaults');
is($coord->safe_psql('postgres', q{
	SELECT pg_get_serial_sequence('moods.kept', 'line') || ' ' ||
		   (SELECT count(*) FROM ws.distributed_sequences WHERE sequence = 'moods.kept_line_seq'::regclass)}),
	'moods.kept_line_seq 0', 'and its serial column owns its sequence again');
($ret, $out, $err) = $coord->psql('postgres', q{INSERT INTO moods.kept (id, note) VALUES (1, 'again')});
like($err, qr/duplicate key value violates unique constraint/, 'and its primary key');
($ret, $out, $err) = $coord->psql('postgres', q{INSERT INTO moods.kept (id, note) VALUES (502, '')});
like($err, qr/violates check constraint/, 'and its CHECK constraint');
is($coord->safe_psql('postgres', q{
	SELECT has_table_privilege('kept_reader', 'moods.kept', 'SELECT') || ' ' ||
		   has_column_privilege('kept_reader', 'moods.kept', 'note', 'UPDATE') || ' ' ||
		   has_table_privilege('kept_reader', 'moods.kept', 'DELETE')}),
	'true true false', 'and its grants, those on columns too, and no default privileges of the caller');
is($coord->safe_psql('postgres', q{SELECT string_agg(conname, ',' ORDER BY conname) FROM pg_constraint WHERE conrelid = 'moods.kept'::regclass}),
	'kept_pkey,note_given', 'its constraints keep their names');
is($coord->safe_psql('postgres', q{
	SELECT c.collname FROM pg_attribute a JOIN pg_collation c ON c.oid = a.attcollation
	WHERE a.attrelid = 'moods.kept'::regclass AND a.attname = 'note'}),
	'C', 'and its columns keep their collations');
is($coord->safe_psql('postgres', q{
	SELECT obj_description('moods.kept'::regclass, 'pg_class') || ' ' || col_description('moods.kept'::regclass, 3)}),
	'kept rows a note', 'and the comments on it and on its columns');
is($coord->safe_psql('postgres', q{
	SELECT (to_regclass('ws_dist.kept') IS NULL)::text || ' ' ||
		   (SELECT count(*) FROM ws.distributed_tables WHERE remote_table = 'kept') || ' ' ||
		   (SELECT count(*) FROM ws.shard_cleanup WHERE remote_table LIKE 'kept%')}),
	'true 0 0', 'its slots are gone here, and nothing is left to clean up');
for my $server (qw(s1 s2 s3))
{
	is($shard{$server}->safe_psql('postgres', q{
		SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = 'moods' AND c.relname LIKE 'kept%'}),
		'0', "$server: its slot tables are dropped");
}
($ret, $out, $err) = $coord->psql('postgres', q{CALL ws.undistribute_table('moods.kept')});
like($err, qr/"moods.kept" is not a distributed table/, 'an ordinary table cannot be undistributed');

# A writer in the middle of its transaction holds ws.undistribute_table
# back, and its rows come home too.
$coord->safe_psql('postgres', q{
	CREATE TABLE moods.busy (id int PRIMARY KEY);
	SELECT ws.distribute_table('moods.busy', 'id', 'm2');
	INSERT INTO moods.busy SELECT generate_series(1, 100);
});
my $busy_writer = $coord->background_psql('postgres');
$busy_writer->query_safe(q{BEGIN; INSERT INTO moods.busy SELECT generate_series(101, 200);});
my $undistributor = $coord->background_psql('postgres', on_error_stop => 0);
$undistributor->query_until(qr/started/, q{\echo started
CALL ws.undistribute_table('moods.busy');
});
ok($coord->poll_query_until('postgres', q{
	SELECT count(*) > 0 FROM pg_stat_activity
	WHERE wait_event_type = 'Lock' AND query LIKE 'CALL ws.undistribute_table%'}),
	'ws.undistribute_table waits for a writer of the table');
$busy_writer->query_safe('COMMIT');
$busy_writer->quit;
$undistributor->quit;
is($coord->safe_psql('postgres', q{
	SELECT (SELECT relkind::text FROM pg_class WHERE oid = 'moods.busy'::regclass) || ' ' || count(*)
	FROM moods.busy}),
	'r 200', 'then takes the table back with the writer\'s rows');

# The extension's own lookups never use an operator planted on the search
# path: here operators that fail if called, first on the path of a
# superuser who works on a distributed table.
is($coord->safe_psql('postgres', q{
	CREATE SCHEMA planted;
	CREATE FUNCTION planted.fail(text, text) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'planted operator called'; END $$;
	CREATE FUNCTION planted.fail(regclass, oid) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'planted operator called'; END $$;
	CREATE OPERATOR planted.= (LEFTARG = text, RIGHTARG = text, FUNCTION = planted.fail);
	CREATE OPERATOR planted.= (LEFTARG = regclass, RIGHTARG = oid, FUNCTION = planted.fail);
	CREATE FUNCTION planted.fail_and(bigint, integer) RETURNS bigint LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'planted operator called'; END $$;
	CREATE FUNCTION planted.fail_concat(name, text) RETURNS text LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'planted operator called'; END $$;
	CREATE OPERATOR planted.& (LEFTARG = bigint, RIGHTARG = integer, FUNCTION = planted.fail_and);
	CREATE OPERATOR planted.|| (LEFTARG = name, RIGHTARG = text, FUNCTION = planted.fail_concat);
	SET search_path = planted, pg_catalog, public;
	ALTER VIEW moods.tick OWNER TO ticker;
	ALTER TABLE moods.tick ADD COLUMN planted_test int;
	TRUNCATE moods.tick;
	INSERT INTO moods.tick (note) VALUES ('safe');
	COPY moods.tick (note) TO STDOUT;
	SELECT ws.shard_for('m2', '1') IS NOT NULL;
	-- The hash operator classes' support functions, and a name helper.
	SELECT ws._slot_hash32(42) = ws._slot_hash32('42'::text), ws._slot_table('x', 3);
	RESET search_path;
	DROP SCHEMA planted CASCADE;}),
	"safe\nt\nt|x_s003", 'operators planted on the search path are not called by the extension\'s lookups and functions');

# --- dropping ------------------------------------------------------------------

# DROP TABLE of a distributed table drops what lies behind it too: its
# partitioned table of slots and its serial's sequence here, and (queued,
# after the commit) its tables on the shards, which the next ws.rebalance
# drops.  Other tables in the statement go as usual.
$coord->safe_psql('postgres', q{
	CREATE TABLE moods.gone (id bigserial PRIMARY KEY, note text);
	SELECT ws.distribute_table('moods.gone', 'id', 'm2');
	INSERT INTO moods.gone (note) SELECT 'g' FROM generate_series(1, 100);
	CREATE TABLE moods.gone_too (n int);
});
($ret, $out, $err) = $coord->psql('postgres', q{DROP TABLE moods.gone, moods.gone_too});
is($ret, 0, 'DROP TABLE drops a distributed table with another table') or diag($err);
like($err, qr/NOTICE:  the tables of distributed table "gone" on its shards are dropped by the next ws\.rebalance/,
	'and says when its shards\' tables go');
is($coord->safe_psql('postgres', q{
	SELECT (to_regclass('moods.gone') IS NULL AND to_regclass('moods.gone_too') IS NULL
			AND to_regclass('ws_dist.gone') IS NULL AND to_regclass('moods.gone_id_seq') IS NULL)::text || ' ' ||
		   (SELECT count(*) FROM ws.distributed_tables WHERE remote_table = 'gone') || ' ' ||
		   (SELECT count(*) FROM ws.distributed_sequences WHERE sequence::text LIKE '%gone%') || ' ' ||
		   (SELECT count(*) FROM ws.shard_cleanup WHERE remote_table = 'gone_shard')}),
	'true 0 0 3', 'the view, its partitioned table, its sequence and its catalog rows are gone; its shards\' tables are queued');
is($shard{s1}->safe_psql('postgres', q{SELECT count(*) FROM moods.gone_shard}) > 0 ? 'kept' : 'empty', 'kept',
	'the rows stay on the shards until the drop has committed and a rebalance runs');

# However its view goes: a non-superuser owner's DROP TABLE, and DROP
# SCHEMA ... CASCADE, take what lies behind it too.
($ret, $out, $err) = $coord->psql('postgres', q{SET ROLE ticker; DROP TABLE moods.owned;});
is($ret, 0, 'the owner of a distributed table, no superuser, drops it') or diag($err);
$coord->safe_psql('postgres', q{
	CREATE SCHEMA scratch;
	CREATE TABLE scratch.temp (id int PRIMARY KEY);
	SELECT ws.distribute_table('scratch.temp', 'id', 'm2');
	INSERT INTO scratch.temp SELECT generate_series(1, 50);
	DROP SCHEMA scratch CASCADE;
});
is($coord->safe_psql('postgres', q{
	SELECT (to_regclass('ws_dist.owned') IS NULL AND to_regclass('ws_dist.temp') IS NULL)::text || ' ' ||
		   (SELECT count(*) FROM ws.distributed_tables WHERE remote_table IN ('owned', 'temp')) || ' ' ||
		   (SELECT count(*) FROM ws.shard_cleanup WHERE remote_table IN ('owned_shard', 'temp_shard'))}),
	'true 0 6', 'as DROP SCHEMA ... CASCADE does for one in the schema');

# A DROP waits for the map's row (held here as a rebalance holds it during
# a slot's move) before it locks the table, as ADD COLUMN and undistribute
# do: readers go on meanwhile, and the lock orders agree.
$coord->safe_psql('postgres', q{
	CREATE TABLE moods.waits (id int PRIMARY KEY);
	SELECT ws.distribute_table('moods.waits', 'id', 'm2');
	INSERT INTO moods.waits SELECT generate_series(1, 10);
});
my $map_holder = $coord->background_psql('postgres');
$map_holder->query_safe(q{BEGIN; SELECT FROM ws.shard_maps WHERE map = 'm2' FOR UPDATE;});
my $dropper = $coord->background_psql('postgres', on_error_stop => 0);
my $dropper_pid = $dropper->query_safe('SET client_min_messages = warning; SELECT pg_backend_pid();');
$dropper->query_until(qr/started/, q{\echo started
DROP TABLE moods.waits;
});
ok($coord->poll_query_until('postgres', qq{SELECT EXISTS (SELECT FROM pg_locks WHERE pid = $dropper_pid AND NOT granted)}),
	'a DROP of a distributed table waits for its map\'s row');
is($coord->safe_psql('postgres', q{SET lock_timeout = '5s'; SELECT count(*) FROM moods.waits}), '10',
	'holding no lock on the table meanwhile: readers go on');
$map_holder->query_safe('COMMIT');
my ($drop_out, $drop_failed) = $dropper->query(q{SELECT to_regclass('moods.waits') IS NULL});
is("$drop_failed $drop_out", '0 t', 'then drops it') or diag($dropper->{stderr});
$map_holder->quit;
$dropper->quit;

# DROP OWNED BY its owner drops a distributed table and its partitioned
# table in one go.
$coord->safe_psql('postgres', q{
	CREATE ROLE leaver;
	GRANT USAGE, CREATE ON SCHEMA moods TO leaver;
	CREATE TABLE moods.left_behind (id int PRIMARY KEY);
	ALTER TABLE moods.left_behind OWNER TO leaver;
} . join('', map {
	"CREATE USER MAPPING FOR leaver SERVER $_ OPTIONS (user 'postgres', password_required 'false');" } qw(s1 s2 s3)) . q{
	SELECT ws.distribute_table('moods.left_behind', 'id', 'm2');
	INSERT INTO moods.left_behind SELECT generate_series(1, 30);
});
($ret, $out, $err) = $coord->psql('postgres', q{DROP OWNED BY leaver});
is($ret, 0, 'DROP OWNED BY the owner of a distributed table drops it') or diag($err);
is($coord->safe_psql('postgres', q{
	SELECT (to_regclass('moods.left_behind') IS NULL AND to_regclass('ws_dist.left_behind') IS NULL)::text || ' ' ||
		   (SELECT count(*) FROM ws.distributed_tables WHERE remote_table = 'left_behind') || ' ' ||
		   (SELECT count(*) FROM ws.shard_cleanup WHERE remote_table = 'left_behind_shard')}),
	'true 0 3', 'with what lies behind it, its shards\' tables queued');

# Dropped as a dependent of something else, a table would lose a column; a
# distributed table would lose its rows: refused.
($ret, $out, $err) = $coord->psql('postgres', q{DROP TYPE moods.mood CASCADE});
like($err, qr/ERROR:  cannot drop distributed table "moods.feelings" because something it depends on is dropped/,
	'DROP TYPE ... CASCADE of a type a distributed table uses is refused');
is($coord->safe_psql('postgres', q{SELECT count(*) FROM moods.feelings}), '1001', 'and the table keeps its rows');

$coord->safe_psql('postgres', q{CALL ws.rebalance('m2')});
is(join(' ', map { $shard{$_}->safe_psql('postgres', q{
		SELECT count(*) FROM pg_class WHERE relname ~ '^(gone|owned|temp|left_behind|waits)_'}) } qw(s1 s2 s3))
	  . ' ' . $coord->safe_psql('postgres', q{
		SELECT count(*) FROM ws.shard_cleanup
		WHERE remote_table IN ('gone_shard', 'owned_shard', 'temp_shard', 'left_behind_shard', 'waits_shard')}),
	'0 0 0 0', 'ws.rebalance drops their tables on every shard');

done_testing();

# Helpers shared by the demo, the tests and the benchmarks: throwaway
# clusters run by the unprivileged postgres OS user (initdb refuses root),
# listening on 127.0.0.1 and a port picked free, with the library preloaded.
# Source this file; it defines functions only.

WS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WS_BINDIR=$(pg_config --bindir)
WS_OS_USER=postgres

# ws_as_pg CMD...: runs CMD as the postgres OS user (or as is, if we are it).
ws_as_pg() {
	if [ "$(id -un)" = "$WS_OS_USER" ]; then
		"$@"
	else
		runuser -u "$WS_OS_USER" -- "$@"
	fi
}

# ws_build_dir: prints a directory the postgres OS user can write, under the
# build tree when that user can reach it, else under /tmp.
ws_build_dir() {
	local dir="$WS_ROOT/build"
	mkdir -p "$dir"
	if [ "$(id -u)" -eq 0 ]; then
		chown "$WS_OS_USER" "$dir"
	fi
	if ! ws_as_pg test -w "$dir" 2>/dev/null; then
		dir=$(mktemp -d /tmp/write_scaling.XXXXXX)
		[ "$(id -u)" -eq 0 ] && chown "$WS_OS_USER" "$dir"
	fi
	echo "$dir"
}

# ws_free_port: prints a TCP port on 127.0.0.1 that nothing listens on.
ws_free_port() {
	perl -MIO::Socket::INET -e \
		'my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => 0, Listen => 1) or die; print $s->sockport, "\n";'
}

# ws_start_cluster DATADIR PORT [EXTRA_CONF_LINE...]: initdb and start.
ws_start_cluster() {
	local data=$1 port=$2
	shift 2
	rm -rf "$data"
	ws_as_pg "$WS_BINDIR/initdb" -D "$data" -A trust -U postgres --no-sync >/dev/null
	{
		echo "listen_addresses = '127.0.0.1'"
		echo "port = $port"
		echo "unix_socket_directories = '$data'"
		echo "shared_preload_libraries = 'write_scaling'"
		echo "fsync = on"
		for line in "$@"; do echo "$line"; done
	} | ws_as_pg tee -a "$data/postgresql.conf" >/dev/null
	ws_as_pg "$WS_BINDIR/pg_ctl" -D "$data" -l "$data/server.log" -w start >/dev/null
}

# ws_stop_cluster DATADIR: fast shutdown, if running.
ws_stop_cluster() {
	local data=$1
	if [ -f "$data/postmaster.pid" ]; then
		ws_as_pg "$WS_BINDIR/pg_ctl" -D "$data" -m fast -w stop >/dev/null || true
	fi
}

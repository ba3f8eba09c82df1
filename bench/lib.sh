# Shared helpers of the benchmark parts.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/cluster.sh"
# Helpers for the benchmark parts; sourced by bench/*/run, which bench/run
# calls with BENCH_PORT, BENCH_DIR, BENCH_SECONDS and BENCH_CLIENTS set.

bench_psql() {
	psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$BENCH_PORT" -U postgres -d bench "$@"
}

# bench_tps SCRIPT CLIENTS [pgbench options...]: prints transactions/s.
bench_tps() {
	local script=$1 clients=$2
	shift 2
	pgbench -n -M prepared -h 127.0.0.1 -p "$BENCH_PORT" -U postgres \
		-c "$clients" -j "$(( clients < 2 ? 1 : 2 ))" -T "$BENCH_SECONDS" \
		-f "$script" "$@" bench 2>&1 |
		sed -n 's/^tps = \([0-9.]*\) .*/\1/p'
}

# bench_median N...: prints the median of its arguments.
bench_median() {
	printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# bench_ratio A B: prints A/B with two decimals.
bench_ratio() {
	awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'
}

# bench_fmt N: prints N rounded, with thousands separators.
bench_fmt() {
	awk -v n="$1" 'BEGIN {
		s = sprintf("%.0f", n); r = ""
		while (length(s) > 3) { r = "," substr(s, length(s) - 2) r; s = substr(s, 1, length(s) - 3) }
		print s r
	}'
}

# bench_cpu DATADIR...: prints the CPU seconds that the server processes of
# these clusters have used so far, all together: each postmaster, the
# children it has reaped (backends that exited) and those still running.
# Read it when the clusters are quiet: a backend that exits while it is
# read may be missed.
bench_cpu() {
	local data pm child files=()
	for data in "$@"; do
		pm=$(head -n 1 "$data/postmaster.pid")
		files+=("/proc/$pm/stat")
		for child in $(pgrep -P "$pm"); do
			files+=("/proc/$child/stat")
		done
	done
	# After the command name, fields 12-15 of /proc/PID/stat: utime, stime,
	# and cutime, cstime for the reaped children.
	{ cat "${files[@]}" 2>/dev/null || true; } |
		awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); t += $12 + $13 + $14 + $15 } END { printf "%.2f", t / hz }'
}

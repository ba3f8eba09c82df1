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

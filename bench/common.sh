# Sourced by the benchmarks that run on the test suite's servers (after
# setting top): the build, a scratch folder, and servers started here and
# stopped, with the folder, whatever happens.  A script with more to stop
# defines bench_cleanup.

# bench_setup TOOL...: install, build the programs and these test tools
# (tests/target-io ...), and move into the scratch folder.
bench_setup() {
	O=${O:-build}
	"$top/scripts/install-deps.sh"
	make -s -C "$top" O="$O" all "${@/#/$O/}" >/dev/null
	PATH="$top/$O/tests:$top/$O/bin:$PATH"
	work=$(mktemp -d "${BENCH_DIR:-/tmp}/cdisk-bench.XXXXXX")
	export CDISK_SERVERS=$work/servers
	trap bench_stop EXIT
	cd "$work"
	export CDISK_CONFIG=$work/cdisk.conf
	printf '[metadata]\nbackup_dir = none\n' >"$CDISK_CONFIG"
}

bench_stop() {
	if declare -F bench_cleanup >/dev/null; then bench_cleanup; fi
	"$top/tests/servers.sh" stop-all
	rm -rf "$work"
}

# bench_servers NAME...: start them and load their variables.
bench_servers() {
	echo "starting servers..." >&2
	"$top/tests/servers.sh" start "$@"
	for f in "$CDISK_SERVERS"/*.env; do . "$f"; done
	export CEPH_CONF
}

# Values of every round are kept as "v1 v2 v3" (keep ARRAY KEY VALUE) and
# the tables show medians (m ARRAY KEY): one round's noise, on a shared
# machine, would decide nothing.
keep() { # ARRAY KEY VALUE
	declare -n a=$1
	a[$2]="${a[$2]:-} $3"
	unset -n a
}
median() { # VALUES...
	printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
		print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
m() { # ARRAY KEY
	# shellcheck disable=SC2178 # a nameref, as in keep
	declare -n a=$1
	# shellcheck disable=SC2086 # the rounds' values, one word each
	median ${a[$2]}
	unset -n a
}
ratio() { echo "$1 / $2" | bc -l; }

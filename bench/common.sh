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

# Loaded by bats before the first test file of a run.  tests/run-tests.sh
# owns the storage servers of a whole suite (CDISK_SERVERS) and stops
# them itself; a bats run started by hand (one file, as the README shows)
# starts them in its own folder, and must stop them when it ends: bats
# deletes the folder, but not the ceph-osd, radosgw or tgtd in it.

setup_suite() {
	if [ -z "${CDISK_SERVERS:-}" ]; then
		export CDISK_SERVERS=$BATS_RUN_TMPDIR/servers
		export CDISK_SERVERS_OWNED_BY_BATS=1
	fi
}

teardown_suite() {
	[ -n "${CDISK_SERVERS_OWNED_BY_BATS:-}" ] || return 0
	[ -d "$CDISK_SERVERS" ] || return 0
	"$BATS_TEST_DIRNAME/servers.sh" stop-all 3>&- >/dev/null 2>&1 || true
}

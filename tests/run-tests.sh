#!/bin/bash
# Run every test against a build and end with one line:
#   N passed, N failed[, N skipped]
# A skipped test counts as a failure unless CDISK_TEST_ALLOW_SKIP=1:
# a run that skips must not pass for one that tested.
set -u
build=${1:-build/check}
top=$(cd "$(dirname "$0")/.." && pwd)
export CDISK_BUILD=$(cd "$build" && pwd)
export CMOCKA_MESSAGE_OUTPUT=TAP
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

passed=0 failed=0 skipped=0
log=$(mktemp)
scratch=$(mktemp -d)
# Real servers (tests/servers.sh) are started by the first test that needs
# them, reused by the rest, and stopped here whatever happens.
export CDISK_SERVERS=$scratch/servers
trap '"$top"/tests/servers.sh stop-all; rm -f "$log"; rm -rf "$scratch"' EXIT
# Nothing a test does may write to /var/lib/cdisk.
export CDISK_CONFIG=$scratch/cdisk.conf
printf '[metadata]\nbackup_dir = %s/meta\n' "$scratch" >"$CDISK_CONFIG"

# Count TAP lines from one command; a crash without a "not ok" is a failure.
tally() {
	local name=$1; shift
	local rc p=0 f=0 s=0
	"$@" >"$log" 2>&1
	rc=$?
	while IFS= read -r line; do
		case "$line" in
		"ok "*"# skip"*|"ok "*"# SKIP"*) s=$((s + 1)); echo "$line" ;;
		"ok "*) p=$((p + 1)) ;;
		"not ok "*) f=$((f + 1)); echo "$line" ;;
		esac
	done <"$log"
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		f=1
		echo "not ok - $name exited with status $rc"
	fi
	if [ "$f" -ne 0 ]; then
		echo "---- output of $name ----"
		cat "$log"
		echo "----"
	fi
	echo "$name: $p passed, $f failed, $s skipped"
	passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
}

for t in "$CDISK_BUILD"/tests/unit/*-test; do
	[ -x "$t" ] && tally "unit/${t##*/}" "$t"
done
tally bats bats --tap "$top"/tests/*.bats

if [ "${CDISK_TEST_ALLOW_SKIP:-0}" != 1 ] && [ "$skipped" -ne 0 ]; then
	echo "skipped tests count as failed (set CDISK_TEST_ALLOW_SKIP=1 to allow)"
	failed=$((failed + skipped))
fi
if [ "$skipped" -ne 0 ]; then
	echo "$passed passed, $failed failed, $skipped skipped"
else
	echo "$passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]

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
export CDISK_RUN_TMPDIR=$scratch
trap '"$top"/tests/servers.sh stop-all; rm -f "$log"; rm -rf "$scratch"' EXIT
# Nothing a test does may write to /var/lib/cdisk.
export CDISK_CONFIG=$scratch/cdisk.conf
printf '[metadata]\nbackup_dir = %s/meta\n' "$scratch" >"$CDISK_CONFIG"

# No test may hang the run: each test has BATS_TEST_TIMEOUT seconds, each
# file at most CDISK_FILE_TIMEOUT, and the whole run CDISK_RUN_BUDGET (CI
# stops at 90 minutes and the build takes about 5 of them; the tests take
# about 42 here).
export BATS_TEST_TIMEOUT=${BATS_TEST_TIMEOUT:-300}
file_timeout=${CDISK_FILE_TIMEOUT:-900}
run_budget=${CDISK_RUN_BUDGET:-4800}
run_start=$SECONDS

# Seconds a file may take: its own limit, or what is left of the run's.
file_deadline() {
	local left=$((run_budget - (SECONDS - run_start)))
	[ "$left" -lt "$file_timeout" ] && echo "$left" || echo "$file_timeout"
}

# Count TAP lines from one command; a crash without a "not ok" is a failure.
tally() {
	local name=$1; shift
	local rc p=0 f=0 s=0 start=$SECONDS
	"$@" >"$log" 2>&1
	rc=$?
	[ "$rc" -ne 124 ] && [ "$rc" -ne 137 ] ||
		echo "not ok - $name did not finish within its time" >>"$log"
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
	echo "$name: $p passed, $f failed, $s skipped ($((SECONDS - start)) s)"
	passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
}

for t in "$CDISK_BUILD"/tests/unit/*-test; do
	[ -x "$t" ] && tally "unit/${t##*/}" timeout --kill-after=30 "$file_timeout" "$t"
done
# One bats run per file, so that the log shows where a run stands and a
# file that hangs costs only its own time.
for t in "$top"/tests/*.bats; do
	deadline=$(file_deadline)
	if [ "$deadline" -le 0 ]; then
		echo "not ok - ${t##*/} not run: the run's $run_budget s are spent"
		failed=$((failed + 1))
		continue
	fi
	tally "${t##*/}" timeout --kill-after=30 "$deadline" bats --tap "$t"
done

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

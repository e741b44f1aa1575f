#!/usr/bin/env bats
# cdisk-sync on a served disk waits for the server's sync by asking its
# status; a server too busy to answer for a while (a loaded host: here
# frozen with SIGSTOP, longer than one request's timeout) must not make
# the client give up and leave the server's sync running unwatched.

bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
}

teardown() {
	[ -z "${SERVE_PID:-}" ] || { kill -CONT "$SERVE_PID" 2>/dev/null; stop_serve; }
}

@test "a served sync outlasts a server that answers nothing for 7 s" {
	make_base base.raw 64M
	run_cdisk 0 cdisk-create --base "$PWD/base.raw" d.cdisk
	start_serve --export d=d.cdisk
	run_cdisk 0 qemu-io -f raw -c "write -P 0x5a 0 24M" -c flush "$NBD"
	# Held to 8 MiB/s the sync takes about 3 s of work.
	timeout 120 cdisk-sync --json --rate 8M d.cdisk >sync.json 2>sync.err 3>&- &
	local sync=$! rc=0
	sleep 1
	freeze "$SERVE_PID"
	sleep 7
	kill -CONT "$SERVE_PID"
	wait "$sync" || rc=$?
	[ "$rc" = 0 ] || fail "cdisk-sync exited $rc: $(cat sync.err)"
	assert_equal "$(jq -r .left_bytes sync.json)" 0
	assert_equal "$(jq -r .bytes sync.json)" $((24 << 20))
	# The server's sync is over: another one starts at once.
	run_cdisk 0 cdisk-sync --json d.cdisk
	assert_equal "$(json_get .left_bytes)" 0
	stop_serve
	cmp -n $((24 << 20)) base.raw <(head -c $((24 << 20)) /dev/zero | tr '\0' '\132') ||
		fail "the base does not hold what was written"
}

@test "a served sync with --max-time gives up on a server frozen past it, and says so" {
	# One request may take 1 s (no retry): the client waits twice that
	# past --max-time, for the last requests and a flush, 20 s more for
	# the rest, then gives up (by 34 s: two 5 s calls), rather than the
	# minute it gives each unanswered status of a server that is only
	# slow to answer.
	quick_timeouts 1 0
	make_base base.raw 64M
	run_cdisk 0 cdisk-create --base "$PWD/base.raw" d.cdisk
	start_serve --export d=d.cdisk
	run_cdisk 0 qemu-io -f raw -c "write -P 0x5a 0 24M" -c flush "$NBD"
	local t0=$SECONDS rc=0
	timeout 90 cdisk-sync --rate 1M --max-time 2 d.cdisk >sync.out 2>sync.err 3>&- &
	local sync=$!
	sleep 1
	freeze "$SERVE_PID"
	wait "$sync" || rc=$?
	local took=$((SECONDS - t0))
	kill -CONT "$SERVE_PID"
	[ "$rc" != 124 ] || fail "cdisk-sync still waited after 90 s: $(cat sync.err)"
	[ "$took" -le 45 ] || fail "gave up only after $took s: $(cat sync.err)"
	[ "$rc" = 8 ] || fail "cdisk-sync exited $rc, not 8: $(cat sync.err)"
	assert_equal "$(wc -l <sync.err)" 1
	grep -q "^cdisk-sync: 'd.cdisk': pid $SERVE_PID did not end its sync in time" sync.err ||
		fail "unexpected message: $(cat sync.err)"
	[ "$took" -ge 24 ] || fail "gave up after $took s, before the requests' time was out"
	# The server, thawed, stops its sync (it was asked to); the disk's
	# changes are all there, synced or still dirty, and a sync finishes
	# once the server has wound the stopped one down (busy until then).
	local tries
	for tries in $(seq 60); do
		run_cdisk '?' cdisk-sync --json d.cdisk
		[ "$status" = 4 ] || break
		sleep 0.5
	done
	[ "$status" = 0 ] || fail "the sync after the thaw exited $status"
	assert_equal "$(json_get .left_bytes)" 0
	stop_serve
	cmp -n $((24 << 20)) base.raw <(head -c $((24 << 20)) /dev/zero | tr '\0' '\132') ||
		fail "the base does not hold what was written"
}

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

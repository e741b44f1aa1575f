#!/usr/bin/env bats
# NBD targets (libnbd) against nbdkit: data, faults, and the URI forms.

bats_require_minimum_version 1.8.0

setup() {
	load helpers
	load targets
	_cdisk_setup
}

teardown() {
	stop_nbdkit
	stop_silent_server
}

# start_nbdkit ARGS...: nbdkit on a unix socket of this test; sets URI.
start_nbdkit() {
	SOCK=$BATS_TEST_TMPDIR/nbd.sock
	start_nbdkit_unix "$SOCK" "$@"
	URI="nbd+unix:///?socket=$SOCK"
}

@test "nbd: size and read-only state" {
	start_nbdkit memory 64M
	check_info "$URI" 67108864
}

@test "nbd: the server cannot say which storage an export is" {
	start_nbdkit memory 8M
	run_cdisk 1 target-io "$URI" identity
	assert_error target-io "nbd targets cannot tell which storage they are"
	assert_equal "$output" ""
}

@test "nbd: patterns at odd offsets and sizes" {
	start_nbdkit memory 64M
	check_patterns "$URI"
}

@test "nbd: many requests at once" {
	start_nbdkit memory 64M
	check_many_at_once "$URI"
}

@test "nbd: zeroes, discard and flush" {
	start_nbdkit memory 64M
	check_zero_discard_flush "$URI"
}

@test "nbd: requests past the end are refused" {
	start_nbdkit memory 64M
	check_past_end "$URI" 67108864
}

@test "nbd: a 1 GiB copy in and out is identical" {
	truncate -s 1G "$BATS_TEST_TMPDIR/base.img"
	start_nbdkit file "$BATS_TEST_TMPDIR/base.img"
	check_copy_1g "$URI"
}

@test "nbd: over TCP with nbd://host:port/export" {
	local port
	port=$(free_port) || fail "no free port"
	nbdkit --exit-with-parent -f -i 127.0.0.1 -p "$port" -e disk1 memory 8M 3>&- &
	NBDKIT_PID=$!
	for _ in $(seq 100); do ss -Hltn "sport = :$port" | grep -q . && break; sleep 0.05; done
	run_cdisk target-io -w "nbd://127.0.0.1:$port/disk1" w:1:4095:2 r:1:4095:2 info
	assert_output --partial '"size": 8388608'
}

@test "nbd: a read-only export refuses writes before sending them" {
	start_nbdkit -r memory 8M
	run_cdisk 5 target-io -w "$URI" w:0:512:1
	# This message is libcdisk's own, from the export's read-only flag;
	# a write sent (or left to libnbd to refuse) would be named otherwise.
	assert_error target-io "'nbd\+unix:.*': it is read-only"
}

@test "nbd: an export that does not exist" {
	start_nbdkit --filter=exportname memory 8M exportname=real exportname-strict=true
	run_cdisk 6 target-io "nbd+unix:///nosuch?socket=$SOCK" info
	assert_error target-io "cannot reach 'nbd\+unix:///nosuch.*'"
}

@test "nbd: connection refused" {
	run_cdisk 3 target-io "nbd+unix:///?socket=$BATS_TEST_TMPDIR/none.sock" info
	assert_error target-io "cannot reach .*none.sock"
	run_cdisk 3 target-io "nbd://127.0.0.1:1/x" info
	assert_error target-io "cannot reach 'nbd://127.0.0.1:1/x'.*refused"
}

@test "nbd: a host that does not answer times out" {
	quick_timeouts 2 1
	start_silent_server
	SECONDS=0
	run_cdisk 3 target-io "nbd://127.0.0.1:$SILENT_PORT/x" info
	assert_error target-io "no answer within 2 s"
	[ "$SECONDS" -lt 15 ] || fail "took $SECONDS s"
}

@test "nbd: a server that fails requests (error filter)" {
	start_nbdkit --filter=error memory 8M error-pread-rate=1 error-pread=EIO
	run_cdisk 1 target-io "$URI" r:0:4096:0
	assert_error target-io "cannot read 'nbd\+unix:.*Input/output error"
}

@test "nbd: a slow server is waited for, within the timeout (delay filter)" {
	start_nbdkit --filter=delay memory 8M rdelay=3
	run_cdisk target-io -d 8 "$URI" r:0:8M:0
	quick_timeouts 1 0
	run_cdisk 8 target-io "$URI" r:0:4096:0
	assert_error target-io "no answer within 1 s"
}

@test "nbd: the server stopped in the middle of a request" {
	quick_timeouts 5 1
	start_nbdkit --filter=delay memory 8M rdelay=3
	timeout 60 target-io "$URI" r:0:4096:0 2>"$BATS_TEST_TMPDIR/err" 3>&- &
	local pid=$!
	sleep 1
	kill -9 "$NBDKIT_PID"
	local rc=0 err uri
	wait "$pid" || rc=$?
	cat "$BATS_TEST_TMPDIR/err"
	assert_equal "$rc" 3
	# One retry (retries = 1) says so; then the server is gone for good.
	mapfile -t err <"$BATS_TEST_TMPDIR/err"
	assert_equal "${#err[@]}" 2
	uri=$(re_quote "$URI")
	assert_regex "${err[0]}" "^target-io: .*cannot read '$uri'.*; trying again$"
	assert_regex "${err[1]}" "^target-io: cannot reach '$uri': .*refused"
}

#!/usr/bin/env bats
# cdisk-sync gated on the base's health (--if-healthy) and slowing down
# when the base's round trip climbs (the delay-based controller), with the
# network made worse by the tests' own proxy in front of nbdkit.

bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
}

teardown() {
	stop_serve
	stop_proxy
	stop_nbdkit
}

# disk_behind_proxy SIZE: d.cdisk over nbdkit (memory) through the proxy,
# with SIZE of changes waiting.
disk_behind_proxy() {
	start_nbdkit_tcp memory 1G
	start_proxy "127.0.0.1:$NBDKIT_PORT"
	run_cdisk cdisk-create --base "nbd://127.0.0.1:$PROXY_PORT" --size 1G d.cdisk
	run_cdisk cdisk-io d.cdisk "w:0:$1:7" f
}

dirty_blocks() {
	timeout 30 cdisk-info --json d.cdisk | jq -r .blocks_dirty
}

# sync_meets_delay ARGS...: cdisk-sync --json ARGS on d.cdisk, with 100 ms
# added to the base's round trip one second in; $output is its JSON and
# $sync_status its exit status.
sync_meets_delay() {
	timeout 60 cdisk-sync --json "$@" d.cdisk >sync.json 2>sync.err 3>&- &
	local pid=$!
	sleep 1
	proxy_ctl delay 100
	sync_status=0
	wait "$pid" || sync_status=$?
	output=$(cat sync.json)
	echo "status $sync_status"; cat sync.json sync.err
}

# The base, read past the proxy, still holds only zeros in its first SIZE.
base_untouched() {
	timeout 60 nbdcopy "nbd://127.0.0.1:$NBDKIT_PORT" - | head -c "$1" | cmp - <(head -c "$1" /dev/zero)
}

@test "sync --if-healthy: a degraded base changes nothing and exits 8" {
	disk_behind_proxy 8M
	before=$(dirty_blocks)
	printf '[probe]\nmax_rtt = 20\npings = 5\n' >>"$CDISK_CONFIG"
	proxy_ctl delay 50
	run_cdisk 8 cdisk-sync --if-healthy d.cdisk
	assert_error cdisk-sync "not now, the base 'nbd://.*' is degraded: round trip 5[0-9.]+ ms is over 20.0 ms; try later"
	assert_equal "$(dirty_blocks)" "$before"
	base_untouched 8M
	# Healthy again: the same command syncs.
	proxy_ctl delay 0
	run_cdisk 0 cdisk-sync --if-healthy --json d.cdisk
	assert_equal "$(json_get .clean)" true
	assert_equal "$(json_get .retries)" 0
	assert_equal "$(dirty_blocks)" 0
}

@test "sync --if-healthy: an unreachable base exits 3 and changes nothing" {
	disk_behind_proxy 4M
	before=$(dirty_blocks)
	stop_nbdkit
	printf '[probe]\ntimeout = 2\n' >>"$CDISK_CONFIG"
	run_cdisk 3 cdisk-sync --if-healthy d.cdisk
	assert_error cdisk-sync "its base 'nbd://.*' is unreachable"
	assert_equal "$(dirty_blocks)" "$before"
}

@test "sync: slows down when delay is added during it, speeds up when removed" {
	disk_behind_proxy 448M
	proxy_ctl rate 40000000
	timeout 120 cdisk-sync -v --json d.cdisk >sync.json 2>sync.err 3>&- &
	sync_pid=$!
	sleep 1.5
	b0=$(proxy_bytes); sleep 1; b1=$(proxy_bytes)
	proxy_ctl delay 100
	# What was already on its way (16 requests of 4 MiB) drains first.
	sleep 3
	b2=$(proxy_bytes); sleep 1.5; b3=$(proxy_bytes)
	proxy_ctl delay 0
	sleep 2.5
	b4=$(proxy_bytes); sleep 1; b5=$(proxy_bytes)
	wait "$sync_pid" || fail "cdisk-sync failed: $(cat sync.err)"
	before=$((b1 - b0)) during=$(((b3 - b2) * 2 / 3)) after=$((b5 - b4))
	echo "bytes/s before $before, with 100 ms added $during, after $after"
	cat sync.err
	[ "$during" -lt $((before / 4)) ] || fail "did not slow down"
	[ "$after" -gt $((during * 4)) ] || fail "did not speed up again"
	assert_file_line sync.err "round trip is .* over its .* baseline; slowing down"
	assert_file_line sync.err "back near its baseline; full speed"
	output=$(cat sync.json)
	assert_equal "$(json_get .clean)" true
	assert_num "$(json_get .slowdowns)" -ge 1
}

@test "sync: the rate it settled on shows in its JSON; --target-delay -1 never slows" {
	disk_behind_proxy 256M
	proxy_ctl rate 20000000
	sync_meets_delay --max-time 4
	[ "$sync_status" = 8 ] || fail "expected exit 8 (stopped with work left)"
	assert_num "$(json_get .slowdowns)" -ge 1
	assert_num "$(json_get .rate_limit)" -ge 262144
	json_get '.delay_ms - .base_delay_ms >= 90'
	# Without the controller the same delay costs only round trips.
	proxy_ctl delay 0
	proxy_ctl rate 40000000
	sync_meets_delay --target-delay -1
	assert_equal "$sync_status" 0
	assert_equal "$(json_get .slowdowns)" 0
	assert_equal "$(json_get .rate_limit)" null
	assert_equal "$(json_get .clean)" true
	run_cdisk 2 cdisk-sync --target-delay -5 d.cdisk
	assert_usage_error cdisk-sync "--target-delay must be"
}

@test "sync: connections cut mid-sync mark nothing wrongly clean; the next run completes" {
	disk_behind_proxy 96M
	proxy_ctl rate 20000000
	timeout 60 cdisk-sync d.cdisk 2>cut.err 3>&- &
	pid=$!
	sleep 1.5
	proxy_ctl cut
	status=0
	wait "$pid" || status=$?
	cat cut.err
	[ "$status" != 0 ] || fail "a sync whose connections were cut reported success"
	# Every block recorded clean is on the base (read past the proxy).
	run_cdisk 0 cdisk-io d.cdisk check-clean
	proxy_ctl rate 0
	run_cdisk 0 cdisk-sync --json d.cdisk
	assert_equal "$(json_get .clean)" true
	run_cdisk 0 cdisk-io d.cdisk "r:0:96M:7"
	timeout 60 nbdcopy "nbd://127.0.0.1:$NBDKIT_PORT" - | head -c 96M >base.img
	run_cdisk 0 patfile base.img r 0 96M 7
}

@test "served disk: --if-healthy goes through the owner; sync-status shows the rate" {
	disk_behind_proxy 8M
	printf '[probe]\nmax_rtt = 20\npings = 5\n' >>"$CDISK_CONFIG"
	start_serve --export d=d.cdisk
	proxy_ctl delay 50
	run_cdisk 8 cdisk-sync --if-healthy d.cdisk
	assert_error cdisk-sync "degraded: round trip"
	proxy_ctl delay 0
	run_cdisk 0 cdisk-sync --if-healthy --json d.cdisk
	assert_equal "$(json_get .clean)" true
	local ctl=$SERVE_RUN/cdisk-serve.$SERVE_PID.ctl
	run_cdisk socat - "UNIX-CONNECT:$ctl" <<<"{\"command\":\"sync-status\",\"disk\":\"$PWD/d.cdisk\"}"
	json_get '.rate_limit == 0 and .base_delay_ms > 0 and .result.slowdowns == 0'
	run_cdisk 2 cdisk-serve --sync-if-healthy d.cdisk
	assert_usage_error cdisk-serve "go with --sync-every"
}

@test "cdisk-serve --sync-every --sync-if-healthy skips turns while the base is degraded" {
	disk_behind_proxy 4M
	printf '[probe]\nmax_rtt = 20\npings = 3\nread_size = 1M\n' >>"$CDISK_CONFIG"
	proxy_ctl delay 50
	start_serve -v --export d=d.cdisk --sync-every 1 --sync-if-healthy
	sleep 3
	local ctl=$SERVE_RUN/cdisk-serve.$SERVE_PID.ctl
	run_cdisk socat - "UNIX-CONNECT:$ctl" <<<"{\"command\":\"info\",\"disk\":\"$PWD/d.cdisk\"}"
	[ "$(json_get .info.blocks_dirty)" = 1024 ] || fail "synced while degraded"
	assert_file_line "$BATS_TEST_TMPDIR/serve.log" "degraded: round trip"
	proxy_ctl delay 0
	for _ in $(seq 50); do
		run_cdisk socat - "UNIX-CONNECT:$ctl" <<<"{\"command\":\"info\",\"disk\":\"$PWD/d.cdisk\"}"
		[ "$(json_get .info.blocks_dirty)" = 0 ] && break
		sleep 0.2
	done
	[ "$(json_get .info.blocks_dirty)" = 0 ] || fail "never synced once healthy"
}

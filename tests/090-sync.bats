#!/usr/bin/env bats
# cdisk-sync: changes to the base, crash-safe, resumable, and correct while
# the disk is served and written to.

bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
}

teardown() {
	[ -z "${SERVE_PID:-}" ] || stop_serve
	[ -z "${TGT_TID:-}" ] || tgt_delete_lun "$TGT_TID"
	stop_nbdkit
}

# wait_sending PID LOG: until the cdisk-sync -v -v PID, its stderr in LOG,
# has the disk and its base open and starts sending.
wait_sending() {
	for _ in $(seq 600); do
		grep -q "bytes to send" "$2" && return 0
		kill -0 "$1" 2>/dev/null || fail "the sync ended before sending: $(cat "$2")"
		sleep 0.05
	done
	fail "the sync did not start sending within 30 s: $(cat "$2")"
}

# Scattered changes: whole blocks, runs, zeroes, odd corners.
scatter() {
	run_cdisk cdisk-io "$1" w:0:4K:2 w:1M:1M:3 w:5M:4K:4 w:7M:12K:5 z:9M:1M \
		w:15M:1M:6 w:16380K:4K:7 f
}

# The base, read through its own kind, equals what the disk shows.
dirty_bytes() {
	cdisk-info --json "$1" | jq -r '.blocks_dirty * .block_size'
}

@test "sync: a file base ends equal to the disk; nothing is left dirty" {
	make_base base.raw 16M
	run_cdisk cdisk-create --base base.raw d.cdisk
	scatter d.cdisk
	run_cdisk cdisk-sync --json --verify d.cdisk
	assert_equal "$(json_get .left_bytes)" 0
	assert_equal "$(json_get .clean)" true
	assert_equal "$(json_get .verified_bytes)" "$(json_get .bytes)"
	assert_equal "$(dirty_bytes d.cdisk)" 0
	assert_base_equals_disk d.cdisk "$PWD/base.raw"
	run_cdisk cdisk-io d.cdisk check-clean
	# a second run has nothing to send
	run_cdisk cdisk-sync --json d.cdisk
	assert_equal "$(json_get .bytes)" 0
}

@test "sync: --dry-run and --min-dirty change nothing" {
	make_base base.raw 16M
	cp base.raw before.raw
	run_cdisk cdisk-create --base base.raw d.cdisk
	scatter d.cdisk
	local dirty
	dirty=$(dirty_bytes d.cdisk)
	run_cdisk cdisk-sync --dry-run d.cdisk
	assert_output --partial "would send"
	run_cdisk cdisk-sync --min-dirty 1G --json d.cdisk
	assert_equal "$(json_get .below_min_dirty)" true
	cmp base.raw before.raw
	assert_equal "$(dirty_bytes d.cdisk)" "$dirty"
}

@test "sync: --max-time stops early, keeps what was sent, and the next run goes on" {
	make_base base.raw 64M
	run_cdisk cdisk-create --base base.raw d.cdisk
	run_cdisk cdisk-io d.cdisk w:0:64M:8 f
	run_cdisk 8 cdisk-sync --rate 8M --max-time 1 --depth 1 d.cdisk
	assert_error cdisk-sync "stopped with .* left; run again"
	local left
	left=$(dirty_bytes d.cdisk)
	[ "$left" -gt 0 ] && [ "$left" -lt 67108864 ] || fail "left: $left"
	run_cdisk cdisk-io d.cdisk check-clean
	run_cdisk cdisk-sync --json d.cdisk
	# what was sent before the stop is not sent again
	assert_equal "$(json_get .bytes)" "$left"
	assert_base_equals_disk d.cdisk "$PWD/base.raw"
}

@test "sync: bad bases: read-only, smaller than the disk, unreachable" {
	use_server nginx
	make_base "$NGINX_ROOT/ro-$$" 4M
	run_cdisk cdisk-create --base "$NGINX_URL/ro-$$" ro.cdisk
	run_cdisk cdisk-io ro.cdisk w:0:4K:2 f
	run_cdisk 5 cdisk-sync ro.cdisk
	assert_error cdisk-sync "its base '.*' is read-only"
	rm -f "$NGINX_ROOT/ro-$$"

	make_base small.raw 4M
	run_cdisk cdisk-create --base small.raw --size 8M small.cdisk
	run_cdisk cdisk-io small.cdisk w:6M:4K:2 f
	run_cdisk 1 cdisk-sync small.cdisk
	assert_error cdisk-sync "its base '.*small.raw' holds 4194304 bytes, the disk 8388608"

	quick_timeouts 2 0
	printf '[target]\nconnections = 4\n' >>"$CDISK_CONFIG"
	run_cdisk cdisk-create --size 8M --base "$PWD/small.raw" gone.cdisk
	run_cdisk cdisk-io gone.cdisk w:0:4K:2 f
	mv small.raw elsewhere.raw
	local dirty
	dirty=$(dirty_bytes gone.cdisk)
	run_cdisk 6 cdisk-sync gone.cdisk
	assert_error cdisk-sync "cannot open '.*small.raw'"
	assert_equal "$(dirty_bytes gone.cdisk)" "$dirty"
}

@test "sync: a base that fails writes (nbdkit error filter) marks nothing clean" {
	truncate -s 16M base.raw
	start_nbdkit_unix "$BATS_TEST_TMPDIR/e.sock" --filter=error file base.raw \
		error-pwrite-rate=1 error-pwrite=EIO error-zero-rate=1 error-zero=EIO
	run_cdisk cdisk-create --base "nbd+unix:///?socket=$BATS_TEST_TMPDIR/e.sock" d.cdisk
	scatter d.cdisk
	local dirty
	dirty=$(dirty_bytes d.cdisk)
	run_cdisk 1 cdisk-sync d.cdisk
	# Writes and zeroings go at once, and the filter fails both.
	assert_error cdisk-sync "cannot (write|zero) 'nbd\+unix:.*Input/output error"
	assert_equal "$(dirty_bytes d.cdisk)" "$dirty"
}

@test "sync: the server killed mid-sync, then back: the next run completes" {
	quick_timeouts 3 0
	make_base base.raw 32M
	local sock=$BATS_TEST_TMPDIR/s.sock
	start_nbdkit_unix "$sock" --filter=delay file base.raw wdelay=300ms
	run_cdisk cdisk-create --base "nbd+unix:///?socket=$sock" d.cdisk
	run_cdisk cdisk-io d.cdisk w:0:32M:9 f
	timeout 60 cdisk-sync -v -v --depth 2 d.cdisk 2>"$BATS_TEST_TMPDIR/err" 3>&- &
	local pid=$! rc=0
	# Killed once it is sending (32 MiB at 300 ms a write take seconds),
	# not at a time: a slow start would have it find the server gone.
	wait_sending "$pid" "$BATS_TEST_TMPDIR/err"
	stop_nbdkit
	wait "$pid" || rc=$?
	[ "$rc" -ne 0 ] || fail "the sync did not notice"
	grep -q "^cdisk-sync: cannot " "$BATS_TEST_TMPDIR/err" || fail "$(cat "$BATS_TEST_TMPDIR/err")"
	start_nbdkit_unix "$sock" file base.raw
	run_cdisk cdisk-io d.cdisk check-clean
	run_cdisk cdisk-sync d.cdisk
	assert_equal "$(dirty_bytes d.cdisk)" 0
	patfile base.raw r 0 32M 9
}

@test "sync: two at once on one disk: the second is busy" {
	make_base base.raw 64M
	run_cdisk cdisk-create --base base.raw d.cdisk
	run_cdisk cdisk-io d.cdisk w:0:64M:8 f
	timeout 60 cdisk-sync -v -v --rate 16M --depth 1 d.cdisk 3>&- 2>first.err &
	local pid=$!
	# The first holds the disk once it sends (4 s of it at 16 MiB/s).
	wait_sending "$pid" first.err
	run_cdisk 4 cdisk-sync d.cdisk
	assert_error cdisk-sync "busy|in use"
	kill -INT "$pid"
	wait "$pid" || true
	run_cdisk cdisk-io d.cdisk check-clean
}

@test "sync: Ctrl-C stops after the requests in flight; the rest is still dirty" {
	make_base base.raw 64M
	run_cdisk cdisk-create --base base.raw d.cdisk
	run_cdisk cdisk-io d.cdisk w:0:64M:8 f
	timeout 60 cdisk-sync -v -v --rate 16M --depth 2 d.cdisk 3>&- 2>"$BATS_TEST_TMPDIR/err" &
	local pid=$! rc=0
	# Half a second into sending (of 4 s), whatever its start took.
	wait_sending "$pid" "$BATS_TEST_TMPDIR/err"
	sleep 0.5
	kill -INT "$pid"
	wait "$pid" || rc=$?
	[ "$rc" -eq 8 ] || fail "exit $rc: $(cat "$BATS_TEST_TMPDIR/err")"
	run_cdisk cdisk-io d.cdisk check-clean
	local left
	left=$(dirty_bytes d.cdisk)
	assert_num "$left" -gt 0
	assert_num "$left" -lt 67108864
}

@test "sync: kill -9 at random moments never leaves a false 'clean' record" {
	make_base base.raw 32M
	run_cdisk cdisk-create --base base.raw d.cdisk
	# The check after each kill and the next round's writes are one
	# cdisk-io, the check first.
	local check=()
	for round in $(seq 1 12); do
		run_cdisk cdisk-io d.cdisk "${check[@]}" \
			"w:$(((round * 3 % 29) << 20)):3M:$((round + 10))" \
			"w:$(((round * 7 % 31) << 20)):4K:$((round + 30))" f
		cdisk-sync --rate 32M --depth 4 d.cdisk 3>&- 2>/dev/null &
		local pid=$!
		sleep "0.$((RANDOM % 4))$((RANDOM % 10))"
		kill -9 "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
		check=(check-clean)
	done
	run_cdisk cdisk-io d.cdisk check-clean
	run_cdisk cdisk-sync d.cdisk
	assert_equal "$(dirty_bytes d.cdisk)" 0
	assert_base_equals_disk d.cdisk "$PWD/base.raw"
}

@test "sync: a served disk is synced by its server while fio writes to it" {
	make_base base.raw 64M
	run_cdisk cdisk-create --base base.raw d.cdisk
	sync_served_while_fio_writes 64M
	run_cdisk cdisk-io d.cdisk check-clean
	assert_base_equals_disk d.cdisk "$PWD/base.raw"
}

@test "sync: a damaged disk is refused" {
	make_base base.raw 4M
	run_cdisk cdisk-create --base base.raw d.cdisk
	printf 'garbage' | dd of=d.cdisk bs=1 seek=100 conv=notrunc status=none
	printf 'garbage' | dd of=d.cdisk bs=1 seek=4196 conv=notrunc status=none
	printf '[metadata]\nbackup_dir = none\n' >"$CDISK_CONFIG"
	run_cdisk 7 cdisk-sync d.cdisk
	assert_error cdisk-sync "'d.cdisk' is damaged: both superblocks fail their checks"
}

@test "sync --pull: the disk keeps working with the base gone" {
	make_base base.raw 16M
	run_cdisk cdisk-create --base "$PWD/base.raw" d.cdisk
	run_cdisk cdisk-io d.cdisk w:1M:64K:2 f
	run_cdisk cdisk-sync --pull --range 0:4M --json d.cdisk
	assert_equal "$(json_get .pulled_bytes)" $((4 * 1048576 - 65536))
	assert_equal "$(json_get .mode)" pull
	mv base.raw away.raw
	run_cdisk cdisk-io d.cdisk r:0:1M:1 r:1M:64K:2 r:1088K:2944K:1
	run_cdisk 6 cdisk-io d.cdisk r:4M:4K:1
	mv away.raw base.raw
	run_cdisk cdisk-sync --pull d.cdisk
	assert_output --partial "fetched from the base"
	mv base.raw away.raw
	run_cdisk cdisk-io d.cdisk r:0:1M:1 r:1M:64K:2 r:1088K:15296K:1
	mv away.raw base.raw
	# pulled blocks are clean: nothing to send but the write
	run_cdisk cdisk-sync --json d.cdisk
	assert_equal "$(json_get .bytes)" 65536
}

@test "sync --pull on a served disk, while it is written" {
	make_base base.raw 16M
	run_cdisk cdisk-create --base "$PWD/base.raw" d.cdisk
	start_serve --export d=d.cdisk
	run_cdisk qemu-io -f raw -c "write -P 0x55 2M 1M" "$NBD"
	run_cdisk cdisk-sync --pull --json d.cdisk
	assert_num "$(json_get .pulled_bytes)" -ge $((15 * 1048576))
	run_cdisk qemu-io -f raw -c "read -P 0x55 2M 1M" "$NBD"
	stop_serve
	mv base.raw away.raw
	run_cdisk cdisk-io d.cdisk r:0:2M:1 r:3M:13M:1
}

@test "sync --close: everything sent and checked, then the overlay is let go" {
	make_base base.raw 16M
	run_cdisk cdisk-create --base "$PWD/base.raw" d.cdisk
	scatter d.cdisk
	run_cdisk cdisk-sync --pull d.cdisk
	run_cdisk cdisk-io d.cdisk dump:"$BATS_TEST_TMPDIR/before.img"
	run_cdisk cdisk-sync --close --json d.cdisk
	assert_equal "$(json_get .clean)" true
	assert_num "$(json_get .verified_bytes)" -gt 0
	assert_equal "$(json_get .released_bytes)" 16777216
	run_cdisk cdisk-info --json d.cdisk
	assert_equal "$(json_get .blocks_present)" 0
	cmp "$BATS_TEST_TMPDIR/before.img" base.raw
	run_cdisk cdisk-io d.cdisk dump:"$BATS_TEST_TMPDIR/after.img"
	cmp "$BATS_TEST_TMPDIR/before.img" "$BATS_TEST_TMPDIR/after.img"
}

@test "sync: --range needs --pull; --pull and --close exclude each other" {
	run_cdisk 2 cdisk-sync --range 0:1M d.cdisk
	assert_usage_error cdisk-sync "--range goes with --pull"
	run_cdisk 2 cdisk-sync --pull --close d.cdisk
	assert_usage_error cdisk-sync "opposite directions"
	run_cdisk 2 cdisk-sync --pull --range 1M d.cdisk
	assert_usage_error cdisk-sync "OFFSET:LENGTH"
}

@test "cdisk-serve --sync-every pushes each export's changes on a timer" {
	make_base base.raw 16M
	run_cdisk cdisk-create --base "$PWD/base.raw" d.cdisk
	start_serve --export d=d.cdisk --sync-every 1 --sync-min-dirty 512K
	run_cdisk qemu-io -f raw -c "write -P 0x33 4M 64K" "$NBD"
	sleep 3
	run_cdisk cdisk-info --json d.cdisk
	# below --sync-min-dirty: not synced
	assert_num "$(json_get .blocks_dirty)" -gt 0
	run_cdisk qemu-io -f raw -c "write -P 0x44 8M 1M" "$NBD"
	local i
	for i in $(seq 50); do
		cdisk-info --json d.cdisk | jq -e '.blocks_dirty == 0' >/dev/null && break
		sleep 0.2
	done
	run_cdisk cdisk-info --json d.cdisk
	# the timer synced
	assert_equal "$(json_get .blocks_dirty)" 0
	stop_serve
	run_cdisk cdisk-io d.cdisk check-clean
	cmp -n 1048576 -i 8388608:0 base.raw <(head -c 1048576 /dev/zero | tr '\0' '\104')
}

@test "cdisk-serve: the sync policy options go with --sync-every" {
	run_cdisk 2 cdisk-serve --sync-rate 1M d.cdisk
	assert_usage_error cdisk-serve "go with --sync-every"
}

@test "the control socket's sync requests: bad ones are named, good ones report" {
	make_base base.raw 4M
	run_cdisk cdisk-create --base "$PWD/base.raw" d.cdisk
	start_serve --export d=d.cdisk
	local ctl=$SERVE_RUN/cdisk-serve.$SERVE_PID.ctl
	run_cdisk socat - "UNIX-CONNECT:$ctl" <<<'{"command":"sync"}'
	assert_equal "$(json_get .exit_code)" 2
	run_cdisk socat - "UNIX-CONNECT:$ctl" <<<'{"command":"sync","disk":"/nope.cdisk"}'
	assert_equal "$(json_get .exit_code)" 6
	run_cdisk socat - "UNIX-CONNECT:$ctl" <<<"{\"command\":\"sync\",\"disk\":\"$PWD/d.cdisk\",\"options\":{\"mode\":\"sideways\"}}"
	assert_regex "$(json_get .error)" "push, pull or close"
	run_cdisk socat - "UNIX-CONNECT:$ctl" <<<"{\"command\":\"sync\",\"disk\":\"$PWD/d.cdisk\",\"options\":{\"depth\":257}}"
	assert_regex "$(json_get .error)" "out of range"
	run_cdisk socat - "UNIX-CONNECT:$ctl" <<<"{\"command\":\"sync\",\"disk\":\"$PWD/d.cdisk\",\"options\":{\"depth\":-1}}"
	assert_regex "$(json_get .error)" "out of range"
	run_cdisk socat - "UNIX-CONNECT:$ctl" <<<"{\"command\":\"sync\",\"disk\":\"$PWD/d.cdisk\",\"options\":{\"depth\":\"many\"}}"
	assert_regex "$(json_get .error)" "bad sync options"
	run_cdisk qemu-io -f raw -c "write -P 0x21 0 64K" "$NBD"
	run_cdisk socat - "UNIX-CONNECT:$ctl" <<<"{\"command\":\"sync\",\"disk\":\"$PWD/d.cdisk\"}"
	assert_equal "$(json_get .ok)" true
	local i
	for i in $(seq 50); do
		run_cdisk socat - "UNIX-CONNECT:$ctl" <<<"{\"command\":\"sync-status\",\"disk\":\"$PWD/d.cdisk\"}"
		[ "$(json_get .running)" = false ] && break
		sleep 0.1
	done
	assert_equal "$(json_get .result.bytes)" 65536
	assert_equal "$(json_get .errno)" 0
}

@test "sync: a network base that is down at the start: unreachable, nothing changed" {
	quick_timeouts 2 0
	make_base base.raw 16M
	local sock=$BATS_TEST_TMPDIR/n.sock
	start_nbdkit_unix "$sock" file base.raw
	run_cdisk cdisk-create --base "nbd+unix:///?socket=$sock" d.cdisk
	scatter d.cdisk
	stop_nbdkit
	cp base.raw before.raw
	local dirty
	dirty=$(dirty_bytes d.cdisk)
	run_cdisk 3 cdisk-sync d.cdisk
	assert_error cdisk-sync "cannot reach 'nbd\+unix:"
	assert_equal "$(dirty_bytes d.cdisk)" "$dirty"
	cmp base.raw before.raw
}

@test "sync: a disk without a base, and a pull range that is not whole blocks" {
	run_cdisk cdisk-create --size 4M plain.cdisk
	run_cdisk 2 cdisk-sync plain.cdisk
	assert_error cdisk-sync "'plain.cdisk' has no base to sync to"
	run_cdisk 2 cdisk-sync --pull plain.cdisk
	assert_error cdisk-sync "'plain.cdisk' has no base to pull from"
	make_base base.raw 4M
	run_cdisk cdisk-create --base "$PWD/base.raw" d.cdisk
	run_cdisk 2 cdisk-sync --pull --range 100:4K d.cdisk
	assert_error cdisk-sync "the range must be whole blocks of 4096 bytes within the disk"
	run_cdisk 2 cdisk-sync --pull --range 0:8M d.cdisk
	assert_error cdisk-sync "the range must be whole blocks"
}

#!/usr/bin/env bats
# cdisk-mirror verify: the disk's data and its mirror's compared while the
# guest writes.  Blocks spoilt on the mirror behind the disk's back (its
# file written directly) are found with their offsets; --repair resends
# them; fio writing through the server meanwhile gives no false
# difference; the refusals are one line and exit 10.

bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
	MIRROR_IMG=$BATS_TEST_TMPDIR/mirror.img
}

teardown() {
	[ -z "${VERIFY_PID:-}" ] || kill "$VERIFY_PID" 2>/dev/null || true
	stop_serve || true
	stop_nbdkit
}

# An nbdkit file target of 64 MiB over MIRROR_IMG, full of a pattern no
# disk here holds; sets MIRROR.
start_mirror() {
	truncate -s 64M "$MIRROR_IMG"
	patfile "$MIRROR_IMG" w 0 64M 99
	start_nbdkit_unix "$BATS_TEST_TMPDIR/mirror.sock" file "$MIRROR_IMG"
	MIRROR="nbd+unix:///?socket=$BATS_TEST_TMPDIR/mirror.sock"
}

# A 64 MiB disk with data at odd places, its mirror attached and copied.
make_mirrored_disk() {
	run_cdisk cdisk-create --size 64M d.cdisk
	run_cdisk cdisk-io d.cdisk w:0:3M:1 w:20M:5M:2 w:63M:1M:3 f
	start_mirror
	run_cdisk 0 cdisk-mirror attach d.cdisk "$MIRROR"
}

# Spoil the mirror behind the disk's back: 8 KiB at 10 MiB and 4 KiB at
# 30 MiB + 12 KiB, written to its file, not through the disk.
spoil_mirror() {
	patfile "$MIRROR_IMG" w 10M 8K 9
	patfile "$MIRROR_IMG" w $((30 * 1048576 + 12288)) 4K 9
}

assert_spoilt_found() {
	assert_equal "$output" "$(printf '%s\n' "10485760 8192" "31469568 4096")"
}

assert_mirror_equals() {
	run_cdisk 0 qemu-img compare -f raw -F raw "$1" "$MIRROR_IMG"
}

@test "idle disk: a block changed behind the disk's back is found with its offset; --repair mends it" {
	make_mirrored_disk
	run_cdisk 0 cdisk-mirror verify d.cdisk
	assert_output ""
	assert_equal "${stderr_lines[0]}" "cdisk-mirror: 'd.cdisk': 64 MiB compared with mirror '$MIRROR' in ${stderr_lines[0]##* in }"
	[[ "${stderr_lines[0]}" == *": identical" ]] || fail "not identical: $stderr"
	spoil_mirror
	run_cdisk 9 cdisk-mirror verify d.cdisk
	assert_spoilt_found
	[[ "${stderr_lines[0]}" == *": different" ]] || fail "not different: $stderr"
	assert_equal "${stderr_lines[1]}" "cdisk-mirror: 'd.cdisk': 12 KiB in 2 ranges differ; 'cdisk-mirror verify --repair' resends them"
	run_cdisk 9 cdisk-mirror verify --json d.cdisk
	assert_equal "$(json_get .schema_version) $(json_get .identical) $(json_get .served)" "1 false false"
	assert_equal "$(json_get .compared_bytes) $(json_get .differing_bytes)" "67108864 12288"
	assert_equal "$(json_get '.differences | map("\(.offset):\(.length)") | join(" ")')" \
		"10485760:8192 31469568:4096"
	# Found and left alone: still spoilt.
	run_cdisk 0 patfile "$MIRROR_IMG" r 10M 8K 9
	run_cdisk 9 cdisk-mirror verify --repair d.cdisk
	assert_spoilt_found
	assert_equal "${stderr_lines[2]}" "cdisk-mirror: 'd.cdisk': resynced; the mirror is in sync"
	run_cdisk cdisk-io d.cdisk dump:"$BATS_TEST_TMPDIR/disk.img"
	assert_mirror_equals "$BATS_TEST_TMPDIR/disk.img"
	run_cdisk 0 cdisk-mirror verify d.cdisk
	assert_output ""
	run_cdisk 0 cdisk-mirror status --json d.cdisk
	assert_equal "$(json_get .state)" in-sync
}

@test "served disk: found through the server, --repair resyncs on its keeper, then clean" {
	make_mirrored_disk
	start_serve --export d=d.cdisk
	wait_state in-sync
	spoil_mirror
	run_cdisk 9 cdisk-mirror verify d.cdisk
	assert_spoilt_found
	run_cdisk 9 cdisk-mirror verify --repair --json d.cdisk
	assert_equal "$(json_get .served) $(json_get .repaired) $(json_get .in_sync)" "true true true"
	assert_equal "$(json_get '.differences | map("\(.offset):\(.length)") | join(" ")')" \
		"10485760:8192 31469568:4096"
	grep -qF "verify of mirror '$MIRROR' done: 67108864 bytes compared, 12288 differ in 2 ranges, set out of sync" \
		"$BATS_TEST_TMPDIR/serve.log" || fail "no verify line: $(cat "$BATS_TEST_TMPDIR/serve.log")"
	assert_mirror_equals "$NBD"
	run_cdisk 0 cdisk-mirror verify --json d.cdisk
	assert_equal "$(json_get .identical) $(json_get .differing_bytes)" "true 0"
	stop_serve
}

@test "served disk: verify while fio writes through NBD reports no false difference" {
	make_mirrored_disk
	start_serve --export d=d.cdisk
	wait_state in-sync
	# A fixed number of writes at a fixed pace (16 MiB of 4 KiB blocks,
	# about 4 s), not a time; the verify reads at 16 MiB/s, about 4 s for
	# the 64 MiB, so every region is compared with writes landing around.
	timeout 60 fio --name=w --ioengine=nbd --uri="$NBD" --rw=randwrite --bs=4k --size=64M \
		--io_size=16M --rate_iops=1000 --iodepth=8 --verify=crc32c --verify_fatal=1 \
		--do_verify=0 --verify_state_save=0 --output="$BATS_TEST_TMPDIR/fio.out" 3>&- &
	local fio=$!
	sleep 0.5
	run_cdisk 0 cdisk-mirror verify --rate 16M --json d.cdisk
	assert_equal "$(json_get .identical) $(json_get .differing_bytes)" "true 0"
	assert_equal "$(json_get .busy_bytes) $(json_get .out_of_sync_bytes)" "0 0"
	# The writes did get in the way: some regions were compared again.
	assert_num "$(json_get .recompared_bytes)" -gt 0
	wait "$fio" || fail "fio failed: $(cat "$BATS_TEST_TMPDIR/fio.out")"
	run_cdisk 0 fio --name=w --ioengine=nbd --uri="$NBD" --rw=randwrite --bs=4k \
		--size=64M --io_size=16M --verify=crc32c --verify_only=1 --verify_fatal=1 \
		--verify_state_save=0
	assert_mirror_equals "$NBD"
	stop_serve
}

@test "refused: no mirror, paused, degraded, a second verify at once; one line, exit 10" {
	run_cdisk cdisk-create --size 64M d.cdisk
	run_cdisk 10 cdisk-mirror verify d.cdisk
	assert_error cdisk-mirror "^cdisk-mirror: 'd.cdisk': has no mirror; attach one first$"
	run_cdisk 2 cdisk-mirror verify --max-time 3 d.cdisk
	assert_usage_error cdisk-mirror "--max-time goes with attach, resume and resync"
	run_cdisk 2 cdisk-mirror status --repair d.cdisk
	assert_usage_error cdisk-mirror "--repair goes with verify"
	start_mirror
	run_cdisk 0 cdisk-mirror attach d.cdisk "$MIRROR"
	run_cdisk 0 cdisk-mirror pause d.cdisk
	run_cdisk 10 cdisk-mirror verify d.cdisk
	assert_error cdisk-mirror "^cdisk-mirror: cannot verify while paused: mirror '$(re_quote "$MIRROR")' of 'd.cdisk' is paused; resume it first$"
	run_cdisk 0 cdisk-mirror resume d.cdisk

	quick_timeouts 2 0
	start_serve --mirror-timeout 1000 --export d=d.cdisk
	wait_state in-sync
	# A slow verify holds the keeper: a second one is refused meanwhile.
	cdisk-mirror verify --rate 8M d.cdisk >/dev/null 2>&1 3>&- &
	VERIFY_PID=$!
	sleep 1
	run_cdisk 10 cdisk-mirror verify d.cdisk
	assert_error cdisk-mirror "^cdisk-mirror: cannot verify: a verify of '.*d.cdisk' is already running$"
	wait "$VERIFY_PID" || fail "the first verify failed"
	VERIFY_PID=
	# The mirror gone and a write: degraded, and a verify is refused.
	stop_nbdkit
	run_cdisk 0 timeout 20 qemu-io -f raw -c "write -P 4 4M 4K" -c flush "$NBD"
	wait_state degraded 20
	run_cdisk 10 cdisk-mirror verify d.cdisk
	assert_error cdisk-mirror "^cdisk-mirror: cannot verify while degraded: mirror '$(re_quote "$MIRROR")' of '.*d.cdisk' is degraded: "
	stop_serve
}

@test "a disk on a primary: the primary compared with the mirror, idle and served" {
	make_base p.raw 64M
	start_mirror
	run_cdisk 0 cdisk-create --primary p.raw --mirror "$MIRROR" d.cdisk
	# Created copying: verify waits for the copy.
	run_cdisk 10 cdisk-mirror verify d.cdisk
	assert_error cdisk-mirror "^cdisk-mirror: cannot verify while copying: 64 MiB of 'd.cdisk' is out of sync with mirror '$(re_quote "$MIRROR")'; let the copy finish \('cdisk-mirror resync'\)$"
	run_cdisk 0 cdisk-mirror resync d.cdisk
	run_cdisk 0 cdisk-mirror verify d.cdisk
	spoil_mirror
	run_cdisk 9 cdisk-mirror verify d.cdisk
	assert_spoilt_found
	# Behind the disk's back on the primary's side too: the primary is
	# what the guest sees, the mirror what differs.
	patfile p.raw w 50M 4K 7
	start_serve --export d=d.cdisk
	wait_state in-sync
	run_cdisk 9 cdisk-mirror verify --repair d.cdisk
	assert_equal "$output" "$(printf '%s\n' "10485760 8192" "31469568 4096" "52428800 4096")"
	assert_mirror_equals p.raw
	run_cdisk 0 cdisk-mirror verify d.cdisk
	stop_serve
}

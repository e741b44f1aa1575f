#!/usr/bin/env bats
# The mirror under faults: a mirror that hangs or refuses (the tests'
# proxy in front of nbdkit) degrades the disk within --mirror-timeout and
# guest writes go on; while degraded they are recorded, and once the
# mirror answers only what was recorded is sent again; with
# --on-mirror-error fail the guest's write fails instead; cdisk-serve
# killed with -9 under load, round after round, loses nothing and resends
# only what the activity log names.

bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
	MIRROR_IMG=$BATS_TEST_TMPDIR/mirror.img
}

teardown() {
	if [ -n "${OSD_PID:-}" ]; then
		kill -CONT "$OSD_PID" 2>/dev/null
		# Shown only when the test failed: what the cluster says.
		timeout 10 ceph -c "$CEPH_CONF" health detail 2>&1 || true
		tail -n 30 "$(dirname "$CEPH_CONF")/log/osd.0.log" 2>&1 || true
	fi
	stop_serve KILL || true
	stop_proxy
	stop_nbdkit
	return 0
}

# A mirror on nbdkit (a file full of a pattern no disk here holds) behind
# the proxy; sets MIRROR.
start_mirror() {
	truncate -s "${1:-64M}" "$MIRROR_IMG"
	patfile "$MIRROR_IMG" w 0 "${1:-64M}" 99
	start_nbdkit_tcp file "$MIRROR_IMG"
	start_proxy "127.0.0.1:$NBDKIT_PORT"
	MIRROR="nbd://127.0.0.1:$PROXY_PORT/"
}

assert_mirror_equals_disk() {
	run_cdisk 0 qemu-img compare -f raw -F raw "$NBD" "$MIRROR_IMG"
}

# Seconds, to a tenth, that CMD... takes.
timed() {
	local t0 t1
	t0=$(date +%s.%N)
	"$@"
	t1=$(date +%s.%N)
	ELAPSED=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
}

@test "a hung mirror degrades the disk within the timeout; writes go on; only what was recorded is resent" {
	quick_timeouts 3 0
	start_mirror
	run_cdisk 0 cdisk-create --size 64M --mirror "$MIRROR" d.cdisk
	start_serve --mirror-timeout 1000 --export d=d.cdisk
	wait_state in-sync
	run_cdisk 0 qemu-io -f raw -c "write -P 1 0 1M" -c flush "$NBD"
	assert_mirror_equals_disk
	proxy_ctl pause
	# The first write waits the timeout at most, then the disk is
	# degraded and the next ones do not wait at all.
	timed run_cdisk 0 timeout 20 qemu-io -f raw -c "write -P 2 8M 1M" -c flush "$NBD"
	awk -v e="$ELAPSED" 'BEGIN { exit !(e < 6) }' || fail "the write took $ELAPSED s"
	timed run_cdisk 0 timeout 20 qemu-io -f raw -c "write -P 3 20M 2M" -c flush "$NBD"
	awk -v e="$ELAPSED" 'BEGIN { exit !(e < 2) }' || fail "a write while degraded took $ELAPSED s"
	run_cdisk 9 cdisk-mirror status --json d.cdisk
	assert_equal "$(json_get .state)" degraded
	assert_equal "$(json_get .served)" true
	assert_num "$(json_get .out_of_sync_bytes)" -ge $((3 << 20))
	assert_num "$(json_get .out_of_sync_bytes)" -le $((8 << 20))
	assert_output --partial '"last_error": "no answer from the mirror in 1000 ms'
	grep -q "mirror '$(re_quote "$MIRROR")' degraded: no answer from the mirror in 1000 ms" \
		"$BATS_TEST_TMPDIR/serve.log" || fail "no degraded line: $(cat "$BATS_TEST_TMPDIR/serve.log")"
	proxy_ctl resume
	wait_state in-sync
	run_cdisk 0 cdisk-mirror status --json d.cdisk
	assert_num "$(json_get .copied_bytes)" -le $((8 << 20))
	grep -q "answers again; resending" "$BATS_TEST_TMPDIR/serve.log" ||
		fail "no resend line: $(cat "$BATS_TEST_TMPDIR/serve.log")"
	assert_mirror_equals_disk
	stop_serve
}

@test "a mirror that refuses connections degrades the disk, and is resynced when it takes them again" {
	quick_timeouts 2 0
	start_mirror
	run_cdisk 0 cdisk-create --size 64M --mirror "$MIRROR" d.cdisk
	start_serve --mirror-timeout 1000 --export d=d.cdisk
	wait_state in-sync
	proxy_ctl refuse on
	proxy_ctl cut
	run_cdisk 0 timeout 20 qemu-io -f raw -c "write -P 4 4M 512K" -c "write -P 5 40M 4K" -c flush "$NBD"
	wait_state degraded 20
	run_cdisk 9 cdisk-mirror status d.cdisk
	assert_line --regexp "^state: +degraded"
	proxy_ctl refuse off
	wait_state in-sync
	assert_mirror_equals_disk
	stop_serve
}

@test "--on-mirror-error fail: a write the mirror did not take fails, and nothing is lost on either side" {
	quick_timeouts 3 0
	start_mirror
	run_cdisk 0 cdisk-create --size 64M --mirror "$MIRROR" d.cdisk
	start_serve --mirror-timeout 1000 --on-mirror-error fail --export d=d.cdisk
	wait_state in-sync
	proxy_ctl pause
	run -1 timeout 20 qemu-io -f raw -c "write -P 6 12M 64K" "$NBD"
	assert_output --partial "Input/output error"
	proxy_ctl resume
	wait_state in-sync
	assert_mirror_equals_disk
	stop_serve
}

@test "kill -9 of cdisk-serve under load, in sync and while resyncing: nothing flushed is lost, only the activity log is resent" {
	quick_timeouts 3 0
	start_mirror 256M
	run_cdisk 0 cdisk-create --size 256M --mirror "$MIRROR" d.cdisk
	for round in 1 2 3 4; do
		start_serve --export d=d.cdisk
		wait_state in-sync
		# Flushed data of this round, on a region fio never touches ...
		run_cdisk 0 qemu-io -f raw -c "write -P $round $((round * 16))M 1M" -c flush "$NBD"
		# ... while fio writes over the first 16 MiB (four 4 MiB extents).
		timeout 60 fio --name=w --ioengine=nbd --uri="$NBD" --rw=randwrite --bs=4k \
			--size=16M --time_based --runtime=30 --iodepth=16 \
			--output="$BATS_TEST_TMPDIR/fio.out" >/dev/null 2>&1 3>&- &
		fio=$!
		sleep 2
		kill -9 "$SERVE_PID"
		wait "$SERVE_PID" 2>/dev/null || true
		SERVE_PID=
		wait "$fio" || true
		start_serve --export d=d.cdisk
		run_cdisk '?' cdisk-mirror status --json d.cdisk
		# What the crash sets out of sync is the log's extents: the
		# four fio wrote to, and the one of this round's write at most.
		assert_num "$(json_get .recovered_bytes)" -gt 0
		assert_num "$(json_get .recovered_bytes)" -le $((5 * 4 << 20))
		wait_state in-sync
		for r in $(seq "$round"); do
			run_cdisk 0 qemu-io -f raw -r -c "read -P $r $((r * 16))M 1M" "$NBD"
		done
		assert_mirror_equals_disk
		stop_serve
	done
}

# mirror_survives_a_hang URI HANG RESUME: a served disk with URI as its
# mirror; in sync with fio writing; the mirror hangs (HANG) under the
# writes, which go on; RESUME, then in sync again, and the mirror, read
# through its own server, equals the disk.
mirror_survives_a_hang() {
	local uri=$1 hang=$2 resume=$3 fio
	quick_timeouts 3 0
	run_cdisk 0 cdisk-create --size 64M --mirror "$uri" d.cdisk
	start_serve --mirror-timeout 1000 --export d=d.cdisk
	wait_state in-sync 120
	# A fixed number of writes at a fixed pace (about 8 s), so that the
	# check afterwards reads back exactly those on a loaded machine too.
	timeout 60 fio --name=w --ioengine=nbd --uri="$NBD" --rw=randwrite --bs=4k --size=64M \
		--io_size=16M --rate_iops=500 --iodepth=8 --verify=crc32c --verify_fatal=1 \
		--do_verify=0 --verify_state_save=0 --output="$BATS_TEST_TMPDIR/fio.out" 3>&- &
	fio=$!
	sleep 2
	eval "$hang"
	wait_state degraded 30
	sleep 2
	eval "$resume"
	wait "$fio" || fail "fio failed: $(cat "$BATS_TEST_TMPDIR/fio.out")"
	wait_state in-sync 120
	run_cdisk 0 fio --name=w --ioengine=nbd --uri="$NBD" --rw=randwrite --bs=4k \
		--size=64M --io_size=16M --verify=crc32c --verify_only=1 --verify_fatal=1 \
		--verify_state_save=0
	run_cdisk 0 nbdcopy "$NBD" "$BATS_TEST_TMPDIR/disk.img"
	run_cdisk 0 target-io -d 8 "$uri" get:"$BATS_TEST_TMPDIR/mirror-read.img"
	cmp "$BATS_TEST_TMPDIR/disk.img" "$BATS_TEST_TMPDIR/mirror-read.img" ||
		fail "the mirror differs from the disk"
	stop_serve
}

@test "an RBD mirror whose OSD stops: degraded, writes go on, resynced when it is back" {
	use_server ceph
	export CEPH_CONF
	image=mirror-$(printf '%s' "$BATS_TEST_TMPDIR" | md5sum | cut -c1-8)
	run_cdisk target-io "rbd:rbd/$image" create:64M
	OSD_PID=$(cat "$(dirname "$CEPH_CONF")/run/osd.0.pid")
	# SIGSTOP, never kill: memstore keeps the pool in the OSD's memory.
	mirror_survives_a_hang "rbd:rbd/$image" 'freeze $OSD_PID' 'kill -CONT $OSD_PID'
	OSD_PID=
}

@test "an iSCSI (tgtd) mirror that hangs: degraded, writes go on, resynced when it answers" {
	use_server tgt
	tgt_new_lun 64M
	start_proxy "127.0.0.1:$TGT_PORT"
	mirror_survives_a_hang "${TGT_URI/:$TGT_PORT\//:$PROXY_PORT/}" "proxy_ctl pause" \
		"proxy_ctl resume"
	tgt_delete_lun "$TGT_TID"
}

#!/usr/bin/env bats
# Failover of a disk on a primary to its mirror: a primary that hangs or
# is cut mid-write is given up on within --failover-timeout, the mirror
# (which holds every acknowledged write) becomes the primary, and the
# guest sees a stall and no error; the former primary is fenced, never
# used again by itself; attached again, it gets only what it misses.
# cdisk-mirror failover does the same on request, and refuses a mirror
# that is not in sync unless --force.

bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
	MIRROR_IMG=$BATS_TEST_TMPDIR/mirror.img
}

teardown() {
	[ -z "${OSD_PID:-}" ] || kill -CONT "$OSD_PID" 2>/dev/null || true
	[ -z "${IMAGE:-}" ] || timeout 30 rbd rm "rbd/$IMAGE" >/dev/null 2>&1 || true
	[ -z "${P_PID:-}" ] || kill -CONT "$P_PID" 2>/dev/null || true
	stop_serve KILL || true
	stop_proxy
	[ -z "${P_PID:-}" ] || kill -9 "$P_PID" 2>/dev/null || true
	[ -z "${M_PID:-}" ] || kill -9 "$M_PID" 2>/dev/null || true
	stop_nbdkit
	[ -z "${TGT_TID:-}" ] || tgt_delete_lun "$TGT_TID" || true
	return 0
}

# served_in_sync_with_fio PRIMARY: d.cdisk on PRIMARY with a file mirror
# behind nbdkit (sets mirror and M_PID), served with a 2 s failover
# timeout, in sync, fio writing for 2 s already.
served_in_sync_with_fio() {
	truncate -s 64M "$MIRROR_IMG"
	start_nbdkit_unix "$BATS_TEST_TMPDIR/m.sock" file "$MIRROR_IMG"
	M_PID=$NBDKIT_PID
	NBDKIT_PID=
	mirror="nbd+unix:///?socket=$BATS_TEST_TMPDIR/m.sock"
	run_cdisk 0 cdisk-create --primary "$1" --mirror "$mirror" d.cdisk
	start_serve --failover-timeout 2000 --export d=d.cdisk
	wait_state in-sync 60
	fio_writes
	sleep 2
}

# The disk failed over: the status says so (exit 9: not protected), names
# the former primary, and the log says it loudly.
assert_failed_over() {
	local former=$1 now=$2
	run_cdisk 9 cdisk-mirror status --json d.cdisk
	assert_equal "$(json_get .state)" failed-over
	assert_equal "$(json_get .former_primary)" "$former"
	assert_equal "$(json_get .mirror)" null
	assert_equal "$(json_get '.targets[0].uri')" "$now"
	run_cdisk 9 cdisk-mirror status d.cdisk
	assert_line --regexp "^mirror:         NONE: failed over at "
	assert_line --regexp "^former primary: .*, fenced \(never used again by itself\)"
	run_cdisk 0 cdisk-info --json d.cdisk
	assert_equal "$(json_get .former_primary)" "$former"
	assert_equal "$(json_get .mirror)" null
}

@test "a primary that hangs mid-write: failed over within the timeout, fio sees no error, the former primary is never used again" {
	quick_timeouts 30 0
	make_base p.raw 64M
	truncate -s 64M "$MIRROR_IMG"
	start_nbdkit_unix "$BATS_TEST_TMPDIR/p.sock" file p.raw
	P_PID=$NBDKIT_PID
	start_nbdkit_unix "$BATS_TEST_TMPDIR/m.sock" file "$MIRROR_IMG"
	M_PID=$NBDKIT_PID
	NBDKIT_PID=
	primary="nbd+unix:///?socket=$BATS_TEST_TMPDIR/p.sock"
	mirror="nbd+unix:///?socket=$BATS_TEST_TMPDIR/m.sock"
	run_cdisk 0 cdisk-create --primary "$primary" --mirror "$mirror" d.cdisk
	start_serve --failover-timeout 1000 --export d=d.cdisk
	wait_state in-sync 60
	fio_writes
	sleep 2
	freeze "$P_PID"
	fio_check
	assert_failed_over "$primary" "$mirror"
	grep -q "FAILED OVER from primary '$primary' (no answer from the primary in 1000 ms) to '$mirror'" \
		"$BATS_TEST_TMPDIR/serve.log" ||
		fail "no failover in the log: $(cat "$BATS_TEST_TMPDIR/serve.log")"
	# The former primary answers again: nothing goes to it, before or
	# after a restart of the server.
	kill -CONT "$P_PID"
	sleep 1
	before=$(md5sum <p.raw)
	run_cdisk 0 qemu-io -f raw -c "write -P 7 50M 1M" -c flush "$NBD"
	stop_serve
	start_serve --export d=d.cdisk
	run_cdisk 0 qemu-io -f raw -c "write -P 8 51M 1M" -c flush "$NBD"
	run_cdisk 0 qemu-io -f raw -r -c "read -P 7 50M 1M" -c "read -P 8 51M 1M" "$NBD"
	stop_serve
	assert_equal "$(md5sum <p.raw)" "$before"
	run_cdisk 0 qemu-io -f raw -r -c "read -P 7 50M 1M" -c "read -P 8 51M 1M" "$MIRROR_IMG"
	run_cdisk 9 cdisk-mirror status --json d.cdisk
	# What it misses: at least the two writes since.
	assert_num "$(json_get .out_of_sync_bytes)" -ge $((2 << 20))
}

@test "an iSCSI (tgtd) primary cut mid-write: failed over, fio sees no error; reads go on from the mirror" {
	quick_timeouts 3 0
	use_server tgt
	tgt_new_lun 64M
	start_proxy "127.0.0.1:$TGT_PORT"
	primary=${TGT_URI/:$TGT_PORT\//:$PROXY_PORT/}
	served_in_sync_with_fio "$primary"
	proxy_ctl refuse on
	proxy_ctl cut
	fio_check
	assert_failed_over "$primary" "$mirror"
	stop_serve
}

@test "an RBD primary whose OSD is stopped (SIGSTOP) mid-write: failed over, fio sees no error" {
	use_server ceph
	export CEPH_CONF
	IMAGE=fo$(printf '%s' "$BATS_TEST_TMPDIR" | md5sum | cut -c1-10)
	run_cdisk 0 target-io "rbd:rbd/$IMAGE" create:64M
	primary=rbd:rbd/$IMAGE
	served_in_sync_with_fio "$primary"
	OSD_PID=$(cat "$(dirname "$CEPH_CONF")/run/osd.0.pid")
	freeze "$OSD_PID"
	# librbd's cache may take writes for a while: a flush it cannot.
	run_cdisk 0 qemu-io -f raw -c flush "$NBD"
	fio_check
	assert_failed_over "$primary" "$mirror"
	grep -q "FAILED OVER from primary '$primary'" "$BATS_TEST_TMPDIR/serve.log" ||
		fail "no failover in the log: $(cat "$BATS_TEST_TMPDIR/serve.log")"
	kill -CONT "$OSD_PID"
	OSD_PID=
	stop_serve
}

@test "cdisk-serve --failover-timeout and --mirror-timeout: out of range or not a number is a usage error" {
	run_cdisk 0 cdisk-create --size 16M d.cdisk
	for v in 0 99 600001 -1 abc ''; do
		run_cdisk 2 cdisk-serve --failover-timeout "$v" --export d=d.cdisk
		assert_usage_error cdisk-serve "failover-timeout"
		run_cdisk 2 cdisk-serve --mirror-timeout "$v" --export d=d.cdisk
		assert_usage_error cdisk-serve "mirror-timeout"
	done
}

@test "cdisk-mirror failover: refused while the mirror is not in sync, --force says what is lost; bad input" {
	make_base p.raw 64M
	truncate -s 64M "$MIRROR_IMG"
	run_cdisk 0 cdisk-create --primary p.raw d.cdisk
	run_cdisk 0 cdisk-mirror attach --no-copy d.cdisk "$MIRROR_IMG"
	run_cdisk 10 cdisk-mirror failover d.cdisk
	assert_error cdisk-mirror "cannot fail over 'd.cdisk' to mirror '$MIRROR_IMG': 64 MiB of the disk are not on it yet \\(--force loses them\\)$"
	run_cdisk '?' cdisk-mirror status --json d.cdisk
	assert_equal "$(json_get .state)" copying
	run_cdisk 2 cdisk-mirror failover --max-time 3 d.cdisk
	run_cdisk 2 cdisk-mirror resync --force d.cdisk
	assert_equal "${stderr_lines[0]}" "cdisk-mirror: --force goes with failover"
	run_cdisk 0 cdisk-mirror failover --force d.cdisk
	assert_line --partial "failed over: '$MIRROR_IMG' is the primary now; 64 MiB it did not have are lost"
	assert_failed_over "$BATS_TEST_TMPDIR/p.raw" "$MIRROR_IMG"
	# Once failed over: no second failover, no resync to the former primary.
	run_cdisk 10 cdisk-mirror failover d.cdisk
	assert_error cdisk-mirror "is the fenced former primary, not a mirror; attach a mirror$"
	run_cdisk 8 cdisk-mirror resync d.cdisk
	run_cdisk 10 cdisk-mirror verify d.cdisk
	assert_error cdisk-mirror "is the fenced former primary, not a mirror; attach it \\(or another\\) first$"
	# An overlay disk has no primary to fail over from.
	truncate -s 8M m2.raw
	run_cdisk 0 cdisk-create --size 8M --mirror "$BATS_TEST_TMPDIR/m2.raw" o.cdisk
	run_cdisk 2 cdisk-mirror failover o.cdisk
	assert_error cdisk-mirror "cannot fail over 'o.cdisk': its data is in the file, not on a primary \\(failover is for disks created with --primary\\)$"
	run_cdisk 6 cdisk-mirror failover missing.cdisk
}

@test "the former primary attached again gets only what it misses; a served failover on request" {
	make_base p.raw 64M
	truncate -s 64M "$MIRROR_IMG"
	run_cdisk 0 cdisk-create --primary p.raw --mirror "$MIRROR_IMG" d.cdisk
	start_serve --export d=d.cdisk
	wait_state in-sync 60
	run_cdisk 0 qemu-io -f raw -c "write -P 3 0 1M" -c flush "$NBD"
	run_cdisk 0 cdisk-mirror failover d.cdisk
	assert_line --partial "failed over: '$MIRROR_IMG' is the primary now"
	assert_failed_over "$BATS_TEST_TMPDIR/p.raw" "$MIRROR_IMG"
	run_cdisk 0 qemu-io -f raw -c "write -P 4 10M 2M" -c flush "$NBD"
	# It misses the write since, and what it may have lost of the writes
	# before (the activity log's extents: the one at 0), not the rest.
	run_cdisk 9 cdisk-mirror status --json d.cdisk
	misses=$(json_get .out_of_sync_bytes)
	assert_num "$misses" -ge $((3 << 20))
	assert_num "$misses" -le $((12 << 20))
	# Written to the former primary behind the disk's back: a resync of
	# what it misses leaves it there (only verify would find it).
	run_cdisk 0 patfile p.raw w 30M 1M 42
	run_cdisk 0 cdisk-mirror attach d.cdisk p.raw
	run_cdisk 0 cdisk-mirror status --json d.cdisk
	assert_equal "$(json_get .state)" in-sync
	assert_equal "$(json_get .mirror)" "$BATS_TEST_TMPDIR/p.raw"
	# Known by its identity, not its URI: only what it missed was sent.
	assert_equal "$(json_get .copied_bytes)" "$misses"
	stop_serve
	run_cdisk 0 patfile p.raw r 30M 1M 42
	run_cdisk 0 qemu-io -f raw -r -c "read -P 3 0 1M" -c "read -P 4 10M 2M" p.raw
	# Everything else is the same on both.
	run_cdisk 0 patfile p.raw w 30M 1M 0
	run_cdisk 0 patfile "$MIRROR_IMG" w 30M 1M 0
	run_cdisk 0 cmp p.raw "$MIRROR_IMG"
}

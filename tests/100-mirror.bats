#!/usr/bin/env bats
# cdisk-mirror: a synchronous mirror on an nbdkit file target, on an idle
# disk (the program copies) and on a served one (the server copies, asked
# through its control socket); the mirror compared with the disk by
# qemu-img compare.

bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
	MIRROR_IMG=$BATS_TEST_TMPDIR/mirror.img
}

teardown() {
	stop_serve || true
	stop_nbdkit
}

# start_mirror [SIZE]: an nbdkit file target of SIZE (default 64M), full
# of a pattern no disk here holds, so that a block not copied shows; sets
# MIRROR (its URI).
start_mirror() {
	rm -f "$MIRROR_IMG"
	truncate -s "${1:-64M}" "$MIRROR_IMG"
	patfile "$MIRROR_IMG" w 0 "${1:-64M}" 99
	start_nbdkit_unix "$BATS_TEST_TMPDIR/mirror.sock" file "$MIRROR_IMG"
	MIRROR="nbd+unix:///?socket=$BATS_TEST_TMPDIR/mirror.sock"
}

# A 64 MiB disk with data at odd places and zeroes elsewhere.
make_disk() {
	run_cdisk cdisk-create --size 64M d.cdisk
	run_cdisk cdisk-io d.cdisk w:0:3M:1 w:20M:5M:2 w:63M:1M:3 f
}

# assert_mirror_equals_disk [NBD-URI]: what the disk shows (through its
# server when given, else read by cdisk-io) equals the mirror's file.
assert_mirror_equals_disk() {
	local disk=${1:-}
	if [ -z "$disk" ]; then
		run_cdisk cdisk-io d.cdisk dump:"$BATS_TEST_TMPDIR/disk.img"
		disk=$BATS_TEST_TMPDIR/disk.img
	fi
	run_cdisk 0 qemu-img compare -f raw -F raw "$disk" "$MIRROR_IMG"
}

@test "attach on an idle disk copies the whole disk and says in sync" {
	make_disk
	start_mirror
	run_cdisk 0 cdisk-mirror attach d.cdisk "$MIRROR"
	assert_output --regexp "^'d.cdisk': 64 MiB copied to mirror 'nbd\+unix:.*' in .* s \(.* MiB/s\); in sync$"
	assert_mirror_equals_disk
}

@test "status: human and JSON, exit 0 in sync, 9 with no mirror" {
	make_disk
	run_cdisk 9 cdisk-mirror status d.cdisk
	assert_line "mirror:         none"
	run_cdisk 9 cdisk-mirror status --json d.cdisk
	assert_equal "$(json_get .schema_version)" 1
	assert_equal "$(json_get .state)" none
	assert_equal "$(json_get .mirror)" null
	assert_equal "$(json_get .in_sync)" false
	start_mirror
	run_cdisk 0 cdisk-mirror attach d.cdisk "$MIRROR"
	run_cdisk 0 cdisk-mirror status d.cdisk
	assert_line "mirror:         $MIRROR (writes, while in sync)"
	assert_line "primary:        the disk's overlay (reads; writes first)"
	assert_line --regexp "^state:          in sync since [0-9-]+ [0-9:]+$"
	assert_line "last error:     none"
	assert_line "policy:         a mirror write slower than 5000 ms degrades the disk (on error: degrade)"
	run_cdisk 0 cdisk-mirror status --json d.cdisk
	assert_equal "$(json_get .state)" in-sync
	assert_equal "$(json_get .in_sync)" true
	assert_equal "$(json_get .mirror)" "$MIRROR"
	assert_equal "$(json_get '.targets[0].role') $(json_get '.targets[0].kind')" "primary overlay"
	assert_equal "$(json_get '.targets[1].role') $(json_get '.targets[1].uri')" "mirror $MIRROR"
	assert_equal "$(json_get .size)" 67108864
	assert_equal "$(json_get .out_of_sync_bytes)" 0
	assert_equal "$(json_get .percent_in_sync)" 100
	assert_equal "$(json_get .timeout_ms)" 5000
	assert_equal "$(json_get .on_error)" degrade
	assert_equal "$(json_get .served)" false
	assert_num "$(json_get .since)" -gt 0
}

@test "attach to a mirror smaller than the disk: one line, nothing recorded" {
	make_disk
	start_mirror 32M
	run_cdisk 2 cdisk-mirror attach d.cdisk "$MIRROR"
	assert_error cdisk-mirror "^cdisk-mirror: mirror '$(re_quote "$MIRROR")' holds 32 MiB, less than the disk's 64 MiB$"
	run_cdisk 9 cdisk-mirror status --json d.cdisk
	assert_equal "$(json_get .state)" none
}

@test "attach to the disk's own file, under another name: one line, nothing recorded" {
	make_disk
	ln d.cdisk same.img
	run_cdisk 2 cdisk-mirror attach d.cdisk "$BATS_TEST_TMPDIR/same.img"
	assert_error cdisk-mirror "^cdisk-mirror: mirror '.*/same.img' is the disk file 'd.cdisk' itself$"
	run_cdisk 9 cdisk-mirror status --json d.cdisk
	assert_equal "$(json_get .state)" none
}

@test "attach to a mirror that cannot be reached: exit 3, nothing recorded" {
	make_disk
	run_cdisk 3 cdisk-mirror attach d.cdisk "nbd+unix:///?socket=$BATS_TEST_TMPDIR/none.sock"
	assert_error cdisk-mirror "^cdisk-mirror: cannot reach 'nbd\+unix:///\?socket=.*/none.sock': "
	run_cdisk 9 cdisk-mirror status --json d.cdisk
	assert_equal "$(json_get .state)" none
}

@test "attach without a URI, and to a disk that is missing or not a cdisk" {
	make_disk
	run_cdisk 2 cdisk-mirror attach d.cdisk
	assert_usage_error cdisk-mirror "attach needs the mirror's URI"
	run_cdisk 6 cdisk-mirror attach none.cdisk "$BATS_TEST_TMPDIR/m.img"
	assert_error cdisk-mirror "none.cdisk"
	head -c 1M /dev/urandom >junk.cdisk
	run_cdisk 7 cdisk-mirror status junk.cdisk
	assert_error cdisk-mirror "junk.cdisk"
}

@test "attach twice is refused, naming the mirror attached; detach, then detach again" {
	make_disk
	start_mirror
	run_cdisk 0 cdisk-mirror attach d.cdisk "$MIRROR"
	run_cdisk 10 cdisk-mirror attach d.cdisk "$BATS_TEST_TMPDIR/other.img"
	assert_error cdisk-mirror "^cdisk-mirror: 'd.cdisk': already has mirror '$(re_quote "$MIRROR")'; detach it first$"
	run_cdisk 0 cdisk-mirror detach d.cdisk
	assert_output "'d.cdisk': mirror '$MIRROR' detached; its data is left as it is"
	run_cdisk 9 cdisk-mirror status --json d.cdisk
	assert_equal "$(json_get .state)" none
	for c in detach pause resume resync; do
		run_cdisk 10 cdisk-mirror "$c" d.cdisk
		assert_error cdisk-mirror "^cdisk-mirror: 'd.cdisk': has no mirror; attach one first$"
	done
	# Detached means forgotten: writes no longer reach the old mirror.
	run_cdisk cdisk-io d.cdisk w:30M:1M:7 f
	stop_nbdkit
	run_cdisk 10 patfile "$MIRROR_IMG" r 30M 1M 7
}

@test "pause records writes; resume copies only what was written" {
	make_disk
	start_mirror
	run_cdisk 0 cdisk-mirror attach d.cdisk "$MIRROR"
	run_cdisk 0 cdisk-mirror pause d.cdisk
	assert_output --partial "paused"
	run_cdisk cdisk-io d.cdisk w:10M:1M:5 w:40M:1M:6 f
	run_cdisk 9 cdisk-mirror status --json d.cdisk
	assert_equal "$(json_get .state)" paused
	assert_equal "$(json_get .out_of_sync_bytes)" 2097152
	run_cdisk 9 cdisk-mirror status d.cdisk
	assert_line --regexp "^state:          paused since .*, 2 MiB out of sync$"
	# A region the disk did not write, spoilt on the mirror behind its
	# back: a resume that sent everything would mend it.
	patfile "$MIRROR_IMG" w 50M 1M 8
	run_cdisk 0 cdisk-mirror resume d.cdisk
	assert_output --regexp "^'d.cdisk': 2 MiB copied to mirror .*; in sync$"
	stop_nbdkit
	run_cdisk 0 patfile "$MIRROR_IMG" r 10M 1M 5
	run_cdisk 0 patfile "$MIRROR_IMG" r 40M 1M 6
	run_cdisk 0 patfile "$MIRROR_IMG" r 50M 1M 8
	# and resync --full does mend it
	start_nbdkit_unix "$BATS_TEST_TMPDIR/mirror.sock" file "$MIRROR_IMG"
	run_cdisk 0 cdisk-mirror resync --full d.cdisk
	assert_output --regexp "^'d.cdisk': 64 MiB copied"
	assert_mirror_equals_disk
}

@test "an idle copy stopped by --max-time or SIGINT says what is left; resume finishes it" {
	make_disk
	start_mirror
	run_cdisk 8 cdisk-mirror attach --rate 4M --max-time 1 d.cdisk "$MIRROR"
	assert_error cdisk-mirror "^cdisk-mirror: 'd.cdisk': stopped with [0-9.]+ MiB left to copy; 'cdisk-mirror resume d.cdisk', or serving the disk, goes on$"
	run_cdisk 9 cdisk-mirror status --json d.cdisk
	assert_equal "$(json_get .state)" copying
	assert_num "$(json_get .out_of_sync_bytes)" -gt 0
	cdisk-mirror resume --rate 4M d.cdisk >/dev/null 2>"$BATS_TEST_TMPDIR/err" 3>&- &
	local pid=$!
	sleep 1
	kill -INT "$pid"
	local rc=0
	wait "$pid" || rc=$?
	assert_equal "$rc" 8
	grep -q "stopped with .* left to copy" "$BATS_TEST_TMPDIR/err" ||
		fail "no 'stopped with' message: $(cat "$BATS_TEST_TMPDIR/err")"
	run_cdisk 0 cdisk-mirror resume d.cdisk
	assert_mirror_equals_disk
}

@test "attach --no-copy records; the next cdisk-serve copies, and applies its mirror options" {
	make_disk
	start_mirror
	run_cdisk 0 cdisk-mirror attach --no-copy d.cdisk "$MIRROR"
	assert_output "'d.cdisk': mirror '$MIRROR' attached; the next cdisk-serve of the disk copies it"
	run_cdisk 9 cdisk-mirror status --json d.cdisk
	assert_equal "$(json_get .state)" copying
	assert_equal "$(json_get .out_of_sync_bytes)" 67108864
	start_serve --export d=d.cdisk --mirror-timeout 2000 --on-mirror-error fail
	for _ in $(seq 60); do
		cdisk-mirror status d.cdisk >/dev/null 2>&1 && break
		sleep 0.5
	done
	run_cdisk 0 cdisk-mirror status --json d.cdisk
	assert_equal "$(json_get .served)" true
	assert_equal "$(json_get .timeout_ms)" 2000
	assert_equal "$(json_get .on_error)" fail
	assert_mirror_equals_disk "$NBD"
}

@test "served disk: attach through the server while fio writes; equal once the writers stop" {
	run_cdisk cdisk-create --size 64M d.cdisk
	start_mirror
	start_serve --export d=d.cdisk
	# A fixed number of writes at a fixed pace (about 5 s), not a time:
	# the check afterwards reads back exactly those, however loaded the
	# machine is.
	timeout 60 fio --name=w --ioengine=nbd --uri="$NBD" --rw=randwrite --bs=4k --size=64M \
		--io_size=10M --rate_iops=500 --iodepth=8 --verify=crc32c --verify_fatal=1 \
		--do_verify=0 --verify_state_save=0 --output="$BATS_TEST_TMPDIR/fio.out" 3>&- &
	local fio=$!
	sleep 1
	# The server checks and records; its keeper copies with fio writing;
	# this waits for in sync.
	run_cdisk 0 cdisk-mirror attach d.cdisk "$MIRROR"
	assert_output "'d.cdisk': mirror '$MIRROR' is in sync"
	wait "$fio" || fail "fio failed: $(cat "$BATS_TEST_TMPDIR/fio.out")"
	run_cdisk 0 cdisk-mirror status --json d.cdisk
	assert_equal "$(json_get .state)" in-sync
	assert_equal "$(json_get .served)" true
	run_cdisk 0 fio --name=w --ioengine=nbd --uri="$NBD" --rw=randwrite --bs=4k \
		--size=64M --io_size=10M --verify=crc32c --verify_only=1 --verify_fatal=1 \
		--verify_state_save=0
	assert_mirror_equals_disk "$NBD"
	# The verbs through the server: refusals as on an idle disk, then the
	# rest of the cycle.
	run_cdisk 10 cdisk-mirror attach d.cdisk "$BATS_TEST_TMPDIR/other.img"
	assert_error cdisk-mirror "already has mirror '$(re_quote "$MIRROR")'; detach it first$"
	run_cdisk 0 cdisk-mirror pause d.cdisk
	run_cdisk 0 qemu-io -f raw -c "write -P 0x5a 8M 1M" "$NBD"
	run_cdisk 9 cdisk-mirror status --json d.cdisk
	assert_equal "$(json_get .state)" paused
	assert_equal "$(json_get .out_of_sync_bytes)" 1048576
	run_cdisk 0 cdisk-mirror resume d.cdisk
	assert_output "'d.cdisk': mirror '$MIRROR' is in sync"
	assert_mirror_equals_disk "$NBD"
	run_cdisk 0 cdisk-mirror detach d.cdisk
	run_cdisk 9 cdisk-mirror status --json d.cdisk
	assert_equal "$(json_get .state)" none
	stop_serve
}

@test "served disk: the mirror's state changes are only for the server's user and group" {
	run_cdisk cdisk-create --size 64M d.cdisk
	ctldir=$(mktemp -d /tmp/cdisk-ctl.XXXXXX)
	chmod 0755 "$ctldir"
	start_serve --group nogroup --control "$ctldir/c.sock" --export d=d.cdisk
	chmod 0666 "$ctldir/c.sock"
	as() { # UID GID REQUEST
		printf '%s\n' "$3" | setpriv --reuid="$1" --regid="$2" --clear-groups \
			socat -t 30 - "UNIX-CONNECT:$ctldir/c.sock"
	}
	local disk="\"disk\":\"$BATS_TEST_TMPDIR/d.cdisk\""
	run as 65534 100 "{\"command\":\"mirror-status\",$disk}"
	assert_equal "$(json_get .ok)" true
	assert_equal "$(json_get .mirror.state)" none
	for verb in mirror-attach mirror-detach mirror-pause mirror-resume mirror-resync; do
		run as 65534 100 "{\"command\":\"$verb\",$disk,\"uri\":\"/tmp/m.img\"}"
		assert_equal "$(json_get .ok)" false
		assert_equal "$(json_get .exit_code)" 5
		assert_equal "$(json_get .error)" "'$verb' is only for root, the server's user and the control socket's group"
	done
	# Bad requests from one who may: named, with the errno.
	run as 0 0 "{\"command\":\"mirror-attach\",$disk}"
	assert_equal "$(json_get .exit_code)" 2
	assert_equal "$(json_get .error)" "'mirror-attach' needs \"uri\""
	run as 0 0 '{"command":"mirror-status","disk":"/nope.cdisk"}'
	assert_equal "$(json_get .exit_code)" 6
	stop_serve
	rm -rf "$ctldir"
}

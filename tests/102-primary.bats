#!/usr/bin/env bats
# Disks whose data lives on a remote primary (cdisk-create --primary): no
# overlay, reads and writes in place on the primary, the cdisk file only
# state; with a synchronous mirror beside it.  The patent's own set-up is
# here too: an RBD primary and an iSCSI (tgtd) mirror, fio verifying
# through cdisk-serve, cdisk-serve killed with -9 mid-write, and the
# mirror compared with the primary afterwards.

bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
	MIRROR_IMG=$BATS_TEST_TMPDIR/mirror.img
}

teardown() {
	[ -z "${P_PID:-}" ] || kill -CONT "$P_PID" "$M_PID" 2>/dev/null || true
	stop_serve KILL || true
	[ -z "${P_PID:-}" ] || stop_two
	stop_nbdkit
	return 0
}

# An nbdkit mirror over a file full of a pattern no primary here holds.
start_mirror() {
	truncate -s "${1:-64M}" "$MIRROR_IMG"
	patfile "$MIRROR_IMG" w 0 "${1:-64M}" 99
	start_nbdkit_unix "$BATS_TEST_TMPDIR/mirror.sock" file "$MIRROR_IMG"
	MIRROR="nbd+unix:///?socket=$BATS_TEST_TMPDIR/mirror.sock"
}

@test "create --primary: size from the primary, no data in the file, writes land on the primary in place" {
	make_base p.raw 64M
	run_cdisk 0 cdisk-create --primary p.raw d.cdisk
	assert_output "created 'd.cdisk'"
	run_cdisk 0 cdisk-info --json d.cdisk
	assert_equal "$(json_get .size)" $((64 << 20))
	assert_equal "$(json_get .primary.uri)" "$BATS_TEST_TMPDIR/p.raw"
	assert_equal "$(json_get .base)" null
	# The file is state only: far smaller than the disk, even sparse-blind.
	assert_num "$(stat -c %s d.cdisk)" -lt $((32 << 20))
	run_cdisk 0 cdisk-info d.cdisk
	assert_line "overlay:         none: the data is read and written in place on the primary"
	assert_line --regexp "^primary:         $BATS_TEST_TMPDIR/p.raw "

	start_serve --export d=d.cdisk
	# Whole blocks and a request of odd bytes: both straight to the primary.
	run_cdisk 0 qemu-io -f raw -c "write -P 7 1M 1M" -c "write -P 9 3000 700" -c flush "$NBD"
	run_cdisk 0 qemu-io -f raw -r -c "read -P 7 1M 1M" -c "read -P 9 3000 700" "$NBD"
	stop_serve
	run_cdisk 0 qemu-io -f raw -r -c "read -P 7 1M 1M" -c "read -P 9 3000 700" p.raw
	# Untouched bytes around them are the primary's own pattern.
	run_cdisk 0 patfile p.raw r 8M 56M 1
	run_cdisk 0 cdisk-info --json d.cdisk
	assert_equal "$(json_get .blocks_present)" 0
	# Nothing to push or pull: the data is already where it lives.
	run_cdisk 2 cdisk-sync d.cdisk
	assert_error cdisk-sync "has no overlay to sync: its data is written in place on its primary"
	run_cdisk 2 cdisk-sync --pull d.cdisk
	assert_error cdisk-sync "has no overlay to pull into"
}

@test "create --primary: bad input is one line and leaves nothing behind" {
	make_base p.raw 64M
	run_cdisk 2 cdisk-create --primary p.raw --base p.raw d.cdisk
	assert_usage_error cdisk-create "--base and --primary"
	run_cdisk 6 cdisk-create --primary missing.raw d.cdisk
	assert_error cdisk-create "primary 'missing.raw'"
	run_cdisk 2 cdisk-create --primary p.raw --size 128M d.cdisk
	assert_error cdisk-create "primary '.*/p.raw' holds 64 MiB, less than the 128 MiB asked for"
	quick_timeouts 1 0
	run_cdisk 3 cdisk-create --primary "nbd://127.0.0.1:$(free_port)/" d.cdisk
	assert_not_exists d.cdisk
	# The mirror is the primary itself under another name: refused by identity.
	ln -s p.raw alias.raw
	run_cdisk 2 cdisk-create --primary p.raw --mirror alias.raw d.cdisk
	assert_error cdisk-create "is this disk's own primary"
	assert_not_exists d.cdisk
	# The same again is "unchanged"; another primary at the same name is not.
	run_cdisk 0 cdisk-create --primary p.raw d.cdisk
	run_cdisk 0 cdisk-create --primary p.raw d.cdisk
	assert_output "'d.cdisk' unchanged"
	make_base q.raw 64M
	run_cdisk 1 cdisk-create --primary q.raw d.cdisk
	assert_error cdisk-create "already exists with a different primary"
	run_cdisk 1 cdisk-create --base p.raw d.cdisk
	assert_error cdisk-create "already exists with a different kind"
}

@test "a device put in the primary's place is never written as the primary" {
	make_base p.raw 64M
	run_cdisk 0 cdisk-create --primary p.raw d.cdisk
	# Another file, same name: another device's data.
	mv p.raw old.raw
	make_base p.raw 64M
	start_serve --export d=d.cdisk
	run_cdisk 1 qemu-io -f raw -c "write -P 5 0 64k" "$NBD"
	stop_serve
	run grep -c "is not the device 'd.cdisk' was created on" "$BATS_TEST_TMPDIR/serve.log"
	assert_num "$output" -ge 1
	run_cdisk 0 patfile p.raw r 0 64M 1
	run_cdisk 0 patfile old.raw r 0 64M 1
	# A copy to a mirror cannot read such a primary: it says so, and the
	# mirror, not at fault, is not called degraded.
	truncate -s 64M m.raw
	mv p.raw new.raw
	mv old.raw p.raw
	run_cdisk 0 cdisk-mirror attach d.cdisk m.raw
	mv p.raw old.raw
	mv new.raw p.raw
	run_cdisk 7 cdisk-mirror resync --full d.cdisk
	[[ "$stderr" == *"is not the device 'd.cdisk' was created on"* ]] ||
		fail "the error does not name the primary's identity"
	run_cdisk 9 cdisk-mirror status --json d.cdisk
	assert_equal "$(json_get .state)" copying
}

@test "--primary with --mirror: the primary copied at creation; writes reach both; fio verifies" {
	make_base p.raw 64M
	start_mirror
	run_cdisk 0 cdisk-create --primary p.raw --mirror "$MIRROR" d.cdisk
	run_cdisk 9 cdisk-mirror status d.cdisk
	run_cdisk 0 cdisk-mirror resync d.cdisk
	run_cdisk 0 cmp p.raw "$MIRROR_IMG"
	run_cdisk 0 cdisk-mirror status --json d.cdisk
	assert_equal "$(json_get .state)" in-sync
	assert_equal "$(json_get '.targets[0].role') $(json_get '.targets[0].kind')" "primary device"
	assert_equal "$(json_get '.targets[0].uri')" "$BATS_TEST_TMPDIR/p.raw"
	run_cdisk 0 cdisk-mirror status d.cdisk
	assert_line "primary:        $BATS_TEST_TMPDIR/p.raw (reads; writes first)"

	start_serve --export d=d.cdisk
	run_cdisk 0 fio --name=w --ioengine=nbd --uri="$NBD" --rw=randwrite --bs=4k \
		--size=64M --io_size=16M --iodepth=16 --verify=crc32c --verify_fatal=1 \
		--verify_state_save=0
	# Zeroing and odd-sized writes too; both sides must read the same.
	run_cdisk 0 qemu-io -f raw -c "write -z 10M 1M" -c "write -P 3 12345 999" -c flush "$NBD"
	wait_state in-sync
	stop_serve
	run_cdisk 0 cmp p.raw "$MIRROR_IMG"
	run_cdisk 0 qemu-io -f raw -r -c "read -P 0 10M 1M" -c "read -P 3 12345 999" p.raw
}

# max_in_flight LOG: the most writes nbdkit's log filter saw under way at once.
max_in_flight() {
	awk '/ Write id=/ && !/\.\.\.Write/ { if (++n > m) m = n }
	     /\.\.\.Write id=.* return=/ { n-- } END { print m + 0 }' "$1"
}

@test "a primary 300 ms away gets as many writes at once as the guest sends, not as many as the server has workers" {
	make_base p.raw 64M
	start_nbdkit_unix "$BATS_TEST_TMPDIR/p.sock" --filter=log --filter=delay \
		file "$BATS_TEST_TMPDIR/p.raw" delay-write=300ms logfile="$BATS_TEST_TMPDIR/writes.log"
	run_cdisk 0 cdisk-create --primary "nbd+unix:///?socket=$BATS_TEST_TMPDIR/p.sock" d.cdisk
	# Four workers: were those waiting on the primary counted, four writes
	# would be under way at once.
	printf '[serve]\nruntime_dir = %s\nworkers = 4\n' "$BATS_TEST_TMPDIR/run" >>"$CDISK_CONFIG"
	start_serve --export d=d.cdisk
	run_cdisk 0 fio --name=w --ioengine=nbd --uri="$NBD" --rw=randwrite --bs=4k \
		--size=64M --iodepth=16 --number_ios=48 --verify=crc32c --verify_fatal=1 \
		--verify_state_save=0
	assert_equal "$(max_in_flight "$BATS_TEST_TMPDIR/writes.log")" 16
	# The extra workers leave once idle; the server goes on serving.
	run_cdisk 0 nbdinfo --size "$NBD"
}

# bytes_read LOG: the bytes nbdkit's log filter saw read.
bytes_read() {
	local n=0 count
	for count in $(sed -n 's/.* Read id=.* count=\(0x[0-9a-f]*\) .*/\1/p' "$1"); do
		n=$((n + count))
	done
	echo "$n"
}

@test "attach reads only what a thin primary holds; where it has holes, the mirror's old data is zeroed" {
	# 64 MiB with 3 MiB of data; the mirror full of another pattern.
	truncate -s 64M p.raw
	patfile p.raw w 8M 2M 3
	patfile p.raw w 40M 1M 4
	start_mirror
	M_PID=$NBDKIT_PID
	start_nbdkit_unix "$BATS_TEST_TMPDIR/p.sock" --filter=log file "$BATS_TEST_TMPDIR/p.raw" \
		logfile="$BATS_TEST_TMPDIR/p.log"
	P_PID=$NBDKIT_PID
	NBDKIT_PID=
	run_cdisk 0 cdisk-create --primary "nbd+unix:///?socket=$BATS_TEST_TMPDIR/p.sock" d.cdisk
	run_cdisk 0 cdisk-mirror attach d.cdisk "$MIRROR"
	run_cdisk 0 cmp p.raw "$MIRROR_IMG"
	# The copy's extents are 4 MiB: three hold data, the last because
	# cdisk-create wrote its last block back (the writability check,
	# which read it first).  A copy that read everything would read 64.
	assert_num "$(bytes_read "$BATS_TEST_TMPDIR/p.log")" -le $(((12 << 20) + 4096))
	assert_num "$(bytes_read "$BATS_TEST_TMPDIR/p.log")" -ge $((3 << 20))
	run_cdisk 0 cdisk-mirror status --json d.cdisk
	assert_equal "$(json_get .state)" in-sync
	# A server without structured replies cannot say: all of it is read.
	run_cdisk 0 cdisk-mirror detach d.cdisk
	kill -9 "$P_PID"
	wait "$P_PID" 2>/dev/null || true
	patfile "$MIRROR_IMG" w 0 64M 99
	start_nbdkit_unix "$BATS_TEST_TMPDIR/p.sock" --no-sr --filter=log \
		file "$BATS_TEST_TMPDIR/p.raw" logfile="$BATS_TEST_TMPDIR/p2.log"
	P_PID=$NBDKIT_PID
	NBDKIT_PID=
	run_cdisk 0 cdisk-mirror attach d.cdisk "$MIRROR"
	run_cdisk 0 cmp p.raw "$MIRROR_IMG"
	assert_num "$(bytes_read "$BATS_TEST_TMPDIR/p2.log")" -ge $((64 << 20))
	stop_two
}

@test "an RBD primary with an iSCSI (tgtd) mirror: fio verifies, kill -9 mid-write loses nothing, the mirror equals the primary" {
	use_server ceph
	# The killed server's exclusive lock on the image lasts until its
	# watch times out (5 s here, tests/servers.sh): the new server's
	# first write waits that long, which the default failover timeout
	# (5 s) would take for a lost primary.
	printf '[mirror]\nfailover_timeout = 20000\n' >>"$CDISK_CONFIG"
	use_server tgt
	export CEPH_CONF
	image=primary-$(printf '%s' "$BATS_TEST_TMPDIR" | md5sum | cut -c1-8)
	run_cdisk target-io "rbd:rbd/$image" create:64M
	tgt_new_lun 64M
	run_cdisk 0 cdisk-create --primary "rbd:rbd/$image" --mirror "$TGT_URI" d.cdisk
	for round in 1 2 3; do
		start_serve --export d=d.cdisk
		wait_state in-sync 120
		# Flushed data of this round, where fio never writes ...
		run_cdisk 0 qemu-io -f raw -c "write -P $round $((16 + round * 8))M 1M" -c flush "$NBD"
		# ... while fio writes and is killed with the server under it.
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
		# What the crash sets out of sync is the activity log's extents.
		assert_num "$(json_get .recovered_bytes)" -gt 0
		assert_num "$(json_get .recovered_bytes)" -le $((5 * 4 << 20))
		wait_state in-sync 120
		for r in $(seq "$round"); do
			run_cdisk 0 qemu-io -f raw -r -c "read -P $r $((16 + r * 8))M 1M" "$NBD"
		done
		stop_serve
	done
	# Then fio with verification through the server, and the two compared.
	start_serve --export d=d.cdisk
	wait_state in-sync 120
	run_cdisk 0 fio --name=w --ioengine=nbd --uri="$NBD" --rw=randwrite --bs=4k \
		--size=64M --io_size=8M --iodepth=16 --verify=crc32c --verify_fatal=1 \
		--verify_state_save=0
	wait_state in-sync 120
	stop_serve
	run_cdisk 0 target-io -d 8 "rbd:rbd/$image" get:"$BATS_TEST_TMPDIR/primary.img"
	run_cdisk 0 target-io -d 8 "$TGT_URI" get:"$BATS_TEST_TMPDIR/mirror-read.img"
	cmp "$BATS_TEST_TMPDIR/primary.img" "$BATS_TEST_TMPDIR/mirror-read.img" ||
		fail "the mirror differs from the primary"
	tgt_delete_lun "$TGT_TID"
}

# start_two DELAY [SIZE]: two nbdkit targets on unix sockets, a primary
# full of pattern 1 and a mirror of pattern 99 that takes DELAY a write (so
# that a copy lasts), both SIZE (default 64M); sets P_PID, M_PID, PRIMARY
# and MIRROR.
start_two() {
	make_base p.raw "${2:-64M}"
	truncate -s "${2:-64M}" "$MIRROR_IMG"
	patfile "$MIRROR_IMG" w 0 "${2:-64M}" 99
	start_nbdkit_unix "$BATS_TEST_TMPDIR/p.sock" file p.raw
	P_PID=$NBDKIT_PID
	start_nbdkit_unix "$BATS_TEST_TMPDIR/m.sock" --filter=delay file "$MIRROR_IMG" \
		delay-write="$1"
	M_PID=$NBDKIT_PID
	NBDKIT_PID=
	PRIMARY="nbd+unix:///?socket=$BATS_TEST_TMPDIR/p.sock"
	MIRROR="nbd+unix:///?socket=$BATS_TEST_TMPDIR/m.sock"
}

stop_two() {
	kill -CONT "$P_PID" "$M_PID" 2>/dev/null || true
	kill -9 "$P_PID" "$M_PID" 2>/dev/null || true
	wait "$P_PID" "$M_PID" 2>/dev/null || true
	P_PID= M_PID=
}

@test "nbdkit primary and mirror: the mirror lost mid-copy, then both lost; nothing acknowledged is lost" {
	quick_timeouts 2 0
	start_two 1000ms
	run_cdisk 0 cdisk-create --primary "$PRIMARY" --mirror "$MIRROR" d.cdisk
	start_serve --export d=d.cdisk
	# The copy has begun (the mirror takes a second a write): lose the mirror.
	run_cdisk 0 qemu-io -f raw -c "write -P 4 40M 1M" -c flush "$NBD"
	freeze "$M_PID"
	run_cdisk 0 qemu-io -f raw -c "write -P 5 41M 1M" -c flush "$NBD"
	wait_state degraded 30
	kill -CONT "$M_PID"
	wait_state in-sync 120
	run_cdisk 0 qemu-io -f raw -r -c "read -P 4 40M 1M" -c "read -P 5 41M 1M" "$NBD"
	# Both lost: the guest's write fails (no side took it for sure), and
	# what was acknowledged before stays, on both sides once they answer.
	freeze "$M_PID"
	freeze "$P_PID"
	run_cdisk '?' qemu-io -f raw -c "write -P 6 42M 64k" "$NBD"
	[[ "$output $stderr" == *"write failed"* ]] || fail "the write did not fail"
	kill -CONT "$P_PID" "$M_PID"
	wait_state in-sync 120
	run_cdisk 0 qemu-io -f raw -r -c "read -P 4 40M 1M" -c "read -P 5 41M 1M" "$NBD"
	stop_serve
	run_cdisk 0 cmp p.raw "$MIRROR_IMG"
	stop_two
}

@test "detach during a copy stops it; the mirror keeps what it had, the disk goes on" {
	start_two 2000ms
	run_cdisk 0 cdisk-create --primary "$PRIMARY" d.cdisk
	start_serve --export d=d.cdisk
	run_cdisk 0 cdisk-mirror attach --no-wait d.cdisk "$MIRROR"
	run_cdisk '?' cdisk-mirror status --json d.cdisk
	assert_equal "$(json_get .state)" copying
	run_cdisk 0 cdisk-mirror detach d.cdisk
	run_cdisk 9 cdisk-mirror status --json d.cdisk
	assert_equal "$(json_get .state)" none
	run_cdisk 0 qemu-io -f raw -c "write -P 8 0 1M" -c flush "$NBD"
	stop_serve
	run_cdisk 0 qemu-io -f raw -r -c "read -P 8 0 1M" p.raw
	stop_two
}

@test "kill -9 during the initial copy, round after round: the copy resumes where it stopped, nothing is lost" {
	start_two 300ms 256M
	run_cdisk 0 cdisk-create --primary "$PRIMARY" --mirror "$MIRROR" d.cdisk
	for round in 1 2 3; do
		start_serve --export d=d.cdisk
		run_cdisk 0 qemu-io -f raw -c "write -P $((round + 10)) $((round * 64))M 64k" \
			-c flush "$NBD"
		# Once some of the copy is recorded, cut it.
		left=$((256 << 20))
		for _ in $(seq 300); do
			left=$(timeout 20 cdisk-mirror status --json d.cdisk | jq -r .out_of_sync_bytes)
			[ "$left" -lt $((256 << 20)) ] && break
			sleep 0.1
		done
		kill -9 "$SERVE_PID"
		wait "$SERVE_PID" 2>/dev/null || true
		SERVE_PID=
		run_cdisk '?' cdisk-mirror status --json d.cdisk
		# What is left is what was left, plus at most the activity log.
		assert_num "$(json_get .out_of_sync_bytes)" -le $((left + (5 * 4 << 20)))
	done
	start_serve --export d=d.cdisk
	wait_state in-sync 120
	for round in 1 2 3; do
		run_cdisk 0 qemu-io -f raw -r -c "read -P $((round + 10)) $((round * 64))M 64k" "$NBD"
	done
	stop_serve
	run_cdisk 0 cmp p.raw "$MIRROR_IMG"
	stop_two
}

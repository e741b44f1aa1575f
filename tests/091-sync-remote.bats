#!/usr/bin/env bats
# cdisk-sync to every remote kind: afterwards the base, read through its
# own server, equals what the disk shows, byte for byte.

bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
}

teardown() {
	stop_serve
	stop_proxy
	[ -z "${TGT_TID:-}" ] || tgt_delete_lun "$TGT_TID"
	stop_nbdkit
	remove_rbd_images
}

# scatter_ops FROM TO STEP SEED: cdisk-io writes of 4 KiB every STEP bytes
# in [FROM, TO), each with its own pattern.  One awk, not a shell loop:
# bats runs its debug trap for every shell command of a test, and a loop
# of 2048 writes cost 2 s of it.
scatter_ops() {
	awk -v from="$1" -v to="$2" -v step="$3" -v seed="$4" \
		'BEGIN { for (off = from; off < to; off += step) printf "w:%d:4096:%d\n", off, seed++ }'
}

# check_clean_and_compare DISK BASE-URI: every block recorded clean is on
# the base, and the base equals what the disk shows (assert_base_equals_disk),
# the check and the dump in one cdisk-io.
check_clean_and_compare() {
	run_cdisk cdisk-io "$1" check-clean dump:"$BATS_TEST_TMPDIR/disk.img"
	run_cdisk target-io -d 8 "$2" get:"$BATS_TEST_TMPDIR/base.img"
	cmp "$BATS_TEST_TMPDIR/disk.img" "$BATS_TEST_TMPDIR/base.img" ||
		fail "the base differs from the disk"
}

sync_and_compare() {   # BASE-URI
	run_cdisk cdisk-create --base "$1" d.cdisk
	# Runs, zeroes, and scattered 4 KiB blocks (many in one window)
	run_cdisk cdisk-io d.cdisk w:0:4K:2 w:1M:1M:3 w:5M:4K:4 w:7M:12K:5 z:9M:1M \
		w:12M:4M:6 w:16380K:4K:7 $(scatter_ops $((2 << 20)) $((3 << 20)) 12288 20) f
	run_cdisk cdisk-sync --json --verify d.cdisk
	assert_equal "$(json_get .left_bytes)" 0
	assert_num "$(json_get .verified_bytes)" -gt 0
	check_clean_and_compare d.cdisk "$1"
}

@test "sync to iSCSI (tgtd)" {
	use_server tgt
	tgt_new_lun 16M
	patfile "$BATS_TEST_TMPDIR/lun$TGT_TID.img" w 0 16M 1
	sync_and_compare "$TGT_URI"
}

@test "sync to iSCSI: 4 groups under way unless --depth says; a bad --depth is refused" {
	use_server tgt
	tgt_new_lun 16M
	run_cdisk cdisk-create --base "$TGT_URI" d.cdisk
	run_cdisk cdisk-io d.cdisk w:0:1M:3 f
	run_cdisk cdisk-sync -v -v d.cdisk
	assert_regex "$stderr" "1048576 bytes to send, 4 requests under way"
	run_cdisk cdisk-io d.cdisk w:0:1M:4 f
	run_cdisk cdisk-sync -v -v --depth 9 d.cdisk
	assert_regex "$stderr" "1048576 bytes to send, 9 requests under way"
	for bad in 257 -1; do
		run_cdisk 2 cdisk-sync --depth "$bad" d.cdisk
		assert_usage_error cdisk-sync "--depth must be from 1 to 256"
	done
}

@test "sync to Ceph RBD" {
	local image
	new_rbd_image sync 16M
	run_cdisk target-io -w "rbd:rbd/$image" w:0:16M:1
	sync_and_compare "rbd:rbd/$image"
}

@test "sync to NBD (nbdkit)" {
	make_base base.raw 16M
	start_nbdkit_unix "$BATS_TEST_TMPDIR/n.sock" file base.raw
	sync_and_compare "nbd+unix:///?socket=$BATS_TEST_TMPDIR/n.sock"
	# and qemu-img agrees
	run_cdisk qemu-img compare -f raw -F raw "$BATS_TEST_TMPDIR/disk.img" base.raw
}

@test "sync to NBD: thousands of scattered blocks in flight, every one sent" {
	local round
	make_base base.raw 16M
	start_nbdkit_unix "$BATS_TEST_TMPDIR/n.sock" file base.raw
	# Every other block: 512 in each 4 MiB window, 64 in flight at once;
	# a fast server answers a window's first ones before the rest go.
	for round in 1 2 3; do
		local ops
		ops=($(scatter_ops $((round % 2 * 4096)) $((16 << 20)) 8192 $((round * 5000))))
		rm -f d.cdisk
		run_cdisk cdisk-create --base "nbd+unix:///?socket=$BATS_TEST_TMPDIR/n.sock" d.cdisk
		run_cdisk cdisk-io d.cdisk "${ops[@]}" f
		run_cdisk cdisk-sync --json d.cdisk
		assert_equal "$(json_get .requests)" "${#ops[@]}"
		run_cdisk cdisk-io d.cdisk dump:disk.img
		cmp disk.img base.raw || fail "round $round: the base differs from the disk"
	done
}

@test "sync to S3 (radosgw): whole chunks, zero chunks deleted" {
	s3_env
	run_cdisk target-io "s3://$BUCKET/synced" create:16M
	run_cdisk target-io -w -d 4 "s3://$BUCKET/synced" w:0:16M:1
	sync_and_compare "s3://$BUCKET/synced"
}

# kill_sync_rounds BASE-URI: six rounds of new scattered blocks and a
# 1 MiB run, each with a sync killed with -9 at a random moment; after
# every kill nothing is recorded clean that the base lacks.  Then a sync
# to the end, and the base equals the disk.  The check after a kill and
# the next round's writes are one cdisk-io, the check first.
kill_sync_rounds() {
	local uri=$1 round pid rc killed=0 check=()
	run_cdisk cdisk-create --base "$uri" d.cdisk
	for round in 1 2 3 4 5 6; do
		run_cdisk cdisk-io d.cdisk "${check[@]}" w:$(((round * 5 % 28) << 20)):1M:$round \
			$(scatter_ops $((round * 4096)) $((32 << 20)) 16384 $((round * 10000))) f
		cdisk-sync --rate 8M d.cdisk 3>&- 2>/dev/null &
		pid=$!
		sleep "0.$((RANDOM % 10))$((RANDOM % 10))"
		kill -9 "$pid" 2>/dev/null || true
		rc=0
		wait "$pid" 2>/dev/null || rc=$?
		[ "$rc" != 137 ] || killed=$((killed + 1))
		check=(check-clean)
	done
	run_cdisk cdisk-io d.cdisk check-clean
	# 9 MiB a round at 8 MiB/s: most syncs die on the way.
	[ "$killed" -ge 3 ] || fail "only $killed of 6 syncs were killed on the way"
	run_cdisk cdisk-sync --json d.cdisk
	assert_equal "$(json_get .clean)" true
	assert_base_equals_disk d.cdisk "$uri"
}

# served_sync_and_compare BASE-URI: a served disk synced while fio writes
# to it, synced until clean, then the base equals the disk.
served_sync_and_compare() {
	run_cdisk cdisk-create --base "$1" d.cdisk
	sync_served_while_fio_writes 64M
	check_clean_and_compare d.cdisk "$1"
}

@test "sync to iSCSI: kill -9 at random moments, six times: nothing wrongly clean" {
	use_server tgt
	tgt_new_lun 32M
	kill_sync_rounds "$TGT_URI"
}

@test "sync to NBD: kill -9 at random moments, six times: nothing wrongly clean" {
	make_base base.raw 32M
	start_nbdkit_unix "$BATS_TEST_TMPDIR/n.sock" file base.raw
	kill_sync_rounds "nbd+unix:///?socket=$BATS_TEST_TMPDIR/n.sock"
}

@test "sync to S3: kill -9 at random moments, six times: nothing wrongly clean" {
	s3_env
	run_cdisk target-io "s3://$BUCKET/killed" create:32M
	kill_sync_rounds "s3://$BUCKET/killed"
}

@test "sync to iSCSI of a served disk while fio writes to it" {
	use_server tgt
	tgt_new_lun 64M
	served_sync_and_compare "$TGT_URI"
}

@test "sync to NBD of a served disk while fio writes to it" {
	make_base base.raw 64M
	start_nbdkit_unix "$BATS_TEST_TMPDIR/n.sock" file base.raw
	served_sync_and_compare "nbd+unix:///?socket=$BATS_TEST_TMPDIR/n.sock"
}

@test "sync to S3 of a served disk while fio writes to it" {
	s3_env
	run_cdisk target-io "s3://$BUCKET/served" create:64M
	served_sync_and_compare "s3://$BUCKET/served"
}

@test "sync to iSCSI: connections cut with scattered blocks in flight mark nothing wrongly clean" {
	use_server tgt
	tgt_new_lun 64M
	start_proxy "127.0.0.1:$TGT_PORT"
	local uri=iscsi://127.0.0.1:$PROXY_PORT/$TGT_IQN/1 rc=0
	run_cdisk cdisk-create --base "$uri" d.cdisk
	run_cdisk cdisk-io d.cdisk $(scatter_ops 0 $((48 << 20)) 12288 5) f
	# 16 MiB of 4 KiB blocks at 4 MB/s: the cut comes in the middle.
	proxy_ctl rate 4000000
	timeout 60 cdisk-sync d.cdisk 2>cut.err 3>&- &
	local pid=$!
	sleep 1.5
	proxy_ctl cut
	wait "$pid" || rc=$?
	cat cut.err
	[ "$rc" != 0 ] || fail "a sync whose connections were cut reported success"
	proxy_ctl rate 0
	run_cdisk cdisk-io d.cdisk check-clean
	run_cdisk cdisk-sync --json d.cdisk
	assert_equal "$(json_get .clean)" true
	assert_base_equals_disk d.cdisk "$TGT_URI"
}

rbd_image_name() {   # PREFIX
	printf '%s%s' "$1" "$(printf '%s' "$BATS_TEST_TMPDIR" | md5sum | cut -c1-10)"
}

# new_rbd_image PREFIX SIZE: an image of this test's own, named in $image;
# teardown removes it, with its snapshots.
new_rbd_image() {
	use_server ceph
	export CEPH_CONF
	image=$(rbd_image_name "$1")
	RBD_IMAGES+=("$image")
	run_cdisk target-io "rbd:rbd/$image" create:"$2"
}

# Newest first, so that a clone goes before its parent's snapshot.
remove_rbd_images() {
	local i img snap
	for ((i = ${#RBD_IMAGES[@]} - 1; i >= 0; i--)); do
		img=rbd/${RBD_IMAGES[i]}
		for snap in $(timeout 30 rbd snap ls --format json "$img" 2>/dev/null |
			      jq -r '.[].name'); do
			timeout 30 rbd snap unprotect "$img@$snap" >/dev/null 2>&1 || true
		done
		timeout 30 rbd snap purge "$img" >/dev/null 2>&1 || true
		timeout 30 rbd rm "$img" >/dev/null 2>&1 || true
	done
}

# assert_rbd_holds IMAGE FILE: librbd reads FILE back from the image, and
# its object map agrees with the OSDs.
assert_rbd_holds() {
	run_cdisk rbd export "rbd/$1" "$BATS_TEST_TMPDIR/export.img"
	cmp "$2" "$BATS_TEST_TMPDIR/export.img" || fail "the image differs from the disk"
	run_cdisk rbd object-map check "rbd/$1"
	[[ "$stderr" != *"object map error"* ]] || fail "the object map is wrong"
}

@test "sync to Ceph RBD: scattered blocks go to the data objects; object map, fast-diff and snapshot agree" {
	local image
	new_rbd_image direct 16M
	# Object 1 exists and is in a snapshot; objects 0, 2 and 3 do not exist.
	run_cdisk target-io -w "rbd:rbd/$image" w:4M:4M:1
	run_cdisk rbd snap create "rbd/$image@before"
	run_cdisk rbd export "rbd/$image@before" before.img
	run_cdisk cdisk-create --base "rbd:rbd/$image" d.cdisk
	run_cdisk cdisk-io d.cdisk $(scatter_ops 0 $((16 << 20)) 12288 3) f
	run_cdisk cdisk-io d.cdisk dump:disk.img
	run_cdisk cdisk-sync -v -v d.cdisk
	[[ "$stderr" == *"scattered writes go to the data objects"* ]] ||
		fail "the scattered writes did not go to the data objects"
	run_cdisk cdisk-io d.cdisk check-clean
	run_cdisk rbd export "rbd/$image" head.img
	cmp disk.img head.img || fail "the image differs from the disk"
	# The snapshot still holds what it held: object 1 was cloned first.
	run_cdisk rbd export "rbd/$image@before" still.img
	cmp before.img still.img || fail "the snapshot changed"
	# The object map and fast-diff (which readers holding the lock trust
	# over the OSDs) know all four objects, changed since the snapshot.
	run_cdisk rbd du --format json "rbd/$image"
	[ "$(jq '.images[] | select(.snapshot == null) | .used_size' <<<"$output")" = 16777216 ] ||
		fail "the object map does not count every object: $output"
	run_cdisk rbd diff --from-snap before --whole-object --format json "rbd/$image"
	[ "$(jq length <<<"$output")" = 4 ] || fail "fast-diff: $output"
	run_cdisk rbd object-map check "rbd/$image"
	[[ "$stderr" != *"object map error"* ]] || fail "the object map is wrong"
}

@test "sync to Ceph RBD: kill -9 among scattered direct writes: nothing wrongly clean, the object map right" {
	local image round pid
	new_rbd_image killed 32M
	run_cdisk cdisk-create --base "rbd:rbd/$image" d.cdisk
	for round in 1 2 3; do
		run_cdisk cdisk-io d.cdisk \
			$(scatter_ops $((round * 4096)) $((32 << 20)) 16384 $((round * 10000))) f
		cdisk-sync --rate 4M d.cdisk 3>&- 2>/dev/null &
		pid=$!
		# The killed sync's lock on the image lasts until its watch
		# times out (5 s on the test cluster); the next one waits.
		sleep "$((round == 1 ? 0 : 5)).$((RANDOM % 9 + 1))"
		kill -9 "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
		run_cdisk cdisk-io d.cdisk check-clean
	done
	CDISK_TIMEOUT=120 run_cdisk cdisk-sync --json d.cdisk
	assert_equal "$(json_get .clean)" true
	run_cdisk cdisk-io d.cdisk dump:disk.img
	assert_rbd_holds "$image" disk.img
}

@test "sync to Ceph RBD of a served disk while fio writes to it: rewritten blocks go again" {
	local image
	new_rbd_image served 64M
	run_cdisk cdisk-create --base "rbd:rbd/$image" d.cdisk
	sync_served_while_fio_writes 64M
	run_cdisk cdisk-io d.cdisk check-clean dump:disk.img
	assert_rbd_holds "$image" disk.img
}

@test "sync to an RBD clone: scattered blocks over the parent's data go through librbd" {
	local image parent child
	new_rbd_image parent 16M
	parent=$image
	child=$(rbd_image_name child)
	run_cdisk target-io -w "rbd:rbd/$parent" w:0:16M:1
	run_cdisk rbd snap create "rbd/$parent@s"
	run_cdisk rbd snap protect "rbd/$parent@s"
	run_cdisk rbd clone "rbd/$parent@s" "rbd/$child"
	RBD_IMAGES+=("$child")
	run_cdisk cdisk-create --base "rbd:rbd/$child" d.cdisk
	run_cdisk cdisk-io d.cdisk $(scatter_ops 0 $((16 << 20)) 12288 3) f
	# What the disk shows now: the parent's data between the new blocks.
	run_cdisk cdisk-io d.cdisk dump:disk.img
	run_cdisk cdisk-sync -v -v d.cdisk
	[[ "$stderr" == *"scattered writes go through librbd"* ]] ||
		fail "a clone's scattered writes did not go through librbd"
	run_cdisk rbd export "rbd/$child" child.img
	cmp disk.img child.img || fail "the clone lost its parent's data"
}

#!/usr/bin/env bats
# cdisk-sync to every remote kind: afterwards the base, read through its
# own server, equals what the disk shows, byte for byte.

bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
}

teardown() {
	[ -z "${TGT_TID:-}" ] || tgt_delete_lun "$TGT_TID"
	stop_nbdkit
}

sync_and_compare() {   # BASE-URI
	run_cdisk cdisk-create --base "$1" d.cdisk
	run_cdisk cdisk-io d.cdisk w:0:4K:2 w:1M:1M:3 w:5M:4K:4 w:7M:12K:5 z:9M:1M \
		w:12M:4M:6 w:16380K:4K:7 f
	run_cdisk cdisk-sync --json --verify d.cdisk
	[ "$(json_get .left_bytes)" = 0 ]
	[ "$(json_get .verified_bytes)" -gt 0 ]
	run_cdisk cdisk-io d.cdisk check-clean dump:"$BATS_TEST_TMPDIR/disk.img"
	run_cdisk target-io -d 8 "$1" get:"$BATS_TEST_TMPDIR/base.img"
	cmp "$BATS_TEST_TMPDIR/disk.img" "$BATS_TEST_TMPDIR/base.img" ||
		fail "the base differs from the disk"
}

@test "sync to iSCSI (tgtd)" {
	use_server tgt
	tgt_new_lun 16M
	patfile "$BATS_TEST_TMPDIR/lun$TGT_TID.img" w 0 16M 1
	sync_and_compare "$TGT_URI"
}

@test "sync to Ceph RBD" {
	use_server ceph
	export CEPH_CONF
	local image=sync$(printf '%s' "$BATS_TEST_TMPDIR" | md5sum | cut -c1-10)
	run_cdisk target-io "rbd:rbd/$image" create:16M
	run_cdisk target-io -w "rbd:rbd/$image" w:0:16M:1
	sync_and_compare "rbd:rbd/$image"
	timeout 30 rbd rm "rbd/$image" >/dev/null 2>&1 || true
}

@test "sync to NBD (nbdkit)" {
	make_base base.raw 16M
	start_nbdkit_unix "$BATS_TEST_TMPDIR/n.sock" file base.raw
	sync_and_compare "nbd+unix:///?socket=$BATS_TEST_TMPDIR/n.sock"
	# and qemu-img agrees
	run_cdisk qemu-img compare -f raw -F raw "$BATS_TEST_TMPDIR/disk.img" base.raw
}

@test "sync to S3 (radosgw): whole chunks, zero chunks deleted" {
	s3_env
	run_cdisk target-io "s3://$BUCKET/synced" create:16M
	run_cdisk target-io -w -d 4 "s3://$BUCKET/synced" w:0:16M:1
	sync_and_compare "s3://$BUCKET/synced"
}

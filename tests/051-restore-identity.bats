#!/usr/bin/env bats
# A metadata restore must prove that the backup belongs to the disk: once
# both superblocks are gone, only the file's own contents can (the UUID in
# journal records and checkpoint directories, the file's size).  Also: the
# index that finds a disk's own backup path, the unconfirmed state and its
# confirm step, the refused --mirror, and explicit backup paths.
bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
}

uuid_of() {
	cdisk-info --json "$1" | jq -r .uuid
}

# Zero both superblocks: what an administrator's slip or a bad sector does.
zero_superblocks() {
	dd if=/dev/zero of="$1" bs=4096 count=2 conv=notrunc status=none
}

# Zero everything before the data area (superblocks, journal, checkpoints)
# of a disk of SIZE bytes: nothing left names the disk.
zero_all_metadata() { # FILE SIZE
	local data_offset=$(($(stat -c %s "$1") - $2))
	dd if=/dev/zero of="$1" bs=4096 count=$((data_offset / 4096)) conv=notrunc \
		status=none
}

@test "another disk's backup is refused once both superblocks are gone, even with --force" {
	make_base a-base.img 64M
	make_base b-base.img 64M
	run_cdisk 0 cdisk-create --base a-base.img a.cdisk
	run_cdisk 0 cdisk-create --base b-base.img b.cdisk
	run_cdisk 0 cdisk-io a.cdisk w:0:64M:7 f
	a_backup="meta/$(uuid_of a.cdisk).meta"
	b_uuid=$(uuid_of b.cdisk)
	zero_superblocks b.cdisk
	b_before=$(sha b.cdisk)
	a_backup_before=$(sha "$a_backup")

	run_cdisk 7 cdisk-restore --metadata --from "$a_backup" b.cdisk
	assert_error cdisk-restore "metadata backup '$a_backup' belongs to another disk than 'b.cdisk': its journal or checkpoints were written by another disk"
	run_cdisk 7 cdisk-restore --metadata --force --from "$a_backup" b.cdisk
	assert_error cdisk-restore "belongs to another disk than 'b.cdisk'"

	# Nothing was written: not the disk, not the other disk's backup.
	assert_equal "$(sha b.cdisk)" "$b_before"
	assert_equal "$(sha "$a_backup")" "$a_backup_before"
	# The next open finds b's own backup by proof, and a sync leaves both
	# bases as they were.
	run_cdisk 0 cdisk-sync b.cdisk
	assert_equal "$(grep -c "metadata rebuilt from backup '$BATS_TEST_TMPDIR/meta/$b_uuid.meta'" <<<"$stderr")" 1
	assert_equal "$(uuid_of b.cdisk)" "$b_uuid"
	assert_equal "$(sha "$a_backup")" "$a_backup_before"
	run_cdisk 0 patfile a-base.img r 0 64M 1
	run_cdisk 0 patfile b-base.img r 0 64M 1
}

@test "a disk of another size is refused by the size of its data area" {
	run_cdisk 0 cdisk-create --size 32M a.cdisk
	run_cdisk 0 cdisk-create --size 64M b.cdisk
	zero_all_metadata b.cdisk $((64 << 20))
	run_cdisk 7 cdisk-restore --metadata --force --from "meta/$(uuid_of a.cdisk).meta" b.cdisk
	assert_error cdisk-restore "belongs to another disk than 'b.cdisk': the file holds [0-9]+ bytes, a disk of 33554432 bytes \(block 4096\) would hold [0-9]+"
}

@test "its own backup is proven by the checkpoint and restored without --force" {
	make_base base.img 64M
	run_cdisk 0 cdisk-create --base base.img d.cdisk
	run_cdisk 0 cdisk-io d.cdisk w:1M:64K:3 f
	backup="meta/$(uuid_of d.cdisk).meta"
	zero_superblocks d.cdisk
	run_cdisk 0 cdisk-restore --metadata --from "$backup" d.cdisk
	assert_output --partial "metadata rebuilt from '$backup'"
	refute_output --partial "unconfirmed"
	run_cdisk 0 cdisk-io d.cdisk r:1M:64K:3
	run_cdisk 0 cdisk-sync d.cdisk
}

@test "its own backup is proven by journal records alone" {
	make_base base.img 64M
	run_cdisk 0 cdisk-create --base base.img d.cdisk
	backup="meta/$(uuid_of d.cdisk).meta"
	# Records after the last checkpoint; then the checkpoints are lost too.
	hold_disk d.cdisk w:2M:64K:5 f
	kill_holder
	size=$(stat -c %s d.cdisk)
	data_offset=$((size - (64 << 20)))
	journal_end=$((8192 + (8 << 20)))
	zero_superblocks d.cdisk
	dd if=/dev/zero of=d.cdisk bs=4096 seek=$((journal_end / 4096)) \
		count=$(((data_offset - journal_end) / 4096)) conv=notrunc status=none
	run_cdisk 0 cdisk-restore --metadata --from "$backup" d.cdisk
	refute_output --partial "unconfirmed"
	run_cdisk 0 cdisk-io d.cdisk r:2M:64K:5
}

@test "nothing left to prove it: refused, then --force restores an unconfirmed disk that will not sync until --confirm" {
	make_base base.img 64M
	run_cdisk 0 cdisk-create --base base.img d.cdisk
	run_cdisk 0 cdisk-io d.cdisk w:0:128K:9 f
	backup="meta/$(uuid_of d.cdisk).meta"
	zero_all_metadata d.cdisk $((64 << 20))

	run_cdisk 7 cdisk-restore --metadata d.cdisk
	assert_error cdisk-restore "metadata backup '.*$backup' recorded the path of 'd.cdisk', but nothing left in the file proves it: if it is its own, restore it with cdisk-restore --metadata --force"
	run_cdisk 7 cdisk-restore --metadata --from "$backup" d.cdisk
	assert_error cdisk-restore "cannot be proven to be the one of 'd.cdisk': nothing left in the file \(journal, checkpoints\) names the disk it belongs to; if it is, use --force"

	backup_before=$(sha "$backup")
	run_cdisk 0 cdisk-restore --metadata --json --force d.cdisk
	assert_equal "$(json_get .unconfirmed)" true
	# Forced again over the now sound disk: it stays unconfirmed.
	run_cdisk 0 cdisk-restore --metadata --force d.cdisk
	assert_output --partial "'d.cdisk' is unconfirmed"
	# The restores wrote no backup over the one they came from.
	assert_equal "$(sha "$backup")" "$backup_before"

	run_cdisk 0 cdisk-info --json d.cdisk
	assert_equal "$(json_get .unconfirmed)" true
	run_cdisk 0 cdisk-info d.cdisk
	assert_output --partial "identity:        unconfirmed"
	base_before=$(sha base.img)
	run_cdisk 7 cdisk-sync d.cdisk
	assert_error cdisk-sync "will not sync 'd.cdisk': its metadata was restored from a backup nothing proved its own, so its base '.*base.img' may be another disk's; check it, then run 'cdisk-restore --confirm d.cdisk'"
	run_cdisk 7 cdisk-sync --pull d.cdisk
	assert_equal "$(sha base.img)" "$base_before"
	# The data came back all the same.
	run_cdisk 0 cdisk-io d.cdisk r:0:128K:9

	run_cdisk 2 cdisk-restore --confirm --force d.cdisk
	run_cdisk 0 cdisk-restore --confirm d.cdisk
	assert_output "'d.cdisk': confirmed; it syncs to its base again"
	run_cdisk 0 cdisk-restore --confirm d.cdisk
	assert_output "'d.cdisk' is not unconfirmed; nothing changed"
	run_cdisk 0 cdisk-info --json d.cdisk
	assert_equal "$(json_get .unconfirmed)" false
	run_cdisk 0 cdisk-sync d.cdisk
	run_cdisk 0 patfile base.img r 0 128K 9
	# A backup is written again once confirmed.
	[ "$(sha "$backup")" != "$backup_before" ] || fail "no backup after --confirm"
}

@test "a custom --meta-backup path is found through the backup folder's index" {
	run_cdisk 0 cdisk-create --size 16M --meta-backup elsewhere/d.meta d.cdisk
	run_cdisk 0 cdisk-io d.cdisk w:0:64K:4 f
	run grep -c "elsewhere/d.meta" meta/index
	assert_output 1
	zero_superblocks d.cdisk
	run_cdisk 0 cdisk-restore --metadata d.cdisk
	assert_output --partial "metadata rebuilt from '$BATS_TEST_TMPDIR/elsewhere/d.meta'"
	run_cdisk 0 cdisk-io d.cdisk r:0:64K:4
}

@test "a disk that was moved is still found, by proof, not by its path" {
	run_cdisk 0 cdisk-create --size 16M d.cdisk
	run_cdisk 0 cdisk-create --size 16M other.cdisk
	run_cdisk 0 cdisk-io d.cdisk w:0:64K:6 f
	mv d.cdisk moved.cdisk
	zero_superblocks moved.cdisk
	run_cdisk 0 cdisk-restore --metadata moved.cdisk
	assert_output --partial "metadata rebuilt from '$BATS_TEST_TMPDIR/meta/"
	run_cdisk 0 cdisk-io moved.cdisk r:0:64K:6
	run_cdisk 0 cdisk-info --json moved.cdisk
	run_cdisk 0 cdisk-info --json other.cdisk
	[ "$(uuid_of moved.cdisk)" != "$(uuid_of other.cdisk)" ] || fail "took the other disk's UUID"
}

@test "no backup at all: says where it looked and names --from" {
	run_cdisk 0 cdisk-create --size 16M d.cdisk
	rm -rf meta
	zero_superblocks d.cdisk
	run_cdisk 6 cdisk-restore --metadata d.cdisk
	assert_error cdisk-restore "no metadata backup of 'd.cdisk' was found in '$BATS_TEST_TMPDIR/meta' \(its index and \*.meta files\): name one with --from"
}

@test "--mirror is checked and kept at creation, and one recorded by an earlier version is shown as not active" {
	truncate -s 8M m.img
	run_cdisk 2 cdisk-create --size 16M --mirror "$BATS_TEST_TMPDIR/m.img" d.cdisk
	assert_error cdisk-create "cannot create 'd.cdisk': mirror '.*/m.img' holds 8 MiB, less than the disk's 16 MiB"
	[ ! -e d.cdisk ] || fail "d.cdisk was created"
	truncate -s 16M m.img
	run_cdisk 0 cdisk-create --size 16M --mirror "$BATS_TEST_TMPDIR/m.img" d.cdisk
	run_cdisk 0 cdisk-info d.cdisk
	assert_output --partial "mirror:          $BATS_TEST_TMPDIR/m.img (active)"
	rm d.cdisk
	# A disk made by an earlier version that recorded one.
	run_cdisk 0 cdisk-create --size 16M d.cdisk
	for slot in 0 1; do
		printf 'file:///srv/m.img' | dd of=d.cdisk bs=1 seek=$((slot * 4096 + 1536)) \
			conv=notrunc status=none
		run_cdisk 0 sbpatch d.cdisk "$slot" 80 4 0
	done
	run_cdisk 0 cdisk-info d.cdisk
	assert_output --partial "mirror:          file:///srv/m.img (recorded, not active)"
	run_cdisk 0 cdisk-info --json d.cdisk
	assert_equal "$(json_get .mirror_active)" false
}

@test "an explicit backup path that cannot be written is an error; info shows the path in use and its age" {
	mkdir adir
	run_cdisk 2 cdisk-create --size 16M --meta-backup adir d.cdisk
	assert_error cdisk-create "metadata backup path '.*/adir' is not a regular file"
	run_cdisk 6 cdisk-create --size 16M --meta-backup /proc/d.meta d.cdisk
	assert_error cdisk-create "metadata backup path '/proc/d.meta' cannot be written"
	[ ! -e d.cdisk ] || fail "d.cdisk was created"
	run_cdisk 0 cdisk-create --size 16M d.cdisk
	run_cdisk 0 cdisk-info d.cdisk
	assert_output --regexp "metadata backup: $BATS_TEST_TMPDIR/meta/$(uuid_of d.cdisk).meta \(written [0-9]+ s ago\)"
	run_cdisk 0 cdisk-info --json d.cdisk
	assert_equal "$(json_get .metadata_backup.path)" "$BATS_TEST_TMPDIR/meta/$(uuid_of d.cdisk).meta"
}

#!/usr/bin/env bats
# cdisk-info and cdisk-info --check: what they report on sound disks, on
# disks in use, and on every kind of damage.
bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
	# The disk's own redundancy alone: backups are 050's subject.
	printf '[metadata]\nbackup_dir = none\n' >"$CDISK_CONFIG"
}

teardown() {
	kill_holder
}

# Byte offsets from cdisk(5).
SB_B=4096
JOURNAL=8192

damage() { # damage FILE OFFSET COUNT: overwrite with 0xAA bytes
	printf '%*s' "$3" '' | tr ' ' '\252' |
		dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

@test "info shows configuration, sizes and state" {
	make_base base.img 16M
	run_cdisk 0 cdisk-create --base base.img d.cdisk
	run_cdisk 0 cdisk-io d.cdisk w:0:8K:7 f
	run_cdisk 0 cdisk-info d.cdisk
	assert_line --regexp "^size: +16 MiB \(16777216 bytes\)$"
	assert_line --regexp "^blocks: +4096 \(2 present, 2 dirty\)$"
	assert_line --regexp "^base: +$BATS_TEST_TMPDIR/base.img \(16 MiB, reachable\)$"
	assert_line --regexp "^mirror: +none$"
	assert_line --regexp "^superblocks: +A good, B good"
	assert_line --regexp "^last close: +clean$"
	assert_equal "$stderr" ""
}

@test "info --json is one complete document with a schema version" {
	run_cdisk 0 cdisk-create --size 4M d.cdisk
	run_cdisk 0 cdisk-io d.cdisk w:4K:4K:3 z:1M:8K f
	run_cdisk 0 cdisk-info --json d.cdisk
	assert_equal "$(json_get .schema_version)" 1
	assert_equal "$(json_get .blocks_present)" 3
	assert_equal "$(json_get .blocks_dirty)" 3
	assert_equal "$(json_get .superblocks.a_valid)" true
	assert_equal "$(json_get .closed_cleanly)" true
	assert_equal "$(json_get .uuid | wc -c)" 37
}

@test "a base that has gone is reported, and the disk still opens" {
	make_base base.img 4M
	run_cdisk 0 cdisk-create --base base.img d.cdisk
	run_cdisk 0 cdisk-io d.cdisk w:0:4K:5 f
	rm base.img
	run_cdisk 0 cdisk-info --json d.cdisk
	assert_equal "$(json_get .base.reachable)" false
	assert_regex "$(json_get .base.error)" 'No such file or directory'
	# Data the overlay holds reads without the base.
	run_cdisk 0 cdisk-io d.cdisk r:0:4K:5
	run_cdisk 6 cdisk-io d.cdisk r:4K:4K:1
}

@test "a disk in use by another process is busy, naming the pid" {
	run_cdisk 0 cdisk-create --size 4M d.cdisk
	hold_disk d.cdisk w:0:4K:1
	run_cdisk 4 cdisk-info d.cdisk
	assert_error cdisk-info "'d.cdisk' is busy: in use by pid $HOLD_PID$"
	run_cdisk 4 cdisk-io d.cdisk f
	kill_holder
	run_cdisk 0 cdisk-info d.cdisk
}

@test "files that are not cdisks are refused as such" {
	head -c 100000 /dev/urandom >random.bin
	run_cdisk 7 cdisk-info random.bin
	assert_error cdisk-info "'random.bin' is not a cdisk \(bad magic\)"
	: >empty
	run_cdisk 7 cdisk-info empty
	assert_error cdisk-info "'empty' is not a cdisk \(too short\)"
	mkdir dir
	run_cdisk 7 cdisk-info dir
	assert_error cdisk-info "'dir' is not a cdisk \(not a regular file\)"
	run_cdisk 6 cdisk-info missing.cdisk
	assert_error cdisk-info "cannot open 'missing.cdisk': No such file or directory"
}

@test "a truncated disk is corrupt metadata" {
	run_cdisk 0 cdisk-create --size 4M d.cdisk
	cp d.cdisk e.cdisk
	truncate -s 6000 d.cdisk
	run_cdisk 7 cdisk-info d.cdisk
	assert_error cdisk-info "'d.cdisk' is damaged: file is truncated \(6000 bytes, metadata needs [0-9]+\)"
	truncate -s 3000 d.cdisk
	run_cdisk 7 cdisk-info d.cdisk
	assert_error cdisk-info "'d.cdisk' is damaged: both superblocks fail their checks \(A: file is truncated; B: file is truncated\)"
	truncate -s 1M e.cdisk
	run_cdisk 7 cdisk-info e.cdisk
	assert_error cdisk-info "'e.cdisk' is damaged: file is truncated \(1048576 bytes, metadata needs [0-9]+\)"
}

@test "one damaged superblock: the disk opens, reports it, and --check repairs it" {
	run_cdisk 0 cdisk-create --size 4M d.cdisk
	run_cdisk 0 cdisk-io d.cdisk w:0:4K:9 f
	damage d.cdisk $((SB_B + 100)) 16
	run_cdisk 0 cdisk-info d.cdisk
	assert_line --regexp "^superblocks: +A good, B damaged"
	run_cdisk 7 cdisk-info -q --check --no-repair d.cdisk
	assert_output --partial "superblock B is damaged; copy A is intact"
	assert_error cdisk-info "'d.cdisk' has 1 problem \(not repaired: --no-repair\)"
	run_cdisk 0 cdisk-info --check d.cdisk
	assert_output --partial "superblock B was damaged: rewritten from copy A"
	run_cdisk 0 cdisk-info --json d.cdisk
	assert_equal "$(json_get .superblocks.b_valid)" true
	run_cdisk 0 cdisk-io d.cdisk r:0:4K:9
	# The other copy, now: damage A.
	damage d.cdisk 200 8
	run_cdisk 0 cdisk-io d.cdisk r:0:4K:9
}

@test "both superblocks damaged: corrupt metadata, and the file is untouched" {
	run_cdisk 0 cdisk-create --size 4M d.cdisk
	damage d.cdisk 300 4
	damage d.cdisk $((SB_B + 300)) 4
	before=$(sha d.cdisk)
	run_cdisk 7 cdisk-info d.cdisk
	assert_error cdisk-info "'d.cdisk' is damaged: both superblocks fail their checks \(A: checksum mismatch; B: checksum mismatch\)"
	run_cdisk 7 cdisk-info --check d.cdisk
	run_cdisk 7 cdisk-io d.cdisk f
	assert_equal "$(sha d.cdisk)" "$before"
}

@test "a damaged journal record with later records is corrupt metadata" {
	run_cdisk 0 cdisk-create --size 4M d.cdisk
	hold_disk d.cdisk w:0:4K:1 f w:8K:4K:2 f
	kill_holder
	damage d.cdisk $((JOURNAL + 60)) 4
	before=$(sha d.cdisk)
	run_cdisk 7 cdisk-info d.cdisk
	assert_error cdisk-info "'d.cdisk' is damaged: journal record 1 fails its checksum and 1 later records cannot be replayed"
	assert_equal "$(sha d.cdisk)" "$before"
}

@test "a torn last journal record is a normal crash, not damage" {
	run_cdisk 0 cdisk-create --size 4M d.cdisk
	hold_disk d.cdisk w:0:4K:1 f w:8K:4K:2 f
	kill_holder
	damage d.cdisk $((JOURNAL + 4096 + 60)) 4
	run_cdisk 0 cdisk-info --check --no-repair d.cdisk
	assert_output --partial "a torn last record ignored"
	run_cdisk 0 cdisk-io d.cdisk r:0:4K:1
}

@test "unknown incompatible features refuse the open" {
	run_cdisk 0 cdisk-create --size 4M d.cdisk
	sbpatch d.cdisk 0 32 8 0x100
	sbpatch d.cdisk 1 32 8 0x100
	before=$(sha d.cdisk)
	run_cdisk 7 cdisk-info d.cdisk
	assert_error cdisk-info "cannot open 'd.cdisk': unknown incompatible features 0x100"
	run_cdisk 7 cdisk-io d.cdisk f
	assert_equal "$(sha d.cdisk)" "$before"
}

@test "an unknown feature in the newer superblock alone still refuses" {
	run_cdisk 0 cdisk-create --size 4M d.cdisk
	# Slot B has the higher sequence number after create.
	sbpatch d.cdisk 1 32 8 0x80
	run_cdisk 7 cdisk-info d.cdisk
	assert_error cdisk-info "unknown incompatible features 0x80"
}

@test "unknown read-only-compatible features allow reading only" {
	run_cdisk 0 cdisk-create --size 4M d.cdisk
	sbpatch d.cdisk 0 40 8 0x2
	sbpatch d.cdisk 1 40 8 0x2
	run_cdisk 0 cdisk-info d.cdisk
	run_cdisk 5 cdisk-io d.cdisk w:0:4K:1
	assert_error cdisk-io "cannot open 'd.cdisk' for writing: unknown read-only-compatible features 0x2"
}

@test "unknown compatible features are ignored" {
	run_cdisk 0 cdisk-create --size 4M d.cdisk
	sbpatch d.cdisk 0 24 8 0x8
	sbpatch d.cdisk 1 24 8 0x8
	run_cdisk 0 cdisk-io d.cdisk w:0:4K:1 f r:0:4K:1
}

@test "a newer format version is refused" {
	run_cdisk 0 cdisk-create --size 4M d.cdisk
	sbpatch d.cdisk 0 8 4 2
	sbpatch d.cdisk 1 8 4 2
	run_cdisk 7 cdisk-info d.cdisk
	assert_error cdisk-info "cannot open 'd.cdisk': format version 2 is not supported \(this cdisk reads version 1\)"
}

@test "layout fields that contradict the size are damage, even with a good checksum" {
	run_cdisk 0 cdisk-create --size 4M d.cdisk
	sbpatch d.cdisk 0 128 8 4096
	sbpatch d.cdisk 1 128 8 4096
	run_cdisk 7 cdisk-info d.cdisk
	assert_error cdisk-info "layout fields do not match the size and block size"
}

@test "a damaged checkpoint is corrupt metadata" {
	run_cdisk 0 cdisk-create --size 4M d.cdisk
	run_cdisk 0 cdisk-io d.cdisk w:0:4K:1 f
	damage d.cdisk "$(live_checkpoint d.cdisk)" 4
	run_cdisk 7 cdisk-info d.cdisk
	assert_error cdisk-info "'d.cdisk' is damaged: checkpoint directory checksum mismatch"
}

@test "a killed writer leaves a disk that recovers by itself" {
	make_base base.img 8M
	run_cdisk 0 cdisk-create --base base.img d.cdisk
	hold_disk d.cdisk w:0:64K:3 f w:1M:4K:4 f z:2M:8K f
	kill_holder
	run_cdisk 0 cdisk-info --json d.cdisk
	assert_equal "$(json_get .closed_cleanly)" false
	assert_equal "$(json_get .journal_records_replayed)" 3
	run_cdisk 0 cdisk-io d.cdisk r:0:64K:3 r:1M:4K:4 r:2M:8K:0 r:64K:64K:1
	run_cdisk 0 cdisk-info --json d.cdisk
	assert_equal "$(json_get .closed_cleanly)" true
	assert_equal "$(json_get .blocks_dirty)" 19
}

@test "--check finds unflushed data left by a crash and releases it" {
	run_cdisk 0 cdisk-create --size 8M d.cdisk
	hold_disk d.cdisk w:0:4K:1 f w:1M:64K:2
	kill_holder
	run_cdisk 0 cdisk-info --check --no-repair d.cdisk
	assert_output --partial "16 blocks hold unflushed data from an earlier crash"
	run_cdisk 0 cdisk-info --check d.cdisk
	assert_output --partial "16 blocks held unflushed data from an earlier crash: space released"
	run_cdisk 0 cdisk-info --check --json d.cdisk
	assert_equal "$(json_get .check.errors)" 0
	refute_output --partial "unflushed data"
	run_cdisk 0 cdisk-io d.cdisk r:0:4K:1 r:1M:64K:0
}

@test "--check with repair needs no write access to report" {
	run_cdisk 0 cdisk-create --size 4M d.cdisk
	chmod 0400 d.cdisk
	# Root writes a file of mode 0400 all the same: as root, make it
	# immutable; otherwise run as nobody.
	if [ "$(id -u)" = 0 ]; then
		chattr +i d.cdisk || skip "chattr +i is not supported here"
		run_cdisk '?' cdisk-info --check d.cdisk
		chattr -i d.cdisk
	else
		run_cdisk '?' cdisk-info --check d.cdisk
	fi
	assert_equal "$status" 0
	assert_output --partial "check result:    0 errors"
}

#!/usr/bin/env bats
# Metadata backups: where they go, when they are refreshed, the rebuild of
# damaged metadata from them, and every way a backup can be unusable.
bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
}

teardown() {
	kill_holder
}

damage() { # damage FILE OFFSET COUNT
	printf '%*s' "$3" '' | tr ' ' '\252' |
		dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

uuid_of() {
	cdisk-info --json "$1" | jq -r .uuid
}

@test "a backup is written at create and at every close, named by the UUID" {
	run_cdisk 0 cdisk-create --size 4M d.cdisk
	backup="meta/$(uuid_of d.cdisk).meta"
	assert_exists "$backup"
	assert_equal "$(stat -c %a "$backup")" 600
	before=$(sha "$backup")
	run_cdisk 0 cdisk-io d.cdisk w:0:4K:2 f
	assert_not_equal "$(sha "$backup")" "$before"
	run_cdisk 0 cdisk-info --check d.cdisk
	assert_output --regexp "metadata backup .*$backup: taken [0-9]+ s ago, matches the disk"
}

@test "a disk's own --meta-backup path is used instead of the directory" {
	run_cdisk 0 cdisk-create --size 4M --meta-backup elsewhere/d.meta d.cdisk
	assert_exists elsewhere/d.meta
	# The folder holds only the index that finds it once the superblocks
	# are gone.
	assert_equal "$(ls meta | grep -c '\.meta$')" 0
	assert_equal "$(cut -f2 meta/index)" "$BATS_TEST_TMPDIR/elsewhere/d.meta"
	run_cdisk 0 cdisk-info --check --json d.cdisk
	assert_equal "$(json_get .check.metadata_backup.path)" "$BATS_TEST_TMPDIR/elsewhere/d.meta"
	assert_equal "$(json_get .check.metadata_backup.matches)" true
}

@test "the owner refreshes the backup on flush once the interval has passed" {
	printf '[metadata]\nbackup_dir = %s/meta\nbackup_interval = 1\n' "$BATS_TEST_TMPDIR" >"$CDISK_CONFIG"
	run_cdisk 0 cdisk-create --size 4M d.cdisk
	backup="meta/$(uuid_of d.cdisk).meta"
	before=$(sha "$backup")
	hold_disk d.cdisk w:0:4K:2 f hold:2 w:8K:4K:3 f
	assert_not_equal "$(sha "$backup")" "$before"
}

@test "zeroed superblocks: the next open rebuilds them and says so in one line" {
	make_base base.img 8M
	run_cdisk 0 cdisk-create --base base.img d.cdisk
	run_cdisk 0 cdisk-io d.cdisk w:0:64K:2 f
	dd if=/dev/zero of=d.cdisk bs=4096 count=2 conv=notrunc status=none
	# Reading alone changes nothing and points at the remedy.
	run_cdisk 7 cdisk-info d.cdisk
	assert_error cdisk-info "'d.cdisk' is not a cdisk \(bad magic\); a metadata backup exists: run cdisk-restore --metadata"
	run_cdisk 0 cdisk-io d.cdisk r:0:64K:2 r:64K:1M:1
	assert_error cdisk-io "metadata rebuilt from backup '.*\.meta' \(taken [0-9]+ s before\): 0 journal records replayed, 0 blocks reconciled from the data area, every present block marked for sync"
	run_cdisk 0 cdisk-info --check d.cdisk
	assert_output --partial "superblocks:     A good, B good"
	assert_output --partial "0 errors"
}

@test "cdisk-restore --metadata rebuilds on request, and leaves a sound disk alone" {
	printf '[metadata]\nbackup_dir = %s/meta\nauto_repair = no\n' "$BATS_TEST_TMPDIR" >"$CDISK_CONFIG"
	run_cdisk 0 cdisk-create --size 8M d.cdisk
	run_cdisk 0 cdisk-restore --metadata d.cdisk
	assert_output "'d.cdisk': metadata is sound; nothing restored"
	run_cdisk 0 cdisk-restore --metadata --json d.cdisk
	assert_equal "$(json_get .changed)" false
	run_cdisk 0 cdisk-io d.cdisk w:1M:128K:4 f
	damage d.cdisk "$(live_checkpoint d.cdisk)" 8
	# With auto_repair off, a writer refuses instead of rebuilding.
	run_cdisk 7 cdisk-io d.cdisk r:1M:128K:4
	assert_error cdisk-io "checkpoint directory checksum mismatch"
	run_cdisk 0 cdisk-restore --metadata --json d.cdisk
	assert_equal "$(json_get .changed)" true
	assert_equal "$(json_get .exact)" true
	assert_equal "$(json_get .blocks_marked_dirty)" 0
	run_cdisk 0 cdisk-io d.cdisk r:1M:128K:4
	run_cdisk 0 cdisk-info --json d.cdisk
	assert_equal "$(json_get .blocks_dirty)" 32
}

@test "writes after the backup come back from the journal, zeroes included" {
	make_base base.img 64M
	run_cdisk 0 cdisk-create --base base.img d.cdisk
	run_cdisk 0 cdisk-io d.cdisk w:0:64K:2 f
	# After this close's backup: more writes, a zeroing of blocks the
	# overlay never held, then a crash.
	hold_disk d.cdisk w:1M:64K:3 f z:8M:64K f
	kill_holder
	damage d.cdisk "$(live_checkpoint d.cdisk)" 8
	run_cdisk 0 cdisk-restore --metadata --json d.cdisk
	assert_equal "$(json_get .exact)" true
	assert_equal "$(json_get .records_replayed)" 2
	run_cdisk 0 cdisk-io d.cdisk r:0:64K:2 r:1M:64K:3 r:8M:64K:0 r:16M:64K:1
	run_cdisk 0 cdisk-info --json d.cdisk
	assert_equal "$(json_get .blocks_dirty)" 48
}

@test "with the journal lost too, data written after the backup is found in the data area" {
	run_cdisk 0 cdisk-create --size 64M d.cdisk
	run_cdisk 0 cdisk-io d.cdisk w:0:64K:2 f
	hold_disk d.cdisk w:1M:64K:3 f w:2M:8K:4 f
	kill_holder
	dd if=/dev/zero of=d.cdisk bs=1M count=8 seek=8192 oflag=seek_bytes conv=notrunc status=none
	dd if=/dev/zero of=d.cdisk bs=4096 count=2 conv=notrunc status=none
	run_cdisk 0 cdisk-restore --metadata --json d.cdisk
	assert_equal "$(json_get .exact)" false
	assert_equal "$(json_get .blocks_reconciled)" 18
	run_cdisk 0 cdisk-io d.cdisk r:0:64K:2 r:1M:64K:3 r:2M:8K:4
	run_cdisk 0 cdisk-info --json d.cdisk
	assert_equal "$(json_get .blocks_dirty)" 34
}

@test "a missing backup: one line naming it, corrupt metadata, nothing changed" {
	run_cdisk 0 cdisk-create --size 4M d.cdisk
	backup="$BATS_TEST_TMPDIR/meta/$(uuid_of d.cdisk).meta"
	rm "$backup"
	damage d.cdisk "$(live_checkpoint d.cdisk)" 8
	before=$(sha d.cdisk)
	run_cdisk 7 cdisk-restore --metadata d.cdisk
	assert_error cdisk-restore "'d.cdisk' is damaged: checkpoint directory checksum mismatch; no metadata backup at '$backup'$"
	run_cdisk 7 cdisk-io d.cdisk f
	assert_equal "$(sha d.cdisk)" "$before"
	assert_not_exists "$backup"
}

@test "a truncated or damaged backup: refused, and neither file changes" {
	run_cdisk 0 cdisk-create --size 4M d.cdisk
	run_cdisk 0 cdisk-io d.cdisk w:0:8K:2 f
	backup="meta/$(uuid_of d.cdisk).meta"
	cp "$backup" good.meta
	damage d.cdisk "$(live_checkpoint d.cdisk)" 8
	before=$(sha d.cdisk)
	truncate -s 6000 "$backup"
	run_cdisk 7 cdisk-restore --metadata d.cdisk
	assert_error cdisk-restore "metadata backup '.*' is damaged: file is truncated"
	cp good.meta "$backup"
	damage "$backup" $((3 * 4096 + 10)) 2
	b_before=$(sha "$backup")
	run_cdisk 7 cdisk-restore --metadata d.cdisk
	assert_error cdisk-restore "metadata backup '.*' is damaged: bitmap checksum mismatch"
	cp good.meta "$backup"
	damage "$backup" 100 2
	run_cdisk 7 cdisk-restore --metadata d.cdisk
	assert_error cdisk-restore "metadata backup '.*' is damaged: header checksum mismatch"
	assert_equal "$(sha d.cdisk)" "$before"
	cp good.meta "$backup"
	run_cdisk 0 cdisk-restore --metadata d.cdisk
	run_cdisk 0 cdisk-io d.cdisk r:0:8K:2
}

@test "a backup of another disk is refused" {
	run_cdisk 0 cdisk-create --size 4M d.cdisk
	run_cdisk 0 cdisk-create --size 4M other.cdisk
	damage d.cdisk "$(live_checkpoint d.cdisk)" 8
	run_cdisk 7 cdisk-restore --metadata --from "meta/$(uuid_of other.cdisk).meta" d.cdisk
	assert_error cdisk-restore "metadata backup '.*' belongs to another disk \(UUID differs\)"
}

@test "an older backup is exact while the journal still holds what came after it" {
	run_cdisk 0 cdisk-create --size 4M d.cdisk
	run_cdisk 0 cdisk-io d.cdisk w:0:8K:2 f
	cp "meta/$(uuid_of d.cdisk).meta" old.meta
	run_cdisk 0 cdisk-io d.cdisk w:1M:8K:3 f
	damage d.cdisk "$(live_checkpoint d.cdisk)" 8
	run_cdisk 0 cdisk-restore --metadata --from old.meta --json d.cdisk
	assert_equal "$(json_get .exact)" true
	assert_equal "$(json_get .records_replayed)" 1
	run_cdisk 0 cdisk-io d.cdisk r:0:8K:2 r:1M:8K:3
}

@test "a backup older than the journal needs --force, and then loses no data write" {
	run_cdisk 0 cdisk-create --size 4M d.cdisk
	run_cdisk 0 cdisk-io d.cdisk w:0:8K:2 f
	cp "meta/$(uuid_of d.cdisk).meta" old.meta
	run_cdisk 0 cdisk-io d.cdisk w:1M:8K:3 f
	damage d.cdisk "$(live_checkpoint d.cdisk)" 8
	# The records between the old backup and the checkpoint are gone.
	dd if=/dev/zero of=d.cdisk bs=1M count=8 seek=8192 oflag=seek_bytes conv=notrunc status=none
	before=$(sha d.cdisk)
	run_cdisk 7 cdisk-restore --metadata --from old.meta d.cdisk
	assert_error cdisk-restore "metadata backup 'old.meta' is older than the journal of 'd.cdisk' \(the backup and the journal reach record [0-9]+, the disk's last checkpoint is at [0-9]+\); restoring it could lose flushed writes: use --force to restore it anyway"
	assert_equal "$(sha d.cdisk)" "$before"
	run_cdisk 0 cdisk-restore --metadata --force --from old.meta --json d.cdisk
	assert_equal "$(json_get .exact)" false
	assert_equal "$(json_get .blocks_reconciled)" 2
	run_cdisk 0 cdisk-io d.cdisk r:0:8K:2 r:1M:8K:3
}

@test "disk and backup both damaged: one line, corrupt metadata, neither file changed" {
	run_cdisk 0 cdisk-create --size 4M d.cdisk
	backup="meta/$(uuid_of d.cdisk).meta"
	damage d.cdisk 300 4
	damage d.cdisk $((4096 + 300)) 4
	damage "$backup" 100 4
	d_before=$(sha d.cdisk)
	b_before=$(sha "$backup")
	run_cdisk 7 cdisk-restore --metadata d.cdisk
	assert_error cdisk-restore "'d.cdisk' is damaged: both superblocks fail their checks"
	run_cdisk 7 cdisk-io d.cdisk f
	assert_equal "$(sha d.cdisk)" "$d_before"
	assert_equal "$(sha "$backup")" "$b_before"
}

@test "--check reports a missing backup and writes it anew when repairing" {
	run_cdisk 0 cdisk-create --size 4M d.cdisk
	backup="meta/$(uuid_of d.cdisk).meta"
	rm "$backup"
	run_cdisk 0 cdisk-info --check --no-repair d.cdisk
	assert_output --regexp "metadata backup .* is missing"
	assert_not_exists "$backup"
	run_cdisk 0 cdisk-info --check d.cdisk
	assert_output --regexp "metadata backup .* was missing: written anew"
	assert_exists "$backup"
}

@test "--check shows how far the backup is behind a disk in use" {
	run_cdisk 0 cdisk-create --size 4M d.cdisk
	hold_disk d.cdisk w:0:4K:2 f w:8K:4K:2 f
	kill_holder
	run_cdisk 0 cdisk-info --check --no-repair d.cdisk
	assert_output --regexp "metadata backup .*: taken [0-9]+ s ago, 2 journal records behind \(the journal holds them\)"
}

@test "configuration errors name the file and line" {
	printf '[metadata]\nbackup_dir = relative\n' >bad.conf
	CDISK_CONFIG=bad.conf run_cdisk 2 cdisk-info x.cdisk
	assert_error cdisk-info "configuration 'bad.conf', line 2: backup_dir must be an absolute path or 'none'"
	printf '[metadata]\nbackup_interval = 0\n' >bad.conf
	CDISK_CONFIG=bad.conf run_cdisk 2 cdisk-create --size 1M x.cdisk
	assert_error cdisk-create "line 2: backup_interval must be seconds from 1 to 604800"
	printf '[metadata]\nauto_repair = maybe\n' >bad.conf
	CDISK_CONFIG=bad.conf run_cdisk 2 cdisk-restore --metadata x.cdisk
	assert_error cdisk-restore "line 2: auto_repair must be yes or no"
	printf '[other]\nx = 1\n' >bad.conf
	CDISK_CONFIG=bad.conf run_cdisk 2 cdisk-info x.cdisk
	assert_error cdisk-info "line 2: unknown section \[other\]"
	printf '[metadata]\nbogus = 1\n' >bad.conf
	CDISK_CONFIG=bad.conf run_cdisk 2 cdisk-info x.cdisk
	assert_error cdisk-info "line 2: unknown key 'bogus'"
	CDISK_CONFIG=nothere.conf run_cdisk 6 cdisk-info x.cdisk
	assert_error cdisk-info "cannot read configuration 'nothere.conf': No such file or directory"
	assert_not_exists x.cdisk
}

@test "backup_dir = none: no backup unless the disk names one" {
	printf '[metadata]\nbackup_dir = none\n' >"$CDISK_CONFIG"
	run_cdisk 0 cdisk-create --size 4M d.cdisk
	assert_not_exists meta
	run_cdisk 0 cdisk-info --check d.cdisk
	assert_output --partial "metadata backup: none configured"
}

@test "cdisk-restore without --metadata has nothing to do" {
	run_cdisk 2 cdisk-restore d.cdisk
	assert_usage_error cdisk-restore "nothing to do: give --metadata"
}

@test "metadata stress: 200 rounds of damage, every flushed block back, base equals disk after sync" {
	CDISK_TIMEOUT=300 run_cdisk 0 metastress "$BATS_TEST_TMPDIR" 200 "${CDISK_CRASH_SEED:-$RANDOM}"
	assert_output --partial "200 rounds"
}

@test "metadata stress with a third bitmap: its flushed bits survive every rebuild" {
	METASTRESS_BITMAPS=1 CDISK_TIMEOUT=300 run_cdisk 0 metastress "$BATS_TEST_TMPDIR" 200 "${CDISK_CRASH_SEED:-$RANDOM}"
	assert_output --partial "3 bitmaps"
}

#!/usr/bin/env bats
# The data path through libcdisk: overlay and base, edges of the disk,
# zeroes and discard, persistence, journal wrap-around.
bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
}

teardown() {
	kill_holder
}

@test "unwritten blocks read from the base, written ones from the overlay" {
	make_base base.img 4M
	run_cdisk 0 cdisk-create --base base.img d.cdisk
	run_cdisk 0 cdisk-io d.cdisk r:0:4M:1 w:12K:8K:2 r:0:12K:1 r:12K:8K:2 r:20K:1M:1 f
	run_cdisk 0 cdisk-io d.cdisk r:12K:8K:2 r:20K:4K:1
	# The base is never written.
	run_cdisk 0 patfile base.img r 0 4M 1
}

@test "blocks at the end of an odd-sized disk" {
	run_cdisk 0 cdisk-create --size 1536 --block-size 512 d.cdisk
	run_cdisk 0 cdisk-io d.cdisk w:1024:512:5 w:0:512:6 f r:1024:512:5 r:0:512:6 r:512:512:0
	run_cdisk 0 cdisk-io d.cdisk r:1024:512:5 r:0:512:6
}

@test "requests past the end or not aligned to blocks are refused" {
	run_cdisk 0 cdisk-create --size 8K --block-size 4K d.cdisk
	run_cdisk 2 cdisk-io d.cdisk w:8K:4K:1
	assert_error cdisk-io "'d.cdisk': request at 8192\+4096 is past the end of the disk \(8192 bytes\)"
	run_cdisk 2 cdisk-io d.cdisk r:4K:8K:1
	assert_error cdisk-io "past the end of the disk"
	run_cdisk 2 cdisk-io d.cdisk w:512:4K:1
	assert_error cdisk-io "'d.cdisk': request at 512\+4096 is not aligned to the block size 4096"
	run_cdisk 2 cdisk-io d.cdisk z:0:1000
	assert_error cdisk-io "not aligned"
}

@test "a base shorter than the disk reads as zeros past its end" {
	make_base base.img 64K
	run_cdisk 0 cdisk-create --base base.img --size 1M d.cdisk
	run_cdisk 0 cdisk-io d.cdisk r:0:64K:1 r:64K:960K:0
}

@test "zeroes and discard read as zeros over base data and take no space" {
	make_base base.img 8M
	run_cdisk 0 cdisk-create --base base.img d.cdisk
	run_cdisk 0 cdisk-io d.cdisk w:0:8M:2 f
	used=$(du -k d.cdisk | cut -f1)
	run_cdisk 0 cdisk-io d.cdisk z:0:4M d:4M:2M f r:0:6M:0 r:6M:2M:2
	assert_num "$(du -k d.cdisk | cut -f1)" -lt $((used - 5000))
	run_cdisk 0 cdisk-info --json d.cdisk
	# Zeroed blocks stay dirty: the base must be zeroed at the next sync.
	assert_equal "$(json_get .blocks_dirty)" 2048
}

@test "clean blocks that are rewritten become dirty again" {
	make_base base.img 1M
	run_cdisk 0 cdisk-create --base base.img d.cdisk
	run_cdisk 0 cdisk-io d.cdisk w:0:64K:2 f clean:0:1M f
	run_cdisk 0 cdisk-info --json d.cdisk
	assert_equal "$(json_get .blocks_present)" 16
	assert_equal "$(json_get .blocks_dirty)" 0
	run_cdisk 0 cdisk-io d.cdisk w:4K:4K:3 f
	run_cdisk 0 cdisk-info --json d.cdisk
	assert_equal "$(json_get .blocks_dirty)" 1
}

@test "thousands of flushes wrap the journal; a kill then loses nothing" {
	run_cdisk 0 cdisk-create --size 64M d.cdisk
	ops=()
	for i in $(seq 0 2999); do
		ops+=("w:$(( (i * 7919 % 16384) * 4096 )):4K:$((i + 10))" f)
	done
	hold_disk d.cdisk "${ops[@]}"
	kill_holder
	checks=()
	declare -A last
	for i in $(seq 0 2999); do
		last[$(( (i * 7919 % 16384) * 4096 ))]=$((i + 10))
	done
	for off in "${!last[@]}"; do
		checks+=("r:$off:4K:${last[$off]}")
	done
	run_cdisk 0 cdisk-io d.cdisk "${checks[@]}"
}

@test "a write is one data write: a 1 GiB overlay holds what was written" {
	run_cdisk 0 cdisk-create --size 1G d.cdisk
	run_cdisk 0 cdisk-io d.cdisk w:512M:1M:3 f
	# Only the data and a few metadata blocks take space.
	assert_num "$(du -k d.cdisk | cut -f1)" -lt 1200
}

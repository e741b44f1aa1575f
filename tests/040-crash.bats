#!/usr/bin/env bats
# kill -9 at random moments, hundreds of times: every flushed write reads
# back, unflushed ones read as old or new, clean blocks equal the base.
bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
	# A different sequence every run; the seed is printed on failure.
	SEED=${CDISK_CRASH_SEED:-$RANDOM}
}

@test "crash: 300 kills with 4 KiB blocks" {
	CDISK_TIMEOUT=300 run_cdisk 0 crashtest "$BATS_TEST_TMPDIR" 300 4096 4096 "$SEED"
	assert_output --partial "300 kills"
}

@test "crash: 100 kills with 512-byte blocks" {
	CDISK_TIMEOUT=300 run_cdisk 0 crashtest "$BATS_TEST_TMPDIR" 100 512 8192 "$SEED"
}

@test "crash: 60 kills with 64 KiB blocks (writes torn per 4 KiB)" {
	CDISK_TIMEOUT=300 run_cdisk 0 crashtest "$BATS_TEST_TMPDIR" 60 65536 1024 "$SEED"
}

@test "crash: 30 kills with 1 MiB blocks" {
	CDISK_TIMEOUT=300 run_cdisk 0 crashtest "$BATS_TEST_TMPDIR" 30 1048576 64 "$SEED"
}

@test "crash: 200 kills on a disk given 4 bitmaps, runs of bitmaps 2 and 3 set and cleared" {
	CRASHTEST_BITMAPS=4 CDISK_TIMEOUT=300 run_cdisk 0 crashtest "$BATS_TEST_TMPDIR" 200 4096 4096 "$SEED"
	assert_output --partial "4 bitmaps, no loss"
}

@test "crash: 60 kills on a disk given 8 bitmaps with 512-byte blocks" {
	CRASHTEST_BITMAPS=8 CDISK_TIMEOUT=300 run_cdisk 0 crashtest "$BATS_TEST_TMPDIR" 60 512 8192 "$SEED"
	assert_output --partial "8 bitmaps, no loss"
}

#!/usr/bin/env bats
# The fuzz targets (libFuzzer, ASan+UBSan) for a bounded time each: the
# NBD handshake and request parser, the control socket, URIs and
# superblocks.  Longer runs: build/check/fuzz/NAME -max_total_time=N DIR.
bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
	FUZZ=$CDISK_BUILD/fuzz
}

run_fuzzer() { # name seconds corpus-dir
	mkdir -p "corpus-$1"
	cp "$TOP/fuzz/corpus/$3"/* "corpus-$1"/
	# Its disk goes in the test's own folder, which bats removes.
	TMPDIR=$BATS_TEST_TMPDIR CDISK_TIMEOUT=$(($2 + 60)) run_cdisk 0 "$FUZZ/$1" -max_total_time="$2" \
		-timeout=10 -rss_limit_mb=4096 -print_final_stats=1 "corpus-$1"
	[[ "$stderr" == *"Done "*" runs in "* ]] || fail "the fuzzer did not finish cleanly"
}

@test "fuzz: NBD handshake and requests, 30 s" {
	run_fuzzer nbd-fuzz "${CDISK_FUZZ_SECONDS:-30}" nbd
}

@test "fuzz: URIs, superblocks and control requests, 15 s" {
	# A real superblock as a seed, so mutations start from a valid one.
	run_cdisk 0 cdisk-create --size 1M d.cdisk
	mkdir -p "corpus-parsers-fuzz"
	{ printf '\001'; head -c 4096 d.cdisk; } >"corpus-parsers-fuzz/superblock"
	run_fuzzer parsers-fuzz "${CDISK_FUZZ_SECONDS:-15}" parsers
}

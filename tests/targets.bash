# Checks that every target kind must pass, against its real server.
# Each takes the URI of a fresh, writable store of at least 64 MiB.

# Patterns at odd offsets and sizes, one request and many at once.
check_patterns() {
	local uri=$1
	run_cdisk target-io -w -d 16 "$uri" w:13:5000001:3 w:6000007:777:4 \
		w:7340032:1048576:5 f r:13:5000001:3 r:6000007:777:4 r:7340032:1048576:5
	# a fresh connection sees what the last one wrote
	run_cdisk target-io -d 4 "$uri" r:13:5000001:3 r:6000007:777:4
	# neighbours of an odd write keep their data
	run_cdisk target-io -w "$uri" w:6000000:2:9 r:6000000:2:9 r:6000002:5:0 \
		r:6000007:777:4
}

check_many_at_once() {
	local uri=$1
	run_cdisk target-io -w -d 32 "$uri" w:16M:32M:6 f
	run_cdisk target-io -d 32 "$uri" r:16M:32M:6
}

check_zero_discard_flush() {
	local uri=$1
	run_cdisk target-io -w "$uri" w:0:4M:7 z:100:1000 f r:0:100:7 r:100:1000:0 \
		r:1100:4093:7
	run_cdisk target-io -w "$uri" z:1M:2M r:1M:2M:0 r:4096:1044480:7 r:3M:1M:7
	# a discarded range may read as anything; what is around it may not
	run_cdisk target-io -w "$uri" w:8M:4M:8 d:9M:1M f r:8M:1M:8 r:10M:2M:8
}

check_past_end() {
	local uri=$1 size=$2
	run_cdisk 2 target-io -w "$uri" "w:$((size - 10)):100:1"
	assert_error target-io "past the end"
	run_cdisk 2 target-io "$uri" "r:$size:1:1"
	assert_error target-io "past the end"
}

check_info() {
	local uri=$1 size=$2
	run_cdisk target-io "$uri" info
	assert_equal "$(json_get .size)" "$size"
	# not opened for writing: read-only
	assert_equal "$(json_get .readonly)" true
}

# A 1 GiB copy in and out, compared byte for byte.
check_copy_1g() {
	local uri=$1 src
	src=$(random_file 1073741824)
	CDISK_TIMEOUT=600 run_cdisk target-io -w -d 16 "$uri" "put:$src"
	CDISK_TIMEOUT=600 run_cdisk target-io -d 16 "$uri" "get:$BATS_TEST_TMPDIR/back"
	cmp -n 1073741824 "$src" "$BATS_TEST_TMPDIR/back" || fail "the copy differs"
	rm -f "$BATS_TEST_TMPDIR/back"
}

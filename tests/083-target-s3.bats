#!/usr/bin/env bats
# S3 targets (libcurl, SigV4) against radosgw: chunks, manifest, faults.

bats_require_minimum_version 1.8.0

setup() {
	load helpers
	load targets
	_cdisk_setup
	s3_env
}

teardown() {
	stop_silent_server
}

new_disk() {
	run_cdisk target-io "s3://$BUCKET/$1" "create:$2"
	URI=s3://$BUCKET/$1
}

@test "s3: cdisk makes a disk (a manifest); its size and what it can do" {
	new_disk d1 64M
	check_info "$URI" 67108864
	s3_curl "$RGW_ENDPOINT/$BUCKET/d1/cdisk-manifest.json" | jq -e '.size == 67108864 and .chunk_size == 4194304'
	run_cdisk 1 target-io "$URI" create:64M
	assert_error target-io "a disk is there already"
}

@test "s3: identity is the endpoint, bucket and prefix in one spelling" {
	new_disk d1 8M
	local hostport=${RGW_ENDPOINT#http://}
	hostport=${hostport%/}
	run_cdisk target-io "$URI" identity
	assert_equal "$output" "s3:$hostport/$BUCKET/d1"
	run_cdisk target-io "$URI/" identity
	assert_equal "$output" "s3:$hostport/$BUCKET/d1"
	AWS_ENDPOINT_URL=$RGW_ENDPOINT/ run_cdisk target-io "$URI" identity
	assert_equal "$output" "s3:$hostport/$BUCKET/d1"
	new_disk d2 8M
	run_cdisk target-io "$URI" identity
	assert_equal "$output" "s3:$hostport/$BUCKET/d2"
}

@test "s3: patterns at odd offsets and sizes (read-modify-write of chunks)" {
	new_disk d1 64M
	check_patterns "$URI"
}

@test "s3: many requests at once" {
	new_disk d1 64M
	check_many_at_once "$URI"
}

@test "s3: zeroes and discard delete whole chunks; partial ones are rewritten" {
	new_disk d1 64M
	check_zero_discard_flush "$URI"
	run_cdisk target-io -w "$URI" w:16M:8M:3 f
	s3_curl -o /dev/null "$RGW_ENDPOINT/$BUCKET/d1/chunk-0000000000000004"
	run_cdisk target-io -w "$URI" z:16M:4M r:16M:4M:0 r:20M:4M:3
	! s3_curl -o /dev/null "$RGW_ENDPOINT/$BUCKET/d1/chunk-0000000000000004" ||
		fail "an all-zero chunk is still stored"
}

@test "s3: requests past the end are refused" {
	new_disk d1 64M
	check_past_end "$URI" 67108864
}

@test "s3: a 1 GiB copy in and out is identical" {
	new_disk big 1G
	check_copy_1g "$URI"
}

@test "s3: an odd size and a small chunk size from cdisk.conf" {
	printf '[s3]\nchunk_size = 65536\n' >>"$CDISK_CONFIG"
	new_disk odd 1000001
	run_cdisk target-io -w -d 8 "$URI" w:0:1000001:4 w:999999:2:5 r:0:999999:4 r:999999:2:5
	s3_curl "$RGW_ENDPOINT/$BUCKET/odd/cdisk-manifest.json" | jq -e '.chunk_size == 65536'
}

@test "s3: keys from a credentials file and a profile" {
	new_disk d1 8M
	printf '[other]\naws_access_key_id = %s\naws_secret_access_key = %s\n' \
		"$RGW_KEY" "$RGW_SECRET" >"$BATS_TEST_TMPDIR/credentials"
	unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
	AWS_SHARED_CREDENTIALS_FILE=$BATS_TEST_TMPDIR/credentials AWS_PROFILE=other \
		run_cdisk target-io "$URI" info
	AWS_SHARED_CREDENTIALS_FILE=$BATS_TEST_TMPDIR/credentials \
		run_cdisk 5 target-io "$URI" info
	assert_error target-io "profile \[default\] .* has no aws_access_key_id"
	HOME=$BATS_TEST_TMPDIR run_cdisk 5 target-io "$URI" info
	assert_error target-io "no S3 keys"
}

@test "s3: a wrong key, a missing bucket, a missing disk" {
	new_disk d1 8M
	AWS_SECRET_ACCESS_KEY=wrong run_cdisk 5 target-io "$URI" info
	assert_error target-io "HTTP 403 SignatureDoesNotMatch"
	AWS_ACCESS_KEY_ID=NOSUCHKEY run_cdisk 5 target-io "$URI" info
	assert_error target-io "HTTP 403 InvalidAccessKeyId"
	run_cdisk 6 target-io "s3://nosuch-$BUCKET/d1" info
	assert_error target-io "no such bucket"
	run_cdisk 6 target-io "s3://$BUCKET/nodisk" info
	assert_error target-io "no disk there"
}

@test "s3: a chunk shorter than the manifest says is an error, not zeros" {
	new_disk d1 8M
	run_cdisk target-io -w "$URI" w:0:8M:6
	printf 'short' | s3_curl -X PUT --data-binary @- \
		"$RGW_ENDPOINT/$BUCKET/d1/chunk-0000000000000001" >/dev/null
	run_cdisk 1 target-io "$URI" r:4M:4096:6
	assert_error target-io "chunk 1 is shorter than the manifest says"
	run_cdisk target-io "$URI" r:0:4M:6
}

@test "s3: a damaged manifest" {
	new_disk d1 8M
	printf '{"format":"other"}' | s3_curl -X PUT --data-binary @- \
		"$RGW_ENDPOINT/$BUCKET/d1/cdisk-manifest.json" >/dev/null
	run_cdisk 7 target-io "$URI" info
	assert_error target-io "not a cdisk S3 manifest"
}

@test "s3: an endpoint that refuses, and one that does not answer" {
	quick_timeouts 2 1
	AWS_ENDPOINT_URL=http://127.0.0.1:1 run_cdisk 3 target-io "s3://$BUCKET/d1" info
	assert_error target-io "cannot open 's3://.*': .*onnect"
	start_silent_server
	SECONDS=0
	AWS_ENDPOINT_URL=http://127.0.0.1:$SILENT_PORT run_cdisk 3 target-io "s3://$BUCKET/d1" info
	assert_error target-io "no answer within 2 s"
	[ "$SECONDS" -lt 15 ] || fail "took $SECONDS s"
}

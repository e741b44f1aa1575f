#!/usr/bin/env bats
# HTTP targets (libcurl range requests) against nginx: a read-only base.

bats_require_minimum_version 1.8.0

setup() {
	load helpers
	load targets
	_cdisk_setup
	use_server nginx
	OBJ=obj-$(printf '%s' "$BATS_TEST_TMPDIR" | md5sum | cut -c1-10)
	patfile "$NGINX_ROOT/$OBJ" w 0 16M 21
	truncate -s 16777217 "$NGINX_ROOT/$OBJ"
	URI=$NGINX_URL/$OBJ
}

teardown() {
	rm -f "$NGINX_ROOT/${OBJ:-none}"
	stop_silent_server
}

@test "http: the size comes from the server; the object is read-only" {
	check_info "$URI" 16777217
	run_cdisk target-io -w "$URI" info
	assert_equal "$(json_get .readonly)" true
	run_cdisk 5 target-io -w "$URI" w:0:512:1
	assert_error target-io "it is read-only"
}

@test "http: reads at odd offsets and sizes, many at once" {
	run_cdisk target-io -d 16 "$URI" r:0:16M:21 r:13:5000001:21 r:16777216:1:0
	run_cdisk target-io -d 16 "$URI" "get:$BATS_TEST_TMPDIR/copy"
	cmp "$NGINX_ROOT/$OBJ" "$BATS_TEST_TMPDIR/copy"
}

@test "http: a 1 GiB object copied out is identical" {
	local src
	src=$(random_file 1073741824)
	ln -f "$src" "$NGINX_ROOT/$OBJ" 2>/dev/null || cp "$src" "$NGINX_ROOT/$OBJ"
	CDISK_TIMEOUT=600 run_cdisk target-io -d 16 "$URI" "get:$BATS_TEST_TMPDIR/back"
	cmp "$src" "$BATS_TEST_TMPDIR/back"
}

@test "http: redirects are followed" {
	run_cdisk target-io "$NGINX_URL/moved/$OBJ" r:0:4096:21 info
	assert_output --partial '"size": 16777217'
}

@test "http: 404, 403 and 500 are named" {
	run_cdisk 6 target-io "$NGINX_URL/nosuch" info
	assert_error target-io "the server answered 404 Not Found"
	run_cdisk 5 target-io "$NGINX_URL/forbidden/x" info
	assert_error target-io "the server answered 403 Forbidden"
	run_cdisk 1 target-io "$NGINX_URL/broken/x" info
	assert_error target-io "the server answered 500 Internal Server Error"
}

@test "http: an object that shrank under us is an error, not zeros" {
	timeout 30 target-io "$URI" r:0:4096:21 sleep:2 r:12M:4096:21 \
		2>"$BATS_TEST_TMPDIR/err" 3>&- &
	local pid=$! rc=0
	sleep 1
	truncate -s 8M "$NGINX_ROOT/$OBJ"
	wait "$pid" || rc=$?
	[ "$rc" -eq 1 ] || fail "exit status $rc, not 1"
	grep -q "target-io: cannot read .* the object is shorter than it was" \
		"$BATS_TEST_TMPDIR/err" || fail "$(cat "$BATS_TEST_TMPDIR/err")"
}

@test "http: requests past the end are refused" {
	run_cdisk 2 target-io "$URI" r:16777216:2:0
	assert_error target-io "past the end"
}

@test "http: connection refused, and a host that does not answer" {
	quick_timeouts 2 1
	run_cdisk 3 target-io "http://127.0.0.1:1/x" info
	assert_error target-io "cannot reach 'http://127.0.0.1:1/x'"
	start_silent_server
	SECONDS=0
	run_cdisk 3 target-io "http://127.0.0.1:$SILENT_PORT/x" info
	assert_error target-io "no answer within 2 s"
	[ "$SECONDS" -lt 15 ] || fail "took $SECONDS s"
}

@test "https: certificates are checked by default" {
	unset CURL_CA_BUNDLE
	# nginx's own CA signed its certificate: untrusted, refused.
	run_cdisk 5 target-io "https://127.0.0.1:$NGINX_HTTPS_PORT/$OBJ" info
	assert_error target-io "cannot .* 'https://127.0.0.1:$NGINX_HTTPS_PORT/$OBJ': .*certificate"
	# Trusted through [http] ca_file, the same object reads.
	printf '[http]\nca_file = %s\n' "$NGINX_CA" >>"$CDISK_CONFIG"
	run_cdisk target-io "https://127.0.0.1:$NGINX_HTTPS_PORT/$OBJ" r:0:1M:21 info
	assert_output --partial '"size": 16777217'
	# A trusted certificate for another name is refused too.
	run_cdisk 5 target-io "https://127.0.0.2:$NGINX_HTTPS_PORT/$OBJ" info
	assert_error target-io "cannot .* 'https://127.0.0.2:$NGINX_HTTPS_PORT/$OBJ': .*certificate"
}

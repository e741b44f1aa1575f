#!/usr/bin/env bats
# A cdisk over each kind of remote base: created with the base's size,
# reading through to it, and working on while the base is down.

bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
}

teardown() {
	[ -z "${TGT_TID:-}" ] || tgt_delete_lun "$TGT_TID"
	stop_nbdkit
	[ -z "${SERVE_PID:-}" ] || stop_serve
}

# A 16 MiB base holding pattern 1, of the given kind; sets BASE.
base_nbd() {
	make_base "$BATS_TEST_TMPDIR/base.raw" 16M
	start_nbdkit_unix "$BATS_TEST_TMPDIR/nbd.sock" file "$BATS_TEST_TMPDIR/base.raw"
	BASE="nbd+unix:///?socket=$BATS_TEST_TMPDIR/nbd.sock"
}

base_iscsi() {
	use_server tgt
	tgt_new_lun 16M
	patfile "$BATS_TEST_TMPDIR/lun$TGT_TID.img" w 0 16M 1
	BASE=$TGT_URI
}

base_rbd() {
	use_server ceph
	export CEPH_CONF
	local image=base$(printf '%s' "$BATS_TEST_TMPDIR" | md5sum | cut -c1-10)
	run_cdisk target-io "rbd:rbd/$image" create:16M
	run_cdisk target-io -w -d 8 "rbd:rbd/$image" w:0:16M:1
	BASE=rbd:rbd/$image
}

base_s3() {
	s3_env
	run_cdisk target-io "s3://$BUCKET/base" create:16M
	run_cdisk target-io -w -d 8 "s3://$BUCKET/base" w:0:16M:1
	BASE=s3://$BUCKET/base
}

base_http() {
	use_server nginx
	local obj=base-$(printf '%s' "$BATS_TEST_TMPDIR" | md5sum | cut -c1-10)
	make_base "$NGINX_ROOT/$obj" 16M
	BASE=$NGINX_URL/$obj
}

# The same story for every kind.
overlay_over() {
	"base_$1"
	run_cdisk cdisk-create --base "$BASE" d.cdisk
	run_cdisk cdisk-info --json d.cdisk
	assert_equal "$(json_get .size)" 16777216
	assert_equal "$(json_get .base.uri)" "$BASE"
	assert_equal "$(json_get .base.reachable)" true
	assert_equal "$(json_get .base.size)" 16777216
	run_cdisk cdisk-io d.cdisk r:0:16M:1 w:1M:64K:2 f r:0:1M:1 r:1M:64K:2 r:1088K:15296K:1
	run_cdisk cdisk-info d.cdisk
	assert_output --regexp "base: +.* \(16 MiB, reachable\)"
}

@test "remote base: nbd" {
	overlay_over nbd
}

@test "remote base: iscsi" {
	overlay_over iscsi
}

@test "remote base: rbd" {
	overlay_over rbd
}

@test "remote base: s3" {
	overlay_over s3
}

@test "remote base: http" {
	overlay_over http
}

@test "remote base: a base that cannot be reached at create is named" {
	quick_timeouts 2 0
	run_cdisk 3 cdisk-create --base "nbd://127.0.0.1:1/x" d.cdisk
	assert_error cdisk-create "cannot reach 'nbd://127.0.0.1:1/x'"
	assert_not_exists d.cdisk
	use_server nginx
	run_cdisk 6 cdisk-create --base "$NGINX_URL/nosuch" d.cdisk
	assert_error cdisk-create "404 Not Found"
}

@test "remote base: with the base down, the overlay's data is served at once" {
	quick_timeouts 3 1
	base_nbd
	run_cdisk cdisk-create --base "$BASE" d.cdisk
	run_cdisk cdisk-io d.cdisk w:0:1M:2 f
	stop_nbdkit
	run_cdisk cdisk-info --json d.cdisk
	assert_equal "$(json_get .base.reachable)" false
	assert_regex "$(json_get .base.error)" "cannot reach"
	SECONDS=0
	run_cdisk cdisk-io d.cdisk r:0:1M:2 w:2M:64K:3 f r:2M:64K:3
	[ "$SECONDS" -lt 3 ] || fail "the overlay waited $SECONDS s for the base"
	# (cdisk-io, a test tool, also shows the warning logged at open)
	run_cdisk 3 cdisk-io d.cdisk r:4M:4096:1
	assert_regex "${stderr_lines[-1]}" "^cdisk-io: cannot reach 'nbd\\+unix:"
	# a server starts serving without waiting for the base
	SECONDS=0
	start_serve --export d=d.cdisk
	run_cdisk nbdinfo --size "$NBD"
	[ "$SECONDS" -lt 3 ] || fail "cdisk-serve waited $SECONDS s for the base"
	run_cdisk cdisk-info d.cdisk
	assert_output --regexp "base: .*(not opened yet|unreachable)"
}

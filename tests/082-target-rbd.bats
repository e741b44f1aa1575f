#!/usr/bin/env bats
# Ceph RBD targets (librbd) against a one-node memstore cluster.

bats_require_minimum_version 1.8.0

setup() {
	load helpers
	load targets
	_cdisk_setup
	use_server ceph
	export CEPH_CONF
	IMAGE=img$(printf '%s' "$BATS_TEST_TMPDIR" | md5sum | cut -c1-10)
}

teardown() {
	[ -z "${CEPH_CONF:-}" ] || timeout 30 rbd snap purge "rbd/$IMAGE" >/dev/null 2>&1 || true
	[ -z "${CEPH_CONF:-}" ] || timeout 30 rbd rm "rbd/$IMAGE" >/dev/null 2>&1 || true
	[ -z "${OTHER_IMAGE:-}" ] || timeout 30 rbd snap purge "rbd/$OTHER_IMAGE" >/dev/null 2>&1 || true
	[ -z "${OTHER_IMAGE:-}" ] || timeout 30 rbd rm "rbd/$OTHER_IMAGE" >/dev/null 2>&1 || true
	stop_silent_server
}

new_image() {
	run_cdisk target-io "rbd:rbd/$IMAGE" "create:$1"
	URI=rbd:rbd/$IMAGE
}

@test "rbd: cdisk makes an image; its size and what it can do" {
	new_image 64M
	check_info "$URI" 67108864
	run_cdisk 1 target-io "$URI" create:64M
	assert_error target-io "it exists"
	timeout 30 rbd info "rbd/$IMAGE" | grep -q "size 64 MiB"
}

@test "rbd: identity is the image's, not the URI's nor the configuration's" {
	new_image 8M
	run_cdisk target-io "$URI" identity
	local id=$output
	[[ $id =~ ^rbd:[0-9a-f-]{36}:[0-9]+:[0-9a-f]+$ ]] || fail "odd identity '$id'"
	# The cluster through a configuration file and client named in
	# cdisk.conf rather than CEPH_CONF.
	cp "$CEPH_CONF" "$BATS_TEST_TMPDIR/other.conf"
	printf '[rbd]\nconf = %s\nid = admin\n' "$BATS_TEST_TMPDIR/other.conf" >>"$CDISK_CONFIG"
	CEPH_CONF= run_cdisk target-io "$URI" identity
	assert_equal "$output" "$id"
	# Renamed, the image is reached by another URI and is the same image.
	OTHER_IMAGE=${IMAGE}-moved
	timeout 30 rbd mv "rbd/$IMAGE" "rbd/$OTHER_IMAGE"
	run_cdisk target-io "rbd:rbd/$OTHER_IMAGE" identity
	assert_equal "$output" "$id"
	timeout 30 rbd mv "rbd/$OTHER_IMAGE" "rbd/$IMAGE"
	# Another image, and a snapshot of this one, are other storage.
	run_cdisk target-io "rbd:rbd/$OTHER_IMAGE" create:8M
	run_cdisk target-io "rbd:rbd/$OTHER_IMAGE" identity
	[ "$output" != "$id" ] || fail "another image has the same identity"
	timeout 30 rbd snap create "rbd/$IMAGE@s1" >/dev/null 2>&1
	run_cdisk target-io "$URI@s1" identity
	[[ $output == "$id@"* ]] || fail "the snapshot's identity '$output' is not the image's and its id"
}

@test "rbd: patterns at odd offsets and sizes" {
	new_image 64M
	check_patterns "$URI"
}

@test "rbd: many requests at once" {
	new_image 64M
	check_many_at_once "$URI"
}

@test "rbd: zeroes, discard and flush" {
	new_image 64M
	check_zero_discard_flush "$URI"
}

@test "rbd: requests past the end are refused" {
	new_image 64M
	check_past_end "$URI" 67108864
}

@test "rbd: a 1 GiB copy in and out is identical" {
	new_image 1G
	check_copy_1g "$URI"
}

@test "rbd: what cdisk wrote, the rbd tool reads" {
	new_image 8M
	run_cdisk target-io -w "$URI" w:0:8M:11
	timeout 60 rbd export "rbd/$IMAGE" "$BATS_TEST_TMPDIR/out" >/dev/null 2>&1
	patfile "$BATS_TEST_TMPDIR/out" r 0 8M 11
}

@test "rbd: a snapshot is read-only and keeps its data" {
	new_image 8M
	run_cdisk target-io -w "$URI" w:0:1M:12
	timeout 30 rbd snap create "rbd/$IMAGE@s1" >/dev/null 2>&1
	run_cdisk target-io -w "$URI" w:0:1M:13
	run_cdisk 5 target-io -w "$URI@s1" w:0:512:1
	assert_error target-io "cannot write to 'rbd:rbd/.*@s1': it is read-only"
	run_cdisk target-io "$URI@s1" r:0:1M:12 info
	assert_output --partial '"readonly": true'
}

@test "rbd: a missing image, pool and snapshot" {
	new_image 8M
	run_cdisk 6 target-io "rbd:rbd/nosuch$IMAGE" info
	assert_error target-io "no such image"
	run_cdisk 6 target-io "rbd:nosuchpool/$IMAGE" info
	assert_error target-io "no such pool"
	run_cdisk 6 target-io "$URI@nosnap" info
	assert_error target-io "no such image or snapshot"
}

@test "rbd: the client id and configuration come from cdisk.conf and CEPH_ARGS" {
	new_image 8M
	printf '[rbd]\nconf = %s\nid = admin\n' "$CEPH_CONF" >>"$CDISK_CONFIG"
	CEPH_CONF= run_cdisk target-io "$URI" info
	printf '[global]\nmon host = 127.0.0.1:1\n' >"$BATS_TEST_TMPDIR/empty.conf"
	sed -i '/^\[rbd\]/,$d' "$CDISK_CONFIG"
	quick_timeouts 3 0
	# a configuration whose monitor is wrong, put right by CEPH_ARGS
	local mon
	mon=$(sed -n 's/^mon host = //p' "$CEPH_CONF")
	CEPH_CONF=$BATS_TEST_TMPDIR/empty.conf CEPH_ARGS="--mon-host $mon" \
		run_cdisk target-io "$URI" info
	CEPH_CONF=$BATS_TEST_TMPDIR/empty.conf run_cdisk 3 target-io "$URI" info
}

@test "rbd: monitors that do not answer time out" {
	quick_timeouts 2 0
	start_silent_server
	printf '[global]\nmon host = 127.0.0.1:%s\nauth client required = none\n' \
		"$SILENT_PORT" >"$BATS_TEST_TMPDIR/silent.conf"
	SECONDS=0
	CEPH_CONF=$BATS_TEST_TMPDIR/silent.conf run_cdisk 3 target-io "rbd:rbd/x" info
	assert_error target-io "cannot reach 'rbd:rbd/x'"
	[ "$SECONDS" -lt 20 ] || fail "took $SECONDS s"
}

@test "rbd: Ceph's libraries are loaded for rbd: URIs only; without them, one line" {
	# Linked in, or loaded at start, they cost every program Ceph's
	# start-up, and a host without Ceph's packages could run no cdisk
	# program at all.
	run ldd "$CDISK_BUILD/lib/libcdisk.so.0"
	refute_output --regexp 'librbd|librados'
	truncate -s 8M base.raw
	LD_DEBUG=files run_cdisk cdisk-create -q --base base.raw d.cdisk
	refute_output --regexp 'librbd|librados'
	[[ $stderr != *librbd* && $stderr != *librados* ]] || fail "Ceph's libraries were loaded"
	rm -f d.cdisk
	# A host where librbd cannot be loaded: an empty file found first.
	new_image 8M
	mkdir nolib
	: >nolib/librbd.so.1
	LD_LIBRARY_PATH=$PWD/nolib run_cdisk 1 cdisk-create --base "$URI" d.cdisk
	assert_error cdisk-create "cannot open '$URI': cannot load Ceph's client library \(package librbd1\): .*librbd\.so\.1: file too short"
	assert_not_exists d.cdisk
	# Every other kind still works there.
	LD_LIBRARY_PATH=$PWD/nolib run_cdisk cdisk-create -q --base base.raw d.cdisk
	LD_LIBRARY_PATH=$PWD/nolib run_cdisk cdisk-io d.cdisk w:0:1M:7 r:0:1M:7
	# And where it can, rbd: URIs are served as before.
	rm -f d.cdisk
	run_cdisk cdisk-create -q --base "$URI" d.cdisk
	run_cdisk cdisk-info d.cdisk
	assert_output --partial "$URI"
}

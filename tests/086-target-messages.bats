#!/usr/bin/env bats
# What libiscsi and librados say reaches the user as one line in cdisk's
# words, and a target that does not answer is unreachable (exit 3) after
# the configured timeout, from every program.

bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
}

teardown() {
	stop_silent_server
	if [ -n "${CLOSING_PID:-}" ]; then
		pkill -P "$CLOSING_PID" 2>/dev/null || true
		kill "$CLOSING_PID" 2>/dev/null || true
	fi
	[ -z "${IMAGE:-}" ] || CEPH_CONF=$RBD_CONF timeout 30 rbd rm "rbd/$IMAGE" >/dev/null 2>&1 || true
}

# A TCP server that accepts each connection and closes it at once.
start_closing_server() {
	CLOSING_PORT=$(free_port) || fail "no free port"
	socat TCP-LISTEN:"$CLOSING_PORT",bind=127.0.0.1,reuseaddr,fork EXEC:true \
		2>/dev/null 3>&- &
	CLOSING_PID=$!
	wait_port "$CLOSING_PORT" 5 || fail "socat did not listen"
}

@test "iscsi: a host name that does not resolve is 'host not found'" {
	local uri=iscsi://nosuchhost.invalid/iqn.2026-11.org.cdisk.test:x/1
	run_cdisk 3 cdisk-create --base "$uri" d.cdisk
	assert_error cdisk-create "^cdisk-create: cannot reach '$uri': host not found$"
	run_cdisk 3 target-io "$uri" info
	assert_error target-io "cannot reach '$uri': host not found$"
}

@test "iscsi: a peer that hangs up at the login says so, on one line" {
	start_closing_server
	local uri=iscsi://127.0.0.1:$CLOSING_PORT/iqn.2026-11.org.cdisk.test:x/1
	run_cdisk 3 cdisk-create --base "$uri" d.cdisk
	assert_error cdisk-create "^cdisk-create: cannot log in to '$uri': the target closed the connection$"
}

@test "rbd: no Ceph configuration: one line naming the missing file, even with -q" {
	CEPH_CONF=$BATS_TEST_TMPDIR/nosuch.conf run_cdisk 6 cdisk-create -q --base rbd:rbd/x d.cdisk
	assert_error cdisk-create "^cdisk-create: cannot reach 'rbd:rbd/x': no Ceph configuration: '$BATS_TEST_TMPDIR/nosuch.conf': no such file"
	assert_equal "$output" ""
	CEPH_CONF=$BATS_TEST_TMPDIR/nosuch.conf run_cdisk 6 cdisk-probe -q rbd:rbd/x
	assert_error cdisk-probe "no Ceph configuration: '$BATS_TEST_TMPDIR/nosuch.conf'"
}

@test "rbd: a monitor host that does not resolve is named, on one line" {
	printf '[global]\nmon host = nosuchhost.invalid\n' >"$BATS_TEST_TMPDIR/dns.conf"
	CEPH_CONF=$BATS_TEST_TMPDIR/dns.conf run_cdisk 3 cdisk-create --base rbd:rbd/x d.cdisk
	assert_error cdisk-create "^cdisk-create: cannot reach 'rbd:rbd/x': monitor host 'nosuchhost.invalid' not found$"
}

@test "rbd: a monitor that does not answer is exit 3 after [target] timeout, in every program" {
	use_server ceph
	export CEPH_CONF
	RBD_CONF=$CEPH_CONF
	IMAGE=msg$(printf '%s' "$BATS_TEST_TMPDIR" | md5sum | cut -c1-10)
	run_cdisk target-io "rbd:rbd/$IMAGE" create:8M
	run_cdisk cdisk-create --base "rbd:rbd/$IMAGE" d.cdisk
	run_cdisk cdisk-io d.cdisk w:0:64K:3 f
	quick_timeouts 2 0
	start_silent_server
	printf '[global]\nmon host = 127.0.0.1:%s\nauth client required = none\n' \
		"$SILENT_PORT" >"$BATS_TEST_TMPDIR/silent.conf"
	export CEPH_CONF=$BATS_TEST_TMPDIR/silent.conf
	local start
	start=$SECONDS
	run_cdisk 3 cdisk-create --base "rbd:rbd/$IMAGE" e.cdisk
	assert_error cdisk-create "^cdisk-create: cannot reach 'rbd:rbd/$IMAGE': no monitor answered within 2 s$"
	[ $((SECONDS - start)) -le 10 ] || fail "cdisk-create took $((SECONDS - start)) s"
	start=$SECONDS
	run_cdisk 3 cdisk-sync d.cdisk
	assert_error cdisk-sync "cannot reach 'rbd:rbd/$IMAGE': no monitor answered within 2 s"
	[ $((SECONDS - start)) -le 10 ] || fail "cdisk-sync took $((SECONDS - start)) s"
	start=$SECONDS
	run_cdisk 3 cdisk-probe --timeout 2 "rbd:rbd/$IMAGE"
	assert_line "verdict: unreachable: cannot reach 'rbd:rbd/$IMAGE': no monitor answered within 2 s"
	assert_equal "$stderr" ""
	[ $((SECONDS - start)) -le 10 ] || fail "cdisk-probe took $((SECONDS - start)) s"
}

@test "a host that accepts and never answers is unreachable (3), of every kind" {
	quick_timeouts 2 0
	start_silent_server
	local uri start
	for uri in "nbd://127.0.0.1:$SILENT_PORT/x" \
		"iscsi://127.0.0.1:$SILENT_PORT/iqn.2026-11.org.cdisk.test:x/1" \
		"http://127.0.0.1:$SILENT_PORT/x"; do
		start=$SECONDS
		run_cdisk 3 cdisk-create --base "$uri" d.cdisk
		assert_error cdisk-create "'${uri//./\\.}': no answer within 2 s$"
		[ $((SECONDS - start)) -le 8 ] || fail "$uri took $((SECONDS - start)) s"
	done
}

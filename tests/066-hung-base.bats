#!/usr/bin/env bats
# Property 4: with a local overlay, the guest's writes and its reads of
# what the overlay holds never wait because the base hangs, whatever runs
# beside them: status and info requests, the sync timer, metadata backups.
# The base hangs for real: its server's connections are held by the tests'
# proxy (nbdkit, tgtd, nginx, radosgw), or its OSD is stopped (Ceph RBD).
bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
	# The hang lasts the base's whole timeout: 90 s, against bounds of a
	# few seconds below (qemu-io's own start included, on a loaded machine).
	cat >"$CDISK_CONFIG" <<-EOF
	[metadata]
	backup_dir = $BATS_TEST_TMPDIR/meta
	backup_interval = 1
	[target]
	timeout = 90
	retries = 0
	EOF
}

teardown() {
	[ -n "${OSD_PID:-}" ] && kill -CONT "$OSD_PID" 2>/dev/null
	stop_serve KILL 2>/dev/null || true
	[ -n "${READER:-}" ] && kill -9 "$READER" 2>/dev/null
	stop_proxy
	stop_nbdkit
	return 0
}

BOUND_MS=5000

# ms COMMAND...: run it (under run_cdisk's timeout), set ELAPSED_MS.
ms() {
	local t0=$(date +%s%N)
	run_cdisk "$@"
	ELAPSED_MS=$((($(date +%s%N) - t0) / 1000000))
}

assert_fast() {
	[ "$ELAPSED_MS" -le "$BOUND_MS" ] ||
		fail "took $ELAPSED_MS ms while the base hangs (bound $BOUND_MS ms)"
}

control() { # JSON-REQUEST
	printf '%s\n' "$1" | socat -t 30 - "UNIX-CONNECT:$SERVE_RUN/cdisk-serve.$SERVE_PID.ctl"
}

# the_base_hangs BASE-URI HANG-COMMAND RESUME-COMMAND: a served disk whose
# overlay holds its first 64 KiB, over BASE-URI; HANG-COMMAND makes the
# base stop answering; a guest read of a block the overlay lacks starts
# opening the base (and waits out the hang), and meanwhile everything
# else must go on.
the_base_hangs() {
	local base=$1 hang=$2 resume=$3 backup before
	run_cdisk 0 cdisk-create --base "$base" d.cdisk
	run_cdisk 0 cdisk-io d.cdisk w:0:64K:3 f
	backup="meta/$(cdisk-info --json d.cdisk | jq -r .uuid).meta"
	start_serve --sync-every 2 --export d=d.cdisk
	eval "$hang"
	timeout 200 qemu-io -f raw -r -c "read 8M 4K" "$NBD" >reader.log 2>&1 3>&- &
	READER=$!
	sleep 1
	kill -0 "$READER" 2>/dev/null || fail "the read of the base did not wait: $(cat reader.log)"

	for round in 1 2 3; do
		ms 0 qemu-io -f raw -c "write -P $round 0 4K" -c flush "$NBD"
		assert_fast
		ms 0 qemu-io -f raw -r -c "read -P $round 0 4K" "$NBD"
		assert_fast
		ms 0 cdisk-info d.cdisk
		assert_fast
		assert_output --regexp "base: +.* \(not answering: opening for [0-9.]+ s\)"
		ms 0 cdisk-info --json d.cdisk
		assert_fast
		assert_equal "$(json_get .base.opening)" true
		t0=$(date +%s%N)
		run control '{"command":"status"}'
		ELAPSED_MS=$((($(date +%s%N) - t0) / 1000000))
		assert_fast
		assert_equal "$(json_get .ok)" true
		# A flush asked through the control socket runs beside it.
		run control '{"command":"flush"}'
		assert_equal "$(json_get .ok)" true
	done
	# The sync timer starts a sync during the hang (it waits on the base
	# in a thread of its own), and its status answers.  The rounds above
	# may take less than the timer's 2 s on a fast machine: up to 10 s.
	for _ in $(seq 50); do
		run control '{"command":"sync-status","disk":"'"$BATS_TEST_TMPDIR"'/d.cdisk"}'
		assert_equal "$(json_get .ok)" true
		[ "$(json_get .started)" = true ] && break
		sleep 0.2
	done
	assert_equal "$(json_get .started)" true
	# The metadata backup was refreshed on a flush during the hang.
	before=$(stat -c %Y "$backup")
	sleep 1.1
	ms 0 qemu-io -f raw -c "write -P 9 4K 4K" -c flush "$NBD"
	assert_fast
	[ "$(stat -c %Y "$backup")" -gt "$before" ] || fail "the backup was not refreshed"
	kill -0 "$READER" 2>/dev/null || fail "the base stopped hanging too soon: $(cat reader.log)"
	eval "$resume"
	wait "$READER" || true
	READER=
	stop_serve
	start_serve --export d=d.cdisk
	run_cdisk 0 qemu-io -f raw -r -c "read -P 3 0 4K" -c "read -P 9 4K 4K" "$NBD"
	stop_serve
}

# The same read-modify-write of a sub-block write to a block the overlay
# holds, and a control flush, while the base hangs: other guest I/O goes on.
@test "nbd base hangs: guest I/O, info, status, flush, backup and the sync timer go on" {
	make_base base.img 16M
	start_nbdkit_tcp file base.img
	start_proxy "127.0.0.1:$NBDKIT_PORT"
	the_base_hangs "nbd://127.0.0.1:$PROXY_PORT/" "proxy_ctl pause" "proxy_ctl resume"
}

@test "iscsi base hangs: guest I/O, info and status go on" {
	use_server tgt
	tgt_new_lun 16M
	start_proxy "127.0.0.1:$TGT_PORT"
	the_base_hangs "${TGT_URI/:$TGT_PORT\//:$PROXY_PORT/}" "proxy_ctl pause" "proxy_ctl resume"
	tgt_delete_lun "$TGT_TID"
}

@test "http base hangs: guest I/O, info and status go on" {
	use_server nginx
	make_base "$NGINX_ROOT/hang-$$.img" 16M
	start_proxy "${NGINX_URL#http://}"
	the_base_hangs "http://127.0.0.1:$PROXY_PORT/hang-$$.img" "proxy_ctl pause" \
		"proxy_ctl resume"
	rm -f "$NGINX_ROOT/hang-$$.img"
}

@test "s3 base hangs: guest I/O, info and status go on" {
	s3_env
	run_cdisk target-io "s3://$BUCKET/hang" create:16M
	start_proxy "${RGW_ENDPOINT#http://}"
	export AWS_ENDPOINT_URL=http://127.0.0.1:$PROXY_PORT
	the_base_hangs "s3://$BUCKET/hang" "proxy_ctl pause" "proxy_ctl resume"
}

@test "rbd base hangs (its OSD stopped): guest I/O, info and status go on" {
	use_server ceph
	export CEPH_CONF
	image=hang-$(printf '%s' "$BATS_TEST_TMPDIR" | md5sum | cut -c1-8)
	run_cdisk target-io "rbd:rbd/$image" create:16M
	OSD_PID=$(cat "$(dirname "$CEPH_CONF")/run/osd.0.pid")
	# SIGSTOP, never kill: memstore keeps the pool in the OSD's memory.
	the_base_hangs "rbd:rbd/$image" 'freeze $OSD_PID' 'kill -CONT $OSD_PID'
	OSD_PID=
	timeout 60 rbd -c "$CEPH_CONF" rm "rbd/$image" >/dev/null 2>&1 || true
}

# A served disk whose overlay holds its first 256 KiB, over an nbdkit base
# reached through the tests' proxy (proxy_ctl pause hangs it).
serve_over_proxied_base() { # [CDISK-CREATE OPTIONS]
	make_base base.img 16M
	start_nbdkit_tcp file base.img
	start_proxy "127.0.0.1:$NBDKIT_PORT"
	run_cdisk 0 cdisk-create "$@" --base "nbd://127.0.0.1:$PROXY_PORT/" d.cdisk
	run_cdisk 0 cdisk-io d.cdisk w:0:256K:3 f
	start_serve --export d=d.cdisk
}

@test "a sub-block write while the base hangs: other guest I/O is not held up" {
	serve_over_proxied_base
	proxy_ctl pause
	# 512 bytes into a block the overlay lacks: it must read the base.
	timeout 200 qemu-io -f raw -c "write -P 5 8M 512" "$NBD" >rmw.log 2>&1 3>&- &
	READER=$!
	sleep 1
	kill -0 "$READER" 2>/dev/null || fail "the sub-block write did not wait: $(cat rmw.log)"
	# 512 bytes into a block the overlay holds, and whole blocks: at once.
	ms 0 qemu-io -f raw -c "write -P 6 512 512" -c flush "$NBD"
	assert_fast
	ms 0 qemu-io -f raw -c "write -P 7 8K 4K" -c flush "$NBD"
	assert_fast
	ms 0 qemu-io -f raw -r -c "read -P 6 512 512" -c "read -P 7 8K 4K" "$NBD"
	assert_fast
	proxy_ctl resume
	wait "$READER" || fail "the sub-block write failed after the base came back: $(cat rmw.log)"
	READER=
	run_cdisk 0 qemu-io -f raw -r -c "read -P 5 8M 512" "$NBD"
}

# read_beside_hang OFFSET: on one connection, a read of OFFSET (a block
# the overlay lacks: it waits on the base, which hangs) and then a read
# the overlay answers; the second must come back while the first waits.
# cdisk-serve's reader answers small reads the page cache holds itself:
# it must hand the first to a worker, not wait on the base.
read_beside_hang() {
	beside_hang -r "aio_read $1 4K"
}

# beside_hang [-r] QEMU-IO-COMMAND [QEMU-IO-COMMAND]: the same with
# another first request (and what qemu-io does before the second).
beside_hang() {
	local i ro=
	[ "$1" = -r ] && { ro=-r; shift; }
	rm -f conn.log
	# Writeback: qemu-io's default, writethrough, sends writes with FUA.
	timeout 200 stdbuf -oL qemu-io -f raw -t writeback $ro -c "$1" ${2:+-c "$2"} -c "read 0 4K" \
		-c aio_flush "$NBD" >conn.log 2>&1 3>&- &
	READER=$!
	for i in $(seq 50); do
		grep -q "^read 4096/4096 bytes at offset 0$" conn.log && break
		sleep 0.1
	done
	grep -q "^read 4096/4096 bytes at offset 0$" conn.log ||
		fail "the overlay's read waited on the hung base's: $(cat conn.log)"
	kill -0 "$READER" 2>/dev/null || fail "the request on the base did not wait: $(cat conn.log)"
}

@test "one connection: a read waiting on a hung base holds up no read the overlay answers" {
	serve_over_proxied_base
	# While the base is being opened...
	proxy_ctl pause
	read_beside_hang 8M
	proxy_ctl resume
	wait "$READER" || fail "the base's read failed once it came back: $(cat conn.log)"
	READER=
	# ...and once it is open.
	run_cdisk 0 qemu-io -f raw -r -c "read 12M 4K" "$NBD"
	proxy_ctl pause
	read_beside_hang 9M
	proxy_ctl resume
	wait "$READER" || fail "the base's read failed once it came back: $(cat conn.log)"
	READER=
}

# The reader carries a lone large write itself when it needs nothing
# remote (nbd-conn.c, run_alone_here): one whose edge blocks the overlay
# lacks must read them from the base, and so goes to a worker.  Blocks
# of 256 KiB, as NBD clients align to 64 KiB at most: a write aligned to
# that, not to the blocks, is merged with the base's edges by the server.
@test "one connection: a large write waiting on a hung base holds up no read the overlay answers" {
	serve_over_proxied_base --block-size 256K
	run_cdisk 0 qemu-io -f raw -r -c "read 12M 4K" "$NBD"
	proxy_ctl pause
	beside_hang "aio_write -P 5 $((8 * 1048576 + 65536)) 1M" "sleep 500"
	proxy_ctl resume
	wait "$READER" || fail "the write failed once the base came back: $(cat conn.log)"
	READER=
	run_cdisk 0 qemu-io -f raw -r -c "read -P 5 $((8 * 1048576 + 65536)) 1M" "$NBD"
}

# Property 6 for the control socket: looking is for anyone who can open
# it; flush, sync and stop only for root, the server's user and the
# socket's group (SO_PEERCRED and SO_PEERGROUPS).
@test "the control socket refuses state-changing verbs to other users" {
	run_cdisk 0 cdisk-create --size 16M d.cdisk
	ctldir=$(mktemp -d /tmp/cdisk-ctl.XXXXXX)
	chmod 0755 "$ctldir"
	start_serve --group nogroup --control "$ctldir/c.sock" --export d=d.cdisk
	# An administrator opens it wider for a monitoring user.
	chmod 0666 "$ctldir/c.sock"
	as() { # UID GID REQUEST
		printf '%s\n' "$3" | setpriv --reuid="$1" --regid="$2" --clear-groups \
			socat -t 30 - "UNIX-CONNECT:$ctldir/c.sock"
	}
	run as 65534 100 '{"command":"status"}'
	assert_equal "$(json_get .ok)" true
	run as 65534 100 '{"command":"info","disk":"'"$BATS_TEST_TMPDIR"'/d.cdisk"}'
	assert_equal "$(json_get .ok)" true
	for verb in flush sync sync-stop; do
		run as 65534 100 '{"command":"'$verb'","disk":"'"$BATS_TEST_TMPDIR"'/d.cdisk"}'
		assert_equal "$(json_get .ok)" false
		assert_equal "$(json_get .exit_code)" 5
		assert_equal "$(json_get .error)" "'$verb' is only for root, the server's user and the control socket's group"
	done
	# A member of the socket's group, and root, may.
	run as 65534 65534 '{"command":"flush"}'
	assert_equal "$(json_get .ok)" true
	run as 0 0 '{"command":"flush"}'
	assert_equal "$(json_get .ok)" true
	stop_serve
	rm -rf "$ctldir"
}

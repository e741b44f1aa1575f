#!/usr/bin/env bats
# cdisk-serve against real NBD clients (nbdinfo, qemu-io, qemu-img,
# nbdcopy, fio), against a client that misbehaves, and under kill -9.
bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
}

teardown() {
	stop_serve KILL || true
}

@test "nbdinfo sees the export: size, block sizes, flags, allocation map" {
	run_cdisk 0 cdisk-create --size 64M --block-size 512 d.cdisk
	start_serve d.cdisk
	run_cdisk 0 nbdinfo --json "$NBD"
	assert_equal "$(json_get '.exports[0]."export-size"')" 67108864
	assert_equal "$(json_get '.exports[0]."block_size_minimum"')" 512
	assert_equal "$(json_get '.exports[0]."can_multi_conn"')" true
	assert_equal "$(json_get '.exports[0]."can_zero"')" true
	assert_equal "$(json_get '.exports[0].contexts[0]')" base:allocation
	run_cdisk 0 qemu-io -f raw -c "write -P 7 1M 1M" "$NBD"
	run_cdisk 0 nbdinfo --map "$NBD"
	assert_line --regexp "^ +0 +1048576 +3 +hole,zero$"
	assert_line --regexp "^ +1048576 +1048576 +0 +data$"
}

@test "qemu-io: patterns written, read and verified, zeroes, discard, unaligned" {
	make_base base.img 32M
	run_cdisk 0 cdisk-create --base base.img d.cdisk
	start_serve d.cdisk
	run_cdisk 0 qemu-io -f raw -c "write -P 0xab 4k 1M" -c "write -P 0xcd 17M 64k" \
		-c "write -z -u 8M 1M" -c "discard 9M 1M" -c "write -P 0x11 100 1000" \
		-c flush "$NBD"
	run_cdisk 0 qemu-io -f raw -c "read -P 0xab 4k 1M" -c "read -P 0xcd 17M 64k" \
		-c "read -P 0 8M 2M" -c "read -P 0x11 100 1000" "$NBD"
	refute_output --partial "Pattern verification failed"
	# What the base holds still reads through.
	stop_serve
	run_cdisk 0 cdisk-io d.cdisk r:20M:1M:1
}

@test "qemu-img convert into and out of an export, then compare" {
	head -c 40M /dev/urandom >src.img
	run_cdisk 0 cdisk-create --size 40M d.cdisk
	start_serve d.cdisk
	run_cdisk 0 qemu-img convert -n -f raw -O raw src.img "$NBD"
	run_cdisk 0 qemu-img compare -f raw -F raw src.img "$NBD"
	assert_output "Images are identical."
	run_cdisk 0 qemu-img convert -f raw -O qcow2 "$NBD" out.qcow2
	run_cdisk 0 qemu-img compare -f raw -F qcow2 src.img out.qcow2
}

@test "nbdcopy in and out, byte for byte" {
	head -c 64M /dev/urandom >src.img
	run_cdisk 0 cdisk-create --size 64M d.cdisk
	start_serve d.cdisk
	run_cdisk 0 nbdcopy src.img "$NBD"
	run_cdisk 0 nbdcopy "$NBD" out.img
	cmp src.img out.img
}

@test "fio with verify=crc32c at queue depth 16 over four connections" {
	run_cdisk 0 cdisk-create --size 256M d.cdisk
	start_serve d.cdisk
	CDISK_TIMEOUT=300 run_cdisk 0 fio --name=v --ioengine=nbd --uri="$NBD" \
		--rw=randwrite --bs=4k --iodepth=16 --numjobs=4 --size=32M \
		--offset_increment=64M --verify=crc32c --verify_fatal=1 \
		--do_verify=1 --group_reporting
	refute_output --partial "verify: bad"
}

@test "many clients at once, each on its own region, all data intact" {
	run_cdisk 0 cdisk-create --size 64M d.cdisk
	start_serve d.cdisk
	pids=()
	for i in $(seq 0 7); do
		timeout 60 qemu-io -f raw -c "write -P $((i + 1)) $((i * 8))M 8M" -c flush "$NBD" \
			>/dev/null 2>&1 3>&- &
		pids+=($!)
	done
	for p in "${pids[@]}"; do wait "$p" || fail "a writer failed"; done
	for i in $(seq 0 7); do
		run_cdisk 0 qemu-io -f raw -c "read -P $((i + 1)) $((i * 8))M 8M" "$NBD"
		refute_output --partial "Pattern verification failed"
	done
}

@test "kill -9 of the server under load: every flushed write reads back" {
	run_cdisk 0 cdisk-create --size 64M d.cdisk
	start_serve d.cdisk
	# Each step writes one pattern and flushes; it is logged only once
	# the flush has been answered.
	(
		for i in $(seq 1 400); do
			timeout 10 qemu-io -f raw -c "write -P $((i % 250 + 1)) $(( (i * 37 % 1024) * 64 ))k 64k" \
				-c flush "$NBD" >/dev/null 2>&1 || exit 0
			echo "$i" >>flushed.log
		done
	) 3>&- &
	writer=$!
	sleep 1.5
	stop_serve KILL || true
	wait "$writer" || true
	[ -s flushed.log ] || fail "nothing was flushed before the kill"
	declare -A last
	while read -r i; do last[$(( (i * 37 % 1024) * 64 ))]=$((i % 250 + 1)); done <flushed.log
	start_serve d.cdisk
	for off in "${!last[@]}"; do
		timeout 10 qemu-io -f raw -c "read -P ${last[$off]} ${off}k 64k" "$NBD" >out.txt 2>&1
		if grep -q "Pattern verification failed" out.txt; then
			# A later, unflushed write may have landed: it must be the
			# next one logged for this offset, not garbage.
			fail "flushed write at ${off}k does not read back"
		fi
	done
}

# server_recv_q: bytes that clients sent and cdisk-serve has not read yet.
server_recv_q() {
	ss -Hxn state established | awk -v p="$SERVE_SOCK" '$4 == p { n += $2 } END { print n + 0 }'
}

# wait_recv_q BYTES: until the server's sockets hold BYTES unread.
wait_recv_q() {
	for _ in $(seq 200); do
		[ "$(server_recv_q)" -ge "$1" ] && return 0
		sleep 0.05
	done
	fail "the server's socket holds $(server_recv_q) bytes, not $1"
}

@test "SIGTERM: in-flight requests finish, the disk closes cleanly, exit 0" {
	local q=$BATS_TEST_TMPDIR/qemu-io.out rc=0 writer req=$((28 + 32768))
	run_cdisk 0 cdisk-create --size 64M d.cdisk
	start_serve d.cdisk
	# qemu-io takes its commands one line at a time from a pipe, on one
	# connection.
	mkfifo cmds
	timeout 60 stdbuf -oL qemu-io -f raw "$NBD" <cmds >"$q" 2>&1 3>&- &
	writer=$!
	exec 5>cmds
	echo "write -P 7 1M 1M" >&5
	for _ in $(seq 200); do grep -q "^wrote" "$q" && break; sleep 0.05; done
	assert_equal "$(grep -c '^qemu-io> wrote 1048576/1048576 bytes at offset 1048576' "$q")" 1
	# With the server frozen, two writes reach its socket; it is told to
	# stop before it can read them, and must still answer both.
	freeze "$SERVE_PID"
	echo "aio_write -P 9 0 32k" >&5
	wait_recv_q "$req"
	echo "aio_write -P 10 32k 32k" >&5
	wait_recv_q $((2 * req))
	kill -TERM "$SERVE_PID"
	kill -CONT "$SERVE_PID"
	stop_serve TERM || rc=$?
	assert_equal "$rc" 0
	exec 5>&-
	rc=0
	wait "$writer" || rc=$?
	cat "$q"
	assert_equal "$rc" 0
	assert_equal "$(grep -c 'wrote 32768/32768 bytes at offset 0$' "$q")" 1
	assert_equal "$(grep -c 'wrote 32768/32768 bytes at offset 32768$' "$q")" 1
	assert_equal "$(grep -ci 'fail\|error' "$q")" 0
	[ ! -e "$SERVE_SOCK" ] || fail "the socket '$SERVE_SOCK' is still there"
	run_cdisk 0 cdisk-info --json d.cdisk
	assert_equal "$(json_get .closed_cleanly)" true
	# All three writes are on the disk.
	run_cdisk cdisk-io d.cdisk dump:disk.img
	head -c 32768 /dev/zero | tr '\0' '\011' >want.img
	head -c 32768 /dev/zero | tr '\0' '\012' >>want.img
	cmp -n 65536 disk.img want.img || fail "the writes answered at SIGTERM are not on the disk"
	head -c 1M /dev/zero | tr '\0' '\007' >want.img
	cmp -n 1M disk.img want.img 1M 0 || fail "the write before SIGTERM is not on the disk"
}

@test "cdisk-info on a served disk asks the owner; --check stays busy" {
	run_cdisk 0 cdisk-create --size 16M d.cdisk
	start_serve d.cdisk
	run_cdisk 0 qemu-io -f raw -c "write -P 3 0 64k" -c flush "$NBD"
	run_cdisk 0 cdisk-info --json d.cdisk
	assert_equal "$(json_get .blocks_present)" 16
	run_cdisk 0 cdisk-info d.cdisk
	assert_line --regexp "^blocks: +4096 \(16 present, 16 dirty\)$"
	run_cdisk 4 cdisk-info --check d.cdisk
	assert_error cdisk-info "'d.cdisk' is busy: in use by pid $SERVE_PID"
	# Creating it again with the same arguments still says unchanged.
	run_cdisk 0 cdisk-create --size 16M d.cdisk
	assert_output "'d.cdisk' unchanged"
}

@test "the control socket: status, flush, and bad requests" {
	run_cdisk 0 cdisk-create --size 16M d.cdisk
	run_cdisk 0 cdisk-create --size 8M e.cdisk
	start_serve --export d=d.cdisk --export other=e.cdisk
	ctl=$SERVE_RUN/cdisk-serve.$SERVE_PID.ctl
	assert_equal "$(stat -c %a "$ctl")" 600
	assert_equal "$(stat -c %a "$SERVE_SOCK")" 600
	run_cdisk 0 socat - "UNIX-CONNECT:$ctl" <<<'{"command":"status"}'
	assert_equal "$(json_get .ok)" true
	assert_equal "$(json_get .schema_version)" 1
	assert_equal "$(json_get '.exports | length')" 2
	assert_equal "$(json_get '.exports[1].name')" other
	run_cdisk 0 socat - "UNIX-CONNECT:$ctl" <<<'{"command":"flush","export":"other"}'
	assert_equal "$(json_get .ok)" true
	run_cdisk 0 socat - "UNIX-CONNECT:$ctl" <<<'{"command":"flush","export":"nope"}'
	assert_equal "$(json_get .error)" "no export named 'nope'"
	assert_equal "$(json_get .exit_code)" 6
	run_cdisk 0 socat - "UNIX-CONNECT:$ctl" <<<'{"command":"explode"}'
	assert_equal "$(json_get .error)" "unknown command 'explode'"
	run_cdisk 0 socat - "UNIX-CONNECT:$ctl" <<<'this is not json'
	assert_regex "$(json_get .error)" '^request is not a JSON object'
	run_cdisk 0 socat - "UNIX-CONNECT:$ctl" <<<'[1,2]'
	assert_equal "$(json_get .ok)" false
	# A silent client (connected, sending nothing, never closing) is
	# dropped after the 5 s deadline; the server goes on.
	SECONDS=0
	run_cdisk '?' timeout 20 socat "UNIX-CONNECT:$ctl" "EXEC:sleep 30"
	assert_num "$SECONDS" -lt 15
	run_cdisk 0 nbdinfo --size "$NBD"
	assert_output 16777216
	run_cdisk 0 socat - "UNIX-CONNECT:$ctl" <<<'{"command":"status"}'
	assert_equal "$(json_get .ok)" true
}

@test "--group makes the sockets 0660 for that group" {
	run_cdisk 0 cdisk-create --size 16M d.cdisk
	start_serve d.cdisk --group daemon
	assert_equal "$(stat -c '%a %G' "$SERVE_SOCK")" "660 daemon"
}

@test "bad arguments: nothing to serve, bad export, missing disk, busy disk" {
	run_cdisk 2 cdisk-serve
	assert_usage_error cdisk-serve "nothing to serve: give NAME.cdisk, --export NAME=PATH, --config FILE or --pool DIR"
	run_cdisk 2 cdisk-serve --export =x.cdisk
	assert_usage_error cdisk-serve "invalid export '=x.cdisk': expected NAME=PATH"
	run_cdisk 6 cdisk-serve nothere.cdisk
	assert_error cdisk-serve "cannot open 'nothere.cdisk': No such file or directory"
	run_cdisk 0 cdisk-create --size 16M d.cdisk
	start_serve d.cdisk
	run_cdisk 4 cdisk-serve --socket "$BATS_TEST_TMPDIR/other.sock" d.cdisk
	assert_error cdisk-serve "'d.cdisk' is busy: in use by pid $SERVE_PID"
	run_cdisk 0 cdisk-create --size 16M e.cdisk
	run_cdisk 4 cdisk-serve --socket "$SERVE_SOCK" e.cdisk
	assert_error cdisk-serve "another server is listening there"
}

@test "malformed handshakes get an NBD error or a closed connection" {
	run_cdisk 0 cdisk-create --size 16M d.cdisk
	start_serve d.cdisk
	for c in bad-client-flags bad-option-magic unknown-option huge-option \
		malformed-go no-such-export no-such-export-name set-meta-unstructured abort; do
		run_cdisk 0 nbd-evil "$SERVE_SOCK" "$c" d
	done
	# The server is still well.
	run_cdisk 0 nbdinfo --size "$NBD"
}

@test "malformed requests get an NBD error or a closed connection" {
	run_cdisk 0 cdisk-create --size 16M d.cdisk
	start_serve d.cdisk
	for c in bad-request-magic past-end huge-read unaligned unknown-command bad-flags \
		huge-write disconnect-mid-request never-read block-status-unnegotiated \
		flush-with-range; do
		run_cdisk 0 nbd-evil "$SERVE_SOCK" "$c" d
	done
	run_cdisk 0 qemu-io -f raw -c "write -P 5 0 64k" -c "read -P 5 0 64k" "$NBD"
	refute_output --partial "Pattern verification failed"
	stop_serve TERM
}

@test "a client that sends all its requests before reading any reply is served" {
	run_cdisk 0 cdisk-create --size 64M d.cdisk
	start_serve --export d=d.cdisk
	# One thread that blocks sends 24 reads of 64 KiB (the connection's
	# reader answers such reads itself, up to 256 KiB a batch), then 8
	# writes, and only then reads: the replies fill the socket, and the
	# reader must go on taking the writes (a worker sends what the
	# socket did not take).
	run_cdisk 0 tls-client "$SERVE_SOCK" d write-unread 64 plain
	assert_output "ok: 32 requests of 64 KiB sent before any reply was read"
	run_cdisk 0 tls-client "$SERVE_SOCK" d write-unread 1024 plain
	assert_output "ok: 16 requests of 1024 KiB sent before any reply was read"
}

@test "a read-only export refuses writes with EPERM" {
	run_cdisk 0 cdisk-create --size 16M d.cdisk
	start_serve --read-only d.cdisk
	run_cdisk 0 nbd-evil "$SERVE_SOCK" readonly-write d
	run_cdisk 0 nbdinfo --json "$NBD"
	assert_equal "$(json_get '.exports[0]."is_read_only"')" true
}

@test "a client silent in the handshake is dropped after the timeout" {
	run_cdisk 0 cdisk-create --size 16M d.cdisk
	start_serve d.cdisk
	CDISK_TIMEOUT=60 run_cdisk 0 nbd-evil "$SERVE_SOCK" handshake-stall
}

@test "exports from a configuration file, and its errors" {
	run_cdisk 0 cdisk-create --size 16M a.cdisk
	run_cdisk 0 cdisk-create --size 8M g.cdisk
	cat >exports.conf <<-CONF
	[export d]
	disk = $BATS_TEST_TMPDIR/a.cdisk

	[export golden]
	disk = $BATS_TEST_TMPDIR/g.cdisk
	read_only = yes
	CONF
	start_serve --config exports.conf
	run_cdisk 0 nbdinfo --list --json "nbd+unix://?socket=$SERVE_SOCK"
	assert_equal "$(json_get '[.exports[]."export-name"] | sort | join(",")')" d,golden
	assert_equal "$(json_get '.exports[] | select(."export-name" == "golden") | .is_read_only')" true
	stop_serve TERM
	printf '[export x]\nread_only = yes\n' >bad.conf
	run_cdisk 2 cdisk-serve --config bad.conf
	assert_error cdisk-serve "'bad.conf': export 'x' has no disk"
	printf '[exports]\ndisk = a.cdisk\n' >bad.conf
	run_cdisk 2 cdisk-serve --config bad.conf
	assert_error cdisk-serve "'bad.conf', line 2: sections are \[export NAME\], not \[exports\]"
	printf '[export x]\ndisk = a.cdisk\ncolour = red\n' >bad.conf
	run_cdisk 2 cdisk-serve --config bad.conf
	assert_error cdisk-serve "'bad.conf', line 3: unknown key 'colour'"
	run_cdisk 6 cdisk-serve --config nothere.conf
	assert_error cdisk-serve "cannot read 'nothere.conf': No such file or directory"
	run_cdisk 2 cdisk-serve --export d=a.cdisk --export d=g.cdisk
	assert_error cdisk-serve "export 'd' is given twice"
}

@test "TCP: served on loopback, with a warning that it is not encrypted" {
	run_cdisk 0 cdisk-create --size 16M d.cdisk
	port=$(free_port) || fail "no free port"
	start_serve --tcp "127.0.0.1:$port" d.cdisk
	assert_file_line serve.log "warning: TCP on '127.0.0.1:$port' is not encrypted"
	run_cdisk 0 qemu-io -f raw -c "write -P 4 0 1M" -c flush "nbd://127.0.0.1:$port/d"
	run_cdisk 0 qemu-io -f raw -c "read -P 4 0 1M" "$NBD"
	refute_output --partial "Pattern verification failed"
	run_cdisk 0 cdisk-create --size 16M e.cdisk
	run_cdisk 2 cdisk-serve --tcp "256.1.1.1:$port" --socket other.sock e.cdisk
	assert_error cdisk-serve "cannot listen on '256.1.1.1:$port': "
}

@test "readiness is announced to systemd (Type=notify) once it listens" {
	run_cdisk 0 cdisk-create --size 16M d.cdisk
	socat -u "UNIX-RECV:$BATS_TEST_TMPDIR/notify" "OPEN:$BATS_TEST_TMPDIR/notified,creat" 3>&- &
	listener=$!
	for _ in $(seq 100); do [ -S notify ] && break; sleep 0.05; done
	NOTIFY_SOCKET=$BATS_TEST_TMPDIR/notify start_serve d.cdisk
	for _ in $(seq 100); do [ -s notified ] && break; sleep 0.05; done
	kill "$listener" 2>/dev/null || true
	assert_equal "$(cat notified)" "READY=1"
}

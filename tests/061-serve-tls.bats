#!/usr/bin/env bats
# cdisk-serve with TLS (NBD_OPT_STARTTLS): real clients over TLS, plain
# clients refused on TCP, client certificates checked, bad setups named.

bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
	PKI=$BATS_TEST_TMPDIR/pki
	make_certs "$PKI"
	run_cdisk cdisk-create --size 64M d.cdisk
	PORT=$(free_port) || fail "no free port"
}

teardown() {
	stop_serve
}

qemu_tls() {  # the options QEMU tools need for TLS with client folder $1
	QOBJ="tls-creds-x509,id=tls0,dir=$1,endpoint=client"
	QIMG="driver=nbd,host=127.0.0.1,port=$PORT,export=d,tls-creds=tls0"
}

@test "TLS: nbdinfo, qemu-io and qemu-img over TLS; plain TCP refused" {
	start_serve --export d=d.cdisk --tcp "127.0.0.1:$PORT" --tls-certificates "$PKI"
	run_cdisk 0 nbdinfo --size "nbds://127.0.0.1:$PORT/d?tls-certificates=$PKI/anon"
	assert_output 67108864
	# Without TLS, a TCP client gets nothing but "TLS required".
	run_cdisk 1 nbdinfo --size "nbd://127.0.0.1:$PORT/d"
	[[ "$stderr" == *"requires TLS"* ]] || fail "no TLS-required answer: $stderr"
	# The unix socket, guarded by its permissions, may stay plain.
	run_cdisk 0 nbdinfo --size "$NBD"
	qemu_tls "$PKI/anon"
	run_cdisk 0 qemu-io --object "$QOBJ" --image-opts "$QIMG" \
		-c 'write -P 0x5a 1M 4M' -c 'read -P 0x5a 1M 4M'
	head -c 16M /dev/urandom >r.img
	run_cdisk 0 qemu-img convert -n --object "$QOBJ" -f raw r.img --target-image-opts "$QIMG"
	run_cdisk 0 qemu-img convert --object "$QOBJ" --image-opts "$QIMG" -O raw back.img
	cmp -n 16777216 r.img back.img
	cp r.img r64.img
	truncate -s 64M r64.img
	run_cdisk 0 qemu-img compare --object "$QOBJ" --image-opts \
		"driver=raw,file.filename=r64.img" "$QIMG"
	# nbdcopy through TLS, to check the bytes once more.
	run_cdisk 0 nbdcopy "nbds://127.0.0.1:$PORT/d?tls-certificates=$PKI/anon" copy.img
	cmp -n 16777216 r.img copy.img
	# 4 KiB writes, many in flight, each in its own TLS record: the server
	# takes as many as have come at once.
	head -c 8M /dev/urandom >w.img
	run_cdisk 0 nbdcopy --request-size=4096 --requests=64 w.img \
		"nbds://127.0.0.1:$PORT/d?tls-certificates=$PKI/anon"
	run_cdisk 0 nbdcopy --request-size=4096 \
		"nbds://127.0.0.1:$PORT/d?tls-certificates=$PKI/anon" copy.img
	cmp -n 8388608 w.img copy.img
}

@test "TLS: fio verifies writes of every size, many in flight, records split anywhere" {
	start_serve --export d=d.cdisk --tcp "127.0.0.1:$PORT" --tls-certificates "$PKI"
	# Sizes from 4 KiB to 1 MiB at depth 16: records of every length
	# follow each other, so the server's reads of the socket end in every
	# place of a record (lib/nbd/tls.c, the wire).
	run_cdisk 0 fio --name=tlsv --ioengine=nbd \
		--uri="nbds://127.0.0.1:$PORT/d?tls-verify-peer=false" \
		--rw=randwrite --bsrange=4k-1M --iodepth=16 --size=48M \
		--verify=crc32c --verify_fatal=1 --do_verify=1 --randrepeat=0
}

@test "TLS: key updates that clients ask for while replies are being encrypted break nothing" {
	start_serve --export d=d.cdisk --tls-certificates "$PKI"
	# Four clients, each in its own 8 MiB of the export, with 16 requests
	# in flight and five key updates asked for a second (TLS 1.3): the
	# server's reader takes them while workers encrypt replies.  Without
	# the wire's lock (lib/nbd/tls.c) every client broke within 4 s.
	local i pids=()
	for i in 1 2 3 4; do
		timeout 60 tls-client "$SERVE_SOCK" d keyupdate 5 "$i" >"ku$i.out" 2>&1 &
		pids+=($!)
	done
	for i in 1 2 3 4; do
		wait "${pids[$((i - 1))]}" || fail "client $i: $(cat "ku$i.out")"
		grep -q '^ok: .* [1-9][0-9]* key updates$' "ku$i.out" ||
			fail "client $i asked for no key update: $(cat "ku$i.out")"
	done
}

@test "TLS: a client that sends all its requests before reading any reply is served" {
	start_serve --export d=d.cdisk --tls-certificates "$PKI"
	# Eight 1 MiB reads, then eight 1 MiB writes, from one thread that
	# blocks: the replies to the reads fill the socket, and the server
	# must go on taking the writes meanwhile (no lock held while a reply
	# waits to be sent).
	run_cdisk 0 tls-client "$SERVE_SOCK" d write-unread
	assert_output --partial "ok: 16 requests"
	# Reads of 64 KiB, which the connection's reader answers itself: it
	# must not wait for the client to take them.
	run_cdisk 0 tls-client "$SERVE_SOCK" d write-unread 64
	assert_output --partial "ok: 32 requests of 64 KiB and a key update"
}

@test "TLS: --tls-verify-peer takes only clients with a certificate from the CA" {
	start_serve --export d=d.cdisk --tcp "127.0.0.1:$PORT" --tls-certificates "$PKI" \
		--tls-verify-peer
	run_cdisk 1 nbdinfo --size "nbds://127.0.0.1:$PORT/d?tls-certificates=$PKI/anon"
	run_cdisk 0 nbdinfo --size "nbds://127.0.0.1:$PORT/d?tls-certificates=$PKI/client"
	assert_output 67108864
	# A certificate from another CA is refused.
	make_certs "$BATS_TEST_TMPDIR/other"
	cp "$BATS_TEST_TMPDIR/other/client/client-"*.pem "$PKI/anon/"
	local seen
	seen=$(wc -l <"$BATS_TEST_TMPDIR/serve.log")
	run_cdisk 1 nbdinfo --size "nbds://127.0.0.1:$PORT/d?tls-certificates=$PKI/anon"
	# This refusal's own log line (not the one above) names the client.
	tail -n +$((seen + 1)) "$BATS_TEST_TMPDIR/serve.log" >refusal.log
	assert_file_line refusal.log "client 127.0.0.1:[0-9]*: .*ertificate"
	kill -0 "$SERVE_PID" || fail "the server died"
}

@test "TLS: --tls on offers TLS and lets TCP clients choose" {
	start_serve --export d=d.cdisk --tcp "127.0.0.1:$PORT" --tls-certificates "$PKI" --tls on
	run_cdisk 0 nbdinfo --size "nbd://127.0.0.1:$PORT/d"
	run_cdisk 0 nbdinfo --size "nbds://127.0.0.1:$PORT/d?tls-certificates=$PKI/anon"
	assert_file_line "$BATS_TEST_TMPDIR/serve.log" "lets clients choose not to encrypt"
}

@test "TLS: a broken handshake closes the connection; the server goes on" {
	start_serve --export d=d.cdisk --tls-certificates "$PKI"
	run_cdisk 0 nbd-evil "$SERVE_SOCK" starttls-garbage d
	run_cdisk 0 nbd-evil "$SERVE_SOCK" starttls-with-data d
	run_cdisk 0 nbdinfo --size "$NBD"
	stop_serve
	start_serve --export d=d.cdisk
	run_cdisk 0 nbd-evil "$SERVE_SOCK" starttls-refused d
}

@test "TLS: bad setups get one line and an exit code" {
	run_cdisk 6 cdisk-serve --export d=d.cdisk --tls-certificates "$BATS_TEST_TMPDIR/none"
	assert_error cdisk-serve "cannot read TLS file '.*/none/server-cert.pem': No such file"
	mkdir broken
	cp "$PKI/server-cert.pem" broken/
	echo "not a key" >broken/server-key.pem
	run_cdisk 2 cdisk-serve --export d=d.cdisk --tls-certificates broken
	assert_error cdisk-serve "cannot use 'broken/server-cert.pem' with 'broken/server-key.pem'"
	run_cdisk 6 cdisk-serve --export d=d.cdisk --tls-certificates broken --tls-verify-peer
	assert_error cdisk-serve "broken/ca-cert.pem"
	run_cdisk 2 cdisk-serve --export d=d.cdisk --tls require
	assert_usage_error cdisk-serve "--tls require needs --tls-certificates"
	run_cdisk 2 cdisk-serve --export d=d.cdisk --tls-certificates "$PKI" --tls maybe
	assert_usage_error cdisk-serve "invalid --tls 'maybe'"
	run_cdisk 2 cdisk-serve --export d=d.cdisk --tls-verify-peer
	assert_usage_error cdisk-serve "--tls-verify-peer needs --tls-certificates"
}

# The cipher a client's connection uses, as libnbd reports it.
cipher_of() {
	LIBNBD_DEBUG=1 nbdinfo --size "$1" 2>&1 |
		sed -n 's/.*connection is using TLS: cipher \([A-Z0-9-]*\).*/\1/p' | head -1
}

@test "TLS: AES-128-GCM unless [serve] tls_priority says otherwise; a bad one is named" {
	local uri="nbds://127.0.0.1:$PORT/d?tls-certificates=$PKI/anon"
	# libnbd asks for GnuTLS's NORMAL (AES-256-GCM first); the server's
	# choice wins.
	start_serve --export d=d.cdisk --tcp "127.0.0.1:$PORT" --tls-certificates "$PKI"
	assert_equal "$(cipher_of "$uri")" AES-128-GCM
	stop_serve
	printf '[serve]\nruntime_dir = %s\ntls_priority = NORMAL:-CIPHER-ALL:+AES-256-GCM\n' \
		"$BATS_TEST_TMPDIR/run" >>"$CDISK_CONFIG"
	start_serve --export d=d.cdisk --tcp "127.0.0.1:$PORT" --tls-certificates "$PKI"
	assert_equal "$(cipher_of "$uri")" AES-256-GCM
	qemu_tls "$PKI/anon"
	run_cdisk 0 qemu-io --object "$QOBJ" --image-opts "$QIMG" \
		-c 'write -P 7 0 1M' -c 'read -P 7 0 1M'
	stop_serve
	sed -i 's/^tls_priority = .*/tls_priority = NORMAL:+NO-SUCH-CIPHER/' "$CDISK_CONFIG"
	run_cdisk 2 cdisk-serve --export d=d.cdisk --tcp "127.0.0.1:$PORT" \
		--tls-certificates "$PKI"
	assert_error cdisk-serve "\\[serve\\] tls_priority 'NORMAL:\\+NO-SUCH-CIPHER': not a GnuTLS priority string \\(at '\\+NO-SUCH-CIPHER'\\)"
}

@test "per-export access: certificate names over TLS, users on the unix socket" {
	run_cdisk cdisk-create --size 16M open.cdisk
	run_cdisk cdisk-create --size 16M b.cdisk
	cat >exports.conf <<-CONF
	[export open]
	disk = $PWD/open.cdisk
	[export alice]
	disk = $PWD/d.cdisk
	clients = alice
	users = nobody
	[export bob]
	disk = $PWD/b.cdisk
	clients = bob, carol
	users = root
	CONF
	SERVE_EXPORT=open start_serve --config exports.conf --tcp "127.0.0.1:$PORT" \
		--tls-certificates "$PKI" --tls-verify-peer
	local alice="tls-certificates=$PKI/client"
	run_cdisk 0 nbdinfo --size "nbds://127.0.0.1:$PORT/alice?$alice"
	assert_output 67108864
	run_cdisk 1 nbdinfo --size "nbds://127.0.0.1:$PORT/bob?$alice"
	[[ "$stderr" == *"server policy prevents"* ]] || fail "bob's export not refused: $stderr"
	run_cdisk 0 nbdinfo --list --json "nbds://127.0.0.1:$PORT/?$alice"
	assert_equal "$(jq -c '[.exports[]."export-name"] | sort' <<<"$output")" '["alice","open"]'
	# On the unix socket, root is bob's user and not alice's.
	sock=$SERVE_RUN/open.sock
	run_cdisk 0 nbdinfo --size "nbd+unix:///bob?socket=$sock"
	run_cdisk 1 nbdinfo --size "nbd+unix:///alice?socket=$sock"
	run_cdisk 0 nbdinfo --size "nbd+unix:///open?socket=$sock"
}

@test "per-export access: bad lists are named with their line" {
	cat >exports.conf <<-CONF
	[export alice]
	disk = $PWD/d.cdisk
	users = no-such-user-here
	CONF
	run_cdisk 2 cdisk-serve --config exports.conf
	assert_error cdisk-serve "exports.conf', line 3: no such user 'no-such-user-here'"
}

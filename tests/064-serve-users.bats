#!/usr/bin/env bats
# cdisk-serve --users and --tls-psk: users by pre-shared key, certificate
# name or unix uid; each sees and opens only their own exports; refusals
# look like missing exports; read-only users; SIGHUP reloads; bad files.

bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
	PORT=$(free_port) || fail "no free port"
	run_cdisk cdisk-create --size 32M alice.cdisk
	run_cdisk cdisk-create --size 32M bob.cdisk
	run_cdisk cdisk-create --size 16M golden.cdisk
	run_cdisk cdisk-create --size 16M hidden.cdisk
	psktool -u alice -p keys.psk >/dev/null
	psktool -u bob -p keys.psk >/dev/null
	psktool -u carol -p keys.psk >/dev/null   # a key, but no [user carol]
	mkdir alice-keys bob-keys
	grep '^alice:' keys.psk >alice-keys/keys.psk
	grep '^bob:' keys.psk >bob-keys/keys.psk
	cat >users.conf <<-CONF
	[user alice]
	exports = alice, gold*
	[user bob]
	exports = bob, golden
	read_only = no
	[user reader]
	exports = alice
	read_only = yes
	uid = 0
	CONF
	EXPORTS=(--export alice=alice.cdisk --export bob=bob.cdisk
		--export golden=golden.cdisk --export hidden=hidden.cdisk)
}

teardown() {
	stop_serve
	[ -z "${SOCK_DIR:-}" ] || rm -rf "$SOCK_DIR"
}

# start_users ARGS...: cdisk-serve on TCP and a unix socket; ready once it
# says where it serves (its own probe would need a user of its own).
start_users() {
	SERVE_SOCK=$BATS_TEST_TMPDIR/run/alice.sock
	SERVE_READY="serving on 127.0.0.1:$PORT" serve_logged "${EXPORTS[@]}" \
		--tcp "127.0.0.1:$PORT" "$@"
}

uri() {  # uri USER EXPORT [KEYFILE]: nbds:// with USER's pre-shared key
	echo "nbds://$1@127.0.0.1:$PORT/$2?tls-psk-file=${3:-$PWD/$1-keys/keys.psk}"
}

qemu_psk() {  # qemu_psk USER EXPORT: --object and --image-opts for QEMU tools
	QOBJ="tls-creds-psk,id=tls0,endpoint=client,dir=$PWD/$1-keys,username=$1"
	QIMG="driver=nbd,host=127.0.0.1,port=$PORT,export=$2,tls-creds=tls0"
}

# reload: SIGHUP, then wait for the server to say it has reloaded (or
# refused to).
reload() {
	local before
	before=$(grep -c "reload" "$BATS_TEST_TMPDIR/serve.log" || true)
	kill -HUP "$SERVE_PID"
	for _ in $(seq 100); do
		[ "$(grep -c "reload" "$BATS_TEST_TMPDIR/serve.log")" -gt "$before" ] && return 0
		sleep 0.05
	done
	fail "no reload in the log: $(cat "$BATS_TEST_TMPDIR/serve.log")"
}

@test "users: two users with keys read and write their own exports only" {
	start_users --users users.conf --tls-psk keys.psk
	# Each sees only what they may open.
	run_cdisk 0 nbdinfo --list --json "$(uri alice "")"
	assert_equal "$(jq -c '[.exports[]."export-name"] | sort' <<<"$output")" \
		'["alice","golden"]'
	run_cdisk 0 nbdinfo --list --json "$(uri bob "")"
	assert_equal "$(jq -c '[.exports[]."export-name"] | sort' <<<"$output")" \
		'["bob","golden"]'
	# alice writes and reads hers with nbdcopy, bob his with qemu-io.
	head -c 8M /dev/urandom >a.img
	run_cdisk 0 nbdcopy a.img "$(uri alice alice)"
	run_cdisk 0 nbdcopy "$(uri alice alice)" a-back.img
	cmp -n 8388608 a.img a-back.img
	qemu_psk bob bob
	run_cdisk 0 qemu-io --object "$QOBJ" --image-opts "$QIMG" \
		-c 'write -P 0xb0 0 4M' -c 'read -P 0xb0 0 4M'
	run_cdisk 0 qemu-img convert -n --object "$QOBJ" -f raw a.img --target-image-opts "$QIMG"
	run_cdisk 0 nbdcopy "$(uri bob bob)" b-back.img
	cmp -n 8388608 a.img b-back.img
	# Neither opens the other's, with either client.
	run_cdisk 1 nbdinfo --size "$(uri alice bob)"
	run_cdisk '?' nbdcopy "$(uri bob alice)" stolen.img
	assert_num "$status" -ne 0
	qemu_psk bob alice
	run_cdisk 1 qemu-io -r --object "$QOBJ" --image-opts "$QIMG" -c 'read 0 4k'
	# alice's data is untouched by bob's writes, and bob's by alice's.
	run_cdisk 0 nbdcopy "$(uri alice alice)" a-again.img
	cmp -n 8388608 a.img a-again.img
}

@test "users: another user's export by name is answered as a missing one" {
	start_users --users users.conf --tls-psk keys.psk
	run_cdisk 1 nbdinfo --size "$(uri alice bob)"
	local refused=${stderr//bob/NAME}
	run_cdisk 1 nbdinfo --size "$(uri alice nosuch)"
	local missing=${stderr//nosuch/NAME}
	[[ "$missing" == *"no export named 'NAME'"* ]] || fail "not the missing error: $missing"
	assert_equal "$refused" "$missing"
	# An export no user is given is closed to everyone.
	run_cdisk 1 nbdinfo --size "$(uri alice hidden)"
	assert_equal "${stderr//hidden/NAME}" "$missing"
	run_cdisk 1 nbdinfo --size "$(uri bob hidden)"
}

@test "users: a wrong key fails the handshake; an unknown user gets nothing" {
	start_users --users users.conf --tls-psk keys.psk
	psktool -u alice -p wrong.psk >/dev/null
	run_cdisk 1 nbdinfo --size "$(uri alice alice "$PWD/wrong.psk")"
	[[ "$stderr" == *handshake* ]] || fail "not a handshake failure: $stderr"
	assert_file_line "$BATS_TEST_TMPDIR/serve.log" "client 127.0.0.1:[0-9]*: TLS handshake failed"
	# A name with no key at all.
	psktool -u mallory -p mallory.psk >/dev/null
	run_cdisk 1 nbdinfo --size "$(uri mallory alice "$PWD/mallory.psk")"
	assert_file_line "$BATS_TEST_TMPDIR/serve.log" "no pre-shared key named 'mallory'"
	# carol has a key but is not a user: the handshake works, nothing opens.
	run_cdisk 0 nbdinfo --list --json "$(uri carol "" "$PWD/keys.psk")"
	assert_equal "$(jq -c '[.exports[]]' <<<"$output")" '[]'
	run_cdisk 1 nbdinfo --size "$(uri carol alice "$PWD/keys.psk")"
	[[ "$stderr" == *"no export named 'alice'"* ]] || fail "carol got more: $stderr"
	# TLS is required on TCP: no key, no export.
	run_cdisk 1 nbdinfo --size "nbd://127.0.0.1:$PORT/alice"
	[[ "$stderr" == *"requires TLS"* ]] || fail "no TLS-required answer: $stderr"
	kill -0 "$SERVE_PID" || fail "the server died"
}

@test "users: a read-only user gets a read-only export; writes get EPERM" {
	start_users --users users.conf --tls-psk keys.psk
	# root, on the unix socket, is the read-only "reader".
	local nbd="nbd+unix:///alice?socket=$SERVE_SOCK"
	run_cdisk 0 nbdinfo --json "$nbd"
	assert_equal "$(jq -r '.exports[0].is_read_only' <<<"$output")" true
	run_cdisk 0 nbd-evil "$SERVE_SOCK" readonly-write alice
	run_cdisk 1 nbdinfo --size "nbd+unix:///bob?socket=$SERVE_SOCK"
	# alice, over TLS, may write to the same export.
	run_cdisk 0 nbdinfo --json "$(uri alice alice)"
	assert_equal "$(jq -r '.exports[0].is_read_only' <<<"$output")" false
}

@test "users: certificate names map to users over X.509" {
	make_certs "$BATS_TEST_TMPDIR/pki"
	printf '[user alice-cert]\nexports = golden\ncertificate = alice\n' >>users.conf
	start_users --users users.conf --tls-psk keys.psk \
		--tls-certificates "$BATS_TEST_TMPDIR/pki" --tls-verify-peer
	local cert="tls-certificates=$BATS_TEST_TMPDIR/pki/client"
	run_cdisk 0 nbdinfo --size "nbds://127.0.0.1:$PORT/golden?$cert"
	assert_output 16777216
	run_cdisk 1 nbdinfo --size "nbds://127.0.0.1:$PORT/alice?$cert"
	# Keys still work next to certificates.
	run_cdisk 0 nbdinfo --size "$(uri alice alice)"
}

@test "users: fio on the unix socket as two uids, each on their own export" {
	cat >users.conf <<-CONF
	[user u1]
	exports = alice
	uid = 65534
	[user u2]
	exports = bob
	uid = 1
	CONF
	# A socket the two uids can reach: group "users", in a folder they enter.
	SOCK_DIR=$(mktemp -d /tmp/cdisk-users.XXXXXX)
	local dir=$SOCK_DIR
	chmod 755 "$dir"
	start_users --users users.conf --tls-psk keys.psk --group users \
		--socket "$dir/s.sock"
	local as1=(setpriv --reuid=65534 --regid=100 --clear-groups)
	local as2=(setpriv --reuid=1 --regid=100 --clear-groups)
	local fio=(fio --name=w --ioengine=nbd --rw=randwrite --bs=4k --size=8M
		--iodepth=8 --verify=crc32c --verify_fatal=1 --verify_state_save=0)
	run_cdisk 0 "${as1[@]}" "${fio[@]}" --uri="nbd+unix:///alice?socket=$dir/s.sock"
	run_cdisk 0 "${as2[@]}" "${fio[@]}" --uri="nbd+unix:///bob?socket=$dir/s.sock"
	run_cdisk '?' "${as1[@]}" "${fio[@]}" --uri="nbd+unix:///bob?socket=$dir/s.sock"
	assert_num "$status" -ne 0
	run_cdisk '?' "${as2[@]}" "${fio[@]}" --uri="nbd+unix:///alice?socket=$dir/s.sock"
	assert_num "$status" -ne 0
	# root is nobody's uid here.
	run_cdisk 1 nbdinfo --size "nbd+unix:///alice?socket=$dir/s.sock"
}

@test "users: SIGHUP keeps allowed connections, closes revoked ones, refuses a bad file" {
	start_users --users users.conf --tls-psk keys.psk
	qemu_psk alice alice
	local aobj=$QOBJ aimg=$QIMG
	qemu_psk bob bob
	# Two clients stay connected across the reload: alice keeps hers, bob
	# loses his.
	timeout 30 qemu-io --object "$aobj" --image-opts "$aimg" -c 'write -P 0x11 0 64k' \
		-c 'sleep 3000' -c 'read -P 0x11 0 64k' >keep.out 2>&1 3>&- &
	local keep=$!
	timeout 30 qemu-io --object "$QOBJ" --image-opts "$QIMG" -c 'write -P 0x22 0 64k' \
		-c 'sleep 3000' -c 'read -P 0x22 0 64k' >lose.out 2>&1 3>&- &
	local lose=$!
	sleep 1
	sed -i 's/^exports = bob, golden$/exports = golden/' users.conf
	reload
	assert_file_line "$BATS_TEST_TMPDIR/serve.log" "revoked"
	wait "$keep" || fail "alice's connection was dropped: $(cat keep.out)"
	! wait "$lose" || fail "bob's connection stayed: $(cat lose.out)"
	run_cdisk 1 nbdinfo --size "$(uri bob bob)"
	run_cdisk 0 nbdinfo --size "$(uri bob golden)"
	# A key taken out of the key file: that user's next handshake fails.
	grep -v '^bob:' keys.psk >k && cat k >keys.psk
	reload
	run_cdisk 1 nbdinfo --size "$(uri bob golden)"
	# A malformed file is refused with its line; the old one stays.
	printf '[user alice]\nexports = alice\ncolour = blue\n' >users.conf
	reload
	assert_file_line "$BATS_TEST_TMPDIR/serve.log" \
		"reload refused.*users.conf', line 3: unknown key 'colour'"
	run_cdisk 0 nbdinfo --size "$(uri alice golden)"
	kill -0 "$SERVE_PID" || fail "the server died"
}

@test "users: bad users and key files stop the start with their line" {
	printf '[user a]\nexports = a\n[user b]\nexports = b\n[user a]\nexports = c\n' >dup.conf
	run_cdisk 2 cdisk-serve "${EXPORTS[@]}" --users dup.conf
	assert_error cdisk-serve "'dup.conf', line 5: \[user a\] is defined twice"
	printf '[user a]\nexports = a\ncolour = blue\n' >key.conf
	run_cdisk 2 cdisk-serve "${EXPORTS[@]}" --users key.conf
	assert_error cdisk-serve "'key.conf', line 3: unknown key 'colour'"
	printf '[user a]\nexports = a\n\niops = lots\n' >limit.conf
	run_cdisk 2 cdisk-serve "${EXPORTS[@]}" --users limit.conf
	assert_error cdisk-serve "'limit.conf', line 4: iops must be a number"
	run_cdisk 6 cdisk-serve "${EXPORTS[@]}" --users users.conf --tls-psk missing.psk
	assert_error cdisk-serve "cannot read the key file 'missing.psk': No such file"
	printf 'alice:00\n' >short.psk
	run_cdisk 2 cdisk-serve "${EXPORTS[@]}" --tls-psk short.psk
	assert_error cdisk-serve "'short.psk', line 1: the key is not 16 to 64 bytes"
	run_cdisk 6 cdisk-serve "${EXPORTS[@]}" --users missing.conf
	run_cdisk 2 cdisk-serve "${EXPORTS[@]}" --tls-psk keys.psk --tls off
	assert_usage_error cdisk-serve "--tls off leaves no use for --tls-psk"
}

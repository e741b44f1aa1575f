#!/usr/bin/env bats
# cdisk-serve --pool DIR: DIR/USER/IMAGE.cdisk served as USER/IMAGE and
# DIR/shared/IMAGE.cdisk read-only; images come and go without a restart;
# one deleted while a client has it stays that client's; users see their
# own; and no name leads out of the pool.

bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
	mkdir -p pool/alice pool/bob pool/shared outside
	run_cdisk cdisk-create --size 16M pool/alice/a.cdisk
	run_cdisk cdisk-create --size 8M pool/bob/b.cdisk
	run_cdisk cdisk-create --size 4M pool/shared/golden.cdisk
	# A disk outside the pool that every escape below aims at.
	run_cdisk cdisk-create --size 1M outside/x.cdisk
}

teardown() {
	qio_release 2>/dev/null || true
	stop_serve
	[ -z "${SOCK_DIR:-}" ] || rm -rf "$SOCK_DIR"
}

nbd() { # EXPORT
	echo "nbd+unix:///$1?socket=$SERVE_SOCK"
}

exports() { # the exports NBD_OPT_LIST shows, sorted, as a JSON array
	nbdinfo --list --json "$(nbd "")" | jq -c '[.exports[]."export-name"] | sort'
}

wait_exports() { # EXPECTED: until the list is EXPECTED (10 s at most)
	local now
	for _ in $(seq 100); do
		now=$(exports)
		[ "$now" = "$1" ] && return 0
		sleep 0.1
	done
	fail "the exports are $now, never $1; serve log: $(cat "$BATS_TEST_TMPDIR/serve.log")"
}

# go NAME: NBD_OPT_GO for NAME, bytes as printf '%b' reads them (so a NUL
# and any control character can be sent), on a handshake of our own;
# run_cdisk's, with "served SIZE" or "refused ERROR-NUMBER MESSAGE".
go() {
	cat >go.py <<-'PY'
	import socket, struct, sys
	s = socket.socket(socket.AF_UNIX)
	s.connect(sys.argv[1])
	name = bytes.fromhex(sys.argv[2])
	def recv(n):
	    b = b''
	    while len(b) < n:
	        c = s.recv(n - len(b))
	        if not c:
	            print('closed'); sys.exit(0)
	        b += c
	    return b
	recv(18)
	s.sendall(struct.pack('>I', 3))
	data = struct.pack('>I', len(name)) + name + struct.pack('>H', 0)
	s.sendall(struct.pack('>QII', 0x49484156454F5054, 7, len(data)) + data)
	size = None
	while True:
	    _, _, typ, n = struct.unpack('>QIII', recv(20))
	    payload = recv(n)
	    if typ == 3 and payload[:2] == b'\0\0':
	        size = struct.unpack('>Q', payload[2:10])[0]
	    elif typ == 1:
	        print('served', size)
	        s.sendall(struct.pack('>IHHQQI', 0x25609513, 0, 2, 0, 0, 0))
	        break
	    elif typ & 0x80000000:
	        print('refused', typ & 0x7fffffff, payload.decode(errors='replace'))
	        break
	PY
	run_cdisk 0 python3 go.py "$SERVE_SOCK" "$(printf '%b' "$1" | od -An -v -tx1 | tr -d ' \n')"
}

assert_refused() { # NAME: GO for NAME is refused, and the server is up
	go "$1"
	[[ "$output" == "refused "* ]] || fail "'$1' was not refused: $output"
	kill -0 "$SERVE_PID" || fail "the server died"
}

# qio_hold EXPORT: qemu-io connected to EXPORT, taking commands from fd 7
# (qio COMMAND, then wait_qio TEXT for its answer); qio_release ends it.
qio_hold() {
	rm -f qio.fifo qio.out
	mkfifo qio.fifo
	timeout 120 qemu-io -f raw "$(nbd "$1")" <qio.fifo >qio.out 2>&1 3>&- &
	QIO_PID=$!
	exec 7>qio.fifo
}

qio() { # one at a time: qemu-io reads a line per wake-up, so wait_qio
	echo "$*" >&7
}

wait_qio() { # TEXT: qemu-io said TEXT
	for _ in $(seq 200); do
		grep -q "$1" qio.out && return 0
		sleep 0.05
	done
	fail "qemu-io never said '$1': $(cat qio.out)"
}

qio_release() {
	[ -n "${QIO_PID:-}" ] || return 0
	echo quit >&7 || true
	exec 7>&-
	wait "$QIO_PID" || true
	QIO_PID=
}

@test "pool: images created while serving appear, removed ones go, without a restart" {
	start_pool
	assert_equal "$(exports)" '["alice/a","bob/b","shared/golden"]'
	# cdisk-create into the pool, as into any folder; a new user's folder too.
	run_cdisk 0 cdisk-create --size 2M pool/alice/second.cdisk
	mkdir pool/carol
	run_cdisk 0 cdisk-create --size 3M pool/carol/c.cdisk
	wait_exports '["alice/a","alice/second","bob/b","carol/c","shared/golden"]'
	run_cdisk 0 nbdinfo --size "$(nbd carol/c)"
	assert_output 3145728
	ctl '{"command":"pool-list","user":"carol"}'
	assert_equal "$(jq -c '[.images[] | [.export, .size, .served]]' <<<"$output")" \
		'[["carol/c",3145728,true]]'
	# Removed: gone from the list, and opening it fails as for any
	# missing export.
	rm pool/alice/second.cdisk
	rm -r pool/carol
	wait_exports '["alice/a","bob/b","shared/golden"]'
	run_cdisk 1 nbdinfo --size "$(nbd alice/second)"
	[[ "$stderr" == *"no export named 'alice/second'"* ]] || fail "not the missing error"
	grep -q "pool: serving 'carol/c'" serve.log
	grep -q "pool: 'carol/c' is gone" serve.log
}

@test "pool: the rescan verb serves what the folder holds now" {
	start_pool
	run_cdisk 0 cdisk-create --size 2M pool/bob/new.cdisk
	ctl '{"command":"rescan"}'
	assert_equal "$(json_get .ok)" true
	assert_equal "$(json_get .served)" 4
	run_cdisk 0 nbdinfo --size "$(nbd bob/new)"
	assert_output 2097152
	rm pool/bob/new.cdisk
	ctl '{"command":"rescan"}'
	assert_equal "$(json_get .served)" 3
	run_cdisk 1 nbdinfo --size "$(nbd bob/new)"
}

@test "pool: flush, sync-dry-run, sync-status and the mirror verbs reach a pool image (its copy gated as background work); a server sync of one is refused" {
	run_cdisk 0 cdisk-io pool/bob/b.cdisk w:0:1048576:7
	start_pool
	run_cdisk 0 qemu-io -f raw -c 'write -P 7 0 1M' "$(nbd alice/a)"
	ctl '{"command":"flush","export":"alice/a"}'
	assert_equal "$(json_get .ok)" true
	ctl '{"command":"flush"}'
	assert_equal "$(json_get .ok)" true
	ctl '{"command":"flush","export":"alice/none"}'
	assert_equal "$(json_get .error)" "no export named 'alice/none'"
	# cdisk-sync on a served pool image asks the server, which answers for it.
	run_cdisk 2 cdisk-sync --dry-run --json pool/alice/a.cdisk
	assert_error cdisk-sync "is in use by pid $SERVE_PID, which says: '$PWD/pool/alice/a.cdisk' has no base to sync to"
	ctl '{"command":"sync-status","disk":"'"$PWD"'/pool/alice/a.cdisk"}'
	assert_equal "$(json_get .running)" false
	ctl '{"command":"mirror-status","disk":"'"$PWD"'/pool/alice/a.cdisk"}'
	assert_equal "$(json_get .ok)" true
	ctl '{"command":"sync","disk":"'"$PWD"'/pool/alice/a.cdisk"}'
	assert_equal "$(json_get .ok) $(json_get .exit_code)" "false 8"
	assert_equal "$(json_get .error)" "'$PWD/pool/alice/a.cdisk' is a pool image: the server does not sync those; sync it once its clients are gone"
	# A mirror attached over the control socket to an image no client
	# ever opened: its copy is background work of the server, counted so.
	truncate -s 8M mirror.img
	ctl '{"command":"mirror-attach","disk":"'"$PWD"'/pool/bob/b.cdisk","uri":"'"$PWD"'/mirror.img"}'
	assert_equal "$(json_get .ok)" true
	for _ in $(seq 100); do
		ctl '{"command":"mirror-status","disk":"'"$PWD"'/pool/bob/b.cdisk"}'
		[ "$(json_get .mirror.state)" = in-sync ] && break
		sleep 0.1
	done
	assert_equal "$(json_get .mirror.state)" in-sync
	ctl '{"command":"status","disk":"'"$PWD"'/pool/bob/b.cdisk"}'
	assert_num "$(json_get '.exports[0].io.ops.background.bytes')" -ge 1048576
	run_cdisk 0 patfile mirror.img r 0 1M 7
	ctl '{"command":"mirror-detach","disk":"'"$PWD"'/pool/bob/b.cdisk"}'
	assert_equal "$(json_get .ok)" true
	# The image is held only while each request lasts: it can go.
	ctl '{"command":"pool-delete","user":"alice","image":"a"}'
	assert_equal "$(json_get .ok)" true
}

@test "pool: an image deleted while a client has it stays that client's; new opens fail" {
	start_pool
	qio_hold alice/a
	qio "write -P 0xa5 0 1M"
	wait_qio "wrote 1048576/1048576"
	# Refused by the control verb while the client has it, with the reason.
	ctl '{"command":"pool-delete","user":"alice","image":"a"}'
	assert_equal "$(json_get .ok)" false
	assert_equal "$(json_get .error)" "image 'alice/a' is open by 1 client"
	assert_exists pool/alice/a.cdisk
	# Deleted from the shell: gone for everyone else ...
	rm pool/alice/a.cdisk
	wait_exports '["bob/b","shared/golden"]'
	run_cdisk 1 nbdinfo --size "$(nbd alice/a)"
	grep -q "'alice/a' is gone; 1 client keeps it" serve.log
	# ... and still there, data and all, for the client that has it.
	qio "read -P 0xa5 0 1M"
	wait_qio "read 1048576/1048576 bytes at offset 0"
	qio "write -P 0x5a 1M 1M"
	wait_qio "wrote 1048576/1048576 bytes at offset 1048576"
	qio "read -P 0x5a 1M 1M"
	wait_qio "read 1048576/1048576 bytes at offset 1048576"
	qio_release
	run grep -c "read 1048576/1048576" qio.out
	assert_output 2
	! grep -q "failed\|error" qio.out || fail "qemu-io: $(cat qio.out)"
	# Once it disconnects, a delete through the control socket goes through.
	ctl '{"command":"pool-delete","user":"bob","image":"b"}'
	assert_equal "$(json_get .ok)" true
	assert_not_exists pool/bob/b.cdisk
	run_cdisk 1 nbdinfo --size "$(nbd bob/b)"
}

@test "pool: create, list and delete a user's images over the control socket" {
	start_pool
	ctl '{"command":"pool-create","user":"dave","image":"desk","size":8388608}'
	assert_equal "$(json_get .ok)" true
	assert_exists pool/dave/desk.cdisk
	run_cdisk 0 nbdinfo --size "$(nbd dave/desk)"
	assert_output 8388608
	# Over a base, whose size it takes.
	truncate -s 4M base.img
	ctl '{"command":"pool-create","user":"dave","image":"over","base":"'"$PWD"'/base.img"}'
	assert_equal "$(json_get .ok)" true
	run_cdisk 0 nbdinfo --size "$(nbd dave/over)"
	assert_output 4194304
	ctl '{"command":"pool-create","user":"dave","image":"desk","size":1048576}'
	assert_equal "$(json_get .error)" "image 'dave/desk' exists"
	ctl '{"command":"pool-list","user":"dave"}'
	assert_equal "$(jq -c '[.images[] | [.export, .size, .read_only, .connections]]' <<<"$output")" \
		'[["dave/desk",8388608,false,0],["dave/over",4194304,false,0]]'
	ctl '{"command":"pool-delete","user":"dave","image":"desk"}'
	assert_equal "$(json_get .ok)" true
	assert_not_exists pool/dave/desk.cdisk
	run_cdisk 1 nbdinfo --size "$(nbd dave/desk)"
	ctl '{"command":"pool-delete","user":"dave","image":"desk"}'
	assert_equal "$(json_get .error)" "no image 'dave/desk' in the pool"
	ctl '{"command":"pool-create","user":"dave"}'
	assert_equal "$(json_get .error)" "'pool-create' needs \"user\" and \"image\", and \"size\" or \"base\""
	# A served image is described by the server, as any served disk.
	run_cdisk 0 cdisk-info --json pool/dave/over.cdisk
	assert_equal "$(json_get .size)" 4194304
	# cdisk-info --pool, from the shell, with or without the server.
	run_cdisk 0 cdisk-info --pool pool --user dave --json
	assert_equal "$(jq -c '[.images[] | [.export, .size]]' <<<"$output")" \
		'[["dave/over",4194304]]'
	run_cdisk 0 cdisk-info --pool pool
	assert_line --index 0 --regexp '^EXPORT +SIZE +USED$'
	assert_line --regexp '^shared/golden +4 MiB +.* read-only$'
	assert_line --regexp '^alice/a +16 MiB '
}

@test "pool: shared/ images are read-only; a write gets EPERM" {
	start_pool
	run_cdisk 0 nbdinfo --json "$(nbd shared/golden)"
	assert_equal "$(jq -r '.exports[0].is_read_only' <<<"$output")" true
	run_cdisk 0 nbd-evil "$SERVE_SOCK" readonly-write shared/golden
	run_cdisk 0 nbdinfo --json "$(nbd alice/a)"
	assert_equal "$(jq -r '.exports[0].is_read_only' <<<"$output")" false
	# --read-only makes every image of the pool read-only.
	stop_serve
	start_pool --read-only
	run_cdisk 0 nbd-evil "$SERVE_SOCK" readonly-write alice/a
}

@test "pool: two users by uid see and open only their own images and the shared ones" {
	mkdir pool/u1 pool/u2
	run_cdisk 0 cdisk-create --size 8M pool/u1/d.cdisk
	run_cdisk 0 cdisk-create --size 8M pool/u2/d.cdisk
	cat >users.conf <<-CONF
	[user u1]
	exports = u1/*, shared/*
	uid = 65534
	[user u2]
	exports = u2/*, shared/golden
	uid = 1
	CONF
	SOCK_DIR=$(mktemp -d /tmp/cdisk-pool.XXXXXX)
	chmod 755 "$SOCK_DIR"
	POOL_SOCK=$SOCK_DIR/s.sock start_pool --users users.conf --group users \
		--socket "$SOCK_DIR/s.sock"
	local as1=(setpriv --reuid=65534 --regid=100 --clear-groups)
	local as2=(setpriv --reuid=1 --regid=100 --clear-groups)
	run_cdisk 0 "${as1[@]}" nbdinfo --list --json "$(nbd "")"
	assert_equal "$(jq -c '[.exports[]."export-name"] | sort' <<<"$output")" \
		'["shared/golden","u1/d"]'
	run_cdisk 0 "${as2[@]}" nbdinfo --list --json "$(nbd "")"
	assert_equal "$(jq -c '[.exports[]."export-name"] | sort' <<<"$output")" \
		'["shared/golden","u2/d"]'
	# Each writes and reads back their own.
	run_cdisk 0 "${as1[@]}" qemu-io -f raw "$(nbd u1/d)" -c 'write -P 0x11 0 1M' \
		-c 'read -P 0x11 0 1M'
	run_cdisk 0 "${as2[@]}" qemu-io -f raw "$(nbd u2/d)" -c 'write -P 0x22 0 1M' \
		-c 'read -P 0x22 0 1M'
	refute_output --partial "Pattern verification failed"
	# The other's is answered as missing; root is nobody here.
	run_cdisk 1 "${as1[@]}" nbdinfo --size "$(nbd u2/d)"
	[[ "$stderr" == *"no export named 'u2/d'"* ]] || fail "not the missing error"
	run_cdisk 1 "${as2[@]}" nbdinfo --size "$(nbd u1/d)"
	run_cdisk 1 nbdinfo --size "$(nbd u1/d)"
	# u1's data is its own.
	run_cdisk 0 "${as1[@]}" qemu-io -f raw -r "$(nbd u1/d)" -c 'read -P 0x11 0 1M'
	refute_output --partial "Pattern verification failed"
}

# ---- no name leads out of the pool ----

@test "pool escape: '..' and '/../' in export names" {
	start_pool
	assert_refused '../outside/x'
	assert_refused 'alice/../../outside/x'
	assert_refused 'alice/../bob/b'
	assert_refused 'alice/..'
	assert_refused '..'
	assert_refused 'shared/../../outside/x'
	go 'alice/a'
	assert_output "served 16777216"
}

@test "pool escape: absolute paths as export names" {
	start_pool
	assert_refused "$PWD/outside/x"
	assert_refused "$PWD/outside/x.cdisk"
	assert_refused "$PWD/pool/alice/a.cdisk"
	assert_refused '/alice/a'
	assert_refused '/etc/passwd'
}

@test "pool escape: a user's folder that is a symbolic link out of the pool is not served" {
	ln -s "$PWD/outside" pool/mallory
	start_pool
	assert_refused 'mallory/x'
	assert_equal "$(exports)" '["alice/a","bob/b","shared/golden"]'
	ctl '{"command":"rescan"}'
	assert_equal "$(jq -c '.skipped' <<<"$output")" \
		'[{"name":"mallory","reason":"a symbolic link: links are not followed out of the pool"}]'
	# Nor made one by a later link: the folder's events bring no export.
	ln -s "$PWD/outside" pool/eve
	ctl '{"command":"rescan"}'
	assert_refused 'eve/x'
	# The control verbs do not write through it either.
	ctl '{"command":"pool-create","user":"mallory","image":"y","size":1048576}'
	assert_equal "$(json_get .ok)" false
	assert_not_exists outside/y.cdisk
	ctl '{"command":"pool-delete","user":"mallory","image":"x"}'
	assert_equal "$(json_get .error)" "no image 'mallory/x' in the pool"
	assert_exists outside/x.cdisk
}

@test "pool escape: an image that is a symbolic link out of the pool is not served" {
	ln -s "$PWD/outside/x.cdisk" pool/alice/link.cdisk
	ln -s ../bob/b.cdisk pool/alice/sideways.cdisk
	start_pool
	assert_refused 'alice/link'
	assert_refused 'alice/sideways'
	ctl '{"command":"rescan"}'
	assert_equal "$(jq -c '[.skipped[].name]' <<<"$output")" '["alice/link","alice/sideways"]'
	ctl '{"command":"pool-delete","user":"alice","image":"link"}'
	assert_equal "$(json_get .ok)" false
	assert_exists outside/x.cdisk
	run_cdisk 0 cdisk-info --pool pool --user alice
	[[ "$stderr" == *"not served: 'alice/link': a symbolic link"* ]] || fail "no reason: $stderr"
}

@test "pool escape: a NUL in an export name" {
	start_pool
	go 'alice/a\0/../../outside/x'
	assert_output --regexp '^refused 3 '
	go '\0'
	assert_output --regexp '^refused 3 '
	kill -0 "$SERVE_PID"
}

@test "pool escape: very long names" {
	local long
	long=$(printf 'a%.0s' $(seq 4000))
	start_pool
	assert_refused "alice/$long"
	assert_refused "$long/a"
	assert_refused "alice/$(printf '../%.0s' $(seq 1000))outside/x"
	# A name past the protocol's limit ends the option, not the server.
	go "alice/$long$long"
	kill -0 "$SERVE_PID"
	# An image whose name is too long to be an export is reported.
	touch "pool/alice/$(printf 'b%.0s' $(seq 200)).cdisk"
	ctl '{"command":"rescan"}'
	assert_equal "$(jq -r '.skipped[0].reason' <<<"$output")" \
		"the image name is longer than 128 characters"
	ctl '{"command":"pool-create","user":"alice","image":"'"$long"'","size":1048576}'
	assert_equal "$(json_get .ok)" false
}

@test "pool escape: names with control characters" {
	touch "pool/alice/$(printf 'bad\001name').cdisk"
	touch "pool/alice/$(printf 'new\nline').cdisk"
	start_pool
	assert_refused 'alice/a\001'
	assert_refused 'alice/a\n'
	assert_refused 'alice/bad\001name'
	assert_refused 'alice\t/a'
	assert_equal "$(exports)" '["alice/a","bob/b","shared/golden"]'
	ctl '{"command":"rescan"}'
	assert_equal "$(jq -c '[.skipped[].name]' <<<"$output")" \
		'["alice/bad?name.cdisk","alice/new?line.cdisk"]'
	ctl '{"command":"pool-create","user":"alice","image":"x\u0001","size":1048576}'
	assert_equal "$(json_get .error)" "invalid image name 'x?': 1 to 128 letters, digits, '.', '_' or '-' (not first '.' or '-')"
}

@test "pool escape: the control verbs take no name that leaves the pool" {
	start_pool
	for req in '"user":"../outside","image":"y"' '"user":"alice","image":"../../outside/y"' \
		'"user":"/tmp","image":"y"' '"user":"alice/..","image":"y"' \
		'"user":".","image":"y"' '"user":"alice","image":".."'; do
		ctl '{"command":"pool-create",'"$req"',"size":1048576}'
		assert_equal "$(json_get .ok)" false
		[[ "$(json_get .error)" == "invalid "* ]] || fail "not refused by name: $output"
		ctl '{"command":"pool-delete",'"$req"'}'
		[[ "$(json_get .error)" == "invalid "* ]] || fail "not refused by name: $output"
	done
	assert_not_exists outside/y.cdisk
	assert_not_exists y.cdisk
	assert_exists outside/x.cdisk
	run_cdisk 2 cdisk-info --pool pool --user ../outside
	ctl '{"command":"pool-list","user":"../outside"}'
	assert_equal "$(json_get .ok)" false
}

#!/usr/bin/env bats
# Per-user limits of a multi-user cdisk-serve: IOPS and bandwidth as token
# buckets (requests wait, never fail), connections past the limit refused
# at the handshake with an error while the server stays up, and limits
# changed at run time over the control socket until SIGHUP reads the
# users file again.  The scheduler's order (reads first, users in turn,
# background last but for its guaranteed rate) is queue-test's.

bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
	mkdir -p pool/alice pool/bob
	run_cdisk cdisk-create --size 64M pool/alice/a.cdisk
	run_cdisk cdisk-create --size 64M pool/bob/b.cdisk
	SOCK_DIR=$(mktemp -d /tmp/cdisk-limits.XXXXXX)
	chmod 755 "$SOCK_DIR"
	# What the clients, run as other users, write and read.
	OUT=$SOCK_DIR/out
	mkdir "$OUT"
	chmod 1777 "$OUT"
	AS_ALICE=(setpriv --reuid=65534 --regid=100 --clear-groups)
	AS_BOB=(setpriv --reuid=1 --regid=100 --clear-groups)
}

teardown() {
	stop_serve KILL || true
	rm -rf "$SOCK_DIR"
}

uri() { echo "nbd+unix:///$1?socket=$SOCK_DIR/s.sock"; }

# fio_rate WHO EXPORT SECONDS BS: random writes at queue depth
# 16 for SECONDS; IOPS in $IOPS and bytes per second in $BW.
fio_rate() {
	local -n who=$1
	rm -f "$OUT/fio.json"
	run_cdisk 0 "${who[@]}" fio --name=w --ioengine=nbd --uri="$(uri "$2")" \
		--rw=randwrite --bs="$4" --size=32M --iodepth=16 --time_based \
		--runtime="$3" --output-format=json --output="$OUT/fio.json"
	# The nbd engine's "connected" line may come first in the file.
	sed -i -n '/^{/,$p' "$OUT/fio.json"
	IOPS=$(jq '.jobs[0].write.iops | floor' "$OUT/fio.json")
	BW=$(jq '.jobs[0].write.bw_bytes' "$OUT/fio.json")
	echo "fio: $IOPS IOPS, $BW bytes/s"
	[ "$(jq '.jobs[0].error' "$OUT/fio.json")" = 0 ] || fail "fio saw an error"
}

@test "limits: an IOPS limit holds within 10%, waits never fail, and bob is not slowed" {
	pool_users $'iops = 400\nburst = 100ms'
	start_users_pool
	fio_rate AS_ALICE alice/a 5 4k
	assert_num "$IOPS" -ge 360
	assert_num "$IOPS" -le 440
	# bob has no limit: alice's does not hold him back.
	fio_rate AS_BOB bob/b 2 4k
	assert_num "$IOPS" -gt 800
}

@test "limits: a bandwidth limit holds within 10%" {
	pool_users $'bandwidth = 4M\nburst = 100ms'
	start_users_pool
	fio_rate AS_ALICE alice/a 5 64k
	assert_num "$BW" -ge $((4 * 1048576 * 9 / 10))
	assert_num "$BW" -le $((4 * 1048576 * 11 / 10))
}

@test "limits: 1000 connections at once get the limit of 4, the rest an error; the server stays up" {
	pool_users 'connections = 4'
	start_users_pool
	cat >"$OUT/many.py" <<-'PY'
	import socket, struct, sys
	def recv(s, n):
	    b = b''
	    while len(b) < n:
	        c = s.recv(n - len(b))
	        if not c:
	            raise EOFError
	        b += c
	    return b
	def go(path, name):
	    s = socket.socket(socket.AF_UNIX)
	    s.connect(path)
	    recv(s, 18)
	    s.sendall(struct.pack('>I', 3))
	    data = struct.pack('>I', len(name)) + name + struct.pack('>H', 0)
	    s.sendall(struct.pack('>QII', 0x49484156454F5054, 7, len(data)) + data)
	    while True:
	        _, _, typ, n = struct.unpack('>QIII', recv(s, 20))
	        payload = recv(s, n)
	        if typ == 1:
	            return s, None
	        if typ & 0x80000000:
	            return s, payload.decode(errors='replace')
	served, refused, held = 0, {}, []
	for _ in range(int(sys.argv[3])):
	    s, err = go(sys.argv[1], sys.argv[2].encode())
	    held.append(s)
	    if err is None:
	        served += 1
	    else:
	        refused[err] = refused.get(err, 0) + 1
	print('served', served)
	for err, n in refused.items():
	    print('refused', n, err)
	PY
	run_cdisk 0 "${AS_ALICE[@]}" /usr/bin/python3 "$OUT/many.py" "$SOCK_DIR/s.sock" alice/a 1000
	assert_line "served 4"
	assert_line --regexp "^refused 996 user:alice has 4 connections, as many as its limit allows$"
	kill -0 "$SERVE_PID"
	# They are gone: alice connects again, and bob never was limited.
	run_cdisk 0 "${AS_ALICE[@]}" nbdinfo --size "$(uri alice/a)"
	run_cdisk 0 "${AS_BOB[@]}" nbdinfo --size "$(uri bob/b)"
	assert_file_line "$BATS_TEST_TMPDIR/serve.log" "refused: user:alice has 4 connections"
}

@test "limits: set at run time over the control socket, until SIGHUP reads the file again" {
	pool_users ''
	start_users_pool
	ctl '{"command":"user-limits","user":"alice","iops":300,"burst_ms":100}'
	assert_output --partial '"iops":300'
	assert_output --partial '"ok":true'
	fio_rate AS_ALICE alice/a 4 4k
	assert_num "$IOPS" -ge 270
	assert_num "$IOPS" -le 330
	# Given fields change, the others stay.
	ctl '{"command":"user-limits","user":"alice","connections":1}'
	assert_output --partial '"iops":300'
	assert_output --partial '"connections":1'
	kill -HUP "$SERVE_PID"
	for _ in $(seq 100); do
		grep -q "reload" "$BATS_TEST_TMPDIR/serve.log" && break
		sleep 0.05
	done
	fio_rate AS_ALICE alice/a 2 4k
	assert_num "$IOPS" -gt 800
	# Bad requests: one line each, nothing changed.
	ctl '{"command":"user-limits","user":"../x","iops":1}'
	assert_output --partial 'needs \"user\"'
	ctl '{"command":"user-limits","user":"alice","iops":-1}'
	assert_output --partial '\"iops\" must be a whole number from 0 to 100000000'
	ctl '{"command":"user-limits","user":"alice","queue_depth":"many"}'
	assert_output --partial '\"queue_depth\" must be a whole number'
	ctl '{"command":"user-limits","iops":5}'
	assert_output --partial '"exit_code":2'
}

@test "a client that never reads its replies holds no one else up; the server stays up" {
	pool_users ''
	start_users_pool
	mkfifo "$OUT/hold"
	# alice asks for 200 MiB of reads and reads nothing back.
	timeout 120 "${AS_ALICE[@]}" nbd-evil "$SOCK_DIR/s.sock" deaf alice/a 200 \
		<"$OUT/hold" >"$OUT/deaf.out" 2>&1 3>&- &
	local deaf=$!
	exec 4>"$OUT/hold"
	for _ in $(seq 200); do
		grep -q '^sent' "$OUT/deaf.out" && break
		sleep 0.05
	done
	grep -q '^sent' "$OUT/deaf.out" || fail "the deaf client did not get through: $(cat "$OUT/deaf.out")"
	sleep 1
	# bob works as if alice were not there, with verify.
	run_cdisk 0 "${AS_BOB[@]}" fio --name=w --ioengine=nbd --uri="$(uri bob/b)" \
		--rw=randwrite --bs=4k --size=16M --io_size=8M --iodepth=16 --verify=crc32c \
		--verify_fatal=1 --verify_state_save=0 --output="$OUT/fio.out"
	# And so does alice on a connection of her own.
	run_cdisk 0 "${AS_ALICE[@]}" qemu-io -f raw -c 'write -P 7 0 64k' -c 'read -P 7 0 64k' \
		"$(uri alice/a)"
	kill -0 "$SERVE_PID"
	exec 4>&-
	kill "$deaf" 2>/dev/null || true
	wait "$deaf" || true
}

@test "[serve] scheduler, background_min_rate and workers: bad values stop the start with their line (exit 2)" {
	run_cdisk cdisk-create --size 16M d.cdisk
	printf '[serve]\nscheduler = round-robin\n' >bad.conf
	CDISK_CONFIG=bad.conf run_cdisk 2 cdisk-serve --export d=d.cdisk
	assert_error cdisk-serve "line 2: scheduler must be fair or fifo"
	printf '[serve]\nbackground_min_rate = 1K\n' >bad.conf
	CDISK_CONFIG=bad.conf run_cdisk 2 cdisk-serve --export d=d.cdisk
	assert_error cdisk-serve "line 2: background_min_rate must be bytes per second \(K, M, G suffixes\), at least 64K"
	printf '[serve]\nbackground_min_rate = fast\n' >bad.conf
	CDISK_CONFIG=bad.conf run_cdisk 2 cdisk-serve --export d=d.cdisk
	assert_error cdisk-serve "line 2: background_min_rate must be bytes per second"
	for v in 0 257 many; do
		printf '[serve]\nworkers = %s\n' "$v" >bad.conf
		CDISK_CONFIG=bad.conf run_cdisk 2 cdisk-serve --export d=d.cdisk
		assert_error cdisk-serve "line 2: workers must be a number of threads from 1 to 256"
	done
}

#!/usr/bin/env bats
# cdisk-serve's listeners: TCP ports checked as a URI's, every address
# said, plain TCP off this host only when asked for; its control socket.
bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
	printf '[serve]\nruntime_dir = %s/run\n' "$BATS_TEST_TMPDIR" >>"$CDISK_CONFIG"
	run_cdisk 0 cdisk-create --size 16M d.cdisk
}

teardown() {
	stop_serve KILL || true
	[ -z "${LIVE:-}" ] || kill "$LIVE" 2>/dev/null || true
}

@test "--tcp: a port out of range is a usage error naming it" {
	for bad in 99999 127.0.0.1:65536 127.0.0.1:-1 localhost:nbd 127.0.0.1:; do
		CDISK_TIMEOUT=5 run_cdisk 2 cdisk-serve --tcp "$bad" d.cdisk
		assert_usage_error cdisk-serve \
			"^cdisk-serve: invalid --tcp port '${bad##*:}': expected a number from 0 to 65535"
	done
	CDISK_TIMEOUT=5 run_cdisk 2 cdisk-serve --tcp ::1:0 d.cdisk
	assert_usage_error cdisk-serve "^cdisk-serve: invalid --tcp '::1:0': expected \[HOST:\]PORT"
}

@test "--tcp HOST:0 says the port it picked, and serves there" {
	start_serve --tcp 127.0.0.1:0 d.cdisk
	line=$(grep -E "^cdisk-serve: serving on 127\.0\.0\.1:[0-9]+ \(TCP, not encrypted\)$" serve.log) ||
		fail "no address in: $(cat serve.log)"
	port=${line##*:}
	port=${port%% *}
	[ "$port" -gt 0 ] || fail "port $port"
	run_cdisk 0 nbdinfo --size "nbd://127.0.0.1:$port/d"
	assert_output 16777216
	# Every address is said, the IPv6 one in brackets.
	stop_serve
	start_serve --tcp '[::1]:0' d.cdisk
	grep -qE "^cdisk-serve: serving on \[::1\]:[0-9]+ \(TCP, not encrypted\)$" serve.log ||
		fail "no address in: $(cat serve.log)"
}

@test "--tcp on every address, all of them said, one port for all" {
	start_serve --tcp 0 --tls off d.cdisk
	mapfile -t lines < <(grep "^cdisk-serve: serving on .*(TCP" serve.log)
	assert_equal "${#lines[@]}" 2
	[[ "${lines[0]}" =~ ^cdisk-serve:\ serving\ on\ 0\.0\.0\.0:([0-9]+)\ \(TCP,\ not\ encrypted\)$ ]] ||
		fail "${lines[0]}"
	port=${BASH_REMATCH[1]}
	assert_equal "${lines[1]}" "cdisk-serve: serving on [::]:$port (TCP, not encrypted)"
	grep -q "warning: TCP on '0' is not encrypted" serve.log
	run_cdisk 0 nbdinfo --size "nbd://127.0.0.1:$port/d"
}

@test "plain TCP beyond loopback needs an explicit --tls off" {
	for where in 0 0.0.0.0:0 '[::]:0'; do
		CDISK_TIMEOUT=5 run_cdisk 2 cdisk-serve --tcp "$where" d.cdisk
		assert_error cdisk-serve "TCP on '.*' reaches beyond this host and would not be encrypted: give --tls-certificates DIR, or --tls off"
	done
	[ ! -e run/d.sock ] || fail "it listened"
	# Loopback alone is this host's: no --tls off needed.
	start_serve --tcp localhost:0 d.cdisk
}

@test "control sockets of killed servers are removed at the next start" {
	start_serve d.cdisk
	dead=$SERVE_PID
	[ -S "run/cdisk-serve.$dead.ctl" ] || fail "no control socket"
	stop_serve KILL || true
	[ -S "run/cdisk-serve.$dead.ctl" ] || fail "kill -9 left nothing to remove"
	# A process that is alive keeps its socket, whatever it is.
	bash -c 'exec socat UNIX-LISTEN:run/cdisk-serve.$$.ctl,fork /dev/null' 3>&- &
	live=$! LIVE=$!
	for _ in $(seq 100); do [ -S "run/cdisk-serve.$live.ctl" ] && break; sleep 0.05; done
	start_serve -v d.cdisk
	[ ! -e "run/cdisk-serve.$dead.ctl" ] || fail "the dead server's socket is still there"
	grep -q "removed '.*/run/cdisk-serve.$dead.ctl', left by a server that is gone" serve.log
	[ -S "run/cdisk-serve.$live.ctl" ] || fail "a live process's socket was removed"
	[ -S "run/cdisk-serve.$SERVE_PID.ctl" ] || fail "no control socket of its own"
}

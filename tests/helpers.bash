# Shared helpers for cdisk's BATS tests.  Load with `load helpers` from
# setup().  Every command runs under a timeout; its output is shown only
# when the test fails.

_cdisk_setup() {
	bats_load_library bats-support
	bats_load_library bats-assert
	# shellcheck source=tests/ports.sh
	. "$BATS_TEST_DIRNAME/ports.sh"
	: "${CDISK_BUILD:=$BATS_TEST_DIRNAME/../build/check}"
	PATH="$CDISK_BUILD/bin:$CDISK_BUILD/tests:$PATH"
	TOP="$BATS_TEST_DIRNAME/.."
	export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
	# Metadata backups go to this test's own folder, never /var/lib.
	export CDISK_CONFIG=$BATS_TEST_TMPDIR/cdisk.conf
	printf '[metadata]\nbackup_dir = %s/meta\n' "$BATS_TEST_TMPDIR" >"$CDISK_CONFIG"
	cd "$BATS_TEST_TMPDIR" || return 1
}

# run_cdisk [EXPECTED_STATUS|?] COMMAND [ARGS...]
# Runs COMMAND with a timeout, stdout in $output, stderr in $stderr, and
# fails the test unless the exit status is EXPECTED_STATUS (default 0).
run_cdisk() {
	local expected=0
	case "$1" in
	[0-9] | [0-9][0-9] | [0-9][0-9][0-9]) expected=$1; shift ;;
	'?') expected=; shift ;;
	esac
	run --separate-stderr timeout --kill-after=5 "${CDISK_TIMEOUT:-60}" "$@" 3>&-
	printf '$ %s  (status %s)\n--- stdout\n%s\n--- stderr\n%s\n' \
		"$*" "$status" "$output" "$stderr"
	if [ -n "$expected" ] && [ "$status" -ne "$expected" ]; then
		fail "exit status is $status; expected $expected"
	fi
}

# assert_error PROGRAM REGEX: stderr is exactly one line, starting with
# "PROGRAM: " and matching REGEX.
assert_error() {
	local prog=$1 regex=$2
	if [ "${#stderr_lines[@]}" -ne 1 ]; then
		fail "expected one line on stderr, got ${#stderr_lines[@]}"
	fi
	if [[ "${stderr_lines[0]}" != "$prog: "* ]]; then
		fail "stderr does not start with '$prog: ': ${stderr_lines[0]}"
	fi
	if ! [[ "${stderr_lines[0]}" =~ $regex ]]; then
		fail "stderr '${stderr_lines[0]}' does not match '$regex'"
	fi
}

# assert_usage_error PROGRAM REGEX: the one-line message plus the hint.
assert_usage_error() {
	local prog=$1 regex=$2
	[ "$status" -eq 2 ] || fail "exit status is $status; expected 2"
	if [ "${#stderr_lines[@]}" -ne 2 ]; then
		fail "expected a message and a hint on stderr, got ${#stderr_lines[@]} lines"
	fi
	[[ "${stderr_lines[0]}" == "$prog: "* ]] || fail "bad prefix: ${stderr_lines[0]}"
	[[ "${stderr_lines[0]}" =~ $regex ]] || fail "'${stderr_lines[0]}' !~ '$regex'"
	[ "${stderr_lines[1]}" = "Try '$prog --help' for more information." ] ||
		fail "bad hint: ${stderr_lines[1]}"
}

# assert_num VALUE OP LIMIT: a numeric comparison ([ VALUE OP LIMIT ],
# OP one of -eq -ne -lt -le -gt -ge) that shows both numbers when false.
assert_num() {
	[[ "$1" =~ ^-?[0-9]+$ ]] || fail "'$1' is not a number (to be $2 $3)"
	[ "$1" "$2" "$3" ] || fail "$1 is not $2 $3"
}

# assert_exists PATH / assert_not_exists PATH, naming the path.
assert_exists() {
	[ -e "$1" ] || fail "'$1' does not exist"
}

assert_not_exists() {
	[ ! -e "$1" ] || fail "'$1' exists: $(ls -ld "$1")"
}

# assert_file_line FILE REGEX: a line of FILE matches REGEX (grep's
# basic syntax); otherwise the file is shown.
assert_file_line() {
	grep -q -- "$2" "$1" || fail "no line of '$1' matches '$2':
$(cat "$1" 2>&1)"
}

# re_quote STRING: STRING as an extended regular expression matching
# itself (for URIs with ? and + in assert_error and assert_regex).
re_quote() {
	sed 's/[][\\.|$(){}?+*^]/\\&/g' <<<"$1"
}

# json_get FILTER: apply a jq filter to $output.
json_get() {
	jq -er "$1" <<<"$output"
}

# Run cdisk-io OPS on DISK in the background, and return once it has done
# them and holds the disk; sets HOLD_PID.  kill_holder kills it with -9.
hold_disk() {
	local disk=$1 i
	shift
	rm -f "$BATS_TEST_TMPDIR/held"
	cdisk-io "$disk" "$@" "touch:$BATS_TEST_TMPDIR/held" hold:120 3>&- &
	HOLD_PID=$!
	for i in $(seq 200); do
		[ -e "$BATS_TEST_TMPDIR/held" ] && return 0
		kill -0 "$HOLD_PID" 2>/dev/null || fail "cdisk-io $disk $* exited early"
		sleep 0.05
	done
	fail "cdisk-io $disk $* never got to hold the disk"
}

kill_holder() {
	if [ -n "${HOLD_PID:-}" ]; then
		kill -9 "$HOLD_PID" 2>/dev/null || true
		wait "$HOLD_PID" 2>/dev/null || true
		HOLD_PID=
	fi
	return 0
}

sha() {
	sha256sum "$1" | cut -d' ' -f1
}

# A base file with a known pattern (seed 1): make_base PATH SIZE
make_base() {
	truncate -s "$2" "$1"
	patfile "$1" w 0 "$2" 1
}

# The live checkpoint area's offset in a disk, read from its live
# superblock (cdisk(5): sequence at 16, cp_offset[] at 104, active at 136).
live_checkpoint() {
	local seq_a seq_b slot active
	seq_a=$(od -An -t u8 -j 16 -N 8 "$1" | tr -d ' ')
	seq_b=$(od -An -t u8 -j $((4096 + 16)) -N 8 "$1" | tr -d ' ')
	slot=0
	[ "$seq_b" -gt "$seq_a" ] && slot=4096
	active=$(od -An -t u4 -j $((slot + 136)) -N 4 "$1" | tr -d ' ')
	od -An -t u8 -j $((slot + 104 + 8 * active)) -N 8 "$1" | tr -d ' '
}

# Start cdisk-serve in the background with ARGS; waits until its NBD socket
# answers.  Sets SERVE_PID and NBD (a URI for the first export, named by
# SERVE_EXPORT, default "d").  The runtime directory is the test's own.
start_serve() {
	local i
	export SERVE_RUN=$BATS_TEST_TMPDIR/run
	grep -q '^\[serve\]' "$CDISK_CONFIG" ||
		printf '[serve]\nruntime_dir = %s\n' "$SERVE_RUN" >>"$CDISK_CONFIG"
	SERVE_SOCK=$SERVE_RUN/${SERVE_EXPORT:-d}.sock
	cdisk-serve "$@" 2>"$BATS_TEST_TMPDIR/serve.log" 3>&- &
	SERVE_PID=$!
	for i in $(seq 200); do
		[ -S "$SERVE_SOCK" ] && nbdinfo --size "nbd+unix:///${SERVE_EXPORT:-d}?socket=$SERVE_SOCK" \
			>/dev/null 2>&1 && break
		kill -0 "$SERVE_PID" 2>/dev/null ||
			fail "cdisk-serve exited: $(cat "$BATS_TEST_TMPDIR/serve.log")"
		sleep 0.05
	done
	[ -S "$SERVE_SOCK" ] || fail "cdisk-serve never listened on '$SERVE_SOCK'"
	NBD="nbd+unix:///${SERVE_EXPORT:-d}?socket=$SERVE_SOCK"
}

# sync_served_while_fio_writes SIZE: serve d.cdisk while fio writes random
# 4 KiB blocks over SIZE (crc32c in each) for 4 s, with a sync through the
# server one second in; then fio checks what it wrote, syncs run until
# nothing is left, and the server stops.
sync_served_while_fio_writes() {
	local size=$1 fio tries=0
	start_serve --export d=d.cdisk
	# One whole pass over SIZE at a fixed pace (4 s for 64 MiB), not a
	# time: the check reads back exactly what was written however loaded
	# the machine is, and the disk ends wholly written (a base checked in
	# long runs, not thousands of scattered blocks).
	timeout 120 fio --name=w --ioengine=nbd --uri="$NBD" --rw=randwrite --bs=4k --size="$size" \
		--rate_iops=4000 --iodepth=8 --verify=crc32c --verify_fatal=1 \
		--do_verify=0 --verify_state_save=0 --output="$BATS_TEST_TMPDIR/fio.out" 3>&- &
	fio=$!
	sleep 1
	run_cdisk cdisk-sync --json d.cdisk
	assert_num "$(json_get .bytes)" -gt 0
	wait "$fio" || fail "fio failed: $(cat "$BATS_TEST_TMPDIR/fio.out")"
	# everything fio wrote is still what it reads back
	run_cdisk fio --name=w --ioengine=nbd --uri="$NBD" --rw=randwrite --bs=4k \
		--size="$size" --verify=crc32c --verify_only=1 --verify_fatal=1 \
		--verify_state_save=0
	until [ "$(timeout 60 cdisk-sync --json d.cdisk | jq -r .left_bytes)" = 0 ]; do
		tries=$((tries + 1))
		[ "$tries" -lt 5 ] || fail "never clean"
	done
	stop_serve
}

# fio_writes: a fixed amount of verified random writes through the
# server ($NBD) at a fixed pace (about 8 s), in the background; sets FIO.
# fio_check waits for it and reads back all it wrote.
fio_writes() {
	timeout 120 fio --name=w --ioengine=nbd --uri="$NBD" --rw=randwrite --bs=4k \
		--size=64M --io_size=16M --rate_iops=500 --iodepth=8 --verify=crc32c \
		--verify_fatal=1 --do_verify=0 --verify_state_save=0 \
		--output="$BATS_TEST_TMPDIR/fio.out" 3>&- &
	FIO=$!
}

fio_check() {
	wait "$FIO" || fail "fio saw an error: $(cat "$BATS_TEST_TMPDIR/fio.out")"
	run_cdisk 0 fio --name=w --ioengine=nbd --uri="$NBD" --rw=randwrite --bs=4k \
		--size=64M --io_size=16M --verify=crc32c --verify_only=1 --verify_fatal=1 \
		--verify_state_save=0
}

# ---- cdisk-serve --pool (065, 067) ----

# start_pool ARGS...: cdisk-serve --pool pool, ready once it says where it
# serves; the control socket is $CTL.
# serve_logged ARGS...: cdisk-serve -v ARGS in the background, its log in
# serve.log, SERVE_PID and CTL (its control socket) set; returns once the
# log says SERVE_READY ("serving on" unless set), fails if it never does.
serve_logged() {
	export SERVE_RUN=$BATS_TEST_TMPDIR/run
	grep -q '^\[serve\]' "$CDISK_CONFIG" ||
		printf '[serve]\nruntime_dir = %s\n' "$SERVE_RUN" >>"$CDISK_CONFIG"
	cdisk-serve -v "$@" 2>"$BATS_TEST_TMPDIR/serve.log" 3>&- &
	SERVE_PID=$!
	# Where the other programs look for it: cdisk-info on a served disk.
	CTL=$SERVE_RUN/cdisk-serve.$SERVE_PID.ctl
	for _ in $(seq 200); do
		grep -q "${SERVE_READY:-serving on}" "$BATS_TEST_TMPDIR/serve.log" && return 0
		kill -0 "$SERVE_PID" 2>/dev/null ||
			fail "cdisk-serve exited: $(cat "$BATS_TEST_TMPDIR/serve.log")"
		sleep 0.05
	done
	fail "cdisk-serve never listened: $(cat "$BATS_TEST_TMPDIR/serve.log")"
}

start_pool() {
	SERVE_SOCK=${POOL_SOCK:-$BATS_TEST_TMPDIR/run/pool.sock}
	serve_logged --pool pool "$@"
}

# pool_users LINES: users.conf for a pool: alice (uid 65534) with LINES
# (her quotas or limits), bob (uid 1) with none.
pool_users() {
	cat >users.conf <<-CONF
	[user alice]
	exports = alice/*
	uid = 65534
	$1
	[user bob]
	exports = bob/*
	uid = 1
	CONF
}

# start_users_pool: the pool served to users.conf's users, on a socket in
# SOCK_DIR (a folder their uids can enter).
start_users_pool() {
	POOL_SOCK=$SOCK_DIR/s.sock start_pool --users users.conf --group users \
		--socket "$SOCK_DIR/s.sock"
}

ctl() { # JSON-REQUEST: run_cdisk's, the reply in $output
	run_cdisk 0 socat -t 30 - "UNIX-CONNECT:$CTL" <<<"$1"
}

# wait_state STATE [SECONDS]: until cdisk-mirror status --json on d.cdisk
# says STATE (default: 60 s).
wait_state() {
	local i state
	for i in $(seq "$((${2:-60} * 5))"); do
		state=$(timeout 20 cdisk-mirror status --json d.cdisk 2>/dev/null | jq -r .state)
		[ "$state" = "$1" ] && return 0
		sleep 0.2
	done
	fail "the mirror never became $1 (last: $state); serve log: $(cat "$BATS_TEST_TMPDIR/serve.log" 2>/dev/null)"
}

# Stop it with SIGTERM (or the given signal) and return its exit status.
stop_serve() {
	local sig=${1:-TERM} rc=0
	[ -n "${SERVE_PID:-}" ] || return 0
	kill -"$sig" "$SERVE_PID" 2>/dev/null || true
	for _ in $(seq 600); do kill -0 "$SERVE_PID" 2>/dev/null || break; sleep 0.05; done
	if kill -0 "$SERVE_PID" 2>/dev/null; then
		# Why it hangs, for the failure's output: its log and its threads.
		tail -n 30 "$BATS_TEST_TMPDIR/serve.log" 2>/dev/null
		! command -v gdb >/dev/null ||
			timeout 60 gdb -p "$SERVE_PID" -batch -ex 'thread apply all bt' 2>&1 |
			grep -E '^(Thread|#)' | head -n 300
		kill -9 "$SERVE_PID" 2>/dev/null
		wait "$SERVE_PID" 2>/dev/null
		SERVE_PID=
		fail "cdisk-serve did not stop within 30 s of SIG$sig"
	fi
	wait "$SERVE_PID" || rc=$?
	SERVE_PID=
	return $rc
}

# assert_base_equals_disk DISK BASE-URI: the base, read through its own
# server, equals what the disk shows, byte for byte.
assert_base_equals_disk() {
	run_cdisk cdisk-io "$1" dump:"$BATS_TEST_TMPDIR/disk.img"
	run_cdisk target-io -d 8 "$2" get:"$BATS_TEST_TMPDIR/base.img"
	cmp "$BATS_TEST_TMPDIR/disk.img" "$BATS_TEST_TMPDIR/base.img" ||
		fail "the base differs from the disk"
}

# ---- real servers (tests/servers.sh) ----

# use_server NAME: start NAME once for the whole run and load its
# variables.  run-tests.sh stops every server when the run ends.
use_server() {
	: "${CDISK_SERVERS:=$BATS_RUN_TMPDIR/servers}"
	export CDISK_SERVERS
	timeout 180 "$TOP/tests/servers.sh" start "$1" 3>&- ||
		fail "cannot start the $1 server"
	# shellcheck disable=SC1090
	. "$CDISK_SERVERS/$1.env"
}

# Short timeouts, so that tests of unreachable servers end quickly.
quick_timeouts() {
	printf '[target]\ntimeout = %s\nretries = %s\n' "${1:-2}" "${2:-1}" >>"$CDISK_CONFIG"
}

# tgt_new_lun SIZE [tgtadm LUN params]: a new iSCSI target with one
# file-backed LUN 1, open to every initiator; sets TGT_URI, TGT_TID, TGT_IQN.
tgt_new_lun() {
	local size=$1 params=${2:-thin_provisioning=1}
	local adm=(tgtadm -C "$TGT_CONTROL" --lld iscsi)
	exec 8>"$CDISK_SERVERS/tgt.tid.lock"
	flock 8
	TGT_TID=$(($(cat "$CDISK_SERVERS/tgt.tid" 2>/dev/null || echo 0) + 1))
	echo "$TGT_TID" >"$CDISK_SERVERS/tgt.tid"
	exec 8>&-
	TGT_IQN=iqn.2026-11.org.cdisk.test:t$TGT_TID
	truncate -s "$size" "$BATS_TEST_TMPDIR/lun$TGT_TID.img"
	"${adm[@]}" --op new --mode target --tid "$TGT_TID" -T "$TGT_IQN"
	"${adm[@]}" --op new --mode logicalunit --tid "$TGT_TID" --lun 1 \
		-b "$BATS_TEST_TMPDIR/lun$TGT_TID.img"
	[ -z "$params" ] || "${adm[@]}" --op update --mode logicalunit --tid "$TGT_TID" \
		--lun 1 --params "$params"
	"${adm[@]}" --op bind --mode target --tid "$TGT_TID" -I ALL
	TGT_URI=iscsi://127.0.0.1:$TGT_PORT/$TGT_IQN/1
}

tgt_delete_lun() {
	tgtadm -C "$TGT_CONTROL" --lld iscsi --op delete --force --mode target \
		--tid "$1" 2>/dev/null || true
}

# s3_env: the S3 variables for radosgw, and a bucket of this test's own.
s3_env() {
	use_server rgw
	export AWS_ENDPOINT_URL=$RGW_ENDPOINT AWS_ACCESS_KEY_ID=$RGW_KEY
	export AWS_SECRET_ACCESS_KEY=$RGW_SECRET AWS_REGION=us-east-1
	BUCKET=cdisk-$(printf '%s' "$BATS_TEST_TMPDIR" | md5sum | cut -c1-12)
	s3_curl -X PUT "$RGW_ENDPOINT/$BUCKET" >/dev/null
}

s3_curl() {
	curl -sf -m 30 --aws-sigv4 "aws:amz:us-east-1:s3" --user "$RGW_KEY:$RGW_SECRET" \
		-H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$@"
}

# A listener that accepts connections and never answers: a host that
# does not respond.  Sets SILENT_PORT and SILENT_PID.
start_silent_server() {
	SILENT_PORT=$(free_port) || fail "no free port"
	socat TCP-LISTEN:"$SILENT_PORT",bind=127.0.0.1,reuseaddr,fork EXEC:'sleep 600' \
		3>&- &
	SILENT_PID=$!
	local i
	for i in $(seq 50); do
		ss -Hltn "sport = :$SILENT_PORT" | grep -q . && return 0
		sleep 0.1
	done
	fail "socat did not listen"
}

stop_silent_server() {
	[ -n "${SILENT_PID:-}" ] || return 0
	pkill -P "$SILENT_PID" 2>/dev/null || true
	kill "$SILENT_PID" 2>/dev/null || true
}

# A file of LEN random bytes, made once per run and shared (run-tests.sh
# gives the run's folder; bats runs each file on its own).
random_file() {
	local f=${CDISK_RUN_TMPDIR:-$BATS_RUN_TMPDIR}/random-$1
	if [ ! -f "$f" ]; then
		head -c "$1" /dev/urandom >"$f.tmp" && mv -f "$f.tmp" "$f"
	fi
	echo "$f"
}

# ---- a worse network on demand (tests/faultproxy.c) ----

# start_proxy HOST:PORT: a proxy in front of a server; sets PROXY_PORT,
# PROXY_CTL and PROXY_PID.  proxy_ctl COMMAND [ARG] changes the network.
start_proxy() {
	PROXY_CTL=$BATS_TEST_TMPDIR/proxy.ctl
	rm -f "$BATS_TEST_TMPDIR/proxy.port"
	faultproxy serve --to "$1" --port-file "$BATS_TEST_TMPDIR/proxy.port" \
		--control "$PROXY_CTL" 3>&- &
	PROXY_PID=$!
	for _ in $(seq 100); do
		[ -s "$BATS_TEST_TMPDIR/proxy.port" ] && [ -S "$PROXY_CTL" ] && break
		sleep 0.05
	done
	PROXY_PORT=$(cat "$BATS_TEST_TMPDIR/proxy.port") || fail "faultproxy did not start"
}

proxy_ctl() {
	faultproxy ctl "$PROXY_CTL" "$@" >/dev/null || fail "faultproxy refused '$*'"
}

# Bytes the proxy has passed on, both ways.
proxy_bytes() {
	faultproxy ctl "$PROXY_CTL" stats | awk '{ print $4 }'
}

stop_proxy() {
	[ -n "${PROXY_PID:-}" ] || return 0
	kill "$PROXY_PID" 2>/dev/null || true
	wait "$PROXY_PID" 2>/dev/null || true
	PROXY_PID=
}

# start_nbdkit_tcp ARGS...: nbdkit on a loopback TCP port; sets
# NBDKIT_PORT and NBDKIT_PID.
start_nbdkit_tcp() {
	NBDKIT_PORT=$(free_port) || fail "no free port"
	nbdkit --exit-with-parent -f -i 127.0.0.1 -p "$NBDKIT_PORT" "$@" \
		3>&- 2>"$BATS_TEST_TMPDIR/nbdkit.log" &
	NBDKIT_PID=$!
	wait_port "$NBDKIT_PORT" 5 ||
		fail "nbdkit did not listen: $(cat "$BATS_TEST_TMPDIR/nbdkit.log")"
}

# start_nbdkit_unix SOCKET ARGS...: nbdkit on a unix socket; sets NBDKIT_PID.
start_nbdkit_unix() {
	local sock=$1
	shift
	rm -f "$sock"
	nbdkit --exit-with-parent -f -U "$sock" "$@" 3>&- 2>>"$BATS_TEST_TMPDIR/nbdkit.log" &
	NBDKIT_PID=$!
	for _ in $(seq 100); do [ -S "$sock" ] && return 0; sleep 0.05; done
	fail "nbdkit did not listen: $(cat "$BATS_TEST_TMPDIR/nbdkit.log")"
}

stop_nbdkit() {
	[ -n "${NBDKIT_PID:-}" ] || return 0
	kill -9 "$NBDKIT_PID" 2>/dev/null || true
	wait "$NBDKIT_PID" 2>/dev/null || true
	NBDKIT_PID=
}

# freeze PID: SIGSTOP, then wait until every thread of PID has stopped.
# kill returns before the stop takes effect, and a thread woken by it
# can still read what reaches its socket in between.
freeze() {
	local t state stopped
	kill -STOP "$1"
	for _ in $(seq 200); do
		stopped=1
		for t in /proc/"$1"/task/*/stat; do
			state=$(sed 's/.*) //' "$t" 2>/dev/null | cut -d' ' -f1)
			case $state in T|t|'') ;; *) stopped=0 ;; esac
		done
		[ "$stopped" = 1 ] && return 0
		sleep 0.02
	done
	fail "process $1 did not stop"
}

# within PERCENT MEASURED EXPECTED: true when MEASURED is within PERCENT
# of EXPECTED.
within() {
	awk -v p="$1" -v m="$2" -v e="$3" 'BEGIN { d = m - e; if (d < 0) d = -d; exit !(d <= e * p / 100) }'
}

# make_certs DIR: a CA and certificates (tests/make-certs.sh says which).
make_certs() {
	"$TOP/tests/make-certs.sh" "$1" >/dev/null 2>&1 ||
		fail "certtool could not make certificates"
}

#!/usr/bin/env bats
# Statistics of cdisk-serve (issue 19, item 6): per export and per user,
# requests and bytes by kind, errors, latency quantiles and histograms, in
# control status, in cdisk-info --json of a served disk, and as Prometheus
# text from cdisk-info --metrics that promtool accepts.

bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
	run_cdisk cdisk-create --size 16M d.cdisk
}

teardown() {
	kill_holder
	stop_serve || true
	[ -z "${SOCK_DIR:-}" ] || rm -rf "$SOCK_DIR"
}

status() { # [DISK]: the control status (of one disk's export), in $output
	if [ -n "${1:-}" ]; then
		ctl '{"command":"status","disk":"'"$BATS_TEST_TMPDIR/$1"'"}'
	else
		ctl '{"command":"status"}'
	fi
	assert_equal "$(json_get .ok)" true
}

# qemu_writes N SIZE URI [AS...]: N writes of SIZE at consecutive offsets,
# each one NBD write, in one connection.
qemu_writes() {
	local n=$1 size=$2 uri=$3 cmds=() i
	shift 3
	for i in $(seq 0 $((n - 1))); do
		cmds+=(-c "write -P $((i % 250 + 1)) $((i * size)) $size")
	done
	run_cdisk 0 "$@" qemu-io -f raw "${cmds[@]}" "$uri"
}

qemu_reads() { # N SIZE URI
	local n=$1 size=$2 uri=$3 cmds=() i
	for i in $(seq 0 $((n - 1))); do
		cmds+=(-c "read $((i * size)) $size")
	done
	run_cdisk 0 qemu-io -f raw -r "${cmds[@]}" "$uri"
}

# assert_quantiles FILTER: FILTER's latency_us has 0 < p50 <= p99 <= p999.
assert_quantiles() {
	local p50 p99 p999
	p50=$(json_get "$1.latency_us.p50")
	p99=$(json_get "$1.latency_us.p99")
	p999=$(json_get "$1.latency_us.p999")
	assert_num "$p50" -gt 0
	assert_num "$p50" -le "$p99"
	assert_num "$p99" -le "$p999"
}

# assert_histogram FILTER IO: FILTER's buckets are cumulative, one for
# each bound of IO's latency_le_us, and end at the request count.
assert_histogram() {
	local n
	n=$(json_get "$1.requests")
	assert_equal "$(json_get "$2.latency_le_us | length")" 19
	assert_equal "$(json_get "$1.latency_buckets | length")" 19
	assert_equal "$(json_get "[$1.latency_buckets as \$b | range(1; 19) | \$b[.] >= \$b[. - 1]] | all")" true
	assert_equal "$(json_get "$1.latency_buckets[-1]")" "$n"
}

@test "status counts a known load exactly: requests and bytes by kind, ordered quantiles, the histogram" {
	start_serve --export d=d.cdisk
	CTL=$SERVE_RUN/cdisk-serve.$SERVE_PID.ctl
	status
	# Nothing asked yet: no op, a depth of 0.
	assert_equal "$(json_get '.exports[0].io.ops | length')" 0
	assert_equal "$(json_get '.exports[0].io.queue_depth')" 0
	qemu_writes 12 65536 "$NBD"
	qemu_reads 7 16384 "$NBD"
	status
	local e='.exports[0].io'
	assert_equal "$(json_get "$e.ops.write.requests")" 12
	assert_equal "$(json_get "$e.ops.write.bytes")" $((12 * 65536))
	assert_equal "$(json_get "$e.ops.write.errors")" 0
	assert_equal "$(json_get "$e.ops.read.requests")" 7
	assert_equal "$(json_get "$e.ops.read.bytes")" $((7 * 16384))
	assert_equal "$(json_get "$e.ops.read.errors")" 0
	assert_equal "$(json_get "$e | has(\"ops\") and (.ops | has(\"trim\") | not)")" true
	assert_quantiles "$e.ops.write"
	assert_quantiles "$e.ops.read"
	assert_histogram "$e.ops.write" "$e"
	assert_histogram "$e.ops.read" "$e"
	# Everything answered: nothing queued; no limit, no wait.
	assert_equal "$(json_get "$e.queue_depth")" 0
	assert_equal "$(json_get "$e.limit_waits")" 0
	assert_equal "$(json_get '.exports[0].pool')" false
	# The same, for the one disk.
	status d.cdisk
	assert_equal "$(json_get '.exports | length')" 1
	assert_equal "$(json_get '.exports[0].io.ops.write.requests')" 12
	assert_equal "$(json_get '.users | length')" 0
}

@test "cdisk-info on a served disk shows its export and statistics (--json: .export, .io)" {
	start_serve --export d=d.cdisk
	qemu_writes 5 65536 "$NBD"
	run_cdisk 0 cdisk-info --json d.cdisk
	assert_equal "$(json_get .export)" d
	assert_equal "$(json_get .io.ops.write.requests)" 5
	assert_equal "$(json_get .io.ops.write.bytes)" $((5 * 65536))
	assert_quantiles .io.ops.write
	assert_equal "$(json_get .uuid | wc -c)" 37
	run_cdisk 0 cdisk-info d.cdisk
	assert_line --regexp '^served as: +d \(0 connections, queue depth 0, 0 waits for limits\)$'
	assert_line --regexp '^  write +5 requests, 320 KiB, 0 errors; latency p50 [0-9]+ us, p99 [0-9]+ us, p999 [0-9]+ us$'
	# A disk no one serves has neither.
	stop_serve
	run_cdisk 0 cdisk-info --json d.cdisk
	assert_equal "$(json_get 'has("io") or has("export")')" false
}

@test "failed requests count as errors, without bytes: a write to a read-only export, requests past the end" {
	start_serve --read-only --export d=d.cdisk
	CTL=$SERVE_RUN/cdisk-serve.$SERVE_PID.ctl
	run_cdisk 0 nbd-evil "$SERVE_SOCK" readonly-write d
	run_cdisk 0 nbd-evil "$SERVE_SOCK" past-end d
	qemu_reads 3 4096 "$NBD"
	status
	local e='.exports[0].io.ops'
	assert_equal "$(json_get "$e.write.requests")" 1
	assert_equal "$(json_get "$e.write.errors")" 1
	assert_equal "$(json_get "$e.write.bytes")" 0
	assert_equal "$(json_get "$e.trim.errors")" 1
	# One read past the end failed; three worked.
	assert_equal "$(json_get "$e.read.requests")" 4
	assert_equal "$(json_get "$e.read.errors")" 1
	assert_equal "$(json_get "$e.read.bytes")" $((3 * 4096))
}

# start_two_users [CDISK-SERVE-ARGS...]: two users told apart by their uid
# on the unix socket, each with an export of their own; u1 has limits.
start_two_users() {
	run_cdisk cdisk-create --size 16M a.cdisk
	run_cdisk cdisk-create --size 16M b.cdisk
	cat >users.conf <<-CONF
	[user u1]
	exports = a
	uid = 65534
	iops = 100000
	connections = 8
	[user u2]
	exports = b
	uid = 1
	CONF
	SOCK_DIR=$(mktemp -d /tmp/cdisk-stats.XXXXXX)
	chmod 755 "$SOCK_DIR"
	export SERVE_EXPORT=a
	start_serve_as_users --export a=a.cdisk --export b=b.cdisk "$@" --users users.conf \
		--group users --socket "$SOCK_DIR/s.sock"
}

# cdisk-serve ARGS, ready once it says where it serves (its own probe
# would need a user of its own).
start_serve_as_users() {
	SERVE_SOCK=$SOCK_DIR/s.sock
	serve_logged "$@"
}

U1=(setpriv --reuid=65534 --regid=100 --clear-groups)
U2=(setpriv --reuid=1 --regid=100 --clear-groups)

@test "per-user statistics: two users by uid, each with their own counts and limits" {
	start_two_users
	qemu_writes 3 65536 "nbd+unix:///a?socket=$SERVE_SOCK" "${U1[@]}"
	qemu_writes 9 4096 "nbd+unix:///b?socket=$SERVE_SOCK" "${U2[@]}"
	status
	local u1='.users[] | select(.name == "user:u1")' u2='.users[] | select(.name == "user:u2")'
	assert_equal "$(json_get "$u1 | .io.ops.write.requests")" 3
	assert_equal "$(json_get "$u1 | .io.ops.write.bytes")" $((3 * 65536))
	assert_equal "$(json_get "$u2 | .io.ops.write.requests")" 9
	assert_equal "$(json_get "$u2 | .io.ops.write.bytes")" $((9 * 4096))
	assert_quantiles "$u1 | .io.ops.write"
	assert_histogram "$u2 | .io.ops.write" "$u2 | .io"
	assert_equal "$(json_get "$u1 | .limits.iops")" 100000
	assert_equal "$(json_get "$u1 | .limits.connections")" 8
	assert_equal "$(json_get "$u2 | .limits.iops")" 0
	assert_equal "$(json_get "$u1 | [.connections, .queued, .inflight, .io.queue_depth] | @csv")" 0,0,0,0
	# The exports count the same requests.
	assert_equal "$(json_get '.exports[] | select(.name == "a") | .io.ops.write.requests')" 3
	assert_equal "$(json_get '.exports[] | select(.name == "b") | .io.ops.write.requests')" 9
	# A connection held open shows.
	timeout 30 "${U2[@]}" qemu-io -f raw -c 'sleep 4000' "nbd+unix:///b?socket=$SERVE_SOCK" \
		>/dev/null 2>&1 3>&- &
	local held=$!
	for _ in $(seq 100); do
		status
		[ "$(json_get "$u2 | .connections")" = 1 ] && break
		sleep 0.05
	done
	assert_equal "$(json_get "$u2 | .connections")" 1
	wait "$held"
}

@test "waits for a limit are counted for the user held back, with their time; queue depth shows" {
	run_cdisk cdisk-create --size 16M a.cdisk
	run_cdisk cdisk-create --size 16M b.cdisk
	cat >users.conf <<-CONF
	[user u1]
	exports = a
	uid = 65534
	iops = 50
	burst = 100ms
	[user u2]
	exports = b
	uid = 1
	CONF
	SOCK_DIR=$(mktemp -d /tmp/cdisk-stats.XXXXXX)
	chmod 755 "$SOCK_DIR"
	start_serve_as_users --export a=a.cdisk --export b=b.cdisk --users users.conf \
		--group users --socket "$SOCK_DIR/s.sock"
	# 30 writes at 50 a second, 5 of them in the burst: about 0.5 s of
	# waits.
	qemu_writes 30 4096 "nbd+unix:///a?socket=$SERVE_SOCK" "${U1[@]}"
	qemu_writes 30 4096 "nbd+unix:///b?socket=$SERVE_SOCK" "${U2[@]}"
	status
	local u1='.users[] | select(.name == "user:u1") | .io' u2='.users[] | select(.name == "user:u2") | .io'
	# 30 writes one at a time at 50/s, the first 5 from the burst: the
	# other 25 wait about 20 ms each.  A stall refills the burst (5 fewer
	# waits, 100 ms less each time): one request of this user was seen to
	# take 0.1 to 0.9 s now and then, with the build of before 2026-12-02
	# too (4 runs in 8), so the bounds leave room for two.  Counting
	# broken gives 0.
	assert_num "$(json_get "$u1.limit_waits")" -ge 10
	assert_num "$(json_get "$u1.limit_wait_ms | floor")" -ge 150
	assert_equal "$(json_get "$u2.limit_waits")" 0
	assert_equal "$(json_get "$u1.ops.write.requests")" 30
	# A request's latency includes its wait.
	assert_num "$(json_get "$u1.ops.write.latency_us.p50")" -ge 10000
	run_cdisk 0 cdisk-info --metrics --control "$CTL"
	assert_line --regexp '^cdisk_user_limit_waits_total\{user="user:u1"\} ([12][0-9]|30)$'
	assert_line --regexp '^cdisk_user_limit_wait_seconds_total\{user="user:u1"\} (0\.[1-9]|[1-9])[0-9.]*$'
	assert_line 'cdisk_user_limit_waits_total{user="user:u2"} 0'
	# 40 writes sent at once wait their turns: the depth shows, for the
	# user and for the export, and falls back to 0.
	local cmds=() i
	for i in $(seq 0 39); do cmds+=(-c "aio_write $((i * 4096)) 4k"); done
	timeout 60 "${U1[@]}" qemu-io -f raw "${cmds[@]}" -c aio_flush \
		"nbd+unix:///a?socket=$SERVE_SOCK" >/dev/null 2>&1 3>&- &
	local burst=$!
	for _ in $(seq 100); do
		status
		[ "$(json_get "$u1.queue_depth")" -ge 10 ] && break
		sleep 0.02
	done
	assert_num "$(json_get "$u1.queue_depth")" -ge 10
	assert_num "$(json_get '.users[] | select(.name == "user:u1") | .queued')" -ge 5
	assert_num "$(json_get '.exports[] | select(.name == "a") | .io.queue_depth')" -ge 10
	run_cdisk 0 cdisk-info --metrics a.cdisk
	assert_line --regexp '^cdisk_export_queue_depth\{export="a"\} [1-9][0-9]*$'
	wait "$burst" || fail "the writes failed"
	status
	assert_equal "$(json_get "$u1.queue_depth")" 0
	assert_equal "$(json_get '.exports[] | select(.name == "a") | .io.queue_depth')" 0
}

# promtool's verdict on the text in FILE: nothing to say, exit 0 ($output
# stays the text's).
assert_promtool_accepts() {
	promtool check metrics <"$1" >promtool.out 2>&1 ||
		fail "promtool refuses $1: $(cat promtool.out)"
	[ ! -s promtool.out ] || fail "promtool has lint for $1: $(cat promtool.out)"
}

@test "cdisk-info --metrics: Prometheus text that promtool accepts, of a served disk and of a whole server" {
	run_cdisk cdisk-create --size 4M q.cdisk
	start_two_users --export 'q"x\y=q.cdisk'
	qemu_writes 4 65536 "nbd+unix:///a?socket=$SERVE_SOCK" "${U1[@]}"
	qemu_writes 2 4096 "nbd+unix:///b?socket=$SERVE_SOCK" "${U2[@]}"
	# One served disk: its export only.
	run_cdisk 0 cdisk-info --metrics a.cdisk
	printf '%s\n' "$output" >disk.prom
	assert_promtool_accepts disk.prom
	assert_line '# TYPE cdisk_export_requests_total counter'
	assert_line 'cdisk_export_requests_total{export="a",op="write"} 4'
	assert_line 'cdisk_export_bytes_total{export="a",op="write"} 262144'
	assert_line 'cdisk_export_errors_total{export="a",op="write"} 0'
	assert_line '# TYPE cdisk_export_request_duration_seconds histogram'
	assert_line 'cdisk_export_request_duration_seconds_bucket{export="a",op="write",le="+Inf"} 4'
	assert_line 'cdisk_export_request_duration_seconds_count{export="a",op="write"} 4'
	assert_line --regexp '^cdisk_export_request_duration_seconds_bucket\{export="a",op="write",le="1e-05"\} [0-4]$'
	assert_line 'cdisk_export_queue_depth{export="a"} 0'
	refute_output --partial 'export="b"'
	refute_output --partial 'cdisk_user_'
	# The whole server: every export, the odd name escaped, and the users.
	run_cdisk 0 cdisk-info --metrics --control "$CTL"
	printf '%s\n' "$output" >server.prom
	assert_promtool_accepts server.prom
	assert_line 'cdisk_export_requests_total{export="b",op="write"} 2'
	assert_line 'cdisk_export_connections{export="q\"x\\y"} 0'
	assert_line 'cdisk_user_requests_total{user="user:u1",op="write"} 4'
	assert_line 'cdisk_user_bytes_total{user="user:u2",op="write"} 8192'
	assert_line 'cdisk_user_request_duration_seconds_count{user="user:u2",op="write"} 2'
	assert_line 'cdisk_user_limit_iops{user="user:u1"} 100000'
	refute_line --partial 'cdisk_user_limit_iops{user="user:u2"}'
	# --control --json: the status itself.
	run_cdisk 0 cdisk-info --json --control "$CTL"
	assert_equal "$(json_get '[.users[].name] | sort | join(",")')" "(background),user:u1,user:u2"
	assert_equal "$(json_get '.exports[] | select(.name == "a") | .io.ops.write.requests')" 4
}


@test "a pool's images are in status after the fixed exports, with their statistics" {
	mkdir -p pool/alice
	run_cdisk cdisk-create --size 16M pool/alice/a.cdisk
	SOCK_DIR=$(mktemp -d /tmp/cdisk-stats.XXXXXX)
	POOL_SOCK=$SOCK_DIR/s.sock start_pool --export d=d.cdisk --socket "$SOCK_DIR/s.sock"
	qemu_writes 6 65536 "nbd+unix:///alice/a?socket=$SERVE_SOCK"
	status
	assert_equal "$(json_get '[.exports[].name] | join(",")')" d,alice/a
	assert_equal "$(json_get '[.exports[].pool] | map(tostring) | join(",")')" false,true
	assert_equal "$(json_get '.exports[1].io.ops.write.requests')" 6
	assert_equal "$(json_get '.exports[0].io.ops | length')" 0
	run_cdisk 0 cdisk-info --json pool/alice/a.cdisk
	assert_equal "$(json_get .export)" alice/a
	assert_equal "$(json_get .io.ops.write.bytes)" $((6 * 65536))
	run_cdisk 0 cdisk-info --metrics pool/alice/a.cdisk
	assert_line 'cdisk_export_requests_total{export="alice/a",op="write"} 6'
}

@test "--metrics without a server: not served (exit 6), held by a program that is no server (exit 4), bad usage" {
	run_cdisk 6 cdisk-info --metrics d.cdisk
	assert_error cdisk-info "^cdisk-info: 'd.cdisk' is not served: no statistics to show$"
	assert_output ""
	run_cdisk 6 cdisk-info --metrics nothere.cdisk
	assert_error cdisk-info "nothere.cdisk"
	hold_disk d.cdisk
	run_cdisk 4 cdisk-info --metrics d.cdisk
	assert_error cdisk-info "^cdisk-info: 'd.cdisk' is in use by pid $HOLD_PID, which is not a server: no statistics to show$"
	kill_holder
	run_cdisk 6 cdisk-info --metrics --control "$BATS_TEST_TMPDIR/none.ctl"
	assert_error cdisk-info "^cdisk-info: control socket '.*none.ctl': No such file or directory$"
	run_cdisk 2 cdisk-info --metrics --json d.cdisk
	assert_usage_error cdisk-info "^cdisk-info: --metrics and --json are two formats: give one$"
	run_cdisk 2 cdisk-info --metrics --control x.ctl d.cdisk
	assert_usage_error cdisk-info "^cdisk-info: --control shows a whole server: give no disk with it$"
	run_cdisk 2 cdisk-info --control x.ctl
	assert_usage_error cdisk-info "^cdisk-info: --control goes with --metrics or --json$"
	run_cdisk 2 cdisk-info --metrics --check d.cdisk
	assert_usage_error cdisk-info "^cdisk-info: --metrics goes with neither --check nor --pool$"
	run_cdisk 2 cdisk-info --metrics
	assert_usage_error cdisk-info "missing argument"
}

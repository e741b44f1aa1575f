#!/usr/bin/env bats
# cdisk-probe against real servers, with the network made worse by the
# tests' own proxy: what it measures must match what was injected, and
# the verdict must follow the thresholds.

bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
}

teardown() {
	stop_proxy
	stop_nbdkit
	stop_silent_server
}

# A probe of nbdkit's memory plugin behind the proxy; sets URI.
nbd_behind_proxy() {
	start_nbdkit_tcp memory 256M
	start_proxy "127.0.0.1:$NBDKIT_PORT"
	URI=nbd://127.0.0.1:$PROXY_PORT
}

@test "probe: bad options get one line and exit 2" {
	run_cdisk 2 cdisk-probe
	assert_usage_error cdisk-probe "missing argument"
	run_cdisk 2 cdisk-probe --max-loss 150 nbd://127.0.0.1:1
	assert_usage_error cdisk-probe "a percentage is at most 100"
	run_cdisk 2 cdisk-probe --max-rtt fast nbd://127.0.0.1:1
	assert_usage_error cdisk-probe "invalid --max-rtt 'fast'"
	run_cdisk 2 cdisk-probe --ceph-health grey nbd://127.0.0.1:1
	assert_usage_error cdisk-probe "--ceph-health 'grey'"
	run_cdisk 2 cdisk-probe --count 3 nbd://127.0.0.1:1
	assert_usage_error cdisk-probe "--count goes with --watch"
	run_cdisk 2 cdisk-probe --pings 0x nbd://127.0.0.1:1
	assert_usage_error cdisk-probe "invalid numeric value for --pings: '0x'"
	run_cdisk 2 cdisk-probe --read-size 0 nbd://127.0.0.1:1
	assert_usage_error cdisk-probe "--read-size must not be 0"
	run_cdisk 2 cdisk-probe 'nbd://[bad'
	assert_error cdisk-probe "invalid URI"
}

@test "probe: a healthy target, as a table and as JSON" {
	nbd_behind_proxy
	run_cdisk 0 cdisk-probe "$URI"
	assert_line --regexp '^round trip +[0-9.]+ ms \(min [0-9.]+, p95 [0-9.]+, max [0-9.]+\) +100 ms +ok$'
	assert_line --regexp '^read rate +[0-9.]+ MiB/s \(16.0 MiB\) +none +ok$'
	assert_line 'verdict: healthy'
	run_cdisk 0 cdisk-probe -q --no-read "$URI"
	assert_output ""
	run_cdisk 0 cdisk-probe --json "$URI"
	assert_equal "$(jq -r .schema_version <<<"$output")" 1
	assert_equal "$(jq -r .verdict <<<"$output")" healthy
	assert_num "$(jq -r .sent <<<"$output")" -ge 20
	assert_equal "$(jq -r .lost <<<"$output")" 0
	assert_equal "$(jq -r .read_bytes <<<"$output")" 16777216
	jq -e '.rtt_min_ms <= .rtt_mean_ms and .rtt_mean_ms <= .rtt_max_ms and
		.rtt_p95_ms <= .rtt_max_ms and .load_delay_ms != null' <<<"$output"
}

# assert_delay_measured MS: the probe's JSON in $output measured an
# injected delay of MS.  The fastest of the pings is within 20% of it: a
# loaded machine only adds its own scheduling delays, to some pings, so
# the minimum is what the network took; no ping is faster than the delay.
assert_delay_measured() {
	local ms=$1 min mean
	min=$(jq -r .rtt_min_ms <<<"$output")
	mean=$(jq -r .rtt_mean_ms <<<"$output")
	within 20 "$min" "$ms" || fail "injected $ms ms, measured a fastest ping of $min ms"
	awk -v m="$mean" -v e="$ms" 'BEGIN { exit !(m >= e * 0.98) }' ||
		fail "injected $ms ms, measured a mean of $mean ms"
}

@test "probe: injected delays of 10, 50 and 100 ms are measured within 20%" {
	nbd_behind_proxy
	for ms in 10 50 100; do
		proxy_ctl delay "$ms"
		run_cdisk 0 cdisk-probe --json --no-read --pings 10 --max-rtt none "$URI"
		assert_delay_measured "$ms"
	done
}

@test "probe: delay through iSCSI (TEST UNIT READY) is measured within 20%" {
	use_server tgt
	tgt_new_lun 64M
	start_proxy "127.0.0.1:$TGT_PORT"
	proxy_ctl delay 50
	run_cdisk 0 cdisk-probe --json --pings 10 --max-rtt none --max-load-delay none \
		"iscsi://127.0.0.1:$PROXY_PORT/$TGT_IQN/1"
	assert_delay_measured 50
	tgt_delete_lun "$TGT_TID"
}

@test "probe: delay to radosgw (S3 HEAD of the manifest) is measured within 20%" {
	s3_env
	run_cdisk target-io "s3://$BUCKET/probe" create:16M
	start_proxy "${RGW_ENDPOINT#http://}"
	export AWS_ENDPOINT_URL=http://127.0.0.1:$PROXY_PORT
	proxy_ctl delay 50
	run_cdisk 0 cdisk-probe --json --no-read --pings 10 --max-rtt none "s3://$BUCKET/probe"
	assert_delay_measured 50
}

@test "probe: connections cut or paused mid-probe are counted lost, then reconnected" {
	nbd_behind_proxy
	timeout 60 cdisk-probe --json --no-read --pings 40 --interval 50 --timeout 1 --max-loss none \
		"$URI" >cut.json 3>&- &
	pid=$!
	sleep 0.7
	proxy_ctl cut
	wait "$pid" || true
	cat cut.json
	jq -e '.lost >= 1 and .answered >= 30 and .verdict == "healthy"' cut.json
	timeout 60 cdisk-probe --json --no-read --pings 40 --interval 50 --timeout 1 --max-loss 1 \
		"$URI" >pause.json 3>&- &
	pid=$!
	sleep 0.7
	proxy_ctl pause
	sleep 1.5
	proxy_ctl resume
	status=0
	wait "$pid" || status=$?
	cat pause.json
	[ "$status" = 9 ] || fail "exit $status, expected 9 (degraded by loss)"
	jq -e '.lost >= 1 and .answered >= 20 and (.reason | test("lost"))' pause.json
}

@test "probe: a bandwidth limit is measured within 20%" {
	nbd_behind_proxy
	proxy_ctl rate 8000000
	run_cdisk 0 cdisk-probe --json --pings 5 "$URI"
	rate=$(jq -r .read_rate <<<"$output")
	within 20 "$rate" 8000000 || fail "limited to 8000000 B/s, measured $rate"
}

@test "probe: the verdict flips as conditions cross the thresholds" {
	nbd_behind_proxy
	proxy_ctl delay 10
	run_cdisk 0 cdisk-probe --no-read --pings 5 --max-rtt 30 "$URI"
	assert_line 'verdict: healthy'
	proxy_ctl delay 50
	run_cdisk 9 cdisk-probe --no-read --pings 5 --max-rtt 30 "$URI"
	assert_line --regexp '^verdict: degraded: round trip 5[0-9.]+ ms is over 30.0 ms$'
	assert_line --regexp '^round trip .* OVER$'
	# jitter
	proxy_ctl delay 5
	proxy_ctl jitter 60
	run_cdisk 9 cdisk-probe --json --no-read --pings 15 --max-jitter 5 "$URI"
	jq -e '.verdict == "degraded" and (.reason | test("jitter"))' <<<"$output"
	proxy_ctl jitter 0
	proxy_ctl delay 0
	# bandwidth
	proxy_ctl rate 4000000
	run_cdisk 9 cdisk-probe --json --pings 5 --read-size 8M --min-read-rate 20M "$URI"
	jq -e '.verdict == "degraded" and (.reason | test("read rate"))' <<<"$output"
	run_cdisk 0 cdisk-probe --pings 5 --read-size 8M --min-read-rate 2M "$URI"
	proxy_ctl rate 0
	# loss: answers that never come (the handshake's pass).  Half of 20
	# lost on average; all 20 answered once in a million runs.
	proxy_ctl drop 0.5 2000
	run_cdisk 9 cdisk-probe --json --no-read --pings 20 --timeout 1 --max-time 40 "$URI"
	jq -e '.verdict == "degraded" and .lost > 0 and (.reason | test("lost"))' <<<"$output"
}

@test "probe: a stopped server is unreachable within the timeout" {
	nbd_behind_proxy
	stop_nbdkit
	start=$SECONDS
	run_cdisk 3 cdisk-probe --timeout 2 "$URI"
	[ $((SECONDS - start)) -le 4 ] || fail "took $((SECONDS - start)) s"
	assert_line --regexp '^verdict: unreachable: '
	# A host that accepts and never answers.
	start_silent_server
	start=$SECONDS
	run_cdisk 3 cdisk-probe --json --timeout 2 "nbd://127.0.0.1:$SILENT_PORT"
	[ $((SECONDS - start)) -le 5 ] || fail "took $((SECONDS - start)) s"
	assert_equal "$(jq -r .verdict <<<"$output")" unreachable
	assert_equal "$(jq -r .exit_code <<<"$output")" 3
}

@test "probe: a server whose answers never come back is unreachable" {
	nbd_behind_proxy
	# Connections are made; nothing comes back on them.
	proxy_ctl drop 1
	start=$SECONDS
	run_cdisk 3 cdisk-probe --timeout 1 --pings 3 "$URI"
	[ $((SECONDS - start)) -le 4 ] || fail "took $((SECONDS - start)) s"
	assert_line --regexp "^verdict: unreachable: .*no answer within 1 s"
}

@test "probe: the whole probe stays within --max-time" {
	nbd_behind_proxy
	proxy_ctl delay 300
	start=$SECONDS
	run_cdisk '?' cdisk-probe --json --pings 100 --max-time 2 --timeout 2 "$URI"
	[ $((SECONDS - start)) -le 6 ] || fail "took $((SECONDS - start)) s"
	assert_num "$(jq -r .sent <<<"$output")" -lt 100
}

@test "probe: busy answers (HTTP 429 with Retry-After) make it degraded" {
	use_server nginx
	head -c 1M /dev/urandom >"$NGINX_ROOT/probe-busy.img"
	sleep 1   # a fresh second for nginx's request limit
	run_cdisk 9 cdisk-probe --json --no-read --pings 10 "$NGINX_URL/busy/probe-busy.img"
	jq -e '.busy > 0 and .retry_after_seconds == 3 and (.reason | test("busy"))' <<<"$output"
	# Without the limit, the same object is healthy.
	run_cdisk 0 cdisk-probe --no-read --pings 5 "$NGINX_URL/probe-busy.img"
}

@test "probe: Ceph cluster health and OSD latency come from the monitors" {
	use_server ceph
	export CEPH_CONF
	image=probe$(printf '%s' "$BATS_TEST_TMPDIR" | md5sum | cut -c1-10)
	run_cdisk target-io "rbd:rbd/$image" create:64M
	run_cdisk '?' cdisk-probe --json --pings 5 "rbd:rbd/$image"
	health=$(jq -r .ceph.health <<<"$output")
	[[ "$health" =~ ^HEALTH_(OK|WARN|ERR)$ ]] || fail "health '$health'"
	jq -e '.ceph.osds >= 1 and .ceph.write_latency_ms >= 0 and .ceph.read_latency_ms > 0' <<<"$output"
	# The test cluster runs no manager: no "osd perf" figures, and no wait.
	jq -e '.ceph.commit_latency_ms == null and .seconds < 10' <<<"$output"
	# Only HEALTH_OK passes --ceph-health ok.
	if [ "$health" = HEALTH_OK ]; then want=0; else want=9; fi
	run_cdisk "$want" cdisk-probe --json --pings 5 --ceph-health ok "rbd:rbd/$image"
	run_cdisk 0 cdisk-probe --pings 5 --ceph-health err --max-rtt none \
		--max-load-delay none --max-osd-latency none "rbd:rbd/$image"
	assert_line --regexp '^ceph health +HEALTH_'
	timeout 30 rbd rm "rbd/$image" >/dev/null 2>&1 || true
}

@test "probe: --watch prints one line per round" {
	nbd_behind_proxy
	run_cdisk 0 cdisk-probe --watch 1 --count 3 --no-read --pings 3 "$URI"
	assert_num "${#lines[@]}" -eq 3
	assert_line --index 2 --regexp '^[0-9-]+ [0-9:]+ healthy +rtt [0-9.]+/'
	proxy_ctl delay 40
	run_cdisk 9 cdisk-probe --watch 1 --count 2 --json --no-read --pings 3 --max-rtt 20 "$URI"
	assert_num "${#lines[@]}" -eq 2
	jq -e -s 'length == 2 and all(.verdict == "degraded")' <<<"$output"
}

@test "probe: a disk's base; never written, and writes only to scratch" {
	nbd_behind_proxy
	run_cdisk 0 cdisk-create --base "$URI" d.cdisk
	run_cdisk 0 cdisk-probe --json --pings 5 d.cdisk
	assert_equal "$(jq -r .target <<<"$output")" "$URI"
	run_cdisk 2 cdisk-probe --write-scratch d.cdisk
	assert_error cdisk-probe "a disk's base is never scratch"
	# Named as scratch, a target is written and timed.
	run_cdisk 0 cdisk-probe --json --pings 5 --read-size 8M --write-scratch "$URI"
	jq -e '.write_rate > 0' <<<"$output"
	run_cdisk 2 cdisk-probe --no-read --write-scratch "$URI"
	assert_usage_error cdisk-probe "drop --no-read"
}

@test "probe: a read-only scratch target, a disk without base, a missing disk" {
	start_nbdkit_tcp -r memory 16M
	run_cdisk 5 cdisk-probe --write-scratch "nbd://127.0.0.1:$NBDKIT_PORT"
	assert_error cdisk-probe "read-only"
	run_cdisk 0 cdisk-create --size 16M plain.cdisk
	run_cdisk 2 cdisk-probe plain.cdisk
	assert_error cdisk-probe "'plain.cdisk' has no base to probe"
	run_cdisk 6 cdisk-probe missing.cdisk
	assert_error cdisk-probe "missing.cdisk"
}

@test "probe: thresholds come from the configuration file" {
	nbd_behind_proxy
	proxy_ctl delay 20
	printf '[probe]\nmax_rtt = 10\npings = 4\n' >>"$CDISK_CONFIG"
	run_cdisk 9 cdisk-probe --json --no-read "$URI"
	jq -e '.limits.max_rtt_ms == 10 and .sent == 4' <<<"$output"
	# The command line wins over the file.
	run_cdisk 0 cdisk-probe --no-read --max-rtt 40 "$URI"
	printf 'max_loss = 200\n' >>"$CDISK_CONFIG"
	run_cdisk 2 cdisk-probe --no-read "$URI"
	assert_error cdisk-probe "max_loss must be a percentage from 0 to 100, or none"
}

@test "probe: a server that fails requests is degraded, never healthy" {
	start_nbdkit_tcp --filter=error memory 64M error-pread=EIO error-pread-rate=0.3
	run_cdisk 9 cdisk-probe --json --pings 20 --read-size 8M "nbd://127.0.0.1:$NBDKIT_PORT"
	jq -e '.verdict == "degraded" and .lost > 0 and .refused == .lost' <<<"$output"
	# Every read refused: the server is there, and of no use.
	stop_nbdkit
	start_nbdkit_tcp --filter=error memory 64M error-pread=EIO error-pread-rate=1
	run_cdisk 9 cdisk-probe --no-read --pings 5 "nbd://127.0.0.1:$NBDKIT_PORT"
	assert_line --regexp '^verdict: degraded: 5 of 5 requests failed: .*Input/output error'
	# -vv names every lost ping; -v alone does not.
	run_cdisk 9 cdisk-probe -vv --no-read --pings 5 "nbd://127.0.0.1:$NBDKIT_PORT"
	[ "$(grep -c '^cdisk-probe: debug: ping lost: .*Input/output error' <<<"$stderr")" = 5 ] ||
		fail "-vv does not name the lost pings"
	run_cdisk 9 cdisk-probe -v --no-read --pings 5 "nbd://127.0.0.1:$NBDKIT_PORT"
	[[ "$stderr" != *"debug:"* ]] || fail "-v printed debug lines"
}

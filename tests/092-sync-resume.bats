#!/usr/bin/env bats
# cdisk-sync killed with -9 at any moment: the next run sends again at most
# max(64 MiB, 2 s of work at the rate the sync went), with and without a
# rate limit, and nothing is recorded clean that the base does not hold.

bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
}

teardown() {
	stop_nbdkit
}

MIB=1048576
DIRTY_MIB=200

dirty_bytes() {
	cdisk-info --json "$1" | jq -r '.blocks_dirty * .block_size'
}

# A disk over BASE-URI, which is base.raw (pattern 1), whose first
# DIRTY_MIB MiB are written with pattern 8 (also into changes.raw): every
# MiB of the base shows whether it was sent.
dirty_disk() {   # BASE-URI
	run_cdisk cdisk-create --base "$1" d.cdisk
	run_cdisk cdisk-io d.cdisk "w:0:${DIRTY_MIB}M:8" f
	patfile changes.raw w 0 "${DIRTY_MIB}M" 8
	assert_equal "$(dirty_bytes d.cdisk)" "$((DIRTY_MIB * MIB))"
}

# Bytes of the changes the base already holds, by whole MiB.
sent_bytes() {
	local i n=0
	for ((i = 0; i < DIRTY_MIB; i++)); do
		cmp -s -i "$((i * MIB))" -n "$MIB" base.raw changes.raw && n=$((n + 1))
	done
	echo $((n * MIB))
}

# kill_sync_at MIB ARGS...: cdisk-sync ARGS d.cdisk, killed with -9 once
# the base holds the changes' MiB number MIB (the extents go out in
# order, give or take the requests under way); sets ELAPSED_MS (start to
# kill).
kill_sync_at() {
	local at=$1 t0 pid
	shift
	t0=$(date +%s%N)
	cdisk-sync "$@" d.cdisk 3>&- 2>"$BATS_TEST_TMPDIR/sync.err" &
	pid=$!
	until cmp -s -i "$((at * MIB))" -n "$MIB" base.raw changes.raw; do
		kill -0 "$pid" 2>/dev/null ||
			fail "cdisk-sync ended before the kill: $(cat "$BATS_TEST_TMPDIR/sync.err")"
		sleep 0.05
	done
	kill -9 "$pid"
	ELAPSED_MS=$((($(date +%s%N) - t0) / 1000000))
	wait "$pid" 2>/dev/null || true
}

# check_resend BOUND-BYTES: after the kill, nothing is wrongly clean; the
# next run sends exactly what is dirty, and of that at most BOUND bytes
# (plus one 4 MiB request: whole MiB are counted) the base already had.
check_resend() {
	local bound=$1 sent left resent
	run_cdisk cdisk-io d.cdisk check-clean
	sent=$(sent_bytes)
	left=$(dirty_bytes d.cdisk)
	[ "$sent" -gt 0 ] && [ "$left" -gt 0 ] ||
		fail "not killed mid-sync: $sent bytes sent, $left left"
	run_cdisk cdisk-sync --json d.cdisk
	assert_equal "$(json_get .bytes)" "$left"
	resent=$(($(json_get .bytes) - (DIRTY_MIB * MIB - sent)))
	echo "killed after ${ELAPSED_MS} ms: $sent bytes sent, $left left dirty; resent $resent, bound $bound"
	[ "$resent" -le $((bound + 4 * MIB)) ] ||
		fail "sent $resent bytes again; at most $bound + 4 MiB"
	assert_equal "$(dirty_bytes d.cdisk)" 0
}

max() { echo $(($1 > $2 ? $1 : $2)); }

@test "sync resume: killed with --rate 20M about halfway, the next run resends at most 64 MiB" {
	make_base base.raw "$((DIRTY_MIB + 16))M"
	dirty_disk base.raw
	kill_sync_at "$((80 + RANDOM % 40))" --rate 20M
	check_resend "$(max $((64 * MIB)) $((2 * 20 * MIB)))"
	patfile base.raw r 0 "${DIRTY_MIB}M" 8
}

@test "sync resume: no rate limit, an NBD base on a 40 MB/s link: killed about halfway, the next run resends at most max(64 MiB, 2 s of work)" {
	local sock=$BATS_TEST_TMPDIR/n.sock rate
	# 320 Mbit/s, with a short burst so that the link keeps its speed
	make_base base.raw "$((DIRTY_MIB + 16))M"
	start_nbdkit_unix "$sock" --filter=rate file base.raw rate=320M burstiness=0.2
	dirty_disk "nbd+unix:///?socket=$sock"
	kill_sync_at "$((80 + RANDOM % 40))"
	sleep 0.5   # requests still under way at the server land
	# the rate the sync went, as seen from the base: start-up included,
	# so below the link's
	rate=$(($(sent_bytes) * 1000 / ELAPSED_MS))
	stop_nbdkit
	start_nbdkit_unix "$sock" file base.raw
	check_resend "$(max $((64 * MIB)) $((2 * rate)))"
	patfile base.raw r 0 "${DIRTY_MIB}M" 8
}

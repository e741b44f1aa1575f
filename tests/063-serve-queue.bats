#!/usr/bin/env bats
# cdisk-serve's request queue: one reader per connection, one pool of
# workers for the whole server; flushes cover what was acknowledged
# before them, whichever worker ran what, and on whichever connection.
bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
}

teardown() {
	[ -n "${CROWD:-}" ] && kill -9 "$CROWD" 2>/dev/null
	stop_serve KILL || true
}

threads() { ls "/proc/$SERVE_PID/task" | wc -l; }

# The most workers the pool may have on this machine (lib/nbd/queue.c: four
# per core, 8 to 64, and up to eight times that when all are stuck).
max_workers() {
	local w=$(($(nproc) * 4))
	[ "$w" -ge 8 ] || w=8
	[ "$w" -le 64 ] || w=64
	w=$((w * 8))
	[ "$w" -le 256 ] || w=256
	echo "$w"
}

@test "500 connections at once: one thread each and one pool, not workers per connection" {
	local n=500 ctl t bound
	run_cdisk 0 cdisk-create --size 16M d.cdisk
	start_serve d.cdisk
	ctl=$SERVE_RUN/cdisk-serve.$SERVE_PID.ctl
	mkfifo hold
	# Every connection writes its block, flushes and reads it back, all
	# in flight together; then they stay open until hold is closed.
	timeout 120 nbd-evil "$SERVE_SOCK" many d "$n" <hold >crowd.out 2>&1 3>&- &
	CROWD=$!
	exec 4>hold
	for _ in $(seq 1200); do
		grep -q '^ready' crowd.out && break
		kill -0 "$CROWD" 2>/dev/null || break
		sleep 0.05
	done
	grep -q '^ready' crowd.out || fail "the crowd did not get through: $(cat crowd.out)"
	run_cdisk 0 socat - "UNIX-CONNECT:$ctl" <<<'{"command":"status"}'
	assert_equal "$(json_get '.exports[0].connections')" "$n"
	t=$(threads)
	bound=$((n + $(max_workers) + 8))
	echo "$t threads for $n connections (bound $bound)"
	[ "$t" -le "$bound" ] || fail "$t threads for $n connections (bound $bound)"
	exec 4>&-
	wait "$CROWD" || fail "the crowd failed: $(cat crowd.out)"
	CROWD=
	assert_equal "$(tail -n 1 crowd.out)" "ok: $n connections wrote, flushed and read back their blocks"
	# Their readers are gone; the pool stays what it was.
	for _ in $(seq 200); do
		[ "$(threads)" -le $(($(max_workers) + 8)) ] && break
		sleep 0.05
	done
	t=$(threads)
	[ "$t" -le $(($(max_workers) + 8)) ] || fail "$t threads left after the crowd"
	# Each block is the one its connection wrote.
	run_cdisk 0 nbdcopy "$NBD" disk.img
	for i in 0 1 250 499; do
		head -c 4096 /dev/zero | tr '\0' "\\$(printf '%03o' $((i % 251 + 1)))" >want.img
		cmp -n 4096 disk.img want.img $((i * 4096)) 0 || fail "block $i is not what it wrote"
	done
}

@test "fio: a random mix of sizes, reads and writes with fsync points, verified, on four connections" {
	run_cdisk 0 cdisk-create --size 256M d.cdisk
	start_serve d.cdisk
	CDISK_TIMEOUT=300 run_cdisk 0 fio --name=mix --ioengine=nbd --uri="$NBD" \
		--rw=randrw --rwmixread=30 --bsrange=4k-256k --iodepth=32 --numjobs=4 \
		--size=24M --offset_increment=64M --fsync=8 --verify=crc32c \
		--verify_fatal=1 --do_verify=1 --group_reporting
	refute_output --partial "verify: bad"
	assert_output --regexp "err= *0"
}

@test "kill -9 under load: every write acknowledged before a flush, on any connection, reads back" {
	run_cdisk 0 cdisk-create --size 64M d.cdisk
	start_serve d.cdisk
	# Four writers at once, each on its own steps and blocks: step i
	# writes four 64 KiB blocks at once on one connection and, once they
	# are answered, flushes on another; i is logged when the flush is.
	local writers=()
	for w in 0 1 2 3; do
		timeout 60 nbd-evil "$SERVE_SOCK" flush-steps d "$w" >"flushed.$w" 2>"writer.$w" 3>&- &
		writers+=($!)
	done
	# Every writer under way, then a second more of it.
	for _ in $(seq 600); do
		[ -s flushed.0 ] && [ -s flushed.1 ] && [ -s flushed.2 ] && [ -s flushed.3 ] && break
		sleep 0.05
	done
	sleep 1
	stop_serve KILL || true
	# Only the writers: a bare wait would also wait for bats's own
	# timeout watchdog (BATS_TEST_TIMEOUT), a child of this shell.
	wait "${writers[@]}" || true
	cat writer.*
	grep -hx '[0-9]*' flushed.* >flushed.log || true
	[ -s flushed.log ] || fail "nothing was flushed before the kill"
	# The last flushed step of each 256 KiB area (step i % 64), found
	# by awk: a shell loop over thousands of steps is slow under bats.
	declare -A last
	while read -r area i; do
		last[$area]=$i
	done < <(awk '{ a = $1 % 64; if (!(a in m) || $1 > m[a]) m[a] = $1 } END { for (a in m) print a, m[a] }' flushed.log)
	start_serve d.cdisk
	run_cdisk 0 nbdcopy "$NBD" disk.img
	# The bytes each 64 KiB block of the 64 areas holds, "V1 V2 ... ",
	# one line a block, read in one pass (od and sort for each block
	# took 10 to 30 s).
	local blocks
	mapfile -t blocks < <(python3 -c 'import sys
d = open(sys.argv[1], "rb").read(16 << 20)
for b in range(256):
    print("".join("%d " % v for v in sorted(set(d[b << 16:(b + 1) << 16]))))' disk.img)
	[ "${#blocks[@]}" -eq 256 ] || fail "read ${#blocks[@]} blocks of disk.img, not 256"
	for area in "${!last[@]}"; do
		p=$((last[$area] % 250 + 1))
		# The writer's next step on this area, unflushed, may have
		# landed too: whole 64 KiB blocks of it.
		next=$(((last[$area] + 64) % 250 + 1))
		for k in 0 1 2 3; do
			got=${blocks[area * 4 + k]}
			[ "$got" = "$p " ] || [ "$got" = "$next " ] ||
				fail "area $area block $k: flushed step ${last[$area]} (byte $p) reads as '$got'"
		done
	done
}

# cpu_us: the server's threads' time on a CPU so far, in microseconds
# (schedstat's nanoseconds: /proc's user and system times are counted in
# ticks of 10 ms, so a few wake-ups that happen to meet a tick look like
# 50 ms).  A thread that leaves meanwhile takes its time with it: only the
# pool's extra workers leave, after 10 s without work.
cpu_us() { cat /proc/"$SERVE_PID"/task/*/schedstat | awk '{ s += $1 } END { printf "%d\n", s / 1000 }'; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$SERVE_PID/status"; }
fds() { ls "/proc/$SERVE_PID/fd" | wc -l; }

@test "200 exports, 50 fio clients on their own: every one verifies; then 50 idle take under 50 ms of CPU in 30 s" {
	local args=() jobs=() i before after
	# The first disk made as every test makes one; the other 199, the
	# same command, without the leak check at exit (a second or two each
	# here: LeakSanitizer scans all of libceph-common's memory).
	run_cdisk 0 cdisk-create -q --size 16M u1.cdisk
	seq -f 'u%g.cdisk' 2 200 | ASAN_OPTIONS=$ASAN_OPTIONS:detect_leaks=0 \
		xargs -P 2 -n 1 timeout 60 cdisk-create -q --size 16M ||
		fail "cdisk-create failed"
	for i in $(seq 200); do
		args+=(--export "u$i=u$i.cdisk")
	done
	SERVE_EXPORT=u1 start_serve "${args[@]}"
	for i in $(seq 50); do
		jobs+=(--name="u$i" --uri="nbd+unix:///u$((i * 4))?socket=$SERVE_SOCK")
	done
	run_cdisk 0 fio --thread --ioengine=nbd --rw=randwrite --bs=4k --size=16M \
		--io_size=2M --iodepth=4 --verify=crc32c --verify_fatal=1 \
		--verify_state_save=0 "${jobs[@]}"
	refute_output --partial "err="$'\n'
	[ "$(grep -c 'err= 0' <<<"$output")" -eq 50 ] || fail "not every client finished clean"
	# 50 clients connected and idle: the server sleeps.
	mkfifo hold
	timeout 120 nbd-evil "$SERVE_SOCK" many u7 50 <hold >crowd.out 2>&1 3>&- &
	CROWD=$!
	exec 4>hold
	for _ in $(seq 600); do
		grep -q '^ready' crowd.out && break
		sleep 0.05
	done
	grep -q '^ready' crowd.out || fail "the clients did not get through: $(cat crowd.out)"
	sleep 1
	before=$(cpu_us)
	sleep 30
	after=$(cpu_us)
	echo "idle with 200 exports and 50 clients: $(((after - before) / 1000)) ms of CPU in 30 s"
	[ $((after - before)) -lt 50000 ] ||
		fail "the idle server took $(((after - before) / 1000)) ms of CPU in 30 s"
	exec 4>&-
	wait "$CROWD"
	CROWD=
}

@test "10,000 connects and disconnects: the server's fds are as before and its RSS grows under 2 MiB" {
	local fd0 rss0 fd1 rss1
	run_cdisk 0 cdisk-create --size 16M d.cdisk
	# Memory freed must be given back, not held for use-after-free checks.
	ASAN_OPTIONS=$ASAN_OPTIONS:quarantine_size_mb=0:thread_local_quarantine_size_kb=0 \
		start_serve d.cdisk
	# Warm up: the allocator's arenas and the pool reach their size.
	run_cdisk 0 nbd-evil "$SERVE_SOCK" churn d 500
	sleep 1.5
	fd0=$(fds) rss0=$(rss_kb)
	CDISK_TIMEOUT=600 run_cdisk 0 nbd-evil "$SERVE_SOCK" churn d 10000
	assert_output "ok: 10000 connections came, wrote, read back and went"
	# Finished connections are reaped by the accept loop within a second.
	sleep 1.5
	fd1=$(fds) rss1=$(rss_kb)
	echo "fds $fd0 -> $fd1, RSS $rss0 -> $rss1 KiB"
	assert_equal "$fd1" "$fd0"
	[ $((rss1 - rss0)) -lt 2048 ] || fail "RSS grew by $((rss1 - rss0)) KiB"
	stop_serve
}

# The server's voluntary context switches, all threads, or only those of
# the threads named NAME (cdisk-worker, cdisk-reader).
server_switches() {
	local t n=0
	for t in /proc/"$SERVE_PID"/task/*; do
		[ -z "${1:-}" ] || [ "$(cat "$t/comm" 2>/dev/null)" = "$1" ] || continue
		n=$((n + $(awk '/^voluntary_ctxt_switches/ { print $2 }' "$t/status" 2>/dev/null || echo 0)))
	done
	echo "$n"
}

# switches_per_request SPIN [RW DEPTH [THREADS [BS]]]: serve a disk with
# [serve] spin = SPIN, run 4 KiB (or BS) random reads (or RW) at depth 1
# (or DEPTH) for 3 s; SWITCHES: the server's voluntary context switches per
# 100 requests, or only those of the threads named THREADS.  Not in a
# subshell: teardown must see SERVE_PID if it fails.
switches_per_request() {
	printf '[serve]\nruntime_dir = %s\nspin = %s\n' "$BATS_TEST_TMPDIR/run" "$1" >>"$CDISK_CONFIG"
	start_serve --export d=d.cdisk
	local before after n
	before=$(server_switches "${4:-}")
	timeout 60 fio --output-format=json --output=fio.json --name=r --ioengine=nbd \
		--uri="$NBD" --rw="${2:-randread}" --bs="${5:-4k}" --iodepth="${3:-1}" --size=16M \
		--time_based --runtime=3 >/dev/null 2>&1 || fail "fio failed: $(cat fio.json)"
	after=$(server_switches "${4:-}")
	[ -z "${4:-}" ] || grep -qx "${4:-}" /proc/"$SERVE_PID"/task/*/comm ||
		fail "cdisk-serve has no thread named ${4:-}"
	n=$(sed -n '/^{/,$p' fio.json | jq '.jobs[0] | .read.total_ios + .write.total_ios')
	stop_serve
	sed -i '/^\[serve\]/,$d' "$CDISK_CONFIG"
	SWITCHES=$(((after - before) * 100 / n))
}

@test "[serve] spin: a reader waits for its client on the CPU, not asleep; 0 turns it off; bad values refused" {
	run_cdisk 0 cdisk-create -q --size 16M d.cdisk
	local off on
	switches_per_request 0
	off=$SWITCHES
	switches_per_request 1000
	on=$SWITCHES
	echo "context switches per 100 requests: spin 0: $off, spin 1000 us: $on"
	# Asleep between requests, the reader is woken for each one.
	[ "$off" -ge 50 ] || fail "with spin = 0, only $off switches per 100 requests"
	if [ "$(nproc)" -ge 2 ]; then
		[ "$on" -le 20 ] || fail "with spin = 1000 us, $on switches per 100 requests"
	else
		# One core: the reader would take it from the client; it sleeps.
		[ "$on" -ge 50 ] || fail "one core, spin = 1000 us: only $on switches per 100"
	fi
	printf '[serve]\nspin = 1001\n' >>"$CDISK_CONFIG"
	run_cdisk 2 cdisk-serve --export d=d.cdisk
	assert_error cdisk-serve "line [0-9]+: spin must be microseconds from 0 to 1000$"
}

@test "a few small writes at once are carried out by the connection's reader, not handed to workers" {
	run_cdisk 0 cdisk-create -q --size 16M d.cdisk
	# The workers' switches only: a worker woken for a batch makes 30 or
	# more per 100 writes; carried by the reader, they stay asleep.
	switches_per_request 0 randwrite 4 cdisk-worker
	echo "the workers' context switches per 100 writes at depth 4: $SWITCHES"
	[ "$SWITCHES" -le 10 ] || fail "$SWITCHES switches per 100 writes: handed to workers"
}

@test "a lone large write is carried out by the reader; one with more sent behind it goes to a worker" {
	run_cdisk 0 cdisk-create -q --size 16M d.cdisk
	local alone behind
	switches_per_request 0 write 1 cdisk-worker 1M
	alone=$SWITCHES
	switches_per_request 0 write 4 cdisk-worker 1M
	behind=$SWITCHES
	echo "the workers' context switches per 100 1 MiB writes: depth 1: $alone, depth 4: $behind"
	# Alone, a worker's wake-up would cost more than it saves.
	[ "$alone" -le 10 ] || fail "$alone switches per 100 lone writes: handed to workers"
	# Behind, the reader receives the next payload while a worker writes.
	[ "$behind" -ge 50 ] || fail "$behind switches per 100 writes at depth 4: carried by the reader"
}

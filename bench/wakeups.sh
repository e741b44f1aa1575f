#!/bin/bash
# What each request costs the server besides its I/O, side by side in one
# run: one client (fio, ioengine=nbd, unix socket) doing 4 KiB random
# reads and writes half and half at queue depth 1, 4 and 16 on a 1 GiB
# disk, against
#   cdisk-serve            a cdisk (no base)
#   nbdkit                 the file plugin on a raw file
#   qemu-storage-daemon    the raw file, one NBD export
# `perf stat` counts, on the server's process while fio runs, the CPU time,
# the context switches and the futex calls (thread wake-ups and waits); the
# table shows them per request, with IOPS, and cdisk's CPU per request as
# a ratio to each.  On a machine with few cores the wake-ups are much of
# the cost of a small request (lib/nbd/queue.c, WAKE_COST_NS).
# Usage: bench/wakeups.sh [SECONDS per job, default 8]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-8}
# shellcheck source=bench/common.sh
. "$top/bench/common.sh"
if ! command -v perf >/dev/null; then
	[ "$(id -u)" = 0 ] || { echo "wakeups.sh: perf is missing (linux-perf)" >&2; exit 1; }
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null
fi
bench_setup
sock=$work/s.sock
pid=
bench_cleanup() { [ -z "$pid" ] || kill "$pid" 2>/dev/null || true; wait 2>/dev/null || true; }

wait_for() { # socket
	for _ in $(seq 400); do [ -S "$1" ] && return 0; sleep 0.05; done
	echo "no server on $1" >&2
	exit 1
}

start() { # SERVER
	rm -f d.cdisk d.raw "$sock"
	truncate -s 1G d.raw
	case $1 in
	cdisk)
		cdisk-create -q --size 1G d.cdisk
		cdisk-serve -q --socket "$sock" --export d=d.cdisk 3>&- & ;;
	nbdkit)
		nbdkit -f -U "$sock" -e d file d.raw 3>&- & ;;
	qsd)
		qemu-storage-daemon --nbd-server "addr.type=unix,addr.path=$sock" \
			--blockdev "driver=file,node-name=n,filename=d.raw,aio=threads" \
			--export "type=nbd,id=e,node-name=n,name=d,writable=on" 3>&- & ;;
	esac
	pid=$!
	wait_for "$sock"
	# Data to read: the whole disk written once.
	fio --name=fill --ioengine=nbd --uri="nbd+unix:///d?socket=$sock" --rw=write \
		--bs=1M --iodepth=4 --size=1G >/dev/null
}

# job DEPTH: prints "IOPS cpu-µs cs futex", the last three per request.
job() {
	local out=$work/fio.json counts=$work/perf.csv iops task cs futex
	fio --output-format=json --output="$out" --ioengine=nbd \
		--uri="nbd+unix:///d?socket=$sock" --name=j --rw=randrw --rwmixread=50 \
		--bs=4k --iodepth="$1" --size=1G --time_based --runtime=$((secs + 2)) \
		--ramp_time=1 >/dev/null &
	local fio_pid=$!
	sleep 1
	perf stat -x, -o "$counts" -e task-clock,context-switches,syscalls:sys_enter_futex \
		-p "$pid" -- sleep "$secs" 2>/dev/null
	wait "$fio_pid"
	iops=$(sed -n '/^{/,$p' "$out" | jq '.jobs[0] | .read.iops + .write.iops')
	task=$(awk -F, '$3 ~ /task-clock/ { print $1 }' "$counts")        # ms
	cs=$(awk -F, '$3 ~ /context-switches/ { print $1 }' "$counts")
	futex=$(awk -F, '$3 ~ /sys_enter_futex/ { print $1 }' "$counts")
	awk -v i="$iops" -v t="$task" -v c="$cs" -v f="$futex" -v s="$secs" \
		'BEGIN { n = i * s; printf "%d %.2f %.2f %.2f\n", i, t * 1000 / n, c / n, f / n }'
}

declare -A r
for depth in 1 4 16; do
	for server in cdisk nbdkit qsd; do
		echo "depth $depth: $server" >&2
		start "$server"
		r[$server.$depth]=$(job "$depth")
		kill "$pid"
		wait "$pid" 2>/dev/null || true
		pid=
	done
done

printf '%-6s %-7s %9s %12s %9s %9s\n' depth server IOPS "CPU µs/req" "cs/req" "futex/req"
for depth in 1 4 16; do
	for server in cdisk nbdkit qsd; do
		read -r i t c f <<<"${r[$server.$depth]}"
		printf '%-6s %-7s %9s %12s %9s %9s\n' "$depth" "$server" "$i" "$t" "$c" "$f"
	done
done
echo
echo "cdisk's CPU per request, as a ratio (below 1: cdisk spends less):"
for depth in 1 4 16; do
	read -r _ tc _ _ <<<"${r[cdisk.$depth]}"
	read -r _ tn _ _ <<<"${r[nbdkit.$depth]}"
	read -r _ tq _ _ <<<"${r[qsd.$depth]}"
	printf 'depth %-3s vs nbdkit %.2fx   vs qsd %.2fx\n' "$depth" \
		"$(echo "$tc / $tn" | bc -l)" "$(echo "$tc / $tq" | bc -l)"
done

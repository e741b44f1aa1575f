#!/bin/bash
# Many clients on one server, side by side in one run.  N clients, each on
# an export of its own (a 256 MiB disk), 4 KiB random reads and writes
# half and half at queue depth 4 each, for N = 1, 10 and 50, against
#   cdisk-serve            N cdisks (no base) in one process
#   nbdkit                 the file plugin serving a folder of N raw files
#   qemu-storage-daemon    N raw files, one NBD export each
# The table shows each server's aggregate IOPS and p99 latency (the worse
# of reads' and writes'), and cdisk's ratios.
# Then the foreground's p99 on one export with and without a sync of
# another served disk running (1 GiB dirty, pushed to a raw base), with
# cdisk-serve's scheduler ("fair", the default) and without it ("fifo").
# Every job runs ROUNDS times, the servers taking turns; the tables show
# medians.
# Usage: bench/multiuser.sh [SECONDS per job, default 10] [ROUNDS, default 3]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-10}
rounds=${2:-3}
# shellcheck source=bench/common.sh
. "$top/bench/common.sh"
bench_setup
pids=()
stop_all() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	pids=()
}
bench_cleanup() { stop_all; }
conf() { # SCHEDULER
	printf '[metadata]\nbackup_dir = none\n[serve]\nruntime_dir = %s/run\nscheduler = %s\n' \
		"$work" "$1" >"$CDISK_CONFIG"
}
conf fair
max=50
disk=256M
sock=$work/s.sock

# fio's JSON, without the lines its nbd engine prints into the same file.
fio_jq() { # FILTER FILE
	sed -n '/^{/,$p' "$2" | jq -r "$1"
}

wait_for() { # socket
	for _ in $(seq 400); do [ -S "$1" ] && return 0; sleep 0.05; done
	echo "no server on $1" >&2
	exit 1
}

# Fresh disks for every run, sparse: each server's filesystem allocates
# as the writes come.
fresh() {
	rm -rf raw ./*.cdisk "$sock"
	mkdir raw
	for i in $(seq "$max"); do truncate -s "$disk" "raw/u$i"; done
}

start_cdisk() {
	local args=()
	for i in $(seq "$max"); do
		cdisk-create -q --size "$disk" "u$i.cdisk"
		args+=(--export "u$i=u$i.cdisk")
	done
	cdisk-serve -q --socket "$sock" "${args[@]}" 3>&- &
	pids+=($!)
	wait_for "$sock"
}

start_nbdkit() {
	nbdkit -f -U "$sock" file dir="$work/raw" 3>&- &
	pids+=($!)
	wait_for "$sock"
}

start_qsd() {
	local args=()
	for i in $(seq "$max"); do
		args+=(--blockdev "driver=file,node-name=n$i,filename=raw/u$i,aio=threads"
			--export "type=nbd,id=e$i,node-name=n$i,name=u$i,writable=on")
	done
	qemu-storage-daemon --nbd-server "addr.type=unix,addr.path=$sock" "${args[@]}" 3>&- &
	pids+=($!)
	wait_for "$sock"
}

# clients N OUT: N fio jobs, one export each, one report for them all;
# prints "IOPS p99-µs".
clients() {
	local jobs=()
	for i in $(seq "$1"); do
		jobs+=(--name="u$i" --uri="nbd+unix:///u$i?socket=$sock")
	done
	fio --output-format=json --output="$2" --thread --group_reporting \
		--ioengine=nbd --rw=randrw --rwmixread=50 --bs=4k --iodepth=4 --size="$disk" \
		--time_based --runtime="$secs" --ramp_time=1 "${jobs[@]}" >/dev/null
	fio_jq '.jobs[0] | [(.read.iops + .write.iops),
		([.read.clat_ns.percentile["99.000000"], .write.clat_ns.percentile["99.000000"]]
		 | max / 1000)] | @tsv' "$2"
}

# shellcheck disable=SC2034 # used through keep's namerefs
declare -A iops p99
for round in $(seq "$rounds"); do
	for n in 1 10 50; do
		for server in cdisk nbdkit qsd; do
			echo "round $round, $n clients: $server" >&2
			fresh
			"start_$server"
			read -r i p < <(clients "$n" "$server-$n-$round.json")
			keep iops "$server.$n" "$i"
			keep p99 "$server.$n" "$p"
			stop_all
		done
	done
done

printf '%-10s %10s %10s %10s %9s %9s %11s %11s %11s\n' clients "cdisk" "nbdkit" "qsd" \
	"vs nbdkit" "vs qsd" "cdisk p99" "nbdkit p99" "qsd p99"
for n in 1 10 50; do
	c=$(m iops "cdisk.$n") k=$(m iops "nbdkit.$n") q=$(m iops "qsd.$n")
	printf '%-10s %10.0f %10.0f %10.0f %8.2fx %8.2fx %9.0fus %9.0fus %9.0fus\n' "$n" \
		"$c" "$k" "$q" "$(ratio "$c" "$k")" "$(ratio "$c" "$q")" \
		"$(m p99 "cdisk.$n")" "$(m p99 "nbdkit.$n")" "$(m p99 "qsd.$n")"
done

# The foreground beside a sync.  bg.cdisk holds 1 GiB written since its
# base: cdisk-sync asks the server to push it, and the server's engine
# reads the overlay and writes the base while fg takes random I/O.
fg_p99() { # OUT -> p99 µs of the foreground
	fio --output-format=json --output="$1" --name=fg --ioengine=nbd \
		--uri="nbd+unix:///fg?socket=$sock" --rw=randrw --rwmixread=50 --bs=4k \
		--iodepth=4 --size=256M --time_based --runtime="$secs" --ramp_time=1 >/dev/null
	fio_jq '.jobs[0] | [.read.clat_ns.percentile["99.000000"],
		.write.clat_ns.percentile["99.000000"]] | max / 1000' "$1"
}

# The ratio is each round's own (alone and beside the sync measured one
# after the other), then the median of those.
# shellcheck disable=SC2034 # used through keep's namerefs
declare -A quiet busy slowdown synced
for round in $(seq "$rounds"); do
	for sched in fair fifo; do
		echo "round $round, background sync: scheduler = $sched" >&2
		conf "$sched"
		rm -f ./*.cdisk base.raw "$sock"
		truncate -s 2G base.raw
		cdisk-create -q --base base.raw bg.cdisk
		cdisk-create -q --size 256M fg.cdisk
		cdisk-serve -q --socket "$sock" --export fg=fg.cdisk --export bg=bg.cdisk 3>&- &
		pids+=($!)
		wait_for "$sock"
		fio --name=dirty --ioengine=nbd --uri="nbd+unix:///bg?socket=$sock" --rw=write \
			--bs=1M --iodepth=8 --size=1G >/dev/null
		q=$(fg_p99 "quiet-$sched-$round.json")
		cdisk-sync -q --max-time "$((secs + 1))" bg.cdisk 2>/dev/null &
		local_sync=$!
		b=$(fg_p99 "busy-$sched-$round.json")
		wait "$local_sync" || true
		keep quiet "$sched" "$q"
		keep busy "$sched" "$b"
		keep slowdown "$sched" "$(ratio "$b" "$q")"
		keep synced "$sched" "$(cdisk-info --json bg.cdisk |
			jq '(1073741824 - .blocks_dirty * .block_size) / 1048576')"
		stop_all
	done
done

echo
printf '%-34s %12s %12s %8s %16s\n' "foreground 4 KiB QD4 (p99)" "alone" "beside sync" ratio \
	"sync moved"
for sched in fair fifo; do
	printf '%-34s %10.0fus %10.0fus %7.2fx %13.0f MiB\n' "scheduler = $sched" \
		"$(m quiet "$sched")" "$(m busy "$sched")" "$(m slowdown "$sched")" \
		"$(m synced "$sched")"
done

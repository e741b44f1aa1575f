#!/bin/bash
# The NBD data path, side by side in one run: fio (ioengine=nbd) against
#   cdisk-serve  a cdisk over a raw file base
#   qemu-nbd     a qcow2 overlay over the same raw base
#   nbdkit       the raw file itself (file plugin)
# Jobs: 1 MiB sequential writes at depth 4 into a fresh overlay (the
# filesystem allocates as it goes; nbdkit's raw file is allocated already),
# the same again (a rewrite), then 4 KiB random writes and reads at queue
# depth 16.  Prints IOPS, MiB/s and cdisk's ratio to each.  Then the same
# over TCP with TLS (X.509, certificates made here), cdisk-serve next to
# nbdkit --tls=require on the raw file.
# Usage: bench/serve.sh [SECONDS per job, default 10]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
O=${O:-build}
secs=${1:-10}
"$top/scripts/install-deps.sh"
make -s -C "$top" O="$O" all >/dev/null
PATH="$top/$O/bin:$PATH"
work=$(mktemp -d /tmp/cdisk-bench.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
export CDISK_CONFIG=$work/cdisk.conf
printf '[metadata]\nbackup_dir = %s/meta\n[serve]\nruntime_dir = %s/run\n' "$work" "$work" >"$CDISK_CONFIG"

size=1G
truncate -s "$size" base.raw
# Random reads should find data: fill the base once.
dd if=/dev/urandom of=base.raw bs=1M count=1024 conv=notrunc status=none

wait_for() { # socket
	for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done
	echo "no server on $1" >&2
	exit 1
}

start_cdisk() {
	rm -f d.cdisk meta/*
	cdisk-create -q --base base.raw d.cdisk
	cdisk-serve -q --socket "$work/cdisk.sock" d.cdisk 3>&- &
	pids+=($!)
	wait_for "$work/cdisk.sock"
	uri="nbd+unix:///d?socket=$work/cdisk.sock"
}

start_qemu() {
	rm -f ov.qcow2
	qemu-img create -q -f qcow2 -b base.raw -F raw ov.qcow2
	qemu-nbd -k "$work/qemu.sock" -f qcow2 -t -e 16 --cache=writeback --aio=threads \
		-x d ov.qcow2 3>&- &
	pids+=($!)
	wait_for "$work/qemu.sock"
	uri="nbd+unix:///d?socket=$work/qemu.sock"
}

start_nbdkit() {
	nbdkit -f -U "$work/nbdkit.sock" -e d file base.raw 3>&- &
	pids+=($!)
	wait_for "$work/nbdkit.sock"
	uri="nbd+unix:///d?socket=$work/nbdkit.sock"
}

pki=$work/pki
# shellcheck source=tests/ports.sh
. "$top/tests/ports.sh"

start_cdisk_tls() {
	local port
	port=$(free_port)
	rm -f d.cdisk meta/*
	cdisk-create -q --base base.raw d.cdisk
	cdisk-serve -q --socket "$work/cdisk.sock" --tcp "127.0.0.1:$port" \
		--tls-certificates "$pki" d.cdisk 3>&- &
	pids+=($!)
	wait_port "$port" 10 || { echo "no server on port $port" >&2; exit 1; }
	uri="nbds://127.0.0.1:$port/d?tls-verify-peer=false"
}

start_nbdkit_tls() {
	local port
	port=$(free_port)
	nbdkit -f -i 127.0.0.1 -p "$port" --tls=require --tls-certificates="$pki" -e d \
		file base.raw 3>&- 2>>"$work/nbdkit.log" &
	pids+=($!)
	wait_port "$port" 10 || { echo "no server on port $port" >&2; exit 1; }
	uri="nbds://127.0.0.1:$port/d?tls-verify-peer=false"
}

stop_all() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	pids=()
}

run_job() { # name rw bs depth -> "iops mibs"
	fio --output-format=json --output="$1.json" --name="$1" --ioengine=nbd \
		--uri="$uri" --rw="$2" --bs="$3" --iodepth="$4" --size="$size" \
		--time_based --runtime="$secs" --ramp_time=1 >/dev/null
	jq -r '.jobs[0] | [(.read.iops + .write.iops), ((.read.bw + .write.bw) / 1024)] | @tsv' "$1.json"
}

declare -A iops mibs
for server in cdisk qemu nbdkit; do
	"start_$server"
	for job in seqwrite rewrite randwrite randread; do
		case $job in
		seqwrite | rewrite) read -r i m < <(run_job "$server-$job" write 1M 4) ;;
		randwrite) read -r i m < <(run_job "$server-$job" randwrite 4k 16) ;;
		randread) read -r i m < <(run_job "$server-$job" randread 4k 16) ;;
		esac
		iops[$server.$job]=$i
		mibs[$server.$job]=$m
	done
	stop_all
done

printf '%-38s %12s %12s %12s %14s %14s\n' job cdisk qemu-nbd nbdkit "vs qemu-nbd" "vs nbdkit"
for job in seqwrite rewrite randwrite randread; do
	case $job in
	seqwrite) label="1 MiB seq. write, QD4, fresh (MiB/s)"; unit=mibs ;;
	rewrite) label="1 MiB seq. rewrite, QD4 (MiB/s)"; unit=mibs ;;
	randwrite) label="4 KiB random write, QD16 (IOPS)"; unit=iops ;;
	randread) label="4 KiB random read, QD16 (IOPS)"; unit=iops ;;
	esac
	declare -n v=$unit
	printf '%-38s %12.0f %12.0f %12.0f %13.2fx %13.2fx\n' "$label" \
		"${v[cdisk.$job]}" "${v[qemu.$job]}" "${v[nbdkit.$job]}" \
		"$(echo "${v[cdisk.$job]} / ${v[qemu.$job]}" | bc -l)" \
		"$(echo "${v[cdisk.$job]} / ${v[nbdkit.$job]}" | bc -l)"
	unset -n v
done

"$top/tests/make-certs.sh" "$pki" >/dev/null 2>&1
declare -A tls
for server in cdisk_tls nbdkit_tls; do
	"start_$server"
	read -r _ m < <(run_job "$server-seqwrite" write 1M 4)
	tls[$server.seqwrite]=$m
	read -r _ m < <(run_job "$server-seqread" read 1M 4)
	tls[$server.seqread]=$m
	read -r i _ < <(run_job "$server-randread" randread 4k 16)
	tls[$server.randread]=$i
	stop_all
done
echo
printf '%-38s %12s %12s %14s\n' "over TCP with TLS" cdisk nbdkit "vs nbdkit"
for job in seqwrite seqread randread; do
	case $job in
	seqwrite) label="1 MiB seq. write, QD4 (MiB/s)" ;;
	seqread) label="1 MiB seq. read, QD4 (MiB/s)" ;;
	randread) label="4 KiB random read, QD16 (IOPS)" ;;
	esac
	printf '%-38s %12.0f %12.0f %13.2fx\n' "$label" "${tls[cdisk_tls.$job]}" \
		"${tls[nbdkit_tls.$job]}" \
		"$(echo "${tls[cdisk_tls.$job]} / ${tls[nbdkit_tls.$job]}" | bc -l)"
done

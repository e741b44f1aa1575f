#!/bin/bash
# The NBD data path, side by side in one run: fio (ioengine=nbd) against
#   cdisk-serve  a cdisk over a raw file base
#   qemu-nbd     a qcow2 overlay over the same raw base
#   nbdkit       the raw file itself (file plugin)
# Jobs: 1 MiB sequential writes at depth 4 into a fresh overlay (the
# filesystem allocates as it goes; nbdkit gets a fresh sparse file for it,
# so it allocates too), the same again (a rewrite), then 4 KiB random
# writes and reads at queue depth 16 (nbdkit on the raw base).  Then the
# same over TCP with TLS (X.509, certificates made here), cdisk-serve next
# to nbdkit --tls=require.  Each server runs ROUNDS times, the servers
# taking turns; the tables show the medians and cdisk's ratio to each.
# The TLS table names the cipher each server chose (cdisk puts AES-128-GCM
# first: cdisk-serve(1), --tls-verify-peer).
# Usage: bench/serve.sh [SECONDS per job, default 10] [ROUNDS, default 3]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
# The rounds' helpers only (keep, m, ratio): this script sets up its own.
# shellcheck source=bench/common.sh
. "$top/bench/common.sh"
O=${O:-build}
secs=${1:-10}
rounds=${2:-3}
"$top/scripts/install-deps.sh"
make -s -C "$top" O="$O" all >/dev/null
PATH="$top/$O/bin:$PATH"
work=$(mktemp -d "${BENCH_DIR:-/tmp}/cdisk-bench.XXXXXX")
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
	rm -f d.cdisk meta/* "$work/cdisk.sock"
	cdisk-create -q --base base.raw d.cdisk
	cdisk-serve -q --socket "$work/cdisk.sock" d.cdisk 3>&- &
	pids+=($!)
	wait_for "$work/cdisk.sock"
	uri="nbd+unix:///d?socket=$work/cdisk.sock"
}

start_qemu() {
	rm -f ov.qcow2 "$work/qemu.sock"
	qemu-img create -q -f qcow2 -b base.raw -F raw ov.qcow2
	qemu-nbd -k "$work/qemu.sock" -f qcow2 -t -e 16 --cache=writeback --aio=threads \
		-x d ov.qcow2 3>&- &
	pids+=($!)
	wait_for "$work/qemu.sock"
	uri="nbd+unix:///d?socket=$work/qemu.sock"
}

start_nbdkit() { # [FILE, default base.raw]
	rm -f "$work/nbdkit.sock"
	nbdkit -f -U "$work/nbdkit.sock" -e d file "${1:-base.raw}" 3>&- &
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

start_nbdkit_tls() { # [FILE, default base.raw]
	local port
	port=$(free_port)
	nbdkit -f -i 127.0.0.1 -p "$port" --tls=require --tls-certificates="$pki" -e d \
		file "${1:-base.raw}" 3>&- 2>>"$work/nbdkit.log" &
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
	# What the last job left dirty is written back first: the next job,
	# often another server's, would otherwise pay for it.
	sync
	fio --output-format=json --output="$1.json" --name="$1" --ioengine=nbd \
		--uri="$uri" --rw="$2" --bs="$3" --iodepth="$4" --size="$size" \
		--time_based --runtime="$secs" --ramp_time=1 >/dev/null
	jq -r '.jobs[0] | [(.read.iops + .write.iops), ((.read.bw + .write.bw) / 1024)] | @tsv' "$1.json"
}

# A fresh sparse file for nbdkit's fresh writes: like an empty overlay,
# the filesystem allocates as they go.
sparse() {
	rm -f fresh.raw
	truncate -s "$size" fresh.raw
	echo fresh.raw
}

# Values of every round are kept as "v1 v2 v3"; the tables show medians.
# shellcheck disable=SC2034 # used through keep's and the table's namerefs
declare -A iops mibs

bench_plain() { # SERVER ROUND
	local server=$1 job i m
	for job in seqwrite rewrite randwrite randread; do
		case $server.$job in
		nbdkit.seqwrite) start_nbdkit "$(sparse)" ;;
		nbdkit.randwrite) stop_all; start_nbdkit ;;
		esac
		case $job in
		seqwrite | rewrite) read -r i m < <(run_job "$server-$job-$2" write 1M 4) ;;
		randwrite) read -r i m < <(run_job "$server-$job-$2" randwrite 4k 16) ;;
		randread) read -r i m < <(run_job "$server-$job-$2" randread 4k 16) ;;
		esac
		keep iops "$server.$job" "$i"
		keep mibs "$server.$job" "$m"
	done
	stop_all
}

for round in $(seq "$rounds"); do
	for server in cdisk qemu nbdkit; do
		echo "round $round: $server" >&2
		[ "$server" = nbdkit ] || "start_$server"
		bench_plain "$server" "$round"
	done
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
	# shellcheck disable=SC2086 # the rounds' values, one word each
	c=$(median ${v[cdisk.$job]}) q=$(median ${v[qemu.$job]}) k=$(median ${v[nbdkit.$job]})
	printf '%-38s %12.0f %12.0f %12.0f %13.2fx %13.2fx\n' "$label" "$c" "$q" "$k" \
		"$(ratio "$c" "$q")" "$(ratio "$c" "$k")"
	unset -n v
done

"$top/tests/make-certs.sh" "$pki" >/dev/null 2>&1
declare -A tls cipher
bench_tls() { # SERVER ROUND
	local server=$1 m i
	if [ "$server" = nbdkit_tls ]; then
		start_nbdkit_tls "$(sparse)"
	else
		"start_$server"
	fi
	# Each server's own choice of cipher, as fio's libnbd gets it.
	cipher[$server]=$(LIBNBD_DEBUG=1 nbdinfo --size "$uri" 2>&1 |
		sed -n 's/.*connection is using TLS: cipher \([A-Z0-9-]*\).*/\1/p' | head -1)
	read -r _ m < <(run_job "$server-seqwrite-$2" write 1M 4)
	keep tls "$server.seqwrite" "$m"
	if [ "$server" = nbdkit_tls ]; then
		stop_all
		start_nbdkit_tls
	fi
	read -r _ m < <(run_job "$server-seqread-$2" read 1M 4)
	keep tls "$server.seqread" "$m"
	read -r i _ < <(run_job "$server-randread-$2" randread 4k 16)
	keep tls "$server.randread" "$i"
	stop_all
}
for round in $(seq "$rounds"); do
	for server in cdisk_tls nbdkit_tls; do
		echo "round $round: $server" >&2
		bench_tls "$server" "$round"
	done
done
echo
printf '%-38s %12s %12s %14s\n' "over TCP with TLS" cdisk nbdkit "vs nbdkit"
printf '%-38s %12s %12s\n' "cipher (each server's choice)" "${cipher[cdisk_tls]:-?}" \
	"${cipher[nbdkit_tls]:-?}"
for job in seqwrite seqread randread; do
	case $job in
	seqwrite) label="1 MiB seq. write, QD4, fresh (MiB/s)" ;;
	seqread) label="1 MiB seq. read, QD4 (MiB/s)" ;;
	randread) label="4 KiB random read, QD16 (IOPS)" ;;
	esac
	# shellcheck disable=SC2086
	c=$(median ${tls[cdisk_tls.$job]}) k=$(median ${tls[nbdkit_tls.$job]})
	printf '%-38s %12.0f %12.0f %13.2fx\n' "$label" "$c" "$k" "$(ratio "$c" "$k")"
done

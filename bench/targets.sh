#!/bin/bash
# Every remote target through libcdisk, next to the server's own tool, in
# one run: 1 MiB sequential reads and writes of SIZE at queue depth 1 and
# 16.  The servers are the test suite's (tests/servers.sh), on loopback.
#
#   nbd    nbdkit (file plugin)     vs  nbdcopy, qemu-img bench
#   iscsi  tgtd (file-backed LUN)   vs  qemu-img bench (libiscsi)
#   rbd    ceph memstore OSD        vs  rbd bench
#   s3     radosgw                  (no tool of its own to compare with)
#   http   nginx (reads only)       vs  curl
#
# Writes are not flushed inside the timing, as qemu-img bench and rbd bench
# do not.  Prints MiB/s and cdisk's ratio to the other tool (above 1: cdisk faster).
# Usage: bench/targets.sh [SIZE in MiB, default 256]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
mib=${1:-256}
# shellcheck source=bench/common.sh
. "$top/bench/common.sh"
nbdkit_pid=
bench_cleanup() {
	[ -z "$nbdkit_pid" ] || kill "$nbdkit_pid" 2>/dev/null || true
}
bench_setup tests/target-io
bench_servers tgt ceph rgw nginx

size=$((mib << 20))
head -c "$size" /dev/urandom >data.raw
now() { date +%s.%N; }
rate() { awk -v s="$size" -v t="$1" 'BEGIN { printf "%.0f", s / 1048576 / t }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else printf "-" }'; }

# cdisk URI DEPTH read|write [REQUEST SIZE] -> MiB/s
cdisk() {
	if [ "$3" = write ]; then
		target-io -w -d "$2" "$1" "bench-write:$size:${4:-1M}"
	else
		target-io -d "$2" "$1" "bench-read:$size:${4:-1M}"
	fi
}

# qemu-img bench (FILENAME DEPTH read|write) -> MiB/s
qemu_bench() {
	local w=() secs
	[ "$3" = read ] || w=(-w)
	secs=$(qemu-img bench -f raw -t none -n -c "$mib" -s 1M -d "$2" "${w[@]}" "$1" |
		sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p')
	rate "$secs"
}

# rbd bench (IMAGE DEPTH read|write) -> MiB/s
rbd_bench() {
	rbd bench --io-type "$3" --io-size 1M --io-threads "$2" --io-total "$size" \
		--io-pattern seq "$1" 2>/dev/null |
		awk '/^elapsed:/ { for (i = 1; i <= NF; i++) if ($i == "bytes/sec:") { v = $(i + 1); u = $(i + 2) } }
		     END { if (u ~ /GiB/) v *= 1024; if (u ~ /KiB/) v /= 1024; printf "%.0f", v }'
}

# nbdcopy (URI DEPTH read|write) -> MiB/s
nbdcopy_bench() {
	local t0 t1
	t0=$(now)
	if [ "$3" = read ]; then
		nbdcopy --connections=1 --requests="$2" --request-size=1048576 "$1" null:
	else
		nbdcopy --connections=1 --requests="$2" --request-size=1048576 data.raw "$1"
	fi
	t1=$(now)
	rate "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"
}

# curl reading the whole object in 1 MiB ranges, DEPTH at a time -> MiB/s
curl_bench() {
	local t0 t1 i
	t0=$(now)
	for ((i = 0; i < mib; i += $2)); do
		for ((j = i; j < i + $2 && j < mib; j++)); do
			curl -s -o /dev/null -r "$((j << 20))-$(((j + 1 << 20) - 1))" "$1" &
		done
		wait
	done
	t1=$(now)
	rate "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"
}

printf '%-7s %-6s %5s %10s %-16s %10s %8s\n' target job depth "cdisk MiB/s" "other tool" \
	"MiB/s" ratio
row() { # target job depth cdisk tool other
	printf '%-7s %-6s %5s %10s %-16s %10s %8s\n' "$1" "$2" "$3" "$4" "$5" "$6" \
		"$(ratio "$4" "$6")"
}

# NBD: nbdkit serving a raw file
truncate -s "$size" nbd.raw
nbdkit -f -U "$work/nbd.sock" file "$work/nbd.raw" &
nbdkit_pid=$!
for _ in $(seq 100); do [ -S nbd.sock ] && break; sleep 0.05; done
nbd="nbd+unix:///?socket=$work/nbd.sock"
for d in 1 16; do
	for job in write read; do
		c=$(cdisk "$nbd" "$d" "$job")
		row nbd "$job" "$d" "$c" nbdcopy "$(nbdcopy_bench "$nbd" "$d" "$job")"
		row nbd "$job" "$d" "$c" "qemu-img bench" "$(qemu_bench "$nbd" "$d" "$job")"
	done
done

# iSCSI: tgtd with a file-backed LUN
truncate -s "$size" lun.img
adm=(tgtadm -C "$TGT_CONTROL" --lld iscsi)
"${adm[@]}" --op new --mode target --tid 1 -T iqn.2026-11.org.cdisk.bench:lun
"${adm[@]}" --op new --mode logicalunit --tid 1 --lun 1 -b "$work/lun.img"
"${adm[@]}" --op bind --mode target --tid 1 -I ALL
iscsi=iscsi://127.0.0.1:$TGT_PORT/iqn.2026-11.org.cdisk.bench:lun/1
for d in 1 16; do
	for job in write read; do
		row iscsi "$job" "$d" "$(cdisk "$iscsi" "$d" "$job")" "qemu-img bench" \
			"$(qemu_bench "$iscsi" "$d" "$job")"
	done
done

# RBD
rbd create rbd/bench --size "$mib"M
for d in 1 16; do
	for job in write read; do
		row rbd "$job" "$d" "$(cdisk rbd:rbd/bench "$d" "$job")" "rbd bench" \
			"$(rbd_bench rbd/bench "$d" "$job")"
	done
done

# S3 on radosgw, in requests of one chunk (4 MiB)
export AWS_ENDPOINT_URL=$RGW_ENDPOINT AWS_ACCESS_KEY_ID=$RGW_KEY
export AWS_SECRET_ACCESS_KEY=$RGW_SECRET
curl -sf --aws-sigv4 "aws:amz:us-east-1:s3" --user "$RGW_KEY:$RGW_SECRET" \
	-H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -X PUT "$RGW_ENDPOINT/bench" >/dev/null
target-io s3://bench/disk "create:$size"
for d in 1 16; do
	for job in write read; do
		# whole 4 MiB chunks: a 1 MiB write would rewrite its chunk
		row s3 "$job" "$d" "$(cdisk s3://bench/disk "$d" "$job" 4M)" "-" "-"
	done
done

# HTTP from nginx (a read-only base)
cp data.raw "$NGINX_ROOT/bench.raw"
for d in 1 16; do
	row http read "$d" "$(cdisk "$NGINX_URL/bench.raw" "$d" read)" "curl" \
		"$(curl_bench "$NGINX_URL/bench.raw" "$d")"
done

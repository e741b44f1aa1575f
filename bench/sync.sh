#!/bin/bash
# cdisk-sync next to `qemu-img commit` of a qcow2 overlay holding the same
# changes over the same base, in one run, on the test suite's servers:
#
#   iSCSI (tgtd) and Ceph RBD bases of 1 GiB:
#     200 MiB written sequentially; 200 MiB as scattered 4 KiB blocks, one
#     in every 5 (every qcow2 cluster holds some)
#   the same bases of 4 GiB: 200 MiB of 4 KiB blocks, one in every 16 (one
#     a qcow2 cluster, as a VM's random writes over a larger disk fall)
#   iSCSI again through the tests' proxy limited to 100 MB/s (a link
#     rather than loopback): the scattered changes
#   file bases of 1 GiB and 1 TiB: 10 MiB of scattered 4 KiB blocks
#
# Each sync and each commit runs REPEAT times (default 5) from a copy of
# the same overlay, taking turns (which goes first alternates); the median
# is shown.  Prints seconds, cdisk's speed-up
# over qemu-img (above 1: cdisk faster), and how the 1 TiB disk compares
# with the 1 GiB one.  The last columns add the writes themselves, one at
# a time as a VM's would come (cdisk-io into the overlay; qemu-io into the
# qcow2, whose first write to a cluster copies the rest of it from the
# base): what the whole cycle costs.
# Usage: bench/sync.sh [MiB of changes, default 200]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
mib=${1:-200}
repeat=${REPEAT:-5}
# shellcheck source=bench/common.sh
. "$top/bench/common.sh"
bench_setup tests/cdisk-io tests/target-io tests/faultproxy
bench_servers tgt ceph

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# The changes, as cdisk-io operations and as qemu-io commands.
# seq: one run of N MiB; scatter: N MiB of 4 KiB blocks, one in every 5;
# sparse: one in every 16.
changes() { # KIND MIB -> lines "OFFSET LENGTH"
	local n=$(($2 * 256)) i every=5
	case $1 in
	seq) echo "0 $(($2 << 20))"; return ;;
	sparse) every=16 ;;
	esac
	for ((i = 0; i < n; i++)); do echo "$((i * every * 4096)) 4096"; done
}

# one_run ORIG COPY CMD...: CMD on a fresh copy of ORIG at COPY (the copy
# is not timed), between the before_sync and after_sync hooks; seconds.
one_run() {
	local orig=$1 copy=$2 t0
	shift 2
	cp --sparse=always "$orig" "$copy"
	sync
	${before_sync:-true}
	t0=$(now)
	"$@"
	since "$t0"
	${after_sync:-true}
}

prepare_cdisk() { # BASE-URI KIND MIB -> seconds of the writes; leaves d.orig
	rm -f d.cdisk
	cdisk-create -q --base "$1" d.cdisk
	local t0
	t0=$(now)
	changes "$2" "$3" | awk '{ printf "w:%s:%s:7\n", $1, $2 }' | xargs -r cdisk-io d.cdisk
	cdisk-io d.cdisk f
	since "$t0"
	cp --sparse=always d.cdisk d.orig
}

prepare_qemu() { # QEMU-BACKING KIND MIB -> seconds of the writes; leaves ov.orig
	rm -f ov.qcow2
	qemu-img create -q -f qcow2 -b "$1" -F raw ov.qcow2
	local t0
	t0=$(now)
	{ changes "$2" "$3" | awk '{ printf "write -P 7 %s %s\n", $1, $2 }'; echo flush; } |
		qemu-io ov.qcow2 >/dev/null
	since "$t0"
	cp --sparse=always ov.qcow2 ov.orig
}

# both CDISK-BASE QEMU-BACKING KIND MIB -> "cdisk-write cdisk-sync"
# "qemu-write qemu-commit": the syncs and the commits take turns, which
# goes first alternating, so that neither meets the servers in a state
# the other left more often (page cache, the OSD's memory); medians.
both() {
	local cw qw i cs=() qc=()
	cdisk_turn() { cs+=("$(one_run d.orig d.cdisk cdisk-sync -q d.cdisk)"); }
	qemu_turn() { qc+=("$(one_run ov.orig ov.qcow2 qemu-img commit -q ov.qcow2)"); }
	cw=$(prepare_cdisk "$1" "$3" "$4")
	qw=$(prepare_qemu "$2" "$3" "$4")
	for ((i = 0; i < repeat; i++)); do
		if ((i % 2)); then qemu_turn; cdisk_turn; else cdisk_turn; qemu_turn; fi
	done
	echo "$cw $(printf '%s\n' "${cs[@]}" | median)"
	echo "$qw $(printf '%s\n' "${qc[@]}" | median)"
}

printf '%-12s %-9s %5s %9s %11s %9s %11s %10s %9s\n' base changes MiB "cdisk s" \
	"qemu-img s" speed-up "cdisk w+s" "qemu w+c" speed-up
row() { # base kind mib, then both's two lines on stdin
	local cw cs qw qc
	read -r cw cs
	read -r qw qc
	printf '%-12s %-9s %5s %9s %11s %9s %11.2f %10.2f %9s\n' "$1" "$2" "$3" "$cs" "$qc" \
		"$(awk -v a="$cs" -v b="$qc" 'BEGIN { printf "%.2fx", b / a }')" \
		"$(echo "$cw + $cs" | bc)" "$(echo "$qw + $qc" | bc)" \
		"$(awk -v a="$cw" -v b="$cs" -v c="$qw" -v d="$qc" 'BEGIN { printf "%.2fx", (c + d) / (a + b) }')"
}

# Every base is written whole before any timing, so that neither tool
# pays for the first allocation of the storage behind it.
# iSCSI
dd if=/dev/zero of=lun.img bs=4M count=256 conv=fsync status=none
adm=(tgtadm -C "$TGT_CONTROL" --lld iscsi)
"${adm[@]}" --op new --mode target --tid 1 -T iqn.2026-11.org.cdisk.bench:sync
"${adm[@]}" --op new --mode logicalunit --tid 1 --lun 1 -b "$work/lun.img"
"${adm[@]}" --op bind --mode target --tid 1 -I ALL
iqn=iqn.2026-11.org.cdisk.bench:sync/1
iscsi=iscsi://127.0.0.1:$TGT_PORT/$iqn
for kind in seq scatter; do
	both "$iscsi" "$iscsi" "$kind" "$mib" | row iscsi "$kind" "$mib"
done

# RBD
rbd create rbd/sync --size 1G
rbd bench --io-type write --io-size 4M --io-threads 16 --io-total 1G rbd/sync >/dev/null 2>&1
for kind in seq scatter; do
	both rbd:rbd/sync "rbd:rbd/sync:conf=$CEPH_CONF" "$kind" "$mib" | row rbd "$kind" "$mib"
done

# One block in 16, over 4 GiB bases
big=$((mib * 16 / 1024 + 1))G
dd if=/dev/zero of=lun2.img bs=4M count=$((mib * 4 + 256)) conv=fsync status=none
"${adm[@]}" --op new --mode target --tid 2 -T iqn.2026-11.org.cdisk.bench:sparse
"${adm[@]}" --op new --mode logicalunit --tid 2 --lun 1 -b "$work/lun2.img"
"${adm[@]}" --op bind --mode target --tid 2 -I ALL
iscsi2=iscsi://127.0.0.1:$TGT_PORT/iqn.2026-11.org.cdisk.bench:sparse/1
both "$iscsi2" "$iscsi2" sparse "$mib" | row iscsi sparse "$mib"
rbd create rbd/sparse --size "$big"
rbd bench --io-type write --io-size 4M --io-threads 16 --io-total "$big" rbd/sparse \
	>/dev/null 2>&1
both rbd:rbd/sparse "rbd:rbd/sparse:conf=$CEPH_CONF" sparse "$mib" | row rbd sparse "$mib"

# iSCSI behind a 100 MB/s link: the proxy limits only the sync and the
# commit, not the writes that fill the overlays.
faultproxy serve --to "127.0.0.1:$TGT_PORT" --port-file proxy.port --control proxy.ctl 3>&- &
proxy=$!
bench_cleanup() { kill "$proxy" 2>/dev/null || true; }
for _ in $(seq 100); do [ -s proxy.port ] && [ -S proxy.ctl ] && break; sleep 0.05; done
link=iscsi://127.0.0.1:$(cat proxy.port)/$iqn
link_slow() { faultproxy ctl proxy.ctl rate 100000000 >/dev/null; }
link_fast() { faultproxy ctl proxy.ctl rate 0 >/dev/null; }
before_sync=link_slow after_sync=link_fast
both "$link" "$link" scatter "$mib" | row "iscsi 100MB/s" scatter "$mib"
before_sync= after_sync=

# Growth: 10 MiB scattered in 1 GiB and in 1 TiB (sparse file bases)
dd if=/dev/zero of=small.raw bs=4M count=256 conv=fsync status=none
cp small.raw large.raw      # the part the changes land in is written too
truncate -s 1T large.raw
sync                        # no write-back of our own files inside a timing
small=$(both "$work/small.raw" "$work/small.raw" scatter 10)
large=$(both "$work/large.raw" "$work/large.raw" scatter 10)
row "1 GiB" scatter 10 <<<"$small"
row "1 TiB" scatter 10 <<<"$large"
small=$(head -1 <<<"$small") large=$(head -1 <<<"$large")
small=${small#* } large=${large#* }
awk -v a="$small" -v b="$large" \
	'BEGIN { printf "cdisk-sync, 1 TiB disk vs 1 GiB disk: %.2fx the time\n", b / a }'

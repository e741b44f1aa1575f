#!/bin/bash
# The synchronous mirror's cost, side by side in one run.  The primary and
# the mirror are nbdkit file targets behind the delay filter (1 ms per
# write and zeroing: network storage), each on its own unix socket:
#   cdisk        a disk on the primary (cdisk-create --primary), served by
#                cdisk-serve, without and with a mirror (cdisk-mirror)
#   qemu         qemu-storage-daemon exporting the primary over NBD,
#                without and with blockdev-mirror copy-mode=write-blocking
#                to the mirror (the job ready first)
#   direct       no mirror software: fio writes to the primary alone, then
#                to both targets at once; what the targets give, busy
#                together, on this machine's cores (for reading the cost)
# fio writes 4 KiB at random through NBD at QD1 and QD16; each set-up runs
# ROUNDS times, taking turns, and the tables show medians: IOPS, QD1
# latency, and each mirror's cost against its own unmirrored set-up.
# Then the time of the initial copy (cdisk-mirror attach; qemu's job until
# ready; qemu-img convert of the same data) and of a resync of 64 MiB
# written while the mirror was paused.
# Then, for information (no target; issue 17), the same figures with the
# storage of the patent: a Ceph RBD primary and a tgtd iSCSI LUN mirror,
# on the test suite's servers (bench/common.sh), without a delay filter.
# Usage: bench/mirror.sh [SECONDS per job, default 10] [ROUNDS, default 3]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
O=${O:-build}
secs=${1:-10}
rounds=${2:-3}
size=1G
"$top/scripts/install-deps.sh"
# qemu-storage-daemon is only the benchmark's.
command -v qemu-storage-daemon >/dev/null ||
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-system-common >/dev/null
# Its rbd and iscsi drivers: without them the RBD section has cdisk only.
dpkg-query -W -f='${Status}' qemu-block-extra 2>/dev/null | grep -q "ok installed" ||
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-block-extra >/dev/null ||
	echo "qemu-block-extra could not be installed" >&2
make -s -C "$top" O="$O" all >/dev/null
PATH="$top/$O/bin:$PATH"
# shellcheck source=bench/common.sh disable=SC1091
. "$top/bench/common.sh"
work=$(mktemp -d "${BENCH_DIR:-/tmp}/cdisk-bench.XXXXXX")
export CDISK_SERVERS=$work/servers
pids=()
cleanup() {
	stop_all
	if [ -d "$CDISK_SERVERS" ]; then
		drop_pair
		"$top/tests/servers.sh" stop-all || true
	fi
	rm -rf "$work"
}
stop_all() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	pids=()
}
trap cleanup EXIT
cd "$work"
export CDISK_CONFIG=$work/cdisk.conf
printf '[metadata]\nbackup_dir = %s/meta\n[serve]\nruntime_dir = %s/run\n' \
	"$work" "$work" >"$CDISK_CONFIG"

wait_for() { # socket
	for _ in $(seq 400); do [ -S "$1" ] && return 0; sleep 0.05; done
	echo "no server on $1" >&2
	exit 1
}

# The two delayed targets, fresh each time: the primary full of data.
truncate -s "$size" data.raw
dd if=/dev/urandom of=data.raw bs=1M count=256 conv=notrunc status=none
start_targets() {
	cp --sparse=always data.raw primary.raw
	rm -f mirror.raw p.sock m.sock
	truncate -s "$size" mirror.raw
	nbdkit -f -U "$work/p.sock" --filter=delay file primary.raw \
		delay-write=1ms delay-zero=1ms 3>&- &
	pids+=($!)
	nbdkit -f -U "$work/m.sock" --filter=delay file mirror.raw \
		delay-write=1ms delay-zero=1ms 3>&- &
	pids+=($!)
	wait_for "$work/p.sock"
	wait_for "$work/m.sock"
	primary="nbd+unix:///?socket=$work/p.sock"
	mirror="nbd+unix:///?socket=$work/m.sock"
}

now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc -l; }

start_cdisk() { # with_mirror
	start_targets
	serve_cdisk "$1" cdisk
}
serve_cdisk() { # with_mirror COPY-KEY: on $primary and $mirror
	rm -f d.cdisk meta/* "$work/cdisk.sock"
	cdisk-create -q --primary "$primary" d.cdisk
	if [ "$1" = yes ]; then
		local t0
		t0=$(now)
		cdisk-mirror attach -q d.cdisk "$mirror"
		keep copy "$2" "$(since "$t0")"
	fi
	cdisk-serve -q --socket "$work/cdisk.sock" d.cdisk 3>&- &
	pids+=($!)
	wait_for "$work/cdisk.sock"
	uri="nbd+unix:///d?socket=$work/cdisk.sock"
}

# A QMP session on qemu-storage-daemon's monitor: qmp COMMAND-JSON sends
# one command and returns its reply line; qmp_wait EVENT reads until it.
qmp_open() {
	coproc QMP { socat - "UNIX-CONNECT:$work/qmp.sock"; }
	read -r _ <&"${QMP[0]}"
	qmp '{"execute": "qmp_capabilities"}' >/dev/null
}
qmp() {
	local line
	echo "$1" >&"${QMP[1]}"
	while read -r line <&"${QMP[0]}"; do
		case $line in *'"return"'* | *'"error"'*) echo "$line"; return 0 ;; esac
	done
}
qmp_wait() {
	local line
	while read -r line <&"${QMP[0]}"; do
		case $line in *"\"$1\""*) return 0 ;; esac
	done
}

start_qemu() { # with_mirror
	start_targets
	serve_qemu "$1" qemu \
		"driver=nbd,node-name=prim,server.type=unix,server.path=$work/p.sock" \
		"driver=nbd,node-name=mirr,server.type=unix,server.path=$work/m.sock"
}
serve_qemu() { # with_mirror COPY-KEY PRIMARY-BLOCKDEV MIRROR-BLOCKDEV
	rm -f "$work/qsd.sock" "$work/qmp.sock"
	qemu-storage-daemon --blockdev "$3" --blockdev "$4" \
		--nbd-server "addr.type=unix,addr.path=$work/qsd.sock" \
		--export type=nbd,id=e,node-name=prim,name=d,writable=on \
		--chardev "socket,id=qmp,path=$work/qmp.sock,server=on,wait=off" \
		--monitor chardev=qmp 3>&- &
	pids+=($!)
	wait_for "$work/qsd.sock"
	wait_for "$work/qmp.sock"
	uri="nbd+unix:///d?socket=$work/qsd.sock"
	[ "$1" = yes ] || return 0
	local t0 reply
	qmp_open
	t0=$(now)
	reply=$(qmp '{"execute": "blockdev-mirror", "arguments": {"job-id": "m",
		"device": "prim", "target": "mirr", "sync": "full",
		"copy-mode": "write-blocking"}}')
	case $reply in *'"error"'*) echo "blockdev-mirror: $reply" >&2; exit 1 ;; esac
	qmp_wait BLOCK_JOB_READY
	keep copy "$2" "$(since "$t0")"
}

# What the targets give busy together on this machine: fio itself
# writing to the primary alone, then to both targets at once (a job
# each, the slower one's figures).  The targets and the client share the
# cores, so on a small machine two busy targets each do less than one
# alone.  Not a strict bound for a mirror: two fio jobs cost the client
# twice what one guest's writes cost, where a mirror sends each twice.
start_direct() { # both
	start_targets
	uri=$primary
	[ "$1" = yes ] && uri2=$mirror
	return 0
}

run_job() { # name depth -> "iops latency-us"
	local jobs=(--name="$1" --uri="$uri") logs=()
	if [ -n "$uri2" ]; then
		jobs+=(--name="$1-mirror" --uri="$uri2")
		# Every write's latency, a file a job (slower_of_two).
		logs=(--write_lat_log="$1" --log_avg_msec=0)
	fi
	fio --output-format=json --output="$1.json" --ioengine=nbd \
		--rw=randwrite --bs=4k --iodepth="$2" --size="$size" \
		--time_based --runtime="$secs" --ramp_time=1 "${logs[@]}" "${jobs[@]}" >/dev/null
	jq -r '[.jobs[].write] | [(map(.iops) | min),
		(map(.clat_ns.mean) | max / 1000)] | @tsv' "$1.json"
}

# shellcheck disable=SC2034 # used through keep's namerefs
declare -A iops lat copy ceiling

measure() { # SETUP ROUND: start it, run both jobs, stop it
	echo "round $2: $1" >&2
	uri2=
	"start_${1%.*}" "${1#*.}"
	read -r i l < <(run_job "$1-qd1-$2" 1)
	keep iops "$1.qd1" "$i"
	keep lat "$1.qd1" "$l"
	read -r i _ < <(run_job "$1-qd16-$2" 16)
	keep iops "$1.qd16" "$i"
	[ -z "$uri2" ] || keep ceiling qd16 "$(slower_of_two "$1-qd16-$2")"
	stop_all
}

# A synchronous mirror's write is done when the slower of its two legs
# is: from the completion latencies of fio's two jobs straight to the
# targets (each its own log), a leg's mean over the mean of the slower of
# two taken at random, one from each target.  Even a mirror that cost
# nothing itself would get this share of the unmirrored IOPS when the
# targets' latency, not the CPU, sets the rate (QD16 here).
slower_of_two() { # fio's log prefix -> ratio
	awk -F, 'FNR == 1 { f++ } { v[f, ++n[f]] = $2; sum += $2 }
		END {
			srand(1)
			for (i = 0; i < 200000; i++) {
				x = v[1, int(rand() * n[1]) + 1]
				y = v[2, int(rand() * n[2]) + 1]
				max += x > y ? x : y
			}
			printf "%.3f\n", (sum / (n[1] + n[2])) / (max / 200000)
		}' "$1"_clat.1.log "$1"_clat.2.log
}
for round in $(seq "$rounds"); do
	for setup in cdisk.no cdisk.yes qemu.no qemu.yes direct.no direct.yes; do
		measure "$setup" "$round"
	done
done

echo
echo "4 KiB random writes through NBD; primary and mirror: nbdkit, 1 ms a write"
printf '%-28s %12s %12s %12s %12s\n' "" "cdisk" "cdisk+mirror" "qemu" "qemu+mirror"
for qd in qd1 qd16; do
	printf '%-28s %12.0f %12.0f %12.0f %12.0f\n' "IOPS, ${qd^^}" \
		"$(m iops cdisk.no.$qd)" "$(m iops cdisk.yes.$qd)" \
		"$(m iops qemu.no.$qd)" "$(m iops qemu.yes.$qd)"
done
printf '%-28s %12.0f %12.0f %12.0f %12.0f\n' "QD1 latency (us)" \
	"$(m lat cdisk.no.qd1)" "$(m lat cdisk.yes.qd1)" "$(m lat qemu.no.qd1)" \
	"$(m lat qemu.yes.qd1)"
echo
echo "the mirror's cost (mirrored / the same set-up unmirrored; target: IOPS >= 0.95x, QD1 latency <= 1.1x)"
printf '%-28s %12s %12s %14s\n' "" "cdisk" "qemu" "cdisk vs qemu"
for qd in qd1 qd16; do
	c=$(ratio "$(m iops cdisk.yes.$qd)" "$(m iops cdisk.no.$qd)")
	q=$(ratio "$(m iops qemu.yes.$qd)" "$(m iops qemu.no.$qd)")
	printf '%-28s %11.2fx %11.2fx %13.2fx\n' "IOPS, ${qd^^}" "$c" "$q" \
		"$(ratio "$(m iops cdisk.yes.$qd)" "$(m iops qemu.yes.$qd)")"
done
c=$(ratio "$(m lat cdisk.yes.qd1)" "$(m lat cdisk.no.qd1)")
q=$(ratio "$(m lat qemu.yes.qd1)" "$(m lat qemu.no.qd1)")
printf '%-28s %11.2fx %11.2fx %13.2fx\n' "QD1 latency" "$c" "$q" \
	"$(ratio "$(m lat cdisk.yes.qd1)" "$(m lat qemu.yes.qd1)")"
echo
echo "no mirror software: fio straight to both targets at once / to the primary alone"
printf '%-28s %12s %12s %12s\n' "" "alone" "both" "ratio"
for qd in qd1 qd16; do
	printf '%-28s %12.0f %12.0f %11.2fx\n' "IOPS, ${qd^^}" "$(m iops direct.no.$qd)" \
		"$(m iops direct.yes.$qd)" "$(ratio "$(m iops direct.yes.$qd)" "$(m iops direct.no.$qd)")"
done
printf '%-28s %12.0f %12.0f %11.2fx\n' "QD1 latency (us)" "$(m lat direct.no.qd1)" \
	"$(m lat direct.yes.qd1)" "$(ratio "$(m lat direct.yes.qd1)" "$(m lat direct.no.qd1)")"
printf '%-41s %24.2fx\n' "QD16: a mirror at no cost of its own, at best" "$(m ceiling qd16)"
echo "  (a leg's mean latency / the mean of the slower of two, from the run with both)"

# The copies: 256 MiB of data in a 1 GiB disk, the rest never written.
start_targets
t0=$(now)
qemu-img convert -n -f raw -O raw -W -m 8 "$primary" "$mirror"
keep copy convert "$(since "$t0")"
stop_all
start_cdisk yes
cdisk-mirror pause -q d.cdisk
fio --name=r --ioengine=nbd --uri="$uri" --rw=randwrite --bs=64k --size="$size" \
	--io_size=64M --iodepth=16 >/dev/null
t0=$(now)
cdisk-mirror resume -q d.cdisk
until cdisk-mirror status -q d.cdisk >/dev/null 2>&1; do sleep 0.05; done
resync=$(since "$t0")
stop_all
echo
echo "copies (seconds; 1 GiB disk holding 256 MiB of data)"
printf '%-44s %10.2f\n' "cdisk: initial copy (cdisk-mirror attach)" "$(m copy cdisk)"
printf '%-44s %10.2f\n' "qemu: blockdev-mirror until ready" "$(m copy qemu)"
printf '%-44s %10.2f\n' "qemu-img convert -W -m 8" "$(m copy convert)"
printf '%-44s %10.2f\n' "cdisk: resync of 64 MiB written while paused" "$resync"

# ---- For information (no target): an RBD primary with a tgtd mirror ----
# The storage of the patent, on the test suite's servers (one monitor and
# one memstore OSD; tgtd), on loopback without a delay: the primary a Ceph
# RBD image of 1 GiB holding the same 256 MiB of data (rbd import of
# data.raw: the rest never written), the mirror a LUN on a sparse 1 GiB
# file; both fresh for every set-up and removed after it.  cdisk reaches
# them as rbd:rbd/IMAGE (CEPH_CONF) and iscsi://127.0.0.1:PORT/IQN/1, qemu
# with its rbd and iscsi drivers.  Each keeps its own librbd cache setting:
# cdisk's writes back from the first write (rbd_cache_writethrough_until_
# flush off), qemu's is its rbd driver's default with cache.direct=off.
pairs=0 image='' tid=''
start_pair() { # sets primary, mirror, image, iqn
	pairs=$((pairs + 1))
	image=mirror-$pairs
	rbd import --no-progress data.raw "rbd/$image" >/dev/null
	rm -f lun.img
	truncate -s "$size" lun.img
	tid=$pairs
	iqn=iqn.2026-11.org.cdisk.bench:mirror-$pairs
	"${adm[@]}" --op new --mode target --tid "$tid" -T "$iqn"
	"${adm[@]}" --op new --mode logicalunit --tid "$tid" --lun 1 -b "$work/lun.img"
	"${adm[@]}" --op bind --mode target --tid "$tid" -I ALL
	primary=rbd:rbd/$image
	mirror=iscsi://127.0.0.1:$TGT_PORT/$iqn/1
}
drop_pair() { # after stop_all: no client holds them
	if [ -n "${tid:-}" ]; then
		"${adm[@]}" --op delete --mode target --tid "$tid" --force || true
		tid=
	fi
	rm -f lun.img
	[ -n "${image:-}" ] || return 0
	# A watch a killed client left lasts 5 s (servers.sh).
	for _ in $(seq 8); do
		timeout 20 rbd rm --no-progress "rbd/$image" 2>/dev/null && break
		sleep 1
	done
	image=
}
start_rbd_cdisk() { # with_mirror
	start_pair
	serve_cdisk "$1" rbd_cdisk
}
qemu_rbd() { echo "driver=rbd,node-name=prim,pool=rbd,image=$image,conf=$CEPH_CONF"; }
qemu_iscsi() {
	echo "driver=iscsi,node-name=mirr,transport=tcp,portal=127.0.0.1:$TGT_PORT,target=$iqn,lun=1"
}
start_rbd_qemu() { # with_mirror
	start_pair
	serve_qemu "$1" rbd_qemu "$(qemu_rbd)" "$(qemu_iscsi)"
}
bench_servers tgt ceph 3>&-
adm=(tgtadm -C "$TGT_CONTROL" --lld iscsi)

# Can qemu-storage-daemon open both (its block-rbd and block-iscsi
# modules)?  If not, why: its first complaint.
qemu_why=
start_pair
rm -f "$work/probe.sock"
qemu-storage-daemon --blockdev "$(qemu_rbd)" --blockdev "$(qemu_iscsi)" \
	--chardev "socket,id=qmp,path=$work/probe.sock,server=on,wait=off" \
	--monitor chardev=qmp 2>probe.err 3>&- &
probe=$!
pids+=("$probe")
for _ in $(seq 400); do
	[ -S "$work/probe.sock" ] && break
	kill -0 "$probe" 2>/dev/null || break
	sleep 0.05
done
[ -S "$work/probe.sock" ] || qemu_why=$(head -1 probe.err)
[ -n "$qemu_why" ] || [ -S "$work/probe.sock" ] || qemu_why="qemu-storage-daemon did not start"
stop_all
drop_pair

rbd_setups=(rbd_cdisk.no rbd_cdisk.yes)
[ -n "$qemu_why" ] || rbd_setups+=(rbd_qemu.no rbd_qemu.yes)
for round in $(seq "$rounds"); do
	for setup in "${rbd_setups[@]}"; do
		measure "$setup" "$round"
		drop_pair
	done
done
if [ -z "$qemu_why" ]; then
	start_pair
	t0=$(now)
	qemu-img convert -n -f raw -O raw -W -m 8 "rbd:rbd/$image:conf=$CEPH_CONF" "$mirror"
	keep copy rbd_convert "$(since "$t0")"
	drop_pair
fi

echo
echo "for information (no target): primary Ceph RBD, mirror tgtd iSCSI LUN (loopback, no delay)"
echo "4 KiB random writes through NBD; librbd cache: cdisk's writes back, qemu's as its driver sets it"
if [ -n "$qemu_why" ]; then
	echo "qemu rows not available: $qemu_why"
	printf '%-28s %12s %12s\n' "" "cdisk" "cdisk+mirror"
	for qd in qd1 qd16; do
		printf '%-28s %12.0f %12.0f\n' "IOPS, ${qd^^}" \
			"$(m iops rbd_cdisk.no.$qd)" "$(m iops rbd_cdisk.yes.$qd)"
	done
	printf '%-28s %12.0f %12.0f\n' "QD1 latency (us)" \
		"$(m lat rbd_cdisk.no.qd1)" "$(m lat rbd_cdisk.yes.qd1)"
	echo
	echo "the mirror's cost (mirrored / the same set-up unmirrored)"
	printf '%-28s %12s\n' "" "cdisk"
	for qd in qd1 qd16; do
		printf '%-28s %11.2fx\n' "IOPS, ${qd^^}" \
			"$(ratio "$(m iops rbd_cdisk.yes.$qd)" "$(m iops rbd_cdisk.no.$qd)")"
	done
	printf '%-28s %11.2fx\n' "QD1 latency" \
		"$(ratio "$(m lat rbd_cdisk.yes.qd1)" "$(m lat rbd_cdisk.no.qd1)")"
	echo
	echo "copies (seconds; 1 GiB disk holding 256 MiB of data)"
	printf '%-44s %10.2f\n' "cdisk: initial copy (cdisk-mirror attach)" "$(m copy rbd_cdisk)"
	exit 0
fi
printf '%-28s %12s %12s %12s %12s\n' "" "cdisk" "cdisk+mirror" "qemu" "qemu+mirror"
for qd in qd1 qd16; do
	printf '%-28s %12.0f %12.0f %12.0f %12.0f\n' "IOPS, ${qd^^}" \
		"$(m iops rbd_cdisk.no.$qd)" "$(m iops rbd_cdisk.yes.$qd)" \
		"$(m iops rbd_qemu.no.$qd)" "$(m iops rbd_qemu.yes.$qd)"
done
printf '%-28s %12.0f %12.0f %12.0f %12.0f\n' "QD1 latency (us)" \
	"$(m lat rbd_cdisk.no.qd1)" "$(m lat rbd_cdisk.yes.qd1)" \
	"$(m lat rbd_qemu.no.qd1)" "$(m lat rbd_qemu.yes.qd1)"
echo
echo "the mirror's cost (mirrored / the same set-up unmirrored)"
printf '%-28s %12s %12s %14s\n' "" "cdisk" "qemu" "cdisk vs qemu"
for qd in qd1 qd16; do
	c=$(ratio "$(m iops rbd_cdisk.yes.$qd)" "$(m iops rbd_cdisk.no.$qd)")
	q=$(ratio "$(m iops rbd_qemu.yes.$qd)" "$(m iops rbd_qemu.no.$qd)")
	printf '%-28s %11.2fx %11.2fx %13.2fx\n' "IOPS, ${qd^^}" "$c" "$q" \
		"$(ratio "$(m iops rbd_cdisk.yes.$qd)" "$(m iops rbd_qemu.yes.$qd)")"
done
c=$(ratio "$(m lat rbd_cdisk.yes.qd1)" "$(m lat rbd_cdisk.no.qd1)")
q=$(ratio "$(m lat rbd_qemu.yes.qd1)" "$(m lat rbd_qemu.no.qd1)")
printf '%-28s %11.2fx %11.2fx %13.2fx\n' "QD1 latency" "$c" "$q" \
	"$(ratio "$(m lat rbd_cdisk.yes.qd1)" "$(m lat rbd_qemu.yes.qd1)")"
echo
echo "copies (seconds; 1 GiB disk holding 256 MiB of data)"
printf '%-44s %10.2f\n' "cdisk: initial copy (cdisk-mirror attach)" "$(m copy rbd_cdisk)"
printf '%-44s %10.2f\n' "qemu: blockdev-mirror until ready" "$(m copy rbd_qemu)"
printf '%-44s %10.2f\n' "qemu-img convert -W -m 8" "$(m copy rbd_convert)"

#!/bin/bash
# The synchronous mirror's cost, side by side in one run.  The primary and
# the mirror are nbdkit file targets behind the delay filter (1 ms per
# write and zeroing: network storage), each on its own unix socket:
#   cdisk        a disk on the primary (cdisk-create --primary), served by
#                cdisk-serve, without and with a mirror (cdisk-mirror)
#   qemu         qemu-storage-daemon exporting the primary over NBD,
#                without and with blockdev-mirror copy-mode=write-blocking
#                to the mirror (the job ready first)
# fio writes 4 KiB at random through NBD at QD1 and QD16; each set-up runs
# ROUNDS times, taking turns, and the tables show medians: IOPS, QD1
# latency, and each mirror's cost against its own unmirrored set-up.
# Then the time of the initial copy (cdisk-mirror attach; qemu's job until
# ready; qemu-img convert of the same data) and of a resync of 64 MiB
# written while the mirror was paused.
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
make -s -C "$top" O="$O" all >/dev/null
PATH="$top/$O/bin:$PATH"
work=$(mktemp -d /tmp/cdisk-bench.XXXXXX)
pids=()
cleanup() {
	stop_all
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
	rm -f d.cdisk meta/* "$work/cdisk.sock"
	cdisk-create -q --primary "$primary" d.cdisk
	if [ "$1" = yes ]; then
		local t0
		t0=$(now)
		cdisk-mirror attach -q d.cdisk "$mirror"
		keep copy cdisk "$(since "$t0")"
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
	rm -f "$work/qsd.sock" "$work/qmp.sock"
	qemu-storage-daemon \
		--blockdev "driver=nbd,node-name=prim,server.type=unix,server.path=$work/p.sock" \
		--blockdev "driver=nbd,node-name=mirr,server.type=unix,server.path=$work/m.sock" \
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
	keep copy qemu "$(since "$t0")"
}

run_job() { # name depth -> "iops latency-us"
	fio --output-format=json --output="$1.json" --name="$1" --ioengine=nbd \
		--uri="$uri" --rw=randwrite --bs=4k --iodepth="$2" --size="$size" \
		--time_based --runtime="$secs" --ramp_time=1 >/dev/null
	jq -r '.jobs[0].write | [.iops, (.clat_ns.mean / 1000)] | @tsv' "$1.json"
}

# Values of every round are kept as "v1 v2 v3"; the tables show medians.
# shellcheck disable=SC2034 # used through keep's namerefs
declare -A iops lat copy
keep() { # ARRAY KEY VALUE
	declare -n a=$1
	a[$2]="${a[$2]:-} $3"
	unset -n a
}
median() { # VALUES...
	printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
		print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
ratio() { echo "$1 / $2" | bc -l; }

for round in $(seq "$rounds"); do
	for setup in cdisk.no cdisk.yes qemu.no qemu.yes; do
		echo "round $round: $setup" >&2
		"start_${setup%.*}" "${setup#*.}"
		read -r i l < <(run_job "$setup-qd1-$round" 1)
		keep iops "$setup.qd1" "$i"
		keep lat "$setup.qd1" "$l"
		read -r i _ < <(run_job "$setup-qd16-$round" 16)
		keep iops "$setup.qd16" "$i"
		stop_all
	done
done

m() { # ARRAY KEY
	declare -n a=$1
	# shellcheck disable=SC2086 # the rounds' values, one word each
	median ${a[$2]}
	unset -n a
}
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

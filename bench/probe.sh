#!/bin/bash
# How well cdisk-probe measures what the tests' proxy (tests/faultproxy)
# injects in front of nbdkit, next to what qemu-img bench measures over the
# same path, in one run:
#   round trip with 10, 50 and 100 ms added: cdisk-probe's mean of 20 pings
#     (one 512-byte read each) and qemu-img bench's time per 512-byte read
#     at depth 1 (20 reads, connection set-up included in its total)
#   a bandwidth limit of 8 and 32 MB/s: cdisk-probe's bounded read (16 MiB)
#     and qemu-img bench's 1 MiB reads at depth 4 (16 of them)
# Prints each figure, its error against what was injected, and how long
# each tool took.
# Usage: bench/probe.sh
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/common.sh
. "$top/bench/common.sh"
# shellcheck source=tests/ports.sh
. "$top/tests/ports.sh"
bench_setup tests/faultproxy
pids=()
bench_cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
}

port=$(free_port)
head -c 64M /dev/urandom >base.raw
nbdkit -f -i 127.0.0.1 -p "$port" file base.raw 3>&- 2>nbdkit.log &
pids+=($!)
wait_port "$port" 10 || { echo "nbdkit did not start" >&2; exit 1; }
faultproxy serve --to "127.0.0.1:$port" --port-file proxy.port --control proxy.ctl 3>&- &
pids+=($!)
for _ in $(seq 100); do [ -s proxy.port ] && [ -S proxy.ctl ] && break; sleep 0.05; done
uri=nbd://127.0.0.1:$(cat proxy.port)
ctl() { faultproxy ctl proxy.ctl "$@" >/dev/null; }

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
err() { awk -v m="$1" -v e="$2" 'BEGIN { printf "%+.1f%%", (m - e) * 100 / e }'; }

qemu_ms_per_read() { # -> "ms-per-read seconds"
	local t0 out
	t0=$(now)
	out=$(qemu-img bench -f raw -c 20 -d 1 -s 512 "$uri" 2>&1)
	awk -v s="$(sed -n 's/.*Run completed in \([0-9.]*\) seconds.*/\1/p' <<<"$out")" \
		'BEGIN { printf "%.2f", s * 1000 / 20 }'
	echo " $(since "$t0")"
}

qemu_read_rate() { # -> "bytes/s seconds"
	local t0 out
	t0=$(now)
	out=$(qemu-img bench -f raw -c 16 -d 4 -s 1M "$uri" 2>&1)
	awk -v s="$(sed -n 's/.*Run completed in \([0-9.]*\) seconds.*/\1/p' <<<"$out")" \
		'BEGIN { printf "%.0f", 16 * 1048576 / s }'
	echo " $(since "$t0")"
}

printf '%-22s %14s %8s %6s %14s %8s %6s\n' injected cdisk-probe error "s" "qemu-img bench" error "s"
for ms in 10 50 100; do
	ctl delay "$ms"
	t0=$(now)
	probe=$(cdisk-probe --json --no-read --pings 20 --max-rtt none "$uri" | jq -r .rtt_mean_ms)
	ptime=$(since "$t0")
	read -r qemu qtime < <(qemu_ms_per_read)
	printf '%-22s %11.2f ms %8s %6s %11.2f ms %8s %6s\n' "round trip +$ms ms" "$probe" \
		"$(err "$probe" "$ms")" "$ptime" "$qemu" "$(err "$qemu" "$ms")" "$qtime"
done
ctl delay 0
for rate in 8000000 32000000; do
	ctl rate "$rate"
	t0=$(now)
	probe=$(cdisk-probe --json --pings 5 --max-load-delay none "$uri" | jq -r .read_rate)
	ptime=$(since "$t0")
	read -r qemu qtime < <(qemu_read_rate)
	printf '%-22s %9.2f MB/s %8s %6s %9.2f MB/s %8s %6s\n' "limit $((rate / 1000000)) MB/s" \
		"$(echo "$probe / 1000000" | bc -l)" "$(err "$probe" "$rate")" "$ptime" \
		"$(echo "$qemu / 1000000" | bc -l)" "$(err "$qemu" "$rate")" "$qtime"
done

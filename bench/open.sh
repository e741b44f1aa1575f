#!/bin/bash
# How opening a disk grows with its size: cdisk-info --json next to
# qemu-img info on a qcow2 overlay of the same size, empty and after
# 20000 scattered 4 KiB writes.  Prints medians of 11 runs and ratios.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
O=${O:-build}
command -v qemu-img >/dev/null || apt-get install -y -qq qemu-utils >/dev/null
make -s -C "$top" O="$O" all "$O/tests/cdisk-io" >/dev/null
PATH="$top/$O/bin:$top/$O/tests:$PATH"
work=$(mktemp -d "${BENCH_DIR:-/tmp}/cdisk-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

median_ms() { # command...
	local t=() i s e
	for i in $(seq 11); do
		s=$(date +%s%N)
		"$@" >/dev/null
		e=$(date +%s%N)
		t+=($(((e - s) / 1000)))
	done
	printf '%s\n' "${t[@]}" | sort -n | sed -n 6p | awk '{printf "%.2f", $1 / 1000}'
}

scatter_ops() { # size_bytes: 20000 writes spread over the disk
	local size=$1 i blocks=$(($1 / 4096))
	for i in $(seq 0 19999); do
		echo "w:$(( (i * 2654435761 % blocks) * 4096 )):4K:$((i + 2))"
	done
	echo f
}

printf '%-8s %-10s %12s %14s %8s\n' size state "cdisk (ms)" "qemu-img (ms)" ratio
for size in 1G 64G 1T 8T; do
	bytes=$(numfmt --from=iec "$size")
	rm -f "$work"/*
	cdisk-create -q --size "$size" "$work/d.cdisk"
	qemu-img create -q -f qcow2 "$work/d.qcow2" "$size"
	for state in empty scattered; do
		if [ "$state" = scattered ]; then
			mapfile -t ops < <(scatter_ops "$bytes")
			cdisk-io "$work/d.cdisk" "${ops[@]}"
			qargs=()
			for op in "${ops[@]}"; do
				[ "$op" = f ] && continue
				IFS=: read -r _ off _ _ <<<"$op"
				qargs+=(-c "write -q $off 4k")
			done
			qemu-io -f qcow2 "${qargs[@]}" "$work/d.qcow2" >/dev/null
		fi
		c=$(median_ms cdisk-info --json "$work/d.cdisk")
		q=$(median_ms qemu-img info --output=json "$work/d.qcow2")
		printf '%-8s %-10s %12s %14s %8s\n' "$size" "$state" "$c" "$q" \
			"$(awk -v c="$c" -v q="$q" 'BEGIN { printf "%.2fx", q / c }')"
	done
done
echo "ratio: qemu-img time / cdisk time (above 1: cdisk is faster)"

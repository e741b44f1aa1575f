#!/bin/bash
# layers.sh [TREE]: check that lib/'s folders include one another only
# downward, in the order docs/DESIGN.md gives ("Layer order: base < dev
# < ..."), with no cycle between folders, and that the programs (cmd/)
# include no internal header but text.h.  Prints one line per finding;
# exit status 1 when there is one.  The graph comes from the #include
# lines: a header's folder is wherever the one file of that name lives.
# Used by tests/905-layers.bats.
set -uo pipefail
shopt -s nullglob

root=${1:-$(dirname "$0")/..}

# Includes that go against the order, each with its reason:
# "FROM TO: why".  None today.
EXCEPTIONS=(
)

excepted() {
	local e
	for e in "${EXCEPTIONS[@]}"; do
		[ "${e%%:*}" = "$1 $2" ] && return 0
	done
	return 1
}

found=0
say() {
	echo "$*"
	found=1
}

read -ra order <<<"$(sed -n 's/^Layer order ([^)]*): *//p' "$root/docs/DESIGN.md" | tr -d '<`.')"
if [ ${#order[@]} -lt 2 ]; then
	echo "docs/DESIGN.md has no line 'Layer order (...): base < dev < ...'"
	exit 1
fi
declare -A rank=() home=() edges=()
i=0
for f in "${order[@]}"; do
	rank[$f]=$i
	i=$((i + 1))
done

for d in "$root"/lib/*/; do
	d=${d%/}
	d=${d##*/}
	[ -n "${rank[$d]+x}" ] || say "lib/$d/ is not in the layer order of docs/DESIGN.md"
done
for f in "${order[@]}"; do
	[ -d "$root/lib/$f" ] || say "lib/$f/ is in the layer order but does not exist"
done
for f in "$root"/lib/*.c "$root"/lib/*.h; do
	[ "${f##*/}" = cdisk.h ] || say "lib/${f##*/} is in no layer's folder"
done

for h in "$root"/lib/*/*.h; do
	n=${h##*/}
	d=${h%/*}
	d=${d##*/}
	[ -z "${home[$n]:-}" ] || say "two headers named $n: lib/${home[$n]}/ and lib/$d/"
	home[$n]=$d
done

# Edges between folders, with the files that make them.
while IFS=: read -r file inc; do
	rel=${file#"$root"/}
	from=${rel#lib/}
	from=${from%%/*}
	to=${home[$inc]:-}
	[ -n "$to" ] && [ "$to" != "$from" ] || continue
	[[ " ${edges["$from $to"]:-} " == *" $rel "* ]] || edges["$from $to"]+=" $rel"
done < <(grep -o '^[[:space:]]*#[[:space:]]*include[[:space:]]*"[^"/]*"' \
	"$root"/lib/*/*.c "$root"/lib/*/*.h | sed 's/:.*"\(.*\)"$/:\1/')

for e in "${!edges[@]}"; do
	read -r from to <<<"$e"
	excepted "$from" "$to" && continue
	if [ -n "${rank[$from]+x}" ] && [ -n "${rank[$to]+x}" ] &&
		[ "${rank[$to]}" -gt "${rank[$from]}" ]; then
		say "lib/$from/ includes lib/$to/, a layer above it:${edges[$e]}"
	fi
done

# Cycles between folders: the closure of the edges (a handful of nodes).
declare -A reach=()
for e in "${!edges[@]}"; do
	read -r from to <<<"$e"
	excepted "$from" "$to" || reach["$from $to"]=1
done
folders=("${order[@]}")
for d in "$root"/lib/*/; do
	d=${d%/}
	d=${d##*/}
	[ -n "${rank[$d]+x}" ] || folders+=("$d")
done
for k in "${folders[@]}"; do
	for a in "${folders[@]}"; do
		[ -n "${reach["$a $k"]:-}" ] || continue
		for b in "${folders[@]}"; do
			[ -n "${reach["$k $b"]:-}" ] && reach["$a $b"]=1
		done
	done
done
for a in "${folders[@]}"; do
	for b in "${folders[@]}"; do
		[[ "$a" < "$b" ]] || continue
		if [ -n "${reach["$a $b"]:-}" ] && [ -n "${reach["$b $a"]:-}" ]; then
			say "include cycle between lib/$a/ and lib/$b/:" \
				"${edges["$a $b"]:-(through other folders)} ->" \
				"${edges["$b $a"]:-(through other folders)}"
		fi
	done
done

# The programs see the public API, and text.h (which they link).
while IFS=: read -r file inc; do
	[ -n "${home[$inc]:-}" ] && [ "$inc" != text.h ] &&
		say "${file#"$root"/} includes lib/${home[$inc]}/$inc: programs use cdisk.h"
done < <(grep -o '^[[:space:]]*#[[:space:]]*include[[:space:]]*"[^"/]*"' \
	"$root"/cmd/*.c "$root"/cmd/*.h | sed 's/:.*"\(.*\)"$/:\1/')

exit $found

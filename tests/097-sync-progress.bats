#!/usr/bin/env bats
# What cdisk-sync shows a person: a progress line on a terminal whose rate
# is true from the first second and that is never drawn twice the same,
# and counts in the right number.
bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
}

@test "the progress line on a terminal: a true rate, no line drawn twice" {
	make_base base.img 64M
	run_cdisk 0 cdisk-create --base base.img d.cdisk
	run_cdisk 0 cdisk-io d.cdisk w:0:40M:5 f
	# script(1) gives cdisk-sync a terminal; its stderr is what a person sees.
	run_cdisk 0 script -qfec "cdisk-sync --rate 20M d.cdisk" /dev/null
	# One record per redraw (each starts with a carriage return).
	tr '\r' '\n' <<<"$output" | grep '^cdisk-sync: .* sent, .* left' >lines || true
	[ "$(wc -l <lines)" -ge 2 ] || fail "no progress lines: $output"
	# Held to 20 MiB/s, never shown as faster than 25 (a whole-second
	# clock showed 36; the first requests leave at once).
	awk -F', ' '{ for (i = 1; i <= NF; i++) if ($i ~ / MiB\/s$/) { split($i, a, " ");
		if (a[1] + 0 > 25) { print "too fast: " $0; bad = 1 } } }
		END { exit bad }' lines
	# No line drawn twice in a row.
	run uniq -d lines
	assert_output ""
}

@test "counts agree with their number: 1 request, 2 requests" {
	make_base base.img 16M
	run_cdisk 0 cdisk-create --base base.img d.cdisk
	run_cdisk 0 cdisk-io d.cdisk w:0:4K:5 f
	run_cdisk 0 cdisk-sync d.cdisk
	assert_output --regexp "sent in 1 request, "
	run_cdisk 0 cdisk-io d.cdisk w:0:4K:6 w:8M:4K:7 f
	run_cdisk 0 cdisk-sync --depth 1 d.cdisk
	assert_output --regexp "sent in 2 requests, "
}

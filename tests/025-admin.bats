#!/usr/bin/env bats
# What an administrator meets: quiet checks for cron, one exit code per
# condition, paths as probe targets, messages and JSON numbers.
bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
}

teardown() {
	stop_serve KILL || true
}

damage() { # damage FILE OFFSET COUNT: overwrite with 0xAA bytes
	printf '%*s' "$3" '' | tr ' ' '\252' |
		dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

@test "info -q --check: nothing when sound, only the problems otherwise" {
	run_cdisk 0 cdisk-create --size 4M d.cdisk
	run_cdisk 0 cdisk-io d.cdisk w:0:4K:9 f
	run_cdisk 0 cdisk-info -q --check d.cdisk
	assert_equal "$output" ""
	assert_equal "$stderr" ""
	damage d.cdisk $((4096 + 100)) 16
	run_cdisk 7 cdisk-info -q --check --no-repair d.cdisk
	assert_output "d.cdisk: superblock B is damaged; copy A is intact (open for writing to repair)"
	assert_error cdisk-info "^cdisk-info: 'd.cdisk' has 1 problem \(not repaired: --no-repair\)$"
	# A repair is told too, once; then all is well again.
	run_cdisk 0 cdisk-info -q --check d.cdisk
	assert_output "d.cdisk: superblock B was damaged: rewritten from copy A"
	run_cdisk 0 cdisk-info -q --check d.cdisk
	assert_equal "$output" ""
	# Without -q, the whole report as before.
	run_cdisk 0 cdisk-info --check d.cdisk
	assert_line --regexp "^check result: +0 errors, 0 repaired, 0 warnings$"
}

#!/usr/bin/env bats
# Every program: help and version on stdout with status 0, usage errors
# as one line plus a hint with status 2.
bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
}

programs() {
	ls "$CDISK_BUILD/bin"
}

# Programs that take exactly one disk, as their own --usage says.
single_disk_programs() {
	local p
	for p in $(programs); do
		"$p" --usage | grep -q 'NAME\.cdisk\.\.\.' || echo "$p"
	done
}

@test "every program prints --help and -h on stdout and exits 0" {
	for p in $(programs); do
		for opt in --help -h; do
			run_cdisk 0 "$p" "$opt"
			assert_output --partial "$p - "
			assert_output --partial "Usage:"
			assert_output --partial "Exit status:"
			[ -z "$stderr" ] || fail "$p $opt wrote to stderr"
		done
	done
}

@test "every program prints --version and -V on stdout and exits 0" {
	for p in $(programs); do
		for opt in --version -V; do
			run_cdisk 0 "$p" "$opt"
			assert_output --regexp "^$p [0-9]+\.[0-9]+\.[0-9]+$"
		done
	done
}

@test "every program prints --usage and exits 0" {
	for p in $(programs); do
		run_cdisk 0 "$p" --usage
		assert_output --partial "Usage: $p"
	done
}

@test "an unknown option is a usage error" {
	for p in $(programs); do
		run_cdisk 2 "$p" --no-such-option x.cdisk
		assert_usage_error "$p" "unknown option '--no-such-option'"
		assert_output ""
	done
}

@test "a missing argument is a usage error" {
	for p in $(single_disk_programs); do
		run_cdisk 2 "$p"
		assert_usage_error "$p" "missing argument: (URI\|)?NAME.cdisk"
	done
}

@test "an extra argument is a usage error" {
	for p in $(single_disk_programs); do
		run_cdisk 2 "$p" a.cdisk b.cdisk
		assert_usage_error "$p" "unexpected argument 'b.cdisk'"
	done
}

@test "an option missing its value is a usage error" {
	run_cdisk 2 cdisk-create x.cdisk --size
	assert_usage_error cdisk-create "missing argument '--size'"
}

@test "--long-options and --short-options list what --help shows" {
	for p in $(programs); do
		run_cdisk 0 "$p" --long-options
		assert_line -- "--help"
		assert_line -- "--version"
		run_cdisk 0 "$p" --short-options
		assert_line -- "-h"
		assert_line -- "-V"
	done
}

@test "popt configuration files are not read" {
	# An alias in ~/.popt must not change what a program does.
	export HOME=$BATS_TEST_TMPDIR
	echo "cdisk-create alias --size --size 999G" >"$HOME/.popt"
	run_cdisk 0 cdisk-create --size 1M a.cdisk
	run_cdisk 0 cdisk-info --json a.cdisk
	assert_equal "$(json_get .size)" 1048576
}

@test "output that cannot be written is a failure" {
	run_cdisk 0 cdisk-create --size 1M a.cdisk
	run -1 bash -c 'cdisk-info a.cdisk >/dev/full'
}

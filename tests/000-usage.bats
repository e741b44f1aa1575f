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

# Programs that take exactly one disk, as their own --usage says (not a
# COMMAND first: cdisk-mirror has tests of its own below).
single_disk_programs() {
	local p
	for p in $(programs); do
		"$p" --usage | grep -qE 'NAME\.cdisk\.\.\.|COMMAND' || echo "$p"
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

@test "cdisk-mirror: a missing, unknown or misplaced word is a usage error" {
	run_cdisk 2 cdisk-mirror
	assert_usage_error cdisk-mirror "missing argument: COMMAND NAME.cdisk \\[URI\\]"
	run_cdisk 2 cdisk-mirror status
	assert_usage_error cdisk-mirror "missing argument: COMMAND NAME.cdisk"
	run_cdisk 2 cdisk-mirror mirror a.cdisk
	assert_usage_error cdisk-mirror "unknown command 'mirror': expected attach, detach, pause, resume, resync, status, failover or verify"
	run_cdisk 2 cdisk-mirror attach a.cdisk
	assert_usage_error cdisk-mirror "attach needs the mirror's URI: cdisk-mirror attach NAME.cdisk URI"
	run_cdisk 2 cdisk-mirror status a.cdisk b.img
	assert_usage_error cdisk-mirror "unexpected argument 'b.img'"
	run_cdisk 2 cdisk-mirror attach a.cdisk b.img c
	assert_usage_error cdisk-mirror "unexpected argument 'c'"
	run_cdisk 2 cdisk-mirror attach --full a.cdisk b.img
	assert_usage_error cdisk-mirror "--full goes with resync"
	run_cdisk 2 cdisk-mirror resync --no-copy a.cdisk
	assert_usage_error cdisk-mirror "--no-copy goes with attach"
	run_cdisk 2 cdisk-mirror pause --no-wait a.cdisk
	assert_usage_error cdisk-mirror "--no-wait goes with attach, resume and resync"
	run_cdisk 2 cdisk-mirror detach --json a.cdisk
	assert_usage_error cdisk-mirror "--json goes with status and verify"
	run_cdisk 2 cdisk-mirror status --rate 1M a.cdisk
	assert_usage_error cdisk-mirror "--rate and --max-time go with attach, resume, resync and verify"
	run_cdisk 2 cdisk-mirror resume --rate fast a.cdisk
	assert_usage_error cdisk-mirror "invalid --rate 'fast'"
	# Nothing was looked at: the disk does not exist.
	[ ! -e a.cdisk ]
}

@test "cdisk-serve: a bad mirror policy is a usage error" {
	run_cdisk 2 cdisk-serve --mirror-timeout 50 a.cdisk
	assert_usage_error cdisk-serve "--mirror-timeout must be from 100 to 600000 milliseconds"
	run_cdisk 2 cdisk-serve --on-mirror-error ignore a.cdisk
	assert_usage_error cdisk-serve "invalid --on-mirror-error 'ignore': expected degrade or fail"
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

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
	run_cdisk 7 cdisk-info --check --no-repair d.cdisk
	assert_line --regexp "^check result: +1 error, 0 repaired, 0 warnings$"
	# A repair is told too, once; then all is well again.
	run_cdisk 0 cdisk-info -q --check d.cdisk
	assert_output "d.cdisk: superblock B was damaged: rewritten from copy A"
	run_cdisk 0 cdisk-info -q --check d.cdisk
	assert_equal "$output" ""
	# Without -q, the whole report as before.
	run_cdisk 0 cdisk-info --check d.cdisk
	assert_line --regexp "^check result: +0 errors, 0 repaired, 0 warnings$"
}

@test "a directory given as a disk is 7 from every program" {
	mkdir dir
	for cmd in "cdisk-info dir" "cdisk-info --check dir" "cdisk-probe dir" \
		"cdisk-sync dir" "cdisk-sync -n dir" "cdisk-restore --metadata dir" \
		"cdisk-serve --socket s.sock dir"; do
		# shellcheck disable=SC2086
		CDISK_TIMEOUT=10 run_cdisk 7 $cmd
		assert_error "${cmd%% *}" "^${cmd%% *}: 'dir' is not a cdisk \(not a regular file\)$"
	done
}

@test "create over a file that is not a cdisk is 7, and changes nothing" {
	echo precious >d.cdisk
	run_cdisk 7 cdisk-create --size 4M d.cdisk
	assert_error cdisk-create "^cdisk-create: 'd.cdisk' exists and is not a cdisk; it was not changed$"
	assert_equal "$(cat d.cdisk)" precious
	mkdir dir
	run_cdisk 7 cdisk-create --size 4M dir
}

@test "serve --group with an unknown group: one line, nothing served" {
	run_cdisk 0 cdisk-create --size 4M d.cdisk
	CDISK_TIMEOUT=10 run_cdisk 2 cdisk-serve --socket s.sock --group nosuchgroup d.cdisk
	assert_error cdisk-serve "^cdisk-serve: unknown group 'nosuchgroup'$"
	[ ! -e s.sock ] || fail "it listened"
}

@test "probe: a path is a target unless it is a cdisk" {
	truncate -s 32M raw.img
	run_cdisk 0 cdisk-probe --pings 3 --read-size 1M --json raw.img
	assert_equal "$(json_get .target)" raw.img
	assert_equal "$(json_get .verdict)" healthy
	assert_equal "$(json_get .read_bytes)" 1048576
	# A cdisk is still a disk whose base is probed.
	run_cdisk 0 cdisk-create --base raw.img d.cdisk
	run_cdisk 0 cdisk-probe --pings 3 --read-size 1M --json d.cdisk
	assert_equal "$(json_get .target)" "$BATS_TEST_TMPDIR/raw.img"
	run_cdisk 0 cdisk-create --size 4M nobase.cdisk
	run_cdisk 2 cdisk-probe nobase.cdisk
	assert_error cdisk-probe "'nobase.cdisk' has no base to probe"
}

@test "JSON: numbers to a thousandth, ceph_health as the option takes it" {
	truncate -s 32M raw.img
	run_cdisk 0 cdisk-probe --pings 5 --read-size 1M --json raw.img
	refute_output --regexp '[0-9]\.[0-9]{4,}'
	assert_equal "$(json_get .limits.ceph_health)" warn
	assert_equal "$(json_get .limits.max_loss)" 0.05
	run_cdisk 0 cdisk-probe --pings 2 --no-read --ceph-health ok --json --watch 1 --count 1 raw.img
	refute_output --regexp '[0-9]\.[0-9]{4,}'
	assert_equal "$(json_get .limits.ceph_health)" ok
	run_cdisk 0 cdisk-probe --pings 2 --no-read --ceph-health err --json raw.img
	assert_equal "$(json_get .limits.ceph_health)" err
	# Through cli.c for every program: a sync's report too.
	make_base base.img 8M
	run_cdisk 0 cdisk-create --base base.img d.cdisk
	run_cdisk 0 cdisk-io d.cdisk w:0:3M:7 f
	run_cdisk 0 cdisk-sync --json d.cdisk
	refute_output --regexp '[0-9]\.[0-9]{4,}'
}

@test "the fuzz targets leave no folder behind, in TMPDIR or /tmp" {
	mkdir tmp corpus
	touch start
	for f in nbd-fuzz parsers-fuzz; do
		TMPDIR=$BATS_TEST_TMPDIR/tmp run_cdisk 0 "$CDISK_BUILD/fuzz/$f" -runs=50 corpus
	done
	assert_equal "$(ls -A tmp)" ""
	assert_equal "$(find /tmp -maxdepth 1 -name 'cdisk-fuzz-*' -newer start)" ""
}

# complete LINE: what the cdisk completion offers for LINE (cursor at end),
# one word a line (as 900-docs.bats does it).
complete_line() {
	run_cdisk 0 bash -c '
		source /usr/share/bash-completion/bash_completion
		source "$1/completions/cdisk"
		read -ra COMP_WORDS <<<"$2"
		[[ $2 == *" " ]] && COMP_WORDS+=("")
		COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
		COMP_LINE=$2
		COMP_POINT=${#COMP_LINE}
		_cdisk "${COMP_WORDS[0]}" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
		printf "%s\n" "${COMPREPLY[@]}"' _ "$TOP" "$1"
}

@test "completion: what follows an option is what that program's option takes" {
	touch a.cdisk b.img
	# -s: a size to cdisk-create, a socket path to cdisk-serve.
	complete_line "cdisk-create -s "
	assert_output ""
	complete_line "cdisk-create --size "
	assert_output ""
	complete_line "cdisk-serve -s "
	assert_line b.img
	# -c: a count to cdisk-probe, a file to cdisk-serve, no argument to cdisk-info.
	complete_line "cdisk-probe -c "
	assert_output ""
	complete_line "cdisk-serve -c "
	assert_line b.img
	complete_line "cdisk-info -c "
	assert_line a.cdisk
	refute_line b.img
	complete_line "cdisk-probe --ceph-health "
	assert_equal "$(sort <<<"$output" | tr '\n' ' ')" "err ok warn "
	complete_line "cdisk-serve --tls "
	assert_equal "$(sort <<<"$output" | tr '\n' ' ')" "off on require "
	complete_line "cdisk-serve -t "
	assert_output ""
	complete_line "cdisk-create --base "
	assert_line b.img
}

@test "cdisk(7)'s program table lists every program" {
	for p in $(ls "$CDISK_BUILD/bin"); do
		grep -qE "^\|  \*$p\*\(1\)$" "$TOP/man/cdisk.7.scd" ||
			fail "$p is not in cdisk(7)'s program table"
	done
	run_cdisk 0 bash -c "scdoc <'$TOP/man/cdisk.7.scd' >/dev/null"
	assert_equal "$stderr" ""
}

@test "README: QEMU and libvirt attach a served disk, --pull, --close, make check's time, build/bin" {
	readme=$TOP/README.md
	grep -q '^cdisk-sync --pull ' "$readme" || fail "no --pull example"
	grep -q '^cdisk-sync --close ' "$readme" || fail "no --close example"
	grep -qE '^about [0-9]+ minutes' "$readme" || fail "make check's time is not said"
	grep -q 'build/bin' "$readme" || fail "where make puts the programs is not said"
	grep -q 'make uninstall' "$readme" || fail "make uninstall is not said"
	# The QEMU drive and the libvirt disk, as the README gives them, reach a
	# served disk (the socket moved to this test's folder).
	drive=$(grep -o "file=nbd+unix:///bob?socket=/run/cdisk/bob.sock[^']*" "$readme") ||
		fail "no QEMU example"
	grep -q "<source protocol='nbd' name='bob'>" "$readme" || fail "no libvirt example"
	grep -q "<host transport='unix' socket='/run/cdisk/bob.sock'/>" "$readme" ||
		fail "no libvirt example"
	run_cdisk 0 cdisk-create --size 16M bob.cdisk
	SERVE_EXPORT=bob start_serve bob.cdisk
	uri=${drive#file=}
	uri=${uri%%,*}
	run_cdisk 0 qemu-img info --output=json "${uri/\/run\/cdisk/$SERVE_RUN}"
	assert_equal "$(json_get '."virtual-size"')" 16777216
}

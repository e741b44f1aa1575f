#!/usr/bin/env bats
# Man pages, completion and README stay in step with the programs.
bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
}

programs() {
	ls "$CDISK_BUILD/bin"
}

@test "every program has a man page that builds without warnings" {
	for p in $(programs); do
		[ -f "$TOP/man/$p.1.scd" ] || fail "$p has no man/$p.1.scd"
		run_cdisk 0 bash -c "scdoc <'$TOP/man/$p.1.scd' >/dev/null"
		[ -z "$stderr" ] || fail "scdoc warns on $p.1.scd: $stderr"
	done
	for page in cdisk.5 cdisk.7 cdisk-protocol.7; do
		run_cdisk 0 bash -c "scdoc <'$TOP/man/$page.scd' >/dev/null"
	done
}

@test "every long option of every program is in its man page" {
	for p in $(programs); do
		for opt in $("$p" --long-options); do
			grep -qE -- "(\*|, )${opt}\*" "$TOP/man/$p.1.scd" ||
				fail "$p: $opt is not documented in man/$p.1.scd"
		done
	done
}

@test "every man page documents the whole exit status table" {
	for page in "$TOP"/man/cdisk-*.1.scd "$TOP/man/cdisk.7.scd"; do
		for code in 0 1 2 3 4 5 6 7 8 9 10 11; do
			grep -qE "^(\[\[|\|) +\*$code\*$" "$page" ||
				fail "${page##*/} does not document exit status $code"
		done
	done
}

@test "the README documents the exit status table and every program" {
	for code in 0 1 2 3 4 5 6 7 8 9 10 11; do
		grep -qE "^\| $code \|" "$TOP/README.md" || fail "README lacks exit status $code"
	done
	for p in $(programs); do
		grep -q "$p" "$TOP/README.md" || fail "README does not mention $p"
	done
}

# complete LINE: what the cdisk completion offers for LINE (cursor at end),
# one word a line.  Completion code is not written for `set -e`, so it
# runs in a shell of its own.
complete_line() {
	run_cdisk 0 bash -c '
		source /usr/share/bash-completion/bash_completion
		source "$1/completions/cdisk"
		read -ra COMP_WORDS <<<"$2"
		[[ $2 == *" " ]] && COMP_WORDS+=("")
		COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
		COMP_LINE=$2
		COMP_POINT=${#COMP_LINE}
		complete -p "${COMP_WORDS[0]}" >/dev/null || exit 3
		_cdisk "${COMP_WORDS[0]}" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
		printf "%s\n" "${COMPREPLY[@]}"' _ "$TOP" "$1"
}

@test "bash completion offers every option, asking the program itself" {
	for p in $(programs); do
		complete_line "$p --"
		for opt in $("$p" --long-options); do
			assert_line -- "$opt"
		done
	done
}

@test "completion of a disk name offers cdisk files" {
	touch a.cdisk b.img
	complete_line "cdisk-info "
	assert_line a.cdisk
	refute_line b.img
	complete_line "cdisk-create --base "
	assert_line b.img
}

@test "completion of cdisk-mirror offers its commands, then a disk, then attach's mirror" {
	touch a.cdisk b.img
	complete_line "cdisk-mirror "
	for c in attach detach pause resume resync status verify; do
		assert_line "$c"
	done
	refute_line a.cdisk
	# An option's argument is not the command.
	complete_line "cdisk-mirror --rate 10M re"
	assert_line resume
	assert_line resync
	refute_line status
	complete_line "cdisk-mirror attach "
	assert_line a.cdisk
	refute_line b.img
	complete_line "cdisk-mirror attach a.cdisk "
	assert_line b.img
	complete_line "cdisk-mirror status a.cdisk "
	assert_output ""
}

@test "make install puts programs, library, header, pkg-config, man pages and completions in place" {
	dest=$BATS_TEST_TMPDIR/root
	run_cdisk 0 make -C "$TOP" --no-print-directory -s O=build/install-test \
		install DESTDIR="$dest" PREFIX=/usr/local
	for f in bin/cdisk-create bin/cdisk-info lib/libcdisk.so.0 lib/libcdisk.so \
		include/cdisk.h lib/pkgconfig/cdisk.pc share/man/man1/cdisk-create.1 \
		share/man/man5/cdisk.5 share/man/man7/cdisk.7 \
		share/bash-completion/completions/cdisk \
		share/bash-completion/completions/cdisk-info \
		lib/systemd/system/cdisk-serve@.service; do
		[ -e "$dest/usr/local/$f" ] || fail "missing $f"
	done
	assert_file_line "$dest/usr/local/lib/systemd/system/cdisk-serve@.service" \
		"^ExecStart=/usr/local/bin/cdisk-serve "
	# The installed program runs against the installed library.
	run_cdisk 0 "$dest/usr/local/bin/cdisk-create" --version
	# The library exports only its public API.
	run_cdisk 0 bash -c "nm -D --defined-only '$dest/usr/local/lib/libcdisk.so.0' | awk '{print \$3}' | grep -v '^cdisk_' | grep -v '^CDISK_0$' || true"
	assert_output ""
	# Each exported function is declared in the installed header, and the
	# CLI helpers (sizes parsed and printed, errors mapped to exit codes)
	# are neither: the programs link their own copy (lib/base/text.c).
	run_cdisk 0 bash -c "nm -D --defined-only '$dest/usr/local/lib/libcdisk.so.0' | awk '\$3 ~ /^cdisk_/ {sub(/@.*/, \"\", \$3); print \$3}' | while read -r s; do grep -qw \"\$s\" '$dest/usr/local/include/cdisk.h' || echo \"exported, not declared: \$s\"; done"
	assert_output ""
	run_cdisk 1 grep -E 'cdisk_(exit_code|exit_name|verdict_exit_code|parse_|format_size)' \
		"$dest/usr/local/include/cdisk.h"
	# A program built against the installed header and pkg-config file links.
	cat >prog.c <<-'EOF'
	#include <cdisk.h>
	int main(void)
	{
		struct cdisk_ctx *ctx = cdisk_ctx_new();
		cdisk_ctx_free(ctx);
		return ctx ? CDISK_EXIT_OK : CDISK_EXIT_FAILURE;
	}
	EOF
	run_cdisk 0 bash -c "cc prog.c \$(PKG_CONFIG_PATH='$dest/usr/local/lib/pkgconfig' PKG_CONFIG_SYSROOT_DIR='$dest' pkg-config --cflags --libs cdisk) -o prog"
	rm -rf "$TOP/build/install-test"
}

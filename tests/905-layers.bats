#!/usr/bin/env bats
# lib/'s folders are the layers of docs/DESIGN.md: each includes only
# from itself and the folders below it, so there is no include cycle
# between folders, and the programs use only the public API.
bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
}

@test "lib/'s folders include only downward in the documented layer order" {
	run_cdisk 0 "$TOP/tests/layers.sh" "$TOP"
	assert_output ""
}

@test "the Makefile builds the folders of the documented layer order" {
	order=$(sed -n 's/^Layer order ([^)]*): *//p' "$TOP/docs/DESIGN.md" | tr -d '<`.' | xargs)
	dirs=$(sed -n 's/^LIB_DIRS := //p' "$TOP/Makefile" | sed 's|lib/||g' | xargs)
	[ -n "$order" ] || fail "no layer order in docs/DESIGN.md"
	assert_equal "$dirs" "$order"
}

# The check itself: an include against the order, a cycle, a file at
# lib/'s top level, a folder outside the order and a program reaching
# into the library's internals are each found.
@test "the layer check finds an upward include, a cycle and misplaced files" {
	mkdir -p tree/docs
	cp -r "$TOP/lib" "$TOP/cmd" tree/
	cp "$TOP/docs/DESIGN.md" tree/docs/
	run_cdisk 0 "$TOP/tests/layers.sh" tree
	assert_output ""
	printf '#include "copy.h"\n' >>tree/lib/dev/dev.c
	run_cdisk 1 "$TOP/tests/layers.sh" tree
	assert_line "lib/dev/ includes lib/engine/, a layer above it: lib/dev/dev.c"
	assert_line --regexp '^include cycle between lib/dev/ and lib/engine/:  lib/dev/dev.c -> .*lib/engine/copy.h'
	cp "$TOP/lib/dev/dev.c" tree/lib/dev/dev.c
	touch tree/lib/stray.c
	mkdir tree/lib/extra
	printf '#include "disk.h"\n' >>tree/cmd/cli.c
	run_cdisk 1 "$TOP/tests/layers.sh" tree
	assert_line "lib/stray.c is in no layer's folder"
	assert_line "lib/extra/ is not in the layer order of docs/DESIGN.md"
	assert_line "cmd/cli.c includes lib/disk/disk.h: programs use cdisk.h"
	refute_line --partial "cycle"
}

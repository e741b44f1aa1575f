#!/usr/bin/env bats
# make install and make uninstall, into a DESTDIR, from a copy of the
# test build (so that nothing is compiled again).
bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
	B=$BATS_TEST_TMPDIR/build
	PKG=$BATS_TEST_TMPDIR/pkg
	mkdir -p "$B"
	cp -a "$CDISK_BUILD"/bin "$CDISK_BUILD"/lib "$CDISK_BUILD"/cmd "$CDISK_BUILD"/man "$B"/
	rm -f "$B"/lib/cdisk.pc "$B"/paths.stamp
}

mk() {
	CDISK_TIMEOUT=300 run_cdisk 0 make --no-print-directory -C "$TOP" O="$B" "$@"
}

@test "make, then make install PREFIX=/usr: the unit and cdisk.pc name /usr" {
	mk
	assert_equal "$(grep ^ExecStart= "$B/systemd/cdisk-serve@.service")" \
		"ExecStart=/usr/local/bin/cdisk-serve --export %i=/var/lib/cdisk/%i.cdisk"
	mk install PREFIX=/usr DESTDIR="$PKG"
	assert_equal "$(grep ^ExecStart= "$PKG/usr/lib/systemd/system/cdisk-serve@.service")" \
		"ExecStart=/usr/bin/cdisk-serve --export %i=/var/lib/cdisk/%i.cdisk"
	assert_equal "$(grep -E '^(prefix|libdir|includedir)=' "$PKG/usr/lib/pkgconfig/cdisk.pc")" \
		"$(printf 'prefix=/usr\nlibdir=/usr/lib\nincludedir=/usr/include')"
	[ -x "$PKG/usr/bin/cdisk-serve" ] || fail "cdisk-serve was not installed"
	# The same paths again regenerate nothing.
	before=$(stat -c %Y.%y "$B/lib/cdisk.pc")
	sleep 1
	mk install PREFIX=/usr DESTDIR="$PKG"
	assert_equal "$(stat -c %Y.%y "$B/lib/cdisk.pc")" "$before"
}

@test "make uninstall removes every file make install put" {
	mk install PREFIX=/usr DESTDIR="$PKG"
	installed=$(find "$PKG" ! -type d | wc -l)
	[ "$installed" -gt 20 ] || fail "only $installed files installed"
	mk uninstall PREFIX=/usr DESTDIR="$PKG"
	assert_equal "$(find "$PKG" ! -type d)" ""
}

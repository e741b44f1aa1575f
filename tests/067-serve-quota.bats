#!/usr/bin/env bats
# Quotas of a multi-user cdisk-serve: quota_used (the bytes a user's pool
# images hold) fails a write past it with ENOSPC, never EIO, so that
# QEMU's werror=enospc can pause the VM; quota_size (the total of a
# user's image sizes) refuses a pool-create past it; a full filesystem
# under any served overlay is ENOSPC too.

bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
	mkdir -p pool/alice pool/bob
	SOCK_DIR=$(mktemp -d /tmp/cdisk-quota.XXXXXX)
	chmod 755 "$SOCK_DIR"
}

teardown() {
	stop_serve KILL || true
	[ -z "${SMALL_FS:-}" ] || umount "$SMALL_FS" 2>/dev/null || true
	rm -rf "$SOCK_DIR"
}

nbd() { echo "nbd+unix:///$1?socket=$SERVE_SOCK"; }
# Users are told apart by their uid on the unix socket.
ALICE=(setpriv --reuid=65534 --regid=100 --clear-groups)
BOB=(setpriv --reuid=1 --regid=100 --clear-groups)

@test "quota_used: a write past it fails with ENOSPC over all the user's images; overwrites, other users, a raised quota go on" {
	pool_users "quota_used = 6M"
	run_cdisk 0 cdisk-create --size 16M pool/alice/a.cdisk
	run_cdisk 0 cdisk-create --size 16M pool/alice/b.cdisk
	run_cdisk 0 cdisk-create --size 16M pool/bob/c.cdisk
	start_users_pool
	run_cdisk 0 "${ALICE[@]}" qemu-io -f raw -c 'write -P 0x11 0 4M' "$(nbd alice/a)"
	run_cdisk 0 "${ALICE[@]}" qemu-io -f raw -c 'write -P 0x12 0 2M' "$(nbd alice/b)"
	# 6 MiB held across two images: 1 more byte of new space is refused.
	run_cdisk 1 "${ALICE[@]}" qemu-io -f raw -c 'write -P 0x13 8M 64k' "$(nbd alice/b)"
	assert_output --partial "No space left on device"
	refute_output --partial "Input/output error"
	grep -q "the quota of alice is full: 6 MiB used of 6 MiB" "$BATS_TEST_TMPDIR/serve.log" ||
		fail "no message: $(cat "$BATS_TEST_TMPDIR/serve.log")"
	# Writing over what is held takes no new space; reads go on.
	run_cdisk 0 "${ALICE[@]}" qemu-io -f raw -c 'write -P 0x14 0 1M' -c 'read -P 0x14 0 1M' \
		-c 'read -P 0x11 1M 3M' "$(nbd alice/a)"
	refute_output --partial "No space left"
	refute_output --partial "Pattern verification failed"
	# Bob has no quota.
	run_cdisk 0 "${BOB[@]}" qemu-io -f raw -c 'write -P 0x21 0 12M' "$(nbd bob/c)"
	refute_output --partial "No space left"
	# A larger quota takes effect at SIGHUP, for images served already.
	pool_users "quota_used = 8M"
	kill -HUP "$SERVE_PID"
	for _ in $(seq 50); do
		run_cdisk '?' "${ALICE[@]}" qemu-io -f raw -c 'write -P 0x13 8M 64k' "$(nbd alice/b)"
		[ "$status" = 0 ] && break
		sleep 0.1
	done
	assert_equal "$status" 0
	run_cdisk 0 "${ALICE[@]}" qemu-io -f raw -c 'read -P 0x13 8M 64k' "$(nbd alice/b)"
	refute_output --partial "Pattern verification failed"
}

@test "quota_size: pool-create past the total of a user's image sizes is refused, nothing made" {
	pool_users "quota_size = 40M"
	run_cdisk 0 cdisk-create --size 16M pool/alice/a.cdisk
	start_users_pool
	ctl '{"command":"pool-create","user":"alice","image":"b","size":16777216}'
	assert_equal "$(json_get .ok)" true
	ctl '{"command":"pool-create","user":"alice","image":"c","size":16777216}'
	assert_equal "$(json_get .ok)" false
	assert_equal "$(json_get .error)" "cannot create an image of 16 MiB for 'alice': their images hold 32 MiB of their quota of 40 MiB"
	assert_not_exists pool/alice/c.cdisk
	# One made from a base is measured once made, and taken back.
	truncate -s 24M base.img
	ctl '{"command":"pool-create","user":"alice","image":"d","base":"'"$PWD"'/base.img"}'
	assert_equal "$(json_get .ok)" false
	assert_not_exists pool/alice/d.cdisk
	ctl '{"command":"pool-create","user":"alice","image":"e","size":8388608}'
	assert_equal "$(json_get .ok)" true
	# Bob has no quota.
	ctl '{"command":"pool-create","user":"bob","image":"big","size":1073741824}'
	assert_equal "$(json_get .ok)" true
}

@test "quota_size: an image put in the folder by hand past it is not served, until a reload raises the quota" {
	pool_users "quota_size = 40M"
	run_cdisk 0 cdisk-create --size 16M pool/alice/a.cdisk
	start_users_pool
	# cdisk-create straight into the folder knows no quota: the server
	# checks what it picks up.
	run_cdisk 0 cdisk-create --size 32M pool/alice/big.cdisk
	sleep 1   # the scan the folder's change brings
	ctl '{"command":"rescan"}'
	assert_equal "$(json_get '.skipped[0].name')" alice/big
	assert_equal "$(json_get '.skipped[0].reason')" \
		"its 32 MiB would take the images of 'alice' served to 48 MiB, past their quota_size of 40 MiB"
	warned() { grep -c "pool: not serving 'alice/big': its 32 MiB" "$BATS_TEST_TMPDIR/serve.log"; }
	local before
	before=$(warned) || fail "no warning in the log: $(cat "$BATS_TEST_TMPDIR/serve.log")"
	# Left alone: not opened, so the folder's watch does not scan again.
	sleep 1.5
	assert_equal "$(warned)" "$before"
	run_cdisk 1 "${ALICE[@]}" nbdinfo --size "$(nbd alice/big)"
	# One that fits is served beside it.
	run_cdisk 0 cdisk-create --size 8M pool/alice/small.cdisk
	ctl '{"command":"rescan"}'
	assert_equal "$(json_get '.skipped | length')" 1
	run_cdisk 0 "${ALICE[@]}" nbdinfo --size "$(nbd alice/small)"
	# A reload with room for it serves it, with no rescan asked.
	pool_users "quota_size = 64M"
	kill -HUP "$SERVE_PID"
	for _ in $(seq 100); do
		"${ALICE[@]}" nbdinfo --size "$(nbd alice/big)" >/dev/null 2>&1 && break
		sleep 0.1
	done
	run_cdisk 0 "${ALICE[@]}" nbdinfo --size "$(nbd alice/big)"
	assert_output 33554432
}

@test "a full filesystem under a served overlay is ENOSPC to the client, not EIO" {
	SMALL_FS=$BATS_TEST_TMPDIR/small
	mkdir "$SMALL_FS"
	mount -t tmpfs -o size=24M tmpfs "$SMALL_FS"
	run_cdisk 0 cdisk-create --size 64M "$SMALL_FS/d.cdisk"
	start_serve --export d="$SMALL_FS/d.cdisk"
	run_cdisk 1 qemu-io -f raw -c 'write -P 0x31 0 40M' "$NBD"
	assert_output --partial "No space left on device"
	refute_output --partial "Input/output error"
	stop_serve KILL || true
	umount "$SMALL_FS"
	SMALL_FS=
}

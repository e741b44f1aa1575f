#!/usr/bin/env bats
# cdisk-create: what it makes, idempotence, and every kind of bad input.
bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
}

@test "create makes a sparse private disk of the asked size" {
	run_cdisk 0 cdisk-create --size 1G d.cdisk
	assert_output "created 'd.cdisk'"
	assert_equal "$(stat -c %a d.cdisk)" 600
	# Metadata only: a few KiB on the host, whatever the size.
	assert_num "$(du -k d.cdisk | cut -f1)" -lt 64
	run_cdisk 0 cdisk-info --json d.cdisk
	assert_equal "$(json_get .size)" 1073741824
	assert_equal "$(json_get .block_size)" 4096
	assert_equal "$(json_get .blocks_present)" 0
	assert_equal "$(json_get .base)" null
}

@test "the same arguments again succeed with 'unchanged' (Ansible)" {
	run_cdisk 0 cdisk-create --size 64M -b 512 d.cdisk
	before=$(sha d.cdisk)
	run_cdisk 0 cdisk-create --size 64M -b 512 d.cdisk
	assert_output "'d.cdisk' unchanged"
	assert_equal "$(sha d.cdisk)" "$before"
	run_cdisk 0 cdisk-create --json --size 64M -b 512 d.cdisk
	assert_equal "$(json_get .changed)" false
	assert_equal "$(json_get .schema_version)" 1
}

@test "an existing different disk is never overwritten" {
	run_cdisk 0 cdisk-create --size 64M d.cdisk
	before=$(sha d.cdisk)
	run_cdisk 1 cdisk-create --size 128M d.cdisk
	assert_error cdisk-create "'d.cdisk' already exists with a different size \(64 MiB, not 128 MiB\); it was not changed"
	run_cdisk 1 cdisk-create --size 64M --block-size 512 d.cdisk
	assert_error cdisk-create "already exists with a different block size"
	assert_equal "$(sha d.cdisk)" "$before"
}

@test "a file that is not a cdisk is never overwritten" {
	echo "precious" >d.cdisk
	run_cdisk 7 cdisk-create --size 64M d.cdisk
	assert_error cdisk-create "'d.cdisk' exists and is not a cdisk; it was not changed"
	assert_equal "$(cat d.cdisk)" precious
}

@test "the size comes from the base, which is stored as an absolute path" {
	make_base base.img 8M
	run_cdisk 0 cdisk-create --base base.img d.cdisk
	run_cdisk 0 cdisk-info --json d.cdisk
	assert_equal "$(json_get .size)" 8388608
	assert_equal "$(json_get .base.uri)" "$BATS_TEST_TMPDIR/base.img"
	assert_equal "$(json_get .base.reachable)" true
	run_cdisk 0 cdisk-create --base "file://$BATS_TEST_TMPDIR/base.img" e.cdisk
	run_cdisk 0 cdisk-create --base base.img d.cdisk
	assert_output "'d.cdisk' unchanged"
}

@test "a base with a size that is not a multiple of the block size is refused" {
	truncate -s 10000 base.img
	run_cdisk 2 cdisk-create --base base.img d.cdisk
	assert_error cdisk-create "size 10000 is not a multiple of the block size 4096"
	assert_not_exists d.cdisk
	run_cdisk 0 cdisk-create --base base.img --size 12K d.cdisk
}

@test "a missing base is 'not found' and creates nothing" {
	run_cdisk 6 cdisk-create --base nothere.img d.cdisk
	assert_error cdisk-create "cannot use base 'nothere.img': No such file or directory"
	assert_not_exists d.cdisk
}

@test "sizes that are zero, not a multiple of the block size or too large are refused" {
	run_cdisk 2 cdisk-create --size 0 d.cdisk
	assert_usage_error cdisk-create "invalid size '0': must be more than zero"
	run_cdisk 2 cdisk-create d.cdisk
	assert_error cdisk-create "size is zero \(give --size or a base\)"
	run_cdisk 2 cdisk-create --size 5000 d.cdisk
	assert_error cdisk-create "size 5000 is not a multiple of the block size 4096"
	run_cdisk 2 cdisk-create --size 257T d.cdisk
	assert_error cdisk-create "size 257 TiB is larger than the limit of 256 TiB"
	run_cdisk 2 cdisk-create --size 99999999999999999999999 d.cdisk
	assert_usage_error cdisk-create "invalid size"
	run_cdisk 2 cdisk-create --size -5 d.cdisk
	assert_usage_error cdisk-create "invalid size '-5'"
	run_cdisk 2 cdisk-create --size 12XB d.cdisk
	assert_usage_error cdisk-create "invalid size '12XB'"
	assert_not_exists d.cdisk
}

@test "block sizes must be powers of two from 512 B to 1 MiB" {
	for bs in 0 256 1000 3072 2M; do
		run_cdisk 2 cdisk-create --size 4M --block-size "$bs" d.cdisk
		assert_usage_error cdisk-create "invalid block size '$bs': must be a power of two from 512 to 1048576"
	done
	for bs in 512 4K 64K 1M; do
		run_cdisk 0 cdisk-create --size 4M --block-size "$bs" "d$bs.cdisk"
	done
}

@test "bad URIs get one line naming the URI and the reason" {
	n=0
	while IFS='|' read -r uri reason; do
		n=$((n + 1))
		run_cdisk 2 cdisk-create --size 1M --mirror "$uri" d.cdisk
		assert_error cdisk-create "invalid URI '.*': $reason"
	done <<-'EOF'
	ftp://host/x|unknown scheme 'ftp'
	iscsi://host/iqn.2001-04.com.example:disk|expected iscsi://\[user@\]host\[:port\]/IQN/LUN
	iscsi://host/iqn.x/lun|LUN must be a number from 0 to 16383
	iscsi://u%secret@host/iqn.x/0|a password in a URI is refused
	iscsi://host:0/iqn.x/0|port must be a number from 1 to 65535
	iscsi://host:99999/iqn.x/0|port must be a number from 1 to 65535
	rbd:poolonly|expected rbd:POOL\[/NAMESPACE\]/IMAGE\[@SNAP\]
	rbd:pool/ns/img/x|too many '/' in an RBD name
	rbd:pool/img@|empty snapshot name
	nbd+unix:///export|expected nbd\+unix:///EXPORT\?socket=PATH
	nbd://:10809/x|missing host
	http://host|missing object path
	https://user@host/x|credentials in an HTTP URI are refused
	s3://A_B/x|bucket names use a-z, 0-9, '-' and '.'
	s3://ab|bucket names have 3 to 63 characters
	file://relative/path|file:// URIs take an absolute path
	EOF
	[ "$n" -eq 16 ] || fail "only $n URIs were tried"
	assert_not_exists d.cdisk
}

@test "good URIs of every form pass the URI checks; a mirror that cannot be reached is refused and nothing is left" {
	printf '[target]\ntimeout = 1\nretries = 0\n' >>"$CDISK_CONFIG"
	n=0
	for uri in iscsi://user@127.0.0.1:1/iqn.2001-04.com.example:d/1 \
		nbd://127.0.0.1:1/export nbds://[::1]:1/e \
		'nbd+unix:///e?socket=/nonexistent/x.sock' https://127.0.0.1:1/disk.img \
		/nonexistent/mirror.img; do
		n=$((n + 1))
		run cdisk-create --size 1M --mirror "$uri" "d$n.cdisk"
		assert_failure
		refute_output --partial "invalid URI"
		assert_output --regexp "^cdisk-create: cannot "
		assert_equal "${#lines[@]}" 1
		assert_not_exists "d$n.cdisk"
	done
	assert_equal "$n" 6
}

@test "a remote base that cannot be reached is refused; nothing is created" {
	printf '[target]\ntimeout = 2\nretries = 0\n' >>"$CDISK_CONFIG"
	run_cdisk 3 cdisk-create --base iscsi://127.0.0.1:1/iqn.2001-04.com.example:d/0 d.cdisk
	assert_error cdisk-create "cannot reach 'iscsi://127.0.0.1:1/.*': Connection refused"
	assert_not_exists d.cdisk
}

@test "a missing directory is 'not found'" {
	run_cdisk 6 cdisk-create --size 1M nodir/d.cdisk
	assert_error cdisk-create "cannot create 'nodir/d.cdisk': No such file or directory"
}

@test "an unwritable directory is 'permission denied'" {
	mkdir ro
	if chattr +i ro 2>/dev/null; then
		run_cdisk 5 cdisk-create --size 1M ro/d.cdisk
		chattr -i ro
	else
		chmod 0555 ro
		run_cdisk 5 setpriv --reuid=65534 --regid=65534 --clear-groups \
			"$CDISK_BUILD/bin/cdisk-create" --size 1M ro/d.cdisk
	fi
	assert_error cdisk-create "cannot create 'ro/d.cdisk': (Operation not permitted|Permission denied)"
	assert_equal "$(ls -A ro)" ""
}

@test "the metadata backup path is stored absolute" {
	run_cdisk 0 cdisk-create --size 1M --meta-backup meta/d.bak d.cdisk
	run_cdisk 0 cdisk-info --json d.cdisk
	assert_equal "$(json_get .meta_backup)" "$BATS_TEST_TMPDIR/meta/d.bak"
}

@test "--quiet prints nothing on success" {
	run_cdisk 0 cdisk-create -q --size 1M d.cdisk
	assert_output ""
	assert_equal "$stderr" ""
}

@test "a 1 TiB disk is created and described" {
	run_cdisk 0 cdisk-create --size 1T big.cdisk
	run_cdisk 0 cdisk-info --json big.cdisk
	assert_equal "$(json_get .blocks)" 268435456
}

#!/usr/bin/env bats
# Files back to the cloud (cdisk-sync --files) against radosgw: the
# writer disk's filesystem is changed through NBD (cdisk-serve, nbdcopy,
# and debugfs on the copy), and rclone reads back what the cloud holds.

bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
	s3_env
	CACHE=$BATS_TEST_TMPDIR/cache
	printf '[cache]\ndir = %s\n' "$CACHE" >>"$CDISK_CONFIG"
	export RCLONE_CONFIG_RGW_TYPE=s3 RCLONE_CONFIG_RGW_PROVIDER=Ceph
	export RCLONE_CONFIG_RGW_ENDPOINT=$RGW_ENDPOINT RCLONE_CONFIG_RGW_ACCESS_KEY_ID=$RGW_KEY
	export RCLONE_CONFIG_RGW_SECRET_ACCESS_KEY=$RGW_SECRET
}

teardown() {
	stop_serve || true
	stop_proxy
}

rclone_() {
	# rclone cannot use a CA bundle with its plain-HTTP transport
	timeout 120 env -u AWS_CA_BUNDLE rclone "$@"
}

# A small folder in the cloud under docs/: SRC is its copy here.
make_folder() {
	SRC=$BATS_TEST_TMPDIR/src
	mkdir -p "$SRC/sub/deeper" "$SRC/with space"
	printf 'hello\n' >"$SRC/top.txt"
	printf 'keep me\n' >"$SRC/keep.txt"
	printf 'remove me\n' >"$SRC/sub/gone.txt"
	printf 'same size A\n' >"$SRC/sub/same.txt"
	head -c 300000 /dev/urandom >"$SRC/sub/deeper/blob.bin"
	printf 'grüße\n' >"$SRC/with space/straße.txt"
	rclone_ copy "$SRC" "rgw:$BUCKET/docs" || fail "rclone could not upload"
}

# writer SIZE: w.cdisk, the folder's writer disk.
writer() {
	run_cdisk cdisk-create --json --from-folder "s3://$BUCKET/docs/" --size "$1" \
		--writer w.cdisk
}

# changed_copy DISK DEBUGFS-COMMANDS: the disk read out through NBD into
# $RAW, and its filesystem there changed by debugfs (not written back).
changed_copy() {
	RAW=$BATS_TEST_TMPDIR/raw.img
	printf '%s\n' "$2" >"$BATS_TEST_TMPDIR/cmds"
	start_serve --export d="$1"
	rm -f "$RAW"
	nbdcopy "$NBD" "$RAW" || fail "nbdcopy could not read the disk"
	stop_serve
	debugfs -w -f "$BATS_TEST_TMPDIR/cmds" "$RAW?offset=1048576" \
		>"$BATS_TEST_TMPDIR/debugfs.log" 2>&1 || fail "debugfs failed"
}

# edit DEBUGFS-COMMANDS: the disk's filesystem changed as a VM would,
# through NBD: the disk is read out, debugfs changes the copy, and the
# copy is written back through cdisk-serve.
edit() {
	changed_copy w.cdisk "$1"
	start_serve --export d=w.cdisk
	nbdcopy "$RAW" "$NBD" || fail "nbdcopy could not write the disk"
	stop_serve
}

# The cloud's copy of the folder in $BATS_TEST_TMPDIR/cloud.
cloud_copy() {
	rm -rf "$BATS_TEST_TMPDIR/cloud"
	rclone_ copy "rgw:$BUCKET/docs" "$BATS_TEST_TMPDIR/cloud" ||
		fail "rclone could not read the folder back"
}

# meta KEY NAME: the object's x-amz-meta-NAME.
meta() {
	s3_curl -I "$RGW_ENDPOINT/$BUCKET/$1" | tr -d '\r' |
		awk -v h="x-amz-meta-$2:" 'tolower($1) == h { print $2 }'
}

uploaded_keys() {
	jq -r '.uploaded[].key' <<<"$output" | sort | tr '\n' ' '
}

@test "push: added, changed and deleted files reach the cloud; unchanged ones are not sent" {
	make_folder
	writer 64M
	local mtime
	mtime=$(debugfs -R 'stat /sub/same.txt' "$(json_get .image)?offset=1048576" 2>/dev/null |
		awk '/mtime:/ { split($2, t, ":"); print t[1]; exit }')
	# the first sync after creation: the files are as they came, nothing goes
	run_cdisk cdisk-sync --files --json w.cdisk
	assert_equal "$(uploaded_keys)" ""
	assert_equal "$(json_get .unchanged)" 6
	printf 'a new file\n' >"$BATS_TEST_TMPDIR/new.txt"
	printf 'changed top\n' >"$BATS_TEST_TMPDIR/top.txt"
	printf 'same size B\n' >"$BATS_TEST_TMPDIR/same.txt"
	edit "cd /sub
write $BATS_TEST_TMPDIR/new.txt new.txt
rm gone.txt
rm same.txt
write $BATS_TEST_TMPDIR/same.txt same.txt
sif same.txt mtime $mtime
cd /
rm top.txt
write $BATS_TEST_TMPDIR/top.txt top.txt"
	start_proxy "${RGW_ENDPOINT#http://}"
	AWS_ENDPOINT_URL=http://127.0.0.1:$PROXY_PORT run_cdisk cdisk-sync --files --json w.cdisk
	assert_equal "$(uploaded_keys)" "sub/new.txt sub/same.txt top.txt "
	assert_equal "$(jq -r '.deleted[].key' <<<"$output")" sub/gone.txt
	assert_equal "$(json_get .schema_version)" 1
	cloud_copy
	cp "$BATS_TEST_TMPDIR/new.txt" "$BATS_TEST_TMPDIR/same.txt" "$SRC/sub/"
	cp "$BATS_TEST_TMPDIR/top.txt" "$SRC/"
	rm "$SRC/sub/gone.txt"
	diff -r "$SRC" "$BATS_TEST_TMPDIR/cloud" || fail "the cloud does not hold the disk's files"
	assert_equal "$(meta docs/sub/new.txt sha256)" \
		"$(sha256sum "$BATS_TEST_TMPDIR/new.txt" | cut -d' ' -f1)"
	[ -n "$(meta docs/sub/new.txt mtime)" ] || fail "no mtime in the metadata"
	# each upload's ETag is in the folder's upload log
	local etag
	etag=$(jq -r '.uploaded[] | select(.key == "top.txt") | .etag' <<<"$output")
	[ "$(s3_curl -I "$RGW_ENDPOINT/$BUCKET/docs/top.txt" | tr -d '\r"' |
		awk 'tolower($1) == "etag:" { print $2 }')" = "$etag" ] || fail "ETag differs"
	grep -qx "$etag docs/top.txt" "$CACHE"/folders/*.uploads || fail "not in the upload log"
	# a second sync sends nothing, and reads no file to tell
	local before
	before=$(proxy_bytes)
	AWS_ENDPOINT_URL=http://127.0.0.1:$PROXY_PORT run_cdisk cdisk-sync --files --json w.cdisk
	assert_equal "$(uploaded_keys)" ""
	assert_equal "$(json_get .unchanged)" 6
	assert_equal "$(json_get .hashed)" 0
	assert_equal "$(proxy_bytes)" "$before"
}

@test "push: symlinks are skipped with a warning, empty folders become markers, hard links and sparse files go whole" {
	make_folder
	writer 64M
	printf 'linked\n' >"$BATS_TEST_TMPDIR/l.txt"
	truncate -s 5M "$BATS_TEST_TMPDIR/sparse.bin"
	printf 'middle' | dd of="$BATS_TEST_TMPDIR/sparse.bin" bs=1 seek=3000000 conv=notrunc status=none
	edit "cd /
write $BATS_TEST_TMPDIR/sparse.bin sparse.bin
symlink link.txt /top.txt
mkdir \"empty dir\"
mknod fifo p
write $BATS_TEST_TMPDIR/l.txt l.txt
ln l.txt l2.txt
sif l.txt links_count 2"
	run_cdisk cdisk-sync --files --json w.cdisk
	assert_equal "$(uploaded_keys)" "empty dir/ l.txt l2.txt sparse.bin "
	assert_equal "$(jq -r '.skipped[].key' <<<"$output" | sort | tr '\n' ' ')" "fifo link.txt "
	run_cdisk cdisk-sync --files w.cdisk
	assert_equal "$(grep -c "warning: .*skipped 'link.txt': a symbolic link is not a file" \
		<<<"$stderr")" 1
	s3_curl "$RGW_ENDPOINT/$BUCKET/docs/empty%20dir/" >/dev/null || fail "no marker"
	cloud_copy
	cmp "$BATS_TEST_TMPDIR/cloud/l2.txt" "$BATS_TEST_TMPDIR/l.txt"
	cmp "$BATS_TEST_TMPDIR/cloud/sparse.bin" "$BATS_TEST_TMPDIR/sparse.bin"
	# the disk holds it with holes: far fewer blocks than its 5 MiB
	debugfs -R 'stat /sparse.bin' "$BATS_TEST_TMPDIR/raw.img?offset=1048576" 2>/dev/null |
		grep -Eq 'Blockcount: [0-9]{1,3}$' || fail "sparse.bin is not sparse on the disk"
}

@test "push: a sync that would delete more than half the files stops; --force passes" {
	make_folder
	writer 64M
	edit "rm /top.txt
rm /keep.txt
rm /sub/gone.txt
rm /sub/same.txt"
	run_cdisk 10 cdisk-sync --files w.cdisk
	assert_error cdisk-sync "would delete 4 of the folder's 6 files .* more than half; nothing was sent"
	s3_curl -I "$RGW_ENDPOINT/$BUCKET/docs/top.txt" >/dev/null || fail "a file was deleted"
	run_cdisk cdisk-sync --files --dry-run --force w.cdisk
	assert_output --partial "would delete top.txt"
	s3_curl -I "$RGW_ENDPOINT/$BUCKET/docs/top.txt" >/dev/null || fail "--dry-run deleted"
	run_cdisk cdisk-sync --files --force --json w.cdisk
	assert_equal "$(jq -r '.deleted | length' <<<"$output")" 4
	! s3_curl -I "$RGW_ENDPOINT/$BUCKET/docs/top.txt" >/dev/null || fail "not deleted"
}

@test "push: a filesystem that needs recovery, or another filesystem, is refused with nothing sent" {
	make_folder
	writer 64M
	printf 'x\n' >"$BATS_TEST_TMPDIR/x.txt"
	edit "write $BATS_TEST_TMPDIR/x.txt /x.txt
feature needs_recovery"
	run_cdisk 7 cdisk-sync --files w.cdisk
	assert_error cdisk-sync "the filesystem needs recovery .*shut the VM down cleanly, or run e2fsck"
	edit "feature -needs_recovery
ssv state 0"
	run_cdisk 7 cdisk-sync --files w.cdisk
	assert_error cdisk-sync "needs recovery"
	# the guest reformatted it
	start_serve --export d=w.cdisk
	nbdcopy "$NBD" "$BATS_TEST_TMPDIR/raw.img"
	mke2fs -q -F -t ext4 -E offset=1048576 "$BATS_TEST_TMPDIR/raw.img" 60M
	debugfs -w -R "write $BATS_TEST_TMPDIR/x.txt /x.txt" "$BATS_TEST_TMPDIR/raw.img?offset=1048576"
	nbdcopy "$BATS_TEST_TMPDIR/raw.img" "$NBD"
	stop_serve
	run_cdisk 7 cdisk-sync --files w.cdisk
	assert_error cdisk-sync "the filesystem is not the one made from .*reformatted.*nothing uploaded or deleted"
	! s3_curl -I "$RGW_ENDPOINT/$BUCKET/docs/x.txt" >/dev/null || fail "x.txt was uploaded"
	s3_curl -I "$RGW_ENDPOINT/$BUCKET/docs/top.txt" >/dev/null || fail "top.txt was deleted"
}

@test "push: a served disk is 'try later'; a disk that is no writer is refused" {
	make_folder
	writer 64M
	start_serve --export d=w.cdisk
	run_cdisk 8 cdisk-sync --files w.cdisk
	assert_error cdisk-sync "is served \\(cdisk-serve\\): the guest has the filesystem mounted; try later"
	stop_serve
	run_cdisk cdisk-create --from-folder "s3://$BUCKET/docs/" --size 64M r.cdisk
	run_cdisk 5 cdisk-sync --files r.cdisk
	assert_error cdisk-sync "is a reader disk of .*: only its writer disk '.*/w.cdisk' sends files"
	run_cdisk cdisk-create --size 64M plain.cdisk
	run_cdisk 6 cdisk-sync --files plain.cdisk
	assert_error cdisk-sync "is no disk of a cloud folder in the cache"
	run_cdisk 2 cdisk-sync --files --close w.cdisk
	assert_usage_error cdisk-sync "--files goes with"
}

@test "push: a cut mid-upload leaves no partial object; the next run sends only what is left" {
	make_folder
	writer 256M
	local i
	head -c $((70 << 20)) /dev/urandom >"$BATS_TEST_TMPDIR/big.bin"
	for i in 1 2 3 4; do head -c $((3 << 20)) /dev/urandom >"$BATS_TEST_TMPDIR/m$i.bin"; done
	edit "write $BATS_TEST_TMPDIR/m1.bin /a1.bin
write $BATS_TEST_TMPDIR/m2.bin /a2.bin
write $BATS_TEST_TMPDIR/big.bin /b-big.bin
write $BATS_TEST_TMPDIR/m3.bin /c3.bin
write $BATS_TEST_TMPDIR/m4.bin /c4.bin"
	start_proxy "${RGW_ENDPOINT#http://}"
	proxy_ctl rate $((16 << 20))
	local port=$PROXY_PORT
	AWS_ENDPOINT_URL=http://127.0.0.1:$port cdisk-sync --files w.cdisk \
		>"$BATS_TEST_TMPDIR/out" 2>&1 &
	local pid=$!
	# the network goes (the proxy dies) once the two small files are up:
	# the large one, 70 MiB at 16 MiB/s, is then on its way
	until [ "$(cat "$CACHE"/folders/*.uploads 2>/dev/null | wc -l)" -ge 2 ]; do
		kill -0 "$pid" 2>/dev/null || fail "the sync ended first: $(cat "$BATS_TEST_TMPDIR/out")"
		sleep 0.05
	done
	kill -9 "$PROXY_PID"
	wait "$PROXY_PID" 2>/dev/null || true
	PROXY_PID=
	local rc=0
	wait "$pid" || rc=$?
	assert_equal "$rc" 3
	grep -q "cannot send 'docs/b-big.bin'" "$BATS_TEST_TMPDIR/out" ||
		fail "not cut in the large file: $(cat "$BATS_TEST_TMPDIR/out")"
	# what is there is whole; the large file is not there at all
	cloud_copy
	cmp "$BATS_TEST_TMPDIR/cloud/a1.bin" "$BATS_TEST_TMPDIR/m1.bin"
	cmp "$BATS_TEST_TMPDIR/cloud/a2.bin" "$BATS_TEST_TMPDIR/m2.bin"
	assert_not_exists "$BATS_TEST_TMPDIR/cloud/b-big.bin"
	# still unreachable: the same exit, nothing lost
	AWS_ENDPOINT_URL=http://127.0.0.1:$port run_cdisk 3 cdisk-sync --files w.cdisk
	assert_error cdisk-sync "cannot send 'docs/b-big.bin' to 's3://$BUCKET/docs/': Couldn't connect"
	# back: only what was left is sent
	start_proxy "${RGW_ENDPOINT#http://}"
	AWS_ENDPOINT_URL=http://127.0.0.1:$PROXY_PORT run_cdisk cdisk-sync --files --json w.cdisk
	assert_equal "$(uploaded_keys)" "b-big.bin c3.bin c4.bin "
	cloud_copy
	cmp "$BATS_TEST_TMPDIR/cloud/b-big.bin" "$BATS_TEST_TMPDIR/big.bin"
	cmp "$BATS_TEST_TMPDIR/cloud/c4.bin" "$BATS_TEST_TMPDIR/m4.bin"
	assert_equal "$(meta docs/b-big.bin sha256)" \
		"$(sha256sum "$BATS_TEST_TMPDIR/big.bin" | cut -d' ' -f1)"
	# in parts: the ETag of a multipart upload ends in -PARTS
	jq -r '.uploaded[] | select(.key == "b-big.bin") | .etag' <<<"$output" | grep -q -- '-5$' ||
		fail "the large file was not sent in 16 MiB parts"
}

@test "push: cdisk-serve --push-files sends the writer's files when its last client leaves; a client meanwhile waits; a reader sends nothing" {
	make_folder
	writer 128M
	run_cdisk cdisk-create --from-folder "s3://$BUCKET/docs/" --size 128M r.cdisk
	local log=$BATS_TEST_TMPDIR/serve.log
	head -c $((24 << 20)) /dev/urandom >"$BATS_TEST_TMPDIR/big.bin"
	changed_copy w.cdisk "write $BATS_TEST_TMPDIR/big.bin /big.bin
rm /top.txt"
	# the files go through a proxy at 4 MiB/s: the push takes seconds
	start_proxy "${RGW_ENDPOINT#http://}"
	proxy_ctl rate $((4 << 20))
	AWS_ENDPOINT_URL=http://127.0.0.1:$PROXY_PORT start_serve -v --push-files --export d=w.cdisk
	nbdcopy "$RAW" "$NBD" || fail "nbdcopy could not write the disk"
	# the server has seen the writing client leave; a client now is
	# answered only once the files are in the cloud
	sleep 0.5
	nbdcopy "$NBD" "$BATS_TEST_TMPDIR/again.img" || fail "nbdcopy could not read the disk"
	s3_curl -I "$RGW_ENDPOINT/$BUCKET/docs/big.bin" >/dev/null ||
		fail "a client was served while the files were being sent: $(cat "$log")"
	! s3_curl -I "$RGW_ENDPOINT/$BUCKET/docs/top.txt" >/dev/null || fail "top.txt is still in the cloud"
	stop_serve
	grep -q "w.cdisk': its last client left: 1 file sent to 's3://$BUCKET/docs/', 1 deleted there" "$log" ||
		fail "$(cat "$log")"
	cloud_copy
	cmp "$BATS_TEST_TMPDIR/big.bin" "$BATS_TEST_TMPDIR/cloud/big.bin"
	# nothing is left for cdisk-sync --files
	run_cdisk cdisk-sync --files --json w.cdisk
	assert_equal "$(uploaded_keys)$(jq -r '.deleted[].key' <<<"$output")" ""
	# a reader served the same way sends nothing, and says nothing
	printf 'from a reader\n' >"$BATS_TEST_TMPDIR/x.txt"
	changed_copy r.cdisk "write $BATS_TEST_TMPDIR/x.txt /x.txt"
	start_serve -v --push-files --export d=r.cdisk
	nbdcopy "$RAW" "$NBD" || fail "nbdcopy could not write the disk"
	sleep 1
	stop_serve
	! s3_curl -I "$RGW_ENDPOINT/$BUCKET/docs/x.txt" >/dev/null || fail "a reader's file was sent"
	! grep -q "last client left" "$log" || fail "$(cat "$log")"
}

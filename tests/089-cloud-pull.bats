#!/usr/bin/env bats
# Cloud changes into the disks (cdisk-sync --files --pull) against
# radosgw, with rclone as the other client; the disk's filesystem is read
# back with debugfs and checked with e2fsck from a copy taken through NBD.

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
	timeout 120 env -u AWS_CA_BUNDLE rclone "$@"
}

make_folder() {
	SRC=$BATS_TEST_TMPDIR/src
	mkdir -p "$SRC/sub"
	printf 'hello\n' >"$SRC/top.txt"
	printf 'keep me\n' >"$SRC/keep.txt"
	printf 'remove me\n' >"$SRC/sub/gone.txt"
	printf 'grüße\n' >"$SRC/sub/straße.txt"
	rclone_ copy "$SRC" "rgw:$BUCKET/docs" || fail "rclone could not upload"
}

writer() {
	run_cdisk cdisk-create --from-folder "s3://$BUCKET/docs/" --size "$1" --writer w.cdisk
}

# put LOCAL KEY: the other client writes an object.
put() {
	rclone_ copyto "$1" "rgw:$BUCKET/docs/$2" || fail "rclone could not upload $2"
}

reader() {
	run_cdisk cdisk-create --from-folder "s3://$BUCKET/docs/" --size "$1" r.cdisk
}

# The disk read out through NBD: $RAW the disk, $FS its ext4 partition.
# read_disk [DISK]: w.cdisk unless told.
read_disk() {
	RAW=$BATS_TEST_TMPDIR/raw.img FS=$BATS_TEST_TMPDIR/fs.img
	start_serve --export d="${1:-w.cdisk}"
	rm -f "$RAW"
	nbdcopy "$NBD" "$RAW" || fail "nbdcopy could not read the disk"
	stop_serve
	dd if="$RAW" of="$FS" bs=1M skip=1 status=none
}

# disk_cat PATH: a file's bytes on the disk read last.
disk_cat() {
	debugfs -R "cat \"$1\"" "$FS" 2>/dev/null
}

fsck_clean() {
	e2fsck -fn "$FS" >"$BATS_TEST_TMPDIR/fsck.log" 2>&1 ||
		fail "e2fsck: $(cat "$BATS_TEST_TMPDIR/fsck.log")"
}

# edit DEBUGFS-COMMANDS [DISK]: the disk changed as a VM would, through NBD.
edit() {
	read_disk "${2:-w.cdisk}"
	printf '%s\n' "$1" >"$BATS_TEST_TMPDIR/cmds"
	debugfs -w -f "$BATS_TEST_TMPDIR/cmds" "$RAW?offset=1048576" \
		>"$BATS_TEST_TMPDIR/debugfs.log" 2>&1 || fail "debugfs failed"
	start_serve --export d="${2:-w.cdisk}"
	nbdcopy "$RAW" "$NBD" || fail "nbdcopy could not write the disk"
	stop_serve
}

keys() {
	jq -r ".$1[].key" <<<"$output" | sort | tr '\n' ' '
}

@test "pull: files added, changed and deleted in the cloud reach the disk; a second pull and a push do nothing" {
	make_folder
	writer 64M
	printf 'a new file\n' >"$BATS_TEST_TMPDIR/new.txt"
	touch -d @1600000000 "$BATS_TEST_TMPDIR/new.txt"
	printf 'changed top, longer than before\n' >"$BATS_TEST_TMPDIR/top.txt"
	put "$BATS_TEST_TMPDIR/new.txt" "deep/er/new.txt"
	put "$BATS_TEST_TMPDIR/top.txt" top.txt
	rclone_ deletefile "rgw:$BUCKET/docs/sub/gone.txt"
	run_cdisk cdisk-sync --files --pull --json w.cdisk
	assert_equal "$(keys fetched)" "deep/er/new.txt top.txt "
	assert_equal "$(keys removed)" "sub/gone.txt "
	assert_equal "$(keys conflicts)" ""
	assert_equal "$(json_get .schema_version)" 1
	read_disk
	fsck_clean
	assert_equal "$(disk_cat /top.txt)" "changed top, longer than before"
	assert_equal "$(disk_cat /deep/er/new.txt)" "a new file"
	assert_equal "$(disk_cat /keep.txt)" "keep me"
	debugfs -R "stat /sub/gone.txt" "$FS" 2>&1 | grep -q "File not found" ||
		fail "sub/gone.txt is still on the disk"
	# mtime from x-amz-meta-mtime, mode and owner as create sets them
	debugfs -R "stat /deep/er/new.txt" "$FS" 2>/dev/null >"$BATS_TEST_TMPDIR/stat"
	grep -q "mtime: 0x5f5e1000" "$BATS_TEST_TMPDIR/stat" || fail "$(cat "$BATS_TEST_TMPDIR/stat")"
	grep -q "Mode:  0644" "$BATS_TEST_TMPDIR/stat" || fail "$(cat "$BATS_TEST_TMPDIR/stat")"
	# nothing more to pull, and nothing pulled goes back up
	run_cdisk cdisk-sync --files --pull --json w.cdisk
	assert_equal "$(keys fetched)$(keys removed)" ""
	run_cdisk cdisk-sync --files --json w.cdisk
	assert_equal "$(keys uploaded)$(keys deleted)" ""
	assert_equal "$(json_get .unchanged)" 4
}

@test "pull: this host's own uploads are not fetched back" {
	make_folder
	writer 64M
	head -c $((3 << 20)) /dev/urandom >"$BATS_TEST_TMPDIR/big.bin"
	edit "write $BATS_TEST_TMPDIR/big.bin /big.bin"
	run_cdisk cdisk-sync --files --json w.cdisk
	assert_equal "$(keys uploaded)" "big.bin "
	# the state does not know the upload (as after a crash between the
	# upload and its record): only the upload log tells it is ours
	sed -i '/ big\.bin$/d' "$CACHE"/folders/*.state
	start_proxy "${RGW_ENDPOINT#http://}"
	AWS_ENDPOINT_URL=http://127.0.0.1:$PROXY_PORT run_cdisk cdisk-sync --files --pull --json w.cdisk
	assert_equal "$(keys fetched)" ""
	assert_equal "$(json_get .own_uploads)" 1
	# the listing only: far less than the 3 MiB file
	[ "$(proxy_bytes)" -lt 100000 ] || fail "$(proxy_bytes) bytes went through the proxy"
}

@test "pull: a file changed on both sides is a conflict: both versions kept, exit 11" {
	make_folder
	writer 64M
	printf 'the disk version\n' >"$BATS_TEST_TMPDIR/disk.txt"
	edit "rm /top.txt
write $BATS_TEST_TMPDIR/disk.txt /top.txt"
	printf 'the cloud version\n' >"$BATS_TEST_TMPDIR/cloud.txt"
	put "$BATS_TEST_TMPDIR/cloud.txt" top.txt
	run_cdisk 11 cdisk-sync --files --pull --json w.cdisk
	assert_equal "$(keys conflicts)" "top.txt "
	local saved
	saved=$(jq -r '.conflicts[0].saved_as' <<<"$output")
	[[ $saved =~ ^top\.cloud-conflict-[0-9]{8}-[0-9]{6}\.txt$ ]] || fail "saved as '$saved'"
	assert_error cdisk-sync "1 file changed both on the disk and in"
	read_disk
	fsck_clean
	assert_equal "$(disk_cat /top.txt)" "the disk version"
	assert_equal "$(disk_cat "/$saved")" "the cloud version"
	# text output names it too
	put "$BATS_TEST_TMPDIR/cloud.txt" keep.txt
	edit "rm /keep.txt
write $BATS_TEST_TMPDIR/disk.txt /keep.txt"
	run_cdisk 11 cdisk-sync --files --pull w.cdisk
	assert_output --partial "conflict: 'keep.txt' changed on the disk and in the cloud"
	# the disk's versions and the saved copies go up; nothing conflicts after
	run_cdisk cdisk-sync --files --json w.cdisk
	assert_equal "$(jq -r '.uploaded[].key' <<<"$output" | grep -c cloud-conflict)" 2
	run_cdisk cdisk-sync --files --pull --json w.cdisk
	assert_equal "$(keys fetched)$(keys conflicts)" ""
}

# check_whole old|new|any [DISK]: e2fsck passes, and each file of the
# pull is wholly old or wholly new on the disk, all of them the same.
check_whole() {
	read_disk "${2:-w.cdisk}"
	fsck_clean
	local top big was
	top=$(disk_cat /top.txt)
	big=$(disk_cat /big.bin | sha256sum | cut -d' ' -f1)
	if [ "$top" = hello ] && [ "$big" = "$EMPTY_SHA" ]; then
		was=old
	elif [ "$top" = "pulled top" ] && [ "$big" = "$BIG_SHA" ]; then
		was=new
	else
		fail "the pull reached the disk in part: top.txt '$top', big.bin $big"
	fi
	[ "$1" = any ] || [ "$1" = "$was" ] || fail "the disk is $was, not $1"
}

# The pull the kill tests cut: a 24 MiB file and a changed one.
# pull_setup [reader]: with a reader disk r.cdisk made before the changes.
pull_setup() {
	make_folder
	writer 128M
	if [ "${1:-}" = reader ]; then reader 128M; fi
	head -c $((24 << 20)) /dev/urandom >"$BATS_TEST_TMPDIR/big.bin"
	printf 'pulled top\n' >"$BATS_TEST_TMPDIR/top.txt"
	put "$BATS_TEST_TMPDIR/big.bin" big.bin
	put "$BATS_TEST_TMPDIR/top.txt" top.txt
	BIG_SHA=$(sha256sum <"$BATS_TEST_TMPDIR/big.bin" | cut -d' ' -f1)
	EMPTY_SHA=$(sha256sum </dev/null | cut -d' ' -f1)
}

@test "pull: kill -9 at each step (fault injector) leaves e2fsck clean, files wholly old or new; the next pull finishes" {
	pull_setup
	local step
	# the copy made, the copy written, the intent durable: the disk is as
	# it was; after the rename it is the pulled one
	for step in copied applied intent renamed; do
		CDISK_FAULT_PULL_KILL=$step run_cdisk 137 cdisk-sync --files --pull w.cdisk
		if [ $step = renamed ]; then check_whole new; else check_whole old; fi
	done
	assert_exists "$CACHE"/folders/*[0-9a-f].pull
	# a push next finds the rename done and records it: the pulled files
	# are not sent back
	run_cdisk cdisk-sync --files --json w.cdisk
	assert_equal "$(keys uploaded)" ""
	assert_not_exists w.cdisk.pull-tmp
	run_cdisk cdisk-sync --files --pull --json w.cdisk
	assert_equal "$(keys fetched)$(keys conflicts)" ""
}

@test "pull: kill -9 at timed moments leaves e2fsck clean and files wholly old or new" {
	pull_setup
	local t=$BATS_TEST_TMPDIR delay pid
	cp --sparse=always w.cdisk "$t/before.cdisk"
	cp "$CACHE"/folders/*.state "$t/before.state"
	for delay in 0.05 0.1 0.2 0.4 0.8 1.6; do
		cp --sparse=always "$t/before.cdisk" w.cdisk
		cp "$t/before.state" "$CACHE"/folders/*.state
		rm -f "$CACHE"/folders/*.pull "$CACHE"/folders/*.state.pull w.cdisk.pull-tmp
		cdisk-sync --files --pull w.cdisk >"$t/out" 2>&1 &
		pid=$!
		sleep "$delay"
		kill -9 "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
		check_whole any
		run_cdisk cdisk-sync --files --pull w.cdisk
		check_whole new
	done
}

@test "pull: the cloud unreachable is exit 3, the disk unchanged; a cut mid-pull leaves nothing partial and the next run finishes" {
	pull_setup
	local sum rc=0 pid port
	sum=$(sha256sum <w.cdisk)
	start_proxy "${RGW_ENDPOINT#http://}"
	port=$PROXY_PORT
	proxy_ctl refuse on
	AWS_ENDPOINT_URL=http://127.0.0.1:$port run_cdisk 3 cdisk-sync --files --pull w.cdisk
	assert_equal "$(sha256sum <w.cdisk)" "$sum"
	proxy_ctl refuse off
	proxy_ctl rate $((4 << 20))
	AWS_ENDPOINT_URL=http://127.0.0.1:$port cdisk-sync --files --pull w.cdisk \
		>"$BATS_TEST_TMPDIR/out" 2>&1 &
	pid=$!
	# the network goes while the large file comes
	until [ "$(cat "$CACHE"/objects/*.part 2>/dev/null | wc -c)" -gt $((2 << 20)) ]; do
		kill -0 "$pid" 2>/dev/null || fail "the pull ended first: $(cat "$BATS_TEST_TMPDIR/out")"
		sleep 0.05
	done
	kill -9 "$PROXY_PID"
	wait "$PROXY_PID" 2>/dev/null || true
	PROXY_PID=
	wait "$pid" || rc=$?
	assert_equal "$rc" 3
	assert_equal "$(sha256sum <w.cdisk)" "$sum"
	check_whole old
	start_proxy "${RGW_ENDPOINT#http://}"
	AWS_ENDPOINT_URL=http://127.0.0.1:$PROXY_PORT run_cdisk cdisk-sync --files --pull --json w.cdisk
	assert_equal "$(keys fetched)" "big.bin top.txt "
	check_whole new
}

@test "pull: a served disk is 'try later'; --force and other sync options are refused" {
	make_folder
	writer 64M
	start_serve --export d=w.cdisk
	run_cdisk 8 cdisk-sync --files --pull w.cdisk
	assert_error cdisk-sync "is served \\(cdisk-serve\\): the guest has the filesystem mounted; try later"
	stop_serve
	run_cdisk 2 cdisk-sync --files --pull --force w.cdisk
	assert_usage_error cdisk-sync "--force goes with --files, not with --files --pull"
}

# ---- reader disks: each has its own pull state, is pulled into, never pushes

@test "pull into a reader: the other client's change and this host's own uploads reach it; the writer's state is its own" {
	make_folder
	writer 64M
	reader 64M
	printf 'changed in the cloud\n' >"$BATS_TEST_TMPDIR/top.txt"
	put "$BATS_TEST_TMPDIR/top.txt" top.txt
	# the writer sends a file: new content for the reader, not for the writer
	head -c $((3 << 20)) /dev/urandom >"$BATS_TEST_TMPDIR/big.bin"
	edit "write $BATS_TEST_TMPDIR/big.bin /big.bin"
	run_cdisk cdisk-sync --files --json w.cdisk
	assert_equal "$(keys uploaded)" "big.bin "
	start_proxy "${RGW_ENDPOINT#http://}"
	AWS_ENDPOINT_URL=http://127.0.0.1:$PROXY_PORT run_cdisk cdisk-sync --files --pull --json r.cdisk
	assert_equal "$(json_get .role)" reader
	assert_equal "$(keys fetched)" "big.bin top.txt "
	assert_equal "$(json_get .own_uploads)" 0
	assert_equal "$(keys conflicts)$(keys kept_local)" ""
	# the upload came over the network (the cache never held it)
	[ "$(proxy_bytes)" -gt $((3 << 20)) ] || fail "only $(proxy_bytes) bytes went through the proxy"
	read_disk r.cdisk
	fsck_clean
	assert_equal "$(disk_cat /top.txt)" "changed in the cloud"
	assert_equal "$(disk_cat /big.bin | sha256sum)" "$(sha256sum <"$BATS_TEST_TMPDIR/big.bin")"
	assert_equal "$(disk_cat /keep.txt)" "keep me"
	# the reader's pull left the writer's state alone: it still gets
	# top.txt, and not its own upload
	run_cdisk cdisk-sync --files --pull --json w.cdisk
	assert_equal "$(json_get .role)" writer
	assert_equal "$(keys fetched)" "top.txt "
	read_disk
	assert_equal "$(disk_cat /top.txt)" "changed in the cloud"
	# nothing more for the reader, in text too
	run_cdisk cdisk-sync --files --pull r.cdisk
	assert_output --partial "(a reader): 0 written"
	# a second reader made now is over a new image and has nothing to pull
	run_cdisk cdisk-create --from-folder "s3://$BUCKET/docs/" --size 64M r2.cdisk
	run_cdisk cdisk-sync --files --pull --json r2.cdisk
	assert_equal "$(keys fetched)$(keys removed)" ""
}

@test "pull into a reader: the cloud wins; what the guest changed is kept beside, exit 0, no conflict" {
	make_folder
	writer 64M
	reader 64M
	printf 'the reader version\n' >"$BATS_TEST_TMPDIR/disk.txt"
	edit "rm /top.txt
write $BATS_TEST_TMPDIR/disk.txt /top.txt
rm /sub/gone.txt
write $BATS_TEST_TMPDIR/disk.txt /sub/gone.txt
rm /keep.txt
write $BATS_TEST_TMPDIR/disk.txt /keep.txt
write $BATS_TEST_TMPDIR/disk.txt /mine.txt" r.cdisk
	printf 'the cloud version\n' >"$BATS_TEST_TMPDIR/cloud.txt"
	put "$BATS_TEST_TMPDIR/cloud.txt" top.txt
	rclone_ deletefile "rgw:$BUCKET/docs/sub/gone.txt"
	run_cdisk cdisk-sync --files --pull --dry-run --json r.cdisk
	assert_equal "$(keys kept_local)" "sub/gone.txt top.txt "
	run_cdisk cdisk-sync --files --pull --json r.cdisk
	assert_equal "$(keys fetched)" "top.txt "
	assert_equal "$(keys removed)" "sub/gone.txt "
	assert_equal "$(keys kept_local)" "sub/gone.txt top.txt "
	assert_equal "$(keys conflicts)" ""
	local top gone
	top=$(jq -r '.kept_local[] | select(.key == "top.txt") | .saved_as' <<<"$output")
	gone=$(jq -r '.kept_local[] | select(.key == "sub/gone.txt") | .saved_as' <<<"$output")
	[[ $top =~ ^top\.local-conflict-[0-9]{8}-[0-9]{6}\.txt$ ]] || fail "saved as '$top'"
	[[ $gone =~ ^sub/gone\.local-conflict-[0-9]{8}-[0-9]{6}\.txt$ ]] || fail "saved as '$gone'"
	read_disk r.cdisk
	fsck_clean
	assert_equal "$(disk_cat /top.txt)" "the cloud version"
	assert_equal "$(disk_cat "/$top")" "the reader version"
	assert_equal "$(disk_cat "/$gone")" "the reader version"
	debugfs -R "stat /sub/gone.txt" "$FS" 2>&1 | grep -q "File not found" ||
		fail "sub/gone.txt is still on the reader"
	# what the cloud did not change stays as the guest left it
	assert_equal "$(disk_cat /keep.txt)" "the reader version"
	assert_equal "$(disk_cat /mine.txt)" "the reader version"
	# nothing more to pull; a later change on both sides is kept again
	run_cdisk cdisk-sync --files --pull --json r.cdisk
	assert_equal "$(keys fetched)$(keys removed)$(keys kept_local)" ""
	edit "rm /top.txt
write $BATS_TEST_TMPDIR/disk.txt /top.txt" r.cdisk
	printf 'the cloud again\n' >"$BATS_TEST_TMPDIR/cloud.txt"
	put "$BATS_TEST_TMPDIR/cloud.txt" top.txt
	run_cdisk cdisk-sync --files --pull r.cdisk
	assert_output --partial "kept: 'top.txt' was changed on this reader disk"
	read_disk r.cdisk
	fsck_clean
	assert_equal "$(disk_cat /top.txt)" "the cloud again"
}

@test "pull into a reader: kill -9 at each step and at timed moments leaves e2fsck clean, files wholly old or new" {
	pull_setup reader
	local step t=$BATS_TEST_TMPDIR delay pid
	cp --sparse=always r.cdisk "$t/before.cdisk"
	cp "$CACHE"/folders/*.r-*.state "$t/before.state"
	for step in copied applied intent renamed; do
		CDISK_FAULT_PULL_KILL=$step run_cdisk 137 cdisk-sync --files --pull r.cdisk
		if [ $step = renamed ]; then check_whole new r.cdisk; else check_whole old r.cdisk; fi
	done
	assert_exists "$CACHE"/folders/*.r-*.pull
	run_cdisk cdisk-sync --files --pull --json r.cdisk
	assert_equal "$(keys fetched)$(keys conflicts)$(keys kept_local)" ""
	assert_not_exists r.cdisk.pull-tmp
	# the reader's crashes left the writer's pull alone
	run_cdisk cdisk-sync --files --pull --json w.cdisk
	assert_equal "$(keys fetched)" "big.bin top.txt "
	for delay in 0.05 0.2 0.8 1.6; do
		cp --sparse=always "$t/before.cdisk" r.cdisk
		cp "$t/before.state" "$CACHE"/folders/*.r-*.state
		rm -f "$CACHE"/folders/*.r-*.pull "$CACHE"/folders/*.r-*.state.pull r.cdisk.pull-tmp
		cdisk-sync --files --pull r.cdisk >"$t/out" 2>&1 &
		pid=$!
		sleep "$delay"
		kill -9 "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
		check_whole any r.cdisk
		run_cdisk cdisk-sync --files --pull r.cdisk
		check_whole new r.cdisk
	done
}

@test "push from a reader is refused with exit 5, naming the writer; nothing is sent" {
	make_folder
	writer 64M
	reader 64M
	printf 'from a reader\n' >"$BATS_TEST_TMPDIR/x.txt"
	edit "write $BATS_TEST_TMPDIR/x.txt /x.txt" r.cdisk
	run_cdisk 5 cdisk-sync --files r.cdisk
	assert_error cdisk-sync "'.*/r.cdisk' is a reader disk of 's3://$BUCKET/docs/': only its writer disk '.*/w.cdisk' sends files to the cloud"
	run_cdisk 5 cdisk-sync --files --dry-run r.cdisk
	! s3_curl -I "$RGW_ENDPOINT/$BUCKET/docs/x.txt" >/dev/null || fail "x.txt was uploaded"
	# the writer gone, and made again at its path as a reader: no writer
	rm w.cdisk
	run_cdisk cdisk-create --from-folder "s3://$BUCKET/docs/" --size 64M w.cdisk
	run_cdisk 5 cdisk-sync --files w.cdisk
	assert_error cdisk-sync "'.*/w.cdisk' is a reader disk of 's3://$BUCKET/docs/', which has no writer disk"
	# a disk made by no folder
	run_cdisk cdisk-create --size 64M plain.cdisk
	run_cdisk 6 cdisk-sync --files --pull plain.cdisk
	assert_error cdisk-sync "is no disk of a cloud folder in the cache"
}

@test "pull: a disk made with --include and --exclude takes only those files from the folder" {
	make_folder
	run_cdisk cdisk-create --from-folder "s3://$BUCKET/docs/" --size 64M --include 'sub/*' \
		--exclude 'gone.txt' r.cdisk
	printf 'new\n' >"$BATS_TEST_TMPDIR/new.txt"
	put "$BATS_TEST_TMPDIR/new.txt" new.txt
	put "$BATS_TEST_TMPDIR/new.txt" sub/new.txt
	put "$BATS_TEST_TMPDIR/new.txt" sub/gone.txt
	rclone_ deletefile "rgw:$BUCKET/docs/top.txt"
	run_cdisk cdisk-sync --files --pull --json r.cdisk
	assert_equal "$(keys fetched)" "sub/new.txt "
	assert_equal "$(keys removed)" ""
	read_disk r.cdisk
	fsck_clean
	assert_equal "$(disk_cat /sub/new.txt)" "new"
	debugfs -R "stat /new.txt" "$FS" 2>&1 | grep -q "File not found" ||
		fail "new.txt, which --include does not take, was pulled"
	# the globs stay with the disk's state after a pull
	put "$BATS_TEST_TMPDIR/new.txt" other.txt
	run_cdisk cdisk-sync --files --pull --json r.cdisk
	assert_equal "$(keys fetched)$(keys removed)" ""
}

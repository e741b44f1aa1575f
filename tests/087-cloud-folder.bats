#!/usr/bin/env bats
# Disks from cloud folders (cdisk-create --from-folder) against radosgw,
# with rclone as the other S3 client: the cache, the image, its reuse.

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
	stop_proxy
}

# upload DIR PREFIX [RCLONE OPTIONS]: the files of DIR under PREFIX/.
upload() {
	local dir=$1 prefix=$2
	shift 2
	# rclone cannot use a CA bundle with its plain-HTTP transport
	timeout 120 env -u AWS_CA_BUNDLE rclone copy --transfers 16 --checkers 16 "$@" "$dir" "rgw:$BUCKET/$prefix" ||
		fail "rclone could not upload $dir"
}

# A folder with nested folders, spaces and UTF-8 in names, empty files,
# a file uploaded in parts (its ETag is no MD5) and many small files.
# make_folder DIR [SMALL FILES] [BYTES OF THE LARGE FILE]
make_folder() {
	local d=$1 i
	mkdir -p "$d/a/b/c" "$d/with space/ünïcødé ✓" "$d/many"
	printf 'hello\n' >"$d/top.txt"
	head -c 70000 /dev/urandom >"$d/a/b/c/deep.bin"
	: >"$d/empty"
	: >"$d/with space/ünïcødé ✓/leer datei"
	printf 'grüße\n' >"$d/with space/ünïcødé ✓/straße.txt"
	head -c "${3:-65536}" /dev/urandom >"$d/a/parts.bin"
	for i in $(seq 1 "${2:-300}"); do
		printf 'file %d\n' "$i" >"$d/many/f$i"
	done
	touch -d '2020-02-03 04:05:06 UTC' "$d/top.txt"
}

file_bytes() {
	find "$1" -type f -printf '%s\n' | awk '{ n += $1 } END { print n }'
}

# The image's partition (GPT entry 1) as debugfs and e2fsck name it.
partition() {
	local start
	start=$(sgdisk -i 1 "$1" | awk '/^First sector/ { print $3 }')
	[ "$start" = 2048 ] || fail "partition 1 of $1 starts at '$start'"
	echo "$1?offset=$((start * 512))"
}

# read_back PARTITION: its files into $BATS_TEST_TMPDIR/back.
read_back() {
	rm -rf "$BATS_TEST_TMPDIR/back"
	mkdir "$BATS_TEST_TMPDIR/back"
	debugfs -R "rdump / $BATS_TEST_TMPDIR/back" "$1" 2>/dev/null
}

create() {
	run_cdisk "$@"
}

@test "folder: a disk from a folder holds its files, byte for byte, in a clean ext4" {
	make_folder "$BATS_TEST_TMPDIR/src" 300 $((100 << 20))
	upload "$BATS_TEST_TMPDIR/src" docs --s3-upload-cutoff 5M --s3-chunk-size 16M
	create cdisk-create --json --from-folder "s3://$BUCKET/docs/" d1.cdisk
	local img part
	img=$(json_get .image)
	assert_equal "$(json_get .files)" 306
	assert_equal "$(json_get .fetched)" 306
	assert_equal "$(json_get .image_reused)" false
	# at least 1 GiB; the disk is an overlay with the image as its base
	assert_equal "$(json_get .size)" 1073741824
	assert_equal "$(json_get .bytes)" "$(file_bytes "$BATS_TEST_TMPDIR/src")"
	run_cdisk cdisk-info --json d1.cdisk
	assert_equal "$(json_get .base.uri)" "$img"
	assert_equal "$(json_get .size)" 1073741824
	sgdisk -v "$img" | grep -q 'No problems found' || fail "the GPT is damaged"
	part=$(partition "$img")
	e2fsck -fn "$part" || fail "e2fsck found errors"
	read_back "$part"
	diff -r -x lost+found "$BATS_TEST_TMPDIR/src" "$BATS_TEST_TMPDIR/back" ||
		fail "the files differ from the folder's"
	# times as the uploader kept them; owner root, modes 0644 and 0755
	run debugfs -R "stat /top.txt" "$part"
	assert_output --partial "mtime: 0x$(printf '%x' "$(date -d '2020-02-03 04:05:06 UTC' +%s)")"
	assert_output --regexp 'User: +0 +Group: +0'
	assert_output --regexp 'Mode: +0644'
	run debugfs -R "stat \"/with space\"" "$part"
	assert_output --regexp 'Mode: +0755'
}

@test "folder: --owner, --include, --exclude, and an empty folder kept" {
	make_folder "$BATS_TEST_TMPDIR/src" 10
	upload "$BATS_TEST_TMPDIR/src" docs
	s3_curl -X PUT --data-binary '' "$RGW_ENDPOINT/$BUCKET/docs/nothing%20here/" >/dev/null
	create cdisk-create --json --from-folder "s3://$BUCKET/docs" --owner 1000:1001 \
		--exclude 'many/*' --exclude '*.bin' all.cdisk
	assert_equal "$(json_get .files)" 4
	part=$(partition "$(json_get .image)")
	e2fsck -fn "$part" || fail "e2fsck found errors"
	run debugfs -R "stat /top.txt" "$part"
	assert_output --regexp 'User: +1000 +Group: +1001'
	run debugfs -R "ls -l /" "$part"
	assert_output --partial 'nothing here'
	refute_output --partial 'many'
	create cdisk-create --json --from-folder "s3://$BUCKET/docs/" --include '*.txt' txt.cdisk
	assert_equal "$(json_get .files)" 2
	assert_equal "$(json_get .fetched)" 0
	run debugfs -R 'ls -p "/with space/ünïcødé ✓"' "$(partition "$(json_get .image)")"
	assert_output --partial 'straße.txt'
	refute_output --partial 'leer datei'
}

@test "folder: ten disks over one folder fetch each file once and share one image" {
	# more than one page of a listing (1000 keys), and 4 MiB in one file
	make_folder "$BATS_TEST_TMPDIR/src" 1100 $((4 << 20))
	upload "$BATS_TEST_TMPDIR/src" docs
	local total first listing img i
	total=$(file_bytes "$BATS_TEST_TMPDIR/src")
	start_proxy "${RGW_ENDPOINT#http://}"
	export AWS_ENDPOINT_URL=http://127.0.0.1:$PROXY_PORT
	create cdisk-create --json --from-folder "s3://$BUCKET/docs/" vm1.cdisk
	assert_equal "$(json_get .files)" 1106
	assert_equal "$(json_get .fetched)" 1106
	img=$(json_get .image)
	first=$(proxy_bytes)
	assert_num "$first" -ge "$total"
	create cdisk-create --json --from-folder "s3://$BUCKET/docs/" vm2.cdisk
	# a second disk costs one listing, far less than the files
	listing=$(($(proxy_bytes) - first))
	assert_num "$listing" -lt "$((total / 4))"
	for i in $(seq 2 10); do
		create cdisk-create --json --from-folder "s3://$BUCKET/docs/" "vm$i.cdisk"
		assert_equal "$(json_get .image)" "$img"
		assert_equal "$(json_get .image_reused)" true
		assert_equal "$(json_get .fetched)" 0
	done
	# what the server saw after the first: listings, and not one file again
	assert_num "$(($(proxy_bytes) - first))" -le "$((10 * listing + 10 * 4096))"
	assert_equal "$(json_get .cache.images)" 1
	assert_equal "$(json_get .cache.images_in_use)" 1
	# each is its own overlay: a write to one is not seen by another
	run_cdisk cdisk-io vm3.cdisk w:0:4096:7 r:0:4096:7
	run_cdisk 10 cdisk-io vm4.cdisk r:0:4096:7
	run_cdisk cdisk-create --from-folder "s3://$BUCKET/docs/" vm1.cdisk
	assert_output --partial "unchanged"
}

@test "folder: a changed folder is a new state and a new image; unchanged files are not fetched again" {
	make_folder "$BATS_TEST_TMPDIR/src" 20
	upload "$BATS_TEST_TMPDIR/src" docs
	create cdisk-create --json --from-folder "s3://$BUCKET/docs/" old.cdisk
	local img=$(json_get .image) state=$(json_get .state)
	printf 'changed\n' >"$BATS_TEST_TMPDIR/src/top.txt"
	upload "$BATS_TEST_TMPDIR/src" docs
	create cdisk-create --json --from-folder "s3://$BUCKET/docs/" new.cdisk
	[ "$(json_get .image)" != "$img" ] || fail "the changed folder reused the old image"
	[ "$(json_get .state)" != "$state" ] || fail "the state did not change"
	assert_equal "$(json_get .fetched)" 1
	assert_equal "$(debugfs -R "cat /top.txt" "$(partition "$(json_get .image)")" 2>/dev/null)" \
		changed
}

@test "folder: a damaged cache entry is detected and fetched again" {
	make_folder "$BATS_TEST_TMPDIR/src" 5 $((6 << 20))
	upload "$BATS_TEST_TMPDIR/src" docs --s3-upload-cutoff 5M --s3-chunk-size 5M
	create cdisk-create --json --from-folder "s3://$BUCKET/docs/" d1.cdisk
	local obj
	# flip a byte of the file uploaded in parts (no MD5 to check it by)
	# and of a small one, keeping their sizes
	for obj in $(find "$CACHE/objects" -type f ! -name '*.*' -size +1M) \
		$(grep -l '^hello$' "$CACHE"/objects/*); do
		printf 'X' | dd of="$obj" bs=1 seek=3 conv=notrunc status=none
	done
	# another owner: another image, made from the cached files
	create cdisk-create --json --from-folder "s3://$BUCKET/docs/" --owner 5:5 d2.cdisk
	assert_equal "$(json_get .damaged)" 2
	assert_equal "$(json_get .fetched)" 2
	part=$(partition "$(json_get .image)")
	read_back "$part"
	diff -r -x lost+found "$BATS_TEST_TMPDIR/src" "$BATS_TEST_TMPDIR/back" ||
		fail "the damaged copy went into the image"
}

@test "folder: an interrupted fetch is resumed, and a file that does not match its ETag is refused" {
	make_folder "$BATS_TEST_TMPDIR/src" 5
	upload "$BATS_TEST_TMPDIR/src" docs
	create cdisk-create --json --from-folder "s3://$BUCKET/docs/" --include top.txt d1.cdisk
	local obj
	obj=$(grep -l '^hello$' "$CACHE"/objects/*)
	# a part fetched before a cut: only the rest is asked for
	rm "$CACHE"/images/*.img "$obj" "$obj.sum" d1.cdisk
	printf 'hel' >"$obj.part"
	create cdisk-create --json --from-folder "s3://$BUCKET/docs/" --include top.txt d1.cdisk
	assert_equal "$(json_get .fetched)" 1
	cmp "$obj" "$BATS_TEST_TMPDIR/src/top.txt"
	# a part that is not the object's start: its MD5 does not match
	rm "$CACHE"/images/*.img "$obj" "$obj.sum" d1.cdisk
	printf 'HEL' >"$obj.part"
	create 7 cdisk-create --from-folder "s3://$BUCKET/docs/" --include top.txt d1.cdisk
	assert_error cdisk-create "top.txt' does not match its MD5"
	assert_not_exists d1.cdisk
	# and the next try starts over
	create cdisk-create --json --from-folder "s3://$BUCKET/docs/" --include top.txt d1.cdisk
	cmp "$obj" "$BATS_TEST_TMPDIR/src/top.txt"
}

@test "folder: one writer per folder; a second is refused and told which is" {
	make_folder "$BATS_TEST_TMPDIR/src" 5
	upload "$BATS_TEST_TMPDIR/src" docs
	create cdisk-create --from-folder "s3://$BUCKET/docs/" --writer w1.cdisk
	create cdisk-create --from-folder "s3://$BUCKET/docs/" --writer w1.cdisk
	assert_output --partial unchanged
	create cdisk-create --from-folder "s3://$BUCKET/docs/" r1.cdisk
	create 4 cdisk-create --from-folder "s3://$BUCKET/docs/" --writer w2.cdisk
	assert_error cdisk-create "cannot make '.*/w2.cdisk' a writer of 's3://$BUCKET/docs/': '.*/w1.cdisk' is its writer"
	assert_not_exists w2.cdisk
	# once the first is gone, another may be the writer
	rm w1.cdisk
	create cdisk-create --from-folder "s3://$BUCKET/docs/" --writer w2.cdisk
}

@test "folder: bad input, each refused in one line" {
	make_folder "$BATS_TEST_TMPDIR/src" 5
	upload "$BATS_TEST_TMPDIR/src" docs
	create 6 cdisk-create --from-folder "s3://$BUCKET/nosuch/" d.cdisk
	assert_error cdisk-create "nothing there \(no such folder, or it is empty\)"
	create 6 cdisk-create --from-folder "s3://nosuch-$BUCKET/docs/" d.cdisk
	assert_error cdisk-create "no such bucket"
	create 6 cdisk-create --from-folder "s3://$BUCKET/docs/" --include '*.nothing' d.cdisk
	assert_error cdisk-create "no file there matches"
	AWS_SECRET_ACCESS_KEY=wrong create 5 cdisk-create --from-folder "s3://$BUCKET/docs/" d.cdisk
	assert_error cdisk-create "HTTP 403 SignatureDoesNotMatch"
	AWS_ACCESS_KEY_ID=NOSUCH create 5 cdisk-create --from-folder "s3://$BUCKET/docs/" d.cdisk
	assert_error cdisk-create "HTTP 403 InvalidAccessKeyId"
	head -c $((20 << 20)) /dev/zero >"$BATS_TEST_TMPDIR/big"
	upload "$BATS_TEST_TMPDIR/big" docs
	create 2 cdisk-create --from-folder "s3://$BUCKET/docs/" --size 16M --include big d.cdisk
	assert_error cdisk-create "its files need about .*, more than --size 16 MiB"
	create 2 cdisk-create --from-folder "s3://$BUCKET/docs/" --fs xfs d.cdisk
	assert_error cdisk-create "filesystem 'xfs' is not supported"
	create 2 cdisk-create --from-folder "s3://$BUCKET/docs/" --owner root d.cdisk
	assert_usage_error cdisk-create "invalid owner 'root'"
	create 2 cdisk-create --writer d.cdisk
	assert_usage_error cdisk-create "go with --from-folder"
	local long
	long=$(printf 'n%.0s' $(seq 256))
	printf 'x' | s3_curl -X PUT --data-binary @- "$RGW_ENDPOINT/$BUCKET/long/$long" >/dev/null
	create 2 cdisk-create --from-folder "s3://$BUCKET/long/" d.cdisk
	assert_error cdisk-create "the name 'nnn.*' is 256 bytes long; ext4 holds at most 255"
	assert_not_exists d.cdisk
}

@test "folder: the cache stays within max_size and keeps images in use" {
	make_folder "$BATS_TEST_TMPDIR/src" 5
	upload "$BATS_TEST_TMPDIR/src" docs
	printf 'max_size = 1M\n' >>"$CDISK_CONFIG"
	create cdisk-create --json --from-folder "s3://$BUCKET/docs/" --owner 1:1 d1.cdisk
	# the files went (they are only needed to build), the image in use stayed
	assert_equal "$(json_get .cache.objects)" 0
	assert_equal "$(json_get .cache.images)" 1
	local img1
	img1=$(json_get .image)
	create cdisk-create --json --from-folder "s3://$BUCKET/docs/" --owner 2:2 d2.cdisk
	assert_equal "$(json_get .cache.images)" 2
	assert_exists "$img1"
	# an image no disk is over any more may go
	rm d1.cdisk
	create cdisk-create --json --from-folder "s3://$BUCKET/docs/" --owner 3:3 d3.cdisk
	assert_not_exists "$img1"
	assert_equal "$(json_get .cache.images)" 2
	assert_equal "$(json_get .cache.images_in_use)" 2
}

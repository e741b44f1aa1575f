#!/bin/bash
# Ten disks from one cloud folder (cdisk-create --from-folder: one fetch
# into the host cache, one image, ten overlays) next to ten `rclone copy`
# downloads of the same folder, as ten VMs each with its own cloud client
# would do.  Then one changed file sent back: cdisk-sync --files on the
# writer disk, whose filesystem was changed through NBD as a VM would,
# next to `rclone sync` of a local copy with the same change into a second
# copy of the folder.  radosgw from the test suite, on loopback.
#
# Usage: bench/cloud.sh [SMALL FILES, default 2000] [LARGE FILE MiB, default 100]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
nsmall=${1:-2000}
mib=${2:-100}
# shellcheck source=bench/common.sh
. "$top/bench/common.sh"
bench_setup
bench_servers rgw
printf '[cache]\ndir = %s/cache\n[serve]\nruntime_dir = %s/run\n' "$work" "$work" >>"$CDISK_CONFIG"
export AWS_ENDPOINT_URL=$RGW_ENDPOINT AWS_ACCESS_KEY_ID=$RGW_KEY
export AWS_SECRET_ACCESS_KEY=$RGW_SECRET AWS_REGION=us-east-1
export RCLONE_CONFIG_RGW_TYPE=s3 RCLONE_CONFIG_RGW_PROVIDER=Ceph
export RCLONE_CONFIG_RGW_ENDPOINT=$RGW_ENDPOINT RCLONE_CONFIG_RGW_ACCESS_KEY_ID=$RGW_KEY
export RCLONE_CONFIG_RGW_SECRET_ACCESS_KEY=$RGW_SECRET
rclone() { env -u AWS_CA_BUNDLE rclone -q "$@"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
serve_pid=
bench_cleanup() { [ -z "$serve_pid" ] || kill "$serve_pid" 2>/dev/null || true; }

# edit DISK DEBUGFS-COMMANDS: the disk's filesystem changed as a VM would,
# through NBD: read out, changed by debugfs (the partition starts at
# 1 MiB), written back.  Not timed.
edit() {
	local nbd="nbd+unix:///d?socket=$work/run/d.sock"
	cdisk-serve --export d="$1" 2>serve.log &
	serve_pid=$!
	for _ in $(seq 200); do nbdinfo --size "$nbd" >/dev/null 2>&1 && break; sleep 0.05; done
	nbdcopy "$nbd" raw.img
	printf '%s\n' "$2" | debugfs -w -f - "raw.img?offset=1048576" >/dev/null 2>&1
	nbdcopy raw.img "$nbd"
	kill "$serve_pid"
	wait "$serve_pid" || true
	serve_pid=
	rm -f raw.img
}

mkdir -p src/many
for i in $(seq 1 "$nsmall"); do printf 'file %d\n' "$i" >"src/many/f$i"; done
head -c "$((mib << 20))" /dev/urandom >src/large.bin
curl -sf -X PUT --aws-sigv4 aws:amz:us-east-1:s3 --user "$RGW_KEY:$RGW_SECRET" \
	-H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$RGW_ENDPOINT/bench" >/dev/null
t=$(now)
rclone copy --transfers 16 --checkers 16 src rgw:bench/docs
echo "folder: $nsmall small files and one of $mib MiB, uploaded by rclone in $(since "$t") s"
# rclone sync's own copy of the folder, for the push below.
rclone copy --transfers 16 --checkers 16 src rgw:bench/docs-r

t=$(now)
for i in $(seq 1 10); do
	rclone copy --transfers 8 --checkers 8 rgw:bench/docs "copy$i"
done
rclone_ten=$(since "$t")
echo "ten rclone copy downloads:           $rclone_ten s"
du -sh copy1 copy2 | tail -1 | sed 's/^/  one copy takes /'
rm -rf copy*

t=$(now)
cdisk-create -q --from-folder s3://bench/docs/ vm1.cdisk
echo "first cdisk-create --from-folder:    $(since "$t") s (list, fetch, build the image)"
t2=$(now)
for i in $(seq 2 10); do
	cdisk-create -q --from-folder s3://bench/docs/ "vm$i.cdisk"
done
echo "nine more disks over the same image: $(since "$t2") s"
cdisk_ten=$(since "$t")
echo "ten disks in all:                    $cdisk_ten s (speed-up over rclone: $(ratio "$rclone_ten" "$cdisk_ten"))"
cdisk-create --json --from-folder s3://bench/docs/ vm1.cdisk |
	jq -r '"  cache: \(.cache.object_bytes) bytes of files, \(.cache.image_bytes) bytes of image"'

# One small file changed, on the disk and in the local copy alike.
cdisk-create -q --from-folder s3://bench/docs/ --writer w.cdisk
printf 'file 1, changed by the bench\n' >changed.txt
edit w.cdisk "cd /many
rm f1
write changed.txt f1"
cp changed.txt src/many/f1
t=$(now)
cdisk-sync -q --files w.cdisk
cdisk_push=$(since "$t")
t=$(now)
rclone sync --transfers 16 --checkers 16 src rgw:bench/docs-r
rclone_push=$(since "$t")
[ "$(rclone cat rgw:bench/docs/many/f1)" = "$(cat changed.txt)" ] ||
	{ echo "cdisk-sync --files did not send the changed file" >&2; exit 1; }
echo "one changed file sent back:"
echo "  cdisk-sync --files:                $cdisk_push s"
echo "  rclone sync:                       $rclone_push s (speed-up of cdisk: $(ratio "$rclone_push" "$cdisk_push"))"

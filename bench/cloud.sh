#!/bin/bash
# Ten disks from one cloud folder (cdisk-create --from-folder: one fetch
# into the host cache, one image, ten overlays) next to ten `rclone copy`
# downloads of the same folder, as ten VMs each with its own cloud client
# would do.  radosgw from the test suite, on loopback.
#
# Usage: bench/cloud.sh [SMALL FILES, default 2000] [LARGE FILE MiB, default 100]
# Not yet: pushing a changed file back (cdisk-sync --files) next to
# `rclone sync`, which waits for that command.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
nsmall=${1:-2000}
mib=${2:-100}
# shellcheck source=bench/common.sh
. "$top/bench/common.sh"
bench_setup
bench_servers rgw
printf '[cache]\ndir = %s/cache\n' "$work" >>"$CDISK_CONFIG"
export AWS_ENDPOINT_URL=$RGW_ENDPOINT AWS_ACCESS_KEY_ID=$RGW_KEY
export AWS_SECRET_ACCESS_KEY=$RGW_SECRET AWS_REGION=us-east-1
export RCLONE_CONFIG_RGW_TYPE=s3 RCLONE_CONFIG_RGW_PROVIDER=Ceph
export RCLONE_CONFIG_RGW_ENDPOINT=$RGW_ENDPOINT RCLONE_CONFIG_RGW_ACCESS_KEY_ID=$RGW_KEY
export RCLONE_CONFIG_RGW_SECRET_ACCESS_KEY=$RGW_SECRET
rclone() { env -u AWS_CA_BUNDLE rclone -q "$@"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

mkdir -p src/many
for i in $(seq 1 "$nsmall"); do printf 'file %d\n' "$i" >"src/many/f$i"; done
head -c "$((mib << 20))" /dev/urandom >src/large.bin
curl -sf -X PUT --aws-sigv4 aws:amz:us-east-1:s3 --user "$RGW_KEY:$RGW_SECRET" \
	-H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$RGW_ENDPOINT/bench" >/dev/null
t=$(now)
rclone copy --transfers 16 --checkers 16 src rgw:bench/docs
echo "folder: $nsmall small files and one of $mib MiB, uploaded by rclone in $(since "$t") s"

t=$(now)
for i in $(seq 1 10); do
	rclone copy --transfers 8 --checkers 8 rgw:bench/docs "copy$i"
done
echo "ten rclone copy downloads:           $(since "$t") s"
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
echo "ten disks in all:                    $(since "$t") s"
cdisk-create --json --from-folder s3://bench/docs/ vm1.cdisk |
	jq -r '"  cache: \(.cache.object_bytes) bytes of files, \(.cache.image_bytes) bytes of image"'

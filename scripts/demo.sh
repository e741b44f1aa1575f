#!/bin/bash
# The main job on an embedded default: a local file stands in for the
# storage server.  It grows with every capability cdisk gains.
set -euo pipefail
O=${1:-build}
top=$(cd "$(dirname "$0")/.." && pwd)
PATH="$top/$O/bin:$top/$O/tests:$PATH"
work=$(mktemp -d /tmp/cdisk-demo.XXXXXX)
cd "$work"
# Keep the demo's metadata backups with the demo, not in /var/lib/cdisk.
export CDISK_CONFIG=$work/cdisk.conf
printf '[metadata]\nbackup_dir = %s/meta\n[serve]\nruntime_dir = %s/run\n' \
	"$work" "$work" >"$CDISK_CONFIG"

step() { printf '\n== %s\n' "$*"; }

step "a 256 MiB golden image stands in for the storage server"
patfile server.img w 0 256M 1
ls -l server.img

step "cdisk-create: a desktop disk as an overlay over it (size taken from the base)"
cdisk-create --base server.img desk.cdisk
cdisk-create --base server.img desk.cdisk    # again: unchanged, for Ansible

step "the VM writes 16 MiB and flushes: only the overlay is written"
cdisk-io desk.cdisk w:0:16M:2 f
patfile server.img r 0 256M 1 && echo "server image unchanged"
cdisk-info desk.cdisk

step "the server goes away: what the overlay holds still reads and writes"
mv server.img server.away
cdisk-io desk.cdisk r:0:16M:2 w:16M:4M:3 f && echo "read 16 MiB and wrote 4 MiB with the server down"
mv server.away server.img

step "kill -9 in the middle of writing: the next open recovers by itself"
cdisk-io desk.cdisk w:32M:8M:4 f w:48M:8M:5 "touch:$work/held" hold:60 &
pid=$!
while [ ! -e "$work/held" ]; do sleep 0.05; done
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
cdisk-info -v desk.cdisk | grep -E "last close|blocks:"
cdisk-io desk.cdisk r:32M:8M:4 r:0:16M:2 r:16M:4M:3 && echo "every flushed write read back"

step "cdisk-info --check: every checksum, and the overlay against its records"
cdisk-info --check desk.cdisk | sed -n '/^check:/,$p'

step "the metadata is destroyed: it comes back from its backup on the host"
dd if=/dev/zero of=desk.cdisk bs=4096 count=2 conv=notrunc status=none
cdisk-info desk.cdisk || true
cdisk-restore --metadata desk.cdisk
cdisk-io desk.cdisk r:32M:8M:4 r:0:16M:2 && echo "every flushed write read back"

step "cdisk-serve: the disk served over NBD, as QEMU would use it"
cdisk-serve -q desk.cdisk 3>&- &
serve=$!
sock=$work/run/desk.sock
while [ ! -S "$sock" ]; do sleep 0.05; done
qemu-io -f raw -c "write -P 0x5a 64M 4M" -c "read -P 0x5a 64M 4M" -c flush \
	"nbd+unix:///desk?socket=$sock" | grep -v "ops/sec"
nbdinfo "nbd+unix:///desk?socket=$sock" | grep -E "export-size|block_size_minimum|can_multi_conn"
echo "cdisk-info on the served disk asks the server:"
cdisk-info desk.cdisk | grep -E "^blocks:"
kill -TERM "$serve"
wait "$serve"
cdisk-info desk.cdisk | grep -E "last close"

step "a 1 TiB disk opens and reports in milliseconds"
cdisk-create --size 1T big.cdisk
time cdisk-info --json big.cdisk >/dev/null

printf '\ndemo files are in %s\n' "$work"

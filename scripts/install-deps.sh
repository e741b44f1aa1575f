#!/bin/sh
# Install the Debian packages that cdisk's build and tests need, when any
# is missing.  Safe to run again: it does nothing when all are present.
set -eu

PACKAGES="
	build-essential pkg-config make gcc
	libpopt-dev libjansson-dev libcmocka-dev libinih-dev
	scdoc bats bats-assert bats-support
	jq xxd coreutils util-linux bash-completion socat
	qemu-utils qemu-system-common libnbd-bin nbdkit fio clang libclang-rt-14-dev python3
	libnbd-dev libiscsi-dev libiscsi-bin librbd-dev librados-dev
	libcurl4-openssl-dev curl libgnutls28-dev gnutls-bin
	tgt ceph-mon ceph-osd ceph-common radosgw nginx-light qemu-block-extra
	libext2fs-dev e2fsprogs gdisk rclone gdb prometheus
"

missing=""
for p in $PACKAGES; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
		missing="$missing $p"
	fi
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ]; then
	echo "install-deps: missing packages:$missing (run as root to install them)" >&2
	exit 1
fi
echo "install-deps: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
# prometheus is here for promtool (tests/068 checks cdisk-info --metrics
# with it), not for its server: the package starts one on port 9090 and
# enables it at boot.  Stop and disable it, so that nothing of it listens
# while the tests run.
case " $missing " in
*" prometheus "*)
	if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
		systemctl disable --now prometheus.service >/dev/null 2>&1 || true
	elif command -v service >/dev/null; then
		service prometheus stop >/dev/null 2>&1 || true
		update-rc.d prometheus disable >/dev/null 2>&1 || true
	fi
	;;
esac

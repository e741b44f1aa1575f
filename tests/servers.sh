#!/bin/bash
# Real storage servers for the tests and benchmarks, on loopback, in a
# folder of their own:
#
#   tests/servers.sh start NAME...   tgt | ceph | rgw | nginx  (idempotent)
#   tests/servers.sh stop-all
#
# State lives in $CDISK_SERVERS (a folder the caller owns); each running
# server leaves NAME.env there with the variables tests need, and NAME.pids
# with what to stop.  Within one test run the servers are started once and
# reused; run-tests.sh stops them all when the run ends, whatever happens.
# nbdkit needs no script: tests start one per test (it takes milliseconds).
set -eu
: "${CDISK_SERVERS:?set CDISK_SERVERS to a folder for server state}"
mkdir -p "$CDISK_SERVERS"
S=$CDISK_SERVERS

die() { echo "servers.sh: $*" >&2; exit 1; }

# shellcheck source=tests/ports.sh
. "$(dirname "$0")/ports.sh"

# ---- tgtd: iSCSI ----
start_tgt() {
	local port ctl d=$S/tgt
	mkdir -p "$d"
	port=$(free_port)
	ctl=$((port % 10000 + 1000))
	tgtd -f -C "$ctl" --iscsi portal=127.0.0.1:"$port" >"$d/log" 2>&1 9>&- &
	echo $! >"$S/tgt.pids"
	wait_port "$port" 10 || die "tgtd did not start (see $d/log)"
	cat >"$S/tgt.env" <<-EOF
	TGT_PORT=$port
	TGT_CONTROL=$ctl
	TGT_DIR=$d
	EOF
}

# ---- ceph: one monitor, one memstore OSD, a pool "rbd" ----
# Objects are kept as pages (memstore page set), as a real store keeps
# extents: memstore's other form, one buffer list an object, costs more
# for every write an object has ever taken, which no real store does.
start_ceph() {
	local d=$S/ceph port fsid
	rm -rf "$d"
	mkdir -p "$d"/{mon,osd/osd.0,run,log}
	port=$(free_port)
	fsid=$(cat /proc/sys/kernel/random/uuid)
	cat >"$d/ceph.conf" <<-EOF
	[global]
	fsid = $fsid
	mon host = [v2:127.0.0.1:$port]
	public addr = 127.0.0.1
	auth cluster required = none
	auth service required = none
	auth client required = none
	ms mon client mode = crc
	ms client mode = crc
	osd pool default size = 1
	osd pool default min size = 1
	mon allow pool size one = true
	mon allow pool delete = true
	osd pool default pg num = 8
	osd pool default pgp num = 8
	osd pool default pg autoscale mode = off
	osd crush chooseleaf type = 0
	mon warn on pool no redundancy = false
	# The monitor stops itself when its file system runs low (5% by
	# default): a test host's disk is not the cluster under test.
	mon data avail warn = 1
	mon data avail crit = 0
	osd objectstore = memstore
	memstore device bytes = 8589934592
	memstore page set = true
	run dir = $d/run
	log file = $d/log/\$name.log
	pid file = $d/run/\$name.pid
	ms bind ipv6 = false
	# A client pings its watches every tick: every second, well inside
	# the 5 s watch timeout below (with the default 5 s tick, a live
	# client's watch times out and librbd must take its lock again).
	objecter tick interval = 1
	[mon]
	mon data = $d/mon/\$name
	[osd]
	osd data = $d/osd/\$name
	# A client killed with its exclusive lock on an image keeps it until
	# its watch times out: 5 s, not 30, so tests that kill one go on.
	osd client watch timeout = 5
	osd max object name len = 460
	osd max object namespace len = 64
	# A PG may serve ops only within its read lease: pacific renews it
	# every 8 s for 16 s (osd heartbeat grace 20 x read lease ratio 0.8).
	# An OSD that misses that (frozen with SIGSTOP for over 8 s, as tests
	# 066 and 101 do, or starved on a loaded host) finds an op past the
	# lease, marks the PG laggy and parks its ops "waiting for readable".
	# With peers a lease ack clears that; with one OSD only a recheck on
	# renewal would, and 16.2 has none (ceph PR 52021 came later): the PG
	# stays laggy and its ops wait forever.  One OSD has no peer to hold
	# a lease against: 200000 s (renewed every 28 h) is never missed.
	osd pool default read lease ratio = 10000
	EOF
	local c=(-c "$d/ceph.conf")
	monmaptool --create --addv a "[v2:127.0.0.1:$port]" --fsid "$fsid" "$d/monmap" >/dev/null
	ceph-mon "${c[@]}" --mkfs -i a --monmap "$d/monmap" 2>>"$d/log/setup"
	ceph-mon "${c[@]}" -i a 2>>"$d/log/setup" 9>&-
	echo "CEPH_CONF=$d/ceph.conf" >"$S/ceph.env"
	timeout 30 ceph "${c[@]}" osd create >/dev/null
	ceph-osd "${c[@]}" -i 0 --mkfs 2>>"$d/log/setup"
	ceph-osd "${c[@]}" -i 0 2>>"$d/log/setup" 9>&-
	timeout 60 ceph "${c[@]}" osd pool create rbd 8 >/dev/null 2>&1
	timeout 30 ceph "${c[@]}" osd pool application enable rbd rbd >/dev/null 2>&1
	cat "$d/run/"*.pid >"$S/ceph.pids"
	timeout 30 rbd "${c[@]}" ls rbd >/dev/null || die "ceph did not start (see $d/log)"
}

# ---- radosgw: S3 on the same cluster ----
start_rgw() {
	local d=$S/ceph port
	[ -f "$S/ceph.env" ] || start_ceph
	port=$(free_port)
	cat >>"$d/ceph.conf" <<-EOF
	[client.rgw.a]
	rgw frontends = beast endpoint=127.0.0.1:$port
	rgw data = $d/rgw
	EOF
	mkdir -p "$d/rgw"
	timeout 60 radosgw -c "$d/ceph.conf" -n client.rgw.a 2>>"$d/log/setup" 9>&-
	wait_port "$port" 60 || die "radosgw did not start (see $d/log)"
	cat "$d/run/client.rgw.a.pid" >"$S/rgw.pids"
	timeout 30 radosgw-admin -c "$d/ceph.conf" user create --uid cdisk-test \
		--display-name cdisk-test --access-key CDISKTESTKEY \
		--secret CDISKTESTSECRET >/dev/null 2>>"$d/log/setup"
	cat >"$S/rgw.env" <<-EOF
	RGW_ENDPOINT=http://127.0.0.1:$port
	RGW_KEY=CDISKTESTKEY
	RGW_SECRET=CDISKTESTSECRET
	EOF
}

# ---- nginx: plain HTTP from a folder, and fixed error answers; HTTPS
# with a certificate from a CA of its own (NGINX_CA), which no client
# trusts unless told to ----
start_nginx() {
	local d=$S/nginx port tls_port
	mkdir -p "$d/root" "$d/tmp"
	"$(dirname "$0")/make-certs.sh" "$d/certs" >/dev/null 2>&1 ||
		die "certtool could not make nginx's certificates"
	port=$(free_port)
	tls_port=$port
	while [ "$tls_port" = "$port" ]; do tls_port=$(free_port); done
	cat >"$d/nginx.conf" <<-EOF
	daemon off;
	user root;
	worker_processes 2;
	pid $d/nginx.pid;
	error_log $d/error.log;
	events { worker_connections 256; }
	http {
	    access_log off;
	    limit_req_zone \$binary_remote_addr zone=busy:1m rate=2r/s;
	    client_body_temp_path $d/tmp;
	    proxy_temp_path $d/tmp;
	    fastcgi_temp_path $d/tmp;
	    uwsgi_temp_path $d/tmp;
	    scgi_temp_path $d/tmp;
	    server {
	        listen 127.0.0.1:$port;
	        root $d/root;
	        location /forbidden/ { return 403; }
	        location /broken/ { return 500; }
	        location /moved/ { rewrite ^/moved/(.*)\$ /\$1 redirect; }
	        # A server under load: past two requests a second, 429 and a
	        # pause to take.
	        location /busy/ {
	            alias $d/root/;
	            limit_req zone=busy;
	            limit_req_status 429;
	            add_header Retry-After 3 always;
	        }
	    }
	    # The certificate names 127.0.0.1, not 127.0.0.2.
	    server {
	        listen 127.0.0.1:$tls_port ssl;
	        listen 127.0.0.2:$tls_port ssl;
	        ssl_certificate $d/certs/server-cert.pem;
	        ssl_certificate_key $d/certs/server-key.pem;
	        root $d/root;
	    }
	}
	EOF
	nginx -c "$d/nginx.conf" -p "$d" >"$d/log" 2>&1 9>&- &
	echo $! >"$S/nginx.pids"
	wait_port "$port" 10 && wait_port "$tls_port" 10 ||
		die "nginx did not start (see $d/log)"
	cat >"$S/nginx.env" <<-EOF
	NGINX_URL=http://127.0.0.1:$port
	NGINX_HTTPS_PORT=$tls_port
	NGINX_CA=$d/certs/ca-cert.pem
	NGINX_ROOT=$d/root
	EOF
}

start() {
	local name=$1
	[ -f "$S/$name.env" ] && [ -f "$S/$name.pids" ] && return 0
	"start_$name"
}

stop_all() {
	local f pid
	# radosgw before the cluster it uses
	for f in "$S"/rgw.pids "$S"/nginx.pids "$S"/tgt.pids "$S"/ceph.pids; do
		[ -f "$f" ] || continue
		for pid in $(cat "$f"); do kill "$pid" 2>/dev/null || true; done
	done
	for f in "$S"/*.pids; do
		[ -f "$f" ] || continue
		for pid in $(cat "$f"); do
			for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
			kill -9 "$pid" 2>/dev/null || true
		done
		rm -f "$f" "${f%.pids}.env"
	done
}

case "${1:-}" in
start)
	shift
	# One start at a time; the daemons must not inherit the lock.
	exec 9>"$S/.lock"
	flock 9
	for n in "$@"; do
		case "$n" in
		tgt|ceph|rgw|nginx) start "$n" ;;
		*) die "unknown server '$n'" ;;
		esac
	done
	;;
stop-all) stop_all ;;
*) die "usage: servers.sh start NAME... | stop-all" ;;
esac

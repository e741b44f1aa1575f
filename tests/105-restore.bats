#!/usr/bin/env bats
# cdisk-restore --to: the current source (the primary; after a failover,
# the former mirror) is copied onto a new target while the guest's writes
# go there too; when complete it is the mirror or, with --switch, the
# primary (and a failed-over disk's primary is the mirror again).  An
# interrupted restore goes on where it stopped, with nothing lost.

bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
}

teardown() {
	[ -z "${IMAGE:-}" ] || timeout 30 rbd rm "rbd/$IMAGE" >/dev/null 2>&1 || true
	stop_serve KILL || true
	stop_proxy
	stop_nbdkit
	return 0
}

# A disk on primary p.raw (a pattern) with mirror m.raw, failed over: m.raw
# is its primary, p.raw the fenced former primary.
failed_over_disk() {
	make_base p.raw 64M
	truncate -s 64M m.raw
	run_cdisk 0 cdisk-create --primary "file://$PWD/p.raw" --mirror "file://$PWD/m.raw" d.cdisk
	run_cdisk 0 cdisk-mirror resync d.cdisk
	run_cdisk 0 cdisk-mirror failover d.cdisk
}

# slow_target BYTES_PER_SECOND: a.raw behind nbdkit and the tests' proxy
# held to that rate; sets target.
slow_target() {
	start_nbdkit_tcp file a.raw
	start_proxy "127.0.0.1:$NBDKIT_PORT"
	proxy_ctl rate "$1"
	target="nbd://127.0.0.1:$PROXY_PORT"
}

@test "restore --to --switch of an idle failed-over disk: the new target is the primary, the primary the mirror again, and --on-complete runs" {
	failed_over_disk
	truncate -s 64M a.raw
	run_cdisk 0 cdisk-restore --switch --on-complete 'env | grep ^CDISK_ >hook.env' \
		--to "file://$PWD/a.raw" d.cdisk
	assert_output "'d.cdisk': restored: '$PWD/a.raw' is the primary now, and '$PWD/m.raw' the mirror (in sync)"
	assert_equal "${#stderr_lines[@]}" 1
	assert_equal "${stderr_lines[0]}" "cdisk-restore: warning: 'd.cdisk': the fenced former primary '$PWD/p.raw' is no longer part of the disk; it is left as it is for you to remove"
	assert_file_line hook.env "CDISK_DISK=d.cdisk"
	assert_file_line hook.env "CDISK_TARGET=$PWD/a.raw"
	assert_file_line hook.env "CDISK_SWITCHED=1"
	cmp p.raw a.raw
	cmp m.raw a.raw
	# Run again (a script's second run): done already.
	run_cdisk 0 cdisk-restore --switch --to "file://$PWD/a.raw" d.cdisk
	assert_output "'d.cdisk': nothing to do: 'file://$PWD/a.raw' is already the primary of 'd.cdisk'"
	run_cdisk 0 cdisk-mirror status --json d.cdisk
	assert_equal "$(json_get .state)" in-sync
	assert_equal "$(json_get .primary)" "$PWD/a.raw"
	assert_equal "$(json_get .mirror)" "$PWD/m.raw"
	assert_equal "$(json_get .restore)" null
	# Writes now reach both, and reads come from the new primary.
	run_cdisk 0 cdisk-io d.cdisk w:1M:64K:7 f
	patfile a.raw r 1M 64K 7
	run_cdisk 0 cdisk-mirror resync d.cdisk
	patfile m.raw r 1M 64K 7
	rm p.raw
	run_cdisk 0 cdisk-io d.cdisk r:0:1M:1 r:1M:64K:7
}

@test "restore --to a new RBD image: cdisk makes it, copies into it and makes it the primary" {
	use_server ceph
	export CEPH_CONF
	IMAGE=restore$(printf '%s' "$BATS_TEST_TMPDIR" | md5sum | cut -c1-10)
	failed_over_disk
	run_cdisk 0 cdisk-restore -v --switch --to "rbd:rbd/$IMAGE" d.cdisk
	assert_output "'d.cdisk': restored: 'rbd:rbd/$IMAGE' is the primary now, and '$PWD/m.raw' the mirror (in sync)"
	[[ "$stderr" == *"created RBD image 'rbd:rbd/$IMAGE' for the restore"* ]] ||
		fail "the image was not said to be made"
	run_cdisk 0 target-io "rbd:rbd/$IMAGE" get:"$BATS_TEST_TMPDIR/image.raw"
	cmp image.raw m.raw
	cmp image.raw p.raw
	run_cdisk 0 cdisk-io d.cdisk r:0:64M:1
}

@test "restore --to without --switch: the new target becomes the disk's mirror; a disk with no mirror keeps its primary" {
	make_base p.raw 64M
	truncate -s 64M a.raw
	run_cdisk 0 cdisk-create --primary "file://$PWD/p.raw" d.cdisk
	run_cdisk 0 cdisk-restore --to "file://$PWD/a.raw" d.cdisk
	assert_output "'d.cdisk': restored: '$PWD/a.raw' holds the whole disk and is its mirror, in sync"
	cmp p.raw a.raw
	run_cdisk 0 cdisk-mirror status --json d.cdisk
	assert_equal "$(json_get .primary)" "$PWD/p.raw"
	assert_equal "$(json_get .mirror)" "$PWD/a.raw"
	# The same disk moved to another primary with --switch: the old
	# primary is left and the disk has no mirror.
	run_cdisk 0 cdisk-mirror detach d.cdisk
	truncate -s 64M b.raw
	run_cdisk 0 cdisk-restore -v --switch --to "file://$PWD/b.raw" d.cdisk
	assert_output "'d.cdisk': restored: '$PWD/b.raw' is the primary now; the disk has no mirror"
	[[ "$stderr" == *"the old primary '$PWD/p.raw' is no longer used: remove it when you no longer need it"* ]] ||
		fail "the old primary is not named" 
	run_cdisk 9 cdisk-mirror status --json d.cdisk
	assert_equal "$(json_get .state)" none
	assert_equal "$(json_get .primary)" "$PWD/b.raw"
	cmp p.raw b.raw
}

@test "restore --to: bad input and refusals, each with one line and its exit code" {
	make_base p.raw 64M
	truncate -s 64M m.raw a.raw
	truncate -s 32M small.raw
	run_cdisk 0 cdisk-create --primary "file://$PWD/p.raw" --mirror "file://$PWD/m.raw" d.cdisk
	run_cdisk 2 cdisk-restore d.cdisk
	assert_usage_error cdisk-restore "nothing to do: give --metadata, --confirm or --to URI"
	run_cdisk 2 cdisk-restore --switch d.cdisk
	assert_usage_error cdisk-restore "go with --to"
	run_cdisk 2 cdisk-restore --to "file://$PWD/a.raw" --metadata d.cdisk
	assert_usage_error cdisk-restore "separate steps"
	run_cdisk 2 cdisk-restore --to "file://$PWD/a.raw" --background --max-time 5 d.cdisk
	assert_usage_error cdisk-restore "do not go with --background"
	# A mirror in use: the restore would take its place.
	run_cdisk 10 cdisk-restore --to "file://$PWD/a.raw" d.cdisk
	assert_error cdisk-restore "mirror '$(re_quote "$PWD/m.raw")' is in use, and the restore takes the mirror's place; fail over to it first"
	# ... also while it is degraded (its file gone).
	rm m.raw
	run_cdisk 10 cdisk-restore --to "file://$PWD/a.raw" d.cdisk
	assert_error cdisk-restore "is in use, and the restore takes the mirror's place"
	run_cdisk 0 cdisk-mirror detach d.cdisk
	# Too small, unreachable, the current source itself.
	run_cdisk 2 cdisk-restore --to "file://$PWD/small.raw" d.cdisk
	assert_error cdisk-restore "holds 32 MiB, less than the disk's 64 MiB$"
	run_cdisk 3 cdisk-restore --to "nbd+unix:///?socket=$PWD/none.sock" d.cdisk
	assert_error cdisk-restore "none.sock"
	run_cdisk 2 cdisk-restore --to "file://$PWD/p.raw" d.cdisk
	assert_error cdisk-restore "is this disk's own primary"
	ln p.raw same.raw
	run_cdisk 2 cdisk-restore --to "file://$PWD/same.raw" d.cdisk
	assert_error cdisk-restore "is this disk's own primary"
	run_cdisk 9 cdisk-mirror status --json d.cdisk
	assert_equal "$(json_get .state)" none
	# Two restores at once: the second is refused; the first, asked
	# again, goes on.
	run_cdisk 0 cdisk-restore --background --to "file://$PWD/a.raw" d.cdisk
	assert_output --partial "restore to '$PWD/a.raw' started"
	truncate -s 64M b.raw
	run_cdisk 10 cdisk-restore --to "file://$PWD/b.raw" d.cdisk
	assert_error cdisk-restore "a restore to '$(re_quote "$PWD/a.raw")' is under way"
	run_cdisk 0 cdisk-restore --to "file://$PWD/a.raw" d.cdisk
	cmp p.raw a.raw
	# An overlay disk has its data in its file.
	make_base base.raw 64M
	run_cdisk 0 cdisk-create --base "file://$PWD/base.raw" o.cdisk
	run_cdisk 2 cdisk-restore --to "file://$PWD/b.raw" o.cdisk
	assert_error cdisk-restore "its data is in the file, not on a primary"
}

@test "served disk: the control socket's group may restore, but only root and the server's user may have it run a command" {
	make_base p.raw 64M
	truncate -s 64M a.raw
	run_cdisk 0 cdisk-create --primary "file://$PWD/p.raw" d.cdisk
	ctldir=$(mktemp -d /tmp/cdisk-ctl.XXXXXX)
	chmod 0755 "$ctldir"
	start_serve --group nogroup --control "$ctldir/c.sock" --export d=d.cdisk
	chmod 0666 "$ctldir/c.sock"
	gid=$(getent group nogroup | cut -d: -f3)
	as() { # UID GID REQUEST
		printf '%s\n' "$3" | setpriv --reuid="$1" --regid="$2" --clear-groups \
			socat -t 30 - "UNIX-CONNECT:$ctldir/c.sock"
	}
	local req="\"command\":\"mirror-restore\",\"disk\":\"$BATS_TEST_TMPDIR/d.cdisk\",\"uri\":\"$PWD/a.raw\""
	run as 65534 "$gid" "{$req,\"on_complete\":\"touch $PWD/ran\"}"
	assert_equal "$(json_get .ok)" false
	assert_equal "$(json_get .exit_code)" 5
	assert_equal "$(json_get .error)" "\"on_complete\" runs a command as the server's user: only for root and that user"
	run as 65534 100 "{$req}"
	assert_equal "$(json_get .ok)" false
	assert_equal "$(json_get .exit_code)" 5
	run as 65534 "$gid" "{$req}"
	assert_equal "$(json_get .ok)" true
	assert_equal "$(json_get .mirror.restore.switch)" false
	stop_serve
	rm -rf "$ctldir"
	assert_not_exists ran
}

@test "restore --to --switch of a served disk while fio writes: new primary and mirror equal, fio sees no error, writes after the switch reach both" {
	failed_over_disk
	truncate -s 64M a.raw
	# The new target behind a proxy held to 16 MB/s: the copy takes
	# seconds, and fio writes all through it.
	slow_target 16000000
	start_serve --export d=d.cdisk
	fio_writes
	sleep 1
	run_cdisk 0 cdisk-restore --switch --to "$target" d.cdisk
	assert_output "'d.cdisk': restored: '$target' is the primary now, and '$PWD/m.raw' the mirror (in sync)"
	fio_check
	grep -q "RESTORE COMPLETE: '$target' is the primary now" \
		"$BATS_TEST_TMPDIR/serve.log" || fail "no log line: $(cat "$BATS_TEST_TMPDIR/serve.log")"
	run_cdisk 0 qemu-io -f raw -c 'write -P 0x5a 3M 256k' -c flush "$NBD"
	stop_serve
	cmp a.raw m.raw
	run_cdisk 0 qemu-io -f raw -r -c 'read -P 0x5a 3M 256k' a.raw
}

@test "kill -9 of cdisk-serve during a restore, many rounds: nothing lost, each round resends only what was left" {
	make_base p.raw 256M
	truncate -s 256M a.raw
	run_cdisk 0 cdisk-create --primary "file://$PWD/p.raw" d.cdisk
	# 11 s of copy at this pace; each round copies and records a part.
	slow_target 24000000
	left=$((256 << 20))
	for round in 1 2 3 4; do
		start_serve --export d=d.cdisk
		# A write in each round, acknowledged before the kill.
		run_cdisk 0 qemu-io -f raw -c "write -P $((0x40 + round)) $((round * 8))M 64k" \
			-c flush "$NBD"
		[ "$round" != 1 ] || run_cdisk 0 cdisk-restore --switch --background --to "$target" d.cdisk
		sleep 2.5
		stop_serve KILL || true
		run_cdisk '?' cdisk-mirror status --json d.cdisk
		now=$(json_get .out_of_sync_bytes)
		assert_equal "$(json_get .restore.switch)" true
		assert_num "$now" -lt "$left"
		left=$now
	done
	start_serve --export d=d.cdisk
	run_cdisk 0 cdisk-restore --switch --to "$target" d.cdisk
	assert_output --partial "'$target' is the primary now; the disk has no mirror"
	for round in 1 2 3 4; do
		run_cdisk 0 qemu-io -f raw -c "read -P $((0x40 + round)) $((round * 8))M 64k" "$NBD"
	done
	stop_serve
	cmp p.raw a.raw
}

@test "kill -9 of cdisk-restore copying an idle disk: run again, it goes on where it stopped" {
	make_base p.raw 256M
	truncate -s 256M a.raw
	run_cdisk 0 cdisk-create --primary "file://$PWD/p.raw" d.cdisk
	slow_target 24000000
	cdisk-restore --switch --to "$target" d.cdisk 3>&- &
	restore=$!
	sleep 4
	kill -9 "$restore"
	wait "$restore" || true
	run_cdisk 9 cdisk-mirror status --json d.cdisk
	assert_equal "$(json_get .restore.switch)" true
	left=$(json_get .out_of_sync_bytes)
	assert_num "$left" -lt $((256 << 20))
	# The proxy passes on what the killed program had sent into it yet.
	before=-1
	while [ "$before" != "$(proxy_bytes)" ]; do
		before=$(proxy_bytes)
		sleep 1
	done
	run_cdisk 0 cdisk-restore --switch --to "$target" d.cdisk
	assert_output "'d.cdisk': restored: '$target' is the primary now; the disk has no mirror"
	# What was recorded as copied is not sent again (the proxy counts
	# both ways; the rest went once, plus the checks and a flush).
	assert_num "$(($(proxy_bytes) - before))" -lt $((left + (8 << 20)))
	cmp p.raw a.raw
}

@test "the restore target lost mid-restore: the waiting program says so (exit 3); the server resends what it missed when it is back" {
	make_base p.raw 64M
	truncate -s 64M a.raw
	quick_timeouts 5 0
	run_cdisk 0 cdisk-create --primary "file://$PWD/p.raw" d.cdisk
	# Slow enough (16 s) that the cut lands mid-copy on a loaded machine.
	slow_target 4000000
	start_serve --export d=d.cdisk
	run_cdisk 0 cdisk-restore --background --to "$target" d.cdisk
	sleep 1
	run_cdisk 9 cdisk-mirror status --json d.cdisk
	assert_equal "$(json_get .state)" copying
	# The target's server goes away: connections cut, new ones refused.
	proxy_ctl refuse on
	proxy_ctl cut
	run_cdisk 3 cdisk-restore --to "$target" d.cdisk
	assert_error cdisk-restore "restore target '$(re_quote "$target")' is not answering: .* left, sent by the server when it answers again"
	run_cdisk 0 qemu-io -f raw -c 'write -P 0x33 20M 1M' -c flush "$NBD"
	# Still at 4 MB/s: the server's copy of what is left must not end
	# before the program below looks (it would say "nothing to do").
	proxy_ctl refuse off
	run_cdisk 0 cdisk-restore --to "$target" d.cdisk
	assert_output "'d.cdisk': restored: '$target' holds the whole disk and is its mirror, in sync"
	stop_serve
	cmp p.raw a.raw
}

#!/usr/bin/env bats
# cdisk-sync --dry-run on a served disk: the server counts, as it syncs,
# instead of the dry run saying "busy".

bats_require_minimum_version 1.8.0

setup() {
	load helpers
	_cdisk_setup
}

teardown() {
	[ -z "${SERVE_PID:-}" ] || stop_serve
}

@test "sync -n on a served disk: the server says what would be sent; nothing moves" {
	make_base base.raw 16M
	run_cdisk cdisk-create --base "$PWD/base.raw" d.cdisk
	start_serve --export d=d.cdisk
	run_cdisk qemu-io -f raw -c "write -P 0x55 2M 1M" -c "write -P 0x66 8M 64K" "$NBD"
	local before
	before=$(sha base.raw)

	run_cdisk cdisk-sync -n d.cdisk
	assert_output "'d.cdisk': would send 1.1 MiB"
	assert_equal "$stderr" ""
	run_cdisk cdisk-sync --dry-run --json d.cdisk
	assert_equal "$(json_get .dry_run)" true
	assert_equal "$(json_get .mode)" push
	assert_equal "$(json_get .dirty_bytes)" $((1048576 + 65536))
	assert_equal "$(json_get .bytes)" 0
	run_cdisk cdisk-sync -n --pull --json d.cdisk
	assert_equal "$(json_get .mode)" pull
	assert_equal "$(json_get .dirty_bytes)" $((16777216 - 1048576 - 65536))

	# nothing was sent, fetched or recorded clean
	assert_equal "$(sha base.raw)" "$before"
	run_cdisk cdisk-info --json d.cdisk
	assert_equal "$(json_get '.blocks_dirty * .block_size')" $((1048576 + 65536))
	assert_equal "$(json_get '.blocks_present * .block_size')" $((1048576 + 65536))
	# and the real sync still has it all to send
	run_cdisk cdisk-sync --json d.cdisk
	assert_equal "$(json_get .bytes)" $((1048576 + 65536))
}

@test "sync -n on a served disk: the server's refusal, with its exit code" {
	run_cdisk cdisk-create --size 4M d.cdisk
	start_serve --export d=d.cdisk
	run_cdisk 2 cdisk-sync -n d.cdisk
	assert_error cdisk-sync "'d.cdisk' is in use by pid $SERVE_PID, which says: .*has no base to sync to"
}

@test "control socket: sync-dry-run answers at once with the counts" {
	make_base base.raw 4M
	run_cdisk cdisk-create --base "$PWD/base.raw" d.cdisk
	run_cdisk cdisk-io d.cdisk w:1M:128K:3 f
	start_serve --export d=d.cdisk
	local ctl=$SERVE_RUN/cdisk-serve.$SERVE_PID.ctl
	run_cdisk socat - "UNIX-CONNECT:$ctl" \
		<<<"{\"command\":\"sync-dry-run\",\"disk\":\"$PWD/d.cdisk\",\"options\":{\"mode\":\"push\"}}"
	assert_equal "$(json_get .ok)" true
	assert_equal "$(json_get .result.dirty_bytes)" 131072
	run_cdisk socat - "UNIX-CONNECT:$ctl" \
		<<<"{\"command\":\"sync-dry-run\",\"disk\":\"$PWD/d.cdisk\",\"options\":{\"mode\":\"sideways\"}}"
	assert_equal "$(json_get .exit_code)" 2
	# a dry run started no job: sync-status has nothing to report
	run_cdisk socat - "UNIX-CONNECT:$ctl" <<<"{\"command\":\"sync-status\",\"disk\":\"$PWD/d.cdisk\"}"
	assert_equal "$(json_get .started)" false
}

#!/usr/bin/env bats
# iSCSI targets (libiscsi) against tgtd: data, CHAP, faults.

bats_require_minimum_version 1.8.0

setup() {
	load helpers
	load targets
	_cdisk_setup
	use_server tgt
}

teardown() {
	[ -z "${TGT_TID:-}" ] || tgt_delete_lun "$TGT_TID"
	[ -z "${OTHER_TID:-}" ] || tgt_delete_lun "$OTHER_TID"
	stop_silent_server
}

@test "iscsi: size, sector size and what the LUN can do" {
	tgt_new_lun 64M
	check_info "$TGT_URI" 67108864
	assert_equal "$(json_get .align)" 512
	assert_equal "$(json_get .trim)" true
	assert_equal "$(json_get .flush)" true
}

@test "iscsi: identity is the LUN's own (VPD page 0x83), not the portal's spelling" {
	tgt_new_lun 8M
	run_cdisk target-io "$TGT_URI" identity
	local id=$output
	[[ $id =~ ^iscsi:(naa|eui|uuid|t10):[[:graph:]]+$ ]] || fail "odd identity '$id'"
	run_cdisk target-io "iscsi://localhost:$TGT_PORT/$TGT_IQN/1" identity
	assert_equal "$output" "$id"
	# Another LUN of the same target, and LUN 1 of another target.
	truncate -s 8M "$BATS_TEST_TMPDIR/lun2.img"
	tgtadm -C "$TGT_CONTROL" --lld iscsi --op new --mode logicalunit --tid "$TGT_TID" \
		--lun 2 -b "$BATS_TEST_TMPDIR/lun2.img"
	run_cdisk target-io "iscsi://127.0.0.1:$TGT_PORT/$TGT_IQN/2" identity
	[ "$output" != "$id" ] || fail "LUN 2 has LUN 1's identity"
	OTHER_TID=$TGT_TID
	tgt_new_lun 8M
	run_cdisk target-io "$TGT_URI" identity
	[ "$output" != "$id" ] || fail "another target's LUN 1 has the same identity"
}

@test "iscsi: patterns at odd offsets and sizes (read-modify-write of sectors)" {
	tgt_new_lun 64M
	check_patterns "$TGT_URI"
}

@test "iscsi: many requests at once over several sessions" {
	tgt_new_lun 64M
	check_many_at_once "$TGT_URI"
}

@test "iscsi: WRITE SAME zeroes, UNMAP and SYNCHRONIZE CACHE" {
	tgt_new_lun 64M
	check_zero_discard_flush "$TGT_URI"
}

@test "iscsi: requests past the end are refused" {
	tgt_new_lun 64M
	check_past_end "$TGT_URI" 67108864
}

@test "iscsi: a 1 GiB copy in and out is identical" {
	tgt_new_lun 1G
	check_copy_1g "$TGT_URI"
}

@test "iscsi: CHAP with the secret from the environment or a file" {
	tgt_new_lun 8M
	local adm=(tgtadm -C "$TGT_CONTROL" --lld iscsi)
	"${adm[@]}" --op new --mode account --user "chap$TGT_TID" --password s3cret-pass
	"${adm[@]}" --op bind --mode account --tid "$TGT_TID" --user "chap$TGT_TID"
	local uri=iscsi://chap$TGT_TID@127.0.0.1:$TGT_PORT/$TGT_IQN/1
	CDISK_ISCSI_PASSWORD=s3cret-pass run_cdisk target-io -w "$uri" w:0:4096:1 r:0:4096:1
	printf 's3cret-pass\n' >"$BATS_TEST_TMPDIR/secret"
	printf '[iscsi]\nchap_secret_file = %s\n' "$BATS_TEST_TMPDIR/secret" >>"$CDISK_CONFIG"
	run_cdisk target-io "$uri" r:0:4096:1
	# the wrong secret, and none at all
	CDISK_ISCSI_PASSWORD=wrong-pass run_cdisk 5 target-io "$uri" info
	assert_error target-io "cannot log in to 'iscsi://chap.*': .*uthentication"
	# a target that wants CHAP, reached without it
	run_cdisk 5 target-io "$TGT_URI" info
	assert_error target-io "cannot log in to"
}

@test "iscsi: a user without a secret is refused before connecting" {
	run_cdisk 5 target-io "iscsi://someone@127.0.0.1:$TGT_PORT/iqn.2026-11.x:y/1" info
	assert_error target-io "no CHAP secret"
}

@test "iscsi: the initiator name is configurable" {
	tgt_new_lun 8M
	local adm=(tgtadm -C "$TGT_CONTROL" --lld iscsi)
	"${adm[@]}" --op unbind --mode target --tid "$TGT_TID" -I ALL
	"${adm[@]}" --op bind --mode target --tid "$TGT_TID" -Q iqn.2026-11.org.example:allowed
	# tgtd hides a target from initiators it does not allow.
	run_cdisk 6 target-io "$TGT_URI" info
	assert_error target-io "cannot log in to '$(re_quote "$TGT_URI")': .*Target not found"
	printf '[iscsi]\ninitiator = iqn.2026-11.org.example:allowed\n' >>"$CDISK_CONFIG"
	run_cdisk target-io "$TGT_URI" info
	CDISK_ISCSI_INITIATOR=iqn.2026-11.org.example:allowed run_cdisk target-io "$TGT_URI" info
}

@test "iscsi: a missing target and a missing LUN" {
	tgt_new_lun 8M
	run_cdisk 6 target-io "iscsi://127.0.0.1:$TGT_PORT/iqn.2026-11.org.cdisk.test:nosuch/1" info
	assert_error target-io "Target not found"
	run_cdisk 6 target-io "iscsi://127.0.0.1:$TGT_PORT/$TGT_IQN/7" info
	assert_error target-io "LOGICAL_UNIT_NOT_SUPPORTED"
}

@test "iscsi: a read-only LUN refuses writes before sending them" {
	tgt_new_lun 8M readonly=1
	run_cdisk target-io "$TGT_URI" info
	assert_equal "$(json_get .readonly)" true
	run_cdisk 5 target-io -w "$TGT_URI" w:0:512:1
	assert_error target-io "it is read-only"
}

@test "iscsi: connection refused, and a host that does not answer" {
	quick_timeouts 2 1
	run_cdisk 3 target-io "iscsi://127.0.0.1:1/iqn.2026-11.x:y/1" info
	assert_error target-io "cannot reach .*Connection refused"
	start_silent_server
	SECONDS=0
	run_cdisk 3 target-io "iscsi://127.0.0.1:$SILENT_PORT/iqn.2026-11.x:y/1" info
	assert_error target-io "no answer within 2 s"
	[ "$SECONDS" -lt 15 ] || fail "took $SECONDS s"
}

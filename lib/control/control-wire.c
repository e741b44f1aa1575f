/* What both ends of the control socket (cdisk-protocol(7)) agree on:
 * where the socket is, how a line is read, and disk information and sync
 * results as JSON, both ways, so that a field is named in one place. */
#include <jansson.h>
#include <poll.h>
#include <stdio.h>
#include <sys/socket.h>

#include "cdisk.h"
#include "control.h"
#include "ctx.h"

/* ---- the runtime directory and socket names ---- */

int cd_control_path_for_pid(const struct cd_config *cfg, unsigned pid, char *out,
			    size_t len)
{
	int n = snprintf(out, len, "%s/cdisk-serve.%u.ctl", cfg->runtime_dir, pid);
	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

int cdisk_control_socket_path(struct cdisk_ctx *ctx, unsigned pid, char *out,
			      size_t len)
{
	if (cd_control_path_for_pid(&ctx->cfg, pid, out, len) < 0)
		return cd_error(ctx, -ENAMETOOLONG, "runtime directory '%s' is too long",
				ctx->cfg.runtime_dir);
	return 0;
}

/* ---- info as JSON, both ways ---- */

json_t *cd_control_info_to_json(const struct cdisk_info *i)
{
	json_t *j = json_pack("{s:s, s:i, s:I, s:i, s:I, s:I, s:I, s:s, s:s, s:s, s:b, s:b, "
			 "s:I, s:b, s:I, s:I, s:I, s:b, s:I, s:s}",
			 "uuid", i->uuid, "format_version", (int)i->format_version,
			 "size", (json_int_t)i->size, "block_size", (int)i->block_size,
			 "blocks", (json_int_t)i->blocks,
			 "blocks_present", (json_int_t)i->blocks_present,
			 "blocks_dirty", (json_int_t)i->blocks_dirty, "base", i->base,
			 "mirror", i->mirror, "meta_backup", i->meta_backup,
			 "a_valid", i->sb_valid[0] != 0, "b_valid", i->sb_valid[1] != 0,
			 "sequence", (json_int_t)i->sb_seq,
			 "closed_cleanly", i->closed_cleanly,
			 "journal_records_replayed", (json_int_t)i->journal_records,
			 "recovered_blocks", (json_int_t)i->recovered_blocks,
			 "host_bytes", (json_int_t)i->file_bytes,
			 "base_reachable", i->base_reachable,
			 "base_size", (json_int_t)i->base_size,
			 "base_error", i->base_error_msg);

	if (j && json_object_update_new(j, json_pack("{s:I, s:b, s:b, s:b, s:s, s:b, s:I}",
			"base_opening_ms", (json_int_t)i->base_opening_ms,
			"unconfirmed", i->unconfirmed, "mirror_active", i->mirror_active,
			"failed_over", i->failed_over,
			"backup_path", i->backup_path, "backup_exists", i->backup_exists,
			"backup_age", (json_int_t)i->backup_age)) < 0) {
		json_decref(j);
		j = NULL;
	}
	return j;
}

static void copy_string(json_t *o, const char *key, char *out, size_t len)
{
	const char *v = json_string_value(json_object_get(o, key));
	snprintf(out, len, "%s", v ? v : "");
}

static uint64_t get_u64(json_t *o, const char *key)
{
	json_int_t v = json_integer_value(json_object_get(o, key));
	return v > 0 ? (uint64_t)v : 0;
}

void cd_control_info_from_json(json_t *o, struct cdisk_info *i)
{
	memset(i, 0, sizeof(*i));
	copy_string(o, "uuid", i->uuid, sizeof(i->uuid));
	copy_string(o, "base", i->base, sizeof(i->base));
	copy_string(o, "mirror", i->mirror, sizeof(i->mirror));
	copy_string(o, "meta_backup", i->meta_backup, sizeof(i->meta_backup));
	copy_string(o, "base_error", i->base_error_msg, sizeof(i->base_error_msg));
	i->base_error = i->base_error_msg[0] ? -EIO : 0;
	i->format_version = (uint32_t)get_u64(o, "format_version");
	i->size = get_u64(o, "size");
	i->block_size = (uint32_t)get_u64(o, "block_size");
	i->blocks = get_u64(o, "blocks");
	i->blocks_present = get_u64(o, "blocks_present");
	i->blocks_dirty = get_u64(o, "blocks_dirty");
	i->sb_valid[0] = json_is_true(json_object_get(o, "a_valid"));
	i->sb_valid[1] = json_is_true(json_object_get(o, "b_valid"));
	i->sb_seq = get_u64(o, "sequence");
	i->closed_cleanly = json_is_true(json_object_get(o, "closed_cleanly"));
	i->journal_records = get_u64(o, "journal_records_replayed");
	i->recovered_blocks = get_u64(o, "recovered_blocks");
	i->file_bytes = get_u64(o, "host_bytes");
	i->base_reachable = json_is_true(json_object_get(o, "base_reachable"));
	i->base_size = get_u64(o, "base_size");
	i->base_opening_ms = get_u64(o, "base_opening_ms");
	i->unconfirmed = json_is_true(json_object_get(o, "unconfirmed"));
	i->mirror_active = json_is_true(json_object_get(o, "mirror_active"));
	i->failed_over = json_is_true(json_object_get(o, "failed_over"));
	copy_string(o, "backup_path", i->backup_path, sizeof(i->backup_path));
	i->backup_exists = json_is_true(json_object_get(o, "backup_exists"));
	i->backup_age = get_u64(o, "backup_age");
}

/* ---- sync results as JSON, both ways ---- */

json_t *cd_control_stats_to_json(const struct cdisk_sync_stats *st)
{
	return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:b, s:b, "
			 "s:I, s:I, s:f, s:f, s:I}",
			 "pulled_bytes", (json_int_t)st->pulled_bytes,
			 "released_bytes", (json_int_t)st->released_bytes,
			 "dirty_bytes", (json_int_t)st->dirty_bytes,
			 "blocks", (json_int_t)st->blocks, "bytes", (json_int_t)st->bytes,
			 "requests", (json_int_t)st->requests,
			 "zero_requests", (json_int_t)st->zero_requests,
			 "flushes", (json_int_t)st->flushes,
			 "verified_bytes", (json_int_t)st->verified_bytes,
			 "left_bytes", (json_int_t)st->left_bytes, "seconds", st->seconds,
			 "below_min_dirty", st->below_min, "stopped", st->stopped,
			 "rate_limit", (json_int_t)st->rate_limit,
			 "slowdowns", (json_int_t)st->slowdowns, "delay_ms", st->delay_ms,
			 "base_delay_ms", st->base_delay_ms, "retries", (json_int_t)st->retries);
}

void cd_control_stats_from_json(json_t *j, struct cdisk_sync_stats *st)
{
	json_int_t v[13] = { 0 };
	double secs = 0;
	int below = 0, stopped = 0;

	json_unpack(j, "{s?I, s?I, s?I, s?I, s?I, s?I, s?I, s?I, s?I, s?I, s?F, s?b, s?b, "
		    "s?I, s?I, s?F, s?F, s?I}",
		    "pulled_bytes", &v[8], "released_bytes", &v[9],
		    "dirty_bytes", &v[0], "blocks", &v[1], "bytes", &v[2],
		    "requests", &v[3], "zero_requests", &v[4], "flushes", &v[5],
		    "verified_bytes", &v[6], "left_bytes", &v[7], "seconds", &secs,
		    "below_min_dirty", &below, "stopped", &stopped,
		    "rate_limit", &v[10], "slowdowns", &v[11], "delay_ms", &st->delay_ms,
		    "base_delay_ms", &st->base_delay_ms, "retries", &v[12]);
	st->retries = (uint64_t)v[12];
	st->rate_limit = (uint64_t)v[10];
	st->slowdowns = (unsigned)v[11];
	st->dirty_bytes = (uint64_t)v[0];
	st->blocks = (uint64_t)v[1];
	st->bytes = (uint64_t)v[2];
	st->requests = (uint64_t)v[3];
	st->zero_requests = (uint64_t)v[4];
	st->flushes = (uint64_t)v[5];
	st->verified_bytes = (uint64_t)v[6];
	st->left_bytes = (uint64_t)v[7];
	st->pulled_bytes = (uint64_t)v[8];
	st->released_bytes = (uint64_t)v[9];
	st->seconds = secs;
	st->below_min = below;
	st->stopped = stopped;
}

/* ---- mirror status as JSON, both ways ---- */

static const char *const mirror_states[] = {
	[CDISK_MIRROR_NONE] = "none", [CDISK_MIRROR_COPYING] = "copying",
	[CDISK_MIRROR_IN_SYNC] = "in-sync", [CDISK_MIRROR_DEGRADED] = "degraded",
	[CDISK_MIRROR_PAUSED] = "paused", [CDISK_MIRROR_FENCED] = "failed-over",
};

const char *cd_control_mirror_state_name(enum cdisk_mirror_state s)
{
	return (unsigned)s < CD_ARRAY_SIZE(mirror_states) ? mirror_states[s] : "none";
}

json_t *cd_control_mirror_to_json(const struct cdisk_mirror_status *m)
{
	json_t *j = json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:s, s:I, s:I, s:b, "
			 "s:s, s:b}",
			 "uri", m->uri, "state", cd_control_mirror_state_name(m->state),
			 "size", (json_int_t)m->size,
			 "out_of_sync_bytes", (json_int_t)m->out_of_sync_bytes,
			 "since", (json_int_t)m->since,
			 "recovered_bytes", (json_int_t)m->recovered_bytes,
			 "copied_bytes", (json_int_t)m->copied_bytes,
			 "copy_rate", (json_int_t)m->copy_rate,
			 "last_error", m->last_error,
			 "last_error_time", (json_int_t)m->last_error_time,
			 "timeout_ms", (json_int_t)m->timeout_ms,
			 "fail_on_error", m->fail_on_error,
			 "primary", m->primary, "on_primary", m->on_primary);

	json_object_set_new(j, "restore", !m->restoring ? json_null() :
			    json_pack("{s:b, s:I}", "switch", m->restore_switch, "started",
				      (json_int_t)m->restore_started));
	return j;
}

/* A state this side does not know (a newer server's) reads as degraded:
 * not in sync, and not "no mirror" either. */
void cd_control_mirror_from_json(json_t *o, struct cdisk_mirror_status *m)
{
	const char *state = json_string_value(json_object_get(o, "state"));

	memset(m, 0, sizeof(*m));
	copy_string(o, "uri", m->uri, sizeof(m->uri));
	copy_string(o, "last_error", m->last_error, sizeof(m->last_error));
	m->state = CDISK_MIRROR_DEGRADED;
	for (size_t i = 0; i < CD_ARRAY_SIZE(mirror_states); i++)
		if (state && !strcmp(state, mirror_states[i]))
			m->state = (enum cdisk_mirror_state)i;
	m->size = get_u64(o, "size");
	m->out_of_sync_bytes = get_u64(o, "out_of_sync_bytes");
	m->since = get_u64(o, "since");
	m->recovered_bytes = get_u64(o, "recovered_bytes");
	m->copied_bytes = get_u64(o, "copied_bytes");
	m->copy_rate = get_u64(o, "copy_rate");
	if (json_is_object(json_object_get(o, "restore"))) {
		json_t *x = json_object_get(o, "restore");

		m->restoring = true;
		m->restore_switch = json_is_true(json_object_get(x, "switch"));
		m->restore_started = get_u64(x, "started");
	}
	m->last_error_time = get_u64(o, "last_error_time");
	m->timeout_ms = (uint32_t)get_u64(o, "timeout_ms");
	m->fail_on_error = json_is_true(json_object_get(o, "fail_on_error"));
	copy_string(o, "primary", m->primary, sizeof(m->primary));
	m->on_primary = json_is_true(json_object_get(o, "on_primary"));
}

/* ---- lines ---- */

/* Read one line, with a deadline: a silent or endless client gets an
 * error, not our attention forever. */
int cd_control_read_line(int fd, char *buf, size_t max)
{
	return cd_control_read_line_within(fd, buf, max, CONTROL_TIMEOUT_MS);
}

int cd_control_read_line_within(int fd, char *buf, size_t max, int timeout_ms)
{
	size_t have = 0;

	while (have < max - 1) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ssize_t n;

		if (poll(&p, 1, timeout_ms) <= 0)
			return -ETIMEDOUT;
		n = recv(fd, buf + have, max - 1 - have, 0);
		if (n <= 0)
			return have ? (buf[have] = 0, 0) : -ECONNRESET;
		/* Only the new bytes are looked at: a status of hundreds of
		 * exports comes in many pieces. */
		buf[have + (size_t)n] = 0;
		if (memchr(buf + have, '\n', (size_t)n))
			return 0;
		have += (size_t)n;
	}
	return -E2BIG;
}

/* The configuration file: host-wide defaults an administrator sets once.
 * Every key is described in cdisk(7). */
#include <ini.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "cdisk.h"
#include "ctx.h"
#include "text.h"
#include "util.h"

#define DEFAULT_CONFIG "/etc/cdisk/cdisk.conf"

/* Read an INI file with handler; bad is where the handler explains a line
 * it refused.  One message naming the file (after what: "configuration "
 * or "") and the line, for every failure. */
int cd_ini_load(struct cdisk_ctx *ctx, const char *what, const char *path,
		int (*handler)(void *, const char *, const char *, const char *),
		void *user, const char *bad)
{
	int line = ini_parse(path, handler, user);

	if (line == -1)
		return cd_error(ctx, errno == ENOENT ? -ENOENT : -EACCES,
				"cannot read %s'%s': %s", what, path, strerror(errno));
	if (line == -2)
		return cd_error(ctx, -ENOMEM, "cannot read %s'%s': out of memory",
				what, path);
	if (line > 0)
		return cd_error(ctx, -EINVAL, "%s'%s', line %d: %s", what, path, line,
				bad[0] ? bad : "syntax error");
	return 0;
}

void cd_config_defaults(struct cd_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	snprintf(cfg->backup_dir, sizeof(cfg->backup_dir), "%s", CD_DEFAULT_BACKUP_DIR);
	snprintf(cfg->runtime_dir, sizeof(cfg->runtime_dir), "%s", CD_DEFAULT_RUNTIME_DIR);
	cfg->backup_interval = 300;
	cfg->auto_repair = true;
	cfg->timeout = 30;
	cfg->retries = 3;
	cfg->connections = 16;
	cfg->s3_chunk_size = 4u << 20;
	cfg->probe = (struct cd_probe_config){
		.pings = 20, .depth = 4, .interval_ms = 20, .timeout_s = 5,
		.max_seconds = 10, .read_bytes = 16u << 20,
		.limits = {
			.max_rtt_ms = 100, .max_jitter_ms = 30, .max_loss = 0.05,
			.max_busy = 0, .min_read_rate = -1, .max_load_delay_ms = 200,
			.max_osd_latency_ms = 500, .ceph_health = 1,
		},
	};
	cfg->sync_target_delay_ms = 25;
	snprintf(cfg->cache_dir, sizeof(cfg->cache_dir), "%s", CD_DEFAULT_CACHE_DIR);
	cfg->cache_max_size = CD_DEFAULT_CACHE_MAX;
	cfg->mirror_timeout_ms = CD_DEFAULT_MIRROR_TIMEOUT_MS;
	cfg->failover_timeout_ms = CD_DEFAULT_FAILOVER_TIMEOUT_MS;
	cfg->background_min_rate = CD_DEFAULT_BACKGROUND_MIN_RATE;
	cfg->serve_spin_us = CD_DEFAULT_SERVE_SPIN_US;
}

struct parse_state {
	struct cd_config cfg;
	char bad[160];
};

/* Keys that hold text: where each goes and whether it must be a path. */
static const struct text_key {
	const char *section, *name;
	size_t offset, size;
	bool path;
} text_keys[] = {
#define TEXT(sec, key, field, is_path) \
	{ sec, key, offsetof(struct cd_config, field), \
	  sizeof(((struct cd_config *)0)->field), is_path }
	TEXT("serve", "runtime_dir", runtime_dir, true),
	TEXT("serve", "tls_priority", tls_priority, false),
	TEXT("iscsi", "initiator", iscsi_initiator, false),
	TEXT("iscsi", "chap_secret_file", iscsi_secret_file, true),
	TEXT("rbd", "conf", rbd_conf, true),
	TEXT("rbd", "id", rbd_id, false),
	TEXT("rbd", "keyring", rbd_keyring, true),
	TEXT("s3", "endpoint", s3_endpoint, false),
	TEXT("s3", "region", s3_region, false),
	TEXT("s3", "credentials_file", s3_credentials, true),
	TEXT("s3", "profile", s3_profile, false),
	TEXT("http", "ca_file", ca_file, true),
	TEXT("cache", "dir", cache_dir, true),
#undef TEXT
};

/* Keys that hold whole numbers, with their bounds. */
static const struct number_key {
	const char *section, *name;
	size_t offset;
	long min, max;
	const char *unit;
} number_keys[] = {
	{ "metadata", "backup_interval", offsetof(struct cd_config, backup_interval),
	  1, 86400 * 7, "seconds" },
	{ "serve", "workers", offsetof(struct cd_config, serve_workers), 1, 256,
	  "a number of threads" },
	{ "serve", "spin", offsetof(struct cd_config, serve_spin_us), 0, 1000, "microseconds" },
	{ "target", "timeout", offsetof(struct cd_config, timeout), 1, 3600, "seconds" },
	{ "target", "retries", offsetof(struct cd_config, retries), 0, 20, "retries" },
	{ "target", "connections", offsetof(struct cd_config, connections), 1, 256,
	  "connections" },
	{ "s3", "chunk_size", offsetof(struct cd_config, s3_chunk_size), 65536,
	  1L << 30, "bytes" },
	{ "probe", "pings", offsetof(struct cd_config, probe.pings), 1, 10000, "a count" },
	{ "probe", "depth", offsetof(struct cd_config, probe.depth), 1, 64, "a count" },
	{ "probe", "interval", offsetof(struct cd_config, probe.interval_ms), 1, 60000,
	  "milliseconds" },
	{ "probe", "timeout", offsetof(struct cd_config, probe.timeout_s), 1, 3600, "seconds" },
	{ "probe", "max_time", offsetof(struct cd_config, probe.max_seconds), 1, 3600,
	  "seconds" },
	{ "sync", "target_delay", offsetof(struct cd_config, sync_target_delay_ms), 0, 10000,
	  "milliseconds" },
	{ "mirror", "timeout", offsetof(struct cd_config, mirror_timeout_ms), 100, 600000,
	  "milliseconds" },
	{ "mirror", "failover_timeout", offsetof(struct cd_config, failover_timeout_ms), 100,
	  600000, "milliseconds" },
};

/* Thresholds: a number in their unit, or "none" for no limit. */
static const struct limit_key {
	const char *name;
	size_t offset;
	double scale, max;          /* value * scale is stored */
	const char *unit;
} limit_keys[] = {
#define LIMIT(key, field, scale, max, unit) \
	{ key, offsetof(struct cdisk_probe_limits, field), scale, max, unit }
	LIMIT("max_rtt", max_rtt_ms, 1, 3600000, "milliseconds"),
	LIMIT("max_jitter", max_jitter_ms, 1, 3600000, "milliseconds"),
	LIMIT("max_loss", max_loss, 0.01, 100, "a percentage"),
	LIMIT("max_busy", max_busy, 0.01, 100, "a percentage"),
	LIMIT("max_load_delay", max_load_delay_ms, 1, 3600000, "milliseconds"),
	LIMIT("max_osd_latency", max_osd_latency_ms, 1, 3600000, "milliseconds"),
#undef LIMIT
};

static bool set_text(struct parse_state *st, const struct text_key *k,
		     const char *value)
{
	if (k->path && value[0] != '/') {
		snprintf(st->bad, sizeof(st->bad), "%s must be an absolute path", k->name);
		return false;
	}
	if (strlen(value) >= k->size) {
		snprintf(st->bad, sizeof(st->bad), "%s is too long", k->name);
		return false;
	}
	memcpy((char *)&st->cfg + k->offset, value, strlen(value) + 1);
	return true;
}

static bool set_number(struct parse_state *st, const struct number_key *k,
		       const char *value)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(value, &end, 10);
	if (errno || *end || end == value || v < k->min || v > k->max) {
		snprintf(st->bad, sizeof(st->bad), "%s must be %s from %ld to %ld",
			 k->name, k->unit, k->min, k->max);
		return false;
	}
	*(uint32_t *)((char *)&st->cfg + k->offset) = (uint32_t)v;
	return true;
}

static bool set_limit(struct parse_state *st, const struct limit_key *k,
		      const char *value)
{
	double *field = (double *)((char *)&st->cfg.probe.limits + k->offset);
	double v;

	if (cd_parse_limit(value, k->max, &v) < 0) {
		snprintf(st->bad, sizeof(st->bad), "%s must be %s from 0 to %.0f, or none",
			 k->name, k->unit, k->max);
		return false;
	}
	*field = v < 0 ? -1 : v * k->scale;
	return true;
}

/* The [probe] keys that are not whole numbers. */
static int on_probe_entry(struct parse_state *st, const char *name, const char *value)
{
	struct cdisk_probe_limits *l = &st->cfg.probe.limits;
	uint64_t bytes;

	for (size_t i = 0; i < CD_ARRAY_SIZE(limit_keys); i++)
		if (!strcmp(name, limit_keys[i].name))
			return set_limit(st, &limit_keys[i], value);
	if (!strcmp(name, "min_read_rate")) {
		if (!strcmp(value, "none")) {
			l->min_read_rate = -1;
			return 1;
		}
		if (cd_parse_size(value, &bytes) < 0) {
			snprintf(st->bad, sizeof(st->bad), "min_read_rate must be bytes per "
				 "second (K, M, G suffixes), or none");
			return 0;
		}
		l->min_read_rate = (double)bytes;
		return 1;
	}
	if (!strcmp(name, "read_size")) {
		if (cd_parse_size(value, &bytes) < 0 || bytes == 0 || bytes > (1ull << 40)) {
			snprintf(st->bad, sizeof(st->bad), "read_size must be bytes (K, M, G "
				 "suffixes), from 1 to 1T");
			return 0;
		}
		st->cfg.probe.read_bytes = bytes;
		return 1;
	}
	if (!strcmp(name, "ceph_health")) {
		int rank = cd_parse_ceph_health(value);
		if (rank < 0) {
			snprintf(st->bad, sizeof(st->bad), "ceph_health must be ok, warn or err");
			return 0;
		}
		l->ceph_health = rank;
		return 1;
	}
	return -1;
}

static bool known_section(const char *section)
{
	static const char *const sections[] = {
		"metadata", "serve", "target", "iscsi", "rbd", "s3", "http", "probe", "sync",
		"cache", "mirror",
	};

	for (size_t i = 0; i < CD_ARRAY_SIZE(sections); i++)
		if (!strcmp(section, sections[i]))
			return true;
	return false;
}

static int on_entry(void *user, const char *section, const char *name,
		    const char *value)
{
	struct parse_state *st = user;
	struct cd_config *cfg = &st->cfg;

	if (!known_section(section)) {
		snprintf(st->bad, sizeof(st->bad), "unknown section [%.60s]", section);
		return 0;
	}
	for (size_t i = 0; i < CD_ARRAY_SIZE(text_keys); i++)
		if (!strcmp(section, text_keys[i].section) &&
		    !strcmp(name, text_keys[i].name))
			return set_text(st, &text_keys[i], value);
	for (size_t i = 0; i < CD_ARRAY_SIZE(number_keys); i++)
		if (!strcmp(section, number_keys[i].section) &&
		    !strcmp(name, number_keys[i].name))
			return set_number(st, &number_keys[i], value);
	if (!strcmp(section, "probe")) {
		int r = on_probe_entry(st, name, value);
		if (r >= 0)
			return r;
	}
	if (!strcmp(section, "mirror") && !strcmp(name, "on_error")) {
		if (strcmp(value, "degrade") && strcmp(value, "fail")) {
			snprintf(st->bad, sizeof(st->bad), "on_error must be degrade or fail");
			return 0;
		}
		cfg->mirror_fail = !strcmp(value, "fail");
		return 1;
	}
	if (!strcmp(section, "metadata") && !strcmp(name, "backup_dir")) {
		if (strcmp(value, "none") && value[0] != '/') {
			snprintf(st->bad, sizeof(st->bad), "backup_dir must be an absolute "
				 "path or 'none'");
			return 0;
		}
		snprintf(cfg->backup_dir, sizeof(cfg->backup_dir), "%s",
			 strcmp(value, "none") ? value : "");
		return 1;
	}
	if (!strcmp(section, "serve") && !strcmp(name, "scheduler")) {
		if (strcmp(value, "fair") && strcmp(value, "fifo")) {
			snprintf(st->bad, sizeof(st->bad), "scheduler must be fair or fifo");
			return 0;
		}
		cfg->serve_fifo = !strcmp(value, "fifo");
		return 1;
	}
	if (!strcmp(section, "serve") && !strcmp(name, "background_min_rate")) {
		if (cd_parse_size(value, &cfg->background_min_rate) < 0 ||
		    cfg->background_min_rate < (64ull << 10)) {
			snprintf(st->bad, sizeof(st->bad), "background_min_rate must be bytes "
				 "per second (K, M, G suffixes), at least 64K");
			return 0;
		}
		return 1;
	}
	if (!strcmp(section, "cache") && !strcmp(name, "max_size")) {
		if (cd_parse_size(value, &cfg->cache_max_size) < 0 ||
		    cfg->cache_max_size < (1ull << 20)) {
			snprintf(st->bad, sizeof(st->bad), "max_size must be bytes (K, M, G, "
				 "T suffixes), at least 1M");
			return 0;
		}
		return 1;
	}
	if (!strcmp(section, "metadata") && !strcmp(name, "auto_repair")) {
		if (!cd_parse_bool(value, &cfg->auto_repair)) {
			snprintf(st->bad, sizeof(st->bad), "auto_repair must be yes or no");
			return 0;
		}
		return 1;
	}
	snprintf(st->bad, sizeof(st->bad), "unknown key '%.60s' in [%.40s]", name, section);
	return 0;
}

int cd_config_parse_text(struct cdisk_ctx *ctx, const char *text)
{
	struct parse_state st = { 0 };
	int line;

	cd_config_defaults(&st.cfg);
	line = ini_parse_string(text, on_entry, &st);
	if (line != 0)
		return cd_error(ctx, -EINVAL, "configuration, line %d: %s", line,
				st.bad[0] ? st.bad : "syntax error");
	ctx->cfg = st.cfg;
	return 0;
}

int cdisk_ctx_load_config(struct cdisk_ctx *ctx, const char *path)
{
	struct parse_state st = { 0 };
	bool must_exist = path != NULL;
	int r;

	if (!path)
		path = getenv("CDISK_CONFIG");
	if (path)
		must_exist = true;
	else
		path = DEFAULT_CONFIG;
	if (!must_exist && access(path, F_OK) != 0)
		return 0;
	cd_config_defaults(&st.cfg);
	r = cd_ini_load(ctx, "configuration ", path, on_entry, &st, st.bad);
	if (r < 0)
		return r;
	ctx->cfg = st.cfg;
	return 0;
}

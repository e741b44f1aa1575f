/* The configuration file: host-wide defaults an administrator sets once.
 *
 *   [metadata]
 *   backup_dir = /var/lib/cdisk/meta   ; "none" turns backups off
 *   backup_interval = 300              ; seconds between refreshes
 *   auto_repair = yes                  ; rebuild damaged metadata at open
 *
 *   [serve]
 *   runtime_dir = /run/cdisk           ; sockets of serving processes
 */
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"

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
	snprintf(cfg->backup_dir, sizeof(cfg->backup_dir), "%s", CD_DEFAULT_BACKUP_DIR);
	snprintf(cfg->runtime_dir, sizeof(cfg->runtime_dir), "%s", CD_DEFAULT_RUNTIME_DIR);
	cfg->backup_interval = 300;
	cfg->auto_repair = true;
}

struct parse_state {
	struct cd_config cfg;
	char bad[160];
};

static int on_entry(void *user, const char *section, const char *name,
		    const char *value)
{
	struct parse_state *st = user;
	struct cd_config *cfg = &st->cfg;

	if (!strcmp(section, "serve")) {
		if (strcmp(name, "runtime_dir") != 0) {
			snprintf(st->bad, sizeof(st->bad), "unknown key '%.60s'", name);
			return 0;
		}
		if (value[0] != '/') {
			snprintf(st->bad, sizeof(st->bad), "runtime_dir must be an absolute path");
			return 0;
		}
		snprintf(cfg->runtime_dir, sizeof(cfg->runtime_dir), "%s", value);
		return 1;
	}
	if (strcmp(section, "metadata") != 0) {
		snprintf(st->bad, sizeof(st->bad), "unknown section [%.60s]", section);
		return 0;
	}
	if (!strcmp(name, "backup_dir")) {
		if (strcmp(value, "none") && value[0] != '/') {
			snprintf(st->bad, sizeof(st->bad), "backup_dir must be an absolute "
				 "path or 'none'");
			return 0;
		}
		snprintf(cfg->backup_dir, sizeof(cfg->backup_dir), "%s",
			 strcmp(value, "none") ? value : "");
	} else if (!strcmp(name, "backup_interval")) {
		char *end;
		long v = strtol(value, &end, 10);
		if (*end || end == value || v < 1 || v > 86400 * 7) {
			snprintf(st->bad, sizeof(st->bad), "backup_interval must be seconds "
				 "from 1 to 604800");
			return 0;
		}
		cfg->backup_interval = (uint32_t)v;
	} else if (!strcmp(name, "auto_repair")) {
		if (!cd_parse_bool(value, &cfg->auto_repair)) {
			snprintf(st->bad, sizeof(st->bad), "auto_repair must be yes or no");
			return 0;
		}
	} else {
		snprintf(st->bad, sizeof(st->bad), "unknown key '%.60s'", name);
		return 0;
	}
	return 1;
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

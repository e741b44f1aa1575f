/* The control socket of a serving process (cdisk-protocol(7)): one JSON
 * object per line in, one per line out, one request per connection.  The
 * other programs reach a disk in use through it instead of saying busy. */
#include <jansson.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "server.h"

#define CONTROL_MAX_LINE (64u * 1024)
#define CONTROL_TIMEOUT_MS 5000
/* How long a client waiting for its sync keeps asking a server that does
 * not answer its status requests in time (a loaded host). */
#define OWNER_PATIENCE_MS 60000
/* Requests answered at once; past this a client is told to try later
 * (the accept loop never waits for a request to finish). */
#define CONTROL_MAX_ACTIVE 32
#define SCHEMA_VERSION 1

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

static json_t *info_to_json(const struct cdisk_info *i)
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

	if (j && json_object_update_new(j, json_pack("{s:I, s:b, s:b, s:s, s:b, s:I}",
			"base_opening_ms", (json_int_t)i->base_opening_ms,
			"unconfirmed", i->unconfirmed, "mirror_active", i->mirror_active,
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

static void info_from_json(json_t *o, struct cdisk_info *i)
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
	copy_string(o, "backup_path", i->backup_path, sizeof(i->backup_path));
	i->backup_exists = json_is_true(json_object_get(o, "backup_exists"));
	i->backup_age = get_u64(o, "backup_age");
}

/* ---- server side ---- */

int cdisk_server_listen_control(struct cdisk_server *s, const char *path,
				unsigned mode)
{
	int fd, r = cd_listen_unix(s->ctx, path, (mode_t)mode, &fd);

	if (r < 0)
		return r;
	s->control_fd = fd;
	s->control_path = strdup(path);
	return 0;
}

static json_t *error_reply(int err, const char *fmt, ...) CD_PRINTF(2, 3);

static json_t *error_reply(int err, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return json_pack("{s:i, s:b, s:s, s:i}", "schema_version", SCHEMA_VERSION,
			 "ok", 0, "error", msg, "exit_code", cdisk_exit_code(err));
}

static json_t *ok_reply(void)
{
	return json_pack("{s:i, s:b}", "schema_version", SCHEMA_VERSION, "ok", 1);
}

static json_t *export_status(const struct cd_export *e)
{
	struct cdisk_info i;

	cdisk_get_info(e->disk, &i);
	return json_pack("{s:s, s:s, s:I, s:i, s:b, s:i, s:I, s:I, s:I, s:s}",
			 "name", e->name, "disk", e->path, "size", (json_int_t)i.size,
			 "block_size", (int)i.block_size, "read_only", e->readonly,
			 "connections", (int)__atomic_load_n(&e->connections, __ATOMIC_RELAXED),
			 "requests", (json_int_t)__atomic_load_n(&e->requests, __ATOMIC_RELAXED),
			 "blocks_present", (json_int_t)i.blocks_present,
			 "blocks_dirty", (json_int_t)i.blocks_dirty, "base", i.base);
}

static json_t *cmd_status(struct cdisk_server *s)
{
	json_t *list = json_array(), *r = ok_reply();

	for (size_t i = 0; i < s->nexports; i++)
		json_array_append_new(list, export_status(&s->exports[i]));
	json_object_set_new(r, "pid", json_integer(getpid()));
	json_object_set_new(r, "exports", list);
	return r;
}

/* The export serving a disk, by the disk's path as any opener names it. */
static struct cd_export *export_for_disk(struct cdisk_server *s, const char *path)
{
	char want[4096], have[4096];

	if (!realpath(path, want))
		return NULL;
	for (size_t i = 0; i < s->nexports; i++)
		if (realpath(s->exports[i].path, have) && strcmp(want, have) == 0)
			return &s->exports[i];
	return NULL;
}

static json_t *cmd_flush(struct cdisk_server *s, json_t *req)
{
	const char *name = json_string_value(json_object_get(req, "export"));

	for (size_t i = 0; i < s->nexports; i++) {
		struct cd_export *e = &s->exports[i];
		if (name && strcmp(e->name, name) != 0)
			continue;
		int r = cdisk_flush(e->disk);
		if (r < 0)
			return error_reply(r, "%s", cdisk_ctx_error(s->ctx));
		if (name)
			return ok_reply();
	}
	return name ? error_reply(-ENOENT, "no export named '%s'", name) : ok_reply();
}

static json_t *cmd_info(struct cdisk_server *s, json_t *req)
{
	const char *disk = json_string_value(json_object_get(req, "disk"));
	struct cd_export *e = disk ? export_for_disk(s, disk) : NULL;
	struct cdisk_info info;
	json_t *r;

	if (!disk)
		return error_reply(-EINVAL, "'info' needs \"disk\"");
	if (!e)
		return error_reply(-ENOENT, "'%s' is not served here", disk);
	cdisk_get_info(e->disk, &info);
	r = ok_reply();
	json_object_set_new(r, "export", json_string(e->name));
	json_object_set_new(r, "info", info_to_json(&info));
	return r;
}

/* ---- sync, run by the server for a disk it serves ---- */

static void job_progress(void *opaque, const struct cdisk_sync_progress *p)
{
	struct cd_sync_job *job = opaque;

	pthread_mutex_lock(&job->server->lock);
	job->progress = *p;
	pthread_mutex_unlock(&job->server->lock);
}

struct job_start {
	struct cdisk_server *s;
	struct cd_export *e;
};

static void *sync_thread(void *opaque)
{
	struct job_start *js = opaque;
	struct cdisk_server *s = js->s;
	struct cd_export *e = js->e;
	struct cdisk_sync_stats st;
	int r;

	free(js);
	switch (e->sync.mode) {
	case CDISK_SYNC_PULL:
		r = cdisk_pull(e->disk, &e->sync.opts, &st);
		break;
	case CDISK_SYNC_CLOSE:
		r = cdisk_sync_close(e->disk, &e->sync.opts, &st);
		break;
	default:
		r = cdisk_sync(e->disk, &e->sync.opts, &st);
	}
	pthread_mutex_lock(&s->lock);
	e->sync.stats = st;
	e->sync.result = r;
	if (r < 0)
		snprintf(e->sync.error, sizeof(e->sync.error), "%s", cdisk_ctx_error(s->ctx));
	e->sync.running = false;
	pthread_mutex_unlock(&s->lock);
	/* "Not now" from --if-healthy comes every turn while the base is
	 * degraded: information, not a warning. */
	if (r < 0)
		cd_log(s->ctx, r == -EAGAIN ? CDISK_LOG_INFO : CDISK_LOG_WARNING,
		       "export '%s': sync failed: %s", e->name, e->sync.error);
	else
		cd_log(s->ctx, CDISK_LOG_INFO, "export '%s': sync done: %llu bytes sent, "
		       "%llu left", e->name, (unsigned long long)st.bytes,
		       (unsigned long long)st.left_bytes);
	return NULL;
}

static struct cd_export *export_of_request(struct cdisk_server *s, json_t *req,
					   json_t **error)
{
	const char *disk = json_string_value(json_object_get(req, "disk"));
	struct cd_export *e = disk ? export_for_disk(s, disk) : NULL;

	if (!disk)
		*error = error_reply(-EINVAL, "request needs \"disk\"");
	else if (!e)
		*error = error_reply(-ENOENT, "'%s' is not served here", disk);
	return e;
}

/* Start a sync of e in a thread of its own, unless one runs. */
static int start_job(struct cdisk_server *s, struct cd_export *e,
		     enum cdisk_sync_mode mode, const struct cdisk_sync_opts *opts)
{
	struct job_start *js;

	pthread_mutex_lock(&s->lock);
	if (e->sync.running) {
		pthread_mutex_unlock(&s->lock);
		return -EBUSY;
	}
	if (e->sync.started)
		pthread_join(e->sync.thread, NULL);
	memset(&e->sync, 0, sizeof(e->sync));
	e->sync.opts = *opts;
	e->sync.mode = mode;
	e->sync.opts.progress = job_progress;
	e->sync.opts.opaque = &e->sync;
	e->sync.server = s;
	js = malloc(sizeof(*js));
	if (js) {
		js->s = s;
		js->e = e;
	}
	if (!js || pthread_create(&e->sync.thread, NULL, sync_thread, js) != 0) {
		free(js);
		pthread_mutex_unlock(&s->lock);
		return -ENOMEM;
	}
	e->sync.started = e->sync.running = true;
	pthread_mutex_unlock(&s->lock);
	return 0;
}

/* The timer's policy: every interval, a push for each writable export with
 * a base, unless one runs (the policy's min_dirty decides whether it sends). */
void cd_control_policy_tick(struct cdisk_server *s)
{
	uint64_t now = cd_now_ms();

	if (!s->policy_every_ms || now < s->policy_next_ms)
		return;
	s->policy_next_ms = now + s->policy_every_ms;
	for (size_t i = 0; i < s->nexports; i++) {
		struct cd_export *e = &s->exports[i];
		struct cdisk_info info;

		if (e->readonly || !e->disk)
			continue;
		cdisk_get_info(e->disk, &info);
		if (!info.base[0] || !info.blocks_dirty)
			continue;
		start_job(s, e, CDISK_SYNC_PUSH, &s->policy);
	}
}

/* A sync request's export, mode and options; NULL with *error set when
 * they do not make sense. */
static struct cd_export *sync_request(struct cdisk_server *s, json_t *req,
				      enum cdisk_sync_mode *mode_out,
				      struct cdisk_sync_opts *opts, json_t **error)
{
	json_t *o = json_object_get(req, "options");
	struct cd_export *e = export_of_request(s, req, error);
	json_int_t depth = 0, rate = 0, max_seconds = 0, min_dirty = 0, offset = 0, length = 0;
	json_int_t target_delay = 0;
	const char *mode = "push";
	int verify = 0, if_healthy = 0;

	if (!e)
		return NULL;
	if (o && json_unpack(o, "{s?s, s?I, s?I, s?I, s?I, s?I, s?I, s?b, s?b, s?I}", "mode",
			     &mode, "depth", &depth, "rate", &rate, "max_seconds", &max_seconds,
			     "min_dirty", &min_dirty, "offset", &offset, "length", &length,
			     "verify", &verify, "if_healthy", &if_healthy,
			     "target_delay_ms", &target_delay) < 0) {
		*error = error_reply(-EINVAL, "bad sync options");
		return NULL;
	}
	if (depth < 0 || depth > 256 || rate < 0 || max_seconds < 0 ||
	    max_seconds > UINT32_MAX || min_dirty < 0 || offset < 0 || length < 0 ||
	    target_delay < -1 || target_delay > 10000) {
		*error = error_reply(-EINVAL, "sync options out of range");
		return NULL;
	}
	if (strcmp(mode, "push") && strcmp(mode, "pull") && strcmp(mode, "close")) {
		*error = error_reply(-EINVAL, "sync mode must be push, pull or close");
		return NULL;
	}
	*mode_out = !strcmp(mode, "pull") ? CDISK_SYNC_PULL :
		    !strcmp(mode, "close") ? CDISK_SYNC_CLOSE : CDISK_SYNC_PUSH;
	memset(opts, 0, sizeof(*opts));
	opts->depth = (unsigned)depth;
	opts->rate = (uint64_t)rate;
	opts->max_seconds = (uint32_t)max_seconds;
	opts->min_dirty = (uint64_t)min_dirty;
	opts->verify = verify;
	opts->if_healthy = if_healthy;
	opts->target_delay_ms = (int)target_delay;
	opts->range_offset = (uint64_t)offset;
	opts->range_length = (uint64_t)length;
	return e;
}

static json_t *cmd_sync(struct cdisk_server *s, json_t *req)
{
	json_t *err = NULL;
	enum cdisk_sync_mode mode;
	struct cdisk_sync_opts opts;
	struct cd_export *e = sync_request(s, req, &mode, &opts, &err);

	if (!e)
		return err;
	if (e->readonly)
		return error_reply(-EROFS, "export '%s' is read-only", e->name);
	switch (start_job(s, e, mode, &opts)) {
	case -EBUSY:
		return error_reply(-EBUSY, "'%s': a sync is already running", e->path);
	case 0:
		return ok_reply();
	default:
		return error_reply(-ENOMEM, "cannot start a sync");
	}
}

static json_t *stats_to_json(const struct cdisk_sync_stats *st)
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

/* A dry run only counts, under the disk's lock, and contacts nothing: it
 * is answered here and now, not by a job, and changes nothing, so a
 * read-only export has one too. */
static json_t *cmd_sync_dry_run(struct cdisk_server *s, json_t *req)
{
	json_t *err = NULL, *r;
	enum cdisk_sync_mode mode;
	struct cdisk_sync_opts opts;
	struct cdisk_sync_stats st;
	struct cd_export *e = sync_request(s, req, &mode, &opts, &err);
	bool running;
	int rc;

	if (!e)
		return err;
	pthread_mutex_lock(&s->lock);
	running = e->sync.running;
	pthread_mutex_unlock(&s->lock);
	/* Jobs start only on this thread, so none can start meanwhile. */
	if (running)
		return error_reply(-EBUSY, "'%s': a sync is already running", e->path);
	opts.dry_run = true;
	rc = mode == CDISK_SYNC_PULL ? cdisk_pull(e->disk, &opts, &st) :
	     mode == CDISK_SYNC_CLOSE ? cdisk_sync_close(e->disk, &opts, &st) :
	     cdisk_sync(e->disk, &opts, &st);
	if (rc < 0)
		return error_reply(rc, "%s", cdisk_ctx_error(s->ctx));
	r = ok_reply();
	json_object_set_new(r, "result", stats_to_json(&st));
	return r;
}

static json_t *cmd_sync_status(struct cdisk_server *s, json_t *req)
{
	json_t *err = NULL, *r;
	struct cd_export *e = export_of_request(s, req, &err);

	if (!e)
		return err;
	r = ok_reply();
	pthread_mutex_lock(&s->lock);
	json_object_set_new(r, "running", json_boolean(e->sync.running));
	json_object_set_new(r, "started", json_boolean(e->sync.started));
	json_object_set_new(r, "done_bytes", json_integer((json_int_t)e->sync.progress.done));
	json_object_set_new(r, "total_bytes", json_integer((json_int_t)e->sync.progress.total));
	json_object_set_new(r, "rate_limit",
			    json_integer((json_int_t)e->sync.progress.rate_limit));
	json_object_set_new(r, "delay_ms", json_real(e->sync.progress.delay_ms));
	json_object_set_new(r, "base_delay_ms", json_real(e->sync.progress.base_delay_ms));
	if (e->sync.started && !e->sync.running) {
		json_object_set_new(r, "result", stats_to_json(&e->sync.stats));
		json_object_set_new(r, "errno", json_integer(-e->sync.result));
		if (e->sync.result < 0)
			json_object_set_new(r, "error", json_string(e->sync.error));
	}
	pthread_mutex_unlock(&s->lock);
	return r;
}

static json_t *cmd_sync_stop(struct cdisk_server *s, json_t *req)
{
	json_t *err = NULL;
	struct cd_export *e = export_of_request(s, req, &err);

	if (!e)
		return err;
	cdisk_sync_stop(e->disk);
	return ok_reply();
}

void cd_control_stop_syncs(struct cdisk_server *s)
{
	for (size_t i = 0; i < s->nexports; i++) {
		struct cd_export *e = &s->exports[i];

		if (!e->sync.started || !e->disk)
			continue;
		cdisk_sync_stop(e->disk);
		pthread_join(e->sync.thread, NULL);
		e->sync.started = false;
	}
}

/* Verbs that change state (flush, sync, stop): only for root, the
 * server's own user and the control socket's group.  Looking is for
 * anyone who can open the socket. */
static bool changes_state(const char *command)
{
	return strcmp(command, "status") && strcmp(command, "info") &&
	       strcmp(command, "sync-status") && strcmp(command, "sync-dry-run");
}

static json_t *dispatch(struct cdisk_server *s, const char *line, bool may_change)
{
	json_error_t jerr;
	json_t *req = json_loads(line, 0, &jerr), *reply;
	const char *command;

	if (!req || !json_is_object(req)) {
		json_decref(req);
		return error_reply(-EINVAL, "request is not a JSON object: %s",
				   req ? "wrong type" : jerr.text);
	}
	command = json_string_value(json_object_get(req, "command"));
	if (!command)
		reply = error_reply(-EINVAL, "request has no \"command\"");
	else if (!may_change && changes_state(command))
		reply = error_reply(-EPERM, "'%.100s' is only for root, the server's user "
				    "and the control socket's group", command);
	else if (!strcmp(command, "status"))
		reply = cmd_status(s);
	else if (!strcmp(command, "flush"))
		reply = cmd_flush(s, req);
	else if (!strcmp(command, "info"))
		reply = cmd_info(s, req);
	else if (!strcmp(command, "sync"))
		reply = cmd_sync(s, req);
	else if (!strcmp(command, "sync-dry-run"))
		reply = cmd_sync_dry_run(s, req);
	else if (!strcmp(command, "sync-status"))
		reply = cmd_sync_status(s, req);
	else if (!strcmp(command, "sync-stop"))
		reply = cmd_sync_stop(s, req);
	else
		reply = error_reply(-EINVAL, "unknown command '%.100s'", command);
	json_decref(req);
	return reply;
}

char *cd_control_answer(struct cdisk_server *s, const char *line)
{
	json_t *reply = dispatch(s, line, true);
	char *text = json_dumps(reply, JSON_COMPACT);

	json_decref(reply);
	return text;
}

/* Read one line, with a deadline: a silent or endless client gets an
 * error, not our attention forever. */
static int read_line(int fd, char *buf, size_t max)
{
	size_t have = 0;

	while (have < max - 1) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ssize_t n;

		if (poll(&p, 1, CONTROL_TIMEOUT_MS) <= 0)
			return -ETIMEDOUT;
		n = recv(fd, buf + have, max - 1 - have, 0);
		if (n <= 0)
			return have ? (buf[have] = 0, 0) : -ECONNRESET;
		have += (size_t)n;
		buf[have] = 0;
		if (memchr(buf, '\n', have))
			return 0;
	}
	return -E2BIG;
}

static void send_json(int fd, json_t *j)
{
	char *text = json_dumps(j, JSON_COMPACT);

	if (text) {
		size_t n = strlen(text);
		text[n] = '\n';
		send(fd, text, n + 1, MSG_NOSIGNAL);
		free(text);
	}
	json_decref(j);
}

/* Whether the peer may change state: root, the server's own user, or a
 * member of the group that owns the control socket (SO_PEERCRED and
 * SO_PEERGROUPS, as multipathd checks its clients). */
static bool peer_may_change(struct cdisk_server *s, int fd)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	gid_t groups[256];
	struct stat st;

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		return false;
	if (cred.uid == 0 || cred.uid == geteuid())
		return true;
	if (!s->control_path || stat(s->control_path, &st) < 0 || st.st_gid == 0)
		return false;
	if (cred.gid == st.st_gid)
		return true;
	len = sizeof(groups);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) < 0)
		return false;
	for (size_t i = 0; i < len / sizeof(gid_t); i++)
		if (groups[i] == st.st_gid)
			return true;
	return false;
}

struct control_request {
	struct cdisk_server *s;
	int fd;
};

static void control_done(struct cdisk_server *s)
{
	pthread_mutex_lock(&s->lock);
	if (--s->control_active == 0)
		pthread_cond_broadcast(&s->control_idle);
	pthread_mutex_unlock(&s->lock);
}

/* One request, on a thread of its own: reading it may take the client's
 * time and answering it may wait on a disk (a flush). */
static void *control_thread(void *opaque)
{
	struct control_request *cr = opaque;
	struct cdisk_server *s = cr->s;
	char *line = malloc(CONTROL_MAX_LINE);
	int r;

	if (line) {
		struct timeval tv = { .tv_sec = CONTROL_TIMEOUT_MS / 1000 };

		/* Accepted without blocking; from here a slow client costs
		 * only this thread, and only for so long. */
		fcntl(cr->fd, F_SETFL, fcntl(cr->fd, F_GETFL) & ~O_NONBLOCK);
		setsockopt(cr->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		r = read_line(cr->fd, line, CONTROL_MAX_LINE);
		if (r == -E2BIG)
			send_json(cr->fd, error_reply(-EINVAL, "request longer than %u bytes",
						      CONTROL_MAX_LINE));
		else if (r == 0)
			send_json(cr->fd, dispatch(s, line, peer_may_change(s, cr->fd)));
	}
	close(cr->fd);
	free(line);
	free(cr);
	control_done(s);
	return NULL;
}

void cd_control_serve_one(struct cdisk_server *s)
{
	int fd = accept4(s->control_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	struct control_request *cr;
	pthread_attr_t attr;
	pthread_t tid;
	bool full;

	if (fd < 0)
		return;
	pthread_mutex_lock(&s->lock);
	full = s->control_active >= CONTROL_MAX_ACTIVE;
	if (!full)
		s->control_active++;
	pthread_mutex_unlock(&s->lock);
	if (full) {
		send_json(fd, error_reply(-EAGAIN, "the server is answering %u control "
					  "requests already; try later", CONTROL_MAX_ACTIVE));
		close(fd);
		return;
	}
	cr = malloc(sizeof(*cr));
	if (cr)
		*cr = (struct control_request){ s, fd };
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	if (!cr || pthread_create(&tid, &attr, control_thread, cr) != 0) {
		close(fd);
		free(cr);
		control_done(s);
	}
	pthread_attr_destroy(&attr);
}

/* Before the disks close: every request under way has been answered. */
void cd_control_wait_idle(struct cdisk_server *s)
{
	pthread_mutex_lock(&s->lock);
	while (s->control_active)
		pthread_cond_wait(&s->control_idle, &s->lock);
	pthread_mutex_unlock(&s->lock);
}

/* The sync policy's timer, on a thread of its own: starting a sync reads
 * a disk's state, which the accept loop never waits for. */
static void *policy_thread(void *opaque)
{
	struct cdisk_server *s = opaque;

	pthread_mutex_lock(&s->lock);
	while (!s->policy_stop) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 1;
		pthread_cond_timedwait(&s->control_idle, &s->lock, &ts);
		if (s->policy_stop)
			break;
		pthread_mutex_unlock(&s->lock);
		cd_control_policy_tick(s);
		pthread_mutex_lock(&s->lock);
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

int cd_control_start_policy(struct cdisk_server *s)
{
	if (!s->policy_every_ms)
		return 0;
	if (pthread_create(&s->policy_thread, NULL, policy_thread, s) != 0)
		return cd_error(s->ctx, -EAGAIN, "cannot start the sync timer");
	s->policy_started = true;
	return 0;
}

void cd_control_stop_policy(struct cdisk_server *s)
{
	if (!s->policy_started)
		return;
	pthread_mutex_lock(&s->lock);
	s->policy_stop = true;
	pthread_cond_broadcast(&s->control_idle);
	pthread_mutex_unlock(&s->lock);
	pthread_join(s->policy_thread, NULL);
	s->policy_started = false;
}

/* ---- client side ---- */

static int call(struct cdisk_ctx *ctx, const char *socket_path, json_t *req,
		json_t **out)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	char *text = json_dumps(req, JSON_COMPACT), *line = malloc(CONTROL_MAX_LINE);
	int fd = -1, r;
	json_error_t jerr;

	if (!text || !line || strlen(socket_path) >= sizeof(a.sun_path)) {
		r = -ENOMEM;
		goto out;
	}
	memcpy(a.sun_path, socket_path, strlen(socket_path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		r = -errno;
		goto out;
	}
	size_t n = strlen(text);
	text[n] = '\n';
	if (send(fd, text, n + 1, MSG_NOSIGNAL) != (ssize_t)(n + 1)) {
		r = -EIO;
		goto out;
	}
	r = read_line(fd, line, CONTROL_MAX_LINE);
	if (r < 0)
		goto out;
	*out = json_loads(line, 0, &jerr);
	r = *out ? 0 : -EBADMSG;
out:
	if (r < 0 && r != -ENOMEM)
		cd_error(ctx, r, "control socket '%s': %s", socket_path, strerror(-r));
	if (fd >= 0)
		close(fd);
	free(text);
	free(line);
	return r;
}

/* The control socket of the process that owns path; -ENOENT if none. */
static int owner_socket(struct cdisk_ctx *ctx, const char *path, char *sock, size_t size,
			unsigned *pid_out)
{
	struct cdisk *d;
	unsigned pid;
	int r = cdisk_open(ctx, path, CDISK_OPEN_CONFIG_ONLY, &d);

	if (r < 0)
		return r;
	pid = d->sb.owner_pid;
	cd_disk_free(d);
	*pid_out = pid;
	if (!pid || cd_control_path_for_pid(&ctx->cfg, pid, sock, size) < 0)
		return -ENOENT;
	return 0;
}

int cdisk_info_from_owner(struct cdisk_ctx *ctx, const char *path,
			  struct cdisk_info *info)
{
	char busy[CD_ERROR_MAX], sock[4096];
	json_t *req, *reply = NULL;
	unsigned pid = 0;
	int r;

	memcpy(busy, cd_errbuf(), sizeof(busy));
	if (owner_socket(ctx, path, sock, sizeof(sock), &pid) < 0)
		goto busy;
	req = json_pack("{s:s, s:s}", "command", "info", "disk", path);
	r = call(ctx, sock, req, &reply);
	json_decref(req);
	if (r < 0)
		goto busy;
	if (!json_is_true(json_object_get(reply, "ok"))) {
		const char *e = json_string_value(json_object_get(reply, "error"));
		json_decref(reply);
		r = cd_error(ctx, -EBUSY, "'%s' is busy: in use by pid %u, which says: %s",
			     path, pid, e ? e : "(no message)");
		return r;
	}
	info_from_json(json_object_get(reply, "info"), info);
	json_decref(reply);
	return 0;
busy:
	/* No owner to ask: the original "busy" stands. */
	memcpy(cd_errbuf(), busy, sizeof(busy));
	return -EBUSY;
}

/* ---- asking the owner to sync ---- */

/* The owner's refusal, with the exit code it gave, as an errno that maps
 * back to that code: a program exits as it would have on its own. */
static int errno_for_exit(json_int_t code)
{
	switch (code) {
	case CDISK_EXIT_USAGE:
		return -EINVAL;
	case CDISK_EXIT_UNREACHABLE:
		return -EHOSTUNREACH;
	case CDISK_EXIT_BUSY:
		return -EBUSY;
	case CDISK_EXIT_PERMISSION:
		return -EACCES;
	case CDISK_EXIT_NOT_FOUND:
		return -ENOENT;
	case CDISK_EXIT_CORRUPT:
		return -EUCLEAN;
	case CDISK_EXIT_TRY_LATER:
		return -EAGAIN;
	default:
		return -EIO;
	}
}

static int owner_refused(struct cdisk_ctx *ctx, const char *path, unsigned pid,
			 json_t **reply)
{
	const char *e = json_string_value(json_object_get(*reply, "error"));
	int r;

	if (json_is_true(json_object_get(*reply, "ok")))
		return 0;
	r = cd_error(ctx, errno_for_exit(json_integer_value(json_object_get(*reply,
									      "exit_code"))),
		     "'%s' is in use by pid %u, which says: %s", path, pid,
		     e ? e : "(no message)");
	json_decref(*reply);
	*reply = NULL;
	return r;
}

static int owner_call(struct cdisk_ctx *ctx, const char *sock, const char *path,
		      unsigned pid, json_t *req, json_t **reply)
{
	int r = call(ctx, sock, req, reply);

	json_decref(req);
	return r < 0 ? r : owner_refused(ctx, path, pid, reply);
}

static int sync_status(struct cdisk_ctx *ctx, const char *sock, const char *path,
		       unsigned pid, json_t **reply)
{
	return owner_call(ctx, sock, path, pid,
			  json_pack("{s:s, s:s}", "command", "sync-status", "disk", path), reply);
}

static void stats_from_json(json_t *j, struct cdisk_sync_stats *st)
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

static json_t *sync_options(enum cdisk_sync_mode mode, const struct cdisk_sync_opts *o)
{
	return json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:b, s:b, s:I}",
			 "mode", mode == CDISK_SYNC_PULL ? "pull" :
				 mode == CDISK_SYNC_CLOSE ? "close" : "push",
			 "offset", (json_int_t)o->range_offset,
			 "length", (json_int_t)o->range_length,
			 "depth", (json_int_t)o->depth,
			 "rate", (json_int_t)o->rate, "max_seconds",
			 (json_int_t)o->max_seconds, "min_dirty", (json_int_t)o->min_dirty,
			 "verify", o->verify, "if_healthy", o->if_healthy,
			 "target_delay_ms", (json_int_t)o->target_delay_ms);
}

int cdisk_sync_via_owner(struct cdisk_ctx *ctx, const char *path,
			 enum cdisk_sync_mode mode, const struct cdisk_sync_opts *o,
			 struct cdisk_sync_stats *st)
{
	char busy[CD_ERROR_MAX], sock[4096];
	json_t *req, *reply = NULL;
	unsigned pid = 0;
	int r;

	memset(st, 0, sizeof(*st));
	memcpy(busy, cd_errbuf(), sizeof(busy));
	if (owner_socket(ctx, path, sock, sizeof(sock), &pid) < 0) {
		memcpy(cd_errbuf(), busy, sizeof(busy));
		return -EBUSY;
	}
	/* A dry run is a verb of its own: a server that does not know it
	 * refuses it, where an unknown option would be ignored and a real
	 * sync run. */
	req = json_pack("{s:s, s:s, s:o}", "command", o->dry_run ? "sync-dry-run" : "sync",
			"disk", path, "options", sync_options(mode, o));
	r = call(ctx, sock, req, &reply);
	json_decref(req);
	if (r < 0) {
		/* No server behind the socket (another cdisk-sync, say): busy. */
		memcpy(cd_errbuf(), busy, sizeof(busy));
		return -EBUSY;
	}
	r = owner_refused(ctx, path, pid, &reply);
	if (r < 0)
		return r;
	if (o->dry_run) {
		stats_from_json(json_object_get(reply, "result"), st);
		json_decref(reply);
		return 0;
	}
	json_decref(reply);
	for (bool stop_sent = false;;) {
		uint64_t asked = cd_now_ms();
		bool running;

		usleep(100 * 1000);
		r = sync_status(ctx, sock, path, pid, &reply);
		/* A server too busy to answer one status request is still
		 * syncing: giving up would leave its sync running with no one
		 * waiting for it. */
		while ((r == -ETIMEDOUT || r == -EAGAIN) &&
		       cd_now_ms() - asked < OWNER_PATIENCE_MS) {
			usleep(500 * 1000);
			r = sync_status(ctx, sock, path, pid, &reply);
		}
		if (r < 0)
			return r;
		running = json_is_true(json_object_get(reply, "running"));
		if (running && o->stop && *o->stop && !stop_sent) {
			json_t *ignored = NULL;
			stop_sent = owner_call(ctx, sock, path, pid,
					       json_pack("{s:s, s:s}", "command", "sync-stop",
							 "disk", path), &ignored) == 0;
			json_decref(ignored);
		}
		if (o->progress)
			o->progress(o->opaque, &(struct cdisk_sync_progress){
				.done = (uint64_t)json_integer_value(json_object_get(reply, "done_bytes")),
				.total = (uint64_t)json_integer_value(json_object_get(reply, "total_bytes")),
				.rate_limit = (uint64_t)json_integer_value(json_object_get(reply, "rate_limit")),
				.delay_ms = json_number_value(json_object_get(reply, "delay_ms")),
				.base_delay_ms = json_number_value(json_object_get(reply, "base_delay_ms")),
			});
		if (!running)
			break;
		json_decref(reply);
	}
	stats_from_json(json_object_get(reply, "result"), st);
	r = -(int)json_integer_value(json_object_get(reply, "errno"));
	if (r < 0) {
		const char *e = json_string_value(json_object_get(reply, "error"));
		cd_error(ctx, r, "%s", e ? e : "the owner's sync failed");
	}
	json_decref(reply);
	return r;
}

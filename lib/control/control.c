/* The control socket of a serving process (cdisk-protocol(7)): one JSON
 * object per line in, one per line out, one request per connection.  The
 * other programs reach a disk in use through it instead of saying busy.
 * Here the server's side: the socket, who may do what, and the verbs; the
 * syncs they start are control-jobs.c's, the client control-client.c's. */
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "cdisk.h"
#include "control.h"
#include "pool.h"
#include "queue.h"
#include "server.h"
#include "stats.h"
#include "text.h"
#include "users.h"
#include "util.h"
#include "verify.h"

/* Requests answered at once; past this a client is told to try later
 * (the accept loop never waits for a request to finish). */
#define CONTROL_MAX_ACTIVE 32

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
			 "ok", 0, "error", msg, "exit_code", cd_exit_code(err));
}

static json_t *ok_reply(void)
{
	return json_pack("{s:i, s:b}", "schema_version", SCHEMA_VERSION, "ok", 1);
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

/* An export's or a user's statistics, from a snapshot: the counters go on
 * being bumped meanwhile. */
static json_t *io_json(const struct cd_io_stats *live)
{
	struct cd_io_stats *snap = malloc(sizeof(*snap));
	json_t *j;

	if (!snap)
		return NULL;
	cd_io_stats_snapshot(live, snap);
	j = cd_io_stats_json(snap);
	free(snap);
	return j;
}

static json_t *export_status(const struct cd_export *e)
{
	struct cdisk_info i;
	json_t *j;

	cdisk_get_info(e->disk, &i);
	j = json_pack("{s:s, s:s, s:I, s:i, s:b, s:i, s:I, s:I, s:I, s:s, s:b}",
		      "name", e->name, "disk", e->path, "size", (json_int_t)i.size,
		      "block_size", (int)i.block_size, "read_only", e->readonly,
		      "connections", (int)__atomic_load_n(&e->connections, __ATOMIC_RELAXED),
		      "requests", (json_int_t)__atomic_load_n(&e->requests, __ATOMIC_RELAXED),
		      "blocks_present", (json_int_t)i.blocks_present,
		      "blocks_dirty", (json_int_t)i.blocks_dirty, "base", i.base,
		      "pool", e->pool != NULL);
	if (j)
		json_object_set_new(j, "io", io_json(&e->io));
	return j;
}

/* The pool's images after the fixed exports, each held while it is
 * looked at: it may be removed meanwhile. */
static void pool_status(struct cdisk_server *s, json_t *list)
{
	struct cd_export **v;
	size_t n;

	if (cd_pool_hold_all(s->pool, &v, &n) < 0)
		return;
	for (size_t i = 0; i < n; i++) {
		json_array_append_new(list, export_status(v[i]));
		cd_pool_put(v[i]);
	}
	free(v);
}

static json_t *limits_json(const struct cd_user_limits *l)
{
	return json_pack("{s:I, s:I, s:I, s:I, s:I}", "iops", (json_int_t)l->iops,
			 "bandwidth", (json_int_t)l->bytes_per_second,
			 "burst_ms", (json_int_t)l->burst_ms,
			 "queue_depth", (json_int_t)l->queue_depth,
			 "connections", (json_int_t)l->connections);
}

/* Under the queue's lock: copies and renders only. */
static void user_status(const struct cd_queue_user_view *v, void *opaque)
{
	json_t *u = json_pack("{s:s, s:o*, s:I, s:I, s:I}", "name", v->user,
			      "limits", limits_json(&v->limits),
			      "connections", (json_int_t)v->connections,
			      "queued", (json_int_t)v->queued,
			      "inflight", (json_int_t)v->inflight);

	if (u)
		json_object_set_new(u, "io", io_json(v->stats));
	json_array_append_new(opaque, u);
}

/* disk: only the export serving it, and no users (cdisk-info --metrics
 * on a disk); NULL: everything. */
static json_t *cmd_status(struct cdisk_server *s, json_t *req)
{
	const char *disk = json_string_value(json_object_get(req, "disk"));
	json_t *list = json_array(), *users = json_array(), *r;

	if (disk) {
		struct cd_export *e = export_for_disk(s, disk);

		if (!e)
			e = cd_pool_get_by_path(s->pool, disk);
		if (!e) {
			json_decref(list);
			json_decref(users);
			return error_reply(-ENOENT, "'%s' is not served here", disk);
		}
		json_array_append_new(list, export_status(e));
		cd_server_put_export(e);
	} else {
		for (size_t i = 0; i < s->nexports; i++)
			json_array_append_new(list, export_status(&s->exports[i]));
		pool_status(s, list);
		if (s->queue)
			cd_queue_foreach_user(s->queue, user_status, users);
	}
	r = ok_reply();
	json_object_set_new(r, "pid", json_integer(getpid()));
	json_object_set_new(r, "exports", list);
	json_object_set_new(r, "users", users);
	return r;
}

static json_t *flush_reply(struct cdisk_server *s, int r)
{
	return r < 0 ? error_reply(r, "%s", cdisk_ctx_error(s->ctx)) : ok_reply();
}

/* One export by name, a pool's image too (its message read before it is
 * given back: its close would overwrite it). */
static json_t *flush_one(struct cdisk_server *s, const char *name)
{
	struct cd_export *e = cd_server_find_export(s, name);
	json_t *reply;

	if (e)
		return flush_reply(s, cdisk_flush(e->disk));
	if (!s->pool || !(e = cd_pool_get(s->pool, name)))
		return error_reply(-ENOENT, "no export named '%s'", name);
	reply = flush_reply(s, cdisk_flush(e->disk));
	cd_pool_put(e);
	return reply;
}

static json_t *flush_all(struct cdisk_server *s)
{
	struct cd_export **held = NULL;
	size_t nheld = 0;
	json_t *reply;
	int r = 0;

	for (size_t i = 0; i < s->nexports && r == 0; i++)
		r = cdisk_flush(s->exports[i].disk);
	if (r == 0 && s->pool && (r = cd_pool_hold_all(s->pool, &held, &nheld)) < 0)
		return error_reply(r, "out of memory");
	for (size_t i = 0; i < nheld && r == 0; i++)
		r = cdisk_flush(held[i]->disk);
	reply = flush_reply(s, r);
	for (size_t i = 0; i < nheld; i++)
		cd_pool_put(held[i]);
	free(held);
	return reply;
}

static json_t *cmd_flush(struct cdisk_server *s, json_t *req)
{
	const char *name = json_string_value(json_object_get(req, "export"));

	return name ? flush_one(s, name) : flush_all(s);
}

static json_t *cmd_info(struct cdisk_server *s, json_t *req)
{
	const char *disk = json_string_value(json_object_get(req, "disk"));
	struct cd_export *e = disk ? export_for_disk(s, disk) : NULL;
	struct cdisk_info info;
	json_t *r;

	if (!disk)
		return error_reply(-EINVAL, "'info' needs \"disk\"");
	/* A pool's image is held while it is looked at: it may be removed. */
	if (!e)
		e = cd_pool_get_by_path(s->pool, disk);
	if (!e)
		return error_reply(-ENOENT, "'%s' is not served here", disk);
	cdisk_get_info(e->disk, &info);
	r = ok_reply();
	json_object_set_new(r, "export", json_string(e->name));
	json_object_set_new(r, "io", io_json(&e->io));
	cd_server_put_export(e);
	json_object_set_new(r, "info", cd_control_info_to_json(&info));
	return r;
}

/* The export serving the request's "disk", a pool's image held (give it
 * back with cd_server_put_export). */
static struct cd_export *export_of_request(struct cdisk_server *s, json_t *req,
					   json_t **error)
{
	const char *disk = json_string_value(json_object_get(req, "disk"));
	struct cd_export *e = disk ? export_for_disk(s, disk) : NULL;

	/* A pool's image no client has opened yet gets its gate here: the
	 * copies a verb starts (a mirror's) go through the queue too. */
	if (!e && disk && (e = cd_pool_get_by_path(s->pool, disk)))
		cd_export_gate(s, e);
	if (!disk)
		*error = error_reply(-EINVAL, "request needs \"disk\"");
	else if (!e)
		*error = error_reply(-ENOENT, "'%s' is not served here", disk);
	return e;
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
		cd_server_put_export(e);
		return NULL;
	}
	if (depth < 0 || depth > 256 || rate < 0 || max_seconds < 0 ||
	    max_seconds > UINT32_MAX || min_dirty < 0 || offset < 0 || length < 0 ||
	    target_delay < -1 || target_delay > 10000) {
		*error = error_reply(-EINVAL, "sync options out of range");
		cd_server_put_export(e);
		return NULL;
	}
	if (strcmp(mode, "push") && strcmp(mode, "pull") && strcmp(mode, "close")) {
		*error = error_reply(-EINVAL, "sync mode must be push, pull or close");
		cd_server_put_export(e);
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
	/* A pool's image may go while a job runs: the server runs none on
	 * them (yet); cdisk-sync does, once no one uses it. */
	if (e->pool)
		err = error_reply(-EAGAIN, "'%s' is a pool image: the server does not sync "
				  "those; sync it once its clients are gone", e->path);
	else if (e->readonly)
		err = error_reply(-EROFS, "export '%s' is read-only", e->name);
	if (err) {
		cd_server_put_export(e);
		return err;
	}
	switch (cd_control_start_job(s, e, mode, &opts)) {
	case -EBUSY:
		return error_reply(-EBUSY, "'%s': a sync is already running", e->path);
	case 0:
		return ok_reply();
	default:
		return error_reply(-ENOMEM, "cannot start a sync");
	}
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
	if (running) {
		r = error_reply(-EBUSY, "'%s': a sync is already running", e->path);
		cd_server_put_export(e);
		return r;
	}
	opts.dry_run = true;
	rc = mode == CDISK_SYNC_PULL ? cdisk_pull(e->disk, &opts, &st) :
	     mode == CDISK_SYNC_CLOSE ? cdisk_sync_close(e->disk, &opts, &st) :
	     cdisk_sync(e->disk, &opts, &st);
	/* The message before the image is given back: its close would
	 * overwrite it. */
	if (rc < 0) {
		r = error_reply(rc, "%s", cdisk_ctx_error(s->ctx));
	} else {
		r = ok_reply();
		json_object_set_new(r, "result", cd_control_stats_to_json(&st));
	}
	cd_server_put_export(e);
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
		json_object_set_new(r, "result", cd_control_stats_to_json(&e->sync.stats));
		json_object_set_new(r, "errno", json_integer(-e->sync.result));
		if (e->sync.result < 0)
			json_object_set_new(r, "error", json_string(e->sync.error));
	}
	pthread_mutex_unlock(&s->lock);
	cd_server_put_export(e);
	return r;
}

static json_t *cmd_sync_stop(struct cdisk_server *s, json_t *req)
{
	json_t *err = NULL;
	struct cd_export *e = export_of_request(s, req, &err);

	if (!e)
		return err;
	pthread_mutex_lock(&s->lock);
	if (e->sync.running)
		e->sync.stop = 1;
	pthread_mutex_unlock(&s->lock);
	cdisk_sync_stop(e->disk);
	cd_server_put_export(e);
	return ok_reply();
}

/* ---- the mirror ---- */

/* The errno goes with the exit code: a client says and exits as it would
 * on an idle disk (a mirror already attached is a refusal, not a failure). */
static json_t *mirror_error(int err, const char *msg)
{
	json_t *r = error_reply(err, "%s", msg);

	json_object_set_new(r, "errno", json_integer(-err));
	return r;
}

static int mirror_verb(struct cd_export *e, const char *verb, json_t *req,
		       json_t **error)
{
	const char *uri = json_string_value(json_object_get(req, "uri"));

	if (!strcmp(verb, "status"))
		return 0;
	if (e->readonly) {
		char msg[300];
		snprintf(msg, sizeof(msg), "export '%s' is read-only", e->name);
		*error = mirror_error(-EROFS, msg);
		return -EROFS;
	}
	if (!strcmp(verb, "attach")) {
		if (!uri || !*uri) {
			*error = mirror_error(-EINVAL, "'mirror-attach' needs \"uri\"");
			return -EINVAL;
		}
		return cdisk_mirror_attach(e->disk, uri);
	}
	if (!strcmp(verb, "detach"))
		return cdisk_mirror_detach(e->disk);
	if (!strcmp(verb, "restore")) {
		struct cdisk_restore_opts o = {
			.flags = json_is_true(json_object_get(req, "switch")) ?
				 CDISK_RESTORE_SWITCH : 0,
			.on_complete = json_string_value(json_object_get(req, "on_complete")),
		};

		if (!uri || !*uri) {
			*error = mirror_error(-EINVAL, "'mirror-restore' needs \"uri\"");
			return -EINVAL;
		}
		return cdisk_restore_start(e->disk, uri, &o);
	}
	if (!strcmp(verb, "verify")) {
		json_int_t rate = json_integer_value(json_object_get(req, "rate"));
		struct cdisk_verify_opts o = {
			.repair = json_is_true(json_object_get(req, "repair")),
			.rate = rate > 0 ? (uint64_t)rate : 0,
		};

		return cd_verify_request(e->disk, &o);
	}
	if (!strcmp(verb, "pause") || !strcmp(verb, "resume"))
		return cdisk_mirror_pause(e->disk, !strcmp(verb, "pause"));
	if (!strcmp(verb, "failover")) {
		uint64_t lost;

		return cdisk_mirror_failover(e->disk,
					     json_is_true(json_object_get(req, "force")), &lost);
	}
	/* resync */
	return cdisk_mirror_resync(e->disk, json_is_true(json_object_get(req, "full")));
}

/* mirror-attach, -detach, -pause, -resume, -resync, -verify, -restore and
 * -status: the
 * library's calls on the served disk, answered with the mirror's status
 * after them.  The copy is the keeper thread's (cdisk_mirror_start), so
 * an attach is answered once the mirror is checked and recorded. */
static json_t *cmd_mirror(struct cdisk_server *s, json_t *req, const char *verb)
{
	json_t *err = NULL, *r;
	struct cd_export *e = export_of_request(s, req, &err);
	struct cdisk_mirror_status st;
	int rc;

	if (!e)
		return err;
	rc = mirror_verb(e, verb, req, &err);
	if (rc == 0 && !err)
		rc = cdisk_mirror_get_status(e->disk, &st);
	if (!err && rc < 0)
		err = mirror_error(rc, cdisk_ctx_error(s->ctx));
	cd_server_put_export(e);
	if (err)
		return err;
	r = ok_reply();
	json_object_set_new(r, "mirror", cd_control_mirror_to_json(&st));
	return r;
}

/* mirror-verify-status: the served disk's verify, under way or done
 * (its differing ranges once done). */
static json_t *cmd_verify_status(struct cdisk_server *s, json_t *req)
{
	json_t *err = NULL, *r, *ranges;
	struct cd_export *e = export_of_request(s, req, &err);
	struct cd_verify_job_status st;

	if (!e)
		return err;
	cd_verify_job_get(e->disk, &st);
	cd_server_put_export(e);
	if (!st.known) {
		cdisk_verify_result_free(&st.res);
		return mirror_error(-ENOENT, "no verify was asked for");
	}
	r = ok_reply();
	json_object_update_new(r, json_pack("{s:b, s:I, s:I}", "running", st.running,
					    "done_bytes", (json_int_t)st.done_bytes,
					    "total_bytes", (json_int_t)st.total_bytes));
	if (!st.running && st.result < 0) {
		json_object_set_new(r, "errno", json_integer(-st.result));
		json_object_set_new(r, "error", json_string(st.error));
	} else if (!st.running) {
		ranges = json_array();
		for (size_t i = 0; i < st.res.nranges; i++)
			json_array_append_new(ranges, json_pack("{s:I, s:I}", "offset",
				(json_int_t)st.res.ranges[i].offset, "length",
				(json_int_t)st.res.ranges[i].length));
		json_object_set_new(r, "result", json_pack(
			"{s:I, s:I, s:I, s:I, s:I, s:I, s:b, s:b, s:f, s:o}",
			"size", (json_int_t)st.res.size,
			"compared_bytes", (json_int_t)st.res.compared_bytes,
			"differing_bytes", (json_int_t)st.res.differing_bytes,
			"out_of_sync_bytes", (json_int_t)st.res.out_of_sync_bytes,
			"busy_bytes", (json_int_t)st.res.busy_bytes,
			"recompared_bytes", (json_int_t)st.res.recompared_bytes,
			"repaired", st.res.repaired, "stopped", st.res.stopped,
			"seconds", st.res.seconds, "ranges", ranges));
	}
	cdisk_verify_result_free(&st.res);
	return r;
}

static bool is_mirror_verb(const char *command)
{
	static const char *const verbs[] = {
		"mirror-attach", "mirror-detach", "mirror-pause", "mirror-resume",
		"mirror-resync", "mirror-status", "mirror-failover", "mirror-verify",
		"mirror-restore",
	};

	for (size_t i = 0; i < CD_ARRAY_SIZE(verbs); i++)
		if (!strcmp(command, verbs[i]))
			return true;
	return false;
}

/* ---- the pool (cdisk-serve --pool) ---- */

static json_t *no_pool(void)
{
	return error_reply(-ENOENT, "this server has no pool (cdisk-serve --pool DIR)");
}

static json_t *cmd_rescan(struct cdisk_server *s)
{
	struct cd_pool_scan res;
	json_t *r, *skipped;

	if (!s->pool)
		return no_pool();
	if (cd_pool_rescan(s->pool, &res) < 0)
		return error_reply(-EIO, "%s", cdisk_ctx_error(s->ctx));
	r = ok_reply();
	skipped = json_array();
	for (size_t i = 0; i < res.nskipped; i++)
		json_array_append_new(skipped, json_pack("{s:s, s:s}", "name",
							 res.skipped[i].name, "reason",
							 res.skipped[i].reason));
	json_object_set_new(r, "added", json_integer(res.added));
	json_object_set_new(r, "removed", json_integer(res.removed));
	json_object_set_new(r, "served", json_integer(res.served));
	json_object_set_new(r, "skipped", skipped);
	cd_pool_scan_free(&res);
	return r;
}

static int list_image(void *opaque, const struct cdisk_pool_image *img, int connections)
{
	json_t *o = json_pack("{s:s, s:s, s:s, s:b, s:I, s:I, s:b}", "export",
			      img->export_name, "user", img->user, "image", img->image,
			      "read_only", img->shared, "size", (json_int_t)img->size,
			      "used_bytes", (json_int_t)img->used_bytes, "served",
			      connections >= 0);

	if (connections >= 0)
		json_object_set_new(o, "connections", json_integer(connections));
	if (img->skipped)
		json_object_set_new(o, "skipped", json_string(img->skipped));
	else
		json_object_set_new(o, "path", json_string(img->path));
	json_array_append_new(opaque, o);
	return 0;
}

static json_t *cmd_pool_list(struct cdisk_server *s, json_t *req)
{
	const char *user = json_string_value(json_object_get(req, "user"));
	json_t *list, *r;
	int rc;

	if (!s->pool)
		return no_pool();
	list = json_array();
	rc = cd_pool_list_served(s->pool, user, list_image, list);
	if (rc < 0) {
		json_decref(list);
		return error_reply(rc, "%s", cdisk_ctx_error(s->ctx));
	}
	r = ok_reply();
	json_object_set_new(r, "images", list);
	return r;
}

/* pool-create and pool-delete: a user's image by its two names. */
static json_t *cmd_pool_change(struct cdisk_server *s, json_t *req, bool create)
{
	const char *user = NULL, *image = NULL, *base = NULL;
	json_int_t size = 0;
	int rc;

	if (!s->pool)
		return no_pool();
	if (json_unpack(req, "{s:s, s:s, s?I, s?s}", "user", &user, "image", &image,
			"size", &size, "base", &base) < 0 || size < 0)
		return error_reply(-EINVAL, "'%s' needs \"user\" and \"image\"%s",
				   create ? "pool-create" : "pool-delete",
				   create ? ", and \"size\" or \"base\"" : "");
	rc = create ? cd_pool_create(s->pool, user, image, (uint64_t)size, base)
		    : cd_pool_delete(s->pool, user, image);
	if (rc < 0) {
		json_t *r = error_reply(rc, "%s", cdisk_ctx_error(s->ctx));
		json_object_set_new(r, "errno", json_integer(-rc));
		return r;
	}
	return ok_reply();
}

/* A limit given in the request replaces the one in effect; the others
 * stay.  -1: absent; -2: not a number in range. */
static int take_limit(json_t *req, const char *key, uint64_t max, uint64_t *out)
{
	json_t *v = json_object_get(req, key);

	if (!v)
		return -1;
	if (!json_is_integer(v) || json_integer_value(v) < 0 ||
	    (uint64_t)json_integer_value(v) > max)
		return -2;
	*out = (uint64_t)json_integer_value(v);
	return 0;
}

/* user-limits: a user's limits, at once and until the users file is read
 * again (SIGHUP). */
static json_t *cmd_user_limits(struct cdisk_server *s, json_t *req)
{
	static const struct { const char *key; uint64_t max; } keys[] = {
		{ "iops", 100000000 }, { "bandwidth", 1ull << 40 }, { "burst_ms", 3600000 },
		{ "queue_depth", 4096 }, { "connections", 100000 },
	};
	const char *name = json_string_value(json_object_get(req, "user"));
	struct cd_queue *q = cd_server_queue(s);
	struct cd_user_limits l = { 0 };
	uint64_t v[5];
	char user[CD_USER_NAME_MAX + 8];

	if (!name || !cd_user_name_valid(name))
		return error_reply(-EINVAL, "'user-limits' needs \"user\", a user's name");
	if (!q)
		return error_reply(-EAGAIN, "the server's queue cannot start");
	snprintf(user, sizeof(user), "user:%s", name);
	if (!cd_queue_limits_of(q, user, &l)) {
		pthread_rwlock_rdlock(&s->users_lock);
		const struct cd_user *u = s->users ? cd_users_find(s->users, name) : NULL;
		if (u)
			l = u->limits;
		pthread_rwlock_unlock(&s->users_lock);
	}
	v[0] = l.iops, v[1] = l.bytes_per_second, v[2] = l.burst_ms;
	v[3] = l.queue_depth, v[4] = l.connections;
	for (size_t i = 0; i < CD_ARRAY_SIZE(keys); i++)
		if (take_limit(req, keys[i].key, keys[i].max, &v[i]) == -2)
			return error_reply(-EINVAL, "\"%s\" must be a whole number from 0 to %llu",
					   keys[i].key, (unsigned long long)keys[i].max);
	l = (struct cd_user_limits){ .iops = v[0], .bytes_per_second = v[1],
				     .burst_ms = (uint32_t)v[2], .queue_depth = (uint32_t)v[3],
				     .connections = (uint32_t)v[4] };
	int r = cd_queue_set_limits(q, user, &l);
	if (r < 0)
		return error_reply(r, "%s", cdisk_ctx_error(s->ctx));
	cd_log(s->ctx, CDISK_LOG_INFO, "limits of user '%s' set: iops %llu, bandwidth %llu, "
	       "burst %llu ms, queue depth %llu, connections %llu", name,
	       (unsigned long long)v[0], (unsigned long long)v[1], (unsigned long long)v[2],
	       (unsigned long long)v[3], (unsigned long long)v[4]);
	json_t *reply = ok_reply();
	json_object_set_new(reply, "limits",
			    json_pack("{s:I, s:I, s:I, s:I, s:I}", "iops", (json_int_t)v[0],
				      "bandwidth", (json_int_t)v[1], "burst_ms", (json_int_t)v[2],
				      "queue_depth", (json_int_t)v[3],
				      "connections", (json_int_t)v[4]));
	return reply;
}

/* Verbs that change state (flush, sync, stop, the mirror's but its
 * status): only for root, the server's own user and the control socket's
 * group.  Looking is for anyone who can open the socket. */
static bool changes_state(const char *command)
{
	return strcmp(command, "status") && strcmp(command, "info") &&
	       strcmp(command, "sync-status") && strcmp(command, "sync-dry-run") &&
	       strcmp(command, "mirror-status") && strcmp(command, "pool-list") &&
	       strcmp(command, "mirror-verify-status");
}

/* may_change: the peer may change state; owner: it is root or the
 * server's own user, who alone may have the server run a command. */
static json_t *dispatch(struct cdisk_server *s, const char *line, bool may_change,
			bool owner)
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
	else if (!owner && json_object_get(req, "on_complete"))
		reply = error_reply(-EPERM, "\"on_complete\" runs a command as the "
				    "server's user: only for root and that user");
	else if (!strcmp(command, "status"))
		reply = cmd_status(s, req);
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
	else if (!strcmp(command, "rescan"))
		reply = cmd_rescan(s);
	else if (!strcmp(command, "pool-list"))
		reply = cmd_pool_list(s, req);
	else if (!strcmp(command, "pool-create") || !strcmp(command, "pool-delete"))
		reply = cmd_pool_change(s, req, !strcmp(command, "pool-create"));
	else if (!strcmp(command, "user-limits"))
		reply = cmd_user_limits(s, req);
	else if (!strcmp(command, "mirror-verify-status"))
		reply = cmd_verify_status(s, req);
	else if (is_mirror_verb(command))
		reply = cmd_mirror(s, req, command + strlen("mirror-"));
	else
		reply = error_reply(-EINVAL, "unknown command '%.100s'", command);
	json_decref(req);
	return reply;
}

char *cd_control_answer(struct cdisk_server *s, const char *line)
{
	json_t *reply = dispatch(s, line, true, true);
	char *text = json_dumps(reply, JSON_COMPACT);

	json_decref(reply);
	return text;
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
static bool peer_is_owner(int fd)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);

	return getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 &&
	       (cred.uid == 0 || cred.uid == geteuid());
}

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

	pthread_setname_np(pthread_self(), "cdisk-control");
	if (line) {
		struct timeval tv = { .tv_sec = CONTROL_TIMEOUT_MS / 1000 };

		/* Accepted without blocking; from here a slow client costs
		 * only this thread, and only for so long. */
		fcntl(cr->fd, F_SETFL, fcntl(cr->fd, F_GETFL) & ~O_NONBLOCK);
		setsockopt(cr->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		r = cd_control_read_line(cr->fd, line, CONTROL_MAX_LINE);
		if (r == -E2BIG)
			send_json(cr->fd, error_reply(-EINVAL, "request longer than %u bytes",
						      CONTROL_MAX_LINE));
		else if (r == 0)
			send_json(cr->fd, dispatch(s, line, peer_may_change(s, cr->fd),
						   peer_is_owner(cr->fd)));
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

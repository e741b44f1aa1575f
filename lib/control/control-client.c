/* The control socket's client, which the programs link: ask the
 * process that owns a disk for its information, or to sync it. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "cdisk.h"
#include "control.h"
#include "ctx.h"
#include "disk.h"
#include "util.h"

/* How long a client waiting for its sync keeps asking a server that does
 * not answer its status requests in time (a loaded host). */
#define OWNER_PATIENCE_MS 60000

/* max: the longest reply taken, its newline included. */
static int call_max(struct cdisk_ctx *ctx, const char *socket_path, json_t *req,
		    json_t **out, int timeout_ms, size_t max)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	char *text = json_dumps(req, JSON_COMPACT), *line = malloc(max);
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
	r = cd_control_read_line_within(fd, line, max, timeout_ms);
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

static int call_within(struct cdisk_ctx *ctx, const char *socket_path, json_t *req,
		       json_t **out, int timeout_ms)
{
	return call_max(ctx, socket_path, req, out, timeout_ms, CONTROL_MAX_LINE);
}

static int call(struct cdisk_ctx *ctx, const char *socket_path, json_t *req,
		json_t **out)
{
	return call_within(ctx, socket_path, req, out, CONTROL_TIMEOUT_MS);
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
	cd_control_info_from_json(json_object_get(reply, "info"), info);
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

/* The longest the owner may take over one request to a target: the
 * configured timeout, every retry, and 10 s for the rest. */
static uint64_t request_bound_ms(const struct cdisk_ctx *ctx)
{
	return ((uint64_t)ctx->cfg.timeout * (ctx->cfg.retries + 1u) + 10u) * 1000u;
}

/* When the client gives up on an owner's sync that should have stopped
 * (--max-time passed, or the client was interrupted) and has not: the
 * owner finishes the requests in flight and flushes the target first,
 * which takes at most twice request_bound_ms (by this host's
 * configuration, which the server on it reads too), after a health
 * check (--if-healthy) of at most the probe's time; past that, a server
 * that is stopped, or stuck, must not hold a cron job for ever.
 * UINT64_MAX while nothing asks it to stop, and always for a sync that
 * verifies (--verify, --close): reading back is not cut short by a stop,
 * and may rightly take long. */
static uint64_t give_up_at(struct cdisk_ctx *ctx, enum cdisk_sync_mode mode,
			   const struct cdisk_sync_opts *o, uint64_t started,
			   uint64_t *stop_asked)
{
	if (o->verify || mode == CDISK_SYNC_CLOSE)
		return UINT64_MAX;
	if (!*stop_asked && o->stop && *o->stop)
		*stop_asked = cd_now_ms();
	uint64_t stop = o->max_seconds ? started + o->max_seconds * 1000ull : UINT64_MAX;
	if (*stop_asked && *stop_asked < stop)
		stop = *stop_asked;
	if (stop == UINT64_MAX)
		return stop;
	stop += 2 * request_bound_ms(ctx);
	if (o->if_healthy)
		stop += ctx->cfg.probe.max_seconds * 1000ull;
	return stop;
}

static int owner_did_not_stop(struct cdisk_ctx *ctx, const char *path, unsigned pid,
			      const char *sock)
{
	json_t *ignored = NULL;

	/* Asked once more, whatever came of the first: it may stop yet. */
	if (owner_call(ctx, sock, path, pid,
		       json_pack("{s:s, s:s}", "command", "sync-stop", "disk", path),
		       &ignored) == 0)
		json_decref(ignored);
	return cd_error(ctx, -ETIMEDOUT,
			"'%s': pid %u did not end its sync in time (the last request's "
			"timeouts past the time to stop); it was asked to stop and may "
			"still be running", path, pid);
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
		cd_control_stats_from_json(json_object_get(reply, "result"), st);
		json_decref(reply);
		return 0;
	}
	json_decref(reply);
	uint64_t started = cd_now_ms(), stop_asked = 0;
	for (bool stop_sent = false;;) {
		uint64_t asked = cd_now_ms();
		bool running;

		usleep(100 * 1000);
		r = sync_status(ctx, sock, path, pid, &reply);
		/* A server too busy to answer one status request is still
		 * syncing: giving up would leave its sync running with no one
		 * waiting for it. */
		while ((r == -ETIMEDOUT || r == -EAGAIN) &&
		       cd_now_ms() - asked < OWNER_PATIENCE_MS &&
		       cd_now_ms() < give_up_at(ctx, mode, o, started, &stop_asked)) {
			usleep(500 * 1000);
			r = sync_status(ctx, sock, path, pid, &reply);
		}
		bool unanswered = r == -ETIMEDOUT || r == -EAGAIN;
		if (r < 0 && !unanswered)
			return r;
		running = !unanswered && json_is_true(json_object_get(reply, "running"));
		/* Still at it, or not saying, past the time it had to stop. */
		if ((unanswered || running) &&
		    cd_now_ms() >= give_up_at(ctx, mode, o, started, &stop_asked)) {
			if (!unanswered)
				json_decref(reply);
			return owner_did_not_stop(ctx, path, pid, sock);
		}
		if (unanswered)
			return r;
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
	cd_control_stats_from_json(json_object_get(reply, "result"), st);
	r = -(int)json_integer_value(json_object_get(reply, "errno"));
	if (r < 0) {
		const char *e = json_string_value(json_object_get(reply, "error"));
		cd_error(ctx, r, "%s", e ? e : "the owner's sync failed");
	}
	json_decref(reply);
	return r;
}

/* ---- the mirror, through the owner ---- */

static const char *const mirror_commands[] = {
	[CDISK_MIRROR_ATTACH] = "mirror-attach", [CDISK_MIRROR_DETACH] = "mirror-detach",
	[CDISK_MIRROR_PAUSE] = "mirror-pause", [CDISK_MIRROR_RESUME] = "mirror-resume",
	[CDISK_MIRROR_RESYNC] = "mirror-resync", [CDISK_MIRROR_RESYNC_FULL] = "mirror-resync",
	[CDISK_MIRROR_STATUS] = "mirror-status", [CDISK_MIRROR_FAILOVER] = "mirror-failover",
	[CDISK_MIRROR_FAILOVER_FORCE] = "mirror-failover",
};

/* An attach is answered once the server has checked the mirror, which
 * takes as long as the mirror's requests may (retries included); the
 * other verbs answer at once. */
static int mirror_deadline_ms(struct cdisk_ctx *ctx, enum cdisk_mirror_verb verb)
{
	uint64_t ms = request_bound_ms(ctx);

	if (verb != CDISK_MIRROR_ATTACH || ms < CONTROL_TIMEOUT_MS)
		return CONTROL_TIMEOUT_MS;
	return ms > INT32_MAX ? INT32_MAX : (int)ms;
}

static int mirror_call(struct cdisk_ctx *ctx, const char *sock, enum cdisk_mirror_verb verb,
		       json_t *req, json_t **reply)
{
	uint64_t asked = cd_now_ms();
	int r = call_within(ctx, sock, req, reply, mirror_deadline_ms(ctx, verb));

	/* A loaded server late with a status is still there: ask again, as a
	 * sync's client does, rather than call the mirror unknown. */
	while (verb == CDISK_MIRROR_STATUS && (r == -ETIMEDOUT || r == -EAGAIN) &&
	       cd_now_ms() - asked < OWNER_PATIENCE_MS) {
		usleep(500 * 1000);
		r = call(ctx, sock, req, reply);
	}
	return r;
}

/* req: the verb's request, which this takes. */
static int mirror_via_owner(struct cdisk_ctx *ctx, const char *path,
			    enum cdisk_mirror_verb verb, json_t *req,
			    struct cdisk_mirror_status *status)
{
	char busy[CD_ERROR_MAX], sock[4096];
	json_t *reply = NULL;
	unsigned pid = 0;
	int r;

	memset(status, 0, sizeof(*status));
	memcpy(busy, cd_errbuf(), sizeof(busy));
	if (owner_socket(ctx, path, sock, sizeof(sock), &pid) < 0) {
		json_decref(req);
		goto busy;
	}
	r = mirror_call(ctx, sock, verb, req, &reply);
	json_decref(req);
	/* Nothing behind the socket (another program holds the disk): busy.
	 * No answer in time is not that: the verb may have been done. */
	if (r < 0 && r != -ETIMEDOUT)
		goto busy;
	if (r < 0)
		return r;
	if (!json_is_true(json_object_get(reply, "ok"))) {
		const char *e = json_string_value(json_object_get(reply, "error"));
		json_int_t err = json_integer_value(json_object_get(reply, "errno"));

		r = err > 0 && err < 4096 ? -(int)err :
		    errno_for_exit(json_integer_value(json_object_get(reply, "exit_code")));
		r = cd_error(ctx, r, "%s", e ? e : "the disk's server refused, saying nothing");
		json_decref(reply);
		return r;
	}
	cd_control_mirror_from_json(json_object_get(reply, "mirror"), status);
	status->served = true;
	json_decref(reply);
	return 0;
busy:
	memcpy(cd_errbuf(), busy, sizeof(busy));
	return -EBUSY;
}

int cdisk_mirror_via_owner(struct cdisk_ctx *ctx, const char *path,
			   enum cdisk_mirror_verb verb, const char *uri,
			   struct cdisk_mirror_status *status)
{
	json_t *req;

	memset(status, 0, sizeof(*status));
	if ((unsigned)verb >= CD_ARRAY_SIZE(mirror_commands))
		return cd_error(ctx, -EINVAL, "unknown mirror verb %d", (int)verb);
	req = json_pack("{s:s, s:s}", "command", mirror_commands[verb], "disk", path);
	if (uri)
		json_object_set_new(req, "uri", json_string(uri));
	if (verb == CDISK_MIRROR_RESYNC_FULL)
		json_object_set_new(req, "full", json_true());
	if (verb == CDISK_MIRROR_FAILOVER_FORCE)
		json_object_set_new(req, "force", json_true());
	return mirror_via_owner(ctx, path, verb, req, status);
}

int cdisk_restore_via_owner(struct cdisk_ctx *ctx, const char *path, const char *uri,
			    const struct cdisk_restore_opts *o,
			    struct cdisk_mirror_status *status)
{
	json_t *req = json_pack("{s:s, s:s, s:s, s:b}", "command", "mirror-restore",
				"disk", path, "uri", uri, "switch",
				(o->flags & CDISK_RESTORE_SWITCH) != 0);

	if (o->on_complete)
		json_object_set_new(req, "on_complete", json_string(o->on_complete));
	/* Checked as an attach is: its deadline. */
	return mirror_via_owner(ctx, path, CDISK_MIRROR_ATTACH, req, status);
}

/* ---- verify, through the owner ---- */

static void verify_result_from_json(json_t *j, struct cdisk_verify_result *res)
{
	json_t *ranges = json_object_get(j, "ranges"), *x;
	size_t i;

	res->size = (uint64_t)json_integer_value(json_object_get(j, "size"));
	res->compared_bytes = (uint64_t)json_integer_value(json_object_get(j, "compared_bytes"));
	res->differing_bytes = (uint64_t)json_integer_value(json_object_get(j, "differing_bytes"));
	res->out_of_sync_bytes =
		(uint64_t)json_integer_value(json_object_get(j, "out_of_sync_bytes"));
	res->busy_bytes = (uint64_t)json_integer_value(json_object_get(j, "busy_bytes"));
	res->recompared_bytes =
		(uint64_t)json_integer_value(json_object_get(j, "recompared_bytes"));
	res->repaired = json_is_true(json_object_get(j, "repaired"));
	res->stopped = json_is_true(json_object_get(j, "stopped"));
	res->seconds = json_number_value(json_object_get(j, "seconds"));
	res->served = true;
	if (!json_array_size(ranges))
		return;
	res->ranges = calloc(json_array_size(ranges), sizeof(*res->ranges));
	if (!res->ranges)
		return;
	json_array_foreach(ranges, i, x) {
		res->ranges[i].offset = (uint64_t)json_integer_value(json_object_get(x, "offset"));
		res->ranges[i].length = (uint64_t)json_integer_value(json_object_get(x, "length"));
	}
	res->nranges = json_array_size(ranges);
}

/* The owner's refusal with its own errno (a verify already running is
 * -EALREADY, as on the owner). */
static int verify_refused(struct cdisk_ctx *ctx, json_t *reply)
{
	const char *e = json_string_value(json_object_get(reply, "error"));
	json_int_t err = json_integer_value(json_object_get(reply, "errno"));
	int r = err > 0 && err < 4096 ? -(int)err :
		errno_for_exit(json_integer_value(json_object_get(reply, "exit_code")));

	return cd_error(ctx, r, "%s", e ? e : "the disk's server refused, saying nothing");
}

static int verify_status(struct cdisk_ctx *ctx, const char *sock, const char *path,
			 json_t **reply)
{
	json_t *req = json_pack("{s:s, s:s}", "command", "mirror-verify-status", "disk", path);
	uint64_t asked = cd_now_ms();
	int r = call(ctx, sock, req, reply);

	/* A loaded server late with an answer is still verifying. */
	while ((r == -ETIMEDOUT || r == -EAGAIN) && cd_now_ms() - asked < OWNER_PATIENCE_MS) {
		usleep(500 * 1000);
		r = call(ctx, sock, req, reply);
	}
	json_decref(req);
	if (r == 0 && !json_is_true(json_object_get(*reply, "ok"))) {
		r = verify_refused(ctx, *reply);
		json_decref(*reply);
		*reply = NULL;
	}
	return r;
}

int cdisk_mirror_verify_via_owner(struct cdisk_ctx *ctx, const char *path,
				  const struct cdisk_verify_opts *o,
				  struct cdisk_verify_result *res)
{
	char busy[CD_ERROR_MAX], sock[4096];
	json_t *req, *reply = NULL;
	unsigned pid = 0;
	int r;

	memset(res, 0, sizeof(*res));
	memcpy(busy, cd_errbuf(), sizeof(busy));
	if (owner_socket(ctx, path, sock, sizeof(sock), &pid) < 0)
		goto busy;
	req = json_pack("{s:s, s:s, s:b, s:I}", "command", "mirror-verify", "disk", path,
			"repair", o->repair, "rate", (json_int_t)o->rate);
	r = call(ctx, sock, req, &reply);
	json_decref(req);
	if (r < 0 && r != -ETIMEDOUT)
		goto busy;
	if (r < 0)
		return r;
	if (!json_is_true(json_object_get(reply, "ok"))) {
		r = verify_refused(ctx, reply);
		json_decref(reply);
		return r;
	}
	json_decref(reply);
	/* The verify is the server's work: a client that stops waiting
	 * leaves it going, its result for the next 'mirror-verify-status'. */
	for (;;) {
		usleep(200 * 1000);
		r = verify_status(ctx, sock, path, &reply);
		if (r < 0)
			return r;
		if (!json_is_true(json_object_get(reply, "running")))
			break;
		if (o->progress)
			o->progress(o->opaque,
				    (uint64_t)json_integer_value(json_object_get(reply, "done_bytes")),
				    (uint64_t)json_integer_value(json_object_get(reply, "total_bytes")));
		json_decref(reply);
		if (o->stop && *o->stop)
			return cd_error(ctx, -EINTR, "'%s': stopped waiting; its server goes on "
					"with the verify", path);
	}
	r = -(int)json_integer_value(json_object_get(reply, "errno"));
	if (r < 0) {
		const char *e = json_string_value(json_object_get(reply, "error"));
		cd_error(ctx, r, "%s", e ? e : "the server's verify failed");
	} else {
		verify_result_from_json(json_object_get(reply, "result"), res);
	}
	json_decref(reply);
	return r;
busy:
	memcpy(cd_errbuf(), busy, sizeof(busy));
	return -EBUSY;
}

/* ---- statistics ---- */

/* A status reply as text, or the server's refusal with its exit code
 * (reply taken). */
static int status_text(struct cdisk_ctx *ctx, const char *sock, json_t *reply, char **json)
{
	int r;

	if (!json_is_true(json_object_get(reply, "ok"))) {
		const char *e = json_string_value(json_object_get(reply, "error"));

		r = cd_error(ctx, errno_for_exit(json_integer_value(json_object_get(reply,
										    "exit_code"))),
			     "the server at '%s' says: %s", sock, e ? e : "(no message)");
		json_decref(reply);
		return r;
	}
	*json = json_dumps(reply, JSON_COMPACT);
	json_decref(reply);
	return *json ? 0 : cd_error(ctx, -ENOMEM, "out of memory");
}

/* req taken; *reply NULL when the server could not be asked. */
static int status_call(struct cdisk_ctx *ctx, const char *sock, json_t *req, json_t **reply)
{
	int r = call_max(ctx, sock, req, reply, CONTROL_TIMEOUT_MS, CONTROL_MAX_STATUS);

	json_decref(req);
	if (r < 0)
		*reply = NULL;
	return r;
}

int cdisk_server_status(struct cdisk_ctx *ctx, const char *socket_path, char **json)
{
	json_t *reply;
	int r = status_call(ctx, socket_path, json_pack("{s:s}", "command", "status"), &reply);

	*json = NULL;
	return r < 0 ? r : status_text(ctx, socket_path, reply, json);
}

int cdisk_status_from_owner(struct cdisk_ctx *ctx, const char *path, char **json)
{
	char sock[4096];
	unsigned pid = UINT32_MAX;   /* left so when the disk cannot be opened */
	json_t *reply;
	int r;

	*json = NULL;
	r = owner_socket(ctx, path, sock, sizeof(sock), &pid);
	if (r == -ENOENT && pid == 0)
		return cd_error(ctx, -ENOENT, "'%s' is not served: no statistics to show", path);
	if (r < 0)
		return r;
	r = status_call(ctx, sock, json_pack("{s:s, s:s}", "command", "status", "disk", path),
			&reply);
	/* No server behind the socket: another program holds the disk. */
	if (r == -ENOENT || r == -ECONNREFUSED)
		return cd_error(ctx, -EBUSY, "'%s' is in use by pid %u, which is not a server: "
				"no statistics to show", path, pid);
	return r < 0 ? r : status_text(ctx, sock, reply, json);
}

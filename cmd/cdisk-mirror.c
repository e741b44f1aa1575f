/* cdisk-mirror: keep a synchronous mirror of a disk (cdisk-mirror(1)).
 * An idle disk is opened and worked on here; a disk that cdisk-serve
 * serves is worked on by the server, asked through its control socket,
 * and this program waits and reports as if it had done the work. */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

static const struct cli_program program = {
	.name = "cdisk-mirror",
	.args = "COMMAND NAME.cdisk [URI]",
	.summary = "keep a synchronous mirror of a cdisk: attach, detach, pause, "
		   "resume, resync, status, failover, verify",
};

static char *rate_arg;
static int max_time, full, no_copy, no_wait, force, repair;

static struct poptOption options[] = {
	{ "full", '\0', POPT_ARG_NONE, &full, 0,
	  "With resync: copy the whole disk, not only what is recorded out of sync", NULL },
	{ "no-copy", '\0', POPT_ARG_NONE, &no_copy, 0,
	  "With attach: only record the mirror; the next cdisk-serve of the disk copies", NULL },
	{ "no-wait", '\0', POPT_ARG_NONE, &no_wait, 0,
	  "With attach, resume, resync: return once the verb is accepted, without "
	  "waiting for the copy", NULL },
	{ "repair", '\0', POPT_ARG_NONE, &repair, 0,
	  "With verify: set the differing blocks out of sync and resync them", NULL },
	{ "rate", '\0', POPT_ARG_STRING, &rate_arg, 0,
	  "Copy at most RATE bytes per second (an idle disk's copy; K/M/G suffixes); "
	  "with verify: read at most RATE bytes per second from each side", "RATE" },
	{ "max-time", '\0', POPT_ARG_INT, &max_time, 0,
	  "Copy, or wait for the server's copy, at most SECONDS (exit 8 if data is "
	  "left)", "SECONDS" },
	{ "force", '\0', POPT_ARG_NONE, &force, 0,
	  "With failover: fail over to a mirror that is not in sync, losing what it "
	  "lacks", NULL },
	{ "json", 'J', POPT_ARG_NONE, &cli.json, 0,
	  "With status and verify: print the result as JSON", NULL },
	CLI_COMMON_OPTIONS,
	POPT_TABLEEND
};

enum command { ATTACH, DETACH, PAUSE, RESUME, RESYNC, STATUS, FAILOVER, VERIFY };

static const char *const command_names[] = {
	[ATTACH] = "attach", [DETACH] = "detach", [PAUSE] = "pause",
	[RESUME] = "resume", [RESYNC] = "resync", [STATUS] = "status",
	[FAILOVER] = "failover", [VERIFY] = "verify",
};

static const char *const state_names[] = {
	[CDISK_MIRROR_NONE] = "none", [CDISK_MIRROR_COPYING] = "copying",
	[CDISK_MIRROR_IN_SYNC] = "in-sync", [CDISK_MIRROR_DEGRADED] = "degraded",
	[CDISK_MIRROR_PAUSED] = "paused", [CDISK_MIRROR_FENCED] = "failed-over",
};


static const char *state_name(enum cdisk_mirror_state s)
{
	return (unsigned)s < sizeof(state_names) / sizeof(state_names[0]) &&
	       state_names[s] ? state_names[s] : "unknown";
}

static const char *when(uint64_t unix_seconds, char *buf, size_t len)
{
	time_t t = (time_t)unix_seconds;
	struct tm tm;

	if (!unix_seconds || !localtime_r(&t, &tm) ||
	    !strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm))
		snprintf(buf, len, "unknown");
	return buf;
}

static double in_sync_percent(const struct cdisk_mirror_status *s)
{
	uint64_t left = s->out_of_sync_bytes < s->size ? s->out_of_sync_bytes : s->size;

	return s->size ? 100.0 * (double)(s->size - left) / (double)s->size : 100.0;
}

/* Seconds to go at the copy's rate; -1: not known. */
static double eta_seconds(const struct cdisk_mirror_status *s)
{
	return s->copy_rate ? (double)s->out_of_sync_bytes / (double)s->copy_rate : -1;
}

/* ---- status ---- */

static json_t *json_time(uint64_t t)
{
	return t ? json_integer((json_int_t)t) : json_null();
}

/* Each target and its role: the primary (reads, and every write first)
 * and the mirror (every write, when in sync). */
static json_t *targets_json(const struct cdisk_mirror_status *s)
{
	json_t *a = json_array();

	json_array_append_new(a, s->on_primary ?
		json_pack("{s:s, s:s, s:s}", "role", "primary", "kind", "device",
			  "uri", s->primary) :
		json_pack("{s:s, s:s, s:s?}", "role", "primary", "kind", "overlay",
			  "base", s->primary[0] ? s->primary : NULL));
	if (s->state == CDISK_MIRROR_FENCED)
		json_array_append_new(a, json_pack("{s:s, s:s, s:s}", "role",
						   "former-primary", "uri", s->uri,
						   "state", "fenced"));
	else if (s->state != CDISK_MIRROR_NONE)
		json_array_append_new(a, json_pack("{s:s, s:s, s:s}", "role",
						   s->restoring ? "restore-target" : "mirror",
						   "uri", s->uri, "state",
						   state_name(s->state)));
	return a;
}

/* A restore under way (cdisk-restore --to): its target is in the
 * mirror's place until it is in sync. */
static json_t *restore_json(const struct cdisk_mirror_status *s)
{
	if (!s->restoring)
		return json_null();
	return json_pack("{s:s, s:b, s:o}", "target", s->uri, "switch", s->restore_switch,
			 "started", json_time(s->restore_started));
}

static int print_status_json(const char *path, const struct cdisk_mirror_status *s)
{
	double eta = eta_seconds(s);
	json_t *j = json_pack("{s:i, s:s, s:o, s:s, s:o, s:b, s:I, s:I, s:o, s:I, s:I, "
			      "s:o, s:I}",
			      "schema_version", 1, "disk", path,
			      "mirror", s->state != CDISK_MIRROR_NONE &&
						s->state != CDISK_MIRROR_FENCED ?
						json_string(s->uri) : json_null(),
			      "state", state_name(s->state), "since", json_time(s->since),
			      "in_sync", s->state == CDISK_MIRROR_IN_SYNC,
			      "size", (json_int_t)s->size,
			      "out_of_sync_bytes", (json_int_t)s->out_of_sync_bytes,
			      "percent_in_sync", s->state != CDISK_MIRROR_NONE ?
						 json_real(in_sync_percent(s)) : json_null(),
			      "copied_bytes", (json_int_t)s->copied_bytes,
			      "copy_rate", (json_int_t)s->copy_rate,
			      "eta_seconds", s->state == CDISK_MIRROR_COPYING && eta >= 0
					     ? json_real(eta) : json_null(),
			      "recovered_bytes", (json_int_t)s->recovered_bytes);

	if (j && json_object_set_new(j, "targets", targets_json(s)) < 0) {
		json_decref(j);
		j = NULL;
	}
	if (j && json_object_set_new(j, "former_primary", s->state == CDISK_MIRROR_FENCED ?
				     json_string(s->uri) : json_null()) < 0) {
		json_decref(j);
		j = NULL;
	}
	if (j && json_object_update_new(j, json_pack("{s:o, s:o}", "primary",
			s->on_primary ? json_string(s->primary) : json_null(),
			"restore", restore_json(s))) < 0) {
		json_decref(j);
		j = NULL;
	}
	if (j && json_object_update_new(j, json_pack("{s:o, s:o, s:I, s:s, s:b}",
			"last_error", s->last_error[0] ? json_string(s->last_error) : json_null(),
			"last_error_time", s->last_error[0] ? json_time(s->last_error_time)
							    : json_null(),
			"timeout_ms", (json_int_t)s->timeout_ms,
			"on_error", s->fail_on_error ? "fail" : "degrade",
			"served", s->served)) < 0) {
		json_decref(j);
		j = NULL;
	}
	return cli_print_json(j);
}

static void print_state(const struct cdisk_mirror_status *s)
{
	char a[32], t[32];
	double eta = eta_seconds(s);

	switch (s->state) {
	case CDISK_MIRROR_COPYING:
		printf("state:          copying, %.0f%% in sync, %s left", in_sync_percent(s),
		       cd_format_size(s->out_of_sync_bytes, a, sizeof(a)));
		if (eta >= 0)
			printf(", %.0f s to go at %.1f MiB/s", eta,
			       (double)s->copy_rate / 1048576);
		printf("\n");
		break;
	case CDISK_MIRROR_IN_SYNC:
		printf("state:          in sync since %s\n", when(s->since, t, sizeof(t)));
		break;
	case CDISK_MIRROR_DEGRADED:
		printf("state:          degraded since %s, %s out of sync (resynced from "
		       "that record once the mirror answers)\n", when(s->since, t, sizeof(t)),
		       cd_format_size(s->out_of_sync_bytes, a, sizeof(a)));
		break;
	case CDISK_MIRROR_PAUSED:
		printf("state:          paused since %s, %s out of sync\n",
		       when(s->since, t, sizeof(t)),
		       cd_format_size(s->out_of_sync_bytes, a, sizeof(a)));
		break;
	default:
		printf("state:          %s\n", state_name(s->state));
	}
}

static void print_status_human(const char *path, const struct cdisk_mirror_status *s)
{
	char a[32], t[32];

	printf("disk:           %s%s\n", path, s->served ? " (served; answered by its server)"
							 : "");
	if (s->on_primary)
		printf("primary:        %s (reads; writes first)\n", s->primary);
	else if (s->primary[0])
		printf("primary:        the disk's overlay over base %s (reads; writes "
		       "first)\n", s->primary);
	else
		printf("primary:        the disk's overlay (reads; writes first)\n");
	if (s->state == CDISK_MIRROR_NONE) {
		printf("mirror:         none\n");
		return;
	}
	if (s->state == CDISK_MIRROR_FENCED) {
		printf("mirror:         NONE: failed over at %s; the disk is not protected "
		       "until a mirror is attached\n", when(s->since, t, sizeof(t)));
		printf("former primary: %s, fenced (never used again by itself); misses %s\n",
		       s->uri, cd_format_size(s->out_of_sync_bytes, a, sizeof(a)));
		printf("failed because: %s\n", s->last_error[0] ? s->last_error : "unknown");
		return;
	}
	if (s->restoring)
		printf("restore:        to %s since %s; when in sync it %s\n", s->uri,
		       when(s->restore_started, t, sizeof(t)), s->restore_switch ?
		       "becomes the primary" : "stays the mirror");
	printf("mirror:         %s (writes, while in sync)\n", s->uri);
	print_state(s);
	printf("recovered:      %s resent after the last crash\n",
	       cd_format_size(s->recovered_bytes, a, sizeof(a)));
	if (s->last_error[0])
		printf("last error:     %s (at %s)\n", s->last_error,
		       when(s->last_error_time, t, sizeof(t)));
	else
		printf("last error:     none\n");
	printf("policy:         a mirror write slower than %" PRIu32 " ms %s\n",
	       s->timeout_ms, s->fail_on_error ? "fails the guest's write (on error: fail)"
					       : "degrades the disk (on error: degrade)");
}

/* Exit 0 only when the mirror holds everything: a disk with no mirror, or
 * one that lags, is not protected. */
static int show_status(const char *path, const struct cdisk_mirror_status *s)
{
	int r = cli.json ? print_status_json(path, s) : (print_status_human(path, s), 0);

	if (r < 0)
		return r;
	return s->state == CDISK_MIRROR_IN_SYNC ? 0 : CDISK_EXIT_UNHEALTHY;
}

/* ---- the copy of an idle disk ---- */

static void show_progress(void *opaque, const struct cdisk_sync_progress *p)
{
	char done[32], left[32];
	uint64_t rest = p->total > p->done ? p->total - p->done : 0;
	double secs = cli_elapsed();
	double rate = secs >= 1.0 ? (double)p->done / secs : 0;

	(void)opaque;
	cd_format_size(p->done, done, sizeof(done));
	cd_format_size(rest, left, sizeof(left));
	if (rate > 0)
		cli_progress("%s copied, %s left, %.1f MiB/s, %.0f s to go", done, left,
			     rate / 1048576, (double)rest / rate);
	else
		cli_progress("%s copied, %s left", done, left);
}

static void copy_options(struct cdisk_sync_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->rate = rate_arg ? cli_parse_size("--rate", rate_arg) : 0;
	o->max_seconds = (uint32_t)max_time;
	o->stop = &cli_interrupted;
	if (cli_show_progress()) {
		o->progress = show_progress;
		cli_elapsed();   /* the clock starts now */
	}
}

static int copy_idle(struct cdisk *d, const char *path)
{
	struct cdisk_sync_opts o;
	struct cdisk_sync_stats st = { 0 };
	struct cdisk_mirror_status s;
	char a[32];
	int r;

	copy_options(&o);
	cli_running = d;
	r = cdisk_mirror_copy(d, &o, &st);
	cli_running = NULL;
	if (o.progress)
		fputc('\n', stderr);
	if (r < 0)
		return r;
	r = cdisk_mirror_get_status(d, &s);
	if (r < 0)
		return r;
	if (st.stopped || s.state != CDISK_MIRROR_IN_SYNC) {
		cli_error("'%s': stopped with %s left to copy; 'cdisk-mirror resume %s', or "
			  "serving the disk, goes on", path,
			  cd_format_size(s.out_of_sync_bytes, a, sizeof(a)), path);
		return CDISK_EXIT_TRY_LATER;
	}
	cli_message("'%s': %s copied to mirror '%s' in %.1f s (%.0f MiB/s); in sync", path,
		    cd_format_size(st.bytes, a, sizeof(a)), s.uri, st.seconds,
		    st.seconds > 0 ? (double)st.bytes / 1048576.0 / st.seconds : 0);
	return 0;
}

/* ---- an idle disk ---- */

static unsigned open_flags(enum command c)
{
	/* Status only looks.  Detach and pause send nothing.  A copy sends
	 * base data too: an overlay disk's mirror holds the whole disk. */
	if (c == STATUS)
		return CDISK_OPEN_RDONLY | CDISK_OPEN_NO_BASE;
	if (c == DETACH || c == PAUSE)
		return CDISK_OPEN_NO_BASE;
	return 0;
}

static int already_attached(const char *path, const struct cdisk_mirror_status *s)
{
	cli_error("'%s': already has mirror '%s'; detach it first", path, s->uri);
	return CDISK_EXIT_REFUSED;
}

static int has_no_mirror(const char *path)
{
	cli_error("'%s': has no mirror; attach one first", path);
	return CDISK_EXIT_REFUSED;
}

/* detached: the mirror's URI from before, the status after has none. */
static void said_done(enum command c, const char *path, const struct cdisk_mirror_status *s,
		      const char *detached)
{
	if (c == DETACH)
		cli_message("'%s': mirror '%s' detached; its data is left as it is", path,
			    detached);
	else if (c == PAUSE)
		cli_message("'%s': mirror '%s' paused; writes are recorded, not sent, until "
			    "'cdisk-mirror resume'", path, s->uri);
	else if (c == ATTACH)
		cli_message("'%s': mirror '%s' attached; the %s copies it", path, s->uri,
			    s->served ? "server" : "next cdisk-serve of the disk");
	else
		cli_message("'%s': mirror '%s': the %s copies what is out of sync", path,
			    s->uri, s->served ? "server" : "next cdisk-serve of the disk");
}

/* ---- failover ---- */

static int failed_over(const char *path, const struct cdisk_mirror_status *before,
		       uint64_t lost)
{
	char a[32], gone[96] = "";

	if (lost)
		snprintf(gone, sizeof(gone), "; %s it did not have are lost",
			 cd_format_size(lost, a, sizeof(a)));
	cli_message("'%s': failed over: '%s' is the primary now%s; '%s' is fenced (never "
		    "used again by itself). The disk has no mirror: attach one", path,
		    before->uri, gone, before->primary);
	return 0;
}

/* A refusal (the mirror is not in sync, or is the former primary) is a
 * safety guard's: nothing changed. */
static int failover_refused(struct cdisk_ctx *ctx, int r)
{
	if (r != -EAGAIN)
		return r;
	cli_error("%s", cdisk_ctx_error(ctx));
	return CDISK_EXIT_REFUSED;
}

static int failover_idle(struct cdisk *d, const char *path,
			 const struct cdisk_mirror_status *before)
{
	uint64_t lost;
	int r = cdisk_mirror_failover(d, force, &lost);

	return r < 0 ? failover_refused(cdisk_get_ctx(d), r) : failed_over(path, before, lost);
}

static int run_idle(struct cdisk *d, enum command c, const char *path, const char *uri)
{
	char before[CDISK_MAX_URI + 1];
	struct cdisk_mirror_status s;
	int r = cdisk_mirror_get_status(d, &s);

	if (r < 0 || c == STATUS)
		return r < 0 ? r : show_status(path, &s);
	if (c == ATTACH && s.state != CDISK_MIRROR_NONE && s.state != CDISK_MIRROR_FENCED)
		return already_attached(path, &s);
	if (c != ATTACH && s.state == CDISK_MIRROR_NONE)
		return has_no_mirror(path);
	if (c == FAILOVER)
		return failover_idle(d, path, &s);
	memcpy(before, s.uri, sizeof(before));
	switch (c) {
	case ATTACH:
		r = cdisk_mirror_attach(d, uri);
		break;
	case DETACH:
		r = cdisk_mirror_detach(d);
		break;
	case PAUSE:
	case RESUME:
		r = cdisk_mirror_pause(d, c == PAUSE);
		break;
	default:
		r = cdisk_mirror_resync(d, full);
	}
	if (r == -EEXIST && cdisk_mirror_get_status(d, &s) == 0)
		return already_attached(path, &s);
	if (r == 0)
		r = cdisk_mirror_get_status(d, &s);
	if (r < 0)
		return r;
	if (c == DETACH || c == PAUSE || no_copy || no_wait) {
		said_done(c, path, &s, before);
		return 0;
	}
	return copy_idle(d, path);
}

/* ---- a served disk ---- */

static const enum cdisk_mirror_verb verbs[] = {
	[ATTACH] = CDISK_MIRROR_ATTACH, [DETACH] = CDISK_MIRROR_DETACH,
	[PAUSE] = CDISK_MIRROR_PAUSE, [RESUME] = CDISK_MIRROR_RESUME,
	[RESYNC] = CDISK_MIRROR_RESYNC, [STATUS] = CDISK_MIRROR_STATUS,
	[FAILOVER] = CDISK_MIRROR_FAILOVER,
};

static void show_served_progress(const struct cdisk_mirror_status *s)
{
	char left[32];
	double eta = eta_seconds(s);

	cd_format_size(s->out_of_sync_bytes, left, sizeof(left));
	if (eta >= 0)
		cli_progress("%.0f%% in sync, %s left, %.1f MiB/s, %.0f s to go",
			     in_sync_percent(s), left, (double)s->copy_rate / 1048576, eta);
	else
		cli_progress("%.0f%% in sync, %s left", in_sync_percent(s), left);
}

/* Follow the server's copy, once a second, until the mirror is in sync. */
static int wait_in_sync(struct cdisk_ctx *ctx, const char *path)
{
	bool progress = cli_show_progress();
	struct cdisk_mirror_status s;
	char a[32];
	int r;

	cli_elapsed();
	for (;;) {
		r = cdisk_mirror_via_owner(ctx, path, CDISK_MIRROR_STATUS, NULL, &s);
		if (r < 0)
			break;
		if (progress && s.state == CDISK_MIRROR_COPYING)
			show_served_progress(&s);
		if (s.state != CDISK_MIRROR_COPYING)
			break;
		if (cli_interrupted || (max_time && cli_elapsed() >= max_time)) {
			if (progress)
				fputc('\n', stderr);
			cli_error("'%s': stopped waiting with %s left to copy; the server goes "
				  "on ('cdisk-mirror status %s' follows it)", path,
				  cd_format_size(s.out_of_sync_bytes, a, sizeof(a)), path);
			return CDISK_EXIT_TRY_LATER;
		}
		cli_sleep_a_second();
	}
	if (progress)
		fputc('\n', stderr);
	if (r < 0)
		return r;
	switch (s.state) {
	case CDISK_MIRROR_IN_SYNC:
		cli_message("'%s': mirror '%s' is in sync", path, s.uri);
		return 0;
	case CDISK_MIRROR_NONE:
		cli_error("'%s': the mirror was detached before it was in sync", path);
		return CDISK_EXIT_FAILURE;
	case CDISK_MIRROR_PAUSED:
		cli_error("'%s': mirror '%s' was paused with %s out of sync", path, s.uri,
			  cd_format_size(s.out_of_sync_bytes, a, sizeof(a)));
		return CDISK_EXIT_UNHEALTHY;
	default:
		cli_error("'%s': mirror '%s' is degraded: %s; %s out of sync, resent when it "
			  "answers again", path, s.uri,
			  s.last_error[0] ? s.last_error : "no reason given",
			  cd_format_size(s.out_of_sync_bytes, a, sizeof(a)));
		return CDISK_EXIT_UNHEALTHY;
	}
}

static int run_served(struct cdisk_ctx *ctx, enum command c, const char *path,
		      const char *uri)
{
	enum cdisk_mirror_verb verb = c == RESYNC && full ? CDISK_MIRROR_RESYNC_FULL :
				      c == FAILOVER && force ? CDISK_MIRROR_FAILOVER_FORCE :
				      verbs[c];
	char before[CDISK_MAX_URI + 1];
	struct cdisk_mirror_status s;
	int r = cdisk_mirror_via_owner(ctx, path, CDISK_MIRROR_STATUS, NULL, &s);

	if (r < 0 || c == STATUS)
		return r < 0 ? r : show_status(path, &s);
	if (c == ATTACH && s.state != CDISK_MIRROR_NONE && s.state != CDISK_MIRROR_FENCED)
		return already_attached(path, &s);
	if (c != ATTACH && s.state == CDISK_MIRROR_NONE)
		return has_no_mirror(path);
	if (c == FAILOVER) {
		struct cdisk_mirror_status after;

		r = cdisk_mirror_via_owner(ctx, path, verb, NULL, &after);
		return r < 0 ? failover_refused(ctx, r)
			     : failed_over(path, &s, force ? s.out_of_sync_bytes : 0);
	}
	memcpy(before, s.uri, sizeof(before));
	if (rate_arg)
		cli_error("warning: '%s' is served: its server copies at its own pace, "
			  "not --rate's", path);
	r = cdisk_mirror_via_owner(ctx, path, verb, uri, &s);
	if (r == -EEXIST &&
	    cdisk_mirror_via_owner(ctx, path, CDISK_MIRROR_STATUS, NULL, &s) == 0)
		return already_attached(path, &s);
	if (r < 0)
		return r;
	if (c == DETACH || c == PAUSE || no_copy || no_wait) {
		said_done(c, path, &s, before);
		return 0;
	}
	return wait_in_sync(ctx, path);
}

/* ---- verify ---- */

static void show_verify_progress(void *opaque, uint64_t done, uint64_t total)
{
	char a[32], b[32];

	(void)opaque;
	cli_progress("%s of %s compared", cd_format_size(done, a, sizeof(a)),
		     cd_format_size(total, b, sizeof(b)));
}

static void verify_options(struct cdisk_verify_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->repair = repair;
	o->rate = rate_arg ? cli_parse_size("--rate", rate_arg) : 0;
	o->stop = &cli_interrupted;
	if (cli_show_progress() && !cli.json)
		o->progress = show_verify_progress;
}

/* A verify the mirror's state or another verify refuses is one line and
 * exit 10: nothing was compared and nothing changed. */
static int verify_failed(struct cdisk_ctx *ctx, int r)
{
	if (r != -EAGAIN && r != -EALREADY)
		return r;
	cli_error("%s", cdisk_ctx_error(ctx));
	return CDISK_EXIT_REFUSED;
}

static int print_verify_json(const char *path, const char *uri,
			     const struct cdisk_verify_result *v, bool in_sync)
{
	json_t *ranges = json_array();
	json_t *j;

	for (size_t i = 0; i < v->nranges; i++)
		json_array_append_new(ranges, json_pack("{s:I, s:I}",
			"offset", (json_int_t)v->ranges[i].offset,
			"length", (json_int_t)v->ranges[i].length));
	j = json_pack("{s:i, s:s, s:s, s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:b, s:b, s:b, "
		      "s:b, s:f, s:o}",
		      "schema_version", 1, "disk", path, "mirror", uri,
		      "identical", !v->nranges, "size", (json_int_t)v->size,
		      "compared_bytes", (json_int_t)v->compared_bytes,
		      "differing_bytes", (json_int_t)v->differing_bytes,
		      "out_of_sync_bytes", (json_int_t)v->out_of_sync_bytes,
		      "busy_bytes", (json_int_t)v->busy_bytes,
		      "recompared_bytes", (json_int_t)v->recompared_bytes,
		      "repaired", v->repaired, "in_sync", in_sync, "stopped", v->stopped,
		      "served", v->served, "seconds", v->seconds, "differences", ranges);
	return cli_print_json(j);
}

/* The differing ranges on stdout (bytes: offset and length), the summary
 * on stderr (-q: none). */
static void print_verify_human(const char *path, const char *uri,
			       const struct cdisk_verify_result *v)
{
	char a[32];

	for (size_t i = 0; i < v->nranges; i++)
		printf("%" PRIu64 " %" PRIu64 "\n", v->ranges[i].offset, v->ranges[i].length);
	fflush(stdout);
	if (cli.quiet)
		return;
	cli_error("'%s': %s compared with mirror '%s' in %.1f s: %s", path,
		  cd_format_size(v->compared_bytes, a, sizeof(a)), uri, v->seconds,
		  v->nranges ? "different" : "identical");
	if (v->nranges)
		cli_error("'%s': %s in %zu range%s differ%s", path,
			  cd_format_size(v->differing_bytes, a, sizeof(a)), v->nranges,
			  cli_plural(v->nranges), v->repaired ? "; set out of sync, resyncing"
			  : "; 'cdisk-mirror verify --repair' resends them");
	if (v->out_of_sync_bytes)
		cli_error("'%s': %s out of sync not compared (known to differ; the copy "
			  "sends them)", path, cd_format_size(v->out_of_sync_bytes, a,
							      sizeof(a)));
	if (v->busy_bytes)
		cli_error("'%s': %s not compared: written again at every try", path,
			  cd_format_size(v->busy_bytes, a, sizeof(a)));
	if (v->stopped)
		cli_error("'%s': stopped before the end", path);
}

/* The resync of a repair, its messages of success kept off stdout (the
 * ranges' or the JSON's); its exit code. */
static int verify_resync(struct cdisk_ctx *ctx, struct cdisk *d, const char *path)
{
	int quiet = cli.quiet, r;

	cli.quiet = 1;
	r = d ? copy_idle(d, path) : wait_in_sync(ctx, path);
	cli.quiet = quiet;
	if (r == 0 && !quiet)
		cli_error("'%s': resynced; the mirror is in sync", path);
	return r;
}

/* After the verify, and the resync of a repair (resynced: its exit code,
 * 0 when the mirror is in sync again): the JSON, written once complete,
 * and the exit code.  0 when identical; 9 (the mirror is not a copy of
 * the disk: an unhealthy verdict, as status gives) when a range differs,
 * repaired or not; 8 when stopped, or written throughout, before all was
 * compared. */
static int verify_finish(const char *path, const char *uri,
			 const struct cdisk_verify_result *v, int resynced)
{
	int r = 0;

	if (cli.json)
		r = print_verify_json(path, uri, v, v->repaired && resynced == 0);
	if (r < 0 || resynced != 0)
		return r < 0 ? r : resynced;
	if (v->nranges)
		return CDISK_EXIT_UNHEALTHY;
	return v->stopped || v->busy_bytes ? CDISK_EXIT_TRY_LATER : 0;
}

static int verify_idle(struct cdisk_ctx *ctx, struct cdisk *d, const char *path)
{
	struct cdisk_verify_opts o;
	struct cdisk_verify_result v;
	struct cdisk_mirror_status s;
	int r = cdisk_mirror_get_status(d, &s);

	if (r < 0)
		return r;
	if (s.state == CDISK_MIRROR_NONE)
		return has_no_mirror(path);
	verify_options(&o);
	cli_running = d;
	r = cdisk_mirror_verify(d, &o, &v);
	cli_running = NULL;
	if (o.progress)
		fputc('\n', stderr);
	if (r < 0)
		return verify_failed(ctx, r);
	/* The resync's own messages come after the verify's. */
	if (!cli.json)
		print_verify_human(path, s.uri, &v);
	r = verify_finish(path, s.uri, &v, v.repaired ? verify_resync(ctx, d, path) : 0);
	cdisk_verify_result_free(&v);
	return r;
}

static int verify_served(struct cdisk_ctx *ctx, const char *path)
{
	struct cdisk_verify_opts o;
	struct cdisk_verify_result v;
	struct cdisk_mirror_status s;
	int r = cdisk_mirror_via_owner(ctx, path, CDISK_MIRROR_STATUS, NULL, &s);

	if (r < 0)
		return r;
	if (s.state == CDISK_MIRROR_NONE)
		return has_no_mirror(path);
	verify_options(&o);
	r = cdisk_mirror_verify_via_owner(ctx, path, &o, &v);
	if (o.progress)
		fputc('\n', stderr);
	if (r < 0)
		return verify_failed(ctx, r);
	if (!cli.json)
		print_verify_human(path, s.uri, &v);
	r = verify_finish(path, s.uri, &v, v.repaired ? verify_resync(ctx, NULL, path) : 0);
	cdisk_verify_result_free(&v);
	return r;
}

/* ---- the command line ---- */

static enum command parse_command(const char *word)
{
	for (size_t i = 0; i < sizeof(command_names) / sizeof(command_names[0]); i++)
		if (!strcmp(word, command_names[i]))
			return (enum command)i;
	cli_usage_error("unknown command '%s': expected attach, detach, pause, resume, "
			"resync, status, failover or verify", word);
}

static void check_options(enum command c, const char *uri)
{
	if (c == ATTACH && !uri)
		cli_usage_error("attach needs the mirror's URI: cdisk-mirror attach "
				"NAME.cdisk URI");
	if (c != ATTACH && uri)
		cli_usage_error("unexpected argument '%s'", uri);
	if (full && c != RESYNC)
		cli_usage_error("--full goes with resync");
	if (force && c != FAILOVER)
		cli_usage_error("--force goes with failover");
	if (no_copy && c != ATTACH)
		cli_usage_error("--no-copy goes with attach");
	if (no_wait && c != ATTACH && c != RESUME && c != RESYNC)
		cli_usage_error("--no-wait goes with attach, resume and resync");
	if (cli.json && c != STATUS && c != VERIFY)
		cli_usage_error("--json goes with status and verify");
	if (repair && c != VERIFY)
		cli_usage_error("--repair goes with verify");
	if (max_time && c == VERIFY)
		cli_usage_error("--max-time goes with attach, resume and resync");
	if ((rate_arg || max_time) && (c == STATUS || c == DETACH || c == PAUSE ||
				       c == FAILOVER))
		cli_usage_error("--rate and --max-time go with attach, resume, resync "
				"and verify");
	if (max_time < 0)
		cli_usage_error("--max-time must not be negative");
	if (rate_arg)
		cli_parse_size("--rate", rate_arg);
}

int main(int argc, char **argv)
{
	struct cdisk_ctx *ctx;
	struct cdisk *d = NULL;
	const char **args, *path, *uri;
	enum command c;
	int r;

	args = cli_parse(&program, argc, (const char **)argv, options, 2, 3);
	c = parse_command(args[0]);
	path = args[1];
	uri = args[2];
	check_options(c, uri);
	cli_stop_on_signals();

	ctx = cli_context();
	r = cdisk_open(ctx, path, open_flags(c), &d);
	if (r == 0) {
		r = c == VERIFY ? verify_idle(ctx, d, path) : run_idle(d, c, path, uri);
		int closed = cdisk_close(d);
		if (r == 0)
			r = closed;
	} else if (r == -EBUSY) {
		r = c == VERIFY ? verify_served(ctx, path) : run_served(ctx, c, path, uri);
	}
	/* r > 0: an exit code whose message is out already. */
	r = r > 0 ? (cli_exit_code(ctx, 0) ? CDISK_EXIT_FAILURE : r) : cli_exit_code(ctx, r);
	cdisk_ctx_free(ctx);
	return r;
}

/* cdisk-restore: rebuild what a disk lost.  It rebuilds damaged metadata
 * from its backup (--metadata), confirms a disk restored by force from a
 * backup that nothing proved its own (--confirm), and restores a disk on
 * a primary onto a new target while the VM runs (--to). */
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

static const struct cli_program program = {
	.name = "cdisk-restore",
	.args = "NAME.cdisk",
	.summary = "rebuild a cdisk's damaged metadata from its backup, or restore "
		   "a disk on a primary onto a new target",
};

static int metadata, force, confirm, switch_roles, background, max_time;
static char *from, *to, *on_complete, *rate_arg;

static struct poptOption options[] = {
	{ "metadata", 'm', POPT_ARG_NONE, &metadata, 0,
	  "Rebuild the disk's metadata from its backup", NULL },
	{ "from", '\0', POPT_ARG_STRING, &from, 0,
	  "Use this backup file instead of the disk's own", "PATH" },
	{ "force", 'f', POPT_ARG_NONE, &force, 0,
	  "Restore even over sound metadata, from a backup older than the "
	  "disk's last checkpoint, or from one nothing proves the disk's own "
	  "(the disk is then unconfirmed)", NULL },
	{ "confirm", '\0', POPT_ARG_NONE, &confirm, 0,
	  "Confirm that an unconfirmed disk's base is its own: syncs may "
	  "write to it again", NULL },
	{ "to", '\0', POPT_ARG_STRING, &to, 0,
	  "Copy the disk's current data onto URI while the VM runs; live writes "
	  "go there too", "URI" },
	{ "switch", '\0', POPT_ARG_NONE, &switch_roles, 0,
	  "With --to: when complete, URI becomes the primary (after a failover, "
	  "the primary goes back to being the mirror)", NULL },
	{ "on-complete", '\0', POPT_ARG_STRING, &on_complete, 0,
	  "With --to: run CMD when complete, with CDISK_DISK, CDISK_TARGET and "
	  "CDISK_SWITCHED in its environment", "CMD" },
	{ "background", '\0', POPT_ARG_NONE, &background, 0,
	  "With --to: return once the restore is started (the disk's server, or "
	  "its next one, does the copy)", NULL },
	{ "rate", '\0', POPT_ARG_STRING, &rate_arg, 0,
	  "With --to on an idle disk: copy at most RATE bytes per second", "RATE" },
	{ "max-time", '\0', POPT_ARG_INT, &max_time, 0,
	  "With --to: copy, or wait for the server's copy, at most SECONDS (exit 8 "
	  "if it is not complete)", "SECONDS" },
	{ "json", 'J', POPT_ARG_NONE, &cli.json, 0,
	  "Print the result as JSON", NULL },
	CLI_COMMON_OPTIONS,
	POPT_TABLEEND
};

static void report(const char *path, const struct cdisk_restore_report *rep)
{
	if (cli.json) {
		json_t *j = json_pack("{s:i, s:s, s:b, s:s?, s:I, s:I, s:I, s:I, s:b}",
				      "schema_version", 1, "disk", path,
				      "changed", rep->restored,
				      "backup", rep->restored ? rep->backup : NULL,
				      "backup_age_seconds", (json_int_t)rep->backup_age,
				      "records_replayed", (json_int_t)rep->records_replayed,
				      "blocks_reconciled", (json_int_t)rep->blocks_reconciled,
				      "blocks_marked_dirty", (json_int_t)rep->blocks_marked_dirty,
				      "exact", rep->exact);
		json_object_set_new(j, "unconfirmed", json_boolean(rep->unconfirmed));
		cli_print_json(j);
		return;
	}
	if (!rep->restored) {
		cli_message("'%s': metadata is sound; nothing restored", path);
		return;
	}
	cli_message("'%s': metadata rebuilt from '%s' (taken %llu s before): %llu journal "
		    "records replayed, %llu blocks reconciled from the data area, %llu "
		    "blocks marked for sync", path, rep->backup,
		    (unsigned long long)rep->backup_age,
		    (unsigned long long)rep->records_replayed,
		    (unsigned long long)rep->blocks_reconciled,
		    (unsigned long long)rep->blocks_marked_dirty);
	if (rep->unconfirmed)
		cli_message("'%s' is unconfirmed: nothing proved the backup its own, so "
			    "it will not sync to its base until 'cdisk-restore --confirm %s'",
			    path, path);
}

static void report_confirm(const char *path, bool changed)
{
	if (cli.json) {
		cli_print_json(json_pack("{s:i, s:s, s:b}", "schema_version", 1,
					 "disk", path, "changed", changed));
		return;
	}
	if (changed)
		cli_message("'%s': confirmed; it syncs to its base again", path);
	else
		cli_message("'%s' is not unconfirmed; nothing changed", path);
}

/* ---- --to: restore onto a new target ---- */


static void show_progress(void *opaque, const struct cdisk_sync_progress *p)
{
	char done[32], left[32];
	uint64_t rest = p->total > p->done ? p->total - p->done : 0;

	(void)opaque;
	cli_progress("%s copied, %s left", cd_format_size(p->done, done, sizeof(done)),
		     cd_format_size(rest, left, sizeof(left)));
}

static void restore_opts(struct cdisk_restore_opts *o)
{
	o->flags = switch_roles ? CDISK_RESTORE_SWITCH : 0;
	o->on_complete = on_complete;
}

/* What the disk is once the restore to target is complete. */
static int said_complete(const char *path, const char *target,
			 const struct cdisk_mirror_status *s)
{
	if (s->restoring || s->state == CDISK_MIRROR_FENCED) {
		cli_error("'%s': the restore to '%s' ended without completing", path, target);
		return CDISK_EXIT_FAILURE;
	}
	if (!strcmp(s->primary, target)) {
		if (s->state == CDISK_MIRROR_NONE)
			cli_message("'%s': restored: '%s' is the primary now; the disk has no "
				    "mirror", path, target);
		else
			cli_message("'%s': restored: '%s' is the primary now, and '%s' the "
				    "mirror (%s)", path, target, s->uri,
				    s->state == CDISK_MIRROR_IN_SYNC ? "in sync" : "not in sync");
		return 0;
	}
	if (!strcmp(s->uri, target) && s->state == CDISK_MIRROR_IN_SYNC) {
		cli_message("'%s': restored: '%s' holds the whole disk and is its mirror, in "
			    "sync", path, target);
		return 0;
	}
	cli_error("'%s': the restore to '%s' ended without completing (detached or "
		  "failed over meanwhile)", path, target);
	return CDISK_EXIT_FAILURE;
}

static int said_started(const char *path, const struct cdisk_mirror_status *s)
{
	cli_message("'%s': restore to '%s' started; the %s copies it ('cdisk-mirror "
		    "status %s' follows it)", path, s->uri,
		    s->served ? "server" : "next cdisk-serve of the disk", path);
	return 0;
}

/* The refusals of a restore's guards, and a second restore, change
 * nothing: a guard's exit code.  A restore done before is success, so
 * that a script may run it again. */
static int restore_refused(struct cdisk_ctx *ctx, const char *path, int r)
{
	if (r == -EALREADY) {
		cli_message("'%s': nothing to do: %s", path, cdisk_ctx_error(ctx));
		return 0;
	}
	if (r != -EAGAIN && r != -EEXIST)
		return r;
	cli_error("%s", cdisk_ctx_error(ctx));
	return CDISK_EXIT_REFUSED;
}

static int restore_idle(struct cdisk *d, const char *path)
{
	struct cdisk_restore_opts ro;
	struct cdisk_sync_opts o = { .stop = &cli_interrupted };
	struct cdisk_sync_stats st;
	struct cdisk_mirror_status s;
	char target[CDISK_MAX_URI + 1], a[32];
	int r;

	restore_opts(&ro);
	r = cdisk_restore_start(d, to, &ro);
	if (r == 0)
		r = cdisk_mirror_get_status(d, &s);
	if (r < 0)
		return restore_refused(cdisk_get_ctx(d), path, r);
	if (background)
		return said_started(path, &s);
	memcpy(target, s.uri, sizeof(target));
	o.rate = rate_arg ? cli_parse_size("--rate", rate_arg) : 0;
	o.max_seconds = (uint32_t)max_time;
	if (cli_show_progress()) {
		o.progress = show_progress;
		cli_elapsed();
	}
	cli_running = d;
	r = cdisk_restore_copy(d, &o, &st);
	cli_running = NULL;
	if (o.progress)
		fputc('\n', stderr);
	if (r == 0)
		r = cdisk_mirror_get_status(d, &s);
	if (r < 0)
		return r;
	if (st.stopped || s.restoring) {
		cli_error("'%s': stopped with %s left to copy to '%s'; run this again, or "
			  "serve the disk, to go on", path,
			  cd_format_size(s.out_of_sync_bytes, a, sizeof(a)), target);
		return CDISK_EXIT_TRY_LATER;
	}
	return said_complete(path, target, &s);
}

/* A target that does not answer for this long ends the wait (the server
 * goes on): the server probes it every 2 s. */
#define LOST_GRACE_SECONDS 10

/* Follow the server's copy once a second until the restore is over. */
static int wait_restored(struct cdisk_ctx *ctx, const char *path, const char *target)
{
	struct cdisk_mirror_status s;
	double lost_at = -1;
	char a[32];
	int r;

	cli_elapsed();
	for (;;) {
		r = cdisk_mirror_via_owner(ctx, path, CDISK_MIRROR_STATUS, NULL, &s);
		if (r < 0)
			return r;
		if (!s.restoring)
			return said_complete(path, target, &s);
		cd_format_size(s.out_of_sync_bytes, a, sizeof(a));
		if (s.state != CDISK_MIRROR_DEGRADED)
			lost_at = -1;
		else if (lost_at < 0)
			lost_at = cli_elapsed();
		if (s.state == CDISK_MIRROR_PAUSED ||
		    (lost_at >= 0 && cli_elapsed() - lost_at >= LOST_GRACE_SECONDS)) {
			cli_error("'%s': restore target '%s' is %s: %s; %s left, sent by the "
				  "server when it answers again ('cdisk-mirror status %s' "
				  "follows it)", path, target,
				  s.state == CDISK_MIRROR_PAUSED ? "paused" : "not answering",
				  s.last_error[0] ? s.last_error : "no reason given", a, path);
			return CDISK_EXIT_UNREACHABLE;
		}
		if (cli_show_progress())
			cli_progress("%s left to copy to '%s'", a, target);
		if (cli_interrupted || (max_time && cli_elapsed() >= max_time)) {
			if (cli_show_progress())
				fputc('\n', stderr);
			cli_error("'%s': stopped waiting with %s left to copy; the server goes "
				  "on ('cdisk-mirror status %s' follows it)", path, a, path);
			return CDISK_EXIT_TRY_LATER;
		}
		cli_sleep_a_second();
	}
}

static int restore_served(struct cdisk_ctx *ctx, const char *path)
{
	struct cdisk_restore_opts ro;
	struct cdisk_mirror_status s;
	char target[CDISK_MAX_URI + 1];
	int r;

	restore_opts(&ro);
	if (rate_arg)
		cli_error("warning: '%s' is served: its server copies at its own pace, "
			  "not --rate's", path);
	r = cdisk_restore_via_owner(ctx, path, to, &ro, &s);
	if (r < 0)
		return restore_refused(ctx, path, r);
	if (background)
		return said_started(path, &s);
	memcpy(target, s.uri, sizeof(target));
	return wait_restored(ctx, path, target);
}

static int restore_to(struct cdisk_ctx *ctx, const char *path)
{
	struct cdisk *d = NULL;
	int r;

	cli_stop_on_signals();
	r = cdisk_open(ctx, path, 0, &d);
	if (r == 0) {
		r = restore_idle(d, path);
		int closed = cdisk_close(d);
		if (r == 0)
			r = closed;
	} else if (r == -EBUSY) {
		r = restore_served(ctx, path);
	}
	return r;
}

static void check_options(void)
{
	int modes = !!metadata + !!confirm + !!to;

	if (!to && (switch_roles || on_complete || background || rate_arg || max_time))
		cli_usage_error("--switch, --on-complete, --background, --rate and --max-time "
				"go with --to");
	if (modes > 1)
		cli_usage_error("--metadata, --confirm and --to are separate steps");
	if (!modes)
		cli_usage_error("nothing to do: give --metadata, --confirm or --to URI");
	if (confirm && (from || force))
		cli_usage_error("--confirm takes neither --from nor --force");
	if (to && (from || force || cli.json))
		cli_usage_error("--to takes none of --from, --force and --json");
	if (to && !*to)
		cli_usage_error("--to needs a URI");
	if (max_time < 0)
		cli_usage_error("--max-time must not be negative");
	if (background && (rate_arg || max_time))
		cli_usage_error("--rate and --max-time do not go with --background");
	if (rate_arg)
		cli_parse_size("--rate", rate_arg);
}

int main(int argc, char **argv)
{
	struct cdisk_restore_report rep;
	struct cdisk_ctx *ctx;
	const char **args;
	int r;

	args = cli_parse(&program, argc, (const char **)argv, options, 1, 1);
	check_options();
	ctx = cli_context();
	if (to) {
		r = restore_to(ctx, args[0]);
		/* r > 0: an exit code whose message is out already. */
		r = r > 0 ? (cli_exit_code(ctx, 0) ? CDISK_EXIT_FAILURE : r)
			  : cli_exit_code(ctx, r);
		cdisk_ctx_free(ctx);
		return r;
	}
	if (confirm) {
		bool changed;

		r = cdisk_restore_confirm(ctx, args[0], &changed);
		if (r == 0)
			report_confirm(args[0], changed);
	} else {
		r = cdisk_restore_metadata(ctx, args[0], from, force, &rep);
		if (r == 0)
			report(args[0], &rep);
	}
	r = cli_exit_code(ctx, r);
	cdisk_ctx_free(ctx);
	return r;
}

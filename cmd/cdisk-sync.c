/* cdisk-sync: send a disk's changes to its base, safely and resumably.
 * A disk served by cdisk-serve is synced by the server itself, asked
 * through its control socket; the same engine runs either way. */
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

static const struct cli_program program = {
	.name = "cdisk-sync",
	.args = "NAME.cdisk",
	.summary = "send a cdisk's changes to its base; nothing is called clean "
		   "before the base has it",
};

static char *min_dirty_arg, *rate_arg, *range_arg;
static int max_time, depth, dry_run, verify, pull, close_disk, if_healthy;
static int target_delay, files, force;
static json_t *items;

static struct poptOption options[] = {
	{ "files", '\0', POPT_ARG_NONE, &files, 0,
	  "A writer disk of a cloud folder: send its new, changed and deleted files "
	  "to the folder (with --pull, into any disk of the folder: the folder's "
	  "changes into its files)", NULL },
	{ "force", '\0', POPT_ARG_NONE, &force, 0,
	  "With --files: delete in the cloud even when more than half the folder's "
	  "files would go", NULL },
	{ "pull", '\0', POPT_ARG_NONE, &pull, 0,
	  "Fetch the base's data the overlay lacks, so the disk works offline", NULL },
	{ "range", '\0', POPT_ARG_STRING, &range_arg, 0,
	  "With --pull: only OFFSET:LENGTH of the disk (K/M/G suffixes)",
	  "OFFSET:LENGTH" },
	{ "close", '\0', POPT_ARG_NONE, &close_disk, 0,
	  "Sync and verify everything, then free the overlay: the disk reads from "
	  "its base again", NULL },
	{ "min-dirty", '\0', POPT_ARG_STRING, &min_dirty_arg, 0,
	  "Do nothing unless at least SIZE is waiting", "SIZE" },
	{ "rate", '\0', POPT_ARG_STRING, &rate_arg, 0,
	  "Send at most RATE bytes per second (K/M/G suffixes)", "RATE" },
	{ "max-time", '\0', POPT_ARG_INT, &max_time, 0,
	  "Start no new work after SECONDS; what was sent is kept (exit 8 if "
	  "changes are left)", "SECONDS" },
	{ "depth", 'd', POPT_ARG_INT, &depth, 0,
	  "Requests in flight to the base (default 0: the base's own, 16; iSCSI 4)", "N" },
	{ "dry-run", 'n', POPT_ARG_NONE, &dry_run, 0,
	  "Say what would be sent; send and change nothing", NULL },
	{ "verify", '\0', POPT_ARG_NONE, &verify, 0,
	  "Read what was sent back from the base and compare", NULL },
	{ "if-healthy", '\0', POPT_ARG_NONE, &if_healthy, 0,
	  "Probe the base first (cdisk-probe's thresholds); unless it is healthy, "
	  "change nothing and exit 8 (3 if unreachable)", NULL },
	{ "target-delay", '\0', POPT_ARG_INT, &target_delay, 0,
	  "Slow down when the base's round trip rises this far over its baseline "
	  "(default 25; -1: never)", "MS" },
	{ "json", 'J', POPT_ARG_NONE, &cli.json, 0,
	  "Print the result as JSON", NULL },
	CLI_COMMON_OPTIONS,
	POPT_TABLEEND
};


/* One line, redrawn: bytes done and left, the rate, the time left, and
 * the limit the sync holds itself to when the base is busy. */
static void show_progress(void *opaque, const struct cdisk_sync_progress *p)
{
	char done[32], left[32], limit[48] = "";
	uint64_t rest = p->total > p->done ? p->total - p->done : 0;
	double secs = cli_elapsed();
	/* In the first second the first requests all leave at once (the
	 * rate limit lets one request per thread go into debt): too early
	 * for a rate that means anything. */
	double rate = secs >= 1.0 ? (double)p->done / secs : 0;

	(void)opaque;
	if (p->rate_limit) {
		char r[32];
		snprintf(limit, sizeof(limit), ", held to %s/s",
			 cd_format_size(p->rate_limit, r, sizeof(r)));
	}
	cd_format_size(p->done, done, sizeof(done));
	cd_format_size(rest, left, sizeof(left));
	if (rate > 0)
		cli_progress("%s sent, %s left, %.1f MiB/s, %.0f s to go%s", done, left,
			     rate / 1048576, (double)rest / rate, limit);
	else
		cli_progress("%s sent, %s left%s", done, left, limit);
}

static const char *mode_name(void)
{
	return pull ? "pull" : close_disk ? "close" : "push";
}

static void report(const char *path, const struct cdisk_sync_stats *st)
{
	char a[32], b[32];
	uint64_t moved = pull ? st->pulled_bytes : st->bytes;
	double mib_s = st->seconds > 0 ? (double)moved / 1048576.0 / st->seconds : 0;

	if (cli.json) {
		json_t *j = json_pack("{s:i, s:s, s:s, s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I, "
				      "s:I, s:I, s:f, s:f, s:b, s:b, s:b, s:o, s:I, s:f, s:f, s:I}",
				      "schema_version", 1, "disk", path, "mode", mode_name(),
				      "dry_run", dry_run != 0,
				      "pulled_bytes", (json_int_t)st->pulled_bytes,
				      "released_bytes", (json_int_t)st->released_bytes,
				      "dirty_bytes", (json_int_t)st->dirty_bytes,
				      "blocks", (json_int_t)st->blocks,
				      "bytes", (json_int_t)st->bytes,
				      "requests", (json_int_t)st->requests,
				      "flushes", (json_int_t)st->flushes,
				      "verified_bytes", (json_int_t)st->verified_bytes,
				      "left_bytes", (json_int_t)st->left_bytes,
				      "seconds", st->seconds, "mib_per_second", mib_s,
				      "below_min_dirty", st->below_min, "stopped", st->stopped,
				      "clean", st->left_bytes == 0,
				      "rate_limit", st->rate_limit ? json_integer((json_int_t)st->rate_limit)
								   : json_null(),
				      "slowdowns", (json_int_t)st->slowdowns,
				      "delay_ms", st->delay_ms, "base_delay_ms", st->base_delay_ms,
				      "retries", (json_int_t)st->retries);
		cli_print_json(j);
		return;
	}
	if (pull && dry_run)
		cli_message("'%s': would fetch %s", path,
			    cd_format_size(st->dirty_bytes, a, sizeof(a)));
	else if (pull)
		cli_message("'%s': %s fetched from the base in %.1f s (%.0f MiB/s)", path,
			    cd_format_size(st->pulled_bytes, a, sizeof(a)), st->seconds, mib_s);
	else if (st->below_min)
		cli_message("'%s': %s waiting, below --min-dirty; nothing sent", path,
			    cd_format_size(st->dirty_bytes, a, sizeof(a)));
	else if (dry_run)
		cli_message("'%s': would send %s", path,
			    cd_format_size(st->dirty_bytes, a, sizeof(a)));
	else
		cli_message("'%s': %s sent in %llu request%s, %.1f s (%.0f MiB/s); %s left%s",
			    path, cd_format_size(st->bytes, a, sizeof(a)),
			    (unsigned long long)st->requests, cli_plural(st->requests),
			    st->seconds, mib_s,
			    cd_format_size(st->left_bytes, b, sizeof(b)),
			    st->verified_bytes ? "; verified" : "");
	if (st->slowdowns && !dry_run)
		cli_message("'%s': slowed down %u time%s for the base's round trip (%.1f ms "
			    "over a %.1f ms baseline at the end)%s%s%s", path, st->slowdowns,
			    st->slowdowns == 1 ? "" : "s", st->delay_ms - st->base_delay_ms,
			    st->base_delay_ms, st->rate_limit ? "; held to " : "",
			    st->rate_limit ? cd_format_size(st->rate_limit, a, sizeof(a)) : "",
			    st->rate_limit ? "/s" : "");
	if (close_disk && !dry_run && !st->below_min)
		cli_message("'%s': %s of overlay released; the disk reads from its base",
			    path, cd_format_size(st->released_bytes, a, sizeof(a)));
}

/* ---- --files ---- */

static void on_file(void *opaque, enum cdisk_files_action what, const char *key,
		    uint64_t size, const char *etag, const char *why)
{
	static const char *const lists[] = { "uploaded", "deleted", "skipped", "fetched",
					     "removed", "conflicts", "kept_local" };
	static const char *const verbs[] = { "upload", "delete", "skip", "fetch", "remove",
					     "keep both", "keep beside" };
	json_t *item;

	(void)opaque;
	if (!cli.json) {
		if (what == CDISK_FILES_SKIPPED)
			return;   /* the library warned */
		if (what == CDISK_FILES_CONFLICT)
			cli_message("%sconflict: '%s' changed on the disk and in the cloud; "
				    "the cloud's version is %s'%s'", dry_run ? "would be a " : "",
				    why, dry_run ? "" : "saved as ", dry_run ? "" : key);
		else if (what == CDISK_FILES_KEPT)
			cli_message("%skept: '%s' was changed on this reader disk; the cloud's "
				    "change replaces it, its version is %s'%s'",
				    dry_run ? "would be " : "", why,
				    dry_run ? "kept beside" : "kept as ", dry_run ? "" : key);
		else
			cli_message("%s%s %s", dry_run ? "would " : "", verbs[what], key);
		return;
	}
	if (what == CDISK_FILES_KEPT) {
		item = json_pack("{s:s}", "key", why);
		if (!dry_run)
			json_object_set_new(item, "saved_as", json_string(key));
		json_array_append_new(json_object_get(items, lists[what]), item);
		return;
	}
	if (what == CDISK_FILES_CONFLICT) {
		item = json_pack("{s:s, s:s}", "key", why, "saved_as", key);
		json_object_set_new(item, "size", json_integer((json_int_t)size));
		if (etag && etag[0])
			json_object_set_new(item, "etag", json_string(etag));
		json_array_append_new(json_object_get(items, lists[what]), item);
		return;
	}
	item = json_pack("{s:s}", "key", key);
	if (what != CDISK_FILES_SKIPPED)
		json_object_set_new(item, "size", json_integer((json_int_t)size));
	if (etag && etag[0])
		json_object_set_new(item, "etag", json_string(etag));
	if (why)
		json_object_set_new(item, "why", json_string(why));
	json_array_append_new(json_object_get(items, lists[what]), item);
}

static void report_files(const char *path, const struct cdisk_files_result *res)
{
	char a[32];

	if (cli.json) {
		json_t *j = json_pack("{s:i, s:s, s:s, s:s, s:b, s:I, s:I, s:I, s:I, s:I, s:O, "
				      "s:O, s:O}",
				      "schema_version", 1, "disk", path, "mode", "files",
				      "folder", res->uri, "dry_run", dry_run != 0,
				      "files", (json_int_t)res->files,
				      "dirs", (json_int_t)res->dirs,
				      "unchanged", (json_int_t)res->unchanged,
				      "hashed", (json_int_t)res->hashed,
				      "uploaded_bytes", (json_int_t)res->uploaded_bytes,
				      "uploaded", json_object_get(items, "uploaded"),
				      "deleted", json_object_get(items, "deleted"),
				      "skipped", json_object_get(items, "skipped"));
		cli_print_json(j);
		return;
	}
	cli_message("'%s': %s%llu uploaded (%s), %llu deleted, %llu skipped, %llu "
		    "unchanged, in '%s'", path, dry_run ? "would be " : "",
		    (unsigned long long)res->uploaded,
		    cd_format_size(res->uploaded_bytes, a, sizeof(a)),
		    (unsigned long long)res->deleted, (unsigned long long)res->skipped,
		    (unsigned long long)res->unchanged, res->uri);
}

static void report_pull(const char *path, const struct cdisk_files_result *res)
{
	char a[32];

	if (cli.json) {
		json_t *j = json_pack("{s:i, s:s, s:s, s:s, s:s, s:b, s:I, s:I, s:I, s:I, s:I, "
				      "s:O, s:O, s:O, s:O}",
				      "schema_version", 1, "disk", path, "mode", "files-pull",
				      "folder", res->uri, "role", res->reader ? "reader" : "writer",
				      "dry_run", dry_run != 0,
				      "files", (json_int_t)res->files,
				      "fetched_bytes", (json_int_t)res->fetched_bytes,
				      "from_cache", (json_int_t)res->from_cache,
				      "own_uploads", (json_int_t)res->own,
				      "hashed", (json_int_t)res->hashed,
				      "fetched", json_object_get(items, "fetched"),
				      "removed", json_object_get(items, "removed"),
				      "conflicts", json_object_get(items, "conflicts"),
				      "kept_local", json_object_get(items, "kept_local"));
		cli_print_json(j);
		return;
	}
	if (res->reader)
		cli_message("'%s' (a reader): %s%llu written (%s), %llu removed, %llu of the "
			    "guest's own version%s kept beside, from '%s'", path,
			    dry_run ? "would be " : "", (unsigned long long)res->fetched,
			    cd_format_size(res->fetched_bytes, a, sizeof(a)),
			    (unsigned long long)res->removed, (unsigned long long)res->kept,
			    res->kept == 1 ? "" : "s", res->uri);
	else
		cli_message("'%s': %s%llu written (%s), %llu removed, %llu conflict%s, %llu of "
			    "this host's uploads not fetched back, from '%s'", path,
			    dry_run ? "would be " : "", (unsigned long long)res->fetched,
			    cd_format_size(res->fetched_bytes, a, sizeof(a)),
			    (unsigned long long)res->removed,
			    (unsigned long long)res->conflicts, res->conflicts == 1 ? "" : "s",
			    (unsigned long long)res->own, res->uri);
}

static int pull_files(struct cdisk_ctx *ctx, const char *path)
{
	struct cdisk_files_opts o = { .dry_run = dry_run, .item = on_file };
	struct cdisk_files_result res;
	int r;

	if (force)
		cli_usage_error("--force goes with --files, not with --files --pull");
	items = json_pack("{s:[], s:[], s:[], s:[]}", "fetched", "removed", "conflicts",
			  "kept_local");
	r = cdisk_pull_files(ctx, path, &o, &res);
	if (r == 0 || r == -EXDEV)
		report_pull(path, &res);
	json_decref(items);
	if (r == -EXDEV) {
		cli_error("%s", cdisk_ctx_error(ctx));
		return CDISK_EXIT_CONFLICT;
	}
	return cli_exit_code(ctx, r);
}

static int sync_files(struct cdisk_ctx *ctx, const char *path)
{
	struct cdisk_files_opts o = { .dry_run = dry_run, .force = force, .item = on_file };
	struct cdisk_files_result res;
	int r;

	if (close_disk || range_arg || min_dirty_arg || rate_arg || verify ||
	    if_healthy || max_time)
		cli_usage_error("--files goes with --pull, --force, --dry-run and --json only");
	if (pull)
		return pull_files(ctx, path);
	items = json_pack("{s:[], s:[], s:[]}", "uploaded", "deleted", "skipped");
	r = cdisk_sync_files(ctx, path, &o, &res);
	if (r == 0)
		report_files(path, &res);
	json_decref(items);
	if (r == -ECANCELED) {
		cli_error("%s", cdisk_ctx_error(ctx));
		return CDISK_EXIT_REFUSED;
	}
	return cli_exit_code(ctx, r);
}

static void parse_range(struct cdisk_sync_opts *o)
{
	char *colon = range_arg ? strchr(range_arg, ':') : NULL;

	if (!range_arg)
		return;
	if (!pull)
		cli_usage_error("--range goes with --pull");
	if (!colon)
		cli_usage_error("--range must be OFFSET:LENGTH, not '%s'", range_arg);
	*colon = '\0';
	o->range_offset = cli_parse_size("--range", range_arg);
	o->range_length = cli_parse_size("--range", colon + 1);
	if (o->range_length == 0)
		cli_usage_error("--range: the length must not be 0");
}

static int run(struct cdisk *d, const struct cdisk_sync_opts *o,
	       struct cdisk_sync_stats *st)
{
	if (pull)
		return cdisk_pull(d, o, st);
	if (close_disk)
		return cdisk_sync_close(d, o, st);
	return cdisk_sync(d, o, st);
}

int main(int argc, char **argv)
{
	struct cdisk_sync_opts o = { 0 };
	struct cdisk_sync_stats st = { 0 };
	struct cdisk_ctx *ctx;
	struct cdisk *d = NULL;
	const char **args;
	int r;

	args = cli_parse(&program, argc, (const char **)argv, options, 1, 1);
	if (force && !files)
		cli_usage_error("--force goes with --files");
	if (files) {
		ctx = cli_context();
		r = sync_files(ctx, args[0]);
		cdisk_ctx_free(ctx);
		return r;
	}
	if (depth < 0 || depth > 256)
		cli_usage_error("--depth must be from 1 to 256 (0: the base's own)");
	if (max_time < 0)
		cli_usage_error("--max-time must not be negative");
	if (target_delay < -1 || target_delay > 10000)
		cli_usage_error("--target-delay must be from 1 to 10000 milliseconds, or -1");
	if (pull && close_disk)
		cli_usage_error("--pull and --close go in opposite directions; give one");
	parse_range(&o);
	o.depth = (unsigned)depth;
	o.max_seconds = (uint32_t)max_time;
	o.min_dirty = min_dirty_arg ? cli_parse_size("--min-dirty", min_dirty_arg) : 0;
	o.rate = rate_arg ? cli_parse_size("--rate", rate_arg) : 0;
	o.dry_run = dry_run;
	o.verify = verify;
	o.if_healthy = if_healthy;
	o.target_delay_ms = target_delay;
	o.stop = &cli_interrupted;
	cli_stop_on_signals();
	if (cli_show_progress() && !cli.json && !dry_run) {
		o.progress = show_progress;
		cli_elapsed();   /* the clock starts now */
	}

	ctx = cli_context();
	r = cdisk_open(ctx, args[0], dry_run ? CDISK_OPEN_RDONLY | CDISK_OPEN_NO_BASE
					     : CDISK_OPEN_NO_BASE, &d);
	if (r == 0) {
		cli_running = d;
		r = run(d, &o, &st);
		cli_running = NULL;
		if (o.progress)
			fputc('\n', stderr);
		if (r == 0)
			report(args[0], &st);
		{
			int c = cdisk_close(d);
			if (r == 0)
				r = c;
		}
	} else if (r == -EBUSY) {
		/* Served: the server syncs, or counts for a dry run, with the
		 * VM still writing. */
		r = cdisk_sync_via_owner(ctx, args[0], pull ? CDISK_SYNC_PULL :
					 close_disk ? CDISK_SYNC_CLOSE : CDISK_SYNC_PUSH, &o, &st);
		if (o.progress)
			fputc('\n', stderr);
		if (r == 0)
			report(args[0], &st);
	}
	if (r == 0 && st.stopped) {
		char left[32];
		cli_error("'%s': stopped with %s left; run again to go on", args[0],
			  cd_format_size(st.left_bytes, left, sizeof(left)));
		r = CDISK_EXIT_TRY_LATER;
	} else {
		r = cli_exit_code(ctx, r);
	}
	cdisk_ctx_free(ctx);
	return r;
}

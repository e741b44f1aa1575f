/* cdisk-info: what a disk is, what it holds, and whether it is sound. */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "cli.h"

static const struct cli_program program = {
	.name = "cdisk-info",
	.args = "NAME.cdisk",
	.summary = "show a cdisk's configuration, state and metadata health",
};

static int check, no_repair, metrics;
static char *pool_arg, *user_arg, *control_arg;

static struct poptOption options[] = {
	{ "check", 'c', POPT_ARG_NONE, &check, 0,
	  "Verify every checksum and the overlay against its records; repair "
	  "what can be repaired", NULL },
	{ "no-repair", 'n', POPT_ARG_NONE, &no_repair, 0,
	  "With --check: change nothing, only report", NULL },
	{ "pool", '\0', POPT_ARG_STRING, &pool_arg, 0,
	  "List the images of a pool (cdisk-serve --pool) instead of one disk", "DIR" },
	{ "user", '\0', POPT_ARG_STRING, &user_arg, 0,
	  "With --pool: only this user's images", "NAME" },
	{ "metrics", '\0', POPT_ARG_NONE, &metrics, 0,
	  "Print the server's request statistics of a served disk, or with "
	  "--control of a whole server, as Prometheus text", NULL },
	{ "control", '\0', POPT_ARG_STRING, &control_arg, 0,
	  "With --metrics or --json: the statistics of the whole server whose "
	  "control socket this is", "SOCKET" },
	{ "json", 'J', POPT_ARG_NONE, &cli.json, 0,
	  "Print the result as JSON", NULL },
	CLI_COMMON_OPTIONS,
	POPT_TABLEEND
};

static const char *sb_state(const struct cdisk_info *i, int slot)
{
	return i->sb_valid[slot] ? "good" : "damaged";
}

static void print_human(const char *path, const struct cdisk_info *i,
			const struct cdisk_check_report *rep)
{
	char a[32], b[32];

	printf("disk:            %s\n", path);
	printf("uuid:            %s\n", i->uuid);
	printf("format:          cdisk version %u\n", i->format_version);
	printf("size:            %s (%" PRIu64 " bytes)\n",
	       cd_format_size(i->size, a, sizeof(a)), i->size);
	printf("block size:      %u\n", i->block_size);
	printf("blocks:          %" PRIu64 " (%" PRIu64 " present, %" PRIu64 " dirty)\n",
	       i->blocks, i->blocks_present, i->blocks_dirty);
	const char *role = i->on_primary ? "primary:         " : "base:            ";

	if (i->on_primary)
		printf("overlay:         none: the data is read and written in place "
		       "on the primary\n");
	else
		printf("overlay:         %s present, %s not yet on the base\n",
		       cd_format_size(i->blocks_present * i->block_size, a, sizeof(a)),
		       cd_format_size(i->blocks_dirty * i->block_size, b, sizeof(b)));
	if (!i->base[0])
		printf("base:            none\n");
	else if (i->base_opening_ms)
		printf("%s%s (not answering: opening for %.1f s)\n", role, i->base,
		       (double)i->base_opening_ms / 1000);
	else if (i->base_reachable)
		printf("%s%s (%s, reachable)\n", role, i->base,
		       cd_format_size(i->base_size, a, sizeof(a)));
	else if (i->base_error == 0)
		printf("%s%s (not opened yet)\n", role, i->base);
	else
		printf("%s%s (unreachable: %s)\n", role, i->base, i->base_error_msg);
	if (!i->mirror[0])
		printf("mirror:          none\n");
	else if (i->failed_over)
		printf("mirror:          none: failed over; the former primary %s is "
		       "fenced (cdisk-mirror status)\n", i->mirror);
	else
		printf("mirror:          %s (%s)\n", i->mirror,
		       i->mirror_active ? "active" : "recorded, not active");
	if (i->unconfirmed)
		printf("metadata backup: none written: the disk is unconfirmed\n");
	else if (i->backup_exists)
		printf("metadata backup: %s (written %" PRIu64 " s ago)\n", i->backup_path,
		       i->backup_age);
	else if (i->backup_path[0])
		printf("metadata backup: %s (not written yet)\n", i->backup_path);
	else
		printf("metadata backup: none configured\n");
	if (i->unconfirmed)
		printf("identity:        unconfirmed: restored by force; no sync to the "
		       "base until 'cdisk-restore --confirm'\n");
	printf("cache mode:      writeback\n");
	printf("superblocks:     A %s, B %s (sequence %" PRIu64 ")\n",
	       sb_state(i, 0), sb_state(i, 1), i->sb_seq);
	printf("last close:      %s\n", i->closed_cleanly ? "clean" :
	       "not clean (recovered at open)");
	printf("host space:      %s\n", cd_format_size(i->file_bytes, a, sizeof(a)));
	if (rep) {
		printf("check:\n");
		for (unsigned n = 0; n < rep->nlines; n++)
			printf("  %s\n", rep->lines[n]);
		printf("check result:    %u error%s, %u repaired, %u warning%s\n",
		       rep->errors, cli_plural(rep->errors), rep->repaired, rep->warnings,
		       cli_plural(rep->warnings));
	}
}

/* -q --check, for cron: nothing when all is well, else the problems. */
static void print_problems(const char *path, const struct cdisk_check_report *rep)
{
	for (unsigned n = 0; n < rep->nlines; n++)
		if (rep->problems[n])
			printf("%s: %s\n", path, rep->lines[n]);
}

static json_t *check_json(const struct cdisk_check_report *rep)
{
	json_t *lines = json_array();

	for (unsigned n = 0; n < rep->nlines; n++)
		json_array_append_new(lines, json_string(rep->lines[n]));
	json_t *backup = rep->backup_path[0] ?
		json_pack("{s:s, s:I, s:b}", "path", rep->backup_path,
			  "age_seconds", (json_int_t)rep->backup_age,
			  "matches", rep->backup_matches) : json_null();

	return json_pack("{s:i, s:i, s:i, s:o, s:o}", "errors", rep->errors,
			 "repaired", rep->repaired, "warnings", rep->warnings,
			 "findings", lines, "metadata_backup", backup);
}

/* served: the export a served disk is, from its server's status (its
 * name and io go into the document); NULL otherwise. */
static int print_json(const char *path, const struct cdisk_info *i,
		      const struct cdisk_check_report *rep, json_t *served)
{
	json_t *base = i->base[0] ?
		json_pack("{s:s, s:b, s:I, s:s?, s:b, s:I}", "uri", i->base,
			  "reachable", i->base_reachable, "size", (json_int_t)i->base_size,
			  "error", i->base_reachable || !i->base_error ? NULL
							       : i->base_error_msg,
			  "opening", i->base_opening_ms != 0,
			  "opening_ms", (json_int_t)i->base_opening_ms) :
		json_null();
	json_t *j = json_pack(
		"{s:i, s:s, s:s, s:i, s:I, s:i, s:I, s:I, s:I, s:o, s:s?, s:s?, s:s,"
		" s:{s:b, s:b, s:I}, s:b, s:I, s:I, s:I}",
		"schema_version", 1, "disk", path, "uuid", i->uuid,
		"format_version", (int)i->format_version, "size", (json_int_t)i->size,
		"block_size", (int)i->block_size, "blocks", (json_int_t)i->blocks,
		"blocks_present", (json_int_t)i->blocks_present,
		"blocks_dirty", (json_int_t)i->blocks_dirty, "base", base,
		"mirror", i->mirror[0] && !i->failed_over ? i->mirror : NULL,
		"meta_backup", i->meta_backup[0] ? i->meta_backup : NULL,
		"cache_mode", "writeback",
		"superblocks", "a_valid", i->sb_valid[0], "b_valid", i->sb_valid[1],
		"sequence", (json_int_t)i->sb_seq,
		"closed_cleanly", i->closed_cleanly,
		"journal_records_replayed", (json_int_t)i->journal_records,
		"recovered_blocks", (json_int_t)i->recovered_blocks,
		"host_bytes", (json_int_t)i->file_bytes);

	if (!j)
		return -ENOMEM;
	/* On a disk on a primary, the base's object describes the primary. */
	if (i->on_primary) {
		json_object_set(j, "primary", base);
		json_object_set_new(j, "base", json_null());
	} else {
		json_object_set_new(j, "primary", json_null());
	}
	json_object_set_new(j, "unconfirmed", json_boolean(i->unconfirmed));
	json_object_set_new(j, "mirror_active", json_boolean(i->mirror_active &&
							     !i->failed_over));
	json_object_set_new(j, "former_primary", i->failed_over ? json_string(i->mirror)
							       : json_null());
	json_object_set_new(j, "metadata_backup", !i->backup_exists ? json_null() :
			    json_pack("{s:s, s:I}", "path", i->backup_path,
				      "age_seconds", (json_int_t)i->backup_age));
	if (rep)
		json_object_set_new(j, "check", check_json(rep));
	if (served)
		json_object_update_new(j, json_pack("{s:O?, s:O?}", "export",
						    json_object_get(served, "name"), "io",
						    json_object_get(served, "io")));
	return cli_print_json(j);
}

static int open_disk(struct cdisk_ctx *ctx, const char *path, struct cdisk **disk)
{
	int r;

	if (!check || no_repair)
		return cdisk_open(ctx, path, CDISK_OPEN_RDONLY, disk);
	/* Repairs need write access; without it, check what can be read. */
	r = cdisk_open(ctx, path, 0, disk);
	if (r == -EACCES || r == -EROFS || r == -EPERM)
		r = cdisk_open(ctx, path, CDISK_OPEN_RDONLY, disk);
	return r;
}

/* Gather, check when asked, and print.  A check with problems left
 * still prints its report before the error. */
static int show(struct cdisk *disk, const char *path)
{
	struct cdisk_check_report report = { 0 };
	struct cdisk_info info;
	int r = 0, checked = 0;

	if (check)
		checked = cdisk_check(disk, !no_repair, &report);
	if (checked < 0 && checked != -EUCLEAN)
		r = checked;
	if (r == 0)
		r = cdisk_get_info(disk, &info);
	if (r == 0 && cli.json)
		r = print_json(path, &info, check ? &report : NULL, NULL);
	else if (r == 0 && check && cli.quiet)
		print_problems(path, &report);
	else if (r == 0)
		print_human(path, &info, check ? &report : NULL);
	cdisk_check_report_free(&report);
	return r < 0 ? r : checked;
}

/* The served disk's export and statistics, from its server's status;
 * NULL when they cannot be had (the server stopped meanwhile). */
static json_t *served_export(struct cdisk_ctx *ctx, const char *path)
{
	char *text = NULL;
	json_t *status, *e;

	if (cdisk_status_from_owner(ctx, path, &text) < 0)
		return NULL;
	status = json_loads(text, 0, NULL);
	free(text);
	e = json_incref(json_array_get(json_object_get(status, "exports"), 0));
	json_decref(status);
	return e;
}

/* One line an op a client used: count, bytes, errors, latencies. */
static void print_io_human(json_t *io)
{
	const char *op;
	json_t *o;
	char a[32];

	json_object_foreach(json_object_get(io, "ops"), op, o) {
		json_t *l = json_object_get(o, "latency_us");

		printf("  %-13s %" JSON_INTEGER_FORMAT " requests, %s, %" JSON_INTEGER_FORMAT
		       " errors; latency p50 %" JSON_INTEGER_FORMAT " us, p99 %"
		       JSON_INTEGER_FORMAT " us, p999 %" JSON_INTEGER_FORMAT " us\n", op,
		       json_integer_value(json_object_get(o, "requests")),
		       cd_format_size((uint64_t)json_integer_value(json_object_get(o, "bytes")),
				      a, sizeof(a)),
		       json_integer_value(json_object_get(o, "errors")),
		       json_integer_value(json_object_get(l, "p50")),
		       json_integer_value(json_object_get(l, "p99")),
		       json_integer_value(json_object_get(l, "p999")));
	}
}

static void print_served_human(json_t *e)
{
	json_t *io = json_object_get(e, "io");

	printf("served as:       %s (%" JSON_INTEGER_FORMAT " connection%s, queue depth %"
	       JSON_INTEGER_FORMAT ", %" JSON_INTEGER_FORMAT " waits for limits)\n",
	       json_string_value(json_object_get(e, "name")),
	       json_integer_value(json_object_get(e, "connections")),
	       cli_plural((uint64_t)json_integer_value(json_object_get(e, "connections"))),
	       json_integer_value(json_object_get(io, "queue_depth")),
	       json_integer_value(json_object_get(io, "limit_waits")));
	print_io_human(io);
}

/* A disk in use is described by the process that owns it, with the
 * statistics of the export it is when that is a server. */
static int show_from_owner(struct cdisk_ctx *ctx, const char *path)
{
	struct cdisk_info info;
	int r = cdisk_info_from_owner(ctx, path, &info);
	json_t *served;

	if (r < 0)
		return r;
	served = served_export(ctx, path);
	if (cli.json) {
		r = print_json(path, &info, NULL, served);
	} else {
		print_human(path, &info, NULL);
		if (served)
			print_served_human(served);
	}
	json_decref(served);
	return r;
}

/* ---- statistics: --metrics, --control ---- */

/* The Prometheus text of a status reply, on stdout whole or not at all. */
static int print_metrics(struct cdisk_ctx *ctx, const char *status)
{
	char *text = NULL;
	int r = cdisk_metrics_text(ctx, status, &text);

	if (r == 0 && fputs(text, stdout) == EOF)
		r = -EIO;
	free(text);
	return r;
}

static int print_status_json(const char *status)
{
	json_t *j = json_loads(status, 0, NULL);

	return j ? cli_print_json(j) : -EBADMSG;
}

static int show_stats(struct cdisk_ctx *ctx, const char *disk)
{
	char *status = NULL;
	int r = disk ? cdisk_status_from_owner(ctx, disk, &status)
		     : cdisk_server_status(ctx, control_arg, &status);

	if (r == 0)
		r = metrics ? print_metrics(ctx, status) : print_status_json(status);
	free(status);
	return r;
}

/* ---- --pool: a pool's images ---- */

static int pool_image_json(void *opaque, const struct cdisk_pool_image *img)
{
	json_t *o = json_pack("{s:s, s:s, s:s, s:b, s:I, s:I}", "export", img->export_name,
			      "user", img->user, "image", img->image, "read_only",
			      img->shared, "size", (json_int_t)img->size, "used_bytes",
			      (json_int_t)img->used_bytes);

	if (!o)
		return -ENOMEM;
	json_object_set_new(o, "path", img->skipped ? json_null() : json_string(img->path));
	json_object_set_new(o, "skipped", img->skipped ? json_string(img->skipped)
						       : json_null());
	return json_array_append_new(opaque, o) < 0 ? -ENOMEM : 0;
}

static int pool_image_line(void *opaque, const struct cdisk_pool_image *img)
{
	char a[32], b[32];

	(void)opaque;
	if (img->skipped) {
		fprintf(stderr, "%s: not served: '%s': %s\n", program.name, img->export_name,
			img->skipped);
		return 0;
	}
	printf("%-40s %10s %10s%s\n", img->export_name, cd_format_size(img->size, a, sizeof(a)),
	       cd_format_size(img->used_bytes, b, sizeof(b)), img->shared ? "  read-only" : "");
	return 0;
}

static int list_pool(struct cdisk_ctx *ctx)
{
	json_t *list = NULL;
	int r;

	if (cli.json)
		list = json_array();
	else if (!cli.quiet)
		printf("%-40s %10s %10s\n", "EXPORT", "SIZE", "USED");
	r = cdisk_pool_list(ctx, pool_arg, user_arg, cli.json ? pool_image_json : pool_image_line,
			    list);
	if (r == 0 && cli.json)
		return cli_print_json(json_pack("{s:i, s:s, s:o}", "schema_version", 1, "pool",
						pool_arg, "images", list));
	json_decref(list);
	return r;
}

/* --metrics and --control: the statistics of a served disk or of a whole
 * server, alone. */
static void check_stats_usage(bool disk)
{
	if (control_arg && disk)
		cli_usage_error("--control shows a whole server: give no disk with it");
	if (control_arg && !metrics && !cli.json)
		cli_usage_error("--control goes with --metrics or --json");
	if (metrics && cli.json)
		cli_usage_error("--metrics and --json are two formats: give one");
	if ((metrics || control_arg) && (check || pool_arg))
		cli_usage_error("%s goes with neither --check nor --pool",
				metrics ? "--metrics" : "--control");
}

int main(int argc, char **argv)
{
	struct cdisk_ctx *ctx;
	struct cdisk *disk;
	const char **args;
	int r, closed;

	args = cli_parse(&program, argc, (const char **)argv, options, 0, 1);
	if (pool_arg && args && args[0])
		cli_usage_error("--pool lists a pool: give no disk with it");
	if (!pool_arg && !control_arg && (!args || !args[0]))
		cli_usage_error("missing argument: %s", program.args);
	if (user_arg && !pool_arg)
		cli_usage_error("--user goes with --pool");
	if (pool_arg && check)
		cli_usage_error("--check goes with a disk, not --pool");
	check_stats_usage(args && args[0]);
	ctx = cli_context();
	if (metrics || control_arg) {
		r = cli_exit_code(ctx, show_stats(ctx, control_arg ? NULL : args[0]));
		cdisk_ctx_free(ctx);
		return r;
	}
	if (pool_arg) {
		r = cli_exit_code(ctx, list_pool(ctx));
		cdisk_ctx_free(ctx);
		return r;
	}
	r = open_disk(ctx, args[0], &disk);
	if (r == -EBUSY && !check)
		r = show_from_owner(ctx, args[0]);
	else if (r == 0) {
		r = show(disk, args[0]);
		closed = cdisk_close(disk);
		if (r == 0)
			r = closed;
	}
	r = cli_exit_code(ctx, r);
	cdisk_ctx_free(ctx);
	return r;
}

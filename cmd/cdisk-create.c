/* cdisk-create: create a disk, or confirm that it exists as asked. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "cli.h"

static const struct cli_program program = {
	.name = "cdisk-create",
	.args = "NAME.cdisk",
	.summary = "create a cdisk (idempotent: the same arguments again change nothing)",
};

static char *size_arg, *block_size_arg, *base_arg, *primary_arg, *mirror_arg, *meta_backup_arg;
static char *folder_arg, *fs_arg, *owner_arg;
static int writer_arg;

/* --include and --exclude may be given many times. */
#define MAX_GLOBS 64
static const char *includes[MAX_GLOBS + 1], *excludes[MAX_GLOBS + 1];
static unsigned nincludes, nexcludes;
enum { OPT_INCLUDE = 1, OPT_EXCLUDE };

static void glob_callback(poptContext con, enum poptCallbackReason reason,
			  const struct poptOption *opt, const char *arg, void *data)
{
	(void)con, (void)reason, (void)data;
	/* popt frees arg once parsing is done: keep a copy. */
	if (opt->val == OPT_INCLUDE && nincludes < MAX_GLOBS)
		includes[nincludes++] = strdup(arg);
	else if (opt->val == OPT_EXCLUDE && nexcludes < MAX_GLOBS)
		excludes[nexcludes++] = strdup(arg);
	else
		cli_usage_error("more than %d --%s globs", MAX_GLOBS, opt->longName);
}

static struct poptOption folder_options[] = {
	{ NULL, '\0', POPT_ARG_CALLBACK, (void *)glob_callback, 0, NULL, NULL },
	{ "include", '\0', POPT_ARG_STRING, NULL, OPT_INCLUDE,
	  "With --from-folder: only files matching GLOB (many times)", "GLOB" },
	{ "exclude", '\0', POPT_ARG_STRING, NULL, OPT_EXCLUDE,
	  "With --from-folder: not files matching GLOB (many times)", "GLOB" },
	POPT_TABLEEND
};

static struct poptOption options[] = {
	{ "size", 's', POPT_ARG_STRING, &size_arg, 0,
	  "Virtual size (default: the size of the base or primary)", "SIZE" },
	{ "block-size", 'b', POPT_ARG_STRING, &block_size_arg, 0,
	  "Block size, a power of two from 512 to 1M (default 4096)", "N" },
	{ "base", '\0', POPT_ARG_STRING, &base_arg, 0,
	  "Read-only base under the overlay", "URI" },
	{ "primary", '\0', POPT_ARG_STRING, &primary_arg, 0,
	  "The disk's data lives here, read and written in place (no overlay)", "URI" },
	{ "mirror", '\0', POPT_ARG_STRING, &mirror_arg, 0,
	  "Synchronous mirror target", "URI" },
	{ "meta-backup", '\0', POPT_ARG_STRING, &meta_backup_arg, 0,
	  "Where copies of the metadata are kept", "PATH" },
	{ "from-folder", '\0', POPT_ARG_STRING, &folder_arg, 0,
	  "A disk over the files of a cloud folder, s3://BUCKET/PREFIX/", "URI" },
	{ "fs", '\0', POPT_ARG_STRING, &fs_arg, 0,
	  "With --from-folder: the filesystem (ext4)", "FS" },
	{ "owner", '\0', POPT_ARG_STRING, &owner_arg, 0,
	  "With --from-folder: owner of every file (default 0:0)", "UID:GID" },
	{ "writer", '\0', POPT_ARG_NONE, &writer_arg, 0,
	  "With --from-folder: the folder's one writer disk", NULL },
	{ NULL, '\0', POPT_ARG_INCLUDE_TABLE, folder_options, 0, NULL, NULL },
	{ "json", 'J', POPT_ARG_NONE, &cli.json, 0,
	  "Print the result as JSON", NULL },
	CLI_COMMON_OPTIONS,
	POPT_TABLEEND
};

static void report(const char *path, int result)
{
	bool changed = result == 0;

	if (cli.json) {
		json_t *j = json_pack("{s:i, s:s, s:b}", "schema_version", 1,
				      "disk", path, "changed", changed);
		if (j)
			json_dumpf(j, stdout, JSON_INDENT(2));
		putchar('\n');
		json_decref(j);
		return;
	}
	if (changed)
		cli_message("created '%s'", path);
	else
		cli_message("'%s' unchanged", path);
}

static json_t *usage_json(const struct cdisk_cache_usage *u)
{
	return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
			 "objects", (json_int_t)u->objects,
			 "object_bytes", (json_int_t)u->object_bytes,
			 "images", (json_int_t)u->images,
			 "image_bytes", (json_int_t)u->image_bytes,
			 "images_in_use", (json_int_t)u->images_in_use,
			 "max_size", (json_int_t)u->max_size,
			 "evicted", (json_int_t)u->evicted);
}

static void report_folder(const char *path, int result, const struct cdisk_folder_result *f)
{
	const struct cdisk_cache_usage *u = &f->cache;
	char a[32], b[32], c[32], d[32];

	if (cli.json) {
		json_t *j = json_pack("{s:i, s:s, s:b, s:s, s:s, s:I, s:I, s:I, s:I, s:I, "
				      "s:I, s:I, s:b, s:o}",
				      "schema_version", 1, "disk", path, "changed", result == 0,
				      "image", f->image, "state", f->state,
				      "size", (json_int_t)f->size, "files", (json_int_t)f->files,
				      "dirs", (json_int_t)f->dirs, "bytes", (json_int_t)f->bytes,
				      "fetched", (json_int_t)f->fetched,
				      "fetched_bytes", (json_int_t)f->fetched_bytes,
				      "damaged", (json_int_t)f->damaged,
				      "image_reused", f->image_reused, "cache", usage_json(u));
		cli_print_json(j);
		return;
	}
	cli_message("%s '%s' over %s", result == 0 ? "created" : "unchanged:", path, f->image);
	cli_message("%llu file%s, %s; fetched %llu (%s)%s; image %s",
		    (unsigned long long)f->files, cli_plural(f->files),
		    cd_format_size(f->bytes, a, sizeof(a)),
		    (unsigned long long)f->fetched,
		    cd_format_size(f->fetched_bytes, b, sizeof(b)),
		    f->damaged ? ", damaged copies fetched again" : "",
		    f->image_reused ? "reused" : "built");
	cli_message("cache: %llu file%s (%s), %llu image%s (%s, %llu in use), max %s",
		    (unsigned long long)u->objects, cli_plural(u->objects),
		    cd_format_size(u->object_bytes, c, sizeof(c)),
		    (unsigned long long)u->images, cli_plural(u->images),
		    cd_format_size(u->image_bytes, d, sizeof(d)),
		    (unsigned long long)u->images_in_use,
		    cd_format_size(u->max_size, a, sizeof(a)));
}

static void parse_owner(struct cdisk_folder_opts *fo)
{
	unsigned long uid, gid;
	char *end;

	errno = 0;
	uid = strtoul(owner_arg, &end, 10);
	if (end == owner_arg || *end != ':' || errno || uid > UINT32_MAX - 1)
		goto bad;
	gid = strtoul(end + 1, &end, 10);
	if (*end || errno || gid > UINT32_MAX - 1 || !end[-1] || end[-1] == ':')
		goto bad;
	fo->uid = (uint32_t)uid;
	fo->gid = (uint32_t)gid;
	return;
bad:
	cli_usage_error("invalid owner '%s': expected UID:GID, two numbers", owner_arg);
}

static int create_from_folder(const char *path, uint64_t size)
{
	struct cdisk_folder_opts fo = {
		.uri = folder_arg, .size = size, .fs = fs_arg, .include = includes,
		.exclude = excludes, .writer = writer_arg,
	};
	struct cdisk_folder_result *res = calloc(1, sizeof(*res));
	struct cdisk_ctx *ctx;
	int r;

	if (!res) {
		cli_error("out of memory");
		return CDISK_EXIT_FAILURE;
	}
	if (base_arg || mirror_arg || primary_arg)
		cli_usage_error("--from-folder makes the base; it takes no --base, --primary "
				"or --mirror");
	if (owner_arg)
		parse_owner(&fo);
	ctx = cli_context();
	r = cdisk_create_from_folder(ctx, path, &fo, res);
	if (r >= 0)
		report_folder(path, r, res);
	r = cli_exit_code(ctx, r < 0 ? r : 0);
	cdisk_ctx_free(ctx);
	free(res);
	return r;
}

int main(int argc, char **argv)
{
	struct cdisk_create_opts opts = { 0 };
	struct cdisk_ctx *ctx;
	const char **args;
	int r;

	args = cli_parse(&program, argc, (const char **)argv, options, 1, 1);
	if (size_arg)
		opts.size = cli_parse_size("size", size_arg);
	if (block_size_arg) {
		uint64_t bs = cli_parse_size("block size", block_size_arg);
		if (bs > CDISK_MAX_BLOCK_SIZE || bs < CDISK_MIN_BLOCK_SIZE || (bs & (bs - 1)))
			cli_usage_error("invalid block size '%s': must be a power of two "
					"from 512 to 1048576", block_size_arg);
		opts.block_size = (uint32_t)bs;
	}
	if (size_arg && opts.size == 0)
		cli_usage_error("invalid size '%s': must be more than zero", size_arg);
	if (folder_arg)
		return create_from_folder(args[0], opts.size);
	if (fs_arg || owner_arg || writer_arg || nincludes || nexcludes)
		cli_usage_error("--fs, --owner, --writer, --include and --exclude go with "
				"--from-folder");
	if (base_arg && primary_arg)
		cli_usage_error("--base and --primary: a disk is an overlay over a base or "
				"has its data on a primary, not both");
	opts.base = base_arg;
	opts.primary = primary_arg;
	opts.mirror = mirror_arg;
	opts.meta_backup = meta_backup_arg;

	ctx = cli_context();
	r = cdisk_create(ctx, args[0], &opts);
	if (r >= 0)
		report(args[0], r);
	r = cli_exit_code(ctx, r < 0 ? r : 0);
	cdisk_ctx_free(ctx);
	return r;
}

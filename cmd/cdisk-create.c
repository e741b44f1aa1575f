/* cdisk-create: create a disk, or confirm that it exists as asked. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"

static const struct cli_program program = {
	.name = "cdisk-create",
	.args = "NAME.cdisk",
	.summary = "create a cdisk (idempotent: the same arguments again change nothing)",
};

static char *size_arg, *block_size_arg, *base_arg, *mirror_arg, *meta_backup_arg;

static struct poptOption options[] = {
	{ "size", 's', POPT_ARG_STRING, &size_arg, 0,
	  "Virtual size (default: the size of the base)", "SIZE" },
	{ "block-size", 'b', POPT_ARG_STRING, &block_size_arg, 0,
	  "Block size, a power of two from 512 to 1M (default 4096)", "N" },
	{ "base", '\0', POPT_ARG_STRING, &base_arg, 0,
	  "Read-only base under the overlay", "URI" },
	{ "mirror", '\0', POPT_ARG_STRING, &mirror_arg, 0,
	  "Synchronous mirror target", "URI" },
	{ "meta-backup", '\0', POPT_ARG_STRING, &meta_backup_arg, 0,
	  "Where copies of the metadata are kept", "PATH" },
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
	opts.base = base_arg;
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

/* cdisk-restore: rebuild what a disk lost.  This version rebuilds
 * damaged metadata from its backup (--metadata). */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"

static const struct cli_program program = {
	.name = "cdisk-restore",
	.args = "NAME.cdisk",
	.summary = "rebuild a cdisk's damaged metadata from its backup",
};

static int metadata, force;
static char *from;

static struct poptOption options[] = {
	{ "metadata", 'm', POPT_ARG_NONE, &metadata, 0,
	  "Rebuild the disk's metadata from its backup", NULL },
	{ "from", '\0', POPT_ARG_STRING, &from, 0,
	  "Use this backup file instead of the disk's own", "PATH" },
	{ "force", 'f', POPT_ARG_NONE, &force, 0,
	  "Restore even over sound metadata or from a backup older than the "
	  "disk's last checkpoint", NULL },
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
}

int main(int argc, char **argv)
{
	struct cdisk_restore_report rep;
	struct cdisk_ctx *ctx;
	const char **args;
	int r;

	args = cli_parse(&program, argc, (const char **)argv, options, 1, 1);
	if (!metadata)
		cli_usage_error("nothing to do: give --metadata");
	ctx = cli_context();
	r = cdisk_restore_metadata(ctx, args[0], from, force, &rep);
	if (r == 0)
		report(args[0], &rep);
	r = cli_exit_code(ctx, r);
	cdisk_ctx_free(ctx);
	return r;
}

/* cdisk-restore: rebuild what a disk lost.  This version rebuilds
 * damaged metadata from its backup (--metadata), and confirms a disk
 * restored by force from a backup that nothing proved its own (--confirm). */
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

static int metadata, force, confirm;
static char *from;

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

int main(int argc, char **argv)
{
	struct cdisk_restore_report rep;
	struct cdisk_ctx *ctx;
	const char **args;
	int r;

	args = cli_parse(&program, argc, (const char **)argv, options, 1, 1);
	if (metadata == confirm)
		cli_usage_error(metadata ? "--metadata and --confirm are separate steps"
					 : "nothing to do: give --metadata or --confirm");
	if (confirm && (from || force))
		cli_usage_error("--confirm takes neither --from nor --force");
	ctx = cli_context();
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

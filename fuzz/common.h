/* What both fuzz targets need: a server with one real export, made once
 * in LLVMFuzzerInitialize so none of it counts as a leak of an input. */
#ifndef CDISK_FUZZ_COMMON_H
#define CDISK_FUZZ_COMMON_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>

#include "cdisk.h"
#include "ctx.h"
#include "server.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char fuzz_dir[4096];

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *f)
{
	(void)st;
	(void)flag;
	(void)f;
	remove(path);
	return 0;
}

/* The disk and its backup go when the run ends (a crash keeps them). */
static void remove_fuzz_dir(void)
{
	nftw(fuzz_dir, remove_one, 8, FTW_DEPTH | FTW_PHYS);
}

static struct cdisk_server *fuzz_server(const char *name, uint32_t block_size)
{
	struct cdisk_ctx *ctx = cdisk_ctx_new();
	struct cdisk_create_opts o = { .size = 1 << 20, .block_size = block_size };
	struct cdisk_server *srv;
	const char *tmp = getenv("TMPDIR");
	char path[4200];

	snprintf(fuzz_dir, sizeof(fuzz_dir), "%s/cdisk-fuzz-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (!ctx || !mkdtemp(fuzz_dir))
		abort();
	atexit(remove_fuzz_dir);
	snprintf(path, sizeof(path), "%s/%s.cdisk", fuzz_dir, name);
	snprintf(ctx->cfg.backup_dir, sizeof(ctx->cfg.backup_dir), "%s/meta", fuzz_dir);
	if (cdisk_create(ctx, path, &o) < 0 || cdisk_server_new(ctx, &srv) < 0 ||
	    cdisk_server_add_export(srv, name, path, false) < 0)
		abort();
	return srv;
}

#endif

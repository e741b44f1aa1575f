/* What both fuzz targets need: a server with one real export, made once
 * in LLVMFuzzerInitialize so none of it counts as a leak of an input. */
#ifndef CDISK_FUZZ_COMMON_H
#define CDISK_FUZZ_COMMON_H

#include <stdio.h>
#include <stdlib.h>

#include "server.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct cdisk_server *fuzz_server(const char *name, uint32_t block_size)
{
	struct cdisk_ctx *ctx = cdisk_ctx_new();
	struct cdisk_create_opts o = { .size = 1 << 20, .block_size = block_size };
	struct cdisk_server *srv;
	char dir[] = "/tmp/cdisk-fuzz-XXXXXX", path[64];

	if (!ctx || !mkdtemp(dir))
		abort();
	snprintf(path, sizeof(path), "%s/%s.cdisk", dir, name);
	snprintf(ctx->cfg.backup_dir, sizeof(ctx->cfg.backup_dir), "%s/meta", dir);
	if (cdisk_create(ctx, path, &o) < 0 || cdisk_server_new(ctx, &srv) < 0 ||
	    cdisk_server_add_export(srv, name, path, false) < 0)
		abort();
	return srv;
}

#endif

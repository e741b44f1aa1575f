/* Contexts: where errors are kept and log messages go. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "cdisk.h"
#include "ctx.h"
#include "util.h"

struct cdisk_ctx *cdisk_ctx_new(void)
{
	struct cdisk_ctx *ctx = calloc(1, sizeof(struct cdisk_ctx));

	if (ctx)
		cd_config_defaults(&ctx->cfg);
	return ctx;
}

void cdisk_ctx_free(struct cdisk_ctx *ctx)
{
	free(ctx);
}

void cdisk_ctx_set_log(struct cdisk_ctx *ctx, cdisk_log_fn fn, void *opaque)
{
	ctx->log_fn = fn;
	ctx->log_opaque = opaque;
}

const char *cdisk_ctx_runtime_dir(const struct cdisk_ctx *ctx)
{
	return ctx->cfg.runtime_dir;
}

/* The last error is kept per thread, as libnbd keeps it: many threads
 * (an NBD server's workers, a sync's) fail at once, and each must report
 * its own cause, never a neighbour's. */
static __thread char thread_error[CD_ERROR_MAX];

char *cd_errbuf(void)
{
	return thread_error;
}

const char *cdisk_ctx_error(const struct cdisk_ctx *ctx)
{
	(void)ctx;
	return thread_error;
}

int cd_error(struct cdisk_ctx *ctx, int err, const char *fmt, ...)
{
	char msg[CD_ERROR_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	memcpy(thread_error, msg, sizeof(msg));
	cd_log(ctx, CDISK_LOG_DEBUG, "error: %s", msg);
	return err;
}

void cd_log(struct cdisk_ctx *ctx, enum cdisk_log_level level,
	    const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	if (!ctx->log_fn)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	ctx->log_fn(ctx->log_opaque, level, msg);
}


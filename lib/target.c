/* Targets: every block store sits behind the same few calls.  The checks
 * that do not depend on the kind of store live here, once. */
#include <stdlib.h>

#include "internal.h"

static const struct cd_target_ops *ops_for(enum cd_scheme scheme)
{
	switch (scheme) {
	case CD_SCHEME_FILE:
		return &cd_file_target_ops;
	default:
		return NULL;
	}
}

int cd_target_open(struct cdisk_ctx *ctx, const char *uri, bool readonly,
		   struct cd_target **out)
{
	struct cd_uri u;
	struct cd_target *t = NULL;
	int r = cd_uri_parse(ctx, uri, &u);

	if (r < 0)
		return r;
	if (!ops_for(u.scheme)) {
		r = cd_error(ctx, -ENOTSUP, "cannot open '%s': %s targets are not "
			     "supported by this version of cdisk", uri,
			     cd_scheme_name(u.scheme));
		goto out;
	}
	t = calloc(1, sizeof(*t));
	if (!t || !(t->uri = strdup(uri))) {
		r = cd_error(ctx, -ENOMEM, "cannot open '%s': out of memory", uri);
		goto out;
	}
	t->ops = ops_for(u.scheme);
	t->ctx = ctx;
	t->readonly = readonly;
	r = t->ops->open(t, &u);
	if (r < 0)
		goto out;
	*out = t;
	t = NULL;
out:
	if (t) {
		free(t->uri);
		free(t);
	}
	cd_uri_clear(&u);
	return r;
}

static int check_range(struct cd_target *t, size_t len, uint64_t off)
{
	if (off > t->size || len > t->size - off)
		return cd_error(t->ctx, -EINVAL, "'%s': request at %llu+%zu is past the "
				"end (%llu bytes)", t->uri, (unsigned long long)off,
				len, (unsigned long long)t->size);
	return 0;
}

int cd_target_pread(struct cd_target *t, void *buf, size_t len, uint64_t off)
{
	int r = check_range(t, len, off);

	return r < 0 ? r : t->ops->pread(t, buf, len, off);
}

static int check_writable(struct cd_target *t)
{
	if (t->readonly)
		return cd_error(t->ctx, -EROFS, "cannot write to '%s': it is read-only",
				t->uri);
	return 0;
}

int cd_target_pwrite(struct cd_target *t, const void *buf, size_t len,
		     uint64_t off)
{
	int r = check_writable(t);

	if (r == 0)
		r = check_range(t, len, off);
	return r < 0 ? r : t->ops->pwrite(t, buf, len, off);
}

int cd_target_flush(struct cd_target *t)
{
	if (t->readonly || !t->can_flush)
		return 0;
	return t->ops->flush(t);
}

int cd_target_zero(struct cd_target *t, size_t len, uint64_t off)
{
	int r = check_writable(t);

	if (r == 0)
		r = check_range(t, len, off);
	if (r < 0)
		return r;
	if (t->can_zero && t->ops->zero) {
		r = t->ops->zero(t, len, off);
		if (r != -EOPNOTSUPP)
			return r;
	}
	/* Fallback: write zeros in bounded pieces. */
	{
		size_t chunk = len < (1u << 20) ? len : (1u << 20);
		uint8_t *zeros = calloc(1, chunk ? chunk : 1);

		if (!zeros)
			return cd_error(t->ctx, -ENOMEM, "'%s': out of memory", t->uri);
		for (r = 0; len && r == 0;) {
			size_t n = len < chunk ? len : chunk;
			r = t->ops->pwrite(t, zeros, n, off);
			off += n;
			len -= n;
		}
		free(zeros);
	}
	return r;
}

void cd_target_close(struct cd_target *t)
{
	if (!t)
		return;
	t->ops->close(t);
	free(t->uri);
	free(t);
}

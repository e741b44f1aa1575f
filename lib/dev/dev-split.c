/* Splitting: large requests go to the layer below in pieces it accepts,
 * each at most max_request and a multiple of the alignment, so each is
 * retried on its own below.  Above this layer any length goes. */
#include <stdlib.h>

#include "ctx.h"
#include "dev.h"
#include "target.h"

struct split {
	struct cd_dev dev;
	size_t max;              /* 0: any */
};

/* The largest piece: max_request rounded down to whole sectors. */
static size_t piece_max(struct cd_dev *next)
{
	struct cd_dev_caps c;
	size_t max;

	cd_dev_caps(next, &c);
	if (!c.max_request)
		return 0;
	max = c.max_request - c.max_request % c.align;
	return max ? max : c.align;
}

enum op { OP_READ, OP_WRITE, OP_ZERO, OP_DISCARD };

static int call(struct cd_dev *next, enum op op, uint8_t *buf, size_t len,
		uint64_t off)
{
	switch (op) {
	case OP_READ:
		return cd_dev_pread(next, buf, len, off);
	case OP_WRITE:
		return cd_dev_pwrite(next, buf, len, off);
	case OP_ZERO:
		return cd_dev_zero(next, len, off);
	case OP_DISCARD:
		return cd_dev_discard(next, len, off);
	}
	return -EINVAL;
}

static int run(struct cd_dev *d, enum op op, uint8_t *buf, size_t len, uint64_t off)
{
	size_t max = ((struct split *)d)->max;

	if (!max)
		max = len;
	while (len) {
		size_t n = len < max ? len : max;
		int r = call(d->next, op, buf, n, off);

		if (r < 0)
			return r;
		if (buf)
			buf += n;
		off += n;
		len -= n;
	}
	return 0;
}

static int split_pread(struct cd_dev *d, void *buf, size_t len, uint64_t off)
{
	return run(d, OP_READ, buf, len, off);
}

static int split_pwrite(struct cd_dev *d, const void *buf, size_t len, uint64_t off)
{
	return run(d, OP_WRITE, (uint8_t *)buf, len, off);
}

static int split_zero(struct cd_dev *d, size_t len, uint64_t off)
{
	return run(d, OP_ZERO, NULL, len, off);
}

static int split_discard(struct cd_dev *d, size_t len, uint64_t off)
{
	return run(d, OP_DISCARD, NULL, len, off);
}

/* A set goes down together only when every piece fits in one request. */
static bool within_max(struct cd_dev *d, const struct cd_piece *p)
{
	size_t max = ((struct split *)d)->max;

	return !max || p->len <= max;
}

static int split_pieces(struct cd_dev *d, const struct cd_piece *v, size_t n)
{
	return cd_dev_pieces_through(d, v, n, within_max, split_pwrite);
}

static void split_caps(struct cd_dev *d, struct cd_dev_caps *c)
{
	cd_dev_caps(d->next, c);
	c->max_request = 0;
}

static void split_close(struct cd_dev *d)
{
	free(d);
}

static const struct cd_dev_ops split_ops = {
	.name = "split", .pread = split_pread, .pwrite = split_pwrite,
	.pwrite_pieces = split_pieces, .zero = split_zero, .discard = split_discard,
	.caps = split_caps, .close = split_close, .passes_whole = true,
};

struct cd_dev *cd_dev_split_new(struct cd_dev *next)
{
	struct split *sp = calloc(1, sizeof(*sp));

	if (!sp) {
		cd_error(next->t->ctx, -ENOMEM, "cannot open '%s': out of memory",
			 next->t->uri);
		return NULL;
	}
	sp->dev.ops = &split_ops;
	sp->dev.next = next;
	sp->dev.t = next->t;
	sp->max = piece_max(next);
	return &sp->dev;
}

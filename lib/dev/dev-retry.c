/* Retries with backoff.  Reads and flushes change nothing, so they are
 * sent again after a broken connection or a timeout.  A write whose fate
 * is unknown is not: an old copy arriving late could overwrite newer
 * data.  Every request is sent again when it never left because no
 * session could be made (cd_dev_unsent).  Each resend counts in the
 * face's `resent`.  Pings pass through: a probe counts what is lost. */
#include <stdlib.h>
#include <unistd.h>

#include "cdisk.h"
#include "ctx.h"
#include "dev.h"
#include "target.h"

struct retry {
	struct cd_dev dev;
	unsigned retries;
};

enum op { OP_READ, OP_WRITE, OP_PIECES, OP_ZERO, OP_DISCARD, OP_FLUSH };

struct request {
	enum op op;
	union {
		void *buf;
		const struct cd_piece *pieces;
	};
	size_t len;              /* OP_PIECES: how many */
	uint64_t off;
};

static int call(struct cd_dev *next, const struct request *q)
{
	switch (q->op) {
	case OP_READ:
		return cd_dev_pread(next, q->buf, q->len, q->off);
	case OP_WRITE:
		return cd_dev_pwrite(next, q->buf, q->len, q->off);
	case OP_PIECES:
		return cd_dev_pwrite_pieces(next, q->pieces, q->len);
	case OP_ZERO:
		return cd_dev_zero(next, q->len, q->off);
	case OP_DISCARD:
		return cd_dev_discard(next, q->len, q->off);
	case OP_FLUSH:
		return cd_dev_flush(next);
	}
	return -EINVAL;
}

static void backoff(unsigned attempt)
{
	unsigned ms = 100u << (attempt < 5 ? attempt : 5);

	usleep(ms * 1000);
}

/* A flush that covers only its own connection cannot be sent again on
 * another: the writes the broken one carried may have gone with it. */
static bool safe_to_resend(const struct cd_dev *d, enum op op)
{
	return op == OP_READ || (op == OP_FLUSH && !d->t->flush_every_session);
}

static int run(struct cd_dev *d, const struct request *q)
{
	struct retry *rt = (struct retry *)d;
	struct cd_target *t = d->t;
	unsigned attempt = 0;
	int r;

	for (;;) {
		cd_dev_unsent = false;
		r = call(d->next, q);
		if (r == 0)
			return 0;
		if (!cd_dev_unsent && !safe_to_resend(d, q->op))
			return r;
		if (!cd_target_error_transient(r) || attempt >= rt->retries)
			return r;
		cd_log(t->ctx, CDISK_LOG_INFO, "'%s': %s; trying again", t->uri,
		       cd_errbuf());
		backoff(attempt++);
		__atomic_add_fetch(&t->resent, 1, __ATOMIC_RELAXED);
	}
}

static int retry_pread(struct cd_dev *d, void *buf, size_t len, uint64_t off)
{
	struct request q = { .op = OP_READ, .buf = buf, .len = len, .off = off };

	return run(d, &q);
}

static int retry_pwrite(struct cd_dev *d, const void *buf, size_t len, uint64_t off)
{
	struct request q = { .op = OP_WRITE, .buf = (void *)buf, .len = len, .off = off };

	return run(d, &q);
}

static int retry_pieces(struct cd_dev *d, const struct cd_piece *v, size_t n)
{
	struct request q = { .op = OP_PIECES, .pieces = v, .len = n };

	return run(d, &q);
}

static int retry_zero(struct cd_dev *d, size_t len, uint64_t off)
{
	struct request q = { .op = OP_ZERO, .len = len, .off = off };

	return run(d, &q);
}

static int retry_discard(struct cd_dev *d, size_t len, uint64_t off)
{
	struct request q = { .op = OP_DISCARD, .len = len, .off = off };

	return run(d, &q);
}

static int retry_flush(struct cd_dev *d)
{
	struct request q = { .op = OP_FLUSH };

	return run(d, &q);
}

static void retry_close(struct cd_dev *d)
{
	free(d);
}

static const struct cd_dev_ops retry_ops = {
	.name = "retry", .pread = retry_pread, .pwrite = retry_pwrite,
	.pwrite_pieces = retry_pieces, .zero = retry_zero, .discard = retry_discard,
	.flush = retry_flush, .close = retry_close,
	/* A write is never sent twice but when it never left, and an
	 * asynchronous one leaves on a session that is there already. */
	.passes_whole = true,
};

struct cd_dev *cd_dev_retry_new(struct cd_dev *next, unsigned retries)
{
	struct retry *rt = calloc(1, sizeof(*rt));

	if (!rt) {
		cd_error(next->t->ctx, -ENOMEM, "cannot open '%s': out of memory",
			 next->t->uri);
		return NULL;
	}
	rt->dev.ops = &retry_ops;
	rt->dev.next = next;
	rt->dev.t = next->t;
	rt->retries = retries;
	return &rt->dev;
}

/* NBD targets through libnbd: nbd://, nbds:// and nbd+unix://.  One
 * libnbd handle is one session; every command goes out with libnbd's
 * asynchronous calls so that it can be given up after the timeout. */
#include <libnbd.h>
#include <stdlib.h>

#include "ctx.h"
#include "target.h"
#include "uri.h"
#include "util.h"

/* libnbd refuses requests above 64 MiB; servers often want 32 MiB. */
#define NBD_DEFAULT_MAX_REQUEST (32u << 20)

static int nbd_fail(struct cd_target *t, const char *what, int fallback)
{
	int err = nbd_get_errno();

	if (err <= 0)
		err = fallback;
	return cd_error(t->ctx, -err, "%s '%s': %s", what, t->uri,
			nbd_get_error() ? nbd_get_error() : strerror(err));
}

static int timed_out(struct cd_target *t, const char *what)
{
	return cd_error(t->ctx, -ETIMEDOUT, "%s '%s': no answer within %u s", what,
			t->uri, t->timeout_ms / 1000);
}

/* Drive the handle until pred(h) holds (0), the handle dies, or time
 * runs out (1, no message). */
static int run_until_deadline(struct cd_target *t, struct nbd_handle *h,
			      int (*pred)(struct nbd_handle *, int64_t), int64_t arg,
			      const char *what, uint64_t deadline)
{
	bool looked = false;

	for (;;) {
		uint64_t now;
		int r = pred(h, arg);

		if (r > 0)
			return 0;
		if (r < 0)
			return nbd_fail(t, what, EIO);
		if (nbd_aio_is_dead(h) || nbd_aio_is_closed(h))
			return nbd_fail(t, what, ECONNRESET);
		now = cd_now_ms();
		/* At the deadline, an answer already on the socket still
		 * counts: one look without waiting first. */
		if (now >= deadline && looked)
			return 1;
		looked = now >= deadline;
		if (nbd_poll(h, looked ? 0 : (int)(deadline - now)) < 0)
			return nbd_fail(t, what, ECONNRESET);
	}
}

static int run_until(struct cd_target *t, struct nbd_handle *h,
		     int (*pred)(struct nbd_handle *, int64_t), int64_t arg,
		     const char *what)
{
	int r = run_until_deadline(t, h, pred, arg, what, cd_now_ms() + t->timeout_ms);

	return r > 0 ? timed_out(t, what) : r;
}

static int is_ready(struct nbd_handle *h, int64_t unused)
{
	(void)unused;
	if (nbd_aio_is_ready(h))
		return 1;
	return nbd_aio_is_dead(h) || nbd_aio_is_closed(h) ? -1 : 0;
}

static int is_completed(struct nbd_handle *h, int64_t cookie)
{
	return nbd_aio_command_completed(h, (uint64_t)cookie);
}

static int wait_for(struct cd_target *t, struct nbd_handle *h, int64_t cookie,
		    const char *what)
{
	if (cookie < 0)
		return nbd_fail(t, what, EIO);
	return run_until(t, h, is_completed, cookie, what);
}

static int nbd_connect(struct cd_target *t, void **session)
{
	struct nbd_handle *h = nbd_create();
	int r;

	if (!h)
		return nbd_fail(t, "cannot reach", ENOMEM);
	/* Every read's result is checked before its buffer is used, so
	 * libnbd's zeroing of each buffer first is only cost: a quarter of
	 * a mirror's initial copy, in perf. */
	nbd_set_pread_initialize(h, false);
	/* Where the server says what reads as zeros, copies skip it. */
	if (nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) < 0) {
		r = nbd_fail(t, "cannot reach", ENOMEM);
		goto fail;
	}
	if (nbd_aio_connect_uri(h, t->uri) < 0) {
		r = nbd_fail(t, "cannot reach", ECONNREFUSED);
		/* A unix socket that is not there is a server that is not there. */
		if (r == -ENOENT)
			r = -ECONNREFUSED;
		goto fail;
	}
	r = run_until(t, h, is_ready, 0, "cannot reach");
	if (r < 0)
		goto fail;
	*session = h;
	return 0;
fail:
	nbd_close(h);
	return r;
}

static void nbd_disconnect(struct cd_target *t, void *session)
{
	(void)t;
	nbd_close(session);
}

static int nbd_open(struct cd_target *t, const struct cd_uri *uri)
{
	struct nbd_handle *h;
	int64_t size, max;
	int r;

	(void)uri;
	r = nbd_connect(t, (void **)&h);
	if (r < 0)
		return r;
	size = nbd_get_size(h);
	if (size < 0) {
		r = nbd_fail(t, "cannot size", EIO);
		nbd_close(h);
		return r;
	}
	t->size = (uint64_t)size;
	t->readonly = t->readonly || nbd_is_read_only(h) == 1;
	t->can_flush = nbd_can_flush(h) == 1;
	t->can_zero = nbd_can_zero(h) == 1;
	t->can_trim = nbd_can_trim(h) == 1;
	t->flush_every_session = nbd_can_multi_conn(h) != 1;
	max = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
	t->max_request = max > 0 && max < NBD_DEFAULT_MAX_REQUEST ? (uint32_t)max
								  : NBD_DEFAULT_MAX_REQUEST;
	t->scatter_window = CD_SCATTER_WINDOW;
	if (nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM) > 1)
		t->align = (uint32_t)nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
	/* The first session goes into the pool for the first request. */
	cd_target_keep_session(t, h);
	return 0;
}

static int nbd_read(struct cd_target *t, void *s, void *buf, size_t len,
		    uint64_t off)
{
	return wait_for(t, s, nbd_aio_pread(s, buf, len, off, NBD_NULL_COMPLETION, 0),
			"cannot read");
}

static int nbd_write(struct cd_target *t, void *s, const void *buf, size_t len,
		     uint64_t off)
{
	return wait_for(t, s, nbd_aio_pwrite(s, buf, len, off, NBD_NULL_COMPLETION, 0),
			"cannot write");
}

static int nbd_write_async(struct cd_target *t, void *s, const void *buf, size_t len,
			   uint64_t off, int64_t *cookie)
{
	(void)t;
	*cookie = nbd_aio_pwrite(s, buf, len, off, NBD_NULL_COMPLETION, 0);
	if (*cookie >= 0)
		return 0;
	/* Not sent: no message, the caller sends it the blocking way. */
	if (nbd_aio_is_dead(s) || nbd_aio_is_closed(s))
		return -ECONNRESET;
	return nbd_get_errno() > 0 ? -nbd_get_errno() : -EIO;
}

static int nbd_wait_async(struct cd_target *t, void *s, int64_t cookie, uint64_t deadline_ms)
{
	return run_until_deadline(t, s, is_completed, cookie, "cannot write", deadline_ms);
}

/* Scattered writes, CD_PIECES_DEPTH in flight on the one connection. */
static int nbd_write_pieces(struct cd_target *t, void *s, const struct cd_piece *v,
			    size_t n)
{
	int64_t *cookie = malloc(n * sizeof(*cookie));
	uint64_t deadline = cd_now_ms() + t->timeout_ms;
	size_t sent = 0, done = 0;
	int r = 0;

	if (!cookie)
		return cd_error(t->ctx, -ENOMEM, "'%s': out of memory", t->uri);
	for (;;) {
		size_t before = done;
		uint64_t now;

		while (r == 0 && sent < n && sent - done < CD_PIECES_DEPTH) {
			cookie[sent] = nbd_aio_pwrite(s, v[sent].buf, v[sent].len, v[sent].off,
						      NBD_NULL_COMPLETION, 0);
			if (cookie[sent] < 0)
				r = nbd_fail(t, "cannot write", EIO);
			else
				sent++;
		}
		while (done < sent) {
			int c = nbd_aio_command_completed(s, (uint64_t)cookie[done]);
			if (c == 0)
				break;
			if (c < 0 && r == 0)
				r = nbd_fail(t, "cannot write", EIO);
			done++;
		}
		/* All answered: the end, unless there are more to send. */
		if (done == sent) {
			if (r < 0 || sent == n)
				break;
			continue;
		}
		/* Commands still out on a connection we give up: it is dropped. */
		if (nbd_aio_is_dead(s) || nbd_aio_is_closed(s)) {
			r = nbd_fail(t, "cannot write", ECONNRESET);
			break;
		}
		now = cd_now_ms();
		if (done != before)
			deadline = now + t->timeout_ms;
		if (now >= deadline) {
			r = timed_out(t, "cannot write");
			break;
		}
		if (nbd_poll(s, (int)(deadline - now)) < 0) {
			r = nbd_fail(t, "cannot write", ECONNRESET);
			break;
		}
	}
	free(cookie);
	return r;
}

static int nbd_do_flush(struct cd_target *t, void *s)
{
	return wait_for(t, s, nbd_aio_flush(s, NBD_NULL_COMPLETION, 0),
			"cannot flush");
}

static int nbd_do_zero(struct cd_target *t, void *s, size_t len, uint64_t off)
{
	return wait_for(t, s, nbd_aio_zero(s, len, off, NBD_NULL_COMPLETION, 0),
			"cannot zero");
}

static int nbd_do_trim(struct cd_target *t, void *s, size_t len, uint64_t off)
{
	return wait_for(t, s, nbd_aio_trim(s, len, off, NBD_NULL_COMPLETION, 0),
			"cannot discard");
}

/* base:allocation's answer: the zeros from the start of the range, until
 * the first extent that may hold data. */
struct zero_walk {
	uint64_t span;
	bool data;
	bool seen;      /* one answer a context; a second is ignored */
};

static int add_zero_extents(void *arg, const char *context, uint64_t off,
			    uint32_t *entries, size_t n, int *error)
{
	struct zero_walk *z = arg;

	(void)off;
	(void)error;
	if (strcmp(context, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0 || z->seen)
		return 0;
	z->seen = true;
	for (size_t i = 0; i + 1 < n && !z->data; i += 2) {
		if (entries[i + 1] & LIBNBD_STATE_ZERO)
			z->span += entries[i];
		else
			z->data = true;
	}
	return 0;
}

static int nbd_zero_span(struct cd_target *t, void *s, uint64_t off, uint64_t len,
			 uint64_t *span)
{
	struct zero_walk z = { 0 };
	int r;

	*span = 0;
	if (nbd_can_meta_context(s, LIBNBD_CONTEXT_BASE_ALLOCATION) != 1)
		return -EOPNOTSUPP;
	/* The protocol's lengths are 32 bits. */
	if (len > (1u << 30))
		len = 1u << 30;
	r = wait_for(t, s, nbd_aio_block_status(s, len, off,
						(nbd_extent_callback){ .callback = add_zero_extents,
								       .user_data = &z },
						NBD_NULL_COMPLETION, 0),
		     "cannot ask for the zeros of");
	if (r == 0)
		*span = z.span < len ? z.span : len;
	return r;
}

/* No identity: NBD names an export, and the name is the server's choice
 * for this listener ("" is common); libnbd's canonical export name and
 * description are that name again, so two servers of other disks can
 * give the same one, and one disk served twice gives two.  Better no
 * answer than a wrong one. */
const struct cd_target_ops cd_nbd_target_ops = {
	.name = "nbd",
	.open = nbd_open,
	.connect = nbd_connect,
	.disconnect = nbd_disconnect,
	.pread = nbd_read,
	.pwrite = nbd_write,
	.aio_write = nbd_write_async,
	.aio_wait = nbd_wait_async,
	.pwrite_pieces = nbd_write_pieces,
	.flush = nbd_do_flush,
	.zero = nbd_do_zero,
	.trim = nbd_do_trim,
	.zero_span = nbd_zero_span,
};

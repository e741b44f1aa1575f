/* The bottom layer: a kind's sessions.  A kind whose connection carries
 * one request at a time (iSCSI, NBD, HTTP, S3) gives connect and
 * disconnect; this layer lends each request a session, connecting a new
 * one when every existing one is busy and there is room, up to [target]
 * connections.  The other kinds (file, rbd) are called as they are. */
#include <stdlib.h>

#include "ctx.h"
#include "dev.h"
#include "target.h"
#include "uri.h"
#include "util.h"

struct pool {
	struct cd_dev dev;
	const struct cd_target_ops *kind;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	void **idle;
	unsigned nidle;
	unsigned nsessions;   /* idle + lent + being connected */
	unsigned max;
	bool flushing;        /* a flush waits for every session */
};

static struct pool *pool_of(struct cd_dev *d)
{
	return (struct pool *)d;
}

/* A session to use; NULL for kinds without sessions.  A failure here
 * means the request never left. */
static int get(struct pool *p, void **out)
{
	int r;

	*out = NULL;
	cd_dev_unsent = false;
	if (!p->kind->connect)
		return 0;
	pthread_mutex_lock(&p->lock);
	for (;;) {
		if (!p->flushing && p->nidle) {
			*out = p->idle[--p->nidle];
			pthread_mutex_unlock(&p->lock);
			return 0;
		}
		if (!p->flushing && p->nsessions < p->max)
			break;
		pthread_cond_wait(&p->cond, &p->lock);
	}
	p->nsessions++;
	pthread_mutex_unlock(&p->lock);

	r = p->kind->connect(p->dev.t, out);
	if (r < 0) {
		cd_dev_unsent = true;
		pthread_mutex_lock(&p->lock);
		p->nsessions--;
		pthread_cond_broadcast(&p->cond);
		pthread_mutex_unlock(&p->lock);
	}
	return r;
}

static void put(struct pool *p, void *s, int result)
{
	bool broken = cd_target_error_transient(result);

	if (!p->kind->connect)
		return;
	/* After a timeout or a broken connection the session's state is
	 * unknown: a late reply must never be taken for a new request's. */
	if (broken)
		p->kind->disconnect(p->dev.t, s);
	pthread_mutex_lock(&p->lock);
	if (broken)
		p->nsessions--;
	else
		p->idle[p->nidle++] = s;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
}

static int pool_pread(struct cd_dev *d, void *buf, size_t len, uint64_t off)
{
	struct pool *p = pool_of(d);
	void *s;
	int r = get(p, &s);

	if (r < 0)
		return r;
	r = p->kind->pread(d->t, s, buf, len, off);
	put(p, s, r);
	return r;
}

static int pool_pwrite(struct cd_dev *d, const void *buf, size_t len, uint64_t off)
{
	struct pool *p = pool_of(d);
	void *s;
	int r = get(p, &s);

	if (r < 0)
		return r;
	r = p->kind->pwrite(d->t, s, buf, len, off);
	put(p, s, r);
	return r;
}

static int pool_pieces(struct cd_dev *d, const struct cd_piece *v, size_t n)
{
	struct pool *p = pool_of(d);
	void *s;
	int r;

	if (!p->kind->pwrite_pieces)
		return -EOPNOTSUPP;
	r = get(p, &s);
	if (r < 0)
		return r;
	r = p->kind->pwrite_pieces(d->t, s, v, n);
	put(p, s, r);
	return r;
}

static int pool_zero(struct cd_dev *d, size_t len, uint64_t off)
{
	struct pool *p = pool_of(d);
	void *s;
	int r;

	if (!p->kind->zero)
		return -EOPNOTSUPP;
	r = get(p, &s);
	if (r < 0)
		return r;
	r = p->kind->zero(d->t, s, len, off);
	put(p, s, r);
	return r;
}

static int pool_zero_span(struct cd_dev *d, uint64_t off, uint64_t len, uint64_t *span)
{
	struct pool *p = pool_of(d);
	void *s;
	int r;

	if (!p->kind->zero_span)
		return -EOPNOTSUPP;
	r = get(p, &s);
	if (r < 0)
		return r;
	r = p->kind->zero_span(d->t, s, off, len, span);
	put(p, s, r);
	return r;
}

static int pool_discard(struct cd_dev *d, size_t len, uint64_t off)
{
	struct pool *p = pool_of(d);
	void *s;
	int r;

	if (!p->kind->trim)
		return -EOPNOTSUPP;
	r = get(p, &s);
	if (r < 0)
		return r;
	r = p->kind->trim(d->t, s, len, off);
	put(p, s, r);
	return r;
}

/* Kinds whose flush covers only its own connection get one on each,
 * with every session back in the pool and none lent until it is done. */
static int flush_every_session(struct pool *p)
{
	int r = 0;

	cd_dev_unsent = false;
	pthread_mutex_lock(&p->lock);
	while (p->flushing)
		pthread_cond_wait(&p->cond, &p->lock);
	p->flushing = true;
	while (p->nidle != p->nsessions)
		pthread_cond_wait(&p->cond, &p->lock);
	/* Not across the flushes: `flushing` keeps every session in the
	 * pool meanwhile, and a writer that only tries the lock
	 * (cd_target_aio_write) must never wait for a hung server. */
	pthread_mutex_unlock(&p->lock);
	for (unsigned i = 0; i < p->nidle && r == 0; i++)
		r = p->kind->flush(p->dev.t, p->idle[i]);
	pthread_mutex_lock(&p->lock);
	p->flushing = false;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
	return r;
}

static int pool_flush(struct cd_dev *d)
{
	struct pool *p = pool_of(d);
	void *s;
	int r;

	if (d->t->flush_every_session && p->kind->connect)
		return flush_every_session(p);
	r = get(p, &s);
	if (r < 0)
		return r;
	r = p->kind->flush(d->t, s);
	put(p, s, r);
	return r;
}

static uint64_t pool_size(struct cd_dev *d)
{
	return d->t->size;
}

static void pool_caps(struct cd_dev *d, struct cd_dev_caps *c)
{
	struct pool *p = pool_of(d);

	c->align = d->t->align ? d->t->align : 1;
	c->max_request = d->t->max_request;
	c->scatter_window = p->kind->pwrite_pieces ? d->t->scatter_window : 0;
}

/* The request's own time: the session is taken before the clock starts. */
static int pool_ping(struct cd_dev *d, uint64_t *rtt_us)
{
	struct pool *p = pool_of(d);
	struct cd_target *t = d->t;
	uint8_t small[4096];
	size_t len = t->align > 1 ? t->align : 512;
	uint64_t start;
	void *s;
	int r;

	if (len > sizeof(small) || len > t->size)
		len = t->size < sizeof(small) ? (size_t)t->size : sizeof(small);
	r = get(p, &s);
	if (r < 0)
		return r;
	start = cd_now_us();
	if (p->kind->ping)
		r = p->kind->ping(t, s);
	else
		r = len ? p->kind->pread(t, s, small, len, 0) : 0;
	*rtt_us = cd_now_us() - start;
	put(p, s, r);
	return r;
}

static int pool_identity(struct cd_dev *d, char *out, size_t len)
{
	struct pool *p = pool_of(d);
	void *s;
	int r;

	if (!p->kind->identity)
		return -EOPNOTSUPP;
	r = get(p, &s);
	if (r < 0)
		return r;
	r = p->kind->identity(d->t, s, out, len);
	put(p, s, r);
	return r;
}

static void pool_free(struct pool *p)
{
	while (p->nidle)
		p->kind->disconnect(p->dev.t, p->idle[--p->nidle]);
	free(p->idle);
	pthread_mutex_destroy(&p->lock);
	pthread_cond_destroy(&p->cond);
	free(p);
}

static void pool_close(struct cd_dev *d)
{
	struct cd_target *t = d->t;
	const struct cd_target_ops *kind = pool_of(d)->kind;

	pool_free(pool_of(d));
	if (kind->close)
		kind->close(t);
}

static const struct cd_dev_ops pool_ops = {
	.name = "pool", .pread = pool_pread, .pwrite = pool_pwrite,
	.pwrite_pieces = pool_pieces, .zero = pool_zero, .discard = pool_discard,
	.zero_span = pool_zero_span,
	.flush = pool_flush, .size = pool_size, .caps = pool_caps,
	.ping = pool_ping, .identity = pool_identity, .close = pool_close,
};

/* The kind opened (it fills t's size and capabilities) under its pool;
 * closing the pool closes the kind. */
int cd_dev_pool_open(struct cd_target *t, const struct cd_uri *u,
		     unsigned connections, struct cd_dev **out)
{
	struct pool *p = calloc(1, sizeof(*p));
	int r;

	if (p)
		p->max = connections ? connections : 1;
	if (!p || !(p->idle = calloc(p->max, sizeof(*p->idle)))) {
		free(p);
		return cd_error(t->ctx, -ENOMEM, "cannot open '%s': out of memory", t->uri);
	}
	p->dev.ops = &pool_ops;
	p->dev.t = t;
	p->kind = t->ops;
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->cond, NULL);
	/* While the kind opens, the stack is its pool alone. */
	t->top = &p->dev;
	r = t->ops->open(t, u);
	t->top = NULL;
	if (r < 0) {
		pool_free(p);
		return r;
	}
	*out = &p->dev;
	return 0;
}

/* ---- writes without waiting (target.h) ---- */

/* The pool under t's stack, when every layer above would pass a whole
 * request on as it is. */
static struct pool *whole_way_down(struct cd_target *t)
{
	struct cd_dev *d = t->top;

	while (d && d->next) {
		if (!d->ops->passes_whole)
			return NULL;
		d = d->next;
	}
	return d && d->ops == &pool_ops ? pool_of(d) : NULL;
}

int cd_target_aio_write(struct cd_target *t, struct cd_target_aio *a, const void *buf,
			size_t len, uint64_t off)
{
	struct pool *p = whole_way_down(t);
	uint32_t align = t->align ? t->align : 1;
	int r;

	a->session = NULL;
	if (!p || !p->kind->aio_write || t->readonly || len == 0 || len % align ||
	    off % align || (t->max_request && len > t->max_request) ||
	    off > t->size || len > t->size - off)
		return -EAGAIN;
	if (pthread_mutex_trylock(&p->lock) != 0)
		return -EAGAIN;
	if (!p->flushing && p->nidle)
		a->session = p->idle[--p->nidle];
	pthread_mutex_unlock(&p->lock);
	if (!a->session)
		return -EAGAIN;
	a->pool = p;
	a->sent_ms = cd_now_ms();
	r = p->kind->aio_write(t, a->session, buf, len, off, &a->cookie);
	if (r < 0) {
		/* Refused before it left: the blocking way may send it, on
		 * another session when this one died. */
		cd_target_aio_end(t, a, r);
		return -EAGAIN;
	}
	return 0;
}

int cd_target_aio_wait(struct cd_target *t, struct cd_target_aio *a, uint64_t deadline_ms)
{
	struct pool *p = a->pool;

	return p->kind->aio_wait(t, a->session, a->cookie, deadline_ms);
}

void cd_target_aio_end(struct cd_target *t, struct cd_target_aio *a, int result)
{
	struct pool *p = a->pool;

	(void)t;   /* the pool was found at sending */
	if (!a->session)
		return;
	put(p, a->session, result > 0 ? -ETIMEDOUT : result);
	a->session = NULL;
}

void cd_target_keep_session(struct cd_target *t, void *session)
{
	struct pool *p = pool_of(t->top);

	pthread_mutex_lock(&p->lock);
	p->idle[p->nidle++] = session;
	p->nsessions++;
	pthread_mutex_unlock(&p->lock);
}

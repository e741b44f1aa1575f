/* Targets: every block store sits behind the same few calls.  What does
 * not depend on the kind lives here, once: range and read-only checks,
 * the session pool, retries with backoff, splitting of large requests,
 * and read-modify-write for requests that do not fill whole sectors. */
#include <fcntl.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

static const struct cd_target_ops *ops_for(enum cd_scheme scheme)
{
	switch (scheme) {
	case CD_SCHEME_FILE:
		return &cd_file_target_ops;
	case CD_SCHEME_NBD:
	case CD_SCHEME_NBDS:
	case CD_SCHEME_NBD_UNIX:
		return &cd_nbd_target_ops;
	case CD_SCHEME_ISCSI:
		return &cd_iscsi_target_ops;
	case CD_SCHEME_RBD:
		return &cd_rbd_target_ops;
	case CD_SCHEME_HTTP:
	case CD_SCHEME_HTTPS:
		return &cd_http_target_ops;
	case CD_SCHEME_S3:
		return &cd_s3_target_ops;
	}
	return NULL;
}

bool cd_target_supported(enum cd_scheme scheme)
{
	return ops_for(scheme) != NULL;
}

uint64_t cd_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

uint64_t cd_now_ms(void)
{
	return cd_now_us() / 1000;
}

bool cd_target_error_transient(int err)
{
	switch (err) {
	case -ECONNRESET:
	case -ECONNREFUSED:
	case -ECONNABORTED:
	case -EPIPE:
	case -ENOTCONN:
	case -ESHUTDOWN:
	case -ETIMEDOUT:
	case -EAGAIN:
	case -EHOSTUNREACH:
	case -ENETUNREACH:
		return true;
	default:
		return false;
	}
}

/* ---- the session pool ---- */

static int pool_init(struct cd_target *t, unsigned max)
{
	struct cd_session_pool *p = &t->pool;

	p->max = max ? max : 1;
	p->idle = calloc(p->max, sizeof(*p->idle));
	if (!p->idle)
		return cd_error(t->ctx, -ENOMEM, "cannot open '%s': out of memory", t->uri);
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->cond, NULL);
	return 0;
}

/* A session to use, connecting a new one when every existing one is busy
 * and the pool has room.  Kinds without sessions get NULL. */
static int pool_get(struct cd_target *t, void **out)
{
	struct cd_session_pool *p = &t->pool;
	int r;

	*out = NULL;
	if (!t->ops->connect)
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

	r = t->ops->connect(t, out);
	if (r < 0) {
		pthread_mutex_lock(&p->lock);
		p->nsessions--;
		pthread_cond_broadcast(&p->cond);
		pthread_mutex_unlock(&p->lock);
	}
	return r;
}

static void pool_put(struct cd_target *t, void *s, int result)
{
	struct cd_session_pool *p = &t->pool;

	if (!t->ops->connect)
		return;
	/* After a timeout or a broken connection the session's state is
	 * unknown: a late reply must never be taken for a new request's. */
	if (cd_target_error_transient(result))
		t->ops->disconnect(t, s);
	pthread_mutex_lock(&p->lock);
	if (cd_target_error_transient(result))
		p->nsessions--;
	else
		p->idle[p->nidle++] = s;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
}

static void pool_destroy(struct cd_target *t)
{
	struct cd_session_pool *p = &t->pool;

	if (!p->idle)
		return;
	while (p->nidle)
		t->ops->disconnect(t, p->idle[--p->nidle]);
	free(p->idle);
	pthread_mutex_destroy(&p->lock);
	pthread_cond_destroy(&p->cond);
}

/* ---- one request, with retries ---- */

enum op { OP_READ, OP_WRITE, OP_FLUSH, OP_ZERO, OP_TRIM, OP_PIECES };

struct request {
	enum op op;
	union {
		void *buf;
		const struct cd_piece *pieces;   /* OP_PIECES */
	};
	size_t len;              /* OP_PIECES: how many */
	uint64_t off;
};

static int call(struct cd_target *t, void *s, const struct request *q)
{
	switch (q->op) {
	case OP_READ:
		return t->ops->pread(t, s, q->buf, q->len, q->off);
	case OP_WRITE:
		return t->ops->pwrite(t, s, q->buf, q->len, q->off);
	case OP_FLUSH:
		return t->ops->flush(t, s);
	case OP_ZERO:
		return t->ops->zero(t, s, q->len, q->off);
	case OP_TRIM:
		return t->ops->trim(t, s, q->len, q->off);
	case OP_PIECES:
		return t->ops->pwrite_pieces(t, s, q->pieces, q->len);
	}
	return -EINVAL;
}

static void backoff(unsigned attempt)
{
	unsigned ms = 100u << (attempt < 5 ? attempt : 5);

	usleep(ms * 1000);
}

/* Reads and flushes change nothing, so they are sent again after a
 * broken connection or a timeout.  A write whose fate is unknown is not:
 * an old copy arriving late could overwrite newer data.  Every request is
 * retried when it never left because no session could be made. */
static int run(struct cd_target *t, const struct request *q)
{
	bool resend = q->op == OP_READ || q->op == OP_FLUSH;
	unsigned attempt = 0;
	void *s;
	int r;

	for (;;) {
		r = pool_get(t, &s);
		if (r == 0) {
			r = call(t, s, q);
			pool_put(t, s, r);
			if (r == 0 || !resend)
				return r;
		}
		if (!cd_target_error_transient(r) || attempt >= t->retries)
			return r;
		cd_log(t->ctx, CDISK_LOG_INFO, "'%s': %s; trying again", t->uri,
		       cd_errbuf());
		backoff(attempt++);
		__atomic_add_fetch(&t->resent, 1, __ATOMIC_RELAXED);
	}
}

/* Large requests go in pieces the target accepts. */
static int run_split(struct cd_target *t, struct request q)
{
	size_t max = t->max_request ? t->max_request : q.len;

	while (q.len) {
		struct request piece = q;
		int r;

		piece.len = q.len < max ? q.len : max;
		r = run(t, &piece);
		if (r < 0)
			return r;
		if (q.buf)
			q.buf = (uint8_t *)q.buf + piece.len;
		q.off += piece.len;
		q.len -= piece.len;
	}
	return 0;
}

/* ---- sector alignment ---- */

static pthread_mutex_t *rmw_lock_for(struct cd_target *t, uint64_t off)
{
	return &t->rmw_lock[(off / t->align) % CD_RMW_STRIPES];
}

/* Change part of one sector: read it, patch it, write it back, under the
 * sector's lock so that two patches of one sector cannot undo each other. */
static int patch_sector(struct cd_target *t, const void *data, size_t len,
			uint64_t off)
{
	uint64_t start = off - off % t->align;
	pthread_mutex_t *lock = rmw_lock_for(t, start);
	uint8_t *sector = malloc(t->align);
	struct request q = { .op = OP_READ, .buf = sector, .len = t->align, .off = start };
	int r;

	if (!sector)
		return cd_error(t->ctx, -ENOMEM, "'%s': out of memory", t->uri);
	pthread_mutex_lock(lock);
	r = run(t, &q);
	if (r == 0) {
		if (data)
			memcpy(sector + (off - start), data, len);
		else
			memset(sector + (off - start), 0, len);
		q.op = OP_WRITE;
		r = run(t, &q);
	}
	pthread_mutex_unlock(lock);
	free(sector);
	return r;
}

static int read_unaligned(struct cd_target *t, uint8_t *buf, size_t len,
			  uint64_t off)
{
	uint8_t *sector = malloc(t->align);
	int r = 0;

	if (!sector)
		return cd_error(t->ctx, -ENOMEM, "'%s': out of memory", t->uri);
	while (len && r == 0) {
		uint64_t start = off - off % t->align;
		size_t skip = (size_t)(off - start);
		size_t n = t->align - skip < len ? t->align - skip : len;
		struct request q = { .op = OP_READ, .buf = sector, .len = t->align,
				     .off = start };

		if (skip == 0 && len >= t->align) {
			q.buf = buf;
			q.len = len - len % t->align;
			n = q.len;
			r = run_split(t, q);
		} else {
			r = run(t, &q);
			if (r == 0)
				memcpy(buf, sector + skip, n);
		}
		buf += n;
		off += n;
		len -= n;
	}
	free(sector);
	return r;
}

/* Writes and zeroes: patched head and tail, whole sectors between. */
static int change_unaligned(struct cd_target *t, struct request q)
{
	while (q.len) {
		uint64_t skip = q.off % t->align;
		size_t n;
		int r;

		if (skip || q.len < t->align) {
			n = t->align - skip < q.len ? (size_t)(t->align - skip) : q.len;
			r = patch_sector(t, q.buf, n, q.off);
		} else {
			struct request whole = q;
			whole.len = n = q.len - q.len % t->align;
			r = run_split(t, whole);
		}
		if (r < 0)
			return r;
		if (q.buf)
			q.buf = (uint8_t *)q.buf + n;
		q.off += n;
		q.len -= n;
	}
	return 0;
}

static bool aligned(const struct cd_target *t, size_t len, uint64_t off)
{
	return t->align <= 1 || (len % t->align == 0 && off % t->align == 0);
}

/* ---- the calls ---- */

static void tuning_from_config(const struct cdisk_ctx *ctx, struct cd_target_tuning *tn)
{
	tn->timeout_s = ctx->cfg.timeout ? ctx->cfg.timeout : 30;
	tn->retries = ctx->cfg.retries;
	tn->connections = ctx->cfg.connections;
}

static int open_tuned(struct cdisk_ctx *ctx, const char *uri, const struct cd_uri *u,
		      const struct cd_target_ops *ops, bool readonly,
		      const struct cd_target_tuning *tn, struct cd_target **out)
{
	struct cd_target *t = calloc(1, sizeof(*t));
	int r;

	if (!t || !(t->uri = strdup(uri))) {
		free(t);
		return cd_error(ctx, -ENOMEM, "cannot open '%s': out of memory", uri);
	}
	t->ops = ops;
	t->ctx = ctx;
	t->readonly = readonly;
	t->align = 1;
	t->timeout_ms = tn->timeout_s * 1000;
	t->retries = tn->retries;
	for (unsigned i = 0; i < CD_RMW_STRIPES; i++)
		pthread_mutex_init(&t->rmw_lock[i], NULL);
	r = pool_init(t, tn->connections);
	if (r == 0)
		r = t->ops->open(t, u);
	/* A target that gave no answer within the deadline before it was
	 * even open is unreachable (exit 3), as one that refused is; a
	 * timeout stays "try later" only for a request to an open target,
	 * which did answer before.  The message already says why. */
	if (r == -ETIMEDOUT)
		r = -EHOSTUNREACH;
	if (r < 0) {
		pool_destroy(t);
		for (unsigned i = 0; i < CD_RMW_STRIPES; i++)
			pthread_mutex_destroy(&t->rmw_lock[i]);
		free(t->uri);
		free(t);
		return r;
	}
	if (readonly)
		t->readonly = true;
	*out = t;
	return 0;
}

int cd_target_open_with(struct cdisk_ctx *ctx, const char *uri,
			const struct cd_uri *u, const struct cd_target_ops *ops,
			bool readonly, struct cd_target **out)
{
	struct cd_target_tuning tn;

	tuning_from_config(ctx, &tn);
	return open_tuned(ctx, uri, u, ops, readonly, &tn, out);
}

int cd_target_open_tuned(struct cdisk_ctx *ctx, const char *uri, bool readonly,
			 const struct cd_target_tuning *tn, struct cd_target **out)
{
	struct cd_uri u;
	int r = cd_uri_parse(ctx, uri, &u);

	if (r < 0)
		return r;
	if (!ops_for(u.scheme))
		r = cd_error(ctx, -ENOTSUP, "cannot open '%s': %s targets are not "
			     "supported by this build of cdisk", uri,
			     cd_scheme_name(u.scheme));
	else
		r = open_tuned(ctx, uri, &u, ops_for(u.scheme), readonly, tn, out);
	cd_uri_clear(&u);
	return r;
}

int cd_target_open(struct cdisk_ctx *ctx, const char *uri, bool readonly,
		   struct cd_target **out)
{
	struct cd_target_tuning tn;

	tuning_from_config(ctx, &tn);
	return cd_target_open_tuned(ctx, uri, readonly, &tn, out);
}

static int check_range(struct cd_target *t, size_t len, uint64_t off)
{
	if (off > t->size || len > t->size - off)
		return cd_error(t->ctx, -EINVAL, "'%s': request at %llu+%zu is past the "
				"end (%llu bytes)", t->uri, (unsigned long long)off,
				len, (unsigned long long)t->size);
	return 0;
}

static int check_writable(struct cd_target *t, size_t len, uint64_t off)
{
	if (t->readonly)
		return cd_error(t->ctx, -EROFS, "cannot write to '%s': it is read-only",
				t->uri);
	return check_range(t, len, off);
}

int cd_target_pread(struct cd_target *t, void *buf, size_t len, uint64_t off)
{
	struct request q = { .op = OP_READ, .buf = buf, .len = len, .off = off };
	int r = check_range(t, len, off);

	if (r < 0 || len == 0)
		return r;
	return aligned(t, len, off) ? run_split(t, q) : read_unaligned(t, buf, len, off);
}

int cd_target_pwrite(struct cd_target *t, const void *buf, size_t len,
		     uint64_t off)
{
	struct request q = { .op = OP_WRITE, .buf = (void *)buf, .len = len, .off = off };
	int r = check_writable(t, len, off);

	if (r < 0 || len == 0)
		return r;
	return aligned(t, len, off) ? run_split(t, q) : change_unaligned(t, q);
}

/* Pieces the kind can take together: aligned, each within max_request,
 * all in one window.  Anything else goes one by one. */
static bool pieces_fit(const struct cd_target *t, const struct cd_piece *v, size_t n)
{
	uint64_t window = t->scatter_window;

	if (!t->ops->pwrite_pieces || !window)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (!aligned(t, v[i].len, v[i].off) || v[i].len == 0 ||
		    (t->max_request && v[i].len > t->max_request) ||
		    v[i].off / window != (v[i].off + v[i].len - 1) / window ||
		    v[i].off / window != v[0].off / window)
			return false;
	}
	return true;
}

int cd_target_pwrite_pieces(struct cd_target *t, const struct cd_piece *v, size_t n)
{
	struct request q = { .op = OP_PIECES, .pieces = v, .len = n };
	int r = 0;

	for (size_t i = 0; i < n && r == 0; i++)
		r = check_writable(t, v[i].len, v[i].off);
	if (r < 0 || n == 0)
		return r;
	if (pieces_fit(t, v, n))
		return run(t, &q);
	for (size_t i = 0; i < n && r == 0; i++)
		r = cd_target_pwrite(t, v[i].buf, v[i].len, v[i].off);
	return r;
}

/* Kinds whose flush covers only its own connection get one on each. */
static int flush_every_session(struct cd_target *t)
{
	struct cd_session_pool *p = &t->pool;
	int r = 0;

	pthread_mutex_lock(&p->lock);
	while (p->flushing)
		pthread_cond_wait(&p->cond, &p->lock);
	p->flushing = true;
	while (p->nidle != p->nsessions)
		pthread_cond_wait(&p->cond, &p->lock);
	for (unsigned i = 0; i < p->nidle && r == 0; i++)
		r = t->ops->flush(t, p->idle[i]);
	p->flushing = false;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
	return r;
}

int cd_target_flush(struct cd_target *t)
{
	struct request q = { .op = OP_FLUSH };

	if (t->readonly || !t->can_flush)
		return 0;
	if (t->flush_every_session && t->ops->connect)
		return flush_every_session(t);
	return run(t, &q);
}

/* Zeros written in bounded pieces, for targets that cannot zero. */
static int write_zeros(struct cd_target *t, size_t len, uint64_t off)
{
	size_t chunk = len < (1u << 20) ? len : (1u << 20);
	uint8_t *zeros = calloc(1, chunk);
	int r = 0;

	if (!zeros)
		return cd_error(t->ctx, -ENOMEM, "'%s': out of memory", t->uri);
	while (len && r == 0) {
		size_t n = len < chunk ? len : chunk;

		r = cd_target_pwrite(t, zeros, n, off);
		off += n;
		len -= n;
	}
	free(zeros);
	return r;
}

int cd_target_zero(struct cd_target *t, size_t len, uint64_t off)
{
	struct request q = { .op = OP_ZERO, .len = len, .off = off };
	int r = check_writable(t, len, off);

	if (r < 0 || len == 0)
		return r;
	if (!t->can_zero || !t->ops->zero)
		return write_zeros(t, len, off);
	r = aligned(t, len, off) ? run_split(t, q) : change_unaligned(t, q);
	if (r == -EOPNOTSUPP) {
		t->can_zero = false;
		return write_zeros(t, len, off);
	}
	return r;
}

/* Discarded ranges read back as unknown data; a caller that needs zeros
 * zeroes.  Targets that cannot discard simply keep the data. */
int cd_target_trim(struct cd_target *t, size_t len, uint64_t off)
{
	struct request q = { .op = OP_TRIM, .len = len, .off = off };
	int r = check_writable(t, len, off);

	if (r < 0 || len == 0 || !t->can_trim || !t->ops->trim)
		return r;
	/* Only whole sectors can be discarded; the edges keep their data. */
	if (t->align > 1) {
		uint64_t start = cd_div_round_up(off, t->align) * t->align;
		uint64_t end = (off + len) / t->align * t->align;
		if (end <= start)
			return 0;
		q.off = start;
		q.len = (size_t)(end - start);
	}
	r = run_split(t, q);
	if (r == -EOPNOTSUPP) {
		t->can_trim = false;
		return 0;
	}
	return r;
}

/* A probe counts what is lost, so nothing here is sent twice. */
int cd_target_ping(struct cd_target *t, uint64_t *rtt_us)
{
	uint8_t small[4096];
	size_t len = t->align > 1 ? t->align : 512;
	uint64_t start;
	void *s;
	int r;

	if (len > sizeof(small) || len > t->size)
		len = t->size < sizeof(small) ? (size_t)t->size : sizeof(small);
	*rtt_us = 0;
	r = pool_get(t, &s);
	if (r < 0)
		return r;
	start = cd_now_us();
	if (t->ops->ping)
		r = t->ops->ping(t, s);
	else
		r = len ? t->ops->pread(t, s, small, len, 0) : 0;
	*rtt_us = cd_now_us() - start;
	pool_put(t, s, r);
	return r;
}

void cd_target_close(struct cd_target *t)
{
	if (!t)
		return;
	pool_destroy(t);
	if (t->ops->close)
		t->ops->close(t);
	for (unsigned i = 0; i < CD_RMW_STRIPES; i++)
		pthread_mutex_destroy(&t->rmw_lock[i]);
	free(t->uri);
	free(t);
}

static int create_file(struct cdisk_ctx *ctx, const char *uri, const char *path,
		       uint64_t size)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);

	if (fd < 0)
		return cd_error(ctx, -errno, "cannot create '%s': %s", uri, strerror(errno));
	if (ftruncate(fd, (off_t)size) < 0) {
		int err = -errno;
		close(fd);
		unlink(path);
		return cd_error(ctx, err, "cannot size '%s': %s", uri, strerror(-err));
	}
	close(fd);
	return 0;
}

int cd_target_create(struct cdisk_ctx *ctx, const char *uri, uint64_t size)
{
	struct cd_uri u;
	int r = cd_uri_parse(ctx, uri, &u);

	if (r < 0)
		return r;
	switch (u.scheme) {
	case CD_SCHEME_FILE:
		r = create_file(ctx, uri, u.path, size);
		break;
	case CD_SCHEME_RBD:
		r = cd_rbd_create(ctx, &u, size);
		break;
	case CD_SCHEME_S3:
		r = cd_s3_create(ctx, uri, &u, size);
		break;
	default:
		r = cd_error(ctx, -ENOTSUP, "cannot create '%s': %s stores are made "
			     "on their server", uri, cd_scheme_name(u.scheme));
	}
	cd_uri_clear(&u);
	return r;
}

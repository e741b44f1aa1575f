/* Targets: every block store sits behind the same few calls, the face of
 * a stack of device layers (dev.h): the kind at the bottom under its
 * session pool, then retries, splitting and sector read-modify-write.
 * The face checks range and read-only, stands in for what the kind
 * cannot do (zeroes, discards, scattered writes), and shares one stack
 * among the opens of one URI in the process. */
#include <fcntl.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "cdisk.h"
#include "ctx.h"
#include "dev.h"
#include "target.h"
#include "uri.h"
#include "util.h"

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

uint64_t cd_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000 + (uint64_t)ts.tv_nsec;
}

uint64_t cd_now_us(void)
{
	return cd_now_ns() / 1000;
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

/* ---- opening a stack ---- */

static void tuning_from_config(const struct cdisk_ctx *ctx, struct cd_target_tuning *tn)
{
	tn->timeout_s = ctx->cfg.timeout ? ctx->cfg.timeout : 30;
	tn->retries = ctx->cfg.retries;
	tn->connections = ctx->cfg.connections;
}

/* leaf kind -> pool -> retry -> split -> rmw: the order is docs/DESIGN.md's
 * "Device layers". */
static int build(struct cd_target *t, const struct cd_uri *u,
		 const struct cd_target_tuning *tn, const struct cd_dev_hooks *h)
{
	struct cd_dev *top;
	int r = cd_dev_pool_open(t, u, tn->connections, &top);

	if (r < 0)
		return r;
#define PUSH(expr) do { \
		struct cd_dev *n_ = (expr); \
		if (!n_) { \
			cd_dev_close_stack(top); \
			return -ENOMEM; \
		} \
		top = n_; \
	} while (0)
	if (h && h->under_retry)
		PUSH(h->under_retry(top, h->arg));
	PUSH(cd_dev_retry_new(top, tn->retries));
	if (h && h->under_split)
		PUSH(h->under_split(top, h->arg));
	PUSH(cd_dev_split_new(top));
	PUSH(cd_dev_rmw_new(top));
#undef PUSH
	t->top = top;
	return 0;
}

static void free_face(struct cd_target *t)
{
	for (unsigned i = 0; i < CD_RMW_STRIPES; i++)
		pthread_mutex_destroy(&t->rmw_lock[i]);
	free(t->uri);
	free(t);
}

static int open_stack(struct cdisk_ctx *ctx, const char *uri, const struct cd_uri *u,
		      const struct cd_target_ops *ops, bool readonly,
		      const struct cd_target_tuning *tn, const struct cd_dev_hooks *h,
		      struct cd_target **out)
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
	t->connections = tn->connections;
	t->refs = 1;
	for (unsigned i = 0; i < CD_RMW_STRIPES; i++)
		pthread_mutex_init(&t->rmw_lock[i], NULL);
	r = build(t, u, tn, h);
	/* A target that gave no answer within the deadline before it was
	 * even open is unreachable (exit 3), as one that refused is; a
	 * timeout stays "try later" only for a request to an open target,
	 * which did answer before.  The message already says why. */
	if (r == -ETIMEDOUT)
		r = -EHOSTUNREACH;
	if (r < 0) {
		free_face(t);
		return r;
	}
	if (readonly)
		t->readonly = true;
	*out = t;
	return 0;
}

/* ---- one stack per URI in the process ----
 * Opens of one URI share one stack, so disks over one base share its
 * sessions: the key is everything that makes a stack behave differently
 * (the context, whose log and configuration it uses; the kind; the URI;
 * read-only, since a read-only open must never get a writable stack nor
 * a writer one that refuses; and the tuning).  A probe's stack is never
 * shared (cd_target_open_tuned): it counts its own lost pings and its
 * sessions must not queue behind other requests.  Nor are stacks with
 * test layers in them.  Counters (resent, retry_after) and learnt
 * capabilities (can_zero, can_trim) are the stack's, seen by every
 * opener of it. */

static pthread_mutex_t shared_lock = PTHREAD_MUTEX_INITIALIZER;
static struct cd_target *shared_list;

static struct cd_target *find_shared(struct cdisk_ctx *ctx, const char *uri,
				     const struct cd_target_ops *ops, bool readonly,
				     const struct cd_target_tuning *tn)
{
	for (struct cd_target *t = shared_list; t; t = t->next_shared)
		if (t->ctx == ctx && t->ops == ops && t->shared_readonly == readonly &&
		    t->timeout_ms == tn->timeout_s * 1000 && t->retries == tn->retries &&
		    t->connections == tn->connections && strcmp(t->uri, uri) == 0) {
			t->refs++;
			return t;
		}
	return NULL;
}

/* The open crosses the network, so no lock is held across it: two first
 * opens may race, and the later one closes its own and takes the other. */
static int open_shared(struct cdisk_ctx *ctx, const char *uri, const struct cd_uri *u,
		       const struct cd_target_ops *ops, bool readonly,
		       const struct cd_target_tuning *tn, struct cd_target **out)
{
	struct cd_target *t, *mine;
	int r;

	pthread_mutex_lock(&shared_lock);
	t = find_shared(ctx, uri, ops, readonly, tn);
	pthread_mutex_unlock(&shared_lock);
	if (t) {
		*out = t;
		return 0;
	}
	r = open_stack(ctx, uri, u, ops, readonly, tn, NULL, &mine);
	if (r < 0)
		return r;
	pthread_mutex_lock(&shared_lock);
	t = find_shared(ctx, uri, ops, readonly, tn);
	if (!t) {
		mine->shared = true;
		mine->shared_readonly = readonly;
		mine->next_shared = shared_list;
		shared_list = t = mine;
		mine = NULL;
	}
	pthread_mutex_unlock(&shared_lock);
	if (mine)
		cd_target_close(mine);
	*out = t;
	return 0;
}

/* Whether this close was the last of a shared stack's. */
static bool last_close(struct cd_target *t)
{
	bool last;

	pthread_mutex_lock(&shared_lock);
	last = --t->refs == 0;
	if (last) {
		struct cd_target **p = &shared_list;

		while (*p != t)
			p = &(*p)->next_shared;
		*p = t->next_shared;
	}
	pthread_mutex_unlock(&shared_lock);
	return last;
}

int cd_target_open_with(struct cdisk_ctx *ctx, const char *uri,
			const struct cd_uri *u, const struct cd_target_ops *ops,
			bool readonly, struct cd_target **out)
{
	struct cd_target_tuning tn;

	tuning_from_config(ctx, &tn);
	return open_shared(ctx, uri, u, ops, readonly, &tn, out);
}

int cd_target_open_hooked(struct cdisk_ctx *ctx, const char *uri,
			  const struct cd_uri *u, const struct cd_target_ops *ops,
			  bool readonly, const struct cd_dev_hooks *hooks,
			  struct cd_target **out)
{
	struct cd_target_tuning tn;

	tuning_from_config(ctx, &tn);
	return open_stack(ctx, uri, u, ops, readonly, &tn, hooks, out);
}

static int open_uri(struct cdisk_ctx *ctx, const char *uri, bool readonly,
		    const struct cd_target_tuning *tn, bool shared,
		    struct cd_target **out)
{
	struct cd_uri u;
	int r = cd_uri_parse(ctx, uri, &u);

	if (r < 0)
		return r;
	if (!ops_for(u.scheme))
		r = cd_error(ctx, -ENOTSUP, "cannot open '%s': %s targets are not "
			     "supported by this build of cdisk", uri,
			     cd_scheme_name(u.scheme));
	else if (shared)
		r = open_shared(ctx, uri, &u, ops_for(u.scheme), readonly, tn, out);
	else
		r = open_stack(ctx, uri, &u, ops_for(u.scheme), readonly, tn, NULL, out);
	cd_uri_clear(&u);
	return r;
}

int cd_target_open_tuned(struct cdisk_ctx *ctx, const char *uri, bool readonly,
			 const struct cd_target_tuning *tn, struct cd_target **out)
{
	return open_uri(ctx, uri, readonly, tn, false, out);
}

int cd_target_open(struct cdisk_ctx *ctx, const char *uri, bool readonly,
		   struct cd_target **out)
{
	struct cd_target_tuning tn;

	tuning_from_config(ctx, &tn);
	return open_uri(ctx, uri, readonly, &tn, true, out);
}

void cd_target_close(struct cd_target *t)
{
	if (!t || (t->shared && !last_close(t)))
		return;
	cd_dev_close_stack(t->top);
	free_face(t);
}

/* ---- the calls ---- */

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
	int r = check_range(t, len, off);

	if (r < 0 || len == 0)
		return r;
	if (cd_nowait() && !t->local)
		return -CD_WOULD_WAIT;
	cd_wait_begin();
	r = cd_dev_pread(t->top, buf, len, off);
	cd_wait_end();
	return r;
}

int cd_target_pwrite(struct cd_target *t, const void *buf, size_t len,
		     uint64_t off)
{
	int r = check_writable(t, len, off);

	if (r < 0 || len == 0)
		return r;
	cd_wait_begin();
	r = cd_dev_pwrite(t->top, buf, len, off);
	cd_wait_end();
	return r;
}

/* Pieces the kind can take together lie in one window (the layers below
 * send pieces that are not whole sectors, or too large, one by one).
 * Anything else goes one by one from here. */
static bool one_window(struct cd_target *t, const struct cd_piece *v, size_t n)
{
	struct cd_dev_caps c;
	uint64_t window;

	cd_dev_caps(t->top, &c);
	window = c.scatter_window;
	if (!window)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (v[i].len == 0 ||
		    v[i].off / window != (v[i].off + v[i].len - 1) / window ||
		    v[i].off / window != v[0].off / window)
			return false;
	}
	return true;
}

int cd_target_pwrite_pieces(struct cd_target *t, const struct cd_piece *v, size_t n)
{
	int r = 0;

	for (size_t i = 0; i < n && r == 0; i++)
		r = check_writable(t, v[i].len, v[i].off);
	if (r < 0 || n == 0)
		return r;
	cd_wait_begin();
	if (one_window(t, v, n))
		r = cd_dev_pwrite_pieces(t->top, v, n);
	else
		for (size_t i = 0; i < n && r == 0; i++)
			r = cd_target_pwrite(t, v[i].buf, v[i].len, v[i].off);
	cd_wait_end();
	return r;
}

int cd_target_flush(struct cd_target *t)
{
	int r;

	if (t->readonly || !t->can_flush)
		return 0;
	cd_wait_begin();
	r = cd_dev_flush(t->top);
	cd_wait_end();
	return r;
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
	int r = check_writable(t, len, off);

	if (r < 0 || len == 0)
		return r;
	cd_wait_begin();
	r = t->can_zero && t->ops->zero ? cd_dev_zero(t->top, len, off) : -EOPNOTSUPP;
	if (r == -EOPNOTSUPP) {
		t->can_zero = false;
		r = write_zeros(t, len, off);
	}
	cd_wait_end();
	return r;
}

int cd_target_zero_span(struct cd_target *t, uint64_t off, uint64_t len, uint64_t *span)
{
	int r = check_range(t, (size_t)len, off);

	*span = 0;
	if (r < 0 || len == 0 || !t->ops->zero_span)
		return r;
	if (cd_nowait() && !t->local)
		return -CD_WOULD_WAIT;
	cd_wait_begin();
	r = cd_dev_zero_span(t->top, off, len, span);
	cd_wait_end();
	if (r == -EOPNOTSUPP)
		r = 0;
	if (*span > len)
		*span = len;
	return r;
}

/* Discarded ranges read back as unknown data; a caller that needs zeros
 * zeroes.  Targets that cannot discard simply keep the data. */
int cd_target_trim(struct cd_target *t, size_t len, uint64_t off)
{
	int r = check_writable(t, len, off);

	if (r < 0 || len == 0 || !t->can_trim || !t->ops->trim)
		return r;
	cd_wait_begin();
	r = cd_dev_discard(t->top, len, off);
	cd_wait_end();
	if (r == -EOPNOTSUPP) {
		t->can_trim = false;
		return 0;
	}
	return r;
}

/* A probe counts what is lost, so nothing here is sent twice. */
int cd_target_ping(struct cd_target *t, uint64_t *rtt_us)
{
	return cd_dev_ping(t->top, rtt_us);
}

/* Straight to the kind: no layer changes what the storage is.  Not
 * retried: it is asked once, when a disk is set up, and a failure there
 * means "cannot tell now", which the caller reports. */
int cd_target_write_back(struct cd_target *t, size_t len, uint64_t off)
{
	uint8_t *buf = malloc(len);
	int r;

	if (!buf)
		return cd_error(t->ctx, -ENOMEM, "'%s': out of memory", t->uri);
	r = cd_target_pread(t, buf, len, off);
	if (r == 0)
		r = cd_target_pwrite(t, buf, len, off);
	free(buf);
	return r;
}

int cd_target_identity(struct cd_target *t, char *out, size_t len)
{
	if (len)
		out[0] = '\0';
	if (!t->ops->identity)
		return cd_error(t->ctx, -EOPNOTSUPP, "'%s': %s targets cannot tell which "
				"storage they are", t->uri, t->ops->name);
	return cd_dev_identity(t->top, out, len);
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

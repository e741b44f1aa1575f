/* Sync and pull: the overlay's dirty blocks to the base, and the base's
 * blocks into the overlay, both through the copy engine (copy.h).
 *
 * A sync is safe by its order.  Under the disk lock the dirty blocks of a
 * batch are claimed ("syncing"); then their data is read from the overlay
 * and written to the base, many requests at once; then the base is
 * flushed; then, under the lock, the blocks still claimed are recorded
 * clean and the record is made durable.  A write that completes at any
 * point after the claim clears its blocks' syncing bits (see
 * mark_written), so a block rewritten during its journey stays dirty and
 * goes again.  A crash at any point loses only the in-memory claims: no
 * block is clean before the base has flushed it. */
#include <stdlib.h>
#include <unistd.h>

#include "bitmap.h"
#include "cdisk.h"
#include "copy.h"
#include "ctx.h"
#include "disk.h"
#include "target.h"
#include "util.h"

#define SYNC_EXTENT (4u << 20)       /* the largest request: one S3 chunk */
#define SYNC_PULL_BATCH (256ull << 20)  /* bytes between a pull's commits */
#define SYNC_DEFAULT_DEPTH 16        /* requests under way, unless the base says */
/* Dirty runs this close are sent as one request, the blocks between
 * included: they read as the base already holds them (clean overlay data,
 * or the base's own), so the base does not change there, and one request
 * costs less than two round trips.  qcow2 writes whole 64 KiB clusters for
 * the same reason. */
#define SYNC_JOIN_GAP (64u << 10)

/* ---- pushing: the disk's view to its base ---- */

static struct cd_target *dest_of(const struct cd_copy *c)
{
	return c->job;
}

static bool all_zero(const uint8_t *p, size_t len)
{
	return len == 0 || (p[0] == 0 && memcmp(p, p + 1, len - 1) == 0);
}

/* What the disk shows over the extent, in one request to the base at most:
 * an extent joined across absent blocks reads the base once, whole, and
 * then the overlay's blocks over it.  Blocks marked syncing are present and
 * stay so, so they always come from the overlay. */
static int read_extent(struct cd_copy *c, struct cd_extent *x, uint8_t *buf)
{
	struct cdisk *d = c->d;
	uint64_t off = x->first << d->block_shift, end = x->first + x->count;
	size_t len = (size_t)(x->count << d->block_shift);
	bool whole;
	int r;

	pthread_mutex_lock(&d->lock);
	whole = cd_bitmap_find(&d->present, x->first, false) >= end;
	pthread_mutex_unlock(&d->lock);
	if (whole)
		return cdisk_pread(d, buf, len, off);
	r = cd_target_pread(dest_of(c), buf, len, off);
	for (uint64_t b = x->first; r == 0 && b < end;) {
		uint64_t stop;
		bool present;

		pthread_mutex_lock(&d->lock);
		present = cd_bitmap_get(&d->present, b);
		stop = cd_bitmap_find(&d->present, b, !present);
		pthread_mutex_unlock(&d->lock);
		if (stop > end)
			stop = end;
		if (present)
			r = cdisk_pread(d, buf + ((b - x->first) << d->block_shift),
					(size_t)((stop - b) << d->block_shift), b << d->block_shift);
		b = stop;
	}
	return r;
}

/* One extent, joined over gaps: read what the disk shows over it (the
 * base's own data in the gaps), then one write or one zeroing. */
static int send_extent(struct cd_copy *c, struct cd_extent *x, size_t n, uint8_t *buf)
{
	struct cdisk *d = c->d;
	uint64_t off = x->first << d->block_shift;
	size_t len = (size_t)(x->count << d->block_shift);
	bool zero;
	int r;

	/* Another thread's write may land any time after this read; it then
	 * clears the syncing bits, and the block goes again next time. */
	r = read_extent(c, x, buf);
	if (r < 0 || !cd_copy_throttle(c, len))
		return r;
	zero = all_zero(buf, len);
	r = zero ? cd_target_zero(dest_of(c), len, off) : cd_target_pwrite(dest_of(c), buf, len, off);
	if (r == 0)
		cd_copy_count(c, x, n, 1, zero, len);
	return r;
}

/* The data of a window's dirty runs, from the overlay's data area, one
 * read a run, into buf one after another.  Every block of them is dirty,
 * so present, and stays present during the sync; a write that lands
 * meanwhile clears its blocks' syncing bits, so whatever this reads of
 * them is sent again. */
static int read_pieces(struct cdisk *d, const struct cd_extent *x, size_t n, uint8_t *buf,
		       struct cd_piece *v, size_t *bytes)
{
	int r = 0;

	*bytes = 0;
	for (size_t i = 0; i < n && r == 0; i++) {
		v[i] = (struct cd_piece){ buf + *bytes, (size_t)(x[i].count << d->block_shift),
					  x[i].first << d->block_shift };
		r = cd_read_present(d, buf + *bytes, v[i].len, v[i].off);
		*bytes += v[i].len;
	}
	return r;
}

/* Runs of zeros this long go as a zeroing request of their own; shorter
 * ones cost less as data among the other pieces. */
#define SYNC_ZERO_RUN (64u << 10)

/* The dirty runs of one window, only them, with no gaps read: for bases
 * that take many small writes together (cd_target_pwrite_pieces). */
static int send_pieces(struct cd_copy *c, struct cd_extent *x, size_t n, uint8_t *buf)
{
	struct cdisk *d = c->d;
	struct cd_piece *v = malloc(n * sizeof(*v));
	size_t bytes = 0, kept = 0;
	unsigned zeros = 0;
	int r = 0;

	if (!v)
		return cd_error(d->ctx, -ENOMEM, "'%s': out of memory", d->path);
	r = read_pieces(d, x, n, buf, v, &bytes);
	if (r < 0 || !cd_copy_throttle(c, bytes))
		goto out;
	for (size_t i = 0; i < n && r == 0; i++) {
		if (v[i].len >= SYNC_ZERO_RUN && all_zero(v[i].buf, v[i].len)) {
			r = cd_target_zero(dest_of(c), v[i].len, v[i].off);
			zeros++;
		} else {
			v[kept++] = v[i];
		}
	}
	if (r == 0)
		r = cd_target_pwrite_pieces(dest_of(c), v, kept);
	if (r == 0)
		cd_copy_count(c, x, n, (unsigned)kept + zeros, zeros, bytes);
out:
	free(v);
	return r;
}

static int flush_base(struct cd_copy *c)
{
	int r = cd_target_flush(dest_of(c));

	if (r == 0)
		c->st->flushes++;
	return r;
}

static const struct cd_copy_ops push_scattered = { send_pieces, flush_base };
static const struct cd_copy_ops push_joined = { send_extent, flush_base };

/* ---- checking ---- */

static int verify(struct cd_copy *c, size_t n)
{
	struct cdisk *d = c->d;
	uint8_t *a = malloc(SYNC_EXTENT), *b = malloc(SYNC_EXTENT);
	int r = 0;

	if (!a || !b) {
		r = cd_error(d->ctx, -ENOMEM, "'%s': out of memory", d->path);
		goto out;
	}
	for (size_t i = 0; i < n && r == 0; i++) {
		struct cd_extent *x = &c->ext[i];
		uint64_t off = x->first << d->block_shift;
		size_t len = (size_t)(x->count << d->block_shift);

		if (!x->sent)
			continue;
		r = cdisk_pread(d, a, len, off);
		if (r == 0)
			r = cd_target_pread(dest_of(c), b, len, off);
		/* A block written since it was sent is dirty again: not a fault. */
		if (r == 0 && memcmp(a, b, len) != 0) {
			for (uint64_t blk = x->first; blk < x->first + x->count; blk++) {
				size_t at = (size_t)((blk - x->first) << d->block_shift);
				bool dirty;

				pthread_mutex_lock(&d->lock);
				dirty = cd_bitmap_get(&d->dirty, blk);
				pthread_mutex_unlock(&d->lock);
				if (!dirty && memcmp(a + at, b + at, d->block_size) != 0) {
					r = cd_error(d->ctx, -EIO, "verify: the base '%s' differs "
						     "from '%s' at %llu", dest_of(c)->uri, d->path,
						     (unsigned long long)(blk << d->block_shift));
					break;
				}
			}
		}
		if (r == 0)
			c->st->verified_bytes += len;
	}
out:
	free(a);
	free(b);
	return r;
}

/* ---- the call ---- */

static int open_base_for_writing(struct cdisk *d, struct cd_target **out)
{
	int r;

	if (d->readonly)
		return cd_error(d->ctx, -EROFS, "'%s' is open read-only", d->path);
	r = cd_target_open(d->ctx, d->sb.base, false, out);
	if (r < 0)
		return r;
	if ((*out)->readonly)
		r = cd_error(d->ctx, -EROFS, "cannot sync '%s': its base '%s' is read-only",
			     d->path, d->sb.base);
	else if ((*out)->size < d->sb.size)
		r = cd_error(d->ctx, -ENOSPC, "cannot sync '%s': its base '%s' holds %llu "
			     "bytes, the disk %llu", d->path, d->sb.base,
			     (unsigned long long)(*out)->size,
			     (unsigned long long)d->sb.size);
	if (r < 0) {
		cd_target_close(*out);
		*out = NULL;
	}
	return r;
}

static int begin(struct cdisk *d)
{
	int r = 0;

	pthread_mutex_lock(&d->lock);
	if (d->sync_running)
		r = cd_error(d->ctx, -EBUSY, "'%s': a sync is already running", d->path);
	d->sync_running = true;
	d->sync_stop = 0;
	pthread_mutex_unlock(&d->lock);
	return r;
}

static void end(struct cdisk *d)
{
	pthread_mutex_lock(&d->lock);
	d->sync_running = false;
	pthread_mutex_unlock(&d->lock);
}

void cdisk_sync_stop(struct cdisk *d)
{
	d->sync_stop = 1;
}

/* Requests (or groups of pieces) under way: as asked, else as the base
 * takes writes best.  A pull reads through the disk's own base, one
 * request a thread: the default. */
static unsigned copy_depth(const struct cdisk_sync_opts *o, const struct cd_target *base)
{
	if (o->depth)
		return o->depth;
	if (base && base->sync_depth)
		return base->sync_depth;
	return SYNC_DEFAULT_DEPTH;
}

/* --if-healthy: the probe's verdict decides; nothing is touched on a no. */
static int check_health(struct cdisk *d, const struct cdisk_sync_opts *o)
{
	struct cdisk_probe_opts po = { 0 };
	struct cdisk_probe_limits limits;
	struct cdisk_probe_result res;
	int r;

	if (!o->if_healthy)
		return 0;
	cdisk_probe_limits_default(d->ctx, &limits);
	r = cdisk_probe(d->ctx, d->sb.base, &po, &limits, &res);
	if (r < 0)
		return r;
	if (res.verdict == CDISK_UNREACHABLE)
		return cd_error(d->ctx, -EHOSTUNREACH, "'%s': its base '%s' is unreachable: %s",
				d->path, d->sb.base, res.reason);
	if (res.verdict == CDISK_DEGRADED)
		return cd_error(d->ctx, -EAGAIN, "'%s': not now, the base '%s' is degraded: "
				"%s; try later", d->path, d->sb.base, res.reason);
	cd_log(d->ctx, CDISK_LOG_INFO, "'%s': the base is healthy (round trip %.2f ms)",
	       d->path, res.rtt_mean_ms);
	return 0;
}

/* What to send, as the base takes it best.  A base that takes many
 * small writes together gets only the dirty runs, grouped by its window
 * (an RBD object; 4 MiB for the others): nothing is read from the base
 * and no clean byte crosses the network.  Others get runs joined over
 * gaps of up to SYNC_JOIN_GAP, cut at SYNC_EXTENT so that an S3 chunk is
 * written whole. */
static int plan_push(struct cd_copy *c, struct cd_target *base)
{
	struct cdisk *d = c->d;
	uint64_t window = base->scatter_window >> d->block_shift;
	uint64_t per = window ? window : SYNC_EXTENT >> d->block_shift;
	size_t window_bytes = (size_t)(window << d->block_shift);
	uint64_t blocks;
	int r;

	c->job = base;
	c->window = window;
	c->ops = window ? &push_scattered : &push_joined;
	c->buf_bytes = window_bytes > SYNC_EXTENT ? window_bytes : SYNC_EXTENT;
	c->depth = copy_depth(c->o, base);
	c->pace_uri = d->sb.base;
	c->pace_handle = base;
	pthread_mutex_lock(&d->lock);
	r = cd_copy_collect(d, &d->dirty, true, 0, d->nblocks,
			    window ? 0 : SYNC_JOIN_GAP >> d->block_shift, per, &c->ext, &c->n,
			    &blocks);
	pthread_mutex_unlock(&d->lock);
	c->total_bytes = blocks << d->block_shift;
	return r;
}

int cdisk_sync(struct cdisk *d, const struct cdisk_sync_opts *o,
	       struct cdisk_sync_stats *st)
{
	const struct cd_drain dirty = { &d->dirty, &d->syncing, cd_mark_clean };
	struct cd_copy c = { .d = d, .o = o, .st = st, .drain = &dirty,
			     .start_ms = cd_now_ms(), .stop = o->stop };
	struct cd_target *base = NULL;
	uint64_t resent_before = 0;
	int r;

	memset(st, 0, sizeof(*st));
	if (cd_sb_has_primary(&d->sb))
		return cd_error(d->ctx, -EINVAL, "'%s' has no overlay to sync: its data is "
				"written in place on its primary '%s'", d->path, d->sb.base);
	if (!d->sb.base[0])
		return cd_error(d->ctx, -EINVAL, "'%s' has no base to sync to", d->path);
	r = cd_identity_confirmed(d, "sync");
	if (r == 0)
		r = begin(d);
	if (r < 0)
		return r;
	pthread_mutex_lock(&d->lock);
	st->dirty_bytes = d->dirty.count << d->block_shift;
	pthread_mutex_unlock(&d->lock);
	if (st->dirty_bytes < o->min_dirty || (o->min_dirty && !st->dirty_bytes)) {
		st->below_min = true;
		goto out;
	}
	if (o->dry_run || !st->dirty_bytes)
		goto out;
	r = check_health(d, o);
	if (r == 0)
		r = open_base_for_writing(d, &base);
	/* The stack may be shared with others over the same base: count
	 * only what was resent during this sync. */
	if (base)
		resent_before = __atomic_load_n(&base->resent, __ATOMIC_RELAXED);
	if (r == 0)
		r = plan_push(&c, base);
	if (r < 0)
		goto out;
	cd_log(d->ctx, CDISK_LOG_DEBUG, "'%s': %llu bytes to send, %u requests under way",
	       d->path, (unsigned long long)c.total_bytes, c.depth);
	r = cd_copy_run(&c);
	st->bytes = c.sent_bytes;
	if (r == 0 && o->verify)
		r = verify(&c, c.n);
out:
	pthread_mutex_lock(&d->lock);
	st->left_bytes = d->dirty.count << d->block_shift;
	pthread_mutex_unlock(&d->lock);
	st->stopped = r == 0 && !o->dry_run && !st->below_min && cd_copy_stopped(&c) &&
		      st->left_bytes;
	st->seconds = (double)(cd_now_ms() - c.start_ms) / 1000.0;
	if (base)
		st->retries = __atomic_load_n(&base->resent, __ATOMIC_RELAXED) - resent_before;
	cd_target_close(base);
	free(c.ext);
	end(d);
	return r;
}

/* ---- pull: the base's blocks into the overlay ---- */

/* The disk reads its base where the overlay holds nothing; the fill
 * stores only the blocks still absent, so a guest's write meanwhile
 * wins, and records them present with it. */
static int fetch_extent(struct cd_copy *c, struct cd_extent *x, size_t n, uint8_t *buf)
{
	struct cdisk *d = c->d;
	size_t len = (size_t)(x->count << d->block_shift);
	int r = cdisk_pread(d, buf, len, x->first << d->block_shift);

	if (r < 0 || !cd_copy_throttle(c, len))
		return r;
	pthread_mutex_lock(&d->lock);
	r = cd_fill_locked(d, x->first, x->count, buf);
	pthread_mutex_unlock(&d->lock);
	if (r == 0)
		cd_copy_count(c, x, 1, (unsigned)n, 0, len);
	return r;
}

/* The data first, then the records that claim it. */
static int make_pull_durable(struct cd_copy *c)
{
	struct cdisk *d = c->d;
	int r = fdatasync(d->fd) < 0 ? -errno : 0;

	if (r < 0)
		return cd_error(d->ctx, r, "cannot flush '%s': %s", d->path, strerror(-r));
	pthread_mutex_lock(&d->lock);
	r = cd_flush_locked(d);
	pthread_mutex_unlock(&d->lock);
	return r;
}

static const struct cd_copy_ops pull_ops = { fetch_extent, make_pull_durable };

static int check_range(struct cdisk *d, const struct cdisk_sync_opts *o)
{
	if (o->range_offset % d->block_size || o->range_length % d->block_size ||
	    o->range_offset > d->sb.size || o->range_length > d->sb.size - o->range_offset)
		return cd_error(d->ctx, -EINVAL, "'%s': the range must be whole blocks of %llu "
				"bytes within the disk", d->path,
				(unsigned long long)d->block_size);
	return 0;
}

int cdisk_pull(struct cdisk *d, const struct cdisk_sync_opts *o,
	       struct cdisk_sync_stats *st)
{
	uint64_t per = SYNC_EXTENT >> d->block_shift ? SYNC_EXTENT >> d->block_shift : 1;
	struct cd_copy c = { .d = d, .o = o, .st = st, .ops = &pull_ops, .stop = o->stop,
			     .start_ms = cd_now_ms(), .buf_bytes = SYNC_EXTENT,
			     .batch_bytes = SYNC_PULL_BATCH, .pace_uri = d->sb.base,
			     .depth = copy_depth(o, NULL) };
	uint64_t first, last, blocks = 0;
	int r;

	memset(st, 0, sizeof(*st));
	if (cd_sb_has_primary(&d->sb))
		return cd_error(d->ctx, -EINVAL, "'%s' has no overlay to pull into: its data "
				"is read in place from its primary '%s'", d->path, d->sb.base);
	if (!d->sb.base[0])
		return cd_error(d->ctx, -EINVAL, "'%s' has no base to pull from", d->path);
	r = cd_identity_confirmed(d, "pull into");
	if (r == 0)
		r = check_range(d, o);
	if (r < 0)
		return r;
	first = o->range_offset >> d->block_shift;
	last = o->range_length ? (o->range_offset + o->range_length) >> d->block_shift
			       : d->nblocks;
	r = begin(d);
	if (r < 0)
		return r;
	pthread_mutex_lock(&d->lock);
	r = cd_copy_collect(d, &d->present, false, first, last, 0, per, &c.ext, &c.n, &blocks);
	pthread_mutex_unlock(&d->lock);
	if (r < 0 || o->dry_run) {
		st->dirty_bytes = r < 0 ? 0 : blocks << d->block_shift;
		goto out;
	}
	r = check_health(d, o);
	if (r < 0)
		goto out;
	c.total_bytes = blocks << d->block_shift;
	r = cd_copy_run(&c);
	st->pulled_bytes = c.sent_bytes;
	st->stopped = r == 0 && cd_copy_stopped(&c) && c.sent_bytes < c.total_bytes;
out:
	pthread_mutex_lock(&d->lock);
	st->left_bytes = d->dirty.count << d->block_shift;
	pthread_mutex_unlock(&d->lock);
	st->seconds = (double)(cd_now_ms() - c.start_ms) / 1000.0;
	free(c.ext);
	end(d);
	return r;
}

/* ---- close ---- */

int cdisk_sync_close(struct cdisk *d, const struct cdisk_sync_opts *o,
		     struct cdisk_sync_stats *st)
{
	struct cdisk_sync_opts checked = *o;
	uint64_t per = SYNC_EXTENT >> d->block_shift ? SYNC_EXTENT >> d->block_shift : 1;
	uint64_t released = 0;
	int r;

	checked.verify = true;
	r = cdisk_sync(d, &checked, st);
	if (r < 0 || st->stopped || st->below_min || o->dry_run)
		return r;
	for (uint64_t b = 0; b < d->nblocks && r == 0; b += per) {
		pthread_mutex_lock(&d->lock);
		r = cd_release_locked(d, b, d->nblocks - b < per ? d->nblocks - b : per,
				      &released);
		pthread_mutex_unlock(&d->lock);
	}
	st->released_bytes = released << d->block_shift;
	pthread_mutex_lock(&d->lock);
	st->left_bytes = d->dirty.count << d->block_shift;
	pthread_mutex_unlock(&d->lock);
	return r;
}

/* Sync: the overlay's dirty blocks to the base.
 *
 * The order is what makes it safe.  Under the disk lock the dirty blocks
 * of a batch are marked "syncing"; then their data is read from the
 * overlay and written to the base, many requests at once; then the base is
 * flushed; then, under the lock, the blocks still marked syncing are
 * recorded clean and the record is made durable.  A write that completes
 * at any point after the marking clears its blocks' syncing bits (see
 * mark_written), so a block rewritten during its journey stays dirty and
 * goes again.  A crash at any point loses only the in-memory marks: no
 * block is clean before the base has flushed it. */
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define SYNC_EXTENT (4u << 20)       /* the largest request: one S3 chunk */
#define SYNC_BATCH (256ull << 20)    /* bytes between base flushes */
/* Dirty runs this close are sent as one request, the blocks between
 * included: they read as the base already holds them (clean overlay data,
 * or the base's own), so the base does not change there, and one request
 * costs less than two round trips.  qcow2 writes whole 64 KiB clusters for
 * the same reason. */
#define SYNC_JOIN_GAP (64u << 10)

struct extent {
	uint64_t first, count;   /* blocks */
	bool sent;
};

struct engine {
	int (*do_extent)(struct engine *e, struct extent *x, uint8_t *buf);
	struct cdisk *d;
	struct cd_target *base;
	const struct cdisk_sync_opts *o;
	struct cdisk_sync_stats *st;
	struct extent *ext;
	size_t next, end;        /* the batch: ext[next..end) */
	uint64_t start_ms;
	uint64_t rate_next_us;   /* when the rate lets the next byte go */
	uint64_t sent_bytes;
	int error;
	pthread_mutex_t lock;
};

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* ---- choosing the work ---- */

/* The runs of blocks in [first, end) whose bit in bm is value, in pieces
 * of at most SYNC_EXTENT that do not cross a SYNC_EXTENT boundary (an S3
 * chunk is then written whole), as a list. */
static int collect(struct cdisk *d, const struct cd_bitmap *bm, bool value,
		   uint64_t first, uint64_t end, uint64_t join_gap, struct extent **out,
		   size_t *n, uint64_t *blocks)
{
	uint64_t per = SYNC_EXTENT >> d->block_shift ? SYNC_EXTENT >> d->block_shift : 1;
	size_t cap = 0;
	struct extent *ext = NULL;

	*n = 0;
	*blocks = 0;
	for (uint64_t b = cd_bitmap_find(bm, first, value); b < end;) {
		uint64_t stop = cd_bitmap_find(bm, b, !value);

		if (stop > end)
			stop = end;
		while (b < stop) {
			uint64_t edge = (b / per + 1) * per;
			uint64_t count = (stop < edge ? stop : edge) - b;
			struct extent *last = *n ? &ext[*n - 1] : NULL;

			/* Near the last extent and in its 4 MiB window: grow it. */
			if (last && b - (last->first + last->count) <= join_gap &&
			    last->first / per == b / per) {
				*blocks += count;
				last->count = b + count - last->first;
				b += count;
				continue;
			}
			if (*n == cap) {
				struct extent *bigger;
				cap = cap ? cap * 2 : 256;
				bigger = realloc(ext, cap * sizeof(*ext));
				if (!bigger) {
					free(ext);
					return cd_error(d->ctx, -ENOMEM, "'%s': out of memory",
							d->path);
				}
				ext = bigger;
			}
			ext[(*n)++] = (struct extent){ b, count, false };
			*blocks += count;
			b += count;
		}
		b = cd_bitmap_find(bm, stop, value);
	}
	*out = ext;
	return 0;
}

/* ---- sending ---- */

static void throttle(struct engine *e, size_t bytes)
{
	uint64_t wait_until, now;

	if (!e->o->rate)
		return;
	pthread_mutex_lock(&e->lock);
	now = now_us();
	if (e->rate_next_us < now)
		e->rate_next_us = now;
	wait_until = e->rate_next_us;
	e->rate_next_us += bytes * 1000000 / e->o->rate;
	pthread_mutex_unlock(&e->lock);
	if (wait_until > now)
		usleep((useconds_t)(wait_until - now));
}

static bool all_zero(const uint8_t *p, size_t len)
{
	return len == 0 || (p[0] == 0 && memcmp(p, p + 1, len - 1) == 0);
}

/* What the disk shows over the extent, in one request to the base at most:
 * an extent joined across absent blocks reads the base once, whole, and
 * then the overlay's blocks over it.  Blocks marked syncing are present and
 * stay so, so they always come from the overlay. */
static int read_extent(struct engine *e, struct extent *x, uint8_t *buf)
{
	struct cdisk *d = e->d;
	uint64_t off = x->first << d->block_shift, end = x->first + x->count;
	size_t len = (size_t)(x->count << d->block_shift);
	bool whole;
	int r;

	pthread_mutex_lock(&d->lock);
	whole = cd_bitmap_find(&d->present, x->first, false) >= end;
	pthread_mutex_unlock(&d->lock);
	if (whole)
		return cdisk_pread(d, buf, len, off);
	r = cd_target_pread(e->base, buf, len, off);
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

static int send_extent(struct engine *e, struct extent *x, uint8_t *buf)
{
	struct cdisk *d = e->d;
	uint64_t off = x->first << d->block_shift;
	size_t len = (size_t)(x->count << d->block_shift);
	bool zero;
	int r;

	/* Another thread's write may land any time after this read; it then
	 * clears the syncing bits, and the block goes again next time. */
	r = read_extent(e, x, buf);
	if (r < 0)
		return r;
	throttle(e, len);
	zero = all_zero(buf, len);
	r = zero ? cd_target_zero(e->base, len, off) : cd_target_pwrite(e->base, buf, len, off);
	if (r < 0)
		return r;
	pthread_mutex_lock(&e->lock);
	x->sent = true;
	e->st->requests++;
	e->st->zero_requests += zero;
	e->st->bytes += len;
	e->sent_bytes += len;
	pthread_mutex_unlock(&e->lock);
	return 0;
}

static bool out_of_time(const struct engine *e)
{
	return e->d->sync_stop ||
	       (e->o->max_seconds && cd_now_ms() - e->start_ms >= e->o->max_seconds * 1000ull);
}

static void *worker(void *opaque)
{
	struct engine *e = opaque;
	uint8_t *buf = malloc(SYNC_EXTENT > e->d->block_size ? SYNC_EXTENT : e->d->block_size);

	for (;;) {
		struct extent *x;
		int r;

		pthread_mutex_lock(&e->lock);
		if (e->error || e->next >= e->end || out_of_time(e)) {
			pthread_mutex_unlock(&e->lock);
			break;
		}
		x = &e->ext[e->next++];
		pthread_mutex_unlock(&e->lock);
		r = buf ? e->do_extent(e, x, buf)
			: cd_error(e->d->ctx, -ENOMEM, "'%s': out of memory", e->d->path);
		if (r < 0) {
			pthread_mutex_lock(&e->lock);
			if (!e->error)
				e->error = r;
			pthread_mutex_unlock(&e->lock);
		}
	}
	free(buf);
	return NULL;
}

static int run_workers(struct engine *e)
{
	unsigned n = e->o->depth ? e->o->depth : 16;
	pthread_t th[256];
	unsigned started = 0;

	if (n > 256)
		n = 256;
	while (started < n && pthread_create(&th[started], NULL, worker, e) == 0)
		started++;
	if (!started)
		worker(e);
	for (unsigned i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	return e->error;
}

/* ---- recording ---- */

/* Mark the batch's dirty blocks syncing, under the lock, before any of it
 * is read.  The clean blocks joined in between are sent, never recorded. */
static int mark_syncing(struct cdisk *d, struct extent *ext, size_t n)
{
	int r = 0;

	pthread_mutex_lock(&d->lock);
	for (size_t i = 0; i < n && r == 0; i++) {
		uint64_t end = ext[i].first + ext[i].count;

		for (uint64_t b = cd_bitmap_find(&d->dirty, ext[i].first, true);
		     b < end && r == 0;) {
			uint64_t stop = cd_bitmap_find(&d->dirty, b, false);

			if (stop > end)
				stop = end;
			r = cd_bitmap_assign(&d->syncing, b, stop - b, true);
			b = cd_bitmap_find(&d->dirty, stop, true);
		}
	}
	pthread_mutex_unlock(&d->lock);
	return r < 0 ? cd_error(d->ctx, r, "'%s': out of memory", d->path) : 0;
}

/* After the base flushed: what was sent and not written since is clean.
 * Everything of the batch stops being "syncing" either way. */
static int record_clean(struct engine *e, size_t from, size_t to)
{
	struct cdisk *d = e->d;
	int r = 0;

	pthread_mutex_lock(&d->lock);
	for (size_t i = from; i < to; i++) {
		struct extent *x = &e->ext[i];

		for (uint64_t b = x->first, end = x->first + x->count; b < end && x->sent;) {
			bool on = cd_bitmap_get(&d->syncing, b);
			uint64_t stop = cd_bitmap_find(&d->syncing, b, !on);

			if (stop > end)
				stop = end;
			if (on && r == 0) {
				r = cd_mark_clean(d, b, stop - b);
				if (r == 0)
					e->st->blocks += stop - b;
			}
			b = stop;
		}
		cd_bitmap_assign(&d->syncing, x->first, x->count, false);
	}
	if (r == 0)
		r = cd_flush_locked(d);
	pthread_mutex_unlock(&d->lock);
	return r;
}

static void clear_syncing(struct cdisk *d, struct extent *ext, size_t from, size_t to)
{
	pthread_mutex_lock(&d->lock);
	for (size_t i = from; i < to; i++)
		cd_bitmap_assign(&d->syncing, ext[i].first, ext[i].count, false);
	pthread_mutex_unlock(&d->lock);
}

/* One batch: mark, send, flush the base, record. */
static int run_batch(struct engine *e, size_t from, size_t to)
{
	int r = mark_syncing(e->d, e->ext + from, to - from), f;

	if (r < 0)
		return r;
	e->next = from;
	e->end = to;
	r = run_workers(e);
	/* What was sent before an error is flushed and recorded all the same:
	 * the next run need not send it again. */
	f = cd_target_flush(e->base);
	if (f < 0) {
		clear_syncing(e->d, e->ext, from, to);
		return r < 0 ? r : f;
	}
	e->st->flushes++;
	f = record_clean(e, from, to);
	return r < 0 ? r : f;
}

/* ---- checking ---- */

static int verify(struct engine *e, size_t n)
{
	struct cdisk *d = e->d;
	uint8_t *a = malloc(SYNC_EXTENT), *b = malloc(SYNC_EXTENT);
	int r = 0;

	if (!a || !b) {
		r = cd_error(d->ctx, -ENOMEM, "'%s': out of memory", d->path);
		goto out;
	}
	for (size_t i = 0; i < n && r == 0; i++) {
		struct extent *x = &e->ext[i];
		uint64_t off = x->first << d->block_shift;
		size_t len = (size_t)(x->count << d->block_shift);

		if (!x->sent)
			continue;
		r = cdisk_pread(d, a, len, off);
		if (r == 0)
			r = cd_target_pread(e->base, b, len, off);
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
						     "from '%s' at %llu", e->base->uri, d->path,
						     (unsigned long long)(blk << d->block_shift));
					break;
				}
			}
		}
		if (r == 0)
			e->st->verified_bytes += len;
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

static int sync_all(struct engine *e, size_t n)
{
	struct cdisk *d = e->d;
	int r = 0;

	for (size_t from = 0; from < n && r == 0 && !out_of_time(e);) {
		uint64_t bytes = 0;
		size_t to = from;

		while (to < n && bytes < SYNC_BATCH)
			bytes += e->ext[to++].count << d->block_shift;
		r = run_batch(e, from, to);
		if (e->o->progress)
			e->o->progress(e->o->opaque, e->sent_bytes, e->st->dirty_bytes);
		from = to;
	}
	if (r == 0 && e->o->verify)
		r = verify(e, n);
	return r;
}

int cdisk_sync(struct cdisk *d, const struct cdisk_sync_opts *o,
	       struct cdisk_sync_stats *st)
{
	struct engine e = { .d = d, .o = o, .st = st, .start_ms = cd_now_ms(),
			    .do_extent = send_extent };
	uint64_t blocks;
	size_t n = 0;
	int r;

	memset(st, 0, sizeof(*st));
	if (!d->sb.base[0])
		return cd_error(d->ctx, -EINVAL, "'%s' has no base to sync to", d->path);
	r = begin(d);
	if (r < 0)
		return r;
	pthread_mutex_lock(&d->lock);
	r = collect(d, &d->dirty, true, 0, d->nblocks, SYNC_JOIN_GAP >> d->block_shift,
		    &e.ext, &n, &blocks);
	pthread_mutex_unlock(&d->lock);
	if (r < 0)
		goto out;
	st->dirty_bytes = blocks << d->block_shift;
	if (st->dirty_bytes < o->min_dirty || (o->min_dirty && !st->dirty_bytes)) {
		st->below_min = true;
		goto out;
	}
	if (o->dry_run || n == 0)
		goto out;
	r = open_base_for_writing(d, &e.base);
	if (r < 0)
		goto out;
	pthread_mutex_init(&e.lock, NULL);
	r = sync_all(&e, n);
	pthread_mutex_destroy(&e.lock);
out:
	pthread_mutex_lock(&d->lock);
	st->left_bytes = d->dirty.count << d->block_shift;
	pthread_mutex_unlock(&d->lock);
	st->stopped = r == 0 && !o->dry_run && !st->below_min && out_of_time(&e) &&
		      st->left_bytes;
	st->seconds = (double)(cd_now_ms() - e.start_ms) / 1000.0;
	cd_target_close(e.base);
	free(e.ext);
	end(d);
	return r;
}

/* ---- pull ---- */

static int fetch_extent(struct engine *e, struct extent *x, uint8_t *buf)
{
	struct cdisk *d = e->d;
	size_t len = (size_t)(x->count << d->block_shift);
	int r = cdisk_pread(d, buf, len, x->first << d->block_shift);

	if (r < 0)
		return r;
	throttle(e, len);
	pthread_mutex_lock(&d->lock);
	r = cd_fill_locked(d, x->first, x->count, buf);
	pthread_mutex_unlock(&d->lock);
	if (r < 0)
		return r;
	pthread_mutex_lock(&e->lock);
	x->sent = true;
	e->st->requests++;
	e->st->pulled_bytes += len;
	e->sent_bytes += len;
	pthread_mutex_unlock(&e->lock);
	return 0;
}

/* The data first, then the records that claim it. */
static int make_pull_durable(struct cdisk *d)
{
	int r = fdatasync(d->fd) < 0 ? -errno : 0;

	if (r < 0)
		return cd_error(d->ctx, r, "cannot flush '%s': %s", d->path, strerror(-r));
	pthread_mutex_lock(&d->lock);
	r = cd_flush_locked(d);
	pthread_mutex_unlock(&d->lock);
	return r;
}

int cdisk_pull(struct cdisk *d, const struct cdisk_sync_opts *o,
	       struct cdisk_sync_stats *st)
{
	struct engine e = { .d = d, .o = o, .st = st, .start_ms = cd_now_ms(),
			    .do_extent = fetch_extent };
	uint64_t first, last, blocks;
	size_t n = 0;
	int r;

	memset(st, 0, sizeof(*st));
	if (!d->sb.base[0])
		return cd_error(d->ctx, -EINVAL, "'%s' has no base to pull from", d->path);
	if (o->range_offset % d->block_size || o->range_length % d->block_size ||
	    o->range_offset > d->sb.size || o->range_length > d->sb.size - o->range_offset)
		return cd_error(d->ctx, -EINVAL, "'%s': the range must be whole blocks of %llu "
				"bytes within the disk", d->path,
				(unsigned long long)d->block_size);
	first = o->range_offset >> d->block_shift;
	last = o->range_length ? (o->range_offset + o->range_length) >> d->block_shift
			       : d->nblocks;
	r = begin(d);
	if (r < 0)
		return r;
	pthread_mutex_lock(&d->lock);
	r = collect(d, &d->present, false, first, last, 0, &e.ext, &n, &blocks);
	pthread_mutex_unlock(&d->lock);
	if (r < 0 || o->dry_run) {
		st->dirty_bytes = r < 0 ? 0 : blocks << d->block_shift;
		goto out;
	}
	pthread_mutex_init(&e.lock, NULL);
	for (size_t from = 0; from < n && r == 0 && !out_of_time(&e);) {
		uint64_t bytes = 0;
		size_t to = from;

		while (to < n && bytes < SYNC_BATCH)
			bytes += e.ext[to++].count << d->block_shift;
		e.next = from;
		e.end = to;
		r = run_workers(&e);
		{
			int f = make_pull_durable(d);
			if (r == 0)
				r = f;
		}
		if (o->progress)
			o->progress(o->opaque, e.sent_bytes, blocks << d->block_shift);
		from = to;
	}
	pthread_mutex_destroy(&e.lock);
	st->stopped = r == 0 && out_of_time(&e) && e.sent_bytes < (blocks << d->block_shift);
out:
	pthread_mutex_lock(&d->lock);
	st->left_bytes = d->dirty.count << d->block_shift;
	pthread_mutex_unlock(&d->lock);
	st->seconds = (double)(cd_now_ms() - e.start_ms) / 1000.0;
	free(e.ext);
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

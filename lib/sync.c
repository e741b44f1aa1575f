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
/* A batch (what one base flush and one journal commit confirm) holds about
 * SYNC_BATCH_MS of work: a sync killed at any moment loses about that much,
 * and the flush and the commit, some milliseconds, cost little.  Without a
 * rate limit it holds SYNC_BATCH_MIN at least, and that much at first,
 * when the speed is not known yet: 16 requests of 4 MiB keep even a slow
 * link busy. */
#define SYNC_BATCH_MS 1000
#define SYNC_BATCH_MIN (64ull << 20)
#define SYNC_PULL_BATCH (256ull << 20)  /* bytes between a pull's commits */
#define SYNC_DEFAULT_DEPTH 16        /* requests under way, unless the base says */
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
	/* The first failure's message: the workers' own threads keep it,
	 * and the caller's thread must report it. */
	char error_msg[CD_ERROR_MAX];
	/* One piece of work: one extent, or every extent of one window */
	int (*do_work)(struct engine *e, struct extent *x, size_t n, uint8_t *buf);
	struct cdisk *d;
	struct cd_target *base;
	const struct cdisk_sync_opts *o;
	struct cdisk_sync_stats *st;
	struct extent *ext;
	size_t next, end;        /* the batch: ext[next..end) */
	size_t batch_from;       /* where the batch began */
	uint64_t batch_ms;       /* when; 0: the batch is not closed by time */
	uint64_t speed;          /* bytes a second of the last batch, flush included */
	uint64_t window;         /* blocks; 0: not grouped (see collect_dirty) */
	uint64_t start_ms;
	uint64_t sent_bytes, total_bytes;
	int error;
	unsigned running;        /* workers not yet done */
	pthread_mutex_t lock;
	pthread_cond_t done;
	/* the rate: a token bucket that may go into debt by one request */
	double tokens;
	uint64_t tokens_us;
	/* the delay-based controller; pinger is NULL when it is off */
	struct cd_target *pinger;
	bool pinger_own;         /* opened for pings, closed at the end */
	struct cd_pace pace;
};

/* ---- choosing the work ---- */

/* The runs of blocks in [first, end) whose bit in bm is value, in pieces
 * that do not cross a boundary of per blocks, as a list. */
static int collect(struct cdisk *d, const struct cd_bitmap *bm, bool value,
		   uint64_t first, uint64_t end, uint64_t join_gap, uint64_t per,
		   struct extent **out, size_t *n, uint64_t *blocks)
{
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

			/* Near the last extent and in its window: grow it. */
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

static bool out_of_time(const struct engine *e);

/* Under e->lock: the user's --rate or the controller's, the lower. */
static uint64_t effective_rate(const struct engine *e)
{
	uint64_t user = e->o->rate, ours = e->pace.rate_limit;

	if (!user || !ours)
		return user ? user : ours;
	return user < ours ? user : ours;
}

/* Wait until the rate lets bytes go.  The wait is taken in short naps, so
 * a rate that rises, or a stop, takes effect at once.  False: stopped. */
static bool throttle(struct engine *e, size_t bytes)
{
	/* Nothing can limit the rate: no lock taken on the way to the base.
	 * (The pinger is set before the workers start and cleared after.) */
	if (!e->o->rate && !e->pinger)
		return true;
	for (;;) {
		uint64_t rate, now, nap;

		pthread_mutex_lock(&e->lock);
		rate = effective_rate(e);
		now = cd_now_us();
		if (rate) {
			double burst = (double)rate / 10;
			e->tokens += (double)(now - e->tokens_us) * (double)rate / 1e6;
			if (e->tokens > burst)
				e->tokens = burst;
		}
		e->tokens_us = now;
		if (!rate || e->tokens >= 0) {
			e->tokens -= rate ? (double)bytes : 0;
			pthread_mutex_unlock(&e->lock);
			return true;
		}
		if (out_of_time(e)) {
			pthread_mutex_unlock(&e->lock);
			return false;
		}
		nap = (uint64_t)(-e->tokens * 1e6 / (double)rate);
		pthread_mutex_unlock(&e->lock);
		usleep((useconds_t)(nap < 50000 ? nap + 1 : 50000));
	}
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

static void count_sent(struct engine *e, struct extent *x, size_t n, unsigned requests,
		       unsigned zero_requests, size_t bytes)
{
	pthread_mutex_lock(&e->lock);
	for (size_t i = 0; i < n; i++)
		x[i].sent = true;
	e->st->requests += requests;
	e->st->zero_requests += zero_requests;
	e->st->bytes += bytes;
	e->sent_bytes += bytes;
	pthread_mutex_unlock(&e->lock);
}

/* One extent, joined over gaps: read what the disk shows over it (the
 * base's own data in the gaps), then one write or one zeroing. */
static int send_extent(struct engine *e, struct extent *x, size_t n, uint8_t *buf)
{
	struct cdisk *d = e->d;
	uint64_t off = x->first << d->block_shift;
	size_t len = (size_t)(x->count << d->block_shift);
	bool zero;
	int r;

	/* Another thread's write may land any time after this read; it then
	 * clears the syncing bits, and the block goes again next time. */
	r = read_extent(e, x, buf);
	if (r < 0 || !throttle(e, len))
		return r;
	zero = all_zero(buf, len);
	r = zero ? cd_target_zero(e->base, len, off) : cd_target_pwrite(e->base, buf, len, off);
	if (r == 0)
		count_sent(e, x, n, 1, zero, len);
	return r;
}

/* The data of a window's dirty runs, from the overlay's data area, one
 * read a run, into buf one after another.  Every block of them is dirty,
 * so present, and stays present during the sync; a write that lands
 * meanwhile clears its blocks' syncing bits, so whatever this reads of
 * them is sent again. */
static int read_pieces(struct cdisk *d, const struct extent *x, size_t n, uint8_t *buf,
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
static int send_pieces(struct engine *e, struct extent *x, size_t n, uint8_t *buf)
{
	struct cdisk *d = e->d;
	struct cd_piece *v = malloc(n * sizeof(*v));
	size_t bytes = 0, kept = 0;
	unsigned zeros = 0;
	int r = 0;

	if (!v)
		return cd_error(d->ctx, -ENOMEM, "'%s': out of memory", d->path);
	r = read_pieces(d, x, n, buf, v, &bytes);
	if (r < 0 || !throttle(e, bytes))
		goto out;
	for (size_t i = 0; i < n && r == 0; i++) {
		if (v[i].len >= SYNC_ZERO_RUN && all_zero(v[i].buf, v[i].len)) {
			r = cd_target_zero(e->base, v[i].len, v[i].off);
			zeros++;
		} else {
			v[kept++] = v[i];
		}
	}
	if (r == 0)
		r = cd_target_pwrite_pieces(e->base, v, kept);
	if (r == 0)
		count_sent(e, x, n, (unsigned)kept + zeros, zeros, bytes);
out:
	free(v);
	return r;
}

static bool out_of_time(const struct engine *e)
{
	return e->d->sync_stop ||
	       (e->o->max_seconds && cd_now_ms() - e->start_ms >= e->o->max_seconds * 1000ull);
}

static void *worker(void *opaque)
{
	struct engine *e = opaque;
	size_t window = (size_t)(e->window << e->d->block_shift);
	uint8_t *buf = malloc(window > SYNC_EXTENT ? window : SYNC_EXTENT);

	for (;;) {
		struct extent *x;
		size_t n = 1;
		int r;

		pthread_mutex_lock(&e->lock);
		/* A batch that took its time closes: the rate may have fallen
		 * since its size was chosen. */
		if (e->batch_ms && e->next > e->batch_from &&
		    cd_now_ms() - e->batch_ms >= SYNC_BATCH_MS)
			e->end = e->next;
		if (e->error || e->next >= e->end || out_of_time(e)) {
			pthread_mutex_unlock(&e->lock);
			break;
		}
		x = &e->ext[e->next];
		while (e->window && e->next + n < e->end &&
		       x[n].first / e->window == x->first / e->window)
			n++;
		e->next += n;
		pthread_mutex_unlock(&e->lock);
		r = buf ? e->do_work(e, x, n, buf)
			: cd_error(e->d->ctx, -ENOMEM, "'%s': out of memory", e->d->path);
		if (r < 0) {
			pthread_mutex_lock(&e->lock);
			if (!e->error) {
				e->error = r;
				memcpy(e->error_msg, cd_errbuf(), sizeof(e->error_msg));
			}
			pthread_mutex_unlock(&e->lock);
		}
	}
	free(buf);
	pthread_mutex_lock(&e->lock);
	e->running--;
	pthread_cond_broadcast(&e->done);
	pthread_mutex_unlock(&e->lock);
	return NULL;
}

/* ---- pacing by the base's round trip ---- */

#define TICK_MS 200

/* One tick: time a ping to the base beside the sync's own requests, and
 * steer the rate by how far the round trip rose over its baseline. */
static void control_tick(struct engine *e)
{
	struct cdisk *d = e->d;
	uint64_t us;
	int r = cd_target_ping(e->pinger, &us);

	pthread_mutex_lock(&e->lock);
	cd_pace_sent(&e->pace, e->sent_bytes, cd_now_ms());
	if (r == 0)
		cd_pace_sample(&e->pace, (double)us / 1000.0, cd_now_ms());
	switch (cd_pace_adjust(&e->pace, r == 0)) {
	case CD_PACE_SLOWED:
		cd_log(d->ctx, CDISK_LOG_INFO, "'%s': the base's round trip is %.1f ms over "
		       "its %.1f ms baseline; slowing down", d->path,
		       r == 0 ? e->pace.current - e->pace.base : 2 * e->pace.target_ms,
		       e->pace.base);
		break;
	case CD_PACE_FREED:
		cd_log(d->ctx, CDISK_LOG_INFO, "'%s': the base's round trip is back near "
		       "its baseline; full speed", d->path);
		break;
	case CD_PACE_SAME:
		break;
	}
	pthread_mutex_unlock(&e->lock);
}

static void report_progress(struct engine *e)
{
	struct cdisk_sync_progress p;

	if (!e->o->progress)
		return;
	pthread_mutex_lock(&e->lock);
	p = (struct cdisk_sync_progress){
		.done = e->sent_bytes, .total = e->total_bytes, .rate_limit = effective_rate(e),
		.delay_ms = e->pace.current, .base_delay_ms = e->pace.base,
	};
	pthread_mutex_unlock(&e->lock);
	e->o->progress(e->o->opaque, &p);
}

static bool base_is_local(struct cdisk *d)
{
	struct cd_uri u;
	bool local;

	if (cd_uri_parse(d->ctx, d->sb.base, &u) < 0)
		return true;
	local = u.scheme == CD_SCHEME_FILE;
	cd_uri_clear(&u);
	return local;
}

static void stop_controller(struct engine *e)
{
	if (e->pinger_own)
		cd_target_close(e->pinger);
	e->pinger = NULL;
	e->pinger_own = false;
}

/* The controller pings on a connection of its own, so that its samples
 * wait in the network's queues, not behind our own requests in the pool;
 * a kind without sessions (RBD: one shared handle) is pinged through the
 * sync's own handle, which saves a second cluster connection.  A local
 * file has no one to share with: no controller. */
static void start_controller(struct engine *e)
{
	struct cdisk *d = e->d;
	int target = e->o->target_delay_ms ? e->o->target_delay_ms
					   : (int)d->ctx->cfg.sync_target_delay_ms;

	if (target <= 0 || base_is_local(d))
		return;
	if (e->base && !e->base->ops->connect) {
		e->pinger = e->base;
	} else if (cd_probe_open(d->ctx, d->sb.base, d->ctx->cfg.probe.timeout_s,
				 &e->pinger) < 0) {
		cd_log(d->ctx, CDISK_LOG_WARNING, "%s; the sync will not slow down for "
		       "others", cd_errbuf());
		return;
	} else {
		e->pinger_own = true;
	}
	cd_pace_init(&e->pace, target);
	for (int i = 0; i < 5; i++) {
		uint64_t us;
		if (cd_target_ping(e->pinger, &us) == 0)
			cd_pace_sample(&e->pace, (double)us / 1000.0, cd_now_ms());
	}
	if (!e->pace.nrecent) {
		cd_log(d->ctx, CDISK_LOG_WARNING, "'%s': its base does not answer pings; the "
		       "sync will not slow down for others", d->path);
		stop_controller(e);
	}
}

static bool workers_running(struct engine *e)
{
	bool running;

	pthread_mutex_lock(&e->lock);
	running = e->running > 0;
	pthread_mutex_unlock(&e->lock);
	return running;
}

/* Until the workers are done: steer the rate, report progress. */
static void watch_workers(struct engine *e)
{
	while (workers_running(e)) {
		struct timespec until;
		uint64_t tick_end = cd_now_ms() + TICK_MS;

		if (e->pinger)
			control_tick(e);
		report_progress(e);
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += (long)(tick_end > cd_now_ms() ? tick_end - cd_now_ms() : 0) *
				 1000000;
		until.tv_sec += until.tv_nsec / 1000000000;
		until.tv_nsec %= 1000000000;
		pthread_mutex_lock(&e->lock);
		if (e->running)
			pthread_cond_timedwait(&e->done, &e->lock, &until);
		pthread_mutex_unlock(&e->lock);
	}
}

/* Requests (or groups of pieces) under way: as asked, else as the base
 * takes writes best.  A pull reads through the disk's own base, one
 * request a thread: the default. */
static unsigned sync_depth(const struct engine *e)
{
	if (e->o->depth)
		return e->o->depth;
	if (e->base && e->base->sync_depth)
		return e->base->sync_depth;
	return SYNC_DEFAULT_DEPTH;
}

static int run_workers(struct engine *e)
{
	unsigned n = sync_depth(e);
	pthread_t th[256];
	unsigned started = 0;

	if (n > 256)
		n = 256;
	for (; started < n; started++) {
		pthread_mutex_lock(&e->lock);
		e->running++;
		pthread_mutex_unlock(&e->lock);
		if (pthread_create(&th[started], NULL, worker, e) != 0) {
			pthread_mutex_lock(&e->lock);
			e->running--;
			pthread_mutex_unlock(&e->lock);
			break;
		}
	}
	if (!started) {
		e->running = 1;
		worker(e);
	}
	watch_workers(e);
	for (unsigned i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	report_progress(e);
	if (e->error)
		cd_error(e->d->ctx, e->error, "%s", e->error_msg);
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

/* The bytes of the next batch: a second of work at the rate the sync is
 * held to, or at the speed the last batch went, the lower; without a
 * limit, SYNC_BATCH_MIN at least. */
static uint64_t batch_bytes(struct engine *e)
{
	uint64_t rate, speed = e->speed;

	pthread_mutex_lock(&e->lock);
	rate = effective_rate(e);
	pthread_mutex_unlock(&e->lock);
	if (rate)
		return (speed && speed < rate ? speed : rate) * SYNC_BATCH_MS / 1000;
	if (speed * SYNC_BATCH_MS / 1000 > SYNC_BATCH_MIN)
		return speed * SYNC_BATCH_MS / 1000;
	return SYNC_BATCH_MIN;
}

/* One batch from ext[from]: mark, send, flush the base, record.  *next:
 * where the next one begins (the batch may close early, by time). */
static int run_batch(struct engine *e, size_t from, size_t n, size_t *next)
{
	struct cdisk *d = e->d;
	uint64_t limit = batch_bytes(e), bytes = 0, sent = e->sent_bytes, ms;
	size_t to = from;
	int r, f;

	while (to < n && (to == from || bytes + (e->ext[to].count << d->block_shift) <= limit))
		bytes += e->ext[to++].count << d->block_shift;
	r = mark_syncing(d, e->ext + from, to - from);
	if (r < 0)
		return r;
	e->next = e->batch_from = from;
	e->end = to;
	e->batch_ms = cd_now_ms();
	r = run_workers(e);
	*next = e->next;
	/* What was sent before an error is flushed and recorded all the same:
	 * the next run need not send it again.  The extents not taken were
	 * not sent: record_clean only takes their syncing marks off. */
	f = cd_target_flush(e->base);
	if (f < 0) {
		clear_syncing(d, e->ext, from, to);
		return r < 0 ? r : f;
	}
	e->st->flushes++;
	f = record_clean(e, from, to);
	ms = cd_now_ms() - e->batch_ms;
	e->speed = (e->sent_bytes - sent) * 1000 / (ms ? ms : 1);
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
	int r = 0;

	for (size_t from = 0; from < n && r == 0 && !out_of_time(e);)
		r = run_batch(e, from, n, &from);
	if (r == 0 && e->o->verify)
		r = verify(e, n);
	return r;
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

static void engine_start(struct engine *e)
{
	pthread_mutex_init(&e->lock, NULL);
	pthread_cond_init(&e->done, NULL);
	e->tokens_us = cd_now_us();
	start_controller(e);
}

static void engine_stop(struct engine *e)
{
	e->st->rate_limit = e->pace.rate_limit;
	e->st->slowdowns = e->pace.slowdowns;
	e->st->delay_ms = e->pace.current;
	e->st->base_delay_ms = e->pace.base;
	stop_controller(e);
	pthread_cond_destroy(&e->done);
	pthread_mutex_destroy(&e->lock);
}

/* What to send, as the base takes it best.  A base that takes many
 * small writes together gets only the dirty runs, grouped by its window
 * (an RBD object; 4 MiB for the others): nothing is read from the base
 * and no clean byte crosses the network.  Others get runs joined over
 * gaps of up to SYNC_JOIN_GAP, cut at SYNC_EXTENT so that an S3 chunk is
 * written whole. */
static int collect_dirty(struct engine *e, size_t *n)
{
	struct cdisk *d = e->d;
	uint64_t window = e->base->scatter_window >> d->block_shift;
	uint64_t per = window ? window : SYNC_EXTENT >> d->block_shift;
	uint64_t blocks;
	int r;

	e->window = window;
	e->do_work = window ? send_pieces : send_extent;
	pthread_mutex_lock(&d->lock);
	r = collect(d, &d->dirty, true, 0, d->nblocks,
		    window ? 0 : SYNC_JOIN_GAP >> d->block_shift, per, &e->ext, n, &blocks);
	pthread_mutex_unlock(&d->lock);
	e->total_bytes = blocks << d->block_shift;
	return r;
}

int cdisk_sync(struct cdisk *d, const struct cdisk_sync_opts *o,
	       struct cdisk_sync_stats *st)
{
	struct engine e = { .d = d, .o = o, .st = st, .start_ms = cd_now_ms() };
	size_t n = 0;
	int r;

	memset(st, 0, sizeof(*st));
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
		r = open_base_for_writing(d, &e.base);
	if (r == 0)
		r = collect_dirty(&e, &n);
	if (r < 0)
		goto out;
	cd_log(d->ctx, CDISK_LOG_DEBUG, "'%s': %llu bytes to send, %u requests under way",
	       d->path, (unsigned long long)e.total_bytes, sync_depth(&e));
	engine_start(&e);
	r = sync_all(&e, n);
	engine_stop(&e);
out:
	pthread_mutex_lock(&d->lock);
	st->left_bytes = d->dirty.count << d->block_shift;
	pthread_mutex_unlock(&d->lock);
	st->stopped = r == 0 && !o->dry_run && !st->below_min && out_of_time(&e) &&
		      st->left_bytes;
	st->seconds = (double)(cd_now_ms() - e.start_ms) / 1000.0;
	if (e.base)
		st->retries = __atomic_load_n(&e.base->resent, __ATOMIC_RELAXED);
	cd_target_close(e.base);
	free(e.ext);
	end(d);
	return r;
}

/* ---- pull ---- */

static int fetch_extent(struct engine *e, struct extent *x, size_t n, uint8_t *buf)
{
	struct cdisk *d = e->d;
	size_t len = (size_t)(x->count << d->block_shift);
	int r = cdisk_pread(d, buf, len, x->first << d->block_shift);

	if (r < 0 || !throttle(e, len))
		return r;
	pthread_mutex_lock(&d->lock);
	r = cd_fill_locked(d, x->first, x->count, buf);
	pthread_mutex_unlock(&d->lock);
	if (r < 0)
		return r;
	pthread_mutex_lock(&e->lock);
	x->sent = true;
	e->st->requests += n;
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
			    .do_work = fetch_extent };
	uint64_t first, last, blocks;
	size_t n = 0;
	int r;

	memset(st, 0, sizeof(*st));
	if (!d->sb.base[0])
		return cd_error(d->ctx, -EINVAL, "'%s' has no base to pull from", d->path);
	r = cd_identity_confirmed(d, "pull into");
	if (r < 0)
		return r;
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
	r = collect(d, &d->present, false, first, last, 0,
		    SYNC_EXTENT >> d->block_shift ? SYNC_EXTENT >> d->block_shift : 1, &e.ext,
		    &n, &blocks);
	pthread_mutex_unlock(&d->lock);
	if (r < 0 || o->dry_run) {
		st->dirty_bytes = r < 0 ? 0 : blocks << d->block_shift;
		goto out;
	}
	r = check_health(d, o);
	if (r < 0)
		goto out;
	e.total_bytes = blocks << d->block_shift;
	engine_start(&e);
	for (size_t from = 0; from < n && r == 0 && !out_of_time(&e);) {
		uint64_t bytes = 0;
		size_t to = from;

		while (to < n && bytes < SYNC_PULL_BATCH)
			bytes += e.ext[to++].count << d->block_shift;
		e.next = from;
		e.end = to;
		r = run_workers(&e);
		{
			int f = make_pull_durable(d);
			if (r == 0)
				r = f;
		}
		from = to;
	}
	engine_stop(&e);
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

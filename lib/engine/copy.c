/* The copy engine (copy.h): batches of collect -> claim -> move -> flush
 * -> record, many moves under way, paced. */
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "bitmap.h"
#include "cdisk.h"
#include "copy.h"
#include "ctx.h"
#include "disk.h"
#include "pace.h"
#include "target.h"
#include "uri.h"
#include "util.h"

/* A batch (what one flush of the destination and one journal commit
 * confirm) holds about BATCH_MS of work: a copy killed at any moment loses
 * about that much, and the flush and the commit, some milliseconds, cost
 * little.  Without a rate limit it holds BATCH_MIN at least, and that much
 * at first, when the speed is not known yet: 16 requests of 4 MiB keep
 * even a slow link busy. */
#define BATCH_MS 1000
#define BATCH_MIN (64ull << 20)
#define MAX_DEPTH 256u
#define TICK_MS 200

/* ---- choosing the work ---- */

static int grow(struct cdisk *d, struct cd_extent **ext, size_t *cap)
{
	size_t more = *cap ? *cap * 2 : 256;
	struct cd_extent *bigger = realloc(*ext, more * sizeof(**ext));

	if (!bigger)
		return cd_error(d->ctx, -ENOMEM, "'%s': out of memory", d->path);
	*ext = bigger;
	*cap = more;
	return 0;
}

int cd_copy_collect(struct cdisk *d, const struct cd_bitmap *bm, bool value,
		    uint64_t first, uint64_t end, uint64_t join_gap, uint64_t per,
		    struct cd_extent **out, size_t *n, uint64_t *blocks)
{
	size_t cap = 0;
	struct cd_extent *ext = NULL;

	*n = 0;
	*blocks = 0;
	for (uint64_t b = cd_bitmap_find(bm, first, value); b < end;) {
		uint64_t stop = cd_bitmap_find(bm, b, !value);

		if (stop > end)
			stop = end;
		while (b < stop) {
			uint64_t edge = (b / per + 1) * per;
			uint64_t count = (stop < edge ? stop : edge) - b;
			struct cd_extent *last = *n ? &ext[*n - 1] : NULL;

			/* Near the last extent and in its window: grow it. */
			if (last && b - (last->first + last->count) <= join_gap &&
			    last->first / per == b / per) {
				*blocks += count;
				last->count = b + count - last->first;
				b += count;
				continue;
			}
			if (*n == cap && grow(d, &ext, &cap) < 0) {
				free(ext);
				return -ENOMEM;
			}
			ext[(*n)++] = (struct cd_extent){ b, count, false };
			*blocks += count;
			b += count;
		}
		b = cd_bitmap_find(bm, stop, value);
	}
	*out = ext;
	return 0;
}

/* ---- pacing ---- */

bool cd_copy_stopped(const struct cd_copy *c)
{
	return c->d->sync_stop || (c->stop && *c->stop) ||
	       (c->o->max_seconds && cd_now_ms() - c->start_ms >= c->o->max_seconds * 1000ull);
}

/* Under c->lock: the user's --rate or the controller's, the lower. */
static uint64_t effective_rate(const struct cd_copy *c)
{
	uint64_t user = c->o->rate, ours = c->pace.rate_limit;

	if (!user || !ours)
		return user ? user : ours;
	return user < ours ? user : ours;
}

/* The wait is taken in short naps, so a rate that rises, or a stop,
 * takes effect at once. */
bool cd_copy_throttle(struct cd_copy *c, size_t bytes)
{
	/* Nothing can limit the rate: no lock taken on the way.  (The pinger
	 * is set before the moves start and cleared after.) */
	if (!c->o->rate && !c->pinger)
		return true;
	for (;;) {
		uint64_t rate, now, nap;

		pthread_mutex_lock(&c->lock);
		rate = effective_rate(c);
		now = cd_now_us();
		if (rate) {
			double burst = (double)rate / 10;
			c->tokens += (double)(now - c->tokens_us) * (double)rate / 1e6;
			if (c->tokens > burst)
				c->tokens = burst;
		}
		c->tokens_us = now;
		if (!rate || c->tokens >= 0) {
			c->tokens -= rate ? (double)bytes : 0;
			pthread_mutex_unlock(&c->lock);
			return true;
		}
		if (cd_copy_stopped(c)) {
			pthread_mutex_unlock(&c->lock);
			return false;
		}
		nap = (uint64_t)(-c->tokens * 1e6 / (double)rate);
		pthread_mutex_unlock(&c->lock);
		usleep((useconds_t)(nap < 50000 ? nap + 1 : 50000));
	}
}

void cd_copy_count(struct cd_copy *c, struct cd_extent *x, size_t n, unsigned requests,
		   unsigned zeros, size_t bytes)
{
	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < n; i++)
		x[i].sent = true;
	c->st->requests += requests;
	c->st->zero_requests += zeros;
	c->sent_bytes += bytes;
	pthread_mutex_unlock(&c->lock);
}

/* One tick: time a ping beside the copy's own requests, and steer the rate
 * by how far the round trip rose over its baseline. */
static void control_tick(struct cd_copy *c)
{
	struct cdisk *d = c->d;
	uint64_t us;
	int r = cd_target_ping(c->pinger, &us);

	pthread_mutex_lock(&c->lock);
	cd_pace_sent(&c->pace, c->sent_bytes, cd_now_ms());
	if (r == 0)
		cd_pace_sample(&c->pace, (double)us / 1000.0, cd_now_ms());
	switch (cd_pace_adjust(&c->pace, r == 0)) {
	case CD_PACE_SLOWED:
		cd_log(d->ctx, CDISK_LOG_INFO, "'%s': the base's round trip is %.1f ms over "
		       "its %.1f ms baseline; slowing down", d->path,
		       r == 0 ? c->pace.current - c->pace.base : 2 * c->pace.target_ms,
		       c->pace.base);
		break;
	case CD_PACE_FREED:
		cd_log(d->ctx, CDISK_LOG_INFO, "'%s': the base's round trip is back near "
		       "its baseline; full speed", d->path);
		break;
	case CD_PACE_SAME:
		break;
	}
	pthread_mutex_unlock(&c->lock);
}

static void report_progress(struct cd_copy *c)
{
	struct cdisk_sync_progress p;

	if (!c->o->progress)
		return;
	pthread_mutex_lock(&c->lock);
	p = (struct cdisk_sync_progress){
		.done = c->sent_bytes, .total = c->total_bytes, .rate_limit = effective_rate(c),
		.delay_ms = c->pace.current, .base_delay_ms = c->pace.base,
	};
	pthread_mutex_unlock(&c->lock);
	c->o->progress(c->o->opaque, &p);
}

static bool is_local(struct cdisk_ctx *ctx, const char *uri)
{
	struct cd_uri u;
	bool local;

	if (cd_uri_parse(ctx, uri, &u) < 0)
		return true;
	local = u.scheme == CD_SCHEME_FILE;
	cd_uri_clear(&u);
	return local;
}

static void stop_controller(struct cd_copy *c)
{
	if (c->pinger_own)
		cd_target_close(c->pinger);
	c->pinger = NULL;
	c->pinger_own = false;
}

/* The controller pings on a connection of its own, so that its samples
 * wait in the network's queues, not behind our own requests in the pool;
 * a kind without sessions (RBD: one shared handle) is pinged through the
 * copy's own handle, which saves a second cluster connection.  A local
 * file has no one to share with: no controller. */
static void start_controller(struct cd_copy *c)
{
	struct cdisk *d = c->d;
	int target = c->o->target_delay_ms ? c->o->target_delay_ms
					   : (int)d->ctx->cfg.sync_target_delay_ms;

	if (target <= 0 || !c->pace_uri || is_local(d->ctx, c->pace_uri))
		return;
	if (c->pace_handle && !c->pace_handle->ops->connect) {
		c->pinger = c->pace_handle;
	} else if (cd_probe_open(d->ctx, c->pace_uri, d->ctx->cfg.probe.timeout_s,
				 &c->pinger) < 0) {
		cd_log(d->ctx, CDISK_LOG_WARNING, "%s; the sync will not slow down for "
		       "others", cd_errbuf());
		return;
	} else {
		c->pinger_own = true;
	}
	cd_pace_init(&c->pace, target);
	for (int i = 0; i < 5; i++) {
		uint64_t us;
		if (cd_target_ping(c->pinger, &us) == 0)
			cd_pace_sample(&c->pace, (double)us / 1000.0, cd_now_ms());
	}
	if (!c->pace.nrecent) {
		cd_log(d->ctx, CDISK_LOG_WARNING, "'%s': its base does not answer pings; the "
		       "sync will not slow down for others", d->path);
		stop_controller(c);
	}
}

/* ---- moving ---- */

static void keep_error(struct cd_copy *c, int r)
{
	pthread_mutex_lock(&c->lock);
	if (!c->error) {
		c->error = r;
		memcpy(c->error_msg, cd_errbuf(), sizeof(c->error_msg));
	}
	pthread_mutex_unlock(&c->lock);
}

/* Under c->lock: the next piece of work (one extent, or every extent of
 * one window), or NULL when the batch is over. */
static struct cd_extent *take_work(struct cd_copy *c, size_t *n)
{
	struct cd_extent *x;

	/* A batch that took its time closes: the rate may have fallen since
	 * its size was chosen. */
	if (!c->batch_bytes && c->next > c->batch_from &&
	    cd_now_ms() - c->batch_ms >= BATCH_MS)
		c->end = c->next;
	if (c->error || c->next >= c->end || cd_copy_stopped(c))
		return NULL;
	x = &c->ext[c->next];
	*n = 1;
	while (c->window && c->next + *n < c->end &&
	       x[*n].first / c->window == x->first / c->window)
		(*n)++;
	c->next += *n;
	return x;
}

static uint64_t extent_bytes(const struct cdisk *d, const struct cd_extent *x, size_t n)
{
	uint64_t blocks = 0;

	for (size_t i = 0; i < n; i++)
		blocks += x[i].count;
	return blocks << d->block_shift;
}

static bool copy_cancelled(void *arg)
{
	return cd_copy_stopped(arg);
}

/* One move, in its turn when a server serves the disk: its guests go
 * first, background work gets what they leave and a guaranteed rate. */
static int move_gated(struct cd_copy *c, struct cd_extent *x, size_t n, uint8_t *buf)
{
	const struct cd_io_gate *g = __atomic_load_n(&c->d->gate, __ATOMIC_ACQUIRE);
	uint64_t bytes, t0;
	int r;

	if (!g)
		return c->ops->move(c, x, n, buf);
	bytes = extent_bytes(c->d, x, n);
	/* Stopped while waiting: not moved, so it stays to be moved. */
	if (g->begin(g->arg, bytes, &t0, copy_cancelled, c) < 0)
		return 0;
	r = c->ops->move(c, x, n, buf);
	g->end(g->arg, bytes, r, t0);
	return r;
}

static void *mover(void *opaque)
{
	struct cd_copy *c = opaque;
	uint8_t *buf = malloc(c->buf_bytes);

	pthread_setname_np(pthread_self(), "cdisk-mover");
	for (;;) {
		struct cd_extent *x;
		size_t n;
		int r;

		pthread_mutex_lock(&c->lock);
		x = take_work(c, &n);
		pthread_mutex_unlock(&c->lock);
		if (!x)
			break;
		r = buf ? move_gated(c, x, n, buf)
			: cd_error(c->d->ctx, -ENOMEM, "'%s': out of memory", c->d->path);
		if (r < 0)
			keep_error(c, r);
	}
	free(buf);
	pthread_mutex_lock(&c->lock);
	c->running--;
	pthread_cond_broadcast(&c->done);
	pthread_mutex_unlock(&c->lock);
	return NULL;
}

static bool movers_running(struct cd_copy *c)
{
	bool running;

	pthread_mutex_lock(&c->lock);
	running = c->running > 0;
	pthread_mutex_unlock(&c->lock);
	return running;
}

/* Until the movers are done: steer the rate, report progress. */
static void watch_movers(struct cd_copy *c)
{
	while (movers_running(c)) {
		struct timespec until;
		uint64_t tick_end = cd_now_ms() + TICK_MS;

		if (c->pinger)
			control_tick(c);
		report_progress(c);
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += (long)(tick_end > cd_now_ms() ? tick_end - cd_now_ms() : 0) *
				 1000000;
		until.tv_sec += until.tv_nsec / 1000000000;
		until.tv_nsec %= 1000000000;
		pthread_mutex_lock(&c->lock);
		if (c->running)
			pthread_cond_timedwait(&c->done, &c->lock, &until);
		pthread_mutex_unlock(&c->lock);
	}
}

static int run_movers(struct cd_copy *c)
{
	unsigned n = c->depth < MAX_DEPTH ? c->depth : MAX_DEPTH;
	pthread_t th[MAX_DEPTH];
	unsigned started = 0;

	for (; started < n; started++) {
		pthread_mutex_lock(&c->lock);
		c->running++;
		pthread_mutex_unlock(&c->lock);
		if (pthread_create(&th[started], NULL, mover, c) != 0) {
			pthread_mutex_lock(&c->lock);
			c->running--;
			pthread_mutex_unlock(&c->lock);
			break;
		}
	}
	if (!started) {
		c->running = 1;
		mover(c);
	}
	watch_movers(c);
	for (unsigned i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	report_progress(c);
	if (c->error)
		cd_error(c->d->ctx, c->error, "%s", c->error_msg);
	return c->error;
}

/* ---- claiming and recording ---- */

/* Mark the batch's set blocks claimed, under the lock, before any of it
 * is read.  The clear blocks joined in between are moved, never recorded. */
static int claim(struct cd_copy *c, size_t from, size_t to)
{
	const struct cd_drain *dr = c->drain;
	struct cdisk *d = c->d;
	int r = 0;

	pthread_mutex_lock(&d->lock);
	for (size_t i = from; i < to && r == 0; i++) {
		uint64_t end = c->ext[i].first + c->ext[i].count;

		for (uint64_t b = cd_bitmap_find(dr->bits, c->ext[i].first, true);
		     b < end && r == 0;) {
			uint64_t stop = cd_bitmap_find(dr->bits, b, false);

			if (stop > end)
				stop = end;
			r = cd_bitmap_assign(dr->claimed, b, stop - b, true);
			b = cd_bitmap_find(dr->bits, stop, true);
		}
	}
	pthread_mutex_unlock(&d->lock);
	return r < 0 ? cd_error(d->ctx, r, "'%s': out of memory", d->path) : 0;
}

/* After the destination's flush: what was moved and not written since is
 * drained, and the record made durable.  Every block of the batch stops
 * being claimed either way. */
static int record(struct cd_copy *c, size_t from, size_t to)
{
	const struct cd_drain *dr = c->drain;
	struct cdisk *d = c->d;
	int r = 0;

	pthread_mutex_lock(&d->lock);
	for (size_t i = from; i < to; i++) {
		struct cd_extent *x = &c->ext[i];

		for (uint64_t b = x->first, end = x->first + x->count; b < end && x->sent;) {
			bool on = cd_bitmap_get(dr->claimed, b);
			uint64_t stop = cd_bitmap_find(dr->claimed, b, !on);

			if (stop > end)
				stop = end;
			if (on && r == 0) {
				r = dr->clear(d, b, stop - b);
				if (r == 0)
					c->st->blocks += stop - b;
			}
			b = stop;
		}
		cd_bitmap_assign(dr->claimed, x->first, x->count, false);
	}
	if (r == 0)
		r = cd_flush_locked(d);
	pthread_mutex_unlock(&d->lock);
	return r;
}

static void release(struct cd_copy *c, size_t from, size_t to)
{
	struct cdisk *d = c->d;

	pthread_mutex_lock(&d->lock);
	for (size_t i = from; i < to; i++)
		cd_bitmap_assign(c->drain->claimed, c->ext[i].first, c->ext[i].count, false);
	pthread_mutex_unlock(&d->lock);
}

/* ---- batches ---- */

/* A fixed batch; or a second of work at the rate the copy is held to, or
 * at the speed the last batch went, the lower; without a limit,
 * BATCH_MIN at least. */
static uint64_t batch_limit(struct cd_copy *c)
{
	uint64_t rate, speed = c->speed;

	if (c->batch_bytes)
		return c->batch_bytes;
	pthread_mutex_lock(&c->lock);
	rate = effective_rate(c);
	pthread_mutex_unlock(&c->lock);
	if (rate)
		return (speed && speed < rate ? speed : rate) * BATCH_MS / 1000;
	if (speed * BATCH_MS / 1000 > BATCH_MIN)
		return speed * BATCH_MS / 1000;
	return BATCH_MIN;
}

/* One batch from ext[from]: claim, move, flush, record.  *next: where the
 * next one begins (a timed batch may close early). */
static int run_batch(struct cd_copy *c, size_t from, size_t *next)
{
	unsigned shift = c->d->block_shift;
	uint64_t limit = batch_limit(c), bytes = 0, sent = c->sent_bytes, ms;
	size_t to = from;
	int r = 0, f;

	while (to < c->n && (to == from || bytes + (c->ext[to].count << shift) <= limit))
		bytes += c->ext[to++].count << shift;
	if (c->drain)
		r = claim(c, from, to);
	if (r < 0)
		return r;
	c->next = c->batch_from = from;
	c->end = to;
	c->batch_ms = cd_now_ms();
	r = run_movers(c);
	*next = c->next;
	/* What was moved before an error is flushed and recorded all the
	 * same: the next run need not move it again.  The extents not taken
	 * were not moved: record only takes their claims off. */
	f = c->ops->flush(c);
	if (f < 0) {
		if (c->drain)
			release(c, from, to);
		return r < 0 ? r : f;
	}
	if (c->drain)
		f = record(c, from, to);
	ms = cd_now_ms() - c->batch_ms;
	c->speed = (c->sent_bytes - sent) * 1000 / (ms ? ms : 1);
	return r < 0 ? r : f;
}

int cd_copy_run(struct cd_copy *c)
{
	int r = 0;

	if (!c->start_ms)
		c->start_ms = cd_now_ms();
	pthread_mutex_init(&c->lock, NULL);
	pthread_cond_init(&c->done, NULL);
	c->tokens_us = cd_now_us();
	start_controller(c);
	for (size_t from = 0; from < c->n && r == 0 && !cd_copy_stopped(c);)
		r = run_batch(c, from, &from);
	c->st->rate_limit = c->pace.rate_limit;
	c->st->slowdowns = c->pace.slowdowns;
	c->st->delay_ms = c->pace.current;
	c->st->base_delay_ms = c->pace.base;
	stop_controller(c);
	pthread_cond_destroy(&c->done);
	pthread_mutex_destroy(&c->lock);
	return r;
}

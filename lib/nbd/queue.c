/* The server's request queue: a scheduler over per-user flows, and one
 * pool of workers.
 *
 * Wake-ups are what a small request costs most, so: a push wakes at most
 * one idle worker per two requests, and never one already woken and not
 * yet running; a worker that finishes a request takes the next without
 * sleeping.  It takes one at a time: any request can block for a base's
 * timeout (a read of a base that hangs), and requests taken along with it
 * would wait that long too, out of the other workers' reach.
 *
 * Fairness is start-time fair queueing over the users with work waiting:
 * each flow's served counter grows by what it was given (bytes plus a
 * fixed cost per request), a flow that comes back from idle starts at the
 * counter of the last one served (no credit for having slept), and the
 * eligible flow with the lowest counter goes next.  Only flows with work
 * are scanned, so the cost per request is the number of busy users, not
 * of all users or connections.
 *
 * Limits never fail a request: a flow whose head a bucket or its queue
 * depth holds back is passed over, and one worker sleeps until the
 * earliest bucket refills (the "timer"); a completion frees depth.
 *
 * The pool is sized for the cores, but a worker waiting on a target (a
 * disk's primary, its mirror, its base: the library tells, through the
 * thread's wait hook) does not count against it while it waits.  While
 * requests wait and no worker is free, one more starts for each worker so
 * waiting, up to the maximum; without that, a disk on a primary 1 ms away
 * would have as many writes in flight as there are workers, whatever the
 * guest's queue depth.  An extra worker leaves once it has carried out
 * nothing for EXTRA_IDLE_S, however often it is woken meanwhile.
 *
 * A worker can be stuck for long: in a read of a base that hangs, or
 * sending to a client that reads no replies.  When nothing has been
 * taken or finished for STALL_MS while requests wait, one more worker
 * starts, up to the maximum; the extra ones leave once idle. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cdisk.h"
#include "ctx.h"
#include "queue.h"
#include "util.h"

#define STALL_MS 300
#define EXTRA_IDLE_S 10
/* What a request costs in fairness beyond its bytes: 4 KiB reads and
 * 1 MiB writes of two users both move. */
#define REQUEST_COST 4096
/* Reads go first, but a waiting write is not passed over more often. */
#define READS_IN_A_ROW 4
#define DEFAULT_BURST_MS 1000
#define NEVER UINT64_MAX
#define CANCEL_POLL_NS 50000000ull
/* Background work runs freely only once the guests have had nothing in
 * the server for this long.  Gaps between a guest's requests are not room
 * to spare: a client at queue depth 1 leaves a round trip between them,
 * and on a machine whose cores the background's copying keeps busy, the
 * guests' own processes get to send less often; measured on 2 cores, a
 * 2 ms window let a sync take 60 of its 64 turns "in gaps" while a fio
 * client ran at 12k IOPS. */
#define GUESTS_QUIET_NS 50000000ull

struct qlist {
	struct cd_qitem *head, *tail;
	unsigned n;
};

struct cd_qflow {
	struct cd_qflow *next_all;
	char *user;
	struct cd_user_limits limits;
	bool overridden;           /* limits set over the control socket */
	struct qlist list[2];      /* CD_REQ_READ, CD_REQ_WRITE; background: list[0] */
	unsigned queued, inflight, connections;
	bool active;               /* in q->active */
	double iops_tokens, byte_tokens;
	uint64_t tokens_ns;
	uint64_t served;           /* fairness counter */
	unsigned reads_in_row;
	uint64_t held_since_ns;    /* its head was held back by a limit since */
	struct cd_io_stats stats;
};

struct cd_queue {
	struct cdisk_ctx *ctx;
	pthread_mutex_t lock;
	pthread_cond_t work;         /* requests wait, or stop */
	pthread_cond_t gone;         /* a worker left */
	pthread_cond_t granted;      /* background work got its turn */
	struct cd_qflow *flows;      /* every user seen */
	struct cd_qflow **active;    /* users with foreground work queued */
	size_t nactive, cap_active;
	uint64_t vnow;               /* served counter of the last flow served */
	struct qlist chores;         /* cd_queue_chore's: before any request */
	struct cd_qflow bg;          /* the engines' work */
	unsigned bg_max;             /* background in hand at most */
	uint64_t bg_rate;            /* its guaranteed bytes per second */
	double bg_tokens;
	uint64_t bg_tokens_ns;
	unsigned fg_busy;            /* foreground queued or in hand */
	unsigned fg_inhand;          /* foreground being carried out */
	uint64_t fg_last_ns;         /* a guest's request last came or went */
	unsigned len;                /* queued, all classes */
	unsigned workers, base, max;
	unsigned remote_busy;        /* workers waiting on a target */
	struct cd_wait_hook wait_hook;   /* the workers' (remote_begin/end) */
	unsigned idle;               /* waiting on work */
	unsigned woken;              /* signalled, not yet running */
	uint64_t run_ns;             /* a quick run, on average (EWMA) */
	unsigned quick_queued;       /* quick items among len */
	uint64_t timer_at;           /* earliest deadline a worker sleeps to; NEVER: none */
	uint64_t moved_ms;           /* last time a request was taken or done */
	bool fifo;                   /* [serve] scheduler = fifo: arrival order only */
	bool draining;               /* the server stops: limits no longer hold */
	bool stop;
};

/* Background tickets: granted by a worker, carried out by their caller. */
struct bg_ticket {
	struct cd_qitem item;
	bool granted;
};

void cd_queue_size(unsigned want, unsigned *workers, unsigned *max)
{
	unsigned n = cd_cpus();

	/* Enough to keep the disk busy while some wait on a flush or on
	 * the base; not so many that they fight for the cores. */
	*workers = want ? want : n * 4 < 8 ? 8 : n * 4 > 64 ? 64 : n * 4;
	*max = *workers * 8 > 256 ? 256 : *workers * 8;
}

static void *worker(void *arg);
static void finished(struct cd_queue *q, struct cd_qflow *f);
static void done_locked(struct cd_queue *q, struct cd_qflow *f);
static void remote_begin(void *arg);
static void remote_end(void *arg);

/* Under q->lock. */
static int start_worker(struct cd_queue *q)
{
	pthread_attr_t a;
	pthread_t t;
	int r;

	pthread_attr_init(&a);
	pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
	/* Requests need little stack; a thousand workers should not need
	 * gigabytes of address space. */
	pthread_attr_setstacksize(&a, 256 * 1024);
	r = -pthread_create(&t, &a, worker, q);
	pthread_attr_destroy(&a);
	if (r == 0)
		q->workers++;
	return r;
}

int cd_queue_new(struct cdisk_ctx *ctx, unsigned workers, unsigned max,
		 struct cd_queue **out)
{
	struct cd_queue *q = calloc(1, sizeof(*q));

	if (!q)
		return cd_error(ctx, -ENOMEM, "out of memory");
	q->ctx = ctx;
	q->base = workers ? workers : 1;
	q->max = max < q->base ? q->base : max;
	q->bg_max = q->base / 2 ? q->base / 2 : 1;
	q->bg_rate = ctx->cfg.background_min_rate;
	q->fifo = ctx->cfg.serve_fifo;
	q->bg.user = (char *)"(background)";
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	/* The timer's deadlines are monotonic: a clock step must not hold
	 * requests back for hours. */
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_mutex_init(&q->lock, NULL);
	pthread_cond_init(&q->work, &ca);
	pthread_cond_init(&q->gone, NULL);
	pthread_cond_init(&q->granted, &ca);
	pthread_condattr_destroy(&ca);
	q->moved_ms = cd_now_ms();
	q->timer_at = NEVER;
	q->wait_hook = (struct cd_wait_hook){ remote_begin, remote_end, q };
	pthread_mutex_lock(&q->lock);
	while (q->workers < q->base && start_worker(q) == 0)
		;
	pthread_mutex_unlock(&q->lock);
	if (!q->workers) {
		cd_queue_free(q);
		return cd_error(ctx, -EAGAIN, "cannot start the server's workers");
	}
	*out = q;
	return 0;
}

void cd_qbatch_add(struct cd_qbatch *b, struct cd_qitem *item)
{
	item->next = NULL;
	if (b->tail)
		b->tail->next = item;
	else
		b->head = item;
	b->tail = item;
	b->n++;
}

static void list_add(struct qlist *l, struct cd_qitem *it)
{
	it->next = NULL;
	if (l->tail)
		l->tail->next = it;
	else
		l->head = it;
	l->tail = it;
	l->n++;
}

static struct cd_qitem *list_take(struct qlist *l)
{
	struct cd_qitem *it = l->head;

	l->head = it->next;
	if (!l->head)
		l->tail = NULL;
	it->next = NULL;
	l->n--;
	return it;
}

/* ---- flows ---- */

/* Under q->lock.  A new flow starts with full buckets; new limits keep
 * what the buckets hold (at most the new burst), so that reconnecting or
 * a reload earns no fresh burst. */
static void set_limits(struct cd_qflow *f, const struct cd_user_limits *l, bool fresh)
{
	struct cd_user_limits want = l ? *l : (struct cd_user_limits){ 0 };
	uint32_t burst = want.burst_ms ? want.burst_ms : DEFAULT_BURST_MS;
	double iops_cap = (double)want.iops * burst / 1000;
	double byte_cap = (double)want.bytes_per_second * burst / 1000;

	if (!fresh && memcmp(&want, &f->limits, sizeof(want)) == 0)
		return;
	if (fresh || !f->limits.iops || f->iops_tokens > iops_cap)
		f->iops_tokens = iops_cap;
	if (fresh || !f->limits.bytes_per_second || f->byte_tokens > byte_cap)
		f->byte_tokens = byte_cap;
	f->limits = want;
	f->tokens_ns = cd_now_ns();
}

/* Under q->lock. */
static struct cd_qflow *find_flow(struct cd_queue *q, const char *user)
{
	for (struct cd_qflow *f = q->flows; f; f = f->next_all)
		if (strcmp(f->user, user) == 0)
			return f;
	return NULL;
}

/* Under q->lock. */
static struct cd_qflow *make_flow(struct cd_queue *q, const char *user)
{
	struct cd_qflow *f = find_flow(q, user);

	if (f)
		return f;
	f = calloc(1, sizeof(*f));
	if (!f || !(f->user = strdup(user))) {
		free(f);
		return NULL;
	}
	set_limits(f, NULL, true);
	f->next_all = q->flows;
	q->flows = f;
	return f;
}

int cd_queue_conn_in(struct cd_queue *q, const char *user,
		     const struct cd_user_limits *file_limits, struct cd_qflow **out,
		     char *why, size_t len)
{
	struct cd_qflow *f;
	int r = 0;

	pthread_mutex_lock(&q->lock);
	f = make_flow(q, user);
	if (!f) {
		r = -ENOMEM;
		snprintf(why, len, "out of memory");
	} else {
		if (!f->overridden && !f->connections)
			set_limits(f, file_limits, false);
		if (f->limits.connections && f->connections >= f->limits.connections) {
			r = -EUSERS;
			snprintf(why, len, "%s has %u connections, as many as its limit allows",
				 user, f->connections);
		} else {
			f->connections++;
			*out = f;
		}
	}
	pthread_mutex_unlock(&q->lock);
	return r;
}

void cd_queue_conn_out(struct cd_queue *q, struct cd_qflow *f)
{
	if (!f)
		return;
	pthread_mutex_lock(&q->lock);
	f->connections--;
	pthread_mutex_unlock(&q->lock);
}

struct cd_io_stats *cd_qflow_stats(struct cd_qflow *f)
{
	return &f->stats;
}

int cd_queue_set_limits(struct cd_queue *q, const char *user, const struct cd_user_limits *l)
{
	struct cd_qflow *f;

	pthread_mutex_lock(&q->lock);
	f = make_flow(q, user);
	if (f) {
		set_limits(f, l, false);
		f->overridden = true;
	}
	pthread_mutex_unlock(&q->lock);
	/* Work a tighter limit held back may now go, and the timer must
	 * look again. */
	pthread_cond_broadcast(&q->work);
	return f ? 0 : cd_error(q->ctx, -ENOMEM, "out of memory");
}

bool cd_queue_limits_of(struct cd_queue *q, const char *user, struct cd_user_limits *out)
{
	struct cd_qflow *f;

	pthread_mutex_lock(&q->lock);
	f = find_flow(q, user);
	if (f && (f->overridden || f->connections))
		*out = f->limits;
	pthread_mutex_unlock(&q->lock);
	return f && (f->overridden || f->connections);
}

void cd_queue_reload_limits(struct cd_queue *q, const struct cd_users *users)
{
	pthread_mutex_lock(&q->lock);
	for (struct cd_qflow *f = q->flows; f; f = f->next_all) {
		const struct cd_user *u = NULL;
		if (strncmp(f->user, "user:", 5) == 0 && users)
			u = cd_users_find(users, f->user + 5);
		set_limits(f, u ? &u->limits : NULL, false);
		f->overridden = false;
	}
	pthread_mutex_unlock(&q->lock);
	pthread_cond_broadcast(&q->work);
}

void cd_queue_set_background_min_rate(struct cd_queue *q, uint64_t bytes_per_second)
{
	pthread_mutex_lock(&q->lock);
	q->bg_rate = bytes_per_second;
	pthread_mutex_unlock(&q->lock);
}

void cd_queue_foreach_user(struct cd_queue *q,
			   void (*fn)(const struct cd_queue_user_view *v, void *arg), void *arg)
{
	struct cd_queue_user_view v;

	if (!q)
		return;
	pthread_mutex_lock(&q->lock);
	for (struct cd_qflow *f = q->flows; f; f = f->next_all) {
		v = (struct cd_queue_user_view){ f->user, &f->stats, f->limits,
						 f->connections, f->queued, f->inflight };
		fn(&v, arg);
	}
	v = (struct cd_queue_user_view){ q->bg.user, &q->bg.stats, { 0 }, 0, q->bg.queued,
					 q->bg.inflight };
	v.limits.bytes_per_second = q->bg_rate;   /* its guaranteed rate */
	fn(&v, arg);
	pthread_mutex_unlock(&q->lock);
}

/* ---- scheduling (all under q->lock) ---- */

static void activate(struct cd_queue *q, struct cd_qflow *f)
{
	if (f->active)
		return;
	if (q->nactive == q->cap_active) {
		size_t cap = q->cap_active ? q->cap_active * 2 : 16;
		struct cd_qflow **v = realloc(q->active, cap * sizeof(*v));
		if (!v)
			abort();   /* a few pointers; nothing sensible to do */
		q->active = v;
		q->cap_active = cap;
	}
	q->active[q->nactive++] = f;
	f->active = true;
	/* No credit for the time it had nothing to do. */
	if (f->served < q->vnow)
		f->served = q->vnow;
}

static void deactivate(struct cd_queue *q, size_t i)
{
	q->active[i]->active = false;
	q->active[i] = q->active[--q->nactive];
}

/* Tokens earned from then to now (nothing if now is not later). */
static void refill(double *tokens, uint64_t rate, uint32_t burst_ms, uint64_t then,
		   uint64_t now)
{
	double cap = (double)rate * (burst_ms ? burst_ms : DEFAULT_BURST_MS) / 1000;

	if (now > then)
		*tokens += (double)rate * (double)(now - then) / 1e9;
	if (*tokens > cap)
		*tokens = cap;
}

/* When a bucket that is in debt is back above zero. */
static uint64_t refilled_at(double tokens, uint64_t rate, uint64_t now)
{
	return now + (uint64_t)ceil((-tokens + 1e-6) * 1e9 / (double)rate);
}

/* May f's head go now?  If not, *when is when it may (NEVER: when one of
 * its requests finishes).  A bucket may go into debt by one request, so
 * a request bigger than the burst still goes, and the rate holds. */
static bool eligible(struct cd_queue *q, struct cd_qflow *f, uint64_t now, uint64_t *when)
{
	const struct cd_user_limits *l = &f->limits;

	if (q->draining)
		return true;
	if (l->queue_depth && f->inflight >= l->queue_depth) {
		*when = NEVER;
		return false;
	}
	if (l->iops || l->bytes_per_second) {
		refill(&f->iops_tokens, l->iops, l->burst_ms, f->tokens_ns, now);
		refill(&f->byte_tokens, l->bytes_per_second, l->burst_ms, f->tokens_ns, now);
		if (now > f->tokens_ns)
			f->tokens_ns = now;
	}
	*when = 0;
	if (l->iops && f->iops_tokens <= 0)
		*when = refilled_at(f->iops_tokens, l->iops, now);
	if (l->bytes_per_second && f->byte_tokens <= 0) {
		uint64_t t = refilled_at(f->byte_tokens, l->bytes_per_second, now);
		if (t > *when)
			*when = t;
	}
	return *when == 0;
}

/* The list f's next request comes from. */
static bool take_read(struct cd_queue *q, struct cd_qflow *f)
{
	struct qlist *r = &f->list[CD_REQ_READ], *w = &f->list[CD_REQ_WRITE];

	if (q->fifo)
		return r->n && (!w->n || r->head->queued_ns <= w->head->queued_ns);
	return r->n && (!w->n || f->reads_in_row < READS_IN_A_ROW);
}

/* A flow whose limits hold back what just came starts counting the wait
 * now, not when a worker next looks (which may be at the refill). */
static void held_from(struct cd_queue *q, struct cd_qflow *f, uint64_t now)
{
	uint64_t when;

	if (!f->held_since_ns && (f->limits.iops || f->limits.bytes_per_second ||
				  f->limits.queue_depth) && !eligible(q, f, now, &when))
		f->held_since_ns = now;
}

static struct cd_qitem *take_from(struct cd_queue *q, struct cd_qflow *f, size_t i,
				  uint64_t now)
{
	struct qlist *r = &f->list[CD_REQ_READ], *w = &f->list[CD_REQ_WRITE];
	struct cd_qitem *it;

	if (take_read(q, f)) {
		it = list_take(r);
		f->reads_in_row++;
	} else {
		it = list_take(w);
		f->reads_in_row = 0;
	}
	f->iops_tokens -= f->limits.iops ? 1 : 0;
	f->byte_tokens -= f->limits.bytes_per_second ? (double)it->bytes : 0;
	/* The fairness clock only goes forward: a flow a limit kept low must
	 * not bring newcomers' start down to it. */
	if (f->served > q->vnow)
		q->vnow = f->served;
	f->served += REQUEST_COST + it->bytes;
	if (f->held_since_ns) {
		cd_io_stats_limit_wait(&f->stats, now - f->held_since_ns);
		f->held_since_ns = 0;
	}
	f->queued--;
	f->inflight++;
	q->fg_inhand++;
	q->len--;
	q->quick_queued -= it->quick;
	if (!f->queued)
		deactivate(q, i);
	else
		held_from(q, f, now);   /* the next one waits from now */
	return it;
}

static bool bg_waiting(struct cd_queue *q)
{
	return q->bg.queued && q->bg.inflight < q->bg_max;
}

static struct cd_qitem *take_bg(struct cd_queue *q, bool guaranteed)
{
	struct bg_ticket *t = (struct bg_ticket *)list_take(&q->bg.list[0]);

	if (guaranteed)
		q->bg_tokens -= (double)t->item.bytes;
	q->bg.queued--;
	q->bg.inflight++;
	q->len--;
	t->granted = true;
	pthread_cond_broadcast(&q->granted);
	return &t->item;
}

/* Background work before the guests only within its guaranteed rate. */
static bool bg_guaranteed(struct cd_queue *q, uint64_t now, uint64_t *wake)
{
	uint64_t t;

	refill(&q->bg_tokens, q->bg_rate, 100, q->bg_tokens_ns, now);
	if (now > q->bg_tokens_ns)
		q->bg_tokens_ns = now;
	if (!q->bg_rate || q->bg_tokens > 0)
		return q->bg_rate != 0;
	t = refilled_at(q->bg_tokens, q->bg_rate, now);
	if (t < *wake)
		*wake = t;
	return false;
}

static uint64_t oldest(const struct cd_qflow *f)
{
	uint64_t r = f->list[CD_REQ_READ].n ? f->list[CD_REQ_READ].head->queued_ns : NEVER;
	uint64_t w = f->list[CD_REQ_WRITE].n ? f->list[CD_REQ_WRITE].head->queued_ns : NEVER;

	return r < w ? r : w;
}

/* May background work have what the guests leave?  Only when they have
 * nothing in hand (what they queued, if anything, a limit holds back) and
 * have been quiet for a moment; if not yet, *wake is when they will have
 * been. */
static bool guests_quiet(struct cd_queue *q, uint64_t now, uint64_t *wake)
{
	if (q->stop)
		return true;
	if (q->fg_inhand)
		return false;
	if (now - q->fg_last_ns >= GUESTS_QUIET_NS)
		return true;
	if (q->fg_last_ns + GUESTS_QUIET_NS < *wake)
		*wake = q->fg_last_ns + GUESTS_QUIET_NS;
	return false;
}

/* The next request to carry out, or NULL with *wake the time a limit
 * lets one go (NEVER: none waits, or only for a completion).  A
 * background ticket comes back granted: there is nothing to run. */
static struct cd_qitem *pick(struct cd_queue *q, uint64_t now, uint64_t *wake)
{
	struct cd_qflow *best = NULL;
	size_t best_i = 0;

	*wake = NEVER;
	if (!q->len)
		return NULL;
	if (bg_waiting(q) && !q->fg_busy && guests_quiet(q, now, wake))
		return take_bg(q, false);
	if (bg_waiting(q) && bg_guaranteed(q, now, wake))
		return take_bg(q, true);
	for (size_t i = 0; i < q->nactive; i++) {
		struct cd_qflow *f = q->active[i];
		uint64_t when;
		if (!eligible(q, f, now, &when)) {
			if (!f->held_since_ns)
				f->held_since_ns = now;
			if (when < *wake)
				*wake = when;
			continue;
		}
		if (!best || (q->fifo ? oldest(f) < oldest(best) : f->served < best->served)) {
			best = f;
			best_i = i;
		}
	}
	if (best)
		return take_from(q, best, best_i, now);
	/* What the guests queued is all held back by limits: background
	 * need not wait for it. */
	if (bg_waiting(q) && guests_quiet(q, now, wake))
		return take_bg(q, false);
	return NULL;
}

/* Under q->lock. */
static void grow_if_stuck(struct cd_queue *q)
{
	if (q->len && !q->idle && q->workers < q->max &&
	    cd_now_ms() - q->moved_ms >= STALL_MS) {
		start_worker(q);
		/* One more per STALL_MS, not one per push. */
		q->moved_ms = cd_now_ms();
	}
}

/* Under q->lock: more workers while requests wait with no worker free
 * to take them and some workers wait on the network (see the top). */
static void grow_for_remote(struct cd_queue *q)
{
	unsigned started = 0;

	while (q->remote_busy && q->len > q->idle + started && q->workers < q->max &&
	       q->workers < q->base + q->remote_busy && start_worker(q) == 0)
		started++;
}

static void remote_begin(void *arg)
{
	struct cd_queue *q = arg;

	pthread_mutex_lock(&q->lock);
	q->remote_busy++;
	grow_for_remote(q);
	pthread_mutex_unlock(&q->lock);
}

static void remote_end(void *arg)
{
	struct cd_queue *q = arg;

	pthread_mutex_lock(&q->lock);
	q->remote_busy--;
	pthread_mutex_unlock(&q->lock);
}

/*
 * Waking a worker costs more than a local 4 KiB write (a context switch
 * and, on a virtual machine, an interrupt between cores: 10 to 30 us
 * against 5).  Work is shared out only when the queued requests would
 * take one worker longer than that, by the runs' average; otherwise the
 * worker that is woken, or that took one, carries the rest after it.
 */
#define WAKE_COST_NS 50000u

static bool worth_sharing(const struct cd_queue *q, unsigned quick, unsigned n)
{
	return quick < n || (uint64_t)n * q->run_ns >= WAKE_COST_NS;
}

/* Under q->lock: guests' work waits and no worker took anything for
 * HELD_UP_MS: the one carrying quick work is held up (a write the
 * kernel throttles, a file system that hangs), so what waits is shared
 * out whatever it is: at the next push, or at the next tick. */
#define HELD_UP_MS 2
#define TICK_BUSY_MS 5

static bool carrier_held_up(const struct cd_queue *q, uint64_t now_ms)
{
	return q->len > q->bg.queued && now_ms >= q->moved_ms + HELD_UP_MS;
}

static void count_run(struct cd_queue *q, uint64_t ns)
{
	q->run_ns = q->run_ns + ns / 8 - q->run_ns / 8;
}

/* Under q->lock: how many idle workers to wake for n new requests, now
 * counted as woken.  The caller signals them after unlocking: a worker
 * woken while the lock is held would only wake to wait for it. */
static unsigned to_wake(struct cd_queue *q, unsigned quick, unsigned n)
{
	unsigned wake;

	if (q->idle <= q->woken)
		return 0;
	wake = worth_sharing(q, quick, n) ? (n + 1) / 2 : 1;
	if (wake > q->idle - q->woken)
		wake = q->idle - q->woken;
	q->woken += wake;
	return wake;
}

static void signal_workers(struct cd_queue *q, unsigned n)
{
	while (n--)
		pthread_cond_signal(&q->work);
}

void cd_queue_push(struct cd_queue *q, struct cd_qbatch *b)
{
	uint64_t now;
	unsigned n, quick = 0;

	if (!b->n)
		return;
	pthread_mutex_lock(&q->lock);
	/* Under the lock: a bucket's clock never runs backwards. */
	now = cd_now_ns();
	bool held_up = carrier_held_up(q, now / 1000000);
	for (struct cd_qitem *it = b->head, *next; it; it = next) {
		struct cd_qflow *f = it->flow;
		next = it->next;
		it->queued_ns = now;
		list_add(&f->list[it->cls == CD_REQ_READ ? CD_REQ_READ : CD_REQ_WRITE], it);
		f->queued++;
		quick += it->quick;
		cd_io_stats_depth(&f->stats, 1);
		activate(q, f);
		held_from(q, f, now);
	}
	q->len += b->n;
	q->quick_queued += quick;
	q->fg_busy += b->n;
	q->fg_last_ns = now;
	n = to_wake(q, held_up ? 0 : quick, b->n);
	grow_for_remote(q);
	grow_if_stuck(q);
	pthread_mutex_unlock(&q->lock);
	signal_workers(q, n);
	*b = (struct cd_qbatch){ 0 };
}

void cd_queue_chore(struct cd_queue *q, struct cd_qitem *it)
{
	bool wake = false;

	pthread_mutex_lock(&q->lock);
	list_add(&q->chores, it);
	/* Woken workers take chores first; a new one only when every
	 * worker is carrying something out. */
	if (q->idle > q->woken) {
		q->woken++;
		wake = true;
	} else if (!q->idle && q->workers < q->max) {
		start_worker(q);
	}
	pthread_mutex_unlock(&q->lock);
	if (wake)
		pthread_cond_signal(&q->work);
}

/* Under q->lock: it is in hand, as a worker's would be. */
static void in_hand_locked(struct cd_queue *q, struct cd_qitem *it)
{
	struct cd_qflow *f = it->flow;
	uint64_t now = cd_now_ns();

	/* Stamped when it came (nbd-conn.c), or now: its latency counts
	 * its wait behind what the caller did first. */
	if (!it->queued_ns)
		it->queued_ns = now;
	if (f->served < q->vnow)
		f->served = q->vnow;
	f->served += REQUEST_COST + it->bytes;
	f->inflight++;
	cd_io_stats_depth(&f->stats, 1);
	q->fg_busy++;
	q->fg_inhand++;
	q->fg_last_ns = now;
}

/* Under q->lock: in_hand_locked undone, for an item that declined. */
static void not_in_hand_locked(struct cd_queue *q, struct cd_qitem *it)
{
	struct cd_qflow *f = it->flow;

	f->served -= REQUEST_COST + it->bytes;
	f->inflight--;
	cd_io_stats_depth(&f->stats, -1);
	q->fg_busy--;
	q->fg_inhand--;
}

bool cd_queue_run_here(struct cd_queue *q, struct cd_qitem *it,
		       bool (*try_run)(struct cd_qitem *it))
{
	struct cd_qflow *f = it->flow;   /* it is gone once done */
	const struct cd_user_limits *l = &f->limits;
	unsigned wake = 0;
	bool done;

	pthread_mutex_lock(&q->lock);
	/* Only when nothing waits but this flow's own work (the rest of
	 * the caller's batch, pushed just before) and background work, and
	 * no limit of its user could hold it.  Background work keeps its
	 * guaranteed rate: that is spent by the workers, whom the caller
	 * does not take, and the guests count as busy meanwhile. */
	if (q->len != f->queued + q->bg.queued || q->fifo || q->draining || l->iops ||
	    l->bytes_per_second || l->queue_depth) {
		pthread_mutex_unlock(&q->lock);
		return false;
	}
	in_hand_locked(q, it);
	pthread_mutex_unlock(&q->lock);
	done = try_run(it);
	pthread_mutex_lock(&q->lock);
	if (done) {
		/* Not finished(): the reader's progress is no worker's, and
		 * must not hide workers that are stuck (grow_if_stuck). */
		done_locked(q, f);
		/* Background work waiting for the guests to be quiet: no
		 * worker finished anything to look again, so one must keep
		 * the time, unless one keeps it already (and wakes in time
		 * to look again): not a wake-up for every request. */
		if (q->bg.queued && !q->fg_inhand && q->idle > q->woken &&
		    q->timer_at > q->fg_last_ns + GUESTS_QUIET_NS) {
			q->woken++;
			wake = 1;
		}
	} else {
		not_in_hand_locked(q, it);
	}
	pthread_mutex_unlock(&q->lock);
	signal_workers(q, wake);
	return done;
}


int cd_queue_tick(struct cd_queue *q)
{
	uint64_t now_ms = cd_now_ms();
	unsigned wake = 0;
	bool busy;

	pthread_mutex_lock(&q->lock);
	if (carrier_held_up(q, now_ms) && q->idle > q->woken) {
		wake = q->len < q->idle - q->woken ? q->len : q->idle - q->woken;
		q->woken += wake;
	}
	/* A ticket waits and nobody keeps its time: the worker that kept
	 * it was woken for a guest's request and is carrying that out (one
	 * that waits on a hung base, say), and the others sleep untimed. */
	if (!wake && bg_waiting(q) && q->timer_at == NEVER && q->idle > q->woken) {
		wake = 1;
		q->woken++;
	}
	grow_if_stuck(q);
	busy = q->fg_busy || now_ms < q->fg_last_ns / 1000000 + 1000;
	pthread_mutex_unlock(&q->lock);
	signal_workers(q, wake);
	return busy ? TICK_BUSY_MS : -1;
}

unsigned cd_queue_workers(struct cd_queue *q)
{
	pthread_mutex_lock(&q->lock);
	unsigned n = q->workers;
	pthread_mutex_unlock(&q->lock);
	return n;
}

bool cd_queue_background_idle(struct cd_queue *q)
{
	bool idle;

	pthread_mutex_lock(&q->lock);
	idle = !q->bg.inflight;
	pthread_mutex_unlock(&q->lock);
	return idle;
}

/* Under q->lock: a ticket given up takes no turn. */
static void withdraw(struct cd_queue *q, struct cd_qitem *it)
{
	struct qlist *l = &q->bg.list[0];
	struct cd_qitem **pp = &l->head, *prev = NULL;

	while (*pp != it) {
		prev = *pp;
		pp = &(*pp)->next;
	}
	*pp = it->next;
	if (l->tail == it)
		l->tail = prev;
	l->n--;
	q->bg.queued--;
	q->len--;
	cd_io_stats_depth(&q->bg.stats, -1);
}

int cd_queue_background_begin(struct cd_queue *q, uint64_t bytes, uint64_t *t0,
			      bool (*cancelled)(void *arg), void *arg)
{
	struct bg_ticket t = { .item = { .cls = CD_REQ_BACKGROUND, .flow = &q->bg,
					 .bytes = bytes } };
	int r = 0;

	*t0 = cd_now_ns();
	pthread_mutex_lock(&q->lock);
	if (q->fifo) {
		/* No scheduling: the engines go as they did before there was
		 * one (counted all the same). */
		q->bg.inflight++;
		cd_io_stats_depth(&q->bg.stats, 1);
		pthread_mutex_unlock(&q->lock);
		return 0;
	}
	t.item.queued_ns = *t0;
	list_add(&q->bg.list[0], &t.item);
	q->bg.queued++;
	q->len++;
	cd_io_stats_depth(&q->bg.stats, 1);
	signal_workers(q, to_wake(q, 0, 1));
	grow_if_stuck(q);
	while (!t.granted) {
		/* A stopped copy (--max-time, sync-stop) must not wait for
		 * turns at the guaranteed rate it no longer needs. */
		uint64_t at = cd_now_ns() + CANCEL_POLL_NS;
		struct timespec ts = { (time_t)(at / 1000000000ull), (long)(at % 1000000000ull) };
		pthread_cond_timedwait(&q->granted, &q->lock, &ts);
		if (!t.granted && cancelled && cancelled(arg)) {
			withdraw(q, &t.item);
			r = -ECANCELED;
			break;
		}
	}
	pthread_mutex_unlock(&q->lock);
	return r;
}

void cd_queue_background_end(struct cd_queue *q, uint64_t bytes, int err, uint64_t t0)
{
	cd_io_stats_record(&q->bg.stats, CD_STAT_BACKGROUND, bytes, err, cd_now_ns() - t0);
	cd_io_stats_depth(&q->bg.stats, -1);
	pthread_mutex_lock(&q->lock);
	q->bg.inflight--;
	q->moved_ms = cd_now_ms();
	bool waiting = q->bg.queued != 0;
	pthread_mutex_unlock(&q->lock);
	/* A background slot is free: a worker may give it. */
	if (waiting)
		pthread_cond_signal(&q->work);
}

/* Under q->lock: sleep until there may be work.  A worker whose deadline
 * (a limit's refill, the guests' quiet time) is earlier than any other
 * worker sleeps to keeps time; the others wait for a signal.  False when
 * this worker should leave: an extra one that has carried nothing out
 * since busy_ns plus EXTRA_IDLE_S (a wake-up that finds nothing to do
 * does not count, or taking turns, they would all stay). */
static bool wait_for_work(struct cd_queue *q, uint64_t wake, uint64_t busy_ns)
{
	uint64_t leave_at = busy_ns + EXTRA_IDLE_S * 1000000000ull;
	struct timespec ts;
	bool timer = false;
	int r = 0;

	if (q->stop && !q->len && !q->chores.n)
		return false;
	if (q->workers > q->base && !q->len && !q->chores.n && cd_now_ns() >= leave_at)
		return false;
	q->idle++;
	if (wake != NEVER && wake < q->timer_at) {
		q->timer_at = wake;
		timer = true;
		ts.tv_sec = (time_t)(wake / 1000000000ull);
		ts.tv_nsec = (long)(wake % 1000000000ull);
		r = pthread_cond_timedwait(&q->work, &q->lock, &ts);
		/* Whoever keeps an earlier time set it; ours is done. */
		if (q->timer_at == wake)
			q->timer_at = NEVER;
	} else if (q->workers > q->base) {
		ts.tv_sec = (time_t)(leave_at / 1000000000ull);
		ts.tv_nsec = (long)(leave_at % 1000000000ull);
		r = pthread_cond_timedwait(&q->work, &q->lock, &ts);
	} else {
		pthread_cond_wait(&q->work, &q->lock);
	}
	q->idle--;
	if (q->woken)
		q->woken--;
	return !(r == ETIMEDOUT && !timer && !q->len && !q->chores.n && q->workers > q->base);
}

static void done_locked(struct cd_queue *q, struct cd_qflow *f)
{
	f->inflight--;
	q->fg_busy--;
	q->fg_inhand--;
	q->fg_last_ns = cd_now_ns();
	cd_io_stats_depth(&f->stats, -1);
}

static void finished(struct cd_queue *q, struct cd_qflow *f)
{
	done_locked(q, f);
	q->moved_ms = q->fg_last_ns / 1000000;
}

static void *worker(void *arg)
{
	struct cd_queue *q = arg;
	uint64_t wake, busy_ns = cd_now_ns();

	/* For top -H, ps -L and perf, and the tests that count switches. */
	pthread_setname_np(pthread_self(), "cdisk-worker");

	cd_wait_hook_set(&q->wait_hook);
	pthread_mutex_lock(&q->lock);
	for (;;) {
		uint64_t now = cd_now_ns();
		struct cd_qitem *it;

		if (q->chores.n) {
			it = list_take(&q->chores);
			pthread_mutex_unlock(&q->lock);
			it->run(it);
			pthread_mutex_lock(&q->lock);
			continue;
		}
		it = pick(q, now, &wake);
		if (!it) {
			if (!wait_for_work(q, wake, busy_ns))
				break;
			continue;
		}
		q->moved_ms = now / 1000000;
		/* More of the guests' work may be waiting and nobody is
		 * coming, and it is worth a wake-up.  Not for background
		 * tickets: one that may go now was just granted, and the
		 * others wait for a time that the timer keeps, or, if it is
		 * busy, the tick wakes one to keep it (woken for them, every
		 * worker woke the next one for nothing: twice the context
		 * switches beside a sync). */
		unsigned guests = q->len - q->bg.queued;
		unsigned more = guests && q->idle > q->woken &&
				(!it->quick || worth_sharing(q, q->quick_queued, guests));
		q->woken += more;
		if (it->cls == CD_REQ_BACKGROUND) {
			signal_workers(q, more);
			continue;   /* granted: its caller carries it out */
		}
		struct cd_qflow *f = it->flow;
		bool quick = it->quick;   /* it is gone once run */
		pthread_mutex_unlock(&q->lock);
		signal_workers(q, more);
		it->run(it);
		pthread_mutex_lock(&q->lock);
		finished(q, f);
		if (quick)
			count_run(q, q->fg_last_ns - now);
		busy_ns = q->fg_last_ns;   /* finished's clock */
	}
	q->workers--;
	pthread_cond_broadcast(&q->gone);
	pthread_mutex_unlock(&q->lock);
	return NULL;
}

void cd_queue_drain(struct cd_queue *q)
{
	if (!q)
		return;
	pthread_mutex_lock(&q->lock);
	q->draining = true;
	pthread_mutex_unlock(&q->lock);
	pthread_cond_broadcast(&q->work);
}

void cd_queue_free(struct cd_queue *q)
{
	if (!q)
		return;
	pthread_mutex_lock(&q->lock);
	q->draining = true;
	q->stop = true;
	pthread_cond_broadcast(&q->work);
	while (q->workers)
		pthread_cond_wait(&q->gone, &q->lock);
	pthread_mutex_unlock(&q->lock);
	for (struct cd_qflow *f = q->flows, *next; f; f = next) {
		next = f->next_all;
		free(f->user);
		free(f);
	}
	free(q->active);
	pthread_cond_destroy(&q->work);
	pthread_cond_destroy(&q->gone);
	pthread_cond_destroy(&q->granted);
	pthread_mutex_destroy(&q->lock);
	free(q);
}

/* The server's request queue: one list, one pool of workers.
 *
 * Wake-ups are what a small request costs most, so: a push wakes at most
 * one idle worker per two requests, and never one already woken and not
 * yet running; a worker that finishes a request takes the next without
 * sleeping.  It takes one at a time: any request can block for a base's
 * timeout (a read of a base that hangs), and requests taken along with it
 * would wait that long too, out of the other workers' reach.
 *
 * A worker can be stuck for long: in a read of a base that hangs, or
 * sending to a client that reads no replies.  When nothing has been
 * taken or finished for STALL_MS while requests wait, one more worker
 * starts, up to the maximum; the extra ones leave once idle. */
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "cdisk.h"
#include "ctx.h"
#include "queue.h"
#include "util.h"

#define STALL_MS 300
#define EXTRA_IDLE_S 10

struct cd_queue {
	struct cdisk_ctx *ctx;
	pthread_mutex_t lock;
	pthread_cond_t work;         /* requests wait, or stop */
	pthread_cond_t gone;         /* a worker left */
	struct cd_qitem *head, *tail;
	unsigned len;
	unsigned workers, base, max;
	unsigned idle;               /* waiting on work */
	unsigned woken;              /* signalled, not yet running */
	uint64_t moved_ms;           /* last time a request was taken or done */
	bool stop;
};

void cd_queue_default_size(unsigned *workers, unsigned *max)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	if (n < 1)
		n = 1;
	/* Enough to keep the disk busy while some wait on a flush or on
	 * the base; not so many that they fight for the cores. */
	*workers = n * 4 < 8 ? 8 : n * 4 > 64 ? 64 : (unsigned)n * 4;
	*max = *workers * 8 > 256 ? 256 : *workers * 8;
}

static void *worker(void *arg);

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
	pthread_mutex_init(&q->lock, NULL);
	pthread_cond_init(&q->work, NULL);
	pthread_cond_init(&q->gone, NULL);
	q->moved_ms = cd_now_ms();
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

void cd_queue_push(struct cd_queue *q, struct cd_qbatch *b)
{
	unsigned wake = 0;

	if (!b->n)
		return;
	pthread_mutex_lock(&q->lock);
	if (q->tail)
		q->tail->next = b->head;
	else
		q->head = b->head;
	q->tail = b->tail;
	q->len += b->n;
	if (q->idle > q->woken) {
		wake = (b->n + 1) / 2;
		if (wake > q->idle - q->woken)
			wake = q->idle - q->woken;
		q->woken += wake;
	}
	grow_if_stuck(q);
	pthread_mutex_unlock(&q->lock);
	while (wake--)
		pthread_cond_signal(&q->work);
	*b = (struct cd_qbatch){ 0 };
}

void cd_queue_tick(struct cd_queue *q)
{
	pthread_mutex_lock(&q->lock);
	grow_if_stuck(q);
	pthread_mutex_unlock(&q->lock);
}

unsigned cd_queue_workers(struct cd_queue *q)
{
	pthread_mutex_lock(&q->lock);
	unsigned n = q->workers;
	pthread_mutex_unlock(&q->lock);
	return n;
}

/* Under q->lock: wait for work.  False when this worker should leave. */
static bool wait_for_work(struct cd_queue *q)
{
	while (!q->len) {
		int r = 0;

		if (q->stop)
			return false;
		q->idle++;
		if (q->workers > q->base) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_sec += EXTRA_IDLE_S;
			r = pthread_cond_timedwait(&q->work, &q->lock, &ts);
		} else {
			pthread_cond_wait(&q->work, &q->lock);
		}
		q->idle--;
		if (q->woken)
			q->woken--;
		if (r == ETIMEDOUT && !q->len && q->workers > q->base)
			return false;
	}
	return true;
}

/* Under q->lock: the request that waited longest. */
static struct cd_qitem *take(struct cd_queue *q)
{
	struct cd_qitem *first = q->head;

	q->head = first->next;
	if (!q->head)
		q->tail = NULL;
	first->next = NULL;
	q->len--;
	q->moved_ms = cd_now_ms();
	return first;
}

static void *worker(void *arg)
{
	struct cd_queue *q = arg;

	pthread_mutex_lock(&q->lock);
	while (wait_for_work(q)) {
		struct cd_qitem *it = take(q);
		/* More waits and nobody is coming. */
		if (q->len && q->idle > q->woken) {
			q->woken++;
			pthread_cond_signal(&q->work);
		}
		pthread_mutex_unlock(&q->lock);
		it->run(it);
		pthread_mutex_lock(&q->lock);
		q->moved_ms = cd_now_ms();
	}
	q->workers--;
	pthread_cond_broadcast(&q->gone);
	pthread_mutex_unlock(&q->lock);
	return NULL;
}

void cd_queue_free(struct cd_queue *q)
{
	if (!q)
		return;
	pthread_mutex_lock(&q->lock);
	q->stop = true;
	pthread_cond_broadcast(&q->work);
	while (q->workers)
		pthread_cond_wait(&q->gone, &q->lock);
	pthread_mutex_unlock(&q->lock);
	pthread_cond_destroy(&q->work);
	pthread_cond_destroy(&q->gone);
	pthread_mutex_destroy(&q->lock);
	free(q);
}

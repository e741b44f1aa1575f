/* Unit tests for the server's scheduler: the order in which one worker
 * takes what several users queued while it was busy (reads before
 * writes, users in turn, background work last but for its guaranteed
 * share), and the limits (queue depth, IOPS, connections) holding
 * requests back without failing any. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "ctx.h"
#include "queue.h"
#include "util.h"

struct item {
	struct cd_qitem q;
	char name[8];
};

/* What ran, in order; the blocker holds the only worker until released. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static char order[512];
static unsigned ran, running, most_running;
static bool released, blocking;
static unsigned nap_us;

static void run_item(struct cd_qitem *qi)
{
	struct item *it = (struct item *)qi;

	pthread_mutex_lock(&lock);
	running++;
	if (running > most_running)
		most_running = running;
	pthread_mutex_unlock(&lock);
	if (nap_us)
		usleep(nap_us);
	pthread_mutex_lock(&lock);
	running--;
	ran++;
	if (strlen(order) + strlen(it->name) + 2 < sizeof(order)) {
		strcat(order, order[0] ? " " : "");
		strcat(order, it->name);
	}
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&lock);
	free(it);
}

static void run_blocker(struct cd_qitem *qi)
{
	pthread_mutex_lock(&lock);
	blocking = true;
	pthread_cond_broadcast(&cond);
	while (!released)
		pthread_cond_wait(&cond, &lock);
	pthread_mutex_unlock(&lock);
	free(qi);
}

static struct cd_qitem *make(struct cd_qflow *f, enum cd_req_class cls, const char *name,
			     uint64_t bytes)
{
	struct item *it = calloc(1, sizeof(*it));

	it->q.cls = cls;
	it->q.flow = f;
	it->q.bytes = bytes;
	it->q.run = run_item;
	snprintf(it->name, sizeof(it->name), "%s", name);
	return &it->q;
}

static void push1(struct cd_queue *q, struct cd_qitem *it)
{
	struct cd_qbatch b = { 0 };

	cd_qbatch_add(&b, it);
	cd_queue_push(q, &b);
}

/* Occupy the worker: everything pushed until unblock() waits. */
static void block(struct cd_queue *q, struct cd_qflow *f)
{
	struct cd_qitem *b = calloc(1, sizeof(*b));

	pthread_mutex_lock(&lock);
	order[0] = 0;
	ran = running = most_running = 0;
	released = blocking = false;
	pthread_mutex_unlock(&lock);
	b->cls = CD_REQ_WRITE;
	b->flow = f;
	b->run = run_blocker;
	push1(q, b);
	pthread_mutex_lock(&lock);
	while (!blocking)
		pthread_cond_wait(&cond, &lock);
	pthread_mutex_unlock(&lock);
}

static void unblock(void)
{
	pthread_mutex_lock(&lock);
	released = true;
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&lock);
}

static void wait_ran(unsigned n)
{
	pthread_mutex_lock(&lock);
	while (ran < n)
		pthread_cond_wait(&cond, &lock);
	pthread_mutex_unlock(&lock);
}

struct fixture {
	struct cdisk_ctx *ctx;
	struct cd_queue *q;
	struct cd_qflow *a, *b, *c;
};

static struct fixture setup(unsigned workers, const struct cd_user_limits *la)
{
	struct fixture f = { 0 };
	char why[128];

	f.ctx = cdisk_ctx_new();
	assert_non_null(f.ctx);
	assert_int_equal(cd_queue_new(f.ctx, workers, workers, &f.q), 0);
	assert_int_equal(cd_queue_conn_in(f.q, "user:a", la, &f.a, why, sizeof(why)), 0);
	assert_int_equal(cd_queue_conn_in(f.q, "user:b", NULL, &f.b, why, sizeof(why)), 0);
	assert_int_equal(cd_queue_conn_in(f.q, "user:c", NULL, &f.c, why, sizeof(why)), 0);
	return f;
}

static void teardown(struct fixture *f)
{
	cd_queue_free(f->q);
	cdisk_ctx_free(f->ctx);
}

static void test_reads_before_writes(void **state)
{
	struct fixture f = setup(1, NULL);
	struct cd_qbatch b = { 0 };
	const char *names[] = { "w1", "w2", "r1", "r2", "r3", "r4", "r5", "r6" };

	(void)state;
	block(f.q, f.c);
	for (size_t i = 0; i < 8; i++)
		cd_qbatch_add(&b, make(f.a, names[i][0] == 'r' ? CD_REQ_READ : CD_REQ_WRITE,
				       names[i], 4096));
	cd_queue_push(f.q, &b);
	unblock();
	wait_ran(8);
	/* Four reads, then the write that waited longest: writes are not
	 * starved by a stream of reads. */
	assert_string_equal(order, "r1 r2 r3 r4 w1 r5 r6 w2");
	teardown(&f);
}

static void test_users_take_turns(void **state)
{
	struct fixture f = setup(1, NULL);
	struct cd_qbatch b = { 0 };
	char name[8];

	(void)state;
	block(f.q, f.c);
	/* a queues ten first, then b two: b need not wait for a's ten. */
	for (int i = 1; i <= 10; i++) {
		snprintf(name, sizeof(name), "a%d", i);
		cd_qbatch_add(&b, make(f.a, CD_REQ_WRITE, name, 65536));
	}
	cd_queue_push(f.q, &b);
	push1(f.q, make(f.b, CD_REQ_WRITE, "b1", 65536));
	push1(f.q, make(f.b, CD_REQ_WRITE, "b2", 65536));
	unblock();
	wait_ran(12);
	assert_string_equal(order, "a1 b1 a2 b2 a3 a4 a5 a6 a7 a8 a9 a10");
	teardown(&f);
}

static void test_fair_by_bytes(void **state)
{
	struct fixture f = setup(1, NULL);
	struct cd_qbatch b = { 0 };
	char name[8];

	(void)state;
	block(f.q, f.c);
	/* a's requests are 1 MiB, b's 4 KiB: b gets many for each of a's. */
	for (int i = 1; i <= 3; i++) {
		snprintf(name, sizeof(name), "A%d", i);
		cd_qbatch_add(&b, make(f.a, CD_REQ_WRITE, name, 1 << 20));
	}
	cd_queue_push(f.q, &b);
	for (int i = 1; i <= 40; i++) {
		snprintf(name, sizeof(name), "b%d", i);
		cd_qbatch_add(&b, make(f.b, CD_REQ_WRITE, name, 4096));
	}
	cd_queue_push(f.q, &b);
	unblock();
	wait_ran(43);
	/* After A1 (both started even), b earns 1 MiB + 4 KiB of turns,
	 * about 128 of its requests, before a's next: all 40 go first. */
	assert_non_null(strstr(order, "A1 b1 b2"));
	assert_non_null(strstr(order, "b40 A2 A3"));
	teardown(&f);
}

struct bg_arg {
	struct cd_queue *q;
};

static void *background(void *arg)
{
	struct bg_arg *a = arg;
	uint64_t t0;

	assert_int_equal(cd_queue_background_begin(a->q, 65536, &t0, NULL, NULL), 0);
	pthread_mutex_lock(&lock);
	if (strlen(order) + 4 < sizeof(order))
		strcat(order, order[0] ? " bg" : "bg");
	ran++;
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&lock);
	cd_queue_background_end(a->q, 65536, 0, t0);
	return NULL;
}

static unsigned bg_queued(struct cd_queue *q);

static void count_bg(const struct cd_queue_user_view *v, void *arg)
{
	if (strcmp(v->user, "(background)") == 0)
		*(unsigned *)arg = v->queued;
}

static unsigned bg_queued(struct cd_queue *q)
{
	unsigned n = 0;

	cd_queue_foreach_user(q, count_bg, &n);
	return n;
}

static void test_background_after_guests(void **state)
{
	struct fixture f = setup(1, NULL);
	struct bg_arg arg = { f.q };
	pthread_t th[2];

	(void)state;
	/* A guaranteed rate of 1 byte/s: the first ticket may go before the
	 * guests (it finds the bucket's first crumb), the second may not. */
	cd_queue_set_background_min_rate(f.q, 1);
	block(f.q, f.c);
	push1(f.q, make(f.a, CD_REQ_WRITE, "a1", 4096));
	for (int i = 0; i < 2; i++)
		pthread_create(&th[i], NULL, background, &arg);
	while (bg_queued(f.q) < 2)
		usleep(1000);
	push1(f.q, make(f.b, CD_REQ_READ, "b1", 4096));
	push1(f.q, make(f.a, CD_REQ_WRITE, "a2", 4096));
	/* A granted ticket's thread writes its name while a1 runs. */
	nap_us = 100000;
	unblock();
	wait_ran(5);
	nap_us = 0;
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	assert_string_equal(order, "bg a1 b1 a2 bg");
	teardown(&f);
}

static bool always(void *arg)
{
	(void)arg;
	return true;
}

static void test_background_cancelled(void **state)
{
	struct fixture f = setup(1, NULL);
	uint64_t t0;

	(void)state;
	block(f.q, f.c);
	push1(f.q, make(f.a, CD_REQ_WRITE, "a1", 4096));
	/* The only worker is busy: no turn comes, and the ticket given up
	 * leaves nothing behind in the queue. */
	assert_int_equal(cd_queue_background_begin(f.q, 65536, &t0, always, NULL),
			 -ECANCELED);
	assert_int_equal(bg_queued(f.q), 0);
	unblock();
	wait_ran(1);
	assert_string_equal(order, "a1");
	teardown(&f);
}

static void test_queue_depth(void **state)
{
	struct cd_user_limits l = { .queue_depth = 1 };
	struct fixture f = setup(4, &l);
	struct cd_qbatch b = { 0 };

	(void)state;
	pthread_mutex_lock(&lock);
	order[0] = 0;
	ran = running = most_running = 0;
	nap_us = 2000;
	pthread_mutex_unlock(&lock);
	for (int i = 0; i < 20; i++)
		cd_qbatch_add(&b, make(f.a, CD_REQ_WRITE, "a", 4096));
	cd_queue_push(f.q, &b);
	wait_ran(20);
	/* Four workers, but a may have one request in hand at a time. */
	assert_int_equal(most_running, 1);
	nap_us = 0;
	teardown(&f);
}

static void test_iops_limit(void **state)
{
	struct cd_user_limits l = { .iops = 100, .burst_ms = 100 };
	struct fixture f = setup(4, &l);
	struct cd_qbatch b = { 0 };
	uint64_t t0;

	(void)state;
	pthread_mutex_lock(&lock);
	order[0] = 0;
	ran = 0;
	pthread_mutex_unlock(&lock);
	t0 = cd_now_ms();
	for (int i = 0; i < 40; i++)
		cd_qbatch_add(&b, make(f.a, CD_REQ_READ, "a", 4096));
	cd_queue_push(f.q, &b);
	/* Another user is not held back by a's limit. */
	for (int i = 0; i < 10; i++)
		cd_qbatch_add(&b, make(f.b, CD_REQ_READ, "b", 4096));
	cd_queue_push(f.q, &b);
	wait_ran(50);
	/* 40 at 100/s with a burst of 10: 0.3 s at least; every one ran. */
	assert_true(cd_now_ms() - t0 >= 290);
	assert_int_equal(ran, 50);
	teardown(&f);
}

static void reset(void)
{
	pthread_mutex_lock(&lock);
	order[0] = 0;
	ran = 0;
	pthread_mutex_unlock(&lock);
}

static void test_reconnect_no_fresh_burst(void **state)
{
	struct cd_user_limits l = { .iops = 10 };
	struct fixture f = setup(2, &l);
	struct cd_qflow *again = NULL;
	struct cd_qbatch b = { 0 };
	char why[128];
	uint64_t t0;

	(void)state;
	reset();
	/* Timed from the first push: however slowly a loaded machine runs
	 * the burst, the refill it gets meanwhile is counted. */
	t0 = cd_now_ms();
	for (int i = 0; i < 10; i++)
		cd_qbatch_add(&b, make(f.a, CD_REQ_READ, "a", 4096));
	cd_queue_push(f.q, &b);
	wait_ran(10);   /* the burst of 1 s, spent */
	/* Leave and come back with the same limits: no new burst. */
	cd_queue_conn_out(f.q, f.a);
	assert_int_equal(cd_queue_conn_in(f.q, "user:a", &l, &again, why, sizeof(why)), 0);
	for (int i = 0; i < 4; i++)
		cd_qbatch_add(&b, make(again, CD_REQ_READ, "a", 4096));
	cd_queue_push(f.q, &b);
	wait_ran(14);
	/* 14 at 10/s with a burst of 10 (the 11th on credit): 0.3 s at least. */
	assert_true(cd_now_ms() - t0 >= 290);
	teardown(&f);
}

static void test_far_deadline_holds_no_one_else(void **state)
{
	struct cd_user_limits slow = { .bytes_per_second = 65536, .burst_ms = 100 };
	struct cd_user_limits quick = { .iops = 200, .burst_ms = 10 };
	struct fixture f = setup(2, &slow);
	struct cd_qbatch b = { 0 };
	uint64_t t0;

	(void)state;
	reset();
	assert_int_equal(cd_queue_set_limits(f.q, "user:b", &quick), 0);
	/* a goes 4 MiB into debt: its next request may go in a minute. */
	push1(f.q, make(f.a, CD_REQ_WRITE, "a", 4 << 20));
	wait_ran(1);
	push1(f.q, make(f.a, CD_REQ_WRITE, "a", 4096));
	usleep(20000);
	/* b's 40 at 200/s need 0.2 s, whoever sleeps until a's time. */
	t0 = cd_now_ms();
	for (int i = 0; i < 40; i++)
		cd_qbatch_add(&b, make(f.b, CD_REQ_READ, "b", 4096));
	cd_queue_push(f.q, &b);
	wait_ran(41);
	assert_true(cd_now_ms() - t0 < 5000);
	/* a's second is still held: the server stops without waiting. */
	cd_queue_drain(f.q);
	wait_ran(42);
	teardown(&f);
}

static void test_connections_limit(void **state)
{
	struct cd_user_limits l = { .connections = 2 };
	struct fixture f = setup(1, &l);
	struct cd_qflow *x = NULL;
	char why[128];

	(void)state;
	/* setup() took one of a's two. */
	assert_int_equal(cd_queue_conn_in(f.q, "user:a", &l, &x, why, sizeof(why)), 0);
	assert_int_equal(cd_queue_conn_in(f.q, "user:a", &l, &x, why, sizeof(why)), -EUSERS);
	assert_non_null(strstr(why, "user:a has 2 connections"));
	cd_queue_conn_out(f.q, x);
	assert_int_equal(cd_queue_conn_in(f.q, "user:a", &l, &x, why, sizeof(why)), 0);
	/* Set at run time: tighter, and kept over the file's at connect. */
	struct cd_user_limits one = { .connections = 1 };
	assert_int_equal(cd_queue_set_limits(f.q, "user:b", &one), 0);
	assert_int_equal(cd_queue_conn_in(f.q, "user:b", NULL, &x, why, sizeof(why)), -EUSERS);
	teardown(&f);
}

/* A request that waits on a target, as the library tells its thread. */
static void run_waiting(struct cd_qitem *qi)
{
	cd_wait_begin();
	run_item(qi);
	cd_wait_end();
}

static void push_many(struct cd_queue *q, struct cd_qflow *f, unsigned n,
		      void (*run)(struct cd_qitem *))
{
	struct cd_qbatch b = { 0 };

	pthread_mutex_lock(&lock);
	order[0] = 0;
	ran = running = most_running = 0;
	pthread_mutex_unlock(&lock);
	for (unsigned i = 0; i < n; i++) {
		struct cd_qitem *it = make(f, CD_REQ_WRITE, "w", 4096);
		it->run = run;
		cd_qbatch_add(&b, it);
	}
	cd_queue_push(q, &b);
	wait_ran(n);
}

/* The reader's reads (cd_queue_run_here): run on the caller's thread when
 * nothing but its own flow's work waits and no limit could hold them; a
 * refusal or a decline leaves every count as it was, and the item can be
 * pushed as any other. */
static unsigned tries;
static bool try_answers;

static bool try_item(struct cd_qitem *qi)
{
	tries++;
	if (!try_answers)
		return false;
	run_item(qi);
	return true;
}

struct counts {
	const char *user;
	unsigned queued, inflight;
};

static void count_user(const struct cd_queue_user_view *v, void *arg)
{
	struct counts *c = arg;

	if (strcmp(v->user, c->user) == 0) {
		c->queued = v->queued;
		c->inflight = v->inflight;
	}
}

static struct counts counts_of(struct cd_queue *q, const char *user)
{
	struct counts c = { user, 99, 99 };

	cd_queue_foreach_user(q, count_user, &c);
	return c;
}

static void test_run_here(void **state)
{
	struct cd_user_limits l = { .iops = 1000 };
	struct fixture f = setup(1, NULL);
	struct cd_qflow *limited;
	struct cd_qitem *it;
	char why[128];

	(void)state;
	assert_int_equal(cd_queue_conn_in(f.q, "user:d", &l, &limited, why, sizeof(why)), 0);
	block(f.q, f.b);
	/* Only a's own work waits: the read runs here. */
	push1(f.q, make(f.a, CD_REQ_WRITE, "a1", 4096));
	tries = 0;
	try_answers = true;
	assert_true(cd_queue_run_here(f.q, make(f.a, CD_REQ_READ, "r1", 4096), try_item));
	assert_int_equal(tries, 1);
	assert_int_equal(counts_of(f.q, "user:a").inflight, 0);
	/* It declines: nothing counted, and pushed it runs on a worker. */
	try_answers = false;
	it = make(f.a, CD_REQ_READ, "r2", 4096);
	assert_false(cd_queue_run_here(f.q, it, try_item));
	assert_int_equal(tries, 2);
	assert_int_equal(counts_of(f.q, "user:a").inflight, 0);
	assert_int_equal(counts_of(f.q, "user:a").queued, 1);
	push1(f.q, it);
	/* Another user's work waits: not even tried. */
	push1(f.q, make(f.c, CD_REQ_WRITE, "c1", 4096));
	try_answers = true;
	it = make(f.a, CD_REQ_READ, "r3", 4096);
	assert_false(cd_queue_run_here(f.q, it, try_item));
	assert_int_equal(tries, 2);
	push1(f.q, it);
	unblock();
	wait_ran(5);
	/* r1 ran here, before the worker was free; the rest in its turn. */
	assert_int_equal(strncmp(order, "r1 ", 3), 0);
	/* A user with a limit goes through the queue, whatever waits. */
	it = make(limited, CD_REQ_READ, "d1", 4096);
	assert_false(cd_queue_run_here(f.q, it, try_item));
	assert_int_equal(tries, 2);
	push1(f.q, it);
	wait_ran(6);
	assert_int_equal(counts_of(f.q, "user:a").inflight, 0);
	assert_int_equal(counts_of(f.q, "user:a").queued, 0);
	cd_queue_conn_out(f.q, limited);
	teardown(&f);
}

static void test_waiting_workers_not_counted(void **state)
{
	struct cdisk_ctx *ctx = cdisk_ctx_new();
	struct cd_queue *q = NULL;
	struct cd_qflow *f = NULL;
	char why[128];

	(void)state;
	assert_int_equal(cd_queue_new(ctx, 2, 32, &q), 0);
	assert_int_equal(cd_queue_conn_in(q, "user:a", NULL, &f, why, sizeof(why)), 0);
	/* Work that waits on nothing stays within the pool of two. */
	nap_us = 20000;
	push_many(q, f, 16, run_item);
	assert_int_equal(most_running, 2);
	/* Sixteen requests that wait on the network: all under way at once. */
	nap_us = 500000;
	push_many(q, f, 16, run_waiting);
	assert_int_equal(most_running, 16);
	nap_us = 0;
	cd_queue_free(q);
	cdisk_ctx_free(ctx);
}

/* A first item that holds its worker, and seven behind it: how many of
 * them the other workers carried while it held, after a later push of
 * one more (then = 'p') or a tick of the accept loop (then = 't'). */
static unsigned ran_beside_one_held(struct fixture *f, bool quick, char then)
{
	struct cd_qbatch b = { 0 };
	struct cd_qitem *first = calloc(1, sizeof(*first));
	unsigned beside;

	pthread_mutex_lock(&lock);
	ran = running = most_running = 0;
	order[0] = 0;
	released = blocking = false;
	pthread_mutex_unlock(&lock);
	first->cls = CD_REQ_WRITE;
	first->flow = f->a;
	first->run = run_blocker;
	first->quick = quick;
	cd_qbatch_add(&b, first);
	for (unsigned i = 0; i < 7; i++) {
		struct cd_qitem *it = make(f->a, CD_REQ_WRITE, "q", 4096);

		it->quick = quick;
		cd_qbatch_add(&b, it);
	}
	cd_queue_push(f->q, &b);
	usleep(50000);
	if (then == 'p') {
		struct cd_qitem *it = make(f->a, CD_REQ_WRITE, "q", 4096);

		it->quick = quick;
		push1(f->q, it);
	} else if (then == 't') {
		assert_int_equal(cd_queue_tick(f->q), 5);
	}
	if (then)
		usleep(50000);
	pthread_mutex_lock(&lock);
	beside = ran;
	pthread_mutex_unlock(&lock);
	unblock();
	wait_ran(7 + (then == 'p'));
	return beside;
}

/* Workers asleep, as a server's between requests. */
static struct fixture setup_asleep(void)
{
	struct fixture f = setup(4, NULL);

	usleep(20000);
	return f;
}

static void test_quick_work_stays_on_one_worker(void **state)
{
	struct fixture f = setup_asleep();

	(void)state;
	/* Small local writes: waking a worker for each would cost more than
	 * carrying them one after the other, so nobody else is woken... */
	assert_int_equal(ran_beside_one_held(&f, true, 0), 0);
	/* ...and work that is not quick (a flush, a remote disk's) is
	 * shared: the three other workers carry the seven meanwhile. */
	assert_int_equal(ran_beside_one_held(&f, false, 0), 7);
	teardown(&f);
	/* But once nothing was taken for a while the carrier is held up (a
	 * write the kernel throttles): the next push wakes a worker, who
	 * carries them all, and without one the accept loop's tick wakes
	 * the others.  (Fresh queues: the
	 * runs' average knows nothing yet.) */
	f = setup_asleep();
	assert_int_equal(ran_beside_one_held(&f, true, 'p'), 8);
	teardown(&f);
	f = setup_asleep();
	assert_int_equal(ran_beside_one_held(&f, true, 't'), 7);
	teardown(&f);
}

static long voluntary_switches(void)
{
	struct rusage u;

	getrusage(RUSAGE_SELF, &u);   /* every thread's */
	return u.ru_nvcsw;
}

/* The reader's requests while background work waits for the guests to be
 * quiet: one worker keeps that time, not one woken per request. */
static void test_run_here_beside_background_wakes_no_one(void **state)
{
	struct fixture f = setup_asleep();
	struct bg_arg arg = { f.q };
	unsigned requests = 0;
	uint64_t until;
	long before = 0;
	pthread_t th[2];

	(void)state;
	cd_queue_set_background_min_rate(f.q, 1);
	try_answers = true;
	assert_true(cd_queue_run_here(f.q, make(f.a, CD_REQ_READ, "r", 4096), try_item));
	/* Two tickets while the guests are busy: one spends the bucket's
	 * first crumb, the other waits for their quiet. */
	for (int i = 0; i < 2; i++)
		pthread_create(&th[i], NULL, background, &arg);
	until = cd_now_ns() + 2000000000ull;
	while (cd_now_ns() < until) {
		if (!before && bg_queued(f.q) == 1) {
			usleep(20000);   /* the woken workers are asleep again */
			before = voluntary_switches();
			until = cd_now_ns() + 200000000ull;
		}
		assert_true(cd_queue_run_here(f.q, make(f.a, CD_REQ_READ, "r", 4096), try_item));
		requests += before != 0;
	}
	long switched = voluntary_switches() - before;
	assert_true(before != 0);
	assert_int_equal(bg_queued(f.q), 1);
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);   /* the second once they are quiet */
	/* A worker keeping 50 ms and the ticket's 50 ms poll: a handful. */
	if (switched > 100)
		fail_msg("%ld context switches for %u requests", switched, requests);
	assert_true(requests > 1000);
	teardown(&f);
}

/* The server's voluntary context switches per 100 quick requests pushed
 * one at a time to sleeping workers, each waited for. */
static long switches_per_100_pushed(struct fixture *f)
{
	long before;

	pthread_mutex_lock(&lock);
	ran = 0;
	order[0] = 0;
	pthread_mutex_unlock(&lock);
	before = voluntary_switches();
	for (unsigned i = 0; i < 1000; i++) {
		struct cd_qitem *it = make(f->a, CD_REQ_WRITE, "w", 4096);

		it->quick = true;
		push1(f->q, it);
		wait_ran(i + 1);
	}
	return (voluntary_switches() - before) / 10;
}

/* Requests the workers carry while a background ticket waits for the
 * guests' quiet: the ticket is no work for a second worker, so each
 * request wakes as many as it would without it.  (Each worker woke
 * another for it, which found nothing: beside a sync the server made
 * twice the context switches, and its guests' writes a third more
 * latency at p99.) */
static void test_waiting_background_wakes_no_extra_worker(void **state)
{
	struct fixture f = setup_asleep();
	struct bg_arg arg = { f.q };
	pthread_t th[2];
	long alone, beside;

	(void)state;
	alone = switches_per_100_pushed(&f);
	cd_queue_set_background_min_rate(f.q, 1);
	try_answers = true;
	assert_true(cd_queue_run_here(f.q, make(f.a, CD_REQ_READ, "r", 4096), try_item));
	/* One ticket spends the bucket's first crumb, the other waits. */
	for (int i = 0; i < 2; i++)
		pthread_create(&th[i], NULL, background, &arg);
	while (bg_queued(f.q) != 1)
		assert_true(cd_queue_run_here(f.q, make(f.a, CD_REQ_READ, "r", 4096), try_item));
	beside = switches_per_100_pushed(&f);
	assert_int_equal(bg_queued(f.q), 1);
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);   /* the second once they are quiet */
	print_message("context switches per 100 requests: %ld alone, %ld beside a ticket\n",
		      alone, beside);
	if (beside > alone + alone / 4 + 10)
		fail_msg("%ld context switches per 100 requests beside a waiting ticket, "
			 "%ld without", beside, alone);
	teardown(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_reads_before_writes),
		cmocka_unit_test(test_users_take_turns),
		cmocka_unit_test(test_fair_by_bytes),
		cmocka_unit_test(test_background_after_guests),
		cmocka_unit_test(test_background_cancelled),
		cmocka_unit_test(test_queue_depth),
		cmocka_unit_test(test_iops_limit),
		cmocka_unit_test(test_reconnect_no_fresh_burst),
		cmocka_unit_test(test_far_deadline_holds_no_one_else),
		cmocka_unit_test(test_connections_limit),
		cmocka_unit_test(test_waiting_workers_not_counted),
		cmocka_unit_test(test_run_here),
		cmocka_unit_test(test_quick_work_stays_on_one_worker),
		cmocka_unit_test(test_run_here_beside_background_wakes_no_one),
		cmocka_unit_test(test_waiting_background_wakes_no_extra_worker),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

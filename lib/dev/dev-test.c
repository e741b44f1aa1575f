/* Unit tests for the device layers (dev.h) and the sharing of stacks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "cdisk.h"
#include "ctx.h"
#include "dev.h"
#include "target.h"
#include "uri.h"
#include "util.h"

/* A memory kind: 512-byte sectors, requests of at most 4000 bytes (not a
 * multiple of a sector, so the split layer must round), sessions. */
static uint8_t store[1 << 16];
static int kind_closes, kind_opens;

static int mem_open(struct cd_target *t, const struct cd_uri *u)
{
	(void)u;
	kind_opens++;
	t->size = sizeof(store);
	t->align = 512;
	t->max_request = 4000;
	t->can_flush = t->can_zero = true;
	return 0;
}

static int mem_connect(struct cd_target *t, void **s)
{
	(void)t;
	*s = store;
	return 0;
}

static void mem_disconnect(struct cd_target *t, void *s)
{
	(void)t, (void)s;
}

static int mem_pread(struct cd_target *t, void *s, void *buf, size_t len, uint64_t off)
{
	(void)t, (void)s;
	memcpy(buf, store + off, len);
	return 0;
}

static int mem_pwrite(struct cd_target *t, void *s, const void *buf, size_t len,
		      uint64_t off)
{
	(void)t, (void)s;
	memcpy(store + off, buf, len);
	return 0;
}

static int mem_flush(struct cd_target *t, void *s)
{
	(void)t, (void)s;
	return 0;
}

static void mem_close(struct cd_target *t)
{
	(void)t;
	kind_closes++;
}

static const struct cd_target_ops mem_ops = {
	.name = "mem", .open = mem_open, .connect = mem_connect,
	.disconnect = mem_disconnect, .pread = mem_pread, .pwrite = mem_pwrite,
	.flush = mem_flush, .close = mem_close,
};

/* A fault-injecting test layer, named as such: the next `fail` requests
 * fail with `err` without going down (as sent and lost, or, with
 * `unsent`, as never sent); every request it sees is recorded. */
struct fault {
	struct cd_dev dev;
	int fail, err;
	bool unsent;
	unsigned seen;
	struct { size_t len; uint64_t off; } req[64];
};

static struct fault *the_fault;

static int inject(struct cd_dev *d, size_t len, uint64_t off)
{
	struct fault *f = (struct fault *)d;

	if (f->seen < 64) {
		f->req[f->seen].len = len;
		f->req[f->seen].off = off;
	}
	f->seen++;
	if (f->fail <= 0)
		return 0;
	f->fail--;
	cd_dev_unsent = f->unsent;
	return cd_error(d->t->ctx, f->err, "fault: injected");
}

static int fault_pread(struct cd_dev *d, void *buf, size_t len, uint64_t off)
{
	int r = inject(d, len, off);

	return r < 0 ? r : cd_dev_pread(d->next, buf, len, off);
}

static int fault_pwrite(struct cd_dev *d, const void *buf, size_t len, uint64_t off)
{
	int r = inject(d, len, off);

	return r < 0 ? r : cd_dev_pwrite(d->next, buf, len, off);
}

static void fault_close(struct cd_dev *d)
{
	free(d);
}

static const struct cd_dev_ops fault_ops = {
	.name = "fault", .pread = fault_pread, .pwrite = fault_pwrite,
	.close = fault_close,
};

static struct cd_dev *fault_new(struct cd_dev *next, void *arg)
{
	struct fault *f = calloc(1, sizeof(*f));

	(void)arg;
	assert_non_null(f);
	f->dev.ops = &fault_ops;
	f->dev.next = next;
	f->dev.t = next->t;
	the_fault = f;
	return &f->dev;
}

static struct cd_target *open_with_fault(struct cdisk_ctx *ctx, bool under_split)
{
	struct cd_dev_hooks h = { 0 };
	struct cd_uri u = { 0 };
	struct cd_target *t;

	if (under_split)
		h.under_split = fault_new;
	else
		h.under_retry = fault_new;
	ctx->cfg.retries = 3;
	ctx->cfg.connections = 2;
	assert_int_equal(cd_target_open_hooked(ctx, "mem://", &u, &mem_ops, false, &h,
					       &t), 0);
	return t;
}

static void test_retry_transient_then_success(void **state)
{
	struct cdisk_ctx ctx = { 0 };
	struct cd_target *t = open_with_fault(&ctx, false);
	uint8_t buf[512], back[512];

	(void)state;
	memset(buf, 0x33, sizeof(buf));
	memcpy(store + 1024, buf, sizeof(buf));
	/* A read lost twice: sent a third time, both resends counted. */
	the_fault->fail = 2;
	the_fault->err = -ECONNRESET;
	assert_int_equal(cd_target_pread(t, back, sizeof(back), 1024), 0);
	assert_memory_equal(back, buf, sizeof(back));
	assert_int_equal(the_fault->seen, 3);
	assert_int_equal(t->resent, 2);
	/* A write that never left is sent again; one that may have is not. */
	the_fault->seen = 0;
	the_fault->fail = 1;
	the_fault->unsent = true;
	assert_int_equal(cd_target_pwrite(t, buf, sizeof(buf), 0), 0);
	assert_int_equal(the_fault->seen, 2);
	assert_int_equal(t->resent, 3);
	the_fault->seen = 0;
	the_fault->fail = 1;
	the_fault->unsent = false;
	assert_int_equal(cd_target_pwrite(t, buf, sizeof(buf), 0), -ECONNRESET);
	assert_int_equal(the_fault->seen, 1);
	assert_int_equal(t->resent, 3);
	cd_target_close(t);
}

static void test_retry_permanent_error_not_retried(void **state)
{
	struct cdisk_ctx ctx = { 0 };
	struct cd_target *t = open_with_fault(&ctx, false);
	uint8_t buf[512];

	(void)state;
	the_fault->fail = 5;
	the_fault->err = -EIO;
	assert_int_equal(cd_target_pread(t, buf, sizeof(buf), 0), -EIO);
	assert_non_null(strstr(cd_errbuf(), "fault: injected"));
	assert_int_equal(the_fault->seen, 1);
	assert_int_equal(t->resent, 0);
	/* Even a request that never left is not resent for a lasting error. */
	the_fault->seen = 0;
	the_fault->unsent = true;
	assert_int_equal(cd_target_pwrite(t, buf, sizeof(buf), 0), -EIO);
	assert_int_equal(the_fault->seen, 1);
	assert_int_equal(t->resent, 0);
	cd_target_close(t);
}

static void test_split_pieces_respect_align_and_max(void **state)
{
	struct cdisk_ctx ctx = { 0 };
	struct cd_target *t = open_with_fault(&ctx, true);
	static uint8_t buf[20480], back[20480];
	uint64_t next = 4096;

	(void)state;
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)(i * 13 + 5);
	assert_int_equal(cd_target_pwrite(t, buf, sizeof(buf), 4096), 0);
	/* 4000 bytes at most, whole sectors: 3584-byte pieces, in order,
	 * covering the request exactly. */
	assert_true(the_fault->seen > 1);
	for (unsigned i = 0; i < the_fault->seen; i++) {
		assert_true(the_fault->req[i].len <= 4000);
		assert_int_equal(the_fault->req[i].len % 512, 0);
		assert_int_equal(the_fault->req[i].off % 512, 0);
		assert_int_equal(the_fault->req[i].off, next);
		next += the_fault->req[i].len;
	}
	assert_int_equal(next, 4096 + sizeof(buf));
	assert_memory_equal(store + 4096, buf, sizeof(buf));
	/* Reads are split alike, and an unaligned one is made whole sectors
	 * above the split. */
	the_fault->seen = 0;
	assert_int_equal(cd_target_pread(t, back, 9000, 4096 + 100), 0);
	assert_memory_equal(back, buf + 100, 9000);
	for (unsigned i = 0; i < the_fault->seen; i++) {
		assert_true(the_fault->req[i].len <= 4000);
		assert_int_equal(the_fault->req[i].len % 512, 0);
		assert_int_equal(the_fault->req[i].off % 512, 0);
	}
	cd_target_close(t);
}

static struct cd_target *open_mem(struct cdisk_ctx *ctx, bool readonly)
{
	struct cd_uri u = { 0 };
	struct cd_target *t;

	assert_int_equal(cd_target_open_with(ctx, "mem://shared", &u, &mem_ops, readonly,
					     &t), 0);
	return t;
}

static void test_one_stack_per_uri(void **state)
{
	struct cdisk_ctx ctx = { 0 };
	struct cd_target *a, *b, *ro;
	uint8_t buf[512], back[512];

	(void)state;
	kind_opens = kind_closes = 0;
	ctx.cfg.connections = 2;
	a = open_mem(&ctx, false);
	b = open_mem(&ctx, false);
	assert_ptr_equal(a, b);
	assert_int_equal(kind_opens, 1);
	/* Read-only is a stack of its own: it must refuse writes. */
	ro = open_mem(&ctx, true);
	assert_ptr_not_equal(ro, a);
	assert_int_equal(kind_opens, 2);
	/* Closing one keeps the other working. */
	cd_target_close(a);
	assert_int_equal(kind_closes, 0);
	memset(buf, 0x77, sizeof(buf));
	assert_int_equal(cd_target_pwrite(b, buf, sizeof(buf), 512), 0);
	assert_int_equal(cd_target_pread(ro, back, sizeof(back), 512), 0);
	assert_memory_equal(back, buf, sizeof(back));
	assert_int_equal(cd_target_pwrite(ro, buf, sizeof(buf), 512), -EROFS);
	/* The last close frees it; a new open makes a new one. */
	cd_target_close(b);
	assert_int_equal(kind_closes, 1);
	a = open_mem(&ctx, false);
	assert_int_equal(kind_opens, 3);
	cd_target_close(a);
	cd_target_close(ro);
	assert_int_equal(kind_closes, 3);
}

static void test_tuned_and_other_tuning_not_shared(void **state)
{
	struct cdisk_ctx ctx = { 0 };
	struct cd_target_tuning tn = { .timeout_s = 30, .retries = 0, .connections = 1 };
	char path[] = "/tmp/cdisk-dev-XXXXXX";
	struct cd_target *a, *b, *p1, *p2, *other;
	int fd = mkstemp(path);

	(void)state;
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, 1 << 16), 0);
	close(fd);
	ctx.cfg.connections = 1;
	assert_int_equal(cd_target_open(&ctx, path, true, &a), 0);
	assert_int_equal(cd_target_open(&ctx, path, true, &b), 0);
	assert_ptr_equal(a, b);
	/* A probe's stack is its own, even with the same tuning. */
	assert_int_equal(cd_target_open_tuned(&ctx, path, true, &tn, &p1), 0);
	assert_int_equal(cd_target_open_tuned(&ctx, path, true, &tn, &p2), 0);
	assert_ptr_not_equal(p1, a);
	assert_ptr_not_equal(p1, p2);
	/* Another retry count behaves differently: another stack. */
	ctx.cfg.retries = 7;
	assert_int_equal(cd_target_open(&ctx, path, true, &other), 0);
	assert_ptr_not_equal(other, a);
	cd_target_close(other);
	cd_target_close(p2);
	cd_target_close(p1);
	cd_target_close(b);
	cd_target_close(a);
	unlink(path);
}

/* The same memory behind sessions that send without waiting: a write
 * lands when waited for, unless the kind is told to hang or fail then. */
struct aio_session {
	const uint8_t *buf;
	size_t len;
	uint64_t off;
};
static int aio_connects, aio_drops, aio_outcome;   /* 1: hang */

static int aio_connect(struct cd_target *t, void **s)
{
	(void)t;
	*s = calloc(1, sizeof(struct aio_session));
	aio_connects++;
	return *s ? 0 : -ENOMEM;
}

static void aio_disconnect(struct cd_target *t, void *s)
{
	(void)t;
	free(s);
	aio_drops++;
}

static int aio_send(struct cd_target *t, void *s, const void *buf, size_t len,
		    uint64_t off, int64_t *cookie)
{
	struct aio_session *a = s;

	(void)t;
	a->buf = buf;
	a->len = len;
	a->off = off;
	*cookie = 1;
	return 0;
}

static int aio_answer(struct cd_target *t, void *s, int64_t cookie, uint64_t deadline_ms)
{
	struct aio_session *a = s;

	(void)cookie, (void)deadline_ms;
	if (aio_outcome)
		return aio_outcome > 0 ? 1 : cd_error(t->ctx, aio_outcome, "aio: injected");
	memcpy(store + a->off, a->buf, a->len);
	return 0;
}

static const struct cd_target_ops aio_ops = {
	.name = "aio", .open = mem_open, .connect = aio_connect,
	.disconnect = aio_disconnect, .pread = mem_pread, .pwrite = mem_pwrite,
	.flush = mem_flush, .aio_write = aio_send, .aio_wait = aio_answer,
	.close = mem_close,
};

static void test_aio_write_only_where_nothing_changes_it(void **state)
{
	struct cdisk_ctx ctx = { 0 };
	struct cd_dev_hooks h = { .under_split = fault_new };
	struct cd_target_aio a, b;
	struct cd_uri u = { 0 };
	struct cd_target *t, *hooked;
	uint8_t buf[1024];

	(void)state;
	ctx.cfg.connections = 2;
	assert_int_equal(cd_target_open_hooked(&ctx, "aio://", &u, &aio_ops, false, NULL,
					       &t), 0);
	memset(buf, 0x5a, sizeof(buf));
	memset(store, 0, 4096);
	/* No session yet: never one made here. */
	assert_int_equal(cd_target_aio_write(t, &a, buf, 512, 1024), -EAGAIN);
	assert_int_equal(aio_connects, 0);
	assert_int_equal(cd_target_pwrite(t, buf, 512, 0), 0);
	assert_int_equal(aio_connects, 1);
	/* Sent, lands when answered, and the session goes back. */
	assert_int_equal(cd_target_aio_write(t, &a, buf, 512, 1024), 0);
	assert_int_equal(store[1024], 0);
	assert_int_equal(cd_target_aio_wait(t, &a, cd_now_ms() + 1000), 0);
	assert_int_equal(store[1024], 0x5a);
	cd_target_aio_end(t, &a, 0);
	/* The one idle session is lent: a second waits for nobody. */
	assert_int_equal(cd_target_aio_write(t, &a, buf, 512, 2048), 0);
	assert_int_equal(cd_target_aio_write(t, &b, buf, 512, 2560), -EAGAIN);
	assert_int_equal(cd_target_aio_wait(t, &a, cd_now_ms() + 1000), 0);
	cd_target_aio_end(t, &a, 0);
	/* What a layer would change: not aligned, too long, past the end. */
	assert_int_equal(cd_target_aio_write(t, &a, buf, 100, 0), -EAGAIN);
	assert_int_equal(cd_target_aio_write(t, &a, buf, 512, 100), -EAGAIN);
	assert_int_equal(cd_target_aio_write(t, &a, buf, 4096, 0), -EAGAIN);
	assert_int_equal(cd_target_aio_write(t, &a, buf, 512, sizeof(store)), -EAGAIN);
	/* Given up on under way: the session is dropped, never lent again
	 * for another request's answer.  An error the server answered
	 * leaves it in use. */
	aio_outcome = 1;
	assert_int_equal(cd_target_aio_write(t, &a, buf, 512, 0), 0);
	assert_int_equal(cd_target_aio_wait(t, &a, cd_now_ms()), 1);
	cd_target_aio_end(t, &a, 1);
	assert_int_equal(aio_drops, 1);
	assert_int_equal(cd_target_aio_write(t, &a, buf, 512, 0), -EAGAIN);
	assert_int_equal(cd_target_pwrite(t, buf, 512, 0), 0);
	aio_outcome = -EIO;
	assert_int_equal(cd_target_aio_write(t, &a, buf, 512, 0), 0);
	assert_int_equal(cd_target_aio_wait(t, &a, cd_now_ms() + 1000), -EIO);
	assert_non_null(strstr(cd_errbuf(), "aio: injected"));
	cd_target_aio_end(t, &a, -EIO);
	assert_int_equal(aio_drops, 1);
	assert_int_equal(cd_target_aio_write(t, &a, buf, 512, 0), 0);
	cd_target_aio_end(t, &a, 1);
	assert_int_equal(aio_drops, 2);
	aio_outcome = 0;
	cd_target_close(t);
	/* A layer that may change a request (a test's) keeps every write on
	 * the blocking way. */
	assert_int_equal(cd_target_open_hooked(&ctx, "aio://", &u, &aio_ops, false, &h,
					       &hooked), 0);
	assert_int_equal(cd_target_pwrite(hooked, buf, 512, 0), 0);
	assert_int_equal(cd_target_aio_write(hooked, &a, buf, 512, 0), -EAGAIN);
	cd_target_close(hooked);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_retry_transient_then_success),
		cmocka_unit_test(test_retry_permanent_error_not_retried),
		cmocka_unit_test(test_split_pieces_respect_align_and_max),
		cmocka_unit_test(test_one_stack_per_uri),
		cmocka_unit_test(test_tuned_and_other_tuning_not_shared),
		cmocka_unit_test(test_aio_write_only_where_nothing_changes_it),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

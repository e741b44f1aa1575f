/* Unit tests for the copy engine: what it records after a flush, what a
 * write during a block's journey, a failed move, a failed flush and a stop
 * leave behind.  The destination is a buffer in memory with a fault
 * injector (named as such: fault_*), which no real server can be made to
 * fail on cue; the real pairs (overlay to each kind of base, and back)
 * run in tests/090-092 and 091-sync-remote.bats. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "../tests/pattern.h"
#include "bitmap.h"
#include "cdisk.h"
#include "copy.h"
#include "ctx.h"
#include "disk.h"

#define BS 4096u
#define DISK_SIZE (4u << 20)

struct memdest {
	uint8_t data[DISK_SIZE];
	unsigned moves, flushes;
	int fault_move_at;        /* this move fails; -1: none */
	bool fault_flush;         /* every flush fails */
	int64_t rewrite_block;    /* written anew while its move is under way; -1: none */
	bool stop_at_first;       /* ask the copy to stop during the first move */
};

struct fixture {
	char dir[64];
	char disk[128];
	struct cdisk_ctx *ctx;
	struct cdisk *d;
	struct memdest *m;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	struct cdisk_create_opts o = { .size = DISK_SIZE, .block_size = BS };

	strcpy(f->dir, "/tmp/cdisk-copy-XXXXXX");
	if (!mkdtemp(f->dir))
		return -1;
	snprintf(f->disk, sizeof(f->disk), "%s/d.cdisk", f->dir);
	f->ctx = cdisk_ctx_new();
	snprintf(f->ctx->cfg.backup_dir, sizeof(f->ctx->cfg.backup_dir), "%s/meta", f->dir);
	if (cdisk_create(f->ctx, f->disk, &o) < 0 || cdisk_open(f->ctx, f->disk, 0, &f->d) < 0)
		return -1;
	f->m = calloc(1, sizeof(*f->m));
	f->m->fault_move_at = -1;
	f->m->rewrite_block = -1;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	char cmd[160];

	if (f->d)
		cdisk_close(f->d);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
	system(cmd);
	cdisk_ctx_free(f->ctx);
	free(f->m);
	free(f);
	return 0;
}

static void write_blocks(struct cdisk *d, uint64_t first, uint64_t count, uint64_t seed)
{
	size_t len = (size_t)count * BS;
	uint8_t *buf = malloc(len);

	pattern_fill(buf, len, first * BS, seed);
	assert_int_equal(cdisk_pwrite(d, buf, len, first * BS), 0);
	free(buf);
}

static int mem_move(struct cd_copy *c, struct cd_extent *x, size_t n, uint8_t *buf)
{
	struct memdest *m = c->job;
	struct cdisk *d = c->d;
	unsigned me = __atomic_fetch_add(&m->moves, 1, __ATOMIC_RELAXED);
	uint64_t off = x->first * BS, len = x->count * BS;
	int r = cdisk_pread(d, buf, len, off);

	if (r < 0)
		return r;
	if (m->stop_at_first && me == 0)
		d->sync_stop = 1;
	if (m->rewrite_block >= 0 && (uint64_t)m->rewrite_block >= x->first &&
	    (uint64_t)m->rewrite_block < x->first + x->count)
		write_blocks(d, (uint64_t)m->rewrite_block, 1, 99);
	if ((int)me == m->fault_move_at)
		return cd_error(d->ctx, -EIO, "fault_move: injected at block %llu",
				(unsigned long long)x->first);
	memcpy(m->data + off, buf, len);
	cd_copy_count(c, x, n, 1, 0, len);
	return 0;
}

static int mem_flush(struct cd_copy *c)
{
	struct memdest *m = c->job;

	m->flushes++;
	if (m->fault_flush)
		return cd_error(c->d->ctx, -EIO, "fault_flush: injected");
	return 0;
}

static const struct cd_copy_ops mem_ops = { mem_move, mem_flush };

/* Copy every dirty block of f->d into f->m, batch_bytes a batch. */
static int copy_dirty(struct fixture *f, unsigned depth, uint64_t batch_bytes,
		      struct cdisk_sync_stats *st)
{
	struct cdisk *d = f->d;
	const struct cd_drain dirty = { &d->dirty, &d->syncing, cd_mark_clean };
	struct cdisk_sync_opts o = { .target_delay_ms = -1 };
	struct cd_copy c = { .d = d, .o = &o, .st = st, .ops = &mem_ops, .drain = &dirty,
			     .job = f->m, .depth = depth, .buf_bytes = 1u << 20,
			     .batch_bytes = batch_bytes };
	uint64_t blocks;
	int r;

	memset(st, 0, sizeof(*st));
	d->sync_stop = 0;
	pthread_mutex_lock(&d->lock);
	r = cd_copy_collect(d, &d->dirty, true, 0, d->nblocks, 0, 256, &c.ext, &c.n, &blocks);
	pthread_mutex_unlock(&d->lock);
	assert_int_equal(r, 0);
	c.total_bytes = blocks * BS;
	r = cd_copy_run(&c);
	free(c.ext);
	return r;
}

static uint64_t dirty_blocks(struct cdisk *d)
{
	return d->dirty.count;
}

static bool is_dirty(struct cdisk *d, uint64_t b)
{
	return cd_bitmap_get(&d->dirty, b);
}

static void expect_copied(struct fixture *f, uint64_t first, uint64_t count, uint64_t seed)
{
	if (!pattern_check(f->m->data + first * BS, count * BS, first * BS, seed))
		fail_msg("blocks %llu+%llu did not arrive", (unsigned long long)first,
			 (unsigned long long)count);
}

static void reopen(struct fixture *f)
{
	assert_int_equal(cdisk_close(f->d), 0);
	f->d = NULL;
	assert_int_equal(cdisk_open(f->ctx, f->disk, 0, &f->d), 0);
}

static void test_copies_every_run_and_records_it(void **state)
{
	struct fixture *f = *state;
	struct cdisk_sync_stats st;

	write_blocks(f->d, 0, 10, 1);
	write_blocks(f->d, 100, 20, 2);
	write_blocks(f->d, 500, 1, 3);
	assert_int_equal(copy_dirty(f, 4, 16 * BS, &st), 0);
	expect_copied(f, 0, 10, 1);
	expect_copied(f, 100, 20, 2);
	expect_copied(f, 500, 1, 3);
	assert_int_equal(st.blocks, 31);
	assert_int_equal(dirty_blocks(f->d), 0);
	assert_int_equal(f->d->syncing.count, 0);
	/* Batches of 16 blocks: the 10, the 20 (an extent is never split),
	 * the 1; one flush each. */
	assert_int_equal(f->m->flushes, 3);
	/* The record is durable. */
	reopen(f);
	assert_int_equal(dirty_blocks(f->d), 0);
}

static void test_write_during_the_journey_stays_dirty(void **state)
{
	struct fixture *f = *state;
	struct cdisk_sync_stats st;

	write_blocks(f->d, 0, 4, 1);
	write_blocks(f->d, 200, 4, 2);
	f->m->rewrite_block = 201;
	assert_int_equal(copy_dirty(f, 2, 0, &st), 0);
	assert_int_equal(dirty_blocks(f->d), 1);
	assert_true(is_dirty(f->d, 201));
	assert_int_equal(f->d->syncing.count, 0);
	/* The next copy sends it. */
	f->m->rewrite_block = -1;
	assert_int_equal(copy_dirty(f, 2, 0, &st), 0);
	assert_int_equal(dirty_blocks(f->d), 0);
	expect_copied(f, 201, 1, 99);
}

static void test_failed_flush_records_nothing(void **state)
{
	struct fixture *f = *state;
	struct cdisk_sync_stats st;

	write_blocks(f->d, 0, 8, 1);
	write_blocks(f->d, 64, 8, 2);
	f->m->fault_flush = true;
	assert_int_equal(copy_dirty(f, 2, 0, &st), -EIO);
	assert_non_null(strstr(cd_errbuf(), "fault_flush"));
	assert_int_equal(dirty_blocks(f->d), 16);
	assert_int_equal(f->d->syncing.count, 0);
	reopen(f);
	assert_int_equal(dirty_blocks(f->d), 16);
}

static void test_failed_move_keeps_what_went_before(void **state)
{
	struct fixture *f = *state;
	struct cdisk_sync_stats st;

	for (uint64_t b = 0; b < 5; b++)
		write_blocks(f->d, b * 32, 1, b + 1);
	f->m->fault_move_at = 2;
	/* One mover: the moves go in order, and the third fails. */
	assert_int_equal(copy_dirty(f, 1, 0, &st), -EIO);
	/* The mover's message reaches the caller's thread. */
	assert_non_null(strstr(cd_errbuf(), "fault_move: injected at block 64"));
	assert_false(is_dirty(f->d, 0));
	assert_false(is_dirty(f->d, 32));
	assert_true(is_dirty(f->d, 64));
	assert_true(is_dirty(f->d, 96));
	assert_true(is_dirty(f->d, 128));
	assert_int_equal(f->m->flushes, 1);
	assert_int_equal(f->d->syncing.count, 0);
	reopen(f);
	assert_int_equal(dirty_blocks(f->d), 3);
}

static void test_stop_ends_after_the_batch_under_way(void **state)
{
	struct fixture *f = *state;
	struct cdisk_sync_stats st;

	for (uint64_t b = 0; b < 8; b++)
		write_blocks(f->d, b * 32, 1, b + 1);
	f->m->stop_at_first = true;
	assert_int_equal(copy_dirty(f, 1, 2 * BS, &st), 0);
	/* The first move finished and was recorded; nothing else started. */
	assert_int_equal(f->m->moves, 1);
	assert_int_equal(f->m->flushes, 1);
	assert_int_equal(st.blocks, 1);
	assert_int_equal(dirty_blocks(f->d), 7);
	assert_int_equal(f->d->syncing.count, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_copies_every_run_and_records_it, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_write_during_the_journey_stays_dirty, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_failed_flush_records_nothing, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_failed_move_keeps_what_went_before, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_stop_ends_after_the_batch_under_way, setup,
						teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

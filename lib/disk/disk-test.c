/* Unit tests for the open disk: every path of read, write, flush,
 * discard and zeroes, edges of the disk, the activity log and journal
 * under pressure, and ownership. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../tests/pattern.h"
#include "cdisk.h"
#include "ctx.h"
#include "disk.h"
#include "format.h"
#include "journal.h"
#include "util.h"

struct fixture {
	char dir[64];
	char disk[128];
	char base[128];
	struct cdisk_ctx *ctx;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	strcpy(f->dir, "/tmp/cdisk-unit-XXXXXX");
	if (!mkdtemp(f->dir))
		return -1;
	snprintf(f->disk, sizeof(f->disk), "%s/d.cdisk", f->dir);
	snprintf(f->base, sizeof(f->base), "%s/base.img", f->dir);
	f->ctx = cdisk_ctx_new();
	snprintf(f->ctx->cfg.backup_dir, sizeof(f->ctx->cfg.backup_dir), "%s/meta", f->dir);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	char cmd[160];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
	system(cmd);
	cdisk_ctx_free(f->ctx);
	free(f);
	return 0;
}

static void make_base(struct fixture *f, uint64_t size)
{
	int fd = open(f->base, O_RDWR | O_CREAT | O_TRUNC, 0600);
	uint8_t *buf = malloc(size);

	pattern_fill(buf, size, 0, 1);
	assert_int_equal(cd_pwrite_full(fd, buf, size, 0), 0);
	close(fd);
	free(buf);
}

static struct cdisk *create_open(struct fixture *f, uint64_t size, uint32_t bs,
				 bool with_base)
{
	struct cdisk_create_opts o = { .size = size, .block_size = bs,
				       .base = with_base ? f->base : NULL };
	struct cdisk *d;

	assert_int_equal(cdisk_create(f->ctx, f->disk, &o), 0);
	assert_int_equal(cdisk_open(f->ctx, f->disk, 0, &d), 0);
	return d;
}

static void expect(struct cdisk *d, uint64_t off, size_t len, uint64_t seed)
{
	uint8_t *buf = malloc(len);

	assert_int_equal(cdisk_pread(d, buf, len, off), 0);
	if (!pattern_check(buf, len, off, seed))
		fail_msg("content at %llu+%zu is not seed %llu", (unsigned long long)off,
			 len, (unsigned long long)seed);
	free(buf);
}

static void put(struct cdisk *d, uint64_t off, size_t len, uint64_t seed)
{
	uint8_t *buf = malloc(len);

	pattern_fill(buf, len, off, seed);
	assert_int_equal(cdisk_pwrite(d, buf, len, off), 0);
	free(buf);
}

static struct cdisk *reopen(struct fixture *f, struct cdisk *d)
{
	assert_int_equal(cdisk_close(d), 0);
	assert_int_equal(cdisk_open(f->ctx, f->disk, 0, &d), 0);
	return d;
}

static void test_read_mixes_overlay_and_base(void **state)
{
	struct fixture *f = *state;
	struct cdisk *d;

	make_base(f, 1 << 20);
	d = create_open(f, 1 << 20, 4096, true);
	expect(d, 0, 1 << 20, 1);
	put(d, 4096, 8192, 2);
	put(d, (1 << 20) - 4096, 4096, 3);   /* the last block */
	expect(d, 0, 4096, 1);
	expect(d, 4096, 8192, 2);
	expect(d, 12288, (1 << 20) - 16384, 1);
	expect(d, (1 << 20) - 4096, 4096, 3);
	d = reopen(f, d);
	expect(d, 4096, 8192, 2);
	expect(d, (1 << 20) - 4096, 4096, 3);
	assert_int_equal(d->present.count, 3);
	assert_int_equal(d->dirty.count, 3);
	assert_int_equal(cdisk_close(d), 0);
}

static void test_odd_sizes_and_edges(void **state)
{
	struct fixture *f = *state;
	struct cdisk *d = create_open(f, 3 * 512, 512, false);
	uint8_t buf[2048];

	expect(d, 0, 1536, 0);
	put(d, 1024, 512, 9);
	assert_int_equal(cdisk_pread(d, buf, 512, 1536), -EINVAL);
	assert_int_equal(cdisk_pwrite(d, buf, 1024, 1024), -EINVAL);
	assert_int_equal(cdisk_pwrite(d, buf, 512, 100), -EINVAL);
	assert_int_equal(cdisk_pwrite(d, buf, 0, 1536), 0);
	assert_int_equal(cdisk_pread(d, buf, 0, 0), 0);
	assert_int_equal(cdisk_flush(d), 0);
	d = reopen(f, d);
	expect(d, 1024, 512, 9);
	expect(d, 0, 1024, 0);
	assert_int_equal(cdisk_close(d), 0);
}

static void test_discard_and_zeroes(void **state)
{
	struct fixture *f = *state;
	struct cdisk *d;

	make_base(f, 256 << 10);
	d = create_open(f, 256 << 10, 4096, true);
	put(d, 0, 64 << 10, 2);
	assert_int_equal(cdisk_write_zeroes(d, 8192, 4096), 0);
	assert_int_equal(cdisk_discard(d, 16384, 128 << 10), 0);
	expect(d, 0, 4096, 2);
	expect(d, 4096, 8192, 0);
	expect(d, 12288, (64 << 10) - 12288, 2);
	expect(d, 64 << 10, 64 << 10, 1);
	expect(d, 128 << 10, 16384, 0);      /* over base data */
	assert_int_equal(cdisk_discard(d, 4096, 250 << 10), -EINVAL);
	d = reopen(f, d);
	expect(d, 128 << 10, 16384, 0);
	expect(d, 4096, 8192, 0);
	assert_int_equal(d->dirty.count, 16 + 4);
	assert_int_equal(cdisk_close(d), 0);
}

static void test_readonly_refuses_writes(void **state)
{
	struct fixture *f = *state;
	struct cdisk *d = create_open(f, 1 << 20, 4096, false), *ro;
	uint8_t buf[4096] = { 0 };

	put(d, 0, 4096, 5);
	assert_int_equal(cdisk_close(d), 0);
	assert_int_equal(cdisk_open(f->ctx, f->disk, CDISK_OPEN_RDONLY, &ro), 0);
	assert_int_equal(cdisk_pwrite(ro, buf, 4096, 0), -EROFS);
	assert_int_equal(cdisk_write_zeroes(ro, 4096, 0), -EROFS);
	expect(ro, 0, 4096, 5);
	assert_int_equal(cdisk_close(ro), 0);
}

static void test_second_opener_is_busy(void **state)
{
	struct fixture *f = *state;
	struct cdisk *d = create_open(f, 1 << 20, 4096, false), *d2;

	assert_int_equal(cdisk_open(f->ctx, f->disk, 0, &d2), -EBUSY);
	assert_non_null(strstr(cdisk_ctx_error(f->ctx), "in use by pid"));
	assert_int_equal(cdisk_open(f->ctx, f->disk, CDISK_OPEN_RDONLY, &d2), -EBUSY);
	assert_int_equal(cdisk_close(d), 0);
	assert_int_equal(cdisk_open(f->ctx, f->disk, CDISK_OPEN_RDONLY, &d), 0);
	assert_int_equal(cdisk_open(f->ctx, f->disk, CDISK_OPEN_RDONLY, &d2), 0);
	assert_int_equal(cdisk_close(d2), 0);
	assert_int_equal(cdisk_close(d), 0);
}

/* More hot extents than the activity log holds: old ones are evicted
 * once flushed, and nothing is lost. */
static void test_activity_log_overflow(void **state)
{
	struct fixture *f = *state;
	uint64_t extents = CD_AL_CAPACITY + 200, ext = CD_AL_EXTENT_BYTES;
	struct cdisk *d = create_open(f, extents * ext, 4096, false);

	for (uint64_t e = 0; e < extents; e++)
		put(d, e * ext, 4096, 2);
	assert_int_equal(cdisk_flush(d), 0);
	assert_int_equal(cd_mark_clean(d, 0, d->nblocks), 0);
	assert_int_equal(cdisk_flush(d), 0);
	assert_int_equal(d->dirty.count, 0);
	for (uint64_t e = 0; e < extents; e++)
		put(d, e * ext, 4096, 3);
	assert_true(d->al.count <= CD_AL_CAPACITY);
	assert_int_equal(d->dirty.count, extents);
	assert_int_equal(cdisk_flush(d), 0);
	d = reopen(f, d);
	for (uint64_t e = 0; e < extents; e += 97)
		expect(d, e * ext, 4096, 3);
	assert_int_equal(d->dirty.count, extents);
	assert_int_equal(cdisk_close(d), 0);
}

/* So many scattered writes before one flush that a journal record cannot
 * hold them: the flush writes a checkpoint instead. */
static void test_journal_overflow_checkpoints(void **state)
{
	struct fixture *f = *state;
	uint64_t n = 70000, bs = 512;
	struct cdisk *d = create_open(f, n * 2 * bs, (uint32_t)bs, false);
	uint64_t seq_before = d->sb.seq;

	for (uint64_t i = 0; i < n; i++)
		put(d, i * 2 * bs, bs, 4);
	assert_true(d->runs_overflow);
	assert_int_equal(cdisk_flush(d), 0);
	assert_false(d->runs_overflow);
	assert_true(d->sb.seq > seq_before);
	d = reopen(f, d);
	assert_int_equal(d->present.count, n);
	expect(d, (n - 1) * 2 * bs, bs, 4);
	expect(d, bs, bs, 0);
	assert_int_equal(cdisk_close(d), 0);
}

static uint64_t bits_in(struct cdisk *d, unsigned id)
{
	return cd_disk_bitmap(d, id)->count;
}

/* A first-layout disk is upgraded by the explicit call only; its data and
 * overlay state stay where they were, the new bitmaps come back from
 * checkpoints and from the journal after a crash, and more can be added
 * without moving anything. */
static void test_bitmaps_by_id(void **state)
{
	struct fixture *f = *state;
	struct cdisk *d = create_open(f, 64 << 20, 4096, false);
	uint8_t sb[CD_SB_SIZE];
	struct stat st;
	int fd;

	put(d, 4096 * 10, 4096 * 4, 7);
	d = reopen(f, d);
	fd = open(f->disk, O_RDONLY);
	assert_int_equal(cd_pread_full(fd, sb, sizeof(sb), 0), 0);
	assert_true(cd_is_zero(sb + 168, 20));
	assert_int_equal(d->sb.nbitmaps, 2);
	assert_int_equal(cd_disk_mark_locked(d, 2, 0, 1, true), -EINVAL);

	assert_int_equal(cd_disk_add_bitmaps(d, 3), 0);
	assert_true(d->sb.incompat & CD_FEATURE_INCOMPAT_BITMAPS);
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal((uint64_t)st.st_size, cd_file_size(&d->sb));
	assert_true(d->sb.bm_offset >= d->sb.data_offset + d->sb.size);
	assert_int_equal(cd_disk_mark_locked(d, 2, 100, 100, true), 0);
	assert_int_equal(cd_disk_mark_locked(d, 2, 150, 10, false), 0);
	d = reopen(f, d);
	assert_int_equal(d->sb.nbitmaps, 3);
	assert_int_equal(bits_in(d, 2), 90);
	assert_false(cd_bitmap_get(cd_disk_bitmap(d, 2), 155));
	expect(d, 4096 * 10, 4096 * 4, 7);

	/* Flushed into the journal, then lost with the process. */
	assert_int_equal(cd_disk_mark_locked(d, 2, 1000, 5, true), 0);
	assert_int_equal(cdisk_flush(d), 0);
	cd_disk_free(d);
	assert_int_equal(cdisk_open(f->ctx, f->disk, 0, &d), 0);
	assert_true(d->j_replayed > 0);
	assert_int_equal(bits_in(d, 2), 95);

	assert_int_equal(cd_disk_add_bitmaps(d, 5), 0);
	assert_int_equal(cd_disk_mark_locked(d, 4, 0, 16384, true), 0);
	d = reopen(f, d);
	assert_int_equal(d->sb.nbitmaps, 5);
	assert_int_equal(bits_in(d, 2), 95);
	assert_int_equal(bits_in(d, 3), 0);
	assert_int_equal(bits_in(d, 4), 16384);
	assert_int_equal(cd_disk_add_bitmaps(d, 9), -EINVAL);
	assert_int_equal(cd_disk_mark_locked(d, 5, 0, 1, true), -EINVAL);
	assert_int_equal(cd_disk_mark_locked(d, 2, 16383, 2, true), -EINVAL);
	expect(d, 4096 * 10, 4096 * 4, 7);
	assert_int_equal(cdisk_close(d), 0);
	close(fd);
}

static void test_create_is_idempotent_and_safe(void **state)
{
	struct fixture *f = *state;
	struct cdisk_create_opts o = { .size = 1 << 20 };

	assert_int_equal(cdisk_create(f->ctx, f->disk, &o), 0);
	assert_int_equal(cdisk_create(f->ctx, f->disk, &o), 1);
	o.size = 2 << 20;
	assert_int_equal(cdisk_create(f->ctx, f->disk, &o), -EEXIST);
	o.size = 1 << 20;
	o.block_size = 3000;
	assert_int_equal(cdisk_create(f->ctx, f->disk, &o), -EINVAL);
	o.block_size = 0;
	o.size = 1000;
	assert_int_equal(cdisk_create(f->ctx, "/nonexistent/dir/x.cdisk", &o), -EINVAL);
	o.size = 4096;
	assert_int_equal(cdisk_create(f->ctx, "/nonexistent/dir/x.cdisk", &o), -ENOENT);
}

static void test_info_counts(void **state)
{
	struct fixture *f = *state;
	struct cdisk *d = create_open(f, 1 << 20, 4096, false);
	struct cdisk_info info;

	put(d, 0, 3 * 4096, 5);
	assert_int_equal(cd_mark_clean(d, 0, 1), 0);
	assert_int_equal(cdisk_get_info(d, &info), 0);
	assert_int_equal(info.blocks, 256);
	assert_int_equal(info.blocks_present, 3);
	assert_int_equal(info.blocks_dirty, 2);
	assert_int_equal(strlen(info.uuid), 36);
	assert_int_equal(info.uuid[14], '4');
	assert_int_equal(cdisk_close(d), 0);
}

/* Two threads fail different requests on one disk at the same time, many
 * times: each must read its own cause back, never the other's. */
struct error_thread {
	struct cdisk *d;
	bool past_end;
	int wrong;
};

static void *fail_repeatedly(void *opaque)
{
	struct error_thread *t = opaque;
	uint8_t buf[4096];

	for (int i = 0; i < 20000; i++) {
		int r = t->past_end ? cdisk_pread(t->d, buf, sizeof(buf), 64ull << 20)
				    : cdisk_pread(t->d, buf, 100, 0);
		const char *msg = cdisk_ctx_error(cdisk_get_ctx(t->d));

		if (r != -EINVAL || !strstr(msg, t->past_end ? "past the end" : "not aligned"))
			t->wrong++;
	}
	return NULL;
}

/* A disk on a primary: reads and writes of any bytes go to the primary
 * in place, nothing is held in the file, and a device put at the
 * primary's path (another inode) is neither read nor written. */
static void test_primary_in_place(void **state)
{
	struct fixture *f = *state;
	struct cdisk_create_opts o = { .primary = f->base };
	char moved[160];
	uint8_t buf[700], file[700];
	struct cdisk *d;
	struct stat st;
	int fd;

	make_base(f, 1 << 20);
	assert_int_equal(cdisk_create(f->ctx, f->disk, &o), 0);
	assert_int_equal(stat(f->disk, &st), 0);
	assert_true((uint64_t)st.st_size < (16u << 20));
	assert_int_equal(cdisk_open(f->ctx, f->disk, 0, &d), 0);
	assert_int_equal(cdisk_size(d), 1 << 20);
	expect(d, 0, 1 << 20, 1);
	put(d, 8192, 8192, 2);
	memset(buf, 0xab, sizeof(buf));
	assert_int_equal(cdisk_pwrite_unaligned(d, buf, sizeof(buf), 3001), 0);
	assert_int_equal(cdisk_write_zeroes_unaligned(d, 100, 70000), 0);
	assert_int_equal(cdisk_flush(d), 0);
	assert_int_equal(d->present.count, 0);
	assert_int_equal(d->dirty.count, 0);
	d = reopen(f, d);
	assert_int_equal(cdisk_pread_unaligned(d, file, sizeof(file), 3001), 0);
	assert_memory_equal(file, buf, sizeof(buf));
	expect(d, 8192, 8192, 2);
	assert_int_equal(cdisk_close(d), 0);
	/* The primary file itself holds what was written. */
	fd = open(f->base, O_RDONLY);
	assert_int_equal(cd_pread_full(fd, file, sizeof(file), 3001), 0);
	assert_memory_equal(file, buf, sizeof(buf));
	assert_int_equal(cd_pread_full(fd, file, 100, 70000), 0);
	close(fd);
	assert_true(cd_is_zero(file, 100));

	snprintf(moved, sizeof(moved), "%s/old.img", f->dir);
	assert_int_equal(rename(f->base, moved), 0);
	make_base(f, 1 << 20);
	assert_int_equal(cdisk_open(f->ctx, f->disk, 0, &d), 0);
	assert_int_equal(cdisk_pwrite(d, buf, 512, 0), -EUCLEAN);
	assert_non_null(strstr(cdisk_ctx_error(f->ctx), "is not the device"));
	assert_int_equal(cdisk_pread(d, file, 512, 0), -EUCLEAN);
	assert_int_equal(cdisk_close(d), 0);
}

/* Requests that cannot wait on the network run without waking another
 * worker (nbd-conn.c, quick): whole-block writes to an overlay, and any
 * request on blocks it holds, never touch its base; anything else may,
 * until the base is known to be a file. */
static void test_quick_requests(void **state)
{
	struct fixture *f = *state;
	struct cdisk *d = create_open(f, 1 << 20, 4096, false);

	assert_true(cd_disk_quick(d, false, 100, 10));
	assert_true(cd_disk_quick(d, true, 100, 10));
	assert_int_equal(cdisk_close(d), 0);
	assert_int_equal(unlink(f->disk), 0);

	make_base(f, 1 << 20);
	d = create_open(f, 1 << 20, 4096, true);
	assert_int_equal(cdisk_close(d), 0);
	/* As cdisk-serve opens it: the base on first need. */
	assert_int_equal(cdisk_open(f->ctx, f->disk, CDISK_OPEN_NO_BASE, &d), 0);
	assert_true(cd_disk_quick(d, true, 8192, 8192));
	assert_false(cd_disk_quick(d, true, 8192, 4000));
	assert_false(cd_disk_quick(d, true, 100, 4096));
	assert_false(cd_disk_quick(d, false, 8192, 4096));
	/* Once a block is in the overlay, nothing on it needs the base. */
	put(d, 8192, 4096, 2);
	assert_true(cd_disk_quick(d, false, 8192, 4096));
	assert_true(cd_disk_quick(d, true, 8200, 100));
	assert_false(cd_disk_quick(d, true, 8200, 4096));
	assert_false(cd_disk_quick(d, false, 4096, 8192));
	expect(d, 0, 4096, 1);          /* opens the base: a file here */
	assert_true(cd_disk_quick(d, false, 8192, 4096));
	assert_true(cd_disk_quick(d, true, 100, 10));
	assert_int_equal(cdisk_close(d), 0);
	assert_int_equal(unlink(f->disk), 0);

	/* A primary's data is all on it: nothing is quick, whatever it is. */
	struct cdisk_create_opts o = { .primary = f->base };
	assert_int_equal(cdisk_create(f->ctx, f->disk, &o), 0);
	assert_int_equal(cdisk_open(f->ctx, f->disk, 0, &d), 0);
	assert_false(cd_disk_quick(d, true, 8192, 8192));
	assert_false(cd_disk_quick(d, false, 8192, 4096));
	assert_int_equal(cdisk_close(d), 0);
}

/* Block status of present blocks: a hole in the data area that ends
 * inside a block leaves that block data, not zeros (a client that skips
 * zeros, qemu-img convert or a copy over NBD, would lose it). */
static void test_status_holes_end_on_blocks(void **state)
{
	struct fixture *f = *state;
	struct cdisk *d = create_open(f, 1 << 20, 64 << 10, false);
	struct cdisk_extent ext[4];
	size_t n;

	put(d, 0, 128 << 10, 3);
	assert_int_equal(cdisk_flush(d), 0);
	assert_int_equal(fallocate(d->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				   (off_t)d->sb.data_offset, 96 << 10), 0);
	assert_int_equal(cdisk_block_status(d, 0, 128 << 10, ext, 4, &n), 0);
	assert_int_equal(n, 2);
	assert_int_equal(ext[0].length, 64 << 10);
	assert_true(ext[0].zero);
	assert_int_equal(ext[1].length, 64 << 10);
	assert_false(ext[1].zero);
	assert_int_equal(cdisk_close(d), 0);
}

static void test_errors_are_kept_per_thread(void **state)
{
	struct fixture *f = *state;
	struct cdisk_create_opts o = { .size = 4u << 20 };
	struct error_thread a = { .past_end = true }, b = { .past_end = false };
	pthread_t ta, tb;

	assert_int_equal(cdisk_create(f->ctx, f->disk, &o), 0);
	assert_int_equal(cdisk_open(f->ctx, f->disk, 0, &a.d), 0);
	b.d = a.d;
	pthread_create(&ta, NULL, fail_repeatedly, &a);
	pthread_create(&tb, NULL, fail_repeatedly, &b);
	pthread_join(ta, NULL);
	pthread_join(tb, NULL);
	assert_int_equal(a.wrong, 0);
	assert_int_equal(b.wrong, 0);
	assert_int_equal(cdisk_close(a.d), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_read_mixes_overlay_and_base, setup, teardown),
		cmocka_unit_test_setup_teardown(test_odd_sizes_and_edges, setup, teardown),
		cmocka_unit_test_setup_teardown(test_discard_and_zeroes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_readonly_refuses_writes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_second_opener_is_busy, setup, teardown),
		cmocka_unit_test_setup_teardown(test_activity_log_overflow, setup, teardown),
		cmocka_unit_test_setup_teardown(test_journal_overflow_checkpoints, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bitmaps_by_id, setup, teardown),
		cmocka_unit_test_setup_teardown(test_create_is_idempotent_and_safe, setup, teardown),
		cmocka_unit_test_setup_teardown(test_info_counts, setup, teardown),
		cmocka_unit_test_setup_teardown(test_primary_in_place, setup, teardown),
		cmocka_unit_test_setup_teardown(test_quick_requests, setup, teardown),
		cmocka_unit_test_setup_teardown(test_status_holes_end_on_blocks, setup, teardown),
		cmocka_unit_test_setup_teardown(test_errors_are_kept_per_thread, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Unit tests for the synchronous mirror over file targets: the initial
 * copy holds the whole virtual disk, writes in sync reach both sides
 * with no copy, a paused mirror is resent only what was written, a crash
 * sets only the activity log's extents out of sync, and attach refuses
 * what must not be a mirror. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../tests/pattern.h"
#include "cdisk.h"
#include "ctx.h"
#include "disk.h"
#include "format.h"
#include "util.h"

#define SIZE (16u << 20)
#define FIXTURE_DIR "/tmp/cdisk-mirror-XXXXXX"
#include "mirror-fixture.h"

/* How many bytes differ between the disk's view and the mirror file. */
static uint64_t differing(struct cdisk *d, const char *mirror)
{
	uint8_t *a = malloc(SIZE), *b = malloc(SIZE);
	int fd = open(mirror, O_RDONLY);
	uint64_t n = 0;

	assert_true(fd >= 0);
	assert_int_equal(cdisk_pread(d, a, SIZE, 0), 0);
	assert_int_equal(cd_pread_full(fd, b, SIZE, 0), 0);
	for (uint64_t i = 0; i < SIZE; i += BS)
		n += memcmp(a + i, b + i, BS) ? BS : 0;
	close(fd);
	free(a);
	free(b);
	return n;
}

static void copy(struct cdisk *d, struct cdisk_sync_stats *st)
{
	struct cdisk_sync_opts o = { 0 };

	assert_int_equal(cdisk_mirror_copy(d, &o, st), 0);
	assert_int_equal(st->left_bytes, 0);
}

static void test_attach_copies_the_whole_disk(void **state)
{
	struct fixture *f = *state;
	struct cdisk *d = create_open(f);
	struct cdisk_mirror_status s;
	struct cdisk_sync_stats st;

	make_file(f->mirror, SIZE, 9);
	write_at(d, 5 * BS, 3 * BS, 2);
	assert_int_equal(cdisk_mirror_attach(d, f->mirror), 0);
	assert_int_equal(cdisk_mirror_get_status(d, &s), 0);
	assert_int_equal(s.state, CDISK_MIRROR_COPYING);
	assert_int_equal(s.out_of_sync_bytes, SIZE);
	copy(d, &st);
	assert_int_equal(st.bytes, SIZE);
	assert_int_equal(differing(d, f->mirror), 0);
	assert_int_equal(cdisk_mirror_get_status(d, &s), 0);
	assert_int_equal(s.state, CDISK_MIRROR_IN_SYNC);
	/* The state survives a close. */
	assert_int_equal(cdisk_close(d), 0);
	assert_int_equal(cdisk_open(f->ctx, f->disk, CDISK_OPEN_RDONLY, &d), 0);
	assert_int_equal(cdisk_mirror_get_status(d, &s), 0);
	assert_int_equal(s.state, CDISK_MIRROR_IN_SYNC);
	assert_string_equal(s.uri, f->mirror);
	assert_int_equal(cdisk_close(d), 0);
}

/* A thin base: what the copy need not read.  Holes of the base (file
 * SEEK_DATA), and past its end, read as zeros unless the overlay holds
 * the block; the copy then zeroes the mirror there without reading. */
static void test_zero_spans_are_not_read(void **state)
{
	struct fixture *f = *state;
	struct cdisk_create_opts o = { .size = SIZE, .block_size = BS, .base = f->base };
	uint8_t data[64 << 10];
	struct cdisk_sync_stats st;
	struct cdisk *d;
	uint64_t span;
	int fd;

	fd = open(f->base, O_RDWR | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, SIZE / 2), 0);
	pattern_fill(data, sizeof(data), 1 << 20, 1);
	assert_int_equal(cd_pwrite_full(fd, data, sizeof(data), 1 << 20), 0);
	close(fd);
	assert_int_equal(cdisk_create(f->ctx, f->disk, &o), 0);
	assert_int_equal(cdisk_open(f->ctx, f->disk, 0, &d), 0);
	/* [0, 4M) holds base data and this block; [4M, 8M) is a hole of the
	 * base only, which the copy must zero over the mirror's pattern. */
	write_at(d, 2 << 20, BS, 2);

	assert_int_equal(cd_disk_zero_span(d, 0, 1 << 20, &span), 0);
	assert_int_equal(span, 1 << 20);
	assert_int_equal(cd_disk_zero_span(d, 0, 2 << 20, &span), 0);
	assert_int_equal(span, 1 << 20);
	assert_int_equal(cd_disk_zero_span(d, 1 << 20, 64 << 10, &span), 0);
	assert_int_equal(span, 0);
	/* The overlay's block is data, whatever the base holds there. */
	assert_int_equal(cd_disk_zero_span(d, (2 << 20) - 2 * BS, 64 << 10, &span), 0);
	assert_int_equal(span, 2 * BS);
	assert_int_equal(cd_disk_zero_span(d, 4 << 20, 4 << 20, &span), 0);
	assert_int_equal(span, 4 << 20);
	/* Past the base's end. */
	assert_int_equal(cd_disk_zero_span(d, SIZE / 2, SIZE / 2, &span), 0);
	assert_int_equal(span, SIZE / 2);

	make_file(f->mirror, SIZE, 9);
	assert_int_equal(cdisk_mirror_attach(d, f->mirror), 0);
	copy(d, &st);
	assert_int_equal(differing(d, f->mirror), 0);
	assert_int_equal(cdisk_close(d), 0);
}

static void test_writes_in_sync_reach_both(void **state)
{
	struct fixture *f = *state;
	struct cdisk *d = create_open(f);
	struct cdisk_mirror_status s;
	struct cdisk_sync_stats st;

	make_file(f->mirror, SIZE, 0);
	assert_int_equal(cdisk_mirror_attach(d, f->mirror), 0);
	copy(d, &st);
	write_at(d, 0, 64 * BS, 3);
	write_at(d, SIZE - BS, BS, 4);
	assert_int_equal(cdisk_write_zeroes(d, 8 * BS, 100 * BS), 0);
	assert_int_equal(cdisk_discard(d, 4 * BS, 200 * BS), 0);
	assert_int_equal(cdisk_pwrite_unaligned(d, "edge", 4, 3 * BS + 17), 0);
	assert_int_equal(cdisk_flush(d), 0);
	/* No copy ran: the writes themselves reached the mirror. */
	assert_int_equal(differing(d, f->mirror), 0);
	assert_int_equal(cdisk_mirror_get_status(d, &s), 0);
	assert_int_equal(s.state, CDISK_MIRROR_IN_SYNC);
	assert_int_equal(s.out_of_sync_bytes, 0);
	assert_int_equal(cdisk_close(d), 0);
}

static void test_paused_mirror_gets_only_what_was_written(void **state)
{
	struct fixture *f = *state;
	struct cdisk *d = create_open(f);
	struct cdisk_mirror_status s;
	struct cdisk_sync_stats st;

	make_file(f->mirror, SIZE, 0);
	assert_int_equal(cdisk_mirror_attach(d, f->mirror), 0);
	copy(d, &st);
	assert_int_equal(cdisk_mirror_pause(d, true), 0);
	write_at(d, 40 * BS, 10 * BS, 5);
	write_at(d, 3000 * BS, 2 * BS, 6);
	assert_int_equal(cdisk_mirror_get_status(d, &s), 0);
	assert_int_equal(s.state, CDISK_MIRROR_PAUSED);
	assert_int_equal(s.out_of_sync_bytes, 12 * BS);
	assert_int_equal(differing(d, f->mirror), 12 * BS);
	assert_int_equal(cdisk_mirror_pause(d, false), 0);
	copy(d, &st);
	assert_int_equal(st.bytes, 12 * BS);
	assert_int_equal(differing(d, f->mirror), 0);
	assert_int_equal(cdisk_close(d), 0);
}

static void test_crash_resends_only_the_activity_log(void **state)
{
	struct fixture *f = *state;
	struct cdisk *d = create_open(f);
	struct cdisk_mirror_status s;
	struct cdisk_sync_stats st;

	make_file(f->mirror, SIZE, 0);
	assert_int_equal(cdisk_mirror_attach(d, f->mirror), 0);
	copy(d, &st);
	write_at(d, 0, BS, 7);                       /* extent 0 */
	write_at(d, (8u << 20) + 5 * BS, BS, 8);     /* extent 2 */
	/* A crash: no close, no checkpoint. */
	cd_disk_free(d);
	assert_int_equal(cdisk_open(f->ctx, f->disk, 0, &d), 0);
	assert_int_equal(cdisk_mirror_get_status(d, &s), 0);
	assert_int_equal(s.recovered_bytes, 2 * CD_AL_EXTENT_BYTES);
	assert_int_equal(s.out_of_sync_bytes, 2 * CD_AL_EXTENT_BYTES);
	assert_int_equal(s.state, CDISK_MIRROR_COPYING);
	copy(d, &st);
	assert_int_equal(st.bytes, 2 * CD_AL_EXTENT_BYTES);
	assert_int_equal(differing(d, f->mirror), 0);
	assert_int_equal(cdisk_close(d), 0);
}

static void test_attach_refuses(void **state)
{
	struct fixture *f = *state;
	struct cdisk *d = create_open(f);
	struct cdisk_mirror_status s;
	char link[160];

	make_file(f->mirror, SIZE - BS, 0);
	assert_int_equal(cdisk_mirror_attach(d, f->mirror), -EINVAL);
	assert_non_null(strstr(cdisk_ctx_error(f->ctx), "less than the disk's"));
	/* The base, under another name, is the base. */
	snprintf(link, sizeof(link), "%s/other-name", f->dir);
	assert_int_equal(symlink(f->base, link), 0);
	assert_int_equal(cdisk_mirror_attach(d, link), -EINVAL);
	assert_non_null(strstr(cdisk_ctx_error(f->ctx), "own base"));
	assert_int_equal(cdisk_mirror_attach(d, "/nonexistent/m.img"), -ENOENT);
	assert_int_equal(cdisk_mirror_get_status(d, &s), 0);
	assert_int_equal(s.state, CDISK_MIRROR_NONE);
	make_file(f->mirror, SIZE, 0);
	assert_int_equal(cdisk_mirror_attach(d, f->mirror), 0);
	assert_int_equal(cdisk_mirror_attach(d, f->mirror), -EEXIST);
	assert_int_equal(cdisk_mirror_detach(d), 0);
	assert_int_equal(cdisk_mirror_get_status(d, &s), 0);
	assert_int_equal(s.state, CDISK_MIRROR_NONE);
	assert_int_equal(cdisk_close(d), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_attach_copies_the_whole_disk, setup, teardown),
		cmocka_unit_test_setup_teardown(test_zero_spans_are_not_read, setup, teardown),
		cmocka_unit_test_setup_teardown(test_writes_in_sync_reach_both, setup, teardown),
		cmocka_unit_test_setup_teardown(test_paused_mirror_gets_only_what_was_written,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_crash_resends_only_the_activity_log,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_attach_refuses, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Unit tests for the mirror's online verify over file targets: what
 * differs is found, in bytes, to the disk's last block; blocks out of
 * sync are not compared; a repair sets the differences out of sync,
 * durably; a mirror not in sync is refused. */
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
#include "mirror.h"
#include "util.h"

/* Not a whole number of the verify's 1 MiB regions. */
#define SIZE ((16u << 20) + 3 * 4096u)
#define FIXTURE_DIR "/tmp/cdisk-verify-XXXXXX"
#include "mirror-fixture.h"

static void spoil(const char *path, uint64_t off, size_t len)
{
	int fd = open(path, O_RDWR);
	uint8_t *buf = malloc(len);

	assert_true(fd >= 0);
	pattern_fill(buf, len, off, 77);
	assert_int_equal(cd_pwrite_full(fd, buf, len, off), 0);
	close(fd);
	free(buf);
}

/* A disk with its file mirror attached and copied: in sync. */
static struct cdisk *mirrored(struct fixture *f)
{
	struct cdisk *d = create_open(f);
	struct cdisk_sync_opts o = { 0 };
	struct cdisk_sync_stats st;

	make_file(f->mirror, SIZE, 9);
	write_at(d, 5 * BS, 3 * BS, 2);
	assert_int_equal(cdisk_mirror_attach(d, f->mirror), 0);
	assert_int_equal(cdisk_mirror_copy(d, &o, &st), 0);
	return d;
}

static uint64_t out_of_sync(struct cdisk *d)
{
	struct cdisk_mirror_status s;

	assert_int_equal(cdisk_mirror_get_status(d, &s), 0);
	return s.out_of_sync_bytes;
}

static void test_finds_what_differs_in_bytes(void **state)
{
	struct fixture *f = *state;
	struct cdisk *d = mirrored(f);
	struct cdisk_verify_opts o = { .rate = 1ull << 40 };
	struct cdisk_verify_result r;

	assert_int_equal(cdisk_mirror_verify(d, &o, &r), 0);
	assert_int_equal(r.nranges, 0);
	assert_int_equal(r.compared_bytes, SIZE);
	/* Two neighbouring blocks are one range; the last block, past the
	 * last whole region, is found too. */
	spoil(f->mirror, 7 * BS, BS);
	spoil(f->mirror, 8 * BS + 100, 1);
	spoil(f->mirror, SIZE - BS, BS);
	assert_int_equal(cdisk_mirror_verify(d, &o, &r), 0);
	assert_int_equal(r.nranges, 2);
	assert_int_equal(r.ranges[0].offset, 7 * BS);
	assert_int_equal(r.ranges[0].length, 2 * BS);
	assert_int_equal(r.ranges[1].offset, SIZE - BS);
	assert_int_equal(r.ranges[1].length, BS);
	assert_int_equal(r.differing_bytes, 3 * BS);
	assert_false(r.repaired);
	assert_int_equal(out_of_sync(d), 0);
	cdisk_verify_result_free(&r);
	assert_int_equal(cdisk_close(d), 0);
}

/* Called between regions: blocks of a later region set out of sync (as a
 * write that missed the mirror sets them) over a spoilt mirror. */
static void mark_later(void *opaque, uint64_t done, uint64_t total)
{
	struct cdisk *d = opaque;

	(void)total;
	if (done != 1u << 20)
		return;
	pthread_mutex_lock(&d->lock);
	assert_int_equal(cd_disk_mark_locked(d, CD_BM_MIRROR, (5u << 20) / BS, 4, true), 0);
	pthread_mutex_unlock(&d->lock);
}

static void test_out_of_sync_not_compared_and_repair_marks(void **state)
{
	struct fixture *f = *state;
	struct cdisk *d = mirrored(f);
	struct cdisk_verify_opts o = { .rate = 1ull << 40, .repair = true,
				       .progress = mark_later };
	struct cdisk_verify_result r;

	o.opaque = d;
	spoil(f->mirror, 5u << 20, 4 * BS);
	spoil(f->mirror, 9u << 20, BS);
	assert_int_equal(cdisk_mirror_verify(d, &o, &r), 0);
	assert_int_equal(r.out_of_sync_bytes, 4 * BS);
	assert_int_equal(r.compared_bytes, SIZE - 4 * BS);
	assert_int_equal(r.nranges, 1);
	assert_int_equal(r.ranges[0].offset, 9u << 20);
	assert_true(r.repaired);
	/* Set out of sync, durably: the four marked and the one found. */
	assert_int_equal(out_of_sync(d), 5 * BS);
	cdisk_verify_result_free(&r);
	assert_int_equal(cdisk_close(d), 0);
	assert_int_equal(cdisk_open(f->ctx, f->disk, CDISK_OPEN_RDONLY, &d), 0);
	assert_int_equal(out_of_sync(d), 5 * BS);
	assert_int_equal(cdisk_close(d), 0);
}

static void test_refuses(void **state)
{
	struct fixture *f = *state;
	struct cdisk *d = create_open(f);
	struct cdisk_verify_opts o = { 0 };
	struct cdisk_verify_result r;

	assert_int_equal(cdisk_mirror_verify(d, &o, &r), -ENOENT);
	make_file(f->mirror, SIZE, 9);
	assert_int_equal(cdisk_mirror_attach(d, f->mirror), 0);
	/* Copying: the copy would send what a verify calls different. */
	assert_int_equal(cdisk_mirror_verify(d, &o, &r), -EAGAIN);
	assert_non_null(strstr(cdisk_ctx_error(f->ctx), "cannot verify while copying"));
	assert_int_equal(cdisk_mirror_pause(d, true), 0);
	assert_int_equal(cdisk_mirror_verify(d, &o, &r), -EAGAIN);
	assert_non_null(strstr(cdisk_ctx_error(f->ctx), "cannot verify while paused"));
	assert_int_equal(cdisk_close(d), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_finds_what_differs_in_bytes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_out_of_sync_not_compared_and_repair_marks,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_refuses, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

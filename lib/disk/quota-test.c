/* Unit tests for the space quota shared by disks: what counts, the
 * refusal before any data is written, several disks on one quota, and
 * the count taken back at close. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cdisk.h"
#include "ctx.h"
#include "quota.h"

#define MiB (1024u * 1024u)

struct fixture {
	char dir[64];
	struct cdisk_ctx *ctx;
	struct cdisk *a, *b;
	struct cd_quota *q;
	uint8_t *buf;
};

static struct cdisk *new_disk(struct fixture *f, const char *name)
{
	struct cdisk_create_opts o = { .size = 16 * MiB };
	struct cdisk *d = NULL;
	char path[128];

	snprintf(path, sizeof(path), "%s/%s", f->dir, name);
	assert_true(cdisk_create(f->ctx, path, &o) >= 0);
	assert_int_equal(cdisk_open(f->ctx, path, 0, &d), 0);
	return d;
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	strcpy(f->dir, "/tmp/cdisk-quota-XXXXXX");
	if (!f || !mkdtemp(f->dir))
		return -1;
	f->ctx = cdisk_ctx_new();
	snprintf(f->ctx->cfg.backup_dir, sizeof(f->ctx->cfg.backup_dir), "%s/meta", f->dir);
	f->a = new_disk(f, "a.cdisk");
	f->b = new_disk(f, "b.cdisk");
	f->q = cd_quota_new("alice");
	f->buf = calloc(1, 4 * MiB);
	memset(f->buf, 0x5a, 4 * MiB);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	char cmd[128];

	cdisk_close(f->a);
	cdisk_close(f->b);
	cd_quota_put(f->q);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
	assert_int_equal(system(cmd), 0);
	cdisk_ctx_free(f->ctx);
	free(f->buf);
	free(f);
	return 0;
}

static void test_counts_what_disks_hold(void **state)
{
	struct fixture *f = *state;

	assert_int_equal(cdisk_pwrite(f->a, f->buf, 2 * MiB, 0), 0);
	assert_int_equal(cd_disk_set_quota(f->a, f->q), 0);
	assert_int_equal(cd_quota_used(f->q), 2 * MiB);
	assert_int_equal(cd_disk_set_quota(f->a, f->q), -EEXIST);
	assert_int_equal(cd_disk_set_quota(f->b, f->q), 0);
	assert_int_equal(cdisk_pwrite(f->b, f->buf, 1 * MiB, 4 * MiB), 0);
	assert_int_equal(cd_quota_used(f->q), 3 * MiB);
	/* Overwrites take nothing new. */
	assert_int_equal(cdisk_pwrite(f->a, f->buf, 2 * MiB, 0), 0);
	assert_int_equal(cd_quota_used(f->q), 3 * MiB);
	/* A closed disk no longer counts. */
	assert_int_equal(cdisk_close(f->a), 0);
	f->a = NULL;
	assert_int_equal(cd_quota_used(f->q), 1 * MiB);
}

static void test_refuses_before_writing(void **state)
{
	struct fixture *f = *state;
	uint8_t back[4096];

	cd_quota_set_limit(f->q, 3 * MiB);
	assert_int_equal(cd_disk_set_quota(f->a, f->q), 0);
	assert_int_equal(cd_disk_set_quota(f->b, f->q), 0);
	assert_int_equal(cdisk_pwrite(f->a, f->buf, 2 * MiB, 0), 0);
	assert_int_equal(cdisk_pwrite(f->b, f->buf, 1 * MiB, 0), 0);
	/* Full: a write of new blocks on either disk fails and nothing of it
	 * is written, also one that is partly over held blocks; one wholly
	 * over held blocks goes on. */
	assert_int_equal(cdisk_pwrite(f->b, f->buf, 4096, 8 * MiB), -ENOSPC);
	assert_non_null(strstr(cdisk_ctx_error(f->ctx), "the quota of alice is full"));
	assert_int_equal(cdisk_pread(f->b, back, sizeof(back), 8 * MiB), 0);
	assert_int_equal(back[0], 0);
	assert_int_equal(cdisk_pwrite(f->a, f->buf, 2 * MiB, 1 * MiB), -ENOSPC);
	assert_int_equal(cdisk_pwrite(f->a, f->buf, 2 * MiB, 0), 0);
	assert_int_equal(cd_quota_used(f->q), 3 * MiB);
	/* Writes that are not whole blocks are checked as well. */
	assert_int_equal(cdisk_pwrite_unaligned(f->b, f->buf, 1000, 8 * MiB + 100), -ENOSPC);
	/* Zeroing and discard need no space: on a disk with no base, what it
	 * does not hold reads as zeros already and takes nothing. */
	assert_int_equal(cdisk_discard(f->b, 4 * MiB, 8 * MiB), 0);
	assert_int_equal(cdisk_write_zeroes(f->b, 4 * MiB, 12 * MiB), 0);
	assert_int_equal(cd_quota_used(f->q), 3 * MiB);
	assert_int_equal(cdisk_pread(f->b, back, sizeof(back), 0), 0);
	assert_int_equal(back[0], 0x5a);
	assert_int_equal(cdisk_discard(f->b, 1 * MiB, 0), 0);
	assert_int_equal(cdisk_pread(f->b, back, sizeof(back), 0), 0);
	assert_int_equal(back[0], 0);
	/* A raised limit takes effect at once; none is no limit. */
	cd_quota_set_limit(f->q, 4 * MiB);
	assert_int_equal(cdisk_pwrite(f->b, f->buf, 1 * MiB, 8 * MiB), 0);
	cd_quota_set_limit(f->q, 0);
	assert_int_equal(cdisk_pwrite(f->b, f->buf, 4 * MiB, 12 * MiB), 0);
	assert_int_equal(cd_quota_used(f->q), 8 * MiB);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_counts_what_disks_hold, setup, teardown),
		cmocka_unit_test_setup_teardown(test_refuses_before_writing, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Unit tests for the target interface and the file target. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

static char path[64];

static int setup(void **state)
{
	int fd;

	(void)state;
	strcpy(path, "/tmp/cdisk-target-XXXXXX");
	fd = mkstemp(path);
	if (fd < 0 || ftruncate(fd, 1 << 20) < 0)
		return -1;
	close(fd);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	unlink(path);
	return 0;
}

static void test_read_write_flush_zero(void **state)
{
	struct cdisk_ctx ctx = { 0 };
	struct cd_target *t;
	uint8_t buf[8192], back[8192];

	(void)state;
	assert_int_equal(cd_target_open(&ctx, path, false, &t), 0);
	assert_int_equal(t->size, 1 << 20);
	assert_true(t->can_flush && t->can_zero && !t->readonly);
	memset(buf, 0x5a, sizeof(buf));
	assert_int_equal(cd_target_pwrite(t, buf, sizeof(buf), 4096), 0);
	assert_int_equal(cd_target_flush(t), 0);
	assert_int_equal(cd_target_pread(t, back, sizeof(back), 4096), 0);
	assert_memory_equal(buf, back, sizeof(buf));
	assert_int_equal(cd_target_zero(t, 4096, 8192), 0);
	assert_int_equal(cd_target_pread(t, back, 4096, 8192), 0);
	memset(buf, 0, 4096);
	assert_memory_equal(buf, back, 4096);
	/* Past the end: refused with the URI named, nothing done. */
	assert_int_equal(cd_target_pwrite(t, buf, 4096, (1 << 20) - 2048), -EINVAL);
	assert_non_null(strstr(ctx.error, path));
	assert_int_equal(cd_target_pread(t, buf, 1, 1 << 20), -EINVAL);
	cd_target_close(t);
}

static void test_readonly_refused_before_sending(void **state)
{
	struct cdisk_ctx ctx = { 0 };
	struct cd_target *t;
	uint8_t buf[4096] = { 1 };
	struct stat before, after;

	(void)state;
	stat(path, &before);
	assert_int_equal(cd_target_open(&ctx, path, true, &t), 0);
	assert_int_equal(cd_target_pwrite(t, buf, sizeof(buf), 0), -EROFS);
	assert_non_null(strstr(ctx.error, "it is read-only"));
	assert_int_equal(cd_target_zero(t, 4096, 0), -EROFS);
	/* A read-only target has nothing to flush. */
	assert_int_equal(cd_target_flush(t), 0);
	cd_target_close(t);
	stat(path, &after);
	assert_int_equal(before.st_mtime, after.st_mtime);
	assert_int_equal(before.st_blocks, after.st_blocks);
}

static void test_open_errors(void **state)
{
	struct cdisk_ctx ctx = { 0 };
	struct cd_target *t;

	(void)state;
	assert_int_equal(cd_target_open(&ctx, "/nonexistent/x.img", true, &t), -ENOENT);
	assert_non_null(strstr(ctx.error, "cannot open '/nonexistent/x.img'"));
	assert_int_equal(cd_target_open(&ctx, "/tmp", true, &t), -EINVAL);
	assert_non_null(strstr(ctx.error, "not a regular file or block device"));
	assert_int_equal(cd_target_open(&ctx, "nbd://host/e", true, &t), -ENOTSUP);
	assert_non_null(strstr(ctx.error, "nbd targets are not supported"));
	assert_int_equal(cd_target_open(&ctx, "ftp://x/y", true, &t), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_read_write_flush_zero, setup, teardown),
		cmocka_unit_test_setup_teardown(test_readonly_refused_before_sending, setup, teardown),
		cmocka_unit_test(test_open_errors),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Unit tests for the whole-buffer I/O helpers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "cdisk.h"
#include "util.h"

/* A read without waiting (the server's reader, cd_nowait_set) of a file
 * in memory is done there and then: tmpfs refuses RWF_NOWAIT before Linux
 * 6.6, and its reads would all go to a worker. */
static void test_nowait_reads_tmpfs(void **state)
{
	char path[] = "/dev/shm/cdisk-unit-XXXXXX";
	uint8_t out[8192], in[8192];
	struct statfs fs;
	int fd = mkstemp(path);

	(void)state;
	assert_true(fd >= 0);
	unlink(path);
	assert_int_equal(fstatfs(fd, &fs), 0);
	assert_true(fs.f_type == TMPFS_MAGIC);
	for (size_t i = 0; i < sizeof(out); i++)
		out[i] = (uint8_t)(i * 7);
	assert_int_equal(cd_pwrite_full(fd, out, sizeof(out), 4096), 0);
	cd_nowait_set(true);
	assert_int_equal(cd_pread_full(fd, in, sizeof(in), 4096), 0);
	cd_nowait_set(false);
	assert_memory_equal(in, out, sizeof(in));
	close(fd);
}

/* Anything the flag cannot be used for (a pipe) would wait: the worker's
 * plain read says what it really is. */
static void test_nowait_declines_what_it_cannot_tell(void **state)
{
	int p[2];
	uint8_t b[16];

	(void)state;
	assert_int_equal(pipe(p), 0);
	cd_nowait_set(true);
	assert_int_equal(cd_pread_full(p[0], b, sizeof(b), 0), -CD_WOULD_WAIT);
	cd_nowait_set(false);
	close(p[0]);
	close(p[1]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_nowait_reads_tmpfs),
		cmocka_unit_test(test_nowait_declines_what_it_cannot_tell),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

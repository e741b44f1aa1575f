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
#include <sys/syscall.h>
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

/* The writes cd_pwrite_full makes, seen by standing in for libc's pwrite
 * (this program's own definition wins at link time) and passing each on
 * to the kernel. */
static size_t pwrite_calls, pwrite_largest;

ssize_t pwrite(int fd, const void *buf, size_t len, off_t off)
{
	pwrite_calls++;
	if (len > pwrite_largest)
		pwrite_largest = len;
	return syscall(SYS_pwrite64, fd, buf, len, off);
}

/* Large writes leave in pieces of at most 64 KiB, or the page cache's
 * large folios make every later small write into them slow (util.c). */
static void test_large_write_goes_in_pieces(void **state)
{
	char path[] = "/tmp/cdisk-unit-XXXXXX";
	size_t len = (1u << 20) + 5;
	uint8_t *out = malloc(len), *in = malloc(len);
	int fd = mkstemp(path);

	(void)state;
	assert_true(fd >= 0 && out && in);
	unlink(path);
	for (size_t i = 0; i < len; i++)
		out[i] = (uint8_t)(i * 13 + (i >> 16));
	pwrite_calls = pwrite_largest = 0;
	assert_int_equal(cd_pwrite_full(fd, out, len, 4096), 0);
	assert_true(pwrite_largest <= 64u << 10);
	assert_int_equal(pwrite_calls, 17);
	assert_int_equal(cd_pread_full(fd, in, len, 4096), 0);
	assert_memory_equal(in, out, len);
	close(fd);
	free(out);
	free(in);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_nowait_reads_tmpfs),
		cmocka_unit_test(test_nowait_declines_what_it_cannot_tell),
		cmocka_unit_test(test_large_write_goes_in_pieces),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

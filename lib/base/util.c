/* Small helpers: whole-buffer I/O, zero tests, clocks. */
#include <stdio.h>
#include <stdlib.h>
#include <linux/magic.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include "cdisk.h"
#include "util.h"

static __thread bool nowait;

void cd_nowait_set(bool on)
{
	nowait = on;
}

bool cd_nowait(void)
{
	return nowait;
}

/* Memory is all a read of it waits for: tmpfs refuses RWF_NOWAIT (before
 * Linux 6.6), and its reads would otherwise all go to a worker. */
static bool in_memory(int fd)
{
	struct statfs fs;

	return fstatfs(fd, &fs) == 0 && (fs.f_type == TMPFS_MAGIC || fs.f_type == RAMFS_MAGIC);
}

static ssize_t pread_once(int fd, void *buf, size_t len, uint64_t off)
{
	struct iovec iov = { buf, len };
	ssize_t n;

	if (!nowait)
		return pread(fd, buf, len, (off_t)off);
	n = preadv2(fd, &iov, 1, (off_t)off, RWF_NOWAIT);
	if (n < 0 && errno == EOPNOTSUPP && in_memory(fd))
		n = pread(fd, buf, len, (off_t)off);
	/* Not in the page cache, a file system that cannot tell, or any
	 * error: the worker's plain pread does it again and tells the real
	 * one, rather than a guest getting an error of this path only. */
	if (n < 0 && errno != EINTR)
		errno = CD_WOULD_WAIT;
	return n;
}

int cd_pread_full(int fd, void *buf, size_t len, uint64_t off)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t n = pread_once(fd, p, len, off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -ENODATA;
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

/* The page cache gives a write a folio as large as the write (ext4 since
 * Linux 6.16), and every later write into a folio walks all its blocks'
 * buffer heads under the inode's lock: after 1 MiB writes, 4 KiB random
 * writes into the same range took 5 times the CPU and a quarter of the
 * rate (bench/serve.sh's random writes after its sequential ones).
 * Writes of at most this much keep the folios small, and cost
 * sequential writes nothing measurable. */
#define WRITE_PIECE_MAX (64u << 10)

int cd_pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = pwrite(fd, p, len < WRITE_PIECE_MAX ? len : WRITE_PIECE_MAX,
				   (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

bool cd_is_zero(const void *buf, size_t len)
{
	const uint8_t *p = buf;

	/* Compare the buffer with itself shifted by one: fast, no table. */
	if (len == 0)
		return true;
	return p[0] == 0 && memcmp(p, p + 1, len - 1) == 0;
}

bool cd_parse_bool(const char *v, bool *out)
{
	if (!strcmp(v, "yes") || !strcmp(v, "true") || !strcmp(v, "1")) {
		*out = true;
		return true;
	}
	if (!strcmp(v, "no") || !strcmp(v, "false") || !strcmp(v, "0")) {
		*out = false;
		return true;
	}
	return false;
}

/* Make the folders above path (0700), as a file about to be written
 * there needs them. */
int cd_mkdir_parents(char *path)
{
	for (char *p = strchr(path + 1, '/'); p; p = strchr(p + 1, '/')) {
		*p = 0;
		int r = mkdir(path, 0700);
		*p = '/';
		if (r < 0 && errno != EEXIST)
			return -errno;
	}
	return 0;
}

static __thread const struct cd_wait_hook *wait_hook;
static __thread unsigned wait_depth;

void cd_wait_hook_set(const struct cd_wait_hook *hook)
{
	wait_hook = hook;
}

void cd_wait_begin(void)
{
	if (wait_depth++ == 0 && wait_hook)
		wait_hook->begin(wait_hook->arg);
}

void cd_wait_end(void)
{
	if (--wait_depth == 0 && wait_hook)
		wait_hook->end(wait_hook->arg);
}

unsigned cd_cpus(void)
{
	cpu_set_t set;
	long n;

	if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
		return (unsigned)CPU_COUNT(&set);
	n = sysconf(_SC_NPROCESSORS_ONLN);
	return n > 0 ? (unsigned)n : 1;
}

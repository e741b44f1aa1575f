/* Small helpers: whole-buffer I/O, sizes. */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cdisk.h"
#include "util.h"

int cd_pread_full(int fd, void *buf, size_t len, uint64_t off)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t n = pread(fd, p, len, (off_t)off);
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

int cd_pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = pwrite(fd, p, len, (off_t)off);
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

int cdisk_parse_limit(const char *s, double max, double *out)
{
	char *end;
	double v;

	if (!strcmp(s, "none")) {
		*out = -1;
		return 0;
	}
	errno = 0;
	v = strtod(s, &end);
	if (errno || *end || end == s || !(v >= 0))
		return -EINVAL;
	if (v > max)
		return -ERANGE;
	*out = v;
	return 0;
}

int cdisk_parse_ceph_health(const char *s)
{
	static const char *const ranks[] = { "ok", "warn", "err" };

	for (int i = 0; i < 3; i++)
		if (!strcmp(s, ranks[i]))
			return i;
	return -EINVAL;
}

int cdisk_parse_size(const char *s, uint64_t *out)
{
	static const char units[] = "KMGTPE";
	char *end;
	double value;
	uint64_t mult = 1;

	while (isspace((unsigned char)*s))
		s++;
	if (!isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	value = strtod(s, &end);
	if (errno || end == s || !isfinite(value))
		return -EINVAL;
	if (*end) {
		const char *u = strchr(units, toupper((unsigned char)*end));
		if (!u)
			return -EINVAL;
		for (long i = 0; i <= u - units; i++)
			mult <<= 10;
		end++;
		if (*end == 'i' && end[1] == 'B')
			end += 2;
		else if (*end == 'B')
			end++;
		if (*end)
			return -EINVAL;
	}
	if (value * (double)mult >= 18446744073709551615.0)
		return -ERANGE;
	value *= (double)mult;
	if (value != floor(value))
		return -EINVAL;
	*out = (uint64_t)value;
	return 0;
}

const char *cdisk_format_size(uint64_t bytes, char *buf, size_t len)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
	double v = (double)bytes;
	unsigned u = 0;

	while (v >= 1024 && u + 1 < CD_ARRAY_SIZE(units)) {
		v /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%llu B", (unsigned long long)bytes);
	else if (v == floor(v))
		snprintf(buf, len, "%.0f %s", v, units[u]);
	else
		snprintf(buf, len, "%.1f %s", v, units[u]);
	return buf;
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

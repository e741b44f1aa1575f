/* Text a person types or reads; see text.h for who links it. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cdisk.h"
#include "text.h"
#include "util.h"

int cd_exit_code(int err)
{
	switch (err) {
	case 0:
		return CDISK_EXIT_OK;
	case -EINVAL:
	case -ERANGE:
	case -EFBIG:
	case -ENAMETOOLONG:
		return CDISK_EXIT_USAGE;
	case -ECONNREFUSED:
	case -EHOSTUNREACH:
	case -ENETUNREACH:
	case -EHOSTDOWN:
	case -ENETDOWN:
	case -ECONNRESET:
	case -ENXIO:
		return CDISK_EXIT_UNREACHABLE;
	case -EBUSY:
		return CDISK_EXIT_BUSY;
	case -EACCES:
	case -EPERM:
	case -EROFS:
	case -EKEYREJECTED:
		return CDISK_EXIT_PERMISSION;
	case -ENOENT:
	case -ENOTDIR:
		return CDISK_EXIT_NOT_FOUND;
	case -EUCLEAN:
	case -ENOMSG:
	case -EPROTONOSUPPORT:
	case -EBADMSG:
		return CDISK_EXIT_CORRUPT;
	case -ETIMEDOUT:
	case -EINTR:
	case -EAGAIN:   /* a server busy, or a verdict that says not now */
		return CDISK_EXIT_TRY_LATER;
	default:
		return CDISK_EXIT_FAILURE;
	}
}

const char *cd_exit_name(int code)
{
	static const char *const names[] = {
		[CDISK_EXIT_OK] = "success",
		[CDISK_EXIT_FAILURE] = "failure",
		[CDISK_EXIT_USAGE] = "usage error",
		[CDISK_EXIT_UNREACHABLE] = "unreachable",
		[CDISK_EXIT_BUSY] = "busy",
		[CDISK_EXIT_PERMISSION] = "permission denied",
		[CDISK_EXIT_NOT_FOUND] = "not found",
		[CDISK_EXIT_CORRUPT] = "corrupt metadata",
		[CDISK_EXIT_TRY_LATER] = "try later",
		[CDISK_EXIT_UNHEALTHY] = "unhealthy",
		[CDISK_EXIT_REFUSED] = "refused by a safety guard",
		[CDISK_EXIT_CONFLICT] = "conflict",
	};

	if (code < 0 || (size_t)code >= CD_ARRAY_SIZE(names) || !names[code])
		return "unknown";
	return names[code];
}

int cd_parse_size(const char *s, uint64_t *out)
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

int cd_parse_limit(const char *s, double max, double *out)
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

int cd_parse_ceph_health(const char *s)
{
	static const char *const ranks[] = { "ok", "warn", "err" };

	for (int i = 0; i < 3; i++)
		if (!strcmp(s, ranks[i]))
			return i;
	return -EINVAL;
}

const char *cd_format_size(uint64_t bytes, char *buf, size_t len)
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

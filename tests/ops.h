/* The test tools' operations: "name:N:N:N", numbers with K/M/G suffixes. */
#ifndef CDISK_TEST_OPS_H
#define CDISK_TEST_OPS_H

#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "cdisk.h"
#include "text.h"

/* The n numbers after the operation's name; -EINVAL unless exactly n. */
static inline int op_numbers(const char *op, uint64_t *v, int n)
{
	const char *p = strchr(op, ':');

	for (int i = 0; i < n; i++) {
		char tmp[64];
		const char *end;
		size_t len;

		if (!p)
			return -EINVAL;
		p++;
		end = strchr(p, ':');
		len = end ? (size_t)(end - p) : strlen(p);
		if (len >= sizeof(tmp))
			return -EINVAL;
		memcpy(tmp, p, len);
		tmp[len] = 0;
		if (cd_parse_size(tmp, &v[i]) < 0)
			return -EINVAL;
		p = end;
	}
	return p ? -EINVAL : 0;
}

#endif

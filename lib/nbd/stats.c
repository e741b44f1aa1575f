/* Request statistics: counters and log-linear latency histograms.
 *
 * A bucket per eighth of a power of two keeps quantiles at most 12.5% above
 * the truth at a fixed 1.8 KiB per op, whatever the number of requests: the
 * histograms of many exports and users stay small, and a p999 needs no
 * sample kept. */
#include <string.h>

#include "nbd.h"
#include "stats.h"

const char *const cd_stat_op_names[CD_STAT_NOPS] = {
	[CD_STAT_READ] = "read",
	[CD_STAT_WRITE] = "write",
	[CD_STAT_ZERO] = "zero",
	[CD_STAT_TRIM] = "trim",
	[CD_STAT_FLUSH] = "flush",
	[CD_STAT_BLOCK_STATUS] = "block_status",
	[CD_STAT_BACKGROUND] = "background",
	[CD_STAT_OTHER] = "other",
};

enum cd_stat_op cd_stat_op_of_nbd(uint16_t type)
{
	switch (type) {
	case NBD_CMD_READ: return CD_STAT_READ;
	case NBD_CMD_WRITE: return CD_STAT_WRITE;
	case NBD_CMD_WRITE_ZEROES: return CD_STAT_ZERO;
	case NBD_CMD_TRIM: return CD_STAT_TRIM;
	case NBD_CMD_FLUSH: return CD_STAT_FLUSH;
	case NBD_CMD_BLOCK_STATUS: return CD_STAT_BLOCK_STATUS;
	default: return CD_STAT_OTHER;
	}
}

unsigned cd_stat_bucket_of(uint64_t ns)
{
	unsigned e, sub;

	if (ns < CD_STAT_MIN_NS)
		return 0;
	e = 63 - (unsigned)__builtin_clzll(ns) - 10;   /* 2^(10+e) <= ns */
	sub = (unsigned)((ns >> (e + 10 - 3)) & (CD_STAT_SUB - 1));
	if (e * CD_STAT_SUB + sub >= CD_STAT_BUCKETS)
		return CD_STAT_BUCKETS - 1;
	return e * CD_STAT_SUB + sub;
}

uint64_t cd_stat_bucket_bound(unsigned i)
{
	unsigned e = i / CD_STAT_SUB, sub = i % CD_STAT_SUB;

	if (i >= CD_STAT_BUCKETS - 1)
		return UINT64_MAX;
	return (CD_STAT_MIN_NS << e) + ((CD_STAT_MIN_NS << e) >> 3) * (sub + 1);
}

void cd_io_stats_record(struct cd_io_stats *st, enum cd_stat_op op, uint64_t bytes,
			int err, uint64_t latency_ns)
{
	struct cd_op_stats *o = &st->op[op < CD_STAT_NOPS ? op : CD_STAT_OTHER];

	__atomic_add_fetch(&o->requests, 1, __ATOMIC_RELAXED);
	if (err < 0)
		__atomic_add_fetch(&o->errors, 1, __ATOMIC_RELAXED);
	else
		__atomic_add_fetch(&o->bytes, bytes, __ATOMIC_RELAXED);
	__atomic_add_fetch(&o->buckets[cd_stat_bucket_of(latency_ns)], 1, __ATOMIC_RELAXED);
}

void cd_io_stats_depth(struct cd_io_stats *st, int64_t change)
{
	__atomic_add_fetch(&st->depth, (uint64_t)change, __ATOMIC_RELAXED);
}

void cd_io_stats_limit_wait(struct cd_io_stats *st, uint64_t wait_ns)
{
	__atomic_add_fetch(&st->limit_waits, 1, __ATOMIC_RELAXED);
	__atomic_add_fetch(&st->limit_wait_ns, wait_ns, __ATOMIC_RELAXED);
}

static uint64_t load(const uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

void cd_io_stats_snapshot(const struct cd_io_stats *st, struct cd_io_stats *out)
{
	for (unsigned op = 0; op < CD_STAT_NOPS; op++) {
		const struct cd_op_stats *o = &st->op[op];
		struct cd_op_stats *c = &out->op[op];
		uint64_t n = 0;

		c->errors = load(&o->errors);
		c->bytes = load(&o->bytes);
		for (unsigned i = 0; i < CD_STAT_BUCKETS; i++)
			n += c->buckets[i] = load(&o->buckets[i]);
		/* The histogram is the count a reader can check a quantile
		 * against; the counter may have run ahead of it. */
		c->requests = n;
	}
	out->depth = load(&st->depth);
	out->limit_waits = load(&st->limit_waits);
	out->limit_wait_ns = load(&st->limit_wait_ns);
}

uint64_t cd_op_stats_quantile(const struct cd_op_stats *o, double q)
{
	uint64_t total = 0, want, seen = 0;

	for (unsigned i = 0; i < CD_STAT_BUCKETS; i++)
		total += o->buckets[i];
	if (!total)
		return 0;
	want = (uint64_t)(q * (double)total + 0.999999);
	if (want < 1)
		want = 1;
	for (unsigned i = 0; i < CD_STAT_BUCKETS; i++) {
		seen += o->buckets[i];
		if (seen >= want)
			return cd_stat_bucket_bound(i);
	}
	return cd_stat_bucket_bound(CD_STAT_BUCKETS - 1);
}

/* Request statistics as JSON: what control "status" says of an export or
 * a user, and what cdisk-info shows and turns into Prometheus text.
 *
 * The fine histogram (224 buckets an op) stays in the server; a reader
 * gets the quantiles worked out here and the histogram coarsened to a
 * fixed ladder of bounds, which is what a Prometheus histogram needs: the
 * same "le" values in every scrape, few of them. */
#include <math.h>

#include "stats.h"

/* Whole microseconds in the JSON (whose reals cdisk-info rounds to a
 * thousandth); seconds only in the Prometheus text.
 * 1-2.5-5 per decade, 10 µs to 10 s: the range of a disk request, from a
 * page-cache hit to a base that hangs until its timeout. */
static const uint64_t le_ns[CD_STAT_LE_COUNT] = {
	10000, 25000, 50000, 100000, 250000, 500000,
	1000000, 2500000, 5000000, 10000000, 25000000, 50000000,
	100000000, 250000000, 500000000, 1000000000, 2500000000ull, 5000000000ull,
	10000000000ull,
};

uint64_t cd_stat_le_ns(unsigned i)
{
	return i < CD_STAT_LE_COUNT ? le_ns[i] : UINT64_MAX;
}

/* A fine bucket counts under the first coarse bound at or above its own
 * upper bound: a request may show up to one fine bucket (12.5%) slower
 * than it was, never faster. */
void cd_op_stats_coarse(const struct cd_op_stats *o, uint64_t out[CD_STAT_LE_COUNT])
{
	unsigned le = 0;
	uint64_t seen = 0;

	for (unsigned i = 0; i < CD_STAT_BUCKETS; i++) {
		while (le < CD_STAT_LE_COUNT && cd_stat_bucket_bound(i) > le_ns[le])
			out[le++] = seen;
		seen += o->buckets[i];
	}
	while (le < CD_STAT_LE_COUNT)
		out[le++] = seen;
}

/* The histogram keeps no sum of latencies: each bucket's requests count at
 * its middle (the slowest one at its lower bound), within 6% of the truth. */
double cd_op_stats_sum_seconds(const struct cd_op_stats *o)
{
	double sum = 0, lower = 0;

	for (unsigned i = 0; i < CD_STAT_BUCKETS; i++) {
		double upper = i + 1 < CD_STAT_BUCKETS ? (double)cd_stat_bucket_bound(i) : lower;

		sum += (double)o->buckets[i] * (lower + upper) / 2;
		lower = upper;
	}
	return sum / 1e9;
}

/* A quantile in whole microseconds, rounded up; past the last finite
 * bound (~137 s) it says that bound. */
static json_int_t quantile_us(const struct cd_op_stats *o, double q)
{
	uint64_t ns = cd_op_stats_quantile(o, q);

	if (ns == UINT64_MAX)
		ns = cd_stat_bucket_bound(CD_STAT_BUCKETS - 2);
	return (json_int_t)((ns + 999) / 1000);
}

static json_t *op_json(const struct cd_op_stats *o)
{
	uint64_t coarse[CD_STAT_LE_COUNT];
	json_t *buckets = json_array();

	cd_op_stats_coarse(o, coarse);
	for (unsigned i = 0; buckets && i < CD_STAT_LE_COUNT; i++)
		json_array_append_new(buckets, json_integer((json_int_t)coarse[i]));
	return json_pack("{s:I, s:I, s:I, s:{s:I, s:I, s:I}, s:I, s:o*}",
			 "requests", (json_int_t)o->requests, "bytes", (json_int_t)o->bytes,
			 "errors", (json_int_t)o->errors, "latency_us",
			 "p50", quantile_us(o, 0.5), "p99", quantile_us(o, 0.99),
			 "p999", quantile_us(o, 0.999),
			 "latency_sum_us", (json_int_t)(cd_op_stats_sum_seconds(o) * 1e6 + 0.5),
			 "latency_buckets", buckets);
}

static json_t *le_json(void)
{
	json_t *a = json_array();

	for (unsigned i = 0; a && i < CD_STAT_LE_COUNT; i++)
		json_array_append_new(a, json_integer((json_int_t)(le_ns[i] / 1000)));
	return a;
}

json_t *cd_io_stats_json(const struct cd_io_stats *snapshot)
{
	json_t *ops = json_object(), *j;

	for (unsigned op = 0; ops && op < CD_STAT_NOPS; op++)
		if (snapshot->op[op].requests)
			json_object_set_new(ops, cd_stat_op_names[op], op_json(&snapshot->op[op]));
	j = json_pack("{s:o*, s:I, s:I, s:f, s:o*}", "ops", ops,
		      "queue_depth", (json_int_t)snapshot->depth,
		      "limit_waits", (json_int_t)snapshot->limit_waits,
		      "limit_wait_ms", (double)snapshot->limit_wait_ns / 1e6,
		      "latency_le_us", le_json());
	return j;
}

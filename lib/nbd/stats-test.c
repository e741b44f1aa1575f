/* Unit tests for the request statistics: the histogram's buckets, the
 * quantiles of known distributions, the coarse Prometheus buckets and the
 * JSON a status shows. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "nbd.h"
#include "stats.h"

#define US 1000ull
#define MS 1000000ull

static struct cd_io_stats *new_stats(void)
{
	struct cd_io_stats *st = calloc(1, sizeof(*st));

	assert_non_null(st);
	return st;
}

static void snap(const struct cd_io_stats *st, struct cd_io_stats *out)
{
	memset(out, 0xa5, sizeof(*out));
	cd_io_stats_snapshot(st, out);
}

/* Each bound is above the last, and a value's bucket bound is at or above
 * it by at most 12.5% (13% asked for), from 1 µs to the last finite one. */
static void test_bounds(void **state)
{
	(void)state;
	for (unsigned i = 1; i < CD_STAT_BUCKETS; i++)
		if (cd_stat_bucket_bound(i) <= cd_stat_bucket_bound(i - 1))
			fail_msg("bound %u (%llu) <= bound %u", i,
				 (unsigned long long)cd_stat_bucket_bound(i), i - 1);
	assert_int_equal(cd_stat_bucket_bound(CD_STAT_BUCKETS - 1), UINT64_MAX);
	for (uint64_t v = CD_STAT_MIN_NS; v < cd_stat_bucket_bound(CD_STAT_BUCKETS - 2);
	     v += v / 37 + 1) {
		unsigned b = cd_stat_bucket_of(v);
		uint64_t bound = cd_stat_bucket_bound(b);

		if (bound <= v || (double)bound > (double)v * 1.13)
			fail_msg("%llu ns in bucket %u whose bound is %llu",
				 (unsigned long long)v, b, (unsigned long long)bound);
		if (b && cd_stat_bucket_bound(b - 1) > v)
			fail_msg("%llu ns belongs below bucket %u", (unsigned long long)v, b);
	}
	assert_int_equal(cd_stat_bucket_of(0), 0);
	assert_int_equal(cd_stat_bucket_of(UINT64_MAX), CD_STAT_BUCKETS - 1);
}

static void assert_near(uint64_t got, uint64_t want)
{
	if (got < want || (double)got > (double)want * 1.13)
		fail_msg("%llu is not within 13%% above %llu", (unsigned long long)got,
			 (unsigned long long)want);
}

/* 900 requests of 100 µs, 90 of 1 ms, 10 of 10 ms: p50 100 µs, p99 1 ms
 * (the 990th), p999 10 ms. */
static void test_quantiles_steps(void **state)
{
	struct cd_io_stats *st = new_stats(), *s = new_stats();

	(void)state;
	assert_int_equal(cd_op_stats_quantile(&st->op[CD_STAT_READ], 0.5), 0);
	for (int i = 0; i < 900; i++)
		cd_io_stats_record(st, CD_STAT_READ, 4096, 0, 100 * US);
	for (int i = 0; i < 90; i++)
		cd_io_stats_record(st, CD_STAT_READ, 4096, 0, 1 * MS);
	for (int i = 0; i < 10; i++)
		cd_io_stats_record(st, CD_STAT_READ, 4096, 0, 10 * MS);
	snap(st, s);
	assert_near(cd_op_stats_quantile(&s->op[CD_STAT_READ], 0.5), 100 * US);
	assert_near(cd_op_stats_quantile(&s->op[CD_STAT_READ], 0.99), 1 * MS);
	assert_near(cd_op_stats_quantile(&s->op[CD_STAT_READ], 0.999), 10 * MS);
	free(st);
	free(s);
}

/* 1 µs to 10 ms in even steps: each quantile near q times the range. */
static void test_quantiles_uniform(void **state)
{
	struct cd_io_stats *st = new_stats(), *s = new_stats();
	const double qs[] = { 0.5, 0.9, 0.99, 0.999 };

	(void)state;
	for (uint64_t i = 1; i <= 10000; i++)
		cd_io_stats_record(st, CD_STAT_WRITE, 65536, 0, i * US);
	snap(st, s);
	for (size_t k = 0; k < sizeof(qs) / sizeof(qs[0]); k++)
		assert_near(cd_op_stats_quantile(&s->op[CD_STAT_WRITE], qs[k]),
			    (uint64_t)(qs[k] * 10000) * US);
	free(st);
	free(s);
}

/* Counters: bytes of the requests that worked, errors of those that
 * failed; depth and limit waits; the snapshot's count is its histogram's. */
static void test_counters(void **state)
{
	struct cd_io_stats *st = new_stats(), *s = new_stats();

	(void)state;
	cd_io_stats_record(st, cd_stat_op_of_nbd(NBD_CMD_WRITE), 65536, 0, 50 * US);
	cd_io_stats_record(st, cd_stat_op_of_nbd(NBD_CMD_WRITE), 65536, -ENOSPC, 50 * US);
	cd_io_stats_record(st, cd_stat_op_of_nbd(NBD_CMD_FLUSH), 0, 0, 2 * MS);
	cd_io_stats_depth(st, 3);
	cd_io_stats_depth(st, -1);
	cd_io_stats_limit_wait(st, 1500 * US);
	cd_io_stats_limit_wait(st, 500 * US);
	snap(st, s);
	assert_int_equal(s->op[CD_STAT_WRITE].requests, 2);
	assert_int_equal(s->op[CD_STAT_WRITE].bytes, 65536);
	assert_int_equal(s->op[CD_STAT_WRITE].errors, 1);
	assert_int_equal(s->op[CD_STAT_FLUSH].requests, 1);
	assert_int_equal(s->op[CD_STAT_READ].requests, 0);
	assert_int_equal(s->depth, 2);
	assert_int_equal(s->limit_waits, 2);
	assert_int_equal(s->limit_wait_ns, 2 * MS);
	free(st);
	free(s);
}

/* The coarse buckets: cumulative, never counting a request under a bound
 * below it, all of them under the last at most; the sum estimate near. */
static void test_coarse(void **state)
{
	struct cd_io_stats *st = new_stats(), *s = new_stats();
	uint64_t c[CD_STAT_LE_COUNT];
	double sum = 0;

	(void)state;
	for (unsigned i = 1; i < CD_STAT_LE_COUNT; i++)
		assert_true(cd_stat_le_ns(i) > cd_stat_le_ns(i - 1));
	assert_int_equal(cd_stat_le_ns(0), 10 * US);
	assert_int_equal(cd_stat_le_ns(CD_STAT_LE_COUNT - 1), 10000 * MS);
	for (uint64_t ns = 3 * US; ns < 30000 * MS; ns = ns * 11 / 10) {
		cd_io_stats_record(st, CD_STAT_READ, 512, 0, ns);
		sum += (double)ns;
	}
	snap(st, s);
	cd_op_stats_coarse(&s->op[CD_STAT_READ], c);
	for (unsigned i = 0; i < CD_STAT_LE_COUNT; i++) {
		uint64_t at_most = 0;

		for (uint64_t ns = 3 * US; ns < 30000 * MS; ns = ns * 11 / 10)
			at_most += ns <= cd_stat_le_ns(i);
		if (c[i] > at_most || (i && c[i] < c[i - 1]))
			fail_msg("bucket le %llu ns holds %llu of %llu at most",
				 (unsigned long long)cd_stat_le_ns(i), (unsigned long long)c[i],
				 (unsigned long long)at_most);
		/* At most one fine bucket's worth (12.5%) slower. */
		if (c[i] < at_most * 8 / 10)
			fail_msg("bucket le %llu ns holds %llu of %llu",
				 (unsigned long long)cd_stat_le_ns(i), (unsigned long long)c[i],
				 (unsigned long long)at_most);
	}
	assert_true(c[CD_STAT_LE_COUNT - 1] < s->op[CD_STAT_READ].requests);
	double est = cd_op_stats_sum_seconds(&s->op[CD_STAT_READ]) * 1e9;
	if (est < sum * 0.94 || est > sum * 1.06)
		fail_msg("sum estimate %g ns for %g ns", est, sum);
	free(st);
	free(s);
}

static json_int_t jint(json_t *o, const char *a, const char *b, const char *c)
{
	json_t *v = json_object_get(json_object_get(json_object_get(o, a), b), c);

	if (!json_is_integer(v))
		fail_msg("%s.%s.%s is not an integer", a, b, c);
	return json_integer_value(v);
}

/* The JSON: ops used only, their counts, ordered quantiles in µs, the
 * coarse buckets beside their bounds. */
static void test_json(void **state)
{
	struct cd_io_stats *st = new_stats(), *s = new_stats();
	json_t *j, *w;

	(void)state;
	for (int i = 0; i < 10; i++)
		cd_io_stats_record(st, CD_STAT_WRITE, 65536, 0, (uint64_t)(i + 1) * 100 * US);
	cd_io_stats_record(st, CD_STAT_WRITE, 65536, -EIO, 20 * MS);
	cd_io_stats_limit_wait(st, 2500 * US);
	snap(st, s);
	j = cd_io_stats_json(s);
	assert_non_null(j);
	w = json_object_get(json_object_get(j, "ops"), "write");
	assert_int_equal(json_object_size(json_object_get(j, "ops")), 1);
	assert_int_equal(jint(j, "ops", "write", "requests"), 11);
	assert_int_equal(jint(j, "ops", "write", "bytes"), 655360);
	assert_int_equal(jint(j, "ops", "write", "errors"), 1);
	json_t *l = json_object_get(w, "latency_us");
	json_int_t q50 = json_integer_value(json_object_get(l, "p50"));
	json_int_t q99 = json_integer_value(json_object_get(l, "p99"));
	json_int_t q999 = json_integer_value(json_object_get(l, "p999"));
	assert_true(q50 >= 600 && q50 <= 700);
	assert_true(q50 <= q99 && q99 <= q999);
	assert_true(q999 >= 20000 && q999 <= 22600);
	assert_int_equal(json_array_size(json_object_get(j, "latency_le_us")), CD_STAT_LE_COUNT);
	assert_int_equal(json_integer_value(json_array_get(json_object_get(j, "latency_le_us"),
							   0)), 10);
	assert_int_equal(json_array_size(json_object_get(w, "latency_buckets")),
			 CD_STAT_LE_COUNT);
	assert_int_equal(json_integer_value(json_array_get(json_object_get(w, "latency_buckets"),
							   CD_STAT_LE_COUNT - 1)), 11);
	assert_true(json_integer_value(json_object_get(w, "latency_sum_us")) > 25000);
	assert_int_equal(json_integer_value(json_object_get(j, "limit_waits")), 1);
	assert_true(json_number_value(json_object_get(j, "limit_wait_ms")) == 2.5);
	assert_int_equal(json_integer_value(json_object_get(j, "queue_depth")), 0);
	json_decref(j);
	free(st);
	free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bounds),
		cmocka_unit_test(test_quantiles_steps),
		cmocka_unit_test(test_quantiles_uniform),
		cmocka_unit_test(test_counters),
		cmocka_unit_test(test_coarse),
		cmocka_unit_test(test_json),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

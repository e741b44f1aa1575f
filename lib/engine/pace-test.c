/* Unit tests for pacing: the delay-based controller a sync runs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>

#include "pace.h"

/* n samples of ms, 200 ms apart from *now, with 8 MiB sent per second. */
static void feed(struct cd_pace *p, double ms, int n, uint64_t *now, uint64_t *sent)
{
	for (int i = 0; i < n; i++) {
		*now += 200;
		*sent += (8u << 20) / 5;
		cd_pace_sent(p, *sent, *now);
		cd_pace_sample(p, ms, *now);
		cd_pace_adjust(p, true);
	}
}

static void test_steady_delay_is_only_a_baseline(void **state)
{
	struct cd_pace p;
	uint64_t now = 1000, sent = 0;

	(void)state;
	cd_pace_init(&p, 25);
	feed(&p, 80, 50, &now, &sent);
	assert_true(p.base == 80 && p.current == 80);
	assert_int_equal(p.rate_limit, 0);
	assert_int_equal(p.slowdowns, 0);
}

static void test_rise_slows_down_and_fall_frees(void **state)
{
	struct cd_pace p;
	uint64_t now = 1000, sent = 0, slowest;

	(void)state;
	cd_pace_init(&p, 25);
	feed(&p, 0.2, 10, &now, &sent);
	/* One late answer is noise: the current delay is the least of four. */
	now += 200;
	cd_pace_sample(&p, 150, now);
	assert_int_equal(cd_pace_adjust(&p, true), CD_PACE_SAME);
	assert_int_equal(p.rate_limit, 0);
	/* A queue that stays: first half of what was sent, then less. */
	for (int i = 0; i < 3; i++) {
		now += 200;
		cd_pace_sample(&p, 100.2, now);
	}
	assert_int_equal(cd_pace_adjust(&p, true), CD_PACE_SLOWED);
	assert_true(p.rate_limit > 0 && p.rate_limit <= (8u << 20));
	assert_int_equal(p.slowdowns, 1);
	for (int i = 0; i < 30; i++) {
		now += 200;
		cd_pace_sample(&p, 100.2, now);
		assert_int_equal(cd_pace_adjust(&p, true), CD_PACE_SAME);
	}
	slowest = p.rate_limit;
	assert_int_equal(slowest, CD_PACE_MIN_RATE);
	/* Back under the target: it grows again, then lets go. */
	for (int i = 0; i < 4; i++) {
		now += 200;
		cd_pace_sample(&p, 0.2, now);
	}
	assert_int_equal(cd_pace_adjust(&p, true), CD_PACE_SAME);
	assert_true(p.rate_limit > slowest);
	for (int i = 0; i < 50 && p.rate_limit; i++) {
		now += 200;
		sent += p.rate_limit / 5;
		cd_pace_sent(&p, sent, now);
		cd_pace_sample(&p, 0.2, now);
		cd_pace_adjust(&p, true);
	}
	assert_int_equal(p.rate_limit, 0);
	assert_int_equal(p.slowdowns, 1);
}

static void test_lost_answers_slow_down(void **state)
{
	struct cd_pace p;
	uint64_t now = 1000, sent = 0;

	(void)state;
	cd_pace_init(&p, 25);
	feed(&p, 1, 5, &now, &sent);
	assert_int_equal(cd_pace_adjust(&p, false), CD_PACE_SLOWED);
	assert_true(p.rate_limit > 0);
}

static void test_baseline_forgets_after_ten_minutes(void **state)
{
	struct cd_pace p;
	uint64_t now = 1000, sent = 0;

	(void)state;
	cd_pace_init(&p, 25);
	feed(&p, 5, 3, &now, &sent);
	assert_true(p.base == 5);
	/* A new route, 40 ms longer, for eleven minutes. */
	for (int minute = 0; minute < 11; minute++) {
		now += 60000;
		cd_pace_sample(&p, 45, now);
	}
	assert_true(p.base == 45);
	assert_true(p.current == 45);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_steady_delay_is_only_a_baseline),
		cmocka_unit_test(test_rise_slows_down_and_fall_frees),
		cmocka_unit_test(test_lost_answers_slow_down),
		cmocka_unit_test(test_baseline_forgets_after_ten_minutes),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

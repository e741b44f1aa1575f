/* Unit tests for the paged block-state bitmaps. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>

#include "bitmap.h"
#include "util.h"

static void test_empty_costs_no_pages(void **state)
{
	struct cd_bitmap bm;

	(void)state;
	assert_int_equal(cd_bitmap_init(&bm, UINT64_C(1) << 28), 0);
	assert_int_equal(bm.npages, 8192);
	for (uint32_t i = 0; i < bm.npages; i++)
		assert_null(bm.pages[i]);
	assert_int_equal(cd_bitmap_find(&bm, 0, true), bm.nbits);
	assert_int_equal(cd_bitmap_find(&bm, 12345, false), 12345);
	cd_bitmap_free(&bm);
}

static void test_assign_across_pages(void **state)
{
	struct cd_bitmap bm;
	uint64_t first = CD_PAGE_BITS - 3, count = CD_PAGE_BITS + 10;

	(void)state;
	assert_int_equal(cd_bitmap_init(&bm, 4 * CD_PAGE_BITS + 5), 0);
	assert_int_equal(cd_bitmap_assign(&bm, first, count, true), 0);
	assert_int_equal(bm.count, count);
	assert_false(cd_bitmap_get(&bm, first - 1));
	assert_true(cd_bitmap_get(&bm, first));
	assert_true(cd_bitmap_get(&bm, first + count - 1));
	assert_false(cd_bitmap_get(&bm, first + count));
	assert_int_equal(cd_bitmap_find(&bm, 0, true), first);
	assert_int_equal(cd_bitmap_find(&bm, first, false), first + count);
	/* Setting again changes nothing. */
	assert_int_equal(cd_bitmap_assign(&bm, first, count, true), 0);
	assert_int_equal(bm.count, count);
	/* Clearing the middle page frees it. */
	assert_int_equal(cd_bitmap_assign(&bm, CD_PAGE_BITS, CD_PAGE_BITS, false), 0);
	assert_null(bm.pages[1]);
	assert_int_equal(bm.count, 10);
	assert_int_equal(cd_bitmap_find(&bm, first + 3, true), 2 * CD_PAGE_BITS);
	cd_bitmap_free(&bm);
}

static void test_last_bit_and_find_end(void **state)
{
	struct cd_bitmap bm;
	uint64_t n = 3 * CD_PAGE_BITS + 17;

	(void)state;
	assert_int_equal(cd_bitmap_init(&bm, n), 0);
	assert_int_equal(cd_bitmap_assign(&bm, n - 1, 1, true), 0);
	assert_int_equal(cd_bitmap_find(&bm, 0, true), n - 1);
	assert_int_equal(cd_bitmap_find(&bm, n - 1, false), n);
	assert_int_equal(cd_bitmap_assign(&bm, 0, n, true), 0);
	assert_int_equal(bm.count, n);
	assert_int_equal(cd_bitmap_find(&bm, 0, false), n);
	cd_bitmap_free(&bm);
}

static void test_matches_a_simple_model(void **state)
{
	enum { N = 3 * CD_PAGE_BITS };
	static uint8_t model[N];
	struct cd_bitmap bm;
	uint64_t count = 0;

	(void)state;
	srandom(42);
	assert_int_equal(cd_bitmap_init(&bm, N), 0);
	for (int round = 0; round < 2000; round++) {
		uint64_t first = (uint64_t)random() % N;
		uint64_t len = 1 + (uint64_t)random() % (round % 7 ? 70 : 40000);
		bool v = random() & 1;

		if (first + len > N)
			len = N - first;
		assert_int_equal(cd_bitmap_assign(&bm, first, len, v), 0);
		memset(model + first, v, len);
	}
	for (uint64_t i = 0; i < N; i++) {
		assert_int_equal(cd_bitmap_get(&bm, i), model[i]);
		count += model[i];
	}
	assert_int_equal(bm.count, count);
	for (uint64_t i = 0; i < N; i += 997) {
		uint64_t want = i;
		while (want < N && !model[want])
			want++;
		assert_int_equal(cd_bitmap_find(&bm, i, true), want);
	}
	cd_bitmap_free(&bm);
}

static void test_adopt_page(void **state)
{
	struct cd_bitmap bm;
	uint8_t *page = calloc(1, CD_PAGE_SIZE);

	(void)state;
	assert_int_equal(cd_bitmap_init(&bm, 2 * CD_PAGE_BITS), 0);
	page[0] = 0x0f;
	page[100] = 0x80;
	cd_bitmap_adopt_page(&bm, 1, page, 5);
	assert_int_equal(bm.count, 5);
	assert_true(cd_bitmap_get(&bm, CD_PAGE_BITS + 3));
	assert_int_equal(cd_bitmap_find(&bm, 0, true), CD_PAGE_BITS);
	cd_bitmap_adopt_page(&bm, 1, calloc(1, CD_PAGE_SIZE), 0);
	assert_int_equal(bm.count, 0);
	assert_null(bm.pages[1]);
	cd_bitmap_free(&bm);
}

static void test_popcount(void **state)
{
	(void)state;
	assert_int_equal(cd_popcount64(0), 0);
	assert_int_equal(cd_popcount64(UINT64_MAX), 64);
	assert_int_equal(cd_popcount64(0x8000000000000001ull), 2);
	for (uint64_t v = 1; v < (1ull << 63); v = v * 3 + 1)
		assert_int_equal(cd_popcount64(v), __builtin_popcountll(v));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_empty_costs_no_pages),
		cmocka_unit_test(test_assign_across_pages),
		cmocka_unit_test(test_last_bit_and_find_end),
		cmocka_unit_test(test_matches_a_simple_model),
		cmocka_unit_test(test_adopt_page),
		cmocka_unit_test(test_popcount),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Paged bitmaps for block state.  Pages are allocated on first set and
 * each page keeps its population count, so "how many blocks are dirty"
 * and "is this page empty" cost nothing. */
#include <stdlib.h>

#include "bitmap.h"
#include "util.h"

int cd_bitmap_init(struct cd_bitmap *bm, uint64_t nbits)
{
	memset(bm, 0, sizeof(*bm));
	bm->nbits = nbits;
	bm->npages = (uint32_t)cd_div_round_up(nbits, CD_PAGE_BITS);
	bm->pages = calloc(bm->npages ? bm->npages : 1, sizeof(*bm->pages));
	bm->page_count = calloc(bm->npages ? bm->npages : 1, sizeof(*bm->page_count));
	bm->page_changed = calloc(bm->npages ? bm->npages : 1, 1);
	if (!bm->pages || !bm->page_count || !bm->page_changed) {
		cd_bitmap_free(bm);
		return -ENOMEM;
	}
	return 0;
}

void cd_bitmap_free(struct cd_bitmap *bm)
{
	if (bm->pages)
		for (uint32_t i = 0; i < bm->npages; i++)
			free(bm->pages[i]);
	free(bm->pages);
	free(bm->page_count);
	free(bm->page_changed);
	memset(bm, 0, sizeof(*bm));
}

bool cd_bitmap_get(const struct cd_bitmap *bm, uint64_t bit)
{
	const uint8_t *page = bm->pages[bit / CD_PAGE_BITS];
	uint32_t in = (uint32_t)(bit % CD_PAGE_BITS);

	return page && (page[in / 8] >> (in % 8)) & 1;
}

/* Change bits [from, to) of one page; returns how many changed. */
static uint32_t assign_in_page(uint8_t *page, uint32_t from, uint32_t to,
			       bool value)
{
	uint32_t changed = 0;

	while (from < to) {
		uint8_t *byte = &page[from / 8];
		if (from % 8 == 0 && to - from >= 8) {
			uint8_t want = value ? 0xff : 0;
			changed += cd_popcount64((uint8_t)(*byte ^ want));
			*byte = want;
			from += 8;
			continue;
		}
		uint8_t mask = (uint8_t)(1u << (from % 8));
		if (!!(*byte & mask) != value) {
			*byte ^= mask;
			changed++;
		}
		from++;
	}
	return changed;
}

int cd_bitmap_assign(struct cd_bitmap *bm, uint64_t first, uint64_t count,
		     bool value)
{
	uint64_t end = first + count;

	while (first < end) {
		uint32_t p = (uint32_t)(first / CD_PAGE_BITS);
		uint32_t from = (uint32_t)(first % CD_PAGE_BITS);
		uint64_t page_end = (uint64_t)(p + 1) * CD_PAGE_BITS;
		uint32_t to = (uint32_t)((end < page_end ? end : page_end) -
					 (uint64_t)p * CD_PAGE_BITS);
		uint32_t changed;

		if (!bm->pages[p]) {
			if (!value) {
				first = (uint64_t)p * CD_PAGE_BITS + to;
				continue;
			}
			bm->pages[p] = calloc(1, CD_PAGE_SIZE);
			if (!bm->pages[p])
				return -ENOMEM;
		}
		changed = assign_in_page(bm->pages[p], from, to, value);
		if (changed) {
			if (value) {
				bm->page_count[p] += changed;
				bm->count += changed;
			} else {
				bm->page_count[p] -= changed;
				bm->count -= changed;
			}
			bm->page_changed[p] = 3;
		}
		if (bm->page_count[p] == 0) {
			free(bm->pages[p]);
			bm->pages[p] = NULL;
		}
		first = (uint64_t)p * CD_PAGE_BITS + to;
	}
	return 0;
}

uint64_t cd_bitmap_find(const struct cd_bitmap *bm, uint64_t from, bool value)
{
	while (from < bm->nbits) {
		uint32_t p = (uint32_t)(from / CD_PAGE_BITS);
		const uint8_t *page = bm->pages[p];
		bool uniform = value ? bm->page_count[p] == 0 :
				       bm->page_count[p] == CD_PAGE_BITS;

		if (uniform || (!page && !value)) {
			/* The whole page has the other value, or it is empty
			 * and we look for a zero. */
			if (!value && !page)
				return from;
			from = (uint64_t)(p + 1) * CD_PAGE_BITS;
			continue;
		}
		uint32_t in = (uint32_t)(from % CD_PAGE_BITS);
		while (in < CD_PAGE_BITS) {
			if (in % 64 == 0) {
				uint64_t w;
				memcpy(&w, page + in / 8, 8);
				if (w == (value ? 0 : UINT64_MAX)) {
					in += 64;
					continue;
				}
			}
			if (!!((page[in / 8] >> (in % 8)) & 1) == value) {
				uint64_t bit = (uint64_t)p * CD_PAGE_BITS + in;
				return bit < bm->nbits ? bit : bm->nbits;
			}
			in++;
		}
		from = (uint64_t)(p + 1) * CD_PAGE_BITS;
	}
	return bm->nbits;
}

void cd_bitmap_adopt_page(struct cd_bitmap *bm, uint32_t p, uint8_t *data,
			  uint32_t count)
{
	bm->count -= bm->page_count[p];
	free(bm->pages[p]);
	bm->page_count[p] = count;
	bm->count += count;
	if (count) {
		bm->pages[p] = data;
	} else {
		bm->pages[p] = NULL;
		free(data);
	}
}

/* Internal: paged block-state bitmaps (bitmap.c). */
#ifndef CDISK_BITMAP_H
#define CDISK_BITMAP_H

#include "util.h"

/*
 * Pages of 4096 bytes (32768 bits); a page that was never set is not
 * allocated, so an empty 1 TiB disk costs a pointer array and nothing else. */

#define CD_PAGE_SIZE 4096u
#define CD_PAGE_BITS (CD_PAGE_SIZE * 8u)

struct cd_bitmap {
	uint64_t nbits;
	uint32_t npages;
	uint8_t **pages;
	uint32_t *page_count;   /* bits set in each page */
	uint8_t *page_changed;  /* bit 0/1: differs from checkpoint area 0/1 */
	uint64_t count;         /* bits set in all */
};

int cd_bitmap_init(struct cd_bitmap *bm, uint64_t nbits);
void cd_bitmap_free(struct cd_bitmap *bm);
bool cd_bitmap_get(const struct cd_bitmap *bm, uint64_t bit);
/* Set or clear [first, first + count).  Returns -ENOMEM when a page
 * cannot be allocated; the bits before it are already changed. */
int cd_bitmap_assign(struct cd_bitmap *bm, uint64_t first, uint64_t count,
		     bool value);
/* First bit >= from with the given value, or nbits. */
uint64_t cd_bitmap_find(const struct cd_bitmap *bm, uint64_t from, bool value);
/* Replace one page from an on-disk image (NULL: all zeros). */
/* Install a malloc'd page read from disk with count bits set; the bitmap
 * owns it after. */
void cd_bitmap_adopt_page(struct cd_bitmap *bm, uint32_t page, uint8_t *data,
			  uint32_t count);

#endif

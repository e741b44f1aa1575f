/* Test patterns: every block's content is a function of a seed and the
 * block's offset, so a reader can tell which write a block holds. */
#ifndef CDISK_TEST_PATTERN_H
#define CDISK_TEST_PATTERN_H

#include <stdint.h>
#include <string.h>

/* Seed 0 is "all zeros". */
static inline uint64_t pattern_word(uint64_t seed, uint64_t word)
{
	uint64_t z = seed * 0x9e3779b97f4a7c15ull + word;

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static inline void pattern_fill(void *buf, size_t len, uint64_t offset, uint64_t seed)
{
	uint64_t *w = buf;

	if (seed == 0) {
		memset(buf, 0, len);
		return;
	}
	for (size_t i = 0; i < len / 8; i++)
		w[i] = pattern_word(seed, offset / 8 + i);
}

static inline int pattern_check(const void *buf, size_t len, uint64_t offset,
				uint64_t seed)
{
	const uint64_t *w = buf;

	for (size_t i = 0; i < len / 8; i++)
		if (w[i] != (seed ? pattern_word(seed, offset / 8 + i) : 0))
			return 0;
	return 1;
}

/* Byte-granular forms, for requests at odd offsets and sizes. */
static inline uint8_t pattern_byte(uint64_t seed, uint64_t offset)
{
	return seed ? (uint8_t)(pattern_word(seed, offset / 8) >> (8 * (offset % 8))) : 0;
}

static inline void pattern_fill_any(void *buf, size_t len, uint64_t offset,
				    uint64_t seed)
{
	uint8_t *b = buf;

	if (offset % 8 == 0 && len % 8 == 0) {
		pattern_fill(buf, len, offset, seed);
		return;
	}
	for (size_t i = 0; i < len; i++)
		b[i] = pattern_byte(seed, offset + i);
}

/* The offset of the first byte that differs, or -1. */
static inline int64_t pattern_find_any(const void *buf, size_t len, uint64_t offset,
				       uint64_t seed)
{
	const uint8_t *b = buf;

	if (offset % 8 == 0 && len % 8 == 0 && pattern_check(buf, len, offset, seed))
		return -1;
	for (size_t i = 0; i < len; i++)
		if (b[i] != pattern_byte(seed, offset + i))
			return (int64_t)(offset + i);
	return -1;
}

#endif

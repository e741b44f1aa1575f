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

#endif

/* Internal: small helpers every part of libcdisk uses (util.c, crc32c.c):
 * arithmetic, little-endian fields, checksums, whole-buffer I/O, the clock. */
#ifndef CDISK_UTIL_H
#define CDISK_UTIL_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#define CD_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define CD_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static inline uint64_t cd_div_round_up(uint64_t n, uint64_t d)
{
	return (n + d - 1) / d;
}

static inline uint64_t cd_round_up(uint64_t n, uint64_t align)
{
	return cd_div_round_up(n, align) * align;
}

/* ---- little-endian fields and checksums (util.c, crc32c.c) ---- */

static inline void cd_put_le16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static inline void cd_put_le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static inline void cd_put_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint16_t cd_get_le16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static inline uint32_t cd_get_le32(const uint8_t *p)
{
	uint32_t v = 0;
	for (int i = 3; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static inline uint64_t cd_get_le64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

uint32_t cd_crc32c(uint32_t crc, const void *buf, size_t len);

/* Bits set in a word, without needing the POPCNT instruction (the Debian
 * x86-64 baseline lacks it and the libgcc fallback is a slow call). */
static inline uint32_t cd_popcount64(uint64_t v)
{
	v -= (v >> 1) & 0x5555555555555555ull;
	v = (v & 0x3333333333333333ull) + ((v >> 2) & 0x3333333333333333ull);
	v = (v + (v >> 4)) & 0x0f0f0f0f0f0f0f0full;
	return (uint32_t)((v * 0x0101010101010101ull) >> 56);
}

/* Whole-buffer I/O that retries short transfers and EINTR.  Return 0 or
 * -errno; a read past the end of file returns -ENODATA.  Writes go in
 * pieces of at most 64 KiB (util.c says why). */
int cd_pread_full(int fd, void *buf, size_t len, uint64_t off);
int cd_pwrite_full(int fd, const void *buf, size_t len, uint64_t off);
bool cd_is_zero(const void *buf, size_t len);
int cd_mkdir_parents(char *path);

/* Milliseconds left until deadline (CLOCK_MONOTONIC ms), at least 0. */
uint64_t cd_now_ms(void);
uint64_t cd_now_us(void);   /* the same clock, in microseconds */
uint64_t cd_now_ns(void);   /* and in nanoseconds */
/* The cores this process may run on (its affinity, as nproc counts), at
 * least 1. */
unsigned cd_cpus(void);

bool cd_parse_bool(const char *value, bool *out);

/* A thread's waits on a target (the network, or a base's file), told to
 * whoever runs the thread: cdisk-serve's queue counts its workers that
 * wait so and starts others meanwhile.  Per thread; nested waits count
 * once; no hook, nothing told. */
struct cd_wait_hook {
	void (*begin)(void *arg);
	void (*end)(void *arg);
	void *arg;
};
void cd_wait_hook_set(const struct cd_wait_hook *hook);
void cd_wait_begin(void);
void cd_wait_end(void);

/* A thread that must not wait on a disk or the network, cdisk-serve's
 * reader answering a read from the page cache, sets this around the
 * call: cd_pread_full reads with RWF_NOWAIT and gives -CD_WOULD_WAIT for
 * any error; a target that is not a file on a local file system is not
 * asked; a disk's base that is not open yet, or a disk on a primary,
 * gives it too.  The reader then leaves the read to a worker, whose
 * plain read tells any real error.  (Not EAGAIN: that one a target's
 * retry layer would try again.) */
#define CD_WOULD_WAIT EINPROGRESS
void cd_nowait_set(bool on);
bool cd_nowait(void);

#endif

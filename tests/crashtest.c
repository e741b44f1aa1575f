/* crashtest: SIGKILL a writer at random moments and check, after every
 * kill, that the disk opens, recovers by itself, and reads back every
 * flushed write; an unflushed write reads back as its old or its new
 * content, nothing else; and a block recorded clean equals the base.
 *
 *   crashtest DIR ITERATIONS [BLOCK_SIZE] [BLOCKS] [SEED]
 *
 * With CRASHTEST_BITMAPS=N (3 to 8) the disk is first given N bitmaps
 * (the upgrade of the first layout), and the writer also sets and clears
 * runs of bitmaps 2 to N-1: after every kill, each bit must be as last
 * flushed, or as set or cleared since.
 *
 * Unflushed writes are atomic per 4 KiB unit, not per block: the kernel
 * may stop a larger write between pages when SIGKILL arrives, as a disk
 * may stop between sectors.  The model therefore tracks units.
 *
 * The model lives in shared memory: the child updates it *before* a write
 * (candidates) and *after* a flush returns (durable), so the parent's
 * view is always on the safe side. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <fcntl.h>
#include <unistd.h>

#include "bitmap.h"
#include "cdisk.h"
#include "disk.h"
#include "pattern.h"
#include "util.h"

#define MAX_PENDING 4
#define NONE UINT32_MAX

struct block_model {
	uint8_t mark_durable;            /* extra bitmaps' bits as flushed */
	uint8_t mark_last;               /* as last set or cleared */
	uint8_t mark_set, mark_cleared;  /* bits set / cleared since the flush */
	uint32_t durable;                /* flushed content (seed) */
	uint32_t npending;
	uint32_t pending[MAX_PENDING];   /* unflushed writes since */
	uint32_t base;                   /* what the base holds */
	uint32_t base_new;               /* a base write in progress, or NONE */
};

struct model {
	uint32_t next_seed;
	uint32_t nblocks;   /* units, see above */
	struct block_model b[];
};

static struct model *m;
static unsigned nbitmaps = 2;
static uint32_t bs;        /* the unit: min(block size, 4096) */
static uint32_t per_block; /* units per disk block */
static const char *disk_path, *base_path;

static void die(const char *what, struct cdisk_ctx *ctx)
{
	fprintf(stderr, "crashtest: %s: %s\n", what, ctx ? cdisk_ctx_error(ctx) : "");
	exit(1);
}

static uint32_t rnd(uint32_t n)
{
	return (uint32_t)(random() % n);
}

/* Remember that blocks may now hold seed. */
static bool add_pending(uint32_t first, uint32_t count, uint32_t seed)
{
	for (uint32_t i = first; i < first + count; i++)
		if (m->b[i].npending == MAX_PENDING)
			return false;
	for (uint32_t i = first; i < first + count; i++)
		m->b[i].pending[m->b[i].npending++] = seed;
	return true;
}

static void flushed(void)
{
	for (uint32_t i = 0; i < m->nblocks; i++) {
		struct block_model *b = &m->b[i];

		uint8_t changed = b->mark_set | b->mark_cleared;

		b->mark_durable = (uint8_t)((b->mark_durable & ~changed) | (b->mark_last & changed));
		__atomic_store_n(&b->mark_set, 0, __ATOMIC_SEQ_CST);
		__atomic_store_n(&b->mark_cleared, 0, __ATOMIC_SEQ_CST);
		if (m->b[i].npending) {
			m->b[i].durable = m->b[i].pending[m->b[i].npending - 1];
			__atomic_store_n(&m->b[i].npending, 0, __ATOMIC_SEQ_CST);
		}
	}
}

/* What a sync does for one range: copy to the base, flush it, mark clean. */
static void sync_range(struct cdisk *d, int base_fd, uint32_t first, uint32_t count)
{
	uint8_t *buf = malloc((size_t)count * bs);

	for (uint32_t i = first; i < first + count; i++)
		if (m->b[i].npending) {
			free(buf);
			return;   /* only synced when flushed: keeps the model exact */
		}
	if (cdisk_pread(d, buf, (size_t)count * bs, (uint64_t)first * bs) < 0)
		die("child read", d->ctx);
	for (uint32_t i = first; i < first + count; i++)
		m->b[i].base_new = m->b[i].durable;
	if (cd_pwrite_full(base_fd, buf, (size_t)count * bs, (uint64_t)first * bs) < 0 ||
	    fdatasync(base_fd) < 0)
		die("child base write", NULL);
	for (uint32_t i = first; i < first + count; i++) {
		m->b[i].base = m->b[i].base_new;
		m->b[i].base_new = NONE;
	}
	if (cd_mark_clean(d, first / per_block, count / per_block) < 0)
		die("child mark clean", d->ctx);
	free(buf);
}

/* Set or clear a run of one extra bitmap; the model hears first.  Until
 * the next flush a bit may be as flushed or any value given since. */
static void mark_range(struct cdisk *d, uint32_t first, uint32_t count)
{
	unsigned id = 2 + rnd(nbitmaps - 2);
	bool value = rnd(2);
	uint8_t bit = (uint8_t)(1u << id);
	int r;

	for (uint32_t i = first; i < first + count; i++) {
		struct block_model *b = &m->b[i];

		b->mark_last = (uint8_t)(value ? b->mark_last | bit : b->mark_last & ~bit);
		if (value)
			__atomic_or_fetch(&b->mark_set, bit, __ATOMIC_SEQ_CST);
		else
			__atomic_or_fetch(&b->mark_cleared, bit, __ATOMIC_SEQ_CST);
	}
	pthread_mutex_lock(&d->lock);
	r = cd_disk_mark_locked(d, id, first / per_block, count / per_block, value);
	pthread_mutex_unlock(&d->lock);
	if (r < 0)
		die("child mark", d->ctx);
}

static void child(void)
{
	struct cdisk_ctx *ctx = cdisk_ctx_new();
	struct cdisk *d;
	int base_fd = open(base_path, O_RDWR);
	uint8_t *buf = malloc((size_t)(64 + 4 * per_block) * bs);

	if (cdisk_ctx_load_config(ctx, NULL) < 0 || cdisk_open(ctx, disk_path, 0, &d) < 0)
		die("child open", ctx);
	for (;;) {
		uint32_t nblk = m->nblocks / per_block;
		uint32_t count = 1 + rnd(rnd(4) ? 4 : (64 / per_block ? 64 / per_block : 1)), op = rnd(100);
		uint32_t first = rnd(nblk - count + 1) * per_block;

		count *= per_block;
		uint32_t seed = __atomic_add_fetch(&m->next_seed, 1, __ATOMIC_SEQ_CST);
		int r = 0;

		if (op < 12) {
			r = cdisk_flush(d);
			if (r == 0)
				flushed();
		} else if (op < 20) {
			sync_range(d, base_fd, first, count);
		} else if (nbitmaps > 2 && op >= 90) {
			mark_range(d, first, count);
		} else if (op < 26) {
			if (!add_pending(first, count, 0))
				continue;
			r = rnd(2) ? cdisk_write_zeroes(d, (size_t)count * bs, (uint64_t)first * bs)
				   : cdisk_discard(d, (size_t)count * bs, (uint64_t)first * bs);
		} else {
			if (!add_pending(first, count, seed))
				continue;
			pattern_fill(buf, (size_t)count * bs, (uint64_t)first * bs, seed);
			r = cdisk_pwrite(d, buf, (size_t)count * bs, (uint64_t)first * bs);
		}
		if (r < 0)
			die("child I/O", ctx);
	}
}

static bool holds(const uint8_t *buf, uint32_t b, uint32_t seed)
{
	return pattern_check(buf, bs, (uint64_t)b * bs, seed);
}

static int verify_unit(struct cdisk *d, uint32_t b, const uint8_t *buf,
		       const uint8_t *basebuf)
{
	struct block_model *bm = &m->b[b];
	uint64_t blk = b / per_block;
	uint32_t found = bm->durable;
	bool ok = holds(buf, b, bm->durable);
	int errors = 0;

	for (uint32_t i = 0; i < bm->npending && !ok; i++)
		if (holds(buf, b, bm->pending[i])) {
			ok = true;
			found = bm->pending[i];
		}
	if (!ok) {
		fprintf(stderr, "crashtest: unit %u holds none of: durable %u, %u pending "
			"(present %d dirty %d)\n", b, bm->durable, bm->npending,
			cd_bitmap_get(&d->present, blk), cd_bitmap_get(&d->dirty, blk));
		return 1;
	}
	/* The base, after an interrupted base write, holds old or new. */
	if (bm->base_new != NONE && holds(basebuf, b, bm->base_new))
		bm->base = bm->base_new;
	bm->base_new = NONE;
	if (!holds(basebuf, b, bm->base)) {
		fprintf(stderr, "crashtest: base unit %u is not what was written\n", b);
		errors++;
	}
	if (cd_bitmap_get(&d->present, blk) && !cd_bitmap_get(&d->dirty, blk) &&
	    memcmp(buf, basebuf, bs) != 0) {
		fprintf(stderr, "crashtest: unit %u is recorded clean but differs "
			"from the base\n", b);
		errors++;
	}
	if (!cd_bitmap_get(&d->present, blk) && memcmp(buf, basebuf, bs) != 0) {
		fprintf(stderr, "crashtest: unit %u is not present but does not read "
			"as the base\n", b);
		errors++;
	}
	for (unsigned id = 2; id < nbitmaps; id++) {
		uint8_t bit = (uint8_t)(1u << id);
		bool now = cd_bitmap_get(cd_disk_bitmap(d, id), blk);

		if (now == !!(bm->mark_durable & bit) || (now && (bm->mark_set & bit)) ||
		    (!now && (bm->mark_cleared & bit)))
			bm->mark_durable = (uint8_t)(now ? bm->mark_durable | bit :
						     bm->mark_durable & ~bit);
		else {
			fprintf(stderr, "crashtest: bit %llu of bitmap %u is %d; flushed "
				"%d and not changed since\n", (unsigned long long)blk, id,
				now, !now);
			errors++;
		}
	}
	bm->mark_last = bm->mark_durable;
	bm->mark_set = bm->mark_cleared = 0;
	/* Open wrote the recovered state durably: this is now flushed. */
	bm->durable = found;
	bm->npending = 0;
	return errors;
}

static int verify(struct cdisk *d)
{
	size_t block = (size_t)bs * per_block;
	uint8_t *buf = malloc(block), *basebuf = malloc(block);
	int base_fd = open(base_path, O_RDONLY), errors = 0;

	for (uint32_t b = 0; b < m->nblocks && errors < 10; b += per_block) {
		if (cdisk_pread(d, buf, block, (uint64_t)b * bs) < 0)
			die("parent read", d->ctx);
		if (cd_pread_full(base_fd, basebuf, block, (uint64_t)b * bs) < 0)
			die("parent base read", NULL);
		for (uint32_t u = 0; u < per_block; u++)
			errors += verify_unit(d, b + u, buf + (size_t)u * bs,
					      basebuf + (size_t)u * bs);
	}
	close(base_fd);
	free(buf);
	free(basebuf);
	return errors;
}

int main(int argc, char **argv)
{
	char path[4096], bpath[4096];
	unsigned iterations, seed;
	uint32_t nblocks;
	struct cdisk_ctx *ctx = cdisk_ctx_new();
	uint64_t recovered = 0, replayed = 0;

	if (argc < 3) {
		fprintf(stderr, "usage: crashtest DIR ITERATIONS [BLOCK_SIZE] [BLOCKS] [SEED]\n");
		return 2;
	}
	iterations = (unsigned)atoi(argv[2]);
	uint32_t block_size = argc > 3 ? (uint32_t)atoi(argv[3]) : 4096;
	nblocks = argc > 4 ? (uint32_t)atoi(argv[4]) : 4096;
	bs = block_size < 4096 ? block_size : 4096;
	per_block = block_size / bs;
	nblocks *= per_block;
	seed = argc > 5 ? (unsigned)atoi(argv[5]) : (unsigned)time(NULL);
	if (cdisk_ctx_load_config(ctx, NULL) < 0)
		die("config", ctx);
	srandom(seed);
	snprintf(path, sizeof(path), "%s/crash.cdisk", argv[1]);
	snprintf(bpath, sizeof(bpath), "%s/crash-base.img", argv[1]);
	disk_path = path;
	base_path = bpath;

	m = mmap(NULL, sizeof(*m) + nblocks * sizeof(m->b[0]), PROT_READ | PROT_WRITE,
		 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	m->nblocks = nblocks;
	m->next_seed = 1;
	/* The base starts with a pattern of its own (seed 1). */
	{
		int fd = open(bpath, O_RDWR | O_CREAT | O_TRUNC, 0600);
		uint8_t *buf = malloc(bs);
		for (uint32_t b = 0; b < nblocks; b++) {
			pattern_fill(buf, bs, (uint64_t)b * bs, 1);
			cd_pwrite_full(fd, buf, bs, (uint64_t)b * bs);
			m->b[b].durable = m->b[b].base = 1;
			m->b[b].base_new = NONE;
		}
		fsync(fd);
		close(fd);
		free(buf);
	}
	unlink(path);
	struct cdisk_create_opts o = { .size = (uint64_t)nblocks * bs, .block_size = block_size,
				       .base = bpath };
	if (cdisk_create(ctx, path, &o) < 0)
		die("create", ctx);
	if (getenv("CRASHTEST_BITMAPS")) {
		struct cdisk *d;

		nbitmaps = (unsigned)atoi(getenv("CRASHTEST_BITMAPS"));
		if (nbitmaps < 3 || nbitmaps > CD_BITMAPS_MAX)
			die("CRASHTEST_BITMAPS is not from 3 to 8", NULL);
		if (cdisk_open(ctx, path, 0, &d) < 0 || cd_disk_add_bitmaps(d, nbitmaps) < 0 ||
		    cdisk_close(d) < 0)
			die("add bitmaps", ctx);
	}

	for (unsigned it = 0; it < iterations; it++) {
		struct cdisk *d;
		pid_t pid = fork();
		int errors;

		if (pid == 0)
			child();
		usleep(1000 + rnd(it % 3 == 0 ? 200000 : 30000));
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		if (cdisk_open(ctx, path, 0, &d) < 0) {
			fprintf(stderr, "crashtest: iteration %u (seed %u): %s\n", it, seed,
				cdisk_ctx_error(ctx));
			return 1;
		}
		recovered += d->recovered_blocks;
		replayed += d->j_replayed;
		errors = verify(d);
		if (cdisk_close(d) < 0)
			die("close", ctx);
		if (errors) {
			fprintf(stderr, "crashtest: iteration %u (seed %u): %d errors\n",
				it, seed, errors);
			cdisk_ctx_free(ctx);
			return 1;
		}
	}
	munmap(m, sizeof(*m) + nblocks * sizeof(m->b[0]));
	printf("crashtest: %u kills, %llu journal records replayed, %llu blocks "
	       "recovered from the activity log, %u bitmaps, no loss (seed %u)\n",
	       iterations, (unsigned long long)replayed, (unsigned long long)recovered,
	       nbitmaps, seed);
	cdisk_ctx_free(ctx);
	return 0;
}

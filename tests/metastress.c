/* metastress: damage a disk's metadata in many ways, many times, and check
 * that every time it comes back from its backup with every flushed block
 * readable, and that after a sync the base equals the disk.
 *
 *   metastress DIR ROUNDS [SEED]
 *
 * Each round: write and flush patterns, close (a checkpoint: a backup),
 * write and flush more, then either close or stop as a crash would, then
 * damage the metadata, reopen, verify, sync, verify the base.
 *
 * With METASTRESS_BITMAPS=1 the disk has a third bitmap (the upgrade of
 * the first layout), the writer sets and clears runs of it, and the
 * damage may hit its checkpoint areas too: after each rebuild every bit
 * flushed set must still be set (an inexact rebuild sets them all), and
 * an exact one must give back the bitmap as flushed. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "bitmap.h"
#include "cdisk.h"
#include "disk.h"
#include "format.h"
#include "pattern.h"
#include "util.h"

#define BS 4096u
#define NBLOCKS 2048u

static uint32_t model[NBLOCKS];     /* flushed content of each block */
static uint32_t base_model[NBLOCKS];
static bool in_backup[NBLOCKS];     /* present in the newest backup */
/* Zeroed while the newest backup did not hold it.  If the journal is lost too,
 * nothing records such a zeroing (a hole is a hole): an inexact restore
 * may read the base there again.  cdisk(5) documents this. */
static bool zeroed_absent[NBLOCKS];
static bool mark_model[NBLOCKS];    /* bitmap 2 as flushed */
static bool mark_now[NBLOCKS];      /* ... as last set or cleared */
static bool with_bitmaps;
static bool rebuilt_inexact;        /* by restore_unprovable, before the open */
static char disk_path[4096], base_path[4096];
static struct cdisk_ctx *ctx;
static unsigned round_no, seed, ambiguous;

static void die(const char *what)
{
	fprintf(stderr, "metastress: round %u (seed %u): %s: %s\n", round_no, seed,
		what, cdisk_ctx_error(ctx));
	exit(1);
}

static uint32_t rnd(uint32_t n)
{
	return (uint32_t)(random() % n);
}

/* Open and close both leave a backup of the state as it then is (open
 * only when it recovered, which it then checkpoints; at worst this
 * remembers an older backup, which only widens what may be ambiguous). */
static void remember_backup(struct cdisk *d)
{
	for (uint32_t b = 0; b < NBLOCKS; b++)
		in_backup[b] = cd_bitmap_get(&d->present, b);
}

static struct cdisk *open_disk(void)
{
	struct cdisk *d;

	if (cdisk_open(ctx, disk_path, CDISK_OPEN_NO_BASE, &d) < 0)
		die("open");
	if (d->j_replayed || d->recovered_blocks || d->restore.restored)
		remember_backup(d);
	return d;
}

static void close_disk(struct cdisk *d)
{
	if (cdisk_flush(d) < 0)
		die("flush");
	remember_backup(d);
	if (cdisk_close(d) < 0)
		die("close");
}

/* Nothing left in the file names its disk: the administrator's two
 * steps, a forced restore (which marks the disk unconfirmed, and which
 * must not be needed when anything proves the backup) and the confirm. */
static void restore_unprovable(void)
{
	struct cdisk_restore_report rep;
	bool changed;

	if (cdisk_restore_metadata(ctx, disk_path, NULL, false, &rep) != -EUCLEAN)
		die("an unprovable backup was not refused");
	if (cdisk_restore_metadata(ctx, disk_path, NULL, true, &rep) < 0 ||
	    !rep.restored || !rep.unconfirmed)
		die("forced restore");
	if (cdisk_restore_confirm(ctx, disk_path, &changed) < 0 || !changed)
		die("confirm");
	rebuilt_inexact = !rep.exact;
}

static void mark_some(struct cdisk *d)
{
	uint32_t count = 1 + rnd(64), first = rnd(NBLOCKS - count + 1);
	bool value = rnd(2);
	int r;

	pthread_mutex_lock(&d->lock);
	r = cd_disk_mark_locked(d, CD_BM_MIRROR, first, count, value);
	pthread_mutex_unlock(&d->lock);
	if (r < 0)
		die("mark");
	for (uint32_t b = first; b < first + count; b++)
		mark_now[b] = value;
}

static void write_some(struct cdisk *d, unsigned ops, uint32_t *next_seed)
{
	uint8_t *buf = malloc(16 * BS);

	for (unsigned i = 0; i < ops; i++) {
		uint32_t count = 1 + rnd(16), first = rnd(NBLOCKS - count + 1);
		uint32_t s = rnd(5) ? (*next_seed)++ : 0;
		int r;

		if (s) {
			pattern_fill(buf, (size_t)count * BS, (uint64_t)first * BS, s);
			r = cdisk_pwrite(d, buf, (size_t)count * BS, (uint64_t)first * BS);
		} else {
			r = cdisk_write_zeroes(d, (size_t)count * BS, (uint64_t)first * BS);
		}
		if (r < 0)
			die("write");
		for (uint32_t b = first; b < first + count; b++) {
			zeroed_absent[b] = s == 0 && !in_backup[b];
			model[b] = s;
		}
		if (with_bitmaps && rnd(3) == 0)
			mark_some(d);
		if (rnd(4) == 0) {
			if (cdisk_flush(d) < 0)
				die("flush");
			memcpy(mark_model, mark_now, sizeof(mark_model));
		}
	}
	if (cdisk_flush(d) < 0)
		die("flush");
	if (with_bitmaps)
		memcpy(mark_model, mark_now, sizeof(mark_model));
	free(buf);
}

/* What cdisk-sync does, reduced: dirty blocks to the base, base flushed,
 * then marked clean. */
static void sync_to_base(struct cdisk *d)
{
	int fd = open(base_path, O_RDWR);
	uint8_t buf[BS];

	for (uint64_t b = cd_bitmap_find(&d->dirty, 0, true); b < d->nblocks;
	     b = cd_bitmap_find(&d->dirty, b + 1, true)) {
		if (cdisk_pread(d, buf, BS, b * BS) < 0 ||
		    cd_pwrite_full(fd, buf, BS, b * BS) < 0)
			die("sync");
		base_model[b] = model[b];
	}
	if (fdatasync(fd) < 0)
		die("sync flush");
	close(fd);
	if (cd_mark_clean(d, 0, d->nblocks) < 0 || cdisk_flush(d) < 0)
		die("mark clean");
}

static void verify(struct cdisk *d, const char *when)
{
	int fd = open(base_path, O_RDONLY);
	uint8_t buf[BS], bbuf[BS];

	for (uint32_t b = 0; b < NBLOCKS; b++) {
		if (cdisk_pread(d, buf, BS, (uint64_t)b * BS) < 0)
			die("read");
		if (zeroed_absent[b] && !d->restore.exact &&
		    pattern_check(buf, BS, (uint64_t)b * BS, base_model[b]) &&
		    !pattern_check(buf, BS, (uint64_t)b * BS, model[b])) {
			/* The documented case: it reads the base, now for good. */
			model[b] = base_model[b];
			ambiguous++;
		}
		zeroed_absent[b] = false;
		if (!pattern_check(buf, BS, (uint64_t)b * BS, model[b]) &&
		    !(zeroed_absent[b] && !d->restore.exact &&
		      pattern_check(buf, BS, (uint64_t)b * BS, base_model[b]))) {
			fprintf(stderr, "metastress: round %u (seed %u) %s: block %u lost its "
				"flushed content (want seed %u; present %d dirty %d, restore "
				"exact %d, %llu records, %llu reconciled, first word %016llx)\n",
				round_no, seed, when, b, model[b], cd_bitmap_get(&d->present, b),
				cd_bitmap_get(&d->dirty, b), d->restore.exact,
				(unsigned long long)d->restore.records_replayed,
				(unsigned long long)d->restore.blocks_reconciled,
				(unsigned long long)*(uint64_t *)buf);
			exit(1);
		}
		if (cd_pread_full(fd, bbuf, BS, (uint64_t)b * BS) < 0)
			die("base read");
		/* A block the records call clean must equal the base. */
		if (cd_bitmap_get(&d->present, b) && !cd_bitmap_get(&d->dirty, b) &&
		    memcmp(buf, bbuf, BS) != 0) {
			fprintf(stderr, "metastress: round %u (seed %u) %s: block %u is clean "
				"but differs from the base\n", round_no, seed, when, b);
			exit(1);
		}
	}
	close(fd);
}

static void verify_marks(struct cdisk *d, const char *when)
{
	struct cd_bitmap *bm;

	if (!with_bitmaps)
		return;
	if (d->sb.nbitmaps != 3) {
		fprintf(stderr, "metastress: round %u (seed %u) %s: the disk has %u "
			"bitmaps, not 3\n", round_no, seed, when, d->sb.nbitmaps);
		exit(1);
	}
	bm = cd_disk_bitmap(d, CD_BM_MIRROR);
	for (uint32_t b = 0; b < NBLOCKS; b++) {
		bool now = cd_bitmap_get(bm, b);

		if ((mark_model[b] && !now) ||
		    (now != mark_model[b] && !rebuilt_inexact &&
		     (!d->restore.restored || (d->restore.exact &&
		      !d->sb_bad_at_open[0] && !d->sb_bad_at_open[1])))) {
			fprintf(stderr, "metastress: round %u (seed %u) %s: bit %u of bitmap "
				"2 is %d, flushed as %d (restored %d, exact %d)\n", round_no,
				seed, when, b, now, mark_model[b], d->restore.restored,
				d->restore.exact);
			exit(1);
		}
		mark_model[b] = mark_now[b] = now;
	}
	rebuilt_inexact = false;
}

static void scribble(int fd, uint64_t off, uint64_t len, int how)
{
	uint8_t *buf = malloc(len);

	for (uint64_t i = 0; i < len; i++)
		buf[i] = how == 0 ? 0 : (uint8_t)random();
	cd_pwrite_full(fd, buf, len, off);
	free(buf);
}

/* Flip a bit in the last stored page that the directory at area (of
 * dir_len bytes, then the pages) names among its first pages; with none
 * stored, scribble over the directory instead and say so (false). */
static bool flip_stored_bit(int fd, uint64_t area, uint64_t dir_len, uint32_t pages)
{
	uint32_t page = pages;
	uint8_t entry[8], byte;
	uint64_t off;

	for (uint32_t i = 0; i < pages; i++) {
		cd_pread_full(fd, entry, sizeof(entry), area + (uint64_t)i * 8);
		if (cd_get_le32(entry))
			page = i;
	}
	if (page == pages) {
		scribble(fd, area, 16, 1);
		return false;
	}
	off = area + dir_len + (uint64_t)page * 4096 + rnd(4096);
	cd_pread_full(fd, &byte, 1, off);
	byte ^= (uint8_t)(1u << rnd(8));
	cd_pwrite_full(fd, &byte, 1, off);
	return true;
}

static const char *damage(void)
{
	struct cdisk *cfg;
	int fd = open(disk_path, O_RDWR);
	const char *what;
	uint64_t cp;

	if (cdisk_open(ctx, disk_path, CDISK_OPEN_CONFIG_ONLY, &cfg) < 0)
		die("read config");
	cp = cfg->sb.cp_offset[cfg->sb.cp_active];
	switch (rnd(with_bitmaps ? 9 : 7)) {
	case 0:
		what = "random bytes over both superblocks";
		scribble(fd, rnd(2000), 100 + rnd(2000), 1);
		scribble(fd, 4096 + rnd(2000), 100 + rnd(2000), 1);
		break;
	case 1:
		what = "both superblocks zeroed";
		scribble(fd, 0, 8192, 0);
		break;
	case 2:
		what = "checkpoint directory damaged";
		scribble(fd, cp + rnd(64), 8, 1);
		break;
	case 3:
		/* The first area's directory is 4096 bytes here. */
		what = "bitmap bits flipped";
		if (!flip_stored_bit(fd, cp, 4096, 2 * cd_bitmap_pages(NBLOCKS)))
			what = "checkpoint directory damaged (no stored page to flip)";
		break;
	case 4:
		what = "superblock A and the journal damaged";
		scribble(fd, 0, 4096, 1);
		scribble(fd, 8192 + 4096ull * rnd(8), 4096, 1);
		scribble(fd, cp, 64, 1);
		break;
	case 5:
		what = "journal truncated (zeroed) and checkpoint damaged";
		scribble(fd, 8192, 1 << 20, 0);
		scribble(fd, cp, 64, 1);
		break;
	case 7:
		what = "extra checkpoint directory damaged";
		scribble(fd, cd_extra_area_offset(&cfg->sb, cfg->sb.cp_active) + rnd(64), 8, 1);
		break;
	case 8: {
		uint64_t ecp = cd_extra_area_offset(&cfg->sb, cfg->sb.cp_active);

		what = "extra bitmap bits flipped";
		if (!flip_stored_bit(fd, ecp, cd_extra_area_size(&cfg->sb) -
				     (uint64_t)cd_extra_area_pages(&cfg->sb) * 4096,
				     cd_bitmap_pages(NBLOCKS)))
			what = "extra checkpoint directory damaged (no stored page)";
		break;
	}
	default:
		what = "everything but the data zeroed";
		scribble(fd, 0, cfg->sb.data_offset, 0);
		break;
	}
	fsync(fd);
	close(fd);
	cd_disk_free(cfg);
	return what;
}

int main(int argc, char **argv)
{
	unsigned rounds, restores = 0;
	uint32_t next_seed = 2;

	if (argc < 3) {
		fprintf(stderr, "usage: metastress DIR ROUNDS [SEED]\n");
		return 2;
	}
	rounds = (unsigned)atoi(argv[2]);
	seed = argc > 3 ? (unsigned)atoi(argv[3]) : (unsigned)time(NULL);
	srandom(seed);
	snprintf(disk_path, sizeof(disk_path), "%s/stress.cdisk", argv[1]);
	snprintf(base_path, sizeof(base_path), "%s/stress-base.img", argv[1]);
	ctx = cdisk_ctx_new();
	if (cdisk_ctx_load_config(ctx, NULL) < 0)
		die("config");
	{
		int fd = open(base_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
		uint8_t buf[BS];

		for (uint32_t b = 0; fd >= 0 && b < NBLOCKS; b++) {
			pattern_fill(buf, BS, (uint64_t)b * BS, 1);
			cd_pwrite_full(fd, buf, BS, (uint64_t)b * BS);
			model[b] = base_model[b] = 1;
		}
		if (fd < 0)
			die("base");
		close(fd);
	}
	unlink(disk_path);
	struct cdisk_create_opts o = { .size = (uint64_t)NBLOCKS * BS, .base = base_path };
	if (cdisk_create(ctx, disk_path, &o) < 0)
		die("create");
	if (getenv("METASTRESS_BITMAPS")) {
		struct cdisk *d = open_disk();

		with_bitmaps = true;
		if (cd_disk_add_bitmaps(d, 3) < 0)
			die("add a bitmap");
		close_disk(d);
	}

	for (round_no = 0; round_no < rounds; round_no++) {
		struct cdisk *d = open_disk();
		const char *what;

		write_some(d, 5 + rnd(30), &next_seed);
		if (rnd(3) == 0)
			sync_to_base(d);
		close_disk(d);
		d = open_disk();
		write_some(d, 1 + rnd(30), &next_seed);
		if (rnd(2))
			cd_disk_free(d);          /* as a crash leaves it */
		else
			close_disk(d);
		what = damage();
		if (strcmp(what, "everything but the data zeroed") == 0)
			restore_unprovable();
		d = open_disk();
		if (d->restore.restored)
			restores++;
		verify(d, what);
		verify_marks(d, what);
		sync_to_base(d);
		verify(d, "after sync");
		close_disk(d);
	}
	printf("metastress: %u rounds, %u rebuilt from the backup, no flushed write lost, "
	       "%u zeroings of absent blocks undone by inexact restores, %s (seed %u)\n",
	       rounds, restores, ambiguous, with_bitmaps ? "3 bitmaps" : "2 bitmaps", seed);
	cdisk_ctx_free(ctx);
	return 0;
}

/* cdisk_check: verify what open did not already prove, and repair what
 * can be repaired without guessing. */
#include <stdarg.h>
#include <stdio.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backup.h"
#include "bitmap.h"
#include "cdisk.h"
#include "ctx.h"
#include "disk.h"
#include "journal.h"
#include "util.h"

static void add_line(struct cdisk_check_report *rep, const char *fmt, ...) CD_PRINTF(2, 3);

/* Each problem counts once and is told in the line that follows: a line
 * that comes after a count went up is a problem, the others are facts. */
static void add_line(struct cdisk_check_report *rep, const char *fmt, ...)
{
	char (*lines)[160] = realloc(rep->lines, (rep->nlines + 1) * sizeof(*lines));
	bool *problems;
	unsigned told = 0;
	va_list ap;

	if (!lines)
		return;
	rep->lines = lines;
	problems = realloc(rep->problems, (rep->nlines + 1) * sizeof(*problems));
	if (!problems)
		return;
	rep->problems = problems;
	for (unsigned n = 0; n < rep->nlines; n++)
		told += problems[n];
	problems[rep->nlines] = rep->errors + rep->repaired + rep->warnings > told;
	va_start(ap, fmt);
	vsnprintf(rep->lines[rep->nlines++], sizeof(*lines), fmt, ap);
	va_end(ap);
}

void cdisk_check_report_free(struct cdisk_check_report *rep)
{
	free(rep->lines);
	free(rep->problems);
	memset(rep, 0, sizeof(*rep));
}

static void check_superblocks(struct cdisk *d, bool repair,
			      struct cdisk_check_report *rep)
{
	for (int i = 0; i < 2; i++) {
		if (!d->sb_bad_at_open[i])
			continue;
		if (d->sb_valid[i]) {
			/* Opening for writing rewrote the damaged copy. */
			rep->repaired++;
			add_line(rep, "superblock %c was damaged: rewritten from copy %c",
				 'A' + i, 'A' + (1 - i));
		} else if (repair && !d->readonly && cd_sb_write(d) == 0) {
			rep->repaired++;
			add_line(rep, "superblock %c was damaged: rewritten from copy %c",
				 'A' + i, 'A' + (1 - i));
		} else {
			rep->errors++;
			add_line(rep, "superblock %c is damaged; copy %c is intact%s",
				 'A' + i, 'A' + (1 - i),
				 d->readonly ? " (open for writing to repair)" : "");
		}
	}
}

/* Dirty means "held by the overlay and newer than the base": a dirty
 * block that is not present would read stale data from the base. */
static int check_dirty_subset(struct cdisk *d, bool repair,
			      struct cdisk_check_report *rep)
{
	uint64_t bad = 0;

	for (uint64_t b = cd_bitmap_find(&d->dirty, 0, true); b < d->nblocks;
	     b = cd_bitmap_find(&d->dirty, b + 1, true)) {
		if (cd_bitmap_get(&d->present, b))
			continue;
		bad++;
		if (repair && !d->readonly) {
			int r = cd_bitmap_assign(&d->present, b, 1, true);
			if (r == 0)
				r = cd_journal_add_run(d, b, 1, CD_RUN_DIRTY);
			if (r < 0)
				return r;
		}
	}
	if (!bad)
		return 0;
	if (repair && !d->readonly) {
		rep->repaired++;
		add_line(rep, "%llu dirty blocks were not marked present: marked present",
			 (unsigned long long)bad);
		d->unflushed = true;
	} else {
		rep->errors++;
		add_line(rep, "%llu dirty blocks are not marked present",
			 (unsigned long long)bad);
	}
	return 0;
}

/* Data the records do not claim is left by writes that a crash cut off
 * before their flush; it is never read, only wasted space.  With blocks
 * smaller than the filesystem's, neighbours share allocation, so only
 * filesystem blocks that hold no present block at all count. */
static uint64_t release_stray(struct cdisk *d, uint64_t first, uint64_t last,
			      uint64_t group, bool repair)
{
	uint64_t count = 0;

	for (uint64_t b = cd_bitmap_find(&d->present, first, false); b < last;) {
		uint64_t stop = cd_bitmap_find(&d->present, b, true);
		uint64_t lo = cd_round_up(b, group), hi;

		if (stop > last)
			stop = last;
		hi = stop / group * group;
		if (hi > lo) {
			count += hi - lo;
			if (repair && !d->readonly)
				fallocate(d->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					  (off_t)(d->sb.data_offset + (lo << d->block_shift)),
					  (off_t)((hi - lo) << d->block_shift));
		}
		b = cd_bitmap_find(&d->present, stop, false);
	}
	return count;
}

struct stray_walk {
	uint64_t group, count;
	bool repair;
};

static int count_stray(struct cdisk *d, uint64_t first, uint64_t last, void *opaque)
{
	struct stray_walk *w = opaque;

	w->count += release_stray(d, first, last, w->group, w->repair);
	return 0;
}

static int check_stray_data(struct cdisk *d, bool repair,
			    struct cdisk_check_report *rep)
{
	struct stray_walk w = { .group = 1, .repair = repair && !d->readonly };
	struct stat st;

	if (fstat(d->fd, &st) == 0 && (uint64_t)st.st_blksize > d->block_size)
		w.group = (uint64_t)st.st_blksize / d->block_size;
	cd_for_each_allocated(d, count_stray, &w);
	if (w.count) {
		if (w.repair) {
			rep->repaired++;
			add_line(rep, "%llu blocks held unflushed data from an earlier crash: "
				 "space released", (unsigned long long)w.count);
		} else {
			rep->warnings++;
			add_line(rep, "%llu blocks hold unflushed data from an earlier crash "
				 "(harmless; repair releases the space)",
				 (unsigned long long)w.count);
		}
	}
	return 0;
}

static const char *age_text(uint64_t s, char *buf, size_t len)
{
	if (s < 120)
		snprintf(buf, len, "%llu s", (unsigned long long)s);
	else if (s < 7200)
		snprintf(buf, len, "%llu min", (unsigned long long)(s / 60));
	else if (s < 172800)
		snprintf(buf, len, "%llu h", (unsigned long long)(s / 3600));
	else
		snprintf(buf, len, "%llu days", (unsigned long long)(s / 86400));
	return buf;
}

/* The backup is the disk's second life: where it is, how old, and
 * whether it matches.  A missing, damaged or foreign backup is refreshed
 * when repairing: the disk itself is sound at this point. */
static const char *backup_problem(const struct cd_backup_status *st)
{
	if (!st->valid)
		return st->error == -ENOENT ? "missing" : "damaged";
	return "of another disk (UUID differs)";
}

static void check_backup(struct cdisk *d, bool repair, struct cdisk_check_report *rep)
{
	struct cd_backup_status st;
	char age[32];
	bool fix = repair && !d->readonly;

	if (cd_backup_status(d, &st) < 0) {
		rep->warnings++;
		add_line(rep, "metadata backup: none configured (see backup_dir in cdisk(7))");
		return;
	}
	snprintf(rep->backup_path, sizeof(rep->backup_path), "%s", st.path);
	if (st.valid && st.same_disk) {
		rep->backup_age = st.age;
		rep->backup_matches = st.matches;
		if (st.matches)
			add_line(rep, "metadata backup %.80s: taken %s ago, matches the disk",
				 st.path, age_text(st.age, age, sizeof(age)));
		else
			add_line(rep, "metadata backup %.80s: taken %s ago, %llu journal "
				 "records behind (the journal holds them)", st.path,
				 age_text(st.age, age, sizeof(age)),
				 (unsigned long long)(d->j_seq - st.jseq));
		return;
	}
	if (fix && cd_backup_write_now(d) == 0) {
		rep->repaired++;
		rep->backup_matches = true;
		add_line(rep, "metadata backup %.60s was %s: written anew", st.path,
			 backup_problem(&st));
		return;
	}
	rep->warnings++;
	add_line(rep, "metadata backup %.60s is %s", st.path, backup_problem(&st));
}

static int check_locked(struct cdisk *d, bool repair, struct cdisk_check_report *rep);

int cdisk_check(struct cdisk *d, bool repair, struct cdisk_check_report *rep)
{
	pthread_mutex_lock(&d->lock);
	int r = check_locked(d, repair, rep);
	pthread_mutex_unlock(&d->lock);
	return r;
}

static int check_locked(struct cdisk *d, bool repair, struct cdisk_check_report *rep)
{
	int r;

	memset(rep, 0, sizeof(*rep));
	add_line(rep, "superblock %c is live (sequence %llu), checksum good",
		 'A' + d->sb_live, (unsigned long long)d->sb.seq);
	check_superblocks(d, repair, rep);
	add_line(rep, "checkpoint %c: directory and %u bitmap pages of %u bitmaps pass "
		 "their checksums", 'A' + d->sb.cp_active,
		 (unsigned)(d->sb.nbitmaps * d->present.npages), (unsigned)d->sb.nbitmaps);
	add_line(rep, "journal: %llu records replayed%s", (unsigned long long)d->j_replayed,
		 d->j_torn ? ", a torn last record ignored (a crash during a write)" : "");
	if (d->recovered_blocks)
		add_line(rep, "activity log: %llu blocks marked dirty after an unclean close",
			 (unsigned long long)d->recovered_blocks);
	r = check_dirty_subset(d, repair, rep);
	if (r == 0)
		r = check_stray_data(d, repair, rep);
	if (r == 0 && repair && !d->readonly)
		r = cd_flush_locked(d);
	if (r == 0)
		check_backup(d, repair, rep);
	if (r < 0)
		return r;
	if (rep->errors && (!repair || d->readonly))
		return cd_error(d->ctx, -EUCLEAN, "'%s' has %u problem%s (not repaired: %s)",
				d->path, rep->errors, rep->errors == 1 ? "" : "s",
				repair ? "no write access" : "--no-repair");
	if (rep->errors)
		return cd_error(d->ctx, -EUCLEAN, "'%s' has %u problem%s that could not "
				"be repaired", d->path, rep->errors, rep->errors == 1 ? "" : "s");
	return 0;
}

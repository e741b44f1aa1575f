/* Metadata persistence: superblock updates, the journal of block-state
 * changes with the activity log, and checkpoints of the bitmaps.
 *
 * A flush writes at most one journal record and then one fdatasync covers
 * data and record together: both live in the same file, so nothing needs
 * ordering between them.  Records are replayed in sequence order from the
 * head the superblock names; the first record that is missing, torn or
 * of an older lap ends the log. */
#include <stdlib.h>
#include <sys/uio.h>
#include <unistd.h>

#include "backup.h"
#include "bitmap.h"
#include "cdisk.h"
#include "ctx.h"
#include "disk.h"
#include "format.h"
#include "journal.h"
#include "util.h"

enum {
	JR_MAGIC = 0, JR_LENGTH = 4, JR_SEQ = 8, JR_TAG = 16, JR_NRUNS = 24,
	JR_NAL = 28, JR_CRC = 32,
};

#define RUN_BYTES 16u
#define AL_BYTES 8u

static uint64_t uuid_tag(const struct cdisk *d)
{
	return cd_get_le64(d->sb.uuid);
}

static int sync_file(struct cdisk *d)
{
	if (fdatasync(d->fd) < 0)
		return cd_error(d->ctx, -errno, "cannot flush '%s': %s", d->path,
				strerror(errno));
	return 0;
}

int cd_sb_write(struct cdisk *d)
{
	uint8_t buf[CD_SB_SIZE];
	int slot = 1 - d->sb_live;
	int r;

	d->sb.seq++;
	cd_sb_encode(&d->sb, buf);
	r = cd_pwrite_full(d->fd, buf, CD_SB_SIZE, (uint64_t)slot * CD_SB_SIZE);
	if (r == 0)
		r = fdatasync(d->fd) < 0 ? -errno : 0;
	if (r < 0) {
		d->sb.seq--;
		return cd_error(d->ctx, r, "cannot write the superblock of '%s': %s",
				d->path, strerror(-r));
	}
	d->sb_live = slot;
	d->sb_valid[slot] = 1;
	return 0;
}

uint64_t cd_journal_record_max(const struct cdisk *d)
{
	return d->sb.journal_size / 4;
}

static uint64_t record_len(size_t nruns, uint32_t nal)
{
	return cd_round_up(CD_JR_HEADER + nruns * RUN_BYTES + nal * AL_BYTES,
			   CD_JR_ALIGN);
}

int cd_journal_add_run(struct cdisk *d, uint64_t first, uint64_t count,
		       uint32_t op)
{
	struct cd_run *last = d->nruns ? &d->runs[d->nruns - 1] : NULL;

	if (d->runs_overflow)
		return 0;
	/* Sequential writes extend the last run instead of adding one. */
	if (last && last->op == op && last->first + last->count == first &&
	    (uint64_t)last->count + count <= UINT32_MAX) {
		last->count += (uint32_t)count;
		return 0;
	}
	while (count) {
		uint32_t n = count > UINT32_MAX ? UINT32_MAX : (uint32_t)count;
		if (d->nruns == d->runs_cap) {
			size_t cap = d->runs_cap ? d->runs_cap * 2 : 64;
			struct cd_run *runs;

			if (record_len(cap, CD_AL_CAPACITY) > cd_journal_record_max(d)) {
				/* A checkpoint will carry these changes. */
				d->runs_overflow = true;
				return 0;
			}
			runs = realloc(d->runs, cap * sizeof(*runs));
			if (!runs)
				return cd_error(d->ctx, -ENOMEM, "'%s': out of memory", d->path);
			d->runs = runs;
			d->runs_cap = cap;
		}
		d->runs[d->nruns++] = (struct cd_run){ first, n, op };
		first += n;
		count -= n;
	}
	return 0;
}

static void encode_record(const struct cdisk *d, uint8_t *rec, uint64_t len)
{
	uint8_t *p = rec + CD_JR_HEADER;

	memset(rec, 0, len);
	cd_put_le32(rec + JR_MAGIC, CD_JR_MAGIC);
	cd_put_le32(rec + JR_LENGTH, (uint32_t)len);
	cd_put_le64(rec + JR_SEQ, d->j_seq + 1);
	cd_put_le64(rec + JR_TAG, uuid_tag(d));
	cd_put_le32(rec + JR_NRUNS, (uint32_t)d->nruns);
	cd_put_le32(rec + JR_NAL, d->al.count);
	for (size_t i = 0; i < d->nruns; i++, p += RUN_BYTES) {
		cd_put_le64(p, d->runs[i].first);
		cd_put_le32(p + 8, d->runs[i].count);
		cd_put_le32(p + 12, d->runs[i].op);
	}
	for (uint32_t i = 0; i < d->al.count; i++, p += AL_BYTES)
		cd_put_le64(p, d->al.extents[i]);
	cd_put_le32(rec + JR_CRC, cd_crc32c(0, rec, len));
}

/* Append one record with the pending runs and the activity log. */
static int append_record(struct cdisk *d, uint64_t len)
{
	uint64_t pos = d->j_pos, waste = 0;
	uint8_t *rec;
	int r;

	if (pos + len > d->sb.journal_size) {
		waste = d->sb.journal_size - pos;
		pos = 0;
	}
	rec = aligned_alloc(CD_JR_ALIGN, len);
	if (!rec)
		return cd_error(d->ctx, -ENOMEM, "'%s': out of memory", d->path);
	encode_record(d, rec, len);
	r = cd_pwrite_full(d->fd, rec, len, d->sb.journal_offset + pos);
	free(rec);
	if (r < 0)
		return cd_error(d->ctx, r, "cannot write the journal of '%s': %s",
				d->path, strerror(-r));
	d->j_seq++;
	d->j_pos = (pos + len) % d->sb.journal_size;
	d->j_used += waste + len;
	d->nruns = 0;
	return 0;
}

int cd_journal_commit(struct cdisk *d, bool sync)
{
	uint64_t len = record_len(d->nruns, d->al.count);
	int r;

	if (d->runs_overflow || len > cd_journal_record_max(d) ||
	    d->j_used + 2 * len > d->sb.journal_size / 2)
		return cd_checkpoint(d);
	r = append_record(d, len);
	if (r == 0 && sync)
		r = sync_file(d);
	return r;
}

/* ---- checkpoints ----
 * Pages are numbered across all bitmaps, bitmap by bitmap: the first two
 * bitmaps' pages live in the first pair of areas, the others' in the
 * extra pair after the data area.  Each area of a pair has one directory
 * (8 bytes a page: bits set, CRC-32C) and both pairs flip together, with
 * one superblock update. */

static uint32_t pages_per_bitmap(const struct cdisk *d)
{
	return d->present.npages;
}

static uint32_t total_pages(const struct cdisk *d)
{
	return d->sb.nbitmaps * pages_per_bitmap(d);
}

/* Pages in the first pair of areas. */
static uint32_t first_pages(const struct cdisk *d)
{
	return 2 * pages_per_bitmap(d);
}

struct cd_bitmap *cd_disk_bitmap(struct cdisk *d, unsigned id)
{
	if (id == CD_BM_PRESENT)
		return &d->present;
	if (id == CD_BM_DIRTY)
		return &d->dirty;
	return &d->extra[id - 2];
}

static struct cd_bitmap *page_owner(struct cdisk *d, uint32_t i, uint32_t *page)
{
	*page = i % pages_per_bitmap(d);
	return cd_disk_bitmap(d, i / pages_per_bitmap(d));
}

static uint64_t dir_len(const struct cdisk *d)
{
	return d->sb.cp_size - (uint64_t)first_pages(d) * CD_PAGE_SIZE;
}

static uint64_t extra_dir_len(const struct cdisk *d)
{
	return cd_extra_area_size(&d->sb) -
	       (uint64_t)cd_extra_area_pages(&d->sb) * CD_PAGE_SIZE;
}

/* Where a checkpoint directory keeps its disk's UUID: the last 16 bytes
 * of the directory's space when the entries leave room (0: they do not).
 * It lets a backup prove which disk a file is once both superblocks are
 * gone; directories written before it was kept hold zeros there. */
uint64_t cd_cp_dir_uuid_at(uint32_t pages, uint64_t dlen)
{
	return (uint64_t)pages * 8 + 16 <= dlen ? dlen - 16 : 0;
}

static uint64_t page_offset(const struct cdisk *d, uint32_t area, uint32_t i)
{
	if (i < first_pages(d))
		return d->sb.cp_offset[area] + dir_len(d) + (uint64_t)i * CD_PAGE_SIZE;
	return cd_extra_area_offset(&d->sb, area) + extra_dir_len(d) +
	       (uint64_t)(i - first_pages(d)) * CD_PAGE_SIZE;
}

/* Consecutive page numbers are consecutive on disk within one pair of
 * areas only. */
static bool pages_adjoin(const struct cdisk *d, uint32_t first, uint32_t next)
{
	return next == first + 1 && next != first_pages(d);
}

/* Pages go out in runs of consecutive page numbers with one pwritev
 * each: a checkpoint of a big, busy disk is a few large writes. */
struct page_batch {
	struct iovec iov[CD_BATCH_PAGES];
	uint32_t first, count;
};

static int batch_flush(struct cdisk *d, struct page_batch *b, uint32_t area)
{
	uint64_t off = page_offset(d, area, b->first);
	uint32_t done = 0;

	while (done < b->count) {
		ssize_t n = pwritev(d->fd, b->iov + done, (int)(b->count - done), (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		/* Short writes end on a page boundary in practice; resume there. */
		done += (uint32_t)((uint64_t)n / CD_PAGE_SIZE);
		off += (uint64_t)n / CD_PAGE_SIZE * CD_PAGE_SIZE;
		if ((uint64_t)n % CD_PAGE_SIZE)
			return -EIO;
	}
	b->count = 0;
	return 0;
}

/* entries: 8 bytes for every page of every bitmap. */
static int write_changed_pages(struct cdisk *d, uint32_t area, uint8_t *entries)
{
	struct page_batch *b = malloc(sizeof(*b));
	uint32_t n = total_pages(d);
	int r = 0;

	if (!b)
		return -ENOMEM;
	b->count = 0;
	for (uint32_t i = 0; i < n && r == 0; i++) {
		uint32_t p;
		struct cd_bitmap *bm = page_owner(d, i, &p);

		if (!bm->pages[p])
			continue;
		if (bm->page_changed[p] & (1u << area)) {
			if (b->count && (!pages_adjoin(d, b->first + b->count - 1, i) ||
					 b->count == CD_BATCH_PAGES))
				r = batch_flush(d, b, area);
			if (b->count == 0)
				b->first = i;
			b->iov[b->count++] = (struct iovec){ bm->pages[p], CD_PAGE_SIZE };
			d->cp_crc[i][area] = cd_crc32c(0, bm->pages[p], CD_PAGE_SIZE);
		}
		cd_put_le32(entries + (uint64_t)i * 8, bm->page_count[p]);
		cd_put_le32(entries + (uint64_t)i * 8 + 4, d->cp_crc[i][area]);
	}
	if (r == 0 && b->count)
		r = batch_flush(d, b, area);
	free(b);
	if (r < 0)
		return r;
	/* Only now is every page in the area as memory has it. */
	for (uint32_t i = 0; i < n; i++) {
		uint32_t p;
		struct cd_bitmap *bm = page_owner(d, i, &p);
		bm->page_changed[p] &= (uint8_t)~(1u << area);
	}
	return 0;
}

/* The two directories of one area index, built from the entries: each
 * holds its own pages' entries and the disk's UUID. */
struct cp_dirs {
	uint8_t *dir, *extra;
	uint64_t len, extra_len;
};

static void dirs_free(struct cp_dirs *x)
{
	free(x->dir);
	free(x->extra);
}

static int dirs_alloc(const struct cdisk *d, struct cp_dirs *x)
{
	x->len = dir_len(d);
	x->extra_len = d->sb.nbitmaps > 2 ? extra_dir_len(d) : 0;
	x->dir = calloc(1, x->len);
	x->extra = x->extra_len ? calloc(1, x->extra_len) : NULL;
	if (!x->dir || (x->extra_len && !x->extra)) {
		dirs_free(x);
		return -ENOMEM;
	}
	return 0;
}

static void dirs_fill(const struct cdisk *d, struct cp_dirs *x, const uint8_t *entries)
{
	uint32_t first = first_pages(d), rest = total_pages(d) - first;
	uint64_t at;

	memcpy(x->dir, entries, (size_t)first * 8);
	if ((at = cd_cp_dir_uuid_at(first, x->len)))
		memcpy(x->dir + at, d->sb.uuid, 16);
	if (!x->extra)
		return;
	memcpy(x->extra, entries + (size_t)first * 8, (size_t)rest * 8);
	if ((at = cd_cp_dir_uuid_at(cd_extra_area_pages(&d->sb), x->extra_len)))
		memcpy(x->extra + at, d->sb.uuid, 16);
}

static int dirs_write(struct cdisk *d, const struct cp_dirs *x, uint32_t area)
{
	int r = cd_pwrite_full(d->fd, x->dir, x->len, d->sb.cp_offset[area]);

	if (r == 0 && x->extra)
		r = cd_pwrite_full(d->fd, x->extra, x->extra_len,
				   cd_extra_area_offset(&d->sb, area));
	return r;
}

int cd_checkpoint(struct cdisk *d)
{
	uint32_t area;
	struct cp_dirs x;
	uint8_t *entries;
	int r;

	/* The log is emptied below: no write it protects may still be under
	 * way, or its data could land under a "clean" record. */
	cd_al_drain(d);
	/* Only now: the drain lets the lock go, and another checkpoint may
	 * have made the other area live meanwhile. */
	area = 1 - d->sb.cp_active;
	entries = calloc(total_pages(d) + 1, 8);
	if (!entries || dirs_alloc(d, &x) < 0) {
		free(entries);
		return cd_error(d->ctx, -ENOMEM, "'%s': out of memory", d->path);
	}
	/* State may only claim data that is durable. */
	r = sync_file(d);
	if (r == 0)
		r = write_changed_pages(d, area, entries);
	if (r == 0) {
		dirs_fill(d, &x, entries);
		r = dirs_write(d, &x, area);
	}
	if (r == 0)
		r = sync_file(d);
	free(entries);
	if (r < 0) {
		dirs_free(&x);
		return cd_error(d->ctx, r, "cannot write a checkpoint of '%s': %s",
				d->path, strerror(-r));
	}
	d->sb.cp_active = area;
	d->sb.cp_dir_crc = cd_crc32c(0, x.dir, x.len);
	if (x.extra)
		d->sb.bm_dir_crc = cd_crc32c(0, x.extra, x.extra_len);
	d->sb.cp_seq = d->j_seq;
	d->sb.journal_head = d->j_pos;
	dirs_free(&x);
	r = cd_sb_write(d);
	if (r < 0)
		return r;
	d->j_used = 0;
	d->nruns = 0;
	d->runs_overflow = false;
	d->unflushed = false;
	/* Every checkpoint has a backup: the records after the newest backup
	 * are then always still in the ring.  A failed backup is a warning:
	 * the disk itself is sound. */
	cd_backup_write(d);
	/* Every completed write is now in the bitmaps: none needs the
	 * activity log's protection any more. */
	d->al.count = 0;
	return 0;
}

static bool page_valid(const struct cd_bitmap *bm, uint32_t p, const uint8_t *page,
		       uint32_t crc, uint32_t count)
{
	if (cd_crc32c(0, page, CD_PAGE_SIZE) != crc || count > CD_PAGE_BITS)
		return false;
	/* Bits past the last block must be clear. */
	if (p == bm->npages - 1 && bm->nbits % CD_PAGE_BITS) {
		for (uint32_t b = (uint32_t)(bm->nbits % CD_PAGE_BITS); b < CD_PAGE_BITS; b++)
			if (page[b / 8] >> (b % 8) & 1)
				return false;
	}
	return true;
}

/* Read a run of stored pages with one preadv straight into fresh page
 * buffers, check each, and hand them to the bitmaps. */
static int load_run(struct cdisk *d, const uint8_t *dir, uint32_t first,
		    uint32_t count)
{
	uint32_t area = d->sb.cp_active;
	struct iovec iov[CD_BATCH_PAGES];
	uint32_t got = 0;
	bool bad_page = false;
	int r = 0;

	for (; got < count; got++) {
		iov[got].iov_base = malloc(CD_PAGE_SIZE);
		iov[got].iov_len = CD_PAGE_SIZE;
		if (!iov[got].iov_base) {
			r = -ENOMEM;
			break;
		}
	}
	for (uint32_t done = 0; r == 0 && done < count;) {
		ssize_t n = preadv(d->fd, iov + done, (int)(count - done),
				   (off_t)page_offset(d, area, first + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0 || (uint64_t)n % CD_PAGE_SIZE)
			r = n < 0 ? -errno : -EUCLEAN;
		else
			done += (uint32_t)((uint64_t)n / CD_PAGE_SIZE);
	}
	for (uint32_t k = 0; k < got; k++) {
		uint32_t i = first + k, p;
		struct cd_bitmap *bm = page_owner(d, i, &p);
		uint32_t bits = cd_get_le32(dir + (uint64_t)i * 8);
		uint32_t crc = cd_get_le32(dir + (uint64_t)i * 8 + 4);

		if (r == 0 && !page_valid(bm, p, iov[k].iov_base, crc, bits)) {
			r = cd_error(d->ctx, -EUCLEAN, "'%s' is damaged: bitmap page %u "
				     "of the checkpoint fails its checksum", d->path, i);
			bad_page = true;
		}
		if (r == 0) {
			d->cp_crc[i][area] = crc;
			cd_bitmap_adopt_page(bm, p, iov[k].iov_base, bits);
		} else {
			free(iov[k].iov_base);
		}
	}
	if (r == -ENOMEM)
		return cd_error(d->ctx, r, "'%s': out of memory", d->path);
	if (r < 0 && !bad_page)
		return cd_error(d->ctx, -EUCLEAN, "cannot read the checkpoint of '%s': %s",
				d->path, r == -EUCLEAN ? "file is truncated" : strerror(-r));
	return r;
}

static int read_dir(struct cdisk *d, uint8_t *dir, uint64_t len, uint64_t off,
		    uint32_t crc)
{
	int r = cd_pread_full(d->fd, dir, len, off);

	if (r < 0)
		return cd_error(d->ctx, r == -ENODATA ? -EUCLEAN : r,
				"cannot read the checkpoint of '%s': %s", d->path,
				r == -ENODATA ? "file is truncated" : strerror(-r));
	if (cd_crc32c(0, dir, len) != crc)
		return cd_error(d->ctx, -EUCLEAN, "'%s' is damaged: checkpoint directory "
				"checksum mismatch", d->path);
	return 0;
}

/* Both directories of the live area index as one list of entries. */
static int read_entries(struct cdisk *d, uint8_t *entries)
{
	uint32_t area = d->sb.cp_active, first = first_pages(d);
	struct cp_dirs x;
	int r;

	if (dirs_alloc(d, &x) < 0)
		return cd_error(d->ctx, -ENOMEM, "'%s': out of memory", d->path);
	r = read_dir(d, x.dir, x.len, d->sb.cp_offset[area], d->sb.cp_dir_crc);
	if (r == 0 && x.extra)
		r = read_dir(d, x.extra, x.extra_len, cd_extra_area_offset(&d->sb, area),
			     d->sb.bm_dir_crc);
	if (r == 0) {
		memcpy(entries, x.dir, (size_t)first * 8);
		if (x.extra)
			memcpy(entries + (size_t)first * 8, x.extra,
			       (size_t)(total_pages(d) - first) * 8);
	}
	dirs_free(&x);
	return r;
}

int cd_checkpoint_load(struct cdisk *d)
{
	uint32_t area = d->sb.cp_active, n = total_pages(d), first = 0, count = 0;
	uint8_t *dir = calloc(n + 1, 8);
	int r;

	if (!dir)
		return cd_error(d->ctx, -ENOMEM, "'%s': out of memory", d->path);
	cd_errbuf()[0] = 0;
	r = read_entries(d, dir);
	for (uint32_t i = 0; i <= n && r == 0; i++) {
		uint32_t stored = i < n ? cd_get_le32(dir + (uint64_t)i * 8) : 0;

		if (i < n) {
			uint32_t p;
			struct cd_bitmap *bm = page_owner(d, i, &p);
			/* The other area's copy of every page is unknown. */
			bm->page_changed[p] = (uint8_t)(1u << (1 - area));
		}
		if (stored > CD_PAGE_BITS) {
			r = cd_error(d->ctx, -EUCLEAN, "'%s' is damaged: checkpoint "
				     "directory entry %u is invalid", d->path, i);
			break;
		}
		if (stored && count < CD_BATCH_PAGES &&
		    (count == 0 || pages_adjoin(d, first + count - 1, i))) {
			if (count++ == 0)
				first = i;
			continue;
		}
		if (count)
			r = load_run(d, dir, first, count);
		count = 0;
		if (stored) {
			first = i;
			count = 1;
		}
	}
	free(dir);
	return r;
}

/* ---- replay ---- */

enum rec_state { REC_OK, REC_END, REC_BAD };

static enum rec_state read_record(struct cdisk *d, uint64_t pos, uint64_t seq,
				  uint8_t **out, uint64_t *len_out)
{
	uint8_t hdr[CD_JR_HEADER], *rec;
	uint64_t len;

	if (pos + CD_JR_HEADER > d->sb.journal_size ||
	    cd_pread_full(d->fd, hdr, sizeof(hdr), d->sb.journal_offset + pos) < 0)
		return REC_END;
	if (cd_get_le32(hdr + JR_MAGIC) != CD_JR_MAGIC ||
	    cd_get_le64(hdr + JR_TAG) != uuid_tag(d))
		return cd_is_zero(hdr, sizeof(hdr)) ? REC_END : REC_BAD;
	if (cd_get_le64(hdr + JR_SEQ) != seq)
		return REC_END;
	len = cd_get_le32(hdr + JR_LENGTH);
	if (len < CD_JR_ALIGN || len % CD_JR_ALIGN || pos + len > d->sb.journal_size ||
	    len != record_len(cd_get_le32(hdr + JR_NRUNS), cd_get_le32(hdr + JR_NAL)))
		return REC_BAD;
	rec = malloc(len);
	if (!rec)
		return REC_BAD;
	if (cd_pread_full(d->fd, rec, len, d->sb.journal_offset + pos) < 0) {
		free(rec);
		return REC_BAD;
	}
	{
		uint32_t crc = cd_get_le32(rec + JR_CRC);
		cd_put_le32(rec + JR_CRC, 0);
		if (cd_crc32c(0, rec, len) != crc) {
			free(rec);
			return REC_BAD;
		}
	}
	*out = rec;
	*len_out = len;
	return REC_OK;
}

/* The tag (first 8 bytes of the UUID) of every intact record in the ring
 * of the file fd laid out as sb says, whoever wrote it: which disks have
 * written this journal.  Distinct tags go to tags[], at most max. */
int cd_journal_tags(int fd, const struct cd_superblock *sb, uint64_t *tags,
		    unsigned max, unsigned *ntags)
{
	uint8_t *rec = malloc(cd_round_up(sb->journal_size / 4, CD_JR_ALIGN));
	uint64_t len;

	*ntags = 0;
	if (!rec)
		return -ENOMEM;
	for (uint64_t pos = 0; pos + CD_JR_ALIGN <= sb->journal_size; pos += CD_JR_ALIGN) {
		uint64_t tag;
		uint32_t crc;
		unsigned i;

		if (cd_pread_full(fd, rec, CD_JR_HEADER, sb->journal_offset + pos) < 0)
			break;
		len = cd_get_le32(rec + JR_LENGTH);
		if (cd_get_le32(rec + JR_MAGIC) != CD_JR_MAGIC || len < CD_JR_ALIGN ||
		    len % CD_JR_ALIGN || pos + len > sb->journal_size ||
		    len > sb->journal_size / 4 ||
		    len != record_len(cd_get_le32(rec + JR_NRUNS), cd_get_le32(rec + JR_NAL)) ||
		    cd_pread_full(fd, rec, len, sb->journal_offset + pos) < 0)
			continue;
		crc = cd_get_le32(rec + JR_CRC);
		cd_put_le32(rec + JR_CRC, 0);
		if (cd_crc32c(0, rec, len) != crc)
			continue;
		tag = cd_get_le64(rec + JR_TAG);
		for (i = 0; i < *ntags && tags[i] != tag; i++)
			;
		if (i == *ntags && *ntags < max)
			tags[(*ntags)++] = tag;
	}
	free(rec);
	return 0;
}

/* Ops 1-3 change the present and dirty pair together, as one write does;
 * with BITMAPS, CD_RUN_BITMAP ops change one bitmap of id 2 or more. */
static int apply_run(struct cdisk *d, uint64_t first, uint32_t count, uint32_t op)
{
	int r;

	if (op >= CD_RUN_BITMAP(2, 0)) {
		uint32_t id = (op - CD_RUN_BITMAP(0, 0)) / 2;

		if (!(d->sb.incompat & CD_FEATURE_INCOMPAT_BITMAPS) ||
		    id >= d->sb.nbitmaps)
			return -EUCLEAN;
		return cd_bitmap_assign(cd_disk_bitmap(d, id), first, count, op & 1);
	}
	if (op < CD_RUN_DIRTY || op > CD_RUN_DROP)
		return -EUCLEAN;
	r = cd_bitmap_assign(&d->present, first, count, op != CD_RUN_DROP);
	if (r == 0)
		r = cd_bitmap_assign(&d->dirty, first, count, op == CD_RUN_DIRTY);
	return r;
}

static int apply_record(struct cdisk *d, const uint8_t *rec)
{
	uint32_t nruns = cd_get_le32(rec + JR_NRUNS), nal = cd_get_le32(rec + JR_NAL);
	const uint8_t *p = rec + CD_JR_HEADER;
	int r = 0;

	for (uint32_t i = 0; i < nruns && r == 0; i++, p += RUN_BYTES) {
		uint64_t first = cd_get_le64(p);
		uint32_t count = cd_get_le32(p + 8), op = cd_get_le32(p + 12);

		if (first > d->nblocks || count > d->nblocks - first)
			return -EUCLEAN;
		r = apply_run(d, first, count, op);
	}
	if (r < 0)
		return r;
	if (nal > d->al.capacity)
		return -EUCLEAN;
	for (uint32_t i = 0; i < nal; i++, p += AL_BYTES) {
		uint64_t e = cd_get_le64(p);
		if (e >= cd_div_round_up(d->nblocks * d->block_size, CD_AL_EXTENT_BYTES))
			return -EUCLEAN;
		d->al.extents[i] = e;
		d->al.flushed[i] = false;
	}
	d->al.count = nal;
	return 0;
}

/* After a torn tail, nothing valid may follow: a later valid record
 * means a record in the middle was damaged and flushed state is lost. */
static uint64_t count_later_records(struct cdisk *d, uint64_t seq)
{
	uint64_t found = 0;

	for (uint64_t pos = 0; pos + CD_JR_ALIGN <= d->sb.journal_size; pos += CD_JR_ALIGN) {
		uint8_t hdr[CD_JR_HEADER];
		if (cd_pread_full(d->fd, hdr, sizeof(hdr), d->sb.journal_offset + pos) < 0)
			break;
		if (cd_get_le32(hdr + JR_MAGIC) == CD_JR_MAGIC &&
		    cd_get_le64(hdr + JR_TAG) == uuid_tag(d) &&
		    cd_get_le64(hdr + JR_SEQ) > seq) {
			uint8_t *rec;
			uint64_t len;
			if (read_record(d, pos, cd_get_le64(hdr + JR_SEQ), &rec, &len) == REC_OK) {
				free(rec);
				found++;
			}
		}
	}
	return found;
}

int cd_journal_replay(struct cdisk *d)
{
	uint64_t pos = d->sb.journal_head, seq = d->sb.cp_seq + 1, used = 0;
	enum rec_state st = REC_END;

	d->al.count = 0;
	for (;;) {
		uint8_t *rec = NULL;
		uint64_t len = 0;
		int r;

		st = read_record(d, pos, seq, &rec, &len);
		if (st != REC_OK && pos != 0) {
			/* The writer wraps when a record does not fit. */
			enum rec_state st0 = read_record(d, 0, seq, &rec, &len);
			if (st0 == REC_OK) {
				used += d->sb.journal_size - pos;
				pos = 0;
				st = REC_OK;
			}
		}
		if (st != REC_OK)
			break;
		r = apply_record(d, rec);
		free(rec);
		if (r < 0)
			return cd_error(d->ctx, r == -ENOMEM ? r : -EUCLEAN,
					"'%s' is damaged: journal record %llu is invalid",
					d->path, (unsigned long long)seq);
		d->j_replayed++;
		used += len;
		pos = (pos + len) % d->sb.journal_size;
		seq++;
	}
	/* A clean end is trusted after a clean close; after a crash, look for
	 * records beyond it: a zeroed or damaged record in the middle would
	 * otherwise hide flushed state. */
	if (st == REC_BAD || (d->sb.flags & CD_SB_FLAG_OPEN)) {
		uint64_t later = count_later_records(d, seq);
		d->journal_damaged = later != 0;
		if (later)
			return cd_error(d->ctx, -EUCLEAN, "'%s' is damaged: journal record "
					"%llu %s and %llu later records cannot be replayed",
					d->path, (unsigned long long)seq,
					st == REC_BAD ? "fails its checksum" : "is missing",
					(unsigned long long)later);
	}
	if (st == REC_BAD) {
		d->j_torn = true;
		cd_log(d->ctx, CDISK_LOG_INFO, "'%s': ignored a torn journal record "
		       "%llu (a write cut short by a crash)", d->path,
		       (unsigned long long)seq);
	}
	d->j_seq = seq - 1;
	d->j_pos = pos;
	d->j_used = used;
	return 0;
}

/* ---- replay for a restore from backup ---- */

struct found_record {
	uint64_t seq, pos;
};

static int by_seq(const void *a, const void *b)
{
	const struct found_record *x = a, *y = b;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Replay whatever records follow jseq, wherever they are in the ring (the
 * superblock that knew the head may be gone).  *complete says whether
 * they form one unbroken chain from jseq + 1 with nothing valid beyond;
 * *chain_end is the last sequence number that chain reached. */
int cd_journal_replay_after(struct cdisk *d, uint64_t jseq, bool *complete,
			    uint64_t *chain_end)
{
	size_t n = 0, cap = 64, i;
	struct found_record *found = malloc(cap * sizeof(*found));
	uint64_t max_seq = jseq;
	int r = 0;

	if (!found)
		return -ENOMEM;
	d->al.count = 0;
	d->j_replayed = 0;
	for (uint64_t pos = 0; pos + CD_JR_ALIGN <= d->sb.journal_size; pos += CD_JR_ALIGN) {
		uint8_t hdr[CD_JR_HEADER], *rec;
		uint64_t len, seq;

		if (cd_pread_full(d->fd, hdr, sizeof(hdr), d->sb.journal_offset + pos) < 0)
			break;
		seq = cd_get_le64(hdr + JR_SEQ);
		if (cd_get_le32(hdr + JR_MAGIC) != CD_JR_MAGIC ||
		    cd_get_le64(hdr + JR_TAG) != uuid_tag(d) || seq <= jseq ||
		    read_record(d, pos, seq, &rec, &len) != REC_OK)
			continue;
		free(rec);
		if (n == cap) {
			struct found_record *more = realloc(found, 2 * cap * sizeof(*found));
			if (!more) {
				free(found);
				return -ENOMEM;
			}
			found = more;
			cap *= 2;
		}
		found[n++] = (struct found_record){ seq, pos };
		if (seq > max_seq)
			max_seq = seq;
	}
	qsort(found, n, sizeof(*found), by_seq);
	for (i = 0; i < n && r == 0 && found[i].seq == jseq + 1 + i; i++) {
		uint8_t *rec;
		uint64_t len;

		if (read_record(d, found[i].pos, found[i].seq, &rec, &len) != REC_OK) {
			r = -EIO;
			break;
		}
		r = apply_record(d, rec);
		free(rec);
		d->j_replayed++;
	}
	*complete = r == 0 && i == n;
	*chain_end = jseq + d->j_replayed;
	free(found);
	/* New records must not collide with any that is still in the ring. */
	d->j_seq = max_seq;
	d->j_pos = 0;
	d->j_used = 0;
	return r == -EUCLEAN || r == -EIO ? 0 : r;
}

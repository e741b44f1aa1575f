/* An open disk: ownership, recovery at open, and the data path.
 *
 * The overlay's data is direct-mapped: block N lives at data_offset +
 * N * block_size in the same file, so a write is one pwrite plus bitmap
 * bits in memory, and a flush is at most one journal record plus one
 * fdatasync. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backup.h"
#include "bitmap.h"
#include "cdisk.h"
#include "ctx.h"
#include "disk.h"
#include "format.h"
#include "journal.h"
#include "mirror.h"
#include "quota.h"
#include "target.h"
#include "util.h"

/* ---- ownership ---- */

static int lock_file(struct cdisk *d)
{
	struct flock fl = {
		.l_type = d->readonly ? F_RDLCK : F_WRLCK,
		.l_whence = SEEK_SET,
		.l_start = 0,
		.l_len = 1,
	};
	uint8_t buf[CD_SB_SIZE];
	uint32_t pid = 0;

	/* Open-file-description locks: released when the owner dies, and not
	 * dropped when some other descriptor of the process closes the file. */
	if (fcntl(d->fd, F_OFD_SETLK, &fl) == 0)
		return 0;
	if (errno != EAGAIN && errno != EACCES)
		return cd_error(d->ctx, -errno, "cannot lock '%s': %s", d->path,
				strerror(errno));
	for (int slot = 0; slot < 2; slot++) {
		struct cd_superblock sb;
		const char *why;
		if (cd_pread_full(d->fd, buf, sizeof(buf), (uint64_t)slot * CD_SB_SIZE) == 0 &&
		    cd_sb_decode(buf, &sb, &why) == 0 && sb.flags & CD_SB_FLAG_OPEN &&
		    sb.seq >= d->sb.seq) {
			d->sb.seq = sb.seq;
			pid = sb.owner_pid;
		}
	}
	if (pid)
		return cd_error(d->ctx, -EBUSY, "'%s' is busy: in use by pid %u",
				d->path, pid);
	return cd_error(d->ctx, -EBUSY, "'%s' is busy: in use by another process",
			d->path);
}

/* ---- superblocks ---- */

static int read_one_sb(struct cdisk *d, int slot, struct cd_superblock *sb,
		       const char **why, bool *magic)
{
	uint8_t buf[CD_SB_SIZE] = { 0 };
	ssize_t n;

	do
		n = pread(d->fd, buf, sizeof(buf), (off_t)slot * CD_SB_SIZE);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return cd_error(d->ctx, -errno, "cannot read '%s': %s", d->path,
				strerror(errno));
	*magic = n >= 8 && memcmp(buf, CD_MAGIC, 8) == 0;
	if (n < (ssize_t)sizeof(buf)) {
		*why = "file is truncated";
		return *magic ? -EUCLEAN : -ENOMSG;
	}
	return cd_sb_decode(buf, sb, why);
}

static int read_superblocks(struct cdisk *d, uint64_t file_size)
{
	struct cd_superblock sb[2];
	int res[2];
	bool magic[2];
	const char *why[2];

	for (int i = 0; i < 2; i++) {
		why[i] = NULL;
		res[i] = read_one_sb(d, i, &sb[i], &why[i], &magic[i]);
		if (res[i] < 0 && !why[i])
			return res[i];
		d->sb_valid[i] = res[i] == 0;
		d->sb_bad_at_open[i] = res[i] < 0;
	}
	/* A copy this version cannot read may be the newest: never fall
	 * back to an older one behind its back. */
	for (int i = 0; i < 2; i++)
		if (res[i] == -EPROTONOSUPPORT)
			return cd_error(d->ctx, -EPROTONOSUPPORT, "cannot open '%s': %s",
					d->path, why[i]);
	if (res[0] < 0 && res[1] < 0) {
		if (!magic[0] && !magic[1])
			return cd_error(d->ctx, -ENOMSG, "'%s' is not a cdisk (%s)",
					d->path, file_size < 8 ? "too short" : "bad magic");
		return cd_error(d->ctx, -EUCLEAN, "'%s' is damaged: both superblocks "
				"fail their checks (A: %s; B: %s)", d->path, why[0], why[1]);
	}
	d->sb_live = res[0] < 0 ? 1 : res[1] < 0 ? 0 : sb[1].seq > sb[0].seq;
	d->sb = sb[d->sb_live];
	d->sb_loaded = true;
	if (res[1 - d->sb_live] < 0)
		snprintf(d->sb_damage, sizeof(d->sb_damage), "superblock %c is damaged "
			 "(%s); using copy %c", 'A' + (1 - d->sb_live),
			 why[1 - d->sb_live], 'A' + d->sb_live);
	if (file_size < d->sb.data_offset)
		return cd_error(d->ctx, -EUCLEAN, "'%s' is damaged: file is truncated "
				"(%llu bytes, metadata needs %llu)", d->path,
				(unsigned long long)file_size,
				(unsigned long long)d->sb.data_offset);
	if (!d->readonly && (d->sb.ro_compat & ~CD_FEATURE_RO_COMPAT_SUPP))
		return cd_error(d->ctx, -EROFS, "cannot open '%s' for writing: unknown "
				"read-only-compatible features 0x%llx", d->path,
				(unsigned long long)(d->sb.ro_compat & ~CD_FEATURE_RO_COMPAT_SUPP));
	return 0;
}

/* ---- activity log ---- */

static uint64_t blocks_per_extent(const struct cdisk *d)
{
	uint64_t n = CD_AL_EXTENT_BYTES / d->block_size;
	return n ? n : 1;
}

static int al_find(const struct cdisk *d, uint64_t extent)
{
	for (uint32_t i = d->al.count; i-- > 0;)
		if (d->al.extents[i] == extent)
			return (int)i;
	return -1;
}

/* A write under way at a crash may have reached one side only: every
 * block of the hot extents goes to the mirror again. */
static int al_recover_mirror(struct cdisk *d)
{
	struct cd_bitmap *oos = cd_disk_bitmap(d, CD_BM_MIRROR);
	uint64_t per = blocks_per_extent(d);

	for (uint32_t i = 0; i < d->al.count; i++) {
		uint64_t first = d->al.extents[i] * per;
		uint64_t end = first + per < d->nblocks ? first + per : d->nblocks;
		uint64_t before = oos->count;

		if (first >= end)
			continue;
		if (cd_bitmap_assign(oos, first, end - first, true) < 0)
			return cd_error(d->ctx, -ENOMEM, "'%s': out of memory", d->path);
		d->mirror_recovered += oos->count - before;
	}
	return 0;
}

/* A crash may have left unflushed writes in any hot extent: their blocks
 * that the records call clean may hold newer data than the base. */
int cd_al_recover(struct cdisk *d)
{
	uint64_t per = blocks_per_extent(d);

	for (uint32_t i = 0; i < d->al.count; i++) {
		uint64_t first = d->al.extents[i] * per;
		uint64_t end = first + per < d->nblocks ? first + per : d->nblocks;
		uint64_t b = cd_bitmap_find(&d->present, first, true);

		while (b < end) {
			uint64_t stop = cd_bitmap_find(&d->present, b, false);
			uint64_t before = d->dirty.count;
			int r;

			if (stop > end)
				stop = end;
			r = cd_bitmap_assign(&d->dirty, b, stop - b, true);
			if (r < 0)
				return cd_error(d->ctx, r, "'%s': out of memory", d->path);
			d->recovered_blocks += d->dirty.count - before;
			b = cd_bitmap_find(&d->present, stop, true);
		}
	}
	return cd_mirror_attached(d) ? al_recover_mirror(d) : 0;
}

static bool range_has_clean_block(const struct cdisk *d, uint64_t first,
				  uint64_t end)
{
	for (uint64_t b = cd_bitmap_find(&d->present, first, true); b < end;
	     b = cd_bitmap_find(&d->present, b + 1, true))
		if (!cd_bitmap_get(&d->dirty, b))
			return true;
	return false;
}

/* With a mirror, the log also covers blocks in sync with it: a crash
 * must not leave a write on one side only unrecorded. */
static bool range_in_sync(const struct cdisk *d, uint64_t first, uint64_t end)
{
	return cd_mirror_attached(d) &&
	       cd_bitmap_find(&d->extra[CD_BM_MIRROR - 2], first, false) < end;
}

static int flush_locked(struct cdisk *d);

int cd_flush_locked(struct cdisk *d)
{
	return flush_locked(d);
}

static bool al_evict_flushed(struct cdisk *d)
{
	for (uint32_t i = 0; i < d->al.count; i++) {
		if (!d->al.flushed[i] || d->al.inflight[i])
			continue;
		memmove(&d->al.extents[i], &d->al.extents[i + 1],
			(d->al.count - i - 1) * sizeof(*d->al.extents));
		memmove(&d->al.flushed[i], &d->al.flushed[i + 1],
			(d->al.count - i - 1) * sizeof(*d->al.flushed));
		memmove(&d->al.inflight[i], &d->al.inflight[i + 1],
			(d->al.count - i - 1) * sizeof(*d->al.inflight));
		d->al.count--;
		return true;
	}
	return false;
}

static int al_make_room(struct cdisk *d)
{
	int r;

	if (d->al.count < d->al.capacity || al_evict_flushed(d))
		return 0;
	/* Every hot extent has unflushed writes: a flush frees them all. */
	r = flush_locked(d);
	if (r < 0)
		return r;
	if (d->al.count < d->al.capacity || al_evict_flushed(d))
		return 0;
	return cd_error(d->ctx, -EIO, "'%s': activity log is full", d->path);
}

/* Before a write changes a block the records call clean, its extent must
 * be in the durable activity log, or a crash would leave newer data
 * under a "clean" record and the base would never get it. */
static int al_protect(struct cdisk *d, uint64_t first, uint64_t count)
{
	uint64_t per = blocks_per_extent(d);

	for (uint64_t e = first / per; e <= (first + count - 1) / per; e++) {
		uint64_t lo = e * per > first ? e * per : first;
		uint64_t hi = (e + 1) * per < first + count ? (e + 1) * per : first + count;
		int idx = al_find(d, e), r;

		if (idx >= 0) {
			d->al.flushed[idx] = false;
			continue;
		}
		if (!range_has_clean_block(d, lo, hi) && !range_in_sync(d, lo, hi))
			continue;
		for (int attempt = 0; attempt < 2; attempt++) {
			if ((r = al_make_room(d)) < 0)
				return r;
			d->al.extents[d->al.count] = e;
			d->al.flushed[d->al.count] = false;
			d->al.inflight[d->al.count] = 0;
			d->al.count++;
			r = cd_journal_commit(d, true);
			if (r < 0)
				return r;
			/* A checkpoint empties the log; add the extent again. */
			if (al_find(d, e) >= 0)
				break;
		}
	}
	return 0;
}

/* Wait, under the lock, until no write the log protects is under way;
 * new ones wait meanwhile, so a busy disk cannot starve a checkpoint. */
void cd_al_drain(struct cdisk *d)
{
	d->al.draining = true;
	while (d->al.inflight_total)
		pthread_cond_wait(&d->drained, &d->lock);
	d->al.draining = false;
	pthread_cond_broadcast(&d->resumed);
}

/* Count a write against the log's extents it touches, so none of them is
 * evicted, or the log emptied, before its data is down. */
static void al_pin(struct cdisk *d, uint64_t first, uint64_t count, int delta)
{
	uint64_t per = blocks_per_extent(d);

	for (uint64_t e = first / per; e <= (first + count - 1) / per; e++) {
		int idx = al_find(d, e);
		if (idx < 0)
			continue;
		d->al.inflight[idx] += (uint32_t)delta;
		d->al.inflight_total += (uint32_t)delta;
	}
	if (delta < 0 && d->al.inflight_total == 0)
		pthread_cond_broadcast(&d->drained);
}

/* ---- open and close ---- */

void cd_disk_reset_state(struct cdisk *d)
{
	cd_bitmap_free(&d->present);
	cd_bitmap_free(&d->dirty);
	for (unsigned i = 0; i < CD_ARRAY_SIZE(d->extra); i++)
		cd_bitmap_free(&d->extra[i]);
	cd_bitmap_free(&d->syncing);
	free(d->cp_crc);
	free(d->runs);
	free(d->al.extents);
	free(d->al.flushed);
	free(d->al.inflight);
	d->cp_crc = NULL;
	d->runs = NULL;
	d->nruns = d->runs_cap = 0;
	d->runs_overflow = false;
	memset(&d->al, 0, sizeof(d->al));
	d->j_seq = d->j_pos = d->j_used = d->j_replayed = 0;
	d->j_torn = false;
	d->recovered_blocks = 0;
	d->mirror_recovered = 0;
}

static void disk_free(struct cdisk *d)
{
	if (!d)
		return;
	cd_mirror_free(d);
	cd_quota_detach_locked(d);
	cd_target_close(d->base);
	for (unsigned i = 0; i < d->nretired; i++)
		cd_target_close(d->retired[i]);
	if (d->fd >= 0)
		close(d->fd);
	cd_disk_reset_state(d);
	pthread_mutex_destroy(&d->lock);
	pthread_mutex_destroy(&d->base_lock);
	pthread_cond_destroy(&d->base_opened);
	pthread_mutex_destroy(&d->backup_lock);
	cd_backup_image_free(d->backup_pending);
	pthread_cond_destroy(&d->drained);
	pthread_cond_destroy(&d->writing_slot);
	pthread_cond_destroy(&d->resumed);
	free(d->path);
	free(d);
}

int cd_disk_init_state(struct cdisk *d)
{
	uint32_t pages;

	d->block_size = d->sb.block_size;
	d->block_shift = (uint32_t)__builtin_ctz(d->sb.block_size);
	d->nblocks = d->sb.size >> d->block_shift;
	pages = cd_bitmap_pages(d->nblocks);
	d->al.capacity = CD_AL_CAPACITY;
	d->al.extents = calloc(CD_AL_CAPACITY, sizeof(*d->al.extents));
	d->al.flushed = calloc(CD_AL_CAPACITY, sizeof(*d->al.flushed));
	d->al.inflight = calloc(CD_AL_CAPACITY, sizeof(*d->al.inflight));
	d->cp_crc = calloc((size_t)pages * d->sb.nbitmaps + 1, sizeof(*d->cp_crc));
	if (!d->al.extents || !d->al.flushed || !d->al.inflight || !d->cp_crc ||
	    cd_bitmap_init(&d->present, d->nblocks) < 0 ||
	    cd_bitmap_init(&d->dirty, d->nblocks) < 0 ||
	    cd_bitmap_init(&d->syncing, d->nblocks) < 0)
		return cd_error(d->ctx, -ENOMEM, "'%s': out of memory", d->path);
	for (unsigned id = 2; id < d->sb.nbitmaps; id++)
		if (cd_bitmap_init(cd_disk_bitmap(d, id), d->nblocks) < 0)
			return cd_error(d->ctx, -ENOMEM, "'%s': out of memory", d->path);
	return 0;
}

int cd_disk_mark_locked(struct cdisk *d, unsigned id, uint64_t first,
			uint64_t count, bool value)
{
	int r;

	if (id < 2 || id >= d->sb.nbitmaps || first > d->nblocks ||
	    count > d->nblocks - first)
		return cd_error(d->ctx, -EINVAL, "'%s': no bitmap %u or blocks "
				"%llu+%llu outside the disk", d->path, id,
				(unsigned long long)first, (unsigned long long)count);
	r = cd_bitmap_assign(cd_disk_bitmap(d, id), first, count, value);
	if (r == 0)
		r = cd_journal_add_run(d, first, count, CD_RUN_BITMAP(id, value));
	return r < 0 ? cd_error(d->ctx, r, "'%s': out of memory", d->path) : 0;
}

/* The new areas' directories are written and synced before the
 * superblock names them: a crash before that update leaves a first-layout
 * disk with unused bytes after its data. */
static int write_empty_extra_areas(struct cdisk *d, const struct cd_superblock *want)
{
	uint32_t pages = cd_extra_area_pages(want);
	uint64_t dlen = cd_extra_area_size(want) - (uint64_t)pages * CD_PAGE_SIZE, at;
	uint8_t *dir = calloc(1, dlen);
	int r = 0;

	if (!dir)
		return -ENOMEM;
	if ((at = cd_cp_dir_uuid_at(pages, dlen)))
		memcpy(dir + at, d->sb.uuid, 16);
	if (ftruncate(d->fd, (off_t)cd_file_size(want)) < 0)
		r = -errno;
	for (uint32_t area = 0; area < 2 && r == 0; area++)
		r = cd_pwrite_full(d->fd, dir, dlen, cd_extra_area_offset(want, area));
	if (r == 0 && fdatasync(d->fd) < 0)
		r = -errno;
	free(dir);
	return r;
}

static int grow_state(struct cdisk *d, unsigned n)
{
	size_t old = (size_t)cd_bitmap_pages(d->nblocks) * d->sb.nbitmaps + 1;
	size_t want = (size_t)cd_bitmap_pages(d->nblocks) * n + 1;
	uint32_t (*crc)[2] = realloc(d->cp_crc, want * sizeof(*crc));

	if (!crc)
		return -ENOMEM;
	memset(crc + old, 0, (want - old) * sizeof(*crc));
	d->cp_crc = crc;
	for (unsigned id = d->sb.nbitmaps; id < n; id++)
		if (cd_bitmap_init(cd_disk_bitmap(d, id), d->nblocks) < 0)
			return -ENOMEM;
	return 0;
}

static void shrink_state(struct cdisk *d, unsigned from, unsigned to)
{
	for (unsigned id = from; id < to; id++)
		cd_bitmap_free(cd_disk_bitmap(d, id));
}

int cd_disk_add_bitmaps(struct cdisk *d, unsigned n)
{
	struct cd_superblock old, want;
	int r = 0;

	if (n > CD_BITMAPS_MAX)
		return cd_error(d->ctx, -EINVAL, "'%s': at most %u bitmaps", d->path,
				CD_BITMAPS_MAX);
	pthread_mutex_lock(&d->lock);
	/* No write may be under way while the layout changes: the checkpoint
	 * below would otherwise wait for them with the lock let go, and show
	 * the half-changed superblock to other threads. */
	cd_al_drain(d);
	old = d->sb;
	if (n <= d->sb.nbitmaps)
		goto out;
	if (d->readonly) {
		r = cd_error(d->ctx, -EROFS, "cannot add bitmaps to '%s': it is "
			     "open read-only", d->path);
		goto out;
	}
	want = d->sb;
	want.nbitmaps = n;
	cd_layout(&want);
	if (!(old.incompat & CD_FEATURE_INCOMPAT_BITMAPS))
		r = write_empty_extra_areas(d, &want);
	if (r == 0)
		r = grow_state(d, n);
	/* The checkpoint writes the superblock that names the new layout,
	 * and the backup taken with it carries the new bitmaps. */
	if (r == 0) {
		d->sb.nbitmaps = n;
		d->sb.incompat |= CD_FEATURE_INCOMPAT_BITMAPS;
		d->sb.bm_offset = want.bm_offset;
		r = cd_checkpoint(d);
	}
	if (r < 0) {
		shrink_state(d, old.nbitmaps, n);
		d->sb.nbitmaps = old.nbitmaps;
		d->sb.incompat = old.incompat;
		d->sb.bm_offset = old.bm_offset;
		r = cd_error(d->ctx, r, "cannot add bitmaps to '%s': %s", d->path,
			     strerror(-r));
	}
out:
	pthread_mutex_unlock(&d->lock);
	/* The backup the checkpoint took, written without the lock. */
	cd_backup_store_pending(d);
	return r;
}

#define CD_BASE_RETRY_MS 5000

static bool on_primary(const struct cdisk *d)
{
	return cd_sb_has_primary(&d->sb);
}

/* The device at the primary's URI must be the one the disk was created
 * on: a LUN or image put in its place holds someone else's data, and
 * writing the guest's blocks there would damage both. */
static int check_primary_identity(struct cdisk *d, struct cd_target *t)
{
	char now[CD_PRIMARY_ID_MAX];
	int r;

	if (!d->sb.primary_id[0])
		return 0;
	r = cd_target_identity(t, now, sizeof(now));
	if (r < 0)
		return cd_error(d->ctx, r, "cannot tell whether primary '%s' is still the "
				"device '%s' was created on: %s", d->sb.base, d->path,
				cd_errbuf());
	if (strcmp(now, d->sb.primary_id))
		return cd_error(d->ctx, -EUCLEAN, "primary '%s' is not the device '%s' was "
				"created on (its identity was '%s', is now '%s'); nothing "
				"is read from or written to it", d->sb.base, d->path,
				d->sb.primary_id, now);
	return 0;
}

/* The base, opened now if need be; an error when it cannot be.  The open
 * crosses the network, so no lock is held across it: base_lock guards
 * only the state, and threads that need the base while another opens it
 * wait for that open (they need the network anyway); everything else
 * (status, info, the overlay's own I/O) sees "opening" at once. */
static int get_base(struct cdisk *d, struct cd_target **out)
{
	char uri[CDISK_MAX_URI + 1];
	struct cd_target *t = NULL, *discard = NULL;
	uint64_t gen;
	int r;

	*out = NULL;
	pthread_mutex_lock(&d->base_lock);
	/* Opening it, or waiting for another's open, crosses the network. */
	if (cd_nowait() && !d->base && d->sb.base[0] &&
	    (d->base_opening || cd_now_ms() >= d->base_retry_at)) {
		pthread_mutex_unlock(&d->base_lock);
		return -CD_WOULD_WAIT;
	}
	while (d->base_opening)
		pthread_cond_wait(&d->base_opened, &d->base_lock);
	if (d->base || !d->sb.base[0] || cd_now_ms() < d->base_retry_at) {
		*out = d->base;
		r = d->base ? 0 : d->base_error;
		if (!d->base)
			cd_error(d->ctx, r, "%s", d->base_error_msg);
		pthread_mutex_unlock(&d->base_lock);
		return r;
	}
	d->base_opening = true;
	d->base_opening_since = cd_now_ms();
	memcpy(uri, d->sb.base, sizeof(uri));
	gen = d->primary_gen;
	pthread_mutex_unlock(&d->base_lock);

	/* A missing base must not stop the disk: the overlay still serves
	 * what it holds.  Reads that need the base report this error. */
	r = cd_target_open(d->ctx, uri, d->readonly || !on_primary(d), &t);
	if (r == 0 && on_primary(d) && (r = check_primary_identity(d, t)) < 0) {
		cd_target_close(t);
		t = NULL;
	}

	pthread_mutex_lock(&d->base_lock);
	d->base_opening = false;
	if (gen != d->primary_gen) {
		/* A failover while the old primary was opening: the stack
		 * it set is the one to use. */
		discard = t;
		t = d->base;
		r = t ? 0 : cd_error(d->ctx, -EIO, "'%s' is failing over", d->path);
	} else {
		cd_disk_set_base(d, t);
		d->base_error = r;
		if (r < 0) {
			snprintf(d->base_error_msg, sizeof(d->base_error_msg), "%s",
				 cd_errbuf());
			d->base_retry_at = cd_now_ms() + CD_BASE_RETRY_MS;
		}
	}
	*out = t;
	pthread_cond_broadcast(&d->base_opened);
	pthread_mutex_unlock(&d->base_lock);
	cd_target_close(discard);
	if (r < 0)
		cd_log(d->ctx, CDISK_LOG_WARNING, "%s", cd_errbuf());
	return r;
}

int cd_disk_get_base(struct cdisk *d, struct cd_target **out)
{
	return get_base(d, out);
}

static int recover_and_own(struct cdisk *d)
{
	int r;

	d->was_open = d->sb.flags & CD_SB_FLAG_OPEN;
	r = cd_al_recover(d);
	if (r < 0 || d->readonly)
		return r;
	if (!d->restore.restored && (d->recovered_blocks || d->j_replayed || d->was_open))
		cd_log(d->ctx, CDISK_LOG_INFO, "'%s' was not closed cleanly: replayed %llu "
		       "journal records, %llu blocks from the activity log marked for sync",
		       d->path, (unsigned long long)d->j_replayed,
		       (unsigned long long)d->recovered_blocks);
	if (d->was_open && cd_mirror_attached(d)) {
		d->sb.mirror_recovered = d->mirror_recovered;
		cd_log(d->ctx, CDISK_LOG_INFO, "'%s': %llu blocks from the activity log "
		       "go to the mirror again", d->path,
		       (unsigned long long)d->mirror_recovered);
	}
	d->sb.flags |= CD_SB_FLAG_OPEN;
	d->sb.owner_pid = (uint32_t)getpid();
	/* The last checkpoint left a current backup; the interval runs from now. */
	d->backup_time = (uint64_t)time(NULL);
	/* Start from a fresh checkpoint when anything was recovered, so the
	 * recovered state is durable before the first new write. */
	if (d->restore.restored) {
		/* Both superblock copies and a checkpoint, from scratch. */
		r = cd_checkpoint(d);
		return r < 0 ? r : cd_sb_write(d);
	}
	if (d->j_replayed || d->recovered_blocks || d->mirror_recovered)
		return cd_checkpoint(d);
	return cd_sb_write(d);
}

static int load_metadata(struct cdisk *d)
{
	int r = cd_disk_init_state(d);

	if (r == 0)
		r = cd_checkpoint_load(d);
	if (r == 0)
		r = cd_journal_replay(d);
	return r;
}

/* Damaged metadata that the disk's own redundancy could not repair:
 * rebuild it from the backup, when allowed.  On failure the original
 * error stands, with what stopped the rebuild. */
static int repair_from_backup(struct cdisk *d, int err, unsigned flags,
			      const char *from)
{
	char original[CD_ERROR_MAX];
	bool asked = flags & (CD_OPEN_RESTORE | CD_OPEN_FORCE_RESTORE);
	int r;

	if (d->readonly && err < 0 && cd_backup_exists(d)) {
		size_t n = strlen(cd_errbuf());
		snprintf(cd_errbuf() + n, CD_ERROR_MAX - n, "; a metadata "
			 "backup exists: run cdisk-restore --metadata");
	}
	if (d->readonly || (!asked && (!d->ctx->cfg.auto_repair ||
				       (flags & CDISK_OPEN_NO_REPAIR))))
		return err;
	memcpy(original, cd_errbuf(), sizeof(original));
	cd_errbuf()[0] = 0;
	r = cd_backup_restore(d, from, d->sb_loaded, flags & CD_OPEN_FORCE_RESTORE);
	if (r < 0) {
		/* Not a cdisk and no backup claims it: just not a cdisk. */
		if (err == -ENOMSG && r == -ENOENT && !from && !asked) {
			memcpy(cd_errbuf(), original, sizeof(original));
			return err;
		}
		if (err == 0 || err == -ENOMSG)
			return r;
		char why[CD_ERROR_MAX];
		memcpy(why, cd_errbuf(), sizeof(why));
		return cd_error(d->ctx, err, "%s; %s", original, why);
	}
	/* Asked for, the caller reports it; found at open, say it here. */
	if (!asked)
		cd_log(d->ctx, CDISK_LOG_WARNING, "'%s': metadata rebuilt from backup '%s' "
	       "(taken %llu s before): %llu journal records replayed, %llu blocks "
	       "reconciled from the data area%s", d->path, d->restore.backup,
	       (unsigned long long)d->restore.backup_age,
	       (unsigned long long)d->restore.records_replayed,
	       (unsigned long long)d->restore.blocks_reconciled,
	       d->restore.exact ? "" : ", every present block marked for sync");
	return 0;
}

int cdisk_open(struct cdisk_ctx *ctx, const char *path, unsigned flags,
	       struct cdisk **out)
{
	return cd_open(ctx, path, flags, NULL, out);
}

int cd_open(struct cdisk_ctx *ctx, const char *path, unsigned flags,
	    const char *from, struct cdisk **out)
{
	struct cdisk *d = calloc(1, sizeof(*d));
	struct stat st;
	int r;

	if (!d)
		return cd_error(ctx, -ENOMEM, "cannot open '%s': out of memory", path);
	pthread_mutex_init(&d->lock, NULL);
	pthread_mutex_init(&d->base_lock, NULL);
	pthread_cond_init(&d->base_opened, NULL);
	pthread_mutex_init(&d->backup_lock, NULL);
	pthread_cond_init(&d->drained, NULL);
	pthread_cond_init(&d->writing_slot, NULL);
	pthread_cond_init(&d->resumed, NULL);
	d->ctx = ctx;
	d->fd = -1;
	d->readonly = flags & (CDISK_OPEN_RDONLY | CDISK_OPEN_CONFIG_ONLY);
	d->path = strdup(path);
	if (!d->path) {
		r = cd_error(ctx, -ENOMEM, "cannot open '%s': out of memory", path);
		goto fail;
	}
	cd_errbuf()[0] = 0;
	d->fd = open(path, (d->readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC);
	if (d->fd < 0 && errno == EISDIR) {
		/* As a read-only open finds it below: one condition, one code. */
		r = cd_error(ctx, -ENOMSG, "'%s' is not a cdisk (not a regular file)", path);
		goto fail;
	}
	if (d->fd < 0) {
		r = cd_error(ctx, -errno, "cannot open '%s': %s", path, strerror(errno));
		goto fail;
	}
	if (fstat(d->fd, &st) < 0) {
		r = cd_error(ctx, -errno, "cannot stat '%s': %s", path, strerror(errno));
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		r = cd_error(ctx, -ENOMSG, "'%s' is not a cdisk (not a regular file)",
			     path);
		goto fail;
	}
	r = flags & CDISK_OPEN_CONFIG_ONLY ? 0 : lock_file(d);
	if (r == 0)
		r = read_superblocks(d, (uint64_t)st.st_size);
	if (r == 0 && (flags & CDISK_OPEN_CONFIG_ONLY)) {
		*out = d;
		return 0;
	}
	if (r == 0)
		r = load_metadata(d);
	if (r == -EUCLEAN || r == -ENOMSG || (r == 0 && (flags & CD_OPEN_FORCE_RESTORE)))
		r = repair_from_backup(d, r, flags, from);
	if (r == 0)
		r = recover_and_own(d);
	if (r == 0)
		r = cd_mirror_init(d);
	if (r < 0)
		goto fail;
	cd_backup_store_pending(d);
	/* Said once the disk is known to open: before, it is noise. */
	if (d->sb_damage[0])
		cd_log(ctx, CDISK_LOG_WARNING, "'%s': %s", path, d->sb_damage);
	if (!(flags & CDISK_OPEN_NO_BASE) && d->sb.base[0]) {
		struct cd_target *base;
		char saved[CD_ERROR_MAX];

		/* Whether it opens is reported by info, not as this open's error. */
		memcpy(saved, cd_errbuf(), sizeof(saved));
		get_base(d, &base);
		memcpy(cd_errbuf(), saved, sizeof(saved));
	}
	*out = d;
	return 0;
fail:
	disk_free(d);
	return r;
}

void cd_disk_free(struct cdisk *d)
{
	disk_free(d);
}

int cdisk_close(struct cdisk *d)
{
	int r = 0;

	if (!d)
		return 0;
	cd_mirror_free(d);
	if (!d->readonly) {
		r = flush_locked(d);
		if (r == 0) {
			d->sb.flags &= ~CD_SB_FLAG_OPEN;
			d->sb.owner_pid = 0;
			r = cd_checkpoint(d);
		}
		cd_backup_store_pending(d);
	}
	disk_free(d);
	return r;
}

struct cdisk_ctx *cdisk_get_ctx(struct cdisk *d)
{
	return d->ctx;
}

/* ---- data path ---- */

static int readonly_error(struct cdisk *d)
{
	return cd_error(d->ctx, -EROFS, "'%s' is open read-only", d->path);
}

static int check_io(struct cdisk *d, size_t len, uint64_t off, bool write)
{
	uint64_t mask = d->block_size - 1;

	if (((off | len) & mask) && !on_primary(d))
		return cd_error(d->ctx, -EINVAL, "'%s': request at %llu+%zu is not "
				"aligned to the block size %llu", d->path,
				(unsigned long long)off, len,
				(unsigned long long)d->block_size);
	if (off > d->sb.size || len > d->sb.size - off)
		return cd_error(d->ctx, -EINVAL, "'%s': request at %llu+%zu is past "
				"the end of the disk (%llu bytes)", d->path,
				(unsigned long long)off, len,
				(unsigned long long)d->sb.size);
	if (write && d->readonly)
		return readonly_error(d);
	return 0;
}

/* How much of [off, off + len) the base holds: a base shorter than the
 * disk reads as zeros past its end. */
static uint64_t base_holds(const struct cd_target *base, uint64_t off, uint64_t len)
{
	return off >= base->size ? 0 : base->size - off < len ? base->size - off : len;
}

static int read_base(struct cdisk *d, uint8_t *buf, size_t len, uint64_t off)
{
	struct cd_target *base;
	size_t have;
	int r;

	if (!d->sb.base[0]) {
		memset(buf, 0, len);
		return 0;
	}
	r = get_base(d, &base);
	if (r < 0)
		return r;
	have = (size_t)base_holds(base, off, len);
	memset(buf + have, 0, len - have);
	if (!have)
		return 0;
	return cd_target_pread(base, buf, have, off);
}

int cd_disk_zero_span(struct cdisk *d, uint64_t off, uint64_t len, uint64_t *span)
{
	uint64_t first = off >> d->block_shift, end = (off + len) >> d->block_shift;
	struct cd_target *base;
	uint64_t have;
	int r;

	*span = 0;
	if (!on_primary(d)) {
		uint64_t present;

		pthread_mutex_lock(&d->lock);
		present = cd_bitmap_find(&d->present, first, true);
		pthread_mutex_unlock(&d->lock);
		if (present < end)
			end = present;
		len = (end - first) << d->block_shift;
		if (!len || !d->sb.base[0]) {
			*span = len;
			return 0;
		}
	}
	r = get_base(d, &base);
	if (r < 0)
		return r;
	have = base_holds(base, off, len);
	/* Past a primary's end nothing is known: it shrank, and a read
	 * there fails. */
	if (on_primary(d) && have < len)
		return 0;
	if (have && (r = cd_target_zero_span(base, off, have, span)) < 0)
		return r;
	if (*span == have)
		*span = len;
	*span &= ~(((uint64_t)1 << d->block_shift) - 1);
	return 0;
}

/* Read n bytes of present blocks from the data area. */
int cd_read_present(struct cdisk *d, uint8_t *p, size_t n, uint64_t off)
{
	int r = cd_pread_full(d->fd, p, n, d->sb.data_offset + off);

	if (r == -CD_WOULD_WAIT && cd_nowait())
		return r;
	if (r < 0)
		return cd_error(d->ctx, r == -ENODATA ? -EUCLEAN : r,
				"cannot read '%s' at %llu: %s", d->path,
				(unsigned long long)off,
				r == -ENODATA ? "file is truncated" : strerror(-r));
	return 0;
}

/* Called when a write's data is down (never before): a sync that read
 * these blocks earlier must not call them clean. */
static int mark_written(struct cdisk *d, uint64_t first, uint64_t count)
{
	int r;

	/* The primary holds the data: nothing is present here, nothing dirty. */
	if (on_primary(d)) {
		if (d->mirror)
			cd_mirror_unclaim_locked(d, first, count);
		return 0;
	}
	r = cd_bitmap_assign(&d->present, first, count, true);

	if (r == 0)
		r = cd_bitmap_assign(&d->dirty, first, count, true);
	if (r == 0 && d->syncing.count)
		r = cd_bitmap_assign(&d->syncing, first, count, false);
	if (r == 0 && d->mirror)
		cd_mirror_unclaim_locked(d, first, count);
	if (r < 0)
		return cd_error(d->ctx, r, "'%s': out of memory", d->path);
	d->unflushed = true;
	cd_quota_track_locked(d);
	return cd_journal_add_run(d, first, count, CD_RUN_DIRTY);
}

/* The blocks a request touches: on a disk on a primary a request need not
 * be whole blocks (the primary takes bytes), and its blocks are all of
 * those it touches. */
static void block_range(const struct cdisk *d, size_t len, uint64_t off,
			uint64_t *first, uint64_t *count)
{
	*first = off >> d->block_shift;
	*count = len ? ((off + len - 1) >> d->block_shift) + 1 - *first : 0;
}

/* What every write does before its data: checks (a write of data, not
 * zeros, against the space quota), and the activity log.  Returns 1 when
 * there is nothing to write. */
static int begin_write(struct cdisk *d, size_t len, uint64_t off, bool zeros)
{
	uint64_t first, count;
	int r = check_io(d, len, off, true);

	if (r < 0 || len == 0)
		return r < 0 ? r : 1;
	block_range(d, len, off, &first, &count);
	if (d->quota && !zeros && !on_primary(d) &&
	    (r = cd_quota_check_locked(d, first, count)) < 0)
		return r;
	return al_protect(d, first, count);
}

static int pwrite_locked(struct cdisk *d, const void *buf, size_t len, uint64_t off)
{
	uint64_t first = off >> d->block_shift, count = len >> d->block_shift;
	int r = begin_write(d, len, off, false);

	if (r != 0)
		return r < 0 ? r : 0;
	r = cd_pwrite_full(d->fd, buf, len, d->sb.data_offset + off);
	if (r < 0)
		return cd_error(d->ctx, r, "cannot write '%s' at %llu: %s", d->path,
				(unsigned long long)off, strerror(-r));
	return mark_written(d, first, count);
}

/* Present-and-zero costs no space: the hole reads as zeros, and the
 * block stays dirty so the base is zeroed at the next sync. */
static int zero_data(struct cdisk *d, size_t len, uint64_t off)
{
	int r = 0;

	if (fallocate(d->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
		      (off_t)(d->sb.data_offset + off), (off_t)len) < 0) {
		uint8_t zeros[65536] = { 0 };
		if (errno != EOPNOTSUPP)
			return cd_error(d->ctx, -errno, "cannot zero '%s' at %llu: %s",
					d->path, (unsigned long long)off, strerror(errno));
		for (size_t done = 0; done < len && r == 0;) {
			size_t n = len - done < sizeof(zeros) ? len - done : sizeof(zeros);
			r = cd_pwrite_full(d->fd, zeros, n, d->sb.data_offset + off + done);
			done += n;
		}
		if (r < 0)
			return cd_error(d->ctx, r, "cannot zero '%s' at %llu: %s", d->path,
					(unsigned long long)off, strerror(-r));
	}
	return 0;
}

/* On a disk with a space quota and no base an absent block reads as
 * zeros already: only the present ones are zeroed, so that a guest's TRIM
 * of space it never wrote takes none of its quota.  (Other disks record
 * zeroed blocks as present, as they always have.) */
static int zero_present(struct cdisk *d, uint64_t first, uint64_t count)
{
	uint64_t end = first + count;
	int r = 0;

	for (uint64_t b = cd_bitmap_find(&d->present, first, true); b < end && r == 0;) {
		uint64_t stop = cd_bitmap_find(&d->present, b, false);

		if (stop > end)
			stop = end;
		r = zero_data(d, (size_t)((stop - b) << d->block_shift), b << d->block_shift);
		if (r == 0)
			r = mark_written(d, b, stop - b);
		b = cd_bitmap_find(&d->present, stop, true);
	}
	return r;
}

static int zero_range(struct cdisk *d, size_t len, uint64_t off)
{
	uint64_t first = off >> d->block_shift, count = len >> d->block_shift;
	int r = begin_write(d, len, off, true);

	if (r != 0)
		return r < 0 ? r : 0;
	if (d->quota && !d->sb.base[0])
		return zero_present(d, first, count);
	r = zero_data(d, len, off);
	return r < 0 ? r : mark_written(d, first, count);
}

/* ---- writes under way: slots, and the mirror's order ---- */

static bool overlaps_mirrored(const struct cdisk *d, uint64_t first, uint64_t count)
{
	for (unsigned i = 0; i < d->nwriting; i++)
		if (d->writing[i].mirrored && d->writing[i].first < first + count &&
		    first < d->writing[i].first + d->writing[i].count)
			return true;
	return false;
}

/* Under the lock: the checks and the activity log, then a slot in
 * writing[] (pull and release leave its blocks alone), and the route.  A
 * write that goes to the mirror waits for earlier ones over the same
 * blocks that do, so that both sides see overlapping writes in one order.
 * Returns 1 when there is nothing to write. */
static int enter_write(struct cdisk *d, size_t len, uint64_t off, bool zeros,
		       bool *mirrored)
{
	uint64_t first, count;
	unsigned slot;
	int r;

	block_range(d, len, off, &first, &count);
	for (;;) {
		while (d->al.draining || d->nwriting == CD_MAX_WRITING)
			pthread_cond_wait(d->al.draining ? &d->resumed : &d->writing_slot,
					  &d->lock);
		r = begin_write(d, len, off, zeros);
		if (r != 0)
			return r;
		*mirrored = cd_mirror_attached(d) && cd_mirror_route_locked(d, first, count);
		if (!*mirrored || !overlaps_mirrored(d, first, count))
			break;
		pthread_cond_wait(&d->writing_slot, &d->lock);
	}
	al_pin(d, first, count, 1);
	slot = d->nwriting++;
	d->writing[slot].first = first;
	d->writing[slot].count = count;
	d->writing[slot].mirrored = *mirrored;
	return 0;
}

static void leave_write(struct cdisk *d, uint64_t first, uint64_t count, bool mirrored)
{
	unsigned slot;

	for (slot = 0; slot < d->nwriting; slot++)
		if (d->writing[slot].first == first && d->writing[slot].count == count &&
		    d->writing[slot].mirrored == mirrored)
			break;
	d->writing[slot] = d->writing[--d->nwriting];
	pthread_cond_broadcast(&d->writing_slot);
	al_pin(d, first, count, -1);
}

/* Under the lock, after the disk's leg (r) and the mirror's (leg_r). */
static int finish_write(struct cdisk *d, uint64_t first, uint64_t count, bool mirrored,
			int r, int leg_r)
{
	leave_write(d, first, count, mirrored);
	if (r < 0) {
		/* The mirror may hold what the disk does not: send the
		 * disk's own blocks again. */
		if (mirrored)
			cd_disk_mark_locked(d, CD_BM_MIRROR, first, count, true);
		return r;
	}
	r = mark_written(d, first, count);
	if (r == 0 && mirrored)
		r = cd_mirror_finish_locked(d, first, count, leg_r);
	return r;
}

/* The disk's leg on a disk on a primary: the primary itself, with no lock
 * held (it may not answer).  armed: the mirror could take over, so the
 * primary gets [mirror] failover_timeout to answer, on a worker. */
static int primary_io(struct cdisk *d, bool armed, enum cd_leg_op op, void *buf,
		      size_t len, uint64_t off)
{
	struct cd_target *t;
	struct cd_leg *leg;
	int r = get_base(d, &t);

	if (r < 0)
		return r;
	if (armed) {
		leg = cd_primary_send(d, t, op, buf, len, off);
		return leg ? cd_primary_wait(d, leg, op == CD_LEG_READ ? buf : NULL) : -ENOMEM;
	}
	switch (op) {
	case CD_LEG_WRITE:
		return cd_target_pwrite(t, buf, len, off);
	case CD_LEG_ZERO:
		return cd_target_zero(t, len, off);
	case CD_LEG_READ:
		return cd_target_pread(t, buf, len, off);
	default:
		return cd_target_flush(t);
	}
}

/* The armed primary's leg of a write or zeroing, sent (*leg) for
 * cd_primary_wait. */
static int primary_send(struct cdisk *d, enum cd_leg_op op, const void *buf, size_t len,
			uint64_t off, struct cd_leg **leg)
{
	struct cd_target *t;
	int r = get_base(d, &t);

	if (r < 0)
		return r;
	*leg = cd_primary_send(d, t, op, buf, len, off);
	return *leg ? 0 : -ENOMEM;
}

/* Under the lock: the primary failed a request (err) that the mirror
 * holds (on_mirror): fail over, and the request is done.  Otherwise the
 * error stands.  (A disk whose writes to the primary are forbidden, an
 * unconfirmed one, never gets here: that is checked before any leg.) */
static int primary_failed_locked(struct cdisk *d, uint64_t gen, int err, bool on_mirror)
{
	char why[CD_MIRROR_ERROR_MAX];

	if (!on_mirror)
		return err;
	snprintf(why, sizeof(why), "%s", cd_errbuf()[0] ? cd_errbuf() : strerror(-err));
	if (cd_failover_locked(d, gen, false, why) < 0) {
		cd_error(d->ctx, err, "%s", why);
		return err;
	}
	return 0;
}

/* A write or a zeroing, metadata under the lock and data without it: the
 * activity log is made durable first and pinned until the data is down;
 * with a mirror, its leg runs beside the disk's.  A write the primary
 * fails and the mirror takes fails the disk over; one that began before a
 * failover and failed is done again where the data is now. */
static int write_both(struct cdisk *d, enum cd_leg_op op, const void *buf, size_t len,
		      uint64_t off)
{
	uint64_t first, count, gen;
	struct cd_leg *leg = NULL, *pleg = NULL;
	bool mirrored, armed, retry, retried = false;
	int r, leg_r;

	if (on_primary(d) && (r = cd_identity_confirmed(d, "write to the primary of")) < 0)
		return r;
again:
	leg_r = 0;
	pleg = NULL;
	mirrored = false;
	block_range(d, len, off, &first, &count);
	pthread_mutex_lock(&d->lock);
	r = enter_write(d, len, off, op == CD_LEG_ZERO, &mirrored);
	gen = d->primary_gen;
	armed = mirrored && cd_failover_armed_locked(d);
	pthread_mutex_unlock(&d->lock);
	if (r != 0)
		return r < 0 ? r : 0;
	/* An armed primary's leg first: when it left from here, so may the
	 * mirror's, both then waited for here.  Beside a primary called
	 * inline (up to its own timeout), the mirror's leg is a worker's, so
	 * that its session is not held meanwhile. */
	if (on_primary(d) && armed)
		r = primary_send(d, op, buf, len, off, &pleg);
	if (mirrored)
		leg = cd_mirror_send(d, !on_primary(d) || cd_leg_here(pleg), op, buf, len, off);
	if (on_primary(d)) {
		if (armed)
			r = r < 0 ? r : cd_primary_wait(d, pleg, NULL);
		else
			r = primary_io(d, false, op, (void *)buf, len, off);
	} else if (op == CD_LEG_WRITE) {
		r = cd_pwrite_full(d->fd, buf, len, d->sb.data_offset + off);
		if (r < 0)
			r = cd_error(d->ctx, r, "cannot write '%s' at %llu: %s", d->path,
				     (unsigned long long)off, strerror(-r));
	} else {
		r = zero_data(d, len, off);
	}
	if (mirrored)
		leg_r = leg ? cd_mirror_wait(d, leg) : -ENOMEM;
	pthread_mutex_lock(&d->lock);
	/* A failover since this write began: unless the mirror, now the
	 * primary, took it, it is not where the data is now, whatever the
	 * former primary said.  Done again there. */
	retry = !retried && gen != d->primary_gen && !(mirrored && leg_r == 0);
	if (retry) {
		finish_write(d, first, count, mirrored, 0, 0);
		pthread_mutex_unlock(&d->lock);
		retried = true;
		goto again;
	}
	if (r < 0 && on_primary(d)) {
		r = primary_failed_locked(d, gen, r, mirrored && leg_r == 0);
		/* The fenced former primary may lack this write. */
		if (r == 0) {
			cd_disk_mark_locked(d, CD_BM_MIRROR, first, count, true);
			r = cd_journal_commit(d, true);
		}
	}
	r = finish_write(d, first, count, mirrored, r, leg_r);
	pthread_mutex_unlock(&d->lock);
	return r;
}

/* A read of a disk on a primary; with a mirror in sync, a primary that
 * fails it or does not answer in time is failed over, and the read is
 * done again on the mirror. */
static int read_primary(struct cdisk *d, void *buf, size_t len, uint64_t off)
{
	for (int tries = 0;; tries++) {
		uint64_t gen;
		bool armed, retry;
		int r;

		pthread_mutex_lock(&d->lock);
		gen = d->primary_gen;
		armed = cd_failover_armed_locked(d);
		pthread_mutex_unlock(&d->lock);
		r = primary_io(d, armed, CD_LEG_READ, buf, len, off);
		if (r == 0 || tries)
			return r;
		pthread_mutex_lock(&d->lock);
		if (armed && primary_failed_locked(d, gen, r, true) < 0) {
			pthread_mutex_unlock(&d->lock);
			return r;
		}
		retry = gen != d->primary_gen;
		pthread_mutex_unlock(&d->lock);
		if (!retry)
			return r;
	}
}

static int flush_locked(struct cdisk *d)
{
	int r;

	if (d->readonly)
		return 0;
	if (d->unflushed || d->nruns || d->runs_overflow) {
		r = cd_journal_commit(d, true);
		if (r < 0)
			return r;
		d->unflushed = false;
	}
	/* Every completed write is durable and recorded now; one still under
	 * way is not. */
	for (uint32_t i = 0; i < d->al.count; i++)
		if (!d->al.inflight[i])
			d->al.flushed[i] = true;
	if ((uint64_t)time(NULL) >= d->backup_time + d->ctx->cfg.backup_interval)
		cd_backup_write(d);
	return 0;
}

/* ---- the public data path: each call under the disk's lock ---- */

#define LOCKED(d, call)                                 \
	({                                              \
		pthread_mutex_lock(&(d)->lock);         \
		int locked_r_ = (call);                 \
		pthread_mutex_unlock(&(d)->lock);       \
		locked_r_;                              \
	})

/* The next run of blocks from b that all read from the same place,
 * looked up under the lock; the I/O itself is done without it, so that
 * many requests read at once. */
static void next_run(struct cdisk *d, uint64_t b, uint64_t end, bool *present,
		     uint64_t *stop)
{
	pthread_mutex_lock(&d->lock);
	*present = cd_bitmap_get(&d->present, b);
	*stop = cd_bitmap_find(&d->present, b, !*present);
	if (*stop > end)
		*stop = end;
	pthread_mutex_unlock(&d->lock);
}

int cdisk_pread(struct cdisk *d, void *buf, size_t len, uint64_t off)
{
	uint64_t b = off >> d->block_shift, end = (off + len) >> d->block_shift;
	/* Size, block size and mode never change while the disk is open. */
	int r = check_io(d, len, off, false);

	if (r == 0 && on_primary(d))
		return cd_nowait() ? -CD_WOULD_WAIT : read_primary(d, buf, len, off);
	while (r == 0 && b < end) {
		uint8_t *p = (uint8_t *)buf + ((b << d->block_shift) - off);
		uint64_t stop;
		bool present;
		size_t n;

		next_run(d, b, end, &present, &stop);
		n = (size_t)((stop - b) << d->block_shift);
		r = present ? cd_read_present(d, p, n, b << d->block_shift)
			    : read_base(d, p, n, b << d->block_shift);
		b = stop;
	}
	return r;
}

int cdisk_pwrite(struct cdisk *d, const void *buf, size_t len, uint64_t off)
{
	return write_both(d, CD_LEG_WRITE, buf, len, off);
}

/* With a mirror, a flush reaches it first: when it fails there, what the
 * activity log names goes to the mirror again before this flush records
 * anything as done.  *moved: a failover since it began, and the mirror
 * (now the primary) did not take this flush: it is to be done again. */
static int flush_once(struct cdisk *d, bool *moved)
{
	struct cd_leg *leg = NULL;
	bool live, armed;
	uint64_t gen;
	int r, leg_r = 0, primary_r = 0;

	pthread_mutex_lock(&d->lock);
	live = cd_mirror_attached(d) && cd_mirror_route_locked(d, 0, 0);
	armed = live && cd_failover_armed_locked(d);
	gen = d->primary_gen;
	d->mirror_flushes += live;
	pthread_mutex_unlock(&d->lock);
	if (live)
		leg = cd_mirror_send(d, false, CD_LEG_FLUSH, NULL, 0, 0);
	/* The primary's flush runs beside the mirror's. */
	if (on_primary(d) && !d->readonly)
		primary_r = primary_io(d, armed, CD_LEG_FLUSH, NULL, 0, 0);
	if (live)
		leg_r = leg ? cd_mirror_wait(d, leg) : -ENOMEM;
	pthread_mutex_lock(&d->lock);
	if (live) {
		d->mirror_flushes--;
		pthread_cond_broadcast(&d->writing_slot);
	}
	*moved = gen != d->primary_gen && !(live && leg_r == 0);
	if (*moved) {
		pthread_mutex_unlock(&d->lock);
		return 0;
	}
	/* Every write acknowledged before this flush is on the mirror, which
	 * flushed them: failing over loses none. */
	if (primary_r < 0 && live)
		primary_r = primary_failed_locked(d, gen, primary_r, leg_r == 0);
	r = leg_r < 0 ? cd_mirror_flush_failed_locked(d, leg_r) : 0;
	if (r == 0)
		r = flush_locked(d);
	pthread_mutex_unlock(&d->lock);
	if (r == 0 && primary_r < 0)
		r = primary_r;
	/* A backup the flush took is written now, with no lock held. */
	cd_backup_store_pending(d);
	return r;
}

int cdisk_flush(struct cdisk *d)
{
	bool moved;
	int r = 0;

	if (on_primary(d) && !d->readonly &&
	    (r = cd_identity_confirmed(d, "write to the primary of")) < 0)
		return r;
	r = flush_once(d, &moved);
	if (moved)
		r = flush_once(d, &moved);
	if (moved)
		r = cd_error(d->ctx, -EIO, "'%s' failed over twice during one flush; "
			     "flush again", d->path);
	return r;
}

/* A discard reads as zeros here, and is sent to the mirror as a zeroing,
 * so that both sides read the same after it. */
int cdisk_discard(struct cdisk *d, size_t len, uint64_t off)
{
	return cdisk_write_zeroes(d, len, off);
}

int cdisk_write_zeroes(struct cdisk *d, size_t len, uint64_t off)
{
	if (cd_mirror_attached(d) || on_primary(d))
		return write_both(d, CD_LEG_ZERO, NULL, len, off);
	return LOCKED(d, zero_range(d, len, off));
}

/* ---- requests not aligned to blocks ----
 * NBD lets a server ask for at most 64 KiB alignment, and some clients
 * ask for none: the edges of such a request are read, merged and written
 * back whole.  The merge and write happen under the lock so that two of
 * them cannot interleave; an edge the overlay does not hold comes from the
 * base, read before, without the lock, since the base may not answer. */

static void block_span(const struct cdisk *d, uint64_t off, size_t len,
		       uint64_t *first, uint64_t *end)
{
	*first = off & ~(d->block_size - 1);
	*end = cd_round_up(off + len, d->block_size);
}

struct rmw_edges {
	uint64_t block[2];       /* offsets of the first and last block */
	unsigned n;
	uint8_t *base_data;      /* n blocks read from the base */
	bool fetched[2];
};

/* Under the lock: the edges' old content into tmp.  1 when an edge the
 * overlay does not hold has not been read from the base yet. */
static int gather_edges(struct cdisk *d, struct rmw_edges *e, uint8_t *tmp,
			uint64_t first)
{
	for (unsigned k = 0; k < e->n; k++) {
		uint8_t *to = tmp + (e->block[k] - first);
		int r;

		if (cd_bitmap_get(&d->present, e->block[k] >> d->block_shift)) {
			r = cd_read_present(d, to, d->block_size, e->block[k]);
			if (r < 0)
				return r;
		} else if (e->fetched[k]) {
			memcpy(to, e->base_data + (size_t)k * d->block_size, d->block_size);
		} else {
			return 1;
		}
	}
	return 0;
}

static int fetch_edges(struct cdisk *d, struct rmw_edges *e)
{
	for (unsigned k = 0; k < e->n; k++) {
		int r;

		if (e->fetched[k])
			continue;
		r = read_base(d, e->base_data + (size_t)k * d->block_size, d->block_size,
			      e->block[k]);
		if (r < 0)
			return r;
		e->fetched[k] = true;
	}
	return 0;
}

static void merge(uint8_t *to, const void *buf, size_t len)
{
	if (buf)
		memcpy(to, buf, len);
	else
		memset(to, 0, len);
}

/* One try of a merge on a disk with a mirror: the slot (and the mirror's
 * order) first, so that the edges read under it stay right, then the
 * merged blocks to both sides as any write.  1: an edge must be fetched
 * from the base first. */
static int rmw_mirrored(struct cdisk *d, struct rmw_edges *e, uint8_t *tmp, uint64_t first,
			uint64_t end, const void *buf, size_t len, uint64_t off)
{
	uint64_t b0 = first >> d->block_shift, n = (end - first) >> d->block_shift;
	struct cd_leg *leg = NULL;
	bool mirrored;
	int r, leg_r = 0;

	pthread_mutex_lock(&d->lock);
	r = enter_write(d, (size_t)(end - first), first, false, &mirrored);
	if (r != 0) {
		pthread_mutex_unlock(&d->lock);
		return r < 0 ? r : 0;
	}
	r = gather_edges(d, e, tmp, first);
	if (r == 0) {
		merge(tmp + (off - first), buf, len);
		r = cd_pwrite_full(d->fd, tmp, (size_t)(end - first), d->sb.data_offset + first);
		if (r < 0)
			r = cd_error(d->ctx, r, "cannot write '%s' at %llu: %s", d->path,
				     (unsigned long long)first, strerror(-r));
	}
	if (r != 0 || !mirrored) {
		if (r == 1) {
			leave_write(d, b0, n, mirrored);
		} else {
			r = finish_write(d, b0, n, mirrored, r, 0);
		}
		pthread_mutex_unlock(&d->lock);
		return r;
	}
	pthread_mutex_unlock(&d->lock);
	/* The disk's own leg is down already. */
	leg = cd_mirror_send(d, true, CD_LEG_WRITE, tmp, (size_t)(end - first), first);
	leg_r = leg ? cd_mirror_wait(d, leg) : -ENOMEM;
	pthread_mutex_lock(&d->lock);
	r = finish_write(d, b0, n, mirrored, 0, leg_r);
	pthread_mutex_unlock(&d->lock);
	return r;
}

static int rmw(struct cdisk *d, const void *buf, size_t len, uint64_t off)
{
	struct rmw_edges e = { .n = 1 };
	uint64_t first, end;
	uint8_t *tmp;
	int r;

	if (len == 0 || off > d->sb.size || len > d->sb.size - off)
		return check_io(d, len, off, true);
	if (d->readonly)
		return readonly_error(d);
	block_span(d, off, len, &first, &end);
	e.block[0] = first;
	if (end - d->block_size > first)
		e.block[e.n++] = end - d->block_size;
	tmp = malloc(end - first);
	e.base_data = malloc((size_t)e.n * d->block_size);
	if (!tmp || !e.base_data) {
		free(tmp);
		free(e.base_data);
		return cd_error(d->ctx, -ENOMEM, "'%s': out of memory", d->path);
	}
	for (;;) {
		pthread_mutex_lock(&d->lock);
		if (cd_mirror_attached(d)) {
			pthread_mutex_unlock(&d->lock);
			r = rmw_mirrored(d, &e, tmp, first, end, buf, len, off);
		} else {
			r = gather_edges(d, &e, tmp, first);
			if (r == 0) {
				merge(tmp + (off - first), buf, len);
				r = pwrite_locked(d, tmp, end - first, first);
			}
			pthread_mutex_unlock(&d->lock);
		}
		if (r <= 0)
			break;
		/* A block leaves the overlay only when the base holds it, so
		 * what is read here stays right until it is merged. */
		r = fetch_edges(d, &e);
		if (r < 0)
			break;
	}
	free(tmp);
	free(e.base_data);
	return r;
}

int cdisk_pread_unaligned(struct cdisk *d, void *buf, size_t len, uint64_t off)
{
	uint64_t first, end;
	uint8_t *tmp;
	int r;

	if (((off | len) & (d->block_size - 1)) == 0 || on_primary(d))
		return cdisk_pread(d, buf, len, off);
	if (off > d->sb.size || len > d->sb.size - off)
		return check_io(d, len, off, false);
	block_span(d, off, len, &first, &end);
	tmp = malloc(end - first ? end - first : 1);
	if (!tmp)
		return cd_error(d->ctx, -ENOMEM, "'%s': out of memory", d->path);
	r = cdisk_pread(d, tmp, end - first, first);
	if (r == 0)
		memcpy(buf, tmp + (off - first), len);
	free(tmp);
	return r;
}

int cdisk_pwrite_unaligned(struct cdisk *d, const void *buf, size_t len, uint64_t off)
{
	/* A primary takes bytes: no merge here. */
	if (((off | len) & (d->block_size - 1)) == 0 || on_primary(d))
		return cdisk_pwrite(d, buf, len, off);
	return rmw(d, buf, len, off);
}

int cdisk_write_zeroes_unaligned(struct cdisk *d, size_t len, uint64_t off)
{
	if (((off | len) & (d->block_size - 1)) == 0 || on_primary(d))
		return cdisk_write_zeroes(d, len, off);
	return rmw(d, NULL, len, off);
}

/* Where the disk holds data and where it reads as zeros without storing
 * any, as runs from off: a present block is data unless the data area
 * has a hole there; an absent one is the base's data, or zeros when
 * there is no base. */
static int status_locked(struct cdisk *d, uint64_t off, uint64_t len,
			 struct cdisk_extent *ext, size_t max, size_t *n)
{
	uint64_t end = off + len > d->sb.size ? d->sb.size : off + len;

	*n = 0;
	while (off < end && *n < max) {
		uint64_t b = off >> d->block_shift;
		bool present = cd_bitmap_get(&d->present, b);
		uint64_t stop = cd_bitmap_find(&d->present, b, !present) << d->block_shift;
		bool zero = !present && !d->sb.base[0];

		if (stop > end)
			stop = end;
		if (present) {
			off_t pos = (off_t)(d->sb.data_offset + off);
			off_t data = lseek(d->fd, pos, SEEK_DATA);
			/* Only whole blocks of hole are zeros: the block where
			 * the data begins is data (the data area's holes need
			 * not end on a block: a file system's blocks may be
			 * smaller, or the file was made sparse by hand). */
			uint64_t hole_end = data >= 0 ? ((uint64_t)data - d->sb.data_offset) &
							  ~((uint64_t)d->block_size - 1)
					  : errno == ENXIO ? UINT64_MAX : off;
			if (hole_end > off) {
				zero = true;
				if (hole_end < stop)
					stop = hole_end;
			} else {
				off_t hole = lseek(d->fd, pos, SEEK_HOLE);
				if (hole > pos && (uint64_t)hole - d->sb.data_offset < stop)
					stop = cd_round_up((uint64_t)hole - d->sb.data_offset,
							   d->block_size);
			}
		}
		if (*n && ext[*n - 1].zero == zero) {
			ext[*n - 1].length += stop - off;
		} else {
			ext[*n].length = stop - off;
			ext[*n].zero = zero;
			(*n)++;
		}
		off = stop;
	}
	return 0;
}

int cdisk_block_status(struct cdisk *d, uint64_t off, uint64_t len,
		       struct cdisk_extent *ext, size_t max, size_t *n)
{
	if (off >= d->sb.size || max == 0)
		return cd_error(d->ctx, -EINVAL, "'%s': status past the end", d->path);
	return LOCKED(d, status_locked(d, off, len, ext, max, n));
}

uint64_t cdisk_size(const struct cdisk *d)
{
	return d->sb.size;
}

uint32_t cdisk_block_size(const struct cdisk *d)
{
	return d->sb.block_size;
}

const char *cdisk_path(const struct cdisk *d)
{
	return d->path;
}

static bool being_written(const struct cdisk *d, uint64_t b)
{
	for (unsigned i = 0; i < d->nwriting; i++)
		if (b >= d->writing[i].first && b - d->writing[i].first < d->writing[i].count)
			return true;
	return false;
}

void cd_disk_drain_mirrored_locked(struct cdisk *d)
{
	while (d->mirror_flushes || overlaps_mirrored(d, 0, d->nblocks))
		pthread_cond_wait(&d->writing_slot, &d->lock);
}

bool cd_disk_being_written(const struct cdisk *d, uint64_t b)
{
	return being_written(d, b);
}

bool cd_disk_on_primary(const struct cdisk *d)
{
	return on_primary(d);
}

bool cd_disk_local(const struct cdisk *d)
{
	return !d->sb.base[0] && !d->sb.mirror[0] &&
	       !__atomic_load_n(&d->mirror, __ATOMIC_ACQUIRE);
}

/* Every block of [off, off + len) is here: a request on them never needs
 * the base.  Blocks leave only by a discard, which would then come first:
 * a request it overtakes in the queue may wait on the base after all, as
 * any request not judged quick does. */
static bool all_present(struct cdisk *d, uint64_t off, uint64_t len)
{
	uint64_t b = off / d->block_size;
	uint64_t end = len ? (off + len - 1) / d->block_size + 1 : b;
	bool here = true;

	pthread_mutex_lock(&d->lock);
	for (; here && b < end && b < d->nblocks; b++)
		here = cd_bitmap_get(&d->present, b);
	pthread_mutex_unlock(&d->lock);
	return here;
}

bool cd_disk_quick(struct cdisk *d, bool write, uint64_t off, uint64_t len)
{
	uint64_t mask = d->block_size - 1;

	if (d->sb.mirror[0] || __atomic_load_n(&d->mirror, __ATOMIC_ACQUIRE) || on_primary(d))
		return false;
	if (!d->sb.base[0] || __atomic_load_n(&d->base_local, __ATOMIC_ACQUIRE))
		return true;
	if (write && !(off & mask) && !(len & mask))
		return true;
	return all_present(d, off, len);
}

void cd_disk_set_base(struct cdisk *d, struct cd_target *t)
{
	d->base = t;
	__atomic_store_n(&d->base_local, t && t->local_file, __ATOMIC_RELEASE);
}

/* The next run from b of blocks that are absent (present == false) or
 * present and clean (present == true), and not being written. */
static uint64_t run_end(const struct cdisk *d, uint64_t b, uint64_t end, bool present)
{
	while (b < end && cd_bitmap_get(&d->present, b) == present &&
	       (!present || !cd_bitmap_get(&d->dirty, b)) && !being_written(d, b))
		b++;
	return b;
}

int cd_fill_locked(struct cdisk *d, uint64_t first, uint64_t count, const uint8_t *data)
{
	uint64_t end = first + count;

	for (uint64_t b = first; b < end;) {
		uint64_t stop = run_end(d, b, end, false);
		int r;

		if (stop == b) {
			b++;
			continue;
		}
		r = cd_pwrite_full(d->fd, data + ((b - first) << d->block_shift),
				   (size_t)((stop - b) << d->block_shift),
				   d->sb.data_offset + (b << d->block_shift));
		if (r < 0)
			return cd_error(d->ctx, r, "cannot write '%s': %s", d->path, strerror(-r));
		r = cd_bitmap_assign(&d->present, b, stop - b, true);
		if (r < 0)
			return cd_error(d->ctx, r, "'%s': out of memory", d->path);
		d->unflushed = true;
		cd_quota_track_locked(d);
		r = cd_journal_add_run(d, b, stop - b, CD_RUN_CLEAN);
		if (r < 0)
			return r;
		b = stop;
	}
	return 0;
}

/* Punch the runs' data out, once their drop is durable. */
static int punch_runs(struct cdisk *d, const uint64_t (*runs)[2], unsigned n)
{
	int r = n ? cd_flush_locked(d) : 0;

	for (unsigned i = 0; i < n && r == 0; i++)
		if (fallocate(d->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			      (off_t)(d->sb.data_offset + (runs[i][0] << d->block_shift)),
			      (off_t)(runs[i][1] << d->block_shift)) < 0 && errno != EOPNOTSUPP)
			r = cd_error(d->ctx, -errno, "cannot free space in '%s': %s", d->path,
				     strerror(errno));
	return r;
}

int cd_release_locked(struct cdisk *d, uint64_t first, uint64_t count, uint64_t *released)
{
	uint64_t end = first + count, runs[64][2];
	unsigned n = 0;
	int r = 0;

	/* The records first, made durable, then the data: a crash between
	 * leaves data that is no longer claimed, never a claim on data that
	 * is gone.  All under the lock, so no write can land in between. */
	for (uint64_t b = first; b < end && r == 0;) {
		uint64_t stop = run_end(d, b, end, true);

		if (stop == b) {
			b++;
			continue;
		}
		r = cd_bitmap_assign(&d->present, b, stop - b, false);
		if (r == 0)
			r = cd_journal_add_run(d, b, stop - b, CD_RUN_DROP);
		if (r < 0)
			break;
		runs[n][0] = b;
		runs[n][1] = stop - b;
		*released += stop - b;
		if (++n == CD_ARRAY_SIZE(runs)) {
			r = punch_runs(d, (const uint64_t (*)[2])runs, n);
			n = 0;
		}
		b = stop;
	}
	if (r == 0)
		r = punch_runs(d, (const uint64_t (*)[2])runs, n);
	cd_quota_track_locked(d);
	return r;
}

/* Record that the base durably holds blocks [first, first + count) as the
 * overlay has them.  The caller (sync) must have flushed the base.  Only
 * present blocks change: the others already read from the base. */
int cd_mark_clean(struct cdisk *d, uint64_t first, uint64_t count)
{
	uint64_t end = first + count;

	if (first > d->nblocks || count > d->nblocks - first)
		return cd_error(d->ctx, -EINVAL, "'%s': blocks %llu+%llu past the end",
				d->path, (unsigned long long)first,
				(unsigned long long)count);
	for (uint64_t b = cd_bitmap_find(&d->present, first, true); b < end;) {
		uint64_t stop = cd_bitmap_find(&d->present, b, false);
		int r;

		if (stop > end)
			stop = end;
		r = cd_bitmap_assign(&d->dirty, b, stop - b, false);
		if (r < 0)
			return cd_error(d->ctx, r, "'%s': out of memory", d->path);
		r = cd_journal_add_run(d, b, stop - b, CD_RUN_CLEAN);
		if (r < 0)
			return r;
		b = cd_bitmap_find(&d->present, stop, true);
	}
	return 0;
}

/* Call fn for each run of blocks [first, last) that the data area has
 * allocated, as the filesystem reports it (SEEK_DATA/SEEK_HOLE). */
int cd_for_each_allocated(struct cdisk *d,
			  int (*fn)(struct cdisk *d, uint64_t first, uint64_t last,
				    void *opaque),
			  void *opaque)
{
	uint64_t base = d->sb.data_offset, end = base + d->sb.size, pos = base;
	int r = 0;

	while (pos < end && r == 0) {
		off_t data = lseek(d->fd, (off_t)pos, SEEK_DATA), hole;
		if (data < 0 || (uint64_t)data >= end)
			break;
		hole = lseek(d->fd, data, SEEK_HOLE);
		if (hole < 0)
			break;
		uint64_t stop = (uint64_t)hole < end ? (uint64_t)hole : end;
		r = fn(d, ((uint64_t)data - base) >> d->block_shift,
		       cd_div_round_up(stop - base, d->block_size), opaque);
		pos = stop;
	}
	return r;
}

/* ---- information ---- */

static int info_locked(struct cdisk *d, struct cdisk_info *info)
{
	const uint8_t *u = d->sb.uuid;
	struct stat st;

	memset(info, 0, sizeof(*info));
	snprintf(info->uuid, sizeof(info->uuid),
		 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
		 u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10],
		 u[11], u[12], u[13], u[14], u[15]);
	info->format_version = d->sb.version;
	info->size = d->sb.size;
	info->block_size = d->sb.block_size;
	info->blocks = d->nblocks;
	info->blocks_present = d->present.count;
	info->blocks_dirty = d->dirty.count;
	memcpy(info->base, d->sb.base, sizeof(info->base));
	memcpy(info->mirror, d->sb.mirror, sizeof(info->mirror));
	memcpy(info->meta_backup, d->sb.meta_backup, sizeof(info->meta_backup));
	info->cache_mode = (enum cdisk_cache_mode)d->sb.cache_mode;
	info->compat = d->sb.compat;
	info->incompat = d->sb.incompat;
	info->ro_compat = d->sb.ro_compat;
	info->created = d->sb.created;
	info->sb_seq = d->sb.seq;
	info->sb_valid[0] = d->sb_valid[0];
	info->sb_valid[1] = d->sb_valid[1];
	info->closed_cleanly = !d->was_open;
	info->journal_records = d->j_replayed;
	info->recovered_blocks = d->recovered_blocks;
	info->data_offset = d->sb.data_offset;
	if (fstat(d->fd, &st) == 0)
		info->file_bytes = (uint64_t)st.st_blocks * 512;
	info->unconfirmed = d->sb.ro_compat & CD_FEATURE_RO_COMPAT_UNCONFIRMED;
	info->mirror_active = cd_mirror_attached(d);
	info->failed_over = d->sb.incompat & CD_FEATURE_INCOMPAT_FENCED;
	info->on_primary = cd_sb_has_primary(&d->sb);
	if (!info->unconfirmed &&
	    cd_backup_path(&d->ctx->cfg, &d->sb, info->backup_path,
			   sizeof(info->backup_path)) == 0 &&
	    stat(info->backup_path, &st) == 0) {
		info->backup_exists = true;
		info->backup_age = (uint64_t)time(NULL) > (uint64_t)st.st_mtime ?
				   (uint64_t)time(NULL) - (uint64_t)st.st_mtime : 0;
	}
	pthread_mutex_lock(&d->base_lock);
	info->base_opening_ms = d->base_opening ? cd_now_ms() - d->base_opening_since : 0;
	info->base_reachable = d->base != NULL;
	info->base_size = d->base ? d->base->size : 0;
	info->base_error = d->base_error;
	snprintf(info->base_error_msg, sizeof(info->base_error_msg), "%s",
		 d->base_error_msg);
	pthread_mutex_unlock(&d->base_lock);
	return 0;
}

int cdisk_get_info(struct cdisk *d, struct cdisk_info *info)
{
	return LOCKED(d, info_locked(d, info));
}

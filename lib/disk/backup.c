/* Metadata backups: a copy of a disk's superblock and block state kept in
 * a second place on the host, and the rebuild of damaged metadata from it.
 *
 * A backup is written at every checkpoint (so every clean close) and, on
 * flush, when the configured interval has passed.  Because a checkpoint
 * always comes with a backup, the journal records written after the
 * newest backup are still in the ring: a restore replays them and loses
 * nothing, zeroed blocks included.  Only when the journal is damaged too
 * does it fall back to the data area's own allocation (SEEK_DATA). */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "backup.h"
#include "bitmap.h"
#include "cdisk.h"
#include "ctx.h"
#include "disk.h"
#include "format.h"
#include "journal.h"
#include "util.h"

#define BK_MAGIC "CDISKBAK"
#define BK_VERSION 1u
#define BK_HEADER 4096u

enum {
	BK_SEQ = 16, BK_UUID = 24, BK_JSEQ = 40, BK_TAKEN = 48, BK_TOTAL = 56,
	BK_STORED = 60, BK_LENGTH = 64, BK_DIR_CRC = 72, BK_PAGES_CRC = 76,
	BK_PATH = 512,
};

/* A backup as it will be written: taken under the disk's lock (memory
 * only), written without it, so that the backup file's fsyncs never hold
 * up the guest's I/O. */
struct cd_backup_image {
	uint8_t *buf;
	size_t len;
	uint64_t gen;            /* later snapshots have larger numbers */
	uint8_t uuid[16];
	char path[PATH_MAX];
	char disk[PATH_MAX];     /* the disk's real path, for the index */
};

/* ---- where ---- */

int cd_backup_path(const struct cd_config *cfg, const struct cd_superblock *sb,
		   char *out, size_t len)
{
	const uint8_t *u = sb->uuid;

	if (sb->meta_backup[0]) {
		snprintf(out, len, "%s", sb->meta_backup);
		return 0;
	}
	if (!cfg->backup_dir[0])
		return -ENOENT;
	snprintf(out, len, "%s/%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
		 "%02x%02x%02x%02x%02x%02x.meta", cfg->backup_dir, u[0], u[1], u[2],
		 u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13],
		 u[14], u[15]);
	return 0;
}

/* ---- the index: which backup belongs to which disk ----
 * A disk's own backup path (--meta-backup) is recorded only in its
 * superblocks; when both are gone, the index in the backup folder still
 * names it.  One line per disk, "UUID<TAB>backup path<TAB>disk path",
 * replaced whole (temporary file, rename) under a lock on index.lock. */

#define INDEX_NAME "index"

static void uuid_text(const uint8_t *u, char out[37])
{
	snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
		 "%02x%02x%02x%02x%02x%02x", u[0], u[1], u[2], u[3], u[4], u[5], u[6],
		 u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
}

static void fsync_dir(const char *dirpath)
{
	int dfd = open(*dirpath ? dirpath : "/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (dfd >= 0) {
		fsync(dfd);
		close(dfd);
	}
}

static int index_update(struct cdisk *d, const struct cd_backup_image *img,
			const char *backup)
{
	const char *dirpath = d->ctx->cfg.backup_dir;
	const char *real = img->disk;
	char idx[PATH_MAX], tmp[PATH_MAX + 32], lockp[PATH_MAX];
	char uuid[37], *line = NULL;
	size_t cap = 0;
	FILE *in = NULL, *out = NULL;
	int lock = -1, r = 0;

	if (!dirpath[0] || !real[0] || strpbrk(real, "\t\n") || strpbrk(backup, "\t\n"))
		return -EINVAL;
	uuid_text(img->uuid, uuid);
	snprintf(idx, sizeof(idx), "%s/" INDEX_NAME, dirpath);
	snprintf(lockp, sizeof(lockp), "%s/" INDEX_NAME ".lock", dirpath);
	snprintf(tmp, sizeof(tmp), "%s.tmp.%d", idx, (int)getpid());
	r = cd_mkdir_parents(idx);
	if (r < 0)
		goto out;
	lock = open(lockp, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (lock < 0 || flock(lock, LOCK_EX) < 0) {
		r = -errno;
		goto out;
	}
	out = fopen(tmp, "we");
	if (!out) {
		r = -errno;
		goto out;
	}
	in = fopen(idx, "re");
	while (in && getline(&line, &cap, in) > 0)
		if (strncmp(line, uuid, 36) != 0 || line[36] != '\t')
			fputs(line, out);
	fprintf(out, "%s\t%s\t%s\n", uuid, backup, real);
	if (fflush(out) != 0 || fsync(fileno(out)) < 0)
		r = -errno;
	if (fclose(out) != 0 && r == 0)
		r = -errno;
	out = NULL;
	if (r == 0 && rename(tmp, idx) < 0)
		r = -errno;
	if (r == 0)
		fsync_dir(dirpath);
	else
		unlink(tmp);
out:
	if (in)
		fclose(in);
	if (out) {
		fclose(out);
		unlink(tmp);
	}
	free(line);
	if (lock >= 0)
		close(lock);
	if (r < 0)
		cd_log(d->ctx, CDISK_LOG_WARNING, "'%s': cannot update the metadata backup "
		       "index '%s': %s", d->path, idx, strerror(-r));
	return r;
}

/* ---- writing ---- */

/* Pages are numbered across all bitmaps, as in the checkpoints. */
static void page_at(struct cdisk *d, uint32_t i, struct cd_bitmap **bm, uint32_t *p)
{
	*bm = cd_disk_bitmap(d, i / d->present.npages);
	*p = i % d->present.npages;
}

void cd_backup_image_free(struct cd_backup_image *img)
{
	if (img)
		free(img->buf);
	free(img);
}

/* Under the disk's lock.  The caller guarantees that the state is durable
 * (right after an fdatasync). */
static int snapshot(struct cdisk *d, struct cd_backup_image **out)
{
	uint32_t total = d->sb.nbitmaps * d->present.npages, stored = 0;
	uint64_t dlen = cd_round_up((uint64_t)total * 8, 4096);
	struct cd_backup_image *img;
	uint32_t pages_crc = 0;
	uint8_t *head, *dir, *page;
	int r;

	*out = NULL;
	/* Restored by force from a backup nothing proved its own, this disk
	 * may be another's twin: writing would replace that disk's backup. */
	if (d->sb.ro_compat & CD_FEATURE_RO_COMPAT_UNCONFIRMED)
		return -ENOENT;
	img = calloc(1, sizeof(*img));
	if (!img)
		return -ENOMEM;
	r = cd_backup_path(&d->ctx->cfg, &d->sb, img->path, sizeof(img->path));
	if (r < 0) {
		free(img);
		return r;
	}
	for (uint32_t i = 0; i < total; i++) {
		struct cd_bitmap *bm;
		uint32_t p;

		page_at(d, i, &bm, &p);
		stored += bm->pages[p] != NULL;
	}
	img->len = BK_HEADER + CD_SB_SIZE + dlen + (size_t)stored * CD_PAGE_SIZE;
	img->buf = calloc(1, img->len);
	if (!img->buf) {
		free(img);
		return -ENOMEM;
	}
	head = img->buf;
	dir = head + BK_HEADER + CD_SB_SIZE;
	page = dir + dlen;
	for (uint32_t i = 0; i < total; i++) {
		struct cd_bitmap *bm;
		uint32_t p;

		page_at(d, i, &bm, &p);
		if (!bm->pages[p])
			continue;
		memcpy(page, bm->pages[p], CD_PAGE_SIZE);
		cd_put_le32(dir + (uint64_t)i * 8, bm->page_count[p]);
		cd_put_le32(dir + (uint64_t)i * 8 + 4, cd_crc32c(0, page, CD_PAGE_SIZE));
		pages_crc = cd_crc32c(pages_crc, page, CD_PAGE_SIZE);
		page += CD_PAGE_SIZE;
	}
	cd_sb_encode(&d->sb, head + BK_HEADER);
	memcpy(head, BK_MAGIC, 8);
	cd_put_le32(head + 8, BK_VERSION);
	cd_put_le32(head + 12, BK_HEADER);
	cd_put_le64(head + BK_SEQ, d->sb.seq);
	memcpy(head + BK_UUID, d->sb.uuid, 16);
	cd_put_le64(head + BK_JSEQ, d->j_seq);
	cd_put_le64(head + BK_TAKEN, (uint64_t)time(NULL));
	cd_put_le32(head + BK_TOTAL, total);
	cd_put_le32(head + BK_STORED, stored);
	cd_put_le64(head + BK_LENGTH, img->len);
	cd_put_le32(head + BK_DIR_CRC, cd_crc32c(0, dir, dlen));
	cd_put_le32(head + BK_PAGES_CRC, pages_crc);
	/* Where the disk lives, to find this backup when both superblocks are
	 * gone; a path too long to record leaves the UUID as the only key. */
	if (realpath(d->path, img->disk) && strlen(img->disk) <= CDISK_MAX_URI)
		memcpy(head + BK_PATH, img->disk, strlen(img->disk));
	cd_put_le32(head + BK_HEADER - 4, cd_crc32c(0, head, BK_HEADER - 4));
	memcpy(img->uuid, d->sb.uuid, 16);
	img->gen = ++d->backup_gen;
	d->backup_time = (uint64_t)time(NULL);
	*out = img;
	return 0;
}

/* Without the disk's lock: write aside, sync, rename over, sync the
 * folder, so a reader sees the old backup or the new one, never half of
 * one; and never an older snapshot over a newer one. */
static int store(struct cdisk *d, struct cd_backup_image *img)
{
	char tmp[PATH_MAX + 32];
	int fd = -1, r;

	pthread_mutex_lock(&d->backup_lock);
	if (img->gen <= d->backup_stored_gen) {
		pthread_mutex_unlock(&d->backup_lock);
		return 0;
	}
	r = cd_mkdir_parents(img->path);
	snprintf(tmp, sizeof(tmp), "%s.tmp.%d", img->path, (int)getpid());
	fd = r < 0 ? -1 : open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (r == 0 && fd < 0)
		r = -errno;
	if (r == 0)
		r = cd_pwrite_full(fd, img->buf, img->len, 0);
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	if (r == 0 && rename(tmp, img->path) < 0)
		r = -errno;
	if (fd >= 0) {
		close(fd);
		if (r < 0)
			unlink(tmp);
	}
	if (r == 0) {
		char *slash = strrchr(img->path, '/');
		*slash = 0;
		fsync_dir(img->path);
		*slash = '/';
		d->backup_stored_gen = img->gen;
		if (!d->indexed && index_update(d, img, img->path) == 0)
			d->indexed = true;
	}
	pthread_mutex_unlock(&d->backup_lock);
	if (r < 0)
		cd_log(d->ctx, CDISK_LOG_WARNING, "'%s': cannot write the metadata backup "
		       "'%s': %s", d->path, img->path, strerror(-r));
	return r;
}

/* Under the disk's lock: take a backup of the state as it is now, to be
 * written by cd_backup_store_pending once the lock is let go.  One still
 * unwritten is replaced, never written here (that would be an fsync under
 * the lock): the newer snapshot holds everything the older one did, and
 * the journal covers the time until it is stored just as it would have
 * for the older one. */
int cd_backup_write(struct cdisk *d)
{
	struct cd_backup_image *img;
	int r;

	cd_backup_image_free(d->backup_pending);
	d->backup_pending = NULL;
	r = snapshot(d, &img);
	if (r < 0 && r != -ENOENT)
		cd_log(d->ctx, CDISK_LOG_WARNING, "'%s': cannot take a metadata backup: %s",
		       d->path, strerror(-r));
	d->backup_pending = img;
	return r;
}

/* The same, written before it returns (check's repair; open and close). */
int cd_backup_write_now(struct cdisk *d)
{
	struct cd_backup_image *img;
	int r = snapshot(d, &img);

	if (r == 0)
		r = store(d, img);
	cd_backup_image_free(img);
	return r;
}

/* Without the disk's lock: write the backup a checkpoint or flush took. */
void cd_backup_store_pending(struct cdisk *d)
{
	struct cd_backup_image *img;

	if (!__atomic_load_n(&d->backup_pending, __ATOMIC_ACQUIRE))
		return;
	pthread_mutex_lock(&d->lock);
	img = d->backup_pending;
	d->backup_pending = NULL;
	pthread_mutex_unlock(&d->lock);
	if (img)
		store(d, img);
	cd_backup_image_free(img);
}

/* ---- reading ---- */

void cd_backup_free(struct cd_backup *b)
{
	free(b->dir);
	free(b->pages);
	memset(b, 0, sizeof(*b));
}

static int bk_bad(struct cdisk_ctx *ctx, const char *path, const char *why)
{
	return cd_error(ctx, -EUCLEAN, "metadata backup '%s' is damaged: %s", path, why);
}

int cd_backup_read(struct cdisk_ctx *ctx, const char *path, struct cd_backup *b)
{
	uint8_t head[BK_HEADER], sbbuf[CD_SB_SIZE];
	const char *why;
	struct stat st;
	uint64_t dlen, len;
	int fd, r;

	memset(b, 0, sizeof(*b));
	snprintf(b->path, sizeof(b->path), "%s", path);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 && errno == ENOENT)
		return cd_error(ctx, -ENOENT, "no metadata backup at '%s'", path);
	if (fd < 0)
		return cd_error(ctx, -errno, "cannot open metadata backup '%s': %s", path,
				strerror(errno));
	r = fstat(fd, &st) < 0 ? -errno : 0;
	if (r == 0 && cd_pread_full(fd, head, sizeof(head), 0) < 0) {
		r = bk_bad(ctx, path, "file is truncated");
		goto out;
	}
	if (memcmp(head, BK_MAGIC, 8) != 0) {
		r = bk_bad(ctx, path, "not a cdisk metadata backup (bad magic)");
		goto out;
	}
	if (cd_get_le32(head + BK_HEADER - 4) != cd_crc32c(0, head, BK_HEADER - 4)) {
		r = bk_bad(ctx, path, "header checksum mismatch");
		goto out;
	}
	if (cd_get_le32(head + 8) != BK_VERSION) {
		r = cd_error(ctx, -EPROTONOSUPPORT, "metadata backup '%s' has version %u, "
			     "which this cdisk cannot read", path, cd_get_le32(head + 8));
		goto out;
	}
	b->seq = cd_get_le64(head + BK_SEQ);
	b->jseq = cd_get_le64(head + BK_JSEQ);
	b->taken = cd_get_le64(head + BK_TAKEN);
	b->total = cd_get_le32(head + BK_TOTAL);
	b->stored = cd_get_le32(head + BK_STORED);
	memcpy(b->uuid, head + BK_UUID, 16);
	memcpy(b->disk_path, head + BK_PATH, CDISK_MAX_URI);
	len = cd_get_le64(head + BK_LENGTH);
	if ((uint64_t)st.st_size < len) {
		r = bk_bad(ctx, path, "file is truncated");
		goto out;
	}
	if (cd_pread_full(fd, sbbuf, sizeof(sbbuf), BK_HEADER) < 0 ||
	    cd_sb_decode(sbbuf, &b->sb, &why) < 0) {
		r = bk_bad(ctx, path, "its superblock copy fails its checks");
		goto out;
	}
	dlen = cd_round_up((uint64_t)b->total * 8, 4096);
	if (b->total != b->sb.nbitmaps * cd_bitmap_pages(b->sb.size / b->sb.block_size) ||
	    b->stored > b->total || memcmp(b->uuid, b->sb.uuid, 16) != 0 ||
	    len != BK_HEADER + CD_SB_SIZE + dlen + (uint64_t)b->stored * CD_PAGE_SIZE) {
		r = bk_bad(ctx, path, "its sizes do not agree");
		goto out;
	}
	b->dir = malloc(dlen);
	b->pages = malloc((size_t)b->stored * CD_PAGE_SIZE + 1);
	if (!b->dir || !b->pages) {
		r = cd_error(ctx, -ENOMEM, "metadata backup '%s': out of memory", path);
		goto out;
	}
	if (cd_pread_full(fd, b->dir, dlen, BK_HEADER + CD_SB_SIZE) < 0 ||
	    cd_pread_full(fd, b->pages, (size_t)b->stored * CD_PAGE_SIZE,
			  BK_HEADER + CD_SB_SIZE + dlen) < 0) {
		r = bk_bad(ctx, path, "file is truncated");
		goto out;
	}
	if (cd_crc32c(0, b->dir, dlen) != cd_get_le32(head + BK_DIR_CRC) ||
	    cd_crc32c(0, b->pages, (size_t)b->stored * CD_PAGE_SIZE) !=
	    cd_get_le32(head + BK_PAGES_CRC)) {
		r = bk_bad(ctx, path, "bitmap checksum mismatch");
		goto out;
	}
	r = 0;
out:
	close(fd);
	if (r < 0)
		cd_backup_free(b);
	return r;
}

/* ---- which disk a file is ----
 * With both superblocks gone, a backup must prove from the file's own
 * contents that it is this disk's: paths and inodes are only hints, since
 * administrators copy and move disks.  The journal's records carry the
 * first 8 bytes of the UUID, checkpoint directories the whole UUID (or,
 * written by older versions, the same entries as the backup taken with
 * them), and the file's size follows from the disk's. */

enum identity { ID_UNKNOWN, ID_PROVEN, ID_FOREIGN };

static enum identity judge_identity(int fd, const struct cd_backup *b, char *why,
				    size_t len)
{
	uint32_t first = 2 * cd_bitmap_pages(b->sb.size / b->sb.block_size);
	uint64_t dlen = b->sb.cp_size - (uint64_t)first * CD_PAGE_SIZE;
	uint64_t at = cd_cp_dir_uuid_at(first, dlen), tags[16];
	uint64_t entries = (uint64_t)first * 8, want = cd_get_le64(b->uuid);
	unsigned ntags = 0, own = 0, other = 0;
	uint8_t *dir = malloc(dlen);
	struct cd_superblock upgraded = b->sb;
	struct stat st;

	/* An upgrade to more bitmaps cut short leaves the file that long. */
	upgraded.nbitmaps = 3;
	cd_layout(&upgraded);
	if (fstat(fd, &st) < 0 || ((uint64_t)st.st_size != cd_file_size(&b->sb) &&
	    (b->sb.nbitmaps > 2 || (uint64_t)st.st_size != cd_file_size(&upgraded)))) {
		snprintf(why, len, "the file holds %llu bytes, a disk of %llu bytes "
			 "(block %u) would hold %llu", (unsigned long long)st.st_size,
			 (unsigned long long)b->sb.size, b->sb.block_size,
			 (unsigned long long)cd_file_size(&b->sb));
		free(dir);
		return ID_FOREIGN;
	}
	cd_journal_tags(fd, &b->sb, tags, CD_ARRAY_SIZE(tags), &ntags);
	for (unsigned i = 0; i < ntags; i++)
		tags[i] == want ? own++ : other++;
	for (unsigned area = 0; dir && area < 2; area++) {
		if (cd_pread_full(fd, dir, dlen, b->sb.cp_offset[area]) < 0)
			continue;
		if (at && !cd_is_zero(dir + at, 16))
			memcmp(dir + at, b->uuid, 16) == 0 ? own++ : other++;
		else if (!cd_is_zero(dir, entries) && memcmp(dir, b->dir, entries) == 0)
			own++;
	}
	free(dir);
	if (other) {
		snprintf(why, len, "its journal or checkpoints were written by another "
			 "disk");
		return ID_FOREIGN;
	}
	if (own)
		return ID_PROVEN;
	snprintf(why, len, "nothing left in the file (journal, checkpoints) names "
		 "the disk it belongs to");
	return ID_UNKNOWN;
}

struct candidate {
	char path[PATH_MAX];
	uint64_t taken;
	enum identity id;
};

/* Read and judge one backup; keep it when it is proven and newer, or
 * (for the message) the newest that recorded this disk's path. */
static void consider(struct cdisk *d, const char *path, const char *real,
		     struct candidate *best, struct candidate *hinted)
{
	struct cd_backup b;
	char why[256], saved[CD_ERROR_MAX];
	enum identity id;
	int r;

	/* An unreadable candidate is just not the one: keep the caller's
	 * message. */
	memcpy(saved, cd_errbuf(), sizeof(saved));
	r = cd_backup_read(d->ctx, path, &b);
	memcpy(cd_errbuf(), saved, sizeof(saved));
	if (r < 0)
		return;
	id = judge_identity(d->fd, &b, why, sizeof(why));
	if (id == ID_PROVEN && (!best->path[0] || b.taken > best->taken)) {
		snprintf(best->path, sizeof(best->path), "%s", path);
		best->taken = b.taken;
	}
	if (id != ID_PROVEN && real && strncmp(b.disk_path, real, CDISK_MAX_URI) == 0 &&
	    (!hinted->path[0] || b.taken > hinted->taken)) {
		snprintf(hinted->path, sizeof(hinted->path), "%s", path);
		hinted->taken = b.taken;
		hinted->id = id;
	}
	cd_backup_free(&b);
}

/* Every backup the index names and every *.meta in the backup folder. */
static void search_backups(struct cdisk *d, const char *real, struct candidate *best,
			   struct candidate *hinted)
{
	const char *dirpath = d->ctx->cfg.backup_dir;
	char idx[PATH_MAX], path[PATH_MAX], *line = NULL;
	size_t cap = 0;
	struct dirent *e;
	FILE *f;
	DIR *dir;

	snprintf(idx, sizeof(idx), "%s/" INDEX_NAME, dirpath);
	f = fopen(idx, "re");
	while (f && getline(&line, &cap, f) > 0) {
		char *backup = strchr(line, '\t'), *end;

		if (!backup || !(end = strchr(backup + 1, '\t')))
			continue;
		*end = 0;
		consider(d, backup + 1, real, best, hinted);
	}
	if (f)
		fclose(f);
	free(line);
	dir = opendir(dirpath);
	while (dir && (e = readdir(dir))) {
		size_t n = strlen(e->d_name);

		if (n < 6 || strcmp(e->d_name + n - 5, ".meta") != 0)
			continue;
		snprintf(path, sizeof(path), "%s/%s", dirpath, e->d_name);
		consider(d, path, real, best, hinted);
	}
	if (dir)
		closedir(dir);
}

/* The backup of a disk whose superblocks are gone: the newest one the
 * file proves its own.  Otherwise say where we looked and what to do. */
static int find_lost_disks_backup(struct cdisk *d, bool force, char *out, size_t len)
{
	const char *dirpath = d->ctx->cfg.backup_dir;
	struct candidate best = { 0 }, hinted = { 0 };
	char real[PATH_MAX];
	bool have_real = realpath(d->path, real) != NULL;

	if (!dirpath[0])
		return cd_error(d->ctx, -ENOENT, "no metadata backup of '%s' was found: no "
				"backup folder is configured (backup_dir in cdisk.conf); "
				"name a backup with --from", d->path);
	search_backups(d, have_real ? real : NULL, &best, &hinted);
	if (best.path[0] || (force && hinted.path[0])) {
		snprintf(out, len, "%s", best.path[0] ? best.path : hinted.path);
		return 0;
	}
	if (hinted.path[0])
		return cd_error(d->ctx, -EUCLEAN, "metadata backup '%s' recorded the path "
				"of '%s', but %s: if it is its own, restore it with "
				"cdisk-restore --metadata --force", hinted.path, d->path,
				hinted.id == ID_FOREIGN ? "the file shows it belongs to "
				"another disk" : "nothing left in the file proves it");
	return cd_error(d->ctx, -ENOENT, "no metadata backup of '%s' was found in '%s' "
			"(its index and *.meta files): name one with --from", d->path,
			dirpath);
}

/* ---- restoring ---- */

static int load_backup_bitmaps(struct cdisk *d, const struct cd_backup *b)
{
	const uint8_t *page = b->pages;

	for (uint32_t i = 0; i < b->total; i++) {
		uint32_t bits = cd_get_le32(b->dir + (uint64_t)i * 8), p;
		struct cd_bitmap *bm;
		uint8_t *copy;

		page_at(d, i, &bm, &p);
		bm->page_changed[p] = 3;
		if (!bits)
			continue;
		if (bits > CD_PAGE_BITS || page + CD_PAGE_SIZE > b->pages +
		    (size_t)b->stored * CD_PAGE_SIZE ||
		    cd_crc32c(0, page, CD_PAGE_SIZE) != cd_get_le32(b->dir + (uint64_t)i * 8 + 4))
			return cd_error(d->ctx, -EUCLEAN, "metadata backup '%s' is damaged: "
					"bitmap page %u fails its checksum", b->path, i);
		copy = malloc(CD_PAGE_SIZE);
		if (!copy)
			return cd_error(d->ctx, -ENOMEM, "'%s': out of memory", d->path);
		memcpy(copy, page, CD_PAGE_SIZE);
		cd_bitmap_adopt_page(bm, p, copy, bits);
		page += CD_PAGE_SIZE;
	}
	return 0;
}

/* Blocks the data area holds that the state does not claim were written
 * after what the backup and journal recorded: present and dirty.  With
 * blocks smaller than the filesystem's, an allocated neighbour reads as
 * zeros, so only blocks with data count there. */
struct reconcile_walk {
	uint8_t *buf;
	bool small;
	uint64_t count;
};

static int reconcile_run(struct cdisk *d, uint64_t first, uint64_t last, void *opaque)
{
	struct reconcile_walk *w = opaque;
	int r = 0;

	for (uint64_t b = cd_bitmap_find(&d->present, first, false); b < last && r == 0;
	     b = cd_bitmap_find(&d->present, b + 1, false)) {
		if (w->small) {
			r = cd_pread_full(d->fd, w->buf, d->block_size,
					  d->sb.data_offset + (b << d->block_shift));
			if (r < 0 || cd_is_zero(w->buf, d->block_size))
				continue;
		}
		r = cd_bitmap_assign(&d->present, b, 1, true);
		if (r == 0)
			r = cd_bitmap_assign(&d->dirty, b, 1, true);
		w->count++;
	}
	return r;
}

/* Blocks the data area holds that the state does not claim were written
 * after what the backup and journal recorded: present and dirty.  With
 * blocks smaller than the filesystem's, an allocated neighbour reads as
 * zeros, so only blocks with data count there. */
static int reconcile_data_area(struct cdisk *d, uint64_t *count)
{
	struct reconcile_walk w = { .buf = malloc(d->block_size) };
	struct stat st;
	int r;

	if (!w.buf)
		return -ENOMEM;
	w.small = fstat(d->fd, &st) == 0 && (uint64_t)st.st_blksize > d->block_size;
	r = cd_for_each_allocated(d, reconcile_run, &w);
	*count += w.count;
	free(w.buf);
	return r;
}

/* Bitmaps 2 and up name work still to do (blocks to copy to a mirror):
 * when the restore cannot prove what changed since the backup, all of it
 * is to do again. */
static int mark_all_jobs_undone(struct cdisk *d)
{
	for (unsigned id = 2; id < d->sb.nbitmaps; id++) {
		int r = cd_bitmap_assign(cd_disk_bitmap(d, id), 0, d->nblocks, true);
		if (r < 0)
			return r;
	}
	return 0;
}

static int mark_all_present_dirty(struct cdisk *d, uint64_t *count)
{
	for (uint64_t b = cd_bitmap_find(&d->present, 0, true); b < d->nblocks;) {
		uint64_t stop = cd_bitmap_find(&d->present, b, false);
		uint64_t before = d->dirty.count;
		int r = cd_bitmap_assign(&d->dirty, b, stop - b, true);
		if (r < 0)
			return r;
		*count += d->dirty.count - before;
		b = cd_bitmap_find(&d->present, stop, true);
	}
	return 0;
}

/* The backup to restore from, read, and whether the disk is proven to be
 * its own.  A backup proven another disk's is refused whatever --force
 * says; one that nothing proves only with it. */
static int pick_backup(struct cdisk *d, const char *from, bool sb_known, bool force,
		       struct cd_backup *b, bool *unconfirmed)
{
	char path[PATH_MAX], why[256];
	int r;

	*unconfirmed = false;
	if (from)
		snprintf(path, sizeof(path), "%s", from);
	else if (sb_known) {
		if (cd_backup_path(&d->ctx->cfg, &d->sb, path, sizeof(path)) < 0)
			return cd_error(d->ctx, -ENOENT, "no metadata backup of '%s': none "
					"is configured (backup_dir in cdisk.conf)", d->path);
	} else {
		r = find_lost_disks_backup(d, force, path, sizeof(path));
		if (r < 0)
			return r;
	}
	r = cd_backup_read(d->ctx, path, b);
	if (r < 0)
		return r;
	if (sb_known) {
		/* Restoring over a sound but unconfirmed disk proves nothing. */
		*unconfirmed = d->sb.ro_compat & CD_FEATURE_RO_COMPAT_UNCONFIRMED;
		if (memcmp(b->uuid, d->sb.uuid, 16) != 0) {
			cd_backup_free(b);
			return cd_error(d->ctx, -EUCLEAN, "metadata backup '%s' belongs to "
					"another disk (UUID differs)", path);
		}
		if (b->sb.nbitmaps != d->sb.nbitmaps) {
			unsigned held = b->sb.nbitmaps;

			cd_backup_free(b);
			return cd_error(d->ctx, -EUCLEAN, "metadata backup '%s' holds %u "
					"bitmaps and '%s' has %u: it was taken before the "
					"disk's layout changed", path, held, d->path,
					d->sb.nbitmaps);
		}
		return 0;
	}
	switch (judge_identity(d->fd, b, why, sizeof(why))) {
	case ID_PROVEN:
		return 0;
	case ID_FOREIGN:
		cd_backup_free(b);
		return cd_error(d->ctx, -EUCLEAN, "metadata backup '%s' belongs to another "
				"disk than '%s': %s", path, d->path, why);
	case ID_UNKNOWN:
		break;
	}
	if (!force) {
		cd_backup_free(b);
		return cd_error(d->ctx, -EUCLEAN, "metadata backup '%s' cannot be proven to "
				"be the one of '%s': %s; if it is, use --force (the disk "
				"is then marked unconfirmed until 'cdisk-restore --confirm')",
				path, d->path, why);
	}
	*unconfirmed = true;
	return 0;
}

int cd_backup_restore(struct cdisk *d, const char *from, bool sb_known, bool force)
{
	struct cd_restore_result *res = &d->restore;
	struct cd_superblock disk_sb = d->sb;
	struct cd_backup b;
	struct stat st;
	char path[PATH_MAX];
	bool unconfirmed;
	uint64_t chain_end = 0;
	int r;

	r = pick_backup(d, from, sb_known, force, &b, &unconfirmed);
	if (r < 0)
		return r;
	snprintf(path, sizeof(path), "%s", b.path);
	if (fstat(d->fd, &st) < 0 || (uint64_t)st.st_size < b.sb.data_offset) {
		cd_backup_free(&b);
		return cd_error(d->ctx, -EUCLEAN, "'%s' is truncated: it cannot be "
				"rebuilt from its metadata backup", d->path);
	}
	cd_disk_reset_state(d);
	d->sb = b.sb;
	if (unconfirmed)
		d->sb.ro_compat |= CD_FEATURE_RO_COMPAT_UNCONFIRMED;
	res->unconfirmed = unconfirmed;
	r = cd_disk_init_state(d);
	if (r == 0)
		r = load_backup_bitmaps(d, &b);
	if (r == 0)
		r = cd_journal_replay_after(d, b.jseq, &res->exact, &chain_end);
	/* The records after the backup must reach the disk's last checkpoint:
	 * if the ring no longer holds them, the backup is older than the
	 * journal and restoring it could lose flushed writes.  Nothing has
	 * been written yet, so refusing leaves both files as they were. */
	if (r == 0 && sb_known && chain_end < disk_sb.cp_seq && !force) {
		cd_backup_free(&b);
		return cd_error(d->ctx, -EUCLEAN, "metadata backup '%s' is older than the "
				"journal of '%s' (the backup and the journal reach record "
				"%llu, the disk's last checkpoint is at %llu); restoring it "
				"could lose flushed writes: use --force to restore it anyway",
				path, d->path, (unsigned long long)chain_end,
				(unsigned long long)disk_sb.cp_seq);
	}
	/* Exact only with proof that nothing after the backup is missing: the
	 * superblock survived, the records form one chain, and either some
	 * followed the backup or the disk was closed cleanly right at it.
	 * Otherwise every present block is resent: never a silent loss. */
	res->exact = res->exact && sb_known && !d->journal_damaged &&
		     chain_end >= disk_sb.cp_seq &&
		     (d->j_replayed || (!(disk_sb.flags & CD_SB_FLAG_OPEN) &&
					b.jseq == disk_sb.cp_seq));
	if (r == 0)
		r = cd_al_recover(d);
	if (r == 0 && !res->exact)
		r = mark_all_present_dirty(d, &res->blocks_marked_dirty);
	/* A surviving superblock copy may be the older one: for present and
	 * dirty the data area's own allocation makes up for that, for the
	 * jobs' bitmaps nothing does. */
	if (r == 0 && (!res->exact || d->sb_bad_at_open[0] || d->sb_bad_at_open[1]))
		r = mark_all_jobs_undone(d);
	if (r == 0)
		r = reconcile_data_area(d, &res->blocks_reconciled);
	if (r < 0) {
		cd_backup_free(&b);
		return cd_errbuf()[0] ? r : cd_error(d->ctx, r, "cannot rebuild '%s': %s",
							d->path, strerror(-r));
	}
	res->restored = true;
	res->records_replayed = d->j_replayed;
	res->backup_age = (uint64_t)time(NULL) > b.taken ? (uint64_t)time(NULL) - b.taken : 0;
	snprintf(res->backup, sizeof(res->backup), "%s", path);
	cd_backup_free(&b);
	return 0;
}

/* ---- status, for cdisk-info --check ---- */

int cd_backup_status(struct cdisk *d, struct cd_backup_status *st)
{
	struct cd_backup b;
	char saved[CD_ERROR_MAX];
	int r;

	memset(st, 0, sizeof(*st));
	if (cd_backup_path(&d->ctx->cfg, &d->sb, st->path, sizeof(st->path)) < 0)
		return -ENOENT;
	st->configured = true;
	memcpy(saved, cd_errbuf(), sizeof(saved));
	r = cd_backup_read(d->ctx, st->path, &b);
	if (r < 0) {
		st->error = r;
		snprintf(st->why, sizeof(st->why), "%s", cd_errbuf());
		memcpy(cd_errbuf(), saved, sizeof(saved));
		return 0;
	}
	st->valid = true;
	st->age = (uint64_t)time(NULL) > b.taken ? (uint64_t)time(NULL) - b.taken : 0;
	st->jseq = b.jseq;
	st->same_disk = memcmp(b.uuid, d->sb.uuid, 16) == 0;
	st->matches = st->same_disk && b.jseq == d->j_seq;
	for (uint32_t i = 0, k = 0; st->matches && i < b.total; i++) {
		uint32_t bits = cd_get_le32(b.dir + (uint64_t)i * 8), p;
		struct cd_bitmap *bm;

		page_at(d, i, &bm, &p);
		if (bits != bm->page_count[p] ||
		    (bits && memcmp(b.pages + (size_t)k++ * CD_PAGE_SIZE, bm->pages[p],
				    CD_PAGE_SIZE) != 0))
			st->matches = false;
	}
	cd_backup_free(&b);
	return 0;
}

bool cd_backup_exists(struct cdisk *d)
{
	struct candidate best = { 0 }, hinted = { 0 };
	char path[PATH_MAX];

	if (d->sb_loaded)
		return cd_backup_path(&d->ctx->cfg, &d->sb, path, sizeof(path)) == 0 &&
		       access(path, R_OK) == 0;
	if (!d->ctx->cfg.backup_dir[0] || !realpath(d->path, path))
		return false;
	search_backups(d, path, &best, &hinted);
	return best.path[0] || hinted.path[0];
}

/* ---- public: cdisk-restore --metadata ---- */

int cdisk_restore_metadata(struct cdisk_ctx *ctx, const char *path, const char *from,
			   bool force, struct cdisk_restore_report *rep)
{
	struct cdisk *d;
	unsigned flags = CD_OPEN_RESTORE | CDISK_OPEN_NO_BASE |
			 (force ? CD_OPEN_FORCE_RESTORE : 0);
	int r;

	memset(rep, 0, sizeof(*rep));
	r = cd_open(ctx, path, flags, from, &d);
	if (r < 0)
		return r;
	rep->restored = d->restore.restored;
	rep->exact = d->restore.exact;
	snprintf(rep->backup, sizeof(rep->backup), "%s", d->restore.backup);
	rep->backup_age = d->restore.backup_age;
	rep->records_replayed = d->restore.records_replayed;
	rep->blocks_reconciled = d->restore.blocks_reconciled;
	rep->blocks_marked_dirty = d->restore.blocks_marked_dirty;
	rep->unconfirmed = d->restore.unconfirmed;
	return cdisk_close(d);
}

int cd_identity_confirmed(struct cdisk *d, const char *what)
{
	if (!(d->sb.ro_compat & CD_FEATURE_RO_COMPAT_UNCONFIRMED))
		return 0;
	return cd_error(d->ctx, -EUCLEAN, "will not %s '%s': its metadata was restored "
			"from a backup nothing proved its own, so its base '%s' may be "
			"another disk's; check it, then run 'cdisk-restore --confirm %s'",
			what, d->path, d->sb.base, d->path);
}

int cdisk_restore_confirm(struct cdisk_ctx *ctx, const char *path, bool *changed)
{
	struct cdisk *d;
	int r;

	*changed = false;
	r = cdisk_open(ctx, path, CDISK_OPEN_NO_BASE, &d);
	if (r < 0)
		return r;
	if (d->sb.ro_compat & CD_FEATURE_RO_COMPAT_UNCONFIRMED) {
		pthread_mutex_lock(&d->lock);
		d->sb.ro_compat &= ~CD_FEATURE_RO_COMPAT_UNCONFIRMED;
		/* A checkpoint writes both the superblock and, now allowed, the
		 * disk's backup. */
		r = cd_checkpoint(d);
		pthread_mutex_unlock(&d->lock);
		*changed = r == 0;
	}
	if (r < 0) {
		cdisk_close(d);
		return r;
	}
	return cdisk_close(d);
}

/* A writer disk's files back to its cloud folder (cdisk-sync --files).
 * The state of the last sync is the cache's folders/ID.state: one line a
 * key (under the prefix; a folder's marker ends in '/'), with its size,
 * mtime, inode, ctime (ns), ETag and content SHA-256.  A file whose
 * inode, ctime, size and mtime are all as recorded is unchanged; any
 * other is read and hashed, and uploaded only when its content differs.
 * What a sync has done is appended to folders/ID.journal as each upload
 * or delete completes, so a cut costs nothing done; the whole state is
 * written anew (temp file, fsync, rename) at the end, and the journal
 * goes. */
#include <dirent.h>
#include <ext2fs/ext2fs.h>
#include <fcntl.h>
#include <gnutls/crypto.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "extfs.h"
#include "folder.h"

#define MULTIPART_FROM (64ull << 20)
#define PART_SIZE (16ull << 20)
#define KEY_MAX 8192

struct rec {
	char *rel;          /* the key under the prefix */
	char kind;          /* 'F' a file, 'D' a folder's marker, 'X' deleted */
	uint64_t size;
	int64_t mtime;      /* seconds */
	uint32_t mtime_ns;
	uint64_t ino;       /* 0: unknown, hash the file */
	int64_t ctime;      /* nanoseconds */
	char etag[80];
	char sha[65];       /* "-": unknown */
	size_t seq;         /* the order it was read in: the last one wins */
	bool seen;
};

struct recs {
	struct rec *v;
	size_t n, cap;
};

struct push {
	struct cdisk_ctx *ctx;
	const struct cdisk_files_opts *o;
	struct cdisk_files_result *res;
	char disk[PATH_MAX];
	char folder_id[65];
	char uuid[33];
	char state[PATH_MAX], journal[PATH_MAX], uploads[PATH_MAX];
	struct recs old;    /* sorted by rel */
	struct recs now;    /* what the filesystem holds, then what the cloud will */
	struct cdisk *d;
	ext2_filsys fs;
	struct cd_s3_folder *f;
	void *session;
	int journal_fd;
	char path[KEY_MAX];
	int err;
};

/* ---- records ---- */

static int add_rec(struct push *p, struct recs *rs, const struct rec *r)
{
	if (rs->n == rs->cap) {
		size_t cap = rs->cap * 2 + 256;
		struct rec *v = realloc(rs->v, cap * sizeof(*v));
		if (!v)
			return cd_error(p->ctx, -ENOMEM, "out of memory");
		rs->v = v;
		rs->cap = cap;
	}
	rs->v[rs->n] = *r;
	rs->v[rs->n].rel = strdup(r->rel);
	if (!rs->v[rs->n].rel)
		return cd_error(p->ctx, -ENOMEM, "out of memory");
	rs->v[rs->n].seq = rs->n;
	rs->n++;
	return 0;
}

static void free_recs(struct recs *rs)
{
	for (size_t i = 0; i < rs->n; i++)
		free(rs->v[i].rel);
	free(rs->v);
	memset(rs, 0, sizeof(*rs));
}

static int by_rel_seq(const void *a, const void *b)
{
	const struct rec *x = a, *y = b;
	int c = strcmp(x->rel, y->rel);

	return c ? c : x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Sorted, one per key (the last read), deleted ones gone. */
static void settle(struct recs *rs)
{
	size_t w = 0;

	qsort(rs->v, rs->n, sizeof(*rs->v), by_rel_seq);
	for (size_t i = 0; i < rs->n; i++) {
		if (i + 1 < rs->n && !strcmp(rs->v[i].rel, rs->v[i + 1].rel)) {
			free(rs->v[i].rel);
			continue;
		}
		if (rs->v[i].kind == 'X') {
			free(rs->v[i].rel);
			continue;
		}
		rs->v[w++] = rs->v[i];
	}
	rs->n = w;
}

static struct rec *find(struct recs *rs, const char *rel)
{
	for (size_t lo = 0, hi = rs->n; lo < hi;) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(rel, rs->v[mid].rel);
		if (!c)
			return &rs->v[mid];
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

static void write_rec(FILE *out, const struct rec *r)
{
	fprintf(out, "%c %llu %lld.%09u %llu %lld %s %s ", r->kind,
		(unsigned long long)r->size, (long long)r->mtime, r->mtime_ns,
		(unsigned long long)r->ino, (long long)r->ctime, r->etag[0] ? r->etag : "-",
		r->sha[0] ? r->sha : "-");
	cd_folder_escape(r->rel, out);
	fputc('\n', out);
}

static bool parse_rec(char *line, struct rec *r)
{
	unsigned long long size, ino;
	long long mtime, ctime;
	unsigned ns = 0;
	char when[48];
	int at = 0;

	line[strcspn(line, "\n")] = '\0';
	memset(r, 0, sizeof(*r));
	if (sscanf(line, "%c %llu %47s %llu %lld %79s %64s %n", &r->kind, &size, when, &ino,
		   &ctime, r->etag, r->sha, &at) != 7 || !at || !strchr("FDX", r->kind))
		return false;
	if (sscanf(when, "%lld.%u", &mtime, &ns) < 1)
		return false;
	r->size = size;
	r->mtime = mtime;
	r->mtime_ns = ns;
	r->ino = ino;
	r->ctime = ctime;
	if (!strcmp(r->etag, "-"))
		r->etag[0] = '\0';
	r->rel = line + at;
	cd_folder_unescape(r->rel);
	return r->rel[0] != '\0';
}

/* ---- the recorded state, and the journal over it ---- */

static int read_header(struct push *p, FILE *f)
{
	char line[CDISK_MAX_URI + 64], disk[PATH_MAX + 8] = "";

	if (!fgets(line, sizeof(line), f) || strcmp(line, "cdisk-folder-state 1\n"))
		return -EBADMSG;
	if (!fgets(line, sizeof(line), f) || strncmp(line, "uri ", 4))
		return -EBADMSG;
	line[strcspn(line, "\n")] = '\0';
	if (strlen(line + 4) >= sizeof(p->res->uri))
		return -EBADMSG;
	memcpy(p->res->uri, line + 4, strlen(line + 4) + 1);
	if (!fgets(disk, sizeof(disk), f) || strncmp(disk, "disk ", 5))
		return -EBADMSG;
	if (!fgets(line, sizeof(line), f) || sscanf(line, "uuid %32s", p->uuid) != 1)
		return -EBADMSG;
	return 0;
}

static int read_recs(struct push *p, FILE *f, const char *name)
{
	char *line = NULL;
	size_t cap = 0;
	struct rec r;
	int err = 0;

	while (!err && getline(&line, &cap, f) > 0) {
		if (!parse_rec(line, &r)) {
			/* a journal's last line may be cut short by a crash */
			if (name == p->journal)
				break;
			err = cd_error(p->ctx, -EUCLEAN, "'%s' is damaged", name);
			break;
		}
		err = add_rec(p, &p->old, &r);
	}
	free(line);
	return err;
}

static int load_state(struct push *p)
{
	FILE *f = fopen(p->state, "r");
	int r;

	if (!f)
		return cd_error(p->ctx, errno == ENOENT ? -ENOENT : -errno, "cannot read "
				"'%s': %s", p->state, strerror(errno));
	r = read_header(p, f);
	if (r < 0)
		r = cd_error(p->ctx, -EUCLEAN, "'%s' is damaged", p->state);
	if (r == 0)
		r = read_recs(p, f, p->state);
	fclose(f);
	if (r == 0 && (f = fopen(p->journal, "r"))) {
		r = read_recs(p, f, p->journal);
		fclose(f);
	}
	if (r == 0)
		settle(&p->old);
	return r;
}

static int append_synced(struct push *p, int fd, const char *text, const char *name)
{
	size_t n = strlen(text);

	if (write(fd, text, n) != (ssize_t)n || fsync(fd) < 0)
		return cd_error(p->ctx, -errno ? -errno : -EIO, "cannot write '%s': %s", name,
				strerror(errno ? errno : EIO));
	return 0;
}

static int journal(struct push *p, const struct rec *r)
{
	char *text = NULL;
	size_t len = 0;
	FILE *m = open_memstream(&text, &len);
	int err;

	if (!m)
		return cd_error(p->ctx, -ENOMEM, "out of memory");
	write_rec(m, r);
	fclose(m);
	err = append_synced(p, p->journal_fd, text, p->journal);
	free(text);
	return err;
}

/* What pull will need to skip: the ETag of each upload of this host. */
static int log_upload(struct push *p, const char *key, const char *etag)
{
	char *text = NULL;
	size_t len = 0;
	FILE *m = open_memstream(&text, &len);
	int fd, err;

	if (!m)
		return cd_error(p->ctx, -ENOMEM, "out of memory");
	fprintf(m, "%s ", etag);
	cd_folder_escape(key, m);
	fputc('\n', m);
	fclose(m);
	fd = open(p->uploads, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	err = fd < 0 ? cd_error(p->ctx, -errno, "cannot write '%s': %s", p->uploads,
				strerror(errno))
		     : append_synced(p, fd, text, p->uploads);
	if (fd >= 0)
		close(fd);
	free(text);
	return err;
}

static int save_state(struct push *p)
{
	char tmp[PATH_MAX + 8];
	FILE *f;
	int err = 0;

	snprintf(tmp, sizeof(tmp), "%s.tmp", p->state);
	f = fopen(tmp, "w");
	if (!f)
		return cd_error(p->ctx, -errno, "cannot write '%s': %s", tmp, strerror(errno));
	fprintf(f, "cdisk-folder-state 1\nuri %s\ndisk %s\nuuid %s\n", p->res->uri, p->disk,
		p->uuid);
	for (size_t i = 0; i < p->now.n; i++)
		if (p->now.v[i].kind != 'X')
			write_rec(f, &p->now.v[i]);
	if (fflush(f) != 0 || fsync(fileno(f)) < 0)
		err = cd_error(p->ctx, -errno, "cannot write '%s': %s", tmp, strerror(errno));
	if (fclose(f) != 0 && err == 0)
		err = cd_error(p->ctx, -EIO, "cannot write '%s'", tmp);
	if (err == 0 && rename(tmp, p->state) < 0)
		err = cd_error(p->ctx, -errno, "cannot write '%s': %s", p->state,
			       strerror(errno));
	/* After the rename: replayed over the new state, it changes nothing. */
	if (err == 0 && unlink(p->journal) < 0 && errno != ENOENT)
		err = cd_error(p->ctx, -errno, "cannot remove '%s': %s", p->journal,
			       strerror(errno));
	if (err)
		unlink(tmp);
	return err;
}

/* ---- which folder: the writer files of the cache name their disks ---- */

static int find_folder(struct push *p)
{
	char dir[PATH_MAX], file[PATH_MAX + 300], line[PATH_MAX + 2];
	struct dirent *de;
	DIR *d;
	FILE *f;

	snprintf(dir, sizeof(dir), "%s/folders", p->ctx->cfg.cache_dir);
	d = opendir(dir);
	while (d && (de = readdir(d))) {
		size_t n = strlen(de->d_name);
		if (n != 64 + 7 || strcmp(de->d_name + 64, ".writer"))
			continue;
		snprintf(file, sizeof(file), "%s/%s", dir, de->d_name);
		f = fopen(file, "r");
		if (!f)
			continue;
		if (fgets(line, sizeof(line), f) && (line[strcspn(line, "\n")] = '\0',
						      !strcmp(line, p->disk))) {
			memcpy(p->folder_id, de->d_name, 64);
			p->folder_id[64] = '\0';
		}
		fclose(f);
		if (p->folder_id[0])
			break;
	}
	if (d)
		closedir(d);
	if (!p->folder_id[0])
		return cd_error(p->ctx, -ENOENT, "'%s' is not the writer disk of a cloud "
				"folder in the cache '%s' (cdisk-create --from-folder --writer "
				"makes one)", p->disk, p->ctx->cfg.cache_dir);
	return 0;
}

/* ---- the filesystem ---- */

static int open_disk(struct push *p, const char *path)
{
	struct cdisk_info info;
	uint64_t offset;
	int r = cdisk_open(p->ctx, path, CDISK_OPEN_RDONLY, &p->d);

	if (r == -EBUSY) {
		char saved[CD_ERROR_MAX];
		snprintf(saved, sizeof(saved), "%s", cd_errbuf());
		if (cdisk_info_from_owner(p->ctx, path, &info) == 0)
			return cd_error(p->ctx, -EAGAIN, "'%s' is served (cdisk-serve): the "
					"guest has the filesystem mounted; try later, once its "
					"VM has shut down", path);
		snprintf(cd_errbuf(), CD_ERROR_MAX, "%s", saved);
	}
	if (r < 0)
		return r;
	r = cd_extfs_partition(p->ctx, p->d, &offset);
	if (r == 0)
		r = cd_extfs_open(p->ctx, p->d, offset, false, &p->fs);
	return r;
}

static int check_fs(struct push *p)
{
	struct ext2_super_block *sb = p->fs->super;
	char uuid[33];

	for (int i = 0; i < 16; i++)
		sprintf(uuid + 2 * i, "%02x", sb->s_uuid[i]);
	if (strcmp(uuid, p->uuid))
		return cd_error(p->ctx, -EUCLEAN, "'%s': the filesystem is not the one made "
				"from '%s' (the guest reformatted it: UUID %s, not %s); "
				"nothing uploaded or deleted", p->disk, p->res->uri, uuid,
				p->uuid);
	if (ext2fs_has_feature_journal_needs_recovery(sb) ||
	    !(sb->s_state & EXT2_VALID_FS) || (sb->s_state & EXT2_ERROR_FS))
		return cd_error(p->ctx, -EUCLEAN, "'%s': the filesystem needs recovery (it "
				"was not cleanly unmounted); serve the disk to its VM and shut "
				"the VM down cleanly, or run e2fsck on it, then sync again",
				p->disk);
	return 0;
}

static void inode_times(const struct ext2_inode_large *in, struct rec *r)
{
	bool extra = in->i_extra_isize >= 24;   /* i_ctime_extra .. i_mtime_extra */

	r->mtime = (int64_t)(int32_t)in->i_mtime;
	r->mtime_ns = extra ? in->i_mtime_extra >> 2 : 0;
	r->ctime = (int64_t)(int32_t)in->i_ctime * 1000000000 +
		   (extra ? in->i_ctime_extra >> 2 : 0);
	if (extra) {   /* the epoch bits extend the seconds past 2038 */
		r->mtime += (int64_t)(in->i_mtime_extra & 3) << 32;
		r->ctime += ((int64_t)(in->i_ctime_extra & 3) << 32) * 1000000000;
	}
}

static void skip(struct push *p, const char *rel, const char *why)
{
	cd_log(p->ctx, CDISK_LOG_WARNING, "'%s': skipped '%s': %s", p->disk, rel, why);
	p->res->skipped++;
	if (p->o->item)
		p->o->item(p->o->opaque, CDISK_FILES_SKIPPED, rel, 0, NULL, why);
}

static int walk(struct push *p, ext2_ino_t dir, bool *empty);

static int on_dirent(ext2_ino_t dir, int entry, struct ext2_dir_entry *de, int offset,
		     int blocksize, char *buf, void *priv)
{
	struct push *p = priv;
	size_t at = strlen(p->path), n = (size_t)ext2fs_dirent_name_len(de);
	struct ext2_inode_large in;
	struct rec r = { 0 };
	errcode_t e;

	(void)dir;
	(void)offset;
	(void)blocksize;
	(void)buf;
	if (entry == DIRENT_DOT_FILE || entry == DIRENT_DOT_DOT_FILE)
		return 0;
	if ((n == 1 && de->name[0] == '.') || (n == 2 && !strncmp(de->name, "..", 2)))
		return 0;
	if (at + n + 2 >= sizeof(p->path)) {
		p->err = cd_error(p->ctx, -ENAMETOOLONG, "'%s': a path is too long for a key",
				  p->disk);
		return DIRENT_ABORT;
	}
	memcpy(p->path + at, de->name, n);
	p->path[at + n] = '\0';
	if (memchr(de->name, '/', n)) {   /* debugfs can make one */
		skip(p, p->path, "a name with a '/' cannot be a key");
		p->path[at] = '\0';
		return 0;
	}
	e = ext2fs_read_inode_full(p->fs, de->inode, (struct ext2_inode *)&in, sizeof(in));
	if (e) {
		p->err = cd_error(p->ctx, -EIO, "'%s': cannot read the inode of '%s': %s",
				  p->disk, p->path, error_message(e));
		return DIRENT_ABORT;
	}
	r.rel = p->path;
	r.ino = de->inode;
	inode_times(&in, &r);
	if (LINUX_S_ISDIR(in.i_mode)) {
		bool empty = true;
		if (at == 0 && !strcmp(p->path, "lost+found"))
			goto done;   /* mke2fs's, not the folder's */
		p->path[at + n] = '/';
		p->path[at + n + 1] = '\0';
		p->err = walk(p, de->inode, &empty);
		if (p->err)
			return DIRENT_ABORT;
		p->path[at + n + 1] = '\0';
		/* a marker for an empty folder, and one the folder had */
		if (empty || find(&p->old, p->path)) {
			r.kind = 'D';
			r.size = 0;
			p->err = add_rec(p, &p->now, &r);
		}
	} else if (LINUX_S_ISREG(in.i_mode)) {
		r.kind = 'F';
		r.size = EXT2_I_SIZE(&in);
		p->err = add_rec(p, &p->now, &r);
	} else {
		skip(p, p->path, LINUX_S_ISLNK(in.i_mode) ? "a symbolic link is not a file" :
				 LINUX_S_ISSOCK(in.i_mode) ? "a socket is not a file" :
				 LINUX_S_ISFIFO(in.i_mode) ? "a FIFO is not a file" :
				 "a device is not a file");
	}
done:
	p->path[at] = '\0';
	return p->err ? DIRENT_ABORT : 0;
}

static int walk(struct push *p, ext2_ino_t dir, bool *empty)
{
	size_t before = p->now.n, skipped = p->res->skipped;
	errcode_t e;

	e = ext2fs_dir_iterate2(p->fs, dir, 0, NULL, on_dirent, p);
	if (p->err)
		return p->err;
	if (e)
		return cd_error(p->ctx, -EIO, "'%s': cannot read the folder '%s': %s", p->disk,
				p->path[0] ? p->path : "/", error_message(e));
	*empty = p->now.n == before && p->res->skipped == skipped;
	return 0;
}

/* ---- content ---- */

static int read_content(struct push *p, ext2_ino_t ino, uint8_t *buf, uint64_t off,
			size_t len)
{
	ext2_file_t file;
	unsigned got;
	errcode_t e = ext2fs_file_open(p->fs, ino, 0, &file);

	if (!e)
		e = ext2fs_file_llseek(file, off, EXT2_SEEK_SET, NULL);
	while (!e && len) {
		unsigned want = len > (1u << 30) ? 1u << 30 : (unsigned)len;
		e = ext2fs_file_read(file, buf, want, &got);
		if (!e && got == 0)
			e = EXT2_ET_SHORT_READ;
		buf += got;
		len -= got;
	}
	if (file)
		ext2fs_file_close(file);
	if (e)
		return cd_error(p->ctx, -EIO, "'%s': cannot read inode %u: %s", p->disk,
				(unsigned)ino, error_message(e));
	return 0;
}

static void hexd(const uint8_t *d, size_t n, char *out)
{
	for (size_t i = 0; i < n; i++)
		sprintf(out + 2 * i, "%02x", d[i]);
}

static int hash_content(struct push *p, struct rec *r, char md5[33])
{
	size_t chunk = 1u << 20;
	uint8_t *buf = malloc(chunk), d[32];
	gnutls_hash_hd_t hs, hm;
	int err = 0;

	if (!buf)
		return cd_error(p->ctx, -ENOMEM, "out of memory");
	gnutls_hash_init(&hs, GNUTLS_DIG_SHA256);
	gnutls_hash_init(&hm, GNUTLS_DIG_MD5);
	for (uint64_t off = 0; off < r->size && !err; off += chunk) {
		size_t n = r->size - off < chunk ? (size_t)(r->size - off) : chunk;
		err = read_content(p, (ext2_ino_t)r->ino, buf, off, n);
		gnutls_hash(hs, buf, n);
		gnutls_hash(hm, buf, n);
	}
	gnutls_hash_deinit(hs, d);
	hexd(d, 32, r->sha);
	gnutls_hash_deinit(hm, d);
	hexd(d, 16, md5);
	free(buf);
	p->res->hashed++;
	return err;
}

/* Whether a file on the disk is as recorded; its SHA-256 is then known. */
static int unchanged(struct push *p, struct rec *r, const struct rec *old, bool *same)
{
	char md5[33];
	int err;

	*same = false;
	if (!old || old->kind != r->kind)
		goto hash;
	if (r->kind == 'D') {
		*same = true;
		return 0;
	}
	strcpy(r->etag, old->etag);
	if (old->ino == r->ino && old->ctime == r->ctime && old->size == r->size &&
	    old->mtime == r->mtime && strcmp(old->sha, "-")) {
		strcpy(r->sha, old->sha);
		*same = true;
		return 0;
	}
hash:
	if (r->kind == 'D')
		return 0;
	err = hash_content(p, r, md5);
	if (err || !old || old->kind != 'F' || old->size != r->size)
		return err;
	/* Only a single-part upload's ETag is the MD5 of its bytes. */
	*same = strcmp(old->sha, "-") ? !strcmp(old->sha, r->sha) :
		strlen(old->etag) == 32 && !strcasecmp(old->etag, md5);
	return 0;
}

/* ---- the cloud ---- */

static void mtime_text(const struct rec *r, char out[48])
{
	snprintf(out, 48, "%lld.%09u", (long long)r->mtime, r->mtime_ns);
}

static int upload_parts(struct push *p, const char *key, struct rec *r, uint8_t *buf)
{
	unsigned parts = (unsigned)cd_div_round_up(r->size, PART_SIZE);
	char (*etags)[80] = calloc(parts, sizeof(*etags)), id[1024] = "", when[48];
	int err;

	if (!etags)
		return cd_error(p->ctx, -ENOMEM, "out of memory");
	mtime_text(r, when);
	err = cd_s3_multipart_begin(p->f, &p->session, key, r->sha, when, id, sizeof(id));
	for (unsigned i = 0; err == 0 && i < parts; i++) {
		uint64_t off = (uint64_t)i * PART_SIZE;
		size_t n = r->size - off < PART_SIZE ? (size_t)(r->size - off) : PART_SIZE;
		err = read_content(p, (ext2_ino_t)r->ino, buf, off, n);
		if (err == 0)
			err = cd_s3_multipart_part(p->f, &p->session, key, id, i + 1, buf, n,
						   etags[i]);
	}
	if (err == 0)
		err = cd_s3_multipart_end(p->f, &p->session, key, id,
					  (const char (*)[80])etags, parts, r->etag);
	else if (id[0])
		cd_s3_multipart_abort(p->f, &p->session, key, id);
	free(etags);
	return err;
}

static int upload(struct push *p, struct rec *r)
{
	char key[KEY_MAX + CDISK_MAX_URI + 2], when[48];
	bool parts = r->size >= MULTIPART_FROM;
	uint8_t *buf = NULL;
	int err;

	snprintf(key, sizeof(key), "%s%s", cd_s3_folder_prefix(p->f), r->rel);
	if (r->size) {
		buf = malloc(parts ? PART_SIZE : (size_t)r->size);
		if (!buf)
			return cd_error(p->ctx, -ENOMEM, "out of memory");
	}
	if (parts) {
		err = upload_parts(p, key, r, buf);
	} else {
		mtime_text(r, when);
		err = r->size ? read_content(p, (ext2_ino_t)r->ino, buf, 0, (size_t)r->size) : 0;
		if (err == 0)
			err = cd_s3_folder_put(p->f, &p->session, key, buf, (size_t)r->size,
					       r->kind == 'F' ? r->sha : NULL,
					       r->kind == 'F' ? when : NULL, r->etag);
	}
	free(buf);
	if (err == 0)
		err = log_upload(p, key, r->etag);
	if (err == 0)
		err = journal(p, r);
	if (err == 0) {
		p->res->uploaded++;
		p->res->uploaded_bytes += r->size;
		if (p->o->item)
			p->o->item(p->o->opaque, CDISK_FILES_UPLOADED, r->rel, r->size, r->etag,
				   NULL);
	}
	return err;
}

static int delete(struct push *p, struct rec *old)
{
	char key[KEY_MAX + CDISK_MAX_URI + 2];
	struct rec gone = *old;
	int err;

	snprintf(key, sizeof(key), "%s%s", cd_s3_folder_prefix(p->f), old->rel);
	err = cd_s3_folder_delete(p->f, &p->session, key);
	gone.kind = 'X';
	if (err == 0)
		err = journal(p, &gone);
	if (err == 0) {
		p->res->deleted++;
		if (p->o->item)
			p->o->item(p->o->opaque, CDISK_FILES_DELETED, old->rel, old->size, NULL,
				   NULL);
	}
	return err;
}

/* ---- the whole ---- */

/* What differs: to_send[i] set for each upload; the deletes are the old
 * records not seen. */
static int compare(struct push *p, bool *to_send)
{
	int err = 0;

	settle(&p->now);
	for (size_t i = 0; i < p->now.n && !err; i++) {
		struct rec *r = &p->now.v[i], *old = find(&p->old, r->rel);
		bool same;

		if (r->kind == 'F')
			p->res->files++;
		else
			p->res->dirs++;
		if (old)
			old->seen = true;
		err = unchanged(p, r, old, &same);
		to_send[i] = !same;
		if (same && r->kind == 'F')
			p->res->unchanged++;
	}
	for (size_t i = 0; i < p->old.n; i++) {
		if (p->old.v[i].kind == 'F')
			p->res->recorded_files++;
		if (!p->old.v[i].seen && p->old.v[i].kind == 'F')
			p->res->to_delete++;
	}
	return err;
}

static void dry_report(struct push *p, const bool *to_send)
{
	for (size_t i = 0; i < p->now.n; i++)
		if (to_send[i]) {
			p->res->uploaded++;
			p->res->uploaded_bytes += p->now.v[i].size;
			if (p->o->item)
				p->o->item(p->o->opaque, CDISK_FILES_UPLOADED, p->now.v[i].rel,
					   p->now.v[i].size, NULL, NULL);
		}
	for (size_t i = 0; i < p->old.n; i++)
		if (!p->old.v[i].seen) {
			p->res->deleted++;
			if (p->o->item)
				p->o->item(p->o->opaque, CDISK_FILES_DELETED, p->old.v[i].rel,
					   p->old.v[i].size, NULL, NULL);
		}
}

static int send_all(struct push *p, const bool *to_send)
{
	int err;

	err = cd_s3_folder_open(p->ctx, p->res->uri, &p->f);
	if (err < 0)
		return err;
	p->journal_fd = open(p->journal, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (p->journal_fd < 0)
		return cd_error(p->ctx, -errno, "cannot write '%s': %s", p->journal,
				strerror(errno));
	/* New content first, deletes after: a file moved on the disk is never
	 * missing from the cloud in between. */
	for (size_t i = 0; i < p->now.n && !err; i++)
		if (to_send[i])
			err = upload(p, &p->now.v[i]);
	for (size_t i = 0; i < p->old.n && !err; i++)
		if (!p->old.v[i].seen)
			err = delete(p, &p->old.v[i]);
	if (err == 0)
		err = save_state(p);
	return err;
}

static int sync_folder(struct push *p, const char *path)
{
	bool *to_send = NULL;
	int err;

	err = load_state(p);
	if (err == 0)
		err = open_disk(p, path);
	if (err == 0)
		err = check_fs(p);
	if (err == 0)
		err = walk(p, EXT2_ROOT_INO, &(bool){ false });
	if (err == 0 && !(to_send = calloc(p->now.n + 1, sizeof(*to_send))))
		err = cd_error(p->ctx, -ENOMEM, "out of memory");
	if (err == 0)
		err = compare(p, to_send);
	if (err == 0 && p->res->to_delete * 2 > p->res->recorded_files && !p->o->force)
		err = cd_error(p->ctx, -ECANCELED, "'%s': the sync would delete %llu of the "
			       "folder's %llu files in '%s', more than half; nothing was sent. "
			       "If that is meant, sync with --force", p->disk,
			       (unsigned long long)p->res->to_delete,
			       (unsigned long long)p->res->recorded_files, p->res->uri);
	if (err == 0 && p->o->dry_run)
		dry_report(p, to_send);
	else if (err == 0)
		err = send_all(p, to_send);
	free(to_send);
	return err;
}

int cdisk_sync_files(struct cdisk_ctx *ctx, const char *path,
		     const struct cdisk_files_opts *o, struct cdisk_files_result *res)
{
	struct push p = { .ctx = ctx, .o = o, .res = res, .journal_fd = -1 };
	char lock[PATH_MAX];
	int lock_fd = -1, err;

	cd_errbuf()[0] = 0;
	memset(res, 0, sizeof(*res));
	if (!realpath(path, p.disk))
		return cd_error(ctx, -errno, "cannot open '%s': %s", path, strerror(errno));
	err = find_folder(&p);
	if ((err = err ? err : cd_folder_cache_file(ctx, p.folder_id, ".state", p.state)) ||
	    (err = cd_folder_cache_file(ctx, p.folder_id, ".journal", p.journal)) ||
	    (err = cd_folder_cache_file(ctx, p.folder_id, ".uploads", p.uploads)) ||
	    (err = cd_folder_cache_file(ctx, p.folder_id, ".lock", lock)))
		return err;
	/* One sync of a folder at a time: two would both upload. */
	lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (lock_fd < 0)
		return cd_error(ctx, -errno, "cannot write '%s': %s", lock, strerror(errno));
	if (flock(lock_fd, LOCK_EX | LOCK_NB) < 0) {
		close(lock_fd);
		return cd_error(ctx, -EAGAIN, "'%s': another cdisk-sync --files of it is "
				"running; try later", p.disk);
	}
	err = sync_folder(&p, path);
	if (p.fs)
		ext2fs_close2(p.fs, 0);
	if (p.d) {
		int c = cdisk_close(p.d);
		if (err == 0)
			err = c;
	}
	if (p.session)
		cd_s3_folder_end(p.f, p.session);
	cd_s3_folder_close(p.f);
	if (p.journal_fd >= 0)
		close(p.journal_fd);
	free_recs(&p.old);
	free_recs(&p.now);
	close(lock_fd);
	return err;
}

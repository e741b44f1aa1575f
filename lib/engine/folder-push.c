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
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "disk.h"
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
	bool changed;       /* pull: differs on the disk from the record */
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
	char sid[CD_FOLDER_SID_MAX];   /* the disk's own cache files (folder.h) */
	bool reader;        /* a reader disk: pulled into, never pushed from */
	char uuid[33];
	char state[PATH_MAX], journal[PATH_MAX], uploads[PATH_MAX];
	struct recs old;    /* sorted by rel */
	struct recs now;    /* what the filesystem holds, then what the cloud will */
	struct cdisk *d;
	struct cdisk *given;   /* the server's own handle of the disk (not closed) */
	ext2_filsys fs;
	struct cd_s3_folder *f;
	void *session;
	int journal_fd;
	char path[KEY_MAX];
	int err;
	/* pull */
	char intent[PATH_MAX], pending[PATH_MAX], copy[PATH_MAX + 16];
	struct recs cloud;  /* the listing, sorted by rel */
	struct recs upd;    /* the records a pull changes, merged into old at the end */
	char **own;         /* the upload log's ETags, sorted */
	size_t n_own;
	char **globs[2];    /* --include, --exclude of the disk's creation (NULL-ended) */
	size_t n_globs[2];
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

/* The globs a disk was made with: "include GLOB" and "exclude GLOB"
 * lines after the header's uuid (none in states older than them). */
static int read_globs(struct push *p, FILE *f)
{
	char line[8192 + 16];
	long at;

	while ((at = ftell(f)) >= 0 && fgets(line, sizeof(line), f)) {
		int k = !strncmp(line, "include ", 8) ? 0 : !strncmp(line, "exclude ", 8) ? 1 : -1;
		char **v;

		if (k < 0)
			return fseek(f, at, SEEK_SET) < 0 ? -errno : 0;
		line[strcspn(line, "\n")] = '\0';
		cd_folder_unescape(line + 8);
		v = realloc(p->globs[k], (p->n_globs[k] + 2) * sizeof(*v));
		if (!v)
			return -ENOMEM;
		p->globs[k] = v;
		if (!(v[p->n_globs[k]] = strdup(line + 8)))
			return -ENOMEM;
		v[++p->n_globs[k]] = NULL;
	}
	return 0;
}

static bool wanted(const struct push *p, const char *rel)
{
	return cd_folder_wanted((const char *const *)p->globs[0],
				(const char *const *)p->globs[1], rel);
}

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
	return read_globs(p, f);
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

/* recs as the state file at path: temp file, fsync, rename. */
static int write_state(struct push *p, const struct recs *rs, const char *path)
{
	char tmp[PATH_MAX + 8];
	FILE *f;
	int err = 0;

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	f = fopen(tmp, "w");
	if (!f)
		return cd_error(p->ctx, -errno, "cannot write '%s': %s", tmp, strerror(errno));
	fprintf(f, "cdisk-folder-state 1\nuri %s\ndisk %s\nuuid %s\n", p->res->uri, p->disk,
		p->uuid);
	for (int k = 0; k < 2; k++)
		for (size_t i = 0; i < p->n_globs[k]; i++) {
			fputs(k ? "exclude " : "include ", f);
			cd_folder_escape(p->globs[k][i], f);
			fputc('\n', f);
		}
	for (size_t i = 0; i < rs->n; i++)
		if (rs->v[i].kind != 'X')
			write_rec(f, &rs->v[i]);
	if (fflush(f) != 0 || fsync(fileno(f)) < 0)
		err = cd_error(p->ctx, -errno, "cannot write '%s': %s", tmp, strerror(errno));
	if (fclose(f) != 0 && err == 0)
		err = cd_error(p->ctx, -EIO, "cannot write '%s'", tmp);
	if (err == 0 && rename(tmp, path) < 0)
		err = cd_error(p->ctx, -errno, "cannot write '%s': %s", path, strerror(errno));
	if (err)
		unlink(tmp);
	return err;
}

static int save_state(struct push *p)
{
	int err = write_state(p, &p->now, p->state);

	/* After the rename: replayed over the new state, it changes nothing. */
	if (err == 0 && unlink(p->journal) < 0 && errno != ENOENT)
		err = cd_error(p->ctx, -errno, "cannot remove '%s': %s", p->journal,
			       strerror(errno));
	return err;
}

static int pull_recover(struct push *p);

/* ---- which folder: the writer files of the cache name their disks, a
 * reader's state is named after its path ---- */

/* The first line of a cache file (a writer record names its disk). */
static bool first_line(const char *file, char *line, size_t size)
{
	FILE *f = fopen(file, "r");
	bool ok = f && fgets(line, (int)size, f);

	if (f)
		fclose(f);
	if (ok)
		line[strcspn(line, "\n")] = '\0';
	return ok;
}

static int find_folder(struct push *p)
{
	char dir[PATH_MAX], file[PATH_MAX + 300], line[PATH_MAX + 2], tail[CD_FOLDER_SID_MAX];
	struct dirent *de;
	size_t tn;
	DIR *d;

	snprintf(dir, sizeof(dir), "%s/folders", p->ctx->cfg.cache_dir);
	cd_folder_reader_id("", p->disk, tail);   /* ".r-H" */
	tn = strlen(tail);
	d = opendir(dir);
	while (d && (de = readdir(d))) {
		size_t n = strlen(de->d_name);
		const char *rest = de->d_name + 64;
		if (n == 64 + 7 && !strcmp(rest, ".writer")) {
			snprintf(file, sizeof(file), "%s/%s", dir, de->d_name);
			if (!first_line(file, line, sizeof(line)) || strcmp(line, p->disk))
				continue;
			p->reader = false;
		} else if (n == 64 + tn + 6 && !strncmp(rest, tail, tn) &&
			   !strcmp(rest + tn, ".state")) {
			p->reader = true;   /* a writer record of the same disk wins */
		} else {
			continue;
		}
		memcpy(p->folder_id, de->d_name, 64);
		p->folder_id[64] = '\0';
		if (!p->reader)
			break;
	}
	if (d)
		closedir(d);
	if (!p->folder_id[0])
		return cd_error(p->ctx, -ENOENT, "'%s' is no disk of a cloud folder in the "
				"cache '%s' (cdisk-create --from-folder makes one)", p->disk,
				p->ctx->cfg.cache_dir);
	if (p->reader)
		cd_folder_reader_id(p->folder_id, p->disk, p->sid);
	else
		snprintf(p->sid, sizeof(p->sid), "%s", p->folder_id);
	return 0;
}

/* A reader's files never go to the cloud: only the folder's writer
 * sends, or two disks would overwrite each other's changes there. */
static int refuse_push(struct push *p)
{
	char wfile[PATH_MAX], writer[PATH_MAX + 2] = "";
	int err = cd_folder_cache_file(p->ctx, p->folder_id, ".writer", wfile);

	if (err)
		return err;
	if (first_line(wfile, writer, sizeof(writer)) && access(writer, F_OK) == 0)
		return cd_error(p->ctx, -EROFS, "'%s' is a reader disk of '%s': only its "
				"writer disk '%s' sends files to the cloud (--files --pull "
				"brings the cloud's changes into a reader)", p->disk,
				p->res->uri, writer);
	return cd_error(p->ctx, -EROFS, "'%s' is a reader disk of '%s', which has no "
			"writer disk: only a writer (cdisk-create --from-folder --writer) "
			"sends files to the cloud (--files --pull brings the cloud's "
			"changes into a reader)", p->disk, p->res->uri);
}

/* ---- the filesystem ---- */

static int open_disk(struct push *p, const char *path)
{
	struct cdisk_info info;
	uint64_t offset;
	int r = 0;

	/* The server's handle, with no client left to write through it. */
	if (p->given)
		p->d = p->given;
	else
		r = cdisk_open(p->ctx, path, CDISK_OPEN_RDONLY, &p->d);

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
	if (err == 0 && p->reader)
		err = refuse_push(p);
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

/* ---- pull: cloud changes into the disk ----
 * The changes are made in a copy of the disk file (DISK.pull-tmp, holes
 * kept, reflinked where the filesystem can), through libext2fs; the copy
 * is closed cleanly and fsynced, and renamed over the disk.  A crash
 * leaves the old file or the new one, each a whole cdisk with a clean
 * ext4, so no reader of the disk (cdisk-serve included) has anything to
 * redo.  Only the cache's state must follow the rename: it is written
 * first as ID.state.pull, with the intent ID.pull naming the copy's
 * inode; whoever takes the folder's lock next (a pull or a push) finds
 * the intent, and looks at which inode the disk is: the copy's means the
 * rename happened and the pending state becomes the state, another means
 * it did not and the copy and pending state go. */

static int sync_dir(struct push *p, const char *file)
{
	char dir[PATH_MAX];
	char *slash;
	int fd, r = 0;

	snprintf(dir, sizeof(dir), "%s", file);
	slash = strrchr(dir, '/');
	if (slash)
		*(slash == dir ? slash + 1 : slash) = '\0';
	fd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || fsync(fd) < 0)
		r = cd_error(p->ctx, -errno, "cannot sync the folder of '%s': %s", file,
			     strerror(errno));
	if (fd >= 0)
		close(fd);
	return r;
}

/* The intent's end: the pending state becomes the state if the disk is
 * the copy now, else the copy and the pending state go. */
static int pull_finish(struct push *p, bool renamed)
{
	int r;

	if (renamed) {
		if (unlink(p->journal) < 0 && errno != ENOENT)
			return cd_error(p->ctx, -errno, "cannot remove '%s': %s", p->journal,
					strerror(errno));
		if (rename(p->pending, p->state) < 0 && errno != ENOENT)
			return cd_error(p->ctx, -errno, "cannot write '%s': %s", p->state,
					strerror(errno));
	} else {
		unlink(p->pending);
		unlink(p->copy);
	}
	if ((r = sync_dir(p, p->state)) < 0)
		return r;
	if (unlink(p->intent) < 0 && errno != ENOENT)
		return cd_error(p->ctx, -errno, "cannot remove '%s': %s", p->intent,
				strerror(errno));
	return 0;
}

static int pull_recover(struct push *p)
{
	unsigned long long dev = 0, ino = 0;
	struct stat st;
	bool renamed;
	FILE *f;
	int r;

	snprintf(p->copy, sizeof(p->copy), "%s.pull-tmp", p->disk);
	f = fopen(p->intent, "r");
	if (!f) {
		/* no intent made durable: the disk was never touched */
		unlink(p->pending);
		unlink(p->copy);
		return 0;
	}
	r = fscanf(f, "copy %llu %llu", &dev, &ino) == 2 ? 0 : -EBADMSG;
	fclose(f);
	renamed = r == 0 && stat(p->disk, &st) == 0 && (unsigned long long)st.st_dev == dev &&
		  (unsigned long long)st.st_ino == ino;
	if (renamed)
		cd_log(p->ctx, CDISK_LOG_INFO, "'%s': finishing the pull a crash cut short",
		       p->disk);
	else
		cd_log(p->ctx, CDISK_LOG_INFO, "'%s': dropping the pull a crash cut short; "
		       "the disk is as it was", p->disk);
	return pull_finish(p, renamed);
}

/* -- what the cloud holds, and what this host sent -- */

static int on_cloud(void *opaque, const struct cd_s3_entry *e)
{
	struct push *p = opaque;
	const char *rel = e->key + strlen(cd_s3_folder_prefix(p->f));
	struct rec r = { .rel = (char *)rel, .size = e->size, .mtime = e->mtime };

	if (!rel[0] || !wanted(p, rel))
		return 0;   /* the folder's own marker, or what the disk does not take */
	r.kind = rel[strlen(rel) - 1] == '/' ? 'D' : 'F';
	snprintf(r.etag, sizeof(r.etag), "%s", e->etag);
	strcpy(r.sha, "-");
	return add_rec(p, &p->cloud, &r);
}

static int by_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int load_own(struct push *p)
{
	FILE *f = fopen(p->uploads, "r");
	char *line = NULL;
	size_t cap = 0, n_cap = 0;
	int err = 0;

	if (!f)
		return errno == ENOENT ? 0 : cd_error(p->ctx, -errno, "cannot read '%s': %s",
						      p->uploads, strerror(errno));
	while (!err && getline(&line, &cap, f) > 0) {
		char *sp = strchr(line, ' ');
		if (!sp)
			continue;   /* a line a crash cut short */
		*sp = '\0';
		if (p->n_own == n_cap) {
			char **v = realloc(p->own, (n_cap = n_cap * 2 + 64) * sizeof(*v));
			if (!v) {
				err = cd_error(p->ctx, -ENOMEM, "out of memory");
				break;
			}
			p->own = v;
		}
		if (!(p->own[p->n_own++] = strdup(line)))
			err = cd_error(p->ctx, -ENOMEM, "out of memory");
	}
	free(line);
	fclose(f);
	if (p->own)
		qsort(p->own, p->n_own, sizeof(*p->own), by_str);
	return err;
}

static bool is_own(struct push *p, const char *etag)
{
	return p->own && bsearch(&etag, p->own, p->n_own, sizeof(*p->own), by_str);
}

/* -- the plan -- */

enum pull_do { DO_NOTHING, DO_WRITE, DO_CONFLICT, DO_REMOVE, DO_MKDIR, DO_RECORD };

struct pull_item {
	enum pull_do what;
	struct rec *cloud;     /* the listing's, for writes and markers */
	struct rec *old;       /* the record, for removes */
	char obj[PATH_MAX];    /* the fetched content */
	char sha[65];
	int64_t mtime;
	bool aside;            /* a reader's own change to rel, kept beside first */
};

struct plan {
	struct pull_item *v;
	size_t n;
};

/* A disk file differs from the record: changed, deleted, or new. */
static bool disk_changed(const struct rec *old, const struct rec *now)
{
	if (!old)
		return now != NULL;
	return !now || now->kind != old->kind || now->changed;
}

static int fetch_item(struct push *p, struct pull_item *it)
{
	char key[KEY_MAX + CDISK_MAX_URI + 2];
	bool fetched;
	int err;

	snprintf(key, sizeof(key), "%s%s", cd_s3_folder_prefix(p->f), it->cloud->rel);
	err = cd_folder_fetch(p->ctx, p->f, &p->session, key, it->cloud->etag,
			      it->cloud->size, it->cloud->mtime, it->obj, it->sha, &it->mtime,
			      &fetched);
	if (err == 0 && !fetched)
		p->res->from_cache++;
	return err;
}

static int plan_cloud(struct push *p, struct plan *pl)
{
	int err = 0;

	for (size_t i = 0; i < p->cloud.n && !err; i++) {
		struct rec *c = &p->cloud.v[i], *old = find(&p->old, c->rel),
			   *now = find(&p->now, c->rel);
		struct pull_item *it = &pl->v[pl->n];

		memset(it, 0, sizeof(*it));
		it->cloud = c;
		it->old = old;
		if (old)
			old->seen = true;
		if (c->kind == 'D') {
			if (!now)
				it->what = DO_MKDIR;
			pl->n += it->what != DO_NOTHING;
			continue;
		}
		if (old && old->kind == 'F' && !strcmp(old->etag, c->etag))
			continue;   /* not changed in the cloud */
		if (is_own(p, c->etag)) {
			p->res->own++;
			continue;
		}
		err = fetch_item(p, it);
		if (err)
			break;
		if (now && now->kind == 'F' && !strcmp(now->sha, it->sha)) {
			it->what = DO_RECORD;   /* both sides made the same change */
		} else if (!disk_changed(old, now)) {
			it->what = DO_WRITE;
		} else if (p->reader) {
			/* On a reader the cloud wins (nothing of a reader goes up,
			 * so its version would otherwise stay on it forever); what
			 * the guest wrote there is kept beside, not lost. */
			it->what = DO_WRITE;
			it->aside = now != NULL;
		} else {
			it->what = DO_CONFLICT;
		}
		pl->n++;
	}
	return err;
}

/* Deleted in the cloud: deleted on the disk unless changed there. */
static void plan_deletes(struct push *p, struct plan *pl)
{
	for (size_t i = 0; i < p->old.n; i++) {
		struct rec *old = &p->old.v[i], *now;
		struct pull_item *it = &pl->v[pl->n];

		/* a key the disk does not take from the folder (its guest made it)
		 * is not listed, but not deleted either */
		if (old->seen || !wanted(p, old->rel))
			continue;
		memset(it, 0, sizeof(*it));
		it->old = old;
		now = find(&p->now, old->rel);
		it->what = old->kind == 'F' && now && now->kind == 'F' && !now->changed
			   ? DO_REMOVE : DO_RECORD;
		/* a reader follows the cloud; what its guest changed is kept */
		if (p->reader && it->what == DO_RECORD && old->kind == 'F' && now &&
		    now->kind == 'F') {
			it->what = DO_REMOVE;
			it->aside = true;
		}
		pl->n++;
	}
}

static int make_plan(struct push *p, struct plan *pl)
{
	int err;

	settle(&p->now);
	for (size_t i = 0; i < p->now.n; i++) {
		struct rec *old = find(&p->old, p->now.v[i].rel);
		bool same;
		err = unchanged(p, &p->now.v[i], old, &same);
		if (err)
			return err;
		p->now.v[i].changed = !same;
		p->res->files += p->now.v[i].kind == 'F';
		/* what was hashed to tell is recorded: the next run need not */
		if (same && old && old->kind == 'F' &&
		    (old->ino != p->now.v[i].ino || old->ctime != p->now.v[i].ctime)) {
			err = add_rec(p, &p->upd, &p->now.v[i]);
			if (err)
				return err;
		}
	}
	pl->v = calloc(p->cloud.n + p->old.n + 1, sizeof(*pl->v));
	if (!pl->v)
		return cd_error(p->ctx, -ENOMEM, "out of memory");
	err = plan_cloud(p, pl);
	if (err == 0)
		plan_deletes(p, pl);
	return err;
}

/* -- files written through libext2fs -- */

struct owner {
	uint32_t uid, gid;
};

static errcode_t link_name(ext2_filsys fs, ext2_ino_t dir, const char *name, ext2_ino_t ino,
			   int type)
{
	errcode_t e = ext2fs_link(fs, dir, name, ino, type);

	if (e == EXT2_ET_DIR_NO_SPACE) {
		e = ext2fs_expand_dir(fs, dir);
		if (!e)
			e = ext2fs_link(fs, dir, name, ino, type);
	}
	return e;
}

static void set_times(struct ext2_inode_large *in, int64_t mtime, int64_t now)
{
	in->i_mtime = (uint32_t)mtime;
	in->i_atime = in->i_ctime = (uint32_t)now;
	if (in->i_extra_isize >= 24) {
		in->i_mtime_extra = (uint32_t)((mtime >> 32) & 3);
		in->i_atime_extra = in->i_ctime_extra = (uint32_t)((now >> 32) & 3);
	}
}

static void set_owner(struct ext2_inode_large *in, const struct owner *o)
{
	in->i_uid = (uint16_t)o->uid;
	ext2fs_set_i_uid_high(*in, o->uid >> 16);
	in->i_gid = (uint16_t)o->gid;
	ext2fs_set_i_gid_high(*in, o->gid >> 16);
}

/* The folder of rel, made with its parents when missing; name points at
 * the last component of rel (which is cut there). */
static errcode_t parent_of(ext2_filsys fs, char *rel, const struct owner *o, bool make,
			   ext2_ino_t *dir, char **name)
{
	ext2_ino_t at = EXT2_ROOT_INO, next;
	char *part = rel, *slash;
	errcode_t e = 0;

	while ((slash = strchr(part, '/')) && slash[1]) {
		*slash = '\0';
		e = ext2fs_lookup(fs, at, part, (int)strlen(part), NULL, &next);
		if (e == EXT2_ET_FILE_NOT_FOUND && make) {
			struct ext2_inode_large in;
			e = ext2fs_mkdir(fs, at, 0, part);
			if (e == EXT2_ET_DIR_NO_SPACE && !(e = ext2fs_expand_dir(fs, at)))
				e = ext2fs_mkdir(fs, at, 0, part);
			if (!e)
				e = ext2fs_lookup(fs, at, part, (int)strlen(part), NULL, &next);
			if (!e)
				e = ext2fs_read_inode_full(fs, next, (struct ext2_inode *)&in,
							   sizeof(in));
			if (!e) {
				in.i_mode = LINUX_S_IFDIR | 0755;
				set_owner(&in, o);
				e = ext2fs_write_inode_full(fs, next, (struct ext2_inode *)&in,
							    sizeof(in));
			}
		}
		*slash = '/';
		if (e)
			return e;
		at = next;
		part = slash + 1;
	}
	if (slash)
		*slash = '\0';   /* a marker's trailing slash */
	*dir = at;
	*name = part;
	if (part != rel)
		part[-1] = '\0';
	return 0;
}

static errcode_t new_file(ext2_filsys fs, ext2_ino_t dir, const char *name,
			  const struct owner *o, ext2_ino_t *ino)
{
	struct ext2_inode_large in;
	errcode_t e;

	e = ext2fs_new_inode(fs, dir, LINUX_S_IFREG | 0644, 0, ino);
	if (!e)
		e = link_name(fs, dir, name, *ino, EXT2_FT_REG_FILE);
	if (e)
		return e;
	ext2fs_inode_alloc_stats2(fs, *ino, +1, 0);
	memset(&in, 0, sizeof(in));
	in.i_mode = LINUX_S_IFREG | 0644;
	in.i_links_count = 1;
	in.i_extra_isize = sizeof(struct ext2_inode_large) - EXT2_GOOD_OLD_INODE_SIZE;
	set_owner(&in, o);
	if (ext2fs_has_feature_extents(fs->super)) {
		ext2_extent_handle_t h;
		e = ext2fs_extent_open2(fs, *ino, (struct ext2_inode *)&in, &h);
		if (e)
			return e;
		ext2fs_extent_free(h);
	}
	return ext2fs_write_new_inode(fs, *ino, (struct ext2_inode *)&in);
}

static errcode_t fill_file(ext2_filsys fs, ext2_ino_t ino, const char *obj, uint64_t size)
{
	size_t cap = 1u << 20;
	char *buf = malloc(cap);
	ext2_file_t file = NULL;
	errcode_t e;
	ssize_t n = 0;
	int fd = open(obj, O_RDONLY | O_CLOEXEC);

	if (fd < 0 || !buf) {
		e = fd < 0 ? errno : ENOMEM;
		if (fd >= 0)
			close(fd);
		free(buf);
		return e;
	}
	e = ext2fs_file_open(fs, ino, EXT2_FILE_WRITE, &file);
	if (!e)
		e = ext2fs_file_set_size2(file, 0);
	while (!e && (n = read(fd, buf, cap)) > 0) {
		for (char *at = buf; !e && n > 0;) {
			unsigned put = 0;
			e = ext2fs_file_write(file, at, (unsigned)n, &put);
			at += put;
			n -= put;
		}
	}
	if (!e && n < 0)
		e = errno;
	if (!e)
		e = ext2fs_file_set_size2(file, size);
	if (file) {
		errcode_t c = ext2fs_file_close(file);
		if (!e)
			e = c;
	}
	close(fd);
	free(buf);
	return e;
}

/* rel made (or overwritten) with obj's bytes; r gets what the state
 * records of it. */
static errcode_t put_file(ext2_filsys fs, const char *rel, const char *obj, uint64_t size,
			  int64_t mtime, const struct owner *o, struct rec *r)
{
	struct ext2_inode_large in;
	char path[KEY_MAX], *name;
	ext2_ino_t dir, ino;
	errcode_t e;

	snprintf(path, sizeof(path), "%s", rel);
	e = parent_of(fs, path, o, true, &dir, &name);
	if (e)
		return e;
	e = ext2fs_lookup(fs, dir, name, (int)strlen(name), NULL, &ino);
	if (e == EXT2_ET_FILE_NOT_FOUND)
		e = new_file(fs, dir, name, o, &ino);
	if (!e)
		e = fill_file(fs, ino, obj, size);
	if (!e)
		e = ext2fs_read_inode_full(fs, ino, (struct ext2_inode *)&in, sizeof(in));
	if (e)
		return e;
	if (!LINUX_S_ISREG(in.i_mode))
		return EXT2_ET_FILE_EXISTS;
	set_times(&in, mtime, time(NULL));
	e = ext2fs_write_inode_full(fs, ino, (struct ext2_inode *)&in, sizeof(in));
	r->kind = 'F';
	r->size = size;
	r->ino = ino;
	inode_times(&in, r);
	return e;
}

static errcode_t remove_file(ext2_filsys fs, const char *rel, const struct owner *o)
{
	struct ext2_inode in;
	char path[KEY_MAX], *name;
	ext2_ino_t dir, ino;
	errcode_t e;

	snprintf(path, sizeof(path), "%s", rel);
	e = parent_of(fs, path, o, false, &dir, &name);
	if (!e)
		e = ext2fs_lookup(fs, dir, name, (int)strlen(name), NULL, &ino);
	if (e == EXT2_ET_FILE_NOT_FOUND)
		return 0;
	if (!e)
		e = ext2fs_read_inode(fs, ino, &in);
	if (!e && !LINUX_S_ISREG(in.i_mode))
		return 0;
	if (!e)
		e = ext2fs_unlink(fs, dir, name, ino, 0);
	if (e)
		return e;
	if (in.i_links_count > 1) {
		in.i_links_count--;
		return ext2fs_write_inode(fs, ino, &in);
	}
	in.i_links_count = 0;
	e = ext2fs_punch(fs, ino, &in, NULL, 0, ~0ULL);
	if (e)
		return e;
	in.i_dtime = (uint32_t)time(NULL);
	e = ext2fs_write_inode(fs, ino, &in);
	if (!e)
		ext2fs_inode_alloc_stats2(fs, ino, -1, 0);
	return e;
}

static errcode_t make_marker(ext2_filsys fs, const char *rel, const struct owner *o)
{
	char path[KEY_MAX + 2], *name;
	ext2_ino_t dir;

	/* "a/b/" as "a/b/x": parent_of makes a/b */
	snprintf(path, sizeof(path), "%sx", rel);
	return parent_of(fs, path, o, true, &dir, &name);
}

/* NAME.WHOSE-conflict-YYYYMMDD-HHMMSS.EXT beside rel. */
static void conflict_name(const char *rel, const char *whose, time_t when, char *out,
			  size_t size)
{
	const char *base = strrchr(rel, '/'), *dot;
	char stamp[32];
	struct tm tm;

	base = base ? base + 1 : rel;
	dot = strrchr(base, '.');
	if (dot == base)
		dot = NULL;   /* ".profile" is a name, not an extension */
	gmtime_r(&when, &tm);
	strftime(stamp, sizeof(stamp), "%Y%m%d-%H%M%S", &tm);
	if (dot)
		snprintf(out, size, "%.*s.%s-conflict-%s%s", (int)(dot - rel), rel, whose,
			 stamp, dot);
	else
		snprintf(out, size, "%s.%s-conflict-%s", rel, whose, stamp);
}

static int dirent_type(uint16_t mode)
{
	return LINUX_S_ISREG(mode) ? EXT2_FT_REG_FILE : LINUX_S_ISDIR(mode) ? EXT2_FT_DIR :
	       LINUX_S_ISLNK(mode) ? EXT2_FT_SYMLINK : LINUX_S_ISCHR(mode) ? EXT2_FT_CHRDEV :
	       LINUX_S_ISBLK(mode) ? EXT2_FT_BLKDEV : LINUX_S_ISFIFO(mode) ? EXT2_FT_FIFO :
	       LINUX_S_ISSOCK(mode) ? EXT2_FT_SOCK : EXT2_FT_UNKNOWN;
}

/* A reader's own version of rel renamed to NAME.local-conflict-... in
 * its folder (a name taken already gets -2, -3, ...); name gets the new
 * key.  rel no longer names anything after it. */
static errcode_t move_aside(ext2_filsys fs, const char *rel, const struct owner *o,
			    time_t when, char *name, size_t size)
{
	struct ext2_inode in;
	char path[KEY_MAX], side[KEY_MAX + 64], *base, *sbase;
	ext2_ino_t dir, ino, other;
	errcode_t e;

	snprintf(path, sizeof(path), "%s", rel);
	e = parent_of(fs, path, o, false, &dir, &base);
	if (!e)
		e = ext2fs_lookup(fs, dir, base, (int)strlen(base), NULL, &ino);
	if (!e)
		e = ext2fs_read_inode(fs, ino, &in);
	for (unsigned n = 1; !e; n++) {
		conflict_name(rel, "local", when, name, size);
		if (n > 1) {   /* before the extension, as the stamp */
			char *dot = strrchr(name, '.'), *stamp = strstr(name, ".local-conflict-");
			size_t at = dot && dot > stamp ? (size_t)(dot - name) : strlen(name);
			snprintf(side, sizeof(side), "%.*s-%u%s", (int)at, name, n, name + at);
			snprintf(name, size, "%s", side);
		}
		snprintf(side, sizeof(side), "%s", name);
		sbase = strrchr(side, '/');
		sbase = sbase ? sbase + 1 : side;
		e = ext2fs_lookup(fs, dir, sbase, (int)strlen(sbase), NULL, &other);
		if (e == EXT2_ET_FILE_NOT_FOUND) {
			/* the same folder: a folder moved aside keeps its ".." */
			e = link_name(fs, dir, sbase, ino, dirent_type(in.i_mode));
			if (!e)
				e = ext2fs_unlink(fs, dir, base, ino, 0);
			return e;
		}
	}
	return e;
}

/* -- the copy, changed, and put in place -- */

/* A fault injector for tests/089 (no real part can stop a process at a
 * chosen step): CDISK_FAULT_PULL_KILL=STEP kills the pull there. */
static void fault_point(const char *step)
{
	const char *at = getenv("CDISK_FAULT_PULL_KILL");

	if (at && !strcmp(at, step))
		raise(SIGKILL);
}

static int copy_disk(struct push *p)
{
	int in = open(p->disk, O_RDONLY | O_CLOEXEC), out = -1, err = 0;
	struct stat st;
	off_t at = 0, end;

	if (in < 0 || fstat(in, &st) < 0) {
		err = cd_error(p->ctx, -errno, "cannot read '%s': %s", p->disk, strerror(errno));
		goto out;
	}
	out = open(p->copy, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, st.st_mode & 07777);
	if (out < 0 || ftruncate(out, st.st_size) < 0) {
		err = cd_error(p->ctx, -errno, "cannot write '%s': %s", p->copy, strerror(errno));
		goto out;
	}
	/* holes stay holes: only the data ranges are copied */
	while (err == 0 && (at = lseek(in, at, SEEK_DATA)) >= 0) {
		end = lseek(in, at, SEEK_HOLE);
		if (end < 0)
			end = st.st_size;
		while (at < end) {
			loff_t from = at, to = at;
			ssize_t n = copy_file_range(in, &from, out, &to, (size_t)(end - at), 0);
			if (n <= 0) {
				err = cd_error(p->ctx, n < 0 ? -errno : -EIO, "cannot copy '%s': %s",
					       p->disk, strerror(n < 0 ? errno : EIO));
				break;
			}
			at += n;
		}
	}
	if (err == 0 && errno != ENXIO && at < 0)
		err = cd_error(p->ctx, -errno, "cannot read '%s': %s", p->disk, strerror(errno));
	if (err == 0 && fsync(out) < 0)
		err = cd_error(p->ctx, -errno, "cannot write '%s': %s", p->copy, strerror(errno));
out:
	if (in >= 0)
		close(in);
	if (out >= 0)
		close(out);
	return err;
}

static void report(struct push *p, enum cdisk_files_action what, const char *key,
		   uint64_t size, const char *etag, const char *why)
{
	if (p->o->item)
		p->o->item(p->o->opaque, what, key, size, etag, why);
}

/* One item of the plan on the filesystem; its record appended to old (a
 * later record of a key wins when old is settled). */
static errcode_t apply_item(struct push *p, ext2_filsys fs, const struct owner *o,
			    const struct pull_item *it, time_t started)
{
	struct rec r = { 0 };
	char name[KEY_MAX + 64];
	errcode_t e = 0;

	if (it->cloud) {
		r = *it->cloud;
		r.ino = 0;
		r.ctime = 0;
		snprintf(r.sha, sizeof(r.sha), "%s", it->cloud->kind == 'F' ? it->sha : "-");
	} else {
		r = *it->old;
		r.kind = 'X';
	}
	if (it->aside) {
		e = move_aside(fs, r.rel, o, started, name, sizeof(name));
		if (e)
			return e;
		p->res->kept++;
		report(p, CDISK_FILES_KEPT, name, 0, NULL, r.rel);
	}
	switch (it->what) {
	case DO_WRITE:
		e = put_file(fs, r.rel, it->obj, r.size, it->mtime, o, &r);
		p->res->fetched++;
		p->res->fetched_bytes += r.size;
		report(p, CDISK_FILES_FETCHED, r.rel, r.size, r.etag, NULL);
		break;
	case DO_CONFLICT: {
		struct rec side = { 0 };
		conflict_name(r.rel, "cloud", started, name, sizeof(name));
		e = put_file(fs, name, it->obj, r.size, it->mtime, o, &side);
		/* the record has the cloud's ETag, inode 0: the disk's version
		 * differs from it, so the next push sends the disk's */
		p->res->conflicts++;
		report(p, CDISK_FILES_CONFLICT, name, r.size, r.etag, r.rel);
		break;
	}
	case DO_REMOVE:
		e = remove_file(fs, r.rel, o);
		p->res->removed++;
		report(p, CDISK_FILES_REMOVED, r.rel, r.size, NULL, NULL);
		break;
	case DO_MKDIR:
		e = make_marker(fs, r.rel, o);
		break;
	case DO_RECORD:
		if (it->cloud) {
			struct rec *now = find(&p->now, r.rel);
			if (now) {
				r.ino = now->ino;
				r.ctime = now->ctime;
				r.mtime = now->mtime;
				r.mtime_ns = now->mtime_ns;
			}
		}
		break;
	case DO_NOTHING:
		return 0;
	}
	if (e)
		return e;
	return add_rec(p, &p->upd, &r) < 0 ? ENOMEM : 0;
}

/* old with the pull's records over it: they come after any it holds. */
static int merge_upd(struct push *p)
{
	for (size_t i = 0; i < p->upd.n; i++) {
		int err = add_rec(p, &p->old, &p->upd.v[i]);
		if (err)
			return err;
		p->old.v[p->old.n - 1].seq = SIZE_MAX / 2 + i;
	}
	settle(&p->old);
	return 0;
}

static int apply_plan(struct push *p, const struct plan *pl)
{
	struct ext2_inode root;
	struct owner o;
	struct cdisk *d = NULL;
	ext2_filsys fs = NULL;
	uint64_t offset;
	time_t started = time(NULL);
	errcode_t e = 0;
	int err;

	err = cdisk_open(p->ctx, p->copy, 0, &d);
	if (err == 0)
		err = cd_extfs_partition(p->ctx, d, &offset);
	if (err == 0)
		err = cd_extfs_open(p->ctx, d, offset, true, &fs);
	if (err)
		goto out;
	/* what create gave every file: --owner is the root folder's */
	e = ext2fs_read_bitmaps(fs);
	if (!e)
		e = ext2fs_read_inode(fs, EXT2_ROOT_INO, &root);
	o.uid = inode_uid(root);
	o.gid = inode_gid(root);
	for (size_t i = 0; i < pl->n && !e; i++)
		e = apply_item(p, fs, &o, &pl->v[i], started);
	if (e) {
		err = cd_error(p->ctx, -EIO, "'%s': cannot write the pulled files: %s; the "
			       "disk is unchanged", p->disk, error_message(e));
		goto out;
	}
	e = ext2fs_close2(fs, 0);
	fs = NULL;
	if (e)
		err = cd_error(p->ctx, -EIO, "'%s': cannot write the pulled files: %s; the "
			       "disk is unchanged", p->disk, error_message(e));
out:
	if (fs)
		ext2fs_close2(fs, EXT2_FLAG_FLUSH_NO_SYNC);
	if (d) {
		int c = cdisk_close(d);
		if (err == 0)
			err = c;
	}
	return err;
}

static int commit(struct push *p)
{
	char tmp[PATH_MAX + 8];
	struct stat st;
	FILE *f;
	int err;

	err = merge_upd(p);
	if (err == 0)
		err = write_state(p, &p->old, p->pending);
	if (err)
		return err;
	if (stat(p->copy, &st) < 0)
		return cd_error(p->ctx, -errno, "cannot read '%s': %s", p->copy, strerror(errno));
	snprintf(tmp, sizeof(tmp), "%s.tmp", p->intent);
	f = fopen(tmp, "w");
	if (!f)
		return cd_error(p->ctx, -errno, "cannot write '%s': %s", tmp, strerror(errno));
	fprintf(f, "copy %llu %llu\n", (unsigned long long)st.st_dev,
		(unsigned long long)st.st_ino);
	if (fflush(f) != 0 || fsync(fileno(f)) < 0 || rename(tmp, p->intent) < 0)
		err = cd_error(p->ctx, -errno, "cannot write '%s': %s", p->intent,
			       strerror(errno));
	fclose(f);
	if (err == 0)
		err = sync_dir(p, p->intent);
	fault_point("intent");
	/* the moment the pull happens */
	if (err == 0 && rename(p->copy, p->disk) < 0)
		err = cd_error(p->ctx, -errno, "cannot replace '%s': %s", p->disk,
			       strerror(errno));
	if (err == 0)
		err = sync_dir(p, p->disk);
	fault_point("renamed");
	return err ? err : pull_finish(p, true);
}

static int pull_folder(struct push *p, const char *path)
{
	struct plan pl = { 0 };
	bool disk = false;
	int err;

	err = load_state(p);
	/* This host's uploads are the writer's own changes, not to be fetched
	 * back into it; for a reader they are changes like any other. */
	if (err == 0 && !p->reader)
		err = load_own(p);
	if (err == 0)
		err = cd_s3_folder_open(p->ctx, p->res->uri, &p->f);
	/* the whole listing before the disk is touched: unreachable changes
	 * nothing */
	if (err == 0)
		err = cd_s3_folder_list(p->f, on_cloud, p);
	if (err == 0) {
		settle(&p->cloud);
		err = open_disk(p, path);
	}
	if (err == 0)
		err = check_fs(p);
	if (err == 0)
		err = walk(p, EXT2_ROOT_INO, &(bool){ false });
	if (err == 0)
		err = make_plan(p, &pl);
	for (size_t i = 0; i < pl.n; i++)
		disk |= pl.v[i].what != DO_RECORD && pl.v[i].what != DO_NOTHING;
	if (err == 0 && p->o->dry_run) {
		for (size_t i = 0; i < pl.n; i++) {
			const struct pull_item *it = &pl.v[i];
			const char *rel = it->cloud ? it->cloud->rel : it->old->rel;
			if (it->what == DO_WRITE || it->what == DO_CONFLICT)
				report(p, it->what == DO_WRITE ? CDISK_FILES_FETCHED
							       : CDISK_FILES_CONFLICT,
				       rel, it->cloud->size, it->cloud->etag,
				       it->what == DO_CONFLICT ? rel : NULL);
			else if (it->what == DO_REMOVE)
				report(p, CDISK_FILES_REMOVED, rel, it->old->size, NULL, NULL);
			if (it->aside)
				report(p, CDISK_FILES_KEPT, rel, 0, NULL, rel);
			p->res->kept += it->aside;
			p->res->fetched += it->what == DO_WRITE;
			p->res->conflicts += it->what == DO_CONFLICT;
			p->res->removed += it->what == DO_REMOVE;
		}
	} else if (err == 0 && disk) {
		err = copy_disk(p);
		fault_point("copied");
		if (err == 0)
			err = apply_plan(p, &pl);
		fault_point("applied");
		if (err == 0)
			err = commit(p);
		if (err)
			unlink(p->copy);
	} else if (err == 0 && (pl.n || p->upd.n)) {
		for (size_t i = 0; i < pl.n && !err; i++)
			err = apply_item(p, NULL, NULL, &pl.v[i], 0) ? -ENOMEM : 0;
		if (err == 0)
			err = merge_upd(p);
		if (err == 0)
			err = write_state(p, &p->old, p->state);
		if (err == 0 && unlink(p->journal) < 0 && errno != ENOENT)
			err = cd_error(p->ctx, -errno, "cannot remove '%s': %s", p->journal,
				       strerror(errno));
	}
	free(pl.v);
	if (err == 0 && p->res->conflicts)
		err = cd_error(p->ctx, -EXDEV, "'%s': %llu file%s changed both on the disk and "
			       "in '%s' since the last sync: the disk kept its version%s, the "
			       "cloud's %s saved beside %s as NAME.cloud-conflict-...",
			       p->disk, (unsigned long long)p->res->conflicts,
			       p->res->conflicts == 1 ? "" : "s", p->res->uri,
			       p->res->conflicts == 1 ? "" : "s",
			       p->res->conflicts == 1 ? "is" : "are",
			       p->res->conflicts == 1 ? "it" : "them");
	return err;
}

/* A push or a pull of the writer disk at path: its folder's cache files
 * found, one of them at a time (two would both upload), a pull that a
 * crash cut short finished first. */
static int run_locked(struct cdisk_ctx *ctx, const char *path, struct cdisk *given,
		      const struct cdisk_files_opts *o, struct cdisk_files_result *res,
		      int (*job)(struct push *p, const char *path))
{
	struct push p = { .ctx = ctx, .o = o, .res = res, .journal_fd = -1, .given = given };
	char lock[PATH_MAX];
	int lock_fd = -1, err;

	cd_errbuf()[0] = 0;
	memset(res, 0, sizeof(*res));
	if (!realpath(path, p.disk))
		return cd_error(ctx, -errno, "cannot open '%s': %s", path, strerror(errno));
	err = find_folder(&p);
	res->reader = p.reader;
	/* the disk's own state and lock; the upload log is the folder's */
	if ((err = err ? err : cd_folder_cache_file(ctx, p.sid, ".state", p.state)) ||
	    (err = cd_folder_cache_file(ctx, p.sid, ".pull", p.intent)) ||
	    (err = cd_folder_cache_file(ctx, p.sid, ".state.pull", p.pending)) ||
	    (err = cd_folder_cache_file(ctx, p.sid, ".journal", p.journal)) ||
	    (err = cd_folder_cache_file(ctx, p.folder_id, ".uploads", p.uploads)) ||
	    (err = cd_folder_cache_file(ctx, p.sid, ".lock", lock)))
		return err;
	lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (lock_fd < 0)
		return cd_error(ctx, -errno, "cannot write '%s': %s", lock, strerror(errno));
	if (flock(lock_fd, LOCK_EX | LOCK_NB) < 0) {
		close(lock_fd);
		return cd_error(ctx, -EAGAIN, "'%s': another cdisk-sync --files of it is "
				"running; try later", p.disk);
	}
	err = pull_recover(&p);
	if (err == 0)
		err = job(&p, path);
	if (p.fs)
		ext2fs_close2(p.fs, 0);
	if (p.d && p.d != p.given) {
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
	free_recs(&p.cloud);
	free_recs(&p.upd);
	for (size_t i = 0; i < p.n_own; i++)
		free(p.own[i]);
	free(p.own);
	for (int k = 0; k < 2; k++) {
		for (size_t i = 0; i < p.n_globs[k]; i++)
			free(p.globs[k][i]);
		free(p.globs[k]);
	}
	close(lock_fd);
	return err;
}

int cdisk_sync_files(struct cdisk_ctx *ctx, const char *path,
		     const struct cdisk_files_opts *o, struct cdisk_files_result *res)
{
	return run_locked(ctx, path, NULL, o, res, sync_folder);
}

int cdisk_sync_files_disk(struct cdisk *d, const struct cdisk_files_opts *o,
			  struct cdisk_files_result *res)
{
	return run_locked(d->ctx, cdisk_path(d), d, o, res, sync_folder);
}

int cdisk_pull_files(struct cdisk_ctx *ctx, const char *path,
		     const struct cdisk_files_opts *o, struct cdisk_files_result *res)
{
	return run_locked(ctx, path, NULL, o, res, pull_folder);
}

/* Disks from cloud folders.  The host cache ([cache] dir) holds:
 *   objects/ID        a fetched file (ID: SHA-256 of endpoint, bucket,
 *                     key, ETag and size), ID.sum its SHA-256 and mtime,
 *                     ID.part one being fetched (resumed by a range GET)
 *   images/ID.img     a read-only image: GPT, one ext4 partition built
 *                     with mke2fs -d (ID: SHA-256 of the folder, its state
 *                     and the options that change the image)
 *   images/ID.refs    the disks made over it, one path a line
 *   folders/ID.writer the folder's writer disk
 *   folders/ID.state  what the writer's files were at the last sync (its
 *                     creation is the first), for cdisk-sync --files;
 *                     ID.journal what a sync has done since, ID.uploads
 *                     the ETags this host uploaded (folder-push.c)
 *   folders/ID.r-H.state  the same for each reader disk (H: its path's
 *                     SHA-256), what its files were at the last pull
 *   tmp/              listings and trees while an image is built
 * One lock (the file "lock") makes creates over one cache take turns:
 * the second of two finds what the first fetched and built. */
#include <dirent.h>
#include <ext2fs/ext2fs.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <gnutls/crypto.h>
#include <libgen.h>
#include <limits.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cdisk.h"
#include "ctx.h"
#include "disk.h"
#include "folder.h"
#include "target.h"
#include "text.h"
#include "util.h"

#define PART_OFFSET (1ull << 20)   /* the partition's start, and the room at the end */
#define FETCH_THREADS 8
#define NAME_MAX_EXT4 255

extern char **environ;

struct build {
	struct cdisk_ctx *ctx;
	const struct cdisk_folder_opts *o;
	struct cdisk_folder_result *res;
	struct cd_s3_folder *f;
	char cache[CDISK_MAX_URI + 1];
	char disk[PATH_MAX];          /* the disk's absolute path */
	char folder_id[65], image_id[65];
	char writer[PATH_MAX];        /* the folder's recorded writer, or "" */
	char listing[PATH_MAX + 64];
	uint64_t data_blocks;         /* 4 KiB blocks the files take */
	uint64_t entries;             /* files, and folders made by marker objects */
	gnutls_hash_hd_t state;
};

/* ---- small helpers ---- */

static void hex(const uint8_t *in, size_t n, char *out)
{
	for (size_t i = 0; i < n; i++)
		sprintf(out + 2 * i, "%02x", in[i]);
}

static void sha256_text(const char *text, char out[65])
{
	uint8_t d[32];

	gnutls_hash_fast(GNUTLS_DIG_SHA256, text, strlen(text), d);
	hex(d, sizeof(d), out);
}

/* mkdir -p with mode 0755 whatever the umask: these are the image's
 * folders too. */
static int make_dirs(const char *path, size_t from)
{
	char buf[PATH_MAX];

	if (strlen(path) >= sizeof(buf))
		return -ENAMETOOLONG;
	strcpy(buf, path);
	for (char *p = buf + from; ; p++) {
		if (*p != '/' && *p)
			continue;
		char c = *p;
		*p = '\0';
		if (buf[0] && mkdir(buf, 0755) < 0 && errno != EEXIST)
			return -errno;
		if (buf[0] && chmod(buf, 0755) < 0)
			return -errno;
		if (!c)
			return 0;
		*p = c;
	}
}

static int cache_path(const struct build *b, char *out, const char *fmt, ...)
	CD_PRINTF(3, 4);

static int cache_path(const struct build *b, char *out, const char *fmt, ...)
{
	char rest[PATH_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(rest, sizeof(rest), fmt, ap);
	va_end(ap);
	if ((size_t)snprintf(out, PATH_MAX, "%s/%s", b->cache, rest) >= PATH_MAX)
		return cd_error(b->ctx, -ENAMETOOLONG, "cache path '%s' is too long", b->cache);
	return 0;
}

/* Keys are written one a line: escape what would break the line. */
static void escape_key(const char *in, FILE *out)
{
	for (const unsigned char *s = (const unsigned char *)in; *s; s++)
		if (*s == '%' || *s == '\n' || *s == '\r')
			fprintf(out, "%%%02X", *s);
		else
			fputc(*s, out);
}

static void unescape_key(char *s)
{
	char *w = s;

	for (char *r = s; *r; r++) {
		unsigned v;
		if (*r == '%' && sscanf(r + 1, "%2x", &v) == 1) {
			*w++ = (char)v;
			r += 2;
		} else {
			*w++ = *r;
		}
	}
	*w = '\0';
}

/* A glob with a slash matches the path under the prefix; one without
 * matches the file's own name, in any folder. */
static bool glob_matches(const char *const *globs, const char *rel)
{
	const char *base = strrchr(rel, '/');

	base = base ? base + 1 : rel;
	for (; globs && *globs; globs++)
		if (!fnmatch(*globs, strchr(*globs, '/') ? rel : base, 0))
			return true;
	return false;
}

bool cd_folder_wanted(const char *const *include, const char *const *exclude,
		      const char *rel)
{
	size_t n = strlen(rel);
	bool dir = n && rel[n - 1] == '/', all = !include || !include[0];
	char copy[8192];

	if (dir && !all)
		return false;
	snprintf(copy, sizeof(copy), "%.*s", (int)(dir ? n - 1 : n), rel);
	return (all || glob_matches(include, copy)) && !glob_matches(exclude, copy);
}

/* ---- the listing: filtered, checked, hashed, written to a file ---- */

struct list_state {
	struct build *b;
	FILE *out;
	uint64_t seen;
};

static int check_name(struct build *b, const char *rel)
{
	const char *uri = b->o->uri;

	for (const char *c = rel; *c;) {
		const char *slash = strchr(c, '/');
		size_t n = slash ? (size_t)(slash - c) : strlen(c);

		if (n > NAME_MAX_EXT4)
			return cd_error(b->ctx, -ENAMETOOLONG, "cannot make a disk of '%s': "
					"the name '%.40s...' is %zu bytes long; ext4 holds at "
					"most %d", uri, c, n, NAME_MAX_EXT4);
		if (n == 0 || (n == 1 && c[0] == '.') || (n == 2 && !strncmp(c, "..", 2)))
			return cd_error(b->ctx, -EINVAL, "cannot make a disk of '%s': the "
					"key '%s' is not a file name (an empty, '.' or '..' "
					"part)", uri, rel);
		c += n;
		if (*c == '/')
			c++;
	}
	if (strlen(rel) + strlen(b->cache) + 200 > PATH_MAX)
		return cd_error(b->ctx, -ENAMETOOLONG, "cannot make a disk of '%s': the "
				"path '%.40s...' is too long", uri, rel);
	return 0;
}

static int on_listed(void *opaque, const struct cd_s3_entry *e)
{
	struct list_state *st = opaque;
	struct build *b = st->b;
	const char *rel = e->key + strlen(cd_s3_folder_prefix(b->f));
	size_t n = strlen(rel);
	bool dir = n && rel[n - 1] == '/';
	char relcopy[8192];
	int r;

	st->seen++;
	if (!n || !cd_folder_wanted(b->o->include, b->o->exclude, rel))
		return 0;   /* the folder's own marker, or a key not taken */
	snprintf(relcopy, sizeof(relcopy), "%.*s", (int)(dir ? n - 1 : n), rel);
	r = check_name(b, relcopy);
	if (r < 0)
		return r;
	gnutls_hash(b->state, e->key, strlen(e->key) + 1);
	gnutls_hash(b->state, e->etag, strlen(e->etag) + 1);
	fprintf(st->out, "%c %llu %lld %s ", dir ? 'D' : 'F', (unsigned long long)e->size,
		(long long)e->mtime, e->etag[0] ? e->etag : "-");
	escape_key(e->key, st->out);
	fputc('\n', st->out);
	b->entries++;
	if (dir) {
		b->res->dirs++;
	} else {
		b->res->files++;
		b->res->bytes += e->size;
		b->data_blocks += cd_div_round_up(e->size, 4096);
	}
	return ferror(st->out) ? cd_error(b->ctx, -EIO, "cannot write the listing of "
					  "'%s' to the cache", b->o->uri) : 0;
}

static int list_folder(struct build *b)
{
	struct list_state st = { .b = b };
	uint8_t d[32];
	int r;

	r = cache_path(b, b->listing, "tmp/listing.%d", (int)getpid());
	if (r < 0)
		return r;
	st.out = fopen(b->listing, "w");
	if (!st.out)
		return cd_error(b->ctx, -errno, "cannot write '%s': %s", b->listing,
				strerror(errno));
	gnutls_hash_init(&b->state, GNUTLS_DIG_SHA256);
	r = cd_s3_folder_list(b->f, on_listed, &st);
	gnutls_hash_deinit(b->state, d);
	if (fclose(st.out) != 0 && r == 0)
		r = cd_error(b->ctx, -EIO, "cannot write '%s'", b->listing);
	if (r < 0)
		return r;
	hex(d, sizeof(d), b->res->state);
	if (st.seen == 0)
		return cd_error(b->ctx, -ENOENT, "cannot make a disk of '%s': there is "
				"nothing there (no such folder, or it is empty)", b->o->uri);
	if (b->entries == 0)
		return cd_error(b->ctx, -ENOENT, "cannot make a disk of '%s': no file "
				"there matches --include and --exclude", b->o->uri);
	return 0;
}

/* ---- sizes ---- */

static uint64_t inode_count(const struct build *b, uint64_t size)
{
	uint64_t n = 2 * b->entries + 1024;

	/* mke2fs's own ratio when that gives more: room for new files */
	if (size / 16384 > n)
		n = size / 16384;
	return n > UINT32_MAX ? UINT32_MAX : n;
}

static int choose_size(struct build *b)
{
	uint64_t data = b->data_blocks * 4096, need, want;
	char a[32], c[32];

	/* The files, their inodes, and room for mke2fs's own metadata. */
	need = data + inode_count(b, data) * 256 + data / 64 + (8ull << 20);
	if (b->o->size) {
		if (b->o->size % PART_OFFSET || b->o->size < 16 * PART_OFFSET)
			return cd_error(b->ctx, -EINVAL, "cannot make a disk of '%s': --size "
					"must be a whole number of MiB, at least 16M", b->o->uri);
		if (need + 2 * PART_OFFSET > b->o->size)
			return cd_error(b->ctx, -EFBIG, "cannot make a disk of '%s': its "
					"files need about %s, more than --size %s", b->o->uri,
					cd_format_size(need + 2 * PART_OFFSET, a, sizeof(a)),
					cd_format_size(b->o->size, c, sizeof(c)));
		b->res->size = b->o->size;
		return 0;
	}
	want = data + data / 2 + inode_count(b, data) * 256 + (64ull << 20);
	if (want < need)
		want = need;
	want = cd_round_up(want + 2 * PART_OFFSET, PART_OFFSET);
	b->res->size = want < (1ull << 30) ? 1ull << 30 : want;
	return 0;
}

/* ---- fetching ---- */

struct fetcher {
	struct build *b;
	FILE *in;
	pthread_mutex_t lock;
	int err;
	char msg[CD_ERROR_MAX];
};

struct entry {
	char kind;
	uint64_t size;
	int64_t mtime;
	char etag[80];
	char *key;
};

/* One line of the listing; key points into line. */
static bool parse_entry(char *line, struct entry *e)
{
	unsigned long long size;
	long long mtime;
	int at = 0;
	size_t n = strlen(line);

	if (n && line[n - 1] == '\n')
		line[n - 1] = '\0';
	if (sscanf(line, "%c %llu %lld %79s %n", &e->kind, &size, &mtime, e->etag, &at) != 4 ||
	    !at)
		return false;
	e->size = size;
	e->mtime = mtime;
	if (!strcmp(e->etag, "-"))
		e->etag[0] = '\0';
	e->key = line + at;
	unescape_key(e->key);
	return true;
}

static void object_id(const struct build *b, const struct entry *e, char out[65])
{
	char text[CDISK_MAX_URI * 2 + 8192 + 200];

	snprintf(text, sizeof(text), "%s\n%s\n%s\n%llu", cd_s3_folder_identity(b->f),
		 e->key, e->etag, (unsigned long long)e->size);
	sha256_text(text, out);
}

/* SHA-256 and MD5 of a whole file. */
static int hash_file(const char *path, char sha[65], char md5[33])
{
	gnutls_hash_hd_t hs, hm;
	uint8_t buf[1 << 16], d[32];
	int fd = open(path, O_RDONLY | O_CLOEXEC), r = 0;
	ssize_t n;

	if (fd < 0)
		return -errno;
	gnutls_hash_init(&hs, GNUTLS_DIG_SHA256);
	gnutls_hash_init(&hm, GNUTLS_DIG_MD5);
	while ((n = read(fd, buf, sizeof(buf))) > 0) {
		gnutls_hash(hs, buf, (size_t)n);
		gnutls_hash(hm, buf, (size_t)n);
	}
	if (n < 0)
		r = -errno;
	close(fd);
	gnutls_hash_deinit(hs, d);
	hex(d, 32, sha);
	gnutls_hash_deinit(hm, d);
	hex(d, 16, md5);
	return r;
}

static bool is_md5_etag(const char *etag)
{
	return strlen(etag) == 32 && strspn(etag, "0123456789abcdefABCDEF") == 32;
}

/* A cached file is used only when its size and SHA-256 are still what
 * they were when it was checked against the cloud. */
static bool cached_ok(const char *obj, const struct entry *e)
{
	char sum[PATH_MAX + 8], want[80] = "", sha[65], md5[33];
	struct stat st;
	FILE *f;

	if (stat(obj, &st) < 0 || (uint64_t)st.st_size != e->size)
		return false;
	snprintf(sum, sizeof(sum), "%s.sum", obj);
	f = fopen(sum, "r");
	if (!f)
		return false;
	if (fscanf(f, "%64s", want) != 1)
		want[0] = '\0';
	fclose(f);
	return hash_file(obj, sha, md5) == 0 && !strcmp(sha, want);
}

static int write_sum(const char *obj, const char *sha, int64_t mtime)
{
	char sum[PATH_MAX + 8], tmp[PATH_MAX + 16];
	FILE *f;

	snprintf(sum, sizeof(sum), "%s.sum", obj);
	snprintf(tmp, sizeof(tmp), "%s.sum.tmp", obj);
	f = fopen(tmp, "w");
	if (!f)
		return -errno;
	fprintf(f, "%s %lld\n", sha, (long long)mtime);
	if (fclose(f) != 0)
		return -EIO;
	return rename(tmp, sum) < 0 ? -errno : 0;
}

/* Check what came against the listing and the cloud's checksums. */
static int verify_fetched(struct build *b, const struct entry *e, const char *part,
			  const struct cd_s3_object_meta *m, char sha[65])
{
	char md5[33];
	struct stat st;
	int r;

	if (stat(part, &st) < 0)
		return cd_error(b->ctx, -errno, "cannot read '%s': %s", part, strerror(errno));
	if (m->etag[0] && strcmp(m->etag, e->etag))
		return cd_error(b->ctx, -EAGAIN, "'%s' changed while it was fetched; try "
				"again", e->key);
	if ((uint64_t)st.st_size != e->size)
		return cd_error(b->ctx, -EBADMSG, "'%s' came with %llu bytes; the listing "
				"says %llu", e->key, (unsigned long long)st.st_size,
				(unsigned long long)e->size);
	r = hash_file(part, sha, md5);
	if (r < 0)
		return cd_error(b->ctx, r, "cannot read '%s': %s", part, strerror(-r));
	/* Only a single-part upload's ETag is its MD5. */
	if (is_md5_etag(e->etag) && strcasecmp(md5, e->etag))
		return cd_error(b->ctx, -EBADMSG, "'%s' does not match its MD5 (ETag %s)",
				e->key, e->etag);
	if (m->sha256[0] && strcmp(sha, m->sha256))
		return cd_error(b->ctx, -EBADMSG, "'%s' does not match the SHA-256 in its "
				"metadata", e->key);
	return 0;
}

static int fetch_object(struct build *b, void **session, const struct entry *e,
			const char *obj)
{
	struct cd_s3_object_meta m;
	char part[PATH_MAX + 8], sha[65];
	struct timespec times[2];
	struct stat st;
	int fd, r = 0;

	snprintf(part, sizeof(part), "%s.part", obj);
	fd = open(part, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		return cd_error(b->ctx, -errno, "cannot write '%s': %s", part, strerror(errno));
	for (uint32_t attempt = 0; ; attempt++) {
		uint64_t have = fstat(fd, &st) == 0 ? (uint64_t)st.st_size : 0;
		if (have >= e->size && e->size) {
			ftruncate(fd, 0);   /* too long: not this object's bytes */
			have = 0;
		}
		r = e->size == 0 && have == 0 ? cd_s3_folder_get(b->f, session, e->key, fd, 0, &m)
					       : cd_s3_folder_get(b->f, session, e->key, fd,
								  have, &m);
		if (r == 0 || !cd_target_error_transient(r) ||
		    attempt >= b->ctx->cfg.retries)
			break;
		cd_log(b->ctx, CDISK_LOG_WARNING, "%s; resuming", cd_errbuf());
	}
	if (r == 0)
		r = verify_fetched(b, e, part, &m, sha);
	if (r == -EBADMSG)
		ftruncate(fd, 0);
	if (r == 0) {
		times[0].tv_sec = times[1].tv_sec = m.mtime >= 0 ? m.mtime : e->mtime;
		times[0].tv_nsec = times[1].tv_nsec = 0;
		if (fchmod(fd, 0644) < 0 || futimens(fd, times) < 0)
			r = -errno;
		if (r == 0)
			r = write_sum(obj, sha, times[1].tv_sec);
		if (r == 0 && rename(part, obj) < 0)
			r = -errno;
		if (r < 0)
			r = cd_error(b->ctx, r, "cannot store '%s' in the cache: %s", e->key,
				     strerror(-r));
	}
	close(fd);
	return r;
}

static int fetch_one(struct fetcher *ft, void **session, struct entry *e)
{
	struct build *b = ft->b;
	char id[65], obj[PATH_MAX];
	struct stat st;
	int r;

	object_id(b, e, id);
	r = cache_path(b, obj, "objects/%s", id);
	if (r < 0)
		return r;
	if (stat(obj, &st) == 0) {
		if (cached_ok(obj, e))
			return 0;
		cd_log(b->ctx, CDISK_LOG_WARNING, "the cached copy of '%s' is damaged; "
		       "fetching it again", e->key);
		unlink(obj);
		pthread_mutex_lock(&ft->lock);
		b->res->damaged++;
		pthread_mutex_unlock(&ft->lock);
	}
	r = fetch_object(b, session, e, obj);
	if (r == 0) {
		pthread_mutex_lock(&ft->lock);
		b->res->fetched++;
		b->res->fetched_bytes += e->size;
		pthread_mutex_unlock(&ft->lock);
	}
	return r;
}

static void *fetch_worker(void *opaque)
{
	struct fetcher *ft = opaque;
	void *session = NULL;
	char *line = NULL;
	size_t cap = 0;

	for (;;) {
		struct entry e;
		ssize_t n;
		int r;

		pthread_mutex_lock(&ft->lock);
		n = ft->err ? -1 : getline(&line, &cap, ft->in);
		pthread_mutex_unlock(&ft->lock);
		if (n < 0)
			break;
		if (!parse_entry(line, &e))
			r = cd_error(ft->b->ctx, -EIO, "the listing in the cache is damaged");
		else
			r = e.kind == 'F' ? fetch_one(ft, &session, &e) : 0;
		if (r < 0) {
			pthread_mutex_lock(&ft->lock);
			if (!ft->err) {
				ft->err = r;
				snprintf(ft->msg, sizeof(ft->msg), "%s", cd_errbuf());
			}
			pthread_mutex_unlock(&ft->lock);
		}
	}
	free(line);
	cd_s3_folder_end(ft->b->f, session);
	return NULL;
}

static int fetch_all(struct build *b)
{
	struct fetcher ft = { .b = b };
	pthread_t th[FETCH_THREADS];
	unsigned n = b->ctx->cfg.connections < FETCH_THREADS ? b->ctx->cfg.connections
							     : FETCH_THREADS, started = 0;

	ft.in = fopen(b->listing, "r");
	if (!ft.in)
		return cd_error(b->ctx, -errno, "cannot read '%s': %s", b->listing,
				strerror(errno));
	pthread_mutex_init(&ft.lock, NULL);
	for (unsigned i = 0; i < (n ? n : 1); i++)
		if (pthread_create(&th[i], NULL, fetch_worker, &ft) == 0)
			started++;
	if (!started)
		fetch_worker(&ft);
	for (unsigned i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	pthread_mutex_destroy(&ft.lock);
	fclose(ft.in);
	if (ft.err)
		return cd_error(b->ctx, ft.err, "%s", ft.msg);
	return 0;
}

/* ---- the tree mke2fs copies: hard links to the cached files ---- */

static int link_entry(struct build *b, const char *tree, const struct entry *e)
{
	const char *rel = e->key + strlen(cd_s3_folder_prefix(b->f));
	char path[PATH_MAX], obj[PATH_MAX], id[65];
	size_t base = strlen(tree) + 1;
	int r;

	if ((size_t)snprintf(path, sizeof(path), "%s/%s", tree, rel) >= sizeof(path))
		return cd_error(b->ctx, -ENAMETOOLONG, "the path '%.40s...' is too long", rel);
	if (e->kind == 'D') {
		r = make_dirs(path, base);
	} else {
		char *slash = strrchr(path, '/');
		*slash = '\0';
		r = make_dirs(path, base);
		*slash = '/';
		object_id(b, e, id);
		if (r == 0 && (r = cache_path(b, obj, "objects/%s", id)) == 0 &&
		    link(obj, path) < 0)
			r = -errno;
	}
	if (r == -EEXIST || r == -ENOTDIR)
		return cd_error(b->ctx, -EINVAL, "cannot make a disk of '%s': '%s' is both "
				"a file and a folder", b->o->uri, rel);
	if (r < 0)
		return cd_error(b->ctx, r, "cannot prepare '%s' in the cache: %s", rel,
				strerror(-r));
	return 0;
}

static int build_tree(struct build *b, const char *tree)
{
	FILE *in = fopen(b->listing, "r");
	char *line = NULL;
	size_t cap = 0;
	int r;

	if (!in)
		return cd_error(b->ctx, -errno, "cannot read '%s': %s", b->listing,
				strerror(errno));
	r = make_dirs(tree, 1);
	if (r < 0)
		r = cd_error(b->ctx, r, "cannot make '%s': %s", tree, strerror(-r));
	while (r == 0 && getline(&line, &cap, in) > 0) {
		struct entry e;
		r = parse_entry(line, &e) ? link_entry(b, tree, &e)
					  : cd_error(b->ctx, -EIO, "the listing in the cache "
						     "is damaged");
	}
	free(line);
	fclose(in);
	return r;
}

static int remove_tree(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *de;

	if (!d)
		return unlink(path);
	while ((de = readdir(d))) {
		char sub[PATH_MAX];
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		snprintf(sub, sizeof(sub), "%s/%s", path, de->d_name);
		if (de->d_type == DT_DIR)
			remove_tree(sub);
		else
			unlink(sub);
	}
	closedir(d);
	return rmdir(path);
}

/* ---- the image ---- */

/* Run a tool with its output in log; the last line of it names a failure. */
static int run_tool(struct build *b, char *const argv[], const char *log)
{
	posix_spawn_file_actions_t fa;
	char last[256] = "", line[256];
	int status, r;
	pid_t pid;
	FILE *f;

	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	posix_spawn_file_actions_adddup2(&fa, 1, 2);
	r = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	if (r)
		return cd_error(b->ctx, -r, "cannot run %s: %s", argv[0], strerror(r));
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return cd_error(b->ctx, -errno, "cannot wait for %s", argv[0]);
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return 0;
	f = fopen(log, "r");
	while (f && fgets(line, sizeof(line), f))
		if (line[0] != '\n')
			memcpy(last, line, sizeof(last));
	if (f)
		fclose(f);
	last[strcspn(last, "\n")] = '\0';
	if (strstr(last, "Could not allocate block") || strstr(last, "No space left"))
		return cd_error(b->ctx, -EFBIG, "cannot make a disk of '%s': its files do "
				"not fit in %llu bytes", b->o->uri,
				(unsigned long long)b->res->size);
	return cd_error(b->ctx, -EIO, "cannot make the image of '%s': %s failed: %s",
			b->o->uri, argv[0], last[0] ? last : "no message");
}

/* mke2fs -d copies owners from the tree; --owner is set here, through
 * libext2fs, so that it needs no root and no chown of the cache. */
static int set_owners(struct build *b, const char *img)
{
	ext2_filsys fs;
	ext2_inode_scan scan;
	struct ext2_inode inode;
	ext2_ino_t ino;
	char opts[64];
	errcode_t err;

	snprintf(opts, sizeof(opts), "offset=%llu", (unsigned long long)PART_OFFSET);
	err = ext2fs_open2(img, opts, EXT2_FLAG_RW | EXT2_FLAG_64BITS, 0, 0,
			   unix_io_manager, &fs);
	if (err)
		return cd_error(b->ctx, -EIO, "cannot open the new image '%s': %s", img,
				error_message(err));
	err = ext2fs_open_inode_scan(fs, 0, &scan);
	while (!err && !(err = ext2fs_get_next_inode(scan, &ino, &inode)) && ino) {
		if (!inode.i_links_count || inode.i_dtime)
			continue;
		if (ino != EXT2_ROOT_INO && ino < EXT2_FIRST_INODE(fs->super))
			continue;
		if (ino == EXT2_FIRST_INODE(fs->super) && LINUX_S_ISDIR(inode.i_mode))
			continue;   /* lost+found (mke2fs's first inode) stays root's */
		inode.i_uid = (uint16_t)b->o->uid;
		ext2fs_set_i_uid_high(inode, b->o->uid >> 16);
		inode.i_gid = (uint16_t)b->o->gid;
		ext2fs_set_i_gid_high(inode, b->o->gid >> 16);
		err = ext2fs_write_inode(fs, ino, &inode);
	}
	if (scan)
		ext2fs_close_inode_scan(scan);
	if (!err)
		err = ext2fs_close2(fs, 0);
	else
		ext2fs_close2(fs, 0);
	if (err)
		return cd_error(b->ctx, -EIO, "cannot set owners in '%s': %s", img,
				error_message(err));
	return 0;
}

static int build_image(struct build *b, const char *img)
{
	char tree[PATH_MAX], tmp[PATH_MAX], log[PATH_MAX], inodes[24], blocks[24];
	char ext[96], last[48];
	uint64_t fs_bytes = b->res->size - 2 * PART_OFFSET;
	int fd = -1, r;

	if ((r = cache_path(b, tree, "tmp/%s.tree", b->image_id)) < 0 ||
	    (r = cache_path(b, tmp, "tmp/%s.img", b->image_id)) < 0 ||
	    (r = cache_path(b, log, "tmp/%s.log", b->image_id)) < 0)
		return r;
	remove_tree(tree);
	r = build_tree(b, tree);
	if (r < 0)
		goto out;
	unlink(tmp);
	fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0 || ftruncate(fd, (off_t)b->res->size) < 0) {
		r = cd_error(b->ctx, -errno, "cannot make '%s': %s", tmp, strerror(errno));
		goto out;
	}
	snprintf(inodes, sizeof(inodes), "%llu",
		 (unsigned long long)inode_count(b, fs_bytes));
	snprintf(blocks, sizeof(blocks), "%llu", (unsigned long long)(fs_bytes / 4096));
	snprintf(ext, sizeof(ext), "offset=%llu,root_owner=%u:%u",
		 (unsigned long long)PART_OFFSET, b->o->uid, b->o->gid);
	char *mkfs[] = { "mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-N", inodes,
			 "-m", "0", "-L", "cdisk-folder", "-E", ext, "-d", tree, tmp,
			 blocks, NULL };
	r = run_tool(b, mkfs, log);
	if (r < 0)
		goto out;
	/* The table after the filesystem: mke2fs leaves the ends alone, and
	 * nothing it does can then touch the table. */
	snprintf(last, sizeof(last), "1:%llu:%llu",
		 (unsigned long long)(PART_OFFSET / 512),
		 (unsigned long long)((b->res->size - PART_OFFSET) / 512 - 1));
	char *gpt[] = { "sgdisk", "-o", "-n", last, "-t", "1:8300", "-c", "1:cdisk-folder",
			tmp, NULL };
	r = run_tool(b, gpt, log);
	if (r == 0)
		r = set_owners(b, tmp);
	if (r == 0 && (fsync(fd) < 0 || fchmod(fd, 0444) < 0 || rename(tmp, img) < 0))
		r = cd_error(b->ctx, -errno, "cannot store the image '%s': %s", img,
			     strerror(errno));
out:
	if (fd >= 0)
		close(fd);
	unlink(tmp);
	unlink(log);
	remove_tree(tree);
	return r;
}

/* ---- users of images, the writer, the bound ---- */

/* Whether the disk at path is still an overlay over img. */
static bool disk_uses(struct cdisk_ctx *ctx, const char *path, const char *img)
{
	char saved[CD_ERROR_MAX];
	struct cdisk *d;
	bool yes;

	snprintf(saved, sizeof(saved), "%s", cd_errbuf());
	if (cdisk_open(ctx, path, CDISK_OPEN_CONFIG_ONLY, &d) < 0) {
		snprintf(cd_errbuf(), CD_ERROR_MAX, "%s", saved);
		return false;
	}
	yes = !img || !strcmp(d->sb.base, img);
	cd_disk_free(d);
	return yes;
}

/* The list of disks made over an image: IMG.refs beside IMG.img. */
static void refs_path(const char *img, char *out, size_t size)
{
	snprintf(out, size, "%.*s.refs", (int)strlen(img) - 4, img);
}

static bool image_in_use(struct cdisk_ctx *ctx, const char *img)
{
	char refs[PATH_MAX + 8], *line = NULL;
	size_t cap = 0;
	bool used = false;
	ssize_t n;
	FILE *f;

	refs_path(img, refs, sizeof(refs));
	f = fopen(refs, "r");
	while (f && !used && (n = getline(&line, &cap, f)) > 0) {
		line[strcspn(line, "\n")] = '\0';
		used = disk_uses(ctx, line, img);
	}
	free(line);
	if (f)
		fclose(f);
	return used;
}

static int add_ref(struct build *b, const char *img)
{
	char refs[PATH_MAX + 8], *line = NULL;
	size_t cap = 0;
	bool have = false;
	FILE *f;

	refs_path(img, refs, sizeof(refs));
	f = fopen(refs, "a+");
	if (!f)
		return cd_error(b->ctx, -errno, "cannot write '%s': %s", refs, strerror(errno));
	rewind(f);
	while (!have && getline(&line, &cap, f) > 0) {
		line[strcspn(line, "\n")] = '\0';
		have = !strcmp(line, b->disk);
	}
	free(line);
	if (!have)
		fprintf(f, "%s\n", b->disk);
	if (fclose(f) != 0)
		return cd_error(b->ctx, -EIO, "cannot write '%s'", refs);
	return 0;
}

static int check_writer(struct build *b, char *wfile)
{
	const char *other = b->writer;
	FILE *f;
	int r = cache_path(b, wfile, "folders/%s.writer", b->folder_id);

	if (r < 0)
		return r;
	f = fopen(wfile, "r");
	if (f) {
		if (!fgets(b->writer, sizeof(b->writer), f))
			b->writer[0] = '\0';
		fclose(f);
	}
	b->writer[strcspn(b->writer, "\n")] = '\0';
	if (b->o->writer && other[0] && strcmp(other, b->disk) &&
	    disk_uses(b->ctx, other, NULL))
		return cd_error(b->ctx, -EBUSY, "cannot make '%s' a writer of '%s': "
				"'%s' is its writer", b->disk, b->o->uri, other);
	return 0;
}

/* A disk made anew where another was: the cache's records of the one
 * before (a reader's state, or a writer record naming its path, of this
 * folder or another) go, or a sync would take this disk for it. */
static int forget_disk(struct build *b)
{
	char dir[PATH_MAX], file[PATH_MAX + 300], line[PATH_MAX + 2], tail[CD_FOLDER_SID_MAX];
	struct dirent *de;
	size_t tn;
	DIR *d;
	FILE *f;
	int r = cache_path(b, dir, "folders");

	if (r < 0)
		return r;
	cd_folder_reader_id("", b->disk, tail);   /* ".r-H" */
	tn = strlen(tail);
	if (!(d = opendir(dir)))
		return cd_error(b->ctx, -errno, "cannot read '%s': %s", dir, strerror(errno));
	while ((de = readdir(d))) {
		const char *rest = de->d_name + 64;
		bool mine = false;

		if (strlen(de->d_name) < 64 + 7)
			continue;
		snprintf(file, sizeof(file), "%s/%s", dir, de->d_name);
		if (strlen(rest) > tn && !strncmp(rest, tail, tn) && rest[tn] == '.') {
			mine = true;
		} else if (!strcmp(rest, ".writer") && (f = fopen(file, "r"))) {
			mine = fgets(line, sizeof(line), f) &&
			       (line[strcspn(line, "\n")] = '\0', !strcmp(line, b->disk));
			fclose(f);
		}
		if (mine && unlink(file) < 0 && errno != ENOENT) {
			r = cd_error(b->ctx, -errno, "cannot remove '%s': %s", file,
				     strerror(errno));
			break;
		}
	}
	closedir(d);
	return r;
}

static int record_writer(struct build *b, const char *wfile)
{
	char tmp[PATH_MAX + 8];
	FILE *f;

	snprintf(tmp, sizeof(tmp), "%s.tmp", wfile);
	f = fopen(tmp, "w");
	if (!f || fprintf(f, "%s\n", b->disk) < 0 || fclose(f) != 0 ||
	    rename(tmp, wfile) < 0)
		return cd_error(b->ctx, -errno, "cannot record the writer in '%s': %s",
				wfile, strerror(errno));
	return 0;
}

struct cached {
	time_t used;
	uint64_t bytes;
	char name[72];
	bool image;
};

static int by_age(const void *a, const void *b)
{
	const struct cached *x = a, *y = b;

	return x->used < y->used ? -1 : x->used > y->used;
}

/* What is in one of the cache's folders; *list grows. */
static int scan_dir(struct build *b, const char *sub, bool images, struct cached **list,
		    size_t *n, size_t *cap)
{
	char dir[PATH_MAX], path[PATH_MAX + 300];
	struct dirent *de;
	DIR *d;
	int r = cache_path(b, dir, "%s", sub);

	if (r < 0 || !(d = opendir(dir)))
		return r;
	while ((de = readdir(d))) {
		struct cached c = { .image = images };
		struct stat st;
		size_t len = strlen(de->d_name);

		if (de->d_name[0] == '.' || len >= sizeof(c.name))
			continue;
		if (images ? len < 4 || strcmp(de->d_name + len - 4, ".img")
			   : strchr(de->d_name, '.') != NULL)
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		if (stat(path, &st) < 0)
			continue;
		c.used = st.st_ctime;
		c.bytes = (uint64_t)st.st_blocks * 512;
		memcpy(c.name, de->d_name, len + 1);
		if (*n == *cap) {
			struct cached *bigger = realloc(*list, (*cap * 2 + 64) * sizeof(**list));
			if (!bigger) {
				closedir(d);
				return cd_error(b->ctx, -ENOMEM, "out of memory");
			}
			*list = bigger;
			*cap = *cap * 2 + 64;
		}
		(*list)[(*n)++] = c;
	}
	closedir(d);
	return 0;
}

static void evict(struct build *b, const struct cached *c)
{
	char path[PATH_MAX], side[PATH_MAX + 8];

	cache_path(b, path, "%s/%s", c->image ? "images" : "objects", c->name);
	unlink(path);
	snprintf(side, sizeof(side), c->image ? "%.*s.refs" : "%.*s.sum",
		 (int)(strlen(path) - (c->image ? 4 : 0)), path);
	unlink(side);
}

/* Usage, and eviction down to max_size: cached files first (an image
 * needs them no more), oldest first; then images no disk is over. */
static int cache_usage(struct build *b, struct cdisk_cache_usage *u, bool trim)
{
	struct cached *list = NULL;
	size_t n = 0, cap = 0;
	uint64_t total = 0;
	char img[PATH_MAX];
	int r;

	memset(u, 0, sizeof(*u));
	u->max_size = b->ctx->cfg.cache_max_size;
	r = scan_dir(b, "objects", false, &list, &n, &cap);
	if (r == 0)
		r = scan_dir(b, "images", true, &list, &n, &cap);
	if (r < 0)
		goto out;
	for (size_t i = 0; i < n; i++)
		total += list[i].bytes;
	qsort(list, n, sizeof(*list), by_age);
	for (int pass = 0; trim && pass < 2 && total > u->max_size; pass++)
		for (size_t i = 0; i < n && total > u->max_size; i++) {
			if (list[i].image != (pass == 1) || !list[i].name[0])
				continue;
			cache_path(b, img, "images/%s", list[i].name);
			if (list[i].image && image_in_use(b->ctx, img))
				continue;
			evict(b, &list[i]);
			total -= list[i].bytes;
			list[i].bytes = 0;
			list[i].name[0] = '\0';
			u->evicted++;
		}
	for (size_t i = 0; i < n; i++) {
		if (!list[i].name[0])
			continue;
		if (list[i].image) {
			u->images++;
			u->image_bytes += list[i].bytes;
			cache_path(b, img, "images/%s", list[i].name);
			u->images_in_use += image_in_use(b->ctx, img);
		} else {
			u->objects++;
			u->object_bytes += list[i].bytes;
		}
	}
	if (trim && total > u->max_size)
		cd_log(b->ctx, CDISK_LOG_WARNING, "the cache '%s' holds more than its "
		       "max_size: what is left is in use", b->cache);
out:
	free(list);
	return r;
}

/* ---- the whole ---- */

static int open_cache(struct build *b, int *lock_fd)
{
	static const char *const subs[] = { "objects", "images", "folders", "tmp" };
	char path[PATH_MAX];
	int r;

	snprintf(b->cache, sizeof(b->cache), "%s", b->ctx->cfg.cache_dir);
	for (size_t i = 0; i < CD_ARRAY_SIZE(subs); i++) {
		if ((r = cache_path(b, path, "%s", subs[i])) < 0)
			return r;
		r = make_dirs(path, 1);
		if (r < 0)
			return cd_error(b->ctx, r, "cannot use the cache '%s': %s", b->cache,
					strerror(-r));
	}
	cache_path(b, path, "lock");
	*lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (*lock_fd < 0 || flock(*lock_fd, LOCK_EX) < 0)
		return cd_error(b->ctx, -errno, "cannot lock the cache '%s': %s", b->cache,
				strerror(errno));
	return 0;
}

static int disk_path(struct build *b, const char *path)
{
	char *copy = strdup(path), *dir, real[PATH_MAX];
	int r;

	if (!copy)
		return cd_error(b->ctx, -ENOMEM, "out of memory");
	dir = dirname(copy);
	if (!realpath(dir, real)) {
		free(copy);
		return cd_error(b->ctx, -errno, "cannot create '%s': %s", path,
				strerror(errno));
	}
	free(copy);
	copy = strdup(path);
	if (!copy)
		return cd_error(b->ctx, -ENOMEM, "out of memory");
	r = (size_t)snprintf(b->disk, sizeof(b->disk), "%s/%s", strcmp(real, "/") ? real : "",
			     basename(copy)) >= sizeof(b->disk) ? -ENAMETOOLONG : 0;
	free(copy);
	return r < 0 ? cd_error(b->ctx, r, "cannot create '%s': path too long", path) : 0;
}

static void image_key(struct build *b)
{
	char text[CDISK_MAX_URI * 2 + 512];

	snprintf(text, sizeof(text), "%s\n%s\nsize %llu\nowner %u:%u\nfs ext4\nv1",
		 cd_s3_folder_identity(b->f), b->res->state,
		 (unsigned long long)b->o->size, b->o->uid, b->o->gid);
	sha256_text(text, b->image_id);
}

/* ---- the writer's first state: the folder as the image holds it ---- */

int cd_folder_cache_file(struct cdisk_ctx *ctx, const char *folder_id,
			 const char *suffix, char *out)
{
	if ((size_t)snprintf(out, PATH_MAX, "%s/folders/%s%s", ctx->cfg.cache_dir,
			     folder_id, suffix) >= PATH_MAX)
		return cd_error(ctx, -ENAMETOOLONG, "cache path '%s' is too long",
				ctx->cfg.cache_dir);
	return 0;
}

void cd_folder_reader_id(const char *folder_id, const char *disk,
			 char out[CD_FOLDER_SID_MAX])
{
	char h[65];

	sha256_text(disk, h);
	snprintf(out, CD_FOLDER_SID_MAX, "%s.r-%s", folder_id, h);
}

void cd_folder_escape(const char *in, FILE *out)
{
	escape_key(in, out);
}

void cd_folder_unescape(char *s)
{
	unescape_key(s);
}

/* One object into the cache for a pull, checked as a create checks it;
 * obj gets its path, sha and mtime what its .sum says. */
int cd_folder_fetch(struct cdisk_ctx *ctx, struct cd_s3_folder *f, void **session,
		    const char *key, const char *etag, uint64_t size, int64_t mtime,
		    char *obj, char sha[65], int64_t *mtime_out, bool *fetched)
{
	struct build b = { .ctx = ctx, .f = f };
	struct entry e = { .kind = 'F', .size = size, .mtime = mtime, .key = (char *)key };
	char id[65], sum[PATH_MAX + 8];
	long long when = mtime;
	FILE *in;
	int r;

	*fetched = false;
	snprintf(b.cache, sizeof(b.cache), "%s", ctx->cfg.cache_dir);
	snprintf(e.etag, sizeof(e.etag), "%s", etag);
	object_id(&b, &e, id);
	if ((r = cache_path(&b, obj, "objects/%s", id)) < 0)
		return r;
	if (!cached_ok(obj, &e)) {
		unlink(obj);
		r = fetch_object(&b, session, &e, obj);
		if (r < 0)
			return r;
		*fetched = true;
	}
	snprintf(sum, sizeof(sum), "%s.sum", obj);
	in = fopen(sum, "r");
	if (!in || fscanf(in, "%64s %lld", sha, &when) < 1) {
		if (in)
			fclose(in);
		return cd_error(ctx, -EIO, "cannot read '%s'", sum);
	}
	fclose(in);
	*mtime_out = when;
	return 0;
}

/* The ext4 UUID of the image's filesystem: a reformatted disk has
 * another. */
static int image_uuid(struct build *b, char out[33])
{
	uint8_t uuid[16];
	int fd = open(b->res->image, O_RDONLY | O_CLOEXEC), r;

	if (fd < 0)
		return cd_error(b->ctx, -errno, "cannot read '%s': %s", b->res->image,
				strerror(errno));
	r = cd_pread_full(fd, uuid, sizeof(uuid), PART_OFFSET + 1024 + 104);
	close(fd);
	if (r < 0)
		return cd_error(b->ctx, r, "cannot read '%s': %s", b->res->image,
				strerror(-r));
	hex(uuid, sizeof(uuid), out);
	return 0;
}

/* The content's SHA-256 when the cache still knows it, else "-": the
 * first sync then hashes the file. */
static void known_sha(struct build *b, const struct entry *e, char out[65])
{
	char id[65], obj[PATH_MAX];
	FILE *f;

	strcpy(out, "-");
	object_id(b, e, id);
	if (cache_path(b, obj, "objects/%s.sum", id) < 0 || !(f = fopen(obj, "r")))
		return;
	if (fscanf(f, "%64s", out) != 1 || strlen(out) != 64)
		strcpy(out, "-");
	fclose(f);
}

static int write_state_lines(struct build *b, FILE *in, FILE *out)
{
	size_t plen = strlen(cd_s3_folder_prefix(b->f)), cap = 0;
	char *line = NULL, sha[65];
	struct entry e;
	int r = 0;

	while (getline(&line, &cap, in) > 0) {
		if (!parse_entry(line, &e) || strlen(e.key) < plen) {
			r = cd_error(b->ctx, -EIO, "the listing in the cache is damaged");
			break;
		}
		if (strlen(e.key) == plen)
			continue;   /* the folder's own marker */
		/* a folder's marker keeps its slash: the key under the prefix */
		char *rel = e.key + plen;
		if (e.kind == 'D')
			strcpy(sha, "-");
		else
			known_sha(b, &e, sha);
		/* inode 0: never matched, so the first sync hashes every file */
		fprintf(out, "%c %llu %lld 0 0 %s %s ", e.kind, (unsigned long long)e.size,
			(long long)e.mtime, e.etag[0] ? e.etag : "-", sha);
		escape_key(rel, out);
		fputc('\n', out);
	}
	free(line);
	return r;
}

/* folders/SID.state (the writer's, or this reader's), written whole and
 * renamed into place; the journal of the disk before goes. */
static int record_state(struct build *b, const char *path, bool created, bool writer)
{
	char state[PATH_MAX], tmp[PATH_MAX + 8], journal[PATH_MAX], uuid[33];
	char sid[CD_FOLDER_SID_MAX];
	struct stat st;
	FILE *in = NULL, *out = NULL;
	int r;

	if (writer)
		snprintf(sid, sizeof(sid), "%s", b->folder_id);
	else
		cd_folder_reader_id(b->folder_id, path, sid);
	if ((r = cd_folder_cache_file(b->ctx, sid, ".state", state)) < 0 ||
	    (r = cd_folder_cache_file(b->ctx, sid, ".journal", journal)) < 0)
		return r;
	/* The same disk: its syncs and pulls are recorded already (a reader
	 * made before readers kept a state gets one now). */
	if (!created && stat(state, &st) == 0)
		return 0;
	if ((r = image_uuid(b, uuid)) < 0)
		return r;
	snprintf(tmp, sizeof(tmp), "%s.tmp", state);
	in = fopen(b->listing, "r");
	out = fopen(tmp, "w");
	if (!in || !out) {
		r = cd_error(b->ctx, -errno, "cannot write '%s': %s", tmp, strerror(errno));
		goto out;
	}
	fprintf(out, "cdisk-folder-state 1\nuri %s\ndisk %s\nuuid %s\n", b->o->uri,
		path, uuid);
	/* what the disk takes of the folder: a pull takes no more */
	for (int k = 0; k < 2; k++)
		for (const char *const *g = k ? b->o->exclude : b->o->include; g && *g; g++) {
			fputs(k ? "exclude " : "include ", out);
			escape_key(*g, out);
			fputc('\n', out);
		}
	r = write_state_lines(b, in, out);
	if (r == 0 && (fflush(out) != 0 || fsync(fileno(out)) < 0))
		r = cd_error(b->ctx, -errno, "cannot write '%s': %s", tmp, strerror(errno));
	if (fclose(out) != 0 && r == 0)
		r = cd_error(b->ctx, -EIO, "cannot write '%s'", tmp);
	out = NULL;
	if (r == 0 && (unlink(journal) < 0 && errno != ENOENT))
		r = cd_error(b->ctx, -errno, "cannot remove '%s': %s", journal, strerror(errno));
	if (r == 0 && rename(tmp, state) < 0)
		r = cd_error(b->ctx, -errno, "cannot write '%s': %s", state, strerror(errno));
out:
	if (in)
		fclose(in);
	if (out)
		fclose(out);
	if (r < 0)
		unlink(tmp);
	return r;
}

static int make_disk(struct build *b, const char *path, char *wfile)
{
	struct cdisk_create_opts co = { .base = b->res->image };
	struct stat st;
	int r, created;
	bool writer;

	r = list_folder(b);
	if (r < 0)
		return r;
	image_key(b);
	r = cache_path(b, b->res->image, "images/%s.img", b->image_id);
	if (r < 0)
		return r;
	if (stat(b->res->image, &st) == 0) {
		b->res->image_reused = true;
		b->res->size = (uint64_t)st.st_size;
	} else {
		r = choose_size(b);
		if (r == 0)
			r = fetch_all(b);
		if (r == 0)
			r = build_image(b, b->res->image);
		if (r < 0)
			return r;
	}
	r = cdisk_create(b->ctx, path, &co);
	if (r < 0)
		return r;
	created = r;
	/* the writer made again without --writer is still the writer */
	writer = b->o->writer || (created == 1 && !strcmp(b->writer, b->disk));
	r = add_ref(b, b->res->image);
	if (r == 0 && created == 0)
		r = forget_disk(b);
	if (r == 0 && b->o->writer)
		r = record_writer(b, wfile);
	if (r == 0)
		r = record_state(b, b->disk, created == 0, writer);
	return r < 0 ? r : created;
}

int cdisk_create_from_folder(struct cdisk_ctx *ctx, const char *path,
			     const struct cdisk_folder_opts *o,
			     struct cdisk_folder_result *res)
{
	struct build b = { .ctx = ctx, .o = o, .res = res };
	char wfile[PATH_MAX];
	int lock_fd = -1, r;

	cd_errbuf()[0] = 0;
	memset(res, 0, sizeof(*res));
	if (o->fs && strcmp(o->fs, "ext4"))
		return cd_error(ctx, -EINVAL, "cannot make a disk of '%s': filesystem '%s' "
				"is not supported (ext4 is)", o->uri, o->fs);
	r = disk_path(&b, path);
	if (r == 0)
		r = cd_s3_folder_open(ctx, o->uri, &b.f);
	if (r < 0)
		return r;
	sha256_text(cd_s3_folder_identity(b.f), b.folder_id);
	r = open_cache(&b, &lock_fd);
	if (r == 0)
		r = check_writer(&b, wfile);
	if (r == 0)
		r = make_disk(&b, path, wfile);
	if (b.listing[0])
		unlink(b.listing);
	if (r >= 0) {
		char saved[CD_ERROR_MAX];
		snprintf(saved, sizeof(saved), "%s", cd_errbuf());
		int u = cache_usage(&b, &res->cache, true);
		if (u < 0)
			cd_log(ctx, CDISK_LOG_WARNING, "%s", cd_errbuf());
		snprintf(cd_errbuf(), CD_ERROR_MAX, "%s", saved);
	}
	if (lock_fd >= 0)
		close(lock_fd);
	cd_s3_folder_close(b.f);
	return r;
}

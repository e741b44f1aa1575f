/* A pool of per-user images (cdisk-serve --pool DIR):
 *
 *   DIR/alice/desktop.cdisk    export alice/desktop
 *   DIR/shared/golden.cdisk    export shared/golden, read-only
 *
 * A scan walks the folder: names that are not cd_pool_name_valid, and
 * folders or files that are symbolic links, are passed over with the
 * reason; the rest are opened and served.  An image gone from the folder
 * leaves the list at once (new opens fail as for any missing export), but
 * its disk stays open for the connections that have it until the last
 * ends.  Scans run on the control verb "rescan" and, a moment after the
 * folder last changed (inotify), from the server's loop: cdisk-create
 * links a new disk in and opens it once more to write its first backup,
 * and a scan in between would take that open from it. */
#include <ctype.h>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cdisk.h"
#include "ctx.h"
#include "format.h"
#include "pool.h"
#include "quota.h"
#include "text.h"
#include "users.h"
#include "util.h"

/* How long the folder must be quiet before a scan, and how soon a disk
 * that could not be opened (another program had it) is tried again. */
#define SETTLE_MS 300
#define RETRY_MS 5000

#define DIR_EVENTS (IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | \
		    IN_CLOSE_WRITE | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF)

struct entry {
	struct cd_export exp;   /* first: an export is its entry */
	struct cd_pool *pool;
	dev_t dev;
	ino_t ino;
	uint64_t size;          /* its virtual size, for quota_size */
	unsigned refs;          /* the list's, and each holder's (lock) */
	bool seen;              /* by the scan under way */
	struct entry *next;
};

/* A user's quotas (the users file's quota_size and quota_used): the
 * space quota their writable images count against, kept for as long as
 * the pool (an image's disk holds a reference too). */
struct pool_user {
	struct cd_quota *used;
	uint64_t size_limit;    /* 0: none */
	struct pool_user *next;
};

struct cd_pool {
	struct cdisk_ctx *ctx;
	struct pool_user *users;    /* under lock */
	char *dir;              /* its real path */
	bool read_only;         /* every image, not only shared/'s */
	int ifd;                /* inotify; -1: none */
	uint64_t scan_at_ms;    /* 0: no scan due */
	pthread_mutex_t scan_lock;  /* one scan, create or delete at a time */
	pthread_mutex_t lock;   /* list and refs; never held across I/O */
	struct entry *list;
};

/* One file or folder a walk found. */
struct found {
	char user[CD_USER_NAME_MAX + 1];
	char image[CD_POOL_IMAGE_MAX + 1];
	char export_name[CD_USER_NAME_MAX + CD_POOL_IMAGE_MAX + 2];
	char path[PATH_MAX];
	char skipped[300];      /* empty: may be served */
	bool shared;
	dev_t dev;
	ino_t ino;
	uint64_t size, used;
};

struct walk {
	struct found *v;
	size_t n;
};

static int rescan_locked(struct cd_pool *p, struct cd_pool_scan *res);

/* ---- names ---- */

bool cd_pool_name_valid(const char *name, size_t max)
{
	size_t n = strnlen(name, max + 1);

	if (n == 0 || n > max || name[0] == '.' || name[0] == '-')
		return false;
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)name[i]) && !strchr("._-", name[i]))
			return false;
	return true;
}

bool cd_pool_split_export(const char *export, char *user, size_t ulen, char *image,
			  size_t ilen)
{
	const char *slash = strchr(export, '/');
	size_t n;

	if (!slash)
		return false;
	n = (size_t)(slash - export);
	if (n >= ulen || strlen(slash + 1) >= ilen)
		return false;
	memcpy(user, export, n);
	user[n] = 0;
	snprintf(image, ilen, "%s", slash + 1);
	return cd_pool_name_valid(user, CD_USER_NAME_MAX) &&
	       cd_pool_name_valid(image, CD_POOL_IMAGE_MAX);
}

/* A name for a message: control characters and the overly long shown
 * harmlessly. */
static void printable(const char *name, char *out, size_t len)
{
	size_t i = 0;

	for (; *name && i + 5 < len && i < 80; name++)
		out[i++] = isprint((unsigned char)*name) ? *name : '?';
	if (*name)
		out[i++] = '.', out[i++] = '.', out[i++] = '.';
	out[i] = 0;
}

/* ---- walking the folder ---- */

static struct found *add_found(struct walk *w)
{
	struct found *v = realloc(w->v, (w->n + 1) * sizeof(*v));

	if (!v)
		return NULL;
	w->v = v;
	memset(&v[w->n], 0, sizeof(v[w->n]));
	return &v[w->n++];
}

static int skip(struct walk *w, const char *user, const char *name, const char *fmt, ...)
	CD_PRINTF(4, 5);

static int skip(struct walk *w, const char *user, const char *name, const char *fmt, ...)
{
	struct found *f = add_found(w);
	char u[96], n[96];
	va_list ap;

	if (!f)
		return -ENOMEM;
	printable(user, u, sizeof(u));
	printable(name ? name : "", n, sizeof(n));
	snprintf(f->export_name, sizeof(f->export_name), "%s%s%s", u, name ? "/" : "", n);
	snprintf(f->user, sizeof(f->user), "%.*s", (int)sizeof(f->user) - 1, u);
	snprintf(f->image, sizeof(f->image), "%s", n);
	va_start(ap, fmt);
	vsnprintf(f->skipped, sizeof(f->skipped), fmt, ap);
	va_end(ap);
	return 0;
}

/* The disk's size from its newer superblock, without opening (and so
 * locking) it: a served disk is listed too. */
static uint64_t disk_size(int dfd, const char *name)
{
	int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
	uint64_t size = 0, seq = 0;
	uint8_t *buf = malloc(CD_SB_SIZE);

	for (int slot = 0; fd >= 0 && buf && slot < 2; slot++) {
		struct cd_superblock sb;
		const char *why;
		if (cd_pread_full(fd, buf, CD_SB_SIZE, (uint64_t)slot * CD_SB_SIZE) == 0 &&
		    cd_sb_decode(buf, &sb, &why) == 0 && (size == 0 || sb.seq > seq)) {
			size = sb.size;
			seq = sb.seq;
		}
	}
	free(buf);
	if (fd >= 0)
		close(fd);
	return size;
}

static int walk_image(struct walk *w, const char *dir, const char *user, int ufd,
		      const char *name)
{
	size_t n = strlen(name), sl = strlen(CD_POOL_SUFFIX);
	char image[CD_POOL_IMAGE_MAX + 1];
	struct found *f;
	struct stat st;

	/* Hidden files are cdisk-create's own until it links the disk in. */
	if (name[0] == '.' || n <= sl || strcmp(name + n - sl, CD_POOL_SUFFIX) != 0)
		return 0;
	if (n - sl > CD_POOL_IMAGE_MAX)
		return skip(w, user, name, "the image name is longer than %d characters",
			    CD_POOL_IMAGE_MAX);
	memcpy(image, name, n - sl);
	image[n - sl] = 0;
	if (!cd_pool_name_valid(image, CD_POOL_IMAGE_MAX))
		return skip(w, user, name, "the image name is not letters, digits, '.', "
			    "'_' or '-' (not first '.' or '-')");
	if (fstatat(ufd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return 0;
	if (S_ISLNK(st.st_mode))
		return skip(w, user, image, "a symbolic link: links are not followed "
			    "out of the pool");
	if (!S_ISREG(st.st_mode))
		return skip(w, user, image, "not a regular file");
	if (!(f = add_found(w)))
		return -ENOMEM;
	snprintf(f->user, sizeof(f->user), "%s", user);
	snprintf(f->image, sizeof(f->image), "%s", image);
	snprintf(f->export_name, sizeof(f->export_name), "%s/%s", user, image);
	snprintf(f->path, sizeof(f->path), "%s/%s/%s", dir, user, name);
	f->shared = strcmp(user, CD_POOL_SHARED) == 0;
	f->dev = st.st_dev;
	f->ino = st.st_ino;
	f->used = (uint64_t)st.st_blocks * 512;
	f->size = disk_size(ufd, name);
	return 0;
}

static int walk_user(struct walk *w, const char *dir, int dfd, const char *user, int ifd)
{
	char path[PATH_MAX];
	struct dirent *de;
	struct stat st;
	DIR *d;
	int ufd, r = 0;

	if (fstatat(dfd, user, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return 0;
	if (S_ISLNK(st.st_mode))
		return skip(w, user, NULL, "a symbolic link: links are not followed out "
			    "of the pool");
	if (!S_ISDIR(st.st_mode))
		return 0;
	ufd = openat(dfd, user, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (ufd < 0)
		return skip(w, user, NULL, "cannot open the folder: %s", strerror(errno));
	snprintf(path, sizeof(path), "%s/%s", dir, user);
	if (ifd >= 0)
		inotify_add_watch(ifd, path, DIR_EVENTS | IN_ONLYDIR | IN_DONT_FOLLOW);
	d = fdopendir(ufd);
	if (!d) {
		close(ufd);
		return 0;
	}
	while (r == 0 && (de = readdir(d)))
		r = walk_image(w, dir, user, dirfd(d), de->d_name);
	closedir(d);
	return r;
}

static int by_name(const void *a, const void *b)
{
	return strcmp(((const struct found *)a)->export_name,
		      ((const struct found *)b)->export_name);
}

/* Everything the pool at dir holds (only user's, when given). */
static int walk(struct cdisk_ctx *ctx, const char *dir, const char *only, int ifd,
		struct walk *w)
{
	struct dirent *de;
	DIR *d = opendir(dir);
	int r = 0;

	if (!d)
		return cd_error(ctx, -errno, "cannot read the pool '%s': %s", dir,
				strerror(errno));
	while (r == 0 && (de = readdir(d))) {
		const char *name = de->d_name;
		if (name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2])))
			continue;
		if (only && strcmp(name, only) != 0)
			continue;
		if (!cd_pool_name_valid(name, CD_USER_NAME_MAX))
			r = skip(w, name, NULL, "the folder's name is not a user's name "
				 "(1 to %d letters, digits, '.', '_' or '-', not first '.' "
				 "or '-')", CD_USER_NAME_MAX);
		else
			r = walk_user(w, dir, dirfd(d), name, ifd);
	}
	closedir(d);
	if (r < 0)
		return cd_error(ctx, r, "cannot read the pool '%s': out of memory", dir);
	qsort(w->v, w->n, sizeof(*w->v), by_name);
	return 0;
}

static void report(const struct found *f, struct cdisk_pool_image *img)
{
	*img = (struct cdisk_pool_image){
		.user = f->user, .image = f->image, .export_name = f->export_name,
		.path = f->skipped[0] ? "" : f->path, .shared = f->shared,
		.size = f->size, .used_bytes = f->used,
		.skipped = f->skipped[0] ? f->skipped : NULL,
	};
}

int cdisk_pool_list(struct cdisk_ctx *ctx, const char *dir, const char *user,
		    cdisk_pool_cb cb, void *opaque)
{
	struct walk w = { 0 };
	char real[PATH_MAX];
	int r = 0;

	if (user && !cd_pool_name_valid(user, CD_USER_NAME_MAX))
		return cd_error(ctx, -EINVAL, "invalid user name: 1 to %d letters, digits, "
				"'.', '_' or '-' (not first '.' or '-')", CD_USER_NAME_MAX);
	if (!realpath(dir, real))
		return cd_error(ctx, -errno, "cannot read the pool '%s': %s", dir,
				strerror(errno));
	r = walk(ctx, real, user, -1, &w);
	for (size_t i = 0; r == 0 && i < w.n; i++) {
		struct cdisk_pool_image img;
		report(&w.v[i], &img);
		r = cb(opaque, &img);
	}
	free(w.v);
	return r;
}

/* ---- the pool of a server ---- */

int cd_pool_open(struct cdisk_ctx *ctx, const char *dir, bool read_only,
		 struct cd_pool **out)
{
	struct cd_pool *p;
	char real[PATH_MAX];
	struct stat st;

	if (!realpath(dir, real) || stat(real, &st) < 0)
		return cd_error(ctx, -errno, "cannot serve the pool '%s': %s", dir,
				strerror(errno));
	if (!S_ISDIR(st.st_mode))
		return cd_error(ctx, -ENOTDIR, "cannot serve the pool '%s': not a folder", dir);
	p = calloc(1, sizeof(*p));
	if (!p || !(p->dir = strdup(real))) {
		free(p);
		return cd_error(ctx, -ENOMEM, "out of memory");
	}
	p->ctx = ctx;
	p->read_only = read_only;
	pthread_mutex_init(&p->lock, NULL);
	pthread_mutex_init(&p->scan_lock, NULL);
	/* Without inotify (none left) the pool still works on "rescan". */
	p->ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (p->ifd < 0)
		cd_log(ctx, CDISK_LOG_WARNING, "pool '%s': no inotify (%s): new images are "
		       "found on \"rescan\" only", dir, strerror(errno));
	else
		inotify_add_watch(p->ifd, real, DIR_EVENTS | IN_ONLYDIR);
	*out = p;
	return 0;
}

static void entry_free(struct entry *e)
{
	if (e->exp.disk)
		cdisk_close(e->exp.disk);
	free(e->exp.name);
	free(e->exp.path);
	free(e);
}

void cd_pool_free(struct cd_pool *p)
{
	if (!p)
		return;
	while (p->list) {
		struct entry *e = p->list;
		p->list = e->next;
		entry_free(e);
	}
	while (p->users) {
		struct pool_user *u = p->users;
		p->users = u->next;
		cd_quota_put(u->used);
		free(u);
	}
	if (p->ifd >= 0)
		close(p->ifd);
	pthread_mutex_destroy(&p->lock);
	pthread_mutex_destroy(&p->scan_lock);
	free(p->dir);
	free(p);
}

int cd_pool_fd(const struct cd_pool *p)
{
	return p ? p->ifd : -1;
}

int cd_pool_timeout_ms(const struct cd_pool *p)
{
	uint64_t now = cd_now_ms();

	uint64_t at = p ? __atomic_load_n(&p->scan_at_ms, __ATOMIC_RELAXED) : 0;

	if (!at)
		return -1;
	return at <= now ? 0 : (int)(at - now);
}

static void scan_later(struct cd_pool *p, unsigned ms)
{
	uint64_t at = cd_now_ms() + ms, was = __atomic_load_n(&p->scan_at_ms, __ATOMIC_RELAXED);

	/* The later wins: events keep pushing a scan off until they stop. */
	while ((!was || at > was) &&
	       !__atomic_compare_exchange_n(&p->scan_at_ms, &was, at, false,
					    __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		;
}

void cd_pool_events(struct cd_pool *p)
{
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));

	while (read(p->ifd, buf, sizeof(buf)) > 0)
		;
	scan_later(p, SETTLE_MS);
}

void cd_pool_tick(struct cd_pool *p)
{
	struct cd_pool_scan res;

	if (!p || cd_pool_timeout_ms(p) != 0)
		return;
	__atomic_store_n(&p->scan_at_ms, 0, __ATOMIC_RELAXED);
	/* The accept loop never waits: a pool-create may be reaching its
	 * base over the network with the scan lock held. */
	if (pthread_mutex_trylock(&p->scan_lock) != 0) {
		scan_later(p, SETTLE_MS);
		return;
	}
	if (rescan_locked(p, &res) < 0)
		cd_log(p->ctx, CDISK_LOG_WARNING, "%s", cdisk_ctx_error(p->ctx));
	else
		cd_pool_scan_free(&res);
	pthread_mutex_unlock(&p->scan_lock);
}

/* Off the list: new opens fail from now on; the disk closes with the
 * last holder.  Under lock; true when it is for the caller to free. */
static bool unlist(struct cd_pool *p, struct entry *e)
{
	for (struct entry **pp = &p->list; *pp; pp = &(*pp)->next) {
		if (*pp == e) {
			*pp = e->next;
			break;
		}
	}
	e->next = NULL;
	if (e->refs > 1)
		cd_log(p->ctx, CDISK_LOG_INFO, "pool: '%s' is gone; %u client%s keep%s it "
		       "until they disconnect", e->exp.name, e->refs - 1,
		       e->refs == 2 ? "" : "s", e->refs == 2 ? "s" : "");
	else
		cd_log(p->ctx, CDISK_LOG_INFO, "pool: '%s' is gone", e->exp.name);
	return --e->refs == 0;
}

static struct entry *find(struct cd_pool *p, const char *name)
{
	for (struct entry *e = p->list; e; e = e->next)
		if (strcmp(e->exp.name, name) == 0)
			return e;
	return NULL;
}

/* The file at f->path is still the one the walk saw, reached through no
 * link: what was opened is inside the pool. */
static bool still_inside(const struct cd_pool *p, const struct found *f)
{
	char real[PATH_MAX], want[PATH_MAX];
	struct stat st;

	snprintf(want, sizeof(want), "%s/%s/%s%s", p->dir, f->user, f->image, CD_POOL_SUFFIX);
	return realpath(f->path, real) && strcmp(real, want) == 0 &&
	       lstat(f->path, &st) == 0 && S_ISREG(st.st_mode) && st.st_dev == f->dev &&
	       st.st_ino == f->ino;
}

/* ---- quotas ---- */

/* Under the lock: the user's record, made if need be (no limits). */
static struct pool_user *pool_user_locked(struct cd_pool *p, const char *name)
{
	struct pool_user *u;

	for (u = p->users; u; u = u->next)
		if (!strcmp(u->used->name, name))
			return u;
	u = calloc(1, sizeof(*u));
	if (!u || !(u->used = cd_quota_new(name))) {
		free(u);
		return NULL;
	}
	u->next = p->users;
	p->users = u;
	return u;
}

void cd_pool_set_quotas(struct cd_pool *p, const struct cd_users *users)
{
	pthread_mutex_lock(&p->lock);
	for (size_t i = 0; users && i < users->n; i++)
		pool_user_locked(p, users->v[i].name);
	for (struct pool_user *u = p->users; u; u = u->next) {
		const struct cd_user *in = users ? cd_users_find(users, u->used->name) : NULL;

		cd_quota_set_limit(u->used, in ? in->quota_used : 0);
		u->size_limit = in ? in->quota_size : 0;
	}
	pthread_mutex_unlock(&p->lock);
	/* Images left out for their user's quota_size may fit now. */
	scan_later(p, SETTLE_MS);
}

/* Under the lock: the user's quota_size, 0 for none. */
static uint64_t size_limit_locked(struct cd_pool *p, const char *user)
{
	for (struct pool_user *u = p->users; u; u = u->next)
		if (!strcmp(u->used->name, user))
			return u->size_limit;
	return 0;
}

/* shared/ images, and every image of a read-only pool, are served
 * read-only and count against no quota. */
static bool image_read_only(const struct cd_pool *p, const struct found *f)
{
	return f->shared || p->read_only;
}

/* A writable image of a user counts against their space quota. */
static int count_against_quota(struct cd_pool *p, const struct found *f, struct cdisk *d)
{
	struct pool_user *u;
	int r;

	pthread_mutex_lock(&p->lock);
	u = pool_user_locked(p, f->user);
	r = u ? cd_disk_set_quota(d, u->used) : cd_error(p->ctx, -ENOMEM, "out of memory");
	pthread_mutex_unlock(&p->lock);
	return r;
}

/* An image put in the folder by hand (cdisk-create, cp) is served only
 * within its user's quota_size, as pool-create would have checked: the
 * sizes of their writable images served already, and its own.  Decided
 * before opening, from the size the walk read in its superblock and the
 * sizes kept in the entries: opening it read-write would itself wake the
 * folder's watch (IN_CLOSE_WRITE) and scan again, and no disk's lock is
 * taken under the pool's.  False, with why, when it does not fit. */
static bool fits_size_quota(struct cd_pool *p, const struct found *f, char *why, size_t len)
{
	size_t ulen = strlen(f->user);
	uint64_t limit, total = 0;
	char a[32], b[32], c[32];

	pthread_mutex_lock(&p->lock);
	limit = size_limit_locked(p, f->user);
	for (struct entry *e = p->list; limit && e; e = e->next)
		if (!e->exp.readonly && !strncmp(e->exp.name, f->user, ulen) &&
		    e->exp.name[ulen] == '/')
			total += e->size;
	pthread_mutex_unlock(&p->lock);
	if (!limit || total + f->size <= limit)
		return true;
	snprintf(why, len, "its %s would take the images of '%s' served to %s, past their "
		 "quota_size of %s", cd_format_size(f->size, a, sizeof(a)), f->user,
		 cd_format_size(total + f->size, b, sizeof(b)), cd_format_size(limit, c, sizeof(c)));
	return false;
}

static int add_size(void *opaque, const struct cdisk_pool_image *img)
{
	*(uint64_t *)opaque += img->size;
	return 0;
}

/* Creating an image of size for user must leave the total of their
 * images' sizes within their quota_size. */
static int check_size_quota(struct cd_pool *p, const char *user, uint64_t size)
{
	uint64_t limit, total = 0;
	char a[32], b[32], c[32];
	int r;

	pthread_mutex_lock(&p->lock);
	limit = size_limit_locked(p, user);
	pthread_mutex_unlock(&p->lock);
	if (!limit)
		return 0;
	r = cdisk_pool_list(p->ctx, p->dir, user, add_size, &total);
	if (r == -ENOENT)
		r = 0;
	if (r < 0)
		return r;
	if (total + size <= limit)
		return 0;
	return cd_error(p->ctx, -EDQUOT, "cannot create an image of %s for '%s': their "
			"images hold %s of their quota of %s", cd_format_size(size, a, sizeof(a)),
			user, cd_format_size(total, b, sizeof(b)),
			cd_format_size(limit, c, sizeof(c)));
}

static int open_image(struct cd_pool *p, struct found *f, struct entry **out)
{
	bool ro = image_read_only(p, f);
	struct entry *e;
	struct cdisk *d;
	int r;

	r = cdisk_open(p->ctx, f->path, CDISK_OPEN_NO_BASE | (ro ? CDISK_OPEN_RDONLY : 0), &d);
	if (r == 0 && !still_inside(p, f)) {
		cdisk_close(d);
		r = cd_error(p->ctx, -ELOOP, "it changed while it was opened");
	}
	if (r == 0 && !ro && (r = count_against_quota(p, f, d)) < 0)
		cdisk_close(d);
	if (r == 0 && !ro && (r = cdisk_mirror_start(d)) < 0)
		cdisk_close(d);
	if (r < 0)
		return r;
	e = calloc(1, sizeof(*e));
	if (!e || !(e->exp.name = strdup(f->export_name)) ||
	    !(e->exp.path = strdup(f->path))) {
		if (e)
			free(e->exp.name);
		free(e);
		cdisk_close(d);
		return cd_error(p->ctx, -ENOMEM, "out of memory");
	}
	e->exp.disk = d;
	e->exp.readonly = ro;
	e->exp.pool = p;
	e->pool = p;
	e->dev = f->dev;
	e->ino = f->ino;
	e->size = cdisk_size(d);
	e->refs = 1;
	*out = e;
	return 0;
}

/* A walked image: still served, or opened now.  The walk's entry becomes
 * a skip when it cannot be. */
static void take(struct cd_pool *p, struct found *f, struct cd_pool_scan *res)
{
	struct entry *e = NULL, *old, *gone = NULL;

	pthread_mutex_lock(&p->lock);
	old = find(p, f->export_name);
	if (old && old->dev == f->dev && old->ino == f->ino) {
		old->seen = true;
		res->served++;
		pthread_mutex_unlock(&p->lock);
		return;
	}
	/* Replaced by another file: the old one's holders keep theirs. */
	if (old && unlist(p, old))
		gone = old;
	if (old)
		res->removed++;
	pthread_mutex_unlock(&p->lock);
	if (gone)
		entry_free(gone);
	if (!image_read_only(p, f) && !fits_size_quota(p, f, f->skipped, sizeof(f->skipped))) {
		/* Not retried on a timer: a reload or a change in the folder
		 * scans again. */
		cd_log(p->ctx, CDISK_LOG_WARNING, "pool: not serving '%s': %s", f->export_name,
		       f->skipped);
		return;
	}
	if (open_image(p, f, &e) < 0) {
		snprintf(f->skipped, sizeof(f->skipped), "%s", cdisk_ctx_error(p->ctx));
		scan_later(p, RETRY_MS);
		return;
	}
	e->seen = true;
	pthread_mutex_lock(&p->lock);
	e->next = p->list;
	p->list = e;
	pthread_mutex_unlock(&p->lock);
	cd_log(p->ctx, CDISK_LOG_INFO, "pool: serving '%s'%s", e->exp.name,
	       e->exp.readonly ? " (read-only)" : "");
	res->added++;
	res->served++;
}

/* Entries the scan did not see are gone from the folder. */
static void drop_unseen(struct cd_pool *p, struct cd_pool_scan *res)
{
	struct entry *gone = NULL;

	pthread_mutex_lock(&p->lock);
	for (struct entry *e = p->list, *next; e; e = next) {
		next = e->next;
		if (e->seen)
			continue;
		res->removed++;
		if (unlist(p, e)) {
			e->next = gone;
			gone = e;
		}
	}
	pthread_mutex_unlock(&p->lock);
	while (gone) {
		struct entry *e = gone;
		gone = e->next;
		entry_free(e);
	}
}

static int keep_skips(struct walk *w, struct cd_pool_scan *res)
{
	for (size_t i = 0; i < w->n; i++) {
		struct cd_pool_skip *v;
		if (!w->v[i].skipped[0])
			continue;
		v = realloc(res->skipped, (res->nskipped + 1) * sizeof(*v));
		if (!v)
			return -ENOMEM;
		res->skipped = v;
		snprintf(v[res->nskipped].name, sizeof(v->name), "%s", w->v[i].export_name);
		snprintf(v[res->nskipped].reason, sizeof(v->reason), "%s", w->v[i].skipped);
		res->nskipped++;
	}
	return 0;
}

static int rescan_locked(struct cd_pool *p, struct cd_pool_scan *res)
{
	struct walk w = { 0 };
	int r;

	memset(res, 0, sizeof(*res));
	r = walk(p->ctx, p->dir, NULL, p->ifd, &w);
	if (r < 0)
		return r;
	pthread_mutex_lock(&p->lock);
	for (struct entry *e = p->list; e; e = e->next)
		e->seen = false;
	pthread_mutex_unlock(&p->lock);
	for (size_t i = 0; i < w.n; i++)
		if (!w.v[i].skipped[0])
			take(p, &w.v[i], res);
	drop_unseen(p, res);
	r = keep_skips(&w, res);
	free(w.v);
	return r < 0 ? cd_error(p->ctx, r, "out of memory") : 0;
}

int cd_pool_rescan(struct cd_pool *p, struct cd_pool_scan *res)
{
	int r;

	pthread_mutex_lock(&p->scan_lock);
	r = rescan_locked(p, res);
	pthread_mutex_unlock(&p->scan_lock);
	for (size_t i = 0; r == 0 && i < res->nskipped; i++)
		cd_log(p->ctx, CDISK_LOG_DEBUG, "pool: not serving '%s': %s",
		       res->skipped[i].name, res->skipped[i].reason);
	return r;
}

void cd_pool_scan_free(struct cd_pool_scan *res)
{
	free(res->skipped);
	res->skipped = NULL;
	res->nskipped = 0;
}

/* ---- what connections and the control socket ask ---- */

struct cd_export *cd_pool_get(struct cd_pool *p, const char *name)
{
	struct entry *e;

	if (!p)
		return NULL;
	pthread_mutex_lock(&p->lock);
	e = find(p, name);
	if (e)
		e->refs++;
	pthread_mutex_unlock(&p->lock);
	return e ? &e->exp : NULL;
}

struct cd_export *cd_pool_get_by_path(struct cd_pool *p, const char *path)
{
	char want[PATH_MAX];
	struct entry *e = NULL;

	/* An entry's path is already its real one: the pool's real path and
	 * two names that are no links. */
	if (!p || !realpath(path, want))
		return NULL;
	pthread_mutex_lock(&p->lock);
	for (e = p->list; e && strcmp(e->exp.path, want) != 0; e = e->next)
		;
	if (e)
		e->refs++;
	pthread_mutex_unlock(&p->lock);
	return e ? &e->exp : NULL;
}

void cd_pool_put(struct cd_export *exp)
{
	struct entry *e = (struct entry *)exp;
	struct cd_pool *p = e->pool;
	bool last;

	pthread_mutex_lock(&p->lock);
	last = --e->refs == 0;
	pthread_mutex_unlock(&p->lock);
	if (last)
		entry_free(e);
}

int cd_pool_names(struct cd_pool *p, char ***out, size_t *n)
{
	char **v = NULL;
	size_t k = 0, i = 0;

	*out = NULL;
	*n = 0;
	if (!p)
		return 0;
	pthread_mutex_lock(&p->lock);
	for (struct entry *e = p->list; e; e = e->next)
		k++;
	v = calloc(k ? k : 1, sizeof(*v));
	for (struct entry *e = p->list; v && e; e = e->next)
		if ((v[i] = strdup(e->exp.name)))
			i++;
	pthread_mutex_unlock(&p->lock);
	if (!v)
		return -ENOMEM;
	*out = v;
	*n = i;
	return 0;
}

int cd_pool_hold_all(struct cd_pool *p, struct cd_export ***out, size_t *n)
{
	struct cd_export **v;
	size_t k = 0, i = 0;

	*out = NULL;
	*n = 0;
	if (!p)
		return 0;
	pthread_mutex_lock(&p->lock);
	for (struct entry *e = p->list; e; e = e->next)
		k++;
	v = calloc(k ? k : 1, sizeof(*v));
	for (struct entry *e = p->list; v && e; e = e->next) {
		e->refs++;
		v[i++] = &e->exp;
	}
	pthread_mutex_unlock(&p->lock);
	if (!v)
		return -ENOMEM;
	*out = v;
	*n = i;
	return 0;
}

struct served_ctx {
	struct cd_pool *p;
	cd_pool_served_cb cb;
	void *opaque;
};

static int with_connections(void *opaque, const struct cdisk_pool_image *img)
{
	struct served_ctx *sc = opaque;
	struct entry *e;
	int conns = -1;

	pthread_mutex_lock(&sc->p->lock);
	e = img->skipped ? NULL : find(sc->p, img->export_name);
	if (e)
		conns = (int)__atomic_load_n(&e->exp.connections, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&sc->p->lock);
	return sc->cb(sc->opaque, img, conns);
}

int cd_pool_list_served(struct cd_pool *p, const char *user, cd_pool_served_cb cb,
			void *opaque)
{
	struct served_ctx sc = { p, cb, opaque };

	return cdisk_pool_list(p->ctx, p->dir, user, with_connections, &sc);
}

/* The two names checked, and the image's path in the pool. */
static int image_path(struct cd_pool *p, const char *user, const char *image,
		      char *out, size_t len)
{
	char u[96], i[96];

	printable(user, u, sizeof(u));
	printable(image, i, sizeof(i));
	if (!cd_pool_name_valid(user, CD_USER_NAME_MAX))
		return cd_error(p->ctx, -EINVAL, "invalid user name '%s': 1 to %d letters, "
				"digits, '.', '_' or '-' (not first '.' or '-')", u,
				CD_USER_NAME_MAX);
	if (!cd_pool_name_valid(image, CD_POOL_IMAGE_MAX))
		return cd_error(p->ctx, -EINVAL, "invalid image name '%s': 1 to %d letters, "
				"digits, '.', '_' or '-' (not first '.' or '-')", i,
				CD_POOL_IMAGE_MAX);
	snprintf(out, len, "%s/%s/%s%s", p->dir, user, image, CD_POOL_SUFFIX);
	return 0;
}

/* The user's folder, made when missing; a link in its place is refused. */
static int user_folder(struct cd_pool *p, const char *user)
{
	char path[PATH_MAX];
	struct stat st;

	snprintf(path, sizeof(path), "%s/%s", p->dir, user);
	if (mkdir(path, 0700) < 0 && errno != EEXIST)
		return cd_error(p->ctx, -errno, "cannot make '%s': %s", path, strerror(errno));
	if (lstat(path, &st) < 0 || !S_ISDIR(st.st_mode))
		return cd_error(p->ctx, -ELOOP, "'%s' is not a folder of the pool", path);
	return 0;
}

int cd_pool_create(struct cd_pool *p, const char *user, const char *image,
		   uint64_t size, const char *base)
{
	struct cdisk_create_opts o = { .size = size, .base = base };
	struct cd_pool_scan res;
	char path[PATH_MAX];
	int r = image_path(p, user, image, path, sizeof(path));

	if (r < 0)
		return r;
	if (!size && !base)
		return cd_error(p->ctx, -EINVAL, "an image needs a size or a base");
	pthread_mutex_lock(&p->scan_lock);
	r = user_folder(p, user);
	if (r == 0 && access(path, F_OK) == 0)
		r = cd_error(p->ctx, -EEXIST, "image '%s/%s' exists", user, image);
	if (r == 0 && size)
		r = check_size_quota(p, user, size);
	if (r == 0) {
		r = cdisk_create(p->ctx, path, &o);
		r = r > 0 ? 0 : r;
	}
	/* Its size came from its base: checked once known. */
	if (r == 0 && !size && (r = check_size_quota(p, user, 0)) < 0)
		unlink(path);
	/* Served at once, not when the folder's events settle. */
	if (r == 0 && (r = rescan_locked(p, &res)) == 0)
		cd_pool_scan_free(&res);
	pthread_mutex_unlock(&p->scan_lock);
	return r;
}

int cd_pool_delete(struct cd_pool *p, const char *user, const char *image)
{
	char path[PATH_MAX], name[CD_USER_NAME_MAX + CD_POOL_IMAGE_MAX + 2];
	struct entry *e;
	struct stat st;
	unsigned holders = 0;
	int r = image_path(p, user, image, path, sizeof(path)), ufd;

	if (r < 0)
		return r;
	snprintf(name, sizeof(name), "%s/%s", user, image);
	snprintf(path, sizeof(path), "%s%s", image, CD_POOL_SUFFIX);
	pthread_mutex_lock(&p->scan_lock);
	pthread_mutex_lock(&p->lock);
	e = find(p, name);
	if (e && e->refs > 1)
		holders = e->refs - 1;
	/* Off the list, it is ours to close; held, it stays as it is. */
	if (holders || (e && !unlist(p, e)))
		e = NULL;
	pthread_mutex_unlock(&p->lock);
	/* Through the folder opened without following a link: what is
	 * deleted is in the pool. */
	ufd = holders ? -1 : openat(AT_FDCWD, p->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (ufd >= 0) {
		int dfd = ufd;
		ufd = openat(dfd, user, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		close(dfd);
	}
	if (holders)
		r = cd_error(p->ctx, -EBUSY, "image '%s' is open by %u client%s", name,
			     holders, holders == 1 ? "" : "s");
	else if (ufd < 0 || fstatat(ufd, path, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		 !S_ISREG(st.st_mode))
		r = cd_error(p->ctx, -ENOENT, "no image '%s' in the pool", name);
	else if (unlinkat(ufd, path, 0) < 0)
		r = cd_error(p->ctx, -errno, "cannot delete '%s': %s", name, strerror(errno));
	if (ufd >= 0)
		close(ufd);
	pthread_mutex_unlock(&p->scan_lock);
	if (e)
		entry_free(e);
	return r;
}

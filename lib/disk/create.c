/* Creating a disk: checked, atomic, idempotent, and never over anything
 * that is already there. */
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bitmap.h"
#include "cdisk.h"
#include "ctx.h"
#include "disk.h"
#include "format.h"
#include "target.h"
#include "text.h"
#include "uri.h"
#include "util.h"

/* Paths are stored absolute: the disk is used from other directories. */
static int absolute_path(struct cdisk_ctx *ctx, const char *what,
			 const char *path, bool must_exist, char *out)
{
	char cwd[PATH_MAX];

	if (must_exist) {
		char *real = realpath(path, NULL);
		if (!real)
			return cd_error(ctx, -errno, "cannot use %s '%s': %s", what, path,
					strerror(errno));
		if (strlen(real) > CDISK_MAX_URI) {
			free(real);
			return cd_error(ctx, -ENAMETOOLONG, "%s '%s' is too long", what, path);
		}
		strcpy(out, real);
		free(real);
		return 0;
	}
	if (path[0] == '/') {
		snprintf(out, CDISK_MAX_URI + 1, "%s", path);
		return 0;
	}
	if (!getcwd(cwd, sizeof(cwd)))
		return cd_error(ctx, -errno, "cannot resolve %s '%s': %s", what, path,
				strerror(errno));
	if ((size_t)snprintf(out, CDISK_MAX_URI + 1, "%s/%s", cwd, path) > CDISK_MAX_URI)
		return cd_error(ctx, -ENAMETOOLONG, "%s '%s' is too long", what, path);
	return 0;
}

/* An explicit backup path must be writable now: a disk whose backup
 * silently fails to appear is one a damaged superblock can lose. */
static int check_backup_path(struct cdisk_ctx *ctx, const char *disk, const char *path)
{
	char probe[CDISK_MAX_URI + 32];
	struct stat st;
	int fd;

	if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
		return cd_error(ctx, -EINVAL, "cannot create '%s': metadata backup path "
				"'%s' is not a regular file", disk, path);
	snprintf(probe, sizeof(probe), "%s.probe.%d", path, (int)getpid());
	/* The backup's writer makes missing folders; so does this check. */
	fd = cd_mkdir_parents(probe) < 0 ? -1 : open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return cd_error(ctx, -errno, "cannot create '%s': metadata backup path "
				"'%s' cannot be written: %s", disk, path, strerror(errno));
	close(fd);
	unlink(probe);
	return 0;
}

/* Local file URIs become absolute paths; others are kept as written. */
int cd_normalize_uri(struct cdisk_ctx *ctx, const char *what, const char *uri,
		     bool must_exist, char *out)
{
	struct cd_uri u;
	int r = cd_uri_parse(ctx, uri, &u);

	if (r < 0)
		return r;
	if (u.scheme == CD_SCHEME_FILE)
		r = absolute_path(ctx, what, u.path, must_exist, out);
	else
		snprintf(out, CDISK_MAX_URI + 1, "%s", uri);
	cd_uri_clear(&u);
	return r;
}

/* A primary must be reachable and writable now (a block read and written
 * back), at least the disk's size; its identity is recorded so that
 * another device put at the same URI is never written as this one. */
static int check_primary(struct cdisk_ctx *ctx, const char *path, struct cd_superblock *sb)
{
	struct cd_target *t;
	char have[32], want[32];
	int r = cd_target_open(ctx, sb->base, false, &t);

	if (r < 0)
		return r;
	if (!sb->size)
		sb->size = t->size - t->size % sb->block_size;
	if (sb->size == 0 || t->size < sb->size) {
		cd_format_size(t->size, have, sizeof(have));
		r = sb->size ? cd_error(ctx, -EINVAL, "cannot create '%s': primary '%s' "
					"holds %s, less than the %s asked for", path,
					sb->base, have,
					cd_format_size(sb->size, want, sizeof(want))) :
			       cd_error(ctx, -EINVAL, "cannot create '%s': primary '%s' "
					"holds %s, too little for a disk", path, sb->base,
					have);
		goto out;
	}
	r = cd_target_write_back(t, sb->block_size, sb->size - sb->block_size);
	if (r == 0)
		r = cd_target_flush(t);
	if (r < 0) {
		r = cd_error(ctx, r, "cannot create '%s': cannot write to primary '%s': %s",
			     path, sb->base, cd_errbuf());
		goto out;
	}
	r = cd_target_identity(t, sb->primary_id, sizeof(sb->primary_id));
	if (r == -EOPNOTSUPP) {
		sb->primary_id[0] = 0;
		r = 0;
	}
out:
	cd_target_close(t);
	return r;
}

static int build_superblock(struct cdisk_ctx *ctx, const char *path,
			    const struct cdisk_create_opts *o,
			    struct cd_superblock *sb)
{
	char buf[32];
	int r;

	memset(sb, 0, sizeof(*sb));
	sb->version = CD_FORMAT_VERSION;
	sb->block_size = o->block_size ? o->block_size : CDISK_DEFAULT_BLOCK_SIZE;
	sb->cache_mode = o->cache_mode;
	if (sb->block_size < CDISK_MIN_BLOCK_SIZE || sb->block_size > CDISK_MAX_BLOCK_SIZE ||
	    sb->block_size & (sb->block_size - 1))
		return cd_error(ctx, -EINVAL, "cannot create '%s': block size %u is not "
				"a power of two from 512 to 1048576", path, sb->block_size);
	if (o->cache_mode != CDISK_CACHE_WRITEBACK)
		return cd_error(ctx, -EINVAL, "cannot create '%s': unknown cache mode %d",
				path, (int)o->cache_mode);
	if (o->base && o->primary)
		return cd_error(ctx, -EINVAL, "cannot create '%s': a disk has a base or a "
				"primary, not both", path);
	if (o->base && (r = cd_normalize_uri(ctx, "base", o->base, true, sb->base)) < 0)
		return r;
	if (o->primary &&
	    (r = cd_normalize_uri(ctx, "primary", o->primary, true, sb->base)) < 0)
		return r;
	if (o->primary)
		sb->incompat |= CD_FEATURE_INCOMPAT_PRIMARY;
	if (o->mirror && (r = cd_normalize_uri(ctx, "mirror", o->mirror, true, sb->mirror)) < 0)
		return r;
	if (o->meta_backup &&
	    ((r = absolute_path(ctx, "metadata backup path", o->meta_backup, false,
				sb->meta_backup)) < 0 ||
	     (r = check_backup_path(ctx, path, sb->meta_backup)) < 0))
		return r;
	sb->size = o->size;
	if (o->primary && (r = check_primary(ctx, path, sb)) < 0)
		return r;
	if (sb->base[0] && !o->primary) {
		struct cd_target *t;
		r = cd_target_open(ctx, sb->base, true, &t);
		if (r < 0)
			return r;
		if (!sb->size)
			sb->size = t->size;
		cd_target_close(t);
		if (sb->size == 0)
			return cd_error(ctx, -EINVAL, "cannot create '%s': base '%s' is "
					"empty; give --size", path, sb->base);
	}
	if (sb->size == 0)
		return cd_error(ctx, -EINVAL, "cannot create '%s': size is zero "
				"(give --size or a base)", path);
	if (sb->size % sb->block_size)
		return cd_error(ctx, -EINVAL, "cannot create '%s': size %llu is not a "
				"multiple of the block size %u", path,
				(unsigned long long)sb->size, sb->block_size);
	if (sb->size > CDISK_MAX_SIZE)
		return cd_error(ctx, -EFBIG, "cannot create '%s': size %s is larger than "
				"the limit of 256 TiB", path,
				cd_format_size(sb->size, buf, sizeof(buf)));
	sb->nbitmaps = 2;
	return cd_layout(sb);
}

static int same_config(struct cdisk_ctx *ctx, const char *path,
		       const struct cd_superblock *want, const struct cd_superblock *have)
{
	char a[32], b[32];
	const char *what = NULL;

	if (have->size != want->size)
		what = "size";
	else if (have->block_size != want->block_size)
		what = "block size";
	else if (cd_sb_has_primary(have) != cd_sb_has_primary(want))
		what = cd_sb_has_primary(have) ? "kind (its data is on a primary)" :
						  "kind (it is an overlay)";
	else if (strcmp(have->base, want->base))
		what = cd_sb_has_primary(have) ? "primary" : "base";
	else if (strcmp(have->mirror, want->mirror))
		what = "mirror";
	else if (strcmp(have->meta_backup, want->meta_backup))
		what = "metadata backup path";
	else if (have->cache_mode != want->cache_mode)
		what = "cache mode";
	if (!what)
		return 1;
	if (have->size != want->size)
		return cd_error(ctx, -EEXIST, "'%s' already exists with a different size "
				"(%s, not %s); it was not changed", path,
				cd_format_size(have->size, a, sizeof(a)),
				cd_format_size(want->size, b, sizeof(b)));
	return cd_error(ctx, -EEXIST, "'%s' already exists with a different %s; it "
			"was not changed", path, what);
}

static int compare_existing(struct cdisk_ctx *ctx, const char *path,
			    const struct cd_superblock *want)
{
	struct cdisk *d;
	int r = cdisk_open(ctx, path, CDISK_OPEN_CONFIG_ONLY, &d);

	if (r == -ENOMSG)
		return cd_error(ctx, -ENOMSG, "'%s' exists and is not a cdisk; it was "
				"not changed", path);
	if (r < 0)
		return r;
	r = same_config(ctx, path, want, &d->sb);
	cd_disk_free(d);
	return r;
}

static int write_new_file(struct cdisk_ctx *ctx, int fd, const char *path,
			  struct cd_superblock *sb)
{
	uint32_t pages = 2 * cd_bitmap_pages(sb->size / sb->block_size);
	uint64_t dlen = sb->cp_size - (uint64_t)pages * CD_PAGE_SIZE;
	uint8_t *zero_dir = calloc(1, dlen), buf[CD_SB_SIZE];
	int r = 0;

	if (!zero_dir)
		return cd_error(ctx, -ENOMEM, "cannot create '%s': out of memory", path);
	/* An all-zero directory says every bitmap page is empty; the file is
	 * sparse, so it is already written. */
	sb->cp_dir_crc = cd_crc32c(0, zero_dir, dlen);
	free(zero_dir);
	if (ftruncate(fd, (off_t)cd_file_size(sb)) < 0)
		return cd_error(ctx, -errno, "cannot create '%s': %s", path,
				errno == EFBIG ? "too large for this filesystem" :
				strerror(errno));
	for (int slot = 0; slot < 2 && r == 0; slot++) {
		sb->seq = (uint64_t)slot + 1;
		cd_sb_encode(sb, buf);
		r = cd_pwrite_full(fd, buf, sizeof(buf), (uint64_t)slot * CD_SB_SIZE);
	}
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	if (r < 0)
		return cd_error(ctx, r, "cannot create '%s': %s", path, strerror(-r));
	return 0;
}

static int sync_dir_of(const char *path)
{
	char *copy = strdup(path);
	int fd, r = 0;

	if (!copy)
		return -ENOMEM;
	fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || fsync(fd) < 0)
		r = -errno;
	if (fd >= 0)
		close(fd);
	free(copy);
	return r;
}

/* A disk has a metadata backup from its first moment: opening it for
 * writing and closing it takes a checkpoint, which writes one. */
static int write_first_backup(struct cdisk_ctx *ctx, const char *path)
{
	struct cdisk *d;
	int r = cdisk_open(ctx, path, CDISK_OPEN_NO_BASE, &d);

	return r < 0 ? r : cdisk_close(d);
}

/* A mirror given at creation is checked and attached as cdisk-mirror
 * attach would; a disk whose mirror is refused is not left behind. */
static int attach_at_creation(struct cdisk_ctx *ctx, const char *path, const char *mirror)
{
	struct cdisk *d;
	int r = cdisk_open(ctx, path, 0, &d);

	if (r == 0) {
		r = cdisk_mirror_attach(d, mirror);
		if (r < 0) {
			char saved[CD_ERROR_MAX];

			memcpy(saved, cd_errbuf(), sizeof(saved));
			cdisk_close(d);
			unlink(path);
			return cd_error(ctx, r, "cannot create '%s': %s", path, saved);
		}
		r = cdisk_close(d);
	}
	return r;
}

int cdisk_create(struct cdisk_ctx *ctx, const char *path,
		 const struct cdisk_create_opts *opts)
{
	struct cd_superblock sb;
	char *tmp = NULL, *copy = NULL;
	struct stat st;
	int fd = -1, r;

	cd_errbuf()[0] = 0;
	r = build_superblock(ctx, path, opts, &sb);
	if (r < 0)
		return r;
	if (lstat(path, &st) == 0)
		return compare_existing(ctx, path, &sb);
	if (getrandom(sb.uuid, sizeof(sb.uuid), 0) != sizeof(sb.uuid))
		return cd_error(ctx, -errno, "cannot create '%s': no random bytes: %s",
				path, strerror(errno));
	sb.uuid[6] = (uint8_t)((sb.uuid[6] & 0x0f) | 0x40);
	sb.uuid[8] = (uint8_t)((sb.uuid[8] & 0x3f) | 0x80);
	sb.created = (uint64_t)time(NULL);

	copy = strdup(path);
	if (!copy || asprintf(&tmp, "%s/.cdisk-create.XXXXXX", dirname(copy)) < 0) {
		tmp = NULL;
		r = cd_error(ctx, -ENOMEM, "cannot create '%s': out of memory", path);
		goto out;
	}
	/* Disks hold users' data: private unless the admin opens them up. */
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		r = cd_error(ctx, -errno, "cannot create '%s': %s", path, strerror(errno));
		goto out;
	}
	r = write_new_file(ctx, fd, path, &sb);
	if (r < 0)
		goto out;
	/* link() never replaces: a disk created meanwhile wins and is compared. */
	if (link(tmp, path) < 0) {
		r = errno == EEXIST ? compare_existing(ctx, path, &sb) :
		    cd_error(ctx, -errno, "cannot create '%s': %s", path, strerror(errno));
		goto out;
	}
	r = sync_dir_of(path);
	if (r < 0) {
		r = cd_error(ctx, r, "cannot create '%s': sync of its directory failed: %s",
			     path, strerror(-r));
		goto out;
	}
	r = write_first_backup(ctx, path);
	if (r == 0 && sb.mirror[0])
		r = attach_at_creation(ctx, path, sb.mirror);
out:
	if (fd >= 0)
		close(fd);
	if (tmp && fd >= 0)
		unlink(tmp);
	free(tmp);
	free(copy);
	return r;
}

/* The file target: a regular file or a block device on this host. */
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "ctx.h"
#include "target.h"
#include "uri.h"
#include "util.h"

struct file_priv {
	int fd;
	bool is_blockdev;
};

/* A file on a network file system waits on the network like any target:
 * cdisk-serve's reader must not try it (cd_nowait), whatever the kernel
 * would say of RWF_NOWAIT there. */
static bool on_local_fs(int fd)
{
	static const long network[] = {
		0x6969,                 /* NFS */
		0x517b, 0xfe534d42, (long)0xff534d42,   /* SMB, SMB2, CIFS */
		0x65735546,             /* FUSE (sshfs, s3fs...) */
		0x00c36400,             /* CephFS */
		0x01021997,             /* 9P */
		0x5346414f,             /* AFS */
		0x0bd00bd0,             /* Lustre */
		0x01161970,             /* GFS2 */
		0x7461636f,             /* OCFS2 */
	};
	struct statfs fs;

	if (fstatfs(fd, &fs) < 0)
		return false;
	for (size_t i = 0; i < sizeof(network) / sizeof(network[0]); i++)
		if ((long)fs.f_type == network[i])
			return false;
	return true;
}

static int file_open(struct cd_target *t, const struct cd_uri *uri)
{
	struct file_priv *f = calloc(1, sizeof(*f));
	struct stat st;
	int r;

	if (!f)
		return cd_error(t->ctx, -ENOMEM, "cannot open '%s': out of memory", t->uri);
	f->fd = open(uri->path, (t->readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC);
	if (f->fd < 0) {
		r = cd_error(t->ctx, -errno, "cannot open '%s': %s", t->uri, strerror(errno));
		goto fail;
	}
	if (fstat(f->fd, &st) < 0) {
		r = cd_error(t->ctx, -errno, "cannot stat '%s': %s", t->uri, strerror(errno));
		goto fail;
	}
	if (S_ISBLK(st.st_mode)) {
		uint64_t size;
		if (ioctl(f->fd, BLKGETSIZE64, &size) < 0) {
			r = cd_error(t->ctx, -errno, "cannot size '%s': %s", t->uri,
				     strerror(errno));
			goto fail;
		}
		t->size = size;
		f->is_blockdev = true;
	} else if (S_ISREG(st.st_mode)) {
		t->size = (uint64_t)st.st_size;
	} else {
		r = cd_error(t->ctx, -EINVAL, "cannot use '%s': not a regular file or "
			     "block device", t->uri);
		goto fail;
	}
	t->can_flush = true;
	t->local = on_local_fs(f->fd);
	t->local_file = t->local && !f->is_blockdev;
	t->can_zero = true;
	t->can_trim = !f->is_blockdev;
	/* Small writes cost a local file next to nothing: scattered changes
	 * go as they are, one pwrite each, rather than joined over gaps
	 * that would first have to be read. */
	t->scatter_window = CD_SCATTER_WINDOW;
	t->priv = f;
	return 0;
fail:
	if (f->fd >= 0)
		close(f->fd);
	free(f);
	return r;
}

static int file_pread(struct cd_target *t, void *s, void *buf, size_t len,
		      uint64_t off)
{
	struct file_priv *f = t->priv;
	int r = cd_pread_full(f->fd, buf, len, off);

	(void)s;
	/* A read that would wait is a worker's (cd_nowait), fstat included. */
	if ((r == -CD_WOULD_WAIT || r == -ENODATA) && cd_nowait())
		return -CD_WOULD_WAIT;
	/* The file may have shrunk under us; what is gone reads as zeros,
	 * as a hole would. */
	if (r == -ENODATA) {
		struct stat st;
		if (fstat(f->fd, &st) == 0 && (uint64_t)st.st_size < off + len) {
			uint64_t have = (uint64_t)st.st_size > off ?
					(uint64_t)st.st_size - off : 0;
			memset((uint8_t *)buf + have, 0, len - have);
			r = have ? cd_pread_full(f->fd, buf, have, off) : 0;
		}
	}
	if (r < 0)
		return cd_error(t->ctx, r, "cannot read '%s' at %llu: %s", t->uri,
				(unsigned long long)off, strerror(-r));
	return 0;
}

static int file_pwrite(struct cd_target *t, void *s, const void *buf,
		       size_t len, uint64_t off)
{
	struct file_priv *f = t->priv;
	int r = cd_pwrite_full(f->fd, buf, len, off);

	(void)s;
	if (r < 0)
		return cd_error(t->ctx, r, "cannot write '%s' at %llu: %s", t->uri,
				(unsigned long long)off, strerror(-r));
	return 0;
}

static int file_flush(struct cd_target *t, void *s)
{
	struct file_priv *f = t->priv;

	(void)s;
	if (fdatasync(f->fd) < 0)
		return cd_error(t->ctx, -errno, "cannot flush '%s': %s", t->uri,
				strerror(errno));
	return 0;
}

static int file_zero(struct cd_target *t, void *s, size_t len, uint64_t off)
{
	struct file_priv *f = t->priv;
	int mode = f->is_blockdev ? FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE :
				    FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;

	(void)s;
	if (fallocate(f->fd, mode, (off_t)off, (off_t)len) == 0)
		return 0;
	if (errno == EOPNOTSUPP || errno == ENOSYS)
		return -EOPNOTSUPP;
	return cd_error(t->ctx, -errno, "cannot zero '%s' at %llu: %s", t->uri,
			(unsigned long long)off, strerror(errno));
}

/* A regular file's holes read as zeros (file_zero makes them); a
 * device's are not known. */
static int file_zero_span(struct cd_target *t, void *s, uint64_t off, uint64_t len,
			  uint64_t *span)
{
	struct file_priv *f = t->priv;
	off_t data;

	(void)s;
	*span = 0;
	if (f->is_blockdev)
		return -EOPNOTSUPP;
	data = lseek(f->fd, (off_t)off, SEEK_DATA);
	if (data < 0 && errno == ENXIO)
		*span = len;        /* no data from off to the end */
	else if (data < 0)
		return errno == EINVAL ? -EOPNOTSUPP : cd_error(t->ctx, -errno,
				"cannot look for data in '%s': %s", t->uri, strerror(errno));
	else
		*span = (uint64_t)data - off < len ? (uint64_t)data - off : len;
	return 0;
}

/* A block device is the device it names (st_rdev), whichever node or
 * /dev/disk/by-* link reached it; anything else is its inode on its
 * file system, whichever path or link reached it. */
static int format_identity(const struct stat *st, char *out, size_t len)
{
	int n;

	if (S_ISBLK(st->st_mode))
		n = snprintf(out, len, "file:blk:%u:%u", major(st->st_rdev),
			     minor(st->st_rdev));
	else
		n = snprintf(out, len, "file:%u:%u:%llu", major(st->st_dev),
			     minor(st->st_dev), (unsigned long long)st->st_ino);
	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

static int file_identity(struct cd_target *t, void *s, char *out, size_t len)
{
	struct file_priv *f = t->priv;
	struct stat st;

	(void)s;
	if (fstat(f->fd, &st) < 0)
		return cd_error(t->ctx, -errno, "cannot stat '%s': %s", t->uri,
				strerror(errno));
	if (format_identity(&st, out, len) < 0)
		return cd_error(t->ctx, -ENAMETOOLONG, "'%s': identity does not fit "
				"in %zu bytes", t->uri, len);
	return 0;
}

int cd_file_identity(struct cdisk_ctx *ctx, const char *path, char *out, size_t len)
{
	struct stat st;

	if (stat(path, &st) < 0)
		return cd_error(ctx, -errno, "cannot stat '%s': %s", path, strerror(errno));
	if (format_identity(&st, out, len) < 0)
		return cd_error(ctx, -ENAMETOOLONG, "'%s': identity does not fit in "
				"%zu bytes", path, len);
	return 0;
}

static void file_close(struct cd_target *t)
{
	struct file_priv *f = t->priv;

	close(f->fd);
	free(f);
}

const struct cd_target_ops cd_file_target_ops = {
	.name = "file",
	.open = file_open,
	.pread = file_pread,
	.pwrite = file_pwrite,
	.flush = file_flush,
	.zero = file_zero,
	.trim = file_zero,
	.identity = file_identity,
	.zero_span = file_zero_span,
	.close = file_close,
};

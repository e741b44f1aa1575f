/* An ext2/3/4 filesystem inside a cdisk, read and written by libext2fs
 * through the disk API: a libext2fs io_manager whose blocks are
 * cdisk_pread/cdisk_pwrite at the partition's offset.  No mount, no
 * root, no loop device. */
#include <ext2fs/ext2fs.h>
#include <stdio.h>
#include <stdlib.h>

#include "extfs.h"

#define GPT_SIGNATURE "EFI PART"

struct chan {
	struct cdisk *disk;
	uint64_t offset;
	uint64_t reads, writes;
};

/* libext2fs opens a channel by name only: the disk and offset to use are
 * handed over in this, set by cd_extfs_open around ext2fs_open2. */
static __thread struct chan *handing_over;

static errcode_t chan_open(const char *name, int flags, io_channel *out)
{
	struct chan *p = handing_over;
	io_channel ch;
	errcode_t err;

	(void)flags;
	if (!p)
		return EXT2_ET_BAD_DEVICE_NAME;
	err = ext2fs_get_memzero(sizeof(*ch), &ch);
	if (err)
		return err;
	err = ext2fs_get_mem(strlen(name) + 1, &ch->name);
	if (err) {
		ext2fs_free_mem(&ch);
		return err;
	}
	strcpy(ch->name, name);
	ch->magic = EXT2_ET_MAGIC_IO_CHANNEL;
	ch->manager = cd_extfs_io_manager;
	ch->block_size = 1024;
	ch->refcount = 1;
	ch->flags = flags & IO_FLAG_RW ? CHANNEL_FLAGS_WRITETHROUGH : 0;
	ch->private_data = p;
	handing_over = NULL;
	*out = ch;
	return 0;
}

static errcode_t chan_close(io_channel ch)
{
	if (--ch->refcount > 0)
		return 0;
	free(ch->private_data);
	ext2fs_free_mem(&ch->name);
	ext2fs_free_mem(&ch);
	return 0;
}

static errcode_t chan_set_blksize(io_channel ch, int blksize)
{
	ch->block_size = blksize;
	return 0;
}

/* A count below zero is a byte count (libext2fs's convention). */
static size_t chan_bytes(io_channel ch, int count)
{
	return count < 0 ? (size_t)-count : (size_t)count * (size_t)ch->block_size;
}

static errcode_t chan_read64(io_channel ch, unsigned long long block, int count, void *data)
{
	struct chan *p = ch->private_data;
	size_t len = chan_bytes(ch, count);
	int r = cdisk_pread_unaligned(p->disk, data, len,
				      p->offset + block * (uint64_t)ch->block_size);

	p->reads++;
	return r < 0 ? EXT2_ET_SHORT_READ : 0;
}

static errcode_t chan_write64(io_channel ch, unsigned long long block, int count,
			      const void *data)
{
	struct chan *p = ch->private_data;
	size_t len = chan_bytes(ch, count);
	int r = cdisk_pwrite_unaligned(p->disk, data, len,
				       p->offset + block * (uint64_t)ch->block_size);

	p->writes++;
	return r < 0 ? EXT2_ET_SHORT_WRITE : 0;
}

static errcode_t chan_read(io_channel ch, unsigned long block, int count, void *data)
{
	return chan_read64(ch, block, count, data);
}

static errcode_t chan_write(io_channel ch, unsigned long block, int count, const void *data)
{
	return chan_write64(ch, block, count, data);
}

static errcode_t chan_write_byte(io_channel ch, unsigned long offset, int count,
				 const void *data)
{
	struct chan *p = ch->private_data;

	return cdisk_pwrite_unaligned(p->disk, data, (size_t)count, p->offset + offset) < 0
		? EXT2_ET_SHORT_WRITE : 0;
}

static errcode_t chan_flush(io_channel ch)
{
	struct chan *p = ch->private_data;

	return p->writes && cdisk_flush(p->disk) < 0 ? EXT2_ET_SHORT_WRITE : 0;
}

static errcode_t chan_set_option(io_channel ch, const char *option, const char *arg)
{
	(void)ch;
	(void)option;
	(void)arg;
	return EXT2_ET_INVALID_ARGUMENT;
}

static errcode_t chan_get_stats(io_channel ch, io_stats *stats)
{
	(void)ch;
	*stats = NULL;
	return 0;
}

static struct struct_io_manager manager = {
	.magic = EXT2_ET_MAGIC_IO_MANAGER,
	.name = "cdisk I/O manager",
	.open = chan_open,
	.close = chan_close,
	.set_blksize = chan_set_blksize,
	.read_blk = chan_read,
	.write_blk = chan_write,
	.flush = chan_flush,
	.write_byte = chan_write_byte,
	.set_option = chan_set_option,
	.get_stats = chan_get_stats,
	.read_blk64 = chan_read64,
	.write_blk64 = chan_write64,
};

io_manager cd_extfs_io_manager = &manager;

static uint64_t le64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

int cd_extfs_partition(struct cdisk_ctx *ctx, struct cdisk *d, uint64_t *offset)
{
	uint8_t hdr[512], entry[128];
	uint64_t table, first;
	uint32_t esize;
	int r;

	r = cdisk_pread_unaligned(d, hdr, sizeof(hdr), 512);
	if (r < 0)
		return r;
	if (memcmp(hdr, GPT_SIGNATURE, 8))
		return cd_error(ctx, -EUCLEAN, "'%s' has no GPT partition table: the guest "
				"changed the disk's layout", cdisk_path(d));
	table = le64(hdr + 72);
	esize = le32(hdr + 84);
	if (esize < 128 || esize > 4096 || table > cdisk_size(d) / 512)
		return cd_error(ctx, -EUCLEAN, "'%s': the GPT header is damaged",
				cdisk_path(d));
	r = cdisk_pread_unaligned(d, entry, sizeof(entry), table * 512);
	if (r < 0)
		return r;
	first = le64(entry + 32);
	if (first == 0 || first * 512 >= cdisk_size(d))
		return cd_error(ctx, -EUCLEAN, "'%s' has no first partition: the guest "
				"changed the disk's layout", cdisk_path(d));
	*offset = first * 512;
	return 0;
}

int cd_extfs_open(struct cdisk_ctx *ctx, struct cdisk *d, uint64_t offset, bool rw,
		  ext2_filsys *out)
{
	struct chan *p = calloc(1, sizeof(*p));
	errcode_t err;

	if (!p)
		return cd_error(ctx, -ENOMEM, "out of memory");
	p->disk = d;
	p->offset = offset;
	handing_over = p;
	err = ext2fs_open2(cdisk_path(d), NULL,
			   EXT2_FLAG_64BITS | EXT2_FLAG_SKIP_MMP | (rw ? EXT2_FLAG_RW : 0), 0, 0,
			   cd_extfs_io_manager, out);
	if (handing_over) {   /* never reached the channel */
		handing_over = NULL;
		free(p);
	}
	if (err)
		return cd_error(ctx, err == EXT2_ET_BAD_MAGIC ? -EUCLEAN : -EIO,
				"cannot read the filesystem on '%s': %s", cdisk_path(d),
				error_message(err));
	return 0;
}

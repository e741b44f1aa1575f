/* ext2/3/4 filesystems inside cdisks, through libext2fs (extfs.c). */
#ifndef CDISK_EXTFS_H
#define CDISK_EXTFS_H

#include <ext2fs/ext2fs.h>

#include "ctx.h"
#include "disk.h"
#include "util.h"

/* Blocks of a channel are the disk's bytes from the partition's offset. */
extern io_manager cd_extfs_io_manager;

/* The byte offset of the first GPT partition of d; -EUCLEAN when the disk
 * has no GPT or no first partition. */
int cd_extfs_partition(struct cdisk_ctx *ctx, struct cdisk *d, uint64_t *offset);
/* The filesystem at offset in d, read-only unless rw; close it with
 * ext2fs_close2 before d. */
int cd_extfs_open(struct cdisk_ctx *ctx, struct cdisk *d, uint64_t offset, bool rw,
		  ext2_filsys *out);

#endif

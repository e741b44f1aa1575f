/* The cdisk format, version 1: superblocks and layout.  Byte offsets are
 * specified in cdisk(5) and docs/DESIGN.md; keep the three in step. */
#include <stdio.h>

#include "bitmap.h"
#include "cdisk.h"
#include "format.h"
#include "journal.h"
#include "util.h"

enum {
	SB_MAGIC = 0, SB_VERSION = 8, SB_SIZE = 12, SB_SEQ = 16,
	SB_COMPAT = 24, SB_INCOMPAT = 32, SB_RO_COMPAT = 40, SB_UUID = 48,
	SB_DISK_SIZE = 64, SB_BLOCK_SIZE = 72, SB_CACHE_MODE = 76,
	SB_FLAGS = 80, SB_OWNER_PID = 84, SB_JOURNAL_OFFSET = 88,
	SB_JOURNAL_SIZE = 96, SB_CP_OFFSET0 = 104, SB_CP_OFFSET1 = 112,
	SB_CP_SIZE = 120, SB_DATA_OFFSET = 128, SB_CP_ACTIVE = 136,
	SB_CP_DIR_CRC = 140, SB_CP_SEQ = 144, SB_JOURNAL_HEAD = 152,
	SB_CREATED = 160, SB_NBITMAPS = 168, SB_BM_OFFSET = 176,
	SB_BM_DIR_CRC = 184, SB_MIRROR_STATE = 188, SB_MIRROR_SINCE = 192,
	SB_MIRROR_RECOVERED = 200, SB_MIRROR_ERROR_TIME = 208,
	SB_MIRROR_ERROR = 216, SB_RESTORE_FLAGS = 472, SB_RESTORE_STARTED = 480,
	SB_BASE = 512, SB_MIRROR = 1536,
	SB_META_BACKUP = 2560, SB_PRIMARY_ID = 3584, SB_MIRROR_ID = 3840,
};

#define JOURNAL_SIZE (UINT64_C(8) << 20)
#define DATA_ALIGN (UINT64_C(1) << 20)

uint32_t cd_bitmap_pages(uint64_t nblocks)
{
	return (uint32_t)cd_div_round_up(nblocks, CD_PAGE_BITS);
}

static uint64_t dir_bytes(uint32_t total_pages)
{
	return cd_round_up((uint64_t)total_pages * 8, CD_PAGE_SIZE);
}

uint32_t cd_extra_area_pages(const struct cd_superblock *sb)
{
	return (CD_BITMAPS_MAX - 2) * cd_bitmap_pages(sb->size / sb->block_size);
}

/* Sized for every bitmap there may be, so that adding one more is a
 * superblock update; pages of unused bitmaps are never written, and the
 * file stays sparse there. */
uint64_t cd_extra_area_size(const struct cd_superblock *sb)
{
	uint32_t pages = cd_extra_area_pages(sb);

	if (sb->nbitmaps <= 2)
		return 0;
	return dir_bytes(pages) + (uint64_t)pages * CD_PAGE_SIZE;
}

uint64_t cd_extra_area_offset(const struct cd_superblock *sb, uint32_t area)
{
	return sb->bm_offset + area * cd_extra_area_size(sb);
}

uint64_t cd_file_size(const struct cd_superblock *sb)
{
	if (sb->nbitmaps <= 2)
		return sb->data_offset + cd_data_area_size(sb);
	return cd_extra_area_offset(sb, 2);
}

/* The extra areas go after the data area so that adding bitmaps to a
 * disk moves nothing. */
int cd_layout(struct cd_superblock *sb)
{
	uint64_t nblocks = sb->size / sb->block_size;
	uint32_t total = 2 * cd_bitmap_pages(nblocks);
	uint64_t align = sb->block_size > DATA_ALIGN ? sb->block_size : DATA_ALIGN;

	sb->journal_offset = CD_JOURNAL_OFFSET;
	sb->journal_size = JOURNAL_SIZE;
	sb->cp_size = dir_bytes(total) + (uint64_t)total * CD_PAGE_SIZE;
	sb->cp_offset[0] = sb->journal_offset + sb->journal_size;
	sb->cp_offset[1] = sb->cp_offset[0] + sb->cp_size;
	sb->data_offset = cd_round_up(sb->cp_offset[1] + sb->cp_size, align);
	sb->bm_offset = sb->nbitmaps > 2 ?
		cd_round_up(sb->data_offset + cd_data_area_size(sb), CD_PAGE_SIZE) : 0;
	return 0;
}

static void put_string(uint8_t *buf, const char *s)
{
	size_t n = strnlen(s, CDISK_MAX_URI);

	memset(buf, 0, CDISK_MAX_URI + 1);
	memcpy(buf, s, n);
}

void cd_sb_encode(const struct cd_superblock *sb, uint8_t buf[CD_SB_SIZE])
{
	memset(buf, 0, CD_SB_SIZE);
	memcpy(buf + SB_MAGIC, CD_MAGIC, 8);
	cd_put_le32(buf + SB_VERSION, sb->version);
	cd_put_le32(buf + SB_SIZE, CD_SB_SIZE);
	cd_put_le64(buf + SB_SEQ, sb->seq);
	cd_put_le64(buf + SB_COMPAT, sb->compat);
	cd_put_le64(buf + SB_INCOMPAT, sb->incompat);
	cd_put_le64(buf + SB_RO_COMPAT, sb->ro_compat);
	memcpy(buf + SB_UUID, sb->uuid, 16);
	cd_put_le64(buf + SB_DISK_SIZE, sb->size);
	cd_put_le32(buf + SB_BLOCK_SIZE, sb->block_size);
	cd_put_le32(buf + SB_CACHE_MODE, sb->cache_mode);
	cd_put_le32(buf + SB_FLAGS, sb->flags);
	cd_put_le32(buf + SB_OWNER_PID, sb->owner_pid);
	cd_put_le64(buf + SB_JOURNAL_OFFSET, sb->journal_offset);
	cd_put_le64(buf + SB_JOURNAL_SIZE, sb->journal_size);
	cd_put_le64(buf + SB_CP_OFFSET0, sb->cp_offset[0]);
	cd_put_le64(buf + SB_CP_OFFSET1, sb->cp_offset[1]);
	cd_put_le64(buf + SB_CP_SIZE, sb->cp_size);
	cd_put_le64(buf + SB_DATA_OFFSET, sb->data_offset);
	cd_put_le32(buf + SB_CP_ACTIVE, sb->cp_active);
	cd_put_le32(buf + SB_CP_DIR_CRC, sb->cp_dir_crc);
	cd_put_le64(buf + SB_CP_SEQ, sb->cp_seq);
	cd_put_le64(buf + SB_JOURNAL_HEAD, sb->journal_head);
	cd_put_le64(buf + SB_CREATED, sb->created);
	/* A first-layout disk keeps these bytes zero, as older versions wrote. */
	if (sb->incompat & CD_FEATURE_INCOMPAT_BITMAPS) {
		cd_put_le32(buf + SB_NBITMAPS, sb->nbitmaps);
		cd_put_le64(buf + SB_BM_OFFSET, sb->bm_offset);
		cd_put_le32(buf + SB_BM_DIR_CRC, sb->bm_dir_crc);
	}
	if (sb->incompat & CD_FEATURE_INCOMPAT_MIRROR) {
		cd_put_le32(buf + SB_MIRROR_STATE, sb->mirror_state);
		cd_put_le64(buf + SB_MIRROR_SINCE, sb->mirror_since);
		cd_put_le64(buf + SB_MIRROR_RECOVERED, sb->mirror_recovered);
		cd_put_le64(buf + SB_MIRROR_ERROR_TIME, sb->mirror_error_time);
		memcpy(buf + SB_MIRROR_ERROR, sb->mirror_error, CD_MIRROR_ERROR_MAX);
		buf[SB_MIRROR_ERROR + CD_MIRROR_ERROR_MAX - 1] = 0;
		memcpy(buf + SB_MIRROR_ID, sb->mirror_id, CD_MIRROR_ID_MAX);
		buf[SB_MIRROR_ID + CD_MIRROR_ID_MAX - 1] = 0;
	}
	if (sb->compat & CD_FEATURE_COMPAT_RESTORE) {
		cd_put_le32(buf + SB_RESTORE_FLAGS, sb->restore_flags);
		cd_put_le64(buf + SB_RESTORE_STARTED, sb->restore_started);
	}
	put_string(buf + SB_BASE, sb->base);
	put_string(buf + SB_MIRROR, sb->mirror);
	put_string(buf + SB_META_BACKUP, sb->meta_backup);
	if (cd_sb_has_primary(sb)) {
		memcpy(buf + SB_PRIMARY_ID, sb->primary_id, CD_PRIMARY_ID_MAX);
		buf[SB_PRIMARY_ID + CD_PRIMARY_ID_MAX - 1] = 0;
	}
	cd_put_le32(buf + CD_SB_CRC_OFFSET, cd_crc32c(0, buf, CD_SB_CRC_OFFSET));
}

static bool get_string(const uint8_t *buf, char *out)
{
	if (!memchr(buf, 0, CDISK_MAX_URI + 1))
		return false;
	memcpy(out, buf, CDISK_MAX_URI + 1);
	return true;
}

static bool is_pow2(uint64_t v)
{
	return v && !(v & (v - 1));
}

/* Everything a valid checksum cannot promise: a writer with a bug or a
 * crafted file must not lead us to index outside our tables. */
static const char *sb_sanity(const struct cd_superblock *sb)
{
	struct cd_superblock want = *sb;

	if (!is_pow2(sb->block_size) || sb->block_size < CDISK_MIN_BLOCK_SIZE ||
	    sb->block_size > CDISK_MAX_BLOCK_SIZE)
		return "block size is not a power of two from 512 B to 1 MiB";
	if (sb->size == 0 || sb->size % sb->block_size || sb->size > CDISK_MAX_SIZE)
		return "size is zero, too large or not a multiple of the block size";
	cd_layout(&want);
	if (want.journal_offset != sb->journal_offset ||
	    want.journal_size != sb->journal_size ||
	    want.cp_offset[0] != sb->cp_offset[0] ||
	    want.cp_offset[1] != sb->cp_offset[1] ||
	    want.cp_size != sb->cp_size || want.data_offset != sb->data_offset ||
	    want.bm_offset != sb->bm_offset)
		return "layout fields do not match the size and block size";
	if ((sb->incompat & CD_FEATURE_INCOMPAT_BITMAPS) &&
	    (sb->nbitmaps < 3 || sb->nbitmaps > CD_BITMAPS_MAX))
		return "number of bitmaps is not from 3 to 8";
	if ((sb->incompat & CD_FEATURE_INCOMPAT_MIRROR) &&
	    (!(sb->incompat & CD_FEATURE_INCOMPAT_BITMAPS) || !sb->mirror[0] ||
	     sb->mirror_state < CD_MIRROR_STORED_COPYING ||
	     sb->mirror_state > CD_MIRROR_STORED_FENCED))
		return "mirror record without bitmaps, a mirror or a known state";
	if ((sb->incompat & CD_FEATURE_INCOMPAT_FENCED) &&
	    (!(sb->incompat & CD_FEATURE_INCOMPAT_MIRROR) || !cd_sb_has_primary(sb) ||
	     sb->mirror_state != CD_MIRROR_STORED_FENCED))
		return "a fenced former primary without a mirror record or a primary";
	if (!(sb->incompat & CD_FEATURE_INCOMPAT_FENCED) &&
	    (sb->incompat & CD_FEATURE_INCOMPAT_MIRROR) &&
	    sb->mirror_state == CD_MIRROR_STORED_FENCED)
		return "a mirror record fenced without the FENCED feature";
	if (cd_sb_has_primary(sb) && !sb->base[0])
		return "a disk on a primary names no primary";
	if (sb->cp_active > 1)
		return "active checkpoint area is not 0 or 1";
	if (sb->journal_head % CD_JR_ALIGN || sb->journal_head >= sb->journal_size)
		return "journal head outside the journal";
	return NULL;
}

int cd_sb_decode(const uint8_t buf[CD_SB_SIZE], struct cd_superblock *sb,
		 const char **why)
{
	static char reason[96];

	memset(sb, 0, sizeof(*sb));
	if (memcmp(buf + SB_MAGIC, CD_MAGIC, 8) != 0) {
		*why = "bad magic";
		return -ENOMSG;
	}
	if (cd_get_le32(buf + CD_SB_CRC_OFFSET) != cd_crc32c(0, buf, CD_SB_CRC_OFFSET)) {
		*why = "checksum mismatch";
		return -EUCLEAN;
	}
	sb->version = cd_get_le32(buf + SB_VERSION);
	if (sb->version != CD_FORMAT_VERSION) {
		snprintf(reason, sizeof(reason), "format version %u is not supported "
			 "(this cdisk reads version %u)", sb->version, CD_FORMAT_VERSION);
		*why = reason;
		return -EPROTONOSUPPORT;
	}
	if (cd_get_le32(buf + SB_SIZE) != CD_SB_SIZE) {
		*why = "superblock size is not 4096";
		return -EUCLEAN;
	}
	sb->seq = cd_get_le64(buf + SB_SEQ);
	sb->compat = cd_get_le64(buf + SB_COMPAT);
	sb->incompat = cd_get_le64(buf + SB_INCOMPAT);
	sb->ro_compat = cd_get_le64(buf + SB_RO_COMPAT);
	memcpy(sb->uuid, buf + SB_UUID, 16);
	sb->size = cd_get_le64(buf + SB_DISK_SIZE);
	sb->block_size = cd_get_le32(buf + SB_BLOCK_SIZE);
	sb->cache_mode = cd_get_le32(buf + SB_CACHE_MODE);
	sb->flags = cd_get_le32(buf + SB_FLAGS);
	sb->owner_pid = cd_get_le32(buf + SB_OWNER_PID);
	sb->journal_offset = cd_get_le64(buf + SB_JOURNAL_OFFSET);
	sb->journal_size = cd_get_le64(buf + SB_JOURNAL_SIZE);
	sb->cp_offset[0] = cd_get_le64(buf + SB_CP_OFFSET0);
	sb->cp_offset[1] = cd_get_le64(buf + SB_CP_OFFSET1);
	sb->cp_size = cd_get_le64(buf + SB_CP_SIZE);
	sb->data_offset = cd_get_le64(buf + SB_DATA_OFFSET);
	sb->cp_active = cd_get_le32(buf + SB_CP_ACTIVE);
	sb->cp_dir_crc = cd_get_le32(buf + SB_CP_DIR_CRC);
	sb->cp_seq = cd_get_le64(buf + SB_CP_SEQ);
	sb->journal_head = cd_get_le64(buf + SB_JOURNAL_HEAD);
	sb->created = cd_get_le64(buf + SB_CREATED);
	sb->nbitmaps = 2;
	if (sb->incompat & CD_FEATURE_INCOMPAT_BITMAPS) {
		sb->nbitmaps = cd_get_le32(buf + SB_NBITMAPS);
		sb->bm_offset = cd_get_le64(buf + SB_BM_OFFSET);
		sb->bm_dir_crc = cd_get_le32(buf + SB_BM_DIR_CRC);
	}
	if (sb->incompat & CD_FEATURE_INCOMPAT_MIRROR) {
		sb->mirror_state = cd_get_le32(buf + SB_MIRROR_STATE);
		sb->mirror_since = cd_get_le64(buf + SB_MIRROR_SINCE);
		sb->mirror_recovered = cd_get_le64(buf + SB_MIRROR_RECOVERED);
		sb->mirror_error_time = cd_get_le64(buf + SB_MIRROR_ERROR_TIME);
		memcpy(sb->mirror_error, buf + SB_MIRROR_ERROR, CD_MIRROR_ERROR_MAX);
		if (!memchr(sb->mirror_error, 0, CD_MIRROR_ERROR_MAX)) {
			*why = "unterminated mirror error";
			return -EUCLEAN;
		}
		memcpy(sb->mirror_id, buf + SB_MIRROR_ID, CD_MIRROR_ID_MAX);
		if (!memchr(sb->mirror_id, 0, CD_MIRROR_ID_MAX)) {
			*why = "unterminated mirror identity";
			return -EUCLEAN;
		}
	}
	if (sb->compat & CD_FEATURE_COMPAT_RESTORE) {
		sb->restore_flags = cd_get_le32(buf + SB_RESTORE_FLAGS);
		sb->restore_started = cd_get_le64(buf + SB_RESTORE_STARTED);
	}
	if (!get_string(buf + SB_BASE, sb->base) ||
	    !get_string(buf + SB_MIRROR, sb->mirror) ||
	    !get_string(buf + SB_META_BACKUP, sb->meta_backup)) {
		*why = "unterminated string field";
		return -EUCLEAN;
	}
	if (cd_sb_has_primary(sb)) {
		memcpy(sb->primary_id, buf + SB_PRIMARY_ID, CD_PRIMARY_ID_MAX);
		if (!memchr(sb->primary_id, 0, CD_PRIMARY_ID_MAX)) {
			*why = "unterminated primary identity";
			return -EUCLEAN;
		}
	}
	if (sb->incompat & ~CD_FEATURE_INCOMPAT_SUPP) {
		snprintf(reason, sizeof(reason), "unknown incompatible features 0x%llx",
			 (unsigned long long)(sb->incompat & ~CD_FEATURE_INCOMPAT_SUPP));
		*why = reason;
		return -EPROTONOSUPPORT;
	}
	if (sb->cache_mode != CDISK_CACHE_WRITEBACK) {
		snprintf(reason, sizeof(reason), "unknown cache mode %u", sb->cache_mode);
		*why = reason;
		return -EPROTONOSUPPORT;
	}
	*why = sb_sanity(sb);
	return *why ? -EUCLEAN : 0;
}

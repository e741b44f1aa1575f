/* Internal: the on-disk format (format.c): superblock and layout. */
#ifndef CDISK_FORMAT_H
#define CDISK_FORMAT_H

#include "cdisk.h"
#include "util.h"

#define CD_MAGIC "CDISK\r\n\x1a"
#define CD_FORMAT_VERSION 1u
#define CD_SB_SIZE 4096u
#define CD_SB_CRC_OFFSET (CD_SB_SIZE - 4)
#define CD_SB_FLAG_OPEN 1u        /* a writer has the disk open */

/* Feature masks: unknown incompat bits refuse the open, unknown ro_compat
 * bits refuse writing. */
#define CD_FEATURE_COMPAT_SUPP CD_FEATURE_COMPAT_RESTORE
#define CD_FEATURE_INCOMPAT_SUPP \
	(CD_FEATURE_INCOMPAT_BITMAPS | CD_FEATURE_INCOMPAT_MIRROR | CD_FEATURE_INCOMPAT_PRIMARY | \
	 CD_FEATURE_INCOMPAT_FENCED)
/* More than the two bitmaps of the first layout: their pages live in two
 * extra checkpoint areas after the data area, and journal runs name the
 * bitmap they change (CD_RUN_BITMAP).  Set only by an explicit upgrade
 * (cd_disk_add_bitmaps), never by a plain write. */
#define CD_FEATURE_INCOMPAT_BITMAPS (1ull << 0)
/* The mirror record's device is a restore's auxiliary (cdisk-restore --to):
 * the restore record (bytes 472-487) says what happens when it is in sync.
 * A version that does not know this keeps it as a plain mirror, which
 * loses nothing: hence compat. */
#define CD_FEATURE_COMPAT_RESTORE (1ull << 0)
/* A mirror is attached: every write must reach it or be set in bitmap 2,
 * and the mirror record (superblock bytes 188-471) is kept.  A version
 * that does not know this would write past the mirror unrecorded. */
#define CD_FEATURE_INCOMPAT_MIRROR (1ull << 1)
/* The disk's data lives on a remote primary (the base field's URI), read
 * and written in place; the file holds only state, and has no data area.
 * A version that does not know this would read the empty data area, or
 * write the primary through an overlay it does not have. */
#define CD_FEATURE_INCOMPAT_PRIMARY (1ull << 2)
/* A failover made the mirror the primary: the mirror record now names the
 * former primary, fenced (never read or written again by itself), and
 * bitmap 2 names what it misses.  A version that does not know this would
 * take the former primary for a mirror and resync to it, or probe it back
 * into use. */
#define CD_FEATURE_INCOMPAT_FENCED (1ull << 3)
#define CD_FEATURE_RO_COMPAT_SUPP CD_FEATURE_RO_COMPAT_UNCONFIRMED
/* Restored by force from a metadata backup that nothing in the file proved
 * to be its own: the disk may be another's twin, so nothing writes to its
 * base (or its backup) until cdisk-restore --confirm; a version that does
 * not know this must not write the disk at all. */
#define CD_FEATURE_RO_COMPAT_UNCONFIRMED (1ull << 0)

#define CD_JOURNAL_OFFSET (2 * CD_SB_SIZE)
#define CD_AL_EXTENT_BYTES (UINT64_C(4) << 20)

#define CD_MIRROR_ERROR_MAX 256u
#define CD_PRIMARY_ID_MAX 256u
#define CD_MIRROR_ID_MAX 248u
/* The restore record's flags. */
#define CD_RESTORE_SWITCH (1u << 0)        /* the auxiliary becomes the primary */
#define CD_RESTORE_KEEP_PRIMARY (1u << 1)  /* and the primary goes back to being the mirror */

enum cd_mirror_stored {
	CD_MIRROR_STORED_COPYING = 1,
	CD_MIRROR_STORED_IN_SYNC = 2,
	CD_MIRROR_STORED_DEGRADED = 3,
	CD_MIRROR_STORED_PAUSED = 4,
	CD_MIRROR_STORED_FENCED = 5,   /* with FENCED: the former primary */
};

struct cd_superblock {
	uint32_t version;
	uint64_t seq;
	uint64_t compat, incompat, ro_compat;
	uint8_t uuid[16];
	uint64_t size;
	uint32_t block_size;
	uint32_t cache_mode;
	uint32_t flags;
	uint32_t owner_pid;
	uint64_t journal_offset, journal_size;
	uint64_t cp_offset[2];
	uint64_t cp_size;
	uint64_t data_offset;
	uint32_t cp_active;
	uint32_t cp_dir_crc;
	uint64_t cp_seq;        /* journal seq covered by the checkpoint */
	uint64_t journal_head;  /* where the first record after it goes */
	uint64_t created;
	uint32_t nbitmaps;      /* 2 without BITMAPS */
	uint64_t bm_offset;     /* the extra checkpoint areas; 0 without BITMAPS */
	uint32_t bm_dir_crc;    /* the live extra area's directory */
	/* The mirror record, with MIRROR: the state last stored (a state
	 * change is stored at once), what the last crash recovery set out of
	 * sync, and the last error. */
	uint32_t mirror_state;  /* CD_MIRROR_STORED_* */
	uint64_t mirror_since;  /* unix seconds */
	uint64_t mirror_recovered;  /* blocks */
	uint64_t mirror_error_time;
	char mirror_error[CD_MIRROR_ERROR_MAX];
	char base[CDISK_MAX_URI + 1];   /* with PRIMARY: the primary */
	char mirror[CDISK_MAX_URI + 1];
	char meta_backup[CDISK_MAX_URI + 1];
	/* With PRIMARY: the primary's identity when the disk was created
	 * (cd_target_identity), or empty when its kind gives none.  A device
	 * found at the URI with another identity is not written. */
	char primary_id[CD_PRIMARY_ID_MAX];
	/* With MIRROR: the mirror's identity when it was attached (empty when
	 * its kind gives none, or it was attached before this was kept).  A
	 * failover makes it the primary's; a re-attached former primary is
	 * known by it, and then gets only what bitmap 2 names. */
	char mirror_id[CD_MIRROR_ID_MAX];
	/* With RESTORE: CD_RESTORE_* and when the restore began. */
	uint32_t restore_flags;
	uint64_t restore_started;
};

static inline bool cd_sb_has_primary(const struct cd_superblock *sb)
{
	return sb->incompat & CD_FEATURE_INCOMPAT_PRIMARY;
}

/* The bytes of the data area: none on a disk whose data is on a primary. */
static inline uint64_t cd_data_area_size(const struct cd_superblock *sb)
{
	return cd_sb_has_primary(sb) ? 0 : sb->size;
}

void cd_sb_encode(const struct cd_superblock *sb, uint8_t buf[CD_SB_SIZE]);
/* Returns 0, -EUCLEAN (damaged) or -ENOMSG (not a cdisk: bad magic).
 * why receives a short reason on failure. */
int cd_sb_decode(const uint8_t buf[CD_SB_SIZE], struct cd_superblock *sb,
		 const char **why);
/* Compute layout fields (journal, checkpoint areas, data offset). */
int cd_layout(struct cd_superblock *sb);
uint32_t cd_bitmap_pages(uint64_t nblocks);
/* Pages one extra checkpoint area holds, its bytes (0 with two bitmaps),
 * and where area 0 or 1 of them starts. */
uint32_t cd_extra_area_pages(const struct cd_superblock *sb);
uint64_t cd_extra_area_size(const struct cd_superblock *sb);
uint64_t cd_extra_area_offset(const struct cd_superblock *sb, uint32_t area);
/* How long a disk file laid out as sb is. */
uint64_t cd_file_size(const struct cd_superblock *sb);

/* Bitmaps by id.  Present and dirty are the overlay's; later ones belong
 * to jobs (the mirror's out-of-sync bitmap). */
enum cd_bitmap_id { CD_BM_PRESENT = 0, CD_BM_DIRTY = 1, CD_BM_MIRROR = 2 };
#define CD_BITMAPS_MAX 8u

#endif

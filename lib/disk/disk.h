/* Internal: the open disk (disk.c, create.c, check.c). */
#ifndef CDISK_DISK_H
#define CDISK_DISK_H

#include <pthread.h>
#include <signal.h>

#include "backup.h"
#include "bitmap.h"
#include "ctx.h"
#include "format.h"

struct cd_target;

enum cd_run_op {
	CD_RUN_DIRTY = 1,   /* present and dirty */
	CD_RUN_CLEAN = 2,   /* present, the base has it */
	CD_RUN_DROP = 3,    /* not present: read from the base */
};
/* With BITMAPS: set (value 1) or clear one run of bitmap id. */
#define CD_RUN_BITMAP(id, value) (0x100u + 2u * (uint32_t)(id) + ((value) ? 1u : 0u))

struct cd_run {
	uint64_t first;
	uint32_t count;
	uint32_t op;
};

struct cd_al {
	uint64_t *extents;      /* hot extents, most recent last */
	bool *flushed;          /* no write since the last flush */
	uint32_t *inflight;     /* writes it protects that are under way */
	uint32_t count;
	uint32_t capacity;
	uint32_t inflight_total;
	bool draining;          /* a checkpoint waits for inflight_total == 0 */
};

#define CD_MAX_WRITING 128

/* cdisk-serve's scheduler: the engines' copies of a served disk ask it for
 * their turn, so that guests go first (queue.c). */
struct cd_io_gate {
	/* 0, or -ECANCELED once cancelled(carg) said so while it waited. */
	int (*begin)(void *arg, uint64_t bytes, uint64_t *t0, bool (*cancelled)(void *carg),
		     void *carg);
	void (*end)(void *arg, uint64_t bytes, int err, uint64_t t0);
	void *arg;
};

struct cdisk {
	/* Every public call on a disk holds this: a disk may be used by many
	 * threads (cdisk-serve's connections) at once. */
	pthread_mutex_t lock;
	pthread_cond_t drained;  /* al.inflight_total reached 0 */
	pthread_cond_t resumed;  /* a checkpoint finished draining */
	struct cdisk_ctx *ctx;
	char *path;
	int fd;
	bool readonly;
	struct cd_superblock sb;
	int sb_valid[2];
	bool sb_bad_at_open[2];
	char sb_damage[128];    /* what open found wrong with a superblock */
	int sb_live;            /* slot holding sb */
	bool was_open;          /* found with CD_SB_FLAG_OPEN set */
	uint64_t nblocks;
	uint32_t block_shift;
	struct cd_bitmap present;
	struct cd_bitmap dirty;
	struct cd_bitmap extra[CD_BITMAPS_MAX - 2];  /* ids 2.. sb.nbitmaps - 1 */
	/* Blocks a sync has read to send.  A write that completes clears its
	 * blocks here, so the sync will not call them clean: they go again.
	 * In memory only; a crash forgets it, and nothing is clean yet. */
	struct cd_bitmap syncing;
	volatile sig_atomic_t sync_stop;
	bool sync_running;
	/* Writes whose data is on its way to the data area (cdisk_pwrite
	 * writes it without the lock): pull and release leave those blocks
	 * alone, or they could overwrite newer data or punch it out. */
	struct { uint64_t first, count; bool mirrored; } writing[CD_MAX_WRITING];
	unsigned nwriting;
	pthread_cond_t writing_slot;
	uint32_t (*cp_crc)[2];  /* crc of each bitmap page in each area */

	/* journal */
	uint64_t j_seq;         /* last record written or replayed */
	uint64_t j_pos;         /* byte offset in the journal of the next record */
	uint64_t j_used;        /* bytes since the checkpoint */
	uint64_t j_replayed;
	bool j_torn;            /* replay ignored a torn last record */
	struct cd_run *runs;    /* changes since the last record */
	size_t nruns, runs_cap;
	bool runs_overflow;     /* too many: the next flush checkpoints */
	bool unflushed;         /* data written since the last fdatasync */
	struct cd_al al;
	uint64_t recovered_blocks;
	uint64_t mirror_recovered;  /* blocks the recovery set out of sync */
	struct cd_mirror *mirror;   /* mirror.c: a writable disk with a mirror */
	const struct cd_io_gate *gate;  /* set once by a server (atomic); NULL: none */
	struct cd_quota *quota;     /* quota.c: a space quota it counts against */
	uint64_t quota_counted;     /* bytes of present blocks counted into it */
	unsigned mirror_flushes;    /* flushes with a leg on the mirror */
	bool mirror_kept;           /* a server keeps its mirror (cdisk_mirror_start) */

	bool sb_loaded;         /* a superblock passed its checks */
	bool journal_damaged;   /* replay found damage in the middle */
	uint64_t backup_time;   /* when this handle last wrote a backup */
	bool indexed;           /* the backup folder's index names this disk */
	/* Backups are taken under the lock and written outside it, in order
	 * of taking; backup_lock serializes the writing (lock order: the
	 * disk's lock, then backup_lock). */
	struct cd_backup_image *backup_pending;
	uint64_t backup_gen;
	pthread_mutex_t backup_lock;
	uint64_t backup_stored_gen;
	struct cd_restore_result restore;

	/* The base opens on first need, outside the disk's lock: a server
	 * that is down must not stall I/O the overlay can serve.  After a
	 * failure it is not tried again for CD_BASE_RETRY_MS. */
	pthread_mutex_t base_lock;
	pthread_cond_t base_opened;   /* base_opening went false */
	bool base_opening;            /* a thread is opening it, no lock held */
	uint64_t base_opening_since;  /* cd_now_ms() */
	struct cd_target *base;
	bool base_local;          /* base is a regular file here (atomic: no lock) */
	int base_error;
	uint64_t base_retry_at;   /* cd_now_ms() */
	char base_error_msg[512];
	/* Failovers since open (under base_lock and the disk's lock): a
	 * request that began before one is retried where the data is now;
	 * an open of the old primary under way is discarded. */
	uint64_t primary_gen;
	/* Former primaries' stacks: legs given up on may still be in them,
	 * so they close with the disk. */
	struct cd_target *retired[4];
	unsigned nretired;
	uint64_t block_size;
};

/* Open only far enough to read the configuration: no lock, no state. */
#define CDISK_OPEN_CONFIG_ONLY (1u << 30)
/* Rebuild from the backup if the metadata is damaged, even with
 * auto_repair off; and with FORCE, even when it is sound or older. */
#define CD_OPEN_RESTORE (1u << 28)
#define CD_OPEN_FORCE_RESTORE (1u << 29)

int cd_open(struct cdisk_ctx *ctx, const char *path, unsigned flags,
	    const char *from, struct cdisk **out);

void cd_disk_free(struct cdisk *d);
int cd_disk_init_state(struct cdisk *d);
void cd_disk_reset_state(struct cdisk *d);
/* 0, or -EUCLEAN when the disk is unconfirmed (format.h): what would
 * write to or read from its base must stop. */
int cd_identity_confirmed(struct cdisk *d, const char *what);
int cd_mark_clean(struct cdisk *d, uint64_t first, uint64_t count);
/* Under the lock: store base data for blocks [first, first + count) that
 * are absent and not being written, present and clean (pull). */
int cd_fill_locked(struct cdisk *d, uint64_t first, uint64_t count, const uint8_t *data);
/* Blocks the overlay holds, from its data area, without the lock: the
 * caller knows they are present. */
int cd_read_present(struct cdisk *d, uint8_t *p, size_t n, uint64_t off);
/* Under the lock: let clean blocks in the range read from the base again
 * and free their space (close).  Returns the blocks released. */
int cd_release_locked(struct cdisk *d, uint64_t first, uint64_t count, uint64_t *released);
int cd_flush_locked(struct cdisk *d);
int cd_for_each_allocated(struct cdisk *d,
			  int (*fn)(struct cdisk *d, uint64_t first, uint64_t last,
				    void *opaque),
			  void *opaque);

/* Under the lock: a write's data is on its way to block b. */
bool cd_disk_being_written(const struct cdisk *d, uint64_t b);
/* No request to d can wait on the network: no base (nor primary) and no
 * mirror, recorded or attached.  Without the lock: a mirror attached
 * meanwhile is as if it came just after. */
bool cd_disk_local(const struct cdisk *d);
/* This request cannot wait on the network: the disk is local; or, an
 * overlay without a mirror, its base is a regular file here (once opened:
 * not a device, whose path may hang), or it writes whole blocks, or all
 * its blocks are in the overlay: neither touches the base. */
bool cd_disk_quick(struct cdisk *d, bool write, uint64_t off, uint64_t len);
/* Under base_lock: the base (or primary) requests go to from now on. */
void cd_disk_set_base(struct cdisk *d, struct cd_target *t);
/* Its data lives on a primary (cdisk-create --primary): every read goes
 * to the network, so none is worth trying without waiting (cd_nowait). */
bool cd_disk_on_primary(const struct cdisk *d);
/* Under the lock: wait until no write or flush has a leg on the mirror
 * (new ones are not routed to it: the caller made it not live). */
void cd_disk_drain_mirrored_locked(struct cdisk *d);
/* How many bytes from off (whole blocks) the disk is known to read as
 * zeros without reading them (*span, at most len): blocks the overlay
 * lacks over no base, or over a base (or primary) that says so. */
int cd_disk_zero_span(struct cdisk *d, uint64_t off, uint64_t len, uint64_t *span);
/* The base, opened now if need be (no lock held; see get_base). */
int cd_disk_get_base(struct cdisk *d, struct cd_target **out);
/* A file path made absolute, other URIs as given (create.c). */
int cd_normalize_uri(struct cdisk_ctx *ctx, const char *what, const char *uri,
		     bool must_exist, char *out);

/* Bitmap id of an open disk (id < sb.nbitmaps). */
struct cd_bitmap *cd_disk_bitmap(struct cdisk *d, unsigned id);
/* Under the lock: set or clear a run of bitmap id (2 and up), in memory
 * and in the next journal record; durable at the next flush. */
int cd_disk_mark_locked(struct cdisk *d, unsigned id, uint64_t first,
			uint64_t count, bool value);
/* Give the disk at least n bitmaps: the explicit, crash-safe upgrade of
 * the first layout (see cdisk(5)).  The new bitmaps start empty. */
int cd_disk_add_bitmaps(struct cdisk *d, unsigned n);

#endif

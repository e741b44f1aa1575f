/* Internal interfaces of libcdisk.  Nothing here is installed. */
#ifndef CDISK_INTERNAL_H
#define CDISK_INTERNAL_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <pthread.h>
#include <signal.h>
#include <sys/types.h>

#include "cdisk.h"

#define CD_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define CD_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static inline uint64_t cd_div_round_up(uint64_t n, uint64_t d)
{
	return (n + d - 1) / d;
}

static inline uint64_t cd_round_up(uint64_t n, uint64_t align)
{
	return cd_div_round_up(n, align) * align;
}

/* ---- context: errors and logging (ctx.c) ---- */

#define CD_DEFAULT_BACKUP_DIR "/var/lib/cdisk/meta"

#define CD_DEFAULT_RUNTIME_DIR "/run/cdisk"
#define CD_DEFAULT_CACHE_DIR "/var/lib/cdisk/cache"
#define CD_DEFAULT_CACHE_MAX (64ull << 30)

struct cd_probe_config {
	unsigned pings, depth;
	uint32_t interval_ms, timeout_s, max_seconds;
	uint64_t read_bytes;
	struct cdisk_probe_limits limits;
};

struct cd_config {
	char backup_dir[CDISK_MAX_URI + 1];   /* "": no backups by default */
	char runtime_dir[CDISK_MAX_URI + 1];  /* sockets of serving processes */
	uint32_t backup_interval;             /* seconds */
	bool auto_repair;
	/* [target] */
	uint32_t timeout;                     /* seconds per request */
	uint32_t retries;
	uint32_t connections;                 /* sessions per target */
	/* [iscsi] */
	char iscsi_initiator[224];
	char iscsi_secret_file[CDISK_MAX_URI + 1];
	/* [rbd] */
	char rbd_conf[CDISK_MAX_URI + 1];
	char rbd_id[64];
	char rbd_keyring[CDISK_MAX_URI + 1];
	/* [s3] */
	char s3_endpoint[CDISK_MAX_URI + 1];
	char s3_region[64];
	char s3_credentials[CDISK_MAX_URI + 1];
	char s3_profile[64];
	uint32_t s3_chunk_size;
	/* [http] */
	char ca_file[CDISK_MAX_URI + 1];
	/* [probe], and [sync] target_delay */
	struct cd_probe_config probe;
	uint32_t sync_target_delay_ms;        /* 0: never slow down */
	/* [cache]: cloud folders' files and images (folder.c) */
	char cache_dir[CDISK_MAX_URI + 1];
	uint64_t cache_max_size;              /* bytes */
};

void cd_config_defaults(struct cd_config *cfg);
/* The configuration from text (the fuzzer's way in). */
int cd_config_parse_text(struct cdisk_ctx *ctx, const char *text);
int cd_ini_load(struct cdisk_ctx *ctx, const char *what, const char *path,
		int (*handler)(void *, const char *, const char *, const char *),
		void *user, const char *bad);

struct cdisk_ctx {
	struct cd_config cfg;
	cdisk_log_fn log_fn;
	void *log_opaque;
};

#define CD_ERROR_MAX 512
/* The calling thread's last error message (cdisk_ctx_error's buffer):
 * callers that must keep one across a call that may fail save a copy. */
char *cd_errbuf(void);
/* Keep a message for the calling thread and return err (a negative errno). */
int cd_error(struct cdisk_ctx *ctx, int err, const char *fmt, ...) CD_PRINTF(3, 4);
void cd_log(struct cdisk_ctx *ctx, enum cdisk_log_level level,
	    const char *fmt, ...) CD_PRINTF(3, 4);

/* ---- little-endian fields and checksums (util.c, crc32c.c) ---- */

static inline void cd_put_le16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static inline void cd_put_le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static inline void cd_put_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint16_t cd_get_le16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static inline uint32_t cd_get_le32(const uint8_t *p)
{
	uint32_t v = 0;
	for (int i = 3; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static inline uint64_t cd_get_le64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

uint32_t cd_crc32c(uint32_t crc, const void *buf, size_t len);

/* Bits set in a word, without needing the POPCNT instruction (the Debian
 * x86-64 baseline lacks it and the libgcc fallback is a slow call). */
static inline uint32_t cd_popcount64(uint64_t v)
{
	v -= (v >> 1) & 0x5555555555555555ull;
	v = (v & 0x3333333333333333ull) + ((v >> 2) & 0x3333333333333333ull);
	v = (v + (v >> 4)) & 0x0f0f0f0f0f0f0f0full;
	return (uint32_t)((v * 0x0101010101010101ull) >> 56);
}

/* Whole-buffer I/O that retries short transfers and EINTR.  Return 0 or
 * -errno; a read past the end of file returns -ENODATA. */
int cd_pread_full(int fd, void *buf, size_t len, uint64_t off);
int cd_pwrite_full(int fd, const void *buf, size_t len, uint64_t off);
bool cd_is_zero(const void *buf, size_t len);
int cd_mkdir_parents(char *path);

/* ---- URIs (uri.c) ---- */

enum cd_scheme {
	CD_SCHEME_FILE,
	CD_SCHEME_ISCSI,
	CD_SCHEME_RBD,
	CD_SCHEME_NBD,
	CD_SCHEME_NBDS,
	CD_SCHEME_NBD_UNIX,
	CD_SCHEME_HTTP,
	CD_SCHEME_HTTPS,
	CD_SCHEME_S3,
};

struct cd_uri {
	enum cd_scheme scheme;
	char *path;     /* file: the path; http: the path and query */
	char *host;
	int port;       /* 0: the scheme's default */
	char *user;
	char *target;   /* iscsi: iqn; nbd: export; rbd: image; s3: bucket */
	char *pool;     /* rbd */
	char *ns;       /* rbd namespace */
	char *snap;     /* rbd snapshot */
	char *prefix;   /* s3 */
	char *socket;   /* nbd+unix */
	int lun;        /* iscsi */
};

int cd_uri_parse(struct cdisk_ctx *ctx, const char *text, struct cd_uri *uri);
void cd_uri_clear(struct cd_uri *uri);
const char *cd_scheme_name(enum cd_scheme scheme);

/* ---- targets (target.c, target-*.c) ----
 * Every call is blocking and may come from many threads at once; that is
 * how callers keep many requests in flight.  A kind whose connection
 * carries one request at a time (iSCSI, NBD, HTTP, S3) gives connect and
 * disconnect, and dev-pool.c keeps a pool of such sessions, grown on demand
 * up to [target] connections.  The others (file, rbd) are shared as is.
 * The kinds are the leaves of a stack of device layers (dev.h). */

struct cd_target;

/* Scattered writes (cd_target_pwrite_pieces): the window of the kinds
 * whose groups need no particular size, and how many of a set the kinds
 * keep in flight at once on one connection or handle. */
#define CD_SCATTER_WINDOW (4u << 20)
#define CD_PIECES_DEPTH 64

/* One write of a scattered set (cd_target_pwrite_pieces). */
struct cd_piece {
	const void *buf;
	size_t len;
	uint64_t off;
};

struct cd_target_ops {
	const char *name;
	/* Learn the size and capabilities; may use a first session. */
	int (*open)(struct cd_target *t, const struct cd_uri *uri);
	int (*connect)(struct cd_target *t, void **session);
	void (*disconnect)(struct cd_target *t, void *session);
	int (*pread)(struct cd_target *t, void *s, void *buf, size_t len,
		     uint64_t off);
	int (*pwrite)(struct cd_target *t, void *s, const void *buf, size_t len,
		      uint64_t off);
	int (*flush)(struct cd_target *t, void *s);
	/* -EOPNOTSUPP: target.c writes zeros instead. */
	int (*zero)(struct cd_target *t, void *s, size_t len, uint64_t off);
	int (*trim)(struct cd_target *t, void *s, size_t len, uint64_t off);
	/* Optional: writes that all lie in one window of t->scatter_window
	 * bytes, in as few round trips as the kind can (all in flight at once
	 * on one connection; one RADOS operation per object).  The pieces
	 * are aligned, in range and in ascending order.  On failure which of
	 * them were written is unknown. */
	int (*pwrite_pieces)(struct cd_target *t, void *s, const struct cd_piece *v,
			     size_t n);
	/* The cheapest request that changes nothing and crosses the network
	 * (TEST UNIT READY, HEAD); -EAGAIN when the server says it is busy.
	 * NULL: the smallest read at offset 0. */
	int (*ping)(struct cd_target *t, void *s);
	void (*close)(struct cd_target *t);
};

/* Locks for a kind's own read-modify-write (s3's chunks). */
#define CD_RMW_STRIPES 64

struct cd_target {
	const struct cd_target_ops *ops;
	struct cdisk_ctx *ctx;
	char *uri;
	uint64_t size;
	uint32_t align;          /* requests must be multiples of this */
	uint32_t max_request;    /* bytes per request; 0: any */
	/* pwrite_pieces takes pieces within one aligned window of this many
	 * bytes (a power of two: an RBD object); 0: no scattered writes, a
	 * caller joins neighbours into large requests instead. */
	uint32_t scatter_window;
	/* How many requests (or groups of pieces) a sync keeps under way
	 * when not told; 0: SYNC_DEFAULT_DEPTH. */
	uint32_t sync_depth;
	uint32_t timeout_ms;     /* every request and connection */
	uint32_t retries;
	bool readonly;
	bool can_flush;
	bool can_zero;
	bool can_trim;
	bool flush_every_session;  /* flush only covers its own connection */
	uint32_t retry_after;      /* seconds a busy server last asked for; 0: none */
	uint64_t resent;           /* requests sent again after a cut or timeout */
	pthread_mutex_t rmw_lock[CD_RMW_STRIPES];
	void *priv;
	/* The face of a stack of device layers (dev.h), shared by the opens
	 * of one URI (target.c says which). */
	struct cd_dev *top;
	uint32_t connections;
	unsigned refs;             /* under target.c's lock */
	bool shared, shared_readonly;
	struct cd_target *next_shared;
};

/* Kinds and their names; false when this build lacks one. */
bool cd_target_supported(enum cd_scheme scheme);
int cd_target_open(struct cdisk_ctx *ctx, const char *uri, bool readonly,
		   struct cd_target **out);
/* The same with its own timeout, retries and sessions instead of the
 * configuration's (the probe's: a short timeout, nothing sent twice). */
struct cd_target_tuning {
	uint32_t timeout_s, retries, connections;
};
int cd_target_open_tuned(struct cdisk_ctx *ctx, const char *uri, bool readonly,
			 const struct cd_target_tuning *tn, struct cd_target **out);
/* The same with the kind given (unit tests give one of their own). */
int cd_target_open_with(struct cdisk_ctx *ctx, const char *uri,
			const struct cd_uri *u, const struct cd_target_ops *ops,
			bool readonly, struct cd_target **out);
int cd_target_pread(struct cd_target *t, void *buf, size_t len, uint64_t off);
int cd_target_pwrite(struct cd_target *t, const void *buf, size_t len,
		     uint64_t off);
/* Many writes in one window of t->scatter_window (or one by one where
 * the kind has no way to send them together). */
int cd_target_pwrite_pieces(struct cd_target *t, const struct cd_piece *v, size_t n);
int cd_target_flush(struct cd_target *t);
int cd_target_zero(struct cd_target *t, size_t len, uint64_t off);
int cd_target_trim(struct cd_target *t, size_t len, uint64_t off);
void cd_target_close(struct cd_target *t);
/* One ping, never retried; *rtt_us is the request's own time, without
 * making a new connection.  -EAGAIN: the server answered busy. */
int cd_target_ping(struct cd_target *t, uint64_t *rtt_us);
/* Pacing a sync by the base's round trip (pace.c). */
#define CD_PACE_FILTER 4
#define CD_PACE_MINUTES 10
#define CD_PACE_MIN_RATE (256u << 10)

struct cd_pace {
	double target_ms;            /* queueing delay allowed */
	double recent[CD_PACE_FILTER];
	unsigned nrecent;
	double minute_min[CD_PACE_MINUTES];
	unsigned minute, nminutes;
	uint64_t minute_start_ms;
	double current, base;        /* ms: the filtered delay, the baseline */
	uint64_t sent_bytes, sent_ms;
	double measured_rate;        /* bytes/s actually sent, smoothed */
	uint64_t rate_limit;         /* bytes/s; 0: none */
	unsigned slowdowns;
	unsigned clear_ticks;        /* adjustments in a row with little queueing */
};

enum cd_pace_change { CD_PACE_SAME, CD_PACE_SLOWED, CD_PACE_FREED };

void cd_pace_init(struct cd_pace *p, double target_ms);
void cd_pace_sample(struct cd_pace *p, double rtt_ms, uint64_t now_ms);
/* The bytes sent so far, for the rate actually achieved. */
void cd_pace_sent(struct cd_pace *p, uint64_t bytes_so_far, uint64_t now_ms);
/* After each ping (answered: it came back in time and not busy). */
enum cd_pace_change cd_pace_adjust(struct cd_pace *p, bool answered);

/* A read-only target for pings: the probe's timeout, no retries. */
int cd_probe_open(struct cdisk_ctx *ctx, const char *uri, uint32_t timeout_s,
		  struct cd_target **t);
/* Ceph's view of its own load, for targets on a Ceph cluster: the
 * monitors' health, and each OSD's own operation counters. */
#define CD_CEPH_MAX_OSDS 32
struct cd_ceph_load {
	char health[16];           /* "HEALTH_OK", "HEALTH_WARN", "HEALTH_ERR" */
	unsigned osds;
	struct {
		double write_sum, read_sum;        /* seconds */
		uint64_t writes, reads;
	} osd[CD_CEPH_MAX_OSDS];
	double write_ms_max, read_ms_max;      /* the slowest OSD's */
	/* From the manager's "osd perf", when a manager runs; else < 0. */
	double commit_ms_max, apply_ms_max;
};
/* With before (an earlier reading), latencies are over the time between;
 * without, since each OSD started. */
int cd_rbd_cluster_load(struct cd_target *t, const struct cd_ceph_load *before,
			struct cd_ceph_load *out);
/* An RBD header's snapshot context (cls rbd get_snapcontext): the
 * sequence, then the snapshot ids, newest first.  -EPROTO: malformed. */
int cd_rbd_parse_snap_context(const uint8_t *reply, size_t len, uint64_t *seq,
			      uint64_t *snaps, uint32_t max, uint32_t *count);
/* Make a new, empty store of size bytes where the kind can (file, rbd, s3). */
int cd_target_create(struct cdisk_ctx *ctx, const char *uri, uint64_t size);

/* For the kinds: whether an error is a broken connection or a timeout,
 * after which the session is dropped and a safe request is retried. */
bool cd_target_error_transient(int err);
/* For a kind's open: its first session, kept for the first request. */
void cd_target_keep_session(struct cd_target *t, void *session);
/* Milliseconds left until deadline (CLOCK_MONOTONIC ms), at least 0. */
uint64_t cd_now_ms(void);
uint64_t cd_now_us(void);   /* the same clock, in microseconds */

extern const struct cd_target_ops cd_file_target_ops;
extern const struct cd_target_ops cd_nbd_target_ops;
extern const struct cd_target_ops cd_iscsi_target_ops;
extern const struct cd_target_ops cd_rbd_target_ops;
extern const struct cd_target_ops cd_http_target_ops;
extern const struct cd_target_ops cd_s3_target_ops;
int cd_rbd_create(struct cdisk_ctx *ctx, const struct cd_uri *u, uint64_t size);
int cd_s3_create(struct cdisk_ctx *ctx, const char *uri, const struct cd_uri *u,
		 uint64_t size);

/* ---- block-state bitmaps (bitmap.c) ----
 * Pages of 4096 bytes (32768 bits); a page that was never set is not
 * allocated, so an empty 1 TiB disk costs a pointer array and nothing else. */

#define CD_PAGE_SIZE 4096u
#define CD_PAGE_BITS (CD_PAGE_SIZE * 8u)

struct cd_bitmap {
	uint64_t nbits;
	uint32_t npages;
	uint8_t **pages;
	uint32_t *page_count;   /* bits set in each page */
	uint8_t *page_changed;  /* bit 0/1: differs from checkpoint area 0/1 */
	uint64_t count;         /* bits set in all */
};

int cd_bitmap_init(struct cd_bitmap *bm, uint64_t nbits);
void cd_bitmap_free(struct cd_bitmap *bm);
bool cd_bitmap_get(const struct cd_bitmap *bm, uint64_t bit);
/* Set or clear [first, first + count).  Returns -ENOMEM when a page
 * cannot be allocated; the bits before it are already changed. */
int cd_bitmap_assign(struct cd_bitmap *bm, uint64_t first, uint64_t count,
		     bool value);
/* First bit >= from with the given value, or nbits. */
uint64_t cd_bitmap_find(const struct cd_bitmap *bm, uint64_t from, bool value);
/* Replace one page from an on-disk image (NULL: all zeros). */
/* Install a malloc'd page read from disk with count bits set; the bitmap
 * owns it after. */
void cd_bitmap_adopt_page(struct cd_bitmap *bm, uint32_t page, uint8_t *data,
			  uint32_t count);

/* ---- on-disk format (format.c) ---- */

#define CD_MAGIC "CDISK\r\n\x1a"
#define CD_FORMAT_VERSION 1u
#define CD_SB_SIZE 4096u
#define CD_SB_CRC_OFFSET (CD_SB_SIZE - 4)
#define CD_SB_FLAG_OPEN 1u        /* a writer has the disk open */

/* Feature masks: unknown incompat bits refuse the open, unknown ro_compat
 * bits refuse writing. */
#define CD_FEATURE_COMPAT_SUPP 0ull
#define CD_FEATURE_INCOMPAT_SUPP CD_FEATURE_INCOMPAT_BITMAPS
/* More than the two bitmaps of the first layout: their pages live in two
 * extra checkpoint areas after the data area, and journal runs name the
 * bitmap they change (CD_RUN_BITMAP).  Set only by an explicit upgrade
 * (cd_disk_add_bitmaps), never by a plain write. */
#define CD_FEATURE_INCOMPAT_BITMAPS (1ull << 0)
#define CD_FEATURE_RO_COMPAT_SUPP CD_FEATURE_RO_COMPAT_UNCONFIRMED
/* Restored by force from a metadata backup that nothing in the file proved
 * to be its own: the disk may be another's twin, so nothing writes to its
 * base (or its backup) until cdisk-restore --confirm; a version that does
 * not know this must not write the disk at all. */
#define CD_FEATURE_RO_COMPAT_UNCONFIRMED (1ull << 0)

#define CD_JOURNAL_OFFSET (2 * CD_SB_SIZE)
#define CD_AL_EXTENT_BYTES (UINT64_C(4) << 20)

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
	char base[CDISK_MAX_URI + 1];
	char mirror[CDISK_MAX_URI + 1];
	char meta_backup[CDISK_MAX_URI + 1];
};

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

/* ---- the open disk (disk.c, journal.c, checkpoint.c) ---- */

enum cd_run_op {
	CD_RUN_DIRTY = 1,   /* present and dirty */
	CD_RUN_CLEAN = 2,   /* present, the base has it */
	CD_RUN_DROP = 3,    /* not present: read from the base */
};
/* With BITMAPS: set (value 1) or clear one run of bitmap id. */
#define CD_RUN_BITMAP(id, value) (0x100u + 2u * (uint32_t)(id) + ((value) ? 1u : 0u))

/* Bitmaps by id.  Present and dirty are the overlay's; later ones belong
 * to jobs (the mirror's out-of-sync bitmap). */
enum cd_bitmap_id { CD_BM_PRESENT = 0, CD_BM_DIRTY = 1, CD_BM_MIRROR = 2 };
#define CD_BITMAPS_MAX 8u

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

/* ---- metadata backups (backup.c) ---- */

struct cd_backup {
	char path[4096];
	uint64_t seq, jseq, taken;
	uint8_t uuid[16];
	char disk_path[CDISK_MAX_URI + 1];
	uint32_t total, stored;
	struct cd_superblock sb;
	uint8_t *dir;
	uint8_t *pages;
};

struct cd_restore_result {
	bool restored;
	bool exact;                 /* the journal covered everything since */
	bool unconfirmed;           /* forced: nothing proved the backup its own */
	char backup[4096];
	uint64_t backup_age;
	uint64_t records_replayed;
	uint64_t blocks_reconciled;
	uint64_t blocks_marked_dirty;
};

struct cd_backup_status {
	bool configured, valid, same_disk, matches;
	char path[4096];
	int error;
	char why[512];
	uint64_t age, jseq;
};

#define CD_MAX_WRITING 128

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
	struct { uint64_t first, count; } writing[CD_MAX_WRITING];
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
	int base_error;
	uint64_t base_retry_at;   /* cd_now_ms() */
	char base_error_msg[512];
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
int cd_journal_replay_after(struct cdisk *d, uint64_t jseq, bool *complete,
			    uint64_t *chain_end);
int cd_al_recover(struct cdisk *d);
int cd_backup_path(const struct cd_config *cfg, const struct cd_superblock *sb,
		   char *out, size_t len);
struct cd_backup_image;
/* Under the lock: take a backup to be written once it is let go. */
int cd_backup_write(struct cdisk *d);
/* Take and write one now (open, close, check's repair). */
int cd_backup_write_now(struct cdisk *d);
/* Without the lock: write what cd_backup_write took. */
void cd_backup_store_pending(struct cdisk *d);
void cd_backup_image_free(struct cd_backup_image *img);
int cd_backup_read(struct cdisk_ctx *ctx, const char *path, struct cd_backup *b);
void cd_backup_free(struct cd_backup *b);
int cd_backup_restore(struct cdisk *d, const char *from, bool sb_known, bool force);
int cd_backup_status(struct cdisk *d, struct cd_backup_status *st);
bool cd_backup_exists(struct cdisk *d);
/* 0, or -EUCLEAN when the disk is unconfirmed (see above): what would
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
bool cd_parse_bool(const char *value, bool *out);
int cd_control_path_for_pid(const struct cd_config *cfg, unsigned pid, char *out,
			    size_t len);
int cd_journal_replay(struct cdisk *d);
int cd_journal_commit(struct cdisk *d, bool sync);
/* op: an enum cd_run_op, or CD_RUN_BITMAP(id, value). */
int cd_journal_add_run(struct cdisk *d, uint64_t first, uint64_t count,
		       uint32_t op);
int cd_checkpoint(struct cdisk *d);
/* Bitmap id of an open disk (id < sb.nbitmaps). */
struct cd_bitmap *cd_disk_bitmap(struct cdisk *d, unsigned id);
/* Under the lock: set or clear a run of bitmap id (2 and up), in memory
 * and in the next journal record; durable at the next flush. */
int cd_disk_mark_locked(struct cdisk *d, unsigned id, uint64_t first,
			uint64_t count, bool value);
/* Give the disk at least n bitmaps: the explicit, crash-safe upgrade of
 * the first layout (see cdisk(5)).  The new bitmaps start empty. */
int cd_disk_add_bitmaps(struct cdisk *d, unsigned n);
void cd_al_drain(struct cdisk *d);
int cd_checkpoint_load(struct cdisk *d);
int cd_sb_write(struct cdisk *d);
uint64_t cd_journal_record_max(const struct cdisk *d);
uint64_t cd_cp_dir_uuid_at(uint32_t pages, uint64_t dlen);
int cd_journal_tags(int fd, const struct cd_superblock *sb, uint64_t *tags,
		    unsigned max, unsigned *ntags);

#define CD_JR_MAGIC 0x524a4443u   /* "CDJR" */
#define CD_JR_HEADER 48u
#define CD_JR_ALIGN 4096u
#define CD_AL_CAPACITY 1024u
#define CD_BATCH_PAGES 256u     /* pages per preadv/pwritev (1 MiB) */

#endif

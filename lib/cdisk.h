/* libcdisk: virtual disks that stay available when their storage is remote.
 *
 * Conventions, held everywhere in this library:
 *  - functions named for an action return 0 on success or a negative errno;
 *  - on failure a one-line human-readable message is kept on the context
 *    (cdisk_ctx_error()), naming the thing that failed and the reason;
 *  - the library never prints and never exits; it logs through the
 *    callback set with cdisk_ctx_set_log().
 */
#ifndef CDISK_H
#define CDISK_H

#include <stdbool.h>
#include <stddef.h>
#include <signal.h>
#include <stdint.h>
#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CDISK_VERSION_STRING "0.1.0"

/* Exit codes shared by every cdisk program (and the "exit_code" of the
 * control socket's replies).  Never renumber. */
enum cdisk_exit {
	CDISK_EXIT_OK = 0,
	CDISK_EXIT_FAILURE = 1,      /* anything not listed below */
	CDISK_EXIT_USAGE = 2,        /* bad option or argument; nothing changed */
	CDISK_EXIT_UNREACHABLE = 3,  /* a target cannot be reached */
	CDISK_EXIT_BUSY = 4,         /* the disk is in use by another process */
	CDISK_EXIT_PERMISSION = 5,   /* permission or authentication denied */
	CDISK_EXIT_NOT_FOUND = 6,    /* a file, disk, image or object is missing */
	CDISK_EXIT_CORRUPT = 7,      /* metadata damaged, not a cdisk, unsupported format */
	CDISK_EXIT_TRY_LATER = 8,    /* temporary failure (timeout, server busy) */
	CDISK_EXIT_UNHEALTHY = 9,    /* a health verdict said no */
	CDISK_EXIT_REFUSED = 10,     /* a safety guard stopped it; nothing changed */
	CDISK_EXIT_CONFLICT = 11,    /* done, but a file changed on both sides: both kept */
};

enum cdisk_log_level {
	CDISK_LOG_ERROR,
	CDISK_LOG_WARNING,
	CDISK_LOG_INFO,
	CDISK_LOG_DEBUG,
};

struct cdisk_ctx;
struct cdisk;

typedef void (*cdisk_log_fn)(void *opaque, enum cdisk_log_level level,
			     const char *msg);

struct cdisk_ctx *cdisk_ctx_new(void);
void cdisk_ctx_free(struct cdisk_ctx *ctx);
void cdisk_ctx_set_log(struct cdisk_ctx *ctx, cdisk_log_fn fn, void *opaque);
/* Read the configuration file: path, or $CDISK_CONFIG, or
 * /etc/cdisk/cdisk.conf when it exists (see cdisk(7)). */
int cdisk_ctx_load_config(struct cdisk_ctx *ctx, const char *path);
/* Where serving processes put their sockets (configuration [serve]). */
const char *cdisk_ctx_runtime_dir(const struct cdisk_ctx *ctx);
/* The message of the last failure on this context, or "" if none. */
const char *cdisk_ctx_error(const struct cdisk_ctx *ctx);

/* Block size limits (bytes, powers of two). */
#define CDISK_MIN_BLOCK_SIZE 512u
#define CDISK_MAX_BLOCK_SIZE (1u << 20)
#define CDISK_DEFAULT_BLOCK_SIZE 4096u
/* Largest virtual size: 256 TiB. */
#define CDISK_MAX_SIZE (UINT64_C(1) << 48)
#define CDISK_MAX_URI 1023

/* How writes reach the base.  Format version 1 defines writeback only;
 * other values are refused at open as an unsupported format. */
enum cdisk_cache_mode {
	/* Writes stay in the overlay until cdisk-sync sends them. */
	CDISK_CACHE_WRITEBACK = 0,
};

struct cdisk_create_opts {
	uint64_t size;           /* 0: take it from the base */
	uint32_t block_size;     /* 0: CDISK_DEFAULT_BLOCK_SIZE */
	const char *base;        /* NULL: no base, unwritten blocks read as zeros */
	const char *mirror;      /* NULL: no mirror */
	const char *meta_backup; /* NULL: no metadata backup path recorded */
	enum cdisk_cache_mode cache_mode;
	/* The disk's data lives on this device, read and written in place
	 * (no overlay; not with base).  Size 0: the primary's. */
	const char *primary;
};

/* Create a disk.  Returns 0 when created, 1 when a disk with the same
 * configuration already exists ("unchanged"), or a negative errno
 * (-EEXIST when a different disk or another file is in the way). */
int cdisk_create(struct cdisk_ctx *ctx, const char *path,
		 const struct cdisk_create_opts *opts);

/* ---- disks from cloud folders (folder.c) ----
 * An S3 folder's files, fetched once into the host's cache ([cache] in
 * cdisk.conf), become a read-only image there (GPT, one ext4 partition),
 * keyed by the folder's state; the disk is an overlay over it. */
struct cdisk_folder_opts {
	const char *uri;             /* s3://bucket/prefix/ */
	uint64_t size;               /* 0: the files plus half again, at least 1 GiB */
	const char *fs;              /* NULL or "ext4" */
	const char *const *include;  /* NULL-terminated globs, or NULL: all */
	const char *const *exclude;  /* NULL-terminated globs, or NULL */
	uint32_t uid, gid;           /* owner of every file and folder */
	bool writer;                 /* the folder's one writer disk */
};

struct cdisk_cache_usage {
	uint64_t objects, object_bytes;  /* cached files, and the space they take */
	uint64_t images, image_bytes;    /* images, and the space they take */
	uint64_t images_in_use;          /* images some disk is over */
	uint64_t max_size;               /* [cache] max_size */
	uint64_t evicted;                /* files and images evicted by this call */
};

struct cdisk_folder_result {
	char image[CDISK_MAX_URI + 1];   /* the base image in the cache */
	char state[65];                  /* SHA-256 of the sorted key, ETag list */
	uint64_t files, dirs, bytes;     /* what the image holds */
	uint64_t size;                   /* the disk's size */
	uint64_t fetched, fetched_bytes; /* objects downloaded by this call */
	uint64_t damaged;                /* cached files found damaged, fetched again */
	bool image_reused;               /* the image was in the cache already */
	struct cdisk_cache_usage cache;
};

/* Create path as an overlay over the folder's image, building the image
 * (and fetching what the cache lacks) when needed.  0 created, 1 the
 * same disk exists already, or a negative errno: -ENOENT for an empty or
 * missing folder, -EFBIG when it does not fit in size, -ENAMETOOLONG for
 * a name ext4 cannot hold, -EBUSY when another disk is the writer. */
int cdisk_create_from_folder(struct cdisk_ctx *ctx, const char *path,
			     const struct cdisk_folder_opts *opts,
			     struct cdisk_folder_result *result);

/* ---- a writer disk's files back to its cloud folder (folder-push.c) ----
 * The disk's ext4 filesystem is read in-process (libext2fs over the disk
 * API) and compared with the state recorded at the last sync. */
enum cdisk_files_action {
	CDISK_FILES_UPLOADED,   /* a new or changed file, or an empty folder's marker */
	CDISK_FILES_DELETED,    /* deleted on the disk, so in the cloud */
	CDISK_FILES_SKIPPED,    /* a symlink, device, FIFO or socket: not a file */
	CDISK_FILES_FETCHED,    /* pull: new or changed in the cloud, written on the disk */
	CDISK_FILES_REMOVED,    /* pull: deleted in the cloud, so on the disk */
	CDISK_FILES_CONFLICT,   /* pull: changed on both sides; key is the cloud's copy's
				 * name on the disk, why the file it stands beside */
	CDISK_FILES_KEPT,       /* pull into a reader: the guest's own version of why,
				 * which the cloud's replaced or deleted, kept as key */
};

struct cdisk_files_opts {
	bool dry_run;           /* say what would be done; change nothing */
	bool force;             /* pass the delete guard */
	/* Each upload, delete or skip as it is done (key under the prefix;
	 * etag of an upload; why for a skip). */
	void (*item)(void *opaque, enum cdisk_files_action what, const char *key,
		     uint64_t size, const char *etag, const char *why);
	void *opaque;
};

struct cdisk_files_result {
	char uri[CDISK_MAX_URI + 1];   /* the folder */
	uint64_t files, dirs;          /* on the disk, as the cloud would list them */
	uint64_t unchanged;            /* files found as they were */
	uint64_t hashed;               /* files read to tell */
	uint64_t uploaded, uploaded_bytes, deleted, skipped;
	uint64_t recorded_files;       /* the folder's files at the last sync */
	uint64_t to_delete;            /* deletes a stopped sync would have done */
	/* pull */
	uint64_t fetched, fetched_bytes;   /* files written on the disk */
	uint64_t from_cache;               /* of those, found in the cache already */
	uint64_t own;                      /* this host's uploads, not fetched back */
	uint64_t removed, conflicts;
	uint64_t kept;                     /* a reader's own versions kept beside */
	bool reader;                       /* the disk is a reader of the folder */
};

/* 0, or a negative errno: -ECANCELED when more than half the folder's
 * files would be deleted (without force), -EUCLEAN when the filesystem
 * needs recovery or is not the one recorded, -EAGAIN when the disk is
 * served, -ENOENT when path is no disk made from a folder, -EROFS when
 * it is a reader disk (only the writer sends files). */
int cdisk_sync_files(struct cdisk_ctx *ctx, const char *path,
		     const struct cdisk_files_opts *opts,
		     struct cdisk_files_result *result);

/* The same with a disk the caller has open (cdisk-serve's own handle,
 * once no client is left to write through it); the disk stays open. */
int cdisk_sync_files_disk(struct cdisk *disk, const struct cdisk_files_opts *opts,
			  struct cdisk_files_result *result);

/* Cloud changes into a disk's filesystem (folder-push.c): the folder is
 * listed; objects added or changed since the disk's last sync or pull
 * (into the writer: that this host did not upload) are fetched and
 * written as files, files deleted in the cloud are deleted.  All of it
 * reaches the disk at once or not at all.  0, -EXDEV when there were
 * conflicts on the writer (each reported, both versions kept), or the
 * errors of cdisk_sync_files.  On a reader the cloud's changes win and
 * the guest's versions they replace are kept beside (CDISK_FILES_KEPT);
 * a reader has no conflicts. */
int cdisk_pull_files(struct cdisk_ctx *ctx, const char *path,
		     const struct cdisk_files_opts *opts,
		     struct cdisk_files_result *result);

#define CDISK_OPEN_RDONLY   (1u << 0)  /* no writes, no recovery written back */
#define CDISK_OPEN_NO_BASE  (1u << 1)  /* do not open the base target */
#define CDISK_OPEN_NO_REPAIR (1u << 2) /* never rebuild from the metadata backup */

int cdisk_open(struct cdisk_ctx *ctx, const char *path, unsigned flags,
	       struct cdisk **out);
/* Flush and release.  Returns the flush result; the handle is freed
 * either way. */
int cdisk_close(struct cdisk *disk);

/* Data path.  Offsets and lengths must be multiples of the block size. */
int cdisk_pread(struct cdisk *disk, void *buf, size_t len, uint64_t offset);
int cdisk_pwrite(struct cdisk *disk, const void *buf, size_t len,
		 uint64_t offset);
/* Make every completed write durable: data, then metadata. */
int cdisk_flush(struct cdisk *disk);
/* Both leave the range reading as zeros and release its space. */
int cdisk_discard(struct cdisk *disk, size_t len, uint64_t offset);
int cdisk_write_zeroes(struct cdisk *disk, size_t len, uint64_t offset);

/* The same for any offset and length: partial blocks at the edges are
 * read, merged and written whole (for NBD clients that send requests
 * smaller than the block size). */
int cdisk_pread_unaligned(struct cdisk *disk, void *buf, size_t len, uint64_t offset);
int cdisk_pwrite_unaligned(struct cdisk *disk, const void *buf, size_t len,
			   uint64_t offset);
int cdisk_write_zeroes_unaligned(struct cdisk *disk, size_t len, uint64_t offset);

/* Allocation from offset: up to max runs, each data or zeros. */
struct cdisk_extent {
	uint64_t length;
	bool zero;      /* reads as zeros and takes no space */
};
int cdisk_block_status(struct cdisk *disk, uint64_t offset, uint64_t length,
		       struct cdisk_extent *extents, size_t max, size_t *count);

uint64_t cdisk_size(const struct cdisk *disk);
uint32_t cdisk_block_size(const struct cdisk *disk);
const char *cdisk_path(const struct cdisk *disk);

/* What a disk is and holds. */
struct cdisk_info {
	char uuid[37];
	uint32_t format_version;
	uint64_t size;
	uint32_t block_size;
	uint64_t blocks;
	uint64_t blocks_present;  /* held by the overlay */
	uint64_t blocks_dirty;    /* held by the overlay, not yet on the base */
	char base[CDISK_MAX_URI + 1];
	char mirror[CDISK_MAX_URI + 1];
	char meta_backup[CDISK_MAX_URI + 1];
	enum cdisk_cache_mode cache_mode;
	uint64_t compat, incompat, ro_compat;
	uint64_t created;         /* unix seconds */
	uint64_t sb_seq;          /* sequence number of the live superblock */
	int sb_valid[2];          /* each superblock copy passed its checks */
	bool closed_cleanly;      /* the last writer closed the disk */
	uint64_t journal_records; /* records replayed at open */
	uint64_t recovered_blocks;/* blocks marked dirty by activity-log recovery */
	uint64_t file_bytes;      /* space the file takes on the host */
	uint64_t data_offset;
	bool base_reachable;      /* only meaningful when the base was opened */
	uint64_t base_opening_ms; /* an open of the base under way this long; 0: none */
	uint64_t base_size;
	int base_error;           /* negative errno when the base could not be opened */
	char base_error_msg[512];
	/* Restored by force from a backup nothing proved its own: syncs and
	 * pulls refuse until cdisk_restore_confirm(). */
	bool unconfirmed;
	bool mirror_active;       /* false: a mirror is recorded but not kept */
	/* The disk failed over: mirror names the fenced former primary. */
	bool failed_over;
	char backup_path[4096];   /* the backup actually used; "" when none */
	bool backup_exists;
	uint64_t backup_age;      /* seconds since it was written */
	/* The data lives on a primary (base is its URI): no overlay. */
	bool on_primary;
};

int cdisk_get_info(struct cdisk *disk, struct cdisk_info *info);
struct cdisk_ctx *cdisk_get_ctx(struct cdisk *disk);

/* One finding of a check. */
struct cdisk_check_report {
	unsigned errors;     /* problems that remain */
	unsigned repaired;   /* problems that were repaired */
	unsigned warnings;
	char (*lines)[160];  /* one line per finding */
	bool *problems;      /* per line: a warning, a repair or an error */
	unsigned nlines;
	char backup_path[4096]; /* "" when no backup is configured */
	uint64_t backup_age;    /* seconds */
	bool backup_matches;
};

/* Verify every checksum and the overlay against its records.  With
 * repair set (and the disk open read-write), fix what can be fixed.
 * Returns 0 when the disk is sound (after repairs), -EUCLEAN when
 * problems remain. */
int cdisk_check(struct cdisk *disk, bool repair,
		struct cdisk_check_report *report);
void cdisk_check_report_free(struct cdisk_check_report *report);

struct cdisk_restore_report {
	bool restored;             /* false: the metadata was sound, nothing done */
	bool exact;                /* the journal covered everything since the backup */
	char backup[4096];
	uint64_t backup_age;       /* seconds between the backup and the restore */
	uint64_t records_replayed; /* journal records applied after the backup */
	uint64_t blocks_reconciled;/* found in the data area, marked present and dirty */
	uint64_t blocks_marked_dirty; /* present blocks marked dirty to be resent */
	bool unconfirmed;          /* forced: see cdisk_restore_confirm() */
};

/* Rebuild a disk's metadata from its backup (from, or where the disk says,
 * or found by the disk's path) when its own is damaged.  A sound disk is
 * left alone unless force; force also accepts a backup older than the
 * disk's last checkpoint. */
int cdisk_restore_metadata(struct cdisk_ctx *ctx, const char *path,
			   const char *from, bool force,
			   struct cdisk_restore_report *rep);
/* A disk restored by force from a backup that nothing in it proved its
 * own is "unconfirmed": it will not write to or read from its base until
 * an administrator, having checked that the base is the right one, says
 * so here.  *changed is false when it was not unconfirmed. */
int cdisk_restore_confirm(struct cdisk_ctx *ctx, const char *path, bool *changed);

/* ---- a pool of per-user images (pool.c) ---- */

/* One image of a pool, as a scan of its folder finds it. */
struct cdisk_pool_image {
	const char *user;        /* "shared" for the golden images */
	const char *image;       /* the file's name without ".cdisk" */
	const char *export_name; /* USER/IMAGE */
	const char *path;
	bool shared;             /* read-only for everyone */
	uint64_t size;           /* the disk's size; 0 when unreadable */
	uint64_t used_bytes;     /* what the file takes on its filesystem */
	const char *skipped;     /* NULL, or why it is not served (no path
	                            then when it would lead out of the pool) */
};

typedef int (*cdisk_pool_cb)(void *opaque, const struct cdisk_pool_image *image);
/* Every image of the pool at dir, or only user's (NULL: all), sorted by
 * export name; entries that cannot be served are reported with the
 * reason.  A callback's non-zero return stops the walk and is returned. */
int cdisk_pool_list(struct cdisk_ctx *ctx, const char *dir, const char *user,
		    cdisk_pool_cb cb, void *opaque);

/* ---- serving (cdisk-serve) ---- */

struct cdisk_server;

int cdisk_server_new(struct cdisk_ctx *ctx, struct cdisk_server **out);
/* Open a disk and offer it under a name. */
int cdisk_server_add_export(struct cdisk_server *server, const char *name,
			    const char *path, bool readonly);
/* Exports from an INI file of [export NAME] sections (cdisk-serve(1)). */
int cdisk_server_load_exports(struct cdisk_server *server, const char *path,
			      bool read_only);
/* The name of the first export (the default one). */
int cdisk_server_first_export(struct cdisk_server *server, char *out, size_t len);
int cdisk_server_listen_unix(struct cdisk_server *server, const char *path,
			     unsigned mode);
int cdisk_server_listen_tcp(struct cdisk_server *server, const char *host,
			    const char *port);
/* The index-th TCP address listened on, as "127.0.0.1:10809" or
 * "[::1]:10809" (the port chosen for port 0); -ENOENT past the last. */
int cdisk_server_tcp_address(struct cdisk_server *server, unsigned index, char *out,
			     size_t len);
int cdisk_server_listen_control(struct cdisk_server *server, const char *path,
				unsigned mode);
/* TLS on NBD connections (NBD_OPT_STARTTLS): certificates from dir
 * (server-cert.pem, server-key.pem; ca-cert.pem to check clients when
 * verify_peer).  REQUIRE refuses every other option on TCP connections
 * until TLS is on; unix sockets, guarded by their permissions, may choose. */
enum cdisk_tls_mode { CDISK_TLS_OFF, CDISK_TLS_ON, CDISK_TLS_REQUIRE };
int cdisk_server_set_tls(struct cdisk_server *server, const char *dir,
			 enum cdisk_tls_mode mode, bool verify_peer);
/* After set_tls: the users of the server (an INI file of [user NAME]
 * sections, cdisk(7)), which close every export to all but the users it
 * names, and their pre-shared keys (psktool's "name:hexkey" lines), whose
 * names are users' names.  Either may be NULL; dir may be NULL in
 * set_tls when keys are the only TLS. */
int cdisk_server_set_users(struct cdisk_server *server, const char *users_path,
			   const char *psk_path);
/* When fd becomes readable (a signalfd for SIGHUP) the server reads it
 * and loads both files again; a bad one is refused, the old one stays. */
void cdisk_server_set_reload_fd(struct cdisk_server *server, int fd);
/* Serve until stop_fd is readable, then finish what connections sent,
 * flush and close every disk.  Returns the first close error. */
struct cdisk_sync_opts;
/* Push every export's changes to its base every every_seconds, with the
 * policy in opts (min_dirty, rate, max_seconds, depth), as cdisk-sync
 * would; a sync already running is left to finish. */
int cdisk_server_set_sync_policy(struct cdisk_server *server, uint32_t every_seconds,
				 const struct cdisk_sync_opts *opts);
/* Before the exports are added: a mirror write slower than timeout_ms
 * degrades (fail: fails the write), and a primary slower than
 * failover_ms fails over, over the configuration's [mirror]; 0 and -1
 * keep the configuration's. */
int cdisk_server_set_mirror_policy(struct cdisk_server *server, uint32_t timeout_ms,
				   int fail, uint32_t failover_ms);
/* Serve the pool dir too: DIR/USER/IMAGE.cdisk as export USER/IMAGE and
 * DIR/shared/IMAGE.cdisk as the read-only shared/IMAGE, found again when
 * the folder changes (inotify) and on the control verb "rescan";
 * read_only: every image read-only. */
/* When the last client of a cloud folder's writer disk disconnects, send
 * its files to the folder (cdisk_sync_files_disk), on a thread of its
 * own; a client that connects meanwhile waits for it to end. */
void cdisk_server_set_files_push(struct cdisk_server *server, bool on);
int cdisk_server_set_pool(struct cdisk_server *server, const char *dir, bool read_only);
int cdisk_server_run(struct cdisk_server *server, int stop_fd);
void cdisk_server_free(struct cdisk_server *server);

/* The control socket of the process serving a disk: where it is, and
 * what it says about the disk (instead of "busy"). */
int cdisk_control_socket_path(struct cdisk_ctx *ctx, unsigned pid, char *out,
			      size_t len);
int cdisk_info_from_owner(struct cdisk_ctx *ctx, const char *path,
			  struct cdisk_info *info);
/* A server's "status" reply (cdisk-protocol(7)), requests and latencies
 * of its exports and users included, as JSON text the caller frees: of
 * the server whose control socket is at socket_path, or, from_owner, of
 * the process serving the disk at path, with that disk's export only
 * (-ENOENT when the disk is not served, -EBUSY when its owner is no
 * server). */
int cdisk_server_status(struct cdisk_ctx *ctx, const char *socket_path, char **json);
int cdisk_status_from_owner(struct cdisk_ctx *ctx, const char *path, char **json);
/* Such a status as Prometheus text exposition (cdisk-info --metrics). */
int cdisk_metrics_text(struct cdisk_ctx *ctx, const char *status_json, char **text);

#ifdef __cplusplus
}
#endif
/* ---- probe: the network to a target and the server's load ---- */

enum cdisk_verdict {
	CDISK_HEALTHY,
	CDISK_DEGRADED,      /* a figure is past its threshold */
	CDISK_UNREACHABLE,   /* no connection, or no answer at all */
};

/* How much to measure; 0 takes the configuration's [probe] value. */
struct cdisk_probe_opts {
	unsigned pings;            /* round trips to time (20) */
	uint32_t interval_ms;      /* between pings (20) */
	uint32_t timeout_s;        /* each connection and request (5) */
	uint32_t max_seconds;      /* the whole probe, plus one timeout (10) */
	uint64_t read_bytes;       /* the bounded read (16 MiB) */
	bool no_read;              /* no throughput, no load test */
	unsigned depth;            /* reads in flight (4) */
	/* The target is scratch: also time writes over its first read_bytes.
	 * Never set this for a disk's base. */
	bool write_scratch;
};

/* Thresholds; a negative number means no limit. */
struct cdisk_probe_limits {
	double max_rtt_ms;         /* mean round trip */
	double max_jitter_ms;
	double max_loss;           /* fraction of pings lost, 0..1 */
	double max_busy;           /* fraction answered "busy", 0..1 */
	double min_read_rate;      /* bytes per second */
	double max_load_delay_ms;  /* mean round trip under load minus idle */
	double max_osd_latency_ms; /* Ceph: the slowest OSD's latency, any kind */
	int ceph_health;           /* worst accepted: 0 HEALTH_OK, 1 WARN, 2 ERR */
};

/* Which figures were past their thresholds (cdisk_probe_result.over). */
enum cdisk_probe_figure {
	CDISK_PROBE_RTT = 1u << 0,
	CDISK_PROBE_JITTER = 1u << 1,
	CDISK_PROBE_LOSS = 1u << 2,
	CDISK_PROBE_BUSY = 1u << 3,
	CDISK_PROBE_READ_RATE = 1u << 4,
	CDISK_PROBE_LOAD_DELAY = 1u << 5,
	CDISK_PROBE_CEPH_HEALTH = 1u << 6,
	CDISK_PROBE_OSD_LATENCY = 1u << 7,
};

struct cdisk_probe_result {
	enum cdisk_verdict verdict;
	unsigned over;             /* enum cdisk_probe_figure bits */
	char reason[768];          /* why not healthy, "; " between findings */
	unsigned sent, answered, lost, busy;
	unsigned refused;          /* of the lost: answered with an error */
	double rtt_min_ms, rtt_mean_ms, rtt_p95_ms, rtt_max_ms, jitter_ms;
	double loss, busy_fraction;
	uint32_t retry_after;      /* seconds a busy server asked for; 0: none */
	bool read_measured, write_measured, load_measured;
	uint64_t read_bytes, write_bytes;
	double read_rate, write_rate;        /* bytes per second */
	double loaded_rtt_mean_ms, load_delay_ms;
	bool ceph;
	char ceph_health[16];
	unsigned osds;
	double osd_write_ms, osd_read_ms;   /* the slowest OSD's, during the probe */
	double osd_commit_ms, osd_apply_ms; /* the manager's "osd perf"; < 0: none */
	double seconds;
};

/* Thresholds from the configuration ([probe]), or the defaults. */
void cdisk_probe_limits_default(struct cdisk_ctx *ctx, struct cdisk_probe_limits *l);
/* Measure uri and judge it.  0 whenever a verdict was reached (even
 * "unreachable"); a negative errno when the question itself is wrong: a
 * bad URI, no such image, permission denied. */
int cdisk_probe(struct cdisk_ctx *ctx, const char *uri, const struct cdisk_probe_opts *o,
		const struct cdisk_probe_limits *l, struct cdisk_probe_result *res);
/* The same for the base of the disk at path (its URI goes to base). */
int cdisk_probe_disk(struct cdisk_ctx *ctx, const char *path,
		     const struct cdisk_probe_opts *o, const struct cdisk_probe_limits *l,
		     struct cdisk_probe_result *res, char *base, size_t base_len);

/* ---- sync: the overlay's changes to the base ---- */

struct cdisk_sync_progress {
	uint64_t done, total;       /* bytes sent (or fetched), and in all */
	uint64_t rate_limit;        /* bytes/s the sync holds itself to; 0: none */
	double delay_ms;            /* the base's round trip now ... */
	double base_delay_ms;       /* ... and its baseline; 0: not measured */
};

struct cdisk_sync_opts {
	unsigned depth;             /* requests in flight; 0: the base's own (16; iSCSI 4) */
	uint64_t rate;              /* bytes per second; 0: no limit */
	uint32_t max_seconds;       /* stop starting work after this; 0: none */
	uint64_t min_dirty;         /* bytes: with less, do nothing */
	bool dry_run;               /* count, send nothing, change nothing */
	uint64_t range_offset;      /* pull: bytes from here ... */
	uint64_t range_length;      /* ... this many; 0: to the end */
	bool verify;                /* read what was sent back from the base */
	/* Probe the base first (cdisk_probe, [probe] thresholds): when it is
	 * not healthy, fail with -EAGAIN (unreachable: -EHOSTUNREACH) and
	 * change nothing. */
	bool if_healthy;
	/* How far the base's round trip may rise over its baseline before the
	 * sync slows down, so that others' traffic comes first (a delay-based
	 * controller, as LEDBAT).  0: [sync] target_delay (25); -1: never. */
	int target_delay_ms;
	/* Called about five times a second from the calling thread. */
	void (*progress)(void *opaque, const struct cdisk_sync_progress *p);
	void *opaque;
	/* When set to nonzero (say, by a signal handler), the owner is asked
	 * to stop a sync it runs for cdisk_sync_via_owner. */
	volatile sig_atomic_t *stop;
};

struct cdisk_sync_stats {
	uint64_t dirty_bytes;       /* when the sync started */
	uint64_t blocks;            /* blocks now clean */
	uint64_t bytes;             /* bytes sent */
	uint64_t requests;          /* write and zero requests sent */
	uint64_t zero_requests;
	uint64_t flushes;
	uint64_t retries;           /* reads and flushes sent again after a cut */
	uint64_t verified_bytes;
	uint64_t left_bytes;        /* still dirty at the end */
	uint64_t pulled_bytes;      /* pull: base data stored in the overlay */
	uint64_t released_bytes;    /* close: overlay data let go */
	double seconds;
	uint64_t rate_limit;        /* the rate the controller settled on; 0: none */
	unsigned slowdowns;         /* times the base's delay made it slow down */
	double delay_ms, base_delay_ms;
	bool below_min;             /* nothing done: less than min_dirty */
	bool stopped;               /* max_seconds or a stop request ended it */
};

/* Send every dirty block to the base, flush the base, and only then record
 * the blocks clean, in batches, so an interrupted sync resumes where it
 * stopped.  A block written while it was being sent stays dirty.  Safe
 * while other threads write to the disk. */
int cdisk_sync(struct cdisk *disk, const struct cdisk_sync_opts *opts,
	       struct cdisk_sync_stats *stats);
/* Pull: fetch the base's data for blocks the overlay does not hold (in
 * the range, or all), so that the disk keeps working without the network.
 * Blocks written meanwhile are left as written. */
int cdisk_pull(struct cdisk *disk, const struct cdisk_sync_opts *opts,
	       struct cdisk_sync_stats *stats);
/* Close: sync everything and verify it, then let every clean block read
 * from the base again and free its space in the overlay.  Blocks written
 * meanwhile stay, dirty. */
int cdisk_sync_close(struct cdisk *disk, const struct cdisk_sync_opts *opts,
		     struct cdisk_sync_stats *stats);
/* The same for a disk another process (cdisk-serve) owns: it runs the sync
 * and this waits for the end, reporting progress.  -EBUSY when there is no
 * owner to ask. */
enum cdisk_sync_mode { CDISK_SYNC_PUSH, CDISK_SYNC_PULL, CDISK_SYNC_CLOSE };
int cdisk_sync_via_owner(struct cdisk_ctx *ctx, const char *path,
			 enum cdisk_sync_mode mode, const struct cdisk_sync_opts *opts,
			 struct cdisk_sync_stats *stats);
/* Ask a running cdisk_sync on disk (from another thread or a signal
 * handler) to stop after the requests in flight. */
void cdisk_sync_stop(struct cdisk *disk);

/* ---- the synchronous mirror (mirror.c) ----
 * A disk may keep a mirror: a second target that holds the whole virtual
 * disk (base data included).  Every guest write goes to the disk and to
 * the mirror and completes when both have it; reads never touch the
 * mirror.  Blocks the mirror may lack are set in the disk's out-of-sync
 * bitmap (bitmap 2), durably before a write that missed the mirror is
 * acknowledged, and a copy drains that bitmap. */
enum cdisk_mirror_state {
	CDISK_MIRROR_NONE = 0,     /* no mirror */
	CDISK_MIRROR_COPYING,      /* writes reach both; a copy sends what is out of sync */
	CDISK_MIRROR_IN_SYNC,      /* writes reach both and nothing is out of sync */
	CDISK_MIRROR_DEGRADED,     /* the mirror failed: writes are recorded, not sent */
	CDISK_MIRROR_PAUSED,       /* by request: as degraded, with no probing */
	/* After a failover: the mirror became the primary; uri names the
	 * former primary, fenced (never used again by itself), and
	 * out_of_sync_bytes is what it misses.  The disk has no mirror. */
	CDISK_MIRROR_FENCED,
};

struct cdisk_mirror_status {
	char uri[CDISK_MAX_URI + 1];
	enum cdisk_mirror_state state;
	uint64_t size;               /* the disk's */
	uint64_t out_of_sync_bytes;
	uint64_t since;              /* unix seconds: when this state began */
	/* Set out of sync by the last recovery after a crash (the extents of
	 * the activity log): what a restart resends beyond what was known. */
	uint64_t recovered_bytes;
	uint64_t copied_bytes;       /* by the copy under way */
	uint64_t copy_rate;          /* its bytes a second; 0: not known yet */
	char last_error[256];        /* "" when none */
	uint64_t last_error_time;    /* unix seconds */
	uint32_t timeout_ms;         /* a mirror write slower than this degrades */
	bool fail_on_error;          /* --on-mirror-error fail */
	bool served;                 /* answered by the process serving the disk */
	/* The target reads come from and writes go to first: the primary's
	 * URI (on_primary), or the base under the disk's overlay ("" when it
	 * has none: the overlay is the whole disk). */
	char primary[CDISK_MAX_URI + 1];
	bool on_primary;
	/* The mirror is a restore's auxiliary (cdisk-restore --to): when in
	 * sync it stays the mirror, or with restore_switch becomes the
	 * primary. */
	bool restoring;
	bool restore_switch;
	uint64_t restore_started;    /* unix seconds */
};

/* Check uri (reachable, writable, at least the disk's size, not the
 * disk's own primary or base by identity), record it and mark the whole
 * disk out of sync; the copy is cdisk_mirror_copy's (idle disk) or the
 * keeper's (cdisk_mirror_start).  -EEXIST when a mirror is attached. */
int cdisk_mirror_attach(struct cdisk *disk, const char *uri);
/* Forget the mirror (a copy under way stops); its data is left as is. */
int cdisk_mirror_detach(struct cdisk *disk);
/* Pause: writes reach the disk only and are recorded; resume lets the
 * copy send what was recorded. */
int cdisk_mirror_pause(struct cdisk *disk, bool pause);
/* Copy what is out of sync now, without waiting for the next probe;
 * full: mark every block out of sync first. */
int cdisk_mirror_resync(struct cdisk *disk, bool full);
/* The copy of an idle disk, in the calling thread: open the mirror and
 * send what is out of sync until nothing is (progress, rate and stop as a
 * sync's). */
int cdisk_mirror_copy(struct cdisk *disk, const struct cdisk_sync_opts *opts,
		      struct cdisk_sync_stats *stats);
int cdisk_mirror_get_status(struct cdisk *disk, struct cdisk_mirror_status *status);
/* Make the mirror the primary of a disk on a primary, now: the primary
 * becomes the fenced former primary (CDISK_MIRROR_FENCED).  Refused
 * (-EAGAIN) when the mirror is not reachable or not in sync, unless
 * force; *lost_bytes: what the mirror did not have (lost by force). */
int cdisk_mirror_failover(struct cdisk *disk, bool force, uint64_t *lost_bytes);
/* For a server: a thread that keeps the mirror (opens it without
 * stalling writes, copies, probes while degraded, resyncs).  cdisk_close
 * stops it. */
int cdisk_mirror_start(struct cdisk *disk);

/* The same verbs for a disk another process serves, over its control
 * socket.  -EBUSY when there is no owner to ask. */
enum cdisk_mirror_verb {
	CDISK_MIRROR_ATTACH, CDISK_MIRROR_DETACH, CDISK_MIRROR_PAUSE,
	CDISK_MIRROR_RESUME, CDISK_MIRROR_RESYNC, CDISK_MIRROR_RESYNC_FULL,
	CDISK_MIRROR_STATUS, CDISK_MIRROR_FAILOVER, CDISK_MIRROR_FAILOVER_FORCE,
};
int cdisk_mirror_via_owner(struct cdisk_ctx *ctx, const char *path,
			   enum cdisk_mirror_verb verb, const char *uri,
			   struct cdisk_mirror_status *status);

/* Online verify (verify.c): read the disk's data (cdisk_pread's view:
 * the primary, or the overlay over its base) and the mirror's, region by
 * region, and compare the bytes; blocks out of sync are not compared.  A
 * region a write lands on meanwhile is compared again later, so live
 * writes give no false difference.  With repair the differing blocks are
 * set out of sync, durably, for the next copy (an idle disk's caller
 * runs cdisk_mirror_copy; a served disk's keeper resyncs). */
#define CDISK_VERIFY_RATE (64ull << 20)   /* bytes a second, by default */

struct cdisk_verify_opts {
	bool repair;
	uint64_t rate;              /* bytes a second read from each side; 0: the default */
	/* Called after each region (the calling thread); bytes done of total. */
	void (*progress)(void *opaque, uint64_t done, uint64_t total);
	void *opaque;
	volatile sig_atomic_t *stop;   /* nonzero: stop after the region under way */
};

struct cdisk_verify_range {
	uint64_t offset, length;    /* bytes */
};

struct cdisk_verify_result {
	uint64_t size;              /* the disk's */
	uint64_t compared_bytes;
	uint64_t differing_bytes;
	uint64_t out_of_sync_bytes; /* known to differ (bitmap 2): not compared */
	uint64_t busy_bytes;        /* written again at every try: not compared */
	uint64_t recompared_bytes;  /* compared again after a write landed on them */
	struct cdisk_verify_range *ranges;   /* the differing ranges, in order */
	size_t nranges;
	bool repaired;              /* the differing blocks are set out of sync */
	bool stopped;               /* asked to stop before the end */
	bool served;                /* done by the disk's server */
	double seconds;
};

/* -EAGAIN when the mirror is degraded, paused or copying; -ENOENT without
 * a mirror; -EROFS on a disk open read-only. */
int cdisk_mirror_verify(struct cdisk *disk, const struct cdisk_verify_opts *opts,
			struct cdisk_verify_result *res);
/* The same on a disk another process serves (its mirror's keeper does
 * it): -EALREADY while a verify of it runs; -EBUSY with no owner to ask. */
int cdisk_mirror_verify_via_owner(struct cdisk_ctx *ctx, const char *path,
				  const struct cdisk_verify_opts *opts,
				  struct cdisk_verify_result *res);
void cdisk_verify_result_free(struct cdisk_verify_result *res);

/* ---- restore onto a new primary (cdisk-restore --to) ----
 * The patent's auxiliary disk: a target that gets the current source
 * (the primary; after a failover, the former mirror) while the guest's
 * writes go to it too.  It takes the mirror's place (the mirror's status
 * shows it, with restoring set) until it is in sync: then it stays the
 * mirror or, with CDISK_RESTORE_SWITCH, becomes the primary (and a
 * failed-over disk's primary goes back to being the mirror). */
#define CDISK_RESTORE_SWITCH (1u << 0)

struct cdisk_restore_opts {
	unsigned flags;              /* CDISK_RESTORE_* */
	/* Run by /bin/sh when the restore is complete, with CDISK_DISK,
	 * CDISK_TARGET and CDISK_SWITCHED (0 or 1) in its environment;
	 * NULL: none.  Kept in memory by whoever does the copy. */
	const char *on_complete;
};

/* Check uri as an attach checks a mirror and record it as the restore's
 * auxiliary, everything out of sync; the same uri while its restore is
 * under way goes on with it.  -EINVAL: the disk is not on a primary;
 * -EEXIST: a restore to another target is under way; -EAGAIN: a mirror
 * is in use (fail over to it or detach it first); -EALREADY: uri is the
 * primary already (with CDISK_RESTORE_SWITCH) or the mirror (without). */
int cdisk_restore_start(struct cdisk *disk, const char *uri,
			const struct cdisk_restore_opts *opts);
/* An idle disk's restore, in the calling thread: the copy, then the
 * completion (st->stopped: stopped before it). */
int cdisk_restore_copy(struct cdisk *disk, const struct cdisk_sync_opts *opts,
		       struct cdisk_sync_stats *st);
/* cdisk_restore_start on a disk another process serves; status: the
 * mirror's status after it. */
int cdisk_restore_via_owner(struct cdisk_ctx *ctx, const char *path, const char *uri,
			    const struct cdisk_restore_opts *opts,
			    struct cdisk_mirror_status *status);

#endif

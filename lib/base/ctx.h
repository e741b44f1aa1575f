/* Internal: the context (ctx.c): the configuration (config.c) and errors
 * kept for the calling thread, the log callback. */
#ifndef CDISK_CTX_H
#define CDISK_CTX_H

#include "cdisk.h"
#include "util.h"

#define CD_DEFAULT_BACKUP_DIR "/var/lib/cdisk/meta"

#define CD_DEFAULT_RUNTIME_DIR "/run/cdisk"
#define CD_DEFAULT_CACHE_DIR "/var/lib/cdisk/cache"
#define CD_DEFAULT_CACHE_MAX (64ull << 30)
/* A mirror write slower than this degrades the disk: the guest waits at
 * most this long for a slow mirror, and a degraded mirror costs only a
 * resync of what was recorded, so a short wait is cheap. */
#define CD_DEFAULT_MIRROR_TIMEOUT_MS 5000u
/* A primary slower than this, with a mirror in sync, is failed over. */
#define CD_DEFAULT_FAILOVER_TIMEOUT_MS 5000u
/* What background work on a served disk (syncs, mirror copies, restores)
 * gets however busy the guests keep the server: enough for a resync of a
 * few GiB within minutes, little enough that a guest on a small disk
 * notices none of it. */
#define CD_DEFAULT_BACKGROUND_MIN_RATE (8ull << 20)
/* How long a connection's reader waits for its client on the CPU before
 * it sleeps (nbd-conn.c, spin_for_bytes), in microseconds. */
#define CD_DEFAULT_SERVE_SPIN_US 30

struct cd_probe_config {
	unsigned pings, depth;
	uint32_t interval_ms, timeout_s, max_seconds;
	uint64_t read_bytes;
	struct cdisk_probe_limits limits;
};

struct cd_config {
	char backup_dir[CDISK_MAX_URI + 1];   /* "": no backups by default */
	char runtime_dir[CDISK_MAX_URI + 1];  /* sockets of serving processes */
	uint64_t background_min_rate;         /* bytes/s the engines always get */
	bool serve_fifo;                      /* scheduler = fifo: no classes, no turns */
	uint32_t serve_workers;               /* the queue's workers; 0: four per core */
	uint32_t serve_spin_us;               /* a reader's wait on the CPU; 0: none */
	char tls_priority[256];               /* GnuTLS priority; "": CD_TLS_PRIORITY */
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
	/* [mirror] */
	uint32_t mirror_timeout_ms;           /* a slower mirror write degrades */
	bool mirror_fail;                     /* on_error = fail: fail the write instead */
	uint32_t failover_timeout_ms;         /* a slower primary is failed over */
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

#endif

/* Internal: targets, the face of a device stack (target.c), and the kinds
 * at its leaves (target-*.c). */
#ifndef CDISK_TARGET_H
#define CDISK_TARGET_H

#include <pthread.h>

#include "cdisk.h"
#include "uri.h"
#include "util.h"

/* Every call is blocking and may come from many threads at once; that is
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
	/* What the storage is, as the kind can tell beyond the URI's text
	 * (see cd_target_identity).  NULL: the kind cannot tell. */
	int (*identity)(struct cd_target *t, void *s, char *out, size_t len);
	/* Optional, for kinds with sessions: a write sent on s without
	 * waiting for its answer (*cookie names it), and the wait for that
	 * answer until deadline_ms (cd_now_ms): 0, a negative errno with the
	 * message kept, or 1 when it is still under way. */
	int (*aio_write)(struct cd_target *t, void *s, const void *buf, size_t len,
			 uint64_t off, int64_t *cookie);
	int (*aio_wait)(struct cd_target *t, void *s, int64_t cookie, uint64_t deadline_ms);
	/* Optional: how many bytes from off (*span, at most len) the
	 * storage says read as zeros, without reading them (a file's hole,
	 * NBD's base:allocation); 0 where it has data or cannot tell. */
	int (*zero_span)(struct cd_target *t, void *s, uint64_t off, uint64_t len,
			 uint64_t *span);
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
	bool local;                /* a file here: no network (cd_nowait) */
	bool local_file;           /* a regular file here, not a device (whose
				    * path, iSCSI or multipath, may hang) */
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
/* How many bytes from off are known to read as zeros (*span; 0 when the
 * kind cannot tell), so that a copy need not read them. */
int cd_target_zero_span(struct cd_target *t, uint64_t off, uint64_t len, uint64_t *span);
void cd_target_close(struct cd_target *t);

/* A write sent without waiting for its answer, so that one thread can
 * have two under way (a mirrored write's two legs) with no hand-over to
 * another thread.  Only where nothing would change the request on its
 * way down (aligned, within max_request, layers that pass such requests
 * as they are) and a session is idle now. */
struct cd_target_aio {
	void *pool;              /* the stack's bottom, found once at sending */
	void *session;
	int64_t cookie;
	uint64_t sent_ms;        /* cd_now_ms: the target's timeout counts from here */
};
/* 0: sent, or being sent (buf must stay until cd_target_aio_end).
 * -EAGAIN: not this way; nothing was sent, and the caller takes the
 * blocking one.  Never waits: no connecting, no waiting for a session
 * or for the pool's lock. */
int cd_target_aio_write(struct cd_target *t, struct cd_target_aio *a, const void *buf,
			size_t len, uint64_t off);
/* Until it is answered or deadline_ms (cd_now_ms) passes: 0, a negative
 * errno with the message kept, or 1 when still under way (wait again, or
 * end it as given up). */
int cd_target_aio_wait(struct cd_target *t, struct cd_target_aio *a, uint64_t deadline_ms);
/* The session back to the pool, or dropped after a broken connection or
 * a timeout, or when given up on under way (result 1): a late answer
 * must never be taken for another request's.  An error the server
 * answered leaves it in use.  Not sent again: a write whose fate is
 * unknown never is. */
void cd_target_aio_end(struct cd_target *t, struct cd_target_aio *a, int result);
/* One ping, never retried; *rtt_us is the request's own time, without
 * making a new connection.  -EAGAIN: the server answered busy. */
int cd_target_ping(struct cd_target *t, uint64_t *rtt_us);
/* Writable now: len bytes at off read and written back unchanged. */
int cd_target_write_back(struct cd_target *t, size_t len, uint64_t off);
/* The identity of the storage behind t, one line that two URIs naming
 * the same storage share however they are written: "file:MAJ:MIN:INO"
 * (the file's st_dev and st_ino), "file:blk:MAJ:MIN" (a block device's
 * st_rdev), "rbd:FSID:POOLID[/NS]:IMAGEID[@SNAPID]", "iscsi:" and the
 * LUN's device identification (VPD page 0x83: "naa:", "eui:" or "uuid:"
 * and hex, else "t10:" and the vendor's text), "http:"/"s3:" and the URL
 * in one spelling (HOST:PORT/PATH).  -EOPNOTSUPP (nbd) when the kind
 * cannot tell, with a message (the caller then says so). */
int cd_target_identity(struct cd_target *t, char *out, size_t len);
/* The identity of a local file or block device, as a file target's. */
int cd_file_identity(struct cdisk_ctx *ctx, const char *path, char *out, size_t len);

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

extern const struct cd_target_ops cd_file_target_ops;
extern const struct cd_target_ops cd_nbd_target_ops;
extern const struct cd_target_ops cd_iscsi_target_ops;
extern const struct cd_target_ops cd_rbd_target_ops;
extern const struct cd_target_ops cd_http_target_ops;
extern const struct cd_target_ops cd_s3_target_ops;
int cd_rbd_create(struct cdisk_ctx *ctx, const struct cd_uri *u, uint64_t size);
int cd_s3_create(struct cdisk_ctx *ctx, const char *uri, const struct cd_uri *u,
		 uint64_t size);

#endif

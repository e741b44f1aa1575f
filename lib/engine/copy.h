/* The copy engine: moves the blocks a bitmap names from a source to a
 * destination, batch after batch of
 *
 *	collect -> claim -> move -> flush the destination -> record
 *
 * with many moves under way at once, paced by a --rate and by the round
 * trip of a remote end (cd_pace), stopped by --max-time or a stop request.
 * A sync pushes the overlay's dirty blocks to the base and a pull fetches
 * the base's blocks into the overlay through it; a mirror's initial copy
 * and resync and a restore's copy are further pairs of source and
 * destination over other bitmaps.
 *
 * What the engine does not know is given to it: how one extent (or one
 * window of extents) moves (cd_copy_ops.move), how the destination is made
 * durable (.flush), and which bitmap the copy drains (struct cd_drain).  A
 * block is recorded drained only after the flush that covers it, and only
 * when no write landed on it since its batch claimed it: a crash or a kill
 * at any point costs at most the batch under way. */
#ifndef CDISK_COPY_H
#define CDISK_COPY_H

#include "bitmap.h"
#include "cdisk.h"
#include "ctx.h"
#include "pace.h"
#include "target.h"

struct cd_extent {
	uint64_t first, count;   /* blocks */
	bool sent;               /* it reached the destination */
};

/* The runs of blocks in [first, end) whose bit in bm is value, in pieces
 * that do not cross a boundary of per blocks; runs at most join_gap blocks
 * apart in one such piece become one extent, the blocks between included.
 * Under the disk's lock. */
int cd_copy_collect(struct cdisk *d, const struct cd_bitmap *bm, bool value,
		    uint64_t first, uint64_t end, uint64_t join_gap, uint64_t per,
		    struct cd_extent **out, size_t *n, uint64_t *blocks);

/* The bitmap a copy drains: a batch's set blocks are marked in claimed
 * before they are read; a write clears its blocks' claims (the disk's
 * mark_written), so a block rewritten during its journey stays set and
 * goes again.  After the destination's flush, clear() takes the blocks
 * still claimed out of bits, and the record is made durable. */
struct cd_drain {
	struct cd_bitmap *bits;
	struct cd_bitmap *claimed;
	int (*clear)(struct cdisk *d, uint64_t first, uint64_t count);
};

struct cd_copy;

struct cd_copy_ops {
	/* Move x[0..n) (one extent, or the extents of one window) from the
	 * source to the destination through buf (buf_bytes long).  It calls
	 * cd_copy_throttle before it sends and cd_copy_count once it has. */
	int (*move)(struct cd_copy *c, struct cd_extent *x, size_t n, uint8_t *buf);
	/* Make every move so far durable at the destination. */
	int (*flush)(struct cd_copy *c);
};

struct cd_copy {
	/* Set by the caller before cd_copy_run. */
	const struct cd_copy_ops *ops;
	const struct cd_drain *drain;      /* NULL: the moves record themselves */
	void *job;                         /* the caller's own state */
	struct cdisk *d;
	const struct cdisk_sync_opts *o;
	struct cdisk_sync_stats *st;
	struct cd_extent *ext;             /* from cd_copy_collect */
	size_t n;
	uint64_t total_bytes;              /* for progress */
	unsigned depth;                    /* moves under way at once */
	uint64_t window;                   /* blocks a move takes together; 0: one extent */
	size_t buf_bytes;                  /* a move's buffer */
	uint64_t batch_bytes;              /* a fixed batch; 0: about a second's work */
	/* Pace by the round trip of this target (NULL: no pacing); a kind
	 * without sessions of its own is pinged through pace_handle. */
	const char *pace_uri;
	struct cd_target *pace_handle;
	/* Set to nonzero to stop after the moves under way (besides the
	 * disk's sync_stop); NULL: none. */
	volatile sig_atomic_t *stop;

	/* The engine's own. */
	char error_msg[CD_ERROR_MAX];      /* the first failure, for the caller's thread */
	int error;
	size_t next, end;                  /* the batch under way: ext[next..end) */
	size_t batch_from;
	uint64_t batch_ms;                 /* when it began */
	uint64_t speed;                    /* bytes a second of the last batch */
	uint64_t start_ms;
	uint64_t sent_bytes;
	unsigned running;
	pthread_mutex_t lock;
	pthread_cond_t done;
	double tokens;                     /* the rate's token bucket ... */
	uint64_t tokens_us;
	struct cd_target *pinger;          /* ... and the delay-based controller */
	bool pinger_own;
	struct cd_pace pace;
};

/* Every batch of c->ext, then the controller's figures into c->st. */
int cd_copy_run(struct cd_copy *c);

/* For moves: wait until the rate lets bytes go; false when stopped. */
bool cd_copy_throttle(struct cd_copy *c, size_t bytes);
/* For moves: x[0..n) reached the destination in requests requests (zeros
 * of them zeroing), bytes in all. */
void cd_copy_count(struct cd_copy *c, struct cd_extent *x, size_t n, unsigned requests,
		   unsigned zeros, size_t bytes);
/* Past --max-time, or asked to stop. */
bool cd_copy_stopped(const struct cd_copy *c);

#endif

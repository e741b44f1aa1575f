/* Internal: the synchronous mirror (mirror.c) and its hooks in the
 * disk's write path (disk.c).
 *
 * A write's route is decided under the disk's lock: to the disk and the
 * mirror (the mirror is live and every block of the write is in sync with
 * it), or to the disk only, its blocks then set in bitmap 2 (out of
 * sync).  The mirror's leg runs on a mirror worker while the caller does
 * the disk's; a leg that fails or outlasts [mirror] timeout sets its
 * blocks out of sync and degrades the mirror, durably, before the write
 * is acknowledged.  Blocks out of sync are drained by the copy engine
 * (attach's initial copy, resync). */
#ifndef CDISK_MIRROR_H
#define CDISK_MIRROR_H

#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "bitmap.h"
#include "format.h"
#include "target.h"

struct cdisk;
struct cd_target;

enum cd_leg_op { CD_LEG_WRITE, CD_LEG_ZERO, CD_LEG_FLUSH, CD_LEG_READ };

#define MIRROR_WORKERS 32          /* legs under way at once, per disk */

struct cd_leg {
	struct cd_leg *next;
	enum cd_leg_op op;
	/* Where it goes, fixed when sent: a failover that swaps the roles
	 * meanwhile does not redirect a leg under way. */
	struct cd_target *t;
	bool primary;              /* the primary's leg, beside the mirror's */
	uint8_t *buf;
	size_t len;
	uint64_t off;
	/* Sent by its sender without waiting (cd_target_aio_write), who
	 * waits for it too; a worker takes it over only when the sender
	 * gives up on it. */
	bool here;
	struct cd_target_aio aio;
	int result;
	bool done;
	pthread_cond_t finished;   /* done is set (CLOCK_MONOTONIC): its sender alone waits */
	int refs;                  /* the sender's and the worker's */
	char msg[CD_MIRROR_ERROR_MAX];
};

struct cd_mirror {
	pthread_mutex_t lock;
	pthread_cond_t work;       /* a leg is queued, or stopping */
	pthread_cond_t wake;       /* the keeper: something changed */
	pthread_condattr_t leg_attr;   /* each leg's condition: CLOCK_MONOTONIC */
	struct cd_leg *head, *tail;
	pthread_t workers[MIRROR_WORKERS];
	unsigned nworkers, idle;
	/* Legs sent and not finished, those the sender gave up on too: a
	 * resync starts only at 0, or a late leg could land over it. */
	unsigned outstanding;
	/* The primary's legs under way: those a failover gave up on may still
	 * land on the former primary, which is not taken back until then. */
	unsigned primary_outstanding;
	bool stopping;
	struct cd_target *t;       /* the mirror's stack; NULL until opened */

	/* Under the disk's lock. */
	bool live;                 /* writes in sync go to both */
	struct cd_bitmap claimed;  /* the copy's claims (struct cd_drain) */
	bool copying;
	/* The copy could not read the disk's own data (its base or primary):
	 * that is no fault of the mirror's, which stays as it is. */
	bool copy_source_failed;
	uint64_t copied_bytes, copy_total, copy_rate, copy_start_ms;

	/* The keeper. */
	pthread_t keeper;
	bool keeper_started;
	bool kick;
	volatile sig_atomic_t copy_stop;

	/* A restore's --on-complete command (memory only: a server started
	 * again finishes the restore without it). */
	char *restore_hook;
};



/* The disk has a mirror attached (bitmap 2 means "out of sync with it"). */
bool cd_mirror_attached(const struct cdisk *d);
/* The mirror is a restore's auxiliary (cdisk-restore --to), not done yet. */
bool cd_restore_active(const struct cdisk *d);
/* Under the lock: true when the write must also go to the mirror; false
 * when not, its blocks then set out of sync. */
bool cd_mirror_route_locked(struct cdisk *d, uint64_t first, uint64_t count);
/* Without the lock: send the mirror's leg (buf is copied). NULL only when
 * out of memory: the caller then treats the leg as failed.  here: the
 * caller's own leg does not wait long (a local file, or a leg sent from
 * here too, cd_leg_here), so a small write may leave from this thread
 * and be waited for here. */
struct cd_leg *cd_mirror_send(struct cdisk *d, bool here, enum cd_leg_op op,
			      const void *buf, size_t len, uint64_t off);
/* The leg left from its sender's thread (its waiting needs no worker). */
bool cd_leg_here(const struct cd_leg *leg);
/* Without the lock: its result, waiting at most the mirror timeout
 * (-ETIMEDOUT past it).  The leg is the callee's after this. */
int cd_mirror_wait(struct cdisk *d, struct cd_leg *leg);

/* Failover: with a live mirror, the primary's I/O runs on the mirror's
 * workers too, so that a primary that does not answer within [mirror]
 * failover_timeout is given up on, and the mirror (which holds every
 * acknowledged write) becomes the primary. */
/* Under the lock: the primary's I/O may fail over (a disk on a primary
 * whose mirror is live and in sync). */
bool cd_failover_armed_locked(struct cdisk *d);
/* Without the lock: the primary's leg (t, the primary's stack); for
 * CD_LEG_READ, buf is where cd_primary_wait puts the data. */
struct cd_leg *cd_primary_send(struct cdisk *d, struct cd_target *t, enum cd_leg_op op,
			       const void *buf, size_t len, uint64_t off);
int cd_primary_wait(struct cdisk *d, struct cd_leg *leg, void *buf);
/* Under the lock: the mirror becomes the primary, the primary the fenced
 * former primary (never used again by itself; bitmap 2 names what it
 * misses), stored at once.  gen: cd_primary_gen when the failed request
 * began; when a failover happened since, there is nothing to do.  Refused
 * (-EAGAIN) when the mirror is not live or, unless force, not in sync. */
int cd_failover_locked(struct cdisk *d, uint64_t gen, bool force, const char *why);
/* Under the lock, after both legs: a failed leg's blocks are set out of
 * sync and the mirror counts as degraded, durably.  Returns 0, or the
 * error to give the guest when [mirror] on_error = fail. */
int cd_mirror_finish_locked(struct cdisk *d, uint64_t first, uint64_t count,
			    int leg_result);
/* Under the lock, when a flush reached the disk but not the mirror:
 * every extent of the activity log is set out of sync. */
int cd_mirror_flush_failed_locked(struct cdisk *d, int err);
/* Under the lock: a write's data is down; a copy that claimed these
 * blocks must send them again. */
void cd_mirror_unclaim_locked(struct cdisk *d, uint64_t first, uint64_t count);
/* At open, after recovery: the mirror's runtime state for a writable disk
 * with a mirror attached (no I/O). */
int cd_mirror_init(struct cdisk *d);
/* At close: stop the keeper and the workers, close the mirror. */
void cd_mirror_free(struct cdisk *d);

/* For the engine's side (engine/mirror.c). */
struct cd_bitmap *cd_mirror_oos(struct cdisk *d);
/* Under the lock: a new state into the superblock now. */
int cd_mirror_store_state_locked(struct cdisk *d, uint32_t state, const char *error);
/* Under the lock: the mirror failed; writes are recorded from now on. */
int cd_mirror_degrade_locked(struct cdisk *d, const char *why);
/* Under the lock: writes in sync go to both again, if they may. */
bool cd_mirror_go_live_locked(struct cdisk *d);
void cd_mirror_note_in_sync_locked(struct cdisk *d);
/* Wake the keeper. */
void cd_mirror_kick(struct cd_mirror *m);
/* Stop the keeper and the workers (they finish what is queued). */
void cd_mirror_stop_threads(struct cd_mirror *m);

#endif

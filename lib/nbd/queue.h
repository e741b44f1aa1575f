/* Internal: the server's request queue, its scheduler and its pool of
 * workers.
 *
 * Readers (one per connection) parse requests and push them here; a pool
 * sized to the machine, not to the number of connections, carries them
 * out.  Every request says its class, its export and its user (a flow),
 * so that ordering, fairness and limits are decided here, away from the
 * protocol:
 *  - users share fairly: the flow served least so far (in bytes, plus a
 *    cost per request) goes first, however many connections it has;
 *  - a user's limits (IOPS and bytes per second as token buckets with a
 *    burst, requests carried out at once) hold requests back, never fail
 *    them;
 *  - within a user, reads go before writes and flushes (a write is not
 *    passed over more than a few times in a row);
 *  - background work (the engines' copies of a served disk) takes what
 *    the guests leave, but never less than a guaranteed rate. */
#ifndef CDISK_QUEUE_H
#define CDISK_QUEUE_H

#include <stdint.h>

#include "cdisk.h"
#include "stats.h"
#include "users.h"

enum cd_req_class {
	CD_REQ_READ,        /* a guest's read (and block status) */
	CD_REQ_WRITE,       /* a guest's write, zero, discard or flush */
	CD_REQ_BACKGROUND,  /* the engines' own work on a served disk */
	CD_REQ_CLASSES
};

struct cd_export;
struct cd_qflow;

struct cd_qitem {
	struct cd_qitem *next;
	enum cd_req_class cls;
	struct cd_export *exp;
	struct cd_qflow *flow;       /* its user's (cd_queue_conn_in) */
	uint64_t bytes;              /* what it moves, for bandwidth limits */
	uint64_t queued_ns;          /* when it was pushed (cd_queue_push) */
	bool quick;                  /* a small read or write of a local file */
	/* Carries the request out; the item is the callee's from then on. */
	void (*run)(struct cd_qitem *item);
};

/* A list of items, pushed in one go. */
struct cd_qbatch {
	struct cd_qitem *head, *tail;
	unsigned n;
};

struct cd_queue;

/* workers: how many wait for work from the start; max: how many there
 * may be when every one of them is stuck (a base that hangs, a client
 * that reads no replies). */
int cd_queue_new(struct cdisk_ctx *ctx, unsigned workers, unsigned max,
		 struct cd_queue **out);
/* Workers: those asked for ([serve] workers), or 0 for a few per core;
 * and the most there may be. */
void cd_queue_size(unsigned want, unsigned *workers, unsigned *max);
void cd_qbatch_add(struct cd_qbatch *b, struct cd_qitem *item);
/* Hands the batch to the scheduler and empties it.  Every item has its
 * flow. */
void cd_queue_push(struct cd_queue *q, struct cd_qbatch *b);
/* Carry it out on the caller's thread, when a worker would take it at once
 * anyway: nothing waits but the caller's own flow's work (its batch's
 * others, pushed first) and background work, and its user has no limit.
 * A hand-over from the reader to a worker is a context switch, most of a
 * small request's cost.  try_run returns false when it would have to
 * wait, and did nothing.  False, then or when the queue would not let it
 * run here, and the item is the caller's again, to push.  Only for
 * requests that cannot wait on the network (nbd-conn.c). */
bool cd_queue_run_here(struct cd_queue *q, struct cd_qitem *it,
		       bool (*try_run)(struct cd_qitem *it));
/* A connection's own work that a worker does before any request, outside
 * scheduling, limits and statistics: a reader hands over the sending of
 * replies that the client takes slowly (nbd-conn.c).  A worker is woken,
 * or started when none is idle. */
void cd_queue_chore(struct cd_queue *q, struct cd_qitem *it);
/* From the accept loop: when no request has finished for a while and
 * work waits, start one more worker (up to max; pushes do it too); when
 * quick work waits behind a worker that is held up, wake the others.
 * Returns how soon it wants to be called again (ms): soon while guests
 * are busy, -1 (a second is fine) when they are quiet. */
int cd_queue_tick(struct cd_queue *q);
unsigned cd_queue_workers(struct cd_queue *q);
/* No background work is being carried out (tickets may wait for their
 * turn): a reader may spend the CPU waiting for its client (nbd-conn.c,
 * spin_for_bytes). */
bool cd_queue_background_idle(struct cd_queue *q);
/* The server stops: what is queued goes without waiting for limits. */
void cd_queue_drain(struct cd_queue *q);
/* Lets the workers finish what was pushed, then frees the queue. */
void cd_queue_free(struct cd_queue *q);

/* A connection of user comes in: its flow, made the first time, with the
 * users file's limits (file_limits, NULL: none) unless the control socket
 * set others.  -EUSERS, with why, when the user has all the connections
 * its limit allows. */
int cd_queue_conn_in(struct cd_queue *q, const char *user,
		     const struct cd_user_limits *file_limits, struct cd_qflow **out,
		     char *why, size_t len);
void cd_queue_conn_out(struct cd_queue *q, struct cd_qflow *f);
struct cd_io_stats *cd_qflow_stats(struct cd_qflow *f);
/* Limits set at run time (control "user-limits"): kept until the users
 * file is read again.  A user not connected yet gets them when it does. */
int cd_queue_set_limits(struct cd_queue *q, const char *user, const struct cd_user_limits *l);
/* The limits in effect for user, or as it will have them when it comes
 * in (limits set at run time); false when none were set. */
bool cd_queue_limits_of(struct cd_queue *q, const char *user, struct cd_user_limits *out);
/* The users file was read again: its limits, for every flow named
 * "user:NAME" (none for a name it lacks), replace any set at run time. */
void cd_queue_reload_limits(struct cd_queue *q, const struct cd_users *users);
void cd_queue_set_background_min_rate(struct cd_queue *q, uint64_t bytes_per_second);

/* Background work of bytes asks its turn: blocks until the scheduler
 * gives it (guests first, but at least the guaranteed rate), or until
 * cancelled(arg) says the work is no longer wanted (-ECANCELED; checked
 * every 50 ms; NULL: never).  Each 0 is followed by one end once the work
 * is done; *t0 is for the end. */
int cd_queue_background_begin(struct cd_queue *q, uint64_t bytes, uint64_t *t0,
			      bool (*cancelled)(void *arg), void *arg);
void cd_queue_background_end(struct cd_queue *q, uint64_t bytes, int err, uint64_t t0);

struct cd_queue_user_view {
	const char *user;              /* "user:alice", "uid:1000", "psk:x", "tls:x", "-",
					* or "(background)" for the engines' work */
	const struct cd_io_stats *stats;
	struct cd_user_limits limits;  /* in effect; 0 fields: none */
	unsigned connections, queued, inflight;
};
/* Calls fn for every user the queue knows, under the queue's lock: fn only
 * copies or renders (no I/O, no other lock). */
void cd_queue_foreach_user(struct cd_queue *q,
			   void (*fn)(const struct cd_queue_user_view *v, void *arg), void *arg);

#endif

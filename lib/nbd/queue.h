/* Internal: the server's request queue and its pool of workers.
 *
 * Readers (one per connection) parse requests and push them here; a pool
 * sized to the machine, not to the number of connections, carries them
 * out.  Every request says its class, its export and its user, so that
 * ordering, fairness and limits can be decided here, away from the
 * protocol. */
#ifndef CDISK_QUEUE_H
#define CDISK_QUEUE_H

#include <stdint.h>

#include "cdisk.h"

enum cd_req_class {
	CD_REQ_READ,        /* a guest's read (and block status) */
	CD_REQ_WRITE,       /* a guest's write, zero, discard or flush */
	CD_REQ_BACKGROUND,  /* the engines' own work on a served disk */
};

struct cd_export;

struct cd_qitem {
	struct cd_qitem *next;
	enum cd_req_class cls;
	struct cd_export *exp;
	const char *user;            /* the connection's identity, never NULL */
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
/* Workers for this machine: a few per core. */
void cd_queue_default_size(unsigned *workers, unsigned *max);
void cd_qbatch_add(struct cd_qbatch *b, struct cd_qitem *item);
/* Hands the batch to the workers and empties it. */
void cd_queue_push(struct cd_queue *q, struct cd_qbatch *b);
/* When no request has finished for a while and work waits, start one
 * more worker (up to max).  Called at every push and by the accept loop. */
void cd_queue_tick(struct cd_queue *q);
unsigned cd_queue_workers(struct cd_queue *q);
/* Lets the workers finish what was pushed, then frees the queue. */
void cd_queue_free(struct cd_queue *q);

#endif

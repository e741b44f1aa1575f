/* Device layers: a target is a stack of small devices, each with the
 * device below it as `next`.  The bottom one (dev-pool.c) drives a kind
 * (target-*.c) through its sessions; each layer above adds one thing
 * (dev-retry.c, dev-split.c, dev-rmw.c); target.c opens the stack for a
 * URI, shares it within the process and calls its top.  docs/DESIGN.md
 * "Device layers" draws it and says why in this order. */
#ifndef CDISK_DEV_H
#define CDISK_DEV_H

#include "cdisk.h"
#include "target.h"
#include "uri.h"

struct cd_dev;

/* What a device takes.  Above a layer that hides a limit, the limit is
 * gone: above the split layer any length goes, above rmw any offset. */
struct cd_dev_caps {
	uint32_t align;           /* requests must be multiples of this */
	uint32_t max_request;     /* bytes per request; 0: any */
	/* pwrite_pieces takes pieces within one window of this many bytes;
	 * 0: none, the caller writes them one by one. */
	uint32_t scatter_window;
};

/* Every call blocks and may come from many threads at once.  A NULL entry
 * passes the call to the device below unchanged (cd_dev_* below). */
struct cd_dev_ops {
	const char *name;
	int (*pread)(struct cd_dev *d, void *buf, size_t len, uint64_t off);
	int (*pwrite)(struct cd_dev *d, const void *buf, size_t len, uint64_t off);
	/* Aligned, in range, in ascending order, within one scatter window;
	 * on failure which of them were written is unknown. */
	int (*pwrite_pieces)(struct cd_dev *d, const struct cd_piece *v, size_t n);
	/* -EOPNOTSUPP: the face writes zeros instead. */
	int (*zero)(struct cd_dev *d, size_t len, uint64_t off);
	/* -EOPNOTSUPP: the face stops discarding; the data stays. */
	int (*discard)(struct cd_dev *d, size_t len, uint64_t off);
	int (*flush)(struct cd_dev *d);
	/* -EOPNOTSUPP: nothing is known to read as zeros. */
	int (*zero_span)(struct cd_dev *d, uint64_t off, uint64_t len, uint64_t *span);
	uint64_t (*size)(struct cd_dev *d);
	void (*caps)(struct cd_dev *d, struct cd_dev_caps *c);
	/* One ping, never sent twice; *rtt_us without making a connection. */
	int (*ping)(struct cd_dev *d, uint64_t *rtt_us);
	/* What the storage is (cd_target_identity); only the bottom knows. */
	int (*identity)(struct cd_dev *d, char *out, size_t len);
	/* Frees this device only; cd_dev_close_stack walks down. */
	void (*close)(struct cd_dev *d);
	/* A request aligned to the bottom's align and within its max_request
	 * goes down as it is: cd_target_aio_write may pass this layer by. */
	bool passes_whole;
};

struct cd_dev {
	const struct cd_dev_ops *ops;
	struct cd_dev *next;       /* below; NULL at the bottom */
	struct cd_target *t;       /* the stack's face: context, URI, counters */
};

/* Calls on a device, passed down past layers that leave them alone. */
int cd_dev_pread(struct cd_dev *d, void *buf, size_t len, uint64_t off);
int cd_dev_pwrite(struct cd_dev *d, const void *buf, size_t len, uint64_t off);
int cd_dev_pwrite_pieces(struct cd_dev *d, const struct cd_piece *v, size_t n);
/* For layers: a set goes down together when as_is says the layer would
 * pass every piece unchanged; otherwise each goes through its pwrite. */
int cd_dev_pieces_through(struct cd_dev *d, const struct cd_piece *v, size_t n,
			  bool (*as_is)(struct cd_dev *d, const struct cd_piece *p),
			  int (*pwrite)(struct cd_dev *d, const void *buf, size_t len,
					uint64_t off));
int cd_dev_zero(struct cd_dev *d, size_t len, uint64_t off);
int cd_dev_discard(struct cd_dev *d, size_t len, uint64_t off);
int cd_dev_flush(struct cd_dev *d);
int cd_dev_zero_span(struct cd_dev *d, uint64_t off, uint64_t len, uint64_t *span);
uint64_t cd_dev_size(struct cd_dev *d);
void cd_dev_caps(struct cd_dev *d, struct cd_dev_caps *c);
int cd_dev_ping(struct cd_dev *d, uint64_t *rtt_us);
int cd_dev_identity(struct cd_dev *d, char *out, size_t len);
void cd_dev_close_stack(struct cd_dev *top);

/* Set by the layer that owns the connections on every request: true when
 * the request failed before it left (no session could be made), so even
 * a write may be sent again.  Per thread, read right after the call. */
extern __thread bool cd_dev_unsent;

/* The layers.  Each takes the device below it and returns the new top
 * (NULL, the message kept and `next` left to the caller: out of memory). */
int cd_dev_pool_open(struct cd_target *t, const struct cd_uri *u,
		     unsigned connections, struct cd_dev **out);
struct cd_dev *cd_dev_retry_new(struct cd_dev *next, unsigned retries);
struct cd_dev *cd_dev_split_new(struct cd_dev *next);
struct cd_dev *cd_dev_rmw_new(struct cd_dev *next);

/* Unit tests put a layer of their own into a stack between these. */
typedef struct cd_dev *(*cd_dev_hook)(struct cd_dev *next, void *arg);
struct cd_dev_hooks {
	cd_dev_hook under_retry, under_split;
	void *arg;
};
int cd_target_open_hooked(struct cdisk_ctx *ctx, const char *uri,
			  const struct cd_uri *u, const struct cd_target_ops *ops,
			  bool readonly, const struct cd_dev_hooks *hooks,
			  struct cd_target **out);

#endif

/* Internal: request statistics of the server, per export and per user.
 *
 * Counters are atomics, bumped by the workers as requests finish, so that
 * counting costs no lock on the request path; a reader (control status,
 * cdisk-info --metrics) takes a snapshot that may be a few requests
 * behind but is never torn within a counter. */
#ifndef CDISK_STATS_H
#define CDISK_STATS_H

#include <jansson.h>
#include <stdint.h>

enum cd_stat_op {
	CD_STAT_READ,
	CD_STAT_WRITE,
	CD_STAT_ZERO,
	CD_STAT_TRIM,
	CD_STAT_FLUSH,
	CD_STAT_BLOCK_STATUS,
	CD_STAT_BACKGROUND,   /* the engines' work on a served disk */
	CD_STAT_OTHER,        /* anything else a client may send (cache) */
	CD_STAT_NOPS
};

/* Latency buckets: 8 per power of two of nanoseconds (a value shows at most 12.5% above itself),
 * from 1 µs up; the last takes everything slower than ~137 s. */
#define CD_STAT_SUB 8
#define CD_STAT_BUCKETS (CD_STAT_SUB * 28)
#define CD_STAT_MIN_NS 1024ull

struct cd_op_stats {
	uint64_t requests, bytes, errors;
	uint64_t buckets[CD_STAT_BUCKETS];
};

struct cd_io_stats {
	struct cd_op_stats op[CD_STAT_NOPS];
	uint64_t depth;          /* gauge: queued or being carried out */
	uint64_t limit_waits;    /* requests held back by a limit */
	uint64_t limit_wait_ns;  /* total time they were held */
};

extern const char *const cd_stat_op_names[CD_STAT_NOPS];

/* The op an NBD command counts as. */
enum cd_stat_op cd_stat_op_of_nbd(uint16_t type);
/* err: 0 or a negative errno. */
void cd_io_stats_record(struct cd_io_stats *st, enum cd_stat_op op, uint64_t bytes,
			int err, uint64_t latency_ns);
void cd_io_stats_depth(struct cd_io_stats *st, int64_t change);
void cd_io_stats_limit_wait(struct cd_io_stats *st, uint64_t wait_ns);
/* A consistent enough copy to render from. */
void cd_io_stats_snapshot(const struct cd_io_stats *st, struct cd_io_stats *out);
/* The latency under which a fraction q (0.5, 0.99, 0.999) of an op's
 * requests finished, in ns: the upper bound of the bucket it falls in.
 * 0 when there were none. */
uint64_t cd_op_stats_quantile(const struct cd_op_stats *o, double q);
/* Upper bound of bucket i in ns (the last is UINT64_MAX). */
uint64_t cd_stat_bucket_bound(unsigned i);
unsigned cd_stat_bucket_of(uint64_t ns);

/* ---- Rendering (stats-render.c): what readers of the statistics get ----
 *
 * The fine histogram coarsened to CD_STAT_LE_COUNT fixed bounds (10 µs to
 * 10 s, 1-2.5-5 a decade), the "le" values of a Prometheus histogram. */
#define CD_STAT_LE_COUNT 19
/* Bound i in ns (UINT64_MAX past the last: +Inf). */
uint64_t cd_stat_le_ns(unsigned i);
/* Cumulative counts at each bound: a fine bucket counts under the first
 * bound at or above its upper edge (up to 12.5% slow, never fast). */
void cd_op_stats_coarse(const struct cd_op_stats *o, uint64_t out[CD_STAT_LE_COUNT]);
/* The total latency estimated from the buckets (no sum is kept). */
double cd_op_stats_sum_seconds(const struct cd_op_stats *o);
/* {"ops": {OP: {requests, bytes, errors, latency_us {p50, p99, p999},
 * latency_sum_us, latency_buckets [cumulative, one a bound]}},
 * queue_depth, limit_waits, limit_wait_ms, latency_le_us [bounds]},
 * an op with no requests left out; NULL when out of memory. */
json_t *cd_io_stats_json(const struct cd_io_stats *snapshot);

#endif

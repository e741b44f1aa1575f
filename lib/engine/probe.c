/* Probe: how well a target answers, measured with requests that change
 * nothing, and a verdict against thresholds.  cdisk-probe prints it,
 * cdisk-sync --if-healthy acts on it.
 *
 * Round trips come from one session, one ping at a time, so each time is
 * the network's and the server's, not our own queue's.  The bounded read
 * then runs several requests at once while pings go on beside it: how
 * much the round trip grows under that load tells a queue that is filling
 * (a slow link, a busy server) from one that is not. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "cdisk.h"
#include "ctx.h"
#include "target.h"
#include "util.h"

#define PROBE_PIECE (1u << 20)

struct samples {
	double *ms;
	unsigned n, cap;
};

static int add_sample(struct samples *s, double ms)
{
	if (s->n == s->cap) {
		unsigned cap = s->cap ? s->cap * 2 : 64;
		double *bigger = realloc(s->ms, cap * sizeof(*bigger));
		if (!bigger)
			return -ENOMEM;
		s->ms = bigger;
		s->cap = cap;
	}
	s->ms[s->n++] = ms;
	return 0;
}

static int by_value(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double mean(const struct samples *s)
{
	double sum = 0;

	for (unsigned i = 0; i < s->n; i++)
		sum += s->ms[i];
	return s->n ? sum / s->n : 0;
}

/* Jitter as RTP has it (RFC 3550): the mean change from one round trip
 * to the next, in the order they were taken. */
static double jitter(const struct samples *s)
{
	double sum = 0;

	for (unsigned i = 1; i < s->n; i++)
		sum += fabs(s->ms[i] - s->ms[i - 1]);
	return s->n > 1 ? sum / (s->n - 1) : 0;
}

static void summarize(struct samples *s, struct cdisk_probe_result *res)
{
	res->jitter_ms = jitter(s);
	res->rtt_mean_ms = mean(s);
	qsort(s->ms, s->n, sizeof(*s->ms), by_value);
	res->rtt_min_ms = s->ms[0];
	res->rtt_max_ms = s->ms[s->n - 1];
	res->rtt_p95_ms = s->ms[(unsigned)ceil(0.95 * s->n) - 1];
}

static void sleep_ms(uint32_t ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };

	nanosleep(&ts, NULL);
}

static bool unreachable_error(int r);

/* One ping counted: answered, busy or lost.  The time goes to into. */
static int ping_once(struct cd_target *t, struct cdisk_probe_result *res,
		     struct samples *into)
{
	uint64_t us;
	int r = cd_target_ping(t, &us);

	res->sent++;
	if (r == -EAGAIN) {
		res->busy++;
		if (t->retry_after > res->retry_after)
			res->retry_after = t->retry_after;
		return 0;
	}
	if (r < 0) {
		res->lost++;
		/* An error answer still came back: the server is there. */
		if (!unreachable_error(r))
			res->refused++;
		cd_log(t->ctx, CDISK_LOG_DEBUG, "ping lost: %s", cd_errbuf());
		return 0;
	}
	res->answered++;
	return add_sample(into, (double)us / 1000.0);
}

/* ---- the bounded read (and, for scratch targets, write) ---- */

struct load {
	struct cd_target *t;
	bool write;
	uint64_t next, end, done;
	uint64_t deadline_ms;
	int error;
	char error_msg[CD_ERROR_MAX];   /* kept by the worker's thread */
	pthread_mutex_t lock;
};

static void *load_worker(void *opaque)
{
	struct load *l = opaque;
	uint8_t *buf = malloc(PROBE_PIECE);

	if (buf)
		memset(buf, 0xa5, PROBE_PIECE);   /* not zeros: nothing may skip them */
	for (;;) {
		uint64_t off;
		size_t len;
		int r;

		pthread_mutex_lock(&l->lock);
		if (!buf && !l->error)
			l->error = -ENOMEM;
		if (l->error || l->next >= l->end || cd_now_ms() >= l->deadline_ms) {
			pthread_mutex_unlock(&l->lock);
			break;
		}
		off = l->next;
		len = l->end - off < PROBE_PIECE ? (size_t)(l->end - off) : PROBE_PIECE;
		l->next += len;
		pthread_mutex_unlock(&l->lock);
		r = l->write ? cd_target_pwrite(l->t, buf, len, off)
			     : cd_target_pread(l->t, buf, len, off);
		pthread_mutex_lock(&l->lock);
		if (r < 0 && !l->error) {
			l->error = r;
			memcpy(l->error_msg, cd_errbuf(), sizeof(l->error_msg));
		}
		if (r == 0)
			l->done += len;
		pthread_mutex_unlock(&l->lock);
	}
	free(buf);
	return NULL;
}

static bool load_running(struct load *l, unsigned workers_left)
{
	bool running;

	pthread_mutex_lock(&l->lock);
	running = workers_left && !l->error && l->next < l->end &&
		  cd_now_ms() < l->deadline_ms;
	pthread_mutex_unlock(&l->lock);
	return running;
}

/* Move up to bytes at depth until the deadline; pings go on beside it
 * into loaded (when given).  Returns the bytes per second. */
static int run_load(struct cd_target *t, bool write, uint64_t bytes, unsigned depth,
		    uint64_t deadline_ms, uint32_t interval_ms,
		    struct cdisk_probe_result *res, struct samples *loaded,
		    uint64_t *moved, double *rate)
{
	struct load l = { .t = t, .write = write, .deadline_ms = deadline_ms };
	pthread_t th[64];
	unsigned started = 0;
	uint64_t start = cd_now_ms();
	int r = 0;

	l.end = bytes < t->size ? bytes : t->size;
	pthread_mutex_init(&l.lock, NULL);
	while (started < depth && started < 64 &&
	       pthread_create(&th[started], NULL, load_worker, &l) == 0)
		started++;
	if (!started)
		load_worker(&l);
	while (loaded && r == 0 && load_running(&l, started)) {
		r = ping_once(t, res, loaded);
		sleep_ms(interval_ms);
	}
	for (unsigned i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	if (l.error && l.error_msg[0])
		cd_error(t->ctx, l.error, "%s", l.error_msg);
	if (write && l.error == 0)
		l.error = cd_target_flush(t);
	*moved = l.done;
	*rate = (double)l.done * 1000.0 / (double)(cd_now_ms() - start + 1);
	pthread_mutex_destroy(&l.lock);
	return r < 0 ? r : l.error;
}

/* ---- judging ---- */

static void add_reason(struct cdisk_probe_result *res, const char *fmt, ...)
	CD_PRINTF(2, 3);
static void add_reason(struct cdisk_probe_result *res, const char *fmt, ...)
{
	size_t used = strlen(res->reason);
	va_list ap;

	if (used && used + 2 < sizeof(res->reason)) {
		strcpy(res->reason + used, "; ");
		used += 2;
	}
	va_start(ap, fmt);
	vsnprintf(res->reason + used, sizeof(res->reason) - used, fmt, ap);
	va_end(ap);
}

static int health_rank(const char *health)
{
	if (!strcmp(health, "HEALTH_OK"))
		return 0;
	if (!strcmp(health, "HEALTH_WARN"))
		return 1;
	return 2;
}

static double osd_worst(const struct cdisk_probe_result *res)
{
	return fmax(fmax(res->osd_write_ms, res->osd_read_ms),
		    fmax(res->osd_commit_ms, res->osd_apply_ms));
}

/* One finding: its flag, and its words in the reason. */
static void over(struct cdisk_probe_result *res, enum cdisk_probe_figure figure,
		 const char *fmt, ...) CD_PRINTF(3, 4);
static void over(struct cdisk_probe_result *res, enum cdisk_probe_figure figure,
		 const char *fmt, ...)
{
	char text[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	res->over |= figure;
	add_reason(res, "%s", text);
}

static void judge(const struct cdisk_probe_limits *l, struct cdisk_probe_result *res)
{
	if (res->verdict == CDISK_UNREACHABLE)
		return;
	if (res->answered && l->max_rtt_ms >= 0 && res->rtt_mean_ms > l->max_rtt_ms)
		over(res, CDISK_PROBE_RTT, "round trip %.1f ms is over %.1f ms",
		     res->rtt_mean_ms, l->max_rtt_ms);
	if (res->answered && l->max_jitter_ms >= 0 && res->jitter_ms > l->max_jitter_ms)
		over(res, CDISK_PROBE_JITTER, "jitter %.1f ms is over %.1f ms", res->jitter_ms,
		     l->max_jitter_ms);
	if (l->max_loss >= 0 && res->loss > l->max_loss)
		over(res, CDISK_PROBE_LOSS, "%.0f%% of requests lost, over %.0f%%",
		     res->loss * 100, l->max_loss * 100);
	if (l->max_busy >= 0 && res->busy_fraction > l->max_busy)
		over(res, CDISK_PROBE_BUSY, "the server answered busy to %.0f%% of requests%s",
		     res->busy_fraction * 100, res->retry_after ? " and asked for a pause" : "");
	if (res->read_measured && l->min_read_rate >= 0 && res->read_rate < l->min_read_rate)
		over(res, CDISK_PROBE_READ_RATE, "read rate %.1f MiB/s is under %.1f MiB/s",
		     res->read_rate / 1048576, l->min_read_rate / 1048576);
	if (res->load_measured && l->max_load_delay_ms >= 0 &&
	    res->load_delay_ms > l->max_load_delay_ms)
		over(res, CDISK_PROBE_LOAD_DELAY, "the round trip grows by %.1f ms under load, "
		     "over %.1f ms", res->load_delay_ms, l->max_load_delay_ms);
	if (res->ceph && health_rank(res->ceph_health) > l->ceph_health)
		over(res, CDISK_PROBE_CEPH_HEALTH, "the Ceph cluster reports %s", res->ceph_health);
	if (res->ceph && l->max_osd_latency_ms >= 0 && osd_worst(res) > l->max_osd_latency_ms)
		over(res, CDISK_PROBE_OSD_LATENCY, "an OSD takes %.1f ms per request, over %.1f ms",
		     osd_worst(res), l->max_osd_latency_ms);
	res->verdict = res->reason[0] ? CDISK_DEGRADED : CDISK_HEALTHY;
}

/* ---- the probe ---- */

/* Failures that say the server cannot be reached now, rather than that
 * the question is wrong. */
static bool unreachable_error(int r)
{
	return cd_target_error_transient(r) || r == -ENXIO || r == -EHOSTDOWN ||
	       r == -ENETDOWN || r == -EPROTO;
}

static void fill_defaults(struct cdisk_ctx *ctx, const struct cdisk_probe_opts *in,
			  struct cdisk_probe_opts *o)
{
	const struct cd_probe_config *c = &ctx->cfg.probe;

	*o = *in;
	o->pings = o->pings ? o->pings : c->pings;
	o->interval_ms = o->interval_ms ? o->interval_ms : c->interval_ms;
	o->timeout_s = o->timeout_s ? o->timeout_s : c->timeout_s;
	o->max_seconds = o->max_seconds ? o->max_seconds : c->max_seconds;
	o->read_bytes = o->read_bytes ? o->read_bytes : c->read_bytes;
	o->depth = o->depth ? o->depth : c->depth;
}

/* A probe answers quickly and counts what is lost: its own timeout, and
 * nothing sent twice.  (The context's configuration is shared with other
 * threads of a server, so it is never changed for this.) */
static int open_with(struct cdisk_ctx *ctx, const char *uri, uint32_t timeout_s,
		     unsigned connections, bool readonly, struct cd_target **t)
{
	struct cd_target_tuning tn = {
		.timeout_s = timeout_s, .retries = 0,
		.connections = ctx->cfg.connections > connections ? ctx->cfg.connections
								  : connections,
	};

	return cd_target_open_tuned(ctx, uri, readonly, &tn, t);
}

int cd_probe_open(struct cdisk_ctx *ctx, const char *uri, uint32_t timeout_s,
		  struct cd_target **t)
{
	return open_with(ctx, uri, timeout_s, 1, true, t);
}

static int open_for_probe(struct cdisk_ctx *ctx, const char *uri,
			  const struct cdisk_probe_opts *o, struct cd_target **t)
{
	return open_with(ctx, uri, o->timeout_s, o->depth + 1, !o->write_scratch, t);
}

static int measure(struct cd_target *t, const struct cdisk_probe_opts *o,
		   struct cdisk_probe_result *res, uint64_t start)
{
	uint64_t budget_end = start + (uint64_t)o->max_seconds * 1000;
	uint64_t pings_end = start + (uint64_t)o->max_seconds * 1000 / 2;
	struct samples idle = { 0 }, loaded = { 0 };
	int r = 0;

	for (unsigned i = 0; i < o->pings && r == 0 && cd_now_ms() < pings_end; i++) {
		if (i)
			sleep_ms(o->interval_ms);
		r = ping_once(t, res, &idle);
	}
	if (r < 0)
		goto out;
	if (!res->answered) {
		res->verdict = res->busy || res->refused ? CDISK_DEGRADED : CDISK_UNREACHABLE;
		if (res->refused)
			snprintf(res->reason, sizeof(res->reason), "%u of %u requests failed: %s",
				 res->refused, res->sent, cd_errbuf());
		else if (!res->busy)
			snprintf(res->reason, sizeof(res->reason), "no answer to %u requests: %s",
				 res->sent, cd_errbuf());
		goto out;
	}
	if (!o->no_read) {
		r = run_load(t, false, o->read_bytes, o->depth, budget_end, o->interval_ms,
			     res, &loaded, &res->read_bytes, &res->read_rate);
		if (r == -ENOMEM)
			goto out;
		if (r < 0)
			add_reason(res, "the read failed: %s", cd_errbuf());
		res->read_measured = r == 0;
		res->load_measured = loaded.n > 0;
		res->loaded_rtt_mean_ms = mean(&loaded);
		r = 0;
	}
	if (o->write_scratch) {
		r = run_load(t, true, o->read_bytes, o->depth, cd_now_ms() + o->max_seconds * 1000ull,
			     o->interval_ms, res, NULL, &res->write_bytes, &res->write_rate);
		if (r < 0)
			goto out;
		res->write_measured = true;
	}
	summarize(&idle, res);
	if (res->load_measured)
		res->load_delay_ms = res->loaded_rtt_mean_ms - res->rtt_mean_ms;
out:
	res->loss = res->sent ? (double)res->lost / res->sent : 0;
	res->busy_fraction = res->sent ? (double)res->busy / res->sent : 0;
	free(idle.ms);
	free(loaded.ms);
	return r == -ENOMEM ? cd_error(t->ctx, r, "'%s': out of memory", t->uri) : r;
}

static bool on_ceph(const struct cd_target *t)
{
	return t->ops == &cd_rbd_target_ops;
}

/* The OSDs' counters are read before and after the probe, so their
 * latency is over the probe's own time, with its reads among the rest. */
static void ceph_load(struct cd_target *t, const struct cd_ceph_load *before,
		      struct cdisk_probe_result *res)
{
	struct cd_ceph_load c;

	res->ceph = true;
	if (cd_rbd_cluster_load(t, before, &c) < 0) {
		snprintf(res->ceph_health, sizeof(res->ceph_health), "unknown");
		add_reason(res, "the cluster's load is unknown: %s", cd_errbuf());
		return;
	}
	memcpy(res->ceph_health, c.health, sizeof(res->ceph_health));
	res->osds = c.osds;
	res->osd_write_ms = c.write_ms_max;
	res->osd_read_ms = c.read_ms_max;
	res->osd_commit_ms = c.commit_ms_max;
	res->osd_apply_ms = c.apply_ms_max;
}

int cdisk_probe(struct cdisk_ctx *ctx, const char *uri, const struct cdisk_probe_opts *in,
		const struct cdisk_probe_limits *l, struct cdisk_probe_result *res)
{
	uint64_t start = cd_now_ms();
	struct cd_ceph_load ceph_before = { 0 };
	struct cdisk_probe_opts o;
	struct cd_target *t = NULL;
	int r;

	memset(res, 0, sizeof(*res));
	fill_defaults(ctx, in, &o);
	r = open_for_probe(ctx, uri, &o, &t);
	if (r == -EAGAIN) {
		/* It answered, to say it is too busy to open anything. */
		res->sent = res->busy = 1;
		res->busy_fraction = 1;
		res->verdict = CDISK_DEGRADED;
		snprintf(res->reason, sizeof(res->reason), "%s", cd_errbuf());
		goto out;
	}
	if (r < 0 && unreachable_error(r)) {
		res->verdict = CDISK_UNREACHABLE;
		snprintf(res->reason, sizeof(res->reason), "%s", cd_errbuf());
		r = 0;
		goto out;
	}
	if (r < 0)
		goto out;
	if (o.write_scratch && t->readonly) {
		r = cd_error(ctx, -EROFS, "cannot time writes to '%s': it is read-only", uri);
		goto out;
	}
	if (on_ceph(t) && cd_rbd_cluster_load(t, NULL, &ceph_before) < 0)
		ceph_before.osds = 0;
	r = measure(t, &o, res, start);
	if (r < 0)
		goto out;
	if (res->verdict != CDISK_UNREACHABLE && on_ceph(t))
		ceph_load(t, ceph_before.osds ? &ceph_before : NULL, res);
	judge(l, res);
out:
	cd_target_close(t);
	res->seconds = (double)(cd_now_ms() - start) / 1000.0;
	return r;
}

/* The base a disk names, from the disk or, when it is served, from its
 * owner: probing never waits for a disk's lock. */
static int base_of(struct cdisk_ctx *ctx, const char *path, char *out, size_t len)
{
	struct cdisk_info info;
	struct cdisk *d;
	int r = cdisk_open(ctx, path, CDISK_OPEN_RDONLY | CDISK_OPEN_NO_BASE |
			   CDISK_OPEN_NO_REPAIR, &d);

	if (r == 0) {
		r = cdisk_get_info(d, &info);
		cdisk_close(d);
	} else if (r == -EBUSY) {
		r = cdisk_info_from_owner(ctx, path, &info);
	}
	if (r < 0)
		return r;
	if (!info.base[0])
		return cd_error(ctx, -EINVAL, "'%s' has no base to probe", path);
	snprintf(out, len, "%s", info.base);
	return 0;
}

int cdisk_probe_disk(struct cdisk_ctx *ctx, const char *path,
		     const struct cdisk_probe_opts *o, const struct cdisk_probe_limits *l,
		     struct cdisk_probe_result *res, char *base, size_t base_len)
{
	int r;

	memset(res, 0, sizeof(*res));
	if (o->write_scratch)
		return cd_error(ctx, -EINVAL, "cannot time writes through '%s': a disk's "
				"base is never scratch", path);
	r = base_of(ctx, path, base, base_len);
	return r < 0 ? r : cdisk_probe(ctx, base, o, l, res);
}

void cdisk_probe_limits_default(struct cdisk_ctx *ctx, struct cdisk_probe_limits *l)
{
	*l = ctx->cfg.probe.limits;
}

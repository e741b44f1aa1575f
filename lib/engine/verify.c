/* Online verify of a disk's mirror (verify.h, cdisk.h): the disk's data
 * and the mirror's, read region by region and compared byte for byte,
 * paced, while the guest writes.
 *
 * No false difference under live writes: each region is claimed in the
 * mirror's claims (the copy engine's, struct cd_mirror.claimed) before it
 * is read, and judged under the disk's lock afterwards.  A write takes the
 * claim off once both its legs are down (mark_written), so a block still
 * claimed and not being written was read, on both sides, with no write
 * between: a difference there is real.  A block unclaimed meanwhile is
 * compared again later.  Blocks out of sync are not compared: they are
 * known to differ.  The disk's lock is never held across a read. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bitmap.h"
#include "cdisk.h"
#include "ctx.h"
#include "disk.h"
#include "format.h"
#include "journal.h"
#include "mirror.h"
#include "target.h"
#include "text.h"
#include "util.h"
#include "verify.h"

#define VERIFY_REGION (1u << 20)   /* claimed, read and compared at once */
/* Passes over the blocks that writes kept from being compared; a block
 * rewritten at every one of them is reported as not compared. */
#define VERIFY_ROUNDS 50
#define VERIFY_ROUND_PAUSE_MS 20

struct runs {
	struct cdisk_verify_range *v;   /* blocks here, bytes once reported */
	size_t n, cap;
};

struct verify {
	struct cdisk *d;
	struct cd_target *t;
	const struct cdisk_verify_opts *o;
	struct cdisk_verify_result *res;
	bool served;                   /* writes come meanwhile: the mirror must stay live */
	struct runs diff, again;
	uint64_t rate, start_us, paced_bytes, done_bytes;
	uint8_t *a, *b;
};

static int runs_add(struct cdisk *d, struct runs *r, uint64_t first, uint64_t count)
{
	struct cdisk_verify_range *last = r->n ? &r->v[r->n - 1] : NULL;

	if (last && last->offset + last->length == first) {
		last->length += count;
		return 0;
	}
	if (r->n == r->cap) {
		size_t cap = r->cap ? r->cap * 2 : 64;
		struct cdisk_verify_range *v = realloc(r->v, cap * sizeof(*v));

		if (!v)
			return cd_error(d->ctx, -ENOMEM, "'%s': out of memory", d->path);
		r->v = v;
		r->cap = cap;
	}
	r->v[r->n++] = (struct cdisk_verify_range){ first, count };
	return 0;
}

/* ---- the mirror's state ---- */

/* Under the lock: whether a verify may start (starting) or go on.  A copy
 * under way, or blocks out of sync at the start, refuse it: it would
 * report as differing what the copy is about to send. */
static int check_state_locked(struct cdisk *d, bool served, bool starting)
{
	struct cd_mirror *m = d->mirror;
	uint64_t oos;
	char size[32];

	if (!cd_mirror_attached(d))
		return cd_error(d->ctx, -ENOENT, "cannot verify: '%s' has no mirror", d->path);
	if (!m)
		return cd_error(d->ctx, -EROFS, "cannot verify: '%s' is open read-only",
				d->path);
	if (d->sb.mirror_state == CD_MIRROR_STORED_FENCED)
		return cd_error(d->ctx, -EAGAIN, "cannot verify: '%s' failed over, and '%s' "
				"is the fenced former primary, not a mirror; attach it (or "
				"another) first", d->path, d->sb.mirror);
	if (d->sb.mirror_state == CD_MIRROR_STORED_PAUSED)
		return cd_error(d->ctx, -EAGAIN, "cannot verify while paused: mirror '%s' "
				"of '%s' is paused; resume it first", d->sb.mirror, d->path);
	if (d->sb.mirror_state == CD_MIRROR_STORED_DEGRADED || (served && !m->live))
		return cd_error(d->ctx, -EAGAIN, "cannot verify while degraded: mirror '%s' "
				"of '%s' is degraded%s%s", d->sb.mirror, d->path,
				d->sb.mirror_error[0] ? ": " : "", d->sb.mirror_error);
	oos = cd_mirror_oos(d)->count;
	if (starting && (m->copying || oos))
		return cd_error(d->ctx, -EAGAIN, "cannot verify while copying: %s of '%s' "
				"is out of sync with mirror '%s'; let the copy finish "
				"('cdisk-mirror resync')", cd_format_size(oos << d->block_shift,
				size, sizeof(size)), d->path, d->sb.mirror);
	return 0;
}

static bool stopped(struct verify *v)
{
	struct cd_mirror *m = v->d->mirror;
	bool stop = v->o->stop && *v->o->stop;

	/* A served disk's verify runs on the keeper: a pause, a detach or
	 * the disk's close stops it. */
	if (v->served && m) {
		pthread_mutex_lock(&m->lock);
		stop = stop || m->stopping || m->copy_stop;
		pthread_mutex_unlock(&m->lock);
	}
	return stop;
}

/* Hold the reads to the rate (bytes read from each side), in short naps
 * so that a stop is heard. */
static void pace(struct verify *v, size_t len)
{
	v->paced_bytes += len;
	for (;;) {
		uint64_t due = v->paced_bytes * 1000000ull / v->rate;
		uint64_t spent = cd_now_us() - v->start_us;

		if (spent >= due || stopped(v))
			return;
		usleep((useconds_t)(due - spent < 50000 ? due - spent : 50000));
	}
}

/* ---- comparing ---- */

/* Under the lock, after both reads: each block of the region is out of
 * sync (not compared), written meanwhile (again later), or compared. */
static int judge_locked(struct verify *v, uint64_t first, uint64_t count, size_t len)
{
	struct cdisk *d = v->d;
	struct cd_mirror *m = d->mirror;
	struct cdisk_verify_result *res = v->res;
	int r = 0;

	for (uint64_t i = 0; i < count && r == 0; i++) {
		uint64_t b = first + i;
		size_t at = (size_t)(i << d->block_shift);
		size_t n = len - at < d->block_size ? len - at : (size_t)d->block_size;

		if (cd_bitmap_get(cd_mirror_oos(d), b)) {
			res->out_of_sync_bytes += n;
		} else if (!cd_bitmap_get(&m->claimed, b) || cd_disk_being_written(d, b)) {
			r = runs_add(d, &v->again, b, 1);
		} else {
			res->compared_bytes += n;
			if (memcmp(v->a + at, v->b + at, n)) {
				res->differing_bytes += n;
				r = runs_add(d, &v->diff, b, 1);
			}
		}
	}
	return r;
}

/* Under the lock: claim the region's blocks in sync.  Blocks out of sync
 * are left alone: a copy may have claimed them, and a claim put back on a
 * block a write has since unclaimed would let that copy record an older
 * block as sent. */
static int claim_locked(struct cdisk *d, uint64_t first, uint64_t count)
{
	const struct cd_bitmap *oos = cd_mirror_oos(d);
	uint64_t end = first + count;
	int r = 0;

	for (uint64_t b = cd_bitmap_find(oos, first, false); b < end && r == 0;) {
		uint64_t stop = cd_bitmap_find(oos, b, true);

		if (stop > end)
			stop = end;
		r = cd_bitmap_assign(&d->mirror->claimed, b, stop - b, true);
		b = cd_bitmap_find(oos, stop, false);
	}
	return r < 0 ? cd_error(d->ctx, r, "'%s': out of memory", d->path) : 0;
}

static int compare(struct verify *v, uint64_t first, uint64_t count)
{
	struct cdisk *d = v->d;
	uint64_t off = first << d->block_shift;
	size_t len = (size_t)(count << d->block_shift);
	int r;

	if (off + len > d->sb.size)
		len = (size_t)(d->sb.size - off);
	pthread_mutex_lock(&d->lock);
	r = check_state_locked(d, v->served, false);
	if (r == 0)
		r = claim_locked(d, first, count);
	pthread_mutex_unlock(&d->lock);
	if (r < 0)
		return r;
	pace(v, len);
	r = cdisk_pread(d, v->a, len, off);
	if (r < 0)
		r = cd_error(d->ctx, r, "cannot verify: cannot read '%s' at %llu: %s", d->path,
			     (unsigned long long)off, cd_errbuf());
	else if ((r = cd_target_pread(v->t, v->b, len, off)) < 0)
		r = cd_error(d->ctx, r, "cannot verify: cannot read mirror '%s' at %llu: %s",
			     d->sb.mirror, (unsigned long long)off, cd_errbuf());
	pthread_mutex_lock(&d->lock);
	if (r == 0)
		r = judge_locked(v, first, count, len);
	cd_bitmap_assign(&d->mirror->claimed, first, count, false);
	pthread_mutex_unlock(&d->lock);
	return r;
}

/* first..first+count in regions; progress counts the first pass only. */
static int compare_run(struct verify *v, uint64_t first, uint64_t count, bool first_pass)
{
	uint64_t per = VERIFY_REGION >> v->d->block_shift;
	int r = 0;

	if (!per)
		per = 1;
	for (uint64_t b = first, end = first + count; b < end && r == 0;) {
		uint64_t n = end - b < per - b % per ? end - b : per - b % per;

		if (stopped(v)) {
			/* A pause or a detach stops the keeper's work: say
			 * which, as a verify asked for then is refused. */
			pthread_mutex_lock(&v->d->lock);
			r = check_state_locked(v->d, v->served, false);
			pthread_mutex_unlock(&v->d->lock);
			v->res->stopped = true;
			break;
		}
		r = compare(v, b, n);
		if (first_pass) {
			uint64_t bytes = n << v->d->block_shift;

			v->done_bytes += bytes;
			if (v->done_bytes > v->res->size)
				v->done_bytes = v->res->size;
			if (v->o->progress)
				v->o->progress(v->o->opaque, v->done_bytes, v->res->size);
		} else {
			v->res->recompared_bytes += n << v->d->block_shift;
		}
		b += n;
	}
	return r;
}

/* The whole disk, then, pass after pass, what writes kept from being
 * compared. */
static int compare_all(struct verify *v)
{
	int r = compare_run(v, 0, v->d->nblocks, true);

	for (unsigned round = 0; r == 0 && v->again.n && round < VERIFY_ROUNDS &&
				 !v->res->stopped; round++) {
		struct runs todo = v->again;

		memset(&v->again, 0, sizeof(v->again));
		/* The writes that got in the way may be a burst: give it a
		 * moment to pass. */
		usleep(VERIFY_ROUND_PAUSE_MS * 1000 * (round < 10 ? round : 10));
		for (size_t i = 0; i < todo.n && r == 0 && !v->res->stopped; i++)
			r = compare_run(v, todo.v[i].offset, todo.v[i].length, false);
		free(todo.v);
	}
	for (size_t i = 0; i < v->again.n; i++)
		v->res->busy_bytes += v->again.v[i].length << v->d->block_shift;
	return r;
}

/* ---- repairing ---- */

/* The differing blocks out of sync, durably, for the next copy. */
static int repair(struct verify *v)
{
	struct cdisk *d = v->d;
	char size[32];
	int r = 0;

	pthread_mutex_lock(&d->lock);
	for (size_t i = 0; i < v->diff.n && r == 0; i++)
		r = cd_disk_mark_locked(d, CD_BM_MIRROR, v->diff.v[i].offset,
					v->diff.v[i].length, true);
	if (r == 0 && d->sb.mirror_state == CD_MIRROR_STORED_IN_SYNC)
		r = cd_mirror_store_state_locked(d, CD_MIRROR_STORED_COPYING, NULL);
	if (r == 0)
		r = cd_journal_commit(d, true);
	pthread_mutex_unlock(&d->lock);
	if (r < 0)
		return cd_error(d->ctx, r, "cannot record the differing blocks of '%s' out "
				"of sync: %s", d->path, cd_errbuf());
	v->res->repaired = true;
	cd_log(d->ctx, CDISK_LOG_INFO, "'%s': verify: %s differ from mirror '%s'; set "
	       "out of sync, the next copy sends them", d->path,
	       cd_format_size(v->res->differing_bytes, size, sizeof(size)), d->sb.mirror);
	if (v->served && d->mirror)
		cd_mirror_kick(d->mirror);
	return 0;
}

/* The ranges in bytes, the last one cut at the disk's size. */
static void ranges_to_bytes(struct verify *v)
{
	struct cdisk *d = v->d;

	for (size_t i = 0; i < v->diff.n; i++) {
		struct cdisk_verify_range *x = &v->diff.v[i];
		uint64_t off = x->offset << d->block_shift;
		uint64_t end = (x->offset + x->length) << d->block_shift;

		x->offset = off;
		x->length = (end < d->sb.size ? end : d->sb.size) - off;
	}
	v->res->ranges = v->diff.v;
	v->res->nranges = v->diff.n;
	memset(&v->diff, 0, sizeof(v->diff));
}

static int run(struct cdisk *d, struct cd_target *t, const struct cdisk_verify_opts *o,
	       bool served, struct cdisk_verify_result *res)
{
	struct verify v = { .d = d, .t = t, .o = o, .res = res, .served = served,
			    .rate = o->rate ? o->rate : CDISK_VERIFY_RATE,
			    .start_us = cd_now_us() };
	int r;

	v.a = malloc(VERIFY_REGION);
	v.b = malloc(VERIFY_REGION);
	r = v.a && v.b ? compare_all(&v)
		       : cd_error(d->ctx, -ENOMEM, "'%s': out of memory", d->path);
	if (r == 0 && o->repair && v.diff.n)
		r = repair(&v);
	res->seconds = (double)(cd_now_us() - v.start_us) / 1e6;
	if (r == 0)
		ranges_to_bytes(&v);
	free(v.diff.v);
	free(v.again.v);
	free(v.a);
	free(v.b);
	return r;
}

/* ---- an idle disk ---- */

int cdisk_mirror_verify(struct cdisk *d, const struct cdisk_verify_opts *o,
			struct cdisk_verify_result *res)
{
	struct cd_target *own = NULL, *t = NULL;
	char uri[CDISK_MAX_URI + 1];
	int r;

	memset(res, 0, sizeof(*res));
	res->size = d->sb.size;
	pthread_mutex_lock(&d->lock);
	r = check_state_locked(d, false, true);
	if (r == 0) {
		memcpy(uri, d->sb.mirror, sizeof(uri));
		pthread_mutex_lock(&d->mirror->lock);
		t = d->mirror->t;
		pthread_mutex_unlock(&d->mirror->lock);
	}
	pthread_mutex_unlock(&d->lock);
	if (r < 0)
		return r;
	if (!t) {
		/* The target's own message names the URI and the reason. */
		r = cd_target_open(d->ctx, uri, true, &own);
		if (r < 0)
			return r;
		if (own->size < d->sb.size) {
			cd_target_close(own);
			return cd_error(d->ctx, -EINVAL, "cannot verify: mirror '%s' is smaller "
					"than '%s'", uri, d->path);
		}
		t = own;
	}
	r = run(d, t, o, false, res);
	cd_target_close(own);
	return r;
}

void cdisk_verify_result_free(struct cdisk_verify_result *res)
{
	free(res->ranges);
	res->ranges = NULL;
	res->nranges = 0;
}

/* ---- a served disk: the keeper's verify ---- */

struct job {
	struct job *next;
	struct cdisk *d;
	struct cdisk_verify_opts o;
	bool asked, running;
	uint64_t done_bytes, total_bytes;
	int result;
	char error[CD_ERROR_MAX];
	struct cdisk_verify_result res;
};

/* One job per disk whose keeper was asked for a verify; the keeper
 * forgets it as it stops, before the disk can go. */
static pthread_mutex_t jobs_lock = PTHREAD_MUTEX_INITIALIZER;
static struct job *jobs;

static struct job *job_of_locked(struct cdisk *d)
{
	struct job *j = jobs;

	while (j && j->d != d)
		j = j->next;
	return j;
}

int cd_verify_request(struct cdisk *d, const struct cdisk_verify_opts *o)
{
	struct job *j;
	int r;

	pthread_mutex_lock(&jobs_lock);
	j = job_of_locked(d);
	if (j && (j->asked || j->running)) {
		pthread_mutex_unlock(&jobs_lock);
		return cd_error(d->ctx, -EALREADY, "cannot verify: a verify of '%s' is "
				"already running", d->path);
	}
	pthread_mutex_lock(&d->lock);
	r = check_state_locked(d, true, true);
	if (r == 0) {
		struct cd_mirror *m = d->mirror;
		bool keeping;

		pthread_mutex_lock(&m->lock);
		keeping = m->keeper_started && !m->stopping;
		pthread_mutex_unlock(&m->lock);
		if (!keeping)
			r = cd_error(d->ctx, -EAGAIN, "cannot verify: the mirror of '%s' is "
				     "not kept by this process", d->path);
	}
	if (r == 0 && !j) {
		j = calloc(1, sizeof(*j));
		if (j) {
			j->d = d;
			j->next = jobs;
			jobs = j;
		} else {
			r = cd_error(d->ctx, -ENOMEM, "'%s': out of memory", d->path);
		}
	}
	if (r == 0) {
		cdisk_verify_result_free(&j->res);
		j->o = (struct cdisk_verify_opts){ .repair = o->repair, .rate = o->rate };
		j->asked = true;
		j->done_bytes = 0;
		j->total_bytes = d->sb.size;
		j->result = 0;
		j->error[0] = 0;
		memset(&j->res, 0, sizeof(j->res));
		cd_mirror_kick(d->mirror);
	}
	pthread_mutex_unlock(&d->lock);
	pthread_mutex_unlock(&jobs_lock);
	return r;
}

void cd_verify_job_get(struct cdisk *d, struct cd_verify_job_status *st)
{
	struct job *j;

	memset(st, 0, sizeof(*st));
	pthread_mutex_lock(&jobs_lock);
	j = job_of_locked(d);
	if (j) {
		st->known = true;
		st->running = j->asked || j->running;
		st->done_bytes = j->done_bytes;
		st->total_bytes = j->total_bytes;
		st->result = j->result;
		memcpy(st->error, j->error, sizeof(st->error));
		st->res = j->res;
		st->res.ranges = NULL;
		st->res.nranges = 0;
		if (!st->running && j->res.nranges) {
			st->res.ranges = malloc(j->res.nranges * sizeof(*j->res.ranges));
			if (st->res.ranges) {
				memcpy(st->res.ranges, j->res.ranges,
				       j->res.nranges * sizeof(*j->res.ranges));
				st->res.nranges = j->res.nranges;
			}
		}
	}
	pthread_mutex_unlock(&jobs_lock);
}

static void job_progress(void *opaque, uint64_t done, uint64_t total)
{
	struct job *j = opaque;

	pthread_mutex_lock(&jobs_lock);
	j->done_bytes = done;
	j->total_bytes = total;
	pthread_mutex_unlock(&jobs_lock);
}

void cd_verify_keeper_turn(struct cdisk *d)
{
	struct cdisk_verify_result res = { 0 };
	struct cdisk_verify_opts o;
	struct cd_target *t = NULL;
	struct job *j;
	int r;

	pthread_mutex_lock(&jobs_lock);
	j = job_of_locked(d);
	if (!j || !j->asked) {
		pthread_mutex_unlock(&jobs_lock);
		return;
	}
	j->asked = false;
	j->running = true;
	o = j->o;
	pthread_mutex_unlock(&jobs_lock);
	o.progress = job_progress;
	o.opaque = j;

	res.size = d->sb.size;
	res.served = true;
	pthread_mutex_lock(&d->lock);
	r = check_state_locked(d, true, true);
	if (r == 0) {
		pthread_mutex_lock(&d->mirror->lock);
		t = d->mirror->t;
		pthread_mutex_unlock(&d->mirror->lock);
	}
	pthread_mutex_unlock(&d->lock);
	if (r == 0)
		r = run(d, t, &o, true, &res);
	if (r < 0)
		cd_log(d->ctx, CDISK_LOG_WARNING, "'%s': verify failed: %s", d->path, cd_errbuf());
	else
		cd_log(d->ctx, res.differing_bytes ? CDISK_LOG_WARNING : CDISK_LOG_INFO,
		       "'%s': verify of mirror '%s' done: %llu bytes compared, %llu differ "
		       "in %zu ranges%s", d->path, d->sb.mirror,
		       (unsigned long long)res.compared_bytes,
		       (unsigned long long)res.differing_bytes, res.nranges,
		       res.repaired ? ", set out of sync for the keeper's copy" : "");
	pthread_mutex_lock(&jobs_lock);
	j->result = r;
	if (r < 0)
		snprintf(j->error, sizeof(j->error), "%s", cd_errbuf());
	j->res = res;
	j->running = false;
	pthread_mutex_unlock(&jobs_lock);
}

void cd_verify_forget(struct cdisk *d)
{
	struct job **p;

	pthread_mutex_lock(&jobs_lock);
	for (p = &jobs; *p; p = &(*p)->next) {
		if ((*p)->d == d) {
			struct job *j = *p;

			*p = j->next;
			cdisk_verify_result_free(&j->res);
			free(j);
			break;
		}
	}
	pthread_mutex_unlock(&jobs_lock);
}

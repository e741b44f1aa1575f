/* The mirror's side in the disk: routing each write, the legs (a small
 * pool of workers that send the mirror's half of each write, so that the
 * caller can wait with a timeout and give up on a hung mirror), and the
 * state (live, degraded, paused), stored in the superblock's mirror record
 * at each change.  The copy, the verbs and the keeper are the engine's
 * (engine/mirror.c); mirror.h says how a write is routed.
 *
 * Lock order: the disk's lock, then the mirror's (m->lock), which guards
 * the legs and is never held across I/O.  Workers take only m->lock. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

struct cd_bitmap *cd_mirror_oos(struct cdisk *d)
{
	return cd_disk_bitmap(d, CD_BM_MIRROR);
}

bool cd_mirror_attached(const struct cdisk *d)
{
	return d->sb.incompat & CD_FEATURE_INCOMPAT_MIRROR;
}

bool cd_restore_active(const struct cdisk *d)
{
	return (d->sb.compat & CD_FEATURE_COMPAT_RESTORE) && cd_mirror_attached(d) &&
	       d->sb.mirror_state != CD_MIRROR_STORED_FENCED;
}

/* ---- state, stored at each change ---- */

/* Under the lock: a new state into the superblock now, so that a status
 * after a restart knows it. */
int cd_mirror_store_state_locked(struct cdisk *d, uint32_t state, const char *error)
{
	uint64_t now = (uint64_t)time(NULL);

	if (d->sb.mirror_state != state) {
		d->sb.mirror_state = state;
		d->sb.mirror_since = now;
	}
	if (error) {
		snprintf(d->sb.mirror_error, sizeof(d->sb.mirror_error), "%s", error);
		d->sb.mirror_error_time = now;
	}
	return d->readonly ? 0 : cd_sb_write(d);
}

void cd_mirror_kick(struct cd_mirror *m)
{
	pthread_mutex_lock(&m->lock);
	m->kick = true;
	pthread_cond_broadcast(&m->wake);
	pthread_mutex_unlock(&m->lock);
}

/* Under the lock: the mirror failed.  Writes stop going to it (they are
 * recorded instead) until the keeper finds it answering again. */
int cd_mirror_degrade_locked(struct cdisk *d, const char *why)
{
	struct cd_mirror *m = d->mirror;
	bool was_live = m && m->live;
	int r;

	if (m)
		m->live = false;
	if (d->sb.mirror_state == CD_MIRROR_STORED_PAUSED ||
	    d->sb.mirror_state == CD_MIRROR_STORED_FENCED)
		return 0;
	/* A probe failing every few seconds changes the record at most once
	 * a minute, and not at all while it says the same. */
	if (!was_live && d->sb.mirror_state == CD_MIRROR_STORED_DEGRADED &&
	    (!strcmp(d->sb.mirror_error, why) ||
	     (uint64_t)time(NULL) < d->sb.mirror_error_time + 60))
		return 0;
	if (d->sb.mirror_state != CD_MIRROR_STORED_DEGRADED)
		cd_log(d->ctx, CDISK_LOG_WARNING, "'%s': mirror '%s' degraded: %s; writes "
		       "go to the disk only and are recorded, and are sent when it "
		       "answers again", d->path, d->sb.mirror, why);
	r = cd_mirror_store_state_locked(d, CD_MIRROR_STORED_DEGRADED, why);
	if (m)
		cd_mirror_kick(m);
	return r;
}

/* Under the lock: writes in sync go to both from now on.  Not while a
 * leg is still under way (a late one could land over a copy), nor while
 * paused. */
bool cd_mirror_go_live_locked(struct cdisk *d)
{
	struct cd_mirror *m = d->mirror;
	unsigned outstanding;

	if (!m || !m->t || d->sb.mirror_state == CD_MIRROR_STORED_PAUSED ||
	    d->sb.mirror_state == CD_MIRROR_STORED_FENCED)
		return false;
	if (m->live)
		return true;
	pthread_mutex_lock(&m->lock);
	outstanding = m->outstanding;
	pthread_mutex_unlock(&m->lock);
	if (outstanding)
		return false;
	m->live = true;
	if (d->sb.mirror_state == CD_MIRROR_STORED_DEGRADED) {
		char size[32];

		/* As loud as the degradation it ends. */
		cd_log(d->ctx, CDISK_LOG_WARNING, "'%s': mirror '%s' answers again; "
		       "resending %s recorded out of sync", d->path, d->sb.mirror,
		       cd_format_size(cd_mirror_oos(d)->count << d->block_shift, size,
					 sizeof(size)));
		cd_mirror_store_state_locked(d, CD_MIRROR_STORED_COPYING, NULL);
	}
	return true;
}

void cd_mirror_note_in_sync_locked(struct cdisk *d)
{
	struct cd_mirror *m = d->mirror;

	if (!m || !m->live || cd_mirror_oos(d)->count ||
	    d->sb.mirror_state == CD_MIRROR_STORED_IN_SYNC)
		return;
	cd_log(d->ctx, CDISK_LOG_INFO, "'%s': mirror '%s' is in sync", d->path,
	       d->sb.mirror);
	cd_mirror_store_state_locked(d, CD_MIRROR_STORED_IN_SYNC, NULL);
}

/* ---- the write path's hooks ---- */

bool cd_mirror_route_locked(struct cdisk *d, uint64_t first, uint64_t count)
{
	struct cd_mirror *m = d->mirror;
	bool live = m && m->live;

	if (count == 0)
		return live;
	if (live && cd_bitmap_find(cd_mirror_oos(d), first, true) >= first + count)
		return true;
	/* The activity log (durable before this write) covers these blocks
	 * until the record is: a crash sets them out of sync again. */
	cd_disk_mark_locked(d, CD_BM_MIRROR, first, count, true);
	return false;
}

static void leg_put_locked(struct cd_mirror *m, struct cd_leg *leg)
{
	if (--leg->refs == 0) {
		pthread_cond_destroy(&leg->finished);
		free(leg->buf);
		free(leg);
	}
	(void)m;
}

/* Under m->lock: the leg's end, for its sender. */
static void leg_finished_locked(struct cd_mirror *m, struct cd_leg *leg, int r)
{
	leg->result = r;
	if (r < 0)
		snprintf(leg->msg, sizeof(leg->msg), "%s",
			 cd_errbuf()[0] ? cd_errbuf() : strerror(-r));
	leg->done = true;
	if (leg->primary)
		m->primary_outstanding--;
	else
		m->outstanding--;
}

/* A leg sent from its sender's thread, until the target's own timeout
 * from its sending, as a blocking call would have waited: 0, an error
 * (the session given back or dropped), or 1, still under way at
 * until_ms (earlier than that). */
static int leg_answer(struct cdisk *d, struct cd_leg *leg, uint64_t until_ms)
{
	struct cd_target *t = leg->t;
	uint64_t target_ms = leg->aio.sent_ms + t->timeout_ms;
	int r = cd_target_aio_wait(t, &leg->aio, until_ms < target_ms ? until_ms : target_ms);

	if (r > 0 && until_ms < target_ms)
		return 1;
	if (r > 0)
		r = cd_error(d->ctx, -ETIMEDOUT, "cannot write '%s': no answer within %u s",
			     t->uri, t->timeout_ms / 1000);
	cd_target_aio_end(t, &leg->aio, r);
	return r;
}

/* A leg its sender gave up on: the rest of the target's time. */
static int leg_take_over(struct cdisk *d, struct cd_leg *leg)
{
	return leg_answer(d, leg, UINT64_MAX);
}

static void *worker_main(void *arg)
{
	struct cdisk *d = arg;
	struct cd_mirror *m = d->mirror;

	pthread_setname_np(pthread_self(), "cdisk-mirror");
	pthread_mutex_lock(&m->lock);
	for (;;) {
		struct cd_leg *leg;
		struct cd_target *t;
		int r;

		while (!m->head && !m->stopping)
			pthread_cond_wait(&m->work, &m->lock);
		if (!m->head)
			break;
		leg = m->head;
		m->head = leg->next;
		if (!m->head)
			m->tail = NULL;
		m->idle--;
		t = leg->t;
		pthread_mutex_unlock(&m->lock);

		cd_errbuf()[0] = 0;
		if (leg->here)
			r = leg_take_over(d, leg);
		else if (!t)
			r = cd_error(d->ctx, -ENOTCONN, "the mirror is not open");
		else if (leg->op == CD_LEG_WRITE)
			r = cd_target_pwrite(t, leg->buf, leg->len, leg->off);
		else if (leg->op == CD_LEG_ZERO)
			r = cd_target_zero(t, leg->len, leg->off);
		else if (leg->op == CD_LEG_READ)
			r = cd_target_pread(t, leg->buf, leg->len, leg->off);
		else
			r = cd_target_flush(t);

		pthread_mutex_lock(&m->lock);
		leg_finished_locked(m, leg, r);
		m->idle++;
		/* Its sender only (with every waiter on one condition, each
		 * leg done woke all the guest's writes in flight), and past
		 * the lock, which the sender would otherwise wake to wait for.
		 * This worker's reference keeps the leg until then. */
		pthread_mutex_unlock(&m->lock);
		pthread_cond_signal(&leg->finished);
		pthread_mutex_lock(&m->lock);
		leg_put_locked(m, leg);
	}
	pthread_mutex_unlock(&m->lock);
	return NULL;
}

/* Under m->lock: to the workers, one more started when none is idle. */
static void leg_queue_locked(struct cdisk *d, struct cd_leg *leg)
{
	struct cd_mirror *m = d->mirror;

	if (!m->idle && m->nworkers < MIRROR_WORKERS &&
	    pthread_create(&m->workers[m->nworkers], NULL, worker_main, d) == 0) {
		m->nworkers++;
		m->idle++;
	}
	leg->next = NULL;
	if (m->tail)
		m->tail->next = leg;
	else
		m->head = leg;
	m->tail = leg;
}

/* A small write is sent from its sender's thread without waiting, where
 * its target can (an idle NBD session) and the caller asks (here): both
 * legs of a mirrored write then leave together and the sender waits for
 * their answers itself, with no hand-over to a worker and back, which on
 * a loaded host costs more than the write.  Up to what a socket's
 * smallest send buffer takes at once: the rest would leave only when
 * the sender waits for this leg, after the other. */
#define LEG_HERE_MAX (16u << 10)

/* t NULL: the mirror's stack, as it is now. */
static struct cd_leg *leg_send(struct cdisk *d, struct cd_target *t, bool primary,
			       bool here, enum cd_leg_op op, const void *buf, size_t len,
			       uint64_t off)
{
	struct cd_mirror *m = d->mirror;
	struct cd_leg *leg = calloc(1, sizeof(*leg));

	if (!leg)
		return NULL;
	if (op == CD_LEG_WRITE || op == CD_LEG_READ) {
		/* The sender may give up on the leg and free its buffer. */
		leg->buf = malloc(len);
		if (!leg->buf) {
			free(leg);
			return NULL;
		}
		if (op == CD_LEG_WRITE)
			memcpy(leg->buf, buf, len);
	}
	pthread_cond_init(&leg->finished, &m->leg_attr);
	leg->op = op;
	leg->len = len;
	leg->off = off;
	leg->refs = 2;
	leg->primary = primary;
	pthread_mutex_lock(&m->lock);
	leg->t = t ? t : m->t;
	/* Counted before it leaves: a resync waits for it (the target stays
	 * open until then too). */
	if (primary)
		m->primary_outstanding++;
	else
		m->outstanding++;
	if (here && op == CD_LEG_WRITE && len <= LEG_HERE_MAX && leg->t) {
		pthread_mutex_unlock(&m->lock);
		if (cd_target_aio_write(leg->t, &leg->aio, leg->buf, len, off) == 0) {
			leg->here = true;
			return leg;
		}
		pthread_mutex_lock(&m->lock);
	}
	leg_queue_locked(d, leg);
	pthread_mutex_unlock(&m->lock);
	pthread_cond_signal(&m->work);
	return leg;
}

struct cd_leg *cd_mirror_send(struct cdisk *d, bool here, enum cd_leg_op op,
			      const void *buf, size_t len, uint64_t off)
{
	return leg_send(d, NULL, false, here, op, buf, len, off);
}

struct cd_leg *cd_primary_send(struct cdisk *d, struct cd_target *t, enum cd_leg_op op,
			       const void *buf, size_t len, uint64_t off)
{
	return leg_send(d, t, true, true, op, buf, len, off);
}

bool cd_leg_here(const struct cd_leg *leg)
{
	return leg && leg->here;
}

/* A leg sent from here: its answer until deadline_ms, or, given up on,
 * to a worker, who waits for it as long as a blocking call would. */
static void leg_wait_here(struct cdisk *d, struct cd_leg *leg, uint64_t deadline_ms)
{
	struct cd_mirror *m = d->mirror;
	/* The thread's message is the caller's until this leg fails (the
	 * primary's, when the mirror's leg is waited for after it). */
	int r = leg_answer(d, leg, deadline_ms);

	pthread_mutex_lock(&m->lock);
	if (r <= 0) {
		leg_finished_locked(m, leg, r);
		leg_put_locked(m, leg);    /* the worker's, none needed */
	} else {
		leg_queue_locked(d, leg);
		pthread_cond_signal(&m->work);
	}
	pthread_mutex_unlock(&m->lock);
}

/* The leg's result within timeout_ms; a read's data into out. */
static int leg_wait(struct cdisk *d, struct cd_leg *leg, uint32_t timeout_ms,
		    const char *who, void *out)
{
	struct cd_mirror *m = d->mirror;
	struct timespec until;
	int r;

	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += timeout_ms / 1000;
	until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	/* Waiting on a leg is waiting on the network, as a target call is. */
	cd_wait_begin();
	if (leg->here)
		leg_wait_here(d, leg, cd_now_ms() + timeout_ms);
	pthread_mutex_lock(&m->lock);
	while (!leg->done)
		if (pthread_cond_timedwait(&leg->finished, &m->lock, &until) == ETIMEDOUT)
			break;
	if (!leg->done)
		r = cd_error(d->ctx, -ETIMEDOUT, "no answer from the %s in %u ms", who,
			     timeout_ms);
	else if (leg->result < 0)
		r = cd_error(d->ctx, leg->result, "%s", leg->msg);
	else
		r = 0;
	if (r == 0 && out)
		memcpy(out, leg->buf, leg->len);
	leg_put_locked(m, leg);
	pthread_mutex_unlock(&m->lock);
	cd_wait_end();
	return r;
}

int cd_mirror_wait(struct cdisk *d, struct cd_leg *leg)
{
	return leg_wait(d, leg, d->ctx->cfg.mirror_timeout_ms, "mirror", NULL);
}

int cd_primary_wait(struct cdisk *d, struct cd_leg *leg, void *buf)
{
	return leg_wait(d, leg, d->ctx->cfg.failover_timeout_ms, "primary", buf);
}

static int fail_policy(struct cdisk *d, int err, const char *why)
{
	if (!d->ctx->cfg.mirror_fail)
		return 0;
	return cd_error(d->ctx, err == -ETIMEDOUT ? -ETIMEDOUT : -EIO,
			"'%s': the mirror '%s' did not take the write (%s), and "
			"[mirror] on_error = fail", d->path, d->sb.mirror, why);
}

int cd_mirror_finish_locked(struct cdisk *d, uint64_t first, uint64_t count,
			    int leg_result)
{
	char why[CD_MIRROR_ERROR_MAX];
	int r;

	if (leg_result == 0)
		return 0;
	snprintf(why, sizeof(why), "%s", cd_errbuf()[0] ? cd_errbuf() : strerror(-leg_result));
	cd_disk_mark_locked(d, CD_BM_MIRROR, first, count, true);
	r = cd_mirror_degrade_locked(d, why);
	/* Recorded out of sync, durably, before the write is answered. */
	if (r == 0)
		r = cd_journal_commit(d, true);
	if (r < 0)
		return r;
	return fail_policy(d, leg_result, why);
}

/* Under the lock: writes since a side's last good flush are all in the
 * log's extents, so that side may have lost any of them. */
static void mark_log_out_of_sync_locked(struct cdisk *d)
{
	uint64_t per = CD_AL_EXTENT_BYTES >> d->block_shift;

	if (!per)
		per = 1;
	for (uint32_t i = 0; i < d->al.count; i++) {
		uint64_t first = d->al.extents[i] * per;
		uint64_t n = first + per < d->nblocks ? per : d->nblocks - first;

		cd_disk_mark_locked(d, CD_BM_MIRROR, first, n, true);
	}
}

int cd_mirror_flush_failed_locked(struct cdisk *d, int err)
{
	char why[CD_MIRROR_ERROR_MAX];
	int r;

	snprintf(why, sizeof(why), "flush: %s", cd_errbuf()[0] ? cd_errbuf() : strerror(-err));
	mark_log_out_of_sync_locked(d);
	r = cd_mirror_degrade_locked(d, why);
	if (r == 0)
		r = cd_journal_commit(d, true);
	return r < 0 ? r : fail_policy(d, err, why);
}

void cd_mirror_unclaim_locked(struct cdisk *d, uint64_t first, uint64_t count)
{
	struct cd_mirror *m = d->mirror;

	if (m && m->claimed.count)
		cd_bitmap_assign(&m->claimed, first, count, false);
}

/* ---- failover ---- */

bool cd_failover_armed_locked(struct cdisk *d)
{
	struct cd_mirror *m = d->mirror;

	/* Not while anything is out of sync: the failover would be refused,
	 * and the guest would get the timeout instead of a longer wait. */
	return m && m->live && m->t && cd_sb_has_primary(&d->sb) &&
	       !cd_mirror_oos(d)->count &&
	       d->sb.mirror_state != CD_MIRROR_STORED_FENCED &&
	       d->sb.mirror_state != CD_MIRROR_STORED_PAUSED;
}

static void swap_strings(char *a, char *b, size_t size)
{
	char tmp[CDISK_MAX_URI + 1];

	snprintf(tmp, sizeof(tmp), "%s", a);
	snprintf(a, size, "%s", b);
	snprintf(b, size, "%s", tmp);
}

/* The record after a failover: the mirror is the primary, the primary the
 * fenced former primary.  Identities go with their devices. */
static void swap_roles(struct cd_superblock *sb, const char *why)
{
	char id[CD_PRIMARY_ID_MAX];
	uint64_t now = (uint64_t)time(NULL);

	swap_strings(sb->base, sb->mirror, sizeof(sb->base));
	snprintf(id, sizeof(id), "%s", sb->primary_id);
	snprintf(sb->primary_id, sizeof(sb->primary_id), "%s", sb->mirror_id);
	/* An identity too long for the mirror's field is dropped: the former
	 * primary then gets a full copy when it is attached again. */
	if (strlen(id) < sizeof(sb->mirror_id))
		snprintf(sb->mirror_id, sizeof(sb->mirror_id), "%s", id);
	else
		sb->mirror_id[0] = 0;
	sb->incompat |= CD_FEATURE_INCOMPAT_FENCED;
	/* A restore's auxiliary that took over is the primary now: the
	 * restore is over. */
	sb->compat &= ~CD_FEATURE_COMPAT_RESTORE;
	sb->restore_flags = 0;
	sb->mirror_state = CD_MIRROR_STORED_FENCED;
	sb->mirror_since = now;
	snprintf(sb->mirror_error, sizeof(sb->mirror_error), "%s", why);
	sb->mirror_error_time = now;
}

int cd_failover_locked(struct cdisk *d, uint64_t gen, bool force, const char *why)
{
	struct cd_mirror *m = d->mirror;
	uint64_t lost = cd_mirror_oos(d)->count << d->block_shift;
	struct cd_superblock old;
	struct cd_target *former;
	char size[32];
	int r;

	if (gen != d->primary_gen)
		return 0;
	if (!m || !m->t || d->sb.mirror_state == CD_MIRROR_STORED_FENCED ||
	    (!m->live && !force))
		return cd_error(d->ctx, -EAGAIN, "cannot fail over '%s' to mirror '%s': it "
				"is %s", d->path, d->sb.mirror,
				d->sb.mirror_state == CD_MIRROR_STORED_FENCED ?
				"the former primary, fenced" : "not in use (degraded, paused "
				"or not yet reached)");
	if (lost && !force)
		return cd_error(d->ctx, -EAGAIN, "cannot fail over '%s' to mirror '%s': "
				"%s of the disk are not on it yet (--force loses them)",
				d->path, d->sb.mirror,
				cd_format_size(lost, size, sizeof(size)));
	if (d->nretired == CD_ARRAY_SIZE(d->retired))
		return cd_error(d->ctx, -EBUSY, "cannot fail over '%s' again: the legs "
				"given up on earlier are still under way", d->path);
	/* A copy reads the primary and writes the mirror: one under way
	 * could land an old block over a guest write once the mirror is the
	 * primary.  (Nothing is copied when nothing is out of sync.) */
	if (lost && m->copying)
		return cd_error(d->ctx, -EBUSY, "cannot fail over '%s' yet: a copy to "
				"mirror '%s' is under way", d->path, d->sb.mirror);
	/* The primary failed: it may have lost any write since its last
	 * good flush, and all of those are in the log's extents.  Recorded
	 * as missing from it before the roles change (a crash in between
	 * marks them again at recovery). */
	mark_log_out_of_sync_locked(d);
	r = cd_journal_commit(d, true);
	if (r < 0)
		return r;
	/* The base's URI and stack change together: get_base reads the URI
	 * under base_lock. */
	pthread_mutex_lock(&d->base_lock);
	old = d->sb;
	swap_roles(&d->sb, why);
	r = cd_sb_write(d);
	if (r < 0) {
		d->sb = old;
		pthread_mutex_unlock(&d->base_lock);
		return r;
	}
	former = d->base;
	cd_disk_set_base(d, m->t);
	d->base_error = 0;
	d->base_retry_at = 0;
	d->primary_gen++;
	pthread_mutex_unlock(&d->base_lock);
	if (former)
		d->retired[d->nretired++] = former;
	pthread_mutex_lock(&m->lock);
	m->t = NULL;
	pthread_mutex_unlock(&m->lock);
	m->live = false;
	m->copy_stop = 1;
	cd_log(d->ctx, CDISK_LOG_ERROR, "'%s': FAILED OVER from primary '%s' (%s) to "
	       "'%s', which the guest's reads and writes use from now on. '%s' is "
	       "fenced: never used again by itself. The disk has no mirror: attach "
	       "one (the former primary, once repaired, gets only what it misses)",
	       d->path, d->sb.mirror, why, d->sb.base, d->sb.mirror);
	if (lost)
		cd_log(d->ctx, CDISK_LOG_ERROR, "'%s': forced failover: %s that mirror '%s' "
		       "did not have yet are lost", d->path,
		       cd_format_size(lost, size, sizeof(size)), d->sb.base);
	cd_mirror_kick(m);
	return 0;
}

/* ---- setting up and tearing down ---- */

int cd_mirror_init(struct cdisk *d)
{
	struct cd_mirror *m;

	if (d->mirror || d->readonly || !cd_mirror_attached(d))
		return 0;
	m = calloc(1, sizeof(*m));
	if (!m || cd_bitmap_init(&m->claimed, d->nblocks) < 0) {
		free(m);
		return cd_error(d->ctx, -ENOMEM, "'%s': out of memory", d->path);
	}
	pthread_mutex_init(&m->lock, NULL);
	pthread_cond_init(&m->work, NULL);
	pthread_cond_init(&m->wake, NULL);
	pthread_condattr_init(&m->leg_attr);
	pthread_condattr_setclock(&m->leg_attr, CLOCK_MONOTONIC);
	d->mirror = m;
	return 0;
}

void cd_mirror_stop_threads(struct cd_mirror *m)
{
	pthread_mutex_lock(&m->lock);
	m->stopping = true;
	pthread_cond_broadcast(&m->work);
	pthread_cond_broadcast(&m->wake);
	pthread_mutex_unlock(&m->lock);
	if (m->keeper_started)
		pthread_join(m->keeper, NULL);
	m->keeper_started = false;
	for (unsigned i = 0; i < m->nworkers; i++)
		pthread_join(m->workers[i], NULL);
	m->nworkers = m->idle = 0;
}

void cd_mirror_free(struct cdisk *d)
{
	struct cd_mirror *m = d->mirror;

	if (!m)
		return;
	m->copy_stop = 1;
	cd_mirror_stop_threads(m);
	pthread_mutex_lock(&d->lock);
	d->mirror = NULL;
	pthread_mutex_unlock(&d->lock);
	cd_target_close(m->t);
	cd_bitmap_free(&m->claimed);
	free(m->restore_hook);
	pthread_cond_destroy(&m->work);
	pthread_cond_destroy(&m->wake);
	pthread_condattr_destroy(&m->leg_attr);
	pthread_mutex_destroy(&m->lock);
	free(m);
}

/* The synchronous mirror's engine side: checking and opening a mirror,
 * the copy that drains the out-of-sync bitmap (attach's initial copy and
 * every resync, through the copy engine), the public verbs, and the
 * keeper: the thread a server runs per disk that opens the mirror without
 * stalling writes, probes it while degraded and resyncs when it answers.
 * The write path's side is disk/mirror-io.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bitmap.h"
#include "cdisk.h"
#include "copy.h"
#include "ctx.h"
#include "disk.h"
#include "format.h"
#include "journal.h"
#include "mirror.h"
#include "restore.h"
#include "target.h"
#include "text.h"
#include "util.h"
#include "verify.h"

#define MIRROR_COPY_EXTENT (4u << 20)
#define MIRROR_COPY_DEPTH 8
#define KEEPER_INTERVAL_MS 2000    /* between probes of a degraded mirror */

/* ---- opening and checking a mirror ---- */

/* The identities of the disk's own storage: the cdisk file and its base.
 * theirs: the mirror's identity ("" when its kind gives none). */
static int check_not_own(struct cdisk *d, struct cd_target *t, const char *uri,
			 char theirs[512])
{
	char ours[512];
	struct cd_target *base = NULL;
	int r = cd_target_identity(t, theirs, 512);

	if (r < 0)
		theirs[0] = 0;

	if (r == -EOPNOTSUPP) {
		cd_log(d->ctx, CDISK_LOG_INFO, "'%s': cannot tell whether mirror '%s' "
		       "is this disk's own storage: its kind gives no identity", d->path,
		       uri);
		return 0;
	}
	if (r < 0)
		return r;
	if (cd_file_identity(d->ctx, d->path, ours, sizeof(ours)) == 0 &&
	    !strcmp(ours, theirs))
		return cd_error(d->ctx, -EINVAL, "mirror '%s' is the disk file '%s' itself",
				uri, d->path);
	if (!d->sb.base[0])
		return 0;
	r = cd_disk_get_base(d, &base);
	if (r < 0)
		return cd_error(d->ctx, r, "cannot check mirror '%s' against the base "
				"'%s': %s", uri, d->sb.base, cd_errbuf());
	if (cd_target_identity(base, ours, sizeof(ours)) == 0 && !strcmp(ours, theirs))
		return cd_error(d->ctx, -EINVAL, "mirror '%s' is this disk's own %s '%s' "
				"(the same storage)", uri,
				cd_sb_has_primary(&d->sb) ? "primary" : "base", d->sb.base);
	return 0;
}

/* Reachable, writable, large enough: a block read and written back. */
static int check_mirror(struct cdisk *d, struct cd_target *t, const char *uri,
			char id[512])
{
	int r = cd_target_write_back(t, d->block_size, d->sb.size - d->block_size);

	if (r < 0)
		return cd_error(d->ctx, r, "cannot write to mirror '%s': %s", uri, cd_errbuf());
	return check_not_own(d, t, uri, id);
}

static int open_mirror(struct cdisk *d, const char *uri, struct cd_target **out)
{
	char have[32], want[32];
	int r = cd_target_open(d->ctx, uri, false, out);

	/* The target's own message names the URI and the reason. */
	if (r < 0)
		return r;
	if ((*out)->size >= d->sb.size)
		return 0;
	cd_format_size((*out)->size, have, sizeof(have));
	cd_target_close(*out);
	*out = NULL;
	/* An unsuitable argument, as a bad URI is: nothing changed. */
	return cd_error(d->ctx, -EINVAL, "mirror '%s' holds %s, less than the disk's %s",
			uri, have, cd_format_size(d->sb.size, want, sizeof(want)));
}

/* The mirror's stack for the disk's mirror record, opened with no lock
 * held; kept by the mirror until it closes.  *out: the stack, which stays
 * open even if a failover takes it for the primary meanwhile (m->t is
 * then NULL: never read m->t again without the lock). */
static int ensure_open(struct cdisk *d, struct cd_target **out)
{
	struct cd_mirror *m = d->mirror;
	char uri[CDISK_MAX_URI + 1];
	struct cd_target *t;
	int r;

	pthread_mutex_lock(&m->lock);
	t = m->t;
	pthread_mutex_unlock(&m->lock);
	*out = t;
	if (t)
		return 0;
	pthread_mutex_lock(&d->lock);
	memcpy(uri, d->sb.mirror, sizeof(uri));
	pthread_mutex_unlock(&d->lock);
	r = open_mirror(d, uri, &t);
	if (r < 0)
		return r;
	pthread_mutex_lock(&m->lock);
	if (!m->t) {
		m->t = t;
		t = NULL;
	}
	*out = m->t;
	pthread_mutex_unlock(&m->lock);
	cd_target_close(t);
	return 0;
}

/* ---- the copy: draining the out-of-sync bitmap ---- */

static bool all_zero(const uint8_t *p, size_t len)
{
	return len == 0 || (p[0] == 0 && memcmp(p, p + 1, len - 1) == 0);
}

/* The disk's view (overlay over base) to the mirror.  The blocks are
 * claimed: a write that lands meanwhile takes the claim off, and they go
 * again. */
static int mirror_move(struct cd_copy *c, struct cd_extent *x, size_t n, uint8_t *buf)
{
	struct cdisk *d = c->d;
	struct cd_target *t = c->job;
	uint64_t off = x->first << d->block_shift, span;
	size_t len = (size_t)(x->count << d->block_shift);
	bool zero;
	int r;

	/* What the disk is known to read as zeros is not read (a thin disk
	 * is mostly holes); a failure to tell is no failure: it is read. */
	zero = cd_disk_zero_span(d, off, len, &span) == 0 && span == len;
	r = zero ? 0 : cdisk_pread(d, buf, len, off);
	if (r < 0) {
		pthread_mutex_lock(&d->lock);
		if (d->mirror)
			d->mirror->copy_source_failed = true;
		pthread_mutex_unlock(&d->lock);
		return r;
	}
	if (!cd_copy_throttle(c, len))
		return r;
	zero = zero || all_zero(buf, len);
	r = zero ? cd_target_zero(t, len, off) : cd_target_pwrite(t, buf, len, off);
	if (r == 0) {
		cd_copy_count(c, x, n, 1, zero, len);
		pthread_mutex_lock(&d->lock);
		if (d->mirror)
			d->mirror->copied_bytes += len;
		pthread_mutex_unlock(&d->lock);
	}
	return r;
}

static int mirror_flush(struct cd_copy *c)
{
	return cd_target_flush(c->job);
}

static const struct cd_copy_ops mirror_ops = { mirror_move, mirror_flush };

/* Under the lock: the copied blocks are in sync, unless a write is on its
 * way to them (its own leg, or none, decides). */
static int mirror_clear(struct cdisk *d, uint64_t first, uint64_t count)
{
	uint64_t end = first + count;
	int r = 0;

	for (uint64_t b = first; b < end && r == 0;) {
		uint64_t stop = b;

		while (stop < end && !cd_disk_being_written(d, stop))
			stop++;
		if (stop > b)
			r = cd_disk_mark_locked(d, CD_BM_MIRROR, b, stop - b, false);
		b = stop + 1;
	}
	return r;
}

/* One pass over what is out of sync now. */
static int copy_pass(struct cdisk *d, struct cd_target *t, const struct cdisk_sync_opts *o,
		     struct cdisk_sync_stats *st, volatile sig_atomic_t *stop)
{
	struct cd_mirror *m = d->mirror;
	const struct cd_drain drain = { cd_mirror_oos(d), &m->claimed, mirror_clear };
	struct cd_copy c = { .d = d, .o = o, .st = st, .drain = &drain, .job = t,
			     .ops = &mirror_ops, .start_ms = cd_now_ms(),
			     .buf_bytes = MIRROR_COPY_EXTENT, .stop = stop,
			     .depth = o->depth ? o->depth : MIRROR_COPY_DEPTH,
			     .pace_uri = d->sb.mirror, .pace_handle = t };
	uint64_t blocks;
	int r;

	pthread_mutex_lock(&d->lock);
	r = cd_copy_collect(d, cd_mirror_oos(d), true, 0, d->nblocks, 0,
			    MIRROR_COPY_EXTENT >> d->block_shift, &c.ext, &c.n, &blocks);
	m->copying = true;
	m->copy_total = m->copied_bytes + (blocks << d->block_shift);
	pthread_mutex_unlock(&d->lock);
	c.total_bytes = blocks << d->block_shift;
	if (r == 0 && c.n)
		r = cd_copy_run(&c);
	st->bytes = c.sent_bytes;
	pthread_mutex_lock(&d->lock);
	m->copying = false;
	if (c.start_ms && cd_now_ms() > c.start_ms)
		m->copy_rate = c.sent_bytes * 1000 / (cd_now_ms() - c.start_ms);
	pthread_mutex_unlock(&d->lock);
	free(c.ext);
	return r;
}

/* Passes until nothing is out of sync, or stopped; writes meanwhile may
 * leave a little for the next pass.  On a failure of the mirror's the
 * mirror is degraded; a failure to read the disk's own data is only
 * reported (the blocks stay out of sync for the next copy). */
static int copy_until_in_sync(struct cdisk *d, const struct cdisk_sync_opts *o,
			      struct cdisk_sync_stats *st, volatile sig_atomic_t *stop)
{
	struct cd_mirror *m = d->mirror;
	struct cdisk_sync_stats pass;
	uint64_t left;
	int r = 0;

	/* The figures of the last copy stay for status until another has
	 * work to do. */
	pthread_mutex_lock(&d->lock);
	if (cd_mirror_oos(d)->count) {
		m->copied_bytes = 0;
		m->copy_start_ms = cd_now_ms();
	}
	pthread_mutex_unlock(&d->lock);
	for (;;) {
		struct cd_target *t;
		bool fenced_now;

		pthread_mutex_lock(&d->lock);
		left = cd_mirror_oos(d)->count;
		if (!left)
			cd_mirror_note_in_sync_locked(d);
		m->copy_source_failed = false;
		/* A failover took the mirror for the primary: nothing to copy
		 * to, ever, until a mirror is attached. */
		fenced_now = d->sb.mirror_state == CD_MIRROR_STORED_FENCED;
		pthread_mutex_lock(&m->lock);
		t = m->t;
		pthread_mutex_unlock(&m->lock);
		pthread_mutex_unlock(&d->lock);
		if (!left || *stop || d->sync_stop || fenced_now || !t)
			break;
		memset(&pass, 0, sizeof(pass));
		r = copy_pass(d, t, o, &pass, stop);
		st->blocks += pass.blocks;
		st->bytes += pass.bytes;
		st->requests += pass.requests;
		st->zero_requests += pass.zero_requests;
		st->flushes += pass.flushes;
		if (r < 0) {
			char why[CD_MIRROR_ERROR_MAX];
			bool source;

			snprintf(why, sizeof(why), "%s", cd_errbuf());
			pthread_mutex_lock(&d->lock);
			source = m->copy_source_failed;
			m->copy_source_failed = false;
			if (!source)
				cd_mirror_degrade_locked(d, why);
			pthread_mutex_unlock(&d->lock);
			cd_error(d->ctx, r, "%s", why);
			break;
		}
		if (o->max_seconds && cd_now_ms() - m->copy_start_ms >= o->max_seconds * 1000ull)
			break;
	}
	pthread_mutex_lock(&d->lock);
	st->left_bytes = cd_mirror_oos(d)->count << d->block_shift;
	pthread_mutex_unlock(&d->lock);
	return r;
}

static int start_keeper(struct cdisk *d);

/* ---- the public verbs ---- */

static bool fenced(const struct cdisk *d)
{
	return cd_mirror_attached(d) && d->sb.mirror_state == CD_MIRROR_STORED_FENCED;
}

static int need_mirror(struct cdisk *d, const char *what)
{
	if (!cd_mirror_attached(d))
		return cd_error(d->ctx, -ENOENT, "cannot %s: '%s' has no mirror", what,
				d->path);
	if (d->readonly || !d->mirror)
		return cd_error(d->ctx, -EROFS, "cannot %s: '%s' is open read-only", what,
				d->path);
	return 0;
}

/* need_mirror, and the mirror is one (not the fenced former primary). */
static int need_usable_mirror(struct cdisk *d, const char *what)
{
	int r = need_mirror(d, what);

	if (r == 0 && fenced(d))
		r = cd_error(d->ctx, -EAGAIN, "cannot %s: '%s' failed over, and '%s' is "
			     "the fenced former primary, not a mirror; attach a mirror",
			     what, d->path, d->sb.mirror);
	return r;
}

/* A fenced former primary attached again is known by its identity (not
 * its URI): it gets only what bitmap 2 names. */
static bool is_former_primary(const struct cdisk *d, const char *id)
{
	return d->sb.mirror_state == CD_MIRROR_STORED_FENCED && id[0] &&
	       !strcmp(id, d->sb.mirror_id);
}

/* Legs a failover gave up on may still land on the former primary: it
 * is not taken back before they have. */
static int check_no_late_legs(struct cdisk *d)
{
	unsigned late = 0;

	if (d->mirror) {
		pthread_mutex_lock(&d->mirror->lock);
		late = d->mirror->primary_outstanding;
		pthread_mutex_unlock(&d->mirror->lock);
	}
	if (late)
		return cd_error(d->ctx, -EBUSY, "cannot attach a mirror to '%s' yet: %u "
				"requests given up on at the failover are still under way "
				"to '%s'; try again in a moment", d->path, late, d->sb.mirror);
	return 0;
}

/* Under the lock: the record of mirror uri (identity id), with what it
 * must be sent; stored in one checkpoint, so that an attach cut by a
 * crash resumes from what is left. */
static int record_mirror_locked(struct cdisk *d, const char *uri, const char *id,
				bool former, bool restore, uint32_t restore_flags)
{
	struct cd_superblock old = d->sb;
	int r = 0;

	if (restore) {
		d->sb.compat |= CD_FEATURE_COMPAT_RESTORE;
		d->sb.restore_flags = restore_flags;
		d->sb.restore_started = (uint64_t)time(NULL);
	} else {
		d->sb.compat &= ~CD_FEATURE_COMPAT_RESTORE;
		d->sb.restore_flags = 0;
		d->sb.restore_started = 0;
	}

	if (!former)
		r = cd_bitmap_assign(cd_mirror_oos(d), 0, d->nblocks, true);
	snprintf(d->sb.mirror, sizeof(d->sb.mirror), "%s", uri);
	if (strlen(id) < sizeof(d->sb.mirror_id))
		snprintf(d->sb.mirror_id, sizeof(d->sb.mirror_id), "%s", id);
	else
		d->sb.mirror_id[0] = 0;
	d->sb.incompat |= CD_FEATURE_INCOMPAT_MIRROR;
	d->sb.incompat &= ~CD_FEATURE_INCOMPAT_FENCED;
	d->sb.mirror_state = CD_MIRROR_STORED_COPYING;
	d->sb.mirror_since = (uint64_t)time(NULL);
	d->sb.mirror_recovered = 0;
	d->sb.mirror_error[0] = 0;
	d->sb.mirror_error_time = 0;
	if (r == 0)
		r = cd_checkpoint(d);
	if (r == 0)
		r = cd_mirror_init(d);
	if (r < 0)
		d->sb = old;
	return r;
}

int cdisk_mirror_attach(struct cdisk *d, const char *uri)
{
	return cd_mirror_attach_as(d, uri, false, 0, NULL);
}

int cd_mirror_attach_as(struct cdisk *d, const char *uri, bool restore,
			uint32_t restore_flags, const char *hook)
{
	char norm[CDISK_MAX_URI + 1], id[512], size[32];
	struct cd_target *t = NULL;
	bool former = false;
	int r;

	if (d->readonly)
		return cd_error(d->ctx, -EROFS, "cannot attach a mirror: '%s' is open "
				"read-only", d->path);
	if (cd_mirror_attached(d) && !fenced(d))
		return cd_error(d->ctx, -EEXIST, "'%s' already has mirror '%s'; detach it "
				"first", d->path, d->sb.mirror);
	r = cd_normalize_uri(d->ctx, "mirror", uri, true, norm);
	if (r == 0 && fenced(d))
		r = check_no_late_legs(d);
	if (r == 0)
		r = open_mirror(d, norm, &t);
	if (r == 0)
		r = check_mirror(d, t, norm, id);
	if (r == 0 && d->sb.nbitmaps <= CD_BM_MIRROR)
		r = cd_disk_add_bitmaps(d, CD_BM_MIRROR + 1);
	if (r < 0)
		goto fail;
	pthread_mutex_lock(&d->lock);
	if (cd_mirror_attached(d) && !fenced(d)) {
		pthread_mutex_unlock(&d->lock);
		r = cd_error(d->ctx, -EEXIST, "'%s' already has mirror '%s'; detach it "
			     "first", d->path, d->sb.mirror);
		goto fail;
	}
	former = is_former_primary(d, id);
	r = record_mirror_locked(d, norm, id, former, restore, restore_flags);
	if (r == 0) {
		d->mirror->t = t;
		t = NULL;
		free(d->mirror->restore_hook);
		d->mirror->restore_hook = hook ? strdup(hook) : NULL;
		cd_format_size(cd_mirror_oos(d)->count << d->block_shift, size, sizeof(size));
		if (former)
			cd_log(d->ctx, CDISK_LOG_INFO, "'%s': former primary '%s' attached as "
			       "the mirror; copying the %s it misses (writes made to it "
			       "by others meanwhile are found only by cdisk-mirror verify)",
			       d->path, norm, size);
		else if (!restore)
			cd_log(d->ctx, CDISK_LOG_INFO, "'%s': mirror '%s' attached; copying "
			       "%s", d->path, norm, "the whole disk");
	}
	pthread_mutex_unlock(&d->lock);
	cd_backup_store_pending(d);
	if (r == 0)
		r = start_keeper(d);
	if (r == 0)
		cd_mirror_kick(d->mirror);
fail:
	cd_target_close(t);
	return r;
}

int cdisk_mirror_detach(struct cdisk *d)
{
	struct cd_mirror *m;
	int r = need_mirror(d, "detach the mirror");

	if (r < 0)
		return r;
	m = d->mirror;
	m->copy_stop = 1;
	pthread_mutex_lock(&d->lock);
	m->live = false;
	cd_disk_drain_mirrored_locked(d);
	pthread_mutex_unlock(&d->lock);
	cd_mirror_stop_threads(m);
	pthread_mutex_lock(&d->lock);
	d->sb.incompat &= ~(CD_FEATURE_INCOMPAT_MIRROR | CD_FEATURE_INCOMPAT_FENCED);
	d->sb.compat &= ~CD_FEATURE_COMPAT_RESTORE;
	d->sb.restore_flags = 0;
	d->sb.mirror[0] = 0;
	d->sb.mirror_id[0] = 0;
	d->sb.mirror_state = 0;
	r = cd_sb_write(d);
	pthread_mutex_unlock(&d->lock);
	if (r < 0)
		return r;
	cd_log(d->ctx, CDISK_LOG_INFO, "'%s': mirror detached", d->path);
	cd_mirror_free(d);
	return 0;
}

int cdisk_mirror_pause(struct cdisk *d, bool pause)
{
	struct cd_mirror *m;
	int r = need_usable_mirror(d, pause ? "pause the mirror" : "resume the mirror");

	if (r < 0)
		return r;
	m = d->mirror;
	if (pause)
		m->copy_stop = 1;
	pthread_mutex_lock(&d->lock);
	if (pause) {
		m->live = false;
		r = cd_mirror_store_state_locked(d, CD_MIRROR_STORED_PAUSED, NULL);
	} else if (d->sb.mirror_state == CD_MIRROR_STORED_PAUSED) {
		r = cd_mirror_store_state_locked(d, CD_MIRROR_STORED_COPYING, NULL);
	}
	pthread_mutex_unlock(&d->lock);
	cd_mirror_kick(m);
	return r;
}

int cdisk_mirror_resync(struct cdisk *d, bool full)
{
	int r = need_usable_mirror(d, "resync the mirror");

	if (r < 0)
		return r;
	pthread_mutex_lock(&d->lock);
	if (full) {
		r = cd_bitmap_assign(cd_mirror_oos(d), 0, d->nblocks, true);
		if (r == 0)
			r = cd_checkpoint(d);
	}
	if (r == 0 && d->sb.mirror_state == CD_MIRROR_STORED_PAUSED)
		r = cd_error(d->ctx, -EAGAIN, "cannot resync: the mirror of '%s' is "
			     "paused; resume it", d->path);
	pthread_mutex_unlock(&d->lock);
	if (r == 0)
		cd_mirror_kick(d->mirror);
	return r;
}

int cdisk_mirror_copy(struct cdisk *d, const struct cdisk_sync_opts *o,
		      struct cdisk_sync_stats *st)
{
	static volatile sig_atomic_t never;
	struct cd_target *t;
	int r = need_usable_mirror(d, "copy to the mirror");

	memset(st, 0, sizeof(*st));
	if (r < 0)
		return r;
	pthread_mutex_lock(&d->lock);
	st->dirty_bytes = cd_mirror_oos(d)->count << d->block_shift;
	if (d->sb.mirror_state == CD_MIRROR_STORED_PAUSED)
		r = cd_error(d->ctx, -EAGAIN, "cannot copy: the mirror of '%s' is paused; "
			     "resume it", d->path);
	pthread_mutex_unlock(&d->lock);
	if (r < 0)
		return r;
	r = ensure_open(d, &t);
	if (r < 0) {
		char why[CD_MIRROR_ERROR_MAX];

		snprintf(why, sizeof(why), "%s", cd_errbuf());
		pthread_mutex_lock(&d->lock);
		cd_mirror_degrade_locked(d, why);
		pthread_mutex_unlock(&d->lock);
		return cd_error(d->ctx, r, "%s", why);
	}
	pthread_mutex_lock(&d->lock);
	cd_mirror_go_live_locked(d);
	pthread_mutex_unlock(&d->lock);
	r = copy_until_in_sync(d, o, st, &never);
	st->seconds = (double)(cd_now_ms() - d->mirror->copy_start_ms) / 1000.0;
	st->stopped = r == 0 && st->left_bytes;
	return r;
}

int cdisk_mirror_failover(struct cdisk *d, bool force, uint64_t *lost_bytes)
{
	struct cd_target *t;
	char why[64];
	uint64_t rtt;
	int r = need_usable_mirror(d, "fail over");

	*lost_bytes = 0;
	if (r == 0 && !cd_sb_has_primary(&d->sb))
		r = cd_error(d->ctx, -EINVAL, "cannot fail over '%s': its data is in the "
			     "file, not on a primary (failover is for disks created with "
			     "--primary)", d->path);
	if (r < 0)
		return r;
	r = ensure_open(d, &t);
	if (r == 0)
		r = cd_target_ping(t, &rtt);
	if (r < 0)
		return cd_error(d->ctx, r, "cannot fail over '%s' to mirror '%s': %s",
				d->path, d->sb.mirror, cd_errbuf());
	snprintf(why, sizeof(why), "failover requested%s", force ? " with --force" : "");
	/* A copy under way could land a block it read from the primary over
	 * a newer guest write on the mirror once that is the primary: stop
	 * it first (cd_failover_locked refuses while one runs). */
	d->mirror->copy_stop = 1;
	for (int tries = 0;; tries++) {
		pthread_mutex_lock(&d->lock);
		*lost_bytes = cd_mirror_oos(d)->count << d->block_shift;
		/* An idle disk's mirror is not in use until something sends to it. */
		cd_mirror_go_live_locked(d);
		r = cd_failover_locked(d, d->primary_gen, force, why);
		pthread_mutex_unlock(&d->lock);
		if (r != -EBUSY || tries == 300)
			return r;
		d->mirror->copy_stop = 1;
		nanosleep(&(struct timespec){ .tv_nsec = 100000000L }, NULL);
	}
}

/* ---- the keeper (servers) ---- */

static void keep_once(struct cdisk *d)
{
	static const struct cdisk_sync_opts opts = { 0 };
	struct cd_mirror *m = d->mirror;
	struct cdisk_sync_stats st = { 0 };
	bool live, paused;
	int r;

	pthread_mutex_lock(&d->lock);
	/* The fenced former primary is never probed back into use; after a
	 * restore's switch that left the disk no mirror, nothing is kept. */
	paused = d->sb.mirror_state == CD_MIRROR_STORED_PAUSED ||
		 d->sb.mirror_state == CD_MIRROR_STORED_FENCED || !cd_mirror_attached(d);
	live = m->live;
	pthread_mutex_unlock(&d->lock);
	if (paused)
		return;
	if (!live) {
		struct cd_target *t;
		uint64_t rtt;

		r = ensure_open(d, &t);
		if (r == 0)
			r = cd_target_ping(t, &rtt);
		pthread_mutex_lock(&d->lock);
		if (r < 0)
			cd_mirror_degrade_locked(d, cd_errbuf());
		else
			live = cd_mirror_go_live_locked(d);
		pthread_mutex_unlock(&d->lock);
		if (!live)
			return;
	}
	m->copy_stop = 0;
	if (copy_until_in_sync(d, &opts, &st, &m->copy_stop) == 0 && !st.left_bytes)
		cd_restore_after_copy(d);
}

static void *keeper_main(void *arg)
{
	struct cdisk *d = arg;
	struct cd_mirror *m = d->mirror;

	pthread_setname_np(pthread_self(), "cdisk-keeper");
	pthread_mutex_lock(&m->lock);
	while (!m->stopping) {
		struct timespec until;

		m->kick = false;
		pthread_mutex_unlock(&m->lock);
		keep_once(d);
		cd_verify_keeper_turn(d);
		pthread_mutex_lock(&m->lock);
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += KEEPER_INTERVAL_MS / 1000;
		while (!m->stopping && !m->kick)
			if (pthread_cond_timedwait(&m->wake, &m->lock, &until) == ETIMEDOUT)
				break;
	}
	pthread_mutex_unlock(&m->lock);
	cd_verify_forget(d);
	return NULL;
}

/* A mirror recorded by a version that did not keep mirrors: attached
 * now, with everything out of sync, so that it gets a full copy. */
static int adopt_recorded(struct cdisk *d)
{
	char uri[CDISK_MAX_URI + 1];
	int r = 0;

	if (cd_mirror_attached(d) || !d->sb.mirror[0] || d->readonly)
		return 0;
	memcpy(uri, d->sb.mirror, sizeof(uri));
	if (d->sb.nbitmaps <= CD_BM_MIRROR)
		r = cd_disk_add_bitmaps(d, CD_BM_MIRROR + 1);
	if (r < 0)
		return r;
	pthread_mutex_lock(&d->lock);
	r = cd_bitmap_assign(cd_mirror_oos(d), 0, d->nblocks, true);
	d->sb.incompat |= CD_FEATURE_INCOMPAT_MIRROR;
	d->sb.mirror_state = CD_MIRROR_STORED_COPYING;
	d->sb.mirror_since = (uint64_t)time(NULL);
	if (r == 0)
		r = cd_checkpoint(d);
	if (r == 0)
		r = cd_mirror_init(d);
	pthread_mutex_unlock(&d->lock);
	cd_backup_store_pending(d);
	if (r == 0)
		cd_log(d->ctx, CDISK_LOG_INFO, "'%s': mirror '%s' recorded at creation is "
		       "kept from now on; copying the whole disk", d->path, uri);
	return r;
}

static int start_keeper(struct cdisk *d)
{
	struct cd_mirror *m = d->mirror;

	if (!m || m->keeper_started || !d->mirror_kept)
		return 0;
	m->stopping = false;
	if (pthread_create(&m->keeper, NULL, keeper_main, d) != 0)
		return cd_error(d->ctx, -EAGAIN, "'%s': cannot start the mirror's keeper",
				d->path);
	m->keeper_started = true;
	return 0;
}

int cdisk_mirror_start(struct cdisk *d)
{
	int r = adopt_recorded(d);

	/* A mirror attached later (through the control socket) is kept too. */
	d->mirror_kept = true;
	return r < 0 ? r : start_keeper(d);
}

/* ---- status ---- */

int cdisk_mirror_get_status(struct cdisk *d, struct cdisk_mirror_status *s)
{
	struct cd_mirror *m;

	memset(s, 0, sizeof(*s));
	pthread_mutex_lock(&d->lock);
	m = d->mirror;
	s->size = d->sb.size;
	s->timeout_ms = d->ctx->cfg.mirror_timeout_ms;
	s->fail_on_error = d->ctx->cfg.mirror_fail;
	s->on_primary = cd_sb_has_primary(&d->sb);
	memcpy(s->primary, d->sb.base, sizeof(s->primary));
	if (!cd_mirror_attached(d)) {
		s->state = CDISK_MIRROR_NONE;
		pthread_mutex_unlock(&d->lock);
		return 0;
	}
	memcpy(s->uri, d->sb.mirror, sizeof(s->uri));
	s->out_of_sync_bytes = cd_mirror_oos(d)->count << d->block_shift;
	s->since = d->sb.mirror_since;
	s->recovered_bytes = d->sb.mirror_recovered << d->block_shift;
	snprintf(s->last_error, sizeof(s->last_error), "%s", d->sb.mirror_error);
	s->restoring = cd_restore_active(d);
	s->restore_switch = s->restoring && (d->sb.restore_flags & CD_RESTORE_SWITCH);
	s->restore_started = s->restoring ? d->sb.restore_started : 0;
	s->last_error_time = d->sb.mirror_error_time;
	switch (d->sb.mirror_state) {
	case CD_MIRROR_STORED_PAUSED: s->state = CDISK_MIRROR_PAUSED; break;
	case CD_MIRROR_STORED_DEGRADED: s->state = CDISK_MIRROR_DEGRADED; break;
	case CD_MIRROR_STORED_FENCED: s->state = CDISK_MIRROR_FENCED; break;
	default:
		s->state = s->out_of_sync_bytes ? CDISK_MIRROR_COPYING : CDISK_MIRROR_IN_SYNC;
	}
	/* A stored "in sync" that a crash recovery contradicts. */
	if (s->state == CDISK_MIRROR_IN_SYNC && s->out_of_sync_bytes)
		s->state = CDISK_MIRROR_COPYING;
	if (m) {
		s->copied_bytes = m->copied_bytes;
		s->copy_rate = m->copy_rate;
		if (m->copying && cd_now_ms() > m->copy_start_ms)
			s->copy_rate = m->copied_bytes * 1000 / (cd_now_ms() - m->copy_start_ms);
	}
	pthread_mutex_unlock(&d->lock);
	return 0;
}

/* A space quota shared by disks (quota.h).  The disks' own code keeps it:
 * each disk counts its present blocks into it as they change
 * (cd_quota_track_locked), and checks a write against it before the
 * write's data goes anywhere (cd_quota_check_locked). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "bitmap.h"
#include "ctx.h"
#include "disk.h"
#include "quota.h"
#include "text.h"

struct cd_quota *cd_quota_new(const char *name)
{
	struct cd_quota *q = calloc(1, sizeof(*q));

	if (!q)
		return NULL;
	pthread_mutex_init(&q->lock, NULL);
	q->refs = 1;
	snprintf(q->name, sizeof(q->name), "%s", name);
	return q;
}

void cd_quota_put(struct cd_quota *q)
{
	bool last;

	if (!q)
		return;
	pthread_mutex_lock(&q->lock);
	last = --q->refs == 0;
	pthread_mutex_unlock(&q->lock);
	if (!last)
		return;
	pthread_mutex_destroy(&q->lock);
	free(q);
}

void cd_quota_set_limit(struct cd_quota *q, uint64_t limit)
{
	pthread_mutex_lock(&q->lock);
	q->limit = limit;
	pthread_mutex_unlock(&q->lock);
}

uint64_t cd_quota_used(struct cd_quota *q)
{
	uint64_t used;

	pthread_mutex_lock(&q->lock);
	used = q->used;
	pthread_mutex_unlock(&q->lock);
	return used;
}

int cd_disk_set_quota(struct cdisk *d, struct cd_quota *q)
{
	pthread_mutex_lock(&d->lock);
	if (d->quota) {
		pthread_mutex_unlock(&d->lock);
		return cd_error(d->ctx, -EEXIST, "'%s' counts against a quota already",
				d->path);
	}
	pthread_mutex_lock(&q->lock);
	q->refs++;
	pthread_mutex_unlock(&q->lock);
	d->quota = q;
	d->quota_counted = 0;
	cd_quota_track_locked(d);
	pthread_mutex_unlock(&d->lock);
	return 0;
}

void cd_quota_track_locked(struct cdisk *d)
{
	struct cd_quota *q = d->quota;
	uint64_t now;

	if (!q)
		return;
	now = d->present.count << d->block_shift;
	pthread_mutex_lock(&q->lock);
	q->used = q->used + now - d->quota_counted;
	pthread_mutex_unlock(&q->lock);
	d->quota_counted = now;
}

/* Blocks of [first, first + count) not present yet. */
static uint64_t absent_blocks(const struct cdisk *d, uint64_t first, uint64_t count)
{
	uint64_t end = first + count, absent = 0;

	for (uint64_t b = first; b < end;) {
		uint64_t set = cd_bitmap_find(&d->present, b, true);

		if (set > end)
			set = end;
		absent += set - b;
		b = cd_bitmap_find(&d->present, set, false);
	}
	return absent;
}

int cd_quota_check_locked(struct cdisk *d, uint64_t first, uint64_t count)
{
	struct cd_quota *q = d->quota;
	uint64_t need, used, limit;
	bool full, say;
	char a[32], b[32];
	int r;

	if (!q)
		return 0;
	need = absent_blocks(d, first, count) << d->block_shift;
	if (!need)
		return 0;
	pthread_mutex_lock(&q->lock);
	used = q->used;
	limit = q->limit;
	full = limit && used + need > limit;
	/* Said once in the log each time it fills, not at every write. */
	say = full && !q->warned;
	q->warned = full;
	pthread_mutex_unlock(&q->lock);
	if (!full)
		return 0;
	r = cd_error(d->ctx, -ENOSPC, "'%s': the quota of %s is full: %s used of %s",
		     d->path, q->name, cd_format_size(used, a, sizeof(a)),
		     cd_format_size(limit, b, sizeof(b)));
	if (say)
		cd_log(d->ctx, CDISK_LOG_WARNING, "%s; writes that need more space fail "
		       "with ENOSPC", cd_errbuf());
	return r;
}

void cd_quota_detach_locked(struct cdisk *d)
{
	struct cd_quota *q = d->quota;

	if (!q)
		return;
	pthread_mutex_lock(&q->lock);
	q->used -= d->quota_counted;
	pthread_mutex_unlock(&q->lock);
	d->quota = NULL;
	d->quota_counted = 0;
	cd_quota_put(q);
}

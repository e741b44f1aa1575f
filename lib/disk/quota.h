/* Internal: a space quota shared by several disks (a pool user's
 * overlays, cdisk-serve --users quota_used).  What counts is the bytes of
 * the blocks the overlays hold (present): what a user wrote or read from
 * a base into their files.  A write that would make more blocks present
 * than the quota leaves room for fails with ENOSPC before any of its data
 * is written, so that the guest's hypervisor can pause the VM (QEMU's
 * werror=enospc) instead of the guest seeing an I/O error. */
#ifndef CDISK_QUOTA_H
#define CDISK_QUOTA_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

struct cdisk;

struct cd_quota {
	pthread_mutex_t lock;
	uint64_t used;              /* bytes, over every disk attached */
	uint64_t limit;             /* 0: none */
	unsigned refs;
	bool warned;                /* the log said it is full (once until not) */
	char name[64];              /* whose: for messages */
};

struct cd_quota *cd_quota_new(const char *name);
void cd_quota_put(struct cd_quota *q);
void cd_quota_set_limit(struct cd_quota *q, uint64_t limit);
uint64_t cd_quota_used(struct cd_quota *q);
/* The disk's present blocks count against q from now on (and are taken
 * off when it closes); q is held until then.  One quota per disk. */
int cd_disk_set_quota(struct cdisk *d, struct cd_quota *q);

/* For disk.c, under the disk's lock: count the present blocks as they are
 * now; refuse (-ENOSPC) a write to [first, first + count) that would pass
 * the limit; take the disk off at close. */
void cd_quota_track_locked(struct cdisk *d);
int cd_quota_check_locked(struct cdisk *d, uint64_t first, uint64_t count);
void cd_quota_detach_locked(struct cdisk *d);

#endif

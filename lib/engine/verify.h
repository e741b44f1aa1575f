/* Internal: online verify of a disk's mirror (verify.c).  An idle disk
 * is verified by cdisk_mirror_verify in the caller's thread; a served one
 * by its mirror's keeper, asked through the control socket, one verify at
 * a time, its last result kept for the asker. */
#ifndef CDISK_VERIFY_H
#define CDISK_VERIFY_H

#include <stdbool.h>
#include <stdint.h>

#include "cdisk.h"
#include "ctx.h"

struct cdisk;

/* A served disk's verify, as the control socket reports it. */
struct cd_verify_job_status {
	bool known;                       /* one was asked for since the keeper started */
	bool running;                     /* asked for or under way */
	uint64_t done_bytes, total_bytes;
	int result;                       /* once over: 0 or a negative errno ... */
	char error[CD_ERROR_MAX];         /* ... and its message */
	struct cdisk_verify_result res;   /* its ranges are the caller's to free */
};

/* Ask the keeper of a served disk for a verify: -EALREADY while one is
 * asked for or under way, -EAGAIN when the mirror is degraded, paused or
 * copying, -ENOENT without a mirror. */
int cd_verify_request(struct cdisk *d, const struct cdisk_verify_opts *o);
void cd_verify_job_get(struct cdisk *d, struct cd_verify_job_status *st);
/* For the keeper (mirror.c): run the verify asked for, if any ... */
void cd_verify_keeper_turn(struct cdisk *d);
/* ... and, as it stops, forget the disk's verify. */
void cd_verify_forget(struct cdisk *d);

#endif

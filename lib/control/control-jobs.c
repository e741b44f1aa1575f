/* Syncs the server runs for the disks it serves: one job per export, on
 * a thread of its own, started by a control verb (control.c) or by the
 * --sync-every timer, whose thread is here too. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "cdisk.h"
#include "control.h"
#include "ctx.h"
#include "server.h"
#include "util.h"

/* ---- sync, run by the server for a disk it serves ---- */

static void job_progress(void *opaque, const struct cdisk_sync_progress *p)
{
	struct cd_sync_job *job = opaque;

	pthread_mutex_lock(&job->server->lock);
	job->progress = *p;
	pthread_mutex_unlock(&job->server->lock);
}

struct job_start {
	struct cdisk_server *s;
	struct cd_export *e;
};

static void *sync_thread(void *opaque)
{
	struct job_start *js = opaque;
	struct cdisk_server *s = js->s;
	struct cd_export *e = js->e;
	struct cdisk_sync_stats st;
	int r;

	pthread_setname_np(pthread_self(), "cdisk-sync");
	free(js);
	switch (e->sync.mode) {
	case CDISK_SYNC_PULL:
		r = cdisk_pull(e->disk, &e->sync.opts, &st);
		break;
	case CDISK_SYNC_CLOSE:
		r = cdisk_sync_close(e->disk, &e->sync.opts, &st);
		break;
	default:
		r = cdisk_sync(e->disk, &e->sync.opts, &st);
	}
	pthread_mutex_lock(&s->lock);
	e->sync.stats = st;
	e->sync.result = r;
	if (r < 0)
		snprintf(e->sync.error, sizeof(e->sync.error), "%s", cdisk_ctx_error(s->ctx));
	e->sync.running = false;
	pthread_mutex_unlock(&s->lock);
	/* "Not now" from --if-healthy comes every turn while the base is
	 * degraded: information, not a warning. */
	if (r < 0)
		cd_log(s->ctx, r == -EAGAIN ? CDISK_LOG_INFO : CDISK_LOG_WARNING,
		       "export '%s': sync failed: %s", e->name, e->sync.error);
	else
		cd_log(s->ctx, CDISK_LOG_INFO, "export '%s': sync done: %llu bytes sent, "
		       "%llu left", e->name, (unsigned long long)st.bytes,
		       (unsigned long long)st.left_bytes);
	return NULL;
}

/* Start a sync of e in a thread of its own, unless one runs. */
int cd_control_start_job(struct cdisk_server *s, struct cd_export *e,
		     enum cdisk_sync_mode mode, const struct cdisk_sync_opts *opts)
{
	struct job_start *js;

	pthread_mutex_lock(&s->lock);
	if (e->sync.running) {
		pthread_mutex_unlock(&s->lock);
		return -EBUSY;
	}
	if (e->sync.started)
		pthread_join(e->sync.thread, NULL);
	memset(&e->sync, 0, sizeof(e->sync));
	e->sync.opts = *opts;
	e->sync.mode = mode;
	e->sync.opts.progress = job_progress;
	e->sync.opts.opaque = &e->sync;
	e->sync.opts.stop = &e->sync.stop;
	e->sync.server = s;
	js = malloc(sizeof(*js));
	if (js) {
		js->s = s;
		js->e = e;
	}
	if (!js || pthread_create(&e->sync.thread, NULL, sync_thread, js) != 0) {
		free(js);
		pthread_mutex_unlock(&s->lock);
		return -ENOMEM;
	}
	e->sync.started = e->sync.running = true;
	pthread_mutex_unlock(&s->lock);
	return 0;
}

/* The timer's policy: every interval, a push for each writable export with
 * a base, unless one runs (the policy's min_dirty decides whether it sends). */
void cd_control_policy_tick(struct cdisk_server *s)
{
	uint64_t now = cd_now_ms();

	if (!s->policy_every_ms || now < s->policy_next_ms)
		return;
	s->policy_next_ms = now + s->policy_every_ms;
	for (size_t i = 0; i < s->nexports; i++) {
		struct cd_export *e = &s->exports[i];
		struct cdisk_info info;

		if (e->readonly || !e->disk)
			continue;
		cdisk_get_info(e->disk, &info);
		if (!info.base[0] || !info.blocks_dirty)
			continue;
		cd_control_start_job(s, e, CDISK_SYNC_PUSH, &s->policy);
	}
}

void cd_control_stop_syncs(struct cdisk_server *s)
{
	for (size_t i = 0; i < s->nexports; i++) {
		struct cd_export *e = &s->exports[i];

		if (!e->sync.started || !e->disk)
			continue;
		e->sync.stop = 1;
		cdisk_sync_stop(e->disk);
		pthread_join(e->sync.thread, NULL);
		e->sync.started = false;
	}
}

/* ---- the --sync-every timer ---- */

/* The sync policy's timer, on a thread of its own: starting a sync reads
 * a disk's state, which the accept loop never waits for. */
static void *policy_thread(void *opaque)
{
	struct cdisk_server *s = opaque;

	pthread_setname_np(pthread_self(), "cdisk-timer");
	pthread_mutex_lock(&s->lock);
	while (!s->policy_stop) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 1;
		pthread_cond_timedwait(&s->control_idle, &s->lock, &ts);
		if (s->policy_stop)
			break;
		pthread_mutex_unlock(&s->lock);
		cd_control_policy_tick(s);
		pthread_mutex_lock(&s->lock);
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

int cd_control_start_policy(struct cdisk_server *s)
{
	if (!s->policy_every_ms)
		return 0;
	if (pthread_create(&s->policy_thread, NULL, policy_thread, s) != 0)
		return cd_error(s->ctx, -EAGAIN, "cannot start the sync timer");
	s->policy_started = true;
	return 0;
}

void cd_control_stop_policy(struct cdisk_server *s)
{
	if (!s->policy_started)
		return;
	pthread_mutex_lock(&s->lock);
	s->policy_stop = true;
	pthread_cond_broadcast(&s->control_idle);
	pthread_mutex_unlock(&s->lock);
	pthread_join(s->policy_thread, NULL);
	s->policy_started = false;
}

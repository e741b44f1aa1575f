/* cdisk-serve --push-files: the files of a cloud folder's writer disk go
 * to the folder when its last client disconnects (the desktop logged out
 * or shut down), on a thread of the export's own, as cdisk-sync --files
 * would send them.  The push reads the filesystem through the server's
 * own handle of the disk, which no client may write meanwhile: a client
 * that connects while it runs waits for it, past its handshake and
 * before its first request is read. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "cdisk.h"
#include "ctx.h"
#include "server.h"

struct files_start {
	struct cdisk_server *s;
	struct cd_export *e;
};

static void *files_thread(void *opaque)
{
	struct files_start fs = *(struct files_start *)opaque;
	struct cdisk_server *s = fs.s;
	struct cd_export *e = fs.e;
	struct cdisk_files_opts o = { 0 };
	struct cdisk_files_result res;
	int r;

	free(opaque);
	r = cdisk_sync_files_disk(e->disk, &o, &res);
	pthread_mutex_lock(&s->lock);
	/* Not a writer of a folder (no folder, or a reader): it stays so for
	 * as long as the disk is served, so no disconnect asks again. */
	if (r == -ENOENT || r == -EROFS)
		e->files_skip = true;
	e->files_running = false;
	pthread_cond_broadcast(&s->files_done);
	pthread_mutex_unlock(&s->lock);
	if (r == 0 && (res.uploaded || res.deleted))
		cd_log(s->ctx, CDISK_LOG_INFO, "'%s': its last client left: %llu file%s sent "
		       "to '%s', %llu deleted there", e->path,
		       (unsigned long long)res.uploaded, res.uploaded == 1 ? "" : "s",
		       res.uri, (unsigned long long)res.deleted);
	else if (r < 0 && r != -ENOENT && r != -EROFS)
		cd_log(s->ctx, CDISK_LOG_WARNING, "'%s': its last client left, but its files "
		       "were not sent: %s (cdisk-sync --files sends them once the disk "
		       "is not served)", e->path, cdisk_ctx_error(s->ctx));
	return NULL;
}

void cd_files_client_in(struct cdisk_server *s, struct cd_export *e)
{
	pthread_mutex_lock(&s->lock);
	while (e->files_running)
		pthread_cond_wait(&s->files_done, &s->lock);
	__atomic_add_fetch(&e->connections, 1, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&s->lock);
}

void cd_files_client_out(struct cdisk_server *s, struct cd_export *e)
{
	struct files_start *fs;

	pthread_mutex_lock(&s->lock);
	if (__atomic_sub_fetch(&e->connections, 1, __ATOMIC_RELAXED) == 0 &&
	    s->files_push && !s->files_stopping && !e->readonly && !e->pool &&
	    !e->files_skip && !e->files_running && e->disk &&
	    (fs = malloc(sizeof(*fs)))) {
		/* the one before has ended (files_running is false): a quick join */
		if (e->files_started)
			pthread_join(e->files_thread, NULL);
		e->files_started = false;
		*fs = (struct files_start){ .s = s, .e = e };
		e->files_running = true;
		if (pthread_create(&e->files_thread, NULL, files_thread, fs) == 0) {
			e->files_started = true;
		} else {
			e->files_running = false;
			free(fs);
			cd_log(s->ctx, CDISK_LOG_WARNING, "'%s': cannot start sending its "
			       "files", e->path);
		}
	}
	pthread_mutex_unlock(&s->lock);
}

void cd_files_stop(struct cdisk_server *s)
{
	pthread_mutex_lock(&s->lock);
	s->files_stopping = true;
	for (size_t i = 0; i < s->nexports; i++) {
		struct cd_export *e = &s->exports[i];
		/* a push under way is let finish: cut, it would be sent again */
		while (e->files_running)
			pthread_cond_wait(&s->files_done, &s->lock);
		if (e->files_started)
			pthread_join(e->files_thread, NULL);
		e->files_started = false;
	}
	pthread_mutex_unlock(&s->lock);
}

void cdisk_server_set_files_push(struct cdisk_server *s, bool on)
{
	s->files_push = on;
}

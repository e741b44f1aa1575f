/* The restore onto a new primary (cdisk-restore --to): the patent's
 * auxiliary disk.  The auxiliary takes the mirror's place: attached as
 * the mirror is (checked, recorded, out of sync in bitmap 2), it gets the
 * copy of the current source (the disk's view: the primary, which after
 * a failover is the former mirror) while every guest write goes to it
 * too, through the mirror's write path, copy and keeper.  What this file
 * adds is the start's checks and the end: once the auxiliary is in sync
 * the restore is complete; with a switch the auxiliary becomes the
 * primary and the primary of a failed-over disk goes back to being its
 * mirror, in one superblock write. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "cdisk.h"
#include "ctx.h"
#include "disk.h"
#include "format.h"
#include "journal.h"
#include "mirror.h"
#include "restore.h"
#include "target.h"
#include "text.h"
#include "uri.h"
#include "util.h"

extern char **environ;

/* ---- starting ---- */

static int check_can_start(struct cdisk *d, const char *uri, const char *norm)
{
	if (d->readonly)
		return cd_error(d->ctx, -EROFS, "cannot restore '%s': it is open read-only",
				d->path);
	if (!cd_sb_has_primary(&d->sb))
		return cd_error(d->ctx, -EINVAL, "cannot restore '%s' to '%s': its data "
				"is in the file, not on a primary (restore --to is for "
				"disks created with --primary)", d->path, uri);
	/* Caught by identity too, but not for kinds that give none (NBD). */
	if (!strcmp(norm, d->sb.base))
		return cd_error(d->ctx, -EINVAL, "cannot restore '%s' to '%s': it is this "
				"disk's own primary", d->path, uri);
	if (cd_restore_active(d))
		return cd_error(d->ctx, -EEXIST, "cannot restore '%s' to '%s': a restore "
				"to '%s' is under way", d->path, uri, d->sb.mirror);
	/* The auxiliary takes the mirror's place; a mirror in use would lose
	 * its protection, or be taken for the auxiliary. */
	if (cd_mirror_attached(d) && d->sb.mirror_state != CD_MIRROR_STORED_FENCED)
		return cd_error(d->ctx, -EAGAIN, "cannot restore '%s' to '%s': mirror '%s' "
				"is in use, and the restore takes the mirror's place; fail "
				"over to it first (cdisk-mirror failover) or detach it",
				d->path, uri, d->sb.mirror);
	return 0;
}

/* The same restore asked for again (after an interruption): it goes on
 * where it stopped, with the switch and command asked for now. */
static int resume(struct cdisk *d, const struct cdisk_restore_opts *o)
{
	uint32_t old = d->sb.restore_flags;
	char *hook = o->on_complete ? strdup(o->on_complete) : NULL;
	int r;

	if (o->on_complete && !hook)
		return cd_error(d->ctx, -ENOMEM, "out of memory");
	d->sb.restore_flags = (old & ~CD_RESTORE_SWITCH) |
			      ((o->flags & CDISK_RESTORE_SWITCH) ? CD_RESTORE_SWITCH : 0);
	r = d->sb.restore_flags == old ? 0 : cd_sb_write(d);
	if (r < 0) {
		d->sb.restore_flags = old;
		free(hook);
		return r;
	}
	free(d->mirror->restore_hook);
	d->mirror->restore_hook = hook;
	cd_log(d->ctx, CDISK_LOG_INFO, "'%s': the restore to '%s' goes on where it "
	       "stopped", d->path, d->sb.mirror);
	return 1;
}

/* The restore asked for was done before (a script run again): the
 * target is the primary already, or, without a switch, the mirror. */
static bool already_done(const struct cdisk *d, const char *norm,
			 const struct cdisk_restore_opts *o)
{
	if (!cd_sb_has_primary(&d->sb))
		return false;
	if (o->flags & CDISK_RESTORE_SWITCH)
		return !strcmp(norm, d->sb.base);
	return cd_mirror_attached(d) && d->sb.mirror_state != CD_MIRROR_STORED_FENCED &&
	       !strcmp(norm, d->sb.mirror);
}

/* An RBD image is made if there is none (of the disk's size); other
 * kinds are made on their servers.  One that exists is checked as any
 * target is. */
static int create_rbd_image(struct cdisk *d, const char *uri)
{
	struct cd_uri u;
	bool rbd;
	int r = cd_uri_parse(d->ctx, uri, &u);

	if (r < 0)
		return r;
	rbd = u.scheme == CD_SCHEME_RBD && !u.snap;
	cd_uri_clear(&u);
	if (!rbd)
		return 0;
	r = cd_target_create(d->ctx, uri, d->sb.size);
	if (r == -EEXIST)
		return 0;
	if (r == 0)
		cd_log(d->ctx, CDISK_LOG_INFO, "'%s': created RBD image '%s' for the restore",
		       d->path, uri);
	return r;
}

int cdisk_restore_start(struct cdisk *d, const char *uri,
			const struct cdisk_restore_opts *o)
{
	char fenced[CDISK_MAX_URI + 1] = "", norm[CDISK_MAX_URI + 1];
	char source[CDISK_MAX_URI + 1], target[CDISK_MAX_URI + 1];
	uint32_t flags = 0;
	int r = cd_normalize_uri(d->ctx, "restore target", uri, true, norm);

	if (r < 0)
		return r;
	pthread_mutex_lock(&d->lock);
	if (cd_restore_active(d) && d->mirror && !strcmp(norm, d->sb.mirror))
		r = resume(d, o);
	else if (already_done(d, norm, o))
		r = cd_error(d->ctx, -EALREADY, "'%s' is already the %s of '%s'", uri,
			     (o->flags & CDISK_RESTORE_SWITCH) ? "primary" : "mirror", d->path);
	else
		r = check_can_start(d, uri, norm);
	if (r == 1) {
		cd_mirror_kick(d->mirror);
		pthread_mutex_unlock(&d->lock);
		return 0;
	}
	if (r == 0 && cd_mirror_attached(d))
		memcpy(fenced, d->sb.mirror, sizeof(fenced));
	pthread_mutex_unlock(&d->lock);
	if (r < 0)
		return r;
	r = create_rbd_image(d, norm);
	if (r < 0)
		return r;
	if (o->flags & CDISK_RESTORE_SWITCH)
		flags |= CD_RESTORE_SWITCH;
	/* After a failover the primary is the former mirror: it is the
	 * mirror again once the auxiliary is the primary. */
	if (fenced[0])
		flags |= CD_RESTORE_KEEP_PRIMARY;
	r = cd_mirror_attach_as(d, uri, true, flags, o->on_complete);
	if (r == -EEXIST)
		r = cd_error(d->ctx, -EEXIST, "cannot restore '%s' to '%s': the disk got "
			     "a mirror or a restore meanwhile", d->path, uri);
	if (r < 0)
		return r;
	pthread_mutex_lock(&d->lock);
	memcpy(source, d->sb.base, sizeof(source));
	memcpy(target, d->sb.mirror, sizeof(target));
	pthread_mutex_unlock(&d->lock);
	cd_log(d->ctx, CDISK_LOG_INFO, "'%s': restoring from '%s' to '%s'%s", d->path,
	       source, target, flags & CD_RESTORE_SWITCH ?
	       ", which becomes the primary when complete" : "");
	if (fenced[0] && strcmp(fenced, target))
		cd_log(d->ctx, CDISK_LOG_WARNING, "'%s': the fenced former primary '%s' is "
		       "no longer part of the disk; it is left as it is for you to remove",
		       d->path, fenced);
	return 0;
}

/* ---- completing ---- */

/* The auxiliary is the primary; after a failover the primary (the former
 * mirror) is the mirror again, else the disk has no mirror and the old
 * primary is left.  Under the lock, with nothing out of sync and no
 * mirrored write under way. */
static int switch_roles_locked(struct cdisk *d, char *left, size_t left_len)
{
	struct cd_mirror *m = d->mirror;
	bool keep = d->sb.restore_flags & CD_RESTORE_KEEP_PRIMARY;
	struct cd_superblock old = d->sb;
	struct cd_target *aux, *former;
	char id[CD_PRIMARY_ID_MAX];
	int r;

	if (!keep && d->nretired == CD_ARRAY_SIZE(d->retired))
		return cd_error(d->ctx, -EBUSY, "cannot switch '%s' to '%s' yet: requests "
				"given up on earlier are still under way", d->path,
				d->sb.mirror);
	snprintf(left, left_len, "%s", keep ? "" : d->sb.base);
	pthread_mutex_lock(&d->base_lock);
	snprintf(id, sizeof(id), "%s", d->sb.primary_id);
	snprintf(d->sb.primary_id, sizeof(d->sb.primary_id), "%s", d->sb.mirror_id);
	if (keep) {
		char uri[CDISK_MAX_URI + 1];

		memcpy(uri, d->sb.base, sizeof(uri));
		memcpy(d->sb.base, d->sb.mirror, sizeof(d->sb.base));
		memcpy(d->sb.mirror, uri, sizeof(d->sb.mirror));
		/* Too long for the mirror's field: it gets a full copy if it
		 * is ever attached again by itself. */
		if (strlen(id) < sizeof(d->sb.mirror_id))
			memcpy(d->sb.mirror_id, id, strlen(id) + 1);
		else
			d->sb.mirror_id[0] = 0;
		d->sb.mirror_state = CD_MIRROR_STORED_IN_SYNC;
		d->sb.mirror_since = (uint64_t)time(NULL);
		d->sb.mirror_error[0] = 0;
	} else {
		memcpy(d->sb.base, d->sb.mirror, sizeof(d->sb.base));
		d->sb.mirror[0] = 0;
		d->sb.mirror_id[0] = 0;
		d->sb.mirror_state = 0;
		d->sb.incompat &= ~CD_FEATURE_INCOMPAT_MIRROR;
	}
	d->sb.compat &= ~CD_FEATURE_COMPAT_RESTORE;
	d->sb.restore_flags = 0;
	d->sb.restore_started = 0;
	r = cd_sb_write(d);
	if (r < 0) {
		d->sb = old;
		pthread_mutex_unlock(&d->base_lock);
		return r;
	}
	pthread_mutex_lock(&m->lock);
	aux = m->t;
	former = d->base;
	m->t = keep ? former : NULL;
	pthread_mutex_unlock(&m->lock);
	cd_disk_set_base(d, aux);
	d->base_error = 0;
	d->base_retry_at = 0;
	/* A write begun before the switch that the auxiliary did not take is
	 * done again on it (write_both's rule after a failover). */
	d->primary_gen++;
	pthread_mutex_unlock(&d->base_lock);
	if (!keep) {
		m->live = false;
		if (former)
			d->retired[d->nretired++] = former;
	}
	return 0;
}

struct hook {
	char *argv[4];
	char **envp;
	char *own[3];              /* our variables, the only entries freed */
	pid_t pid;
	struct cdisk_ctx *ctx;
	char disk[4096];
};

static void hook_free(struct hook *h)
{
	if (!h)
		return;
	free(h->argv[2]);
	for (size_t i = 0; i < CD_ARRAY_SIZE(h->own); i++)
		free(h->own[i]);
	free(h->envp);
	free(h);
}

static void hook_reap(struct hook *h)
{
	int status;

	while (waitpid(h->pid, &status, 0) < 0)
		if (errno != EINTR) {
			hook_free(h);
			return;
		}
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		cd_log(h->ctx, CDISK_LOG_WARNING, "'%s': the restore's --on-complete command "
		       "failed (%s %d)", h->disk, WIFEXITED(status) ? "exit" : "signal",
		       WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
	hook_free(h);
}

static void *hook_reaper(void *arg)
{
	hook_reap(arg);
	return NULL;
}

static char *env_pair(const char *name, const char *value)
{
	size_t len = strlen(name) + strlen(value) + 2;
	char *s = malloc(len);

	if (s)
		snprintf(s, len, "%s=%s", name, value);
	return s;
}

/* The environment, with ours in place of any inherited ones. */
static int hook_env(struct hook *h, const char *disk, const char *target, bool switched)
{
	size_t n = 0, k = 0;

	while (environ[n])
		n++;
	h->envp = calloc(n + CD_ARRAY_SIZE(h->own) + 1, sizeof(char *));
	h->own[0] = env_pair("CDISK_DISK", disk);
	h->own[1] = env_pair("CDISK_TARGET", target);
	h->own[2] = env_pair("CDISK_SWITCHED", switched ? "1" : "0");
	if (!h->envp || !h->own[0] || !h->own[1] || !h->own[2])
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		if (strncmp(environ[i], "CDISK_DISK=", 11) &&
		    strncmp(environ[i], "CDISK_TARGET=", 13) &&
		    strncmp(environ[i], "CDISK_SWITCHED=", 15))
			h->envp[k++] = environ[i];
	for (size_t i = 0; i < CD_ARRAY_SIZE(h->own); i++)
		h->envp[k++] = h->own[i];
	return 0;
}

/* A server blocks the signals it waits for and ignores SIGPIPE: the
 * command gets the defaults, so that it can be stopped and pipes end. */
static int spawn(struct hook *h)
{
	static const int sigs[] = { SIGPIPE, SIGHUP, SIGINT, SIGTERM, SIGCHLD, SIGQUIT };
	posix_spawnattr_t attr;
	sigset_t none, dfl;
	int err;

	sigemptyset(&none);
	sigemptyset(&dfl);
	for (size_t i = 0; i < CD_ARRAY_SIZE(sigs); i++)
		sigaddset(&dfl, sigs[i]);
	err = posix_spawnattr_init(&attr);
	if (err)
		return err;
	err = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
	if (!err)
		err = posix_spawnattr_setsigmask(&attr, &none);
	if (!err)
		err = posix_spawnattr_setsigdefault(&attr, &dfl);
	if (!err)
		err = posix_spawn(&h->pid, "/bin/sh", NULL, &attr, h->argv, h->envp);
	posix_spawnattr_destroy(&attr);
	return err;
}

/* The command, with the disk and the new target in its environment; a
 * server does not wait for it (a thread reaps it), a program does. */
static void run_hook(struct cdisk *d, const char *cmd, const char *target, bool switched,
		     bool wait)
{
	struct hook *h = calloc(1, sizeof(*h));
	pthread_t reaper;
	int err = ENOMEM;

	if (!h)
		goto fail;
	h->argv[0] = "/bin/sh";
	h->argv[1] = "-c";
	h->argv[2] = strdup(cmd);
	h->ctx = d->ctx;
	snprintf(h->disk, sizeof(h->disk), "%s", d->path);
	if (!h->argv[2] || hook_env(h, d->path, target, switched) < 0)
		goto fail;
	err = spawn(h);
	if (err)
		goto fail;
	if (wait || pthread_create(&reaper, NULL, hook_reaper, h) != 0) {
		hook_reap(h);
		return;
	}
	pthread_detach(reaper);
	return;
fail:
	cd_log(d->ctx, CDISK_LOG_WARNING, "'%s': cannot run the restore's --on-complete "
	       "command: %s", d->path, strerror(err));
	hook_free(h);
}

static bool late_primary_legs(struct cd_mirror *m)
{
	unsigned n;

	pthread_mutex_lock(&m->lock);
	n = m->primary_outstanding;
	pthread_mutex_unlock(&m->lock);
	return n != 0;
}

/* Whether the restore is complete; -EAGAIN when not yet (the auxiliary
 * is not in sync and live). */
static int complete(struct cdisk *d, bool wait_hook)
{
	struct cd_mirror *m = d->mirror;
	char target[CDISK_MAX_URI + 1], left[CDISK_MAX_URI + 1] = "", *hook = NULL;
	char mirror[CDISK_MAX_URI + 1];
	struct cd_target *aux;
	enum cdisk_log_level level;
	bool switching, ready, late;
	int r;

	pthread_mutex_lock(&d->lock);
	ready = m && cd_restore_active(d) && m->live && !cd_mirror_oos(d)->count;
	pthread_mutex_unlock(&d->lock);
	if (!ready)
		return -EAGAIN;
	pthread_mutex_lock(&m->lock);
	aux = m->t;
	pthread_mutex_unlock(&m->lock);
	/* Complete means durable on the auxiliary: its flush, with no lock
	 * held (it crosses the network).  Writes after it reach both sides
	 * and the guest's next flush covers them there too. */
	r = aux ? cd_target_flush(aux) : -ENOTCONN;
	if (r < 0) {
		char why[CD_MIRROR_ERROR_MAX];

		snprintf(why, sizeof(why), "flush: %s", cd_errbuf());
		pthread_mutex_lock(&d->lock);
		cd_mirror_flush_failed_locked(d, r);
		pthread_mutex_unlock(&d->lock);
		return cd_error(d->ctx, r, "cannot complete the restore of '%s': %s",
				d->path, why);
	}
	pthread_mutex_lock(&d->lock);
	/* No write under way, and none starts until the lock is let go (a
	 * flush under way is done again on the new primary if it must be:
	 * primary_gen). */
	cd_al_drain(d);
	/* After a failover's refusal, requests given up on may still land on
	 * the primary, which is about to be called in sync as the mirror. */
	late = (d->sb.restore_flags & CD_RESTORE_KEEP_PRIMARY) && late_primary_legs(m);
	if (!cd_restore_active(d) || !m->live || cd_mirror_oos(d)->count || late) {
		pthread_mutex_unlock(&d->lock);
		return -EAGAIN;
	}
	memcpy(target, d->sb.mirror, sizeof(target));
	switching = d->sb.restore_flags & CD_RESTORE_SWITCH;
	if (switching) {
		r = switch_roles_locked(d, left, sizeof(left));
	} else {
		struct cd_superblock old = d->sb;

		d->sb.compat &= ~CD_FEATURE_COMPAT_RESTORE;
		d->sb.restore_flags = 0;
		d->sb.restore_started = 0;
		r = cd_mirror_store_state_locked(d, CD_MIRROR_STORED_IN_SYNC, NULL);
		if (r < 0)
			d->sb = old;
	}
	if (r == 0) {
		hook = m->restore_hook;
		m->restore_hook = NULL;
	}
	memcpy(mirror, d->sb.mirror, sizeof(mirror));
	pthread_mutex_unlock(&d->lock);
	if (r < 0)
		return r;
	cd_backup_store_pending(d);
	/* Loud in a server's log; a program that waits says it itself. */
	level = wait_hook ? CDISK_LOG_INFO : CDISK_LOG_WARNING;
	if (switching)
		cd_log(d->ctx, level, "'%s': RESTORE COMPLETE: '%s' is the "
		       "primary now%s%s%s%s", d->path, target, left[0] ? "; the old primary '" :
		       "; the mirror is '", left[0] ? left : mirror,
		       left[0] ? "' is no longer used: remove it when you no longer need it"
			       : "' again, in sync", left[0] ? "; the disk has no mirror" : "");
	else
		cd_log(d->ctx, level, "'%s': RESTORE COMPLETE: '%s' holds the "
		       "whole disk and is its mirror, in sync", d->path, target);
	if (hook)
		run_hook(d, hook, target, switching, wait_hook);
	free(hook);
	return 0;
}

void cd_restore_after_copy(struct cdisk *d)
{
	int r = complete(d, false);

	if (r < 0 && r != -EAGAIN)
		cd_log(d->ctx, CDISK_LOG_WARNING, "%s", cd_errbuf());
}

int cdisk_restore_copy(struct cdisk *d, const struct cdisk_sync_opts *o,
		       struct cdisk_sync_stats *st)
{
	int r;

	memset(st, 0, sizeof(*st));
	pthread_mutex_lock(&d->lock);
	r = cd_restore_active(d) ? 0 :
	    cd_error(d->ctx, -ENOENT, "'%s' has no restore under way", d->path);
	pthread_mutex_unlock(&d->lock);
	if (r == 0)
		r = cdisk_mirror_copy(d, o, st);
	if (r < 0 || st->stopped || st->left_bytes)
		return r;
	r = complete(d, true);
	/* Not in sync after all (a write of this process's own is not
	 * possible on an idle disk): said as "stopped". */
	if (r == -EAGAIN) {
		st->stopped = true;
		r = 0;
	}
	return r;
}

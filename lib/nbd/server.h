/* Internal: the server and its control socket share these. */
#ifndef CDISK_SERVER_H
#define CDISK_SERVER_H

#include <gnutls/gnutls.h>
#include <pthread.h>
#include <signal.h>
#include <sys/uio.h>

#include "cdisk.h"
#include "disk.h"
#include "stats.h"

/* A sync run by the server for one export (control "sync"). */
struct cd_sync_job {
	struct cdisk_server *server;
	pthread_t thread;
	bool started, running;
	enum cdisk_sync_mode mode;
	struct cdisk_sync_opts opts;
	struct cdisk_sync_stats stats;
	struct cdisk_sync_progress progress;
	/* Its own stop request (opts.stop): the disk's sync_stop is cleared
	 * when a sync begins, so a stop asked before the thread got there
	 * would be lost. */
	volatile sig_atomic_t stop;
	int result;
	char error[512];
};

/* Who may use an export ([export NAME] clients and users); an export with
 * neither list is open to every client that can connect. */
#define CD_MAX_ALLOWED 32
struct cd_access {
	char *clients[CD_MAX_ALLOWED];   /* TLS certificate common names */
	size_t nclients;
	uid_t users[CD_MAX_ALLOWED];     /* peers on the unix socket */
	size_t nusers;
};

struct cd_export {
	char *name;
	char *path;
	struct cdisk *disk;
	bool readonly;
	struct cd_access access;
	unsigned connections;
	uint64_t requests;
	struct cd_io_stats io;     /* its requests, by the workers (stats.c) */
	/* The engines' work on its disk goes through the server's queue
	 * (cd_export_gate); srv set once, atomically. */
	struct cdisk_server *srv;
	struct cd_io_gate gate;
	struct cd_sync_job sync;   /* under the server's lock */
	struct cd_pool *pool;      /* a pool's image (pool.c); NULL: fixed */
	/* --push-files (files-push.c), under the server's lock */
	pthread_t files_thread;
	bool files_started, files_running;
	bool files_skip;           /* no writer disk of a folder: never pushed */
};

struct cd_listener {
	int fd;
	char *unix_path;
	bool tcp;
};

struct conn;

struct cd_tls;
struct cd_queue;
struct cd_readers;
struct cd_users;
struct cd_psk;
struct cd_pool;

struct cdisk_server {
	struct cdisk_ctx *ctx;
	struct cd_tls *tls;        /* NULL: no TLS offered */
	enum cdisk_tls_mode tls_mode;
	pthread_mutex_t lock;
	struct cd_export *exports;
	size_t nexports;
	struct cd_listener listen[16];
	size_t nlisten;
	int control_fd;
	char *control_path;
	struct conn *conns;
	struct cd_readers *readers;    /* threads that read connections (nbd-conn.c) */
	pthread_cond_t conn_finished;  /* a connection's reader let it go (lock) */
	struct cd_queue *queue;    /* every connection's requests (lock) */
	/* cdisk_server_set_sync_policy: a push of every export this often */
	uint64_t policy_every_ms, policy_next_ms;
	struct cdisk_sync_opts policy;
	pthread_t policy_thread;
	bool policy_started, policy_stop;
	/* Control requests under way, each on a thread of its own (lock). */
	unsigned control_active;
	pthread_cond_t control_idle;   /* control_active fell to 0; policy waits */
	/* --users and --tls-psk (users.c), swapped whole by a reload: the
	 * handshake reads them under users_lock, never across network I/O. */
	pthread_rwlock_t users_lock;
	bool users_on;             /* set once, before serving */
	struct cd_users *users;    /* NULL: no users, exports as [export] says */
	struct cd_psk *psk;
	char *users_path, *psk_path;
	int reload_fd;             /* readable: reload both (SIGHUP); -1: none */
	struct cd_pool *pool;      /* --pool; NULL: none */
	bool files_push;           /* --push-files */
	bool files_stopping;       /* shutting down: no push starts (lock) */
	pthread_cond_t files_done; /* a push ended (lock) */
};

/* TLS (tls.c); dir NULL: no certificates (pre-shared keys only). */
int cd_tls_load(struct cdisk_ctx *ctx, const char *dir, bool verify_peer,
		struct cd_tls **out);
/* Offer PSK key exchange too, with the keys of s->psk (s->users_lock). */
int cd_tls_enable_psk(struct cdisk_ctx *ctx, struct cd_tls *t, struct cdisk_server *s);
void cd_tls_free(struct cd_tls *t);
/* peer_name gets the verified client certificate's common name, or with
 * *psk the PSK identity ("" when peers are not verified). */
int cd_tls_accept(struct cd_tls *t, int fd, gnutls_session_t *out, char *peer_name,
		  size_t peer_len, bool *psk, char *why, size_t len);
void cd_tls_close(gnutls_session_t s);
/* Receives are one thread's, sends one thread's at a time.  All of len,
 * or a negative errno. */
int cd_tls_recv(gnutls_session_t s, void *buf, size_t len);
/* Some bytes (at most len); without wait, 0 when no record has wholly
 * come.  A negative errno: -ECONNRESET when the client went. */
ssize_t cd_tls_recv_some(gnutls_session_t s, void *buf, size_t len, bool wait);
/* All of it on its way to the socket, or a negative errno; with n == 0,
 * what cd_tls_send_some left with the session. */
int cd_tls_send_iov(gnutls_session_t s, const struct iovec *iov, int n);
/* What the socket takes now, without waiting (with kTLS, none): the
 * bytes taken, or a negative errno; *more when the rest of iov, or some
 * of what was taken, is not on the socket yet: cd_tls_send_iov sends it. */
ssize_t cd_tls_send_some(gnutls_session_t s, const struct iovec *iov, int n, bool *more);

struct cd_export *cd_server_find_export(struct cdisk_server *s, const char *name);
/* The export by name, fixed or from the pool, held until put: a pool's
 * image removed meanwhile stays open for its holders. */
struct cd_export *cd_server_get_export(struct cdisk_server *s, const char *name);
void cd_server_put_export(struct cd_export *e);
/* The server's request queue, started on first need; NULL when its
 * workers cannot start (nbd-conn.c). */
struct cd_queue *cd_server_queue(struct cdisk_server *s);
/* From now on the engines' copies of e's disk take their turn in the
 * server's queue as background work (nbd-conn.c).  e must not move. */
void cd_export_gate(struct cdisk_server *s, struct cd_export *e);
/* Limit an export to these certificate names and unix users, which it
 * takes over (exports.c). */
int cd_server_restrict_export(struct cdisk_server *s, const char *name,
			      struct cd_access *access);
void cd_access_free(struct cd_access *a);
/* SIGHUP: read the users and key files again; a bad one keeps the old
 * ones, and connections whose access is gone are closed (nbd-conn.c). */
void cd_server_reload_users(struct cdisk_server *s);
int cd_listen_unix(struct cdisk_ctx *ctx, const char *path, mode_t mode, int *out);
/* Accept one control connection and answer it on a thread of its own. */
void cd_control_serve_one(struct cdisk_server *s);
void cd_control_wait_idle(struct cdisk_server *s);
/* The --sync-every timer, on a thread of its own. */
int cd_control_start_policy(struct cdisk_server *s);
void cd_control_stop_policy(struct cdisk_server *s);
void cd_server_serve_fd(struct cdisk_server *s, int fd);
/* Start the policy's syncs when their time has come (the accept loop). */
void cd_control_policy_tick(struct cdisk_server *s);
/* Stop every export's sync and wait for it (before the disks close). */
void cd_control_stop_syncs(struct cdisk_server *s);
/* --push-files (files-push.c): a client past its handshake counts in
 * (waiting while the disk's files are being sent), and out; the last one
 * out of a fixed, writable export starts the push.  Stop waits for every
 * push under way and starts no more. */
void cd_files_client_in(struct cdisk_server *s, struct cd_export *e);
void cd_files_client_out(struct cdisk_server *s, struct cd_export *e);
void cd_files_stop(struct cdisk_server *s);
/* One control request line, answered as the socket would (fuzzers). */
char *cd_control_answer(struct cdisk_server *s, const char *line);

#endif

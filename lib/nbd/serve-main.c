/* cdisk-serve's engine: cdisks exported over NBD.  Here the exports,
 * the listening sockets and the main loop that accepts connections
 * (nbd-conn.c), answers the control socket (control.c) and stops the
 * whole on request; the protocol itself is nbd-proto.c. */
#include <arpa/inet.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "cdisk.h"
#include "ctx.h"
#include "nbd-conn.h"
#include "pool.h"
#include "queue.h"
#include "server.h"
#include "users.h"
#include "util.h"

/* ---- exports ---- */

struct cd_export *cd_server_find_export(struct cdisk_server *srv, const char *name)
{
	if (!*name && srv->nexports)
		return &srv->exports[0];
	for (size_t i = 0; i < srv->nexports; i++)
		if (strcmp(srv->exports[i].name, name) == 0)
			return &srv->exports[i];
	return NULL;
}

struct cd_export *cd_server_get_export(struct cdisk_server *srv, const char *name)
{
	struct cd_export *e = cd_server_find_export(srv, name);

	/* A name with '/' is never a fixed export's, always a pool's. */
	if (e)
		return e;
	e = cd_pool_get(srv->pool, name);
	if (e)
		cd_export_gate(srv, e);
	return e;
}

void cd_server_put_export(struct cd_export *e)
{
	if (e && e->pool)
		cd_pool_put(e);
}

/* ---- the server ---- */

int cdisk_server_new(struct cdisk_ctx *ctx, struct cdisk_server **out)
{
	struct cdisk_server *s = calloc(1, sizeof(*s));

	if (!s)
		return cd_error(ctx, -ENOMEM, "out of memory");
	s->ctx = ctx;
	s->control_fd = -1;
	s->reload_fd = -1;
	pthread_mutex_init(&s->lock, NULL);
	pthread_rwlock_init(&s->users_lock, NULL);
	pthread_cond_init(&s->control_idle, NULL);
	pthread_cond_init(&s->files_done, NULL);
	pthread_cond_init(&s->conn_finished, NULL);
	*out = s;
	return 0;
}

int cdisk_server_set_tls(struct cdisk_server *s, const char *dir,
			 enum cdisk_tls_mode mode, bool verify_peer)
{
	struct cd_tls *t = NULL;
	int r = 0;

	if (mode != CDISK_TLS_OFF)
		r = cd_tls_load(s->ctx, dir, verify_peer, &t);
	if (r < 0)
		return r;
	cd_tls_free(s->tls);
	s->tls = t;
	s->tls_mode = mode;
	return 0;
}

int cdisk_server_set_users(struct cdisk_server *s, const char *users_path,
			   const char *psk_path)
{
	struct cd_users *users = NULL;
	struct cd_psk *psk = NULL;
	int r = 0;

	if (psk_path && !s->tls)
		return cd_error(s->ctx, -EINVAL, "pre-shared keys need TLS: not with "
				"TLS off");
	if (users_path)
		r = cd_users_load(s->ctx, users_path, &users);
	if (r == 0 && psk_path)
		r = cd_psk_load(s->ctx, psk_path, &psk);
	if (r == 0 && psk_path)
		r = cd_tls_enable_psk(s->ctx, s->tls, s);
	if (r == 0 && users_path && !(s->users_path = strdup(users_path)))
		r = cd_error(s->ctx, -ENOMEM, "out of memory");
	if (r == 0 && psk_path && !(s->psk_path = strdup(psk_path)))
		r = cd_error(s->ctx, -ENOMEM, "out of memory");
	if (r < 0) {
		cd_users_free(users);
		cd_psk_free(psk);
		return r;
	}
	s->users = users;
	s->psk = psk;
	s->users_on = users != NULL;
	if (s->pool)
		cd_pool_set_quotas(s->pool, users);
	return 0;
}

int cdisk_server_set_pool(struct cdisk_server *s, const char *dir, bool read_only)
{
	struct cd_pool_scan res;
	int r;

	if (s->pool)
		return cd_error(s->ctx, -EINVAL, "one pool only");
	r = cd_pool_open(s->ctx, dir, read_only, &s->pool);
	if (r == 0)
		cd_pool_set_quotas(s->pool, s->users);
	if (r == 0)
		r = cd_pool_rescan(s->pool, &res);
	if (r < 0)
		return r;
	for (size_t i = 0; i < res.nskipped; i++)
		cd_log(s->ctx, CDISK_LOG_WARNING, "pool: not serving '%s': %s",
		       res.skipped[i].name, res.skipped[i].reason);
	cd_pool_scan_free(&res);
	return 0;
}

void cdisk_server_set_reload_fd(struct cdisk_server *s, int fd)
{
	s->reload_fd = fd;
}

int cdisk_server_add_export(struct cdisk_server *s, const char *name,
			    const char *path, bool readonly)
{
	struct cd_export *e;
	struct cdisk *d;
	int r;

	if (!*name || strlen(name) > 255 || strchr(name, '/'))
		return cd_error(s->ctx, -EINVAL, "invalid export name '%s': 1 to 255 "
				"characters, no '/'", name);
	for (size_t i = 0; i < s->nexports; i++)
		if (strcmp(s->exports[i].name, name) == 0)
			return cd_error(s->ctx, -EINVAL, "export '%s' is given twice", name);
	/* The base opens when a read first needs it: a remote base that is
	 * down must not keep the overlay from being served. */
	r = cdisk_open(s->ctx, path, CDISK_OPEN_NO_BASE |
		       (readonly ? CDISK_OPEN_RDONLY : 0), &d);
	if (r < 0)
		return r;
	/* The keeper opens the mirror, finishes a copy an idle attach or a
	 * crash left, and resyncs a degraded mirror; a disk with no mirror
	 * gets one attached through the control socket. */
	if (!readonly && (r = cdisk_mirror_start(d)) < 0) {
		cdisk_close(d);
		return r;
	}
	e = realloc(s->exports, (s->nexports + 1) * sizeof(*e));
	if (!e) {
		cdisk_close(d);
		return cd_error(s->ctx, -ENOMEM, "out of memory");
	}
	s->exports = e;
	e = &s->exports[s->nexports++];
	memset(e, 0, sizeof(*e));
	e->name = strdup(name);
	e->path = strdup(path);
	e->disk = d;
	e->readonly = readonly;
	return 0;
}

/* cdisk-serve's --mirror-timeout and --on-mirror-error. */
int cdisk_server_set_mirror_policy(struct cdisk_server *s, uint32_t timeout_ms, int fail,
				   uint32_t failover_ms)
{
	if (timeout_ms && (timeout_ms < 100 || timeout_ms > 600000))
		return cd_error(s->ctx, -EINVAL, "mirror timeout %" PRIu32 " ms: expected "
				"100 to 600000", timeout_ms);
	if (failover_ms && (failover_ms < 100 || failover_ms > 600000))
		return cd_error(s->ctx, -EINVAL, "failover timeout %" PRIu32 " ms: expected "
				"100 to 600000", failover_ms);
	if (failover_ms)
		s->ctx->cfg.failover_timeout_ms = failover_ms;
	if (timeout_ms)
		s->ctx->cfg.mirror_timeout_ms = timeout_ms;
	if (fail >= 0)
		s->ctx->cfg.mirror_fail = fail != 0;
	return 0;
}

int cdisk_server_first_export(struct cdisk_server *s, char *out, size_t len)
{
	if (!s->nexports)
		return cd_error(s->ctx, -EINVAL, "no exports");
	snprintf(out, len, "%s", s->exports[0].name);
	return 0;
}

/* A socket file left by a dead server may be replaced; one a live server
 * answers on may not. */
static int claim_socket_path(struct cdisk_ctx *ctx, const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	struct stat st;
	int fd, r;

	if (lstat(path, &st) < 0)
		return 0;
	if (!S_ISSOCK(st.st_mode))
		return cd_error(ctx, -EEXIST, "cannot listen on '%s': it exists and is "
				"not a socket", path);
	memcpy(a.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	r = connect(fd, (struct sockaddr *)&a, sizeof(a));
	close(fd);
	if (r == 0)
		return cd_error(ctx, -EBUSY, "cannot listen on '%s': another server is "
				"listening there", path);
	unlink(path);
	return 0;
}

int cd_listen_unix(struct cdisk_ctx *ctx, const char *path, mode_t mode, int *out)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int fd, r;

	if (strlen(path) >= sizeof(a.sun_path))
		return cd_error(ctx, -ENAMETOOLONG, "socket path '%s' is too long", path);
	r = claim_socket_path(ctx, path);
	if (r < 0)
		return r;
	memcpy(a.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return cd_error(ctx, -errno, "cannot create a socket: %s", strerror(errno));
	/* Tight from the first moment: bind under a umask, then set the mode. */
	mode_t old = umask(0177);
	r = bind(fd, (struct sockaddr *)&a, sizeof(a));
	umask(old);
	if (r == 0 && chmod(path, mode) < 0)
		r = -1;
	if (r == 0 && listen(fd, 128) < 0)
		r = -1;
	if (r < 0) {
		r = cd_error(ctx, -errno, "cannot listen on '%s': %s", path, strerror(errno));
		close(fd);
		return r;
	}
	*out = fd;
	return 0;
}

static int add_listener(struct cdisk_server *s, int fd, const char *unix_path, bool tcp)
{
	if (s->nlisten == CD_ARRAY_SIZE(s->listen)) {
		close(fd);
		return cd_error(s->ctx, -EINVAL, "too many listening sockets");
	}
	s->listen[s->nlisten].fd = fd;
	s->listen[s->nlisten].unix_path = unix_path ? strdup(unix_path) : NULL;
	s->listen[s->nlisten].tcp = tcp;
	s->nlisten++;
	return 0;
}

int cdisk_server_listen_unix(struct cdisk_server *s, const char *path, unsigned mode)
{
	int fd, r = cd_listen_unix(s->ctx, path, (mode_t)mode, &fd);

	return r < 0 ? r : add_listener(s, fd, path, false);
}

static in_port_t *port_of(struct sockaddr *a)
{
	return a->sa_family == AF_INET6 ? &((struct sockaddr_in6 *)(void *)a)->sin6_port
					 : &((struct sockaddr_in *)(void *)a)->sin_port;
}

int cdisk_server_listen_tcp(struct cdisk_server *s, const char *host, const char *port)
{
	in_port_t chosen = 0;
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_PASSIVE }, *res, *ai;
	int r, added = 0;
	char *end;
	long n;

	/* getaddrinfo() would take 99999 as 34463, and service names. */
	errno = 0;
	n = strtol(port, &end, 10);
	if (!*port || *end || errno || n < 0 || n > 65535 || *port < '0' || *port > '9')
		return cd_error(s->ctx, -EINVAL, "invalid port '%s': expected a number "
				"from 0 to 65535", port);
	r = getaddrinfo(host, port, &hints, &res);
	if (r != 0)
		return cd_error(s->ctx, -EINVAL, "cannot listen on '%s:%s': %s",
				host ? host : "*", port, gai_strerror(r));
	for (ai = res; ai; ai = ai->ai_next) {
		int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0), on = 1;
		if (fd < 0)
			continue;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
		if (ai->ai_family == AF_INET6)
			setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on));
		/* Port 0: the port picked for the first address serves them all. */
		if (chosen)
			*port_of(ai->ai_addr) = chosen;
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 128) < 0) {
			r = -errno;
			close(fd);
			continue;
		}
		if (n == 0 && !chosen) {
			struct sockaddr_storage a;
			socklen_t alen = sizeof(a);
			if (getsockname(fd, (struct sockaddr *)&a, &alen) == 0)
				chosen = *port_of((struct sockaddr *)&a);
		}
		if (add_listener(s, fd, NULL, true) == 0)
			added++;
	}
	freeaddrinfo(res);
	if (!added)
		return cd_error(s->ctx, r ? r : -EADDRNOTAVAIL, "cannot listen on '%s:%s': %s",
				host ? host : "*", port, strerror(r ? -r : EADDRNOTAVAIL));
	return 0;
}

int cdisk_server_tcp_address(struct cdisk_server *s, unsigned index, char *out,
			     size_t len)
{
	for (size_t i = 0; i < s->nlisten; i++) {
		struct sockaddr_storage a;
		socklen_t alen = sizeof(a);
		char host[INET6_ADDRSTRLEN], port[8];

		if (!s->listen[i].tcp || index-- > 0)
			continue;
		if (getsockname(s->listen[i].fd, (struct sockaddr *)&a, &alen) < 0)
			return cd_error(s->ctx, -errno, "cannot name a TCP listener: %s",
					strerror(errno));
		if (getnameinfo((struct sockaddr *)&a, alen, host, sizeof(host), port,
				sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV) != 0)
			return cd_error(s->ctx, -EINVAL, "cannot name a TCP listener");
		snprintf(out, len, "%s%s%s:%s", a.ss_family == AF_INET6 ? "[" : "", host,
			 a.ss_family == AF_INET6 ? "]" : "", port);
		return 0;
	}
	return -ENOENT;
}

static void accept_one(struct cdisk_server *s, int lfd, bool tcp)
{
	int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC), on = 1;

	if (fd < 0)
		return;
	if (tcp)
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
	cd_conn_start(s, fd);
}

/* What made reload_fd readable (a signalfd's records) is read and
 * dropped: signals that came together make one reload. */
static void reload_now(struct cdisk_server *s)
{
	uint8_t buf[512];

	if (read(s->reload_fd, buf, sizeof(buf)) > 0)
		cd_server_reload_users(s);
}

/* Serve until stop_fd becomes readable; then stop accepting, let every
 * connection finish what it has read, flush and close the disks. */
int cdisk_server_run(struct cdisk_server *s, int stop_fd)
{
	int r = cd_control_start_policy(s);

	if (r < 0)
		return r;
	/* The array of fixed exports no longer moves. */
	for (size_t i = 0; i < s->nexports; i++)
		cd_export_gate(s, &s->exports[i]);
	int tick_ms = -1;

	for (;;) {
		struct pollfd p[CD_ARRAY_SIZE(s->listen) + 4];
		size_t n = 0, first_listener, reload = 0, pool = 0;
		int timeout = cd_pool_timeout_ms(s->pool);

		p[n++] = (struct pollfd){ .fd = stop_fd, .events = POLLIN };
		if (s->control_fd >= 0)
			p[n++] = (struct pollfd){ .fd = s->control_fd, .events = POLLIN };
		if (s->reload_fd >= 0) {
			reload = n;
			p[n++] = (struct pollfd){ .fd = s->reload_fd, .events = POLLIN };
		}
		if (cd_pool_fd(s->pool) >= 0) {
			pool = n;
			p[n++] = (struct pollfd){ .fd = cd_pool_fd(s->pool), .events = POLLIN };
		}
		first_listener = n;
		for (size_t i = 0; i < s->nlisten; i++)
			p[n++] = (struct pollfd){ .fd = s->listen[i].fd, .events = POLLIN };
		if (tick_ms >= 0 && (timeout < 0 || timeout > tick_ms))
			timeout = tick_ms;
		if (poll(p, n, timeout < 0 || timeout > 1000 ? 1000 : timeout) < 0 &&
		    errno != EINTR)
			break;
		cd_conn_reap(s, false);
		struct cd_queue *queue = __atomic_load_n(&s->queue, __ATOMIC_ACQUIRE);
		tick_ms = queue ? cd_queue_tick(queue) : -1;
		if (p[0].revents)
			break;
		if (s->control_fd >= 0 && p[1].revents & POLLIN)
			cd_control_serve_one(s);
		if (reload && p[reload].revents & POLLIN)
			reload_now(s);
		if (pool && p[pool].revents & POLLIN)
			cd_pool_events(s->pool);
		cd_pool_tick(s->pool);
		for (size_t i = 0; i < s->nlisten; i++)
			if (p[first_listener + i].revents & POLLIN)
				accept_one(s, s->listen[i].fd, s->listen[i].tcp);
	}
	/* Stop reading new requests; what was read is still answered.  The
	 * clients the server cuts start no push of files. */
	pthread_mutex_lock(&s->lock);
	s->files_stopping = true;
	pthread_mutex_unlock(&s->lock);
	cd_conn_stop_reading(s);
	cd_queue_drain(s->queue);
	cd_conn_reap(s, true);
	cd_files_stop(s);
	cd_control_stop_policy(s);
	cd_control_wait_idle(s);
	cd_control_stop_syncs(s);
	/* No connection or control request holds a pool image any more. */
	cd_pool_free(s->pool);
	s->pool = NULL;
	for (size_t i = 0; i < s->nexports; i++) {
		int rc = cdisk_close(s->exports[i].disk);
		s->exports[i].disk = NULL;
		if (rc < 0 && r == 0)
			r = rc;
	}
	/* Only now: the engines of the disks just closed took their turns
	 * in it until they stopped. */
	cd_queue_free(s->queue);
	s->queue = NULL;
	return r;
}

int cdisk_server_set_sync_policy(struct cdisk_server *s, uint32_t every_seconds,
				 const struct cdisk_sync_opts *opts)
{
	if (!every_seconds)
		return cd_error(s->ctx, -EINVAL, "the sync interval must be at least 1 s");
	s->policy = *opts;
	s->policy.progress = NULL;
	s->policy.stop = NULL;
	s->policy_every_ms = every_seconds * 1000ull;
	s->policy_next_ms = cd_now_ms() + s->policy_every_ms;
	return 0;
}

void cdisk_server_free(struct cdisk_server *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	s->files_stopping = true;
	pthread_mutex_unlock(&s->lock);
	cd_queue_drain(s->queue);
	cd_conn_reap(s, true);
	for (size_t i = 0; i < s->nlisten; i++) {
		close(s->listen[i].fd);
		if (s->listen[i].unix_path)
			unlink(s->listen[i].unix_path);
		free(s->listen[i].unix_path);
	}
	if (s->control_fd >= 0) {
		close(s->control_fd);
		unlink(s->control_path);
	}
	cd_control_stop_policy(s);
	cd_control_wait_idle(s);
	free(s->control_path);
	cd_tls_free(s->tls);
	cd_control_stop_syncs(s);
	cd_files_stop(s);
	cd_pool_free(s->pool);
	for (size_t i = 0; i < s->nexports; i++) {
		if (s->exports[i].disk)
			cdisk_close(s->exports[i].disk);
		free(s->exports[i].name);
		free(s->exports[i].path);
		cd_access_free(&s->exports[i].access);
	}
	cd_queue_free(s->queue);   /* after the disks: see cdisk_server_run */
	free(s->exports);
	cd_users_free(s->users);
	cd_psk_free(s->psk);
	free(s->users_path);
	free(s->psk_path);
	pthread_rwlock_destroy(&s->users_lock);
	pthread_cond_destroy(&s->control_idle);
	pthread_cond_destroy(&s->files_done);
	pthread_cond_destroy(&s->conn_finished);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

/* cdisk-serve: export cdisks over NBD to QEMU and other clients, in the
 * foreground, with a control socket for the other programs. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <grp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "cli.h"

#define DEFAULT_USERS "/etc/cdisk/users.conf"

static const struct cli_program program = {
	.name = "cdisk-serve",
	.args = "[NAME.cdisk...]",
	.summary = "export cdisks over NBD, with a control socket",
};

static char **export_args, *socket_arg, *tcp_arg, *control_arg, *group_arg;
static char *config_arg, *sync_min_dirty_arg, *sync_rate_arg, *tls_dir_arg, *tls_arg;
static char *on_mirror_error_arg, *users_arg, *tls_psk_arg, *pool_arg;
/* NOT_GIVEN: the configuration's; 0 would be no timeout, and is refused. */
#define NOT_GIVEN INT_MIN
static int mirror_timeout = NOT_GIVEN, failover_timeout = NOT_GIVEN;
static int readonly, sync_every, sync_max_time, sync_if_healthy, tls_verify_peer;
static int push_files;

static struct poptOption options[] = {
	{ "export", 'e', POPT_ARG_ARGV, &export_args, 0,
	  "Serve a disk under a name (repeatable)", "NAME=PATH" },
	{ "config", 'c', POPT_ARG_STRING, &config_arg, 0,
	  "Exports from a file of [export NAME] sections", "FILE" },
	{ "pool", 'p', POPT_ARG_STRING, &pool_arg, 0,
	  "Serve DIR/USER/IMAGE.cdisk as export USER/IMAGE (DIR/shared/: read-only), "
	  "as they come and go", "DIR" },
	{ "socket", 's', POPT_ARG_STRING, &socket_arg, 0,
	  "NBD unix socket (default: RUNTIME_DIR/NAME.sock)", "PATH" },
	{ "tcp", 't', POPT_ARG_STRING, &tcp_arg, 0,
	  "Also listen on TCP (with --tls-certificates: TLS only)", "[HOST:]PORT" },
	{ "tls-certificates", '\0', POPT_ARG_STRING, &tls_dir_arg, 0,
	  "Offer TLS with server-cert.pem and server-key.pem (and ca-cert.pem) from DIR",
	  "DIR" },
	{ "tls", '\0', POPT_ARG_STRING, &tls_arg, 0,
	  "require (default with certificates: TCP clients must use TLS), on "
	  "(offered) or off", "MODE" },
	{ "tls-verify-peer", '\0', POPT_ARG_NONE, &tls_verify_peer, 0,
	  "Accept only TLS clients with a certificate signed by DIR/ca-cert.pem", NULL },
	{ "tls-psk", '\0', POPT_ARG_STRING, &tls_psk_arg, 0,
	  "Offer TLS with the pre-shared keys of FILE (psktool's name:hexkey lines)",
	  "FILE" },
	{ "users", 'u', POPT_ARG_STRING, &users_arg, 0,
	  "Users and what they may open, from [user NAME] sections (default: "
	  DEFAULT_USERS " when it exists)", "FILE" },
	{ "control", '\0', POPT_ARG_STRING, &control_arg, 0,
	  "Control socket (default: RUNTIME_DIR/cdisk-serve.PID.ctl)", "PATH" },
	{ "group", 'g', POPT_ARG_STRING, &group_arg, 0,
	  "Make the sockets 0660 with this group (default 0600)", "GROUP" },
	{ "sync-every", '\0', POPT_ARG_INT, &sync_every, 0,
	  "Push each export's changes to its base every SECONDS (as cdisk-sync)",
	  "SECONDS" },
	{ "sync-min-dirty", '\0', POPT_ARG_STRING, &sync_min_dirty_arg, 0,
	  "With --sync-every: only when at least SIZE waits", "SIZE" },
	{ "sync-rate", '\0', POPT_ARG_STRING, &sync_rate_arg, 0,
	  "With --sync-every: at most RATE bytes per second", "RATE" },
	{ "sync-max-time", '\0', POPT_ARG_INT, &sync_max_time, 0,
	  "With --sync-every: start no new request after SECONDS", "SECONDS" },
	{ "sync-if-healthy", '\0', POPT_ARG_NONE, &sync_if_healthy, 0,
	  "With --sync-every: only when the base probes healthy", NULL },
	{ "push-files", '\0', POPT_ARG_NONE, &push_files, 0,
	  "When the last client of a cloud folder's writer disk disconnects, send "
	  "its files to the folder (as cdisk-sync --files)", NULL },
	{ "mirror-timeout", '\0', POPT_ARG_INT, &mirror_timeout, 0,
	  "A mirror write slower than MS degrades the disk (default: [mirror] "
	  "timeout, 5000)", "MS" },
	{ "failover-timeout", '\0', POPT_ARG_INT, &failover_timeout, 0,
	  "A disk on a primary whose primary fails a request or does not answer "
	  "in MS, with its mirror in sync, fails over to the mirror (default: "
	  "[mirror] failover_timeout, 5000)", "MS" },
	{ "on-mirror-error", '\0', POPT_ARG_STRING, &on_mirror_error_arg, 0,
	  "When a mirror write fails or is too slow: degrade (the VM goes on, the "
	  "mirror is resynced later) or fail the write", "degrade|fail" },
	{ "read-only", 'r', POPT_ARG_NONE, &readonly, 0,
	  "Refuse writes to every export", NULL },
	CLI_COMMON_OPTIONS,
	POPT_TABLEEND
};

static enum cdisk_tls_mode tls_mode(void)
{
	if (!tls_arg)
		return tls_dir_arg || tls_psk_arg ? CDISK_TLS_REQUIRE : CDISK_TLS_OFF;
	if (!strcmp(tls_arg, "off")) {
		if (tls_psk_arg)
			cli_usage_error("--tls off leaves no use for --tls-psk");
		return CDISK_TLS_OFF;
	}
	if (!strcmp(tls_arg, "on") || !strcmp(tls_arg, "require")) {
		if (!tls_dir_arg && !tls_psk_arg)
			cli_usage_error("--tls %s needs --tls-certificates or --tls-psk",
					tls_arg);
		return !strcmp(tls_arg, "on") ? CDISK_TLS_ON : CDISK_TLS_REQUIRE;
	}
	cli_usage_error("invalid --tls '%s': expected require, on or off", tls_arg);
}

static char tcp_host[256], tcp_port[8];

/* --tcp [HOST:]PORT, HOST an IPv6 address in brackets, PORT as a URI's
 * (0: any free port, said once listening). */
static void parse_tcp(void)
{
	const char *colon = strrchr(tcp_arg, ':'), *port = colon ? colon + 1 : tcp_arg;
	size_t hlen = colon ? (size_t)(colon - tcp_arg) : 0;
	const char *host = tcp_arg;
	char *end;
	long n;

	if (hlen >= 2 && host[0] == '[' && host[hlen - 1] == ']')
		host++, hlen -= 2;
	else if (hlen && memchr(host, ':', hlen))
		cli_usage_error("invalid --tcp '%s': expected [HOST:]PORT, an IPv6 "
				"address in brackets", tcp_arg);
	if (hlen >= sizeof(tcp_host))
		cli_usage_error("invalid --tcp '%s': host name too long", tcp_arg);
	errno = 0;
	n = strtol(port, &end, 10);
	if (*port < '0' || *port > '9' || *end || errno || n < 0 || n > 65535)
		cli_usage_error("invalid --tcp port '%s': expected a number from 0 to 65535 "
				"(0: any free port)", port);
	memcpy(tcp_host, host, hlen);
	tcp_host[hlen] = 0;
	snprintf(tcp_port, sizeof(tcp_port), "%u", (unsigned)n);
}

static bool is_loopback(const struct sockaddr *a)
{
	if (a->sa_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)(const void *)a)->sin_addr.s_addr)
			>> 24) == 127;
	if (a->sa_family == AF_INET6) {
		const struct in6_addr *v6 = &((const struct sockaddr_in6 *)(const void *)a)->sin6_addr;
		return IN6_IS_ADDR_LOOPBACK(v6) || (IN6_IS_ADDR_V4MAPPED(v6) &&
						     v6->s6_addr[12] == 127);
	}
	return false;
}

/* Plain NBD off this host is everyone's to read: only when asked for.
 * A host that does not resolve is left for the listener to name. */
static void refuse_open_tcp(enum cdisk_tls_mode mode)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_PASSIVE }, *res, *ai;
	bool open = false;

	if (!tcp_arg || mode != CDISK_TLS_OFF || tls_arg)
		return;
	if (getaddrinfo(tcp_host[0] ? tcp_host : NULL, tcp_port, &hints, &res) != 0)
		return;
	for (ai = res; ai; ai = ai->ai_next)
		open |= !is_loopback(ai->ai_addr);
	freeaddrinfo(res);
	if (open) {
		cli_error("TCP on '%s' reaches beyond this host and would not be encrypted: "
			  "give --tls-certificates DIR, or --tls off to serve it in the clear",
			  tcp_arg);
		exit(CDISK_EXIT_USAGE);
	}
}

/* Every TCP address listened on, the port picked for port 0 included. */
static void say_tcp_addresses(struct cdisk_server *srv, enum cdisk_tls_mode mode)
{
	char addr[128];

	for (unsigned i = 0; cdisk_server_tcp_address(srv, i, addr, sizeof(addr)) == 0; i++)
		cli_error("serving on %s (TCP, %s)", addr, mode == CDISK_TLS_REQUIRE ?
			  "TLS required" : mode == CDISK_TLS_ON ? "TLS offered" :
			  "not encrypted");
}

/* An export from NAME=PATH, or from a bare PATH named by its file name.
 * Exports from --config come first, then --export, then bare paths. */
static void split_export(const char *arg, char *name, size_t nlen, const char **path)
{
	const char *eq = strchr(arg, '=');
	const char *base;

	if (eq) {
		if ((size_t)(eq - arg) >= nlen || eq == arg || !eq[1])
			cli_usage_error("invalid export '%s': expected NAME=PATH", arg);
		memcpy(name, arg, (size_t)(eq - arg));
		name[eq - arg] = 0;
		*path = eq + 1;
		return;
	}
	base = strrchr(arg, '/') ? strrchr(arg, '/') + 1 : arg;
	snprintf(name, nlen, "%s", base);
	if (strlen(name) > 6 && !strcmp(name + strlen(name) - 6, ".cdisk"))
		name[strlen(name) - 6] = 0;
	*path = arg;
}

static int add_exports(struct cdisk_server *srv, const char **args, char *first,
		       size_t flen)
{
	const char *all[256];
	size_t n = 0;

	for (size_t i = 0; export_args && export_args[i] && n < 256; i++)
		all[n++] = export_args[i];
	for (size_t i = 0; args && args[i] && n < 256; i++)
		all[n++] = args[i];
	if (n == 0 && !config_arg && !pool_arg)
		cli_usage_error("nothing to serve: give NAME.cdisk, --export NAME=PATH, "
				"--config FILE or --pool DIR");
	if (config_arg) {
		int r = cdisk_server_load_exports(srv, config_arg, readonly);
		if (r < 0)
			return r;
	}
	for (size_t i = 0; i < n; i++) {
		char name[256];
		const char *path;
		int r;

		split_export(all[i], name, sizeof(name), &path);
		r = cdisk_server_add_export(srv, name, path, readonly);
		if (r < 0)
			return r;
	}
	if (pool_arg) {
		int r = cdisk_server_set_pool(srv, pool_arg, readonly);
		if (r < 0)
			return r;
	}
	/* The first export is the default one and names the socket; a pool
	 * alone is served on pool.sock. */
	if (n == 0 && !config_arg) {
		snprintf(first, flen, "pool");
		return 0;
	}
	return cdisk_server_first_export(srv, first, flen);
}

static unsigned socket_mode(void)
{
	return group_arg ? 0660 : 0600;
}

static gid_t group_id;
static bool reported;   /* the error is already said: one line, not two */

/* Before anything is opened, so that a typo changes nothing. */
static void find_group(void)
{
	struct group *g = group_arg ? getgrnam(group_arg) : NULL;

	if (!group_arg)
		return;
	if (!g) {
		cli_error("unknown group '%s'", group_arg);
		exit(CDISK_EXIT_USAGE);
	}
	group_id = g->gr_gid;
}

static int give_to_group(const char *path)
{
	int r;

	if (!group_arg || chown(path, (uid_t)-1, group_id) == 0)
		return 0;
	r = -errno;
	cli_error("cannot give '%s' to group '%s': %s", path, group_arg, strerror(-r));
	reported = true;
	return r;
}

static int listen_all(struct cdisk_ctx *ctx, struct cdisk_server *srv,
		      const char *runtime_dir, const char *first, char *nbd_path,
		      size_t len)
{
	char control[4096];
	int r;

	if (socket_arg)
		snprintf(nbd_path, len, "%s", socket_arg);
	else if ((size_t)snprintf(nbd_path, len, "%s/%s.sock", runtime_dir, first) >= len)
		return -ENAMETOOLONG;
	if (!control_arg) {
		r = cdisk_control_socket_path(ctx, (unsigned)getpid(), control, sizeof(control));
		if (r < 0)
			return r;
	} else {
		snprintf(control, sizeof(control), "%s", control_arg);
	}
	r = cdisk_server_listen_unix(srv, nbd_path, socket_mode());
	if (r == 0)
		r = give_to_group(nbd_path);
	if (r == 0)
		r = cdisk_server_listen_control(srv, control, socket_mode());
	if (r == 0)
		r = give_to_group(control);
	if (r == 0 && tcp_arg)
		r = cdisk_server_listen_tcp(srv, tcp_host[0] ? tcp_host : NULL, tcp_port);
	return r;
}

/* A server killed with -9 leaves its control socket behind: the next one
 * to start removes those whose process is gone (a PID in use, even by
 * another program, keeps its socket). */
static void remove_stale_controls(const char *runtime_dir)
{
	DIR *dir = opendir(runtime_dir);
	struct dirent *e;

	while (dir && (e = readdir(dir))) {
		unsigned pid;
		char tail[8];
		struct stat st;

		if (sscanf(e->d_name, "cdisk-serve.%u%7s", &pid, tail) != 2 ||
		    strcmp(tail, ".ctl") || pid == 0 || pid == (unsigned)getpid())
			continue;
		if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
			continue;
		if (fstatat(dirfd(dir), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
		    S_ISSOCK(st.st_mode) && unlinkat(dirfd(dir), e->d_name, 0) == 0 &&
		    cli.verbose)
			cli_error("removed '%s/%s', left by a server that is gone",
				  runtime_dir, e->d_name);
	}
	if (dir)
		closedir(dir);
}

/* systemd's readiness protocol, Type=notify: one datagram to
 * $NOTIFY_SOCKET once we accept connections. */
static void notify_ready(void)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int fd;

	if (!path || (path[0] != '/' && path[0] != '@') || strlen(path) >= sizeof(a.sun_path))
		return;
	memcpy(a.sun_path, path, strlen(path));
	if (a.sun_path[0] == '@')
		a.sun_path[0] = 0;
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	sendto(fd, "READY=1", 7, MSG_NOSIGNAL, (struct sockaddr *)&a,
	       (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path)));
	close(fd);
}

/* SIGHUP reloads the users and keys: a signalfd the server polls. */
static int reload_signal(void)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGHUP);
	sigprocmask(SIG_BLOCK, &set, NULL);
	return signalfd(-1, &set, SFD_CLOEXEC);
}

/* --users, or the default file when there is one. */
static const char *users_file(void)
{
	if (users_arg)
		return users_arg;
	return access(DEFAULT_USERS, F_OK) == 0 ? DEFAULT_USERS : NULL;
}

static int stop_signals(void)
{
	sigset_t set;

	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigprocmask(SIG_BLOCK, &set, NULL);
	return signalfd(-1, &set, SFD_CLOEXEC);
}

/* The options cron would give cdisk-sync, run by the server itself. */
static int set_sync_policy(struct cdisk_server *srv)
{
	struct cdisk_sync_opts o = { 0 };

	o.min_dirty = sync_min_dirty_arg ? cli_parse_size("--sync-min-dirty",
							  sync_min_dirty_arg) : 0;
	o.rate = sync_rate_arg ? cli_parse_size("--sync-rate", sync_rate_arg) : 0;
	o.max_seconds = (uint32_t)sync_max_time;
	o.if_healthy = sync_if_healthy;
	return cdisk_server_set_sync_policy(srv, (uint32_t)sync_every, &o);
}

/* --mirror-timeout and --on-mirror-error: -1 when not given. */
static int mirror_fail(void)
{
	if (!on_mirror_error_arg)
		return -1;
	if (strcmp(on_mirror_error_arg, "degrade") && strcmp(on_mirror_error_arg, "fail"))
		cli_usage_error("invalid --on-mirror-error '%s': expected degrade or fail",
				on_mirror_error_arg);
	return !strcmp(on_mirror_error_arg, "fail");
}

int main(int argc, char **argv)
{
	struct cdisk_server *srv = NULL;
	struct cdisk_ctx *ctx;
	char first[256], nbd_path[4096];
	enum cdisk_tls_mode mode;
	const char **args;
	int r, stop_fd, reload_fd, fail;

	args = cli_parse(&program, argc, (const char **)argv, options, 0, 256);
	if (sync_every < 0 || sync_max_time < 0)
		cli_usage_error("--sync-every and --sync-max-time must not be negative");
	if (!sync_every && (sync_min_dirty_arg || sync_rate_arg || sync_max_time ||
			    sync_if_healthy))
		cli_usage_error("--sync-min-dirty, --sync-rate, --sync-max-time and "
				"--sync-if-healthy go with --sync-every");
	if (mirror_timeout != NOT_GIVEN && (mirror_timeout < 100 || mirror_timeout > 600000))
		cli_usage_error("--mirror-timeout must be from 100 to 600000 milliseconds");
	if (failover_timeout != NOT_GIVEN && (failover_timeout < 100 || failover_timeout > 600000))
		cli_usage_error("--failover-timeout must be from 100 to 600000 milliseconds");
	fail = mirror_fail();
	if (tls_verify_peer && !tls_dir_arg)
		cli_usage_error("--tls-verify-peer needs --tls-certificates");
	mode = tls_mode();
	find_group();
	if (tcp_arg) {
		parse_tcp();
		refuse_open_tcp(mode);
	}
	ctx = cli_context();
	stop_fd = stop_signals();
	/* Without users or keys SIGHUP keeps its default: it ends the server. */
	reload_fd = users_file() || tls_psk_arg ? reload_signal() : -1;
	r = cdisk_server_new(ctx, &srv);
	if (r == 0)
		r = cdisk_server_set_mirror_policy(srv, mirror_timeout == NOT_GIVEN ? 0 :
						   (uint32_t)mirror_timeout, fail,
						   failover_timeout == NOT_GIVEN ? 0 :
						   (uint32_t)failover_timeout);
	if (r == 0 && mode != CDISK_TLS_OFF)
		r = cdisk_server_set_tls(srv, tls_dir_arg, mode, tls_verify_peer);
	if (r == 0 && (users_file() || tls_psk_arg))
		r = cdisk_server_set_users(srv, users_file(), tls_psk_arg);
	if (r == 0 && reload_fd >= 0)
		cdisk_server_set_reload_fd(srv, reload_fd);
	if (r == 0)
		r = add_exports(srv, args, first, sizeof(first));
	if (r == 0 && sync_every)
		r = set_sync_policy(srv);
	if (r == 0 && push_files)
		cdisk_server_set_files_push(srv, true);
	if (r == 0) {
		mkdir(cdisk_ctx_runtime_dir(ctx), 0755);
		remove_stale_controls(cdisk_ctx_runtime_dir(ctx));
		r = listen_all(ctx, srv, cdisk_ctx_runtime_dir(ctx), first, nbd_path,
			       sizeof(nbd_path));
	}
	if (r == 0) {
		if (tcp_arg && mode != CDISK_TLS_REQUIRE)
			cli_error("warning: TCP on '%s' %s", tcp_arg, mode == CDISK_TLS_ON ?
				  "lets clients choose not to encrypt" : "is not encrypted");
		if (!cli.quiet) {
			cli_error("serving on '%s'", nbd_path);
			say_tcp_addresses(srv, mode);
		}
		notify_ready();
		r = cdisk_server_run(srv, stop_fd);
	}
	cdisk_server_free(srv);
	close(stop_fd);
	if (reload_fd >= 0)
		close(reload_fd);
	r = reported ? (cli_exit_code(ctx, 0), cd_exit_code(r)) : cli_exit_code(ctx, r);
	cdisk_ctx_free(ctx);
	return r;
}

/* faultproxy: a TCP proxy for the tests that sits between a cdisk
 * program and a real server and makes the network worse on demand.
 * Not installed.
 *
 *   faultproxy serve --to HOST:PORT --port-file FILE --control SOCKET
 *                    [--delay MS] [--jitter MS] [--rate BYTES/S]
 *   faultproxy ctl SOCKET COMMAND [ARG...]
 *
 * serve listens on an ephemeral loopback port (written to FILE once it
 * accepts) and forwards each connection to HOST:PORT.  Commands on the
 * control socket, one line each, change the conditions while it runs:
 *
 *   delay MS      every byte from the server reaches the client MS later
 *                 (the round trip grows by MS; the way there is left alone)
 *   jitter MS     plus a random 0..MS on each piece, order kept as TCP does
 *   rate BPS      both directions together at most BPS bytes/s; 0: no limit
 *   drop P [N]    each piece from the server is lost with probability P,
 *                 once the connection has carried N bytes from it (so that
 *                 a handshake can pass): the connection then stalls for
 *                 good, as one whose peer vanished does, and the client's
 *                 request times out
 *   pause/resume  hold every byte in both directions / let them go
 *   cut           reset every open connection now
 *   refuse on|off new connections are closed as soon as they arrive
 *   stats         print "connections N bytes N"
 *
 * One thread and poll(): the delay line keeps each piece with the time it
 * may leave, so delay does not cost bandwidth. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define PIECE_MAX (64u << 10)
#define QUEUE_MAX (16u << 20)   /* bytes held per direction before reading stops */
#define MAX_CONNS 256

struct piece {
	struct piece *next;
	uint64_t due_us;
	size_t len, done;
	uint8_t data[];
};

struct pipe_dir {
	int from, to;
	struct piece *head, *tail;
	size_t queued;
	bool eof, shut, delayed;   /* delayed: the server-to-client way */
	uint64_t carried;
};

struct conn {
	struct pipe_dir dir[2];    /* 0: client to server, 1: server to client */
	bool stalled, dead;
};

static struct {
	unsigned delay_ms, jitter_ms;
	uint64_t rate;
	double drop;
	uint64_t drop_after;
	bool paused, refusing;
	double tokens;
	uint64_t tokens_us;
	uint64_t connections, bytes;
} net;

static struct conn *conns[MAX_CONNS];

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static void die(const char *what)
{
	fprintf(stderr, "faultproxy: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void set_nonblocking(int fd)
{
	int one = 1;

	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static int connect_upstream(const char *host, const char *port)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai;
	int fd;

	if (getaddrinfo(host, port, &hints, &ai) != 0)
		return -1;
	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
		close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	return fd;
}

/* ---- the delay line ---- */

static uint64_t due_time(const struct pipe_dir *d)
{
	uint64_t due = now_us();

	if (d->delayed) {
		due += (uint64_t)net.delay_ms * 1000;
		if (net.jitter_ms)
			due += (uint64_t)(random() % (net.jitter_ms * 1000 + 1));
	}
	/* TCP delivers in order: no piece overtakes the one before it. */
	if (d->tail && d->tail->due_us > due)
		due = d->tail->due_us;
	return due;
}

static void take_in(struct conn *c, struct pipe_dir *d)
{
	struct piece *p = malloc(sizeof(*p) + PIECE_MAX);
	ssize_t n;

	if (!p)
		die("out of memory");
	n = read(d->from, p->data, PIECE_MAX);
	if (n <= 0) {
		free(p);
		if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
			d->eof = true;
			if (n < 0)
				c->dead = true;
		}
		return;
	}
	if (d->delayed && net.drop > 0 && d->carried >= net.drop_after &&
	    (double)random() / RAND_MAX < net.drop)
		c->stalled = true;
	d->carried += (uint64_t)n;
	p->next = NULL;
	p->len = (size_t)n;
	p->done = 0;
	p->due_us = due_time(d);
	if (d->tail)
		d->tail->next = p;
	else
		d->head = p;
	d->tail = p;
	d->queued += (size_t)n;
}

static void refill_tokens(void)
{
	uint64_t now = now_us();
	/* A bucket of 10 ms worth: short bursts, an accurate average. */
	double cap = net.rate / 100.0 > 4096 ? net.rate / 100.0 : 4096;

	net.tokens += (double)(now - net.tokens_us) * net.rate / 1e6;
	if (net.tokens > cap)
		net.tokens = cap;
	net.tokens_us = now;
}

static void give_out(struct conn *c, struct pipe_dir *d)
{
	while (d->head && d->head->due_us <= now_us()) {
		struct piece *p = d->head;
		size_t len = p->len - p->done;
		ssize_t n;

		if (net.rate) {
			refill_tokens();
			if (net.tokens < 1)
				return;
			if (len > net.tokens)
				len = (size_t)net.tokens;
		}
		n = write(d->to, p->data + p->done, len);
		if (n < 0) {
			if (errno != EAGAIN && errno != EINTR)
				c->dead = true;
			return;
		}
		if (net.rate)
			net.tokens -= (double)n;
		net.bytes += (uint64_t)n;
		p->done += (size_t)n;
		d->queued -= (size_t)n;
		if (p->done < p->len)
			return;
		d->head = p->next;
		if (!d->head)
			d->tail = NULL;
		free(p);
	}
	if (!d->head && d->eof && !d->shut) {
		shutdown(d->to, SHUT_WR);
		d->shut = true;
	}
}

/* ---- connections ---- */

static void conn_free(struct conn *c, bool reset)
{
	for (int i = 0; i < 2; i++) {
		struct pipe_dir *d = &c->dir[i];
		while (d->head) {
			struct piece *p = d->head;
			d->head = p->next;
			free(p);
		}
	}
	if (reset) {
		struct linger lg = { 1, 0 };
		setsockopt(c->dir[0].from, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		setsockopt(c->dir[1].from, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	}
	close(c->dir[0].from);
	close(c->dir[1].from);
	free(c);
}

static void accept_client(int listener, const char *host, const char *port)
{
	int client = accept4(listener, NULL, NULL, SOCK_CLOEXEC), server;
	struct conn *c;
	int slot;

	if (client < 0)
		return;
	for (slot = 0; slot < MAX_CONNS && conns[slot]; slot++)
		;
	if (net.refusing || slot == MAX_CONNS ||
	    (server = connect_upstream(host, port)) < 0) {
		close(client);
		return;
	}
	c = calloc(1, sizeof(*c));
	if (!c)
		die("out of memory");
	set_nonblocking(client);
	set_nonblocking(server);
	c->dir[0] = (struct pipe_dir){ .from = client, .to = server };
	c->dir[1] = (struct pipe_dir){ .from = server, .to = client, .delayed = true };
	conns[slot] = c;
	net.connections++;
}

/* ---- control ---- */

static void reply(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void reply(int fd, const char *fmt, ...)
{
	char line[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	(void)!write(fd, line, strlen(line));
}

static void command(int fd, char *line)
{
	char *word = strtok(line, " \t\r\n"), *arg = strtok(NULL, " \t\r\n");
	char *arg2 = strtok(NULL, " \t\r\n");
	char *end = NULL;
	double value = arg ? strtod(arg, &end) : 0;
	bool number = arg && end && *end == '\0' && value >= 0;

	if (!word) {
		reply(fd, "error: empty command\n");
	} else if (!strcmp(word, "delay") && number) {
		net.delay_ms = (unsigned)value;
	} else if (!strcmp(word, "jitter") && number) {
		net.jitter_ms = (unsigned)value;
	} else if (!strcmp(word, "rate") && number) {
		net.rate = (uint64_t)value;
		net.tokens = 0;
		net.tokens_us = now_us();
	} else if (!strcmp(word, "drop") && number && value <= 1) {
		net.drop = value;
		net.drop_after = arg2 ? strtoull(arg2, NULL, 10) : 0;
	} else if (!strcmp(word, "pause")) {
		net.paused = true;
	} else if (!strcmp(word, "resume")) {
		net.paused = false;
	} else if (!strcmp(word, "refuse") && arg && (!strcmp(arg, "on") || !strcmp(arg, "off"))) {
		net.refusing = !strcmp(arg, "on");
	} else if (!strcmp(word, "cut")) {
		/* Reset when the loop next sweeps: it may hold pointers now. */
		for (int i = 0; i < MAX_CONNS; i++)
			if (conns[i])
				conns[i]->dead = true;
	} else if (!strcmp(word, "stats")) {
		reply(fd, "connections %llu bytes %llu\n", (unsigned long long)net.connections,
		      (unsigned long long)net.bytes);
		return;
	} else {
		reply(fd, "error: bad command '%s'\n", word);
		return;
	}
	reply(fd, "ok\n");
}

static void serve_control(int listener)
{
	int fd = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
	char line[256];
	size_t len = 0;

	if (fd < 0)
		return;
	/* One short line from a local test script: read it whole. */
	while (len < sizeof(line) - 1) {
		struct pollfd pf = { .fd = fd, .events = POLLIN };
		ssize_t n;

		if (poll(&pf, 1, 2000) <= 0)
			break;
		n = read(fd, line + len, sizeof(line) - 1 - len);
		if (n <= 0)
			break;
		len += (size_t)n;
		if (memchr(line, '\n', len))
			break;
	}
	line[len] = '\0';
	command(fd, line);
	close(fd);
}

static int unix_socket(const char *path, bool listen_on)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0 || strlen(path) >= sizeof(sa.sun_path))
		return -1;
	strcpy(sa.sun_path, path);
	if (listen_on) {
		unlink(path);
		if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 16) < 0)
			return -1;
	} else if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		return -1;
	}
	return fd;
}

/* ---- the loop ---- */

static int poll_timeout(void)
{
	uint64_t now = now_us(), next = UINT64_MAX;

	for (int i = 0; i < MAX_CONNS; i++) {
		struct conn *c = conns[i];
		if (!c || c->stalled || net.paused)
			continue;
		for (int k = 0; k < 2; k++)
			if (c->dir[k].head && c->dir[k].head->due_us < next)
				next = c->dir[k].head->due_us;
	}
	if (next == UINT64_MAX)
		return 1000;
	if (next <= now)
		return net.rate ? 1 : 0;
	return (int)((next - now + 999) / 1000);
}

static void run(int listener, int control, const char *host, const char *port)
{
	struct pollfd pf[2 + 4 * MAX_CONNS];
	struct conn *who[2 + 4 * MAX_CONNS];
	int which[2 + 4 * MAX_CONNS];

	for (;;) {
		nfds_t n = 2;

		pf[0] = (struct pollfd){ .fd = listener, .events = POLLIN };
		pf[1] = (struct pollfd){ .fd = control, .events = POLLIN };
		for (int i = 0; i < MAX_CONNS; i++) {
			struct conn *c = conns[i];
			if (!c)
				continue;
			for (int k = 0; k < 2; k++) {
				struct pipe_dir *d = &c->dir[k];
				short in = !d->eof && d->queued < QUEUE_MAX ? POLLIN : 0;
				short out = d->head && !net.paused && !c->stalled ? POLLOUT : 0;
				/* Only ask for POLLOUT when a piece is due; else it spins. */
				if (out && d->head->due_us > now_us())
					out = 0;
				if (out && net.rate) {
					refill_tokens();
					if (net.tokens < 1)
						out = 0;
				}
				pf[n] = (struct pollfd){ .fd = d->from, .events = in };
				who[n] = c;
				which[n++] = k;
				pf[n] = (struct pollfd){ .fd = d->to, .events = out };
				who[n] = c;
				which[n++] = k + 2;
			}
		}
		if (poll(pf, n, poll_timeout()) < 0 && errno != EINTR)
			die("poll");
		if (pf[0].revents & POLLIN)
			accept_client(listener, host, port);
		if (pf[1].revents & POLLIN)
			serve_control(control);
		for (nfds_t i = 2; i < n; i++) {
			struct conn *c = who[i];
			struct pipe_dir *d = &c->dir[which[i] & 1];

			if (c->dead)
				continue;
			if (which[i] < 2 && (pf[i].revents & (POLLIN | POLLHUP | POLLERR)))
				take_in(c, d);
		}
		for (int i = 0; i < MAX_CONNS; i++) {
			struct conn *c = conns[i];
			if (!c)
				continue;
			if (!net.paused && !c->stalled && !c->dead)
				for (int k = 0; k < 2; k++)
					give_out(c, &c->dir[k]);
			if (c->dead || (c->dir[0].shut && c->dir[1].shut)) {
				conn_free(c, c->dead);
				conns[i] = NULL;
			}
		}
	}
}

static void usage(void)
{
	fprintf(stderr, "usage: faultproxy serve --to HOST:PORT --port-file FILE "
		"--control SOCKET [--delay MS] [--jitter MS] [--rate BPS]\n"
		"       faultproxy ctl SOCKET COMMAND [ARG...]\n");
	exit(2);
}

static int ctl(int argc, char **argv)
{
	char line[256], answer[256];
	ssize_t n;
	int fd;

	if (argc < 4)
		usage();
	fd = unix_socket(argv[2], false);
	if (fd < 0)
		die(argv[2]);
	snprintf(line, sizeof(line), "%s %s %s\n", argv[3], argc > 4 ? argv[4] : "",
		 argc > 5 ? argv[5] : "");
	(void)!write(fd, line, strlen(line));
	n = read(fd, answer, sizeof(answer) - 1);
	close(fd);
	if (n <= 0)
		return 1;
	answer[n] = '\0';
	fputs(answer, stdout);
	return strncmp(answer, "error", 5) == 0;
}

static int serve(int argc, char **argv)
{
	const char *to = NULL, *port_file = NULL, *control_path = NULL;
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t salen = sizeof(sa);
	char host[256], *colon;
	int listener, control;
	FILE *f;

	for (int i = 2; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--to"))
			to = argv[i + 1];
		else if (!strcmp(argv[i], "--port-file"))
			port_file = argv[i + 1];
		else if (!strcmp(argv[i], "--control"))
			control_path = argv[i + 1];
		else if (!strcmp(argv[i], "--delay"))
			net.delay_ms = (unsigned)atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--jitter"))
			net.jitter_ms = (unsigned)atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--rate"))
			net.rate = strtoull(argv[i + 1], NULL, 10);
		else
			usage();
	}
	if (!to || !port_file || !control_path || strlen(to) >= sizeof(host) ||
	    !(colon = strrchr(strcpy(host, to), ':')))
		usage();
	*colon = '\0';
	srandom((unsigned)getpid());
	listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (listener < 0 || bind(listener, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    listen(listener, 64) < 0 || getsockname(listener, (struct sockaddr *)&sa, &salen) < 0)
		die("listen");
	control = unix_socket(control_path, true);
	if (control < 0)
		die(control_path);
	net.tokens_us = now_us();
	f = fopen(port_file, "w");
	if (!f || fprintf(f, "%u\n", ntohs(sa.sin_port)) < 0 || fclose(f) != 0)
		die(port_file);
	run(listener, control, host, colon + 1);
	return 0;
}

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	if (argc >= 2 && !strcmp(argv[1], "serve"))
		return serve(argc, argv);
	if (argc >= 2 && !strcmp(argv[1], "ctl"))
		return ctl(argc, argv);
	usage();
	return 2;
}

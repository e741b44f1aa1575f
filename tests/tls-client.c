/* tls-client: NBD clients over TLS 1.3 that cdisk-serve must get right.
 * Not installed.
 *
 *   tls-client SOCKET EXPORT keyupdate SECONDS [REGION]
 *   tls-client SOCKET EXPORT write-unread [KIB [plain]]
 *
 * SOCKET is cdisk-serve's unix socket (where TLS is the client's choice).
 *
 * keyupdate asks the server for key updates while many requests are in
 * flight, and checks every byte read back: a key update the server takes
 * while one of its workers is encrypting a reply must leave the reply
 * readable.  Writes and reads of 4 KiB to 128 KiB go out in batches of 16
 * in flight, reads never overlapping a write of their batch; a key update
 * (asking the server for its own) goes out in the middle of a batch, five
 * a second (GnuTLS takes 8 a second).  The client works in the export's
 * REGIONth 8 MiB (0 by default), so that several can check one export at
 * once.
 *
 * write-unread, in one thread that blocks, sends eight 1 MiB reads, a key
 * update asking for the server's, then eight 1 MiB writes, and only then
 * reads the replies: the server must go on taking requests while it
 * cannot send (within its limits of requests in hand).  With KIB below
 * 1024, 24 reads and 8 writes of that size: reads small enough that the
 * server's reader answers them itself.  With plain, no TLS at all (and
 * no key update).
 *
 * Prints one line: what was done, or what failed; exits 0 when everything
 * read back is what was written, 1 otherwise. */
#include <gnutls/gnutls.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <errno.h>
#include <fcntl.h>
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

#include "nbd.h"

/* Seconds a send or a reply may take. */
#define IO_TIMEOUT 20
#define SLOT (128u * 1024)      /* the largest request; one per slot */
#define SLOTS 64u
#define BATCH 16
/* GnuTLS takes at most 8 key updates a second from its peer. */
#define KEY_UPDATE_NS 200000000ull
/* Every PAUSE_EVERY-th batch, the replies wait PAUSE_US before they are
 * read: the server's sends stall meanwhile, with key updates coming. */
#define PAUSE_EVERY 4
#define PAUSE_US 20000

static int fd;
static gnutls_session_t tls;
static gnutls_certificate_credentials_t creds;
/* The client's own session takes turns as the server's does (this lock is
 * the client's: the server's side is what is tested). */
static pthread_mutex_t tls_lock = PTHREAD_MUTEX_INITIALIZER;
static bool blocking = true;    /* write-unread's one thread blocks */
static uint8_t *shadow;         /* what the export holds, slot by slot */
static bool *written;
static uint64_t region;          /* where slot 0 is */
static unsigned handles = BATCH;  /* requests in flight at most */

static void put_be16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put_be32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (24 - 8 * i)); }
static void put_be64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (56 - 8 * i)); }
static uint32_t get_be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static uint64_t get_be64(const uint8_t *p) { return (uint64_t)get_be32(p) << 32 | get_be32(p + 4); }

static __attribute__((noreturn, format(printf, 1, 2))) void die(const char *fmt, ...)
{
	va_list ap;

	printf("FAIL: ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	/* Another thread may be in GnuTLS: no exit handlers. */
	fflush(stdout);
	_exit(1);
}

static uint64_t now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

/* Plain bytes before STARTTLS, records after. */
/* Until fd is ready for events; a failure after IO_TIMEOUT. */
static void wait_for(short events)
{
	struct pollfd pfd = { .fd = fd, .events = events };

	if (poll(&pfd, 1, IO_TIMEOUT * 1000) != 1)
		die("%s: no progress for %d s", events == POLLIN ? "receive" : "send", IO_TIMEOUT);
}

/* Plain bytes before STARTTLS, records after.  Without blocking, the
 * client's own lock is never held while it waits for the server. */
static void put(const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t n;

		if (!tls) {
			n = send(fd, p, len, MSG_NOSIGNAL);
		} else {
			pthread_mutex_lock(&tls_lock);
			n = gnutls_record_send(tls, p, len);
			pthread_mutex_unlock(&tls_lock);
		}
		if (tls && n == GNUTLS_E_INTERRUPTED)
			continue;
		if (tls && n == GNUTLS_E_AGAIN && !blocking) {
			wait_for(POLLOUT);      /* then the same arguments again */
			continue;
		}
		if (n == GNUTLS_E_AGAIN || (!tls && n < 0 && errno == EAGAIN))
			die("send: no progress for %d s", IO_TIMEOUT);
		if (n <= 0)
			die("send: %s", tls ? gnutls_strerror((int)n) : "connection closed");
		p += n;
		len -= (size_t)n;
	}
}

static void get(void *buf, size_t len)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t n;

		if (!tls) {
			n = recv(fd, p, len, 0);
		} else {
			pthread_mutex_lock(&tls_lock);
			n = gnutls_record_recv(tls, p, len);
			pthread_mutex_unlock(&tls_lock);
		}
		if (tls && n == GNUTLS_E_INTERRUPTED)
			continue;
		/* Also what a key update gives. */
		if (tls && n == GNUTLS_E_AGAIN) {
			if (!blocking && !gnutls_record_check_pending(tls))
				wait_for(POLLIN);
			continue;
		}
		if (n <= 0)
			die("receive: %s", tls ? gnutls_strerror((int)n) : "connection closed");
		p += n;
		len -= (size_t)n;
	}
}

static void option(uint32_t opt, const void *data, uint32_t len)
{
	uint8_t h[16];

	put_be64(h, NBD_IHAVEOPT);
	put_be32(h + 8, opt);
	put_be32(h + 12, len);
	put(h, sizeof(h));
	if (len)
		put(data, len);
}

/* The type of the option's final reply. */
static uint32_t option_reply(void)
{
	for (;;) {
		uint8_t h[20], skip[1024];
		uint32_t type, len;

		get(h, sizeof(h));
		if (get_be64(h) != NBD_REP_MAGIC)
			die("option reply without its magic");
		type = get_be32(h + 12);
		len = get_be32(h + 16);
		while (len) {
			uint32_t n = len < sizeof(skip) ? len : sizeof(skip);
			get(skip, n);
			len -= n;
		}
		if (type != NBD_REP_INFO)
			return type;
	}
}

static void start(const char *path, const char *export, bool plain)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	uint8_t hello[18], flags[4], go[4 + NBD_MAX_STRING + 2];
	size_t name_len = strlen(export);
	int g;

	snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
		die("cannot connect to '%s'", path);
	struct timeval tv = { .tv_sec = IO_TIMEOUT };
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	get(hello, sizeof(hello));
	put_be32(flags, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
	put(flags, sizeof(flags));
	if (plain)
		goto go;
	option(NBD_OPT_STARTTLS, NULL, 0);
	if (option_reply() != NBD_REP_ACK)
		die("STARTTLS refused");
	if (gnutls_certificate_allocate_credentials(&creds) < 0 ||
	    gnutls_init(&tls, GNUTLS_CLIENT) < 0 ||
	    gnutls_priority_set_direct(tls, "NORMAL:-VERS-ALL:+VERS-TLS1.3", NULL) < 0 ||
	    gnutls_credentials_set(tls, GNUTLS_CRD_CERTIFICATE, creds) < 0)
		die("cannot set up TLS");
	gnutls_transport_set_int(tls, fd);
	do
		g = gnutls_handshake(tls);
	while (g < 0 && !gnutls_error_is_fatal(g));
	if (g < 0)
		die("TLS handshake: %s", gnutls_strerror(g));
	if (!blocking && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0)
		die("cannot make the socket non-blocking");
go:
	if (name_len > NBD_MAX_STRING)
		die("export name too long");
	put_be32(go, (uint32_t)name_len);
	memcpy(go + 4, export, name_len);
	put_be16(go + 4 + name_len, 0);
	option(NBD_OPT_GO, go, (uint32_t)(4 + name_len + 2));
	if (option_reply() != NBD_REP_ACK)
		die("cannot open export '%s'", export);
}

struct req {
	uint16_t type;
	uint32_t slot, len;
};

static void request(uint16_t type, uint64_t handle, uint32_t slot, uint32_t len)
{
	uint8_t h[28];

	put_be32(h, NBD_REQUEST_MAGIC);
	put_be16(h + 4, 0);
	put_be16(h + 6, type);
	put_be64(h + 8, handle);
	put_be64(h + 16, region + (uint64_t)slot * SLOT);
	put_be32(h + 24, len);
	put(h, sizeof(h));
	if (type == NBD_CMD_WRITE)
		put(shadow + (size_t)slot * SLOT, len);
}

static void reply(const struct req *reqs, uint8_t *buf)
{
	uint8_t h[16];
	uint64_t handle;
	const struct req *q;

	get(h, sizeof(h));
	handle = get_be64(h + 8);
	if (get_be32(h) != NBD_SIMPLE_REPLY_MAGIC || handle >= handles)
		die("reply without its magic or with a handle not asked for");
	if (get_be32(h + 4))
		die("request failed: NBD error %u", get_be32(h + 4));
	q = &reqs[handle];
	if (q->type != NBD_CMD_READ)
		return;
	get(buf, q->len);
	if (memcmp(buf, shadow + (size_t)q->slot * SLOT, q->len))
		die("read of slot %u (%u bytes) differs from what was written", q->slot, q->len);
}

struct batch {
	const struct req *reqs;
	uint8_t *buf;
	bool pause;
};

static void *replies(void *arg)
{
	struct batch *b = arg;

	if (b->pause)
		usleep(PAUSE_US);
	for (int i = 0; i < BATCH; i++)
		reply(b->reqs, b->buf);
	return NULL;
}

/* Goodbye, and everything freed (ASan checks the test tools too). */
static int finish(uint8_t *buf)
{
	if (tls) {
		gnutls_bye(tls, GNUTLS_SHUT_WR);
		gnutls_deinit(tls);
		gnutls_certificate_free_credentials(creds);
	}
	close(fd);
	free(buf);
	free(written);
	free(shadow);
	return 0;
}

static int keyupdate(const char *path, const char *export, int seconds, int region_no)
{
	uint64_t end, next_update, requests = 0, bytes = 0, updates = 0;
	struct req reqs[BATCH];
	uint8_t *buf;

	region = (uint64_t)region_no * SLOTS * SLOT;
	srandom((unsigned)getpid());
	blocking = false;
	shadow = calloc(SLOTS, SLOT);
	written = calloc(SLOTS, sizeof(*written));
	buf = malloc(SLOT);
	if (!shadow || !written || !buf)
		die("out of memory");
	start(path, export, false);
	end = now_ns() + (uint64_t)seconds * 1000000000ull;
	next_update = now_ns();
	while (now_ns() < end) {
		bool busy[SLOTS] = { false };
		struct batch b = { reqs, buf, requests / BATCH % PAUSE_EVERY == 0 };
		pthread_t receiver;

		for (int i = 0; i < BATCH; i++) {
			struct req *q = &reqs[i];

			do
				q->slot = (uint32_t)random() % SLOTS;
			while (busy[q->slot]);
			busy[q->slot] = true;
			/* A slot's first write fills it: the export's bytes
			 * before are not known. */
			q->len = !written[q->slot] ? SLOT : 4096u * (1 + (uint32_t)random() % (SLOT / 4096));
			q->type = written[q->slot] && random() % 2 ? NBD_CMD_READ : NBD_CMD_WRITE;
			if (q->type == NBD_CMD_WRITE) {
				for (uint32_t k = 0; k < q->len; k += 4)
					put_be32(shadow + (size_t)q->slot * SLOT + k, (uint32_t)random());
				written[q->slot] = true;
			}
		}
		if (pthread_create(&receiver, NULL, replies, &b))
			die("cannot start a thread");
		for (int i = 0; i < BATCH; i++) {
			struct req *q = &reqs[i];

			request(q->type, (uint64_t)i, q->slot, q->len);
			bytes += q->len;
			if (i == BATCH / 2 && now_ns() >= next_update) {
				int g;

				for (;;) {
					pthread_mutex_lock(&tls_lock);
					g = gnutls_session_key_update(tls, GNUTLS_KU_PEER);
					pthread_mutex_unlock(&tls_lock);
					if (g != GNUTLS_E_AGAIN && g != GNUTLS_E_INTERRUPTED)
						break;
					wait_for(POLLOUT);
				}
				if (g < 0)
					die("key update: %s", gnutls_strerror(g));
				updates++;
				next_update = now_ns() + KEY_UPDATE_NS;
			}
		}
		pthread_join(receiver, NULL);
		requests += BATCH;
	}
	printf("ok: %llu requests, %llu MiB, %llu key updates\n", (unsigned long long)requests,
	       (unsigned long long)(bytes >> 20), (unsigned long long)updates);
	return finish(buf);
}

/* Requests go out before any reply is read, in one thread: reads of
 * slots never written (zeros), then writes of the second half. */
static int write_unread(const char *path, const char *export, uint32_t len, bool plain)
{
	int nreads = len >= (1u << 20) ? BATCH / 2 : 24, n = nreads + 8;
	uint32_t stride = (len + SLOT - 1) / SLOT;
	struct req reqs[32];
	uint8_t *buf;

	handles = (unsigned)n;
	shadow = calloc(2 * SLOTS, SLOT);
	written = calloc(SLOTS, sizeof(*written));
	buf = malloc(len);
	if (!shadow || !written || !buf || stride * (uint32_t)nreads > SLOTS ||
	    stride * (uint32_t)(n - nreads) > SLOTS)
		die("out of memory, or reads too large");
	for (size_t k = SLOTS * SLOT; k < 2 * SLOTS * SLOT; k += 4)
		put_be32(shadow + k, (uint32_t)random());
	start(path, export, plain);
	for (int i = 0; i < n; i++) {
		reqs[i] = (struct req){ i < nreads ? NBD_CMD_READ : NBD_CMD_WRITE,
					i < nreads ? (uint32_t)i * stride
						   : SLOTS + (uint32_t)(i - nreads) * stride,
					len };
		request(reqs[i].type, (uint64_t)i, reqs[i].slot, reqs[i].len);
		/* Once the replies to the reads are stuck, a key update
		 * asking for the server's: it must still take the writes. */
		if (i == nreads - 1 && !plain) {
			int g;

			wait_for(POLLIN);
			usleep(100000);
			g = gnutls_session_key_update(tls, GNUTLS_KU_PEER);
			if (g < 0)
				die("key update: %s", gnutls_strerror(g));
		}
	}
	for (int i = 0; i < n; i++)
		reply(reqs, buf);
	reqs[0] = (struct req){ NBD_CMD_READ, reqs[n - 1].slot, len };
	request(NBD_CMD_READ, 0, reqs[0].slot, reqs[0].len);
	reply(reqs, buf);
	printf("ok: %d requests of %u KiB%s sent before any reply was read\n", n, len >> 10,
	       plain ? "" : " and a key update");
	return finish(buf);
}

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	if (argc >= 5 && argc <= 6 && !strcmp(argv[3], "keyupdate"))
		return keyupdate(argv[1], argv[2], atoi(argv[4]), argc == 6 ? atoi(argv[5]) : 0);
	if (argc >= 4 && argc <= 6 && !strcmp(argv[3], "write-unread") &&
	    (argc < 5 || (atoi(argv[4]) >= 4 && atoi(argv[4]) <= 1024)) &&
	    (argc < 6 || !strcmp(argv[5], "plain")))
		return write_unread(argv[1], argv[2], argc >= 5 ? (uint32_t)atoi(argv[4]) << 10 : 1u << 20,
				    argc == 6);
	fprintf(stderr, "usage: tls-client SOCKET EXPORT keyupdate SECONDS [REGION]\n"
			"       tls-client SOCKET EXPORT write-unread [KIB [plain]]\n");
	return 2;
}

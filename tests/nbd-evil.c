/* nbd-evil: a misbehaving NBD client, to check that cdisk-serve answers
 * bad input with an NBD error or a closed connection, never a crash or a
 * hang.  Not installed.
 *
 *   nbd-evil SOCKET CASE [EXPORT]
 *   nbd-evil SOCKET many EXPORT N
 *   nbd-evil SOCKET flush-steps EXPORT FIRST
 *
 * Prints one line saying what the server did; exits 0 when the server
 * did what the protocol asks for, 1 otherwise.  "many" is no attack but
 * a crowd: N connections open at once, each with its own block written,
 * flushed and read back, all in flight together; then "ready" and the
 * connections stay open until standard input ends.  "flush-steps" writes
 * for the crash tests: step i (FIRST, FIRST + 4, ...) writes four 64 KiB
 * blocks of byte i % 250 + 1 at once, at (i % 64) * 256 KiB on one
 * connection, flushes on another once they are answered, and prints i
 * when the flush is; until the server goes away. */
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "nbd.h"
#include "cdisk.h"

static int fd;

static void put_be16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put_be32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (24 - 8 * i)); }
static void put_be64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (56 - 8 * i)); }
static uint32_t get_be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static uint64_t get_be64(const uint8_t *p) { return (uint64_t)get_be32(p) << 32 | get_be32(p + 4); }

static int fail(const char *msg)
{
	printf("FAIL: %s\n", msg);
	return 1;
}

static int pass(const char *msg)
{
	printf("ok: %s\n", msg);
	return 0;
}

static void send_all(const void *buf, size_t len)
{
	const uint8_t *p = buf;
	while (len) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n <= 0)
			return;
		p += n;
		len -= (size_t)n;
	}
}

/* 0 on success, -1 when the server closed (or timed out after 10 s). */
static int recv_all(void *buf, size_t len)
{
	uint8_t *p = buf;
	while (len) {
		struct pollfd pf = { .fd = fd, .events = POLLIN };
		if (poll(&pf, 1, 10000) <= 0)
			return -2;
		ssize_t n = recv(fd, p, len, 0);
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static bool closed_by_server(void)
{
	uint8_t b;
	struct pollfd pf = { .fd = fd, .events = POLLIN };
	if (poll(&pf, 1, 10000) <= 0)
		return false;
	return recv(fd, &b, 1, 0) <= 0;
}

static void connect_to(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		perror("nbd-evil: connect");
		exit(2);
	}
}

static int greet(void)
{
	uint8_t hello[18], flags[4];
	if (recv_all(hello, sizeof(hello)) < 0 || get_be64(hello) != NBD_MAGIC)
		return -1;
	put_be32(flags, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
	send_all(flags, 4);
	return 0;
}

static void send_option(uint32_t opt, const void *data, uint32_t len)
{
	uint8_t h[16];
	put_be64(h, NBD_IHAVEOPT);
	put_be32(h + 8, opt);
	put_be32(h + 12, len);
	send_all(h, 16);
	if (len)
		send_all(data, len);
}

/* Read option replies up to the final one; returns its type. */
static uint32_t option_result(void)
{
	for (;;) {
		uint8_t h[20];
		uint32_t type, len;
		if (recv_all(h, sizeof(h)) < 0)
			return 0;
		type = get_be32(h + 12);
		len = get_be32(h + 16);
		uint8_t *skip = malloc(len + 1);
		if (recv_all(skip, len) < 0) {
			free(skip);
			return 0;
		}
		free(skip);
		if (type != NBD_REP_INFO && type != NBD_REP_SERVER && type != NBD_REP_META_CONTEXT)
			return type;
	}
}

static uint32_t go(const char *name, bool structured)
{
	uint8_t b[4 + 256 + 2];
	uint32_t n = (uint32_t)strlen(name);
	if (structured) {
		send_option(NBD_OPT_STRUCTURED_REPLY, NULL, 0);
		option_result();
	}
	put_be32(b, n);
	memcpy(b + 4, name, n);
	put_be16(b + 4 + n, 0);
	send_option(NBD_OPT_GO, b, 4 + n + 2);
	return option_result();
}

static void send_request(uint16_t type, uint16_t flags, uint64_t cookie, uint64_t off,
			 uint32_t len)
{
	uint8_t h[28];
	put_be32(h, NBD_REQUEST_MAGIC);
	put_be16(h + 4, flags);
	put_be16(h + 6, type);
	put_be64(h + 8, cookie);
	put_be64(h + 16, off);
	put_be32(h + 24, len);
	send_all(h, 28);
}

/* The error of a simple reply to cookie, or -1 when the server closed. */
static int simple_error(uint64_t cookie)
{
	uint8_t h[16];
	if (recv_all(h, 16) < 0 || get_be32(h) != NBD_SIMPLE_REPLY_MAGIC ||
	    get_be64(h + 8) != cookie)
		return -1;
	return (int)get_be32(h + 4);
}

static int expect_error(const char *what, uint16_t type, uint64_t off, uint32_t len,
			int want)
{
	char msg[160];
	send_request(type, 0, 7, off, len);
	int e = simple_error(7);
	snprintf(msg, sizeof(msg), "%s: error %d (want %d)", what, e, want);
	return e == want ? pass(msg) : fail(msg);
}

/* The crowd's steps, each sent on every connection before any reply is
 * read, so that all of them are in the server at once. */
static int crowd_step(const int *fds, int n, uint16_t type, uint64_t cookie)
{
	uint8_t data[4096], h[16];

	for (int i = 0; i < n; i++) {
		fd = fds[i];
		send_request(type, 0, cookie, type == NBD_CMD_FLUSH ? 0 : (uint64_t)i * 4096,
			     type == NBD_CMD_FLUSH ? 0 : 4096);
		if (type == NBD_CMD_WRITE) {
			memset(data, i % 251 + 1, sizeof(data));
			send_all(data, sizeof(data));
		}
	}
	for (int i = 0; i < n; i++) {
		fd = fds[i];
		if (recv_all(h, 16) < 0 || get_be32(h) != NBD_SIMPLE_REPLY_MAGIC ||
		    get_be64(h + 8) != cookie || get_be32(h + 4) != 0)
			return -1;
		if (type == NBD_CMD_READ &&
		    (recv_all(data, sizeof(data)) < 0 || data[0] != i % 251 + 1 ||
		     memcmp(data, data + 1, sizeof(data) - 1)))
			return -1;
	}
	return 0;
}

static int crowd(const char *path, const char *export, int n)
{
	int *fds = calloc((size_t)n, sizeof(*fds));
	char msg[160], b;

	for (int i = 0; i < n; i++) {
		connect_to(path);
		fds[i] = fd;
		if (greet() < 0 || go(export, false) != NBD_REP_ACK)
			return fail("a connection of the crowd was refused");
	}
	if (crowd_step(fds, n, NBD_CMD_WRITE, 1) < 0 || crowd_step(fds, n, NBD_CMD_FLUSH, 2) < 0 ||
	    crowd_step(fds, n, NBD_CMD_READ, 3) < 0)
		return fail("a write, flush or read of the crowd failed");
	printf("ready\n");
	fflush(stdout);
	while (read(0, &b, 1) > 0)
		;
	for (int i = 0; i < n; i++) {
		fd = fds[i];
		send_request(NBD_CMD_DISC, 0, 4, 0, 0);
		close(fd);
	}
	free(fds);
	snprintf(msg, sizeof(msg), "%d connections wrote, flushed and read back their blocks", n);
	return pass(msg);
}

/* n clients one after another: each connects, opens export, writes and
 * reads back one block, says goodbye and waits for the server to close. */
static int churn(const char *path, const char *export, int n)
{
	static uint8_t data[4096], back[4096];
	uint8_t h[16];
	char msg[120];

	for (int i = 0; i < n; i++) {
		connect_to(path);
		if (greet() < 0 || go(export, false) != NBD_REP_ACK)
			return fail("a connection was refused");
		memset(data, i % 250 + 1, sizeof(data));
		send_request(NBD_CMD_WRITE, 0, 1, (uint64_t)(i % 64) * 4096, sizeof(data));
		send_all(data, sizeof(data));
		if (recv_all(h, 16) < 0 || get_be32(h + 4) != 0)
			return fail("a write failed");
		send_request(NBD_CMD_READ, 0, 2, (uint64_t)(i % 64) * 4096, sizeof(back));
		if (recv_all(h, 16) < 0 || get_be32(h + 4) != 0 || recv_all(back, sizeof(back)) < 0 ||
		    memcmp(data, back, sizeof(data)) != 0)
			return fail("a read did not return what was written");
		send_request(NBD_CMD_DISC, 0, 3, 0, 0);
		if (!closed_by_server())
			return fail("the server kept a connection open after NBD_CMD_DISC");
		close(fd);
	}
	snprintf(msg, sizeof(msg), "%d connections came, wrote, read back and went", n);
	return pass(msg);
}

/* A client that asks for n reads of 1 MiB and never reads a reply: its
 * replies fill the socket and the server's sends to it block.  It holds
 * the connection open until its stdin closes. */
static int deaf(const char *path, const char *export, int n)
{
	char b;

	connect_to(path);
	if (greet() < 0 || go(export, false) != NBD_REP_ACK)
		return fail("refused");
	for (int i = 0; i < n; i++)
		send_request(NBD_CMD_READ, 0, (uint64_t)i, (uint64_t)(i % 8) << 20, 1u << 20);
	printf("sent\n");
	fflush(stdout);
	while (read(0, &b, 1) > 0)
		;
	return pass("held its connection without reading a reply");
}

static int flush_steps(const char *path, const char *export, int first)
{
	static uint8_t data[65536];
	uint8_t h[16];
	int a, b;

	connect_to(path);
	if (greet() < 0 || go(export, false) != NBD_REP_ACK)
		return fail("refused");
	a = fd;
	connect_to(path);
	if (greet() < 0 || go(export, false) != NBD_REP_ACK)
		return fail("refused");
	b = fd;
	for (int i = first;; i += 4) {
		uint64_t area = (uint64_t)(i % 64) * 256 * 1024;
		memset(data, i % 250 + 1, sizeof(data));
		fd = a;
		for (int k = 0; k < 4; k++) {
			send_request(NBD_CMD_WRITE, 0, (uint64_t)k, area + (uint64_t)k * 65536,
				     sizeof(data));
			send_all(data, sizeof(data));
		}
		for (int k = 0; k < 4; k++)
			if (recv_all(h, 16) < 0 || get_be32(h + 4) != 0)
				return 0;
		fd = b;
		send_request(NBD_CMD_FLUSH, 0, 9, 0, 0);
		if (recv_all(h, 16) < 0 || get_be32(h + 4) != 0)
			return 0;
		printf("%d\n", i);
		fflush(stdout);
	}
}

int main(int argc, char **argv)
{
	const char *export = argc > 3 ? argv[3] : "";
	const char *c;

	if (argc < 3) {
		fprintf(stderr, "usage: nbd-evil SOCKET CASE [EXPORT]\n");
		return 2;
	}
	c = argv[2];
	if (!strcmp(c, "many") && argc > 4)
		return crowd(argv[1], export, atoi(argv[4]));
	if (!strcmp(c, "deaf") && argc > 4)
		return deaf(argv[1], export, atoi(argv[4]));
	if (!strcmp(c, "churn") && argc > 4)
		return churn(argv[1], export, atoi(argv[4]));
	if (!strcmp(c, "flush-steps") && argc > 4)
		return flush_steps(argv[1], export, atoi(argv[4]));
	connect_to(argv[1]);

	if (!strcmp(c, "bad-client-flags")) {
		uint8_t hello[18], flags[4] = { 0, 0, 0, 0x80 };
		recv_all(hello, sizeof(hello));
		send_all(flags, 4);
		return closed_by_server() ? pass("closed on unknown client flags")
					  : fail("stayed open on unknown client flags");
	}
	if (greet() < 0)
		return fail("no greeting");
	if (!strcmp(c, "bad-option-magic")) {
		uint8_t junk[16] = "NOTMAGICNOTMAGIC";
		send_all(junk, sizeof(junk));
		return closed_by_server() ? pass("closed on wrong option magic")
					  : fail("stayed open on wrong option magic");
	}
	if (!strcmp(c, "unknown-option")) {
		send_option(1000, "xyz", 3);
		uint32_t t = option_result();
		if (t != NBD_REP_ERR_UNSUP)
			return fail("unknown option not answered with ERR_UNSUP");
		/* The session goes on. */
		return go(export, false) == NBD_REP_ACK ? pass("ERR_UNSUP, then GO works")
							 : fail("GO failed after ERR_UNSUP");
	}
	if (!strcmp(c, "huge-option")) {
		send_option(NBD_OPT_GO, NULL, 0);   /* header only: length 0 */
		option_result();
		uint8_t h[16];
		put_be64(h, NBD_IHAVEOPT);
		put_be32(h + 8, NBD_OPT_GO);
		put_be32(h + 12, 0xfffffff0u);
		send_all(h, 16);
		return option_result() == NBD_REP_ERR_TOO_BIG && closed_by_server() ?
		       pass("ERR_TOO_BIG and closed on a 4 GiB option") :
		       fail("huge option not refused");
	}
	if (!strcmp(c, "malformed-go")) {
		uint8_t b[6];
		put_be32(b, 100);                  /* name longer than the data */
		put_be16(b + 4, 0);
		send_option(NBD_OPT_GO, b, sizeof(b));
		return option_result() == NBD_REP_ERR_INVALID ? pass("ERR_INVALID on malformed GO")
							       : fail("malformed GO accepted");
	}
	if (!strcmp(c, "no-such-export")) {
		return go("no-such-export", false) == NBD_REP_ERR_UNKNOWN ?
		       pass("ERR_UNKNOWN for a missing export") : fail("missing export accepted");
	}
	if (!strcmp(c, "no-such-export-name")) {
		send_option(NBD_OPT_EXPORT_NAME, "nope", 4);
		return closed_by_server() ? pass("closed on EXPORT_NAME of a missing export")
					  : fail("EXPORT_NAME of a missing export kept open");
	}
	if (!strcmp(c, "set-meta-unstructured")) {
		uint8_t b[8] = { 0 };
		send_option(NBD_OPT_SET_META_CONTEXT, b, sizeof(b));
		return option_result() == NBD_REP_ERR_INVALID ?
		       pass("ERR_INVALID: meta context before structured replies") :
		       fail("meta context accepted without structured replies");
	}
	if (!strcmp(c, "starttls-garbage")) {
		/* STARTTLS accepted, then bytes that are no TLS handshake. */
		uint8_t junk[64];
		memset(junk, 'x', sizeof(junk));
		send_option(NBD_OPT_STARTTLS, NULL, 0);
		if (option_result() != NBD_REP_ACK)
			return fail("STARTTLS not acknowledged");
		send_all(junk, sizeof(junk));
		return closed_by_server() ? pass("closed on a broken TLS handshake")
					  : fail("stayed open on a broken TLS handshake");
	}
	if (!strcmp(c, "starttls-with-data")) {
		send_option(NBD_OPT_STARTTLS, "x", 1);
		return option_result() == NBD_REP_ERR_INVALID ?
		       pass("ERR_INVALID: STARTTLS with data") : fail("STARTTLS with data accepted");
	}
	if (!strcmp(c, "starttls-refused")) {
		send_option(NBD_OPT_STARTTLS, NULL, 0);
		if (option_result() != NBD_REP_ERR_POLICY)
			return fail("STARTTLS without certificates not refused by policy");
		return go(export, false) == NBD_REP_ACK ? pass("ERR_POLICY, then GO works")
							 : fail("GO failed after ERR_POLICY");
	}
	if (!strcmp(c, "abort")) {
		send_option(NBD_OPT_ABORT, NULL, 0);
		return option_result() == NBD_REP_ACK && closed_by_server() ?
		       pass("ACK and close on ABORT") : fail("ABORT not honoured");
	}
	if (!strcmp(c, "handshake-stall")) {
		/* Say nothing: the server must give up on its own. */
		struct pollfd pf = { .fd = fd, .events = POLLIN };
		if (poll(&pf, 1, 40000) <= 0)
			return fail("server kept a silent client for 40 s");
		return pass("server closed a silent client");
	}

	if (go(export, false) != NBD_REP_ACK)
		return fail("GO refused");

	if (!strcmp(c, "bad-request-magic")) {
		uint8_t junk[28] = "this is not an NBD request!";
		send_all(junk, sizeof(junk));
		return closed_by_server() ? pass("closed on wrong request magic")
					  : fail("stayed open on wrong request magic");
	}
	if (!strcmp(c, "past-end"))
		return expect_error("read past the end", NBD_CMD_READ, UINT64_MAX - 4095, 4096,
				    NBD_EINVAL) |
		       expect_error("write past the end (no payload read)", NBD_CMD_TRIM,
				    1ull << 50, 4096, NBD_EINVAL);
	if (!strcmp(c, "huge-read"))
		return expect_error("a 4 GiB read", NBD_CMD_READ, 0, 0xfffff000u, NBD_EINVAL);
	if (!strcmp(c, "unaligned"))
		return expect_error("unaligned read", NBD_CMD_READ, 100, 4096, NBD_EINVAL);
	if (!strcmp(c, "unknown-command"))
		return expect_error("unknown command", 77, 0, 4096, NBD_EINVAL);
	if (!strcmp(c, "bad-flags")) {
		send_request(NBD_CMD_READ, 0x4000, 9, 0, 4096);
		int e = simple_error(9);
		return e == NBD_EINVAL ? pass("EINVAL on unknown flags") : fail("unknown flags accepted");
	}
	if (!strcmp(c, "readonly-write")) {
		uint8_t data[4096] = { 0 };
		send_request(NBD_CMD_WRITE, 0, 5, 0, sizeof(data));
		send_all(data, sizeof(data));
		int e = simple_error(5);
		return e == NBD_EPERM ? pass("EPERM writing to a read-only export")
				      : fail("write to a read-only export not refused");
	}
	if (!strcmp(c, "huge-write")) {
		send_request(NBD_CMD_WRITE, 0, 5, 0, 0x80000000u);
		return closed_by_server() ? pass("closed on a 2 GiB write")
					  : fail("stayed open on a 2 GiB write");
	}
	if (!strcmp(c, "disconnect-mid-request")) {
		send_request(NBD_CMD_WRITE, 0, 5, 0, 1 << 20);
		uint8_t half[4096] = { 1 };
		send_all(half, sizeof(half));
		close(fd);
		return pass("disconnected in the middle of a write");
	}
	if (!strcmp(c, "never-read")) {
		/* Ask for 256 MiB of replies and read none, then vanish. */
		for (int i = 0; i < 64; i++)
			send_request(NBD_CMD_READ, 0, (uint64_t)i, 0, 4 << 20);
		sleep(2);
		close(fd);
		return pass("sent 64 reads and read no reply");
	}
	if (!strcmp(c, "block-status-unnegotiated"))
		return expect_error("block status without a context", NBD_CMD_BLOCK_STATUS, 0,
				    4096, NBD_EINVAL);
	if (!strcmp(c, "flush-with-range"))
		return expect_error("flush with a range", NBD_CMD_FLUSH, 4096, 4096, NBD_EINVAL);
	fprintf(stderr, "nbd-evil: unknown case '%s'\n", c);
	return 2;
}

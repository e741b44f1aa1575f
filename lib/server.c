/* cdisk-serve's engine: cdisks exported over NBD (fixed newstyle, as the
 * NBD project documents the protocol).
 *
 * Each connection has one thread: it does the handshake, then reads
 * requests and pushes them, in batches, onto the server's queue
 * (queue.c), whose workers carry them out and reply, in whatever order
 * they finish; replies on a connection go out whole, one at a time.
 * Nothing here starts a thread but that reader; the protocol code below
 * neither knows nor cares which thread runs it.
 * Every export is one shared disk handle, so a flush on any connection
 * covers the writes of all of them: multi-conn is safe and advertised. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "nbd.h"
#include "queue.h"
#include "server.h"

#define HANDSHAKE_TIMEOUT 30
#define SEND_TIMEOUT 60

struct request {
	struct cd_qitem item;   /* first: the queue hands this back */
	struct conn *conn;
	uint16_t flags, type;
	uint64_t cookie, offset;
	uint32_t length;
	uint8_t *data;          /* a write's payload, a read's data (pooled) */
	/* The reply, until it is sent: the data by reference, the rest
	 * copied into small or, when it is bigger, extra. */
	struct request *next_out;
	struct iovec iov[3];
	int niov;
	uint8_t *extra;
	uint8_t small[64];
};

/* Payload buffers are reused: a fresh megabyte from malloc is a fresh
 * mmap, 256 page faults and an munmap per request. */
struct pooled {
	struct pooled *next;
	size_t cap;
};

#define POOL_KEEP 32

/* What one connection may have in the queue or in hand: beyond it, its
 * reader stops reading and the client is slowed by the socket. */
#define CONN_MAX_REQUESTS 32
#define CONN_MAX_BYTES (64u << 20)
/* The reader's buffer: many small requests come in one recv. */
#define RBUF_SIZE (64u * 1024)

struct conn {
	struct cdisk_server *srv;
	int fd;
	pthread_mutex_t pool_lock;
	struct pooled *pool;
	unsigned pooled;
	pthread_t reader;
	struct cd_export *exp;
	gnutls_session_t tls;   /* NULL until STARTTLS */
	char tls_name[256];     /* the verified client certificate's name */
	bool tcp;
	bool has_uid;           /* a unix socket peer, whose uid is known */
	uid_t uid;
	bool structured, meta_alloc;
	char user[300];         /* who, for the queue: "tls:NAME", "uid:N" or "-" */
	bool done;              /* all threads finished; joinable */
	pthread_mutex_t send_lock;  /* the four fields below */
	struct request *out, *out_tail;  /* replies waiting to be sent */
	bool sending;           /* a worker is sending them */
	bool lost;              /* a send failed: replies are dropped */
	uint8_t *rbuf;          /* the reader's, bytes rpos to rlen unparsed */
	size_t rpos, rlen;
	pthread_mutex_t lock;   /* the fields below */
	pthread_cond_t changed; /* a request finished, or closing */
	bool closing;           /* no more requests will be read */
	unsigned inflight;      /* requests queued or in hand */
	size_t inflight_bytes;
	struct conn *next;
};

/* ---- buffers ---- */

static void *buf_get(struct conn *c, size_t len)
{
	struct pooled **pp, *b;

	pthread_mutex_lock(&c->pool_lock);
	for (pp = &c->pool; *pp; pp = &(*pp)->next) {
		if ((*pp)->cap >= len) {
			b = *pp;
			*pp = b->next;
			c->pooled--;
			pthread_mutex_unlock(&c->pool_lock);
			return b + 1;
		}
	}
	pthread_mutex_unlock(&c->pool_lock);
	b = malloc(sizeof(*b) + (len < 65536 ? 65536 : len));
	if (!b)
		return NULL;
	b->cap = len < 65536 ? 65536 : len;
	return b + 1;
}

static void buf_put(struct conn *c, void *p)
{
	struct pooled *b;

	if (!p)
		return;
	b = (struct pooled *)p - 1;
	pthread_mutex_lock(&c->pool_lock);
	if (c->pooled < POOL_KEEP) {
		b->next = c->pool;
		c->pool = b;
		c->pooled++;
		b = NULL;
	}
	pthread_mutex_unlock(&c->pool_lock);
	free(b);
}

static void pool_free(struct conn *c)
{
	while (c->pool) {
		struct pooled *b = c->pool;
		c->pool = b->next;
		free(b);
	}
}

/* ---- wire helpers ---- */

static void put_be16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static void put_be32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (24 - 8 * i));
}

static void put_be64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static uint16_t get_be16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t get_be64(const uint8_t *p)
{
	return (uint64_t)get_be32(p) << 32 | get_be32(p + 4);
}

static int recv_all(int fd, void *buf, size_t len)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t n = recv(fd, p, len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n == 0 ? -ECONNRESET : -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int send_iov(int fd, struct iovec *iov, int n)
{
	struct msghdr msg = { .msg_iov = iov, .msg_iovlen = (size_t)n };

	while (msg.msg_iovlen) {
		ssize_t w = sendmsg(fd, &msg, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -errno;
		while (msg.msg_iovlen && (size_t)w >= msg.msg_iov->iov_len) {
			w -= (ssize_t)msg.msg_iov->iov_len;
			msg.msg_iov++;
			msg.msg_iovlen--;
		}
		if (w) {
			msg.msg_iov->iov_base = (uint8_t *)msg.msg_iov->iov_base + w;
			msg.msg_iov->iov_len -= (size_t)w;
		}
	}
	return 0;
}

/* Every byte of a connection goes through these, in TLS once it is on. */
static int conn_recv(struct conn *c, void *buf, size_t len)
{
	return c->tls ? cd_tls_recv(c->tls, buf, len) : recv_all(c->fd, buf, len);
}

static int conn_send_iov(struct conn *c, struct iovec *iov, int n)
{
	return c->tls ? cd_tls_send_iov(c->tls, iov, n) : send_iov(c->fd, iov, n);
}

static int conn_send(struct conn *c, const void *buf, size_t len)
{
	struct iovec iov = { (void *)buf, len };

	return conn_send_iov(c, &iov, 1);
}

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

static uint16_t export_flags(const struct cd_export *e)
{
	uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
		     NBD_FLAG_CAN_MULTI_CONN | NBD_FLAG_SEND_DF;

	if (e->readonly)
		f |= NBD_FLAG_READ_ONLY;
	else
		f |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES |
		     NBD_FLAG_SEND_FAST_ZERO;
	return f;
}

/* Whether this connection may use e: a verified certificate name in its
 * clients, or a unix peer in its users, when it has either list. */
static bool allowed(const struct conn *c, const struct cd_export *e)
{
	const struct cd_access *a = &e->access;

	if (!a->nclients && !a->nusers)
		return true;
	for (size_t i = 0; c->tls && c->tls_name[0] && i < a->nclients; i++)
		if (!strcmp(a->clients[i], c->tls_name))
			return true;
	for (size_t i = 0; c->has_uid && i < a->nusers; i++)
		if (a->users[i] == c->uid)
			return true;
	return false;
}

/* NBD allows at most 64 KiB as the minimum block size; larger blocks
 * take smaller requests by read-modify-write. */
static uint32_t min_block(const struct cd_export *e)
{
	uint32_t bs = cdisk_block_size(e->disk);
	return bs > 65536 ? 65536 : bs;
}

/* ---- handshake ---- */

static int opt_reply(struct conn *c, uint32_t opt, uint32_t type,
		     const void *data, uint32_t len)
{
	uint8_t h[20];
	struct iovec iov[2] = { { h, sizeof(h) }, { (void *)data, len } };

	put_be64(h, NBD_REP_MAGIC);
	put_be32(h + 8, opt);
	put_be32(h + 12, type);
	put_be32(h + 16, len);
	return conn_send_iov(c, iov, len ? 2 : 1);
}

static int opt_error(struct conn *c, uint32_t opt, uint32_t type, const char *fmt, ...)
	CD_PRINTF(4, 5);

static int opt_error(struct conn *c, uint32_t opt, uint32_t type, const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return opt_reply(c, opt, type, msg, (uint32_t)strlen(msg));
}

static int send_info_export(struct conn *c, uint32_t opt, const struct cd_export *e)
{
	uint8_t b[12];

	put_be16(b, NBD_INFO_EXPORT);
	put_be64(b + 2, cdisk_size(e->disk));
	put_be16(b + 10, export_flags(e));
	return opt_reply(c, opt, NBD_REP_INFO, b, sizeof(b));
}

static int send_info_block_size(struct conn *c, uint32_t opt, const struct cd_export *e)
{
	uint8_t b[14];
	uint32_t pref = cdisk_block_size(e->disk) < 4096 ? 4096 : cdisk_block_size(e->disk);

	put_be16(b, NBD_INFO_BLOCK_SIZE);
	put_be32(b + 2, min_block(e));
	put_be32(b + 6, pref);
	put_be32(b + 10, NBD_MAX_PAYLOAD);
	return opt_reply(c, opt, NBD_REP_INFO, b, sizeof(b));
}

static int send_info_name(struct conn *c, uint32_t opt, const struct cd_export *e)
{
	size_t n = strlen(e->name);
	uint8_t *b = malloc(2 + n);
	int r;

	if (!b)
		return -ENOMEM;
	put_be16(b, NBD_INFO_NAME);
	memcpy(b + 2, e->name, n);
	r = opt_reply(c, opt, NBD_REP_INFO, b, (uint32_t)(2 + n));
	free(b);
	return r;
}

/* A name (u32 length, bytes) inside an option's payload. */
static bool take_string(const uint8_t **p, const uint8_t *end, char *out, size_t max)
{
	uint32_t n;

	if (end - *p < 4)
		return false;
	n = get_be32(*p);
	*p += 4;
	if (n > (uint64_t)(end - *p) || n >= max || memchr(*p, 0, n))
		return false;
	memcpy(out, *p, n);
	out[n] = 0;
	*p += n;
	return true;
}

/* NBD_OPT_INFO and NBD_OPT_GO.  Returns 1 when GO succeeded. */
static int opt_info_go(struct conn *c, uint32_t opt, const uint8_t *p, uint32_t len)
{
	const uint8_t *end = p + len;
	char name[NBD_MAX_STRING + 1];
	struct cd_export *e;
	bool want_name = false;
	uint16_t nreq;
	int r;

	if (!take_string(&p, end, name, sizeof(name)) || end - p < 2)
		return opt_error(c, opt, NBD_REP_ERR_INVALID, "malformed request");
	nreq = get_be16(p);
	p += 2;
	if ((size_t)(end - p) != (size_t)nreq * 2)
		return opt_error(c, opt, NBD_REP_ERR_INVALID, "malformed request");
	for (uint16_t i = 0; i < nreq; i++)
		if (get_be16(p + 2 * i) == NBD_INFO_NAME)
			want_name = true;
	e = cd_server_find_export(c->srv, name);
	if (!e)
		return opt_error(c, opt, NBD_REP_ERR_UNKNOWN, "no export named '%.200s'", name);
	if (!allowed(c, e))
		return opt_error(c, opt, NBD_REP_ERR_POLICY, "export '%.200s' is not open "
				 "to this client", name);
	/* Block sizes are always sent: our minimum is the disk's block. */
	r = send_info_export(c, opt, e);
	if (r == 0)
		r = send_info_block_size(c, opt, e);
	if (r == 0 && want_name)
		r = send_info_name(c, opt, e);
	if (r == 0)
		r = opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
	if (r < 0 || opt == NBD_OPT_INFO)
		return r;
	c->exp = e;
	return 1;
}

static int opt_list(struct conn *c, uint32_t len)
{
	if (len)
		return opt_error(c, NBD_OPT_LIST, NBD_REP_ERR_INVALID, "LIST takes no data");
	for (size_t i = 0; i < c->srv->nexports; i++) {
		const char *name = c->srv->exports[i].name;
		size_t n = strlen(name);
		uint8_t *b;
		int r;

		if (!allowed(c, &c->srv->exports[i]))
			continue;
		b = malloc(4 + n);
		if (!b)
			return -ENOMEM;
		put_be32(b, (uint32_t)n);
		memcpy(b + 4, name, n);
		r = opt_reply(c, NBD_OPT_LIST, NBD_REP_SERVER, b, (uint32_t)(4 + n));
		free(b);
		if (r < 0)
			return r;
	}
	return opt_reply(c, NBD_OPT_LIST, NBD_REP_ACK, NULL, 0);
}

static int send_meta_context(struct conn *c, uint32_t opt)
{
	uint8_t b[4 + sizeof(NBD_META_BASE_ALLOCATION) - 1];

	put_be32(b, NBD_META_ID_ALLOCATION);
	memcpy(b + 4, NBD_META_BASE_ALLOCATION, sizeof(NBD_META_BASE_ALLOCATION) - 1);
	return opt_reply(c, opt, NBD_REP_META_CONTEXT, b, sizeof(b));
}

/* NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT: the one context
 * we have is base:allocation. */
static int opt_meta_context(struct conn *c, uint32_t opt, const uint8_t *p, uint32_t len)
{
	const uint8_t *end = p + len;
	char name[NBD_MAX_STRING + 1], query[NBD_MAX_STRING + 1];
	struct cd_export *e;
	bool found = false;
	uint32_t nq;
	int r = 0;

	if (opt == NBD_OPT_SET_META_CONTEXT && !c->structured)
		return opt_error(c, opt, NBD_REP_ERR_INVALID,
				 "structured replies must be negotiated first");
	if (!take_string(&p, end, name, sizeof(name)) || end - p < 4)
		return opt_error(c, opt, NBD_REP_ERR_INVALID, "malformed request");
	nq = get_be32(p);
	p += 4;
	e = cd_server_find_export(c->srv, name);
	if (!e)
		return opt_error(c, opt, NBD_REP_ERR_UNKNOWN, "no export named '%.200s'", name);
	if (!allowed(c, e))
		return opt_error(c, opt, NBD_REP_ERR_POLICY, "export '%.200s' is not open "
				 "to this client", name);
	if (nq == 0 && opt == NBD_OPT_LIST_META_CONTEXT)
		found = true;
	for (uint32_t i = 0; i < nq; i++) {
		if (!take_string(&p, end, query, sizeof(query)))
			return opt_error(c, opt, NBD_REP_ERR_INVALID, "malformed request");
		if (!strcmp(query, NBD_META_BASE_ALLOCATION) ||
		    (opt == NBD_OPT_LIST_META_CONTEXT && !strcmp(query, "base:")))
			found = true;
	}
	if (p != end)
		return opt_error(c, opt, NBD_REP_ERR_INVALID, "malformed request");
	if (opt == NBD_OPT_SET_META_CONTEXT)
		c->meta_alloc = found;
	if (found)
		r = send_meta_context(c, opt);
	return r < 0 ? r : opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
}

static int opt_export_name(struct conn *c, const uint8_t *p, uint32_t len,
			   bool no_zeroes)
{
	char name[NBD_MAX_STRING + 1];
	uint8_t b[10 + 124] = { 0 };

	if (len > NBD_MAX_STRING || memchr(p, 0, len))
		return -EINVAL;
	memcpy(name, p, len);
	name[len] = 0;
	/* This old option has no way to say no: the connection just ends. */
	c->exp = cd_server_find_export(c->srv, name);
	if (!c->exp)
		return -ENOENT;
	if (!allowed(c, c->exp)) {
		c->exp = NULL;
		return -EACCES;
	}
	put_be64(b, cdisk_size(c->exp->disk));
	put_be16(b + 8, export_flags(c->exp));
	return conn_send(c, b, no_zeroes ? 10 : sizeof(b)) < 0 ? -EIO : 1;
}

/* "127.0.0.1:5555" for TCP, "on a unix socket" otherwise: for the log. */
static const char *peer_name(int fd, char *out, size_t len)
{
	struct sockaddr_storage sa;
	socklen_t salen = sizeof(sa);
	char host[48], port[8];

	if (getpeername(fd, (struct sockaddr *)&sa, &salen) < 0 ||
	    (sa.ss_family != AF_INET && sa.ss_family != AF_INET6) ||
	    getnameinfo((struct sockaddr *)&sa, salen, host, sizeof(host), port, sizeof(port),
			NI_NUMERICHOST | NI_NUMERICSERV) != 0)
		return "on a unix socket";
	snprintf(out, len, "%s:%s", host, port);
	return out;
}

static bool tls_missing(const struct conn *c)
{
	return c->srv->tls && c->srv->tls_mode == CDISK_TLS_REQUIRE && c->tcp && !c->tls;
}

/* After the ACK the TLS handshake; whatever was agreed before is
 * forgotten, as the protocol asks. */
static int opt_starttls(struct conn *c, uint32_t len)
{
	char why[256];
	int r;

	if (!c->srv->tls || c->srv->tls_mode == CDISK_TLS_OFF)
		return opt_error(c, NBD_OPT_STARTTLS, NBD_REP_ERR_POLICY,
				 "TLS is not offered on this socket");
	if (len)
		return opt_error(c, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID, "takes no data");
	if (c->tls)
		return opt_error(c, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID, "TLS is on already");
	r = opt_reply(c, NBD_OPT_STARTTLS, NBD_REP_ACK, NULL, 0);
	if (r != 0)
		return r;
	r = cd_tls_accept(c->srv->tls, c->fd, &c->tls, c->tls_name, sizeof(c->tls_name),
			  why, sizeof(why));
	if (r < 0) {
		char peer[64];
		cd_log(c->srv->ctx, CDISK_LOG_WARNING, "client %s: %s",
		       peer_name(c->fd, peer, sizeof(peer)), why);
		return r;
	}
	c->structured = false;
	c->meta_alloc = false;
	return 0;
}

/* Returns 1 when the connection enters transmission, 0 or < 0 to close. */
static int handshake(struct conn *c)
{
	uint8_t hello[18], cf[4], oh[16];
	uint32_t client_flags;
	int r;

	put_be64(hello, NBD_MAGIC);
	put_be64(hello + 8, NBD_IHAVEOPT);
	put_be16(hello + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
	if (conn_send(c, hello, sizeof(hello)) < 0 || conn_recv(c, cf, 4) < 0)
		return -EIO;
	client_flags = get_be32(cf);
	if (!(client_flags & NBD_FLAG_C_FIXED_NEWSTYLE) ||
	    client_flags & ~(uint32_t)(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES))
		return -EPROTO;
	for (;;) {
		uint32_t opt, len;
		uint8_t *data = NULL;

		if (conn_recv(c, oh, sizeof(oh)) < 0)
			return -EIO;
		if (get_be64(oh) != NBD_IHAVEOPT)
			return -EPROTO;
		opt = get_be32(oh + 8);
		len = get_be32(oh + 12);
		if (len > NBD_MAX_OPTION) {
			/* Refuse without reading a huge payload we would only drop. */
			opt_error(c, opt, NBD_REP_ERR_TOO_BIG, "option too long");
			return -EPROTO;
		}
		/* Never NULL, even empty: the parsers do pointer arithmetic on it. */
		data = malloc(len + 1);
		if (!data || (len && conn_recv(c, data, len) < 0)) {
			free(data);
			return -EIO;
		}
		if (tls_missing(c) && opt != NBD_OPT_STARTTLS && opt != NBD_OPT_ABORT) {
			free(data);
			/* EXPORT_NAME cannot be refused: the connection just ends. */
			if (opt == NBD_OPT_EXPORT_NAME)
				return -EACCES;
			r = opt_error(c, opt, NBD_REP_ERR_TLS_REQD, "TLS is required on "
				      "this socket");
			if (r != 0)
				return r;
			continue;
		}
		switch (opt) {
		case NBD_OPT_EXPORT_NAME:
			r = opt_export_name(c, data, len, client_flags & NBD_FLAG_C_NO_ZEROES);
			free(data);
			return r;
		case NBD_OPT_ABORT:
			opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
			free(data);
			return 0;
		case NBD_OPT_LIST:
			r = opt_list(c, len);
			break;
		case NBD_OPT_INFO:
		case NBD_OPT_GO:
			r = opt_info_go(c, opt, data, len);
			break;
		case NBD_OPT_STRUCTURED_REPLY:
			if (len) {
				r = opt_error(c, opt, NBD_REP_ERR_INVALID, "takes no data");
				break;
			}
			c->structured = true;
			r = opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
			break;
		case NBD_OPT_LIST_META_CONTEXT:
		case NBD_OPT_SET_META_CONTEXT:
			r = opt_meta_context(c, opt, data, len);
			break;
		case NBD_OPT_STARTTLS:
			r = opt_starttls(c, len);
			break;
		default:
			r = opt_error(c, opt, NBD_REP_ERR_UNSUP, "option %u is not supported", opt);
			break;
		}
		free(data);
		if (r != 0)
			return r;
	}
}

/* ---- transmission ---- */

static uint32_t nbd_errno(int err)
{
	switch (-err) {
	case 0:
		return 0;
	case EPERM:
	case EACCES:
	case EROFS:
		return NBD_EPERM;
	case EINVAL:
	case ERANGE:
		return NBD_EINVAL;
	case ENOSPC:
	case EFBIG:
		return NBD_ENOSPC;
	case ENOMEM:
		return NBD_ENOMEM;
	case ENOTSUP:
		return NBD_ENOTSUP;
	case ESHUTDOWN:
		return NBD_ESHUTDOWN;
	case EOVERFLOW:
		return NBD_EOVERFLOW;
	default:
		return NBD_EIO;
	}
}

/* ---- replies ----
 *
 * Replies are whole messages, one sender at a time on a connection.  A
 * worker that finds another sending leaves its reply to it and goes on
 * to other work: a client that reads no replies holds one worker, not
 * all of those with a reply for it; and replies that pile up meanwhile
 * leave in one sendmsg (or one corked TLS write). */

#define SEND_BATCH 64   /* replies in one sendmsg, at most 3 iovecs each */

static size_t weight(const struct request *q);

static void request_free(struct conn *c, struct request *q)
{
	buf_put(c, q->data);
	free(q->extra);
	free(q);
}

/* Requests are done: the reader may read more, or finish.  The last
 * thing a worker does with the connection, which may go right after. */
static void requests_done(struct conn *c, unsigned n, size_t bytes, bool lost)
{
	pthread_mutex_lock(&c->lock);
	if (lost)
		c->closing = true;
	c->inflight -= n;
	c->inflight_bytes -= bytes;
	pthread_cond_broadcast(&c->changed);
	pthread_mutex_unlock(&c->lock);
}

static int send_list(struct conn *c, struct request *list)
{
	struct iovec iov[SEND_BATCH * 3];
	int n = 0, k = 0, r = 0;

	for (struct request *q = list; q && r == 0; q = q->next_out) {
		memcpy(iov + n, q->iov, (size_t)q->niov * sizeof(*iov));
		n += q->niov;
		if (++k == SEND_BATCH || !q->next_out) {
			r = conn_send_iov(c, iov, n);
			n = k = 0;
		}
	}
	return r;
}

/* Under c->send_lock, which it releases: send what waits until nothing
 * does. */
static void send_out(struct conn *c)
{
	unsigned n = 0;
	size_t bytes = 0;
	bool lost = false;

	c->sending = true;
	while (c->out) {
		struct request *list = c->out;
		c->out = c->out_tail = NULL;
		lost = c->lost;
		pthread_mutex_unlock(&c->send_lock);
		if (!lost && send_list(c, list) < 0) {
			lost = true;
			/* The reader, in recv, learns it at once. */
			shutdown(c->fd, SHUT_RDWR);
		}
		while (list) {
			struct request *next = list->next_out;
			n++;
			bytes += weight(list);
			request_free(c, list);
			list = next;
		}
		pthread_mutex_lock(&c->send_lock);
		if (lost)
			c->lost = true;
	}
	c->sending = false;
	pthread_mutex_unlock(&c->send_lock);
	requests_done(c, n, bytes, lost);
}

/* Takes q: its reply, iov (q->data by reference, the rest copied), is
 * sent by this worker or by the one sending already. */
static int send_reply(struct conn *c, struct request *q, struct iovec *iov, int n)
{
	size_t copy = 0;
	uint8_t *p;

	for (int i = 0; i < n; i++)
		if (!q->data || iov[i].iov_base != q->data)
			copy += iov[i].iov_len;
	p = copy <= sizeof(q->small) ? q->small : (q->extra = malloc(copy));
	for (int i = 0; i < n && p; i++) {
		q->iov[i] = iov[i];
		if (q->data && iov[i].iov_base == q->data)
			continue;
		memcpy(p, iov[i].iov_base, iov[i].iov_len);
		q->iov[i].iov_base = p;
		p += iov[i].iov_len;
	}
	q->niov = n;
	q->next_out = NULL;
	pthread_mutex_lock(&c->send_lock);
	if (!p)
		c->lost = true;
	if (c->out_tail)
		c->out_tail->next_out = q;
	else
		c->out = q;
	c->out_tail = q;
	if (c->sending) {
		pthread_mutex_unlock(&c->send_lock);
		return 0;
	}
	send_out(c);
	return 0;
}

static int reply_simple(struct conn *c, struct request *q, uint32_t err,
			const void *data, size_t len)
{
	uint8_t h[16];
	struct iovec iov[2] = { { h, sizeof(h) }, { (void *)data, len } };

	put_be32(h, NBD_SIMPLE_REPLY_MAGIC);
	put_be32(h + 4, err);
	put_be64(h + 8, q->cookie);
	return send_reply(c, q, iov, len && !err ? 2 : 1);
}

static int reply_chunk(struct conn *c, struct request *q, uint16_t type,
		       const void *pre, size_t prelen, const void *data, size_t len)
{
	uint8_t h[20];
	struct iovec iov[3] = { { h, sizeof(h) }, { (void *)pre, prelen },
				{ (void *)data, len } };

	put_be32(h, NBD_STRUCTURED_REPLY_MAGIC);
	put_be16(h + 4, NBD_REPLY_FLAG_DONE);
	put_be16(h + 6, type);
	put_be64(h + 8, q->cookie);
	put_be32(h + 16, (uint32_t)(prelen + len));
	return send_reply(c, q, iov, len ? 3 : prelen ? 2 : 1);
}

static int reply_error(struct conn *c, struct request *q, int err,
		       const char *msg)
{
	uint8_t pre[6];
	size_t n = msg ? strnlen(msg, 1024) : 0;

	if (!c->structured)
		return reply_simple(c, q, nbd_errno(err), NULL, 0);
	put_be32(pre, nbd_errno(err));
	put_be16(pre + 4, (uint16_t)n);
	return reply_chunk(c, q, NBD_REPLY_TYPE_ERROR, pre, sizeof(pre), msg, n);
}

static int reply_ok(struct conn *c, struct request *q)
{
	return c->structured ? reply_chunk(c, q, NBD_REPLY_TYPE_NONE, NULL, 0, NULL, 0)
			     : reply_simple(c, q, 0, NULL, 0);
}

static bool aligned(const struct cdisk *d, uint64_t off, uint64_t len)
{
	return ((off | len) & (cdisk_block_size(d) - 1)) == 0;
}

/* The data leaves from the buffer it was read into: the request keeps
 * it until its reply is sent. */
static int do_read(struct conn *c, struct request *q)
{
	struct cdisk *d = c->exp->disk;
	uint8_t *buf, pre[8];
	int r;

	if (q->length > NBD_MAX_PAYLOAD)
		return reply_error(c, q, -EINVAL, "read larger than 32 MiB");
	buf = q->data = buf_get(c, q->length);
	if (!buf)
		return reply_error(c, q, -ENOMEM, "out of memory");
	r = aligned(d, q->offset, q->length) ? cdisk_pread(d, buf, q->length, q->offset)
					     : cdisk_pread_unaligned(d, buf, q->length, q->offset);
	if (r < 0)
		return reply_error(c, q, r, cdisk_ctx_error(c->srv->ctx));
	if (c->structured) {
		put_be64(pre, q->offset);
		return reply_chunk(c, q, NBD_REPLY_TYPE_OFFSET_DATA, pre, 8, buf, q->length);
	}
	return reply_simple(c, q, 0, buf, q->length);
}

static int write_zeroes_nohole(struct cdisk *d, uint64_t off, uint32_t len)
{
	size_t chunk = len < (1u << 20) ? len : (1u << 20);
	uint8_t *zeros = calloc(1, chunk ? chunk : 1);
	int r = zeros ? 0 : -ENOMEM;

	for (uint64_t done = 0; r == 0 && done < len; done += chunk) {
		size_t n = len - done < chunk ? (size_t)(len - done) : chunk;
		r = cdisk_pwrite_unaligned(d, zeros, n, off + done);
	}
	free(zeros);
	return r;
}

static int do_trim(struct cdisk *d, uint64_t off, uint32_t len)
{
	/* Trim is advice: only whole blocks are released. */
	uint64_t bs = cdisk_block_size(d);
	uint64_t first = cd_round_up(off, bs), end = (off + len) / bs * bs;

	return end > first ? cdisk_discard(d, (size_t)(end - first), first) : 0;
}

static int do_block_status(struct conn *c, struct request *q)
{
	size_t max = q->flags & NBD_CMD_FLAG_REQ_ONE ? 1 : 512, n = 0;
	struct cdisk_extent ext[512];
	uint8_t *b;
	int r;

	if (!c->meta_alloc)
		return reply_error(c, q, -EINVAL, "no metadata context was negotiated");
	r = cdisk_block_status(c->exp->disk, q->offset, q->length, ext, max, &n);
	if (r < 0)
		return reply_error(c, q, r, cdisk_ctx_error(c->srv->ctx));
	b = malloc(4 + 8 * n);
	if (!b)
		return reply_error(c, q, -ENOMEM, "out of memory");
	put_be32(b, NBD_META_ID_ALLOCATION);
	for (size_t i = 0; i < n; i++) {
		uint64_t l = ext[i].length > 0xfffff000u ? 0xfffff000u : ext[i].length;
		put_be32(b + 4 + 8 * i, (uint32_t)l);
		put_be32(b + 8 + 8 * i, ext[i].zero ? NBD_STATE_HOLE | NBD_STATE_ZERO : 0);
	}
	r = reply_chunk(c, q, NBD_REPLY_TYPE_BLOCK_STATUS, b, 4 + 8 * n, NULL, 0);
	free(b);
	return r;
}

/* Checks every request must pass, in the protocol's terms. */
static int validate(struct conn *c, const struct request *q, const char **why)
{
	struct cd_export *e = c->exp;
	uint16_t allowed = NBD_CMD_FLAG_FUA;

	switch (q->type) {
	case NBD_CMD_READ:
		allowed |= NBD_CMD_FLAG_DF;
		break;
	case NBD_CMD_WRITE_ZEROES:
		allowed |= NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
		break;
	case NBD_CMD_BLOCK_STATUS:
		allowed |= NBD_CMD_FLAG_REQ_ONE;
		break;
	case NBD_CMD_WRITE:
	case NBD_CMD_TRIM:
	case NBD_CMD_FLUSH:
		break;
	default:
		*why = "unknown command";
		return -EINVAL;
	}
	if (q->flags & ~allowed) {
		*why = "unknown or misplaced flags";
		return -EINVAL;
	}
	if (q->type == NBD_CMD_FLUSH)
		return q->offset || q->length ? (*why = "flush takes no range", -EINVAL) : 0;
	if (q->length == 0 || q->offset > cdisk_size(e->disk) ||
	    q->length > cdisk_size(e->disk) - q->offset) {
		*why = "request outside the export";
		return q->type == NBD_CMD_WRITE || q->type == NBD_CMD_WRITE_ZEROES ?
		       -ENOSPC : -EINVAL;
	}
	if (e->readonly && q->type != NBD_CMD_READ && q->type != NBD_CMD_BLOCK_STATUS) {
		*why = "the export is read-only";
		return -EPERM;
	}
	if ((q->offset | q->length) & (min_block(e) - 1) && q->type != NBD_CMD_TRIM) {
		*why = "request not aligned to the minimum block size";
		return -EINVAL;
	}
	return 0;
}

static int execute(struct conn *c, struct request *q)
{
	struct cdisk *d = c->exp->disk;
	const char *why = NULL;
	int r = validate(c, q, &why);

	if (r < 0)
		return reply_error(c, q, r, why);
	switch (q->type) {
	case NBD_CMD_READ:
		return do_read(c, q);
	case NBD_CMD_BLOCK_STATUS:
		return do_block_status(c, q);
	case NBD_CMD_WRITE:
		r = aligned(d, q->offset, q->length) ?
		    cdisk_pwrite(d, q->data, q->length, q->offset) :
		    cdisk_pwrite_unaligned(d, q->data, q->length, q->offset);
		break;
	case NBD_CMD_WRITE_ZEROES:
		r = q->flags & NBD_CMD_FLAG_NO_HOLE ? write_zeroes_nohole(d, q->offset, q->length)
						    : cdisk_write_zeroes_unaligned(d, q->length,
										  q->offset);
		break;
	case NBD_CMD_TRIM:
		r = do_trim(d, q->offset, q->length);
		break;
	case NBD_CMD_FLUSH:
		r = cdisk_flush(d);
		break;
	}
	if (r == 0 && q->flags & NBD_CMD_FLAG_FUA)
		r = cdisk_flush(d);
	__atomic_add_fetch(&c->exp->requests, 1, __ATOMIC_RELAXED);
	if (r < 0)
		return reply_error(c, q, r, cdisk_ctx_error(c->srv->ctx));
	return reply_ok(c, q);
}

/* ---- reading requests ---- */

/* Some bytes, at least one, as many as have come (up to len). */
static ssize_t conn_recv_some(struct conn *c, void *buf, size_t len)
{
	for (;;) {
		ssize_t n = c->tls ? gnutls_record_recv(c->tls, buf, len) : recv(c->fd, buf, len, 0);
		if (c->tls ? n == GNUTLS_E_INTERRUPTED || n == GNUTLS_E_AGAIN
			   : n < 0 && errno == EINTR)
			continue;
		return n > 0 ? n : -1;
	}
}

/* At least want unparsed bytes in the reader's buffer. */
static int fill(struct conn *c, size_t want)
{
	if (c->rpos) {
		memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
		c->rlen -= c->rpos;
		c->rpos = 0;
	}
	while (c->rlen < want) {
		ssize_t n = conn_recv_some(c, c->rbuf + c->rlen, RBUF_SIZE - c->rlen);
		if (n < 0)
			return -1;
		c->rlen += (size_t)n;
	}
	return 0;
}

/* A write's payload: what the buffer holds, the rest straight from the
 * socket into the request's own buffer. */
static int take_payload(struct conn *c, uint8_t *dst, size_t len)
{
	size_t have = c->rlen - c->rpos;

	if (have > len)
		have = len;
	memcpy(dst, c->rbuf + c->rpos, have);
	c->rpos += have;
	return have < len ? conn_recv(c, dst + have, len - have) : 0;
}

/* Parse one request, payload included.  Returns 1 for a request; 0 when
 * !block and the buffer holds no whole header; -1 when the client said
 * goodbye or the stream cannot be followed. */
static int parse_request(struct conn *c, struct request *q, bool block)
{
	const uint8_t *h;

	if (c->rlen - c->rpos < 28 && (!block || fill(c, 28) < 0))
		return block ? -1 : 0;
	h = c->rbuf + c->rpos;
	if (get_be32(h) != NBD_REQUEST_MAGIC)
		return -1;
	q->flags = get_be16(h + 4);
	q->type = get_be16(h + 6);
	q->cookie = get_be64(h + 8);
	q->offset = get_be64(h + 16);
	q->length = get_be32(h + 24);
	q->data = NULL;
	q->extra = NULL;
	c->rpos += 28;
	if (q->type == NBD_CMD_DISC)
		return -1;
	if (q->type == NBD_CMD_WRITE) {
		/* A payload we will not hold: the stream is lost. */
		if (q->length > NBD_MAX_PAYLOAD || !(q->data = buf_get(c, q->length)) ||
		    take_payload(c, q->data, q->length) < 0) {
			buf_put(c, q->data);
			return -1;
		}
	}
	return 1;
}

static enum cd_req_class class_of(uint16_t type)
{
	return type == NBD_CMD_READ || type == NBD_CMD_BLOCK_STATUS ? CD_REQ_READ
								     : CD_REQ_WRITE;
}

/* What a request holds in memory while it waits: a write's payload, or
 * the buffer a read will fill. */
static size_t weight(const struct request *q)
{
	return q->type == NBD_CMD_WRITE || q->type == NBD_CMD_READ ? q->length : 0;
}

/* The queue's worker: carry it out and reply (which takes q). */
static void run_request(struct cd_qitem *it)
{
	struct request *q = (struct request *)it;

	execute(q->conn, q);
}

/* Wait until the connection may have more in the queue; how many more
 * requests, 0 when it is closing. */
static unsigned room(struct conn *c)
{
	unsigned n;

	pthread_mutex_lock(&c->lock);
	while (!c->closing && (c->inflight >= CONN_MAX_REQUESTS ||
			       c->inflight_bytes >= CONN_MAX_BYTES))
		pthread_cond_wait(&c->changed, &c->lock);
	n = c->closing ? 0 : CONN_MAX_REQUESTS - c->inflight;
	pthread_mutex_unlock(&c->lock);
	return n;
}

static void account(struct conn *c, struct cd_qbatch *b)
{
	size_t bytes = 0;

	for (struct cd_qitem *it = b->head; it; it = it->next)
		bytes += weight((struct request *)it);
	pthread_mutex_lock(&c->lock);
	c->inflight += b->n;
	c->inflight_bytes += bytes;
	pthread_mutex_unlock(&c->lock);
}

/* The reader: every whole request the buffer holds goes to the queue in
 * one push (one lock, few wake-ups); then it waits for more bytes.  A
 * client that sends faster than the disk takes, or reads no replies, is
 * held to CONN_MAX_REQUESTS in hand and slowed by the socket. */
static void read_requests(struct conn *c, struct cd_queue *queue)
{
	struct cd_qbatch b = { 0 };
	unsigned n;
	int r = 1;

	while (r >= 0 && (n = room(c)) > 0) {
		while (b.n < n) {
			struct request *q = malloc(sizeof(*q));
			r = q ? parse_request(c, q, b.n == 0) : -1;
			if (r <= 0) {
				free(q);
				break;
			}
			q->conn = c;
			q->item.cls = class_of(q->type);
			q->item.exp = c->exp;
			q->item.user = c->user;
			q->item.run = run_request;
			cd_qbatch_add(&b, &q->item);
		}
		account(c, &b);
		cd_queue_push(queue, &b);
	}
	pthread_mutex_lock(&c->lock);
	c->closing = true;
	while (c->inflight)
		pthread_cond_wait(&c->changed, &c->lock);
	pthread_mutex_unlock(&c->lock);
}

static void name_user(struct conn *c)
{
	if (c->tls && c->tls_name[0])
		snprintf(c->user, sizeof(c->user), "tls:%s", c->tls_name);
	else if (c->has_uid)
		snprintf(c->user, sizeof(c->user), "uid:%u", (unsigned)c->uid);
	else
		snprintf(c->user, sizeof(c->user), "-");
}

static void set_timeouts(int fd, int recv_seconds, int send_seconds)
{
	struct timeval rt = { .tv_sec = recv_seconds }, st = { .tv_sec = send_seconds };

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &rt, sizeof(rt));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &st, sizeof(st));
}

static void *connection(void *arg);

static bool is_tcp(int fd)
{
	struct sockaddr_storage sa;
	socklen_t len = sizeof(sa);

	return getsockname(fd, (struct sockaddr *)&sa, &len) == 0 &&
	       (sa.ss_family == AF_INET || sa.ss_family == AF_INET6);
}

/* Serve one already-accepted connection in this thread (the fuzzers use
 * this: a socketpair in, everything the protocol allows out). */
static struct conn *conn_new(struct cdisk_server *s, int fd)
{
	struct conn *c = calloc(1, sizeof(*c));

	if (!c) {
		close(fd);
		return NULL;
	}
	c->srv = s;
	c->fd = fd;
	c->tcp = is_tcp(fd);
	if (!c->tcp) {
		struct ucred cred;
		socklen_t len = sizeof(cred);
		c->has_uid = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0;
		c->uid = cred.uid;
	}
	pthread_mutex_init(&c->send_lock, NULL);
	pthread_mutex_init(&c->pool_lock, NULL);
	pthread_mutex_init(&c->lock, NULL);
	pthread_cond_init(&c->changed, NULL);
	return c;
}

static void conn_free(struct conn *c)
{
	pool_free(c);
	free(c->rbuf);
	pthread_mutex_destroy(&c->send_lock);
	pthread_mutex_destroy(&c->pool_lock);
	pthread_mutex_destroy(&c->lock);
	pthread_cond_destroy(&c->changed);
	free(c);
}

void cd_server_serve_fd(struct cdisk_server *s, int fd)
{
	struct conn *c = conn_new(s, fd);

	if (c) {
		connection(c);
		conn_free(c);
	}
}

/* The server's queue, started with the first connection. */
static struct cd_queue *server_queue(struct cdisk_server *s)
{
	struct cd_queue *q;

	pthread_mutex_lock(&s->lock);
	if (!s->queue) {
		unsigned workers, max;
		cd_queue_default_size(&workers, &max);
		if (cd_queue_new(s->ctx, workers, max, &q) == 0)
			__atomic_store_n(&s->queue, q, __ATOMIC_RELEASE);
	}
	q = s->queue;
	pthread_mutex_unlock(&s->lock);
	return q;
}

static void *connection(void *arg)
{
	struct conn *c = arg;
	struct cd_queue *queue = server_queue(c->srv);

	set_timeouts(c->fd, HANDSHAKE_TIMEOUT, SEND_TIMEOUT);
	if (queue && handshake(c) == 1 && (c->rbuf = malloc(RBUF_SIZE))) {
		__atomic_add_fetch(&c->exp->connections, 1, __ATOMIC_RELAXED);
		/* An idle client may stay as long as it likes. */
		set_timeouts(c->fd, 0, SEND_TIMEOUT);
		name_user(c);
		read_requests(c, queue);
		__atomic_sub_fetch(&c->exp->connections, 1, __ATOMIC_RELAXED);
	}
	pthread_mutex_lock(&c->srv->lock);
	cd_tls_close(c->tls);
	c->tls = NULL;
	close(c->fd);
	c->fd = -1;
	c->done = true;
	pthread_mutex_unlock(&c->srv->lock);
	return NULL;
}

/* ---- the server ---- */

int cdisk_server_new(struct cdisk_ctx *ctx, struct cdisk_server **out)
{
	struct cdisk_server *s = calloc(1, sizeof(*s));

	if (!s)
		return cd_error(ctx, -ENOMEM, "out of memory");
	s->ctx = ctx;
	s->control_fd = -1;
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->control_idle, NULL);
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

static void reap_connections(struct cdisk_server *s, bool all)
{
	struct conn **pp = &s->conns;

	while (*pp) {
		struct conn *c = *pp;
		pthread_mutex_lock(&s->lock);
		bool done = c->done;
		pthread_mutex_unlock(&s->lock);
		if (!done && !all) {
			pp = &c->next;
			continue;
		}
		pthread_join(c->reader, NULL);
		*pp = c->next;
		conn_free(c);
	}
}

static void accept_one(struct cdisk_server *s, int lfd, bool tcp)
{
	int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC), on = 1;
	struct conn *c;

	if (fd < 0)
		return;
	if (tcp)
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
	c = conn_new(s, fd);
	if (!c)
		return;
	if (pthread_create(&c->reader, NULL, connection, c) != 0) {
		close(fd);
		conn_free(c);
		return;
	}
	c->next = s->conns;
	s->conns = c;
}

/* Serve until stop_fd becomes readable; then stop accepting, let every
 * connection finish what it has read, flush and close the disks. */
int cdisk_server_run(struct cdisk_server *s, int stop_fd)
{
	int r = cd_control_start_policy(s);

	if (r < 0)
		return r;
	for (;;) {
		struct pollfd p[CD_ARRAY_SIZE(s->listen) + 2];
		size_t n = 0, first_listener;

		p[n++] = (struct pollfd){ .fd = stop_fd, .events = POLLIN };
		if (s->control_fd >= 0)
			p[n++] = (struct pollfd){ .fd = s->control_fd, .events = POLLIN };
		first_listener = n;
		for (size_t i = 0; i < s->nlisten; i++)
			p[n++] = (struct pollfd){ .fd = s->listen[i].fd, .events = POLLIN };
		if (poll(p, n, 1000) < 0 && errno != EINTR)
			break;
		reap_connections(s, false);
		struct cd_queue *queue = __atomic_load_n(&s->queue, __ATOMIC_ACQUIRE);
		if (queue)
			cd_queue_tick(queue);
		if (p[0].revents)
			break;
		if (first_listener > 1 && p[1].revents & POLLIN)
			cd_control_serve_one(s);
		for (size_t i = 0; i < s->nlisten; i++)
			if (p[first_listener + i].revents & POLLIN)
				accept_one(s, s->listen[i].fd, s->listen[i].tcp);
	}
	/* Stop reading new requests; what was read is still answered. */
	pthread_mutex_lock(&s->lock);
	for (struct conn *c = s->conns; c; c = c->next)
		if (c->fd >= 0)
			shutdown(c->fd, SHUT_RD);
	pthread_mutex_unlock(&s->lock);
	reap_connections(s, true);
	cd_queue_free(s->queue);
	s->queue = NULL;
	cd_control_stop_policy(s);
	cd_control_wait_idle(s);
	cd_control_stop_syncs(s);
	for (size_t i = 0; i < s->nexports; i++) {
		int rc = cdisk_close(s->exports[i].disk);
		s->exports[i].disk = NULL;
		if (rc < 0 && r == 0)
			r = rc;
	}
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
	reap_connections(s, true);
	cd_queue_free(s->queue);
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
	for (size_t i = 0; i < s->nexports; i++) {
		if (s->exports[i].disk)
			cdisk_close(s->exports[i].disk);
		free(s->exports[i].name);
		free(s->exports[i].path);
		cd_access_free(&s->exports[i].access);
	}
	free(s->exports);
	pthread_cond_destroy(&s->control_idle);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

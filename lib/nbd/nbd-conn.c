/* Connections to the NBD server, and how their bytes move.
 *
 * Each connection has one thread: it does the handshake (nbd-proto.c),
 * then reads requests and pushes them, in batches, onto the server's
 * queue (queue.c), whose workers carry them out and reply, in whatever
 * order they finish; replies on a connection go out whole, one at a
 * time.  Nothing here starts a thread but that reader. */
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include "cdisk.h"
#include "ctx.h"
#include "nbd-conn.h"
#include "nbd-proto.h"
#include "nbd.h"
#include "pool.h"
#include "queue.h"
#include "users.h"

#define HANDSHAKE_TIMEOUT 30
#define SEND_TIMEOUT 60

struct request {
	struct cd_qitem item;   /* first: the queue hands this back */
	struct conn *conn;
	struct cd_nbd_req req;  /* its data pooled */
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
	struct cd_nbd_session nbd;  /* who the client is, what it negotiated */
	int fd;
	pthread_mutex_t pool_lock;
	struct pooled *pool;
	unsigned pooled;
	gnutls_session_t tls;   /* NULL until STARTTLS */
	char user[300];         /* who, for the queue: "tls:NAME", "uid:N" or "-" */
	struct cd_qflow *flow;  /* the user's, once admitted (cd_queue_conn_in) */
	bool done;              /* its socket is closed (s->lock) */
	bool finished;          /* its reader is done with it: it may be freed (s->lock) */
	struct conn *next_pending;  /* waiting for a reader (readers.lock) */
	bool serving;           /* past the handshake (s->lock); nbd.exp stays */
	pthread_mutex_t send_lock;  /* the five fields below */
	struct request *out, *out_tail;  /* replies waiting to be sent */
	bool sending;           /* a worker is sending them, or the reader
				 * holds them to send together (hold_replies),
				 * or a worker has the sender to run */
	bool owed;              /* TLS keeps records the socket did not take */
	bool lost;              /* a send failed: replies are dropped */
	struct cd_qitem sender; /* what the reader could not send (send_out) */
	bool sender_queued;     /* a worker has it to run (c->lock) */
	uint8_t *rbuf;          /* the reader's, bytes rpos to rlen unparsed */
	size_t rpos, rlen;
	unsigned read_here_misses;      /* the reader's (answer_reads) */
	uint64_t read_here_rest_until;
	uint64_t write_here_rest_until; /* the reader's (hand_out) */
	uint64_t large_here_rest_until;
	unsigned spin_misses;           /* the reader's (spin_for_bytes) */
	uint64_t spin_rest_until;
	pthread_mutex_t lock;   /* the fields below */
	pthread_cond_t changed; /* a request finished, or closing */
	bool closing;           /* no more requests will be read */
	unsigned inflight;      /* requests queued or in hand */
	size_t inflight_bytes;
	struct conn *next;
};

/* The threads that read connections, one a connection while it lasts;
 * idle ones wait for the next (reader). */
struct cd_readers {
	pthread_mutex_t lock;
	pthread_cond_t work;        /* a connection waits, or stop */
	pthread_cond_t gone;        /* a reader left */
	struct conn *pending, *pending_tail;
	unsigned threads, idle, woken;
	bool stop;
	atomic_uint spinning;       /* readers waiting on the CPU (spin_for_bytes) */
	unsigned max_spinning;
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

/* What the socket takes now: how many bytes, or a negative errno; *more
 * when not all went (with TLS: or the session keeps some of it). */
static ssize_t conn_send_some(struct conn *c, struct iovec *iov, int n, bool *more)
{
	struct msghdr msg = { .msg_iov = iov, .msg_iovlen = (size_t)n };
	size_t total = 0;
	ssize_t w;

	if (c->tls)
		return cd_tls_send_some(c->tls, iov, n, more);
	for (int i = 0; i < n; i++)
		total += iov[i].iov_len;
	do
		w = sendmsg(c->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
	while (w < 0 && errno == EINTR);
	if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
		return -errno;
	if (w < 0)
		w = 0;
	*more = (size_t)w < total;
	return w;
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

/* ---- replies ----
 *
 * Replies are whole messages, one sender at a time on a connection.  A
 * worker that finds another sending leaves its reply to it and goes on
 * to other work: a client that reads no replies holds one worker, not
 * all of those with a reply for it; and replies that pile up meanwhile
 * leave in one sendmsg (or, with TLS, in full records). */

#define SEND_BATCH 64   /* replies in one sendmsg, at most 3 iovecs each */

static size_t weight(const struct request *q);

static void request_free(struct conn *c, struct request *q)
{
	buf_put(c, q->req.data);
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

/* Drops the first len bytes of q's reply, which have gone. */
static void reply_advance(struct request *q, size_t len)
{
	int i = 0;

	while (i < q->niov && len >= q->iov[i].iov_len)
		len -= q->iov[i++].iov_len;
	memmove(q->iov, q->iov + i, (size_t)(q->niov - i) * sizeof(*q->iov));
	q->niov -= i;
	if (len) {
		q->iov[0].iov_base = (uint8_t *)q->iov[0].iov_base + len;
		q->iov[0].iov_len -= len;
	}
}

/* send_list without waiting: the replies that went wholly are cut from
 * the front of *list and returned in *gone; the first of the others, if
 * any, has its reply moved past what of it went.  *more when not all
 * went (or TLS keeps some of it). */
static int send_list_some(struct conn *c, struct request **list, struct request **gone,
			  bool *more)
{
	struct request **gone_tail = gone;

	*gone = NULL;
	*more = false;
	while (*list && !*more) {
		struct iovec iov[SEND_BATCH * 3];
		int n = 0, k = 0;
		ssize_t w;

		for (struct request *q = *list; q && k < SEND_BATCH; q = q->next_out, k++) {
			memcpy(iov + n, q->iov, (size_t)q->niov * sizeof(*iov));
			n += q->niov;
		}
		w = conn_send_some(c, iov, n, more);
		if (w < 0)
			return (int)w;
		while (*list) {
			struct request *q = *list;
			size_t len = 0;

			for (int i = 0; i < q->niov; i++)
				len += q->iov[i].iov_len;
			if ((size_t)w < len) {
				reply_advance(q, (size_t)w);
				break;
			}
			w -= (ssize_t)len;
			*list = q->next_out;
			q->next_out = NULL;
			*gone_tail = q;
			gone_tail = &q->next_out;
		}
	}
	return 0;
}

static void send_later(struct cd_qitem *it);

/* Under c->send_lock, which it releases: send what waits until nothing
 * does.  Without wait (the reader, which must go on reading: a client
 * may send all its requests before it reads a reply), only what the
 * socket takes now; a worker sends the rest (send_later), and until it
 * has, the replies of others wait for it too, in order. */
static void send_out(struct conn *c, bool wait)
{
	unsigned n = 0;
	size_t bytes = 0;
	bool lost = false, more = false;

	c->sending = true;
	while (c->out || c->owed) {
		struct request *list = c->out, *gone = NULL;
		int r = 0;

		c->out = c->out_tail = NULL;
		c->owed = false;
		lost = c->lost;
		pthread_mutex_unlock(&c->send_lock);
		if (lost)
			gone = list, list = NULL;
		else if (!wait)
			r = send_list_some(c, &list, &gone, &more);
		else if (list)
			r = send_list(c, list), gone = list, list = NULL;
		else if (c->tls)
			r = cd_tls_send_iov(c->tls, NULL, 0);
		if (r < 0) {
			lost = true;
			more = false;
			/* The reader, in recv, learns it at once. */
			shutdown(c->fd, SHUT_RDWR);
			for (struct request *q = list, *next; q; q = next) {
				next = q->next_out;
				q->next_out = gone;
				gone = q;
			}
			list = NULL;
		}
		while (gone) {
			struct request *next = gone->next_out;
			n++;
			bytes += weight(gone);
			request_free(c, gone);
			gone = next;
		}
		pthread_mutex_lock(&c->send_lock);
		if (lost)
			c->lost = true;
		if (more) {
			struct request *tail = list;

			/* Back in front of what came meanwhile. */
			while (tail && tail->next_out)
				tail = tail->next_out;
			if (tail) {
				tail->next_out = c->out;
				if (!c->out)
					c->out_tail = tail;
				c->out = list;
			}
			c->owed = true;
			break;
		}
	}
	c->sending = more;
	pthread_mutex_unlock(&c->send_lock);
	if (more) {
		/* The connection stays until the sender has run; the sender
		 * is not a request, and takes no room from them. */
		pthread_mutex_lock(&c->lock);
		c->sender_queued = true;
		pthread_mutex_unlock(&c->lock);
		c->sender.run = send_later;
		cd_queue_chore(cd_server_queue(c->nbd.srv), &c->sender);
	}
	requests_done(c, n, bytes, lost);
}

/* A worker sends what the reader could not. */
static void send_later(struct cd_qitem *it)
{
	struct conn *c = (struct conn *)((char *)it - offsetof(struct conn, sender));

	pthread_mutex_lock(&c->send_lock);
	send_out(c, true);
	pthread_mutex_lock(&c->lock);
	c->sender_queued = false;
	pthread_cond_broadcast(&c->changed);
	pthread_mutex_unlock(&c->lock);
}

/* The connection whose requests this thread reads, if it is a reader:
 * it never waits for a client to take replies. */
static __thread struct conn *reading;

static void before_reply_here(struct conn *c, const struct request *q);

/* Takes q: its reply, iov (q->data by reference, the rest copied), is
 * sent by this worker or by the one sending already. */
static int send_reply(struct conn *c, struct request *q, struct iovec *iov, int n)
{
	size_t copy = 0;
	uint8_t *p;

	for (int i = 0; i < n; i++)
		if (!q->req.data || iov[i].iov_base != q->req.data)
			copy += iov[i].iov_len;
	p = copy <= sizeof(q->small) ? q->small : (q->extra = malloc(copy));
	for (int i = 0; i < n && p; i++) {
		q->iov[i] = iov[i];
		if (q->req.data && iov[i].iov_base == q->req.data)
			continue;
		memcpy(p, iov[i].iov_base, iov[i].iov_len);
		q->iov[i].iov_base = p;
		p += iov[i].iov_len;
	}
	q->niov = n;
	q->next_out = NULL;
	if (reading == c)
		before_reply_here(c, q);
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
	send_out(c, reading != c);
	return 0;
}

/* The reader answering a batch of reads sends their replies together, in
 * one sendmsg or in full TLS records, rather than one a read: the
 * client then takes fewer segments and records too.  While it holds the
 * sending, workers' replies wait with them.  False when a worker sends
 * already: it takes ours as they come. */
static bool hold_replies(struct conn *c)
{
	bool mine;

	pthread_mutex_lock(&c->send_lock);
	mine = !c->sending;
	c->sending = true;
	pthread_mutex_unlock(&c->send_lock);
	return mine;
}

static void send_held(struct conn *c)
{
	pthread_mutex_lock(&c->send_lock);
	send_out(c, false);
}

/* ---- reading requests ---- */

/* A reader that has answered its batch and finds no more requests waits
 * for them a little on the CPU before it sleeps: a client at a small
 * depth sends its next request within microseconds of a reply, and a
 * sleep and a wake-up cost more than that on a virtual machine (one
 * client at depth 4: 0.4 to 0.8 context switches a request, and a third
 * more requests a second without them).  Only while spinning pays (after
 * SPIN_MISSES waits in vain in a row it rests for SPIN_REST_NS: a client
 * that thinks between requests), only without TLS (its reader waits for
 * whole records), for *[serve] spin* microseconds (CD_DEFAULT_SERVE_SPIN_US;
 * 0: never), never while background work is carried out (a sync's
 * copying needs the cores, and its guests' latency beside it is what the
 * scheduler keeps; while its tickets only wait for their turn, the
 * guests get a third more requests done beside it), and never more
 * readers at once than half the cores,
 * none on one: spinning readers must not take the CPU from the workers,
 * the other readers or the VMs. */
#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#else
#define cpu_relax() ((void)0)
#endif
#define SPIN_MISSES 8
#define SPIN_REST_NS 100000000ull

/* A place among the spinning readers, taken before the queue's lock is:
 * readers that could not spin anyway take no lock. */
static bool spin_begin(struct conn *c, uint64_t now)
{
	struct cd_readers *r = c->nbd.srv->readers;
	struct cd_queue *q = __atomic_load_n(&c->nbd.srv->queue, __ATOMIC_ACQUIRE);

	if (c->tls || !c->nbd.srv->ctx->cfg.serve_spin_us || now < c->spin_rest_until || !r ||
	    !q)
		return false;
	unsigned n = atomic_load_explicit(&r->spinning, memory_order_relaxed);
	do {
		if (n >= r->max_spinning)
			return false;
	} while (!atomic_compare_exchange_weak_explicit(&r->spinning, &n, n + 1,
							 memory_order_relaxed,
							 memory_order_relaxed));
	if (cd_queue_background_idle(q))
		return true;
	atomic_fetch_sub_explicit(&r->spinning, 1, memory_order_relaxed);
	return false;
}

/* Bytes that came while spinning, 0 if none, -1 when the connection is
 * over. */
static ssize_t spin_for_bytes(struct conn *c, void *buf, size_t len)
{
	uint64_t now = cd_now_ns(), end = now + c->nbd.srv->ctx->cfg.serve_spin_us * 1000ull;
	ssize_t n;
	int err = 0;

	if (!spin_begin(c, now))
		return 0;
	do {
		n = recv(c->fd, buf, len, MSG_DONTWAIT);
		err = n < 0 ? errno : 0;
		if (n >= 0 || (err != EAGAIN && err != EINTR))
			break;
		cpu_relax();
	} while (cd_now_ns() < end);
	atomic_fetch_sub_explicit(&c->nbd.srv->readers->spinning, 1, memory_order_relaxed);
	if (n > 0) {
		c->spin_misses = 0;
		return n;
	}
	if (n == 0 || (err != EAGAIN && err != EINTR))
		return -1;   /* said goodbye, or gone */
	if (++c->spin_misses >= SPIN_MISSES) {
		c->spin_misses = 0;
		c->spin_rest_until = cd_now_ns() + SPIN_REST_NS;
	}
	return 0;
}

/* Some bytes, at least one, as many as have come (up to len). */
static ssize_t conn_recv_some(struct conn *c, void *buf, size_t len)
{
	ssize_t got = spin_for_bytes(c, buf, len);

	if (got)
		return got;
	for (;;) {
		ssize_t n = c->tls ? cd_tls_recv_some(c->tls, buf, len, true) : recv(c->fd, buf, len, 0);
		if (!c->tls && n < 0 && errno == EINTR)
			continue;
		return n > 0 ? n : -1;
	}
}

/* At least want unparsed bytes in the reader's buffer. */
/* What is unparsed to the front of the reader's buffer. */
static void compact(struct conn *c)
{
	if (c->rpos) {
		memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
		c->rlen -= c->rpos;
		c->rpos = 0;
	}
}

static int fill(struct conn *c, size_t want)
{
	compact(c);
	while (c->rlen < want) {
		ssize_t n = conn_recv_some(c, c->rbuf + c->rlen, RBUF_SIZE - c->rlen);
		if (n < 0)
			return -1;
		c->rlen += (size_t)n;
	}
	return 0;
}

/* One TLS record that has wholly come, added to what the buffer holds;
 * none when none has. */
static int fill_record(struct conn *c)
{
	ssize_t n;

	compact(c);
	n = cd_tls_recv_some(c->tls, c->rbuf + c->rlen, RBUF_SIZE - c->rlen, false);
	if (n < 0)
		return -1;
	c->rlen += (size_t)n;
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

/* A whole request header in the buffer: 1; 0 when !block and none is to
 * be had without waiting (with TLS, and more: a record that has wholly
 * come is taken); -1 when the client said goodbye. */
static int header_ready(struct conn *c, bool block, bool more)
{
	if (c->rlen - c->rpos >= CD_NBD_REQUEST_SIZE)
		return 1;
	if (block)
		return fill(c, CD_NBD_REQUEST_SIZE) < 0 ? -1 : 1;
	if (!more || !c->tls)
		return 0;
	if (fill_record(c) < 0)
		return -1;
	return c->rlen - c->rpos >= CD_NBD_REQUEST_SIZE;
}

/* Parse one request, payload included.  Returns 1 for a request, 0 or -1
 * as header_ready, -1 also when the stream cannot be followed. */
static int parse_request(struct conn *c, struct request *q, bool block, bool more)
{
	const uint8_t *h;
	int r = header_ready(c, block, more);

	if (r <= 0)
		return r;
	h = c->rbuf + c->rpos;
	q->extra = NULL;
	if (cd_nbd_parse_request(h, &q->req) < 0)
		return -1;
	c->rpos += CD_NBD_REQUEST_SIZE;
	if (q->req.type == NBD_CMD_WRITE &&
	    (!(q->req.data = buf_get(c, q->req.length)) ||
	     take_payload(c, q->req.data, q->req.length) < 0)) {
		buf_put(c, q->req.data);
		return -1;
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
	return q->req.type == NBD_CMD_WRITE || q->req.type == NBD_CMD_READ ? q->req.length : 0;
}

/* The queue's worker: carry it out and reply (which takes q). */
static void run_request(struct cd_qitem *it)
{
	struct request *q = (struct request *)it;

	cd_nbd_execute(&q->conn->nbd, &q->req);
}

/* A read the reader tries itself (answer_reads). */
static bool try_read(struct cd_qitem *it)
{
	struct request *q = (struct request *)it;

	return cd_nbd_try_read(&q->conn->nbd, &q->req);
}

/* What the reader does with a batch.  Small reads that the page cache
 * can answer it answers itself: handing one to a worker costs two
 * context switches, more than the read (nbdkit's threads carry out what
 * they read, for the same reason).  So does it with a batch of one other
 * request, or of a few quick ones (carry_here), on a disk that never
 * waits on the network, without TLS
 * (there a write's decrypting limits the connection, and a worker on the
 * other core can write the file meanwhile): a base or a mirror that
 * hangs must hold up a worker, never the reader of a connection whose
 * other requests the overlay could answer.  The rest goes to the workers
 * first, so that it is under way meanwhile.  A read that would wait on
 * the disk or the network (cd_nowait), or that the queue will not let
 * run here (others wait, a limit), goes to them at once.  Reads of up to
 * READ_HERE_ONE bytes, READ_HERE_BATCH in all, so that a burst of large
 * reads still spreads over the cores.  After READ_HERE_MISSES of them in
 * a row went to the workers anyway (a cold cache, a file system without
 * RWF_NOWAIT, a busy queue), the reader stops trying for
 * READ_HERE_REST_NS. */
#define READ_HERE_ONE (64u * 1024)
#define READ_HERE_BATCH (256u * 1024)
#define READ_HERE_MISSES 32
#define READ_HERE_REST_NS 1000000000ull

static bool read_here(const struct request *q, size_t *bytes)
{
	if (q->req.type != NBD_CMD_READ || q->req.length > READ_HERE_ONE ||
	    *bytes + q->req.length > READ_HERE_BATCH)
		return false;
	*bytes += q->req.length;
	return true;
}

static void push_one(struct cd_queue *queue, struct cd_qitem *it)
{
	struct cd_qbatch one = { 0 };

	cd_qbatch_add(&one, it);
	cd_queue_push(queue, &one);
}

/* The reader's rests from carrying out some kind of request itself: a
 * time until which it does not (0 once over). */
static bool resting(uint64_t *until)
{
	if (*until && cd_now_ns() < *until)
		return true;
	*until = 0;
	return false;
}

static void rest_for(uint64_t *until, uint64_t ns)
{
	*until = cd_now_ns() + ns;
}

static bool reads_here(struct conn *c)
{
	return !resting(&c->read_here_rest_until) && !cd_disk_on_primary(c->nbd.exp->disk);
}

/* The reads split off: their replies leave together. */
static void answer_reads(struct conn *c, struct cd_queue *queue, struct cd_qitem **here,
			 unsigned n)
{
	bool held = hold_replies(c);

	for (unsigned i = 0; i < n; i++) {
		if (!c->read_here_rest_until && cd_queue_run_here(queue, here[i], try_read)) {
			c->read_here_misses = 0;
			continue;
		}
		push_one(queue, here[i]);
		if (++c->read_here_misses >= READ_HERE_MISSES) {
			c->read_here_misses = 0;
			rest_for(&c->read_here_rest_until, READ_HERE_REST_NS);
		}
	}
	if (held)
		send_held(c);
}

static struct cd_qitem *take_last(struct cd_qbatch *b)
{
	struct cd_qitem *last = b->tail, *prev = NULL;

	for (struct cd_qitem *it = b->head; it != last; it = it->next)
		prev = it;
	if (prev)
		prev->next = NULL;
	else
		b->head = NULL;
	b->tail = prev;
	b->n--;
	return last;
}

/* A write the reader has just received is in this core's cache: copied
 * into the page cache from another core's, it cost 342 µs of CPU a MiB
 * against 264 here (perf stat, fresh 1 MiB writes at depth 4).  Past a
 * few MiB it is out of cache either way, and the reader had better go
 * back to reading.  One that took longer than WRITE_HERE_SLOW_NS (the
 * kernel throttling writers while the page cache is full of dirty pages,
 * beside a sync say) held up the connection's next requests meanwhile:
 * such writes go to the workers for WRITE_HERE_REST_NS. */
#define WRITE_HERE_MAX (2u << 20)
#define WRITE_HERE_SLOW_NS 5000000ull
#define WRITE_HERE_REST_NS 1000000000ull

/* Not within the rest after a slow write carried here. */
static bool writes_here(struct conn *c)
{
	return !resting(&c->write_here_rest_until);
}

/* Writes carried here since t0 took too long: the next ones rest. */
static void rest_if_slow(struct conn *c, uint64_t t0)
{
	if (cd_now_ns() - t0 > WRITE_HERE_SLOW_NS)
		rest_for(&c->write_here_rest_until, WRITE_HERE_REST_NS);
}

/* Longer than a quick write can be (quick(): up to READ_HERE_ONE). */
static bool large_write(const struct request *q)
{
	return q->req.type == NBD_CMD_WRITE && q->req.length > READ_HERE_ONE;
}

/* Before the reply to a large write carried out here: a client that has
 * sent its next request meanwhile (a deeper queue) would have that
 * payload received only after each such write, so its large writes go
 * to the workers for WRITE_HERE_REST_NS and the reader receives
 * meanwhile (1 MiB writes at depth 4: 2,037 to 2,232 MiB/s carried here,
 * 2,342 to 2,361 so; nbdkit 2,201 to 2,497).  Not after the reply: a
 * client at depth 1 then sends its next too.  Nor at the payload's end:
 * the client writes its next request only once the reader has made room
 * in the socket. */
static void before_reply_here(struct conn *c, const struct request *q)
{
	uint8_t byte;

	if (large_write(q) &&
	    (c->rpos < c->rlen || recv(c->fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) > 0))
		rest_for(&c->large_here_rest_until, WRITE_HERE_REST_NS);
}

static bool large_write_here(struct conn *c, const struct request *q)
{
	if (!large_write(q) || (q->req.flags & NBD_CMD_FLAG_FUA) ||
	    q->req.length > WRITE_HERE_MAX || !writes_here(c) ||
	    resting(&c->large_here_rest_until))
		return false;
	return cd_disk_quick(c->nbd.exp->disk, true, q->req.offset, q->req.length);
}

/* A lone request the reader may carry out itself rather than wake a
 * worker: one that never waits on the network.  Over TLS none: there
 * decrypting the next record is the reader's share of the work (measured:
 * large writes were slower carried here).  *timed: a large write, whose
 * time decides whether the next ones are carried here too. */
static bool run_alone_here(struct conn *c, const struct request *q, bool *timed)
{
	*timed = false;
	if (c->tls)
		return false;
	if (q->item.quick)
		return true;
	if (cd_disk_local(c->nbd.exp->disk))
		return !large_write(q) || !resting(&c->large_here_rest_until);
	*timed = large_write_here(c, q);
	return *timed;
}

static bool run_always(struct cd_qitem *it)
{
	run_request(it);
	return true;
}

/* A few quick requests (local writes of up to 64 KiB, not FUA) the reader
 * carries out too, without TLS: handed to a worker, each cost a wake-up
 * that took longer than the write (10 clients at depth 4: 120k IOPS and
 * 11.7 µs of CPU a request, against 198k and 6.8 µs carried here).
 * Beside a sync they stay level: what once held them up there was the
 * workers waking each other for background tickets (queue.c).  Writes
 * that the kernel throttles (a page cache full of dirty pages) go to the
 * workers for a while, as large ones do. */
#define QUICK_HERE_MAX 4

static bool carry_here(struct conn *c, const struct cd_qbatch *b)
{
	if (c->tls || !b->n || b->n > QUICK_HERE_MAX || !writes_here(c))
		return false;
	/* Writes only: a quick read that is not answered here waits on the
	 * disk (reads_here rests), and reads that wait go to the workers
	 * side by side. */
	for (const struct cd_qitem *it = b->head; it; it = it->next)
		if (!it->quick || ((const struct request *)it)->req.type != NBD_CMD_WRITE)
			return false;
	return true;
}

/* Those the queue will not let run here (others wait, a limit) go to the
 * workers in one push, as the batch would have. */
static void run_carried(struct conn *c, struct cd_queue *queue, struct cd_qbatch *carry)
{
	uint64_t t0 = cd_now_ns();
	struct cd_qitem *it = carry->head, *next;

	for (; it; it = next) {
		next = it->next;   /* it is gone once run */
		if (!cd_queue_run_here(queue, it, run_always))
			break;
	}
	if (it) {
		struct cd_qbatch rest = { 0 };

		for (; it; it = next) {
			next = it->next;
			cd_qbatch_add(&rest, it);
		}
		cd_queue_push(queue, &rest);
	}
	if (carry->n)
		rest_if_slow(c, t0);
}

static void hand_out(struct conn *c, struct cd_queue *queue, struct cd_qbatch *b)
{
	struct cd_qbatch rest = { 0 }, carry = { 0 };
	struct cd_qitem *here[CONN_MAX_REQUESTS], *last = NULL;
	bool reads = reads_here(c), timed = false;
	uint64_t now = cd_now_ns();
	unsigned n = 0;
	size_t bytes = 0;

	for (struct cd_qitem *it = b->head, *next; it; it = next) {
		next = it->next;
		it->queued_ns = now;
		if (reads && n < CONN_MAX_REQUESTS && read_here((struct request *)it, &bytes))
			here[n++] = it;
		else
			cd_qbatch_add(&rest, it);
	}
	*b = (struct cd_qbatch){ 0 };
	/* A longer one only alone: beside others, on a worker it runs at
	 * the same time as they do, and the reader goes back to reading
	 * sooner.  A few quick ones take less than waking a worker. */
	if (rest.n == 1 && !n && run_alone_here(c, (struct request *)rest.head, &timed)) {
		last = take_last(&rest);
	} else if (carry_here(c, &rest)) {
		carry = rest;
		rest = (struct cd_qbatch){ 0 };
	}
	cd_queue_push(queue, &rest);
	if (n)
		answer_reads(c, queue, here, n);
	run_carried(c, queue, &carry);
	if (!last)
		return;
	if (!cd_queue_run_here(queue, last, run_always))
		push_one(queue, last);
	else if (timed)
		rest_if_slow(c, now);
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
	cd_io_stats_depth(&c->nbd.exp->io, b->n);
	pthread_mutex_lock(&c->lock);
	c->inflight += b->n;
	c->inflight_bytes += bytes;
	pthread_mutex_unlock(&c->lock);
}


/* Over in a few microseconds, as a rule: the queue lets one worker carry
 * several of these rather than wake one each (queue.c, WAKE_COST_NS). */
static bool quick(struct conn *c, const struct request *q)
{
	return (q->req.type == NBD_CMD_READ || q->req.type == NBD_CMD_WRITE) &&
	       !(q->req.flags & NBD_CMD_FLAG_FUA) && q->req.length <= READ_HERE_ONE &&
	       cd_disk_quick(c->nbd.exp->disk, q->req.type == NBD_CMD_WRITE, q->req.offset,
			     q->req.length);
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

	reading = c;
	while (r >= 0 && (n = room(c)) > 0) {
		size_t bytes = 0;

		while (b.n < n) {
			struct request *q = malloc(sizeof(*q));
			/* Records go on being taken only while the batch is
			 * small: large writes are better on their way to the
			 * disk than held for the next one's payload. */
			r = q ? parse_request(c, q, b.n == 0, bytes < RBUF_SIZE) : -1;
			if (r <= 0) {
				free(q);
				break;
			}
			q->conn = c;
			q->item.cls = class_of(q->req.type);
			q->item.exp = c->nbd.exp;
			q->item.flow = c->flow;
			q->item.bytes = weight(q);
			q->item.run = run_request;
			q->item.quick = quick(c, q);
			bytes += q->item.bytes;
			cd_qbatch_add(&b, &q->item);
		}
		account(c, &b);
		hand_out(c, queue, &b);
	}
	reading = NULL;
	pthread_mutex_lock(&c->lock);
	c->closing = true;
	while (c->inflight || c->sender_queued)
		pthread_cond_wait(&c->changed, &c->lock);
	pthread_mutex_unlock(&c->lock);
}

static void name_user(struct conn *c)
{
	char name[CD_USER_NAME_MAX + 1];

	cd_nbd_user_name(&c->nbd, name, sizeof(name));
	if (name[0])
		snprintf(c->user, sizeof(c->user), "user:%s", name);
	else if (c->tls && c->nbd.psk)
		snprintf(c->user, sizeof(c->user), "psk:%s", c->nbd.tls_name);
	else if (c->tls && c->nbd.tls_name[0])
		snprintf(c->user, sizeof(c->user), "tls:%s", c->nbd.tls_name);
	else if (c->nbd.has_uid)
		snprintf(c->user, sizeof(c->user), "uid:%u", (unsigned)c->nbd.uid);
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

/* ---- what the protocol asks of the connection ---- */

static struct conn *conn_of(struct cd_nbd_session *s)
{
	return (struct conn *)((char *)s - offsetof(struct conn, nbd));
}

static int nbd_recv(struct cd_nbd_session *s, void *buf, size_t len)
{
	return conn_recv(conn_of(s), buf, len);
}

static int nbd_send_iov(struct cd_nbd_session *s, struct iovec *iov, int n)
{
	return conn_send_iov(conn_of(s), iov, n);
}

static int nbd_starttls(struct cd_nbd_session *s)
{
	struct conn *c = conn_of(s);
	char why[256];
	int r;

	r = cd_tls_accept(s->srv->tls, c->fd, &c->tls, s->tls_name, sizeof(s->tls_name),
			  &s->psk, why, sizeof(why));
	if (r < 0) {
		char peer[64];
		cd_log(s->srv->ctx, CDISK_LOG_WARNING, "client %s: %s",
		       peer_name(c->fd, peer, sizeof(peer)), why);
		return r;
	}
	s->tls = true;
	return 0;
}

static void *nbd_buf_get(struct cd_nbd_session *s, size_t len)
{
	return buf_get(conn_of(s), len);
}

/* Counted as the reply is made: the request is done, and from the
 * moment it is handed to the sender it is no longer ours. */
static void count(struct request *r)
{
	enum cd_stat_op op = cd_stat_op_of_nbd(r->req.type);
	uint64_t bytes = r->req.type == NBD_CMD_BLOCK_STATUS ? 0 : r->req.length;
	uint64_t ns = cd_now_ns() - r->item.queued_ns;

	cd_io_stats_record(&r->item.exp->io, op, bytes, r->req.result, ns);
	cd_io_stats_depth(&r->item.exp->io, -1);
	cd_io_stats_record(cd_qflow_stats(r->item.flow), op, bytes, r->req.result, ns);
}

static int nbd_reply(struct cd_nbd_session *s, struct cd_nbd_req *q, struct iovec *iov,
		     int n)
{
	struct request *r = (struct request *)((char *)q - offsetof(struct request, req));

	count(r);
	return send_reply(conn_of(s), r, iov, n);
}

/* The users file's limits for this client, when it is one of its users. */
static bool file_limits(struct conn *c, struct cd_user_limits *out)
{
	struct cdisk_server *s = c->nbd.srv;
	const struct cd_user *u;
	bool found = false;

	if (strncmp(c->user, "user:", 5) != 0)
		return false;
	pthread_rwlock_rdlock(&s->users_lock);
	u = s->users ? cd_users_find(s->users, c->user + 5) : NULL;
	if (u) {
		*out = u->limits;
		found = true;
	}
	pthread_rwlock_unlock(&s->users_lock);
	return found;
}

static void name_user(struct conn *c);

static int nbd_admit(struct cd_nbd_session *s, struct cd_export *e, char *why, size_t len)
{
	struct conn *c = conn_of(s);
	struct cd_queue *q = cd_server_queue(s->srv);
	struct cd_user_limits l;
	bool has;
	int r;

	(void)e;
	if (!q) {
		snprintf(why, len, "the server cannot start its workers");
		return -EAGAIN;
	}
	name_user(c);
	has = file_limits(c, &l);
	r = cd_queue_conn_in(q, c->user, has ? &l : NULL, &c->flow, why, len);
	if (r < 0) {
		char peer[64];
		cd_log(s->srv->ctx, CDISK_LOG_WARNING, "client %s refused: %s",
		       peer_name(c->fd, peer, sizeof(peer)), why);
	}
	return r;
}

static const struct cd_nbd_ops conn_ops = {
	.recv = nbd_recv,
	.send_iov = nbd_send_iov,
	.starttls = nbd_starttls,
	.buf_get = nbd_buf_get,
	.reply = nbd_reply,
	.admit = nbd_admit,
};

/* ---- connections ---- */

static bool is_tcp(int fd)
{
	struct sockaddr_storage sa;
	socklen_t len = sizeof(sa);

	return getsockname(fd, (struct sockaddr *)&sa, &len) == 0 &&
	       (sa.ss_family == AF_INET || sa.ss_family == AF_INET6);
}

static const struct cd_nbd_ops conn_ops;

static struct conn *conn_new(struct cdisk_server *s, int fd)
{
	struct conn *c = calloc(1, sizeof(*c));

	if (!c) {
		close(fd);
		return NULL;
	}
	c->nbd.ops = &conn_ops;
	c->nbd.srv = s;
	c->fd = fd;
	c->nbd.tcp = is_tcp(fd);
	if (!c->nbd.tcp) {
		struct ucred cred;
		socklen_t len = sizeof(cred);
		c->nbd.has_uid = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0;
		c->nbd.uid = cred.uid;
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

/* Serve one already-accepted connection in this thread (the fuzzers use
 * this: a socketpair in, everything the protocol allows out). */
void cd_server_serve_fd(struct cdisk_server *s, int fd)
{
	struct conn *c = conn_new(s, fd);

	if (c) {
		connection(c);
		conn_free(c);
	}
}

/* The server's queue, started with the first connection. */
struct cd_queue *cd_server_queue(struct cdisk_server *s)
{
	struct cd_queue *q;

	pthread_mutex_lock(&s->lock);
	if (!s->queue) {
		unsigned workers, max;
		cd_queue_size(s->ctx->cfg.serve_workers, &workers, &max);
		if (cd_queue_new(s->ctx, workers, max, &q) == 0)
			__atomic_store_n(&s->queue, q, __ATOMIC_RELEASE);
	}
	q = s->queue;
	pthread_mutex_unlock(&s->lock);
	return q;
}

static int gate_begin(void *arg, uint64_t bytes, uint64_t *t0,
		      bool (*cancelled)(void *carg), void *carg)
{
	struct cd_export *e = arg;
	/* The queue, if clients ever came: the engines do not start it. */
	struct cd_queue *q = __atomic_load_n(&e->srv->queue, __ATOMIC_ACQUIRE);
	int r = 0;

	*t0 = 0;   /* not through the queue */
	if (q)
		r = cd_queue_background_begin(q, bytes, t0, cancelled, carg);
	if (r == 0)
		cd_io_stats_depth(&e->io, 1);
	return r;
}

static void gate_end(void *arg, uint64_t bytes, int err, uint64_t t0)
{
	struct cd_export *e = arg;
	struct cd_queue *q = __atomic_load_n(&e->srv->queue, __ATOMIC_ACQUIRE);

	cd_io_stats_depth(&e->io, -1);
	cd_io_stats_record(&e->io, CD_STAT_BACKGROUND, bytes, err, t0 ? cd_now_ns() - t0 : 0);
	if (q && t0)
		cd_queue_background_end(q, bytes, err, t0);
}

void cd_export_gate(struct cdisk_server *s, struct cd_export *e)
{
	struct cdisk_server *none = NULL;

	if (!e->disk || !__atomic_compare_exchange_n(&e->srv, &none, s, false,
						     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
		return;
	e->gate = (struct cd_io_gate){ gate_begin, gate_end, e };
	__atomic_store_n(&e->disk->gate, &e->gate, __ATOMIC_RELEASE);
}

/* Past the handshake: from here a reload sees the connection.  Access is
 * checked once more, in case a reload came between the handshake's check
 * and now and so could not see it. */
static bool start_serving(struct conn *c)
{
	struct cdisk_server *s = c->nbd.srv;
	bool ro = false, ok;

	pthread_mutex_lock(&s->lock);
	ok = cd_nbd_allowed(&c->nbd, c->nbd.exp, &ro) && (!ro || c->nbd.readonly);
	c->serving = ok;
	pthread_mutex_unlock(&s->lock);
	return ok;
}

static void *connection(void *arg)
{
	struct conn *c = arg;
	struct cd_queue *queue = cd_server_queue(c->nbd.srv);

	set_timeouts(c->fd, HANDSHAKE_TIMEOUT, SEND_TIMEOUT);
	if (queue && cd_nbd_handshake(&c->nbd) == 1 && start_serving(c) &&
	    (c->rbuf = malloc(RBUF_SIZE))) {
		cd_files_client_in(c->nbd.srv, c->nbd.exp);
		/* An idle client may stay as long as it likes. */
		set_timeouts(c->fd, 0, SEND_TIMEOUT);
		read_requests(c, queue);
		cd_files_client_out(c->nbd.srv, c->nbd.exp);
	}
	pthread_mutex_lock(&c->nbd.srv->lock);
	cd_tls_close(c->tls);
	c->tls = NULL;
	c->nbd.tls = false;
	close(c->fd);
	c->fd = -1;
	c->done = true;
	pthread_mutex_unlock(&c->nbd.srv->lock);
	if (c->flow && queue)
		cd_queue_conn_out(queue, c->flow);
	c->flow = NULL;
	/* Past done a reload no longer looks at it: a pool's image may go. */
	cd_server_put_export(c->nbd.exp);
	c->nbd.exp = NULL;
	pthread_mutex_lock(&c->nbd.srv->lock);
	c->finished = true;
	pthread_cond_broadcast(&c->nbd.srv->conn_finished);
	pthread_mutex_unlock(&c->nbd.srv->lock);
	return NULL;
}

/* ---- readers ----
 *
 * A connection's reader is a thread kept for the next one when it ends
 * (up to READERS_IDLE of them wait): a client that connects and leaves
 * ten thousand times costs no thread creation, and the memory of threads
 * that come and go does not pile up. */

#define READERS_IDLE 4


static void *reader(void *arg)
{
	struct cd_readers *r = arg;

	/* For top -H, ps -L and perf, and the tests that count switches. */
	pthread_setname_np(pthread_self(), "cdisk-reader");

	pthread_mutex_lock(&r->lock);
	for (;;) {
		struct conn *c = r->pending;
		if (!c) {
			if (r->stop || r->idle >= READERS_IDLE)
				break;
			r->idle++;
			pthread_cond_wait(&r->work, &r->lock);
			r->idle--;
			if (r->woken)
				r->woken--;
			continue;
		}
		r->pending = c->next_pending;
		if (!r->pending)
			r->pending_tail = NULL;
		pthread_mutex_unlock(&r->lock);
		connection(c);
		pthread_mutex_lock(&r->lock);
	}
	r->threads--;
	pthread_cond_broadcast(&r->gone);
	pthread_mutex_unlock(&r->lock);
	return NULL;
}

static struct cd_readers *readers_of(struct cdisk_server *s)
{
	struct cd_readers *r = s->readers;

	if (r)
		return r;
	r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	pthread_mutex_init(&r->lock, NULL);
	pthread_cond_init(&r->work, NULL);
	pthread_cond_init(&r->gone, NULL);
	r->max_spinning = cd_cpus() / 2;
	s->readers = r;
	return r;
}

/* Under r->lock: a reader for c, idle or new. */
static int hand_over(struct cd_readers *r, struct conn *c)
{
	pthread_attr_t a;
	pthread_t t;
	int e;

	c->next_pending = NULL;
	if (r->pending_tail)
		r->pending_tail->next_pending = c;
	else
		r->pending = c;
	r->pending_tail = c;
	if (r->idle > r->woken) {
		r->woken++;
		pthread_cond_signal(&r->work);
		return 0;
	}
	pthread_attr_init(&a);
	pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
	e = pthread_create(&t, &a, reader, r);
	pthread_attr_destroy(&a);
	if (e == 0) {
		r->threads++;
		return 0;
	}
	/* Take it back (it is the last): nobody may come to read it. */
	struct conn **pp = &r->pending;
	r->pending_tail = NULL;
	while (*pp != c) {
		r->pending_tail = *pp;
		pp = &(*pp)->next_pending;
	}
	*pp = NULL;
	return -e;
}

/* Every connection is finished: the idle readers leave. */
static void readers_stop(struct cdisk_server *s)
{
	struct cd_readers *r = s->readers;

	if (!r)
		return;
	pthread_mutex_lock(&r->lock);
	r->stop = true;
	pthread_cond_broadcast(&r->work);
	while (r->threads)
		pthread_cond_wait(&r->gone, &r->lock);
	pthread_mutex_unlock(&r->lock);
	pthread_cond_destroy(&r->work);
	pthread_cond_destroy(&r->gone);
	pthread_mutex_destroy(&r->lock);
	free(r);
	s->readers = NULL;
}

void cd_conn_reap(struct cdisk_server *s, bool all)
{
	struct conn **pp = &s->conns;

	while (*pp) {
		struct conn *c = *pp;
		pthread_mutex_lock(&s->lock);
		while (all && !c->finished)
			pthread_cond_wait(&s->conn_finished, &s->lock);
		bool finished = c->finished;
		pthread_mutex_unlock(&s->lock);
		if (!finished) {
			pp = &c->next;
			continue;
		}
		*pp = c->next;
		conn_free(c);
	}
	if (all)
		readers_stop(s);
}

int cd_conn_start(struct cdisk_server *s, int fd)
{
	struct cd_readers *r = readers_of(s);
	struct conn *c = conn_new(s, fd);
	int e;

	if (!c)
		return -ENOMEM;
	if (!r) {
		close(fd);
		conn_free(c);
		return -ENOMEM;
	}
	pthread_mutex_lock(&r->lock);
	e = hand_over(r, c);
	pthread_mutex_unlock(&r->lock);
	if (e < 0) {
		close(fd);
		conn_free(c);
		return e;
	}
	c->next = s->conns;
	s->conns = c;
	return 0;
}

void cd_conn_stop_reading(struct cdisk_server *s)
{
	pthread_mutex_lock(&s->lock);
	for (struct conn *c = s->conns; c; c = c->next)
		if (c->fd >= 0)
			shutdown(c->fd, SHUT_RD);
	pthread_mutex_unlock(&s->lock);
}

/* SIGHUP: both files are read whole before either is used; then every
 * connection is checked against them, and those that lost their export
 * (or the right to write to it) are shut, which their reader notices. */
void cd_server_reload_users(struct cdisk_server *s)
{
	struct cd_users *users = NULL, *old_users;
	struct cd_psk *psk = NULL, *old_psk;
	unsigned closed = 0;
	int r = 0;

	if (s->users_path)
		r = cd_users_load(s->ctx, s->users_path, &users);
	if (r == 0 && s->psk_path)
		r = cd_psk_load(s->ctx, s->psk_path, &psk);
	if (r < 0) {
		cd_log(s->ctx, CDISK_LOG_ERROR, "reload refused, the users and keys in "
		       "force stay: %s", cdisk_ctx_error(s->ctx));
		cd_users_free(users);
		return;
	}
	pthread_rwlock_wrlock(&s->users_lock);
	old_users = s->users;
	old_psk = s->psk;
	s->users = users;
	s->psk = psk;
	if (s->pool)
		cd_pool_set_quotas(s->pool, users);
	struct cd_queue *q = __atomic_load_n(&s->queue, __ATOMIC_ACQUIRE);
	if (q)
		cd_queue_reload_limits(q, users);
	pthread_rwlock_unlock(&s->users_lock);
	cd_users_free(old_users);
	cd_psk_free(old_psk);
	pthread_mutex_lock(&s->lock);
	for (struct conn *c = s->conns; c; c = c->next) {
		bool ro = false;

		if (!c->serving || c->done || c->fd < 0)
			continue;
		if (cd_nbd_allowed(&c->nbd, c->nbd.exp, &ro) && (!ro || c->nbd.readonly))
			continue;
		cd_log(s->ctx, CDISK_LOG_INFO, "closing a connection of %s to export '%s': "
		       "its access was revoked", c->user, c->nbd.exp->name);
		shutdown(c->fd, SHUT_RDWR);
		closed++;
	}
	pthread_mutex_unlock(&s->lock);
	cd_log(s->ctx, CDISK_LOG_INFO, "reloaded%s%s%s%s; %u connection%s closed",
	       s->users_path ? " users from '" : "", s->users_path ? s->users_path : "",
	       s->users_path ? "'" : "", s->psk_path ? " and keys" : "", closed,
	       closed == 1 ? "" : "s");
}

/* TLS for NBD connections (GnuTLS): X.509 certificates laid out as nbdkit
 * and QEMU lay them out, in one folder: server-cert.pem, server-key.pem,
 * and ca-cert.pem for checking clients' certificates; and pre-shared keys
 * from a psktool file (--tls-psk), the PSK identity naming the user. */
#include <gnutls/gnutls.h>
#include <gnutls/socket.h>
#include <gnutls/x509.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "cdisk.h"
#include "ctx.h"
#include "server.h"
#include "users.h"

/* GnuTLS's NORMAL with AES-128-GCM first, chosen by the server: TLS
 * 1.3's mandatory cipher, and a quarter cheaper than AES-256-GCM (which
 * NORMAL puts first) for both ends of a connection that moves GiB/s.
 * The same ciphers, groups and key exchanges as NORMAL (the rest added
 * back by "ALL", whatever this GnuTLS has), only in another order; X25519
 * first among the groups, as clients send their key share for it
 * (NORMAL's P-256 first would cost them a retry with the server
 * choosing).  [serve] tls_priority replaces it. */
#define CD_TLS_PRIORITY "NORMAL:%SERVER_PRECEDENCE:-CIPHER-ALL:+AES-128-GCM:" \
	"+CIPHER-ALL:-GROUP-ALL:+GROUP-X25519:+GROUP-ALL"
/* TLS's largest plaintext record (RFC 8446, 5.1). */
#define TLS_RECORD_MAX 16384
/* As nbdkit and QEMU offer PSK: their clients ask for these.  With the
 * default, first: a TLS 1.2 client that offers both keeps its PSK
 * identity (its user name) under the server's order. */
#define PSK_KEY_EXCHANGE ":+ECDHE-PSK:+DHE-PSK:+PSK"
#define PSK_KEY_EXCHANGE_FIRST ":-KX-ALL:+ECDHE-PSK:+DHE-PSK:+PSK:+KX-ALL"

struct cd_tls {
	gnutls_certificate_credentials_t creds;   /* NULL: keys only */
	gnutls_psk_server_credentials_t psk;      /* NULL: certificates only */
	gnutls_priority_t prio, prio_psk;         /* prio_psk: once keys are on */
	struct cdisk_server *srv;                 /* whose keys psk_key() reads */
	bool verify_peer;
};

static int file_in(struct cdisk_ctx *ctx, const char *dir, const char *name, char *out,
		   size_t len)
{
	struct stat st;

	snprintf(out, len, "%s/%s", dir, name);
	if (stat(out, &st) < 0)
		return cd_error(ctx, -errno, "cannot read TLS file '%s': %s", out,
				strerror(errno));
	return 0;
}

/* The string adds a PSK key exchange ("+PSK", "+ECDHE-PSK", any case). */
static bool adds_psk(const char *priority)
{
	const char *tok = priority;

	while (tok) {
		size_t len = strcspn(tok, ":");

		if (len > 4 && tok[0] == '+' && !strncasecmp(tok + len - 3, "PSK", 3))
			return true;
		tok = tok[len] ? tok + len + 1 : NULL;
	}
	return false;
}

/* The configured priority (psk: with PSK's key exchanges, unless the
 * administrator's string adds them itself). */
static int priority_init(struct cdisk_ctx *ctx, bool psk, gnutls_priority_t *out)
{
	const char *own = ctx->cfg.tls_priority, *more = "";
	const char *whose = own[0] ? "[serve] tls_priority" : "the default TLS priority";
	char text[sizeof(ctx->cfg.tls_priority) + sizeof(CD_TLS_PRIORITY) +
		  sizeof(PSK_KEY_EXCHANGE_FIRST)];
	const char *where = NULL;
	int g;

	if (psk)
		more = !own[0] ? PSK_KEY_EXCHANGE_FIRST : adds_psk(own) ? "" :
			PSK_KEY_EXCHANGE;
	snprintf(text, sizeof(text), "%s%s", own[0] ? own : CD_TLS_PRIORITY, more);
	g = gnutls_priority_init(out, text, &where);
	if (g == GNUTLS_E_INVALID_REQUEST)
		return cd_error(ctx, -EINVAL, "%s '%s': not a GnuTLS priority string (at "
				"'%s')", whose, text, where ? where : "");
	if (g < 0)
		return cd_error(ctx, -EINVAL, "%s '%s': %s", whose, text, gnutls_strerror(g));
	return 0;
}

int cd_tls_load(struct cdisk_ctx *ctx, const char *dir, bool verify_peer,
		struct cd_tls **out)
{
	char cert[4096], key[4096], ca[4096];
	struct cd_tls *t = calloc(1, sizeof(*t));
	int r, g;

	if (!t)
		return cd_error(ctx, -ENOMEM, "out of memory");
	t->verify_peer = verify_peer;
	r = priority_init(ctx, false, &t->prio);
	if (r < 0)
		goto fail;
	if (!dir) {
		*out = t;
		return 0;
	}
	r = file_in(ctx, dir, "server-cert.pem", cert, sizeof(cert));
	if (r == 0)
		r = file_in(ctx, dir, "server-key.pem", key, sizeof(key));
	if (r == 0 && verify_peer)
		r = file_in(ctx, dir, "ca-cert.pem", ca, sizeof(ca));
	if (r < 0)
		goto fail;
	g = gnutls_certificate_allocate_credentials(&t->creds);
	if (g < 0) {
		r = cd_error(ctx, -ENOMEM, "TLS: %s", gnutls_strerror(g));
		goto fail;
	}
	g = gnutls_certificate_set_x509_key_file(t->creds, cert, key, GNUTLS_X509_FMT_PEM);
	if (g < 0) {
		r = cd_error(ctx, -EINVAL, "cannot use '%s' with '%s': %s", cert, key,
			     gnutls_strerror(g));
		goto fail;
	}
	if (verify_peer) {
		g = gnutls_certificate_set_x509_trust_file(t->creds, ca, GNUTLS_X509_FMT_PEM);
		if (g <= 0) {
			r = cd_error(ctx, -EINVAL, "cannot use '%s' as a CA: %s", ca,
				     g < 0 ? gnutls_strerror(g) : "no certificate in it");
			goto fail;
		}
	}
	*out = t;
	return 0;
fail:
	cd_tls_free(t);
	return r;
}

/* What the PSK callback needs during one handshake, and what it found. */
struct psk_ask {
	struct cdisk_server *srv;
	char missing[CD_USER_NAME_MAX + 1];   /* an identity without a key */
};

/* GnuTLS asks for the key of the identity the client sent (during the
 * handshake only: the session's pointer is the wire's afterwards).  The key file
 * of the moment answers, so that a reload takes effect at the next
 * handshake. */
static int psk_key(gnutls_session_t session, const char *name, gnutls_datum_t *key)
{
	struct psk_ask *ask = gnutls_session_get_ptr(session);
	struct cdisk_server *s = ask ? ask->srv : NULL;
	const struct cd_psk_entry *e;
	int r = -1;

	if (!s)
		return -1;
	pthread_rwlock_rdlock(&s->users_lock);
	e = cd_psk_find(s->psk, name);
	if (e && (key->data = gnutls_malloc(e->len))) {
		memcpy(key->data, e->key, e->len);
		key->size = (unsigned)e->len;
		r = 0;
	}
	pthread_rwlock_unlock(&s->users_lock);
	if (r < 0)
		snprintf(ask->missing, sizeof(ask->missing), "%s", name);
	return r;
}

int cd_tls_enable_psk(struct cdisk_ctx *ctx, struct cd_tls *t, struct cdisk_server *s)
{
	int g;

	t->srv = s;
	if (t->psk)
		return 0;
	if (!t->prio_psk && (g = priority_init(ctx, true, &t->prio_psk)) < 0)
		return g;
	g = gnutls_psk_allocate_server_credentials(&t->psk);
	if (g < 0)
		return cd_error(ctx, -ENOMEM, "TLS: %s", gnutls_strerror(g));
	gnutls_psk_set_server_credentials_function(t->psk, psk_key);
	gnutls_psk_set_server_known_dh_params(t->psk, GNUTLS_SEC_PARAM_MEDIUM);
	return 0;
}

void cd_tls_free(struct cd_tls *t)
{
	if (!t)
		return;
	if (t->creds)
		gnutls_certificate_free_credentials(t->creds);
	if (t->psk)
		gnutls_psk_free_server_credentials(t->psk);
	if (t->prio)
		gnutls_priority_deinit(t->prio);
	if (t->prio_psk)
		gnutls_priority_deinit(t->prio_psk);
	free(t);
}

/* The server's side of a TLS handshake on fd, within fd's timeouts.  On
 * failure why says what went wrong, for the log. */
/* The common name of the (already verified) client certificate. */
static void peer_common_name(gnutls_session_t s, char *out, size_t len)
{
	unsigned n = 0;
	const gnutls_datum_t *certs = gnutls_certificate_get_peers(s, &n);
	gnutls_x509_crt_t crt;
	size_t size = len;

	out[0] = '\0';
	if (!certs || !n || gnutls_x509_crt_init(&crt) < 0)
		return;
	if (gnutls_x509_crt_import(crt, &certs[0], GNUTLS_X509_FMT_DER) < 0 ||
	    gnutls_x509_crt_get_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, 0, out,
					  &size) < 0)
		out[0] = '\0';
	gnutls_x509_crt_deinit(crt);
}

/*
 * What GnuTLS reads from the socket after the handshake and writes to it,
 * and the lock on the session's keys.
 *
 * GnuTLS asks for a record's 5-byte header, then for its body: two
 * receives a record, 130 a mebibyte of writes, and two a small request.
 * The wire receives the body GnuTLS asks for and, in the same call, up to
 * WIRE_STAGE bytes more into its own buffer, from which the next header
 * (or the next few small records) is served: one receive a large record,
 * and one for many small ones.  The stage is small so that little is
 * copied twice.
 *
 * One thread receives and workers send, one at a time, as GnuTLS allows;
 * but a TLS 1.3 key update that the receiver takes changes the keys the
 * sender encrypts with (a client asking for one broke the replies being
 * sent).  So decrypting and encrypting take turns under the wire's lock,
 * and neither waits for the network under it: the wire receives without
 * waiting (a record not wholly come stays in GnuTLS's buffer), and what
 * the socket does not take at once of a record GnuTLS sends waits in the
 * wire's own buffer, flushed before the next record, polling outside the
 * lock.  GnuTLS never has a record half sent: were a key update asking
 * for ours taken then, GnuTLS would count the rest of that record as the
 * update it owes in answer, and send the data twice.
 */
#define WIRE_STAGE 1024

struct tls_wire {
	pthread_mutex_t lock;        /* one of gnutls_record_recv and _send */
	unsigned waiting;            /* threads waiting for the lock (atomic) */
	int fd;
	bool pulls, pushes;          /* through the wire (not kTLS) */
	bool broken;                 /* a push failed: the stream cannot go on */
	size_t pos, len;             /* the stage's unread bytes */
	uint8_t stage[WIRE_STAGE];
	uint8_t *out;                /* sent records the socket has not taken */
	size_t out_pos, out_len, out_cap;
};

static ssize_t wire_pull(gnutls_transport_ptr_t p, void *data, size_t size)
{
	struct tls_wire *w = p;
	struct iovec iov[2] = { { data, size }, { w->stage, sizeof(w->stage) } };
	struct msghdr m = { .msg_iov = iov, .msg_iovlen = 2 };
	ssize_t n;

	if (w->pos < w->len) {
		n = (ssize_t)(w->len - w->pos < size ? w->len - w->pos : size);
		memcpy(data, w->stage + w->pos, (size_t)n);
		w->pos += (size_t)n;
		return n;
	}
	/* errno is this thread's own, and GnuTLS reads it (EAGAIN: the
	 * record has not wholly come); the session's error slot is shared
	 * with the senders. */
	n = recvmsg(w->fd, &m, MSG_DONTWAIT);
	if (n < 0 || (size_t)n <= size)
		return n;
	w->pos = 0;
	w->len = (size_t)n - size;
	return (ssize_t)size;
}

/* Takes the whole record, always: what the socket does not take at once
 * waits in the wire's buffer (under the lock, as GnuTLS calls it). */
static ssize_t wire_push(gnutls_transport_ptr_t p, const giovec_t *iov, int n)
{
	struct tls_wire *w = p;
	struct msghdr m = { .msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)n };
	size_t total = 0, skip;
	ssize_t sent = 0;

	if (w->broken) {
		errno = EPIPE;
		return -1;
	}
	for (int i = 0; i < n; i++)
		total += iov[i].iov_len;
	if (w->out_pos == w->out_len) {
		w->out_pos = w->out_len = 0;
		sent = sendmsg(w->fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
			w->broken = true;
			return -1;
		}
		if (sent < 0)
			sent = 0;
	}
	if ((size_t)sent == total)
		return sent;
	if (w->out_len + total - (size_t)sent > w->out_cap) {
		size_t cap = w->out_len + total - (size_t)sent + TLS_RECORD_MAX;
		uint8_t *more = realloc(w->out, cap);

		if (!more) {
			/* Part of the record may be on the wire: GnuTLS would
			 * send it again. */
			w->broken = true;
			errno = ENOMEM;
			return -1;
		}
		w->out = more;
		w->out_cap = cap;
	}
	skip = (size_t)sent;
	for (int i = 0; i < n; i++) {
		size_t from = skip < iov[i].iov_len ? skip : iov[i].iov_len;

		memcpy(w->out + w->out_len, (uint8_t *)iov[i].iov_base + from,
		       iov[i].iov_len - from);
		w->out_len += iov[i].iov_len - from;
		skip -= from;
	}
	return (ssize_t)total;
}

/* Turns, which the lock alone does not give: a thread that let it go and
 * takes it again at once nearly always beats one woken to take it.  So
 * one that finds another waiting lets it in first (a record each). */
#define TURN_YIELDS 64

static void wire_lock(struct tls_wire *w)
{
	for (int i = 0; i < TURN_YIELDS && __atomic_load_n(&w->waiting, __ATOMIC_ACQUIRE); i++)
		sched_yield();
	if (pthread_mutex_trylock(&w->lock) == 0)
		return;
	__atomic_add_fetch(&w->waiting, 1, __ATOMIC_ACQ_REL);
	pthread_mutex_lock(&w->lock);
	__atomic_sub_fetch(&w->waiting, 1, __ATOMIC_ACQ_REL);
}

static void wire_unlock(struct tls_wire *w)
{
	pthread_mutex_unlock(&w->lock);
}

/* Under the lock: 0 once the wire's buffer is empty, 1 while the socket
 * takes no more, or a negative errno. */
static int wire_flush(struct tls_wire *w)
{
	while (w->out_pos < w->out_len) {
		ssize_t n = send(w->fd, w->out + w->out_pos, w->out_len - w->out_pos,
				 MSG_DONTWAIT | MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errno == EAGAIN || errno == EWOULDBLOCK ? 1 : -errno;
		w->out_pos += (size_t)n;
	}
	w->out_pos = w->out_len = 0;
	return 0;
}

/* The session's pointer is free after the handshake (psk_ask's before). */
static struct tls_wire *wire_of(gnutls_session_t s)
{
	return gnutls_session_get_ptr(s);
}

/* Where the kernel took the records over (kTLS), GnuTLS uses the
 * descriptor itself in that direction; received key updates then end the
 * connection (GnuTLS 3.7 cannot take them there). */
static int wire_attach(gnutls_session_t s, int fd)
{
	struct tls_wire *w = calloc(1, sizeof(*w));
	pthread_mutexattr_t spin;
	int ktls = (int)gnutls_transport_is_ktls_enabled(s);

	if (!w)
		return -ENOMEM;
	/* Turns last microseconds: waiting a little beats sleeping. */
	pthread_mutexattr_init(&spin);
	pthread_mutexattr_settype(&spin, PTHREAD_MUTEX_ADAPTIVE_NP);
	pthread_mutex_init(&w->lock, &spin);
	pthread_mutexattr_destroy(&spin);
	w->fd = fd;
	w->pulls = !(ktls & GNUTLS_KTLS_RECV);
	w->pushes = !(ktls & GNUTLS_KTLS_SEND);
	gnutls_session_set_ptr(s, w);
	gnutls_transport_set_ptr2(s, w->pulls ? w : (gnutls_transport_ptr_t)(intptr_t)fd,
				  w->pushes ? w : (gnutls_transport_ptr_t)(intptr_t)fd);
	if (w->pulls)
		gnutls_transport_set_pull_function(s, wire_pull);
	if (w->pushes)
		gnutls_transport_set_vec_push_function(s, wire_push);
	return 0;
}

/* Wait until fd is readable (POLLIN) or writable, within the socket's
 * timeout for that direction. */
static int wire_wait(struct tls_wire *w, short events)
{
	struct pollfd pfd = { .fd = w->fd, .events = events };
	struct timeval tv = { 0 };
	socklen_t tv_len = sizeof(tv);
	int ms = -1, n;

	if (getsockopt(w->fd, SOL_SOCKET, events == POLLIN ? SO_RCVTIMEO : SO_SNDTIMEO, &tv,
		       &tv_len) == 0 && (tv.tv_sec || tv.tv_usec))
		ms = (int)(tv.tv_sec * 1000 + tv.tv_usec / 1000);
	do
		n = poll(&pfd, 1, ms);
	while (n < 0 && errno == EINTR);
	return n > 0 ? 0 : n == 0 ? -ETIMEDOUT : -errno;
}

int cd_tls_accept(struct cd_tls *t, int fd, gnutls_session_t *out, char *peer_name,
		  size_t peer_len, bool *psk, char *why, size_t len)
{
	struct psk_ask ask = { .srv = t->srv };
	gnutls_session_t s;
	unsigned status = 0;
	int g = gnutls_init(&s, GNUTLS_SERVER);

	*psk = false;
	if (g < 0)
		goto fail_early;
	gnutls_session_set_ptr(s, &ask);
	g = gnutls_priority_set(s, t->psk ? t->prio_psk : t->prio);
	if (g < 0 ||
	    (t->creds && (g = gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, t->creds)) < 0) ||
	    (t->psk && (g = gnutls_credentials_set(s, GNUTLS_CRD_PSK, t->psk)) < 0))
		goto fail;
	if (t->creds)
		gnutls_certificate_server_set_request(s, t->verify_peer ? GNUTLS_CERT_REQUIRE
									: GNUTLS_CERT_IGNORE);
	gnutls_transport_set_int(s, fd);
	do
		g = gnutls_handshake(s);
	while (g == GNUTLS_E_INTERRUPTED);
	/* ask lives on this stack only. */
	gnutls_session_set_ptr(s, NULL);
	if (g < 0)
		goto fail;
	if (gnutls_auth_get_type(s) == GNUTLS_CRD_PSK) {
		const char *name = gnutls_psk_server_get_username(s);
		snprintf(peer_name, peer_len, "%s", name ? name : "");
		*psk = true;
		goto attach;
	}
	if (t->verify_peer) {
		g = gnutls_certificate_verify_peers3(s, NULL, &status);
		if (g == 0 && status != 0) {
			gnutls_datum_t text;
			if (gnutls_certificate_verification_status_print(
				    status, GNUTLS_CRT_X509, &text, 0) == 0) {
				snprintf(why, len, "client certificate refused: %s", text.data);
				gnutls_free(text.data);
			} else {
				snprintf(why, len, "client certificate refused");
			}
			gnutls_deinit(s);
			return -EACCES;
		}
		if (g < 0)
			goto fail;
	}
	if (t->verify_peer)
		peer_common_name(s, peer_name, peer_len);
	else
		peer_name[0] = '\0';
attach:
	if (wire_attach(s, fd) < 0) {
		gnutls_deinit(s);
		snprintf(why, len, "out of memory");
		return -ENOMEM;
	}
	*out = s;
	return 0;
fail:
	if (ask.missing[0]) {
		/* "Error in password/key file" says less than this. */
		snprintf(why, len, "TLS handshake failed: no pre-shared key named '%s'",
			 ask.missing);
		gnutls_deinit(s);
		return -EPROTO;
	}
	gnutls_deinit(s);
fail_early:
	snprintf(why, len, "TLS handshake failed: %s", gnutls_strerror(g));
	return -EPROTO;
}

void cd_tls_close(gnutls_session_t s)
{
	struct tls_wire *w;

	if (!s)
		return;
	w = wire_of(s);
	/* Say goodbye without waiting for the client's answer (nor for the
	 * socket to take it). */
	gnutls_bye(s, GNUTLS_SHUT_WR);
	if (w)
		wire_flush(w);
	gnutls_deinit(s);
	if (w) {
		pthread_mutex_destroy(&w->lock);
		free(w->out);
		free(w);
	}
}

ssize_t cd_tls_recv_some(gnutls_session_t s, void *buf, size_t len, bool wait)
{
	struct tls_wire *w = wire_of(s);

	/* kTLS's receives wait: only what GnuTLS holds is taken at once. */
	if (!w->pulls && !wait && gnutls_record_check_pending(s) == 0)
		return 0;
	for (;;) {
		ssize_t n;
		int r;

		if (!w->pulls) {
			n = gnutls_record_recv(s, buf, len);
		} else {
			wire_lock(w);
			n = gnutls_record_recv(s, buf, len);
			wire_unlock(w);
		}
		if (n > 0)
			return n;
		if (n == 0)
			return -ECONNRESET;
		if (n == GNUTLS_E_INTERRUPTED)
			continue;
		if (n != GNUTLS_E_AGAIN)
			return -EIO;
		/* Without kTLS: a record has not wholly come, or one without
		 * data (a key update) came. */
		if (!w->pulls)
			return wait ? -ETIMEDOUT : 0;
		if (!wait)
			return 0;
		if (w->pos < w->len || gnutls_record_check_pending(s) > 0)
			continue;
		r = wire_wait(w, POLLIN);
		if (r < 0)
			return r;
	}
}

int cd_tls_recv(gnutls_session_t s, void *buf, size_t len)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t n = cd_tls_recv_some(s, p, len, true);

		if (n < 0)
			return (int)n;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Every byte on its way to the socket once this returns, or without
 * wait, what goes without waiting: records are taken until the socket
 * takes no more of the wire's buffer.  How many bytes were taken, or a
 * negative errno.  The wire's lock is let go between records, so that
 * the reader takes its turns. */
static ssize_t send_all(gnutls_session_t s, const uint8_t *p, size_t left, bool wait)
{
	struct tls_wire *w = wire_of(s);
	size_t max = gnutls_record_get_max_size(s), taken = 0;
	int r = 0;

	/* kTLS's sends are the kernel's, and wait there: not under the lock. */
	if (w->pushes)
		wire_lock(w);
	while (r == 0 && (left || w->out_pos < w->out_len)) {
		ssize_t g;

		if (w->out_pos < w->out_len) {
			r = wire_flush(w);
			if (r == 1 && !wait)
				break;
			if (r == 1) {
				wire_unlock(w);
				r = wire_wait(w, POLLOUT);
				wire_lock(w);
			}
			continue;
		}
		/* One record a call: GnuTLS copies all it is given when it
		 * owes a key update first. */
		g = gnutls_record_send(s, p, left < max ? left : max);
		if (g == GNUTLS_E_INTERRUPTED)
			continue;
		if (g < 0) {
			/* Without the wire (kTLS), the socket's send timeout. */
			r = g == GNUTLS_E_AGAIN ? -ETIMEDOUT : -EIO;
			break;
		}
		p += g;
		left -= (size_t)g;
		taken += (size_t)g;
		if (w->pushes && left) {
			wire_unlock(w);
			wire_lock(w);
		}
	}
	if (w->pushes)
		wire_unlock(w);
	return r < 0 ? r : (ssize_t)taken;
}

/*
 * Replies (one, or several that piled up) in full records: whatever
 * starts a record is gathered into one buffer, and a payload's whole
 * records in the middle are encrypted from where they lie.  Corking
 * instead copied every byte into GnuTLS's cork buffer first: a tenth of
 * the server's time on 1 MiB reads.  How many bytes were taken: without
 * wait, it stops once the socket takes no more, where a record ends.
 */
static ssize_t send_iov(gnutls_session_t s, const struct iovec *iov, int n, bool wait)
{
	uint8_t record[TLS_RECORD_MAX];
	size_t max = gnutls_record_get_max_size(s), fill = 0, taken = 0;
	ssize_t g;

	if (max > sizeof(record))
		max = sizeof(record);
	for (int i = 0; i < n; i++) {
		const uint8_t *p = iov[i].iov_base;
		size_t left = iov[i].iov_len;

		while (left) {
			size_t want;

			if (!fill && left >= max) {
				want = left - left % max;
				g = send_all(s, p, want, wait);
				if (g > 0) {
					p += g;
					left -= (size_t)g;
				}
			} else {
				size_t take = left < max - fill ? left : max - fill;

				memcpy(record + fill, p, take);
				fill += take;
				p += take;
				left -= take;
				if (fill < max)
					continue;
				want = fill;
				fill = 0;
				g = send_all(s, record, want, wait);
			}
			if (g < 0)
				return g;
			taken += (size_t)g;
			if ((size_t)g < want)
				return (ssize_t)taken;
		}
	}
	if (fill) {
		g = send_all(s, record, fill, wait);
		if (g < 0)
			return g;
		taken += (size_t)g;
	}
	return (ssize_t)taken;
}

int cd_tls_send_iov(gnutls_session_t s, const struct iovec *iov, int n)
{
	ssize_t r;

	/* Nothing to send: what the wire keeps from cd_tls_send_some. */
	if (!n)
		return (int)send_all(s, NULL, 0, true);
	r = send_iov(s, iov, n, true);
	return r < 0 ? (int)r : 0;
}

ssize_t cd_tls_send_some(gnutls_session_t s, const struct iovec *iov, int n, bool *more)
{
	struct tls_wire *w = wire_of(s);
	size_t total = 0;
	ssize_t r;

	/* kTLS sends wait in the kernel: all of it is left to the caller's
	 * cd_tls_send_iov. */
	if (!w->pushes) {
		*more = true;
		return 0;
	}
	r = send_iov(s, iov, n, false);
	for (int i = 0; i < n; i++)
		total += iov[i].iov_len;
	*more = r >= 0 && (size_t)r < total;
	if (r >= 0 && !*more && w->pushes) {
		wire_lock(w);
		*more = w->out_pos < w->out_len;
		wire_unlock(w);
	}
	return r;
}

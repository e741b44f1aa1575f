/* Internal: the NBD protocol (fixed newstyle) as one connection speaks
 * it: the handshake, request headers, and requests carried out on the
 * export with their replies encoded.  It starts no thread and touches no
 * socket: bytes come and go through the callbacks of struct cd_nbd_ops,
 * which the connection (nbd-conn.c) or a test gives it. */
#ifndef CDISK_NBD_PROTO_H
#define CDISK_NBD_PROTO_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "cdisk.h"
#include "server.h"

/* A request's header bytes on the wire. */
#define CD_NBD_REQUEST_SIZE 28u

/* One request as the client sent it. */
struct cd_nbd_req {
	uint16_t flags, type;
	uint64_t cookie, offset;
	uint32_t length;
	uint8_t *data;          /* a write's payload, a read's data (from buf_get) */
	int result;             /* 0, or the negative errno replied (statistics) */
};

struct cd_nbd_session;
struct cd_export;

struct cd_nbd_ops {
	/* All len bytes, or < 0. */
	int (*recv)(struct cd_nbd_session *s, void *buf, size_t len);
	int (*send_iov)(struct cd_nbd_session *s, struct iovec *iov, int n);
	/* STARTTLS was acknowledged: the TLS handshake, after which every
	 * byte is encrypted.  0, with s->tls and s->tls_name set, or < 0. */
	int (*starttls)(struct cd_nbd_session *s);
	/* A buffer for a read's data, kept in q->data until the reply. */
	void *(*buf_get)(struct cd_nbd_session *s, size_t len);
	/* A reply, whole: iov[] may point at q->data, which must stay until
	 * it is sent, and at the stack, which must be copied.  Takes q. */
	int (*reply)(struct cd_nbd_session *s, struct cd_nbd_req *q, struct iovec *iov,
		     int n);
	/* NBD_OPT_GO (or EXPORT_NAME) for e, which s may open: may this client
	 * have one more connection?  0, or < 0 with why.  NULL: always. */
	int (*admit)(struct cd_nbd_session *s, struct cd_export *e, char *why, size_t len);
};

/* What the protocol knows of a connection: who the client is, and what
 * it negotiated. */
struct cd_nbd_session {
	const struct cd_nbd_ops *ops;
	struct cdisk_server *srv;
	bool tcp;
	bool tls;               /* STARTTLS done */
	char tls_name[256];     /* the verified client certificate's name, */
	bool psk;               /* or the PSK identity */
	bool has_uid;           /* a unix socket peer, whose uid is known */
	uid_t uid;
	struct cd_export *exp;  /* chosen by the handshake */
	bool readonly;          /* exp, or this client, may not write */
	bool structured, meta_alloc;
};

/* Returns 1 when the connection enters transmission (s->exp is set), 0 or
 * < 0 to close. */
int cd_nbd_handshake(struct cd_nbd_session *s);
/* Decode a request header (CD_NBD_REQUEST_SIZE bytes).  1 for a request
 * (whose payload, for a write, follows), -1 when the client said goodbye
 * or the stream cannot be followed. */
int cd_nbd_parse_request(const uint8_t *h, struct cd_nbd_req *q);
/* Whether s may open e, as the users file and the export's own lists
 * say; *readonly when it may only read.  Takes s->srv->users_lock. */
bool cd_nbd_allowed(const struct cd_nbd_session *s, const struct cd_export *e,
		    bool *readonly);
/* The users file's name for s's client ("" when none). */
void cd_nbd_user_name(const struct cd_nbd_session *s, char *out, size_t len);
/* Carry q out on s->exp and reply (which takes q). */
int cd_nbd_execute(struct cd_nbd_session *s, struct cd_nbd_req *q);
/* The same for a read that can be answered without waiting (the page
 * cache, see cd_nowait): true when done and replied; false when it would
 * wait, and q is the caller's still, for cd_nbd_execute. */
bool cd_nbd_try_read(struct cd_nbd_session *s, struct cd_nbd_req *q);

#endif

/* The NBD protocol, fixed newstyle, as the NBD project documents it
 * (doc/proto.md): the handshake's options, request headers, requests
 * carried out on the export and their replies encoded.  No threads and
 * no sockets: every byte goes through the session's callbacks
 * (nbd-proto.h), so the connection code (nbd-conn.c) decides which
 * thread runs this and how replies leave.
 * Every export is one shared disk handle, so a flush on any connection
 * covers the writes of all of them: multi-conn is safe and advertised. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "cdisk.h"
#include "nbd-proto.h"
#include "nbd.h"
#include "pool.h"
#include "users.h"
#include "util.h"

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

static int send_buf(struct cd_nbd_session *s, const void *buf, size_t len)
{
	struct iovec iov = { (void *)buf, len };

	return s->ops->send_iov(s, &iov, 1);
}

/* ---- exports ---- */

static uint16_t export_flags(bool readonly)
{
	uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
		     NBD_FLAG_CAN_MULTI_CONN | NBD_FLAG_SEND_DF;

	if (readonly)
		f |= NBD_FLAG_READ_ONLY;
	else
		f |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES |
		     NBD_FLAG_SEND_FAST_ZERO;
	return f;
}

/* The user of the users file this client is: by its PSK identity (whose
 * key must still be in the key file), its certificate's name, or its uid
 * on the unix socket.  Under users_lock. */
static const struct cd_user *user_of(const struct cd_nbd_session *s)
{
	const struct cdisk_server *srv = s->srv;

	if (s->tls && s->psk)
		return cd_psk_find(srv->psk, s->tls_name) ?
		       cd_users_find(srv->users, s->tls_name) : NULL;
	if (s->tls && s->tls_name[0])
		return cd_users_by_certificate(srv->users, s->tls_name);
	if (s->has_uid)
		return cd_users_by_uid(srv->users, s->uid);
	return NULL;
}

void cd_nbd_user_name(const struct cd_nbd_session *s, char *out, size_t len)
{
	const struct cd_user *u;

	pthread_rwlock_rdlock(&s->srv->users_lock);
	u = s->srv->users ? user_of(s) : NULL;
	snprintf(out, len, "%s", u ? u->name : "");
	pthread_rwlock_unlock(&s->srv->users_lock);
}

/* Whether this connection may use e: a verified certificate name in its
 * clients, or a unix peer in its users, when it has either list. */
static bool export_allows(const struct cd_nbd_session *s, const struct cd_export *e)
{
	const struct cd_access *a = &e->access;

	if (!a->nclients && !a->nusers)
		return true;
	for (size_t i = 0; s->tls && !s->psk && s->tls_name[0] && i < a->nclients; i++)
		if (!strcmp(a->clients[i], s->tls_name))
			return true;
	for (size_t i = 0; s->has_uid && i < a->nusers; i++)
		if (a->users[i] == s->uid)
			return true;
	return false;
}

/* With a users file, an export is open only to the users it names, and
 * the export's own lists narrow that further. */
bool cd_nbd_allowed(const struct cd_nbd_session *s, const struct cd_export *e,
		    bool *readonly)
{
	const struct cd_user *u;
	bool ok = true, ro = false;

	pthread_rwlock_rdlock(&s->srv->users_lock);
	if (s->srv->users) {
		u = user_of(s);
		ok = u && cd_user_may_open(u, e->name);
		ro = u && u->read_only;
	}
	pthread_rwlock_unlock(&s->srv->users_lock);
	if (readonly)
		*readonly = e->readonly || ro;
	return ok && export_allows(s, e);
}


/* NBD allows at most 64 KiB as the minimum block size; larger blocks
 * take smaller requests by read-modify-write. */
static uint32_t min_block(const struct cd_export *e)
{
	uint32_t bs = cdisk_block_size(e->disk);
	return bs > 65536 ? 65536 : bs;
}

/* ---- handshake ---- */

static int opt_reply(struct cd_nbd_session *s, uint32_t opt, uint32_t type,
		     const void *data, uint32_t len)
{
	uint8_t h[20];
	struct iovec iov[2] = { { h, sizeof(h) }, { (void *)data, len } };

	put_be64(h, NBD_REP_MAGIC);
	put_be32(h + 8, opt);
	put_be32(h + 12, type);
	put_be32(h + 16, len);
	return s->ops->send_iov(s, iov, len ? 2 : 1);
}

static int opt_error(struct cd_nbd_session *s, uint32_t opt, uint32_t type, const char *fmt, ...)
	CD_PRINTF(4, 5);

static int opt_error(struct cd_nbd_session *s, uint32_t opt, uint32_t type, const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return opt_reply(s, opt, type, msg, (uint32_t)strlen(msg));
}

/* With a users file, an export refused is answered as one missing: a
 * user learns nothing of the others' exports. */
static int refuse(struct cd_nbd_session *s, uint32_t opt, const char *name, bool exists)
{
	if (!exists || s->srv->users_on)
		return opt_error(s, opt, NBD_REP_ERR_UNKNOWN, "no export named '%.200s'", name);
	return opt_error(s, opt, NBD_REP_ERR_POLICY, "export '%.200s' is not open "
			 "to this client", name);
}

static int send_info_export(struct cd_nbd_session *s, uint32_t opt, const struct cd_export *e,
			    bool readonly)
{
	uint8_t b[12];

	put_be16(b, NBD_INFO_EXPORT);
	put_be64(b + 2, cdisk_size(e->disk));
	put_be16(b + 10, export_flags(readonly));
	return opt_reply(s, opt, NBD_REP_INFO, b, sizeof(b));
}

static int send_info_block_size(struct cd_nbd_session *s, uint32_t opt, const struct cd_export *e)
{
	uint8_t b[14];
	uint32_t pref = cdisk_block_size(e->disk) < 4096 ? 4096 : cdisk_block_size(e->disk);

	put_be16(b, NBD_INFO_BLOCK_SIZE);
	put_be32(b + 2, min_block(e));
	put_be32(b + 6, pref);
	put_be32(b + 10, NBD_MAX_PAYLOAD);
	return opt_reply(s, opt, NBD_REP_INFO, b, sizeof(b));
}

static int send_info_name(struct cd_nbd_session *s, uint32_t opt, const struct cd_export *e)
{
	size_t n = strlen(e->name);
	uint8_t *b = malloc(2 + n);
	int r;

	if (!b)
		return -ENOMEM;
	put_be16(b, NBD_INFO_NAME);
	memcpy(b + 2, e->name, n);
	r = opt_reply(s, opt, NBD_REP_INFO, b, (uint32_t)(2 + n));
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
static int opt_info_go(struct cd_nbd_session *s, uint32_t opt, const uint8_t *p, uint32_t len)
{
	const uint8_t *end = p + len;
	char name[NBD_MAX_STRING + 1];
	struct cd_export *e;
	bool want_name = false, readonly;
	uint16_t nreq;
	int r;

	if (!take_string(&p, end, name, sizeof(name)) || end - p < 2)
		return opt_error(s, opt, NBD_REP_ERR_INVALID, "malformed request");
	nreq = get_be16(p);
	p += 2;
	if ((size_t)(end - p) != (size_t)nreq * 2)
		return opt_error(s, opt, NBD_REP_ERR_INVALID, "malformed request");
	for (uint16_t i = 0; i < nreq; i++)
		if (get_be16(p + 2 * i) == NBD_INFO_NAME)
			want_name = true;
	e = cd_server_get_export(s->srv, name);
	if (!e || !cd_nbd_allowed(s, e, &readonly)) {
		cd_server_put_export(e);
		return refuse(s, opt, name, e != NULL);
	}
	if (opt == NBD_OPT_GO && s->ops->admit) {
		char why[256];
		if (s->ops->admit(s, e, why, sizeof(why)) < 0) {
			cd_server_put_export(e);
			return opt_error(s, opt, NBD_REP_ERR_POLICY, "%s", why);
		}
	}
	/* Block sizes are always sent: our minimum is the disk's block. */
	r = send_info_export(s, opt, e, readonly);
	if (r == 0)
		r = send_info_block_size(s, opt, e);
	if (r == 0 && want_name)
		r = send_info_name(s, opt, e);
	if (r == 0)
		r = opt_reply(s, opt, NBD_REP_ACK, NULL, 0);
	if (r < 0 || opt == NBD_OPT_INFO) {
		cd_server_put_export(e);
		return r;
	}
	s->exp = e;   /* held until the connection ends */
	s->readonly = readonly;
	return 1;
}

static int list_one(struct cd_nbd_session *s, const struct cd_export *e)
{
	size_t n = strlen(e->name);
	uint8_t *b;
	int r;

	if (!cd_nbd_allowed(s, e, NULL))
		return 0;
	b = malloc(4 + n);
	if (!b)
		return -ENOMEM;
	put_be32(b, (uint32_t)n);
	memcpy(b + 4, e->name, n);
	r = opt_reply(s, NBD_OPT_LIST, NBD_REP_SERVER, b, (uint32_t)(4 + n));
	free(b);
	return r;
}

/* A pool's images by name, taken before anything is sent: no lock of the
 * pool is held across network I/O.  They have no lists of their own. */
static int list_pool(struct cd_nbd_session *s)
{
	char **names;
	size_t n;
	int r = cd_pool_names(s->srv->pool, &names, &n);

	for (size_t i = 0; i < n; i++) {
		struct cd_export e = { .name = names[i] };
		if (r == 0)
			r = list_one(s, &e);
		free(names[i]);
	}
	free(names);
	return r;
}

static int opt_list(struct cd_nbd_session *s, uint32_t len)
{
	int r = 0;

	if (len)
		return opt_error(s, NBD_OPT_LIST, NBD_REP_ERR_INVALID, "LIST takes no data");
	for (size_t i = 0; r == 0 && i < s->srv->nexports; i++)
		r = list_one(s, &s->srv->exports[i]);
	if (r == 0)
		r = list_pool(s);
	return r < 0 ? r : opt_reply(s, NBD_OPT_LIST, NBD_REP_ACK, NULL, 0);
}

static int send_meta_context(struct cd_nbd_session *s, uint32_t opt)
{
	uint8_t b[4 + sizeof(NBD_META_BASE_ALLOCATION) - 1];

	put_be32(b, NBD_META_ID_ALLOCATION);
	memcpy(b + 4, NBD_META_BASE_ALLOCATION, sizeof(NBD_META_BASE_ALLOCATION) - 1);
	return opt_reply(s, opt, NBD_REP_META_CONTEXT, b, sizeof(b));
}

/* NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT: the one context
 * we have is base:allocation. */
static int opt_meta_context(struct cd_nbd_session *s, uint32_t opt, const uint8_t *p, uint32_t len)
{
	const uint8_t *end = p + len;
	char name[NBD_MAX_STRING + 1], query[NBD_MAX_STRING + 1];
	struct cd_export *e;
	bool found = false;
	uint32_t nq;
	int r = 0;

	if (opt == NBD_OPT_SET_META_CONTEXT && !s->structured)
		return opt_error(s, opt, NBD_REP_ERR_INVALID,
				 "structured replies must be negotiated first");
	if (!take_string(&p, end, name, sizeof(name)) || end - p < 4)
		return opt_error(s, opt, NBD_REP_ERR_INVALID, "malformed request");
	nq = get_be32(p);
	p += 4;
	e = cd_server_get_export(s->srv, name);
	found = e && cd_nbd_allowed(s, e, NULL);
	cd_server_put_export(e);
	if (!found)
		return refuse(s, opt, name, e != NULL);
	found = false;
	if (nq == 0 && opt == NBD_OPT_LIST_META_CONTEXT)
		found = true;
	for (uint32_t i = 0; i < nq; i++) {
		if (!take_string(&p, end, query, sizeof(query)))
			return opt_error(s, opt, NBD_REP_ERR_INVALID, "malformed request");
		if (!strcmp(query, NBD_META_BASE_ALLOCATION) ||
		    (opt == NBD_OPT_LIST_META_CONTEXT && !strcmp(query, "base:")))
			found = true;
	}
	if (p != end)
		return opt_error(s, opt, NBD_REP_ERR_INVALID, "malformed request");
	if (opt == NBD_OPT_SET_META_CONTEXT)
		s->meta_alloc = found;
	if (found)
		r = send_meta_context(s, opt);
	return r < 0 ? r : opt_reply(s, opt, NBD_REP_ACK, NULL, 0);
}

static int opt_export_name(struct cd_nbd_session *s, const uint8_t *p, uint32_t len,
			   bool no_zeroes)
{
	char name[NBD_MAX_STRING + 1];
	uint8_t b[10 + 124] = { 0 };

	if (len > NBD_MAX_STRING || memchr(p, 0, len))
		return -EINVAL;
	memcpy(name, p, len);
	name[len] = 0;
	/* This old option has no way to say no: the connection just ends. */
	s->exp = cd_server_get_export(s->srv, name);
	if (!s->exp)
		return -ENOENT;
	if (!cd_nbd_allowed(s, s->exp, &s->readonly)) {
		cd_server_put_export(s->exp);
		s->exp = NULL;
		return s->srv->users_on ? -ENOENT : -EACCES;
	}
	if (s->ops->admit && s->ops->admit(s, s->exp, (char *)b, sizeof(b)) < 0) {
		cd_server_put_export(s->exp);
		s->exp = NULL;
		return -EUSERS;
	}
	put_be64(b, cdisk_size(s->exp->disk));
	put_be16(b + 8, export_flags(s->readonly));
	return send_buf(s, b, no_zeroes ? 10 : sizeof(b)) < 0 ? -EIO : 1;
}

static bool tls_missing(const struct cd_nbd_session *s)
{
	return s->srv->tls && s->srv->tls_mode == CDISK_TLS_REQUIRE && s->tcp && !s->tls;
}

/* After the ACK the TLS handshake; whatever was agreed before is
 * forgotten, as the protocol asks. */
static int opt_starttls(struct cd_nbd_session *s, uint32_t len)
{
	int r;

	if (!s->srv->tls || s->srv->tls_mode == CDISK_TLS_OFF)
		return opt_error(s, NBD_OPT_STARTTLS, NBD_REP_ERR_POLICY,
				 "TLS is not offered on this socket");
	if (len)
		return opt_error(s, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID, "takes no data");
	if (s->tls)
		return opt_error(s, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID, "TLS is on already");
	r = opt_reply(s, NBD_OPT_STARTTLS, NBD_REP_ACK, NULL, 0);
	if (r != 0)
		return r;
	r = s->ops->starttls(s);
	if (r < 0)
		return r;
	s->structured = false;
	s->meta_alloc = false;
	return 0;
}

/* Returns 1 when the connection enters transmission, 0 or < 0 to close. */
int cd_nbd_handshake(struct cd_nbd_session *s)
{
	uint8_t hello[18], cf[4], oh[16];
	uint32_t client_flags;
	int r;

	put_be64(hello, NBD_MAGIC);
	put_be64(hello + 8, NBD_IHAVEOPT);
	put_be16(hello + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
	if (send_buf(s, hello, sizeof(hello)) < 0 || s->ops->recv(s, cf, 4) < 0)
		return -EIO;
	client_flags = get_be32(cf);
	if (!(client_flags & NBD_FLAG_C_FIXED_NEWSTYLE) ||
	    client_flags & ~(uint32_t)(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES))
		return -EPROTO;
	for (;;) {
		uint32_t opt, len;
		uint8_t *data = NULL;

		if (s->ops->recv(s, oh, sizeof(oh)) < 0)
			return -EIO;
		if (get_be64(oh) != NBD_IHAVEOPT)
			return -EPROTO;
		opt = get_be32(oh + 8);
		len = get_be32(oh + 12);
		if (len > NBD_MAX_OPTION) {
			/* Refuse without reading a huge payload we would only drop. */
			opt_error(s, opt, NBD_REP_ERR_TOO_BIG, "option too long");
			return -EPROTO;
		}
		/* Never NULL, even empty: the parsers do pointer arithmetic on it. */
		data = malloc(len + 1);
		if (!data || (len && s->ops->recv(s, data, len) < 0)) {
			free(data);
			return -EIO;
		}
		if (tls_missing(s) && opt != NBD_OPT_STARTTLS && opt != NBD_OPT_ABORT) {
			free(data);
			/* EXPORT_NAME cannot be refused: the connection just ends. */
			if (opt == NBD_OPT_EXPORT_NAME)
				return -EACCES;
			r = opt_error(s, opt, NBD_REP_ERR_TLS_REQD, "TLS is required on "
				      "this socket");
			if (r != 0)
				return r;
			continue;
		}
		switch (opt) {
		case NBD_OPT_EXPORT_NAME:
			r = opt_export_name(s, data, len, client_flags & NBD_FLAG_C_NO_ZEROES);
			free(data);
			return r;
		case NBD_OPT_ABORT:
			opt_reply(s, opt, NBD_REP_ACK, NULL, 0);
			free(data);
			return 0;
		case NBD_OPT_LIST:
			r = opt_list(s, len);
			break;
		case NBD_OPT_INFO:
		case NBD_OPT_GO:
			r = opt_info_go(s, opt, data, len);
			break;
		case NBD_OPT_STRUCTURED_REPLY:
			if (len) {
				r = opt_error(s, opt, NBD_REP_ERR_INVALID, "takes no data");
				break;
			}
			s->structured = true;
			r = opt_reply(s, opt, NBD_REP_ACK, NULL, 0);
			break;
		case NBD_OPT_LIST_META_CONTEXT:
		case NBD_OPT_SET_META_CONTEXT:
			r = opt_meta_context(s, opt, data, len);
			break;
		case NBD_OPT_STARTTLS:
			r = opt_starttls(s, len);
			break;
		default:
			r = opt_error(s, opt, NBD_REP_ERR_UNSUP, "option %u is not supported", opt);
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

static int reply_simple(struct cd_nbd_session *s, struct cd_nbd_req *q, uint32_t err,
			const void *data, size_t len)
{
	uint8_t h[16];
	struct iovec iov[2] = { { h, sizeof(h) }, { (void *)data, len } };

	put_be32(h, NBD_SIMPLE_REPLY_MAGIC);
	put_be32(h + 4, err);
	put_be64(h + 8, q->cookie);
	return s->ops->reply(s, q, iov, len && !err ? 2 : 1);
}

static int reply_chunk(struct cd_nbd_session *s, struct cd_nbd_req *q, uint16_t type,
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
	return s->ops->reply(s, q, iov, len ? 3 : prelen ? 2 : 1);
}

static int reply_error(struct cd_nbd_session *s, struct cd_nbd_req *q, int err,
		       const char *msg)
{
	uint8_t pre[6];
	size_t n = msg ? strnlen(msg, 1024) : 0;

	q->result = err < 0 ? err : -err;
	if (!s->structured)
		return reply_simple(s, q, nbd_errno(err), NULL, 0);
	put_be32(pre, nbd_errno(err));
	put_be16(pre + 4, (uint16_t)n);
	return reply_chunk(s, q, NBD_REPLY_TYPE_ERROR, pre, sizeof(pre), msg, n);
}

static int reply_ok(struct cd_nbd_session *s, struct cd_nbd_req *q)
{
	return s->structured ? reply_chunk(s, q, NBD_REPLY_TYPE_NONE, NULL, 0, NULL, 0)
			     : reply_simple(s, q, 0, NULL, 0);
}

static bool aligned(const struct cdisk *d, uint64_t off, uint64_t len)
{
	return ((off | len) & (cdisk_block_size(d) - 1)) == 0;
}

/* The data leaves from the buffer it was read into: the request keeps
 * it until its reply is sent. */
static int do_read(struct cd_nbd_session *s, struct cd_nbd_req *q)
{
	struct cdisk *d = s->exp->disk;
	uint8_t *buf, pre[8];
	int r;

	if (q->length > NBD_MAX_PAYLOAD)
		return reply_error(s, q, -EINVAL, "read larger than 32 MiB");
	/* A read tried without waiting keeps its buffer for the real one. */
	buf = q->data = q->data ? q->data : s->ops->buf_get(s, q->length);
	if (!buf)
		return reply_error(s, q, -ENOMEM, "out of memory");
	r = aligned(d, q->offset, q->length) ? cdisk_pread(d, buf, q->length, q->offset)
					     : cdisk_pread_unaligned(d, buf, q->length, q->offset);
	if (r == -CD_WOULD_WAIT && cd_nowait())
		return r;
	if (r < 0)
		return reply_error(s, q, r, cdisk_ctx_error(s->srv->ctx));
	if (s->structured) {
		put_be64(pre, q->offset);
		return reply_chunk(s, q, NBD_REPLY_TYPE_OFFSET_DATA, pre, 8, buf, q->length);
	}
	return reply_simple(s, q, 0, buf, q->length);
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

static int do_block_status(struct cd_nbd_session *s, struct cd_nbd_req *q)
{
	size_t max = q->flags & NBD_CMD_FLAG_REQ_ONE ? 1 : 512, n = 0;
	struct cdisk_extent ext[512];
	uint8_t *b;
	int r;

	if (!s->meta_alloc)
		return reply_error(s, q, -EINVAL, "no metadata context was negotiated");
	r = cdisk_block_status(s->exp->disk, q->offset, q->length, ext, max, &n);
	if (r < 0)
		return reply_error(s, q, r, cdisk_ctx_error(s->srv->ctx));
	b = malloc(4 + 8 * n);
	if (!b)
		return reply_error(s, q, -ENOMEM, "out of memory");
	put_be32(b, NBD_META_ID_ALLOCATION);
	for (size_t i = 0; i < n; i++) {
		uint64_t l = ext[i].length > 0xfffff000u ? 0xfffff000u : ext[i].length;
		put_be32(b + 4 + 8 * i, (uint32_t)l);
		put_be32(b + 8 + 8 * i, ext[i].zero ? NBD_STATE_HOLE | NBD_STATE_ZERO : 0);
	}
	r = reply_chunk(s, q, NBD_REPLY_TYPE_BLOCK_STATUS, b, 4 + 8 * n, NULL, 0);
	free(b);
	return r;
}

/* Checks every request must pass, in the protocol's terms. */
static int validate(struct cd_nbd_session *s, const struct cd_nbd_req *q, const char **why)
{
	struct cd_export *e = s->exp;
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
	if (s->readonly && q->type != NBD_CMD_READ && q->type != NBD_CMD_BLOCK_STATUS) {
		*why = "the export is read-only";
		return -EPERM;
	}
	if ((q->offset | q->length) & (min_block(e) - 1) && q->type != NBD_CMD_TRIM) {
		*why = "request not aligned to the minimum block size";
		return -EINVAL;
	}
	return 0;
}

int cd_nbd_execute(struct cd_nbd_session *s, struct cd_nbd_req *q)
{
	struct cdisk *d = s->exp->disk;
	const char *why = NULL;
	int r = validate(s, q, &why);

	if (r < 0)
		return reply_error(s, q, r, why);
	switch (q->type) {
	case NBD_CMD_READ:
		return do_read(s, q);
	case NBD_CMD_BLOCK_STATUS:
		return do_block_status(s, q);
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
	__atomic_add_fetch(&s->exp->requests, 1, __ATOMIC_RELAXED);
	if (r < 0)
		return reply_error(s, q, r, cdisk_ctx_error(s->srv->ctx));
	return reply_ok(s, q);
}

bool cd_nbd_try_read(struct cd_nbd_session *s, struct cd_nbd_req *q)
{
	int r;

	cd_nowait_set(true);
	r = cd_nbd_execute(s, q);
	cd_nowait_set(false);
	return r != -CD_WOULD_WAIT;
}

/* ---- reading requests ---- */

int cd_nbd_parse_request(const uint8_t *h, struct cd_nbd_req *q)
{
	if (get_be32(h) != NBD_REQUEST_MAGIC)
		return -1;
	q->flags = get_be16(h + 4);
	q->type = get_be16(h + 6);
	q->cookie = get_be64(h + 8);
	q->offset = get_be64(h + 16);
	q->length = get_be32(h + 24);
	q->data = NULL;
	q->result = 0;
	if (q->type == NBD_CMD_DISC)
		return -1;
	/* A payload we will not hold: the stream is lost. */
	if (q->type == NBD_CMD_WRITE && q->length > NBD_MAX_PAYLOAD)
		return -1;
	return 1;
}

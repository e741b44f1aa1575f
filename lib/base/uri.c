/* Target URIs: the one grammar every program accepts (see cdisk(7)). */
#include <ctype.h>
#include <limits.h>
#include <stdlib.h>

#include "cdisk.h"
#include "ctx.h"
#include "uri.h"
#include "util.h"

static const struct {
	const char *prefix;
	enum cd_scheme scheme;
} schemes[] = {
	{ "file://", CD_SCHEME_FILE },
	{ "iscsi://", CD_SCHEME_ISCSI },
	{ "rbd:", CD_SCHEME_RBD },
	{ "nbd+unix://", CD_SCHEME_NBD_UNIX },
	{ "nbds://", CD_SCHEME_NBDS },
	{ "nbd://", CD_SCHEME_NBD },
	{ "https://", CD_SCHEME_HTTPS },
	{ "http://", CD_SCHEME_HTTP },
	{ "s3://", CD_SCHEME_S3 },
};

const char *cd_scheme_name(enum cd_scheme scheme)
{
	static const char *const names[] = {
		[CD_SCHEME_FILE] = "file", [CD_SCHEME_ISCSI] = "iscsi",
		[CD_SCHEME_RBD] = "rbd", [CD_SCHEME_NBD] = "nbd",
		[CD_SCHEME_NBDS] = "nbds", [CD_SCHEME_NBD_UNIX] = "nbd+unix",
		[CD_SCHEME_HTTP] = "http", [CD_SCHEME_HTTPS] = "https",
		[CD_SCHEME_S3] = "s3",
	};
	return names[scheme];
}

void cd_uri_clear(struct cd_uri *u)
{
	free(u->path);
	free(u->host);
	free(u->user);
	free(u->target);
	free(u->pool);
	free(u->ns);
	free(u->snap);
	free(u->prefix);
	free(u->socket);
	memset(u, 0, sizeof(*u));
}

static char *dup_range(const char *s, size_t n)
{
	return strndup(s, n);
}

static int bad(struct cdisk_ctx *ctx, const char *text, const char *why)
{
	return cd_error(ctx, -EINVAL, "invalid URI '%s': %s", text, why);
}

static bool valid_name(const char *s, size_t n)
{
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!isgraph((unsigned char)s[i]) || s[i] == '/' || s[i] == '@')
			return false;
	return true;
}

/* [user[%pass]@]host[:port] up to the first '/'; returns the rest. */
static int parse_authority(struct cdisk_ctx *ctx, const char *text,
			   const char *p, struct cd_uri *u, const char **rest)
{
	const char *slash = strchr(p, '/');
	const char *end = slash ? slash : p + strlen(p);
	const char *at = memchr(p, '@', (size_t)(end - p));
	const char *host = p, *colon;

	if (at) {
		if (memchr(p, '%', (size_t)(at - p)))
			return bad(ctx, text, "a password in a URI is refused "
				   "(it would show in 'ps'); give it in a file or "
				   "the environment, see cdisk(7)");
		if (at == p)
			return bad(ctx, text, "empty user name");
		u->user = dup_range(p, (size_t)(at - p));
		host = at + 1;
	}
	if (*host == '[') {
		const char *close = memchr(host, ']', (size_t)(end - host));
		if (!close)
			return bad(ctx, text, "unterminated IPv6 address");
		u->host = dup_range(host + 1, (size_t)(close - host - 1));
		colon = close + 1 < end && close[1] == ':' ? close + 1 : NULL;
	} else {
		colon = memchr(host, ':', (size_t)(end - host));
		u->host = dup_range(host, (size_t)((colon ? colon : end) - host));
	}
	if (!u->host || !*u->host)
		return bad(ctx, text, "missing host");
	if (colon) {
		char *e;
		long port;

		errno = 0;
		port = strtol(colon + 1, &e, 10);
		if (e != end || colon + 1 == end || errno || port < 1 || port > 65535)
			return bad(ctx, text, "port must be a number from 1 to 65535");
		u->port = (int)port;
	}
	*rest = end;
	return 0;
}

static int parse_iscsi(struct cdisk_ctx *ctx, const char *text, const char *p,
		       struct cd_uri *u)
{
	const char *rest, *slash;
	char *e;
	long lun;
	int r = parse_authority(ctx, text, p, u, &rest);

	if (r < 0)
		return r;
	if (*rest != '/' || !(slash = strrchr(rest + 1, '/')) || slash == rest + 1)
		return bad(ctx, text, "expected iscsi://[user@]host[:port]/IQN/LUN");
	u->target = dup_range(rest + 1, (size_t)(slash - rest - 1));
	if (!valid_name(u->target, strlen(u->target)))
		return bad(ctx, text, "invalid target IQN");
	errno = 0;
	lun = strtol(slash + 1, &e, 10);
	if (*e || e == slash + 1 || errno || lun < 0 || lun > 16383)
		return bad(ctx, text, "LUN must be a number from 0 to 16383");
	u->lun = (int)lun;
	return 0;
}

static int parse_rbd(struct cdisk_ctx *ctx, const char *text, const char *p,
		     struct cd_uri *u)
{
	const char *at = strchr(p, '@');
	const char *end = at ? at : p + strlen(p);
	const char *s1 = memchr(p, '/', (size_t)(end - p));
	const char *s2 = s1 ? memchr(s1 + 1, '/', (size_t)(end - s1 - 1)) : NULL;
	const char *image;

	if (!s1)
		return bad(ctx, text, "expected rbd:POOL[/NAMESPACE]/IMAGE[@SNAP]");
	if (s2 && memchr(s2 + 1, '/', (size_t)(end - s2 - 1)))
		return bad(ctx, text, "too many '/' in an RBD name");
	u->pool = dup_range(p, (size_t)(s1 - p));
	if (s2) {
		u->ns = dup_range(s1 + 1, (size_t)(s2 - s1 - 1));
		image = s2 + 1;
	} else {
		image = s1 + 1;
	}
	u->target = dup_range(image, (size_t)(end - image));
	if (!valid_name(u->pool, strlen(u->pool)) ||
	    !valid_name(u->target, strlen(u->target)) ||
	    (u->ns && !valid_name(u->ns, strlen(u->ns))))
		return bad(ctx, text, "pool, namespace and image must not be empty");
	if (at) {
		u->snap = strdup(at + 1);
		if (!valid_name(u->snap, strlen(u->snap)))
			return bad(ctx, text, "empty snapshot name");
	}
	return 0;
}

static int parse_nbd(struct cdisk_ctx *ctx, const char *text, const char *p,
		     struct cd_uri *u)
{
	const char *rest;
	int r = parse_authority(ctx, text, p, u, &rest);

	if (r < 0)
		return r;
	u->target = strdup(*rest == '/' ? rest + 1 : "");
	return 0;
}

static int parse_nbd_unix(struct cdisk_ctx *ctx, const char *text,
			  const char *p, struct cd_uri *u)
{
	const char *q = strchr(p, '?');

	if (*p != '/' || !q || strncmp(q, "?socket=", 8) != 0 || !q[8])
		return bad(ctx, text, "expected nbd+unix:///EXPORT?socket=PATH");
	u->target = dup_range(p + 1, (size_t)(q - p - 1));
	u->socket = strdup(q + 8);
	return 0;
}

static int parse_http(struct cdisk_ctx *ctx, const char *text, const char *p,
		      struct cd_uri *u)
{
	const char *rest;
	int r = parse_authority(ctx, text, p, u, &rest);

	if (r < 0)
		return r;
	if (u->user)
		return bad(ctx, text, "credentials in an HTTP URI are refused; see cdisk(7)");
	if (*rest != '/' || !rest[1])
		return bad(ctx, text, "missing object path");
	u->path = strdup(rest);
	return 0;
}

static int parse_s3(struct cdisk_ctx *ctx, const char *text, const char *p,
		    struct cd_uri *u)
{
	const char *slash = strchr(p, '/');
	size_t blen = slash ? (size_t)(slash - p) : strlen(p);

	if (blen < 3 || blen > 63)
		return bad(ctx, text, "bucket names have 3 to 63 characters");
	for (size_t i = 0; i < blen; i++)
		if (!islower((unsigned char)p[i]) && !isdigit((unsigned char)p[i]) &&
		    p[i] != '-' && p[i] != '.')
			return bad(ctx, text, "bucket names use a-z, 0-9, '-' and '.'");
	u->target = dup_range(p, blen);
	u->prefix = strdup(slash ? slash + 1 : "");
	return 0;
}

int cd_uri_parse(struct cdisk_ctx *ctx, const char *text, struct cd_uri *u)
{
	const char *p = NULL;
	int r;

	memset(u, 0, sizeof(*u));
	if (!text || !*text)
		return cd_error(ctx, -EINVAL, "invalid URI '': empty");
	if (strlen(text) > CDISK_MAX_URI)
		return cd_error(ctx, -ENAMETOOLONG, "invalid URI '%.40s...': longer than %d bytes",
				text, CDISK_MAX_URI);
	for (size_t i = 0; i < CD_ARRAY_SIZE(schemes); i++) {
		size_t n = strlen(schemes[i].prefix);
		if (strncmp(text, schemes[i].prefix, n) == 0) {
			u->scheme = schemes[i].scheme;
			p = text + n;
			break;
		}
	}
	if (!p) {
		const char *colon = strstr(text, "://");
		if (colon)
			return cd_error(ctx, -EINVAL, "invalid URI '%s': unknown scheme '%.*s'",
					text, (int)(colon - text), text);
		u->scheme = CD_SCHEME_FILE;
		p = text;
	}
	switch (u->scheme) {
	case CD_SCHEME_FILE:
		if (!*p)
			r = bad(ctx, text, "empty path");
		else if (strncmp(text, "file://", 7) == 0 && *p != '/')
			r = bad(ctx, text, "file:// URIs take an absolute path");
		else
			r = (u->path = strdup(p)) ? 0 : -ENOMEM;
		break;
	case CD_SCHEME_ISCSI:
		r = parse_iscsi(ctx, text, p, u);
		break;
	case CD_SCHEME_RBD:
		r = parse_rbd(ctx, text, p, u);
		break;
	case CD_SCHEME_NBD:
	case CD_SCHEME_NBDS:
		r = parse_nbd(ctx, text, p, u);
		break;
	case CD_SCHEME_NBD_UNIX:
		r = parse_nbd_unix(ctx, text, p, u);
		break;
	case CD_SCHEME_HTTP:
	case CD_SCHEME_HTTPS:
		r = parse_http(ctx, text, p, u);
		break;
	case CD_SCHEME_S3:
		r = parse_s3(ctx, text, p, u);
		break;
	default:
		r = -EINVAL;
	}
	if (r < 0)
		cd_uri_clear(u);
	return r;
}

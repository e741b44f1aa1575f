/* S3 targets: s3://bucket/prefix holds a disk as fixed-size chunk objects
 * PREFIX/chunk-<16 hex digits of the chunk's index>, and a manifest
 * PREFIX/cdisk-manifest.json with the disk's size and chunk size.  A
 * chunk that is all zeros is not stored (it is deleted), so reading a
 * missing chunk gives zeros.  Requests are signed with AWS SigV4 by
 * libcurl.  A PUT is durable when it is answered: there is nothing to
 * flush. */
#include <ctype.h>
#include <ini.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <time.h>

#include "cdisk.h"
#include "ctx.h"
#include "http.h"
#include "s3.h"
#include "target.h"
#include "uri.h"
#include "util.h"

#define MANIFEST_NAME "cdisk-manifest.json"
#define MANIFEST_FORMAT "cdisk-s3"
#define MANIFEST_VERSION 1
#define MANIFEST_MAX 4096
#define S3_URL_MAX (CDISK_MAX_URI * 2 + 256 + 64)

struct s3_priv {
	char endpoint[CDISK_MAX_URI + 1];
	char bucket[256];
	char prefix[CDISK_MAX_URI + 1];   /* "" or "some/path/" */
	char sigv4[96];
	char key_id[128];
	char secret[256];
	char token[1024];
	uint32_t chunk;
	bool no_bucket;     /* the last manifest read found no bucket */
};

/* ---- credentials and endpoint ---- */

struct cred_state {
	const char *profile;
	char key_id[128], secret[256], token[1024];
	char bad[160];
};

static int on_credential(void *user, const char *section, const char *name,
			 const char *value)
{
	struct cred_state *st = user;

	if (strcmp(section, st->profile) != 0)
		return 1;
	if (!strcmp(name, "aws_access_key_id"))
		snprintf(st->key_id, sizeof(st->key_id), "%s", value);
	else if (!strcmp(name, "aws_secret_access_key"))
		snprintf(st->secret, sizeof(st->secret), "%s", value);
	else if (!strcmp(name, "aws_session_token"))
		snprintf(st->token, sizeof(st->token), "%s", value);
	return 1;
}

static const char *first_env(const char *a, const char *b)
{
	const char *v = getenv(a);

	if ((!v || !*v) && b)
		v = getenv(b);
	return v && *v ? v : NULL;
}

/* Keys from the environment, else from the credentials file as the AWS
 * tools read it (AWS_SHARED_CREDENTIALS_FILE, [s3] credentials_file,
 * ~/.aws/credentials; profile AWS_PROFILE, [s3] profile, "default"). */
static int find_keys(struct cdisk_ctx *ctx, const char *uri, struct s3_priv *p)
{
	const struct cd_config *cfg = &ctx->cfg;
	const char *id = getenv("AWS_ACCESS_KEY_ID");
	const char *secret = getenv("AWS_SECRET_ACCESS_KEY");
	struct cred_state st = { 0 };
	char home_file[CDISK_MAX_URI + 1];
	const char *file;
	int r;

	if (id && *id && secret && *secret) {
		snprintf(p->key_id, sizeof(p->key_id), "%s", id);
		snprintf(p->secret, sizeof(p->secret), "%s", secret);
		if (getenv("AWS_SESSION_TOKEN"))
			snprintf(p->token, sizeof(p->token), "%s", getenv("AWS_SESSION_TOKEN"));
		return 0;
	}
	file = first_env("AWS_SHARED_CREDENTIALS_FILE", NULL);
	if (!file && cfg->s3_credentials[0])
		file = cfg->s3_credentials;
	if (!file && getenv("HOME")) {
		snprintf(home_file, sizeof(home_file), "%s/.aws/credentials", getenv("HOME"));
		file = home_file;
	}
	st.profile = first_env("AWS_PROFILE", NULL);
	if (!st.profile)
		st.profile = cfg->s3_profile[0] ? cfg->s3_profile : "default";
	if (!file)
		goto none;
	r = cd_ini_load(ctx, "credentials ", file, on_credential, &st, st.bad);
	if (r == -ENOENT && file == home_file)
		goto none;
	if (r < 0)
		return r;
	if (!st.key_id[0] || !st.secret[0])
		return cd_error(ctx, -EACCES, "cannot use '%s': profile [%s] in '%s' has "
				"no aws_access_key_id and aws_secret_access_key", uri,
				st.profile, file);
	memcpy(p->key_id, st.key_id, sizeof(p->key_id));
	memcpy(p->secret, st.secret, sizeof(p->secret));
	memcpy(p->token, st.token, sizeof(p->token));
	explicit_bzero(&st, sizeof(st));
	return 0;
none:
	return cd_error(ctx, -EACCES, "cannot use '%s': no S3 keys (set "
			"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a credentials "
			"file, see cdisk(7))", uri);
}

static int s3_setup(struct cdisk_ctx *ctx, const char *uri, const struct cd_uri *u,
		    struct s3_priv *p)
{
	const char *endpoint = first_env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL");
	const char *region = first_env("AWS_REGION", "AWS_DEFAULT_REGION");
	size_t n;

	if (!region)
		region = ctx->cfg.s3_region[0] ? ctx->cfg.s3_region : "us-east-1";
	if (!endpoint && ctx->cfg.s3_endpoint[0])
		endpoint = ctx->cfg.s3_endpoint;
	if (endpoint)
		snprintf(p->endpoint, sizeof(p->endpoint), "%s", endpoint);
	else
		snprintf(p->endpoint, sizeof(p->endpoint), "https://s3.%s.amazonaws.com",
			 region);
	n = strlen(p->endpoint);
	while (n && p->endpoint[n - 1] == '/')
		p->endpoint[--n] = '\0';
	snprintf(p->sigv4, sizeof(p->sigv4), "aws:amz:%s:s3", region);
	snprintf(p->bucket, sizeof(p->bucket), "%s", u->target);
	if (u->prefix && *u->prefix)
		snprintf(p->prefix, sizeof(p->prefix), "%s%s", u->prefix,
			 u->prefix[strlen(u->prefix) - 1] == '/' ? "" : "/");
	return find_keys(ctx, uri, p);
}

/* ---- requests ---- */

static void object_url(const struct s3_priv *p, const char *name, char *out,
		       size_t size)
{
	snprintf(out, size, "%s/%s/%s%s", p->endpoint, p->bucket, p->prefix, name);
}

static void chunk_url(const struct s3_priv *p, uint64_t index, char *out, size_t size)
{
	char name[40];

	snprintf(name, sizeof(name), "chunk-%016" PRIx64, index);
	object_url(p, name, out, size);
}

void cd_s3_error_code(const char *body, char *out, size_t size)
{
	const char *start = strstr(body, "<Code>");
	const char *end = start ? strstr(start + 6, "</Code>") : NULL;

	out[0] = '\0';
	if (start && end && (size_t)(end - start - 6) < size)
		snprintf(out, size, "%.*s", (int)(end - start - 6), start + 6);
}

static void error_code(const struct cd_http_reply *a, char *out, size_t size)
{
	cd_s3_error_code(a->error_body, out, size);
}

static int s3_code_errno(const char *code, long status)
{
	if (!strcmp(code, "NoSuchBucket") || !strcmp(code, "NoSuchKey"))
		return -ENOENT;
	if (!strcmp(code, "InvalidAccessKeyId") || !strcmp(code, "SignatureDoesNotMatch") ||
	    !strcmp(code, "AccessDenied") || !strcmp(code, "ExpiredToken"))
		return -EACCES;
	if (!strcmp(code, "SlowDown") || !strcmp(code, "ServiceUnavailable") ||
	    !strcmp(code, "RequestTimeout"))
		return -EAGAIN;
	/* S3 documents InternalError (500) as "try again", and radosgw
	 * answers a loaded cluster's timeouts with 500 UnknownError: tried
	 * again, as the AWS SDKs do, and 502 from a proxy in front too. */
	if (status == 500 || status == 502)
		return -EAGAIN;
	return cd_http_status_errno(status);
}

static int s3_status_error(struct cd_target *t, const struct cd_http_reply *a,
			   const char *what, uint64_t off)
{
	char code[64];

	error_code(a, code, sizeof(code));
	return cd_error(t->ctx, s3_code_errno(code, a->status), "cannot %s '%s' at %llu: "
			"HTTP %ld%s%s", what, t->uri, (unsigned long long)off, a->status,
			code[0] ? " " : "", code);
}

static int perform(struct cd_target *t, CURL *c, struct cd_http_request *q,
		   struct cd_http_reply *a, const char *what)
{
	const struct s3_priv *p = t->priv;

	q->sigv4 = p->sigv4;
	q->user = p->key_id;
	q->secret = p->secret;
	q->session_token = p->token[0] ? p->token : NULL;
	return cd_http_perform(t, c, q, a, what);
}

static uint64_t chunk_length(const struct cd_target *t, uint64_t index)
{
	const struct s3_priv *p = t->priv;
	uint64_t start = index * p->chunk;

	return t->size - start < p->chunk ? t->size - start : p->chunk;
}

/* Read part of one chunk; a chunk that is not stored reads as zeros. */
static int read_chunk(struct cd_target *t, CURL *c, uint64_t index, uint8_t *buf,
		      size_t len, uint64_t skip)
{
	const struct s3_priv *p = t->priv;
	char url[S3_URL_MAX];
	struct cd_http_request q = {
		.method = "GET", .url = url, .range_off = skip, .range_len = len,
		.download = buf, .download_cap = len,
	};
	struct cd_http_reply a;
	uint64_t off = index * p->chunk + skip;
	int r;

	chunk_url(p, index, url, sizeof(url));
	r = perform(t, c, &q, &a, "read");
	if (r < 0)
		return r;
	if (a.status == 404) {
		char code[64];
		error_code(&a, code, sizeof(code));
		if (strcmp(code, "NoSuchKey") != 0)
			return s3_status_error(t, &a, "read", off);
		memset(buf, 0, len);
		return 0;
	}
	if (a.status == 416 || (a.status == 206 && a.got < len) ||
	    (a.status == 206 && a.total_known && a.total != chunk_length(t, index)))
		return cd_error(t->ctx, -EIO, "cannot read '%s' at %llu: chunk %" PRIu64
				" is shorter than the manifest says", t->uri,
				(unsigned long long)off, index);
	if (a.status != 206 && a.status != 200)
		return s3_status_error(t, &a, "read", off);
	if (a.got != len)
		return cd_error(t->ctx, -EIO, "cannot read '%s' at %llu: %zu bytes came "
				"back, not %zu", t->uri, (unsigned long long)off, a.got, len);
	return 0;
}

static bool all_zero(const uint8_t *p, size_t len)
{
	return len == 0 || (p[0] == 0 && memcmp(p, p + 1, len - 1) == 0);
}

/* Store one whole chunk: a PUT, or a DELETE when it is all zeros. */
static int store_chunk(struct cd_target *t, CURL *c, uint64_t index,
		       const uint8_t *data, size_t len)
{
	const struct s3_priv *p = t->priv;
	char url[S3_URL_MAX];
	struct cd_http_request q = { .method = "PUT", .url = url, .upload = data,
				     .upload_len = len };
	struct cd_http_reply a;
	int r;

	if (!data || all_zero(data, len)) {
		q.method = "DELETE";
		q.upload = NULL;
		q.upload_len = 0;
	}
	chunk_url(p, index, url, sizeof(url));
	r = perform(t, c, &q, &a, "write");
	if (r < 0)
		return r;
	if (a.status >= 200 && a.status < 300)
		return 0;
	if (a.status == 404 && !strcmp(q.method, "DELETE")) {
		char code[64];
		error_code(&a, code, sizeof(code));
		if (!strcmp(code, "NoSuchKey"))
			return 0;
	}
	return s3_status_error(t, &a, "write", index * p->chunk);
}

/* Change part of a chunk: fetch it whole, patch, store, under the chunk's
 * lock so that two patches of one chunk cannot undo each other. */
static int patch_chunk(struct cd_target *t, CURL *c, uint64_t index,
		       const uint8_t *data, size_t len, uint64_t skip)
{
	size_t whole = (size_t)chunk_length(t, index);
	pthread_mutex_t *lock = &t->rmw_lock[index % CD_RMW_STRIPES];
	uint8_t *buf = malloc(whole);
	int r;

	if (!buf)
		return cd_error(t->ctx, -ENOMEM, "'%s': out of memory", t->uri);
	pthread_mutex_lock(lock);
	r = read_chunk(t, c, index, buf, whole, 0);
	if (r == 0) {
		if (data)
			memcpy(buf + skip, data, len);
		else
			memset(buf + skip, 0, len);
		r = store_chunk(t, c, index, buf, whole);
	}
	pthread_mutex_unlock(lock);
	free(buf);
	return r;
}

static int change(struct cd_target *t, CURL *c, const uint8_t *data, size_t len,
		  uint64_t off)
{
	const struct s3_priv *p = t->priv;

	while (len) {
		uint64_t index = off / p->chunk, skip = off % p->chunk;
		size_t whole = (size_t)chunk_length(t, index);
		size_t n = whole - skip < len ? (size_t)(whole - skip) : len;
		int r = skip == 0 && n == whole ? store_chunk(t, c, index, data, n)
						: patch_chunk(t, c, index, data, n, skip);

		if (r < 0)
			return r;
		if (data)
			data += n;
		off += n;
		len -= n;
	}
	return 0;
}

static int s3_read(struct cd_target *t, void *s, void *buf, size_t len, uint64_t off)
{
	const struct s3_priv *p = t->priv;
	uint8_t *out = buf;

	while (len) {
		uint64_t index = off / p->chunk, skip = off % p->chunk;
		size_t n = p->chunk - skip < len ? (size_t)(p->chunk - skip) : len;
		int r = read_chunk(t, s, index, out, n, skip);

		if (r < 0)
			return r;
		out += n;
		off += n;
		len -= n;
	}
	return 0;
}

static int s3_write(struct cd_target *t, void *s, const void *buf, size_t len,
		    uint64_t off)
{
	return change(t, s, buf, len, off);
}

static int s3_zero(struct cd_target *t, void *s, size_t len, uint64_t off)
{
	return change(t, s, NULL, len, off);
}

static int s3_flush(struct cd_target *t, void *s)
{
	(void)t, (void)s;
	return 0;
}

/* ---- the manifest ---- */

int cd_s3_parse_manifest(struct cdisk_ctx *ctx, const char *uri, const char *text,
			 size_t len, uint64_t *size_out, uint32_t *chunk_out)
{
	json_error_t jerr;
	json_t *m = json_loadb(text, len, 0, &jerr);
	json_int_t size = -1, chunk = -1, version = -1;
	const char *format = NULL;
	int r = 0;

	if (!m || json_unpack(m, "{s:s, s:I, s:I, s:I}", "format", &format,
			      "version", &version, "size", &size, "chunk_size", &chunk) < 0 ||
	    strcmp(format, MANIFEST_FORMAT) != 0)
		r = cd_error(ctx, -EUCLEAN, "cannot use '%s': its manifest is not a "
			     "cdisk S3 manifest", uri);
	else if (version != MANIFEST_VERSION)
		r = cd_error(ctx, -EPROTONOSUPPORT, "cannot use '%s': manifest version "
			     "%lld is not supported", uri, (long long)version);
	else if (size < 0 || chunk < 4096 || chunk > (1 << 30) || (chunk & (chunk - 1)))
		r = cd_error(ctx, -EUCLEAN, "cannot use '%s': its manifest gives an "
			     "impossible size or chunk size", uri);
	else {
		*size_out = (uint64_t)size;
		*chunk_out = (uint32_t)chunk;
	}
	json_decref(m);
	return r;
}

static int read_manifest(struct cd_target *t, CURL *c)
{
	struct s3_priv *p = t->priv;
	char url[S3_URL_MAX], text[MANIFEST_MAX];
	struct cd_http_request q = { .method = "GET", .url = url, .download = text,
				     .download_cap = sizeof(text) };
	struct cd_http_reply a;
	char code[64];
	int r;

	object_url(p, MANIFEST_NAME, url, sizeof(url));
	r = perform(t, c, &q, &a, "open");
	if (r < 0)
		return r;
	if (a.status == 200)
		return cd_s3_parse_manifest(t->ctx, t->uri, text, a.got, &t->size, &p->chunk);
	error_code(&a, code, sizeof(code));
	p->no_bucket = !strcmp(code, "NoSuchBucket");
	if (p->no_bucket)
		return cd_error(t->ctx, -ENOENT, "cannot open '%s': no such bucket", t->uri);
	if (!strcmp(code, "NoSuchKey"))
		return cd_error(t->ctx, -ENOENT, "cannot open '%s': no disk there (no %s%s)",
				t->uri, p->prefix, MANIFEST_NAME);
	return cd_error(t->ctx, s3_code_errno(code, a.status), "cannot open '%s': HTTP "
			"%ld%s%s", t->uri, a.status, code[0] ? " " : "", code);
}

static int s3_open(struct cd_target *t, const struct cd_uri *u)
{
	struct s3_priv *p = calloc(1, sizeof(*p));
	CURL *c = NULL;
	int r;

	if (!p)
		return cd_error(t->ctx, -ENOMEM, "cannot open '%s': out of memory", t->uri);
	t->priv = p;
	r = s3_setup(t->ctx, t->uri, u, p);
	if (r == 0)
		r = cd_http_connect(t, (void **)&c);
	if (r == 0)
		r = read_manifest(t, c);
	if (r < 0) {
		if (c)
			curl_easy_cleanup(c);
		explicit_bzero(p, sizeof(*p));
		free(p);
		t->priv = NULL;
		return r;
	}
	t->can_zero = true;
	t->can_trim = true;
	cd_target_keep_session(t, c);
	return 0;
}

static void s3_close(struct cd_target *t)
{
	if (t->priv)
		explicit_bzero(t->priv, sizeof(struct s3_priv));
	free(t->priv);
}

/* HEAD of the manifest: signed like every request, no data moved. */
static int s3_ping(struct cd_target *t, void *s)
{
	const struct s3_priv *p = t->priv;
	char url[S3_URL_MAX];

	object_url(p, MANIFEST_NAME, url, sizeof(url));
	return cd_http_ping(t, s, url, p->sigv4, p->key_id, p->secret,
			    p->token[0] ? p->token : NULL);
}

/* The endpoint, bucket and prefix, in the canonical spelling of
 * cd_http_identity: the most S3 tells of where a disk is. */
static int s3_identity(struct cd_target *t, void *s, char *out, size_t len)
{
	const struct s3_priv *p = t->priv;
	char url[S3_URL_MAX];

	(void)s;
	snprintf(url, sizeof(url), "%s/%s/%s", p->endpoint, p->bucket, p->prefix);
	return cd_http_identity(t, "s3", url, out, len);
}

/* A new disk is only a manifest: every chunk starts as zeros. */
int cd_s3_create(struct cdisk_ctx *ctx, const char *uri, const struct cd_uri *u,
		 uint64_t size)
{
	struct cd_target t = { .ctx = ctx, .uri = (char *)uri };
	struct s3_priv p = { 0 };
	char url[S3_URL_MAX], *text = NULL;
	struct cd_http_request q = { .method = "PUT", .url = url };
	struct cd_http_reply a;
	CURL *c = NULL;
	json_t *m;
	int r;

	t.timeout_ms = (ctx->cfg.timeout ? ctx->cfg.timeout : 30) * 1000;
	t.priv = &p;
	r = s3_setup(ctx, uri, u, &p);
	if (r < 0)
		goto out;
	r = cd_http_connect(&t, (void **)&c);
	if (r < 0)
		goto out;
	r = read_manifest(&t, c);
	/* No answer before anything was made: unreachable, as at an open. */
	if (r == -ETIMEDOUT)
		r = -EHOSTUNREACH;
	if (r == 0) {
		r = cd_error(ctx, -EEXIST, "cannot create '%s': a disk is there already", uri);
		goto out;
	}
	if (r != -ENOENT || p.no_bucket)
		goto out;
	m = json_pack("{s:s, s:i, s:I, s:I}", "format", MANIFEST_FORMAT, "version",
		      MANIFEST_VERSION, "size", (json_int_t)size, "chunk_size",
		      (json_int_t)(ctx->cfg.s3_chunk_size ? ctx->cfg.s3_chunk_size
							  : 4u << 20));
	text = m ? json_dumps(m, JSON_SORT_KEYS) : NULL;
	json_decref(m);
	if (!text) {
		r = cd_error(ctx, -ENOMEM, "cannot create '%s': out of memory", uri);
		goto out;
	}
	object_url(&p, MANIFEST_NAME, url, sizeof(url));
	q.upload = text;
	q.upload_len = strlen(text);
	r = perform(&t, c, &q, &a, "create");
	if (r == 0 && (a.status < 200 || a.status >= 300))
		r = s3_status_error(&t, &a, "create", 0);
out:
	free(text);
	if (c)
		curl_easy_cleanup(c);
	explicit_bzero(&p, sizeof(p));
	return r;
}

const struct cd_target_ops cd_s3_target_ops = {
	.name = "s3",
	.open = s3_open,
	.connect = cd_http_connect,
	.disconnect = cd_http_disconnect,
	.pread = s3_read,
	.pwrite = s3_write,
	.flush = s3_flush,
	.zero = s3_zero,
	.trim = s3_zero,
	.ping = s3_ping,
	.identity = s3_identity,
	.close = s3_close,
};

/* ---- folders: listing and whole objects (folder.h) ---- */


#define LIST_REPLY_MAX (16u << 20)

struct cd_s3_folder {
	struct cd_target t;
	struct s3_priv p;
	char identity[CDISK_MAX_URI * 2 + 300];
	void *list_session;
};

int cd_s3_folder_open(struct cdisk_ctx *ctx, const char *uri,
		      struct cd_s3_folder **out)
{
	struct cd_s3_folder *f = calloc(1, sizeof(*f));
	struct cd_uri u;
	int r;

	if (!f)
		return cd_error(ctx, -ENOMEM, "cannot use '%s': out of memory", uri);
	r = cd_uri_parse(ctx, uri, &u);
	if (r < 0) {
		free(f);
		return r;
	}
	if (u.scheme != CD_SCHEME_S3)
		r = cd_error(ctx, -EINVAL, "cannot use '%s': a folder is an s3:// URI", uri);
	if (r == 0) {
		f->t.ctx = ctx;
		f->t.uri = strdup(uri);
		f->t.timeout_ms = (ctx->cfg.timeout ? ctx->cfg.timeout : 30) * 1000;
		f->t.priv = &f->p;
		r = f->t.uri ? s3_setup(ctx, uri, &u, &f->p)
			     : cd_error(ctx, -ENOMEM, "cannot use '%s': out of memory", uri);
	}
	cd_uri_clear(&u);
	if (r < 0) {
		free(f->t.uri);
		explicit_bzero(f, sizeof(*f));
		free(f);
		return r;
	}
	snprintf(f->identity, sizeof(f->identity), "%s\n%s\n%s", f->p.endpoint,
		 f->p.bucket, f->p.prefix);
	*out = f;
	return 0;
}

void cd_s3_folder_close(struct cd_s3_folder *f)
{
	if (!f)
		return;
	if (f->list_session)
		curl_easy_cleanup(f->list_session);
	free(f->t.uri);
	explicit_bzero(f, sizeof(*f));
	free(f);
}

const char *cd_s3_folder_identity(const struct cd_s3_folder *f)
{
	return f->identity;
}

const char *cd_s3_folder_prefix(const struct cd_s3_folder *f)
{
	return f->p.prefix;
}

/* Percent-encoding as SigV4 wants it: all but unreserved bytes (and the
 * slashes of a path, when keep_slash). */
static bool encode_into(const char *in, bool keep_slash, char *out, size_t size)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t n = 0;

	for (const unsigned char *s = (const unsigned char *)in; *s; s++) {
		if (n + 4 > size)
			return false;
		if ((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') ||
		    (*s >= '0' && *s <= '9') || strchr("-._~", *s) ||
		    (keep_slash && *s == '/')) {
			out[n++] = (char)*s;
		} else {
			out[n++] = '%';
			out[n++] = hex[*s >> 4];
			out[n++] = hex[*s & 15];
		}
	}
	out[n] = '\0';
	return true;
}

bool cd_xml_unescape(char *text)
{
	static const struct { const char *name; char c; } ents[] = {
		{ "amp;", '&' }, { "lt;", '<' }, { "gt;", '>' }, { "quot;", '"' },
		{ "apos;", '\'' },
	};
	char *w = text;

	for (char *r = text; *r;) {
		size_t i;

		if (*r != '&') {
			*w++ = *r++;
			continue;
		}
		for (i = 0; i < CD_ARRAY_SIZE(ents); i++)
			if (!strncmp(r + 1, ents[i].name, strlen(ents[i].name)))
				break;
		if (i < CD_ARRAY_SIZE(ents)) {
			*w++ = ents[i].c;
			r += 1 + strlen(ents[i].name);
			continue;
		}
		if (r[1] != '#')
			return false;
		char *end;
		unsigned long cp = r[2] == 'x' ? strtoul(r + 3, &end, 16)
					       : strtoul(r + 2, &end, 10);
		if (*end != ';' || cp == 0 || cp > 0x10ffff)
			return false;
		/* UTF-8 for the code point */
		if (cp < 0x80) {
			*w++ = (char)cp;
		} else if (cp < 0x800) {
			*w++ = (char)(0xc0 | cp >> 6);
			*w++ = (char)(0x80 | (cp & 0x3f));
		} else if (cp < 0x10000) {
			*w++ = (char)(0xe0 | cp >> 12);
			*w++ = (char)(0x80 | ((cp >> 6) & 0x3f));
			*w++ = (char)(0x80 | (cp & 0x3f));
		} else {
			*w++ = (char)(0xf0 | cp >> 18);
			*w++ = (char)(0x80 | ((cp >> 12) & 0x3f));
			*w++ = (char)(0x80 | ((cp >> 6) & 0x3f));
			*w++ = (char)(0x80 | (cp & 0x3f));
		}
		r = end + 1;
	}
	*w = '\0';
	return true;
}

/* The text of <tag>...</tag> within [from, to), copied out; false when
 * absent or too long. */
static bool xml_field(const char *from, const char *to, const char *tag,
		      char *out, size_t size)
{
	char open[48], close[48];
	const char *a, *b;

	snprintf(open, sizeof(open), "<%s>", tag);
	snprintf(close, sizeof(close), "</%s>", tag);
	a = memmem(from, (size_t)(to - from), open, strlen(open));
	if (!a)
		return false;
	a += strlen(open);
	b = memmem(a, (size_t)(to - a), close, strlen(close));
	if (!b || (size_t)(b - a) >= size)
		return false;
	memcpy(out, a, (size_t)(b - a));
	out[b - a] = '\0';
	return cd_xml_unescape(out);
}

static int64_t parse_iso_time(const char *s)
{
	struct tm tm = { 0 };

	if (!strptime(s, "%Y-%m-%dT%H:%M:%S", &tm))
		return 0;
	return (int64_t)timegm(&tm);
}

static int list_error(struct cd_s3_folder *f, const struct cd_http_reply *a)
{
	char code[64];

	error_code(a, code, sizeof(code));
	if (!strcmp(code, "NoSuchBucket"))
		return cd_error(f->t.ctx, -ENOENT, "cannot list '%s': no such bucket",
				f->t.uri);
	return cd_error(f->t.ctx, s3_code_errno(code, a->status), "cannot list '%s': "
			"HTTP %ld%s%s", f->t.uri, a->status, code[0] ? " " : "", code);
}

/* One <Contents> element. */
static int list_entry(struct cd_s3_folder *f, const char *from, const char *to,
		      int (*fn)(void *, const struct cd_s3_entry *), void *opaque)
{
	char size[32], etag[128], when[64];
	struct cd_s3_entry e = { 0 };
	char *k = malloc(8192);
	int r;

	if (!k)
		return cd_error(f->t.ctx, -ENOMEM, "cannot list '%s': out of memory",
				f->t.uri);
	e.key = k;
	if (!xml_field(from, to, "Key", k, 8192) || !xml_field(from, to, "Size", size,
							      sizeof(size))) {
		free(k);
		return cd_error(f->t.ctx, -EBADMSG, "cannot list '%s': the server's "
				"listing is malformed", f->t.uri);
	}
	e.size = strtoull(size, NULL, 10);
	if (xml_field(from, to, "ETag", etag, sizeof(etag))) {
		size_t n = strlen(etag);
		if (n >= 2 && etag[0] == '"' && etag[n - 1] == '"')
			snprintf(e.etag, sizeof(e.etag), "%.*s", (int)(n - 2), etag + 1);
		else
			snprintf(e.etag, sizeof(e.etag), "%.79s", etag);
	}
	if (xml_field(from, to, "LastModified", when, sizeof(when)))
		e.mtime = parse_iso_time(when);
	r = fn(opaque, &e);
	free(k);
	return r;
}

static int list_page(struct cd_s3_folder *f, char *reply, size_t len,
		     int (*fn)(void *, const struct cd_s3_entry *), void *opaque,
		     char *token, size_t token_size)
{
	const char *end = reply + len, *at = reply;
	char truncated[16];
	int r;

	while ((at = memmem(at, (size_t)(end - at), "<Contents>", 10))) {
		const char *close = memmem(at, (size_t)(end - at), "</Contents>", 11);
		if (!close)
			return cd_error(f->t.ctx, -EBADMSG, "cannot list '%s': the "
					"server's listing is malformed", f->t.uri);
		r = list_entry(f, at, close, fn, opaque);
		if (r < 0)
			return r;
		at = close + 11;
	}
	token[0] = '\0';
	if (xml_field(reply, end, "IsTruncated", truncated, sizeof(truncated)) &&
	    !strcmp(truncated, "true") &&
	    !xml_field(reply, end, "NextContinuationToken", token, token_size))
		return cd_error(f->t.ctx, -EBADMSG, "cannot list '%s': the listing is "
				"cut short and says nothing of where it goes on", f->t.uri);
	return 0;
}

int cd_s3_folder_list(struct cd_s3_folder *f,
		      int (*fn)(void *opaque, const struct cd_s3_entry *e),
		      void *opaque)
{
	char *reply = malloc(LIST_REPLY_MAX);
	char token[1024] = "", etoken[3200], eprefix[CDISK_MAX_URI * 3 + 1];
	char url[S3_URL_MAX + sizeof(eprefix) + sizeof(etoken)];
	struct cd_http_reply a;
	int r = 0;

	if (!reply)
		return cd_error(f->t.ctx, -ENOMEM, "cannot list '%s': out of memory",
				f->t.uri);
	if (!f->list_session && (r = cd_http_connect(&f->t, &f->list_session)) < 0)
		goto out;
	encode_into(f->p.prefix, false, eprefix, sizeof(eprefix));
	do {
		struct cd_http_request q = { .method = "GET", .url = url,
					     .download = reply,
					     .download_cap = LIST_REPLY_MAX - 1 };
		/* The query's parameters in sorted order, as SigV4 signs them. */
		encode_into(token, false, etoken, sizeof(etoken));
		snprintf(url, sizeof(url), "%s/%s?%s%s%slist-type=2&prefix=%s",
			 f->p.endpoint, f->p.bucket, token[0] ? "continuation-token=" : "",
			 token[0] ? etoken : "", token[0] ? "&" : "", eprefix);
		r = perform(&f->t, f->list_session, &q, &a, "list");
		if (r < 0)
			goto out;
		if (a.status != 200) {
			r = list_error(f, &a);
			goto out;
		}
		reply[a.got] = '\0';
		r = list_page(f, reply, a.got, fn, opaque, token, sizeof(token));
	} while (r == 0 && token[0]);
out:
	free(reply);
	return r;
}

struct get_state {
	int fd;
	uint64_t off;
	bool started;
	int err;
	long status;
	CURL *c;
	struct cd_s3_object_meta *meta;
	char error_body[1024];
	size_t error_len;
};

static size_t on_object_body(char *data, size_t size, size_t n, void *opaque)
{
	struct get_state *g = opaque;
	size_t len = size * n;
	long status = 0;

	curl_easy_getinfo(g->c, CURLINFO_RESPONSE_CODE, &status);
	if (status != 200 && status != 206) {
		size_t room = sizeof(g->error_body) - 1 - g->error_len;
		size_t take = len < room ? len : room;
		memcpy(g->error_body + g->error_len, data, take);
		g->error_len += take;
		g->error_body[g->error_len] = '\0';
		return len;
	}
	/* A server that ignores the range sends it all: start again. */
	if (!g->started && status == 200)
		g->off = 0;
	g->started = true;
	int r = cd_pwrite_full(g->fd, data, len, g->off);
	if (r < 0) {
		g->err = r;
		return 0;
	}
	g->off += len;
	return len;
}

static void header_value(const char *line, size_t len, const char *name,
			 char *out, size_t size)
{
	size_t n = strlen(name);

	if (len <= n || strncasecmp(line, name, n))
		return;
	line += n;
	len -= n;
	while (len && (*line == ' ' || *line == '\t')) {
		line++;
		len--;
	}
	while (len && (line[len - 1] == '\r' || line[len - 1] == '\n' ||
		       line[len - 1] == ' '))
		len--;
	if (len < size) {
		memcpy(out, line, len);
		out[len] = '\0';
	}
}

static size_t on_object_header(char *line, size_t size, size_t n, void *opaque)
{
	struct get_state *g = opaque;
	size_t len = size * n;
	char value[128] = "";
	struct cd_http_reply a = { 0 };

	header_value(line, len, "ETag:", value, sizeof(value));
	if (value[0]) {
		size_t v = strlen(value);
		if (v >= 2 && value[0] == '"' && value[v - 1] == '"')
			snprintf(g->meta->etag, sizeof(g->meta->etag), "%.*s", (int)(v - 2),
				 value + 1);
		else
			snprintf(g->meta->etag, sizeof(g->meta->etag), "%.79s", value);
	}
	value[0] = '\0';
	header_value(line, len, "x-amz-meta-sha256:", value, sizeof(value));
	if (strlen(value) == 64)
		for (int i = 0; i < 65; i++)
			g->meta->sha256[i] = (char)tolower((unsigned char)value[i]);
	value[0] = '\0';
	header_value(line, len, "x-amz-meta-mtime:", value, sizeof(value));
	if (value[0])
		g->meta->mtime = (int64_t)strtod(value, NULL);
	cd_http_parse_header(line, len, &a);
	if (a.total_known) {
		g->meta->total = a.total;
		g->meta->total_known = true;
	}
	return len;
}

/* One request for one object of the folder: its URL, TLS trust and
 * timeouts.  A large object takes as long as it takes; a stalled one
 * does not. */
static void object_request(struct cd_s3_folder *f, CURL *c, const char *url)
{
	const struct cd_config *cfg = &f->t.ctx->cfg;

	curl_easy_reset(c);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)f->t.timeout_ms);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, (long)(f->t.timeout_ms / 1000));
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_USERAGENT, "cdisk/" CDISK_VERSION_STRING);
	if (cfg->ca_file[0])
		curl_easy_setopt(c, CURLOPT_CAINFO, cfg->ca_file);
	else if (getenv("CURL_CA_BUNDLE"))
		curl_easy_setopt(c, CURLOPT_CAINFO, getenv("CURL_CA_BUNDLE"));
	curl_easy_setopt(c, CURLOPT_URL, url);
}

int cd_s3_folder_get(struct cd_s3_folder *f, void **session, const char *key,
		     int fd, uint64_t from, struct cd_s3_object_meta *meta)
{
	char ekey[8192 * 3 + 1], url[sizeof(ekey) + CDISK_MAX_URI + 300], range[48];
	struct get_state g = { .fd = fd, .off = from, .meta = meta };
	struct curl_slist *headers = NULL;
	CURLcode code;
	CURL *c;
	int r;

	memset(meta, 0, sizeof(*meta));
	meta->mtime = -1;
	if (!*session && (r = cd_http_connect(&f->t, session)) < 0)
		return r;
	c = g.c = *session;
	if (!encode_into(key, true, ekey, sizeof(ekey)))
		return cd_error(f->t.ctx, -ENAMETOOLONG, "cannot fetch '%s': key too long",
				key);
	snprintf(url, sizeof(url), "%s/%s/%s", f->p.endpoint, f->p.bucket, ekey);
	object_request(f, c, url);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_object_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &g);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_object_header);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, &g);
	if (from) {
		snprintf(range, sizeof(range), "%llu-", (unsigned long long)from);
		curl_easy_setopt(c, CURLOPT_RANGE, range);
	}
	headers = curl_slist_append(headers, "x-amz-content-sha256: UNSIGNED-PAYLOAD");
	if (f->p.token[0]) {
		char tok[1200];
		snprintf(tok, sizeof(tok), "x-amz-security-token: %s", f->p.token);
		headers = curl_slist_append(headers, tok);
	}
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(c, CURLOPT_AWS_SIGV4, f->p.sigv4);
	curl_easy_setopt(c, CURLOPT_USERNAME, f->p.key_id);
	curl_easy_setopt(c, CURLOPT_PASSWORD, f->p.secret);
	code = curl_easy_perform(c);
	curl_slist_free_all(headers);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &g.status);
	if (g.err)
		return cd_error(f->t.ctx, g.err, "cannot store '%s' in the cache: %s", key,
				strerror(-g.err));
	if (code != CURLE_OK)
		return cd_error(f->t.ctx, code == CURLE_OPERATION_TIMEDOUT ? -ETIMEDOUT :
				-ECONNRESET, "cannot fetch '%s' from '%s': %s", key,
				f->t.uri, curl_easy_strerror(code));
	if (g.status != 200 && g.status != 206) {
		char ecode[64];
		cd_s3_error_code(g.error_body, ecode, sizeof(ecode));
		return cd_error(f->t.ctx, s3_code_errno(ecode, g.status), "cannot fetch "
				"'%s' from '%s': HTTP %ld%s%s", key, f->t.uri, g.status,
				ecode[0] ? " " : "", ecode);
	}
	return 0;
}

void cd_s3_folder_end(struct cd_s3_folder *f, void *session)
{
	(void)f;
	if (session)
		curl_easy_cleanup(session);
}

/* ---- folders: whole objects up (PUT, multipart) and DELETE ---- */

struct send_state {
	CURL *c;
	char *reply;          /* a 2xx body (multipart's XML), NUL-terminated */
	size_t reply_len, reply_cap;
	char error_body[1024];
	size_t error_len;
	char etag[80];
};

static size_t on_send_body(char *data, size_t size, size_t n, void *opaque)
{
	struct send_state *s = opaque;
	size_t len = size * n, room, take;
	long status = 0;

	curl_easy_getinfo(s->c, CURLINFO_RESPONSE_CODE, &status);
	if (status >= 200 && status < 300 && s->reply) {
		room = s->reply_cap - 1 - s->reply_len;
		take = len < room ? len : room;
		memcpy(s->reply + s->reply_len, data, take);
		s->reply_len += take;
		s->reply[s->reply_len] = '\0';
		return len;
	}
	room = sizeof(s->error_body) - 1 - s->error_len;
	take = len < room ? len : room;
	memcpy(s->error_body + s->error_len, data, take);
	s->error_len += take;
	s->error_body[s->error_len] = '\0';
	return len;
}

static void unquote_etag(const char *v, char out[80])
{
	size_t n = strlen(v);

	if (n >= 2 && v[0] == '"' && v[n - 1] == '"')
		snprintf(out, 80, "%.*s", (int)(n - 2), v + 1);
	else
		snprintf(out, 80, "%.79s", v);
}

static size_t on_send_header(char *line, size_t size, size_t n, void *opaque)
{
	struct send_state *s = opaque;
	size_t len = size * n;
	char value[128] = "";

	header_value(line, len, "ETag:", value, sizeof(value));
	if (value[0])
		unquote_etag(value, s->etag);
	return len;
}

/* One request on an object of the folder: method, "?query" or "", the
 * body (may be NULL), the sha256/mtime metadata when given.  0 and the
 * status in *status, or a negative errno naming what failed. */
static int folder_send(struct cd_s3_folder *f, void **session, const char *method,
		       const char *key, const char *query, const void *body, size_t len,
		       const char *sha256, const char *mtime, struct send_state *s,
		       long *status)
{
	char ekey[8192 * 3 + 1], url[sizeof(ekey) + CDISK_MAX_URI + 4000], h[1200];
	struct curl_slist *headers = NULL;
	CURLcode code;
	CURL *c;
	int r;

	if (!*session && (r = cd_http_connect(&f->t, session)) < 0)
		return r;
	c = s->c = *session;
	if (!encode_into(key, true, ekey, sizeof(ekey)))
		return cd_error(f->t.ctx, -ENAMETOOLONG, "cannot send '%s': key too long", key);
	snprintf(url, sizeof(url), "%s/%s/%s%s", f->p.endpoint, f->p.bucket, ekey, query);
	object_request(f, c, url);
	curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	if (body || !strcmp(method, "PUT") || !strcmp(method, "POST")) {
		/* An empty body too: a PUT of an empty file or a marker. */
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, body ? body : "");
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
		headers = curl_slist_append(headers, "Content-Type: application/octet-stream");
	} else if (!strcmp(method, "HEAD")) {
		curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
	}
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_send_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, s);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_send_header);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, s);
	headers = curl_slist_append(headers, "x-amz-content-sha256: UNSIGNED-PAYLOAD");
	if (sha256) {
		snprintf(h, sizeof(h), "x-amz-meta-sha256: %s", sha256);
		headers = curl_slist_append(headers, h);
	}
	if (mtime) {
		snprintf(h, sizeof(h), "x-amz-meta-mtime: %s", mtime);
		headers = curl_slist_append(headers, h);
	}
	if (f->p.token[0]) {
		snprintf(h, sizeof(h), "x-amz-security-token: %s", f->p.token);
		headers = curl_slist_append(headers, h);
	}
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(c, CURLOPT_AWS_SIGV4, f->p.sigv4);
	curl_easy_setopt(c, CURLOPT_USERNAME, f->p.key_id);
	curl_easy_setopt(c, CURLOPT_PASSWORD, f->p.secret);
	code = curl_easy_perform(c);
	curl_slist_free_all(headers);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
	if (code != CURLE_OK)
		return cd_error(f->t.ctx, code == CURLE_OPERATION_TIMEDOUT ? -ETIMEDOUT :
				-ECONNRESET, "cannot send '%s' to '%s': %s", key, f->t.uri,
				curl_easy_strerror(code));
	return 0;
}

static int send_error(struct cd_s3_folder *f, const char *what, const char *key,
		      const struct send_state *s, long status)
{
	char code[64];

	cd_s3_error_code(s->error_body, code, sizeof(code));
	return cd_error(f->t.ctx, s3_code_errno(code, status), "cannot %s '%s' in '%s': "
			"HTTP %ld%s%s", what, key, f->t.uri, status, code[0] ? " " : "", code);
}

int cd_s3_folder_put(struct cd_s3_folder *f, void **session, const char *key,
		     const void *data, size_t len, const char *sha256, const char *mtime,
		     char etag[80])
{
	struct send_state s = { 0 };
	long status = 0;
	int r = folder_send(f, session, "PUT", key, "", data, len, sha256, mtime, &s, &status);

	if (r < 0)
		return r;
	if (status < 200 || status >= 300)
		return send_error(f, "store", key, &s, status);
	snprintf(etag, 80, "%s", s.etag);
	return 0;
}

int cd_s3_folder_delete(struct cd_s3_folder *f, void **session, const char *key)
{
	struct send_state s = { 0 };
	long status = 0;
	char code[64];
	int r = folder_send(f, session, "DELETE", key, "", NULL, 0, NULL, NULL, &s, &status);

	if (r < 0)
		return r;
	cd_s3_error_code(s.error_body, code, sizeof(code));
	if ((status >= 200 && status < 300) || (status == 404 && !strcmp(code, "NoSuchKey")))
		return 0;
	return send_error(f, "delete", key, &s, status);
}

int cd_s3_multipart_begin(struct cd_s3_folder *f, void **session, const char *key,
			  const char *sha256, const char *mtime, char *upload_id,
			  size_t size)
{
	char reply[4096];
	struct send_state s = { .reply = reply, .reply_cap = sizeof(reply) };
	long status = 0;
	int r = folder_send(f, session, "POST", key, "?uploads=", NULL, 0, sha256, mtime,
			    &s, &status);

	if (r < 0)
		return r;
	if (status < 200 || status >= 300)
		return send_error(f, "start storing", key, &s, status);
	if (!xml_field(reply, reply + s.reply_len, "UploadId", upload_id, size))
		return cd_error(f->t.ctx, -EBADMSG, "cannot store '%s' in '%s': the server "
				"gave no upload id", key, f->t.uri);
	return 0;
}

int cd_s3_multipart_part(struct cd_s3_folder *f, void **session, const char *key,
			 const char *upload_id, unsigned number, const void *data,
			 size_t len, char etag[80])
{
	char query[3400], eid[1100 * 3];
	struct send_state s = { 0 };
	long status = 0;
	int r;

	encode_into(upload_id, false, eid, sizeof(eid));
	snprintf(query, sizeof(query), "?partNumber=%u&uploadId=%s", number, eid);
	r = folder_send(f, session, "PUT", key, query, data, len, NULL, NULL, &s, &status);
	if (r < 0)
		return r;
	if (status < 200 || status >= 300)
		return send_error(f, "store a part of", key, &s, status);
	snprintf(etag, 80, "%s", s.etag);
	return 0;
}

int cd_s3_multipart_end(struct cd_s3_folder *f, void **session, const char *key,
			const char *upload_id, const char (*etags)[80], unsigned parts,
			char etag[80])
{
	char query[3400], eid[1100 * 3], reply[4096], got[128];
	struct send_state s = { .reply = reply, .reply_cap = sizeof(reply) };
	size_t cap = 128 + (size_t)parts * 160, n;
	char *xml = malloc(cap);
	long status = 0;
	int r;

	if (!xml)
		return cd_error(f->t.ctx, -ENOMEM, "out of memory");
	n = (size_t)snprintf(xml, cap, "<CompleteMultipartUpload>");
	for (unsigned i = 0; i < parts; i++)
		n += (size_t)snprintf(xml + n, cap - n, "<Part><PartNumber>%u</PartNumber>"
				      "<ETag>\"%s\"</ETag></Part>", i + 1, etags[i]);
	n += (size_t)snprintf(xml + n, cap - n, "</CompleteMultipartUpload>");
	encode_into(upload_id, false, eid, sizeof(eid));
	snprintf(query, sizeof(query), "?uploadId=%s", eid);
	r = folder_send(f, session, "POST", key, query, xml, n, NULL, NULL, &s, &status);
	free(xml);
	if (r < 0)
		return r;
	/* A 200 may still carry an <Error> (S3 sends it late). */
	if (status < 200 || status >= 300 || strstr(reply, "<Error>")) {
		if (strstr(reply, "<Error>"))
			snprintf(s.error_body, sizeof(s.error_body), "%.1000s", reply);
		return send_error(f, "finish storing", key, &s, status);
	}
	if (xml_field(reply, reply + s.reply_len, "ETag", got, sizeof(got)))
		unquote_etag(got, etag);
	else
		snprintf(etag, 80, "%s", s.etag);
	if (!etag[0]) {
		/* radosgw answers with an empty <ETag>: ask the object. */
		struct send_state h = { 0 };
		r = folder_send(f, session, "HEAD", key, "", NULL, 0, NULL, NULL, &h, &status);
		if (r < 0)
			return r;
		snprintf(etag, 80, "%s", h.etag);
	}
	if (!etag[0])
		return cd_error(f->t.ctx, -EBADMSG, "cannot store '%s' in '%s': the server "
				"gave no ETag (%.200s)", key, f->t.uri, reply);
	return 0;
}

void cd_s3_multipart_abort(struct cd_s3_folder *f, void **session, const char *key,
			   const char *upload_id)
{
	char query[3400], eid[1100 * 3], saved[CD_ERROR_MAX];
	struct send_state s = { 0 };
	long status;

	/* Best effort, and the caller's message stays: an upload never
	 * finished is no object either way. */
	snprintf(saved, sizeof(saved), "%s", cd_errbuf());
	encode_into(upload_id, false, eid, sizeof(eid));
	snprintf(query, sizeof(query), "?uploadId=%s", eid);
	folder_send(f, session, "DELETE", key, query, NULL, 0, NULL, NULL, &s, &status);
	snprintf(cd_errbuf(), CD_ERROR_MAX, "%s", saved);
}

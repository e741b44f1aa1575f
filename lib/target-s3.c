/* S3 targets: s3://bucket/prefix holds a disk as fixed-size chunk objects
 * PREFIX/chunk-<16 hex digits of the chunk's index>, and a manifest
 * PREFIX/cdisk-manifest.json with the disk's size and chunk size.  A
 * chunk that is all zeros is not stored (it is deleted), so reading a
 * missing chunk gives zeros.  Requests are signed with AWS SigV4 by
 * libcurl.  A PUT is durable when it is answered: there is nothing to
 * flush. */
#include <ini.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "http.h"

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
	.close = s3_close,
};

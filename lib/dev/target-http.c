/* HTTP(S) targets: one object read with range requests, a read-only base.
 * Also the libcurl plumbing that the S3 target shares.  A libcurl easy
 * handle keeps its connection alive, so one handle is one pool session. */
#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <time.h>

#include "cdisk.h"
#include "ctx.h"
#include "http.h"
#include "target.h"
#include "uri.h"

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void curl_init_once(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
}

static void set_defaults(struct cd_target *t, CURL *c)
{
	const char *ca = t->ctx->cfg.ca_file[0] ? t->ctx->cfg.ca_file : getenv("CURL_CA_BUNDLE");

	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)t->timeout_ms);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)t->timeout_ms);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_USERAGENT, "cdisk/" CDISK_VERSION_STRING);
	if (ca && *ca)
		curl_easy_setopt(c, CURLOPT_CAINFO, ca);
}

/* A session: one libcurl handle, keeping its connection alive.  Its
 * options are set by each request (cd_http_perform). */
int cd_http_connect(struct cd_target *t, void **session)
{
	pthread_once(&curl_once, curl_init_once);
	*session = curl_easy_init();
	if (!*session)
		return cd_error(t->ctx, -ENOMEM, "cannot reach '%s': out of memory", t->uri);
	return 0;
}

void cd_http_disconnect(struct cd_target *t, void *session)
{
	(void)t;
	curl_easy_cleanup(session);
}

const char *cd_http_reason(long status)
{
	switch (status) {
	case 400: return "400 Bad Request";
	case 401: return "401 Unauthorized";
	case 403: return "403 Forbidden";
	case 404: return "404 Not Found";
	case 405: return "405 Method Not Allowed";
	case 409: return "409 Conflict";
	case 416: return "416 Range Not Satisfiable";
	case 429: return "429 Too Many Requests";
	case 500: return "500 Internal Server Error";
	case 502: return "502 Bad Gateway";
	case 503: return "503 Service Unavailable";
	case 504: return "504 Gateway Timeout";
	default: return NULL;
	}
}

int cd_http_status_errno(long status)
{
	if (status >= 200 && status < 300)
		return 0;
	switch (status) {
	case 401:
	case 403:
		return -EACCES;
	case 404:
	case 410:
		return -ENOENT;
	case 416:
		return -EINVAL;
	case 408:
	case 429:
	case 503:
	case 504:
		return -EAGAIN;
	default:
		return -EIO;
	}
}

struct transfer {
	CURL *c;
	const struct cd_http_request *q;
	struct cd_http_reply *out;
	size_t sent;
};

static bool status_ok(CURL *c)
{
	long status = 0;

	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	return status >= 200 && status < 300;
}

static size_t on_body(char *data, size_t size, size_t n, void *opaque)
{
	struct transfer *x = opaque;
	struct cd_http_reply *out = x->out;
	size_t len = size * n;

	if (!status_ok(x->c)) {
		size_t room = sizeof(out->error_body) - 1 - out->error_len;
		size_t take = len < room ? len : room;
		memcpy(out->error_body + out->error_len, data, take);
		out->error_len += take;
		out->error_body[out->error_len] = '\0';
		return len;
	}
	if (!x->q->download || len > x->q->download_cap - out->got) {
		out->overflow = true;
		return 0;
	}
	memcpy((uint8_t *)x->q->download + out->got, data, len);
	out->got += len;
	return len;
}

static size_t on_upload(char *buf, size_t size, size_t n, void *opaque)
{
	struct transfer *x = opaque;
	size_t left = x->q->upload_len - x->sent;
	size_t take = size * n < left ? size * n : left;

	memcpy(buf, (const uint8_t *)x->q->upload + x->sent, take);
	x->sent += take;
	return take;
}

/* Retry-After is either seconds or an HTTP date; a day at most, so a
 * confused server cannot park a cron job for a year. */
static uint32_t retry_after_seconds(const char *value)
{
	char *end;
	unsigned long n;
	time_t when;

	while (*value == ' ' || *value == '\t')
		value++;
	errno = 0;
	n = strtoul(value, &end, 10);
	if (end != value && !errno) {
		while (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n')
			end++;
		if (!*end)
			return n > 86400 ? 86400 : n ? (uint32_t)n : 1;
	}
	when = curl_getdate(value, NULL);
	if (when <= 0)
		return 0;
	when -= time(NULL);
	return when > 86400 ? 86400 : when > 0 ? (uint32_t)when : 1;
}

void cd_http_parse_header(const char *line, size_t len, struct cd_http_reply *out)
{
	char text[256];
	unsigned long long a, b, total;

	if (len >= sizeof(text))
		return;
	memcpy(text, line, len);
	text[len] = '\0';
	if (!strncasecmp(text, "Content-Range:", 14) &&
	    (sscanf(text + 14, " bytes %llu-%llu/%llu", &a, &b, &total) == 3 ||
	     sscanf(text + 14, " bytes */%llu", &total) == 1)) {
		out->total = total;
		out->total_known = true;
	} else if (!strncasecmp(text, "Accept-Ranges:", 14) && strstr(text + 14, "bytes")) {
		out->ranges = true;
	} else if (!strncasecmp(text, "Retry-After:", 12)) {
		out->retry_after = retry_after_seconds(text + 12);
	}
}

static size_t on_header(char *line, size_t size, size_t n, void *opaque)
{
	struct transfer *x = opaque;

	cd_http_parse_header(line, size * n, x->out);
	return size * n;
}

static int curl_errno(CURLcode code)
{
	switch (code) {
	case CURLE_OPERATION_TIMEDOUT:
		return -ETIMEDOUT;
	case CURLE_COULDNT_CONNECT:
		return -ECONNREFUSED;
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_RESOLVE_PROXY:
		return -EHOSTUNREACH;
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_CERTPROBLEM:
		return -EACCES;
	case CURLE_TOO_MANY_REDIRECTS:
		return -ELOOP;
	case CURLE_OUT_OF_MEMORY:
		return -ENOMEM;
	case CURLE_URL_MALFORMAT:
	case CURLE_UNSUPPORTED_PROTOCOL:
		return -EINVAL;
	default:
		return -ECONNRESET;
	}
}

int cd_http_perform(struct cd_target *t, CURL *c, const struct cd_http_request *q,
		    struct cd_http_reply *out, const char *what)
{
	struct transfer x = { c, q, out, 0 };
	struct curl_slist *headers = NULL;
	char range[64], token[1200];
	CURLcode code;

	memset(out, 0, sizeof(*out));
	curl_easy_reset(c);
	set_defaults(t, c);   /* the reset dropped them */
	curl_easy_setopt(c, CURLOPT_URL, q->url);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &x);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, &x);
	if (!q->sigv4) {
		curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
		curl_easy_setopt(c, CURLOPT_MAXREDIRS, 5L);
	}
	if (!strcmp(q->method, "HEAD")) {
		curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
	} else if (!strcmp(q->method, "PUT")) {
		curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
		curl_easy_setopt(c, CURLOPT_READFUNCTION, on_upload);
		curl_easy_setopt(c, CURLOPT_READDATA, &x);
		curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)q->upload_len);
		/* curl would sign an emptied Expect header that it then leaves
		 * out, and the server would refuse the signature. */
		if (!q->sigv4)
			headers = curl_slist_append(headers, "Expect:");
	} else if (strcmp(q->method, "GET") != 0) {
		curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, q->method);
	}
	if (q->range_len) {
		snprintf(range, sizeof(range), "%llu-%llu", (unsigned long long)q->range_off,
			 (unsigned long long)(q->range_off + q->range_len - 1));
		curl_easy_setopt(c, CURLOPT_RANGE, range);
	}
	if (q->sigv4) {
		/* Payloads are not hashed into the signature: the transport (TLS)
		 * protects them, and hashing 4 MiB per request costs more than
		 * it buys.  Every S3 server accepts this. */
		headers = curl_slist_append(headers, "x-amz-content-sha256: UNSIGNED-PAYLOAD");
		if (q->session_token) {
			snprintf(token, sizeof(token), "x-amz-security-token: %s",
				 q->session_token);
			headers = curl_slist_append(headers, token);
		}
		curl_easy_setopt(c, CURLOPT_AWS_SIGV4, q->sigv4);
		curl_easy_setopt(c, CURLOPT_USERNAME, q->user);
		curl_easy_setopt(c, CURLOPT_PASSWORD, q->secret);
	}
	if (headers)
		curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
	code = curl_easy_perform(c);
	curl_slist_free_all(headers);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
	if (code == CURLE_WRITE_ERROR && out->overflow)
		return cd_error(t->ctx, -EIO, "cannot %s '%s': the server sent more than "
				"was asked for", what, t->uri);
	if (code != CURLE_OK) {
		int r = curl_errno(code);
		if (r == -ETIMEDOUT)
			return cd_error(t->ctx, r, "cannot %s '%s': no answer within %u s",
					what, t->uri, t->timeout_ms / 1000);
		return cd_error(t->ctx, r, "cannot %s '%s': %s", what, t->uri,
				curl_easy_strerror(code));
	}
	if (!out->total_known && (out->status == 200)) {
		curl_off_t len = -1;
		curl_easy_getinfo(c, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &len);
		if (len >= 0) {
			out->total = (uint64_t)len;
			out->total_known = true;
		}
	}
	return 0;
}

/* ---- the HTTP target ---- */

static int http_status_error(struct cd_target *t, long status, const char *what)
{
	const char *reason = cd_http_reason(status);

	if (reason)
		return cd_error(t->ctx, cd_http_status_errno(status), "cannot %s '%s': "
				"the server answered %s", what, t->uri, reason);
	return cd_error(t->ctx, cd_http_status_errno(status), "cannot %s '%s': the "
			"server answered HTTP %ld", what, t->uri, status);
}

/* The size: HEAD when the server says it serves ranges, else the total
 * in the Content-Range of a one-byte GET. */
static int http_size(struct cd_target *t, CURL *c)
{
	struct cd_http_request q = { .method = "HEAD", .url = t->uri };
	struct cd_http_reply a;
	uint8_t byte;
	int r = cd_http_perform(t, c, &q, &a, "reach");

	if (r < 0)
		return r;
	if (a.status >= 200 && a.status < 300 && a.ranges && a.total_known) {
		t->size = a.total;
		return 0;
	}
	if (a.status != 405 && a.status != 501 && (a.status < 200 || a.status >= 300))
		return http_status_error(t, a.status, "open");
	q.method = "GET";
	q.range_off = 0;
	q.range_len = 1;
	q.download = &byte;
	q.download_cap = 1;
	r = cd_http_perform(t, c, &q, &a, "open");
	if (r < 0)
		return r;
	if (a.status == 416 && a.total_known) {
		t->size = a.total;
		return 0;
	}
	if (a.status == 200)
		return cd_error(t->ctx, -EOPNOTSUPP, "cannot use '%s': the server does not "
				"answer range requests", t->uri);
	if (a.status != 206)
		return http_status_error(t, a.status, "open");
	if (!a.total_known)
		return cd_error(t->ctx, -EIO, "cannot size '%s': the server does not say "
				"how long the object is", t->uri);
	t->size = a.total;
	return 0;
}

static int http_open(struct cd_target *t, const struct cd_uri *u)
{
	CURL *c = NULL;
	int r;

	(void)u;
	r = cd_http_connect(t, (void **)&c);
	if (r < 0)
		return r;
	r = http_size(t, c);
	if (r < 0) {
		curl_easy_cleanup(c);
		return r;
	}
	/* An object behind a URL is a base: nothing here ever writes it. */
	t->readonly = true;
	t->max_request = 64u << 20;
	cd_target_keep_session(t, c);
	return 0;
}

static int http_read(struct cd_target *t, void *s, void *buf, size_t len,
		     uint64_t off)
{
	struct cd_http_request q = {
		.method = "GET", .url = t->uri, .range_off = off, .range_len = len,
		.download = buf, .download_cap = len,
	};
	struct cd_http_reply a;
	int r = cd_http_perform(t, s, &q, &a, "read");

	if (r < 0)
		return r;
	if (a.status == 416)
		return cd_error(t->ctx, -EIO, "cannot read '%s' at %llu: the object is "
				"shorter than it was (%llu bytes, not %llu)", t->uri,
				(unsigned long long)off, (unsigned long long)a.total,
				(unsigned long long)t->size);
	if (a.status != 206 && !(a.status == 200 && off == 0 && len == t->size))
		return http_status_error(t, a.status, "read");
	if (a.got != len)
		return cd_error(t->ctx, -EIO, "cannot read '%s' at %llu: %zu bytes came "
				"back, not %zu (the object is shorter than it was)", t->uri,
				(unsigned long long)off, a.got, len);
	return 0;
}

static int http_refuse(struct cd_target *t)
{
	return cd_error(t->ctx, -EROFS, "cannot write to '%s': HTTP objects are "
			"read-only", t->uri);
}

static int http_write(struct cd_target *t, void *s, const void *buf, size_t len,
		      uint64_t off)
{
	(void)s, (void)buf, (void)len, (void)off;
	return http_refuse(t);
}

static int http_flush(struct cd_target *t, void *s)
{
	(void)s;
	return http_refuse(t);
}

int cd_http_ping(struct cd_target *t, CURL *c, const char *url,
		 const char *sigv4, const char *user, const char *secret,
		 const char *token)
{
	struct cd_http_request q = { .method = "HEAD", .url = url, .sigv4 = sigv4,
				     .user = user, .secret = secret,
				     .session_token = token };
	struct cd_http_reply a;
	int r = cd_http_perform(t, c, &q, &a, "ping");

	if (r < 0)
		return r;
	if (a.status == 429 || a.status == 503)
		t->retry_after = a.retry_after;
	if (a.status == 405 || a.status == 501)
		return -EOPNOTSUPP;
	return a.status >= 200 && a.status < 300 ? 0 : http_status_error(t, a.status, "ping");
}

/* HTTP has no name for the storage behind an object other than its URL,
 * and an S3 store none other than endpoint, bucket and key: the best the
 * protocol allows is the URL in one canonical spelling.  Two host names
 * of one server (or one name behind many servers) still differ; ETags
 * name a version of the content, not the place, and change with it. */
int cd_http_identity(struct cd_target *t, const char *kind, const char *url,
		     char *out, size_t len)
{
	CURLU *h = curl_url();
	char *host = NULL, *port = NULL, *path = NULL;
	size_t n;
	int r = -ENOMEM, w;

	if (!h)
		goto out;
	if (curl_url_set(h, CURLUPART_URL, url, 0) != CURLUE_OK ||
	    curl_url_get(h, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
	    curl_url_get(h, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK ||
	    curl_url_get(h, CURLUPART_PATH, &path, CURLU_URLDECODE) != CURLUE_OK) {
		r = cd_error(t->ctx, -EINVAL, "cannot tell which object '%s' is: '%s' is "
			     "not a URL libcurl takes", t->uri, url);
		goto out;
	}
	for (char *c = host; *c; c++)
		*c = (char)tolower((unsigned char)*c);
	n = strlen(path);
	while (n && path[n - 1] == '/')
		path[--n] = '\0';
	w = snprintf(out, len, "%s:%s:%s%s%s", kind, host, port,
		     path[0] == '/' ? "" : "/", path);
	r = w < 0 || (size_t)w >= len ?
		cd_error(t->ctx, -ENAMETOOLONG, "'%s': identity does not fit in %zu "
			 "bytes", t->uri, len) : 0;
out:
	if (r == -ENOMEM)
		cd_error(t->ctx, r, "'%s': out of memory", t->uri);
	curl_free(host);
	curl_free(port);
	curl_free(path);
	curl_url_cleanup(h);
	return r;
}

static int http_identity(struct cd_target *t, void *s, char *out, size_t len)
{
	(void)s;
	return cd_http_identity(t, "http", t->uri, out, len);
}

/* A server that does not answer HEAD gets the one-byte read it sized by. */
static int http_ping(struct cd_target *t, void *s)
{
	int r = cd_http_ping(t, s, t->uri, NULL, NULL, NULL, NULL);
	uint8_t byte;

	return r == -EOPNOTSUPP ? http_read(t, s, &byte, 1, 0) : r;
}

const struct cd_target_ops cd_http_target_ops = {
	.name = "http",
	.open = http_open,
	.connect = cd_http_connect,
	.disconnect = cd_http_disconnect,
	.pread = http_read,
	.pwrite = http_write,
	.flush = http_flush,
	.ping = http_ping,
	.identity = http_identity,
};

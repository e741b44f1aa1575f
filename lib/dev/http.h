/* One HTTP request through libcurl, shared by the HTTP and S3 targets. */
#ifndef CDISK_HTTP_H
#define CDISK_HTTP_H

#include <curl/curl.h>

#include "cdisk.h"
#include "target.h"

struct cd_http_request {
	const char *method;        /* "GET", "HEAD", "PUT", "DELETE" */
	const char *url;
	uint64_t range_off;        /* with range_len: a Range header */
	uint64_t range_len;
	const void *upload;        /* PUT body */
	size_t upload_len;
	void *download;            /* where a 2xx body goes */
	size_t download_cap;
	const char *sigv4;         /* "aws:amz:REGION:s3", or NULL */
	const char *user, *secret; /* SigV4 keys */
	const char *session_token; /* x-amz-security-token, or NULL */
};

struct cd_http_reply {
	long status;
	size_t got;                /* bytes of a 2xx body stored */
	bool overflow;             /* a 2xx body longer than download_cap */
	uint64_t total;            /* from Content-Range or Content-Length; 0 unknown */
	bool total_known;
	bool ranges;               /* Accept-Ranges: bytes */
	uint32_t retry_after;      /* Retry-After, in seconds; 0: none */
	char error_body[1024];     /* the start of a non-2xx body */
	size_t error_len;
};

/* A session (a libcurl handle), for the kinds' connect and disconnect. */
int cd_http_connect(struct cd_target *t, void **session);
void cd_http_disconnect(struct cd_target *t, void *session);
/* 0 when an answer came (any status), or a negative errno with a message
 * on t->ctx naming what and the URI. */
int cd_http_perform(struct cd_target *t, CURL *c, const struct cd_http_request *q,
		    struct cd_http_reply *out, const char *what);
/* One header line: Content-Range, Accept-Ranges and Retry-After go
 * into out. */
void cd_http_parse_header(const char *line, size_t len, struct cd_http_reply *out);
/* The S3 manifest, checked; and the <Code> of an S3 error body ("" if none). */
int cd_s3_parse_manifest(struct cdisk_ctx *ctx, const char *uri, const char *text,
			 size_t len, uint64_t *size, uint32_t *chunk);
void cd_s3_error_code(const char *body, char *out, size_t size);
/* errno for an HTTP status (e.g. 404: -ENOENT, 503: -EAGAIN). */
int cd_http_status_errno(long status);
/* HEAD of url: 0 for 2xx, -EAGAIN (t->retry_after set) when the server
 * answers 429 or 503, -EOPNOTSUPP (no message) for 405 or 501, else an
 * error naming the status. */
int cd_http_ping(struct cd_target *t, CURL *c, const char *url,
		 const char *sigv4, const char *user, const char *secret,
		 const char *token);
/* "KIND:HOST:PORT/PATH" for url (cd_target_identity of the HTTP and S3
 * kinds): the host lowercased, the scheme's port filled in, the path
 * decoded with "." and ".." resolved, no trailing '/', no query. */
int cd_http_identity(struct cd_target *t, const char *kind, const char *url,
		     char *out, size_t len);
/* "404 Not Found" and the like. */
const char *cd_http_reason(long status);

#endif

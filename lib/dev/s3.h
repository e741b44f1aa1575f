/* The S3 side of cloud folders (target-s3.c): listing a bucket's prefix,
 * whole objects down and up.  Apart from folder.h so that the S3 leaf
 * (lib/dev/) does not include the folder engine's header (lib/engine/). */
#ifndef CDISK_S3_H
#define CDISK_S3_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cdisk.h"

struct cd_s3_folder;

/* One object of a listing; key is the whole key, NUL-terminated. */
struct cd_s3_entry {
	const char *key;
	uint64_t size;
	char etag[80];     /* without its quotes */
	int64_t mtime;     /* LastModified, seconds since the epoch */
};

/* What a GET learned besides the body. */
struct cd_s3_object_meta {
	char etag[80];
	char sha256[65];   /* x-amz-meta-sha256, lowercase hex, or "" */
	int64_t mtime;     /* x-amz-meta-mtime (rclone's), or -1 */
	uint64_t total;    /* the object's whole size, when the server said */
	bool total_known;
};

/* s3://bucket/prefix/: the endpoint and keys as for S3 targets. */
int cd_s3_folder_open(struct cdisk_ctx *ctx, const char *uri,
		      struct cd_s3_folder **out);
void cd_s3_folder_close(struct cd_s3_folder *f);
/* "ENDPOINT\nBUCKET\nPREFIX": what names the folder wherever it is used. */
const char *cd_s3_folder_identity(const struct cd_s3_folder *f);
const char *cd_s3_folder_prefix(const struct cd_s3_folder *f);
/* Every object under the prefix, page by page in key order; fn's
 * negative return stops the listing and is returned. */
int cd_s3_folder_list(struct cd_s3_folder *f,
		      int (*fn)(void *opaque, const struct cd_s3_entry *e),
		      void *opaque);
/* One object's bytes from offset from on, appended to fd.  *session is a
 * libcurl handle of the caller's thread (NULL: one is made; the caller
 * frees it with cd_s3_folder_end). */
int cd_s3_folder_get(struct cd_s3_folder *f, void **session, const char *key,
		     int fd, uint64_t from, struct cd_s3_object_meta *meta);
void cd_s3_folder_end(struct cd_s3_folder *f, void *session);

/* Whole objects up: a single PUT (atomic: the object is all there or
 * not), or a multipart upload that is no object until it is ended.  The
 * sha256 (hex) and mtime ("SECONDS.NANOSECONDS") go into the object's
 * metadata as rclone writes them; etag gets the new object's ETag. */
int cd_s3_folder_put(struct cd_s3_folder *f, void **session, const char *key,
		     const void *data, size_t len, const char *sha256, const char *mtime,
		     char etag[80]);
int cd_s3_multipart_begin(struct cd_s3_folder *f, void **session, const char *key,
			  const char *sha256, const char *mtime, char *upload_id,
			  size_t size);
/* number counts from 1. */
int cd_s3_multipart_part(struct cd_s3_folder *f, void **session, const char *key,
			 const char *upload_id, unsigned number, const void *data,
			 size_t len, char etag[80]);
int cd_s3_multipart_end(struct cd_s3_folder *f, void **session, const char *key,
			const char *upload_id, const char (*etags)[80], unsigned parts,
			char etag[80]);
void cd_s3_multipart_abort(struct cd_s3_folder *f, void **session, const char *key,
			   const char *upload_id);
/* A key that is gone already is no error. */
int cd_s3_folder_delete(struct cd_s3_folder *f, void **session, const char *key);

/* XML text with its five entities and character references decoded, in
 * place; false when it holds a reference that is not one. */
bool cd_xml_unescape(char *text);

#endif

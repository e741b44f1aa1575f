/* Cloud folders (an S3 bucket and prefix holding one object per file)
 * made into disk images: the S3 side lives in target-s3.c (s3.h), the
 * cache and the image in folder.c. */
#ifndef CDISK_FOLDER_H
#define CDISK_FOLDER_H

#include "cdisk.h"
#include "s3.h"

/* The cache's files for a folder (folder.c): ID is the SHA-256 of its
 * identity.  out holds PATH_MAX bytes. */
int cd_folder_cache_file(struct cdisk_ctx *ctx, const char *folder_id,
			 const char *suffix, char *out);
/* Each disk made from a folder keeps its own state of the last sync or
 * pull in the cache (folders/SID.state, .pull, .lock): SID is the
 * folder's ID for its writer (one a folder), and ID.r-H for a reader
 * (H: the SHA-256 of the disk's absolute path), so that each reader is
 * pulled into on its own and a disk's files are found from its path. */
#define CD_FOLDER_SID_MAX (64 + 3 + 64 + 1)
void cd_folder_reader_id(const char *folder_id, const char *disk,
			 char out[CD_FOLDER_SID_MAX]);
/* Whether a key under the prefix (rel; a marker ends in '/') is one of a
 * disk made with these --include and --exclude globs (NULL-terminated
 * lists, or NULL): a glob with a slash matches the path, one without the
 * file's own name.  With --include, markers are not: empty folders are
 * kept only when all is taken. */
bool cd_folder_wanted(const char *const *include, const char *const *exclude,
		      const char *rel);
/* Keys one a line, escaped as in the cache's listings. */
void cd_folder_escape(const char *in, FILE *out);
void cd_folder_unescape(char *s);

/* A cloud object into the cache (objects/ID), fetched unless a checked
 * copy is there; obj holds PATH_MAX bytes. */
int cd_folder_fetch(struct cdisk_ctx *ctx, struct cd_s3_folder *f, void **session,
		    const char *key, const char *etag, uint64_t size, int64_t mtime,
		    char *obj, char sha[65], int64_t *mtime_out, bool *fetched);

#endif

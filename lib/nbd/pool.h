/* Per-user images in a pool (cdisk-serve --pool DIR): DIR/USER/IMAGE.cdisk
 * is export USER/IMAGE, DIR/shared/IMAGE.cdisk the read-only shared/IMAGE.
 * A client's name never becomes a path: it is looked up among what a scan
 * found, and a scan builds paths only from names that pass
 * cd_pool_name_valid, in folders and files that are not symbolic links. */
#ifndef CDISK_POOL_H
#define CDISK_POOL_H

#include <stdbool.h>

#include "cdisk.h"
#include "server.h"

#define CD_POOL_IMAGE_MAX 128
#define CD_POOL_SHARED "shared"
#define CD_POOL_SUFFIX ".cdisk"

struct cd_pool;

/* A user or image name: 1 to max letters, digits, '.', '_' or '-', not
 * starting with '.' or '-' (so never "..", never hidden, never an
 * option); no '/', no control character. */
bool cd_pool_name_valid(const char *name, size_t max);
/* "USER/IMAGE" split into its names, both valid; false otherwise. */
bool cd_pool_split_export(const char *export, char *user, size_t ulen, char *image,
			  size_t ilen);

struct cd_users;
/* The users file's quotas (NULL: none), for images served now and later:
 * quota_used is the bytes a user's writable images hold (a write past it
 * fails with ENOSPC), quota_size the total of their sizes (pool-create
 * past it is refused with EDQUOT). */
void cd_pool_set_quotas(struct cd_pool *p, const struct cd_users *users);

/* read_only: every image, not only shared/'s (cdisk-serve --read-only). */
int cd_pool_open(struct cdisk_ctx *ctx, const char *dir, bool read_only,
		 struct cd_pool **out);
/* Every image closed: no connection may hold one any more. */
void cd_pool_free(struct cd_pool *p);
/* The inotify descriptor to poll (-1: none); readable: call cd_pool_events. */
int cd_pool_fd(const struct cd_pool *p);
void cd_pool_events(struct cd_pool *p);
/* Milliseconds until a scan is due (-1: none); cd_pool_tick runs it. */
int cd_pool_timeout_ms(const struct cd_pool *p);
void cd_pool_tick(struct cd_pool *p);

/* One image a scan passed over, and why (rescan's answer). */
struct cd_pool_skip {
	char name[300];
	char reason[300];
};

struct cd_pool_scan {
	unsigned added, removed, served;
	struct cd_pool_skip *skipped;
	size_t nskipped;
};

/* Serve what the folder holds now: new images opened, those gone (or
 * replaced) dropped, each kept open for the connections that have it. */
int cd_pool_rescan(struct cd_pool *p, struct cd_pool_scan *result);
void cd_pool_scan_free(struct cd_pool_scan *result);

/* The export by name, held until cd_pool_put; NULL when not served. */
struct cd_export *cd_pool_get(struct cd_pool *p, const char *name);
void cd_pool_put(struct cd_export *e);
/* The served image whose file path names, held as cd_pool_get's. */
struct cd_export *cd_pool_get_by_path(struct cd_pool *p, const char *path);
/* Names of the exports served now, for NBD_OPT_LIST (free each, and v). */
int cd_pool_names(struct cd_pool *p, char ***v, size_t *n);

/* Every image served now, each held as cd_pool_get's (cd_pool_put each,
 * then free v), in the list's order: what control status shows. */
int cd_pool_hold_all(struct cd_pool *p, struct cd_export ***v, size_t *n);

/* The control verbs: user's images as cdisk_pool_list reports them, with
 * each one's connections (-1: not served). */
typedef int (*cd_pool_served_cb)(void *opaque, const struct cdisk_pool_image *img,
				 int connections);
int cd_pool_list_served(struct cd_pool *p, const char *user, cd_pool_served_cb cb,
			void *opaque);
int cd_pool_create(struct cd_pool *p, const char *user, const char *image,
		   uint64_t size, const char *base);
/* -EBUSY while a client has it open, with the reason kept. */
int cd_pool_delete(struct cd_pool *p, const char *user, const char *image);

#endif

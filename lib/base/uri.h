/* Internal: the one URI grammar (uri.c). */
#ifndef CDISK_URI_H
#define CDISK_URI_H

#include "cdisk.h"

enum cd_scheme {
	CD_SCHEME_FILE,
	CD_SCHEME_ISCSI,
	CD_SCHEME_RBD,
	CD_SCHEME_NBD,
	CD_SCHEME_NBDS,
	CD_SCHEME_NBD_UNIX,
	CD_SCHEME_HTTP,
	CD_SCHEME_HTTPS,
	CD_SCHEME_S3,
};

struct cd_uri {
	enum cd_scheme scheme;
	char *path;     /* file: the path; http: the path and query */
	char *host;
	int port;       /* 0: the scheme's default */
	char *user;
	char *target;   /* iscsi: iqn; nbd: export; rbd: image; s3: bucket */
	char *pool;     /* rbd */
	char *ns;       /* rbd namespace */
	char *snap;     /* rbd snapshot */
	char *prefix;   /* s3 */
	char *socket;   /* nbd+unix */
	int lun;        /* iscsi */
};

int cd_uri_parse(struct cdisk_ctx *ctx, const char *text, struct cd_uri *uri);
void cd_uri_clear(struct cd_uri *uri);
const char *cd_scheme_name(enum cd_scheme scheme);

#endif

/* Internal: the server and its control socket share these. */
#ifndef CDISK_SERVER_H
#define CDISK_SERVER_H

#include "internal.h"

struct cd_export {
	char *name;
	char *path;
	struct cdisk *disk;
	bool readonly;
	unsigned connections;
	uint64_t requests;
};

struct cd_listener {
	int fd;
	char *unix_path;
	bool tcp;
};

struct conn;

struct cdisk_server {
	struct cdisk_ctx *ctx;
	pthread_mutex_t lock;
	struct cd_export *exports;
	size_t nexports;
	struct cd_listener listen[16];
	size_t nlisten;
	int control_fd;
	char *control_path;
	struct conn *conns;
};

struct cd_export *cd_server_find_export(struct cdisk_server *s, const char *name);
int cd_listen_unix(struct cdisk_ctx *ctx, const char *path, mode_t mode, int *out);
void cd_control_serve_one(struct cdisk_server *s);
void cd_server_serve_fd(struct cdisk_server *s, int fd);
/* One control request line, answered as the socket would (fuzzers). */
char *cd_control_answer(struct cdisk_server *s, const char *line);

#endif

/* Internal: the server's NBD connections (nbd-conn.c), as the main loop
 * (serve-main.c) starts, stops and reaps them. */
#ifndef CDISK_NBD_CONN_H
#define CDISK_NBD_CONN_H

#include "cdisk.h"
#include "server.h"

/* Serve fd, an accepted connection, on a thread of its own (which owns
 * fd from now, even on failure). */
int cd_conn_start(struct cdisk_server *s, int fd);
/* Join and free the connections that are done, or all of them. */
void cd_conn_reap(struct cdisk_server *s, bool all);
/* Stop reading new requests on every connection; what was read is still
 * answered. */
void cd_conn_stop_reading(struct cdisk_server *s);

#endif

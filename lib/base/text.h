/* Text a person types or reads: sizes and limits parsed, sizes
 * formatted, errors mapped to the exit codes (cdisk.h, CDISK_EXIT_*).
 *
 * Not part of the public API (cd_*, so libcdisk.syms keeps them local):
 * the library uses them for its configuration and its messages, and the
 * programs link the same object (text.o) next to libcdisk.so. */
#ifndef CDISK_TEXT_H
#define CDISK_TEXT_H

#include <stddef.h>
#include <stdint.h>

/* Map a negative errno from the library to an exit code; the one
 * translator every program and the control socket's replies use. */
int cd_exit_code(int err);
/* A short name for an exit code ("busy", "corrupt metadata", ...). */
const char *cd_exit_name(int code);

/* Parse "4096", "10G", "1.5MiB" style sizes (binary units). */
int cd_parse_size(const char *s, uint64_t *out);
/* A threshold: a number from 0 to max, or "none" (-1).  0, -EINVAL when
 * it is not a number, -ERANGE when it is over max. */
int cd_parse_limit(const char *s, double max, double *out);
/* "ok", "warn" or "err": the worst Ceph health still healthy, as 0 to 2;
 * -EINVAL for anything else. */
int cd_parse_ceph_health(const char *s);
/* Format a byte count as "1.5 GiB". */
const char *cd_format_size(uint64_t bytes, char *buf, size_t len);

#endif

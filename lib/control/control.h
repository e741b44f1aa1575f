/* Internal: what the control socket's server (control.c, control-jobs.c)
 * and its client (control-client.c) share (control-wire.c). */
#ifndef CDISK_CONTROL_H
#define CDISK_CONTROL_H

#include <jansson.h>

#include "cdisk.h"
#include "ctx.h"

#define CONTROL_MAX_LINE (64u * 1024)
/* A status reply carries every export's and user's statistics: a few KiB
 * each, for hundreds of them. */
#define CONTROL_MAX_STATUS (64u * 1024 * 1024)
#define CONTROL_TIMEOUT_MS 5000
#define SCHEMA_VERSION 1

/* RUNTIME_DIR/cdisk-serve.PID.ctl */
int cd_control_path_for_pid(const struct cd_config *cfg, unsigned pid, char *out,
			    size_t len);

/* Read one line, with a deadline: 0, -ETIMEDOUT, -ECONNRESET, -E2BIG. */
int cd_control_read_line(int fd, char *buf, size_t max);
/* The same with a deadline of its own: an answer that waits on a target
 * (a mirror being checked) takes the target's time. */
int cd_control_read_line_within(int fd, char *buf, size_t max, int timeout_ms);
json_t *cd_control_info_to_json(const struct cdisk_info *i);
void cd_control_info_from_json(json_t *o, struct cdisk_info *i);
json_t *cd_control_stats_to_json(const struct cdisk_sync_stats *st);
void cd_control_stats_from_json(json_t *j, struct cdisk_sync_stats *st);
json_t *cd_control_mirror_to_json(const struct cdisk_mirror_status *m);
void cd_control_mirror_from_json(json_t *o, struct cdisk_mirror_status *m);
const char *cd_control_mirror_state_name(enum cdisk_mirror_state s);

/* The Prometheus text of a "status" reply (control-metrics.c): 0 and
 * *out to free, or -ENOMEM. */
int cd_metrics_text(json_t *status, char **out);

struct cdisk_server;
struct cd_export;
/* Start a sync of e in a thread of its own: -EBUSY when one runs. */
int cd_control_start_job(struct cdisk_server *s, struct cd_export *e,
			 enum cdisk_sync_mode mode, const struct cdisk_sync_opts *opts);

#endif

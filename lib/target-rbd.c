/* Ceph RBD targets through librados and librbd: rbd:pool[/ns]/image[@snap].
 * librbd takes calls from many threads at once, so there is no session
 * pool: one image handle is shared.  Ceph's own settings apply as Ceph
 * users know them (ceph.conf, CEPH_CONF, CEPH_ARGS), and cdisk's [rbd]
 * keys name the configuration file, the client id and the keyring. */
#include <jansson.h>
#include <rados/librados.h>
#include <rbd/librbd.h>
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"

struct rbd_priv {
	rados_t cluster;
	rados_ioctx_t io;
	rbd_image_t image;
	char header[128];   /* the image's header object, for pings */
};

static int rbd_fail(struct cd_target *t, int r, const char *what, uint64_t off)
{
	if (r == -ETIMEDOUT)
		return cd_error(t->ctx, r, "cannot %s '%s' at %llu: no answer within %u s",
				what, t->uri, (unsigned long long)off, t->timeout_ms / 1000);
	return cd_error(t->ctx, r, "cannot %s '%s' at %llu: %s", what, t->uri,
			(unsigned long long)off, strerror(-r));
}

/* Connect to the cluster with the user's Ceph settings and our timeouts. */
static int cluster_connect(struct cdisk_ctx *ctx, const char *uri, uint32_t timeout_s,
			   rados_t *out)
{
	const struct cd_config *cfg = &ctx->cfg;
	char seconds[16];
	rados_t cluster;
	int r = rados_create(&cluster, cfg->rbd_id[0] ? cfg->rbd_id : NULL);

	if (r < 0)
		return cd_error(ctx, r, "cannot reach '%s': %s", uri, strerror(-r));
	r = rados_conf_read_file(cluster, cfg->rbd_conf[0] ? cfg->rbd_conf : NULL);
	if (r < 0 && cfg->rbd_conf[0]) {
		r = cd_error(ctx, r, "cannot read the Ceph configuration '%s': %s",
			     cfg->rbd_conf, strerror(-r));
		goto fail;
	}
	r = rados_conf_parse_env(cluster, NULL);
	if (r < 0) {
		r = cd_error(ctx, r, "cannot use CEPH_ARGS: %s", strerror(-r));
		goto fail;
	}
	if (cfg->rbd_keyring[0])
		rados_conf_set(cluster, "keyring", cfg->rbd_keyring);
	snprintf(seconds, sizeof(seconds), "%u", timeout_s);
	rados_conf_set(cluster, "client_mount_timeout", seconds);
	rados_conf_set(cluster, "rados_mon_op_timeout", seconds);
	rados_conf_set(cluster, "rados_osd_op_timeout", seconds);
	/* Every durable point cdisk relies on is a flush it sends, so librbd's
	 * cache may take writes before the first one. */
	rados_conf_set(cluster, "rbd_cache_writethrough_until_flush", "false");
	/* Ceph's log goes to its own file, not into our stderr. */
	rados_conf_set(cluster, "log_to_stderr", "false");
	rados_conf_set(cluster, "err_to_stderr", "false");
	r = rados_connect(cluster);
	if (r < 0) {
		r = r == -ETIMEDOUT || r == -EINTR ? -ETIMEDOUT : r;
		r = cd_error(ctx, r == -ENOENT ? -ENXIO : r, "cannot reach '%s': %s", uri,
			     r == -ETIMEDOUT ? "no monitor answered in time" : strerror(-r));
		goto fail;
	}
	*out = cluster;
	return 0;
fail:
	rados_shutdown(cluster);
	return r;
}

static int open_pool(struct cdisk_ctx *ctx, const char *uri, rados_t cluster,
		     const struct cd_uri *u, rados_ioctx_t *io)
{
	int r = rados_ioctx_create(cluster, u->pool, io);

	if (r < 0)
		return cd_error(ctx, r, "cannot open '%s': %s", uri,
				r == -ENOENT ? "no such pool" : strerror(-r));
	if (u->ns)
		rados_ioctx_set_namespace(*io, u->ns);
	return 0;
}

static int rbd_target_open(struct cd_target *t, const struct cd_uri *u)
{
	struct rbd_priv *p = calloc(1, sizeof(*p));
	rbd_image_info_t info;
	uint64_t features = 0;
	int r;

	if (!p)
		return cd_error(t->ctx, -ENOMEM, "cannot open '%s': out of memory", t->uri);
	r = cluster_connect(t->ctx, t->uri, t->timeout_ms / 1000 ? t->timeout_ms / 1000 : 1,
			    &p->cluster);
	if (r < 0)
		goto fail;
	r = open_pool(t->ctx, t->uri, p->cluster, u, &p->io);
	if (r < 0)
		goto fail;
	/* A snapshot never changes: it is read-only whatever was asked. */
	if (u->snap)
		t->readonly = true;
	r = t->readonly ? rbd_open_read_only(p->io, u->target, &p->image, u->snap)
			: rbd_open(p->io, u->target, &p->image, NULL);
	if (r < 0) {
		r = cd_error(t->ctx, r, "cannot open '%s': %s", t->uri,
			     r == -ENOENT ? (u->snap ? "no such image or snapshot"
						     : "no such image") : strerror(-r));
		goto fail;
	}
	r = rbd_stat(p->image, &info, sizeof(info));
	if (r < 0) {
		r = cd_error(t->ctx, r, "cannot size '%s': %s", t->uri, strerror(-r));
		goto fail;
	}
	rbd_get_features(p->image, &features);
	t->size = info.size;
	t->can_flush = true;
	t->can_zero = true;
	t->can_trim = true;
	t->max_request = 64u << 20;
	t->priv = p;
	return 0;
fail:
	if (p->image)
		rbd_close(p->image);
	if (p->io)
		rados_ioctx_destroy(p->io);
	if (p->cluster)
		rados_shutdown(p->cluster);
	free(p);
	return r;
}

static int rbd_target_read(struct cd_target *t, void *s, void *buf, size_t len,
		    uint64_t off)
{
	struct rbd_priv *p = t->priv;
	ssize_t n = rbd_read2(p->image, off, len, buf, 0);

	(void)s;
	if (n < 0)
		return rbd_fail(t, (int)n, "read", off);
	if ((size_t)n < len)
		memset((uint8_t *)buf + n, 0, len - (size_t)n);
	return 0;
}

static int rbd_target_write(struct cd_target *t, void *s, const void *buf, size_t len,
		     uint64_t off)
{
	struct rbd_priv *p = t->priv;
	ssize_t n = rbd_write2(p->image, off, len, buf, 0);

	(void)s;
	if (n < 0)
		return rbd_fail(t, (int)n, "write", off);
	if ((size_t)n != len)
		return cd_error(t->ctx, -EIO, "cannot write '%s' at %llu: only %zd of "
				"%zu bytes taken", t->uri, (unsigned long long)off, n, len);
	return 0;
}

static int rbd_do_flush(struct cd_target *t, void *s)
{
	struct rbd_priv *p = t->priv;
	int r = rbd_flush(p->image);

	(void)s;
	return r < 0 ? rbd_fail(t, r, "flush", 0) : 0;
}

static int rbd_zero(struct cd_target *t, void *s, size_t len, uint64_t off)
{
	struct rbd_priv *p = t->priv;
	ssize_t n = rbd_write_zeroes(p->image, off, len, 0, 0);

	(void)s;
	return n < 0 ? rbd_fail(t, (int)n, "zero", off) : 0;
}

static int rbd_trim(struct cd_target *t, void *s, size_t len, uint64_t off)
{
	struct rbd_priv *p = t->priv;
	int r = rbd_discard(p->image, off, len);

	(void)s;
	return r < 0 ? rbd_fail(t, r, "discard", off) : 0;
}

static void rbd_target_close(struct cd_target *t)
{
	struct rbd_priv *p = t->priv;

	rbd_close(p->image);
	rados_ioctx_destroy(p->io);
	rados_shutdown(p->cluster);
	free(p);
}

/* A stat of the image's header object: one round trip to its OSD, which
 * librbd's cache cannot answer for it the way it can a read. */
static int rbd_ping(struct cd_target *t, void *s)
{
	struct rbd_priv *p = t->priv;
	uint64_t size;
	time_t mtime;
	int r;

	(void)s;
	if (!p->header[0]) {
		char id[96];
		r = rbd_get_id(p->image, id, sizeof(id));
		if (r < 0)
			return rbd_fail(t, r, "ping", 0);
		snprintf(p->header, sizeof(p->header), "rbd_header.%s", id);
	}
	r = rados_stat(p->io, p->header, &size, &mtime);
	return r < 0 ? rbd_fail(t, r, "ping", 0) : 0;
}

/* One monitor command (osd < 0) or OSD command's JSON answer, parsed. */
static int ceph_command(struct cd_target *t, int osd, const char *cmd, json_t **out)
{
	struct rbd_priv *p = t->priv;
	char *reply = NULL, *status = NULL;
	size_t reply_len = 0, status_len = 0;
	const char *argv[] = { cmd };
	json_error_t err;
	int r = osd < 0 ? rados_mon_command(p->cluster, argv, 1, "", 0, &reply, &reply_len,
					    &status, &status_len)
			: rados_osd_command(p->cluster, osd, argv, 1, "", 0, &reply, &reply_len,
					    &status, &status_len);

	if (r < 0) {
		r = cd_error(t->ctx, r, "'%s': %s did not answer %s: %.*s", t->uri,
			     osd < 0 ? "the monitors" : "an OSD", cmd,
			     status_len ? (int)status_len : 64,
			     status_len ? status : strerror(-r));
		goto out;
	}
	*out = json_loadb(reply, reply_len, 0, &err);
	if (!*out)
		r = cd_error(t->ctx, -EPROTO, "'%s': the answer to %s is not JSON: %s",
			     t->uri, cmd, err.text);
out:
	rados_buffer_free(reply);
	rados_buffer_free(status);
	return r;
}

static void counter(json_t *osd, const char *name, double *sum, uint64_t *count)
{
	json_t *c = json_object_get(osd, name);

	*sum = json_number_value(json_object_get(c, "sum"));
	*count = (uint64_t)json_integer_value(json_object_get(c, "avgcount"));
}

static double latency_ms(double sum, uint64_t count, double sum0, uint64_t count0)
{
	if (count > count0)
		return (sum - sum0) * 1000.0 / (double)(count - count0);
	return count ? sum * 1000.0 / (double)count : 0;
}

/* Each OSD's write (to commit) and read latency, from its own counters:
 * "osd perf" would need a manager daemon and waits without one. */
static int osd_latencies(struct cd_target *t, const struct cd_ceph_load *before,
			 struct cd_ceph_load *out)
{
	json_t *ids = NULL, *id;
	size_t i;
	int r = ceph_command(t, -1, "{\"prefix\": \"osd ls\", \"format\": \"json\"}", &ids);

	json_array_foreach(ids, i, id) {
		json_t *perf = NULL, *osd;
		unsigned n = out->osds;

		if (r < 0 || n == CD_CEPH_MAX_OSDS)
			break;
		r = ceph_command(t, (int)json_integer_value(id),
				 "{\"prefix\": \"perf dump\", \"format\": \"json\"}", &perf);
		if (r < 0)
			break;
		osd = json_object_get(perf, "osd");
		counter(osd, "op_w_latency", &out->osd[n].write_sum, &out->osd[n].writes);
		counter(osd, "op_r_latency", &out->osd[n].read_sum, &out->osd[n].reads);
		json_decref(perf);
		{
			double w = latency_ms(out->osd[n].write_sum, out->osd[n].writes,
					      before ? before->osd[n].write_sum : 0,
					      before ? before->osd[n].writes : 0);
			double rd = latency_ms(out->osd[n].read_sum, out->osd[n].reads,
					       before ? before->osd[n].read_sum : 0,
					       before ? before->osd[n].reads : 0);
			if (w > out->write_ms_max)
				out->write_ms_max = w;
			if (rd > out->read_ms_max)
				out->read_ms_max = rd;
		}
		out->osds++;
	}
	json_decref(ids);
	return r;
}

/* Recent commit and apply latency per OSD, as "ceph osd perf" shows them.
 * The manager keeps these: without one the command would only wait, so
 * it is asked only when "mgr stat" says one is available. */
static void mgr_osd_perf(struct cd_target *t, struct cd_ceph_load *out)
{
	json_t *stat = NULL, *perf = NULL, *list, *osd;
	size_t i;

	out->commit_ms_max = out->apply_ms_max = -1;
	if (ceph_command(t, -1, "{\"prefix\": \"mgr stat\", \"format\": \"json\"}",
			 &stat) < 0 || !json_is_true(json_object_get(stat, "available")) ||
	    ceph_command(t, -1, "{\"prefix\": \"osd perf\", \"format\": \"json\"}",
			 &perf) < 0)
		goto out;
	list = json_object_get(perf, "osd_perf_infos");
	if (!list)   /* releases before Quincy wrap it */
		list = json_object_get(json_object_get(perf, "osdstats"), "osd_perf_infos");
	json_array_foreach(list, i, osd) {
		json_t *st = json_object_get(osd, "perf_stats");
		double commit = json_number_value(json_object_get(st, "commit_latency_ms"));
		double apply = json_number_value(json_object_get(st, "apply_latency_ms"));

		if (commit > out->commit_ms_max)
			out->commit_ms_max = commit;
		if (apply > out->apply_ms_max)
			out->apply_ms_max = apply;
	}
out:
	json_decref(stat);
	json_decref(perf);
}

int cd_rbd_cluster_load(struct cd_target *t, const struct cd_ceph_load *before,
			struct cd_ceph_load *out)
{
	json_t *health = NULL;
	const char *status;
	int r;

	memset(out, 0, sizeof(*out));
	r = ceph_command(t, -1, "{\"prefix\": \"health\", \"format\": \"json\"}", &health);
	if (r < 0)
		return r;
	status = json_string_value(json_object_get(health, "status"));
	snprintf(out->health, sizeof(out->health), "%s", status ? status : "unknown");
	json_decref(health);
	r = osd_latencies(t, before, out);
	if (r == 0)
		mgr_osd_perf(t, out);
	return r;
}

int cd_rbd_create(struct cdisk_ctx *ctx, const struct cd_uri *u, uint64_t size)
{
	char uri[CDISK_MAX_URI + 1];
	rados_t cluster;
	rados_ioctx_t io;
	int order = 22;   /* 4 MiB objects, as the rbd tool makes them */
	int r;

	snprintf(uri, sizeof(uri), "rbd:%s/%s", u->pool, u->target);
	r = cluster_connect(ctx, uri, ctx->cfg.timeout ? ctx->cfg.timeout : 30, &cluster);
	if (r < 0)
		return r;
	r = open_pool(ctx, uri, cluster, u, &io);
	if (r == 0) {
		r = rbd_create(io, u->target, size, &order);
		if (r < 0)
			r = cd_error(ctx, r, "cannot create '%s': %s", uri,
				     r == -EEXIST ? "it exists" : strerror(-r));
		rados_ioctx_destroy(io);
	}
	rados_shutdown(cluster);
	return r;
}

const struct cd_target_ops cd_rbd_target_ops = {
	.name = "rbd",
	.open = rbd_target_open,
	.pread = rbd_target_read,
	.pwrite = rbd_target_write,
	.flush = rbd_do_flush,
	.zero = rbd_zero,
	.trim = rbd_trim,
	.ping = rbd_ping,
	.close = rbd_target_close,
};

/* Ceph RBD targets through librados and librbd: rbd:pool[/ns]/image[@snap].
 * librbd takes calls from many threads at once, so there is no session
 * pool: one image handle is shared.  Ceph's own settings apply as Ceph
 * users know them (ceph.conf, CEPH_CONF, CEPH_ARGS), and cdisk's [rbd]
 * keys name the configuration file, the client id and the keyring. */
#include <dlfcn.h>
#include <jansson.h>
#include <netdb.h>
#include <rados/librados.h>
#include <rbd/features.h>
#include <rbd/librbd.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "cdisk.h"
#include "ctx.h"
#include "target.h"
#include "uri.h"
#include "util.h"

/* librados and librbd are loaded when the first rbd: URI is used, not
 * with libcdisk: they bring Ceph's whole client along (libceph-common,
 * boost, ICU), some 44 ms of start-up for every program that never
 * touches Ceph, and a host without Ceph's packages can still use every
 * other kind.  The headers give each call its type. */
#define RADOS_CALLS(X) \
	X(rados_buffer_free) X(rados_cluster_fsid) X(rados_conf_get) \
	X(rados_conf_parse_env) X(rados_conf_read_file) X(rados_conf_set) \
	X(rados_connect) X(rados_create) X(rados_create_write_op) X(rados_exec) \
	X(rados_ioctx_create) X(rados_ioctx_create2) X(rados_ioctx_destroy) \
	X(rados_ioctx_get_id) X(rados_ioctx_get_namespace) \
	X(rados_ioctx_selfmanaged_snap_set_write_ctx) X(rados_ioctx_set_namespace) \
	X(rados_mon_command) X(rados_osd_command) X(rados_release_write_op) \
	X(rados_shutdown) X(rados_stat) X(rados_write_op_operate) \
	X(rados_write_op_write)
#define RBD_CALLS(X) \
	X(rbd_aio_create_completion) X(rbd_aio_get_return_value) X(rbd_aio_release) \
	X(rbd_aio_wait_for_complete) X(rbd_aio_write2) X(rbd_close) X(rbd_create) \
	X(rbd_discard) X(rbd_flush) X(rbd_get_block_name_prefix) \
	X(rbd_get_data_pool_id) X(rbd_get_features) X(rbd_get_id) \
	X(rbd_get_old_format) X(rbd_get_parent) X(rbd_get_stripe_count) \
	X(rbd_get_stripe_unit) X(rbd_invalidate_cache) \
	X(rbd_linked_image_spec_cleanup) X(rbd_open) X(rbd_open_read_only) \
	X(rbd_read2) X(rbd_snap_get_id) X(rbd_snap_spec_cleanup) X(rbd_stat) \
	X(rbd_update_unwatch) X(rbd_update_watch) X(rbd_write2) X(rbd_write_zeroes)

static struct {
#define CEPH_FIELD(name) __typeof__(name) *name;
	RADOS_CALLS(CEPH_FIELD)
	RBD_CALLS(CEPH_FIELD)
#undef CEPH_FIELD
} ceph;
/* Loaded once for good; a failure is tried again at the next open, so
 * that a server started before Ceph's packages were installed does not
 * need a restart.  The lock is held while loading: the first open waits
 * for it, the others for the first. */
static pthread_mutex_t ceph_lock = PTHREAD_MUTEX_INITIALIZER;
static bool ceph_loaded;

struct ceph_loading {
	bool ok;
	char why[256];
};

/* Each call by name; false with why set when one is not there (a
 * library older than these headers). */
static bool ceph_symbol(struct ceph_loading *l, void *lib, const char *name, void *field,
			size_t size)
{
	void *sym = dlsym(lib, name);

	if (!sym) {
		snprintf(l->why, sizeof(l->why), "no '%s' in it", name);
		return false;
	}
	memcpy(field, &sym, size);
	return true;
}

static void *ceph_open(void *arg)
{
	struct ceph_loading *l = arg;
	/* Never closed: librados's threads and static destructors. */
	void *rados = dlopen("librados.so.2", RTLD_NOW | RTLD_LOCAL);
	void *rbd = rados ? dlopen("librbd.so.1", RTLD_NOW | RTLD_LOCAL) : NULL;

	if (!rbd) {
		const char *e = dlerror();

		snprintf(l->why, sizeof(l->why), "%s", e && *e ? e : "not found");
		return NULL;
	}
#define CEPH_SYM(lib, name) \
	if (!ceph_symbol(l, lib, #name, &ceph.name, sizeof(ceph.name))) \
		return NULL;
#define RADOS_SYM(name) CEPH_SYM(rados, name)
#define RBD_SYM(name) CEPH_SYM(rbd, name)
	RADOS_CALLS(RADOS_SYM)
	RBD_CALLS(RBD_SYM)
#undef RBD_SYM
#undef RADOS_SYM
#undef CEPH_SYM
	l->ok = true;
	return NULL;
}

/* On a thread with a main thread's stack: Ceph's static constructors,
 * which run inside dlopen, build their table of options on the stack,
 * past the 256 KiB a server's worker has (under AddressSanitizer). */
static void ceph_load(struct ceph_loading *l)
{
	pthread_attr_t attr;
	pthread_t thread;
	int err;

	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 8u << 20);
	err = pthread_create(&thread, &attr, ceph_open, l);
	pthread_attr_destroy(&attr);
	if (err)
		snprintf(l->why, sizeof(l->why), "cannot start a thread: %s", strerror(err));
	else
		pthread_join(thread, NULL);
}

static int ceph_ready(struct cdisk_ctx *ctx, const char *uri)
{
	struct ceph_loading l = { 0 };

	pthread_mutex_lock(&ceph_lock);
	if (!ceph_loaded) {
		ceph_load(&l);
		ceph_loaded = l.ok;
	}
	l.ok = ceph_loaded;
	pthread_mutex_unlock(&ceph_lock);
	if (l.ok)
		return 0;
	return cd_error(ctx, -ENOPKG, "cannot open '%s': cannot load Ceph's client "
			"library (package librbd1): %s", uri, l.why);
}

struct rbd_priv {
	rados_t cluster;
	rados_ioctx_t io;
	rbd_image_t image;
	char header[128];   /* the image's header object, for pings */
	uint64_t object_size;
	/* Scattered writes straight to the data objects (see "Scattered
	 * writes" below).  The lock is held for reading by each direct
	 * write, for writing while the header is read again. */
	pthread_rwlock_t direct_lock;
	rados_ioctx_t data;          /* the data objects' pool, snapshot context set */
	char prefix[64];             /* data object names: PREFIX.%016x */
	uint64_t watch;
	bool watching;
	bool direct;                 /* the header allowed it when last read */
	bool direct_used;            /* since the last flush */
	int header_changed;          /* set by the watch; atomic */
	bool at_snap;                /* opened at a snapshot: snap_id */
	uint64_t snap_id;
};

static int rbd_fail(struct cd_target *t, int r, const char *what, uint64_t off)
{
	if (r == -ETIMEDOUT)
		return cd_error(t->ctx, r, "cannot %s '%s' at %llu: no answer within %u s",
				what, t->uri, (unsigned long long)off, t->timeout_ms / 1000);
	return cd_error(t->ctx, r, "cannot %s '%s' at %llu: %s", what, t->uri,
			(unsigned long long)off, strerror(-r));
}

/* The name of the image's header object (format 2). */
static int header_name(struct rbd_priv *p)
{
	char id[96];
	int r;

	if (p->header[0])
		return 0;
	r = ceph.rbd_get_id(p->image, id, sizeof(id));
	if (r == 0)
		snprintf(p->header, sizeof(p->header), "rbd_header.%s", id);
	return r;
}

/* librados prints through its log, which goes to stderr unless told
 * otherwise; cdisk's messages are its own, one line each. */
static void quiet_log(rados_t cluster)
{
	ceph.rados_conf_set(cluster, "log_to_stderr", "false");
	ceph.rados_conf_set(cluster, "err_to_stderr", "false");
}

/* With no configuration file read and no monitor named (CEPH_ARGS can
 * name one), librados would look the monitors up in DNS and print its
 * failure straight to stderr: say instead which file is missing. */
static int check_monitors_named(struct cdisk_ctx *ctx, const char *uri, rados_t cluster)
{
	const char *env = getenv("CEPH_CONF");
	const char *path = env && *env ? env : "/etc/ceph/ceph.conf";
	char mon[256] = "";
	int err;

	if (ceph.rados_conf_get(cluster, "mon_host", mon, sizeof(mon)) == 0 && mon[0])
		return 0;
	err = access(path, R_OK) < 0 ? -errno : -ENOENT;
	return cd_error(ctx, err, "cannot reach '%s': no Ceph configuration: '%s': %s "
			"(name one with [rbd] conf or CEPH_CONF)", uri, path,
			err == -ENOENT ? "no such file" : strerror(-err));
}

/* A monitor named by a host name that does not resolve makes librados
 * print to stderr and fail with EINVAL: look the names up first.  Only
 * plain "host" and "host:port" entries (with a v1:/v2: prefix or not)
 * are checked; addresses and anything else are librados's to read. */
static int check_monitor_names(struct cdisk_ctx *ctx, const char *uri, rados_t cluster)
{
	char mon[1024] = "", *save = NULL, *missing = NULL;
	bool found = false;

	if (ceph.rados_conf_get(cluster, "mon_host", mon, sizeof(mon)) < 0)
		return 0;
	for (char *tok = strtok_r(mon, "[], ;\t", &save); tok;
	     tok = strtok_r(NULL, "[], ;\t", &save)) {
		struct addrinfo *ai = NULL, hints = { .ai_socktype = SOCK_STREAM };
		char *colon;
		bool named = false;

		if (!strncmp(tok, "v1:", 3) || !strncmp(tok, "v2:", 3))
			tok += 3;
		colon = strchr(tok, ':');
		if (colon && strchr(colon + 1, ':'))
			return 0;
		if (colon)
			*colon = '\0';
		for (const char *c = tok; *c; c++)
			named |= (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z');
		if (!named || getaddrinfo(tok, NULL, &hints, &ai) == 0) {
			freeaddrinfo(ai);
			found = true;
		} else if (!missing) {
			missing = tok;
		}
	}
	if (found || !missing)
		return 0;
	return cd_error(ctx, -EHOSTUNREACH, "cannot reach '%s': monitor host '%s' not found",
			uri, missing);
}

/* Connect to the cluster with the user's Ceph settings and our timeouts. */
static int cluster_connect(struct cdisk_ctx *ctx, const char *uri, uint32_t timeout_s,
			   rados_t *out)
{
	const struct cd_config *cfg = &ctx->cfg;
	char seconds[16];
	rados_t cluster;
	bool conf_read;
	int r = ceph_ready(ctx, uri);

	if (r < 0)
		return r;
	r = ceph.rados_create(&cluster, cfg->rbd_id[0] ? cfg->rbd_id : NULL);
	if (r < 0)
		return cd_error(ctx, r, "cannot reach '%s': %s", uri, strerror(-r));
	quiet_log(cluster);
	r = ceph.rados_conf_read_file(cluster, cfg->rbd_conf[0] ? cfg->rbd_conf : NULL);
	conf_read = r == 0;
	if (r < 0 && cfg->rbd_conf[0]) {
		r = cd_error(ctx, r, "cannot read the Ceph configuration '%s': %s",
			     cfg->rbd_conf, strerror(-r));
		goto fail;
	}
	r = ceph.rados_conf_parse_env(cluster, NULL);
	if (r < 0) {
		r = cd_error(ctx, r, "cannot use CEPH_ARGS: %s", strerror(-r));
		goto fail;
	}
	r = conf_read ? 0 : check_monitors_named(ctx, uri, cluster);
	if (r == 0)
		r = check_monitor_names(ctx, uri, cluster);
	if (r < 0)
		goto fail;
	if (cfg->rbd_keyring[0])
		ceph.rados_conf_set(cluster, "keyring", cfg->rbd_keyring);
	snprintf(seconds, sizeof(seconds), "%u", timeout_s);
	ceph.rados_conf_set(cluster, "client_mount_timeout", seconds);
	ceph.rados_conf_set(cluster, "rados_mon_op_timeout", seconds);
	ceph.rados_conf_set(cluster, "rados_osd_op_timeout", seconds);
	/* Every durable point cdisk relies on is a flush it sends, so librbd's
	 * cache may take writes before the first one. */
	ceph.rados_conf_set(cluster, "rbd_cache_writethrough_until_flush", "false");
	/* Again: the configuration file may have turned the log back on. */
	quiet_log(cluster);
	r = ceph.rados_connect(cluster);
	if (r == -ETIMEDOUT || r == -EINTR) {
		/* No monitor answered: unreachable (exit 3), like a refusal. */
		r = cd_error(ctx, -EHOSTUNREACH, "cannot reach '%s': no monitor answered "
			     "within %u s", uri, timeout_s);
		goto fail;
	}
	if (r == -ENOENT) {
		/* The monitors are named (checked above): what librados did not
		 * find is the key to log in with. */
		r = cd_error(ctx, -EACCES, "cannot reach '%s': no keyring for 'client.%s' "
			     "found (name one with [rbd] keyring)", uri,
			     cfg->rbd_id[0] ? cfg->rbd_id : "admin");
		goto fail;
	}
	if (r < 0) {
		r = cd_error(ctx, r, "cannot reach '%s': %s", uri, strerror(-r));
		goto fail;
	}
	*out = cluster;
	return 0;
fail:
	ceph.rados_shutdown(cluster);
	return r;
}

static int open_pool(struct cdisk_ctx *ctx, const char *uri, rados_t cluster,
		     const struct cd_uri *u, rados_ioctx_t *io)
{
	int r = ceph.rados_ioctx_create(cluster, u->pool, io);

	if (r < 0)
		return cd_error(ctx, r, "cannot open '%s': %s", uri,
				r == -ENOENT ? "no such pool" : strerror(-r));
	if (u->ns)
		ceph.rados_ioctx_set_namespace(*io, u->ns);
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
	r = t->readonly ? ceph.rbd_open_read_only(p->io, u->target, &p->image, u->snap)
			: ceph.rbd_open(p->io, u->target, &p->image, NULL);
	if (r < 0) {
		r = cd_error(t->ctx, r, "cannot open '%s': %s", t->uri,
			     r == -ENOENT ? (u->snap ? "no such image or snapshot"
						     : "no such image") : strerror(-r));
		goto fail;
	}
	r = ceph.rbd_stat(p->image, &info, sizeof(info));
	if (r < 0) {
		r = cd_error(t->ctx, r, "cannot size '%s': %s", t->uri, strerror(-r));
		goto fail;
	}
	if (u->snap) {
		r = ceph.rbd_snap_get_id(p->image, u->snap, &p->snap_id);
		if (r < 0) {
			r = cd_error(t->ctx, r, "cannot open '%s': %s", t->uri,
				     strerror(-r));
			goto fail;
		}
		p->at_snap = true;
	}
	ceph.rbd_get_features(p->image, &features);
	t->size = info.size;
	p->object_size = info.obj_size;
	p->header_changed = 1;
	pthread_rwlock_init(&p->direct_lock, NULL);
	/* One window an object: a power of two from 4 KiB to 4 GiB. */
	if (!t->readonly && info.obj_size >= 4096 && info.obj_size <= (1ull << 31) &&
	    !(info.obj_size & (info.obj_size - 1)))
		t->scatter_window = (uint32_t)info.obj_size;
	t->can_flush = true;
	t->can_zero = true;
	t->can_trim = true;
	t->max_request = 64u << 20;
	t->priv = p;
	return 0;
fail:
	if (p->image)
		ceph.rbd_close(p->image);
	if (p->io)
		ceph.rados_ioctx_destroy(p->io);
	if (p->cluster)
		ceph.rados_shutdown(p->cluster);
	free(p);
	return r;
}

static int rbd_target_read(struct cd_target *t, void *s, void *buf, size_t len,
		    uint64_t off)
{
	struct rbd_priv *p = t->priv;
	ssize_t n = ceph.rbd_read2(p->image, off, len, buf, 0);

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
	ssize_t n = ceph.rbd_write2(p->image, off, len, buf, 0);

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
	int r = ceph.rbd_flush(p->image);

	(void)s;
	/* A read cache (rbd_cache_policy = writeback) may hold what the
	 * direct writes replaced underneath it. */
	if (r == 0 && __atomic_exchange_n(&p->direct_used, false, __ATOMIC_ACQ_REL))
		r = ceph.rbd_invalidate_cache(p->image);
	return r < 0 ? rbd_fail(t, r, "flush", 0) : 0;
}

static int rbd_zero(struct cd_target *t, void *s, size_t len, uint64_t off)
{
	struct rbd_priv *p = t->priv;
	ssize_t n = ceph.rbd_write_zeroes(p->image, off, len, 0, 0);

	(void)s;
	return n < 0 ? rbd_fail(t, (int)n, "zero", off) : 0;
}

static int rbd_trim(struct cd_target *t, void *s, size_t len, uint64_t off)
{
	struct rbd_priv *p = t->priv;
	int r = ceph.rbd_discard(p->image, off, len);

	(void)s;
	return r < 0 ? rbd_fail(t, r, "discard", off) : 0;
}

/* ---- Scattered writes ----
 *
 * librbd sends every write as an OSD operation of its own, so 4 KiB
 * changes scattered over an object cost a round trip and an OSD
 * transaction each.  Here they go as one RADOS operation per object,
 * holding one write per piece, the way the kernel's rbd driver writes
 * data objects itself.  That is only the same as librbd's write where
 * librbd would do nothing but write the object:
 *
 *  - format 2 and plain striping (one object per stripe), so that the
 *    object and the offset in it follow from the image offset;
 *  - no journaling (the journal must see every write, for mirroring),
 *    no live migration, no persistent write-back cache, not a mirror's
 *    non-primary copy;
 *  - no parent: a clone's first write to an object first copies the
 *    parent's data up, which a direct write would skip;
 *  - the object map: the first piece of each object still goes through
 *    librbd, which marks the object as existing (and changed, for
 *    fast-diff) before it writes; the flush of the base, which comes
 *    before anything is recorded clean, waits for that;
 *  - snapshots: the operation carries the image's snapshot context, read
 *    from its header (cls rbd get_snapcontext, as the kernel driver
 *    does), so the OSD clones an object before its first write after a
 *    snapshot.  The header is watched; after any change (a snapshot, a
 *    resize, a feature) all of this is checked and read again.
 *
 * Where a check fails, the pieces go through librbd, all in flight at
 * once. */

static bool image_allows_direct(struct rbd_priv *p)
{
	const uint64_t refused = RBD_FEATURE_JOURNALING | RBD_FEATURE_MIGRATING |
				 RBD_FEATURE_NON_PRIMARY | RBD_FEATURE_DIRTY_CACHE;
	rbd_linked_image_spec_t parent;
	rbd_snap_spec_t parent_snap;
	uint64_t features, unit, count;
	uint8_t old;
	int r;

	if (ceph.rbd_get_old_format(p->image, &old) < 0 || old ||
	    ceph.rbd_get_features(p->image, &features) < 0 || (features & refused) ||
	    ceph.rbd_get_stripe_unit(p->image, &unit) < 0 || unit != p->object_size ||
	    ceph.rbd_get_stripe_count(p->image, &count) < 0 || count != 1 ||
	    ceph.rbd_get_block_name_prefix(p->image, p->prefix, sizeof(p->prefix)) < 0)
		return false;
	r = ceph.rbd_get_parent(p->image, &parent, &parent_snap);
	if (r == 0) {
		ceph.rbd_linked_image_spec_cleanup(&parent);
		ceph.rbd_snap_spec_cleanup(&parent_snap);
	}
	return r == -ENOENT;
}

int cd_rbd_parse_snap_context(const uint8_t *reply, size_t len, uint64_t *seq,
			      uint64_t *snaps, uint32_t max, uint32_t *count)
{
	if (len < 12)
		return -EPROTO;
	*seq = cd_get_le64(reply);
	*count = cd_get_le32(reply + 8);
	if (*count > max || len != 12 + 8 * (size_t)*count)
		return -EPROTO;
	for (uint32_t i = 0; i < *count; i++) {
		snaps[i] = cd_get_le64(reply + 12 + 8 * i);
		/* Newest first, none newer than the sequence: else the OSD
		 * would clone for the wrong snapshots. */
		if (snaps[i] > *seq || (i && snaps[i] >= snaps[i - 1]))
			return -EPROTO;
	}
	return 0;
}

/* The snapshot context for writes to the data objects, from the header. */
static int set_snap_context(struct rbd_priv *p)
{
	uint8_t reply[8 + 4 + 8 * 1024];
	rados_snap_t snaps[1024];
	uint64_t seq;
	uint32_t count;
	int n = header_name(p);

	if (n == 0)
		n = ceph.rados_exec(p->io, p->header, "rbd", "get_snapcontext", NULL, 0,
			       (char *)reply, sizeof(reply));
	if (n >= 0)
		n = cd_rbd_parse_snap_context(reply, (size_t)n, &seq, snaps,
					      CD_ARRAY_SIZE(snaps), &count);
	if (n < 0)
		return n;
	return ceph.rados_ioctx_selfmanaged_snap_set_write_ctx(p->data, seq, snaps, (int)count);
}

static void on_header_update(void *arg)
{
	struct rbd_priv *p = arg;

	__atomic_store_n(&p->header_changed, 1, __ATOMIC_RELEASE);
}

static int open_data_pool(struct rbd_priv *p)
{
	int64_t pool = ceph.rbd_get_data_pool_id(p->image);
	char ns[256];
	int r;

	if (pool < 0)
		return (int)pool;
	r = ceph.rados_ioctx_create2(p->cluster, pool, &p->data);
	if (r < 0)
		return r;
	r = ceph.rados_ioctx_get_namespace(p->io, ns, sizeof(ns));
	if (r >= 0)
		ceph.rados_ioctx_set_namespace(p->data, ns);
	return r < 0 ? r : 0;
}

/* Under the write lock: whether direct writes are right for the image
 * as its header now stands. */
static void check_header(struct cd_target *t, struct rbd_priv *p)
{
	int r = 0;

	__atomic_store_n(&p->header_changed, 0, __ATOMIC_RELEASE);
	if (!p->watching) {
		r = ceph.rbd_update_watch(p->image, &p->watch, on_header_update, p);
		p->watching = r == 0;
	}
	if (r == 0 && !p->data)
		r = open_data_pool(p);
	p->direct = r == 0 && image_allows_direct(p) && set_snap_context(p) == 0;
	cd_log(t->ctx, CDISK_LOG_DEBUG, "'%s': scattered writes go %s", t->uri,
	       p->direct ? "to the data objects, one operation an object"
			 : "through librbd, one request each");
}

/* Each piece through librbd, all of them in flight at once. */
static int librbd_pieces(struct cd_target *t, const struct cd_piece *v, size_t n)
{
	struct rbd_priv *p = t->priv;
	rbd_completion_t c[CD_PIECES_DEPTH];
	int r = 0;

	for (size_t from = 0; from < n; from += CD_PIECES_DEPTH) {
		size_t k = n - from < CD_PIECES_DEPTH ? n - from : CD_PIECES_DEPTH, sent = 0;

		for (; sent < k; sent++) {
			const struct cd_piece *x = &v[from + sent];
			int e = ceph.rbd_aio_create_completion(NULL, NULL, &c[sent]);
			if (e == 0) {
				e = ceph.rbd_aio_write2(p->image, x->off, x->len, x->buf, c[sent], 0);
				if (e < 0)
					ceph.rbd_aio_release(c[sent]);
			}
			if (e < 0) {
				r = r ? r : rbd_fail(t, e, "write", x->off);
				break;
			}
		}
		for (size_t i = 0; i < sent; i++) {
			ssize_t e;

			ceph.rbd_aio_wait_for_complete(c[i]);
			e = ceph.rbd_aio_get_return_value(c[i]);
			ceph.rbd_aio_release(c[i]);
			if (e < 0 && r == 0)
				r = rbd_fail(t, (int)e, "write", v[from + i].off);
		}
		if (r < 0)
			break;
	}
	return r;
}

/* The pieces after the first, as one operation on their object. */
static int direct_pieces(struct cd_target *t, const struct cd_piece *v, size_t n)
{
	struct rbd_priv *p = t->priv;
	rados_write_op_t op = ceph.rados_create_write_op();
	char name[96];
	int r;

	if (!op)
		return cd_error(t->ctx, -ENOMEM, "'%s': out of memory", t->uri);
	snprintf(name, sizeof(name), "%s.%016llx", p->prefix,
		 (unsigned long long)(v[0].off / p->object_size));
	for (size_t i = 0; i < n; i++)
		ceph.rados_write_op_write(op, v[i].buf, v[i].len, v[i].off % p->object_size);
	r = ceph.rados_write_op_operate(op, p->data, name, NULL, 0);
	ceph.rados_release_write_op(op);
	__atomic_store_n(&p->direct_used, true, __ATOMIC_RELEASE);
	return r < 0 ? rbd_fail(t, r, "write", v[0].off) : 0;
}

static int rbd_write_pieces(struct cd_target *t, void *s, const struct cd_piece *v,
			    size_t n)
{
	struct rbd_priv *p = t->priv;
	int r;

	(void)s;
	if (n < 3)
		return librbd_pieces(t, v, n);
	if (__atomic_load_n(&p->header_changed, __ATOMIC_ACQUIRE)) {
		pthread_rwlock_wrlock(&p->direct_lock);
		if (__atomic_load_n(&p->header_changed, __ATOMIC_ACQUIRE))
			check_header(t, p);
		pthread_rwlock_unlock(&p->direct_lock);
	}
	/* librbd first: the object map, the exclusive lock. */
	r = rbd_target_write(t, NULL, v[0].buf, v[0].len, v[0].off);
	if (r < 0)
		return r;
	pthread_rwlock_rdlock(&p->direct_lock);
	r = p->direct ? direct_pieces(t, v + 1, n - 1) : librbd_pieces(t, v + 1, n - 1);
	pthread_rwlock_unlock(&p->direct_lock);
	return r;
}

/* The cluster's fsid, the pool's id and the image's id do not change when
 * the image is renamed or the cluster is reached through other monitors,
 * another configuration file or another client name; a snapshot is other
 * storage than its image's head, so its id is part of it. */
static int rbd_identity(struct cd_target *t, void *s, char *out, size_t len)
{
	struct rbd_priv *p = t->priv;
	char fsid[64], id[96], ns[256] = "", snap[32] = "";
	int r, n;

	(void)s;
	r = ceph.rados_cluster_fsid(p->cluster, fsid, sizeof(fsid));
	if (r >= 0)
		r = ceph.rbd_get_id(p->image, id, sizeof(id));
	if (r >= 0) {
		r = ceph.rados_ioctx_get_namespace(p->io, ns, sizeof(ns));
		if (r >= 0)
			ns[r < (int)sizeof(ns) ? r : (int)sizeof(ns) - 1] = '\0';
	}
	if (r < 0)
		return cd_error(t->ctx, r, "cannot tell which image '%s' is: %s", t->uri,
				strerror(-r));
	if (p->at_snap)
		snprintf(snap, sizeof(snap), "@%llu", (unsigned long long)p->snap_id);
	n = snprintf(out, len, "rbd:%s:%lld%s%s:%s%s", fsid,
		     (long long)ceph.rados_ioctx_get_id(p->io), ns[0] ? "/" : "", ns, id, snap);
	if (n < 0 || (size_t)n >= len)
		return cd_error(t->ctx, -ENAMETOOLONG, "'%s': identity does not fit in "
				"%zu bytes", t->uri, len);
	return 0;
}

static void rbd_target_close(struct cd_target *t)
{
	struct rbd_priv *p = t->priv;

	if (p->watching)
		ceph.rbd_update_unwatch(p->image, p->watch);
	if (p->data)
		ceph.rados_ioctx_destroy(p->data);
	pthread_rwlock_destroy(&p->direct_lock);
	ceph.rbd_close(p->image);
	ceph.rados_ioctx_destroy(p->io);
	ceph.rados_shutdown(p->cluster);
	free(p);
}

/* A stat of the image's header object: one round trip to its OSD, which
 * librbd's cache cannot answer for it the way it can a read. */
static int rbd_ping(struct cd_target *t, void *s)
{
	struct rbd_priv *p = t->priv;
	uint64_t size;
	time_t mtime;
	int r = header_name(p);

	(void)s;
	if (r == 0)
		r = ceph.rados_stat(p->io, p->header, &size, &mtime);
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
	int r = osd < 0 ? ceph.rados_mon_command(p->cluster, argv, 1, "", 0, &reply, &reply_len,
					    &status, &status_len)
			: ceph.rados_osd_command(p->cluster, osd, argv, 1, "", 0, &reply, &reply_len,
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
	ceph.rados_buffer_free(reply);
	ceph.rados_buffer_free(status);
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
		r = ceph.rbd_create(io, u->target, size, &order);
		if (r < 0)
			r = cd_error(ctx, r, "cannot create '%s': %s", uri,
				     r == -EEXIST ? "it exists" : strerror(-r));
		ceph.rados_ioctx_destroy(io);
	}
	ceph.rados_shutdown(cluster);
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
	.pwrite_pieces = rbd_write_pieces,
	.identity = rbd_identity,
	.ping = rbd_ping,
	.close = rbd_target_close,
};

/* A server's statistics as Prometheus text exposition (version 0.0.4),
 * made from the control socket's "status" reply: cdisk-info has only
 * that JSON, and a scrape wrapper or node_exporter's textfile collector
 * takes the text as it comes.
 *
 * Every family's samples follow its HELP and TYPE lines in one block, as
 * the format requires; a family with no sample is left out.  Counters are
 * the server's since it started; an op a client never used has no series
 * (as in the JSON), so hundreds of exports stay a few series each. */
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cdisk.h"
#include "control.h"
#include "ctx.h"
#include "stats.h"
#include "util.h"

/* Where a family's value is: in each op of "io", in "io", or in the
 * export's or user's own object; scale turns its unit into the base one. */
enum where { PER_OP, IN_IO, IN_OBJECT, IN_LIMITS };

struct family {
	const char *name;     /* after cdisk_export_ or cdisk_user_ */
	const char *type;
	const char *help;     /* after "Per export: " */
	enum where where;
	const char *key;
	double scale;         /* 0: the value as it is */
};

static const struct family families[] = {
	{ "requests_total", "counter", "NBD requests finished, by operation",
	  PER_OP, "requests", 0 },
	{ "bytes_total", "counter", "Bytes read or written, by operation "
	  "(failed requests count none)", PER_OP, "bytes", 0 },
	{ "errors_total", "counter", "Requests that failed, by operation",
	  PER_OP, "errors", 0 },
	{ "queue_depth", "gauge", "Requests queued or being carried out",
	  IN_IO, "queue_depth", 0 },
	{ "limit_waits_total", "counter", "Requests held back by a limit",
	  IN_IO, "limit_waits", 0 },
	{ "limit_wait_seconds_total", "counter", "Time requests were held back by a "
	  "limit", IN_IO, "limit_wait_ms", 0.001 },
	{ "connections", "gauge", "Open NBD connections", IN_OBJECT,
	  "connections", 0 },
	{ "queued", "gauge", "Requests waiting in the queue", IN_OBJECT, "queued", 0 },
	{ "inflight", "gauge", "Requests being carried out", IN_OBJECT,
	  "inflight", 0 },
	/* A user's limits in effect; none, none shown. */
	{ "limit_iops", "gauge", "IOPS limit", IN_LIMITS, "iops", 0 },
	{ "limit_bytes_per_second", "gauge", "Bandwidth limit", IN_LIMITS,
	  "bandwidth", 0 },
	{ "limit_queue_depth", "gauge", "Queue depth limit", IN_LIMITS, "queue_depth", 0 },
	{ "limit_connections", "gauge", "Connection limit", IN_LIMITS, "connections", 0 },
};

#define DURATION "request_duration_seconds"

struct out {
	FILE *f;
	const char *scope;      /* "export" or "user" */
	const char *headed;     /* the family whose header is written */
};

static void header(struct out *o, const char *name, const char *type, const char *help)
{
	if (o->headed && !strcmp(o->headed, name))
		return;
	fprintf(o->f, "# HELP cdisk_%s_%s Per %s: %s\n", o->scope, name, o->scope, help);
	fprintf(o->f, "# TYPE cdisk_%s_%s %s\n", o->scope, name, type);
	o->headed = name;
}

/* A label value with \, " and newline escaped, as the format wants. */
static void label_value(FILE *f, const char *v)
{
	for (; *v; v++) {
		if (*v == '\\')
			fputs("\\\\", f);
		else if (*v == '"')
			fputs("\\\"", f);
		else if (*v == '\n')
			fputs("\\n", f);
		else
			fputc(*v, f);
	}
}

/* "cdisk_SCOPE_NAME{SCOPE="who"[,op="op"][,le="le"]}" */
static void series(struct out *o, const char *name, const char *who, const char *op,
		   const char *le)
{
	fprintf(o->f, "cdisk_%s_%s{%s=\"", o->scope, name, o->scope);
	label_value(o->f, who);
	if (op)
		fprintf(o->f, "\",op=\"%s", op);
	if (le)
		fprintf(o->f, "\",le=\"%s", le);
	fputs("\"} ", o->f);
}

static void value(FILE *f, json_t *v, double scale)
{
	if (json_is_integer(v) && !scale)
		fprintf(f, "%" JSON_INTEGER_FORMAT "\n", json_integer_value(v));
	else
		fprintf(f, "%.9g\n", json_number_value(v) * (scale ? scale : 1));
}

static void sample(struct out *o, const struct family *fam, const char *who,
		   const char *op, json_t *v)
{
	if (!json_is_number(v))
		return;
	header(o, fam->name, fam->type, fam->help);
	series(o, fam->name, who, op, NULL);
	value(o->f, v, fam->scale);
}

static const char *name_of(json_t *obj)
{
	const char *n = json_string_value(json_object_get(obj, "name"));

	return n ? n : "";
}

static void family(struct out *o, const struct family *fam, json_t *list)
{
	size_t i;
	json_t *obj;

	json_array_foreach(list, i, obj) {
		json_t *io = json_object_get(obj, "io");
		json_t *ops = json_object_get(io, "ops");

		if (fam->where == IN_OBJECT)
			sample(o, fam, name_of(obj), NULL, json_object_get(obj, fam->key));
		else if (fam->where == IN_LIMITS) {
			json_t *v = json_object_get(json_object_get(obj, "limits"), fam->key);

			if (json_integer_value(v) > 0)
				sample(o, fam, name_of(obj), NULL, v);
		} else if (fam->where == IN_IO)
			sample(o, fam, name_of(obj), NULL, json_object_get(io, fam->key));
		else
			for (unsigned op = 0; op < CD_STAT_NOPS; op++)
				sample(o, fam, name_of(obj), cd_stat_op_names[op],
				       json_object_get(json_object_get(ops, cd_stat_op_names[op]),
						       fam->key));
	}
}

/* One op's histogram: cumulative buckets at the bounds the status gives,
 * +Inf, the estimated sum and the count. */
static void histogram(struct out *o, const char *who, const char *op, json_t *opj,
		      json_t *bounds)
{
	json_t *buckets = json_object_get(opj, "latency_buckets");
	json_t *count = json_object_get(opj, "requests");
	char le[32];

	if (!json_is_integer(count) || json_array_size(buckets) != json_array_size(bounds))
		return;
	header(o, DURATION, "histogram", "NBD request latency, by operation");
	for (size_t i = 0; i < json_array_size(bounds); i++) {
		snprintf(le, sizeof(le), "%g", json_number_value(json_array_get(bounds, i)) / 1e6);
		series(o, DURATION "_bucket", who, op, le);
		value(o->f, json_array_get(buckets, i), 0);
	}
	series(o, DURATION "_bucket", who, op, "+Inf");
	value(o->f, count, 0);
	series(o, DURATION "_sum", who, op, NULL);
	value(o->f, json_object_get(opj, "latency_sum_us"), 1e-6);
	series(o, DURATION "_count", who, op, NULL);
	value(o->f, count, 0);
}

static void histograms(struct out *o, json_t *list)
{
	size_t i;
	json_t *obj;

	json_array_foreach(list, i, obj) {
		json_t *io = json_object_get(obj, "io");
		json_t *ops = json_object_get(io, "ops");
		json_t *bounds = json_object_get(io, "latency_le_us");

		for (unsigned op = 0; op < CD_STAT_NOPS; op++) {
			json_t *opj = json_object_get(ops, cd_stat_op_names[op]);

			if (opj)
				histogram(o, name_of(obj), cd_stat_op_names[op], opj, bounds);
		}
	}
}

static void scope(FILE *f, const char *name, json_t *list)
{
	struct out o = { f, name, NULL };

	for (size_t i = 0; i < CD_ARRAY_SIZE(families); i++)
		family(&o, &families[i], list);
	histograms(&o, list);
}

int cd_metrics_text(json_t *status, char **out)
{
	size_t len;
	FILE *f = open_memstream(out, &len);

	if (!f)
		return -ENOMEM;
	scope(f, "export", json_object_get(status, "exports"));
	scope(f, "user", json_object_get(status, "users"));
	if (fclose(f) != 0 || !*out) {
		free(*out);
		*out = NULL;
		return -ENOMEM;
	}
	return 0;
}

int cdisk_metrics_text(struct cdisk_ctx *ctx, const char *status_json, char **text)
{
	json_error_t jerr;
	json_t *status = json_loads(status_json, 0, &jerr);
	int r;

	*text = NULL;
	if (!json_is_object(status)) {
		json_decref(status);
		return cd_error(ctx, -EBADMSG, "the server's status is not a JSON object: %s",
				status ? "wrong type" : jerr.text);
	}
	r = cd_metrics_text(status, text);
	json_decref(status);
	if (r < 0)
		return cd_error(ctx, r, "cannot render the statistics: %s", strerror(-r));
	return 0;
}

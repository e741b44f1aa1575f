/* cdisk-probe: how well a target answers, and a verdict cron can act on.
 * Exit 0 healthy, 9 degraded, 3 unreachable (see cdisk-probe(1)). */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

static const struct cli_program program = {
	.name = "cdisk-probe",
	.args = "URI|NAME.cdisk",
	.summary = "measure round trips, loss, throughput and server load of a "
		   "target, and judge them",
};

static char *read_size_arg, *max_rtt_arg, *max_jitter_arg, *max_loss_arg,
	    *max_busy_arg, *min_read_rate_arg, *max_load_delay_arg,
	    *max_osd_latency_arg, *ceph_health_arg;
static int pings, interval_ms, timeout_s, max_time, depth, no_read, write_scratch,
	   watch, count;

static struct poptOption measure_options[] = {
	{ "pings", 'c', POPT_ARG_INT, &pings, 0,
	  "Round trips to time (default 20)", "N" },
	{ "interval", 'i', POPT_ARG_INT, &interval_ms, 0,
	  "Milliseconds between pings (default 20)", "MS" },
	{ "timeout", 't', POPT_ARG_INT, &timeout_s, 0,
	  "Seconds to wait for a connection or an answer (default 5)", "SECONDS" },
	{ "max-time", '\0', POPT_ARG_INT, &max_time, 0,
	  "Seconds the whole probe may take, plus one timeout (default 10)", "SECONDS" },
	{ "read-size", '\0', POPT_ARG_STRING, &read_size_arg, 0,
	  "Bytes of the bounded read (default 16M)", "SIZE" },
	{ "no-read", '\0', POPT_ARG_NONE, &no_read, 0,
	  "Time round trips only: no throughput, no load", NULL },
	{ "depth", 'd', POPT_ARG_INT, &depth, 0,
	  "Reads in flight during the bounded read (default 4)", "N" },
	{ "write-scratch", '\0', POPT_ARG_NONE, &write_scratch, 0,
	  "The target is scratch: also time writes over its first --read-size "
	  "bytes (never a disk's base)", NULL },
	POPT_TABLEEND
};

static struct poptOption limit_options[] = {
	{ "max-rtt", '\0', POPT_ARG_STRING, &max_rtt_arg, 0,
	  "Degraded when the mean round trip is longer (default 100)", "MS" },
	{ "max-jitter", '\0', POPT_ARG_STRING, &max_jitter_arg, 0,
	  "Degraded when jitter is higher (default 30)", "MS" },
	{ "max-loss", '\0', POPT_ARG_STRING, &max_loss_arg, 0,
	  "Degraded when more requests are lost (default 5)", "PERCENT" },
	{ "max-busy", '\0', POPT_ARG_STRING, &max_busy_arg, 0,
	  "Degraded when more answers say busy (default 0)", "PERCENT" },
	{ "min-read-rate", '\0', POPT_ARG_STRING, &min_read_rate_arg, 0,
	  "Degraded when the bounded read is slower (default none)", "RATE" },
	{ "max-load-delay", '\0', POPT_ARG_STRING, &max_load_delay_arg, 0,
	  "Degraded when the round trip grows more under the probe's load "
	  "(default 200)", "MS" },
	{ "max-osd-latency", '\0', POPT_ARG_STRING, &max_osd_latency_arg, 0,
	  "Ceph: degraded when the slowest OSD's write or read latency is longer "
	  "(default 500)", "MS" },
	{ "ceph-health", '\0', POPT_ARG_STRING, &ceph_health_arg, 0,
	  "Ceph: the worst cluster health still healthy (default warn)", "ok|warn|err" },
	POPT_TABLEEND
};

static struct poptOption options[] = {
	{ NULL, '\0', POPT_ARG_INCLUDE_TABLE, measure_options, 0,
	  "What to measure:", NULL },
	{ NULL, '\0', POPT_ARG_INCLUDE_TABLE, limit_options, 0,
	  "Thresholds (a number, or none):", NULL },
	{ "watch", 'w', POPT_ARG_INT, &watch, 0,
	  "Probe every SECONDS and print one line per round", "SECONDS" },
	{ "count", '\0', POPT_ARG_INT, &count, 0,
	  "With --watch: stop after N rounds", "N" },
	{ "json", 'J', POPT_ARG_NONE, &cli.json, 0,
	  "Print the result as JSON (with --watch: one object per line)", NULL },
	CLI_COMMON_OPTIONS,
	POPT_TABLEEND
};

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

/* ---- options ---- */

/* A percentage (scale 0.01) is at most 100; milliseconds have no bound. */
static void parse_limit(const char *option, const char *value, double scale,
			double *out)
{
	double v;
	int r;

	if (!value)
		return;
	r = cd_parse_limit(value, scale < 1 ? 100 : HUGE_VAL, &v);
	if (r == -ERANGE)
		cli_usage_error("invalid %s '%s': a percentage is at most 100", option, value);
	if (r < 0)
		cli_usage_error("invalid %s '%s': expected a number or none", option, value);
	*out = v < 0 ? -1 : v * scale;
}

static void parse_limits(struct cdisk_probe_limits *l)
{
	parse_limit("--max-rtt", max_rtt_arg, 1, &l->max_rtt_ms);
	parse_limit("--max-jitter", max_jitter_arg, 1, &l->max_jitter_ms);
	parse_limit("--max-loss", max_loss_arg, 0.01, &l->max_loss);
	parse_limit("--max-busy", max_busy_arg, 0.01, &l->max_busy);
	parse_limit("--max-load-delay", max_load_delay_arg, 1, &l->max_load_delay_ms);
	parse_limit("--max-osd-latency", max_osd_latency_arg, 1, &l->max_osd_latency_ms);
	if (min_read_rate_arg && !strcmp(min_read_rate_arg, "none"))
		l->min_read_rate = -1;
	else if (min_read_rate_arg)
		l->min_read_rate = (double)cli_parse_size("--min-read-rate", min_read_rate_arg);
	if (ceph_health_arg) {
		int rank = cd_parse_ceph_health(ceph_health_arg);
		if (rank < 0)
			cli_usage_error("invalid --ceph-health '%s': expected ok, warn or err",
					ceph_health_arg);
		l->ceph_health = rank;
	}
}

static void check_range(const char *option, int value, int min, int max)
{
	if (value && (value < min || value > max))
		cli_usage_error("%s must be from %d to %d", option, min, max);
}

static void parse_opts(struct cdisk_probe_opts *o)
{
	check_range("--pings", pings, 1, 10000);
	check_range("--interval", interval_ms, 1, 60000);
	check_range("--timeout", timeout_s, 1, 3600);
	check_range("--max-time", max_time, 1, 3600);
	check_range("--depth", depth, 1, 64);
	check_range("--watch", watch, 1, 86400);
	if (pings < 0 || interval_ms < 0 || timeout_s < 0 || max_time < 0 || depth < 0 ||
	    watch < 0 || count < 0)
		cli_usage_error("counts and times must not be negative");
	if (count && !watch)
		cli_usage_error("--count goes with --watch");
	o->pings = (unsigned)pings;
	o->interval_ms = (uint32_t)interval_ms;
	o->timeout_s = (uint32_t)timeout_s;
	o->max_seconds = (uint32_t)max_time;
	o->depth = (unsigned)depth;
	o->no_read = no_read;
	o->write_scratch = write_scratch;
	if (read_size_arg) {
		o->read_bytes = cli_parse_size("--read-size", read_size_arg);
		if (o->read_bytes == 0)
			cli_usage_error("--read-size must not be 0; use --no-read");
	}
	if (no_read && write_scratch)
		cli_usage_error("--write-scratch needs the bounded read's size; drop --no-read");
}

/* A URI names its kind; a path is a cdisk whose base is probed, or else
 * a target itself (a file or block device, as cdisk(7) lists them). */
static bool is_target(struct cdisk_ctx *ctx, const char *arg)
{
	struct cdisk *d;
	struct stat st;
	int r;

	if (strstr(arg, "://") || !strncmp(arg, "rbd:", 4))
		return true;
	if (stat(arg, &st) < 0)
		return false;
	if (S_ISBLK(st.st_mode))
		return true;
	if (!S_ISREG(st.st_mode))
		return false;
	r = cdisk_open(ctx, arg, CDISK_OPEN_RDONLY | CDISK_OPEN_NO_BASE |
		       CDISK_OPEN_NO_REPAIR, &d);
	if (r == 0)
		cdisk_close(d);
	return r == -ENOMSG;
}

/* ---- output ---- */

static void limit_text(double limit, double scale, const char *unit, char *out,
		       size_t len)
{
	if (limit < 0)
		snprintf(out, len, "none");
	else
		snprintf(out, len, "%.4g%s", limit / scale, unit);
}

static void row(const char *figure, const char *value, double limit, double scale,
		const char *unit, bool over)
{
	char lim[32];

	limit_text(limit, scale, unit, lim, sizeof(lim));
	printf("%-14s %-44s %-10s %s\n", figure, value, lim, over ? "OVER" : "ok");
}

static void print_table(const char *target, const struct cdisk_probe_result *r,
			const struct cdisk_probe_limits *l)
{
	char v[96];

	printf("target:  %s\n", target);
	if (r->verdict != CDISK_UNREACHABLE && r->answered) {
		printf("%-14s %-44s %-10s %s\n", "figure", "measured", "limit", "");
		snprintf(v, sizeof(v), "%.2f ms (min %.2f, p95 %.2f, max %.2f)",
			 r->rtt_mean_ms, r->rtt_min_ms, r->rtt_p95_ms, r->rtt_max_ms);
		row("round trip", v, l->max_rtt_ms, 1, " ms", r->over & CDISK_PROBE_RTT);
		snprintf(v, sizeof(v), "%.2f ms", r->jitter_ms);
		row("jitter", v, l->max_jitter_ms, 1, " ms", r->over & CDISK_PROBE_JITTER);
	}
	if (r->verdict != CDISK_UNREACHABLE) {
		snprintf(v, sizeof(v), "%.1f%% (%u of %u)", r->loss * 100, r->lost, r->sent);
		row("loss", v, l->max_loss, 0.01, "%", r->over & CDISK_PROBE_LOSS);
		if (r->retry_after)
			snprintf(v, sizeof(v), "%.1f%% (%u; retry after %u s)",
				 r->busy_fraction * 100, r->busy, r->retry_after);
		else
			snprintf(v, sizeof(v), "%.1f%% (%u)", r->busy_fraction * 100, r->busy);
		row("busy answers", v, l->max_busy, 0.01, "%", r->over & CDISK_PROBE_BUSY);
	}
	if (r->read_measured) {
		snprintf(v, sizeof(v), "%.1f MiB/s (%.1f MiB)", r->read_rate / 1048576,
			 (double)r->read_bytes / 1048576);
		row("read rate", v, l->min_read_rate, 1048576, " MiB/s",
		    r->over & CDISK_PROBE_READ_RATE);
	}
	if (r->load_measured) {
		snprintf(v, sizeof(v), "%+.2f ms (round trip %.2f ms under load)",
			 r->load_delay_ms, r->loaded_rtt_mean_ms);
		row("load delay", v, l->max_load_delay_ms, 1, " ms",
		    r->over & CDISK_PROBE_LOAD_DELAY);
	}
	if (r->write_measured) {
		snprintf(v, sizeof(v), "%.1f MiB/s (%.1f MiB)", r->write_rate / 1048576,
			 (double)r->write_bytes / 1048576);
		row("write rate", v, -1, 1, "", false);
	}
	if (r->ceph) {
		static const char *const ranks[] = { "HEALTH_OK", "HEALTH_WARN", "HEALTH_ERR" };
		printf("%-14s %-44s %-10s %s\n", "ceph health", r->ceph_health,
		       ranks[l->ceph_health], r->over & CDISK_PROBE_CEPH_HEALTH ? "OVER" : "ok");
		if (r->osd_commit_ms >= 0)
			snprintf(v, sizeof(v), "write %.2f, read %.2f, commit %.0f, apply %.0f ms",
				 r->osd_write_ms, r->osd_read_ms, r->osd_commit_ms,
				 r->osd_apply_ms);
		else
			snprintf(v, sizeof(v), "write %.2f ms, read %.2f ms (slowest of %u)",
				 r->osd_write_ms, r->osd_read_ms, r->osds);
		row("osd latency", v, l->max_osd_latency_ms, 1, " ms",
		    r->over & CDISK_PROBE_OSD_LATENCY);
	}
	printf("verdict: %s%s%s\n", cli_verdict_name(r->verdict), r->reason[0] ? ": " : "",
	       r->reason);
}

static json_t *number_or_null(bool known, double v)
{
	return known ? json_real(v) : json_null();
}

/* As --ceph-health takes them, by rank. */
static const char *const health_words[] = { "ok", "warn", "err" };

static json_t *result_json(const char *target, const struct cdisk_probe_result *r,
			   const struct cdisk_probe_limits *l)
{
	bool rtt = r->answered > 0;
	json_t *limits = json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:s}",
		"max_rtt_ms", number_or_null(l->max_rtt_ms >= 0, l->max_rtt_ms),
		"max_jitter_ms", number_or_null(l->max_jitter_ms >= 0, l->max_jitter_ms),
		"max_loss", number_or_null(l->max_loss >= 0, l->max_loss),
		"max_busy", number_or_null(l->max_busy >= 0, l->max_busy),
		"min_read_rate", number_or_null(l->min_read_rate >= 0, l->min_read_rate),
		"max_load_delay_ms", number_or_null(l->max_load_delay_ms >= 0,
						    l->max_load_delay_ms),
		"max_osd_latency_ms", number_or_null(l->max_osd_latency_ms >= 0,
						     l->max_osd_latency_ms),
		"ceph_health", health_words[l->ceph_health > 2 ? 2 : l->ceph_health]);
	json_t *j = json_pack("{s:i, s:s, s:s, s:i, s:s, s:f, s:I, s:I, s:I, s:I, s:I, s:f, "
			      "s:f, s:I, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}",
		"schema_version", 1, "target", target,
		"verdict", cli_verdict_name(r->verdict),
		"exit_code", cli_verdict_exit_code(r->verdict),
		"reason", r->reason, "seconds", r->seconds,
		"sent", (json_int_t)r->sent, "answered", (json_int_t)r->answered,
		"lost", (json_int_t)r->lost, "refused", (json_int_t)r->refused,
		"busy", (json_int_t)r->busy,
		"loss", r->loss, "busy_fraction", r->busy_fraction,
		"retry_after_seconds", (json_int_t)r->retry_after,
		"rtt_min_ms", number_or_null(rtt, r->rtt_min_ms),
		"rtt_mean_ms", number_or_null(rtt, r->rtt_mean_ms),
		"rtt_p95_ms", number_or_null(rtt, r->rtt_p95_ms),
		"rtt_max_ms", number_or_null(rtt, r->rtt_max_ms),
		"jitter_ms", number_or_null(rtt, r->jitter_ms),
		"read_rate", number_or_null(r->read_measured, r->read_rate),
		"read_bytes", json_integer((json_int_t)r->read_bytes),
		"loaded_rtt_mean_ms", number_or_null(r->load_measured, r->loaded_rtt_mean_ms),
		"load_delay_ms", number_or_null(r->load_measured, r->load_delay_ms),
		"write_rate", number_or_null(r->write_measured, r->write_rate),
		"limits", limits);

	if (j && r->ceph)
		json_object_set_new(j, "ceph", json_pack("{s:s, s:I, s:f, s:f, s:o, s:o}",
			"health", r->ceph_health, "osds", (json_int_t)r->osds,
			"write_latency_ms", r->osd_write_ms,
			"read_latency_ms", r->osd_read_ms,
			"commit_latency_ms", number_or_null(r->osd_commit_ms >= 0, r->osd_commit_ms),
			"apply_latency_ms", number_or_null(r->osd_apply_ms >= 0, r->osd_apply_ms)));
	return j;
}

static void print_round(const char *target, const struct cdisk_probe_result *r,
			const struct cdisk_probe_limits *l)
{
	char when[32];
	time_t now = time(NULL);
	json_t *j;

	if (cli.json) {
		char *text;
		j = result_json(target, r, l);
		text = cli_json_text(j, JSON_COMPACT);
		json_decref(j);
		if (text)
			printf("%s\n", text);
		free(text);
		fflush(stdout);
		return;
	}
	strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", localtime(&now));
	printf("%s %-11s", when, cli_verdict_name(r->verdict));
	if (r->answered)
		printf(" rtt %.2f/%.2f/%.2f/%.2f ms jitter %.2f ms", r->rtt_min_ms,
		       r->rtt_mean_ms, r->rtt_p95_ms, r->rtt_max_ms, r->jitter_ms);
	if (r->verdict != CDISK_UNREACHABLE)
		printf(" loss %.0f%% busy %.0f%%", r->loss * 100, r->busy_fraction * 100);
	if (r->read_measured)
		printf(" read %.1f MiB/s", r->read_rate / 1048576);
	if (r->reason[0])
		printf(" (%s)", r->reason);
	printf("\n");
	fflush(stdout);
}

/* ---- the program ---- */

static int probe_once(struct cdisk_ctx *ctx, const char *arg, bool target_itself,
		      const struct cdisk_probe_opts *o, const struct cdisk_probe_limits *l,
		      struct cdisk_probe_result *res, char *target, size_t target_len)
{
	if (target_itself) {
		snprintf(target, target_len, "%s", arg);
		return cdisk_probe(ctx, arg, o, l, res);
	}
	return cdisk_probe_disk(ctx, arg, o, l, res, target, target_len);
}

static void pause_between_rounds(double probe_seconds)
{
	double left = watch - probe_seconds;

	while (left > 0 && !stop) {
		usleep(left > 0.2 ? 200000 : (useconds_t)(left * 1e6));
		left -= 0.2;
	}
}

int main(int argc, char **argv)
{
	struct cdisk_probe_opts o = { 0 };
	struct cdisk_probe_limits l;
	struct cdisk_probe_result res;
	char target[CDISK_MAX_URI + 1];
	struct cdisk_ctx *ctx;
	const char **args;
	int r, rounds = 0;
	bool target_itself;

	args = cli_parse(&program, argc, (const char **)argv, options, 1, 1);
	parse_opts(&o);
	ctx = cli_context();
	cdisk_probe_limits_default(ctx, &l);
	parse_limits(&l);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	target_itself = is_target(ctx, args[0]);

	do {
		r = probe_once(ctx, args[0], target_itself, &o, &l, &res, target,
			       sizeof(target));
		if (r < 0)
			break;
		/* -q: the exit status says it all (JSON, when asked for, still comes). */
		if (watch && (cli.json || !cli.quiet))
			print_round(target, &res, &l);
		else if (cli.json)
			r = cli_print_json(result_json(target, &res, &l));
		else if (!cli.quiet)
			print_table(target, &res, &l);
		rounds++;
		if (watch && !stop && (!count || rounds < count))
			pause_between_rounds(res.seconds);
	} while (watch && !stop && (!count || rounds < count));

	if (r == 0) {
		r = cli_exit_code(ctx, 0);
		if (r == 0)
			r = cli_verdict_exit_code(res.verdict);
	} else {
		r = cli_exit_code(ctx, r);
	}
	cdisk_ctx_free(ctx);
	return r;
}

/* Unit tests for the Prometheus text made from a status reply: families
 * in blocks under their HELP and TYPE, label values escaped, histograms
 * whole, and a status without statistics rendered without them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "control.h"
#include "stats.h"

/* A status as a server gives it: one export with an awkward name, one
 * user with limits, both with statistics made by the real renderer. */
static json_t *status_json(void)
{
	struct cd_io_stats *st = calloc(1, sizeof(*st)), *s = calloc(1, sizeof(*s));
	json_t *status;

	assert_non_null(st);
	assert_non_null(s);
	for (int i = 0; i < 8; i++)
		cd_io_stats_record(st, CD_STAT_WRITE, 65536, 0, 40000);
	cd_io_stats_record(st, CD_STAT_WRITE, 65536, -EIO, 3000000);
	cd_io_stats_record(st, CD_STAT_READ, 4096, 0, 20000000000ull);
	cd_io_stats_limit_wait(st, 1500000);
	cd_io_stats_snapshot(st, s);
	status = json_pack("{s:i, s:b, s:[{s:s, s:i, s:o}], s:[{s:s, s:{s:I, s:I}, s:i, s:i, "
			   "s:i, s:o}]}",
			   "schema_version", 1, "ok", 1, "exports", "name", "a\"b\\c\nd",
			   "connections", 2, "io", cd_io_stats_json(s), "users", "name",
			   "user:alice", "limits", "iops", (json_int_t)500, "connections",
			   (json_int_t)0, "connections", 1, "queued", 3, "inflight", 4, "io",
			   cd_io_stats_json(s));
	assert_non_null(status);
	free(st);
	free(s);
	return status;
}

static char *render(json_t *status)
{
	char *text = NULL;

	assert_int_equal(cd_metrics_text(status, &text), 0);
	assert_non_null(text);
	json_decref(status);
	return text;
}

static void has_line(const char *text, const char *line)
{
	size_t n = strlen(line);

	for (const char *p = text; (p = strstr(p, line)); p += n)
		if ((p == text || p[-1] == '\n') && p[n] == '\n')
			return;
	fail_msg("no line '%s' in:\n%s", line, text);
}

static void test_escaping(void **state)
{
	char *text = render(status_json());

	(void)state;
	has_line(text, "cdisk_export_requests_total{export=\"a\\\"b\\\\c\\nd\",op=\"write\"} 9");
	has_line(text, "cdisk_user_requests_total{user=\"user:alice\",op=\"read\"} 1");
	free(text);
}

static void test_families(void **state)
{
	char *text = render(status_json());

	(void)state;
	has_line(text, "# TYPE cdisk_export_requests_total counter");
	has_line(text, "# HELP cdisk_export_requests_total Per export: NBD requests "
		       "finished, by operation");
	has_line(text, "# TYPE cdisk_export_queue_depth gauge");
	has_line(text, "# TYPE cdisk_export_request_duration_seconds histogram");
	has_line(text, "# TYPE cdisk_user_request_duration_seconds histogram");
	has_line(text, "cdisk_export_bytes_total{export=\"a\\\"b\\\\c\\nd\",op=\"write\"} 524288");
	has_line(text, "cdisk_export_errors_total{export=\"a\\\"b\\\\c\\nd\",op=\"write\"} 1");
	has_line(text, "cdisk_export_limit_waits_total{export=\"a\\\"b\\\\c\\nd\"} 1");
	has_line(text, "cdisk_export_limit_wait_seconds_total{export=\"a\\\"b\\\\c\\nd\"} 0.0015");
	has_line(text, "cdisk_export_connections{export=\"a\\\"b\\\\c\\nd\"} 2");
	has_line(text, "cdisk_user_queued{user=\"user:alice\"} 3");
	has_line(text, "cdisk_user_inflight{user=\"user:alice\"} 4");
	has_line(text, "cdisk_user_limit_iops{user=\"user:alice\"} 500");
	/* A limit of 0 is none: not shown. */
	assert_null(strstr(text, "cdisk_user_limit_connections"));
	/* Ops no one used have no series. */
	assert_null(strstr(text, "op=\"trim\""));
	/* Each family's TYPE once: its samples are in one block. */
	const char *t = strstr(text, "# TYPE cdisk_export_requests_total");
	assert_null(strstr(t + 1, "# TYPE cdisk_export_requests_total"));
	free(text);
}

static void test_histogram(void **state)
{
	char *text = render(status_json());
	char line[256];
#define W "cdisk_export_request_duration_seconds_bucket{export=\"a\\\"b\\\\c\\nd\"," \
	  "op=\"write\",le=\"%s\"} %s"

	(void)state;
	/* 8 of 40 µs, 1 of 3 ms: buckets at 50 µs, 5 ms, +Inf. */
	snprintf(line, sizeof(line), W, "1e-05", "0");
	has_line(text, line);
	snprintf(line, sizeof(line), W, "5e-05", "8");
	has_line(text, line);
	snprintf(line, sizeof(line), W, "0.0025", "8");
	has_line(text, line);
	snprintf(line, sizeof(line), W, "0.005", "9");
	has_line(text, line);
	snprintf(line, sizeof(line), W, "10", "9");
	has_line(text, line);
	snprintf(line, sizeof(line), W, "+Inf", "9");
	has_line(text, line);
	has_line(text, "cdisk_export_request_duration_seconds_count{export=\"a\\\"b\\\\c\\nd\","
		       "op=\"write\"} 9");
	assert_non_null(strstr(text, "cdisk_export_request_duration_seconds_sum{export="));
	/* The 20 s read: past the last bound, only under +Inf. */
	has_line(text, "cdisk_user_request_duration_seconds_bucket{user=\"user:alice\","
		       "op=\"read\",le=\"10\"} 0");
	has_line(text, "cdisk_user_request_duration_seconds_bucket{user=\"user:alice\","
		       "op=\"read\",le=\"+Inf\"} 1");
	free(text);
}

/* A server that gives no statistics (an older one): its exports have no
 * series but the ones it does give. */
static void test_no_io(void **state)
{
	char *text = render(json_pack("{s:[{s:s, s:i}]}", "exports", "name", "d",
				      "connections", 1));

	(void)state;
	assert_string_equal(text, "# HELP cdisk_export_connections Per export: Open NBD "
				  "connections\n# TYPE cdisk_export_connections gauge\n"
				  "cdisk_export_connections{export=\"d\"} 1\n");
	free(text);
	text = render(json_object());
	assert_string_equal(text, "");
	free(text);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_escaping),
		cmocka_unit_test(test_families),
		cmocka_unit_test(test_histogram),
		cmocka_unit_test(test_no_io),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

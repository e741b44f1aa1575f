/* Unit tests for the users file and the pre-shared key file: every key,
 * every refusal with its line, and what a user may open. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "users.h"

static struct cd_users *parse_ok(const char *text)
{
	struct cdisk_ctx ctx = { 0 };
	struct cd_users *u = NULL;

	if (cd_users_parse_text(&ctx, text, &u) != 0)
		fail_msg("refused: %s", cd_errbuf());
	return u;
}

static void expect_refused(const char *text, const char *message)
{
	struct cdisk_ctx ctx = { 0 };
	struct cd_users *u = (struct cd_users *)1;

	assert_int_equal(cd_users_parse_text(&ctx, text, &u), -EINVAL);
	assert_null(u);
	if (!strstr(cd_errbuf(), message))
		fail_msg("message '%s' lacks '%s'", cd_errbuf(), message);
}

static void test_every_key(void **state)
{
	struct cd_users *u;
	const struct cd_user *a;

	(void)state;
	u = parse_ok("[user alice]\n"
		     "exports = alice/*, shared/golden\n"
		     "read_only = yes\n"
		     "certificate = alice-laptop\n"
		     "uid = 1001\n"
		     "iops = 2000\n"
		     "bandwidth = 100M\n"
		     "burst = 500ms\n"
		     "queue_depth = 64\n"
		     "connections = 8\n"
		     "quota_size = 500G\n"
		     "quota_used = 200G\n"
		     "[user bob]\n"
		     "exports = bob/*\n"
		     "burst = 2s\n");
	assert_int_equal(u->n, 2);
	a = cd_users_find(u, "alice");
	assert_non_null(a);
	assert_int_equal(a->nexports, 2);
	assert_string_equal(a->exports[1], "shared/golden");
	assert_true(a->read_only);
	assert_true(a->has_uid);
	assert_int_equal(a->uid, 1001);
	assert_int_equal(a->limits.iops, 2000);
	assert_int_equal(a->limits.bytes_per_second, 100ull << 20);
	assert_int_equal(a->limits.burst_ms, 500);
	assert_int_equal(a->limits.queue_depth, 64);
	assert_int_equal(a->limits.connections, 8);
	assert_int_equal(a->quota_size, 500ull << 30);
	assert_int_equal(a->quota_used, 200ull << 30);
	assert_ptr_equal(cd_users_by_certificate(u, "alice-laptop"), a);
	assert_ptr_equal(cd_users_by_uid(u, 1001), a);
	assert_int_equal(cd_users_find(u, "bob")->limits.burst_ms, 2000);
	assert_false(cd_users_find(u, "bob")->has_uid);
	assert_null(cd_users_by_uid(u, 0));
	assert_null(cd_users_find(u, "carol"));
	cd_users_free(u);
}

static void test_may_open(void **state)
{
	struct cd_users *u = parse_ok("[user alice]\nexports = alice/*, shared/golden\n");
	const struct cd_user *a = cd_users_find(u, "alice");

	(void)state;
	assert_true(cd_user_may_open(a, "alice/desktop"));
	assert_true(cd_user_may_open(a, "shared/golden"));
	assert_false(cd_user_may_open(a, "bob/desktop"));
	assert_false(cd_user_may_open(a, "alice/deep/er"));
	assert_false(cd_user_may_open(a, "alice/.hidden"));
	assert_false(cd_user_may_open(a, "alice/../bob/desktop"));
	assert_false(cd_user_may_open(a, "shared/golden2"));
	assert_false(cd_user_may_open(NULL, "alice/desktop"));
	cd_users_free(u);
}

static void test_refusals_name_the_line(void **state)
{
	(void)state;
	expect_refused("[user a]\nexports = a/*\n[user b]\nexports=b\n[user a]\nread_only=no\n",
		       "line 5: [user a] is defined twice (first on line 1)");
	expect_refused("[user a]\ncolour = blue\n", "line 2: unknown key 'colour'");
	expect_refused("[user a]\niops = many\n", "line 2: iops must be a number");
	expect_refused("[user a]\niops = -5\n", "iops must be a number");
	expect_refused("[user a]\nbandwidth = fast\n", "bandwidth 'fast' is not a size");
	expect_refused("[user a]\nburst = 61s\n", "burst '61s' is not a time");
	expect_refused("[user a]\nqueue_depth = 5000\n", "queue_depth must be a number from 0 to 4096");
	expect_refused("[user a]\nread_only = maybe\n", "read_only must be yes or no");
	expect_refused("[user a]\nuid = no-such-user-here\n", "is not a number or a user");
	expect_refused("[user ../etc]\nexports = x\n", "user name '../etc' is not");
	expect_refused("[user .hidden]\nexports = x\n", "is not 1 to 63");
	expect_refused("[user a]\nexports = ../b\n", "export '../b' is not a name");
	expect_refused("[user a]\nexports = /etc/*\n", "export '/etc/*' is not a name");
	expect_refused("[export a]\ndisk = /x\n", "line 2: section [export a] is not [user NAME]");
	expect_refused("[user a]\nthis line is broken\n", "line 2: syntax error");
}

static void test_load_from_file(void **state)
{
	char path[] = "/tmp/cdisk-users-XXXXXX";
	int fd = mkstemp(path);
	struct cdisk_ctx ctx = { 0 };
	struct cd_users *u;
	const char bad[] = "[user a]\nexports = a/*\niops = x\n";

	(void)state;
	assert_true(fd >= 0);
	assert_int_equal(write(fd, bad, sizeof(bad) - 1), (ssize_t)sizeof(bad) - 1);
	close(fd);
	assert_int_equal(cd_users_load(&ctx, path, &u), -EINVAL);
	assert_non_null(strstr(cd_errbuf(), "users file '"));
	assert_non_null(strstr(cd_errbuf(), "', line 3: iops"));
	unlink(path);
	assert_int_equal(cd_users_load(&ctx, path, &u), -ENOENT);
	assert_non_null(strstr(cd_errbuf(), "cannot read users file"));
}

static void test_psk_file(void **state)
{
	static const char text[] =
		"# keys for the desktops\n"
		"alice:00112233445566778899aabbccddeeff\n"
		"bob:0123456789ABCDEF0123456789abcdef0123456789abcdef\r\n";
	struct cdisk_ctx ctx = { 0 };
	struct cd_psk *psk;
	const struct cd_psk_entry *e;

	(void)state;
	assert_int_equal(cd_psk_parse_text(&ctx, text, sizeof(text) - 1, &psk), 0);
	assert_int_equal(psk->n, 2);
	e = cd_psk_find(psk, "alice");
	assert_non_null(e);
	assert_int_equal(e->len, 16);
	assert_int_equal(e->key[0], 0x00);
	assert_int_equal(e->key[15], 0xff);
	e = cd_psk_find(psk, "bob");
	assert_int_equal(e->len, 24);
	assert_int_equal(e->key[4], 0x89);
	assert_null(cd_psk_find(psk, "carol"));
	cd_psk_free(psk);

	static const struct { const char *text, *message; } bad[] = {
		{ "alice\n", "line 1: not name:hexkey" },
		{ "alice:0011\n", "line 1: the key is not 16 to 64 bytes" },
		{ "alice:00112233445566778899aabbccddeefg\n", "the key is not hexadecimal" },
		{ "#\nalice:00112233445566778899aabbccddeeff\nalice:00112233445566778899aabbccddeeff\n",
		  "line 3: the name has a key already" },
		{ "../x:00112233445566778899aabbccddeeff\n", "the name is not" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(cd_psk_parse_text(&ctx, bad[i].text, strlen(bad[i].text),
						   &psk), -EINVAL);
		assert_null(psk);
		if (!strstr(cd_errbuf(), bad[i].message))
			fail_msg("message '%s' lacks '%s'", cd_errbuf(), bad[i].message);
	}
	assert_int_equal(cd_psk_load(&ctx, "/nonexistent/keys.psk", &psk), -ENOENT);
	assert_non_null(strstr(cd_errbuf(), "cannot read the key file '/nonexistent/keys.psk'"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_key),
		cmocka_unit_test(test_may_open),
		cmocka_unit_test(test_refusals_name_the_line),
		cmocka_unit_test(test_load_from_file),
		cmocka_unit_test(test_psk_file),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

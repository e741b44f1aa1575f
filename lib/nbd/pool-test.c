/* Unit tests for the pool's names: which user, image and export names
 * pass, and that a walk of a pool neither follows nor serves a link out
 * of it, nor a name that does not pass. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ctx.h"
#include "pool.h"
#include "users.h"

static void test_names(void **state)
{
	static const char *const good[] = { "alice", "a", "desk-01", "Bob_2", "x.y",
					    "v1.2-final" };
	static const char *const bad[] = {
		"", ".", "..", ".hidden", "-rf", "a/b", "../etc", "/etc", "a b",
		"a\nb", "a\tb", "a\x01" "b", "a\x7f", "\xc3\xa9t\xc3\xa9", "a*", "a?",
		"a\\b", "a:b",
	};
	char longest[CD_POOL_IMAGE_MAX + 2];

	(void)state;
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		if (!cd_pool_name_valid(good[i], CD_POOL_IMAGE_MAX))
			fail_msg("'%s' refused", good[i]);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (cd_pool_name_valid(bad[i], CD_POOL_IMAGE_MAX))
			fail_msg("'%s' passed", bad[i]);
	memset(longest, 'a', sizeof(longest));
	longest[CD_POOL_IMAGE_MAX] = 0;
	assert_true(cd_pool_name_valid(longest, CD_POOL_IMAGE_MAX));
	assert_false(cd_pool_name_valid(longest, CD_USER_NAME_MAX));
	longest[CD_POOL_IMAGE_MAX] = 'a';
	longest[CD_POOL_IMAGE_MAX + 1] = 0;
	assert_false(cd_pool_name_valid(longest, CD_POOL_IMAGE_MAX));
}

static void test_split_export(void **state)
{
	static const char *const bad[] = {
		"alice", "alice/", "/a", "/etc/passwd", "alice/../bob/x", "../alice/x",
		"alice/./x", "alice/x/y", "alice/..", "./x", "alice//x", "alice/.x",
		"alice/x\x01", "shared/../../etc/shadow",
	};
	char user[CD_USER_NAME_MAX + 1], image[CD_POOL_IMAGE_MAX + 1];
	char big[600];

	(void)state;
	assert_true(cd_pool_split_export("alice/desk", user, sizeof(user), image,
					 sizeof(image)));
	assert_string_equal(user, "alice");
	assert_string_equal(image, "desk");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (cd_pool_split_export(bad[i], user, sizeof(user), image, sizeof(image)))
			fail_msg("'%s' passed", bad[i]);
	memset(big, 'a', sizeof(big));
	big[5] = '/';
	big[sizeof(big) - 1] = 0;
	assert_false(cd_pool_split_export(big, user, sizeof(user), image, sizeof(image)));
}

struct seen {
	char served[8][64];
	size_t nserved;
	char skipped[8][64];
	size_t nskipped;
};

static int collect(void *opaque, const struct cdisk_pool_image *img)
{
	struct seen *s = opaque;

	if (img->skipped)
		snprintf(s->skipped[s->nskipped++ % 8], 64, "%s", img->export_name);
	else
		snprintf(s->served[s->nserved++ % 8], 64, "%s", img->export_name);
	return 0;
}

static void touch(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);

	assert_true(fd >= 0);
	close(fd);
}

/* A folder and a file linked out of the pool are reported, not followed;
 * a file whose name does not pass is reported, not served. */
static void test_walk_skips_links_and_bad_names(void **state)
{
	char dir[] = "/tmp/cdisk-pool-test.XXXXXX", p[512], target[512];
	struct cdisk_ctx ctx = { 0 };
	struct seen s = { 0 };

	(void)state;
	assert_non_null(mkdtemp(dir));
#define AT(...) (snprintf(p, sizeof(p), __VA_ARGS__), p)
	assert_int_equal(mkdir(AT("%s/pool", dir), 0700), 0);
	assert_int_equal(mkdir(AT("%s/outside", dir), 0700), 0);
	touch(AT("%s/outside/x.cdisk", dir));
	assert_int_equal(mkdir(AT("%s/pool/alice", dir), 0700), 0);
	touch(AT("%s/pool/alice/desk.cdisk", dir));
	touch(AT("%s/pool/alice/bad name.cdisk", dir));
	touch(AT("%s/pool/alice/notes.txt", dir));
	snprintf(target, sizeof(target), "%s/outside/x.cdisk", dir);
	assert_int_equal(symlink(target, AT("%s/pool/alice/link.cdisk", dir)), 0);
	snprintf(target, sizeof(target), "%s/outside", dir);
	assert_int_equal(symlink(target, AT("%s/pool/mallory", dir)), 0);
	assert_int_equal(cdisk_pool_list(&ctx, AT("%s/pool", dir), NULL, collect, &s), 0);
	assert_int_equal(s.nserved, 1);
	assert_string_equal(s.served[0], "alice/desk");
	assert_int_equal(s.nskipped, 3);
	assert_string_equal(s.skipped[0], "alice/bad name.cdisk");
	assert_string_equal(s.skipped[1], "alice/link");
	assert_string_equal(s.skipped[2], "mallory");
	/* A user name that does not pass is refused before any path is made. */
	assert_int_equal(cdisk_pool_list(&ctx, AT("%s/pool", dir), "../outside", collect,
					 &s), -EINVAL);
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	assert_int_equal(system(cmd), 0);
#undef AT
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_names),
		cmocka_unit_test(test_split_export),
		cmocka_unit_test(test_walk_skips_links_and_bad_names),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Unit tests for the target interface and the file target. */
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

#include "cdisk.h"
#include "ctx.h"
#include "http.h"
#include "target.h"
#include "uri.h"
#include "util.h"

static char path[64];

static int setup(void **state)
{
	int fd;

	(void)state;
	strcpy(path, "/tmp/cdisk-target-XXXXXX");
	fd = mkstemp(path);
	if (fd < 0 || ftruncate(fd, 1 << 20) < 0)
		return -1;
	close(fd);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	unlink(path);
	return 0;
}

static void test_read_write_flush_zero(void **state)
{
	struct cdisk_ctx ctx = { 0 };
	struct cd_target *t;
	uint8_t buf[8192], back[8192];

	(void)state;
	assert_int_equal(cd_target_open(&ctx, path, false, &t), 0);
	assert_int_equal(t->size, 1 << 20);
	assert_true(t->can_flush && t->can_zero && !t->readonly);
	memset(buf, 0x5a, sizeof(buf));
	assert_int_equal(cd_target_pwrite(t, buf, sizeof(buf), 4096), 0);
	assert_int_equal(cd_target_flush(t), 0);
	assert_int_equal(cd_target_pread(t, back, sizeof(back), 4096), 0);
	assert_memory_equal(buf, back, sizeof(buf));
	assert_int_equal(cd_target_zero(t, 4096, 8192), 0);
	assert_int_equal(cd_target_pread(t, back, 4096, 8192), 0);
	memset(buf, 0, 4096);
	assert_memory_equal(buf, back, 4096);
	/* Past the end: refused with the URI named, nothing done. */
	assert_int_equal(cd_target_pwrite(t, buf, 4096, (1 << 20) - 2048), -EINVAL);
	assert_non_null(strstr(cd_errbuf(), path));
	assert_int_equal(cd_target_pread(t, buf, 1, 1 << 20), -EINVAL);
	cd_target_close(t);
}

static void test_readonly_refused_before_sending(void **state)
{
	struct cdisk_ctx ctx = { 0 };
	struct cd_target *t;
	uint8_t buf[4096] = { 1 };
	struct stat before, after;

	(void)state;
	stat(path, &before);
	assert_int_equal(cd_target_open(&ctx, path, true, &t), 0);
	assert_int_equal(cd_target_pwrite(t, buf, sizeof(buf), 0), -EROFS);
	assert_non_null(strstr(cd_errbuf(), "it is read-only"));
	assert_int_equal(cd_target_zero(t, 4096, 0), -EROFS);
	/* A read-only target has nothing to flush. */
	assert_int_equal(cd_target_flush(t), 0);
	cd_target_close(t);
	stat(path, &after);
	assert_int_equal(before.st_mtime, after.st_mtime);
	assert_int_equal(before.st_blocks, after.st_blocks);
}

static void test_open_errors(void **state)
{
	struct cdisk_ctx ctx = { 0 };
	struct cd_target *t;

	(void)state;
	assert_int_equal(cd_target_open(&ctx, "/nonexistent/x.img", true, &t), -ENOENT);
	assert_non_null(strstr(cd_errbuf(), "cannot open '/nonexistent/x.img'"));
	assert_int_equal(cd_target_open(&ctx, "/tmp", true, &t), -EINVAL);
	assert_non_null(strstr(cd_errbuf(), "not a regular file or block device"));
	assert_int_equal(cd_target_open(&ctx, "ftp://x/y", true, &t), -EINVAL);
}

/* A fake kind, named as such: a store in memory whose sessions break on
 * demand, with 512-byte sectors and requests of at most 4 KiB.  It lets
 * the generic layer's retries, splitting and read-modify-write be checked
 * exactly, which no real server does on cue. */
static uint8_t fake_store[1 << 16];
static int fake_breaks;          /* the next N calls fail as if cut */
static int fake_calls[6];        /* read, write, flush, connect, disconnect, pieces */
static size_t fake_largest;

static int fake_open(struct cd_target *t, const struct cd_uri *u)
{
	(void)u;
	t->size = sizeof(fake_store);
	t->align = 512;
	t->max_request = 4096;
	t->scatter_window = 8192;
	t->can_flush = true;
	return 0;
}

static int fake_connect(struct cd_target *t, void **s)
{
	(void)t;
	fake_calls[3]++;
	*s = &fake_calls;
	return 0;
}

static void fake_disconnect(struct cd_target *t, void *s)
{
	(void)t, (void)s;
	fake_calls[4]++;
}

static int fake_io(struct cd_target *t, int kind, void *buf, size_t len, uint64_t off)
{
	fake_calls[kind]++;
	if (fake_breaks > 0) {
		fake_breaks--;
		return cd_error(t->ctx, -ECONNRESET, "fake: connection cut");
	}
	assert_int_equal(off % 512, 0);
	assert_int_equal(len % 512, 0);
	if (len > fake_largest)
		fake_largest = len;
	if (kind == 0)
		memcpy(buf, fake_store + off, len);
	else if (kind == 1)
		memcpy(fake_store + off, buf, len);
	return 0;
}

static int fake_pread(struct cd_target *t, void *s, void *buf, size_t len, uint64_t off)
{
	(void)s;
	return fake_io(t, 0, buf, len, off);
}

static int fake_pwrite(struct cd_target *t, void *s, const void *buf, size_t len,
		       uint64_t off)
{
	(void)s;
	return fake_io(t, 1, (void *)buf, len, off);
}

static int fake_flush(struct cd_target *t, void *s)
{
	(void)s;
	return fake_io(t, 2, NULL, 0, 0);
}

static int fake_pieces(struct cd_target *t, void *s, const struct cd_piece *v, size_t n)
{
	(void)s;
	fake_calls[5]++;
	if (fake_breaks > 0) {
		fake_breaks--;
		return cd_error(t->ctx, -ECONNRESET, "fake: connection cut");
	}
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(v[i].off / 8192, v[0].off / 8192);
		assert_int_equal(v[i].off % 512, 0);
		assert_int_equal(v[i].len % 512, 0);
		memcpy(fake_store + v[i].off, v[i].buf, v[i].len);
	}
	return 0;
}

static const struct cd_target_ops fake_ops = {
	.name = "fake", .open = fake_open, .connect = fake_connect,
	.disconnect = fake_disconnect, .pread = fake_pread, .pwrite = fake_pwrite,
	.flush = fake_flush, .pwrite_pieces = fake_pieces,
};

static struct cd_target *fake_target(struct cdisk_ctx *ctx, unsigned retries)
{
	struct cd_uri u = { 0 };
	struct cd_target *t;

	memset(fake_store, 0, sizeof(fake_store));
	memset(fake_calls, 0, sizeof(fake_calls));
	fake_breaks = 0;
	fake_largest = 0;
	ctx->cfg.retries = retries;
	ctx->cfg.connections = 4;
	assert_int_equal(cd_target_open_with(ctx, "fake://", &u, &fake_ops, false, &t), 0);
	return t;
}

static void test_unaligned_requests_keep_neighbours(void **state)
{
	struct cdisk_ctx ctx = { 0 };
	struct cd_target *t = fake_target(&ctx, 0);
	uint8_t buf[10000], back[10000];

	(void)state;
	memset(fake_store, 0xee, sizeof(fake_store));
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)(i * 7 + 1);
	assert_int_equal(cd_target_pwrite(t, buf, 9999, 13), 0);
	assert_int_equal(fake_largest <= 4096, true);
	assert_int_equal(cd_target_pread(t, back, 9999, 13), 0);
	assert_memory_equal(back, buf, 9999);
	assert_int_equal(fake_store[12], 0xee);
	assert_int_equal(fake_store[13 + 9999], 0xee);
	assert_int_equal(cd_target_zero(t, 3, 100), 0);
	assert_int_equal(fake_store[99], buf[86]);
	assert_int_equal(fake_store[100] | fake_store[101] | fake_store[102], 0);
	assert_int_equal(fake_store[103], buf[90]);
	cd_target_close(t);
}

static void test_reads_retried_writes_not(void **state)
{
	struct cdisk_ctx ctx = { 0 };
	struct cd_target *t = fake_target(&ctx, 3);
	uint8_t buf[512] = { 1 };

	(void)state;
	/* A read cut twice succeeds on the third try, on fresh sessions. */
	fake_breaks = 2;
	assert_int_equal(cd_target_pread(t, buf, 512, 0), 0);
	assert_int_equal(fake_calls[0], 3);
	assert_int_equal(fake_calls[4], 2);
	assert_int_equal(t->resent, 2);
	/* A write whose fate is unknown is reported, never sent again. */
	fake_breaks = 1;
	assert_int_equal(cd_target_pwrite(t, buf, 512, 0), -ECONNRESET);
	assert_int_equal(fake_calls[1], 1);
	assert_int_equal(t->resent, 2);
	/* Retries are bounded. */
	fake_breaks = 100;
	assert_int_equal(cd_target_flush(t), -ECONNRESET);
	assert_int_equal(fake_calls[2], 4);
	assert_int_equal(t->resent, 5);
	cd_target_close(t);
}

static void test_pieces_together_or_one_by_one(void **state)
{
	struct cdisk_ctx ctx = { 0 };
	struct cd_target *t = fake_target(&ctx, 3);
	uint8_t a[1024], b[512], c[512];
	struct cd_piece one_window[] = { { a, 1024, 8192 }, { b, 512, 10240 }, { c, 512, 15872 } };
	struct cd_piece two_windows[] = { { a, 1024, 0 }, { b, 512, 8192 } };
	struct cd_piece unaligned[] = { { b, 512, 8192 }, { c, 100, 8800 } };
	struct cd_piece past_end[] = { { b, 512, 0 }, { c, 512, sizeof(fake_store) } };

	(void)state;
	memset(a, 1, sizeof(a));
	memset(b, 2, sizeof(b));
	memset(c, 3, sizeof(c));
	/* In one window and aligned: one call of the kind's. */
	assert_int_equal(cd_target_pwrite_pieces(t, one_window, 3), 0);
	assert_int_equal(fake_calls[5], 1);
	assert_int_equal(fake_calls[1], 0);
	assert_memory_equal(fake_store + 8192, a, 1024);
	assert_memory_equal(fake_store + 10240, b, 512);
	assert_memory_equal(fake_store + 15872, c, 512);
	/* Across windows, or not whole sectors: one by one, neighbours kept. */
	assert_int_equal(cd_target_pwrite_pieces(t, two_windows, 2), 0);
	assert_int_equal(fake_calls[5], 1);
	assert_int_equal(fake_calls[1], 2);
	fake_store[8799] = 0xee;
	fake_store[8900] = 0xee;
	assert_int_equal(cd_target_pwrite_pieces(t, unaligned, 2), 0);
	assert_int_equal(fake_calls[5], 1);
	assert_int_equal(fake_store[8799], 0xee);
	assert_int_equal(fake_store[8800], 3);
	assert_int_equal(fake_store[8899], 3);
	assert_int_equal(fake_store[8900], 0xee);
	/* Any piece out of range: nothing at all is written. */
	fake_store[0] = 0;
	assert_int_equal(cd_target_pwrite_pieces(t, past_end, 2), -EINVAL);
	assert_int_equal(fake_store[0], 0);
	/* Cut: reported, never sent again, the session dropped. */
	fake_breaks = 1;
	assert_int_equal(cd_target_pwrite_pieces(t, one_window, 3), -ECONNRESET);
	assert_int_equal(fake_calls[5], 2);
	assert_int_equal(fake_calls[4], 1);
	cd_target_close(t);
	/* Read-only: refused before anything is sent. */
	t = fake_target(&ctx, 0);
	t->readonly = true;
	assert_int_equal(cd_target_pwrite_pieces(t, one_window, 3), -EROFS);
	assert_int_equal(fake_calls[5], 0);
	cd_target_close(t);
}

static void open_identity(struct cdisk_ctx *ctx, const char *uri, char *out)
{
	struct cd_target *t;

	assert_int_equal(cd_target_open(ctx, uri, true, &t), 0);
	assert_int_equal(cd_target_identity(t, out, 128), 0);
	cd_target_close(t);
}

/* One file through a link, a detour and file://; another file apart. */
static void test_file_identity(void **state)
{
	struct cdisk_ctx ctx = { 0 };
	char dir[] = "/tmp/cdisk-ident-XXXXXX", f[96], g[96], link[96], detour[96],
	     uri[128], id_f[128], id[128], id_g[128], small[8];
	int fd;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(f, sizeof(f), "%s/f", dir);
	snprintf(g, sizeof(g), "%s/g", dir);
	snprintf(link, sizeof(link), "%s/link", dir);
	snprintf(detour, sizeof(detour), "%s/sub/../f", dir);
	snprintf(uri, sizeof(uri), "file://%s", f);
	snprintf(id, sizeof(id), "%s/sub", dir);
	assert_int_equal(mkdir(id, 0700), 0);
	fd = open(f, O_CREAT | O_WRONLY, 0600);
	assert_true(fd >= 0 && ftruncate(fd, 4096) == 0);
	close(fd);
	fd = open(g, O_CREAT | O_WRONLY, 0600);
	assert_true(fd >= 0 && ftruncate(fd, 4096) == 0);
	close(fd);
	assert_int_equal(symlink("f", link), 0);

	open_identity(&ctx, f, id_f);
	assert_true(strncmp(id_f, "file:", 5) == 0);
	open_identity(&ctx, link, id);
	assert_string_equal(id, id_f);
	open_identity(&ctx, detour, id);
	assert_string_equal(id, id_f);
	open_identity(&ctx, uri, id);
	assert_string_equal(id, id_f);
	open_identity(&ctx, g, id_g);
	assert_string_not_equal(id_g, id_f);
	/* The path alone says the same as the open target. */
	assert_int_equal(cd_file_identity(&ctx, link, id, sizeof(id)), 0);
	assert_string_equal(id, id_f);
	assert_int_equal(cd_file_identity(&ctx, detour, id, sizeof(id)), 0);
	assert_string_equal(id, id_f);
	assert_int_equal(cd_file_identity(&ctx, g, id, sizeof(id)), 0);
	assert_string_equal(id, id_g);
	assert_int_equal(cd_file_identity(&ctx, f, small, sizeof(small)), -ENAMETOOLONG);
	unlink(link);
	assert_int_equal(cd_file_identity(&ctx, link, id, sizeof(id)), -ENOENT);

	unlink(f);
	unlink(g);
	snprintf(id, sizeof(id), "%s/sub", dir);
	rmdir(id);
	rmdir(dir);
}

/* A block device is the device it names, not the node: a second node
 * for the same device (as /dev/disk/by-id/... would link to) agrees. */
static void test_block_identity(void **state)
{
	struct cdisk_ctx ctx = { 0 };
	char node[] = "/tmp/cdisk-blk-XXXXXX", id[128], other[128];
	struct stat st;
	int fd;

	(void)state;
	if (stat("/dev/loop0", &st) < 0 || !S_ISBLK(st.st_mode))
		skip();
	fd = mkstemp(node);
	assert_true(fd >= 0);
	close(fd);
	unlink(node);
	if (mknod(node, S_IFBLK | 0600, st.st_rdev) < 0)
		skip();   /* not root, or no devices on this file system */
	assert_int_equal(cd_file_identity(&ctx, "/dev/loop0", id, sizeof(id)), 0);
	assert_int_equal(cd_file_identity(&ctx, node, other, sizeof(other)), 0);
	unlink(node);
	assert_string_equal(id, other);
	assert_true(strncmp(id, "file:blk:", 9) == 0);
	if (stat("/dev/loop1", &st) == 0 && S_ISBLK(st.st_mode)) {
		assert_int_equal(cd_file_identity(&ctx, "/dev/loop1", other, sizeof(other)), 0);
		assert_string_not_equal(id, other);
	}
}

/* One spelling of a URL: host lowercased, the scheme's port, the path
 * resolved and decoded, no trailing '/', no query. */
static void test_http_identity(void **state)
{
	struct cdisk_ctx ctx = { 0 };
	struct cd_target t = { .ctx = &ctx, .uri = "test" };
	static const char *const same[] = {
		"http://example.com:80/bucket/disk",
		"HTTP://Example.COM/bucket/disk/",
		"http://example.com/bucket/./x/../disk//",
		"http://example.com/bucket/%64isk?versionId=3#f",
	};
	char id[128];

	(void)state;
	for (size_t i = 0; i < CD_ARRAY_SIZE(same); i++) {
		assert_int_equal(cd_http_identity(&t, "s3", same[i], id, sizeof(id)), 0);
		assert_string_equal(id, "s3:example.com:80/bucket/disk");
	}
	assert_int_equal(cd_http_identity(&t, "http", "https://[::1]/a", id, sizeof(id)), 0);
	assert_string_equal(id, "http:[::1]:443/a");
	assert_int_equal(cd_http_identity(&t, "http", "http://example.com:8080/bucket/disk",
					  id, sizeof(id)), 0);
	assert_string_equal(id, "http:example.com:8080/bucket/disk");
	assert_int_equal(cd_http_identity(&t, "s3", "http://example.com/b/k", id, 10),
			 -ENAMETOOLONG);
}

/* A kind without the op: refused, and the message says which kind. */
static void test_identity_unknown(void **state)
{
	struct cdisk_ctx ctx = { 0 };
	struct cd_target *t = fake_target(&ctx, 2);
	char id[64];

	(void)state;
	assert_int_equal(cd_target_identity(t, id, sizeof(id)), -EOPNOTSUPP);
	assert_non_null(strstr(cd_errbuf(), "fake targets cannot tell"));
	assert_int_equal(fake_calls[0] + fake_calls[1], 0);
	cd_target_close(t);
}

static void test_rbd_snap_context(void **state)
{
	uint8_t reply[12 + 16] = { 0 };
	uint64_t seq, snaps[4];
	uint32_t count;

	(void)state;
	/* No snapshot yet: the sequence alone. */
	assert_int_equal(cd_rbd_parse_snap_context(reply, 12, &seq, snaps, 4, &count), 0);
	assert_int_equal(seq, 0);
	assert_int_equal(count, 0);
	/* seq 9, snapshots 7 and 3, newest first. */
	cd_put_le64(reply, 9);
	cd_put_le32(reply + 8, 2);
	cd_put_le64(reply + 12, 7);
	cd_put_le64(reply + 20, 3);
	assert_int_equal(cd_rbd_parse_snap_context(reply, 28, &seq, snaps, 4, &count), 0);
	assert_int_equal(seq, 9);
	assert_int_equal(count, 2);
	assert_int_equal(snaps[0], 7);
	assert_int_equal(snaps[1], 3);
	/* Short, long, more than room for, out of order, newer than seq. */
	assert_int_equal(cd_rbd_parse_snap_context(reply, 11, &seq, snaps, 4, &count), -EPROTO);
	assert_int_equal(cd_rbd_parse_snap_context(reply, 27, &seq, snaps, 4, &count), -EPROTO);
	assert_int_equal(cd_rbd_parse_snap_context(reply, 28, &seq, snaps, 1, &count), -EPROTO);
	cd_put_le64(reply + 20, 8);
	assert_int_equal(cd_rbd_parse_snap_context(reply, 28, &seq, snaps, 4, &count), -EPROTO);
	cd_put_le64(reply + 20, 3);
	cd_put_le64(reply, 5);
	assert_int_equal(cd_rbd_parse_snap_context(reply, 28, &seq, snaps, 4, &count), -EPROTO);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_read_write_flush_zero, setup, teardown),
		cmocka_unit_test_setup_teardown(test_readonly_refused_before_sending, setup, teardown),
		cmocka_unit_test(test_open_errors),
		cmocka_unit_test(test_unaligned_requests_keep_neighbours),
		cmocka_unit_test(test_reads_retried_writes_not),
		cmocka_unit_test(test_pieces_together_or_one_by_one),
		cmocka_unit_test(test_rbd_snap_context),
		cmocka_unit_test(test_file_identity),
		cmocka_unit_test(test_identity_unknown),
		cmocka_unit_test(test_block_identity),
		cmocka_unit_test(test_http_identity),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

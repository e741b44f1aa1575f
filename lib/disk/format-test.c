/* Unit tests for the superblock format, CRC-32C, URIs, sizes and the
 * probe's threshold words. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>

#include "cdisk.h"
#include "ctx.h"
#include "format.h"
#include "text.h"
#include "uri.h"
#include "util.h"

static void sample_sb(struct cd_superblock *sb)
{
	memset(sb, 0, sizeof(*sb));
	sb->version = CD_FORMAT_VERSION;
	sb->seq = 7;
	sb->size = UINT64_C(1) << 40;
	sb->block_size = 4096;
	memset(sb->uuid, 0x5a, 16);
	strcpy(sb->base, "iscsi://host/iqn.x/0");
	strcpy(sb->meta_backup, "/var/lib/cdisk/meta/x");
	sb->nbitmaps = 2;
	cd_layout(sb);
}

static void test_crc32c_known_values(void **state)
{
	(void)state;
	/* The check value of CRC-32C (RFC 3720, B.4). */
	assert_int_equal(cd_crc32c(0, "123456789", 9), 0xe3069283);
	uint8_t zeros[32] = { 0 };
	assert_int_equal(cd_crc32c(0, zeros, 32), 0x8a9136aa);
	/* Incremental equals whole. */
	assert_int_equal(cd_crc32c(cd_crc32c(0, "12345", 5), "6789", 4), 0xe3069283);
}

static void test_superblock_roundtrip(void **state)
{
	struct cd_superblock a, b;
	uint8_t buf[CD_SB_SIZE];
	const char *why = NULL;

	(void)state;
	sample_sb(&a);
	cd_sb_encode(&a, buf);
	assert_memory_equal(buf, CD_MAGIC, 8);
	assert_int_equal(cd_get_le64(buf + 64), a.size);
	assert_int_equal(cd_sb_decode(buf, &b, &why), 0);
	assert_int_equal(b.seq, 7);
	assert_int_equal(b.data_offset, a.data_offset);
	assert_string_equal(b.base, a.base);
	assert_string_equal(b.meta_backup, a.meta_backup);
}

/* The BITMAPS layout: its fields round-trip, a first-layout superblock
 * keeps them zero, and a count or offset that does not fit is damage. */
static void test_superblock_bitmaps(void **state)
{
	struct cd_superblock sb, out;
	uint8_t buf[CD_SB_SIZE];
	const char *why;

	(void)state;
	sample_sb(&sb);
	cd_sb_encode(&sb, buf);
	assert_true(cd_is_zero(buf + 168, 20));
	assert_int_equal(cd_sb_decode(buf, &out, &why), 0);
	assert_int_equal(out.nbitmaps, 2);
	assert_int_equal(cd_file_size(&out), out.data_offset + out.size);

	sb.incompat |= CD_FEATURE_INCOMPAT_BITMAPS;
	sb.nbitmaps = 3;
	sb.bm_dir_crc = 0x12345678;
	cd_layout(&sb);
	assert_int_equal(sb.bm_offset, sb.data_offset + sb.size);
	cd_sb_encode(&sb, buf);
	assert_int_equal(cd_sb_decode(buf, &out, &why), 0);
	assert_int_equal(out.nbitmaps, 3);
	assert_int_equal(out.bm_offset, sb.bm_offset);
	assert_int_equal(out.bm_dir_crc, 0x12345678);
	/* Room for six extra bitmaps in each of two areas. */
	assert_int_equal(cd_file_size(&out), sb.bm_offset + 2 * cd_extra_area_size(&sb));
	assert_int_equal(cd_extra_area_pages(&sb), 6 * 8192);

	sb.nbitmaps = 9;
	cd_sb_encode(&sb, buf);
	assert_int_equal(cd_sb_decode(buf, &out, &why), -EUCLEAN);
	sb.nbitmaps = 3;
	sb.bm_offset += 4096;
	cd_sb_encode(&sb, buf);
	assert_int_equal(cd_sb_decode(buf, &out, &why), -EUCLEAN);
	sb.bm_offset -= 4096;
	/* The mirror record: kept with MIRROR, refused without a mirror or
	 * a known state. */
	sb.incompat |= CD_FEATURE_INCOMPAT_MIRROR;
	sb.mirror_state = CD_MIRROR_STORED_DEGRADED;
	sb.mirror_since = 1234;
	sb.mirror_recovered = 99;
	sb.mirror_error_time = 5678;
	strcpy(sb.mirror_error, "no answer from the mirror in 5000 ms");
	cd_sb_encode(&sb, buf);
	assert_int_equal(cd_sb_decode(buf, &out, &why), -EUCLEAN);
	strcpy(sb.mirror, "nbd://127.0.0.1:10809/m");
	cd_sb_encode(&sb, buf);
	assert_int_equal(cd_sb_decode(buf, &out, &why), 0);
	assert_int_equal(out.mirror_state, CD_MIRROR_STORED_DEGRADED);
	assert_int_equal(out.mirror_since, 1234);
	assert_int_equal(out.mirror_recovered, 99);
	assert_int_equal(out.mirror_error_time, 5678);
	assert_string_equal(out.mirror_error, sb.mirror_error);
	assert_int_equal(cd_get_le32(buf + 188), CD_MIRROR_STORED_DEGRADED);
	assert_int_equal(cd_get_le64(buf + 200), 99);
	sb.mirror_state = 7;
	cd_sb_encode(&sb, buf);
	assert_int_equal(cd_sb_decode(buf, &out, &why), -EUCLEAN);
	sb.mirror_state = CD_MIRROR_STORED_IN_SYNC;
	sb.incompat |= 1ull << 7;
	cd_sb_encode(&sb, buf);
	assert_int_equal(cd_sb_decode(buf, &out, &why), -EPROTONOSUPPORT);
}

/* PRIMARY: no data area, the extra areas at data_offset, the identity at
 * 3584 only with the bit, and a primary named. */
static void test_superblock_primary(void **state)
{
	struct cd_superblock sb, out;
	uint8_t buf[CD_SB_SIZE];
	const char *why;

	(void)state;
	sample_sb(&sb);
	strcpy(sb.primary_id, "rbd:fsid/pool/1234abcd");
	cd_sb_encode(&sb, buf);
	assert_true(cd_is_zero(buf + 3584, 508));
	sb.incompat |= CD_FEATURE_INCOMPAT_PRIMARY;
	cd_layout(&sb);
	assert_int_equal(cd_file_size(&sb), sb.data_offset);
	cd_sb_encode(&sb, buf);
	assert_int_equal(cd_sb_decode(buf, &out, &why), 0);
	assert_string_equal(out.primary_id, "rbd:fsid/pool/1234abcd");
	assert_string_equal((const char *)buf + 3584, "rbd:fsid/pool/1234abcd");
	assert_true(cd_is_zero(buf + 3840, 252));

	sb.incompat |= CD_FEATURE_INCOMPAT_BITMAPS;
	sb.nbitmaps = 3;
	cd_layout(&sb);
	assert_int_equal(sb.bm_offset, sb.data_offset);
	cd_sb_encode(&sb, buf);
	assert_int_equal(cd_sb_decode(buf, &out, &why), 0);
	/* An overlay's layout under the PRIMARY bit is damage, and so is a
	 * disk on a primary that names none. */
	sb.bm_offset = sb.data_offset + sb.size;
	cd_sb_encode(&sb, buf);
	assert_int_equal(cd_sb_decode(buf, &out, &why), -EUCLEAN);
	cd_layout(&sb);
	sb.base[0] = 0;
	cd_sb_encode(&sb, buf);
	assert_int_equal(cd_sb_decode(buf, &out, &why), -EUCLEAN);
}

/* After a failover: the mirror record names the fenced former primary,
 * the identities travel with their devices (3584 the primary's, 3840 the
 * mirror's), and the FENCED bit and the fenced state go together. */
/* The restore record is kept with the RESTORE compat bit, and its bytes
 * stay zero without it (as a version that does not know it writes them). */
static void test_superblock_restore(void **state)
{
	struct cd_superblock sb, out;
	uint8_t buf[CD_SB_SIZE];
	const char *why;

	(void)state;
	sample_sb(&sb);
	sb.incompat |= CD_FEATURE_INCOMPAT_PRIMARY | CD_FEATURE_INCOMPAT_BITMAPS |
		       CD_FEATURE_INCOMPAT_MIRROR;
	sb.nbitmaps = 3;
	cd_layout(&sb);
	strcpy(sb.mirror, "rbd:ssd/new");
	sb.mirror_state = CD_MIRROR_STORED_COPYING;
	sb.restore_flags = CD_RESTORE_SWITCH | CD_RESTORE_KEEP_PRIMARY;
	sb.restore_started = 1796130000;
	cd_sb_encode(&sb, buf);
	assert_int_equal(cd_get_le32(buf + 472), 0);
	assert_int_equal(cd_get_le64(buf + 480), 0);
	assert_int_equal(cd_sb_decode(buf, &out, &why), 0);
	assert_int_equal(out.restore_flags, 0);

	sb.compat |= CD_FEATURE_COMPAT_RESTORE;
	cd_sb_encode(&sb, buf);
	assert_int_equal(cd_get_le64(buf + 24), CD_FEATURE_COMPAT_RESTORE);
	assert_int_equal(cd_get_le32(buf + 472), 3);
	assert_int_equal(cd_get_le64(buf + 480), 1796130000);
	assert_int_equal(cd_sb_decode(buf, &out, &why), 0);
	assert_int_equal(out.restore_flags, CD_RESTORE_SWITCH | CD_RESTORE_KEEP_PRIMARY);
	assert_int_equal(out.restore_started, 1796130000);
	/* Unknown compat bits are ignored. */
	cd_put_le64(buf + 24, CD_FEATURE_COMPAT_RESTORE | (1ull << 40));
	cd_put_le32(buf + CD_SB_CRC_OFFSET, cd_crc32c(0, buf, CD_SB_CRC_OFFSET));
	assert_int_equal(cd_sb_decode(buf, &out, &why), 0);
}

static void test_superblock_fenced(void **state)
{
	struct cd_superblock sb, out;
	uint8_t buf[CD_SB_SIZE];
	const char *why;

	(void)state;
	sample_sb(&sb);
	sb.incompat |= CD_FEATURE_INCOMPAT_PRIMARY | CD_FEATURE_INCOMPAT_BITMAPS |
		       CD_FEATURE_INCOMPAT_MIRROR;
	sb.nbitmaps = 3;
	cd_layout(&sb);
	strcpy(sb.mirror, "iscsi://127.0.0.1/iqn.x/1");
	strcpy(sb.primary_id, "rbd:fsid/pool/1234abcd");
	strcpy(sb.mirror_id, "iscsi:naa.6001405abcdef");
	sb.mirror_state = CD_MIRROR_STORED_IN_SYNC;
	cd_sb_encode(&sb, buf);
	assert_int_equal(cd_sb_decode(buf, &out, &why), 0);
	assert_string_equal(out.mirror_id, "iscsi:naa.6001405abcdef");
	assert_string_equal((const char *)buf + 3840, "iscsi:naa.6001405abcdef");

	sb.mirror_state = CD_MIRROR_STORED_FENCED;
	cd_sb_encode(&sb, buf);
	assert_int_equal(cd_sb_decode(buf, &out, &why), -EUCLEAN);
	sb.incompat |= CD_FEATURE_INCOMPAT_FENCED;
	cd_sb_encode(&sb, buf);
	assert_int_equal(cd_sb_decode(buf, &out, &why), 0);
	assert_int_equal(out.mirror_state, CD_MIRROR_STORED_FENCED);
	sb.mirror_state = CD_MIRROR_STORED_IN_SYNC;
	cd_sb_encode(&sb, buf);
	assert_int_equal(cd_sb_decode(buf, &out, &why), -EUCLEAN);
	/* Only a disk on a primary fails over. */
	sb.mirror_state = CD_MIRROR_STORED_FENCED;
	sb.incompat &= ~CD_FEATURE_INCOMPAT_PRIMARY;
	cd_layout(&sb);
	cd_sb_encode(&sb, buf);
	assert_int_equal(cd_sb_decode(buf, &out, &why), -EUCLEAN);
	/* An unterminated identity is damage. */
	sb.incompat |= CD_FEATURE_INCOMPAT_PRIMARY;
	cd_layout(&sb);
	cd_sb_encode(&sb, buf);
	memset(buf + 3840, 'x', CD_MIRROR_ID_MAX);
	cd_put_le32(buf + CD_SB_CRC_OFFSET, cd_crc32c(0, buf, CD_SB_CRC_OFFSET));
	assert_int_equal(cd_sb_decode(buf, &out, &why), -EUCLEAN);
}

static void test_superblock_damage_classes(void **state)
{
	struct cd_superblock a, b;
	uint8_t buf[CD_SB_SIZE], bad[CD_SB_SIZE];
	const char *why;

	(void)state;
	sample_sb(&a);
	cd_sb_encode(&a, buf);
	/* Any flipped bit fails the checksum. */
	for (size_t bit = 64; bit < CD_SB_SIZE * 8; bit += 997) {
		memcpy(bad, buf, sizeof(bad));
		bad[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		assert_int_equal(cd_sb_decode(bad, &b, &why), -EUCLEAN);
	}
	memcpy(bad, buf, sizeof(bad));
	bad[0] = 'X';
	assert_int_equal(cd_sb_decode(bad, &b, &why), -ENOMSG);
	/* Unknown incompatible feature, properly signed: refused. */
	a.incompat = 1ull << 63;
	cd_sb_encode(&a, bad);
	assert_int_equal(cd_sb_decode(bad, &b, &why), -EPROTONOSUPPORT);
	a.incompat = 0;
	/* Signed but inconsistent layout: damage. */
	a.data_offset += 4096;
	cd_sb_encode(&a, bad);
	assert_int_equal(cd_sb_decode(bad, &b, &why), -EUCLEAN);
	/* Unterminated string field (offset 1536, 1024 bytes), signed. */
	sample_sb(&a);
	cd_sb_encode(&a, bad);
	memset(bad + 1536, 'm', 1024);
	cd_put_le32(bad + CD_SB_CRC_OFFSET, cd_crc32c(0, bad, CD_SB_CRC_OFFSET));
	assert_int_equal(cd_sb_decode(bad, &b, &why), -EUCLEAN);
	assert_string_equal(why, "unterminated string field");
}

static void test_layout_of_large_disks(void **state)
{
	struct cd_superblock sb;

	(void)state;
	sample_sb(&sb);
	/* 1 TiB at 4 KiB: 2^28 blocks, 8192 pages per bitmap. */
	assert_int_equal(cd_bitmap_pages(sb.size / sb.block_size), 8192);
	assert_int_equal(sb.cp_size, 16384 * 8 + 16384ull * 4096);
	assert_int_equal(sb.data_offset % (1 << 20), 0);
	assert_true(sb.data_offset > sb.cp_offset[1] + sb.cp_size - 1);
	sb.block_size = 1 << 20;
	sb.size = 3 << 20;
	cd_layout(&sb);
	assert_int_equal(sb.data_offset % (1 << 20), 0);
}

struct uri_case {
	const char *text;
	int result;
	int scheme;
};

static void test_uri_forms(void **state)
{
	static const struct uri_case cases[] = {
		{ "/dev/sdb", 0, CD_SCHEME_FILE },
		{ "relative.img", 0, CD_SCHEME_FILE },
		{ "file:///a/b", 0, CD_SCHEME_FILE },
		{ "file://a/b", -EINVAL, 0 },
		{ "iscsi://h/iqn.2001-04.com.example:x/3", 0, CD_SCHEME_ISCSI },
		{ "iscsi://u@h:3260/iqn.x/0", 0, CD_SCHEME_ISCSI },
		{ "iscsi://u%p@h/iqn.x/0", -EINVAL, 0 },
		{ "iscsi://h/iqn.x", -EINVAL, 0 },
		{ "iscsi://h/iqn.x/-1", -EINVAL, 0 },
		{ "rbd:p/i", 0, CD_SCHEME_RBD },
		{ "rbd:p/n/i@s", 0, CD_SCHEME_RBD },
		{ "rbd:p", -EINVAL, 0 },
		{ "rbd:/i", -EINVAL, 0 },
		{ "nbd://h", 0, CD_SCHEME_NBD },
		{ "nbd://[::1]:10809/e", 0, CD_SCHEME_NBD },
		{ "nbd://[::1/e", -EINVAL, 0 },
		{ "nbds://h/e", 0, CD_SCHEME_NBDS },
		{ "nbd+unix:///e?socket=/s", 0, CD_SCHEME_NBD_UNIX },
		{ "nbd+unix:///e", -EINVAL, 0 },
		{ "http://h/x", 0, CD_SCHEME_HTTP },
		{ "https://h:8443/x?y=1", 0, CD_SCHEME_HTTPS },
		{ "http://h", -EINVAL, 0 },
		{ "s3://bucket", 0, CD_SCHEME_S3 },
		{ "s3://bucket/a/b", 0, CD_SCHEME_S3 },
		{ "s3://BU", -EINVAL, 0 },
		{ "gopher://x", -EINVAL, 0 },
		{ "", -EINVAL, 0 },
	};
	struct cdisk_ctx ctx = { 0 };

	(void)state;
	for (size_t i = 0; i < CD_ARRAY_SIZE(cases); i++) {
		struct cd_uri u;
		int r = cd_uri_parse(&ctx, cases[i].text, &u);

		if (r != cases[i].result)
			fail_msg("'%s': got %d, want %d (%s)", cases[i].text, r,
				 cases[i].result, cd_errbuf());
		if (r == 0) {
			assert_int_equal(u.scheme, cases[i].scheme);
			cd_uri_clear(&u);
		} else {
			assert_non_null(strstr(cd_errbuf(), "invalid URI"));
		}
	}
}

static void test_uri_fields(void **state)
{
	struct cdisk_ctx ctx = { 0 };
	struct cd_uri u;

	(void)state;
	assert_int_equal(cd_uri_parse(&ctx, "iscsi://admin@10.1.2.3:3261/iqn.a:b/7", &u), 0);
	assert_string_equal(u.user, "admin");
	assert_string_equal(u.host, "10.1.2.3");
	assert_int_equal(u.port, 3261);
	assert_string_equal(u.target, "iqn.a:b");
	assert_int_equal(u.lun, 7);
	cd_uri_clear(&u);
	assert_int_equal(cd_uri_parse(&ctx, "rbd:pool/ns/img@snap", &u), 0);
	assert_string_equal(u.pool, "pool");
	assert_string_equal(u.ns, "ns");
	assert_string_equal(u.target, "img");
	assert_string_equal(u.snap, "snap");
	cd_uri_clear(&u);
}

static void test_sizes(void **state)
{
	uint64_t v;
	char buf[32];

	(void)state;
	assert_int_equal(cd_parse_size("4096", &v), 0);
	assert_int_equal(v, 4096);
	assert_int_equal(cd_parse_size("1G", &v), 0);
	assert_int_equal(v, 1ull << 30);
	assert_int_equal(cd_parse_size("1.5MiB", &v), 0);
	assert_int_equal(v, 3ull << 19);
	assert_int_equal(cd_parse_size("2k", &v), 0);
	assert_int_equal(v, 2048);
	assert_int_equal(cd_parse_size("-1", &v), -EINVAL);
	assert_int_equal(cd_parse_size("1.3", &v), -EINVAL);
	assert_int_equal(cd_parse_size("1X", &v), -EINVAL);
	assert_int_equal(cd_parse_size("1GG", &v), -EINVAL);
	assert_int_equal(cd_parse_size("20E", &v), -ERANGE);
	assert_string_equal(cd_format_size(1536, buf, sizeof(buf)), "1.5 KiB");
	assert_string_equal(cd_format_size(1ull << 40, buf, sizeof(buf)), "1 TiB");
	assert_string_equal(cd_format_size(12, buf, sizeof(buf)), "12 B");
}

static void test_exit_codes(void **state)
{
	(void)state;
	assert_int_equal(cd_exit_code(0), CDISK_EXIT_OK);
	assert_int_equal(cd_exit_code(-EINVAL), CDISK_EXIT_USAGE);
	assert_int_equal(cd_exit_code(-ECONNREFUSED), CDISK_EXIT_UNREACHABLE);
	assert_int_equal(cd_exit_code(-EBUSY), CDISK_EXIT_BUSY);
	assert_int_equal(cd_exit_code(-EACCES), CDISK_EXIT_PERMISSION);
	assert_int_equal(cd_exit_code(-ENOENT), CDISK_EXIT_NOT_FOUND);
	assert_int_equal(cd_exit_code(-EUCLEAN), CDISK_EXIT_CORRUPT);
	assert_int_equal(cd_exit_code(-ENOMSG), CDISK_EXIT_CORRUPT);
	assert_int_equal(cd_exit_code(-ETIMEDOUT), CDISK_EXIT_TRY_LATER);
	assert_int_equal(cd_exit_code(-EIO), CDISK_EXIT_FAILURE);
	assert_string_equal(cd_exit_name(CDISK_EXIT_BUSY), "busy");
	assert_string_equal(cd_exit_name(99), "unknown");
}

static void test_probe_thresholds(void **state)
{
	double v;

	(void)state;
	assert_int_equal(cd_parse_limit("none", 100, &v), 0);
	assert_true(v < 0);
	assert_int_equal(cd_parse_limit("12.5", 100, &v), 0);
	assert_true(v == 12.5);
	assert_int_equal(cd_parse_limit("0", 100, &v), 0);
	assert_true(v == 0);
	assert_int_equal(cd_parse_limit("150", 100, &v), -ERANGE);
	assert_int_equal(cd_parse_limit("-1", 100, &v), -EINVAL);
	assert_int_equal(cd_parse_limit("fast", 100, &v), -EINVAL);
	assert_int_equal(cd_parse_limit("5ms", 100, &v), -EINVAL);
	assert_int_equal(cd_parse_limit("nan", 100, &v), -EINVAL);
	assert_int_equal(cd_parse_limit("", 100, &v), -EINVAL);
	assert_int_equal(cd_parse_ceph_health("ok"), 0);
	assert_int_equal(cd_parse_ceph_health("warn"), 1);
	assert_int_equal(cd_parse_ceph_health("err"), 2);
	assert_int_equal(cd_parse_ceph_health("WARN"), -EINVAL);
	assert_int_equal(cd_parse_ceph_health(""), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_crc32c_known_values),
		cmocka_unit_test(test_superblock_roundtrip),
		cmocka_unit_test(test_superblock_damage_classes),
		cmocka_unit_test(test_superblock_bitmaps),
		cmocka_unit_test(test_superblock_primary),
		cmocka_unit_test(test_superblock_fenced),
		cmocka_unit_test(test_superblock_restore),
		cmocka_unit_test(test_layout_of_large_disks),
		cmocka_unit_test(test_uri_forms),
		cmocka_unit_test(test_uri_fields),
		cmocka_unit_test(test_sizes),
		cmocka_unit_test(test_probe_thresholds),
		cmocka_unit_test(test_exit_codes),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

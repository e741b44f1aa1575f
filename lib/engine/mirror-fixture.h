/* Test-only: the fixture the mirror's unit tests share (mirror-test.c,
 * verify-test.c): a folder of its own, a disk of SIZE bytes in blocks of
 * BS over a patterned base file, and writes of a pattern.  The includer
 * defines SIZE first, and FIXTURE_DIR, the mkdtemp template. */
#ifndef CDISK_MIRROR_FIXTURE_H
#define CDISK_MIRROR_FIXTURE_H

#define BS 4096u

struct fixture {
	char dir[64];
	char disk[128];
	char base[128];
	char mirror[128];
	struct cdisk_ctx *ctx;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	strcpy(f->dir, FIXTURE_DIR);
	if (!mkdtemp(f->dir))
		return -1;
	snprintf(f->disk, sizeof(f->disk), "%s/d.cdisk", f->dir);
	snprintf(f->base, sizeof(f->base), "%s/base.img", f->dir);
	snprintf(f->mirror, sizeof(f->mirror), "%s/mirror.img", f->dir);
	f->ctx = cdisk_ctx_new();
	f->ctx->cfg.backup_dir[0] = 0;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	char cmd[160];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
	system(cmd);
	cdisk_ctx_free(f->ctx);
	free(f);
	return 0;
}

static void make_file(const char *path, uint64_t size, uint64_t seed)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	uint8_t *buf = malloc(size);

	if (seed)
		pattern_fill(buf, size, 0, seed);
	else
		memset(buf, 0, size);
	assert_int_equal(cd_pwrite_full(fd, buf, size, 0), 0);
	close(fd);
	free(buf);
}

static struct cdisk *create_open(struct fixture *f)
{
	struct cdisk_create_opts o = { .size = SIZE, .block_size = BS, .base = f->base };
	struct cdisk *d;

	make_file(f->base, SIZE, 1);
	assert_int_equal(cdisk_create(f->ctx, f->disk, &o), 0);
	assert_int_equal(cdisk_open(f->ctx, f->disk, 0, &d), 0);
	return d;
}

static void write_at(struct cdisk *d, uint64_t off, size_t len, uint64_t seed)
{
	uint8_t *buf = malloc(len);

	pattern_fill(buf, len, off, seed);
	assert_int_equal(cdisk_pwrite(d, buf, len, off), 0);
	free(buf);
}

#endif

/* cdisk-io: drive libcdisk from test scripts.  Not installed.
 *
 *   cdisk-io DISK OP...
 *     w:OFF:LEN:SEED   write a pattern        r:OFF:LEN:SEED  verify a pattern
 *     z:OFF:LEN        write zeroes           d:OFF:LEN       discard
 *     f                flush                  hold:SECONDS    sleep holding the disk
 *     clean:OFF:LEN    mark blocks clean (as a sync would)
 *     touch:PATH       create PATH (tells a test we got this far)
 *     dump:PATH        write what the whole disk shows into PATH
 *     check-clean      every block recorded clean equals the base (exit 10
 *                      and the first block that differs when not)
 *
 * Numbers accept K/M/G suffixes.  Exit codes are cdisk's. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "bitmap.h"
#include "cdisk.h"
#include "disk.h"
#include "ops.h"
#include "pattern.h"
#include "target.h"
#include "text.h"
#include "util.h"

static int dump(struct cdisk *d, const char *path)
{
	size_t chunk = 1u << 20;
	uint8_t *buf = malloc(chunk);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644), r = 0;

	if (!buf || fd < 0)
		r = -errno;
	for (uint64_t off = 0; r == 0 && off < d->sb.size; off += chunk) {
		size_t n = d->sb.size - off < chunk ? (size_t)(d->sb.size - off) : chunk;
		r = cdisk_pread(d, buf, n, off);
		if (r == 0)
			r = cd_pwrite_full(fd, buf, n, off);
	}
	if (fd >= 0)
		close(fd);
	free(buf);
	return r;
}

/* The property sync must keep: a block the disk calls clean is on the
 * base as the overlay has it.  Compared in runs of up to 1 MiB. */
static int check_clean(struct cdisk *d)
{
	uint64_t per = (1u << 20) >> d->block_shift ? (1u << 20) >> d->block_shift : 1;
	uint8_t *a = malloc(per << d->block_shift), *b = malloc(per << d->block_shift);
	struct cd_target *base = NULL;
	int r = cd_target_open(d->ctx, d->sb.base, true, &base);

	for (uint64_t blk = 0; r == 0 && blk < d->nblocks;) {
		uint64_t n = 0;

		while (blk + n < d->nblocks && n < per && cd_bitmap_get(&d->present, blk + n) &&
		       !cd_bitmap_get(&d->dirty, blk + n))
			n++;
		if (n == 0) {
			blk++;
			continue;
		}
		r = cdisk_pread(d, a, n << d->block_shift, blk << d->block_shift);
		if (r == 0)
			r = cd_target_pread(base, b, n << d->block_shift, blk << d->block_shift);
		for (uint64_t i = 0; r == 0 && i < n; i++)
			if (memcmp(a + (i << d->block_shift), b + (i << d->block_shift),
				   d->block_size) != 0) {
				fprintf(stderr, "cdisk-io: block %llu is recorded clean but the "
					"base differs\n", (unsigned long long)(blk + i));
				r = -EILSEQ;
			}
		blk += n;
	}
	if (base)
		cd_target_close(base);
	free(a);
	free(b);
	return r;
}

static int run_op(struct cdisk *d, const char *op)
{
	uint64_t v[3];
	void *buf = NULL;
	int r;

	if (strcmp(op, "f") == 0)
		return cdisk_flush(d);
	if (strncmp(op, "touch:", 6) == 0) {
		FILE *f = fopen(op + 6, "w");
		return f && fclose(f) == 0 ? 0 : -errno;
	}
	if (strncmp(op, "dump:", 5) == 0)
		return dump(d, op + 5);
	if (strcmp(op, "check-clean") == 0)
		return check_clean(d);
	if (strncmp(op, "hold:", 5) == 0) {
		sleep((unsigned)atoi(op + 5));
		return 0;
	}
	if ((op[0] == 'w' || op[0] == 'r') && op[1] == ':') {
		if (op_numbers(op, v, 3) < 0 || !(buf = malloc(v[1] ? v[1] : 1)))
			return -EINVAL;
		if (op[0] == 'w') {
			pattern_fill(buf, v[1], v[0], v[2]);
			r = cdisk_pwrite(d, buf, v[1], v[0]);
		} else {
			r = cdisk_pread(d, buf, v[1], v[0]);
			if (r == 0 && !pattern_check(buf, v[1], v[0], v[2])) {
				fprintf(stderr, "cdisk-io: %s: content differs\n", op);
				r = -EILSEQ;
			}
		}
		free(buf);
		return r;
	}
	if ((op[0] == 'z' || op[0] == 'd') && op[1] == ':') {
		if (op_numbers(op, v, 2) < 0)
			return -EINVAL;
		return op[0] == 'z' ? cdisk_write_zeroes(d, v[1], v[0]) :
				      cdisk_discard(d, v[1], v[0]);
	}
	if (strncmp(op, "clean:", 6) == 0) {
		if (op_numbers(op, v, 2) < 0)
			return -EINVAL;
		return cd_mark_clean(d, v[0] / d->block_size, v[1] / d->block_size);
	}
	return -EINVAL;
}

static void log_stderr(void *opaque, enum cdisk_log_level level, const char *msg)
{
	(void)opaque;
	if (level <= CDISK_LOG_WARNING)
		fprintf(stderr, "cdisk-io: %s\n", msg);
}

int main(int argc, char **argv)
{
	struct cdisk_ctx *ctx = cdisk_ctx_new();

	cdisk_ctx_set_log(ctx, log_stderr, NULL);
	if (cdisk_ctx_load_config(ctx, NULL) < 0) {
		fprintf(stderr, "%s\n", cdisk_ctx_error(ctx));
		return 2;
	}
	struct cdisk *d = NULL;
	int r;

	if (argc < 2) {
		fprintf(stderr, "usage: cdisk-io DISK OP...\n");
		return CDISK_EXIT_USAGE;
	}
	r = cdisk_open(ctx, argv[1], 0, &d);
	if (r < 0)
		d = NULL;
	for (int i = 2; r == 0 && i < argc; i++) {
		r = run_op(d, argv[i]);
		if (r == -EINVAL && !cdisk_ctx_error(ctx)[0])
			fprintf(stderr, "cdisk-io: bad operation '%s'\n", argv[i]);
	}
	if (d) {
		int closed = cdisk_close(d);
		if (r == 0)
			r = closed;
	}
	if (r < 0 && r != -EILSEQ && cdisk_ctx_error(ctx)[0])
		fprintf(stderr, "cdisk-io: %s\n", cdisk_ctx_error(ctx));
	cdisk_ctx_free(ctx);
	return r == -EILSEQ ? 10 : cd_exit_code(r);
}

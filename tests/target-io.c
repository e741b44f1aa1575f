/* target-io: drive one libcdisk target from test and bench scripts.
 * Not installed.
 *
 *   target-io [-d DEPTH] [-w] URI OP...
 *     info               one JSON line: size and capabilities
 *     identity           one line: what storage this is (cd_target_identity)
 *     create:SIZE        make a new store (file, rbd, s3) and stop
 *     w:OFF:LEN:SEED     write a pattern      r:OFF:LEN:SEED  verify it
 *     z:OFF:LEN          write zeroes         d:OFF:LEN       discard
 *     f                  flush
 *     sleep:SECONDS      wait, holding the target open
 *     put:FILE           copy FILE into the target from offset 0
 *     get:FILE           copy the whole target into FILE
 *     bench-read:LEN:BS  read LEN bytes in BS pieces; prints MiB/s
 *     bench-write:LEN:BS write LEN bytes in BS pieces; prints MiB/s
 *
 * -d runs large operations on DEPTH threads at once (the queue depth);
 * -w opens the target for writing.  Offsets and sizes may be odd;
 * numbers accept K/M/G.  Exit codes are cdisk's; a pattern that does not
 * verify exits 10 and names the first byte that differs. */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "cdisk.h"
#include "ctx.h"
#include "ops.h"
#include "pattern.h"
#include "target.h"
#include "text.h"
#include "util.h"

#define PIECE (1u << 20)
#define MISMATCH (-EILSEQ)

static unsigned depth = 1;

struct job {
	char error_msg[CD_ERROR_MAX];   /* the failing worker's, for main */
	struct cd_target *t;
	int (*fn)(struct job *j, uint64_t off, size_t len, uint8_t *buf);
	uint64_t start, len, next;
	size_t piece;
	uint64_t seed;
	int fd;
	int result;
	int64_t bad_byte;
	pthread_mutex_t lock;
};

static void *worker(void *opaque)
{
	struct job *j = opaque;
	uint8_t *buf = malloc(j->piece);

	if (buf)
		pattern_fill_any(buf, j->piece, 0, 99);   /* never all zeros */

	for (;;) {
		uint64_t off;
		size_t n;
		int r;

		pthread_mutex_lock(&j->lock);
		off = j->next;
		if (j->result < 0 || off >= j->start + j->len) {
			pthread_mutex_unlock(&j->lock);
			break;
		}
		n = j->start + j->len - off < j->piece ? (size_t)(j->start + j->len - off)
						       : j->piece;
		j->next += n;
		pthread_mutex_unlock(&j->lock);
		r = buf ? j->fn(j, off, n, buf) : -ENOMEM;
		if (r < 0) {
			pthread_mutex_lock(&j->lock);
			if (j->result == 0) {
				j->result = r;
				memcpy(j->error_msg, cd_errbuf(), sizeof(j->error_msg));
			}
			pthread_mutex_unlock(&j->lock);
		}
	}
	free(buf);
	return NULL;
}

/* Run j->fn over [start, start + len) in pieces on depth threads. */
static int run_job(struct job *j)
{
	pthread_t th[256];
	unsigned n = depth < 256 ? depth : 256;

	j->next = j->start;
	j->bad_byte = -1;
	pthread_mutex_init(&j->lock, NULL);
	for (unsigned i = 0; i < n; i++)
		pthread_create(&th[i], NULL, worker, j);
	for (unsigned i = 0; i < n; i++)
		pthread_join(th[i], NULL);
	pthread_mutex_destroy(&j->lock);
	if (j->result < 0)
		cd_error(j->t->ctx, j->result, "%s", j->error_msg);
	return j->result;
}

static int do_write(struct job *j, uint64_t off, size_t len, uint8_t *buf)
{
	pattern_fill_any(buf, len, off, j->seed);
	return cd_target_pwrite(j->t, buf, len, off);
}

static int do_verify(struct job *j, uint64_t off, size_t len, uint8_t *buf)
{
	int r = cd_target_pread(j->t, buf, len, off);
	int64_t bad;

	if (r < 0)
		return r;
	bad = pattern_find_any(buf, len, off, j->seed);
	if (bad < 0)
		return 0;
	pthread_mutex_lock(&j->lock);
	if (j->bad_byte < 0 || bad < j->bad_byte)
		j->bad_byte = bad;
	pthread_mutex_unlock(&j->lock);
	return MISMATCH;
}

/* Benchmarks: the data is whatever the buffer holds; making a pattern
 * for every request would measure the pattern, not the target. */
static int do_bench_write(struct job *j, uint64_t off, size_t len, uint8_t *buf)
{
	return cd_target_pwrite(j->t, buf, len, off);
}

static int do_read(struct job *j, uint64_t off, size_t len, uint8_t *buf)
{
	return cd_target_pread(j->t, buf, len, off);
}

static int do_put(struct job *j, uint64_t off, size_t len, uint8_t *buf)
{
	int r = cd_pread_full(j->fd, buf, len, off);

	return r < 0 ? r : cd_target_pwrite(j->t, buf, len, off);
}

static int do_get(struct job *j, uint64_t off, size_t len, uint8_t *buf)
{
	int r = cd_target_pread(j->t, buf, len, off);

	return r < 0 ? r : cd_pwrite_full(j->fd, buf, len, off);
}

static double seconds_since(const struct timespec *a)
{
	struct timespec b;

	clock_gettime(CLOCK_MONOTONIC, &b);
	return (double)(b.tv_sec - a->tv_sec) + (double)(b.tv_nsec - a->tv_nsec) / 1e9;
}

static int print_info(struct cd_target *t)
{
	printf("{\"size\": %llu, \"readonly\": %s, \"flush\": %s, \"zero\": %s, "
	       "\"trim\": %s, \"align\": %u}\n", (unsigned long long)t->size,
	       t->readonly ? "true" : "false", t->can_flush ? "true" : "false",
	       t->can_zero ? "true" : "false", t->can_trim ? "true" : "false", t->align);
	return 0;
}

static int print_identity(struct cd_target *t)
{
	char id[512];
	int r = cd_target_identity(t, id, sizeof(id));

	if (r == 0)
		printf("%s\n", id);
	return r;
}

static int copy_file(struct cd_target *t, const char *op, bool in)
{
	const char *path = strchr(op, ':') + 1;
	struct job j = { .t = t, .piece = PIECE, .fn = in ? do_put : do_get };
	int r;

	j.fd = open(path, in ? O_RDONLY : O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (j.fd < 0)
		return cd_error(t->ctx, -errno, "cannot open '%s': %s", path, strerror(errno));
	if (in) {
		off_t end = lseek(j.fd, 0, SEEK_END);
		j.len = end > 0 ? (uint64_t)end : 0;
	} else {
		j.len = t->size;
	}
	r = run_job(&j);
	if (r == 0 && in)
		r = cd_target_flush(t);
	if (r == 0 && !in && fsync(j.fd) < 0)
		r = -errno;
	close(j.fd);
	return r;
}

static int bench(struct cd_target *t, const char *op, bool write)
{
	uint64_t v[2];
	struct job j = { .t = t, .fn = write ? do_bench_write : do_read, .seed = 7 };
	struct timespec start;
	double secs;
	int r;

	if (op_numbers(op, v, 2) < 0 || v[1] == 0 || v[1] > (64u << 20))
		return -EINVAL;
	j.len = v[0] < t->size ? v[0] : t->size;
	j.piece = (size_t)v[1];
	clock_gettime(CLOCK_MONOTONIC, &start);
	r = run_job(&j);
	secs = seconds_since(&start);   /* as qemu-img bench and rbd bench: no flush */
	if (r == 0)
		printf("%.1f\n", (double)j.len / (1 << 20) / secs);
	return r;
}

static int run_op(struct cdisk_ctx *ctx, struct cd_target *t, const char *op)
{
	uint64_t v[3];
	struct job j = { .t = t, .piece = PIECE };
	int r;

	if (!strcmp(op, "info"))
		return print_info(t);
	if (!strcmp(op, "identity"))
		return print_identity(t);
	if (!strcmp(op, "f"))
		return cd_target_flush(t);
	if (!strncmp(op, "sleep:", 6))
		return sleep((unsigned)atoi(op + 6)) ? -EINTR : 0;
	if (!strncmp(op, "put:", 4) || !strncmp(op, "get:", 4))
		return copy_file(t, op, op[0] == 'p');
	if (!strncmp(op, "bench-read:", 11) || !strncmp(op, "bench-write:", 12))
		return bench(t, op, op[6] == 'w');
	if ((op[0] == 'w' || op[0] == 'r') && op[1] == ':') {
		if (op_numbers(op, v, 3) < 0)
			return cd_error(ctx, -EINVAL, "bad operation '%s'", op);
		j.start = v[0];
		j.len = v[1];
		j.seed = v[2];
		j.fn = op[0] == 'w' ? do_write : do_verify;
		r = run_job(&j);
		if (r == MISMATCH)
			fprintf(stderr, "target-io: byte %lld differs from pattern %llu\n",
				(long long)j.bad_byte, (unsigned long long)j.seed);
		return r;
	}
	if ((op[0] == 'z' || op[0] == 'd') && op[1] == ':') {
		if (op_numbers(op, v, 2) < 0)
			return cd_error(ctx, -EINVAL, "bad operation '%s'", op);
		return op[0] == 'z' ? cd_target_zero(t, (size_t)v[1], v[0])
				    : cd_target_trim(t, (size_t)v[1], v[0]);
	}
	return cd_error(ctx, -EINVAL, "unknown operation '%s'", op);
}

static void log_stderr(void *opaque, enum cdisk_log_level level, const char *msg)
{
	(void)opaque;
	if (level <= CDISK_LOG_INFO || getenv("TARGET_IO_DEBUG"))
		fprintf(stderr, "target-io: %s\n", msg);
}

int main(int argc, char **argv)
{
	struct cdisk_ctx *ctx = cdisk_ctx_new();
	struct cd_target *t = NULL;
	bool writable = false;
	int opt, r;

	while ((opt = getopt(argc, argv, "d:w")) != -1) {
		if (opt == 'd')
			depth = (unsigned)atoi(optarg);
		else if (opt == 'w')
			writable = true;
		else
			return 2;
	}
	if (optind + 2 > argc || depth < 1 || !ctx) {
		fprintf(stderr, "usage: target-io [-d DEPTH] [-w] URI OP...\n");
		return 2;
	}
	cdisk_ctx_set_log(ctx, log_stderr, NULL);
	r = cdisk_ctx_load_config(ctx, NULL);
	if (r == 0 && !strncmp(argv[optind + 1], "create:", 7)) {
		uint64_t size;
		r = cd_parse_size(argv[optind + 1] + 7, &size);
		r = r < 0 ? cd_error(ctx, r, "bad size") : cd_target_create(ctx, argv[optind], size);
		goto out;
	}
	if (r == 0)
		r = cd_target_open(ctx, argv[optind], !writable, &t);
	for (int i = optind + 1; r == 0 && i < argc; i++)
		r = run_op(ctx, t, argv[i]);
	cd_target_close(t);
out:
	if (r < 0 && r != MISMATCH)
		fprintf(stderr, "target-io: %s\n", cdisk_ctx_error(ctx));
	cdisk_ctx_free(ctx);
	return r == MISMATCH ? 10 : cd_exit_code(r);
}

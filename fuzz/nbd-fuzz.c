/* libFuzzer target: whatever bytes a client sends, from the first byte of
 * the handshake through requests, against a real export.  The server must
 * answer or close, never crash, leak or hang. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server.h"

static struct cdisk_server *srv;

static void *drain(void *arg)
{
	int fd = *(int *)arg;
	char buf[65536];

	while (read(fd, buf, sizeof(buf)) > 0)
		;
	return NULL;
}

static void setup(void)
{
	struct cdisk_ctx *ctx = cdisk_ctx_new();
	struct cdisk_create_opts o = { .size = 1 << 20, .block_size = 512 };
	char dir[] = "/tmp/cdisk-fuzz-XXXXXX", path[64];

	if (!mkdtemp(dir))
		abort();
	snprintf(path, sizeof(path), "%s/f.cdisk", dir);
	snprintf(ctx->cfg.backup_dir, sizeof(ctx->cfg.backup_dir), "%s/meta", dir);
	if (cdisk_create(ctx, path, &o) < 0 || cdisk_server_new(ctx, &srv) < 0 ||
	    cdisk_server_add_export(srv, "f", path, false) < 0)
		abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Set up once, outside any input, so nothing of it counts as a leak. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	setup();
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int sv[2];
	pthread_t t;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return 0;
	pthread_create(&t, NULL, drain, &sv[0]);
	/* Everything the client says, then it stops talking. */
	for (size_t done = 0; done < size;) {
		ssize_t n = write(sv[0], data + done, size - done);
		if (n <= 0)
			break;
		done += (size_t)n;
	}
	shutdown(sv[0], SHUT_WR);
	cd_server_serve_fd(srv, sv[1]);
	pthread_join(t, NULL);
	close(sv[0]);
	return 0;
}

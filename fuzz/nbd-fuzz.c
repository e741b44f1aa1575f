/* libFuzzer target: whatever bytes a client sends, from the first byte of
 * the handshake through requests, against a real export.  The server must
 * answer or close, never crash, leak or hang. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cdisk.h"
#include "common.h"

static struct cdisk_server *srv;

static void *drain(void *arg)
{
	int fd = *(int *)arg;
	char buf[65536];

	while (read(fd, buf, sizeof(buf)) > 0)
		;
	return NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	srv = fuzz_server("f", 512);
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

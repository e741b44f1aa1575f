/* patfile: write or check a test pattern in a plain file (a base).
 * Not installed.
 *   patfile FILE w|r OFFSET LENGTH SEED     (exit 0 ok, 10 differs) */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "cdisk.h"
#include "pattern.h"
#include "text.h"
#include "util.h"

int main(int argc, char **argv)
{
	uint64_t off, len, seed;
	uint8_t *buf;
	int fd, r = 0;

	if (argc != 6 || cd_parse_size(argv[3], &off) < 0 ||
	    cd_parse_size(argv[4], &len) < 0 || cd_parse_size(argv[5], &seed) < 0 ||
	    (argv[2][0] != 'w' && argv[2][0] != 'r') || off % 8 || len % 8) {
		fprintf(stderr, "usage: patfile FILE w|r OFFSET LENGTH SEED\n");
		return 2;
	}
	fd = open(argv[1], argv[2][0] == 'w' ? O_RDWR | O_CREAT : O_RDONLY, 0644);
	buf = malloc(1 << 20);
	if (fd < 0 || !buf) {
		perror("patfile");
		return 1;
	}
	for (uint64_t done = 0; done < len && r == 0;) {
		size_t n = len - done < (1u << 20) ? (size_t)(len - done) : (1u << 20);
		if (argv[2][0] == 'w') {
			pattern_fill(buf, n, off + done, seed);
			r = cd_pwrite_full(fd, buf, n, off + done) < 0 ? 1 : 0;
		} else {
			r = cd_pread_full(fd, buf, n, off + done) < 0 ? 1 :
			    pattern_check(buf, n, off + done, seed) ? 0 : 10;
		}
		done += n;
	}
	if (r == 1)
		perror("patfile");
	free(buf);
	close(fd);
	return r;
}

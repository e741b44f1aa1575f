/* sbpatch: set a field of a cdisk superblock and re-sign its CRC, so tests
 * can make disks with unknown features or odd values that still pass the
 * checksum.  Not installed.
 *
 *   sbpatch FILE SLOT OFFSET WIDTH VALUE     (SLOT 0 = A, 1 = B; WIDTH 1/4/8) */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "cdisk.h"
#include "format.h"
#include "util.h"

int main(int argc, char **argv)
{
	uint8_t sb[CD_SB_SIZE];
	int fd, slot, width;
	unsigned long off;
	uint64_t value;

	if (argc != 6) {
		fprintf(stderr, "usage: sbpatch FILE SLOT OFFSET WIDTH VALUE\n");
		return 2;
	}
	slot = atoi(argv[2]);
	off = strtoul(argv[3], NULL, 0);
	width = atoi(argv[4]);
	value = strtoull(argv[5], NULL, 0);
	if ((slot != 0 && slot != 1) || off + (unsigned)width > CD_SB_CRC_OFFSET ||
	    (width != 1 && width != 4 && width != 8)) {
		fprintf(stderr, "sbpatch: bad arguments\n");
		return 2;
	}
	fd = open(argv[1], O_RDWR);
	if (fd < 0 || cd_pread_full(fd, sb, sizeof(sb), (uint64_t)slot * CD_SB_SIZE) < 0) {
		perror("sbpatch");
		return 1;
	}
	if (width == 1)
		sb[off] = (uint8_t)value;
	else if (width == 4)
		cd_put_le32(sb + off, (uint32_t)value);
	else
		cd_put_le64(sb + off, value);
	cd_put_le32(sb + CD_SB_CRC_OFFSET, cd_crc32c(0, sb, CD_SB_CRC_OFFSET));
	if (cd_pwrite_full(fd, sb, sizeof(sb), (uint64_t)slot * CD_SB_SIZE) < 0) {
		perror("sbpatch");
		return 1;
	}
	close(fd);
	return 0;
}

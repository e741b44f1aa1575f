/* libFuzzer target for cdisk's other parsers: the first byte picks one.
 *   0: a URI            1: a superblock (4096 bytes)
 *   2: a control socket request line   3: an S3 manifest
 *   4: an HTTP header line               5: an S3 error body
 *   6: a configuration file             8: a users file
 *   9: a pre-shared key file */
#include <stdio.h>
#include <stdlib.h>

#include "cdisk.h"
#include "common.h"
#include "ctx.h"
#include "format.h"
#include "http.h"
#include "target.h"
#include "uri.h"
#include "users.h"
#include "util.h"

static struct cdisk_server *srv;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	srv = fuzz_server("p", 0);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cdisk_ctx ctx = { 0 };
	char *text;

	if (size < 1)
		return 0;
	text = malloc(size);
	memcpy(text, data + 1, size - 1);
	text[size - 1] = 0;
	switch (data[0] % 10) {
	case 0: {
		struct cd_uri u;
		if (cd_uri_parse(&ctx, text, &u) == 0)
			cd_uri_clear(&u);
		break;
	}
	case 1: {
		uint8_t sb[CD_SB_SIZE] = { 0 };
		struct cd_superblock out;
		const char *why;
		memcpy(sb, data + 1, size - 1 < CD_SB_SIZE ? size - 1 : CD_SB_SIZE);
		/* Half the time with a valid checksum, to get past it. */
		if (size > 1 && data[1] & 1)
			cd_put_le32(sb + CD_SB_CRC_OFFSET, cd_crc32c(0, sb, CD_SB_CRC_OFFSET));
		cd_sb_decode(sb, &out, &why);
		break;
	}
	case 2:
		free(cd_control_answer(srv, text));
		break;
	case 3: {
		uint64_t disk_size;
		uint32_t chunk;
		cd_s3_parse_manifest(&ctx, "s3://b/p", (const char *)data + 1, size - 1,
				     &disk_size, &chunk);
		break;
	}
	case 4: {
		struct cd_http_reply reply = { 0 };
		cd_http_parse_header((const char *)data + 1, size - 1, &reply);
		break;
	}
	case 6:
		cd_config_parse_text(&ctx, text);
		break;
	case 7: {
		uint64_t seq, snaps[16];
		uint32_t count;
		cd_rbd_parse_snap_context(data + 1, size - 1, &seq, snaps, 16, &count);
		break;
	}
	case 8: {
		struct cd_users *users;
		if (cd_users_parse_text(&ctx, text, &users) == 0) {
			for (size_t i = 0; i < users->n; i++)
				cd_user_may_open(&users->v[i], "alice/desktop");
			cd_users_free(users);
		}
		break;
	}
	case 9: {
		struct cd_psk *psk;
		if (cd_psk_parse_text(&ctx, (const char *)data + 1, size - 1, &psk) == 0)
			cd_psk_free(psk);
		break;
	}
	default: {
		char code[64];
		cd_s3_error_code(text, code, sizeof(code));
		break;
	}
	}
	free(text);
	return 0;
}

/* Users and pre-shared keys of a multi-user cdisk-serve (users.c). */
#ifndef CDISK_USERS_H
#define CDISK_USERS_H

#include <sys/types.h>

#include "ctx.h"
#include "util.h"

#define CD_USER_NAME_MAX 63
#define CD_EXPORT_NAME_MAX 255
#define CD_PSK_MIN 16
#define CD_PSK_MAX 64

/* 0 in any field: no limit. */
struct cd_user_limits {
	uint64_t iops;
	uint64_t bytes_per_second;
	uint32_t burst_ms;          /* how long a full bucket lasts at the limit */
	uint32_t queue_depth;
	uint32_t connections;
};

struct cd_user {
	char name[CD_USER_NAME_MAX + 1];
	char **exports;             /* names or globs ('*' stops at '/') */
	size_t nexports;
	bool read_only;
	char certificate[256];      /* X.509 common name; empty: none */
	bool has_uid;
	uid_t uid;                  /* peer on the unix socket */
	struct cd_user_limits limits;
	uint64_t quota_size;        /* 0: none */
	uint64_t quota_used;        /* 0: none */
};

struct cd_users {
	struct cd_user *v;
	size_t n;
};

/* The whole file or an error naming its line; *out untouched then. */
int cd_users_load(struct cdisk_ctx *ctx, const char *path, struct cd_users **out);
int cd_users_parse_text(struct cdisk_ctx *ctx, const char *text, struct cd_users **out);
void cd_users_free(struct cd_users *users);
bool cd_user_name_valid(const char *name);
const struct cd_user *cd_users_find(const struct cd_users *users, const char *name);
const struct cd_user *cd_users_by_certificate(const struct cd_users *users,
					      const char *name);
const struct cd_user *cd_users_by_uid(const struct cd_users *users, uid_t uid);
bool cd_user_may_open(const struct cd_user *u, const char *export);

struct cd_psk_entry {
	char name[CD_USER_NAME_MAX + 1];
	uint8_t key[CD_PSK_MAX];
	size_t len;
};

struct cd_psk {
	struct cd_psk_entry *v;
	size_t n;
};

/* A key file as psktool writes it: "name:hexkey" a line, '#' comments. */
int cd_psk_load(struct cdisk_ctx *ctx, const char *path, struct cd_psk **out);
int cd_psk_parse_text(struct cdisk_ctx *ctx, const char *text, size_t len,
		      struct cd_psk **out);
void cd_psk_free(struct cd_psk *psk);
const struct cd_psk_entry *cd_psk_find(const struct cd_psk *psk, const char *name);

#endif

/* Internal: metadata backups (backup.c). */
#ifndef CDISK_BACKUP_H
#define CDISK_BACKUP_H

#include "ctx.h"
#include "format.h"

struct cdisk;

struct cd_backup {
	char path[4096];
	uint64_t seq, jseq, taken;
	uint8_t uuid[16];
	char disk_path[CDISK_MAX_URI + 1];
	uint32_t total, stored;
	struct cd_superblock sb;
	uint8_t *dir;
	uint8_t *pages;
};

struct cd_restore_result {
	bool restored;
	bool exact;                 /* the journal covered everything since */
	bool unconfirmed;           /* forced: nothing proved the backup its own */
	char backup[4096];
	uint64_t backup_age;
	uint64_t records_replayed;
	uint64_t blocks_reconciled;
	uint64_t blocks_marked_dirty;
};

struct cd_backup_status {
	bool configured, valid, same_disk, matches;
	char path[4096];
	int error;
	char why[512];
	uint64_t age, jseq;
};

int cd_backup_path(const struct cd_config *cfg, const struct cd_superblock *sb,
		   char *out, size_t len);
struct cd_backup_image;
/* Under the lock: take a backup to be written once it is let go. */
int cd_backup_write(struct cdisk *d);
/* Take and write one now (open, close, check's repair). */
int cd_backup_write_now(struct cdisk *d);
/* Without the lock: write what cd_backup_write took. */
void cd_backup_store_pending(struct cdisk *d);
void cd_backup_image_free(struct cd_backup_image *img);
int cd_backup_read(struct cdisk_ctx *ctx, const char *path, struct cd_backup *b);
void cd_backup_free(struct cd_backup *b);
int cd_backup_restore(struct cdisk *d, const char *from, bool sb_known, bool force);
int cd_backup_status(struct cdisk *d, struct cd_backup_status *st);
bool cd_backup_exists(struct cdisk *d);

#endif

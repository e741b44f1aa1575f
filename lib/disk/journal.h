/* Internal: the journal, activity log and checkpoints (journal.c). */
#ifndef CDISK_JOURNAL_H
#define CDISK_JOURNAL_H

#include "disk.h"

int cd_journal_replay_after(struct cdisk *d, uint64_t jseq, bool *complete,
			    uint64_t *chain_end);
int cd_al_recover(struct cdisk *d);
int cd_journal_replay(struct cdisk *d);
int cd_journal_commit(struct cdisk *d, bool sync);
int cd_journal_add_run(struct cdisk *d, uint64_t first, uint64_t count,
		       uint32_t op);
int cd_checkpoint(struct cdisk *d);
void cd_al_drain(struct cdisk *d);
int cd_checkpoint_load(struct cdisk *d);
int cd_sb_write(struct cdisk *d);
uint64_t cd_journal_record_max(const struct cdisk *d);
uint64_t cd_cp_dir_uuid_at(uint32_t pages, uint64_t dlen);
int cd_journal_tags(int fd, const struct cd_superblock *sb, uint64_t *tags,
		    unsigned max, unsigned *ntags);
#define CD_JR_MAGIC 0x524a4443u   /* "CDJR" */
#define CD_JR_HEADER 48u
#define CD_JR_ALIGN 4096u
#define CD_AL_CAPACITY 1024u
#define CD_BATCH_PAGES 256u     /* pages per preadv/pwritev (1 MiB) */

#endif

/* Internal: the restore onto a new primary (cdisk-restore --to) and the
 * mirror's engine, which carries it.  The auxiliary is attached in the
 * mirror's place, so the mirror's write path, copy, keeper and crash
 * recovery are the restore's too; restore.c adds the start's checks and
 * what happens once the auxiliary is in sync. */
#ifndef CDISK_RESTORE_H
#define CDISK_RESTORE_H

#include <stdbool.h>
#include <stdint.h>

struct cdisk;

/* engine/mirror.c: attach uri as the mirror or, with restore, as a
 * restore's auxiliary (restore_flags: CD_RESTORE_*; hook: its
 * --on-complete command, or NULL). */
int cd_mirror_attach_as(struct cdisk *d, const char *uri, bool restore,
			uint32_t restore_flags, const char *hook);
/* The keeper, after a copy left nothing out of sync: a restore under way
 * is complete (its switch, its log line, its command). */
void cd_restore_after_copy(struct cdisk *d);

#endif

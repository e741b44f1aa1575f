/* Exports from a file, for cdisk-serve --config:
 *
 *   [export alice]
 *   disk = /var/lib/cdisk/alice.cdisk
 *   read_only = no
 */
#include <stdio.h>
#include <stdlib.h>

#include "server.h"

struct pending {
	char name[256];
	char disk[4096];
	bool read_only;
	int line;
};

struct parse_state {
	struct pending *list;
	size_t n;
	char bad[200];
};

static int on_entry(void *user, const char *section, const char *key,
		    const char *value)
{
	struct parse_state *st = user;
	struct pending *p;

	if (strncmp(section, "export ", 7) != 0 || !section[7]) {
		snprintf(st->bad, sizeof(st->bad), "sections are [export NAME], not [%.60s]",
			 section);
		return 0;
	}
	if (!st->n || strcmp(st->list[st->n - 1].name, section + 7) != 0) {
		p = realloc(st->list, (st->n + 1) * sizeof(*p));
		if (!p) {
			snprintf(st->bad, sizeof(st->bad), "out of memory");
			return 0;
		}
		st->list = p;
		p = &st->list[st->n++];
		memset(p, 0, sizeof(*p));
		snprintf(p->name, sizeof(p->name), "%s", section + 7);
	}
	p = &st->list[st->n - 1];
	if (!strcmp(key, "disk")) {
		snprintf(p->disk, sizeof(p->disk), "%s", value);
	} else if (!strcmp(key, "read_only")) {
		if (!cd_parse_bool(value, &p->read_only)) {
			snprintf(st->bad, sizeof(st->bad), "read_only must be yes or no");
			return 0;
		}
	} else {
		snprintf(st->bad, sizeof(st->bad), "unknown key '%.60s'", key);
		return 0;
	}
	return 1;
}

int cdisk_server_load_exports(struct cdisk_server *s, const char *path, bool read_only)
{
	struct parse_state st = { 0 };
	int r = cd_ini_load(s->ctx, "", path, on_entry, &st, st.bad);

	if (r == 0 && st.n == 0)
		r = cd_error(s->ctx, -EINVAL, "'%s' defines no [export NAME] section", path);
	for (size_t i = 0; r == 0 && i < st.n; i++) {
		if (!st.list[i].disk[0])
			r = cd_error(s->ctx, -EINVAL, "'%s': export '%s' has no disk", path,
				     st.list[i].name);
		else
			r = cdisk_server_add_export(s, st.list[i].name, st.list[i].disk,
						    read_only || st.list[i].read_only);
	}
	free(st.list);
	return r;
}

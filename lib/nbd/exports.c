/* Exports from a file, for cdisk-serve --config:
 *
 *   [export alice]
 *   disk = /var/lib/cdisk/alice.cdisk
 *   read_only = no
 *   clients = alice, alice-laptop    # TLS certificate common names
 *   users = alice                    # peers on the unix socket
 */
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>

#include "cdisk.h"
#include "ctx.h"
#include "server.h"
#include "util.h"

struct pending {
	char name[256];
	char disk[4096];
	bool read_only;
	struct cd_access access;
	int line;
};

struct parse_state {
	struct pending *list;
	size_t n;
	char bad[200];
};

/* A user by name or number. */
static bool user_id(const char *name, uid_t *out)
{
	struct passwd pw, *found = NULL;
	char buf[1024], *end;
	unsigned long n = strtoul(name, &end, 10);

	if (*name && !*end) {
		*out = (uid_t)n;
		return true;
	}
	if (getpwnam_r(name, &pw, buf, sizeof(buf), &found) != 0 || !found)
		return false;
	*out = found->pw_uid;
	return true;
}

/* "a, b, c" into the access list: certificate names or unix users. */
static int add_names(struct parse_state *st, struct cd_access *a, bool users,
		     const char *value)
{
	char *copy = strdup(value), *save = NULL;

	if (!copy) {
		snprintf(st->bad, sizeof(st->bad), "out of memory");
		return 0;
	}
	for (char *w = strtok_r(copy, ", \t", &save); w; w = strtok_r(NULL, ", \t", &save)) {
		if ((users ? a->nusers : a->nclients) == CD_MAX_ALLOWED) {
			snprintf(st->bad, sizeof(st->bad), "at most %d names", CD_MAX_ALLOWED);
			goto fail;
		}
		if (users && !user_id(w, &a->users[a->nusers])) {
			snprintf(st->bad, sizeof(st->bad), "no such user '%.60s'", w);
			goto fail;
		}
		if (users) {
			a->nusers++;
		} else if (!(a->clients[a->nclients++] = strdup(w))) {
			snprintf(st->bad, sizeof(st->bad), "out of memory");
			goto fail;
		}
	}
	free(copy);
	return 1;
fail:
	free(copy);
	return 0;
}

void cd_access_free(struct cd_access *a)
{
	for (size_t i = 0; i < a->nclients; i++)
		free(a->clients[i]);
	a->nclients = 0;
}

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
	} else if (!strcmp(key, "clients") || !strcmp(key, "users")) {
		return add_names(st, &p->access, !strcmp(key, "users"), value);
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
		if (r == 0)
			r = cd_server_restrict_export(s, st.list[i].name, &st.list[i].access);
	}
	for (size_t i = 0; i < st.n; i++)
		cd_access_free(&st.list[i].access);
	free(st.list);
	return r;
}

/* The export takes the names over; access is left empty. */
int cd_server_restrict_export(struct cdisk_server *s, const char *name,
			      struct cd_access *access)
{
	struct cd_export *e = cd_server_find_export(s, name);

	if (!e)
		return cd_error(s->ctx, -ENOENT, "no export named '%s'", name);
	e->access = *access;
	memset(access, 0, sizeof(*access));
	return 0;
}

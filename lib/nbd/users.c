/* The users of a multi-user cdisk-serve (--users FILE, cdisk(7)) and the
 * pre-shared keys they log in with (--tls-psk FILE, as psktool writes
 * it).  Parsing only: what a user may open is answered here, and the
 * server enforces it.
 *
 *   [user alice]
 *   exports = alice/desk*, shared/golden # names or globs
 *   read_only = no
 *   certificate = alice                  # X.509 common name
 *   uid = 1001                           # peer on the unix socket
 *   iops = 2000                          # limits: 0 or absent, none
 *   bandwidth = 100M                     # bytes per second
 *   burst = 1s                           # as a time at the limit
 *   queue_depth = 64
 *   connections = 8
 *   quota_size = 500G                    # total virtual size of images
 *   quota_used = 200G                    # bytes their overlays use
 *
 * A file is taken whole or not at all: the first bad line refuses it,
 * with its number, so a reload can keep the old one in force. */
#include <ctype.h>
#include <fnmatch.h>
#include <ini.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>

#include "text.h"
#include "users.h"

struct parse_state {
	struct cd_users *users;
	struct cd_user *cur;
	char bad[200];
};

bool cd_user_name_valid(const char *name)
{
	size_t n = strlen(name);

	/* Names become folders of a pool (DIR/USER/): nothing that could
	 * climb out of it or hide. */
	if (n == 0 || n > CD_USER_NAME_MAX || name[0] == '.' || name[0] == '-')
		return false;
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)name[i]) && !strchr("._-", name[i]))
			return false;
	return true;
}

static struct cd_user *add_user(struct parse_state *st, const char *name)
{
	struct cd_users *u = st->users;
	struct cd_user *v;

	if (!cd_user_name_valid(name)) {
		snprintf(st->bad, sizeof(st->bad), "user name '%.64s' is not 1 to %d "
			 "letters, digits, '.', '_' or '-' (not first '.' or '-')", name,
			 CD_USER_NAME_MAX);
		return NULL;
	}
	if (cd_users_find(u, name)) {
		snprintf(st->bad, sizeof(st->bad), "user '%s' is defined twice", name);
		return NULL;
	}
	v = realloc(u->v, (u->n + 1) * sizeof(*v));
	if (!v) {
		snprintf(st->bad, sizeof(st->bad), "out of memory");
		return NULL;
	}
	u->v = v;
	v = &u->v[u->n++];
	memset(v, 0, sizeof(*v));
	snprintf(v->name, sizeof(v->name), "%s", name);
	return v;
}

static bool set_exports(struct parse_state *st, struct cd_user *u, const char *value)
{
	char *copy = strdup(value), *save = NULL;

	if (!copy)
		goto nomem;
	for (char *w = strtok_r(copy, ", \t", &save); w; w = strtok_r(NULL, ", \t", &save)) {
		char **v;

		if (strlen(w) > CD_EXPORT_NAME_MAX || w[0] == '/' || strstr(w, "..")) {
			snprintf(st->bad, sizeof(st->bad), "export '%.64s' is not a name or "
				 "glob of at most %d bytes without '..' or a leading '/'",
				 w, CD_EXPORT_NAME_MAX);
			free(copy);
			return false;
		}
		v = realloc(u->exports, (u->nexports + 1) * sizeof(*v));
		if (!v)
			goto nomem;
		u->exports = v;
		if (!(u->exports[u->nexports] = strdup(w)))
			goto nomem;
		u->nexports++;
	}
	free(copy);
	return true;
nomem:
	free(copy);
	snprintf(st->bad, sizeof(st->bad), "out of memory");
	return false;
}

static bool set_uid(struct parse_state *st, struct cd_user *u, const char *value)
{
	struct passwd pw, *found = NULL;
	char buf[1024], *end;
	unsigned long n;

	errno = 0;
	n = strtoul(value, &end, 10);
	if (*value && !*end && !errno && n < UINT32_MAX) {
		u->uid = (uid_t)n;
	} else if (getpwnam_r(value, &pw, buf, sizeof(buf), &found) == 0 && found) {
		u->uid = found->pw_uid;
	} else {
		snprintf(st->bad, sizeof(st->bad), "uid '%.64s' is not a number or a "
			 "user of this host", value);
		return false;
	}
	u->has_uid = true;
	return true;
}

static bool set_size(struct parse_state *st, const char *key, const char *value,
		     uint64_t *out)
{
	if (cd_parse_size(value, out) < 0) {
		snprintf(st->bad, sizeof(st->bad), "%s '%.64s' is not a size (such as "
			 "100M or 2G)", key, value);
		return false;
	}
	return true;
}

static bool set_count(struct parse_state *st, const char *key, const char *value,
		      uint64_t max, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(value, &end, 10);
	if (errno || *end || end == value || value[0] == '-' || v > max) {
		snprintf(st->bad, sizeof(st->bad), "%s must be a number from 0 to %llu",
			 key, (unsigned long long)max);
		return false;
	}
	*out = v;
	return true;
}

/* The burst as a time at the limit, in milliseconds: "500ms", "2s". */
static bool set_burst(struct parse_state *st, const char *value, uint32_t *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(value, &end);
	if (!errno && end != value && v >= 0) {
		if (strcmp(end, "ms") == 0 && v <= 60000) {
			*out = (uint32_t)v;
			return true;
		}
		if (strcmp(end, "s") == 0 && v <= 60) {
			*out = (uint32_t)(v * 1000);
			return true;
		}
	}
	snprintf(st->bad, sizeof(st->bad), "burst '%.64s' is not a time from 0 to "
		 "60s (such as 500ms or 2s)", value);
	return false;
}

static bool set_key(struct parse_state *st, struct cd_user *u, const char *name,
		    const char *value)
{
	struct cd_user_limits *l = &u->limits;
	uint64_t n;

	if (strcmp(name, "exports") == 0)
		return set_exports(st, u, value);
	if (strcmp(name, "read_only") == 0) {
		if (cd_parse_bool(value, &u->read_only))
			return true;
		snprintf(st->bad, sizeof(st->bad), "read_only must be yes or no");
		return false;
	}
	if (strcmp(name, "certificate") == 0) {
		if (!*value || strlen(value) >= sizeof(u->certificate)) {
			snprintf(st->bad, sizeof(st->bad), "certificate must be a name of "
				 "1 to %zu bytes", sizeof(u->certificate) - 1);
			return false;
		}
		snprintf(u->certificate, sizeof(u->certificate), "%s", value);
		return true;
	}
	if (strcmp(name, "uid") == 0)
		return set_uid(st, u, value);
	if (strcmp(name, "iops") == 0)
		return set_count(st, name, value, 100000000, &l->iops);
	if (strcmp(name, "bandwidth") == 0)
		return set_size(st, name, value, &l->bytes_per_second);
	if (strcmp(name, "burst") == 0)
		return set_burst(st, value, &l->burst_ms);
	if (strcmp(name, "queue_depth") == 0) {
		if (!set_count(st, name, value, 4096, &n))
			return false;
		l->queue_depth = (uint32_t)n;
		return true;
	}
	if (strcmp(name, "connections") == 0) {
		if (!set_count(st, name, value, 65536, &n))
			return false;
		l->connections = (uint32_t)n;
		return true;
	}
	if (strcmp(name, "quota_size") == 0)
		return set_size(st, name, value, &u->quota_size);
	if (strcmp(name, "quota_used") == 0)
		return set_size(st, name, value, &u->quota_used);
	snprintf(st->bad, sizeof(st->bad), "unknown key '%.60s' in [user %.40s]", name,
		 u->name);
	return false;
}

static int on_entry(void *user, const char *section, const char *name,
		    const char *value)
{
	struct parse_state *st = user;

	if (strncmp(section, "user ", 5) != 0) {
		snprintf(st->bad, sizeof(st->bad), "section [%.60s] is not [user NAME]",
			 section);
		return 0;
	}
	if (!st->cur || strcmp(st->cur->name, section + 5) != 0) {
		/* A section is met at its first key; a user without keys has
		 * no exports and so is nobody. */
		st->cur = add_user(st, section + 5);
		if (!st->cur)
			return 0;
	}
	if (!name)
		return 1;
	return set_key(st, st->cur, name, value) ? 1 : 0;
}

void cd_users_free(struct cd_users *users)
{
	if (!users)
		return;
	for (size_t i = 0; i < users->n; i++) {
		for (size_t k = 0; k < users->v[i].nexports; k++)
			free(users->v[i].exports[k]);
		free(users->v[i].exports);
	}
	free(users->v);
	free(users);
}

/* inih reports keys, not section headers: a section named twice would
 * silently merge with the one before it, so headers are checked here.
 * Returns the line of the second one, or 0. */
static int duplicate_section(const char *text, char *bad, size_t len)
{
	struct seen { const char *name; size_t n; int line; } *seen = NULL, *more;
	size_t nseen = 0;
	int line = 0, found = 0;

	for (const char *p = text; *p && !found;) {
		const char *end = strchrnul(p, '\n'), *q = p, *close = NULL;

		line++;
		while (q < end && isspace((unsigned char)*q))
			q++;
		if (q < end && *q == '[')
			close = memchr(q, ']', (size_t)(end - q));
		for (size_t i = 0; close && i < nseen; i++) {
			size_t n = (size_t)(close - q - 1);

			if (seen[i].n == n && memcmp(seen[i].name, q + 1, n) == 0) {
				snprintf(bad, len, "[%.*s] is defined twice (first on line "
					 "%d)", (int)(n > 60 ? 60 : n), q + 1, seen[i].line);
				found = line;
			}
		}
		if (close && !found && (more = realloc(seen, (nseen + 1) * sizeof(*seen)))) {
			seen = more;
			seen[nseen++] = (struct seen){ q + 1, (size_t)(close - q - 1), line };
		}
		p = *end ? end + 1 : end;
	}
	free(seen);
	return found;
}

static int parse(struct cdisk_ctx *ctx, const char *path, const char *text,
		 struct cd_users **out)
{
	struct parse_state st = { .users = calloc(1, sizeof(struct cd_users)) };
	char where[4200];
	int line;

	*out = NULL;
	if (!st.users)
		return cd_error(ctx, -ENOMEM, "cannot read users: out of memory");
	if (path)
		snprintf(where, sizeof(where), "users file '%s'", path);
	else
		snprintf(where, sizeof(where), "users");
	line = duplicate_section(text, st.bad, sizeof(st.bad));
	if (line == 0)
		line = ini_parse_string(text, on_entry, &st);
	if (line != 0) {
		cd_users_free(st.users);
		return cd_error(ctx, line < 0 ? -ENOMEM : -EINVAL, "%s, line %d: %s",
				where, line, st.bad[0] ? st.bad : "syntax error");
	}
	*out = st.users;
	return 0;
}

#define USERS_FILE_MAX (16u << 20)

int cd_users_load(struct cdisk_ctx *ctx, const char *path, struct cd_users **out)
{
	FILE *in = fopen(path, "re");
	char *text = NULL;
	size_t len = 0;
	int r;

	*out = NULL;
	if (!in)
		return cd_error(ctx, errno == ENOENT ? -ENOENT : -EACCES,
				"cannot read users file '%s': %s", path, strerror(errno));
	text = malloc(USERS_FILE_MAX + 1);
	if (text)
		len = fread(text, 1, USERS_FILE_MAX + 1, in);
	r = !text ? -ENOMEM : ferror(in) ? -EIO : len > USERS_FILE_MAX ? -EFBIG : 0;
	fclose(in);
	if (r < 0) {
		free(text);
		return cd_error(ctx, r, "cannot read users file '%s': %s", path,
				r == -EFBIG ? "larger than 16 MiB" : strerror(-r));
	}
	text[len] = 0;
	if (strlen(text) != len)
		r = cd_error(ctx, -EINVAL, "users file '%s': it holds a NUL byte", path);
	else
		r = parse(ctx, path, text, out);
	free(text);
	return r;
}

int cd_users_parse_text(struct cdisk_ctx *ctx, const char *text, struct cd_users **out)
{
	return parse(ctx, NULL, text, out);
}

const struct cd_user *cd_users_find(const struct cd_users *users, const char *name)
{
	for (size_t i = 0; users && i < users->n; i++)
		if (strcmp(users->v[i].name, name) == 0)
			return &users->v[i];
	return NULL;
}

const struct cd_user *cd_users_by_certificate(const struct cd_users *users,
					      const char *name)
{
	for (size_t i = 0; users && i < users->n; i++)
		if (users->v[i].certificate[0] && strcmp(users->v[i].certificate, name) == 0)
			return &users->v[i];
	return NULL;
}

const struct cd_user *cd_users_by_uid(const struct cd_users *users, uid_t uid)
{
	for (size_t i = 0; users && i < users->n; i++)
		if (users->v[i].has_uid && users->v[i].uid == uid)
			return &users->v[i];
	return NULL;
}

/* A glob's '*' stops at '/' and never matches a leading '.': a glob for
 * alice's images gives none in a folder below them, nor hidden ones. */
bool cd_user_may_open(const struct cd_user *u, const char *export)
{
	if (!u || strstr(export, ".."))
		return false;
	for (size_t i = 0; i < u->nexports; i++)
		if (fnmatch(u->exports[i], export, FNM_PATHNAME | FNM_PERIOD) == 0)
			return true;
	return false;
}

/* ---- pre-shared keys: "name:hexkey" a line ---- */

void cd_psk_free(struct cd_psk *psk)
{
	if (!psk)
		return;
	/* Keys do not linger in freed memory. */
	for (size_t i = 0; i < psk->n; i++)
		explicit_bzero(psk->v[i].key, sizeof(psk->v[i].key));
	free(psk->v);
	free(psk);
}

static int hex_value(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = tolower(c);
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static const char *parse_psk_line(struct cd_psk *psk, char *line)
{
	char *colon = strchr(line, ':'), *hex;
	struct cd_psk_entry *e, *v;
	size_t n;

	if (!colon)
		return "not name:hexkey";
	*colon = 0;
	hex = colon + 1;
	n = strlen(hex);
	if (!cd_user_name_valid(line))
		return "the name is not 1 to 63 letters, digits, '.', '_' or '-'";
	if (n % 2 || n < 2 * CD_PSK_MIN || n > 2 * CD_PSK_MAX)
		return "the key is not 16 to 64 bytes in hexadecimal";
	for (size_t i = 0; i < psk->n; i++)
		if (strcmp(psk->v[i].name, line) == 0)
			return "the name has a key already";
	v = realloc(psk->v, (psk->n + 1) * sizeof(*v));
	if (!v)
		return "out of memory";
	psk->v = v;
	e = &psk->v[psk->n];
	memset(e, 0, sizeof(*e));
	for (size_t i = 0; i < n; i += 2) {
		int hi = hex_value(hex[i]), lo = hex_value(hex[i + 1]);

		if (hi < 0 || lo < 0) {
			explicit_bzero(e->key, sizeof(e->key));
			return "the key is not hexadecimal";
		}
		e->key[i / 2] = (uint8_t)(hi << 4 | lo);
	}
	snprintf(e->name, sizeof(e->name), "%s", line);
	e->len = n / 2;
	psk->n++;
	return NULL;
}

static int psk_parse(struct cdisk_ctx *ctx, const char *what, FILE *in,
		     struct cd_psk **out)
{
	struct cd_psk *psk = calloc(1, sizeof(*psk));
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	int lineno = 0, r = 0;

	*out = NULL;
	if (!psk)
		return cd_error(ctx, -ENOMEM, "cannot read '%s': out of memory", what);
	while ((len = getline(&line, &cap, in)) >= 0) {
		const char *why;

		lineno++;
		while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
			line[--len] = 0;
		if (len == 0 || line[0] == '#')
			continue;
		if (strlen(line) != (size_t)len)
			why = "it holds a NUL byte";
		else
			why = parse_psk_line(psk, line);
		if (why) {
			r = cd_error(ctx, -EINVAL, "'%s', line %d: %s", what, lineno, why);
			break;
		}
	}
	if (line) {
		explicit_bzero(line, cap);
		free(line);
	}
	if (r < 0) {
		cd_psk_free(psk);
		return r;
	}
	*out = psk;
	return 0;
}

int cd_psk_load(struct cdisk_ctx *ctx, const char *path, struct cd_psk **out)
{
	FILE *in = fopen(path, "re");
	int r;

	if (!in) {
		*out = NULL;
		return cd_error(ctx, errno == ENOENT ? -ENOENT : -EACCES,
				"cannot read the key file '%s': %s", path, strerror(errno));
	}
	r = psk_parse(ctx, path, in, out);
	fclose(in);
	return r;
}

int cd_psk_parse_text(struct cdisk_ctx *ctx, const char *text, size_t len,
		      struct cd_psk **out)
{
	FILE *in = fmemopen((void *)text, len, "r");
	int r;

	if (!in) {
		*out = NULL;
		return cd_error(ctx, -ENOMEM, "cannot read keys: out of memory");
	}
	r = psk_parse(ctx, "keys", in, out);
	fclose(in);
	return r;
}

const struct cd_psk_entry *cd_psk_find(const struct cd_psk *psk, const char *name)
{
	for (size_t i = 0; psk && i < psk->n; i++)
		if (strcmp(psk->v[i].name, name) == 0)
			return &psk->v[i];
	return NULL;
}

/* Sector read-modify-write: requests that do not fill whole sectors.
 * A write or zero of part of a sector reads the sector, patches it and
 * writes it back, under a lock for that sector (one of a few stripes) so
 * that two patches of one sector cannot undo each other; whole sectors
 * between go down as they are.  A discard keeps only its whole sectors:
 * the edges keep their data.  Above this layer any offset goes. */
#include <stdlib.h>

#include "ctx.h"
#include "dev.h"
#include "target.h"
#include "util.h"

#define STRIPES 64

struct rmw {
	struct cd_dev dev;
	uint32_t align;
	pthread_mutex_t lock[STRIPES];
};

static struct rmw *rmw_of(struct cd_dev *d)
{
	return (struct rmw *)d;
}

static bool aligned(const struct rmw *m, size_t len, uint64_t off)
{
	return m->align <= 1 || (len % m->align == 0 && off % m->align == 0);
}

static int no_memory(struct cd_dev *d)
{
	return cd_error(d->t->ctx, -ENOMEM, "'%s': out of memory", d->t->uri);
}

/* data NULL: zeros. */
static int patch_sector(struct cd_dev *d, const void *data, size_t len, uint64_t off)
{
	struct rmw *m = rmw_of(d);
	uint64_t start = off - off % m->align;
	pthread_mutex_t *lock = &m->lock[(start / m->align) % STRIPES];
	uint8_t *sector = malloc(m->align);
	int r;

	if (!sector)
		return no_memory(d);
	pthread_mutex_lock(lock);
	r = cd_dev_pread(d->next, sector, m->align, start);
	if (r == 0) {
		if (data)
			memcpy(sector + (off - start), data, len);
		else
			memset(sector + (off - start), 0, len);
		r = cd_dev_pwrite(d->next, sector, m->align, start);
	}
	pthread_mutex_unlock(lock);
	free(sector);
	return r;
}

static int rmw_pread(struct cd_dev *d, void *out, size_t len, uint64_t off)
{
	struct rmw *m = rmw_of(d);
	uint8_t *buf = out, *sector;
	int r = 0;

	if (aligned(m, len, off))
		return cd_dev_pread(d->next, buf, len, off);
	if (!(sector = malloc(m->align)))
		return no_memory(d);
	while (len && r == 0) {
		uint64_t start = off - off % m->align;
		size_t skip = (size_t)(off - start);
		size_t n = m->align - skip < len ? m->align - skip : len;

		if (skip == 0 && len >= m->align) {
			n = len - len % m->align;
			r = cd_dev_pread(d->next, buf, n, off);
		} else {
			r = cd_dev_pread(d->next, sector, m->align, start);
			if (r == 0)
				memcpy(buf, sector + skip, n);
		}
		buf += n;
		off += n;
		len -= n;
	}
	free(sector);
	return r;
}

/* Writes and zeroes (buf NULL): patched head and tail, whole sectors
 * between. */
static int change(struct cd_dev *d, const uint8_t *buf, size_t len, uint64_t off)
{
	struct rmw *m = rmw_of(d);

	while (len) {
		uint64_t skip = off % m->align;
		size_t n;
		int r;

		if (skip || len < m->align) {
			n = m->align - skip < len ? (size_t)(m->align - skip) : len;
			r = patch_sector(d, buf, n, off);
		} else {
			n = len - len % m->align;
			r = buf ? cd_dev_pwrite(d->next, buf, n, off)
				: cd_dev_zero(d->next, n, off);
		}
		if (r < 0)
			return r;
		if (buf)
			buf += n;
		off += n;
		len -= n;
	}
	return 0;
}

static int rmw_pwrite(struct cd_dev *d, const void *buf, size_t len, uint64_t off)
{
	if (aligned(rmw_of(d), len, off))
		return cd_dev_pwrite(d->next, buf, len, off);
	return change(d, buf, len, off);
}

static int rmw_zero(struct cd_dev *d, size_t len, uint64_t off)
{
	if (aligned(rmw_of(d), len, off))
		return cd_dev_zero(d->next, len, off);
	return change(d, NULL, len, off);
}

static int rmw_discard(struct cd_dev *d, size_t len, uint64_t off)
{
	struct rmw *m = rmw_of(d);
	uint64_t start, end;

	if (m->align <= 1)
		return cd_dev_discard(d->next, len, off);
	start = cd_div_round_up(off, m->align) * m->align;
	end = (off + len) / m->align * m->align;
	if (end <= start)
		return 0;
	return cd_dev_discard(d->next, (size_t)(end - start), start);
}

/* A set goes down together only when every piece is whole sectors. */
static bool whole_sectors(struct cd_dev *d, const struct cd_piece *p)
{
	return aligned(rmw_of(d), p->len, p->off);
}

static int rmw_pieces(struct cd_dev *d, const struct cd_piece *v, size_t n)
{
	return cd_dev_pieces_through(d, v, n, whole_sectors, rmw_pwrite);
}

static void rmw_caps(struct cd_dev *d, struct cd_dev_caps *c)
{
	cd_dev_caps(d->next, c);
	c->align = 1;
}

static void rmw_close(struct cd_dev *d)
{
	struct rmw *m = rmw_of(d);

	for (unsigned i = 0; i < STRIPES; i++)
		pthread_mutex_destroy(&m->lock[i]);
	free(m);
}

static const struct cd_dev_ops rmw_ops = {
	.name = "rmw", .pread = rmw_pread, .pwrite = rmw_pwrite,
	.pwrite_pieces = rmw_pieces, .zero = rmw_zero, .discard = rmw_discard,
	.caps = rmw_caps, .close = rmw_close, .passes_whole = true,
};

struct cd_dev *cd_dev_rmw_new(struct cd_dev *next)
{
	struct rmw *m = calloc(1, sizeof(*m));
	struct cd_dev_caps c;

	if (!m) {
		cd_error(next->t->ctx, -ENOMEM, "cannot open '%s': out of memory",
			 next->t->uri);
		return NULL;
	}
	cd_dev_caps(next, &c);
	m->dev.ops = &rmw_ops;
	m->dev.next = next;
	m->dev.t = next->t;
	m->align = c.align;
	for (unsigned i = 0; i < STRIPES; i++)
		pthread_mutex_init(&m->lock[i], NULL);
	return &m->dev;
}

/* Calls on a device stack: a layer that leaves a call alone gives no
 * function for it, and the call goes on down to one that does. */
#include "dev.h"
#include "target.h"

__thread bool cd_dev_unsent;

#define BELOW(d, fn) \
	while ((d)->next && !(d)->ops->fn) \
		(d) = (d)->next

int cd_dev_pread(struct cd_dev *d, void *buf, size_t len, uint64_t off)
{
	BELOW(d, pread);
	return d->ops->pread ? d->ops->pread(d, buf, len, off) : -EOPNOTSUPP;
}

int cd_dev_pwrite(struct cd_dev *d, const void *buf, size_t len, uint64_t off)
{
	BELOW(d, pwrite);
	return d->ops->pwrite ? d->ops->pwrite(d, buf, len, off) : -EOPNOTSUPP;
}

int cd_dev_pwrite_pieces(struct cd_dev *d, const struct cd_piece *v, size_t n)
{
	BELOW(d, pwrite_pieces);
	return d->ops->pwrite_pieces ? d->ops->pwrite_pieces(d, v, n) : -EOPNOTSUPP;
}

int cd_dev_pieces_through(struct cd_dev *d, const struct cd_piece *v, size_t n,
			  bool (*as_is)(struct cd_dev *d, const struct cd_piece *p),
			  int (*pwrite)(struct cd_dev *d, const void *buf, size_t len,
					uint64_t off))
{
	int r = 0;

	for (size_t i = 0; i < n; i++)
		if (!as_is(d, &v[i]))
			goto one_by_one;
	return cd_dev_pwrite_pieces(d->next, v, n);
one_by_one:
	for (size_t i = 0; i < n && r == 0; i++)
		r = pwrite(d, v[i].buf, v[i].len, v[i].off);
	return r;
}

int cd_dev_zero(struct cd_dev *d, size_t len, uint64_t off)
{
	BELOW(d, zero);
	return d->ops->zero ? d->ops->zero(d, len, off) : -EOPNOTSUPP;
}

int cd_dev_discard(struct cd_dev *d, size_t len, uint64_t off)
{
	BELOW(d, discard);
	return d->ops->discard ? d->ops->discard(d, len, off) : -EOPNOTSUPP;
}

int cd_dev_zero_span(struct cd_dev *d, uint64_t off, uint64_t len, uint64_t *span)
{
	BELOW(d, zero_span);
	return d->ops->zero_span ? d->ops->zero_span(d, off, len, span) : -EOPNOTSUPP;
}

int cd_dev_flush(struct cd_dev *d)
{
	BELOW(d, flush);
	return d->ops->flush ? d->ops->flush(d) : 0;
}

uint64_t cd_dev_size(struct cd_dev *d)
{
	BELOW(d, size);
	return d->ops->size ? d->ops->size(d) : 0;
}

void cd_dev_caps(struct cd_dev *d, struct cd_dev_caps *c)
{
	BELOW(d, caps);
	memset(c, 0, sizeof(*c));
	if (d->ops->caps)
		d->ops->caps(d, c);
	if (!c->align)
		c->align = 1;
}

int cd_dev_ping(struct cd_dev *d, uint64_t *rtt_us)
{
	BELOW(d, ping);
	*rtt_us = 0;
	return d->ops->ping ? d->ops->ping(d, rtt_us) : -EOPNOTSUPP;
}

int cd_dev_identity(struct cd_dev *d, char *out, size_t len)
{
	BELOW(d, identity);
	return d->ops->identity ? d->ops->identity(d, out, len) : -EOPNOTSUPP;
}

void cd_dev_close_stack(struct cd_dev *top)
{
	while (top) {
		struct cd_dev *next = top->next;

		if (top->ops->close)
			top->ops->close(top);
		top = next;
	}
}

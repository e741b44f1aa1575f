/* Pacing: a delay-based controller in the manner of LEDBAT (RFC 6817),
 * so that a sync yields to the desktop's own traffic.  It sees round trips
 * to the base and the bytes actually sent, and answers with a rate limit.
 *
 * The current delay is the least of the last few samples (one late answer
 * is noise); the baseline the least of each of the last ten minutes (a
 * route that changes for good becomes the new normal).  Their difference
 * is the queueing the sync's own traffic and everyone else's cause. */
#include <string.h>

#include "pace.h"

void cd_pace_init(struct cd_pace *p, double target_ms)
{
	memset(p, 0, sizeof(*p));
	p->target_ms = target_ms;
}

void cd_pace_sample(struct cd_pace *p, double rtt_ms, uint64_t now_ms)
{
	memmove(p->recent + 1, p->recent, sizeof(p->recent) - sizeof(p->recent[0]));
	p->recent[0] = rtt_ms;
	if (p->nrecent < CD_PACE_FILTER)
		p->nrecent++;
	p->current = rtt_ms;
	for (unsigned i = 1; i < p->nrecent; i++)
		if (p->recent[i] < p->current)
			p->current = p->recent[i];
	if (!p->nminutes || now_ms - p->minute_start_ms >= 60000) {
		p->minute = (p->minute + (p->nminutes ? 1 : 0)) % CD_PACE_MINUTES;
		if (p->nminutes < CD_PACE_MINUTES)
			p->nminutes++;
		p->minute_min[p->minute] = rtt_ms;
		p->minute_start_ms = now_ms;
	} else if (rtt_ms < p->minute_min[p->minute]) {
		p->minute_min[p->minute] = rtt_ms;
	}
	p->base = p->minute_min[0];
	for (unsigned i = 1; i < p->nminutes; i++)
		if (p->minute_min[i] < p->base)
			p->base = p->minute_min[i];
}

void cd_pace_sent(struct cd_pace *p, uint64_t bytes_so_far, uint64_t now_ms)
{
	if (p->sent_ms && now_ms > p->sent_ms) {
		double inst = (double)(bytes_so_far - p->sent_bytes) * 1000.0 /
			      (double)(now_ms - p->sent_ms);
		p->measured_rate = p->measured_rate ? (p->measured_rate + inst) / 2 : inst;
	}
	p->sent_bytes = bytes_so_far;
	p->sent_ms = now_ms;
}

/* Queueing under the target lets the rate grow, in proportion to how far
 * under it is; over the target it shrinks, by up to half a tick.  The
 * limit is dropped when it is far above what is sent anyway, or when the
 * queue has stayed nearly empty for a while: nothing holds the sync back
 * then but the network itself. */
#define CLEAR_TICKS 10

enum cd_pace_change cd_pace_adjust(struct cd_pace *p, bool answered)
{
	double queueing = answered ? p->current - p->base : 2 * p->target_ms;
	double off = (p->target_ms - queueing) / p->target_ms;
	double rate = (double)p->rate_limit;
	double sending = p->measured_rate > CD_PACE_MIN_RATE ? p->measured_rate
							     : CD_PACE_MIN_RATE;

	if (off < -1)
		off = -1;
	p->clear_ticks = off > 0.5 ? p->clear_ticks + 1 : 0;
	if (off < 0) {
		enum cd_pace_change change = CD_PACE_SAME;
		if (!p->rate_limit) {
			rate = p->measured_rate > CD_PACE_MIN_RATE ? p->measured_rate
								   : 4.0 * CD_PACE_MIN_RATE;
			p->slowdowns++;
			change = CD_PACE_SLOWED;
		}
		rate *= 1 + off / 2;
		p->rate_limit = rate > CD_PACE_MIN_RATE ? (uint64_t)rate : CD_PACE_MIN_RATE;
		return change;
	}
	if (!p->rate_limit)
		return CD_PACE_SAME;
	rate += off * (rate / 4 > (1 << 20) ? rate / 4 : (1 << 20));
	if (rate > 4 * sending || p->clear_ticks >= CLEAR_TICKS) {
		p->rate_limit = 0;
		return CD_PACE_FREED;
	}
	p->rate_limit = (uint64_t)rate;
	return CD_PACE_SAME;
}

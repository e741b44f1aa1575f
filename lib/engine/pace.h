/* Internal: pacing a sync by the base's round trip (pace.c). */
#ifndef CDISK_PACE_H
#define CDISK_PACE_H

#include <stdbool.h>
#include <stdint.h>

#define CD_PACE_FILTER 4
#define CD_PACE_MINUTES 10
#define CD_PACE_MIN_RATE (256u << 10)

struct cd_pace {
	double target_ms;            /* queueing delay allowed */
	double recent[CD_PACE_FILTER];
	unsigned nrecent;
	double minute_min[CD_PACE_MINUTES];
	unsigned minute, nminutes;
	uint64_t minute_start_ms;
	double current, base;        /* ms: the filtered delay, the baseline */
	uint64_t sent_bytes, sent_ms;
	double measured_rate;        /* bytes/s actually sent, smoothed */
	uint64_t rate_limit;         /* bytes/s; 0: none */
	unsigned slowdowns;
	unsigned clear_ticks;        /* adjustments in a row with little queueing */
};

enum cd_pace_change { CD_PACE_SAME, CD_PACE_SLOWED, CD_PACE_FREED };

void cd_pace_init(struct cd_pace *p, double target_ms);
void cd_pace_sample(struct cd_pace *p, double rtt_ms, uint64_t now_ms);
/* The bytes sent so far, for the rate actually achieved. */
void cd_pace_sent(struct cd_pace *p, uint64_t bytes_so_far, uint64_t now_ms);
/* After each ping (answered: it came back in time and not busy). */
enum cd_pace_change cd_pace_adjust(struct cd_pace *p, bool answered);

#endif

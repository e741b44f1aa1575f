/* What every cdisk program shares: options, messages, exit codes. */
#ifndef CDISK_CLI_H
#define CDISK_CLI_H

#include <jansson.h>
#include <popt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdnoreturn.h>

#include "cdisk.h"
#include "text.h"   /* cd_exit_code, cd_parse_size, cd_format_size, ... */

struct cli_program {
	const char *name;        /* "cdisk-info" */
	const char *args;        /* "NAME.cdisk" */
	const char *summary;     /* one line for --help */
};

struct cli_common {
	int quiet;
	int verbose;
	int json;
};

extern struct cli_common cli;

/* Tables to include in each program's popt table. */
extern struct poptOption cli_common_options[];
extern struct poptOption cli_help_options[];

#define CLI_COMMON_OPTIONS \
	{ NULL, '\0', POPT_ARG_INCLUDE_TABLE, cli_common_options, 0, \
	  "Common options:", NULL }, \
	{ NULL, '\0', POPT_ARG_INCLUDE_TABLE, cli_help_options, 0, \
	  "Help options:", NULL }

/* Parse the command line; on a usage error print one line plus a hint
 * and exit with CDISK_EXIT_USAGE.  Returns the remaining arguments. */
const char **cli_parse(const struct cli_program *prog, int argc, const char **argv,
		       const struct poptOption *options, int nargs_min, int nargs_max);

noreturn void cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void cli_message(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A library context whose log goes to stderr, filtered by -q/-v. */
struct cdisk_ctx *cli_context(void);
/* Print the context's message when r < 0 and return the exit code. */
int cli_exit_code(struct cdisk_ctx *ctx, int r);

/* The exit code a probe's verdict maps to (0, CDISK_EXIT_UNHEALTHY,
 * CDISK_EXIT_UNREACHABLE), and its name ("healthy", ...). */
int cli_verdict_exit_code(enum cdisk_verdict v);
const char *cli_verdict_name(enum cdisk_verdict v);

/* Option value parsers for sizes: print and exit on bad input. */
uint64_t cli_parse_size(const char *option, const char *value);

/* Print a JSON document on stdout, whole or not at all (a reader never
 * sees half of one), and free it.  0, or -ENOMEM when it could not be. */
int cli_print_json(json_t *j);
/* The text of a JSON document (json_dumps flags), its numbers rounded to
 * a thousandth; NULL when it could not be made.  The caller frees it. */
char *cli_json_text(json_t *j, size_t flags);

/* Whether progress bars may be drawn (stderr is a terminal, not quiet). */
bool cli_show_progress(void);
/* Seconds since the first call, on a monotonic clock, to the nanosecond:
 * rates from it hold from the first second. */
double cli_elapsed(void);
/* Redraw the progress line ("PROGRAM: ..." after a carriage return),
 * unless it would say the same as the last one. */
void cli_progress(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* "s" unless n is 1: "%u request%s". */
const char *cli_plural(uint64_t n);

/* After cli_stop_on_signals, SIGINT and SIGTERM set cli_interrupted and
 * stop the copy of cli_running, if set, after the requests in flight
 * (cdisk_sync_stop): what was sent is kept, the rest is left for later. */
extern volatile sig_atomic_t cli_interrupted;
extern struct cdisk *cli_running;
void cli_stop_on_signals(void);
/* Between polls of a server: one second, ended early by a signal. */
void cli_sleep_a_second(void);

#endif

/* Shared command-line machinery.  Each program's main() parses, calls
 * the library, and returns cli_exit_code(). */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

struct cli_common cli;

static const struct cli_program *program;
static poptContext popt_ctx;
static const struct poptOption *program_options;

enum { OPT_HELP = 1, OPT_USAGE, OPT_VERSION, OPT_LONG_OPTIONS, OPT_SHORT_OPTIONS,
       OPT_OPTION_ARGS };
enum list_what { LIST_LONG, LIST_SHORT, LIST_ARGS };

static void help_callback(poptContext con, enum poptCallbackReason reason,
			  const struct poptOption *opt, const char *arg, void *data);

static void count_callback(poptContext con, enum poptCallbackReason reason,
			   const struct poptOption *opt, const char *arg, void *data)
{
	(void)con;
	(void)arg;
	(void)data;
	if (reason == POPT_CALLBACK_REASON_OPTION && opt->val == 'v')
		cli.verbose++;
}

struct poptOption cli_common_options[] = {
	{ NULL, '\0', POPT_ARG_CALLBACK, (void *)count_callback, 0, NULL, NULL },
	{ "quiet", 'q', POPT_ARG_NONE, &cli.quiet, 0,
	  "Print only errors", NULL },
	{ "verbose", 'v', POPT_ARG_NONE, NULL, 'v',
	  "Print what is being done (twice: and how)", NULL },
	POPT_TABLEEND
};

struct poptOption cli_help_options[] = {
	{ NULL, '\0', POPT_ARG_CALLBACK, (void *)help_callback, 0, NULL, NULL },
	{ "help", 'h', POPT_ARG_NONE, NULL, OPT_HELP, "Show this help and exit", NULL },
	{ "usage", '\0', POPT_ARG_NONE, NULL, OPT_USAGE, "Show a short usage and exit", NULL },
	{ "version", 'V', POPT_ARG_NONE, NULL, OPT_VERSION, "Show the version and exit", NULL },
	{ "long-options", '\0', POPT_ARG_NONE | POPT_ARGFLAG_DOC_HIDDEN, NULL,
	  OPT_LONG_OPTIONS, "List long options (for completion)", NULL },
	{ "short-options", '\0', POPT_ARG_NONE | POPT_ARGFLAG_DOC_HIDDEN, NULL,
	  OPT_SHORT_OPTIONS, "List short options (for completion)", NULL },
	{ "option-args", '\0', POPT_ARG_NONE | POPT_ARGFLAG_DOC_HIDDEN, NULL,
	  OPT_OPTION_ARGS, "List the options that take an argument, with its "
	  "name (for completion)", NULL },
	POPT_TABLEEND
};

/* LIST_ARGS: "-s SIZE" and "--size SIZE", one a line, so that completion
 * knows what follows each option of this program (-s is a size to
 * cdisk-create, a socket path to cdisk-serve). */
static void list_options(const struct poptOption *t, enum list_what what)
{
	for (; t->longName || t->shortName || t->arg; t++) {
		if ((t->argInfo & POPT_ARG_MASK) == POPT_ARG_INCLUDE_TABLE) {
			list_options(t->arg, what);
			continue;
		}
		if ((t->argInfo & POPT_ARG_MASK) == POPT_ARG_CALLBACK)
			continue;
		if (t->argInfo & POPT_ARGFLAG_DOC_HIDDEN)
			continue;
		if (what == LIST_LONG && t->longName)
			printf("--%s\n", t->longName);
		else if (what == LIST_SHORT && t->shortName)
			printf("-%c\n", t->shortName);
		else if (what == LIST_ARGS && (t->argInfo & POPT_ARG_MASK) != POPT_ARG_NONE) {
			const char *arg = t->argDescrip ? t->argDescrip : "ARG";
			if (t->shortName)
				printf("-%c %s\n", t->shortName, arg);
			if (t->longName)
				printf("--%s %s\n", t->longName, arg);
		}
	}
}

static void help_callback(poptContext con, enum poptCallbackReason reason,
			  const struct poptOption *opt, const char *arg, void *data)
{
	(void)reason;
	(void)arg;
	(void)data;
	switch (opt->val) {
	case OPT_HELP:
		printf("%s - %s\n\n", program->name, program->summary);
		poptPrintHelp(con, stdout, 0);
		printf("\nExit status: 0 success, 1 failure, 2 usage error, 3 unreachable,\n"
		       "4 busy, 5 permission denied, 6 not found, 7 corrupt metadata,\n"
		       "8 try later, 9 unhealthy.  See %s(1).\n", program->name);
		break;
	case OPT_USAGE:
		poptPrintUsage(con, stdout, 0);
		break;
	case OPT_VERSION:
		printf("%s %s\n", program->name, CDISK_VERSION_STRING);
		break;
	case OPT_LONG_OPTIONS:
		list_options(program_options, LIST_LONG);
		break;
	case OPT_SHORT_OPTIONS:
		list_options(program_options, LIST_SHORT);
		break;
	case OPT_OPTION_ARGS:
		list_options(program_options, LIST_ARGS);
		break;
	}
	if (fflush(stdout) != 0 || ferror(stdout))
		exit(CDISK_EXIT_FAILURE);
	poptFreeContext(con);
	exit(CDISK_EXIT_OK);
}

static void vmessage(FILE *f, const char *prefix, const char *fmt, va_list ap)
{
	fprintf(f, "%s: %s", program ? program->name : "cdisk", prefix);
	vfprintf(f, fmt, ap);
	fputc('\n', f);
}

void cli_usage_error(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vmessage(stderr, "", fmt, ap);
	va_end(ap);
	fprintf(stderr, "Try '%s --help' for more information.\n", program->name);
	if (popt_ctx)
		poptFreeContext(popt_ctx);
	exit(CDISK_EXIT_USAGE);
}

void cli_error(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vmessage(stderr, "", fmt, ap);
	va_end(ap);
}

void cli_message(const char *fmt, ...)
{
	va_list ap;

	if (cli.quiet)
		return;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
}

/* popt names the bad value of "--pings 0x", not the option; name both. */
static noreturn void bad_option(int argc, const char **argv, int r)
{
	const char *bad = poptBadOption(popt_ctx, POPT_BADOPTION_NOALIAS);

	if ((r == POPT_ERROR_BADNUMBER || r == POPT_ERROR_OVERFLOW) && !strchr(bad, '='))
		for (int i = 2; i < argc; i++)
			if (argv[i] == bad || !strcmp(argv[i], bad))
				cli_usage_error("%s for %s: '%s'", poptStrerror(r), argv[i - 1], bad);
	cli_usage_error("%s '%s'", poptStrerror(r), bad);
}

const char **cli_parse(const struct cli_program *prog, int argc, const char **argv,
		       const struct poptOption *options, int nargs_min, int nargs_max)
{
	static char other_help[128];
	const char **args;
	int r, n = 0;

	program = prog;
	program_options = options;
	/* Never poptReadDefaultConfig(): /etc/popt aliases must not change
	 * what a cron job or an Ansible task does. */
	popt_ctx = poptGetContext(prog->name, argc, argv, options, 0);
	snprintf(other_help, sizeof(other_help), "[OPTION...] %s", prog->args);
	poptSetOtherOptionHelp(popt_ctx, other_help);
	while ((r = poptGetNextOpt(popt_ctx)) > 0)
		;
	if (r < -1)
		bad_option(argc, argv, r);
	args = poptGetArgs(popt_ctx);
	while (args && args[n])
		n++;
	if (n < nargs_min)
		cli_usage_error("missing argument: %s", prog->args);
	if (n > nargs_max)
		cli_usage_error("unexpected argument '%s'", args[nargs_max]);
	return args;
}

static void log_to_stderr(void *opaque, enum cdisk_log_level level, const char *msg)
{
	static const char *const prefix[] = {
		[CDISK_LOG_ERROR] = "error: ", [CDISK_LOG_WARNING] = "warning: ",
		[CDISK_LOG_INFO] = "", [CDISK_LOG_DEBUG] = "debug: ",
	};

	(void)opaque;
	if (level == CDISK_LOG_DEBUG && cli.verbose < 2)
		return;
	if (level == CDISK_LOG_INFO && (cli.quiet || !cli.verbose) )
		return;
	if (level == CDISK_LOG_WARNING && cli.quiet)
		return;
	fprintf(stderr, "%s: %s%s\n", program->name, prefix[level], msg);
}

struct cdisk_ctx *cli_context(void)
{
	struct cdisk_ctx *ctx = cdisk_ctx_new();

	if (!ctx) {
		cli_error("out of memory");
		exit(CDISK_EXIT_FAILURE);
	}
	cdisk_ctx_set_log(ctx, log_to_stderr, NULL);
	int r = cdisk_ctx_load_config(ctx, NULL);
	if (r < 0) {
		r = cli_exit_code(ctx, r);
		cdisk_ctx_free(ctx);
		exit(r);
	}
	return ctx;
}

int cli_exit_code(struct cdisk_ctx *ctx, int r)
{
	if (r < 0)
		cli_error("%s", cdisk_ctx_error(ctx)[0] ? cdisk_ctx_error(ctx) : strerror(-r));
	/* Output that could not be written is a failure, not a success. */
	if (fflush(stdout) != 0 && r >= 0) {
		cli_error("cannot write output: %s", strerror(errno));
		r = -EIO;
	}
	if (popt_ctx) {
		poptFreeContext(popt_ctx);
		popt_ctx = NULL;
	}
	return cd_exit_code(r < 0 ? r : 0);
}

int cli_verdict_exit_code(enum cdisk_verdict v)
{
	switch (v) {
	case CDISK_HEALTHY:
		return CDISK_EXIT_OK;
	case CDISK_DEGRADED:
		return CDISK_EXIT_UNHEALTHY;
	case CDISK_UNREACHABLE:
		return CDISK_EXIT_UNREACHABLE;
	}
	return CDISK_EXIT_FAILURE;
}

const char *cli_verdict_name(enum cdisk_verdict v)
{
	switch (v) {
	case CDISK_HEALTHY:
		return "healthy";
	case CDISK_DEGRADED:
		return "degraded";
	case CDISK_UNREACHABLE:
		return "unreachable";
	}
	return "unknown";
}

uint64_t cli_parse_size(const char *option, const char *value)
{
	uint64_t v;

	if (cd_parse_size(value, &v) < 0)
		cli_usage_error("invalid %s '%s': expected a number of bytes with an "
				"optional K, M, G, T or P suffix", option, value);
	return v;
}

bool cli_show_progress(void)
{
	return !cli.quiet && isatty(STDERR_FILENO);
}

double cli_elapsed(void)
{
	static struct timespec start;
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	if (!start.tv_sec && !start.tv_nsec)
		start = now;
	return (double)(now.tv_sec - start.tv_sec) + (double)(now.tv_nsec - start.tv_nsec) / 1e9;
}

void cli_progress(const char *fmt, ...)
{
	static char last[256];
	char line[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	/* Callbacks come faster than the figures change: draw each once. */
	if (!strcmp(line, last))
		return;
	memcpy(last, line, sizeof(last));
	fprintf(stderr, "\r%s: %s   ", program->name, line);
}

const char *cli_plural(uint64_t n)
{
	return n == 1 ? "" : "s";
}

/* Measurements to a thousandth: 0.382, not 0.38200000000000001. */
static void round_reals(json_t *j)
{
	const char *key;
	json_t *v;
	size_t i;

	if (json_is_real(j))
		json_real_set(j, round(json_real_value(j) * 1000) / 1000);
	else if (json_is_object(j))
		json_object_foreach(j, key, v)
			round_reals(v);
	else if (json_is_array(j))
		json_array_foreach(j, i, v)
			round_reals(v);
}

char *cli_json_text(json_t *j, size_t flags)
{
	if (!j)
		return NULL;
	round_reals(j);
	/* 15 digits: a thousandth of anything below 10^12 prints as rounded. */
	return json_dumps(j, flags | JSON_REAL_PRECISION(15));
}

int cli_print_json(json_t *j)
{
	char *text = cli_json_text(j, JSON_INDENT(2));

	json_decref(j);
	if (!text)
		return -ENOMEM;
	printf("%s\n", text);
	free(text);
	return 0;
}

volatile sig_atomic_t cli_interrupted;
struct cdisk *cli_running;

static void on_stop_signal(int sig)
{
	(void)sig;
	cli_interrupted = 1;
	if (cli_running)
		cdisk_sync_stop(cli_running);
}

void cli_stop_on_signals(void)
{
	signal(SIGINT, on_stop_signal);
	signal(SIGTERM, on_stop_signal);
}

void cli_sleep_a_second(void)
{
	nanosleep(&(struct timespec){ .tv_sec = 1 }, NULL);
}

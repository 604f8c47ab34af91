#ifndef LOG_H
#define LOG_H

/* One line per event on stderr: "ts=... lvl=... " followed by key=value pairs.
 * Each line goes out in a single write() so lines from threads never interleave. */

enum log_level { LOG_LVL_DEBUG, LOG_LVL_INFO, LOG_LVL_WARN, LOG_LVL_ERROR };

/* Under systemd (JOURNAL_STREAM names our stderr), start every line with its
 * sd-daemon priority prefix (<3> error, <4> warn, <6> info, <7> debug) so the
 * journal keeps the level. Returns 1 when it does. Call once, before threads. */
int log_init_journal(void);

void log_set_level(enum log_level lvl);
/* Parse "debug", "info", "warn" or "error"; -1 when unknown. */
int log_parse_level(const char *s);
int log_enabled(enum log_level lvl);
void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Copy untrusted text into out for a log line: printable ASCII except quotes and
 * backslashes is kept, the rest becomes '?', and it is cut to fit cap. Returns out. */
const char *log_escape(const char *in, char *out, unsigned cap);

/* Repeated events (a flood of refused clients, ...): the first occurrence of
 * a kind (ev plus the fields that tell kinds apart, e.g. "app=web
 * reason=\"...\"") in an interval of LOG_SUM_INTERVAL_MS is logged by the
 * caller in full; the rest are counted, and the count is logged as one line
 * "ev=EV KIND repeated=N in_ms=T" when the interval is over (log_sum_flush(),
 * called about once a second by the main or signal thread, or the next
 * occurrence after it). log_sum_note() returns 1 when the caller logs this
 * one. 64 kinds at once; a new one pushes out the least recent, whose count is
 * logged first. Thread-safe. */
#define LOG_SUM_INTERVAL_MS 10000u
int log_sum_note(enum log_level lvl, const char *ev, const char *kind);
/* Log the counts of intervals that are over (all: of every open one). */
void log_sum_flush(int all);
/* Tests: another interval. */
void log_sum_set_interval(unsigned ms);

#define log_debug(...) do { if (log_enabled(LOG_LVL_DEBUG)) log_msg(LOG_LVL_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...) log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_LVL_ERROR, __VA_ARGS__)

#endif

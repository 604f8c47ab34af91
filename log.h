#ifndef LOG_H
#define LOG_H

/* One line per event on stderr: "ts=... lvl=... " followed by key=value pairs.
 * Each line goes out in a single write() so lines from threads never interleave. */

enum log_level { LOG_LVL_DEBUG, LOG_LVL_INFO, LOG_LVL_WARN, LOG_LVL_ERROR };

void log_set_level(enum log_level lvl);
/* Parse "debug", "info", "warn" or "error"; -1 when unknown. */
int log_parse_level(const char *s);
int log_enabled(enum log_level lvl);
void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Copy untrusted text into out for a log line: printable ASCII except quotes and
 * backslashes is kept, the rest becomes '?', and it is cut to fit cap. Returns out. */
const char *log_escape(const char *in, char *out, unsigned cap);

#define log_debug(...) do { if (log_enabled(LOG_LVL_DEBUG)) log_msg(LOG_LVL_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...) log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_LVL_ERROR, __VA_ARGS__)

#endif

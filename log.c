/* log.c - key=value event lines on stderr, one write() per line. */

#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static _Atomic int current_level = LOG_LVL_INFO;
static const char *const level_names[] = {"debug", "info", "warn", "error"};
/* sd-daemon(3) priority prefixes, by level: debug, info, warning, err. */
static const char *const journal_prefix[] = {"<7>", "<6>", "<4>", "<3>"};
static _Atomic int journal_mode;

int log_init_journal(void)
{
    const char *js = getenv("JOURNAL_STREAM");
    unsigned long long dev = 0, ino = 0;
    struct stat st;
    char tail;

    /* systemd sets JOURNAL_STREAM=DEV:INODE for a stream it connected to the
     * journal; only when stderr is still that stream (not redirected by a
     * wrapper) do the prefixes mean something to the reader. */
    journal_mode = 0;
    if (js && sscanf(js, "%llu:%llu%c", &dev, &ino, &tail) == 2 && fstat(STDERR_FILENO, &st) == 0 &&
        (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino)
        journal_mode = 1;
    return journal_mode;
}

void log_set_level(enum log_level lvl)
{
    current_level = lvl;
}

int log_parse_level(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, level_names[i]) == 0)
            return i;
    return -1;
}

int log_enabled(enum log_level lvl)
{
    return (int)lvl >= current_level;
}

void log_msg(enum log_level lvl, const char *fmt, ...)
{
    char line[1024];
    struct timespec ts;
    struct tm tm;
    size_t n;
    int r;
    va_list ap;

    if (!log_enabled(lvl))
        return;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = 0;
    if (journal_mode) {
        memcpy(line, journal_prefix[lvl], 3);
        n = 3;
    }
    n += strftime(line + n, sizeof(line) - n, "ts=%Y-%m-%dT%H:%M:%S", &tm);
    r = snprintf(line + n, sizeof(line) - n, ".%03ldZ lvl=%s ", ts.tv_nsec / 1000000,
                 level_names[lvl]);
    if (r > 0)
        n += (size_t)r;
    va_start(ap, fmt);
    r = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
    va_end(ap);
    if (r > 0)
        n += (size_t)r < sizeof(line) - n - 1 ? (size_t)r : sizeof(line) - n - 2;
    line[n++] = '\n';
    /* Nothing useful to do if stderr is gone. */
    if (write(STDERR_FILENO, line, n) < 0)
        return;
}

const char *log_escape(const char *in, char *out, unsigned cap)
{
    unsigned i = 0;

    if (cap == 0)
        return "";
    for (; in && *in && i + 1 < cap; in++) {
        unsigned char c = (unsigned char)*in;
        out[i++] = (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') ? (char)c : '?';
    }
    out[i] = '\0';
    return out;
}

/* ------------------------------------------------- repeated events */

#define SUM_KINDS 64
#define SUM_EV_MAX 40
#define SUM_KIND_MAX 240

struct sum_kind {
    int used;
    enum log_level lvl;
    char ev[SUM_EV_MAX];
    char kind[SUM_KIND_MAX];
    uint64_t window_ms;         /* when the open window began; 0: none open */
    uint64_t repeated;          /* counted in it, not logged */
    uint64_t last_ms;
};

static pthread_mutex_t sum_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sum_kind sum_table[SUM_KINDS];
static _Atomic unsigned sum_interval_ms = LOG_SUM_INTERVAL_MS;

static uint64_t sum_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u + 1; /* never 0 */
}

/* Close k's window: its summary line when something was counted. Under sum_lock. */
static void sum_close_locked(struct sum_kind *k, uint64_t now)
{
    if (k->window_ms && k->repeated)
        log_msg(k->lvl, "ev=%s %s repeated=%llu in_ms=%llu msg=\"similar events in this "
                "interval, not logged one by one\"", k->ev, k->kind,
                (unsigned long long)k->repeated, (unsigned long long)(now - k->window_ms));
    k->window_ms = 0;
    k->repeated = 0;
}

void log_sum_set_interval(unsigned ms)
{
    sum_interval_ms = ms ? ms : 1;
}

int log_sum_note(enum log_level lvl, const char *ev, const char *kind)
{
    uint64_t now = sum_now_ms();
    struct sum_kind *k = NULL, *lru = NULL;
    int log_it = 1;

    if (!log_enabled(lvl))
        return 0;
    pthread_mutex_lock(&sum_lock);
    for (int i = 0; i < SUM_KINDS; i++) {
        struct sum_kind *e = &sum_table[i];
        if (e->used && strncmp(e->ev, ev, SUM_EV_MAX - 1) == 0 &&
            strncmp(e->kind, kind, SUM_KIND_MAX - 1) == 0) {
            k = e;
            break;
        }
        if (!lru || !e->used || (lru->used && e->last_ms < lru->last_ms))
            lru = e;
    }
    if (!k) {
        /* A new kind takes a free entry or the one seen least recently
         * (whose count is logged first, so nothing counted is lost). */
        k = lru;
        if (k->used)
            sum_close_locked(k, now);
        memset(k, 0, sizeof(*k));
        k->used = 1;
        k->lvl = lvl;
        snprintf(k->ev, sizeof(k->ev), "%s", ev);
        snprintf(k->kind, sizeof(k->kind), "%s", kind);
    }
    k->last_ms = now;
    if (k->window_ms && now - k->window_ms >= sum_interval_ms)
        sum_close_locked(k, now);
    if (!k->window_ms) {
        k->window_ms = now;     /* the first of a window: logged by the caller */
    } else {
        k->repeated++;
        log_it = 0;
    }
    pthread_mutex_unlock(&sum_lock);
    return log_it;
}

void log_sum_flush(int all)
{
    uint64_t now = sum_now_ms();

    pthread_mutex_lock(&sum_lock);
    for (int i = 0; i < SUM_KINDS; i++) {
        struct sum_kind *k = &sum_table[i];
        if (k->used && k->window_ms && (all || now - k->window_ms >= sum_interval_ms))
            sum_close_locked(k, now);
    }
    pthread_mutex_unlock(&sum_lock);
}

/* test_log.c - log_escape(), which every log line uses on peer-supplied text. */

#include "unit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

void test_log_escape(void)
{
    char out[16];
    const char *r;

    memset(out, 'Z', sizeof(out));
    r = log_escape("abc", out, 0);
    CHECK(r && r[0] == '\0' && out[0] == 'Z', "cap 0 writes nothing");
    r = log_escape("abc", out, 1);
    CHECK(r == out && out[0] == '\0' && out[1] == 'Z', "cap 1 gives an empty string");
    CHECK(strcmp(log_escape(NULL, out, sizeof(out)), "") == 0, "NULL input");
    CHECK(strcmp(log_escape("", out, sizeof(out)), "") == 0, "empty input");
    /* Values go inside quotes: a quote or backslash could end them, so those go;
     * spaces stay (log.h: printable ASCII except quotes and backslashes). */
    CHECK(strcmp(log_escape("a b\"c\\d\n\xff", out, sizeof(out)), "a b?c?d??") == 0,
          "unsafe bytes replaced: %s", out);
    CHECK(strcmp(log_escape("x\" ts=1 \"", out, sizeof(out)), "x? ts=1 ?") == 0,
          "no quote to close the value and forge a pair: %s", out);
    CHECK(strcmp(log_escape("\t\r\x7f\x01", out, sizeof(out)), "????") == 0,
          "control bytes replaced: %s", out);
    memset(out, 'Z', sizeof(out));
    CHECK(strcmp(log_escape("abcdef", out, 4), "abc") == 0 && out[4] == 'Z', "cut to cap: %s", out);
    CHECK(strcmp(log_escape("0123456789abcdefXYZ", out, sizeof(out)), "0123456789abcde") == 0,
          "cut to the buffer: %s", out);
}

/* log_sum_note / log_sum_flush: the first of a kind in an interval is the
 * caller's to log, the rest are counted into one line; kinds are apart. */
void test_log_summary(void)
{
    char path[] = "/tmp/unit-logsum-XXXXXX", buf[8192];
    int fd = mkstemp(path), saved = dup(STDERR_FILENO), logged = 0;
    ssize_t n;

    if (fd < 0 || saved < 0) {
        CHECK(0, "mkstemp/dup");
        return;
    }
    dup2(fd, STDERR_FILENO);
    for (int i = 0; i < 100; i++)
        logged += log_sum_note(LOG_LVL_WARN, "client_refused", "app=a reason=\"offline\"");
    CHECK(logged == 1, "%d of 100 to be logged by the caller, expected 1", logged);
    CHECK(log_sum_note(LOG_LVL_WARN, "client_refused", "app=b reason=\"offline\"") == 1,
          "another app is another kind");
    CHECK(log_sum_note(LOG_LVL_DEBUG, "x", "y") == 0, "a level that is off is never logged");
    log_sum_flush(0); /* the 10 s interval is not over: nothing yet */
    log_sum_flush(1);
    log_sum_set_interval(1);
    {
        struct timespec ts = {.tv_nsec = 5 * 1000 * 1000};
        CHECK(log_sum_note(LOG_LVL_WARN, "client_refused", "app=a reason=\"offline\"") == 1,
              "after a flush the next one starts a window");
        CHECK(log_sum_note(LOG_LVL_WARN, "client_refused", "app=a reason=\"offline\"") == 0,
              "counted");
        nanosleep(&ts, NULL);
        CHECK(log_sum_note(LOG_LVL_WARN, "client_refused", "app=a reason=\"offline\"") == 1,
              "after the interval the next one is logged again");
    }
    log_sum_flush(1);
    log_sum_set_interval(LOG_SUM_INTERVAL_MS);
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    n = pread(fd, buf, sizeof(buf) - 1, 0);
    close(fd);
    unlink(path);
    buf[n > 0 ? n : 0] = '\0';
    CHECK(strstr(buf, "lvl=warn ev=client_refused app=a reason=\"offline\" repeated=99 in_ms=") != NULL,
          "no count of 99: %s", buf);
    CHECK(strstr(buf, "app=b reason=\"offline\" repeated=") == NULL, "a kind seen once has no count: %s",
          buf);
    CHECK(strstr(buf, "ev=client_refused app=a reason=\"offline\" repeated=1 in_ms=") != NULL,
          "the short window's count: %s", buf);
}

/* test_log.c - log_escape(), which every log line uses on peer-supplied text. */

#include "unit.h"

#include <string.h>

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

/* test_json_depth.c - json_depth_ok(), the nesting bound checked before
 * Jansson parses a web API body (and, later, a tunnel frame header). */

#include "unit.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "json_depth.h"

static int ok(const char *s, unsigned max)
{
    return json_depth_ok(s, strlen(s), max);
}

/* n openers of kind '[' or '{"a":', then a scalar, then n closers. */
static char *nested(size_t n, int objects)
{
    const char *open = objects ? "{\"a\":" : "[";
    size_t olen = strlen(open), len = n * olen + 1 + n;
    char *s = malloc(len + 1), *p = s;

    if (!s)
        return NULL;
    for (size_t i = 0; i < n; i++, p += olen)
        memcpy(p, open, olen);
    *p++ = '1';
    memset(p, objects ? '}' : ']', n);
    s[len] = '\0';
    return s;
}

void test_json_depth(void)
{
    char *s;

    CHECK(ok("", 0) && ok("1", 0) && ok("\"x\"", 0) && ok("null", 0), "scalars are depth 0");
    CHECK(!ok("{}", 0) && ok("{}", 1) && ok("[1,2,3]", 1) && ok("{\"a\":1,\"b\":[]}", 2),
          "objects and arrays count one level each");
    CHECK(!ok("{\"a\":[]}", 1), "an array in an object is depth 2");
    CHECK(ok("[][][][]", 1) && ok("[[],[],[]]", 2), "siblings do not add up");
    /* Brackets inside strings do not count, escapes included. */
    CHECK(ok("\"[[[[[[[[\"", 0), "brackets in a string");
    CHECK(ok("[\"\\\"[[[[\"]", 1), "an escaped quote does not end the string");
    CHECK(!ok("[\"\\\\\"[[]]", 1), "an escaped backslash does: the brackets after it count");
    CHECK(ok("[\"\\\\\\\"[[\"]", 1), "backslash pair, then an escaped quote");
    CHECK(ok("[\"\\u005b\\u007b[\"]", 1), "\\u escapes are string bytes");
    CHECK(ok("\"abc\\", 0) && ok("\"\\", 0), "a backslash at the very end reads nothing past it");
    CHECK(ok("\"unterminated [[[[", 0), "an unterminated string swallows the rest");
    /* Closers without openers are not credit for later openers. */
    CHECK(!ok("]]]]]][[", 1) && ok("]]]]]][", 1), "stray closers do not lower the count");
    CHECK(!ok("[[[[[[[[[[", 9) && ok("[[[[[[[[[", 9), "openers without closers count");
    {
        static const char with_nul[] = "[\"\0[[[\"]";
        CHECK(json_depth_ok(with_nul, sizeof(with_nul) - 1, 1), "a NUL byte inside a string");
        CHECK(!json_depth_ok("[\0[", 3, 1), "a NUL byte outside a string is just a byte");
    }
    CHECK(json_depth_ok(NULL, 0, 1), "empty input");

    /* At the limit and one past, both kinds; 10,000 deep is refused quickly. */
    for (int objects = 0; objects <= 1; objects++) {
        s = nested(32, objects);
        CHECK(s && ok(s, 32) && !ok(s, 31), "32 levels (%s)", objects ? "objects" : "arrays");
        free(s);
        s = nested(10000, objects);
        CHECK(s && !ok(s, 32), "10,000 levels (%s)", objects ? "objects" : "arrays");
        free(s);
    }

    /* Whatever passes at 32 levels parses (Jansson agrees on where strings end). */
    {
        static const char *bodies[] = {
            "{\"name\":\"a[{\\\"b\",\"x\":[[[1]]]}",
            "{\"k\":\"\\\\\",\"l\":[{}]}",
            "[\"\\u0022\"]",
        };
        for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
            json_error_t jerr;
            json_t *v;
            CHECK(ok(bodies[i], 4), "body %zu within 4 levels", i);
            v = json_loads(bodies[i], JSON_REJECT_DUPLICATES, &jerr);
            CHECK(v != NULL, "body %zu parses: %s", i, jerr.text);
            json_decref(v);
        }
    }
}

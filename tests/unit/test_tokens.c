/* Scoped tokens' scopes (tokens.c) and the port range parser they share
 * with --allow-ports (netio.c). */

#include <string.h>

#include "netio.h"
#include "tokens.h"
#include "unit.h"

static int parse(const char *text, struct token_scope *s)
{
    char err[300];
    json_error_t jerr;
    json_t *o = json_loads(text, 0, &jerr);
    int rc;

    CHECK(o != NULL, "bad test JSON %s", text);
    if (!o)
        return -2;
    err[0] = '\0';
    rc = token_scope_from_json(o, s, err, sizeof(err));
    CHECK(rc == 0 || err[0], "refused without a reason: %s", text);
    json_decref(o);
    return rc;
}

void test_port_ranges(void)
{
    int lo[4], hi[4];

    CHECK(net_parse_port_ranges("80", lo, hi, 4) == 1 && lo[0] == 80 && hi[0] == 80, "one port");
    CHECK(net_parse_port_ranges("1-2,10-20,65535", lo, hi, 4) == 3 && lo[1] == 10 &&
              hi[1] == 20 && lo[2] == 65535, "three ranges");
    CHECK(net_parse_port_ranges("1,2,3,4,5", lo, hi, 4) == -1, "more than max");
    static const char *const bad[] = {"", "0", "65536", "2-1", " 1", "+1", "1-", "-1",
                                      "1,", ",1", "1 -2", "1-+2", "a", "1-2-3", "99999999999"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK(net_parse_port_ranges(bad[i], lo, hi, 4) == -1, "'%s' accepted", bad[i]);
}

void test_token_scopes(void)
{
    struct token_scope s;

    CHECK(parse("{\"label\":\"alice\",\"privates\":[\"alice\",\"nas-*\"],\"ports\":\"20000-20099\"}",
                &s) == 0, "a plain scope");
    CHECK(s.max_apps == 10 && s.max_conns == 100, "defaults %u %u", s.max_apps, s.max_conns);
    CHECK(scope_allows_private(&s, "alice") && !scope_allows_private(&s, "alice2") &&
              !scope_allows_private(&s, "alic"), "exact names");
    CHECK(scope_allows_private(&s, "nas-") && scope_allows_private(&s, "nas-1") &&
              !scope_allows_private(&s, "nas"), "prefixes");
    CHECK(scope_allows_port(&s, 20000) && scope_allows_port(&s, 20099) &&
              !scope_allows_port(&s, 19999) && !scope_allows_port(&s, 20100), "port range");
    CHECK(parse("{\"label\":\"any\",\"privates\":[\"*\"],\"ports\":\"1\",\"max_apps\":1024,"
                "\"max_conns\":100000}", &s) == 0 && scope_allows_private(&s, "x"),
          "'*' and the largest limits");
    static const char *const bad[] = {
        "{\"privates\":[\"a\"],\"ports\":\"1\"}",
        "{\"label\":\"\",\"privates\":[\"a\"],\"ports\":\"1\"}",
        "{\"label\":\"a\\\"b\",\"privates\":[\"a\"],\"ports\":\"1\"}",
        "{\"label\":\"a\\u0001\",\"privates\":[\"a\"],\"ports\":\"1\"}",
        "{\"label\":\"a\",\"privates\":[],\"ports\":\"1\"}",
        "{\"label\":\"a\",\"privates\":\"a\",\"ports\":\"1\"}",
        "{\"label\":\"a\",\"privates\":[\"a*b\"],\"ports\":\"1\"}",
        "{\"label\":\"a\",\"privates\":[\"**\"],\"ports\":\"1\"}",
        "{\"label\":\"a\",\"privates\":[1],\"ports\":\"1\"}",
        "{\"label\":\"a\",\"privates\":[\"a\"],\"ports\":\"1-2,3,4,5,6,7,8,9,10\"}",
        "{\"label\":\"a\",\"privates\":[\"a\"],\"ports\":1}",
        "{\"label\":\"a\",\"privates\":[\"a\"],\"ports\":\"1\",\"max_apps\":0}",
        "{\"label\":\"a\",\"privates\":[\"a\"],\"ports\":\"1\",\"max_apps\":1025}",
        "{\"label\":\"a\",\"privates\":[\"a\"],\"ports\":\"1\",\"max_conns\":100001}",
        "{\"label\":\"a\",\"privates\":[\"a\"],\"ports\":\"1\",\"max_conns\":1.5}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK(parse(bad[i], &s) == -1, "accepted: %s", bad[i]);
}

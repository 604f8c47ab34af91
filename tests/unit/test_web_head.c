/* test_web_head.c - web_head_parse(), the request head parser of the web front:
 * data-driven cases (accepted heads and every refusal), and for each case
 * that every prefix gives "more" or the same answer, so a request cut at any
 * byte is never judged differently from the whole. */

#include "unit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "web_head.h"

#define HEAD_MAX 8192
#define BODY_MAX 16384

struct head_case {
    const char *what;
    const char *text;
    int result;
    size_t body_len;   /* for WEB_HEAD_OK */
};

static const struct head_case cases[] = {
    {"GET", "GET /list HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\r\n", WEB_HEAD_OK, 0},
    {"HTTP/1.0, no fields", "GET / HTTP/1.0\r\n\r\n", WEB_HEAD_OK, 0},
    {"POST with a body", "POST /register HTTP/1.1\r\nContent-Length: 12\r\n\r\n", WEB_HEAD_OK, 12},
    {"POST, empty body", "POST /register HTTP/1.1\r\nContent-Length: 0\r\n\r\n", WEB_HEAD_OK, 0},
    {"name case and OWS", "POST / HTTP/1.1\r\ncontent-LENGTH: \t 0007 \t\r\n\r\n", WEB_HEAD_OK, 7},
    {"CL at the limit", "POST / HTTP/1.1\r\nContent-Length: 16384\r\n\r\n", WEB_HEAD_OK, 16384},
    {"GET with a body", "GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\n", WEB_HEAD_OK, 3},
    {"DELETE without CL", "DELETE /x HTTP/1.1\r\n\r\n", WEB_HEAD_OK, 0},
    {"empty value", "GET / HTTP/1.1\r\nX-Empty:\r\n\r\n", WEB_HEAD_OK, 0},
    {"obs-text in a value", "GET / HTTP/1.1\r\nX: caf\xc3\xa9\r\n\r\n", WEB_HEAD_OK, 0},
    {"query string", "GET /a?b=c&d=%20 HTTP/1.1\r\n\r\n", WEB_HEAD_OK, 0},
    {"body bytes after the head", "POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", WEB_HEAD_OK, 2},

    {"incomplete request line", "GET /list HTT", WEB_HEAD_MORE, 0},
    {"incomplete head", "GET /list HTTP/1.1\r\nHost: x\r\n", WEB_HEAD_MORE, 0},
    {"CR of the blank line only", "GET / HTTP/1.1\r\nHost: x\r\n\r", WEB_HEAD_MORE, 0},
    {"nothing", "", WEB_HEAD_MORE, 0},

    {"bare LF ends a line", "GET / HTTP/1.1\nHost: x\r\n\r\n", 400, 0},
    {"bare LF blank line", "GET / HTTP/1.1\r\nHost: x\r\n\n", 400, 0},
    {"bare CR", "GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", 400, 0},
    {"leading blank line", "\r\nGET / HTTP/1.1\r\n\r\n", 400, 0},
    {"two spaces", "GET  / HTTP/1.1\r\n\r\n", 400, 0},
    {"no target", "GET HTTP/1.1\r\n\r\n", 400, 0},
    {"tab separator", "GET\t/ HTTP/1.1\r\n\r\n", 400, 0},
    {"HTTP/2", "GET / HTTP/2.0\r\n\r\n", 400, 0},
    {"HTTP/1.1 lower case", "GET / http/1.1\r\n\r\n", 400, 0},
    {"trailing space", "GET / HTTP/1.1 \r\n\r\n", 400, 0},
    {"method too long", "ABCDEFGHIJKLMNOPQ / HTTP/1.1\r\n\r\n", 400, 0},
    {"control byte in target", "GET /a\x01 HTTP/1.1\r\n\r\n", 400, 0},
    {"folded line", "GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", 400, 0},
    {"space before colon", "GET / HTTP/1.1\r\nContent-Length : 5\r\n\r\n", 400, 0},
    {"no colon", "GET / HTTP/1.1\r\nHost x\r\n\r\n", 400, 0},
    {"empty name", "GET / HTTP/1.1\r\n: x\r\n\r\n", 400, 0},
    {"NUL in a value", "GET / HTTP/1.1\r\nX: a\0b\r\n\r\n", 400, 0},
    {"DEL in a value", "GET / HTTP/1.1\r\nX: a\x7f\r\n\r\n", 400, 0},
    {"two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400, 0},
    {"two equal CLs", "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 400, 0},
    {"two different CLs", "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400, 0},
    {"CL list", "POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n", 400, 0},
    {"CL sign", "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n", 400, 0},
    {"CL negative", "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, 0},
    {"CL hex", "POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n", 400, 0},
    {"CL empty", "POST / HTTP/1.1\r\nContent-Length:\r\n\r\n", 400, 0},
    {"CL inner space", "POST / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n", 400, 0},
    {"TE and CL", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 400, 0},
    {"CL and TE", "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400, 0},

    {"POST without CL", "POST /register HTTP/1.1\r\nHost: x\r\n\r\n", 411, 0},
    {"PUT without CL", "PUT /x HTTP/1.1\r\n\r\n", 411, 0},
    {"PATCH without CL", "PATCH /x HTTP/1.1\r\n\r\n", 411, 0},
    {"chunked", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411, 0},
    {"TE on GET", "GET / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n", 411, 0},

    {"CL one over", "POST / HTTP/1.1\r\nContent-Length: 16385\r\n\r\n", 413, 0},
    {"CL huge", "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n", 413, 0},
    {"CL too big before the end of head", "POST / HTTP/1.1\r\nContent-Length: 20000\r\n", 413, 0},
};

static void check_prefixes(const struct head_case *c, size_t len, int full)
{
    struct web_head h;

    for (size_t n = 0; n < len; n++) {
        int r = web_head_parse(c->text, n, HEAD_MAX, BODY_MAX, &h);
        if (r != WEB_HEAD_MORE && r != full) {
            CHECK(0, "%s: the prefix of %zu bytes gives %d, the whole %d", c->what, n, r, full);
            return;
        }
    }
}

static size_t case_len(const struct head_case *c)
{
    /* Two cases hold a NUL: their length is up to the blank line. */
    if (strcmp(c->what, "NUL in a value") == 0)
        return sizeof("GET / HTTP/1.1\r\nX: a\0b\r\n\r\n") - 1;
    return strlen(c->text);
}

void test_web_head_cases(void)
{
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct head_case *c = &cases[i];
        struct web_head h;
        size_t len = case_len(c);
        int r = web_head_parse(c->text, len, HEAD_MAX, BODY_MAX, &h);

        CHECK(r == c->result, "%s: %d, expected %d (%s)", c->what, r, c->result,
              h.why ? h.why : "-");
        if (r >= 400)
            CHECK(h.why && h.why[0], "%s: refused without a reason", c->what);
        if (r == WEB_HEAD_OK && c->result == WEB_HEAD_OK) {
            const char *end = strstr(c->text, "\r\n\r\n");
            CHECK(end && h.head_len == (size_t)(end - c->text) + 4, "%s: head_len %zu",
                  c->what, h.head_len);
            CHECK(h.body_len == c->body_len, "%s: body_len %zu, expected %zu", c->what,
                  h.body_len, c->body_len);
            CHECK(h.why == NULL, "%s: a reason for an accepted head", c->what);
        }
        check_prefixes(c, len, r);
    }
}

void test_web_head_flags(void)
{
    struct web_head h;
    static const char head_req[] = "HEAD / HTTP/1.1\r\n\r\n";
    static const char expect[] =
        "POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 5\r\n\r\n";

    CHECK(web_head_parse(head_req, strlen(head_req), HEAD_MAX, BODY_MAX, &h) == WEB_HEAD_OK &&
              h.is_head && !h.has_length && !h.expect_continue,
          "HEAD");
    CHECK(web_head_parse("head / HTTP/1.1\r\n\r\n", 19, HEAD_MAX, BODY_MAX, &h) == WEB_HEAD_OK &&
              !h.is_head,
          "methods are case-sensitive: 'head' is not HEAD");
    CHECK(web_head_parse(expect, strlen(expect), HEAD_MAX, BODY_MAX, &h) == WEB_HEAD_OK &&
              h.expect_continue && h.has_length && h.body_len == 5 && !h.is_head,
          "Expect: 100-continue");
}

/* The head size limit, the field count limit, and what lies past head_max. */
void test_web_head_limits(void)
{
    struct web_head h;
    size_t cap = HEAD_MAX + 100;
    char *buf = malloc(cap);
    size_t n;
    int r;

    if (!buf) {
        CHECK(0, "out of memory");
        return;
    }
    /* A head of exactly HEAD_MAX bytes is accepted, one byte more is 431. */
    for (int extra = 0; extra <= 1; extra++) {
        const char *start = "GET / HTTP/1.1\r\nX-Pad: ";
        size_t sl = strlen(start), total = HEAD_MAX + (size_t)extra;
        memcpy(buf, start, sl);
        memset(buf + sl, 'a', total - sl - 4);
        memcpy(buf + total - 4, "\r\n\r\n", 4);
        r = web_head_parse(buf, total, HEAD_MAX, BODY_MAX, &h);
        CHECK(r == (extra ? 431 : WEB_HEAD_OK), "head of %zu bytes: %d", total, r);
        if (!extra)
            CHECK(h.head_len == HEAD_MAX, "head_len %zu", h.head_len);
        r = web_head_parse(buf, total - 1, HEAD_MAX, BODY_MAX, &h);
        CHECK(r == (extra ? 431 : WEB_HEAD_MORE), "head of %zu bytes less one: %d", total, r);
    }
    /* No line end at all: "more" until head_max bytes are there, then 431. */
    memset(buf, 'G', cap);
    CHECK(web_head_parse(buf, HEAD_MAX - 1, HEAD_MAX, BODY_MAX, &h) == WEB_HEAD_MORE, "8191 x G");
    CHECK(web_head_parse(buf, HEAD_MAX, HEAD_MAX, BODY_MAX, &h) == 431, "8192 x G");
    CHECK(web_head_parse(buf, cap, HEAD_MAX, BODY_MAX, &h) == 431, "8292 x G");
    /* 64 fields pass, 65 do not. */
    for (int count = WEB_HEAD_MAX_FIELDS; count <= WEB_HEAD_MAX_FIELDS + 1; count++) {
        n = (size_t)snprintf(buf, cap, "GET / HTTP/1.1\r\n");
        for (int i = 0; i < count; i++)
            n += (size_t)snprintf(buf + n, cap - n, "X-%d: v\r\n", i);
        n += (size_t)snprintf(buf + n, cap - n, "\r\n");
        r = web_head_parse(buf, n, HEAD_MAX, BODY_MAX, &h);
        CHECK(r == (count > WEB_HEAD_MAX_FIELDS ? 431 : WEB_HEAD_OK), "%d fields: %d", count, r);
    }
    /* Bytes past the head are not looked at (a body may hold anything). */
    {
        static const char with_body[] = "POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n\r\n\n\0";
        CHECK(web_head_parse(with_body, sizeof(with_body), HEAD_MAX, BODY_MAX, &h) ==
                      WEB_HEAD_OK && h.body_len == 3,
              "the body is not the head's business");
    }
    free(buf);
}

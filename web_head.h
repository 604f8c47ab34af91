#ifndef WEB_HEAD_H
#define WEB_HEAD_H

/* The HTTP/1.x request head as the web front (web_front.c) reads it before
 * CivetWeb sees a byte: a pure function over bytes, no I/O, no allocation,
 * no recursion (unit-tested in tests/unit/test_web_head.c, fuzzed by
 * fuzz/fuzz_web_head.c).
 *
 * Strict on purpose, so that the front and CivetWeb cannot disagree about where
 * a request ends (request smuggling): every line ends in CRLF (no bare CR or
 * LF), no folded lines, no space before a field's colon, no control bytes; at
 * most one Content-Length, plain digits; Transfer-Encoding is refused (411, or
 * 400 together with a Content-Length); POST, PUT and PATCH need a
 * Content-Length (411); one Host at most. */

#include <stddef.h>

/* Fields of one head at most (CivetWeb 1.15 keeps 64: MG_MAX_HEADERS). */
#define WEB_HEAD_MAX_FIELDS 64
/* Longest method token accepted. */
#define WEB_HEAD_MAX_METHOD 16

/* Results of web_head_parse() besides an HTTP status (400, 411, 413, 431). */
#define WEB_HEAD_MORE 0   /* no decision yet: the head is not complete */
#define WEB_HEAD_OK 1     /* a complete, acceptable head */

struct web_head {
    size_t head_len;     /* bytes of the head, the blank line included */
    size_t body_len;     /* the Content-Length (0 without one) */
    int has_length;      /* a Content-Length field was given */
    int is_head;         /* method HEAD: the answer carries no body */
    int expect_continue; /* Expect: 100-continue */
    const char *why;     /* for a refusal: a sentence for the client and the log */
};

/* Look at the request head in buf[0..len). The decision depends only on the
 * first head_max bytes, and once made it stays the same whatever bytes are
 * appended (WEB_HEAD_MORE is the only answer that may change):
 *   WEB_HEAD_MORE  the head is not complete yet and nothing wrong was seen;
 *   WEB_HEAD_OK    out holds the head's length and what the front needs;
 *   400            malformed (out->why says what);
 *   411            a body-carrying method without Content-Length, or chunked;
 *   413            Content-Length above body_max;
 *   431            no end of head within head_max bytes, or too many fields.
 * Lines are judged in order as they complete, so a bad line is refused at
 * once, without waiting for the rest. out is always written. */
int web_head_parse(const char *buf, size_t len, size_t head_max, size_t body_max,
                   struct web_head *out);

#endif

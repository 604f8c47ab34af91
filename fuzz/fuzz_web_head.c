/* fuzz_web_head.c - libFuzzer harness for web_head_parse(), the request head
 * parser of the web front (web_front.c), with the front's limits (8 KiB head,
 * 16 KiB body).
 *
 * Promises checked (abort on any break):
 *   - the answer is WEB_HEAD_MORE, WEB_HEAD_OK, 400, 411, 413 or 431, and a
 *     refusal has a reason;
 *   - an accepted head ends in CRLF CRLF at head_len <= min(len, 8 KiB), has
 *     no bare CR or LF, at most one Content-Length (whose digits are
 *     body_len <= 16 KiB), no Transfer-Encoding, and a Content-Length if the
 *     method is POST, PUT or PATCH: checked against a separate, naive reading
 *     of the same bytes;
 *   - no answer but "more" without a decision: no CRLF CRLF in the first 8 KiB
 *     means never OK; 8 KiB without one means never "more";
 *   - the answer never changes with more bytes: the input cut at a few points
 *     gives "more" or the same answer; an accepted head cut to head_len gives
 *     the same head, and one byte shorter gives "more";
 *   - the parser runs in a thread with a release build's 64 KiB stack
 *     (netio.h THREAD_STACK_SIZE, the front's plain-HTTP connection threads,
 *     the smallest it runs on), so a parser that recursed would fail here. */

#include <stdint.h>
#include <string.h>
#include <strings.h>

#include "guard.h"
#include "web_api.h"
#include "web_head.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define HEAD_MAX 8192             /* WEB_FRONT_HEAD_MAX */
#define STACK_SIZE (64u * 1024)   /* netio.h THREAD_STACK_SIZE, release build */

struct job {
    const char *buf;
    size_t len;
};

static int parse(const char *buf, size_t len, struct web_head *h)
{
    int r = web_head_parse(buf, len, HEAD_MAX, WEB_MAX_BODY, h);

    FUZZ_ASSERT(r == WEB_HEAD_MORE || r == WEB_HEAD_OK || r == 400 || r == 411 || r == 413 ||
                r == 431);
    if (r >= 400)
        FUZZ_ASSERT(h->why && h->why[0]);
    else if (r == WEB_HEAD_OK)
        FUZZ_ASSERT(h->why == NULL);
    return r;
}

static int same_head(const struct web_head *a, const struct web_head *b)
{
    return a->head_len == b->head_len && a->body_len == b->body_len &&
           a->has_length == b->has_length && a->is_head == b->is_head &&
           a->expect_continue == b->expect_continue;
}

/* A naive second reading of an accepted head, line by line. */
static void check_accepted(const char *buf, const struct web_head *h)
{
    size_t pos = 0, lengths = 0, line = 0, method_len;
    const char *sp = memchr(buf, ' ', h->head_len);
    size_t cl_value = 0;

    FUZZ_ASSERT(h->head_len >= 16 && h->head_len <= HEAD_MAX); /* "X / HTTP/1.1" CRLF CRLF */
    FUZZ_ASSERT(memcmp(buf + h->head_len - 4, "\r\n\r\n", 4) == 0);
    FUZZ_ASSERT(h->body_len <= WEB_MAX_BODY);
    FUZZ_ASSERT(h->has_length || h->body_len == 0);
    FUZZ_ASSERT(sp != NULL);
    method_len = (size_t)(sp - buf);
    FUZZ_ASSERT(h->is_head == (method_len == 4 && memcmp(buf, "HEAD", 4) == 0));
    while (pos < h->head_len) {
        const char *lf = memchr(buf + pos, '\n', h->head_len - pos);
        size_t end, n;
        FUZZ_ASSERT(lf != NULL);
        end = (size_t)(lf - buf);
        FUZZ_ASSERT(end > pos && buf[end - 1] == '\r');
        n = end - 1 - pos;
        FUZZ_ASSERT(memchr(buf + pos, '\r', n) == NULL);
        if (line > 0 && n > 0) {
            const char *colon = memchr(buf + pos, ':', n);
            FUZZ_ASSERT(colon != NULL && colon > buf + pos);
            if ((size_t)(colon - (buf + pos)) == 14 &&
                strncasecmp(buf + pos, "content-length", 14) == 0) {
                size_t v = (size_t)(colon - buf) + 1, digits = 0;
                lengths++;
                while (v < end - 1 && (buf[v] == ' ' || buf[v] == '\t'))
                    v++;
                for (; v < end - 1 && buf[v] >= '0' && buf[v] <= '9'; v++, digits++) {
                    cl_value = cl_value * 10 + (size_t)(buf[v] - '0');
                    FUZZ_ASSERT(cl_value <= WEB_MAX_BODY);
                }
                FUZZ_ASSERT(digits > 0);
                while (v < end - 1 && (buf[v] == ' ' || buf[v] == '\t'))
                    v++;
                FUZZ_ASSERT(v == end - 1);
            }
            FUZZ_ASSERT(!((size_t)(colon - (buf + pos)) == 17 &&
                          strncasecmp(buf + pos, "transfer-encoding", 17) == 0));
        }
        FUZZ_ASSERT(line == 0 || n > 0 || end + 1 == h->head_len);
        pos = end + 1;
        line++;
    }
    FUZZ_ASSERT(lengths == (size_t)h->has_length && lengths <= 1);
    FUZZ_ASSERT(cl_value == h->body_len);
    if ((method_len == 4 && memcmp(buf, "POST", 4) == 0) ||
        (method_len == 3 && memcmp(buf, "PUT", 3) == 0) ||
        (method_len == 5 && memcmp(buf, "PATCH", 5) == 0))
        FUZZ_ASSERT(h->has_length);
}

static void *run_parse(void *arg)
{
    const struct job *j = arg;
    struct web_head h, h2;
    size_t scan = j->len < HEAD_MAX ? j->len : HEAD_MAX;
    const char *end = memmem(j->buf, scan, "\r\n\r\n", 4);
    int r = parse(j->buf, j->len, &h);
    size_t cuts[4];

    if (!end)
        FUZZ_ASSERT(r != WEB_HEAD_OK);
    if (j->len >= HEAD_MAX && !end)
        FUZZ_ASSERT(r != WEB_HEAD_MORE);
    if (r == WEB_HEAD_OK) {
        check_accepted(j->buf, &h);
        FUZZ_ASSERT(parse(j->buf, h.head_len, &h2) == WEB_HEAD_OK && same_head(&h, &h2));
        FUZZ_ASSERT(parse(j->buf, h.head_len - 1, &h2) == WEB_HEAD_MORE);
    }
    /* Prefixes: the first byte's worth, a third, a half, all but one. */
    cuts[0] = j->len ? (unsigned char)j->buf[0] % (j->len + 1) : 0;
    cuts[1] = j->len / 3;
    cuts[2] = j->len / 2;
    cuts[3] = j->len ? j->len - 1 : 0;
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        int rp = parse(j->buf, cuts[i], &h2);
        FUZZ_ASSERT(rp == WEB_HEAD_MORE || rp == r);
        if (rp == WEB_HEAD_OK)
            FUZZ_ASSERT(same_head(&h, &h2));
    }
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct job j;

    if (size > HEAD_MAX + WEB_MAX_BODY)
        return 0;  /* the front never holds more than head and body */
    j.buf = (const char *)guarded_copy(data, size);
    j.len = size;
    fuzz_run_on_stack(run_parse, &j, STACK_SIZE);
    return 0;
}

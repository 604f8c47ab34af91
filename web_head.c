/* web_head.c - the request head parser of the web front (see web_head.h).
 *
 * One pass over the complete lines of the first head_max bytes, each line
 * judged as soon as its CRLF is there. Nothing is copied: the front forwards
 * the very bytes it judged. Rules from RFC 9112 (message syntax) and RFC 9110
 * (field syntax), taking the strict choice wherever the RFC allows one. */

#include "web_head.h"

#include <string.h>
#include <strings.h>

struct wh_fields {
    int needs_length;  /* POST, PUT, PATCH */
    int has_te;
    int hosts;
};

/* tchar of RFC 9110 5.6.2: the bytes of methods and field names. */
static int wh_is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return 1;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* A byte a field value may hold: HTAB, SP, visible ASCII, obs-text. */
static int wh_is_value_byte(unsigned char c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

static int wh_refuse(struct web_head *out, int status, const char *why)
{
    out->why = why;
    return status;
}

static int wh_token_is(const char *p, size_t n, const char *word)
{
    return strlen(word) == n && memcmp(p, word, n) == 0;
}

static int wh_name_is(const char *p, size_t n, const char *name)
{
    return strlen(name) == n && strncasecmp(p, name, n) == 0;
}

/* "METHOD SP request-target SP HTTP/1.x", single spaces. */
static int wh_request_line(const char *p, size_t n, struct web_head *out, struct wh_fields *f)
{
    size_t i = 0, method_len, target_start;

    while (i < n && wh_is_tchar((unsigned char)p[i]))
        i++;
    method_len = i;
    if (method_len == 0 || method_len > WEB_HEAD_MAX_METHOD || i >= n || p[i] != ' ')
        return wh_refuse(out, 400, "malformed request line (expected: METHOD /path HTTP/1.1)");
    target_start = ++i;
    while (i < n && (unsigned char)p[i] > 0x20 && (unsigned char)p[i] < 0x7f)
        i++;
    if (i == target_start || i >= n || p[i] != ' ')
        return wh_refuse(out, 400, "malformed request line (expected: METHOD /path HTTP/1.1)");
    i++;
    if (!wh_token_is(p + i, n - i, "HTTP/1.1") && !wh_token_is(p + i, n - i, "HTTP/1.0"))
        return wh_refuse(out, 400, "only HTTP/1.0 and HTTP/1.1 are served here");
    out->is_head = wh_token_is(p, method_len, "HEAD");
    f->needs_length = wh_token_is(p, method_len, "POST") || wh_token_is(p, method_len, "PUT") ||
                      wh_token_is(p, method_len, "PATCH");
    return WEB_HEAD_OK;
}

/* Content-Length: 1*DIGIT (no sign, no list). Values above body_max are 413. */
static int wh_content_length(const char *v, size_t n, size_t body_max, struct web_head *out)
{
    size_t value = 0;
    int too_big = 0;

    if (out->has_length)
        return wh_refuse(out, 400, "more than one Content-Length header");
    if (n == 0)
        return wh_refuse(out, 400, "malformed Content-Length (digits only)");
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return wh_refuse(out, 400, "malformed Content-Length (digits only)");
        if (!too_big) {
            value = value * 10 + (size_t)(v[i] - '0');
            too_big = value > body_max;
        }
    }
    if (too_big)
        return wh_refuse(out, 413, "the request body is too large");
    out->has_length = 1;
    out->body_len = value;
    return WEB_HEAD_OK;
}

/* "name: OWS value OWS". */
static int wh_field_line(const char *p, size_t n, size_t body_max, struct web_head *out,
                         struct wh_fields *f)
{
    size_t name_len = 0, vs, ve;

    if (p[0] == ' ' || p[0] == '\t')
        return wh_refuse(out, 400, "folded header lines are not accepted");
    while (name_len < n && wh_is_tchar((unsigned char)p[name_len]))
        name_len++;
    if (name_len == 0 || name_len >= n || p[name_len] != ':')
        return wh_refuse(out, 400, "malformed header line (expected: Name: value)");
    for (size_t i = name_len + 1; i < n; i++)
        if (!wh_is_value_byte((unsigned char)p[i]))
            return wh_refuse(out, 400, "a control character in a header value");
    vs = name_len + 1;
    ve = n;
    while (vs < ve && (p[vs] == ' ' || p[vs] == '\t'))
        vs++;
    while (ve > vs && (p[ve - 1] == ' ' || p[ve - 1] == '\t'))
        ve--;
    if (wh_name_is(p, name_len, "Content-Length"))
        return wh_content_length(p + vs, ve - vs, body_max, out);
    if (wh_name_is(p, name_len, "Transfer-Encoding"))
        f->has_te = 1;
    else if (wh_name_is(p, name_len, "Host") && ++f->hosts > 1)
        return wh_refuse(out, 400, "more than one Host header");
    else if (wh_name_is(p, name_len, "Expect") && ve - vs == 12 &&
             strncasecmp(p + vs, "100-continue", 12) == 0)
        out->expect_continue = 1;
    return WEB_HEAD_OK;
}

/* The blank line: what can only be judged with every field seen. */
static int wh_end_of_head(struct web_head *out, const struct wh_fields *f)
{
    if (f->has_te && out->has_length)
        return wh_refuse(out, 400, "Transfer-Encoding together with Content-Length");
    if (f->has_te || (f->needs_length && !out->has_length))
        return wh_refuse(out, 411, "a Content-Length header is required (no chunked bodies)");
    return WEB_HEAD_OK;
}

int web_head_parse(const char *buf, size_t len, size_t head_max, size_t body_max,
                   struct web_head *out)
{
    size_t scan = len < head_max ? len : head_max;
    size_t pos = 0, fields = 0;
    struct wh_fields f = {0, 0, 0};

    memset(out, 0, sizeof(*out));
    for (unsigned line = 0;; line++) {
        const char *lf = scan > pos ? memchr(buf + pos, '\n', scan - pos) : NULL;
        const char *p = buf + pos;
        size_t end, n;
        int rc;

        if (!lf) {
            if (len >= head_max)
                return wh_refuse(out, 431, "the request head is too large");
            return WEB_HEAD_MORE;
        }
        end = (size_t)(lf - buf);
        if (end == pos || buf[end - 1] != '\r')
            return wh_refuse(out, 400, "request head lines must end in CRLF");
        n = end - 1 - pos;
        if (memchr(p, '\r', n))
            return wh_refuse(out, 400, "a CR without LF in the request head");
        if (line == 0) {
            rc = wh_request_line(p, n, out, &f);
        } else if (n == 0) {
            rc = wh_end_of_head(out, &f);
            if (rc == WEB_HEAD_OK)
                out->head_len = end + 1;
            return rc;
        } else if (++fields > WEB_HEAD_MAX_FIELDS) {
            rc = wh_refuse(out, 431, "too many header fields");
        } else {
            rc = wh_field_line(p, n, body_max, out, &f);
        }
        if (rc != WEB_HEAD_OK)
            return rc;
        pos = end + 1;
    }
}

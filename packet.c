/* packet.c - operations on the tunnel: build, encode, parse and validate.
 *
 * Everything read off the wire goes through pkt_parse_frame(): the length prefix
 * is checked against a limit before anything is allocated, the header must be one
 * JSON object without duplicate keys, and every member an op needs is checked for
 * type and range here, once, so the rest of the program can trust struct pkt. */

#include "packet.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    const char *desc;
} op_table[OP_MAX_CODE + 1] = {
#define OP_TABLE_ITEM(code, name, desc) [code] = {#name, desc},
    OP_LIST(OP_TABLE_ITEM)
#undef OP_TABLE_ITEM
};

const char *op_name(int op)
{
    if (op < 1 || op > OP_MAX_CODE)
        return NULL;
    return op_table[op].name;
}

const char *op_description(int op)
{
    if (op < 1 || op > OP_MAX_CODE)
        return NULL;
    return op_table[op].desc;
}

json_t *packet(int op, const char *fmt, ...)
{
    json_t *obj = NULL;

    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        obj = json_vpack_ex(NULL, 0, fmt, ap);
        va_end(ap);
        if (!obj || !json_is_object(obj)) {
            json_decref(obj);
            return NULL;
        }
    } else {
        obj = json_object();
        if (!obj)
            return NULL;
    }
    if (json_object_set_new(obj, "op", json_integer(op)) != 0) {
        json_decref(obj);
        return NULL;
    }
    return obj;
}

int pkt_encode(const json_t *hdr, unsigned char *out, size_t cap)
{
    size_t n;

    if (cap < PKT_FRAME_PREFIX + 2)
        return -1;
    n = json_dumpb(hdr, (char *)out + PKT_FRAME_PREFIX, cap - PKT_FRAME_PREFIX, JSON_COMPACT);
    /* json_dumpb returns the size it needs even when that is more than it had. */
    if (n == 0 || n > cap - PKT_FRAME_PREFIX || n > PKT_MAX_HEADER)
        return -1;
    out[0] = (unsigned char)(n >> 24);
    out[1] = (unsigned char)(n >> 16);
    out[2] = (unsigned char)(n >> 8);
    out[3] = (unsigned char)n;
    return (int)(n + PKT_FRAME_PREFIX);
}

void pkt_clear(struct pkt *p)
{
    json_decref(p->json);
    memset(p, 0, sizeof(*p));
}

/* 1 when s is 1..max bytes of letters, digits and the characters in extra. */
static int valid_chars(const char *s, size_t max, const char *extra)
{
    size_t n = 0;

    if (!s)
        return 0;
    for (; s[n]; n++) {
        char c = s[n];
        if (n >= max)
            return 0;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr(extra, c)))
            return 0;
    }
    return n > 0;
}

int pkt_valid_name(const char *s)
{
    return valid_chars(s, PKT_NAME_MAX, "._-");
}

int pkt_valid_host(const char *s)
{
    return valid_chars(s, PKT_HOST_MAX, ".:_-");
}

/* Fetch an integer member in [min, max]. A missing member is an error when
 * required, else *out is left alone. */
static int get_int(json_t *hdr, const char *key, long long min, long long max, int required,
                   long long *out, char *err, size_t errlen)
{
    json_t *v = json_object_get(hdr, key);

    if (!v) {
        if (!required)
            return 0;
        snprintf(err, errlen, "missing member '%s'", key);
        return -1;
    }
    if (!json_is_integer(v)) {
        snprintf(err, errlen, "member '%s' is not an integer", key);
        return -1;
    }
    if (json_integer_value(v) < min || json_integer_value(v) > max) {
        snprintf(err, errlen, "member '%s' out of range", key);
        return -1;
    }
    *out = json_integer_value(v);
    return 0;
}

/* Fetch a string member of at most maxlen bytes with no NUL inside. */
static int get_str(json_t *hdr, const char *key, size_t maxlen, int required, const char **out,
                   char *err, size_t errlen)
{
    json_t *v = json_object_get(hdr, key);

    if (!v) {
        if (!required)
            return 0;
        snprintf(err, errlen, "missing member '%s'", key);
        return -1;
    }
    if (!json_is_string(v)) {
        snprintf(err, errlen, "member '%s' is not a string", key);
        return -1;
    }
    if (json_string_length(v) > maxlen || strlen(json_string_value(v)) != json_string_length(v)) {
        snprintf(err, errlen, "member '%s' too long or has a NUL byte", key);
        return -1;
    }
    *out = json_string_value(v);
    return 0;
}

static int get_name(json_t *hdr, const char *key, char *err, size_t errlen)
{
    const char *s = NULL;

    if (get_str(hdr, key, PKT_NAME_MAX, 1, &s, err, errlen) != 0)
        return -1;
    if (!pkt_valid_name(s)) {
        snprintf(err, errlen, "member '%s' is not a valid name", key);
        return -1;
    }
    return 0;
}

/* One app entry of HELLO: name, public_port, target_host, target_port. */
static int check_app_request(json_t *app, char *err, size_t errlen)
{
    const char *host = NULL;
    long long v;

    if (!json_is_object(app)) {
        snprintf(err, errlen, "apps entry is not an object");
        return -1;
    }
    if (get_name(app, "name", err, errlen) != 0 ||
        get_int(app, "public_port", 1, 65535, 1, &v, err, errlen) != 0 ||
        get_str(app, "target_host", PKT_HOST_MAX, 1, &host, err, errlen) != 0 ||
        get_int(app, "target_port", 1, 65535, 1, &v, err, errlen) != 0)
        return -1;
    if (!pkt_valid_host(host)) {
        snprintf(err, errlen, "apps entry has an invalid target_host");
        return -1;
    }
    return 0;
}

/* One result entry of WELCOME: name, ok, error (when not ok). */
static int check_app_result(json_t *res, char *err, size_t errlen)
{
    const char *msg = NULL;

    if (!json_is_object(res)) {
        snprintf(err, errlen, "apps result is not an object");
        return -1;
    }
    if (get_name(res, "name", err, errlen) != 0)
        return -1;
    if (!json_is_boolean(json_object_get(res, "ok"))) {
        snprintf(err, errlen, "apps result has no boolean 'ok'");
        return -1;
    }
    return get_str(res, "error", 1024, 0, &msg, err, errlen);
}

static int check_apps(json_t *hdr, int results, char *err, size_t errlen)
{
    json_t *apps = json_object_get(hdr, "apps");
    size_t i;
    json_t *a;

    if (!apps)
        return 0;
    if (!json_is_array(apps) || json_array_size(apps) > PKT_MAX_APPS) {
        snprintf(err, errlen, "member 'apps' is not an array of at most %d", PKT_MAX_APPS);
        return -1;
    }
    json_array_foreach(apps, i, a) {
        if ((results ? check_app_result(a, err, errlen) : check_app_request(a, err, errlen)) != 0)
            return -1;
    }
    return 0;
}

int pkt_validate(json_t *hdr, struct pkt *out, char *err, size_t errlen)
{
    long long v = 0;
    const char *s = NULL;

    if (!json_is_object(hdr)) {
        snprintf(err, errlen, "header is not a JSON object");
        return -1;
    }
    if (get_int(hdr, "op", 1, OP_MAX_CODE, 1, &v, err, errlen) != 0)
        return -1;
    out->op = (int)v;

    switch (out->op) {
    case OP_HELLO:
        if (get_int(hdr, "version", 0, 1000000, 1, &v, err, errlen) != 0 ||
            get_str(hdr, "token", PKT_TOKEN_MAX, 1, &s, err, errlen) != 0 ||
            get_name(hdr, "name", err, errlen) != 0 ||
            get_int(hdr, "window", PKT_WINDOW_MIN, PKT_WINDOW_MAX, 1, &v, err, errlen) != 0 ||
            check_apps(hdr, 0, err, errlen) != 0)
            return -1;
        break;
    case OP_WELCOME:
        if (get_int(hdr, "version", 0, 1000000, 1, &v, err, errlen) != 0 ||
            get_int(hdr, "window", PKT_WINDOW_MIN, PKT_WINDOW_MAX, 1, &v, err, errlen) != 0 ||
            get_int(hdr, "heartbeat", 1, 60, 1, &v, err, errlen) != 0 ||
            check_apps(hdr, 1, err, errlen) != 0)
            return -1;
        break;
    case OP_ERROR:
        if (get_str(hdr, "code", 64, 1, &s, err, errlen) != 0 ||
            get_str(hdr, "message", 1024, 1, &s, err, errlen) != 0)
            return -1;
        break;
    case OP_PING:
        break;
    case OP_BUILD_CONNECTION:
    case OP_CONNECTED:
    case OP_DATA:
    case OP_ACK:
    case OP_SHUTDOWN:
    case OP_CLOSE:
        if (get_int(hdr, "conn", 1, (long long)PKT_CONN_ID_MAX, 1, &v, err, errlen) != 0)
            return -1;
        out->conn = (uint64_t)v;
        if (out->op == OP_BUILD_CONNECTION) {
            if (get_name(hdr, "app", err, errlen) != 0 ||
                get_str(hdr, "target_host", PKT_HOST_MAX, 1, &s, err, errlen) != 0 ||
                get_int(hdr, "target_port", 1, 65535, 1, &v, err, errlen) != 0)
                return -1;
            if (!pkt_valid_host(s)) {
                snprintf(err, errlen, "invalid target_host");
                return -1;
            }
        } else if (out->op == OP_DATA) {
            if (get_int(hdr, "len", 1, PKT_MAX_DATA, 1, &v, err, errlen) != 0)
                return -1;
            out->len = (size_t)v;
        } else if (out->op == OP_ACK) {
            if (get_int(hdr, "bytes", 1, PKT_WINDOW_MAX, 1, &v, err, errlen) != 0)
                return -1;
            out->len = (size_t)v;
        } else if (out->op == OP_CLOSE) {
            if (get_str(hdr, "reason", 256, 0, &s, err, errlen) != 0)
                return -1;
        }
        break;
    default:
        snprintf(err, errlen, "unknown op %lld", v);
        return -1;
    }
    return 0;
}

int pkt_parse_frame(const unsigned char *buf, size_t avail, size_t max_header, struct pkt *out,
                    size_t *frame_len, char *err, size_t errlen)
{
    size_t hlen;
    json_error_t jerr;
    json_t *hdr = NULL;

    memset(out, 0, sizeof(*out));
    *frame_len = 0;
    if (avail < PKT_FRAME_PREFIX)
        return 0;
    hlen = ((size_t)buf[0] << 24) | ((size_t)buf[1] << 16) | ((size_t)buf[2] << 8) | buf[3];
    if (hlen == 0 || hlen > max_header) {
        snprintf(err, errlen, "header length %zu out of range (1..%zu)", hlen, max_header);
        return -1;
    }
    if (avail - PKT_FRAME_PREFIX < hlen) {
        *frame_len = PKT_FRAME_PREFIX + hlen;
        return 0;
    }
    hdr = json_loadb((const char *)buf + PKT_FRAME_PREFIX, hlen,
                     JSON_REJECT_DUPLICATES, &jerr);
    if (!hdr) {
        /* jansson quotes up to a few bytes of the peer's input: keep them
         * from breaking the log line. */
        for (char *c = jerr.text; *c; c++)
            if (*c < 0x20 || *c > 0x7e || *c == '"' || *c == '\\')
                *c = '?';
        snprintf(err, errlen, "bad JSON header: %.80s", jerr.text);
        return -1;
    }
    if (pkt_validate(hdr, out, err, errlen) != 0) {
        json_decref(hdr);
        memset(out, 0, sizeof(*out));
        return -1;
    }
    *frame_len = PKT_FRAME_PREFIX + hlen;
    if (out->op == OP_DATA) {
        *frame_len += out->len;
        if (avail < *frame_len) {
            json_decref(hdr);
            memset(out, 0, sizeof(*out));
            return 0;
        }
        out->payload = buf + PKT_FRAME_PREFIX + hlen;
    }
    out->json = hdr;
    return 1;
}

/* packet.c - operations on the tunnel: build, encode, parse and validate.
 *
 * Everything read off the wire goes through pkt_parse_frame(): the length prefix
 * is checked against a limit before anything is allocated, the header must be one
 * JSON object without duplicate keys, and every member an op needs is checked for
 * type and range here, once, so the rest of the program can trust struct pkt. */

#include "packet.h"

#include <arpa/inet.h>

#include "cidr.h"
#include "ftp_data.h"
#include "json_depth.h"
#include "netio.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
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

/* Decimal digits of v at out; returns how many. */
static size_t put_decimal(unsigned char *out, uint64_t v)
{
    unsigned char tmp[20];
    size_t n = 0, i;

    do {
        tmp[n++] = (unsigned char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

/* The headers pkt_encode_data writes: {"op":N,"ID":I,"len":L}. */
static const struct data_form {
    int op;
    const char *head; /* up to the id's digits */
    uint64_t len_min, len_max;
} data_forms[] = {
    {OP_DATA, "{\"op\":7,\"conn\":", 1, PKT_MAX_DATA},
    {OP_UDP_DATA, "{\"op\":12,\"session\":", 0, PKT_MAX_DGRAM},
};
static const char data_mid[] = ",\"len\":";

static const struct data_form *data_form_of(int op)
{
    _Static_assert(OP_DATA == 7 && OP_UDP_DATA == 12, "data_forms spell the op codes");
    for (size_t i = 0; i < sizeof(data_forms) / sizeof(data_forms[0]); i++)
        if (data_forms[i].op == op)
            return &data_forms[i];
    return NULL;
}

int pkt_encode_data(unsigned char *out, size_t cap, int op, uint64_t id, size_t len)
{
    const struct data_form *f = data_form_of(op);
    unsigned char h[PKT_DATA_HEADER_MAX - PKT_FRAME_PREFIX];
    size_t n;

    if (!f || id < 1 || id > PKT_CONN_ID_MAX || len < f->len_min || len > f->len_max)
        return -1;
    n = strlen(f->head);
    memcpy(h, f->head, n);
    n += put_decimal(h + n, id);
    memcpy(h + n, data_mid, sizeof(data_mid) - 1);
    n += sizeof(data_mid) - 1;
    n += put_decimal(h + n, len);
    h[n++] = '}';
    if (cap < PKT_FRAME_PREFIX + n)
        return -1;
    out[0] = 0;
    out[1] = 0;
    out[2] = (unsigned char)(n >> 8);
    out[3] = (unsigned char)n;
    memcpy(out + PKT_FRAME_PREFIX, h, n);
    return (int)(n + PKT_FRAME_PREFIX);
}

/* At h[*at..hlen): a decimal min..max as JSON writes it (no leading zeros);
 * moves *at past it. */
static int take_decimal(const unsigned char *h, size_t hlen, size_t *at, uint64_t min,
                        uint64_t max, uint64_t *out)
{
    size_t i = *at;
    uint64_t v = 0;

    if (i >= hlen || h[i] < '0' || h[i] > '9')
        return -1;
    if (h[i] == '0') {
        i++; /* zero is "0", and nothing may follow it */
    } else {
        for (; i < hlen && h[i] >= '0' && h[i] <= '9'; i++) {
            v = v * 10 + (uint64_t)(h[i] - '0');
            if (v > max)
                return -1; /* also stops before v could overflow: max < 2^60 */
        }
    }
    if (v < min || (i < hlen && h[i] >= '0' && h[i] <= '9'))
        return -1;
    *at = i;
    *out = v;
    return 0;
}

/* When h[0..hlen) is exactly a header pkt_encode_data writes (values in
 * range), its op, with *id and *len its members; 0 for anything else, which
 * then goes the way of every other header (Jansson and pkt_validate) and gets
 * the same answer: these bytes are a JSON object with those three members. */
static int parse_data_fast(const unsigned char *h, size_t hlen, uint64_t *id, uint64_t *len)
{
    for (size_t i = 0; i < sizeof(data_forms) / sizeof(data_forms[0]); i++) {
        const struct data_form *f = &data_forms[i];
        size_t at = strlen(f->head);

        if (hlen < at || memcmp(h, f->head, at) != 0)
            continue;
        if (take_decimal(h, hlen, &at, 1, PKT_CONN_ID_MAX, id) != 0 ||
            hlen - at < sizeof(data_mid) - 1 ||
            memcmp(h + at, data_mid, sizeof(data_mid) - 1) != 0)
            return 0;
        at += sizeof(data_mid) - 1;
        if (take_decimal(h, hlen, &at, f->len_min, f->len_max, len) != 0 || at + 1 != hlen ||
            h[at] != '}')
            return 0;
        return f->op;
    }
    return 0;
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

int pkt_split_hostport(const char *s, char *host, size_t cap, int *port)
{
    const char *colon, *h = s, *end;
    size_t n;
    long p = 0;

    if (!s || !*s)
        return -1;
    if (*s == '[') {
        end = strchr(s, ']');
        if (!end || end[1] != ':')
            return -1;
        h = s + 1;
        colon = end + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon || memchr(s, ':', (size_t)(colon - s)))
            return -1; /* an IPv6 literal needs its brackets */
        end = colon;
    }
    n = (size_t)(end - h);
    if (n == 0 || n >= cap)
        return -1;
    if (!colon[1] || strlen(colon + 1) > 5)
        return -1;
    for (const char *d = colon + 1; *d; d++) {
        if (*d < '0' || *d > '9')
            return -1;
        p = p * 10 + (*d - '0');
    }
    if (p < 1 || p > 65535)
        return -1;
    memcpy(host, h, n);
    host[n] = '\0';
    *port = (int)p;
    return 0;
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

/* The optional "protocol" ("tcp", "udp" or "ftp"), "udp_idle_timeout" and
 * "ftp_passive_ports" ("LOW-HIGH") of an app. */
static int check_protocol(json_t *app, char *err, size_t errlen)
{
    const char *proto = NULL, *range = NULL;
    long long v;
    int lo, hi;

    if (get_str(app, "protocol", 8, 0, &proto, err, errlen) != 0)
        return -1;
    if (proto && strcmp(proto, "tcp") != 0 && strcmp(proto, "udp") != 0 &&
        strcmp(proto, "ftp") != 0) {
        snprintf(err, errlen, "member 'protocol' is not \"tcp\", \"udp\" or \"ftp\"");
        return -1;
    }
    if (get_str(app, "ftp_passive_ports", 11, 0, &range, err, errlen) != 0)
        return -1;
    if (range && (ftp_parse_ports(range, &lo, &hi) != 0 || hi - lo + 1 > PKT_FTP_FIXED_MAX)) {
        snprintf(err, errlen, "member 'ftp_passive_ports' is not LOW-HIGH (1024-65535, at most "
                 "%d ports)", PKT_FTP_FIXED_MAX);
        return -1;
    }
    if (get_int(app, "udp_idle_timeout", PKT_IDLE_MIN, PKT_IDLE_MAX, 0, &v, err, errlen) != 0 ||
        get_int(app, "proxy_protocol", 0, 2, 0, &v, err, errlen) != 0)
        return -1;
    /* allow_from: at most CIDR_MAX entries, each an address/prefix. */
    {
        struct cidr_list *l = malloc(sizeof(*l));
        int rc;
        if (!l) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        rc = cidr_list_from_json(json_object_get(app, "allow_from"), l, err, errlen);
        free(l);
        return rc;
    }
}

/* One app entry of HELLO: name, public_port, target_host, target_port; protocol
 * and udp_idle_timeout optional. */
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
    return check_protocol(app, err, errlen);
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

/* An optional string member of exactly n hex digits. */
static int get_hex(json_t *hdr, const char *key, size_t n, int required, char *err, size_t errlen)
{
    const char *s = NULL;

    if (get_str(hdr, key, n, required, &s, err, errlen) != 0)
        return -1;
    if (!s)
        return 0;
    if (strlen(s) != n || strspn(s, "0123456789abcdef") != n) {
        snprintf(err, errlen, "member '%s' is not %zu hex digits", key, n);
        return -1;
    }
    return 0;
}

static int get_bool(json_t *hdr, const char *key, int required, char *err, size_t errlen)
{
    json_t *v = json_object_get(hdr, key);

    if (!v && !required)
        return 0;
    if (!json_is_boolean(v)) {
        snprintf(err, errlen, "member '%s' is not a boolean", key);
        return -1;
    }
    return 0;
}

/* HELLO's "resume": {"session", "token"}. */
static int check_resume_request(json_t *hdr, char *err, size_t errlen)
{
    json_t *r = json_object_get(hdr, "resume");

    if (!r)
        return 0;
    if (!json_is_object(r)) {
        snprintf(err, errlen, "member 'resume' is not an object");
        return -1;
    }
    return get_hex(r, "session", 32, 1, err, errlen) != 0 ||
                   get_hex(r, "token", 64, 1, err, errlen) != 0
               ? -1
               : 0;
}

/* RESUME's "conns": [[conn, received, delivered, flags], ...]. */
static int check_resume_list(json_t *hdr, char *err, size_t errlen)
{
    json_t *conns = json_object_get(hdr, "conns"), *e;
    size_t i;

    if (!json_is_array(conns) || json_array_size(conns) > PKT_RESUME_MAX) {
        snprintf(err, errlen, "member 'conns' is not an array of at most %d", PKT_RESUME_MAX);
        return -1;
    }
    json_array_foreach(conns, i, e) {
        static const long long max[4] = {(long long)PKT_CONN_ID_MAX, (long long)PKT_CONN_ID_MAX,
                                         (long long)PKT_CONN_ID_MAX, 255};
        if (!json_is_array(e) || json_array_size(e) != 4) {
            snprintf(err, errlen, "a 'conns' entry is not [conn, received, delivered, flags]");
            return -1;
        }
        for (size_t k = 0; k < 4; k++) {
            json_t *v = json_array_get(e, k);
            if (!json_is_integer(v) || json_integer_value(v) < (k == 0 ? 1 : 0) ||
                json_integer_value(v) > max[k]) {
                snprintf(err, errlen, "a 'conns' entry has a bad number");
                return -1;
            }
        }
    }
    return get_bool(hdr, "last", 1, err, errlen);
}

static int check_apps(json_t *hdr, const char *key, int results, char *err, size_t errlen)
{
    json_t *apps = json_object_get(hdr, key);
    size_t i;
    json_t *a;

    if (!apps)
        return 0;
    if (!json_is_array(apps) || json_array_size(apps) > PKT_MAX_APPS) {
        snprintf(err, errlen, "member '%s' is not an array of at most %d", key, PKT_MAX_APPS);
        return -1;
    }
    json_array_foreach(apps, i, a) {
        if ((results ? check_app_result(a, err, errlen) : check_app_request(a, err, errlen)) != 0)
            return -1;
    }
    return 0;
}

/* APPS's optional "unregister": an array of app names. */
static int check_names(json_t *hdr, const char *key, char *err, size_t errlen)
{
    json_t *names = json_object_get(hdr, key), *n;
    size_t i;

    if (!names)
        return 0;
    if (!json_is_array(names) || json_array_size(names) > PKT_MAX_APPS) {
        snprintf(err, errlen, "member '%s' is not an array of at most %d", key, PKT_MAX_APPS);
        return -1;
    }
    json_array_foreach(names, i, n) {
        const char *v = json_string_value(n);
        if (!v || !pkt_valid_name(v)) {
            snprintf(err, errlen, "member '%s' holds something that is not an app name", key);
            return -1;
        }
    }
    return 0;
}

/* NODES' "nodes": at most PKT_NODES_MAX {"name", "address": "HOST:PORT"},
 * HOST a valid host name or IP literal (an IPv6 one in brackets). */
static int check_nodes(json_t *hdr, char *err, size_t errlen)
{
    json_t *nodes = json_object_get(hdr, "nodes"), *n;
    size_t i;

    if (!json_is_array(nodes) || json_array_size(nodes) > PKT_NODES_MAX) {
        snprintf(err, errlen, "member 'nodes' is not an array of at most %d", PKT_NODES_MAX);
        return -1;
    }
    json_array_foreach(nodes, i, n) {
        const char *addr = NULL;
        char host[PKT_HOST_MAX + 1];
        int port;

        if (!json_is_object(n)) {
            snprintf(err, errlen, "member 'nodes' has an entry that is not an object");
            return -1;
        }
        if (get_name(n, "name", err, errlen) != 0 ||
            get_str(n, "address", PKT_HOST_MAX + 8, 1, &addr, err, errlen) != 0)
            return -1;
        if (pkt_split_hostport(addr, host, sizeof(host), &port) != 0 || !pkt_valid_host(host)) {
            snprintf(err, errlen, "node '%s' has no valid HOST:PORT address",
                     json_string_value(json_object_get(n, "name")));
            return -1;
        }
    }
    return 0;
}

/* HELLO's and APPS' optional "allow": the private's allowlist, at most
 * PKT_ALLOW_MAX strings (their rules are the public side's to parse). */
static int check_allow(json_t *hdr, char *err, size_t errlen)
{
    json_t *rules = json_object_get(hdr, "allow"), *r;
    size_t i;

    if (!rules)
        return 0;
    if (!json_is_array(rules) || json_array_size(rules) > PKT_ALLOW_MAX) {
        snprintf(err, errlen, "member 'allow' is not an array of at most %d", PKT_ALLOW_MAX);
        return -1;
    }
    json_array_foreach(rules, i, r) {
        if (!json_is_string(r) || json_string_length(r) > PKT_ALLOW_RULE_MAX ||
            strlen(json_string_value(r)) != json_string_length(r)) {
            snprintf(err, errlen, "member 'allow' holds something that is not a rule of at most "
                     "%d bytes", PKT_ALLOW_RULE_MAX);
            return -1;
        }
    }
    return 0;
}

/* UDP_DATA's optional "open": {app, target_host, target_port, idle}. */
static int check_udp_open(json_t *hdr, char *err, size_t errlen)
{
    json_t *o = json_object_get(hdr, "open");
    const char *host = NULL;
    long long v;

    if (!o)
        return 0;
    if (!json_is_object(o)) {
        snprintf(err, errlen, "member 'open' is not an object");
        return -1;
    }
    if (get_name(o, "app", err, errlen) != 0 ||
        get_str(o, "target_host", PKT_HOST_MAX, 1, &host, err, errlen) != 0 ||
        get_int(o, "target_port", 1, 65535, 1, &v, err, errlen) != 0 ||
        get_int(o, "idle", PKT_IDLE_MIN, PKT_IDLE_MAX, 1, &v, err, errlen) != 0)
        return -1;
    if (!pkt_valid_host(host)) {
        snprintf(err, errlen, "member 'open' has an invalid target_host");
        return -1;
    }
    return 0;
}

/* The optional "drops" of UDP_DATA and UDP_CLOSE: datagrams the private side
 * dropped since its last report, {"queue_full": n, "oversize": n,
 * "tunnel_down": n}. */
static int check_udp_drops(json_t *hdr, char *err, size_t errlen)
{
    json_t *d = json_object_get(hdr, "drops");
    const char *key;
    json_t *v;

    if (!d)
        return 0;
    if (!json_is_object(d) || json_object_size(d) > 3) {
        snprintf(err, errlen, "member 'drops' is not an object of at most 3 counts");
        return -1;
    }
    json_object_foreach(d, key, v) {
        if ((strcmp(key, "queue_full") != 0 && strcmp(key, "oversize") != 0 &&
             strcmp(key, "tunnel_down") != 0) ||
            !json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) > (long long)UINT32_MAX) {
            snprintf(err, errlen, "member 'drops' has a bad entry");
            return -1;
        }
    }
    return 0;
}

/* BUILD_CONNECTION's optional FTP members (v5): "ftp" is "control" or
 * "data"; a data connection names its control connection and request. */
static int check_build_ftp(json_t *hdr, char *err, size_t errlen)
{
    const char *kind = NULL;
    long long v;

    if (get_str(hdr, "ftp", 8, 0, &kind, err, errlen) != 0)
        return -1;
    if (!kind) {
        if (json_object_get(hdr, "ftp_ctl") || json_object_get(hdr, "ftp_req")) {
            snprintf(err, errlen, "members 'ftp_ctl' and 'ftp_req' need 'ftp': \"data\"");
            return -1;
        }
        return 0;
    }
    if (strcmp(kind, "control") != 0 && strcmp(kind, "data") != 0) {
        snprintf(err, errlen, "member 'ftp' is neither \"control\" nor \"data\"");
        return -1;
    }
    if (strcmp(kind, "control") == 0) {
        if (json_object_get(hdr, "ftp_ctl") || json_object_get(hdr, "ftp_req")) {
            snprintf(err, errlen, "an FTP control connection has no 'ftp_ctl' or 'ftp_req'");
            return -1;
        }
        return 0;
    }
    return get_int(hdr, "ftp_ctl", 1, (long long)PKT_CONN_ID_MAX, 1, &v, err, errlen) != 0 ||
                   get_int(hdr, "ftp_req", 1, PKT_FTP_REQ_MAX, 1, &v, err, errlen) != 0
               ? -1
               : 0;
}

/* BUILD_CONNECTION's optional members of version 6: "client" and "server",
 * "192.0.2.1:5000" or "[2001:db8::1]:443" (literals, at most PKT_ADDR_MAX
 * bytes), and "proxy_protocol" 1 or 2, which needs both. */
static int check_build_addrs(json_t *hdr, char *err, size_t errlen)
{
    static const char *const keys[2] = {"client", "server"};
    const char *s = NULL;
    long long v = 0;
    int have = 0;

    for (int i = 0; i < 2; i++) {
        struct sockaddr_storage ss;
        s = NULL;
        if (get_str(hdr, keys[i], PKT_ADDR_MAX, 0, &s, err, errlen) != 0)
            return -1;
        if (s && net_parse_addrport(s, &ss) != 0) {
            snprintf(err, errlen, "member '%s' is not ADDRESS:PORT (IPv6 in brackets)", keys[i]);
            return -1;
        }
        have += s != NULL;
    }
    if (have == 1) {
        snprintf(err, errlen, "members 'client' and 'server' come together");
        return -1;
    }
    if (get_int(hdr, "proxy_protocol", 1, 2, 0, &v, err, errlen) != 0)
        return -1;
    if (v && have != 2) {
        snprintf(err, errlen, "member 'proxy_protocol' needs 'client' and 'server'");
        return -1;
    }
    return 0;
}

/* An address member of the FTP operations: a literal IPv4 or IPv6 address. */
static int get_ip(json_t *hdr, const char *key, int required, char *err, size_t errlen)
{
    const char *s = NULL;
    unsigned char buf[16];

    if (get_str(hdr, key, 45, required, &s, err, errlen) != 0)
        return -1;
    if (s && inet_pton(AF_INET, s, buf) != 1 && inet_pton(AF_INET6, s, buf) != 1) {
        snprintf(err, errlen, "member '%s' is not an IP address", key);
        return -1;
    }
    return 0;
}

/* FTP_OPEN, FTP_OPENED, FTP_CONNECT and FTP_TLS (v5), after "conn". */
static int check_ftp_op(json_t *hdr, int op, char *err, size_t errlen)
{
    const char *s = NULL;
    long long v;

    if (op == OP_FTP_TLS)
        return 0;
    if (get_int(hdr, "req", 1, PKT_FTP_REQ_MAX, 1, &v, err, errlen) != 0)
        return -1;
    switch (op) {
    case OP_FTP_OPEN:
        if (get_str(hdr, "mode", 8, 1, &s, err, errlen) != 0)
            return -1;
        if (strcmp(s, "passive") != 0 && strcmp(s, "active") != 0) {
            snprintf(err, errlen, "member 'mode' is neither \"passive\" nor \"active\"");
            return -1;
        }
        return get_int(hdr, "port", 1, 65535, 1, &v, err, errlen) != 0 ||
                       get_ip(hdr, "host", strcmp(s, "active") == 0, err, errlen) != 0
                   ? -1
                   : 0;
    case OP_FTP_OPENED:
        return get_bool(hdr, "ok", 1, err, errlen) != 0 ||
                       get_int(hdr, "port", 1, 65535, 0, &v, err, errlen) != 0 ||
                       get_ip(hdr, "host", 0, err, errlen) != 0 ||
                       get_int(hdr, "code", 400, 599, 0, &v, err, errlen) != 0 ||
                       get_str(hdr, "reason", 200, 0, &s, err, errlen) != 0
                   ? -1
                   : 0;
    default: /* OP_FTP_CONNECT */
        return get_int(hdr, "port", 1, 65535, 1, &v, err, errlen) != 0 ||
                       get_ip(hdr, "host", 1, err, errlen) != 0
                   ? -1
                   : 0;
    }
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
            get_int(hdr, "max_version", 1, 1000000, 0, &v, err, errlen) != 0 ||
            get_str(hdr, "token", PKT_TOKEN_MAX, 1, &s, err, errlen) != 0 ||
            get_name(hdr, "name", err, errlen) != 0 ||
            get_int(hdr, "window", PKT_WINDOW_MIN, PKT_WINDOW_MAX, 1, &v, err, errlen) != 0 ||
            get_int(hdr, "resume_grace", 0, PKT_GRACE_MAX, 0, &v, err, errlen) != 0 ||
            check_resume_request(hdr, err, errlen) != 0 ||
            check_apps(hdr, "apps", 0, err, errlen) != 0 ||
            check_apps(hdr, "udp_apps", 0, err, errlen) != 0 ||
            check_apps(hdr, "ftp_apps", 0, err, errlen) != 0 ||
            check_allow(hdr, err, errlen) != 0)
            return -1;
        break;
    case OP_WELCOME:
        if (get_int(hdr, "version", 0, 1000000, 1, &v, err, errlen) != 0 ||
            get_int(hdr, "window", PKT_WINDOW_MIN, PKT_WINDOW_MAX, 1, &v, err, errlen) != 0 ||
            get_int(hdr, "heartbeat", 1, 60, 1, &v, err, errlen) != 0 ||
            get_int(hdr, "resume_grace", 0, PKT_GRACE_MAX, 0, &v, err, errlen) != 0 ||
            get_hex(hdr, "session", 32, 0, err, errlen) != 0 ||
            get_hex(hdr, "resume_token", 64, 0, err, errlen) != 0 ||
            get_bool(hdr, "resumed", 0, err, errlen) != 0 ||
            check_apps(hdr, "apps", 1, err, errlen) != 0 ||
            (json_object_get(hdr, "node") && get_name(hdr, "node", err, errlen) != 0))
            return -1;
        break;
    case OP_NODES:
        if (check_nodes(hdr, err, errlen) != 0)
            return -1;
        break;
    case OP_RESUME:
        if (check_resume_list(hdr, err, errlen) != 0)
            return -1;
        break;
    case OP_APPS:
        if (check_names(hdr, "unregister", err, errlen) != 0 ||
            check_apps(hdr, "register", 0, err, errlen) != 0 ||
            check_allow(hdr, err, errlen) != 0)
            return -1;
        break;
    case OP_APPS_RESULT:
        if (check_apps(hdr, "apps", 1, err, errlen) != 0)
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
            if (check_build_ftp(hdr, err, errlen) != 0 ||
                check_build_addrs(hdr, err, errlen) != 0)
                return -1;
        } else if (out->op == OP_DATA) {
            if (get_int(hdr, "len", 1, PKT_MAX_DATA, 1, &v, err, errlen) != 0)
                return -1;
            out->len = (size_t)v;
        } else if (out->op == OP_ACK) {
            if (get_int(hdr, "bytes", 1, PKT_WINDOW_MAX, 1, &v, err, errlen) != 0)
                return -1;
            out->len = (size_t)v;
            if (get_int(hdr, "total", 0, (long long)PKT_CONN_ID_MAX, 0, &v, err, errlen) != 0)
                return -1;
        } else if (out->op == OP_CLOSE) {
            if (get_str(hdr, "reason", PKT_REASON_MAX, 0, &s, err, errlen) != 0)
                return -1;
        }
        break;
    case OP_UDP_DATA:
    case OP_UDP_CLOSE:
        if (get_int(hdr, "session", 1, (long long)PKT_CONN_ID_MAX, 1, &v, err, errlen) != 0)
            return -1;
        out->conn = (uint64_t)v;
        if (check_udp_drops(hdr, err, errlen) != 0)
            return -1;
        if (out->op == OP_UDP_CLOSE)
            return get_str(hdr, "reason", 64, 0, &s, err, errlen);
        if (get_int(hdr, "len", 0, PKT_MAX_DGRAM, 1, &v, err, errlen) != 0 ||
            check_udp_open(hdr, err, errlen) != 0)
            return -1;
        out->len = (size_t)v;
        break;
    case OP_FTP_OPEN:
    case OP_FTP_OPENED:
    case OP_FTP_CONNECT:
    case OP_FTP_TLS:
        if (get_int(hdr, "conn", 1, (long long)PKT_CONN_ID_MAX, 1, &v, err, errlen) != 0)
            return -1;
        out->conn = (uint64_t)v;
        if (check_ftp_op(hdr, out->op, err, errlen) != 0)
            return -1;
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
    uint64_t v;
    int op;
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
    op = parse_data_fast(buf + PKT_FRAME_PREFIX, hlen, &out->conn, &v);
    if (op) {
        out->len = (size_t)v;
        *frame_len = PKT_FRAME_PREFIX + hlen + out->len;
        if (avail < *frame_len) {
            memset(out, 0, sizeof(*out));
            return 0;
        }
        out->op = op;
        out->payload = buf + PKT_FRAME_PREFIX + hlen;
        return 1;
    }
    /* Jansson recurses once per level: bound it before it sees the bytes, so a
     * deeply nested header cannot overflow a tunnel thread's small stack. */
    if (!json_depth_ok((const char *)buf + PKT_FRAME_PREFIX, hlen, PKT_MAX_DEPTH)) {
        snprintf(err, errlen, "header nested deeper than %d levels", PKT_MAX_DEPTH);
        return -1;
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
    if (out->op == OP_DATA || out->op == OP_UDP_DATA) {
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

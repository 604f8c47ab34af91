/* test_packet.c - unit tests of packet.c (and, through the other files of
 * tests/unit/, state.c, registry_spec_from_json and log_escape), plus the runner.
 *
 *   ./build/test_packet [name...]     run all tests, or those named
 *   UNIT_NOFORK=1 ./build/test_packet run in one process (for gdb)
 *   UNIT_STRICT=1 ./build/test_packet known bugs count as failures
 *
 * Every test runs in its own child process with a time limit, so a crash or a
 * hang in one is reported by name and the others still run. Frames are parsed
 * from a copy that ends right before an inaccessible page, so any read past
 * `avail` faults, in libjansson (not instrumented) as well as in packet.c. Exit status is 0 only when every test passed. */

#include "unit.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "packet.h"

int unit_failures;
int unit_known;

void unit_fail(const char *file, int line, const char *expr, const char *fmt, ...)
{
    va_list ap;

    unit_failures++;
    fprintf(stderr, "  FAIL %s:%d: (%s) ", file, line, expr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void unit_known_bug(const char *file, int line, const char *expr, const char *fmt, ...)
{
    va_list ap;
    const char *strict = getenv("UNIT_STRICT");

    unit_known++;
    if (strict && strcmp(strict, "1") == 0)
        unit_failures++;
    fprintf(stderr, "  KNOWN-BUG %s:%d: (%s) ", file, line, expr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

const char *unit_show(const void *p, size_t n)
{
    static char out[200];
    const unsigned char *s = p;
    size_t o = 0;

    for (size_t i = 0; i < n && o + 5 < sizeof(out); i++) {
        if (s[i] >= 0x20 && s[i] < 0x7f && s[i] != '\\') {
            out[o++] = (char)s[i];
        } else {
            snprintf(out + o, sizeof(out) - o, "\\x%02x", s[i]);
            o += 4;
        }
    }
    if (o + 5 >= sizeof(out))
        snprintf(out + o, sizeof(out) - o, "...");
    else
        out[o] = '\0';
    return out;
}

/* ------------------------------------------------------------ helpers */

/* A frame in a heap buffer of exactly its size: prefix with the given header
 * length (normally strlen(hdr)), the header text, then plen bytes of payload. */
static unsigned char *frame_raw(uint32_t prefix, const char *hdr, size_t hlen, const void *payload,
                                size_t plen, size_t *n)
{
    unsigned char *f;

    *n = PKT_FRAME_PREFIX + hlen + plen;
    f = malloc(*n ? *n : 1);
    if (!f) {
        perror("malloc");
        exit(2);
    }
    f[0] = (unsigned char)(prefix >> 24);
    f[1] = (unsigned char)(prefix >> 16);
    f[2] = (unsigned char)(prefix >> 8);
    f[3] = (unsigned char)prefix;
    if (hlen)
        memcpy(f + PKT_FRAME_PREFIX, hdr, hlen);
    if (plen) {
        if (payload)
            memcpy(f + PKT_FRAME_PREFIX + hlen, payload, plen);
        else
            memset(f + PKT_FRAME_PREFIX + hlen, 'x', plen);
    }
    return f;
}

static unsigned char *frame_text(const char *hdr, size_t plen, size_t *n)
{
    size_t hlen = strlen(hdr);
    return frame_raw((uint32_t)hlen, hdr, hlen, NULL, plen, n);
}

/* Copy buf[0..n) to the end of a buffer followed by an inaccessible page, so
 * that reading past `avail` faults even inside libjansson, which is not built
 * with AddressSanitizer. One buffer, reused: a result is good until the next
 * call. */
static unsigned char *guarded_copy(const unsigned char *buf, size_t n)
{
    static unsigned char *region;
    static size_t cap;
    unsigned char *c;

    if (!region) {
        size_t pg = (size_t)sysconf(_SC_PAGESIZE);
        cap = (PKT_MAX_FRAME + 65536 + pg - 1) / pg * pg;
        region = mmap(NULL, cap + pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (region == MAP_FAILED || mprotect(region + cap, pg, PROT_NONE) != 0) {
            perror("mmap");
            exit(2);
        }
    }
    if (n > cap) {
        fprintf(stderr, "guarded_copy: %zu bytes is too much\n", n);
        exit(2);
    }
    c = region + cap - n;
    if (n)
        memcpy(c, buf, n);
    return c;
}

/* Parse a copy of buf[0..n) that ends right before an inaccessible page. */
static int parse_copy(const unsigned char *buf, size_t n, size_t maxh, struct pkt *p, size_t *flen,
                      char *err, size_t errlen, unsigned char **copy)
{
    *copy = guarded_copy(buf, n);
    return pkt_parse_frame(*copy, n, maxh, p, flen, err, errlen);
}

/* Just the answer of parse_copy() for a whole buffer. */
static int parse_copy_ok(const unsigned char *buf, size_t n, size_t maxh)
{
    struct pkt p;
    size_t flen;
    char err[200];
    unsigned char *copy;
    int r = parse_copy(buf, n, maxh, &p, &flen, err, sizeof(err), &copy);

    pkt_clear(&p);
    return r;
}

/* A frame accepted without Jansson (p->json NULL: a DATA or UDP_DATA header
 * exactly as pkt_encode_data writes it) is one that Jansson and pkt_validate
 * accept too, with the same fields and no other members. */
static int same_as_jansson(const unsigned char *frame, const struct pkt *p)
{
    size_t hlen = (size_t)frame[0] << 24 | (size_t)frame[1] << 16 | (size_t)frame[2] << 8 | frame[3];
    json_t *j = json_loadb((const char *)frame + PKT_FRAME_PREFIX, hlen, JSON_REJECT_DUPLICATES,
                           NULL);
    struct pkt q;
    char err[200];
    int ok;

    memset(&q, 0, sizeof(q));
    ok = (p->op == OP_DATA || p->op == OP_UDP_DATA) && j && pkt_validate(j, &q, err, sizeof(err)) == 0 &&
         json_object_size(j) == 3 && q.op == p->op && q.conn == p->conn && q.len == p->len;
    json_decref(j);
    return ok;
}

/* Result of parsing the header text hdr (plus plen payload bytes) as one frame. */
static int parse_text(const char *hdr, size_t plen, size_t maxh)
{
    size_t n, flen = 99;
    unsigned char *f = frame_text(hdr, plen, &n), *copy = NULL;
    struct pkt p;
    char err[200] = "";
    int r = parse_copy(f, n, maxh, &p, &flen, err, sizeof(err), &copy);

    if (r == 1) {
        CHECK(p.json != NULL || same_as_jansson(copy, &p), "accepted frame without json: %s",
              hdr);
        CHECK(flen == n, "frame_len %zu, buffer %zu: %s", flen, n, hdr);
    } else {
        CHECK(p.json == NULL, "rc %d left a json object: %s", r, hdr);
    }
    if (r == -1)
        CHECK(err[0] != '\0', "rejected without a reason: %s", hdr);
    pkt_clear(&p);
    free(f);
    return r;
}

#define ACCEPT(hdr) CHECK(parse_text((hdr), 0, PKT_MAX_HEADER) == 1, "should accept: %s", (hdr))
#define REJECT(hdr) CHECK(parse_text((hdr), 0, PKT_MAX_HEADER) == -1, "should reject: %s", (hdr))

/* Parse a json object as a frame (payload of plen bytes). */
static int parse_json(json_t *hdr, size_t plen)
{
    char *s = json_dumps(hdr, JSON_COMPACT);
    int r;

    if (!s) {
        fprintf(stderr, "json_dumps failed\n");
        exit(2);
    }
    r = parse_text(s, plen, PKT_MAX_HEADER);
    free(s);
    return r;
}

static json_t *load(const char *text)
{
    json_error_t jerr;
    json_t *j = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);

    if (!j) {
        fprintf(stderr, "bad test JSON %s: %s\n", text, jerr.text);
        exit(2);
    }
    return j;
}

/* A string of n copies of c (malloc'd). */
static char *repeat(char c, size_t n)
{
    char *s = malloc(n + 1);

    if (!s)
        exit(2);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

/* The examples of docs/PROTOCOL.md, one per op, with DATA's payload size. */
static const struct example {
    int op;
    const char *hdr;
    size_t plen;
} examples[] = {
    {OP_HELLO,
     "{\"op\":1,\"version\":1,\"token\":\"0123abcd\",\"name\":\"home\",\"window\":1048576,"
     "\"apps\":[{\"name\":\"ssh\",\"public_port\":2222,\"target_host\":\"127.0.0.1\","
     "\"target_port\":22}]}",
     0},
    {OP_WELCOME,
     "{\"op\":2,\"version\":1,\"window\":1048576,\"heartbeat\":5,"
     "\"apps\":[{\"name\":\"ssh\",\"ok\":true}]}",
     0},
    {OP_ERROR, "{\"op\":3,\"code\":\"bad_token\",\"message\":\"wrong token\"}", 0},
    {OP_PING, "{\"op\":4}", 0},
    {OP_BUILD_CONNECTION,
     "{\"op\":5,\"conn\":1,\"app\":\"ssh\",\"target_host\":\"127.0.0.1\",\"target_port\":22}", 0},
    {OP_CONNECTED, "{\"op\":6,\"conn\":1}", 0},
    {OP_DATA, "{\"op\":7,\"conn\":1,\"len\":21}", 21},
    {OP_ACK, "{\"op\":8,\"conn\":1,\"bytes\":21}", 0},
    {OP_SHUTDOWN, "{\"op\":9,\"conn\":1}", 0},
    {OP_CLOSE, "{\"op\":10,\"conn\":1,\"reason\":\"done\"}", 0},
    {OP_RESUME, "{\"op\":11,\"conns\":[[1,4096,4000,3]],\"last\":true}", 0},
    {OP_UDP_DATA, "{\"op\":12,\"session\":1,\"len\":36}", 36},
    {OP_UDP_CLOSE, "{\"op\":13,\"session\":1,\"reason\":\"idle\"}", 0},
    {OP_FTP_OPEN, "{\"op\":14,\"conn\":1,\"req\":1,\"mode\":\"active\",\"port\":40001,"
                  "\"host\":\"203.0.113.7\"}", 0},
    {OP_FTP_OPENED, "{\"op\":15,\"conn\":1,\"req\":1,\"ok\":true,\"host\":\"198.51.100.1\","
                    "\"port\":30001}", 0},
    {OP_FTP_CONNECT, "{\"op\":16,\"conn\":1,\"req\":1,\"host\":\"203.0.113.7\",\"port\":40001}",
     0},
    {OP_FTP_TLS, "{\"op\":17,\"conn\":1}", 0},
    {OP_APPS, "{\"op\":18,\"unregister\":[\"old\"],\"register\":[{\"name\":\"dns\","
              "\"public_port\":5353,\"target_host\":\"127.0.0.1\",\"target_port\":53,"
              "\"protocol\":\"udp\"}]}", 0},
    {OP_APPS_RESULT, "{\"op\":19,\"apps\":[{\"name\":\"dns\",\"ok\":true}]}", 0},
    {OP_NODES, "{\"op\":20,\"nodes\":[{\"name\":\"n1\",\"address\":\"198.51.100.1:6300\"},"
               "{\"name\":\"n2\",\"address\":\"[2001:db8::2]:6300\"}]}", 0},
};
#define NEXAMPLES (sizeof(examples) / sizeof(examples[0]))

/* ------------------------------------------------------------ tests */

static void test_op_names(void)
{
    static const char *names[] = {NULL,   "HELLO", "WELCOME",  "ERROR",    "PING", "BUILD_CONNECTION",
                                  "CONNECTED", "DATA", "ACK", "SHUTDOWN", "CLOSE", "RESUME",
                                  "UDP_DATA", "UDP_CLOSE", "FTP_OPEN", "FTP_OPENED",
                                  "FTP_CONNECT", "FTP_TLS", "APPS", "APPS_RESULT", "NODES"};
    static const int bad[] = {0, -1, 21, 100, INT_MIN, INT_MAX};

    CHECK(OP_MAX_CODE == 20, "OP_MAX_CODE is %d", OP_MAX_CODE);
    for (int op = 1; op <= OP_MAX_CODE; op++) {
        const char *n = op_name(op), *d = op_description(op);
        if (!names[op])
            continue; /* not given out (yet) */
        CHECK(n && strcmp(n, names[op]) == 0, "op_name(%d) = %s", op, n ? n : "NULL");
        CHECK(d && strlen(d) > 5, "op_description(%d) = %s", op, d ? d : "NULL");
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK(op_name(bad[i]) == NULL, "op_name(%d) not NULL", bad[i]);
        CHECK(op_description(bad[i]) == NULL, "op_description(%d) not NULL", bad[i]);
    }
}

static void test_packet_builder(void)
{
    json_t *j;

    j = packet(OP_PING, NULL);
    CHECK(j && json_is_object(j) && json_object_size(j) == 1, "PING has one member");
    CHECK(json_integer_value(json_object_get(j, "op")) == OP_PING, "PING op");
    json_decref(j);

    j = packet(OP_DATA, "{s:I,s:i}", "conn", (json_int_t)PKT_CONN_ID_MAX, "len", 5);
    CHECK(j && json_object_size(j) == 3, "DATA has three members");
    CHECK(json_integer_value(json_object_get(j, "op")) == OP_DATA, "DATA op");
    CHECK(json_integer_value(json_object_get(j, "conn")) == (json_int_t)PKT_CONN_ID_MAX, "conn");
    CHECK(json_integer_value(json_object_get(j, "len")) == 5, "len");
    json_decref(j);

    j = packet(OP_CLOSE, "{s:I,s:s}", "conn", (json_int_t)3, "reason", "done");
    CHECK(j && strcmp(json_string_value(json_object_get(j, "reason")), "done") == 0, "reason");
    json_decref(j);

    /* "op" always wins over a member of the same name in fmt. */
    j = packet(OP_PING, "{s:i}", "op", 99);
    CHECK(j && json_integer_value(json_object_get(j, "op")) == OP_PING, "op overridden");
    json_decref(j);

    CHECK(packet(OP_PING, "[i]", 1) == NULL, "array format refused");
    CHECK(packet(OP_PING, "i", 1) == NULL, "integer format refused");
    CHECK(packet(OP_PING, "{s:", "x") == NULL, "broken format refused");
    CHECK(packet(OP_PING, "{s:s}", "k", (const char *)NULL) == NULL, "NULL string refused");

    /* Every op built by packet() with its members survives encode + parse. */
    {
        json_t *apps_req = json_pack("[{s:s,s:i,s:s,s:i}]", "name", "ssh", "public_port", 2222,
                                     "target_host", "127.0.0.1", "target_port", 22);
        json_t *apps_res = json_pack("[{s:s,s:b}]", "name", "ssh", "ok", 1);
        json_t *built[] = {
            packet(OP_HELLO, "{s:i,s:s,s:s,s:i,s:o}", "version", 1, "token", "t", "name", "home",
                   "window", PKT_WINDOW_DEFAULT, "apps", apps_req),
            packet(OP_WELCOME, "{s:i,s:i,s:i,s:o}", "version", 1, "window", PKT_WINDOW_DEFAULT,
                   "heartbeat", 5, "apps", apps_res),
            packet(OP_ERROR, "{s:s,s:s}", "code", "protocol", "message", "m"),
            packet(OP_PING, NULL),
            packet(OP_BUILD_CONNECTION, "{s:I,s:s,s:s,s:i}", "conn", (json_int_t)7, "app", "ssh",
                   "target_host", "::1", "target_port", 22),
            packet(OP_CONNECTED, "{s:I}", "conn", (json_int_t)7),
            packet(OP_DATA, "{s:I,s:i}", "conn", (json_int_t)7, "len", 3),
            packet(OP_ACK, "{s:I,s:i}", "conn", (json_int_t)7, "bytes", 3),
            packet(OP_SHUTDOWN, "{s:I}", "conn", (json_int_t)7),
            packet(OP_CLOSE, "{s:I}", "conn", (json_int_t)7),
        };
        for (size_t i = 0; i < sizeof(built) / sizeof(built[0]); i++) {
            CHECK(built[i] != NULL, "packet() for op %zu", i + 1);
            if (!built[i])
                continue;
            CHECK(parse_json(built[i], i + 1 == OP_DATA ? 3 : 0) == 1, "op %zu round trip", i + 1);
            json_decref(built[i]);
        }
    }
}

static void test_roundtrip(void)
{
    unsigned char buf[4096];

    for (size_t i = 0; i < NEXAMPLES; i++) {
        const struct example *e = &examples[i];
        json_t *j = load(e->hdr);
        int n = pkt_encode(j, buf, sizeof(buf));
        struct pkt p;
        size_t flen = 0;
        char err[200] = "";
        unsigned char *copy = NULL;
        int r;

        CHECK(n > PKT_FRAME_PREFIX, "encode op %d: %d", e->op, n);
        if (n <= 0) {
            json_decref(j);
            continue;
        }
        /* Prefix is big-endian header length. */
        CHECK(((size_t)buf[0] << 24 | (size_t)buf[1] << 16 | (size_t)buf[2] << 8 | buf[3]) ==
                  (size_t)n - PKT_FRAME_PREFIX,
              "prefix of op %d", e->op);
        memset(buf + n, 0xA5, e->plen);
        r = parse_copy(buf, (size_t)n + e->plen, PKT_MAX_HEADER, &p, &flen, err, sizeof(err), &copy);
        CHECK(r == 1, "parse op %d: %d %s", e->op, r, err);
        if (r == 1) {
            CHECK(p.op == e->op, "op %d parsed as %d", e->op, p.op);
            CHECK(flen == (size_t)n + e->plen, "op %d frame_len %zu", e->op, flen);
            CHECK(p.json ? json_equal(p.json, j) : same_as_jansson(copy, &p),
                  "op %d header differs after round trip", e->op);
            if ((e->op >= OP_BUILD_CONNECTION && e->op <= OP_CLOSE) ||
                (e->op >= OP_UDP_DATA && e->op <= OP_FTP_TLS))
                CHECK(p.conn == 1, "op %d conn %llu", e->op, (unsigned long long)p.conn);
            else
                CHECK(p.conn == 0, "op %d conn %llu", e->op, (unsigned long long)p.conn);
            if (e->op == OP_DATA) {
                CHECK(p.len == 21, "DATA len %zu", p.len);
                CHECK(p.payload == copy + n, "payload points at the header's end");
                CHECK(p.payload[0] == 0xA5 && p.payload[20] == 0xA5, "payload bytes");
            } else if (e->op == OP_UDP_DATA) {
                CHECK(p.len == 36, "UDP_DATA len %zu", p.len);
                CHECK(p.payload == copy + n, "payload points at the header's end");
                CHECK(p.payload[0] == 0xA5 && p.payload[35] == 0xA5, "payload bytes");
            } else if (e->op == OP_ACK) {
                CHECK(p.len == 21, "ACK bytes %zu", p.len);
                CHECK(p.payload == NULL, "ACK has no payload");
            } else {
                CHECK(p.payload == NULL && p.len == 0, "op %d has no payload", e->op);
            }
        }
        /* The examples are small enough for the pre-auth limit too. */
        pkt_clear(&p);
        r = parse_copy(buf, (size_t)n + e->plen, PKT_MAX_HEADER_PREAUTH, &p, &flen, err,
                       sizeof(err), &copy);
        CHECK(r == 1, "parse op %d pre-auth: %d %s", e->op, r, err);
        pkt_clear(&p);
        json_decref(j);
    }
}

static void test_encode_limits(void)
{
    unsigned char *buf = malloc(PKT_FRAME_PREFIX + PKT_MAX_HEADER + 16);
    json_t *j = packet(OP_PING, NULL);
    int need;
    char *big;

    need = pkt_encode(j, buf, 4096);
    CHECK(need == PKT_FRAME_PREFIX + 8, "PING frame is 12 bytes, got %d", need);
    CHECK(memcmp(buf, "\0\0\0\x08{\"op\":4}", 12) == 0, "PING bytes %s", unit_show(buf, 12));
    CHECK(pkt_encode(j, buf, (size_t)need) == need, "exact capacity is enough");
    CHECK(pkt_encode(j, buf, (size_t)need - 1) == -1, "one byte short fails");
    for (size_t cap = 0; cap < (size_t)need; cap++)
        CHECK(pkt_encode(j, buf, cap) == -1, "cap %zu too small", cap);
    json_decref(j);

    /* One byte over PKT_MAX_HEADER does not fit, whatever the capacity. */
    big = repeat('a', PKT_MAX_HEADER);
    j = packet(OP_ERROR, "{s:s,s:s}", "code", "x", "message", big);
    CHECK(pkt_encode(j, buf, PKT_FRAME_PREFIX + PKT_MAX_HEADER + 16) == -1,
          "oversized header refused");
    json_decref(j);
    free(big);

    /* Exactly PKT_MAX_HEADER: pad a PING with a string member to the size. */
    {
        size_t base = strlen("{\"x\":\"\",\"op\":4}");
        char *pad = repeat('b', PKT_MAX_HEADER - base);
        j = packet(OP_PING, "{s:s}", "x", pad);
        need = pkt_encode(j, buf, PKT_FRAME_PREFIX + PKT_MAX_HEADER + 16);
        CHECK(need == PKT_FRAME_PREFIX + PKT_MAX_HEADER, "exactly max header: %d", need);
        json_decref(j);
        free(pad);
    }
    free(buf);
}

/* Cut a valid frame at every offset: always "incomplete", with the size
 * needed once the prefix (and, for DATA, the header) is in. */
static void test_truncation(void)
{
    for (size_t i = 0; i < NEXAMPLES; i++) {
        const struct example *e = &examples[i];
        size_t full, hlen = strlen(e->hdr);
        unsigned char *f = frame_text(e->hdr, e->plen, &full);

        for (size_t n = 0; n <= full; n++) {
            struct pkt p;
            size_t flen = 12345, want;
            char err[200] = "";
            unsigned char *copy = NULL;
            int r = parse_copy(f, n, n == full ? PKT_MAX_HEADER : PKT_MAX_HEADER_PREAUTH, &p,
                               &flen, err, sizeof(err), &copy);

            if (n == full) {
                CHECK(r == 1, "op %d whole frame: %d %s", e->op, r, err);
            } else {
                want = n < PKT_FRAME_PREFIX ? 0 : n < PKT_FRAME_PREFIX + hlen ? PKT_FRAME_PREFIX + hlen : full;
                CHECK(r == 0, "op %d cut at %zu: %d %s", e->op, n, r, err);
                CHECK(flen == want, "op %d cut at %zu: frame_len %zu, want %zu", e->op, n, flen, want);
                CHECK(p.json == NULL && p.payload == NULL, "op %d cut at %zu: pkt not empty", e->op, n);
            }
            pkt_clear(&p);
        }
        free(f);
    }
}

static void test_header_length(void)
{
    static const uint32_t bad[] = {0, PKT_MAX_HEADER + 1, 0x00100000, 0x7FFFFFFF, 0x80000000,
                                   0xFFFFFFFF};
    struct pkt p;
    size_t n, flen;
    char err[200];
    unsigned char *f;

    /* Out of range lengths are refused from the prefix alone: never wait for
     * (or allocate) the bytes they announce. */
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        for (int pre = 0; pre < 2; pre++) {
            size_t maxh = pre ? PKT_MAX_HEADER_PREAUTH : PKT_MAX_HEADER;
            f = frame_raw(bad[i], "", 0, NULL, 0, &n);
            err[0] = '\0';
            CHECK(pkt_parse_frame(f, n, maxh, &p, &flen, err, sizeof(err)) == -1,
                  "header length %u (limit %zu) refused", bad[i], maxh);
            CHECK(err[0] != '\0', "with a reason");
            free(f);
            f = frame_raw(bad[i], "{\"op\":4}", 8, NULL, 0, &n);
            CHECK(pkt_parse_frame(f, n, maxh, &p, &flen, err, sizeof(err)) == -1,
                  "header length %u with bytes after it refused", bad[i]);
            free(f);
        }
    }
    /* Between the limits: fine after auth, refused before. */
    for (uint32_t h = PKT_MAX_HEADER_PREAUTH + 1; h <= PKT_MAX_HEADER; h += 4093) {
        f = frame_raw(h, "", 0, NULL, 0, &n);
        CHECK(pkt_parse_frame(f, n, PKT_MAX_HEADER_PREAUTH, &p, &flen, err, sizeof(err)) == -1,
              "pre-auth header length %u refused", h);
        CHECK(pkt_parse_frame(f, n, PKT_MAX_HEADER, &p, &flen, err, sizeof(err)) == 0,
              "post-auth header length %u waits for more", h);
        CHECK(flen == PKT_FRAME_PREFIX + h, "needs %zu", flen);
        free(f);
    }
    /* A PING padded with spaces to exactly each limit, and one byte more. */
    {
        const size_t lims[] = {PKT_MAX_HEADER_PREAUTH, PKT_MAX_HEADER};
        for (size_t i = 0; i < 2; i++) {
            char *h = repeat(' ', lims[i] + 1);
            memcpy(h, "{\"op\":4}", 8);
            h[lims[i]] = '\0';
            CHECK(parse_text(h, 0, lims[i]) == 1, "PING padded to %zu accepted", lims[i]);
            h[lims[i]] = ' ';
            CHECK(parse_text(h, 0, lims[i]) == -1, "PING padded to %zu refused", lims[i] + 1);
            if (i == 0)
                CHECK(parse_text(h, 0, PKT_MAX_HEADER) == 1, "that one is fine after auth");
            free(h);
        }
    }
}

static void test_data_len(void)
{
    static const char *bad[] = {
        "{\"op\":7,\"conn\":1,\"len\":0}",
        "{\"op\":7,\"conn\":1,\"len\":262145}",
        "{\"op\":7,\"conn\":1,\"len\":4294967296}",
        "{\"op\":7,\"conn\":1,\"len\":9223372036854775807}",
        "{\"op\":7,\"conn\":1,\"len\":-1}",
        "{\"op\":7,\"conn\":1,\"len\":-9223372036854775808}",
        "{\"op\":7,\"conn\":1}",
        "{\"op\":7,\"conn\":1,\"len\":1.0}",
        "{\"op\":7,\"conn\":1,\"len\":1e3}",
        "{\"op\":7,\"conn\":1,\"len\":\"5\"}",
        "{\"op\":7,\"conn\":1,\"len\":null}",
        "{\"op\":7,\"conn\":1,\"len\":true}",
        "{\"op\":7,\"conn\":1,\"len\":[5]}",
        "{\"op\":7,\"conn\":1,\"len\":{}}",
        "{\"op\":7,\"conn\":1,\"len\":99999999999999999999999}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK(parse_text(bad[i], 0, PKT_MAX_HEADER) == -1, "refused: %s", bad[i]);
        CHECK(parse_text(bad[i], 300000, PKT_MAX_HEADER) == -1, "refused with payload: %s", bad[i]);
    }
    CHECK(parse_text("{\"op\":7,\"conn\":1,\"len\":1}", 1, PKT_MAX_HEADER) == 1, "len 1");
    CHECK(parse_text("{\"op\":7,\"conn\":1,\"len\":262144}", PKT_MAX_DATA, PKT_MAX_HEADER) == 1,
          "len PKT_MAX_DATA");
    CHECK(parse_text("{\"op\":7,\"conn\":1,\"len\":262144}", PKT_MAX_DATA - 1, PKT_MAX_HEADER) == 0,
          "len PKT_MAX_DATA, one byte short");
    /* A len on other ops means nothing. */
    CHECK(parse_text("{\"op\":6,\"conn\":1,\"len\":5}", 0, PKT_MAX_HEADER) == 1, "len on CONNECTED");
}

/* The payload pointer and frame length are exact, with more bytes after. */
static void test_payload_exact(void)
{
    const char *h1 = "{\"len\":5,\"op\":7,\"conn\":42}";
    const char *h2 = "{\"op\":4}";
    size_t l1 = strlen(h1), l2 = strlen(h2), total = 3 * PKT_FRAME_PREFIX + l1 + 5 + l2 + l1 + 5;
    unsigned char *buf = malloc(total), *q = buf;
    struct pkt p;
    size_t flen, off = 0;
    char err[200] = "";
    int r;

#define PUT(h, l, pay, pl)                                           \
    do {                                                             \
        q[0] = 0; q[1] = 0; q[2] = (unsigned char)((l) >> 8); q[3] = (unsigned char)(l); \
        memcpy(q + 4, (h), (l));                                     \
        memcpy(q + 4 + (l), (pay), (pl));                            \
        q += 4 + (l) + (pl);                                         \
    } while (0)
    PUT(h1, l1, "hello", 5);
    PUT(h2, l2, "", 0);
    PUT(h1, l1, "world", 5);
#undef PUT

    r = pkt_parse_frame(buf, total, PKT_MAX_HEADER, &p, &flen, err, sizeof(err));
    CHECK(r == 1, "first DATA: %d %s", r, err);
    CHECK(p.op == OP_DATA && p.conn == 42 && p.len == 5, "fields");
    CHECK(flen == PKT_FRAME_PREFIX + l1 + 5, "frame_len %zu", flen);
    CHECK(p.payload == buf + PKT_FRAME_PREFIX + l1, "payload pointer");
    CHECK(p.payload && memcmp(p.payload, "hello", 5) == 0, "payload bytes");
    pkt_clear(&p);
    CHECK(p.json == NULL && p.payload == NULL && p.op == 0, "pkt_clear empties");
    off += flen;
    r = pkt_parse_frame(buf + off, total - off, PKT_MAX_HEADER, &p, &flen, err, sizeof(err));
    CHECK(r == 1 && p.op == OP_PING && flen == PKT_FRAME_PREFIX + l2, "PING after: %d", r);
    pkt_clear(&p);
    off += flen;
    r = pkt_parse_frame(buf + off, total - off, PKT_MAX_HEADER, &p, &flen, err, sizeof(err));
    CHECK(r == 1 && p.payload == buf + off + PKT_FRAME_PREFIX + l1, "second DATA: %d", r);
    CHECK(p.payload && memcmp(p.payload, "world", 5) == 0, "second payload bytes");
    CHECK(off + flen == total, "walked the whole buffer");
    pkt_clear(&p);
    pkt_clear(&p); /* twice is harmless */
    free(buf);
}

static void test_json_shape(void)
{
    static const char *bad[] = {
        /* duplicate keys, at the top and nested */
        "{\"op\":4,\"op\":4}",
        "{\"op\":6,\"conn\":1,\"conn\":2}",
        "{\"op\":4,\"x\":1,\"x\":1}",
        "{\"op\":1,\"version\":1,\"token\":\"t\",\"name\":\"h\",\"window\":65536,\"apps\":[{\"name\":"
        "\"a\",\"name\":\"b\",\"public_port\":1,\"target_host\":\"h\",\"target_port\":1}]}",
        "{\"op\":4,\"x\":{\"a\":1,\"a\":2}}",
        /* not an object */
        "[]", "[{\"op\":4}]", "4", "\"op\"", "null", "true", "false", "1.5",
        /* trailing bytes inside the header length */
        "{\"op\":4}x", "{\"op\":4}{\"op\":4}", "{\"op\":4},", "{\"op\":4}]", "{\"op\":4} 1",
        /* broken JSON */
        "{", "}", "{\"op\":4", "{\"op\" 4}", "{op:4}", "{'op':4}", "{\"op\":4,}", "",
        " ", "{\"op\":04}", "{\"op\":+4}", "{\"op\":0x4}", "{\"op\":4}\x01",
        /* invalid UTF-8 in a string */
        "{\"op\":4,\"x\":\"\xff\"}", "{\"op\":4,\"x\":\"\xc3\"}", "{\"op\":4,\"x\":\"\xed\xa0\x80\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK(parse_text(bad[i], 0, PKT_MAX_HEADER) == -1, "refused: %s",
              unit_show(bad[i], strlen(bad[i])));

    /* A NUL byte inside the header, and at its end. */
    {
        static const char h[] = "{\"op\":4}\0";
        size_t n, flen;
        struct pkt p;
        char err[100];
        unsigned char *f = frame_raw(9, h, 9, NULL, 0, &n);
        CHECK(pkt_parse_frame(f, n, PKT_MAX_HEADER, &p, &flen, err, sizeof(err)) == -1,
              "NUL after the object refused");
        free(f);
        f = frame_raw(9, "{\"op\"\0:4}", 9, NULL, 0, &n);
        CHECK(pkt_parse_frame(f, n, PKT_MAX_HEADER, &p, &flen, err, sizeof(err)) == -1,
              "NUL inside the object refused");
        free(f);
    }
    /* Whitespace around the object is allowed by JSON. */
    ACCEPT(" {\"op\":4} ");
    ACCEPT("\n{\"op\":4}\r\n\t");
    /* Unknown members are ignored. */
    ACCEPT("{\"op\":4,\"future\":[1,{\"a\":null}],\"x\":\"\\u00e9\"}");
    /* Deep nesting hits the decoder's depth limit, not the stack. */
    {
        size_t depth = 20000;
        char *h = malloc(depth * 2 + 32);
        static const char head[] = "{\"op\":4,\"x\":";
        size_t o = sizeof(head) - 1;
        memcpy(h, head, o);
        memset(h + o, '[', depth);
        memset(h + o + depth, ']', depth);
        memcpy(h + o + 2 * depth, "}", 2);
        REJECT(h);
        free(h);
    }
    /* Small error buffers are fine. */
    {
        size_t n, flen;
        struct pkt p;
        char err[4] = "zzz";
        unsigned char *f = frame_text("{\"op\":99}", 0, &n);
        CHECK(pkt_parse_frame(f, n, PKT_MAX_HEADER, &p, &flen, err, sizeof(err)) == -1, "op 99");
        CHECK(strlen(err) < sizeof(err), "err truncated");
        CHECK(pkt_parse_frame(f, n, PKT_MAX_HEADER, &p, &flen, err, 1) == -1, "errlen 1");
        CHECK(err[0] == '\0', "errlen 1 gives an empty string");
        free(f);
    }
}

static void test_unknown_op(void)
{
    static const char *bad[] = {
        "{\"op\":0}", "{\"op\":12}", "{\"op\":-1}", "{\"op\":13}", "{\"op\":255}",
        "{\"op\":4294967300}", "{\"op\":9223372036854775807}", "{\"op\":-9223372036854775808}",
        "{\"op\":\"4\"}", "{\"op\":\"PING\"}", "{\"op\":4.0}", "{\"op\":null}", "{\"op\":true}",
        "{\"op\":[4]}", "{\"op\":{}}", "{}", "{\"OP\":4}", "{\"op \":4}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        REJECT(bad[i]);
    /* pkt_validate directly, on non-objects too. */
    {
        struct pkt p;
        char err[100];
        json_t *j = json_array();
        CHECK(pkt_validate(j, &p, err, sizeof(err)) == -1, "array refused");
        json_decref(j);
        CHECK(pkt_validate(NULL, &p, err, sizeof(err)) == -1, "NULL refused");
    }
}

/* A member and its kind for the table below. */
enum kind { K_INT, K_STR, K_ARRAY, K_BOOL, K_OBJ };
static const struct member {
    int op;
    const char *key;
    enum kind kind;
    int required;
} members[] = {
    {OP_HELLO, "op", K_INT, 1},
    {OP_HELLO, "version", K_INT, 1},
    {OP_HELLO, "token", K_STR, 1},
    {OP_HELLO, "name", K_STR, 1},
    {OP_HELLO, "window", K_INT, 1},
    {OP_HELLO, "apps", K_ARRAY, 0},
    {OP_HELLO, "max_version", K_INT, 0},
    {OP_HELLO, "resume_grace", K_INT, 0},
    {OP_HELLO, "resume", K_OBJ, 0},
    {OP_WELCOME, "op", K_INT, 1},
    {OP_WELCOME, "version", K_INT, 1},
    {OP_WELCOME, "window", K_INT, 1},
    {OP_WELCOME, "heartbeat", K_INT, 1},
    {OP_WELCOME, "apps", K_ARRAY, 1},
    {OP_WELCOME, "session", K_STR, 0},
    {OP_WELCOME, "resume_token", K_STR, 0},
    {OP_WELCOME, "resume_grace", K_INT, 0},
    {OP_WELCOME, "resumed", K_BOOL, 0},
    {OP_ERROR, "op", K_INT, 1},
    {OP_ERROR, "code", K_STR, 1},
    {OP_ERROR, "message", K_STR, 1},
    {OP_PING, "op", K_INT, 1},
    {OP_BUILD_CONNECTION, "op", K_INT, 1},
    {OP_BUILD_CONNECTION, "conn", K_INT, 1},
    {OP_BUILD_CONNECTION, "app", K_STR, 1},
    {OP_BUILD_CONNECTION, "target_host", K_STR, 1},
    {OP_BUILD_CONNECTION, "target_port", K_INT, 1},
    {OP_CONNECTED, "op", K_INT, 1},
    {OP_CONNECTED, "conn", K_INT, 1},
    {OP_DATA, "op", K_INT, 1},
    {OP_DATA, "conn", K_INT, 1},
    {OP_DATA, "len", K_INT, 1},
    {OP_ACK, "op", K_INT, 1},
    {OP_ACK, "conn", K_INT, 1},
    {OP_ACK, "bytes", K_INT, 1},
    {OP_ACK, "total", K_INT, 0},
    {OP_SHUTDOWN, "op", K_INT, 1},
    {OP_SHUTDOWN, "conn", K_INT, 1},
    {OP_CLOSE, "op", K_INT, 1},
    {OP_CLOSE, "conn", K_INT, 1},
    {OP_CLOSE, "reason", K_STR, 0},
    {OP_RESUME, "op", K_INT, 1},
    {OP_RESUME, "conns", K_ARRAY, 1},
    {OP_RESUME, "last", K_BOOL, 1},
    {OP_UDP_DATA, "op", K_INT, 1},
    {OP_UDP_DATA, "session", K_INT, 1},
    {OP_UDP_DATA, "len", K_INT, 1},
    {OP_UDP_DATA, "open", K_OBJ, 0},
    {OP_UDP_DATA, "drops", K_OBJ, 0},
    {OP_UDP_CLOSE, "op", K_INT, 1},
    {OP_UDP_CLOSE, "session", K_INT, 1},
    {OP_UDP_CLOSE, "reason", K_STR, 0},
    {OP_UDP_CLOSE, "drops", K_OBJ, 0},
    {OP_FTP_OPEN, "op", K_INT, 1},
    {OP_FTP_OPEN, "conn", K_INT, 1},
    {OP_FTP_OPEN, "req", K_INT, 1},
    {OP_FTP_OPEN, "mode", K_STR, 1},
    {OP_FTP_OPEN, "port", K_INT, 1},
    {OP_FTP_OPEN, "host", K_STR, 1},
    {OP_FTP_OPENED, "conn", K_INT, 1},
    {OP_FTP_OPENED, "req", K_INT, 1},
    {OP_FTP_OPENED, "ok", K_BOOL, 1},
    {OP_FTP_OPENED, "host", K_STR, 0},
    {OP_FTP_OPENED, "port", K_INT, 0},
    {OP_FTP_CONNECT, "conn", K_INT, 1},
    {OP_FTP_CONNECT, "req", K_INT, 1},
    {OP_FTP_CONNECT, "host", K_STR, 1},
    {OP_FTP_CONNECT, "port", K_INT, 1},
    {OP_FTP_TLS, "conn", K_INT, 1},
    {OP_APPS, "op", K_INT, 1},
    {OP_APPS, "unregister", K_ARRAY, 0},
    {OP_APPS, "register", K_ARRAY, 0},
    {OP_APPS_RESULT, "op", K_INT, 1},
    {OP_APPS_RESULT, "apps", K_ARRAY, 0},
    {OP_NODES, "op", K_INT, 1},
    {OP_NODES, "nodes", K_ARRAY, 1},
};

static const struct example *example_of(int op)
{
    for (size_t i = 0; i < NEXAMPLES; i++)
        if (examples[i].op == op)
            return &examples[i];
    return NULL;
}

/* Values of every JSON type but the member's own. */
static json_t *wrong_value(enum kind k, int i)
{
    switch (i) {
    case 0: return k == K_STR ? json_integer(1) : json_string("1");
    case 1: return json_real(1.0);
    case 2: return k == K_BOOL ? json_integer(0) : json_true();
    case 3: return json_null();
    case 4: return k == K_ARRAY ? json_object() : json_array();
    case 5: return k == K_ARRAY || k == K_OBJ ? json_string("[]") : json_object();
    default: return NULL;
    }
}

static void test_required_members(void)
{
    for (size_t i = 0; i < sizeof(members) / sizeof(members[0]); i++) {
        const struct member *m = &members[i];
        const struct example *e = example_of(m->op);
        json_t *j = load(e->hdr);
        int r;

        CHECK(parse_json(j, e->plen) == 1, "base of op %d accepted", m->op);
        json_object_del(j, m->key);
        r = parse_json(j, e->plen);
        /* WELCOME's apps is optional (docs/PROTOCOL.md): a HELLO may ask for none. */
        if (m->op == OP_WELCOME && strcmp(m->key, "apps") == 0)
            CHECK(r == 1, "WELCOME without its optional 'apps' accepted, got %d", r);
        else if (m->required)
            CHECK(r == -1, "op %d without '%s' refused, got %d", m->op, m->key, r);
        else
            CHECK(r == 1, "op %d without optional '%s' accepted, got %d", m->op, m->key, r);
        for (int w = 0; w < 6; w++) {
            json_t *v = wrong_value(m->kind, w);
            char *shown = json_dumps(v, JSON_ENCODE_ANY);
            json_object_set_new(j, m->key, v);
            CHECK(parse_json(j, e->plen) == -1, "op %d with '%s': %s refused", m->op, m->key, shown);
            free(shown);
        }
        json_decref(j);
    }

    /* Members of HELLO's app requests and WELCOME's results. */
    {
        static const struct {
            const char *key;
            enum kind kind;
        } req[] = {{"name", K_STR}, {"public_port", K_INT}, {"target_host", K_STR},
                   {"target_port", K_INT}};
        for (size_t i = 0; i < 4; i++) {
            json_t *j = load(example_of(OP_HELLO)->hdr);
            json_t *app = json_array_get(json_object_get(j, "apps"), 0);
            json_object_del(app, req[i].key);
            CHECK(parse_json(j, 0) == -1, "app request without '%s' refused", req[i].key);
            for (int w = 0; w < 6; w++) {
                json_object_set_new(app, req[i].key, wrong_value(req[i].kind, w));
                CHECK(parse_json(j, 0) == -1, "app request '%s' of wrong type %d refused",
                      req[i].key, w);
            }
            json_decref(j);
        }
    }
    {
        json_t *j = load(example_of(OP_WELCOME)->hdr);
        json_t *res = json_array_get(json_object_get(j, "apps"), 0);
        CHECK(parse_json(j, 0) == 1, "WELCOME base");
        json_object_set_new(res, "error", json_string("port in use"));
        json_object_set_new(res, "ok", json_false());
        CHECK(parse_json(j, 0) == 1, "WELCOME failed result with error");
        json_object_set_new(res, "error", json_integer(1));
        CHECK(parse_json(j, 0) == -1, "result error not a string");
        json_object_del(res, "error");
        json_object_del(res, "ok");
        CHECK(parse_json(j, 0) == -1, "result without ok");
        json_object_set_new(res, "ok", json_integer(1));
        CHECK(parse_json(j, 0) == -1, "result ok = 1");
        json_object_set_new(res, "ok", json_string("true"));
        CHECK(parse_json(j, 0) == -1, "result ok = \"true\"");
        json_object_set_new(res, "ok", json_true());
        json_object_del(res, "name");
        CHECK(parse_json(j, 0) == -1, "result without name");
        json_object_set_new(res, "name", json_integer(1));
        CHECK(parse_json(j, 0) == -1, "result name = 1");
        json_array_append_new(json_object_get(j, "apps"), json_string("x"));
        CHECK(parse_json(j, 0) == -1, "result not an object");
        json_decref(j);
    }
}

/* Set one member of an example to a JSON value given as text; expect r. */
static void expect_member(int op, const char *key, const char *value, int want, int line)
{
    const struct example *e = example_of(op);
    json_t *j = load(e->hdr);
    json_error_t jerr;
    json_t *v = json_loads(value, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    int r;

    if (!v) {
        fprintf(stderr, "bad test value %s\n", value);
        exit(2);
    }
    json_object_set_new(j, key, v);
    r = parse_json(j, e->plen);
    if (r != want)
        unit_fail(__FILE__, line, "expect_member", "op %d %s=%.60s: got %d, want %d", op, key,
                  value, r, want);
    json_decref(j);
}
#define MEMBER_OK(op, key, v) expect_member((op), (key), (v), 1, __LINE__)
#define MEMBER_BAD(op, key, v) expect_member((op), (key), (v), -1, __LINE__)

/* APPS members (version 4): names to unregister, requests to register. */
static void test_apps_members(void)
{
    MEMBER_OK(OP_APPS, "unregister", "[]");
    MEMBER_OK(OP_APPS, "unregister", "[\"a\",\"b-c_1\"]");
    MEMBER_BAD(OP_APPS, "unregister", "[\"a b\"]");
    MEMBER_BAD(OP_APPS, "unregister", "[1]");
    MEMBER_BAD(OP_APPS, "unregister", "\"a\"");
    MEMBER_OK(OP_APPS, "register", "[{\"name\":\"w\",\"public_port\":80,"
                                   "\"target_host\":\"10.0.0.2\",\"target_port\":8080}]");
    MEMBER_BAD(OP_APPS, "register", "[{\"name\":\"w\",\"public_port\":80,"
                                    "\"target_host\":\"10.0.0.2\"}]");
    MEMBER_BAD(OP_APPS, "register", "[{\"name\":\"w\",\"public_port\":80,"
                                    "\"target_host\":\"10.0.0.2\",\"target_port\":8080,"
                                    "\"protocol\":\"sctp\"}]");
    MEMBER_BAD(OP_APPS, "register", "{}");
    MEMBER_OK(OP_APPS_RESULT, "apps", "[{\"name\":\"w\",\"ok\":false,\"error\":\"taken\"}]");
    MEMBER_BAD(OP_APPS_RESULT, "apps", "[{\"name\":\"w\"}]");
}

/* UDP members (version 3): session ids, datagram sizes, open, drops, apps. */
static void test_udp_members(void)
{
    MEMBER_OK(OP_UDP_DATA, "session", "9007199254740991");
    MEMBER_BAD(OP_UDP_DATA, "session", "9007199254740992");
    MEMBER_BAD(OP_UDP_DATA, "session", "0");
    MEMBER_BAD(OP_UDP_CLOSE, "session", "0");
    MEMBER_BAD(OP_UDP_DATA, "len", "65536");
    MEMBER_BAD(OP_UDP_DATA, "len", "-1");
    MEMBER_OK(OP_UDP_DATA, "open", "{\"app\":\"dns\",\"target_host\":\"127.0.0.1\","
                                   "\"target_port\":53,\"idle\":120}");
    MEMBER_BAD(OP_UDP_DATA, "open", "{\"app\":\"dns\",\"target_host\":\"127.0.0.1\","
                                    "\"target_port\":53}");         /* no idle */
    MEMBER_BAD(OP_UDP_DATA, "open", "{\"app\":\"dns\",\"target_host\":\"127.0.0.1\","
                                    "\"target_port\":53,\"idle\":4}");
    MEMBER_BAD(OP_UDP_DATA, "open", "{\"app\":\"dns\",\"target_host\":\"127.0.0.1\","
                                    "\"target_port\":53,\"idle\":3601}");
    MEMBER_BAD(OP_UDP_DATA, "open", "{\"app\":\"d n\",\"target_host\":\"127.0.0.1\","
                                    "\"target_port\":53,\"idle\":120}");
    MEMBER_BAD(OP_UDP_DATA, "open", "{\"app\":\"dns\",\"target_host\":\"a/b\","
                                    "\"target_port\":53,\"idle\":120}");
    MEMBER_BAD(OP_UDP_DATA, "open", "{\"app\":\"dns\",\"target_host\":\"127.0.0.1\","
                                    "\"target_port\":0,\"idle\":120}");
    MEMBER_OK(OP_UDP_DATA, "drops", "{}");
    MEMBER_OK(OP_UDP_DATA, "drops", "{\"queue_full\":4294967295,\"oversize\":0}");
    MEMBER_OK(OP_UDP_CLOSE, "drops", "{\"tunnel_down\":3}");
    MEMBER_BAD(OP_UDP_DATA, "drops", "{\"queue_full\":4294967296}");
    MEMBER_BAD(OP_UDP_DATA, "drops", "{\"queue_full\":-1}");
    MEMBER_BAD(OP_UDP_DATA, "drops", "{\"other\":1}");
    MEMBER_BAD(OP_UDP_DATA, "drops", "{\"queue_full\":\"1\"}");
    MEMBER_BAD(OP_UDP_DATA, "drops",
               "{\"queue_full\":1,\"oversize\":1,\"tunnel_down\":1,\"x\":1}");
    MEMBER_BAD(OP_UDP_CLOSE, "reason",
               "\"0123456789012345678901234567890123456789012345678901234567890123456789\"");
    /* App entries of HELLO: protocol and idle timeout, in apps and udp_apps. */
    MEMBER_OK(OP_HELLO, "udp_apps", "[{\"name\":\"dns\",\"public_port\":5353,"
                                    "\"target_host\":\"127.0.0.1\",\"target_port\":53,"
                                    "\"protocol\":\"udp\",\"udp_idle_timeout\":30}]");
    MEMBER_BAD(OP_HELLO, "udp_apps", "[{\"name\":\"dns\",\"public_port\":5353,"
                                     "\"target_host\":\"127.0.0.1\",\"target_port\":53,"
                                     "\"protocol\":\"sctp\"}]");
    MEMBER_BAD(OP_HELLO, "udp_apps", "[{\"name\":\"dns\",\"public_port\":5353,"
                                     "\"target_host\":\"127.0.0.1\",\"target_port\":53,"
                                     "\"udp_idle_timeout\":3601}]");
    MEMBER_BAD(OP_HELLO, "udp_apps", "{}");
    MEMBER_OK(OP_HELLO, "max_version", "3");
    /* The private's allowlist: strings, bounded in number and size. */
    MEMBER_OK(OP_HELLO, "allow", "[\"127.0.0.0/8:1-65535\",\"any\",\"[::1]:80\"]");
    MEMBER_OK(OP_APPS, "allow", "[]");
    MEMBER_BAD(OP_HELLO, "allow", "\"any\"");
    MEMBER_BAD(OP_HELLO, "allow", "[1]");
    MEMBER_BAD(OP_APPS, "allow", "[\"a\\u0000b:1\"]");
    {
        char many[PKT_ALLOW_MAX * 8 + 16], big[PKT_ALLOW_RULE_MAX + 8];
        size_t n = 0;
        n += (size_t)snprintf(many + n, sizeof(many) - n, "[");
        for (int i = 0; i <= PKT_ALLOW_MAX; i++)
            n += (size_t)snprintf(many + n, sizeof(many) - n, "%s\"any\"", i ? "," : "");
        snprintf(many + n, sizeof(many) - n, "]");
        MEMBER_BAD(OP_HELLO, "allow", many);
        memset(big, 'a', sizeof(big));
        big[0] = '[';
        big[1] = '"';
        big[sizeof(big) - 3] = '"';
        big[sizeof(big) - 2] = ']';
        big[sizeof(big) - 1] = '\0';
        MEMBER_BAD(OP_HELLO, "allow", big);
    }
}

/* FTP members (version 5): the four operations, BUILD_CONNECTION's "ftp",
 * HELLO's ftp_apps. */
static void test_ftp_members(void)
{
    MEMBER_OK(OP_FTP_OPEN, "mode", "\"passive\"");
    MEMBER_BAD(OP_FTP_OPEN, "mode", "\"PASSIVE\"");
    MEMBER_BAD(OP_FTP_OPEN, "mode", "\"bounce\"");
    MEMBER_BAD(OP_FTP_OPEN, "req", "0");
    MEMBER_OK(OP_FTP_OPEN, "req", "2147483647");
    MEMBER_BAD(OP_FTP_OPEN, "req", "2147483648");
    MEMBER_BAD(OP_FTP_OPEN, "port", "0");
    MEMBER_BAD(OP_FTP_OPEN, "port", "65536");
    MEMBER_OK(OP_FTP_OPEN, "host", "\"2001:db8::1\"");
    MEMBER_BAD(OP_FTP_OPEN, "host", "\"example.org\"");
    MEMBER_BAD(OP_FTP_OPEN, "host", "\"203.0.113.7 \"");
    MEMBER_BAD(OP_FTP_OPEN, "host", "\"\"");
    MEMBER_OK(OP_FTP_OPENED, "code", "425");
    MEMBER_BAD(OP_FTP_OPENED, "code", "200");
    MEMBER_OK(OP_FTP_OPENED, "reason", "\"no free data port\"");
    MEMBER_BAD(OP_FTP_OPENED, "host", "\"203.0.113\"");
    MEMBER_BAD(OP_FTP_CONNECT, "host", "\"localhost\"");
    MEMBER_BAD(OP_FTP_TLS, "conn", "0");
    MEMBER_OK(OP_BUILD_CONNECTION, "ftp", "\"control\"");
    MEMBER_BAD(OP_BUILD_CONNECTION, "ftp", "\"data\""); /* no ftp_ctl, ftp_req */
    MEMBER_BAD(OP_BUILD_CONNECTION, "ftp", "\"tls\"");
    MEMBER_BAD(OP_BUILD_CONNECTION, "ftp_ctl", "3");   /* without "ftp" */
    {
        json_t *j = load("{\"op\":5,\"conn\":2,\"app\":\"f\",\"target_host\":\"127.0.0.1\","
                         "\"target_port\":21,\"ftp\":\"data\",\"ftp_ctl\":1,\"ftp_req\":3}");
        CHECK(parse_json(j, 0) == 1, "FTP data BUILD_CONNECTION accepted");
        json_object_set_new(j, "ftp_req", json_integer(0));
        CHECK(parse_json(j, 0) == -1, "ftp_req 0 refused");
        json_object_set_new(j, "ftp_req", json_integer(3));
        json_object_set_new(j, "ftp", json_string("control"));
        CHECK(parse_json(j, 0) == -1, "a control BUILD_CONNECTION with ftp_ctl refused");
        json_decref(j);
    }
    MEMBER_OK(OP_HELLO, "ftp_apps", "[{\"name\":\"nas\",\"public_port\":2121,"
                                    "\"target_host\":\"192.0.2.5\",\"target_port\":21,"
                                    "\"protocol\":\"ftp\"}]");
    MEMBER_OK(OP_HELLO, "ftp_apps", "[{\"name\":\"nas\",\"public_port\":2121,"
                                    "\"target_host\":\"192.0.2.5\",\"target_port\":21,"
                                    "\"protocol\":\"ftp\",\"ftp_passive_ports\":\"40000-40099\"}]");
    MEMBER_BAD(OP_HELLO, "ftp_apps", "[{\"name\":\"nas\",\"public_port\":2121,"
                                     "\"target_host\":\"192.0.2.5\",\"target_port\":21,"
                                     "\"protocol\":\"ftp\",\"ftp_passive_ports\":\"40000-41000\"}]");
    MEMBER_BAD(OP_HELLO, "ftp_apps", "[{\"name\":\"nas\",\"public_port\":2121,"
                                     "\"target_host\":\"192.0.2.5\",\"target_port\":21,"
                                     "\"ftp_passive_ports\":\"80-90\"}]");
    MEMBER_OK(OP_HELLO, "max_version", "5");
}

/* Resumption members (version 2): hex ids, RESUME entries and limits. */
static void test_resume_members(void)
{
    char buf[300];
    const char *sid = "0123456789abcdef0123456789abcdef";
    const char *tok = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    snprintf(buf, sizeof(buf), "{\"session\":\"%s\",\"token\":\"%s\"}", sid, tok);
    MEMBER_OK(OP_HELLO, "resume", buf);
    snprintf(buf, sizeof(buf), "{\"session\":\"%s\"}", sid);
    MEMBER_BAD(OP_HELLO, "resume", buf);            /* no token */
    snprintf(buf, sizeof(buf), "{\"session\":\"%.31s\",\"token\":\"%s\"}", sid, tok);
    MEMBER_BAD(OP_HELLO, "resume", buf);            /* 31 digits */
    snprintf(buf, sizeof(buf), "{\"session\":\"%sa\",\"token\":\"%s\"}", sid, tok);
    MEMBER_BAD(OP_HELLO, "resume", buf);            /* 33 digits */
    snprintf(buf, sizeof(buf), "{\"session\":\"0123456789ABCDEF0123456789abcdef\","
                               "\"token\":\"%s\"}", tok);
    MEMBER_BAD(OP_HELLO, "resume", buf);            /* upper case */
    snprintf(buf, sizeof(buf), "{\"session\":\"%s\",\"token\":\"%.63sg\"}", sid, tok);
    MEMBER_BAD(OP_HELLO, "resume", buf);            /* not hex */
    MEMBER_OK(OP_HELLO, "resume_grace", "0");
    MEMBER_OK(OP_HELLO, "resume_grace", "3600");
    MEMBER_BAD(OP_HELLO, "resume_grace", "3601");
    MEMBER_BAD(OP_HELLO, "resume_grace", "-1");
    MEMBER_OK(OP_HELLO, "max_version", "2");
    MEMBER_BAD(OP_HELLO, "max_version", "0");
    snprintf(buf, sizeof(buf), "\"%s\"", sid);
    MEMBER_OK(OP_WELCOME, "session", buf);
    MEMBER_BAD(OP_WELCOME, "session", "\"x\"");
    snprintf(buf, sizeof(buf), "\"%s\"", tok);
    MEMBER_OK(OP_WELCOME, "resume_token", buf);
    MEMBER_BAD(OP_WELCOME, "resume_token", "\"\"");
    MEMBER_OK(OP_ACK, "total", "0");
    MEMBER_OK(OP_ACK, "total", "9007199254740991");
    MEMBER_BAD(OP_ACK, "total", "9007199254740992");
    MEMBER_BAD(OP_ACK, "total", "-1");
    /* RESUME entries: four integers, conn >= 1, flags < 256. */
    MEMBER_OK(OP_RESUME, "conns", "[]");
    MEMBER_OK(OP_RESUME, "conns", "[[9007199254740991,9007199254740991,0,255]]");
    MEMBER_BAD(OP_RESUME, "conns", "[[0,1,1,0]]");
    MEMBER_BAD(OP_RESUME, "conns", "[[1,1,1,256]]");
    MEMBER_BAD(OP_RESUME, "conns", "[[1,-1,0,0]]");
    MEMBER_BAD(OP_RESUME, "conns", "[[1,1,1]]");
    MEMBER_BAD(OP_RESUME, "conns", "[[1,1,1,0,0]]");
    MEMBER_BAD(OP_RESUME, "conns", "[[1,1,\"1\",0]]");
    MEMBER_BAD(OP_RESUME, "conns", "[[1,1,1.0,0]]");
    MEMBER_BAD(OP_RESUME, "conns", "[{\"conn\":1}]");
    MEMBER_BAD(OP_RESUME, "conns", "[1,1,1,0]");
    MEMBER_BAD(OP_RESUME, "last", "1");
    {
        /* At most PKT_RESUME_MAX entries in one frame. */
        size_t cap = (size_t)(PKT_RESUME_MAX + 1) * 12 + 64, n = 0;
        char *big = malloc(cap);
        CHECK(big != NULL, "malloc");
        for (int count = PKT_RESUME_MAX; big && count <= PKT_RESUME_MAX + 1; count++) {
            n = (size_t)snprintf(big, cap, "{\"op\":11,\"last\":false,\"conns\":[");
            for (int i = 0; i < count; i++)
                n += (size_t)snprintf(big + n, cap - n, "%s[%d,0,0,0]", i ? "," : "", i + 1);
            snprintf(big + n, cap - n, "]}");
            if (count == PKT_RESUME_MAX)
                ACCEPT(big);
            else
                REJECT(big);
        }
        free(big);
    }
}

static void test_ranges(void)
{
    int conn_ops[] = {OP_BUILD_CONNECTION, OP_CONNECTED, OP_DATA, OP_ACK, OP_SHUTDOWN, OP_CLOSE};
    char *s;
    char buf[1200];

    /* Connection ids: 1 <= id < 2^53. */
    for (size_t i = 0; i < sizeof(conn_ops) / sizeof(conn_ops[0]); i++) {
        MEMBER_OK(conn_ops[i], "conn", "1");
        MEMBER_OK(conn_ops[i], "conn", "9007199254740991");
        MEMBER_BAD(conn_ops[i], "conn", "0");
        MEMBER_BAD(conn_ops[i], "conn", "-1");
        MEMBER_BAD(conn_ops[i], "conn", "9007199254740992");
        MEMBER_BAD(conn_ops[i], "conn", "9223372036854775807");
        MEMBER_BAD(conn_ops[i], "conn", "1.0");
    }
    REJECT("{\"op\":6,\"conn\":18446744073709551615}");
    REJECT("{\"op\":6,\"conn\":1e20}");
    {
        size_t n, flen;
        struct pkt p;
        char err[100];
        unsigned char *f = frame_text("{\"op\":9,\"conn\":9007199254740991}", 0, &n);
        CHECK(pkt_parse_frame(f, n, PKT_MAX_HEADER, &p, &flen, err, sizeof(err)) == 1 &&
                  p.conn == PKT_CONN_ID_MAX, "largest conn id kept exactly");
        pkt_clear(&p);
        free(f);
    }
    /* Windows, heartbeat, ports, ACK bytes. */
    for (int op = OP_HELLO; op <= OP_WELCOME; op++) {
        MEMBER_OK(op, "window", "65536");
        MEMBER_OK(op, "window", "16777216");
        MEMBER_BAD(op, "window", "65535");
        MEMBER_BAD(op, "window", "16777217");
        MEMBER_BAD(op, "window", "0");
        MEMBER_BAD(op, "window", "-1");
    }
    MEMBER_OK(OP_WELCOME, "heartbeat", "1");
    MEMBER_OK(OP_WELCOME, "heartbeat", "60");
    MEMBER_BAD(OP_WELCOME, "heartbeat", "0");
    MEMBER_BAD(OP_WELCOME, "heartbeat", "61");
    MEMBER_OK(OP_BUILD_CONNECTION, "target_port", "65535");
    MEMBER_BAD(OP_BUILD_CONNECTION, "target_port", "0");
    MEMBER_BAD(OP_BUILD_CONNECTION, "target_port", "65536");
    MEMBER_BAD(OP_BUILD_CONNECTION, "target_port", "-22");
    MEMBER_OK(OP_ACK, "bytes", "1");
    MEMBER_OK(OP_ACK, "bytes", "16777216");
    MEMBER_BAD(OP_ACK, "bytes", "0");
    MEMBER_BAD(OP_ACK, "bytes", "16777217");
    MEMBER_BAD(OP_ACK, "bytes", "-5");
    /* Versions other than 1 are a handshake matter (ERROR bad_version), not a
     * frame error; absurd ones are refused. */
    MEMBER_OK(OP_HELLO, "version", "2");
    MEMBER_BAD(OP_HELLO, "version", "-1");
    MEMBER_BAD(OP_HELLO, "version", "9223372036854775807");

    /* String lengths and NUL bytes. */
    s = repeat('t', PKT_TOKEN_MAX);
    snprintf(buf, sizeof(buf), "\"%s\"", s);
    MEMBER_OK(OP_HELLO, "token", buf);
    snprintf(buf, sizeof(buf), "\"%st\"", s);
    MEMBER_BAD(OP_HELLO, "token", buf);
    free(s);
    MEMBER_OK(OP_HELLO, "token", "\"\"");
    MEMBER_BAD(OP_HELLO, "token", "\"ab\\u0000cd\"");
    MEMBER_BAD(OP_ERROR, "code", "\"a\\u0000\"");
    MEMBER_BAD(OP_ERROR, "message", "\"\\u0000\"");
    MEMBER_BAD(OP_CLOSE, "reason", "\"x\\u0000y\"");
    s = repeat('c', 64);
    snprintf(buf, sizeof(buf), "\"%s\"", s);
    MEMBER_OK(OP_ERROR, "code", buf);
    snprintf(buf, sizeof(buf), "\"%sc\"", s);
    MEMBER_BAD(OP_ERROR, "code", buf);
    free(s);
    s = repeat('m', 1024);
    snprintf(buf, sizeof(buf), "\"%s\"", s);
    MEMBER_OK(OP_ERROR, "message", buf);
    snprintf(buf, sizeof(buf), "\"%sm\"", s);
    MEMBER_BAD(OP_ERROR, "message", buf);
    free(s);
    s = repeat('r', 256);
    snprintf(buf, sizeof(buf), "\"%s\"", s);
    MEMBER_OK(OP_CLOSE, "reason", buf);
    snprintf(buf, sizeof(buf), "\"%sr\"", s);
    MEMBER_BAD(OP_CLOSE, "reason", buf);
    free(s);

    /* apps: at most 64 entries, each checked. */
    {
        json_t *j = load(example_of(OP_HELLO)->hdr);
        json_t *apps = json_object_get(j, "apps");
        while (json_array_size(apps) < PKT_MAX_APPS)
            json_array_append(apps, json_array_get(apps, 0));
        CHECK(parse_json(j, 0) == 1, "64 apps accepted");
        json_array_append(apps, json_array_get(apps, 0));
        CHECK(parse_json(j, 0) == -1, "65 apps refused");
        json_array_clear(apps);
        CHECK(parse_json(j, 0) == 1, "empty apps accepted");
        json_array_append_new(apps, json_integer(1));
        CHECK(parse_json(j, 0) == -1, "apps entry not an object");
        json_decref(j);
    }
    {
        static const char *bad_apps[] = {
            "[{\"name\":\"\",\"public_port\":1,\"target_host\":\"h\",\"target_port\":1}]",
            "[{\"name\":\"a b\",\"public_port\":1,\"target_host\":\"h\",\"target_port\":1}]",
            "[{\"name\":\"a\",\"public_port\":0,\"target_host\":\"h\",\"target_port\":1}]",
            "[{\"name\":\"a\",\"public_port\":65536,\"target_host\":\"h\",\"target_port\":1}]",
            "[{\"name\":\"a\",\"public_port\":1,\"target_host\":\"\",\"target_port\":1}]",
            "[{\"name\":\"a\",\"public_port\":1,\"target_host\":\"a/b\",\"target_port\":1}]",
            "[{\"name\":\"a\",\"public_port\":1,\"target_host\":\"h\\u0000x\",\"target_port\":1}]",
            "[{\"name\":\"a\",\"public_port\":1,\"target_host\":\"h\",\"target_port\":0}]",
            "[{\"name\":\"a\",\"public_port\":1,\"target_host\":\"h\",\"target_port\":65536}]",
            "[{\"name\":\"a\",\"public_port\":1,\"target_host\":\"h\",\"target_port\":1},[]]",
        };
        for (size_t i = 0; i < sizeof(bad_apps) / sizeof(bad_apps[0]); i++)
            MEMBER_BAD(OP_HELLO, "apps", bad_apps[i]);
        MEMBER_OK(OP_HELLO, "apps",
                  "[{\"name\":\"a\",\"public_port\":65535,\"target_host\":\"::1\",\"target_port\":65535,"
                  "\"extra\":1}]");
    }
}

/* docs/PROTOCOL.md allows 64 apps in HELLO, each with a name of up to 64 bytes
 * and a target_host of up to 253, but HELLO is read before the handshake, where
 * the header may be at most 16384 bytes. */
static void test_hello_fits_preauth(void)
{
    char *name = repeat('n', PKT_NAME_MAX), *host = repeat('h', PKT_HOST_MAX);
    char *token = repeat('t', PKT_TOKEN_MAX);
    json_t *apps = json_array(), *hello;
    unsigned char *buf = malloc(PKT_FRAME_PREFIX + PKT_MAX_HEADER);
    int n;

    for (int i = 0; i < PKT_MAX_APPS; i++) {
        name[0] = (char)('A' + i % 26);
        name[1] = (char)('A' + i / 26);
        json_array_append_new(apps, json_pack("{s:s,s:i,s:s,s:i}", "name", name, "public_port",
                                              10000 + i, "target_host", host, "target_port", 65535));
    }
    hello = packet(OP_HELLO, "{s:i,s:s,s:s,s:i,s:o}", "version", 1, "token", token, "name", name,
                   "window", PKT_WINDOW_MAX, "apps", apps);
    n = pkt_encode(hello, buf, PKT_FRAME_PREFIX + PKT_MAX_HEADER);
    CHECK(n > 0, "largest HELLO encodes (%d)", n);
    CHECK(parse_copy_ok(buf, (size_t)n, PKT_MAX_HEADER) == 1, "largest HELLO valid after auth");
    CHECK(parse_copy_ok(buf, (size_t)n, PKT_MAX_HEADER_PREAUTH) == 1,
          "a HELLO with %d apps of the longest names and hosts the protocol allows (%d bytes) "
          "fits PKT_MAX_HEADER_PREAUTH (%d)",
          PKT_MAX_APPS, n - PKT_FRAME_PREFIX, PKT_MAX_HEADER_PREAUTH);
    json_decref(hello);
    free(buf);
    free(name);
    free(host);
    free(token);
}

static void test_names(void)
{
    char *s64 = repeat('n', 64), *s65 = repeat('n', 65);
    char buf[200];
    static const char *bad[] = {"", "a b", " a", "a ", "a/b", "/", "a\\b", "a:b", "a\tb",
                                "\xc3\xa9", "a\nb", "a\"b", "a%b", "a@b", "a+b", "a,b"};
    static const char *good[] = {"a", "Z", "0", "a.b", "a_b", "a-b", "-", ".", "..", "ssh-22.home_1"};

    CHECK(pkt_valid_name(s64), "64 chars valid");
    CHECK(!pkt_valid_name(s65), "65 chars invalid");
    CHECK(!pkt_valid_name(NULL), "NULL invalid");
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK(!pkt_valid_name(bad[i]), "name \"%s\" invalid", unit_show(bad[i], strlen(bad[i])));
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        CHECK(pkt_valid_name(good[i]), "name \"%s\" valid", good[i]);

    /* The same rule in frames: HELLO name, BUILD_CONNECTION app, app request name. */
    snprintf(buf, sizeof(buf), "\"%s\"", s64);
    MEMBER_OK(OP_HELLO, "name", buf);
    MEMBER_OK(OP_BUILD_CONNECTION, "app", buf);
    snprintf(buf, sizeof(buf), "\"%s\"", s65);
    MEMBER_BAD(OP_HELLO, "name", buf);
    MEMBER_BAD(OP_BUILD_CONNECTION, "app", buf);
    MEMBER_BAD(OP_HELLO, "name", "\"\"");
    MEMBER_BAD(OP_HELLO, "name", "\"a b\"");
    MEMBER_BAD(OP_HELLO, "name", "\"a/b\"");
    MEMBER_BAD(OP_HELLO, "name", "\"ab\\u0000\"");
    MEMBER_BAD(OP_BUILD_CONNECTION, "app", "\"\"");
    MEMBER_BAD(OP_BUILD_CONNECTION, "app", "\"my app\"");
    MEMBER_BAD(OP_BUILD_CONNECTION, "app", "\"../x\"");
    MEMBER_BAD(OP_WELCOME, "apps", "[{\"name\":\"a b\",\"ok\":true}]");
    free(s64);
    free(s65);
}

/* "HOST:PORT" and "[IPv6]:PORT" (the NODES addresses, --advertise): split,
 * the brackets dropped; no port, port 0 or above 65535, a bare IPv6 literal,
 * a host too long for the buffer refused. */
static void test_split_hostport(void)
{
    static const struct {
        const char *in, *host;
        int port;
    } good[] = {
        {"198.51.100.1:6300", "198.51.100.1", 6300}, {"[2001:db8::2]:1", "2001:db8::2", 1},
        {"node-1.example:65535", "node-1.example", 65535}, {"a:0080", "a", 80},
    };
    static const char *bad[] = {"", "host", "host:", ":80", "host:0", "host:65536",
                                "host:123456", "host:8a", "2001:db8::1:80", "[2001:db8::1]",
                                "[2001:db8::1]80", "[]:80", "host:-1", "host: 80"};
    char host[16];
    int port;

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        port = -1;
        CHECK(pkt_split_hostport(good[i].in, host, sizeof(host), &port) == 0 &&
                  strcmp(host, good[i].host) == 0 && port == good[i].port,
              "%s split", good[i].in);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK(pkt_split_hostport(bad[i], host, sizeof(host), &port) != 0, "\"%s\" refused",
              bad[i]);
    CHECK(pkt_split_hostport("abcdefghijklmnop:1", host, sizeof(host), &port) != 0,
          "a host of 16 chars does not fit 16 bytes");
    CHECK(pkt_split_hostport("abcdefghijklmno:1", host, sizeof(host), &port) == 0,
          "a host of 15 chars fits");
    CHECK(pkt_split_hostport(NULL, host, sizeof(host), &port) != 0, "NULL refused");
}

/* NODES (version 7) and WELCOME's "node". */
static void test_nodes_members(void)
{
    char many[PKT_NODES_MAX * 48 + 16];
    size_t n = 0;

    MEMBER_OK(OP_NODES, "nodes", "[]");
    MEMBER_OK(OP_NODES, "nodes", "[{\"name\":\"a\",\"address\":\"[::1]:6300\"}]");
    MEMBER_BAD(OP_NODES, "nodes", "[{\"name\":\"a b\",\"address\":\"h:1\"}]");
    MEMBER_BAD(OP_NODES, "nodes", "[{\"name\":\"a\"}]");
    MEMBER_BAD(OP_NODES, "nodes", "[{\"name\":\"a\",\"address\":\"h\"}]");
    MEMBER_BAD(OP_NODES, "nodes", "[{\"name\":\"a\",\"address\":\"h/x:1\"}]");
    MEMBER_BAD(OP_NODES, "nodes", "[{\"name\":\"a\",\"address\":\"::1:6300\"}]");
    MEMBER_BAD(OP_NODES, "nodes", "[{\"name\":\"a\",\"address\":1}]");
    MEMBER_BAD(OP_NODES, "nodes", "[\"a\"]");
    n += (size_t)snprintf(many + n, sizeof(many) - n, "[");
    for (int i = 0; i <= PKT_NODES_MAX; i++)
        n += (size_t)snprintf(many + n, sizeof(many) - n,
                              "%s{\"name\":\"n%d\",\"address\":\"h:1\"}", i ? "," : "", i);
    snprintf(many + n, sizeof(many) - n, "]");
    MEMBER_BAD(OP_NODES, "nodes", many);
    MEMBER_OK(OP_WELCOME, "node", "\"node-1\"");
    MEMBER_BAD(OP_WELCOME, "node", "\"node 1\"");
    MEMBER_BAD(OP_WELCOME, "node", "1");
}

static void test_valid_host(void)
{
    char *h253 = repeat('h', 253), *h254 = repeat('h', 254);
    char buf[300];
    static const char *good[] = {"localhost", "127.0.0.1", "::1", "fe80::1", "2001:db8::ff00:42:8329",
                                 "a", "my-host.example.com", "a_b", "1", "::", "0.0.0.0"};
    static const char *bad[] = {"", "a b", "a/b", "[::1]", "fe80::1%eth0", "host\n", "h\tx",
                                "h\"x", "h;x", "h\\x", "\xc3\xa9", "h:22/x", "a,b", "a@b", "*"};

    CHECK(pkt_valid_host(h253), "253 chars valid");
    CHECK(!pkt_valid_host(h254), "254 chars invalid");
    CHECK(!pkt_valid_host(NULL), "NULL invalid");
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        CHECK(pkt_valid_host(good[i]), "host %s valid", good[i]);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK(!pkt_valid_host(bad[i]), "host \"%s\" invalid", unit_show(bad[i], strlen(bad[i])));
    snprintf(buf, sizeof(buf), "\"%s\"", h253);
    MEMBER_OK(OP_BUILD_CONNECTION, "target_host", buf);
    snprintf(buf, sizeof(buf), "\"%s\"", h254);
    MEMBER_BAD(OP_BUILD_CONNECTION, "target_host", buf);
    MEMBER_BAD(OP_BUILD_CONNECTION, "target_host", "\"\"");
    MEMBER_BAD(OP_BUILD_CONNECTION, "target_host", "\"a b\"");
    MEMBER_BAD(OP_BUILD_CONNECTION, "target_host", "\"h\\u0000x\"");
    free(h253);
    free(h254);
}

/* The result of parsing a mutated frame must be one of the three answers with
 * consistent outputs. */
static void check_mutant(const unsigned char *m, size_t n, size_t maxh, const char *what, size_t at)
{
    struct pkt p;
    size_t flen = 777;
    char err[200] = "";
    unsigned char *copy = NULL;
    int r = parse_copy(m, n, maxh, &p, &flen, err, sizeof(err), &copy);

    if (r == 1) {
        CHECK((p.json || same_as_jansson(copy, &p)) && p.op >= 1 && p.op <= OP_MAX_CODE,
              "%s %zu: accepted, op %d", what, at, p.op);
        CHECK(flen > PKT_FRAME_PREFIX && flen <= n, "%s %zu: frame_len %zu of %zu", what, at, flen, n);
        if (p.op == OP_DATA)
            CHECK(p.len >= 1 && p.len <= PKT_MAX_DATA && p.payload == copy + flen - p.len,
                  "%s %zu: payload", what, at);
        else if (p.op == OP_UDP_DATA)
            CHECK(p.len <= PKT_MAX_DGRAM && p.payload == copy + flen - p.len,
                  "%s %zu: payload", what, at);
        else
            CHECK(p.payload == NULL, "%s %zu: payload on op %d", what, at, p.op);
        if ((p.op >= OP_BUILD_CONNECTION && p.op <= OP_CLOSE) || p.op == OP_UDP_DATA ||
            p.op == OP_UDP_CLOSE)
            CHECK(p.conn >= 1 && p.conn <= PKT_CONN_ID_MAX, "%s %zu: conn", what, at);
    } else if (r == 0) {
        CHECK(flen == 0 || flen > n, "%s %zu: incomplete with frame_len %zu of %zu", what, at, flen, n);
        CHECK(p.json == NULL, "%s %zu: json on incomplete", what, at);
    } else {
        CHECK(r == -1, "%s %zu: rc %d", what, at, r);
        CHECK(err[0] != '\0', "%s %zu: no reason", what, at);
        CHECK(p.json == NULL, "%s %zu: json on error", what, at);
    }
    pkt_clear(&p);
}

static void test_mutations(void)
{
    static const unsigned char vals[] = {0x00, 0x01, 0x7f, 0x80, 0xff, '"', '{', '}', '[', ',',
                                         ':', '\\', '0', '9', '-', ' '};

    for (size_t i = 0; i < NEXAMPLES; i++) {
        const struct example *e = &examples[i];
        size_t n;
        unsigned char *f = frame_text(e->hdr, e->plen, &n);
        unsigned char *m = malloc(n);

        for (size_t bit = 0; bit < n * 8; bit++) {
            memcpy(m, f, n);
            m[bit / 8] ^= (unsigned char)(1u << (bit % 8));
            check_mutant(m, n, PKT_MAX_HEADER, "bit", bit);
            check_mutant(m, n, PKT_MAX_HEADER_PREAUTH, "bit pre-auth", bit);
        }
        for (size_t at = 0; at < n; at++) {
            for (size_t v = 0; v < sizeof(vals); v++) {
                memcpy(m, f, n);
                m[at] = vals[v];
                check_mutant(m, n, PKT_MAX_HEADER, "byte", at);
            }
            /* Deleting a byte: the prefix no longer matches. */
            memcpy(m, f, at);
            memcpy(m + at, f + at + 1, n - at - 1);
            check_mutant(m, n - 1, PKT_MAX_HEADER, "delete", at);
        }
        free(m);
        free(f);
    }
}

/* Several frames in one buffer, read the way the tunnel's reader does: bytes
 * arrive in pieces, and a frame is taken as soon as it is whole. */
static void test_stream(void)
{
    size_t total = 0, off, sizes[NEXAMPLES];
    unsigned char *stream;

    for (size_t i = 0; i < NEXAMPLES; i++) {
        sizes[i] = PKT_FRAME_PREFIX + strlen(examples[i].hdr) + examples[i].plen;
        total += sizes[i];
    }
    stream = malloc(total);
    off = 0;
    for (size_t i = 0; i < NEXAMPLES; i++) {
        size_t n;
        unsigned char *f = frame_text(examples[i].hdr, examples[i].plen, &n);
        memcpy(stream + off, f, n);
        off += n;
        free(f);
    }
    for (size_t step = 1; step <= 37; step += 6) {
        size_t have = 0, start = 0, got = 0;
        while (start < total) {
            struct pkt p;
            size_t flen = 0;
            char err[200] = "";
            unsigned char *copy = NULL;
            int r = parse_copy(stream + start, have - start,
                               got == 0 ? PKT_MAX_HEADER_PREAUTH : PKT_MAX_HEADER, &p, &flen, err,
                               sizeof(err), &copy);
            if (r == 1) {
                CHECK(got < NEXAMPLES && p.op == examples[got].op && flen == sizes[got],
                      "step %zu frame %zu: op %d len %zu", step, got, p.op, flen);
                start += flen;
                got++;
            } else {
                CHECK(r == 0, "step %zu frame %zu: %d %s", step, got, r, err);
                if (r != 0 || have == total) {
                    pkt_clear(&p);
                    break;
                }
                have = have + step > total ? total : have + step;
            }
            pkt_clear(&p);
        }
        CHECK(got == NEXAMPLES, "step %zu: %zu frames", step, got);
    }
    free(stream);
}

/* DATA and UDP_DATA headers written by pkt_encode_data: the header packet()
 * makes, read back without Jansson; look-alikes go Jansson's way and get its
 * answer. */
static void test_data_fast_path(void)
{
    static const uint64_t ids[] = {1, 7, 4294967296ULL, PKT_CONN_ID_MAX};
    static const struct {
        int op;
        const char *id;
        size_t lens[3];
    } forms[] = {
        {OP_DATA, "conn", {1, 21, PKT_MAX_DATA}},
        {OP_UDP_DATA, "session", {0, 36, PKT_MAX_DGRAM}},
    };
    static const struct {
        const char *hdr;
        int rc;
    } like[] = {
        {"{\"op\":7,\"conn\":1,\"len\":5 }", 1},
        {"{\"op\":7,\"conn\":1,\"len\":5,\"x\":1}", 1},
        {"{\"op\":7, \"conn\":1,\"len\":5}", 1},
        {"{\"conn\":1,\"len\":5,\"op\":7}", 1},
        {"{\"op\":12,\"session\":1,\"len\":5,\"drops\":{\"oversize\":1}}", 1},
        {"{\"op\":7,\"conn\":01,\"len\":5}", -1},
        {"{\"op\":7,\"conn\":1,\"len\":05}", -1},
        {"{\"op\":7,\"conn\":0,\"len\":5}", -1},
        {"{\"op\":7,\"conn\":1,\"len\":0}", -1},
        {"{\"op\":7,\"conn\":9007199254740992,\"len\":5}", -1},
        {"{\"op\":7,\"conn\":1,\"len\":262145}", -1},
        {"{\"op\":7,\"conn\":1,\"len\":5}}", -1},
        {"{\"op\":7,\"conn\":1,\"len\":5,\"len\":6}", -1},
        {"{\"op\":7,\"conn\":1,\"len\":}", -1},
        {"{\"op\":7,\"conn\":,\"len\":5}", -1},
        {"{\"op\":7,\"conn\":1,\"len\":5", -1},
        {"{\"op\":12,\"session\":1,\"len\":00}", -1},
        {"{\"op\":12,\"session\":0,\"len\":5}", -1},
        {"{\"op\":12,\"session\":1,\"len\":65536}", -1},
        {"{\"op\":12,\"conn\":1,\"len\":5}", -1},
        {"{\"op\":7,\"session\":1,\"len\":5}", -1},
    };
    unsigned char buf[PKT_DATA_HEADER_MAX + 64];

    for (size_t fi = 0; fi < sizeof(forms) / sizeof(forms[0]); fi++) {
        for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
            for (size_t k = 0; k < 3; k++) {
                size_t len = forms[fi].lens[k];
                char want[100];
                json_t *j = packet(forms[fi].op, "{s:I,s:I}", forms[fi].id, (json_int_t)ids[i],
                                   "len", (json_int_t)len);
                int n = pkt_encode_data(buf, PKT_DATA_HEADER_MAX, forms[fi].op, ids[i], len), w;
                unsigned char *f, *copy = NULL;
                struct pkt p;
                size_t flen = 0;
                char err[200] = "";

                w = snprintf(want, sizeof(want), "{\"op\":%d,\"%s\":%llu,\"len\":%zu}",
                             forms[fi].op, forms[fi].id, (unsigned long long)ids[i], len);
                CHECK(n == PKT_FRAME_PREFIX + w, "encoded %d bytes, want %d", n,
                      PKT_FRAME_PREFIX + w);
                if (n != PKT_FRAME_PREFIX + w) {
                    json_decref(j);
                    continue;
                }
                CHECK(memcmp(buf + PKT_FRAME_PREFIX, want, (size_t)w) == 0, "bytes of %s", want);
                f = malloc((size_t)n + len);
                if (!f)
                    abort();
                memcpy(f, buf, (size_t)n);
                memset(f + n, 0x3c, len);
                if (len > 0) {
                    CHECK(parse_copy(f, (size_t)n + len - 1, PKT_MAX_HEADER, &p, &flen, err,
                                     sizeof(err), &copy) == 0 && flen == (size_t)n + len,
                          "one payload byte short of %s: incomplete, %zu needed", want, flen);
                    pkt_clear(&p);
                }
                CHECK(parse_copy(f, (size_t)n + len, PKT_MAX_HEADER_PREAUTH, &p, &flen, err,
                                 sizeof(err), &copy) == 1,
                      "parse %s: %s", want, err);
                CHECK(p.json == NULL && p.op == forms[fi].op && p.conn == ids[i] && p.len == len &&
                          p.payload == copy + n && flen == (size_t)n + len,
                      "fields of %s", want);
                CHECK(same_as_jansson(copy, &p), "Jansson reads %s the same", want);
                {
                    json_t *back = json_loadb(want, (size_t)w, 0, NULL);
                    CHECK(back && json_equal(back, j), "packet() header equals %s", want);
                    json_decref(back);
                }
                pkt_clear(&p);
                json_decref(j);
                free(f);
            }
        }
    }
    CHECK(pkt_encode_data(buf, sizeof(buf), OP_DATA, 0, 1) == -1, "conn 0 refused");
    CHECK(pkt_encode_data(buf, sizeof(buf), OP_DATA, PKT_CONN_ID_MAX + 1, 1) == -1,
          "conn too big refused");
    CHECK(pkt_encode_data(buf, sizeof(buf), OP_DATA, 1, 0) == -1, "DATA len 0 refused");
    CHECK(pkt_encode_data(buf, sizeof(buf), OP_DATA, 1, PKT_MAX_DATA + 1) == -1,
          "len too big refused");
    CHECK(pkt_encode_data(buf, sizeof(buf), OP_UDP_DATA, 1, PKT_MAX_DGRAM + 1) == -1,
          "datagram too big refused");
    CHECK(pkt_encode_data(buf, sizeof(buf), OP_ACK, 1, 1) == -1, "other ops refused");
    {
        int need = PKT_FRAME_PREFIX + (int)strlen("{\"op\":7,\"conn\":1,\"len\":1}");
        memset(buf, 0x77, sizeof(buf));
        CHECK(pkt_encode_data(buf, (size_t)need - 1, OP_DATA, 1, 1) == -1 && buf[0] == 0x77,
              "short buffer refused, nothing written");
        CHECK(pkt_encode_data(buf, (size_t)need, OP_DATA, 1, 1) == need, "exact fit");
        CHECK(pkt_encode_data(buf, sizeof(buf), OP_DATA, PKT_CONN_ID_MAX, PKT_MAX_DATA) <=
                  PKT_DATA_HEADER_MAX,
              "the longest DATA header fits PKT_DATA_HEADER_MAX");
        CHECK(pkt_encode_data(buf, sizeof(buf), OP_UDP_DATA, PKT_CONN_ID_MAX, PKT_MAX_DGRAM) <=
                  PKT_DATA_HEADER_MAX,
              "the longest UDP_DATA header fits PKT_DATA_HEADER_MAX");
    }
    for (size_t i = 0; i < sizeof(like) / sizeof(like[0]); i++) {
        size_t n, flen = 0;
        unsigned char *f = frame_text(like[i].hdr, 5, &n), *copy = NULL;
        struct pkt p;
        char err[200] = "";
        int r = parse_copy(f, n, PKT_MAX_HEADER, &p, &flen, err, sizeof(err), &copy);

        CHECK(r == like[i].rc, "%s: %d, want %d (%s)", like[i].hdr, r, like[i].rc, err);
        if (r == 1)
            CHECK(p.json != NULL && p.conn == 1 && p.len == 5, "%s read by Jansson", like[i].hdr);
        pkt_clear(&p);
        free(f);
    }
}

/* ------------------------------------------------------------ runner */

static const struct {
    const char *name;
    void (*fn)(void);
} tests[] = {
    {"op_names", test_op_names},

    {"packet_builder", test_packet_builder},
    {"roundtrip", test_roundtrip},
    {"data_fast_path", test_data_fast_path},
    {"encode_limits", test_encode_limits},
    {"truncation", test_truncation},
    {"header_length", test_header_length},
    {"data_len", test_data_len},
    {"payload_exact", test_payload_exact},
    {"json_shape", test_json_shape},
    {"unknown_op", test_unknown_op},
    {"resume_members", test_resume_members},
    {"udp_members", test_udp_members},
    {"apps_members", test_apps_members},
    {"required_members", test_required_members},
    {"ranges", test_ranges},
    {"hello_fits_preauth", test_hello_fits_preauth},
    {"names", test_names},
    {"valid_host", test_valid_host},
    {"split_hostport", test_split_hostport},
    {"nodes_members", test_nodes_members},
    {"mutations", test_mutations},
    {"stream", test_stream},
    {"state_dir_open", test_state_dir_open},
    {"state_dir_refused", test_state_dir_refused},
    {"state_dir_fd_pinned", test_state_dir_fd_pinned},
    {"state_file_refused", test_state_file_refused},
    {"state_temp_names", test_state_temp_names},
    {"state_write_read", test_state_write_read},
    {"state_write_failures", test_state_write_failures},
    {"state_read_limits", test_state_read_limits},
    {"state_token", test_state_token},
    {"tls_state_files", test_tls_state_files},
    {"tls_user_files", test_tls_user_files},
    {"tls_known_hosts_file", test_tls_known_hosts_file},
    {"registry_spec", test_registry_spec},
    {"port_ranges", test_port_ranges},
    {"token_scopes", test_token_scopes},
    {"ftp_members", test_ftp_members},
    {"ftp_split", test_ftp_split},
    {"ftp_multiline", test_ftp_multiline},
    {"ftp_commands", test_ftp_commands},
    {"ftp_long_and_bad", test_ftp_long_and_bad},
    {"ftp_rewrite", test_ftp_rewrite},
    {"log_escape", test_log_escape},
    {"tls_io_interop", test_tls_io_interop},
    {"tls_io_interop_direct", test_tls_io_interop_direct},
    {"tls_io_records_without_data", test_tls_io_records_without_data},
    {"tls_io_cut_without_close_notify", test_tls_io_cut_without_close_notify},
    {"tls_io_reader_waits_alone", test_tls_io_reader_waits_alone},
    {"json_depth", test_json_depth},
    {"ratelimit_groups", test_ratelimit_groups},
    {"ratelimit_shared_budgets", test_ratelimit_shared_budgets},
    {"web_head_cases", test_web_head_cases},
    {"web_head_flags", test_web_head_flags},
    {"web_head_limits", test_web_head_limits},
    {"config_parse", test_config_parse},
    {"config_limits", test_config_limits},
    {"config_files", test_config_files},
    {"log_summary", test_log_summary},
    {"cidr_lists", test_cidr_lists},
    {"allow_judge", test_allow_judge},
    {"pp_parse", test_pp_parse},
    {"pp_read_header", test_pp_read_header},
    {"addr_notation", test_addr_notation},
    {"proxy_proto_headers", test_proxy_proto_headers},
    {"build_addr_members", test_build_addr_members},
};
#define NTESTS (sizeof(tests) / sizeof(tests[0]))
#define TEST_TIMEOUT_S 120

static int wanted(const char *name, int argc, char **argv)
{
    if (argc < 2)
        return 1;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return 1;
    return 0;
}

/* Run one test in a child; 0 when it passed. */
static int run_forked(size_t i)
{
    pid_t pid;
    int st;

    fflush(NULL);
    pid = fork();
    if (pid < 0) {
        perror("fork");
        return -1;
    }
    if (pid == 0) {
        alarm(TEST_TIMEOUT_S);
        tests[i].fn();
        exit(unit_failures ? 1 : 0);  /* exit(), not _exit(): LeakSanitizer runs at exit */
    }
    while (waitpid(pid, &st, 0) < 0) {
        if (errno != EINTR) {
            perror("waitpid");
            return -1;
        }
    }
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return 0;
    if (WIFSIGNALED(st))
        fprintf(stderr, "  %s: killed by signal %d%s\n", tests[i].name, WTERMSIG(st),
                WTERMSIG(st) == SIGALRM ? " (timeout)" : "");
    else
        fprintf(stderr, "  %s: exit status %d\n", tests[i].name, WEXITSTATUS(st));
    return -1;
}

int main(int argc, char **argv)
{
    const char *nofork = getenv("UNIT_NOFORK");
    int failed = 0, ran = 0;

    setvbuf(stdout, NULL, _IOLBF, 0);
    for (size_t i = 0; i < NTESTS; i++) {
        int rc;
        if (!wanted(tests[i].name, argc, argv))
            continue;
        ran++;
        if (nofork && strcmp(nofork, "1") == 0) {
            int before = unit_failures;
            tests[i].fn();
            rc = unit_failures > before ? -1 : 0;
        } else {
            rc = run_forked(i);
        }
        printf("%s %s\n", rc == 0 ? "ok  " : "FAIL", tests[i].name);
        if (rc != 0)
            failed++;
    }
    if (ran == 0) {
        fprintf(stderr, "no test matched\n");
        return 2;
    }
    printf("test_packet: %d of %d tests passed\n", ran - failed, ran);
    return failed ? 1 : 0;
}

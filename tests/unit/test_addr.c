/* Unit tests: cidr.c (allow_from), allow.c (the private's rules as the
 * public side sees and judges them), proxy_proto.c (PROXY headers written),
 * proxy_header.c (PROXY headers read: pp_parse, pp_read_header), netio's
 * address parsing and notation, and BUILD_CONNECTION's version 6 members. */

#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "allow.h"
#include "cidr.h"
#include "netio.h"
#include "packet.h"
#include "proxy_header.h"
#include "proxy_proto.h"
#include "unit.h"

static struct sockaddr_storage sa(const char *addrport)
{
    struct sockaddr_storage ss;

    memset(&ss, 0, sizeof(ss));
    CHECK(net_parse_addrport(addrport, &ss) == 0, "'%s' parses", addrport);
    return ss;
}

static struct sockaddr_storage mapped(const char *v4, int port)
{
    struct sockaddr_storage ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;

    memset(&ss, 0, sizeof(ss));
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons((uint16_t)port);
    s6->sin6_addr.s6_addr[10] = s6->sin6_addr.s6_addr[11] = 0xff;
    CHECK(inet_pton(AF_INET, v4, &s6->sin6_addr.s6_addr[12]) == 1, "v4 %s", v4);
    return ss;
}

void test_cidr_lists(void)
{
    static const char *const good[] = {"192.0.2.0/24", "2001:db8::/32", "0.0.0.0/0", "::/0",
                                       "198.51.100.7", "::1", "203.0.113.128/25",
                                       "2001:db8:1:2::/64"};
    static const char *const bad[] = {"", "/24", "192.0.2.0/", "192.0.2.0/33", "2001:db8::/129",
                                      "192.0.2.1/24", "2001:db8::1/32", "192.0.2.0/2x",
                                      "192.0.2.0/0024", "example.org/8", "192.0.2.0 /24",
                                      "[::1]/128", "192.0.2.0/24/8", "1.2.3.4.5/32",
                                      "::ffff:300.1.1.1/128", "192.0.2.0/-1"};
    struct cidr c;
    struct cidr_list l;
    char err[200], text[CIDR_TEXT_MAX], big[200];
    json_t *arr;
    struct sockaddr_storage ss;

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        CHECK(cidr_parse(good[i], &c, err, sizeof(err)) == 0, "'%s' accepted: %s", good[i], err);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK(cidr_parse(bad[i], &c, err, sizeof(err)) == -1, "'%s' refused", bad[i]);
    memset(big, '1', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    CHECK(cidr_parse(big, &c, err, sizeof(err)) == -1, "a long entry refused");
    CHECK(cidr_parse(NULL, &c, err, sizeof(err)) == -1, "NULL refused");
    cidr_parse("2001:db8::/32", &c, err, sizeof(err));
    cidr_str(&c, text, sizeof(text));
    CHECK(strcmp(text, "2001:db8::/32") == 0, "notation %s", text);
    cidr_parse("198.51.100.7", &c, err, sizeof(err));
    cidr_str(&c, text, sizeof(text));
    CHECK(strcmp(text, "198.51.100.7/32") == 0, "a bare address is a /32: %s", text);

    /* Lists from JSON: bounds and types. */
    arr = json_loads("[\"192.0.2.0/24\",\"2001:db8::/32\",\"127.0.0.2/32\",\"192.0.2.0/24\"]", 0,
                     NULL);
    CHECK(cidr_list_from_json(arr, &l, err, sizeof(err)) == 0 && l.n == 3,
          "a list with a duplicate: %d entries", l.n);
    json_decref(arr);
    arr = json_array();
    for (int i = 0; i < CIDR_MAX; i++) {
        char e[32];
        snprintf(e, sizeof(e), "10.0.%d.0/24", i);
        json_array_append_new(arr, json_string(e));
    }
    CHECK(cidr_list_from_json(arr, &l, err, sizeof(err)) == 0 && l.n == CIDR_MAX, "64 entries");
    json_array_append_new(arr, json_string("10.1.0.0/16"));
    CHECK(cidr_list_from_json(arr, &l, err, sizeof(err)) == -1, "65 entries refused");
    json_decref(arr);
    arr = json_loads("[1]", 0, NULL);
    CHECK(cidr_list_from_json(arr, &l, err, sizeof(err)) == -1, "a number refused");
    json_decref(arr);
    arr = json_string("192.0.2.0/24");
    CHECK(cidr_list_from_json(arr, &l, err, sizeof(err)) == -1, "a string, not an array");
    json_decref(arr);
    CHECK(cidr_list_from_json(NULL, &l, err, sizeof(err)) == 0 && l.n == 0, "absent: empty");
    arr = json_loads("[\"a\\u0000b\"]", JSON_ALLOW_NUL, NULL);
    CHECK(arr && cidr_list_from_json(arr, &l, err, sizeof(err)) == -1, "a NUL byte refused");
    json_decref(arr);

    /* Matching: IPv4, IPv6, IPv4-mapped as IPv4, an empty list. */
    memset(&l, 0, sizeof(l));
    CHECK(cidr_list_allows(&l, &(struct sockaddr_storage){.ss_family = AF_INET}),
          "the empty list allows everybody");
    cidr_list_add(&l, "192.0.2.0/24", err, sizeof(err));
    cidr_list_add(&l, "2001:db8::/32", err, sizeof(err));
    cidr_list_add(&l, "127.0.0.2/32", err, sizeof(err));
    cidr_list_add(&l, "203.0.113.0/25", err, sizeof(err));
    ss = sa("192.0.2.77:1");
    CHECK(cidr_list_allows(&l, &ss), "192.0.2.77 in /24");
    ss = sa("192.0.3.1:1");
    CHECK(!cidr_list_allows(&l, &ss), "192.0.3.1 not");
    ss = sa("203.0.113.127:1");
    CHECK(cidr_list_allows(&l, &ss), "203.0.113.127 in /25");
    ss = sa("203.0.113.128:1");
    CHECK(!cidr_list_allows(&l, &ss), "203.0.113.128 not in /25");
    ss = sa("[2001:db8:ffff::1]:1");
    CHECK(cidr_list_allows(&l, &ss), "2001:db8:ffff::1 in /32");
    ss = sa("[2001:db9::1]:1");
    CHECK(!cidr_list_allows(&l, &ss), "2001:db9::1 not");
    ss = mapped("127.0.0.2", 5);
    CHECK(cidr_list_allows(&l, &ss), "::ffff:127.0.0.2 matches 127.0.0.2/32");
    ss = mapped("127.0.0.3", 5);
    CHECK(!cidr_list_allows(&l, &ss), "::ffff:127.0.0.3 does not");
    ss = sa("[::1]:1");
    CHECK(!cidr_list_allows(&l, &ss), "::1 not listed");
    arr = cidr_list_to_json(&l);
    CHECK(arr && json_array_size(arr) == 4 &&
              strcmp(json_string_value(json_array_get(arr, 1)), "2001:db8::/32") == 0,
          "to JSON");
    json_decref(arr);
}

void test_addr_notation(void)
{
    struct sockaddr_storage ss;
    socklen_t len;
    char out[80];
    static const char *const bad[] = {"", "1.2.3.4", "1.2.3.4:", "1.2.3.4:0", "1.2.3.4:65536",
                                      "::1:80", "[::1]", "[::1]80", "[1.2.3.4]:80", "[::1]:x",
                                      "host:80", "[fe80::1%eth0]:80", "1.2.3.4:80 ",
                                      "[::1]:80:1"};

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK(net_parse_addrport(bad[i], &ss) == -1, "'%s' refused", bad[i]);
    CHECK(net_parse_addrport(NULL, &ss) == -1, "NULL refused");
    ss = sa("[2001:db8::1]:443");
    net_sa_str(&ss, out, sizeof(out));
    CHECK(strcmp(out, "[2001:db8::1]:443") == 0, "%s", out);
    ss = sa("192.0.2.1:5000");
    net_sa_str(&ss, out, sizeof(out));
    CHECK(strcmp(out, "192.0.2.1:5000") == 0, "%s", out);
    ss = mapped("192.0.2.9", 77);
    net_sa_str(&ss, out, sizeof(out));
    CHECK(strcmp(out, "192.0.2.9:77") == 0, "mapped shown as IPv4: %s", out);
    net_ip_str(&ss, out, sizeof(out));
    CHECK(strcmp(out, "192.0.2.9") == 0, "%s", out);
    net_hostport_str("::1", 6300, out, sizeof(out));
    CHECK(strcmp(out, "[::1]:6300") == 0, "%s", out);
    CHECK(net_parse_addr("[2001:db8::1]", 1, &ss, &len) == 0 && ss.ss_family == AF_INET6,
          "brackets allowed for bind");
    CHECK(net_parse_addr("[192.0.2.1]", 1, &ss, &len) == -1, "no brackets around IPv4");
    CHECK(net_parse_addr("example.org", 1, &ss, &len) == -1, "no names");
    {
        struct net_binds b;
        char err[200];
        memset(&b, 0, sizeof(b));
        CHECK(net_binds_add(&b, "127.0.0.1, ::1", err, sizeof(err)) == 0 && b.n == 2, "a list");
        CHECK(net_binds_add(&b, "[2001:db8::1]", err, sizeof(err)) == 0 && b.n == 3, "brackets");
        CHECK(net_binds_add(&b, "nowhere", err, sizeof(err)) == -1, "a name refused");
        net_binds_str(&b, out, sizeof(out));
        CHECK(strcmp(out, "127.0.0.1,[::1],[2001:db8::1]") == 0, "%s", out);
        CHECK(net_binds_add(&b, "1.1.1.1 2.2.2.2 3.3.3.3 4.4.4.4 5.5.5.5 6.6.6.6", err,
                            sizeof(err)) == -1, "more than 8 refused");
    }
}

void test_proxy_proto_headers(void)
{
    unsigned char out[PROXY_PROTO_MAX];
    struct sockaddr_storage c4 = sa("192.0.2.1:56324"), s4 = sa("198.51.100.2:443");
    struct sockaddr_storage c6 = sa("[2001:db8::1]:56324"), s6 = sa("[2001:db8::2]:443");
    struct sockaddr_storage m4 = mapped("192.0.2.1", 56324);
    static const unsigned char sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                          0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
    int n;

    n = proxy_proto_header(1, &c4, &s4, out, sizeof(out));
    CHECK(n > 0 && (size_t)n == strlen("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n") &&
              memcmp(out, "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n", (size_t)n) == 0,
          "v1 TCP4: %s", unit_show(out, n > 0 ? (size_t)n : 0));
    n = proxy_proto_header(1, &m4, &s4, out, sizeof(out));
    CHECK(n > 0 && memcmp(out, "PROXY TCP4 192.0.2.1 ", 21) == 0, "a mapped client is TCP4");
    n = proxy_proto_header(1, &c6, &s6, out, sizeof(out));
    CHECK(n > 0 && memcmp(out, "PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n", (size_t)n) == 0,
          "v1 TCP6: %s", unit_show(out, n > 0 ? (size_t)n : 0));
    n = proxy_proto_header(1, &c4, &s6, out, sizeof(out));
    CHECK(n > 0 && memcmp(out, "PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 ", 40) == 0,
          "mixed families as TCP6: %s", unit_show(out, n > 0 ? (size_t)n : 0));
    {
        /* The longest line the spec allows fits. */
        struct sockaddr_storage a = sa("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535");
        n = proxy_proto_header(1, &a, &a, out, sizeof(out));
        CHECK(n == 104, "longest TCP6 line: %d bytes", n);
    }
    n = proxy_proto_header(2, &c4, &s4, out, sizeof(out));
    CHECK(n == 28 && memcmp(out, sig, 12) == 0 && out[12] == 0x21 && out[13] == 0x11 &&
              out[14] == 0 && out[15] == 12,
          "v2 AF_INET header: %d", n);
    CHECK(n == 28 && memcmp(out + 16, "\xc0\x00\x02\x01\xc6\x33\x64\x02\xdc\x04\x01\xbb", 12) == 0,
          "v2 AF_INET addresses: %s", unit_show(out + 16, 12));
    n = proxy_proto_header(2, &c6, &s6, out, sizeof(out));
    CHECK(n == 52 && out[13] == 0x21 && out[15] == 36 && out[16] == 0x20 && out[17] == 0x01 &&
              out[48] == 0xdc && out[49] == 0x04 && out[50] == 0x01 && out[51] == 0xbb,
          "v2 AF_INET6: %d", n);
    CHECK(proxy_proto_header(3, &c4, &s4, out, sizeof(out)) == -1, "version 3 refused");
    CHECK(proxy_proto_header(1, &c4, &s4, out, 10) == -1, "too small a buffer refused");
    {
        struct sockaddr_storage un;
        memset(&un, 0, sizeof(un));
        un.ss_family = AF_UNIX;
        CHECK(proxy_proto_header(2, &un, &s4, out, sizeof(out)) == -1, "AF_UNIX refused");
    }
}

static int build_ok(const char *json)
{
    json_error_t e;
    json_t *j = json_loads(json, 0, &e);
    struct pkt p;
    char err[200];
    int rc;

    memset(&p, 0, sizeof(p));
    if (!j)
        return -2;
    rc = pkt_validate(j, &p, err, sizeof(err));
    json_decref(j);
    return rc;
}

void test_build_addr_members(void)
{
#define B "{\"op\":5,\"conn\":2,\"app\":\"w\",\"target_host\":\"127.0.0.1\",\"target_port\":80"
    CHECK(build_ok(B "}") == 0, "a version 5 BUILD_CONNECTION");
    CHECK(build_ok(B ",\"client\":\"192.0.2.1:5\",\"server\":\"[2001:db8::1]:443\"}") == 0,
          "client and server");
    CHECK(build_ok(B ",\"client\":\"192.0.2.1:5\",\"server\":\"192.0.2.2:443\","
                     "\"proxy_protocol\":2}") == 0, "with proxy_protocol");
    CHECK(build_ok(B ",\"client\":\"192.0.2.1:5\"}") == -1, "client alone");
    CHECK(build_ok(B ",\"proxy_protocol\":1}") == -1, "proxy_protocol without addresses");
    CHECK(build_ok(B ",\"client\":\"192.0.2.1:5\",\"server\":\"192.0.2.2:443\","
                     "\"proxy_protocol\":3}") == -1, "proxy_protocol 3");
    CHECK(build_ok(B ",\"client\":\"192.0.2.1:5\",\"server\":\"192.0.2.2:443\","
                     "\"proxy_protocol\":0}") == -1, "proxy_protocol 0 is left out, not sent");
    CHECK(build_ok(B ",\"client\":\"2001:db8::1:5\",\"server\":\"192.0.2.2:443\"}") == -1,
          "IPv6 without brackets");
    CHECK(build_ok(B ",\"client\":\"example.org:5\",\"server\":\"192.0.2.2:443\"}") == -1,
          "a name");
    CHECK(build_ok(B ",\"client\":5,\"server\":\"192.0.2.2:443\"}") == -1, "a number");
    CHECK(build_ok(B ",\"client\":\"[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535\","
                     "\"server\":\"192.0.2.2:443\"}") == 0, "the longest address fits");
    CHECK(build_ok(B ",\"client\":\"[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:0000065535\","
                     "\"server\":\"192.0.2.2:443\"}") == -1, "past PKT_ADDR_MAX");
    /* App requests of version 6. */
#define H "{\"op\":1,\"version\":1,\"token\":\"t\",\"name\":\"h\",\"window\":65536,\"apps\":[" \
          "{\"name\":\"w\",\"public_port\":80,\"target_host\":\"::1\",\"target_port\":8080"
    CHECK(build_ok(H ",\"proxy_protocol\":2,\"allow_from\":[\"192.0.2.0/24\"]}]}") == 0,
          "an app with both");
    CHECK(build_ok(H ",\"proxy_protocol\":5}]}") == -1, "proxy_protocol 5");
    CHECK(build_ok(H ",\"allow_from\":[\"192.0.2.1/24\"]}]}") == -1, "host bits in allow_from");
    CHECK(build_ok(H ",\"allow_from\":\"192.0.2.0/24\"}]}") == -1, "allow_from not an array");
#undef B
#undef H
}

/* What the private sends in HELLO's "allow" reads back as the same rules, and
 * the public side refuses only what no rule can admit. */
void test_allow_judge(void)
{
    static const char *const rules[] = {"127.0.0.0/8:1-65535", "::1/128:80-90", "nas.lan:22",
                                        "192.0.2.7:8080", "[2001:db8::5]:443"};
    struct allowlist al, back, none;
    char err[200], rule[300];
    json_t *arr;

    CHECK(allow_init(&al) == 0 && allow_init(&back) == 0 && allow_init(&none) == 0, "init");
    for (size_t i = 0; i < sizeof(rules) / sizeof(rules[0]); i++)
        CHECK(allow_add(&al, rules[i], err, sizeof(err)) == 0, "'%s': %s", rules[i], err);
    arr = allow_to_json(&al);
    CHECK(arr && json_array_size(arr) == 5, "five rules out");
    for (size_t i = 0; arr && i < json_array_size(arr); i++)
        CHECK(strcmp(json_string_value(json_array_get(arr, i)), rules[i]) == 0, "rule %zu is %s",
              i, json_string_value(json_array_get(arr, i)));
    CHECK(allow_from_json(&back, arr, err, sizeof(err)) == 0 && back.n == 5, "read back: %s", err);
    json_decref(arr);

    CHECK(allow_judge(&back, "127.0.0.9", 5) == ALLOW_YES, "loopback CIDR");
    CHECK(allow_judge(&back, "::ffff:127.0.0.1", 5) == ALLOW_YES, "a mapped address as IPv4");
    CHECK(allow_judge(&back, "::1", 85) == ALLOW_YES, "::1 in its port range");
    CHECK(allow_judge(&back, "::1", 91) == ALLOW_NO, "::1 outside its port range");
    CHECK(allow_judge(&back, "NAS.lan", 22) == ALLOW_YES, "a host rule, any case");
    CHECK(allow_judge(&back, "192.0.2.7", 8080) == ALLOW_YES, "an exact address rule");
    CHECK(allow_judge(&back, "192.0.2.7", 8081) == ALLOW_NO, "its port only");
    CHECK(allow_judge(&back, "192.0.2.8", 8080) == ALLOW_NO, "another address");
    CHECK(allow_judge(&back, "2001:db8::5", 443) == ALLOW_YES, "an IPv6 host rule");
    CHECK(allow_judge(&back, "localhost", 80) == ALLOW_MAYBE, "a name a CIDR rule may admit");
    CHECK(allow_judge(&back, "nas.lan", 23) == ALLOW_MAYBE, "so is any name on a covered port");
    CHECK(allow_judge(&none, "localhost", 80) == ALLOW_NO, "no rules: nothing");
    CHECK(allow_add(&none, "nas.lan:22", err, sizeof(err)) == 0, "one host rule");
    CHECK(allow_judge(&none, "other.lan", 22) == ALLOW_NO, "no CIDR rule: a name is certain");
    CHECK(allow_add(&none, "any", err, sizeof(err)) == 0 && allow_judge(&none, "x", 1) == ALLOW_YES,
          "any");
    arr = allow_to_json(&none);
    CHECK(arr && strcmp(json_string_value(json_array_get(arr, 0)), "any") == 0, "any goes first");
    json_decref(arr);

    allow_rule_for("2001:db8::1", 22, rule, sizeof(rule));
    CHECK(strcmp(rule, "[2001:db8::1]:22") == 0, "IPv6 rule in brackets: %s", rule);
    allow_rule_for("nas.lan", 22, rule, sizeof(rule));
    CHECK(strcmp(rule, "nas.lan:22") == 0, "host rule: %s", rule);

    arr = json_pack("[s,i]", "any", 3);
    allow_free(&back);
    CHECK(allow_init(&back) == 0 && allow_from_json(&back, arr, err, sizeof(err)) == -1,
          "a number refused");
    json_decref(arr);
    arr = json_pack("[s]", "nonsense");
    CHECK(allow_from_json(&back, arr, err, sizeof(err)) == -1 && strstr(err, "nonsense"),
          "a bad rule refused, named: %s", err);
    json_decref(arr);
    arr = json_object();
    CHECK(allow_from_json(&back, arr, err, sizeof(err)) == -1, "not an array");
    json_decref(arr);
    allow_free(&al);
    allow_free(&back);
    allow_free(&none);
}

/* One header as pp_parse must judge it, whole and cut at every offset (a
 * valid beginning: 0, "need more"). want_ip "": the connection's own peer. */
static void pp_case(const unsigned char *h, size_t len, int want, const char *want_ip,
                    int want_port, const char *what)
{
    struct sockaddr_storage src;
    size_t hl = 99;
    unsigned char buf[PP_HEADER_MAX + 8];
    int rc = pp_parse(h, len, &src, &hl);

    CHECK(rc == want, "%s: %d, want %d", what, rc, want);
    if (rc == 1 && want == 1) {
        char ip[64];
        CHECK(hl == len, "%s: length %zu, want %zu", what, hl, len);
        if (want_ip[0]) {
            net_ip_str(&src, ip, sizeof(ip));
            CHECK(strcmp(ip, want_ip) == 0, "%s: client %s, want %s", what, ip, want_ip);
            CHECK(net_sa_port(&src) == want_port, "%s: port %d", what, net_sa_port(&src));
        } else {
            CHECK(src.ss_family == AF_UNSPEC, "%s: the peer's address", what);
        }
        for (size_t cut = 0; cut < len; cut++)
            CHECK(pp_parse(h, cut, &src, &hl) == 0, "%s cut at %zu: need more", what, cut);
        /* The client's bytes after it are not the header's. */
        memcpy(buf, h, len);
        memcpy(buf + len, "GET /", 5);
        CHECK(pp_parse(buf, len + 5, &src, &hl) == 1 && hl == len, "%s + data", what);
    }
}

static void pp_text(const char *h, int want, const char *ip, int port, const char *what)
{
    pp_case((const unsigned char *)h, strlen(h), want, ip, port, what);
}

void test_pp_parse(void)
{
    struct sockaddr_storage c4 = sa("192.0.2.1:40000"), s4 = sa("198.51.100.2:443");
    struct sockaddr_storage c6 = sa("[2001:db8::5]:1234"), s6 = sa("[2001:db8::1]:80");
    unsigned char h[PP_HEADER_MAX + 16], big[PP_HEADER_MAX + 32];
    struct sockaddr_storage src;
    size_t hl;
    int n;

    pp_text("PROXY TCP4 192.0.2.1 198.51.100.2 40000 443\r\n", 1, "192.0.2.1", 40000, "v1 TCP4");
    pp_text("PROXY TCP6 2001:db8::5 2001:db8::1 1234 80\r\n", 1, "2001:db8::5", 1234, "v1 TCP6");
    pp_text("PROXY UNKNOWN\r\n", 1, "", 0, "v1 UNKNOWN");
    pp_text("PROXY UNKNOWN ffff:f...f:ffff 1 2\r\n", 1, "", 0, "v1 UNKNOWN with fields");
    pp_text("PROXY TCP4 192.0.2.1 198.51.100.2 40000 443\n", -1, "", 0, "v1 LF alone");
    pp_text("PROXY TCP4 192.0.2.1 198.51.100.2 40000 443\rX", -1, "", 0, "v1 CR then X");
    pp_text("PROXY TCP4 2001:db8::5 198.51.100.2 1 2\r\n", -1, "", 0, "v1 TCP4, IPv6 address");
    pp_text("PROXY TCP6 192.0.2.1 2001:db8::1 1 2\r\n", -1, "", 0, "v1 TCP6, IPv4 address");
    pp_text("PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n", -1, "", 0, "v1 port too big");
    pp_text("PROXY TCP4 192.0.2.1 198.51.100.2 4x 443\r\n", -1, "", 0, "v1 port not a number");
    pp_text("PROXY TCP4 192.0.2.1  198.51.100.2 1 443\r\n", -1, "", 0, "v1 double space");
    pp_text("PROXY TCP4 192.0.2.1 198.51.100.2 1\r\n", -1, "", 0, "v1 three fields");
    pp_text("PROXY TCP4 192.0.2.1 198.51.100.2 1 2 3\r\n", -1, "", 0, "v1 five fields");
    pp_text("PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n", -1, "", 0, "v1 UDP4");
    pp_text("PROXY \r\n", -1, "", 0, "v1 empty");
    pp_text("PROXX TCP4", -1, "", 0, "not PROXY");
    pp_text("GET / HTTP/1.1\r\n", -1, "", 0, "HTTP");
    pp_text("PROXY TCP4 192.0.2.1\x01", -1, "", 0, "v1 control byte");
    /* 107 bytes with CRLF is the limit; one more is refused, with or without its end. */
    memset(big, 'x', sizeof(big));
    memcpy(big, "PROXY UNKNOWN ", 14);
    memcpy(big + 105, "\r\n", 2);
    pp_case(big, 107, 1, "", 0, "v1 of 107 bytes");
    memset(big + 105, 'x', 2);
    memcpy(big + 106, "\r\n", 2);
    pp_case(big, 108, -1, "", 0, "v1 of 108 bytes");
    memset(big + 106, 'x', 2);
    CHECK(pp_parse(big, 107, &src, &hl) == -1, "v1: 107 bytes without CRLF");
    CHECK(pp_parse(big, 106, &src, &hl) == 0, "v1: 106 bytes, no CRLF yet");

    /* Version 2 as proxy_proto.c writes it (round trip), both families. */
    n = proxy_proto_header(2, &c4, &s4, h, sizeof(h));
    CHECK(n == 28, "v2 IPv4 written");
    pp_case(h, (size_t)n, 1, "192.0.2.1", 40000, "v2 IPv4");
    n = proxy_proto_header(2, &c6, &s6, h, sizeof(h));
    CHECK(n == 52, "v2 IPv6 written");
    pp_case(h, (size_t)n, 1, "2001:db8::5", 1234, "v2 IPv6");
    n = proxy_proto_header(1, &c4, &s4, h, sizeof(h));
    pp_case(h, (size_t)n, 1, "192.0.2.1", 40000, "v1 as written");
    /* TLVs after the addresses are skipped (length 28 + 7). */
    n = proxy_proto_header(2, &c4, &s4, h, sizeof(h));
    h[15] = 12 + 7;
    memcpy(h + 28, "\x04\x00\x04" "abcd", 7);
    pp_case(h, 35, 1, "192.0.2.1", 40000, "v2 with a TLV");
    /* LOCAL (a health check): the peer; UNSPEC and UDP: the peer. */
    h[12] = 0x20;
    pp_case(h, 35, 1, "", 0, "v2 LOCAL");
    h[12] = 0x21;
    h[13] = 0x00;
    pp_case(h, 35, 1, "", 0, "v2 UNSPEC");
    h[13] = 0x12;
    pp_case(h, 35, 1, "", 0, "v2 UDP over IPv4");
    h[13] = 0x11;
    h[12] = 0x22;
    pp_case(h, 35, -1, "", 0, "v2 command 2");
    h[12] = 0x11;
    pp_case(h, 35, -1, "", 0, "v2 version 1");
    h[12] = 0x21;
    h[15] = 11;
    pp_case(h, 27, -1, "", 0, "v2 IPv4 block too short");
    h[2] ^= 1;
    pp_case(h, 28, -1, "", 0, "v2 bad signature");
    h[2] ^= 1;
    /* The length: 536 is taken, 537 refused before its bytes arrive. */
    memset(big, 0, sizeof(big));
    memcpy(big, h, 16);
    big[12] = 0x20;
    big[14] = 536 >> 8;
    big[15] = 536 & 0xff;
    pp_case(big, 16 + 536, 1, "", 0, "v2 of 536 bytes");
    big[15] = (537 & 0xff);
    CHECK(pp_parse(big, 16, &src, &hl) == -1, "v2 length 537 refused at once");
    CHECK(pp_parse(big, 0, &src, &hl) == 0, "nothing yet");
}

/* pp_read_header over a socket pair: exactly the header is taken, the
 * client's bytes stay; garbage and silence fail (the silent case with a
 * short deadline). */
void test_pp_read_header(void)
{
    struct sockaddr_storage peer = sa("127.0.0.1:1000"), client;
    const char *why = NULL;
    static const char h1[] = "PROXY TCP4 192.0.2.9 198.51.100.2 5555 443\r\nhello";
    char rest[16] = "", ip[64];
    int sv[2];

    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair");
    CHECK(write(sv[1], h1, sizeof(h1) - 1) == (ssize_t)(sizeof(h1) - 1), "write");
    CHECK(pp_read_header(sv[0], mono_ms() + 2000, NULL, &peer, &client, &why) == 0,
          "v1 read: %s", why ? why : "");
    net_ip_str(&client, ip, sizeof(ip));
    CHECK(strcmp(ip, "192.0.2.9") == 0 && net_sa_port(&client) == 5555, "client %s", ip);
    CHECK(read(sv[0], rest, sizeof(rest)) == 5 && memcmp(rest, "hello", 5) == 0,
          "the client's bytes stay: %s", rest);
    CHECK(write(sv[1], "PROXY UNKNOWN\r\n", 15) == 15, "write");
    CHECK(pp_read_header(sv[0], mono_ms() + 2000, NULL, &peer, &client, &why) == 0, "UNKNOWN");
    CHECK(net_sa_port(&client) == 1000, "UNKNOWN: the peer");
    CHECK(write(sv[1], "SSH-2.0-x\r\n", 11) == 11, "write");
    CHECK(pp_read_header(sv[0], mono_ms() + 2000, NULL, &peer, &client, &why) == -1,
          "garbage refused");
    close(sv[0]);
    close(sv[1]);
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair");
    CHECK(write(sv[1], "PROXY TCP4 1", 12) == 12, "write");
    CHECK(pp_read_header(sv[0], mono_ms() + 100, NULL, &peer, &client, &why) == -1,
          "a header that never ends: refused at the deadline");
    close(sv[1]);
    CHECK(pp_read_header(sv[0], mono_ms() + 2000, NULL, &peer, &client, &why) == -1,
          "closed before the end");
    close(sv[0]);
}

/* allow.c - the private side's allowlist of dial targets (see allow.h). */

#include "allow.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "netio.h"
#include "packet.h"

struct allow_rule {
    int is_host;                     /* exact host name / address string */
    char host[PKT_HOST_MAX + 1];
    int family;                      /* CIDR: AF_INET or AF_INET6 */
    unsigned char addr[16];
    int prefix;
    int port_lo, port_hi;
};

int allow_init(struct allowlist *al)
{
    memset(al, 0, sizeof(*al));
    al->rules = calloc(ALLOW_MAX, sizeof(*al->rules));
    return al->rules ? 0 : -1;
}

void allow_free(struct allowlist *al)
{
    free(al->rules);
    al->rules = NULL;
}

static int parse_port_range(const char *s, int *lo, int *hi)
{
    char *end;
    long a, b;

    errno = 0;
    a = strtol(s, &end, 10);
    if (errno || end == s || a < 1 || a > 65535)
        return -1;
    b = a;
    if (*end == '-') {
        const char *s2 = end + 1;
        b = strtol(s2, &end, 10);
        if (errno || end == s2 || b < a || b > 65535)
            return -1;
    }
    if (*end)
        return -1;
    *lo = (int)a;
    *hi = (int)b;
    return 0;
}

int allow_add_target(struct allowlist *al, const char *host, int port)
{
    return allow_add_target_range(al, host, port, port);
}

int allow_add_target_range(struct allowlist *al, const char *host, int lo, int hi)
{
    struct allow_rule *r;

    if (al->n >= ALLOW_MAX || !pkt_valid_host(host))
        return -1;
    r = &al->rules[al->n++];
    memset(r, 0, sizeof(*r));
    r->is_host = 1;
    snprintf(r->host, sizeof(r->host), "%s", host);
    r->port_lo = lo;
    r->port_hi = hi;
    return 0;
}

void allow_add_loopback(struct allowlist *al)
{
    char err[64];

    allow_add(al, "127.0.0.0/8:1-65535", err, sizeof(err));
    allow_add(al, "::1/128:1-65535", err, sizeof(err));
}

int allow_add(struct allowlist *al, const char *arg, char *err, size_t errlen)
{
    char buf[300];
    char *colon, *slash, *host;
    struct allow_rule r;

    memset(&r, 0, sizeof(r));
    if (strcmp(arg, "any") == 0) {
        al->any = 1;
        return 0;
    }
    if (al->n >= ALLOW_MAX) {
        snprintf(err, errlen, "at most %d --allow rules", ALLOW_MAX);
        return -1;
    }
    if (strlen(arg) >= sizeof(buf))
        goto bad;
    memcpy(buf, arg, strlen(arg) + 1);
    colon = strrchr(buf, ':'); /* the port part comes after the last colon */
    if (!colon)
        goto bad;
    *colon = '\0';
    if (parse_port_range(colon + 1, &r.port_lo, &r.port_hi) != 0)
        goto bad;
    host = buf;
    if (host[0] == '[' && host[strlen(host) - 1] == ']') {
        host[strlen(host) - 1] = '\0';
        host++;
    }
    slash = strchr(host, '/');
    if (slash) {
        char *end;
        long prefix;
        *slash = '\0';
        if (inet_pton(AF_INET, host, r.addr) == 1)
            r.family = AF_INET;
        else if (inet_pton(AF_INET6, host, r.addr) == 1)
            r.family = AF_INET6;
        else
            goto bad;
        errno = 0;
        prefix = strtol(slash + 1, &end, 10);
        if (errno || end == slash + 1 || *end || prefix < 0 ||
            prefix > (r.family == AF_INET ? 32 : 128))
            goto bad;
        r.prefix = (int)prefix;
    } else {
        if (!pkt_valid_host(host))
            goto bad;
        r.is_host = 1;
        snprintf(r.host, sizeof(r.host), "%.253s", host);
    }
    al->rules[al->n++] = r;
    return 0;
bad:
    snprintf(err, errlen, "--allow '%s' is not HOST:PORT, CIDR:PORT[-PORT] or 'any'", arg);
    return -1;
}

static int prefix_match(const unsigned char *a, const unsigned char *b, int bits)
{
    int bytes = bits / 8, rest = bits % 8;

    if (memcmp(a, b, (size_t)bytes) != 0)
        return 0;
    if (rest == 0)
        return 1;
    return ((a[bytes] ^ b[bytes]) & (0xff << (8 - rest))) == 0;
}

/* The address in sa into ip (an IPv4-mapped one as IPv4, as it is judged):
 * its family, or 0 when it is neither IPv4 nor IPv6. */
static int sockaddr_ip(const struct sockaddr *sa, unsigned char ip[16])
{
    if (sa->sa_family == AF_INET) {
        memcpy(ip, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return AF_INET;
    }
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a6)) {
            memcpy(ip, a6->s6_addr + 12, 4);
            return AF_INET;
        }
        memcpy(ip, a6->s6_addr, 16);
        return AF_INET6;
    }
    return 0;
}

/* Does rule r admit host:port, whose address is ip (family; 0: not known,
 * as for a name the public side cannot resolve)? */
static int rule_admits(const struct allow_rule *r, const char *host, int port, int family,
                       const unsigned char *ip)
{
    if (port < r->port_lo || port > r->port_hi)
        return 0;
    if (r->is_host)
        return strcasecmp(r->host, host) == 0;
    return family && r->family == family && prefix_match(ip, r->addr, r->prefix);
}

/* Is this resolved address of host:port allowed? */
static int allowed(const struct allowlist *al, const char *host, int port, const struct sockaddr *sa)
{
    unsigned char ip[16];
    int family = sockaddr_ip(sa, ip);

    if (al->any)
        return 1;
    for (int i = 0; i < al->n; i++)
        if (rule_admits(&al->rules[i], host, port, family, ip))
            return 1;
    return 0;
}

/* Resolve host:port for socktype and call attempt() on each address the list
 * allows, until one returns a descriptor. That descriptor, or -1 with err. */
static int allowed_each(const struct allowlist *al, const char *host, int port, int socktype,
                        int (*attempt)(const struct addrinfo *ai, const char *ip, int port,
                                       int timeout_ms, char *err, size_t errlen),
                        int timeout_ms, char *err, size_t errlen)
{
    struct addrinfo hints, *res = NULL, *ai;
    char portstr[16], ipstr[INET6_ADDRSTRLEN];
    int rc, fd = -1;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = socktype;
    hints.ai_flags = AI_NUMERICSERV;
    snprintf(portstr, sizeof(portstr), "%d", port);
    rc = getaddrinfo(host, portstr, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "cannot resolve: %s", gai_strerror(rc));
        return -1;
    }
    {
        char rule[PKT_HOST_MAX + 16];
        allow_rule_for(host, port, rule, sizeof(rule));
        snprintf(err, errlen, "target not allowed: add --allow %s (or a CIDR rule) to proxy_private",
                 rule);
    }
    for (ai = res; ai; ai = ai->ai_next) {
        if (!allowed(al, host, port, ai->ai_addr))
            continue;
        /* Use exactly the address that was checked, not the name again. */
        if (ai->ai_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)ai->ai_addr)->sin_addr, ipstr, sizeof(ipstr));
        else
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr, ipstr,
                      sizeof(ipstr));
        fd = attempt(ai, ipstr, port, timeout_ms, err, errlen);
        if (fd >= 0)
            break;
    }
    freeaddrinfo(res);
    return fd;
}

static int attempt_tcp(const struct addrinfo *ai, const char *ip, int port, int timeout_ms,
                       char *err, size_t errlen)
{
    (void)ai;
    return net_dial(ip, port, timeout_ms, err, errlen);
}

static int attempt_udp(const struct addrinfo *ai, const char *ip, int port, int timeout_ms,
                       char *err, size_t errlen)
{
    int fd = socket(ai->ai_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    (void)timeout_ms;
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    net_udp_buffers(fd, NET_UDP_BUFFER_SESSION);
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        snprintf(err, errlen, "connect %s:%d: %s", ip, port, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

int allow_dial(const struct allowlist *al, const char *host, int port, int timeout_ms, char *err,
               size_t errlen)
{
    return allowed_each(al, host, port, SOCK_STREAM, attempt_tcp, timeout_ms, err, errlen);
}

int allow_udp_connect(const struct allowlist *al, const char *host, int port, char *err,
                      size_t errlen)
{
    return allowed_each(al, host, port, SOCK_DGRAM, attempt_udp, 0, err, errlen);
}

json_t *allow_to_json(const struct allowlist *al)
{
    json_t *arr = json_array();

    if (arr && al->any && json_array_append_new(arr, json_string("any")) != 0)
        goto fail;
    for (int i = 0; arr && i < al->n; i++) {
        const struct allow_rule *r = &al->rules[i];
        char host[PKT_HOST_MAX + 8], rule[sizeof(host) + 16];
        if (r->is_host) {
            snprintf(host, sizeof(host), strchr(r->host, ':') ? "[%s]" : "%s", r->host);
        } else {
            char ip[INET6_ADDRSTRLEN];
            inet_ntop(r->family, r->addr, ip, sizeof(ip));
            snprintf(host, sizeof(host), "%s/%d", ip, r->prefix);
        }
        if (r->port_lo == r->port_hi)
            snprintf(rule, sizeof(rule), "%s:%d", host, r->port_lo);
        else
            snprintf(rule, sizeof(rule), "%s:%d-%d", host, r->port_lo, r->port_hi);
        if (json_array_append_new(arr, json_string(rule)) != 0)
            goto fail;
    }
    return arr;
fail:
    json_decref(arr);
    return NULL;
}

int allow_from_json(struct allowlist *al, const json_t *arr, char *err, size_t errlen)
{
    const json_t *v;
    size_t i;

    if (!json_is_array(arr) || json_array_size(arr) > ALLOW_MAX + 1) {
        snprintf(err, errlen, "\"allow\" is not an array of at most %d rules", ALLOW_MAX + 1);
        return -1;
    }
    json_array_foreach(arr, i, v) {
        const char *s = json_string_value(v);
        if (!s) {
            snprintf(err, errlen, "\"allow\" holds something that is not a string");
            return -1;
        }
        if (allow_add(al, s, err, errlen) != 0)
            return -1;
    }
    return 0;
}

enum allow_verdict allow_judge(const struct allowlist *al, const char *host, int port)
{
    struct sockaddr_storage ss;
    unsigned char ip[16];
    int family = 0, cidr_might = 0;

    if (al->any)
        return ALLOW_YES;
    memset(&ss, 0, sizeof(ss));
    if (inet_pton(AF_INET, host, &((struct sockaddr_in *)&ss)->sin_addr) == 1)
        ss.ss_family = AF_INET;
    else if (inet_pton(AF_INET6, host, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1)
        ss.ss_family = AF_INET6;
    family = sockaddr_ip((const struct sockaddr *)&ss, ip);
    for (int i = 0; i < al->n; i++) {
        const struct allow_rule *r = &al->rules[i];
        if (rule_admits(r, host, port, family, ip))
            return ALLOW_YES;
        /* A name's addresses are the home side's to know. */
        if (!family && !r->is_host && port >= r->port_lo && port <= r->port_hi)
            cidr_might = 1;
    }
    return cidr_might ? ALLOW_MAYBE : ALLOW_NO;
}

void allow_rule_for(const char *host, int port, char *out, size_t cap)
{
    snprintf(out, cap, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
}

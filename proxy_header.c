/* proxy_header.c - the reading side of the PROXY protocol (see proxy_header.h).
 *
 * pp_parse() is a pure function over bytes, so the unit tests and the fuzzer
 * (fuzz/fuzz_proxy_header.c) see exactly what a connection would.
 * pp_read_header() never consumes a byte past the header: it peeks at what
 * has arrived (MSG_PEEK, at most PP_HEADER_MAX bytes) until pp_parse() knows
 * the header's length, then reads exactly that many. */

#include "proxy_header.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "netio.h"

#define PP_POLL_MS 100              /* how often a wait looks at *stop */
#define PP_TRICKLE_MS 10            /* pause when a peek shows nothing new */

static const unsigned char pp_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                         0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

static struct cidr_list pp_accept;
static _Atomic uint64_t pp_refused;

/* A port in decimal, 1 to 5 digits, at most 65535. 0 or -1. */
static int pp_port(const char *s, uint16_t *out)
{
    unsigned long v = 0;
    size_t n = strlen(s);

    if (n < 1 || n > 5)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    if (v > 65535)
        return -1;
    *out = (uint16_t)v;
    return 0;
}

/* The address and port of a v1 line's fields: "SRC DST SPORT DPORT" (single
 * spaces, nothing else). 0 or -1. */
static int pp_v1_fields(char *rest, int family, struct sockaddr_storage *src)
{
    char *f[4];
    unsigned char dst[16];
    uint16_t sport, dport;
    int n = 0;

    f[n++] = rest;
    for (char *p = rest; *p; p++) {
        if (*p != ' ')
            continue;
        if (n == 4)
            return -1;
        *p = '\0';
        f[n++] = p + 1;
    }
    if (n != 4)
        return -1;
    for (int i = 0; i < 4; i++)
        if (!f[i][0])
            return -1;
    if (pp_port(f[2], &sport) != 0 || pp_port(f[3], &dport) != 0 ||
        inet_pton(family, f[1], dst) != 1)
        return -1;
    if (family == AF_INET) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)src;
        if (inet_pton(AF_INET, f[0], &s4->sin_addr) != 1)
            return -1;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(sport);
    } else {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)src;
        if (inet_pton(AF_INET6, f[0], &s6->sin6_addr) != 1)
            return -1;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(sport);
    }
    return 0;
}

/* Version 1: "PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n" or "PROXY UNKNOWN...\r\n". */
static int pp_parse_v1(const unsigned char *buf, size_t len, struct sockaddr_storage *src,
                       size_t *hdr_len)
{
    static const char prefix[] = "PROXY ";
    size_t scan = len < PP_V1_MAX ? len : PP_V1_MAX, end = 0;
    char line[PP_V1_MAX + 1];

    if (memcmp(buf, prefix, len < 6 ? len : 6) != 0)
        return -1;
    if (len < 6)
        return 0;
    for (size_t i = 6; i < scan && !end; i++) {
        if (buf[i] == '\r') {
            if (i + 2 > PP_V1_MAX)
                return -1;          /* its LF would be past the limit */
            if (i + 1 >= len)
                return 0;
            if (buf[i + 1] != '\n')
                return -1;
            end = i + 2;
        } else if (buf[i] < 0x20 || buf[i] > 0x7e) {
            return -1;
        }
    }
    if (!end)
        return scan >= PP_V1_MAX ? -1 : 0;
    memcpy(line, buf + 6, end - 8);
    line[end - 8] = '\0';
    if (strcmp(line, "UNKNOWN") == 0 || strncmp(line, "UNKNOWN ", 8) == 0) {
        *hdr_len = end;
        return 1;
    }
    if (strncmp(line, "TCP4 ", 5) != 0 && strncmp(line, "TCP6 ", 5) != 0)
        return -1;
    if (pp_v1_fields(line + 5, line[3] == '4' ? AF_INET : AF_INET6, src) != 0) {
        memset(src, 0, sizeof(*src));
        return -1;
    }
    *hdr_len = end;
    return 1;
}

/* Version 2: the signature, version/command, family/transport, a 16-bit
 * length, then that many bytes (addresses, then TLVs we skip). */
static int pp_parse_v2(const unsigned char *buf, size_t len, struct sockaddr_storage *src,
                       size_t *hdr_len)
{
    size_t alen;

    if (memcmp(buf, pp_sig, len < 12 ? len : 12) != 0)
        return -1;
    if (len > 12 && ((buf[12] >> 4) != 2 || (buf[12] & 0x0F) > 1))
        return -1;
    if (len < 16)
        return 0;
    alen = (size_t)buf[14] << 8 | buf[15];
    if (alen > PP_V2_LEN_MAX)
        return -1;
    if (len - 16 < alen)
        return 0;
    if ((buf[12] & 0x0F) == 1 && buf[13] == 0x11) {         /* PROXY, TCP over IPv4 */
        struct sockaddr_in *s4 = (struct sockaddr_in *)src;
        if (alen < 12)
            return -1;
        s4->sin_family = AF_INET;
        memcpy(&s4->sin_addr, buf + 16, 4);
        memcpy(&s4->sin_port, buf + 24, 2);                  /* both in network order */
    } else if ((buf[12] & 0x0F) == 1 && buf[13] == 0x21) {  /* PROXY, TCP over IPv6 */
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)src;
        if (alen < 36)
            return -1;
        s6->sin6_family = AF_INET6;
        memcpy(&s6->sin6_addr, buf + 16, 16);
        memcpy(&s6->sin6_port, buf + 48, 2);
    }
    /* LOCAL (a health check of the balancer itself), UNSPEC, UNIX or UDP:
     * the connection's own peer is the client. */
    *hdr_len = 16 + alen;
    return 1;
}

int pp_parse(const unsigned char *buf, size_t len, struct sockaddr_storage *src, size_t *hdr_len)
{
    memset(src, 0, sizeof(*src));
    *hdr_len = 0;
    if (len == 0)
        return 0;
    if (buf[0] == 'P')
        return pp_parse_v1(buf, len, src, hdr_len);
    if (buf[0] == pp_sig[0])
        return pp_parse_v2(buf, len, src, hdr_len);
    return -1;
}

void pp_accept_set(const struct cidr_list *l)
{
    pp_accept = *l;
}

int pp_accept_listed(const struct sockaddr_storage *peer)
{
    return pp_accept.n > 0 && cidr_list_allows(&pp_accept, peer);
}

void pp_count_refused(void)
{
    pp_refused++;
}

uint64_t pp_refused_total(void)
{
    return pp_refused;
}

/* Wait up to PP_POLL_MS (at most until deadline) for fd to be readable.
 * 1 readable, 0 not yet, -1 error. */
static int pp_wait(int fd, uint64_t deadline)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    uint64_t now = mono_ms();
    int ms = deadline <= now ? 0 : deadline - now > PP_POLL_MS ? PP_POLL_MS : (int)(deadline - now);
    int r = poll(&p, 1, ms);

    if (r < 0)
        return errno == EINTR ? 0 : -1;
    return r > 0;
}

int pp_read_header(int fd, uint64_t deadline, const _Atomic int *stop,
                   const struct sockaddr_storage *peer, struct sockaddr_storage *client,
                   const char **why)
{
    unsigned char buf[PP_HEADER_MAX];
    struct sockaddr_storage src;
    size_t seen = 0, hlen = 0, got = 0;
    int rc = 0;

    *why = "no PROXY header in time";
    while (rc == 0) {
        ssize_t n;
        int w;
        if (stop && *stop) {
            *why = "stopping";
            return -1;
        }
        if (mono_ms() >= deadline)
            return -1;
        w = pp_wait(fd, deadline);
        if (w < 0) {
            *why = "connection failed before a PROXY header";
            return -1;
        }
        if (w == 0)
            continue;
        n = recv(fd, buf, sizeof(buf), MSG_PEEK | MSG_DONTWAIT);
        if (n == 0) {
            *why = "closed before a whole PROXY header";
            return -1;
        }
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
                continue;
            *why = "connection failed before a PROXY header";
            return -1;
        }
        rc = pp_parse(buf, (size_t)n, &src, &hlen);
        if (rc < 0) {
            *why = "not a valid PROXY header";
            return -1;
        }
        if (rc == 0 && (size_t)n == seen) {
            /* Readable, but nothing new since the last peek: a sender that
             * trickles its header. Pause rather than spin; the deadline above
             * still holds on every turn. */
            struct timespec ts = {.tv_nsec = PP_TRICKLE_MS * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        seen = (size_t)n;
    }
    /* The header's bytes are in the socket's buffer (just peeked): take
     * exactly those, the client's own bytes stay for whoever reads next. */
    while (got < hlen) {
        ssize_t n = recv(fd, buf + got, hlen - got, MSG_DONTWAIT);
        if (n > 0) {
            got += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && mono_ms() < deadline &&
            pp_wait(fd, deadline) >= 0)
            continue;
        *why = "connection failed while reading the PROXY header";
        return -1;
    }
    *client = src.ss_family == AF_UNSPEC ? *peer : src;
    return 0;
}

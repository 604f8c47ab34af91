/* netio.c - socket and thread helpers: every loop here retries EINTR and short
 * writes, sockets are close-on-exec, and SIGPIPE is never raised. */

#include "netio.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <net/if.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int net_parse_port(const char *s, int *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 1 || v > 65535)
        return -1;
    *out = (int)v;
    return 0;
}

int net_parse_port_ranges(const char *s, int *lo, int *hi, int max)
{
    const char *p = s;
    int n = 0;

    while (*p) {
        char *end;
        long a, b;
        if (*p < '0' || *p > '9') /* strtol would take spaces and signs */
            return -1;
        errno = 0;
        a = strtol(p, &end, 10);
        b = a;
        if (end != p && *end == '-') {
            p = end + 1;
            if (*p < '0' || *p > '9')
                return -1;
            b = strtol(p, &end, 10);
        }
        if (errno || end == p || (*end && *end != ',') || (*end == ',' && !end[1]) || a < 1 ||
            b > 65535 || a > b || n >= max)
            return -1;
        lo[n] = (int)a;
        hi[n] = (int)b;
        n++;
        p = *end ? end + 1 : end;
    }
    return n ? n : -1;
}

uint64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void sleep_ms(unsigned ms)
{
    struct timespec ts = {(time_t)(ms / 1000u), (long)(ms % 1000u) * 1000000L};

    nanosleep(&ts, NULL);
}

int net_write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;

    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int net_set_nonblock(int fd, int on)
{
    int fl = fcntl(fd, F_GETFL);

    if (fl < 0)
        return -1;
    return fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
}

void net_tune(int fd)
{
    int one = 1;
    int idle = 60, intvl = 10, cnt = 6;

    /* Failures here only cost performance or dead-peer detection: not fatal. */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    (void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
}

static _Atomic int net_v4_only; /* the kernel has no IPv6: wildcards fell back to 0.0.0.0 */

int net_ipv6_missing(void)
{
    return net_v4_only;
}

/* addr (an IPv4 or IPv6 literal, the latter with or without brackets and
 * with an optional %scope) and port into ss. 0, or -1 when addr is not an
 * address. */
int net_parse_addr(const char *addr, int port, struct sockaddr_storage *ss, socklen_t *len)
{
    char buf[INET6_ADDRSTRLEN + IF_NAMESIZE + 4];
    struct addrinfo hints, *res = NULL;
    size_t n = addr ? strlen(addr) : 0;
    char portstr[8];

    if (n == 0 || n >= sizeof(buf))
        return -1;
    if (addr[0] == '[') {
        if (n < 3 || addr[n - 1] != ']')
            return -1;
        memcpy(buf, addr + 1, n - 2);
        buf[n - 2] = '\0';
        if (!strchr(buf, ':'))
            return -1; /* brackets hold IPv6 only */
    } else {
        memcpy(buf, addr, n + 1);
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
    snprintf(portstr, sizeof(portstr), "%d", port);
    if (getaddrinfo(buf, portstr, &hints, &res) != 0 || !res)
        return -1;
    if (res->ai_addrlen > sizeof(*ss)) {
        freeaddrinfo(res);
        return -1;
    }
    memset(ss, 0, sizeof(*ss));
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = (socklen_t)res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

int net_parse_addrport(const char *s, struct sockaddr_storage *ss)
{
    char host[INET6_ADDRSTRLEN + 2];
    const char *colon;
    size_t hl;
    int port;

    if (!s)
        return -1;
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (!end || end[1] != ':')
            return -1;
        colon = end + 1;
        hl = (size_t)(colon - s);
        if (!memchr(s, ':', (size_t)(end - s)))
            return -1;
    } else {
        colon = strchr(s, ':');
        if (!colon || strchr(colon + 1, ':'))
            return -1; /* IPv6 needs its brackets here */
        hl = (size_t)(colon - s);
    }
    if (hl == 0 || hl >= sizeof(host) || net_parse_port(colon + 1, &port) != 0)
        return -1;
    memcpy(host, s, hl);
    host[hl] = '\0';
    /* Literals only, no scope: a peer's address as the other side saw it
     * (inet_pton: no resolver on the reader's path). */
    memset(ss, 0, sizeof(*ss));
    if (host[0] == '[') {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
        host[hl - 1] = '\0';
        if (inet_pton(AF_INET6, host + 1, &s6->sin6_addr) != 1)
            return -1;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        return 0;
    }
    {
        struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
        if (inet_pton(AF_INET, host, &s4->sin_addr) != 1)
            return -1;
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
    }
    return 0;
}

/* A socket of type bound to addr:port. addr NULL or "": every address of
 * both families on one IPv6 socket with IPV6_V6ONLY off (IPv4 clients appear
 * as ::ffff:a.b.c.d), or of IPv4 alone when the kernel has no IPv6. An IPv6
 * address given (even "::") is IPv6 only, so "--bind 0.0.0.0 --bind ::" can
 * share a port. */
static int bound_socket(int type, const char *addr, int port, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t len;
    int fd = -1, one = 1, zero = 0, wildcard = !addr || !*addr;

    memset(&ss, 0, sizeof(ss));
    if (wildcard) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_addr = in6addr_any;
        s6->sin6_port = htons((uint16_t)port);
        len = sizeof(*s6);
        if (net_v4_only)
            goto v4;
    } else if (net_parse_addr(addr, port, &ss, &len) != 0) {
        snprintf(err, errlen, "bind address '%s' is not an IPv4 or IPv6 address", addr);
        return -1;
    }
    fd = socket(ss.ss_family, type | SOCK_CLOEXEC, 0);
    if (fd < 0 && wildcard && errno == EAFNOSUPPORT) {
        net_v4_only = 1;
        goto v4;
    }
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    if (ss.ss_family == AF_INET6 &&
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, wildcard ? &zero : &one, sizeof(int)) != 0 &&
        wildcard) {
        close(fd); /* no dual-stack socket here: IPv4 then */
        net_v4_only = 1;
        goto v4;
    }
    goto bind;
v4:
    {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        memset(&ss, 0, sizeof(ss));
        s4->sin_family = AF_INET;
        s4->sin_addr.s_addr = htonl(INADDR_ANY);
        s4->sin_port = htons((uint16_t)port);
        len = sizeof(*s4);
        fd = socket(AF_INET, type | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            snprintf(err, errlen, "socket: %s", strerror(errno));
            return -1;
        }
    }
bind:
    if (type == SOCK_STREAM)
        (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, len) != 0) {
        int e = errno;
        if (wildcard && ss.ss_family == AF_INET6 && e == EADDRNOTAVAIL) {
            /* IPv6 switched off (disable_ipv6): all IPv4 addresses instead. */
            close(fd);
            net_v4_only = 1;
            goto v4;
        }
        snprintf(err, errlen, "port %d: %s", port, strerror(e));
        close(fd);
        errno = e; /* the caller tells EADDRINUSE apart */
        return -1;
    }
    return fd;
}

int net_listen(const char *addr, int port, int backlog, char *err, size_t errlen)
{
    int fd = bound_socket(SOCK_STREAM, addr, port, err, errlen);

    if (fd >= 0 && listen(fd, backlog) != 0) {
        int e = errno;
        snprintf(err, errlen, "port %d: %s", port, strerror(e));
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int net_bind_udp(const char *addr, int port, char *err, size_t errlen)
{
    int fd = bound_socket(SOCK_DGRAM, addr, port, err, errlen);

    if (fd >= 0)
        net_udp_buffers(fd, NET_UDP_BUFFER_APP);
    return fd;
}

int net_binds_add(struct net_binds *b, const char *list, char *err, size_t errlen)
{
    const char *p = list;

    while (*p) {
        struct sockaddr_storage ss;
        socklen_t len;
        size_t n;
        p += strspn(p, ", \t");
        n = strcspn(p, ", \t");
        if (n == 0)
            break;
        if (n >= NET_ADDR_TEXT_MAX) {
            snprintf(err, errlen, "bind address '%.40s...' is too long", p);
            return -1;
        }
        if (b->n >= NET_BIND_MAX) {
            snprintf(err, errlen, "at most %d bind addresses", NET_BIND_MAX);
            return -1;
        }
        memcpy(b->addr[b->n], p, n);
        b->addr[b->n][n] = '\0';
        if (net_parse_addr(b->addr[b->n], 1, &ss, &len) != 0) {
            snprintf(err, errlen, "bind address '%s' is not an IPv4 or IPv6 address", b->addr[b->n]);
            return -1;
        }
        b->n++;
        p += n;
    }
    return 0;
}

void net_binds_str(const struct net_binds *b, char *out, size_t cap)
{
    size_t off = 0;

    out[0] = '\0';
    if (!b || b->n == 0) {
        snprintf(out, cap, "%s", net_v4_only ? "0.0.0.0" : "[::]+0.0.0.0");
        return;
    }
    for (int i = 0; i < b->n && off < cap; i++) {
        const char *a = b->addr[i];
        int w = snprintf(out + off, cap - off, strchr(a, ':') && a[0] != '[' ? "%s[%s]" : "%s%s",
                         i ? "," : "", a);
        if (w < 0)
            break;
        off += (size_t)w;
    }
}

int net_listen_all(const struct net_binds *b, int udp, int port, int backlog, int fds[NET_BIND_MAX],
                   char *err, size_t errlen)
{
    int n = b && b->n ? b->n : 1;

    for (int i = 0; i < n; i++) {
        const char *a = b && b->n ? b->addr[i] : NULL;
        fds[i] = udp ? net_bind_udp(a, port, err, errlen) : net_listen(a, port, backlog, err, errlen);
        if (fds[i] < 0) {
            int e = errno;
            if (a && n > 1) {
                char why[160];
                snprintf(why, sizeof(why), "%s", err);
                snprintf(err, errlen, "%s (bind address %s)", why, a);
            }
            for (int k = 0; k < i; k++)
                close(fds[k]);
            errno = e;
            return -1;
        }
    }
    return n;
}

void net_udp_buffers(int fd, int bytes)
{
    /* Room for bursts; the kernel caps it at net.core.[rw]mem_max. */
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes));
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes));
}

/* Wait for a non-blocking connect to finish; 0 when connected. */
static int dial_wait(int fd, int timeout_ms, char *err, size_t errlen)
{
    struct pollfd pfd = {.fd = fd, .events = POLLOUT};
    uint64_t deadline = mono_ms() + (uint64_t)timeout_ms;
    int soerr = 0;
    socklen_t sl = sizeof(soerr);

    for (;;) {
        uint64_t now = mono_ms();
        int r;
        if (now >= deadline) {
            snprintf(err, errlen, "timed out");
            return -1;
        }
        r = poll(&pfd, 1, (int)(deadline - now));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(err, errlen, "poll: %s", strerror(errno));
            return -1;
        }
        if (r > 0)
            break;
    }
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr != 0) {
        snprintf(err, errlen, "%s", strerror(soerr ? soerr : errno));
        return -1;
    }
    return 0;
}

int net_dial(const char *host, int port, int timeout_ms, char *err, size_t errlen)
{
    struct addrinfo hints, *res = NULL, *ai;
    char portstr[16];
    int fd = -1, rc;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(portstr, sizeof(portstr), "%d", port);
    rc = getaddrinfo(host, portstr, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "cannot resolve: %s", gai_strerror(rc));
        return -1;
    }
    snprintf(err, errlen, "no address");
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
        if (fd < 0) {
            snprintf(err, errlen, "socket: %s", strerror(errno));
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 ||
            (errno == EINPROGRESS && dial_wait(fd, timeout_ms, err, errlen) == 0)) {
            if (errno != EINPROGRESS)
                err[0] = '\0';
            break;
        }
        if (errno != EINPROGRESS)
            snprintf(err, errlen, "%s", strerror(errno));
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd >= 0 && net_set_nonblock(fd, 0) != 0) {
        snprintf(err, errlen, "fcntl: %s", strerror(errno));
        close(fd);
        fd = -1;
    }
    return fd;
}

void net_unmap(struct sockaddr_storage *ss)
{
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
    struct sockaddr_in s4;

    if (ss->ss_family != AF_INET6 || !IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr))
        return;
    memset(&s4, 0, sizeof(s4));
    s4.sin_family = AF_INET;
    s4.sin_port = s6->sin6_port;
    memcpy(&s4.sin_addr, s6->sin6_addr.s6_addr + 12, 4);
    memset(ss, 0, sizeof(*ss));
    memcpy(ss, &s4, sizeof(s4));
}

int net_sa_port(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)ss)->sin_port);
    if (ss->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    return 0;
}

void net_ip_str(const struct sockaddr_storage *in, char *out, size_t cap)
{
    struct sockaddr_storage ss = *in;

    net_unmap(&ss);
    if (ss.ss_family == AF_INET) {
        if (inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, out, (socklen_t)cap))
            return;
    } else if (ss.ss_family == AF_INET6) {
        if (inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, out, (socklen_t)cap))
            return;
    }
    snprintf(out, cap, "?");
}

void net_sa_str(const struct sockaddr_storage *ss, char *out, size_t cap)
{
    char ip[INET6_ADDRSTRLEN];

    net_ip_str(ss, ip, sizeof(ip));
    net_hostport_str(ip, net_sa_port(ss), out, cap);
}

void net_hostport_str(const char *host, int port, char *out, size_t cap)
{
    snprintf(out, cap, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
}

void net_peer_str(int fd, char *out, size_t cap)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);

    if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0)
        net_sa_str(&ss, out, cap);
    else
        snprintf(out, cap, "?:0");
}

void net_local_str(int fd, char *out, size_t cap)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);

    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        net_sa_str(&ss, out, cap);
    else
        snprintf(out, cap, "?:0");
}

void net_addr_str(const struct sockaddr_storage *ss, char *out, size_t cap)
{
    /* The notation of net_sa_str (an IPv4 client of a dual-stack socket as IPv4). */
    if (ss->ss_family != AF_INET && ss->ss_family != AF_INET6) {
        snprintf(out, cap, "?");
        return;
    }
    net_sa_str(ss, out, cap);
}

/* Threads are kept for a while after their job ends and given the next job:
 * still one thread per connection, but a burst of short connections does not
 * pay for creating and tearing down a thread (and its stack) each time. */
#define POOL_MAX_IDLE 256
#define POOL_IDLE_MS 10000

struct worker {
    pthread_cond_t cv;
    void *(*fn)(void *);         /* the job; NULL while parked */
    void *arg;
    struct worker *next;         /* in the idle list */
};

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static struct worker *pool_idle;
static unsigned pool_nidle;

static void pool_unlink_locked(struct worker *w)
{
    for (struct worker **pp = &pool_idle; *pp; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            pool_nidle--;
            return;
        }
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;

    for (;;) {
        struct timespec ts;
        w->fn(w->arg);
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += POOL_IDLE_MS / 1000;
        pthread_mutex_lock(&pool_lock);
        if (pool_nidle >= POOL_MAX_IDLE) {
            pthread_mutex_unlock(&pool_lock);
            break;
        }
        w->fn = NULL;
        w->next = pool_idle;
        pool_idle = w;
        pool_nidle++;
        while (!w->fn) {
            if (pthread_cond_timedwait(&w->cv, &pool_lock, &ts) != 0 && !w->fn) {
                pool_unlink_locked(w);
                break;
            }
        }
        if (!w->fn) {
            pthread_mutex_unlock(&pool_lock);
            break;
        }
        pthread_mutex_unlock(&pool_lock);
    }
    pthread_cond_destroy(&w->cv);
    free(w);
    return NULL;
}

int thread_spawn(void *(*fn)(void *), void *arg)
{
    return thread_spawn_sized(fn, arg, THREAD_STACK_SIZE);
}

int thread_spawn_sized(void *(*fn)(void *), void *arg, size_t stack)
{
    pthread_attr_t attr;
    pthread_condattr_t ca;
    pthread_t tid;
    struct worker *w = NULL;
    int rc;

    /* Only default-sized threads are parked and reused. */
    if (stack != THREAD_STACK_SIZE) {
        pthread_attr_init(&attr);
        rc = pthread_attr_setstacksize(&attr, stack);
        if (rc == 0)
            rc = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (rc == 0)
            rc = pthread_create(&tid, &attr, fn, arg);
        pthread_attr_destroy(&attr);
        return rc;
    }
    pthread_mutex_lock(&pool_lock);
    w = pool_idle;
    if (w) {
        pool_idle = w->next;
        pool_nidle--;
        w->fn = fn;
        w->arg = arg;
        pthread_cond_signal(&w->cv);
    }
    pthread_mutex_unlock(&pool_lock);
    if (w)
        return 0;

    w = calloc(1, sizeof(*w));
    if (!w)
        return ENOMEM;
    w->fn = fn;
    w->arg = arg;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (stack < (size_t)PTHREAD_STACK_MIN)
        stack = (size_t)PTHREAD_STACK_MIN;
    rc = pthread_attr_init(&attr);
    if (rc == 0) {
        rc = pthread_attr_setstacksize(&attr, stack);
        if (rc == 0)
            rc = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (rc == 0)
            rc = pthread_create(&tid, &attr, worker_main, w);
        pthread_attr_destroy(&attr);
    }
    if (rc != 0) {
        pthread_cond_destroy(&w->cv);
        free(w);
    }
    return rc;
}

void net_source_key(const struct sockaddr_storage *ss, unsigned char key[NET_SOURCE_KEY_LEN])
{
    memset(key, 0, NET_SOURCE_KEY_LEN);
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
        key[10] = key[11] = 0xff;
        memcpy(key + 12, &s4->sin_addr, 4);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
        memcpy(key, &s6->sin6_addr, NET_SOURCE_KEY_LEN);
        if (!IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr))
            memset(key + 8, 0, 8);
    }
}

long net_raise_fd_limit(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -1;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            return -1;
    }
    return (long)rl.rlim_cur;
}

/* netio.c - socket and thread helpers: every loop here retries EINTR and short
 * writes, sockets are close-on-exec, and SIGPIPE is never raised. */

#include "netio.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
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

uint64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
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

int net_listen(const char *addr, int port, int backlog, char *err, size_t errlen)
{
    struct sockaddr_in sin;
    int fd = -1, one = 1;

    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)port);
    if (!addr || !*addr) {
        sin.sin_addr.s_addr = htonl(INADDR_ANY);
    } else if (inet_pton(AF_INET, addr, &sin.sin_addr) != 1) {
        snprintf(err, errlen, "bind address '%s' is not an IPv4 address", addr);
        return -1;
    }
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0 || listen(fd, backlog) != 0) {
        snprintf(err, errlen, "port %d: %s", port, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
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

void net_peer_str(int fd, char *out, size_t cap)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;

    if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &s4->sin_addr, host, sizeof(host));
            port = ntohs(s4->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof(host));
            port = ntohs(s6->sin6_port);
        }
    }
    snprintf(out, cap, "%s:%d", host, port);
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

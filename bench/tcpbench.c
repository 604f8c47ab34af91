/*
 * tcpbench: the small TCP load tool behind `make bench`.
 *
 * Every mode is a single thread driving non-blocking sockets with epoll, so
 * holding 10,000 connections costs file descriptors, not pids or stacks.
 * Only loopback addresses are ever dialled (run.sh passes 127.0.0.1).
 *
 *   tcpbench echo-server PORT            echo everything; PORT 0 picks one and
 *                                        prints "port=N" on stdout
 *   tcpbench pingpong HOST PORT N [SIZE] N round trips of SIZE (64) bytes on
 *                                        one connection; prints "P50 P99" in µs
 *   tcpbench pingpong-mix HOST N SIZE CHUNK PORT...
 *                                        the same on one connection per PORT
 *                                        (up to 16), CHUNK round trips on each
 *                                        in turn; one "P50 P99" line per PORT
 *   tcpbench connrate HOST PORT SECONDS PARALLEL
 *                                        fresh connections, 1-byte echo each;
 *                                        prints "RATE OK ERRORS"
 *   tcpbench hold HOST PORT N [INFLIGHT [SECONDS]]
 *                                        opens N connections (INFLIGHT, default
 *                                        128, being opened at once; giving up
 *                                        after SECONDS, default 150), echo-checks each,
 *                                        prints "held=OK failed=F first10=R last10=R"
 *                                        (conns/s opened in the first and last
 *                                        tenth), holds them
 *                                        until stdin closes or SIGINT/SIGTERM,
 *                                        then echo-checks them again and prints
 *                                        "alive=A dropped=D"
 *   tcpbench udp-echo PORT [sink]        UDP: answer each datagram with itself
 *                                        (sink: answer nothing); prints "port=N"
 *   tcpbench udp-pingpong HOST PORT N [SIZE]
 *                                        N UDP round trips of SIZE (64) bytes, a
 *                                        lost one sent again after 200 ms;
 *                                        prints "P50 P99 LOST" (µs)
 *   tcpbench udp-flood HOST PORT SECONDS [SIZE [MBITPS]]
 *                                        datagrams of SIZE (1400) bytes as fast as
 *                                        one socket sends them, or at MBITPS;
 *                                        prints "SENT"
 *   tcpbench freeport [COUNT]            prints COUNT distinct free loopback ports
 *   tcpbench waitport HOST PORT SECONDS  exits 0 once HOST:PORT accepts
 *   tcpbench pstat PID...                prints "CPU_SECONDS RSS_KIB" summed over
 *                                        the PIDs and all their descendants
 *   tcpbench pids PID...                 prints the PIDs and all their descendants
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define TB_MAX_EVENTS 256
#define TB_IOBUF (64 * 1024)

static volatile sig_atomic_t tb_stop; /* set from signal handlers only */

static void tb_on_signal(int sig)
{
    (void)sig;
    tb_stop = 1;
}

static void tb_die(const char *what)
{
    fprintf(stderr, "tcpbench: %s: %s\n", what, strerror(errno));
    exit(2);
}

static double tb_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Parses a decimal integer in [min, max]; exits with a usage error otherwise. */
static long tb_num(const char *s, long min, long max, const char *name)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max) {
        fprintf(stderr, "tcpbench: bad %s '%s' (want %ld..%ld)\n", name, s, min, max);
        exit(2);
    }
    return v;
}

static struct sockaddr_in tb_addr(const char *host, long port)
{
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "tcpbench: bad IPv4 address '%s'\n", host);
        exit(2);
    }
    return sa;
}

/* Raises the soft fd limit to the hard one so hold/echo-server can use it all. */
static void tb_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void tb_nodelay(int fd)
{
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* Starts a non-blocking connect; returns the fd or -1 (errno set). */
static int tb_connect_nb(const struct sockaddr_in *sa)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    tb_nodelay(fd);
    if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static int tb_sock_error(int fd)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        return errno;
    return err;
}

/* ---------------------------------------------------------------- echo-server */

/* One accepted connection. Bytes that could not be written at once are kept in
 * pend (malloc'd) and reading stops until they are flushed, so a client that
 * does not read holds at most one read buffer of memory here. */
struct echo_conn {
    int fd;
    char *pend;
    size_t pend_off;
    size_t pend_len;
};

static void echo_close(int ep, struct echo_conn *c)
{
    (void)epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->pend);
    free(c);
}

/* Returns 0 to keep the connection, -1 to close it. */
static int echo_flush(int ep, struct echo_conn *c)
{
    while (c->pend_off < c->pend_len) {
        ssize_t n = send(c->fd, c->pend + c->pend_off, c->pend_len - c->pend_off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (n <= 0)
            return -1;
        c->pend_off += (size_t)n;
    }
    free(c->pend);
    c->pend = NULL;
    c->pend_off = c->pend_len = 0;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    return epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static int echo_readable(int ep, struct echo_conn *c, char *buf)
{
    for (int rounds = 0; rounds < 16; rounds++) {
        ssize_t n = recv(c->fd, buf, TB_IOBUF, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (n <= 0)
            return -1; /* EOF or reset: the echo is complete */
        size_t off = 0;
        while (off < (size_t)n) {
            ssize_t w = send(c->fd, buf + off, (size_t)n - off, MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                c->pend_len = (size_t)n - off;
                c->pend = malloc(c->pend_len);
                if (c->pend == NULL)
                    return -1;
                memcpy(c->pend, buf + off, c->pend_len);
                c->pend_off = 0;
                struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
                return epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
            }
            if (w <= 0)
                return -1;
            off += (size_t)w;
        }
    }
    return 0;
}

static int tb_echo_server(long port)
{
    tb_raise_nofile();
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        tb_die("socket");
    int one = 1;
    (void)setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = tb_addr("127.0.0.1", port);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0)
        tb_die("bind");
    if (listen(lfd, 4096) < 0)
        tb_die("listen");
    socklen_t slen = sizeof sa;
    if (getsockname(lfd, (struct sockaddr *)&sa, &slen) < 0)
        tb_die("getsockname");
    printf("port=%u\n", (unsigned)ntohs(sa.sin_port));
    fflush(stdout);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        tb_die("epoll_create1");
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) < 0)
        tb_die("epoll_ctl");
    char *buf = malloc(TB_IOBUF);
    if (buf == NULL)
        tb_die("malloc");
    struct epoll_event evs[TB_MAX_EVENTS];
    while (!tb_stop) {
        int n = epoll_wait(ep, evs, TB_MAX_EVENTS, 1000);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            tb_die("epoll_wait");
        for (int i = 0; i < n; i++) {
            struct echo_conn *c = evs[i].data.ptr;
            if (c == NULL) {
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) {
                        if (errno == EMFILE || errno == ENFILE) {
                            fprintf(stderr, "tcpbench: echo-server out of fds\n");
                            usleep(10000);
                        }
                        break;
                    }
                    tb_nodelay(fd);
                    struct echo_conn *nc = calloc(1, sizeof *nc);
                    if (nc == NULL) {
                        close(fd);
                        continue;
                    }
                    nc->fd = fd;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = nc};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
                        close(fd);
                        free(nc);
                    }
                }
                continue;
            }
            int rc;
            if (c->pend != NULL)
                rc = (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) ? echo_flush(ep, c) : 0;
            else
                rc = echo_readable(ep, c, buf);
            if (rc < 0)
                echo_close(ep, c);
        }
    }
    free(buf);
    return 0;
}

/* ------------------------------------------------------------------ pingpong */

static int tb_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int tb_write_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int tb_read_exact(int fd, char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = recv(fd, p, len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Sorts rtt and prints its p50 and p99, then tail. */
static void tb_print_percentiles(double *rtt, long count, const char *tail)
{
    qsort(rtt, (size_t)count, sizeof(double), tb_cmp_double);
    long i50 = (count * 50) / 100, i99 = (count * 99) / 100;
    if (i99 >= count)
        i99 = count - 1;
    printf("%.1f %.1f%s", rtt[i50], rtt[i99], tail);
}

/* One ping-pong connection: a connected socket and its buffers. */
struct pp_conn {
    int fd;
    long port, done;
    char *out, *in;
    double *rtt;
    int failed;
};

static void pp_open(struct pp_conn *c, const char *host, long port, long count, long size)
{
    struct sockaddr_in sa = tb_addr(host, port);
    struct timeval tv = {.tv_sec = 10, .tv_usec = 0};

    memset(c, 0, sizeof(*c));
    c->port = port;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        tb_die("socket");
    tb_nodelay(c->fd);
    (void)setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    (void)setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    c->out = malloc((size_t)size);
    c->in = malloc((size_t)size);
    c->rtt = malloc(sizeof(double) * (size_t)count);
    if (c->out == NULL || c->in == NULL || c->rtt == NULL)
        tb_die("malloc");
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        fprintf(stderr, "tcpbench: pingpong to port %ld: connect: %s\n", port, strerror(errno));
        c->failed = 1;
    }
}

/* Round trip i (negative: warm-up, not recorded) on c; on failure a message
 * and c->failed set. */
static void pp_round(struct pp_conn *c, long i, long size)
{
    for (long j = 0; j < size; j++)
        c->out[j] = (char)('a' + (i + j) % 26);
    double t0 = tb_now();
    if (tb_write_all(c->fd, c->out, (size_t)size) < 0 || tb_read_exact(c->fd, c->in, (size_t)size) < 0) {
        fprintf(stderr, "tcpbench: pingpong to port %ld, round %ld failed: %s\n", c->port, i,
                strerror(errno));
        c->failed = 1;
        return;
    }
    double t1 = tb_now();
    if (memcmp(c->out, c->in, (size_t)size) != 0) {
        fprintf(stderr, "tcpbench: pingpong to port %ld, round %ld: echo mismatch\n", c->port, i);
        c->failed = 1;
        return;
    }
    if (i >= 0)
        c->rtt[c->done++] = (t1 - t0) * 1e6;
}

static void pp_close(struct pp_conn *c)
{
    close(c->fd);
    free(c->out);
    free(c->in);
    free(c->rtt);
}

/* COUNT round trips on each of the NPORTS connections, CHUNK at a time on
 * each in turn (after a warm-up on each), so that every port sees the same
 * machine: a busy moment falls on all of them alike instead of on whichever
 * ran then. One "P50 P99" line per port, in order ("- -" for one that
 * failed). With one port and CHUNK = COUNT this is the plain ping-pong. */
static int tb_pingpong_mix(const char *host, const long *ports, int nports, long count, long size,
                           long chunk)
{
    struct pp_conn *c = calloc((size_t)nports, sizeof(*c));
    long warm = count / 10 < 200 ? count / 10 : 200;
    int failed = 0;

    if (c == NULL)
        tb_die("malloc");
    for (int k = 0; k < nports; k++) {
        pp_open(&c[k], host, ports[k], count, size);
        for (long i = -warm; i < 0 && !c[k].failed; i++)
            pp_round(&c[k], i, size);
    }
    for (long base = 0; base < count; base += chunk) {
        for (int k = 0; k < nports; k++) {
            /* The first round trip after a switch pays for the other
             * connections' turn (caches, wake-ups): not counted. */
            if (nports > 1 && !c[k].failed)
                pp_round(&c[k], -1, size);
            for (long i = base; i < base + chunk && i < count && !c[k].failed; i++)
                pp_round(&c[k], i, size);
        }
    }
    for (int k = 0; k < nports; k++) {
        if (c[k].failed) {
            printf("- -\n");
            failed = 1;
        } else {
            tb_print_percentiles(c[k].rtt, count, "\n");
        }
        pp_close(&c[k]);
    }
    free(c);
    return failed;
}

/* ------------------------------------------------------------------ UDP */

static int tb_udp_socket(void)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), big = 4 << 20;
    if (fd < 0)
        tb_die("socket");
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    return fd;
}

static int tb_udp_echo(long port, int sink)
{
    struct sockaddr_in sa = tb_addr("127.0.0.1", port);
    int fd = tb_udp_socket();
    static char buf[65536];
    socklen_t sl = sizeof sa;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        tb_die("bind");
    if (getsockname(fd, (struct sockaddr *)&sa, &sl) < 0)
        tb_die("getsockname");
    printf("port=%d\n", ntohs(sa.sin_port));
    fflush(stdout);
    while (!tb_stop) {
        struct sockaddr_in peer;
        socklen_t pl = sizeof peer;
        ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&peer, &pl);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            tb_die("recvfrom");
        }
        if (!sink)
            (void)sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&peer, pl);
    }
    return 0;
}

static int tb_udp_pingpong(const char *host, long port, long count, long size)
{
    struct sockaddr_in sa = tb_addr(host, port);
    int fd = tb_udp_socket();
    char *out = malloc((size_t)size), *in = malloc((size_t)size + 1);
    double *rtt = malloc(sizeof(double) * (size_t)count);
    long lost = 0, warm = count / 10 < 200 ? count / 10 : 200;
    if (out == NULL || in == NULL || rtt == NULL)
        tb_die("malloc");
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        tb_die("connect");
    for (long i = -warm; i < count; i++) {
        int tries = 0;
        double t0;
        /* The round number in front tells a late answer from this one's. */
        memset(out, 'u', (size_t)size);
        memcpy(out, &i, size >= (long)sizeof i ? sizeof i : (size_t)size);
        for (;;) {
            struct pollfd pfd = {.fd = fd, .events = POLLIN};
            t0 = tb_now();
            if (send(fd, out, (size_t)size, 0) != size) {
                fprintf(stderr, "tcpbench: udp-pingpong send: %s\n", strerror(errno));
                return 1;
            }
            int got = 0;
            while (poll(&pfd, 1, 200) > 0) {
                ssize_t n = recv(fd, in, (size_t)size + 1, 0);
                if (n == size && memcmp(in, out, (size_t)size) == 0) {
                    got = 1;
                    break;
                }
            }
            if (got)
                break;
            if (i >= 0)
                lost++;
            if (++tries == 50 || tb_stop) {
                fprintf(stderr, "tcpbench: udp-pingpong: no answer to round %ld\n", i);
                return 1;
            }
        }
        if (i >= 0)
            rtt[i] = (tb_now() - t0) * 1e6;
    }
    char tail[32];
    snprintf(tail, sizeof tail, " %ld\n", lost);
    tb_print_percentiles(rtt, count, tail);
    close(fd);
    free(out);
    free(in);
    free(rtt);
    return 0;
}

static int tb_udp_flood(const char *host, long port, long seconds, long size, long mbitps)
{
    struct sockaddr_in sa = tb_addr(host, port);
    int fd = tb_udp_socket();
    char *buf = calloc(1, (size_t)size);
    double start = tb_now(), end = start + (double)seconds;
    /* Datagrams per second at the rate asked for (0: flat out). */
    double pps = mbitps > 0 ? (double)mbitps * 1e6 / 8 / (double)size : 0;
    long sent = 0;
    if (buf == NULL)
        tb_die("malloc");
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        tb_die("connect");
    while (!tb_stop) {
        double now = tb_now();
        if (now >= end)
            break;
        if (pps > 0 && (double)sent >= (now - start) * pps) {
            struct timespec ts = {.tv_nsec = 100 * 1000};
            nanosleep(&ts, NULL);
            continue;
        }
        for (int i = 0; i < 16; i++)
            if (send(fd, buf, (size_t)size, 0) == size)
                sent++;
    }
    printf("%ld\n", sent);
    close(fd);
    free(buf);
    return 0;
}

/* ------------------------------------------------------------------ connrate */

enum { CR_CONNECTING, CR_WAIT_ECHO };

struct cr_slot {
    int fd;
    int state;
    double started;
};

static void cr_start(int ep, struct cr_slot *s, const struct sockaddr_in *sa, long *errors)
{
    for (int tries = 0; tries < 100; tries++) {
        s->fd = tb_connect_nb(sa);
        if (s->fd >= 0)
            break;
        (*errors)++;
        usleep(1000);
    }
    if (s->fd < 0)
        tb_die("connect");
    s->state = CR_CONNECTING;
    s->started = tb_now();
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = s};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev) < 0)
        tb_die("epoll_ctl");
}

static void cr_finish(int ep, struct cr_slot *s)
{
    (void)epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
    close(s->fd);
    s->fd = -1;
}

static int tb_connrate(const char *host, long port, long seconds, long parallel)
{
    struct sockaddr_in sa = tb_addr(host, port);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        tb_die("epoll_create1");
    struct cr_slot *slots = calloc((size_t)parallel, sizeof *slots);
    if (slots == NULL)
        tb_die("calloc");
    long ok = 0, errors = 0;
    double t0 = tb_now(), end = t0 + (double)seconds;
    for (long i = 0; i < parallel; i++)
        cr_start(ep, &slots[i], &sa, &errors);
    struct epoll_event evs[TB_MAX_EVENTS];
    double now = t0;
    while (now < end) {
        int n = epoll_wait(ep, evs, TB_MAX_EVENTS, 100);
        if (n < 0 && errno != EINTR)
            tb_die("epoll_wait");
        now = tb_now();
        for (int i = 0; i < n && now < end; i++) {
            struct cr_slot *s = evs[i].data.ptr;
            int failed = 0, done = 0;
            if (s->state == CR_CONNECTING) {
                if (tb_sock_error(s->fd) != 0) {
                    failed = 1;
                } else {
                    char b = 'x';
                    if (send(s->fd, &b, 1, MSG_NOSIGNAL) != 1) {
                        failed = 1;
                    } else {
                        s->state = CR_WAIT_ECHO;
                        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = s};
                        if (epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev) < 0)
                            tb_die("epoll_ctl");
                    }
                }
            } else {
                char b = 0;
                ssize_t r = recv(s->fd, &b, 1, 0);
                if (r == 1 && b == 'x')
                    done = 1;
                else if (!(r < 0 && (errno == EAGAIN || errno == EINTR)))
                    failed = 1;
            }
            if (done || failed) {
                cr_finish(ep, s);
                if (done)
                    ok++;
                else
                    errors++;
                cr_start(ep, s, &sa, &errors);
            }
        }
        /* A connection stuck for 5 s counts as an error and is replaced. */
        for (long i = 0; i < parallel; i++) {
            if (slots[i].fd >= 0 && now - slots[i].started > 5.0) {
                cr_finish(ep, &slots[i]);
                errors++;
                cr_start(ep, &slots[i], &sa, &errors);
            }
        }
    }
    double elapsed = tb_now() - t0;
    for (long i = 0; i < parallel; i++)
        if (slots[i].fd >= 0)
            cr_finish(ep, &slots[i]);
    printf("%.0f %ld %ld\n", (double)ok / elapsed, ok, errors);
    free(slots);
    close(ep);
    return 0;
}

/* ---------------------------------------------------------------------- hold */

enum { HC_IDLE, HC_CONNECTING, HC_WAIT_ECHO, HC_HELD, HC_FAILED };

struct hold_conn {
    int fd;
    int state;
    unsigned got; /* bytes of the echo received so far */
    char tag[8];  /* what this connection sends; must come back verbatim */
};

static void hold_tag(struct hold_conn *c, long idx, char round)
{
    snprintf(c->tag, sizeof c->tag, "%c%06ld", round, idx % 1000000);
    c->tag[7] = '\n';
    c->got = 0;
}

static void hold_fail(int ep, struct hold_conn *c)
{
    if (c->fd >= 0) {
        (void)epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->state = HC_FAILED;
}

/* Reads echo bytes; returns 1 when the whole tag came back, 0 to keep
 * waiting, -1 on mismatch, EOF or error. */
static int hold_read_echo(struct hold_conn *c)
{
    char buf[16];
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (n <= 0)
            return -1;
        if (c->got + (size_t)n > sizeof c->tag || memcmp(buf, c->tag + c->got, (size_t)n) != 0)
            return -1;
        c->got += (unsigned)n;
        if (c->got == sizeof c->tag)
            return 1;
    }
}

/* Sends the tag on an established connection and waits for its echo. */
static int hold_send_tag(int ep, struct hold_conn *c)
{
    if (send(c->fd, c->tag, sizeof c->tag, MSG_NOSIGNAL) != (ssize_t)sizeof c->tag)
        return -1;
    c->state = HC_WAIT_ECHO;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
    return epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static int tb_hold(const char *host, long port, long count, long max_inflight, long open_seconds)
{
    tb_raise_nofile();
    struct sockaddr_in sa = tb_addr(host, port);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        tb_die("epoll_create1");
    struct hold_conn *conns = calloc((size_t)count, sizeof *conns);
    if (conns == NULL)
        tb_die("calloc");
    for (long i = 0; i < count; i++) {
        conns[i].fd = -1;
        conns[i].state = HC_IDLE;
    }
    long next = 0, inflight = 0, held = 0, failed = 0;
    double t_start = tb_now(), deadline = t_start + (double)open_seconds;
    double t_first = 0, t_last_from = 0, t_done = 0; /* when 10% / 90% / 100% were held */
    long tenth = count / 10 > 0 ? count / 10 : 1;
    struct epoll_event evs[TB_MAX_EVENTS];
    /* Phase 1: open and echo-check every connection, max_inflight at a time. */
    while ((held + failed) < count && !tb_stop) {
        while (inflight < max_inflight && next < count) {
            struct hold_conn *c = &conns[next];
            hold_tag(c, next, 'a');
            next++;
            c->fd = tb_connect_nb(&sa);
            if (c->fd < 0) {
                fprintf(stderr, "tcpbench: hold connect #%ld: %s\n", next, strerror(errno));
                c->state = HC_FAILED;
                failed++;
                continue;
            }
            c->state = HC_CONNECTING;
            struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
            if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
                tb_die("epoll_ctl");
            inflight++;
        }
        if (tb_now() > deadline) {
            fprintf(stderr, "tcpbench: hold: open phase timed out\n");
            break;
        }
        int n = epoll_wait(ep, evs, TB_MAX_EVENTS, 200);
        if (n < 0 && errno != EINTR)
            tb_die("epoll_wait");
        for (int i = 0; i < n; i++) {
            struct hold_conn *c = evs[i].data.ptr;
            int rc = 0;
            if (c->state == HC_CONNECTING)
                rc = tb_sock_error(c->fd) != 0 ? -1 : hold_send_tag(ep, c);
            else if (c->state == HC_WAIT_ECHO)
                rc = hold_read_echo(c);
            else if (c->state == HC_HELD)
                continue; /* a drop while held is noticed in phase 3 */
            if (rc < 0) {
                hold_fail(ep, c);
                failed++;
                inflight--;
            } else if (rc == 1) {
                c->state = HC_HELD;
                struct epoll_event ev = {.events = 0, .data.ptr = c};
                (void)epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                held++;
                inflight--;
                if (held == tenth)
                    t_first = tb_now();
                if (held == count - tenth)
                    t_last_from = tb_now();
                if (held == count)
                    t_done = tb_now();
            }
        }
    }
    for (long i = 0; i < count; i++) {
        if (conns[i].state == HC_CONNECTING || conns[i].state == HC_WAIT_ECHO) {
            hold_fail(ep, &conns[i]);
            failed++;
        }
    }
    failed += count - next; /* never attempted (timeout or signal) */
    /* Opening rate of the first and the last tenth: a relay whose cost per new
     * connection grows with the connections already open shows it here. */
    double r_first = t_first > t_start ? (double)tenth / (t_first - t_start) : 0;
    double r_last = (t_done > t_last_from && t_last_from > 0) ? (double)tenth / (t_done - t_last_from) : 0;
    printf("held=%ld failed=%ld first10=%.0f last10=%.0f\n", held, failed, r_first, r_last);
    fflush(stdout);

    /* Phase 2: hold until stdin closes or a signal arrives. */
    while (!tb_stop) {
        struct pollfd pfd = {.fd = 0, .events = POLLIN};
        int n = poll(&pfd, 1, 1000);
        if (n < 0 && errno != EINTR)
            break;
        if (n > 0) {
            char b[256];
            ssize_t r = read(0, b, sizeof b);
            if (r <= 0)
                break;
        }
    }

    /* Phase 3: echo-check every held connection once more. */
    long alive = 0, dropped = 0, pending = 0;
    for (long i = 0; i < count; i++) {
        struct hold_conn *c = &conns[i];
        if (c->state != HC_HELD)
            continue;
        hold_tag(c, i, 'b');
        if (hold_send_tag(ep, c) < 0) {
            hold_fail(ep, c);
            dropped++;
        } else {
            pending++;
        }
    }
    deadline = tb_now() + 30.0;
    while (pending > 0 && tb_now() < deadline) {
        int n = epoll_wait(ep, evs, TB_MAX_EVENTS, 200);
        if (n < 0 && errno != EINTR)
            tb_die("epoll_wait");
        for (int i = 0; i < n; i++) {
            struct hold_conn *c = evs[i].data.ptr;
            if (c->state != HC_WAIT_ECHO)
                continue;
            int rc = hold_read_echo(c);
            if (rc < 0) {
                hold_fail(ep, c);
                dropped++;
                pending--;
            } else if (rc == 1) {
                c->state = HC_HELD;
                alive++;
                pending--;
            }
        }
    }
    dropped += pending;
    printf("alive=%ld dropped=%ld\n", alive, dropped);
    fflush(stdout);
    for (long i = 0; i < count; i++)
        if (conns[i].fd >= 0)
            close(conns[i].fd);
    free(conns);
    close(ep);
    return 0;
}

/* ------------------------------------------------------------ small helpers */

static int tb_freeport(long count)
{
    int *fds = calloc((size_t)count, sizeof *fds);
    if (fds == NULL)
        tb_die("calloc");
    for (long i = 0; i < count; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fds[i] < 0)
            tb_die("socket");
        struct sockaddr_in sa = tb_addr("127.0.0.1", 0);
        if (bind(fds[i], (struct sockaddr *)&sa, sizeof sa) < 0)
            tb_die("bind");
        socklen_t len = sizeof sa;
        if (getsockname(fds[i], (struct sockaddr *)&sa, &len) < 0)
            tb_die("getsockname");
        printf("%s%u", i ? " " : "", (unsigned)ntohs(sa.sin_port));
    }
    printf("\n");
    for (long i = 0; i < count; i++)
        close(fds[i]);
    free(fds);
    return 0;
}

static int tb_waitport(const char *host, long port, long seconds)
{
    struct sockaddr_in sa = tb_addr(host, port);
    double end = tb_now() + (double)seconds;
    while (tb_now() < end) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            tb_die("socket");
        int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
        close(fd);
        if (rc == 0)
            return 0;
        usleep(50000);
    }
    fprintf(stderr, "tcpbench: %s:%ld not accepting after %ld s\n", host, port, seconds);
    return 1;
}

/* Reads utime+stime (ticks), ppid and VmRSS of one process; -1 if it is gone. */
static int ps_read(long pid, long *ppid, unsigned long long *ticks, long *rss_kib)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* comm may hold spaces and parentheses */
    if (p == NULL)
        return -1;
    char state;
    unsigned long long ut = 0, st = 0;
    if (sscanf(p + 2, "%c %ld %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &state, ppid, &ut, &st) != 4)
        return -1;
    *ticks = ut + st;
    *rss_kib = 0;
    snprintf(path, sizeof path, "/proc/%ld/status", pid);
    f = fopen(path, "r");
    if (f == NULL)
        return -1;
    while (fgets(buf, sizeof buf, f) != NULL)
        if (strncmp(buf, "VmRSS:", 6) == 0)
            *rss_kib = strtol(buf + 6, NULL, 10);
    fclose(f);
    return 0;
}

/* Marks the given pids and all their descendants (a snapshot of /proc), then
 * either prints the pids (list != 0) or "CPU_SECONDS RSS_KIB" summed over them. */
static int tb_pstat(int argc, char **argv, int list)
{
    long roots[64];
    int nroots = 0;
    for (int i = 0; i < argc && nroots < 64; i++)
        roots[nroots++] = tb_num(argv[i], 1, LONG_MAX, "pid");
    size_t cap = 4096, np = 0;
    long *pids = malloc(cap * sizeof *pids), *ppids = malloc(cap * sizeof *ppids);
    if (pids == NULL || ppids == NULL)
        tb_die("malloc");
    DIR *d = opendir("/proc");
    if (d == NULL)
        tb_die("opendir /proc");
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        char *end = NULL;
        long pid = strtol(de->d_name, &end, 10);
        if (end == de->d_name || *end != '\0')
            continue;
        long ppid = 0, rss = 0;
        unsigned long long t = 0;
        if (ps_read(pid, &ppid, &t, &rss) < 0)
            continue;
        if (np == cap) {
            cap *= 2;
            long *np1 = realloc(pids, cap * sizeof *pids);
            if (np1 == NULL)
                tb_die("realloc");
            pids = np1;
            long *np2 = realloc(ppids, cap * sizeof *ppids);
            if (np2 == NULL)
                tb_die("realloc");
            ppids = np2;
        }
        pids[np] = pid;
        ppids[np] = ppid;
        np++;
    }
    closedir(d);
    char *in = calloc(np + 1, 1);
    if (in == NULL)
        tb_die("calloc");
    for (size_t i = 0; i < np; i++)
        for (int r = 0; r < nroots; r++)
            if (pids[i] == roots[r])
                in[i] = 1;
    for (int changed = 1; changed;) {
        changed = 0;
        for (size_t i = 0; i < np; i++) {
            if (in[i])
                continue;
            for (size_t j = 0; j < np; j++) {
                if (in[j] && pids[j] == ppids[i]) {
                    in[i] = 1;
                    changed = 1;
                    break;
                }
            }
        }
    }
    unsigned long long ticks = 0;
    long rss = 0;
    for (size_t i = 0; i < np; i++) {
        if (!in[i])
            continue;
        if (list) {
            printf("%ld\n", pids[i]);
            continue;
        }
        long ppid = 0, r = 0;
        unsigned long long t = 0;
        if (ps_read(pids[i], &ppid, &t, &r) == 0) {
            ticks += t;
            rss += r;
        }
    }
    if (!list)
        printf("%.2f %ld\n", (double)ticks / (double)sysconf(_SC_CLK_TCK), rss);
    free(in);
    free(pids);
    free(ppids);
    return 0;
}

static void tb_usage(void)
{
    fprintf(stderr,
            "usage: tcpbench echo-server PORT\n"
            "       tcpbench pingpong HOST PORT N [SIZE]\n"
            "       tcpbench pingpong-mix HOST N SIZE CHUNK PORT...\n"
            "       tcpbench connrate HOST PORT SECONDS PARALLEL\n"
            "       tcpbench hold HOST PORT N [INFLIGHT [SECONDS]]\n"
            "       tcpbench udp-echo PORT [sink]\n"
            "       tcpbench udp-pingpong HOST PORT N [SIZE]\n"
            "       tcpbench udp-flood HOST PORT SECONDS [SIZE [MBITPS]]\n"
            "       tcpbench freeport [COUNT]\n"
            "       tcpbench waitport HOST PORT SECONDS\n"
            "       tcpbench pstat PID...\n"
            "       tcpbench pids PID...\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        tb_usage();
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = tb_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    const char *mode = argv[1];
    if (strcmp(mode, "echo-server") == 0 && argc == 3)
        return tb_echo_server(tb_num(argv[2], 0, 65535, "port"));
    if (strcmp(mode, "pingpong") == 0 && (argc == 5 || argc == 6)) {
        long port = tb_num(argv[3], 1, 65535, "port"), count = tb_num(argv[4], 1, 10000000, "count");
        return tb_pingpong_mix(argv[2], &port, 1, count,
                               argc == 6 ? tb_num(argv[5], 1, 1 << 20, "size") : 64, count);
    }
    if (strcmp(mode, "pingpong-mix") == 0 && argc >= 7 && argc <= 6 + 16) {
        long ports[16], count = tb_num(argv[3], 1, 10000000, "count");
        for (int k = 6; k < argc; k++)
            ports[k - 6] = tb_num(argv[k], 1, 65535, "port");
        return tb_pingpong_mix(argv[2], ports, argc - 6, count, tb_num(argv[4], 1, 1 << 20, "size"),
                               tb_num(argv[5], 1, 10000000, "chunk"));
    }
    if (strcmp(mode, "connrate") == 0 && argc == 6)
        return tb_connrate(argv[2], tb_num(argv[3], 1, 65535, "port"),
                           tb_num(argv[4], 1, 3600, "seconds"), tb_num(argv[5], 1, 4096, "parallel"));
    if (strcmp(mode, "hold") == 0 && argc >= 5 && argc <= 7)
        return tb_hold(argv[2], tb_num(argv[3], 1, 65535, "port"), tb_num(argv[4], 1, 1000000, "count"),
                       argc >= 6 ? tb_num(argv[5], 1, 100000, "inflight") : 128,
                       argc >= 7 ? tb_num(argv[6], 1, 3600, "seconds") : 150);
    if (strcmp(mode, "udp-echo") == 0 && (argc == 3 || argc == 4))
        return tb_udp_echo(tb_num(argv[2], 0, 65535, "port"),
                           argc == 4 && strcmp(argv[3], "sink") == 0);
    if (strcmp(mode, "udp-pingpong") == 0 && (argc == 5 || argc == 6))
        return tb_udp_pingpong(argv[2], tb_num(argv[3], 1, 65535, "port"),
                               tb_num(argv[4], 1, 10000000, "count"),
                               argc == 6 ? tb_num(argv[5], 1, 65507, "size") : 64);
    if (strcmp(mode, "udp-flood") == 0 && argc >= 5 && argc <= 7)
        return tb_udp_flood(argv[2], tb_num(argv[3], 1, 65535, "port"),
                            tb_num(argv[4], 1, 3600, "seconds"),
                            argc >= 6 ? tb_num(argv[5], 1, 65507, "size") : 1400,
                            argc == 7 ? tb_num(argv[6], 0, 100000, "mbitps") : 0);
    if (strcmp(mode, "freeport") == 0 && argc <= 3)
        return tb_freeport(argc == 3 ? tb_num(argv[2], 1, 64, "count") : 1);
    if (strcmp(mode, "waitport") == 0 && argc == 5)
        return tb_waitport(argv[2], tb_num(argv[3], 1, 65535, "port"), tb_num(argv[4], 1, 3600, "seconds"));
    if (strcmp(mode, "pstat") == 0 && argc >= 3)
        return tb_pstat(argc - 2, argv + 2, 0);
    if (strcmp(mode, "pids") == 0 && argc >= 3)
        return tb_pstat(argc - 2, argv + 2, 1);
    tb_usage();
    return 2;
}

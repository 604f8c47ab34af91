/* ftp_data.c - FTP apps: the private side's control-connection pump and
 * expectations, the public side's data ports and checks (see ftp_data.h).
 *
 * Ownership:
 * - private: a struct ctl per control connection, owned by its pump thread;
 *   the list of them (fp.ctls) and everything in them that the reader or a
 *   BUILD_CONNECTION touches (expectations, the awaited answer) are under
 *   fp.lock. The pump's sockets and buffers are the pump's alone; an active
 *   expectation's listener is the pump's, its accepted socket moves to the
 *   data connection that takes it.
 * - public: one short-lived job thread per FTP_OPEN or FTP_CONNECT (the
 *   reader never writes to the tunnel); a passive job owns its listener and
 *   its data port until it hands the port to the data connection, whose
 *   end frees it. The port table is under pub.lock. */

#include "ftp_data.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "ftp.h"
#include "log.h"
#include "netio.h"
#include "packet.h"

#define OBUF_CAP (32 * 1024)           /* per direction of a control connection */
#define PUMP_READ 2048                 /* bytes read at a time */
/* A read is taken only with this much room on both sides: the line it may
 * complete, rewrites that grow (at most ~48 bytes per 17-byte PORT), and
 * refusals written back to the client. Each append checks again. */
#define PUMP_ROOM (PUMP_READ + FTP_LINE_MAX + 8192)
#define CTL_MAX_EXPECT 8               /* data connections waiting per control */
#define ANSWER_WAIT_MS 10000           /* private: for FTP_OPENED */
#define EXPECT_MS (FTP_DATA_WAIT_MS + 10000) /* private: an expectation lives this long */
#define ACTIVE_DIAL_MS 10000           /* public: dialling the client back */
#define MAX_JOBS 1024                  /* public: FTP_OPEN/FTP_CONNECT jobs at once */
#define MAX_PORTS 16384

/* ------------------------------------------------------------- helpers */

/* The IP of ss (IPv4-mapped IPv6 as IPv4) into out[16]; its length (4 or
 * 16), 0 for another family. */
static int sa_ip(const struct sockaddr_storage *ss, unsigned char out[16])
{
    if (ss->ss_family == AF_INET) {
        memcpy(out, &((const struct sockaddr_in *)ss)->sin_addr, 4);
        return 4;
    }
    if (ss->ss_family == AF_INET6) {
        const unsigned char *a = ((const struct sockaddr_in6 *)ss)->sin6_addr.s6_addr;
        static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(a, mapped, 12) == 0) {
            memcpy(out, a + 12, 4);
            return 4;
        }
        memcpy(out, a, 16);
        return 16;
    }
    return 0;
}

static int sa_same_ip(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    unsigned char x[16], y[16];
    int n = sa_ip(a, x);

    return n && n == sa_ip(b, y) && memcmp(x, y, (size_t)n) == 0;
}

static void sa_ip_str(const struct sockaddr_storage *ss, char *out, size_t cap)
{
    unsigned char ip[16];
    int n = sa_ip(ss, ip);

    if (!n || !inet_ntop(n == 4 ? AF_INET : AF_INET6, ip, out, (socklen_t)cap))
        snprintf(out, cap, "?");
}

/* An IP literal into ss (port 0). 0 or -1. */
static int ip_to_sa(const char *s, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    if (inet_pton(AF_INET, s, &((struct sockaddr_in *)ss)->sin_addr) == 1) {
        ss->ss_family = AF_INET;
        return 0;
    }
    if (inet_pton(AF_INET6, s, &((struct sockaddr_in6 *)ss)->sin6_addr) == 1) {
        ss->ss_family = AF_INET6;
        return 0;
    }
    return -1;
}

/* Listen on ip's address (its port ignored) at port (0: any). The fd or -1
 * with errno. */
static int listen_at(const struct sockaddr_storage *ip, int port, int backlog)
{
    struct sockaddr_storage ss = *ip;
    socklen_t len;
    int fd, one = 1, e;

    if (ss.ss_family == AF_INET) {
        ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)port);
        len = sizeof(struct sockaddr_in);
    } else if (ss.ss_family == AF_INET6) {
        ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)port);
        len = sizeof(struct sockaddr_in6);
    } else {
        errno = EAFNOSUPPORT;
        return -1;
    }
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, backlog) != 0) {
        e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static int sa_port(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)ss)->sin_port);
    if (ss->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    return 0;
}

int ftp_parse_ports(const char *s, int *lo, int *hi)
{
    char *end;
    long a, b;

    if (!s)
        return -1;
    errno = 0;
    a = strtol(s, &end, 10);
    if (errno || end == s || *end != '-')
        return -1;
    s = end + 1;
    b = strtol(s, &end, 10);
    if (errno || end == s || *end || a < 1024 || b > 65535 || a > b || b - a + 1 > MAX_PORTS)
        return -1;
    *lo = (int)a;
    *hi = (int)b;
    return 0;
}

/* ------------------------------------------------------- private side */

struct expect {
    uint32_t req;               /* 0: a free slot */
    int active;
    int port;                   /* passive: the server's data port; active: the client's */
    char chost[INET6_ADDRSTRLEN]; /* active: the client's address */
    int lfd;                    /* active: listening for the server (the pump's) */
    int afd;                    /* active: the server's data connection, once accepted */
    uint64_t deadline;
};

struct answer {
    int ok, code, port;
    char host[INET6_ADDRSTRLEN];
    char reason[128];
};

struct obuf {
    size_t off, len;            /* b[off..len) is still to be written */
    unsigned char b[OBUF_CAP];
};

struct ctl {
    struct ctl *next;           /* fp.ctls, under fp.lock */
    struct tunnel *t;           /* a reference */
    uint64_t id;
    int cfd;                    /* the relay's side (a socket pair) */
    int sfd;                    /* the FTP server */
    struct sockaddr_storage server, local; /* of sfd */
    char server_ip[INET6_ADDRSTRLEN];
    struct ftp_dir up, down;    /* commands, replies */
    struct obuf to_server, to_client;
    unsigned char rbuf[PUMP_READ];
    uint32_t next_req;
    int auth_pending;           /* AUTH sent, its answer not seen yet */
    /* under fp.lock: */
    struct expect exp[CTL_MAX_EXPECT];
    uint32_t wait_req;          /* the FTP_OPEN being answered, or 0 */
    int answered;
    struct answer ans;
};

static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;        /* an answer came (CLOCK_MONOTONIC) */
    struct ctl *ctls;
} fp = {.lock = PTHREAD_MUTEX_INITIALIZER};

static pthread_once_t fp_once = PTHREAD_ONCE_INIT;

static void fp_init(void)
{
    pthread_condattr_t ca;

    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&fp.cond, &ca);
    pthread_condattr_destroy(&ca);
}

/* Under fp.lock. */
static struct ctl *find_ctl_locked(struct tunnel *t, uint64_t id)
{
    for (struct ctl *x = fp.ctls; x; x = x->next)
        if (x->t == t && x->id == id)
            return x;
    return NULL;
}

/* Under fp.lock: free a slot, closing what it holds. */
static void expect_clear_locked(struct expect *e)
{
    if (e->lfd >= 0)
        close(e->lfd);
    if (e->afd >= 0)
        close(e->afd);
    memset(e, 0, sizeof(*e));
    e->lfd = e->afd = -1;
}

static struct expect *expect_slot_locked(struct ctl *x)
{
    for (int i = 0; i < CTL_MAX_EXPECT; i++)
        if (!x->exp[i].req)
            return &x->exp[i];
    return NULL;
}

static void ob_compact(struct obuf *o)
{
    if (o->off == o->len) {
        o->off = o->len = 0;
    } else if (o->off > 0) {
        memmove(o->b, o->b + o->off, o->len - o->off);
        o->len -= o->off;
        o->off = 0;
    }
}

static size_t ob_room(const struct obuf *o)
{
    return OBUF_CAP - o->len;
}

static int ob_put(struct obuf *o, const void *p, size_t n)
{
    ob_compact(o);
    if (ob_room(o) < n)
        return -1;
    memcpy(o->b + o->len, p, n);
    o->len += n;
    return 0;
}

/* Write what o holds to fd without blocking. 0, or -1 when fd failed. */
static int ob_flush(struct obuf *o, int fd)
{
    while (o->off < o->len) {
        ssize_t w = send(fd, o->b + o->off, o->len - o->off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
        }
        o->off += (size_t)w;
    }
    ob_compact(o);
    return 0;
}

/* Ask the public side (FTP_OPEN) and wait for its FTP_OPENED. 0 with *a
 * filled (a->ok says yes or no), -1 when no answer came. */
static int ask(struct ctl *x, uint32_t req, const char *mode, const char *host, int port,
               struct answer *a)
{
    json_t *h = host ? packet(OP_FTP_OPEN, "{s:I,s:I,s:s,s:i,s:s}", "conn", (json_int_t)x->id,
                              "req", (json_int_t)req, "mode", mode, "port", port, "host", host)
                     : packet(OP_FTP_OPEN, "{s:I,s:I,s:s,s:i}", "conn", (json_int_t)x->id,
                              "req", (json_int_t)req, "mode", mode, "port", port);
    uint64_t deadline = mono_ms() + ANSWER_WAIT_MS;
    int rc = -1;

    memset(a, 0, sizeof(*a));
    pthread_mutex_lock(&fp.lock);
    x->wait_req = req;
    x->answered = 0;
    pthread_mutex_unlock(&fp.lock);
    if (tunnel_send(x->t, h, NULL, 0) != 0) {
        snprintf(a->reason, sizeof(a->reason), "tunnel down");
        pthread_mutex_lock(&fp.lock);
        x->wait_req = 0;
        pthread_mutex_unlock(&fp.lock);
        return -1;
    }
    pthread_mutex_lock(&fp.lock);
    for (;;) {
        struct timespec ts;
        uint64_t now = mono_ms(), wait;
        if (x->answered) {
            *a = x->ans;
            rc = 0;
            break;
        }
        if (tunnel_is_dead(x->t) || now >= deadline) {
            snprintf(a->reason, sizeof(a->reason), "no answer from the public side");
            break;
        }
        wait = deadline - now < 250 ? deadline - now : 250;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += (long)wait * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&fp.cond, &fp.lock, &ts);
    }
    x->wait_req = 0;
    pthread_mutex_unlock(&fp.lock);
    return rc;
}

/* Write a reply line of ours to the client ("425 ...\r\n"). */
static int reply_client(struct ctl *x, int code, const char *text)
{
    char line[200];
    int n = snprintf(line, sizeof(line), "%d %s\r\n", code, text);

    if (n < 0 || (size_t)n >= sizeof(line))
        n = (int)sizeof(line) - 1;
    return ob_put(&x->to_client, line, (size_t)n);
}

/* A 227 or 229 from the server: get a public data port and rewrite it. */
static int on_pasv(struct ctl *x, const struct ftp_msg *m)
{
    struct ftp_dir *d = &x->down;
    struct expect *e;
    struct answer a;
    unsigned char out[FTP_LINE_MAX + 128], ip4[4];
    uint32_t req = ++x->next_req;
    int n = -1, cont = d->len >= 4 && d->line[3] == '-';

    if (req > PKT_FTP_REQ_MAX)
        req = x->next_req = 1;
    if (m->kind == FTP_227) {
        char said[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, m->addr, said, sizeof(said));
        if (strcmp(said, x->server_ip) != 0)
            log_debug("ev=ftp_pasv_address conn=%llu said=%s server=%s msg=\"the data "
                      "connection goes to the server's own address\"",
                      (unsigned long long)x->id, said, x->server_ip);
    }
    pthread_mutex_lock(&fp.lock);
    e = expect_slot_locked(x);
    if (e) {
        e->req = req;
        e->active = 0;
        e->port = m->port;
        e->deadline = mono_ms() + EXPECT_MS;
    }
    pthread_mutex_unlock(&fp.lock);
    if (!e) {
        snprintf(a.reason, sizeof(a.reason), "too many data connections waiting");
        goto refuse;
    }
    if (ask(x, req, "passive", NULL, m->port, &a) != 0 || !a.ok)
        goto refuse;
    if (m->kind == FTP_227) {
        if (inet_pton(AF_INET, a.host, ip4) != 1) {
            snprintf(a.reason, sizeof(a.reason), "no IPv4 address for a 227 reply: use EPSV");
            goto refuse;
        }
        n = ftp_rewrite(d->line, d->len, m, 4, ip4, a.port, out, sizeof(out));
    } else {
        n = ftp_rewrite(d->line, d->len, m, 0, NULL, a.port, out, sizeof(out));
    }
    if (n < 0) {
        snprintf(a.reason, sizeof(a.reason), "the reply could not be rewritten");
        goto refuse;
    }
    log_debug("ev=ftp_passive conn=%llu req=%u server_port=%d public=%s:%d", (unsigned long long)x->id,
              req, m->port, a.host, a.port);
    return ob_put(&x->to_client, out, (size_t)n);
refuse:
    pthread_mutex_lock(&fp.lock);
    if (e)
        expect_clear_locked(e);
    pthread_mutex_unlock(&fp.lock);
    {
        char esc[140];
        log_warn("ev=ftp_passive_failed conn=%llu reason=\"%s\"", (unsigned long long)x->id,
                 log_escape(a.reason, esc, sizeof(esc)));
    }
    if (cont) /* inside a multi-line reply: leave its shape alone */
        return ob_put(&x->to_client, d->line, d->len);
    return reply_client(x, 425, "Can't open data connection (through the tunnel).");
}

/* A PORT or EPRT from the client: may the public side dial that address?
 * Then listen for the server's data connection and send it our address. */
static int on_port(struct ctl *x, const struct ftp_msg *m)
{
    struct ftp_dir *d = &x->up;
    struct answer a;
    struct expect *e = NULL;
    struct sockaddr_storage ls;
    socklen_t sl = sizeof(ls);
    unsigned char out[FTP_LINE_MAX + 128], lip[16];
    char host[INET6_ADDRSTRLEN], esc[140];
    uint32_t req = ++x->next_req;
    int lfd = -1, n, lfam, lport;

    if (req > PKT_FTP_REQ_MAX)
        req = x->next_req = 1;
    if (!inet_ntop(m->family == 4 ? AF_INET : AF_INET6, m->addr, host, sizeof(host)))
        return reply_client(x, 501, "Bad address.");
    if (ask(x, req, "active", host, m->port, &a) != 0) {
        log_warn("ev=ftp_active_failed conn=%llu reason=\"%s\"", (unsigned long long)x->id,
                 log_escape(a.reason, esc, sizeof(esc)));
        return reply_client(x, 425, "Can't open data connection (through the tunnel).");
    }
    if (!a.ok) {
        log_info("ev=ftp_port_refused conn=%llu address=%s port=%d reason=\"%s\"",
                 (unsigned long long)x->id, host, m->port, log_escape(a.reason, esc, sizeof(esc)));
        return reply_client(x, a.code ? a.code : 500, a.reason[0] ? a.reason : "PORT refused.");
    }
    lfd = listen_at(&x->local, 0, 1);
    if (lfd < 0 || getsockname(lfd, (struct sockaddr *)&ls, &sl) != 0)
        goto fail;
    lport = sa_port(&ls);
    lfam = sa_ip(&x->local, lip) == 4 ? 4 : 6;
    if (m->kind == FTP_PORT && lfam == 6) {
        char text[INET6_ADDRSTRLEN];
        inet_ntop(AF_INET6, lip, text, sizeof(text));
        n = snprintf((char *)out, sizeof(out), "EPRT |2|%s|%d|\r\n", text, lport);
    } else {
        n = ftp_rewrite(d->line, d->len, m, lfam, lip, lport, out, sizeof(out));
    }
    if (n < 0 || (size_t)n >= sizeof(out))
        goto fail;
    pthread_mutex_lock(&fp.lock);
    e = expect_slot_locked(x);
    if (e) {
        e->req = req;
        e->active = 1;
        e->port = m->port;
        snprintf(e->chost, sizeof(e->chost), "%s", host);
        e->lfd = lfd;
        e->afd = -1;
        e->deadline = mono_ms() + EXPECT_MS;
        lfd = -1;
    }
    pthread_mutex_unlock(&fp.lock);
    if (!e)
        goto fail;
    log_debug("ev=ftp_active conn=%llu req=%u client=%s:%d listen_port=%d",
              (unsigned long long)x->id, req, host, m->port, lport);
    return ob_put(&x->to_server, out, (size_t)n);
fail:
    if (lfd >= 0)
        close(lfd);
    log_warn("ev=ftp_active_failed conn=%llu reason=\"cannot listen for the server\"",
             (unsigned long long)x->id);
    return reply_client(x, 425, "Can't open data connection (through the tunnel).");
}

/* The server answered AUTH with 234: the control channel turns to TLS. */
static void go_tls(struct ctl *x)
{
    ftp_set_passthru(&x->up, x->to_server.b, &x->to_server.len);
    ftp_set_passthru(&x->down, x->to_client.b, &x->to_client.len);
    log_info("ev=ftp_tls conn=%llu msg=\"AUTH TLS: the control connection is encrypted from "
             "now on and is relayed unchanged; passive replies cannot be rewritten (see FTPS "
             "in docs/OPERATIONS.md)\"", (unsigned long long)x->id);
    tunnel_send(x->t, packet(OP_FTP_TLS, "{s:I}", "conn", (json_int_t)x->id), NULL, 0);
}

/* One message the rewriter stopped at, in direction up (commands) or not. */
static int on_msg(struct ctl *x, int up, const struct ftp_msg *m)
{
    struct ftp_dir *d = up ? &x->up : &x->down;
    struct obuf *o = up ? &x->to_server : &x->to_client;
    int rc = 0;

    switch (m->kind) {
    case FTP_PORT:
    case FTP_EPRT:
        rc = on_port(x, m);
        break;
    case FTP_227:
    case FTP_229:
        rc = on_pasv(x, m);
        break;
    case FTP_BAD:
        if (up) {
            /* Never pass on a PORT we could not read: the server's parser
             * may read it otherwise (and dial somewhere we did not check). */
            log_warn("ev=ftp_bad_port conn=%llu msg=\"a PORT/EPRT the tunnel cannot read: "
                     "refused\"", (unsigned long long)x->id);
            rc = reply_client(x, 501, "Syntax error in parameters (the tunnel could not read them).");
        } else {
            log_warn("ev=ftp_bad_reply conn=%llu code=%d msg=\"a %d reply the tunnel cannot "
                     "read: passed on unchanged\"", (unsigned long long)x->id, m->code, m->code);
            rc = ob_put(o, d->line, d->len);
        }
        break;
    case FTP_AUTH:
        x->auth_pending = 1;
        rc = ob_put(o, d->line, d->len);
        break;
    case FTP_REPLY:
        rc = ob_put(o, d->line, d->len);
        if (rc == 0 && x->auth_pending && m->code >= 200) {
            x->auth_pending = 0;
            if (m->code == 234) {
                ftp_line_done(d);
                go_tls(x);
                return 0;
            }
        }
        break;
    case FTP_LONG:
        /* Its start is already in o, the rest follows unchanged. A PORT
         * that long is not one anybody means: end the connection. */
        if (up) {
            if (ftp_is_port_line(o->b + o->len - FTP_LINE_MAX, FTP_LINE_MAX)) {
                log_warn("ev=ftp_bad_port conn=%llu msg=\"over-long PORT/EPRT: connection "
                         "closed\"", (unsigned long long)x->id);
                return -1;
            }
        }
        log_info("ev=ftp_long_line conn=%llu dir=%s msg=\"a line over %d bytes: passed on "
                 "unchanged\"", (unsigned long long)x->id, up ? "command" : "reply",
                 FTP_LINE_MAX);
        return 0;
    default:
        rc = ob_put(o, d->line, d->len);
        break;
    }
    ftp_line_done(d);
    if (rc != 0)
        log_warn("ev=ftp_overflow conn=%llu msg=\"too much waiting for a slow peer\"",
                 (unsigned long long)x->id);
    return rc;
}

static int pump_feed(struct ctl *x, int up, const unsigned char *in, size_t n)
{
    struct ftp_dir *d = up ? &x->up : &x->down;
    struct obuf *o = up ? &x->to_server : &x->to_client;

    while (n > 0) {
        struct ftp_msg m;
        size_t used;
        ob_compact(o);
        if (ob_room(o) < n + FTP_LINE_MAX)
            return -1;
        used = ftp_feed(d, in, n, o->b, &o->len, &m);
        in += used;
        n -= used;
        if (m.kind != FTP_OTHER && on_msg(x, up, &m) != 0)
            return -1;
    }
    return 0;
}

/* The server connected to an active listener: check it, keep the socket for
 * the data connection and tell the public side to dial the client. */
static void accept_active(struct ctl *x, int slot)
{
    struct sockaddr_storage peer;
    socklen_t pl = sizeof(peer);
    struct expect *e = &x->exp[slot];
    char who[INET6_ADDRSTRLEN], chost[INET6_ADDRSTRLEN];
    uint32_t req;
    int port, fd = accept4(e->lfd, (struct sockaddr *)&peer, &pl, SOCK_CLOEXEC);

    if (fd < 0)
        return;
    if (!sa_same_ip(&peer, &x->server)) {
        sa_ip_str(&peer, who, sizeof(who));
        log_warn("ev=ftp_data_refused conn=%llu from=%s expected=%s msg=\"not the FTP server\"",
                 (unsigned long long)x->id, who, x->server_ip);
        close(fd);
        return;
    }
    pthread_mutex_lock(&fp.lock);
    close(e->lfd);
    e->lfd = -1;
    e->afd = fd;
    e->deadline = mono_ms() + EXPECT_MS;
    req = e->req;
    port = e->port;
    snprintf(chost, sizeof(chost), "%s", e->chost);
    pthread_mutex_unlock(&fp.lock);
    tunnel_send(x->t, packet(OP_FTP_CONNECT, "{s:I,s:I,s:s,s:i}", "conn", (json_int_t)x->id,
                             "req", (json_int_t)req, "host", chost, "port", port),
                NULL, 0);
}

static void ctl_free(struct ctl *x)
{
    pthread_mutex_lock(&fp.lock);
    for (struct ctl **pp = &fp.ctls; *pp; pp = &(*pp)->next) {
        if (*pp == x) {
            *pp = x->next;
            break;
        }
    }
    for (int i = 0; i < CTL_MAX_EXPECT; i++)
        expect_clear_locked(&x->exp[i]);
    pthread_mutex_unlock(&fp.lock);
    if (x->cfd >= 0)
        close(x->cfd);
    if (x->sfd >= 0)
        close(x->sfd);
    tunnel_unref(x->t);
    free(x);
}

/* Reads the side fd into the rewriter: 1 data, 0 end of stream, -1 error,
 * 2 nothing now. */
static int pump_read(struct ctl *x, int up)
{
    ssize_t n = recv(up ? x->cfd : x->sfd, x->rbuf, sizeof(x->rbuf), MSG_DONTWAIT);

    if (n > 0)
        return pump_feed(x, up, x->rbuf, (size_t)n) == 0 ? 1 : -1;
    if (n == 0)
        return 0;
    return errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK ? 2 : -1;
}

static void *pump_main(void *arg)
{
    struct ctl *x = arg;
    int c_eof = 0, s_eof = 0, c_shut = 0, s_shut = 0, failed = 0;

    pthread_setname_np(pthread_self(), "ftp-control");
    while (!(c_shut && s_shut)) {
        struct pollfd pf[2 + CTL_MAX_EXPECT];
        int slot[CTL_MAX_EXPECT], np = 2, r;
        uint64_t now;

        ob_compact(&x->to_server);
        ob_compact(&x->to_client);
        pf[0].fd = x->cfd;
        pf[0].events = (!c_eof && ob_room(&x->to_server) >= PUMP_ROOM &&
                                ob_room(&x->to_client) >= PUMP_ROOM
                            ? POLLIN
                            : 0) |
                       (x->to_client.len ? POLLOUT : 0);
        pf[1].fd = x->sfd;
        pf[1].events = (!s_eof && ob_room(&x->to_client) >= PUMP_ROOM &&
                                ob_room(&x->to_server) >= PUMP_ROOM
                            ? POLLIN
                            : 0) |
                       (x->to_server.len ? POLLOUT : 0);
        now = mono_ms();
        pthread_mutex_lock(&fp.lock);
        for (int i = 0; i < CTL_MAX_EXPECT; i++) {
            struct expect *e = &x->exp[i];
            if (e->req && now >= e->deadline) {
                log_debug("ev=ftp_expect_expired conn=%llu req=%u", (unsigned long long)x->id,
                          e->req);
                expect_clear_locked(e);
            } else if (e->req && e->lfd >= 0) {
                slot[np - 2] = i;
                pf[np].fd = e->lfd;
                pf[np].events = POLLIN;
                np++;
            }
        }
        pthread_mutex_unlock(&fp.lock);
        for (int i = 0; i < np; i++)
            pf[i].revents = 0;
        r = poll(pf, (nfds_t)np, 1000);
        if (tunnel_is_dead(x->t))
            break;
        if (r < 0 && errno != EINTR) {
            failed = 1;
            break;
        }
        if (r <= 0)
            continue;
        for (int i = 2; i < np; i++)
            if (pf[i].revents & POLLIN)
                accept_active(x, slot[i - 2]);
        if ((pf[0].revents & (POLLERR)) || (pf[1].revents & POLLERR)) {
            failed = 1;
            break;
        }
        if (!c_eof && (pf[0].events & POLLIN) && (pf[0].revents & (POLLIN | POLLHUP))) {
            r = pump_read(x, 1);
            if (r < 0) {
                failed = 1;
                break;
            }
            if (r == 0) {
                c_eof = 1;
                ftp_set_passthru(&x->up, x->to_server.b, &x->to_server.len);
            }
        }
        if (!s_eof && (pf[1].events & POLLIN) && (pf[1].revents & (POLLIN | POLLHUP))) {
            r = pump_read(x, 0);
            if (r < 0) {
                failed = 1;
                break;
            }
            if (r == 0) {
                s_eof = 1;
                ftp_set_passthru(&x->down, x->to_client.b, &x->to_client.len);
            }
        }
        if (ob_flush(&x->to_server, x->sfd) != 0 || ob_flush(&x->to_client, x->cfd) != 0) {
            failed = 1;
            break;
        }
        if (c_eof && !s_shut && x->to_server.len == 0) {
            shutdown(x->sfd, SHUT_WR);
            s_shut = 1;
        }
        if (s_eof && !c_shut && x->to_client.len == 0) {
            shutdown(x->cfd, SHUT_WR);
            c_shut = 1;
        }
        /* A side that is shut both ways has nothing more to say. */
        if (c_eof && s_eof && x->to_server.len == 0 && x->to_client.len == 0)
            break;
    }
    if (failed) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        (void)setsockopt(x->sfd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    log_debug("ev=ftp_control_closed conn=%llu failed=%d", (unsigned long long)x->id, failed);
    ctl_free(x);
    return NULL;
}

/* What a control connection's dial gets (ownership passes to it). */
struct control_ctx {
    struct tunnel *t;           /* a reference */
    uint64_t id;
    conn_dial_fn dial;
    void *arg;
};

/* The dial of a control connection: dial the FTP server, put a pump between
 * it and the relay, give the relay its end of the pair. */
static int control_dial(const char *host, int port, int timeout_ms, char *err, size_t errlen,
                        void *arg)
{
    struct control_ctx *cx = arg;
    struct ctl *x = NULL;
    socklen_t sl;
    int sv[2] = {-1, -1}, sfd, rc;

    pthread_once(&fp_once, fp_init);
    sfd = cx->dial(host, port, timeout_ms, err, errlen, cx->arg);
    if (sfd < 0)
        goto fail;
    x = calloc(1, sizeof(*x));
    if (!x || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        snprintf(err, errlen, "out of memory or descriptors");
        goto fail;
    }
    x->t = cx->t;
    x->id = cx->id;
    x->cfd = sv[1];
    x->sfd = sfd;
    x->up.reply = 0;
    x->down.reply = 1;
    for (int i = 0; i < CTL_MAX_EXPECT; i++)
        x->exp[i].lfd = x->exp[i].afd = -1;
    sl = sizeof(x->server);
    if (getpeername(sfd, (struct sockaddr *)&x->server, &sl) != 0)
        memset(&x->server, 0, sizeof(x->server));
    sl = sizeof(x->local);
    if (getsockname(sfd, (struct sockaddr *)&x->local, &sl) != 0)
        memset(&x->local, 0, sizeof(x->local));
    sa_ip_str(&x->server, x->server_ip, sizeof(x->server_ip));
    net_set_nonblock(sfd, 1);
    net_set_nonblock(sv[1], 1);
    pthread_mutex_lock(&fp.lock);
    x->next = fp.ctls;
    fp.ctls = x;
    pthread_mutex_unlock(&fp.lock);
    rc = thread_spawn(pump_main, x);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start a thread: %s", strerror(rc));
        sv[1] = -1;
        sfd = -1;
        ctl_free(x); /* closes both, drops the tunnel reference */
        cx->t = NULL;
        x = NULL;
        goto fail;
    }
    free(cx);
    return sv[0];
fail:
    if (x) {
        free(x);
    }
    if (sv[0] >= 0)
        close(sv[0]);
    if (sv[1] >= 0)
        close(sv[1]);
    if (sfd >= 0)
        close(sfd);
    if (cx->t)
        tunnel_unref(cx->t);
    free(cx);
    return -1;
}

/* What a data connection's dial gets: the server's address and port
 * (passive), or the server's connection already accepted (active). */
struct data_ctx {
    int afd;
    char host[INET6_ADDRSTRLEN];
    int port;
};

static int data_dial(const char *host, int port, int timeout_ms, char *err, size_t errlen,
                     void *arg)
{
    struct data_ctx *dx = arg;
    int fd = dx->afd;

    (void)host;
    (void)port;
    if (fd < 0)
        fd = net_dial(dx->host, dx->port, timeout_ms, err, errlen);
    else
        net_set_nonblock(fd, 0);
    free(dx);
    return fd;
}

int ftp_private_build(struct tunnel *t, struct pkt *p, conn_dial_fn dial, void *arg)
{
    const char *kind = json_string_value(json_object_get(p->json, "ftp"));
    const char *host = json_string_value(json_object_get(p->json, "target_host"));
    int port = (int)json_integer_value(json_object_get(p->json, "target_port"));
    struct data_ctx *dx = NULL;
    struct ctl *x;
    uint64_t ctl_id;
    uint32_t req;
    int rc;

    pthread_once(&fp_once, fp_init);
    if (strcmp(kind, "control") == 0) {
        struct control_ctx *cx = malloc(sizeof(*cx));
        if (!cx) {
            conn_refuse(t, p->conn, "out of memory");
            return -1;
        }
        tunnel_ref(t);
        cx->t = t;
        cx->id = p->conn;
        cx->dial = dial;
        cx->arg = arg;
        rc = conn_start_private(t, p->conn, host, port, control_dial, cx);
        if (rc != 0) {
            tunnel_unref(t);
            free(cx);
        }
        return rc;
    }
    ctl_id = (uint64_t)json_integer_value(json_object_get(p->json, "ftp_ctl"));
    req = (uint32_t)json_integer_value(json_object_get(p->json, "ftp_req"));
    dx = calloc(1, sizeof(*dx));
    pthread_mutex_lock(&fp.lock);
    x = find_ctl_locked(t, ctl_id);
    for (int i = 0; dx && x && i < CTL_MAX_EXPECT; i++) {
        struct expect *e = &x->exp[i];
        if (e->req != req || (e->active && e->afd < 0))
            continue;
        dx->afd = e->active ? e->afd : -1;
        e->afd = -1;
        snprintf(dx->host, sizeof(dx->host), "%s", x->server_ip);
        dx->port = e->active ? sa_port(&x->server) : e->port;
        expect_clear_locked(e);
        req = 0;
        break;
    }
    pthread_mutex_unlock(&fp.lock);
    if (!dx || req != 0) {
        log_warn("ev=ftp_data_unexpected conn=%llu ctl=%llu req=%u msg=\"no such data "
                 "connection is expected: refused\"", (unsigned long long)p->conn,
                 (unsigned long long)ctl_id, req);
        free(dx);
        conn_refuse(t, p->conn, "no such FTP data connection expected");
        return -1;
    }
    {
        char hostcopy[INET6_ADDRSTRLEN];
        int afd = dx->afd, dport = dx->port;
        snprintf(hostcopy, sizeof(hostcopy), "%s", dx->host);
        rc = conn_start_private(t, p->conn, hostcopy, dport, data_dial, dx);
        if (rc != 0) {
            if (afd >= 0)
                close(afd);
            free(dx);
        }
    }
    return rc;
}

/* -------------------------------------------------------- public side */

static struct {
    pthread_mutex_t lock;
    int lo, hi;                 /* 0: not set up */
    unsigned char *used;        /* [hi - lo + 1] */
    unsigned char (*owner)[16]; /* [hi - lo + 1]: the client address holding the port */
    unsigned cursor;
    char public_addr[INET6_ADDRSTRLEN];
    _Atomic int jobs;
} pub = {.lock = PTHREAD_MUTEX_INITIALIZER};

int ftp_public_init(int lo, int hi, const char *public_address, char *err, size_t errlen)
{
    unsigned char buf[16];
    unsigned r = 0;

    if (lo < 1024 || hi > 65535 || lo > hi || hi - lo + 1 > MAX_PORTS) {
        snprintf(err, errlen, "--ftp-ports must be LOW-HIGH within 1024-65535, at most %d ports",
                 MAX_PORTS);
        return -1;
    }
    if (public_address && *public_address && inet_pton(AF_INET, public_address, buf) != 1) {
        snprintf(err, errlen, "--public-address '%s' is not an IPv4 address", public_address);
        return -1;
    }
    pthread_mutex_lock(&pub.lock);
    free(pub.used);
    free(pub.owner);
    pub.used = calloc((size_t)(hi - lo + 1), 1);
    pub.owner = calloc((size_t)(hi - lo + 1), sizeof(*pub.owner));
    if (!pub.owner) {
        free(pub.used);
        pub.used = NULL;
    }
    pub.lo = pub.used ? lo : 0;
    pub.hi = hi;
    if (getrandom(&r, sizeof(r), 0) != (ssize_t)sizeof(r))
        r = 0;
    pub.cursor = r % (unsigned)(hi - lo + 1);
    snprintf(pub.public_addr, sizeof(pub.public_addr), "%s", public_address ? public_address : "");
    pthread_mutex_unlock(&pub.lock);
    if (!pub.used) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

int ftp_public_port_in_range(int port)
{
    int in;

    pthread_mutex_lock(&pub.lock);
    in = pub.lo && port >= pub.lo && port <= pub.hi;
    pthread_mutex_unlock(&pub.lock);
    return in;
}

/* The most data ports one client address may hold at once: a quarter of
 * the range (at least all of a range of up to 16), so that one client
 * asking PASV in a loop cannot take the ports of everybody else. */
static int per_client_max(int n)
{
    return n / 4 > 16 ? n / 4 : n < 16 ? n : 16;
}

/* Take a free data port and listen on it at ip for client. The port (its
 * listener in *lfd); 0 when none is free, -1 when client holds its share. */
static int port_take(const struct sockaddr_storage *ip, const struct sockaddr_storage *client,
                     int *lfd)
{
    unsigned char key[16] = {0};
    unsigned start = 0;
    int n, held = 0;

    int random_start;

    (void)sa_ip(client, key);
    /* From a random place in the range: the next port is not guessable. */
    random_start = getrandom(&start, sizeof(start), 0) == (ssize_t)sizeof(start);
    pthread_mutex_lock(&pub.lock);
    if (!random_start)
        start = pub.cursor;
    n = pub.lo ? pub.hi - pub.lo + 1 : 0;
    for (int i = 0; i < n; i++)
        held += pub.used[i] && memcmp(pub.owner[i], key, sizeof(key)) == 0;
    pthread_mutex_unlock(&pub.lock);
    if (n && held >= per_client_max(n))
        return -1;
    for (int k = 0; k < n; k++) {
        int port = 0, fd;
        pthread_mutex_lock(&pub.lock);
        for (; k < n; k++) {
            unsigned i = (start + (unsigned)k) % (unsigned)n;
            if (!pub.used[i]) {
                pub.used[i] = 1;
                memcpy(pub.owner[i], key, sizeof(key));
                port = pub.lo + (int)i;
                break;
            }
        }
        pthread_mutex_unlock(&pub.lock);
        if (!port)
            return 0;
        fd = listen_at(ip, port, 4);
        if (fd >= 0) {
            pthread_mutex_lock(&pub.lock);
            pub.cursor = (unsigned)(port - pub.lo + 1) % (unsigned)n;
            pthread_mutex_unlock(&pub.lock);
            *lfd = fd;
            return port;
        }
        pthread_mutex_lock(&pub.lock); /* taken by another program: try the next */
        pub.used[port - pub.lo] = 0;
        pthread_mutex_unlock(&pub.lock);
    }
    return 0;
}

static void port_release(int port)
{
    pthread_mutex_lock(&pub.lock);
    if (pub.lo && port >= pub.lo && port <= pub.hi)
        pub.used[port - pub.lo] = 0;
    pthread_mutex_unlock(&pub.lock);
}

static void port_release_cb(void *arg)
{
    port_release((int)(intptr_t)arg);
}

struct job {
    struct tunnel *t;           /* a reference */
    int op;
    int active;
    uint64_t ctl;
    uint32_t req;
    char host[INET6_ADDRSTRLEN];
    int port;
};

static void answer(struct job *j, int ok, int code, const char *reason, const char *host,
                   int port)
{
    json_t *h = packet(OP_FTP_OPENED, "{s:I,s:I,s:b}", "conn", (json_int_t)j->ctl, "req",
                       (json_int_t)j->req, "ok", ok);

    if (h && ok && host)
        json_object_set_new(h, "host", json_string(host));
    if (h && ok && port)
        json_object_set_new(h, "port", json_integer(port));
    if (h && !ok) {
        json_object_set_new(h, "code", json_integer(code));
        json_object_set_new(h, "reason", json_string(reason));
    }
    tunnel_send(j->t, h, NULL, 0);
}

/* Whether the public side may dial host:port for control connection ci
 * (RFC 2577: only the control connection's own client, no privileged port). */
static const char *check_client(const struct conn_info *ci, const char *host, int port)
{
    struct sockaddr_storage ss;

    if (ip_to_sa(host, &ss) != 0 || !sa_same_ip(&ss, &ci->peer))
        return "the address must be your own (FTP bounce, RFC 2577)";
    if (port < 1024)
        return "no data connections to privileged ports (RFC 2577)";
    return NULL;
}

static void job_active_check(struct job *j, struct conn_info *ci)
{
    const char *why = check_client(ci, j->host, j->port);
    char client[INET6_ADDRSTRLEN];

    if (!why) {
        answer(j, 1, 0, NULL, NULL, 0);
        return;
    }
    sa_ip_str(&ci->peer, client, sizeof(client));
    if (ci->stats)
        ci->stats->ftp_port_refused++;
    log_warn("ev=ftp_bounce_refused app=%s client=%s named=%s:%d reason=\"%s\"", ci->app, client,
             j->host, j->port, why);
    answer(j, 0, 500, why, NULL, 0);
}

static void job_active_dial(struct job *j, struct conn_info *ci)
{
    struct conn_opts o = {.ftp = CONN_FTP_DATA, .ftp_ctl = j->ctl, .ftp_req = j->req};
    const char *why = check_client(ci, j->host, j->port);
    char err[128], client[INET6_ADDRSTRLEN];
    int fd;

    sa_ip_str(&ci->peer, client, sizeof(client));
    if (why) {
        if (ci->stats)
            ci->stats->ftp_port_refused++;
        log_warn("ev=ftp_bounce_refused app=%s client=%s named=%s:%d reason=\"%s\"", ci->app,
                 client, j->host, j->port, why);
        return;
    }
    fd = net_dial(j->host, j->port, ACTIVE_DIAL_MS, err, sizeof(err));
    if (fd < 0) {
        log_warn("ev=ftp_active_dial_failed app=%s client=%s:%d err=\"%s\"", ci->app, j->host,
                 j->port, err);
        return;
    }
    conn_start_public_ex(j->t, fd, ci->app, ci->host, j->port, ci->stats ? ci->stats->ftp_data : NULL,
                         &o);
}

/* Passive: a data port, the answer, then one connection from the client. */
static void job_passive(struct job *j, struct conn_info *ci)
{
    struct conn_opts o = {.ftp = CONN_FTP_DATA, .ftp_ctl = j->ctl, .ftp_req = j->req};
    char host[INET6_ADDRSTRLEN], client[INET6_ADDRSTRLEN];
    uint64_t deadline, next_check;
    int lfd = -1, port = port_take(&ci->local, &ci->peer, &lfd);

    sa_ip_str(&ci->peer, client, sizeof(client));
    if (port <= 0) {
        if (ci->stats)
            ci->stats->ftp_no_port++;
        log_warn("ev=ftp_no_data_port app=%s client=%s msg=\"%s\"", ci->app, client,
                 port ? "this client address holds its share of --ftp-ports already"
                      : "every port of --ftp-ports is taken");
        answer(j, 0, 425, "no free data port on the public side", NULL, 0);
        return;
    }
    pthread_mutex_lock(&pub.lock);
    snprintf(host, sizeof(host), "%s", pub.public_addr);
    pthread_mutex_unlock(&pub.lock);
    if (!host[0])
        sa_ip_str(&ci->local, host, sizeof(host));
    answer(j, 1, 0, NULL, host, port);
    deadline = mono_ms() + FTP_DATA_WAIT_MS;
    next_check = mono_ms() + 1000;
    while (!tunnel_is_dead(j->t)) {
        struct pollfd pf = {.fd = lfd, .events = POLLIN};
        struct sockaddr_storage peer;
        socklen_t pl = sizeof(peer);
        uint64_t now = mono_ms();
        int fd;
        if (now >= deadline) {
            log_debug("ev=ftp_data_port_unused app=%s port=%d", ci->app, port);
            break;
        }
        if (now >= next_check) {
            struct conn_info still;
            if (tunnel_conn_info(j->t, j->ctl, &still) != 0)
                break; /* the control connection ended */
            app_stats_unref(still.stats);
            next_check = now + 1000;
        }
        if (poll(&pf, 1, 250) <= 0)
            continue;
        fd = accept4(lfd, (struct sockaddr *)&peer, &pl, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        if (!sa_same_ip(&peer, &ci->peer)) {
            char who[INET6_ADDRSTRLEN];
            sa_ip_str(&peer, who, sizeof(who));
            if (ci->stats)
                ci->stats->ftp_data_refused++;
            log_warn("ev=ftp_data_refused app=%s port=%d from=%s expected=%s msg=\"data "
                     "connection from another address than its control connection\"",
                     ci->app, port, who, client);
            close(fd);
            continue;
        }
        close(lfd);
        lfd = -1;
        net_set_nonblock(fd, 0);
        o.on_end = port_release_cb;
        o.end_arg = (void *)(intptr_t)port;
        port = 0; /* the data connection's now: freed when it ends */
        conn_start_public_ex(j->t, fd, ci->app, ci->host, j->port,
                             ci->stats ? ci->stats->ftp_data : NULL, &o);
        break;
    }
    if (lfd >= 0)
        close(lfd);
    if (port)
        port_release(port);
}

static void *job_main(void *arg)
{
    struct job *j = arg;
    struct conn_info ci;

    pthread_setname_np(pthread_self(), "ftp-data");
    if (tunnel_conn_info(j->t, j->ctl, &ci) != 0 || ci.ftp != CONN_FTP_CONTROL) {
        if (j->op == OP_FTP_OPEN)
            answer(j, 0, 425, "the control connection is gone", NULL, 0);
        goto out;
    }
    if (j->op == OP_FTP_CONNECT)
        job_active_dial(j, &ci);
    else if (j->active)
        job_active_check(j, &ci);
    else
        job_passive(j, &ci);
out:
    app_stats_unref(ci.stats);
    tunnel_unref(j->t);
    free(j);
    pub.jobs--;
    return NULL;
}

static int dispatch_public(struct tunnel *t, struct pkt *p)
{
    struct job *j;
    const char *mode, *host;
    int rc;

    if (p->op == OP_FTP_TLS) {
        struct conn_info ci;
        char client[INET6_ADDRSTRLEN];
        if (tunnel_conn_info(t, p->conn, &ci) != 0)
            return 0;
        if (ci.stats)
            ci.stats->ftp_tls++;
        sa_ip_str(&ci.peer, client, sizeof(client));
        log_warn("ev=ftp_tls app=%s client=%s msg=\"AUTH TLS: the control connection is "
                 "encrypted, its passive replies cannot be rewritten; serve FTPS with a fixed "
                 "passive range (docs/OPERATIONS.md, FTPS)\"", ci.app, client);
        app_stats_unref(ci.stats);
        return 0;
    }
    if (pub.jobs >= MAX_JOBS) {
        log_warn("ev=ftp_busy conn=%llu msg=\"too many FTP requests at once: dropped\"",
                 (unsigned long long)p->conn);
        return 0;
    }
    j = calloc(1, sizeof(*j));
    if (!j)
        return 0;
    j->op = p->op;
    j->ctl = p->conn;
    j->req = (uint32_t)json_integer_value(json_object_get(p->json, "req"));
    j->port = (int)json_integer_value(json_object_get(p->json, "port"));
    mode = json_string_value(json_object_get(p->json, "mode"));
    host = json_string_value(json_object_get(p->json, "host"));
    j->active = p->op == OP_FTP_CONNECT || (mode && strcmp(mode, "active") == 0);
    snprintf(j->host, sizeof(j->host), "%s", host ? host : "");
    tunnel_ref(t);
    j->t = t;
    pub.jobs++;
    rc = thread_spawn(job_main, j);
    if (rc != 0) {
        pub.jobs--;
        tunnel_unref(t);
        free(j);
        log_error("ev=thread_failed what=ftp err=\"%s\"", strerror(rc));
    }
    return 0;
}

int ftp_dispatch(struct tunnel *t, int is_public, struct pkt *p, char *err, size_t errlen)
{
    if (is_public) {
        if (p->op == OP_FTP_OPENED)
            goto unexpected;
        return dispatch_public(t, p);
    }
    if (p->op != OP_FTP_OPENED)
        goto unexpected;
    pthread_once(&fp_once, fp_init);
    {
        uint32_t req = (uint32_t)json_integer_value(json_object_get(p->json, "req"));
        struct ctl *x;
        pthread_mutex_lock(&fp.lock);
        x = find_ctl_locked(t, p->conn);
        if (x && x->wait_req == req && !x->answered) {
            json_t *j = p->json;
            const char *h = json_string_value(json_object_get(j, "host"));
            const char *why = json_string_value(json_object_get(j, "reason"));
            memset(&x->ans, 0, sizeof(x->ans));
            x->ans.ok = json_is_true(json_object_get(j, "ok"));
            x->ans.code = (int)json_integer_value(json_object_get(j, "code"));
            x->ans.port = (int)json_integer_value(json_object_get(j, "port"));
            snprintf(x->ans.host, sizeof(x->ans.host), "%s", h ? h : "");
            /* The reason goes to the client in a reply line: printable only. */
            for (size_t i = 0; why && why[i] && i + 1 < sizeof(x->ans.reason); i++)
                x->ans.reason[i] = why[i] >= 0x20 && why[i] < 0x7f ? why[i] : '?';
            x->answered = 1;
            pthread_cond_broadcast(&fp.cond);
        }
        pthread_mutex_unlock(&fp.lock);
    }
    return 0;
unexpected:
    snprintf(err, errlen, "unexpected op %s on this side", op_name(p->op));
    return -1;
}

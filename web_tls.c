/* web_tls.c - the HTTPS front of the web port.
 *
 * One acceptor thread and one thread per connection (netio's small stack; the
 * relay buffers are on the heap). A connection thread owns its SSL object and
 * both sockets, so nothing of it is shared but its slot in wt_slots, which lives
 * under wt_lock. The slots bound the number of connections, let a new connection
 * push out the oldest one that is still in its handshake or request head (so
 * half-open connections cannot lock everybody out), and map the front's local
 * port towards CivetWeb back to the real client address (CivetWeb only ever
 * sees 127.0.0.1), which web_api.c uses for rate limiting and logs.
 *
 * Phases of a connection: TLS handshake and the whole request head within
 * WEB_TLS_HEAD_TIMEOUT_MS of the accept (nothing reaches CivetWeb before that,
 * so a slow client cannot hold one of its few worker threads); then a relay in
 * both directions that ends when CivetWeb closes (it serves one request per
 * connection), on WEB_TLS_IDLE_MS without progress, or after WEB_TLS_MAX_LIFE_MS. */

#include "web_tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "netio.h"
#include "ratelimit.h"

#define WT_BUF 16384            /* one TLS record of plaintext */
#define WT_POLL_MS 250          /* how often a waiting thread looks at wt_stopping */
#define WT_DIAL_MS 2000
#define WT_STOP_WAIT_MS 5000

struct wt_slot {
    int used;
    int fd;                     /* the client socket (owned by the connection thread) */
    int preemptible;            /* still in handshake or request head */
    unsigned gen;               /* changes when the slot is taken over */
    int up_port;                /* local port of the connection to CivetWeb, 0 = none yet */
    uint64_t start_ms;
    char ip[RATELIMIT_KEY_LEN];
};

struct wt_conn {
    int fd, up;
    int slot;
    unsigned gen;
    uint64_t start_ms;
    char ip[RATELIMIT_KEY_LEN];
    char addr[64];
    SSL *ssl;
    char *c2u, *u2c;            /* client-to-upstream and upstream-to-client buffers */
    size_t c2u_len, c2u_off, u2c_len, u2c_off;
};

static SSL_CTX *wt_ctx;
static int wt_listen_fd = -1;
static int wt_upstream_port;
static _Atomic int wt_stopping;
static _Atomic int wt_threads;
static pthread_mutex_t wt_lock = PTHREAD_MUTEX_INITIALIZER;
static struct wt_slot wt_slots[WEB_TLS_MAX_CONNS];
static unsigned wt_gen;

/* ------------------------------------------------------------ slots */

/* A slot for a new connection: a free one, else the oldest preemptible one,
 * whose connection is shut down (its thread then ends by itself). -1 when every
 * connection is past its request head. */
static int wt_slot_take(int fd, const char *ip, uint64_t now, unsigned *gen)
{
    int idx = -1;

    pthread_mutex_lock(&wt_lock);
    for (int i = 0; i < WEB_TLS_MAX_CONNS && idx < 0; i++)
        if (!wt_slots[i].used)
            idx = i;
    if (idx < 0) {
        for (int i = 0; i < WEB_TLS_MAX_CONNS; i++)
            if (wt_slots[i].preemptible &&
                (idx < 0 || wt_slots[i].start_ms < wt_slots[idx].start_ms))
                idx = i;
        if (idx >= 0) {
            log_debug("ev=web_tls_preempt client=%s reason=\"full: oldest unfinished handshake "
                      "or request head gives way\"",
                      wt_slots[idx].ip);
            shutdown(wt_slots[idx].fd, SHUT_RDWR);
        }
    }
    if (idx >= 0) {
        struct wt_slot *s = &wt_slots[idx];
        s->used = 1;
        s->fd = fd;
        s->preemptible = 1;
        s->gen = ++wt_gen;
        s->up_port = 0;
        s->start_ms = now;
        snprintf(s->ip, sizeof(s->ip), "%s", ip);
        *gen = s->gen;
    }
    pthread_mutex_unlock(&wt_lock);
    return idx;
}

/* The connection has its request head: no longer preemptible. -1 when it was
 * preempted meanwhile. */
static int wt_slot_promote(const struct wt_conn *c)
{
    int rc = -1;

    pthread_mutex_lock(&wt_lock);
    if (wt_slots[c->slot].used && wt_slots[c->slot].gen == c->gen) {
        wt_slots[c->slot].preemptible = 0;
        rc = 0;
    }
    pthread_mutex_unlock(&wt_lock);
    return rc;
}

static void wt_slot_set_up_port(const struct wt_conn *c, int port)
{
    pthread_mutex_lock(&wt_lock);
    if (wt_slots[c->slot].used && wt_slots[c->slot].gen == c->gen)
        wt_slots[c->slot].up_port = port;
    pthread_mutex_unlock(&wt_lock);
}

/* Give the slot back unless another connection took it over. */
static void wt_slot_release(const struct wt_conn *c)
{
    pthread_mutex_lock(&wt_lock);
    if (wt_slots[c->slot].used && wt_slots[c->slot].gen == c->gen)
        memset(&wt_slots[c->slot], 0, sizeof(wt_slots[c->slot]));
    pthread_mutex_unlock(&wt_lock);
}

int web_tls_client_addr(int local_port, char *out, size_t cap)
{
    int rc = -1;

    if (local_port <= 0)
        return -1;
    pthread_mutex_lock(&wt_lock);
    for (int i = 0; i < WEB_TLS_MAX_CONNS; i++) {
        if (wt_slots[i].used && wt_slots[i].up_port == local_port) {
            snprintf(out, cap, "%s", wt_slots[i].ip);
            rc = 0;
            break;
        }
    }
    pthread_mutex_unlock(&wt_lock);
    return rc;
}

/* ------------------------------------------------------------ one connection */

/* Wait until fd has events or deadline passes; -1 on timeout or stop. */
static int wt_wait(int fd, short events, uint64_t deadline)
{
    for (;;) {
        struct pollfd p = {.fd = fd, .events = events};
        uint64_t now = mono_ms();
        int ms, r;
        if (wt_stopping || now >= deadline)
            return -1;
        ms = deadline - now > WT_POLL_MS ? WT_POLL_MS : (int)(deadline - now);
        r = poll(&p, 1, ms);
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return -1;
    }
}

/* POLLIN/POLLOUT for an SSL call that returned rc, or 0 when it failed for good. */
static short wt_ssl_want(SSL *ssl, int rc)
{
    switch (SSL_get_error(ssl, rc)) {
    case SSL_ERROR_WANT_READ: return POLLIN;
    case SSL_ERROR_WANT_WRITE: return POLLOUT;
    default: return 0;
    }
}

/* Best-effort short answer to the client before closing (the head phase). */
static void wt_answer(struct wt_conn *c, const char *status_line)
{
    char msg[256];
    int n = snprintf(msg, sizeof(msg),
                     "HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n"
                     "Connection: close\r\n\r\n",
                     status_line);
    uint64_t deadline = mono_ms() + 1000;

    for (;;) {
        int r = SSL_write(c->ssl, msg, n);
        short want = r > 0 ? 0 : wt_ssl_want(c->ssl, r);
        if (r > 0 || !want || wt_wait(c->fd, want, deadline) != 0)
            return;
    }
}

/* TLS handshake and the request head into c->c2u, within deadline.
 * 0, or -1 with a reason in why. */
static int wt_handshake_and_head(struct wt_conn *c, uint64_t deadline, const char **why)
{
    for (;;) {
        int r = SSL_do_handshake(c->ssl);
        short want;
        if (r == 1)
            break;
        want = wt_ssl_want(c->ssl, r);
        if (!want) {
            *why = "handshake failed";
            return -1;
        }
        if (wt_wait(c->fd, want, deadline) != 0) {
            *why = wt_stopping ? "stopping" : "handshake timed out";
            return -1;
        }
    }
    for (;;) {
        int r;
        short want;
        if (c->c2u_len >= 4 && memmem(c->c2u, c->c2u_len, "\r\n\r\n", 4))
            return 0;
        if (c->c2u_len >= 2 && memmem(c->c2u, c->c2u_len, "\n\n", 2))
            return 0;
        if (c->c2u_len >= WEB_TLS_HEAD_MAX) {
            wt_answer(c, "431 Request Header Fields Too Large");
            *why = "request head too large";
            return -1;
        }
        r = SSL_read(c->ssl, c->c2u + c->c2u_len, (int)(WT_BUF - c->c2u_len));
        if (r > 0) {
            c->c2u_len += (size_t)r;
            continue;
        }
        want = wt_ssl_want(c->ssl, r);
        if (!want) {
            *why = "closed before a whole request head";
            return -1;
        }
        if (wt_wait(c->fd, want, deadline) != 0) {
            if (!wt_stopping)
                wt_answer(c, "408 Request Timeout");
            *why = wt_stopping ? "stopping" : "request head timed out";
            return -1;
        }
    }
}

static int wt_dial_upstream(struct wt_conn *c)
{
    char err[128];
    struct sockaddr_in sin;
    socklen_t sl = sizeof(sin);

    c->up = net_dial("127.0.0.1", wt_upstream_port, WT_DIAL_MS, err, sizeof(err));
    if (c->up < 0) {
        log_error("ev=web_tls_upstream_failed client=%s err=\"%s\"", c->addr, err);
        return -1;
    }
    if (net_set_nonblock(c->up, 1) != 0 ||
        getsockname(c->up, (struct sockaddr *)&sin, &sl) != 0 || sin.sin_family != AF_INET) {
        log_error("ev=web_tls_upstream_failed client=%s err=\"%s\"", c->addr, strerror(errno));
        return -1;
    }
    wt_slot_set_up_port(c, ntohs(sin.sin_port));
    return 0;
}

/* Relay until CivetWeb closes. When the client side fails, CivetWeb's answer is
 * still drained (and dropped), so the slot, and with it the address mapping that
 * web_api.c asks for, lasts as long as CivetWeb's request. Returns a reason. */
static const char *wt_relay(struct wt_conn *c)
{
    int cli_eof = 0, cli_dead = 0, up_wr_shut = 0, up_eof = 0;
    uint64_t last = mono_ms();

    for (;;) {
        short ev_cli = 0, ev_up = 0;
        int progress = 0;
        uint64_t now;
        struct pollfd p[2];

        /* client -> SSL_read -> c2u */
        if (!cli_eof && !cli_dead && c->c2u_len == 0) {
            int r = SSL_read(c->ssl, c->c2u, WT_BUF);
            if (r > 0) {
                c->c2u_len = (size_t)r;
                c->c2u_off = 0;
                progress = 1;
            } else if (SSL_get_error(c->ssl, r) == SSL_ERROR_ZERO_RETURN) {
                cli_eof = 1;
            } else {
                short want = wt_ssl_want(c->ssl, r);
                ev_cli |= want;
                if (!want) {
                    cli_dead = 1;
                    ERR_clear_error();
                }
            }
        }
        /* c2u -> upstream */
        if (c->c2u_off < c->c2u_len) {
            ssize_t n = send(c->up, c->c2u + c->c2u_off, c->c2u_len - c->c2u_off, MSG_NOSIGNAL);
            if (n > 0) {
                c->c2u_off += (size_t)n;
                if (c->c2u_off == c->c2u_len)
                    c->c2u_len = c->c2u_off = 0;
                progress = 1;
            } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
                ev_up |= POLLOUT;
            } else {
                c->c2u_len = c->c2u_off = 0; /* CivetWeb stopped reading: drop the rest */
                cli_eof = 1;
            }
        }
        if ((cli_eof || cli_dead) && c->c2u_len == 0 && !up_wr_shut) {
            shutdown(c->up, SHUT_WR);
            up_wr_shut = 1;
        }
        /* upstream -> u2c */
        if (!up_eof && c->u2c_len == 0) {
            ssize_t n = recv(c->up, c->u2c, WT_BUF, 0);
            if (n > 0) {
                c->u2c_len = (size_t)n;
                c->u2c_off = 0;
                progress = 1;
            } else if (n == 0) {
                up_eof = 1;
            } else if (errno == EAGAIN || errno == EINTR) {
                ev_up |= POLLIN;
            } else {
                up_eof = 1;
            }
        }
        /* u2c -> SSL_write -> client (dropped once the client is gone) */
        if (c->u2c_off < c->u2c_len && cli_dead) {
            c->u2c_len = c->u2c_off = 0;
        } else if (c->u2c_off < c->u2c_len) {
            int r = SSL_write(c->ssl, c->u2c + c->u2c_off, (int)(c->u2c_len - c->u2c_off));
            if (r > 0) {
                c->u2c_off += (size_t)r;
                if (c->u2c_off == c->u2c_len)
                    c->u2c_len = c->u2c_off = 0;
                progress = 1;
            } else {
                short want = wt_ssl_want(c->ssl, r);
                if (want) {
                    ev_cli |= want;
                } else {
                    cli_dead = 1;
                    ERR_clear_error();
                }
            }
        }
        if (up_eof && c->u2c_len == 0) {
            if (!cli_dead)
                SSL_shutdown(c->ssl); /* close_notify, best effort, no waiting */
            return cli_dead ? "client gone" : "done";
        }
        now = mono_ms();
        if (progress) {
            last = now;
            continue;
        }
        if (wt_stopping)
            return "stopping";
        if (now - last >= WEB_TLS_IDLE_MS)
            return "idle timeout";
        if (now - c->start_ms >= WEB_TLS_MAX_LIFE_MS)
            return "connection too long";
        p[0].fd = cli_dead || !ev_cli ? -1 : c->fd;
        p[0].events = ev_cli;
        p[1].fd = ev_up ? c->up : -1;
        p[1].events = ev_up;
        p[0].revents = p[1].revents = 0;
        if (poll(p, 2, WT_POLL_MS) < 0 && errno != EINTR)
            return "poll failed";
    }
}

static void *wt_conn_main(void *arg)
{
    struct wt_conn *c = arg;
    const char *why = "out of memory";
    int relayed = 0;

    pthread_setname_np(pthread_self(), "web-tls");
    c->ssl = SSL_new(wt_ctx);
    c->c2u = malloc(WT_BUF);
    c->u2c = malloc(WT_BUF);
    if (!c->ssl || !c->c2u || !c->u2c || SSL_set_fd(c->ssl, c->fd) != 1)
        goto out;
    SSL_set_accept_state(c->ssl);
    SSL_set_mode(c->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                             SSL_MODE_RELEASE_BUFFERS);
    if (wt_handshake_and_head(c, c->start_ms + WEB_TLS_HEAD_TIMEOUT_MS, &why) != 0)
        goto out;
    if (wt_slot_promote(c) != 0) {
        why = "pushed out by newer connections";
        goto out;
    }
    if (wt_dial_upstream(c) != 0) {
        wt_answer(c, "503 Service Unavailable");
        why = "internal web server unreachable";
        goto out;
    }
    relayed = 1;
    why = wt_relay(c);
out:
    if (relayed)
        log_debug("ev=web_tls_close client=%s reason=\"%s\"", c->addr, why);
    else
        log_debug("ev=web_tls_refused client=%s reason=\"%s\"", c->addr, why);
    wt_slot_release(c);
    if (c->up >= 0)
        close(c->up);
    SSL_free(c->ssl);
    close(c->fd);
    free(c->c2u);
    free(c->u2c);
    free(c);
    ERR_clear_error();
    OPENSSL_thread_stop();
    wt_threads--;
    return NULL;
}

/* ------------------------------------------------------------ acceptor */

static void wt_peer_ip(const struct sockaddr_storage *ss, char ip[RATELIMIT_KEY_LEN], char *addr,
                       size_t cap)
{
    int port = 0;

    snprintf(ip, RATELIMIT_KEY_LEN, "?");
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &s4->sin_addr, ip, RATELIMIT_KEY_LEN);
        port = ntohs(s4->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &s6->sin6_addr, ip, RATELIMIT_KEY_LEN);
        port = ntohs(s6->sin6_port);
    }
    snprintf(addr, cap, "%s:%d", ip, port);
}

static void *wt_accept_main(void *arg)
{
    uint64_t last_warn = 0;

    (void)arg;
    pthread_setname_np(pthread_self(), "web-tls-accept");
    while (!wt_stopping) {
        struct pollfd p = {.fd = wt_listen_fd, .events = POLLIN};
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        struct wt_conn *c;
        char ip[RATELIMIT_KEY_LEN], addr[64];
        unsigned gen = 0;
        int fd, slot, rc;

        if (poll(&p, 1, WT_POLL_MS) <= 0)
            continue;
        fd = accept4(wt_listen_fd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
            struct timespec ts = {.tv_nsec = 100 * 1000 * 1000};
            if (wt_stopping || errno == EINTR || errno == EAGAIN || errno == ECONNABORTED)
                continue;
            if (mono_ms() - last_warn > 1000) {
                log_error("ev=accept_failed what=web_tls err=\"%s\"", strerror(errno));
                last_warn = mono_ms();
            }
            nanosleep(&ts, NULL); /* out of descriptors: let connections end */
            continue;
        }
        wt_peer_ip(&ss, ip, addr, sizeof(addr));
        slot = wt_slot_take(fd, ip, mono_ms(), &gen);
        if (slot < 0) {
            if (mono_ms() - last_warn > 1000) {
                log_warn("ev=web_tls_refused client=%s reason=\"%d HTTPS connections busy\"", addr,
                         WEB_TLS_MAX_CONNS);
                last_warn = mono_ms();
            }
            close(fd);
            continue;
        }
        c = calloc(1, sizeof(*c));
        if (!c) {
            struct wt_conn tmp = {.slot = slot, .gen = gen};
            wt_slot_release(&tmp);
            close(fd);
            continue;
        }
        c->fd = fd;
        c->up = -1;
        c->slot = slot;
        c->gen = gen;
        c->start_ms = mono_ms();
        snprintf(c->ip, sizeof(c->ip), "%s", ip);
        snprintf(c->addr, sizeof(c->addr), "%s", addr);
        net_tune(fd);
        log_debug("ev=web_tls_accept client=%s", addr);
        wt_threads++;
        rc = thread_spawn_sized(wt_conn_main, c, THREAD_STACK_SIZE_TLS);
        if (rc != 0) {
            wt_threads--;
            log_error("ev=thread_failed what=web_tls err=\"%s\"", strerror(rc));
            wt_slot_release(c);
            close(fd);
            free(c);
        }
    }
    wt_threads--;
    return NULL;
}

/* ------------------------------------------------------------ start and stop */

int web_tls_listen(SSL_CTX *ctx, const char *bind_addr, int port, char *err, size_t errlen)
{
    if (!ctx) {
        snprintf(err, errlen, "no TLS context");
        return -1;
    }
    wt_listen_fd = net_listen(bind_addr && *bind_addr ? bind_addr : NULL, port, 128, err, errlen);
    if (wt_listen_fd < 0)
        return -1;
    wt_ctx = ctx;
    wt_stopping = 0;
    return 0;
}

int web_tls_run(int upstream_port, char *err, size_t errlen)
{
    int rc;

    if (wt_listen_fd < 0) {
        snprintf(err, errlen, "the HTTPS listener is not open");
        return -1;
    }
    wt_upstream_port = upstream_port;
    wt_threads++;
    rc = thread_spawn(wt_accept_main, NULL);
    if (rc != 0) {
        wt_threads--;
        snprintf(err, errlen, "cannot start the HTTPS acceptor: %s", strerror(rc));
        return -1;
    }
    return 0;
}

void web_tls_stop(void)
{
    uint64_t deadline = mono_ms() + WT_STOP_WAIT_MS;
    struct timespec ts = {.tv_nsec = 10 * 1000 * 1000};

    if (wt_listen_fd < 0)
        return;
    wt_stopping = 1;
    shutdown(wt_listen_fd, SHUT_RDWR);
    pthread_mutex_lock(&wt_lock);
    for (int i = 0; i < WEB_TLS_MAX_CONNS; i++)
        if (wt_slots[i].used)
            shutdown(wt_slots[i].fd, SHUT_RDWR);
    pthread_mutex_unlock(&wt_lock);
    while (wt_threads > 0 && mono_ms() < deadline)
        nanosleep(&ts, NULL);
    if (wt_threads > 0) {
        /* Not expected (every wait is bounded by WT_POLL_MS); keep the
         * listener and context rather than pull them from under a thread. */
        log_error("ev=web_tls_stop_incomplete threads=%d", (int)wt_threads);
        return;
    }
    close(wt_listen_fd);
    wt_listen_fd = -1;
    wt_ctx = NULL;
}

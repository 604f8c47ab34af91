/* web_front.c - the front of the web port, plain HTTP or HTTPS (see web_front.h).
 *
 * A connection thread owns its sockets, its SSL object and its buffers; the
 * only shared state is its slot in wf_slots, under wf_lock. The slots bound the
 * connections (in all and per address; nobody is ever pushed out) and map the
 * front's local address and port towards CivetWeb back to the real client
 * address (CivetWeb only ever sees 127.0.0.1), which web_api.c uses for rate
 * limiting and logs. The mapping is set before the request is sent to CivetWeb
 * and cleared only after CivetWeb closed its end (its handler has returned), so
 * it covers the whole time a handler may ask for it.
 *
 * Phases of a connection, each under an absolute deadline:
 *   1. TLS handshake (HTTPS) and the whole request, head and body, within
 *      WEB_FRONT_REQUEST_MS of the accept; refusals answered here;
 *   2. the request to CivetWeb and its whole answer into memory within
 *      WEB_FRONT_UPSTREAM_MS (CivetWeb's worker is free after this);
 *   3. the answer to the client within WEB_FRONT_ANSWER_MS;
 *   4. a short linger (our FIN, then the client's bytes read and dropped, at
 *      most WF_LINGER_MS), so that closing with unread bytes does not reset the
 *      connection before the client has read the answer. */

#include "web_front.h"

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
#include "proxy_header.h"
#include "ratelimit.h"
#include "web_head.h"

#define WF_REQ_CAP (WEB_FRONT_HEAD_MAX + WEB_FRONT_BODY_MAX)
#define WF_ANSWER_FIRST (16 * 1024)  /* first size of the answer buffer; doubles up to the cap */
#define WF_POLL_MS 250               /* how often a waiting thread looks at wf_stopping */
#define WF_DIAL_MS 2000
#define WF_ERROR_WRITE_MS 2000       /* to write the front's own short answer */
#define WF_LINGER_MS 1000
#define WF_LINGER_MAX (64 * 1024)
#define WF_STOP_WAIT_MS 5000

struct wf_slot {
    int used;
    int fd;                             /* the client socket (owned by the connection thread) */
    unsigned char key[NET_SOURCE_KEY_LEN];      /* the per-address cap counts equal keys */
    char ip[RATELIMIT_KEY_LEN];         /* the client's address */
    char up_addr[INET6_ADDRSTRLEN];     /* local end towards CivetWeb, "" = none */
    int up_port;
};

struct wf_conn {
    int fd, up, slot;
    uint64_t start_ms;
    char ip[RATELIMIT_KEY_LEN];
    char addr[64];                      /* "ip:port" for logs */
    struct sockaddr_storage peer;       /* the socket's peer */
    int proxied;                        /* peer is an --accept-proxy-from address: a PROXY
                                           header comes first and names the client */
    SSL *ssl;                           /* NULL: plain HTTP */
    char *req;                          /* head and body, WF_REQ_CAP bytes */
    size_t req_len;
    struct web_head head;
    char *ans;                          /* CivetWeb's answer */
    size_t ans_len, ans_cap;
};

static SSL_CTX *wf_tls_ctx;
static int wf_listen_fd = -1;          /* the first of wf_listen_fds, -1 when none */
static int wf_listen_fds[NET_BIND_MAX];
static int wf_nlisten;
static int wf_upstream_port;
static _Atomic int wf_stopping;
static _Atomic int wf_threads;
static pthread_mutex_t wf_lock = PTHREAD_MUTEX_INITIALIZER;
static struct wf_slot wf_slots[WEB_FRONT_MAX_CONNS];

/* ------------------------------------------------------------ slots */

/* A free slot for a new connection, or -1 with the reason in why: its address
 * already holds WEB_FRONT_MAX_PER_ADDR connections, or all are in use. A
 * balancer's connection (proxied) is not held to the per-address cap: it
 * counts against its client's once its PROXY header names it
 * (wf_slot_rekey). */
static int wf_slot_take(int fd, const unsigned char key[NET_SOURCE_KEY_LEN], const char *ip,
                        int proxied, const char **why)
{
    int idx = -1, same = 0;

    pthread_mutex_lock(&wf_lock);
    for (int i = 0; i < WEB_FRONT_MAX_CONNS; i++) {
        if (!wf_slots[i].used) {
            if (idx < 0)
                idx = i;
        } else if (memcmp(wf_slots[i].key, key, NET_SOURCE_KEY_LEN) == 0) {
            same++;
        }
    }
    if (same >= WEB_FRONT_MAX_PER_ADDR && !proxied) {
        *why = "too many connections from this address";
        idx = -1;
    } else if (idx < 0) {
        *why = "every connection of the web port is in use";
    } else {
        struct wf_slot *s = &wf_slots[idx];
        memset(s, 0, sizeof(*s));
        s->used = 1;
        s->fd = fd;
        memcpy(s->key, key, NET_SOURCE_KEY_LEN);
        snprintf(s->ip, sizeof(s->ip), "%s", ip);
    }
    pthread_mutex_unlock(&wf_lock);
    return idx;
}

/* Slot slot now belongs to the client a PROXY header named: its address
 * for the handlers, its key for the per-address cap. 0, or -1 with why when
 * that client already holds WEB_FRONT_MAX_PER_ADDR connections. */
static int wf_slot_rekey(int slot, const unsigned char key[NET_SOURCE_KEY_LEN], const char *ip,
                         const char **why)
{
    int same = 0, rc = 0;

    pthread_mutex_lock(&wf_lock);
    for (int i = 0; i < WEB_FRONT_MAX_CONNS; i++)
        if (i != slot && wf_slots[i].used && memcmp(wf_slots[i].key, key, NET_SOURCE_KEY_LEN) == 0)
            same++;
    if (same >= WEB_FRONT_MAX_PER_ADDR) {
        *why = "too many connections from this address";
        rc = -1;
    } else {
        memcpy(wf_slots[slot].key, key, NET_SOURCE_KEY_LEN);
        snprintf(wf_slots[slot].ip, sizeof(wf_slots[slot].ip), "%s", ip);
    }
    pthread_mutex_unlock(&wf_lock);
    return rc;
}

static void wf_slot_set_upstream(const struct wf_conn *c, const char *addr, int port)
{
    pthread_mutex_lock(&wf_lock);
    snprintf(wf_slots[c->slot].up_addr, sizeof(wf_slots[c->slot].up_addr), "%s", addr);
    wf_slots[c->slot].up_port = port;
    pthread_mutex_unlock(&wf_lock);
}

static void wf_slot_release(int slot)
{
    pthread_mutex_lock(&wf_lock);
    memset(&wf_slots[slot], 0, sizeof(wf_slots[slot]));
    pthread_mutex_unlock(&wf_lock);
}

int web_front_client_addr(const char *up_addr, int up_port, char *out, size_t cap)
{
    int rc = -1;

    if (!up_addr || up_port <= 0)
        return -1;
    pthread_mutex_lock(&wf_lock);
    for (int i = 0; i < WEB_FRONT_MAX_CONNS; i++) {
        const struct wf_slot *s = &wf_slots[i];
        if (s->used && s->up_port == up_port && s->up_addr[0] &&
            strcmp(s->up_addr, up_addr) == 0) {
            snprintf(out, cap, "%s", s->ip);
            rc = 0;
            break;
        }
    }
    pthread_mutex_unlock(&wf_lock);
    return rc;
}

/* ------------------------------------------------------------ client I/O */

/* Wait until fd has events or deadline passes; -1 on timeout or stop. */
static int wf_wait(int fd, short events, uint64_t deadline)
{
    for (;;) {
        struct pollfd p = {.fd = fd, .events = events};
        uint64_t now = mono_ms();
        int ms, r;
        if (wf_stopping || now >= deadline)
            return -1;
        ms = deadline - now > WF_POLL_MS ? WF_POLL_MS : (int)(deadline - now);
        r = poll(&p, 1, ms);
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return -1;
    }
}

/* POLLIN/POLLOUT for an SSL call that returned rc, or 0 when it failed for good. */
static short wf_ssl_want(SSL *ssl, int rc)
{
    switch (SSL_get_error(ssl, rc)) {
    case SSL_ERROR_WANT_READ: return POLLIN;
    case SSL_ERROR_WANT_WRITE: return POLLOUT;
    default: ERR_clear_error(); return 0;
    }
}

/* Read from the client: > 0 bytes, 0 end of stream, -1 with *want the event to
 * wait for (0: failed for good). */
static ssize_t wf_cli_read(struct wf_conn *c, void *buf, size_t n, short *want)
{
    *want = 0;
    if (c->ssl) {
        int r = SSL_read(c->ssl, buf, n > INT32_MAX ? INT32_MAX : (int)n);
        if (r > 0)
            return r;
        if (SSL_get_error(c->ssl, r) == SSL_ERROR_ZERO_RETURN)
            return 0;
        *want = wf_ssl_want(c->ssl, r);
        return -1;
    } else {
        ssize_t r = recv(c->fd, buf, n, 0);
        if (r >= 0)
            return r;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            *want = POLLIN;
        return -1;
    }
}

/* Write buf whole to the client by deadline. 0, or -1. */
static int wf_cli_write_all(struct wf_conn *c, const void *buf, size_t len, uint64_t deadline)
{
    const char *p = buf;

    while (len > 0) {
        short want = 0;
        ssize_t n;
        if (wf_stopping || mono_ms() >= deadline)
            return -1;
        if (c->ssl) {
            int r = SSL_write(c->ssl, p, len > INT32_MAX ? INT32_MAX : (int)len);
            n = r > 0 ? r : -1;
            if (r <= 0)
                want = wf_ssl_want(c->ssl, r);
        } else {
            n = send(c->fd, p, len, MSG_NOSIGNAL);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
                want = POLLOUT;
        }
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (!want || wf_wait(c->fd, want, deadline) != 0)
            return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ phase 1: the request */

static int wf_handshake(struct wf_conn *c, uint64_t deadline, const char **why)
{
    for (;;) {
        int r;
        short want;
        if (wf_stopping || mono_ms() >= deadline) {
            *why = wf_stopping ? "stopping" : "TLS handshake not finished in time";
            return -1;
        }
        r = SSL_do_handshake(c->ssl);
        if (r == 1)
            return 0;
        want = wf_ssl_want(c->ssl, r);
        if (!want) {
            *why = "TLS handshake failed";
            return -1;
        }
        if (wf_wait(c->fd, want, deadline) != 0) {
            *why = wf_stopping ? "stopping" : "TLS handshake not finished in time";
            return -1;
        }
    }
}

/* The whole request into c->req by deadline, judged by web_head_parse() on
 * every line that completes. 0 when it is complete (c->head describes it), an
 * HTTP status to answer with (400, 408, 411, 413, 431), or -1 when the client
 * went away (nothing to answer). *why says what happened. */
static int wf_read_request(struct wf_conn *c, uint64_t deadline, const char **why)
{
    int verdict = WEB_HEAD_MORE, sent_continue = 0;
    size_t scanned = 0;  /* bytes of c->req looked at for a line end */

    for (;;) {
        size_t target;
        short want;
        ssize_t n;

        /* The verdict can change only when a line completes or the head fills
         * its limit, so bytes without a line end cost no parse. */
        if (verdict == WEB_HEAD_MORE && c->req_len > scanned) {
            int line_done = memchr(c->req + scanned, '\n', c->req_len - scanned) != NULL;
            scanned = c->req_len;
            if (line_done || c->req_len >= WEB_FRONT_HEAD_MAX)
                verdict = web_head_parse(c->req, c->req_len, WEB_FRONT_HEAD_MAX,
                                         WEB_FRONT_BODY_MAX, &c->head);
        }
        if (verdict >= 400) {
            *why = c->head.why;
            return verdict;
        }
        if (verdict == WEB_HEAD_OK) {
            target = c->head.head_len + c->head.body_len;
            if (c->req_len >= target)
                return 0;
            if (c->head.expect_continue && !sent_continue) {
                static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
                sent_continue = 1;
                if (wf_cli_write_all(c, cont, sizeof(cont) - 1, deadline) != 0) {
                    *why = "client gone";
                    return -1;
                }
            }
        } else {
            target = WEB_FRONT_HEAD_MAX;
        }
        /* The deadline is absolute: checked on every turn, however the bytes come. */
        if (wf_stopping) {
            *why = "stopping";
            return -1;
        }
        if (mono_ms() >= deadline) {
            *why = "the request did not arrive in time";
            return 408;
        }
        n = wf_cli_read(c, c->req + c->req_len, target - c->req_len, &want);
        if (n > 0) {
            c->req_len += (size_t)n;
            continue;
        }
        if (n == 0 || !want) {
            *why = "closed before a whole request";
            return -1;
        }
        if (wf_wait(c->fd, want, deadline) != 0) {
            *why = wf_stopping ? "stopping" : "the request did not arrive in time";
            if (!wf_stopping)
                return 408;
            return -1;
        }
    }
}

/* ------------------------------------------------------------ phase 2: CivetWeb */

/* Room for more of the answer: the buffer doubles up to WEB_FRONT_ANSWER_MEM.
 * 0, or -1 when it is full (or out of memory with nothing read yet). */
static int wf_answer_room(struct wf_conn *c)
{
    size_t cap;
    char *p;

    if (c->ans_len < c->ans_cap)
        return 0;
    if (c->ans_cap >= WEB_FRONT_ANSWER_MEM)
        return -1;
    cap = c->ans_cap ? c->ans_cap * 2 : WF_ANSWER_FIRST;
    if (cap > WEB_FRONT_ANSWER_MEM)
        cap = WEB_FRONT_ANSWER_MEM;
    p = realloc(c->ans, cap);
    if (!p)
        return -1;
    c->ans = p;
    c->ans_cap = cap;
    return 0;
}

/* Read from CivetWeb into the free part of the answer buffer by deadline.
 * > 0 bytes, 0 end of stream, -1 timeout, stop or error. */
static ssize_t wf_up_read(struct wf_conn *c, uint64_t deadline)
{
    for (;;) {
        ssize_t n = recv(c->up, c->ans + c->ans_len, c->ans_cap - c->ans_len, 0);
        if (n >= 0)
            return n;
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return -1;
        if (wf_wait(c->up, POLLIN, deadline) != 0)
            return -1;
    }
}

static void wf_up_close(struct wf_conn *c)
{
    wf_slot_set_upstream(c, "", 0);
    if (c->up >= 0)
        close(c->up);
    c->up = -1;
}

/* Send the request to CivetWeb and read its answer into c->ans (all of it, or
 * the first WEB_FRONT_ANSWER_MEM bytes with *more set and c->up left open).
 * 0, or the status to answer with (502, 503, 504) and *why. */
static int wf_ask_upstream(struct wf_conn *c, int *more, const char **why)
{
    uint64_t deadline = mono_ms() + WEB_FRONT_UPSTREAM_MS;
    size_t total = c->head.head_len + c->head.body_len, off = 0;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char err[128], local[INET6_ADDRSTRLEN];
    int local_port = 0;

    *more = 0;
    c->up = net_dial("127.0.0.1", wf_upstream_port, WF_DIAL_MS, err, sizeof(err));
    if (c->up < 0) {
        log_error("ev=web_front_upstream_failed client=%s err=\"%s\"", c->addr, err);
        *why = "the internal web server is unreachable";
        return 503;
    }
    local[0] = '\0';
    if (getsockname(c->up, (struct sockaddr *)&ss, &sl) == 0 && ss.ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &s4->sin_addr, local, sizeof(local));
        local_port = ntohs(s4->sin_port);
    }
    if (!local[0] || net_set_nonblock(c->up, 1) != 0) {
        log_error("ev=web_front_upstream_failed client=%s err=\"%s\"", c->addr, strerror(errno));
        *why = "the internal web server is unreachable";
        return 503;
    }
    /* Before CivetWeb can see the request: its handler asks for the address. */
    wf_slot_set_upstream(c, local, local_port);
    while (off < total) {
        ssize_t n = send(c->up, c->req + off, total - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            if (wf_wait(c->up, POLLOUT, deadline) != 0)
                break;
        } else {
            break;
        }
    }
    shutdown(c->up, SHUT_WR); /* one request: CivetWeb sees the end of it */
    for (;;) {
        ssize_t n;
        if (wf_answer_room(c) != 0) {
            if (c->ans_len == 0) {
                *why = "out of memory";
                return 503;
            }
            *more = 1;   /* larger than WEB_FRONT_ANSWER_MEM: the rest is streamed */
            return 0;
        }
        n = wf_up_read(c, deadline);
        if (n > 0) {
            c->ans_len += (size_t)n;
            continue;
        }
        if (n == 0 && c->ans_len > 0) {
            wf_up_close(c); /* CivetWeb is done: its worker is free */
            return 0;
        }
        wf_up_close(c);
        if (wf_stopping) {
            *why = "stopping";
            return -1;
        }
        *why = n == 0 ? "the internal web server closed without an answer"
                      : "the internal web server did not answer in time";
        return n == 0 ? 502 : 504;
    }
}

/* ------------------------------------------------------------ phase 3: the answer */

/* CivetWeb's answer to the client at its pace, within WEB_FRONT_ANSWER_MS; with
 * more set, the part beyond the buffer is relayed as it comes. A reason. */
static const char *wf_send_answer(struct wf_conn *c, int more)
{
    uint64_t deadline = mono_ms() + WEB_FRONT_ANSWER_MS;

    for (;;) {
        ssize_t n;
        if (wf_cli_write_all(c, c->ans, c->ans_len, deadline) != 0)
            return wf_stopping ? "stopping" : "client did not take the answer in time";
        if (!more)
            return "done";
        c->ans_len = 0;
        n = wf_up_read(c, deadline);
        if (n <= 0) {
            wf_up_close(c);
            return n == 0 ? "done" : "the internal web server stalled";
        }
        c->ans_len = (size_t)n;
    }
}

static const char *wf_status_text(int status)
{
    switch (status) {
    case 400: return "Bad Request";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 431: return "Request Header Fields Too Large";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Error";
    }
}

/* The front's own answer: a JSON error as web_api.c writes them (no body for
 * HEAD), then the connection ends. why is our own text (no quotes). */
static void wf_answer_error(struct wf_conn *c, int status, const char *why)
{
    char body[256], msg[1024];
    int blen, mlen;

    if (status == 408)
        blen = snprintf(body, sizeof(body),
                        "{\"error\":\"the request did not arrive within %d s\"}",
                        WEB_FRONT_REQUEST_MS / 1000);
    else if (status == 413)
        blen = snprintf(body, sizeof(body), "{\"error\":\"%s (at most %d bytes)\"}", why,
                        WEB_FRONT_BODY_MAX);
    else if (status == 431)
        blen = snprintf(body, sizeof(body), "{\"error\":\"%s (at most %d bytes, %d fields)\"}",
                        why, WEB_FRONT_HEAD_MAX, WEB_HEAD_MAX_FIELDS);
    else
        blen = snprintf(body, sizeof(body), "{\"error\":\"%s\"}", why);
    if (blen < 0 || (size_t)blen >= sizeof(body))
        return;
    mlen = snprintf(msg, sizeof(msg),
                    "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                    "%s\r\n%s",
                    status, wf_status_text(status), blen, WEB_SECURITY_HEADERS,
                    c->head.is_head ? "" : body);
    if (mlen < 0 || (size_t)mlen >= sizeof(msg))
        return;
    wf_cli_write_all(c, msg, (size_t)mlen, mono_ms() + WF_ERROR_WRITE_MS);
}

/* Our end first, then what the client still sends is read and dropped (at most
 * WF_LINGER_MAX bytes, WF_LINGER_MS), so that our close does not reset the
 * connection under an answer the client has not read yet. */
static void wf_linger(struct wf_conn *c)
{
    uint64_t deadline = mono_ms() + WF_LINGER_MS;
    size_t dropped = 0;

    if (c->ssl)
        SSL_shutdown(c->ssl); /* close_notify, best effort, no waiting */
    ERR_clear_error();
    if (shutdown(c->fd, SHUT_WR) != 0)
        return;
    while (dropped < WF_LINGER_MAX && !wf_stopping) {
        ssize_t n = recv(c->fd, c->req, WF_REQ_CAP, 0);
        if (n > 0) {
            dropped += (size_t)n;
        } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) ||
                   wf_wait(c->fd, POLLIN, deadline) != 0) {
            return;
        }
    }
}

static void wf_peer(const struct sockaddr_storage *ss, char ip[RATELIMIT_KEY_LEN], char *addr,
                    size_t cap);
static void wf_refuse_send(int fd, const char *why);

/* A balancer's connection: its PROXY header (before TLS, as HAProxy sends it)
 * within PP_DEADLINE_MS of the accept, then the client it names is the
 * connection's for the caps, the rate limits, the handlers and the logs. 0,
 * or -1 with why (the connection is to end; a refusal already answered). */
static int wf_proxy_header(struct wf_conn *c, const char **why)
{
    struct sockaddr_storage client;
    unsigned char key[NET_SOURCE_KEY_LEN];
    char ip[RATELIMIT_KEY_LEN], addr[64], kind[96];

    if (pp_read_header(c->fd, c->start_ms + PP_DEADLINE_MS, &wf_stopping, &c->peer, &client,
                       why) != 0) {
        if (wf_stopping)
            return -1;
        pp_count_refused();
        /* A flood is one line per reason per interval plus a count. */
        snprintf(kind, sizeof(kind), "port=web reason=\"%s\"", *why);
        if (log_sum_note(LOG_LVL_WARN, "proxy_header_refused", kind))
            log_warn("ev=proxy_header_refused port=web client=%s reason=\"%s\"", c->addr, *why);
        return -1;
    }
    wf_peer(&client, ip, addr, sizeof(addr));
    net_source_key(&client, key);
    if (wf_slot_rekey(c->slot, key, ip, why) != 0) {
        wf_refuse_send(c->fd, *why);
        return -1;
    }
    log_debug("ev=web_front_proxied balancer=%s client=%s", c->addr, addr);
    snprintf(c->ip, sizeof(c->ip), "%s", ip);
    snprintf(c->addr, sizeof(c->addr), "%s", addr);
    return 0;
}

static void *wf_conn_main(void *arg)
{
    struct wf_conn *c = arg;
    const char *why = "out of memory";
    int status = -1, more = 0, answered = 0;
    uint64_t deadline = c->start_ms + WEB_FRONT_REQUEST_MS;

    pthread_setname_np(pthread_self(), "web-front");
    if (c->proxied && wf_proxy_header(c, &why) != 0)
        goto out;
    c->req = malloc(WF_REQ_CAP);
    if (!c->req)
        goto out;
    if (wf_tls_ctx) {
        c->ssl = SSL_new(wf_tls_ctx);
        if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1)
            goto out;
        SSL_set_accept_state(c->ssl);
        SSL_set_mode(c->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                                 SSL_MODE_RELEASE_BUFFERS);
        if (wf_handshake(c, deadline, &why) != 0)
            goto out;
    }
    status = wf_read_request(c, deadline, &why);
    if (status == 0)
        status = wf_ask_upstream(c, &more, &why);
    if (status > 0) {
        wf_answer_error(c, status, why);
        log_debug("ev=web_front_answer client=%s status=%d reason=\"%s\"", c->addr, status, why);
        answered = 1;
    } else if (status == 0) {
        why = wf_send_answer(c, more);
        answered = strcmp(why, "done") == 0;
    }
    if (answered)
        wf_linger(c);
out:
    log_debug("ev=web_front_close client=%s reason=\"%s\"", c->addr, why);
    if (c->up >= 0)
        wf_up_close(c);
    wf_slot_release(c->slot);
    SSL_free(c->ssl);
    close(c->fd);
    free(c->req);
    free(c->ans);
    free(c);
    if (wf_tls_ctx) {
        ERR_clear_error();
        OPENSSL_thread_stop();
    }
    wf_threads--;
    return NULL;
}

/* ------------------------------------------------------------ acceptor */

/* The client's address (an IPv4 client of the dual-stack listener as plain
 * IPv4), alone for rate limits and the handlers, and with its port in the
 * usual notation ("[2001:db8::1]:443") for logs. */
static void wf_peer(const struct sockaddr_storage *ss, char ip[RATELIMIT_KEY_LEN], char *addr,
                    size_t cap)
{
    net_ip_str(ss, ip, RATELIMIT_KEY_LEN);
    net_sa_str(ss, addr, cap);
}

/* A newcomer over a limit: plain HTTP gets a short 503 (one non-blocking send,
 * best effort), HTTPS is closed (no handshake is spent on it). */
static void wf_refuse_send(int fd, const char *why)
{
    char body[160], msg[768];
    int blen, mlen;

    if (!wf_tls_ctx) {
        blen = snprintf(body, sizeof(body), "{\"error\":\"%s: try again later\"}", why);
        mlen = snprintf(msg, sizeof(msg),
                        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                        "Content-Length: %d\r\nRetry-After: %d\r\n%s\r\n%s",
                        blen, WEB_FRONT_REQUEST_MS / 1000, WEB_SECURITY_HEADERS, body);
        if (blen > 0 && (size_t)blen < sizeof(body) && mlen > 0 && (size_t)mlen < sizeof(msg) &&
            send(fd, msg, (size_t)mlen, MSG_NOSIGNAL | MSG_DONTWAIT) > 0)
            shutdown(fd, SHUT_WR);
    }
}

static void wf_refuse(int fd, const char *why)
{
    wf_refuse_send(fd, why);
    close(fd);
}

static void *wf_accept_main(void *arg)
{
    uint64_t last_warn = 0;
    unsigned refused = 0;

    (void)arg;
    pthread_setname_np(pthread_self(), "web-accept");
    while (!wf_stopping) {
        struct pollfd p[NET_BIND_MAX];
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        unsigned char key[NET_SOURCE_KEY_LEN];
        char ip[RATELIMIT_KEY_LEN], addr[64];
        const char *why = NULL;
        struct wf_conn *c;
        int fd, slot, rc, proxied;
        int ready = -1;

        for (int i = 0; i < wf_nlisten; i++) {
            p[i].fd = wf_listen_fds[i];
            p[i].events = POLLIN;
            p[i].revents = 0;
        }
        if (poll(p, (nfds_t)wf_nlisten, WF_POLL_MS) <= 0)
            continue;
        for (int i = 0; i < wf_nlisten && ready < 0; i++)
            if (p[i].revents)
                ready = p[i].fd;
        if (ready < 0)
            continue;
        fd = accept4(ready, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
            struct timespec ts = {.tv_nsec = 100 * 1000 * 1000};
            if (wf_stopping || errno == EINTR || errno == EAGAIN || errno == ECONNABORTED)
                continue;
            if (mono_ms() - last_warn > 1000) {
                log_error("ev=accept_failed what=web_front err=\"%s\"", strerror(errno));
                last_warn = mono_ms();
            }
            nanosleep(&ts, NULL); /* out of descriptors: let connections end */
            continue;
        }
        wf_peer(&ss, ip, addr, sizeof(addr));
        net_source_key(&ss, key);
        proxied = pp_accept_listed(&ss);
        slot = wf_slot_take(fd, key, ip, proxied, &why);
        if (slot < 0) {
            /* One line a second at most, with how many were refused meanwhile. */
            refused++;
            if (mono_ms() - last_warn > 1000) {
                log_warn("ev=web_front_refused client=%s refused=%u reason=\"%s\"", addr, refused,
                         why);
                last_warn = mono_ms();
                refused = 0;
            }
            wf_refuse(fd, why);
            continue;
        }
        c = calloc(1, sizeof(*c));
        if (!c) {
            wf_slot_release(slot);
            close(fd);
            continue;
        }
        c->fd = fd;
        c->up = -1;
        c->slot = slot;
        c->start_ms = mono_ms();
        c->peer = ss;
        c->proxied = proxied;
        snprintf(c->ip, sizeof(c->ip), "%s", ip);
        snprintf(c->addr, sizeof(c->addr), "%s", addr);
        net_tune(fd);
        log_debug("ev=web_front_accept client=%s", addr);
        wf_threads++;
        rc = wf_tls_ctx ? thread_spawn_sized(wf_conn_main, c, THREAD_STACK_SIZE_TLS)
                        : thread_spawn(wf_conn_main, c);
        if (rc != 0) {
            wf_threads--;
            log_error("ev=thread_failed what=web_front err=\"%s\"", strerror(rc));
            wf_slot_release(slot);
            close(fd);
            free(c);
        }
    }
    wf_threads--;
    return NULL;
}

/* ------------------------------------------------------------ start and stop */

int web_front_listen(SSL_CTX *tls_ctx, const struct net_binds *binds, int port, char *err,
                     size_t errlen)
{
    wf_nlisten = net_listen_all(binds, 0, port, 128, wf_listen_fds, err, errlen);
    if (wf_nlisten < 0) {
        wf_nlisten = 0;
        return -1;
    }
    wf_listen_fd = wf_listen_fds[0];
    wf_tls_ctx = tls_ctx;
    wf_stopping = 0;
    return 0;
}

int web_front_run(int upstream_port, char *err, size_t errlen)
{
    int rc;

    if (wf_listen_fd < 0) {
        snprintf(err, errlen, "the web port is not open");
        return -1;
    }
    wf_upstream_port = upstream_port;
    wf_threads++;
    rc = thread_spawn(wf_accept_main, NULL);
    if (rc != 0) {
        wf_threads--;
        snprintf(err, errlen, "cannot start the web acceptor: %s", strerror(rc));
        return -1;
    }
    return 0;
}

void web_front_stop(void)
{
    uint64_t deadline = mono_ms() + WF_STOP_WAIT_MS;
    struct timespec ts = {.tv_nsec = 10 * 1000 * 1000};

    if (wf_listen_fd < 0)
        return;
    wf_stopping = 1;
    for (int i = 0; i < wf_nlisten; i++)
        shutdown(wf_listen_fds[i], SHUT_RDWR);
    pthread_mutex_lock(&wf_lock);
    for (int i = 0; i < WEB_FRONT_MAX_CONNS; i++)
        if (wf_slots[i].used)
            shutdown(wf_slots[i].fd, SHUT_RDWR);
    pthread_mutex_unlock(&wf_lock);
    while (wf_threads > 0 && mono_ms() < deadline)
        nanosleep(&ts, NULL);
    if (wf_threads > 0) {
        /* Not expected (every wait is bounded by WF_POLL_MS); keep the
         * listener and context rather than pull them from under a thread. */
        log_error("ev=web_front_stop_incomplete threads=%d", (int)wf_threads);
        return;
    }
    for (int i = 0; i < wf_nlisten; i++)
        close(wf_listen_fds[i]);
    wf_nlisten = 0;
    wf_listen_fd = -1;
    wf_tls_ctx = NULL;
}

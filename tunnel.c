/* tunnel.c - the relay engine shared by proxy_public and proxy_private.
 *
 * See tunnel.h for the thread model. The invariants that keep it safe:
 * - Only the reader reads the tunnel socket; every write goes through
 *   tunnel_send() under wlock. The reader never calls tunnel_send(), so a full
 *   tunnel can slow the relay threads but can never stop the reader.
 * - Per connection, the reader writes straight to the socket when nothing is
 *   queued (non-blocking, no copy) and queues the rest; the queue is bounded by
 *   our window because a peer that sends more is a protocol error.
 * - Only a connection's relay thread closes its socket, under the conn lock, so
 *   the reader never writes to a descriptor that was closed and reused. */

#include "tunnel.h"

#include <errno.h>
#include <malloc.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include "log.h"
#include "netio.h"
#include "tls_records.h"

#define CONN_BUCKETS 4096
#define RELAY_CHUNK (256 * 1024)         /* most bytes read from a socket per DATA frame */
#define RELAY_CHUNK_START (16 * 1024)    /* first buffer; grown once a read fills it */
/* Several frames' worth, so that moving a partial frame to the front (to make
 * room for the rest of it) happens once every few frames, not for each one. */
#define READ_BUF_SIZE (4 * PKT_MAX_FRAME)
#define HEARTBEAT_S 5
#define DEAD_AFTER_MS 15000
#define CONNECT_WAIT_MS 15000            /* public side: BUILD_CONNECTION -> CONNECTED */
#define DIAL_TIMEOUT_MS 10000
#define DRAIN_AFTER_CLOSE_MS 60000       /* queued data a reader has this long to take */
#define SEND_TIMEOUT_S 30                /* a tunnel that takes nothing for this long is dead */
/* All connections together may hold this much data their socket has not taken
 * yet; past it, the connection whose data does not fit is dropped. Each one is
 * already capped by its window; this caps the sum. */
#define QUEUE_BUDGET ((size_t)256 * 1024 * 1024)

static _Atomic size_t queued_total;

/* CLOSEs the reader wants sent go through the heartbeat thread: the reader
 * itself never writes to the tunnel. */
#define PENDING_CLOSE_MAX 256

struct chunk {
    struct chunk *next;
    size_t len, off;
    unsigned char data[];
};

struct conn {
    _Atomic int refs;
    uint64_t id;
    struct tunnel *t;           /* holds a reference */
    struct conn *hnext;         /* hash chain, under t->lock */
    struct app_stats *stats;    /* public side only; holds a reference */
    char *host;                 /* private side: target to dial */
    int port;
    conn_dial_fn dial;
    void *dial_arg;

    pthread_mutex_t lock;       /* everything below */
    int fd;                     /* owned by the relay thread; -1 once closed */
    pthread_t thread;
    int thread_running;
    _Atomic int sleeping;       /* the relay thread is (about to be) in ppoll; set
                                   under lock, cleared by the waker or by the thread */
    int connected;
    int peer_shut;              /* got SHUTDOWN */
    int peer_closed;            /* got CLOSE */
    int abort;                  /* drop now; reason in why */
    int reset_after;            /* peer failed: flush the queue, then reset */
    char why[64];
    _Atomic size_t inflight;    /* DATA bytes sent, not yet acknowledged: only the
                                   relay thread adds, only the reader subtracts */
    size_t rx_unacked;          /* DATA bytes received, not yet acknowledged */
    size_t ack_due;             /* of those, written to the socket */
    struct chunk *qhead, *qtail;
    size_t qbytes;
};

struct tunnel {
    _Atomic int refs;
    int fd;
    struct tls_records *tls;    /* NULL in plaintext mode; tx under wlock, rx reader's */
    unsigned char *wbuf;        /* TLS: the records of one frame, under wlock */
    int is_public;
    char name[PKT_NAME_MAX + 1];
    char addr[64];
    uint32_t my_window;
    _Atomic uint32_t peer_window;
    _Atomic int dead;
    _Atomic uint64_t next_id;

    pthread_mutex_t wlock;      /* the tunnel writer */
    pthread_mutex_t lock;       /* the connection table and hb_cond */
    pthread_cond_t hb_cond;
    struct conn *buckets[CONN_BUCKETS];
    unsigned nconns;
    char dead_reason[128];
    char peer_error[65];        /* code of an ERROR the peer sent; reader only */
    uint64_t pending_close[PENDING_CLOSE_MAX]; /* under lock; sent by the heartbeat thread */
    unsigned npending;

    unsigned char *rbuf;        /* reader thread only */
    size_t rstart, rend;
};

/* ---------------------------------------------------------------- stats */

struct app_stats *app_stats_new(void)
{
    struct app_stats *s = calloc(1, sizeof(*s));

    if (s)
        s->refs = 1;
    return s;
}

void app_stats_ref(struct app_stats *s)
{
    if (s)
        s->refs++;
}

void app_stats_unref(struct app_stats *s)
{
    if (s && --s->refs == 0)
        free(s);
}

/* --------------------------------------------------------------- signals */

static void wake_handler(int sig)
{
    (void)sig; /* only there to interrupt ppoll() */
}

void tunnel_global_init(void)
{
    struct sigaction sa;
    sigset_t set;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = wake_handler;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
}

/* ---------------------------------------------------------------- tunnel */

struct tunnel *tunnel_new(int fd, SSL *ssl, const char *name, const char *addr, int is_public)
{
    struct tunnel *t = calloc(1, sizeof(*t));
    struct timeval tv = {.tv_sec = 1};
    struct timeval stv = {.tv_sec = SEND_TIMEOUT_S};
    pthread_condattr_t ca;

    if (!t)
        return NULL;
    t->rbuf = malloc(READ_BUF_SIZE);
    if (!t->rbuf) {
        free(t);
        return NULL;
    }
    if (ssl) {
        /* OpenSSL did the handshake; the records are ours from here on. */
        char err[120];
        t->tls = tls_records_new(ssl, is_public, err, sizeof(err));
        t->wbuf = t->tls ? malloc(tls_records_seal_bound(PKT_MAX_FRAME)) : NULL;
        if (!t->wbuf) {
            log_warn("ev=tls_takeover_failed peer=%s err=\"%s\"", addr ? addr : "",
                     t->tls ? "out of memory" : err);
            tls_records_free(t->tls);
            free(t->rbuf);
            free(t);
            return NULL;
        }
        SSL_free(ssl);
    }
    t->refs = 1;
    t->fd = fd;
    t->is_public = is_public;
    t->my_window = PKT_WINDOW_DEFAULT;
    t->peer_window = PKT_WINDOW_DEFAULT;
    t->next_id = 1;
    snprintf(t->name, sizeof(t->name), "%s", name ? name : "");
    snprintf(t->addr, sizeof(t->addr), "%s", addr ? addr : "");
    pthread_mutex_init(&t->wlock, NULL);
    pthread_mutex_init(&t->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&t->hb_cond, &ca);
    pthread_condattr_destroy(&ca);
    /* The reader wakes every second to check the heartbeat deadline; a writer
     * that makes no progress for SEND_TIMEOUT_S gives up on the tunnel. */
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &stv, sizeof(stv));
    net_tune(fd);
    return t;
}

void tunnel_ref(struct tunnel *t)
{
    t->refs++;
}

void tunnel_unref(struct tunnel *t)
{
    if (!t || --t->refs > 0)
        return;
    tls_records_free(t->tls);
    close(t->fd);
    free(t->wbuf);
    pthread_mutex_destroy(&t->wlock);
    pthread_mutex_destroy(&t->lock);
    pthread_cond_destroy(&t->hb_cond);
    free(t->rbuf);
    free(t);
}

void tunnel_set_peer_window(struct tunnel *t, uint32_t window)
{
    t->peer_window = window;
}

void tunnel_set_name(struct tunnel *t, const char *name)
{
    snprintf(t->name, sizeof(t->name), "%s", name);
}

const char *tunnel_name(const struct tunnel *t)
{
    return t->name;
}

const char *tunnel_addr(const struct tunnel *t)
{
    return t->addr;
}

const char *tunnel_peer_error(const struct tunnel *t)
{
    return t->peer_error;
}

int tunnel_is_dead(const struct tunnel *t)
{
    return t->dead;
}

unsigned tunnel_conn_count(struct tunnel *t)
{
    unsigned n;

    pthread_mutex_lock(&t->lock);
    n = t->nconns;
    pthread_mutex_unlock(&t->lock);
    return n;
}

/* recv() for the reader: >0 bytes, 0 end, -1 with errno (EAGAIN: a second
 * passed with nothing, so the caller can check its deadline). */
static ssize_t tunnel_recv(struct tunnel *t, void *buf, size_t len)
{
    if (t->tls)
        return tls_records_recv(t->tls, t->fd, buf, len);
    return recv(t->fd, buf, len, 0);
}

/* writev() all of iov[] to the tunnel socket (blocking, with SO_SNDTIMEO). */
static int write_all(int fd, struct iovec *iov, int iovcnt)
{
    for (;;) {
        ssize_t w = writev(fd, iov, iovcnt);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        while (iovcnt > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            iovcnt--;
        }
        if (iovcnt == 0)
            return 0;
        iov->iov_base = (char *)iov->iov_base + w;
        iov->iov_len -= (size_t)w;
    }
}

int tunnel_send(struct tunnel *t, json_t *hdr, const void *payload, size_t len)
{
    unsigned char small[512];
    unsigned char *buf = small;
    size_t cap = sizeof(small);
    struct iovec iov[2];
    int n, iovcnt, rc = -1;

    if (!hdr)
        return -1;
    n = pkt_encode(hdr, buf, cap);
    if (n < 0) {
        cap = PKT_FRAME_PREFIX + PKT_MAX_HEADER;
        buf = malloc(cap);
        if (!buf)
            goto out;
        n = pkt_encode(hdr, buf, cap);
        if (n < 0)
            goto out;
    }
    iov[0].iov_base = buf;
    iov[0].iov_len = (size_t)n;
    iov[1].iov_base = (void *)payload;
    iov[1].iov_len = len;
    iovcnt = payload && len ? 2 : 1;

    pthread_mutex_lock(&t->wlock);
    if (!t->dead && (!t->tls || (size_t)n + len <= PKT_MAX_FRAME)) {
        if (t->tls) {
            /* Header and payload become records in wbuf: one write, and the
             * encryption is the only pass over the payload. */
            ssize_t sealed = tls_records_seal(t->tls, iov, iovcnt, t->wbuf);
            if (sealed < 0) {
                errno = EPROTO;
                goto unlock;
            }
            iov[0].iov_base = t->wbuf;
            iov[0].iov_len = (size_t)sealed;
            iovcnt = 1;
        }
        rc = write_all(t->fd, iov, iovcnt);
    }
unlock:
    pthread_mutex_unlock(&t->wlock);
    if (rc != 0 && !t->dead)
        tunnel_kill(t, errno == EAGAIN ? "peer stopped reading" : "write failed");
out:
    json_decref(hdr);
    if (buf != small)
        free(buf);
    return rc;
}

void tunnel_fail(struct tunnel *t, const char *code, const char *message)
{
    tunnel_send(t, packet(OP_ERROR, "{s:s,s:s}", "code", code, "message", message), NULL, 0);
    tunnel_kill(t, message);
}

/* ------------------------------------------------------------- conn table */

static struct conn *conn_lookup(struct tunnel *t, uint64_t id)
{
    struct conn *c;

    pthread_mutex_lock(&t->lock);
    for (c = t->buckets[id % CONN_BUCKETS]; c; c = c->hnext)
        if (c->id == id)
            break;
    if (c)
        c->refs++;
    pthread_mutex_unlock(&t->lock);
    return c;
}

/* Insert c: 0, -1 when the tunnel is already dead, -2 when the id is taken. */
static int conn_insert(struct tunnel *t, struct conn *c)
{
    struct conn *o;
    int rc = -1;

    pthread_mutex_lock(&t->lock);
    if (t->dead)
        goto out;
    for (o = t->buckets[c->id % CONN_BUCKETS]; o; o = o->hnext) {
        if (o->id == c->id) {
            rc = -2;
            goto out;
        }
    }
    c->hnext = t->buckets[c->id % CONN_BUCKETS];
    t->buckets[c->id % CONN_BUCKETS] = c;
    t->nconns++;
    c->refs++;
    rc = 0;
out:
    pthread_mutex_unlock(&t->lock);
    return rc;
}

/* Remove c from the table if it is still there; drops the table's reference. */
static void conn_remove(struct tunnel *t, struct conn *c)
{
    struct conn **pp;
    int found = 0;

    pthread_mutex_lock(&t->lock);
    for (pp = &t->buckets[c->id % CONN_BUCKETS]; *pp; pp = &(*pp)->hnext) {
        if (*pp == c) {
            *pp = c->hnext;
            t->nconns--;
            found = 1;
            break;
        }
    }
    pthread_mutex_unlock(&t->lock);
    if (found)
        c->refs--; /* the caller still holds its own reference */
}

static void conn_unref(struct conn *c)
{
    struct chunk *ch;

    if (!c || --c->refs > 0)
        return;
    while ((ch = c->qhead)) {
        c->qhead = ch->next;
        queued_total -= ch->len - ch->off;
        free(ch);
    }
    if (c->fd >= 0)
        close(c->fd);
    app_stats_unref(c->stats);
    tunnel_unref(c->t);
    pthread_mutex_destroy(&c->lock);
    free(c->host);
    free(c);
}

/* Under c->lock: make the relay thread re-examine its state. */
static void conn_wake_locked(struct conn *c)
{
    if (c->thread_running && c->sleeping) {
        c->sleeping = 0;
        pthread_kill(c->thread, SIGUSR1);
    }
}

static void conn_abort_locked(struct conn *c, const char *why)
{
    if (!c->abort) {
        c->abort = 1;
        snprintf(c->why, sizeof(c->why), "%s", why);
    }
    conn_wake_locked(c);
}

void tunnel_kill(struct tunnel *t, const char *reason)
{
    int expected = 0;

    if (!atomic_compare_exchange_strong(&t->dead, &expected, 1))
        return;
    pthread_mutex_lock(&t->lock);
    snprintf(t->dead_reason, sizeof(t->dead_reason), "%s", reason);
    pthread_cond_broadcast(&t->hb_cond);
    for (unsigned b = 0; b < CONN_BUCKETS; b++) {
        for (struct conn *c = t->buckets[b]; c; c = c->hnext) {
            pthread_mutex_lock(&c->lock);
            conn_abort_locked(c, "tunnel down");
            pthread_mutex_unlock(&c->lock);
        }
    }
    pthread_mutex_unlock(&t->lock);
    shutdown(t->fd, SHUT_RDWR);
}

/* ---------------------------------------------------------------- reader */

/* Make sure rbuf holds a whole frame; returns like pkt_parse_frame, plus 0 with
 * *eof set when the peer closed. Checks the heartbeat deadline while waiting. */
static int read_frame(struct tunnel *t, size_t max_header, uint64_t deadline_ms, struct pkt *p,
                      size_t *flen, int *eof, char *err, size_t errlen)
{
    size_t need = 0; /* bytes the frame needs, once its header told us */

    for (;;) {
        ssize_t n;

        /* Parse only when the frame can be complete: a large DATA frame arrives
         * in many reads and its header need not be decoded for each. */
        if (t->rend - t->rstart >= need) {
            int r = pkt_parse_frame(t->rbuf + t->rstart, t->rend - t->rstart, max_header, p, flen,
                                    err, errlen);
            if (r != 0)
                return r;
            need = *flen ? *flen : t->rend - t->rstart + 1;
        }
        /* Room for the whole frame: compact when the tail is too short. */
        if (t->rstart + need > READ_BUF_SIZE || t->rstart == t->rend) {
            memmove(t->rbuf, t->rbuf + t->rstart, t->rend - t->rstart);
            t->rend -= t->rstart;
            t->rstart = 0;
        }
        for (;;) {
            if (t->dead) {
                snprintf(err, errlen, "%s", "tunnel closed");
                return -1;
            }
            n = tunnel_recv(t, t->rbuf + t->rend, READ_BUF_SIZE - t->rend);
            if (n > 0)
                break;
            if (n == 0) {
                *eof = 1;
                return 0;
            }
            if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) {
                snprintf(err, errlen, "read: %s",
                         errno == EPROTO ? "TLS record malformed or not authentic (corrupted "
                                           "or forged)" : strerror(errno));
                return -1;
            }
            if (mono_ms() >= deadline_ms) {
                snprintf(err, errlen, "%s", "no frame from peer in time (peer vanished?)");
                return -1;
            }
        }
        t->rend += (size_t)n;
    }
}

int tunnel_read_handshake(struct tunnel *t, struct pkt *p, int timeout_ms, char *err,
                          size_t errlen)
{
    size_t flen = 0;
    int eof = 0;
    int r = read_frame(t, PKT_MAX_HEADER_PREAUTH, mono_ms() + (uint64_t)timeout_ms, p, &flen,
                       &eof, err, errlen);

    if (r == 1)
        t->rstart += flen;
    if (r == 0 && eof)
        snprintf(err, errlen, "%s", "peer closed the connection");
    return r == 0 ? 0 : r;
}

static void deliver_data(struct tunnel *t, struct conn *c, const struct pkt *p, int *fatal)
{
    const unsigned char *data = p->payload;
    size_t len = p->len;
    struct chunk *ch;

    pthread_mutex_lock(&c->lock);
    if (c->peer_shut || c->peer_closed) {
        *fatal = 1; /* DATA after SHUTDOWN/CLOSE: the peer is broken */
        goto out;
    }
    c->rx_unacked += len;
    if (c->rx_unacked > t->my_window) {
        *fatal = 1;
        goto out;
    }
    if (c->stats)
        c->stats->bytes_out += len;
    if (c->abort)
        goto out;
    /* Fast path: nothing queued and the socket takes it now. */
    if (!c->qhead && c->fd >= 0) {
        ssize_t w;
        do
            w = send(c->fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        while (w < 0 && errno == EINTR);
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            conn_abort_locked(c, "write to socket failed");
            goto out;
        }
        if (w > 0) {
            data += w;
            len -= (size_t)w;
            c->ack_due += (size_t)w;
        }
    }
    if (len > 0) {
        if (queued_total + len > QUEUE_BUDGET) {
            log_warn("ev=queue_budget_exceeded tunnel=%s conn=%llu queued_total=%zu",
                     t->name, (unsigned long long)c->id, (size_t)queued_total);
            conn_abort_locked(c, "too much data waiting for slow readers");
            goto out;
        }
        ch = malloc(sizeof(*ch) + len);
        if (!ch) {
            conn_abort_locked(c, "out of memory");
            goto out;
        }
        queued_total += len;
        ch->next = NULL;
        ch->len = len;
        ch->off = 0;
        memcpy(ch->data, data, len);
        if (c->qtail)
            c->qtail->next = ch;
        else
            c->qhead = ch;
        c->qtail = ch;
        c->qbytes += len;
        conn_wake_locked(c);
    } else if (c->ack_due >= t->my_window / 4) {
        conn_wake_locked(c);
    }
out:
    pthread_mutex_unlock(&c->lock);
}

/* Dispatch the operations both sides share. Returns -1 to end the tunnel. */
static int dispatch(struct tunnel *t, struct pkt *p, tunnel_op_fn fn, void *arg, char *err,
                    size_t errlen)
{
    struct conn *c = NULL;
    int fatal = 0;

    switch (p->op) {
    case OP_PING:
        return 0;
    case OP_ERROR: {
        char msg[100];
        log_escape(json_string_value(json_object_get(p->json, "code")), t->peer_error,
                   sizeof(t->peer_error));
        log_escape(json_string_value(json_object_get(p->json, "message")), msg, sizeof(msg));
        snprintf(err, errlen, "peer reported error: %s", msg);
        return -1;
    }
    case OP_DATA:
    case OP_ACK:
    case OP_SHUTDOWN:
    case OP_CLOSE:
        break;
    case OP_CONNECTED:
        if (!t->is_public)
            goto unexpected;
        break;
    case OP_BUILD_CONNECTION:
        if (t->is_public)
            goto unexpected;
        return fn ? fn(t, p, arg) : -1;
    default:
        goto unexpected;
    }

    c = conn_lookup(t, p->conn);
    if (!c)
        return 0; /* crossed a CLOSE in flight */
    if (p->op == OP_DATA) {
        deliver_data(t, c, p, &fatal);
        if (fatal)
            snprintf(err, errlen, "conn=%llu broke flow control or sent DATA after its end",
                     (unsigned long long)p->conn);
    } else {
        pthread_mutex_lock(&c->lock);
        if (p->op == OP_ACK) {
            if (p->len > atomic_load(&c->inflight)) {
                fatal = 1;
                snprintf(err, errlen, "conn=%llu acknowledged more than was sent",
                         (unsigned long long)p->conn);
            } else {
                c->inflight -= p->len;
            }
        } else if (p->op == OP_SHUTDOWN) {
            c->peer_shut = 1;
        } else if (p->op == OP_CONNECTED) {
            c->connected = 1;
        } else { /* CLOSE */
            const char *why = json_string_value(json_object_get(p->json, "reason"));
            c->peer_closed = 1;
            if (!c->connected) {
                char esc[48];
                conn_abort_locked(c, log_escape(why ? why : "refused", esc, sizeof(esc)));
            } else if (why && strcmp(why, "done") != 0) {
                /* The far end failed: still deliver what it sent before,
                 * then reset our side too. */
                c->reset_after = 1;
            }
        }
        conn_wake_locked(c);
        pthread_mutex_unlock(&c->lock);
    }
    conn_unref(c);
    return fatal ? -1 : 0;

unexpected:
    snprintf(err, errlen, "unexpected op %s after the handshake", op_name(p->op));
    return -1;
}

void tunnel_run(struct tunnel *t, tunnel_op_fn fn, void *arg, char *why, size_t whylen)
{
    char err[160] = "";

    while (!t->dead) {
        struct pkt p;
        size_t flen = 0;
        int eof = 0;
        int r = read_frame(t, PKT_MAX_HEADER, mono_ms() + DEAD_AFTER_MS, &p, &flen, &eof, err,
                           sizeof(err));
        if (r == 0) {
            snprintf(err, sizeof(err), "%s", "peer closed the tunnel");
            break;
        }
        if (r < 0)
            break;
        r = dispatch(t, &p, fn, arg, err, sizeof(err));
        t->rstart += flen;
        pkt_clear(&p);
        if (r < 0)
            break;
    }
    pthread_mutex_lock(&t->lock);
    if (t->dead && t->dead_reason[0])
        snprintf(err, sizeof(err), "%s", t->dead_reason);
    pthread_mutex_unlock(&t->lock);
    tunnel_kill(t, err);
    snprintf(why, whylen, "%s", err);
}

/* ------------------------------------------------------------- heartbeat */

/* Queue a CLOSE for conn id from the reader; the heartbeat thread sends it. */
static void tunnel_defer_close(struct tunnel *t, uint64_t id)
{
    int full;

    pthread_mutex_lock(&t->lock);
    full = t->npending >= PENDING_CLOSE_MAX;
    if (!full)
        t->pending_close[t->npending++] = id;
    pthread_cond_broadcast(&t->hb_cond);
    pthread_mutex_unlock(&t->lock);
    if (full)
        tunnel_kill(t, "cannot start connections");
}

static void *heartbeat_main(void *arg)
{
    struct tunnel *t = arg;
    uint64_t closes[PENDING_CLOSE_MAX];
    unsigned beats = 0;

    pthread_setname_np(pthread_self(), "heartbeat");
    pthread_mutex_lock(&t->lock);
    while (!t->dead) {
        struct timespec ts;
        unsigned n;
        int beat = 0;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += HEARTBEAT_S;
        while (!t->dead && !t->npending) {
            if (pthread_cond_timedwait(&t->hb_cond, &t->lock, &ts) != 0) {
                beat = 1;
                break;
            }
        }
        if (t->dead)
            break;
        n = t->npending;
        memcpy(closes, t->pending_close, n * sizeof(closes[0]));
        t->npending = 0;
        pthread_mutex_unlock(&t->lock);
        for (unsigned i = 0; i < n; i++)
            tunnel_send(t, packet(OP_CLOSE, "{s:I,s:s}", "conn", (json_int_t)closes[i], "reason",
                                  "cannot start connection"), NULL, 0);
        if (beat) {
            tunnel_send(t, packet(OP_PING, NULL), NULL, 0);
            /* Give back what a burst of connections left free in malloc's arenas. */
            if (++beats % 12 == 0)
                malloc_trim(0);
        }
        pthread_mutex_lock(&t->lock);
    }
    pthread_mutex_unlock(&t->lock);
    tunnel_unref(t);
    return NULL;
}

int tunnel_wait_idle(struct tunnel *t, int timeout_ms)
{
    uint64_t deadline = mono_ms() + (uint64_t)timeout_ms;

    while (t->refs > 1) {
        struct timespec ts = {.tv_nsec = 10 * 1000 * 1000};
        if (mono_ms() >= deadline)
            return -1;
        nanosleep(&ts, NULL);
    }
    return 0;
}

int tunnel_start_heartbeat(struct tunnel *t)
{
    int rc;

    tunnel_ref(t);
    rc = thread_spawn(heartbeat_main, t);
    if (rc != 0)
        tunnel_unref(t);
    return rc;
}

/* ----------------------------------------------------------------- relay */

/* Send ACK for what was written to the socket; called by the relay thread. */
static int send_ack(struct conn *c, size_t n)
{
    return tunnel_send(c->t, packet(OP_ACK, "{s:I,s:I}", "conn", (json_int_t)c->id, "bytes",
                                    (json_int_t)n), NULL, 0);
}

/* Write queued chunks to the socket until it would block. Under c->lock. */
static void flush_queue_locked(struct conn *c)
{
    struct chunk *ch;

    while ((ch = c->qhead)) {
        ssize_t w = send(c->fd, ch->data + ch->off, ch->len - ch->off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                conn_abort_locked(c, "write to socket failed");
            return;
        }
        ch->off += (size_t)w;
        c->qbytes -= (size_t)w;
        queued_total -= (size_t)w;
        c->ack_due += (size_t)w;
        if (ch->off < ch->len)
            return;
        c->qhead = ch->next;
        if (!c->qhead)
            c->qtail = NULL;
        free(ch);
    }
}

/* The relay loop of one connected socket. Returns the reason it ended and
 * whether that was an orderly end. */
static int relay(struct conn *c, const char **why)
{
    struct tunnel *t = c->t;
    /* Most connections move little: start with a small buffer and grow it the
     * first time a read fills it, so idle connections cost little memory. */
    size_t bufsize = RELAY_CHUNK_START;
    unsigned char *buf = malloc(bufsize);
    int local_eof = 0, wr_shut = 0, rc = -1;
    uint64_t connect_deadline = mono_ms() + CONNECT_WAIT_MS, drain_deadline = 0;
    sigset_t waitmask;

    if (!buf) {
        *why = "out of memory";
        return -1;
    }
    pthread_sigmask(SIG_SETMASK, NULL, &waitmask);
    sigdelset(&waitmask, SIGUSR1);

    for (;;) {
        struct pollfd pfd = {.fd = c->fd, .events = 0};
        struct timespec ts = {.tv_sec = 1}, *tsp = NULL;
        size_t ack = 0, room = 0;
        int want_read;

        pthread_mutex_lock(&c->lock);
        if (c->abort) {
            *why = c->why;
            pthread_mutex_unlock(&c->lock);
            goto out;
        }
        if (c->qhead)
            flush_queue_locked(c);
        if (c->ack_due >= t->my_window / 4) {
            ack = c->ack_due;
            c->ack_due = 0;
            c->rx_unacked -= ack;
        }
        if (!c->qhead && c->peer_shut && !wr_shut) {
            shutdown(c->fd, SHUT_WR);
            wr_shut = 1;
        }
        if (local_eof && !c->qhead && (c->peer_shut || c->peer_closed) && !ack) {
            *why = "done";
            rc = 0;
            pthread_mutex_unlock(&c->lock);
            break;
        }
        if (c->peer_closed && !c->qhead && !ack) {
            *why = c->reset_after ? "peer reset" : "done";
            rc = 0;
            pthread_mutex_unlock(&c->lock);
            break;
        }
        if (c->peer_closed) {
            /* Nothing more will come: give our socket a while to take the
             * rest, then give up on a reader that has stopped. */
            uint64_t now = mono_ms();
            if (!drain_deadline)
                drain_deadline = now + DRAIN_AFTER_CLOSE_MS;
            if (now >= drain_deadline) {
                *why = "the far end closed and this side stopped reading";
                pthread_mutex_unlock(&c->lock);
                goto out;
            }
            tsp = &ts;
        }
        if (c->inflight < t->peer_window)
            room = t->peer_window - c->inflight;
        /* The public side reads its client before CONNECTED: the private side
         * holds that data until the target answers, which saves a round trip
         * for protocols where the client speaks first. */
        want_read = !local_eof && room > 0;
        if (want_read)
            pfd.events |= POLLIN;
        if (c->qhead)
            pfd.events |= POLLOUT;
        if (!c->connected) {
            uint64_t now = mono_ms();
            if (now >= connect_deadline) {
                *why = "no answer from the private side";
                pthread_mutex_unlock(&c->lock);
                goto out;
            }
            tsp = &ts;
        }
        if (!ack)
            c->sleeping = 1;
        pthread_mutex_unlock(&c->lock);

        if (ack) {
            if (send_ack(c, ack) != 0)
                goto out;
            continue;
        }
        if (pfd.events == 0)
            pfd.fd = -1; /* nothing to wait for on the socket: just the wake signal */
        if (ppoll(&pfd, 1, tsp, &waitmask) < 0) {
            if (errno == EINTR)
                continue;
            *why = "poll failed";
            goto out;
        }
        /* No lock for these two: taking c->lock here would often wait for the
         * reader, which holds it while it writes to our socket. A waker that
         * still sees sleeping set only sends one spare SIGUSR1. */
        atomic_store(&c->sleeping, 0);

        if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
            if (!want_read) {
                if (pfd.revents & POLLERR) {
                    *why = "socket error";
                    goto out;
                }
                continue;
            }
            size_t want = room < bufsize ? room : bufsize;
            ssize_t n = recv(c->fd, buf, want, MSG_DONTWAIT);
            if (n > 0) {
                atomic_fetch_add(&c->inflight, (size_t)n);
                if (c->stats)
                    c->stats->bytes_in += (uint64_t)n;
                if (tunnel_send(t, packet(OP_DATA, "{s:I,s:I}", "conn", (json_int_t)c->id,
                                          "len", (json_int_t)n),
                                buf, (size_t)n) != 0) {
                    *why = "tunnel down";
                    goto out;
                }
                if ((size_t)n == bufsize && bufsize < RELAY_CHUNK) {
                    unsigned char *bigger = malloc(RELAY_CHUNK);
                    if (bigger) {
                        free(buf);
                        buf = bigger;
                        bufsize = RELAY_CHUNK;
                    }
                }
            } else if (n == 0) {
                local_eof = 1;
                if (tunnel_send(t, packet(OP_SHUTDOWN, "{s:I}", "conn", (json_int_t)c->id), NULL,
                                0) != 0) {
                    *why = "tunnel down";
                    goto out;
                }
            } else if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) {
                *why = "connection reset";
                goto out;
            }
        }
    }
out:
    free(buf);
    return rc;
}

/* Close the socket, leave the table, tell the peer. Drops the thread's ref. */
static void conn_finish(struct conn *c, int orderly, const char *why)
{
    struct tunnel *t = c->t;
    int tell_peer, connected;
    char esc[64];

    pthread_mutex_lock(&c->lock);
    if (c->reset_after)
        orderly = 0;
    if (c->fd >= 0) {
        if (!orderly) {
            /* Reset rather than FIN, so the other end sees the failure. */
            struct linger lg = {.l_onoff = 1, .l_linger = 0};
            (void)setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        }
        close(c->fd);
        c->fd = -1;
    }
    c->thread_running = 0;
    tell_peer = !c->peer_closed && !t->dead;
    connected = c->connected;
    pthread_mutex_unlock(&c->lock);

    conn_remove(t, c);
    if (tell_peer)
        tunnel_send(t, packet(OP_CLOSE, "{s:I,s:s}", "conn", (json_int_t)c->id, "reason",
                              orderly ? "done" : log_escape(why, esc, sizeof(esc))),
                    NULL, 0);
    if (c->stats)
        c->stats->active--;
    if (t->is_public && !connected)
        log_warn("ev=conn_failed tunnel=%s conn=%llu reason=\"%s\"", t->name,
                 (unsigned long long)c->id, log_escape(why, esc, sizeof(esc)));
    else
        log_debug("ev=conn_closed tunnel=%s conn=%llu reason=\"%s\"", t->name,
                  (unsigned long long)c->id, log_escape(why, esc, sizeof(esc)));
    conn_unref(c);
}

static void conn_thread_begin(struct conn *c, const char *name)
{
    pthread_setname_np(pthread_self(), name);
    pthread_mutex_lock(&c->lock);
    c->thread = pthread_self();
    c->thread_running = 1;
    pthread_mutex_unlock(&c->lock);
}

static void *public_conn_main(void *arg)
{
    struct conn *c = arg;
    const char *why = "";
    int rc;

    conn_thread_begin(c, "relay-pub");
    rc = relay(c, &why);
    if (rc != 0 && c->stats) {
        pthread_mutex_lock(&c->lock);
        if (!c->connected)
            c->stats->failures++;
        pthread_mutex_unlock(&c->lock);
    }
    conn_finish(c, rc == 0, why);
    return NULL;
}

static struct conn *conn_new(struct tunnel *t, uint64_t id, int fd)
{
    struct conn *c = calloc(1, sizeof(*c));

    if (!c)
        return NULL;
    c->refs = 1;
    c->id = id;
    c->fd = fd;
    c->t = t;
    tunnel_ref(t);
    pthread_mutex_init(&c->lock, NULL);
    return c;
}

int conn_start_public(struct tunnel *t, int client_fd, const char *app, const char *host,
                      int port, struct app_stats *stats)
{
    uint64_t id = t->next_id++;
    struct conn *c = conn_new(t, id, client_fd);
    int rc;

    if (!c) {
        close(client_fd);
        return -1;
    }
    net_tune(client_fd);
    net_set_nonblock(client_fd, 1);
    c->stats = stats;
    app_stats_ref(stats);
    if (stats) {
        stats->total++;
        stats->active++;
    }
    if (conn_insert(t, c) != 0)
        goto fail;
    if (tunnel_send(t, packet(OP_BUILD_CONNECTION, "{s:I,s:s,s:s,s:i}", "conn", (json_int_t)id,
                              "app", app, "target_host", host, "target_port", port),
                    NULL, 0) != 0) {
        conn_remove(t, c);
        goto fail;
    }
    rc = thread_spawn(public_conn_main, c);
    if (rc != 0) {
        log_error("ev=thread_failed conn=%llu err=\"%s\"", (unsigned long long)id, strerror(rc));
        pthread_mutex_lock(&c->lock);
        c->thread_running = 0;
        pthread_mutex_unlock(&c->lock);
        conn_remove(t, c);
        tunnel_send(t, packet(OP_CLOSE, "{s:I,s:s}", "conn", (json_int_t)id, "reason",
                              "out of threads"), NULL, 0);
        goto fail;
    }
    return 0;
fail:
    if (stats) {
        stats->active--;
        stats->failures++;
    }
    conn_unref(c); /* closes client_fd */
    return -1;
}

static void *private_conn_main(void *arg)
{
    struct conn *c = arg;
    char err[128] = "";
    const char *why = err;
    int fd, rc = -1;

    conn_thread_begin(c, "relay-priv");
    fd = c->dial(c->host, c->port, DIAL_TIMEOUT_MS, err, sizeof(err), c->dial_arg);
    if (fd < 0) {
        char esc[64];
        log_warn("ev=dial_failed tunnel=%s conn=%llu target=%s:%d err=\"%s\"", c->t->name,
                 (unsigned long long)c->id, log_escape(c->host, esc, sizeof(esc)), c->port, err);
        goto out;
    }
    net_tune(fd);
    net_set_nonblock(fd, 1);
    pthread_mutex_lock(&c->lock);
    c->fd = fd;
    c->connected = 1;
    pthread_mutex_unlock(&c->lock);
    if (tunnel_send(c->t, packet(OP_CONNECTED, "{s:I}", "conn", (json_int_t)c->id), NULL, 0) != 0) {
        why = "tunnel down";
        goto out;
    }
    rc = relay(c, &why);
out:
    conn_finish(c, rc == 0, why);
    return NULL;
}

int conn_start_private(struct tunnel *t, uint64_t id, const char *host, int port,
                       conn_dial_fn dial, void *arg)
{
    struct conn *c = conn_new(t, id, -1);
    int rc;

    if (!c)
        goto fail;
    c->host = strdup(host);
    c->port = port;
    c->dial = dial;
    c->dial_arg = arg;
    if (!c->host)
        goto fail;
    rc = conn_insert(t, c);
    if (rc == -2) {
        conn_unref(c);
        return -2; /* the public side reused a live id: a broken peer */
    }
    if (rc != 0)
        goto fail;
    rc = thread_spawn(private_conn_main, c);
    if (rc != 0) {
        log_error("ev=thread_failed conn=%llu err=\"%s\"", (unsigned long long)id, strerror(rc));
        conn_remove(t, c);
        goto fail;
    }
    return 0;
fail:
    conn_unref(c);
    tunnel_defer_close(t, id);
    return -1;
}

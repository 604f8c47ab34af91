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
 *   the reader never writes to a descriptor that was closed and reused.
 *
 * Resumption (protocol version 2). The tunnel object is the session; the TCP
 * connection (with its TLS) is its current link, which may break and be
 * replaced. While no link is up the session is SUSPENDED: relay threads stop
 * reading their sockets (the kernel's windows hold the senders back), nothing
 * is dropped. A new link (tunnel_offer_link) makes it RESUMING: each side has
 * sent, first thing on the new link, a RESUME list of what it received and
 * delivered of every connection; when the peer's list is complete the session
 * is UP again and every relay thread first replays what the peer lacks (its
 * BUILD_CONNECTION or CONNECTED, DATA from the offset the peer received,
 * SHUTDOWN), then goes on. All of a connection's frames are sent by its own
 * relay thread, in order, so a replay can never overtake or follow new data.
 * DATA a relay sends is retained until the peer acknowledges it (ACK carries
 * the cumulative count): within the window per connection and RETAIN_BUDGET in
 * all; a connection that cannot retain is not resumable and is closed when the
 * link breaks. */

#include "tunnel.h"

#include <errno.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include "log.h"
#include "tcp_info.h"
#include "netio.h"
#include "tls_io.h"
#include "ftp_data.h"
#include "udp.h"

#define CONN_BUCKETS 4096
#define RELAY_CHUNK (256 * 1024)         /* most bytes read from a socket per DATA frame */
#define RELAY_CHUNK_START (16 * 1024)    /* first buffer; grown once a read fills it */
/* Room kept in front of relay buffers for the frame header, so that a DATA
 * frame goes to TLS as one piece without copying its payload. */
#define HEADROOM 128
/* Several frames' worth, so that moving a partial frame to the front (to make
 * room for the rest of it) happens once every few frames, not for each one. */
#define READ_BUF_SIZE (4 * PKT_MAX_FRAME)
#define HEARTBEAT_S 5
#define DEAD_AFTER_MS 15000
#define CONNECT_WAIT_MS 15000            /* public side: BUILD_CONNECTION -> CONNECTED */
#define DIAL_TIMEOUT_MS 10000
#define DRAIN_AFTER_CLOSE_MS 60000       /* queued data a reader has this long to take */
#define SEND_TIMEOUT_S 30                /* a tunnel that takes nothing for this long is dead */
#define WRITE_POLL_MS 250                /* TLS writers waiting for room look at `dead` this often */
/* The kernel says a link is broken when what it sent stays unacknowledged
 * this long (TCP_USER_TIMEOUT): a silent cut is found before the 15 s rule. */
#define LINK_USER_TIMEOUT_MS 10000
/* All connections together may hold this much memory for data their socket
 * has not taken yet; past it, the connection whose data does not fit is
 * dropped. Each one is already capped by its window; this caps the sum. What
 * counts is what is allocated (chunk headers and the allocator's own overhead
 * included), not the payload bytes: 1-byte frames cost what they really cost. */
#define QUEUE_BUDGET ((size_t)256 * 1024 * 1024)
/* Queued data lives in chunks of at least this size; small payloads are
 * appended to the last chunk instead of getting one each. */
#define CHUNK_MIN (16 * 1024)
#define MALLOC_OVERHEAD 16               /* glibc's header per allocation, rounded */
/* Sent data kept for a resume, all connections together (counted like the
 * queue: what is allocated). A connection whose data would not fit stops
 * being resumable. */
#define RETAIN_BUDGET ((size_t)512 * 1024 * 1024) /* default of --resume-memory */
#define RETAIN_MIN (4 * 1024)            /* smallest chunk of retained data */
#define RESUME_PER_FRAME 1000            /* connections per RESUME frame (< 64 KiB) */

static _Atomic size_t queued_total;
static _Atomic size_t retained_total;
static size_t retain_budget = RETAIN_BUDGET;

void tunnel_set_retain_budget(size_t bytes)
{
    retain_budget = bytes;
}

/* CLOSEs the reader wants sent go through the heartbeat thread: the reader
 * itself never writes to the tunnel. */
#define PENDING_CLOSE_MAX 4096

/* RESUME entry flags: what the sender of the entry has of the connection. */
#define RF_SHUT_IN 1        /* it received the other side's SHUTDOWN */
#define RF_CONNECTED 2      /* public: it received CONNECTED; private: it is connected */

enum tstate { T_UP, T_SUSPENDED, T_RESUMING };

struct chunk {
    struct chunk *next;
    size_t len, off, cap;       /* data[off..len) is still to be written */
    unsigned char data[];
};

/* Sent data kept until acknowledged: data[0..len) is the stream from offset
 * start. A relay buffer is one too (room is its frame headroom): a full read
 * is handed over as it is instead of being copied. */
struct rchunk {
    struct rchunk *next;
    uint64_t start;
    size_t len, cap;
    unsigned char room[HEADROOM];
    unsigned char data[];
};

struct conn {
    _Atomic int refs;
    uint64_t id;
    struct tunnel *t;           /* holds a reference */
    struct conn *hnext;         /* hash chain, under t->lock */
    struct app_stats *stats;    /* public side only; holds a reference */
    char *host;                 /* target: the private dials it, the public asks for it */
    char *app;                  /* public side: the app's name, for BUILD_CONNECTION */
    int port;
    conn_dial_fn dial;
    void *dial_arg;

    pthread_mutex_t lock;       /* everything below */
    int fd;                     /* owned by the relay thread; -1 once closed */
    pthread_t thread;
    int thread_running;
    _Atomic int sleeping;       /* the relay thread is (about to be) in ppoll; set
                                   under lock, cleared by the waker or by the thread */
    int built;                  /* public: BUILD_CONNECTION sent */
    int connected;
    int local_eof;              /* our socket reached end of stream (SHUTDOWN to send) */
    int peer_shut;              /* got SHUTDOWN */
    int peer_closed;            /* got CLOSE */
    int abort;                  /* drop now; reason in why */
    int reset_after;            /* peer failed: flush the queue, then reset */
    char why[PKT_REASON_MAX + 1]; /* whole, as CLOSE may carry it */
    _Atomic size_t inflight;    /* DATA bytes sent, not yet acknowledged: only the
                                   relay thread adds, only the reader subtracts */
    size_t rx_unacked;          /* DATA bytes received, not yet acknowledged */
    size_t ack_due;             /* of those, written to the socket */
    uint64_t rx_total;          /* DATA bytes received, ever */
    uint64_t acked_total;       /* of those, acknowledged to the peer */
    _Atomic uint64_t tx_sent;   /* DATA bytes sent, ever (relay) */
    uint64_t tx_acked;          /* of those, acknowledged by the peer (reader) */
    struct chunk *qhead, *qtail;
    size_t qbytes;              /* payload bytes queued */
    size_t qalloc;              /* memory the queue holds (counted in queued_total) */
    /* Resumption */
    int resumable;              /* retains what it sends; survives a broken link */
    struct rchunk *rhead, *rtail; /* retained [tx_acked, tx_sent) */
    size_t ralloc;              /* counted in retained_total */
    int await_resume;           /* the link broke: send nothing until the peer's list is in */
    int resume_pending;         /* the peer's RESUME list is in: replay, then go on */
    int ack_nudge;              /* the heartbeat asks for an ACK of what is due */
    int peer_has;               /* ... and it listed this connection: */
    uint64_t peer_received, peer_delivered;
    int peer_flags;
    struct conn_opts opts;      /* FTP: what it is; the hook run when it is freed */
    /* Public side (version 6): the client's address and the one it reached,
     * for BUILD_CONNECTION's "client" and "server". Private side: what to
     * write to the target before the client's bytes (a PROXY header). */
    char client_addr[64], server_addr[64];
    unsigned char *prefix;
    size_t prefix_len;
    time_t since;               /* wall clock of its start, for /connections */
};

/* A CLOSE the reader asked the heartbeat thread to send. */
struct pending_close {
    uint64_t conn;
    const char *reason;         /* a string literal */
};

/* One TCP connection (with its TLS) carrying the session's frames. */
struct tunnel_link {
    int fd;
    struct tls_io *tls;         /* NULL in plaintext mode */
    unsigned char *rbuf;
    size_t rstart, rend;
    char addr[64];
};

struct tunnel {
    _Atomic int refs;
    int is_public;
    int tls;                    /* TLS or plaintext: the same on every link */
    char addr[64];              /* the current link's peer, under lock */
    char tls_mode[8];           /* "off", "on" or "ktls", under lock */
    char name[PKT_NAME_MAX + 1];
    char owner[32];             /* public: the scoped token's id, "" for the admin */
    uint32_t my_window;
    _Atomic uint32_t peer_window;
    _Atomic int dead;
    _Atomic uint64_t next_id;
    _Atomic int version;        /* negotiated protocol version */
    _Atomic unsigned grace_ms;  /* resume grace; 0: a broken link ends the session */
    char session_id[TUNNEL_SESSION_ID_LEN + 1];
    unsigned char resume_token[32];

    pthread_mutex_t wlock;      /* the tunnel writer: link.fd/link.tls for writing */
    unsigned char *tls_batch;   /* under wlock: small frames sealed into one record */
    pthread_mutex_t lock;       /* the connection table, state, hb_cond, link_cond */
    pthread_cond_t hb_cond;
    pthread_cond_t link_cond;
    _Atomic int state;          /* enum tstate */
    _Atomic int link_ok;        /* writers may use link (set under wlock) */
    int link_wfailed;           /* a write on link failed (under wlock) */
    uint64_t suspended_ms;      /* mono_ms() when it became SUSPENDED */
    time_t suspended_since;     /* wall clock of the same, for /list */
    struct tunnel_link link;    /* the current link; reader's, writers under wlock */
    struct tunnel_link *next_link; /* offered, not yet installed (under lock) */
    _Atomic int final;          /* the peer ended the session on purpose */
    struct conn *buckets[CONN_BUCKETS];
    unsigned nconns;
    char dead_reason[128];
    char peer_error[65];        /* code of an ERROR the peer sent; reader only */
    struct pending_close pending[PENDING_CLOSE_MAX]; /* under lock; sent by the heartbeat */
    unsigned npending;
    struct tunnel_resume_stats rs; /* under lock */
    _Atomic uint64_t link_epoch;   /* +1 for each new link (under wlock) */
    struct udp_tun *udp;
    /* UDP against backlogged TCP (fair_udp_write): */
    _Atomic int64_t udp_credit;    /* TCP bytes sent, not yet matched by UDP */
    _Atomic uint64_t tcp_sent_ms;  /* mono_ms() of the last DATA write */
    _Atomic uint64_t tcp_full_ms;  /* mono_ms() when a relay was last backlogged */
    uint64_t look_ms, look_acked;  /* the link's last look at TCP_INFO; under wlock */
    int cpu_short;                 /* what it saw; under wlock */
};

static void conn_abort_locked(struct conn *c, const char *why);
static void conn_wake_locked(struct conn *c);

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
    if (s && --s->refs == 0) {
        app_stats_unref(s->ftp_data);
        free(s);
    }
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

/* ---------------------------------------------------------------- links */

/* A link on fd (and ssl, when not NULL): buffers, socket options. On failure
 * (-1) fd and ssl stay the caller's. */
static int link_init(struct tunnel_link *l, int fd, SSL *ssl, const char *addr)
{
    struct timeval tv = {.tv_sec = 1};
    struct timeval stv = {.tv_sec = SEND_TIMEOUT_S};
    unsigned user_timeout = LINK_USER_TIMEOUT_MS;

    memset(l, 0, sizeof(*l));
    l->fd = -1;
    l->rbuf = malloc(READ_BUF_SIZE);
    if (!l->rbuf)
        return -1;
    if (ssl) {
        char err[120];
        l->tls = tls_io_new(ssl, fd, err, sizeof(err));
        if (!l->tls) {
            log_warn("ev=tls_setup_failed peer=%s err=\"%s\"", addr ? addr : "", err);
            free(l->rbuf);
            l->rbuf = NULL;
            return -1;
        }
    }
    l->fd = fd;
    snprintf(l->addr, sizeof(l->addr), "%s", addr ? addr : "");
    /* The reader wakes every second to check its deadlines (TLS: the same,
     * set by tls_io_new); a plaintext writer that makes no progress for
     * SEND_TIMEOUT_S gives up on the link (TLS writers wait in poll()). */
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &stv, sizeof(stv));
    (void)setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof(user_timeout));
    net_tune(fd);
    return 0;
}

/* Close the link's socket and free its parts. */
static void link_release(struct tunnel_link *l)
{
    tls_io_free(l->tls);
    l->tls = NULL;
    if (l->fd >= 0)
        close(l->fd);
    l->fd = -1;
    free(l->rbuf);
    l->rbuf = NULL;
    l->rstart = l->rend = 0;
}

void tunnel_link_free(struct tunnel_link *l)
{
    if (l) {
        link_release(l);
        free(l);
    }
}

/* ---------------------------------------------------------------- tunnel */

struct tunnel *tunnel_new(int fd, SSL *ssl, const char *name, const char *addr, int is_public)
{
    struct tunnel *t = calloc(1, sizeof(*t));
    pthread_condattr_t ca;

    if (!t)
        return NULL;
    t->udp = udp_tun_new(t, is_public);
    if (!t->udp || link_init(&t->link, fd, ssl, addr) != 0) {
        udp_tun_free(t->udp);
        free(t);
        return NULL;
    }
    t->refs = 1;
    t->is_public = is_public;
    t->tls = ssl != NULL;
    snprintf(t->addr, sizeof(t->addr), "%s", t->link.addr);
    snprintf(t->tls_mode, sizeof(t->tls_mode), "%s",
             !t->link.tls ? "off" : tls_io_ktls(t->link.tls) ? "ktls" : "on");
    t->my_window = PKT_WINDOW_DEFAULT;
    t->peer_window = PKT_WINDOW_DEFAULT;
    t->next_id = 1;
    t->version = 1;
    t->state = T_UP;
    t->link_ok = 1;
    snprintf(t->name, sizeof(t->name), "%s", name ? name : "");
    pthread_mutex_init(&t->wlock, NULL);
    pthread_mutex_init(&t->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&t->hb_cond, &ca);
    pthread_cond_init(&t->link_cond, &ca);
    pthread_condattr_destroy(&ca);
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
    link_release(&t->link);
    tunnel_link_free(t->next_link);
    free(t->tls_batch);
    udp_tun_free(t->udp);
    pthread_mutex_destroy(&t->wlock);
    pthread_mutex_destroy(&t->lock);
    pthread_cond_destroy(&t->hb_cond);
    pthread_cond_destroy(&t->link_cond);
    OPENSSL_cleanse(t->resume_token, sizeof(t->resume_token));
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

void tunnel_set_owner(struct tunnel *t, const char *owner)
{
    snprintf(t->owner, sizeof(t->owner), "%s", owner);
}

const char *tunnel_owner(const struct tunnel *t)
{
    return t->owner;
}

const char *tunnel_addr(struct tunnel *t, char *buf, size_t cap)
{
    pthread_mutex_lock(&t->lock);
    snprintf(buf, cap, "%s", t->addr);
    pthread_mutex_unlock(&t->lock);
    return buf;
}

const char *tunnel_peer_error(const struct tunnel *t)
{
    return t->peer_error;
}

const char *tunnel_tls_mode(const struct tunnel *t)
{
    return t->tls_mode; /* set once: a TLS tunnel's links all get the same mode here */
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

void tunnel_set_version(struct tunnel *t, int version, unsigned grace_s)
{
    t->version = version;
    t->grace_ms = version >= 2 ? grace_s * 1000u : 0;
}

int tunnel_version(const struct tunnel *t)
{
    return t->version;
}

unsigned tunnel_grace_s(const struct tunnel *t)
{
    return t->grace_ms / 1000u;
}

static void hex_encode(const unsigned char *in, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";

    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[in[i] >> 4];
        out[2 * i + 1] = hex[in[i] & 15];
    }
    out[2 * n] = '\0';
}

/* Parse 2n hex digits into out; 0 or -1. */
static int hex_decode(const char *in, unsigned char *out, size_t n)
{
    if (!in || strlen(in) != 2 * n)
        return -1;
    for (size_t i = 0; i < 2 * n; i++) {
        char c = in[i];
        int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (v < 0)
            return -1;
        if (i % 2 == 0)
            out[i / 2] = (unsigned char)(v << 4);
        else
            out[i / 2] |= (unsigned char)v;
    }
    return 0;
}

int tunnel_new_session(struct tunnel *t, char token_hex[TUNNEL_TOKEN_HEX_LEN + 1])
{
    unsigned char id[TUNNEL_SESSION_ID_LEN / 2];

    if (getrandom(id, sizeof(id), 0) != (ssize_t)sizeof(id))
        return -1;
    hex_encode(id, sizeof(id), t->session_id);
    return tunnel_rotate_token(t, token_hex);
}

int tunnel_rotate_token(struct tunnel *t, char token_hex[TUNNEL_TOKEN_HEX_LEN + 1])
{
    if (getrandom(t->resume_token, sizeof(t->resume_token), 0) != (ssize_t)sizeof(t->resume_token))
        return -1;
    hex_encode(t->resume_token, sizeof(t->resume_token), token_hex);
    return 0;
}

int tunnel_set_session(struct tunnel *t, const char *session_id, const char *token_hex)
{
    unsigned char tok[32];

    if (!session_id || strlen(session_id) != TUNNEL_SESSION_ID_LEN ||
        hex_decode(token_hex, tok, sizeof(tok)) != 0)
        return -1;
    snprintf(t->session_id, sizeof(t->session_id), "%s", session_id);
    memcpy(t->resume_token, tok, sizeof(tok));
    OPENSSL_cleanse(tok, sizeof(tok));
    return 0;
}

const char *tunnel_session_id(const struct tunnel *t)
{
    return t->session_id;
}

void tunnel_resume_token(const struct tunnel *t, char token_hex[TUNNEL_TOKEN_HEX_LEN + 1])
{
    hex_encode(t->resume_token, sizeof(t->resume_token), token_hex);
}

int tunnel_resume_matches(const struct tunnel *t, const char *session_id, const char *token_hex)
{
    unsigned char tok[32];
    int ok;

    if (!t->session_id[0] || !session_id || strcmp(session_id, t->session_id) != 0 ||
        hex_decode(token_hex, tok, sizeof(tok)) != 0)
        return 0;
    ok = CRYPTO_memcmp(tok, t->resume_token, sizeof(tok)) == 0;
    OPENSSL_cleanse(tok, sizeof(tok));
    return ok;
}

int tunnel_resumable(const struct tunnel *t)
{
    return t->version >= 2 && t->grace_ms > 0 && !t->dead;
}

void tunnel_resume_info(struct tunnel *t, struct tunnel_resume_stats *out)
{
    pthread_mutex_lock(&t->lock);
    *out = t->rs;
    out->suspended_since = t->state == T_SUSPENDED && !t->dead ? t->suspended_since : 0;
    pthread_mutex_unlock(&t->lock);
}

/* ---------------------------------------------------------------- writer */

/* writev() all of iov[] to the plaintext tunnel socket (blocking, with SO_SNDTIMEO). */
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

/* TLS: encrypt one frame and send it, waiting (in poll, never inside OpenSSL)
 * while the socket is full; gives up after SEND_TIMEOUT_S without progress or
 * when the link is given up. Under wlock. 0 or -1 with errno. */
static int tls_write_frame(struct tunnel *t, const unsigned char *frame, size_t len)
{
    uint64_t give_up = mono_ms() + SEND_TIMEOUT_S * 1000u;
    int r = tls_io_write(t->link.tls, frame, len);

    while (r == 0) {
        struct pollfd pfd = {.fd = t->link.fd, .events = POLLOUT};
        if (t->dead || !t->link_ok) {
            errno = EPIPE;
            return -1;
        }
        if (mono_ms() >= give_up) {
            errno = EAGAIN;
            return -1;
        }
        if (poll(&pfd, 1, WRITE_POLL_MS) > 0) {
            r = tls_io_flush(t->link.tls);
            give_up = mono_ms() + SEND_TIMEOUT_S * 1000u;
        }
    }
    return r > 0 ? 0 : -1;
}

static void link_broken(struct tunnel *t, const char *reason);

/* A write on the link failed (under wlock, with link_ok set): say so before
 * letting go of wlock, so that a reader that sees the stream end next knows
 * the end is not the peer's (link_ended_by_peer). The caller then calls
 * link_broken with the reason. NULL when the reader already found the TLS
 * stream forged or ended by an alert: the write failed because of that, and
 * the reader reports it (and ends the session: such a stream is not resumed). */
static const char *writer_failed_locked(struct tunnel *t, int e)
{
    if (t->link.tls && tls_io_read_failed(t->link.tls))
        return NULL;
    t->link_wfailed = 1;
    return e == EAGAIN ? "peer stopped reading" : "write failed";
}

/* Plaintext of one TLS record: frames smaller than half of it are sealed
 * together (a batch of datagrams costs one SSL_write and one send()). */
#define TLS_BATCH_MAX 16384

/* TLS: write the frames of iov, consecutive small ones copied into one
 * record. Under wlock. */
static int tls_write_frames(struct tunnel *t, struct iovec *iov, int iovcnt)
{
    size_t fill = 0;
    int rc = 0;

    if (iovcnt > 1 && !t->tls_batch)
        t->tls_batch = malloc(TLS_BATCH_MAX); /* NULL: one record a frame */
    for (int i = 0; i < iovcnt && rc == 0; i++) {
        size_t n = iov[i].iov_len;
        if (!t->tls_batch || iovcnt == 1 || n > TLS_BATCH_MAX / 2) {
            if (fill)
                rc = tls_write_frame(t, t->tls_batch, fill);
            fill = 0;
            if (rc == 0)
                rc = tls_write_frame(t, iov[i].iov_base, n);
            continue;
        }
        if (fill + n > TLS_BATCH_MAX) {
            rc = tls_write_frame(t, t->tls_batch, fill);
            fill = 0;
        }
        memcpy(t->tls_batch + fill, iov[i].iov_base, n);
        fill += n;
    }
    if (rc == 0 && fill)
        rc = tls_write_frame(t, t->tls_batch, fill);
    return rc;
}

/* Write the frames of iov on the link. Under wlock. 0; or -1, and when that
 * broke the link *broken says why: the caller calls link_broken with it
 * after wlock. */
static int link_write_locked(struct tunnel *t, struct iovec *iov, int iovcnt,
                             const char **broken)
{
    int rc = 0;

    *broken = NULL;
    if (t->link.tls) {
        rc = tls_write_frames(t, iov, iovcnt);
    } else {
        rc = write_all(t->link.fd, iov, iovcnt);
    }
    if (rc != 0 && t->link_ok)
        *broken = writer_failed_locked(t, errno);
    return rc;
}

/* Fairness between UDP and TCP on one link. A UDP flood must not take the
 * link, or the CPU that relays it, from TCP connections. While TCP data is
 * backlogged (a relay's reads have filled its whole buffer for
 * FAIR_BACKLOG_MS in a row, within the last FAIR_TCP_BUSY_MS: its sender has
 * more than the tunnel carries), UDP may send only what TCP earned for it,
 * byte for byte. What a datagram costs depends on what TCP is short of:
 * - the network (the link is full and the path carries what it can): its
 *   frame's bytes, so both get the same share of the link;
 * - the CPU (the link has room, so this side's relaying is the bottleneck;
 *   or it is full while the path could carry more than twice what it
 *   carries: the peer's): twice its frame's bytes plus UDP_DGRAM_COST, what
 *   relaying one datagram costs the machines beyond its bytes compared with
 *   TCP bytes (the system calls and the kernel's work per packet at each
 *   end, its header to encode and parse): UDP gets half of TCP's share of
 *   the CPU, since what sends and receives a flood takes CPU too, which this
 *   count cannot see.
 * UDP that cannot be sent waits in its sessions' queues, where the oldest are
 * dropped (udp.c). Beside TCP that is not backlogged (a slow download, an
 * interactive session, a burst), or with no TCP data, UDP goes freely.
 * Under wlock, except the atomics. */
#define FAIR_TCP_BUSY_MS 100
#define FAIR_BACKLOG_MS 20
/* At least what the uplink's largest batch costs (udp.c: 64 datagrams of
 * up to 96 KiB together, each UDP_DGRAM_COST more, doubled), or it would
 * never go. */
#define FAIR_CREDIT_MAX (4 << 20)
#define FAIR_LOOK_MS 50
#define FAIR_CPU_SHARE 2

static int link_has_room(struct tunnel *t, size_t len);

static void fair_tcp_wrote(struct tunnel *t, size_t len)
{
    int64_t c = atomic_load_explicit(&t->udp_credit, memory_order_relaxed) + (int64_t)len;

    atomic_store_explicit(&t->udp_credit, c > FAIR_CREDIT_MAX ? FAIR_CREDIT_MAX : c,
                          memory_order_relaxed);
    atomic_store_explicit(&t->tcp_sent_ms, mono_ms(), memory_order_relaxed);
}

static int tcp_busy(struct tunnel *t, uint64_t now)
{
    return now - atomic_load_explicit(&t->tcp_sent_ms, memory_order_relaxed) < FAIR_TCP_BUSY_MS;
}

static int tcp_backlogged(struct tunnel *t, uint64_t now)
{
    return now - atomic_load_explicit(&t->tcp_full_ms, memory_order_relaxed) < FAIR_TCP_BUSY_MS;
}

/* A relay has been reading full buffers of TCP data for FAIR_BACKLOG_MS. */
static void tunnel_tcp_backlogged(struct tunnel *t)
{
    atomic_store_explicit(&t->tcp_full_ms, mono_ms(), memory_order_relaxed);
}

/* Whether a full link is full for want of CPU, not of network: the path
 * delivered, at its latest, more than twice what was acknowledged since the
 * last look (at most one look per FAIR_LOOK_MS), so the peer, or the kernel
 * on its way, does not take what the path could carry. */
static int cpu_short_locked(struct tunnel *t, uint64_t now)
{
    uint64_t acked, rate, dt = now - t->look_ms;

    if (t->look_ms && dt < FAIR_LOOK_MS)
        return t->cpu_short;
    if (tcp_send_rates(t->link.fd, &acked, &rate) != 0)
        return t->cpu_short = 0;
    t->cpu_short = t->look_ms && acked >= t->look_acked &&
                   rate / 2 > (acked - t->look_acked) * 1000 / (dt ? dt : 1);
    t->look_ms = now;
    t->look_acked = acked;
    return t->cpu_short;
}

/* Whether UDP frames of len bytes carrying ndgram datagrams may be written
 * now (and then their cost is paid; frames of no datagram, closes, always
 * go). room: 1 when the caller has just seen the link has room for them,
 * else 0. */
static int fair_udp_write(struct tunnel *t, size_t len, unsigned ndgram, int room)
{
    uint64_t now = mono_ms();
    int64_t credit = atomic_load_explicit(&t->udp_credit, memory_order_relaxed), cost;

    if (ndgram == 0 || !tcp_busy(t, now) || !tcp_backlogged(t, now))
        return 1;
    cost = (int64_t)len;
    if (room || link_has_room(t, len) || cpu_short_locked(t, now))
        cost = FAIR_CPU_SHARE * (cost + (int64_t)ndgram * UDP_DGRAM_COST);
    if (credit < cost)
        return 0;
    atomic_store_explicit(&t->udp_credit, credit - cost, memory_order_relaxed);
    return 1;
}

int tunnel_tcp_busy(struct tunnel *t)
{
    return tcp_busy(t, mono_ms());
}

int tunnel_udp_throttled(struct tunnel *t)
{
    uint64_t now = mono_ms();

    return tcp_busy(t, now) && tcp_backlogged(t, now) &&
           atomic_load_explicit(&t->udp_credit, memory_order_relaxed) <= 0;
}

/* Send the frame whose encoded header is hdr[0..n) and payload[0..len): the
 * payload may have `headroom` writable bytes in front of it, and then a TLS
 * frame's header that fits goes there and the frame is one piece. */
static int send_encoded(struct tunnel *t, const unsigned char *hdr, size_t n,
                        unsigned char *payload, size_t len, size_t headroom)
{
    const unsigned char *frame = hdr;
    unsigned char *copy = NULL;
    const char *broken = NULL;
    int rc = -1, tls;

    if (!payload)
        len = 0;
    tls = t->tls;
    if (tls && len && n <= headroom) {
        frame = payload - n;
        memcpy(payload - n, hdr, n);
    } else if (tls && len) {
        /* One SSL_write per frame: one record for small frames. */
        if (n + len > PKT_MAX_FRAME)
            return -1;
        frame = copy = malloc(n + len);
        if (!copy)
            return -1;
        memcpy(copy, hdr, n);
        memcpy(copy + n, payload, len);
    }

    pthread_mutex_lock(&t->wlock);
    errno = EPIPE;
    if (!t->dead && t->link_ok) {
        struct iovec iov[2] = {{(void *)hdr, n}, {payload, len}};
        if (t->link.tls) {
            iov[0].iov_base = (void *)frame;
            iov[0].iov_len = n + len;
        }
        rc = link_write_locked(t, iov, t->link.tls || !len ? 1 : 2, &broken);
        if (rc == 0 && len)
            fair_tcp_wrote(t, len);
    }
    pthread_mutex_unlock(&t->wlock);
    if (broken)
        link_broken(t, broken);
    free(copy);
    return rc;
}

/* tunnel_send, with send_encoded's headroom. */
static int tunnel_send_ex(struct tunnel *t, json_t *hdr, unsigned char *payload, size_t len,
                          size_t headroom)
{
    unsigned char small[512];
    unsigned char *buf = small;
    int n, rc = -1;

    if (!hdr)
        return -1;
    n = pkt_encode(hdr, buf, sizeof(small));
    if (n < 0) {
        buf = malloc(PKT_FRAME_PREFIX + PKT_MAX_HEADER);
        if (!buf)
            goto out;
        n = pkt_encode(hdr, buf, PKT_FRAME_PREFIX + PKT_MAX_HEADER);
        if (n < 0)
            goto out;
    }
    rc = send_encoded(t, buf, (size_t)n, payload, len, headroom);
out:
    json_decref(hdr);
    if (buf != small)
        free(buf);
    return rc;
}

int tunnel_send_frames(struct tunnel *t, const unsigned char *frames, size_t len,
                       unsigned ndgram, uint64_t epoch)
{
    const char *broken = NULL;
    int rc = -1;

    pthread_mutex_lock(&t->wlock);
    if (!t->dead && t->link_ok && t->link_epoch == epoch) {
        if (!fair_udp_write(t, len, ndgram, 0)) {
            pthread_mutex_unlock(&t->wlock);
            return 1;
        }
        struct iovec iov = {(void *)frames, len};
        rc = link_write_locked(t, &iov, 1, &broken);
    }
    pthread_mutex_unlock(&t->wlock);
    if (broken)
        link_broken(t, broken);
    return rc;
}

/* Whether the link's socket surely takes len more bytes now (so a write of
 * them does not wait): what its send queue holds, against half its buffer
 * (the kernel counts its own overhead in the other half). Under wlock. */
static int link_has_room(struct tunnel *t, size_t len)
{
    int outq = 0, sndbuf = 0;
    socklen_t sl = sizeof(sndbuf);

    if (ioctl(t->link.fd, SIOCOUTQ, &outq) != 0 ||
        getsockopt(t->link.fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, &sl) != 0 || outq < 0)
        return 0;
    /* TLS adds 22 bytes per record of at most 16 KiB. */
    return (size_t)outq + len + len / 512 + 64 < (size_t)sndbuf / 2;
}

int tunnel_try_send_frames(struct tunnel *t, struct iovec *iov, int iovcnt, unsigned ndgram,
                           uint64_t epoch)
{
    const char *broken;
    size_t len = 0;
    int rc;

    for (int i = 0; i < iovcnt; i++)
        len += iov[i].iov_len;

    if (pthread_mutex_trylock(&t->wlock) != 0)
        return 1;
    if (t->dead || !t->link_ok || t->link_epoch != epoch) {
        pthread_mutex_unlock(&t->wlock);
        return -1;
    }
    if (!link_has_room(t, len)) {
        pthread_mutex_unlock(&t->wlock);
        return 1;
    }
    if (!fair_udp_write(t, len, ndgram, 1)) {
        pthread_mutex_unlock(&t->wlock);
        return 1;
    }
    rc = link_write_locked(t, iov, iovcnt, &broken);
    pthread_mutex_unlock(&t->wlock);
    if (broken)
        link_broken(t, broken);
    return rc;
}

uint64_t tunnel_link_epoch(struct tunnel *t)
{
    return t->link_epoch;
}

struct udp_tun *tunnel_udp(struct tunnel *t)
{
    return t->udp;
}

int tunnel_send(struct tunnel *t, json_t *hdr, const void *payload, size_t len)
{
    return tunnel_send_ex(t, hdr, (unsigned char *)payload, len, 0);
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

/* Idle relay-sized buffers (RELAY_CHUNK), kept for the next relay that
 * needs one. A resumable connection hands each full read's buffer to its
 * retention list and takes another; the reader frees it when the peer has
 * acknowledged it. Straight from malloc, such buffers came with pages the
 * allocator had given back by trimming: every byte sent cost a page fault
 * (about 200,000 minor faults in 4 s of TLS bulk on the sending side, with
 * resumption off none). At most BUF_POOL_MAX wait here (8 MiB). */
#define BUF_POOL_MAX 32
static pthread_mutex_t buf_pool_lock = PTHREAD_MUTEX_INITIALIZER;
static struct rchunk *buf_pool;
static unsigned buf_pool_n;

static struct rchunk *relay_buf_get(void)
{
    struct rchunk *r;

    pthread_mutex_lock(&buf_pool_lock);
    r = buf_pool;
    if (r) {
        buf_pool = r->next;
        buf_pool_n--;
    }
    pthread_mutex_unlock(&buf_pool_lock);
    return r ? r : malloc(sizeof(*r) + RELAY_CHUNK);
}

/* Free r, whose data holds cap bytes; a relay-sized one may wait in the pool. */
static void rchunk_free(struct rchunk *r, size_t cap)
{
    if (r && cap == RELAY_CHUNK) {
        pthread_mutex_lock(&buf_pool_lock);
        if (buf_pool_n < BUF_POOL_MAX) {
            r->next = buf_pool;
            buf_pool = r;
            buf_pool_n++;
            r = NULL;
        }
        pthread_mutex_unlock(&buf_pool_lock);
    }
    free(r);
}

/* Under c->lock: drop every retained chunk. */
static void retain_drop_locked(struct conn *c)
{
    struct rchunk *r;

    while ((r = c->rhead)) {
        c->rhead = r->next;
        rchunk_free(r, r->cap);
    }
    c->rtail = NULL;
    retained_total -= c->ralloc;
    c->ralloc = 0;
}

static void conn_unref(struct conn *c)
{
    struct chunk *ch;

    if (!c || --c->refs > 0)
        return;
    while ((ch = c->qhead)) {
        c->qhead = ch->next;
        free(ch);
    }
    queued_total -= c->qalloc;
    retain_drop_locked(c);
    if (c->fd >= 0)
        close(c->fd);
    app_stats_unref(c->stats);
    if (c->opts.on_end)
        c->opts.on_end(c->opts.end_arg);
    tunnel_unref(c->t);
    pthread_mutex_destroy(&c->lock);
    free(c->host);
    free(c->app);
    free(c->prefix);
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

/* Give up on the current link: writers stop using it and the reader's next
 * read fails. The reader releases it. */
static void link_stop(struct tunnel *t)
{
    pthread_mutex_lock(&t->wlock);
    t->link_ok = 0;
    if (t->link.fd >= 0)
        shutdown(t->link.fd, SHUT_RDWR);
    pthread_mutex_unlock(&t->wlock);
}

void tunnel_kill(struct tunnel *t, const char *reason)
{
    int expected = 0;

    if (!atomic_compare_exchange_strong(&t->dead, &expected, 1))
        return;
    pthread_mutex_lock(&t->lock);
    snprintf(t->dead_reason, sizeof(t->dead_reason), "%s", reason);
    pthread_cond_broadcast(&t->hb_cond);
    pthread_cond_broadcast(&t->link_cond);
    for (unsigned b = 0; b < CONN_BUCKETS; b++) {
        for (struct conn *c = t->buckets[b]; c; c = c->hnext) {
            pthread_mutex_lock(&c->lock);
            /* A client that waited for a resume that never came. */
            conn_abort_locked(c, t->is_public && !c->built ? "private proxy offline"
                                                           : "tunnel down");
            pthread_mutex_unlock(&c->lock);
        }
    }
    pthread_mutex_unlock(&t->lock);
    udp_tun_kill(t->udp);
    /* TLS says goodbye with close_notify, when no writer is in the middle of
     * a frame (it would come first) and without waiting for the socket. */
    if (pthread_mutex_trylock(&t->wlock) == 0) {
        if (t->link.tls && t->link_ok)
            tls_io_close_notify(t->link.tls);
        t->link_ok = 0;
        if (t->link.fd >= 0)
            shutdown(t->link.fd, SHUT_RDWR);
        pthread_mutex_unlock(&t->wlock);
    } else {
        link_stop(t);
    }
}

/* The link broke (a write failed, or the reader found it broken): suspend the
 * session when it can resume, else end it. */
static void link_broken(struct tunnel *t, const char *reason)
{
    char esc[100];
    unsigned lost = 0;

    if (!tunnel_resumable(t) || t->final) {
        tunnel_kill(t, reason);
        return;
    }
    pthread_mutex_lock(&t->lock);
    if (t->dead || t->state == T_SUSPENDED) {
        pthread_mutex_unlock(&t->lock);
        link_stop(t);
        return;
    }
    t->state = T_SUSPENDED;
    t->suspended_ms = mono_ms();
    t->suspended_since = time(NULL);
    t->rs.suspensions++;
    for (unsigned b = 0; b < CONN_BUCKETS; b++) {
        for (struct conn *c = t->buckets[b]; c; c = c->hnext) {
            pthread_mutex_lock(&c->lock);
            if (!c->resumable) {
                conn_abort_locked(c, "tunnel down; cannot resume: too much unacked data");
                lost++;
            } else {
                c->await_resume = 1;
                conn_wake_locked(c); /* stop reading the socket */
            }
            pthread_mutex_unlock(&c->lock);
        }
    }
    t->rs.conns_lost += lost;
    pthread_mutex_unlock(&t->lock);
    link_stop(t);
    log_warn("ev=tunnel_suspended name=%s reason=\"%s\" conns=%u not_resumable=%u grace_s=%u",
             t->name, log_escape(reason, esc, sizeof(esc)), tunnel_conn_count(t), lost,
             t->grace_ms / 1000u);
}

/* ---------------------------------------------------------------- reader */

/* The reader saw the stream end (or end without close_notify): whether the
 * peer ended it, rather than the network or our own side. A reset is told
 * once, to whoever asks first: when a writer met it, the reader sees a plain
 * end afterwards, and the writer has already called it a break of the link
 * (writer_failed_locked, under wlock, which orders the two). Otherwise the end
 * is the peer's unless we gave the link up ourselves. */
static int link_ended_by_peer(struct tunnel *t)
{
    int r;

    pthread_mutex_lock(&t->wlock);
    r = !t->link_wfailed && t->link_ok;
    pthread_mutex_unlock(&t->wlock);
    return r;
}

/* Read more of the stream into rbuf. Waits at most until deadline_ms, and
 * at most idle_ms after the call without a byte of plaintext; both are looked
 * at on every turn, so a peer that trickles bytes (or TLS records without
 * data) gains nothing. >0 bytes read, 0 end of stream (*eof), -1 with err. */
static ssize_t tunnel_fill(struct tunnel *t, uint64_t deadline_ms, unsigned idle_ms, int *eof,
                           char *err, size_t errlen)
{
    struct tunnel_link *l = &t->link;
    uint64_t start = mono_ms();

    if (idle_ms && start + idle_ms < deadline_ms)
        deadline_ms = start + idle_ms;
    for (;;) {
        unsigned char *dst = l->rbuf + l->rend;
        size_t room = READ_BUF_SIZE - l->rend;
        uint64_t now = mono_ms();
        ssize_t n;

        if (t->dead || !t->link_ok) {
            snprintf(err, errlen, "%s", t->dead ? "tunnel closed" : "link given up");
            return -1;
        }
        if (now >= deadline_ms) {
            snprintf(err, errlen, "%s", idle_ms ? "no frame from peer in time (peer vanished?)"
                                                : "handshake not finished in time");
            return -1;
        }
        if (l->tls) {
            n = tls_io_read(l->tls, dst, room); /* waits at most TLS_IO_WAIT_MS */
        } else {
            n = recv(l->fd, dst, room, 0); /* SO_RCVTIMEO: at most a second */
        }
        if (n > 0)
            return n;
        /* (Unless we gave the link up ourselves: then our own shutdown()
         * is what ended the stream.) */
        if (n == 0) {
            *eof = 1;
            if (link_ended_by_peer(t))
                t->final = 1; /* the peer closed on purpose, or its process died */
            return 0;
        }
        if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
            continue;
        /* A stream ended without close_notify (the peer's process died), a
         * refused record or an alert: no point in resuming. A reset or a
         * timeout may be the network: resumable. */
        if ((errno == EPIPE || errno == EPROTO || errno == EBADMSG) && link_ended_by_peer(t))
            t->final = 1;
        if (l->tls) {
            char why[160];
            snprintf(err, errlen, "read: %s", tls_io_error(l->tls, why, sizeof(why)));
        } else {
            snprintf(err, errlen, "read: %s", strerror(errno));
        }
        return -1;
    }
}

/* Make sure rbuf holds a whole frame; returns like pkt_parse_frame, plus 0 with
 * *eof set when the peer closed. Deadlines as for tunnel_fill. */
static int read_frame(struct tunnel *t, size_t max_header, uint64_t deadline_ms, unsigned idle_ms,
                      struct pkt *p, size_t *flen, int *eof, char *err, size_t errlen)
{
    struct tunnel_link *l = &t->link;
    size_t need = 0; /* bytes the frame needs, once its header told us */

    for (;;) {
        ssize_t n;

        /* Parse only when the frame can be complete: a large DATA frame arrives
         * in many reads and its header need not be decoded for each. */
        if (l->rend - l->rstart >= need) {
            int r = pkt_parse_frame(l->rbuf + l->rstart, l->rend - l->rstart, max_header, p,
                                    flen, err, errlen);
            if (r != 0)
                return r;
            need = *flen ? *flen : l->rend - l->rstart + 1;
        }
        /* Room for the whole frame: compact when the tail is too short. */
        if (l->rstart + need > READ_BUF_SIZE || l->rstart == l->rend) {
            memmove(l->rbuf, l->rbuf + l->rstart, l->rend - l->rstart);
            l->rend -= l->rstart;
            l->rstart = 0;
        }
        n = tunnel_fill(t, deadline_ms, idle_ms, eof, err, errlen);
        if (n <= 0)
            return (int)n;
        l->rend += (size_t)n;
    }
}

int tunnel_read_handshake(struct tunnel *t, struct pkt *p, uint64_t deadline_ms, char *err,
                          size_t errlen)
{
    size_t flen = 0;
    int eof = 0;
    int r = read_frame(t, PKT_MAX_HEADER_PREAUTH, deadline_ms, 0, p, &flen, &eof, err, errlen);

    if (r == 1)
        t->link.rstart += flen;
    if (r == 0 && eof)
        snprintf(err, errlen, "%s", "peer closed the connection");
    return r == 0 ? 0 : r;
}

/* Queue data[0..len) for c's socket, under c->lock: first into the room left
 * in the last chunk, the rest into one new chunk of at least CHUNK_MIN. The
 * memory is counted against QUEUE_BUDGET; a connection that would go past it
 * is dropped. 0, or -1 when c was aborted. */
static int queue_append_locked(struct conn *c, const unsigned char *data, size_t len)
{
    struct chunk *tail = c->qtail, *ch;
    size_t cap, cost;

    if (tail && tail->cap > tail->len) {
        size_t take = tail->cap - tail->len < len ? tail->cap - tail->len : len;
        memcpy(tail->data + tail->len, data, take);
        tail->len += take;
        c->qbytes += take;
        data += take;
        len -= take;
    }
    if (len == 0)
        return 0;
    cap = len < CHUNK_MIN ? CHUNK_MIN : len;
    cost = sizeof(*ch) + cap + MALLOC_OVERHEAD;
    if (queued_total + cost > QUEUE_BUDGET) {
        log_warn("ev=queue_budget_exceeded tunnel=%s conn=%llu queued_total=%zu", c->t->name,
                 (unsigned long long)c->id, (size_t)queued_total);
        conn_abort_locked(c, "too much data waiting for slow readers");
        return -1;
    }
    ch = malloc(sizeof(*ch) + cap);
    if (!ch) {
        conn_abort_locked(c, "out of memory");
        return -1;
    }
    queued_total += cost;
    c->qalloc += cost;
    ch->next = NULL;
    ch->len = len;
    ch->off = 0;
    ch->cap = cap;
    memcpy(ch->data, data, len);
    if (tail)
        tail->next = ch;
    else
        c->qhead = ch;
    c->qtail = ch;
    c->qbytes += len;
    return 0;
}

static void deliver_data(struct tunnel *t, struct conn *c, const struct pkt *p, int *fatal)
{
    const unsigned char *data = p->payload;
    size_t len = p->len;

    pthread_mutex_lock(&c->lock);
    if (c->peer_shut || c->peer_closed) {
        *fatal = 1; /* DATA after SHUTDOWN/CLOSE: the peer is broken */
        goto out;
    }
    c->rx_unacked += len;
    c->rx_total += len;
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
        if (queue_append_locked(c, data, len) != 0)
            goto out;
        conn_wake_locked(c);
    } else if (c->ack_due >= t->my_window / 4) {
        conn_wake_locked(c);
    }
out:
    pthread_mutex_unlock(&c->lock);
}

/* Under c->lock: the peer has everything up to total; free what it covers. */
static void ack_to_locked(struct conn *c, uint64_t total)
{
    struct rchunk *r;

    if (total <= c->tx_acked)
        return;
    c->inflight -= (size_t)(total - c->tx_acked);
    c->tx_acked = total;
    /* Fully acknowledged chunks go, the last one too: an idle connection
     * keeps nothing. */
    while ((r = c->rhead) && r->start + r->len <= total) {
        size_t cost = sizeof(*r) + r->cap + MALLOC_OVERHEAD;
        c->rhead = r->next;
        if (!c->rhead)
            c->rtail = NULL;
        rchunk_free(r, r->cap);
        retained_total -= cost;
        c->ralloc -= cost;
    }
}

/* One RESUME frame from the peer: what it holds of each connection. */
static int dispatch_resume(struct tunnel *t, struct pkt *p, char *err, size_t errlen)
{
    json_t *conns = json_object_get(p->json, "conns"), *e;
    size_t i;

    if (t->state != T_RESUMING) {
        snprintf(err, errlen, "RESUME outside a resumed handshake");
        return -1;
    }
    json_array_foreach(conns, i, e) {
        uint64_t id = (uint64_t)json_integer_value(json_array_get(e, 0));
        uint64_t received = (uint64_t)json_integer_value(json_array_get(e, 1));
        uint64_t delivered = (uint64_t)json_integer_value(json_array_get(e, 2));
        int flags = (int)json_integer_value(json_array_get(e, 3));
        struct conn *c = conn_lookup(t, id);
        if (!c) {
            /* One we closed and whose CLOSE was lost: tell it again. A
             * connection the public side never saw CONNECTED for is one the
             * private never got BUILD_CONNECTION for: it is built again. */
            if (!t->is_public && !(flags & RF_CONNECTED))
                continue;
            pthread_mutex_lock(&t->lock);
            if (t->npending < PENDING_CLOSE_MAX) {
                t->pending[t->npending].conn = id;
                t->pending[t->npending++].reason = "closed while the tunnel was down";
            }
            pthread_mutex_unlock(&t->lock);
            continue;
        }
        pthread_mutex_lock(&c->lock);
        if (received > c->tx_sent || delivered > received) {
            pthread_mutex_unlock(&c->lock);
            conn_unref(c);
            snprintf(err, errlen, "RESUME: conn=%llu claims more than was sent",
                     (unsigned long long)id);
            return -1;
        }
        c->peer_has = 1;
        c->peer_received = received;
        c->peer_delivered = delivered;
        c->peer_flags = flags;
        ack_to_locked(c, delivered);
        pthread_mutex_unlock(&c->lock);
        conn_unref(c);
    }
    if (!json_is_true(json_object_get(p->json, "last")))
        return 0;
    /* The peer's list is complete: every connection replays what it lacks.
     * UP first: a relay woken here must see it (each one still waits for its
     * own await_resume to clear, under its lock). */
    pthread_mutex_lock(&t->lock);
    t->state = T_UP;
    for (unsigned b = 0; b < CONN_BUCKETS; b++) {
        for (struct conn *c = t->buckets[b]; c; c = c->hnext) {
            pthread_mutex_lock(&c->lock);
            c->await_resume = 0;
            if (!c->peer_has && (!t->is_public || c->connected)) {
                conn_abort_locked(c, "closed by the far end while the tunnel was down");
                t->rs.conns_lost++;
            } else {
                c->resume_pending = 1;
                t->rs.conns_resumed++;
                conn_wake_locked(c);
            }
            pthread_mutex_unlock(&c->lock);
        }
    }
    t->rs.resumes++;
    pthread_cond_broadcast(&t->hb_cond); /* deferred CLOSEs may go now */
    pthread_mutex_unlock(&t->lock);
    log_info("ev=tunnel_resumed name=%s peer=%s conns=%u", t->name, t->link.addr,
             tunnel_conn_count(t));
    return 0;
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
        t->final = 1;
        return -1;
    }
    case OP_RESUME:
        return dispatch_resume(t, p, err, errlen);
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
    case OP_UDP_DATA:
    case OP_UDP_CLOSE:
        if (t->version < PKT_PROTO_UDP)
            goto unexpected;
        return udp_dispatch(t->udp, p, err, errlen);
    case OP_FTP_OPEN:
    case OP_FTP_OPENED:
    case OP_FTP_CONNECT:
    case OP_FTP_TLS:
        if (t->version < PKT_PROTO_FTP)
            goto unexpected;
        return ftp_dispatch(t, t->is_public, p, err, errlen);
    case OP_APPS:
    case OP_APPS_RESULT:
        if (t->version < PKT_PROTO_APPS || t->is_public != (p->op == OP_APPS) || !fn)
            goto unexpected;
        return fn(t, p, arg);
    case OP_NODES:
        if (t->version < PKT_PROTO_CLUSTER || t->is_public || !fn)
            goto unexpected;
        return fn(t, p, arg);
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
            json_t *total = json_object_get(p->json, "total");
            uint64_t to = total ? (uint64_t)json_integer_value(total) : c->tx_acked + p->len;
            if (to > c->tx_sent) {
                fatal = 1;
                snprintf(err, errlen, "conn=%llu acknowledged more than was sent",
                         (unsigned long long)p->conn);
            } else {
                ack_to_locked(c, to);
            }
        } else if (p->op == OP_SHUTDOWN) {
            c->peer_shut = 1;
        } else if (p->op == OP_CONNECTED) {
            c->connected = 1;
        } else { /* CLOSE */
            const char *why = json_string_value(json_object_get(p->json, "reason"));
            c->peer_closed = 1;
            if (!c->connected) {
                char esc[PKT_REASON_MAX + 1];
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

/* Put the offered link in place of the released one. */
static int install_next_link(struct tunnel *t)
{
    struct tunnel_link *l;

    pthread_mutex_lock(&t->lock);
    l = t->next_link;
    t->next_link = NULL;
    pthread_mutex_unlock(&t->lock);
    if (!l)
        return -1;
    /* Before the new epoch: a UDP batch made for the old link is not sent on
     * this one, and the next ones open their sessions again. */
    udp_tun_relinked(t->udp);
    pthread_mutex_lock(&t->wlock);
    link_release(&t->link);
    t->link = *l;
    t->link_epoch++;
    t->link_ok = 1;
    t->link_wfailed = 0;
    pthread_mutex_unlock(&t->wlock);
    free(l);
    pthread_mutex_lock(&t->lock);
    if (!t->dead)
        t->state = T_RESUMING;
    snprintf(t->addr, sizeof(t->addr), "%s", t->link.addr);
    /* Whatever a list on an earlier link said no longer counts. */
    for (unsigned b = 0; b < CONN_BUCKETS; b++) {
        for (struct conn *c = t->buckets[b]; c; c = c->hnext) {
            pthread_mutex_lock(&c->lock);
            c->peer_has = 0;
            c->resume_pending = 0;
            pthread_mutex_unlock(&c->lock);
        }
    }
    pthread_mutex_unlock(&t->lock);
    return 0;
}

enum tunnel_end tunnel_run(struct tunnel *t, tunnel_op_fn fn, void *arg, char *why,
                           size_t whylen)
{
    char err[160] = "";
    int eof = 0;

    if (t->state == T_SUSPENDED && install_next_link(t) != 0) {
        snprintf(why, whylen, "%s", "no link to resume on");
        return TUNNEL_SUSPENDED;
    }
    while (!t->dead) {
        struct pkt p;
        size_t flen = 0;
        int r = read_frame(t, PKT_MAX_HEADER, UINT64_MAX, DEAD_AFTER_MS, &p, &flen, &eof, err,
                           sizeof(err));
        if (r == 0) {
            snprintf(err, sizeof(err), "%s", "peer closed the tunnel");
            break;
        }
        if (r < 0)
            break;
        r = dispatch(t, &p, fn, arg, err, sizeof(err));
        t->link.rstart += flen;
        pkt_clear(&p);
        if (r < 0) {
            t->final = 1; /* a protocol error: no point in resuming */
            break;
        }
    }
    pthread_mutex_lock(&t->lock);
    if (t->dead && t->dead_reason[0])
        snprintf(err, sizeof(err), "%s", t->dead_reason);
    pthread_mutex_unlock(&t->lock);
    snprintf(why, whylen, "%s", err);
    link_broken(t, err);
    /* The link is done with: its socket closes here, by its reader. */
    pthread_mutex_lock(&t->wlock);
    t->link_ok = 0;
    if (t->link.tls)
        tls_io_free(t->link.tls);
    t->link.tls = NULL;
    if (t->link.fd >= 0)
        close(t->link.fd);
    t->link.fd = -1;
    t->link.rstart = t->link.rend = 0;
    pthread_mutex_unlock(&t->wlock);
    return t->dead ? TUNNEL_ENDED : TUNNEL_SUSPENDED;
}

int tunnel_wait_link(struct tunnel *t, uint64_t deadline_ms)
{
    int rc = -1;

    pthread_mutex_lock(&t->lock);
    for (;;) {
        struct timespec ts;
        uint64_t now = mono_ms();
        if (t->dead)
            break;
        if (t->next_link) {
            rc = 0;
            break;
        }
        if (now >= deadline_ms)
            break;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += (time_t)((deadline_ms - now) / 1000u);
        ts.tv_nsec += (long)((deadline_ms - now) % 1000u) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&t->link_cond, &t->lock, &ts);
    }
    pthread_mutex_unlock(&t->lock);
    return rc;
}

uint64_t tunnel_grace_deadline(struct tunnel *t)
{
    uint64_t d;

    pthread_mutex_lock(&t->lock);
    d = t->suspended_ms + t->grace_ms;
    pthread_mutex_unlock(&t->lock);
    return d;
}

struct tunnel_link *tunnel_take_link(struct tunnel *t)
{
    struct tunnel_link *l = malloc(sizeof(*l));

    if (!l)
        return NULL;
    pthread_mutex_lock(&t->wlock);
    *l = t->link;
    memset(&t->link, 0, sizeof(t->link));
    t->link.fd = -1;
    t->link_ok = 0;
    pthread_mutex_unlock(&t->wlock);
    return l;
}

int tunnel_offer_link(struct tunnel *t, struct tunnel_link *l)
{
    int up;

    pthread_mutex_lock(&t->lock);
    if (t->dead) {
        pthread_mutex_unlock(&t->lock);
        tunnel_link_free(l);
        return -1;
    }
    tunnel_link_free(t->next_link);
    t->next_link = l;
    up = t->state != T_SUSPENDED;
    pthread_cond_broadcast(&t->link_cond);
    pthread_mutex_unlock(&t->lock);
    /* The old link may still look alive here (a NAT changed the home's
     * address, say): it is given up now, so the reader takes the new one. */
    if (up)
        link_broken(t, "a resumed link replaced it");
    return 0;
}

int tunnel_send_resume_list(struct tunnel *t, struct tunnel *via)
{
    struct entry {
        uint64_t id, received, delivered;
        int flags;
    } *e = NULL;
    size_t n = 0, i = 0;
    int rc = -1;

    /* A snapshot of the table first; the frames go out without any lock. */
    pthread_mutex_lock(&t->lock);
    e = malloc((t->nconns ? t->nconns : 1) * sizeof(*e));
    for (unsigned b = 0; e && b < CONN_BUCKETS; b++) {
        for (struct conn *c = t->buckets[b]; c; c = c->hnext) {
            pthread_mutex_lock(&c->lock);
            /* Everything written to the socket counts as acknowledged by
             * this list, so the peer's window opens by what it says. */
            c->acked_total += c->ack_due;
            c->rx_unacked -= c->ack_due;
            c->ack_due = 0;
            e[n].id = c->id;
            e[n].received = c->rx_total;
            e[n].delivered = c->acked_total;
            e[n].flags = (c->peer_shut ? RF_SHUT_IN : 0) | (c->connected ? RF_CONNECTED : 0);
            pthread_mutex_unlock(&c->lock);
            n++;
        }
    }
    pthread_mutex_unlock(&t->lock);
    if (!e)
        return -1;
    do {
        json_t *list = json_array();
        size_t end = n - i < RESUME_PER_FRAME ? n : i + RESUME_PER_FRAME;
        for (; list && i < end; i++)
            json_array_append_new(list, json_pack("[I,I,I,i]", (json_int_t)e[i].id,
                                                  (json_int_t)e[i].received,
                                                  (json_int_t)e[i].delivered, e[i].flags));
        if (!list || tunnel_send(via, packet(OP_RESUME, "{s:o,s:b}", "conns", list, "last",
                                             i >= n),
                                 NULL, 0) != 0)
            goto out;
    } while (i < n);
    rc = 0;
out:
    free(e);
    return rc;
}

/* ------------------------------------------------------------- heartbeat */

/* Queue a CLOSE for conn id from the reader; the heartbeat thread sends it.
 * reason must be a string literal. */
static void tunnel_defer_close(struct tunnel *t, uint64_t id, const char *reason)
{
    int full;

    pthread_mutex_lock(&t->lock);
    full = t->npending >= PENDING_CLOSE_MAX;
    if (!full) {
        t->pending[t->npending].conn = id;
        t->pending[t->npending++].reason = reason;
    }
    pthread_cond_broadcast(&t->hb_cond);
    pthread_mutex_unlock(&t->lock);
    if (full)
        tunnel_kill(t, "cannot start connections");
}

/* Connections that delivered data without acknowledging it yet (less than a
 * quarter window) do it now: so what the far end retains for a resume does
 * not linger on idle connections. */
static void ack_nudge_all(struct tunnel *t)
{
    pthread_mutex_lock(&t->lock);
    for (unsigned b = 0; b < CONN_BUCKETS; b++) {
        for (struct conn *c = t->buckets[b]; c; c = c->hnext) {
            pthread_mutex_lock(&c->lock);
            if (c->ack_due > 0) {
                c->ack_nudge = 1;
                conn_wake_locked(c);
            }
            pthread_mutex_unlock(&c->lock);
        }
    }
    pthread_mutex_unlock(&t->lock);
}

static void *heartbeat_main(void *arg)
{
    struct tunnel *t = arg;
    struct pending_close closes[64]; /* sent a batch at a time: small stack */
    unsigned beats = 0;

    pthread_setname_np(pthread_self(), "heartbeat");
    pthread_mutex_lock(&t->lock);
    while (!t->dead) {
        struct timespec ts;
        unsigned n = 0;
        int beat = 0;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += HEARTBEAT_S;
        while (!t->dead && (!t->npending || t->state != T_UP)) {
            if (pthread_cond_timedwait(&t->hb_cond, &t->lock, &ts) != 0) {
                beat = 1;
                break;
            }
        }
        if (t->dead)
            break;
        if (t->state == T_UP) {
            n = t->npending < 64 ? t->npending : 64;
            t->npending -= n;
            memcpy(closes, t->pending + t->npending, n * sizeof(closes[0]));
        } else {
            beat = 0; /* no link to beat on */
        }
        pthread_mutex_unlock(&t->lock);
        for (unsigned i = 0; i < n; i++)
            tunnel_send(t, packet(OP_CLOSE, "{s:I,s:s}", "conn", (json_int_t)closes[i].conn,
                                  "reason", closes[i].reason), NULL, 0);
        if (beat) {
            tunnel_send(t, packet(OP_PING, NULL), NULL, 0);
            if (tunnel_resumable(t))
                ack_nudge_all(t);
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

/* What a send of c's frame that returned rc means for c: 0 when sent, or
 * when the link is down but the session will resume (the frame is then
 * replayed if the peer lacks it); -1 when c cannot go on. */
static int conn_sent(struct conn *c, int rc)
{
    struct tunnel *t = c->t;

    return rc == 0 || (!t->dead && c->resumable && tunnel_resumable(t)) ? 0 : -1;
}

/* Send a frame of c's; returns as conn_sent. */
static int conn_send(struct conn *c, json_t *hdr, unsigned char *payload, size_t len,
                     size_t headroom)
{
    return conn_sent(c, tunnel_send_ex(c->t, hdr, payload, len, headroom));
}

/* conn_send of DATA: its header is written without a JSON object (the one
 * frame sent for every read of a connection). */
static int conn_send_data(struct conn *c, unsigned char *payload, size_t len, size_t headroom)
{
    unsigned char hdr[PKT_DATA_HEADER_MAX];
    int n = pkt_encode_data(hdr, sizeof(hdr), OP_DATA, c->id, len);

    if (n < 0)
        return -1;
    return conn_sent(c, send_encoded(c->t, hdr, (size_t)n, payload, len, headroom));
}

/* Keep data (the bytes just sent as DATA, from stream offset start) until the
 * peer acknowledges it. Under c->lock. When the budget says no, c stops being
 * resumable and keeps nothing. */
static void retain_locked(struct conn *c, uint64_t start, const unsigned char *data, size_t len)
{
    while (c->resumable && len > 0) {
        struct rchunk *r = c->rtail;
        size_t take;
        if (!r || r->len == r->cap) {
            size_t cap = len < RETAIN_MIN ? RETAIN_MIN : len;
            size_t cost = sizeof(*r) + cap + MALLOC_OVERHEAD;
            if (retained_total + cost > retain_budget || !(r = malloc(sizeof(*r) + cap))) {
                c->resumable = 0;
                retain_drop_locked(c);
                log_info("ev=conn_not_resumable tunnel=%s conn=%llu reason=\"retention budget "
                         "full\"", c->t->name, (unsigned long long)c->id);
                return;
            }
            retained_total += cost;
            c->ralloc += cost;
            r->next = NULL;
            r->start = start;
            r->len = 0;
            r->cap = cap;
            if (c->rtail)
                c->rtail->next = r;
            else
                c->rhead = r;
            c->rtail = r;
        }
        take = r->cap - r->len < len ? r->cap - r->len : len;
        memcpy(r->data + r->len, data, take);
        r->len += take;
        data += take;
        len -= take;
        start += take;
    }
}

/* Keep relay buffer r (n bytes just read into r->data, from stream offset
 * start) as it is; the relay takes a new buffer. Under c->lock. 0, or -1 when
 * the budget says no (c then stops being resumable; r stays the relay's). */
static int retain_buffer_locked(struct conn *c, uint64_t start, struct rchunk *r, size_t n,
                                size_t cap)
{
    size_t cost = sizeof(*r) + cap + MALLOC_OVERHEAD;

    if (retained_total + cost > retain_budget) {
        c->resumable = 0;
        retain_drop_locked(c);
        log_info("ev=conn_not_resumable tunnel=%s conn=%llu reason=\"retention budget full\"",
                 c->t->name, (unsigned long long)c->id);
        return -1;
    }
    retained_total += cost;
    c->ralloc += cost;
    r->next = NULL;
    r->start = start;
    r->len = n;
    r->cap = cap;
    if (c->rtail)
        c->rtail->next = r;
    else
        c->rhead = r;
    c->rtail = r;
    return 0;
}

/* Copy retained bytes from stream offset from into buf (at most cap): how
 * many, 0 when nothing is retained there. Under c->lock. */
static size_t retained_copy_locked(struct conn *c, uint64_t from, unsigned char *buf, size_t cap)
{
    size_t n = 0;

    for (struct rchunk *r = c->rhead; r && n < cap; r = r->next) {
        uint64_t end = r->start + r->len;
        size_t off, take;
        if (from + n >= end)
            continue;
        if (from + n < r->start)
            break; /* a hole: cannot happen */
        off = (size_t)(from + n - r->start);
        take = r->len - off < cap - n ? r->len - off : cap - n;
        memcpy(buf + n, r->data + off, take);
        n += take;
    }
    return n;
}

static int send_ack(struct conn *c, size_t n, uint64_t total)
{
    return conn_send(c, packet(OP_ACK, "{s:I,s:I,s:I}", "conn", (json_int_t)c->id, "bytes",
                               (json_int_t)n, "total", (json_int_t)total),
                     NULL, 0, 0);
}

static int send_build(struct conn *c)
{
    json_t *op;

    if (c->opts.ftp == CONN_FTP_CONTROL)
        op = packet(OP_BUILD_CONNECTION, "{s:I,s:s,s:s,s:i,s:s}", "conn", (json_int_t)c->id,
                    "app", c->app, "target_host", c->host, "target_port", c->port, "ftp",
                    "control");
    else if (c->opts.ftp == CONN_FTP_DATA)
        op = packet(OP_BUILD_CONNECTION, "{s:I,s:s,s:s,s:i,s:s,s:I,s:I}", "conn",
                    (json_int_t)c->id, "app", c->app, "target_host", c->host, "target_port",
                    c->port, "ftp", "data", "ftp_ctl", (json_int_t)c->opts.ftp_ctl, "ftp_req",
                    (json_int_t)c->opts.ftp_req);
    else
        op = packet(OP_BUILD_CONNECTION, "{s:I,s:s,s:s,s:i}", "conn", (json_int_t)c->id, "app",
                    c->app, "target_host", c->host, "target_port", c->port);
    /* Version 6: who the client is and what it reached (the private side logs
     * them and, with proxy_protocol, tells the app in a PROXY header). */
    if (op && c->t->version >= PKT_PROTO_PP && c->client_addr[0] && c->server_addr[0]) {
        json_object_set_new(op, "client", json_string(c->client_addr));
        json_object_set_new(op, "server", json_string(c->server_addr));
        if (c->opts.proxy_protocol)
            json_object_set_new(op, "proxy_protocol", json_integer(c->opts.proxy_protocol));
    }
    return conn_send(c, op, NULL, 0, 0);
}

/* After a resume: send what the peer lacks of c, in stream order. buf has
 * HEADROOM + bufsize bytes. 0 or -1. */
static int conn_replay(struct conn *c, unsigned char *buf, size_t bufsize)
{
    struct tunnel *t = c->t;
    uint64_t from, sent = c->tx_sent;
    int has, flags, eof, connected, built;

    pthread_mutex_lock(&c->lock);
    c->resume_pending = 0;
    has = c->peer_has;
    from = has ? c->peer_received : 0;
    flags = has ? c->peer_flags : 0;
    c->peer_has = 0;
    eof = c->local_eof;
    connected = c->connected;
    built = c->built;
    pthread_mutex_unlock(&c->lock);
    if (t->is_public && !has && built) {
        /* The private never got BUILD_CONNECTION: build it again. */
        if (send_build(c) != 0)
            return -1;
    }
    if (!t->is_public && connected && !(flags & RF_CONNECTED)) {
        if (conn_send(c, packet(OP_CONNECTED, "{s:I}", "conn", (json_int_t)c->id), NULL, 0,
                      0) != 0)
            return -1;
    }
    while (from < sent) {
        size_t n;
        pthread_mutex_lock(&c->lock);
        n = retained_copy_locked(c, from, buf + HEADROOM,
                                 sent - from < bufsize ? (size_t)(sent - from) : bufsize);
        pthread_mutex_unlock(&c->lock);
        if (n == 0)
            return -1; /* not retained: cannot happen for a resumable connection */
        if (conn_send_data(c, buf + HEADROOM, n, HEADROOM) != 0)
            return -1;
        from += n;
    }
    if (eof && !(flags & RF_SHUT_IN)) {
        if (conn_send(c, packet(OP_SHUTDOWN, "{s:I}", "conn", (json_int_t)c->id), NULL, 0, 0) != 0)
            return -1;
    }
    return 0;
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
        c->ack_due += (size_t)w;
        if (ch->off < ch->len)
            return;
        c->qhead = ch->next;
        if (!c->qhead)
            c->qtail = NULL;
        queued_total -= sizeof(*ch) + ch->cap + MALLOC_OVERHEAD;
        c->qalloc -= sizeof(*ch) + ch->cap + MALLOC_OVERHEAD;
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
    struct rchunk *rb = malloc(sizeof(*rb) + bufsize);
    unsigned char *buf = rb ? rb->room : NULL;
    int wr_shut = 0, rc = -1;
    uint64_t connect_deadline = mono_ms() + CONNECT_WAIT_MS, drain_deadline = 0;
    uint64_t full_since = 0; /* reads have filled the buffer since then */
    sigset_t waitmask;

    if (!rb) {
        *why = "out of memory";
        return -1;
    }
    pthread_sigmask(SIG_SETMASK, NULL, &waitmask);
    sigdelset(&waitmask, SIGUSR1);

    for (;;) {
        struct pollfd pfd = {.fd = c->fd, .events = 0};
        struct timespec ts = {.tv_sec = 1}, *tsp = NULL;
        size_t ack = 0, room = 0;
        uint64_t ack_total = 0;
        int want_read, up, replay = 0, build = 0;

        pthread_mutex_lock(&c->lock);
        /* Under the lock: the reader clears await_resume (and sets
         * resume_pending) under it when the peer's RESUME list is complete. */
        up = t->state == T_UP && !c->await_resume;
        if (c->abort) {
            *why = c->why;
            pthread_mutex_unlock(&c->lock);
            goto out;
        }
        if (up && c->resume_pending) {
            replay = 1;
        } else if (up && t->is_public && !c->built) {
            build = 1;
            c->built = 1;
        }
        if (c->qhead)
            flush_queue_locked(c);
        if (up && (c->ack_due >= t->my_window / 4 || (c->ack_nudge && c->ack_due > 0))) {
            c->ack_nudge = 0;
            ack = c->ack_due;
            c->ack_due = 0;
            c->rx_unacked -= ack;
            c->acked_total += ack;
            ack_total = c->acked_total;
        }
        if (!c->qhead && c->peer_shut && !wr_shut) {
            shutdown(c->fd, SHUT_WR);
            wr_shut = 1;
        }
        if (up && c->local_eof && !c->qhead && (c->peer_shut || c->peer_closed) && !ack &&
            !replay) {
            *why = "done";
            rc = 0;
            pthread_mutex_unlock(&c->lock);
            break;
        }
        if (up && c->peer_closed && !c->qhead && !ack && !replay) {
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
         * for protocols where the client speaks first. While the session is
         * suspended nobody reads: the kernel's windows hold the senders. */
        want_read = up && !replay && !build && !c->local_eof && room > 0 &&
                    (c->built || !t->is_public);
        if (want_read)
            pfd.events |= POLLIN;
        if (c->qhead)
            pfd.events |= POLLOUT;
        /* A client waiting for its BUILD_CONNECTION (the tunnel is down) may
         * give up: notice it, without reading what it sent. */
        if (t->is_public && !c->built)
            pfd.events |= POLLRDHUP;
        if (!c->connected) {
            uint64_t now = mono_ms();
            if (!up || !c->built) {
                connect_deadline = now + CONNECT_WAIT_MS; /* waits for the resume */
            } else if (now >= connect_deadline) {
                *why = "no answer from the private side";
                pthread_mutex_unlock(&c->lock);
                goto out;
            }
            tsp = &ts;
        }
        if (!up)
            tsp = &ts;
        if (!ack && !replay && !build)
            c->sleeping = 1;
        pthread_mutex_unlock(&c->lock);

        if (build) {
            if (send_build(c) != 0) {
                *why = "tunnel down";
                goto out;
            }
            continue;
        }
        if (replay) {
            if (conn_replay(c, buf, bufsize) != 0) {
                *why = "could not resume";
                goto out;
            }
            continue;
        }
        if (ack) {
            if (send_ack(c, ack, ack_total) != 0) {
                *why = "tunnel down";
                goto out;
            }
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

        if (pfd.revents & (POLLIN | POLLHUP | POLLERR | POLLRDHUP)) {
            if (!want_read) {
                if (pfd.revents & POLLERR) {
                    *why = "socket error";
                    goto out;
                }
                if (t->is_public && !c->built && (pfd.revents & (POLLRDHUP | POLLHUP))) {
                    *why = "the client left while the tunnel was down";
                    goto out;
                }
                continue;
            }
            size_t want = room < bufsize ? room : bufsize;
            ssize_t n = recv(c->fd, buf + HEADROOM, want, MSG_DONTWAIT);
            if (n > 0) {
                atomic_fetch_add(&c->inflight, (size_t)n);
                if (c->stats)
                    c->stats->bytes_in += (uint64_t)n;
                struct rchunk *kept = NULL;
                if (c->resumable) {
                    /* A full read is kept as it is; a small one is copied. */
                    pthread_mutex_lock(&c->lock);
                    if ((size_t)n >= bufsize / 2 && bufsize == RELAY_CHUNK) {
                        if (retain_buffer_locked(c, c->tx_sent, rb, (size_t)n, bufsize) == 0)
                            kept = rb;
                    } else {
                        retain_locked(c, c->tx_sent, buf + HEADROOM, (size_t)n);
                    }
                    pthread_mutex_unlock(&c->lock);
                }
                c->tx_sent += (uint64_t)n;
                if ((size_t)n == bufsize && bufsize == RELAY_CHUNK) {
                    uint64_t now = mono_ms();
                    if (!full_since)
                        full_since = now;
                    else if (now - full_since >= FAIR_BACKLOG_MS)
                        tunnel_tcp_backlogged(t);
                } else {
                    full_since = 0;
                }
                if (conn_send_data(c, buf + HEADROOM, (size_t)n, HEADROOM) != 0) {
                    if (kept)
                        rb = NULL; /* the connection's now, freed with it */
                    *why = "tunnel down";
                    goto out;
                }
                if (kept || ((size_t)n == bufsize && bufsize < RELAY_CHUNK)) {
                    struct rchunk *next = relay_buf_get();
                    if (!next && kept) {
                        rb = NULL;
                        *why = "out of memory";
                        goto out;
                    }
                    if (next) {
                        if (!kept)
                            rchunk_free(rb, bufsize);
                        rb = next;
                        buf = rb->room;
                        bufsize = RELAY_CHUNK;
                    }
                }
            } else if (n == 0) {
                pthread_mutex_lock(&c->lock);
                c->local_eof = 1;
                pthread_mutex_unlock(&c->lock);
                if (conn_send(c, packet(OP_SHUTDOWN, "{s:I}", "conn", (json_int_t)c->id), NULL,
                              0, 0) != 0) {
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
    rchunk_free(rb, bufsize);
    return rc;
}

/* A connection that ended while its session was suspended waits for the
 * resume before telling the peer (or for the session to end). Returns 1 when
 * the session is up and the peer still knows c, 0 otherwise. */
static int await_resume(struct conn *c)
{
    struct tunnel *t = c->t;
    sigset_t waitmask;

    pthread_sigmask(SIG_SETMASK, NULL, &waitmask);
    sigdelset(&waitmask, SIGUSR1);
    for (;;) {
        struct timespec ts = {.tv_sec = 1};
        int pending;
        pthread_mutex_lock(&c->lock);
        if (t->dead) {
            pthread_mutex_unlock(&c->lock);
            return 0;
        }
        pending = c->resume_pending;
        if (t->state == T_UP && !c->await_resume) {
            pthread_mutex_unlock(&c->lock);
            return !pending || c->peer_has;
        }
        c->sleeping = 1;
        pthread_mutex_unlock(&c->lock);
        (void)ppoll(NULL, 0, &ts, &waitmask);
        atomic_store(&c->sleeping, 0);
    }
}

/* Close the socket, leave the table, tell the peer. Drops the thread's ref. */
static void conn_finish(struct conn *c, int orderly, const char *why)
{
    struct tunnel *t = c->t;
    int tell_peer, connected, waited = 0, awaiting;
    char esc[PKT_REASON_MAX + 1];

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
    tell_peer = !c->peer_closed && !t->dead;
    connected = c->connected;
    awaiting = c->await_resume || t->state != T_UP;
    pthread_mutex_unlock(&c->lock);

    if (tell_peer && c->resumable && awaiting && tunnel_resumable(t)) {
        /* The peer must hear of the end: after the resume, and after what it
         * lacks of an orderly end. */
        tell_peer = await_resume(c);
        waited = 1;
    }
    if (tell_peer && waited && orderly && c->resume_pending) {
        unsigned char *buf = malloc(HEADROOM + RELAY_CHUNK);
        if (!buf || conn_replay(c, buf, RELAY_CHUNK) != 0)
            orderly = 0;
        free(buf);
    }
    pthread_mutex_lock(&c->lock);
    c->thread_running = 0;
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
    c->resumable = tunnel_resumable(t);
    c->since = time(NULL);
    pthread_mutex_lock(&t->lock);
    c->await_resume = t->state != T_UP; /* born during an outage: waits for the resume */
    pthread_mutex_unlock(&t->lock);
    tunnel_ref(t);
    pthread_mutex_init(&c->lock, NULL);
    return c;
}

int conn_start_public(struct tunnel *t, int client_fd, const char *app, const char *host,
                      int port, struct app_stats *stats)
{
    return conn_start_public_ex(t, client_fd, app, host, port, stats, NULL);
}

int tunnel_conn_info(struct tunnel *t, uint64_t id, struct conn_info *out)
{
    struct conn *c = conn_lookup(t, id);
    socklen_t ll = sizeof(out->local);
    int rc = -1;

    memset(out, 0, sizeof(*out));
    if (!c)
        return -1;
    pthread_mutex_lock(&c->lock);
    if (c->fd >= 0 && !c->abort && c->opts.client.ss_family &&
        getsockname(c->fd, (struct sockaddr *)&out->local, &ll) == 0) {
        out->peer = c->opts.client;
        out->ftp = c->opts.ftp;
        snprintf(out->app, sizeof(out->app), "%s", c->app ? c->app : "");
        snprintf(out->host, sizeof(out->host), "%s", c->host ? c->host : "");
        out->port = c->port;
        out->stats = c->stats;
        app_stats_ref(out->stats);
        rc = 0;
    }
    pthread_mutex_unlock(&c->lock);
    conn_unref(c);
    return rc;
}

unsigned tunnel_conns(struct tunnel *t, struct conn_brief *out, unsigned max)
{
    struct conn **cs = NULL;
    unsigned n = 0, all;

    /* References under the table's lock, the details under each one's own. */
    pthread_mutex_lock(&t->lock);
    all = t->nconns;
    if (max > all)
        max = all;
    if (max)
        cs = malloc(max * sizeof(*cs));
    for (unsigned b = 0; cs && b < CONN_BUCKETS && n < max; b++) {
        for (struct conn *c = t->buckets[b]; c && n < max; c = c->hnext) {
            c->refs++;
            cs[n++] = c;
        }
    }
    pthread_mutex_unlock(&t->lock);
    for (unsigned i = 0; i < n; i++) {
        struct conn *c = cs[i];
        struct conn_brief *o = &out[i];
        memset(o, 0, sizeof(*o));
        o->id = c->id;
        pthread_mutex_lock(&c->lock);
        snprintf(o->app, sizeof(o->app), "%s", c->app ? c->app : "");
        if (c->fd >= 0)
            o->peer = c->opts.client; /* the client (a PROXY header's, or the peer) */
        else
            o->peer.ss_family = 0;
        o->since = c->since;
        o->bytes_in = c->tx_sent;
        o->bytes_out = c->rx_total;
        pthread_mutex_unlock(&c->lock);
        conn_unref(c);
    }
    free(cs);
    return cs || !max ? all : 0;
}

int tunnel_close_conn(struct tunnel *t, uint64_t id, const char *why)
{
    struct conn *c = conn_lookup(t, id);

    if (!c)
        return -1;
    pthread_mutex_lock(&c->lock);
    conn_abort_locked(c, why);
    pthread_mutex_unlock(&c->lock);
    conn_unref(c);
    return 0;
}

int conn_start_public_ex(struct tunnel *t, int client_fd, const char *app, const char *host,
                         int port, struct app_stats *stats, const struct conn_opts *o)
{
    uint64_t id = t->next_id++;
    struct conn *c = conn_new(t, id, client_fd);
    int rc;

    if (!c) {
        close(client_fd);
        if (o && o->on_end)
            o->on_end(o->end_arg);
        return -1;
    }
    if (o)
        c->opts = *o;
    if (!c->opts.client.ss_family) {
        socklen_t sl = sizeof(c->opts.client);
        if (getpeername(client_fd, (struct sockaddr *)&c->opts.client, &sl) != 0)
            memset(&c->opts.client, 0, sizeof(c->opts.client));
    }
    if (c->opts.client.ss_family)
        net_sa_str(&c->opts.client, c->client_addr, sizeof(c->client_addr));
    else
        snprintf(c->client_addr, sizeof(c->client_addr), "?");
    net_local_str(client_fd, c->server_addr, sizeof(c->server_addr));
    if (strncmp(c->client_addr, "?", 1) == 0 || strncmp(c->server_addr, "?", 1) == 0)
        c->client_addr[0] = c->server_addr[0] = '\0';
    net_tune(client_fd);
    net_set_nonblock(client_fd, 1);
    c->stats = stats;
    app_stats_ref(stats);
    if (stats) {
        stats->total++;
        stats->active++;
    }
    c->app = strdup(app);
    c->host = strdup(host);
    c->port = port;
    if (!c->app || !c->host || conn_insert(t, c) != 0)
        goto fail;
    /* Its relay thread sends BUILD_CONNECTION: at once when the tunnel is up,
     * after the resume when it is suspended. */
    rc = thread_spawn(public_conn_main, c);
    if (rc != 0) {
        log_error("ev=thread_failed conn=%llu err=\"%s\"", (unsigned long long)id, strerror(rc));
        conn_remove(t, c);
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
    /* The PROXY header goes first, whole, before the socket is the relay's. */
    if (c->prefix_len && net_write_all(fd, c->prefix, c->prefix_len) != 0) {
        snprintf(err, sizeof(err), "cannot write the PROXY header: %s", strerror(errno));
        log_warn("ev=dial_failed tunnel=%s conn=%llu err=\"%s\"", c->t->name,
                 (unsigned long long)c->id, err);
        close(fd);
        goto out;
    }
    net_tune(fd);
    net_set_nonblock(fd, 1);
    pthread_mutex_lock(&c->lock);
    c->fd = fd;
    c->connected = 1;
    pthread_mutex_unlock(&c->lock);
    if (conn_send(c, packet(OP_CONNECTED, "{s:I}", "conn", (json_int_t)c->id), NULL, 0, 0) != 0) {
        why = "tunnel down";
        goto out;
    }
    rc = relay(c, &why);
out:
    conn_finish(c, rc == 0, why);
    return NULL;
}

void conn_refuse(struct tunnel *t, uint64_t id, const char *reason)
{
    tunnel_defer_close(t, id, reason);
}

int conn_start_private(struct tunnel *t, uint64_t id, const char *host, int port,
                       conn_dial_fn dial, void *arg)
{
    return conn_start_private_ex(t, id, host, port, dial, arg, NULL, 0);
}

int conn_start_private_ex(struct tunnel *t, uint64_t id, const char *host, int port,
                          conn_dial_fn dial, void *arg, const unsigned char *prefix,
                          size_t prefix_len)
{
    struct conn *c = conn_new(t, id, -1);
    int rc;

    if (!c)
        goto fail;
    if (prefix_len) {
        c->prefix = malloc(prefix_len);
        if (!c->prefix)
            goto fail;
        memcpy(c->prefix, prefix, prefix_len);
        c->prefix_len = prefix_len;
    }
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
    tunnel_defer_close(t, id, "cannot start connection");
    return -1;
}

/* udp.c - UDP apps over the tunnel (see udp.h for the model).
 *
 * Ownership and locks:
 * - struct udp_tun lives inside its tunnel (created and freed with it). Its
 *   lock guards the session table, the ready ring, the queues and the list
 *   of UDP_CLOSE operations to send. Nothing waits for a socket or the tunnel
 *   while holding it.
 * - A session is reference counted: its table entry, the public app's address
 *   table (public) or its thread (private) and every batch it is in hold one.
 * - Public: only the app's thread touches its address table, so it has no
 *   lock; sessions it finds closed (by the private side, the tunnel's end) are
 *   taken out when it next looks.
 * - Private: a session's socket belongs to its thread, which closes it under
 *   the session's lock; the tunnel reader sends to it under the same lock, so
 *   it never writes to a descriptor that was closed and reused.
 * - The uplink thread holds a reference on the tunnel until the tunnel dies. */

#include "udp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "netio.h"
#include "packet.h"
#include "tunnel.h"

#define SESS_BUCKETS 1024
#define ADDR_BUCKETS 1024
#define RECV_BUF (PKT_MAX_DGRAM + 1)   /* one more: a bigger datagram shows as MSG_TRUNC */
#define HEADROOM 1024                  /* in front of a received datagram: its frame header */
#define RECV_BURST 4                   /* recvmmsg calls per wake-up before looking around */
#define RECV_BATCH 16                  /* datagrams per recvmmsg, sent in one tunnel write */
#define BATCH_BYTES (96 * 1024)        /* payload per tunnel write (one writer turn) */
#define BATCH_ITEMS 64
#define BATCH_CAP (BATCH_BYTES + PKT_MAX_DGRAM + 2 * BATCH_ITEMS * 1024)
#define THROTTLE_NAP_MS 1               /* the uplink waits this long for TCP's turn */
#define THROTTLE_WAIT_MS 50            /* then a batch counts as a queue drop */
#define CLOSE_QUEUE_MAX 4096           /* UDP_CLOSE waiting to be sent, per tunnel */
#define PENDING_DGRAMS 64              /* private: waiting for the target's socket */
#define PENDING_BYTES (256 * 1024)
#define IDLE_SLACK_MS 10000            /* private: the public side normally ends it first */
#define SWEEP_MS 1000                  /* public: idle sessions looked for this often */
#define REFUSED_LOG_EVERY_MS 10000

struct dgram {
    struct dgram *next;
    size_t len;
    unsigned char data[];
};

struct close_item {
    struct close_item *next;
    uint64_t id;
    const char *reason;             /* a string literal */
    uint32_t drops[3];              /* private: what it still has to report */
};

/* Private side: what a session dropped and not yet reported ("drops"). */
enum { REP_QUEUE_FULL, REP_OVERSIZE, REP_TUNNEL_DOWN };
static const char *const rep_names[] = {"queue_full", "oversize", "tunnel_down"};

struct udp_sess {
    _Atomic int refs;
    uint64_t id;
    struct udp_tun *u;
    struct tunnel *t;               /* holds a reference */
    _Atomic int closed;
    _Atomic uint64_t last_ms;       /* last datagram either way */
    unsigned idle_s;

    /* under u->lock */
    struct udp_sess *idnext;        /* u's table */
    int in_table;
    struct dgram *qhead, *qtail;    /* for the tunnel */
    unsigned qcount;
    size_t qbytes;
    struct udp_sess *rprev, *rnext; /* u's ready ring, when queued */
    int in_ring;
    unsigned inflight;              /* the uplink or a reader's batch is sending some */
    int in_batch;                   /* public: its reader's batch holds some */
    int need_open;                  /* public: the next datagram carries "open" */

    /* public */
    struct udp_app *app;            /* holds a reference */
    struct sockaddr_storage peer;
    socklen_t peerlen;
    struct udp_sess *anext;         /* app's address table (its thread only) */
    struct udp_sess *knext;         /* udp_tun_kill's list */
    char host[PKT_HOST_MAX + 1];    /* the target */
    int port;

    /* private */
    pthread_mutex_t lock;           /* fd, pending */
    int fd;
    _Atomic int connected;          /* 1 the socket is ready, -1 the target refused */
    struct dgram *phead, *ptail;    /* from the tunnel, before the socket is ready */
    unsigned pcount;
    size_t pbytes;
    _Atomic uint32_t rep[3];
};

struct udp_tun {
    struct tunnel *t;               /* not a reference: u lives inside t */
    int is_public;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct udp_sess *table[SESS_BUCKETS];
    unsigned nsess;
    struct udp_sess *rhead, *rtail;
    struct close_item *chead, *ctail;
    unsigned ncloses;
    uint64_t next_id;               /* public: the next session id */
    uint64_t max_id;                /* private: the highest id opened */
    int dead;
    int uplink_running;
};

struct udp_app {
    _Atomic int refs;
    int fd;
    struct udp_app_cfg cfg;
    char name[PKT_NAME_MAX + 1];
    pthread_t thread;
    _Atomic int stopping;
    struct udp_sess *table[ADDR_BUCKETS];
    uint64_t old_logged_ms;         /* "private too old" said at most once a minute */
    uint32_t kernel_drops;          /* the socket's SO_RXQ_OVFL counter, last seen */
};

static _Atomic size_t queued_total;
static _Atomic unsigned public_sessions;
static unsigned max_per_app = UDP_SESSIONS_PER_APP_DEFAULT, max_total = UDP_SESSIONS_DEFAULT;
static udp_connect_fn priv_connect;
static void *priv_connect_arg;
static _Atomic unsigned priv_max = 10000;

/* Private: sessions turned down, logged once per REFUSED_LOG_EVERY_MS. */
static pthread_mutex_t refused_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t refused_total, refused_logged, refused_log_ms;

void udp_set_public_limits(unsigned per_app, unsigned total)
{
    max_per_app = per_app;
    max_total = total;
}

void udp_set_private(udp_connect_fn connect, void *arg, unsigned max_conns)
{
    priv_connect = connect;
    priv_connect_arg = arg;
    priv_max = max_conns;
}

void udp_set_private_limit(unsigned max_conns)
{
    priv_max = max_conns;
}

static void count_drop(struct app_stats *st, int why)
{
    if (st)
        st->drops[why]++;
}

static void dgram_free_list(struct dgram *d)
{
    while (d) {
        struct dgram *next = d->next;
        queued_total -= sizeof(*d) + d->len;
        free(d);
        d = next;
    }
}

static void dgram_free_list_unqueued(struct dgram *d)
{
    while (d) {
        struct dgram *next = d->next;
        free(d);
        d = next;
    }
}

/* ------------------------------------------------------------- sessions */

static void app_unref(struct udp_app *a);

static void sess_unref(struct udp_sess *s)
{
    if (!s || --s->refs > 0)
        return;
    dgram_free_list_unqueued(s->phead);
    if (s->u && !s->u->is_public)
        pthread_mutex_destroy(&s->lock);
    if (s->app)
        app_unref(s->app);
    tunnel_unref(s->t);
    free(s);
}

static struct udp_sess *table_find_locked(struct udp_tun *u, uint64_t id)
{
    struct udp_sess *s = u->table[id % SESS_BUCKETS];

    while (s && s->id != id)
        s = s->idnext;
    return s;
}

static void table_remove_locked(struct udp_tun *u, struct udp_sess *s)
{
    struct udp_sess **pp = &u->table[s->id % SESS_BUCKETS];

    if (!s->in_table)
        return;
    while (*pp && *pp != s)
        pp = &(*pp)->idnext;
    if (*pp)
        *pp = s->idnext;
    s->in_table = 0;
    u->nsess--;
}

static void ring_remove_locked(struct udp_tun *u, struct udp_sess *s)
{
    if (!s->in_ring)
        return;
    if (s->rprev)
        s->rprev->rnext = s->rnext;
    else
        u->rhead = s->rnext;
    if (s->rnext)
        s->rnext->rprev = s->rprev;
    else
        u->rtail = s->rprev;
    s->rprev = s->rnext = NULL;
    s->in_ring = 0;
}

static void ring_append_locked(struct udp_tun *u, struct udp_sess *s)
{
    s->rnext = NULL;
    s->rprev = u->rtail;
    if (u->rtail)
        u->rtail->rnext = s;
    else
        u->rhead = s;
    u->rtail = s;
    s->in_ring = 1;
}

static void *uplink_main(void *arg);

/* Start the uplink thread when it is not running. Under u->lock. */
static void uplink_kick_locked(struct udp_tun *u)
{
    if (u->uplink_running) {
        pthread_cond_signal(&u->cond);
        return;
    }
    if (u->dead)
        return;
    tunnel_ref(u->t);
    if (thread_spawn(uplink_main, u) != 0) {
        tunnel_unref(u->t);
        log_error("ev=udp_uplink_failed name=%s err=\"cannot start a thread\"",
                  tunnel_name(u->t));
        return;
    }
    u->uplink_running = 1;
}

/* Queue a UDP_CLOSE for id. Under u->lock. */
static void queue_close_locked(struct udp_tun *u, uint64_t id, const char *reason,
                               const uint32_t *drops)
{
    struct close_item *c;

    if (u->dead || u->ncloses >= CLOSE_QUEUE_MAX)
        return; /* the peer's own idle timer ends it */
    c = calloc(1, sizeof(*c));
    if (!c)
        return;
    c->id = id;
    c->reason = reason;
    if (drops)
        memcpy(c->drops, drops, sizeof(c->drops));
    if (u->ctail)
        u->ctail->next = c;
    else
        u->chead = c;
    u->ctail = c;
    u->ncloses++;
    uplink_kick_locked(u);
}

/* End s once: out of the table, its queue dropped, and (notify) a UDP_CLOSE
 * with reason for the peer. Returns 1 if this call ended it. */
static int sess_close(struct udp_sess *s, const char *reason, int notify)
{
    struct udp_tun *u = s->u;
    struct dgram *q;
    int expected = 0, in_table;
    uint32_t drops[3] = {0, 0, 0};

    if (!atomic_compare_exchange_strong(&s->closed, &expected, 1))
        return 0;
    if (!u->is_public)
        for (int i = 0; i < 3; i++)
            drops[i] = atomic_exchange(&s->rep[i], 0);
    pthread_mutex_lock(&u->lock);
    in_table = s->in_table;
    table_remove_locked(u, s);
    ring_remove_locked(u, s);
    q = s->qhead;
    s->qhead = s->qtail = NULL;
    s->qcount = 0;
    s->qbytes = 0;
    if (notify)
        queue_close_locked(u, s->id, reason, drops);
    pthread_mutex_unlock(&u->lock);
    dgram_free_list(q);
    if (u->is_public) {
        s->app->cfg.stats->active--;
        public_sessions--;
    } else {
        pthread_mutex_lock(&s->lock);
        if (s->fd >= 0)
            shutdown(s->fd, SHUT_RDWR); /* wakes its thread */
        pthread_mutex_unlock(&s->lock);
    }
    if (!u->is_public)
        log_debug("ev=udp_session_end session=%llu reason=\"%s\"", (unsigned long long)s->id,
                  reason);
    if (in_table)
        sess_unref(s);
    return 1;
}

/* Queue one datagram of s for the tunnel, dropping the oldest when full.
 * Takes d. */
static unsigned sess_enqueue(struct udp_sess *s, struct dgram *d, struct app_stats *st)
{
    struct udp_tun *u = s->u;
    struct dgram *dropped = NULL, **dtail = &dropped;
    unsigned ndropped = 0;
    size_t cost = sizeof(*d) + d->len;

    pthread_mutex_lock(&u->lock);
    if (s->closed || u->dead) {
        pthread_mutex_unlock(&u->lock);
        free(d);
        if (st)
            count_drop(st, UDP_DROP_TUNNEL_DOWN);
        else
            s->rep[REP_TUNNEL_DOWN]++;
        return 0;
    }
    /* Make room: this session's oldest go first. */
    while (s->qhead && (s->qcount >= UDP_SESSION_QUEUE_DGRAMS ||
                        s->qbytes + d->len > UDP_SESSION_QUEUE_BYTES ||
                        queued_total + cost > UDP_QUEUE_BUDGET)) {
        struct dgram *old = s->qhead;
        s->qhead = old->next;
        if (!s->qhead)
            s->qtail = NULL;
        s->qcount--;
        s->qbytes -= old->len;
        old->next = NULL;
        *dtail = old;
        dtail = &old->next;
        ndropped++;
    }
    if (queued_total + cost > UDP_QUEUE_BUDGET) {
        /* The others hold the budget: this one cannot wait. */
        pthread_mutex_unlock(&u->lock);
        free(d);
        ndropped++;
        goto out;
    }
    d->next = NULL;
    if (s->qtail)
        s->qtail->next = d;
    else
        s->qhead = d;
    s->qtail = d;
    s->qcount++;
    s->qbytes += d->len;
    queued_total += cost;
    if (!s->in_ring)
        ring_append_locked(u, s);
    uplink_kick_locked(u);
    pthread_mutex_unlock(&u->lock);
out:
    dgram_free_list(dropped);
    if (ndropped) {
        if (st)
            st->drops[UDP_DROP_QUEUE_FULL] += ndropped;
        else
            s->rep[REP_QUEUE_FULL] += ndropped;
    }
    return ndropped;
}

/* ----------------------------------------------------------- the uplink */

struct batch_item {
    struct udp_sess *s;             /* a reference */
    struct dgram *d;
    int open;
};

/* Encode hdr (consumed), a frame without payload, at out[*pos..cap). 0, or
 * -1 when it does not fit (nothing counted). */
static int put_header(unsigned char *out, size_t cap, size_t *pos, json_t *hdr)
{
    int n;

    if (!hdr)
        return -1;
    n = pkt_encode(hdr, out + *pos, cap - *pos);
    json_decref(hdr);
    if (n < 0)
        return -1;
    *pos += (size_t)n;
    return 0;
}

/* The private side's "drops" member (NULL when there is nothing to say). */
static json_t *drops_json(const uint32_t *drops)
{
    json_t *o = NULL;

    for (int i = 0; i < 3; i++) {
        if (!drops[i])
            continue;
        if (!o)
            o = json_object();
        if (o)
            json_object_set_new(o, rep_names[i], json_integer(drops[i]));
    }
    return o;
}

/* The UDP_DATA header of a datagram of s, encoded at out[0..cap): n bytes,
 * or -1. Without "open" and "drops" (nearly every datagram) it is written
 * without a JSON object. */
static int data_header(struct udp_sess *s, size_t len, int open, unsigned char *out, size_t cap)
{
    uint32_t drops[3] = {0, 0, 0};
    json_t *o = NULL, *h;
    int n;

    if (!s->u->is_public)
        for (int i = 0; i < 3; i++)
            drops[i] = atomic_exchange(&s->rep[i], 0);
    if (!open && !drops[0] && !drops[1] && !drops[2])
        return pkt_encode_data(out, cap, OP_UDP_DATA, s->id, len);
    if (open)
        o = json_pack("{s:s,s:s,s:i,s:i}", "app", s->app->name, "target_host", s->host,
                      "target_port", s->port, "idle", (int)s->idle_s);
    h = open && !o ? NULL
                   : packet(OP_UDP_DATA, "{s:I,s:I,s:o*,s:o*}", "session", (json_int_t)s->id,
                            "len", (json_int_t)len, "open", o, "drops", drops_json(drops));
    n = h ? pkt_encode(h, out, cap) : -1;
    json_decref(h);
    if (n < 0) /* the drops are told with a later datagram */
        for (int i = 0; i < 3; i++)
            atomic_fetch_add(&s->rep[i], drops[i]);
    return n;
}

/* The short way, when it is free: s has nothing waiting and the tunnel's
 * writer and socket can take the datagram now, so its own thread sends it
 * (no hand-over to the uplink thread, no copy). data has HEADROOM writable
 * bytes in front. 1 sent; 0 not now (queue it); -1 the link is down (drop). */
static int sess_send_direct(struct udp_sess *s, unsigned char *data, size_t len)
{
    struct udp_tun *u = s->u;
    /* Read before need_open: a new link comes with need_open set first. */
    uint64_t epoch = tunnel_link_epoch(u->t);
    unsigned char hdr[HEADROOM];
    int open, n, r;

    if (tunnel_udp_throttled(u->t))
        return 0;
    pthread_mutex_lock(&u->lock);
    if (u->dead || s->closed || s->qhead || s->inflight) {
        pthread_mutex_unlock(&u->lock);
        return 0;
    }
    open = s->need_open;
    s->need_open = 0;
    s->inflight++;
    pthread_mutex_unlock(&u->lock);
    n = data_header(s, len, open, hdr, sizeof(hdr));
    r = 1;
    if (n > 0) {
        memcpy(data - n, hdr, (size_t)n);
        struct iovec iov = {data - n, (size_t)n + len};
        r = tunnel_try_send_frames(u->t, &iov, 1, 1, epoch);
    }
    pthread_mutex_lock(&u->lock);
    s->inflight--;
    if (r != 0 && open)
        s->need_open = 1;
    pthread_mutex_unlock(&u->lock);
    return r == 0 ? 1 : r < 0 ? -1 : 0;
}

static void *uplink_main(void *arg)
{
    struct udp_tun *u = arg;
    struct tunnel *t = u->t;
    unsigned char *buf = malloc(BATCH_CAP);
    struct batch_item items[BATCH_ITEMS];
    struct close_item *closes;

    pthread_setname_np(pthread_self(), "udp-uplink");
    if (!buf) {
        log_error("ev=udp_uplink_failed name=%s err=\"out of memory\"", tunnel_name(t));
        tunnel_kill(t, "out of memory");
    }
    for (;;) {
        size_t pos = 0, payload = 0, closes_end;
        unsigned n = 0;
        uint64_t epoch = tunnel_link_epoch(t), give_up;
        int failed = 0, throttled, r = 0;

        pthread_mutex_lock(&u->lock);
        while (!u->dead && !u->chead && !u->rhead)
            pthread_cond_wait(&u->cond, &u->lock);
        if (u->dead || !buf) {
            u->uplink_running = 0;
            pthread_mutex_unlock(&u->lock);
            break;
        }
        throttled = u->rhead && tunnel_udp_throttled(t);
        if (throttled && !u->chead) {
            /* TCP's turn on a full link (tunnel.c, fair_udp_write): the
             * queues hold the datagrams meanwhile, dropping their oldest. */
            pthread_mutex_unlock(&u->lock);
            sleep_ms(THROTTLE_NAP_MS);
            continue;
        }
        closes = u->chead;
        u->chead = u->ctail = NULL;
        u->ncloses = 0;
        /* One datagram per session in turn, so that no session crowds out
         * the others. */
        while (!throttled && u->rhead && n < BATCH_ITEMS && payload < BATCH_BYTES) {
            struct udp_sess *s = u->rhead;
            struct dgram *d = s->qhead;
            ring_remove_locked(u, s);
            s->qhead = d->next;
            if (!s->qhead)
                s->qtail = NULL;
            s->qcount--;
            s->qbytes -= d->len;
            if (s->qhead)
                ring_append_locked(u, s);
            s->refs++;
            s->inflight++;
            items[n].s = s;
            items[n].d = d;
            items[n].open = s->need_open;
            s->need_open = 0;
            payload += d->len;
            n++;
        }
        pthread_mutex_unlock(&u->lock);

        while (closes) {
            struct close_item *c = closes;
            closes = c->next;
            if (!failed &&
                put_header(buf, BATCH_CAP, &pos,
                           packet(OP_UDP_CLOSE, "{s:I,s:s,s:o*}", "session", (json_int_t)c->id,
                                  "reason", c->reason, "drops", drops_json(c->drops))) != 0)
                failed = 1;
            free(c);
        }
        closes_end = pos;
        for (unsigned i = 0; i < n && !failed; i++) {
            size_t len = items[i].d->len;
            int hn = data_header(items[i].s, len, items[i].open, buf + pos, BATCH_CAP - pos);
            if (hn < 0 || BATCH_CAP - pos - (size_t)hn < len) {
                failed = 1;
                continue;
            }
            memcpy(buf + pos + hn, items[i].d->data, len);
            pos += (size_t)hn + len;
        }
        /* Closes cost nothing: they always go. */
        give_up = mono_ms() + THROTTLE_WAIT_MS;
        while (!failed && pos &&
               (r = tunnel_send_frames(t, buf, pos, n, epoch)) == 1 &&
               mono_ms() < give_up && !u->dead)
            sleep_ms(THROTTLE_NAP_MS);
        if (r == 1) {
            /* Waited too long for TCP's turn: the data are dropped as a full
             * queue would drop them; the closes still go. */
            throttled = 1;
            if (closes_end && tunnel_send_frames(t, buf, closes_end, 0, epoch) != 0)
                failed = 1;
        } else {
            throttled = 0;
            failed = failed || r != 0;
        }
        pthread_mutex_lock(&u->lock);
        for (unsigned i = 0; i < n; i++) {
            items[i].s->inflight--;
            if ((failed || throttled) && items[i].open)
                items[i].s->need_open = 1;
        }
        pthread_mutex_unlock(&u->lock);
        for (unsigned i = 0; i < n; i++) {
            struct udp_sess *s = items[i].s;
            if (failed) {
                /* The link is down (or changed under us): these are lost. */
                if (u->is_public)
                    count_drop(s->app->cfg.stats, UDP_DROP_TUNNEL_DOWN);
                else
                    s->rep[REP_TUNNEL_DOWN]++;
            } else if (throttled) {
                if (u->is_public)
                    count_drop(s->app->cfg.stats, UDP_DROP_QUEUE_FULL);
                else
                    s->rep[REP_QUEUE_FULL]++;
            }
            queued_total -= sizeof(*items[i].d) + items[i].d->len;
            free(items[i].d);
            sess_unref(s);
        }
    }
    free(buf);
    tunnel_unref(t);
    return NULL;
}

/* ------------------------------------------------------ per tunnel state */

struct udp_tun *udp_tun_new(struct tunnel *t, int is_public)
{
    struct udp_tun *u = calloc(1, sizeof(*u));

    if (!u)
        return NULL;
    u->t = t;
    u->is_public = is_public;
    u->next_id = 1;
    pthread_mutex_init(&u->lock, NULL);
    pthread_cond_init(&u->cond, NULL);
    return u;
}

void udp_tun_kill(struct udp_tun *u)
{
    struct udp_sess *list = NULL;

    pthread_mutex_lock(&u->lock);
    u->dead = 1;
    pthread_cond_broadcast(&u->cond);
    for (unsigned b = 0; b < SESS_BUCKETS; b++) {
        for (struct udp_sess *s = u->table[b]; s; s = s->idnext) {
            s->refs++;
            s->knext = list;
            list = s;
        }
    }
    pthread_mutex_unlock(&u->lock);
    while (list) {
        struct udp_sess *s = list;
        list = s->knext;
        s->knext = NULL;
        sess_close(s, "tunnel down", 0);
        sess_unref(s);
    }
}

void udp_tun_relinked(struct udp_tun *u)
{
    if (!u->is_public)
        return;
    pthread_mutex_lock(&u->lock);
    for (unsigned b = 0; b < SESS_BUCKETS; b++)
        for (struct udp_sess *s = u->table[b]; s; s = s->idnext)
            s->need_open = 1;
    pthread_mutex_unlock(&u->lock);
}

void udp_tun_free(struct udp_tun *u)
{
    struct close_item *c;

    if (!u)
        return;
    /* Nothing is left in the table: udp_tun_kill ended every session, and
     * nobody adds one to a dead tunnel. */
    c = u->chead;
    while (c) {
        struct close_item *next = c->next;
        free(c);
        c = next;
    }
    pthread_mutex_destroy(&u->lock);
    pthread_cond_destroy(&u->cond);
    free(u);
}

unsigned udp_tun_sessions(struct udp_tun *u)
{
    unsigned n;

    pthread_mutex_lock(&u->lock);
    n = u->nsess;
    pthread_mutex_unlock(&u->lock);
    return n;
}

/* ------------------------------------------------------------ public side */

static void app_unref(struct udp_app *a)
{
    if (--a->refs > 0)
        return;
    if (a->fd >= 0)
        close(a->fd);
    app_stats_unref(a->cfg.stats);
    free(a);
}

static unsigned addr_hash(const struct sockaddr_storage *ss)
{
    const unsigned char *p;
    size_t n;
    unsigned h = 2166136261u;

    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
        p = s6->sin6_addr.s6_addr;
        n = 16;
        h = (h ^ s6->sin6_port) * 16777619u;
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
        p = (const unsigned char *)&s4->sin_addr;
        n = 4;
        h = (h ^ s4->sin_port) * 16777619u;
    }
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h % ADDR_BUCKETS;
}

static int addr_equal(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id &&
               memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
    }
    const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
    return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
}

/* Take s out of the app's table (its thread) and drop the table's reference. */
static void app_forget(struct udp_app *a, struct udp_sess *s)
{
    struct udp_sess **pp = &a->table[addr_hash(&s->peer)];

    while (*pp && *pp != s)
        pp = &(*pp)->anext;
    if (*pp)
        *pp = s->anext;
    s->anext = NULL;
    sess_unref(s);
}

/* A new session of client peer on the app's current tunnel, or NULL (counted). */
static struct udp_sess *app_open(struct udp_app *a, const struct sockaddr_storage *peer,
                                 socklen_t peerlen)
{
    struct app_stats *st = a->cfg.stats;
    struct udp_target to;
    struct tunnel *t;
    struct udp_tun *u;
    struct udp_sess *s;

    if (a->cfg.allowed && !a->cfg.allowed(a->cfg.arg, peer))
        return NULL; /* counted and logged by allowed() */
    if (st->active >= max_per_app || public_sessions >= max_total) {
        count_drop(st, UDP_DROP_SESSION_LIMIT);
        return NULL;
    }
    t = a->cfg.tunnel(a->cfg.arg, &to);
    if (!t) {
        count_drop(st, UDP_DROP_TUNNEL_DOWN);
        return NULL;
    }
    if (tunnel_version(t) < PKT_PROTO_UDP) {
        uint64_t now = mono_ms();
        if (!a->old_logged_ms || now - a->old_logged_ms >= 60000) {
            log_warn("ev=udp_unsupported app=%s private=%s version=%d err=\"the private proxy "
                     "speaks protocol version %d, UDP needs %d: upgrade proxy_private\"",
                     a->name, tunnel_name(t), tunnel_version(t), tunnel_version(t),
                     PKT_PROTO_UDP);
            a->old_logged_ms = now;
        }
        tunnel_unref(t);
        count_drop(st, UDP_DROP_TUNNEL_DOWN);
        return NULL;
    }
    u = tunnel_udp(t);
    s = calloc(1, sizeof(*s));
    if (!s) {
        tunnel_unref(t);
        count_drop(st, UDP_DROP_SESSION_LIMIT);
        return NULL;
    }
    s->refs = 2; /* the app's table and u's table */
    s->u = u;
    s->t = t;
    s->fd = -1;
    s->idle_s = to.idle_s;
    snprintf(s->host, sizeof(s->host), "%s", to.host);
    s->port = to.port;
    s->last_ms = mono_ms();
    s->need_open = 1;
    s->app = a;
    a->refs++;
    memcpy(&s->peer, peer, sizeof(*peer));
    s->peerlen = peerlen;
    pthread_mutex_lock(&u->lock);
    if (u->dead) {
        pthread_mutex_unlock(&u->lock);
        s->refs = 1;
        sess_unref(s);
        count_drop(st, UDP_DROP_TUNNEL_DOWN);
        return NULL;
    }
    s->id = u->next_id++;
    s->idnext = u->table[s->id % SESS_BUCKETS];
    u->table[s->id % SESS_BUCKETS] = s;
    s->in_table = 1;
    u->nsess++;
    pthread_mutex_unlock(&u->lock);
    st->active++;
    st->total++;
    public_sessions++;
    s->anext = a->table[addr_hash(peer)];
    a->table[addr_hash(peer)] = s;
    return s;
}

static struct udp_sess *app_lookup(struct udp_app *a, const struct sockaddr_storage *peer)
{
    struct udp_sess *s = a->table[addr_hash(peer)];

    while (s && !addr_equal(&s->peer, peer))
        s = s->anext;
    if (s && s->closed) {
        app_forget(a, s);
        s = NULL;
    }
    return s;
}

/* End idle sessions and forget closed ones. */
static void app_sweep(struct udp_app *a, uint64_t now)
{
    for (unsigned b = 0; b < ADDR_BUCKETS; b++) {
        struct udp_sess *s = a->table[b], *next;
        for (; s; s = next) {
            uint64_t last = s->last_ms;
            next = s->anext;
            if (!s->closed && now > last && now - last >= (uint64_t)s->idle_s * 1000u)
                sess_close(s, "idle", 1);
            if (s->closed)
                app_forget(a, s);
        }
    }
}

/* What a public reader took from one recvmmsg: datagrams that go to the
 * tunnel in one write when it takes them now, each with its frame header in
 * the HEADROOM in front of it. */
struct rx_batch {
    unsigned n;
    size_t bytes;
    uint64_t epoch;
    struct iovec iov[RECV_BATCH];
    struct udp_sess *sess[RECV_BATCH];
    size_t len[RECV_BATCH];
    unsigned char open[RECV_BATCH];
    unsigned char first[RECV_BATCH];  /* the session's first in the batch */
};

/* Put a datagram of s into b: 1, or 0 when it must wait in s's queue
 * (something of s is queued or with the uplink, or TCP has its turn). */
static int batch_add(struct rx_batch *b, struct udp_sess *s, unsigned char *data, size_t len)
{
    struct udp_tun *u = s->u;
    unsigned char hdr[HEADROOM];
    int open, first, n;

    if (b->n == 0)
        b->epoch = tunnel_link_epoch(u->t); /* before need_open, as in sess_send_direct */
    if (tunnel_udp_throttled(u->t))
        return 0;
    pthread_mutex_lock(&u->lock);
    if (u->dead || s->closed || s->qhead || (s->inflight && !s->in_batch)) {
        pthread_mutex_unlock(&u->lock);
        return 0;
    }
    first = !s->in_batch;
    if (first) {
        s->in_batch = 1;
        s->inflight++;
    }
    open = s->need_open;
    s->need_open = 0;
    pthread_mutex_unlock(&u->lock);
    n = data_header(s, len, open, hdr, sizeof(hdr));
    if (n <= 0) {
        pthread_mutex_lock(&u->lock);
        if (open)
            s->need_open = 1;
        if (first) {
            s->in_batch = 0;
            s->inflight--;
        }
        pthread_mutex_unlock(&u->lock);
        return 0;
    }
    memcpy(data - n, hdr, (size_t)n);
    s->refs++; /* b's, until batch_flush */
    b->iov[b->n].iov_base = data - n;
    b->iov[b->n].iov_len = (size_t)n + len;
    b->sess[b->n] = s;
    b->len[b->n] = len;
    b->open[b->n] = (unsigned char)open;
    b->first[b->n] = (unsigned char)first;
    b->n++;
    b->bytes += len;
    return 1;
}

/* Queue a copy of a datagram for s (the uplink sends it). 1 when the reader
 * should pause: s's queue is full while TCP data flows on the link. */
static int app_enqueue(struct udp_sess *s, const unsigned char *data, size_t len)
{
    struct app_stats *st = s->app->cfg.stats;
    struct dgram *d = malloc(sizeof(*d) + len);

    if (!d) {
        count_drop(st, UDP_DROP_QUEUE_FULL);
        return 0;
    }
    d->len = len;
    memcpy(d->data, data, len);
    return sess_enqueue(s, d, st) && tunnel_tcp_busy(s->u->t);
}

/* Send b in one tunnel write; when the tunnel does not take it now, its
 * datagrams wait in their sessions' queues, in order. */
static int batch_flush(struct rx_batch *b)
{
    int r, pause = 0;

    if (b->n == 0)
        return 0;
    r = tunnel_try_send_frames(b->sess[0]->u->t, b->iov, (int)b->n,
                               b->n, b->epoch);
    for (unsigned i = 0; i < b->n; i++) {
        struct udp_sess *s = b->sess[i];
        struct udp_tun *u = s->u;
        pthread_mutex_lock(&u->lock);
        if (b->first[i]) {
            s->in_batch = 0;
            s->inflight--;
        }
        if (r != 0 && b->open[i])
            s->need_open = 1;
        pthread_mutex_unlock(&u->lock);
    }
    for (unsigned i = 0; i < b->n && r != 0; i++) {
        struct udp_sess *s = b->sess[i];
        if (r < 0) {
            count_drop(s->app->cfg.stats, UDP_DROP_TUNNEL_DOWN);
            continue;
        }
        /* The header in front goes: the uplink makes its own. */
        pause |= app_enqueue(s, (unsigned char *)b->iov[i].iov_base + b->iov[i].iov_len -
                             b->len[i], b->len[i]);
    }
    for (unsigned i = 0; i < b->n; i++)
        sess_unref(b->sess[i]);
    b->n = 0;
    b->bytes = 0;
    return pause;
}

/* A datagram from a client; buf has HEADROOM writable bytes in front and
 * stays untouched until b is flushed. 1 when the reader should pause. */
static int app_datagram(struct udp_app *a, struct rx_batch *b, unsigned char *buf, size_t n,
                        const struct sockaddr_storage *peer, socklen_t peerlen)
{
    struct app_stats *st = a->cfg.stats;
    struct udp_sess *s;
    int pause = 0;

    st->dgrams_in++;
    st->bytes_in += n;
    s = app_lookup(a, peer);
    if (!s)
        s = app_open(a, peer, peerlen);
    if (!s)
        return 0;
    s->last_ms = mono_ms();
    if (batch_add(b, s, buf, n))
        return 0;
    /* It waits behind what s has queued; and its earlier ones in b go first. */
    if (s->in_batch)
        pause = batch_flush(b);
    return app_enqueue(s, buf, n) | pause;
}

/* Datagrams the kernel dropped at the socket because it was full (its
 * counter, SO_RXQ_OVFL, rides on each received one): they count as arrived
 * and dropped for a full queue. */
static void app_kernel_drops(struct udp_app *a, struct msghdr *mh)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
        uint32_t total, delta;
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SO_RXQ_OVFL ||
            c->cmsg_len < CMSG_LEN(sizeof(total)))
            continue;
        memcpy(&total, CMSG_DATA(c), sizeof(total));
        delta = total - a->kernel_drops;
        a->kernel_drops = total;
        a->cfg.stats->dgrams_in += delta;
        a->cfg.stats->drops[UDP_DROP_QUEUE_FULL] += delta;
    }
}

/* A public reader's buffers: RECV_BATCH datagrams, each with HEADROOM in
 * front, their addresses and SO_RXQ_OVFL counters. */
struct rx_bufs {
    struct mmsghdr mm[RECV_BATCH];
    struct iovec iov[RECV_BATCH];
    struct sockaddr_storage peer[RECV_BATCH];
    union {
        struct cmsghdr align;
        unsigned char b[CMSG_SPACE(sizeof(uint32_t))];
    } cm[RECV_BATCH];
    struct rx_batch batch;
    unsigned char *mem;
};

static void *app_main(void *arg)
{
    struct udp_app *a = arg;
    struct rx_bufs *rx = calloc(1, sizeof(*rx));
    uint64_t next_sweep = mono_ms() + SWEEP_MS;

    pthread_setname_np(pthread_self(), "udp-app");
    /* Untouched pages cost nothing: small datagrams use the start of each. */
    if (rx)
        rx->mem = malloc((size_t)RECV_BATCH * (HEADROOM + RECV_BUF));
    if (!rx || !rx->mem) {
        log_error("ev=udp_app_failed app=%s err=\"out of memory\"", a->name);
        free(rx);
        return NULL;
    }
    for (unsigned i = 0; i < RECV_BATCH; i++)
        rx->iov[i].iov_base = rx->mem + (size_t)i * (HEADROOM + RECV_BUF) + HEADROOM;
    while (!a->stopping) {
        struct pollfd pfd = {.fd = a->fd, .events = POLLIN};
        uint64_t now = mono_ms();
        int wait = now >= next_sweep ? 0 : (int)(next_sweep - now);
        int pause = 0;

        if (poll(&pfd, 1, wait) < 0 && errno != EINTR)
            break;
        for (int turn = 0; turn < RECV_BURST && !a->stopping && !pause; turn++) {
            int got;
            for (unsigned i = 0; i < RECV_BATCH; i++) {
                struct msghdr *mh = &rx->mm[i].msg_hdr;
                rx->iov[i].iov_len = RECV_BUF;
                mh->msg_name = &rx->peer[i];
                mh->msg_namelen = sizeof(rx->peer[i]);
                mh->msg_iov = &rx->iov[i];
                mh->msg_iovlen = 1;
                mh->msg_control = rx->cm[i].b;
                mh->msg_controllen = sizeof(rx->cm[i].b);
                mh->msg_flags = 0;
            }
            got = recvmmsg(a->fd, rx->mm, RECV_BATCH, MSG_DONTWAIT | MSG_TRUNC, NULL);
            if (got < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                    break;
                if (errno == ECONNREFUSED || errno == EHOSTUNREACH || errno == ENETUNREACH)
                    continue; /* an ICMP error about an earlier reply */
                log_warn("ev=udp_recv_failed app=%s err=\"%s\"", a->name, strerror(errno));
                break;
            }
            for (int i = 0; i < got; i++) {
                struct msghdr *mh = &rx->mm[i].msg_hdr;
                size_t n = rx->mm[i].msg_len;
                app_kernel_drops(a, mh);
                if (n > PKT_MAX_DGRAM || (mh->msg_flags & MSG_TRUNC)) {
                    a->cfg.stats->dgrams_in++;
                    count_drop(a->cfg.stats, UDP_DROP_OVERSIZE);
                    continue;
                }
                pause |= app_datagram(a, &rx->batch, rx->iov[i].iov_base, n, &rx->peer[i],
                                      mh->msg_namelen);
            }
            pause |= batch_flush(&rx->batch);
            if (got < RECV_BATCH)
                break;
        }
        /* A client's queue is full while TCP data flows on the link: leave
         * the next datagrams to the kernel for a moment rather than spend
         * the CPU TCP needs on reading and dropping them one by one. The
         * socket's buffer holds them; what overflows it is counted. */
        if (pause)
            sleep_ms(THROTTLE_NAP_MS);
        now = mono_ms();
        if (now >= next_sweep) {
            app_sweep(a, now);
            next_sweep = now + SWEEP_MS;
        }
    }
    free(rx->mem);
    free(rx);
    return NULL;
}

struct udp_app *udp_app_start(int fd, const struct udp_app_cfg *cfg, char *err, size_t errlen)
{
    struct udp_app *a = calloc(1, sizeof(*a));
    pthread_attr_t attr;
    int rc;

    if (!a) {
        snprintf(err, errlen, "out of memory");
        close(fd);
        return NULL;
    }
    a->refs = 1;
    a->fd = fd;
    {
        int on = 1;
        (void)setsockopt(fd, SOL_SOCKET, SO_RXQ_OVFL, &on, sizeof(on));
    }
    a->cfg = *cfg;
    snprintf(a->name, sizeof(a->name), "%s", cfg->name);
    a->cfg.name = a->name;
    app_stats_ref(cfg->stats);
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, THREAD_STACK_SIZE);
    rc = pthread_create(&a->thread, &attr, app_main, a);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start a thread: %s", strerror(rc));
        app_unref(a);
        return NULL;
    }
    return a;
}

void udp_app_stop(struct udp_app *a)
{
    if (!a)
        return;
    a->stopping = 1;
    shutdown(a->fd, SHUT_RDWR); /* wakes its poll */
    pthread_join(a->thread, NULL);
    for (unsigned b = 0; b < ADDR_BUCKETS; b++) {
        while (a->table[b]) {
            struct udp_sess *s = a->table[b];
            sess_close(s, "app removed", 1);
            app_forget(a, s);
        }
    }
    app_unref(a);
}

/* The session a UDP_DATA or UDP_CLOSE from the private side names, with a
 * reference, and the drops it reports added to its app's. 1 found; 0 it
 * ended while the frame was on its way; -1 never opened (err). */
static int public_session(struct udp_tun *u, struct pkt *p, struct udp_sess **out, char *err,
                          size_t errlen)
{
    json_t *drops = json_object_get(p->json, "drops");
    struct app_stats *st;
    struct udp_sess *s;

    pthread_mutex_lock(&u->lock);
    if (p->conn >= u->next_id) {
        pthread_mutex_unlock(&u->lock);
        snprintf(err, errlen, "%s for session %llu that was never opened",
                 p->op == OP_UDP_DATA ? "UDP_DATA" : "UDP_CLOSE", (unsigned long long)p->conn);
        return -1;
    }
    s = table_find_locked(u, p->conn);
    if (s)
        s->refs++;
    pthread_mutex_unlock(&u->lock);
    if (!s)
        return 0;
    st = s->app->cfg.stats;
    if (drops) {
        st->drops[UDP_DROP_QUEUE_FULL] +=
            (uint64_t)json_integer_value(json_object_get(drops, "queue_full"));
        st->drops[UDP_DROP_OVERSIZE] +=
            (uint64_t)json_integer_value(json_object_get(drops, "oversize"));
        st->drops[UDP_DROP_TUNNEL_DOWN] +=
            (uint64_t)json_integer_value(json_object_get(drops, "tunnel_down"));
    }
    *out = s;
    return 1;
}

/* From the tunnel: a reply for a client. */
static int public_data(struct udp_tun *u, struct pkt *p, char *err, size_t errlen)
{
    struct udp_sess *s = NULL;
    struct app_stats *st;
    ssize_t w;
    int r;

    if (json_object_get(p->json, "open")) {
        snprintf(err, errlen, "UDP_DATA with 'open' from the private side");
        return -1;
    }
    r = public_session(u, p, &s, err, errlen);
    if (r <= 0)
        return r;
    st = s->app->cfg.stats;
    s->last_ms = mono_ms();
    st->dgrams_out++;
    st->bytes_out += p->len;
    do {
        w = sendto(s->app->fd, p->payload, p->len, MSG_DONTWAIT | MSG_NOSIGNAL,
                   (struct sockaddr *)&s->peer, s->peerlen);
    } while (w < 0 && errno == EINTR);
    if (w < 0)
        count_drop(st, errno == EMSGSIZE ? UDP_DROP_OVERSIZE : UDP_DROP_QUEUE_FULL);
    sess_unref(s);
    return 0;
}

static int public_close(struct udp_tun *u, struct pkt *p, char *err, size_t errlen)
{
    const char *reason = json_string_value(json_object_get(p->json, "reason"));
    struct udp_sess *s = NULL;
    struct app_stats *st;
    int r = public_session(u, p, &s, err, errlen);

    if (r <= 0)
        return r;
    st = s->app->cfg.stats;
    /* What the private side could not deliver, that started it. */
    if (reason && strcmp(reason, "limit") == 0)
        count_drop(st, UDP_DROP_SESSION_LIMIT);
    else if (reason && (strcmp(reason, "unreachable") == 0 || strcmp(reason, "refused") == 0))
        count_drop(st, UDP_DROP_UNREACHABLE);
    sess_close(s, "closed by the private side", 0);
    sess_unref(s);
    return 0;
}

/* ----------------------------------------------------------- private side */

static void log_refused(const char *what, uint64_t id, const char *host, int port, const char *err)
{
    uint64_t now = mono_ms(), n;
    char esc[160];

    pthread_mutex_lock(&refused_lock);
    refused_total++;
    if (refused_logged != 0 && now - refused_log_ms < REFUSED_LOG_EVERY_MS) {
        pthread_mutex_unlock(&refused_lock);
        return;
    }
    n = refused_total - refused_logged;
    refused_logged = refused_total;
    refused_log_ms = now;
    pthread_mutex_unlock(&refused_lock);
    log_warn("ev=udp_session_refused what=%s session=%llu target=%s:%d err=\"%s\" refused=%llu",
             what, (unsigned long long)id, host, port, log_escape(err, esc, sizeof(esc)),
             (unsigned long long)n);
}

/* Send one datagram to the target. Under s->lock with s->fd ready. */
static void private_send_locked(struct udp_sess *s, const unsigned char *data, size_t len)
{
    ssize_t w;

    do {
        w = send(s->fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL);
    } while (w < 0 && errno == EINTR);
    if (w >= 0)
        return;
    if (errno == EMSGSIZE) {
        s->rep[REP_OVERSIZE]++;
    } else if (errno == ECONNREFUSED || errno == EHOSTUNREACH || errno == ENETUNREACH) {
        /* An ICMP error for an earlier datagram: the session ends, and the
         * public side counts it as unreachable. */
        s->connected = -1;
        shutdown(s->fd, SHUT_RDWR);
    } else {
        s->rep[REP_QUEUE_FULL]++;
    }
}

static void *private_main(void *arg)
{
    struct udp_sess *s = arg;
    unsigned char *mem = NULL, *buf = NULL;
    char err[160];
    const char *end = "done";
    int fd;

    fd = priv_connect(s->host, s->port, err, sizeof(err), priv_connect_arg);
    if (fd < 0) {
        log_refused("connect", s->id, s->host, s->port, err);
        sess_close(s, strncmp(err, "target not allowed", 18) == 0 ? "refused" : "unreachable",
                   1);
        goto out;
    }
    mem = malloc(HEADROOM + RECV_BUF);
    buf = mem ? mem + HEADROOM : NULL;
    pthread_mutex_lock(&s->lock);
    s->fd = fd;
    if (!buf || s->closed) {
        s->fd = -1;
        pthread_mutex_unlock(&s->lock);
        close(fd);
        if (!buf)
            sess_close(s, "out of memory", 1);
        goto out;
    }
    s->connected = 1;
    while (s->phead && s->connected == 1) {
        struct dgram *d = s->phead;
        s->phead = d->next;
        s->pcount--;
        s->pbytes -= d->len;
        private_send_locked(s, d->data, d->len);
        free(d);
    }
    pthread_mutex_unlock(&s->lock);
    log_debug("ev=udp_session_open session=%llu target=%s:%d", (unsigned long long)s->id,
              s->host, s->port);

    while (!s->closed && !tunnel_is_dead(s->t) && s->connected == 1) {
        uint64_t now = mono_ms(), deadline;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int wait;

        deadline = s->last_ms + (uint64_t)s->idle_s * 1000u + IDLE_SLACK_MS;
        if (now >= deadline) {
            end = "idle";
            break;
        }
        wait = deadline - now > 60000 ? 60000 : (int)(deadline - now);
        if (poll(&pfd, 1, wait) < 0 && errno != EINTR)
            break;
        for (int i = 0; i < RECV_BURST && !s->closed; i++) {
            ssize_t n = recv(fd, buf, RECV_BUF, MSG_DONTWAIT | MSG_TRUNC);
            struct dgram *d;
            int r;
            if (n < 0) {
                if (errno == ECONNREFUSED || errno == EHOSTUNREACH || errno == ENETUNREACH)
                    s->connected = -1;
                break;
            }
            if (n == 0 && (pfd.revents & (POLLHUP | POLLRDHUP)))
                break; /* shut down by sess_close */
            if ((size_t)n > PKT_MAX_DGRAM) {
                s->rep[REP_OVERSIZE]++;
                continue;
            }
            s->last_ms = mono_ms();
            r = sess_send_direct(s, buf, (size_t)n);
            if (r != 0) {
                if (r < 0)
                    s->rep[REP_TUNNEL_DOWN]++;
                continue;
            }
            d = malloc(sizeof(*d) + (size_t)n);
            if (!d) {
                s->rep[REP_QUEUE_FULL]++;
                continue;
            }
            d->len = (size_t)n;
            memcpy(d->data, buf, (size_t)n);
            sess_enqueue(s, d, NULL);
        }
    }
    if (s->connected < 0)
        end = "unreachable";
    sess_close(s, end, 1);
    pthread_mutex_lock(&s->lock);
    s->fd = -1;
    s->connected = 0;
    pthread_mutex_unlock(&s->lock);
    close(fd);
out:
    free(mem);
    sess_unref(s);
    return NULL;
}

/* A session the public side opens: its thread dials the target. */
static int private_open(struct udp_tun *u, struct pkt *p, json_t *open, char *err, size_t errlen)
{
    const char *host = json_string_value(json_object_get(open, "target_host"));
    int port = (int)json_integer_value(json_object_get(open, "target_port"));
    unsigned idle = (unsigned)json_integer_value(json_object_get(open, "idle"));
    struct udp_sess *s;

    (void)err;
    (void)errlen;
    if (u->nsess + tunnel_conn_count(u->t) >= priv_max || !priv_connect) {
        log_refused("limit", p->conn, host, port,
                    "too many sessions and connections at home (proxy_private --max-conns)");
        queue_close_locked(u, p->conn, "limit", NULL);
        return 0;
    }
    s = calloc(1, sizeof(*s));
    if (!s) {
        queue_close_locked(u, p->conn, "out of memory", NULL);
        return 0;
    }
    s->refs = 2; /* u's table and its thread */
    s->id = p->conn;
    s->u = u;
    s->t = u->t;
    tunnel_ref(u->t);
    s->fd = -1;
    s->idle_s = idle;
    s->last_ms = mono_ms();
    snprintf(s->host, sizeof(s->host), "%s", host);
    s->port = port;
    pthread_mutex_init(&s->lock, NULL);
    if (thread_spawn(private_main, s) != 0) {
        s->refs = 1;
        sess_unref(s);
        queue_close_locked(u, p->conn, "no thread", NULL);
        return 0;
    }
    s->idnext = u->table[s->id % SESS_BUCKETS];
    u->table[s->id % SESS_BUCKETS] = s;
    s->in_table = 1;
    u->nsess++;
    s->refs++; /* the caller's, dropped by private_data */
    return 1;
}

static int private_data(struct udp_tun *u, struct pkt *p, char *err, size_t errlen)
{
    json_t *open = json_object_get(p->json, "open");
    struct udp_sess *s;

    pthread_mutex_lock(&u->lock);
    if (u->dead) {
        pthread_mutex_unlock(&u->lock);
        return 0;
    }
    s = table_find_locked(u, p->conn);
    if (s) {
        s->refs++;
    } else if (!open) {
        int never = p->conn > u->max_id;
        pthread_mutex_unlock(&u->lock);
        if (never) {
            snprintf(err, errlen, "UDP_DATA for session %llu that was never opened",
                     (unsigned long long)p->conn);
            return -1;
        }
        return 0; /* it ended here while this was on its way */
    } else {
        if (p->conn > u->max_id)
            u->max_id = p->conn;
        if (private_open(u, p, open, err, errlen) == 1)
            s = table_find_locked(u, p->conn);
    }
    pthread_mutex_unlock(&u->lock);
    if (!s)
        return 0;
    s->last_ms = mono_ms();
    pthread_mutex_lock(&s->lock);
    if (s->connected == 1 && s->fd >= 0) {
        private_send_locked(s, p->payload, p->len);
    } else if (!s->connected && !s->closed) {
        struct dgram *d = NULL;
        /* The thread is still finding the target: keep a few, oldest out first. */
        while (s->phead && (s->pcount >= PENDING_DGRAMS || s->pbytes + p->len > PENDING_BYTES)) {
            struct dgram *old = s->phead;
            s->phead = old->next;
            if (!s->phead)
                s->ptail = NULL;
            s->pcount--;
            s->pbytes -= old->len;
            free(old);
            s->rep[REP_QUEUE_FULL]++;
        }
        d = malloc(sizeof(*d) + p->len);
        if (d) {
            d->next = NULL;
            d->len = p->len;
            memcpy(d->data, p->payload, p->len);
            if (s->ptail)
                s->ptail->next = d;
            else
                s->phead = d;
            s->ptail = d;
            s->pcount++;
            s->pbytes += p->len;
        } else {
            s->rep[REP_QUEUE_FULL]++;
        }
    }
    pthread_mutex_unlock(&s->lock);
    sess_unref(s);
    return 0;
}

static int private_close(struct udp_tun *u, struct pkt *p, char *err, size_t errlen)
{
    struct udp_sess *s;

    pthread_mutex_lock(&u->lock);
    if (p->conn > u->max_id) {
        pthread_mutex_unlock(&u->lock);
        snprintf(err, errlen, "UDP_CLOSE for session %llu that was never opened",
                 (unsigned long long)p->conn);
        return -1;
    }
    s = table_find_locked(u, p->conn);
    if (s)
        s->refs++;
    pthread_mutex_unlock(&u->lock);
    if (!s)
        return 0;
    sess_close(s, "closed by the public side", 0);
    sess_unref(s);
    return 0;
}

int udp_dispatch(struct udp_tun *u, struct pkt *p, char *err, size_t errlen)
{
    if (u->is_public)
        return p->op == OP_UDP_DATA ? public_data(u, p, err, errlen)
                                    : public_close(u, p, err, errlen);
    return p->op == OP_UDP_DATA ? private_data(u, p, err, errlen)
                                : private_close(u, p, err, errlen);
}

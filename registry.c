/* registry.c - private proxies and apps of the public side, their listeners,
 * counters and persistence.
 *
 * One mutex (reg.lock) guards the lists and every app's listen_fd. An app is
 * reference counted: the list holds one reference and its acceptor thread
 * another, so unregistering never frees an app under a running acceptor. */

#include "registry.h"

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

#include "allow.h"
#include "ftp_data.h"
#include "log.h"
#include "netio.h"
#include "proxy_header.h"
#include "state.h"
#include "tokens.h"
#include "tunnel.h"
#include "udp.h"

#define STATE_FILE "apps.json"
#define STATE_MAX_BYTES (4 * 1024 * 1024)
#define MAX_APPS 1024
#define MAX_PRIVATES 1024
#define LISTEN_BACKLOG 4096
#define REBIND_EVERY_MS 2000
#define LIST_CONNS_MAX 1000         /* connections one GET /connections shows */
#define KICK_REFUSE_MAX 86400

struct app {
    _Atomic int refs;
    struct app_spec spec;
    struct app_stats *stats;
    int listen_fd;              /* under reg.lock; -1 while not bound; a UDP app's
                                   socket belongs to its udp_app once started */
    int xfds[NET_BIND_MAX];     /* with several --bind addresses: the sockets of the
                                   others (bound and closed with listen_fd) */
    int nx;
    int port_refused;           /* restored, but --allow-ports no longer allows its port */
    _Atomic int stopping;
    struct app *next;
    /* FTP app in fixed passive-range mode: the range's listeners (owned by
     * its range thread once started) and its control clients' addresses. */
    int *range_fds;
    int nrange;
    struct ctl_client *clients; /* under reg.lock */
};

/* One control connection of a fixed-range FTP app: its client may open data
 * connections on the range. Freed when the connection ends. */
struct ctl_client {
    struct ctl_client *next;
    struct app *app;            /* a reference */
    struct sockaddr_storage ip;
};

struct priv {
    char name[PKT_NAME_MAX + 1];
    struct tunnel *t;           /* a reference while online, else NULL */
    char address[64];
    time_t connected_since;     /* 0: not since this process started */
    uint64_t reconnects;
    struct tunnel_resume_stats done; /* of its sessions that ended */
    uint64_t refused_until;     /* mono_ms(): kicked, refused until then */
    struct allowlist *home_allow; /* its --allow rules as its last HELLO or APPS said
                                     them; NULL when it did not (older, or too long) */
    struct priv *next;
};

static struct {
    pthread_mutex_t lock;
    struct app *apps;
    struct priv *privs;
    const struct state_dir *state; /* the caller's, open until after registry_shutdown */
    struct net_binds binds;
    int tunnel_port, web_port;
    time_t started;
    struct registry_limits limits;
    _Atomic int acceptors;
    _Atomic uint64_t resume_refused;
    const struct registry_store *store; /* set once before any request */
    pthread_mutex_t wlock;              /* registry_write_lock */
} reg = {.lock = PTHREAD_MUTEX_INITIALIZER, .wlock = PTHREAD_MUTEX_INITIALIZER};

static void app_unref(struct app *a)
{
    if (a && --a->refs == 0) {
        for (int i = 0; a->range_fds && i < a->nrange; i++)
            if (a->range_fds[i] >= 0)
                close(a->range_fds[i]);
        free(a->range_fds);
        app_stats_unref(a->stats);
        free(a);
    }
}

static const char *spec_protocol(const struct app_spec *s)
{
    return s->udp ? "udp" : s->ftp ? "ftp" : "tcp";
}

static struct app *find_app(const char *name)
{
    for (struct app *a = reg.apps; a; a = a->next)
        if (strcmp(a->spec.name, name) == 0)
            return a;
    return NULL;
}

static struct priv *find_priv(const char *name)
{
    for (struct priv *p = reg.privs; p; p = p->next)
        if (strcmp(p->name, name) == 0)
            return p;
    return NULL;
}

static void home_allow_free(struct allowlist *al)
{
    if (al) {
        allow_free(al);
        free(al);
    }
}

/* Would the private proxy of s refuse to dial s's target? Its --allow rules
 * (HELLO, APPS) admit nothing of it: then the reason in out, else NULL (also
 * when it cannot be told: the private is offline, its rules may change
 * meanwhile, or a CIDR rule might admit the name). Under reg.lock. */
static const char *home_refusal_locked(const struct app_spec *s, char *out, size_t cap)
{
    const struct priv *p = find_priv(s->private_name);
    char rule[PKT_HOST_MAX + 16];

    if (!p || !p->home_allow || !p->t || tunnel_is_dead(p->t) ||
        allow_judge(p->home_allow, s->target_host, s->target_port) != ALLOW_NO)
        return NULL;
    allow_rule_for(s->target_host, s->target_port, rule, sizeof(rule));
    snprintf(out, cap, "private proxy '%s' would refuse to dial %s: its --allow rules do not "
             "permit it; add --allow %s to its command line (or 'allow = %s' to its config file)",
             p->name, rule, rule, rule);
    return out;
}

static unsigned count_privs(void)
{
    unsigned n = 0;

    for (struct priv *p = reg.privs; p; p = p->next)
        n++;
    return n;
}

/* ---------------------------------------------------------- persistence */

/* "proxy_protocol" and "allow_from" of an app, only when set. 0 or -1. */
static int spec_extras_to_json(const struct app_spec *s, json_t *o)
{
    if (s->proxy_protocol &&
        json_object_set_new(o, "proxy_protocol", json_integer(s->proxy_protocol)) != 0)
        return -1;
    if (s->allow_from.n) {
        json_t *arr = cidr_list_to_json(&s->allow_from);
        if (!arr || json_object_set_new(o, "allow_from", arr) != 0)
            return -1;
    }
    return 0;
}

/* The same members read (API body, HELLO/APPS entry, state file), each
 * checked. 0, or -1 with err. */
static int spec_extras_from_json(json_t *obj, struct app_spec *spec, char *err, size_t errlen)
{
    json_t *v = json_object_get(obj, "proxy_protocol");

    if (v && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 2) {
            snprintf(err, errlen, "'proxy_protocol' must be 0 (off), 1 or 2 (the PROXY "
                     "protocol version to send the app)");
            return -1;
        }
        spec->proxy_protocol = (int)json_integer_value(v);
        if (spec->proxy_protocol && (spec->udp || spec->ftp)) {
            snprintf(err, errlen, "'proxy_protocol' is for TCP apps (\"protocol\": \"tcp\")");
            return -1;
        }
    }
    return cidr_list_from_json(json_object_get(obj, "allow_from"), &spec->allow_from, err, errlen);
}

static json_t *spec_to_json(const struct app_spec *s)
{
    json_t *o = json_pack("{s:s,s:i,s:s,s:i,s:s,s:s}", "name", s->name, "public_port",
                          s->public_port, "target_host", s->target_host, "target_port",
                          s->target_port, "private", s->private_name, "protocol",
                          spec_protocol(s));

    if (o && s->udp)
        json_object_set_new(o, "udp_idle_timeout", json_integer(s->udp_idle));
    if (o && s->owner[0])
        json_object_set_new(o, "owner", json_string(s->owner));
    if (o && s->disabled)
        json_object_set_new(o, "disabled", json_true());
    if (o && s->ftp && s->ftp_lo) {
        char r[16];
        snprintf(r, sizeof(r), "%d-%d", s->ftp_lo, s->ftp_hi);
        json_object_set_new(o, "ftp_passive_ports", json_string(r));
    }
    if (o && spec_extras_to_json(s, o) != 0) {
        json_decref(o);
        o = NULL;
    }
    return o;
}

/* Save the apps (plus `extra`, minus `skip`) and privates. Under reg.lock. */
static int save_locked(const struct app_spec *extra, const struct app *skip, char *err,
                       size_t errlen)
{
    json_t *root = json_object(), *apps = json_array(), *privs = json_array();
    int rc = -1;

    if (!root || !apps || !privs)
        goto oom;
    for (struct app *a = reg.apps; a; a = a->next)
        if (a != skip && json_array_append_new(apps, spec_to_json(&a->spec)) != 0)
            goto oom;
    if (extra && json_array_append_new(apps, spec_to_json(extra)) != 0)
        goto oom;
    for (struct priv *p = reg.privs; p; p = p->next)
        if (json_array_append_new(privs, json_string(p->name)) != 0)
            goto oom;
    if (json_object_set_new(root, "version", json_integer(1)) != 0 ||
        json_object_set(root, "privates", privs) != 0 || json_object_set(root, "apps", apps) != 0)
        goto oom;
    rc = state_write_json(reg.state, STATE_FILE, root, err, errlen);
    goto out;
oom:
    snprintf(err, errlen, "out of memory");
out:
    json_decref(apps);
    json_decref(privs);
    json_decref(root);
    return rc;
}

/* --------------------------------------------------------------- accept */

/* client: the connection's client (a PROXY header's address behind a
 * balancer), for the log. */
static void refuse_client(struct app *a, int fd, const struct sockaddr_storage *client,
                          const char *why)
{
    char peer[64], kind[PKT_NAME_MAX + 160];

    a->stats->failures++;
    /* A flood (an outage under load) is one line per app and reason per
     * interval plus a count, not one line per client (log.h, log_sum_note). */
    snprintf(kind, sizeof(kind), "app=%s reason=\"%s\"", a->spec.name, why);
    if (log_sum_note(LOG_LVL_WARN, "client_refused", kind)) {
        net_sa_str(client, peer, sizeof(peer));
        log_warn("ev=client_refused app=%s client=%s reason=\"%s\"", a->spec.name, peer, why);
    }
    close(fd);
}

/* Which connection limit, if any, a new client of a would break. Under reg.lock. */
static const char *over_limit_locked(const struct app *a, struct tunnel *t)
{
    uint64_t total = 0;

    if (a->stats->active >= reg.limits.max_conns_per_app)
        return "too many connections to this app (--max-conns-per-app)";
    if (tunnel_conn_count(t) >= reg.limits.max_conns_per_private)
        return "too many connections through this private proxy (--max-conns-per-private)";
    for (struct app *o = reg.apps; o; o = o->next)
        total += o->stats->active;
    if (total >= reg.limits.max_conns)
        return "too many connections in total (--max-conns)";
    if (a->spec.owner[0]) {
        struct token_scope sc;
        uint64_t mine = 0;
        if (!tokens_get(a->spec.owner, &sc))
            return "the token of this app was revoked";
        for (struct app *o = reg.apps; o; o = o->next)
            if (strcmp(o->spec.owner, a->spec.owner) == 0)
                mine += o->stats->active;
        if (mine >= sc.max_conns)
            return "too many connections to the apps of this token (its max_conns)";
    }
    return NULL;
}

static void ctl_client_end(void *arg)
{
    struct ctl_client *cc = arg;
    struct app *a = cc->app;

    pthread_mutex_lock(&reg.lock);
    for (struct ctl_client **pp = &a->clients; *pp; pp = &(*pp)->next) {
        if (*pp == cc) {
            *pp = cc->next;
            break;
        }
    }
    pthread_mutex_unlock(&reg.lock);
    free(cc);
    app_unref(a);
}

/* A control connection of a fixed-range FTP app: relayed as it is (the
 * server itself announces the public address and a port of the range); its
 * client's address may open data connections on the range while it lasts. */
static void start_fixed_control(struct app *a, struct tunnel *t, int fd, const struct app_spec *s,
                                const struct sockaddr_storage *client)
{
    struct ctl_client *cc = calloc(1, sizeof(*cc));
    struct conn_opts o = {.ftp = CONN_FTP_NONE, .on_end = ctl_client_end, .end_arg = cc,
                          .client = *client};

    if (!cc) {
        refuse_client(a, fd, client, "out of memory");
        return;
    }
    cc->ip = *client;
    pthread_mutex_lock(&reg.lock);
    a->refs++;
    cc->app = a;
    cc->next = a->clients;
    a->clients = cc;
    pthread_mutex_unlock(&reg.lock);
    conn_start_public_ex(t, fd, s->name, s->target_host, s->target_port, a->stats, &o);
}

/* The same address, an IPv4-mapped one equal to its IPv4 (a PROXY header
 * says 192.0.2.1 where a dual-stack socket shows ::ffff:192.0.2.1). */
static int same_ip(const struct sockaddr_storage *xin, const struct sockaddr_storage *yin)
{
    struct sockaddr_storage xs = *xin, ys = *yin;
    const struct sockaddr_storage *x = &xs, *y = &ys;

    net_unmap(&xs);
    net_unmap(&ys);
    if (x->ss_family != y->ss_family)
        return 0;
    if (x->ss_family == AF_INET)
        return memcmp(&((const struct sockaddr_in *)x)->sin_addr,
                      &((const struct sockaddr_in *)y)->sin_addr, 4) == 0;
    if (x->ss_family == AF_INET6)
        return memcmp(&((const struct sockaddr_in6 *)x)->sin6_addr,
                      &((const struct sockaddr_in6 *)y)->sin6_addr, 16) == 0;
    return 0;
}

/* A data connection on port of a fixed-range app: only from the address of
 * one of its control connections, relayed to the same port at home. */
static void handle_fixed_data(struct app *a, int fd, int port)
{
    struct sockaddr_storage peer;
    socklen_t sl = sizeof(peer);
    struct tunnel *t = NULL;
    struct app_spec s;
    struct priv *p;
    int known = 0;

    if (getpeername(fd, (struct sockaddr *)&peer, &sl) != 0) {
        close(fd);
        return;
    }
    pthread_mutex_lock(&reg.lock);
    s = a->spec;
    for (struct ctl_client *cc = a->clients; cc && !known; cc = cc->next)
        known = same_ip(&cc->ip, &peer);
    p = find_priv(s.private_name);
    if (known && p && p->t && !tunnel_is_dead(p->t)) {
        t = p->t;
        tunnel_ref(t);
    }
    pthread_mutex_unlock(&reg.lock);
    if (!known) {
        char who[64];
        net_peer_str(fd, who, sizeof(who));
        a->stats->ftp_data_refused++;
        log_warn("ev=ftp_data_refused app=%s port=%d from=%s msg=\"no control connection "
                 "of this app from that address\"", s.name, port, who);
        close(fd);
        return;
    }
    if (!t) {
        close(fd);
        return;
    }
    conn_start_public(t, fd, s.name, s.target_host, port, a->stats->ftp_data);
    tunnel_unref(t);
}

/* The passive range of a fixed-range FTP app: one thread polls all its
 * listeners (at most PKT_FTP_FIXED_MAX). Holds a reference to a. */
static void *range_main(void *arg)
{
    struct app *a = arg;
    struct pollfd *pf = calloc((size_t)a->nrange, sizeof(*pf));

    pthread_setname_np(pthread_self(), "ftp-range");
    for (int i = 0; pf && i < a->nrange; i++) {
        pf[i].fd = a->range_fds[i];
        pf[i].events = POLLIN;
    }
    while (pf && !a->stopping) {
        int r = poll(pf, (nfds_t)a->nrange, 200);
        if (r <= 0)
            continue;
        for (int i = 0; i < a->nrange; i++) {
            int fd;
            if (!(pf[i].revents & POLLIN))
                continue;
            fd = accept4(pf[i].fd, NULL, NULL, SOCK_CLOEXEC);
            if (fd >= 0)
                handle_fixed_data(a, fd, a->spec.ftp_lo + i % (a->spec.ftp_hi - a->spec.ftp_lo + 1));
        }
    }
    free(pf);
    reg.acceptors--;
    app_unref(a);
    return NULL;
}

/* Bind the fixed passive range of s: fds[] gets one listener per port (-1
 * where it could not bind when !strict). 0, or -1 with err (strict: every
 * port must bind). */
static int range_count(const struct app_spec *s)
{
    return (s->ftp_hi - s->ftp_lo + 1) * (reg.binds.n ? reg.binds.n : 1);
}

/* Listener k of a range: port ftp_lo + k % ports, bind address k / ports. */
static int bind_range(const struct app_spec *s, int **fds_out, int strict, char *err, size_t errlen)
{
    int ports = s->ftp_hi - s->ftp_lo + 1, n = range_count(s);
    int *fds = malloc((size_t)n * sizeof(int));

    *fds_out = NULL;
    if (!fds) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (int i = 0; i < n; i++) {
        char why[128];
        fds[i] = net_listen(reg.binds.n ? reg.binds.addr[i / ports] : NULL, s->ftp_lo + i % ports,
                            64, why, sizeof(why));
        if (fds[i] >= 0)
            net_set_nonblock(fds[i], 1);
        if (fds[i] < 0 && strict) {
            snprintf(err, errlen, "cannot listen on port %d of ftp_passive_ports: %s",
                     s->ftp_lo + i % ports, why);
            for (int k = 0; k < i; k++)
                close(fds[k]);
            free(fds);
            return -1;
        }
        if (fds[i] < 0)
            log_error("ev=app_bind_failed app=%s port=%d err=\"%s\"", s->name,
                      s->ftp_lo + i % ports, why);
    }
    *fds_out = fds;
    return 0;
}

static void range_close(const struct app_spec *s, int *fds)
{
    for (int i = 0; fds && i < range_count(s); i++)
        if (fds[i] >= 0)
            close(fds[i]);
    free(fds);
}

static int port_allowed(int port);

/* What keeps FTP app s's ports from being used (the data port pool, the
 * server's own ports, --allow-ports), or NULL. Under reg.lock. */
static const char *ftp_spec_conflict(const struct app_spec *s)
{
    static char why[320];

    if (!s->ftp_lo)
        return NULL;
    for (int p = s->ftp_lo; p <= s->ftp_hi; p++) {
        if (p == s->public_port || p == reg.tunnel_port || p == reg.web_port) {
            snprintf(why, sizeof(why), "ftp_passive_ports includes port %d, the %s", p,
                     p == s->public_port ? "app's own public port" : "server's tunnel or web port");
            return why;
        }
        if (ftp_public_port_in_range(p)) {
            snprintf(why, sizeof(why), "ftp_passive_ports overlaps the FTP data ports "
                     "(--ftp-ports) at %d", p);
            return why;
        }
        if (!port_allowed(p)) {
            snprintf(why, sizeof(why), "port %d of ftp_passive_ports is not one this server "
                     "allows for apps (%s; --allow-ports)", p, reg.limits.ports_text);
            return why;
        }
    }
    return NULL;
}

/* A client whose address allow_from does not list: counted, and logged
 * (summed per interval under a flood, log_sum_note). */
static void count_source_refused(struct app *a, const struct sockaddr_storage *peer)
{
    char kind[PKT_NAME_MAX + 40], who[80];

    a->stats->source_refused++;
    snprintf(kind, sizeof(kind), "app=%s", a->spec.name);
    if (log_sum_note(LOG_LVL_WARN, "client_not_allowed", kind)) {
        net_sa_str(peer, who, sizeof(who));
        log_warn("ev=client_not_allowed app=%s client=%s reason=\"not in the app's allow_from\"",
                 a->spec.name, who);
    }
}

/* udp_app's check of a new session's client (every datagram of a client
 * that is not allowed comes here: none makes a session). */
static int udp_source_allowed(void *arg, const struct sockaddr_storage *peer)
{
    struct app *a = arg;
    int ok;

    pthread_mutex_lock(&reg.lock);
    ok = cidr_list_allows(&a->spec.allow_from, peer);
    pthread_mutex_unlock(&reg.lock);
    if (!ok)
        count_source_refused(a, peer);
    return ok;
}

static void handle_client(struct app *a, int fd, const struct sockaddr_storage *peer)
{
    struct tunnel *t = NULL;
    struct app_spec s;
    struct priv *p;
    const char *limit = NULL;

    pthread_mutex_lock(&reg.lock);
    if (!cidr_list_allows(&a->spec.allow_from, peer)) {
        pthread_mutex_unlock(&reg.lock);
        count_source_refused(a, peer);
        close(fd);
        return;
    }
    s = a->spec;
    p = find_priv(s.private_name);
    if (s.disabled) {
        pthread_mutex_unlock(&reg.lock);
        refuse_client(a, fd, peer, "app disabled");
        return;
    }
    if (p && p->t && !tunnel_is_dead(p->t)) {
        char why[PKT_HOST_MAX * 2 + 300];
        t = p->t;
        tunnel_ref(t);
        limit = over_limit_locked(a, t);
        if (!limit && home_refusal_locked(&s, why, sizeof(why)))
            limit = "its private proxy's --allow rules do not permit the target";
    }
    pthread_mutex_unlock(&reg.lock);
    if (!t) {
        refuse_client(a, fd, peer, "private proxy offline");
        return;
    }
    if (limit) {
        a->stats->refused++;
        refuse_client(a, fd, peer, limit);
        tunnel_unref(t);
        return;
    }
    if (s.ftp && !s.ftp_lo && tunnel_version(t) < PKT_PROTO_FTP) {
        a->stats->refused++;
        refuse_client(a, fd, peer, "its private proxy speaks a protocol version without FTP: "
                             "upgrade proxy_private");
        tunnel_unref(t);
        return;
    }
    if (s.proxy_protocol && tunnel_version(t) < PKT_PROTO_PP) {
        a->stats->refused++;
        refuse_client(a, fd, peer, "its private proxy speaks a protocol version without the PROXY "
                             "protocol (proxy_protocol needs 6): upgrade proxy_private");
        tunnel_unref(t);
        return;
    }
    if (log_enabled(LOG_LVL_DEBUG)) {
        char who[80];
        net_sa_str(peer, who, sizeof(who));
        log_debug("ev=client_connected app=%s client=%s", s.name, who);
    }
    if (s.ftp && !s.ftp_lo) {
        struct conn_opts o = {.ftp = CONN_FTP_CONTROL, .client = *peer};
        conn_start_public_ex(t, fd, s.name, s.target_host, s.target_port, a->stats, &o);
    } else if (s.ftp) {
        start_fixed_control(a, t, fd, &s, peer);
    } else {
        struct conn_opts o = {.ftp = CONN_FTP_NONE, .proxy_protocol = s.proxy_protocol,
                              .client = *peer};
        conn_start_public_ex(t, fd, s.name, s.target_host, s.target_port, a->stats, &o);
    }
    tunnel_unref(t);
}

/* ------------------------------------------------- PROXY headers (--accept-proxy-from) */

/* A connection from a --accept-proxy-from address waits for its header on a
 * thread of its own, so that a balancer's slow or silent connection never
 * holds up the app's accept loop. netio's pooled THREAD_STACK_SIZE thread
 * is enough: pp_read_header keeps PP_HEADER_MAX (552) bytes on the stack.
 * The simpler alternative, reading the header later on the connection's relay
 * thread, would come after allow_from and the connection limits were judged
 * on the balancer's address. At most PP_PENDING_MAX such threads at once
 * (beyond that the connection is refused). */
struct pp_job {
    struct app *app;            /* a reference */
    int fd;
    struct sockaddr_storage peer;
    uint64_t deadline;          /* mono_ms(): PP_DEADLINE_MS after the accept */
};

static _Atomic int pp_pending;

static void *pp_job_main(void *arg)
{
    struct pp_job *j = arg;
    struct sockaddr_storage client;
    const char *why = NULL;

    pthread_setname_np(pthread_self(), "proxy-header");
    if (pp_read_header(j->fd, j->deadline, &j->app->stopping, &j->peer, &client, &why) == 0) {
        handle_client(j->app, j->fd, &client);
    } else {
        pp_count_refused();
        refuse_client(j->app, j->fd, &j->peer, why);
    }
    pp_pending--;
    app_unref(j->app);
    free(j);
    return NULL;
}

/* A client from a --accept-proxy-from address: its header is read on a
 * thread of its own (pp_job_main); fd is taken in every case. */
static void pp_client(struct app *a, int fd, const struct sockaddr_storage *peer)
{
    struct pp_job *j = NULL;
    int rc;

    if (pp_pending >= PP_PENDING_MAX) {
        pp_count_refused();
        refuse_client(a, fd, peer, "too many connections waiting for their PROXY header");
        return;
    }
    j = calloc(1, sizeof(*j));
    if (!j) {
        refuse_client(a, fd, peer, "out of memory");
        return;
    }
    j->app = a;
    j->fd = fd;
    j->peer = *peer;
    j->deadline = mono_ms() + PP_DEADLINE_MS;
    a->refs++;
    pp_pending++;
    rc = thread_spawn(pp_job_main, j);
    if (rc != 0) {
        pp_pending--;
        a->refs--; /* the acceptor's reference still holds it */
        free(j);
        refuse_client(a, fd, peer, "cannot start a thread");
    }
}

/* Try to bind a's port on every --bind address; under no lock. Returns the
 * first socket, the others in xfds[0..*nx); -1 (with errno) when any failed. */
static int bind_app(const struct app_spec *s, int xfds[NET_BIND_MAX], int *nx, char *err,
                    size_t errlen)
{
    int fds[NET_BIND_MAX];
    int n = net_listen_all(&reg.binds, s->udp, s->public_port, LISTEN_BACKLOG, fds, err, errlen);

    *nx = 0;
    if (n < 0)
        return -1;
    for (int i = 1; i < n; i++)
        xfds[(*nx)++] = fds[i];
    return fds[0];
}

static void close_fds(const int *fds, int n)
{
    for (int i = 0; i < n; i++)
        close(fds[i]);
}

/* udp_app's way to its private's tunnel, and the target for a new session. */
static struct tunnel *udp_tunnel_of(void *arg, struct udp_target *to)
{
    struct app *a = arg;
    struct tunnel *t = NULL;
    struct priv *p;

    pthread_mutex_lock(&reg.lock);
    snprintf(to->host, sizeof(to->host), "%s", a->spec.target_host);
    to->port = a->spec.target_port;
    to->idle_s = a->spec.udp_idle;
    p = find_priv(a->spec.private_name);
    if (p && p->t && !tunnel_is_dead(p->t)) {
        t = p->t;
        tunnel_ref(t);
    }
    pthread_mutex_unlock(&reg.lock);
    return t;
}

/* A UDP app's thread once its socket is bound: the datagrams are udp.c's;
 * this one waits for the app to be removed and stops it, under no lock (the
 * udp_app's reader takes reg.lock to find the tunnel). */
static void serve_udp(struct app *a, int fd)
{
    struct udp_app_cfg uc = {.name = a->spec.name, .stats = a->stats, .tunnel = udp_tunnel_of,
                             .allowed = udp_source_allowed, .arg = a};
    struct timespec ts = {.tv_nsec = 100 * 1000 * 1000};
    char err[128];
    struct udp_app *u[NET_BIND_MAX] = {NULL};
    int xfds[NET_BIND_MAX], nx, nu = 0;

    /* One udp_app per --bind address (each answers from the socket its
     * client wrote to), all with the app's counters. */
    pthread_mutex_lock(&reg.lock);
    nx = a->nx;
    memcpy(xfds, a->xfds, sizeof(xfds));
    a->nx = 0; /* the udp_apps own them now */
    pthread_mutex_unlock(&reg.lock);
    u[nu] = udp_app_start(fd, &uc, err, sizeof(err)); /* takes fd */
    if (u[nu])
        nu++;
    for (int i = 0; u[0] && i < nx; i++) {
        u[nu] = udp_app_start(xfds[i], &uc, err, sizeof(err));
        if (u[nu])
            nu++;
        else
            log_error("ev=app_failed app=%s err=\"%s\"", a->spec.name, err);
    }
    if (!u[0]) {
        log_error("ev=app_failed app=%s err=\"%s\"", a->spec.name, err);
        close_fds(xfds, nx);
        pthread_mutex_lock(&reg.lock);
        a->listen_fd = -1;
        pthread_mutex_unlock(&reg.lock);
        return;
    }
    for (;;) {
        int off;
        pthread_mutex_lock(&reg.lock);
        off = a->spec.disabled;
        pthread_mutex_unlock(&reg.lock);
        if (a->stopping || off)
            break;
        nanosleep(&ts, NULL);
    }
    for (int i = 0; i < nu; i++)
        udp_app_stop(u[i]);
    pthread_mutex_lock(&reg.lock);
    a->listen_fd = -1;
    pthread_mutex_unlock(&reg.lock);
}

/* A TCP app's next client on any of its sockets (listen_fd and the other
 * --bind addresses'), its address in *peer: the fd, or -1 with errno
 * (EAGAIN: none yet, look at stopping again). */
static int accept_any(struct app *a, int lfd, struct sockaddr_storage *peer)
{
    struct pollfd pf[NET_BIND_MAX];
    socklen_t sl = sizeof(*peer);
    int n = 1;

    pf[0].fd = lfd;
    pthread_mutex_lock(&reg.lock);
    for (int i = 0; i < a->nx && n < NET_BIND_MAX; i++)
        pf[n++].fd = a->xfds[i];
    pthread_mutex_unlock(&reg.lock);
    if (n == 1) /* the usual case: block in accept, woken by shutdown */
        return accept4(lfd, (struct sockaddr *)peer, &sl, SOCK_CLOEXEC);
    for (int i = 0; i < n; i++) {
        pf[i].events = POLLIN;
        pf[i].revents = 0;
    }
    if (poll(pf, (nfds_t)n, 200) <= 0) {
        errno = EAGAIN;
        return -1;
    }
    for (int i = 0; i < n; i++) {
        if (pf[i].revents) {
            int fd = accept4(pf[i].fd, (struct sockaddr *)peer, &sl, SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (fd >= 0 && net_set_nonblock(fd, 0) != 0) {
                close(fd);
                errno = EAGAIN;
                return -1;
            }
            return fd;
        }
    }
    errno = EAGAIN;
    return -1;
}

/* A disabled app's acceptor closes its listener (clients are refused by the
 * kernel) and waits to be enabled; 1 when it is disabled. */
static int disabled_locked_check(struct app *a, int *lfd)
{
    struct timespec ts = {.tv_nsec = 100 * 1000 * 1000};
    int off;

    pthread_mutex_lock(&reg.lock);
    off = a->spec.disabled;
    if (off && a->listen_fd >= 0 && !a->spec.udp) {
        close(a->listen_fd);
        a->listen_fd = -1;
        close_fds(a->xfds, a->nx); /* the other --bind addresses' too */
        a->nx = 0;
    }
    *lfd = a->listen_fd;
    pthread_mutex_unlock(&reg.lock);
    if (off)
        nanosleep(&ts, NULL);
    return off;
}

static void *acceptor_main(void *arg)
{
    struct app *a = arg;
    uint64_t last_warn = 0;
    int lfd;

    pthread_setname_np(pthread_self(), "acceptor");
    for (;;) {
        pthread_mutex_lock(&reg.lock);
        lfd = a->listen_fd;
        pthread_mutex_unlock(&reg.lock);
        if (a->stopping)
            break;
        if (disabled_locked_check(a, &lfd))
            continue;
        if (lfd < 0 && a->port_refused) {
            /* Kept (so nothing registered is lost) but not served until the
             * admin allows its port again and restarts. */
            struct timespec ts = {.tv_nsec = 100 * 1000 * 1000};
            nanosleep(&ts, NULL);
            continue;
        }
        if (lfd < 0) {
            /* Restored from state but the port was busy: keep trying, so the
             * app comes back by itself once the port is free. */
            char err[128];
            struct timespec ts = {.tv_nsec = 100 * 1000 * 1000};
            int xfds[NET_BIND_MAX], nx;
            int fd = bind_app(&a->spec, xfds, &nx, err, sizeof(err));
            if (fd >= 0) {
                pthread_mutex_lock(&reg.lock);
                if (a->stopping) {
                    close(fd);
                    close_fds(xfds, nx);
                } else {
                    a->listen_fd = fd;
                    memcpy(a->xfds, xfds, sizeof(xfds));
                    a->nx = nx;
                    log_info("ev=app_listening app=%s port=%d", a->spec.name, a->spec.public_port);
                }
                pthread_mutex_unlock(&reg.lock);
                continue;
            }
            if (mono_ms() - last_warn > 60000) {
                log_error("ev=app_bind_failed app=%s err=\"%s\" retry=yes", a->spec.name, err);
                last_warn = mono_ms();
            }
            for (int i = 0; i < REBIND_EVERY_MS / 100 && !a->stopping; i++)
                nanosleep(&ts, NULL);
            continue;
        }
        if (a->spec.udp) {
            serve_udp(a, lfd); /* until the app is removed or disabled */
            continue;
        }
        struct sockaddr_storage peer;
        int fd = accept_any(a, lfd, &peer);
        if (fd >= 0) {
            if (pp_accept_listed(&peer))
                pp_client(a, fd, &peer); /* the header first, on its own thread */
            else
                handle_client(a, fd, &peer);
            continue;
        }
        if (a->stopping)
            break;
        if (errno == EINTR || errno == ECONNABORTED || errno == EAGAIN || errno == EWOULDBLOCK)
            continue;
        if (disabled_locked_check(a, &lfd))
            continue; /* POST /disable shut the listener down */
        if (mono_ms() - last_warn > 1000) {
            log_error("ev=accept_failed app=%s err=\"%s\"", a->spec.name, strerror(errno));
            last_warn = mono_ms();
        }
        /* Out of descriptors or memory: wait for some to be released. */
        struct timespec ts = {.tv_nsec = 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    pthread_mutex_lock(&reg.lock);
    if (a->listen_fd >= 0 && !a->spec.udp)
        close(a->listen_fd);
    a->listen_fd = -1;
    close_fds(a->xfds, a->nx);
    a->nx = 0;
    pthread_mutex_unlock(&reg.lock);
    reg.acceptors--;
    app_unref(a);
    return NULL;
}

/* Create an app with an already bound listener (or -1; with port_refused,
 * one that is not to be bound at all), start its acceptor and add it to the
 * list. Under reg.lock. */
static int add_app_locked(const struct app_spec *s, int lfd, const int *xfds, int nx,
                          int *range_fds, int port_refused, char *err, size_t errlen)
{
    struct app *a = calloc(1, sizeof(*a));
    int rc;

    if (!a || !(a->stats = app_stats_new()) ||
        (s->ftp && !(a->stats->ftp_data = app_stats_new()))) {
        if (a)
            app_stats_unref(a->stats);
        free(a);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    a->refs = 2; /* the list and the acceptor */
    a->spec = *s;
    a->listen_fd = lfd;
    for (int i = 0; i < nx && i < NET_BIND_MAX; i++)
        a->xfds[a->nx++] = xfds[i];
    a->port_refused = port_refused;
    reg.acceptors++;
    rc = thread_spawn(acceptor_main, a);
    if (rc != 0) {
        reg.acceptors--;
        snprintf(err, errlen, "cannot start a thread: %s", strerror(rc));
        app_stats_unref(a->stats);
        free(a);
        return -1;
    }
    a->next = reg.apps;
    reg.apps = a;
    if (range_fds) {
        /* The app owns the listeners from here on (closed when it is freed). */
        a->range_fds = range_fds;
        a->nrange = range_count(s);
        a->refs++;
        reg.acceptors++;
        rc = thread_spawn(range_main, a);
        if (rc != 0) {
            reg.acceptors--;
            a->refs--;
            log_error("ev=app_failed app=%s err=\"cannot start the passive range's thread: %s\"",
                      s->name, strerror(rc));
        }
    }
    return 0;
}

/* Unlink a from the list and stop its acceptor. Under reg.lock. */
static void remove_app_locked(struct app *a)
{
    for (struct app **pp = &reg.apps; *pp; pp = &(*pp)->next) {
        if (*pp == a) {
            *pp = a->next;
            break;
        }
    }
    a->stopping = 1;
    if (a->listen_fd >= 0 && !a->spec.udp)
        shutdown(a->listen_fd, SHUT_RDWR); /* wakes accept(); the acceptor closes it */
    for (int i = 0; i < a->nx && !a->spec.udp; i++)
        shutdown(a->xfds[i], SHUT_RDWR);
    app_unref(a);
}

/* ------------------------------------------------------------- register */

int registry_parse_ports(const char *spec, struct registry_limits *l, char *err, size_t errlen)
{
    int lo[REGISTRY_PORT_RANGES], hi[REGISTRY_PORT_RANGES], n;

    if (strlen(spec) >= sizeof(l->ports_text)) {
        snprintf(err, errlen, "--allow-ports '%.40s...' is too long", spec);
        return -1;
    }
    n = net_parse_port_ranges(spec, lo, hi, REGISTRY_PORT_RANGES);
    if (n < 0) {
        snprintf(err, errlen,
                 "--allow-ports '%s' is not a list of ports or LOW-HIGH ranges (1-65535, "
                 "at most %d, joined by commas)", spec, REGISTRY_PORT_RANGES);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        l->ports[i].lo = lo[i];
        l->ports[i].hi = hi[i];
    }
    l->nranges = n;
    snprintf(l->ports_text, sizeof(l->ports_text), "%s", spec);
    return 0;
}

void registry_set_limits(const struct registry_limits *limits)
{
    pthread_mutex_lock(&reg.lock);
    reg.limits = *limits;
    pthread_mutex_unlock(&reg.lock);
}

static int port_allowed(int port)
{
    for (int i = 0; i < reg.limits.nranges; i++)
        if (port >= reg.limits.ports[i].lo && port <= reg.limits.ports[i].hi)
            return 1;
    return 0;
}

int registry_spec_from_json(json_t *obj, struct app_spec *spec, char *err, size_t errlen)
{
    json_t *v;
    const char *s;

    memset(spec, 0, sizeof(*spec));
    if (!json_is_object(obj)) {
        snprintf(err, errlen, "the body must be a JSON object");
        return -1;
    }
    s = json_string_value(json_object_get(obj, "name"));
    if (!pkt_valid_name(s)) {
        snprintf(err, errlen, "'name' must be 1 to 64 letters, digits, '.', '_' or '-'");
        return -1;
    }
    snprintf(spec->name, sizeof(spec->name), "%s", s);
    v = json_object_get(obj, "public_port");
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 65535) {
        snprintf(err, errlen, "'public_port' must be a whole number from 1 to 65535");
        return -1;
    }
    spec->public_port = (int)json_integer_value(v);
    s = json_string_value(json_object_get(obj, "target_host"));
    if (!pkt_valid_host(s)) {
        snprintf(err, errlen, "'target_host' must be a host name or address (1 to 253 characters)");
        return -1;
    }
    snprintf(spec->target_host, sizeof(spec->target_host), "%s", s);
    v = json_object_get(obj, "target_port");
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 65535) {
        snprintf(err, errlen, "'target_port' must be a whole number from 1 to 65535");
        return -1;
    }
    spec->target_port = (int)json_integer_value(v);
    v = json_object_get(obj, "private");
    if (v && !json_is_null(v)) {
        s = json_string_value(v);
        if (!pkt_valid_name(s)) {
            snprintf(err, errlen, "'private' must be the name of a private proxy");
            return -1;
        }
        snprintf(spec->private_name, sizeof(spec->private_name), "%s", s);
    }
    v = json_object_get(obj, "protocol");
    if (v && !json_is_null(v)) {
        s = json_string_value(v);
        if (!s || (strcmp(s, "tcp") != 0 && strcmp(s, "udp") != 0 && strcmp(s, "ftp") != 0)) {
            snprintf(err, errlen, "'protocol' must be \"tcp\", \"udp\" or \"ftp\"");
            return -1;
        }
        spec->udp = strcmp(s, "udp") == 0;
        spec->ftp = strcmp(s, "ftp") == 0;
    }
    v = json_object_get(obj, "ftp_passive_ports");
    if (v && !json_is_null(v)) {
        s = json_string_value(v);
        if (!spec->ftp) {
            snprintf(err, errlen, "'ftp_passive_ports' is for FTP apps (\"protocol\": \"ftp\")");
            return -1;
        }
        if (!s || ftp_parse_ports(s, &spec->ftp_lo, &spec->ftp_hi) != 0 ||
            spec->ftp_hi - spec->ftp_lo + 1 > PKT_FTP_FIXED_MAX) {
            snprintf(err, errlen, "'ftp_passive_ports' must be \"LOW-HIGH\" within 1024-65535, "
                     "at most %d ports", PKT_FTP_FIXED_MAX);
            return -1;
        }
    }
    spec->udp_idle = UDP_IDLE_DEFAULT;
    v = json_object_get(obj, "udp_idle_timeout");
    if (v && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < PKT_IDLE_MIN ||
            json_integer_value(v) > PKT_IDLE_MAX) {
            snprintf(err, errlen, "'udp_idle_timeout' must be a whole number of seconds from %d "
                     "to %d", PKT_IDLE_MIN, PKT_IDLE_MAX);
            return -1;
        }
        if (!spec->udp) {
            snprintf(err, errlen, "'udp_idle_timeout' is for UDP apps (\"protocol\": \"udp\")");
            return -1;
        }
        spec->udp_idle = (unsigned)json_integer_value(v);
    }
    return spec_extras_from_json(obj, spec, err, errlen);
}

/* What the registry keeps of an app besides its request (owner, disabled),
 * from its entry in the state file. */
static void spec_state_from_json(json_t *obj, struct app_spec *s)
{
    const char *owner = json_string_value(json_object_get(obj, "owner"));

    if (owner && strlen(owner) == TOKEN_ID_LEN)
        snprintf(s->owner, sizeof(s->owner), "%s", owner);
    s->disabled = json_is_true(json_object_get(obj, "disabled"));
}

static int same_spec(const struct app_spec *a, const struct app_spec *b)
{
    return strcmp(a->name, b->name) == 0 && a->public_port == b->public_port &&
           strcmp(a->target_host, b->target_host) == 0 && a->target_port == b->target_port &&
           strcmp(a->private_name, b->private_name) == 0 && a->udp == b->udp &&
           (!a->udp || a->udp_idle == b->udp_idle) && a->ftp == b->ftp &&
           a->ftp_lo == b->ftp_lo && a->ftp_hi == b->ftp_hi &&
           a->proxy_protocol == b->proxy_protocol && cidr_list_equal(&a->allow_from, &b->allow_from);
}

/* The only known private proxy who may use: NULL when none or several, with
 * err saying so. Under reg.lock. */
static struct priv *only_priv_locked(const struct principal *who, char *err, size_t errlen)
{
    struct priv *one = NULL;
    unsigned n = 0;

    for (struct priv *p = reg.privs; p; p = p->next) {
        if (who && !who->admin && !scope_allows_private(&who->scope, p->name))
            continue;
        one = p;
        n++;
    }
    if (n == 1)
        return one;
    snprintf(err, errlen, n == 0 ? "no private proxy is known yet: start proxy_private first"
                                 : "several private proxies are known: say which one in 'private'");
    return NULL;
}

/* Why spec breaks the scope of token who (NULL when it does not). old: the
 * app it replaces. Under reg.lock. */
static const char *scope_violation_locked(const struct app_spec *s, const struct principal *who,
                                          const struct app *old, char *buf, size_t cap)
{
    const struct token_scope *sc = &who->scope;
    unsigned mine = 0;

    if (!scope_allows_private(sc, s->private_name)) {
        char names[256];
        scope_privates_text(sc, names, sizeof(names));
        snprintf(buf, cap, "this token may use only the private proxies %.150s, not '%s'",
                 names, s->private_name);
        return buf;
    }
    if (!scope_allows_port(sc, s->public_port) ||
        (s->ftp_lo && (!scope_allows_port(sc, s->ftp_lo) || !scope_allows_port(sc, s->ftp_hi)))) {
        snprintf(buf, cap, "public port %d%s is outside the ports of this token (%s)",
                 s->public_port, s->ftp_lo ? " or its ftp_passive_ports" : "", sc->ports_text);
        return buf;
    }
    for (int p = s->ftp_lo; s->ftp_lo && p <= s->ftp_hi; p++) {
        if (!scope_allows_port(sc, p)) {
            snprintf(buf, cap, "ftp_passive_ports reach port %d, outside the ports of this "
                     "token (%s)", p, sc->ports_text);
            return buf;
        }
    }
    for (struct app *a = reg.apps; a; a = a->next)
        if (a != old && strcmp(a->spec.owner, sc->id) == 0)
            mine++;
    if (mine >= sc->max_apps) {
        snprintf(buf, cap, "this token may have at most %u apps (its max_apps)", sc->max_apps);
        return buf;
    }
    return NULL;
}

/* Who did an action, for the log's by=: the private proxy priv (its HELLO or
 * APPS), else the token who (NULL: the admin). */
static const char *actor_text(const char *priv, const struct principal *who, char *buf,
                              size_t cap)
{
    if (priv)
        snprintf(buf, cap, "private:%s", priv);
    else if (who)
        principal_who(who, buf, cap);
    else
        snprintf(buf, cap, "admin");
    return buf;
}

/* How register_app goes: the checks only (the app as it would be into
 * *resolved, 0 when it would change anything), the whole change, or the
 * whole change of an app the store was just told of (an app already there
 * exactly so, from a sync that came first, is then this change done). */
enum reg_mode { REG_CHECK, REG_COMMIT, REG_CLAIMED };

static int register_app(const struct app_spec *in, int from_private, const struct principal *who,
                        enum reg_mode mode, struct app_spec *resolved, char *err, size_t errlen)
{
    struct app_spec s = *in;
    struct app *old = NULL;
    unsigned napps = 0;
    int scoped = who && !who->admin;
    int lfd = -1, status = 500, bind_errno, *range = NULL, xfds[NET_BIND_MAX], nx = 0;

    if (s.public_port == reg.tunnel_port || s.public_port == reg.web_port) {
        snprintf(err, errlen, "public port %d is this server's %s port; choose another", s.public_port,
                 s.public_port == reg.tunnel_port ? "tunnel" : "web");
        return 400;
    }
    pthread_mutex_lock(&reg.lock); /* the limits may change at a reload */
    if (!port_allowed(s.public_port)) {
        snprintf(err, errlen,
                 "public port %d is not one this server allows for apps (%s); the server's "
                 "admin can change that with --allow-ports", s.public_port, reg.limits.ports_text);
        status = 403;
        goto out;
    }
    snprintf(s.owner, sizeof(s.owner), "%s", scoped ? who->scope.id : "");
    s.disabled = 0;
    if (!s.private_name[0]) {
        struct priv *one = only_priv_locked(who, err, errlen);
        if (!one) {
            status = 400;
            goto out;
        }
        snprintf(s.private_name, sizeof(s.private_name), "%s", one->name);
    } else if (!find_priv(s.private_name)) {
        snprintf(err, errlen, "no private proxy named '%s' is known", s.private_name);
        status = 400;
        goto out;
    }
    if (s.udp) {
        struct priv *p = find_priv(s.private_name);
        if (p->t && !tunnel_is_dead(p->t) && tunnel_version(p->t) < PKT_PROTO_UDP) {
            snprintf(err, errlen, "private proxy '%s' speaks protocol version %d, which has no "
                     "UDP: upgrade its proxy_private", s.private_name, tunnel_version(p->t));
            status = 409;
            goto out;
        }
    }
    if (s.proxy_protocol) {
        struct priv *p = find_priv(s.private_name);
        if (p->t && !tunnel_is_dead(p->t) && tunnel_version(p->t) < PKT_PROTO_PP) {
            snprintf(err, errlen, "private proxy '%s' speaks protocol version %d, which has no "
                     "PROXY protocol (proxy_protocol needs %d): upgrade its proxy_private",
                     s.private_name, tunnel_version(p->t), PKT_PROTO_PP);
            status = 409;
            goto out;
        }
    }
    if (s.ftp) {
        struct priv *p = find_priv(s.private_name);
        const char *why = ftp_spec_conflict(&s);
        if (why) {
            snprintf(err, errlen, "%s", why);
            status = strstr(why, "--allow-ports") ? 403 : 409;
            goto out;
        }
        if (!s.ftp_lo && p->t && !tunnel_is_dead(p->t) && tunnel_version(p->t) < PKT_PROTO_FTP) {
            snprintf(err, errlen, "private proxy '%s' speaks protocol version %d, which has no "
                     "FTP: upgrade its proxy_private (or use ftp_passive_ports, which needs "
                     "nothing of it)", s.private_name, tunnel_version(p->t));
            status = 409;
            goto out;
        }
    }
    if (!s.udp && ftp_public_port_in_range(s.public_port)) {
        snprintf(err, errlen, "public port %d is one of the FTP data ports (--ftp-ports); "
                 "choose another", s.public_port);
        status = 409;
        goto out;
    }
    for (struct app *a = reg.apps; a; a = a->next) {
        napps++;
        if (!s.udp && !a->spec.udp && strcmp(a->spec.name, s.name) != 0 &&
            ((s.ftp_lo && ((a->spec.public_port >= s.ftp_lo && a->spec.public_port <= s.ftp_hi) ||
                           (a->spec.ftp_lo && a->spec.ftp_lo <= s.ftp_hi &&
                            s.ftp_lo <= a->spec.ftp_hi))) ||
             (a->spec.ftp_lo && s.public_port >= a->spec.ftp_lo &&
              s.public_port <= a->spec.ftp_hi))) {
            snprintf(err, errlen, "the ports overlap those of app '%s' (its public port or "
                     "ftp_passive_ports)", a->spec.name);
            status = 409;
            goto out;
        }
        if (strcmp(a->spec.name, s.name) == 0) {
            if (from_private && strcmp(a->spec.private_name, s.private_name) == 0 &&
                strcmp(a->spec.owner, s.owner) == 0) {
                s.disabled = a->spec.disabled; /* a reconnect does not enable it */
                if (same_spec(&a->spec, &s)) {
                    status = 200;
                    goto out;
                }
                old = a; /* its own private changed it: replace below */
                continue;
            }
            if (mode == REG_CLAIMED && same_spec(&a->spec, &s) &&
                strcmp(a->spec.owner, s.owner) == 0) {
                status = 201; /* the store's sync brought it first */
                goto out;
            }
            snprintf(err, errlen, "an app named '%s' already exists", s.name);
            status = 409;
            goto out;
        }
        if (a->spec.public_port == s.public_port && a->spec.udp == s.udp) {
            snprintf(err, errlen, "public %s port %d is already used by app '%s'",
                     s.udp ? "UDP" : "TCP", s.public_port, a->spec.name);
            status = 409;
            goto out;
        }
    }
    if (scoped) {
        char why[300];
        const char *v = scope_violation_locked(&s, who, old, why, sizeof(why));
        if (v) {
            snprintf(err, errlen, "%s", v);
            status = 403;
            goto out;
        }
    }
    /* Last: what is wrong on this side is said first. */
    if (home_refusal_locked(&s, err, errlen)) {
        status = 422;
        goto out;
    }
    if (!old && napps >= MAX_APPS) {
        snprintf(err, errlen, "too many apps (at most %d)", MAX_APPS);
        status = 409;
        goto out;
    }
    if (mode == REG_CHECK) {
        *resolved = s;
        status = 0;
        goto out;
    }
    if (old && old->spec.public_port == s.public_port && old->spec.udp == s.udp &&
        (old->spec.ftp_lo != s.ftp_lo || old->spec.ftp_hi != s.ftp_hi)) {
        snprintf(err, errlen, "app '%s' has another passive range: unregister it first to "
                 "change that", s.name);
        status = 409;
        goto out;
    }
    if (old && old->spec.public_port == s.public_port && old->spec.udp == s.udp) {
        /* Same port, new target: update in place; the acceptor (or the UDP
         * app, for each new session) reads the spec under the lock. */
        if (save_locked(&s, old, err, errlen) != 0) {
            status = 500;
            goto out;
        }
        old->spec = s;
        status = 200;
        log_info("ev=app_updated app=%s public_port=%d target=%s:%d private=%s", s.name,
                 s.public_port, s.target_host, s.target_port, s.private_name);
        goto out;
    }
    lfd = bind_app(&s, xfds, &nx, err, errlen);
    bind_errno = errno;
    if (lfd < 0) {
        if (bind_errno == EADDRINUSE) {
            snprintf(err, errlen, "public %s port %d is in use by another program on this server",
                     s.udp ? "UDP" : "TCP", s.public_port);
            status = 409;
        } else {
            char why[128];
            snprintf(why, sizeof(why), "%s", err);
            snprintf(err, errlen, "cannot listen on public port %d: %s", s.public_port, why);
            status = bind_errno == EACCES ? 400 : 500;
        }
        goto out;
    }
    if (s.ftp_lo && bind_range(&s, &range, 1, err, errlen) != 0) {
        close(lfd);
        close_fds(xfds, nx);
        status = 409;
        goto out;
    }
    if (save_locked(&s, old, err, errlen) != 0) {
        close(lfd);
        close_fds(xfds, nx);
        range_close(&s, range);
        status = 500;
        goto out;
    }
    if (old)
        remove_app_locked(old);
    if (add_app_locked(&s, lfd, xfds, nx, range, 0, err, errlen) != 0) {
        close(lfd);
        close_fds(xfds, nx);
        range_close(&s, range);
        status = 500;
        goto out;
    }
    status = old ? 200 : 201;
    {
        char by[TOKEN_LABEL_MAX * 4 + 40];
        actor_text(from_private ? s.private_name : NULL, who, by, sizeof(by));
        log_info("ev=app_registered app=%s protocol=%s public_port=%d target=%s:%d private=%s%s%s "
                 "by=%s", s.name, spec_protocol(&s), s.public_port, s.target_host, s.target_port,
                 s.private_name, s.ftp ? " ftp_mode=" : "",
                 s.ftp ? (s.ftp_lo ? "fixed" : "rewrite") : "", by);
    }
out:
    pthread_mutex_unlock(&reg.lock);
    return status;
}

int registry_register_as(const struct app_spec *in, int from_private, const struct principal *who,
                         char *err, size_t errlen)
{
    struct app_spec s;
    char *prev = NULL;
    int status;

    if (!reg.store)
        return register_app(in, from_private, who, REG_COMMIT, NULL, err, errlen);
    /* The checks here, the claim in the store (where two nodes asking at
     * once meet), then the change here; undone in the store if it fails. */
    registry_write_lock();
    status = register_app(in, from_private, who, REG_CHECK, &s, err, errlen);
    if (status != 0)
        goto out;
    status = reg.store->claim(&s, from_private, &prev, err, errlen);
    if (status != 0)
        goto out;
    status = register_app(&s, from_private, who, REG_CLAIMED, NULL, err, errlen);
    if (status >= 300)
        reg.store->undo(&s, prev);
    else
        reg.store->changed();
out:
    registry_write_unlock();
    free(prev);
    return status;
}

/* Why name may not be removed by owner / who (an HTTP status with err), or
 * 0. Under reg.lock. */
static int unregister_refusal_locked(const struct app *a, const char *name, const char *owner,
                                     const struct principal *who, char *err, size_t errlen)
{
    if (!a) {
        snprintf(err, errlen, "no app named '%s'", name ? name : "");
        return 404;
    }
    if (owner && strcmp(a->spec.private_name, owner) != 0) {
        snprintf(err, errlen, "app '%s' belongs to another private proxy", name);
        return 403;
    }
    if (who && !who->admin && strcmp(a->spec.owner, who->scope.id) != 0) {
        snprintf(err, errlen, "app '%s' is not one of this token's apps", name);
        return 403;
    }
    return 0;
}

/* Remove app name: of private owner only (NULL: any private's), on behalf
 * of who (NULL: the admin); with a store, there first. */
static int unregister(const char *name, const char *owner, const struct principal *who, char *err,
                      size_t errlen)
{
    char by[TOKEN_LABEL_MAX * 4 + 40];
    struct app *a;
    int status;

    if (reg.store) {
        registry_write_lock();
        pthread_mutex_lock(&reg.lock);
        status = unregister_refusal_locked(name ? find_app(name) : NULL, name, owner, who, err,
                                           errlen);
        pthread_mutex_unlock(&reg.lock);
        if (!status)
            status = reg.store->remove(name, err, errlen);
        if (status) {
            registry_write_unlock();
            return status;
        }
    }
    pthread_mutex_lock(&reg.lock);
    a = name ? find_app(name) : NULL;
    if ((status = unregister_refusal_locked(a, name, owner, who, err, errlen)) != 0) {
        /* (already gone here: a sync after the store's change took it) */
        if (reg.store && status == 404)
            status = 200;
    } else if (save_locked(NULL, a, err, errlen) != 0) {
        status = 500;
    } else {
        actor_text(owner, who, by, sizeof(by));
        log_info("ev=app_unregistered app=%s by=%s", a->spec.name, by);
        remove_app_locked(a);
        status = 200;
    }
    pthread_mutex_unlock(&reg.lock);
    if (reg.store) {
        if (status == 200)
            reg.store->changed();
        registry_write_unlock();
    }
    return status;
}

int registry_unregister(const char *name, char *err, size_t errlen)
{
    return unregister(name, NULL, NULL, err, errlen);
}

int registry_unregister_own(const char *name, const char *owner, char *err, size_t errlen)
{
    return unregister(name, owner, NULL, err, errlen);
}

int registry_unregister_as(const char *name, const struct principal *who, char *err, size_t errlen)
{
    return unregister(name, NULL, who, err, errlen);
}

static json_t *time_json(time_t t)
{
    struct tm tm;
    char buf[32];

    if (!t)
        return json_null();
    gmtime_r(&t, &tm);
    strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
    return json_string(buf);
}

/* May who manage app a (its owner, or the admin)? */
static int may_manage(const struct app *a, const struct principal *who)
{
    return !who || who->admin || strcmp(a->spec.owner, who->scope.id) == 0;
}

/* May who see private p (the admin, or a name of its scope)? */
static int may_see_priv(const char *name, const struct principal *who)
{
    return !who || who->admin || scope_allows_private(&who->scope, name);
}

int registry_set_disabled(const char *name, int on, const struct principal *who, char *err,
                          size_t errlen)
{
    char by[TOKEN_LABEL_MAX * 4 + 40];
    struct app *a;
    int status = 200, was;

    if (reg.store)
        registry_write_lock();
    pthread_mutex_lock(&reg.lock);
    a = name ? find_app(name) : NULL;
    if (!a) {
        snprintf(err, errlen, "no app named '%s'", name ? name : "");
        status = 404;
        goto out;
    }
    if (!may_manage(a, who)) {
        snprintf(err, errlen, "app '%s' is not one of this token's apps", name);
        status = 403;
        goto out;
    }
    was = a->spec.disabled;
    if (was == !!on)
        goto out;
    if (reg.store) {
        /* The store first (without the registry's lock: it may take a while). */
        struct app_spec changed = a->spec;
        changed.disabled = !!on;
        pthread_mutex_unlock(&reg.lock);
        status = reg.store->update(&changed, err, errlen);
        pthread_mutex_lock(&reg.lock);
        if (status)
            goto out;
        status = 200;
        if (!(a = find_app(name)) || a->spec.disabled == !!on)
            goto out; /* a sync did it meanwhile */
    }
    a->spec.disabled = !!on;
    if (save_locked(NULL, NULL, err, errlen) != 0) {
        a->spec.disabled = was;
        status = 500;
        goto out;
    }
    /* The acceptor closes its listener (wake it from accept()) or binds
     * it again; a UDP app's thread stops within 100 ms. */
    if (on && a->listen_fd >= 0 && !a->spec.udp)
        shutdown(a->listen_fd, SHUT_RDWR);
    for (int i = 0; on && i < a->nx && !a->spec.udp; i++)
        shutdown(a->xfds[i], SHUT_RDWR);
    log_info("ev=app_%s app=%s by=%s", on ? "disabled" : "enabled", a->spec.name,
             actor_text(NULL, who, by, sizeof(by)));
out:
    pthread_mutex_unlock(&reg.lock);
    if (reg.store) {
        if (status == 200)
            reg.store->changed();
        registry_write_unlock();
    }
    return status;
}

/* End t (a reference, dropped here; NULL: nothing) for a kick. */
static void kick_tunnel(struct tunnel *t, unsigned refuse_s)
{
    char msg[160];

    if (!t)
        return;
    if (refuse_s)
        snprintf(msg, sizeof(msg), "disconnected by the server's admin; refused for %u s",
                 refuse_s);
    else
        snprintf(msg, sizeof(msg), "disconnected by the server's admin");
    tunnel_fail(t, "kicked", msg);
    tunnel_unref(t);
}

int registry_kick(const char *name, unsigned refuse_s, const struct principal *who, char *err,
                  size_t errlen)
{
    char by[TOKEN_LABEL_MAX * 4 + 40];
    struct tunnel *t = NULL;
    struct priv *p;

    if (refuse_s > KICK_REFUSE_MAX)
        refuse_s = KICK_REFUSE_MAX;
    pthread_mutex_lock(&reg.lock);
    p = name ? find_priv(name) : NULL;
    if (!p || !may_see_priv(p->name, who)) {
        pthread_mutex_unlock(&reg.lock);
        snprintf(err, errlen, "no private proxy named '%s'%s", name ? name : "",
                 p ? " in this token's scope" : "");
        return p ? 403 : 404;
    }
    p->refused_until = refuse_s ? mono_ms() + refuse_s * 1000ull : 0;
    if (p->t) {
        t = p->t;
        tunnel_ref(t);
    }
    pthread_mutex_unlock(&reg.lock);
    log_info("ev=private_kicked name=%s refuse_s=%u online=%s by=%s", name, refuse_s,
             t ? "yes" : "no", actor_text(NULL, who, by, sizeof(by)));
    if (reg.store)
        reg.store->kicked(name, refuse_s);
    kick_tunnel(t, refuse_s);
    return 200;
}

void registry_kick_local(const char *name, unsigned refuse_s)
{
    struct tunnel *t = NULL;
    struct priv *p;

    if (refuse_s > KICK_REFUSE_MAX)
        refuse_s = KICK_REFUSE_MAX;
    pthread_mutex_lock(&reg.lock);
    p = find_priv(name);
    if (p) {
        p->refused_until = refuse_s ? mono_ms() + refuse_s * 1000ull : 0;
        if ((t = p->t))
            tunnel_ref(t);
    }
    pthread_mutex_unlock(&reg.lock);
    log_info("ev=private_kicked name=%s refuse_s=%u online=%s by=cluster", name, refuse_s,
             t ? "yes" : "no");
    kick_tunnel(t, refuse_s);
}

unsigned registry_private_refused(const char *name)
{
    struct priv *p;
    uint64_t now = mono_ms(), until = 0;

    pthread_mutex_lock(&reg.lock);
    p = find_priv(name);
    if (p)
        until = p->refused_until;
    pthread_mutex_unlock(&reg.lock);
    return until > now ? (unsigned)((until - now + 999) / 1000) : 0;
}

unsigned registry_revoked(const char *id)
{
    struct tunnel *kill[MAX_PRIVATES];
    unsigned n = 0;

    pthread_mutex_lock(&reg.lock);
    for (struct priv *p = reg.privs; p && n < MAX_PRIVATES; p = p->next) {
        if (p->t && strcmp(tunnel_owner(p->t), id) == 0) {
            kill[n++] = p->t;
            tunnel_ref(p->t);
        }
    }
    pthread_mutex_unlock(&reg.lock);
    for (unsigned i = 0; i < n; i++) {
        tunnel_fail(kill[i], "token_revoked", "the token of this private proxy was revoked");
        tunnel_unref(kill[i]);
    }
    return n;
}

json_t *registry_connections(const struct principal *who)
{
    /* On a web worker's small stack: everything sizeable on the heap. */
    struct conn_brief *b = malloc(LIST_CONNS_MAX * sizeof(*b));
    struct online {
        struct tunnel *t;
        char name[PKT_NAME_MAX + 1];
    } *ts = malloc(MAX_PRIVATES * sizeof(*ts));
    json_t *list = json_array();
    unsigned nt = 0, shown = 0;
    uint64_t total = 0;

    if (!b || !ts || !list) {
        free(b);
        free(ts);
        json_decref(list);
        return NULL;
    }
    pthread_mutex_lock(&reg.lock);
    for (struct priv *p = reg.privs; p && nt < MAX_PRIVATES; p = p->next) {
        if (p->t) {
            snprintf(ts[nt].name, sizeof(ts[nt].name), "%s", p->name);
            ts[nt].t = p->t;
            tunnel_ref(p->t);
            nt++;
        }
    }
    pthread_mutex_unlock(&reg.lock);
    for (unsigned i = 0; i < nt; i++) {
        unsigned n = tunnel_conns(ts[i].t, b, LIST_CONNS_MAX);
        if (n > LIST_CONNS_MAX)
            n = LIST_CONNS_MAX;
        for (unsigned k = 0; k < n; k++) {
            struct app *a;
            int mine;
            char client[80];
            pthread_mutex_lock(&reg.lock);
            a = find_app(b[k].app);
            mine = a ? may_manage(a, who) : !who || who->admin;
            pthread_mutex_unlock(&reg.lock);
            if (!mine)
                continue;
            total++;
            if (shown >= LIST_CONNS_MAX)
                continue;
            net_addr_str(&b[k].peer, client, sizeof(client));
            json_array_append_new(list, json_pack("{s:s,s:I,s:s,s:s,s:o,s:I,s:I}", "private",
                                                  ts[i].name, "id", (json_int_t)b[k].id, "app",
                                                  b[k].app, "client", client, "since",
                                                  time_json(b[k].since), "bytes_in",
                                                  (json_int_t)b[k].bytes_in, "bytes_out",
                                                  (json_int_t)b[k].bytes_out));
            shown++;
        }
        tunnel_unref(ts[i].t);
    }
    free(b);
    free(ts);
    return json_pack("{s:o,s:I,s:b}", "connections", list, "total", (json_int_t)total,
                     "truncated", total > shown);
}

int registry_close_conn(const char *priv, uint64_t id, const struct principal *who, char *err,
                        size_t errlen)
{
    char by[TOKEN_LABEL_MAX * 4 + 40];
    struct tunnel *t = NULL;
    struct priv *p;
    struct conn_info ci;
    struct app *a;
    int mine;

    pthread_mutex_lock(&reg.lock);
    p = priv ? find_priv(priv) : NULL;
    if (p && p->t) {
        t = p->t;
        tunnel_ref(t);
    }
    pthread_mutex_unlock(&reg.lock);
    if (!t || tunnel_conn_info(t, id, &ci) != 0) {
        tunnel_unref(t);
        snprintf(err, errlen, "no open connection %llu through private proxy '%s'",
                 (unsigned long long)id, priv ? priv : "");
        return 404;
    }
    app_stats_unref(ci.stats);
    pthread_mutex_lock(&reg.lock);
    a = find_app(ci.app);
    mine = a ? may_manage(a, who) : !who || who->admin;
    pthread_mutex_unlock(&reg.lock);
    if (!mine) {
        tunnel_unref(t);
        snprintf(err, errlen, "connection %llu is not to one of this token's apps",
                 (unsigned long long)id);
        return 403;
    }
    (void)tunnel_close_conn(t, id, "closed by the server's admin");
    tunnel_unref(t);
    log_info("ev=connection_closed private=%s conn=%llu app=%s by=%s", priv,
             (unsigned long long)id, ci.app, actor_text(NULL, who, by, sizeof(by)));
    return 200;
}

/* ----------------------------------------------------------------- list */


/* Its session's resume figures, those of its ended sessions added. */
static void priv_resume_stats(const struct priv *p, struct tunnel_resume_stats *rs)
{
    memset(rs, 0, sizeof(*rs));
    if (p->t && !tunnel_is_dead(p->t))
        tunnel_resume_info(p->t, rs);
    rs->suspensions += p->done.suspensions;
    rs->resumes += p->done.resumes;
    rs->conns_resumed += p->done.conns_resumed;
    rs->conns_lost += p->done.conns_lost;
}

/* Up, and not suspended (clients of a suspended one wait for its resume). */
static int priv_online(const struct priv *p)
{
    struct tunnel_resume_stats rs;

    if (!p || !p->t || tunnel_is_dead(p->t))
        return 0;
    tunnel_resume_info(p->t, &rs);
    return rs.suspended_since == 0;
}

/* Bytes of an app (an FTP app's data connections included). */
static uint64_t app_bytes(const struct app *a, int in)
{
    const struct app_stats *d = a->stats->ftp_data;

    return (in ? a->stats->bytes_in : a->stats->bytes_out) +
           (d ? (in ? d->bytes_in : d->bytes_out) : 0);
}

/* An FTP app's own members of /list: its mode and data connections; the
 * control connections are its active/total_connections. */
static void list_ftp(const struct app *a, json_t *o)
{
    const struct app_stats *st = a->stats, *d = st->ftp_data;

    json_object_set_new(o, "ftp_mode", json_string(a->spec.ftp_lo ? "fixed" : "rewrite"));
    json_object_set_new(o, "active_data_connections",
                        json_integer(d ? (json_int_t)d->active : 0));
    json_object_set_new(o, "total_data_connections", json_integer(d ? (json_int_t)d->total : 0));
    json_object_set_new(o, "failed_data_connections",
                        json_integer(d ? (json_int_t)d->failures : 0));
    json_object_set_new(o, "refused_data_connections",
                        json_integer((json_int_t)st->ftp_data_refused));
    json_object_set_new(o, "refused_port_commands", json_integer((json_int_t)st->ftp_port_refused));
    json_object_set_new(o, "no_data_port", json_integer((json_int_t)st->ftp_no_port));
    json_object_set_new(o, "tls_sessions", json_integer((json_int_t)st->ftp_tls));
}

json_t *registry_list(void)
{
    return registry_list_as(NULL);
}

json_t *registry_list_as(const struct principal *who)
{
    json_t *privs = json_array(), *apps = json_array();
    uint64_t now = mono_ms();

    pthread_mutex_lock(&reg.lock);
    for (struct priv *p = reg.privs; p; p = p->next) {
        struct tunnel_resume_stats rs;
        json_t *o;
        if (!may_see_priv(p->name, who))
            continue;
        priv_resume_stats(p, &rs);
        json_array_append_new(privs, json_pack("{s:s,s:b,s:s,s:o,s:I,s:o,s:I,s:I,s:I}", "name",
                                               p->name, "online", priv_online(p), "address",
                                               p->address, "connected_since",
                                               time_json(p->connected_since), "reconnects",
                                               (json_int_t)p->reconnects, "suspended_since",
                                               time_json(rs.suspended_since), "resumes",
                                               (json_int_t)rs.resumes, "conns_resumed",
                                               (json_int_t)rs.conns_resumed, "conns_lost_on_break",
                                               (json_int_t)rs.conns_lost));
        o = json_array_get(privs, json_array_size(privs) - 1);
        if (p->t && tunnel_owner(p->t)[0])
            json_object_set_new(o, "token", json_string(tunnel_owner(p->t)));
        if (p->refused_until > now)
            json_object_set_new(o, "refused_for",
                                json_integer((json_int_t)((p->refused_until - now + 999) / 1000)));
    }
    for (struct app *a = reg.apps; a; a = a->next) {
        json_t *o;
        if (!may_manage(a, who))
            continue;
        o = spec_to_json(&a->spec);
        if (a->spec.owner[0]) {
            struct token_scope sc;
            json_object_set_new(o, "owner_label", json_string(tokens_get(a->spec.owner, &sc)
                                                                  ? sc.label : "(revoked)"));
        }
        json_object_set_new(o, "online",
                            json_boolean(priv_online(find_priv(a->spec.private_name)) &&
                                         a->listen_fd >= 0));
        if (a->port_refused)
            json_object_set_new(o, "error", json_string("its public port is not allowed by "
                                                        "--allow-ports"));
        {
            char why[PKT_HOST_MAX * 2 + 300];
            if (home_refusal_locked(&a->spec, why, sizeof(why)))
                json_object_set_new(o, "home_refuses", json_string(why));
        }
        if (a->spec.udp) {
            const struct app_stats *st = a->stats;
            json_object_set_new(o, "active_sessions", json_integer((json_int_t)st->active));
            json_object_set_new(o, "total_sessions", json_integer((json_int_t)st->total));
            json_object_set_new(o, "datagrams_in", json_integer((json_int_t)st->dgrams_in));
            json_object_set_new(o, "datagrams_out", json_integer((json_int_t)st->dgrams_out));
            json_object_set_new(
                o, "drops",
                json_pack("{s:I,s:I,s:I,s:I,s:I}", "oversize",
                          (json_int_t)st->drops[UDP_DROP_OVERSIZE], "queue_full",
                          (json_int_t)st->drops[UDP_DROP_QUEUE_FULL], "session_limit",
                          (json_int_t)st->drops[UDP_DROP_SESSION_LIMIT], "unreachable",
                          (json_int_t)st->drops[UDP_DROP_UNREACHABLE], "tunnel_down",
                          (json_int_t)st->drops[UDP_DROP_TUNNEL_DOWN]));
        } else {
            if (a->spec.ftp)
                list_ftp(a, o);
            json_object_set_new(o, "active_connections", json_integer((json_int_t)a->stats->active));
            json_object_set_new(o, "total_connections", json_integer((json_int_t)a->stats->total));
            json_object_set_new(o, "failed_connections",
                                json_integer((json_int_t)a->stats->failures));
            json_object_set_new(o, "refused_connections",
                                json_integer((json_int_t)a->stats->refused));
        }
        json_object_set_new(o, "refused_sources", json_integer((json_int_t)a->stats->source_refused));
        json_object_set_new(o, "bytes_in", json_integer((json_int_t)app_bytes(a, 1)));
        json_object_set_new(o, "bytes_out", json_integer((json_int_t)app_bytes(a, 0)));
        json_array_append_new(apps, o);
    }
    pthread_mutex_unlock(&reg.lock);
    return json_pack("{s:o,s:o}", "privates", privs, "apps", apps);
}

/* Label values are names ([A-Za-z0-9._-]): nothing to escape. */
char *registry_metrics(void)
{
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    static const struct {
        const char *name, *type, *help;
    } app_metrics[] = {
        {"nat_app_bytes_in_total", "counter", "Bytes from clients to the app."},
        {"nat_app_bytes_out_total", "counter", "Bytes from the app to clients."},
        {"nat_app_connections_active", "gauge", "Client connections open now."},
        {"nat_app_connections_total", "counter", "Client connections accepted and relayed."},
        {"nat_app_connection_failures_total", "counter",
         "Client connections that could not be relayed (offline, refused, timed out, limits)."},
        {"nat_app_connections_refused_total", "counter",
         "Client connections turned away by a connection limit."},
        {"nat_udp_app_sessions_active", "gauge", "UDP sessions (client address:port) open now."},
        {"nat_udp_app_sessions_total", "counter", "UDP sessions opened."},
        {"nat_udp_app_datagrams_in_total", "counter", "Datagrams from clients to the UDP app."},
        {"nat_udp_app_datagrams_out_total", "counter", "Datagrams from the UDP app to clients."},
    };
    static const char *const drop_names[UDP_DROP_KINDS] = {
        "oversize", "queue_full", "session_limit", "unreachable", "tunnel_down"};

    if (!f)
        return NULL;
    pthread_mutex_lock(&reg.lock);
    for (size_t m = 0; m < sizeof(app_metrics) / sizeof(app_metrics[0]); m++) {
        fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", app_metrics[m].name, app_metrics[m].help,
                app_metrics[m].name, app_metrics[m].type);
        for (struct app *a = reg.apps; a; a = a->next) {
            const struct app_stats *st = a->stats;
            /* Bytes for every app; connections for TCP ones, the rest for UDP. */
            uint64_t v = m == 0 ? app_bytes(a, 1)
                         : m == 1 ? app_bytes(a, 0)
                         : m == 2 || m == 6 ? st->active
                         : m == 3 || m == 7 ? st->total
                         : m == 4 ? st->failures
                         : m == 5 ? st->refused
                         : m == 8 ? st->dgrams_in
                                  : st->dgrams_out;
            if (m >= 2 && (m >= 6) != (a->spec.udp != 0))
                continue;
            fprintf(f, "%s{app=\"%s\"} %llu\n", app_metrics[m].name, a->spec.name,
                    (unsigned long long)v);
        }
    }
    {
        static const struct {
            const char *name, *type, *help;
        } fm[] = {
            {"nat_ftp_app_data_connections_active", "gauge",
             "FTP data connections open now (the control connections are "
             "nat_app_connections_active)."},
            {"nat_ftp_app_data_connections_total", "counter", "FTP data connections relayed."},
            {"nat_ftp_app_tls_sessions_total", "counter",
             "FTP control connections that switched to TLS (AUTH TLS) and were no longer "
             "rewritten."},
        };
        for (size_t m = 0; m < sizeof(fm) / sizeof(fm[0]); m++) {
            fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", fm[m].name, fm[m].help, fm[m].name,
                    fm[m].type);
            for (struct app *a = reg.apps; a; a = a->next) {
                const struct app_stats *st = a->stats, *d = st->ftp_data;
                if (!a->spec.ftp)
                    continue;
                fprintf(f, "%s{app=\"%s\"} %llu\n", fm[m].name, a->spec.name,
                        (unsigned long long)(m == 0   ? (d ? d->active : 0)
                                             : m == 1 ? (d ? d->total : 0)
                                                      : st->ftp_tls));
            }
        }
        fprintf(f, "# HELP nat_ftp_app_refused_total FTP requests refused, by reason: a data "
                   "connection from another address (data_address), a PORT/EPRT naming "
                   "another address (bounce), no free data port (no_port).\n"
                   "# TYPE nat_ftp_app_refused_total counter\n");
        for (struct app *a = reg.apps; a; a = a->next) {
            if (!a->spec.ftp)
                continue;
            fprintf(f, "nat_ftp_app_refused_total{app=\"%s\",reason=\"data_address\"} %llu\n"
                       "nat_ftp_app_refused_total{app=\"%s\",reason=\"bounce\"} %llu\n"
                       "nat_ftp_app_refused_total{app=\"%s\",reason=\"no_port\"} %llu\n",
                    a->spec.name, (unsigned long long)a->stats->ftp_data_refused, a->spec.name,
                    (unsigned long long)a->stats->ftp_port_refused, a->spec.name,
                    (unsigned long long)a->stats->ftp_no_port);
        }
    }
    fprintf(f, "# HELP nat_app_source_refused_total Clients refused because their address is "
               "not in the app's allow_from (TCP and FTP: connections; UDP: datagrams).\n"
               "# TYPE nat_app_source_refused_total counter\n");
    for (struct app *a = reg.apps; a; a = a->next)
        fprintf(f, "nat_app_source_refused_total{app=\"%s\"} %llu\n", a->spec.name,
                (unsigned long long)a->stats->source_refused);
    fprintf(f, "# HELP nat_udp_app_drops_total Datagrams dropped, by reason.\n"
               "# TYPE nat_udp_app_drops_total counter\n");
    for (struct app *a = reg.apps; a; a = a->next)
        for (int k = 0; a->spec.udp && k < UDP_DROP_KINDS; k++)
            fprintf(f, "nat_udp_app_drops_total{app=\"%s\",reason=\"%s\"} %llu\n",
                    a->spec.name, drop_names[k], (unsigned long long)a->stats->drops[k]);
    fprintf(f, "# HELP nat_private_online Whether the private proxy's tunnel is up.\n"
               "# TYPE nat_private_online gauge\n");
    for (struct priv *p = reg.privs; p; p = p->next)
        fprintf(f, "nat_private_online{private=\"%s\"} %d\n", p->name, priv_online(p));
    fprintf(f, "# HELP nat_private_reconnects_total Tunnels that replaced an earlier one of the "
               "same private proxy.\n# TYPE nat_private_reconnects_total counter\n");
    for (struct priv *p = reg.privs; p; p = p->next)
        fprintf(f, "nat_private_reconnects_total{private=\"%s\"} %llu\n", p->name,
                (unsigned long long)p->reconnects);
    {
        static const struct {
            const char *name, *type, *help;
        } rm[] = {
            {"nat_private_suspended", "gauge",
             "Whether the private proxy's tunnel is broken and waits for it to resume."},
            {"nat_private_resumes_total", "counter", "Tunnel resumes after a broken link."},
            {"nat_private_conns_resumed_total", "counter",
             "Connections carried over a broken link by a resume."},
            {"nat_private_conns_lost_total", "counter",
             "Connections closed because the tunnel's link broke (not resumable, or not "
             "resumed in time)."},
        };
        for (size_t m = 0; m < sizeof(rm) / sizeof(rm[0]); m++) {
            fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", rm[m].name, rm[m].help, rm[m].name,
                    rm[m].type);
            for (struct priv *p = reg.privs; p; p = p->next) {
                struct tunnel_resume_stats rs;
                priv_resume_stats(p, &rs);
                fprintf(f, "%s{private=\"%s\"} %llu\n", rm[m].name, p->name,
                        (unsigned long long)(m == 0   ? rs.suspended_since != 0
                                             : m == 1 ? rs.resumes
                                             : m == 2 ? rs.conns_resumed
                                                      : rs.conns_lost));
            }
        }
        fprintf(f, "# HELP nat_resume_refused_total Resumes refused for a wrong resumption "
                   "token.\n# TYPE nat_resume_refused_total counter\nnat_resume_refused_total "
                   "%llu\n", (unsigned long long)reg.resume_refused);
        fprintf(f, "# HELP nat_proxy_header_refused_total Connections from an "
                   "--accept-proxy-from address closed for a missing or bad PROXY header "
                   "(app and web ports).\n# TYPE nat_proxy_header_refused_total counter\n"
                   "nat_proxy_header_refused_total %llu\n",
                (unsigned long long)pp_refused_total());
    }
    pthread_mutex_unlock(&reg.lock);
    fprintf(f, "# HELP process_uptime_seconds Seconds since the process started.\n"
               "# TYPE process_uptime_seconds gauge\nprocess_uptime_seconds %lld\n",
            (long long)(time(NULL) - reg.started));
    fclose(f);
    return out;
}

/* -------------------------------------------------------------- privates */

static struct priv *get_priv_locked(const char *name, int *created)
{
    struct priv *p = find_priv(name);

    *created = 0;
    if (p || count_privs() >= MAX_PRIVATES)
        return p;
    p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    snprintf(p->name, sizeof(p->name), "%s", name);
    p->next = reg.privs;
    reg.privs = p;
    *created = 1;
    return p;
}

int registry_private_known(const char *name)
{
    struct priv *p;
    int created = 0;
    char err[256];

    pthread_mutex_lock(&reg.lock);
    p = get_priv_locked(name, &created);
    if (created && save_locked(NULL, NULL, err, sizeof(err)) != 0)
        log_error("ev=state_save_failed err=\"%s\"", err);
    pthread_mutex_unlock(&reg.lock);
    return p ? 0 : -1;
}

void registry_private_set_allow(const char *name, const json_t *rules)
{
    struct allowlist *al = NULL, *old = NULL;
    struct priv *p;
    char err[300];

    if (rules) {
        al = malloc(sizeof(*al));
        if (!al || allow_init(al) != 0) {
            free(al);
            al = NULL;
        } else if (allow_from_json(al, rules, err, sizeof(err)) != 0) {
            log_warn("ev=home_allow_unreadable name=%s err=\"%s\" msg=\"its registrations are "
                     "not checked against its --allow rules\"", name, err);
            home_allow_free(al);
            al = NULL;
        }
    }
    pthread_mutex_lock(&reg.lock);
    p = find_priv(name);
    if (p) {
        old = p->home_allow;
        p->home_allow = al;
        al = NULL;
    }
    pthread_mutex_unlock(&reg.lock);
    home_allow_free(old);
    home_allow_free(al);
}

void registry_private_up(const char *name, struct tunnel *t, const char *addr)
{
    struct tunnel *old = NULL;
    struct priv *p;
    int created = 0;
    char err[256];

    pthread_mutex_lock(&reg.lock);
    p = get_priv_locked(name, &created);
    if (p) {
        old = p->t;
        if (p->connected_since)
            p->reconnects++;
        p->t = t;
        tunnel_ref(t);
        snprintf(p->address, sizeof(p->address), "%s", addr);
        p->connected_since = time(NULL);
        if (created && save_locked(NULL, NULL, err, sizeof(err)) != 0)
            log_error("ev=state_save_failed err=\"%s\"", err);
    }
    pthread_mutex_unlock(&reg.lock);
    if (old) {
        char msg[160];
        char old_addr[64];
        log_warn("ev=tunnel_replaced name=%s new=%s old=%s", name, addr,
                 tunnel_addr(old, old_addr, sizeof(old_addr)));
        /* Say why, so that a second proxy with the same name backs off
         * instead of both taking turns forever. */
        snprintf(msg, sizeof(msg), "replaced by a newer tunnel of the same name from %s", addr);
        tunnel_fail(old, "replaced", msg);
        tunnel_unref(old);
    }
}

void registry_private_down(const char *name, struct tunnel *t)
{
    struct priv *p;
    struct tunnel *drop = NULL;
    struct tunnel_resume_stats rs;

    tunnel_resume_info(t, &rs);
    pthread_mutex_lock(&reg.lock);
    p = find_priv(name);
    if (p && p->t == t) {
        drop = t;
        p->t = NULL;
    }
    if (p) {
        p->done.suspensions += rs.suspensions;
        p->done.resumes += rs.resumes;
        p->done.conns_resumed += rs.conns_resumed;
        p->done.conns_lost += rs.conns_lost;
    }
    pthread_mutex_unlock(&reg.lock);
    tunnel_unref(drop);
}

struct tunnel *registry_private_session(const char *name)
{
    struct tunnel *t = NULL;
    struct priv *p;

    pthread_mutex_lock(&reg.lock);
    p = find_priv(name);
    if (p && p->t && !tunnel_is_dead(p->t)) {
        t = p->t;
        tunnel_ref(t);
    }
    pthread_mutex_unlock(&reg.lock);
    return t;
}

void registry_private_resumed(const char *name, struct tunnel *t, const char *addr)
{
    struct priv *p;

    pthread_mutex_lock(&reg.lock);
    p = find_priv(name);
    if (p && p->t == t)
        snprintf(p->address, sizeof(p->address), "%s", addr);
    pthread_mutex_unlock(&reg.lock);
}

void registry_count_resume_refused(void)
{
    reg.resume_refused++;
}

/* ----------------------------------------------------------- lifecycle */

/* --------------------------------------------------------------- cluster */

void registry_set_store(const struct registry_store *store)
{
    reg.store = store;
}

void registry_write_lock(void)
{
    pthread_mutex_lock(&reg.wlock);
}

void registry_write_unlock(void)
{
    pthread_mutex_unlock(&reg.wlock);
}

json_t *registry_spec_json(const struct app_spec *s)
{
    return spec_to_json(s);
}

json_t *registry_specs(void)
{
    json_t *all = json_object();

    pthread_mutex_lock(&reg.lock);
    for (struct app *a = reg.apps; a && all; a = a->next)
        json_object_set_new(all, a->spec.name, spec_to_json(&a->spec));
    pthread_mutex_unlock(&reg.lock);
    return all;
}

void registry_each_tunnel(void (*fn)(struct tunnel *t, void *arg), void *arg)
{
    struct tunnel *live[MAX_PRIVATES];
    unsigned n = 0;

    pthread_mutex_lock(&reg.lock);
    for (struct priv *p = reg.privs; p && n < MAX_PRIVATES; p = p->next) {
        if (p->t && !tunnel_is_dead(p->t)) {
            live[n++] = p->t;
            tunnel_ref(p->t);
        }
    }
    pthread_mutex_unlock(&reg.lock);
    for (unsigned i = 0; i < n; i++) {
        fn(live[i], arg);
        tunnel_unref(live[i]);
    }
}

/* An app from the store, as its node registered it: bound here (or retried
 * by its acceptor when the port is busy), replacing old. Under reg.lock. */
static void sync_add_locked(const struct app_spec *s, struct app *old)
{
    char why[200];
    int lfd = -1, refused = !port_allowed(s->public_port), *range = NULL, xfds[NET_BIND_MAX],
        nx = 0, created;

    get_priv_locked(s->private_name, &created);
    if (old)
        remove_app_locked(old);
    if (refused)
        log_error("ev=app_port_not_allowed app=%s public_port=%d allowed=%s msg=\"registered on "
                  "another node of the cluster, not served here: --allow-ports differs\"",
                  s->name, s->public_port, reg.limits.ports_text);
    else if (!s->disabled && (lfd = bind_app(s, xfds, &nx, why, sizeof(why))) < 0)
        log_error("ev=app_bind_failed app=%s err=\"%s\" retry=yes", s->name, why);
    if (!refused && s->ftp_lo && bind_range(s, &range, 0, why, sizeof(why)) != 0)
        range = NULL;
    if (add_app_locked(s, lfd, xfds, nx, range, refused, why, sizeof(why)) != 0) {
        range_close(s, range);
        close_fds(xfds, nx);
        if (lfd >= 0)
            close(lfd);
        log_error("ev=app_restore_failed app=%s err=\"%s\"", s->name, why);
        return;
    }
    log_info("ev=app_registered app=%s protocol=%s public_port=%d target=%s:%d private=%s "
             "by=cluster", s->name, spec_protocol(s), s->public_port, s->target_host,
             s->target_port, s->private_name);
}

void registry_sync(json_t *remote)
{
    struct app *a, *next;
    const char *name;
    json_t *v;
    char err[256];
    int changed = 0;

    pthread_mutex_lock(&reg.lock);
    for (a = reg.apps; a; a = next) {
        next = a->next;
        if (!json_object_get(remote, a->spec.name)) {
            log_info("ev=app_unregistered app=%s by=cluster", a->spec.name);
            remove_app_locked(a);
            changed = 1;
        }
    }
    json_object_foreach(remote, name, v) {
        struct app_spec s;
        if (registry_spec_from_json(v, &s, err, sizeof(err)) != 0 || strcmp(s.name, name) != 0 ||
            !s.private_name[0]) {
            log_error("ev=cluster_entry_skipped app=%s err=\"%s\"", name,
                      err[0] ? err : "its name or private is missing");
            err[0] = '\0';
            continue;
        }
        spec_state_from_json(v, &s);
        a = find_app(s.name);
        if (a && same_spec(&a->spec, &s) && strcmp(a->spec.owner, s.owner) == 0 &&
            a->spec.disabled == s.disabled)
            continue;
        changed = 1;
        if (a && same_spec(&a->spec, &s)) {
            /* Only its owner or its disabled mark: as POST /disable does. */
            int off = s.disabled && !a->spec.disabled;
            a->spec = s;
            if (off && a->listen_fd >= 0 && !a->spec.udp)
                shutdown(a->listen_fd, SHUT_RDWR);
            for (int i = 0; off && i < a->nx && !a->spec.udp; i++)
                shutdown(a->xfds[i], SHUT_RDWR);
            log_info("ev=app_%s app=%s by=cluster", s.disabled ? "disabled" : "enabled", s.name);
            continue;
        }
        if (a && a->spec.public_port == s.public_port && a->spec.udp == s.udp &&
            a->spec.ftp_lo == s.ftp_lo && a->spec.ftp_hi == s.ftp_hi &&
            a->spec.disabled == s.disabled) {
            a->spec = s; /* a new target: in place, as registry_register_as does */
            log_info("ev=app_updated app=%s public_port=%d target=%s:%d private=%s by=cluster",
                     s.name, s.public_port, s.target_host, s.target_port, s.private_name);
            continue;
        }
        sync_add_locked(&s, a);
    }
    if (changed && save_locked(NULL, NULL, err, sizeof(err)) != 0)
        log_error("ev=state_save_failed err=\"%s\"", err);
    pthread_mutex_unlock(&reg.lock);
}

int registry_init(const struct state_dir *state, const struct net_binds *binds, int tunnel_port,
                  int web_port,
                  const struct registry_limits *limits, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *root = NULL, *v;
    size_t len = 0, i;
    char *text;
    int rc = -1;

    reg.state = state;
    if (binds)
        reg.binds = *binds;
    reg.tunnel_port = tunnel_port;
    reg.web_port = web_port;
    reg.limits = *limits;
    reg.started = time(NULL);

    text = state_read(state, STATE_FILE, STATE_MAX_BYTES, &len, err, errlen);
    if (!text)
        return err[0] ? -1 : 0; /* no file yet: a fresh start */
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root || !json_is_object(root)) {
        snprintf(err, errlen,
                 "%s/%s is not valid JSON (line %d: %s); it is left untouched: fix or move it away",
                 state->path, STATE_FILE, jerr.line, jerr.text);
        goto out;
    }
    pthread_mutex_lock(&reg.lock);
    json_array_foreach(json_object_get(root, "privates"), i, v) {
        int created;
        if (pkt_valid_name(json_string_value(v)))
            get_priv_locked(json_string_value(v), &created);
    }
    json_array_foreach(json_object_get(root, "apps"), i, v) {
        struct app_spec s;
        char why[200];
        int created, lfd, refused, *range, xfds[NET_BIND_MAX], nx = 0;
        if (registry_spec_from_json(v, &s, why, sizeof(why)) != 0 ||
            (!s.private_name[0] && snprintf(why, sizeof(why), "no 'private'") > 0) ||
            (find_app(s.name) && snprintf(why, sizeof(why), "duplicate name") > 0)) {
            log_error("ev=state_entry_skipped index=%zu err=\"%s\"", i, why);
            continue;
        }
        get_priv_locked(s.private_name, &created);
        spec_state_from_json(v, &s);
        refused = !port_allowed(s.public_port);
        lfd = -1;
        if (s.disabled)
            log_info("ev=app_disabled app=%s msg=\"restored disabled: POST /enable serves it\"",
                     s.name);
        else if (refused)
            log_error("ev=app_port_not_allowed app=%s public_port=%d allowed=%s msg=\"kept but "
                      "not served: allow its port with --allow-ports, or unregister it\"",
                      s.name, s.public_port, reg.limits.ports_text);
        else if ((lfd = bind_app(&s, xfds, &nx, why, sizeof(why))) < 0)
            log_error("ev=app_bind_failed app=%s err=\"%s\" retry=yes", s.name, why);
        range = NULL;
        if (!refused && s.ftp_lo && bind_range(&s, &range, 0, why, sizeof(why)) != 0)
            range = NULL;
        if (add_app_locked(&s, lfd, xfds, nx, range, refused, why, sizeof(why)) != 0) {
            range_close(&s, range);
            close_fds(xfds, nx);
            if (lfd >= 0)
                close(lfd);
            log_error("ev=app_restore_failed app=%s err=\"%s\"", s.name, why);
            continue;
        }
        log_info("ev=app_restored app=%s public_port=%d private=%s", s.name, s.public_port,
                 s.private_name);
    }
    pthread_mutex_unlock(&reg.lock);
    rc = 0;
out:
    json_decref(root);
    return rc;
}

void registry_shutdown(void)
{
    struct timespec ts = {.tv_nsec = 10 * 1000 * 1000};
    uint64_t deadline;

    pthread_mutex_lock(&reg.lock);
    while (reg.apps)
        remove_app_locked(reg.apps);
    for (struct priv *p = reg.privs; p; p = p->next)
        if (p->t)
            tunnel_kill(p->t, "shutting down");
    pthread_mutex_unlock(&reg.lock);
    deadline = mono_ms() + 5000;
    while (reg.acceptors > 0 && mono_ms() < deadline)
        nanosleep(&ts, NULL);
    pthread_mutex_lock(&reg.lock);
    while (reg.privs) {
        struct priv *p = reg.privs;
        reg.privs = p->next;
        tunnel_unref(p->t);
        home_allow_free(p->home_allow);
        free(p);
    }
    pthread_mutex_unlock(&reg.lock);
}

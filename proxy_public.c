/* proxy_public - the side with a public address. Accepts tunnels from private
 * proxies on TUNNEL_PORT, listens on each registered app's public port, and
 * serves the HTTP API and page on WEB_PORT. */

#include <errno.h>
#include <malloc.h>
#include <stdatomic.h>
#include <ifaddrs.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "cluster.h"
#include "log.h"
#include "netio.h"
#include "packet.h"
#include "proxy_header.h"
#include "public_opts.h"
#include "ratelimit.h"
#include "registry.h"
#include "service.h"
#include "state.h"
#include "tls.h"
#include "tokens.h"
#include "tunnel.h"
#include "udp.h"
#include "web_api.h"

#define HANDSHAKE_TIMEOUT_MS 10000
#define MAX_TUNNEL_THREADS (1024 + PREAUTH_MAX)

static _Atomic int stopping;
static _Atomic int tunnel_threads;
static int tunnel_listen_fds[NET_BIND_MAX];
static int tunnel_nlisten;

/* A guess at the address private proxies should dial, for the hint we print. */
static void guess_public_host(char *out, size_t cap)
{
    struct ifaddrs *ifs = NULL;

    const char *b = cfg.binds.n ? cfg.binds.addr[0] : NULL;

    if (b && strcmp(b, "0.0.0.0") != 0 && strcmp(b, "::") != 0 && strcmp(b, "[::]") != 0) {
        snprintf(out, cap, strchr(b, ':') && b[0] != '[' ? "[%s]" : "%s", b);
        return;
    }
    snprintf(out, cap, "THIS_SERVER");
    if (getifaddrs(&ifs) != 0)
        return;
    for (struct ifaddrs *i = ifs; i; i = i->ifa_next) {
        if (i->ifa_addr && i->ifa_addr->sa_family == AF_INET) {
            struct sockaddr_in *s = (struct sockaddr_in *)i->ifa_addr;
            if ((ntohl(s->sin_addr.s_addr) >> 24) != 127) {
                inet_ntop(AF_INET, &s->sin_addr, out, (socklen_t)cap);
                break;
            }
        }
    }
    freeifaddrs(ifs);
}

/* ------------------------------------------------------------ tunnels */

/* Register app request a for private priv (on a tunnel of protocol
 * version) and append its result to results. kind: 0 TCP only, 1 UDP only,
 * 2 FTP only (HELLO keeps them apart), -1 any. */
static void register_one(json_t *a, const char *priv, int kind, int version,
                         const struct principal *who, json_t *results)
{
    static const char *const lists[] = {"apps", "udp_apps", "ftp_apps"};
    struct app_spec spec;
    char err[PKT_HOST_MAX * 2 + 300];
    int status = registry_spec_from_json(a, &spec, err, sizeof(err)) == 0 ? 0 : 400;
    int is = spec.ftp ? 2 : spec.udp ? 1 : 0;

    if (status == 0 && kind >= 0 && is != kind) {
        snprintf(err, sizeof(err), "a %s app belongs in HELLO's \"%s\"",
                 is == 0 ? "TCP" : is == 1 ? "UDP" : "FTP", lists[is]);
        status = 400;
    }
    if (status == 0 && spec.ftp && !spec.ftp_lo && version < PKT_PROTO_FTP) {
        snprintf(err, sizeof(err), "FTP apps need protocol version %d", PKT_PROTO_FTP);
        status = 409;
    }
    if (status == 0 && spec.proxy_protocol && version < PKT_PROTO_PP) {
        snprintf(err, sizeof(err), "proxy_protocol needs protocol version %d (this private proxy "
                 "speaks %d): upgrade proxy_private", PKT_PROTO_PP, version);
        status = 409;
    }
    if (status == 0) {
        snprintf(spec.private_name, sizeof(spec.private_name), "%s", priv);
        status = registry_register_as(&spec, 1, who, err, sizeof(err));
    }
    if (status < 300)
        json_array_append_new(results, json_pack("{s:s,s:b}", "name", spec.name, "ok", 1));
    else
        json_array_append_new(results, json_pack("{s:s,s:b,s:s}", "name",
                                                 json_string_value(json_object_get(a, "name")),
                                                 "ok", 0, "error", err));
}

/* Register the apps a HELLO asks for ("apps", "udp_apps" from version 3,
 * "ftp_apps" from version 5); returns the WELCOME results array. */
static json_t *register_hello_apps(json_t *hello, const char *priv, int version,
                                   const struct principal *who)
{
    json_t *results = json_array(), *a;
    size_t i;

    json_array_foreach(json_object_get(hello, "apps"), i, a)
        register_one(a, priv, 0, version, who, results);
    json_array_foreach(json_object_get(hello, "udp_apps"), i, a)
        register_one(a, priv, 1, version, who, results);
    json_array_foreach(json_object_get(hello, "ftp_apps"), i, a)
        register_one(a, priv, 2, version, who, results);
    return results;
}

/* Who tunnel t authenticated as, now: 0, or -1 when its token was revoked
 * meanwhile. */
static int tunnel_principal(struct tunnel *t, struct principal *who)
{
    memset(who, 0, sizeof(*who));
    who->admin = !tunnel_owner(t)[0];
    return who->admin || tokens_get(tunnel_owner(t), &who->scope) ? 0 : -1;
}

/* APPS from a private on its running tunnel (version 4, after a reload of
 * its config): its apps in "unregister" go, those in "register" come (an
 * app whose settings changed is in both); APPS_RESULT says how each went.
 * On a thread of its own: the reader never writes to the tunnel, and saving
 * the state touches the disk. */
struct apps_job {
    struct tunnel *t;           /* a reference */
    json_t *req;                /* the job's own copy of APPS */
};

/* APPS at work at once, in all: a private sends one per reload. */
#define APPS_JOBS_MAX 64
static _Atomic unsigned apps_jobs;

static void *apps_job_main(void *arg)
{
    struct apps_job *job = arg;
    const char *priv = tunnel_name(job->t);
    json_t *results = json_array(), *a;
    struct principal who;
    size_t i;

    if (tunnel_principal(job->t, &who) != 0) {
        /* Revoked: its tunnel is being closed; change nothing. */
        json_decref(results);
        goto out;
    }
    /* A reload's new --allow rules come first: they judge what follows. */
    if (json_object_get(job->req, "allow"))
        registry_private_set_allow(priv, json_object_get(job->req, "allow"));
    json_array_foreach(json_object_get(job->req, "unregister"), i, a) {
        char err[300];
        const char *name = json_string_value(a);
        int status = registry_unregister_own(name, priv, err, sizeof(err));
        if (status == 200 || status == 404) /* gone either way */
            json_array_append_new(results, json_pack("{s:s,s:b}", "name", name, "ok", 1));
        else
            json_array_append_new(results, json_pack("{s:s,s:b,s:s}", "name", name, "ok", 0,
                                                     "error", err));
    }
    json_array_foreach(json_object_get(job->req, "register"), i, a)
        register_one(a, priv, -1, tunnel_version(job->t), &who, results);
    log_info("ev=apps_changed name=%s unregister=%zu register=%zu", priv,
             json_array_size(json_object_get(job->req, "unregister")),
             json_array_size(json_object_get(job->req, "register")));
    /* A failed send ends or suspends the tunnel by itself. */
    (void)tunnel_send(job->t, packet(OP_APPS_RESULT, "{s:o}", "apps", results), NULL, 0);
out:
    json_decref(job->req);
    tunnel_unref(job->t);
    free(job);
    apps_jobs--;
    return NULL;
}

static int on_private_op(struct tunnel *t, struct pkt *p, void *arg)
{
    struct apps_job *job;

    (void)arg;
    if (++apps_jobs > APPS_JOBS_MAX) {
        apps_jobs--;
        log_warn("ev=apps_refused name=%s reason=\"%u APPS at work already\"", tunnel_name(t),
                 APPS_JOBS_MAX);
        return 0;
    }
    job = malloc(sizeof(*job));
    if (!job) {
        apps_jobs--;
        return -1;
    }
    job->t = t;
    /* A copy of its own: Jansson's reference counts are not safe to share
     * between threads (json_decref reads the count unsynchronised). */
    job->req = json_deep_copy(p->json);
    if (!job->req) {
        free(job);
        apps_jobs--;
        return -1;
    }
    tunnel_ref(t);
    /* The stack of a handshake thread, which registers HELLO's apps. */
    if (thread_spawn_sized(apps_job_main, job, THREAD_STACK_SIZE_TLS) != 0) {
        log_error("ev=thread_failed what=apps");
        json_decref(job->req);
        tunnel_unref(t);
        free(job);
        apps_jobs--;
    }
    return 0;
}

/* Connections that have not authenticated yet (TLS handshake and HELLO, one
 * deadline for both) are capped in total and per source (an IPv4 address, an
 * IPv6 /64), so strangers cannot take the slots a real private needs:
 * - one source may hold PREAUTH_PER_SOURCE of them; more are refused;
 * - when all PREAUTH_MAX are taken, a newcomer pushes out the oldest
 *   connection of the source that holds the most, if that source holds more
 *   than the newcomer's; otherwise it is refused. A private proxy (one
 *   connection, done in milliseconds) is thus never pushed out by a few
 *   sources holding many connections, and trickling gains nobody anything:
 *   every connection is cut at its deadline whatever it sends. */
#define PREAUTH_MAX 512
#define PREAUTH_PER_SOURCE 8

struct preauth_source {
    unsigned char key[NET_SOURCE_KEY_LEN];
    unsigned n;                 /* its connections in the table; 0 = entry free */
};

struct preauth_slot {
    int used;
    int fd;                     /* shut down to push the connection out */
    unsigned gen;               /* changes when the slot is reused */
    int source;                 /* index in preauth_sources */
    uint64_t since_ms;
};

static pthread_mutex_t preauth_lock = PTHREAD_MUTEX_INITIALIZER;
static struct preauth_slot preauth[PREAUTH_MAX];
static struct preauth_source preauth_sources[PREAUTH_MAX]; /* never more than slots */
static unsigned preauth_gen;

/* Free slot i. Under preauth_lock. */
static void preauth_release_locked(int i)
{
    preauth[i].used = 0;
    preauth_sources[preauth[i].source].n--;
}

/* Admit fd from the source with key: a slot index (its generation in *gen),
 * or -1 when refused. Under a flood it costs a few scans of the table, no more. */
static int preauth_enter(int fd, const unsigned char key[NET_SOURCE_KEY_LEN], unsigned *gen)
{
    int src = -1, free_src = -1, slot = -1, victim = -1, most = -1;
    unsigned mine;

    pthread_mutex_lock(&preauth_lock);
    for (int i = 0; i < PREAUTH_MAX; i++) {
        struct preauth_source *ps = &preauth_sources[i];
        if (ps->n && memcmp(ps->key, key, NET_SOURCE_KEY_LEN) == 0)
            src = i;
        else if (!ps->n && free_src < 0)
            free_src = i;
        if (ps->n && (most < 0 || ps->n > preauth_sources[most].n))
            most = i;
        if (!preauth[i].used && slot < 0)
            slot = i;
    }
    mine = src >= 0 ? preauth_sources[src].n : 0;
    if (mine >= PREAUTH_PER_SOURCE)
        goto refuse;
    if (slot < 0) {
        /* Full: the source holding the most gives up its oldest connection,
         * if it holds more than the newcomer's would. */
        if (most < 0 || most == src || preauth_sources[most].n <= mine + 1)
            goto refuse;
        for (int i = 0; i < PREAUTH_MAX; i++)
            if (preauth[i].source == most &&
                (victim < 0 || preauth[i].since_ms < preauth[victim].since_ms))
                victim = i;
        log_debug("ev=preauth_pushed_out holds=%u reason=\"full: the source holding the most "
                  "gives way to another source\"",
                  preauth_sources[most].n);
        shutdown(preauth[victim].fd, SHUT_RDWR); /* its thread ends by itself */
        preauth_release_locked(victim);
        slot = victim;
        if (src < 0 && free_src < 0 && preauth_sources[most].n == 0)
            free_src = most;
    }
    if (src < 0) {
        if (free_src < 0) /* cannot happen: never more sources than slots */
            goto refuse;
        src = free_src;
        memcpy(preauth_sources[src].key, key, NET_SOURCE_KEY_LEN);
    }
    preauth_sources[src].n++;
    preauth[slot].used = 1;
    preauth[slot].fd = fd;
    preauth[slot].gen = *gen = ++preauth_gen;
    preauth[slot].source = src;
    preauth[slot].since_ms = mono_ms();
    pthread_mutex_unlock(&preauth_lock);
    return slot;
refuse:
    pthread_mutex_unlock(&preauth_lock);
    return -1;
}

/* Leave the table (after authentication, or before closing the socket), unless
 * the connection was pushed out meanwhile. */
static void preauth_leave(int slot, unsigned gen)
{
    pthread_mutex_lock(&preauth_lock);
    if (preauth[slot].used && preauth[slot].gen == gen)
        preauth_release_locked(slot);
    pthread_mutex_unlock(&preauth_lock);
}

/* In a cluster, WELCOME says which node answered (version 7). */
static void add_node(json_t *w, int version)
{
    if (w && cluster_node() && version >= PKT_PROTO_CLUSTER)
        json_object_set_new(w, "node", json_string(cluster_node()));
}

/* And NODES follows it, then again whenever the nodes change. */
static void send_nodes(struct tunnel *t)
{
    if (cluster_node() && tunnel_version(t) >= PKT_PROTO_CLUSTER)
        tunnel_send(t, cluster_nodes_packet(), NULL, 0);
}

/* WELCOME for HELLO p: the registration results of its apps and, when the
 * session can resume, its id and resumption token. */
static int send_welcome(struct tunnel *t, struct pkt *p, const char *name, int resumed,
                        const char *token_hex, const struct principal *who)
{
    json_t *w = packet(OP_WELCOME, "{s:i,s:i,s:i,s:o}", "version", tunnel_version(t), "window",
                       PKT_WINDOW_DEFAULT, "heartbeat", 5, "apps",
                       register_hello_apps(p->json, name, tunnel_version(t), who));

    if (w && tunnel_resumable(t) &&
        json_object_update_new(w, json_pack("{s:s,s:s,s:i,s:b}", "session",
                                            tunnel_session_id(t), "resume_token", token_hex,
                                            "resume_grace", (int)tunnel_grace_s(t), "resumed",
                                            resumed)) != 0) {
        json_decref(w);
        w = NULL;
    }
    add_node(w, tunnel_version(t));
    return tunnel_send(t, w, NULL, 0);
}

/* The resumed WELCOME goes over tmp (the new link) but speaks of session s. */
static int send_welcome_resumed(struct tunnel *tmp, struct tunnel *s, struct pkt *p,
                                const char *name, const char *token_hex,
                                const struct principal *who)
{
    json_t *w = packet(OP_WELCOME, "{s:i,s:i,s:i,s:o,s:s,s:s,s:i,s:b}", "version",
                       tunnel_version(s), "window", PKT_WINDOW_DEFAULT, "heartbeat", 5, "apps",
                       register_hello_apps(p->json, name, tunnel_version(s), who), "session",
                       tunnel_session_id(s),
                       "resume_token", token_hex, "resume_grace", (int)tunnel_grace_s(s),
                       "resumed", 1);

    add_node(w, tunnel_version(s));
    return tunnel_send(tmp, w, NULL, 0);
}

enum resume_result { RESUME_FRESH, RESUME_DONE, RESUME_REFUSED };

/* HELLO p on tmp (authenticated) asks to resume a session. RESUME_DONE: the
 * session took over tmp's link (WELCOME and our RESUME list went out on it);
 * RESUME_FRESH: no such session (expired, or the public side restarted):
 * start a fresh one; RESUME_REFUSED: the session exists but the token is not
 * its own (refused, counted, rate limited like a wrong token, and the
 * session is left alone). */
static enum resume_result try_resume(struct tunnel *tmp, struct pkt *p, const char *name,
                                     const char *addr, const char *ip, int version,
                                     const struct principal *who)
{
    json_t *r = json_object_get(p->json, "resume");
    const char *sid = json_string_value(json_object_get(r, "session"));
    const char *tok = json_string_value(json_object_get(r, "token"));
    struct tunnel *s = registry_private_session(name);
    char token_hex[TUNNEL_TOKEN_HEX_LEN + 1];
    enum resume_result rc = RESUME_FRESH;

    if (!s || strcmp(sid, tunnel_session_id(s)) != 0 || tunnel_version(s) != version ||
        strcmp(tunnel_owner(s), principal_owner(who)) != 0) {
        log_info("ev=resume_refused name=%s client=%s reason=\"unknown or expired session: "
                 "starting a fresh one\"", name, addr);
        goto out;
    }
    if (!tunnel_resume_matches(s, sid, tok)) {
        ratelimit_fail(ip);
        registry_count_resume_refused();
        log_warn("ev=resume_refused name=%s client=%s reason=\"wrong resumption token\"", name,
                 addr);
        tunnel_fail(tmp, "resume_refused", "wrong resumption token for this session");
        rc = RESUME_REFUSED;
        goto out;
    }
    rc = RESUME_REFUSED;
    tunnel_set_version(tmp, version, tunnel_grace_s(s));
    tunnel_set_peer_window(s, (uint32_t)json_integer_value(json_object_get(p->json, "window")));
    if (tunnel_rotate_token(s, token_hex) != 0 ||
        send_welcome_resumed(tmp, s, p, name, token_hex, who) != 0 ||
        tunnel_send_resume_list(s, tmp) != 0) {
        log_warn("ev=handshake_failed client=%s err=\"could not send the resume\"", addr);
        goto out;
    }
    OPENSSL_cleanse(token_hex, sizeof(token_hex));
    if (tunnel_offer_link(s, tunnel_take_link(tmp)) != 0) {
        log_warn("ev=resume_failed name=%s client=%s reason=\"the session ended meanwhile\"",
                 name, addr);
        goto out;
    }
    registry_private_resumed(name, s, addr);
    send_nodes(s);
    log_info("ev=tunnel_resume_accepted name=%s client=%s session=%s", name, addr, sid);
    rc = RESUME_DONE;
out:
    tunnel_unref(s);
    return rc;
}

/* What the acceptor hands to a tunnel thread. */
struct tunnel_start {
    int fd;
    int slot;                   /* in preauth[] */
    unsigned gen;
    uint64_t deadline_ms;       /* of TLS + HELLO */
    char addr[64];
};

/* TLS handshake on a fresh tunnel socket; NULL on failure. */
static SSL *tls_accept(int fd, const char *addr, uint64_t deadline)
{
    char err[200];
    SSL *ssl = SSL_new(cfg.tls);

    if (!ssl || tls_handshake(ssl, fd, 1, deadline, err, sizeof(err)) != 0) {
        char esc[200];
        log_warn("ev=handshake_failed client=%s err=\"TLS: %s\" hint=\"is the private side "
                 "running with --insecure-plaintext, or is this not proxy_private?\"",
                 addr, ssl ? log_escape(err, esc, sizeof(esc)) : "out of memory");
        SSL_free(ssl);
        return NULL;
    }
    return ssl;
}

static void *tunnel_main(void *arg)
{
    struct tunnel_start *start = arg;
    struct tunnel *t = NULL;
    struct pkt p = {0};
    char err[200] = "", name[PKT_NAME_MAX + 1] = "", addr[64], ip[RATELIMIT_KEY_LEN];
    SSL *ssl = NULL;
    int up = 0, in_preauth = 1, fd = start->fd, slot = start->slot, version = 1;
    unsigned gen = start->gen, grace = 0;
    char token_hex[TUNNEL_TOKEN_HEX_LEN + 1] = "";
    uint64_t deadline = start->deadline_ms;
    struct principal who;

    pthread_setname_np(pthread_self(), "tunnel");
    snprintf(addr, sizeof(addr), "%s", start->addr);
    free(start);
    ratelimit_key(addr, ip);
    if (!cfg.plaintext && !(ssl = tls_accept(fd, addr, deadline))) {
        preauth_leave(slot, gen);
        close(fd);
        tunnel_threads--;
        return NULL;
    }
    t = tunnel_new(fd, ssl, "", addr, 1);
    if (!t) {
        SSL_free(ssl);
        preauth_leave(slot, gen);
        close(fd);
        tunnel_threads--;
        return NULL;
    }
    if (tunnel_read_handshake(t, &p, deadline, err, sizeof(err)) <= 0) {
        log_warn("ev=handshake_failed client=%s err=\"%s\"", addr, err);
        tunnel_fail(t, "protocol", "malformed or missing HELLO");
        goto out;
    }
    if (p.op != OP_HELLO) {
        log_warn("ev=handshake_failed client=%s err=\"expected HELLO, got %s\"", addr, op_name(p.op));
        tunnel_fail(t, "protocol", "expected HELLO first");
        goto out;
    }
    {
        json_int_t v = json_integer_value(json_object_get(p.json, "version"));
        json_t *mv = json_object_get(p.json, "max_version");
        if (v < PKT_PROTO_MIN || v > PKT_PROTO_VERSION) {
            char msg[100];
            log_warn("ev=handshake_failed client=%s err=\"protocol version %lld, we speak %d to "
                     "%d\"", addr, (long long)v, PKT_PROTO_MIN, PKT_PROTO_VERSION);
            snprintf(msg, sizeof(msg), "unsupported protocol version: this server speaks %d to %d",
                     PKT_PROTO_MIN, PKT_PROTO_VERSION);
            tunnel_fail(t, "bad_version", msg);
            goto out;
        }
        /* The highest both speak: HELLO says the lowest in "version" (what an
         * older server checks) and the highest in "max_version". */
        if (mv && json_integer_value(mv) > v)
            v = json_integer_value(mv);
        version = v < PKT_PROTO_VERSION ? (int)v : PKT_PROTO_VERSION;
    }
    {
        const char *tok = json_string_value(json_object_get(p.json, "token"));
        char msg[128];
        unsigned wait_ms = 0;
        /* A blocked address is refused before its token is even looked at. */
        if (ratelimit_check(ip, &wait_ms)) {
            log_warn("ev=auth_rate_limited client=%s what=tunnel wait_ms=%u", addr, wait_ms);
            snprintf(msg, sizeof(msg), "too many wrong tokens from your address: wait %u s",
                     (wait_ms + 999) / 1000);
            tunnel_fail(t, "rate_limited", msg);
            goto out;
        }
        memset(&who, 0, sizeof(who));
        /* Both comparisons, whatever the first says. */
        who.admin = web_token_equal(tok, strlen(tok), cfg.token);
        if (!tokens_lookup(tok, strlen(tok), &who.scope) && !who.admin) {
            ratelimit_fail(ip);
            log_warn("ev=auth_failed client=%s what=tunnel reason=\"wrong token\"", addr);
            tunnel_fail(t, "bad_token", "wrong token");
            goto out;
        }
        ratelimit_success(ip);
        preauth_leave(slot, gen);
        in_preauth = 0;
    }
    snprintf(name, sizeof(name), "%s", json_string_value(json_object_get(p.json, "name")));
    if (!who.admin && !scope_allows_private(&who.scope, name)) {
        char names[256], msg[400], by[TOKEN_LABEL_MAX * 4 + 40];
        scope_privates_text(&who.scope, names, sizeof(names));
        snprintf(msg, sizeof(msg), "this token may connect only as %s, not as '%s'", names, name);
        log_warn("ev=tunnel_refused client=%s name=%s token=%s reason=\"name outside the "
                 "token's scope\"", addr, name, principal_who(&who, by, sizeof(by)));
        tunnel_fail(t, "name_not_allowed", msg);
        goto out;
    }
    {
        unsigned refused = registry_private_refused(name);
        if (refused) {
            char msg[160];
            snprintf(msg, sizeof(msg), "refused by the server's admin for %u more s", refused);
            log_info("ev=tunnel_refused client=%s name=%s reason=\"kicked: %u s left\"", addr,
                     name, refused);
            tunnel_fail(t, "kicked", msg);
            goto out;
        }
    }
    tunnel_set_name(t, name);
    tunnel_set_owner(t, principal_owner(&who));
    tunnel_set_peer_window(t, (uint32_t)json_integer_value(json_object_get(p.json, "window")));
    /* The private must be known before its apps are registered, but must not
     * be online (reachable by acceptors sending BUILD_CONNECTION) before
     * WELCOME is on the wire: the protocol allows nothing else first. */
    if (registry_private_known(name) != 0) {
        tunnel_fail(t, "too_many_privates", "this server knows too many private proxies");
        goto out;
    }
    /* Its --allow rules, by which the API judges registrations for it. */
    registry_private_set_allow(name, json_object_get(p.json, "allow"));
    if (version >= 2) {
        json_t *g = json_object_get(p.json, "resume_grace");
        grace = cfg.resume_grace;
        if (g && (unsigned)json_integer_value(g) < grace)
            grace = (unsigned)json_integer_value(g);
    }
    if (version >= 2 && grace > 0 && json_object_get(p.json, "resume")) {
        enum resume_result rr = try_resume(t, &p, name, addr, ip, version, &who);
        if (rr == RESUME_DONE) {
            /* The session's own thread carries on with this link. */
            pkt_clear(&p);
            tunnel_unref(t);
            tunnel_threads--;
            return NULL;
        }
        if (rr == RESUME_REFUSED)
            goto out;
    }
    tunnel_set_version(t, version, grace);
    if (tunnel_resumable(t) && tunnel_new_session(t, token_hex) != 0) {
        tunnel_fail(t, "internal", "cannot make a session");
        goto out;
    }
    if (send_welcome(t, &p, name, 0, token_hex, &who) != 0) {
        log_warn("ev=handshake_failed client=%s err=\"could not send WELCOME\"", addr);
        goto out;
    }
    OPENSSL_cleanse(token_hex, sizeof(token_hex));
    pkt_clear(&p);
    registry_private_up(name, t, addr);
    send_nodes(t);
    up = 1;
    if (tunnel_start_heartbeat(t) != 0) {
        log_error("ev=thread_failed what=heartbeat");
        goto out;
    }
    log_info("ev=tunnel_up name=%s client=%s tls=%s version=%d resume_grace_s=%u session=%s",
             name, addr, tunnel_tls_mode(t), version, grace,
             tunnel_resumable(t) ? tunnel_session_id(t) : "none");
    while (tunnel_run(t, on_private_op, NULL, err, sizeof(err)) == TUNNEL_SUSPENDED) {
        /* The link broke: the private has the grace period to come back
         * with its session; its clients wait meanwhile. */
        if (tunnel_wait_link(t, tunnel_grace_deadline(t)) != 0) {
            if (!tunnel_is_dead(t)) {
                snprintf(err, sizeof(err), "not resumed within the %u s grace period",
                         tunnel_grace_s(t));
                tunnel_kill(t, err);
            }
            break;
        }
    }
    {
        char now_addr[64];
        log_warn("ev=tunnel_down name=%s client=%s reason=\"%s\"", name,
                 tunnel_addr(t, now_addr, sizeof(now_addr)), err);
    }
out:
    pkt_clear(&p);
    tunnel_kill(t, "tunnel ended");
    if (in_preauth)
        preauth_leave(slot, gen); /* before the socket can be closed and reused */
    if (up)
        registry_private_down(name, t);
    tunnel_wait_idle(t, 5000);
    tunnel_unref(t);
    tunnel_threads--;
    return NULL;
}

/* One of the tunnel listeners' next connection (they are polled, one per
 * --bind address): the fd, or -1 with errno (EAGAIN: none yet). */
static int tunnel_accept_one(struct sockaddr_storage *ss, socklen_t *sl)
{
    struct pollfd pf[NET_BIND_MAX];

    for (int i = 0; i < tunnel_nlisten; i++) {
        pf[i].fd = tunnel_listen_fds[i];
        pf[i].events = POLLIN;
        pf[i].revents = 0;
    }
    if (poll(pf, (nfds_t)tunnel_nlisten, 200) <= 0) {
        errno = EAGAIN;
        return -1;
    }
    for (int i = 0; i < tunnel_nlisten; i++) {
        if (pf[i].revents) {
            int fd = accept4(pf[i].fd, (struct sockaddr *)ss, sl, SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (fd >= 0 && net_set_nonblock(fd, 0) != 0) {
                close(fd);
                return -1;
            }
            return fd;
        }
    }
    errno = EAGAIN;
    return -1;
}

static void *tunnel_accept_main(void *arg)
{
    uint64_t last_warn = 0, last_refusal_log = 0;

    (void)arg;
    while (!stopping) {
        char addr[64];
        unsigned char key[NET_SOURCE_KEY_LEN];
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        struct tunnel_start *start;
        int rc, fd = tunnel_accept_one(&ss, &sl);
        if (fd < 0) {
            struct timespec ts = {.tv_nsec = 100 * 1000 * 1000};
            if (stopping)
                break;
            if (errno == EINTR || errno == ECONNABORTED || errno == EAGAIN ||
                errno == EWOULDBLOCK)
                continue;
            if (mono_ms() - last_warn > 1000) {
                log_error("ev=accept_failed what=tunnel err=\"%s\"", strerror(errno));
                last_warn = mono_ms();
            }
            nanosleep(&ts, NULL);
            continue;
        }
        net_peer_str(fd, addr, sizeof(addr));
        net_source_key(&ss, key);
        if (tunnel_threads >= MAX_TUNNEL_THREADS) {
            log_warn("ev=tunnel_refused client=%s reason=\"too many tunnels\"", addr);
            close(fd);
            continue;
        }
        start = malloc(sizeof(*start));
        if (!start) {
            close(fd);
            continue;
        }
        start->slot = preauth_enter(fd, key, &start->gen);
        if (start->slot < 0) {
            if (mono_ms() - last_refusal_log >= 1000) {
                log_warn("ev=tunnel_refused client=%s reason=\"too many unauthenticated "
                         "connections\"", addr);
                last_refusal_log = mono_ms();
            }
            close(fd);
            free(start);
            continue;
        }
        start->fd = fd;
        start->deadline_ms = mono_ms() + HANDSHAKE_TIMEOUT_MS;
        snprintf(start->addr, sizeof(start->addr), "%s", addr);
        tunnel_threads++;
        rc = thread_spawn_sized(tunnel_main, start, THREAD_STACK_SIZE_TLS);
        if (rc != 0) {
            tunnel_threads--;
            log_error("ev=thread_failed what=tunnel err=\"%s\"", strerror(rc));
            preauth_leave(start->slot, start->gen);
            close(fd);
            free(start);
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    char err[CONFIG_PATH_MAX + 512], host[80], binds[NET_BIND_MAX * (NET_ADDR_TEXT_MAX + 3)];
    sigset_t set;
    int sig = 0, created = 0, rc = 1;
    struct timespec ts = {.tv_nsec = 10 * 1000 * 1000};
    uint64_t deadline;

    tunnel_global_init();
    /* SIGHUP (reload) is taken by the main thread only, like SIGINT/SIGTERM. */
    sigemptyset(&set);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    log_init_journal();
    json_object_seed(0);
    /* Thousands of short-lived relay threads would otherwise spread their
     * small allocations over many malloc arenas that never shrink. */
    mallopt(M_ARENA_MAX, 4);
    if (public_parse_args(&cfg, argc, argv, 0, err, sizeof(err)) != 0) {
        fprintf(stderr, "proxy_public: %s\n", err);
        return 2;
    }
    if (cfg.log_level >= 0)
        log_set_level((enum log_level)cfg.log_level);
    tunnel_set_retain_budget((size_t)cfg.resume_memory << 20);
    udp_set_public_limits(cfg.max_udp_sessions_per_app, cfg.max_udp_sessions);
    pp_accept_set(&cfg.accept_proxy); /* before any acceptor starts (registry_init) */
    for (int i = 0; i < cfg.accept_proxy.n; i++) {
        char net[CIDR_TEXT_MAX];
        cidr_str(&cfg.accept_proxy.e[i], net, sizeof(net));
        log_info("ev=accept_proxy_from net=%s msg=\"connections from it must start with a "
                 "PROXY header\"", net);
    }
    if (ftp_public_init(cfg.ftp_lo, cfg.ftp_hi, cfg.public_address, err, sizeof(err)) != 0) {
        fprintf(stderr, "proxy_public: %s\n", err);
        return 2;
    }
    net_raise_fd_limit();
    if (state_dir_open(&cfg.state, cfg.state_dir, err, sizeof(err)) != 0) {
        fprintf(stderr, "proxy_public: %s\n", err);
        return 1;
    }
    if (cfg.token_arg) {
        cfg.token = strdup(cfg.token_arg);
    } else {
        cfg.token = state_token(&cfg.state, &created, err, sizeof(err));
        if (!cfg.token) {
            fprintf(stderr, "proxy_public: %s\n", err);
            goto out;
        }
    }
    if (!cfg.token)
        goto out;
    if (strlen(cfg.token) > PKT_TOKEN_MAX) {
        fprintf(stderr, "proxy_public: the token in %s/token is longer than %d bytes\n",
                cfg.state_dir, PKT_TOKEN_MAX);
        goto out;
    }
    if (!cfg.plaintext || cfg.web_https) {
        int made = 0;
        cfg.tls = tls_server_ctx(&cfg.state, cfg.cert_file, cfg.key_file, cfg.fingerprint, &made,
                                 err, sizeof(err));
        if (!cfg.tls) {
            fprintf(stderr, "proxy_public: %s\n", err);
            goto out;
        }
        if (made)
            log_info("ev=tls_certificate_created dir=%s", cfg.state_dir);
    }
    if (tokens_init(&cfg.state, err, sizeof(err)) != 0) {
        fprintf(stderr, "proxy_public: %s\n", err);
        goto out;
    }
    if (registry_init(&cfg.state, &cfg.binds, cfg.tunnel_port, cfg.web_port, &cfg.limits,
                      err, sizeof(err)) != 0) {
        fprintf(stderr, "proxy_public: %s\n", err);
        goto out;
    }
    tunnel_nlisten = net_listen_all(&cfg.binds, 0, cfg.tunnel_port, 128, tunnel_listen_fds, err,
                                    sizeof(err));
    if (tunnel_nlisten < 0) {
        tunnel_nlisten = 0;
        fprintf(stderr, "proxy_public: cannot listen on TUNNEL_PORT: %s\n", err);
        goto out_registry;
    }
    /* Before the first tunnel or request: the registry asks the store. */
    if (cfg.cluster && cluster_start(&cfg.cluster_url, cfg.node_name, cfg.advertise,
                                     cfg.tls ? cfg.fingerprint : "", err, sizeof(err)) != 0) {
        fprintf(stderr, "proxy_public: %s\n", err);
        goto out_listen;
    }
    if (net_ipv6_missing())
        log_warn("ev=ipv6_unavailable msg=\"the kernel has no IPv6: listening on IPv4 only\"");
    if (web_start(&cfg.binds, cfg.web_port, cfg.token, cfg.web_https ? cfg.tls : NULL, err,
                  sizeof(err)) != 0) {
        fprintf(stderr, "proxy_public: WEB_PORT: %s\n", err);
        goto out_listen;
    }
    if (thread_spawn(tunnel_accept_main, NULL) != 0) {
        fprintf(stderr, "proxy_public: cannot start the tunnel acceptor\n");
        goto out_web;
    }
    guess_public_host(host, sizeof(host));
    if (cfg.tls)
        printf("TLS certificate fingerprint (SHA-256): %s\n", cfg.fingerprint);
    if (!cfg.token_arg) {
        /* The secret goes to the terminal (stdout), never into the log, and
         * only when it was just made: under systemd stdout is the journal. */
        if (created)
            printf("Generated a new token in %s/token (shown only this once):\n  %s\n",
                   cfg.state_dir, cfg.token);
        else
            printf("Using the token in %s/token (not shown; it was printed when it was "
                   "made)\n", cfg.state_dir);
        printf("Connect a home machine with:\n"
               "  ./proxy_private %s %d --token-file FILE%s%s --register web:8080:127.0.0.1:80\n"
               "where FILE holds the token (chmod 600 FILE), or set NAT_TOKEN instead.\n"
               "Manage apps at %s://%s:%d/ with the same token.\n",
               host, cfg.tunnel_port, cfg.plaintext ? " --insecure-plaintext" : " --fingerprint ",
               cfg.plaintext ? "" : cfg.fingerprint, cfg.web_https ? "https" : "http", host,
               cfg.web_port);
    }
    fflush(stdout);
    net_binds_str(&cfg.binds, binds, sizeof(binds));
    log_info("ev=ready version=%s tunnel_port=%d web_port=%d bind=%s state_dir=%s tls=%s "
             "fingerprint=%s",
             PROXY_VERSION, cfg.tunnel_port, cfg.web_port, binds,
             cfg.state_dir, cfg.plaintext ? "off" : "on", cfg.tls ? cfg.fingerprint : "none");

    sd_notify_state("READY=1");

    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    for (;;) {
        /* A tick a second for the counts of repeated log events. */
        struct timespec tick = {.tv_sec = 1};
        sig = sigtimedwait(&set, NULL, &tick);
        log_sum_flush(0);
        if (sig == SIGHUP)
            public_reload(argc, argv);
        else if (sig == SIGINT || sig == SIGTERM)
            break;
    }
    sd_notify_state("STOPPING=1");
    log_sum_flush(1);
    log_info("ev=stopping signal=%s", sig == SIGINT ? "SIGINT" : "SIGTERM");
    stopping = 1;
    rc = 0;
    for (int i = 0; i < tunnel_nlisten; i++)
        shutdown(tunnel_listen_fds[i], SHUT_RDWR);
out_web:
    web_stop();
out_listen:
    stopping = 1;
    for (int i = 0; i < tunnel_nlisten; i++)
        shutdown(tunnel_listen_fds[i], SHUT_RDWR);
out_registry:
    cluster_stop();
    registry_shutdown();
    /* Handshakes still running end by their own 10 s deadline. */
    deadline = mono_ms() + HANDSHAKE_TIMEOUT_MS + 1000;
    while (tunnel_threads > 0 && mono_ms() < deadline)
        nanosleep(&ts, NULL);
    for (int i = 0; i < tunnel_nlisten; i++)
        close(tunnel_listen_fds[i]);
out:
    tokens_shutdown();
    SSL_CTX_free(cfg.tls);
    free(cfg.token);
    state_dir_close(&cfg.state);
    log_info("ev=exit code=%d", rc);
    return rc;
}

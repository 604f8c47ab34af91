/* proxy_private - the home side. Dials proxy_public, keeps the tunnel up
 * (heartbeats, reconnect with backoff and jitter), registers its --register
 * apps, and on BUILD_CONNECTION dials the home app and relays. */

#include <errno.h>
#include <malloc.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "allow.h"
#include "diag.h"
#include "log.h"
#include "netio.h"
#include "packet.h"
#include "private_opts.h"
#include "proxy_proto.h"
#include "service.h"
#include "tls.h"
#include "tunnel.h"
#include "ftp_data.h"
#include "udp.h"

#define HANDSHAKE_TIMEOUT_MS 10000
#define BACKOFF_MIN_MS 1000
#define BACKOFF_MAX_MS 30000
#define STABLE_AFTER_MS 30000   /* a tunnel up this long resets the backoff */
#define REFUSED_LOG_EVERY_MS 10000
#define RESUME_DIAL_MS 3000     /* each dial while resuming: the link may come back any moment */


#define NODE_DIAL_MS 3000       /* a node session's dial: keeps its stop (and SIGTERM) quick */
#define NODE_SESSION_STACK THREAD_STACK_SIZE_TLS /* handshakes run OpenSSL */

/* Connections turned down by --max-conns: counted over all tunnels, and
 * logged at most once per REFUSED_LOG_EVERY_MS (the readers, under
 * refused_lock). */
static pthread_mutex_t refused_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t refused_total, refused_logged, refused_log_ms;

/* One tunnel session and the address it dials: the main one (the command
 * line's address, on the main thread), and in a cluster one for each other
 * node NODES lists, each on a thread of its own that cluster_main starts,
 * stops and joins (docs/PROTOCOL.md, "Cluster"). The members marked so are
 * under state_lock; the others are set before the session's thread starts,
 * or are its own. */
struct session {
    int is_main;
    char node[PKT_NAME_MAX + 1];    /* a node session: the node it must reach */
    char host[PKT_HOST_MAX + 1];
    int port;
    char hp[PKT_HOST_MAX + 16];     /* HOST:PORT for logs, an IPv6 HOST in brackets */
    pthread_t tid;                  /* a node session's thread */
    /* under state_lock: */
    struct tunnel *live;            /* the tunnel up now (the session thread's reference) */
    int hs_fd;                      /* the socket of a handshake under way, or -1 */
    char reached[PKT_NAME_MAX + 1]; /* the node its last WELCOME named, or "" */
    int stop;                       /* a node session: asked to end (stop_reason why) */
    char stop_reason[160];
    int ended;                      /* its thread is over: join it */
    int joined;
    int given_up;                   /* it was replaced: not started again while listed,
                                       until the main session starts afresh (epoch) */
    uint64_t epoch;
};

/* A node NODES listed. */
struct node_addr {
    char name[PKT_NAME_MAX + 1];
    char host[PKT_HOST_MAX + 1];
    int port;
};

/* Shutdown: the signal thread sets stop_requested and kills every session's
 * tunnel. state_cond is broadcast on every change below (waits recheck). */
static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t state_cond;
static int stop_requested;
static struct session main_sess = {.is_main = 1, .hs_fd = -1};
/* The cluster, under state_lock: the latest NODES, the node sessions (their
 * structs are cluster_main's: it frees them after joining their threads),
 * the fingerprint the main session verified (which every node must present),
 * and how many fresh sessions the main one started. */
static struct node_addr listed[PKT_NODES_MAX];
static int nlisted;
static struct session *nodes[PKT_NODES_MAX];
static int nnodes;
static char pinned_fp[TLS_FP_LEN];
static uint64_t main_epoch;
static uint64_t cluster_gen;    /* moves on what cluster_main acts on */
static int cluster_started;
static pthread_t cluster_tid;


static int apps_count(void)
{
    int n;

    pthread_mutex_lock(&cfg_apps_lock);
    n = cfg.napps;
    pthread_mutex_unlock(&cfg_apps_lock);
    return n;
}

static void app_extras(const struct app_req *a, json_t *e);

/* Bytes of rules HELLO and APPS carry at most in "allow" (a HELLO must fit
 * the public side's pre-handshake limit with all its apps). */
#define ALLOW_MEMBER_MAX 8192

/* The allowlist in force as HELLO's and APPS' "allow", which lets the public
 * side refuse registrations this side would refuse; NULL (member left out,
 * the public side then cannot tell) when larger than ALLOW_MEMBER_MAX. */
static json_t *allow_member(void)
{
    struct allow_snap *s = private_allow_get();
    json_t *arr = s ? allow_to_json(&s->al) : NULL, *r;
    size_t i, bytes = 0;

    private_allow_put(s);
    json_array_foreach(arr, i, r)
        bytes += json_string_length(r) + 4;
    if (bytes > ALLOW_MEMBER_MAX) {
        static _Atomic int said;
        if (!said++)
            log_info("ev=allow_not_sent bytes=%zu msg=\"the --allow rules are too long to send; "
                     "the public side accepts every target and this side refuses what they do not "
                     "allow\"", bytes);
        json_decref(arr);
        arr = NULL;
    }
    return arr;
}

static json_t *hello_packet(int *napps)
{
    json_t *apps = json_array(), *udp_apps = NULL, *ftp_apps = NULL;

    pthread_mutex_lock(&cfg_apps_lock); /* a reload may change the apps */
    for (int i = 0; apps && i < cfg.napps; i++) {
        const struct app_req *a = &cfg.apps[i];
        json_t *e = json_pack("{s:s,s:i,s:s,s:i}", "name", a->name, "public_port",
                              a->public_port, "target_host", a->host, "target_port",
                              a->target_port);
        app_extras(a, e);
        if (e && a->udp) {
            json_object_set_new(e, "protocol", json_string("udp"));
            if (!udp_apps)
                udp_apps = json_array();
            json_array_append_new(udp_apps, e);
        } else if (e && a->ftp) {
            json_object_set_new(e, "protocol", json_string("ftp"));
            if (a->ftp_lo) {
                char r[16];
                snprintf(r, sizeof(r), "%d-%d", a->ftp_lo, a->ftp_hi);
                json_object_set_new(e, "ftp_passive_ports", json_string(r));
            }
            if (!ftp_apps)
                ftp_apps = json_array();
            json_array_append_new(ftp_apps, e);
        } else {
            json_array_append_new(apps, e);
        }
    }
    *napps = cfg.napps;
    pthread_mutex_unlock(&cfg_apps_lock);
    /* "version" is the lowest we speak (what a server of version 1 checks),
     * "max_version" the highest: the public side picks. UDP apps go in
     * "udp_apps", FTP apps in "ftp_apps", which a server without UDP or FTP
     * ignores (docs/PROTOCOL.md). */
    return packet(OP_HELLO, "{s:i,s:i,s:s,s:s,s:i,s:i,s:o*,s:o*,s:o*,s:o*}", "version",
                  PKT_PROTO_MIN, "max_version", PKT_PROTO_VERSION, "token", cfg.token, "name",
                  cfg.name, "window", PKT_WINDOW_DEFAULT, "resume_grace", (int)cfg.resume_grace,
                  "apps", apps, "udp_apps", udp_apps, "ftp_apps", ftp_apps, "allow",
                  allow_member());
}

static int dial_allowed(const char *host, int port, int timeout_ms, char *err, size_t errlen,
                        void *arg)
{
    struct allow_snap *s = private_allow_get();
    int fd;

    (void)arg;
    fd = s ? allow_dial(&s->al, host, port, timeout_ms, err, errlen) : -1;
    private_allow_put(s);
    return fd;
}

static int udp_connect_allowed(const char *host, int port, char *err, size_t errlen, void *arg)
{
    struct allow_snap *s = private_allow_get();
    int fd;

    (void)arg;
    fd = s ? allow_udp_connect(&s->al, host, port, err, errlen) : -1;
    private_allow_put(s);
    return fd;
}

static int on_build_connection(struct tunnel *t, struct pkt *p, void *arg);

/* The results of registering apps (WELCOME, APPS_RESULT), logged. */
static void log_app_results(json_t *results)
{
    json_t *res;
    size_t i;

    json_array_foreach(results, i, res) {
        const char *name = json_string_value(json_object_get(res, "name"));
        char esc[200];
        if (json_is_true(json_object_get(res, "ok")))
            log_debug("ev=app_registered app=%s", name);
        else
            log_error("ev=app_refused app=%s err=\"%s\"", name,
                      log_escape(json_string_value(json_object_get(res, "error")), esc,
                                 sizeof(esc)));
    }
}

/* One app of HELLO or APPS: name, ports, target, protocol (and an FTP app's
 * fixed passive range). */
/* An app's "proxy_protocol" and "allow_from", when set (version 6 public
 * sides use them; older ones ignore them, which take_welcome reports), and a
 * UDP app's "udp_idle_timeout" (version 3). */
static void app_extras(const struct app_req *a, json_t *e)
{
    if (!e)
        return;
    if (a->proxy_protocol)
        json_object_set_new(e, "proxy_protocol", json_integer(a->proxy_protocol));
    if (a->udp_idle)
        json_object_set_new(e, "udp_idle_timeout", json_integer(a->udp_idle));
    if (a->allow_from.n) {
        json_t *arr = cidr_list_to_json(&a->allow_from);
        if (arr)
            json_object_set_new(e, "allow_from", arr);
    }
}

static json_t *app_request(const struct app_req *a)
{
    json_t *e = json_pack("{s:s,s:i,s:s,s:i,s:s}", "name", a->name, "public_port",
                          a->public_port, "target_host", a->host, "target_port", a->target_port,
                          "protocol", a->udp ? "udp" : a->ftp ? "ftp" : "tcp");

    if (e && a->ftp && a->ftp_lo) {
        char r[16];
        snprintf(r, sizeof(r), "%d-%d", a->ftp_lo, a->ftp_hi);
        json_object_set_new(e, "ftp_passive_ports", json_string(r));
    }
    app_extras(a, e);
    return e;
}

/* References to the tunnels up now (the main session's and the node
 * sessions'), at most PKT_NODES_MAX + 1; their number. tunnel_unref each. */
static int live_tunnels(struct tunnel **out)
{
    int n = 0;

    pthread_mutex_lock(&state_lock);
    if (main_sess.live) {
        tunnel_ref(main_sess.live);
        out[n++] = main_sess.live;
    }
    for (int i = 0; i < nnodes && n < PKT_NODES_MAX + 1; i++) {
        if (nodes[i]->live) {
            tunnel_ref(nodes[i]->live);
            out[n++] = nodes[i]->live;
        }
    }
    pthread_mutex_unlock(&state_lock);
    return n;
}

/* An APPS request for the apps that changed on a reload (old before, now
 * after), with the allowlist in force, on every running tunnel whose public
 * side speaks version 4 (each node of a cluster has its own); sent also with
 * no app changed when allow_changed. 1 sent on every tunnel up, 0 nothing to
 * send, -1 not sent on some (none up, or an older public side: then the next
 * HELLO carries the apps). */
int private_push_apps(const struct app_req *old, int nold, const struct app_req *now, int nnow,
                      int allow_changed)
{
    json_t *unreg = json_array(), *reg = json_array();
    struct tunnel *ts[PKT_NODES_MAX + 1];
    int rc = -1, nt, sent = 0, failed = 0;

    for (int j = 0; j < nold && unreg; j++) {
        int same = 0;
        for (int i = 0; i < nnow && !same; i++)
            same = memcmp(&now[i], &old[j], sizeof(now[i])) == 0;
        if (!same)
            json_array_append_new(unreg, json_string(old[j].name));
    }
    for (int i = 0; i < nnow && reg; i++) {
        int same = 0;
        for (int j = 0; j < nold && !same; j++)
            same = memcmp(&now[i], &old[j], sizeof(now[i])) == 0;
        if (!same)
            json_array_append_new(reg, app_request(&now[i]));
    }
    if (!unreg || !reg) {
        json_decref(unreg);
        json_decref(reg);
        return -1;
    }
    if (json_array_size(unreg) == 0 && json_array_size(reg) == 0 && !allow_changed) {
        json_decref(unreg);
        json_decref(reg);
        return 0;
    }
    nt = live_tunnels(ts);
    for (int i = 0; i < nt; i++) {
        json_t *op;
        if (tunnel_is_dead(ts[i]) || tunnel_version(ts[i]) < PKT_PROTO_APPS) {
            failed++;
            continue;
        }
        /* Each its own copy (packet() takes them, whatever becomes of the
         * send): no JSON value is shared by two tunnels. */
        op = packet(OP_APPS, "{s:o,s:o,s:o*}", "unregister", json_deep_copy(unreg),
                    "register", json_deep_copy(reg), "allow", allow_member());
        if (tunnel_send(ts[i], op, NULL, 0) == 0)
            sent++;
        else
            failed++;
    }
    for (int i = 0; i < nt; i++)
        tunnel_unref(ts[i]);
    json_decref(unreg);
    json_decref(reg);
    /* Every live tunnel took it: 1; any that did not gets the apps with its
     * next HELLO. */
    if (sent > 0 && failed == 0)
        rc = 1;
    return rc;
}

static void cluster_take_nodes(struct pkt *p);

/* What the public side sends on the tunnel beyond the relay's own; arg is
 * the session. */
static int on_public_op(struct tunnel *t, struct pkt *p, void *arg)
{
    if (p->op == OP_APPS_RESULT) {
        log_info("ev=apps_applied results=%zu", json_array_size(json_object_get(p->json, "apps")));
        log_app_results(json_object_get(p->json, "apps"));
        return 0;
    }
    if (p->op == OP_NODES) {
        cluster_take_nodes(p);
        return 0;
    }
    return on_build_connection(t, p, arg);
}

/* The connections open at home over all tunnels (--max-conns counts them
 * all): t's, and those of every other session's tunnel. */
static unsigned conns_at_home(struct tunnel *t)
{
    unsigned n = tunnel_conn_count(t);

    pthread_mutex_lock(&state_lock);
    if (main_sess.live && main_sess.live != t)
        n += tunnel_conn_count(main_sess.live);
    for (int i = 0; i < nnodes; i++)
        if (nodes[i]->live && nodes[i]->live != t)
            n += tunnel_conn_count(nodes[i]->live);
    pthread_mutex_unlock(&state_lock);
    return n;
}

/* BUILD_CONNECTION with "proxy_protocol" (version 6): the connection starts
 * with the PROXY header of the client and the address it reached (both
 * checked by packet.c). 0 when p has none (the caller starts it plainly),
 * else conn_start_private_ex's result; a header that cannot be made turns
 * the connection down. */
static int build_with_proxy_header(struct tunnel *t, struct pkt *p, const char *host, int port)
{
    json_t *v = json_object_get(p->json, "proxy_protocol");
    struct sockaddr_storage client, server;
    unsigned char hdr[PROXY_PROTO_MAX];
    int n;

    if (!v)
        return 0;
    if (net_parse_addrport(json_string_value(json_object_get(p->json, "client")), &client) != 0 ||
        net_parse_addrport(json_string_value(json_object_get(p->json, "server")), &server) != 0 ||
        (n = proxy_proto_header((int)json_integer_value(v), &client, &server, hdr,
                                sizeof(hdr))) < 0) {
        conn_refuse(t, p->conn, "cannot make the PROXY header");
        return -1;
    }
    return conn_start_private_ex(t, p->conn, host, port, dial_allowed, NULL, hdr, (size_t)n);
}

static int on_build_connection(struct tunnel *t, struct pkt *p, void *arg)
{
    const char *host = json_string_value(json_object_get(p->json, "target_host"));
    int port = (int)json_integer_value(json_object_get(p->json, "target_port"));

    (void)arg;
    if (conns_at_home(t) >= max_conns_now) {
        uint64_t now = mono_ms(), total, since;
        int say = 0;
        conn_refuse(t, p->conn, "too many connections at home (proxy_private --max-conns)");
        pthread_mutex_lock(&refused_lock);
        total = ++refused_total;
        since = refused_total - refused_logged;
        if (refused_logged == 0 || now - refused_log_ms >= REFUSED_LOG_EVERY_MS) {
            refused_logged = refused_total;
            refused_log_ms = now;
            say = 1;
        }
        pthread_mutex_unlock(&refused_lock);
        if (say)
            log_warn("ev=conn_refused reason=\"too many connections (--max-conns %u)\" "
                     "refused=%llu refused_total=%llu",
                     (unsigned)max_conns_now, (unsigned long long)since,
                     (unsigned long long)total);
        return 0;
    }
    if (json_object_get(p->json, "ftp")) {
        /* FTP (version 5): a control connection gets the rewriter between it
         * and the server; a data connection must be one a reply announced. */
        if (tunnel_version(t) < PKT_PROTO_FTP) {
            log_warn("ev=protocol_error what=\"BUILD_CONNECTION with ftp before version %d\"",
                     PKT_PROTO_FTP);
            return -1;
        }
        if (ftp_private_build(t, p, dial_allowed, NULL) == -2) {
            log_warn("ev=protocol_error what=\"BUILD_CONNECTION reused live conn=%llu\"",
                     (unsigned long long)p->conn);
            return -1;
        }
        return 0;
    }
    if (build_with_proxy_header(t, p, host, port) == -2 ||
        (!json_object_get(p->json, "proxy_protocol") &&
         conn_start_private(t, p->conn, host, port, dial_allowed, NULL) == -2)) {
        log_warn("ev=protocol_error what=\"BUILD_CONNECTION reused live conn=%llu\"",
                 (unsigned long long)p->conn);
        return -1;
    }
    return 0;
}

/* Result of one tunnel session. */
enum session_end {
    SESSION_RETRY,      /* try again after the next backoff delay */
    SESSION_FATAL,      /* retrying cannot help: stop */
    SESSION_WAS_UP,     /* the tunnel was up for a while: start backing off afresh */
    SESSION_REPLACED,   /* another proxy took our name: wait the longest delay */
};

/* A node session's check of a node's certificate: it must have the
 * fingerprint the main session verified (or --fingerprint's), as every node
 * of a cluster has the same certificate; nothing is sent to one that has
 * not. 0 when it does. */
static int node_pin_check(struct session *s, const char *fp)
{
    char want[TLS_FP_LEN];

    pthread_mutex_lock(&state_lock);
    snprintf(want, sizeof(want), "%s", cfg.fingerprint[0] ? cfg.fingerprint : pinned_fp);
    pthread_mutex_unlock(&state_lock);
    if (want[0] && strcmp(fp, want) == 0)
        return 0;
    log_error("ev=fingerprint_mismatch node=%s public=%s got=%s expected=%s msg=\"REFUSING this "
              "node (its token is not sent): its certificate is not the one %s was pinned "
              "with; nodes of a cluster share one certificate: --cert/--key on every node\" "
              "pinned_by=%s",
              s->node, s->hp, fp, want[0] ? want : "none", main_sess.hp,
              cfg.fingerprint[0] ? "--fingerprint" : cfg.known_hosts);
    return -1;
}

/* TLS handshake and pinning check before anything secret is sent. On success
 * *out holds the SSL object; on failure it stays NULL and the result says
 * whether retrying can help. The main session pins as --fingerprint says, or
 * trusts on first use (known_hosts), and remembers what it verified; a node
 * session takes only that (node_pin_check) and writes nothing down. */
static enum session_end tls_connect(struct session *s, int fd, uint64_t deadline, SSL **out)
{
    char fp[TLS_FP_LEN], old[TLS_FP_LEN], err[300], hostport[300];
    SSL *ssl = SSL_new(cfg.tls);
    struct diag_peek peek = {0};
    int r;

    *out = NULL;
    if (ssl)
        diag_tls_watch(ssl, &peek);
    if (!ssl || tls_handshake(ssl, fd, 0, deadline, err, sizeof(err)) != 0) {
        log_warn("ev=handshake_failed public=%s err=\"TLS: %s\" hint=\"%s\"", s->hp,
                 ssl ? err : "out of memory", diag_tls_client_hint(&peek, err));
        SSL_free(ssl);
        return SESSION_RETRY;
    }
    if (tls_peer_fingerprint(ssl, fp) != 0) {
        log_error("ev=refused public=%s err=\"the public side sent no certificate\"", s->hp);
        SSL_free(ssl);
        return SESSION_RETRY;
    }
    if (!s->is_main) {
        if (node_pin_check(s, fp) != 0) {
            SSL_free(ssl);
            return SESSION_RETRY;
        }
    } else if (cfg.fingerprint[0]) {
        if (strcmp(fp, cfg.fingerprint) != 0) {
            log_error("ev=fingerprint_mismatch public=%s expected=%s got=%s "
                      "msg=\"REFUSING: the public side's certificate is not the one given with "
                      "--fingerprint; someone may be intercepting the tunnel\"",
                      s->hp, cfg.fingerprint, fp);
            SSL_free(ssl);
            return SESSION_FATAL;
        }
    } else {
        snprintf(hostport, sizeof(hostport), "%s:%d", cfg.host, cfg.port);
        r = tls_known_hosts_check(cfg.known_hosts, hostport, fp, old, err, sizeof(err));
        if (r < 0) {
            log_error("ev=fingerprint_mismatch public=%s file=%s msg=\"REFUSING: %s. If the "
                      "public side really got a new certificate, delete its line from the file "
                      "or pass --fingerprint\"",
                      hostport, cfg.known_hosts, err);
            SSL_free(ssl);
            return SESSION_FATAL;
        }
        if (r == 0)
            log_warn("ev=fingerprint_learned public=%s fingerprint=%s file=%s msg=\"trusted on first "
                     "use; compare it with the one proxy_public printed\"",
                     hostport, fp, cfg.known_hosts);
    }
    if (s->is_main) {
        pthread_mutex_lock(&state_lock);
        if (strcmp(pinned_fp, fp) != 0) {
            snprintf(pinned_fp, sizeof(pinned_fp), "%s", fp);
            pthread_cond_broadcast(&state_cond); /* node sessions waiting for it */
        }
        pthread_mutex_unlock(&state_lock);
    }
    *out = ssl;
    return SESSION_RETRY;
}

static int wait_or_stop(struct session *s, unsigned ms);

/* The socket of s's handshake under way (-1: none), which a stop shuts down
 * so that the handshake ends at once. */
static void set_hs_fd(struct session *s, int fd)
{
    pthread_mutex_lock(&state_lock);
    s->hs_fd = fd;
    if (fd >= 0 && (stop_requested || s->stop))
        shutdown(fd, SHUT_RDWR);
    pthread_mutex_unlock(&state_lock);
}

/* One handshake of session s: dial its address, TLS, HELLO (asking to
 * resume session `resume` when not NULL), WELCOME. On success *out is a
 * tunnel on the new link and *welcome its WELCOME (pkt_clear it);
 * SESSION_WAS_UP. Otherwise the result says whether retrying can help.
 * dial_ms bounds the dial (resumes retry often). */
static enum session_end handshake(struct session *s, struct tunnel *resume, int dial_ms,
                                  struct tunnel **out, struct pkt *welcome)
{
    char err[192] = "", addr[64];
    struct tunnel *t = NULL;
    enum session_end result = SESSION_RETRY;
    SSL *ssl = NULL;
    json_t *hello;
    uint64_t deadline;
    int fd, r, napps = 0;

    *out = NULL;
    if (!s->is_main && dial_ms > NODE_DIAL_MS)
        dial_ms = NODE_DIAL_MS;
    fd = net_dial(s->host, s->port, dial_ms, err, sizeof(err));
    /* TLS and WELCOME: one deadline from here. */
    deadline = mono_ms() + HANDSHAKE_TIMEOUT_MS;
    if (fd < 0) {
        log_warn("ev=dial_failed public=%s err=\"%s\"%s", s->hp, err,
                 resume ? " resume=trying" : "");
        return SESSION_RETRY;
    }
    set_hs_fd(s, fd);
    net_peer_str(fd, addr, sizeof(addr));
    if (!cfg.plaintext) {
        result = tls_connect(s, fd, deadline, &ssl);
        if (!ssl) {
            set_hs_fd(s, -1);
            close(fd);
            return result;
        }
    }
    t = tunnel_new(fd, ssl, cfg.name, addr, 0);
    if (!t) {
        set_hs_fd(s, -1);
        SSL_free(ssl);
        close(fd);
        return SESSION_RETRY;
    }
    hello = hello_packet(&napps);
    if (hello && resume) {
        char tok[TUNNEL_TOKEN_HEX_LEN + 1];
        tunnel_resume_token(resume, tok);
        if (json_object_set_new(hello, "resume", json_pack("{s:s,s:s}", "session",
                                                           tunnel_session_id(resume), "token",
                                                           tok)) != 0) {
            json_decref(hello);
            hello = NULL;
        }
        OPENSSL_cleanse(tok, sizeof(tok));
    }
    if (tunnel_send(t, hello, NULL, 0) != 0) {
        log_warn("ev=handshake_failed public=%s err=\"could not send HELLO\"", addr);
        goto fail;
    }
    r = tunnel_read_handshake(t, welcome, deadline, err, sizeof(err));
    if (r <= 0) {
        const char *hint = cfg.plaintext ? diag_plain_client_hint(err) : NULL;
        log_warn("ev=handshake_failed public=%s err=\"%s\"%s%s%s", addr, err,
                 hint ? " hint=\"" : "", hint ? hint : "", hint ? "\"" : "");
        goto fail;
    }
    if (welcome->op == OP_ERROR) {
        char code[64], msg[200];
        log_escape(json_string_value(json_object_get(welcome->json, "code")), code, sizeof(code));
        log_escape(json_string_value(json_object_get(welcome->json, "message")), msg,
                   sizeof(msg));
        if (strcmp(code, "bad_token") == 0 || strcmp(code, "bad_version") == 0 ||
            strcmp(code, "name_not_allowed") == 0) {
            log_error("ev=refused public=%s code=%s msg=\"%s\" hint=\"%s\"", addr, code, msg,
                      strcmp(code, "bad_token") == 0
                          ? "the token is wrong (or was revoked): use the one proxy_public "
                            "printed, or ask the server's admin for a token"
                      : code[0] == 'n'
                          ? "connect with a --name this token allows, or ask the server's admin"
                          : "upgrade so both sides speak the same protocol version");
            result = SESSION_FATAL;
        } else if (strcmp(code, "kicked") == 0) {
            log_error("ev=refused public=%s code=%s msg=\"%s\"", addr, code, msg);
        } else {
            log_warn("ev=refused public=%s code=%s msg=\"%s\"", addr, code, msg);
        }
        goto fail;
    }
    if (welcome->op != OP_WELCOME) {
        log_warn("ev=handshake_failed public=%s err=\"expected WELCOME, got %s\"", addr,
                 op_name(welcome->op));
        goto fail;
    }
    r = (int)json_integer_value(json_object_get(welcome->json, "version"));
    if (r < PKT_PROTO_MIN || r > PKT_PROTO_VERSION) {
        log_error("ev=refused public=%s err=\"public side speaks protocol %d, we speak %d to %d\"",
                  addr, r, PKT_PROTO_MIN, PKT_PROTO_VERSION);
        result = SESSION_FATAL;
        goto fail;
    }
    set_hs_fd(s, -1);
    *out = t;
    return SESSION_WAS_UP;
fail:
    set_hs_fd(s, -1);
    pkt_clear(welcome);
    tunnel_kill(t, "handshake failed");
    tunnel_unref(t);
    return result;
}

/* WELCOME w of a fresh session of s set up t: version, window, session; the
 * apps' results logged; the node it names remembered (the main session's
 * tells which node it reaches: no node session goes there). */
static int take_welcome(struct session *s, struct tunnel *t, struct pkt *w)
{
    const char *node = json_string_value(json_object_get(w->json, "node"));
    int version = (int)json_integer_value(json_object_get(w->json, "version"));
    const char *sid = json_string_value(json_object_get(w->json, "session"));
    const char *tok = json_string_value(json_object_get(w->json, "resume_token"));
    unsigned grace = (unsigned)json_integer_value(json_object_get(w->json, "resume_grace"));

    tunnel_set_peer_window(t, (uint32_t)json_integer_value(json_object_get(w->json, "window")));
    if (version < PKT_PROTO_UDP) {
        int nudp = 0;
        pthread_mutex_lock(&cfg_apps_lock);
        for (int k = 0; k < cfg.napps; k++)
            nudp += cfg.apps[k].udp;
        pthread_mutex_unlock(&cfg_apps_lock);
        if (nudp)
            log_error("ev=udp_apps_not_registered count=%d version=%d msg=\"the public side "
                      "speaks protocol version %d, which has no UDP: upgrade proxy_public; TCP "
                      "apps work\"", nudp, version, version);
    }
    if (version < PKT_PROTO_FTP) {
        int nftp = 0;
        pthread_mutex_lock(&cfg_apps_lock);
        for (int k = 0; k < cfg.napps; k++)
            nftp += cfg.apps[k].ftp;
        pthread_mutex_unlock(&cfg_apps_lock);
        if (nftp)
            log_error("ev=ftp_apps_not_registered count=%d version=%d msg=\"the public side "
                      "speaks protocol version %d, which has no FTP: upgrade proxy_public; TCP "
                      "apps work\"", nftp, version, version);
    }
    if (version < PKT_PROTO_PP) {
        int nx = 0;
        pthread_mutex_lock(&cfg_apps_lock);
        for (int k = 0; k < cfg.napps; k++)
            nx += cfg.apps[k].proxy_protocol || cfg.apps[k].allow_from.n;
        pthread_mutex_unlock(&cfg_apps_lock);
        if (nx)
            log_error("ev=app_options_ignored count=%d version=%d msg=\"the public side speaks "
                      "protocol version %d, which knows neither proxy_protocol nor allow_from: "
                      "those apps run without them; upgrade proxy_public\"", nx, version, version);
    }
    if (version >= 2 && sid && tok && tunnel_set_session(t, sid, tok) == 0)
        tunnel_set_version(t, version, grace < cfg.resume_grace ? grace : cfg.resume_grace);
    else
        tunnel_set_version(t, version, 0);
    log_app_results(json_object_get(w->json, "apps"));
    pthread_mutex_lock(&state_lock);
    snprintf(s->reached, sizeof(s->reached), "%s", node ? node : "");
    if (s->is_main) {
        main_epoch++;
        cluster_gen++;
        pthread_cond_broadcast(&state_cond);
    }
    pthread_mutex_unlock(&state_lock);
    return 0;
}

/* A node session must reach the node it is for: a WELCOME naming another
 * (or none) means the address NODES gave now serves something else; t is
 * then killed and 0 returned (the session retries after its backoff). */
static int node_welcome_ok(struct session *s, struct tunnel *t, struct pkt *w)
{
    const char *node = json_string_value(json_object_get(w->json, "node"));

    if (s->is_main || (node && strcmp(node, s->node) == 0))
        return 1;
    log_warn("ev=node_mismatch node=%s public=%s answered=%s msg=\"the address the node list "
             "gives for this node is served by %s: not kept, retried later\"",
             s->node, s->hp, node ? node : "none", node ? "another node" : "no cluster node");
    tunnel_kill(t, "not the node expected");
    return 0;
}

static void set_current(struct session *s, struct tunnel *t)
{
    pthread_mutex_lock(&state_lock);
    s->live = t;
    if (t && (stop_requested || s->stop))
        tunnel_kill(t, "shutting down");
    pthread_mutex_unlock(&state_lock);
}

/* Whether s is to end: SIGINT/SIGTERM, or (a node session) asked to. */
static int stopping(struct session *s)
{
    int r;

    pthread_mutex_lock(&state_lock);
    r = stop_requested || s->stop;
    pthread_mutex_unlock(&state_lock);
    return r;
}

/* The link of session t broke: come back with it within its grace period.
 * 1 when resumed on a new link; 0 when the session is over (t killed): then
 * *fresh may hold a new session the public side started instead. */
static int resume_session(struct session *s, struct tunnel *t, struct tunnel **fresh,
                          enum session_end *result)
{
    uint64_t deadline = tunnel_grace_deadline(t);
    unsigned attempt = 0;

    *fresh = NULL;
    while (!stopping(s) && !tunnel_is_dead(t) && mono_ms() < deadline) {
        struct tunnel *link = NULL;
        struct pkt w = {0};
        uint64_t left = deadline - mono_ms();
        enum session_end r = handshake(s, t, left < RESUME_DIAL_MS ? (int)left : RESUME_DIAL_MS,
                                       &link, &w);
        if (r == SESSION_FATAL) {
            *result = SESSION_FATAL;
            break;
        }
        if (link && json_is_true(json_object_get(w.json, "resumed"))) {
            /* The public side took it back: the new token, our RESUME list,
             * then the session's reader goes on with this link. */
            if (tunnel_set_session(t, json_string_value(json_object_get(w.json, "session")),
                                   json_string_value(json_object_get(w.json,
                                                                     "resume_token"))) == 0 &&
                tunnel_send_resume_list(t, link) == 0 &&
                tunnel_offer_link(t, tunnel_take_link(link)) == 0) {
                char a[64];
                log_info("ev=tunnel_resumed_link public=%s name=%s attempts=%u",
                         tunnel_addr(link, a, sizeof(a)), cfg.name, attempt + 1);
                pkt_clear(&w);
                tunnel_unref(link);
                return 1;
            }
            pkt_clear(&w);
            tunnel_kill(link, "resume failed");
            tunnel_unref(link);
        } else if (link) {
            /* No such session there (expired, or the public side restarted):
             * ours is over, and the new link starts a fresh one. */
            log_warn("ev=resume_refused name=%s reason=\"the public side no longer has this "
                     "session: its connections are closed, a fresh session starts\"",
                     cfg.name);
            if (node_welcome_ok(s, link, &w)) {
                take_welcome(s, link, &w);
                *fresh = link;
            } else {
                tunnel_unref(link);
            }
            pkt_clear(&w);
            break;
        }
        attempt++;
        if (wait_or_stop(s, attempt < 3 ? 200 : 1000))
            break;
    }
    if (!tunnel_is_dead(t)) {
        char msg[80];
        snprintf(msg, sizeof(msg), "not resumed within the %u s grace period", tunnel_grace_s(t));
        tunnel_kill(t, *fresh ? "the public side started a fresh session" : msg);
    }
    return 0;
}

/* Wait for t's connections and heartbeat to end, then drop it. */
static void session_done(struct tunnel *t)
{
    tunnel_kill(t, "session over");
    if (tunnel_wait_idle(t, 5000) != 0)
        log_warn("ev=slow_shutdown what=\"connections still closing\"");
    tunnel_unref(t);
}

/* A node session was replaced (ERROR replaced): it leaves the node to the
 * tunnel that took over rather than take it back (which would never end),
 * and is not started again while the node stays listed and the main session
 * stays the one it is. */
static void node_replaced(struct session *s)
{
    int by_main;

    pthread_mutex_lock(&state_lock);
    by_main = strcmp(main_sess.reached, s->node) == 0;
    s->given_up = 1;
    s->epoch = main_epoch;
    if (!s->stop)
        snprintf(s->stop_reason, sizeof(s->stop_reason), "%s",
                 by_main ? "the main session reaches this node"
                         : "replaced: another tunnel with the same name took this node over");
    pthread_mutex_unlock(&state_lock);
    if (!by_main)
        log_error("ev=replaced name=%s node=%s msg=\"another proxy_private with the same name "
                  "connected to this node; this one leaves it (give each one its own --name)\"",
                  cfg.name, s->node);
}

static enum session_end run_session(struct session *s)
{
    char err[192] = "", addr[64], node[PKT_NAME_MAX + 8];
    struct tunnel *t = NULL, *fresh = NULL;
    struct pkt w = {0};
    enum session_end result;
    uint64_t up_since;

    result = handshake(s, NULL, HANDSHAKE_TIMEOUT_MS, &t, &w);
    if (!t)
        return result;
    if (!node_welcome_ok(s, t, &w)) {
        pkt_clear(&w);
        tunnel_unref(t);
        return SESSION_RETRY;
    }
    take_welcome(s, t, &w);
    pkt_clear(&w);
    for (;;) {
        /* (A fresh session that a resume attempt got has its WELCOME taken.) */
        set_current(s, t);
        result = SESSION_WAS_UP;
        if (tunnel_start_heartbeat(t) != 0) {
            log_error("ev=thread_failed what=heartbeat");
            break;
        }
        pthread_mutex_lock(&state_lock);
        if (s->reached[0])
            snprintf(node, sizeof(node), " node=%s", s->reached);
        else
            node[0] = '\0';
        pthread_mutex_unlock(&state_lock);
        log_info("ev=tunnel_up public=%s name=%s apps=%d tls=%s version=%d resume_grace_s=%u%s",
                 tunnel_addr(t, addr, sizeof(addr)), cfg.name, apps_count(), tunnel_tls_mode(t),
                 tunnel_version(t), tunnel_grace_s(t), node);
        up_since = mono_ms();
        while (tunnel_run(t, on_public_op, s, err, sizeof(err)) == TUNNEL_SUSPENDED &&
               !stopping(s)) {
            log_warn("ev=tunnel_link_down public=%s reason=\"%s\" resume=trying grace_s=%u",
                     tunnel_addr(t, addr, sizeof(addr)), err, tunnel_grace_s(t));
            if (!resume_session(s, t, &fresh, &result))
                break;
        }
        log_warn("ev=tunnel_down public=%s reason=\"%s\"", tunnel_addr(t, addr, sizeof(addr)),
                 err);
        if (strcmp(tunnel_peer_error(t), "kicked") == 0 ||
            strcmp(tunnel_peer_error(t), "token_revoked") == 0) {
            log_error("ev=disconnected_by_admin name=%s code=%s", cfg.name, tunnel_peer_error(t));
        } else if (strcmp(tunnel_peer_error(t), "replaced") == 0) {
            if (s->is_main)
                log_error("ev=replaced name=%s msg=\"another proxy_private with the same name "
                          "connected to the public side; give each one its own --name\"",
                          cfg.name);
            else
                node_replaced(s);
            result = SESSION_REPLACED;
        } else if (result != SESSION_FATAL && mono_ms() - up_since < STABLE_AFTER_MS) {
            result = SESSION_RETRY; /* up only briefly: keep backing off */
        }
        set_current(s, NULL);
        session_done(t);
        t = fresh;
        fresh = NULL;
        if (!t || result == SESSION_REPLACED)
            break;
    }
    if (t) {
        set_current(s, NULL);
        session_done(t);
    }
    return result;
}

/* A node session waits until the main session has verified a certificate:
 * the one every node must present (not with --fingerprint, which names it,
 * nor in plaintext). 1 when stopping instead. */
static int wait_for_pin(struct session *s)
{
    int stop, said = 0;

    if (cfg.plaintext || cfg.fingerprint[0])
        return stopping(s);
    pthread_mutex_lock(&state_lock);
    while (!stop_requested && !s->stop && !pinned_fp[0]) {
        struct timespec ts;
        if (!said++) {
            pthread_mutex_unlock(&state_lock);
            log_info("ev=node_session_waiting node=%s msg=\"waiting for the main session to "
                     "verify the certificate every node of the cluster must present\"", s->node);
            pthread_mutex_lock(&state_lock);
            continue;
        }
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&state_cond, &state_lock, &ts);
    }
    stop = stop_requested || s->stop;
    pthread_mutex_unlock(&state_lock);
    return stop;
}

/* Session s until it is over: sessions, each followed by a backoff delay.
 * The main session returns the exit code (3 when retrying cannot help); a
 * node session ends when asked to, or when replaced, and backs off the
 * longest after what would end the main one. */
static int session_loop(struct session *s)
{
    unsigned backoff = BACKOFF_MIN_MS;

    for (;;) {
        unsigned delay;
        enum session_end r;
        if (!s->is_main && wait_for_pin(s))
            break;
        r = run_session(s);
        if (r == SESSION_FATAL) {
            if (s->is_main)
                return 3;
            backoff = BACKOFF_MAX_MS;
        }
        if (r == SESSION_REPLACED && !s->is_main)
            break;
        if (r == SESSION_WAS_UP)
            backoff = BACKOFF_MIN_MS;
        if (r == SESSION_REPLACED)
            backoff = BACKOFF_MAX_MS;
        /* Exponential backoff with jitter (up to half the delay) so that many
         * homes do not reconnect in lockstep after the public side restarts. */
        delay = backoff + (unsigned)(rand() % (int)(backoff / 2 + 1));
        if (delay > BACKOFF_MAX_MS)
            delay = BACKOFF_MAX_MS;
        if (r == SESSION_WAS_UP)
            delay = (unsigned)(rand() % 1000); /* it was fine: come back quickly */
        if (stopping(s))
            break; /* SIGTERM ended the session: no reconnecting line */
        if (s->is_main)
            log_info("ev=reconnecting after_ms=%u", delay);
        else
            log_info("ev=reconnecting after_ms=%u node=%s", delay, s->node);
        if (wait_or_stop(s, delay))
            break;
        backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
    }
    return 0;
}

/* ---------------------------------------------------------------- cluster */

static void *node_main(void *arg)
{
    struct session *s = arg;
    char reason[sizeof(s->stop_reason)];

    session_loop(s);
    pthread_mutex_lock(&state_lock);
    snprintf(reason, sizeof(reason), "%s",
             s->stop_reason[0] ? s->stop_reason : stop_requested ? "shutting down" : "ended");
    pthread_mutex_unlock(&state_lock);
    log_info("ev=node_session_stop node=%s reason=\"%s\"", s->node, reason);
    pthread_mutex_lock(&state_lock);
    s->ended = 1;
    cluster_gen++;
    pthread_cond_broadcast(&state_cond);
    pthread_mutex_unlock(&state_lock);
    return NULL;
}

/* Ask node session s to end: its tunnel killed, its handshake cut short. */
static void request_stop_locked(struct session *s, const char *reason)
{
    if (s->stop || s->ended)
        return;
    s->stop = 1;
    snprintf(s->stop_reason, sizeof(s->stop_reason), "%s", reason);
    if (s->live)
        tunnel_kill(s->live, reason);
    if (s->hs_fd >= 0)
        shutdown(s->hs_fd, SHUT_RDWR);
    pthread_cond_broadcast(&state_cond);
}

static const struct node_addr *listed_find_locked(const char *name)
{
    for (int i = 0; i < nlisted; i++)
        if (strcmp(listed[i].name, name) == 0)
            return &listed[i];
    return NULL;
}

/* Joinable, with its own stack (node sessions run OpenSSL handshakes). */
static int spawn_joinable(pthread_t *tid, void *(*fn)(void *), void *arg, size_t stack)
{
    pthread_attr_t attr;
    int rc = pthread_attr_init(&attr);

    if (rc != 0)
        return rc;
    rc = pthread_attr_setstacksize(&attr, stack < (size_t)PTHREAD_STACK_MIN
                                              ? (size_t)PTHREAD_STACK_MIN : stack);
    if (rc == 0)
        rc = pthread_create(tid, &attr, fn, arg);
    pthread_attr_destroy(&attr);
    return rc;
}

/* One pass of cluster_main, under state_lock (let go of while joining):
 * join the node sessions that are over, drop them (a replaced one stays
 * while it would otherwise start again), stop those no longer wanted (not
 * listed, moved, or reached by the main session), and start one for each
 * listed node that has none. Log lines go in logs (nlog of them, at most
 * 2 * PKT_NODES_MAX), written by the caller without the lock. */
#define CLUSTER_LOG_LINE 400
static int cluster_pass_locked(char (*logs)[CLUSTER_LOG_LINE])
{
    struct session *done[PKT_NODES_MAX];
    int ndone = 0, nlog = 0;

    for (int i = 0; i < nnodes; i++)
        if (nodes[i]->ended && !nodes[i]->joined)
            done[ndone++] = nodes[i];
    if (ndone) {
        pthread_mutex_unlock(&state_lock);
        for (int k = 0; k < ndone; k++)
            pthread_join(done[k]->tid, NULL);
        pthread_mutex_lock(&state_lock);
        for (int k = 0; k < ndone; k++)
            done[k]->joined = 1;
    }
    for (int i = 0; i < nnodes;) {
        struct session *s = nodes[i];
        const struct node_addr *n = listed_find_locked(s->node);
        int keep = s->given_up && s->epoch == main_epoch && n && n->port == s->port &&
                   strcmp(n->host, s->host) == 0;
        if (s->joined && !keep) {
            nodes[i] = nodes[--nnodes];
            free(s);
            continue;
        }
        if (!s->ended) {
            if (!n)
                request_stop_locked(s, "no longer in the node list");
            else if (n->port != s->port || strcmp(n->host, s->host) != 0)
                request_stop_locked(s, "the node list gives it another address");
            else if (strcmp(main_sess.reached, s->node) == 0)
                request_stop_locked(s, "the main session reaches this node");
        }
        i++;
    }
    /* Which node the main session reaches must be known first: a session
     * of ours there would replace it. */
    for (int i = 0; main_sess.reached[0] && i < nlisted; i++) {
        const struct node_addr *n = &listed[i];
        struct session *s;
        int have = strcmp(n->name, main_sess.reached) == 0, rc;
        for (int k = 0; k < nnodes && !have; k++)
            have = strcmp(nodes[k]->node, n->name) == 0;
        if (have || nnodes >= PKT_NODES_MAX)
            continue;
        s = calloc(1, sizeof(*s));
        if (!s) {
            snprintf(logs[nlog++], CLUSTER_LOG_LINE, "ev=thread_failed what=node_session "
                     "node=%.*s err=\"out of memory\"", PKT_NAME_MAX, n->name);
            break;
        }
        s->hs_fd = -1;
        snprintf(s->node, sizeof(s->node), "%.*s", PKT_NAME_MAX, n->name);
        snprintf(s->host, sizeof(s->host), "%.*s", PKT_HOST_MAX, n->host);
        s->port = n->port;
        net_hostport_str(s->host, s->port, s->hp, sizeof(s->hp));
        rc = spawn_joinable(&s->tid, node_main, s, NODE_SESSION_STACK);
        if (rc != 0) {
            snprintf(logs[nlog++], CLUSTER_LOG_LINE, "ev=thread_failed what=node_session "
                     "node=%.*s err=\"%s\"", PKT_NAME_MAX, n->name, strerror(rc));
            free(s);
            break;
        }
        nodes[nnodes++] = s;
        snprintf(logs[nlog++], CLUSTER_LOG_LINE, "ev=node_session_start node=%s address=%s",
                 s->node, s->hp);
    }
    return nlog;
}

/* The cluster's node sessions: started on the first NODES, it keeps one
 * for each listed node until SIGINT/SIGTERM (or the main session's end),
 * then stops and joins them all. */
static void *cluster_main(void *arg)
{
    char (*logs)[CLUSTER_LOG_LINE] = malloc((size_t)PKT_NODES_MAX * CLUSTER_LOG_LINE);
    struct session *all[PKT_NODES_MAX];
    int nall = 0;

    (void)arg;
    pthread_mutex_lock(&state_lock);
    while (!stop_requested) {
        uint64_t seen = cluster_gen;
        struct timespec ts;
        int nlog = logs ? cluster_pass_locked(logs) : 0;
        if (nlog) {
            /* (What changes meanwhile moves cluster_gen: no wait then.) */
            pthread_mutex_unlock(&state_lock);
            for (int i = 0; i < nlog; i++)
                log_info("%s", logs[i]);
            pthread_mutex_lock(&state_lock);
        }
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += 1;
        while (!stop_requested && cluster_gen == seen &&
               pthread_cond_timedwait(&state_cond, &state_lock, &ts) == 0)
            ;
    }
    for (int i = 0; i < nnodes; i++) {
        request_stop_locked(nodes[i], "shutting down");
        all[nall++] = nodes[i];
    }
    nnodes = 0;
    pthread_mutex_unlock(&state_lock);
    for (int i = 0; i < nall; i++) {
        if (!all[i]->joined)
            pthread_join(all[i]->tid, NULL);
        free(all[i]);
    }
    free(logs);
    return NULL;
}

/* NODES (any tunnel of version 7, checked by packet.c): the latest list
 * wins; cluster_main acts on it. */
static void cluster_take_nodes(struct pkt *p)
{
    json_t *arr = json_object_get(p->json, "nodes"), *n;
    struct node_addr *got = calloc(PKT_NODES_MAX, sizeof(*got));
    char names[700];
    size_t i, len = 0;
    int ng = 0, changed, rc = 0;

    if (!got) {
        log_error("ev=nodes_ignored err=\"out of memory\"");
        return;
    }
    json_array_foreach(arr, i, n) {
        const char *name = json_string_value(json_object_get(n, "name"));
        const char *addr = json_string_value(json_object_get(n, "address"));
        int dup = 0;
        if (ng >= PKT_NODES_MAX || !name || !addr)
            break;
        for (int k = 0; k < ng && !dup; k++)
            dup = strcmp(got[k].name, name) == 0;
        if (dup || pkt_split_hostport(addr, got[ng].host, sizeof(got[ng].host),
                                      &got[ng].port) != 0)
            continue;
        snprintf(got[ng].name, sizeof(got[ng].name), "%s", name);
        ng++;
    }
    names[0] = '\0';
    for (int k = 0; k < ng; k++) {
        int w = snprintf(names + len, sizeof(names) - len, "%s%s", k ? "," : "", got[k].name);
        if (w < 0 || (size_t)w >= sizeof(names) - len) {
            snprintf(names + (len < sizeof(names) - 8 ? len : sizeof(names) - 8), 8, ",...");
            break;
        }
        len += (size_t)w;
    }
    pthread_mutex_lock(&state_lock);
    changed = ng != nlisted;
    for (int k = 0; k < ng && !changed; k++) {
        const struct node_addr *o = listed_find_locked(got[k].name);
        changed = !o || o->port != got[k].port || strcmp(o->host, got[k].host) != 0;
    }
    if (changed) {
        memcpy(listed, got, (size_t)ng * sizeof(*got));
        nlisted = ng;
        cluster_gen++;
        pthread_cond_broadcast(&state_cond);
    }
    if (!cluster_started && !stop_requested) {
        rc = spawn_joinable(&cluster_tid, cluster_main, NULL, THREAD_STACK_SIZE);
        cluster_started = rc == 0;
    }
    pthread_mutex_unlock(&state_lock);
    if (changed)
        log_info("ev=cluster_nodes nodes=%s", ng ? names : "none");
    if (rc != 0)
        log_error("ev=thread_failed what=cluster err=\"%s\"", strerror(rc));
    free(got);
}

static int main_argc;
static char **main_argv;

static void *signal_main(void *arg)
{
    sigset_t set;
    int sig = 0;

    (void)arg;
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
            private_reload(main_argc, main_argv);
        else if (sig == SIGINT || sig == SIGTERM)
            break;
    }
    sd_notify_state("STOPPING=1");
    log_info("ev=stopping signal=%s", sig == SIGINT ? "SIGINT" : "SIGTERM");
    pthread_mutex_lock(&state_lock);
    stop_requested = 1;
    if (main_sess.live)
        tunnel_kill(main_sess.live, "shutting down");
    if (main_sess.hs_fd >= 0)
        shutdown(main_sess.hs_fd, SHUT_RDWR);
    for (int i = 0; i < nnodes; i++)
        request_stop_locked(nodes[i], "shutting down");
    cluster_gen++;
    pthread_cond_broadcast(&state_cond);
    pthread_mutex_unlock(&state_lock);
    return NULL;
}

/* Sleep up to ms unless s is to stop (stopping()); returns 1 when it is. */
static int wait_or_stop(struct session *s, unsigned ms)
{
    struct timespec ts;
    int stop;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&state_lock);
    while (!stop_requested && !s->stop &&
           pthread_cond_timedwait(&state_cond, &state_lock, &ts) == 0)
        ;
    stop = stop_requested || s->stop;
    pthread_mutex_unlock(&state_lock);
    return stop;
}

int main(int argc, char **argv)
{
    pthread_condattr_t ca;
    int exit_code = 0, cluster_was;

    tunnel_global_init();
    {
        /* SIGHUP (reload) is taken by the signal thread only. */
        sigset_t hup;
        sigemptyset(&hup);
        sigaddset(&hup, SIGHUP);
        pthread_sigmask(SIG_BLOCK, &hup, NULL);
    }
    log_init_journal();
    json_object_seed(0);
    /* Thousands of short-lived relay threads would otherwise spread their
     * small allocations over many malloc arenas that never shrink. */
    mallopt(M_ARENA_MAX, 4);
    if (allow_init(&cfg.allow) != 0)
        return 1;
    main_argc = argc;
    main_argv = argv;
    {
        char err[CONFIG_PATH_MAX + 400];
        if (private_parse_args(&cfg, argc, argv, 0, err, sizeof(err)) != 0) {
            fprintf(stderr, "proxy_private: %s\n", err);
            allow_free(&cfg.allow);
            return 2;
        }
    }
    if (cfg.log_level >= 0)
        log_set_level((enum log_level)cfg.log_level);
    max_conns_now = cfg.max_conns;
    udp_set_private(udp_connect_allowed, NULL, cfg.max_conns);
    tunnel_set_retain_budget((size_t)cfg.resume_memory << 20);
    {
        char keep[sizeof(cfg.allow_text)];
        memcpy(keep, cfg.allow_text, sizeof(keep));
        if (private_allow_install(&cfg) != 0) /* empties cfg.allow */
            return 1;
        memcpy(cfg.allow_text, keep, sizeof(keep));
    }
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&state_cond, &ca);
    pthread_condattr_destroy(&ca);
    srand((unsigned)(mono_ms() ^ (uint64_t)getpid()));
    net_raise_fd_limit();
    if (!cfg.plaintext) {
        char err[256];
        cfg.tls = tls_client_ctx(err, sizeof(err));
        if (!cfg.tls) {
            fprintf(stderr, "proxy_private: %s\n", err);
            return 1;
        }
    }
    snprintf(main_sess.host, sizeof(main_sess.host), "%s", cfg.host);
    main_sess.port = cfg.port;
    net_hostport_str(cfg.host, cfg.port, main_sess.hp, sizeof(main_sess.hp));
    if (thread_spawn(signal_main, NULL) != 0) {
        fprintf(stderr, "proxy_private: cannot start the signal thread\n");
        return 1;
    }
    log_info("ev=start version=%s public=%s name=%s apps=%d", PROXY_VERSION, main_sess.hp,
             cfg.name, cfg.napps);
    /* Ready as soon as it runs: the tunnel comes and goes by itself. */
    sd_notify_state("READY=1");
    exit_code = session_loop(&main_sess);
    /* Its end ends the node sessions too (cluster_main joins them). */
    pthread_mutex_lock(&state_lock);
    if (!stop_requested)
        exit_code = exit_code ? exit_code : 1;
    stop_requested = 1;
    cluster_gen++;
    pthread_cond_broadcast(&state_cond);
    cluster_was = cluster_started;
    pthread_mutex_unlock(&state_lock);
    if (cluster_was)
        pthread_join(cluster_tid, NULL);
    SSL_CTX_free(cfg.tls);
    allow_free(&cfg.allow);
    private_allow_release();
    config_free(&cfg.conf);
    log_sum_flush(1);
    log_info("ev=exit code=%d", exit_code);
    return exit_code;
}

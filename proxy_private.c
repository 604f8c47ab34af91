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


/* Connections turned down by --max-conns: counted, and logged at most once
 * per REFUSED_LOG_EVERY_MS (the reader thread only). */
static uint64_t refused_total, refused_logged, refused_log_ms;

/* Shutdown: the signal thread sets stop and kills the current tunnel. */
static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t state_cond;
static int stop_requested;
static struct tunnel *current;


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
/* HOST:TUNNEL_PORT for logs, an IPv6 HOST in brackets (set at start). */
static char public_hp[PKT_HOST_MAX + 16];

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

/* An APPS request for the apps that changed on a reload (old before, now
 * after), with the allowlist in force, on the running tunnel when the public
 * side speaks version 4; sent also with no app changed when allow_changed.
 * 1 sent, 0 nothing to send, -1 not sent (no tunnel up, or an older public
 * side: then the next HELLO carries the apps). */
int private_push_apps(const struct app_req *old, int nold, const struct app_req *now, int nnow,
                      int allow_changed)
{
    json_t *unreg = json_array(), *reg = json_array();
    struct tunnel *t;
    int rc = -1;

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
    pthread_mutex_lock(&state_lock);
    t = current;
    if (t)
        tunnel_ref(t);
    pthread_mutex_unlock(&state_lock);
    if (t && !tunnel_is_dead(t) && tunnel_version(t) >= PKT_PROTO_APPS) {
        /* packet() takes both arrays, whatever becomes of the send. */
        json_t *op = packet(OP_APPS, "{s:o,s:o,s:o*}", "unregister", unreg, "register", reg,
                            "allow", allow_member());
        unreg = reg = NULL;
        if (tunnel_send(t, op, NULL, 0) == 0)
            rc = 1;
    }
    json_decref(unreg);
    json_decref(reg);
    if (t)
        tunnel_unref(t);
    return rc;
}

/* What the public side sends on the tunnel beyond the relay's own. */
static int on_public_op(struct tunnel *t, struct pkt *p, void *arg)
{
    if (p->op == OP_APPS_RESULT) {
        log_info("ev=apps_applied results=%zu", json_array_size(json_object_get(p->json, "apps")));
        log_app_results(json_object_get(p->json, "apps"));
        return 0;
    }
    return on_build_connection(t, p, arg);
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
    if (tunnel_conn_count(t) >= max_conns_now) {
        uint64_t now = mono_ms();
        conn_refuse(t, p->conn, "too many connections at home (proxy_private --max-conns)");
        refused_total++;
        if (refused_logged == 0 || now - refused_log_ms >= REFUSED_LOG_EVERY_MS) {
            log_warn("ev=conn_refused reason=\"too many connections (--max-conns %u)\" "
                     "refused=%llu refused_total=%llu",
                     (unsigned)max_conns_now, (unsigned long long)(refused_total - refused_logged),
                     (unsigned long long)refused_total);
            refused_logged = refused_total;
            refused_log_ms = now;
        }
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

/* TLS handshake and pinning check before anything secret is sent. On success
 * *out holds the SSL object; on failure it stays NULL and the result says
 * whether retrying can help. */
static enum session_end tls_connect(int fd, uint64_t deadline, SSL **out)
{
    char fp[TLS_FP_LEN], old[TLS_FP_LEN], err[300], hostport[300];
    SSL *ssl = SSL_new(cfg.tls);
    struct diag_peek peek = {0};
    int r;

    *out = NULL;
    if (ssl)
        diag_tls_watch(ssl, &peek);
    if (!ssl || tls_handshake(ssl, fd, 0, deadline, err, sizeof(err)) != 0) {
        log_warn("ev=handshake_failed public=%s err=\"TLS: %s\" hint=\"%s\"", public_hp,
                 ssl ? err : "out of memory", diag_tls_client_hint(&peek, err));
        SSL_free(ssl);
        return SESSION_RETRY;
    }
    if (tls_peer_fingerprint(ssl, fp) != 0) {
        log_error("ev=refused public=%s err=\"the public side sent no certificate\"", public_hp);
        SSL_free(ssl);
        return SESSION_RETRY;
    }
    if (cfg.fingerprint[0]) {
        if (strcmp(fp, cfg.fingerprint) != 0) {
            log_error("ev=fingerprint_mismatch public=%s expected=%s got=%s "
                      "msg=\"REFUSING: the public side's certificate is not the one given with "
                      "--fingerprint; someone may be intercepting the tunnel\"",
                      public_hp, cfg.fingerprint, fp);
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
    *out = ssl;
    return SESSION_RETRY;
}

static int wait_or_stop(unsigned ms);

/* One handshake: dial, TLS, HELLO (asking to resume session `resume` when
 * not NULL), WELCOME. On success *out is a tunnel on the new link and *welcome
 * its WELCOME (pkt_clear it); SESSION_WAS_UP. Otherwise the result says
 * whether retrying can help. dial_ms bounds the dial (resumes retry often). */
static enum session_end handshake(struct tunnel *resume, int dial_ms, struct tunnel **out,
                                  struct pkt *welcome)
{
    char err[192] = "", addr[64];
    struct tunnel *t = NULL;
    enum session_end result = SESSION_RETRY;
    SSL *ssl = NULL;
    json_t *hello;
    uint64_t deadline;
    int fd, r, napps = 0;

    *out = NULL;
    fd = net_dial(cfg.host, cfg.port, dial_ms, err, sizeof(err));
    /* TLS and WELCOME: one deadline from here. */
    deadline = mono_ms() + HANDSHAKE_TIMEOUT_MS;
    if (fd < 0) {
        log_warn("ev=dial_failed public=%s err=\"%s\"%s", public_hp, err,
                 resume ? " resume=trying" : "");
        return SESSION_RETRY;
    }
    net_peer_str(fd, addr, sizeof(addr));
    if (!cfg.plaintext) {
        result = tls_connect(fd, deadline, &ssl);
        if (!ssl) {
            close(fd);
            return result;
        }
    }
    t = tunnel_new(fd, ssl, cfg.name, addr, 0);
    if (!t) {
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
    *out = t;
    return SESSION_WAS_UP;
fail:
    pkt_clear(welcome);
    tunnel_kill(t, "handshake failed");
    tunnel_unref(t);
    return result;
}

/* WELCOME w set up t: version, window, session; the apps' results logged. */
static int take_welcome(struct tunnel *t, struct pkt *w)
{
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
    return 0;
}

static void set_current(struct tunnel *t)
{
    pthread_mutex_lock(&state_lock);
    current = t;
    if (t && stop_requested)
        tunnel_kill(t, "shutting down");
    pthread_mutex_unlock(&state_lock);
}

static int stopping(void)
{
    int s;

    pthread_mutex_lock(&state_lock);
    s = stop_requested;
    pthread_mutex_unlock(&state_lock);
    return s;
}

/* The link of session t broke: come back with it within its grace period.
 * 1 when resumed on a new link; 0 when the session is over (t killed): then
 * *fresh may hold a new session the public side started instead. */
static int resume_session(struct tunnel *t, struct tunnel **fresh, enum session_end *result)
{
    uint64_t deadline = tunnel_grace_deadline(t);
    unsigned attempt = 0;

    *fresh = NULL;
    while (!stopping() && !tunnel_is_dead(t) && mono_ms() < deadline) {
        struct tunnel *link = NULL;
        struct pkt w = {0};
        uint64_t left = deadline - mono_ms();
        enum session_end r = handshake(t, left < RESUME_DIAL_MS ? (int)left : RESUME_DIAL_MS,
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
            take_welcome(link, &w);
            pkt_clear(&w);
            *fresh = link;
            break;
        }
        attempt++;
        if (wait_or_stop(attempt < 3 ? 200 : 1000))
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

static enum session_end run_session(void)
{
    char err[192] = "", addr[64];
    struct tunnel *t = NULL, *fresh = NULL;
    struct pkt w = {0};
    enum session_end result;
    uint64_t up_since;

    result = handshake(NULL, HANDSHAKE_TIMEOUT_MS, &t, &w);
    if (!t)
        return result;
    take_welcome(t, &w);
    pkt_clear(&w);
    for (;;) {
        /* (A fresh session that a resume attempt got has its WELCOME taken.) */
        set_current(t);
        result = SESSION_WAS_UP;
        if (tunnel_start_heartbeat(t) != 0) {
            log_error("ev=thread_failed what=heartbeat");
            break;
        }
        log_info("ev=tunnel_up public=%s name=%s apps=%d tls=%s version=%d resume_grace_s=%u",
                 tunnel_addr(t, addr, sizeof(addr)), cfg.name, apps_count(), tunnel_tls_mode(t),
                 tunnel_version(t), tunnel_grace_s(t));
        up_since = mono_ms();
        while (tunnel_run(t, on_public_op, NULL, err, sizeof(err)) == TUNNEL_SUSPENDED &&
               !stopping()) {
            log_warn("ev=tunnel_link_down public=%s reason=\"%s\" resume=trying grace_s=%u",
                     tunnel_addr(t, addr, sizeof(addr)), err, tunnel_grace_s(t));
            if (!resume_session(t, &fresh, &result))
                break;
        }
        log_warn("ev=tunnel_down public=%s reason=\"%s\"", tunnel_addr(t, addr, sizeof(addr)),
                 err);
        if (strcmp(tunnel_peer_error(t), "kicked") == 0 ||
            strcmp(tunnel_peer_error(t), "token_revoked") == 0) {
            log_error("ev=disconnected_by_admin name=%s code=%s", cfg.name, tunnel_peer_error(t));
        } else if (strcmp(tunnel_peer_error(t), "replaced") == 0) {
            log_error("ev=replaced name=%s msg=\"another proxy_private with the same name "
                      "connected to the public side; give each one its own --name\"",
                      cfg.name);
            result = SESSION_REPLACED;
        } else if (result != SESSION_FATAL && mono_ms() - up_since < STABLE_AFTER_MS) {
            result = SESSION_RETRY; /* up only briefly: keep backing off */
        }
        set_current(NULL);
        session_done(t);
        t = fresh;
        fresh = NULL;
        if (!t)
            break;
    }
    if (t) {
        set_current(NULL);
        session_done(t);
    }
    return result;
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
    if (current)
        tunnel_kill(current, "shutting down");
    pthread_cond_broadcast(&state_cond);
    pthread_mutex_unlock(&state_lock);
    return NULL;
}

/* Sleep up to ms unless a stop is requested; returns 1 when stopping. */
static int wait_or_stop(unsigned ms)
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
    while (!stop_requested && pthread_cond_timedwait(&state_cond, &state_lock, &ts) == 0)
        ;
    stop = stop_requested;
    pthread_mutex_unlock(&state_lock);
    return stop;
}

int main(int argc, char **argv)
{
    pthread_condattr_t ca;
    unsigned backoff = BACKOFF_MIN_MS;
    int exit_code = 0, stopping_now;

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
    if (thread_spawn(signal_main, NULL) != 0) {
        fprintf(stderr, "proxy_private: cannot start the signal thread\n");
        return 1;
    }
    net_hostport_str(cfg.host, cfg.port, public_hp, sizeof(public_hp));
    log_info("ev=start version=%s public=%s name=%s apps=%d", PROXY_VERSION, public_hp,
             cfg.name, cfg.napps);
    /* Ready as soon as it runs: the tunnel comes and goes by itself. */
    sd_notify_state("READY=1");
    for (;;) {
        unsigned delay;
        enum session_end r = run_session();
        if (r == SESSION_FATAL) {
            exit_code = 3;
            break;
        }
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
        pthread_mutex_lock(&state_lock);
        stopping_now = stop_requested;
        pthread_mutex_unlock(&state_lock);
        if (stopping_now)
            break; /* SIGTERM ended the session: no reconnecting line */
        log_info("ev=reconnecting after_ms=%u", delay);
        if (wait_or_stop(delay))
            break;
        backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
    }
    pthread_mutex_lock(&state_lock);
    if (!stop_requested)
        exit_code = exit_code ? exit_code : 1;
    pthread_mutex_unlock(&state_lock);
    SSL_CTX_free(cfg.tls);
    allow_free(&cfg.allow);
    private_allow_release();
    config_free(&cfg.conf);
    log_sum_flush(1);
    log_info("ev=exit code=%d", exit_code);
    return exit_code;
}

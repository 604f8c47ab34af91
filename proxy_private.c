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

#include "allow.h"
#include "log.h"
#include "netio.h"
#include "packet.h"
#include "tls.h"
#include "tunnel.h"

#define MAX_REGISTER PKT_MAX_APPS
#define HANDSHAKE_TIMEOUT_MS 10000
#define BACKOFF_MIN_MS 1000
#define BACKOFF_MAX_MS 30000
#define STABLE_AFTER_MS 30000   /* a tunnel up this long resets the backoff */

struct app_req {
    char name[PKT_NAME_MAX + 1];
    int public_port;
    char host[PKT_HOST_MAX + 1];
    int target_port;
};

static struct {
    const char *host;
    int port;
    const char *token;
    char name[PKT_NAME_MAX + 1];
    struct app_req apps[MAX_REGISTER];
    int napps;
    int plaintext;
    struct allowlist allow;
    int nallow;                    /* --allow options given */
    char fingerprint[TLS_FP_LEN];  /* pinned; empty: trust on first use */
    char known_hosts[4096];
    SSL_CTX *tls;
} cfg;

/* Shutdown: the signal thread sets stop and kills the current tunnel. */
static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t state_cond;
static int stop_requested;
static struct tunnel *current;

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: proxy_private HOST TUNNEL_PORT [options]\n"
            "Dial proxy_public at HOST:TUNNEL_PORT and carry its clients to apps here.\n"
            "\n"
            "Options:\n"
            "  --token TOKEN        shared secret printed by proxy_public (or env NAT_TOKEN)\n"
            "  --name NAME          name of this private proxy (default: the host name)\n"
            "  --register NAME:PUBLIC_PORT:TARGET_HOST:TARGET_PORT\n"
            "                       ask the public side to open PUBLIC_PORT for the app at\n"
            "                       TARGET_HOST:TARGET_PORT (repeatable, re-sent on reconnect)\n"
            "  --allow RULE         targets the public side may ask us to dial: HOST:PORT,\n"
            "                       CIDR:PORT[-PORT] (e.g. 192.168.1.0/24:1-65535) or\n"
            "                       'any' (repeatable). Default: loopback and the\n"
            "                       --register targets only\n"
            "  --fingerprint SHA256 pin the public side's certificate (printed by\n"
            "                       proxy_public); without it the first one seen is\n"
            "                       remembered in the known-hosts file and must not change\n"
            "  --known-hosts FILE   where first-use fingerprints are kept\n"
            "                       (default: ~/.config/proxy_private/known_hosts)\n"
            "  --insecure-plaintext no TLS (trusted networks, benchmarks); the public side\n"
            "                       must run with --insecure-plaintext too\n"
            "  --log-level LEVEL    debug, info (default), warn or error\n"
            "  --help               show this help\n"
            "  --version            show the version\n");
}

/* NAME:PUBLIC_PORT:TARGET_HOST:TARGET_PORT; the host may hold colons (IPv6),
 * optionally in brackets, so the last colon ends it. */
static int parse_register(const char *arg, struct app_req *r)
{
    char buf[512];
    char *p1, *p2, *last, *host;

    if (strlen(arg) >= sizeof(buf))
        return -1;
    memcpy(buf, arg, strlen(arg) + 1);
    p1 = strchr(buf, ':');
    if (!p1)
        return -1;
    *p1++ = '\0';
    p2 = strchr(p1, ':');
    if (!p2)
        return -1;
    *p2++ = '\0';
    last = strrchr(p2, ':');
    if (!last)
        return -1;
    *last++ = '\0';
    host = p2;
    if (host[0] == '[' && host[strlen(host) - 1] == ']') {
        host[strlen(host) - 1] = '\0';
        host++;
    }
    if (!pkt_valid_name(buf) || !pkt_valid_host(host) || net_parse_port(p1, &r->public_port) != 0 ||
        net_parse_port(last, &r->target_port) != 0)
        return -1;
    snprintf(r->name, sizeof(r->name), "%.64s", buf);
    snprintf(r->host, sizeof(r->host), "%.253s", host);
    return 0;
}

static void default_name(char *out, size_t cap)
{
    char host[256] = "";
    size_t j = 0;

    if (gethostname(host, sizeof(host) - 1) != 0)
        host[0] = '\0';
    for (size_t i = 0; host[i] && j + 1 < cap && j < PKT_NAME_MAX; i++) {
        char c = host[i];
        out[j++] = pkt_valid_name((char[]){c, '\0'}) ? c : '-';
    }
    out[j] = '\0';
    if (!pkt_valid_name(out))
        snprintf(out, cap, "home");
}

static int parse_args(int argc, char **argv)
{
    int pos = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        } else if (strcmp(a, "--version") == 0) {
            printf("proxy_private %s (protocol %d)\n", PROXY_VERSION, PKT_PROTO_VERSION);
            exit(0);
        } else if (strcmp(a, "--insecure-plaintext") == 0) {
            cfg.plaintext = 1;
        } else if (strncmp(a, "--", 2) == 0) {
            const char *v = i + 1 < argc ? argv[i + 1] : NULL;
            if (!v) {
                fprintf(stderr, "proxy_private: option %s needs a value\n", a);
                return -1;
            }
            i++;
            if (strcmp(a, "--token") == 0) {
                cfg.token = v;
            } else if (strcmp(a, "--fingerprint") == 0) {
                if (tls_normalize_fingerprint(v, cfg.fingerprint) != 0) {
                    fprintf(stderr, "proxy_private: --fingerprint '%s' is not a SHA-256 fingerprint "
                                    "(64 hex digits, colons allowed)\n", v);
                    return -1;
                }
            } else if (strcmp(a, "--allow") == 0) {
                char err[200];
                if (allow_add(&cfg.allow, v, err, sizeof(err)) != 0) {
                    fprintf(stderr, "proxy_private: %s\n", err);
                    return -1;
                }
                cfg.nallow++;
            } else if (strcmp(a, "--known-hosts") == 0) {
                snprintf(cfg.known_hosts, sizeof(cfg.known_hosts), "%s", v);
            } else if (strcmp(a, "--name") == 0) {
                if (!pkt_valid_name(v)) {
                    fprintf(stderr, "proxy_private: --name '%s' must match [A-Za-z0-9._-]{1,64}\n", v);
                    return -1;
                }
                snprintf(cfg.name, sizeof(cfg.name), "%.64s", v);
            } else if (strcmp(a, "--register") == 0) {
                if (cfg.napps >= MAX_REGISTER) {
                    fprintf(stderr, "proxy_private: at most %d --register options\n", MAX_REGISTER);
                    return -1;
                }
                if (parse_register(v, &cfg.apps[cfg.napps]) != 0) {
                    fprintf(stderr,
                            "proxy_private: --register '%s' is not NAME:PUBLIC_PORT:TARGET_HOST:TARGET_PORT\n",
                            v);
                    return -1;
                }
                cfg.napps++;
            } else if (strcmp(a, "--log-level") == 0) {
                int lvl = log_parse_level(v);
                if (lvl < 0) {
                    fprintf(stderr, "proxy_private: --log-level '%s' is not debug, info, warn or error\n", v);
                    return -1;
                }
                log_set_level((enum log_level)lvl);
            } else {
                fprintf(stderr, "proxy_private: unknown option '%s' (see --help)\n", a);
                return -1;
            }
        } else if (pos == 0) {
            cfg.host = a;
            pos++;
        } else if (pos == 1) {
            if (net_parse_port(a, &cfg.port) != 0) {
                fprintf(stderr, "proxy_private: TUNNEL_PORT '%s' is not a port number (1-65535)\n", a);
                return -1;
            }
            pos++;
        } else {
            fprintf(stderr, "proxy_private: unexpected argument '%s' (see --help)\n", a);
            return -1;
        }
    }
    if (pos < 2) {
        fprintf(stderr, "proxy_private: missing %s (see --help)\n", pos == 0 ? "HOST" : "TUNNEL_PORT");
        return -1;
    }
    if (!cfg.token)
        cfg.token = getenv("NAT_TOKEN");
    if (!cfg.token || !*cfg.token) {
        fprintf(stderr, "proxy_private: no token: pass --token TOKEN or set NAT_TOKEN "
                        "(proxy_public prints it when it starts)\n");
        return -1;
    }
    if (strlen(cfg.token) > PKT_TOKEN_MAX) {
        fprintf(stderr, "proxy_private: --token is longer than %d bytes\n", PKT_TOKEN_MAX);
        return -1;
    }
    if (!cfg.name[0])
        default_name(cfg.name, sizeof(cfg.name));
    /* Default allowlist: what this machine offered itself, and loopback. */
    if (cfg.nallow == 0)
        allow_add_loopback(&cfg.allow);
    for (int i = 0; i < cfg.napps; i++)
        allow_add_target(&cfg.allow, cfg.apps[i].host, cfg.apps[i].target_port);
    if (!cfg.known_hosts[0]) {
        const char *home = getenv("HOME");
        snprintf(cfg.known_hosts, sizeof(cfg.known_hosts), "%s/.config/proxy_private/known_hosts",
                 home && *home ? home : ".");
    }
    return 0;
}

static json_t *hello_packet(void)
{
    json_t *apps = json_array();

    for (int i = 0; apps && i < cfg.napps; i++)
        json_array_append_new(apps, json_pack("{s:s,s:i,s:s,s:i}", "name", cfg.apps[i].name,
                                              "public_port", cfg.apps[i].public_port,
                                              "target_host", cfg.apps[i].host, "target_port",
                                              cfg.apps[i].target_port));
    return packet(OP_HELLO, "{s:i,s:s,s:s,s:i,s:o*}", "version", PKT_PROTO_VERSION, "token",
                  cfg.token, "name", cfg.name, "window", PKT_WINDOW_DEFAULT, "apps", apps);
}

static int dial_allowed(const char *host, int port, int timeout_ms, char *err, size_t errlen,
                        void *arg)
{
    return allow_dial(arg, host, port, timeout_ms, err, errlen);
}

static int on_build_connection(struct tunnel *t, struct pkt *p, void *arg)
{
    const char *host = json_string_value(json_object_get(p->json, "target_host"));
    int port = (int)json_integer_value(json_object_get(p->json, "target_port"));

    (void)arg;
    if (conn_start_private(t, p->conn, host, port, dial_allowed, &cfg.allow) == -2) {
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
static enum session_end tls_connect(int fd, SSL **out)
{
    char fp[TLS_FP_LEN], old[TLS_FP_LEN], err[300], hostport[300];
    SSL *ssl = SSL_new(cfg.tls);
    int r;

    *out = NULL;
    if (!ssl || tls_handshake(ssl, fd, 0, HANDSHAKE_TIMEOUT_MS, err, sizeof(err)) != 0) {
        log_warn("ev=handshake_failed public=%s:%d err=\"TLS: %s\" hint=\"does the public side run "
                 "with --insecure-plaintext? then both sides need it\"",
                 cfg.host, cfg.port, ssl ? err : "out of memory");
        SSL_free(ssl);
        return SESSION_RETRY;
    }
    if (tls_peer_fingerprint(ssl, fp) != 0) {
        log_error("ev=refused public=%s:%d err=\"the public side sent no certificate\"", cfg.host,
                  cfg.port);
        SSL_free(ssl);
        return SESSION_RETRY;
    }
    if (cfg.fingerprint[0]) {
        if (strcmp(fp, cfg.fingerprint) != 0) {
            log_error("ev=fingerprint_mismatch public=%s:%d expected=%s got=%s "
                      "msg=\"REFUSING: the public side's certificate is not the one given with "
                      "--fingerprint; someone may be intercepting the tunnel\"",
                      cfg.host, cfg.port, cfg.fingerprint, fp);
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

static enum session_end run_session(void)
{
    char err[192] = "", addr[64];
    struct tunnel *t = NULL;
    struct pkt p = {0};
    enum session_end result = SESSION_RETRY;
    SSL *ssl = NULL;
    uint64_t up_since;
    int fd, r;

    fd = net_dial(cfg.host, cfg.port, HANDSHAKE_TIMEOUT_MS, err, sizeof(err));
    if (fd < 0) {
        log_warn("ev=dial_failed public=%s:%d err=\"%s\"", cfg.host, cfg.port, err);
        return SESSION_RETRY;
    }
    net_peer_str(fd, addr, sizeof(addr));
    if (!cfg.plaintext) {
        result = tls_connect(fd, &ssl);
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
    pthread_mutex_lock(&state_lock);
    if (stop_requested) {
        pthread_mutex_unlock(&state_lock);
        goto out;
    }
    current = t;
    pthread_mutex_unlock(&state_lock);

    if (tunnel_send(t, hello_packet(), NULL, 0) != 0) {
        log_warn("ev=handshake_failed public=%s err=\"could not send HELLO\"", addr);
        goto out;
    }
    r = tunnel_read_handshake(t, &p, HANDSHAKE_TIMEOUT_MS, err, sizeof(err));
    if (r <= 0) {
        log_warn("ev=handshake_failed public=%s err=\"%s\"", addr, err);
        goto out;
    }
    if (p.op == OP_ERROR) {
        char code[64], msg[200];
        log_escape(json_string_value(json_object_get(p.json, "code")), code, sizeof(code));
        log_escape(json_string_value(json_object_get(p.json, "message")), msg, sizeof(msg));
        if (strcmp(code, "bad_token") == 0 || strcmp(code, "bad_version") == 0) {
            log_error("ev=refused public=%s code=%s msg=\"%s\" hint=\"%s\"", addr, code, msg,
                      strcmp(code, "bad_token") == 0
                          ? "the token is wrong: use the one proxy_public printed"
                          : "upgrade so both sides speak the same protocol version");
            result = SESSION_FATAL;
        } else {
            log_warn("ev=refused public=%s code=%s msg=\"%s\"", addr, code, msg);
        }
        goto out;
    }
    if (p.op != OP_WELCOME) {
        log_warn("ev=handshake_failed public=%s err=\"expected WELCOME, got %s\"", addr, op_name(p.op));
        goto out;
    }
    if (json_integer_value(json_object_get(p.json, "version")) != PKT_PROTO_VERSION) {
        log_error("ev=refused public=%s err=\"public side speaks protocol %lld, we speak %d\"", addr,
                  (long long)json_integer_value(json_object_get(p.json, "version")), PKT_PROTO_VERSION);
        result = SESSION_FATAL;
        goto out;
    }
    tunnel_set_peer_window(t, (uint32_t)json_integer_value(json_object_get(p.json, "window")));
    {
        size_t i;
        json_t *res;
        json_array_foreach(json_object_get(p.json, "apps"), i, res) {
            const char *name = json_string_value(json_object_get(res, "name"));
            char esc[200];
            if (json_is_true(json_object_get(res, "ok")))
                log_info("ev=app_registered app=%s", name);
            else
                log_error("ev=app_refused app=%s err=\"%s\"", name,
                          log_escape(json_string_value(json_object_get(res, "error")), esc, sizeof(esc)));
        }
    }
    pkt_clear(&p);
    result = SESSION_WAS_UP;
    if (tunnel_start_heartbeat(t) != 0) {
        log_error("ev=thread_failed what=heartbeat");
        goto out;
    }
    log_info("ev=tunnel_up public=%s name=%s apps=%d", addr, cfg.name, cfg.napps);
    up_since = mono_ms();
    tunnel_run(t, on_build_connection, NULL, err, sizeof(err));
    log_warn("ev=tunnel_down public=%s reason=\"%s\"", addr, err);
    if (strcmp(tunnel_peer_error(t), "replaced") == 0) {
        log_error("ev=replaced name=%s msg=\"another proxy_private with the same name connected "
                  "to the public side; give each one its own --name\"",
                  cfg.name);
        result = SESSION_REPLACED;
    } else if (mono_ms() - up_since < STABLE_AFTER_MS) {
        result = SESSION_RETRY; /* up only briefly: keep backing off */
    }
out:
    pkt_clear(&p);
    tunnel_kill(t, "session over");
    pthread_mutex_lock(&state_lock);
    current = NULL;
    pthread_mutex_unlock(&state_lock);
    if (tunnel_wait_idle(t, 5000) != 0)
        log_warn("ev=slow_shutdown what=\"connections still closing\"");
    tunnel_unref(t);
    return result;
}

static void *signal_main(void *arg)
{
    sigset_t set;
    int sig = 0;

    (void)arg;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    while (sigwait(&set, &sig) != 0)
        ;
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
    int exit_code = 0;

    tunnel_global_init();
    json_object_seed(0);
    /* Thousands of short-lived relay threads would otherwise spread their
     * small allocations over many malloc arenas that never shrink. */
    mallopt(M_ARENA_MAX, 4);
    if (allow_init(&cfg.allow) != 0)
        return 1;
    if (parse_args(argc, argv) != 0) {
        allow_free(&cfg.allow);
        return 2;
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
    log_info("ev=start version=%s public=%s:%d name=%s apps=%d", PROXY_VERSION, cfg.host, cfg.port,
             cfg.name, cfg.napps);
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
    log_info("ev=exit code=%d", exit_code);
    return exit_code;
}

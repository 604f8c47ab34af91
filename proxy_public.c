/* proxy_public - the side with a public address. Accepts tunnels from private
 * proxies on TUNNEL_PORT, listens on each registered app's public port, and
 * serves the HTTP API and page on WEB_PORT. */

#include <errno.h>
#include <malloc.h>
#include <ifaddrs.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "netio.h"
#include "packet.h"
#include "ratelimit.h"
#include "registry.h"
#include "state.h"
#include "tls.h"
#include "tunnel.h"
#include "web_api.h"

#define HANDSHAKE_TIMEOUT_MS 10000
#define MAX_TUNNEL_THREADS 1024

static struct {
    int tunnel_port, web_port;
    const char *bind_addr;
    const char *token_arg;
    const char *state_dir;
    const char *cert_file, *key_file;
    int plaintext;
    int web_https;
    char *token;
    SSL_CTX *tls;
    char fingerprint[TLS_FP_LEN];
    struct registry_limits limits;
} cfg = {.state_dir = "proxy_state",
         .limits = {.max_conns = 20000, .max_conns_per_app = 10000, .max_conns_per_private = 10000}};

static _Atomic int stopping;
static _Atomic int tunnel_threads;
static int tunnel_listen_fd = -1;

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: proxy_public TUNNEL_PORT WEB_PORT [options]\n"
            "Accept tunnels from proxy_private on TUNNEL_PORT, serve the API and page on\n"
            "WEB_PORT, and open each registered app's public port to the internet.\n"
            "\n"
            "Options:\n"
            "  --bind ADDR          listen on this IPv4 address only (default: all)\n"
            "  --token TOKEN        shared secret (or env NAT_TOKEN; default: generated\n"
            "                       once and kept in STATE_DIR/token)\n"
            "  --state-dir DIR      where registrations, the token and the TLS key live\n"
            "                       (default: ./proxy_state)\n"
            "  --cert FILE --key FILE\n"
            "                       TLS certificate (PEM, chain allowed) and key to use\n"
            "                       instead of the self-signed pair made in STATE_DIR\n"
            "  --max-conns N        connections relayed at once, all apps (default 20000)\n"
            "  --max-conns-per-app N            per app (default 10000)\n"
            "  --max-conns-per-private N        per private proxy (default 10000)\n"
            "  --web-https          serve the web port over HTTPS with the same certificate\n"
            "  --insecure-plaintext no TLS on the tunnel (trusted networks, benchmarks);\n"
            "                       proxy_private must say --insecure-plaintext too\n"
            "  --log-level LEVEL    debug, info (default), warn or error\n"
            "  --help               show this help\n"
            "  --version            show the version\n"
            "\n"
            "HTTP API (Authorization: Bearer TOKEN): POST /register, POST /unregister,\n"
            "GET /list, GET /metrics; the page is at GET /. See docs/API.md.\n");
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
            printf("proxy_public %s (protocol %d)\n", PROXY_VERSION, PKT_PROTO_VERSION);
            exit(0);
        } else if (strcmp(a, "--insecure-plaintext") == 0) {
            cfg.plaintext = 1;
        } else if (strcmp(a, "--web-https") == 0) {
            cfg.web_https = 1;
        } else if (strncmp(a, "--", 2) == 0) {
            const char *v = i + 1 < argc ? argv[i + 1] : NULL;
            if (!v) {
                fprintf(stderr, "proxy_public: option %s needs a value\n", a);
                return -1;
            }
            i++;
            if (strcmp(a, "--bind") == 0) {
                struct in_addr ia;
                if (inet_pton(AF_INET, v, &ia) != 1) {
                    fprintf(stderr, "proxy_public: --bind '%s' is not an IPv4 address\n", v);
                    return -1;
                }
                cfg.bind_addr = v;
            } else if (strcmp(a, "--token") == 0) {
                cfg.token_arg = v;
            } else if (strcmp(a, "--max-conns") == 0 || strcmp(a, "--max-conns-per-app") == 0 ||
                       strcmp(a, "--max-conns-per-private") == 0) {
                char *end;
                long n;
                errno = 0;
                n = strtol(v, &end, 10);
                if (errno || end == v || *end || n < 1 || n > 1000000) {
                    fprintf(stderr, "proxy_public: %s '%s' is not a number from 1 to 1000000\n", a, v);
                    return -1;
                }
                if (strcmp(a, "--max-conns") == 0)
                    cfg.limits.max_conns = (unsigned)n;
                else if (strcmp(a, "--max-conns-per-app") == 0)
                    cfg.limits.max_conns_per_app = (unsigned)n;
                else
                    cfg.limits.max_conns_per_private = (unsigned)n;
            } else if (strcmp(a, "--cert") == 0) {
                cfg.cert_file = v;
            } else if (strcmp(a, "--key") == 0) {
                cfg.key_file = v;
            } else if (strcmp(a, "--state-dir") == 0) {
                cfg.state_dir = v;
            } else if (strcmp(a, "--log-level") == 0) {
                int lvl = log_parse_level(v);
                if (lvl < 0) {
                    fprintf(stderr, "proxy_public: --log-level '%s' is not debug, info, warn or error\n", v);
                    return -1;
                }
                log_set_level((enum log_level)lvl);
            } else {
                fprintf(stderr, "proxy_public: unknown option '%s' (see --help)\n", a);
                return -1;
            }
        } else if (pos < 2) {
            if (net_parse_port(a, pos == 0 ? &cfg.tunnel_port : &cfg.web_port) != 0) {
                fprintf(stderr, "proxy_public: %s '%s' is not a port number (1-65535)\n",
                        pos == 0 ? "TUNNEL_PORT" : "WEB_PORT", a);
                return -1;
            }
            pos++;
        } else {
            fprintf(stderr, "proxy_public: unexpected argument '%s' (see --help)\n", a);
            return -1;
        }
    }
    if (pos < 2) {
        fprintf(stderr, "proxy_public: missing %s (see --help)\n", pos == 0 ? "TUNNEL_PORT" : "WEB_PORT");
        return -1;
    }
    if (!cfg.cert_file != !cfg.key_file) {
        fprintf(stderr, "proxy_public: --cert and --key go together\n");
        return -1;
    }
    if (cfg.tunnel_port == cfg.web_port) {
        fprintf(stderr, "proxy_public: TUNNEL_PORT and WEB_PORT must differ\n");
        return -1;
    }
    if (!cfg.token_arg && getenv("NAT_TOKEN") && *getenv("NAT_TOKEN"))
        cfg.token_arg = getenv("NAT_TOKEN");
    if (cfg.token_arg && strlen(cfg.token_arg) > PKT_TOKEN_MAX) {
        fprintf(stderr, "proxy_public: --token is longer than %d bytes\n", PKT_TOKEN_MAX);
        return -1;
    }
    return 0;
}

/* A guess at the address private proxies should dial, for the hint we print. */
static void guess_public_host(char *out, size_t cap)
{
    struct ifaddrs *ifs = NULL;

    snprintf(out, cap, "%s", cfg.bind_addr && strcmp(cfg.bind_addr, "0.0.0.0") != 0
                                 ? cfg.bind_addr : "THIS_SERVER");
    if (cfg.bind_addr && strcmp(cfg.bind_addr, "0.0.0.0") != 0)
        return;
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

/* Register the apps a HELLO asks for; returns the WELCOME results array. */
static json_t *register_hello_apps(json_t *hello, const char *priv)
{
    json_t *results = json_array(), *a;
    size_t i;

    json_array_foreach(json_object_get(hello, "apps"), i, a) {
        struct app_spec spec;
        char err[300];
        int status = registry_spec_from_json(a, &spec, err, sizeof(err)) == 0 ? 0 : 400;
        if (status == 0) {
            snprintf(spec.private_name, sizeof(spec.private_name), "%s", priv);
            status = registry_register(&spec, 1, err, sizeof(err));
        }
        if (status < 300)
            json_array_append_new(results, json_pack("{s:s,s:b}", "name", spec.name, "ok", 1));
        else
            json_array_append_new(results, json_pack("{s:s,s:b,s:s}", "name",
                                                     json_string_value(json_object_get(a, "name")),
                                                     "ok", 0, "error", err));
    }
    return results;
}

/* What the acceptor hands to a tunnel thread. */
struct tunnel_start {
    int fd;
    char addr[64];
};

/* TLS handshake on a fresh tunnel socket; NULL on failure. */
static SSL *tls_accept(int fd, const char *addr)
{
    char err[200];
    SSL *ssl = SSL_new(cfg.tls);

    if (!ssl || tls_handshake(ssl, fd, 1, HANDSHAKE_TIMEOUT_MS, err, sizeof(err)) != 0) {
        char esc[200];
        log_warn("ev=handshake_failed client=%s err=\"TLS: %s\" hint=\"is the private side "
                 "running with --insecure-plaintext, or is this not proxy_private?\"",
                 addr, ssl ? log_escape(err, esc, sizeof(esc)) : "out of memory");
        SSL_free(ssl);
        return NULL;
    }
    return ssl;
}

/* Connections that have not authenticated yet are capped in total and per
 * source address, so strangers cannot take the slots a real private needs. */
#define PREAUTH_MAX 256
#define PREAUTH_PER_ADDR 8

static pthread_mutex_t preauth_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    char ip[RATELIMIT_KEY_LEN];
    unsigned n;
} preauth[PREAUTH_MAX];

static int preauth_enter(const char *ip)
{
    int free_slot = -1, rc = -1;

    pthread_mutex_lock(&preauth_lock);
    for (int i = 0; i < PREAUTH_MAX; i++) {
        if (preauth[i].n && strcmp(preauth[i].ip, ip) == 0) {
            if (preauth[i].n < PREAUTH_PER_ADDR) {
                preauth[i].n++;
                rc = 0;
            }
            goto out;
        }
        if (!preauth[i].n && free_slot < 0)
            free_slot = i;
    }
    if (free_slot >= 0) {
        snprintf(preauth[free_slot].ip, sizeof(preauth[free_slot].ip), "%s", ip);
        preauth[free_slot].n = 1;
        rc = 0;
    }
out:
    pthread_mutex_unlock(&preauth_lock);
    return rc;
}

static void preauth_leave(const char *ip)
{
    pthread_mutex_lock(&preauth_lock);
    for (int i = 0; i < PREAUTH_MAX; i++) {
        if (preauth[i].n && strcmp(preauth[i].ip, ip) == 0) {
            preauth[i].n--;
            break;
        }
    }
    pthread_mutex_unlock(&preauth_lock);
}

static void *tunnel_main(void *arg)
{
    struct tunnel_start *start = arg;
    struct tunnel *t = NULL;
    struct pkt p = {0};
    char err[200] = "", name[PKT_NAME_MAX + 1] = "", addr[64], ip[RATELIMIT_KEY_LEN];
    SSL *ssl = NULL;
    int up = 0, in_preauth = 0;

    pthread_setname_np(pthread_self(), "tunnel");
    snprintf(addr, sizeof(addr), "%s", start->addr);
    ratelimit_key(addr, ip);
    if (preauth_enter(ip) != 0) {
        log_warn("ev=tunnel_refused client=%s reason=\"too many unauthenticated connections\"", addr);
        close(start->fd);
        free(start);
        tunnel_threads--;
        return NULL;
    }
    in_preauth = 1;
    if (!cfg.plaintext && !(ssl = tls_accept(start->fd, addr))) {
        close(start->fd);
        free(start);
        preauth_leave(ip);
        tunnel_threads--;
        return NULL;
    }
    t = tunnel_new(start->fd, ssl, "", addr, 1);
    free(start);
    if (!t) {
        SSL_free(ssl);
        preauth_leave(ip);
        tunnel_threads--;
        return NULL;
    }
    if (tunnel_read_handshake(t, &p, HANDSHAKE_TIMEOUT_MS, err, sizeof(err)) <= 0) {
        log_warn("ev=handshake_failed client=%s err=\"%s\"", addr, err);
        tunnel_fail(t, "protocol", "malformed or missing HELLO");
        goto out;
    }
    if (p.op != OP_HELLO) {
        log_warn("ev=handshake_failed client=%s err=\"expected HELLO, got %s\"", addr, op_name(p.op));
        tunnel_fail(t, "protocol", "expected HELLO first");
        goto out;
    }
    if (json_integer_value(json_object_get(p.json, "version")) != PKT_PROTO_VERSION) {
        log_warn("ev=handshake_failed client=%s err=\"protocol version %lld, we speak %d\"", addr,
                 (long long)json_integer_value(json_object_get(p.json, "version")), PKT_PROTO_VERSION);
        tunnel_fail(t, "bad_version", "unsupported protocol version: this server speaks 1");
        goto out;
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
        if (!web_token_equal(tok, strlen(tok), cfg.token)) {
            ratelimit_fail(ip);
            log_warn("ev=auth_failed client=%s what=tunnel reason=\"wrong token\"", addr);
            tunnel_fail(t, "bad_token", "wrong token");
            goto out;
        }
        ratelimit_success(ip);
        preauth_leave(ip);
        in_preauth = 0;
    }
    snprintf(name, sizeof(name), "%s", json_string_value(json_object_get(p.json, "name")));
    tunnel_set_name(t, name);
    tunnel_set_peer_window(t, (uint32_t)json_integer_value(json_object_get(p.json, "window")));
    /* The private must be known before its apps are registered, but must not
     * be online (reachable by acceptors sending BUILD_CONNECTION) before
     * WELCOME is on the wire: the protocol allows nothing else first. */
    if (registry_private_known(name) != 0) {
        tunnel_fail(t, "too_many_privates", "this server knows too many private proxies");
        goto out;
    }
    if (tunnel_send(t, packet(OP_WELCOME, "{s:i,s:i,s:i,s:o}", "version", PKT_PROTO_VERSION, "window",
                              PKT_WINDOW_DEFAULT, "heartbeat", 5, "apps",
                              register_hello_apps(p.json, name)),
                    NULL, 0) != 0) {
        log_warn("ev=handshake_failed client=%s err=\"could not send WELCOME\"", addr);
        goto out;
    }
    pkt_clear(&p);
    registry_private_up(name, t, addr);
    up = 1;
    if (tunnel_start_heartbeat(t) != 0) {
        log_error("ev=thread_failed what=heartbeat");
        goto out;
    }
    log_info("ev=tunnel_up name=%s client=%s", name, addr);
    tunnel_run(t, NULL, NULL, err, sizeof(err));
    log_warn("ev=tunnel_down name=%s client=%s reason=\"%s\"", name, addr, err);
out:
    if (in_preauth)
        preauth_leave(ip);
    pkt_clear(&p);
    tunnel_kill(t, "tunnel ended");
    if (up)
        registry_private_down(name, t);
    tunnel_wait_idle(t, 5000);
    tunnel_unref(t);
    tunnel_threads--;
    return NULL;
}

static void *tunnel_accept_main(void *arg)
{
    uint64_t last_warn = 0;

    (void)arg;
    while (!stopping) {
        char addr[64];
        struct tunnel_start *start;
        int rc, fd = accept4(tunnel_listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            struct timespec ts = {.tv_nsec = 100 * 1000 * 1000};
            if (stopping)
                break;
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (mono_ms() - last_warn > 1000) {
                log_error("ev=accept_failed what=tunnel err=\"%s\"", strerror(errno));
                last_warn = mono_ms();
            }
            nanosleep(&ts, NULL);
            continue;
        }
        net_peer_str(fd, addr, sizeof(addr));
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
        start->fd = fd;
        snprintf(start->addr, sizeof(start->addr), "%s", addr);
        tunnel_threads++;
        rc = thread_spawn_sized(tunnel_main, start, THREAD_STACK_SIZE_TLS);
        if (rc != 0) {
            tunnel_threads--;
            log_error("ev=thread_failed what=tunnel err=\"%s\"", strerror(rc));
            close(fd);
            free(start);
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    char err[512], host[64];
    sigset_t set;
    int sig = 0, created = 0, rc = 1;
    struct timespec ts = {.tv_nsec = 10 * 1000 * 1000};
    uint64_t deadline;

    tunnel_global_init();
    json_object_seed(0);
    /* Thousands of short-lived relay threads would otherwise spread their
     * small allocations over many malloc arenas that never shrink. */
    mallopt(M_ARENA_MAX, 4);
    if (parse_args(argc, argv) != 0)
        return 2;
    net_raise_fd_limit();
    if (state_ensure_dir(cfg.state_dir, err, sizeof(err)) != 0) {
        fprintf(stderr, "proxy_public: %s\n", err);
        return 1;
    }
    if (cfg.token_arg) {
        cfg.token = strdup(cfg.token_arg);
    } else {
        cfg.token = state_token(cfg.state_dir, &created, err, sizeof(err));
        if (!cfg.token) {
            fprintf(stderr, "proxy_public: %s\n", err);
            return 1;
        }
    }
    if (!cfg.token)
        return 1;
    if (strlen(cfg.token) > PKT_TOKEN_MAX) {
        fprintf(stderr, "proxy_public: the token in %s/token is longer than %d bytes\n",
                cfg.state_dir, PKT_TOKEN_MAX);
        free(cfg.token);
        return 1;
    }
    if (!cfg.plaintext || cfg.web_https) {
        int made = 0;
        cfg.tls = tls_server_ctx(cfg.state_dir, cfg.cert_file, cfg.key_file, cfg.fingerprint, &made,
                                 err, sizeof(err));
        if (!cfg.tls) {
            fprintf(stderr, "proxy_public: %s\n", err);
            goto out;
        }
        if (made)
            log_info("ev=tls_certificate_created dir=%s", cfg.state_dir);
    }
    if (registry_init(cfg.state_dir, cfg.bind_addr, cfg.tunnel_port, cfg.web_port, &cfg.limits,
                      err, sizeof(err)) != 0) {
        fprintf(stderr, "proxy_public: %s\n", err);
        goto out;
    }
    tunnel_listen_fd = net_listen(cfg.bind_addr, cfg.tunnel_port, 128, err, sizeof(err));
    if (tunnel_listen_fd < 0) {
        fprintf(stderr, "proxy_public: cannot listen on TUNNEL_PORT: %s\n", err);
        goto out_registry;
    }
    if (web_start(cfg.bind_addr, cfg.web_port, cfg.token, cfg.web_https ? cfg.tls : NULL, err,
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
        /* The secret goes to the terminal (stdout), never into the log. */
        printf("%s token in %s/token\n"
               "Connect a home machine with:\n"
               "  ./proxy_private %s %d --token %s%s%s --register web:8080:127.0.0.1:80\n"
               "Manage apps at %s://%s:%d/ with the same token.\n",
               created ? "Generated a new" : "Using the", cfg.state_dir, host, cfg.tunnel_port,
               cfg.token, cfg.plaintext ? " --insecure-plaintext" : " --fingerprint ",
               cfg.plaintext ? "" : cfg.fingerprint, cfg.web_https ? "https" : "http", host,
               cfg.web_port);
    }
    fflush(stdout);
    log_info("ev=ready version=%s tunnel_port=%d web_port=%d bind=%s state_dir=%s tls=%s "
             "fingerprint=%s",
             PROXY_VERSION, cfg.tunnel_port, cfg.web_port, cfg.bind_addr ? cfg.bind_addr : "0.0.0.0",
             cfg.state_dir, cfg.plaintext ? "off" : "on", cfg.tls ? cfg.fingerprint : "none");

    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    while (sigwait(&set, &sig) != 0)
        ;
    log_info("ev=stopping signal=%s", sig == SIGINT ? "SIGINT" : "SIGTERM");
    stopping = 1;
    rc = 0;
    shutdown(tunnel_listen_fd, SHUT_RDWR);
out_web:
    web_stop();
out_listen:
    stopping = 1;
    shutdown(tunnel_listen_fd, SHUT_RDWR);
out_registry:
    registry_shutdown();
    /* Handshakes still running end by their own 10 s deadline. */
    deadline = mono_ms() + HANDSHAKE_TIMEOUT_MS + 1000;
    while (tunnel_threads > 0 && mono_ms() < deadline)
        nanosleep(&ts, NULL);
    if (tunnel_listen_fd >= 0)
        close(tunnel_listen_fd);
out:
    SSL_CTX_free(cfg.tls);
    free(cfg.token);
    log_info("ev=exit code=%d", rc);
    return rc;
}

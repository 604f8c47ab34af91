/* private_opts.c - proxy_private's settings: options, config file, token
 * file, the allowlist in force, reload (see private_opts.h). */

#include "private_opts.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ftp_data.h"
#include "log.h"
#include "netio.h"
#include "service.h"
#include "udp.h"

struct private_cfg cfg = PRIVATE_CFG_DEFAULTS;
pthread_mutex_t cfg_apps_lock = PTHREAD_MUTEX_INITIALIZER;

/* Every option, and its key in the config file (file_only 1: the positional
 * arguments; -1: the command line only). */
static const struct config_option private_options[] = {
    {"host", 1, 1}, {"tunnel-port", 1, 1},
    {"config", 1, -1}, {"token", 1, 0}, {"token-file", 1, 0}, {"name", 1, 0},
    {"register", 1, 0}, {"allow", 1, 0}, {"fingerprint", 1, 0}, {"known-hosts", 1, 0},
    {"max-conns", 1, 0}, {"resume-grace", 1, 0}, {"resume-memory", 1, 0},
    {"insecure-plaintext", 0, 0},
    {"log-level", 1, 0},
    {"help", 0, -1}, {"version", 0, -1}, {NULL, 0, 0}};

/* What the running process uses of what a reload may change. */
_Atomic unsigned max_conns_now = MAX_CONNS_DEFAULT;

static pthread_mutex_t allow_lock = PTHREAD_MUTEX_INITIALIZER;
static struct allow_snap *allow_cur;
static void usage(FILE *f)
{
    fprintf(f,
            "Usage: proxy_private HOST TUNNEL_PORT [options]\n"
            "       proxy_private --config FILE [options]\n"
            "Dial proxy_public at HOST:TUNNEL_PORT and carry its clients to apps here.\n"
            "\n"
            "Options:\n"
            "  --config FILE        read settings from FILE (key = value lines, keys named\n"
            "                       as these options; host and tunnel-port for HOST and\n"
            "                       TUNNEL_PORT); the command line wins over the file\n"
            "  --token TOKEN        shared secret printed by proxy_public (or env NAT_TOKEN)\n"
            "  --token-file FILE    read the token from FILE (mode 600, yours or root's)\n"
            "  --name NAME          name of this private proxy (default: the host name)\n"
            "  --register NAME:PUBLIC_PORT:TARGET_HOST:TARGET_PORT[/udp|/ftp[=LOW-HIGH]]\n"
            "             [,proxy_protocol=1|2][,udp_idle=S][,allow_from=CIDR[+CIDR...]]\n"
            "                       ask the public side to open PUBLIC_PORT for the app at\n"
            "                       TARGET_HOST:TARGET_PORT (repeatable, re-sent on reconnect);\n"
            "                       /udp: a UDP app (datagrams); /ftp: an FTP server (its\n"
            "                       passive and active data connections are opened through\n"
            "                       the tunnel); /ftp=LOW-HIGH: an FTP(S) server with that\n"
            "                       fixed passive range, forwarded port for port; else TCP.\n"
            "                       proxy_protocol: send the app a PROXY protocol v1/v2\n"
            "                       header with the client's address (TCP apps);\n"
            "                       udp_idle: seconds (5-3600, default 120) without a\n"
            "                       datagram after which a UDP session ends;\n"
            "                       allow_from: only clients from these networks (IPv4\n"
            "                       and IPv6, e.g. allow_from=192.0.2.0/24+2001:db8::/32).\n"
            "                       An IPv6 TARGET_HOST goes in brackets: [::1]\n"
            "  --allow RULE         targets the public side may ask us to dial: HOST:PORT,\n"
            "                       CIDR:PORT[-PORT] (e.g. 192.168.1.0/24:1-65535) or\n"
            "                       'any' (repeatable). Default: loopback and the\n"
            "                       --register targets only (told to the public side,\n"
            "                       which refuses registrations they do not permit)\n"
            "  --fingerprint SHA256 pin the public side's certificate (printed by\n"
            "                       proxy_public); without it the first one seen is\n"
            "                       remembered in the known-hosts file and must not change\n"
            "  --known-hosts FILE   where first-use fingerprints are kept\n"
            "                       (default: $STATE_DIRECTORY/known_hosts, else\n"
            "                       ~/.config/proxy_private/known_hosts)\n"
            "  --max-conns N        connections and UDP sessions to home apps at once\n"
            "                       (default 10000); the public side's requests beyond it\n"
            "                       are refused\n"
            "  --resume-grace SECONDS\n"
            "                       how long connections wait for a broken tunnel to come\n"
            "                       back (default 60; 0: no resume)\n"
            "  --resume-memory MIB  memory all connections may keep of what they sent,\n"
            "                       for resumes (default 512); past it a connection is\n"
            "                       closed, not resumed, when the tunnel breaks\n"
            "  --insecure-plaintext no TLS (trusted networks, benchmarks); the public side\n"
            "                       must run with --insecure-plaintext too\n"
            "  --log-level LEVEL    debug, info (default), warn or error\n"
            "  --help               show this help\n"
            "  --version            show the version\n"
            "\n"
            "SIGHUP re-reads the config file: log level, --max-conns and --allow change in\n"
            "place, --register changes at the next reconnect; the log says what needs a\n"
            "restart. SIGINT and SIGTERM stop it. See proxy_private(1).\n");
}

/* The options after an app's first comma: proxy_protocol=1|2,
 * allow_from=CIDR[+CIDR...] (repeatable) and udp_idle=SECONDS, joined by
 * commas. 0 or -1. */
static int parse_register_options(char *opts, struct app_req *r)
{
    char *save = NULL, *o;
    char why[160];

    for (o = strtok_r(opts, ",", &save); o; o = strtok_r(NULL, ",", &save)) {
        if (strcmp(o, "proxy_protocol=1") == 0 || strcmp(o, "proxy_protocol=2") == 0) {
            r->proxy_protocol = o[15] - '0';
        } else if (strcmp(o, "proxy_protocol=0") == 0) {
            r->proxy_protocol = 0;
        } else if (strncmp(o, "udp_idle=", 9) == 0) {
            long v;
            if (config_long(o + 9, PKT_IDLE_MIN, PKT_IDLE_MAX, &v) != 0)
                return -1;
            r->udp_idle = (int)v;
        } else if (strncmp(o, "allow_from=", 11) == 0) {
            char *save2 = NULL, *c;
            if (!o[11])
                return -1;
            for (c = strtok_r(o + 11, "+", &save2); c; c = strtok_r(NULL, "+", &save2))
                if (cidr_list_add(&r->allow_from, c, why, sizeof(why)) != 0)
                    return -1;
        } else {
            return -1;
        }
    }
    return 0;
}

/* NAME:PUBLIC_PORT:TARGET_HOST:TARGET_PORT[/udp|/tcp|/ftp|/ftp=LOW-HIGH]
 * [,proxy_protocol=1|2][,allow_from=CIDR[+CIDR...]]; the host may hold
 * colons (IPv6), optionally in brackets, so the last colon ends it. */
static int parse_register(const char *arg, struct app_req *r)
{
    char buf[4096];
    char *p1, *p2, *last, *host, *proto, *opts;

    memset(r, 0, sizeof(*r));
    if (strlen(arg) >= sizeof(buf))
        return -1;
    memcpy(buf, arg, strlen(arg) + 1);
    opts = strchr(buf, ',');
    if (opts) {
        *opts++ = '\0';
        if (parse_register_options(opts, r) != 0)
            return -1;
    }
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
    r->udp = r->ftp = r->ftp_lo = r->ftp_hi = 0;
    proto = strchr(last, '/');
    if (proto) {
        *proto++ = '\0';
        if (strcmp(proto, "udp") == 0)
            r->udp = 1;
        else if (strcmp(proto, "ftp") == 0)
            r->ftp = 1;
        else if (strncmp(proto, "ftp=", 4) == 0) {
            r->ftp = 1;
            if (ftp_parse_ports(proto + 4, &r->ftp_lo, &r->ftp_hi) != 0 ||
                r->ftp_hi - r->ftp_lo + 1 > PKT_FTP_FIXED_MAX)
                return -1;
        } else if (strcmp(proto, "tcp") != 0)
            return -1;
    }
    host = p2;
    if (host[0] == '[' && host[strlen(host) - 1] == ']') {
        host[strlen(host) - 1] = '\0';
        host++;
    }
    if (!pkt_valid_name(buf) || !pkt_valid_host(host) || net_parse_port(p1, &r->public_port) != 0 ||
        net_parse_port(last, &r->target_port) != 0)
        return -1;
    if (r->proxy_protocol && (r->udp || r->ftp))
        return -1; /* the PROXY protocol is for TCP apps */
    if (r->udp_idle && !r->udp)
        return -1; /* an idle time is a UDP session's */
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

/* Apply one setting to c; what names it in messages ("--max-conns", or
 * "FILE:LINE: max-conns"); from_file tells whose a repeatable option is (the
 * command line's replace the file's). 0, or -1 with err. */
static int set_option(struct private_cfg *c, const char *name, const char *v, int flag,
                      int from_file, const char *what, char *err, size_t errlen)
{
    if (strcmp(name, "insecure-plaintext") == 0) {
        c->plaintext = flag;
    } else if (strcmp(name, "host") == 0) {
        /* "name", "192.0.2.1", "2001:db8::1", "[2001:db8::1]", or any of
         * them with ":PORT" (IPv6 then in brackets): the port is
         * TUNNEL_PORT's, which may then be left out. */
        const char *colon = strrchr(v, ':'), *close = strchr(v, ']');
        size_t n = strlen(v);
        int port = 0;
        if (v[0] == '[') {
            if (!close || close == v + 1 || (close[1] && (close[1] != ':' ||
                                                          net_parse_port(close + 2, &port) != 0))) {
                snprintf(err, errlen, "%s '%s' is not [IPv6] or [IPv6]:PORT", what, v);
                return -1;
            }
            n = (size_t)(close - v - 1);
            v++;
        } else if (colon && colon == strchr(v, ':')) {
            if (net_parse_port(colon + 1, &port) != 0) {
                snprintf(err, errlen, "%s '%s' is not HOST or HOST:PORT", what, v);
                return -1;
            }
            n = (size_t)(colon - v);
        }
        if (n == 0 || n >= sizeof(c->host_buf)) {
            snprintf(err, errlen, "%s '%s' is not a host name or address", what, v);
            return -1;
        }
        memcpy(c->host_buf, v, n);
        c->host_buf[n] = '\0';
        c->host = c->host_buf;
        if (port)
            c->port = port;
    } else if (strcmp(name, "tunnel-port") == 0) {
        if (net_parse_port(v, &c->port) != 0) {
            snprintf(err, errlen, "%s '%s' is not a port number (1-65535)", what, v);
            return -1;
        }
    } else if (strcmp(name, "token") == 0) {
        c->token = v;
        c->token_file = NULL;
    } else if (strcmp(name, "token-file") == 0) {
        c->token_file = v;
        c->token = NULL;
    } else if (strcmp(name, "fingerprint") == 0) {
        if (tls_normalize_fingerprint(v, c->fingerprint) != 0) {
            snprintf(err, errlen, "%s '%s' is not a SHA-256 fingerprint (64 hex digits, colons "
                     "allowed)", what, v);
            return -1;
        }
    } else if (strcmp(name, "allow") == 0) {
        char why[200];
        size_t used = strlen(c->allow_text);
        if (!from_file && c->allow_from_file) {
            c->allow.n = 0; /* the command line's rules replace the file's */
            c->allow.any = 0;
            c->nallow = 0;
            c->allow_text[0] = '\0';
            c->allow_from_file = 0;
            used = 0;
        }
        if (allow_add(&c->allow, v, why, sizeof(why)) != 0) {
            snprintf(err, errlen, "%s%s%s", from_file ? what : "", from_file ? ": " : "", why);
            return -1;
        }
        snprintf(c->allow_text + used, sizeof(c->allow_text) - used, "%s%s", used ? " " : "", v);
        c->allow_from_file = from_file;
        c->nallow++;
    } else if (strcmp(name, "max-conns") == 0) {
        long n;
        if (config_long(v, 1, 1000000, &n) != 0) {
            snprintf(err, errlen, "%s '%s' is not a number from 1 to 1000000", what, v);
            return -1;
        }
        c->max_conns = (unsigned)n;
    } else if (strcmp(name, "resume-grace") == 0) {
        long n;
        if (config_long(v, 0, PKT_GRACE_MAX, &n) != 0) {
            snprintf(err, errlen, "%s '%s' is not a number of seconds from 0 to %d", what, v,
                     PKT_GRACE_MAX);
            return -1;
        }
        c->resume_grace = (unsigned)n;
    } else if (strcmp(name, "resume-memory") == 0) {
        long n;
        if (config_long(v, 1, 1048576, &n) != 0) {
            snprintf(err, errlen, "%s '%s' is not a number of MiB from 1 to 1048576", what, v);
            return -1;
        }
        c->resume_memory = (unsigned)n;
    } else if (strcmp(name, "known-hosts") == 0) {
        snprintf(c->known_hosts, sizeof(c->known_hosts), "%s", v);
    } else if (strcmp(name, "name") == 0) {
        if (!pkt_valid_name(v)) {
            snprintf(err, errlen, "%s '%s' must match [A-Za-z0-9._-]{1,64}", what, v);
            return -1;
        }
        snprintf(c->name, sizeof(c->name), "%.64s", v);
    } else if (strcmp(name, "register") == 0) {
        if (!from_file && c->apps_from_file) {
            c->napps = 0; /* the command line's apps replace the file's */
            c->apps_from_file = 0;
        }
        if (c->napps >= MAX_REGISTER) {
            snprintf(err, errlen, "%s: at most %d apps", what, MAX_REGISTER);
            return -1;
        }
        if (parse_register(v, &c->apps[c->napps]) != 0) {
            snprintf(err, errlen, "%s '%s' is not NAME:PUBLIC_PORT:TARGET_HOST:TARGET_PORT"
                     " (or .../udp, .../ftp, .../ftp=LOW-HIGH; then ,proxy_protocol=1|2 for TCP"
                     " apps, ,udp_idle=%d-%d (seconds) for UDP apps, ,allow_from=CIDR[+CIDR...],"
                     " at most %d)", what, v, PKT_IDLE_MIN, PKT_IDLE_MAX, CIDR_MAX);
            return -1;
        }
        c->apps_from_file = from_file;
        c->napps++;
    } else if (strcmp(name, "log-level") == 0) {
        int lvl = log_parse_level(v);
        if (lvl < 0) {
            snprintf(err, errlen, "%s '%s' is not debug, info, warn or error", what, v);
            return -1;
        }
        c->log_level = lvl;
    } else {
        snprintf(err, errlen, "unknown option '%s' (see --help)", what);
        return -1;
    }
    return 0;
}

static int apply_config_file(struct private_cfg *c, char *err, size_t errlen)
{
    if (config_load(c->config_file, &c->conf, err, errlen) != 0)
        return -1;
    for (int i = 0; i < c->conf.n; i++) {
        const struct config_entry *e = &c->conf.entries[i];
        const struct config_option *o = config_option(private_options, e->key);
        char what[CONFIG_PATH_MAX + 64];
        int flag = 1;

        snprintf(what, sizeof(what), "%s:%d: %s", c->conf.path, e->line, e->key);
        if (!o || o->file_only < 0) {
            snprintf(err, errlen, "%s:%d: unknown key '%s' (see proxy_private(1))", c->conf.path,
                     e->line, e->key);
            return -1;
        }
        if (!o->takes_value && (flag = config_bool(e->value)) < 0) {
            snprintf(err, errlen, "%s '%s' is not yes or no", what, e->value);
            return -1;
        }
        if (o->takes_value && !e->value[0]) {
            snprintf(err, errlen, "%s needs a value", what);
            return -1;
        }
        if (strcmp(e->key, "token") == 0 && (c->conf.mode & 0004)) {
            snprintf(err, errlen, "%s: %s holds the token but every user may read it: "
                     "chmod 640 %s (or 600), or use token-file", what, c->conf.path,
                     c->conf.path);
            return -1;
        }
        if (set_option(c, e->key, e->value, flag, 1, what, err, errlen) != 0)
            return -1;
    }
    return 0;
}

/* The settings: the config file (--config), then NAT_TOKEN, then the command
 * line, each over the one before; c->allow must be allow_init()ed. reloading:
 * again with the same argv at SIGHUP. 0, or -1 with err. */
int private_parse_args(struct private_cfg *c, int argc, char **argv, int reloading, char *err,
                       size_t errlen)
{
    int pos = 0;

    for (int i = 1; i < argc && !reloading; i++) {
        const struct config_option *o = strncmp(argv[i], "--", 2) == 0
                                            ? config_option(private_options, argv[i] + 2) : NULL;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            exit(0);
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("proxy_private %s (protocol %d)\n", PROXY_VERSION, PKT_PROTO_VERSION);
            exit(0);
        }
        if (o && o->takes_value)
            i++;
    }
    c->config_file = config_find_arg(argc, argv, private_options, "config");
    if (c->config_file && apply_config_file(c, err, errlen) != 0)
        return -1;
    if (getenv("NAT_TOKEN") && *getenv("NAT_TOKEN")) {
        c->token = getenv("NAT_TOKEN");
        c->token_file = NULL;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) == 0) {
            const struct config_option *o = config_option(private_options, a + 2);
            const char *v = NULL;
            if (!o || o->file_only > 0) {
                snprintf(err, errlen, "unknown option '%s' (see --help)", a);
                return -1;
            }
            if (o->takes_value) {
                v = i + 1 < argc ? argv[i + 1] : NULL;
                if (!v) {
                    snprintf(err, errlen, "option %s needs a value", a);
                    return -1;
                }
                i++;
            }
            if (o->file_only < 0)
                continue;
            if (set_option(c, o->name, v, 1, 0, a, err, errlen) != 0)
                return -1;
        } else if (pos < 2) {
            if (set_option(c, pos == 0 ? "host" : "tunnel-port", a, 1, 0,
                           pos == 0 ? "HOST" : "TUNNEL_PORT", err, errlen) != 0)
                return -1;
            pos++;
        } else {
            snprintf(err, errlen, "unexpected argument '%s' (see --help)", a);
            return -1;
        }
    }
    if (!c->host || !c->port) {
        snprintf(err, errlen, "missing %s (see --help%s)", !c->host ? "HOST" : "TUNNEL_PORT",
                 c->config_file ? "; in the config file: host, tunnel-port" : "");
        return -1;
    }
    if (c->token_file) {
        if (config_read_secret(c->token_file, c->token_buf, sizeof(c->token_buf), err, errlen) != 0)
            return -1;
        c->token = c->token_buf;
    }
    if (!c->token || !*c->token) {
        snprintf(err, errlen, "no token: pass --token-file FILE or --token TOKEN, or set "
                 "NAT_TOKEN (proxy_public prints it when it makes it)");
        return -1;
    }
    if (strlen(c->token) > PKT_TOKEN_MAX) {
        snprintf(err, errlen, "--token is longer than %d bytes", PKT_TOKEN_MAX);
        return -1;
    }
    if (!c->name[0])
        default_name(c->name, sizeof(c->name));
    /* Default allowlist: what this machine offered itself, and loopback. */
    if (c->nallow == 0)
        allow_add_loopback(&c->allow);
    for (int i = 0; i < c->napps; i++) {
        allow_add_target(&c->allow, c->apps[i].host, c->apps[i].target_port);
        /* A fixed-range FTP app's data connections go to its range. */
        if (c->apps[i].ftp_lo)
            allow_add_target_range(&c->allow, c->apps[i].host, c->apps[i].ftp_lo,
                                   c->apps[i].ftp_hi);
    }
    if (!c->known_hosts[0]) {
        /* Under systemd, StateDirectory= says where (one directory, no ':'). */
        const char *sd = getenv("STATE_DIRECTORY"), *home = getenv("HOME");
        if (sd && sd[0] == '/' && !strchr(sd, ':'))
            snprintf(c->known_hosts, sizeof(c->known_hosts), "%s/known_hosts", sd);
        else
            snprintf(c->known_hosts, sizeof(c->known_hosts),
                     "%s/.config/proxy_private/known_hosts", home && *home ? home : ".");
    }
    return 0;
}

int private_allow_install(struct private_cfg *c)
{
    struct allow_snap *s = malloc(sizeof(*s)), *old;

    if (!s)
        return -1;
    s->refs = 1;
    s->al = c->allow;
    memset(&c->allow, 0, sizeof(c->allow));
    pthread_mutex_lock(&allow_lock);
    old = allow_cur;
    allow_cur = s;
    pthread_mutex_unlock(&allow_lock);
    if (old && --old->refs == 0) {
        allow_free(&old->al);
        free(old);
    }
    return 0;
}

struct allow_snap *private_allow_get(void)
{
    struct allow_snap *s;

    pthread_mutex_lock(&allow_lock);
    s = allow_cur;
    if (s)
        s->refs++;
    pthread_mutex_unlock(&allow_lock);
    return s;
}

void private_allow_put(struct allow_snap *s)
{
    if (s && --s->refs == 0) {
        allow_free(&s->al);
        free(s);
    }
}

/* The apps of the config changed on a reload: registered and unregistered on
 * the running tunnel (APPS, version 4), or else at the next reconnect, when
 * HELLO carries them. Called by reload() with the apps before and after,
 * under no lock. */
static void apps_changed(const struct app_req *old, int nold, const struct app_req *now, int nnow,
                         int allow_changed)
{
    char added[512] = "", removed[512] = "";
    size_t na = 0, nr = 0;

    for (int i = 0; i < nnow; i++) {
        int found = 0;
        for (int j = 0; j < nold && !found; j++)
            found = memcmp(&now[i], &old[j], sizeof(now[i])) == 0;
        if (!found && na < sizeof(added))
            na += (size_t)snprintf(added + na, sizeof(added) - na, "%s%s", na ? "," : "",
                                   now[i].name);
    }
    for (int j = 0; j < nold; j++) {
        int found = 0;
        for (int i = 0; i < nnow && !found; i++)
            found = memcmp(&now[i], &old[j], sizeof(now[i])) == 0;
        if (!found && nr < sizeof(removed))
            nr += (size_t)snprintf(removed + nr, sizeof(removed) - nr, "%s%s", nr ? "," : "",
                                   old[j].name);
    }
    if (private_push_apps(old, nold, now, nnow, allow_changed) >= 0)
        log_info("ev=reload_apps_changed added=%s removed=%s msg=\"on the running tunnel\"",
                 na ? added : "none", nr ? removed : "none");
    else
        log_warn("ev=reload_apps_changed added=%s removed=%s msg=\"the apps of the config "
                 "apply at the next reconnect of the tunnel (no tunnel up, or the public side "
                 "is older than protocol version 4)\"",
                 na ? added : "none", nr ? removed : "none");
}
static int app_eq(const struct app_req *a, const struct app_req *b)
{
    return strcmp(a->name, b->name) == 0 && a->public_port == b->public_port &&
           strcmp(a->host, b->host) == 0 && a->target_port == b->target_port &&
           a->udp == b->udp && a->ftp == b->ftp && a->ftp_lo == b->ftp_lo &&
           a->ftp_hi == b->ftp_hi && a->proxy_protocol == b->proxy_protocol &&
           a->udp_idle == b->udp_idle &&
           cidr_list_equal(&a->allow_from, &b->allow_from);
}

static int apps_differ(const struct private_cfg *a, const struct private_cfg *b)
{
    if (a->napps != b->napps)
        return 1;
    for (int i = 0; i < a->napps; i++)
        if (!app_eq(&a->apps[i], &b->apps[i]))
            return 1;
    return 0;
}

/* SIGHUP, on the signal thread: read the settings again (same command line,
 * the config file anew). The log level, --max-conns and --allow change in
 * place (connections running stay); --register changes are kept for the next
 * HELLO and handed to apps_changed(); what needs a restart is logged. */
void private_reload(int argc, char **argv)
{
    static const char *const level_names[] = {"debug", "info", "warn", "error"};
    struct private_cfg *n = malloc(sizeof(*n));
    struct app_req *old_apps = NULL;
    char err[CONFIG_PATH_MAX + 400], esc[sizeof(err)];
    int changed = 0, restart = 0, lvl, old_lvl, nold = 0, allow_changed = 0;

    sd_notify_state("RELOADING=1");
    if (n)
        *n = (struct private_cfg)PRIVATE_CFG_DEFAULTS;
    if (!n || allow_init(&n->allow) != 0) {
        log_error("ev=reload_failed err=\"out of memory\" msg=\"nothing changed\"");
        free(n);
        n = NULL;
        goto out;
    }
    if (private_parse_args(n, argc, argv, 1, err, sizeof(err)) != 0) {
        log_error("ev=reload_failed err=\"%s\" msg=\"nothing changed\"",
                  log_escape(err, esc, sizeof(esc)));
        goto out;
    }
    lvl = n->log_level < 0 ? LOG_LVL_INFO : n->log_level;
    old_lvl = cfg.log_level < 0 ? LOG_LVL_INFO : cfg.log_level;
    if (lvl != old_lvl) {
        log_set_level((enum log_level)lvl);
        log_msg(LOG_LVL_WARN, "ev=reload_changed key=log-level old=%s new=%s",
                level_names[old_lvl], level_names[lvl]);
        cfg.log_level = lvl;
        changed++;
    }
    if (n->max_conns != max_conns_now) {
        log_info("ev=reload_changed key=max-conns old=%u new=%u msg=\"connections running "
                 "stay\"", (unsigned)max_conns_now, n->max_conns);
        max_conns_now = n->max_conns;
        udp_set_private_limit(n->max_conns);
        changed++;
    }
    /* The allowlist depends on the --allow rules and, by default, on the
     * --register targets. */
    if (strcmp(n->allow_text, cfg.allow_text) != 0 || (n->nallow == 0 && apps_differ(n, &cfg))) {
        log_info("ev=reload_changed key=allow rules=\"%s\" msg=\"for connections from now on; "
                 "connections running stay\"",
                 log_escape(n->nallow ? n->allow_text : "loopback and the --register targets",
                            esc, sizeof(esc)));
        if (private_allow_install(n) != 0) {
            log_error("ev=reload_failed err=\"out of memory\" msg=\"allowlist not changed\"");
        } else {
            snprintf(cfg.allow_text, sizeof(cfg.allow_text), "%s", n->allow_text);
            changed++;
            allow_changed = 1;
        }
    }
    if (apps_differ(n, &cfg)) {
        old_apps = malloc(sizeof(cfg.apps));
        if (old_apps) {
            pthread_mutex_lock(&cfg_apps_lock);
            memcpy(old_apps, cfg.apps, sizeof(cfg.apps));
            nold = cfg.napps;
            memcpy(cfg.apps, n->apps, sizeof(cfg.apps));
            cfg.napps = n->napps;
            pthread_mutex_unlock(&cfg_apps_lock);
            apps_changed(old_apps, nold, n->apps, n->napps, allow_changed);
            allow_changed = 0; /* that APPS carried it */
            changed++;
        }
    }
    /* The public side judges registrations by the allowlist: tell it. */
    if (allow_changed && private_push_apps(NULL, 0, NULL, 0, 1) < 0)
        log_info("ev=reload_allow_not_sent msg=\"the public side learns the new --allow rules "
                 "at the next reconnect (no tunnel up, or it is older than protocol version 4)\"");
    {
        const struct {
            const char *key;
            int differs;
        } fixed[] = {
            {"host", strcmp(n->host, cfg.host) != 0},
            {"tunnel-port", n->port != cfg.port},
            {"token", strcmp(n->token, cfg.token) != 0},
            {"name", strcmp(n->name, cfg.name) != 0},
            {"fingerprint", strcmp(n->fingerprint, cfg.fingerprint) != 0},
            {"known-hosts", strcmp(n->known_hosts, cfg.known_hosts) != 0},
            {"insecure-plaintext", n->plaintext != cfg.plaintext},
            {"resume-grace", n->resume_grace != cfg.resume_grace},
            {"resume-memory", n->resume_memory != cfg.resume_memory},
        };
        for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
            if (!fixed[i].differs)
                continue;
            log_warn("ev=reload_needs_restart key=%s msg=\"changed in the config, but the "
                     "running process keeps the old value until it is restarted\"",
                     fixed[i].key);
            restart++;
        }
    }
    log_info("ev=reloaded file=%s changed=%d needs_restart=%d",
             n->config_file ? n->config_file : "none", changed, restart);
out:
    if (n) {
        allow_free(&n->allow);
        config_free(&n->conf);
        memset(n->token_buf, 0, sizeof(n->token_buf));
        free(n);
    }
    free(old_apps);
    sd_notify_state("READY=1");
}


void private_allow_release(void)
{
    struct allow_snap *s;

    pthread_mutex_lock(&allow_lock);
    s = allow_cur;
    allow_cur = NULL;
    pthread_mutex_unlock(&allow_lock);
    private_allow_put(s);
}

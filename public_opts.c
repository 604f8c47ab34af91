/* public_opts.c - proxy_public's settings: options, config file, token file,
 * reload (see public_opts.h). */

#include "public_opts.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "netio.h"
#include "proxy_header.h"
#include "service.h"
#include "udp.h"

struct public_cfg cfg = PUBLIC_CFG_DEFAULTS;

/* Every option, and its key in the config file (file_only 1: the positional
 * arguments; -1: the command line only). docs and proxy_public.1 list them. */
static const struct config_option public_options[] = {
    {"tunnel-port", 1, 1}, {"web-port", 1, 1},
    {"config", 1, -1}, {"bind", 1, 0}, {"token", 1, 0}, {"token-file", 1, 0},
    {"state-dir", 1, 0}, {"cert", 1, 0}, {"key", 1, 0}, {"max-conns", 1, 0},
    {"max-conns-per-app", 1, 0}, {"max-conns-per-private", 1, 0}, {"allow-ports", 1, 0},
    {"max-udp-sessions", 1, 0}, {"max-udp-sessions-per-app", 1, 0},
    {"resume-grace", 1, 0}, {"resume-memory", 1, 0},
    {"ftp-ports", 1, 0}, {"public-address", 1, 0}, {"accept-proxy-from", 1, 0},
    {"cluster", 1, 0}, {"node-name", 1, 0}, {"advertise", 1, 0},
    {"web-https", 0, 0}, {"insecure-plaintext", 0, 0}, {"log-level", 1, 0},
    {"help", 0, -1}, {"version", 0, -1}, {NULL, 0, 0}};

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: proxy_public TUNNEL_PORT WEB_PORT [options]\n"
            "       proxy_public --config FILE [options]\n"
            "Accept tunnels from proxy_private on TUNNEL_PORT, serve the API and page on\n"
            "WEB_PORT, and open each registered app's public port to the internet.\n"
            "\n"
            "Options:\n"
            "  --config FILE        read settings from FILE (key = value lines, keys named\n"
            "                       as these options; tunnel-port and web-port for the\n"
            "                       ports); the command line wins over the file\n"
            "  --bind ADDR          listen on this IPv4 or IPv6 address only (repeatable,\n"
            "                       or several joined by commas); default: every address\n"
            "                       of both families (one dual-stack socket per port)\n"
            "  --token TOKEN        shared secret (or env NAT_TOKEN; default: generated\n"
            "                       once and kept in STATE_DIR/token)\n"
            "  --token-file FILE    read the token from FILE (mode 600, yours or root's)\n"
            "  --state-dir DIR      where registrations, the token and the TLS key live\n"
            "                       (default: $STATE_DIRECTORY, else ./proxy_state)\n"
            "  --cert FILE --key FILE\n"
            "                       TLS certificate (PEM, chain allowed) and key to use\n"
            "                       instead of the self-signed pair made in STATE_DIR\n"
            "  --max-conns N        connections relayed at once, all apps (default 20000)\n"
            "  --max-conns-per-app N            per app (default 10000)\n"
            "  --max-conns-per-private N        per private proxy (default 10000)\n"
            "  --max-udp-sessions N UDP sessions at once, all apps (default 16384)\n"
            "  --max-udp-sessions-per-app N     per UDP app (default 4096)\n"
            "  --resume-grace SECONDS\n"
            "                       how long a broken tunnel's connections wait for the\n"
            "                       private side to come back (default 60, 0: no resume)\n"
            "  --resume-memory MIB  memory all connections may keep of what they sent,\n"
            "                       for resumes (default 512); past it a connection is\n"
            "                       closed, not resumed, when the tunnel breaks\n"
            "  --ftp-ports LOW-HIGH data ports for FTP apps' passive transfers, shared by\n"
            "                       all of them, one data connection per port at a time\n"
            "                       (default 30000-30999; open them in the firewall)\n"
            "  --public-address ADDR\n"
            "                       IPv4 address put into FTP 227 replies, when this\n"
            "                       server sits behind its own NAT or load balancer\n"
            "                       (default: the address the client reached)\n"
            "  --accept-proxy-from CIDR\n"
            "                       a load balancer's address (IPv4 or IPv6, a network\n"
            "                       or one host; repeatable, at most 16): connections\n"
            "                       from it to app and web ports must start with a PROXY\n"
            "                       header (v1 or v2, HAProxy's send-proxy[-v2]) within\n"
            "                       5 s, whose address is then the client's; from any\n"
            "                       other address a PROXY header is the client's data\n"
            "  --cluster URL        join a cluster of public nodes sharing their apps in\n"
            "                       Redis: redis://[USER:PASSWORD@]HOST:PORT[/DB] or\n"
            "                       sentinel://[USER:PASSWORD@]HOST:PORT[,...]/MASTER[/DB]\n"
            "                       (or the password in env NAT_REDIS_PASSWORD); every\n"
            "                       node needs the same --token and certificate (--cert,\n"
            "                       --key). See docs/CLUSTER.md\n"
            "  --node-name NAME     this node's name in the cluster (default: host name)\n"
            "  --advertise HOST:PORT\n"
            "                       where private proxies reach this node's tunnel port\n"
            "                       (default: the first --bind address, else the host\n"
            "                       name, and TUNNEL_PORT)\n"
            "  --allow-ports LIST   public ports apps may use: ports and LOW-HIGH ranges\n"
            "                       joined by commas (default 1024-65535; ports below 1024\n"
            "                       only when listed, e.g. --allow-ports 80,443,1024-65535)\n"
            "  --web-https          serve the web port over HTTPS with the same certificate\n"
            "  --insecure-plaintext no TLS on the tunnel (trusted networks, benchmarks);\n"
            "                       proxy_private must say --insecure-plaintext too\n"
            "  --log-level LEVEL    debug, info (default), warn or error\n"
            "  --help               show this help\n"
            "  --version            show the version\n"
            "\n"
            "SIGHUP re-reads the config file: log level, connection and session limits,\n"
            "allowed ports and the resume grace change in place; the log says what needs\n"
            "a restart. SIGINT and SIGTERM\n"
            "stop it. See proxy_public(1).\n"
            "\n"
            "HTTP API (Authorization: Bearer TOKEN): POST /register, POST /unregister,\n"
            "GET /list, GET /metrics, GET /connections, POST /connections/close,\n"
            "POST /kick, POST /disable, POST /enable; scoped tokens for other users:\n"
            "GET /tokens, POST /tokens, POST /tokens/revoke. The page is at GET /.\n"
            "See docs/API.md.\n");
}

/* Apply one setting to c. what names it in messages: "--max-conns" on the
 * command line, "FILE:LINE: max-conns" from a file. flag is the value of a
 * flag option. 0, or -1 with err. */
static int set_option(struct public_cfg *c, const char *name, const char *v, int flag,
                      const char *what, char *err, size_t errlen)
{
    if (strcmp(name, "insecure-plaintext") == 0) {
        c->plaintext = flag;
    } else if (strcmp(name, "web-https") == 0) {
        c->web_https = flag;
    } else if (strcmp(name, "tunnel-port") == 0 || strcmp(name, "web-port") == 0) {
        if (net_parse_port(v, name[0] == 't' ? &c->tunnel_port : &c->web_port) != 0) {
            snprintf(err, errlen, "%s '%s' is not a port number (1-65535)", what, v);
            return -1;
        }
    } else if (strcmp(name, "bind") == 0) {
        int from_file = strncmp(what, "--", 2) != 0;
        char why[160];
        if (!from_file && c->binds_from_file) {
            c->binds.n = 0; /* the command line's addresses replace the file's */
            c->binds_from_file = 0;
        }
        if (net_binds_add(&c->binds, v, why, sizeof(why)) != 0) {
            snprintf(err, errlen, "%s '%s': %s", what, v, why);
            return -1;
        }
        c->binds_from_file = from_file;
    } else if (strcmp(name, "token") == 0) {
        c->token_arg = v;
        c->token_file = NULL;
    } else if (strcmp(name, "token-file") == 0) {
        c->token_file = v;
        c->token_arg = NULL;
    } else if (strncmp(name, "max-conns", 9) == 0) {
        long n;
        if (config_long(v, 1, 1000000, &n) != 0) {
            snprintf(err, errlen, "%s '%s' is not a number from 1 to 1000000", what, v);
            return -1;
        }
        if (strcmp(name, "max-conns") == 0)
            c->limits.max_conns = (unsigned)n;
        else if (strcmp(name, "max-conns-per-app") == 0)
            c->limits.max_conns_per_app = (unsigned)n;
        else
            c->limits.max_conns_per_private = (unsigned)n;
    } else if (strncmp(name, "max-udp-sessions", 16) == 0 || strcmp(name, "resume-memory") == 0 ||
               strcmp(name, "resume-grace") == 0) {
        int grace = strcmp(name, "resume-grace") == 0, mem = strcmp(name, "resume-memory") == 0;
        long lo = grace ? 0 : 1, hi = grace ? PKT_GRACE_MAX : mem ? 1048576 : 1000000;
        long n;
        if (config_long(v, lo, hi, &n) != 0) {
            snprintf(err, errlen, "%s '%s' is not a number%s from %ld to %ld", what, v,
                     grace ? " of seconds" : mem ? " of MiB" : "", lo, hi);
            return -1;
        }
        if (grace)
            c->resume_grace = (unsigned)n;
        else if (mem)
            c->resume_memory = (unsigned)n;
        else if (strcmp(name, "max-udp-sessions") == 0)
            c->max_udp_sessions = (unsigned)n;
        else
            c->max_udp_sessions_per_app = (unsigned)n;
    } else if (strcmp(name, "allow-ports") == 0) {
        char why[200];
        if (registry_parse_ports(v, &c->limits, why, sizeof(why)) != 0) {
            snprintf(err, errlen, "%s%s%s", what[0] == '-' ? "" : what,
                     what[0] == '-' ? "" : ": ", why);
            return -1;
        }
    } else if (strcmp(name, "ftp-ports") == 0) {
        if (ftp_parse_ports(v, &c->ftp_lo, &c->ftp_hi) != 0) {
            snprintf(err, errlen, "%s '%s' is not LOW-HIGH within 1024-65535 (at most 16384 "
                     "ports)", what, v);
            return -1;
        }
    } else if (strcmp(name, "cluster") == 0) {
        char why[400];
        if (cluster_parse_url(v, &c->cluster_url, why, sizeof(why)) != 0) {
            snprintf(err, errlen, "%s: %s", what, why);
            return -1;
        }
        c->cluster = 1;
    } else if (strcmp(name, "node-name") == 0) {
        if (!pkt_valid_name(v)) {
            snprintf(err, errlen, "%s '%s' is not a name (letters, digits, '.', '_', '-'; at "
                     "most %d)", what, v, PKT_NAME_MAX);
            return -1;
        }
        snprintf(c->node_name, sizeof(c->node_name), "%s", v);
    } else if (strcmp(name, "advertise") == 0) {
        char host[PKT_HOST_MAX + 1];
        int port;
        if (strlen(v) >= sizeof(c->advertise) ||
            pkt_split_hostport(v, host, sizeof(host), &port) != 0 || !pkt_valid_host(host)) {
            snprintf(err, errlen, "%s '%s' is not HOST:PORT (an IPv6 address in brackets)", what,
                     v);
            return -1;
        }
        snprintf(c->advertise, sizeof(c->advertise), "%s", v);
    } else if (strcmp(name, "public-address") == 0) {
        struct in_addr ia;
        if (inet_pton(AF_INET, v, &ia) != 1) {
            snprintf(err, errlen, "%s '%s' is not an IPv4 address", what, v);
            return -1;
        }
        c->public_address = v;
    } else if (strcmp(name, "accept-proxy-from") == 0) {
        char why[160];
        struct cidr e;
        if (cidr_parse(v, &e, why, sizeof(why)) != 0) {
            snprintf(err, errlen, "%s '%s' is not an IPv4 or IPv6 network (ADDRESS/PREFIX or "
                     "ADDRESS): %s", what, v, why);
            return -1;
        }
        if (c->accept_proxy.n >= PP_ACCEPT_MAX) {
            snprintf(err, errlen, "%s '%s': at most %d networks", what, v, PP_ACCEPT_MAX);
            return -1;
        }
        if (cidr_list_add(&c->accept_proxy, v, why, sizeof(why)) != 0) {
            snprintf(err, errlen, "%s '%s': %s", what, v, why);
            return -1;
        }
    } else if (strcmp(name, "cert") == 0) {
        c->cert_file = v;
    } else if (strcmp(name, "key") == 0) {
        c->key_file = v;
    } else if (strcmp(name, "state-dir") == 0) {
        c->state_dir = v;
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

/* The settings of c->config_file, into c. */
static int apply_config_file(struct public_cfg *c, char *err, size_t errlen)
{
    if (config_load(c->config_file, &c->conf, err, errlen) != 0)
        return -1;
    for (int i = 0; i < c->conf.n; i++) {
        const struct config_entry *e = &c->conf.entries[i];
        const struct config_option *o = config_option(public_options, e->key);
        char what[CONFIG_PATH_MAX + 64];
        int flag = 1;

        snprintf(what, sizeof(what), "%s:%d: %s", c->conf.path, e->line, e->key);
        if (!o || o->file_only < 0) {
            snprintf(err, errlen, "%s:%d: unknown key '%s' (see proxy_public(1))", c->conf.path,
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
        if (set_option(c, e->key, e->value, flag, what, err, errlen) != 0)
            return -1;
    }
    return 0;
}

/* The settings: the config file (--config), then NAT_TOKEN, then the command
 * line, each over the one before. reloading: again with the same argv, at
 * SIGHUP (no --help or --version to act on). 0, or -1 with err. */
/* The host name as a node name (other characters as '-'). */
static void host_name(char *out, size_t cap)
{
    char host[256] = "";
    size_t j = 0;

    if (gethostname(host, sizeof(host) - 1) != 0)
        host[0] = '\0';
    for (size_t i = 0; host[i] && j + 1 < cap && j < PKT_NAME_MAX; i++)
        out[j++] = pkt_valid_name((char[]){host[i], '\0'}) ? host[i] : '-';
    out[j] = '\0';
    if (!pkt_valid_name(out))
        snprintf(out, cap, "node");
}

/* --node-name and --advertise when not given. */
static void cluster_defaults(struct public_cfg *c)
{
    char host[PKT_HOST_MAX + 1];

    if (!c->node_name[0])
        host_name(c->node_name, sizeof(c->node_name));
    if (c->advertise[0])
        return;
    if (c->binds.n && strcmp(c->binds.addr[0], "0.0.0.0") != 0 &&
        strcmp(c->binds.addr[0], "::") != 0)
        snprintf(host, sizeof(host), "%s", c->binds.addr[0]);
    else
        host_name(host, sizeof(host));
    snprintf(c->advertise, sizeof(c->advertise), strchr(host, ':') ? "[%s]:%d" : "%s:%d", host,
             c->tunnel_port);
}

int public_parse_args(struct public_cfg *c, int argc, char **argv, int reloading, char *err,
                      size_t errlen)
{
    int pos = 0;

    for (int i = 1; i < argc && !reloading; i++) {
        const struct config_option *o = strncmp(argv[i], "--", 2) == 0
                                            ? config_option(public_options, argv[i] + 2) : NULL;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            exit(0);
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("proxy_public %s (protocol %d)\n", PROXY_VERSION, PKT_PROTO_VERSION);
            exit(0);
        }
        if (o && o->takes_value)
            i++;
    }
    c->config_file = config_find_arg(argc, argv, public_options, "config");
    if (c->config_file && apply_config_file(c, err, errlen) != 0)
        return -1;
    if (getenv("NAT_TOKEN") && *getenv("NAT_TOKEN")) {
        c->token_arg = getenv("NAT_TOKEN");
        c->token_file = NULL;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) == 0) {
            const struct config_option *o = config_option(public_options, a + 2);
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
            if (o->file_only < 0) /* --config (read above), --help, --version */
                continue;
            if (set_option(c, o->name, v, 1, a, err, errlen) != 0)
                return -1;
        } else if (pos < 2) {
            if (set_option(c, pos == 0 ? "tunnel-port" : "web-port", a, 1,
                           pos == 0 ? "TUNNEL_PORT" : "WEB_PORT", err, errlen) != 0)
                return -1;
            pos++;
        } else {
            snprintf(err, errlen, "unexpected argument '%s' (see --help)", a);
            return -1;
        }
    }
    if (!c->tunnel_port || !c->web_port) {
        snprintf(err, errlen, "missing %s (see --help%s)", !c->tunnel_port ? "TUNNEL_PORT" : "WEB_PORT",
                 c->config_file ? "; in the config file: tunnel-port, web-port" : "");
        return -1;
    }
    if (!c->state_dir) {
        /* Under systemd, StateDirectory= says where (one directory, no ':'). */
        const char *sd = getenv("STATE_DIRECTORY");
        c->state_dir = sd && sd[0] == '/' && !strchr(sd, ':') ? sd : "proxy_state";
    }
    if (c->limits.nranges == 0) {
        char why[200];
        (void)registry_parse_ports("1024-65535", &c->limits, why, sizeof(why));
    }
    if (!c->cert_file != !c->key_file) {
        snprintf(err, errlen, "--cert and --key go together");
        return -1;
    }
    if (c->tunnel_port == c->web_port) {
        snprintf(err, errlen, "TUNNEL_PORT and WEB_PORT must differ");
        return -1;
    }
    if (c->token_file) {
        if (config_read_secret(c->token_file, c->token_buf, sizeof(c->token_buf), err, errlen) != 0)
            return -1;
        c->token_arg = c->token_buf;
    }
    if (c->token_arg && strlen(c->token_arg) > PKT_TOKEN_MAX) {
        snprintf(err, errlen, "--token is longer than %d bytes", PKT_TOKEN_MAX);
        return -1;
    }
    if (!c->cluster && (c->node_name[0] || c->advertise[0])) {
        snprintf(err, errlen, "--node-name and --advertise belong to --cluster");
        return -1;
    }
    if (c->cluster)
        cluster_defaults(c);
    return 0;
}

static int str_differs(const char *a, const char *b)
{
    return (a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0);
}

/* SIGHUP: read the settings again (same command line, the config file anew)
 * and apply what can change in a running process: the log level, the
 * connection limits and the allowed ports. What needs a restart is logged,
 * key by key; nothing running is dropped. */
void public_reload(int argc, char **argv)
{
    struct public_cfg *n = malloc(sizeof(*n));
    char err[CONFIG_PATH_MAX + 400], esc[sizeof(err)];
    int changed = 0, restart = 0, lvl;
    static const char *const fixed[] = {"tunnel-port", "web-port", "bind", "state-dir", "cert",
                                        "key", "web-https", "insecure-plaintext", "token",
                                        "resume-memory", "ftp-ports", "public-address",
                                        "accept-proxy-from", "cluster", "node-name",
                                        "advertise"};
    int d[sizeof(fixed) / sizeof(fixed[0])];

    sd_notify_state("RELOADING=1");
    if (!n) {
        log_error("ev=reload_failed err=\"out of memory\" msg=\"nothing changed\"");
        goto out;
    }
    *n = (struct public_cfg)PUBLIC_CFG_DEFAULTS;
    if (public_parse_args(n, argc, argv, 1, err, sizeof(err)) != 0) {
        log_error("ev=reload_failed err=\"%s\" msg=\"nothing changed\"",
                  log_escape(err, esc, sizeof(esc)));
        goto out;
    }
    lvl = n->log_level < 0 ? LOG_LVL_INFO : n->log_level;
    if (lvl != (cfg.log_level < 0 ? LOG_LVL_INFO : cfg.log_level)) {
        static const char *const names[] = {"debug", "info", "warn", "error"};
        log_set_level((enum log_level)lvl);
        log_msg(LOG_LVL_WARN, "ev=reload_changed key=log-level old=%s new=%s",
                names[cfg.log_level < 0 ? LOG_LVL_INFO : cfg.log_level], names[lvl]);
        cfg.log_level = lvl;
        changed++;
    }
    if (n->limits.max_conns != cfg.limits.max_conns ||
        n->limits.max_conns_per_app != cfg.limits.max_conns_per_app ||
        n->limits.max_conns_per_private != cfg.limits.max_conns_per_private ||
        strcmp(n->limits.ports_text, cfg.limits.ports_text) != 0) {
        log_info("ev=reload_changed key=limits max_conns=%u max_conns_per_app=%u "
                 "max_conns_per_private=%u allow_ports=%s old_max_conns=%u "
                 "old_max_conns_per_app=%u old_max_conns_per_private=%u old_allow_ports=%s "
                 "msg=\"applies to new connections and registrations; nothing running is "
                 "dropped\"",
                 n->limits.max_conns, n->limits.max_conns_per_app, n->limits.max_conns_per_private,
                 n->limits.ports_text, cfg.limits.max_conns, cfg.limits.max_conns_per_app,
                 cfg.limits.max_conns_per_private, cfg.limits.ports_text);
        cfg.limits = n->limits;
        registry_set_limits(&cfg.limits);
        changed++;
    }
    d[0] = n->tunnel_port != cfg.tunnel_port;
    d[1] = n->web_port != cfg.web_port;
    d[2] = memcmp(&n->binds, &cfg.binds, sizeof(n->binds)) != 0;
    d[3] = str_differs(n->state_dir, cfg.state_dir);
    d[4] = str_differs(n->cert_file, cfg.cert_file);
    d[5] = str_differs(n->key_file, cfg.key_file);
    d[6] = n->web_https != cfg.web_https;
    d[7] = n->plaintext != cfg.plaintext;
    d[8] = n->token_arg ? strcmp(n->token_arg, cfg.token) != 0 : cfg.token_arg != NULL;
    d[9] = n->resume_memory != cfg.resume_memory;
    d[10] = n->ftp_lo != cfg.ftp_lo || n->ftp_hi != cfg.ftp_hi;
    d[11] = str_differs(n->public_address, cfg.public_address);
    d[12] = !cidr_list_equal(&n->accept_proxy, &cfg.accept_proxy);
    d[13] = n->cluster != cfg.cluster ||
            strcmp(n->cluster_url.shown, cfg.cluster_url.shown) != 0 ||
            strcmp(n->cluster_url.password, cfg.cluster_url.password) != 0;
    d[14] = strcmp(n->node_name, cfg.node_name) != 0;
    d[15] = strcmp(n->advertise, cfg.advertise) != 0;
    if (n->resume_grace != cfg.resume_grace) {
        log_info("ev=reload_changed key=resume-grace old=%u new=%u msg=\"applies to tunnels "
                 "that connect from now on\"", cfg.resume_grace, n->resume_grace);
        cfg.resume_grace = n->resume_grace;
        changed++;
    }
    if (n->max_udp_sessions != cfg.max_udp_sessions ||
        n->max_udp_sessions_per_app != cfg.max_udp_sessions_per_app) {
        log_info("ev=reload_changed key=udp_limits max_udp_sessions=%u "
                 "max_udp_sessions_per_app=%u old_max_udp_sessions=%u "
                 "old_max_udp_sessions_per_app=%u msg=\"applies to new sessions\"",
                 n->max_udp_sessions, n->max_udp_sessions_per_app, cfg.max_udp_sessions,
                 cfg.max_udp_sessions_per_app);
        cfg.max_udp_sessions = n->max_udp_sessions;
        cfg.max_udp_sessions_per_app = n->max_udp_sessions_per_app;
        udp_set_public_limits(cfg.max_udp_sessions_per_app, cfg.max_udp_sessions);
        changed++;
    }
    for (size_t i = 0; i < sizeof(d) / sizeof(d[0]); i++) {
        if (!d[i])
            continue;
        log_warn("ev=reload_needs_restart key=%s msg=\"changed in the config, but the running "
                 "process keeps the old value until it is restarted\"", fixed[i]);
        restart++;
    }
    log_info("ev=reloaded file=%s changed=%d needs_restart=%d",
             n->config_file ? n->config_file : "none", changed, restart);
out:
    if (n) {
        config_free(&n->conf);
        memset(n->token_buf, 0, sizeof(n->token_buf));
        memset(n->cluster_url.password, 0, sizeof(n->cluster_url.password));
        free(n);
    }
    sd_notify_state("READY=1");
}


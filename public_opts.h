#ifndef PUBLIC_OPTS_H
#define PUBLIC_OPTS_H

/* proxy_public's settings: the command line, the config file (--config), the
 * token file, and their reload at SIGHUP (public_opts.c). proxy_public.c only
 * calls public_parse_args() at start and public_reload() on SIGHUP. */

#include <openssl/ssl.h>
#include <stdio.h>

#include "cidr.h"
#include "cluster.h"
#include "config.h"
#include "ftp_data.h"
#include "netio.h"
#include "packet.h"
#include "registry.h"
#include "state.h"
#include "tls.h"

struct public_cfg {
    int tunnel_port, web_port;
    struct net_binds binds;     /* --bind, repeatable; none: every address, both families */
    int binds_from_file;        /* the command line's --bind replace the file's */
    const char *token_arg;      /* --token, NAT_TOKEN, or the token file's (token_buf) */
    const char *token_file;
    char token_buf[PKT_TOKEN_MAX + 1];
    const char *state_dir;
    const char *cert_file, *key_file;
    int plaintext;
    int web_https;
    int log_level;              /* -1: not given (info) */
    const char *config_file;
    struct config conf;         /* its settings; values above may point into it */
    char *token;
    struct state_dir state;     /* cfg.state_dir, opened and checked once */
    SSL_CTX *tls;
    char fingerprint[TLS_FP_LEN];
    struct registry_limits limits;
    unsigned resume_grace;      /* seconds; 0: no resumption */
    unsigned resume_memory;     /* MiB */
    unsigned max_udp_sessions, max_udp_sessions_per_app;
    int ftp_lo, ftp_hi;         /* --ftp-ports: data ports of FTP apps */
    char ftp_ports_text[16];
    const char *public_address; /* --public-address: for 227 replies; NULL: as reached */
    struct cidr_list accept_proxy; /* --accept-proxy-from, repeatable (PP_ACCEPT_MAX) */
    int cluster;                /* --cluster given: cluster_url holds it */
    struct cluster_url cluster_url;
    char node_name[PKT_NAME_MAX + 1];      /* --node-name, default the host name */
    char advertise[PKT_HOST_MAX + 8];      /* --advertise HOST:PORT ("" until defaulted) */
};

#define PUBLIC_CFG_DEFAULTS                                                                      \
    {.state = {.fd = -1}, .log_level = -1, .resume_grace = 60, .resume_memory = 512,             \
     .max_udp_sessions = 16384, .max_udp_sessions_per_app = 4096,                                 \
     .ftp_lo = FTP_PORTS_DEFAULT_LO, .ftp_hi = FTP_PORTS_DEFAULT_HI,                              \
     .limits = {.max_conns = 20000, .max_conns_per_app = 10000, .max_conns_per_private = 10000}}

/* The settings in force (public_opts.c). */
extern struct public_cfg cfg;

/* The settings: the config file (--config), then NAT_TOKEN, then the command
 * line, each over the one before; --help and --version exit here unless
 * reloading. 0, or -1 with err. */
int public_parse_args(struct public_cfg *c, int argc, char **argv, int reloading, char *err,
                      size_t errlen);

/* SIGHUP: read the settings again and apply what can change in place; log
 * the rest. On the main thread. */
void public_reload(int argc, char **argv);

#endif

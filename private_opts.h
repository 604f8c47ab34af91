#ifndef PRIVATE_OPTS_H
#define PRIVATE_OPTS_H

/* proxy_private's settings: the command line, the config file (--config), the
 * token file, the allowlist in force, and their reload at SIGHUP
 * (private_opts.c). proxy_private.c calls private_parse_args() at start,
 * private_reload() on SIGHUP, and dials through private_allow_get(). */

#include <openssl/ssl.h>
#include <pthread.h>

#include "allow.h"
#include "cidr.h"
#include "config.h"
#include "packet.h"
#include "tls.h"

#define MAX_REGISTER PKT_MAX_APPS
#define MAX_CONNS_DEFAULT 10000 /* as proxy_public's --max-conns-per-private */

struct app_req {
    char name[PKT_NAME_MAX + 1];
    int public_port;
    char host[PKT_HOST_MAX + 1];
    int target_port;
    int udp;                    /* NAME:...:TARGET_PORT/udp */
    int ftp;                    /* .../ftp, .../ftp=LOW-HIGH */
    int ftp_lo, ftp_hi;         /* the fixed passive range (FTPS), or 0 */
    int proxy_protocol;         /* ...,proxy_protocol=1|2 */
    int udp_idle;               /* .../udp,udp_idle=S (5-3600 s), 0: the public default */
    struct cidr_list allow_from; /* ...,allow_from=CIDR[+CIDR...] (repeatable) */
};

struct private_cfg {
    const char *host;           /* host_buf: HOST without brackets or port */
    char host_buf[PKT_HOST_MAX + 1];
    int port;
    const char *token;          /* --token, NAT_TOKEN, or the token file's (token_buf) */
    const char *token_file;
    char token_buf[PKT_TOKEN_MAX + 1];
    char name[PKT_NAME_MAX + 1];
    struct app_req apps[MAX_REGISTER];  /* under state_lock once running (reload) */
    int napps;
    int apps_from_file;            /* the command line's --register replace them */
    int plaintext;
    struct allowlist allow;        /* as parsed; the running one is allow_cur */
    int nallow;                    /* --allow options given */
    int allow_from_file;
    char allow_text[1024];         /* the rules as given, to tell a change */
    char fingerprint[TLS_FP_LEN];  /* pinned; empty: trust on first use */
    char known_hosts[4096];
    SSL_CTX *tls;
    unsigned max_conns;
    unsigned resume_grace;         /* seconds; 0: no resumption */
    unsigned resume_memory;        /* MiB */
    int log_level;                 /* -1: not given (info) */
    const char *config_file;
    struct config conf;            /* its settings; values above may point into it */
};

#define PRIVATE_CFG_DEFAULTS                                                                     \
    {.max_conns = MAX_CONNS_DEFAULT, .resume_grace = 60, .resume_memory = 512, .log_level = -1}

/* The settings in force; cfg.apps and cfg.napps under cfg_apps_lock once
 * running (a reload changes them for the next HELLO). */
extern struct private_cfg cfg;
extern pthread_mutex_t cfg_apps_lock;
/* --max-conns in force (a reload changes it). */
extern _Atomic unsigned max_conns_now;

/* The allowlist in force, shared by the dialling threads: a reload puts a new
 * one in place, and the old one is freed when its last dial is over. */
struct allow_snap {
    _Atomic int refs;
    struct allowlist al;
};

/* The settings: the config file (--config), then NAT_TOKEN, then the command
 * line, each over the one before; c->allow must be allow_init()ed; --help and
 * --version exit here unless reloading. 0, or -1 with err. */
int private_parse_args(struct private_cfg *c, int argc, char **argv, int reloading, char *err,
                       size_t errlen);

/* Put c's allowlist in force (taking it: c->allow is emptied). 0 or -1. */
int private_allow_install(struct private_cfg *c);
/* proxy_private.c: the apps that changed on a reload, sent on the running
 * tunnel with the allowlist in force (also when only it changed:
 * allow_changed). 1 sent, 0 nothing changed, -1 not sent (next HELLO carries
 * them). */
int private_push_apps(const struct app_req *old, int nold, const struct app_req *now, int nnow,
                      int allow_changed);
/* A reference to the allowlist in force (NULL before the first install), and
 * its release. */
struct allow_snap *private_allow_get(void);
void private_allow_put(struct allow_snap *s);
/* At exit: let go of the allowlist in force. */
void private_allow_release(void);

/* SIGHUP, on the signal thread: read the settings again and apply what can
 * change in place; log the rest. */
void private_reload(int argc, char **argv);

#endif

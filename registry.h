#ifndef REGISTRY_H
#define REGISTRY_H

/* The public side's registry: known private proxies, registered apps with their
 * listeners and counters, and their persistence in STATE_DIR/apps.json. One lock
 * guards it all; web handlers and tunnel threads only use these functions. */

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "cidr.h"
#include "packet.h"
#include "tokens.h"

struct state_dir;
struct tunnel;

struct app_spec {
    char name[PKT_NAME_MAX + 1];
    int public_port;
    char target_host[PKT_HOST_MAX + 1];
    int target_port;
    char private_name[PKT_NAME_MAX + 1];   /* empty: the only known private */
    int udp;                               /* "protocol": "udp" (else "tcp") */
    unsigned udp_idle;                     /* udp_idle_timeout, seconds */
    int ftp;                               /* "protocol": "ftp" */
    int ftp_lo, ftp_hi;                    /* "ftp_passive_ports": fixed passive range
                                              mode (FTPS); 0: the replies are rewritten */
    int proxy_protocol;                    /* "proxy_protocol": 0 off, 1 or 2 (TCP apps) */
    struct cidr_list allow_from;           /* "allow_from": empty = every client */
    /* Kept by the registry, never taken from a request: */
    char owner[TOKEN_ID_LEN + 1];          /* the scoped token that registered it; "" admin */
    int disabled;                          /* its port does not accept (POST /disable) */
};

/* Connection limits: a client over any of them is closed at once, logged and
 * counted (refused_connections). */
#define REGISTRY_PORT_RANGES 32

struct registry_limits {
    unsigned max_conns;             /* all apps together */
    unsigned max_conns_per_app;
    unsigned max_conns_per_private;
    /* Public ports apps may use (--allow-ports): nranges ranges [lo, hi]. */
    struct {
        int lo, hi;
    } ports[REGISTRY_PORT_RANGES];
    int nranges;
    char ports_text[160];           /* as given, for messages */
};

/* Parse an --allow-ports value, "LOW-HIGH" or "PORT", several joined by
 * commas, into l->ports (replacing what was there). 0 or -1 with err. */
int registry_parse_ports(const char *spec, struct registry_limits *l, char *err, size_t errlen);

/* Load STATE_DIR/apps.json and start listening for its apps. state stays the
 * caller's and must stay open until registry_shutdown() has returned. */
struct net_binds;
int registry_init(const struct state_dir *state, const struct net_binds *binds, int tunnel_port,
                  int web_port,
                  const struct registry_limits *limits, char *err, size_t errlen);
/* New limits (SIGHUP): for clients and registrations from now on; running
 * connections and registered apps are left as they are. */
void registry_set_limits(const struct registry_limits *limits);
/* Close every listener, end every tunnel, wait for them, free everything. */
void registry_shutdown(void);

/* Fill an app_spec from a JSON object (API body or HELLO entry). 0 or -1 with err.
 * An app is TCP unless "protocol" says "udp" or "ftp". */
int registry_spec_from_json(json_t *obj, struct app_spec *spec, char *err, size_t errlen);

/* Register an app on behalf of who (NULL: the admin). Returns an HTTP status:
 * 201 created, 200 unchanged (same app asked again by its own private on
 * reconnect), 400 bad request, 403 outside the allowed ports or who's scope,
 * 409 conflict, 500 state not saved. err says why in words for a person.
 * from_private allows the private named in spec to replace its own app of the
 * same name. A scoped token registers only inside its scope (403 naming the
 * limit); its apps are its own. */
int registry_register_as(const struct app_spec *spec, int from_private, const struct principal *who,
                         char *err, size_t errlen);
/* 200, 404 or 500. */
int registry_unregister(const char *name, char *err, size_t errlen);
/* The same for the private proxy owner (NULL: anybody's): 403 for an app of
 * another private. */
int registry_unregister_own(const char *name, const char *owner, char *err, size_t errlen);

/* registry_unregister on behalf of who: 403 for an app who does not own. */
int registry_unregister_as(const char *name, const struct principal *who, char *err, size_t errlen);
/* Disable (on) or enable an app: its port stops accepting (open connections
 * stay) or accepts again; kept across restarts. 200, 403, 404 or 500. */
int registry_set_disabled(const char *name, int on, const struct principal *who, char *err,
                          size_t errlen);
/* Disconnect private name and refuse it for refuse_s seconds (0: it may come
 * back at once). 200, 403 or 404. */
int registry_kick(const char *name, unsigned refuse_s, const struct principal *who, char *err,
                  size_t errlen);
/* Seconds private name is still refused after a kick (0: it is not). */
unsigned registry_private_refused(const char *name);
/* Token id was revoked: close its tunnels now. Returns how many. */
unsigned registry_revoked(const char *id);
/* GET /connections for who: {"connections": [...], "total": N, "truncated": bool}. */
json_t *registry_connections(const struct principal *who);
/* Close connection id through private priv for who: 200, 403 or 404. */
int registry_close_conn(const char *priv, uint64_t id, const struct principal *who, char *err,
                        size_t errlen);

/* {"privates": [...], "apps": [...]}, a new reference. */
json_t *registry_list(void);
/* The same as who may see it: its own apps and the privates of its scope. */
json_t *registry_list_as(const struct principal *who);
/* Prometheus text exposition; a malloc'd string. */
char *registry_metrics(void);

/* Tunnel lifecycle on the public side. private_known makes sure a record
 * exists (0, or -1 when there are too many); private_up puts the tunnel online
 * and replaces (kills) an older tunnel of the same name. */
int registry_private_known(const char *name);
/* The private's --allow rules (HELLO's or APPS' "allow"; NULL: it did not
 * say), by which registrations for it are judged while it is online. */
void registry_private_set_allow(const char *name, const json_t *rules);
void registry_private_up(const char *name, struct tunnel *t, const char *addr);
void registry_private_down(const char *name, struct tunnel *t);
/* The live session of private name, with a reference (tunnel_unref it), or NULL. */
struct tunnel *registry_private_session(const char *name);
/* Session t of name resumed on a link from addr. */
void registry_private_resumed(const char *name, struct tunnel *t, const char *addr);
/* A resume was refused for a wrong token (counted for /metrics). */
void registry_count_resume_refused(void);

/* ------------------------------------------------------------- cluster */

/* A shared store of registrations (cluster.c, Redis) that the registry asks
 * before it changes an app, so that every node agrees: NULL (the default)
 * means none, the node stands alone. Each call returns 0, or an HTTP status
 * (409 taken, 503 store unreachable) with err for a person. */
struct registry_store {
    /* Claim s atomically in the store (name and port). *prev: what it
     * replaced (a malloc'd JSON text, NULL: nothing), for undo. */
    int (*claim)(const struct app_spec *s, int from_private, char **prev, char *err,
                 size_t errlen);
    /* Put back what claim replaced, when the local change failed after all. */
    void (*undo)(const struct app_spec *s, const char *prev);
    int (*remove)(const char *name, char *err, size_t errlen);
    int (*update)(const struct app_spec *s, char *err, size_t errlen);
    /* Tell the other nodes: the apps changed; private name was kicked. */
    void (*changed)(void);
    void (*kicked)(const char *name, unsigned refuse_s);
};
void registry_set_store(const struct registry_store *store);

/* Writers (register, unregister, disable, a sync from the store) take this
 * lock around the store's call and the local change, so that a sync never
 * undoes a change made between its read and its apply. */
void registry_write_lock(void);
void registry_write_unlock(void);

/* Make the local apps what the store says: remote is an object name -> app
 * entry (registry_spec_json's); apps missing from it are removed, others
 * added, changed or left alone. The caller holds registry_write_lock. */
void registry_sync(json_t *remote);
/* The entry of an app as the store keeps it (name, ports, target, private,
 * owner, disabled), a new reference. */
json_t *registry_spec_json(const struct app_spec *s);
/* Every app, as registry_spec_json, in an object by name (a new reference). */
json_t *registry_specs(void);
/* A kick another node was asked for: disconnect and refuse name here too. */
void registry_kick_local(const char *name, unsigned refuse_s);
/* Call fn on every live tunnel (outside the registry's lock). */
void registry_each_tunnel(void (*fn)(struct tunnel *t, void *arg), void *arg);

#endif

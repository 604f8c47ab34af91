#ifndef REGISTRY_H
#define REGISTRY_H

/* The public side's registry: known private proxies, registered apps with their
 * listeners and counters, and their persistence in STATE_DIR/apps.json. One lock
 * guards it all; web handlers and tunnel threads only use these functions. */

#include <jansson.h>
#include <stddef.h>

#include "packet.h"

struct tunnel;

struct app_spec {
    char name[PKT_NAME_MAX + 1];
    int public_port;
    char target_host[PKT_HOST_MAX + 1];
    int target_port;
    char private_name[PKT_NAME_MAX + 1];   /* empty: the only known private */
};

/* Connection limits: a client over any of them is closed at once, logged and
 * counted (refused_connections). */
struct registry_limits {
    unsigned max_conns;             /* all apps together */
    unsigned max_conns_per_app;
    unsigned max_conns_per_private;
};

/* Load STATE_DIR/apps.json and start listening for its apps. */
int registry_init(const char *state_dir, const char *bind_addr, int tunnel_port, int web_port,
                  const struct registry_limits *limits, char *err, size_t errlen);
/* Close every listener, end every tunnel, wait for them, free everything. */
void registry_shutdown(void);

/* Fill an app_spec from a JSON object (API body or HELLO entry). 0 or -1 with err. */
int registry_spec_from_json(json_t *obj, struct app_spec *spec, char *err, size_t errlen);

/* Register an app. Returns an HTTP status: 201 created, 200 unchanged (same app
 * asked again by its own private on reconnect), 400 bad request, 409 conflict,
 * 500 state not saved. err says why in words for a person. from_private allows
 * the private named in spec to replace its own app of the same name. */
int registry_register(const struct app_spec *spec, int from_private, char *err, size_t errlen);
/* 200, 404 or 500. */
int registry_unregister(const char *name, char *err, size_t errlen);

/* {"privates": [...], "apps": [...]}, a new reference. */
json_t *registry_list(void);
/* Prometheus text exposition; a malloc'd string. */
char *registry_metrics(void);

/* Tunnel lifecycle on the public side. private_known makes sure a record
 * exists (0, or -1 when there are too many); private_up puts the tunnel online
 * and replaces (kills) an older tunnel of the same name. */
int registry_private_known(const char *name);
void registry_private_up(const char *name, struct tunnel *t, const char *addr);
void registry_private_down(const char *name, struct tunnel *t);

#endif

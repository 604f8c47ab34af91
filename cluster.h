#ifndef CLUSTER_H
#define CLUSTER_H

/* Several public nodes sharing their registrations through Redis
 * (--cluster): the store the registry asks before it changes an app, the
 * node list every node refreshes, and the events that tell the other nodes
 * to read the apps again. The data path never comes here. See
 * docs/CLUSTER.md. */

#include <jansson.h>
#include <stdio.h>

#include "packet.h"

#define CLUSTER_SENTINELS_MAX 8
#define CLUSTER_SECRET_MAX 256

/* A parsed --cluster value. */
struct cluster_url {
    int sentinel;                        /* sentinel://: ask these for the primary */
    struct {
        char host[PKT_HOST_MAX + 1];
        int port;
    } hosts[CLUSTER_SENTINELS_MAX];      /* redis://: one */
    int nhosts;
    char master[PKT_NAME_MAX + 1];       /* sentinel://: the primary's name there */
    char user[PKT_NAME_MAX + 1];         /* "" none (AUTH with the password only) */
    char password[CLUSTER_SECRET_MAX];   /* "" none */
    int db;
    char shown[PKT_HOST_MAX * 2 + 64];   /* for logs and /list: no password */
};

/* Parse redis://[USER:PASSWORD@]HOST:PORT[/DB] or
 * sentinel://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER[/DB].
 * 0, or -1 with err. */
int cluster_parse_url(const char *s, struct cluster_url *u, char *err, size_t errlen);

/* Join the cluster: keep a connection to Redis (retried while it is down),
 * refresh this node's entry, follow the others. advertise: HOST:PORT the
 * private proxies dial; fingerprint: this node's certificate ("" without
 * TLS). Installs the registry's store. 0, or -1 with err (threads). */
int cluster_start(const struct cluster_url *u, const char *node, const char *advertise,
                  const char *fingerprint, char *err, size_t errlen);
/* Leave: this node's entry is deleted, the threads end. */
void cluster_stop(void);

/* This node's name, or NULL without --cluster. */
const char *cluster_node(void);
/* NODES for a tunnel (the live nodes), a new reference; NULL without
 * --cluster. */
json_t *cluster_nodes_packet(void);
/* /list's additions: "cluster", the nodes of each private, each app's
 * counters over the cluster (the store's address for the admin only).
 * Nothing without --cluster. */
void cluster_decorate_list(json_t *list, int admin);
/* /metrics' cluster gauges (nothing without --cluster). */
void cluster_metrics(FILE *f);

/* One node entry as Redis holds it (JSON text of len bytes, untrusted):
 * a new object with its members checked, or NULL. */
json_t *cluster_parse_node(const char *text, size_t len);

#endif

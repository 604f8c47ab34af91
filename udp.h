#ifndef UDP_H
#define UDP_H

/* UDP apps (protocol version 3): datagrams carried whole over the tunnel as
 * UDP_DATA operations, in sessions (docs/PROTOCOL.md).
 *
 * Public side: one socket per UDP app and one thread reading it. Each client
 * address:port is a session with an id chosen here; its first datagram (and
 * the first after a resume) carries "open" with the target.
 * Private side: one connected UDP socket per session towards the target, owned
 * by the session's own thread, which reads the target's replies.
 * Both sides: datagrams for the tunnel wait in a small bounded queue per
 * session, drained round-robin by one uplink thread per tunnel that writes
 * them in batches through the tunnel writer. A full queue drops its OLDEST
 * datagram: for games, voice and DNS retries a fresh datagram is worth more
 * than a stale one, and it bounds the delay a datagram can wait. Nothing that
 * reads a socket ever waits for the tunnel; datagrams from the tunnel are
 * written with MSG_DONTWAIT and dropped (counted) when the socket is full.
 * A session ends after udp_idle_timeout without a datagram either way. */

#include <stddef.h>
#include <stdint.h>

#include "packet.h"

struct tunnel;
struct udp_tun;
struct udp_app;
struct app_stats;
struct pkt;
struct sockaddr_storage;

#define UDP_SESSION_QUEUE_DGRAMS 256        /* waiting for the tunnel, per session */
#define UDP_SESSION_QUEUE_BYTES (512 * 1024)
#define UDP_QUEUE_BUDGET (64 * 1024 * 1024) /* all sessions of the process */
#define UDP_IDLE_DEFAULT 120                /* seconds */
#define UDP_SESSIONS_PER_APP_DEFAULT 4096
#define UDP_SESSIONS_DEFAULT 16384          /* all apps of the process */

/* --- per tunnel, used by tunnel.c --- */
struct udp_tun *udp_tun_new(struct tunnel *t, int is_public);
/* The tunnel ended: every session of it ends (no UDP_CLOSE is sent). */
void udp_tun_kill(struct udp_tun *u);
/* A new link is about to carry the session: every public session opens again
 * with its next datagram (an open in flight on the old link may be lost). */
void udp_tun_relinked(struct udp_tun *u);
/* After the tunnel's last reference: frees what is left. */
void udp_tun_free(struct udp_tun *u);
unsigned udp_tun_sessions(struct udp_tun *u);
/* The reader's handler for UDP_DATA and UDP_CLOSE: 0, or -1 with err for a
 * protocol error (the tunnel ends). */
int udp_dispatch(struct udp_tun *u, struct pkt *p, char *err, size_t errlen);

/* --- public side --- */

/* Where a new session goes: the app's target as registered now. */
struct udp_target {
    char host[PKT_HOST_MAX + 1];
    int port;
    unsigned idle_s;                /* PKT_IDLE_MIN..PKT_IDLE_MAX */
};

/* For a new session: the live tunnel of the app's private proxy with a
 * reference (tunnel_unref it) and the target in *to, or NULL when it is
 * offline. */
typedef struct tunnel *(*udp_tunnel_fn)(void *arg, struct udp_target *to);

struct udp_app_cfg {
    const char *name;
    struct app_stats *stats;        /* referenced while the app runs */
    udp_tunnel_fn tunnel;
    /* NULL, or whether a new session's client may send to the app (allow_from);
     * called for every datagram of a client that has no session, under no lock. */
    int (*allowed)(void *arg, const struct sockaddr_storage *peer);
    void *arg;                      /* for tunnel() and allowed(), until udp_app_stop returns */
};

/* Serve a UDP app on fd (a bound UDP socket; ownership taken, even on
 * failure). NULL with err on failure. */
struct udp_app *udp_app_start(int fd, const struct udp_app_cfg *cfg, char *err, size_t errlen);
/* Stop reading, end its sessions (telling the private side), free it. */
void udp_app_stop(struct udp_app *a);
/* Session limits of the public side (per app, all apps). */
void udp_set_public_limits(unsigned per_app, unsigned total);

/* --- private side --- */

/* Resolve host, check it is allowed, and return a connected non-blocking UDP
 * socket, or -1 with err. Runs on the session's thread. */
typedef int (*udp_connect_fn)(const char *host, int port, char *err, size_t errlen, void *arg);
/* How sessions reach their targets, and how many sessions and TCP connections
 * together a tunnel may have (proxy_private --max-conns). Before any tunnel;
 * the limit may change later. */
void udp_set_private(udp_connect_fn connect, void *arg, unsigned max_conns);
void udp_set_private_limit(unsigned max_conns);

#endif

#ifndef TUNNEL_H
#define TUNNEL_H

/* The tunnel: one TCP connection carrying operations for many relayed
 * connections, shared by both proxies.
 *
 * Threads and ownership:
 * - one reader per tunnel (the thread that calls tunnel_run) parses frames and
 *   dispatches them; it never writes to the tunnel, so two peers whose tunnel is
 *   full in both directions can never wait on each other;
 * - one heartbeat thread per tunnel sends PING;
 * - one relay thread per connection owns its socket: it reads the socket and
 *   sends DATA through the mutex-guarded writer (tunnel_send), writes what the
 *   reader queued for it, and sends ACK, SHUTDOWN and CLOSE. The reader wakes it
 *   with SIGUSR1 (no descriptor per connection).
 * With TLS the reader owns the receiving direction of the record layer and the
 * writer (under its mutex) the sending one (tls_records.h), so neither waits
 * for the other.
 * Tunnels and connections are reference counted; each is freed by its last user. */

#include <stdatomic.h>
#include <stdint.h>

#include "packet.h"

struct tunnel;
struct conn;

/* Counters of one app, shared by its connections and the web API. */
struct app_stats {
    _Atomic int refs;
    _Atomic uint64_t bytes_in;     /* client -> app */
    _Atomic uint64_t bytes_out;    /* app -> client */
    _Atomic uint64_t active;
    _Atomic uint64_t total;
    _Atomic uint64_t failures;     /* refused, offline, timed out */
    _Atomic uint64_t refused;      /* turned away by a connection limit */
};

struct app_stats *app_stats_new(void);
void app_stats_ref(struct app_stats *s);
void app_stats_unref(struct app_stats *s);

/* Called by the reader for operations the common code does not handle
 * (BUILD_CONNECTION on the private side). Return 0, or -1 to end the tunnel. */
typedef int (*tunnel_op_fn)(struct tunnel *t, struct pkt *p, void *arg);

/* Install the process-wide SIGUSR1 handler and block SIGUSR1, SIGINT, SIGTERM
 * in the calling thread (threads inherit it); ignore SIGPIPE. Call first in main. */
void tunnel_global_init(void);

/* Take ownership of a connected socket and, when not NULL, of the SSL object
 * whose handshake (tls_handshake) on it has completed: the tunnel takes its
 * record keys and frees it. On failure (NULL) both stay the caller's. The
 * peer's window is set later with tunnel_set_peer_window. */
typedef struct ssl_st SSL;
struct tunnel *tunnel_new(int fd, SSL *ssl, const char *name, const char *addr, int is_public);
void tunnel_ref(struct tunnel *t);
void tunnel_unref(struct tunnel *t);
void tunnel_set_peer_window(struct tunnel *t, uint32_t window);
/* Name the tunnel after its private proxy; only before it carries connections. */
void tunnel_set_name(struct tunnel *t, const char *name);
const char *tunnel_name(const struct tunnel *t);
const char *tunnel_addr(const struct tunnel *t);
int tunnel_is_dead(const struct tunnel *t);
/* The code of the ERROR the peer ended the tunnel with, or "" (reader thread,
 * or after tunnel_run returned). */
const char *tunnel_peer_error(const struct tunnel *t);

/* Read one frame during the handshake (limit PKT_MAX_HEADER_PREAUTH), waiting at
 * most timeout_ms. 1 = frame in *p (pkt_clear it), 0 = closed, -1 = error in err. */
int tunnel_read_handshake(struct tunnel *t, struct pkt *p, int timeout_ms, char *err,
                          size_t errlen);

/* Send one operation (hdr is consumed) and, for DATA, its payload. Thread-safe.
 * On failure the tunnel is killed and -1 returned. */
int tunnel_send(struct tunnel *t, json_t *hdr, const void *payload, size_t len);

/* Send ERROR{code, message} and end the tunnel. */
void tunnel_fail(struct tunnel *t, const char *code, const char *message);

/* Start the heartbeat thread; 0 or an error number. */
int tunnel_start_heartbeat(struct tunnel *t);

/* Reader loop: dispatch frames until the tunnel ends, then close every
 * connection of it. Returns after all that, with the reason in why. */
void tunnel_run(struct tunnel *t, tunnel_op_fn fn, void *arg, char *why, size_t whylen);

/* End the tunnel (idempotent): its socket is shut down and all its connections
 * are told to close. */
void tunnel_kill(struct tunnel *t, const char *reason);

/* Wait until nobody but the caller holds t (connections and the heartbeat have
 * ended), at most timeout_ms. 0 when idle, -1 on timeout. */
int tunnel_wait_idle(struct tunnel *t, int timeout_ms);

/* Number of connections open on the tunnel. */
unsigned tunnel_conn_count(struct tunnel *t);

/* Public side: relay an accepted client socket (ownership taken, even on
 * failure) to app's target through t. Sends BUILD_CONNECTION. 0 or -1. */
int conn_start_public(struct tunnel *t, int client_fd, const char *app, const char *host,
                      int port, struct app_stats *stats);

/* How the private side dials a target: a blocking fd, or -1 with err. */
typedef int (*conn_dial_fn)(const char *host, int port, int timeout_ms, char *err, size_t errlen,
                            void *arg);

/* Private side: dial host:port with dial(arg) for connection id and relay it.
 * Called by the reader; never writes to the tunnel itself. 0; -1 when the
 * connection could not be started (a CLOSE is queued); -2 when id is already
 * in use (the peer is broken: end the tunnel). */
int conn_start_private(struct tunnel *t, uint64_t id, const char *host, int port,
                       conn_dial_fn dial, void *arg);

#endif

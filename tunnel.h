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
 * With TLS, OpenSSL's record layer is shared by the reader and the writer
 * under one lock that nobody holds while waiting for the network (tls_io.h),
 * so a writer waiting for room on the socket never stops the reader.
 * Tunnels and connections are reference counted; each is freed by its last user.
 *
 * A tunnel is a session that may outlive its TCP connection (its link): with
 * protocol version 2 and a resume grace, a broken link suspends the session
 * instead of ending it, and a new link resumes it (docs/PROTOCOL.md). */

#include <sys/uio.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

#include "packet.h"

struct tunnel;
struct tunnel_link;
struct conn;

#define TUNNEL_SESSION_ID_LEN 32       /* hex digits */
#define TUNNEL_TOKEN_HEX_LEN 64

/* What a session went through, for /list and /metrics. */
struct tunnel_resume_stats {
    uint64_t suspensions;       /* links that broke while it could resume */
    uint64_t resumes;           /* resumes done */
    uint64_t conns_resumed;     /* connections carried over a resume */
    uint64_t conns_lost;        /* connections closed by a break */
    time_t suspended_since;     /* 0 when not suspended now */
};

/* How tunnel_run ended. */
enum tunnel_end {
    TUNNEL_ENDED,               /* the session is over (tunnel_kill happened) */
    TUNNEL_SUSPENDED,           /* the link broke; a new one may resume it */
};

/* Why a datagram of a UDP app was dropped (udp.c). */
enum udp_drop {
    UDP_DROP_OVERSIZE,          /* bigger than the socket on the far side can send */
    UDP_DROP_QUEUE_FULL,        /* its queue or a socket was full */
    UDP_DROP_SESSION_LIMIT,     /* it would have opened a session past a limit */
    UDP_DROP_UNREACHABLE,       /* the target refused it (ICMP error) or is not allowed */
    UDP_DROP_TUNNEL_DOWN,       /* no tunnel to carry it (offline, resuming, too old) */
    UDP_DROP_KINDS
};

/* Counters of one app, shared by its connections and the web API. For a UDP
 * app, active and total count sessions. */
struct app_stats {
    _Atomic int refs;
    _Atomic uint64_t bytes_in;     /* client -> app */
    _Atomic uint64_t bytes_out;    /* app -> client */
    _Atomic uint64_t active;
    _Atomic uint64_t total;
    _Atomic uint64_t failures;     /* refused, offline, timed out */
    _Atomic uint64_t refused;      /* turned away by a connection limit */
    _Atomic uint64_t dgrams_in;    /* UDP: datagrams from clients */
    _Atomic uint64_t dgrams_out;   /* UDP: datagrams to clients */
    _Atomic uint64_t drops[UDP_DROP_KINDS];
    /* FTP apps (ftp_data.c): the control connections are counted above, the
     * data connections in ftp_data (owned: freed with this one). */
    struct app_stats *ftp_data;
    _Atomic uint64_t ftp_tls;          /* control connections that went to TLS */
    _Atomic uint64_t ftp_data_refused; /* data connections from a wrong address */
    _Atomic uint64_t ftp_port_refused; /* PORT/EPRT naming another address (bounce) */
    _Atomic uint64_t ftp_no_port;      /* PASV/EPSV with no free data port */
    _Atomic uint64_t source_refused;   /* clients (UDP: datagrams) not in allow_from */
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
 * whose handshake (tls_handshake) on it has completed. On failure (NULL) both
 * stay the caller's. The peer's window is set later with tunnel_set_peer_window. */
typedef struct ssl_st SSL;
struct tunnel *tunnel_new(int fd, SSL *ssl, const char *name, const char *addr, int is_public);
void tunnel_ref(struct tunnel *t);
void tunnel_unref(struct tunnel *t);
void tunnel_set_peer_window(struct tunnel *t, uint32_t window);
/* Name the tunnel after its private proxy; only before it carries connections. */
void tunnel_set_name(struct tunnel *t, const char *name);
const char *tunnel_name(const struct tunnel *t);
/* Public side: the id of the scoped token the private authenticated with
 * ("" for the admin token); set before the tunnel carries connections. */
void tunnel_set_owner(struct tunnel *t, const char *owner);
const char *tunnel_owner(const struct tunnel *t);
/* The current link's peer "ip:port", copied into buf. */
const char *tunnel_addr(struct tunnel *t, char *buf, size_t cap);
int tunnel_is_dead(const struct tunnel *t);
/* "off" (plaintext), "on" (TLS in user space) or "ktls" (the kernel makes the
 * records we send), for log lines. */
const char *tunnel_tls_mode(const struct tunnel *t);
/* The code of the ERROR the peer ended the tunnel with, or "" (reader thread,
 * or after tunnel_run returned). */
const char *tunnel_peer_error(const struct tunnel *t);

/* Read one frame during the handshake (limit PKT_MAX_HEADER_PREAUTH) by
 * deadline_ms (mono_ms(), checked on every turn whatever arrives).
 * 1 = frame in *p (pkt_clear it), 0 = closed, -1 = error in err. */
int tunnel_read_handshake(struct tunnel *t, struct pkt *p, uint64_t deadline_ms, char *err,
                          size_t errlen);

/* Send one operation (hdr is consumed) and, for DATA, its payload. Thread-safe.
 * On failure the tunnel is killed and -1 returned. */
int tunnel_send(struct tunnel *t, json_t *hdr, const void *payload, size_t len);

/* Send frames already encoded (UDP batches), in one piece, if the link is
 * still the one of tunnel_link_epoch() == epoch. ndgram: the datagrams among
 * them, what they count against TCP while TCP is backlogged (tunnel.c,
 * fair_udp_write; frames of none always go). 0 sent; 1 not now,
 * TCP's turn (nothing sent); -1 (nothing sent, or the link broke). */
int tunnel_send_frames(struct tunnel *t, const unsigned char *frames, size_t len,
                       unsigned ndgram, uint64_t epoch);
/* The same for the frames in iov, only if they go at once: nobody else is
 * writing and the socket has room for all of them. 0 sent, 1 not now
 * (nothing sent), -1 the link is down or changed (nothing sent) or broke.
 * iov is used up. */
int tunnel_try_send_frames(struct tunnel *t, struct iovec *iov, int iovcnt, unsigned ndgram,
                           uint64_t epoch);
/* What relaying one datagram costs the machines beyond its bytes, in TCP
 * bytes relayed, when UDP and TCP share a CPU too busy for both: in the
 * benchmark's flood (bench/run.sh) a carried 1400-byte datagram took about
 * 10 KiB of TCP's speed, the flooding process's and the drops' share
 * included (tunnel.c, fair_udp_write, counts it twice). */
#define UDP_DGRAM_COST 16384
/* Whether UDP must wait for TCP now (TCP backlogged, no credit left). */
int tunnel_udp_throttled(struct tunnel *t);
/* Whether TCP data went through the link in the last moment (100 ms). */
int tunnel_tcp_busy(struct tunnel *t);
/* Changes each time the session gets a new link. */
uint64_t tunnel_link_epoch(struct tunnel *t);
/* The tunnel's UDP sessions (udp.h). */
struct udp_tun *tunnel_udp(struct tunnel *t);

/* Send ERROR{code, message} and end the tunnel. */
void tunnel_fail(struct tunnel *t, const char *code, const char *message);

/* Start the heartbeat thread; 0 or an error number. */
int tunnel_start_heartbeat(struct tunnel *t);

/* Reader loop: dispatch frames until the link ends, with the reason in why.
 * TUNNEL_ENDED: the session is over and every connection of it told to close.
 * TUNNEL_SUSPENDED: the link broke and the session waits for a resume (offer
 * a new link, then call tunnel_run again), or for tunnel_kill. */
enum tunnel_end tunnel_run(struct tunnel *t, tunnel_op_fn fn, void *arg, char *why,
                           size_t whylen);

/* --- resumption (protocol version 2) --- */

/* The negotiated version and resume grace (seconds; 0: a broken link ends the
 * session). Before the tunnel carries connections. */
void tunnel_set_version(struct tunnel *t, int version, unsigned grace_s);
int tunnel_version(const struct tunnel *t);
unsigned tunnel_grace_s(const struct tunnel *t);
/* Whether a broken link would suspend the session now. */
int tunnel_resumable(const struct tunnel *t);

/* Public side: a new session id and resumption token (hex into token_hex);
 * tunnel_rotate_token makes a new token only. 0 or -1. */
int tunnel_new_session(struct tunnel *t, char token_hex[TUNNEL_TOKEN_HEX_LEN + 1]);
int tunnel_rotate_token(struct tunnel *t, char token_hex[TUNNEL_TOKEN_HEX_LEN + 1]);
/* Private side: the id and token the public side gave. 0, or -1 if malformed. */
int tunnel_set_session(struct tunnel *t, const char *session_id, const char *token_hex);
const char *tunnel_session_id(const struct tunnel *t);
void tunnel_resume_token(const struct tunnel *t, char token_hex[TUNNEL_TOKEN_HEX_LEN + 1]);
/* 1 when session_id and token_hex are this session's (constant-time compare). */
int tunnel_resume_matches(const struct tunnel *t, const char *session_id, const char *token_hex);

/* mono_ms() by which a suspended session must be resumed. */
uint64_t tunnel_grace_deadline(struct tunnel *t);
/* Wait until a link is offered (0), or the session dies or deadline_ms
 * passes (-1). */
int tunnel_wait_link(struct tunnel *t, uint64_t deadline_ms);
/* Take the link out of a tunnel used only for a handshake (it keeps nothing). */
struct tunnel_link *tunnel_take_link(struct tunnel *t);
void tunnel_link_free(struct tunnel_link *l);
/* Give session t a new link (ownership taken, even on failure): its reader
 * installs it when it runs next; a link still up is given up first. 0, or -1
 * when t is dead. */
int tunnel_offer_link(struct tunnel *t, struct tunnel_link *l);
/* Send t's RESUME list over via (the new link, before it is offered). 0 or -1. */
int tunnel_send_resume_list(struct tunnel *t, struct tunnel *via);
void tunnel_resume_info(struct tunnel *t, struct tunnel_resume_stats *out);
/* What all connections of the process may retain for resumes (--resume-memory);
 * a connection that would go past it stops being resumable. Before any tunnel. */
void tunnel_set_retain_budget(size_t bytes);

/* End the tunnel (idempotent): its socket is shut down and all its connections
 * are told to close. */
void tunnel_kill(struct tunnel *t, const char *reason);

/* Wait until nobody but the caller holds t (connections and the heartbeat have
 * ended), at most timeout_ms. 0 when idle, -1 on timeout. */
int tunnel_wait_idle(struct tunnel *t, int timeout_ms);

/* Number of (TCP) connections open on the tunnel. */
unsigned tunnel_conn_count(struct tunnel *t);

/* Public side: relay an accepted client socket (ownership taken, even on
 * failure) to app's target through t. Sends BUILD_CONNECTION. 0 or -1. */
int conn_start_public(struct tunnel *t, int client_fd, const char *app, const char *host,
                      int port, struct app_stats *stats);

/* What a connection is to FTP (ftp_data.c), and a hook run when it is
 * freed. */
enum conn_ftp { CONN_FTP_NONE, CONN_FTP_CONTROL, CONN_FTP_DATA };
struct conn_opts {
    enum conn_ftp ftp;
    uint64_t ftp_ctl;           /* CONN_FTP_DATA: its control connection */
    uint32_t ftp_req;           /* ... and the request it answers */
    void (*on_end)(void *arg);  /* when not NULL: called once, when the connection is
                                   freed (also when it could not start) */
    void *end_arg;
    int proxy_protocol;         /* 1 or 2: BUILD_CONNECTION asks the private side to
                                   send the app a PROXY header (version 6) */
    struct sockaddr_storage client; /* public side: the client, when a PROXY header
                                   named it (--accept-proxy-from); ss_family 0: the
                                   socket's peer. BUILD_CONNECTION's "client",
                                   /connections and the FTP checks use it */
};

/* conn_start_public with options (o may be NULL): BUILD_CONNECTION then says
 * what the connection is to FTP. */
int conn_start_public_ex(struct tunnel *t, int client_fd, const char *app, const char *host,
                         int port, struct app_stats *stats, const struct conn_opts *o);

/* Public side: what connection id is (for the FTP operations). 0, or -1
 * when it is not (or no longer) open. */
struct conn_info {
    enum conn_ftp ftp;
    struct sockaddr_storage peer, local;    /* of its socket */
    char app[PKT_NAME_MAX + 1];
    char host[PKT_HOST_MAX + 1];
    int port;
    struct app_stats *stats;                /* a reference (app_stats_unref it), or NULL */
};
int tunnel_conn_info(struct tunnel *t, uint64_t id, struct conn_info *out);

/* Public side, for GET /connections: one open client connection. */
struct conn_brief {
    uint64_t id;
    char app[PKT_NAME_MAX + 1];
    struct sockaddr_storage peer;   /* family 0 when its socket is gone */
    time_t since;
    uint64_t bytes_in, bytes_out;   /* from the client, to the client */
};
/* Up to max of t's open connections into out (a caller's array, NULL when
 * max is 0); returns how many there are in all. */
unsigned tunnel_conns(struct tunnel *t, struct conn_brief *out, unsigned max);
/* Close connection id (the client's socket, and CLOSE to the peer) for why
 * (a string literal). 0, or -1 when there is no such connection. */
int tunnel_close_conn(struct tunnel *t, uint64_t id, const char *why);

/* How the private side dials a target: a blocking fd, or -1 with err. */
typedef int (*conn_dial_fn)(const char *host, int port, int timeout_ms, char *err, size_t errlen,
                            void *arg);

/* Private side: dial host:port with dial(arg) for connection id and relay it.
 * Called by the reader; never writes to the tunnel itself. 0; -1 when the
 * connection could not be started (a CLOSE is queued); -2 when id is already
 * in use (the peer is broken: end the tunnel). */
int conn_start_private(struct tunnel *t, uint64_t id, const char *host, int port,
                       conn_dial_fn dial, void *arg);
/* The same, and once the target answers, prefix[0..len) is written to it
 * before anything the client sent (a PROXY protocol header; copied). It is
 * written once, when the target is dialled: a resumed tunnel does not send
 * it again, the target's socket having stayed open. */
int conn_start_private_ex(struct tunnel *t, uint64_t id, const char *host, int port,
                          conn_dial_fn dial, void *arg, const unsigned char *prefix,
                          size_t prefix_len);

/* Private side, from the reader: turn BUILD_CONNECTION id down; a CLOSE with
 * reason (a string literal) is sent for it. */
void conn_refuse(struct tunnel *t, uint64_t id, const char *reason);

#endif

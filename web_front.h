#ifndef WEB_FRONT_H
#define WEB_FRONT_H

/* The front of the web port. Every connection to WEB_PORT, plain HTTP or
 * HTTPS (--web-https: TLS 1.3 by OpenSSL in this process; CivetWeb's own TLS
 * crashes with OpenSSL 3, see docs/SECURITY.md), passes it before CivetWeb
 * sees a byte; CivetWeb listens only on 127.0.0.1 at an internal port.
 *
 * What a connection gets:
 *   - WEB_FRONT_REQUEST_MS from the accept, one absolute deadline checked on
 *     every turn of the loop, for the TLS handshake and the WHOLE request:
 *     head (at most WEB_FRONT_HEAD_MAX bytes) and body (at most
 *     WEB_FRONT_BODY_MAX, by its Content-Length). Too slow: 408; too big:
 *     431/413; no Content-Length on POST/PUT/PATCH or Transfer-Encoding: 411;
 *     malformed, or conflicting Content-Length: 400 (web_head.c judges the
 *     head). The front answers those itself; CivetWeb never sees them.
 *   - A complete request goes to CivetWeb over loopback in one piece; its
 *     answer is read whole into memory (up to WEB_FRONT_ANSWER_MEM, streamed
 *     beyond that) within WEB_FRONT_UPSTREAM_MS, so CivetWeb's worker is free
 *     before the client reads a byte; the client then has
 *     WEB_FRONT_ANSWER_MS to take it. One request per connection.
 *   - From an --accept-proxy-from address (proxy_header.h): a PROXY header
 *     first, within PP_DEADLINE_MS of the accept (before TLS); the client it
 *     names is the connection's for the caps below, the rate limits, the
 *     handlers (web_front_client_addr) and the logs. No valid header: closed.
 *   - At most WEB_FRONT_MAX_CONNS connections at once and
 *     WEB_FRONT_MAX_PER_ADDR from one address (IPv4 address, IPv6 /64). No
 *     connection ever pushes out another: a newcomer over a limit gets a short
 *     503 (plain HTTP) or is closed (HTTPS: no handshake is spent on it).
 *
 * One acceptor thread and one thread per connection (netio's pooled 64 KiB
 * stack for plain HTTP, THREAD_STACK_SIZE_TLS for HTTPS; buffers on the heap).
 * SIGPIPE must be ignored before web_front_run() (tunnel_global_init() does):
 * OpenSSL writes with write(). */

#include <openssl/ssl.h>
#include <stddef.h>

#include "web_api.h"

#define WEB_FRONT_MAX_CONNS 256
#define WEB_FRONT_MAX_PER_ADDR 16
#define WEB_FRONT_REQUEST_MS 10000
#define WEB_FRONT_HEAD_MAX 8192
#define WEB_FRONT_BODY_MAX WEB_MAX_BODY
#define WEB_FRONT_UPSTREAM_MS 30000
#define WEB_FRONT_ANSWER_MEM (4u * 1024 * 1024)
#define WEB_FRONT_ANSWER_MS 30000

/* Header lines on every answer, the front's own and CivetWeb's (each ends in
 * CRLF). No keep-alive: one request per connection. */
#define WEB_SECURITY_HEADERS                                                                  \
    "Content-Security-Policy: default-src 'self'; frame-ancestors 'none'; base-uri 'none'; " \
    "form-action 'self'\r\n"                                                                  \
    "X-Frame-Options: DENY\r\n"                                                               \
    "X-Content-Type-Options: nosniff\r\n"                                                     \
    "Referrer-Policy: no-referrer\r\n"                                                        \
    "Cache-Control: no-store\r\n"                                                             \
    "Connection: close\r\n"

/* Listen on port at every address of binds (none: every address of both
 * families, net_listen_all), with
 * TLS when tls_ctx is not NULL (it stays the caller's and must outlive
 * web_front_stop()). No thread is started yet. 0, or -1 with a reason in err. */
struct net_binds;
int web_front_listen(SSL_CTX *tls_ctx, const struct net_binds *binds, int port, char *err,
                     size_t errlen);

/* Start accepting; complete requests go to 127.0.0.1:upstream_port. 0 or -1. */
int web_front_run(int upstream_port, char *err, size_t errlen);

/* Close the listener, end every connection and wait for their threads
 * (bounded: a few seconds). Safe to call when nothing was started. */
void web_front_stop(void);

/* The real client address of the front's connection that reaches CivetWeb
 * from up_addr:up_port (CivetWeb's remote_addr and remote_port: both must
 * match the local address and port of the front's socket), into out. 0 when
 * found, -1 when that connection is not the front's (it came to the internal
 * port directly, from a local user). */
int web_front_client_addr(const char *up_addr, int up_port, char *out, size_t cap);

#endif

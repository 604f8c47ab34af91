#ifndef WEB_TLS_H
#define WEB_TLS_H

/* HTTPS on the web port by a TLS front in this process (OpenSSL), relaying
 * plaintext to CivetWeb on a loopback-only internal port. CivetWeb does not
 * serve TLS itself: Debian 12's libcivetweb 1.15 crashes on its first HTTPS
 * request with OpenSSL 3 (see docs/SECURITY.md).
 *
 * Limits: WEB_TLS_MAX_CONNS connections at once (when full, a new connection
 * takes the place of the oldest one that has not yet sent a whole request head);
 * the TLS handshake and the request head must arrive within
 * WEB_TLS_HEAD_TIMEOUT_MS; then WEB_TLS_IDLE_MS without progress, or
 * WEB_TLS_MAX_LIFE_MS in all, end a connection.
 *
 * OpenSSL writes to the socket with write(): SIGPIPE must be ignored before
 * web_tls_run() (tunnel_global_init() does). */

#include <openssl/ssl.h>
#include <stddef.h>

#define WEB_TLS_MAX_CONNS 64
#define WEB_TLS_HEAD_TIMEOUT_MS 10000
#define WEB_TLS_HEAD_MAX 8192
#define WEB_TLS_IDLE_MS 15000
#define WEB_TLS_MAX_LIFE_MS 120000

/* Listen on bind_addr:port (bind_addr NULL or "" = all IPv4 addresses). No
 * thread is started yet. 0, or -1 with a reason in err. ctx stays the caller's
 * and must outlive web_tls_stop(). */
int web_tls_listen(SSL_CTX *ctx, const char *bind_addr, int port, char *err, size_t errlen);

/* Start accepting; plaintext goes to 127.0.0.1:upstream_port. 0 or -1. */
int web_tls_run(int upstream_port, char *err, size_t errlen);

/* Close the listener, end every connection and wait for their threads
 * (bounded: a few seconds). Safe to call when nothing was started. */
void web_tls_stop(void);

/* The real client address of the front's connection that reaches CivetWeb from
 * 127.0.0.1:local_port, into out. 0 when found, -1 when that connection is not
 * the front's (then it came to the internal port directly). */
int web_tls_client_addr(int local_port, char *out, size_t cap);

#endif

#ifndef WEB_API_H
#define WEB_API_H

/* The public side's web port, served by CivetWeb: the HTTP API of docs/API.md,
 * /metrics, and the page embedded from web/. */

#include <openssl/ssl.h>
#include <stddef.h>

/* Serve the web port on bind_addr:port (bind_addr NULL or "" = all IPv4
 * addresses). https_ctx NULL: plain HTTP by CivetWeb. Otherwise HTTPS: the TLS
 * front of web_tls.c listens on the port and CivetWeb only on 127.0.0.1 at an
 * internal port; https_ctx stays the caller's and must outlive web_stop().
 * 0, or -1 with a reason in err. */
int web_start(const char *bind_addr, int port, const char *token, SSL_CTX *https_ctx, char *err,
              size_t errlen);

/* Stop the TLS front (waiting for its connections, bounded) and CivetWeb. */
void web_stop(void);

/* Constant-time comparison of a presented secret with the expected one. */
int web_token_equal(const char *given, size_t given_len, const char *expected);

#endif

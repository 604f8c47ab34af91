#ifndef DIAG_H
#define DIAG_H

/* Hints for the log when the tunnel cannot start: what the peer's first bytes
 * say about what it is. Pointing proxy_private at the web port, or TLS on one
 * side only, fail with OpenSSL's or the frame reader's words ("wrong version
 * number", "Connection reset by peer", "header length 1213486160 ..."), which
 * say nothing about the cause; these functions turn them into a sentence. */

#include <openssl/ssl.h>

struct diag_peek {
    unsigned char first[5];     /* the first TLS record header received */
    int n;
};

/* Watch ssl's incoming record headers (OpenSSL's message callback) into pk,
 * which must outlive the handshake. */
void diag_tls_watch(SSL *ssl, struct diag_peek *pk);

/* The hint for a failed TLS handshake as the client (proxy_private), from
 * what the peer sent and OpenSSL's error text. */
const char *diag_tls_client_hint(const struct diag_peek *pk, const char *err);

/* The hint for a failed plaintext handshake (--insecure-plaintext) as the
 * client, from the frame reader's error text; NULL when there is none. */
const char *diag_plain_client_hint(const char *err);

#endif

#ifndef TLS_H
#define TLS_H

/* TLS for the tunnel and the web port (OpenSSL, TLS 1.3 only).
 *
 * The public side keeps a key and a self-signed certificate in its state
 * directory (created on first start) unless the user brings their own. Private
 * sides pin the certificate by its SHA-256 fingerprint: given on the command
 * line, or trusted on first use and remembered in a known_hosts file. */

#include <openssl/ssl.h>
#include <stddef.h>
#include <stdint.h>

/* "AB:CD:...": 32 bytes as 95 characters plus NUL. */
#define TLS_FP_LEN 96

struct state_dir;

/* Server context from cert_file/key_file, or, when both are NULL, from
 * STATE_DIR/tls.crt and STATE_DIR/tls.key (created when missing; *created tells),
 * read through the checked state directory (see state.h). A key_file that
 * every user may read, or a cert_file/key_file that group or others may
 * write, is refused; a group-readable key_file is logged as a warning.
 * fp receives the certificate's SHA-256 fingerprint. NULL with err on failure. */
SSL_CTX *tls_server_ctx(const struct state_dir *sd, const char *cert_file, const char *key_file,
                        char fp[TLS_FP_LEN], int *created, char *err, size_t errlen);

/* Client context: TLS 1.3, no CA check (the peer is pinned by fingerprint). */
SSL_CTX *tls_client_ctx(char *err, size_t errlen);

/* Fingerprint of the peer's certificate; 0 or -1 when it sent none. */
int tls_peer_fingerprint(SSL *ssl, char fp[TLS_FP_LEN]);

/* Normalise a user-given fingerprint (any case, with or without colons, an
 * optional "SHA256:" prefix) to the "AB:CD:..." form. 0 or -1 when malformed. */
int tls_normalize_fingerprint(const char *in, char out[TLS_FP_LEN]);

/* Trust on first use: look hostport up in file. 1 = known and equal,
 * 0 = unknown and now remembered, -1 = known with ANOTHER fingerprint (or the
 * file cannot be used); err says which, *old gets the remembered one. The file
 * is refused (-1) when it is a symbolic link, not a regular file, owned by
 * someone other than us or root, or writable by group or others. */
int tls_known_hosts_check(const char *file, const char *hostport, const char *fp,
                          char old[TLS_FP_LEN], char *err, size_t errlen);

/* Run the TLS handshake on fd (server or client side) until deadline_ms
 * (mono_ms()), checked on every turn, however slowly the peer trickles bytes.
 * The socket is left non-blocking for tls_io_new. 0 on success, -1 with a
 * reason in err. */
int tls_handshake(SSL *ssl, int fd, int is_server, uint64_t deadline_ms, char *err,
                  size_t errlen);

/* The reason for the last OpenSSL failure of this thread, for a log line. */
const char *tls_error_string(char *buf, size_t cap);

#endif

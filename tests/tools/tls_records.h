#ifndef TLS_RECORDS_H
#define TLS_RECORDS_H

/* TLS 1.3 records after the handshake, without OpenSSL's record layer.
 *
 * OpenSSL does the handshake (certificate, key exchange, Finished); then the
 * tunnel takes the two application traffic secrets and protects its records
 * itself, exactly as RFC 8446 section 5 says: AEAD records of at most 16 KiB,
 * per-record nonces from a sequence number, KeyUpdate both ways. This is what
 * kernel TLS does when the kernel has it (this machine's kernel does not), and
 * it is what makes the tunnel fast: the reader and the writer each own one
 * direction, so they never share a lock; a frame is encrypted straight from
 * the relay buffer into one write(); records are decrypted straight into the
 * frame buffer. On the wire nothing changes: any TLS 1.3 peer reads these
 * records (tests/unit/test_tls_records.c checks it against OpenSSL's own).
 *
 * The handshake must read no more than it needs (read-ahead off) and no
 * session tickets may follow it; tls_handshake() sets both up. */

#include <openssl/ssl.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

#define TLSREC_MAX_PLAIN 16384                 /* RFC 8446 5.1: 2^14 */
#define TLSREC_MAX_CIPHER (TLSREC_MAX_PLAIN + 256)
#define TLSREC_HEADER 5
#define TLSREC_TAG 16
/* Records a key protects before the writer moves to the next one (RFC 8446
 * 5.5 allows AES-GCM about 2^24.5 full records). */
#define TLSREC_REKEY_RECORDS (1u << 23)

struct tls_records;

/* On ctx: ask OpenSSL to hand the traffic secrets to us (keylog callback). */
void tls_records_ctx_init(SSL_CTX *ctx);

/* Before the handshake on ssl: somewhere to keep its secrets. 0 or -1. */
int tls_records_prepare(SSL *ssl);

/* After a completed handshake: the record state of both directions. ssl is
 * not used afterwards and may be freed. NULL with err when the handshake left
 * data behind or the secrets are missing. */
struct tls_records *tls_records_new(SSL *ssl, int is_server, char *err, size_t errlen);
void tls_records_free(struct tls_records *r);

/* Testing hook: rotate the sending key every `records` records. */
void tls_records_set_rekey_interval(struct tls_records *r, unsigned records);

/* Most bytes tls_records_seal() can produce for len bytes of data. */
size_t tls_records_seal_bound(size_t len);

/* Writer side (one thread at a time): encrypt the concatenation of iov[] into
 * records in out (tls_records_seal_bound() bytes), including any KeyUpdate
 * that is due. Returns the bytes written to out, or -1. */
ssize_t tls_records_seal(struct tls_records *r, const struct iovec *iov, int iovcnt,
                         unsigned char *out);

/* TEST/FUZZ HOOK ONLY (fuzz/fuzz_tls_records.c), never used by the tunnel:
 * seal msg[0..len) as one record whose inner content type byte is `type`,
 * under the writer's current key, with no KeyUpdate check. type 0 makes the
 * last bytes of msg the real type and padding. out needs len + 22 bytes;
 * len <= TLSREC_MAX_CIPHER - 17. Returns the bytes written, or -1. */
ssize_t tls_records_seal_type(struct tls_records *r, unsigned char type, const void *msg,
                              size_t len, unsigned char *out);

/* Reader side (one thread at a time): recv() of plaintext from blocking fd.
 * >0 bytes of application data, 0 at the peer's close_notify or end of the
 * stream, -1 with errno: EAGAIN/EINTR from the socket (try again), EPROTO for
 * a record that is malformed or fails authentication, ECONNRESET for an alert. */
ssize_t tls_records_recv(struct tls_records *r, int fd, void *buf, size_t len);

/* Parse-only entry for the fuzzer: feed raw bytes as if read from the socket.
 * Same results as tls_records_recv (EAGAIN: a record is incomplete). Bytes
 * beyond the free room of the input buffer (256 KiB) are dropped: read
 * everything out before feeding more. */
ssize_t tls_records_feed(struct tls_records *r, const unsigned char *data, size_t n, void *buf,
                         size_t len);

/* For tests and the fuzzer: both directions keyed from one 32-byte secret
 * and cipher suite id (0x1301, 0x1302, 0x1303); a sender and a receiver made
 * from the same arguments talk to each other. */
struct tls_records *tls_records_new_from_secret(const unsigned char secret[32], int suite);

#endif

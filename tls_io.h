#ifndef TLS_IO_H
#define TLS_IO_H

/* TLS on the tunnel after the handshake: OpenSSL's own record layer
 * (SSL_read/SSL_write), shared by the tunnel's reader and writers.
 *
 * One mutex guards the SSL object, so it is never used by two threads at once
 * (openssl-threads(7)), and nobody ever waits for the network while holding
 * it: sends never block, SSL_write's records are gathered in a staging buffer
 * of ours (a BIO that never says "retry"), and whatever the socket does not
 * take at once stays there until tls_io_flush() sends it; the reader receives
 * into a buffer of ours without the mutex and lets OpenSSL take the records
 * from there. So the reader can always decrypt what arrives while a writer
 * waits for room on the socket, a writer never waits for a reader that waits
 * for the network, and the records of one frame leave in one send().
 *
 * A peer may not keep the reader busy with records that carry no data: after
 * TLS_IO_MAX_NODATA records in a row without application data (empty records,
 * KeyUpdates, ...) the stream is refused, before and after the handshake. */

#include <openssl/ssl.h>
#include <stddef.h>
#include <sys/types.h>

#define TLS_IO_MAX_NODATA 32
/* Longest a read waits for the socket before it says EAGAIN. */
#define TLS_IO_WAIT_MS 1000

struct tls_io;

/* Take over ssl, whose handshake on fd has completed (tls_handshake). fd is
 * made blocking with a receive timeout of TLS_IO_WAIT_MS (non-blocking when
 * OpenSSL writes to it itself, as with kernel TLS). On failure (NULL, reason
 * in err) ssl stays the caller's. */
struct tls_io *tls_io_new(SSL *ssl, int fd, char *err, size_t errlen);
/* Frees the SSL object too; the socket stays the caller's. */
void tls_io_free(struct tls_io *io);

/* Reader (one thread): plaintext into buf, waiting at most about
 * TLS_IO_WAIT_MS for the socket (one receive a call). >0 bytes; 0 at the
 * peer's close_notify; -1 with errno EAGAIN (nothing complete yet: call
 * again), EPIPE (the stream ended without close_notify), EPROTO (a malformed,
 * forged or refused record; too many records without data), EBADMSG (the peer
 * sent an alert), or the socket's own error (ECONNRESET, ETIMEDOUT, ...).
 * tls_io_error() then says which in words. */
ssize_t tls_io_read(struct tls_io *io, void *buf, size_t len);

/* Writer (callers serialise their frames): encrypt buf[0..len) into records and
 * send what the socket takes now. 1 all sent, 0 some left (wait for POLLOUT,
 * then tls_io_flush until it says 1; buf must stay as it is until then), -1
 * error (errno). Only call once the previous frame is all sent. */
int tls_io_write(struct tls_io *io, const void *buf, size_t len);
/* Send staged bytes: 1 nothing left, 0 some left, -1 error (errno). */
int tls_io_flush(struct tls_io *io);

/* Whether the kernel makes the records we send (kernel TLS). */
int tls_io_ktls(const struct tls_io *io);

/* Queue close_notify and send it if the socket takes it now (best effort,
 * never waits). Nothing is sent after a fatal TLS error. */
void tls_io_close_notify(struct tls_io *io);

/* Whether a read found the stream broken for good (a forged or malformed
 * record, an alert): the writers' failures that follow are its echo, and the
 * reader reports the reason. */
int tls_io_read_failed(struct tls_io *io);

/* The reason for the last failure of tls_io_read/write/flush, for a log line,
 * copied into buf. Returns buf. */
const char *tls_io_error(struct tls_io *io, char *buf, size_t cap);

#endif

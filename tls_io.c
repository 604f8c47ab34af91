/* tls_io.c - the tunnel's TLS after the handshake, on OpenSSL's record layer.
 *
 * See tls_io.h for the promises. How:
 * - io->lock guards the SSL object and the staging buffer. Every OpenSSL
 *   call on the tunnel happens under it, and nothing under it waits: the
 *   socket is non-blocking.
 * - Only the tunnel's writer (one at a time: the callers hold the tunnel's
 *   writer lock) sends staged records, and it lets go of io->lock while the
 *   send() runs (on loopback the kernel delivers to the peer and wakes it
 *   inside that call): the reader's SSL_read does not wait for it. Meanwhile
 *   (io->sending) the staged bytes being sent stay where they are, and what
 *   the reader's OpenSSL calls make (an alert, a KeyUpdate's answer) is
 *   appended after them.
 * - The write BIO is ours: OpenSSL's records are appended to io->out instead
 *   of being written one 16 KiB record per write(); after each SSL_write the
 *   buffer goes to the socket in one send(). The BIO never asks for a retry,
 *   so OpenSSL never has a half-written record of ours pending (no retry
 *   rules to keep), and a record made while reading (an alert) simply joins
 *   the queue in order.
 * - Reads go through OpenSSL's socket BIO with read-ahead: one recv() takes
 *   many records.
 * - With kernel TLS for sending, records are the kernel's work: OpenSSL
 *   writes through its own socket BIO, and a write the socket cannot take
 *   stays pending inside OpenSSL, to be retried with the same bytes
 *   (io->pend) by tls_io_flush. PROXY_TLS_DIRECT_WRITES=1 selects that path
 *   without kernel TLS too (the tests use it on kernels without TLS).
 * - A message callback counts the records that arrive; SSL_read returning data
 *   resets the count. More than TLS_IO_MAX_NODATA in a row ends the stream. */

#include "tls_io.h"

#include <errno.h>
#include <openssl/err.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "netio.h"
#include "packet.h"

/* One frame's records (PKT_MAX_FRAME of plaintext: at most 22 bytes of
 * overhead per 16 KiB record) plus room for alerts and a KeyUpdate. */
#define OUT_CAP (PKT_MAX_FRAME + 64 * 1024)

struct tls_io {
    SSL *ssl;
    int fd;
    pthread_mutex_t lock;
    unsigned char *out;         /* staged records: out[off..len) not yet sent */
    size_t out_len, out_off;
    int sending;                /* a send() of out[off..) runs without the lock */
    unsigned nodata;            /* records received since the last data */
    int direct;                 /* OpenSSL writes to the socket itself (kernel TLS) */
    int ktls_tx;                /* ... and the kernel makes the records */
    const unsigned char *pend;  /* direct: the frame being written (the caller's) */
    size_t pend_len, pend_done;
    int fatal;                  /* OpenSSL reported a fatal error: no close_notify */
    int read_failed;            /* ... on a read (the stream itself is bad) */
    char err[200];
};

/* --------------------------------------------------------- the write BIO */

static BIO_METHOD *out_method;
static pthread_once_t out_once = PTHREAD_ONCE_INIT;

static int out_write(BIO *b, const char *data, size_t len, size_t *written)
{
    struct tls_io *io = BIO_get_data(b);

    /* Compact first: staged bytes that were sent leave room at the front. */
    if (io->out_off > 0 && !io->sending && io->out_len + len > OUT_CAP) {
        memmove(io->out, io->out + io->out_off, io->out_len - io->out_off);
        io->out_len -= io->out_off;
        io->out_off = 0;
    }
    if (io->out_len + len > OUT_CAP)
        return 0; /* cannot happen with callers that flush between frames */
    memcpy(io->out + io->out_len, data, len);
    io->out_len += len;
    *written = len;
    return 1;
}

static long out_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    struct tls_io *io = BIO_get_data(b);

    (void)num;
    (void)ptr;
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1; /* the tunnel sends the staging buffer itself */
    case BIO_CTRL_WPENDING:
        return io ? (long)(io->out_len - io->out_off) : 0;
    default:
        return 0;
    }
}

static int out_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static void out_method_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "tunnel-out");

    if (m && BIO_meth_set_write_ex(m, out_write) == 1 && BIO_meth_set_ctrl(m, out_ctrl) == 1 &&
        BIO_meth_set_create(m, out_create) == 1) {
        out_method = m;
        return;
    }
    BIO_meth_free(m);
}

/* ------------------------------------------------------ record counting */

static void on_message(int write_p, int version, int content_type, const void *buf, size_t len,
                       SSL *ssl, void *arg)
{
    struct tls_io *io = arg;

    (void)version;
    (void)buf;
    (void)len;
    (void)ssl;
    if (!write_p && content_type == SSL3_RT_HEADER && io->nodata < UINT32_MAX / 2)
        io->nodata++;
}

/* ------------------------------------------------------------------ api */

struct tls_io *tls_io_new(SSL *ssl, int fd, char *err, size_t errlen)
{
    struct tls_io *io = NULL;
    BIO *b = NULL;

    pthread_once(&out_once, out_method_init);
    if (!out_method) {
        snprintf(err, errlen, "cannot set up the TLS write buffer");
        return NULL;
    }
    io = calloc(1, sizeof(*io));
    if (!io) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    io->ktls_tx = BIO_get_ktls_send(SSL_get_wbio(ssl)) == 1;
    io->direct = io->ktls_tx || (getenv("PROXY_TLS_DIRECT_WRITES") &&
                                 strcmp(getenv("PROXY_TLS_DIRECT_WRITES"), "1") == 0);
    if (!io->direct && (!(io->out = malloc(OUT_CAP)) || !(b = BIO_new(out_method)))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (net_set_nonblock(fd, 1) != 0) {
        snprintf(err, errlen, "cannot make the tunnel socket non-blocking");
        goto fail;
    }
    io->ssl = ssl;
    io->fd = fd;
    pthread_mutex_init(&io->lock, NULL);
    if (io->direct) {
        SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    } else {
        BIO_set_data(b, io);
        /* The socket BIO made by SSL_set_fd stays the read BIO. */
        SSL_set0_wbio(ssl, b);
    }
    SSL_set_msg_callback(ssl, on_message);
    SSL_set_msg_callback_arg(ssl, io);
    return io;
fail:
    BIO_free(b);
    if (io)
        free(io->out);
    free(io);
    return NULL;
}

void tls_io_free(struct tls_io *io)
{
    if (!io)
        return;
    SSL_free(io->ssl);
    pthread_mutex_destroy(&io->lock);
    if (io->out)
        OPENSSL_cleanse(io->out, OUT_CAP); /* records only, but nothing lingers */
    free(io->out);
    free(io);
}

/* Under io->lock: the reason of a failed OpenSSL call into io->err and errno. */
static void fail_locked(struct tls_io *io, int sslerr)
{
    unsigned long e = ERR_peek_error();
    int reason = ERR_GET_REASON(e);
    char buf[120];

    /* The first fatal error is the reason: after it OpenSSL refuses every
     * call, with SSL_ERROR_SYSCALL and an empty error queue, which would
     * read as a stream ended without close_notify. A writer that comes
     * after a refused record must not overwrite the reader's reason. */
    if (io->fatal) {
        ERR_clear_error();
        errno = EPROTO;
        return;
    }
    if (sslerr == SSL_ERROR_SYSCALL && !e && errno && errno != EAGAIN) {
        int saved = errno; /* a reset or a timeout of the socket: kept as it is */
        snprintf(io->err, sizeof(io->err), "%s", strerror(saved));
        errno = saved;
    } else if (sslerr == SSL_ERROR_SYSCALL && !e) {
        snprintf(io->err, sizeof(io->err), "stream ended without TLS close_notify");
        errno = EPIPE;
    } else if (sslerr == SSL_ERROR_SSL && reason == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
        snprintf(io->err, sizeof(io->err), "stream ended without TLS close_notify");
        errno = EPIPE;
    } else if (sslerr == SSL_ERROR_SSL && ERR_GET_LIB(e) == ERR_LIB_SSL &&
               reason >= SSL_AD_REASON_OFFSET && reason < SSL_AD_REASON_OFFSET + 256) {
        ERR_error_string_n(e, buf, sizeof(buf));
        snprintf(io->err, sizeof(io->err), "peer sent a TLS alert (%s)", buf);
        errno = EBADMSG;
        io->fatal = 1;
    } else {
        ERR_error_string_n(e, buf, sizeof(buf));
        snprintf(io->err, sizeof(io->err),
                 "TLS record malformed or not authentic (corrupted or forged): %s",
                 e ? buf : "unknown error");
        errno = EPROTO;
        io->fatal = 1;
    }
    ERR_clear_error();
}

ssize_t tls_io_read(struct tls_io *io, void *buf, size_t len)
{
    size_t n = 0;
    ssize_t rc = -1;
    int r, e = 0;

    pthread_mutex_lock(&io->lock);
    ERR_clear_error();
    errno = 0;
    r = SSL_read_ex(io->ssl, buf, len, &n);
    /* The count includes the record that brought the data, if any. */
    if (io->nodata > TLS_IO_MAX_NODATA + (r == 1)) {
        snprintf(io->err, sizeof(io->err), "more than %d TLS records in a row without data",
                 TLS_IO_MAX_NODATA);
        io->fatal = 1;
        ERR_clear_error();
        errno = EPROTO;
        goto out;
    }
    if (r == 1) {
        io->nodata = 0;
        rc = (ssize_t)n;
        goto out;
    }
    e = SSL_get_error(io->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        errno = EAGAIN;
    } else if (e == SSL_ERROR_ZERO_RETURN) {
        rc = 0;
    } else {
        fail_locked(io, e);
    }
out:
    if (rc < 0 && io->fatal)
        io->read_failed = 1;
    pthread_mutex_unlock(&io->lock);
    return rc;
}

int tls_io_read_failed(struct tls_io *io)
{
    int r;

    pthread_mutex_lock(&io->lock);
    r = io->read_failed;
    pthread_mutex_unlock(&io->lock);
    return r;
}

int tls_io_has_pending(struct tls_io *io)
{
    int p;

    pthread_mutex_lock(&io->lock);
    p = SSL_has_pending(io->ssl);
    pthread_mutex_unlock(&io->lock);
    return p;
}

/* Under io->lock, direct writes: go on with io->pend until it is all written
 * (1) or the socket is full (0). A write OpenSSL could not finish is retried
 * with the same bytes, as SSL_write requires. */
static int push_direct_locked(struct tls_io *io)
{
    while (io->pend_done < io->pend_len) {
        size_t w = 0;
        int r;
        ERR_clear_error();
        r = SSL_write_ex(io->ssl, io->pend + io->pend_done, io->pend_len - io->pend_done, &w);
        if (r == 1) {
            io->pend_done += w;
            continue;
        }
        r = SSL_get_error(io->ssl, r);
        if (r == SSL_ERROR_WANT_WRITE || r == SSL_ERROR_WANT_READ) {
            ERR_clear_error();
            return 0;
        }
        fail_locked(io, r);
        return -1;
    }
    io->pend = NULL;
    io->pend_len = io->pend_done = 0;
    return 1;
}

/* Under io->lock, called by the tunnel's writer only: send staged bytes
 * until done or the socket is full, without the lock during each send(). */
static int flush_locked(struct tls_io *io)
{
    if (io->direct)
        return io->pend ? push_direct_locked(io) : 1;
    while (io->out_off < io->out_len) {
        const unsigned char *from = io->out + io->out_off;
        size_t n = io->out_len - io->out_off;
        ssize_t w;
        int e;

        io->sending = 1;
        pthread_mutex_unlock(&io->lock);
        w = send(io->fd, from, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        e = errno;
        pthread_mutex_lock(&io->lock);
        io->sending = 0;
        if (w < 0) {
            if (e == EINTR)
                continue;
            errno = e;
            if (e == EAGAIN || e == EWOULDBLOCK)
                return 0;
            snprintf(io->err, sizeof(io->err), "write: %s", strerror(e));
            return -1;
        }
        io->out_off += (size_t)w;
    }
    io->out_off = io->out_len = 0;
    return 1;
}

int tls_io_write(struct tls_io *io, const void *buf, size_t len)
{
    size_t done = 0;
    int rc = -1, r;

    pthread_mutex_lock(&io->lock);
    if (io->fatal) {
        /* OpenSSL must not be called again after a fatal error. */
        errno = EPROTO;
        goto out;
    }
    if (io->direct) {
        io->pend = buf;
        io->pend_len = len;
        io->pend_done = 0;
        rc = push_direct_locked(io);
        goto out;
    }
    ERR_clear_error();
    r = SSL_write_ex(io->ssl, buf, len, &done);
    if (r != 1 || done != len) {
        fail_locked(io, SSL_get_error(io->ssl, r));
        goto out;
    }
    rc = flush_locked(io);
out:
    pthread_mutex_unlock(&io->lock);
    return rc;
}

int tls_io_flush(struct tls_io *io)
{
    int rc;

    pthread_mutex_lock(&io->lock);
    rc = flush_locked(io);
    pthread_mutex_unlock(&io->lock);
    return rc;
}

void tls_io_close_notify(struct tls_io *io)
{
    pthread_mutex_lock(&io->lock);
    /* Not in the middle of a direct write: the alert would have to wait. */
    if (!io->fatal && !io->pend && !(SSL_get_shutdown(io->ssl) & SSL_SENT_SHUTDOWN)) {
        ERR_clear_error();
        (void)SSL_shutdown(io->ssl);
        ERR_clear_error();
        (void)flush_locked(io);
    }
    pthread_mutex_unlock(&io->lock);
}

int tls_io_ktls(const struct tls_io *io)
{
    return io->ktls_tx;
}

const char *tls_io_error(struct tls_io *io, char *buf, size_t cap)
{
    pthread_mutex_lock(&io->lock);
    snprintf(buf, cap, "%s", io->err[0] ? io->err : "TLS error");
    pthread_mutex_unlock(&io->lock);
    return buf;
}

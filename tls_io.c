/* tls_io.c - the tunnel's TLS after the handshake, on OpenSSL's record layer.
 *
 * See tls_io.h for the promises. How:
 * - io->lock guards the SSL object and the staging buffer. Every OpenSSL
 *   call on the tunnel happens under it, and nothing under it waits for the
 *   network: sends never block, and the reader waits with the lock released.
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
 * - Reads come from our own buffer too (a read BIO over io->in): the reader
 *   fills it with one recv() of up to IN_CAP bytes, without io->lock (so the
 *   writers never wait for a reader that waits for the network), and OpenSSL
 *   then takes each record from it without read-ahead. (With read-ahead,
 *   OpenSSL 3.0 moves the unread rest of its buffer to the front before every
 *   record, which for a full buffer copies it several times over.) Only the
 *   reader calls SSL_read and recv() into io->in, and only when OpenSSL has
 *   taken everything in it; the read BIO answers "retry" while it is empty.
 * - The socket is blocking (sends use MSG_DONTWAIT) and the reader's recv()
 *   waits at most TLS_IO_WAIT_MS (SO_RCVTIMEO); with direct writes (below) it
 *   is non-blocking and the reader polls that long first.
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
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>

#include "netio.h"
#include "packet.h"

/* One frame's records (PKT_MAX_FRAME of plaintext: at most 22 bytes of
 * overhead per 16 KiB record) plus room for alerts and a KeyUpdate. */
#define OUT_CAP (PKT_MAX_FRAME + 64 * 1024)
/* Received bytes not yet taken by OpenSSL: what one recv() may bring. */
#define IN_CAP (128 * 1024)

struct tls_io {
    SSL *ssl;
    int fd;
    pthread_mutex_t lock;
    unsigned char *out;         /* staged records: out[off..len) not yet sent */
    size_t out_len, out_off;
    int sending;                /* a send() of out[off..) runs without the lock */
    unsigned char *in;          /* received: in[off..len) not yet taken by OpenSSL */
    size_t in_len, in_off;
    int in_eof;                 /* the socket's stream has ended */
    unsigned nodata;            /* records received since the last data */
    int direct;                 /* OpenSSL writes to the socket itself (kernel TLS) */
    int ktls_tx;                /* ... and the kernel makes the records */
    const unsigned char *pend;  /* direct: the frame being written (the caller's) */
    size_t pend_len, pend_done;
    int fatal;                  /* OpenSSL reported a fatal error: no close_notify */
    int read_failed;            /* ... on a read (the stream itself is bad) */
    char err[200];
};

/* ------------------------------------------------------------- the BIOs */

static BIO_METHOD *out_method, *in_method;
static pthread_once_t methods_once = PTHREAD_ONCE_INIT;

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

/* The read BIO: what the reader received, record by record to OpenSSL. */
static int in_read(BIO *b, char *data, size_t len, size_t *readbytes)
{
    struct tls_io *io = BIO_get_data(b);
    size_t n = io->in_len - io->in_off;

    BIO_clear_retry_flags(b);
    *readbytes = 0;
    if (n == 0) {
        if (!io->in_eof)
            BIO_set_retry_read(b); /* the reader receives more, then calls again */
        return 0;
    }
    if (n > len)
        n = len;
    memcpy(data, io->in + io->in_off, n);
    io->in_off += n;
    *readbytes = n;
    return 1;
}

static long in_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    struct tls_io *io = BIO_get_data(b);

    (void)num;
    (void)ptr;
    switch (cmd) {
    case BIO_CTRL_EOF: /* asked when a read gave nothing and no retry */
        return io && io->in_eof && io->in_off == io->in_len;
    case BIO_CTRL_PENDING:
        return io ? (long)(io->in_len - io->in_off) : 0;
    case BIO_CTRL_FLUSH:
        return 1;
    default:
        return 0;
    }
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static void methods_init(void)
{
    BIO_METHOD *o = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "tunnel-out");
    BIO_METHOD *i = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "tunnel-in");

    if (o && i && BIO_meth_set_write_ex(o, out_write) == 1 &&
        BIO_meth_set_ctrl(o, out_ctrl) == 1 && BIO_meth_set_create(o, bio_create) == 1 &&
        BIO_meth_set_read_ex(i, in_read) == 1 && BIO_meth_set_ctrl(i, in_ctrl) == 1 &&
        BIO_meth_set_create(i, bio_create) == 1) {
        out_method = o;
        in_method = i;
        return;
    }
    BIO_meth_free(o);
    BIO_meth_free(i);
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

/* The thread's error queue must be empty before an OpenSSL I/O call, or
 * SSL_get_error misreads it. ERR_clear_error rewrites all sixteen slots of
 * the queue every time (a sixth of OpenSSL's time on a small-record ping-pong
 * here); looking first costs one read of the queue's ends. */
static void err_clear_if_any(void)
{
    if (ERR_peek_error() != 0)
        ERR_clear_error();
}

struct tls_io *tls_io_new(SSL *ssl, int fd, char *err, size_t errlen)
{
    struct timeval tv = {.tv_sec = TLS_IO_WAIT_MS / 1000,
                         .tv_usec = TLS_IO_WAIT_MS % 1000 * 1000};
    struct tls_io *io = NULL;
    BIO *b = NULL, *in = NULL;

    pthread_once(&methods_once, methods_init);
    if (!out_method || !in_method) {
        snprintf(err, errlen, "cannot set up the TLS buffers");
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
    if (!(io->in = malloc(IN_CAP)) || !(in = BIO_new(in_method)) ||
        (!io->direct && (!(io->out = malloc(OUT_CAP)) || !(b = BIO_new(out_method))))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    /* Direct writes go through OpenSSL's socket BIO, which must not block. */
    if (net_set_nonblock(fd, io->direct) != 0 ||
        (!io->direct && setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0)) {
        snprintf(err, errlen, "cannot set up the tunnel socket: %s", strerror(errno));
        goto fail;
    }
    io->ssl = ssl;
    io->fd = fd;
    pthread_mutex_init(&io->lock, NULL);
    if (io->direct) {
        SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    } else {
        BIO_set_data(b, io);
        SSL_set0_wbio(ssl, b);
    }
    /* Bytes the handshake read ahead stay in OpenSSL's buffer and come first.
     * From now on OpenSSL reads each record exactly, from io->in; its buffer
     * no longer needs the handshake's read-ahead size (freed when empty, and
     * made again at the smallest size). */
    BIO_set_data(in, io);
    SSL_set0_rbio(ssl, in);
    SSL_set_read_ahead(ssl, 0);
    SSL_set_default_read_buffer_len(ssl, 0);
    (void)SSL_free_buffers(ssl);
    SSL_set_msg_callback(ssl, on_message);
    SSL_set_msg_callback_arg(ssl, io);
    return io;
fail:
    BIO_free(b);
    BIO_free(in);
    if (io) {
        free(io->out);
        free(io->in);
    }
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
    if (io->in)
        OPENSSL_cleanse(io->in, IN_CAP);
    free(io->in);
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

/* Under io->lock, by the reader when OpenSSL has taken all of io->in: wait
 * for the socket (at most TLS_IO_WAIT_MS) and receive into io->in, without the
 * lock. 1 received (or the stream ended: io->in_eof), 0 nothing in time (errno
 * EAGAIN), -1 the socket's error (errno, io->err). */
static int receive_locked(struct tls_io *io)
{
    ssize_t n;
    int e;

    pthread_mutex_unlock(&io->lock);
    if (io->direct) {
        struct pollfd pfd = {.fd = io->fd, .events = POLLIN};
        (void)poll(&pfd, 1, TLS_IO_WAIT_MS);
    }
    n = recv(io->fd, io->in, IN_CAP, 0);
    e = errno;
    pthread_mutex_lock(&io->lock);
    if (n >= 0) {
        io->in_off = 0;
        io->in_len = (size_t)n;
        io->in_eof = n == 0;
        return 1;
    }
    errno = e;
    if (e == EAGAIN || e == EWOULDBLOCK || e == EINTR) {
        errno = EAGAIN;
        return 0;
    }
    snprintf(io->err, sizeof(io->err), "%s", strerror(e));
    return -1;
}

ssize_t tls_io_read(struct tls_io *io, void *buf, size_t len)
{
    size_t n = 0;
    ssize_t rc = -1;
    int r, e = 0, received = 0;

    pthread_mutex_lock(&io->lock);
    for (;;) {
        /* Nothing for OpenSSL to take (all of io->in taken, no part of a
         * record kept inside it): receive first instead of a call that can
         * only answer "want read". After a fatal error OpenSSL answers at
         * once, without waiting for the network. */
        if (!received && !io->fatal && io->in_off == io->in_len && !io->in_eof &&
            !SSL_has_pending(io->ssl)) {
            received = 1;
            if (receive_locked(io) != 1)
                goto out;
        }
        err_clear_if_any();
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
        /* One recv() a call: the caller looks at its deadline in between. */
        if (e == SSL_ERROR_WANT_READ && !received && io->in_off == io->in_len && !io->in_eof) {
            received = 1;
            if (receive_locked(io) == 1)
                continue;
            goto out;
        }
        break;
    }
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

/* Under io->lock, direct writes: go on with io->pend until it is all written
 * (1) or the socket is full (0). A write OpenSSL could not finish is retried
 * with the same bytes, as SSL_write requires. */
static int push_direct_locked(struct tls_io *io)
{
    while (io->pend_done < io->pend_len) {
        size_t w = 0;
        int r;
        err_clear_if_any();
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
    err_clear_if_any();
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

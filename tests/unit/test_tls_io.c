/* test_tls_io.c - tls_io.c against OpenSSL used the ordinary way.
 *
 * Each test runs a real TLS 1.3 handshake (tls_handshake() with the tunnel's
 * contexts) over a socketpair. The server side then uses tls_io (both write
 * paths: the gathering buffer, and direct writes as with kernel TLS), the
 * client side plain SSL_read/SSL_write in a thread on a blocking socket.
 * Covered: frames larger than the socket buffer while the peer reads slowly
 * (writes that must wait and resume), data both ways byte-exact, KeyUpdate
 * requests answered, close_notify both ways, a stream cut without
 * close_notify, records without data refused after TLS_IO_MAX_NODATA, and a
 * reader waiting for the network never holding up a writer. */

#include "unit.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <stdatomic.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "netio.h"
#include "state.h"
#include "tls.h"
#include "tls_io.h"

#define PATTERN(i) ((unsigned char)((i) * 7 + ((i) >> 9)))

struct pair {
    SSL_CTX *sctx, *cctx;
    SSL *srv, *cli;
    int sfd, cfd;
    char dir[64];
    int srv_ok;
};

static void *server_handshake(void *arg)
{
    struct pair *p = arg;
    char err[200];

    p->srv_ok = tls_handshake(p->srv, p->sfd, 1, mono_ms() + 10000, err, sizeof(err)) == 0;
    if (!p->srv_ok)
        fprintf(stderr, "  server handshake: %s\n", err);
    return NULL;
}

/* A finished handshake on a socketpair; the client's socket blocking again.
 * 0 or -1. */
static int pair_open(struct pair *p)
{
    char err[200], fp[TLS_FP_LEN];
    struct state_dir sd;
    int sv[2], made = 0, ok;
    pthread_t th;

    memset(p, 0, sizeof(*p));
    p->sfd = p->cfd = -1;
    snprintf(p->dir, sizeof(p->dir), "/tmp/unit-tlsio-XXXXXX");
    if (!mkdtemp(p->dir) || socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
        return -1;
    p->sfd = sv[0];
    p->cfd = sv[1];
    if (state_dir_open(&sd, p->dir, err, sizeof(err)) != 0) {
        fprintf(stderr, "  state dir: %s\n", err);
        return -1;
    }
    p->sctx = tls_server_ctx(&sd, NULL, NULL, fp, &made, err, sizeof(err));
    state_dir_close(&sd);
    p->cctx = tls_client_ctx(err, sizeof(err));
    if (!p->sctx || !p->cctx) {
        fprintf(stderr, "  contexts: %s\n", err);
        return -1;
    }
    p->srv = SSL_new(p->sctx);
    p->cli = SSL_new(p->cctx);
    if (!p->srv || !p->cli)
        return -1;
    if (pthread_create(&th, NULL, server_handshake, p) != 0)
        return -1;
    ok = tls_handshake(p->cli, p->cfd, 0, mono_ms() + 10000, err, sizeof(err)) == 0;
    if (!ok)
        fprintf(stderr, "  client handshake: %s\n", err);
    pthread_join(th, NULL);
    if (ok && net_set_nonblock(p->cfd, 0) != 0)
        ok = 0;
    return ok && p->srv_ok ? 0 : -1;
}

/* pair_open, then tls_io on the server side: direct writes (as with kernel
 * TLS) or the gathering buffer. NULL when either failed (reported). */
static struct tls_io *pair_start(struct pair *p, int direct)
{
    struct tls_io *io;
    char err[200];

    if (direct)
        setenv("PROXY_TLS_DIRECT_WRITES", "1", 1);
    else
        unsetenv("PROXY_TLS_DIRECT_WRITES");
    if (pair_open(p) != 0) {
        CHECK(0, "handshake failed");
        return NULL;
    }
    io = tls_io_new(p->srv, p->sfd, err, sizeof(err));
    CHECK(io != NULL, "tls_io_new: %s", err);
    return io;
}

static void pair_close(struct pair *p, struct tls_io *io)
{
    char cmd[128];

    if (io)
        tls_io_free(io); /* frees p->srv */
    else
        SSL_free(p->srv);
    SSL_free(p->cli);
    SSL_CTX_free(p->sctx);
    SSL_CTX_free(p->cctx);
    if (p->sfd >= 0)
        close(p->sfd);
    if (p->cfd >= 0)
        close(p->cfd);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", p->dir);
    if (p->dir[0] && system(cmd) != 0)
        fprintf(stderr, "  could not remove %s\n", p->dir);
}

/* Write all of buf through io, waiting for the socket like the tunnel does. */
static int io_write_all(struct tls_io *io, int fd, const unsigned char *buf, size_t len)
{
    int r = tls_io_write(io, buf, len);

    while (r == 0) {
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        if (poll(&pfd, 1, 10000) <= 0)
            return -1;
        r = tls_io_flush(io);
    }
    return r > 0 ? 0 : -1;
}

/* Read exactly len bytes through io (each read waits up to TLS_IO_WAIT_MS;
 * poll between, as the direct-write mode's socket is non-blocking). */
static int io_read_exact(struct tls_io *io, int fd, unsigned char *buf, size_t len)
{
    size_t got = 0;

    while (got < len) {
        ssize_t n = tls_io_read(io, buf + got, len - got);
        if (n > 0) {
            got += (size_t)n;
        } else if (n < 0 && errno == EAGAIN) {
            struct pollfd pfd = {.fd = fd, .events = POLLIN};
            if (poll(&pfd, 1, 10000) <= 0)
                return -1;
        } else {
            return -1;
        }
    }
    return 0;
}

/* Counts KeyUpdate messages the client receives. */
static void count_key_updates(int write_p, int version, int content_type, const void *buf,
                              size_t len, SSL *ssl, void *arg)
{
    (void)version;
    (void)ssl;
    if (!write_p && content_type == SSL3_RT_HANDSHAKE && len >= 1 &&
        ((const unsigned char *)buf)[0] == SSL3_MT_KEY_UPDATE)
        (*(int *)arg)++;
}

struct client_job {
    struct pair *p;
    size_t expect;          /* bytes to read and check against PATTERN */
    size_t send_back;       /* then bytes to send back (PATTERN), after a KeyUpdate */
    int ok;
    int got_zero_return;    /* then: the server's close_notify arrived */
    int key_updates_seen;   /* the server's answers to our KeyUpdate request */
};

/* The ordinary OpenSSL side: reads slowly (small reads with pauses) so the
 * server's socket fills, checks every byte, asks for a KeyUpdate, writes back,
 * then waits for close_notify. */
static void *client_main(void *arg)
{
    struct client_job *j = arg;
    unsigned char buf[4096];
    size_t got = 0;
    int bad = 0;

    while (got < j->expect) {
        size_t n = 0;
        if (SSL_read_ex(j->p->cli, buf, sizeof(buf), &n) != 1)
            goto out;
        for (size_t i = 0; i < n; i++)
            bad |= buf[i] != PATTERN(got + i);
        got += n;
        if ((got / 4096) % 64 == 0)
            usleep(200);
    }
    if (bad)
        goto out;
    if (SSL_key_update(j->p->cli, SSL_KEY_UPDATE_REQUESTED) != 1)
        goto out;
    for (size_t off = 0; off < j->send_back;) {
        size_t n = j->send_back - off < sizeof(buf) ? j->send_back - off : sizeof(buf), w = 0;
        for (size_t i = 0; i < n; i++)
            buf[i] = PATTERN(off + i);
        if (SSL_write_ex(j->p->cli, buf, n, &w) != 1)
            goto out;
        off += w;
    }
    /* After the server answered our KeyUpdate (it must, before its next
     * records), it sends a last message and close_notify. */
    {
        size_t n = 0;
        if (SSL_read_ex(j->p->cli, buf, sizeof(buf), &n) != 1 || n != 5 ||
            memcmp(buf, "after", 5) != 0)
            goto out;
        j->got_zero_return = SSL_read_ex(j->p->cli, buf, sizeof(buf), &n) != 1 &&
                             SSL_get_error(j->p->cli, 0) == SSL_ERROR_ZERO_RETURN;
    }
    j->ok = 1;
out:
    ERR_clear_error();
    return NULL;
}

static void run_interop(int direct)
{
    struct pair p;
    struct tls_io *io = NULL;
    struct client_job job;
    pthread_t th;
    char err[200];
    size_t total = 3 * 1024 * 1024, sent = 0, back = 300 * 1000;
    unsigned char *frame = malloc(300 * 1024), *in = malloc(back);

    CHECK(frame && in, "out of memory");
    if (!(io = pair_start(&p, direct)))
        goto out;
    CHECK(!tls_io_ktls(io), "kernel TLS on a socketpair?");
    memset(&job, 0, sizeof(job));
    job.p = &p;
    job.expect = total;
    job.send_back = back;
    SSL_set_msg_callback(p.cli, count_key_updates);
    SSL_set_msg_callback_arg(p.cli, &job.key_updates_seen);
    CHECK(pthread_create(&th, NULL, client_main, &job) == 0, "thread");
    /* Frames of varying sizes, up to more than the socket buffer holds. */
    for (unsigned k = 0; sent < total; k++) {
        size_t n = (size_t)(k * 7919u % (300 * 1024)) + 1;
        if (n > total - sent)
            n = total - sent;
        for (size_t i = 0; i < n; i++)
            frame[i] = PATTERN(sent + i);
        if (io_write_all(io, p.sfd, frame, n) != 0) {
            CHECK(0, "write failed after %zu bytes: %s", sent, tls_io_error(io, err, sizeof(err)));
            break;
        }
        sent += n;
    }
    CHECK(io_read_exact(io, p.sfd, in, back) == 0, "read back: %s",
          tls_io_error(io, err, sizeof(err)));
    for (size_t i = 0; i < back; i++)
        if (in[i] != PATTERN(i)) {
            CHECK(0, "byte %zu read back wrong", i);
            break;
        }
    CHECK(io_write_all(io, p.sfd, (const unsigned char *)"after", 5) == 0, "last write");
    tls_io_close_notify(io);
    pthread_join(th, NULL);
    CHECK(job.ok, "the OpenSSL peer saw a bad byte, a broken record or no KeyUpdate answer");
    CHECK(job.got_zero_return, "close_notify did not arrive");
    CHECK(job.key_updates_seen == 1, "the KeyUpdate request got %d answers, not 1",
          job.key_updates_seen);
out:
    pair_close(&p, io);
    free(frame);
    free(in);
}

void test_tls_io_interop(void)
{
    run_interop(0);
}

void test_tls_io_interop_direct(void)
{
    run_interop(1);
}

/* A peer that sends n KeyUpdates without data, then (when then_data) one byte. */
static void run_nodata(unsigned n, int then_data, int expect_refused, int direct)
{
    struct pair p;
    struct tls_io *io = NULL;
    unsigned char b = 0;
    char err[200];
    ssize_t r = -1;

    if (!(io = pair_start(&p, direct)))
        goto out;
    for (unsigned i = 0; i < n; i++)
        CHECK(SSL_key_update(p.cli, SSL_KEY_UPDATE_NOT_REQUESTED) == 1 &&
                  SSL_do_handshake(p.cli) == 1,
              "client KeyUpdate %u", i);
    if (then_data)
        CHECK(SSL_write(p.cli, "x", 1) == 1, "client write");
    else
        CHECK(SSL_shutdown(p.cli) >= 0, "client close_notify");
    for (int tries = 0; tries < 1000; tries++) {
        struct pollfd pfd = {.fd = p.sfd, .events = POLLIN};
        r = tls_io_read(io, &b, 1);
        if (r >= 0 || errno != EAGAIN)
            break;
        (void)poll(&pfd, 1, 1000);
    }
    if (expect_refused) {
        CHECK(r < 0 && errno == EPROTO, "%u records without data were accepted (r=%zd)", n, r);
        CHECK(strstr(tls_io_error(io, err, sizeof(err)), "without data") != NULL, "reason: %s",
              err);
    } else if (then_data) {
        CHECK(r == 1 && b == 'x', "data after %u KeyUpdates not read (r=%zd: %s)", n, r,
              tls_io_error(io, err, sizeof(err)));
    } else {
        CHECK(r == 0, "close_notify after %u KeyUpdates not seen as the end (r=%zd)", n, r);
    }
out:
    ERR_clear_error();
    pair_close(&p, io);
}

void test_tls_io_records_without_data(void)
{
    for (int direct = 0; direct < 2; direct++) {
        run_nodata(10, 1, 0, direct);                    /* a few: fine */
        run_nodata(TLS_IO_MAX_NODATA - 2, 1, 0, direct); /* just under the limit, then data */
        run_nodata(TLS_IO_MAX_NODATA + 8, 1, 1, direct); /* over it: refused even with data */
        run_nodata(TLS_IO_MAX_NODATA + 8, 0, 1, direct);
    }
}

static void run_cut(int direct)
{
    struct pair p;
    struct tls_io *io = NULL;
    unsigned char b;
    char err[200];
    ssize_t r = -1;

    if (!(io = pair_start(&p, direct)))
        goto out;
    shutdown(p.cfd, SHUT_WR); /* a bare FIN, no close_notify */
    for (int tries = 0; tries < 100; tries++) {
        struct pollfd pfd = {.fd = p.sfd, .events = POLLIN};
        r = tls_io_read(io, &b, 1);
        if (r >= 0 || errno != EAGAIN)
            break;
        (void)poll(&pfd, 1, 1000);
    }
    CHECK(r < 0 && errno == EPIPE, "a bare FIN was taken as close_notify (r=%zd)", r);
    CHECK(strstr(tls_io_error(io, err, sizeof(err)), "close_notify") != NULL, "reason: %s", err);
out:
    pair_close(&p, io);
}

void test_tls_io_cut_without_close_notify(void)
{
    run_cut(0);
    run_cut(1);
}

struct reader_job {
    struct tls_io *io;
    atomic_int entered, returned;
    ssize_t r;
    unsigned char b;
};

static void *reader_main(void *arg)
{
    struct reader_job *j = arg;

    atomic_store(&j->entered, 1);
    j->r = tls_io_read(j->io, &j->b, 1);
    atomic_store(&j->returned, 1);
    return NULL;
}

/* While the reader waits for the quiet socket (up to TLS_IO_WAIT_MS), a
 * writer's frame goes out at once: it must not wait for the reader's wait. */
static void run_reader_waits(int direct)
{
    struct pair p;
    struct tls_io *io = NULL;
    struct reader_job job;
    pthread_t th;
    unsigned char frame[1024], got[sizeof(frame)];
    char err[200];
    int started = 0, returned_before;
    size_t n = 0;

    memset(frame, 'w', sizeof(frame));
    if (!(io = pair_start(&p, direct)))
        goto out;
    memset(&job, 0, sizeof(job));
    job.io = io;
    started = pthread_create(&th, NULL, reader_main, &job) == 0;
    CHECK(started, "thread");
    if (!started)
        goto out;
    while (!atomic_load(&job.entered))
        usleep(1000);
    usleep(50 * 1000); /* inside its wait by now */
    CHECK(tls_io_write(io, frame, sizeof(frame)) == 1, "write: %s",
          tls_io_error(io, err, sizeof(err)));
    returned_before = atomic_load(&job.returned);
    CHECK(!returned_before, "the reader's wait ended before the write could go (r=%zd)", job.r);
    CHECK(SSL_read_ex(p.cli, got, sizeof(got), &n) == 1 && n == sizeof(got) &&
              memcmp(got, frame, n) == 0,
          "the peer did not get the frame");
    CHECK(SSL_write(p.cli, "r", 1) == 1, "peer write");
    pthread_join(th, NULL);
    /* The byte may come with this call or, after its wait ended, the next. */
    if (job.r < 0 && errno == EAGAIN)
        for (int tries = 0; tries < 10 && job.r < 0; tries++)
            job.r = tls_io_read(io, &job.b, 1);
    CHECK(job.r == 1 && job.b == 'r', "the reader did not get the peer's byte (r=%zd: %s)", job.r,
          tls_io_error(io, err, sizeof(err)));
out:
    ERR_clear_error();
    pair_close(&p, io);
}

void test_tls_io_reader_waits_alone(void)
{
    run_reader_waits(0);
    run_reader_waits(1);
}

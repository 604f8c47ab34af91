/* test_tls_records.c - tls_records.c against itself and against OpenSSL.
 *
 * Each test runs a real TLS 1.3 handshake (tls_handshake() with the tunnel's
 * contexts) over a socketpair, then moves data with our record layer on one
 * side or both. When the other side keeps using OpenSSL's SSL_read/SSL_write,
 * the test shows that what we write is TLS 1.3 as OpenSSL understands it,
 * KeyUpdate and close_notify included, in both roles and for all three
 * cipher suites. */

#include "unit.h"

#include <errno.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "tls.h"
#include "tls_records.h"

static const char *suites[] = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                               "TLS_CHACHA20_POLY1305_SHA256"};

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

    p->srv_ok = tls_handshake(p->srv, p->sfd, 1, 10000, err, sizeof(err)) == 0;
    if (!p->srv_ok)
        fprintf(stderr, "  server handshake: %s\n", err);
    return NULL;
}

/* A finished handshake on a socketpair with the given suite; 0 or -1. */
static int pair_open(struct pair *p, const char *suite)
{
    char err[200], fp[TLS_FP_LEN];
    int sv[2], made = 0, ok;
    pthread_t th;

    memset(p, 0, sizeof(*p));
    p->sfd = p->cfd = -1;
    snprintf(p->dir, sizeof(p->dir), "/tmp/unit-tlsrec-XXXXXX");
    if (!mkdtemp(p->dir) || socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
        return -1;
    p->sfd = sv[0];
    p->cfd = sv[1];
    p->sctx = tls_server_ctx(p->dir, NULL, NULL, fp, &made, err, sizeof(err));
    p->cctx = tls_client_ctx(err, sizeof(err));
    if (!p->sctx || !p->cctx) {
        fprintf(stderr, "  contexts: %s\n", err);
        return -1;
    }
    p->srv = SSL_new(p->sctx);
    p->cli = SSL_new(p->cctx);
    if (!p->srv || !p->cli || SSL_set_ciphersuites(p->cli, suite) != 1)
        return -1;
    if (pthread_create(&th, NULL, server_handshake, p) != 0)
        return -1;
    ok = tls_handshake(p->cli, p->cfd, 0, 10000, err, sizeof(err)) == 0;
    if (!ok)
        fprintf(stderr, "  client handshake: %s\n", err);
    pthread_join(th, NULL);
    return ok && p->srv_ok ? 0 : -1;
}

static void pair_close(struct pair *p)
{
    char cmd[128];

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

/* Seal len bytes (split across two iovecs at cut) and write them all. */
static int seal_send(struct tls_records *r, int fd, const unsigned char *data, size_t len,
                     size_t cut)
{
    struct iovec iov[2] = {{(void *)data, cut}, {(void *)(data + cut), len - cut}};
    unsigned char *out = malloc(tls_records_seal_bound(len));
    ssize_t n;
    size_t off = 0;
    int rc = -1;

    if (!out)
        return -1;
    n = tls_records_seal(r, iov, 2, out);
    if (n < 0 || (size_t)n > tls_records_seal_bound(len))
        goto out;
    while (off < (size_t)n) {
        ssize_t w = write(fd, out + off, (size_t)n - off);
        if (w <= 0)
            goto out;
        off += (size_t)w;
    }
    rc = 0;
out:
    free(out);
    return rc;
}

/* Read exactly len bytes through our records, chunk bytes per call at most. */
static int recv_exact(struct tls_records *r, int fd, unsigned char *buf, size_t len, size_t chunk)
{
    size_t got = 0;

    while (got < len) {
        size_t want = len - got < chunk ? len - got : chunk;
        ssize_t n = tls_records_recv(r, fd, buf + got, want);
        if (n <= 0)
            return -1;
        if ((size_t)n > want)
            return -1;
        got += (size_t)n;
    }
    return 0;
}

static int ssl_read_exact(SSL *ssl, unsigned char *buf, size_t len)
{
    size_t got = 0;

    while (got < len) {
        size_t n = 0;
        if (SSL_read_ex(ssl, buf + got, len - got, &n) != 1)
            return -1;
        got += n;
    }
    return 0;
}

/* Our records on both ends: sizes around the record limit, split writes,
 * small and large reader buffers, and a KeyUpdate every few records. */
void test_tlsrec_self(void)
{
    static unsigned char data[300 * 1024], back[300 * 1024];
    static const size_t sizes[] = {1, 2, 100, 16383, 16384, 16385, 40000, 65536};
    static const size_t chunks[] = {1, 7, 4096, 16384, 300 * 1024};

    RAND_bytes(data, sizeof(data));
    for (size_t s = 0; s < sizeof(suites) / sizeof(suites[0]); s++) {
        struct pair p;
        char err[200];
        struct tls_records *a = NULL, *b = NULL;

        CHECK(pair_open(&p, suites[s]) == 0, "handshake with %s", suites[s]);
        a = tls_records_new(p.cli, 0, err, sizeof(err));
        b = tls_records_new(p.srv, 1, err, sizeof(err));
        CHECK(a && b, "take over: %s", err);
        if (!a || !b)
            goto next;
        tls_records_set_rekey_interval(a, 3);
        for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
            size_t len = sizes[i], chunk = chunks[i % (sizeof(chunks) / sizeof(chunks[0]))];
            /* Both ways; the writer runs ahead of the reader by at most one
             * message, which the socketpair's buffer holds (larger frames:
             * test_tlsrec_large_frame, with a reader thread). */
            CHECK(seal_send(a, p.cfd, data, len, len / 3) == 0, "%s: send %zu", suites[s], len);
            memset(back, 0, len);
            CHECK(recv_exact(b, p.sfd, back, len, chunk) == 0 && memcmp(back, data, len) == 0,
                  "%s: %zu bytes client->server, read %zu at a time", suites[s], len, chunk);
            CHECK(seal_send(b, p.sfd, data + 1, len, 0) == 0, "%s: send back %zu", suites[s], len);
            CHECK(recv_exact(a, p.cfd, back, len, chunk) == 0 && memcmp(back, data + 1, len) == 0,
                  "%s: %zu bytes server->client", suites[s], len);
        }
    next:
        tls_records_free(a);
        tls_records_free(b);
        pair_close(&p);
    }
}

/* We write records, OpenSSL reads them, and the other way round; in both
 * roles, with KeyUpdates from each side and close_notify at the end. */
static void interop(int we_are_server, const char *suite)
{
    unsigned char data[60000], back[60000];
    struct pair p;
    char err[200];
    struct tls_records *r = NULL;
    SSL *them;
    int our_fd, rounds;

    RAND_bytes(data, sizeof(data));
    CHECK(pair_open(&p, suite) == 0, "handshake with %s", suite);
    them = we_are_server ? p.cli : p.srv;
    our_fd = we_are_server ? p.sfd : p.cfd;
    r = tls_records_new(we_are_server ? p.srv : p.cli, we_are_server, err, sizeof(err));
    CHECK(r != NULL, "take over: %s", err);
    if (!r)
        goto out;
    tls_records_set_rekey_interval(r, 2);
    for (rounds = 0; rounds < 6; rounds++) {
        size_t len = rounds == 0 ? 1 : (size_t)(rounds * 9973) % sizeof(data) + 1;
        size_t n = 0;
        /* Ours -> OpenSSL: includes our KeyUpdate(update_requested) every
         * two records, which OpenSSL must accept and answer. */
        CHECK(seal_send(r, our_fd, data, len, len / 2) == 0, "%s: seal %zu", suite, len);
        CHECK(ssl_read_exact(them, back, len) == 0 && memcmp(back, data, len) == 0,
              "%s round %d: OpenSSL did not read our %zu bytes", suite, rounds, len);
        /* OpenSSL -> ours, sometimes after it asked for a key update. */
        if (rounds % 2 == 1)
            CHECK(SSL_key_update(them, SSL_KEY_UPDATE_REQUESTED) == 1, "%s: key update", suite);
        CHECK(SSL_write_ex(them, data + 7, len, &n) == 1 && n == len, "%s: SSL_write", suite);
        memset(back, 0, len);
        CHECK(recv_exact(r, our_fd, back, len, 5000) == 0 && memcmp(back, data + 7, len) == 0,
              "%s round %d: we did not read OpenSSL's %zu bytes", suite, rounds, len);
    }
    /* OpenSSL's close_notify is an orderly end for us. */
    CHECK(SSL_shutdown(them) >= 0, "%s: SSL_shutdown", suite);
    CHECK(tls_records_recv(r, our_fd, back, sizeof(back)) == 0, "%s: close_notify not seen as the end",
          suite);
    CHECK(tls_records_recv(r, our_fd, back, sizeof(back)) == 0, "%s: the end does not stay", suite);
out:
    tls_records_free(r);
    pair_close(&p);
}

void test_tlsrec_openssl_interop(void)
{
    for (size_t s = 0; s < sizeof(suites) / sizeof(suites[0]); s++) {
        interop(0, suites[s]);
        interop(1, suites[s]);
    }
}

struct big_reader {
    struct tls_records *r;
    int fd;
    unsigned char *buf;
    size_t len;
    int ok;
};

static void *big_reader_main(void *arg)
{
    struct big_reader *b = arg;

    b->ok = recv_exact(b->r, b->fd, b->buf, b->len, 1 << 20) == 0;
    return NULL;
}

/* A tunnel-sized frame (several hundred KiB) in one seal, read by a second
 * thread while it is written. */
void test_tlsrec_large_frame(void)
{
    size_t len = 262144 + 600;
    unsigned char *data = malloc(len), *back = calloc(1, len);
    struct big_reader br = {0};
    struct pair p;
    char err[200];
    pthread_t th;

    CHECK(data && back, "memory");
    if (!data || !back)
        goto out_mem;
    RAND_bytes(data, (int)len);
    CHECK(pair_open(&p, suites[0]) == 0, "handshake");
    br.r = tls_records_new(p.srv, 1, err, sizeof(err));
    br.fd = p.sfd;
    br.buf = back;
    br.len = len;
    {
        struct tls_records *w = tls_records_new(p.cli, 0, err, sizeof(err));
        CHECK(w && br.r, "take over: %s", err);
        if (w && br.r && pthread_create(&th, NULL, big_reader_main, &br) == 0) {
            CHECK(seal_send(w, p.cfd, data, len, 300) == 0, "send");
            pthread_join(th, NULL);
            CHECK(br.ok && memcmp(back, data, len) == 0, "large frame arrived intact");
        }
        tls_records_free(w);
    }
    tls_records_free(br.r);
    pair_close(&p);
out_mem:
    free(data);
    free(back);
}

/* A flipped bit anywhere in a record, a truncated stream, a record from the
 * wrong key: refused (EPROTO) or the end, never wrong data, and it stays so. */
void test_tlsrec_tamper(void)
{
    unsigned char secret[32], other[32], msg[3000], out[4000], back[4000];
    struct iovec iov = {msg, sizeof(msg)};

    RAND_bytes(secret, sizeof(secret));
    RAND_bytes(other, sizeof(other));
    RAND_bytes(msg, sizeof(msg));
    for (int suite = 0x1301; suite <= 0x1303; suite++) {
        struct tls_records *tx = tls_records_new_from_secret(secret, suite);
        ssize_t n = tx ? tls_records_seal(tx, &iov, 1, out) : -1;
        CHECK(n > 0, "seal %#x", suite);
        if (n <= 0) {
            tls_records_free(tx);
            continue;
        }
        for (ssize_t i = 0; i < n; i += (i < 40 ? 1 : 97)) {
            struct tls_records *rx = tls_records_new_from_secret(secret, suite);
            unsigned char bad[4000];
            ssize_t got;
            memcpy(bad, out, (size_t)n);
            bad[i] ^= 0x10;
            errno = 0;
            got = tls_records_feed(rx, bad, (size_t)n, back, sizeof(back));
            CHECK(got < 0 && (errno == EPROTO || (i < 5 && errno == EAGAIN)),
                  "suite %#x: bit flip at %zd gave %zd (errno %d)", suite, i, got, errno);
            if (errno == EPROTO)
                CHECK(tls_records_feed(rx, out, 0, back, sizeof(back)) < 0 && errno == EPROTO,
                      "suite %#x: failure at %zd did not stay", suite, i);
            tls_records_free(rx);
        }
        for (ssize_t cut = 0; cut < n; cut += 211) {
            struct tls_records *rx = tls_records_new_from_secret(secret, suite);
            ssize_t got = tls_records_feed(rx, out, (size_t)cut, back, sizeof(back));
            CHECK(got < 0 && errno == EAGAIN, "suite %#x: %zd of %zd bytes gave %zd", suite, cut,
                  n, got);
            got = tls_records_feed(rx, out + cut, (size_t)(n - cut), back, sizeof(back));
            CHECK(got == (ssize_t)sizeof(msg) && memcmp(back, msg, sizeof(msg)) == 0,
                  "suite %#x: the rest after %zd bytes gave %zd", suite, cut, got);
            tls_records_free(rx);
        }
        {
            struct tls_records *rx = tls_records_new_from_secret(other, suite);
            CHECK(tls_records_feed(rx, out, (size_t)n, back, sizeof(back)) < 0 && errno == EPROTO,
                  "suite %#x: a record under another key was accepted", suite);
            tls_records_free(rx);
        }
        {
            /* The same record twice: the second has the wrong sequence number. */
            struct tls_records *rx = tls_records_new_from_secret(secret, suite);
            CHECK(tls_records_feed(rx, out, (size_t)n, back, sizeof(back)) == (ssize_t)sizeof(msg),
                  "suite %#x: first copy", suite);
            CHECK(tls_records_feed(rx, out, (size_t)n, back, sizeof(back)) < 0 && errno == EPROTO,
                  "suite %#x: a replayed record was accepted", suite);
            tls_records_free(rx);
        }
        {
            /* Headers that cannot be: wrong type, wrong version, too long, too short. */
            static const unsigned char hdrs[][5] = {
                {22, 3, 3, 0, 40}, {23, 3, 1, 0, 40}, {23, 3, 3, 0x41, 1}, {23, 3, 3, 0, 16}};
            for (size_t h = 0; h < sizeof(hdrs) / sizeof(hdrs[0]); h++) {
                struct tls_records *rx = tls_records_new_from_secret(secret, suite);
                CHECK(tls_records_feed(rx, hdrs[h], 5, back, sizeof(back)) < 0 && errno == EPROTO,
                      "suite %#x: header %zu accepted", suite, h);
                tls_records_free(rx);
            }
        }
        tls_records_free(tx);
    }
}

/* A KeyUpdate that asks for one is answered before the next data (RFC 8446
 * 4.6.3), and the answer moves the other direction's key. */
void test_tlsrec_key_update_answered(void)
{
    unsigned char secret[32], msg[100], out[1000], back[1000];
    struct iovec iov = {msg, sizeof(msg)};
    const size_t plain = TLSREC_HEADER + sizeof(msg) + 1 + TLSREC_TAG;
    const size_t key_update = TLSREC_HEADER + 5 + 1 + TLSREC_TAG;

    RAND_bytes(secret, sizeof(secret));
    RAND_bytes(msg, sizeof(msg));
    for (int suite = 0x1301; suite <= 0x1303; suite++) {
        struct tls_records *a = tls_records_new_from_secret(secret, suite);
        struct tls_records *b = tls_records_new_from_secret(secret, suite);
        ssize_t n;

        CHECK(a && b, "setup");
        if (!a || !b)
            goto next;
        tls_records_set_rekey_interval(a, 1);
        /* a: one record, then KeyUpdate(update_requested) and the second. */
        n = tls_records_seal(a, &iov, 1, out);
        CHECK(n == (ssize_t)plain, "suite %#x: first seal %zd", suite, n);
        CHECK(tls_records_feed(b, out, (size_t)n, back, sizeof(back)) == (ssize_t)sizeof(msg),
              "suite %#x: first record", suite);
        n = tls_records_seal(a, &iov, 1, out);
        CHECK(n == (ssize_t)(key_update + plain), "suite %#x: seal with KeyUpdate %zd", suite, n);
        CHECK(tls_records_feed(b, out, (size_t)n, back, sizeof(back)) == (ssize_t)sizeof(msg) &&
                  memcmp(back, msg, sizeof(msg)) == 0,
              "suite %#x: data after the KeyUpdate", suite);
        /* b owes an answer: its next seal starts with KeyUpdate(update_not_requested). */
        n = tls_records_seal(b, &iov, 1, out);
        CHECK(n == (ssize_t)(key_update + plain), "suite %#x: b did not answer (%zd)", suite, n);
        CHECK(tls_records_feed(a, out, (size_t)n, back, sizeof(back)) == (ssize_t)sizeof(msg) &&
                  memcmp(back, msg, sizeof(msg)) == 0,
              "suite %#x: a could not read after b's KeyUpdate", suite);
        /* Answered once: the next seal is plain again. */
        n = tls_records_seal(b, &iov, 1, out);
        CHECK(n == (ssize_t)plain, "suite %#x: b answered twice (%zd)", suite, n);
    next:
        tls_records_free(a);
        tls_records_free(b);
    }
}

/* tls_hostile.c - a hostile TLS 1.3 client for the tests: it completes the
 * handshake with the tunnel port like a private proxy would, then never sends
 * a frame. Instead, every INTERVAL_MS it sends one of:
 *
 *   empty      an empty application-data record (sealed with the traffic key
 *              taken by tls_records.c: OpenSSL itself never sends those)
 *   keyupdate  a KeyUpdate (OpenSSL's SSL_key_update)
 *   partial    one more byte of a record whose header announced 16 KiB
 *
 * or, with burst, COUNT empty records at once and then one frame byte.
 * It stops when the server closes the connection and prints, on stdout,
 * "closed after MS ms (sent N)"; or "still open after MS ms" when it gave up
 * after MAX_MS. Exit status 0 when closed, 1 when still open, 2 on errors.
 *
 *   tls_hostile HOST PORT MODE INTERVAL_MS MAX_MS [COUNT] [SOURCE_IP] */

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "tls_records.h"

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int send_all(int fd, const unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* 1 when the peer closed (EOF, reset) within ms; whatever it sent is dropped. */
static int peer_closed(int fd, int ms)
{
    uint64_t until = now_ms() + (uint64_t)ms;

    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        unsigned char buf[4096];
        uint64_t now = now_ms();
        int r;
        if (now >= until)
            return 0;
        r = poll(&p, 1, (int)(until - now));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return 0;
        r = (int)recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
            return 1;
    }
}

int main(int argc, char **argv)
{
    struct sockaddr_in sin, src;
    SSL_CTX *ctx = NULL;
    SSL *ssl = NULL;
    struct tls_records *rec = NULL;
    unsigned char out[256];
    char err[200];
    const char *mode;
    unsigned interval, max_ms, count = 40;
    unsigned long sent = 0;
    uint64_t start;
    int fd = -1, rc = 2;

    if (argc < 6) {
        fprintf(stderr, "usage: tls_hostile HOST PORT empty|keyupdate|partial|burst INTERVAL_MS "
                        "MAX_MS [COUNT] [SOURCE_IP]\n");
        return 2;
    }
    mode = argv[3];
    interval = (unsigned)atoi(argv[4]);
    max_ms = (unsigned)atoi(argv[5]);
    if (argc > 6)
        count = (unsigned)atoi(argv[6]);
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &sin.sin_addr) != 1)
        return 2;
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (argc > 7) {
        memset(&src, 0, sizeof(src));
        src.sin_family = AF_INET;
        if (inet_pton(AF_INET, argv[7], &src.sin_addr) != 1 ||
            bind(fd, (struct sockaddr *)&src, sizeof(src)) != 0) {
            perror("bind");
            goto out;
        }
    }
    if (fd < 0 || connect(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0) {
        perror("connect");
        goto out;
    }
    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx || SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1)
        goto out;
    tls_records_ctx_init(ctx);
    ssl = SSL_new(ctx);
    if (!ssl || tls_records_prepare(ssl) != 0 || SSL_set_fd(ssl, fd) != 1 ||
        SSL_connect(ssl) != 1) {
        ERR_print_errors_fp(stderr);
        goto out;
    }
    start = now_ms();
    if (strcmp(mode, "empty") == 0 || strcmp(mode, "burst") == 0) {
        rec = tls_records_new(ssl, 0, err, sizeof(err));
        if (!rec) {
            fprintf(stderr, "tls_records_new: %s\n", err);
            goto out;
        }
    }
    if (strcmp(mode, "burst") == 0) {
        for (unsigned i = 0; i < count; i++) {
            ssize_t n = tls_records_seal_type(rec, 23, "", 0, out);
            if (n < 0 || send_all(fd, out, (size_t)n) != 0)
                break;
            sent++;
        }
        {
            ssize_t n = tls_records_seal_type(rec, 23, "\0", 1, out);
            if (n > 0)
                (void)send_all(fd, out, (size_t)n);
        }
    }
    if (strcmp(mode, "partial") == 0) {
        /* The header of a record that will never be complete. */
        static const unsigned char hdr[5] = {0x17, 0x03, 0x03, 0x40, 0x00};
        if (send_all(fd, hdr, sizeof(hdr)) != 0)
            goto closed;
    }
    while (now_ms() - start < max_ms) {
        if (strcmp(mode, "empty") == 0) {
            ssize_t n = tls_records_seal_type(rec, 23, "", 0, out);
            if (n < 0 || send_all(fd, out, (size_t)n) != 0)
                goto closed;
        } else if (strcmp(mode, "keyupdate") == 0) {
            if (SSL_key_update(ssl, SSL_KEY_UPDATE_NOT_REQUESTED) != 1 ||
                SSL_do_handshake(ssl) != 1)
                goto closed;
        } else if (strcmp(mode, "partial") == 0) {
            static const unsigned char junk = 0x42;
            if (send_all(fd, &junk, 1) != 0)
                goto closed;
        }
        sent++;
        if (peer_closed(fd, (int)interval))
            goto closed;
    }
    printf("still open after %llu ms (sent %lu)\n", (unsigned long long)(now_ms() - start), sent);
    rc = 1;
    goto out;
closed:
    printf("closed after %llu ms (sent %lu)\n", (unsigned long long)(now_ms() - start), sent);
    rc = 0;
out:
    fflush(stdout);
    tls_records_free(rec);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    if (fd >= 0)
        close(fd);
    return rc;
}

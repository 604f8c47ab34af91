/* tls.c - TLS contexts, the public side's certificate, and fingerprint pinning.
 *
 * We pin certificates by SHA-256 fingerprint instead of asking a CA: the public
 * side usually has no domain name, and a pinned self-signed certificate is as
 * strong as SSH's host keys, with the same trust-on-first-use model. */

#include "tls.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "netio.h"
#include "state.h"
#include "tls_records.h"

#define CIPHERSUITES "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384"
#define CERT_DAYS 3650

const char *tls_error_string(char *buf, size_t cap)
{
    unsigned long e = ERR_get_error();

    if (!e) {
        snprintf(buf, cap, "unknown TLS error");
        return buf;
    }
    ERR_error_string_n(e, buf, cap);
    ERR_clear_error();
    return buf;
}

static void fp_format(const unsigned char *md, unsigned n, char fp[TLS_FP_LEN])
{
    static const char hex[] = "0123456789ABCDEF";
    size_t j = 0;

    for (unsigned i = 0; i < n && j + 3 < TLS_FP_LEN; i++) {
        if (i)
            fp[j++] = ':';
        fp[j++] = hex[md[i] >> 4];
        fp[j++] = hex[md[i] & 15];
    }
    fp[j] = '\0';
}

static int cert_fingerprint(X509 *x, char fp[TLS_FP_LEN])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned n = 0;

    if (!x || X509_digest(x, EVP_sha256(), md, &n) != 1)
        return -1;
    fp_format(md, n, fp);
    return 0;
}

int tls_peer_fingerprint(SSL *ssl, char fp[TLS_FP_LEN])
{
    X509 *x = SSL_get1_peer_certificate(ssl);
    int rc = cert_fingerprint(x, fp);

    X509_free(x);
    return rc;
}

int tls_normalize_fingerprint(const char *in, char out[TLS_FP_LEN])
{
    unsigned char md[32];
    unsigned n = 0;
    int hi = -1;

    if (strncasecmp(in, "SHA256:", 7) == 0)
        in += 7;
    for (; *in; in++) {
        int v;
        char c = *in;
        if (c == ':' || c == ' ')
            continue;
        if (c >= '0' && c <= '9')
            v = c - '0';
        else if (c >= 'a' && c <= 'f')
            v = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            v = c - 'A' + 10;
        else
            return -1;
        if (hi < 0) {
            hi = v;
        } else {
            if (n >= sizeof(md))
                return -1;
            md[n++] = (unsigned char)(hi << 4 | v);
            hi = -1;
        }
    }
    if (n != sizeof(md) || hi >= 0)
        return -1;
    fp_format(md, n, out);
    return 0;
}

static int ctx_common(SSL_CTX *ctx)
{
    /* Read ahead: take whatever the socket has in one read instead of two
     * reads (header, body) per 16 KiB record. */
    SSL_CTX_set_read_ahead(ctx, 1); /* the web port; tunnels turn it off */
    SSL_CTX_set_default_read_buffer_len(ctx, 128 * 1024);
    tls_records_ctx_init(ctx);
    return SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) == 1 &&
           SSL_CTX_set_ciphersuites(ctx, CIPHERSUITES) == 1;
}

/* Write a PEM object produced by fn into dir/name, atomically and 0600. */
static int write_pem(const char *dir, const char *name, int (*fn)(BIO *, void *), void *obj,
                     char *err, size_t errlen)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *data = NULL;
    long len;
    int rc = -1;

    if (!b || !fn(b, obj)) {
        snprintf(err, errlen, "cannot encode %s", name);
        goto out;
    }
    len = BIO_get_mem_data(b, &data);
    rc = state_write_atomic(dir, name, data, (size_t)len, err, errlen);
out:
    BIO_free(b);
    return rc;
}

static int pem_key(BIO *b, void *k)
{
    return PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL);
}

static int pem_cert(BIO *b, void *x)
{
    return PEM_write_bio_X509(b, x);
}

/* Make a P-256 key and a self-signed certificate in dir. */
static int make_cert(const char *dir, char *err, size_t errlen)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    X509_NAME *name;
    unsigned char serial[16];
    BIGNUM *bn = NULL;
    int rc = -1;

    if (!key || !x || RAND_bytes(serial, sizeof(serial)) != 1) {
        snprintf(err, errlen, "cannot generate a key");
        goto out;
    }
    serial[0] &= 0x7f; /* positive */
    bn = BN_bin2bn(serial, sizeof(serial), NULL);
    name = X509_get_subject_name(x);
    if (!bn || !BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) || X509_set_version(x, 2) != 1 ||
        !X509_gmtime_adj(X509_getm_notBefore(x), -3600) ||
        !X509_gmtime_adj(X509_getm_notAfter(x), (long)CERT_DAYS * 86400) ||
        X509_set_pubkey(x, key) != 1 ||
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"proxy_public",
                                   -1, -1, 0) != 1 ||
        X509_set_issuer_name(x, name) != 1 || X509_sign(x, key, EVP_sha256()) == 0) {
        snprintf(err, errlen, "cannot make a certificate");
        goto out;
    }
    /* Key first: a certificate without its key would be useless. */
    if (write_pem(dir, "tls.key", pem_key, key, err, errlen) != 0 ||
        write_pem(dir, "tls.crt", pem_cert, x, err, errlen) != 0)
        goto out;
    rc = 0;
out:
    BN_free(bn);
    X509_free(x);
    EVP_PKEY_free(key);
    return rc;
}

SSL_CTX *tls_server_ctx(const char *state_dir, const char *cert_file, const char *key_file,
                        char fp[TLS_FP_LEN], int *created, char *err, size_t errlen)
{
    char cpath[PATH_MAX], kpath[PATH_MAX], ebuf[200];
    SSL_CTX *ctx = NULL;
    struct stat st;

    *created = 0;
    if (!cert_file || !key_file) {
        snprintf(cpath, sizeof(cpath), "%s/tls.crt", state_dir);
        snprintf(kpath, sizeof(kpath), "%s/tls.key", state_dir);
        if (stat(cpath, &st) != 0 || stat(kpath, &st) != 0) {
            if (make_cert(state_dir, err, errlen) != 0)
                return NULL;
            *created = 1;
        }
        cert_file = cpath;
        key_file = kpath;
    }
    ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx || !ctx_common(ctx)) {
        snprintf(err, errlen, "cannot set up TLS: %s", tls_error_string(ebuf, sizeof(ebuf)));
        goto fail;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        snprintf(err, errlen, "cannot load certificate %s: %s", cert_file,
                 tls_error_string(ebuf, sizeof(ebuf)));
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "cannot load key %s (or it does not match the certificate): %s",
                 key_file, tls_error_string(ebuf, sizeof(ebuf)));
        goto fail;
    }
    /* No session tickets: nothing resumes, and it keeps post-handshake
     * messages off the tunnel. */
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (cert_fingerprint(SSL_CTX_get0_certificate(ctx), fp) != 0) {
        snprintf(err, errlen, "cannot compute the certificate's fingerprint");
        goto fail;
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

SSL_CTX *tls_client_ctx(char *err, size_t errlen)
{
    char ebuf[200];
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

    if (!ctx || !ctx_common(ctx)) {
        snprintf(err, errlen, "cannot set up TLS: %s", tls_error_string(ebuf, sizeof(ebuf)));
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL); /* pinned by fingerprint instead */
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    return ctx;
}

/* Create the directories leading to file (0700), like ssh does for ~/.ssh. */
static void make_parent_dirs(const char *file)
{
    char path[PATH_MAX];

    snprintf(path, sizeof(path), "%s", file);
    for (char *p = path + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            (void)mkdir(path, 0700);
            *p = '/';
        }
    }
}

int tls_known_hosts_check(const char *file, const char *hostport, const char *fp,
                          char old[TLS_FP_LEN], char *err, size_t errlen)
{
    char line[512];
    FILE *f = fopen(file, "re");
    int fd;

    old[0] = '\0';
    if (!f && errno != ENOENT) {
        snprintf(err, errlen, "cannot read %s: %s", file, strerror(errno));
        return -1;
    }
    while (f && fgets(line, sizeof(line), f)) {
        char host[300], print[TLS_FP_LEN + 8];
        if (line[0] == '#' || sscanf(line, "%299s %103s", host, print) != 2)
            continue;
        if (strcmp(host, hostport) != 0)
            continue;
        fclose(f);
        snprintf(old, TLS_FP_LEN, "%.95s", print);
        if (strcmp(print, fp) == 0)
            return 1;
        snprintf(err, errlen, "the certificate of %s CHANGED: remembered %s, now %s", hostport,
                 print, fp);
        return -1;
    }
    if (f)
        fclose(f);
    /* First use: remember it. */
    make_parent_dirs(file);
    fd = open(file, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "cannot write %s: %s", file, strerror(errno));
        return -1;
    }
    snprintf(line, sizeof(line), "%s %s\n", hostport, fp);
    if (write(fd, line, strlen(line)) != (ssize_t)strlen(line)) {
        snprintf(err, errlen, "cannot write %s: %s", file, strerror(errno));
        close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

int tls_handshake(SSL *ssl, int fd, int is_server, int timeout_ms, char *err, size_t errlen)
{
    uint64_t deadline = mono_ms() + (uint64_t)timeout_ms;
    char ebuf[200];
    int rc = -1;

    if (tls_records_prepare(ssl) != 0 || SSL_set_fd(ssl, fd) != 1 ||
        net_set_nonblock(fd, 1) != 0) {
        snprintf(err, errlen, "cannot set up TLS on the socket");
        return -1;
    }
    for (;;) {
        struct pollfd pfd = {.fd = fd};
        uint64_t now;
        int r, e;

        ERR_clear_error();
        r = is_server ? SSL_accept(ssl) : SSL_connect(ssl);
        if (r == 1) {
            rc = 0;
            break;
        }
        e = SSL_get_error(ssl, r);
        if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
            snprintf(err, errlen, "%s", e == SSL_ERROR_SYSCALL && !ERR_peek_error()
                                            ? "connection closed during the TLS handshake"
                                            : tls_error_string(ebuf, sizeof(ebuf)));
            break;
        }
        now = mono_ms();
        if (now >= deadline) {
            snprintf(err, errlen, "TLS handshake not finished within %d s", timeout_ms / 1000);
            break;
        }
        pfd.events = e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
        (void)poll(&pfd, 1, (int)(deadline - now));
    }
    if (net_set_nonblock(fd, 0) != 0 && rc == 0) {
        snprintf(err, errlen, "cannot restore the socket");
        rc = -1;
    }
    return rc;
}

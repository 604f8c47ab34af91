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

#include "log.h"
#include "netio.h"
#include "state.h"

#define CIPHERSUITES "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384"
#define CERT_DAYS 3650
/* Largest certificate chain or key file we read (PEM). */
#define TLS_PEM_MAX (1024 * 1024)

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
    /* Read ahead during the handshake: take whatever the socket has in one
     * read. After it tls_io.c feeds OpenSSL from its own buffer instead. */
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_default_read_buffer_len(ctx, 128 * 1024);
    /* Kernel TLS where the kernel has it (OpenSSL falls back by itself);
     * the tunnel logs whether it got it (tls_io.c). */
    SSL_CTX_set_options(ctx, SSL_OP_ENABLE_KTLS);
    return SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) == 1 &&
           SSL_CTX_set_ciphersuites(ctx, CIPHERSUITES) == 1;
}

/* Write a PEM object produced by fn into the state directory, atomically and 0600. */
static int write_pem(const struct state_dir *sd, const char *name, int (*fn)(BIO *, void *),
                     void *obj, char *err, size_t errlen)
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
    rc = state_write_atomic(sd, name, data, (size_t)len, err, errlen);
    if (len > 0)
        OPENSSL_cleanse(data, (size_t)len); /* the key's PEM */
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

/* Make a P-256 key and a self-signed certificate in the state directory. */
static int make_cert(const struct state_dir *sd, char *err, size_t errlen)
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
    if (write_pem(sd, "tls.key", pem_key, key, err, errlen) != 0 ||
        write_pem(sd, "tls.crt", pem_cert, x, err, errlen) != 0)
        goto out;
    rc = 0;
out:
    BN_free(bn);
    X509_free(x);
    EVP_PKEY_free(key);
    return rc;
}

/* Who may write a file of mode m (for messages; m & 022 is not 0). */
static const char *writers(mode_t m)
{
    if ((m & 022) == 022)
        return "group and others";
    return (m & 002) ? "others" : "its group";
}

/* Free a buffer that held a private key's PEM. */
static void free_secret(char *p, size_t len)
{
    if (p)
        OPENSSL_cleanse(p, len);
    free(p);
}

/* Load a certificate chain (leaf first, as SSL_CTX_use_certificate_chain_file
 * reads it) and its private key from PEM text in memory, so the caller decides
 * how the files were opened and checked. crt_name and key_name are for
 * messages. 0 or -1 with err. */
static int ctx_use_pem(SSL_CTX *ctx, const char *crt, size_t crtlen, const char *crt_name,
                       const char *key, size_t keylen, const char *key_name, char *err,
                       size_t errlen)
{
    BIO *b = NULL;
    X509 *x = NULL;
    EVP_PKEY *pk = NULL;
    char ebuf[200];
    unsigned long e;
    int rc = -1;

    if (crtlen > TLS_PEM_MAX || keylen > TLS_PEM_MAX) {
        snprintf(err, errlen, "%s or %s is larger than %d bytes", crt_name, key_name, TLS_PEM_MAX);
        return -1;
    }
    ERR_clear_error();
    b = BIO_new_mem_buf(crt, (int)crtlen);
    x = b ? PEM_read_bio_X509_AUX(b, NULL, NULL, NULL) : NULL;
    if (!x || SSL_CTX_use_certificate(ctx, x) != 1 || SSL_CTX_clear_chain_certs(ctx) != 1) {
        snprintf(err, errlen, "cannot load certificate %s: %s", crt_name,
                 tls_error_string(ebuf, sizeof(ebuf)));
        goto out;
    }
    X509_free(x);
    x = NULL;
    /* The rest of the file is the chain, up to the end of the PEM text. */
    while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
        if (SSL_CTX_add1_chain_cert(ctx, x) != 1) {
            snprintf(err, errlen, "cannot load the chain in %s: %s", crt_name,
                     tls_error_string(ebuf, sizeof(ebuf)));
            goto out;
        }
        X509_free(x);
    }
    e = ERR_peek_last_error();
    if (e && !(ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE)) {
        snprintf(err, errlen, "cannot load the chain in %s: %s", crt_name,
                 tls_error_string(ebuf, sizeof(ebuf)));
        goto out;
    }
    ERR_clear_error();
    BIO_free(b);
    b = BIO_new_mem_buf(key, (int)keylen);
    pk = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
    if (!pk || SSL_CTX_use_PrivateKey(ctx, pk) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "cannot load key %s (or it does not match the certificate): %s",
                 key_name, tls_error_string(ebuf, sizeof(ebuf)));
        goto out;
    }
    rc = 0;
out:
    X509_free(x);
    EVP_PKEY_free(pk);
    BIO_free(b);
    return rc;
}

/* Read a --cert/--key file the administrator named (symbolic links are
 * followed: /etc/letsencrypt/live/ is made of them). The checks are on the
 * opened file. A key that other users may read is refused, like OpenSSH
 * refuses an unprotected private key; one readable by its group is allowed
 * (Debian's ssl-cert group works that way) with a warning. A key or
 * certificate that group or others may write is refused: they could swap it. */
static char *read_user_file(const char *path, int is_key, size_t *lenp, char *err, size_t errlen)
{
    const char *what = is_key ? "key file" : "certificate file";
    struct stat st;
    char *buf = NULL;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);

    if (fd < 0) {
        snprintf(err, errlen, "cannot open %s %s: %s", what, path, strerror(errno));
        return NULL;
    }
    if (fstat(fd, &st) != 0) {
        snprintf(err, errlen, "cannot examine %s %s: %s", what, path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s %s is not a regular file: refusing it", what, path);
        goto out;
    }
    if (st.st_mode & 022) {
        snprintf(err, errlen,
                 "%s %s is writable by %s (mode %04o): refusing it (they could replace it); "
                 "chmod go-w %s",
                 what, path, writers(st.st_mode),
                 (unsigned)(st.st_mode & 07777), path);
        goto out;
    }
    if (is_key && (st.st_mode & 004)) {
        snprintf(err, errlen,
                 "key file %s is readable by every user (mode %04o): refusing it (the private "
                 "key must stay secret); chmod 600 %s (or 640 with a group you trust)",
                 path, (unsigned)(st.st_mode & 07777), path);
        goto out;
    }
    if (is_key && (st.st_mode & 040))
        log_warn("ev=tls_key_group_readable file=%s mode=%04o gid=%u "
                 "note=\"members of that group can read the private key\"",
                 path, (unsigned)(st.st_mode & 07777), (unsigned)st.st_gid);
    buf = state_read_fd(fd, TLS_PEM_MAX, lenp, path, err, errlen);
out:
    close(fd);
    return buf;
}

/* Read STATE_DIR/tls.crt and tls.key through the checked directory: 1 when
 * both are there, 0 when one is missing (nothing returned), -1 with err. */
static int read_state_pair(const struct state_dir *sd, char **crt, size_t *crtlen, char **key,
                           size_t *keylen, char *err, size_t errlen)
{
    *crt = state_read(sd, "tls.crt", TLS_PEM_MAX, crtlen, err, errlen);
    if (!*crt)
        return err[0] ? -1 : 0;
    *key = state_read(sd, "tls.key", TLS_PEM_MAX, keylen, err, errlen);
    if (!*key) {
        free(*crt);
        *crt = NULL;
        return err[0] ? -1 : 0;
    }
    return 1;
}

SSL_CTX *tls_server_ctx(const struct state_dir *sd, const char *cert_file, const char *key_file,
                        char fp[TLS_FP_LEN], int *created, char *err, size_t errlen)
{
    char cname[PATH_MAX + 16], kname[PATH_MAX + 16], ebuf[200];
    char *crt = NULL, *key = NULL;
    size_t crtlen = 0, keylen = 0;
    SSL_CTX *ctx = NULL;
    int r;

    *created = 0;
    if (cert_file && key_file) {
        snprintf(cname, sizeof(cname), "%s", cert_file);
        snprintf(kname, sizeof(kname), "%s", key_file);
        crt = read_user_file(cert_file, 0, &crtlen, err, errlen);
        key = crt ? read_user_file(key_file, 1, &keylen, err, errlen) : NULL;
        if (!key)
            goto fail;
    } else {
        snprintf(cname, sizeof(cname), "%s/tls.crt", sd->path);
        snprintf(kname, sizeof(kname), "%s/tls.key", sd->path);
        r = read_state_pair(sd, &crt, &crtlen, &key, &keylen, err, errlen);
        if (r == 0) {
            if (make_cert(sd, err, errlen) != 0)
                goto fail;
            *created = 1;
            r = read_state_pair(sd, &crt, &crtlen, &key, &keylen, err, errlen);
            if (r == 0)
                snprintf(err, errlen, "%s or %s vanished right after it was made", cname, kname);
        }
        if (r != 1)
            goto fail;
    }
    ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx || !ctx_common(ctx)) {
        snprintf(err, errlen, "cannot set up TLS: %s", tls_error_string(ebuf, sizeof(ebuf)));
        goto fail;
    }
    if (ctx_use_pem(ctx, crt, crtlen, cname, key, keylen, kname, err, errlen) != 0)
        goto fail;
    /* No session tickets: nothing resumes, and it keeps post-handshake
     * messages off the tunnel. */
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (cert_fingerprint(SSL_CTX_get0_certificate(ctx), fp) != 0) {
        snprintf(err, errlen, "cannot compute the certificate's fingerprint");
        goto fail;
    }
    free(crt);
    free_secret(key, keylen);
    return ctx;
fail:
    free(crt);
    free_secret(key, keylen);
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

/* Open the known_hosts file without following a symbolic link and check what
 * was opened: a regular file owned by us (or root) that group and others
 * cannot write, so nobody else can plant a fingerprint for us to trust.
 * Messages stay short: proxy_private keeps them in a 192-byte buffer.
 * flags: O_RDONLY, or O_WRONLY|O_APPEND|O_CREAT. -1 with err "" when the file
 * is missing and flags do not create it; -1 with err on any other failure. */
static int known_hosts_open(const char *file, int flags, char *err, size_t errlen)
{
    struct stat st;
    uid_t me = geteuid();
    int fd = open(file, flags | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, 0600);

    err[0] = '\0';
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT && !(flags & O_CREAT))
            return -1;
        if (lstat(file, &st) == 0 && S_ISLNK(st.st_mode))
            snprintf(err, errlen,
                     "known_hosts file %s is a symbolic link: refusing it; put the file "
                     "itself there",
                     file);
        else
            snprintf(err, errlen, "cannot %s %s: %s", (flags & O_CREAT) ? "write" : "read", file,
                     strerror(e));
        return -1;
    }
    if (fstat(fd, &st) != 0) {
        snprintf(err, errlen, "cannot examine %s: %s", file, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "known_hosts file %s is not a regular file: refusing it", file);
        goto fail;
    }
    if (st.st_uid != me && st.st_uid != 0) {
        snprintf(err, errlen,
                 "known_hosts file %s is owned by uid %u, not by you (uid %u) or root: "
                 "refusing it; remove it",
                 file, (unsigned)st.st_uid, (unsigned)me);
        goto fail;
    }
    if (st.st_mode & 022) {
        snprintf(err, errlen,
                 "known_hosts file %s is writable by %s (mode %04o): refusing it; check its "
                 "lines, then chmod 600 it",
                 file, writers(st.st_mode), (unsigned)(st.st_mode & 07777));
        goto fail;
    }
    return fd;
fail:
    close(fd);
    return -1;
}

int tls_known_hosts_check(const char *file, const char *hostport, const char *fp,
                          char old[TLS_FP_LEN], char *err, size_t errlen)
{
    char line[512];
    FILE *f = NULL;
    int fd;

    old[0] = '\0';
    fd = known_hosts_open(file, O_RDONLY, err, errlen);
    if (fd < 0 && err[0])
        return -1;
    if (fd >= 0) {
        f = fdopen(fd, "r");
        if (!f) {
            snprintf(err, errlen, "cannot read %s: %s", file, strerror(errno));
            close(fd);
            return -1;
        }
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
    fd = known_hosts_open(file, O_WRONLY | O_APPEND | O_CREAT, err, errlen);
    if (fd < 0)
        return -1;
    snprintf(line, sizeof(line), "%s %s\n", hostport, fp);
    if (write(fd, line, strlen(line)) != (ssize_t)strlen(line)) {
        snprintf(err, errlen, "cannot write %s: %s", file, strerror(errno));
        close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

int tls_handshake(SSL *ssl, int fd, int is_server, uint64_t deadline_ms, char *err,
                  size_t errlen)
{
    char ebuf[200];
    int rc = -1;

    if (SSL_set_fd(ssl, fd) != 1 || net_set_nonblock(fd, 1) != 0) {
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
        /* The one deadline of the whole handshake, looked at on every turn:
         * a peer that trickles bytes gets no more time than a silent one. */
        now = mono_ms();
        if (now >= deadline_ms) {
            snprintf(err, errlen, "TLS handshake not finished in time");
            break;
        }
        pfd.events = e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
        (void)poll(&pfd, 1, (int)(deadline_ms - now));
    }
    return rc;
}

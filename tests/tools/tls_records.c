/* tls_records.c - TLS 1.3 record protection after the handshake (RFC 8446
 * sections 5 and 7). See tls_records.h for why the tunnel does this itself.
 *
 * Every length read off the wire is checked before it is used: a record
 * header must say application_data / TLS 1.2 (what TLS 1.3 puts there) and a
 * length between 17 and 2^14 + 256; the plaintext inside must be at most
 * 2^14 bytes plus its content type; only application data, alerts and
 * KeyUpdate (or an ignored NewSessionTicket) may follow the handshake. */

#include "tls_records.h"

#include <errno.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define SECRET_MAX 48   /* SHA-384 */
#define IV_LEN 12
#define KEY_MAX 32
#define IN_CAP (256 * 1024 + TLSREC_HEADER + TLSREC_MAX_CIPHER)

#define CT_ALERT 21
#define CT_HANDSHAKE 22
#define CT_APPLICATION 23
#define HS_NEW_SESSION_TICKET 4
#define HS_KEY_UPDATE 24
/* A KeyUpdate record: header, 4+1 bytes of message, content type, tag. */
#define KEY_UPDATE_RECORD (TLSREC_HEADER + 5 + 1 + TLSREC_TAG)

/* One direction: its current secret (for KeyUpdate), key schedule and count. */
struct dir {
    EVP_CIPHER_CTX *ctx;
    unsigned char secret[SECRET_MAX];
    unsigned char iv[IV_LEN];
    uint64_t seq;
    int encrypt;
};

struct tls_records {
    const EVP_CIPHER *cipher;
    const char *digest;          /* "SHA256" / "SHA384", for HKDF */
    size_t key_len, secret_len;
    struct dir tx;               /* writer only */
    struct dir rx;               /* reader only */
    unsigned rekey_every;        /* writer only */
    _Atomic int update_asked;    /* reader saw KeyUpdate(update_requested) */
    int eof;                     /* reader only: close_notify seen */
    int err;                     /* reader only: errno of a failure not yet reported */
    unsigned char *in;           /* reader only: ciphertext off the socket */
    size_t in_start, in_end;
    unsigned char *pend;         /* plaintext of a record too big for the caller */
    size_t pend_len;
};

/* ------------------------------------------------------------ key schedule */

/* HKDF-Expand-Label(secret, label, "", out_len) of RFC 8446 7.1. */
static int expand_label(const char *digest, const unsigned char *secret, size_t secret_len,
                        const char *label, unsigned char *out, size_t out_len)
{
    unsigned char info[2 + 1 + 6 + 32 + 1];
    size_t llen = strlen(label), n = 0;
    int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY, rc = -1;
    EVP_KDF *kdf = NULL;
    EVP_KDF_CTX *kctx = NULL;
    OSSL_PARAM params[5];

    if (llen > 32)
        return -1;
    info[n++] = (unsigned char)(out_len >> 8);
    info[n++] = (unsigned char)out_len;
    info[n++] = (unsigned char)(6 + llen);
    memcpy(info + n, "tls13 ", 6);
    n += 6;
    memcpy(info + n, label, llen);
    n += llen;
    info[n++] = 0; /* empty context */
    params[0] = OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode);
    params[1] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)digest, 0);
    params[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)secret, secret_len);
    params[3] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, n);
    params[4] = OSSL_PARAM_construct_end();
    kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    kctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    if (kctx && EVP_KDF_derive(kctx, out, out_len, params) == 1)
        rc = 0;
    EVP_KDF_CTX_free(kctx);
    EVP_KDF_free(kdf);
    return rc;
}

/* Key and IV from d->secret; the sequence starts again at 0. */
static int dir_rekey(struct tls_records *r, struct dir *d)
{
    unsigned char key[KEY_MAX];
    int rc = -1;

    if (expand_label(r->digest, d->secret, r->secret_len, "key", key, r->key_len) != 0 ||
        expand_label(r->digest, d->secret, r->secret_len, "iv", d->iv, IV_LEN) != 0)
        goto out;
    if (!d->ctx && !(d->ctx = EVP_CIPHER_CTX_new()))
        goto out;
    if (EVP_CipherInit_ex(d->ctx, r->cipher, NULL, key, d->iv, d->encrypt) != 1)
        goto out;
    d->seq = 0;
    rc = 0;
out:
    OPENSSL_cleanse(key, sizeof(key));
    return rc;
}

/* KeyUpdate: secret = HKDF-Expand-Label(secret, "traffic upd", "", Hash.length). */
static int dir_update(struct tls_records *r, struct dir *d)
{
    unsigned char next[SECRET_MAX];
    int rc = expand_label(r->digest, d->secret, r->secret_len, "traffic upd", next, r->secret_len);

    if (rc == 0) {
        memcpy(d->secret, next, r->secret_len);
        rc = dir_rekey(r, d);
    }
    OPENSSL_cleanse(next, sizeof(next));
    return rc;
}

static void nonce_of(const struct dir *d, unsigned char nonce[IV_LEN])
{
    memcpy(nonce, d->iv, IV_LEN);
    for (int i = 0; i < 8; i++)
        nonce[IV_LEN - 1 - i] ^= (unsigned char)(d->seq >> (8 * i));
}

static int suite_params(struct tls_records *r, int suite)
{
    switch (suite) {
    case 0x1301:
        r->cipher = EVP_aes_128_gcm();
        r->digest = "SHA256";
        r->key_len = 16;
        r->secret_len = 32;
        return 0;
    case 0x1302:
        r->cipher = EVP_aes_256_gcm();
        r->digest = "SHA384";
        r->key_len = 32;
        r->secret_len = 48;
        return 0;
    case 0x1303:
        r->cipher = EVP_chacha20_poly1305();
        r->digest = "SHA256";
        r->key_len = 32;
        r->secret_len = 32;
        return 0;
    default:
        return -1;
    }
}

static struct tls_records *records_alloc(int suite)
{
    struct tls_records *r = calloc(1, sizeof(*r));

    if (!r)
        return NULL;
    r->in = malloc(IN_CAP);
    if (!r->in || suite_params(r, suite) != 0) {
        free(r->in);
        free(r);
        return NULL;
    }
    r->tx.encrypt = 1;
    r->rx.encrypt = 0;
    r->rekey_every = TLSREC_REKEY_RECORDS;
    return r;
}

void tls_records_free(struct tls_records *r)
{
    if (!r)
        return;
    EVP_CIPHER_CTX_free(r->tx.ctx);
    EVP_CIPHER_CTX_free(r->rx.ctx);
    free(r->in);
    OPENSSL_cleanse(r, sizeof(*r)); /* the secrets */
    free(r);
}

void tls_records_set_rekey_interval(struct tls_records *r, unsigned records)
{
    r->rekey_every = records ? records : 1;
}

/* ------------------------------------------------ secrets from the handshake */

struct secrets {
    unsigned char client[SECRET_MAX], server[SECRET_MAX];
    size_t client_len, server_len;
};

static int secrets_index = -1;
static pthread_once_t secrets_once = PTHREAD_ONCE_INIT;

static void secrets_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                         void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    if (ptr) {
        OPENSSL_cleanse(ptr, sizeof(struct secrets));
        free(ptr);
    }
}

static void secrets_index_init(void)
{
    secrets_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, secrets_free);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* OpenSSL reports each secret as "LABEL <client random> <secret>" in hex. */
static void keylog_cb(const SSL *ssl, const char *line)
{
    struct secrets *s = secrets_index >= 0 ? SSL_get_ex_data(ssl, secrets_index) : NULL;
    unsigned char *dst;
    size_t *dst_len, n = 0;
    const char *hex;

    if (!s)
        return; /* not a tunnel connection (the web port shares the context) */
    if (strncmp(line, "CLIENT_TRAFFIC_SECRET_0 ", 24) == 0) {
        dst = s->client;
        dst_len = &s->client_len;
    } else if (strncmp(line, "SERVER_TRAFFIC_SECRET_0 ", 24) == 0) {
        dst = s->server;
        dst_len = &s->server_len;
    } else {
        return;
    }
    hex = strchr(line + 24, ' ');
    if (!hex)
        return;
    hex++;
    while (hex[0] && hex[1] && n < SECRET_MAX) {
        int hi = hexval(hex[0]), lo = hexval(hex[1]);
        if (hi < 0 || lo < 0)
            break;
        dst[n++] = (unsigned char)(hi << 4 | lo);
        hex += 2;
    }
    *dst_len = hex[0] ? 0 : n; /* anything left over: not a secret we understand */
}

void tls_records_ctx_init(SSL_CTX *ctx)
{
    pthread_once(&secrets_once, secrets_index_init);
    SSL_CTX_set_keylog_callback(ctx, keylog_cb);
}

int tls_records_prepare(SSL *ssl)
{
    struct secrets *s;

    pthread_once(&secrets_once, secrets_index_init);
    if (secrets_index < 0 || !(s = calloc(1, sizeof(*s))))
        return -1;
    if (SSL_set_ex_data(ssl, secrets_index, s) != 1) {
        free(s);
        return -1;
    }
    /* Read no byte past the handshake: what follows is ours to decrypt. */
    SSL_set_read_ahead(ssl, 0);
    return 0;
}

struct tls_records *tls_records_new(SSL *ssl, int is_server, char *err, size_t errlen)
{
    struct secrets *s = secrets_index >= 0 ? SSL_get_ex_data(ssl, secrets_index) : NULL;
    const SSL_CIPHER *c = SSL_get_current_cipher(ssl);
    struct tls_records *r = NULL;
    const unsigned char *mine, *theirs;

    if (!s || !c) {
        snprintf(err, errlen, "%s", "no TLS session to take over");
        return NULL;
    }
    if (SSL_version(ssl) != TLS1_3_VERSION || SSL_has_pending(ssl)) {
        snprintf(err, errlen, "%s", "the TLS handshake left data behind");
        return NULL;
    }
    r = records_alloc(SSL_CIPHER_get_protocol_id(c));
    if (!r) {
        snprintf(err, errlen, "unsupported cipher suite %s (or out of memory)", SSL_CIPHER_get_name(c));
        return NULL;
    }
    if (s->client_len != r->secret_len || s->server_len != r->secret_len) {
        snprintf(err, errlen, "%s", "the TLS library did not report the traffic secrets");
        goto fail;
    }
    mine = is_server ? s->server : s->client;
    theirs = is_server ? s->client : s->server;
    memcpy(r->tx.secret, mine, r->secret_len);
    memcpy(r->rx.secret, theirs, r->secret_len);
    if (dir_rekey(r, &r->tx) != 0 || dir_rekey(r, &r->rx) != 0) {
        snprintf(err, errlen, "%s", "cannot derive the record keys");
        goto fail;
    }
    OPENSSL_cleanse(s, sizeof(*s));
    return r;
fail:
    tls_records_free(r);
    return NULL;
}

struct tls_records *tls_records_new_from_secret(const unsigned char secret[32], int suite)
{
    struct tls_records *r = records_alloc(suite);

    if (!r)
        return NULL;
    for (size_t i = 0; i < r->secret_len; i++)
        r->tx.secret[i] = r->rx.secret[i] = secret[i % 32];
    if (dir_rekey(r, &r->tx) != 0 || dir_rekey(r, &r->rx) != 0) {
        tls_records_free(r);
        return NULL;
    }
    return r;
}

/* ------------------------------------------------------------------ seal */

size_t tls_records_seal_bound(size_t len)
{
    size_t records = len / TLSREC_MAX_PLAIN + 1;

    /* A KeyUpdate may precede every record (rekey interval 1, the testing
     * hook), plus one answering the peer's request. */
    return len + records * (TLSREC_HEADER + 1 + TLSREC_TAG + KEY_UPDATE_RECORD) +
           KEY_UPDATE_RECORD;
}

/* Where seal_record takes its plaintext from: a walk over iov[]. */
struct cursor {
    const struct iovec *iov;
    int n, i;
    size_t off;
};

/* One record of type with plen bytes from cur (or from msg when cur is NULL). */
static ssize_t seal_record(struct dir *d, unsigned char type, struct cursor *cur,
                           const unsigned char *msg, size_t plen, unsigned char *out)
{
    size_t clen = plen + 1 + TLSREC_TAG, o = TLSREC_HEADER;
    unsigned char nonce[IV_LEN];
    int outl = 0;

    out[0] = CT_APPLICATION;
    out[1] = 3;
    out[2] = 3;
    out[3] = (unsigned char)(clen >> 8);
    out[4] = (unsigned char)clen;
    nonce_of(d, nonce);
    if (EVP_EncryptInit_ex(d->ctx, NULL, NULL, NULL, nonce) != 1 ||
        EVP_EncryptUpdate(d->ctx, NULL, &outl, out, TLSREC_HEADER) != 1)
        return -1;
    while (plen > 0) {
        const unsigned char *p;
        size_t take;
        if (cur) {
            while (cur->i < cur->n && cur->off == cur->iov[cur->i].iov_len) {
                cur->i++;
                cur->off = 0;
            }
            if (cur->i >= cur->n)
                return -1;
            p = (const unsigned char *)cur->iov[cur->i].iov_base + cur->off;
            take = cur->iov[cur->i].iov_len - cur->off;
            if (take > plen)
                take = plen;
            cur->off += take;
        } else {
            p = msg;
            take = plen;
        }
        if (EVP_EncryptUpdate(d->ctx, out + o, &outl, p, (int)take) != 1)
            return -1;
        o += (size_t)outl;
        plen -= take;
    }
    if (EVP_EncryptUpdate(d->ctx, out + o, &outl, &type, 1) != 1)
        return -1;
    o += (size_t)outl;
    if (EVP_EncryptFinal_ex(d->ctx, out + o, &outl) != 1)
        return -1;
    o += (size_t)outl;
    if (EVP_CIPHER_CTX_ctrl(d->ctx, EVP_CTRL_AEAD_GET_TAG, TLSREC_TAG, out + o) != 1)
        return -1;
    o += TLSREC_TAG;
    if (o != TLSREC_HEADER + clen)
        return -1;
    d->seq++;
    return (ssize_t)o;
}

/* Send KeyUpdate under the old key, then move to the new one. */
static ssize_t seal_key_update(struct tls_records *r, int request, unsigned char *out)
{
    unsigned char msg[5] = {HS_KEY_UPDATE, 0, 0, 1, (unsigned char)(request ? 1 : 0)};
    ssize_t n = seal_record(&r->tx, CT_HANDSHAKE, NULL, msg, sizeof(msg), out);

    if (n < 0 || dir_update(r, &r->tx) != 0)
        return -1;
    return n;
}

ssize_t tls_records_seal(struct tls_records *r, const struct iovec *iov, int iovcnt,
                         unsigned char *out)
{
    struct cursor cur = {.iov = iov, .n = iovcnt};
    size_t total = 0, o = 0;
    ssize_t n;

    for (int i = 0; i < iovcnt; i++)
        total += iov[i].iov_len;
    /* The peer asked us to move on (RFC 8446 4.6.3): answer before more data. */
    if (atomic_exchange(&r->update_asked, 0)) {
        if ((n = seal_key_update(r, 0, out + o)) < 0)
            return -1;
        o += (size_t)n;
    }
    do {
        size_t plen = total < TLSREC_MAX_PLAIN ? total : TLSREC_MAX_PLAIN;
        if (r->tx.seq >= r->rekey_every) {
            /* Ask the peer to move on too, so both directions age alike. */
            if ((n = seal_key_update(r, 1, out + o)) < 0)
                return -1;
            o += (size_t)n;
        }
        if ((n = seal_record(&r->tx, CT_APPLICATION, &cur, NULL, plen, out + o)) < 0)
            return -1;
        o += (size_t)n;
        total -= plen;
    } while (total > 0);
    return (ssize_t)o;
}

/* TEST/FUZZ HOOK ONLY: see tls_records.h. */
ssize_t tls_records_seal_type(struct tls_records *r, unsigned char type, const void *msg,
                              size_t len, unsigned char *out)
{
    if (len > TLSREC_MAX_CIPHER - 1 - TLSREC_TAG)
        return -1;
    return seal_record(&r->tx, type, NULL, msg, len, out);
}

/* ------------------------------------------------------------------ open */

/* Decrypt the record at rec (header included, ciphertext length clen) into
 * out, which has room for clen - TLSREC_TAG bytes (out may be rec + 5). The
 * inner content type goes to *type, the content length to *plen. */
static int open_record(struct dir *d, const unsigned char *rec, size_t clen, unsigned char *out,
                       unsigned char *type, size_t *plen)
{
    unsigned char nonce[IV_LEN], tag[TLSREC_TAG];
    size_t n = clen - TLSREC_TAG;
    int outl = 0;

    memcpy(tag, rec + TLSREC_HEADER + n, TLSREC_TAG);
    nonce_of(d, nonce);
    if (EVP_DecryptInit_ex(d->ctx, NULL, NULL, NULL, nonce) != 1 ||
        EVP_DecryptUpdate(d->ctx, NULL, &outl, rec, TLSREC_HEADER) != 1 ||
        EVP_DecryptUpdate(d->ctx, out, &outl, rec + TLSREC_HEADER, (int)n) != 1 ||
        (size_t)outl > n ||
        EVP_CIPHER_CTX_ctrl(d->ctx, EVP_CTRL_AEAD_SET_TAG, TLSREC_TAG, tag) != 1 ||
        EVP_DecryptFinal_ex(d->ctx, out + outl, &outl) != 1) {
        ERR_clear_error();
        return -1; /* bad_record_mac: forged, corrupted, or out of order */
    }
    d->seq++;
    /* TLSInnerPlaintext: content, type, zero padding. */
    while (n > 0 && out[n - 1] == 0)
        n--;
    if (n == 0 || n - 1 > TLSREC_MAX_PLAIN)
        return -1;
    *type = out[n - 1];
    *plen = n - 1;
    return 0;
}

/* What a non-data record asks of us: 0 go on, 1 orderly end, -1 errno set. */
static int control_record(struct tls_records *r, unsigned char type, const unsigned char *p,
                          size_t len)
{
    if (type == CT_ALERT) {
        if (len != 2) {
            errno = EPROTO;
            return -1;
        }
        if (p[1] == 0) { /* close_notify */
            r->eof = 1;
            return 1;
        }
        errno = ECONNRESET;
        return -1;
    }
    if (type != CT_HANDSHAKE) {
        errno = EPROTO;
        return -1;
    }
    /* Handshake messages: type(1) length(3) body, possibly several. */
    while (len > 0) {
        size_t mlen;
        if (len < 4) {
            errno = EPROTO;
            return -1;
        }
        mlen = (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
        if (mlen > len - 4) {
            errno = EPROTO;
            return -1;
        }
        if (p[0] == HS_KEY_UPDATE) {
            /* The key changes after this message: nothing may follow it in
             * the same record (RFC 8446 5.1). */
            if (mlen != 1 || p[4] > 1 || len != 5 || dir_update(r, &r->rx) != 0) {
                errno = EPROTO;
                return -1;
            }
            if (p[4] == 1)
                atomic_store(&r->update_asked, 1);
        } else if (p[0] != HS_NEW_SESSION_TICKET) {
            errno = EPROTO; /* post-handshake auth and the like: not spoken here */
            return -1;
        }
        p += 4 + mlen;
        len -= 4 + mlen;
    }
    return 0;
}

/* Decrypt the whole records r->in holds into buf. Returns bytes of data,
 * 0 at the end, -1 with errno, or -2 when a further read is needed first. */
static ssize_t drain(struct tls_records *r, unsigned char *buf, size_t len)
{
    size_t got = 0;

    if (r->pend_len) {
        size_t n = r->pend_len < len ? r->pend_len : len;
        memcpy(buf, r->pend, n);
        r->pend += n;
        r->pend_len -= n;
        return (ssize_t)n;
    }
    if (r->err) {
        errno = r->err;
        return -1;
    }
    if (r->eof)
        return 0;
    while (r->in_end - r->in_start >= TLSREC_HEADER) {
        unsigned char *rec = r->in + r->in_start, type = 0, *out;
        size_t clen = (size_t)rec[3] << 8 | rec[4], plen = 0;
        int in_place;

        if (rec[0] != CT_APPLICATION || rec[1] != 3 || rec[2] != 3 || clen < 1 + TLSREC_TAG ||
            clen > TLSREC_MAX_CIPHER) {
            r->err = EPROTO;
            break;
        }
        if (r->in_end - r->in_start - TLSREC_HEADER < clen)
            break;
        /* Straight into the caller's buffer when it fits; else in place. */
        in_place = clen - TLSREC_TAG > len - got;
        if (in_place && got > 0)
            break;
        out = in_place ? rec + TLSREC_HEADER : buf + got;
        if (open_record(&r->rx, rec, clen, out, &type, &plen) != 0) {
            r->err = EPROTO;
            break;
        }
        r->in_start += TLSREC_HEADER + clen;
        if (type == CT_APPLICATION) {
            if (in_place) {
                if (plen == 0)
                    continue; /* empty (padded) record: no recursion per record */
                r->pend = out;
                r->pend_len = plen;
                return drain(r, buf, len);
            }
            got += plen;
            continue;
        }
        {
            int c = control_record(r, type, out, plen);
            if (c < 0) {
                r->err = errno;
                break;
            }
            if (c > 0)
                break;
        }
    }
    /* Data first; a failure or the end behind it shows on the next call. */
    if (got)
        return (ssize_t)got;
    if (r->err) {
        errno = r->err;
        return -1;
    }
    return r->eof ? 0 : -2;
}

/* Make room at the end of r->in for the next read. */
static void compact(struct tls_records *r)
{
    if (r->in_start == 0)
        return;
    memmove(r->in, r->in + r->in_start, r->in_end - r->in_start);
    r->in_end -= r->in_start;
    r->in_start = 0;
}

ssize_t tls_records_recv(struct tls_records *r, int fd, void *buf, size_t len)
{
    if (len == 0)
        return 0;
    for (;;) {
        ssize_t n = drain(r, buf, len);
        if (n != -2)
            return n;
        /* Keep a whole record's room free behind the partial one. */
        if (r->in_start == r->in_end || IN_CAP - r->in_end < TLSREC_HEADER + TLSREC_MAX_CIPHER)
            compact(r);
        n = recv(fd, r->in + r->in_end, IN_CAP - r->in_end, 0);
        if (n <= 0)
            return n; /* 0: the stream ended; -1: errno from recv */
        r->in_end += (size_t)n;
    }
}

ssize_t tls_records_feed(struct tls_records *r, const unsigned char *data, size_t n, void *buf,
                         size_t len)
{
    ssize_t rc;

    if (len == 0)
        return 0;
    if (r->pend_len == 0)
        compact(r);
    if (n > IN_CAP - r->in_end)
        n = IN_CAP - r->in_end;
    memcpy(r->in + r->in_end, data, n);
    r->in_end += n;
    rc = drain(r, buf, len);
    if (rc == -2) {
        errno = EAGAIN;
        return -1;
    }
    return rc;
}

/* diag.c - hints for a tunnel that cannot start (see diag.h). */

#include "diag.h"

#include <string.h>

static void on_msg(int write_p, int version, int content_type, const void *buf, size_t len,
                   SSL *ssl, void *arg)
{
    struct diag_peek *pk = arg;

    (void)version;
    (void)ssl;
    if (write_p || content_type != SSL3_RT_HEADER || pk->n || len < 1)
        return;
    pk->n = len < sizeof(pk->first) ? (int)len : (int)sizeof(pk->first);
    memcpy(pk->first, buf, (size_t)pk->n);
}

void diag_tls_watch(SSL *ssl, struct diag_peek *pk)
{
    memset(pk, 0, sizeof(*pk));
    SSL_set_msg_callback(ssl, on_msg);
    SSL_set_msg_callback_arg(ssl, pk);
}

#define HINT_WEB_PORT "the peer answered in HTTP: this is probably proxy_public's WEB_PORT; " \
                      "give its TUNNEL_PORT (the first of its two ports)"

const char *diag_tls_client_hint(const struct diag_peek *pk, const char *err)
{
    if (pk->n >= 5 && memcmp(pk->first, "HTTP/", 5) == 0)
        return HINT_WEB_PORT;
    if (pk->n >= 1 && pk->first[0] != 0x15 && pk->first[0] != 0x16 && pk->first[0] != 0x17)
        return "the peer does not speak TLS: does the public side run with "
               "--insecure-plaintext? then both sides need it (or this is not proxy_public)";
    if (err && strstr(err, "closed during the TLS handshake"))
        return "the peer closed without a TLS answer: is this proxy_public's TUNNEL_PORT, and "
               "does it run with TLS (not --insecure-plaintext)?";
    return "does the public side run with --insecure-plaintext? then both sides need it";
}

const char *diag_plain_client_hint(const char *err)
{
    if (!err)
        return NULL;
    /* "HTTP" read as a big-endian frame length. */
    if (strstr(err, "header length 1213486160"))
        return HINT_WEB_PORT;
    if (strstr(err, "reset") || strstr(err, "closed") || strstr(err, "header length") ||
        strstr(err, "in time"))
        return "the public side may run with TLS (the default): --insecure-plaintext must be "
               "given on both sides or on neither";
    return NULL;
}

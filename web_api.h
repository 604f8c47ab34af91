#ifndef WEB_API_H
#define WEB_API_H

/* The public side's web port, served by CivetWeb behind the front of
 * web_front.c: the HTTP API of docs/API.md, /metrics, and the page embedded
 * from web/. */

#include <openssl/ssl.h>
#include <stddef.h>

/* Request bodies: at most this many bytes (413 beyond). */
#define WEB_MAX_BODY 16384

/* JSON bodies nested deeper than this are refused (400) before Jansson parses
 * them: its parser recurses once per level. API bodies are one level deep. */
#define WEB_MAX_JSON_DEPTH 32

/* The stack of a CivetWeb worker thread, where the handlers (and Jansson) run.
 * Debian 12's libcivetweb 1.15 is built with USE_STACK_SIZE=102400: it calls
 * pthread_attr_setstacksize(102400) for every thread it starts (objdump -d
 * libcivetweb.so.1; pthread_getattr_np() in a handler says 102400 too) and has
 * no run-time option for it. fuzz/fuzz_api_body.c runs on a stack this size. */
#define WEB_CIVETWEB_STACK_SIZE (100 * 1024)

/* Serve the web port on port at every address of binds (none: both families,
 * dual-stack, net_listen_all): the front of web_front.c listens on the port, plain HTTP
 * (https_ctx NULL) or HTTPS, and CivetWeb only on 127.0.0.1 at an internal
 * port; https_ctx stays the caller's and must outlive web_stop().
 * 0, or -1 with a reason in err. */
struct net_binds;
int web_start(const struct net_binds *binds, int port, const char *token, SSL_CTX *https_ctx, char *err,
              size_t errlen);

/* Stop the front (waiting for its connections, bounded) and CivetWeb. */
void web_stop(void);

/* Constant-time comparison of a presented secret with the expected one. */
int web_token_equal(const char *given, size_t given_len, const char *expected);

#endif

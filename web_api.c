/* web_api.c - HTTP API, metrics and the page on the web port (CivetWeb).
 *
 * Every API call needs "Authorization: Bearer TOKEN"; there are no cookies, so a
 * cross-site request cannot ride on a browser's session. Bodies are limited to
 * WEB_MAX_BODY bytes, need a Content-Length, and are parsed as one JSON object
 * with duplicate keys refused. Wrong tokens are rate limited per client address
 * (ratelimit.c; the real address, also behind the HTTPS front of web_tls.c).
 * CivetWeb serves one request per connection (no keep-alive) with WEB_THREADS
 * workers: that bounds the requests handled at once. */

#include "web_api.h"

#include <arpa/inet.h>
#include <civetweb.h>
#include <dirent.h>
#include <netinet/in.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "ratelimit.h"
#include "registry.h"
#include "web_assets.h"
#include "web_tls.h"

#define WEB_MAX_BODY 16384
#define WEB_THREADS "8"
#define WEB_MAX_HEAD "8192"
#define WEB_INTERNAL_TRIES 5

static struct mg_context *web_ctx;
static char *web_token;
static _Atomic int web_https;   /* 1 while the TLS front is in front of CivetWeb */

static const char security_headers[] =
    "Content-Security-Policy: default-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'\r\n"
    "X-Frame-Options: DENY\r\n"
    "X-Content-Type-Options: nosniff\r\n"
    "Referrer-Policy: no-referrer\r\n"
    "Cache-Control: no-store\r\n"
    "Connection: close\r\n";

static const char *status_text(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 503: return "Service Unavailable";
    default: return "Internal Server Error";
    }
}

static int send_body(struct mg_connection *conn, int status, const char *type, const void *body,
                     size_t len, const char *extra)
{
    mg_printf(conn,
              "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s%s\r\n", status,
              status_text(status), type, len, security_headers, extra ? extra : "");
    if (len)
        mg_write(conn, body, len);
    return status;
}

/* Send obj (consumed) as JSON, with extra header lines (each ending in CRLF, or NULL). */
static int send_json_extra(struct mg_connection *conn, int status, json_t *obj, const char *extra)
{
    char *text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    int rc;

    json_decref(obj);
    if (!text)
        return send_body(conn, 500, "application/json", "{\"error\":\"out of memory\"}", 25, NULL);
    rc = send_body(conn, status, "application/json", text, strlen(text), extra);
    free(text);
    return rc;
}

static int send_json(struct mg_connection *conn, int status, json_t *obj)
{
    return send_json_extra(conn, status, obj, NULL);
}

static int send_error(struct mg_connection *conn, int status, const char *msg)
{
    return send_json(conn, status, json_pack("{s:s}", "error", msg));
}

int web_token_equal(const char *given, size_t given_len, const char *expected)
{
    size_t elen = strlen(expected);
    unsigned char diff = (unsigned char)(given_len != elen);

    /* Walk the expected token whatever was given, so timing says nothing. */
    for (size_t i = 0; i < elen; i++)
        diff |= (unsigned char)(expected[i] ^ (i < given_len ? given[i] : 0));
    return diff == 0;
}

/* 1 = the right token, 0 = a wrong token was presented (a guess: it counts for
 * rate limiting), -1 = no Bearer token at all (not a guess). */
static int authorized(struct mg_connection *conn)
{
    const char *h = mg_get_header(conn, "Authorization");

    if (!h || strncmp(h, "Bearer ", 7) != 0)
        return -1;
    h += 7;
    return web_token_equal(h, strlen(h), web_token) ? 1 : 0;
}

/* The client's address: CivetWeb's view, except for connections the TLS front
 * made on behalf of a client, which it maps back to that client's address. */
static void client_ip(const struct mg_request_info *ri, char ip[RATELIMIT_KEY_LEN])
{
    if (web_https && web_tls_client_addr(ri->remote_port, ip, RATELIMIT_KEY_LEN) == 0)
        return;
    snprintf(ip, RATELIMIT_KEY_LEN, "%s", ri->remote_addr);
}

static int send_rate_limited(struct mg_connection *conn, unsigned wait_ms)
{
    char extra[64], msg[160];
    unsigned secs = (wait_ms + 999) / 1000;

    if (secs == 0)
        secs = 1;
    snprintf(extra, sizeof(extra), "Retry-After: %u\r\n", secs);
    snprintf(msg, sizeof(msg),
             "too many wrong tokens from this address: try again in %u s", secs);
    return send_json_extra(conn, 429, json_pack("{s:s,s:I}", "error", msg, "retry_after",
                                                (json_int_t)secs),
                           extra);
}

/* Read the whole body (at most WEB_MAX_BODY) and parse it as a JSON object. */
static json_t *read_json_body(struct mg_connection *conn, int *status, char *err, size_t errlen)
{
    const struct mg_request_info *ri = mg_get_request_info(conn);
    char *buf = NULL;
    size_t len = 0;
    json_error_t jerr;
    json_t *obj = NULL;

    *status = 400;
    if (ri->content_length < 0) {
        snprintf(err, errlen, "a Content-Length header is required (no chunked bodies)");
        *status = 411;
        return NULL;
    }
    if (ri->content_length > WEB_MAX_BODY) {
        snprintf(err, errlen, "the request body is larger than %d bytes", WEB_MAX_BODY);
        *status = 413;
        return NULL;
    }
    buf = malloc(WEB_MAX_BODY + 1);
    if (!buf) {
        snprintf(err, errlen, "out of memory");
        *status = 500;
        return NULL;
    }
    for (;;) {
        int n = mg_read(conn, buf + len, WEB_MAX_BODY + 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        if (len > WEB_MAX_BODY) {
            snprintf(err, errlen, "the request body is larger than %d bytes", WEB_MAX_BODY);
            *status = 413;
            goto out;
        }
    }
    obj = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!obj) {
        snprintf(err, errlen, "the body is not valid JSON: %s", jerr.text);
    } else if (!json_is_object(obj)) {
        snprintf(err, errlen, "the body must be a JSON object");
        json_decref(obj);
        obj = NULL;
    }
out:
    free(buf);
    return obj;
}

static int api_register(struct mg_connection *conn)
{
    char err[300];
    struct app_spec spec;
    int status;
    json_t *body = read_json_body(conn, &status, err, sizeof(err));

    if (!body)
        return send_error(conn, status, err);
    if (registry_spec_from_json(body, &spec, err, sizeof(err)) != 0) {
        json_decref(body);
        return send_error(conn, 400, err);
    }
    json_decref(body);
    status = registry_register(&spec, 0, err, sizeof(err));
    if (status >= 300)
        return send_error(conn, status, err);
    /* Answer with the app as /list shows it. */
    {
        json_t *list = registry_list(), *app = NULL, *a;
        size_t i;
        json_array_foreach(json_object_get(list, "apps"), i, a) {
            if (strcmp(json_string_value(json_object_get(a, "name")), spec.name) == 0)
                app = json_incref(a);
        }
        json_decref(list);
        return send_json(conn, 201, json_pack("{s:o*}", "app", app));
    }
}

static int api_unregister(struct mg_connection *conn)
{
    char err[300];
    int status;
    json_t *body = read_json_body(conn, &status, err, sizeof(err));
    const char *name;

    if (!body)
        return send_error(conn, status, err);
    name = json_string_value(json_object_get(body, "name"));
    if (!name) {
        json_decref(body);
        return send_error(conn, 400, "'name' (a string) is required");
    }
    status = registry_unregister(name, err, sizeof(err));
    json_decref(body);
    if (status != 200)
        return send_error(conn, status, err);
    return send_json(conn, 200, json_pack("{s:b}", "ok", 1));
}

/* Threads and descriptors of this process, read from /proc. */
static void process_counts(long *threads, long *fds)
{
    char line[256];
    FILE *f = fopen("/proc/self/status", "re");
    DIR *d;
    struct dirent *de;

    *threads = *fds = -1;
    while (f && fgets(line, sizeof(line), f))
        if (strncmp(line, "Threads:", 8) == 0)
            *threads = strtol(line + 8, NULL, 10);
    if (f)
        fclose(f);
    d = opendir("/proc/self/fd");
    if (!d)
        return;
    *fds = 0;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.')
            (*fds)++;
    closedir(d);
    (*fds)--; /* the directory stream itself */
}

static int api_metrics(struct mg_connection *conn)
{
    char *text = registry_metrics();
    char *all = NULL;
    size_t len = 0;
    long threads, fds;
    FILE *f;
    int rc;

    if (!text)
        return send_error(conn, 500, "out of memory");
    process_counts(&threads, &fds);
    f = open_memstream(&all, &len);
    if (!f) {
        free(text);
        return send_error(conn, 500, "out of memory");
    }
    fprintf(f, "%s# HELP process_threads Threads of this process.\n# TYPE process_threads gauge\n"
               "process_threads %ld\n# HELP process_open_fds Open file descriptors.\n"
               "# TYPE process_open_fds gauge\nprocess_open_fds %ld\n",
            text, threads, fds);
    fclose(f);
    free(text);
    rc = send_body(conn, 200, "text/plain; version=0.0.4; charset=utf-8", all, len, NULL);
    free(all);
    return rc;
}

static int serve_asset(struct mg_connection *conn, const char *uri)
{
    if (strcmp(uri, "/") == 0)
        uri = "/index.html";
    for (size_t i = 0; i < web_assets_count; i++)
        if (strcmp(web_assets[i].path, uri) == 0)
            return send_body(conn, 200, web_assets[i].mime, web_assets[i].data, web_assets[i].len,
                             NULL);
    return send_error(conn, 404, "not found");
}

static int handle(struct mg_connection *conn, void *cbdata)
{
    const struct mg_request_info *ri = mg_get_request_info(conn);
    const char *uri = ri->local_uri ? ri->local_uri : "/";
    int is_get = strcmp(ri->request_method, "GET") == 0 || strcmp(ri->request_method, "HEAD") == 0;
    int is_post = strcmp(ri->request_method, "POST") == 0;
    int api = strcmp(uri, "/register") == 0 || strcmp(uri, "/unregister") == 0 ||
              strcmp(uri, "/list") == 0 || strcmp(uri, "/metrics") == 0;
    char ip[RATELIMIT_KEY_LEN];
    unsigned wait_ms = 0;
    int auth;

    (void)cbdata;
    if (!api) {
        if (!is_get)
            return send_error(conn, 405, "only GET is allowed here");
        return serve_asset(conn, uri);
    }
    client_ip(ri, ip);
    if (ratelimit_check(ip, &wait_ms)) {
        log_warn("ev=web_rate_limited client=%s uri=%s wait_ms=%u", ip, uri, wait_ms);
        return send_rate_limited(conn, wait_ms);
    }
    auth = authorized(conn);
    if (auth != 1) {
        if (auth == 0)
            ratelimit_fail(ip);
        log_warn("ev=web_unauthorized client=%s uri=%s reason=\"%s\"", ip, uri,
                 auth == 0 ? "wrong token" : "no Bearer token");
        return send_error(conn, 401, "missing or wrong token: send 'Authorization: Bearer TOKEN'");
    }
    ratelimit_success(ip);
    if (strcmp(uri, "/list") == 0)
        return is_get ? send_json(conn, 200, registry_list())
                      : send_error(conn, 405, "use GET for /list");
    if (strcmp(uri, "/metrics") == 0)
        return is_get ? api_metrics(conn) : send_error(conn, 405, "use GET for /metrics");
    if (!is_post)
        return send_error(conn, 405, "use POST with a JSON body");
    return strcmp(uri, "/register") == 0 ? api_register(conn) : api_unregister(conn);
}

static int on_log(const struct mg_connection *conn, const char *message)
{
    char esc[200];

    (void)conn;
    log_warn("ev=web_error msg=\"%s\"", log_escape(message, esc, sizeof(esc)));
    return 1;
}

/* Start CivetWeb on listening_ports spec ports; NULL when it cannot. */
static struct mg_context *web_civet_start(const char *ports)
{
    struct mg_callbacks cb;
    struct mg_context *ctx;
    const char *options[] = {
        "listening_ports", ports,
        "num_threads", WEB_THREADS,
        "request_timeout_ms", "10000",
        "enable_keep_alive", "no",
        "max_request_size", WEB_MAX_HEAD,
        "enable_directory_listing", "no",
        NULL, NULL,
    };

    memset(&cb, 0, sizeof(cb));
    cb.log_message = on_log;
    ctx = mg_start(&cb, NULL, options);
    if (ctx)
        mg_set_request_handler(ctx, "/", handle, NULL);
    return ctx;
}

/* A loopback port that was free a moment ago, or -1. */
static int web_free_loopback_port(void)
{
    struct sockaddr_in sin;
    socklen_t sl = sizeof(sin);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port = -1;

    if (fd < 0)
        return -1;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0 &&
        getsockname(fd, (struct sockaddr *)&sin, &sl) == 0)
        port = ntohs(sin.sin_port);
    close(fd);
    return port;
}

/* HTTPS: the front takes the public port first (so "in use" names the right
 * port), then CivetWeb gets a free loopback port (another program may grab it
 * between our probe and CivetWeb's bind: then try another), then the front
 * starts relaying to it. */
static int web_start_https(const char *bind_addr, int port, SSL_CTX *ctx, char *err,
                           size_t errlen)
{
    char ports[64];
    int internal = -1;

    if (web_tls_listen(ctx, bind_addr, port, err, errlen) != 0)
        return -1;
    for (int i = 0; i < WEB_INTERNAL_TRIES && !web_ctx; i++) {
        internal = web_free_loopback_port();
        if (internal < 0)
            continue;
        snprintf(ports, sizeof(ports), "127.0.0.1:%d", internal);
        web_ctx = web_civet_start(ports);
    }
    if (!web_ctx) {
        snprintf(err, errlen, "cannot start the internal web server on a loopback port");
        web_tls_stop();
        return -1;
    }
    web_https = 1;
    if (web_tls_run(internal, err, errlen) != 0) {
        web_tls_stop();
        return -1;
    }
    log_info("ev=web_https_ready port=%d internal_port=%d", port, internal);
    return 0;
}

int web_start(const char *bind_addr, int port, const char *token, SSL_CTX *https_ctx, char *err,
              size_t errlen)
{
    char ports[96];

    web_token = strdup(token);
    if (!web_token) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (https_ctx) {
        if (web_start_https(bind_addr, port, https_ctx, err, errlen) != 0)
            goto fail;
    } else {
        if (bind_addr && *bind_addr)
            snprintf(ports, sizeof(ports), "%s:%d", bind_addr, port);
        else
            snprintf(ports, sizeof(ports), "%d", port);
        web_ctx = web_civet_start(ports);
        if (!web_ctx) {
            snprintf(err, errlen, "cannot serve the web port %s (in use, or not allowed?)", ports);
            goto fail;
        }
    }
    return 0;
fail:
    if (web_ctx)
        mg_stop(web_ctx);
    web_ctx = NULL;
    web_https = 0;
    free(web_token);
    web_token = NULL;
    return -1;
}

void web_stop(void)
{
    /* The front first: its connections end before CivetWeb goes away. */
    web_tls_stop();
    if (web_ctx)
        mg_stop(web_ctx);
    web_ctx = NULL;
    web_https = 0;
    free(web_token);
    web_token = NULL;
}

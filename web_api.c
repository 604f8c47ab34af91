/* web_api.c - HTTP API, metrics and the page on the web port (CivetWeb).
 *
 * Every connection to the web port passes the front of web_front.c first (plain
 * HTTP or HTTPS), which hands CivetWeb only whole, bounded requests over
 * loopback; CivetWeb listens on 127.0.0.1 at an internal port only.
 *
 * Every API call needs "Authorization: Bearer TOKEN"; there are no cookies, so a
 * cross-site request cannot ride on a browser's session. Bodies are limited to
 * WEB_MAX_BODY bytes, need a Content-Length, are nested at most
 * WEB_MAX_JSON_DEPTH levels, and are parsed as one JSON object with duplicate
 * keys refused. Wrong tokens are rate limited per client address (ratelimit.c;
 * the real address, which the front maps back). CivetWeb serves one request per
 * connection (no keep-alive) with WEB_THREADS workers: that bounds the requests
 * handled at once. */

#include "cluster.h"
#include "web_api.h"

#include <arpa/inet.h>
#include <civetweb.h>
#include <dirent.h>
#include <netinet/in.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "json_depth.h"
#include "log.h"
#include "ratelimit.h"
#include "registry.h"
#include "tokens.h"
#include "web_assets.h"
#include "web_front.h"

#define WEB_THREADS "8"
/* Larger than the front's head limit (WEB_FRONT_HEAD_MAX), so that every head
 * the front lets through fits CivetWeb's buffer with room to spare. */
#define WEB_MAX_HEAD "16384"
#define WEB_INTERNAL_TRIES 5

static struct mg_context *web_ctx;
static char *web_token;
static int web_internal_port = -1;
static _Atomic int web_stopped;

static const char *status_text(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 503: return "Service Unavailable";
    default: return "Internal Server Error";
    }
}

/* The answer: headers, then the body unless the request was HEAD (which gets
 * the headers a GET would, Content-Length included, and no body). */
static int send_body(struct mg_connection *conn, int status, const char *type, const void *body,
                     size_t len, const char *extra)
{
    int is_head = strcmp(mg_get_request_info(conn)->request_method, "HEAD") == 0;

    mg_printf(conn,
              "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s%s\r\n", status,
              status_text(status), type, len, WEB_SECURITY_HEADERS, extra ? extra : "");
    if (len && !is_head)
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

/* 1 = the admin's token or a scoped one (who says which), 0 = a wrong token
 * was presented (a guess: it counts for rate limiting), -1 = no Bearer token
 * at all (not a guess). The scheme is case-insensitive (RFC 7235 2.1:
 * "bearer", "BEARER" too), then one or more spaces, then the token. */
static int authorized(struct mg_connection *conn, struct principal *who)
{
    const char *h = mg_get_header(conn, "Authorization");
    int scoped;

    memset(who, 0, sizeof(*who));
    if (!h || strncasecmp(h, "Bearer", 6) != 0 || h[6] != ' ')
        return -1;
    h += 6;
    while (*h == ' ')
        h++;
    if (!*h)
        return -1;
    /* Both comparisons, whatever the first says. */
    who->admin = web_token_equal(h, strlen(h), web_token);
    scoped = tokens_lookup(h, strlen(h), &who->scope);
    return who->admin || scoped ? 1 : 0;
}

/* The client's address: the front maps its own connections (matched by
 * address and port) back to their client's address; anything else came to
 * the internal port directly from this host, and is what CivetWeb saw. */
static void client_ip(const struct mg_request_info *ri, char ip[RATELIMIT_KEY_LEN])
{
    if (web_front_client_addr(ri->remote_addr, ri->remote_port, ip, RATELIMIT_KEY_LEN) == 0)
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
    /* Jansson recurses per level: bound the nesting first (a deep body would
     * overflow this worker's 100 KiB stack and end the process). */
    if (!json_depth_ok(buf, len, WEB_MAX_JSON_DEPTH)) {
        snprintf(err, errlen, "the body is nested deeper than %d levels", WEB_MAX_JSON_DEPTH);
        goto out;
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

static int api_register(struct mg_connection *conn, const struct principal *who)
{
    char err[PKT_HOST_MAX * 2 + 300];
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
    status = registry_register_as(&spec, 0, who, err, sizeof(err));
    if (status >= 300)
        return send_error(conn, status, err);
    /* Answer with the app as /list shows it. */
    {
        json_t *list = registry_list_as(who), *app = NULL, *a;
        size_t i;
        json_array_foreach(json_object_get(list, "apps"), i, a) {
            if (strcmp(json_string_value(json_object_get(a, "name")), spec.name) == 0)
                app = json_incref(a);
        }
        json_decref(list);
        return send_json(conn, 201, json_pack("{s:o*}", "app", app));
    }
}

/* A JSON body with the string member key (1 to 64 bytes): the body, with
 * *name inside it; or NULL with the error answer sent and its result in *rc. */
static json_t *read_named_body(struct mg_connection *conn, const char *key, const char **name,
                               int *rc)
{
    char err[300];
    int status;
    json_t *body = read_json_body(conn, &status, err, sizeof(err));

    if (!body) {
        *rc = send_error(conn, status, err);
        return NULL;
    }
    *name = json_string_value(json_object_get(body, key));
    if (!*name || !**name || strlen(*name) > PKT_NAME_MAX) {
        snprintf(err, sizeof(err), "'%s' (a string) is required", key);
        json_decref(body);
        *rc = send_error(conn, 400, err);
        return NULL;
    }
    return body;
}

/* The answer to an action: {"ok": true}, or the error. */
static int send_done(struct mg_connection *conn, int status, const char *err)
{
    if (status != 200)
        return send_error(conn, status, err);
    return send_json(conn, 200, json_pack("{s:b}", "ok", 1));
}

/* POST /unregister, /disable, /enable: {"name": APP}. */
static int api_app_action(struct mg_connection *conn, const char *uri, const struct principal *who)
{
    char err[300];
    const char *name;
    int status, rc = 0;
    json_t *body = read_named_body(conn, "name", &name, &rc);

    if (!body)
        return rc;
    if (strcmp(uri, "/unregister") == 0)
        status = registry_unregister_as(name, who, err, sizeof(err));
    else
        status = registry_set_disabled(name, strcmp(uri, "/disable") == 0, who, err, sizeof(err));
    json_decref(body);
    return send_done(conn, status, err);
}

/* POST /kick: {"private": NAME, "refuse_for": SECONDS (optional)}. */
static int api_kick(struct mg_connection *conn, const struct principal *who)
{
    char err[300];
    const char *name;
    int status, rc = 0;
    json_t *body = read_named_body(conn, "private", &name, &rc), *v;
    json_int_t refuse = 0;

    if (!body)
        return rc;
    v = json_object_get(body, "refuse_for");
    if (v && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 86400) {
            json_decref(body);
            return send_error(conn, 400, "'refuse_for' must be whole seconds from 0 to 86400");
        }
        refuse = json_integer_value(v);
    }
    status = registry_kick(name, (unsigned)refuse, who, err, sizeof(err));
    json_decref(body);
    return send_done(conn, status, err);
}

/* POST /connections/close: {"private": NAME, "id": CONN}. */
static int api_close_conn(struct mg_connection *conn, const struct principal *who)
{
    char err[300];
    const char *name;
    int status, rc = 0;
    json_t *body = read_named_body(conn, "private", &name, &rc), *v;

    if (!body)
        return rc;
    v = json_object_get(body, "id");
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        json_decref(body);
        return send_error(conn, 400, "'id' (a connection's id from GET /connections) is required");
    }
    status = registry_close_conn(name, (uint64_t)json_integer_value(v), who, err, sizeof(err));
    json_decref(body);
    return send_done(conn, status, err);
}

/* POST /tokens: a new token. */
static int api_token_create(struct mg_connection *conn, const struct principal *who)
{
    char err[300], by[TOKEN_LABEL_MAX * 4 + 40];
    int status;
    json_t *body = read_json_body(conn, &status, err, sizeof(err)), *answer = NULL;

    if (!body)
        return send_error(conn, status, err);
    status = tokens_create(body, &answer, err, sizeof(err));
    json_decref(body);
    if (status != 201)
        return send_error(conn, status, err);
    log_info("ev=token_created id=%s by=%s", json_string_value(json_object_get(answer, "id")),
             principal_who(who, by, sizeof(by)));
    return send_json(conn, 201, answer);
}

/* POST /tokens/revoke {"id"}: closes the token's tunnels too. */
static int api_token_revoke(struct mg_connection *conn, const struct principal *who)
{
    char err[300], by[TOKEN_LABEL_MAX * 4 + 40], idc[TOKEN_ID_LEN + 1];
    const char *id;
    int status, rc = 0;
    json_t *body = read_named_body(conn, "id", &id, &rc);
    unsigned closed;

    if (!body)
        return rc;
    snprintf(idc, sizeof(idc), "%s", id);
    status = tokens_revoke(id, err, sizeof(err));
    json_decref(body);
    if (status != 200)
        return send_error(conn, status, err);
    closed = registry_revoked(idc);
    log_info("ev=token_revoked id=%s tunnels_closed=%u by=%s", idc, closed,
             principal_who(who, by, sizeof(by)));
    return send_json(conn, 200, json_pack("{s:b,s:I}", "ok", 1, "tunnels_closed",
                                          (json_int_t)closed));
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
    cluster_metrics(f);
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

/* The API's endpoints: the methods each takes, and whether only the admin may. */
static const struct {
    const char *uri;
    int get, post, admin;
} endpoints[] = {
    {"/list", 1, 0, 0},          {"/metrics", 1, 0, 1},     {"/register", 0, 1, 0},
    {"/unregister", 0, 1, 0},    {"/disable", 0, 1, 0},     {"/enable", 0, 1, 0},
    {"/kick", 0, 1, 0},          {"/connections", 1, 0, 0}, {"/connections/close", 0, 1, 0},
    {"/tokens", 1, 1, 1},        {"/tokens/revoke", 0, 1, 1},
};

static int handle(struct mg_connection *conn, void *cbdata)
{
    const struct mg_request_info *ri = mg_get_request_info(conn);
    const char *uri = ri->local_uri ? ri->local_uri : "/";
    int is_get = strcmp(ri->request_method, "GET") == 0 || strcmp(ri->request_method, "HEAD") == 0;
    int is_post = strcmp(ri->request_method, "POST") == 0;
    int ep = -1;
    char ip[RATELIMIT_KEY_LEN];
    unsigned wait_ms = 0;
    struct principal who;
    int auth;

    (void)cbdata;
    for (size_t i = 0; i < sizeof(endpoints) / sizeof(endpoints[0]); i++)
        if (strcmp(uri, endpoints[i].uri) == 0)
            ep = (int)i;
    if (ep < 0) {
        if (!is_get)
            return send_error(conn, 405, "only GET is allowed here");
        return serve_asset(conn, uri);
    }
    client_ip(ri, ip);
    if (ratelimit_check_in(RATELIMIT_WEB, ip, &wait_ms)) {
        log_warn("ev=web_rate_limited client=%s uri=%s wait_ms=%u", ip, uri, wait_ms);
        return send_rate_limited(conn, wait_ms);
    }
    auth = authorized(conn, &who);
    if (auth != 1) {
        if (auth == 0)
            ratelimit_fail_in(RATELIMIT_WEB, ip);
        log_warn("ev=web_unauthorized client=%s uri=%s reason=\"%s\"", ip, uri,
                 auth == 0 ? "wrong token" : "no Bearer token");
        return send_error(conn, 401, "missing or wrong token: send 'Authorization: Bearer TOKEN'");
    }
    ratelimit_success_in(RATELIMIT_WEB, ip);
    if ((is_get && !endpoints[ep].get) || (is_post && !endpoints[ep].post) ||
        (!is_get && !is_post))
        return send_error(conn, 405, endpoints[ep].get && endpoints[ep].post
                                         ? "use GET, or POST with a JSON body"
                                     : endpoints[ep].get ? "use GET here"
                                                         : "use POST with a JSON body");
    if (endpoints[ep].admin && !who.admin)
        return send_error(conn, 403, "only the admin token may do this");
    if (strcmp(uri, "/list") == 0) {
        json_t *l = registry_list_as(&who);
        cluster_decorate_list(l, who.admin);
        if (l && !who.admin)
            json_object_set_new(l, "token", token_scope_json(&who.scope));
        if (l)
            json_object_set_new(l, "admin", json_boolean(who.admin));
        return send_json(conn, 200, l);
    }
    if (strcmp(uri, "/metrics") == 0)
        return api_metrics(conn);
    if (strcmp(uri, "/connections") == 0)
        return send_json(conn, 200, registry_connections(&who));
    if (strcmp(uri, "/tokens") == 0 && is_get)
        return send_json(conn, 200, tokens_list());
    if (strcmp(uri, "/tokens") == 0)
        return api_token_create(conn, &who);
    if (strcmp(uri, "/tokens/revoke") == 0)
        return api_token_revoke(conn, &who);
    if (strcmp(uri, "/register") == 0)
        return api_register(conn, &who);
    if (strcmp(uri, "/kick") == 0)
        return api_kick(conn, &who);
    if (strcmp(uri, "/connections/close") == 0)
        return api_close_conn(conn, &who);
    return api_app_action(conn, uri, &who);
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

/* The front takes the public port first (so "in use" names the right port),
 * then CivetWeb gets a free loopback port (another program may grab it between
 * our probe and CivetWeb's bind: then try another), then the front starts
 * handing it requests. */
int web_start(const struct net_binds *binds, int port, const char *token, SSL_CTX *https_ctx, char *err,
              size_t errlen)
{
    char ports[64];
    int internal = -1;

    web_token = strdup(token);
    if (!web_token) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (web_front_listen(https_ctx, binds, port, err, errlen) != 0)
        goto fail;
    for (int i = 0; i < WEB_INTERNAL_TRIES && !web_ctx; i++) {
        internal = web_free_loopback_port();
        if (internal < 0)
            continue;
        snprintf(ports, sizeof(ports), "127.0.0.1:%d", internal);
        web_ctx = web_civet_start(ports);
    }
    if (!web_ctx) {
        snprintf(err, errlen, "cannot start the internal web server on a loopback port");
        goto fail;
    }
    web_internal_port = internal;
    if (web_front_run(internal, err, errlen) != 0)
        goto fail;
    log_info("ev=web_ready port=%d internal_port=%d https=%s", port, internal,
             https_ctx ? "on" : "off");
    return 0;
fail:
    web_front_stop();
    if (web_ctx)
        mg_stop(web_ctx);
    web_ctx = NULL;
    free(web_token);
    web_token = NULL;
    return -1;
}

/* CivetWeb 1.15's master thread looks at its stop flag only when the poll()
 * of its listening socket returns, once a second when nothing comes: mg_stop()
 * alone took about a second of every proxy_public shutdown. A connection to
 * the internal port wakes that poll at once; this thread makes one every
 * 20 ms (loopback only, at most 3 s) until mg_stop() has returned. */
static void *web_stop_waker(void *arg)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};

    (void)arg;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((uint16_t)web_internal_port);
    for (int i = 0; i < 150 && !web_stopped; i++) {
        struct timespec ts = {.tv_nsec = 20 * 1000 * 1000};
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0) {
            (void)connect(fd, (struct sockaddr *)&sa, sizeof(sa));
            close(fd);
        }
        nanosleep(&ts, NULL);
    }
    return NULL;
}

void web_stop(void)
{
    pthread_t waker;
    int have_waker = 0;

    /* The front first: its connections end before CivetWeb goes away. */
    web_front_stop();
    if (web_ctx) {
        web_stopped = 0;
        have_waker = web_internal_port > 0 &&
                     pthread_create(&waker, NULL, web_stop_waker, NULL) == 0;
        mg_stop(web_ctx);
        web_stopped = 1;
        if (have_waker)
            pthread_join(waker, NULL);
    }
    web_ctx = NULL;
    free(web_token);
    web_token = NULL;
}

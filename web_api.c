/* web_api.c - HTTP API, metrics and the page on the web port (CivetWeb).
 *
 * Every API call needs "Authorization: Bearer TOKEN"; there are no cookies, so a
 * cross-site request cannot ride on a browser's session. Bodies are limited to
 * WEB_MAX_BODY bytes and parsed as one JSON object with duplicate keys refused. */

#include "web_api.h"

#include <civetweb.h>
#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "registry.h"
#include "web_assets.h"

#define WEB_MAX_BODY 16384

static struct mg_context *web_ctx;
static char *web_token;

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

/* Send obj (consumed) as JSON. */
static int send_json(struct mg_connection *conn, int status, json_t *obj)
{
    char *text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    int rc;

    json_decref(obj);
    if (!text)
        return send_body(conn, 500, "application/json", "{\"error\":\"out of memory\"}", 25, NULL);
    rc = send_body(conn, status, "application/json", text, strlen(text), NULL);
    free(text);
    return rc;
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

static int authorized(struct mg_connection *conn)
{
    const char *h = mg_get_header(conn, "Authorization");

    if (!h || strncmp(h, "Bearer ", 7) != 0)
        return 0;
    h += 7;
    return web_token_equal(h, strlen(h), web_token);
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

    (void)cbdata;
    if (!api) {
        if (!is_get)
            return send_error(conn, 405, "only GET is allowed here");
        return serve_asset(conn, uri);
    }
    if (!authorized(conn)) {
        log_warn("ev=web_unauthorized client=%s uri=%s", ri->remote_addr, uri);
        return send_error(conn, 401, "missing or wrong token: send 'Authorization: Bearer TOKEN'");
    }
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

int web_start(const char *bind_addr, int port, const char *token, char *err, size_t errlen)
{
    char ports[96];
    struct mg_callbacks cb;
    const char *options[] = {
        "listening_ports", ports,
        "num_threads", "8",
        "request_timeout_ms", "10000",
        "enable_directory_listing", "no",
        NULL, NULL,
    };

    if (bind_addr && *bind_addr)
        snprintf(ports, sizeof(ports), "%s:%d", bind_addr, port);
    else
        snprintf(ports, sizeof(ports), "%d", port);
    web_token = strdup(token);
    if (!web_token) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memset(&cb, 0, sizeof(cb));
    cb.log_message = on_log;
    web_ctx = mg_start(&cb, NULL, options);
    if (!web_ctx) {
        snprintf(err, errlen, "cannot serve the web port %s (in use, or not allowed?)", ports);
        free(web_token);
        web_token = NULL;
        return -1;
    }
    mg_set_request_handler(web_ctx, "/", handle, NULL);
    return 0;
}

void web_stop(void)
{
    if (web_ctx)
        mg_stop(web_ctx);
    web_ctx = NULL;
    free(web_token);
    web_token = NULL;
}

/* registry.c - private proxies and apps of the public side, their listeners,
 * counters and persistence.
 *
 * One mutex (reg.lock) guards the lists and every app's listen_fd. An app is
 * reference counted: the list holds one reference and its acceptor thread
 * another, so unregistering never frees an app under a running acceptor. */

#include "registry.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "netio.h"
#include "state.h"
#include "tunnel.h"

#define STATE_FILE "apps.json"
#define STATE_MAX_BYTES (4 * 1024 * 1024)
#define MAX_APPS 1024
#define MAX_PRIVATES 1024
#define LISTEN_BACKLOG 4096
#define REBIND_EVERY_MS 2000

struct app {
    _Atomic int refs;
    struct app_spec spec;
    struct app_stats *stats;
    int listen_fd;              /* under reg.lock; -1 while not bound */
    _Atomic int stopping;
    struct app *next;
};

struct priv {
    char name[PKT_NAME_MAX + 1];
    struct tunnel *t;           /* a reference while online, else NULL */
    char address[64];
    time_t connected_since;     /* 0: not since this process started */
    uint64_t reconnects;
    struct priv *next;
};

static struct {
    pthread_mutex_t lock;
    struct app *apps;
    struct priv *privs;
    char state_dir[4096];
    char bind_addr[64];
    int tunnel_port, web_port;
    time_t started;
    struct registry_limits limits;
    _Atomic int acceptors;
} reg = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void app_unref(struct app *a)
{
    if (a && --a->refs == 0) {
        app_stats_unref(a->stats);
        free(a);
    }
}

static struct app *find_app(const char *name)
{
    for (struct app *a = reg.apps; a; a = a->next)
        if (strcmp(a->spec.name, name) == 0)
            return a;
    return NULL;
}

static struct priv *find_priv(const char *name)
{
    for (struct priv *p = reg.privs; p; p = p->next)
        if (strcmp(p->name, name) == 0)
            return p;
    return NULL;
}

static unsigned count_privs(void)
{
    unsigned n = 0;

    for (struct priv *p = reg.privs; p; p = p->next)
        n++;
    return n;
}

/* ---------------------------------------------------------- persistence */

static json_t *spec_to_json(const struct app_spec *s)
{
    return json_pack("{s:s,s:i,s:s,s:i,s:s}", "name", s->name, "public_port", s->public_port,
                     "target_host", s->target_host, "target_port", s->target_port, "private",
                     s->private_name);
}

/* Save the apps (plus `extra`, minus `skip`) and privates. Under reg.lock. */
static int save_locked(const struct app_spec *extra, const struct app *skip, char *err,
                       size_t errlen)
{
    json_t *root = json_object(), *apps = json_array(), *privs = json_array();
    char *text = NULL, why[200];
    int rc = -1;

    if (!root || !apps || !privs)
        goto oom;
    for (struct app *a = reg.apps; a; a = a->next)
        if (a != skip && json_array_append_new(apps, spec_to_json(&a->spec)) != 0)
            goto oom;
    if (extra && json_array_append_new(apps, spec_to_json(extra)) != 0)
        goto oom;
    for (struct priv *p = reg.privs; p; p = p->next)
        if (json_array_append_new(privs, json_string(p->name)) != 0)
            goto oom;
    if (json_object_set_new(root, "version", json_integer(1)) != 0 ||
        json_object_set(root, "privates", privs) != 0 || json_object_set(root, "apps", apps) != 0)
        goto oom;
    text = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS);
    if (!text)
        goto oom;
    if (state_write_atomic(reg.state_dir, STATE_FILE, text, strlen(text), why, sizeof(why)) != 0) {
        snprintf(err, errlen, "could not save the change, nothing was changed: %s", why);
        goto out;
    }
    rc = 0;
    goto out;
oom:
    snprintf(err, errlen, "out of memory");
out:
    free(text);
    json_decref(apps);
    json_decref(privs);
    json_decref(root);
    return rc;
}

/* --------------------------------------------------------------- accept */

static void refuse_client(struct app *a, int fd, const char *why)
{
    char peer[64];

    net_peer_str(fd, peer, sizeof(peer));
    a->stats->failures++;
    log_warn("ev=client_refused app=%s client=%s reason=\"%s\"", a->spec.name, peer, why);
    close(fd);
}

/* Which connection limit, if any, a new client of a would break. Under reg.lock. */
static const char *over_limit_locked(const struct app *a, struct tunnel *t)
{
    uint64_t total = 0;

    if (a->stats->active >= reg.limits.max_conns_per_app)
        return "too many connections to this app (--max-conns-per-app)";
    if (tunnel_conn_count(t) >= reg.limits.max_conns_per_private)
        return "too many connections through this private proxy (--max-conns-per-private)";
    for (struct app *o = reg.apps; o; o = o->next)
        total += o->stats->active;
    if (total >= reg.limits.max_conns)
        return "too many connections in total (--max-conns)";
    return NULL;
}

static void handle_client(struct app *a, int fd)
{
    struct tunnel *t = NULL;
    struct app_spec s;
    struct priv *p;
    const char *limit = NULL;

    pthread_mutex_lock(&reg.lock);
    s = a->spec;
    p = find_priv(s.private_name);
    if (p && p->t && !tunnel_is_dead(p->t)) {
        t = p->t;
        tunnel_ref(t);
        limit = over_limit_locked(a, t);
    }
    pthread_mutex_unlock(&reg.lock);
    if (!t) {
        refuse_client(a, fd, "private proxy offline");
        return;
    }
    if (limit) {
        a->stats->refused++;
        refuse_client(a, fd, limit);
        tunnel_unref(t);
        return;
    }
    if (log_enabled(LOG_LVL_DEBUG)) {
        char peer[64];
        net_peer_str(fd, peer, sizeof(peer));
        log_debug("ev=client_connected app=%s client=%s", s.name, peer);
    }
    conn_start_public(t, fd, s.name, s.target_host, s.target_port, a->stats);
    tunnel_unref(t);
}

/* Try to bind a's port; under no lock. Returns the fd or -1. */
static int bind_app(const struct app_spec *s, char *err, size_t errlen)
{
    return net_listen(reg.bind_addr[0] ? reg.bind_addr : NULL, s->public_port, LISTEN_BACKLOG, err,
                      errlen);
}

static void *acceptor_main(void *arg)
{
    struct app *a = arg;
    uint64_t last_warn = 0;
    int lfd;

    pthread_setname_np(pthread_self(), "acceptor");
    for (;;) {
        pthread_mutex_lock(&reg.lock);
        lfd = a->listen_fd;
        pthread_mutex_unlock(&reg.lock);
        if (a->stopping)
            break;
        if (lfd < 0) {
            /* Restored from state but the port was busy: keep trying, so the
             * app comes back by itself once the port is free. */
            char err[128];
            struct timespec ts = {.tv_nsec = 100 * 1000 * 1000};
            int fd = bind_app(&a->spec, err, sizeof(err));
            if (fd >= 0) {
                pthread_mutex_lock(&reg.lock);
                if (a->stopping) {
                    close(fd);
                } else {
                    a->listen_fd = fd;
                    log_info("ev=app_listening app=%s port=%d", a->spec.name, a->spec.public_port);
                }
                pthread_mutex_unlock(&reg.lock);
                continue;
            }
            if (mono_ms() - last_warn > 60000) {
                log_error("ev=app_bind_failed app=%s err=\"%s\" retry=yes", a->spec.name, err);
                last_warn = mono_ms();
            }
            for (int i = 0; i < REBIND_EVERY_MS / 100 && !a->stopping; i++)
                nanosleep(&ts, NULL);
            continue;
        }
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0) {
            handle_client(a, fd);
            continue;
        }
        if (a->stopping)
            break;
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if (mono_ms() - last_warn > 1000) {
            log_error("ev=accept_failed app=%s err=\"%s\"", a->spec.name, strerror(errno));
            last_warn = mono_ms();
        }
        /* Out of descriptors or memory: wait for some to be released. */
        struct timespec ts = {.tv_nsec = 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    pthread_mutex_lock(&reg.lock);
    if (a->listen_fd >= 0)
        close(a->listen_fd);
    a->listen_fd = -1;
    pthread_mutex_unlock(&reg.lock);
    reg.acceptors--;
    app_unref(a);
    return NULL;
}

/* Create an app with an already bound listener (or -1), start its acceptor and
 * add it to the list. Under reg.lock. */
static int add_app_locked(const struct app_spec *s, int lfd, char *err, size_t errlen)
{
    struct app *a = calloc(1, sizeof(*a));
    int rc;

    if (!a || !(a->stats = app_stats_new())) {
        free(a);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    a->refs = 2; /* the list and the acceptor */
    a->spec = *s;
    a->listen_fd = lfd;
    reg.acceptors++;
    rc = thread_spawn(acceptor_main, a);
    if (rc != 0) {
        reg.acceptors--;
        snprintf(err, errlen, "cannot start a thread: %s", strerror(rc));
        app_stats_unref(a->stats);
        free(a);
        return -1;
    }
    a->next = reg.apps;
    reg.apps = a;
    return 0;
}

/* Unlink a from the list and stop its acceptor. Under reg.lock. */
static void remove_app_locked(struct app *a)
{
    for (struct app **pp = &reg.apps; *pp; pp = &(*pp)->next) {
        if (*pp == a) {
            *pp = a->next;
            break;
        }
    }
    a->stopping = 1;
    if (a->listen_fd >= 0)
        shutdown(a->listen_fd, SHUT_RDWR); /* wakes accept(); the acceptor closes it */
    app_unref(a);
}

/* ------------------------------------------------------------- register */

int registry_spec_from_json(json_t *obj, struct app_spec *spec, char *err, size_t errlen)
{
    json_t *v;
    const char *s;

    memset(spec, 0, sizeof(*spec));
    if (!json_is_object(obj)) {
        snprintf(err, errlen, "the body must be a JSON object");
        return -1;
    }
    s = json_string_value(json_object_get(obj, "name"));
    if (!pkt_valid_name(s)) {
        snprintf(err, errlen, "'name' must be 1 to 64 letters, digits, '.', '_' or '-'");
        return -1;
    }
    snprintf(spec->name, sizeof(spec->name), "%s", s);
    v = json_object_get(obj, "public_port");
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 65535) {
        snprintf(err, errlen, "'public_port' must be a whole number from 1 to 65535");
        return -1;
    }
    spec->public_port = (int)json_integer_value(v);
    s = json_string_value(json_object_get(obj, "target_host"));
    if (!pkt_valid_host(s)) {
        snprintf(err, errlen, "'target_host' must be a host name or address (1 to 253 characters)");
        return -1;
    }
    snprintf(spec->target_host, sizeof(spec->target_host), "%s", s);
    v = json_object_get(obj, "target_port");
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 65535) {
        snprintf(err, errlen, "'target_port' must be a whole number from 1 to 65535");
        return -1;
    }
    spec->target_port = (int)json_integer_value(v);
    v = json_object_get(obj, "private");
    if (v && !json_is_null(v)) {
        s = json_string_value(v);
        if (!pkt_valid_name(s)) {
            snprintf(err, errlen, "'private' must be the name of a private proxy");
            return -1;
        }
        snprintf(spec->private_name, sizeof(spec->private_name), "%s", s);
    }
    return 0;
}

static int same_spec(const struct app_spec *a, const struct app_spec *b)
{
    return strcmp(a->name, b->name) == 0 && a->public_port == b->public_port &&
           strcmp(a->target_host, b->target_host) == 0 && a->target_port == b->target_port &&
           strcmp(a->private_name, b->private_name) == 0;
}

int registry_register(const struct app_spec *in, int from_private, char *err, size_t errlen)
{
    struct app_spec s = *in;
    struct app *old = NULL;
    unsigned napps = 0;
    int lfd = -1, status = 500, bind_errno;

    if (s.public_port == reg.tunnel_port || s.public_port == reg.web_port) {
        snprintf(err, errlen, "public port %d is this server's %s port; choose another", s.public_port,
                 s.public_port == reg.tunnel_port ? "tunnel" : "web");
        return 400;
    }
    pthread_mutex_lock(&reg.lock);
    if (!s.private_name[0]) {
        unsigned n = count_privs();
        if (n != 1) {
            snprintf(err, errlen,
                     n == 0 ? "no private proxy is known yet: start proxy_private first"
                            : "several private proxies are known: say which one in 'private'");
            status = 400;
            goto out;
        }
        snprintf(s.private_name, sizeof(s.private_name), "%s", reg.privs->name);
    } else if (!find_priv(s.private_name)) {
        snprintf(err, errlen, "no private proxy named '%s' is known", s.private_name);
        status = 400;
        goto out;
    }
    for (struct app *a = reg.apps; a; a = a->next) {
        napps++;
        if (strcmp(a->spec.name, s.name) == 0) {
            if (from_private && strcmp(a->spec.private_name, s.private_name) == 0) {
                if (same_spec(&a->spec, &s)) {
                    status = 200;
                    goto out;
                }
                old = a; /* its own private changed it: replace below */
                continue;
            }
            snprintf(err, errlen, "an app named '%s' already exists", s.name);
            status = 409;
            goto out;
        }
        if (a->spec.public_port == s.public_port) {
            snprintf(err, errlen, "public port %d is already used by app '%s'", s.public_port,
                     a->spec.name);
            status = 409;
            goto out;
        }
    }
    if (!old && napps >= MAX_APPS) {
        snprintf(err, errlen, "too many apps (at most %d)", MAX_APPS);
        status = 409;
        goto out;
    }
    if (old && old->spec.public_port == s.public_port) {
        /* Same port, new target: update in place; the acceptor reads the spec
         * under the lock for every client. */
        if (save_locked(&s, old, err, errlen) != 0) {
            status = 500;
            goto out;
        }
        old->spec = s;
        status = 200;
        log_info("ev=app_updated app=%s public_port=%d target=%s:%d private=%s", s.name,
                 s.public_port, s.target_host, s.target_port, s.private_name);
        goto out;
    }
    lfd = bind_app(&s, err, errlen);
    bind_errno = errno;
    if (lfd < 0) {
        if (bind_errno == EADDRINUSE) {
            snprintf(err, errlen, "public port %d is in use by another program on this server",
                     s.public_port);
            status = 409;
        } else {
            char why[128];
            snprintf(why, sizeof(why), "%s", err);
            snprintf(err, errlen, "cannot listen on public port %d: %s", s.public_port, why);
            status = bind_errno == EACCES ? 400 : 500;
        }
        goto out;
    }
    if (save_locked(&s, old, err, errlen) != 0) {
        close(lfd);
        status = 500;
        goto out;
    }
    if (old)
        remove_app_locked(old);
    if (add_app_locked(&s, lfd, err, errlen) != 0) {
        close(lfd);
        status = 500;
        goto out;
    }
    status = old ? 200 : 201;
    log_info("ev=app_registered app=%s public_port=%d target=%s:%d private=%s", s.name,
             s.public_port, s.target_host, s.target_port, s.private_name);
out:
    pthread_mutex_unlock(&reg.lock);
    return status;
}

int registry_unregister(const char *name, char *err, size_t errlen)
{
    struct app *a;
    int status;

    pthread_mutex_lock(&reg.lock);
    a = name ? find_app(name) : NULL;
    if (!a) {
        snprintf(err, errlen, "no app named '%s'", name ? name : "");
        status = 404;
    } else if (save_locked(NULL, a, err, errlen) != 0) {
        status = 500;
    } else {
        log_info("ev=app_unregistered app=%s", a->spec.name);
        remove_app_locked(a);
        status = 200;
    }
    pthread_mutex_unlock(&reg.lock);
    return status;
}

/* ----------------------------------------------------------------- list */

static json_t *time_json(time_t t)
{
    struct tm tm;
    char buf[32];

    if (!t)
        return json_null();
    gmtime_r(&t, &tm);
    strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
    return json_string(buf);
}

static int priv_online(const struct priv *p)
{
    return p && p->t && !tunnel_is_dead(p->t);
}

json_t *registry_list(void)
{
    json_t *privs = json_array(), *apps = json_array();

    pthread_mutex_lock(&reg.lock);
    for (struct priv *p = reg.privs; p; p = p->next)
        json_array_append_new(privs, json_pack("{s:s,s:b,s:s,s:o,s:I}", "name", p->name, "online",
                                               priv_online(p), "address", p->address,
                                               "connected_since", time_json(p->connected_since),
                                               "reconnects", (json_int_t)p->reconnects));
    for (struct app *a = reg.apps; a; a = a->next) {
        json_t *o = spec_to_json(&a->spec);
        json_object_set_new(o, "online",
                            json_boolean(priv_online(find_priv(a->spec.private_name)) &&
                                         a->listen_fd >= 0));
        json_object_set_new(o, "active_connections", json_integer((json_int_t)a->stats->active));
        json_object_set_new(o, "total_connections", json_integer((json_int_t)a->stats->total));
        json_object_set_new(o, "failed_connections", json_integer((json_int_t)a->stats->failures));
        json_object_set_new(o, "refused_connections", json_integer((json_int_t)a->stats->refused));
        json_object_set_new(o, "bytes_in", json_integer((json_int_t)a->stats->bytes_in));
        json_object_set_new(o, "bytes_out", json_integer((json_int_t)a->stats->bytes_out));
        json_array_append_new(apps, o);
    }
    pthread_mutex_unlock(&reg.lock);
    return json_pack("{s:o,s:o}", "privates", privs, "apps", apps);
}

/* Label values are names ([A-Za-z0-9._-]): nothing to escape. */
char *registry_metrics(void)
{
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    static const struct {
        const char *name, *type, *help;
    } app_metrics[] = {
        {"nat_app_bytes_in_total", "counter", "Bytes from clients to the app."},
        {"nat_app_bytes_out_total", "counter", "Bytes from the app to clients."},
        {"nat_app_connections_active", "gauge", "Client connections open now."},
        {"nat_app_connections_total", "counter", "Client connections accepted and relayed."},
        {"nat_app_connection_failures_total", "counter",
         "Client connections that could not be relayed (offline, refused, timed out, limits)."},
        {"nat_app_connections_refused_total", "counter",
         "Client connections turned away by a connection limit."},
    };

    if (!f)
        return NULL;
    pthread_mutex_lock(&reg.lock);
    for (size_t m = 0; m < sizeof(app_metrics) / sizeof(app_metrics[0]); m++) {
        fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", app_metrics[m].name, app_metrics[m].help,
                app_metrics[m].name, app_metrics[m].type);
        for (struct app *a = reg.apps; a; a = a->next) {
            uint64_t v = m == 0 ? a->stats->bytes_in
                         : m == 1 ? a->stats->bytes_out
                         : m == 2 ? a->stats->active
                         : m == 3 ? a->stats->total
                         : m == 4 ? a->stats->failures
                                  : a->stats->refused;
            fprintf(f, "%s{app=\"%s\"} %llu\n", app_metrics[m].name, a->spec.name,
                    (unsigned long long)v);
        }
    }
    fprintf(f, "# HELP nat_private_online Whether the private proxy's tunnel is up.\n"
               "# TYPE nat_private_online gauge\n");
    for (struct priv *p = reg.privs; p; p = p->next)
        fprintf(f, "nat_private_online{private=\"%s\"} %d\n", p->name, priv_online(p));
    fprintf(f, "# HELP nat_private_reconnects_total Tunnels that replaced an earlier one of the "
               "same private proxy.\n# TYPE nat_private_reconnects_total counter\n");
    for (struct priv *p = reg.privs; p; p = p->next)
        fprintf(f, "nat_private_reconnects_total{private=\"%s\"} %llu\n", p->name,
                (unsigned long long)p->reconnects);
    pthread_mutex_unlock(&reg.lock);
    fprintf(f, "# HELP process_uptime_seconds Seconds since the process started.\n"
               "# TYPE process_uptime_seconds gauge\nprocess_uptime_seconds %lld\n",
            (long long)(time(NULL) - reg.started));
    fclose(f);
    return out;
}

/* -------------------------------------------------------------- privates */

static struct priv *get_priv_locked(const char *name, int *created)
{
    struct priv *p = find_priv(name);

    *created = 0;
    if (p || count_privs() >= MAX_PRIVATES)
        return p;
    p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    snprintf(p->name, sizeof(p->name), "%s", name);
    p->next = reg.privs;
    reg.privs = p;
    *created = 1;
    return p;
}

int registry_private_known(const char *name)
{
    struct priv *p;
    int created = 0;
    char err[256];

    pthread_mutex_lock(&reg.lock);
    p = get_priv_locked(name, &created);
    if (created && save_locked(NULL, NULL, err, sizeof(err)) != 0)
        log_error("ev=state_save_failed err=\"%s\"", err);
    pthread_mutex_unlock(&reg.lock);
    return p ? 0 : -1;
}

void registry_private_up(const char *name, struct tunnel *t, const char *addr)
{
    struct tunnel *old = NULL;
    struct priv *p;
    int created = 0;
    char err[256];

    pthread_mutex_lock(&reg.lock);
    p = get_priv_locked(name, &created);
    if (p) {
        old = p->t;
        if (p->connected_since)
            p->reconnects++;
        p->t = t;
        tunnel_ref(t);
        snprintf(p->address, sizeof(p->address), "%s", addr);
        p->connected_since = time(NULL);
        if (created && save_locked(NULL, NULL, err, sizeof(err)) != 0)
            log_error("ev=state_save_failed err=\"%s\"", err);
    }
    pthread_mutex_unlock(&reg.lock);
    if (old) {
        char msg[160];
        log_warn("ev=tunnel_replaced name=%s new=%s old=%s", name, addr, tunnel_addr(old));
        /* Say why, so that a second proxy with the same name backs off
         * instead of both taking turns forever. */
        snprintf(msg, sizeof(msg), "replaced by a newer tunnel of the same name from %s", addr);
        tunnel_fail(old, "replaced", msg);
        tunnel_unref(old);
    }
}

void registry_private_down(const char *name, struct tunnel *t)
{
    struct priv *p;
    struct tunnel *drop = NULL;

    pthread_mutex_lock(&reg.lock);
    p = find_priv(name);
    if (p && p->t == t) {
        drop = t;
        p->t = NULL;
    }
    pthread_mutex_unlock(&reg.lock);
    tunnel_unref(drop);
}

/* ----------------------------------------------------------- lifecycle */

int registry_init(const char *state_dir, const char *bind_addr, int tunnel_port, int web_port,
                  const struct registry_limits *limits, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *root = NULL, *v;
    size_t len = 0, i;
    char *text;
    int rc = -1;

    snprintf(reg.state_dir, sizeof(reg.state_dir), "%s", state_dir);
    snprintf(reg.bind_addr, sizeof(reg.bind_addr), "%s", bind_addr ? bind_addr : "");
    reg.tunnel_port = tunnel_port;
    reg.web_port = web_port;
    reg.limits = *limits;
    reg.started = time(NULL);

    text = state_read(state_dir, STATE_FILE, STATE_MAX_BYTES, &len, err, errlen);
    if (!text)
        return err[0] ? -1 : 0; /* no file yet: a fresh start */
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root || !json_is_object(root)) {
        snprintf(err, errlen,
                 "%s/%s is not valid JSON (line %d: %s); it is left untouched: fix or move it away",
                 state_dir, STATE_FILE, jerr.line, jerr.text);
        goto out;
    }
    pthread_mutex_lock(&reg.lock);
    json_array_foreach(json_object_get(root, "privates"), i, v) {
        int created;
        if (pkt_valid_name(json_string_value(v)))
            get_priv_locked(json_string_value(v), &created);
    }
    json_array_foreach(json_object_get(root, "apps"), i, v) {
        struct app_spec s;
        char why[200];
        int created, lfd;
        if (registry_spec_from_json(v, &s, why, sizeof(why)) != 0 ||
            (!s.private_name[0] && snprintf(why, sizeof(why), "no 'private'") > 0) ||
            (find_app(s.name) && snprintf(why, sizeof(why), "duplicate name") > 0)) {
            log_error("ev=state_entry_skipped index=%zu err=\"%s\"", i, why);
            continue;
        }
        get_priv_locked(s.private_name, &created);
        lfd = bind_app(&s, why, sizeof(why));
        if (lfd < 0)
            log_error("ev=app_bind_failed app=%s err=\"%s\" retry=yes", s.name, why);
        if (add_app_locked(&s, lfd, why, sizeof(why)) != 0) {
            if (lfd >= 0)
                close(lfd);
            log_error("ev=app_restore_failed app=%s err=\"%s\"", s.name, why);
            continue;
        }
        log_info("ev=app_restored app=%s public_port=%d private=%s", s.name, s.public_port,
                 s.private_name);
    }
    pthread_mutex_unlock(&reg.lock);
    rc = 0;
out:
    json_decref(root);
    return rc;
}

void registry_shutdown(void)
{
    struct timespec ts = {.tv_nsec = 10 * 1000 * 1000};
    uint64_t deadline;

    pthread_mutex_lock(&reg.lock);
    while (reg.apps)
        remove_app_locked(reg.apps);
    for (struct priv *p = reg.privs; p; p = p->next)
        if (p->t)
            tunnel_kill(p->t, "shutting down");
    pthread_mutex_unlock(&reg.lock);
    deadline = mono_ms() + 5000;
    while (reg.acceptors > 0 && mono_ms() < deadline)
        nanosleep(&ts, NULL);
    pthread_mutex_lock(&reg.lock);
    while (reg.privs) {
        struct priv *p = reg.privs;
        reg.privs = p->next;
        tunnel_unref(p->t);
        free(p);
    }
    pthread_mutex_unlock(&reg.lock);
}

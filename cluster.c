/* cluster.c - several public nodes behind one name: registrations, the node
 * list and the events between nodes in Redis (hiredis, synchronous).
 *
 * Two connections: the command one (under cl.lock, used by the worker
 * thread and by web requests that register), and the subscriber one (its
 * own thread). The worker refreshes this node's entry every second, reads
 * the others', and reads every app again when told to (an event, or a new
 * connection: it may have missed events). Every call has a 1 s timeout;
 * while Redis is unreachable, writes answer 503 and relaying goes on with
 * what this node has. The data path never calls anything here. */

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "cluster.h"
#include "json_depth.h"
#include "log.h"
#include "netio.h"
#include "registry.h"
#include "tunnel.h"

#define KEY_APPS "natproxy:apps"
#define KEY_PORTS "natproxy:ports"
#define KEY_EPOCH "natproxy:epoch"
#define KEY_NODE "natproxy:node:"
#define CHANNEL "natproxy:events"

#define CALL_TIMEOUT_MS 1000    /* connect and every command */
#define RETRY_MS 500            /* at most one connection attempt per this */
#define BEAT_MS 1000            /* this node's entry, refreshed */
#define NODE_TTL_MS 5000        /* and gone this long after its last refresh */
#define WAIT_MS 1000            /* for a replica to confirm a write */
#define NODE_ENTRY_MAX (512 * 1024) /* bytes of one node entry (a line per app) */
#define APP_ENTRY_MAX 16384     /* bytes of one app entry */
#define JSON_DEPTH_MAX 8        /* entries are 3 levels deep */
#define APPS_MAX 4096           /* entries of natproxy:apps read at most */
#define SCAN_ROUNDS_MAX 256
#define ERRLEN 640
#define THREAD_STACK THREAD_STACK_SIZE_TLS /* getaddrinfo and hiredis */

/* claim: KEYS apps, ports; ARGV name, portkey, private, owner, from_private,
 * entry. A name held by another private (or by anyone, from the API) or a
 * port held by another name: {"name"|"port", holder}; else it is ours:
 * {"ok", previous entry or ""}. */
static const char CLAIM_LUA[] =
    "local function pk(e) local c = cjson.decode(e)\n"
    "  return (c['protocol'] == 'udp' and 'udp:' or 'tcp:') .. tostring(c['public_port']) end\n"
    "local cur = redis.call('HGET', KEYS[1], ARGV[1])\n"
    "if cur then local c = cjson.decode(cur)\n"
    "  if ARGV[5] ~= '1' or c['private'] ~= ARGV[3] or (c['owner'] or '') ~= ARGV[4] then\n"
    "    return {'name', c['private'] or ''} end end\n"
    "local holder = redis.call('HGET', KEYS[2], ARGV[2])\n"
    "if holder and holder ~= ARGV[1] then return {'port', holder} end\n"
    "if cur then local old = pk(cur)\n"
    "  if old ~= ARGV[2] and redis.call('HGET', KEYS[2], old) == ARGV[1] then\n"
    "    redis.call('HDEL', KEYS[2], old) end end\n"
    "redis.call('HSET', KEYS[1], ARGV[1], ARGV[6])\n"
    "redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])\n"
    "return {'ok', cur or ''}\n";

/* undo: ARGV name, portkey, our entry, previous entry or "". Only when the
 * entry is still ours. */
static const char UNDO_LUA[] =
    "if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[3] then return 0 end\n"
    "if redis.call('HGET', KEYS[2], ARGV[2]) == ARGV[1] then redis.call('HDEL', KEYS[2], ARGV[2]) end\n"
    "if ARGV[4] == '' then redis.call('HDEL', KEYS[1], ARGV[1]) return 1 end\n"
    "local c = cjson.decode(ARGV[4])\n"
    "redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])\n"
    "redis.call('HSET', KEYS[2], (c['protocol'] == 'udp' and 'udp:' or 'tcp:') .. "
    "tostring(c['public_port']), ARGV[1])\n"
    "return 1\n";

/* remove: ARGV name. */
static const char REMOVE_LUA[] =
    "local cur = redis.call('HGET', KEYS[1], ARGV[1])\n"
    "if not cur then return 0 end\n"
    "local c = cjson.decode(cur)\n"
    "local k = (c['protocol'] == 'udp' and 'udp:' or 'tcp:') .. tostring(c['public_port'])\n"
    "if redis.call('HGET', KEYS[2], k) == ARGV[1] then redis.call('HDEL', KEYS[2], k) end\n"
    "redis.call('HDEL', KEYS[1], ARGV[1])\n"
    "return 1\n";

/* update: ARGV name, entry; only an app that is there. */
static const char UPDATE_LUA[] =
    "if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end\n"
    "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])\n"
    "return 1\n";

static struct {
    struct cluster_url url;
    char node[PKT_NAME_MAX + 1];
    char advertise[PKT_HOST_MAX + 8];
    char fingerprint[128];
    char instance[33];          /* this process, to see a second node of the same name */
    time_t up_since;
    int started;

    pthread_mutex_t lock;       /* the command connection and what follows */
    redisContext *cmd;
    uint64_t next_try_ms;
    unsigned gen;               /* bumped at each new command connection */
    uint64_t up_at_ms;          /* when it was made */
    int replicas;               /* the primary's replicas, at the last ROLE */
    int up;                     /* the store answered the last call */
    char why[ERRLEN];              /* why it is down */

    pthread_mutex_t view_lock;  /* the nodes as last read */
    json_t *view;               /* array of node entries, by name */
    char view_sig[PKT_NODES_MAX * (PKT_NAME_MAX + PKT_HOST_MAX + 12)];
    json_t *warned;             /* names already warned of (certificate, duplicate) */

    pthread_mutex_t wake_lock;
    pthread_cond_t wake;
    int resync;
    int stop;
    _Atomic int store_up;       /* for /list and /metrics without the lock */
    pthread_t worker, sub;
    int have_worker, have_sub;
} cl = {.lock = PTHREAD_MUTEX_INITIALIZER, .view_lock = PTHREAD_MUTEX_INITIALIZER,
        .wake_lock = PTHREAD_MUTEX_INITIALIZER};

/* ------------------------------------------------------------------ url */

static int parse_hostport(const char *s, size_t n, char *host, int *port)
{
    char buf[PKT_HOST_MAX + 16];

    if (n == 0 || n >= sizeof(buf))
        return -1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return pkt_split_hostport(buf, host, PKT_HOST_MAX + 1, port) == 0 && pkt_valid_host(host)
               ? 0
               : -1;
}

int cluster_parse_url(const char *s, struct cluster_url *u, char *err, size_t errlen)
{
    const char *p, *at, *slash, *end;
    size_t n;

    memset(u, 0, sizeof(*u));
    if (!s || strlen(s) > 1024)
        goto bad;
    if (strncmp(s, "redis://", 8) == 0) {
        p = s + 8;
    } else if (strncmp(s, "sentinel://", 11) == 0) {
        p = s + 11;
        u->sentinel = 1;
    } else {
        snprintf(err, errlen, "--cluster '%.80s' is neither redis://HOST:PORT nor "
                 "sentinel://HOST:PORT,.../MASTER", s);
        return -1;
    }
    at = strrchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (!colon) {
            n = (size_t)(at - p); /* PASSWORD@ alone */
        } else {
            n = (size_t)(colon - p);
            if (n >= sizeof(u->user))
                goto bad;
            memcpy(u->user, p, n);
            u->user[n] = '\0';
            if (u->user[0] && !pkt_valid_name(u->user))
                goto bad;
            p = colon + 1;
            n = (size_t)(at - p);
        }
        if (n >= sizeof(u->password))
            goto bad;
        memcpy(u->password, p, n);
        u->password[n] = '\0';
        p = at + 1;
    }
    slash = strchr(p, '/');
    end = slash ? slash : p + strlen(p);
    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *e = comma ? comma : end;
        if (u->nhosts == CLUSTER_SENTINELS_MAX || (!u->sentinel && u->nhosts == 1) ||
            parse_hostport(p, (size_t)(e - p), u->hosts[u->nhosts].host,
                           &u->hosts[u->nhosts].port) != 0)
            goto bad;
        u->nhosts++;
        p = comma ? comma + 1 : end;
    }
    if (!u->nhosts)
        goto bad;
    if (u->sentinel) {
        const char *m = slash ? slash + 1 : NULL, *me;
        if (!m)
            goto bad;
        me = strchr(m, '/');
        n = me ? (size_t)(me - m) : strlen(m);
        if (n == 0 || n >= sizeof(u->master))
            goto bad;
        memcpy(u->master, m, n);
        u->master[n] = '\0';
        if (!pkt_valid_name(u->master))
            goto bad;
        slash = me;
    }
    if (slash) {
        char *dend;
        long db;
        if (!slash[1])
            goto bad;
        errno = 0;
        db = strtol(slash + 1, &dend, 10);
        if (errno || *dend || db < 0 || db > 1000 || slash[1] < '0' || slash[1] > '9')
            goto bad;
        u->db = (int)db;
    }
    if (!u->password[0]) {
        const char *envpw = getenv("NAT_REDIS_PASSWORD");
        if (envpw && strlen(envpw) < sizeof(u->password))
            snprintf(u->password, sizeof(u->password), "%s", envpw);
    }
    {
        size_t off = (size_t)snprintf(u->shown, sizeof(u->shown), "%s://%s%s",
                                      u->sentinel ? "sentinel" : "redis", u->user,
                                      u->user[0] ? "@" : "");
        for (int i = 0; i < u->nhosts && off < sizeof(u->shown); i++) {
            int v6 = strchr(u->hosts[i].host, ':') != NULL;
            off += (size_t)snprintf(u->shown + off, sizeof(u->shown) - off, "%s%s%s%s:%d",
                                    i ? "," : "", v6 ? "[" : "", u->hosts[i].host, v6 ? "]" : "",
                                    u->hosts[i].port);
        }
        if (off < sizeof(u->shown))
            snprintf(u->shown + off, sizeof(u->shown) - off, "%s%s/%d", u->sentinel ? "/" : "",
                     u->master, u->db);
    }
    return 0;
bad:
    snprintf(err, errlen, "--cluster is not redis://[USER:PASSWORD@]HOST:PORT[/DB] or "
             "sentinel://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER[/DB] (an IPv6 address "
             "in brackets, at most %d sentinels)", CLUSTER_SENTINELS_MAX);
    return -1;
}

/* ----------------------------------------------------------- connection */

static struct timeval tv_ms(int ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    return tv;
}

static redisContext *dial(const char *host, int port, char *err, size_t errlen)
{
    redisContext *c = redisConnectWithTimeout(host, port, tv_ms(CALL_TIMEOUT_MS));

    if (!c || c->err) {
        snprintf(err, errlen, "%s:%d: %s", host, port, c ? c->errstr : "out of memory");
        if (c)
            redisFree(c);
        return NULL;
    }
    if (redisSetTimeout(c, tv_ms(CALL_TIMEOUT_MS)) != REDIS_OK) {
        snprintf(err, errlen, "%s:%d: cannot set a timeout", host, port);
        redisFree(c);
        return NULL;
    }
    return c;
}

/* A reply of type want (-1: any but an error), else NULL with err. */
static redisReply *call(redisContext *c, int want, char *err, size_t errlen, const char *fmt, ...)
{
    redisReply *r;
    va_list ap;

    va_start(ap, fmt);
    r = redisvCommand(c, fmt, ap);
    va_end(ap);
    if (!r) {
        snprintf(err, errlen, "%s", c->errstr[0] ? c->errstr : "no answer");
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR || (want >= 0 && r->type != want)) {
        snprintf(err, errlen, "%.150s", r->type == REDIS_REPLY_ERROR && r->str ? r->str
                                                                              : "unexpected reply");
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

/* The primary's address: the URL's, or what a sentinel says. */
static int find_primary(char *host, size_t cap, int *port, char *err, size_t errlen)
{
    const struct cluster_url *u = &cl.url;

    if (!u->sentinel) {
        snprintf(host, cap, "%s", u->hosts[0].host);
        *port = u->hosts[0].port;
        return 0;
    }
    for (int i = 0; i < u->nhosts; i++) {
        redisContext *s = dial(u->hosts[i].host, u->hosts[i].port, err, errlen);
        redisReply *r;
        if (!s)
            continue;
        r = call(s, REDIS_REPLY_ARRAY, err, errlen, "SENTINEL get-master-addr-by-name %s",
                 u->master);
        if (r && r->elements == 2 && r->element[0]->type == REDIS_REPLY_STRING &&
            r->element[1]->type == REDIS_REPLY_STRING && r->element[0]->len <= PKT_HOST_MAX &&
            pkt_valid_host(r->element[0]->str)) {
            long p = strtol(r->element[1]->str, NULL, 10);
            if (p > 0 && p < 65536) {
                snprintf(host, cap, "%s", r->element[0]->str);
                *port = (int)p;
                freeReplyObject(r);
                redisFree(s);
                return 0;
            }
        }
        if (r) {
            snprintf(err, errlen, "sentinel %s:%d does not know a primary named '%s'",
                     u->hosts[i].host, u->hosts[i].port, u->master);
            freeReplyObject(r);
        }
        redisFree(s);
    }
    return -1;
}

/* A connection to the primary, authenticated, its database selected, and
 * checked to be a primary (ROLE): NULL with err. *replicas from ROLE. */
static redisContext *connect_primary(int *replicas, char *err, size_t errlen)
{
    const struct cluster_url *u = &cl.url;
    char host[PKT_HOST_MAX + 1], why[200];
    redisContext *c;
    redisReply *r;
    int port;

    if (find_primary(host, sizeof(host), &port, err, errlen) != 0)
        return NULL;
    if (!(c = dial(host, port, err, errlen)))
        return NULL;
    if (u->password[0]) {
        r = u->user[0] ? call(c, -1, why, sizeof(why), "AUTH %s %s", u->user, u->password)
                       : call(c, -1, why, sizeof(why), "AUTH %s", u->password);
        if (!r) {
            snprintf(err, errlen, "%s:%d refused the password: %s", host, port, why);
            goto fail;
        }
        freeReplyObject(r);
    }
    if (u->db) {
        if (!(r = call(c, -1, why, sizeof(why), "SELECT %d", u->db))) {
            snprintf(err, errlen, "%s:%d: SELECT %d: %s", host, port, u->db, why);
            goto fail;
        }
        freeReplyObject(r);
    }
    if (!(r = call(c, REDIS_REPLY_ARRAY, why, sizeof(why), "ROLE"))) {
        snprintf(err, errlen, "%s:%d: ROLE: %s", host, port, why);
        goto fail;
    }
    if (r->elements < 1 || r->element[0]->type != REDIS_REPLY_STRING ||
        strcmp(r->element[0]->str, "master") != 0) {
        snprintf(err, errlen, "%s:%d is a replica, not the primary", host, port);
        freeReplyObject(r);
        goto fail;
    }
    *replicas = r->elements >= 3 && r->element[2]->type == REDIS_REPLY_ARRAY
                    ? (int)r->element[2]->elements
                    : 0;
    freeReplyObject(r);
    return c;
fail:
    redisFree(c);
    return NULL;
}

static void wake_worker(int resync)
{
    pthread_mutex_lock(&cl.wake_lock);
    if (resync)
        cl.resync = 1;
    pthread_cond_broadcast(&cl.wake);
    pthread_mutex_unlock(&cl.wake_lock);
}

/* Under cl.lock: the store is down for why (logged once per outage). */
static void mark_down_locked(const char *why)
{
    if (cl.cmd) {
        redisFree(cl.cmd);
        cl.cmd = NULL;
    }
    if (cl.up || !cl.why[0])
        log_error("ev=cluster_store_down url=%s err=\"%s\" msg=\"relaying goes on; registrations "
                  "answer 503 until it is back\"", cl.url.shown, why);
    cl.up = 0;
    cl.store_up = 0;
    snprintf(cl.why, sizeof(cl.why), "%s", why);
    cl.next_try_ms = mono_ms() + RETRY_MS;
}

/* Under cl.lock: the command connection, (re)made when it may be tried. */
static redisContext *cmd_locked(void)
{
    char err[ERRLEN];
    int replicas = 0;

    if (cl.cmd)
        return cl.cmd;
    if (mono_ms() < cl.next_try_ms)
        return NULL;
    cl.cmd = connect_primary(&replicas, err, sizeof(err));
    if (!cl.cmd) {
        mark_down_locked(err);
        return NULL;
    }
    cl.replicas = replicas;
    cl.gen++;
    cl.up_at_ms = mono_ms();
    cl.up = 1;
    cl.store_up = 1;
    cl.why[0] = '\0';
    log_info("ev=cluster_store_up url=%s node=%s replicas=%d", cl.url.shown, cl.node, replicas);
    wake_worker(1); /* read everything again: events may have been missed */
    return cl.cmd;
}

/* Under cl.lock: a command on the command connection; NULL (with err) on
 * failure, the store then marked down when it was the connection's fault
 * (or a replica answered: after a failover). */
static redisReply *cmd_call_locked(int want, char *err, size_t errlen, const char *fmt, ...)
{
    redisContext *c = cmd_locked();
    redisReply *r;
    va_list ap;

    if (!c) {
        snprintf(err, errlen, "%s", cl.why[0] ? cl.why : "not connected");
        return NULL;
    }
    va_start(ap, fmt);
    r = redisvCommand(c, fmt, ap);
    va_end(ap);
    if (!r) {
        snprintf(err, errlen, "%s", c->errstr[0] ? c->errstr : "no answer");
        mark_down_locked(err);
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "%.150s", r->str ? r->str : "error");
        if (strncmp(err, "READONLY", 8) == 0 || strncmp(err, "LOADING", 7) == 0 ||
            strncmp(err, "MASTERDOWN", 10) == 0 || strncmp(err, "NOAUTH", 6) == 0)
            mark_down_locked(err);
        freeReplyObject(r);
        return NULL;
    }
    if (want >= 0 && r->type != want) {
        snprintf(err, errlen, "unexpected reply type %d", r->type);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

/* Under cl.lock: after a write, a replica must have it before we say yes
 * (a failover then keeps it). 0, or -1 with err. */
static int confirm_locked(char *err, size_t errlen)
{
    redisReply *r;
    int ok;

    if (cl.replicas <= 0)
        return 0;
    r = cmd_call_locked(REDIS_REPLY_INTEGER, err, errlen, "WAIT 1 %d", WAIT_MS);
    if (!r)
        return -1;
    ok = r->integer >= 1;
    freeReplyObject(r);
    if (!ok)
        snprintf(err, errlen, "no Redis replica confirmed the write within %d ms", WAIT_MS);
    return ok ? 0 : -1;
}

static int unreachable(char *err, size_t errlen, const char *why)
{
    snprintf(err, errlen, "the cluster store (Redis) is unreachable: %s; running apps keep "
             "working, try again when it is back", why);
    return 503;
}

/* ---------------------------------------------------------------- store */

static void store_undo_text(const struct app_spec *s, const char *entry, const char *prev);

static char *entry_text(const struct app_spec *s)
{
    json_t *j = registry_spec_json(s);
    char *t = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;

    json_decref(j);
    return t;
}

static void port_key(const struct app_spec *s, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s:%d", s->udp ? "udp" : "tcp", s->public_port);
}

/* Put prev (NULL: nothing) back where entry of s is. */
static void store_undo_text(const struct app_spec *s, const char *entry, const char *prev)
{
    char pk[16], why[ERRLEN];
    redisReply *r;

    port_key(s, pk, sizeof(pk));
    pthread_mutex_lock(&cl.lock);
    r = cmd_call_locked(REDIS_REPLY_INTEGER, why, sizeof(why), "EVAL %s 2 %s %s %s %s %s %s",
                        UNDO_LUA, KEY_APPS, KEY_PORTS, s->name, pk, entry, prev ? prev : "");
    pthread_mutex_unlock(&cl.lock);
    if (r)
        freeReplyObject(r);
    else
        log_error("ev=cluster_undo_failed app=%s err=\"%s\" msg=\"the cluster may list an app "
                  "this node could not register; unregister it\"", s->name, why);
}

static int store_claim(const struct app_spec *s, int from_private, char **prev, char *err,
                       size_t errlen)
{
    char *entry = entry_text(s), pk[16], why[ERRLEN];
    redisReply *r = NULL;
    int status = 500;

    *prev = NULL;
    if (!entry) {
        snprintf(err, errlen, "out of memory");
        return 500;
    }
    port_key(s, pk, sizeof(pk));
    pthread_mutex_lock(&cl.lock);
    r = cmd_call_locked(REDIS_REPLY_ARRAY, why, sizeof(why), "EVAL %s 2 %s %s %s %s %s %s %s %s",
                        CLAIM_LUA, KEY_APPS, KEY_PORTS, s->name, pk, s->private_name, s->owner,
                        from_private ? "1" : "0", entry);
    if (!r) {
        status = unreachable(err, errlen, why);
        goto out;
    }
    if (r->elements != 2 || r->element[0]->type != REDIS_REPLY_STRING ||
        r->element[1]->type != REDIS_REPLY_STRING) {
        status = unreachable(err, errlen, "an unexpected answer to the claim");
        goto out;
    }
    if (strcmp(r->element[0]->str, "name") == 0) {
        snprintf(err, errlen, "an app named '%s' already exists in the cluster", s->name);
        status = 409;
    } else if (strcmp(r->element[0]->str, "port") == 0) {
        snprintf(err, errlen, "public %s port %d is already used by app '%.*s' in the cluster",
                 s->udp ? "UDP" : "TCP", s->public_port, PKT_NAME_MAX,
                 pkt_valid_name(r->element[1]->str) ? r->element[1]->str : "?");
        status = 409;
    } else if (confirm_locked(why, sizeof(why)) != 0) {
        pthread_mutex_unlock(&cl.lock);
        store_undo_text(s, entry, r->element[1]->len ? r->element[1]->str : NULL);
        pthread_mutex_lock(&cl.lock);
        status = unreachable(err, errlen, why);
    } else {
        if (r->element[1]->len && !(*prev = strdup(r->element[1]->str))) {
            snprintf(err, errlen, "out of memory");
            status = 500;
            goto out;
        }
        status = 0;
    }
out:
    pthread_mutex_unlock(&cl.lock);
    if (r)
        freeReplyObject(r);
    free(entry);
    return status;
}

static void store_undo(const struct app_spec *s, const char *prev)
{
    char *entry = entry_text(s);

    if (entry)
        store_undo_text(s, entry, prev);
    free(entry);
}

static int store_remove(const char *name, char *err, size_t errlen)
{
    char why[ERRLEN];
    redisReply *r;
    int rc;

    pthread_mutex_lock(&cl.lock);
    r = cmd_call_locked(REDIS_REPLY_INTEGER, why, sizeof(why), "EVAL %s 2 %s %s %s", REMOVE_LUA,
                        KEY_APPS, KEY_PORTS, name);
    rc = r && confirm_locked(why, sizeof(why)) == 0 ? 0 : unreachable(err, errlen, why);
    pthread_mutex_unlock(&cl.lock);
    if (r)
        freeReplyObject(r);
    return rc;
}

static int store_update(const struct app_spec *s, char *err, size_t errlen)
{
    char *entry = entry_text(s), why[ERRLEN];
    redisReply *r;
    int rc;

    if (!entry) {
        snprintf(err, errlen, "out of memory");
        return 500;
    }
    pthread_mutex_lock(&cl.lock);
    r = cmd_call_locked(REDIS_REPLY_INTEGER, why, sizeof(why), "EVAL %s 1 %s %s %s", UPDATE_LUA,
                        KEY_APPS, s->name, entry);
    rc = r && confirm_locked(why, sizeof(why)) == 0 ? 0 : unreachable(err, errlen, why);
    pthread_mutex_unlock(&cl.lock);
    if (r)
        freeReplyObject(r);
    free(entry);
    return rc;
}

static void publish_locked(const char *msg)
{
    char why[ERRLEN];
    redisReply *r;

    r = cmd_call_locked(REDIS_REPLY_INTEGER, why, sizeof(why), "PUBLISH %s %s", CHANNEL, msg);
    if (r)
        freeReplyObject(r);
    else
        log_warn("ev=cluster_publish_failed err=\"%s\" msg=\"the other nodes see the change at "
                 "their next full read\"", why);
}

static void publish(const char *msg)
{
    pthread_mutex_lock(&cl.lock);
    publish_locked(msg);
    pthread_mutex_unlock(&cl.lock);
}

static void store_changed(void)
{
    publish("changed");
}

static void store_kicked(const char *name, unsigned refuse_s)
{
    char msg[PKT_NAME_MAX * 2 + 40];

    snprintf(msg, sizeof(msg), "kick %s %u %s", name, refuse_s, cl.node);
    publish(msg);
}

static const struct registry_store cluster_store = {
    .claim = store_claim,
    .undo = store_undo,
    .remove = store_remove,
    .update = store_update,
    .changed = store_changed,
    .kicked = store_kicked,
};

/* ---------------------------------------------------------------- nodes */

json_t *cluster_parse_node(const char *text, size_t len)
{
    json_t *j, *v;
    json_error_t jerr;
    const char *name, *addr, *fp;
    char host[PKT_HOST_MAX + 1];
    int port;
    size_t i;

    if (!text || len > NODE_ENTRY_MAX || !json_depth_ok(text, len, JSON_DEPTH_MAX))
        return NULL;
    j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!j || !json_is_object(j))
        goto bad;
    name = json_string_value(json_object_get(j, "name"));
    addr = json_string_value(json_object_get(j, "address"));
    fp = json_string_value(json_object_get(j, "fingerprint"));
    if (!pkt_valid_name(name) || !addr || strlen(addr) > PKT_HOST_MAX + 8 ||
        pkt_split_hostport(addr, host, sizeof(host), &port) != 0 || !pkt_valid_host(host) ||
        (fp && strlen(fp) > 100) || !json_is_integer(json_object_get(j, "up_since")) ||
        !json_is_integer(json_object_get(j, "tunnels")) ||
        !json_is_integer(json_object_get(j, "connections")) ||
        !json_is_array(json_object_get(j, "privates")) ||
        !json_is_object(json_object_get(j, "apps")))
        goto bad;
    json_array_foreach(json_object_get(j, "privates"), i, v)
        if (!pkt_valid_name(json_string_value(v)))
            goto bad;
    {
        const char *k;
        json_object_foreach(json_object_get(j, "apps"), k, v) {
            if (!pkt_valid_name(k) || !json_is_array(v) || json_array_size(v) != 4)
                goto bad;
            for (i = 0; i < 4; i++)
                if (!json_is_integer(json_array_get(v, i)) ||
                    json_integer_value(json_array_get(v, i)) < 0)
                    goto bad;
        }
    }
    return j;
bad:
    json_decref(j);
    return NULL;
}

/* This node's entry: its tunnels, connections and counters, from /list's. */
static char *own_entry(void)
{
    json_t *list = registry_list(), *e = NULL, *privs = json_array(), *apps = json_object(), *v;
    json_int_t tunnels = 0, conns = 0;
    char *text = NULL;
    size_t i;

    if (!list || !privs || !apps)
        goto out;
    json_array_foreach(json_object_get(list, "privates"), i, v) {
        if (json_is_true(json_object_get(v, "online"))) {
            tunnels++;
            json_array_append(privs, json_object_get(v, "name"));
        }
    }
    json_array_foreach(json_object_get(list, "apps"), i, v) {
        json_t *act = json_object_get(v, "active_connections");
        json_t *tot = json_object_get(v, "total_connections");
        if (!act) {
            act = json_object_get(v, "active_sessions");
            tot = json_object_get(v, "total_sessions");
        }
        conns += json_integer_value(act);
        json_object_set_new(apps, json_string_value(json_object_get(v, "name")),
                            json_pack("[I,I,I,I]", json_integer_value(act),
                                      json_integer_value(tot),
                                      json_integer_value(json_object_get(v, "bytes_in")),
                                      json_integer_value(json_object_get(v, "bytes_out"))));
    }
    e = json_pack("{s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:O,s:O}", "name", cl.node, "address",
                  cl.advertise, "fingerprint", cl.fingerprint, "instance", cl.instance,
                  "up_since", (json_int_t)cl.up_since, "tunnels", tunnels, "connections", conns,
                  "privates", privs, "apps", apps);
    if (e)
        text = json_dumps(e, JSON_COMPACT);
out:
    json_decref(e);
    json_decref(privs);
    json_decref(apps);
    json_decref(list);
    return text;
}

static int by_name(const void *a, const void *b)
{
    const json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
    return strcmp(json_string_value(json_object_get(x, "name")),
                  json_string_value(json_object_get(y, "name")));
}

/* Once per name and kind: a warning about another node. */
static int first_warning(const char *kind, const char *name)
{
    char key[PKT_NAME_MAX + 32];
    int first;

    snprintf(key, sizeof(key), "%s:%s", kind, name);
    pthread_mutex_lock(&cl.view_lock);
    first = cl.warned && !json_object_get(cl.warned, key);
    if (first)
        json_object_set_new(cl.warned, key, json_true());
    pthread_mutex_unlock(&cl.view_lock);
    return first;
}

static void send_nodes(struct tunnel *t, void *arg)
{
    (void)arg;
    if (tunnel_version(t) >= PKT_PROTO_CLUSTER)
        tunnel_send(t, cluster_nodes_packet(), NULL, 0);
}

/* The nodes read: a new view; when the names or addresses changed, logged
 * and sent to every tunnel. Takes entries (an array). Just after the store
 * came back (fresh), the others may not have rewritten their entries yet
 * (expired while it was away): the nodes of the last view stay in it until
 * they have had the time to. */
static void new_view(json_t *entries, int fresh)
{
    char sig[sizeof(cl.view_sig)];
    size_t n, off = 0, i;
    json_t **sorted, *view, *old, *v;
    int changed;

    if (fresh) {
        pthread_mutex_lock(&cl.view_lock);
        json_array_foreach(cl.view, i, v) {
            size_t j;
            json_t *w;
            int seen = 0;
            json_array_foreach(entries, j, w)
                seen |= strcmp(json_string_value(json_object_get(v, "name")),
                               json_string_value(json_object_get(w, "name"))) == 0;
            if (!seen)
                json_array_append(entries, v);
        }
        pthread_mutex_unlock(&cl.view_lock);
    }
    n = json_array_size(entries);
    sorted = calloc(n ? n : 1, sizeof(*sorted));
    view = json_array();
    if (!sorted || !view) {
        free(sorted);
        json_decref(view);
        json_decref(entries);
        return;
    }
    for (i = 0; i < n; i++)
        sorted[i] = json_array_get(entries, i);
    qsort(sorted, n, sizeof(*sorted), by_name);
    sig[0] = '\0';
    for (i = 0; i < n && json_array_size(view) < PKT_NODES_MAX; i++) {
        const char *name = json_string_value(json_object_get(sorted[i], "name"));
        const char *fp = json_string_value(json_object_get(sorted[i], "fingerprint"));
        if (i && strcmp(name, json_string_value(json_object_get(sorted[i - 1], "name"))) == 0)
            continue;
        if (strcmp(name, cl.node) != 0 && fp && strcmp(fp, cl.fingerprint) != 0 &&
            first_warning("fingerprint", name))
            log_error("ev=cluster_certificate_differs node=%s msg=\"that node presents another "
                      "TLS certificate: private proxies will not tunnel to it; give every node "
                      "the same --cert and --key\"", name);
        json_array_append(view, sorted[i]);
        off += (size_t)snprintf(sig + off, off < sizeof(sig) ? sizeof(sig) - off : 0, "%s=%s;",
                                name, json_string_value(json_object_get(sorted[i], "address")));
    }
    if (n > PKT_NODES_MAX && first_warning("limit", "nodes"))
        log_error("ev=cluster_too_many_nodes nodes=%zu max=%d msg=\"private proxies are told of "
                  "the first %d only\"", n, PKT_NODES_MAX, PKT_NODES_MAX);
    free(sorted);
    json_decref(entries);
    pthread_mutex_lock(&cl.view_lock);
    old = cl.view;
    cl.view = view;
    changed = strcmp(sig, cl.view_sig) != 0;
    if (changed)
        snprintf(cl.view_sig, sizeof(cl.view_sig), "%s", sig);
    pthread_mutex_unlock(&cl.view_lock);
    if (changed) {
        /* Who came and who went, for the log. */
        json_array_foreach(view, i, v) {
            const char *name = json_string_value(json_object_get(v, "name"));
            size_t j;
            json_t *w;
            int seen = 0;
            json_array_foreach(old, j, w)
                seen |= strcmp(name, json_string_value(json_object_get(w, "name"))) == 0;
            if (!seen)
                log_info("ev=cluster_node_up node=%s address=%s", name,
                         json_string_value(json_object_get(v, "address")));
        }
        json_array_foreach(old, i, v) {
            const char *name = json_string_value(json_object_get(v, "name"));
            size_t j;
            json_t *w;
            int seen = 0;
            json_array_foreach(view, j, w)
                seen |= strcmp(name, json_string_value(json_object_get(w, "name"))) == 0;
            if (!seen)
                log_info("ev=cluster_node_gone node=%s", name);
        }
        registry_each_tunnel(send_nodes, NULL);
    }
    json_decref(old);
}

/* The keys natproxy:node:* (SCAN, bounded), then their entries (MGET).
 * Under cl.lock. A new array, or NULL when the store failed. */
static json_t *read_nodes_locked(void)
{
    char why[ERRLEN], cursor[32] = "0";
    json_t *keys = json_array(), *out = json_array();
    int rounds = 0;

    if (!keys || !out)
        goto fail;
    do {
        redisReply *r = cmd_call_locked(REDIS_REPLY_ARRAY, why, sizeof(why),
                                        "SCAN %s MATCH " KEY_NODE "* COUNT 1000", cursor);
        if (!r)
            goto fail;
        if (r->elements != 2 || r->element[0]->type != REDIS_REPLY_STRING ||
            r->element[0]->len >= sizeof(cursor) || r->element[1]->type != REDIS_REPLY_ARRAY) {
            freeReplyObject(r);
            goto fail;
        }
        snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
        for (size_t i = 0; i < r->element[1]->elements; i++) {
            redisReply *k = r->element[1]->element[i];
            if (k->type == REDIS_REPLY_STRING && k->len <= sizeof(KEY_NODE) + PKT_NAME_MAX &&
                json_array_size(keys) < 4 * PKT_NODES_MAX)
                json_array_append_new(keys, json_string(k->str));
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0 && ++rounds < SCAN_ROUNDS_MAX);
    for (size_t i = 0; i < json_array_size(keys); i++) {
        const char *k = json_string_value(json_array_get(keys, i));
        redisReply *r = cmd_call_locked(-1, why, sizeof(why), "GET %s", k);
        json_t *e;
        if (!r)
            goto fail;
        if (r->type == REDIS_REPLY_STRING && (e = cluster_parse_node(r->str, r->len))) {
            if (strcmp(k + strlen(KEY_NODE), json_string_value(json_object_get(e, "name"))) == 0)
                json_array_append_new(out, e);
            else
                json_decref(e);
        }
        freeReplyObject(r);
    }
    json_decref(keys);
    return out;
fail:
    json_decref(keys);
    json_decref(out);
    return NULL;
}

/* One beat: ROLE (a demoted primary is left), this node's entry, the
 * others'. */
static void beat(void)
{
    char *entry = own_entry(), why[ERRLEN], key[sizeof(KEY_NODE) + PKT_NAME_MAX];
    json_t *nodes = NULL;
    redisReply *r;
    int fresh = 0;

    snprintf(key, sizeof(key), KEY_NODE "%s", cl.node);
    pthread_mutex_lock(&cl.lock);
    if (!entry || !cmd_locked())
        goto out;
    r = cmd_call_locked(REDIS_REPLY_ARRAY, why, sizeof(why), "ROLE");
    if (!r)
        goto out;
    if (r->elements < 1 || r->element[0]->type != REDIS_REPLY_STRING ||
        strcmp(r->element[0]->str, "master") != 0) {
        freeReplyObject(r);
        mark_down_locked("the primary became a replica (failover)");
        goto out;
    }
    cl.replicas = r->elements >= 3 && r->element[2]->type == REDIS_REPLY_ARRAY
                      ? (int)r->element[2]->elements
                      : 0;
    freeReplyObject(r);
    /* Someone else under this name? (its instance differs, and it is live) */
    r = cmd_call_locked(-1, why, sizeof(why), "GET %s", key);
    if (r && r->type == REDIS_REPLY_STRING) {
        json_t *e = cluster_parse_node(r->str, r->len);
        const char *inst = json_string_value(json_object_get(e, "instance"));
        if (inst && strcmp(inst, cl.instance) != 0 && first_warning("duplicate", cl.node))
            log_error("ev=cluster_duplicate_node node=%s msg=\"another proxy_public uses this "
                      "--node-name: give each node its own\"", cl.node);
        json_decref(e);
    }
    if (r)
        freeReplyObject(r);
    r = cmd_call_locked(REDIS_REPLY_STATUS, why, sizeof(why), "SET %s %s PX %d", key, entry,
                        NODE_TTL_MS);
    if (!r)
        goto out;
    freeReplyObject(r);
    /* The store emptied (FLUSHALL, a restart without its data): seed it again. */
    r = cmd_call_locked(REDIS_REPLY_INTEGER, why, sizeof(why), "EXISTS " KEY_EPOCH);
    if (r && r->integer == 0)
        wake_worker(1);
    if (r)
        freeReplyObject(r);
    nodes = read_nodes_locked();
    fresh = mono_ms() - cl.up_at_ms < NODE_TTL_MS + 2 * BEAT_MS;
out:
    pthread_mutex_unlock(&cl.lock);
    free(entry);
    if (nodes)
        new_view(nodes, fresh);
}

/* seed: KEYS apps, ports, epoch; ARGV epoch, then name, portkey, entry for
 * each app. All of it, or nothing when the epoch is there already: a node
 * that finds the epoch finds every app of the node that seeded. */
static const char SEED_LUA[] =
    "if not redis.call('SET', KEYS[3], ARGV[1], 'NX') then return 0 end\n"
    "for i = 2, #ARGV, 3 do\n"
    "  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 2]) == 1 then\n"
    "    redis.call('HSETNX', KEYS[2], ARGV[i + 1], ARGV[i]) end end\n"
    "return 1\n";

/* When the store has no epoch (new, or emptied), this node's apps become
 * its apps, at once. 1 seeded, 0 the epoch was there, -1 store failed. */
static int seed_store(const char *epoch)
{
    json_t *local = registry_specs(), *v;
    size_t n = json_object_size(local), argc = 0;
    const char **argv = calloc(7 + 3 * n, sizeof(*argv));
    size_t *lens = calloc(7 + 3 * n, sizeof(*lens));
    char (*pks)[16] = calloc(n ? n : 1, sizeof(*pks)), **texts = calloc(n ? n : 1, sizeof(char *));
    char why[ERRLEN];
    const char *name;
    redisReply *r = NULL;
    size_t k = 0;
    int rc = -1;

    if (!local || !argv || !lens || !pks || !texts)
        goto out;
    argv[argc++] = "EVAL";
    argv[argc++] = SEED_LUA;
    argv[argc++] = "3";
    argv[argc++] = KEY_APPS;
    argv[argc++] = KEY_PORTS;
    argv[argc++] = KEY_EPOCH;
    argv[argc++] = epoch;
    json_object_foreach(local, name, v) {
        struct app_spec s;
        const char *owner = json_string_value(json_object_get(v, "owner"));
        if (k >= n || registry_spec_from_json(v, &s, why, sizeof(why)) != 0)
            continue;
        snprintf(s.owner, sizeof(s.owner), "%s", owner ? owner : "");
        s.disabled = json_is_true(json_object_get(v, "disabled"));
        port_key(&s, pks[k], sizeof(pks[k]));
        if (!(texts[k] = entry_text(&s)))
            goto out;
        argv[argc++] = name;
        argv[argc++] = pks[k];
        argv[argc++] = texts[k];
        k++;
    }
    for (size_t i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    pthread_mutex_lock(&cl.lock);
    if (cmd_locked())
        r = redisCommandArgv(cl.cmd, (int)argc, argv, lens);
    if (!r && cl.cmd) {
        /* (the message is the context's, which mark_down_locked frees) */
        char gone[sizeof(cl.cmd->errstr)];
        snprintf(gone, sizeof(gone), "%s", cl.cmd->errstr[0] ? cl.cmd->errstr : "no answer");
        mark_down_locked(gone);
    }
    pthread_mutex_unlock(&cl.lock);
    if (r && r->type == REDIS_REPLY_INTEGER) {
        rc = r->integer ? 1 : 0;
        if (rc)
            log_info("ev=cluster_seeded apps=%zu node=%s", k, cl.node);
    } else if (r) {
        log_error("ev=cluster_seed_failed err=\"%.150s\"", r->type == REDIS_REPLY_ERROR && r->str
                                                                 ? r->str : "unexpected reply");
    }
out:
    if (r)
        freeReplyObject(r);
    for (size_t i = 0; texts && i < k; i++)
        free(texts[i]);
    free(texts);
    free(pks);
    free(lens);
    free(argv);
    json_decref(local);
    return rc;
}

/* Read every app (HGETALL, bounded) and make the local ones the same;
 * when the cluster has none yet (no epoch), this node's apps seed it. */
static void resync(void)
{
    char why[ERRLEN], epoch[PKT_NAME_MAX + 32];
    json_t *remote = NULL;
    redisReply *r;
    int seed;

    registry_write_lock();
    snprintf(epoch, sizeof(epoch), "%s:%lld", cl.node, (long long)time(NULL));
    seed = seed_store(epoch);
    pthread_mutex_lock(&cl.lock);
    if (seed < 0)
        goto out;
    if (seed > 0)
        publish_locked("changed");
    r = cmd_call_locked(REDIS_REPLY_ARRAY, why, sizeof(why), "HGETALL " KEY_APPS);
    if (!r)
        goto out;
    remote = json_object();
    for (size_t i = 0; remote && i + 1 < r->elements && i < 2 * APPS_MAX; i += 2) {
        redisReply *k = r->element[i], *v = r->element[i + 1];
        json_t *e;
        json_error_t jerr;
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING ||
            !pkt_valid_name(k->str) || v->len > APP_ENTRY_MAX ||
            !json_depth_ok(v->str, v->len, JSON_DEPTH_MAX) ||
            !(e = json_loadb(v->str, v->len, JSON_REJECT_DUPLICATES, &jerr)) ||
            !json_is_object(e)) {
            log_error("ev=cluster_entry_skipped app=%.*s err=\"unreadable entry\"", PKT_NAME_MAX,
                      k->type == REDIS_REPLY_STRING && pkt_valid_name(k->str) ? k->str : "?");
            continue;
        }
        json_object_set_new(remote, k->str, e);
    }
    freeReplyObject(r);
out:
    pthread_mutex_unlock(&cl.lock);
    if (remote) {
        registry_sync(remote);
        log_info("ev=cluster_resync apps=%zu", json_object_size(remote));
    }
    registry_write_unlock();
    json_decref(remote);
}

static void *worker_main(void *arg)
{
    uint64_t next_beat = 0;

    (void)arg;
    for (;;) {
        struct timespec ts;
        int stop, sync_now;
        uint64_t now = mono_ms();

        if (now >= next_beat) {
            beat();
            next_beat = mono_ms() + BEAT_MS;
        }
        pthread_mutex_lock(&cl.wake_lock);
        if (!cl.stop && !cl.resync) {
            uint64_t left = next_beat > mono_ms() ? next_beat - mono_ms() : 0;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_sec += (time_t)(left / 1000);
            ts.tv_nsec += (long)(left % 1000) * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&cl.wake, &cl.wake_lock, &ts);
        }
        stop = cl.stop;
        sync_now = cl.resync;
        cl.resync = 0;
        pthread_mutex_unlock(&cl.wake_lock);
        if (stop)
            break;
        if (sync_now)
            resync();
    }
    return NULL;
}

/* ----------------------------------------------------------- subscriber */

static int stopping(void)
{
    int s;

    pthread_mutex_lock(&cl.wake_lock);
    s = cl.stop;
    pthread_mutex_unlock(&cl.wake_lock);
    return s;
}

static unsigned cmd_gen(void)
{
    unsigned g;

    pthread_mutex_lock(&cl.lock);
    g = cl.gen;
    pthread_mutex_unlock(&cl.lock);
    return g;
}

/* "changed", or "kick NAME SECONDS FROM_NODE". */
static void on_event(const char *msg, size_t len)
{
    char name[PKT_NAME_MAX + 1], from[PKT_NAME_MAX + 1];
    unsigned secs;

    if (len == 7 && memcmp(msg, "changed", 7) == 0) {
        wake_worker(1);
    } else if (len < 200 && sscanf(msg, "kick %64s %u %64s", name, &secs, from) == 3 &&
               pkt_valid_name(name) && pkt_valid_name(from)) {
        if (strcmp(from, cl.node) != 0)
            registry_kick_local(name, secs);
    }
}

static void *sub_main(void *arg)
{
    (void)arg;
    while (!stopping()) {
        char err[ERRLEN];
        int replicas, gen = (int)cmd_gen();
        redisContext *c = connect_primary(&replicas, err, sizeof(err));
        redisReply *r;

        if (!c) {
            usleep(RETRY_MS * 1000);
            continue;
        }
        r = call(c, REDIS_REPLY_ARRAY, err, sizeof(err), "SUBSCRIBE " CHANNEL);
        if (!r) {
            redisFree(c);
            usleep(RETRY_MS * 1000);
            continue;
        }
        freeReplyObject(r);
        wake_worker(1); /* what was said while we were not listening */
        while (!stopping() && (int)cmd_gen() == gen) {
            struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
            void *reply = NULL;
            if (redisGetReplyFromReader(c, &reply) != REDIS_OK)
                break;
            if (!reply) {
                int n = poll(&pfd, 1, 250);
                if (n < 0 && errno != EINTR)
                    break;
                if (n <= 0)
                    continue;
                if (redisGetReply(c, &reply) != REDIS_OK || !reply)
                    break;
            }
            r = reply;
            if (r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
                r->element[0]->type == REDIS_REPLY_STRING &&
                strcmp(r->element[0]->str, "message") == 0 &&
                r->element[2]->type == REDIS_REPLY_STRING)
                on_event(r->element[2]->str, r->element[2]->len);
            freeReplyObject(r);
        }
        redisFree(c);
    }
    return NULL;
}

/* --------------------------------------------------------------- public */

static int thread_start_joinable(pthread_t *tid, void *(*fn)(void *), void *arg, size_t stack)
{
    pthread_attr_t attr;
    int rc;

    pthread_attr_init(&attr);
    rc = pthread_attr_setstacksize(&attr, stack);
    if (rc == 0)
        rc = pthread_create(tid, &attr, fn, arg);
    pthread_attr_destroy(&attr);
    return rc;
}

int cluster_start(const struct cluster_url *u, const char *node, const char *advertise,
                  const char *fingerprint, char *err, size_t errlen)
{
    unsigned char rnd[16];
    pthread_condattr_t ca;
    int rc;

    cl.url = *u;
    snprintf(cl.node, sizeof(cl.node), "%s", node);
    snprintf(cl.advertise, sizeof(cl.advertise), "%s", advertise);
    snprintf(cl.fingerprint, sizeof(cl.fingerprint), "%s", fingerprint ? fingerprint : "");
    if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
        snprintf(err, errlen, "no random bytes for the node's instance id");
        return -1;
    }
    for (size_t i = 0; i < sizeof(rnd); i++)
        snprintf(cl.instance + 2 * i, 3, "%02x", rnd[i]);
    cl.up_since = time(NULL);
    cl.view = json_array();
    cl.warned = json_object();
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&cl.wake, &ca);
    pthread_condattr_destroy(&ca);
    registry_set_store(&cluster_store);
    cl.started = 1;
    log_info("ev=cluster_join url=%s node=%s advertise=%s", cl.url.shown, cl.node, cl.advertise);
    if ((rc = thread_start_joinable(&cl.worker, worker_main, NULL, THREAD_STACK)) != 0 ||
        !(cl.have_worker = 1) ||
        (rc = thread_start_joinable(&cl.sub, sub_main, NULL, THREAD_STACK)) != 0) {
        snprintf(err, errlen, "cannot start the cluster's threads: %s", strerror(rc));
        return -1;
    }
    cl.have_sub = 1;
    return 0;
}

void cluster_stop(void)
{
    char why[ERRLEN], key[sizeof(KEY_NODE) + PKT_NAME_MAX];
    redisReply *r;

    if (!cl.started)
        return;
    pthread_mutex_lock(&cl.wake_lock);
    cl.stop = 1;
    pthread_cond_broadcast(&cl.wake);
    pthread_mutex_unlock(&cl.wake_lock);
    if (cl.have_worker)
        pthread_join(cl.worker, NULL);
    if (cl.have_sub)
        pthread_join(cl.sub, NULL);
    /* Gone at once rather than at the entry's expiry. */
    snprintf(key, sizeof(key), KEY_NODE "%s", cl.node);
    pthread_mutex_lock(&cl.lock);
    if (cl.cmd && (r = cmd_call_locked(-1, why, sizeof(why), "DEL %s", key)))
        freeReplyObject(r);
    if (cl.cmd)
        redisFree(cl.cmd);
    cl.cmd = NULL;
    pthread_mutex_unlock(&cl.lock);
    json_decref(cl.view);
    json_decref(cl.warned);
    cl.view = cl.warned = NULL;
    OPENSSL_cleanse(cl.url.password, sizeof(cl.url.password));
}

const char *cluster_node(void)
{
    return cl.started ? cl.node : NULL;
}

json_t *cluster_nodes_packet(void)
{
    json_t *nodes = json_array(), *v;
    size_t i;
    int self = 0;

    if (!cl.started || !nodes) {
        json_decref(nodes);
        return NULL;
    }
    pthread_mutex_lock(&cl.view_lock);
    json_array_foreach(cl.view, i, v) {
        self |= strcmp(json_string_value(json_object_get(v, "name")), cl.node) == 0;
        /* Copies, not references: the view is freed by the worker while
         * the packet may still be on its way. */
        json_array_append_new(nodes, json_pack("{s:s,s:s}", "name",
                                               json_string_value(json_object_get(v, "name")),
                                               "address",
                                               json_string_value(json_object_get(v, "address"))));
    }
    pthread_mutex_unlock(&cl.view_lock);
    if (!self && json_array_size(nodes) < PKT_NODES_MAX) /* not read back yet */
        json_array_append_new(nodes, json_pack("{s:s,s:s}", "name", cl.node, "address",
                                               cl.advertise));
    return packet(OP_NODES, "{s:o}", "nodes", nodes);
}

static json_t *iso_time(json_int_t t)
{
    struct tm tm;
    time_t tt = (time_t)t;
    char buf[32];

    gmtime_r(&tt, &tm);
    strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
    return json_string(buf);
}

void cluster_decorate_list(json_t *list, int admin)
{
    json_t *nodes, *v, *p;
    size_t i, j;

    if (!cl.started || !list)
        return;
    nodes = json_array();
    pthread_mutex_lock(&cl.view_lock);
    json_array_foreach(cl.view, i, v) {
        const char *name = json_string_value(json_object_get(v, "name"));
        json_array_append_new(nodes, json_pack("{s:s,s:s,s:o,s:I,s:I,s:b}", "name", name,
                                               "address",
                                               json_string_value(json_object_get(v, "address")),
                                               "up_since",
                                               iso_time(json_integer_value(
                                                   json_object_get(v, "up_since"))),
                                               "tunnels",
                                               json_integer_value(json_object_get(v, "tunnels")),
                                               "connections",
                                               json_integer_value(
                                                   json_object_get(v, "connections")),
                                               "self", strcmp(name, cl.node) == 0));
    }
    /* Each private's nodes: the others' entries, and this node live. */
    json_array_foreach(json_object_get(list, "privates"), i, p) {
        const char *pname = json_string_value(json_object_get(p, "name"));
        json_t *on = json_array();
        json_array_foreach(cl.view, j, v) {
            const char *name = json_string_value(json_object_get(v, "name"));
            size_t k;
            json_t *q;
            int has = 0;
            if (strcmp(name, cl.node) == 0)
                continue;
            json_array_foreach(json_object_get(v, "privates"), k, q)
                has |= strcmp(json_string_value(q), pname) == 0;
            if (has)
                json_array_append_new(on, json_string(name));
        }
        if (json_is_true(json_object_get(p, "online")))
            json_array_append_new(on, json_string(cl.node));
        json_object_set_new(p, "nodes", on);
    }
    /* Each app's counters: this node's live ones and the others' last. */
    json_array_foreach(json_object_get(list, "apps"), i, p) {
        const char *aname = json_string_value(json_object_get(p, "name"));
        json_t *act = json_object_get(p, "active_connections");
        json_t *tot = json_object_get(p, "total_connections");
        json_int_t sum[4];
        if (!act) {
            act = json_object_get(p, "active_sessions");
            tot = json_object_get(p, "total_sessions");
        }
        sum[0] = json_integer_value(act);
        sum[1] = json_integer_value(tot);
        sum[2] = json_integer_value(json_object_get(p, "bytes_in"));
        sum[3] = json_integer_value(json_object_get(p, "bytes_out"));
        json_array_foreach(cl.view, j, v) {
            json_t *c;
            if (strcmp(json_string_value(json_object_get(v, "name")), cl.node) == 0)
                continue;
            c = json_object_get(json_object_get(v, "apps"), aname);
            for (size_t k = 0; c && k < 4; k++)
                sum[k] += json_integer_value(json_array_get(c, k));
        }
        json_object_set_new(p, "cluster", json_pack("{s:I,s:I,s:I,s:I}", "active_connections",
                                                    sum[0], "total_connections", sum[1],
                                                    "bytes_in", sum[2], "bytes_out", sum[3]));
    }
    pthread_mutex_unlock(&cl.view_lock);
    json_object_set_new(list, "cluster",
                        json_pack("{s:s,s:s,s:o}", "store", cl.store_up ? "up" : "down", "node",
                                  cl.node, "nodes", nodes));
    if (admin)
        json_object_set_new(json_object_get(list, "cluster"), "url", json_string(cl.url.shown));
}

void cluster_metrics(FILE *f)
{
    json_t *v;
    size_t i;

    if (!cl.started)
        return;
    fprintf(f, "# HELP nat_cluster_store_up Whether the cluster store (Redis) answers.\n"
               "# TYPE nat_cluster_store_up gauge\nnat_cluster_store_up %d\n",
            cl.store_up ? 1 : 0);
    pthread_mutex_lock(&cl.view_lock);
    fprintf(f, "# HELP nat_cluster_nodes Live nodes of the cluster.\n"
               "# TYPE nat_cluster_nodes gauge\nnat_cluster_nodes %zu\n",
            json_array_size(cl.view));
    fprintf(f, "# HELP nat_cluster_node_connections Connections each node relays now.\n"
               "# TYPE nat_cluster_node_connections gauge\n");
    json_array_foreach(cl.view, i, v)
        fprintf(f, "nat_cluster_node_connections{node=\"%s\"} %lld\n",
                json_string_value(json_object_get(v, "name")),
                (long long)json_integer_value(json_object_get(v, "connections")));
    pthread_mutex_unlock(&cl.view_lock);
}

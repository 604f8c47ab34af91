/* tokens.c - the admin's scoped tokens: their scopes, their hashes in
 * STATE_DIR/tokens.json, lookup in constant time. One mutex guards the table;
 * nothing here calls into the registry. */

#include "tokens.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "log.h"
#include "netio.h"
#include "state.h"

#define TOKENS_FILE "tokens.json"
#define TOKENS_FILE_MAX (1024 * 1024)
#define SECRET_BYTES 32
#define HASH_LEN 32
#define DEFAULT_MAX_APPS 10
#define DEFAULT_MAX_CONNS 100

struct token {
    struct token_scope scope;
    unsigned char hash[HASH_LEN];   /* SHA-256 of the token's text */
};

static struct {
    pthread_mutex_t lock;
    struct token *t;                /* TOKENS_MAX entries */
    int n;
    const struct state_dir *state;
} tok = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void hex(const unsigned char *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";

    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

static int unhex(const char *in, unsigned char *out, size_t n)
{
    if (!in || strlen(in) != 2 * n)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned v = 0;
        for (int k = 0; k < 2; k++) {
            char c = in[2 * i + (size_t)k];
            v <<= 4;
            if (c >= '0' && c <= '9')
                v |= (unsigned)(c - '0');
            else if (c >= 'a' && c <= 'f')
                v |= (unsigned)(c - 'a' + 10);
            else
                return -1;
        }
        out[i] = (unsigned char)v;
    }
    return 0;
}

static int sha256(const void *data, size_t len, unsigned char out[HASH_LEN])
{
    unsigned olen = 0;

    return EVP_Digest(data, len, out, &olen, EVP_sha256(), NULL) == 1 && olen == HASH_LEN ? 0
                                                                                          : -1;
}

/* ---------------------------------------------------------------- scopes */

/* A label: 1 to TOKEN_LABEL_MAX printable ASCII characters. */
static int valid_label(const char *s)
{
    size_t n = s ? strlen(s) : 0;

    if (n < 1 || n > TOKEN_LABEL_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] > 0x7e || s[i] == '"' || s[i] == '\\')
            return 0;
    return 1;
}

/* A private name, or a name's prefix and a final '*' (1 to 64 characters
 * before it). */
static int valid_private_pattern(const char *s)
{
    char name[PKT_NAME_MAX + 2];
    size_t n = s ? strlen(s) : 0;

    if (n < 1 || n > PKT_NAME_MAX + 1)
        return 0;
    if (s[n - 1] != '*')
        return n <= PKT_NAME_MAX && pkt_valid_name(s);
    if (n == 1)
        return 1; /* "*": any name */
    memcpy(name, s, n - 1);
    name[n - 1] = '\0';
    return pkt_valid_name(name);
}

int token_scope_from_json(json_t *obj, struct token_scope *s, char *err, size_t errlen)
{
    json_t *v, *e;
    size_t i;
    const char *str;
    int lo[TOKEN_RANGES_MAX], hi[TOKEN_RANGES_MAX], n;

    memset(s, 0, sizeof(*s));
    str = json_string_value(json_object_get(obj, "label"));
    if (!valid_label(str)) {
        snprintf(err, errlen, "'label' must be 1 to %d printable characters (no quotes or "
                 "backslashes)", TOKEN_LABEL_MAX);
        return -1;
    }
    snprintf(s->label, sizeof(s->label), "%s", str);
    v = json_object_get(obj, "privates");
    if (!json_is_array(v) || json_array_size(v) < 1 || json_array_size(v) > TOKEN_PRIVATES_MAX) {
        snprintf(err, errlen, "'privates' must be a list of 1 to %d private proxy names (a name "
                 "may end in '*' to allow every name that starts so)", TOKEN_PRIVATES_MAX);
        return -1;
    }
    json_array_foreach(v, i, e) {
        str = json_string_value(e);
        if (!valid_private_pattern(str)) {
            snprintf(err, errlen, "'privates' entry %zu is not a private proxy name (1 to %d "
                     "letters, digits, '.', '_' or '-', optionally ending in '*')", i,
                     PKT_NAME_MAX);
            return -1;
        }
        snprintf(s->privates[s->nprivates++], sizeof(s->privates[0]), "%s", str);
    }
    str = json_string_value(json_object_get(obj, "ports"));
    if (!str || strlen(str) >= sizeof(s->ports_text) ||
        (n = net_parse_port_ranges(str, lo, hi, TOKEN_RANGES_MAX)) < 0) {
        snprintf(err, errlen, "'ports' must be the public ports its apps may use: a port or "
                 "LOW-HIGH, at most %d joined by commas (\"20000-20099\")", TOKEN_RANGES_MAX);
        return -1;
    }
    for (int k = 0; k < n; k++) {
        s->ports[k].lo = lo[k];
        s->ports[k].hi = hi[k];
    }
    s->nranges = n;
    snprintf(s->ports_text, sizeof(s->ports_text), "%s", str);
    s->max_apps = DEFAULT_MAX_APPS;
    v = json_object_get(obj, "max_apps");
    if (v && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 ||
            json_integer_value(v) > TOKEN_MAX_APPS_LIMIT) {
            snprintf(err, errlen, "'max_apps' must be a whole number from 1 to %d",
                     TOKEN_MAX_APPS_LIMIT);
            return -1;
        }
        s->max_apps = (unsigned)json_integer_value(v);
    }
    s->max_conns = DEFAULT_MAX_CONNS;
    v = json_object_get(obj, "max_conns");
    if (v && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 ||
            json_integer_value(v) > TOKEN_MAX_CONNS_LIMIT) {
            snprintf(err, errlen, "'max_conns' must be a whole number from 1 to %d",
                     TOKEN_MAX_CONNS_LIMIT);
            return -1;
        }
        s->max_conns = (unsigned)json_integer_value(v);
    }
    return 0;
}

json_t *token_scope_json(const struct token_scope *s)
{
    json_t *privs = json_array();
    char when[32];
    struct tm tm;

    for (int i = 0; privs && i < s->nprivates; i++)
        json_array_append_new(privs, json_string(s->privates[i]));
    gmtime_r(&s->created, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    return json_pack("{s:s,s:s,s:o*,s:s,s:I,s:I,s:s}", "id", s->id, "label", s->label,
                     "privates", privs, "ports", s->ports_text, "max_apps",
                     (json_int_t)s->max_apps, "max_conns", (json_int_t)s->max_conns, "created",
                     when);
}

int scope_allows_private(const struct token_scope *s, const char *name)
{
    for (int i = 0; i < s->nprivates; i++) {
        const char *p = s->privates[i];
        size_t n = strlen(p);
        if (p[n - 1] == '*' ? strncmp(p, name, n - 1) == 0 : strcmp(p, name) == 0)
            return 1;
    }
    return 0;
}

int scope_allows_port(const struct token_scope *s, int port)
{
    for (int i = 0; i < s->nranges; i++)
        if (port >= s->ports[i].lo && port <= s->ports[i].hi)
            return 1;
    return 0;
}

void scope_privates_text(const struct token_scope *s, char *out, size_t cap)
{
    size_t len = 0;

    out[0] = '\0';
    for (int i = 0; i < s->nprivates && len < cap; i++) {
        int w = snprintf(out + len, cap - len, "%s%s", i ? ", " : "", s->privates[i]);
        if (w < 0)
            break;
        len += (size_t)w;
    }
}

const char *principal_who(const struct principal *p, char *buf, size_t cap)
{
    if (p->admin) {
        snprintf(buf, cap, "admin");
    } else {
        char esc[TOKEN_LABEL_MAX * 4 + 1];
        snprintf(buf, cap, "token:%s(%s)", p->scope.id,
                 log_escape(p->scope.label, esc, sizeof(esc)));
    }
    return buf;
}

const char *principal_owner(const struct principal *p)
{
    return p->admin ? "" : p->scope.id;
}

/* ----------------------------------------------------------- persistence */

/* Write the table (without entry skip, or -1). Under tok.lock. */
static int save_locked(int skip, const struct token *extra, char *err, size_t errlen)
{
    json_t *root = json_object(), *arr = json_array();
    int rc = -1;

    if (!root || !arr || json_object_set_new(root, "version", json_integer(1)) != 0 ||
        json_object_set(root, "tokens", arr) != 0)
        goto oom;
    for (int i = 0; i <= tok.n; i++) {
        const struct token *t = i < tok.n ? &tok.t[i] : extra;
        char h[2 * HASH_LEN + 1];
        json_t *o;
        if (!t || i == skip)
            continue;
        o = token_scope_json(&t->scope);
        hex(t->hash, HASH_LEN, h);
        if (!o || json_object_set_new(o, "sha256", json_string(h)) != 0 ||
            json_object_set_new(o, "created_unix", json_integer((json_int_t)t->scope.created)) !=
                0 ||
            json_array_append_new(arr, o) != 0)
            goto oom;
    }
    rc = state_write_json(tok.state, TOKENS_FILE, root, err, errlen);
    goto out;
oom:
    snprintf(err, errlen, "out of memory");
out:
    json_decref(arr);
    json_decref(root);
    return rc;
}

int tokens_init(const struct state_dir *sd, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *root = NULL, *v;
    size_t len = 0, i;
    char *text;
    int rc = -1;

    tok.state = sd;
    tok.t = calloc(TOKENS_MAX, sizeof(*tok.t));
    if (!tok.t) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    text = state_read(sd, TOKENS_FILE, TOKENS_FILE_MAX, &len, err, errlen);
    if (!text)
        return err[0] ? -1 : 0; /* no file: no scoped tokens yet */
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root || !json_is_object(root) || !json_is_array(json_object_get(root, "tokens"))) {
        snprintf(err, errlen, "%s/%s is not valid (line %d: %s); it is left untouched: fix or "
                 "move it away", sd->path, TOKENS_FILE, root ? 0 : jerr.line,
                 root ? "no \"tokens\" list" : jerr.text);
        goto out;
    }
    json_array_foreach(json_object_get(root, "tokens"), i, v) {
        struct token t;
        char why[200];
        const char *id = json_string_value(json_object_get(v, "id"));
        json_t *c = json_object_get(v, "created_unix");
        unsigned char idb[TOKEN_ID_LEN / 2];
        if (tok.n >= TOKENS_MAX) {
            snprintf(err, errlen, "%s/%s holds more than %d tokens", sd->path, TOKENS_FILE,
                     TOKENS_MAX);
            goto out;
        }
        if (token_scope_from_json(v, &t.scope, why, sizeof(why)) != 0 ||
            (unhex(id, idb, sizeof(idb)) != 0 && snprintf(why, sizeof(why), "bad 'id'")) ||
            (unhex(json_string_value(json_object_get(v, "sha256")), t.hash, HASH_LEN) != 0 &&
             snprintf(why, sizeof(why), "bad 'sha256'")) ||
            (!json_is_integer(c) && snprintf(why, sizeof(why), "bad 'created_unix'"))) {
            snprintf(err, errlen, "%s/%s: token %zu: %s; the file is left untouched: fix or "
                     "move it away", sd->path, TOKENS_FILE, i, why);
            goto out;
        }
        snprintf(t.scope.id, sizeof(t.scope.id), "%s", id);
        t.scope.created = (time_t)json_integer_value(c);
        tok.t[tok.n++] = t;
    }
    log_info("ev=tokens_loaded count=%d", tok.n);
    rc = 0;
out:
    json_decref(root);
    return rc;
}

void tokens_shutdown(void)
{
    pthread_mutex_lock(&tok.lock);
    if (tok.t)
        OPENSSL_cleanse(tok.t, TOKENS_MAX * sizeof(*tok.t));
    free(tok.t);
    tok.t = NULL;
    tok.n = 0;
    pthread_mutex_unlock(&tok.lock);
}

/* ---------------------------------------------------------------- lookup */

int tokens_lookup(const char *given, size_t len, struct token_scope *out)
{
    unsigned char h[HASH_LEN];
    int found = -1;

    if (sha256(given, len, h) != 0)
        return 0;
    pthread_mutex_lock(&tok.lock);
    /* Every entry is compared, whichever matches: the time says nothing of
     * which, or whether, one did. */
    for (int i = 0; i < tok.n; i++) {
        int eq = CRYPTO_memcmp(h, tok.t[i].hash, HASH_LEN) == 0;
        found = eq ? i : found;
    }
    if (found >= 0 && out)
        *out = tok.t[found].scope;
    pthread_mutex_unlock(&tok.lock);
    OPENSSL_cleanse(h, sizeof(h));
    return found >= 0;
}

int tokens_get(const char *id, struct token_scope *out)
{
    int found = 0;

    pthread_mutex_lock(&tok.lock);
    for (int i = 0; i < tok.n && !found; i++) {
        if (strcmp(tok.t[i].scope.id, id) == 0) {
            if (out)
                *out = tok.t[i].scope;
            found = 1;
        }
    }
    pthread_mutex_unlock(&tok.lock);
    return found;
}

/* ------------------------------------------------------------ management */

int tokens_create(json_t *req, json_t **answer, char *err, size_t errlen)
{
    struct token t;
    unsigned char secret[SECRET_BYTES], idb[TOKEN_ID_LEN / 2];
    char text[2 * SECRET_BYTES + 1];
    int status = 500;

    *answer = NULL;
    if (token_scope_from_json(req, &t.scope, err, errlen) != 0)
        return 400;
    if (RAND_bytes(secret, sizeof(secret)) != 1 || RAND_bytes(idb, sizeof(idb)) != 1) {
        snprintf(err, errlen, "no random bytes for the token");
        return 500;
    }
    hex(secret, sizeof(secret), text);
    hex(idb, sizeof(idb), t.scope.id);
    t.scope.created = time(NULL);
    if (sha256(text, strlen(text), t.hash) != 0) {
        snprintf(err, errlen, "cannot hash the token");
        goto out;
    }
    pthread_mutex_lock(&tok.lock);
    if (tok.n >= TOKENS_MAX) {
        snprintf(err, errlen, "this server has %d tokens already: revoke one first", TOKENS_MAX);
        status = 409;
    } else if (save_locked(-1, &t, err, errlen) != 0) {
        status = 500;
    } else {
        tok.t[tok.n++] = t;
        status = 201;
    }
    pthread_mutex_unlock(&tok.lock);
    if (status == 201) {
        *answer = token_scope_json(&t.scope);
        if (!*answer || json_object_set_new(*answer, "token", json_string(text)) != 0) {
            json_decref(*answer);
            *answer = NULL;
            snprintf(err, errlen, "out of memory");
            status = 500;
        }
    }
out:
    OPENSSL_cleanse(secret, sizeof(secret));
    OPENSSL_cleanse(text, sizeof(text));
    return status;
}

int tokens_revoke(const char *id, char *err, size_t errlen)
{
    int status = 404;

    pthread_mutex_lock(&tok.lock);
    for (int i = 0; i < tok.n; i++) {
        if (strcmp(tok.t[i].scope.id, id) != 0)
            continue;
        if (save_locked(i, NULL, err, errlen) != 0) {
            status = 500;
            break;
        }
        memmove(&tok.t[i], &tok.t[i + 1], (size_t)(tok.n - i - 1) * sizeof(tok.t[0]));
        tok.n--;
        OPENSSL_cleanse(&tok.t[tok.n], sizeof(tok.t[0]));
        status = 200;
        break;
    }
    pthread_mutex_unlock(&tok.lock);
    if (status == 404)
        snprintf(err, errlen, "no token with id '%s'", id);
    return status;
}

json_t *tokens_list(void)
{
    json_t *arr = json_array();

    pthread_mutex_lock(&tok.lock);
    for (int i = 0; arr && i < tok.n; i++)
        json_array_append_new(arr, token_scope_json(&tok.t[i].scope));
    pthread_mutex_unlock(&tok.lock);
    return json_pack("{s:o*}", "tokens", arr);
}

/* fuzz_api_body.c - libFuzzer harness for what the web API does with a request
 * body: at most 16 KiB, the nesting bound of json_depth_ok(), json_loadb() with
 * JSON_REJECT_DUPLICATES, an object, then registry_spec_from_json() (POST
 * /register). An object with an "apps" array is also read the way
 * registry_init() reads STATE_DIR/apps.json: every entry through
 * registry_spec_from_json(). An accepted spec must satisfy every rule the rest
 * of the program relies on, and hold exactly the strings it was given. The
 * same body goes through token_scope_from_json() (POST /tokens), whose
 * accepted scopes must hold within their limits.
 *
 * Each input runs on a thread with the stack of a CivetWeb worker
 * (WEB_CIVETWEB_STACK_SIZE, 100 KiB), where web_api.c does this work: without
 * the depth bound a body nested ~1000 deep overflows it here as it did in
 * proxy_public (fuzz/regressions/fuzz_api_body/deep_10000). A parsed value is
 * checked to be no deeper than json_depth_ok() promised. */

#include <stdint.h>
#include <string.h>

#include "cidr.h"
#include "guard.h"
#include "json_depth.h"
#include "registry.h"
#include "tokens.h"
#include "web_api.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct job {
    const char *buf;
    size_t len;
};

/* Nesting of a parsed value; recursive, so only called on values that
 * json_depth_ok() bounded to WEB_MAX_JSON_DEPTH levels. */
static unsigned value_depth(json_t *v)
{
    unsigned deepest = 0, d;
    const char *key;
    json_t *child;
    size_t i;

    if (json_is_object(v)) {
        json_object_foreach(v, key, child) {
            d = value_depth(child);
            if (d > deepest)
                deepest = d;
        }
        return deepest + 1;
    }
    if (json_is_array(v)) {
        json_array_foreach(v, i, child) {
            d = value_depth(child);
            if (d > deepest)
                deepest = d;
        }
        return deepest + 1;
    }
    return 0;
}

static void check_spec(json_t *obj)
{
    struct app_spec spec;
    char err[300];
    json_t *priv;

    memset(&spec, 0xA5, sizeof(spec));
    err[0] = '\0';
    if (registry_spec_from_json(obj, &spec, err, sizeof(err)) != 0) {
        FUZZ_ASSERT(err[0] != '\0' && strlen(err) < sizeof(err));
        return;
    }
    FUZZ_ASSERT(json_is_object(obj));
    FUZZ_ASSERT(memchr(spec.name, '\0', sizeof(spec.name)) != NULL);
    FUZZ_ASSERT(memchr(spec.target_host, '\0', sizeof(spec.target_host)) != NULL);
    FUZZ_ASSERT(memchr(spec.private_name, '\0', sizeof(spec.private_name)) != NULL);
    FUZZ_ASSERT(pkt_valid_name(spec.name));
    FUZZ_ASSERT(pkt_valid_host(spec.target_host));
    FUZZ_ASSERT(spec.public_port >= 1 && spec.public_port <= 65535);
    FUZZ_ASSERT(spec.target_port >= 1 && spec.target_port <= 65535);
    FUZZ_ASSERT(spec.private_name[0] == '\0' || pkt_valid_name(spec.private_name));
    /* The strings are the request's, whole. */
    FUZZ_ASSERT(strcmp(spec.name, json_string_value(json_object_get(obj, "name"))) == 0);
    FUZZ_ASSERT(strcmp(spec.target_host, json_string_value(json_object_get(obj, "target_host"))) == 0);
    priv = json_object_get(obj, "private");
    if (priv && !json_is_null(priv))
        FUZZ_ASSERT(strcmp(spec.private_name, json_string_value(priv)) == 0);
    else
        FUZZ_ASSERT(spec.private_name[0] == '\0');
    /* proxy_protocol 0-2, TCP apps only; allow_from within its bounds, each
     * entry a network with no bits past its prefix, and each written back in
     * notation that parses to itself. */
    FUZZ_ASSERT(spec.proxy_protocol >= 0 && spec.proxy_protocol <= 2);
    FUZZ_ASSERT(!spec.proxy_protocol || (!spec.udp && !spec.ftp));
    FUZZ_ASSERT(spec.allow_from.n >= 0 && spec.allow_from.n <= CIDR_MAX);
    for (int i = 0; i < spec.allow_from.n; i++) {
        const struct cidr *c = &spec.allow_from.e[i];
        struct cidr back;
        char text[CIDR_TEXT_MAX];
        FUZZ_ASSERT(c->family == 4 || c->family == 6);
        FUZZ_ASSERT(c->prefix <= (c->family == 4 ? 32 : 128));
        cidr_str(c, text, sizeof(text));
        FUZZ_ASSERT(cidr_parse(text, &back, err, sizeof(err)) == 0);
        FUZZ_ASSERT(memcmp(&back, c, sizeof(back)) == 0);
    }
}

static void check_scope(json_t *obj)
{
    struct token_scope sc;
    char err[300];

    memset(&sc, 0xA5, sizeof(sc));
    err[0] = '\0';
    if (token_scope_from_json(obj, &sc, err, sizeof(err)) != 0) {
        FUZZ_ASSERT(err[0] != '\0' && strlen(err) < sizeof(err));
        return;
    }
    FUZZ_ASSERT(memchr(sc.label, '\0', sizeof(sc.label)) != NULL && sc.label[0]);
    FUZZ_ASSERT(strcmp(sc.label, json_string_value(json_object_get(obj, "label"))) == 0);
    FUZZ_ASSERT(sc.nprivates >= 1 && sc.nprivates <= TOKEN_PRIVATES_MAX);
    for (int i = 0; i < sc.nprivates; i++)
        FUZZ_ASSERT(memchr(sc.privates[i], '\0', sizeof(sc.privates[i])) != NULL &&
                    sc.privates[i][0]);
    FUZZ_ASSERT(sc.nranges >= 1 && sc.nranges <= TOKEN_RANGES_MAX);
    for (int i = 0; i < sc.nranges; i++)
        FUZZ_ASSERT(sc.ports[i].lo >= 1 && sc.ports[i].lo <= sc.ports[i].hi &&
                    sc.ports[i].hi <= 65535);
    FUZZ_ASSERT(sc.max_apps >= 1 && sc.max_apps <= TOKEN_MAX_APPS_LIMIT);
    FUZZ_ASSERT(sc.max_conns >= 1 && sc.max_conns <= TOKEN_MAX_CONNS_LIMIT);
    /* A name the scope allows is one HELLO could carry. */
    for (int i = 0; i < sc.nprivates; i++)
        if (pkt_valid_name(sc.privates[i]))
            FUZZ_ASSERT(scope_allows_private(&sc, sc.privates[i]));
}

/* What read_json_body() and the handlers of web_api.c do with a body. */
static void *run_body(void *arg)
{
    const struct job *j = arg;
    json_error_t jerr;
    json_t *obj, *apps, *a;
    size_t i;

    if (!json_depth_ok(j->buf, j->len, WEB_MAX_JSON_DEPTH))
        return NULL;  /* the API answers 400 without parsing */
    obj = json_loadb(j->buf, j->len, JSON_REJECT_DUPLICATES, &jerr);
    if (!obj)
        return NULL;
    FUZZ_ASSERT(value_depth(obj) <= WEB_MAX_JSON_DEPTH);
    /* The API refuses non-objects before this; the function must too. */
    check_spec(obj);
    if (json_is_object(obj))
        check_scope(obj);
    apps = json_object_get(obj, "apps");
    json_array_foreach(apps, i, a)
        check_spec(a);
    json_decref(obj);
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct job j;

    if (size > WEB_MAX_BODY)
        return 0;  /* the API answers 413 without parsing */
    j.buf = (const char *)guarded_copy(data, size);
    j.len = size;
    fuzz_run_on_stack(run_body, &j, WEB_CIVETWEB_STACK_SIZE);
    return 0;
}

/* fuzz_api_body.c - libFuzzer harness for what the web API does with a request
 * body: at most 16 KiB, json_loadb() with JSON_REJECT_DUPLICATES, an object, then
 * registry_spec_from_json() (POST /api/register). An object with an "apps" array
 * is also read the way registry_init() reads STATE_DIR/apps.json: every entry
 * through registry_spec_from_json(). An accepted spec must satisfy every rule
 * the rest of the program relies on, and hold exactly the strings it was given. */

#include <stdint.h>
#include <string.h>

#include "guard.h"
#include "registry.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define API_MAX_BODY 16384   /* WEB_MAX_BODY in web_api.c */

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
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_error_t jerr;
    json_t *obj, *apps, *a;
    size_t i;

    if (size > API_MAX_BODY)
        return 0;  /* the API answers 413 without parsing */
    obj = json_loadb((const char *)guarded_copy(data, size), size, JSON_REJECT_DUPLICATES, &jerr);
    if (!obj)
        return 0;
    /* The API refuses non-objects before this; the function must too. */
    check_spec(obj);
    apps = json_object_get(obj, "apps");
    json_array_foreach(apps, i, a)
        check_spec(a);
    json_decref(obj);
    return 0;
}

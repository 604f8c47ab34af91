/* test_registry.c - registry_spec_from_json, the check of every app the web API
 * registers (and of apps.json entries). Only this pure function is tested here:
 * the rest of registry.c binds sockets and starts threads. */

#include "unit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry.h"

/* Parse body like the web API does, then fill a spec; the return value. */
static int spec_of(const char *body, struct app_spec *spec, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *j = json_loads(body, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    int r;

    if (!j) {
        fprintf(stderr, "bad test JSON %s: %s\n", body, jerr.text);
        exit(2);
    }
    err[0] = '\0';
    r = registry_spec_from_json(j, spec, err, errlen);
    json_decref(j);
    return r;
}

#define BASE_NAME "\"name\":\"ssh\""
#define BASE_PP "\"public_port\":2222"
#define BASE_TH "\"target_host\":\"127.0.0.1\""
#define BASE_TP "\"target_port\":22"

static void spec_bad(const char *body, int line)
{
    struct app_spec spec;
    char err[300];

    if (spec_of(body, &spec, err, sizeof(err)) != -1)
        unit_fail(__FILE__, line, "spec_bad", "accepted: %s", body);
    else if (!err[0])
        unit_fail(__FILE__, line, "spec_bad", "refused without a reason: %s", body);
}
#define SPEC_BAD(b) spec_bad((b), __LINE__)

void test_registry_spec(void)
{
    struct app_spec spec;
    char err[300];

    CHECK(spec_of("{" BASE_NAME "," BASE_PP "," BASE_TH "," BASE_TP "}", &spec, err, sizeof(err)) == 0,
          "valid: %s", err);
    CHECK(strcmp(spec.name, "ssh") == 0 && spec.public_port == 2222 &&
              strcmp(spec.target_host, "127.0.0.1") == 0 && spec.target_port == 22 &&
              spec.private_name[0] == '\0',
          "fields copied");

    CHECK(spec_of("{\"name\":\"nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn\","
                  "\"public_port\":1,\"target_host\":\"::1\",\"target_port\":65535,"
                  "\"private\":\"pppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppp\","
                  "\"extra\":[1]}",
                  &spec, err, sizeof(err)) == 0,
          "longest names: %s", err);
    CHECK(strlen(spec.name) == 64 && strlen(spec.private_name) == 64 && spec.public_port == 1 &&
              spec.target_port == 65535 && strcmp(spec.target_host, "::1") == 0,
          "longest names copied whole");
    CHECK(spec_of("{" BASE_NAME "," BASE_PP "," BASE_TH "," BASE_TP ",\"private\":null}", &spec, err,
                  sizeof(err)) == 0 && spec.private_name[0] == '\0',
          "private null means none");
    {
        char body[600];
        char *h = malloc(254);
        memset(h, 'h', 253);
        h[253] = '\0';
        snprintf(body, sizeof(body), "{" BASE_NAME "," BASE_PP ",\"target_host\":\"%s\"," BASE_TP "}", h);
        CHECK(spec_of(body, &spec, err, sizeof(err)) == 0 && strlen(spec.target_host) == 253,
              "253-byte host");
        snprintf(body, sizeof(body), "{" BASE_NAME "," BASE_PP ",\"target_host\":\"%sh\"," BASE_TP "}", h);
        SPEC_BAD(body);
        free(h);
    }

    /* Not an object. */
    SPEC_BAD("[]");
    SPEC_BAD("\"ssh\"");
    SPEC_BAD("null");
    SPEC_BAD("{}");
    /* Each member missing. */
    SPEC_BAD("{" BASE_PP "," BASE_TH "," BASE_TP "}");
    SPEC_BAD("{" BASE_NAME "," BASE_TH "," BASE_TP "}");
    SPEC_BAD("{" BASE_NAME "," BASE_PP "," BASE_TP "}");
    SPEC_BAD("{" BASE_NAME "," BASE_PP "," BASE_TH "}");
    /* Names. */
    SPEC_BAD("{\"name\":\"\"," BASE_PP "," BASE_TH "," BASE_TP "}");
    SPEC_BAD("{\"name\":\"a b\"," BASE_PP "," BASE_TH "," BASE_TP "}");
    SPEC_BAD("{\"name\":\"a/b\"," BASE_PP "," BASE_TH "," BASE_TP "}");
    SPEC_BAD("{\"name\":\"nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn\","
             BASE_PP "," BASE_TH "," BASE_TP "}");
    SPEC_BAD("{\"name\":1," BASE_PP "," BASE_TH "," BASE_TP "}");
    SPEC_BAD("{\"name\":null," BASE_PP "," BASE_TH "," BASE_TP "}");
    SPEC_BAD("{\"name\":[\"ssh\"]," BASE_PP "," BASE_TH "," BASE_TP "}");
    /* Ports. */
    SPEC_BAD("{" BASE_NAME ",\"public_port\":0," BASE_TH "," BASE_TP "}");
    SPEC_BAD("{" BASE_NAME ",\"public_port\":65536," BASE_TH "," BASE_TP "}");
    SPEC_BAD("{" BASE_NAME ",\"public_port\":-1," BASE_TH "," BASE_TP "}");
    SPEC_BAD("{" BASE_NAME ",\"public_port\":4294969296," BASE_TH "," BASE_TP "}");
    SPEC_BAD("{" BASE_NAME ",\"public_port\":\"2222\"," BASE_TH "," BASE_TP "}");
    SPEC_BAD("{" BASE_NAME ",\"public_port\":2222.0," BASE_TH "," BASE_TP "}");
    SPEC_BAD("{" BASE_NAME ",\"public_port\":true," BASE_TH "," BASE_TP "}");
    SPEC_BAD("{" BASE_NAME "," BASE_PP "," BASE_TH ",\"target_port\":0}");
    SPEC_BAD("{" BASE_NAME "," BASE_PP "," BASE_TH ",\"target_port\":65536}");
    SPEC_BAD("{" BASE_NAME "," BASE_PP "," BASE_TH ",\"target_port\":\"22\"}");
    SPEC_BAD("{" BASE_NAME "," BASE_PP "," BASE_TH ",\"target_port\":null}");
    /* Hosts. */
    SPEC_BAD("{" BASE_NAME "," BASE_PP ",\"target_host\":\"\"," BASE_TP "}");
    SPEC_BAD("{" BASE_NAME "," BASE_PP ",\"target_host\":\"a b\"," BASE_TP "}");
    SPEC_BAD("{" BASE_NAME "," BASE_PP ",\"target_host\":\"[::1]\"," BASE_TP "}");
    SPEC_BAD("{" BASE_NAME "," BASE_PP ",\"target_host\":\"h/x\"," BASE_TP "}");
    SPEC_BAD("{" BASE_NAME "," BASE_PP ",\"target_host\":1," BASE_TP "}");
    /* Private. */
    SPEC_BAD("{" BASE_NAME "," BASE_PP "," BASE_TH "," BASE_TP ",\"private\":\"\"}");
    SPEC_BAD("{" BASE_NAME "," BASE_PP "," BASE_TH "," BASE_TP ",\"private\":\"a b\"}");
    SPEC_BAD("{" BASE_NAME "," BASE_PP "," BASE_TH "," BASE_TP ",\"private\":1}");
    SPEC_BAD("{" BASE_NAME "," BASE_PP "," BASE_TH "," BASE_TP ",\"private\":false}");

    /* Strings with a NUL byte: registry_spec_from_json reads them with
     * json_string_value() and would keep the part before the NUL; it relies on
     * the decoder, which refuses \u0000 unless JSON_ALLOW_NUL is given (the web
     * API and apps.json loading do not give it). Keep that assumption checked. */
    {
        json_error_t jerr;
        const char *body = "{\"name\":\"ssh\\u0000evil\"," BASE_PP "," BASE_TH "," BASE_TP "}";
        json_t *j = json_loadb(body, strlen(body), JSON_REJECT_DUPLICATES, &jerr);
        CHECK(j == NULL, "the API's decoder refuses \\u0000 in strings");
        json_decref(j);
    }
}

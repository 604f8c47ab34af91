/* fuzz_config.c - libFuzzer harness for config_parse(), the splitter of
 * /etc/proxy_public.conf and /etc/proxy_private.conf (config.c).
 *
 * Promises checked (abort on any break):
 *   - the answer is 0 or -1; a refusal names the file ("fuzz.conf:") and leaves
 *     the config empty;
 *   - an accepted file has at most CONFIG_MAX_ENTRIES settings, each key made
 *     of [a-z0-9-], 1..CONFIG_KEY_MAX long, not starting with '-'; each value
 *     without control bytes but tab, without blanks at either end, at most
 *     CONFIG_LINE_MAX long; line numbers strictly rising, at most
 *     CONFIG_MAX_LINES;
 *   - the settings written back as "key = value" lines parse to the same
 *     settings;
 *   - the parser runs on a thread with a release build's 64 KiB stack
 *     (netio.h THREAD_STACK_SIZE): proxy_private re-reads its config on its
 *     signal thread at SIGHUP. */

#include <stdint.h>
#include <string.h>

#include "config.h"
#include "guard.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define STACK_SIZE (64u * 1024)

struct job {
    const char *buf;
    size_t len;
};

static void check_entries(const struct config *c)
{
    int last = 0;

    FUZZ_ASSERT(c->n >= 0 && c->n <= CONFIG_MAX_ENTRIES);
    for (int i = 0; i < c->n; i++) {
        const struct config_entry *e = &c->entries[i];
        size_t kl = strlen(e->key), vl = strlen(e->value);
        FUZZ_ASSERT(kl >= 1 && kl <= CONFIG_KEY_MAX && e->key[0] != '-');
        for (size_t j = 0; j < kl; j++)
            FUZZ_ASSERT((e->key[j] >= 'a' && e->key[j] <= 'z') ||
                        (e->key[j] >= '0' && e->key[j] <= '9') || e->key[j] == '-');
        FUZZ_ASSERT(vl <= CONFIG_LINE_MAX);
        for (size_t j = 0; j < vl; j++) {
            unsigned char ch = (unsigned char)e->value[j];
            FUZZ_ASSERT((ch >= 0x20 || ch == '\t') && ch != 0x7f);
        }
        if (vl)
            FUZZ_ASSERT(e->value[0] != ' ' && e->value[0] != '\t' && e->value[vl - 1] != ' ' &&
                        e->value[vl - 1] != '\t');
        FUZZ_ASSERT(e->line > last && e->line <= CONFIG_MAX_LINES);
        last = e->line;
    }
}

static void *run_parse(void *arg)
{
    const struct job *j = arg;
    struct config c, c2;
    char err[256];
    int r = config_parse(j->buf, j->len, "fuzz.conf", &c, err, sizeof(err));

    FUZZ_ASSERT(r == 0 || r == -1);
    if (r != 0) {
        FUZZ_ASSERT(strncmp(err, "fuzz.conf:", 10) == 0);
        FUZZ_ASSERT(c.n == 0 && c.entries == NULL && c.text == NULL);
        return NULL;
    }
    check_entries(&c);
    {
        /* Written back: one line per setting, parsed again to the same. */
        static char out[CONFIG_MAX_ENTRIES * (CONFIG_KEY_MAX + CONFIG_LINE_MAX + 8)];
        size_t n = 0;
        for (int i = 0; i < c.n; i++) {
            size_t kl = strlen(c.entries[i].key), vl = strlen(c.entries[i].value);
            memcpy(out + n, c.entries[i].key, kl);
            n += kl;
            memcpy(out + n, " = ", 3);
            n += 3;
            memcpy(out + n, c.entries[i].value, vl);
            n += vl;
            out[n++] = '\n';
        }
        if (n <= CONFIG_MAX_BYTES) {
            FUZZ_ASSERT(config_parse(out, n, "fuzz.conf", &c2, err, sizeof(err)) == 0);
            FUZZ_ASSERT(c2.n == c.n);
            for (int i = 0; i < c.n; i++)
                FUZZ_ASSERT(strcmp(c.entries[i].key, c2.entries[i].key) == 0 &&
                            strcmp(c.entries[i].value, c2.entries[i].value) == 0 &&
                            c2.entries[i].line == i + 1);
            config_free(&c2);
        }
    }
    config_free(&c);
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct job j;

    if (size > CONFIG_MAX_BYTES + 1)
        return 0;  /* config_load never hands over more */
    j.buf = (const char *)guarded_copy(data, size);
    j.len = size;
    fuzz_run_on_stack(run_parse, &j, STACK_SIZE);
    return 0;
}

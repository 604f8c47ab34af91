/* fuzz_proxy_header.c - libFuzzer harness for pp_parse(), the PROXY header
 * reader of --accept-proxy-from (proxy_header.c).
 *
 * Promises checked (abort on any break):
 *   - the answer is 1, 0 or -1; "need more" (0) never comes for PP_HEADER_MAX
 *     bytes or more;
 *   - a whole header (1) is hdr_len bytes, 15 <= hdr_len <= min(len,
 *     PP_HEADER_MAX): version 1 at most PP_V1_MAX bytes ending in CRLF with no
 *     earlier CR or LF; version 2 exactly 16 + its length field (at most
 *     PP_V2_LEN_MAX); the client is AF_UNSPEC, AF_INET or AF_INET6;
 *   - the answer never depends on bytes past the header: the input cut to
 *     hdr_len gives the same header, and every shorter cut gives "need more";
 *     any cut of an input gives "need more" or the full input's answer;
 *   - the parser runs in a thread with a release build's 64 KiB stack
 *     (netio.h THREAD_STACK_SIZE, the stack pp_read_header runs on). */

#include <netinet/in.h>
#include <stdint.h>
#include <string.h>

#include "guard.h"
#include "proxy_header.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define STACK_SIZE (64u * 1024)   /* netio.h THREAD_STACK_SIZE, release build */

struct job {
    const unsigned char *buf;
    size_t len;
};

static int parse(const unsigned char *buf, size_t len, struct sockaddr_storage *src, size_t *hl)
{
    int r = pp_parse(buf, len, src, hl);

    FUZZ_ASSERT(r == 1 || r == 0 || r == -1);
    if (r == 0)
        FUZZ_ASSERT(len < PP_HEADER_MAX);
    if (r == 1) {
        FUZZ_ASSERT(*hl >= 15 && *hl <= len && *hl <= PP_HEADER_MAX);
        FUZZ_ASSERT(src->ss_family == AF_UNSPEC || src->ss_family == AF_INET ||
                    src->ss_family == AF_INET6);
        if (buf[0] == 'P') {
            FUZZ_ASSERT(*hl <= PP_V1_MAX);
            FUZZ_ASSERT(buf[*hl - 2] == '\r' && buf[*hl - 1] == '\n');
            FUZZ_ASSERT(memchr(buf, '\n', *hl - 1) == NULL);
            FUZZ_ASSERT(memchr(buf, '\r', *hl - 2) == NULL);
        } else {
            FUZZ_ASSERT(*hl == 16 + ((size_t)buf[14] << 8 | buf[15]));
            FUZZ_ASSERT(*hl <= 16 + PP_V2_LEN_MAX);
        }
    } else {
        FUZZ_ASSERT(*hl == 0 && src->ss_family == AF_UNSPEC);
    }
    return r;
}

static void *run_parse(void *arg)
{
    const struct job *j = arg;
    struct sockaddr_storage src, src2;
    size_t hl = 0, hl2 = 0, cuts[4];
    int r = parse(j->buf, j->len, &src, &hl);

    if (r == 1) {
        FUZZ_ASSERT(parse(j->buf, hl, &src2, &hl2) == 1 && hl2 == hl &&
                    memcmp(&src, &src2, sizeof(src)) == 0);
        for (size_t cut = 0; cut < hl; cut++)
            FUZZ_ASSERT(parse(j->buf, cut, &src2, &hl2) == 0);
    }
    cuts[0] = j->len ? j->buf[0] % (j->len + 1) : 0;
    cuts[1] = j->len / 3;
    cuts[2] = j->len / 2;
    cuts[3] = j->len ? j->len - 1 : 0;
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        int rp = parse(j->buf, cuts[i], &src2, &hl2);
        FUZZ_ASSERT(rp == 0 || rp == r);
    }
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct job j;

    if (size > 4 * PP_HEADER_MAX)
        return 0;  /* pp_read_header peeks at PP_HEADER_MAX bytes at most */
    j.buf = guarded_copy(data, size);
    j.len = size;
    fuzz_run_on_stack(run_parse, &j, STACK_SIZE);
    return 0;
}

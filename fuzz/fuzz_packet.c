/* fuzz_packet.c - libFuzzer harness for pkt_parse_frame().
 *
 * The input is a byte stream as a peer would send it on the tunnel. It is used
 * three ways:
 *   1. one frame at the start, with both header limits, and the answers must
 *      agree with each other and with parses of shorter prefixes;
 *   2. walked frame by frame like the tunnel reader: pre-auth limit for the
 *      first frame, the full limit after it;
 *   3. delivered in pieces (sizes from a PRNG seeded by the input) to a reader
 *      that, like tunnel.c's read_frame(), parses only once it has as many
 *      bytes as the last answer said it needs; it must see the same frames as 2.
 * Every parse sees a copy that ends right before an inaccessible page, so a read
 * past `avail` faults even inside libjansson, which AddressSanitizer does not
 * instrument. An accepted frame is re-encoded with pkt_encode() (a DATA
 * header read without Jansson: with pkt_encode_data()) and must parse back to
 * an equal header; a header read without Jansson must be one Jansson and
 * pkt_validate() read the same. Any broken promise aborts. */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "guard.h"
#include "netio.h"
#include "packet.h"
#include "proxy_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_WALK 64

struct answer {
    int rc;
    int op;
    size_t flen;
    size_t len;
    uint64_t conn;
};

/* p (accepted from frame, without Jansson: p->json NULL) is DATA or UDP_DATA,
 * and what Jansson and pkt_validate() make of the same header: the same three
 * members. */
static void check_fast(const uint8_t *frame, const struct pkt *p)
{
    size_t hlen = (size_t)frame[0] << 24 | (size_t)frame[1] << 16 | (size_t)frame[2] << 8 | frame[3];
    json_t *j = json_loadb((const char *)frame + PKT_FRAME_PREFIX, hlen, JSON_REJECT_DUPLICATES,
                           NULL);
    struct pkt q;
    char err[128];

    memset(&q, 0, sizeof(q));
    FUZZ_ASSERT(p->op == OP_DATA || p->op == OP_UDP_DATA);
    FUZZ_ASSERT(j && pkt_validate(j, &q, err, sizeof(err)) == 0 && json_object_size(j) == 3);
    FUZZ_ASSERT(q.op == p->op && q.conn == p->conn && q.len == p->len);
    json_decref(j);
}

/* Parse a guarded copy of buf[0..n); check the promises of packet.h that hold
 * for any input. The pkt is cleared before returning. */
static struct answer parse(const uint8_t *buf, size_t n, size_t maxh, json_t **hdr_out)
{
    uint8_t *c;
    struct pkt p;
    size_t flen = 31337;
    char err[128];
    struct answer a;

    c = guarded_copy(buf, n);
    err[0] = '\0';
    a.rc = pkt_parse_frame(c, n, maxh, &p, &flen, err, sizeof(err));
    a.op = p.op;
    a.flen = flen;
    a.len = p.len;
    a.conn = p.conn;
    if (hdr_out)
        *hdr_out = NULL;
    if (a.rc == 1) {
        if (!p.json)
            check_fast(c, &p);
        FUZZ_ASSERT(!p.json || json_is_object(p.json));
        FUZZ_ASSERT(p.op >= 1 && p.op <= OP_MAX_CODE);
        FUZZ_ASSERT(flen > PKT_FRAME_PREFIX && flen <= n);
        FUZZ_ASSERT(flen <= PKT_FRAME_PREFIX + maxh + PKT_MAX_DATA);
        if (p.op == OP_DATA) {
            FUZZ_ASSERT(p.len >= 1 && p.len <= PKT_MAX_DATA);
            FUZZ_ASSERT(p.payload == c + flen - p.len);
        } else if (p.op == OP_UDP_DATA) {
            FUZZ_ASSERT(p.len <= PKT_MAX_DGRAM);
            FUZZ_ASSERT(p.payload == c + flen - p.len);
        } else {
            FUZZ_ASSERT(p.payload == NULL);
        }
        if (p.op == OP_BUILD_CONNECTION && json_object_get(p.json, "client")) {
            /* Version 6: what packet.c let through makes a PROXY header of
             * either version, within its bound (as proxy_private does). */
            struct sockaddr_storage cl, sv;
            unsigned char hdr[PROXY_PROTO_MAX];
            FUZZ_ASSERT(net_parse_addrport(json_string_value(json_object_get(p.json, "client")),
                                           &cl) == 0);
            FUZZ_ASSERT(net_parse_addrport(json_string_value(json_object_get(p.json, "server")),
                                           &sv) == 0);
            for (int v = 1; v <= 2; v++) {
                int hn = proxy_proto_header(v, &cl, &sv, hdr, sizeof(hdr));
                FUZZ_ASSERT(hn > 0 && hn <= PROXY_PROTO_MAX);
                FUZZ_ASSERT(v == 2 || hn <= PROXY_PROTO_V1_MAX);
            }
        }
        if ((p.op >= OP_BUILD_CONNECTION && p.op <= OP_CLOSE) ||
            (p.op >= OP_UDP_DATA && p.op <= OP_FTP_TLS))
            FUZZ_ASSERT(p.conn >= 1 && p.conn <= PKT_CONN_ID_MAX);
        else
            FUZZ_ASSERT(p.conn == 0);
        if (hdr_out && p.json)
            *hdr_out = json_incref(p.json);
    } else if (a.rc == 0) {
        FUZZ_ASSERT(p.json == NULL && p.payload == NULL);
        FUZZ_ASSERT(flen == 0 || flen > n);
        FUZZ_ASSERT(n < PKT_FRAME_PREFIX ? flen == 0 : flen != 0);
    } else {
        FUZZ_ASSERT(a.rc == -1);
        FUZZ_ASSERT(p.json == NULL && p.payload == NULL);
        FUZZ_ASSERT(err[0] != '\0' && strlen(err) < sizeof(err));
    }
    pkt_clear(&p);
    return a;
}

static int has_payload(int op)
{
    return op == OP_DATA || op == OP_UDP_DATA;
}

/* An accepted header re-encodes (when it fits) to a frame that parses equal. */
static void check_reencode(json_t *hdr, const struct answer *a)
{
    size_t cap = PKT_FRAME_PREFIX + PKT_MAX_HEADER + a->len;
    uint8_t *buf = malloc(cap);
    int n;
    json_t *back = NULL;
    struct answer b;

    if (!buf)
        abort();
    n = hdr ? pkt_encode(hdr, buf, cap) : pkt_encode_data(buf, cap, a->op, a->conn, a->len);
    if (n > 0) {
        FUZZ_ASSERT((size_t)n <= PKT_FRAME_PREFIX + PKT_MAX_HEADER);
        memset(buf + n, 0x5a, has_payload(a->op) ? a->len : 0);
        b = parse(buf, (size_t)n + (has_payload(a->op) ? a->len : 0), PKT_MAX_HEADER, &back);
        FUZZ_ASSERT(b.rc == 1 && b.op == a->op && b.conn == a->conn && b.len == a->len);
        /* Read back without Jansson: the same three members (checked above). */
        if (back)
            FUZZ_ASSERT(hdr && json_equal(hdr, back));
        else
            FUZZ_ASSERT(!hdr || json_object_size(hdr) == 3);
        json_decref(back);
    }
    free(buf);
}

static uint32_t prng(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

struct input {
    const uint8_t *data;
    size_t size;
};

static void *run_input(void *arg);

/* Each input runs on a thread with the stack of the public side's tunnel
 * reader (THREAD_STACK_SIZE_TLS; the same as in a sanitizer build of the
 * program), so that a parser that recursed too deep would overflow here too. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct input in = {data, size};

    if (size > FUZZ_GUARD_CAP - PKT_MAX_FRAME)
        return 0;
    fuzz_run_on_stack(run_input, &in, THREAD_STACK_SIZE_TLS);
    return 0;
}

static void *run_input(void *arg)
{
    const uint8_t *data = ((struct input *)arg)->data;
    size_t size = ((struct input *)arg)->size;
    struct answer post, pre, walk[MAX_WALK];
    size_t nwalk = 0, off = 0;
    json_t *hdr = NULL;

    /* 1. One frame, both limits, and prefixes. */
    post = parse(data, size, PKT_MAX_HEADER, &hdr);
    pre = parse(data, size, PKT_MAX_HEADER_PREAUTH, NULL);
    if (pre.rc == 1)
        FUZZ_ASSERT(post.rc == 1 && post.flen == pre.flen && post.op == pre.op);
    if (post.rc == -1)
        FUZZ_ASSERT(pre.rc == -1);
    if (post.rc == 1) {
        struct answer whole = parse(data, post.flen, PKT_MAX_HEADER, NULL);
        struct answer shorter = parse(data, post.flen - 1, PKT_MAX_HEADER, NULL);
        FUZZ_ASSERT(whole.rc == 1 && whole.flen == post.flen && whole.op == post.op);
        FUZZ_ASSERT(shorter.rc == 0);
        check_reencode(hdr, &post);
    }
    json_decref(hdr);

    /* 2. Walk the frames like the tunnel reader. */
    while (nwalk < MAX_WALK) {
        struct answer a = parse(data + off, size - off, nwalk ? PKT_MAX_HEADER : PKT_MAX_HEADER_PREAUTH,
                                NULL);
        walk[nwalk++] = a;
        if (a.rc != 1)
            break;
        off += a.flen;
    }

    /* 3. The same stream in pieces, parsed only when enough bytes are in. */
    {
        uint32_t seed = (uint32_t)size * 2654435761u + 1;
        size_t have = 0, start = 0, need = 0, got = 0;

        for (size_t i = 0; i < size && i < 16; i++)
            seed = seed * 31 + data[i];
        if (!seed)
            seed = 1;
        while (got < nwalk) {
            if (have - start >= need) {
                struct answer a = parse(data + start, have - start,
                                        got ? PKT_MAX_HEADER : PKT_MAX_HEADER_PREAUTH, NULL);
                if (a.rc != 0) {
                    FUZZ_ASSERT(a.rc == walk[got].rc && a.op == walk[got].op);
                    if (a.rc == 1) {
                        FUZZ_ASSERT(a.flen == walk[got].flen);
                        start += a.flen;
                        need = 0;
                        got++;
                        continue;
                    }
                    break;
                }
                need = a.flen ? a.flen : have - start + 1;
            }
            if (have == size) {
                /* End of stream: the walk must have ended incomplete here too. */
                FUZZ_ASSERT(walk[got].rc == 0);
                break;
            }
            have += 1 + prng(&seed) % (prng(&seed) % 4 == 0 ? 4096 : 16);
            if (have > size)
                have = size;
        }
    }
    return NULL;
}

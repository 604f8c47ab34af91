/* fuzz_tls_records.c - libFuzzer harness for the TLS 1.3 record reader
 * (tls_records_feed() / tls_records_recv(), i.e. drain(), open_record() and
 * control_record() of tls_records.c).
 *
 * Random bytes almost never get past the AEAD tag, so the input is a script
 * for a sender and a receiver keyed from one secret (tls_records_new_from_secret):
 * the sender seals real records, the script feeds them whole, in pieces, with
 * a bit flipped or cut short, mixes in raw bytes, records of any inner content
 * type (alerts, handshake messages, padding: tls_records_seal_type()), turns on
 * KeyUpdate every few records in either direction, and sends data back the
 * other way so KeyUpdate(update_requested) gets answered.
 *
 * Input:  byte 0   bits 0-1 cipher suite (0x1301 + v % 3); bit 2 read through a
 *                  socketpair with tls_records_recv() instead of tls_records_feed();
 *                  bit 3 lazy: one read per piece, the rest stays pending (and
 *                  with the socketpair: until an op needs it, or the end)
 *         bytes 1-2  size of the caller's buffer, 1 + v (1 .. 64 KiB)
 *         then ops, one byte each (v % 9), arguments big-endian:
 *   0 SEAL    len16 split8        seal len bytes (3 iovecs cut by split), feed
 *   1 RAW     len16 bytes         feed up to len bytes of the input as they are
 *   2 FLIP    len16 pos16 bit8    seal, flip one bit, feed
 *   3 TRUNC   len16 cut16         seal, feed only cut % (n + 1) bytes
 *   4 REKEY   b8                  KeyUpdate every 1 + (b >> 1) % 8 records
 *                                 on the sender (b & 1 == 0) or the receiver
 *   5 TYPE    type8 count16 len16 bytes zeros16
 *                                 1 + count16 % 4096 records (at most 96 KiB in
 *                                 all), fed together, each of: input bytes,
 *                                 zeros16 % 16624 zero bytes (at most 16623 in
 *                                 all), then the inner type byte
 *   6 BUFLEN  len16               caller's buffer becomes 1 + len bytes
 *   7 REVERSE len16               receiver seals len bytes, sender reads them
 *   8 PIECE   len16               feed in pieces of len bytes (0: whole;
 *                                 socketpair: at least 7)
 *
 * Promises checked (abort on any break):
 *   - every byte of plaintext that comes out is the next byte that was sealed
 *     (in order, nothing twice), whatever was fed: corruption may stop the
 *     stream, never alter it; never more than the caller's buffer;
 *   - -1 only with EAGAIN, EPROTO or ECONNRESET; after 0 (close_notify) or
 *     EPROTO/ECONNRESET every later call answers the same, with no data;
 *   - while no FLIP/TRUNC/RAW corrupted the stream, a model of RFC 8446 5.2,
 *     5.4, 6 and 4.6.3 predicts everything: after each op all sealed data has
 *     come out, and the reader is waiting (EAGAIN), ended (0) or failed with
 *     exactly the predicted errno (lazy socketpair runs: at the end);
 *   - the reverse direction always delivers exactly what was sealed;
 *   - each writer's output has exactly the KeyUpdates a model predicts: one
 *     before a record once `every` records used the key (update_requested),
 *     one first when the peer's reader saw update_requested (the answer);
 *   - tls_records_seal() fits in tls_records_seal_bound() bytes (buffers are
 *     malloc'd to the exact size, so ASan sees one byte too many);
 *   - the reader's stack use is bounded: each input runs on a thread with the
 *     stack of the tunnel's threads in sanitizer builds (512 KiB). */

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "guard.h"
#include "tls_records.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_OPS 64
#define MAX_TOTAL (512u * 1024)          /* plaintext sealed per input */
#define TYPE_MAX (TLSREC_MAX_CIPHER - 1 - TLSREC_TAG)
#define TYPE_OP_MAX (96u * 1024)         /* record bytes of one TYPE op */
#define STACK_SIZE (512u * 1024)         /* netio.h THREAD_STACK_SIZE, sanitizers */

enum { LIVE, ENDED, FAILED };

struct script {
    const uint8_t *p;
    size_t n;
};

static unsigned get8(struct script *s)
{
    if (!s->n)
        return 0;
    s->n--;
    return *s->p++;
}

static unsigned get16(struct script *s)
{
    unsigned hi = get8(s);
    return hi << 8 | get8(s);
}

/* What a writer will do: records under its key, its rekey interval, and
 * whether it owes the peer a KeyUpdate answer (RFC 8446 4.6.3). known == 0
 * once that cannot be told (its reader was fed a corrupted stream). */
struct wmodel {
    uint64_t seq;
    unsigned every;
    int answer_due, known;
};

struct run {
    struct tls_records *tx, *rx; /* sender, receiver */
    struct wmodel wtx, wrx;      /* the sender's writer, the receiver's writer */
    int sv[2];                   /* recv mode: sv[0] written, sv[1] read; else -1 */
    int lazy;
    size_t piece;
    unsigned char *buf;
    size_t buflen;
    /* Sealed plaintext not yet read: want[head..tail). */
    unsigned char *want;
    size_t head, tail;
    /* The model of the receiver; compared with it only while !tainted. */
    int m_state, m_errno, desync, tainted;
    /* What the receiver said so far. */
    int o_state, o_errno;
    uint32_t prng;
    size_t total;
};

#define WANT_CAP (MAX_TOTAL + TYPE_OP_MAX)

static unsigned char dummy;
static unsigned char *want_buf, *plain_buf, *scratch_buf;

static uint32_t prng(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* One read from the receiver, checked. data/n: bytes to feed (feed mode). */
static ssize_t call(struct run *r, const unsigned char *data, size_t n)
{
    ssize_t rc;
    int e;

    errno = 0;
    if (r->sv[1] < 0)
        rc = tls_records_feed(r->rx, n ? data : &dummy, n, r->buf, r->buflen);
    else
        rc = tls_records_recv(r->rx, r->sv[1], r->buf, r->buflen);
    e = errno;
    if (rc > 0) {
        FUZZ_ASSERT((size_t)rc <= r->buflen);
        FUZZ_ASSERT(r->o_state == LIVE);
        FUZZ_ASSERT((size_t)rc <= r->tail - r->head);
        FUZZ_ASSERT(memcmp(r->buf, r->want + r->head, (size_t)rc) == 0);
        r->head += (size_t)rc;
    } else if (rc == 0) {
        FUZZ_ASSERT(r->o_state == LIVE || r->o_state == ENDED);
        r->o_state = ENDED;
        if (!r->tainted)
            FUZZ_ASSERT(r->m_state == ENDED && r->head == r->tail);
    } else {
        FUZZ_ASSERT(rc == -1);
        FUZZ_ASSERT(e == EAGAIN || e == EPROTO || e == ECONNRESET);
        if (e == EAGAIN) {
            FUZZ_ASSERT(r->o_state == LIVE);
        } else {
            FUZZ_ASSERT(r->o_state == LIVE || (r->o_state == FAILED && r->o_errno == e));
            r->o_state = FAILED;
            r->o_errno = e;
            if (!r->tainted)
                FUZZ_ASSERT(r->m_state == FAILED && r->m_errno == e && r->head == r->tail);
        }
    }
    return rc;
}

/* Read until the receiver has nothing more to give; then compare with the model. */
static void settle(struct run *r)
{
    while (call(r, NULL, 0) > 0)
        ;
    if (!r->tainted) {
        FUZZ_ASSERT(r->head == r->tail);
        FUZZ_ASSERT(r->o_state == r->m_state);
    }
}

/* Bytes to the receiver as the script says: in pieces, each followed by one
 * read (lazy) or by reads until it has nothing more. */
static void deliver(struct run *r, const unsigned char *b, size_t n)
{
    size_t off = 0, piece = r->piece;

    if (r->sv[0] >= 0 && piece && piece < 7)
        piece = 7; /* a few syscalls per byte would make runs too slow */
    if (r->sv[0] >= 0 && r->o_state != LIVE) {
        settle(r); /* it reads no more: the socket would only fill up */
        return;
    }
    while (off < n) {
        size_t k = piece && piece < n - off ? piece : n - off;
        ssize_t rc;

        if (r->sv[0] < 0) {
            rc = call(r, b + off, k);
        } else {
            size_t done = 0;
            while (done < k) {
                ssize_t w = write(r->sv[0], b + off + done, k - done);
                if (w > 0) {
                    done += (size_t)w;
                    continue;
                }
                FUZZ_ASSERT(w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
                while (call(r, NULL, 0) > 0) /* make room */
                    ;
                if (r->o_state != LIVE) {
                    settle(r);
                    return;
                }
            }
            rc = call(r, NULL, 0);
        }
        off += k;
        if (!r->lazy)
            while (rc > 0)
                rc = call(r, NULL, 0);
    }
    /* Lazy reading from the socket leaves the rest for later ops: its buffer
     * then fills up behind partial records (tls_records_recv's compaction).
     * tls_records_feed() has no room for that: it appends whatever it is given. */
    if (!(r->lazy && r->sv[1] >= 0))
        settle(r);
}

static void model_fail(struct run *r, int e)
{
    if (r->m_state == LIVE) {
        r->m_state = FAILED;
        r->m_errno = e;
    }
}

/* The receiver reads KeyUpdate(update_requested) (maybe: if requests is
 * UNSURE): its writer owes an answer. */
#define UNSURE ((unsigned)-1)

static void model_asked(struct run *r, unsigned requests)
{
    if (r->tainted || requests == UNSURE)
        r->wrx.known = 0; /* read or not: cannot tell */
    else
        r->wrx.answer_due = 1;
}

static void expect(struct run *r, const unsigned char *p, size_t n)
{
    memcpy(r->want + r->tail, p, n);
    r->tail += n;
}

/* Model: a record of the sender's with this inner plaintext reaches the receiver. */
static void model_record(struct run *r, const unsigned char *inner, size_t n)
{
    unsigned char type;
    const unsigned char *p = inner;
    size_t len;

    if (r->m_state != LIVE)
        return; /* ended or failed: nothing is read any more */
    if (r->desync) {
        model_fail(r, EPROTO); /* the receiver moved to a key the sender never had */
        return;
    }
    while (n > 0 && inner[n - 1] == 0)
        n--;
    if (n == 0 || n - 1 > TLSREC_MAX_PLAIN) {
        model_fail(r, EPROTO);
        return;
    }
    type = inner[n - 1];
    len = n - 1;
    switch (type) {
    case 23:
        expect(r, inner, len);
        return;
    case 21:
        if (len != 2)
            model_fail(r, EPROTO);
        else if (inner[1] == 0)
            r->m_state = ENDED;
        else
            model_fail(r, ECONNRESET);
        return;
    case 22:
        while (len > 0) {
            size_t mlen;
            if (len < 4) {
                model_fail(r, EPROTO);
                return;
            }
            mlen = (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
            if (mlen > len - 4) {
                model_fail(r, EPROTO);
                return;
            }
            if (p[0] == 24) {
                if (mlen != 1 || p[4] > 1 || len != 5) {
                    model_fail(r, EPROTO);
                    return;
                }
                r->desync = 1;
                if (p[4] == 1)
                    model_asked(r, 1);
            } else if (p[0] != 4) {
                model_fail(r, EPROTO);
                return;
            }
            p += 4 + mlen;
            len -= 4 + mlen;
        }
        return;
    default:
        model_fail(r, EPROTO);
        return;
    }
}

/* Model: tls_records_seal() of plain[0..len) (application data, and the
 * KeyUpdates it adds, requested ones among them, which the receiver follows). */
static void model_seal(struct run *r, const unsigned char *plain, size_t len, unsigned requests)
{
    if (r->m_state != LIVE)
        return;
    if (r->desync) {
        model_fail(r, EPROTO);
        return;
    }
    expect(r, plain, len);
    if (requests)
        model_asked(r, requests);
}

/* Model of tls_records_seal() on writer m: its exact output size; the
 * number of KeyUpdate(update_requested) in it to *requests. */
static size_t model_write(struct wmodel *m, size_t len, unsigned *requests)
{
    size_t records = len ? (len + TLSREC_MAX_PLAIN - 1) / TLSREC_MAX_PLAIN : 1;
    size_t keyupdates = 0;

    *requests = 0;
    if (m->answer_due) {
        keyupdates++;
        m->answer_due = 0;
        m->seq = 0;
    }
    for (size_t i = 0; i < records; i++) {
        if (m->seq >= m->every) {
            keyupdates++;
            (*requests)++;
            m->seq = 0;
        }
        m->seq++;
    }
    return len + records * (TLSREC_HEADER + 1 + TLSREC_TAG) +
           keyupdates * (TLSREC_HEADER + 5 + 1 + TLSREC_TAG);
}

/* Seal len bytes of PRNG plaintext on w, in up to three iovecs; returns the
 * record bytes (malloc'd, exactly tls_records_seal_bound(len) big) and *n;
 * m, the writer's model, predicts the size exactly while it is known. The
 * number of KeyUpdate(update_requested) in it goes to *requests: from the
 * model, or when that is not known from the size (0 KeyUpdates: none; 2 or
 * more: at least one, as only the first can be an answer; 1: UNSURE). */
static unsigned char *seal(struct run *r, struct tls_records *w, struct wmodel *m,
                           unsigned char *plain, size_t len, unsigned split, size_t *n,
                           unsigned *requests)
{
    int known = m->known;
    size_t predicted = model_write(m, len, requests);
    size_t a = (split & 15) * len / 15, b = a + (split >> 4) * (len - a) / 15;
    struct iovec iov[3] = {{plain, a}, {plain + a, b - a}, {plain + b, len - b}};
    size_t bound = tls_records_seal_bound(len);
    unsigned char *out = malloc(bound);
    ssize_t got;

    FUZZ_ASSERT(out);
    for (size_t i = 0; i < len; i++)
        plain[i] = (unsigned char)prng(&r->prng);
    got = tls_records_seal(w, iov, 3, out);
    FUZZ_ASSERT(got > 0 && (size_t)got <= bound);
    FUZZ_ASSERT((size_t)got >= len + TLSREC_HEADER + 1 + TLSREC_TAG);
    if (known) {
        FUZZ_ASSERT((size_t)got == predicted); /* KeyUpdates where RFC 8446 4.6.3 wants them */
    } else {
        size_t records = len ? (len + TLSREC_MAX_PLAIN - 1) / TLSREC_MAX_PLAIN : 1;
        size_t extra = (size_t)got - len - records * (TLSREC_HEADER + 1 + TLSREC_TAG);
        size_t keyupdates = extra / (TLSREC_HEADER + 5 + 1 + TLSREC_TAG);
        FUZZ_ASSERT(extra % (TLSREC_HEADER + 5 + 1 + TLSREC_TAG) == 0);
        *requests = keyupdates == 0 ? 0 : keyupdates == 1 ? UNSURE : (unsigned)keyupdates - 1;
    }
    *n = (size_t)got;
    return out;
}

/* The receiver writes, the sender reads: exactly what was sealed comes back. */
static void reverse(struct run *r, unsigned char *plain, size_t len)
{
    size_t n, got = 0;
    unsigned requests;
    unsigned char *rec;
    ssize_t rc;

    settle(r); /* the receiver has read all, KeyUpdate requests included */
    rec = seal(r, r->rx, &r->wrx, plain, len, 0x5a, &n, &requests);
    rc = tls_records_feed(r->tx, rec, n, r->buf, r->buflen);

    for (;;) {
        if (rc <= 0)
            break;
        FUZZ_ASSERT((size_t)rc <= r->buflen && got + (size_t)rc <= len);
        FUZZ_ASSERT(memcmp(r->buf, plain + got, (size_t)rc) == 0);
        got += (size_t)rc;
        rc = tls_records_feed(r->tx, &dummy, 0, r->buf, r->buflen);
    }
    FUZZ_ASSERT(rc == -1 && errno == EAGAIN && got == len);
    if (requests == UNSURE)
        r->wtx.known = 0;
    else if (requests)
        r->wtx.answer_due = 1; /* the sender read them all */
    free(rec);
}

static void set_buflen(struct run *r, size_t len)
{
    free(r->buf);
    r->buflen = len;
    r->buf = malloc(len);
    FUZZ_ASSERT(r->buf);
}

static void one_input(const uint8_t *data, size_t size)
{
    static const unsigned char secret[32] = "fuzz_tls_records secret 0123456";
    struct script s = {data, size};
    struct run r;
    unsigned mode;
    int suite;
    unsigned char *plain, *scratch;

    if (size < 3)
        return;
    memset(&r, 0, sizeof(r));
    mode = get8(&s);
    suite = 0x1301 + (int)(mode & 3) % 3;
    r.lazy = (mode & 8) != 0;
    r.sv[0] = r.sv[1] = -1;
    r.wtx.every = r.wrx.every = TLSREC_REKEY_RECORDS;
    r.wtx.known = r.wrx.known = 1;
    r.prng = 0x9e3779b9u ^ (uint32_t)size;
    r.tx = tls_records_new_from_secret(secret, suite);
    r.rx = tls_records_new_from_secret(secret, suite);
    FUZZ_ASSERT(r.tx && r.rx);
    if (mode & 4) {
        FUZZ_ASSERT(socketpair(AF_UNIX, SOCK_STREAM, 0, r.sv) == 0);
        FUZZ_ASSERT(fcntl(r.sv[0], F_SETFL, O_NONBLOCK) == 0);
        FUZZ_ASSERT(fcntl(r.sv[1], F_SETFL, O_NONBLOCK) == 0);
    }
    set_buflen(&r, 1 + get16(&s));
    /* Big and the same every run: allocated once (ASan maps and poisons
     * large blocks on every malloc). */
    if (!want_buf) {
        want_buf = malloc(WANT_CAP);
        plain_buf = malloc(65536);
        scratch_buf = malloc(TYPE_MAX + 1);
        FUZZ_ASSERT(want_buf && plain_buf && scratch_buf);
    }
    r.want = want_buf;
    plain = plain_buf;
    scratch = scratch_buf;

    for (int ops = 0; ops < MAX_OPS && s.n > 0 && r.total <= MAX_TOTAL; ops++) {
        unsigned op = get8(&s) % 9;
        size_t len, n;
        unsigned requests;
        unsigned char *rec;

        switch (op) {
        case 0: /* SEAL */
            len = get16(&s);
            rec = seal(&r, r.tx, &r.wtx, plain, len, get8(&s), &n, &requests);
            r.total += len;
            model_seal(&r, plain, len, requests);
            deliver(&r, rec, n);
            free(rec);
            break;
        case 1: { /* RAW */
            const uint8_t *raw;
            len = get16(&s);
            if (len > s.n)
                len = s.n;
            raw = guarded_copy(s.p, len);
            s.p += len;
            s.n -= len;
            if (len)
                r.tainted = 1;
            deliver(&r, raw, len);
            break;
        }
        case 2: { /* FLIP */
            unsigned pos, bit;
            len = get16(&s);
            pos = get16(&s);
            bit = get8(&s);
            rec = seal(&r, r.tx, &r.wtx, plain, len, 0, &n, &requests);
            r.total += len;
            r.tainted = 1;
            model_seal(&r, plain, len, requests);
            rec[pos % n] ^= (unsigned char)(1u << (bit & 7));
            deliver(&r, rec, n);
            free(rec);
            break;
        }
        case 3: { /* TRUNC */
            unsigned cut;
            len = get16(&s);
            cut = get16(&s);
            rec = seal(&r, r.tx, &r.wtx, plain, len, 0, &n, &requests);
            r.total += len;
            if (cut % (n + 1) < n)
                r.tainted = 1;
            model_seal(&r, plain, len, requests);
            deliver(&r, rec, cut % (n + 1));
            free(rec);
            break;
        }
        case 4: { /* REKEY */
            unsigned b = get8(&s);
            tls_records_set_rekey_interval(b & 1 ? r.rx : r.tx, 1 + (b >> 1) % 8);
            (b & 1 ? &r.wrx : &r.wtx)->every = 1 + (b >> 1) % 8;
            break;
        }
        case 5: { /* TYPE */
            unsigned char type = (unsigned char)get8(&s);
            size_t zeros, count = 1 + get16(&s) % 4096, rlen;
            len = get16(&s);
            if (len > s.n)
                len = s.n;
            if (len > TYPE_MAX)
                len = TYPE_MAX;
            memcpy(scratch, s.p, len);
            s.p += len;
            s.n -= len;
            zeros = get16(&s) % (TYPE_MAX + 1);
            if (zeros > TYPE_MAX - len)
                zeros = TYPE_MAX - len;
            memset(scratch + len, 0, zeros);
            len += zeros;
            rlen = len + TLSREC_HEADER + 1 + TLSREC_TAG;
            if (count * rlen > TYPE_OP_MAX)
                count = TYPE_OP_MAX / rlen;
            rec = malloc(count * rlen);
            FUZZ_ASSERT(rec);
            scratch[len] = type;
            for (size_t i = 0; i < count; i++) {
                ssize_t got = tls_records_seal_type(r.tx, type, scratch, len, rec + i * rlen);
                FUZZ_ASSERT(got == (ssize_t)rlen);
                r.wtx.seq++;
                model_record(&r, scratch, len + 1);
            }
            r.total += count * len;
            deliver(&r, rec, count * rlen);
            free(rec);
            break;
        }
        case 6: /* BUFLEN */
            set_buflen(&r, 1 + get16(&s));
            break;
        case 7: /* REVERSE */
            len = get16(&s);
            r.total += len;
            reverse(&r, plain, len);
            break;
        default: /* PIECE */
            r.piece = get16(&s);
            break;
        }
    }
    settle(&r);

    if (r.sv[0] >= 0) {
        close(r.sv[0]);
        close(r.sv[1]);
    }
    tls_records_free(r.tx);
    tls_records_free(r.rx);
    free(r.buf);
}

struct input {
    const uint8_t *data;
    size_t size;
};

static void *input_main(void *arg)
{
    struct input *in = arg;

    one_input(in->data, in->size);
    return NULL;
}

/* Each input on a thread with a tunnel thread's stack: a reader that
 * recursed per record would overflow it here as it would in the tunnel. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct input in = {data, size};
    pthread_attr_t attr;
    pthread_t th;

    FUZZ_ASSERT(pthread_attr_init(&attr) == 0);
    FUZZ_ASSERT(pthread_attr_setstacksize(&attr, STACK_SIZE) == 0);
    FUZZ_ASSERT(pthread_create(&th, &attr, input_main, &in) == 0);
    FUZZ_ASSERT(pthread_join(th, NULL) == 0);
    pthread_attr_destroy(&attr);
    return 0;
}

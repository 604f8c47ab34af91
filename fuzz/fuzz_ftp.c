/* fuzz_ftp.c - libFuzzer harness for the FTP control-connection rewriter
 * (ftp.c), which reads bytes from the FTP server and from the internet
 * client of every FTP app.
 *
 * The input's first byte picks the direction (even: replies, odd: commands)
 * and a split length; the rest is the stream. Promises checked (abort on any
 * break):
 *   - ftp_feed consumes at most what it is given, never writes more than the
 *     caller's room (n + FTP_LINE_MAX) and never leaves more than
 *     FTP_LINE_MAX bytes held;
 *   - with every message line passed on unchanged, the output is exactly the
 *     input: the rewriter itself changes nothing but what it is asked to;
 *   - the result does not depend on how the stream is split into reads
 *     (in one piece, in pieces of the split length, byte by byte);
 *   - a message's span lies within its line, its port is 1..65535, and its
 *     rewrite with another address re-parses as the same kind with the new
 *     port (and the same address where the syntax carries one);
 *   - it all runs in a thread with a release build's 64 KiB stack
 *     (netio.h THREAD_STACK_SIZE, the pump thread's). */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ftp.h"
#include "guard.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define STACK_SIZE (64u * 1024)
#define MAX_IN 65536

struct job {
    const uint8_t *buf;
    size_t len;
    int reply;
    size_t step;
};

struct result {
    unsigned char *out;
    size_t outlen;
    unsigned kinds_hash;
    unsigned nmsg;
};

static void check_msg(const struct ftp_dir *d, const struct ftp_msg *m)
{
    static const unsigned char pub[16] = {203, 0, 113, 10};
    unsigned char out[FTP_LINE_MAX + 128];
    struct ftp_msg again;
    int fam, n;

    FUZZ_ASSERT(d->len > 0 && d->len <= FTP_LINE_MAX && d->line[d->len - 1] == '\n');
    if (m->kind == FTP_BAD || m->kind == FTP_AUTH || m->kind == FTP_REPLY)
        return;
    FUZZ_ASSERT(m->start <= m->end && m->end <= d->len);
    FUZZ_ASSERT(m->port >= 1 && m->port <= 65535);
    FUZZ_ASSERT(d->reply == (m->kind == FTP_227 || m->kind == FTP_229));
    fam = m->kind == FTP_EPRT ? 6 : m->kind == FTP_229 ? 0 : 4;
    n = ftp_rewrite(d->line, d->len, m, fam, pub, 4242, out, sizeof(out));
    FUZZ_ASSERT(n > 0 && (size_t)n <= d->len + 64);
    /* Inside a multi-line reply only the state machine knows the code;
     * a first or single line re-parses on its own. */
    if (d->reply && (d->len < 4 || memcmp(d->line, out, 3) != 0 || d->multi))
        return;
    FUZZ_ASSERT(ftp_parse_line(out, (size_t)n, d->reply, &again) == m->kind);
    FUZZ_ASSERT(again.port == 4242);
    if (m->kind == FTP_227 || m->kind == FTP_PORT)
        FUZZ_ASSERT(again.family == 4 && memcmp(again.addr, pub, 4) == 0);
    if (m->kind == FTP_EPRT)
        FUZZ_ASSERT(again.family == 6 && memcmp(again.addr, pub, 16) == 0);
}

/* Feed the stream in pieces of step (0: whole), keeping every line. */
static void run(const struct job *j, size_t step, struct result *r)
{
    struct ftp_dir *d = calloc(1, sizeof(*d));
    size_t off = 0;

    FUZZ_ASSERT(d);
    d->reply = j->reply;
    r->outlen = 0;
    r->kinds_hash = 0;
    r->nmsg = 0;
    while (off < j->len) {
        size_t take = step && j->len - off > step ? step : j->len - off;
        const unsigned char *p = j->buf + off;
        size_t left = take;
        while (left > 0) {
            struct ftp_msg m;
            size_t before = r->outlen, used = ftp_feed(d, p, left, r->out, &r->outlen, &m);
            FUZZ_ASSERT(used <= left);
            FUZZ_ASSERT(r->outlen - before <= left + FTP_LINE_MAX);
            FUZZ_ASSERT(d->len <= FTP_LINE_MAX);
            FUZZ_ASSERT(used > 0 || m.kind != FTP_OTHER);
            p += used;
            left -= used;
            if (m.kind == FTP_OTHER) {
                FUZZ_ASSERT(left == 0);
                continue;
            }
            r->kinds_hash = r->kinds_hash * 31u + (unsigned)m.kind + 1u;
            r->nmsg++;
            if (m.kind == FTP_LONG)
                continue;
            check_msg(d, &m);
            memcpy(r->out + r->outlen, d->line, d->len);
            r->outlen += d->len;
            ftp_line_done(d);
        }
        off += take;
    }
    ftp_set_passthru(d, r->out, &r->outlen);
    free(d);
}

static void *job_main(void *arg)
{
    const struct job *j = arg;
    struct result a, b;
    size_t cap = j->len + 2 * FTP_LINE_MAX;

    a.out = malloc(cap);
    b.out = malloc(cap);
    FUZZ_ASSERT(a.out && b.out);
    run(j, 0, &a);
    FUZZ_ASSERT(a.outlen == j->len && memcmp(a.out, j->buf, j->len) == 0);
    run(j, j->step, &b);
    FUZZ_ASSERT(b.outlen == a.outlen && memcmp(b.out, a.out, a.outlen) == 0);
    FUZZ_ASSERT(b.kinds_hash == a.kinds_hash && b.nmsg == a.nmsg);
    if (j->len <= 4096) {
        run(j, 1, &b);
        FUZZ_ASSERT(b.kinds_hash == a.kinds_hash && b.nmsg == a.nmsg);
    }
    free(a.out);
    free(b.out);
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct job j;

    if (size < 1 || size > MAX_IN)
        return 0;
    j.reply = (data[0] & 1) == 0;
    j.step = (size_t)(data[0] >> 1) + 1;
    j.buf = guarded_copy(data + 1, size - 1);
    j.len = size - 1;
    fuzz_run_on_stack(job_main, &j, STACK_SIZE);
    return 0;
}

/* Unit tests of the FTP rewriter (ftp.c): lines split across reads at every
 * offset, multi-line replies, pipelined commands, case, over-long and
 * malformed lines, and the rewrites themselves. */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ftp.h"
#include "unit.h"

/* What a run over a stream found: the kinds in order and the output, where
 * each message line is replaced by "<KIND port>\n" (or passed on unchanged
 * when keep is set), the way the pump would. */
struct run {
    char kinds[256];
    unsigned char out[64 * 1024];
    size_t outlen;
    int ports[32];
    int nports;
};

/* Feed in[0..n) in pieces of `step` bytes (0: all at once). */
static void feed(int reply, const char *in, size_t n, size_t step, int keep, struct run *r)
{
    struct ftp_dir *d = calloc(1, sizeof(*d));
    size_t off = 0;

    memset(r, 0, sizeof(*r));
    d->reply = reply;
    while (off < n) {
        size_t take = step && n - off > step ? step : n - off;
        const unsigned char *p = (const unsigned char *)in + off;
        size_t left = take;
        while (left > 0) {
            struct ftp_msg m;
            size_t used = ftp_feed(d, p, left, r->out, &r->outlen, &m);
            p += used;
            left -= used;
            if (m.kind == FTP_OTHER)
                continue;
            snprintf(r->kinds + strlen(r->kinds), sizeof(r->kinds) - strlen(r->kinds), "%s%s",
                     r->kinds[0] ? "," : "", ftp_kind_name(m.kind));
            if (m.kind == FTP_LONG)
                continue;
            if (r->nports < 32)
                r->ports[r->nports++] = m.port;
            if (keep || m.kind == FTP_REPLY || m.kind == FTP_AUTH) {
                memcpy(r->out + r->outlen, d->line, d->len);
                r->outlen += d->len;
            } else {
                r->outlen += (size_t)sprintf((char *)r->out + r->outlen, "<%s %d>\n",
                                             ftp_kind_name(m.kind), m.port);
            }
            ftp_line_done(d);
        }
        off += take;
    }
    ftp_set_passthru(d, r->out, &r->outlen); /* what a partial line held */
    free(d);
}

/* The same stream split at every offset (and byte by byte) gives the same
 * result as in one piece. */
static void same_when_split(int reply, const char *in, int keep, const char *kinds,
                            const char *out)
{
    struct run *whole = malloc(sizeof(*whole)), *part = malloc(sizeof(*part));
    size_t n = strlen(in);

    feed(reply, in, n, 0, keep, whole);
    CHECK(strcmp(whole->kinds, kinds) == 0, "kinds of %s: %s, want %s", unit_show(in, n),
          whole->kinds, kinds);
    if (out)
        CHECK(whole->outlen == strlen(out) && memcmp(whole->out, out, whole->outlen) == 0,
              "output %s", unit_show(whole->out, whole->outlen));
    for (size_t step = 1; step <= n && step < 300; step++) {
        feed(reply, in, n, step, keep, part);
        CHECK(strcmp(part->kinds, whole->kinds) == 0, "step %zu: kinds %s, want %s", step,
              part->kinds, whole->kinds);
        CHECK(part->outlen == whole->outlen && memcmp(part->out, whole->out, part->outlen) == 0,
              "step %zu: output differs", step);
    }
    free(whole);
    free(part);
}

void test_ftp_split(void)
{
    const char *s = "220 Welcome\r\n230 Login successful.\r\n"
                    "227 Entering Passive Mode (192,0,2,2,156,64).\r\n"
                    "229 Entering Extended Passive Mode (|||40001|)\r\n";
    struct run *r = malloc(sizeof(*r));

    same_when_split(1, s, 0, "reply,reply,227,229",
                    "220 Welcome\r\n230 Login successful.\r\n<227 40000>\n<229 40001>\n");
    feed(1, s, strlen(s), 7, 0, r);
    CHECK(r->nports == 4 && r->ports[2] == 40000 && r->ports[3] == 40001, "ports");
    /* Bare LF line ends, and a reply cut before its line end stays held. */
    same_when_split(1, "227 ok (10,0,0,1,0,21)\n227 (1,2,3,4,0,22)", 0, "227",
                    "<227 21>\n227 (1,2,3,4,0,22)");
    /* Nothing to see: bytes pass unchanged, however split. */
    same_when_split(1, "150 Here comes the directory listing.\r\n226 Directory send OK.\r\n", 1,
                    "reply,reply", NULL);
    free(r);
}

void test_ftp_multiline(void)
{
    /* The 227 inside another reply's text is not one. */
    same_when_split(1,
                    "211-Features:\r\n 227 (1,2,3,4,5,6)\r\n EPSV\r\n211 End\r\n"
                    "227 Entering Passive Mode (192,0,2,2,4,1)\r\n",
                    0, "reply,227",
                    "211-Features:\r\n 227 (1,2,3,4,5,6)\r\n EPSV\r\n211 End\r\n<227 1025>\n");
    /* A multi-line 227: the address on its first line, only once. */
    same_when_split(1, "227-Entering Passive Mode (192,0,2,2,4,2)\r\n227 (9,9,9,9,9,9)\r\n", 0,
                    "227,reply", "<227 1026>\n227 (9,9,9,9,9,9)\r\n");
    /* ... or on a continuation line. */
    same_when_split(1, "227-Passive\r\n =192,0,2,2,4,3\r\n227 OK\r\n", 0, "227,reply",
                    "227-Passive\r\n<227 1027>\n227 OK\r\n");
    /* A line starting with another code inside a multi-line reply does not
     * end it; the reply's own code with '-' does not either. */
    same_when_split(1, "230-Hi\r\n230-more\r\n229 (|||1|)\r\n230 done\r\n229 (|||2222|)\r\n", 0,
                    "reply,229", NULL);
}

void test_ftp_commands(void)
{
    struct run *r = malloc(sizeof(*r));
    /* Pipelined, case-insensitive, with and without CR. */
    same_when_split(0,
                    "USER anonymous\r\nPASS x\r\nport 203,0,113,7,156,65\r\n"
                    "EPRT |1|203.0.113.7|40002|\r\neprt |2|2001:db8::7|40003|\nPort 1,2,3,4,0,80\r\n"
                    "RETR file\r\nAUTH TLS\r\nauth ssl\r\nPORTS 1,2,3,4,5,6\r\nEPSV\r\n",
                    0, "PORT,EPRT,EPRT,PORT,AUTH,AUTH",
                    "USER anonymous\r\nPASS x\r\n<PORT 40001>\n<EPRT 40002>\n<EPRT 40003>\n"
                    "<PORT 80>\nRETR file\r\nAUTH TLS\r\nauth ssl\r\nPORTS 1,2,3,4,5,6\r\nEPSV\r\n");
    feed(0, "EPRT !2!2001:db8::7!40003!\r\n", 28, 0, 0, r);
    CHECK(strcmp(r->kinds, "EPRT") == 0 && r->ports[0] == 40003, "EPRT with '!' delimiter: %s",
          r->kinds);
    /* Blanks, control bytes and Telnet sequences (IAC NOP, IAC IP) before
     * the verb do not hide a PORT from the rewriter. */
    same_when_split(0, " PORT 127,0,0,2,1,1\r\n\xff\xf1PORT 127,0,0,2,1,2\r\n"
                       "\xff\xf4\xff\xf2" "eprt |1|127.0.0.2|259|\r\n\tPORT 1,2\r\n",
                    0, "PORT,PORT,EPRT,bad", NULL);
    CHECK(ftp_is_port_line((const unsigned char *)"\xff\xf1 port", 9), "IAC before port");
    CHECK(!ftp_is_port_line((const unsigned char *)"RETR", 4), "RETR is not PORT");
    CHECK(!ftp_is_port_line((const unsigned char *)"  PO", 4), "too short");
    /* A reply-looking line in the command direction is just a command. */
    same_when_split(0, "227 (1,2,3,4,5,6)\r\n", 0, "", "227 (1,2,3,4,5,6)\r\n");
    free(r);
}

void test_ftp_long_and_bad(void)
{
    size_t n = FTP_LINE_MAX * 3;
    char *big = malloc(n + 64);
    struct run *r = malloc(sizeof(*r));

    /* Malformed PORT/EPRT and 227/229 are reported as bad, never as good. */
    same_when_split(0,
                    "PORT 1,2,3,4,5\r\nPORT 1,2,3,256,1,1\r\nPORT 1,2,3,4,0,0\r\nPORT 1,2,3,4,5,6,7\r\n"
                    "PORT\r\nEPRT |3|1.2.3.4|5|\r\nEPRT |1|1.2.3.4|0|\r\nEPRT |1|::1|5|\r\n"
                    "EPRT |1|1.2.3.4|70000|\r\nEPRT 1|1.2.3.4|5|\r\nPORT 1111,2,3,4,5,6\r\n",
                    1, "bad,bad,bad,bad,bad,bad,bad,bad,bad,bad,bad", NULL);
    same_when_split(1,
                    "227 Entering Passive Mode\r\n227 (1,2,3)\r\n229 (|||0|)\r\n229 (||1|)\r\n"
                    "229 (|||65536|)\r\n229 Extended (1|||5|)\r\n",
                    1, "bad,bad,bad,bad,bad,bad", NULL);
    /* An over-long line passes through unchanged, reported once; the next
     * line is read normally. */
    memset(big, 'a', n);
    memcpy(big, "227 ", 4);
    memcpy(big + n, "\r\n227 (1,2,3,4,0,99)\r\n", 23);
    feed(1, big, n + 22, 0, 0, r);
    CHECK(strcmp(r->kinds, "long,227") == 0, "long line: %s", r->kinds);
    CHECK(r->outlen == n + 2 + strlen("<227 99>\n") && memcmp(r->out, big, n + 2) == 0,
          "the long line unchanged");
    feed(1, big, n + 22, 100, 0, r);
    CHECK(strcmp(r->kinds, "long,227") == 0, "long line, split: %s", r->kinds);
    /* An over-long line that opens a multi-line reply still opens it. */
    memcpy(big, "211-", 4);
    memcpy(big + n, "\r\n227 (1,2,3,4,0,98)\r\n211 end\r\n227 (1,2,3,4,0,97)\r\n", 51);
    feed(1, big, n + 51, 0, 0, r);
    CHECK(strcmp(r->kinds, "long,reply,227") == 0, "long multi-line opener: %s", r->kinds);
    /* Binary garbage and NULs: passed on, no message. */
    {
        static const char junk[] = "\x00\xff\xfe\r\n\x01\x02 227 (1,2,3,4,5,6)\r\n";
        feed(1, junk, sizeof(junk) - 1, 3, 0, r);
        CHECK(r->kinds[0] == '\0', "junk: %s", r->kinds);
        CHECK(r->outlen == sizeof(junk) - 1 && memcmp(r->out, junk, r->outlen) == 0, "junk kept");
    }
    /* Pass-through: nothing is looked at any more. */
    {
        struct ftp_dir d = {.reply = 1};
        struct ftp_msg m;
        unsigned char out[256];
        size_t ol = 0;
        ftp_feed(&d, (const unsigned char *)"227 (1,2", 8, out, &ol, &m);
        ftp_set_passthru(&d, out, &ol);
        ftp_feed(&d, (const unsigned char *)",3,4,5,6)\r\n", 11, out, &ol, &m);
        CHECK(m.kind == FTP_OTHER && ol == 19 && memcmp(out, "227 (1,2,3,4,5,6)\r\n", 19) == 0,
              "pass-through");
    }
    free(big);
    free(r);
}

void test_ftp_rewrite(void)
{
    struct ftp_msg m;
    unsigned char out[FTP_LINE_MAX + 128];
    static const unsigned char pub[4] = {203, 0, 113, 10};
    unsigned char v6[16] = {0x20, 0x01, 0x0d, 0xb8};
    const char *l;
    int n;

    v6[15] = 1;
    l = "227 Entering Passive Mode (192,0,2,2,156,64).\r\n";
    CHECK(ftp_parse_line((const unsigned char *)l, strlen(l), 1, &m) == FTP_227, "227");
    CHECK(m.port == 40000 && m.addr[0] == 192 && m.addr[3] == 2, "227 address");
    n = ftp_rewrite((const unsigned char *)l, strlen(l), &m, 4, pub, 30001, out, sizeof(out));
    CHECK(n > 0 && (size_t)n == strlen("227 Entering Passive Mode (203,0,113,10,117,49).\r\n") &&
              memcmp(out, "227 Entering Passive Mode (203,0,113,10,117,49).\r\n", (size_t)n) == 0,
          "227 rewritten: %s", unit_show(out, n > 0 ? (size_t)n : 0));
    CHECK(ftp_rewrite((const unsigned char *)l, strlen(l), &m, 6, v6, 30001, out, sizeof(out)) ==
              -1,
          "227 cannot carry IPv6");
    l = "229 Entering Extended Passive Mode (|||40001|)\r\n";
    CHECK(ftp_parse_line((const unsigned char *)l, strlen(l), 1, &m) == FTP_229, "229");
    n = ftp_rewrite((const unsigned char *)l, strlen(l), &m, 0, NULL, 30002, out, sizeof(out));
    CHECK(n > 0 && memcmp(out, "229 Entering Extended Passive Mode (|||30002|)\r\n", (size_t)n) == 0,
          "229 rewritten");
    l = "PORT 203,0,113,7,156,65\r\n";
    CHECK(ftp_parse_line((const unsigned char *)l, strlen(l), 0, &m) == FTP_PORT, "PORT");
    n = ftp_rewrite((const unsigned char *)l, strlen(l), &m, 4, pub, 1025, out, sizeof(out));
    CHECK(n > 0 && memcmp(out, "PORT 203,0,113,10,4,1\r\n", (size_t)n) == 0, "PORT rewritten");
    l = "EPRT |1|203.0.113.7|40002|\r\n";
    CHECK(ftp_parse_line((const unsigned char *)l, strlen(l), 0, &m) == FTP_EPRT, "EPRT");
    n = ftp_rewrite((const unsigned char *)l, strlen(l), &m, 6, v6, 40005, out, sizeof(out));
    CHECK(n > 0 && memcmp(out, "EPRT |2|2001:db8::1|40005|\r\n", (size_t)n) == 0,
          "EPRT rewritten to IPv6: %s", unit_show(out, n > 0 ? (size_t)n : 0));
    CHECK(ftp_rewrite((const unsigned char *)l, strlen(l), &m, 4, pub, 0, out, sizeof(out)) == -1,
          "port 0 refused");
    CHECK(ftp_rewrite((const unsigned char *)l, strlen(l), &m, 4, pub, 1, out, 10) == -1,
          "too small a buffer refused");
    m.kind = FTP_REPLY;
    CHECK(ftp_rewrite((const unsigned char *)l, strlen(l), &m, 4, pub, 1, out, sizeof(out)) == -1,
          "only the four messages are rewritten");
}

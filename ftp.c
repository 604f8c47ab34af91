/* ftp.c - the FTP control-connection rewriter (see ftp.h): line splitting
 * with a fixed limit, reply state (multi-line replies), and the parsers and
 * writers of the four address-carrying messages. No allocation, no I/O:
 * every index is checked against the line's length before it is read. */

#include "ftp.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

const char *ftp_kind_name(enum ftp_kind k)
{
    static const char *const names[] = {"other", "227", "229", "PORT", "EPRT",
                                        "AUTH",  "reply", "bad", "long"};

    return (unsigned)k < sizeof(names) / sizeof(names[0]) ? names[k] : "?";
}

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static unsigned char lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

/* Length without the line end (CRLF or LF). */
static size_t strip_eol(const unsigned char *line, size_t len)
{
    if (len && line[len - 1] == '\n')
        len--;
    if (len && line[len - 1] == '\r')
        len--;
    return len;
}

/* A number of 1..maxdigits digits at line[*i], at most max. 0 or -1. */
static int parse_num(const unsigned char *line, size_t len, size_t *i, int maxdigits, long max,
                     long *out)
{
    long v = 0;
    int nd = 0;

    while (*i < len && is_digit(line[*i]) && nd < maxdigits) {
        v = v * 10 + (line[*i] - '0');
        (*i)++;
        nd++;
    }
    if (nd == 0 || (*i < len && is_digit(line[*i])) || v > max)
        return -1;
    *out = v;
    return 0;
}

/* "h1,h2,h3,h4,p1,p2" at line[*i]: the address and port. Spaces are allowed
 * around the commas (some servers write them). 0 or -1; *i ends after p2. */
static int parse_six(const unsigned char *line, size_t len, size_t *i, struct ftp_msg *m)
{
    long v[6];

    for (int k = 0; k < 6; k++) {
        if (k > 0) {
            while (*i < len && line[*i] == ' ')
                (*i)++;
            if (*i >= len || line[*i] != ',')
                return -1;
            (*i)++;
            while (*i < len && line[*i] == ' ')
                (*i)++;
        }
        if (parse_num(line, len, i, 3, 255, &v[k]) != 0)
            return -1;
    }
    for (int k = 0; k < 4; k++)
        m->addr[k] = (unsigned char)v[k];
    m->family = 4;
    m->port = (int)(v[4] * 256 + v[5]);
    return m->port > 0 ? 0 : -1;
}

/* A reply line that is a 227: the six numbers start at the first digit after
 * the code (with or without parentheses, as nf_conntrack_ftp reads it). */
static enum ftp_kind parse_227(const unsigned char *line, size_t len, size_t from,
                               struct ftp_msg *m)
{
    size_t i = from;

    while (i < len && !is_digit(line[i]))
        i++;
    if (i >= len)
        return FTP_BAD;
    m->start = i;
    if (parse_six(line, len, &i, m) != 0)
        return FTP_BAD;
    m->end = i;
    return FTP_227;
}

/* A 229: "(<d><d><d>port<d>)" with any printable delimiter d. Only the port
 * digits are replaced. */
static enum ftp_kind parse_229(const unsigned char *line, size_t len, size_t from,
                               struct ftp_msg *m)
{
    size_t i = from;
    unsigned char d;
    long port;

    while (i < len && line[i] != '(')
        i++;
    if (i + 4 >= len)
        return FTP_BAD;
    d = line[i + 1];
    if (d < 33 || d > 126 || is_digit(d) || line[i + 2] != d || line[i + 3] != d)
        return FTP_BAD;
    i += 4;
    m->start = i;
    if (parse_num(line, len, &i, 5, 65535, &port) != 0 || port == 0 || i >= len || line[i] != d)
        return FTP_BAD;
    m->end = i;
    m->port = (int)port;
    m->family = 0;
    return FTP_229;
}

/* EPRT's argument at line[i]: "<d>1<d>addr<d>port<d>" (RFC 2428). */
static enum ftp_kind parse_eprt(const unsigned char *line, size_t len, size_t i,
                                struct ftp_msg *m)
{
    char text[64];
    size_t a, alen;
    unsigned char d;
    long fam, port;

    if (i >= len)
        return FTP_BAD;
    d = line[i];
    if (d < 33 || d > 126 || is_digit(d))
        return FTP_BAD;
    m->start = i++;
    if (parse_num(line, len, &i, 1, 2, &fam) != 0 || fam < 1 || i >= len || line[i] != d)
        return FTP_BAD;
    a = ++i;
    while (i < len && line[i] != d)
        i++;
    alen = i - a;
    if (i >= len || alen == 0 || alen >= sizeof(text))
        return FTP_BAD;
    memcpy(text, line + a, alen);
    text[alen] = '\0';
    if (inet_pton(fam == 1 ? AF_INET : AF_INET6, text, m->addr) != 1)
        return FTP_BAD;
    i++;
    if (parse_num(line, len, &i, 5, 65535, &port) != 0 || port == 0 || i >= len || line[i] != d)
        return FTP_BAD;
    m->end = i + 1;
    m->family = fam == 1 ? 4 : 6;
    m->port = (int)port;
    return FTP_EPRT;
}

/* Where a command's verb starts: after blanks, control bytes and Telnet
 * sequences (IAC is 0xff; its commands and most options are >= 0x7f or
 * < 0x20). A server that skips them before the verb must not see a PORT
 * that we did not. */
static size_t verb_start(const unsigned char *line, size_t len)
{
    size_t i = 0;

    while (i < len && (line[i] == ' ' || line[i] < 0x20 || line[i] >= 0x7f))
        i++;
    return i;
}

int ftp_is_port_line(const unsigned char *line, size_t len)
{
    size_t s = verb_start(line, len);

    return len - s >= 4 && (strncasecmp((const char *)line + s, "PORT", 4) == 0 ||
                            strncasecmp((const char *)line + s, "EPRT", 4) == 0);
}

/* A command line: its verb (letters, any case) and argument. */
static enum ftp_kind parse_command(const unsigned char *line, size_t len, struct ftp_msg *m)
{
    size_t s = verb_start(line, len), i = s, v;
    char verb[5];

    while (i < len && i - s < 4 && ((line[i] | 32) >= 'a' && (line[i] | 32) <= 'z'))
        i++;
    if (i - s != 4 || (i < len && line[i] != ' '))
        return FTP_OTHER;
    for (v = 0; v < 4; v++)
        verb[v] = (char)lower(line[s + v]);
    verb[4] = '\0';
    while (i < len && line[i] == ' ')
        i++;
    if (strcmp(verb, "port") == 0) {
        m->start = i;
        if (parse_six(line, len, &i, m) != 0)
            return FTP_BAD;
        m->end = i;
        while (i < len && line[i] == ' ')
            i++;
        return i == len ? FTP_PORT : FTP_BAD;
    }
    if (strcmp(verb, "eprt") == 0) {
        enum ftp_kind k = parse_eprt(line, len, i, m);
        if (k != FTP_EPRT)
            return k;
        for (i = m->end; i < len && line[i] == ' '; i++)
            ;
        return i == len ? FTP_EPRT : FTP_BAD;
    }
    if (strcmp(verb, "auth") == 0 && i < len)
        return FTP_AUTH;
    return FTP_OTHER;
}

/* The reply code at the start of a line: 100..599 followed by ' ', '-' or
 * the end; else 0. *sep gets the character after it (0 at the end). */
static int reply_code(const unsigned char *line, size_t len, int *sep)
{
    if (len < 3 || !is_digit(line[0]) || !is_digit(line[1]) || !is_digit(line[2]))
        return 0;
    if (len > 3 && line[3] != ' ' && line[3] != '-')
        return 0;
    *sep = len > 3 ? line[3] : 0;
    return (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
}

enum ftp_kind ftp_parse_line(const unsigned char *line, size_t len, int reply,
                             struct ftp_msg *m)
{
    int code, sep = 0;

    memset(m, 0, sizeof(*m));
    len = strip_eol(line, len);
    if (!reply)
        return m->kind = parse_command(line, len, m);
    code = reply_code(line, len, &sep);
    m->code = code;
    if (code == 227)
        return m->kind = parse_227(line, len, 4, m);
    if (code == 229)
        return m->kind = parse_229(line, len, 4, m);
    return m->kind = code ? FTP_REPLY : FTP_OTHER;
}

/* A whole line of the reply direction: keep track of multi-line replies
 * (RFC 959 4.2: "ddd-" opens one, "ddd " with the same code closes it) and
 * classify it. Inside a reply, text lines are matched only while that reply
 * is a 227 or 229 that had no address yet. */
static enum ftp_kind classify_reply(struct ftp_dir *d, const unsigned char *line, size_t len,
                                    struct ftp_msg *m)
{
    int sep = 0, code;
    enum ftp_kind k = FTP_OTHER;

    memset(m, 0, sizeof(*m));
    len = strip_eol(line, len);
    code = reply_code(line, len, &sep);
    if (d->multi) {
        int closes = code == d->multi && sep != '-';
        int cur = d->multi;
        if (!d->found && (cur == 227 || cur == 229)) {
            size_t from = code == cur ? 4 : 0;
            k = cur == 227 ? parse_227(line, len < from ? 0 : len, from, m)
                           : parse_229(line, len < from ? 0 : len, from, m);
            if (k == FTP_BAD)
                k = FTP_OTHER; /* a text line without the address */
        }
        if (k != FTP_OTHER)
            d->found = 1;
        if (closes) {
            d->multi = 0;
            if (k == FTP_OTHER)
                k = FTP_REPLY;
            d->found = 0;
        }
        m->code = cur;
        m->kind = k;
        return k;
    }
    if (!code)
        return m->kind = FTP_OTHER; /* not a reply line: cannot happen, pass it on */
    m->code = code;
    if (code == 227)
        k = parse_227(line, len, 4, m);
    else if (code == 229)
        k = parse_229(line, len, 4, m);
    if (sep == '-') {
        d->multi = code;
        d->found = k == FTP_227 || k == FTP_229;
        if (k == FTP_BAD)
            k = FTP_OTHER; /* the address may come on a later line */
    } else if (k == FTP_OTHER) {
        k = FTP_REPLY;
    }
    m->kind = k;
    return k;
}

/* The start of an over-long line: its first bytes still decide whether it
 * opens or closes a multi-line reply. */
static void long_line_state(struct ftp_dir *d)
{
    int sep = 0, code = reply_code(d->line, d->len < 4 ? d->len : 4, &sep);

    if (!d->reply)
        return;
    if (d->multi) {
        if (code == d->multi && sep == ' ') {
            d->multi = 0;
            d->found = 0;
        }
    } else if (code && sep == '-') {
        d->multi = code;
        d->found = 0;
    }
}

size_t ftp_feed(struct ftp_dir *d, const unsigned char *in, size_t n, unsigned char *out,
                size_t *outlen, struct ftp_msg *msg)
{
    size_t i = 0;

    memset(msg, 0, sizeof(*msg));
    if (d->passthru) {
        memcpy(out + *outlen, in, n);
        *outlen += n;
        return n;
    }
    while (i < n) {
        if (d->overlong) {
            const unsigned char *lf = memchr(in + i, '\n', n - i);
            size_t take = lf ? (size_t)(lf - (in + i)) + 1 : n - i;
            memcpy(out + *outlen, in + i, take);
            *outlen += take;
            i += take;
            if (lf)
                d->overlong = 0;
            continue;
        }
        while (i < n && d->len < FTP_LINE_MAX) {
            unsigned char c = in[i++];
            d->line[d->len++] = c;
            if (c == '\n')
                break;
        }
        if (d->len && d->line[d->len - 1] == '\n') {
            enum ftp_kind k = d->reply ? classify_reply(d, d->line, d->len, msg)
                                       : ftp_parse_line(d->line, d->len, 0, msg);
            if (k == FTP_OTHER) {
                memcpy(out + *outlen, d->line, d->len);
                *outlen += d->len;
                d->len = 0;
                continue;
            }
            return i;
        }
        if (d->len == FTP_LINE_MAX) {
            long_line_state(d);
            memcpy(out + *outlen, d->line, d->len);
            *outlen += d->len;
            d->len = 0;
            d->overlong = 1;
            memset(msg, 0, sizeof(*msg));
            msg->kind = FTP_LONG;
            return i;
        }
    }
    return i;
}

void ftp_line_done(struct ftp_dir *d)
{
    d->len = 0;
}

void ftp_set_passthru(struct ftp_dir *d, unsigned char *out, size_t *outlen)
{
    memcpy(out + *outlen, d->line, d->len);
    *outlen += d->len;
    d->len = 0;
    d->passthru = 1;
}

int ftp_rewrite(const unsigned char *line, size_t len, const struct ftp_msg *m, int family,
                const unsigned char *addr, int port, unsigned char *out, size_t cap)
{
    char mid[96];
    int n;

    if (m->start > m->end || m->end > len || port < 1 || port > 65535)
        return -1;
    switch (m->kind) {
    case FTP_227:
    case FTP_PORT:
        if (family != 4)
            return -1;
        n = snprintf(mid, sizeof(mid), "%u,%u,%u,%u,%d,%d", addr[0], addr[1], addr[2], addr[3],
                     port >> 8, port & 255);
        break;
    case FTP_229:
        n = snprintf(mid, sizeof(mid), "%d", port);
        break;
    case FTP_EPRT: {
        char text[INET6_ADDRSTRLEN];
        if ((family != 4 && family != 6) ||
            !inet_ntop(family == 4 ? AF_INET : AF_INET6, addr, text, sizeof(text)))
            return -1;
        n = snprintf(mid, sizeof(mid), "|%d|%s|%d|", family == 4 ? 1 : 2, text, port);
        break;
    }
    default:
        return -1;
    }
    if (n < 0 || (size_t)n >= sizeof(mid) || m->start + (size_t)n + (len - m->end) > cap)
        return -1;
    memcpy(out, line, m->start);
    memcpy(out + m->start, mid, (size_t)n);
    memcpy(out + m->start + (size_t)n, line + m->end, len - m->end);
    return (int)(m->start + (size_t)n + (len - m->end));
}

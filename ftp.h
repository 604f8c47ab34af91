#ifndef FTP_H
#define FTP_H

/* The FTP control-connection rewriter: a pure function over bytes, no
 * sockets, no threads (ftp_data.c does the rest). It splits one direction of
 * a control connection into lines and finds the four messages that carry an
 * address: the replies 227 (PASV) and 229 (EPSV) from the server, the
 * commands PORT and EPRT from the client (RFC 959, RFC 2428). Everything else
 * goes through unchanged, byte for byte. It also notices AUTH TLS/SSL and the
 * server's 234 answer, after which the control channel is encrypted and the
 * caller switches the direction to pass-through.
 *
 * Limits: a line is at most FTP_LINE_MAX bytes with its line end (RFC 959
 * has no limit; real replies are well under 200 bytes). A longer line is
 * passed through unchanged as it arrives, never buffered past the limit,
 * and reported (FTP_LONG). Commands are matched without regard to case and
 * after any blanks, control bytes or Telnet sequences in front of them (a
 * server that skips those must not see a PORT the rewriter did not); line
 * ends may be CRLF or a bare LF. */

#include <stddef.h>
#include <stdint.h>

#define FTP_LINE_MAX 2048

enum ftp_kind {
    FTP_OTHER = 0,      /* a line to pass through unchanged */
    FTP_227,            /* reply: 227 ... (h1,h2,h3,h4,p1,p2) */
    FTP_229,            /* reply: 229 ... (|||port|) */
    FTP_PORT,           /* command: PORT h1,h2,h3,h4,p1,p2 */
    FTP_EPRT,           /* command: EPRT |1|addr|port| or |2|addr|port| */
    FTP_AUTH,           /* command: AUTH TLS, AUTH SSL, AUTH TLS-C, ... */
    FTP_REPLY,          /* reply: the last line of a reply (code in msg.code) */
    FTP_BAD,            /* one of the four, but its argument did not parse */
    FTP_LONG,           /* the start of an over-long line (passed through) */
};

/* One message found by ftp_feed. For FTP_227/229/PORT/EPRT, [start, end) is
 * the part of the line that carries the address and port (what a rewrite
 * replaces). */
struct ftp_msg {
    enum ftp_kind kind;
    int code;                   /* replies: the reply code */
    int family;                 /* 4 or 6 (227 and PORT: 4; 229: 0, no address) */
    unsigned char addr[16];     /* network order; 4 bytes for IPv4 */
    int port;
    size_t start, end;
};

/* One direction of one control connection. Zero it, set `reply`, and feed. */
struct ftp_dir {
    int reply;                  /* 1: server -> client (replies); 0: commands */
    int passthru;               /* set by the caller: everything goes on unchanged */
    int overlong;               /* passing an over-long line through to its LF */
    int multi;                  /* replies: code of the open multi-line reply, or 0 */
    int found;                  /* replies: the open reply had its 227/229 already */
    size_t len;                 /* bytes in line[] */
    unsigned char line[FTP_LINE_MAX];
};

/* Feed in[0..n). Bytes that go on unchanged are appended to out (the caller
 * gives room for n + FTP_LINE_MAX bytes; *outlen grows). Stops after the
 * first complete line that is a message of interest (FTP_BAD included):
 * then *msg says what it is and the line is in d->line[0..d->len) (not yet in
 * out): the caller appends it or its replacement and calls ftp_line_done().
 * FTP_LONG is reported when a line outgrows FTP_LINE_MAX: its start is then
 * already in out and the rest follows unchanged. Returns the number of bytes
 * of in consumed; with msg->kind == FTP_OTHER everything was consumed. */
size_t ftp_feed(struct ftp_dir *d, const unsigned char *in, size_t n, unsigned char *out,
                size_t *outlen, struct ftp_msg *msg);

/* The caller has dealt with the line ftp_feed stopped at. */
void ftp_line_done(struct ftp_dir *d);

/* Pass-through from now on: what d holds of a partial line goes to out
 * first. */
void ftp_set_passthru(struct ftp_dir *d, unsigned char *out, size_t *outlen);

/* Write into out (cap bytes) the line with [m->start, m->end) replaced by a
 * new address and port in the message's own syntax: "h1,h2,h3,h4,p1,p2" for
 * 227 and PORT (family 4 only), "|||port|"'s port for 229, "|f|addr|port|"
 * for EPRT (family 4 or 6; addr 4 or 16 bytes). Returns the new length, or
 * -1 if it does not fit or the family cannot be written in that syntax. */
int ftp_rewrite(const unsigned char *line, size_t len, const struct ftp_msg *m, int family,
                const unsigned char *addr, int port, unsigned char *out, size_t cap);

/* Parse one complete line (with or without its line end) as a reply
 * (reply = 1) or a command; the state machine of ftp_feed is not touched.
 * For tests and the fuzzer. Sets *msg; returns msg->kind. */
enum ftp_kind ftp_parse_line(const unsigned char *line, size_t len, int reply,
                             struct ftp_msg *msg);

/* Whether a (partial) command line starts with PORT or EPRT, the way the
 * parser reads verbs (after blanks, control bytes and Telnet sequences). */
int ftp_is_port_line(const unsigned char *line, size_t len);

const char *ftp_kind_name(enum ftp_kind k);

#endif

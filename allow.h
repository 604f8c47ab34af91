#ifndef ALLOW_H
#define ALLOW_H

/* The private side's allowlist: which targets BUILD_CONNECTION may dial and
 * UDP sessions may send to (the rules do not tell TCP and UDP apart).
 *
 * Entries, from --allow (repeatable):
 *   HOST:PORT         that host name or address and port
 *   CIDR:PORTRANGE    e.g. 192.168.1.0/24:1-65535, 10.0.0.5/32:22, ::1/128:80-90
 *   any               everything
 * With no --allow, the default is loopback (127.0.0.0/8 and ::1, any port) plus
 * the targets of this proxy's own --register apps: a public side that was taken
 * over can then reach nothing on the home network that was not offered. */

#include <stddef.h>

#include <jansson.h>

#define ALLOW_MAX 64

struct allow_rule;

struct allowlist {
    int any;
    int n;
    struct allow_rule *rules;   /* ALLOW_MAX entries */
};

int allow_init(struct allowlist *al);
void allow_free(struct allowlist *al);

/* Add one --allow argument; -1 with err when it cannot be parsed. */
int allow_add(struct allowlist *al, const char *arg, char *err, size_t errlen);
/* Add the exact target host:port (used for --register targets). */
int allow_add_target(struct allowlist *al, const char *host, int port);
/* The same for ports lo..hi (an FTP app's fixed passive range). */
int allow_add_target_range(struct allowlist *al, const char *host, int lo, int hi);
/* Add loopback, any port (the default). */
void allow_add_loopback(struct allowlist *al);

/* Resolve host and connect to the first address the list allows, within
 * timeout_ms. Returns a blocking fd, or -1 with err ("not allowed ..." or the
 * dial error). */
int allow_dial(const struct allowlist *al, const char *host, int port, int timeout_ms, char *err,
               size_t errlen);
/* The same for a UDP target: a connected, non-blocking UDP socket. */
int allow_udp_connect(const struct allowlist *al, const char *host, int port, char *err,
                      size_t errlen);

/* The rules as HELLO's and APPS' "allow" member: one string per rule, in
 * --allow's own notation ("any", "HOST:LOW-HIGH", "CIDR:LOW-HIGH"); NULL when
 * out of memory. */
json_t *allow_to_json(const struct allowlist *al);
/* Read such a member into al (allow_init()ed, empty): -1 with err when it is
 * not an array of at most ALLOW_MAX + 1 rules that parse. */
int allow_from_json(struct allowlist *al, const json_t *arr, char *err, size_t errlen);

/* What the public side can tell of a target from the rules alone, without
 * resolving its name (which only the home side can): */
enum allow_verdict {
    ALLOW_YES,      /* permitted */
    ALLOW_NO,       /* certainly refused: no rule can admit it */
    ALLOW_MAYBE     /* a name that a CIDR rule might admit once resolved */
};
enum allow_verdict allow_judge(const struct allowlist *al, const char *host, int port);
/* The --allow rule that admits exactly host:port ("[v6]:port" for IPv6). */
void allow_rule_for(const char *host, int port, char *out, size_t cap);

#endif

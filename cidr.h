#ifndef CIDR_H
#define CIDR_H

/* Source allowlists of apps ("allow_from"): IPv4 and IPv6 networks in CIDR
 * notation. An empty list allows everybody. A client that reaches a
 * dual-stack socket as ::ffff:a.b.c.d is matched as the IPv4 address
 * a.b.c.d (against the IPv4 entries only). */

#include <jansson.h>
#include <stddef.h>
#include <sys/socket.h>

#define CIDR_MAX 64                 /* entries of one list */
#define CIDR_TEXT_MAX 64            /* bytes of one entry as text, e.g. "2001:db8::/32" */

struct cidr {
    unsigned char family;           /* 4 or 6 */
    unsigned char prefix;           /* 0..32 or 0..128 */
    unsigned char addr[16];         /* network byte order; the first 4 for IPv4 */
};

struct cidr_list {
    int n;
    struct cidr e[CIDR_MAX];
};

/* "192.0.2.0/24", "2001:db8::/32", or a bare address (one host: /32, /128).
 * Bits past the prefix must be zero ("192.0.2.1/24" is refused: which was
 * meant?). 0, or -1 with err. */
int cidr_parse(const char *text, struct cidr *out, char *err, size_t errlen);
/* The entry in its usual notation ("192.0.2.0/24", "2001:db8::/32"). */
void cidr_str(const struct cidr *c, char *out, size_t cap);
/* Add text to l (duplicates are kept out). 0, or -1 with err (bad entry,
 * or more than CIDR_MAX). */
int cidr_list_add(struct cidr_list *l, const char *text, char *err, size_t errlen);
/* A JSON array of at most CIDR_MAX strings into l (emptied first); NULL or
 * JSON null is the empty list. 0, or -1 with err naming the bad entry. */
int cidr_list_from_json(const json_t *arr, struct cidr_list *l, char *err, size_t errlen);
/* The list as a JSON array of strings (a new reference; NULL when out of memory). */
json_t *cidr_list_to_json(const struct cidr_list *l);
/* 1 when the address of ss is allowed by l (always, for an empty list). */
int cidr_list_allows(const struct cidr_list *l, const struct sockaddr_storage *ss);
int cidr_list_equal(const struct cidr_list *a, const struct cidr_list *b);

#endif

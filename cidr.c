/* cidr.c - source allowlists of apps (see cidr.h). */

#include "cidr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "netio.h"

int cidr_parse(const char *text, struct cidr *out, char *err, size_t errlen)
{
    char buf[CIDR_TEXT_MAX];
    const char *slash;
    size_t n = text ? strlen(text) : 0, alen;
    int max, prefix;

    memset(out, 0, sizeof(*out));
    if (n == 0 || n >= sizeof(buf)) {
        snprintf(err, errlen, "an allow_from entry must be 1 to %d characters", CIDR_TEXT_MAX - 1);
        return -1;
    }
    slash = strchr(text, '/');
    alen = slash ? (size_t)(slash - text) : n;
    memcpy(buf, text, alen);
    buf[alen] = '\0';
    if (inet_pton(AF_INET, buf, out->addr) == 1) {
        out->family = 4;
        max = 32;
    } else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
        out->family = 6;
        max = 128;
    } else {
        snprintf(err, errlen, "allow_from entry '%.64s' is not ADDRESS/PREFIX (IPv4 or IPv6)", text);
        return -1;
    }
    prefix = max;
    if (slash) {
        const char *p = slash + 1;
        size_t digits = strspn(p, "0123456789");
        if (digits == 0 || digits > 3 || p[digits] != '\0' || atoi(p) > max) {
            snprintf(err, errlen, "allow_from entry '%.64s' has a bad prefix length (0 to %d)",
                     text, max);
            return -1;
        }
        prefix = atoi(p);
    }
    out->prefix = (unsigned char)prefix;
    for (int bit = prefix; bit < max; bit++) {
        if (out->addr[bit / 8] & (0x80 >> (bit % 8))) {
            snprintf(err, errlen, "allow_from entry '%.64s' has bits set past its /%d: write "
                     "the network address", text, prefix);
            return -1;
        }
    }
    return 0;
}

void cidr_str(const struct cidr *c, char *out, size_t cap)
{
    char ip[INET6_ADDRSTRLEN];

    if (!inet_ntop(c->family == 4 ? AF_INET : AF_INET6, c->addr, ip, sizeof(ip)))
        snprintf(ip, sizeof(ip), "?");
    snprintf(out, cap, "%s/%u", ip, (unsigned)c->prefix);
}

static int cidr_same(const struct cidr *a, const struct cidr *b)
{
    return a->family == b->family && a->prefix == b->prefix && memcmp(a->addr, b->addr, 16) == 0;
}

int cidr_list_add(struct cidr_list *l, const char *text, char *err, size_t errlen)
{
    struct cidr c;

    if (cidr_parse(text, &c, err, errlen) != 0)
        return -1;
    for (int i = 0; i < l->n; i++)
        if (cidr_same(&l->e[i], &c))
            return 0;
    if (l->n >= CIDR_MAX) {
        snprintf(err, errlen, "allow_from holds at most %d entries", CIDR_MAX);
        return -1;
    }
    l->e[l->n++] = c;
    return 0;
}

int cidr_list_from_json(const json_t *arr, struct cidr_list *l, char *err, size_t errlen)
{
    size_t i;
    const json_t *v;

    memset(l, 0, sizeof(*l));
    if (!arr || json_is_null(arr))
        return 0;
    if (!json_is_array(arr) || json_array_size(arr) > CIDR_MAX) {
        snprintf(err, errlen, "'allow_from' must be an array of at most %d CIDR strings "
                 "(e.g. \"192.0.2.0/24\", \"2001:db8::/32\")", CIDR_MAX);
        return -1;
    }
    json_array_foreach(arr, i, v) {
        const char *s = json_string_value(v);
        if (!s || json_string_length(v) != strlen(s)) {
            snprintf(err, errlen, "'allow_from' entry %zu is not a string", i);
            return -1;
        }
        if (cidr_list_add(l, s, err, errlen) != 0)
            return -1;
    }
    return 0;
}

json_t *cidr_list_to_json(const struct cidr_list *l)
{
    json_t *arr = json_array();

    for (int i = 0; arr && i < l->n; i++) {
        char t[CIDR_TEXT_MAX];
        cidr_str(&l->e[i], t, sizeof(t));
        if (json_array_append_new(arr, json_string(t)) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

static int cidr_match(const struct cidr *c, const unsigned char *ip, int family)
{
    int full = c->prefix / 8, rest = c->prefix % 8;

    if (c->family != family)
        return 0;
    if (memcmp(c->addr, ip, (size_t)full) != 0)
        return 0;
    if (rest) {
        unsigned char mask = (unsigned char)(0xff << (8 - rest));
        if ((c->addr[full] & mask) != (ip[full] & mask))
            return 0;
    }
    return 1;
}

int cidr_list_allows(const struct cidr_list *l, const struct sockaddr_storage *in)
{
    struct sockaddr_storage ss;
    const unsigned char *ip;
    int family;

    if (!l || l->n == 0)
        return 1;
    ss = *in;
    net_unmap(&ss);
    if (ss.ss_family == AF_INET) {
        ip = (const unsigned char *)&((const struct sockaddr_in *)&ss)->sin_addr;
        family = 4;
    } else if (ss.ss_family == AF_INET6) {
        ip = ((const struct sockaddr_in6 *)&ss)->sin6_addr.s6_addr;
        family = 6;
    } else {
        return 0;
    }
    for (int i = 0; i < l->n; i++)
        if (cidr_match(&l->e[i], ip, family))
            return 1;
    return 0;
}

int cidr_list_equal(const struct cidr_list *a, const struct cidr_list *b)
{
    if (a->n != b->n)
        return 0;
    for (int i = 0; i < a->n; i++)
        if (!cidr_same(&a->e[i], &b->e[i]))
            return 0;
    return 1;
}

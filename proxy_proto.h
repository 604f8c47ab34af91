#ifndef PROXY_PROTO_H
#define PROXY_PROTO_H

/* The PROXY protocol header (HAProxy's spec, versions 1 and 2) that the
 * private side writes to an app with "proxy_protocol" before the client's
 * first byte: the client's address and the public side's local address and
 * port it connected to. Both TCP over IPv4 (TCP4 / AF_INET) or over IPv6
 * (TCP6 / AF_INET6); when the two families differ the IPv4 one is written
 * IPv4-mapped as IPv6. */

#include <stddef.h>
#include <sys/socket.h>

#define PROXY_PROTO_V1_MAX 107      /* the spec's longest version 1 line */
#define PROXY_PROTO_MAX 108         /* room for either version's TCP header */

/* The header into out (cap >= PROXY_PROTO_MAX). The length, or -1 for a
 * version other than 1 and 2 or an address that is neither IPv4 nor IPv6. */
int proxy_proto_header(int version, const struct sockaddr_storage *client,
                       const struct sockaddr_storage *server, unsigned char *out, size_t cap);

#endif

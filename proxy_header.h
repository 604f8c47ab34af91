#ifndef PROXY_HEADER_H
#define PROXY_HEADER_H

/* The reading side of the PROXY protocol (HAProxy's spec, versions 1 and 2),
 * for proxy_public behind a load balancer (--accept-proxy-from): a
 * connection from one of the listed addresses must start with a header; the
 * address in it is then the client's everywhere. A connection from any other
 * address is never looked at: its bytes are the client's own, so nobody
 * outside the list can claim another address. (proxy_proto.c is the writing
 * side, towards apps at home.) */

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "cidr.h"

#define PP_V1_MAX 107               /* the longest version 1 line, CRLF included */
#define PP_V2_LEN_MAX 536           /* the longest version 2 address block we take */
#define PP_HEADER_MAX (16 + PP_V2_LEN_MAX)
#define PP_ACCEPT_MAX 16            /* --accept-proxy-from entries */
#define PP_DEADLINE_MS 5000         /* from the accept to the header's last byte */
#define PP_PENDING_MAX 256          /* connections waiting for their header at once */

/* Judge buf[0..len) as the start of a PROXY header. 1: a whole header of
 * *hdr_len bytes, with the client in *src (address and port; AF_UNSPEC, all
 * zero, when the header says to use the connection's own peer: v1 UNKNOWN,
 * v2 LOCAL, a v2 family or transport other than TCP over IPv4/IPv6). 0: a
 * valid beginning, more bytes needed. -1: not a header, or one past the
 * limits (v1: at most PP_V1_MAX bytes ending in CRLF, TCP4/TCP6/UNKNOWN
 * only; v2: version 2, LOCAL or PROXY, at most PP_V2_LEN_MAX bytes after
 * the first 16; TLVs are skipped). Pure: no I/O, no allocation. */
int pp_parse(const unsigned char *buf, size_t len, struct sockaddr_storage *src, size_t *hdr_len);

/* The --accept-proxy-from list, set once before any thread starts (read-only
 * afterwards). */
void pp_accept_set(const struct cidr_list *l);
/* 1 when peer is in the list (never for an empty one). */
int pp_accept_listed(const struct sockaddr_storage *peer);

/* Read a connection's PROXY header from fd (blocking or not) by deadline
 * (mono_ms()), never a byte past it; with stop not NULL, give up as soon as
 * *stop is set. 0: *client is the client (the header's address, or *peer's
 * when the header says so). -1: no valid header in time; why says what. */
int pp_read_header(int fd, uint64_t deadline, const _Atomic int *stop,
                   const struct sockaddr_storage *peer, struct sockaddr_storage *client,
                   const char **why);

/* Connections refused for a missing or bad header, all ports (for /metrics). */
void pp_count_refused(void);
uint64_t pp_refused_total(void);

#endif

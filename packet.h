#ifndef PACKET_H
#define PACKET_H

/* Operations on the tunnel: building them (packet()), encoding them into frames,
 * and parsing frames with every length and field checked. See docs/PROTOCOL.md. */

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "op_enum.h"

#define PKT_PROTO_VERSION 7                /* the highest version we speak */
#define PKT_PROTO_UDP 3                    /* the first with UDP apps */
#define PKT_PROTO_APPS 4                   /* the first with APPS (apps changed on a live tunnel) */
#define PKT_PROTO_FTP 5                    /* the first with FTP apps */
#define PKT_PROTO_PP 6                     /* the first with BUILD_CONNECTION's client,
                                              server and proxy_protocol */
#define PKT_PROTO_CLUSTER 7                /* the first with WELCOME's node and NODES */
#define PKT_NODES_MAX 64                   /* nodes in one NODES */
#define PKT_ADDR_MAX 56                    /* "[IPv6]:port" of client and server */
#define PKT_FTP_REQ_MAX 0x7fffffff         /* FTP_OPEN's request numbers */
#define PKT_FTP_FIXED_MAX 1000             /* ports of an FTP app's fixed passive range */
#define PKT_PROTO_MIN 1                    /* the lowest we still accept */
#define PKT_RESUME_MAX 1000                /* connections in one RESUME */
#define PKT_GRACE_MAX 3600                 /* seconds of resume grace */
#define PKT_FRAME_PREFIX 4                 /* uint32 big-endian header length */
#define PKT_MAX_HEADER 65536               /* after the handshake */
#define PKT_MAX_HEADER_PREAUTH 32768       /* before it: tighter, nobody is trusted yet;
                                              still fits a HELLO with PKT_MAX_APPS apps */
#define PKT_MAX_DATA 262144                /* payload of one DATA frame */
#define PKT_MAX_DGRAM 65535                /* payload of one UDP_DATA frame */
#define PKT_IDLE_MIN 5                     /* udp_idle_timeout, seconds */
#define PKT_IDLE_MAX 3600
#define PKT_WINDOW_MIN 65536
#define PKT_WINDOW_MAX (16 * 1024 * 1024)
#define PKT_WINDOW_DEFAULT (4 * 1024 * 1024)
#define PKT_NAME_MAX 64
#define PKT_TOKEN_MAX 256
#define PKT_HOST_MAX 253
#define PKT_MAX_APPS 64
#define PKT_ALLOW_MAX 65                   /* rules in HELLO's / APPS' "allow" (64 and "any") */
#define PKT_ALLOW_RULE_MAX 280             /* bytes of one: "[host]:65535-65535" */
#define PKT_REASON_MAX 256                 /* CLOSE's "reason" */
#define PKT_MAX_DEPTH 8                    /* nesting of a header's JSON (HELLO needs 3) */
#define PKT_CONN_ID_MAX ((1ULL << 53) - 1)
#define PKT_MAX_FRAME (PKT_FRAME_PREFIX + PKT_MAX_HEADER + PKT_MAX_DATA)

/* A parsed frame. `json` is owned by the pkt and freed by pkt_clear(); the other
 * members are copies of checked fields so callers never re-validate. */
struct pkt {
    int op;
    json_t *json;
    uint64_t conn;                 /* BUILD_CONNECTION..CLOSE; UDP_*: the session */
    size_t len;                    /* DATA, UDP_DATA: payload length; ACK: bytes acknowledged */
    const unsigned char *payload;  /* DATA, UDP_DATA: points into the caller's buffer */
};

/* Build an operation: {"op": op} plus the members packed from fmt (a json_pack
 * format for an object, e.g. "{s:I,s:i}"), or just {"op": op} when fmt is NULL.
 * Returns a new reference, or NULL on a bad format or out of memory. */
json_t *packet(int op, const char *fmt, ...);

/* Encode hdr into out as a frame prefix + header (the payload, if any, is sent
 * separately). Returns the number of bytes written, or -1 if it does not fit in
 * cap or exceeds PKT_MAX_HEADER. */
int pkt_encode(const json_t *hdr, unsigned char *out, size_t cap);

/* The header of a DATA or UDP_DATA frame without other members, written
 * straight into out (prefix included) without building a JSON object:
 * {"op":7,"conn":ID,"len":LEN} or {"op":12,"session":ID,"len":LEN}, the
 * header packet() makes, in the member order pkt_parse_frame recognises
 * without Jansson. Returns the bytes written (at most PKT_DATA_HEADER_MAX),
 * or -1 for another op, an id or len out of range, or when it does not fit in
 * cap (nothing written). */
#define PKT_DATA_HEADER_MAX (PKT_FRAME_PREFIX + 60)
int pkt_encode_data(unsigned char *out, size_t cap, int op, uint64_t id, size_t len);

/* Parse the frame at the start of buf[0..avail).
 *   1: a whole frame; *out is filled, *frame_len is its total size (prefix +
 *      header + payload) and out->payload points into buf.
 *   0: incomplete; *frame_len is the total size needed when known, else 0.
 *  -1: malformed, oversized or invalid; err holds a reason fit for a log line.
 * max_header is PKT_MAX_HEADER or PKT_MAX_HEADER_PREAUTH. Never reads past avail.
 * A DATA or UDP_DATA header written exactly as pkt_encode_data writes it is
 * read without Jansson, and out->json is then NULL: all its fields are in out
 * (json_object_get(NULL, ...) is NULL: no "open", no "drops"). */
int pkt_parse_frame(const unsigned char *buf, size_t avail, size_t max_header,
                    struct pkt *out, size_t *frame_len, char *err, size_t errlen);

/* Validate one decoded header object against its op's rules (used by
 * pkt_parse_frame; exposed for tests). Returns 0 or -1 with err set. */
int pkt_validate(json_t *hdr, struct pkt *out, char *err, size_t errlen);

void pkt_clear(struct pkt *p);

/* Name rule shared by private proxies and apps: [A-Za-z0-9._-]{1,64}. */
int pkt_valid_name(const char *s);
/* Host rule: 1..253 bytes of [A-Za-z0-9.:_-] (names, IPv4, IPv6 without brackets). */
int pkt_valid_host(const char *s);
/* Split "HOST:PORT" or "[IPv6]:PORT" into host (brackets dropped, at most
 * cap - 1 bytes) and a port 1..65535. 0, or -1 when s is not that. */
int pkt_split_hostport(const char *s, char *host, size_t cap, int *port);

#endif

/* proxy_proto.c - PROXY protocol headers, version 1 (text) and 2 (binary). */

#include "proxy_proto.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "netio.h"

/* ss (unmapped) as 4 or 16 address bytes and its port; 0 for another family. */
static int pp_addr(const struct sockaddr_storage *in, unsigned char ip[16], uint16_t *port)
{
    struct sockaddr_storage ss = *in;

    net_unmap(&ss);
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)&ss;
        memcpy(ip, &s4->sin_addr, 4);
        *port = ntohs(s4->sin_port);
        return 4;
    }
    if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&ss;
        memcpy(ip, &s6->sin6_addr, 16);
        *port = ntohs(s6->sin6_port);
        return 16;
    }
    return 0;
}

static void pp_map(unsigned char ip[16])
{
    memmove(ip + 12, ip, 4);
    memset(ip, 0, 10);
    ip[10] = ip[11] = 0xff;
}

int proxy_proto_header(int version, const struct sockaddr_storage *client,
                       const struct sockaddr_storage *server, unsigned char *out, size_t cap)
{
    static const unsigned char sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                          0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
    unsigned char cip[16], sip[16];
    uint16_t cport, sport;
    int cn = pp_addr(client, cip, &cport), sn = pp_addr(server, sip, &sport);

    if (!cn || !sn || cap < PROXY_PROTO_MAX || (version != 1 && version != 2))
        return -1;
    if (cn != sn) {
        if (cn == 4)
            pp_map(cip);
        else
            pp_map(sip);
        cn = sn = 16;
    }
    if (version == 1) {
        char c[INET6_ADDRSTRLEN], s[INET6_ADDRSTRLEN];
        int n;
        if (!inet_ntop(cn == 4 ? AF_INET : AF_INET6, cip, c, sizeof(c)) ||
            !inet_ntop(sn == 4 ? AF_INET : AF_INET6, sip, s, sizeof(s)))
            return -1;
        n = snprintf((char *)out, cap, "PROXY %s %s %s %u %u\r\n", cn == 4 ? "TCP4" : "TCP6", c,
                     s, (unsigned)cport, (unsigned)sport);
        return n > 0 && n <= PROXY_PROTO_V1_MAX ? n : -1;
    }
    {
        size_t alen = cn == 4 ? 12 : 36, off = 16;
        memcpy(out, sig, 12);
        out[12] = 0x21;                      /* version 2, PROXY */
        out[13] = cn == 4 ? 0x11 : 0x21;     /* AF_INET or AF_INET6, STREAM */
        out[14] = (unsigned char)(alen >> 8);
        out[15] = (unsigned char)alen;
        memcpy(out + off, cip, (size_t)cn);
        off += (size_t)cn;
        memcpy(out + off, sip, (size_t)sn);
        off += (size_t)sn;
        out[off++] = (unsigned char)(cport >> 8);
        out[off++] = (unsigned char)cport;
        out[off++] = (unsigned char)(sport >> 8);
        out[off++] = (unsigned char)sport;
        return (int)off;
    }
}

/* tcp_info.c - see tcp_info.h. */
#include "tcp_info.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <linux/tcp.h>

int tcp_send_rates(int fd, uint64_t *acked, uint64_t *rate)
{
    struct tcp_info ti;
    socklen_t len = sizeof(ti);

    memset(&ti, 0, sizeof(ti));
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0)
        return -1;
    /* Kernels before 4.9 give a shorter structure without the rate. */
    if (len < offsetof(struct tcp_info, tcpi_delivery_rate) + sizeof(ti.tcpi_delivery_rate)) {
        errno = ENOPROTOOPT;
        return -1;
    }
    *acked = ti.tcpi_bytes_acked;
    *rate = ti.tcpi_delivery_rate;
    return 0;
}

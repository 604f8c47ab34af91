/*
 * tcp_info.h - what the kernel knows of a TCP connection's sending (TCP_INFO).
 *
 * In a file of its own: the fields it reads are in <linux/tcp.h> only, which
 * cannot be included beside <netinet/tcp.h>.
 */
#ifndef TCP_INFO_H
#define TCP_INFO_H

#include <stdint.h>

/* What fd's sending has been acknowledged in all (tcpi_bytes_acked) and the
 * rate of its latest deliveries, bytes a second (tcpi_delivery_rate: what
 * the path carried then, a floor of what it can carry). 0, or -1 when the
 * kernel does not say (errno set). */
int tcp_send_rates(int fd, uint64_t *acked, uint64_t *rate);

#endif

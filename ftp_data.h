#ifndef FTP_DATA_H
#define FTP_DATA_H

/* FTP apps: the control connection's rewriting and the data connections
 * (docs/PROTOCOL.md "FTP", docs/OPERATIONS.md "FTP apps").
 *
 * Private side: a control connection is relayed through a pump thread that
 * sits between the relay and the FTP server (a socket pair) and runs the
 * rewriter of ftp.h over both directions. A 227/229 reply makes it ask the
 * public side for a data port (FTP_OPEN passive) and rewrite the reply with
 * the answer; a PORT/EPRT makes it ask whether the client's address may be
 * dialled (FTP_OPEN active: only the control connection's own client, RFC
 * 2577), listen for the server's data connection itself and rewrite the
 * command with that listener; when the server connects it says so
 * (FTP_CONNECT). Each answer is an expectation that one BUILD_CONNECTION
 * with "ftp": "data" may take, for a short time.
 *
 * Public side: FTP_OPEN passive takes a port of --ftp-ports, listens on the
 * address the client reached, accepts one connection from the control
 * connection's client address only (others are refused, data-port theft),
 * and relays it like any client connection; FTP_CONNECT dials the client
 * back (its own address only). The port stays taken while its data
 * connection lives; an unused one is freed after FTP_DATA_WAIT_MS. */

#include <stddef.h>

#include "tunnel.h"

#define FTP_PORTS_DEFAULT_LO 30000    /* --ftp-ports default: 30000-30999 */
#define FTP_PORTS_DEFAULT_HI 30999
#define FTP_DATA_WAIT_MS 20000        /* how long an offered data port waits */

/* From the tunnel's reader: the FTP operations (never blocks, never writes
 * to the tunnel). 0, or -1 with err to end the tunnel. */
int ftp_dispatch(struct tunnel *t, int is_public, struct pkt *p, char *err, size_t errlen);

/* "LOW-HIGH" (1024..65535, LOW <= HIGH, at most 16384 ports). 0 or -1. */
int ftp_parse_ports(const char *s, int *lo, int *hi);

/* Public side, before any tunnel: the data port range and the address put
 * into 227 replies (NULL or "": the address the client reached). 0, or -1
 * with err. */
int ftp_public_init(int lo, int hi, const char *public_address, char *err, size_t errlen);
/* Whether port lies in the data port range (apps may not use those). */
int ftp_public_port_in_range(int port);

/* Private side: a BUILD_CONNECTION with "ftp" in it (p is the reader's).
 * dial (with arg) dials the FTP server of a control connection, through the
 * allowlist. 0, -1 when refused (a CLOSE is sent), -2 to end the tunnel. */
int ftp_private_build(struct tunnel *t, struct pkt *p, conn_dial_fn dial, void *arg);

#endif

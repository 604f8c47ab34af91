#ifndef RATELIMIT_H
#define RATELIMIT_H

/* Failed-authentication rate limiting per source address, one table shared by
 * the tunnel port and the web port (they guard the same secret, so a guesser
 * gets one budget, not one per port).
 *
 * Policy: the first RATELIMIT_FREE_FAILS failures are free; each further
 * failure blocks the address for 1 s, 2 s, 4 s ... up to RATELIMIT_MAX_WAIT_MS.
 * A success resets the address. An address with no failure for
 * RATELIMIT_FORGET_MS (and no block in force) is forgotten.
 * Memory is fixed: RATELIMIT_SLOTS entries; when a new address finds no room,
 * the least recently failed entry nearby is evicted. Thread-safe. */

#include <stddef.h>

#define RATELIMIT_SLOTS 4096
#define RATELIMIT_FREE_FAILS 5
#define RATELIMIT_BASE_WAIT_MS 1000u
#define RATELIMIT_MAX_WAIT_MS (5u * 60u * 1000u)
#define RATELIMIT_FORGET_MS (10u * 60u * 1000u)

/* An IPv6 address in text is at most 45 characters (46 with the NUL); 48 as
 * in CivetWeb's remote_addr. */
#define RATELIMIT_KEY_LEN 48

/* 1 when ip must wait (refuse it without checking its secret), with the time
 * left in *wait_ms (may be NULL); 0 when it may try. */
int ratelimit_check(const char *ip, unsigned *wait_ms);

/* ip presented a wrong secret. */
void ratelimit_fail(const char *ip);

/* ip presented the right secret: forget its failures. */
void ratelimit_success(const char *ip);

/* The address part of "ip:port" (as net_peer_str writes it; IPv6 without
 * brackets, "[v6]:port" also accepted) into out. Returns out. */
const char *ratelimit_key(const char *addr_port, char out[RATELIMIT_KEY_LEN]);

/* Forget everything (tests). */
void ratelimit_reset(void);

#endif

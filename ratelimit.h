#ifndef RATELIMIT_H
#define RATELIMIT_H

/* Failed-authentication rate limiting per source address, one table for the
 * tunnel port and another for the web port. They guard the same secret, so a
 * guesser gets two budgets instead of one (twice 5 free guesses, then each
 * doubling wait on both ports: no real gain against 256 random bits); in
 * exchange, wrong tokens on the web page (a mistyped token, or strangers
 * behind the same carrier-grade NAT address) never lock a home proxy out of
 * the tunnel port, and a guesser on the tunnel port never locks the owner out
 * of the page.
 *
 * Callers pass the plain address text; it is grouped here (ratelimit_group()):
 * one budget per IPv4 address, per IPv6 /64, and one for the whole of loopback
 * (127.0.0.0/8 and ::1: one host); an IPv4-mapped IPv6 address counts as its
 * IPv4 address.
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

/* The group key of loopback addresses. */
#define RATELIMIT_LOOPBACK_GROUP "loopback"

/* The group ip belongs to, as text, into out: "loopback", "192.0.2.7",
 * "2001:db8:1:2::/64"; text that is not an address stands for itself; "" for
 * NULL, "" or text too long for a key. Returns out. */
const char *ratelimit_group(const char *ip, char out[RATELIMIT_KEY_LEN]);

#define RATELIMIT_TUNNEL 0
#define RATELIMIT_WEB 1
#define RATELIMIT_TABLES 2

/* The functions below on the table of the tunnel port; these on either. */
int ratelimit_check_in(int table, const char *ip, unsigned *wait_ms);
void ratelimit_fail_in(int table, const char *ip);
void ratelimit_success_in(int table, const char *ip);

/* 1 when ip must wait (refuse it without checking its secret), with the time
 * left in *wait_ms (may be NULL); 0 when it may try. */
int ratelimit_check(const char *ip, unsigned *wait_ms);

/* ip presented a wrong secret (counted for its group). */
void ratelimit_fail(const char *ip);

/* ip presented the right secret: forget the failures of its group. */
void ratelimit_success(const char *ip);

/* The address part of "ip:port" (as net_peer_str writes it; IPv6 without
 * brackets, "[v6]:port" also accepted) into out. Returns out. */
const char *ratelimit_key(const char *addr_port, char out[RATELIMIT_KEY_LEN]);

/* Forget everything (tests). */
void ratelimit_reset(void);

#endif

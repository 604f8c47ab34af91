/* ratelimit.c - failed-authentication rate limiting per source address.
 *
 * Addresses are grouped first (ratelimit_group()): one budget per IPv4
 * address, per IPv6 /64 (what one subscriber gets), and one for all of
 * loopback, so an attacker cannot multiply the budget by the addresses of one
 * network it controls.
 *
 * One fixed table of RATELIMIT_SLOTS entries per port (the tunnel port and
 * the web port), all under one mutex. A group hashes
 * (FNV-1a with a per-process random seed, so nobody can aim many addresses at
 * one spot) to a group of RL_PROBE neighbouring slots; lookups look at the whole
 * group, so removing an entry needs no tombstone. A new address takes a free or
 * expired slot of its group, else evicts the entry of the group that failed
 * least recently. Nothing is allocated, ever. */

#include "ratelimit.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#include "log.h"
#include "netio.h"

#define RL_PROBE 8

struct rl_entry {
    char ip[RATELIMIT_KEY_LEN];   /* the group (ratelimit_group()), "" = free */
    unsigned fails;               /* failures since the last reset */
    uint64_t last_fail_ms;        /* mono_ms() of the last failure */
    uint64_t until_ms;            /* blocked until this time (0 = not blocked) */
};

static struct rl_entry rl_tables[RATELIMIT_TABLES][RATELIMIT_SLOTS];
static pthread_mutex_t rl_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t rl_once = PTHREAD_ONCE_INIT;
static uint32_t rl_seed;

static void rl_init(void)
{
    uint32_t s = 0;

    /* A failed getrandom leaves a fixed seed: only the spread gets predictable. */
    if (getrandom(&s, sizeof(s), GRND_NONBLOCK) != (ssize_t)sizeof(s))
        s = 0x9e3779b9u;
    rl_seed = s;
}

static uint32_t rl_hash(const char *ip)
{
    uint32_t h = 2166136261u ^ rl_seed;

    for (; *ip; ip++) {
        h ^= (unsigned char)*ip;
        h *= 16777619u;
    }
    return h;
}

/* An entry that no longer says anything: no block in force and no failure for
 * RATELIMIT_FORGET_MS. */
static int rl_expired(const struct rl_entry *e, uint64_t now)
{
    return e->until_ms <= now && now - e->last_fail_ms >= RATELIMIT_FORGET_MS;
}

/* The entry of ip, or NULL. With create, a slot is found for it (evicting
 * if needed) and cleared. Called with rl_lock held. */
static struct rl_entry *rl_find(struct rl_entry *rl_table, const char *ip, int create,
                                uint64_t now)
{
    uint32_t base = rl_hash(ip) & (RATELIMIT_SLOTS - 1);
    struct rl_entry *victim = NULL;

    for (unsigned i = 0; i < RL_PROBE; i++) {
        struct rl_entry *e = &rl_table[(base + i) & (RATELIMIT_SLOTS - 1)];
        if (e->ip[0] && strcmp(e->ip, ip) == 0) {
            if (rl_expired(e, now)) {
                e->fails = 0;
                e->until_ms = 0;
            }
            return e;
        }
    }
    if (!create)
        return NULL;
    for (unsigned i = 0; i < RL_PROBE; i++) {
        struct rl_entry *e = &rl_table[(base + i) & (RATELIMIT_SLOTS - 1)];
        if (!e->ip[0] || rl_expired(e, now)) {
            victim = e;
            break;
        }
        if (!victim || e->last_fail_ms < victim->last_fail_ms)
            victim = e;
    }
    memset(victim, 0, sizeof(*victim));
    /* ip is at most RATELIMIT_KEY_LEN - 1 bytes (checked by the callers). */
    memcpy(victim->ip, ip, strlen(ip) + 1);
    return victim;
}

static int rl_index(int table)
{
    return table == RATELIMIT_WEB ? RATELIMIT_WEB : RATELIMIT_TUNNEL;
}

static int rl_key_ok(const char *ip)
{
    return ip && ip[0] && strlen(ip) < RATELIMIT_KEY_LEN;
}

/* IPv4 address in network byte order: its group. */
static void rl_group_v4(const struct in_addr *a, char out[RATELIMIT_KEY_LEN])
{
    if ((ntohl(a->s_addr) >> 24) == 127)
        snprintf(out, RATELIMIT_KEY_LEN, "%s", RATELIMIT_LOOPBACK_GROUP);
    else if (!inet_ntop(AF_INET, a, out, RATELIMIT_KEY_LEN))
        out[0] = '\0';
}

const char *ratelimit_group(const char *ip, char out[RATELIMIT_KEY_LEN])
{
    struct in_addr a4;
    struct in6_addr a6;
    char text[INET6_ADDRSTRLEN];

    out[0] = '\0';
    if (!rl_key_ok(ip))
        return out;
    if (inet_pton(AF_INET, ip, &a4) == 1) {
        rl_group_v4(&a4, out);
    } else if (inet_pton(AF_INET6, ip, &a6) == 1) {
        if (IN6_IS_ADDR_V4MAPPED(&a6)) {
            memcpy(&a4.s_addr, &a6.s6_addr[12], 4);
            rl_group_v4(&a4, out);
        } else if (IN6_IS_ADDR_LOOPBACK(&a6)) {
            snprintf(out, RATELIMIT_KEY_LEN, "%s", RATELIMIT_LOOPBACK_GROUP);
        } else {
            memset(&a6.s6_addr[8], 0, 8);
            if (inet_ntop(AF_INET6, &a6, text, sizeof(text)))
                snprintf(out, RATELIMIT_KEY_LEN, "%.40s/64", text); /* at most 21 + 3 */
        }
    } else {
        snprintf(out, RATELIMIT_KEY_LEN, "%s", ip); /* not an address: itself */
    }
    return out;
}

int ratelimit_check_in(int table, const char *ip, unsigned *wait_ms)
{
    uint64_t now = mono_ms();
    struct rl_entry *e;
    char group[RATELIMIT_KEY_LEN];
    int blocked = 0;

    if (wait_ms)
        *wait_ms = 0;
    if (!rl_key_ok(ratelimit_group(ip, group)))
        return 0;
    pthread_once(&rl_once, rl_init);
    pthread_mutex_lock(&rl_lock);
    e = rl_find(rl_tables[rl_index(table)], group, 0, now);
    if (e && e->until_ms > now) {
        blocked = 1;
        if (wait_ms)
            *wait_ms = (unsigned)(e->until_ms - now);
    }
    pthread_mutex_unlock(&rl_lock);
    return blocked;
}

void ratelimit_fail_in(int table, const char *ip)
{
    uint64_t now = mono_ms(), wait = 0;
    struct rl_entry *e;
    char group[RATELIMIT_KEY_LEN];
    unsigned fails;

    if (!rl_key_ok(ratelimit_group(ip, group)))
        return;
    pthread_once(&rl_once, rl_init);
    pthread_mutex_lock(&rl_lock);
    e = rl_find(rl_tables[rl_index(table)], group, 1, now);
    if (e->fails < UINT32_MAX)
        e->fails++;
    e->last_fail_ms = now;
    fails = e->fails;
    if (fails > RATELIMIT_FREE_FAILS) {
        unsigned shift = fails - RATELIMIT_FREE_FAILS - 1;
        wait = RATELIMIT_MAX_WAIT_MS;
        if (shift < 20 && ((uint64_t)RATELIMIT_BASE_WAIT_MS << shift) < RATELIMIT_MAX_WAIT_MS)
            wait = (uint64_t)RATELIMIT_BASE_WAIT_MS << shift;
        e->until_ms = now + wait;
    }
    pthread_mutex_unlock(&rl_lock);
    if (wait)
        log_warn("ev=rate_limit_block client=%s group=%s port=%s fails=%u wait_ms=%llu", ip,
                 group, table == RATELIMIT_WEB ? "web" : "tunnel", fails,
                 (unsigned long long)wait);
}

void ratelimit_success_in(int table, const char *ip)
{
    struct rl_entry *e;
    char group[RATELIMIT_KEY_LEN];

    if (!rl_key_ok(ratelimit_group(ip, group)))
        return;
    pthread_once(&rl_once, rl_init);
    pthread_mutex_lock(&rl_lock);
    e = rl_find(rl_tables[rl_index(table)], group, 0, mono_ms());
    if (e)
        memset(e, 0, sizeof(*e));
    pthread_mutex_unlock(&rl_lock);
}

const char *ratelimit_key(const char *addr_port, char out[RATELIMIT_KEY_LEN])
{
    const char *colon, *start = addr_port;
    size_t n;

    if (!addr_port) {
        out[0] = '\0';
        return out;
    }
    if (start[0] == '[') {
        start++;
        colon = strchr(start, ']');
    } else {
        colon = strrchr(start, ':');
    }
    n = colon ? (size_t)(colon - start) : strlen(start);
    if (n >= RATELIMIT_KEY_LEN)
        n = RATELIMIT_KEY_LEN - 1;
    memcpy(out, start, n);
    out[n] = '\0';
    return out;
}

void ratelimit_reset(void)
{
    pthread_mutex_lock(&rl_lock);
    memset(rl_tables, 0, sizeof(rl_tables));
    pthread_mutex_unlock(&rl_lock);
}

int ratelimit_check(const char *ip, unsigned *wait_ms)
{
    return ratelimit_check_in(RATELIMIT_TUNNEL, ip, wait_ms);
}

void ratelimit_fail(const char *ip)
{
    ratelimit_fail_in(RATELIMIT_TUNNEL, ip);
}

void ratelimit_success(const char *ip)
{
    ratelimit_success_in(RATELIMIT_TUNNEL, ip);
}

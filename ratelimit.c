/* ratelimit.c - failed-authentication rate limiting per source address.
 *
 * A fixed table of RATELIMIT_SLOTS entries under one mutex. An address hashes
 * (FNV-1a with a per-process random seed, so nobody can aim many addresses at
 * one spot) to a group of RL_PROBE neighbouring slots; lookups look at the whole
 * group, so removing an entry needs no tombstone. A new address takes a free or
 * expired slot of its group, else evicts the entry of the group that failed
 * least recently. Nothing is allocated, ever. */

#include "ratelimit.h"

#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>

#include "log.h"
#include "netio.h"

#define RL_PROBE 8

struct rl_entry {
    char ip[RATELIMIT_KEY_LEN];   /* "" = free */
    unsigned fails;               /* failures since the last reset */
    uint64_t last_fail_ms;        /* mono_ms() of the last failure */
    uint64_t until_ms;            /* blocked until this time (0 = not blocked) */
};

static struct rl_entry rl_table[RATELIMIT_SLOTS];
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
static struct rl_entry *rl_find(const char *ip, int create, uint64_t now)
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

static int rl_key_ok(const char *ip)
{
    return ip && ip[0] && strlen(ip) < RATELIMIT_KEY_LEN;
}

int ratelimit_check(const char *ip, unsigned *wait_ms)
{
    uint64_t now = mono_ms();
    struct rl_entry *e;
    int blocked = 0;

    if (wait_ms)
        *wait_ms = 0;
    if (!rl_key_ok(ip))
        return 0;
    pthread_once(&rl_once, rl_init);
    pthread_mutex_lock(&rl_lock);
    e = rl_find(ip, 0, now);
    if (e && e->until_ms > now) {
        blocked = 1;
        if (wait_ms)
            *wait_ms = (unsigned)(e->until_ms - now);
    }
    pthread_mutex_unlock(&rl_lock);
    return blocked;
}

void ratelimit_fail(const char *ip)
{
    uint64_t now = mono_ms(), wait = 0;
    struct rl_entry *e;
    unsigned fails;

    if (!rl_key_ok(ip))
        return;
    pthread_once(&rl_once, rl_init);
    pthread_mutex_lock(&rl_lock);
    e = rl_find(ip, 1, now);
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
        log_warn("ev=rate_limit_block client=%s fails=%u wait_ms=%llu", ip, fails,
                 (unsigned long long)wait);
}

void ratelimit_success(const char *ip)
{
    struct rl_entry *e;

    if (!rl_key_ok(ip))
        return;
    pthread_once(&rl_once, rl_init);
    pthread_mutex_lock(&rl_lock);
    e = rl_find(ip, 0, mono_ms());
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
    memset(rl_table, 0, sizeof(rl_table));
    pthread_mutex_unlock(&rl_lock);
}

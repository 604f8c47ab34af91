/* test_ratelimit.c - address grouping of ratelimit.c: one budget per IPv4
 * address, per IPv6 /64, one for all of loopback; IPv4-mapped IPv6 as IPv4. */

#include "unit.h"

#include <stdio.h>
#include <string.h>

#include "ratelimit.h"

static const char *group(const char *ip)
{
    static char out[RATELIMIT_KEY_LEN];
    return ratelimit_group(ip, out);
}

/* Wrong secrets from ip until it is blocked; how many were taken. */
static unsigned fail_until_blocked(const char *ip)
{
    unsigned n = 0;

    while (!ratelimit_check(ip, NULL) && n < 100) {
        ratelimit_fail(ip);
        n++;
    }
    return n;
}

void test_ratelimit_groups(void)
{
    static const struct {
        const char *ip, *group;
    } cases[] = {
        {"127.0.0.1", "loopback"},
        {"127.0.0.2", "loopback"},
        {"127.255.254.201", "loopback"},
        {"::1", "loopback"},
        {"::ffff:127.0.0.9", "loopback"},
        {"192.0.2.7", "192.0.2.7"},
        {"::ffff:192.0.2.7", "192.0.2.7"},
        {"::FFFF:192.0.2.7", "192.0.2.7"},
        {"128.0.0.1", "128.0.0.1"},
        {"126.255.255.255", "126.255.255.255"},
        {"2001:db8:1:2::1", "2001:db8:1:2::/64"},
        {"2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"},
        {"2001:DB8:1:2:0:0:0:9", "2001:db8:1:2::/64"},
        {"2001:db8:1:3::1", "2001:db8:1:3::/64"},
        {"fe80::1", "fe80::/64"},
        {"::2", "::/64"},
        {"?", "?"},
        {"fe80::1%eth0", "fe80::1%eth0"},
        {"", ""},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        CHECK(strcmp(group(cases[i].ip), cases[i].group) == 0, "%s -> %s, expected %s",
              cases[i].ip, group(cases[i].ip), cases[i].group);
    CHECK(strcmp(group(NULL), "") == 0, "NULL");
    {
        char longtext[RATELIMIT_KEY_LEN + 10];
        memset(longtext, 'a', sizeof(longtext) - 1);
        longtext[sizeof(longtext) - 1] = '\0';
        CHECK(strcmp(group(longtext), "") == 0, "too long for a key");
    }
}

void test_ratelimit_shared_budgets(void)
{
    unsigned n;

    /* Loopback: wrong secrets from many addresses add up to one block. */
    ratelimit_reset();
    for (unsigned i = 0; i < RATELIMIT_FREE_FAILS + 1; i++) {
        char ip[32];
        snprintf(ip, sizeof(ip), "127.0.%u.%u", i / 200, 2 + i % 200);
        CHECK(!ratelimit_check(ip, NULL), "%s blocked after %u failures", ip, i);
        ratelimit_fail(ip);
    }
    CHECK(ratelimit_check("127.0.0.1", NULL), "127.0.0.1 not blocked by its neighbours");
    CHECK(ratelimit_check("::1", NULL), "::1 not blocked with 127.0.0.0/8");
    CHECK(!ratelimit_check("192.0.2.1", NULL), "another host blocked");
    ratelimit_success("127.0.0.77");
    CHECK(!ratelimit_check("127.0.0.1", NULL), "the right secret from loopback did not reset it");

    /* IPv4: by the address. */
    ratelimit_reset();
    n = fail_until_blocked("192.0.2.1");
    CHECK(n == RATELIMIT_FREE_FAILS + 1, "blocked after %u failures", n);
    CHECK(ratelimit_check("::ffff:192.0.2.1", NULL), "the IPv4-mapped form is another budget");
    CHECK(!ratelimit_check("192.0.2.2", NULL), "the neighbour address is blocked too");

    /* IPv6: by the /64. */
    ratelimit_reset();
    for (unsigned i = 0; i < RATELIMIT_FREE_FAILS + 1; i++) {
        char ip[64];
        snprintf(ip, sizeof(ip), "2001:db8:5:6::%x", i + 1);
        ratelimit_fail(ip);
    }
    CHECK(ratelimit_check("2001:db8:5:6:ffff::1", NULL), "the /64 is not one budget");
    CHECK(!ratelimit_check("2001:db8:5:7::1", NULL), "the next /64 is blocked too");
    /* One table per port: the web port's failures never block the tunnel port. */
    ratelimit_reset();
    for (unsigned i = 0; i < RATELIMIT_FREE_FAILS + 1; i++)
        ratelimit_fail_in(RATELIMIT_WEB, "192.0.2.9");
    CHECK(ratelimit_check_in(RATELIMIT_WEB, "192.0.2.9", NULL), "the web table not blocked");
    CHECK(!ratelimit_check("192.0.2.9", NULL), "web failures blocked the tunnel port");
    CHECK(!ratelimit_check_in(RATELIMIT_TUNNEL, "192.0.2.9", NULL), "the same, by name");
    n = fail_until_blocked("192.0.2.9");
    CHECK(n == RATELIMIT_FREE_FAILS + 1, "the tunnel port's own budget: blocked after %u", n);
    ratelimit_success_in(RATELIMIT_WEB, "192.0.2.9");
    CHECK(!ratelimit_check_in(RATELIMIT_WEB, "192.0.2.9", NULL), "web success did not reset web");
    CHECK(ratelimit_check("192.0.2.9", NULL), "web success reset the tunnel table");
    ratelimit_reset();
}

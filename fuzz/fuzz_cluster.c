/* fuzz_cluster.c - libFuzzer harness for what the cluster reads that others
 * wrote: a node's entry as Redis holds it (cluster_parse_node) and the
 * --cluster URL (cluster_parse_url), both in cluster.c.
 *
 * The first byte chooses: even, the rest is a node entry; odd, the rest
 * (up to its first NUL) is a URL.
 *
 * Promises checked (abort on any break):
 *   - an entry is refused (NULL) or is an object whose name is a valid name,
 *     whose address splits into a valid host and a port 1..65535, whose
 *     counters are integers, privates valid names and apps 4 counters each;
 *   - a URL gives 0 or -1; an accepted one has 1..CLUSTER_SENTINELS_MAX
 *     hosts (one for redis://), each a valid host and port, a master name for
 *     sentinel://, and a shown form made of the scheme, user, hosts, master
 *     and database only (so never the password);
 *   - both run on a thread with the cluster threads' 256 KiB stack (netio.h
 *     THREAD_STACK_SIZE_TLS in a release build). */

#include <stdint.h>
#include <string.h>

#include "cluster.h"
#include "guard.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define STACK_SIZE (256u * 1024)

struct job {
    const char *buf;
    size_t len;
};

static void *run_node(void *arg)
{
    const struct job *j = arg;
    json_t *e = cluster_parse_node(j->buf, j->len), *v;
    char host[PKT_HOST_MAX + 1];
    const char *k;
    size_t i;
    int port;

    if (!e)
        return NULL;
    FUZZ_ASSERT(json_is_object(e));
    FUZZ_ASSERT(pkt_valid_name(json_string_value(json_object_get(e, "name"))));
    FUZZ_ASSERT(pkt_split_hostport(json_string_value(json_object_get(e, "address")), host,
                                   sizeof(host), &port) == 0 &&
                pkt_valid_host(host) && port >= 1 && port <= 65535);
    FUZZ_ASSERT(json_is_integer(json_object_get(e, "tunnels")) &&
                json_is_integer(json_object_get(e, "connections")) &&
                json_is_integer(json_object_get(e, "up_since")));
    json_array_foreach(json_object_get(e, "privates"), i, v)
        FUZZ_ASSERT(pkt_valid_name(json_string_value(v)));
    json_object_foreach(json_object_get(e, "apps"), k, v) {
        FUZZ_ASSERT(pkt_valid_name(k) && json_array_size(v) == 4);
        for (i = 0; i < 4; i++)
            FUZZ_ASSERT(json_integer_value(json_array_get(v, i)) >= 0);
    }
    json_decref(e);
    return NULL;
}

static void *run_url(void *arg)
{
    const struct job *j = arg;
    static char s[2048];
    struct cluster_url u;
    char err[512];
    size_t n = j->len < sizeof(s) - 1 ? j->len : sizeof(s) - 1;
    int r;

    memcpy(s, j->buf, n);
    s[n] = '\0';
    r = cluster_parse_url(s, &u, err, sizeof(err));
    FUZZ_ASSERT(r == 0 || r == -1);
    if (r != 0) {
        FUZZ_ASSERT(err[0]);
        return NULL;
    }
    FUZZ_ASSERT(u.nhosts >= 1 && u.nhosts <= CLUSTER_SENTINELS_MAX);
    FUZZ_ASSERT(u.sentinel || u.nhosts == 1);
    for (int i = 0; i < u.nhosts; i++)
        FUZZ_ASSERT(pkt_valid_host(u.hosts[i].host) && u.hosts[i].port >= 1 &&
                    u.hosts[i].port <= 65535);
    FUZZ_ASSERT(!u.sentinel || pkt_valid_name(u.master));
    FUZZ_ASSERT(strncmp(u.shown, u.sentinel ? "sentinel://" : "redis://",
                        u.sentinel ? 11 : 8) == 0);
    {
        /* The shown form is made of the other fields only: never the password. */
        char want[sizeof(u.shown)];
        size_t off = (size_t)snprintf(want, sizeof(want), "%s://%s%s",
                                      u.sentinel ? "sentinel" : "redis", u.user,
                                      u.user[0] ? "@" : "");
        for (int i = 0; i < u.nhosts && off < sizeof(want); i++) {
            int v6 = strchr(u.hosts[i].host, ':') != NULL;
            off += (size_t)snprintf(want + off, sizeof(want) - off, "%s%s%s%s:%d",
                                    i ? "," : "", v6 ? "[" : "", u.hosts[i].host,
                                    v6 ? "]" : "", u.hosts[i].port);
        }
        if (off < sizeof(want))
            snprintf(want + off, sizeof(want) - off, "%s%s/%d", u.sentinel ? "/" : "",
                     u.master, u.db);
        FUZZ_ASSERT(strcmp(want, u.shown) == 0);
    }
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct job j;

    if (size < 1 || size > 600 * 1024)
        return 0;
    j.buf = (const char *)guarded_copy(data + 1, size - 1);
    j.len = size - 1;
    fuzz_run_on_stack(data[0] & 1 ? run_url : run_node, &j, STACK_SIZE);
    return 0;
}

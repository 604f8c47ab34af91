/* service.c - readiness and reload notifications to systemd (sd_notify(3)
 * protocol, written out: one datagram to $NOTIFY_SOCKET). */

#include "service.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

void sd_notify_state(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa;
    char msg[128];
    size_t len;
    socklen_t salen;
    int fd, n;

    if (!path || !path[0] || !state)
        return;
    len = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || len >= sizeof(sa.sun_path))
        return;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, len);
    if (path[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract namespace */
    salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    if (strcmp(state, "RELOADING=1") == 0) {
        /* systemd 253+ (Type=notify-reload) wants the time of the reload
         * with it; older ones ignore the field. */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        n = snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%llu",
                     (unsigned long long)ts.tv_sec * 1000000ULL +
                         (unsigned long long)ts.tv_nsec / 1000ULL);
    } else {
        n = snprintf(msg, sizeof(msg), "%s", state);
    }
    if (n < 0 || (size_t)n >= sizeof(msg))
        return;
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    (void)sendto(fd, msg, (size_t)n, MSG_NOSIGNAL, (struct sockaddr *)&sa, salen);
    close(fd);
}

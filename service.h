#ifndef SERVICE_H
#define SERVICE_H

/* Running under systemd without libsystemd.
 *
 * sd_notify_state() sends one state line ("READY=1", "RELOADING=1",
 * "STOPPING=1", ...) to $NOTIFY_SOCKET, the datagram socket systemd gives a
 * Type=notify service (a path, or an abstract name when it starts with '@'),
 * as sd_notify(3) describes. Without NOTIFY_SOCKET it does nothing. Failures
 * are ignored: readiness is a courtesy to the service manager. */

void sd_notify_state(const char *state);

#endif

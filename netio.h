#ifndef NETIO_H
#define NETIO_H

/* Small socket and thread helpers shared by both proxies. */

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

/* gcc says it builds with a sanitizer by a macro, clang by __has_feature. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define NETIO_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define NETIO_SANITIZED 1
#endif
#endif

/* Stack for relay and acceptor threads: small on purpose (thousands of threads);
 * no function run on it keeps more than a few KiB on the stack. */
#ifdef NETIO_SANITIZED
#define THREAD_STACK_SIZE (512 * 1024)   /* sanitizers need far more stack */
#else
#define THREAD_STACK_SIZE (64 * 1024)
#endif

/* Parse a port number 1..65535 (the whole string). 0 or -1. */
int net_parse_port(const char *s, int *out);
/* Parse "PORT" or "LOW-HIGH" ranges joined by commas (1-65535) into
 * lo[i], hi[i], at most max of them: their number, or -1 (malformed, empty,
 * or more than max). */
int net_parse_port_ranges(const char *s, int *lo, int *hi, int max);

/* Milliseconds on CLOCK_MONOTONIC. */
uint64_t mono_ms(void);
/* Sleep about ms milliseconds (an interrupting signal cuts it short). */
void sleep_ms(unsigned ms);

/* Write all of buf to a blocking socket: retries EINTR and short writes, never
 * raises SIGPIPE. 0 on success, -1 with errno set. */
int net_write_all(int fd, const void *buf, size_t len);

/* Listen on addr:port. addr: an IPv4 or IPv6 literal ("2001:db8::1" or
 * "[2001:db8::1]"; IPv6 only), or NULL for every address of both families on
 * one dual-stack socket (IPv4 peers appear IPv4-mapped: net_unmap), IPv4
 * alone when the kernel has no IPv6 (net_ipv6_missing). Returns the fd or -1
 * with a reason in err. */
int net_listen(const char *addr, int port, int backlog, char *err, size_t errlen);

/* A UDP socket bound to addr:port (addr as net_listen's), with
 * NET_UDP_BUFFER_APP socket buffers. The fd or -1 with a reason in err (errno
 * kept, EADDRINUSE when the port is taken). */
int net_bind_udp(const char *addr, int port, char *err, size_t errlen);
#define NET_UDP_BUFFER_APP (4 * 1024 * 1024)     /* an app's socket: all its clients */
#define NET_UDP_BUFFER_SESSION (256 * 1024)      /* one session's socket at home */
/* Ask for socket buffers of bytes each way (capped by the kernel). */
void net_udp_buffers(int fd, int bytes);

/* The addresses a server listens on (--bind, repeatable): none means every
 * address of both families (net_listen's NULL). */
#define NET_BIND_MAX 8
#define NET_ADDR_TEXT_MAX 64
struct net_binds {
    int n;
    char addr[NET_BIND_MAX][NET_ADDR_TEXT_MAX];
};
/* Add the addresses of list (one, or several joined by commas or blanks),
 * each checked. 0, or -1 with err. */
int net_binds_add(struct net_binds *b, const char *list, char *err, size_t errlen);
/* "[::]+0.0.0.0" (the default, dual-stack), "0.0.0.0" (no IPv6), or the
 * addresses joined by commas, IPv6 in brackets. For logs. */
void net_binds_str(const struct net_binds *b, char *out, size_t cap);
/* A TCP listener (udp 0) or bound UDP socket (udp 1) on port at each address
 * of b (b NULL or empty: one wildcard socket). fds[] gets them; returns how
 * many, or -1 with err (none left open, errno kept). */
int net_listen_all(const struct net_binds *b, int udp, int port, int backlog, int fds[NET_BIND_MAX],
                   char *err, size_t errlen);

/* Connect to host:port within timeout_ms. Returns a blocking fd or -1 with a
 * reason in err ("connection refused", "timed out", ...). */
int net_dial(const char *host, int port, int timeout_ms, char *err, size_t errlen);

/* TCP_NODELAY and keepalive, so dead peers are found and small writes go out. */
void net_tune(int fd);

int net_set_nonblock(int fd, int on);

/* 1 when a wildcard listener had to fall back to IPv4 (no IPv6 in the kernel). */
int net_ipv6_missing(void);
/* An IPv4 or IPv6 literal (brackets allowed around IPv6) and a port into *ss.
 * 0, or -1 when it is not an address. */
int net_parse_addr(const char *addr, int port, struct sockaddr_storage *ss, socklen_t *len);
/* "192.0.2.1:5000" or "[2001:db8::1]:443" (literals, no scope, port 1..65535)
 * into *ss. 0 or -1. */
int net_parse_addrport(const char *s, struct sockaddr_storage *ss);
/* An IPv4-mapped IPv6 address (::ffff:a.b.c.d, as a dual-stack socket shows
 * IPv4 peers) made plain IPv4 in place; anything else left alone. */
void net_unmap(struct sockaddr_storage *ss);
int net_sa_port(const struct sockaddr_storage *ss);
/* The address alone ("192.0.2.1", "2001:db8::1"; mapped ones as IPv4), "?". */
void net_ip_str(const struct sockaddr_storage *ss, char *out, size_t cap);
/* Address and port in their usual notation: "192.0.2.1:5000",
 * "[2001:db8::1]:443" (mapped ones as IPv4). */
void net_sa_str(const struct sockaddr_storage *ss, char *out, size_t cap);
/* host:port, host in brackets when it holds a colon (IPv6). */
void net_hostport_str(const char *host, int port, char *out, size_t cap);

/* Address and port of the peer of fd in the notation of net_sa_str, or "?:0" */
void net_peer_str(int fd, char *out, size_t cap);
/* The same for fd's own (local) address. */
void net_local_str(int fd, char *out, size_t cap);
/* net_sa_str, "?" for an unknown family. */
void net_addr_str(const struct sockaddr_storage *ss, char *out, size_t cap);

/* Run fn(arg) on its own detached thread (THREAD_STACK_SIZE stack, the
 * caller's signal mask): a parked thread from an earlier job when there is one,
 * else a new one. 0 on success, else an error number. */
int thread_spawn(void *(*fn)(void *), void *arg);

/* Threads that run OpenSSL handshakes need more stack than relays. */
#ifdef NETIO_SANITIZED
#define THREAD_STACK_SIZE_TLS (1024 * 1024)
#else
#define THREAD_STACK_SIZE_TLS (256 * 1024)
#endif

/* The same with an explicit stack size; such threads are not reused. */
int thread_spawn_sized(void *(*fn)(void *), void *arg, size_t stack);

/* The source a connection counts against in per-source caps: an IPv4
 * address as itself (IPv4-mapped, so both families compare), an IPv6 address
 * by its /64 (what one subscriber gets). Compare keys with memcmp. */
#define NET_SOURCE_KEY_LEN 16
void net_source_key(const struct sockaddr_storage *ss, unsigned char key[NET_SOURCE_KEY_LEN]);

/* Raise RLIMIT_NOFILE's soft limit to its hard limit; returns the new soft limit. */
long net_raise_fd_limit(void);

#endif

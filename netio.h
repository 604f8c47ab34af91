#ifndef NETIO_H
#define NETIO_H

/* Small socket and thread helpers shared by both proxies. */

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
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

/* Milliseconds on CLOCK_MONOTONIC. */
uint64_t mono_ms(void);

/* Write all of buf to a blocking socket: retries EINTR and short writes, never
 * raises SIGPIPE. 0 on success, -1 with errno set. */
int net_write_all(int fd, const void *buf, size_t len);

/* Listen on addr:port (addr NULL = all IPv4 addresses). Returns the fd or -1 with
 * a reason in err. */
int net_listen(const char *addr, int port, int backlog, char *err, size_t errlen);

/* Connect to host:port within timeout_ms. Returns a blocking fd or -1 with a
 * reason in err ("connection refused", "timed out", ...). */
int net_dial(const char *host, int port, int timeout_ms, char *err, size_t errlen);

/* TCP_NODELAY and keepalive, so dead peers are found and small writes go out. */
void net_tune(int fd);

int net_set_nonblock(int fd, int on);

/* "ip:port" of the peer of fd, or "?" */
void net_peer_str(int fd, char *out, size_t cap);

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

/* Raise RLIMIT_NOFILE's soft limit to its hard limit; returns the new soft limit. */
long net_raise_fd_limit(void);

#endif

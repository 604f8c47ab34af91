#ifndef UNIT_H
#define UNIT_H

/* A tiny test runner: no framework, each test in its own process with a time
 * limit (see main() in test_packet.c). CHECK records a failure with its place
 * and a message and goes on, so one run reports every broken case. */

#include <stddef.h>

extern int unit_failures;
extern int unit_known;

void unit_fail(const char *file, int line, const char *expr, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* A documented bug of the code under test: reported, but only a failure when
 * UNIT_STRICT=1, so `make test` stays usable until it is fixed. */
void unit_known_bug(const char *file, int line, const char *expr, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define CHECK(cond, ...)                                                \
    do {                                                                \
        if (!(cond))                                                    \
            unit_fail(__FILE__, __LINE__, #cond, __VA_ARGS__);          \
    } while (0)

#define KNOWN_BUG(cond, ...)                                            \
    do {                                                                \
        if (!(cond))                                                    \
            unit_known_bug(__FILE__, __LINE__, #cond, __VA_ARGS__);     \
    } while (0)

/* Printable copy of bytes for failure messages (static buffer, one at a time). */
const char *unit_show(const void *p, size_t n);

/* Tests in other files. */
void test_state_ensure_dir(void);
void test_state_write_read(void);
void test_state_write_failures(void);
void test_state_read_limits(void);
void test_state_token(void);
void test_registry_spec(void);
void test_log_escape(void);
void test_tlsrec_tamper(void);
void test_tlsrec_self(void);
void test_tlsrec_large_frame(void);
void test_tlsrec_openssl_interop(void);
void test_tlsrec_key_update_answered(void);

#endif

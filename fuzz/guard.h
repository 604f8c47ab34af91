#ifndef FUZZ_GUARD_H
#define FUZZ_GUARD_H

/* Shared by the harnesses: an assertion that names the broken promise, a
 * copy of the input that ends right before a PROT_NONE page, so a read past the
 * end faults even inside libjansson, which AddressSanitizer does not instrument,
 * and a run on a thread with the stack the code has in the programs. */

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define FUZZ_ASSERT(cond)                                                                 \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "fuzz: broken promise at %s:%d: %s\n", __FILE__, __LINE__,   \
                    #cond);                                                               \
            abort();                                                                      \
        }                                                                                 \
    } while (0)

/* Largest copy guarded_copy() makes. */
#define FUZZ_GUARD_CAP (4u * 1024 * 1024)

/* Copy buf[0..n) (n <= FUZZ_GUARD_CAP) to the end of a buffer followed by an
 * inaccessible page. One buffer, reused: a copy is good until the next call. */
static inline uint8_t *guarded_copy(const uint8_t *buf, size_t n)
{
    static uint8_t *region;
    static size_t cap;
    uint8_t *c;

    if (!region) {
        size_t pg = (size_t)sysconf(_SC_PAGESIZE);
        cap = (FUZZ_GUARD_CAP + pg - 1) / pg * pg;
        region = mmap(NULL, cap + pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        FUZZ_ASSERT(region != MAP_FAILED);
        FUZZ_ASSERT(mprotect(region + cap, pg, PROT_NONE) == 0);
    }
    FUZZ_ASSERT(n <= cap);
    c = region + cap - n;
    if (n)
        memcpy(c, buf, n);
    return c;
}

/* Run fn(arg) on a thread of its own with a stack of stack_size bytes (the
 * size the code under test runs on in the programs), and wait for it. */
static inline void fuzz_run_on_stack(void *(*fn)(void *), void *arg, size_t stack_size)
{
    pthread_attr_t attr;
    pthread_t tid;

    FUZZ_ASSERT(pthread_attr_init(&attr) == 0);
    FUZZ_ASSERT(pthread_attr_setstacksize(&attr, stack_size) == 0);
    FUZZ_ASSERT(pthread_create(&tid, &attr, fn, arg) == 0);
    FUZZ_ASSERT(pthread_join(tid, NULL) == 0);
    pthread_attr_destroy(&attr);
}

#endif

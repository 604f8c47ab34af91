#ifndef STATE_H
#define STATE_H

/* The public side's state directory: owner-only, files replaced atomically. */

#include <stddef.h>

/* Create dir (0700) if missing and make sure only the owner can use it. */
int state_ensure_dir(const char *dir, char *err, size_t errlen);

/* Replace dir/name with data: temporary file, fsync, rename, fsync of the
 * directory. The old file is untouched on any failure. 0 or -1 with err. */
int state_write_atomic(const char *dir, const char *name, const char *data, size_t len, char *err,
                       size_t errlen);

/* Read dir/name (at most maxlen bytes) into a new NUL-terminated buffer.
 * NULL with errno ENOENT when missing; NULL with err set on other errors. */
char *state_read(const char *dir, const char *name, size_t maxlen, size_t *lenp, char *err,
                 size_t errlen);

/* The token from dir/token, created (32 random bytes, hex) when missing.
 * *created tells whether it was made now. Returns a new string or NULL. */
char *state_token(const char *dir, int *created, char *err, size_t errlen);

#endif

#ifndef STATE_H
#define STATE_H

/* The public side's state directory, checked the way OpenSSH's StrictModes
 * checks ~/.ssh: it and every file we use in it must be ours and writable by
 * nobody else, and no symbolic link is followed. The directory is opened once;
 * every later file operation is relative to that descriptor, so renaming the
 * directory (or a parent) after the check cannot redirect a read or a write. */

#include <jansson.h>
#include <limits.h>
#include <stddef.h>

struct state_dir {
    int fd;                 /* O_DIRECTORY|O_NOFOLLOW, checked; -1 when not open */
    char path[PATH_MAX];    /* as given (trailing slashes removed): for messages only */
};

/* Open path as the state directory; create it 0700 when missing. Refused
 * (-1, err says what is wrong and how to fix it) when it is a symbolic link,
 * not a directory, not owned by the effective uid, or writable by group or
 * others. An owned directory that others may merely read or enter is
 * tightened to 0700. The caller closes it with state_dir_close(). */
int state_dir_open(struct state_dir *sd, const char *path, char *err, size_t errlen);
void state_dir_close(struct state_dir *sd);

/* Replace sd/name with data: a new temporary file with an unpredictable name
 * (O_CREAT|O_EXCL|O_NOFOLLOW, 0600), fsync, rename over name, fsync of the
 * directory. The old file is untouched and the temporary removed on any
 * failure. An existing sd/name that fails the file checks (see state_read) is
 * refused, not replaced. name is one plain file name (no '/', no leading
 * '.'). 0 or -1 with err. */
int state_write_atomic(const struct state_dir *sd, const char *name, const char *data, size_t len,
                       char *err, size_t errlen);

/* root as JSON (indented, keys sorted) into sd/name with state_write_atomic.
 * 0, or -1 with err ("out of memory", or "could not save the change, nothing
 * was changed: " and why). */
int state_write_json(const struct state_dir *sd, const char *name, json_t *root, char *err,
                     size_t errlen);

/* Read sd/name (at most maxlen bytes) into a new NUL-terminated buffer.
 * NULL with errno ENOENT and err "" when missing; NULL with err set when it is
 * a symbolic link, not a regular file, not owned by the effective uid,
 * writable by group or others, too large or unreadable. A file that others
 * may merely read is tightened to 0600. */
char *state_read(const struct state_dir *sd, const char *name, size_t maxlen, size_t *lenp,
                 char *err, size_t errlen);

/* The token from sd/token, created (32 random bytes, hex) when missing.
 * *created tells whether it was made now. Returns a new string or NULL. */
char *state_token(const struct state_dir *sd, int *created, char *err, size_t errlen);

/* Read all of fd (at most maxlen bytes) into a new NUL-terminated buffer;
 * what names the file in err. NULL with err on failure. */
char *state_read_fd(int fd, size_t maxlen, size_t *lenp, const char *what, char *err,
                    size_t errlen);

/* Unit tests only: replace the source of the temporary names' random bytes
 * (fill returns 0 when buf is filled); NULL restores getrandom(). */
void state_set_random_for_tests(int (*fill)(void *buf, size_t len));

#endif

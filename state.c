/* state.c - files of the public side's state directory. Writes never leave a
 * half-written file behind: a crash or a full disk keeps the old version. */

#include "state.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

int state_ensure_dir(const char *dir, char *err, size_t errlen)
{
    struct stat st;

    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create state directory %s: %s", dir, strerror(errno));
        return -1;
    }
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "state directory %s is not a directory", dir);
        return -1;
    }
    /* The token lives here: nobody else may read it. */
    if ((st.st_mode & 077) && chmod(dir, 0700) != 0) {
        snprintf(err, errlen, "cannot restrict %s to its owner: %s", dir, strerror(errno));
        return -1;
    }
    return 0;
}

static int write_all_fd(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int state_write_atomic(const char *dir, const char *name, const char *data, size_t len, char *err,
                       size_t errlen)
{
    char tmp[PATH_MAX], dst[PATH_MAX];
    int fd = -1, dfd = -1, rc = -1;

    if (snprintf(tmp, sizeof(tmp), "%s/.%s.tmp.%ld", dir, name, (long)getpid()) >= (int)sizeof(tmp) ||
        snprintf(dst, sizeof(dst), "%s/%s", dir, name) >= (int)sizeof(dst)) {
        snprintf(err, errlen, "state path too long");
        return -1;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
        goto out;
    }
    if (write_all_fd(fd, data, len) != 0 || fsync(fd) != 0) {
        snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
        goto out;
    }
    if (close(fd) != 0) {
        fd = -1;
        snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
        goto out;
    }
    fd = -1;
    if (rename(tmp, dst) != 0) {
        snprintf(err, errlen, "cannot replace %s: %s", dst, strerror(errno));
        goto out;
    }
    /* Make the rename itself durable. */
    dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0)
        (void)fsync(dfd);
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    if (dfd >= 0)
        close(dfd);
    if (rc != 0)
        unlink(tmp);
    return rc;
}

char *state_read(const char *dir, const char *name, size_t maxlen, size_t *lenp, char *err,
                 size_t errlen)
{
    char path[PATH_MAX];
    char *buf = NULL;
    size_t len = 0;
    int fd;

    err[0] = '\0';
    if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path)) {
        snprintf(err, errlen, "state path too long");
        return NULL;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno != ENOENT)
            snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return NULL;
    }
    buf = malloc(maxlen + 1);
    if (!buf) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (;;) {
        ssize_t n = read(fd, buf + len, maxlen + 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
            goto fail;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len > maxlen) {
            snprintf(err, errlen, "%s is larger than %zu bytes", path, maxlen);
            goto fail;
        }
    }
    close(fd);
    buf[len] = '\0';
    if (lenp)
        *lenp = len;
    return buf;
fail:
    close(fd);
    free(buf);
    return NULL;
}

char *state_token(const char *dir, int *created, char *err, size_t errlen)
{
    unsigned char rnd[32];
    char hex[sizeof(rnd) * 2 + 2];
    size_t len = 0;
    char *tok = state_read(dir, "token", 1024, &len, err, errlen);

    *created = 0;
    if (tok) {
        while (len > 0 && (tok[len - 1] == '\n' || tok[len - 1] == '\r' || tok[len - 1] == ' '))
            tok[--len] = '\0';
        if (len == 0) {
            snprintf(err, errlen, "%s/token is empty", dir);
            free(tok);
            return NULL;
        }
        return tok;
    }
    if (err[0])
        return NULL;
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
        snprintf(err, errlen, "cannot get random bytes: %s", strerror(errno));
        return NULL;
    }
    for (size_t i = 0; i < sizeof(rnd); i++)
        snprintf(hex + 2 * i, 3, "%02x", rnd[i]);
    if (state_write_atomic(dir, "token", hex, strlen(hex), err, errlen) != 0)
        return NULL;
    *created = 1;
    return strdup(hex);
}

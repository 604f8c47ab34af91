/* state.c - the public side's state directory.
 *
 * Checked like OpenSSH's StrictModes: the directory and every file we use in it
 * must belong to us and be writable by nobody else, and no symbolic link is
 * followed, so a local user who got there first (a world-writable working
 * directory, a planted link) cannot hand us their token or TLS key, nor make us
 * write outside the directory. The directory is opened once and every later
 * operation is relative to that descriptor (openat, renameat, fstatat,
 * unlinkat): renaming the directory or a parent after the check changes
 * nothing. Writes never leave a half-written file behind: a crash or a full
 * disk keeps the old version. */

#include "state.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

/* Longest file name we use in the directory (ours are all short). */
#define STATE_NAME_MAX 64
/* Random bytes in a temporary name (hex-encoded), and how many fresh names we
 * try: with 64 random bits a clash means someone planted names, not bad luck. */
#define TMP_RANDOM_BYTES 8
#define TMP_TRIES 8

static int (*random_fill)(void *buf, size_t len);

void state_set_random_for_tests(int (*fill)(void *buf, size_t len))
{
    random_fill = fill;
}

static int sys_random(void *buf, size_t len)
{
    ssize_t n;

    do
        n = getrandom(buf, len, 0);
    while (n < 0 && errno == EINTR);
    return n == (ssize_t)len ? 0 : -1;
}

/* Random bytes for temporary names (the tests may replace the source). */
static int tmp_random(void *buf, size_t len)
{
    return random_fill ? random_fill(buf, len) : sys_random(buf, len);
}

static const char *kind_of(mode_t m)
{
    if (S_ISLNK(m))
        return "symbolic link";
    if (S_ISDIR(m))
        return "directory";
    if (S_ISREG(m))
        return "regular file";
    if (S_ISFIFO(m))
        return "FIFO";
    if (S_ISSOCK(m))
        return "socket";
    if (S_ISCHR(m) || S_ISBLK(m))
        return "device";
    return "special file";
}

static const char *writers(mode_t m)
{
    if ((m & 022) == 022)
        return "group and others";
    return (m & 002) ? "others" : "group";
}

/* Open path once, check what was opened (not the path, which could change),
 * then keep only the descriptor. A directory we have just made must be ours
 * like any other: nobody else can make a directory owned by us, so an owner
 * check on the opened descriptor also catches a swap between mkdir and open. */
int state_dir_open(struct state_dir *sd, const char *path, char *err, size_t errlen)
{
    struct stat st;
    uid_t me = geteuid();
    size_t n = strlen(path);
    int made = 0, fd = -1;

    sd->fd = -1;
    if (n == 0 || n >= sizeof(sd->path)) {
        snprintf(err, errlen, "state directory path is empty or longer than %zu bytes",
                 sizeof(sd->path) - 1);
        return -1;
    }
    memcpy(sd->path, path, n + 1);
    /* A trailing slash makes open() follow a symbolic link despite O_NOFOLLOW. */
    while (n > 1 && sd->path[n - 1] == '/')
        sd->path[--n] = '\0';

    if (mkdir(sd->path, 0700) == 0) {
        made = 1;
    } else if (errno != EEXIST) {
        snprintf(err, errlen, "cannot create state directory %s: %s", sd->path, strerror(errno));
        goto fail;
    }
    fd = open(sd->path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        if (lstat(sd->path, &st) == 0 && S_ISLNK(st.st_mode))
            snprintf(err, errlen,
                     "state directory %s is a symbolic link: refusing it (a link could lead "
                     "anywhere); give the real directory to --state-dir, or remove the link",
                     sd->path);
        else if (e == ENOTDIR)
            snprintf(err, errlen,
                     "state directory %s is not a directory: refusing it; move it away or "
                     "choose --state-dir",
                     sd->path);
        else
            snprintf(err, errlen, "cannot open state directory %s: %s", sd->path, strerror(e));
        goto fail;
    }
    if (fstat(fd, &st) != 0) {
        snprintf(err, errlen, "cannot examine state directory %s: %s", sd->path, strerror(errno));
        goto fail;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "state directory %s is a %s, not a directory: refusing it",
                 sd->path, kind_of(st.st_mode));
        goto fail;
    }
    if (st.st_uid != me) {
        snprintf(err, errlen,
                 "state directory %s is owned by uid %u, not by you (uid %u): refusing it (its "
                 "owner could have planted the token and the TLS key); remove it or choose "
                 "--state-dir",
                 sd->path, (unsigned)st.st_uid, (unsigned)me);
        goto fail;
    }
    if (st.st_mode & 022) {
        snprintf(err, errlen,
                 "state directory %s is writable by %s (mode %04o): refusing it (whoever can "
                 "write there can plant or swap its files); check what is in it, then "
                 "chmod 700 %s, or choose --state-dir",
                 sd->path, writers(st.st_mode), (unsigned)(st.st_mode & 07777), sd->path);
        goto fail;
    }
    /* mkdir(0700) gives nothing to group or others: this is not what we made. */
    if (made && (st.st_mode & 077)) {
        snprintf(err, errlen,
                 "state directory %s changed between its creation and its opening (mode "
                 "%04o): refusing it",
                 sd->path, (unsigned)(st.st_mode & 07777));
        goto fail;
    }
    /* The token lives here: nobody else may read it. A directory we made
     * under an odd umask gets its owner bits back. */
    if (((st.st_mode & 077) || (made && (st.st_mode & 0700) != 0700)) && fchmod(fd, 0700) != 0) {
        snprintf(err, errlen, "cannot restrict state directory %s to its owner (chmod 700): %s",
                 sd->path, strerror(errno));
        goto fail;
    }
    sd->fd = fd;
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    return -1;
}

void state_dir_close(struct state_dir *sd)
{
    if (sd->fd >= 0)
        close(sd->fd);
    sd->fd = -1;
}

/* One plain name inside the directory: openat() must not walk anywhere else,
 * and names starting with '.' are our temporaries. */
static int check_name(const struct state_dir *sd, const char *name, char *err, size_t errlen)
{
    size_t n = strlen(name);

    if (sd->fd < 0) {
        snprintf(err, errlen, "state directory is not open");
        return -1;
    }
    if (n == 0 || n > STATE_NAME_MAX || name[0] == '.' || strchr(name, '/')) {
        snprintf(err, errlen, "bad state file name \"%.*s%s\"", 40, name, n > 40 ? "..." : "");
        return -1;
    }
    return 0;
}

/* The StrictModes rules for a file in the directory, on what lstat/fstat saw. */
static int check_file(const struct state_dir *sd, const char *name, const struct stat *st,
                      char *err, size_t errlen)
{
    uid_t me = geteuid();

    if (S_ISLNK(st->st_mode)) {
        snprintf(err, errlen,
                 "%s/%s is a symbolic link: refusing it (a link could lead anywhere; state files "
                 "must be regular files); remove the link",
                 sd->path, name);
        return -1;
    }
    if (!S_ISREG(st->st_mode)) {
        snprintf(err, errlen, "%s/%s is a %s, not a regular file: refusing it; move it away",
                 sd->path, name, kind_of(st->st_mode));
        return -1;
    }
    if (st->st_uid != me) {
        snprintf(err, errlen,
                 "%s/%s is owned by uid %u, not by you (uid %u): refusing it (its owner chose "
                 "what it holds); remove it, or chown it to uid %u if you trust its contents",
                 sd->path, name, (unsigned)st->st_uid, (unsigned)me, (unsigned)me);
        return -1;
    }
    if (st->st_mode & 022) {
        snprintf(err, errlen,
                 "%s/%s is writable by %s (mode %04o): refusing it; check its contents, then "
                 "chmod 600 %s/%s",
                 sd->path, name, writers(st->st_mode), (unsigned)(st->st_mode & 07777), sd->path,
                 name);
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

/* Like mkstemp(), relative to the directory descriptor: ".NAME.tmp." and 16
 * random hex digits, created with O_EXCL|O_NOFOLLOW so that nothing already
 * there (a planted file or link) is ever opened. -1 with err. */
static int create_temp(const struct state_dir *sd, const char *name, char *tmp, size_t cap,
                       char *err, size_t errlen)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char rnd[TMP_RANDOM_BYTES];
    int fd = -1;

    for (int i = 0; i < TMP_TRIES && fd < 0; i++) {
        size_t off;
        if (tmp_random(rnd, sizeof(rnd)) != 0) {
            snprintf(err, errlen, "cannot get random bytes for a temporary file name: %s",
                     strerror(errno));
            return -1;
        }
        off = (size_t)snprintf(tmp, cap, ".%s.tmp.", name);
        if (off + 2 * sizeof(rnd) + 1 > cap) {
            snprintf(err, errlen, "state file name too long");
            return -1;
        }
        for (size_t j = 0; j < sizeof(rnd); j++) {
            tmp[off++] = hex[rnd[j] >> 4];
            tmp[off++] = hex[rnd[j] & 15];
        }
        tmp[off] = '\0';
        fd = openat(sd->fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0 && errno != EEXIST)
            break;
    }
    if (fd < 0)
        snprintf(err, errlen, "cannot create a temporary file for %s/%s: %s", sd->path, name,
                 strerror(errno));
    return fd;
}

int state_write_atomic(const struct state_dir *sd, const char *name, const char *data, size_t len,
                       char *err, size_t errlen)
{
    char tmp[STATE_NAME_MAX + 32];
    struct stat st;
    int fd = -1, have_tmp = 0, rc = -1, r;

    if (check_name(sd, name, err, errlen) != 0)
        return -1;
    /* Never replace what we would refuse to read: it means someone tampered. */
    if (fstatat(sd->fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
        if (check_file(sd, name, &st, err, errlen) != 0)
            return -1;
    } else if (errno != ENOENT) {
        snprintf(err, errlen, "cannot examine %s/%s: %s", sd->path, name, strerror(errno));
        return -1;
    }
    fd = create_temp(sd, name, tmp, sizeof(tmp), err, errlen);
    if (fd < 0)
        return -1;
    have_tmp = 1;
    /* 0600 whatever the umask. */
    if (fchmod(fd, 0600) != 0 || write_all_fd(fd, data, len) != 0 || fsync(fd) != 0) {
        snprintf(err, errlen, "cannot write %s/%s: %s", sd->path, name, strerror(errno));
        goto out;
    }
    r = close(fd);
    fd = -1;
    if (r != 0) {
        snprintf(err, errlen, "cannot write %s/%s: %s", sd->path, name, strerror(errno));
        goto out;
    }
    if (renameat(sd->fd, tmp, sd->fd, name) != 0) {
        snprintf(err, errlen, "cannot replace %s/%s: %s", sd->path, name, strerror(errno));
        goto out;
    }
    have_tmp = 0;
    /* Make the rename itself durable. The new file is in place either way, so
     * a failure here is not reported as "nothing changed". */
    (void)fsync(sd->fd);
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    if (have_tmp)
        (void)unlinkat(sd->fd, tmp, 0);
    return rc;
}

char *state_read_fd(int fd, size_t maxlen, size_t *lenp, const char *what, char *err,
                    size_t errlen)
{
    char *buf = malloc(maxlen + 1);
    size_t len = 0;

    if (!buf) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    for (;;) {
        ssize_t n = read(fd, buf + len, maxlen + 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, errlen, "cannot read %s: %s", what, strerror(errno));
            goto fail;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len > maxlen) {
            snprintf(err, errlen, "%s is larger than %zu bytes", what, maxlen);
            goto fail;
        }
    }
    buf[len] = '\0';
    if (lenp)
        *lenp = len;
    return buf;
fail:
    free(buf);
    return NULL;
}

int state_write_json(const struct state_dir *sd, const char *name, json_t *root, char *err,
                     size_t errlen)
{
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS), why[200];
    int rc = 0;

    if (!text) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (state_write_atomic(sd, name, text, strlen(text), why, sizeof(why)) != 0) {
        snprintf(err, errlen, "could not save the change, nothing was changed: %s", why);
        rc = -1;
    }
    free(text);
    return rc;
}

char *state_read(const struct state_dir *sd, const char *name, size_t maxlen, size_t *lenp,
                 char *err, size_t errlen)
{
    char what[PATH_MAX + STATE_NAME_MAX + 2];
    struct stat st;
    char *buf = NULL;
    int fd;

    err[0] = '\0';
    if (check_name(sd, name, err, errlen) != 0)
        return NULL;
    /* O_NONBLOCK: a FIFO planted here must not hang the open; it is refused
     * below like anything that is not a regular file. */
    fd = openat(sd->fd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT) {
            errno = ENOENT;
            return NULL;
        }
        /* Say why when the checks tell (a link gives ELOOP), else errno. */
        if (fstatat(sd->fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
            check_file(sd, name, &st, err, errlen) == 0)
            snprintf(err, errlen, "cannot read %s/%s: %s", sd->path, name, strerror(e));
        return NULL;
    }
    if (fstat(fd, &st) != 0) {
        snprintf(err, errlen, "cannot examine %s/%s: %s", sd->path, name, strerror(errno));
        goto out;
    }
    if (check_file(sd, name, &st, err, errlen) != 0)
        goto out;
    if ((st.st_mode & 077) && fchmod(fd, 0600) != 0) {
        snprintf(err, errlen, "cannot restrict %s/%s to its owner (chmod 600): %s", sd->path, name,
                 strerror(errno));
        goto out;
    }
    snprintf(what, sizeof(what), "%s/%s", sd->path, name);
    buf = state_read_fd(fd, maxlen, lenp, what, err, errlen);
out:
    close(fd);
    return buf;
}

char *state_token(const struct state_dir *sd, int *created, char *err, size_t errlen)
{
    unsigned char rnd[32];
    char hex[sizeof(rnd) * 2 + 2];
    size_t len = 0;
    char *tok = state_read(sd, "token", 1024, &len, err, errlen);

    *created = 0;
    if (tok) {
        while (len > 0 && (tok[len - 1] == '\n' || tok[len - 1] == '\r' || tok[len - 1] == ' '))
            tok[--len] = '\0';
        if (len == 0) {
            snprintf(err, errlen, "%s/token is empty: write a token into it, or remove it to "
                     "have a new one made", sd->path);
            free(tok);
            return NULL;
        }
        return tok;
    }
    if (err[0])
        return NULL;
    if (sys_random(rnd, sizeof(rnd)) != 0) {
        snprintf(err, errlen, "cannot get random bytes: %s", strerror(errno));
        return NULL;
    }
    for (size_t i = 0; i < sizeof(rnd); i++)
        snprintf(hex + 2 * i, 3, "%02x", rnd[i]);
    if (state_write_atomic(sd, "token", hex, strlen(hex), err, errlen) != 0)
        return NULL;
    *created = 1;
    return strdup(hex);
}

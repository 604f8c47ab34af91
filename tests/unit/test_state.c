/* test_state.c - state.c in a temporary directory: atomic replacement, reads
 * with a size limit, the token file and its permissions, failures that must
 * leave the old file as it was, and the StrictModes checks: a state directory
 * or file that is a symbolic link, someone else's, or writable by others is
 * refused, planted links are never followed, temporary names cannot be guessed
 * and are created exclusively, and the directory is used through the
 * descriptor opened at the check.
 *
 * Tests usually run as root, where permission bits do not stop writes, so the
 * failures are made in ways that work for root too: RLIMIT_FSIZE (write fails
 * with EFBIG, like a full disk), a directory where the file should go, a
 * missing directory. The read-only directory case runs only when not root; the
 * foreign-owner cases only as root (chown to nobody). */

#include "unit.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "state.h"

static char tmpdir[256];

/* A fresh temporary directory for this test process (removed at exit). */
static const char *temp_dir(void)
{
    const char *base = getenv("TMPDIR");

    snprintf(tmpdir, sizeof(tmpdir), "%s/test_state.XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        exit(2);
    }
    return tmpdir;
}

static void rm_rf(const char *path)
{
    struct stat st;
    DIR *d;
    struct dirent *e;
    char sub[1024];

    if (lstat(path, &st) != 0)
        return;
    if (!S_ISDIR(st.st_mode)) {
        unlink(path);
        return;
    }
    chmod(path, 0700);
    d = opendir(path);
    if (d) {
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            snprintf(sub, sizeof(sub), "%s/%s", path, e->d_name);
            rm_rf(sub);
        }
        closedir(d);
    }
    rmdir(path);
}

static void put_file(const char *dir, const char *name, const char *data, mode_t mode)
{
    char path[1024];
    int fd;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    if (fd < 0 || write(fd, data, strlen(data)) != (ssize_t)strlen(data) || close(fd) != 0) {
        perror(path);
        exit(2);
    }
}

/* The whole file, NUL-terminated (static buffer), or NULL. */
static const char *file_text(const char *dir, const char *name)
{
    static char buf[4096];
    char path[1024];
    ssize_t n;
    int fd;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    fd = open(path, O_RDONLY);
    if (fd < 0)
        return NULL;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n < 0)
        return NULL;
    buf[n] = '\0';
    return buf;
}

static int file_mode(const char *dir, const char *name)
{
    char path[1024];
    struct stat st;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (stat(path, &st) != 0)
        return -1;
    return (int)(st.st_mode & 07777);
}

/* Entries of dir other than . and .. (to spot leftover temporary files). */
static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;

    if (!d)
        return -1;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

/* Open dir as the state directory or fail the test. */
static void open_dir(struct state_dir *sd, const char *dir)
{
    char err[512] = "";

    if (state_dir_open(sd, dir, err, sizeof(err)) != 0) {
        fprintf(stderr, "state_dir_open %s: %s\n", dir, err);
        exit(2);
    }
}

/* state_dir_open(dir) must fail with a message containing each of want[]. */
static void dir_refused(const char *dir, const char *why, const char *const *want)
{
    struct state_dir sd = {.fd = -1};
    char err[512] = "";

    CHECK(state_dir_open(&sd, dir, err, sizeof(err)) == -1, "%s: %s accepted", why, dir);
    CHECK(sd.fd == -1, "%s: no descriptor left open", why);
    for (; *want; want++)
        CHECK(strstr(err, *want) != NULL, "%s: message lacks \"%s\": %s", why, *want, err);
    state_dir_close(&sd);
}

void test_state_dir_open(void)
{
    const char *top = temp_dir();
    char dir[512], err[512] = "", slash[520];
    struct state_dir sd = {.fd = -1};
    struct stat st;
    mode_t um;

    snprintf(dir, sizeof(dir), "%s/state", top);
    CHECK(state_dir_open(&sd, dir, err, sizeof(err)) == 0, "create: %s", err);
    CHECK(sd.fd >= 0, "a descriptor");
    CHECK(stat(dir, &st) == 0 && S_ISDIR(st.st_mode), "is a directory");
    CHECK((st.st_mode & 0777) == 0700, "mode %o", st.st_mode & 0777);
    state_dir_close(&sd);
    CHECK(sd.fd == -1, "closed");
    CHECK(state_dir_open(&sd, dir, err, sizeof(err)) == 0, "exists already: %s", err);
    state_dir_close(&sd);

    /* Readable or searchable by others, not writable: tightened as before. */
    chmod(dir, 0755);
    CHECK(state_dir_open(&sd, dir, err, sizeof(err)) == 0, "loose mode: %s", err);
    CHECK(stat(dir, &st) == 0 && (st.st_mode & 0777) == 0700, "restricted to %o", st.st_mode & 0777);
    state_dir_close(&sd);

    /* Trailing slashes are dropped (they would make open() follow a link). */
    snprintf(slash, sizeof(slash), "%s//", dir);
    CHECK(state_dir_open(&sd, slash, err, sizeof(err)) == 0, "trailing slash: %s", err);
    CHECK(strcmp(sd.path, dir) == 0, "path kept without the slashes: %s", sd.path);
    state_dir_close(&sd);

    /* A umask that takes the owner's bits: what we make still gets 0700. */
    snprintf(dir, sizeof(dir), "%s/umask", top);
    um = umask(0377);
    CHECK(state_dir_open(&sd, dir, err, sizeof(err)) == 0, "odd umask: %s", err);
    umask(um);
    CHECK(stat(dir, &st) == 0 && (st.st_mode & 0777) == 0700, "mode %o", st.st_mode & 0777);
    state_dir_close(&sd);

    put_file(top, "plain", "x", 0600);
    snprintf(dir, sizeof(dir), "%s/plain", top);
    dir_refused(dir, "a regular file", (const char *const[]){"not a directory", "plain", NULL});

    snprintf(dir, sizeof(dir), "%s/missing/state", top);
    dir_refused(dir, "parent missing", (const char *const[]){"cannot create", NULL});
    dir_refused("", "empty path", (const char *const[]){"empty", NULL});
    rm_rf(top);
}

void test_state_dir_refused(void)
{
    const char *top = temp_dir();
    char real[512], link[512], dir[512], linkslash[520], want_uid[64];
    struct stat st;
    static const mode_t loose[] = {0770, 0720, 0702, 0777, 01777, 0722};

    /* A symbolic link to a directory of ours (the attack: a link planted in
     * a world-writable working directory, pointing at /root/.ssh or the
     * like). Refused, with or without a trailing slash, and nothing is made
     * in the target. */
    snprintf(real, sizeof(real), "%s/real", top);
    snprintf(link, sizeof(link), "%s/proxy_state", top);
    mkdir(real, 0700);
    CHECK(symlink(real, link) == 0, "symlink");
    dir_refused(link, "symlinked dir",
                (const char *const[]){"is a symbolic link", "refusing", "proxy_state", NULL});
    snprintf(linkslash, sizeof(linkslash), "%s/", link);
    dir_refused(linkslash, "symlinked dir with a trailing slash",
                (const char *const[]){"is a symbolic link", NULL});
    CHECK(count_entries(real) == 0, "nothing made in the link's target");
    CHECK(lstat(link, &st) == 0 && S_ISLNK(st.st_mode), "the link is left alone");

    /* A dangling link: mkdir must not create its target. */
    snprintf(link, sizeof(link), "%s/dangling", top);
    snprintf(dir, sizeof(dir), "%s/target-of-dangling", top);
    CHECK(symlink(dir, link) == 0, "symlink");
    dir_refused(link, "dangling link", (const char *const[]){"symbolic link", NULL});
    CHECK(lstat(dir, &st) != 0, "the dangling link's target was not created");

    /* Writable by group or others: refused, and its mode left as it was (we
     * do not "fix" a directory someone may already have planted files in). */
    for (size_t i = 0; i < sizeof(loose) / sizeof(loose[0]); i++) {
        snprintf(dir, sizeof(dir), "%s/loose%zu", top, i);
        mkdir(dir, 0700);
        chmod(dir, loose[i]);
        dir_refused(dir, "writable by others",
                    (const char *const[]){"writable by", "refusing", "chmod 700", NULL});
        CHECK(stat(dir, &st) == 0 && (st.st_mode & 07777) == loose[i], "mode %o left as %o",
              (unsigned)loose[i], (unsigned)(st.st_mode & 07777));
    }

    /* Owned by someone else (nobody), even with a tight mode. */
    if (geteuid() == 0) {
        snprintf(dir, sizeof(dir), "%s/foreign", top);
        mkdir(dir, 0700);
        put_file(dir, "token", "planted-token", 0600);
        CHECK(chown(dir, 65534, 65534) == 0, "chown: %s", strerror(errno));
        snprintf(want_uid, sizeof(want_uid), "not by you (uid %u)", (unsigned)geteuid());
        dir_refused(dir, "foreign-owned dir",
                    (const char *const[]){"owned by uid 65534", want_uid, "refusing", NULL});
        CHECK(stat(dir, &st) == 0 && st.st_uid == 65534 && (st.st_mode & 0777) == 0700,
              "foreign dir untouched");
    } else {
        printf("  (foreign-owned directory: needs root, skipped)\n");
    }
    rm_rf(top);
}

/* The descriptor is what counts: once open, renaming the directory away and
 * putting another one (or a link) at its path does not redirect anything. */
void test_state_dir_fd_pinned(void)
{
    const char *top = temp_dir();
    char dir[512], moved[512], other[512], err[512] = "";
    struct state_dir sd = {.fd = -1};
    char *got;

    snprintf(dir, sizeof(dir), "%s/state", top);
    snprintf(moved, sizeof(moved), "%s/moved", top);
    snprintf(other, sizeof(other), "%s/other", top);
    open_dir(&sd, dir);
    CHECK(state_write_atomic(&sd, "apps.json", "one", 3, err, sizeof(err)) == 0, "%s", err);
    CHECK(rename(dir, moved) == 0, "rename");
    mkdir(other, 0700);
    CHECK(symlink(other, dir) == 0, "link at the old path");
    CHECK(state_write_atomic(&sd, "apps.json", "two", 3, err, sizeof(err)) == 0, "%s", err);
    CHECK(file_text(moved, "apps.json") && strcmp(file_text(moved, "apps.json"), "two") == 0,
          "written into the directory that was checked");
    CHECK(count_entries(other) == 0, "nothing written through the new path");
    got = state_read(&sd, "apps.json", 100, NULL, err, sizeof(err));
    CHECK(got && strcmp(got, "two") == 0, "read from the checked directory");
    free(got);
    state_dir_close(&sd);
    rm_rf(top);
}

void test_state_write_read(void)
{
    const char *dir = temp_dir();
    struct state_dir sd;
    char err[512] = "";
    char *got;
    size_t len = 99;
    static const char bin[] = "a\0b\nc";

    open_dir(&sd, dir);
    CHECK(state_write_atomic(&sd, "apps.json", "{\"apps\":[]}", 11, err, sizeof(err)) == 0, "%s", err);
    CHECK(file_text(dir, "apps.json") && strcmp(file_text(dir, "apps.json"), "{\"apps\":[]}") == 0,
          "contents written");
    CHECK(file_mode(dir, "apps.json") == 0600, "mode %o", (unsigned)file_mode(dir, "apps.json"));
    CHECK(count_entries(dir) == 1, "no temporary file left: %d entries", count_entries(dir));

    /* Replacing: longer then shorter (no stale tail from the old file). */
    CHECK(state_write_atomic(&sd, "apps.json", "0123456789abcdef", 16, err, sizeof(err)) == 0, "%s", err);
    CHECK(state_write_atomic(&sd, "apps.json", "xy", 2, err, sizeof(err)) == 0, "%s", err);
    CHECK(file_text(dir, "apps.json") && strcmp(file_text(dir, "apps.json"), "xy") == 0,
          "replaced exactly");
    CHECK(count_entries(dir) == 1, "still one file");

    got = state_read(&sd, "apps.json", 100, &len, err, sizeof(err));
    CHECK(got && len == 2 && strcmp(got, "xy") == 0, "read back");
    free(got);

    /* Empty and binary contents. */
    CHECK(state_write_atomic(&sd, "empty", "", 0, err, sizeof(err)) == 0, "%s", err);
    got = state_read(&sd, "empty", 100, &len, err, sizeof(err));
    CHECK(got && len == 0 && got[0] == '\0', "empty file reads as \"\"");
    free(got);
    CHECK(state_write_atomic(&sd, "bin", bin, 5, err, sizeof(err)) == 0, "%s", err);
    got = state_read(&sd, "bin", 5, &len, err, sizeof(err));
    CHECK(got && len == 5 && memcmp(got, bin, 5) == 0 && got[5] == '\0', "binary exact");
    free(got);
    got = state_read(&sd, "bin", 5, NULL, err, sizeof(err));
    CHECK(got != NULL, "lenp may be NULL");
    free(got);

    /* Names are one plain component: no way out of the directory. */
    {
        static const char *const bad[] = {"../x", "a/b", ".hidden", "", "..", "/etc/passwd"};
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
            err[0] = '\0';
            CHECK(state_write_atomic(&sd, bad[i], "x", 1, err, sizeof(err)) == -1 && err[0],
                  "name \"%s\" refused", bad[i]);
            CHECK(state_read(&sd, bad[i], 10, NULL, err, sizeof(err)) == NULL && err[0],
                  "read of \"%s\" refused", bad[i]);
        }
    }
    state_dir_close(&sd);
    err[0] = '\0';
    CHECK(state_write_atomic(&sd, "apps.json", "x", 1, err, sizeof(err)) == -1 && err[0],
          "a closed directory is refused");
    rm_rf(dir);
}

void test_state_write_failures(void)
{
    const char *dir = temp_dir();
    struct state_dir sd;
    char err[512], path[512];
    struct rlimit old, lim;
    const char *t;

    open_dir(&sd, dir);
    put_file(dir, "apps.json", "old contents", 0600);

    /* Writing fails part way (EFBIG under RLIMIT_FSIZE, as on a full disk). */
    signal(SIGXFSZ, SIG_IGN);
    if (getrlimit(RLIMIT_FSIZE, &old) == 0) {
        char *big = malloc(100000);
        int r;
        memset(big, 'n', 100000);
        lim = old;
        lim.rlim_cur = 4096;
        err[0] = '\0';
        setrlimit(RLIMIT_FSIZE, &lim);
        r = state_write_atomic(&sd, "apps.json", big, 100000, err, sizeof(err));
        setrlimit(RLIMIT_FSIZE, &old);
        CHECK(r == -1, "write beyond RLIMIT_FSIZE fails");
        CHECK(err[0] != '\0', "with a reason");
        t = file_text(dir, "apps.json");
        CHECK(t && strcmp(t, "old contents") == 0, "old file intact: %s", t ? t : "(missing)");
        CHECK(count_entries(dir) == 1, "temporary file removed: %d entries", count_entries(dir));
        free(big);
    }

    /* The target is a directory: refused, no temporary file left. */
    snprintf(path, sizeof(path), "%s/token", dir);
    mkdir(path, 0700);
    err[0] = '\0';
    CHECK(state_write_atomic(&sd, "token", "abc", 3, err, sizeof(err)) == -1,
          "writing over a directory fails");
    CHECK(strstr(err, "not a regular file") != NULL, "with a reason: %s", err);
    CHECK(count_entries(dir) == 2, "only apps.json and token/: %d entries", count_entries(dir));
    {
        char *tok;
        int created = 7;
        err[0] = '\0';
        tok = state_token(&sd, &created, err, sizeof(err));
        CHECK(tok == NULL && err[0] != '\0', "state_token with token/ a directory: %s", err);
        free(tok);
    }

    /* A name too long. */
    {
        char *longname = malloc(5000);
        memset(longname, 'L', 4999);
        longname[4999] = '\0';
        err[0] = '\0';
        CHECK(state_write_atomic(&sd, longname, "abc", 3, err, sizeof(err)) == -1, "long name");
        CHECK(err[0] != '\0', "with a reason");
        CHECK(state_read(&sd, longname, 10, NULL, err, sizeof(err)) == NULL, "read long name");
        free(longname);
    }

    /* Read-only directory: only meaningful when permissions apply to us. */
    if (geteuid() != 0) {
        chmod(dir, 0500);
        err[0] = '\0';
        CHECK(state_write_atomic(&sd, "apps.json", "new", 3, err, sizeof(err)) == -1,
              "read-only dir fails");
        CHECK(err[0] != '\0', "with a reason");
        chmod(dir, 0700);
        t = file_text(dir, "apps.json");
        CHECK(t && strcmp(t, "old contents") == 0, "old file intact after read-only dir");
    }
    state_dir_close(&sd);
    rm_rf(dir);
}

void test_state_read_limits(void)
{
    const char *dir = temp_dir();
    struct state_dir sd;
    char err[512] = "x";
    char *got;
    size_t len = 0;

    open_dir(&sd, dir);
    errno = 0;
    got = state_read(&sd, "missing", 100, &len, err, sizeof(err));
    CHECK(got == NULL && errno == ENOENT, "missing: errno %d", errno);
    CHECK(err[0] == '\0', "missing is not an error message: %s", err);

    put_file(dir, "ten", "0123456789", 0600);
    got = state_read(&sd, "ten", 10, &len, err, sizeof(err));
    CHECK(got && len == 10 && strcmp(got, "0123456789") == 0, "exactly maxlen");
    free(got);
    err[0] = '\0';
    got = state_read(&sd, "ten", 9, &len, err, sizeof(err));
    CHECK(got == NULL && err[0] != '\0', "over maxlen refused");
    free(got);
    err[0] = '\0';
    got = state_read(&sd, "ten", 0, &len, err, sizeof(err));
    CHECK(got == NULL && err[0] != '\0', "maxlen 0 refuses a non-empty file");
    free(got);

    /* A directory where the file should be. */
    {
        char sub[512];
        snprintf(sub, sizeof(sub), "%s/sub", dir);
        mkdir(sub, 0700);
        err[0] = '\0';
        got = state_read(&sd, "sub", 100, &len, err, sizeof(err));
        CHECK(got == NULL && strstr(err, "not a regular file"), "reading a directory: %s", err);
        free(got);
    }
    state_dir_close(&sd);
    rm_rf(dir);
}

/* Read and write of name in sd must both be refused with want in the message;
 * outside (when given) must still hold outside_text afterwards. */
static void file_refused(struct state_dir *sd, const char *name, const char *want, const char *why)
{
    char err[512] = "";
    char *got;

    got = state_read(sd, name, 4096, NULL, err, sizeof(err));
    CHECK(got == NULL, "%s: %s read", why, name);
    CHECK(strstr(err, want) && strstr(err, name) && strstr(err, "refusing"),
          "%s: read message lacks \"%s\" or the name: %s", why, want, err);
    free(got);
    err[0] = '\0';
    CHECK(state_write_atomic(sd, name, "NEW", 3, err, sizeof(err)) == -1, "%s: %s written", why,
          name);
    CHECK(strstr(err, want) != NULL, "%s: write message lacks \"%s\": %s", why, want, err);
}

void test_state_file_refused(void)
{
    const char *top = temp_dir();
    static const char *const names[] = {"token", "apps.json", "tls.key", "tls.crt"};
    char dir[512], outside[512], target[1024], path[1024], want_uid[64];
    struct state_dir sd;
    struct stat st;
    char err[512] = "";
    char *tok;
    int created = 7;

    snprintf(dir, sizeof(dir), "%s/state", top);
    open_dir(&sd, dir);
    snprintf(outside, sizeof(outside), "%s/outside", top);
    mkdir(outside, 0700);

    /* Planted symbolic links, to a file of ours outside the directory: never
     * read, never written through, never replaced. */
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(target, sizeof(target), "%s/%s", outside, names[i]);
        put_file(outside, names[i], "outside file", 0600);
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        CHECK(symlink(target, path) == 0, "symlink");
        file_refused(&sd, names[i], "is a symbolic link", "planted link");
        CHECK(strcmp(file_text(outside, names[i]), "outside file") == 0,
              "%s: the file outside is unchanged", names[i]);
        CHECK(lstat(path, &st) == 0 && S_ISLNK(st.st_mode), "%s: link not replaced", names[i]);
    }
    tok = state_token(&sd, &created, err, sizeof(err));
    CHECK(tok == NULL && strstr(err, "symbolic link"), "token link refused: %s", err);
    CHECK(created == 0, "no token made");
    free(tok);
    CHECK(strcmp(file_text(outside, "token"), "outside file") == 0, "outside token unchanged");
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        unlink(path);
    }

    /* A link to a file that does not exist: writing must not create it. */
    snprintf(target, sizeof(target), "%s/created-through-link", outside);
    snprintf(path, sizeof(path), "%s/apps.json", dir);
    CHECK(symlink(target, path) == 0, "symlink");
    file_refused(&sd, "apps.json", "symbolic link", "dangling link");
    CHECK(lstat(target, &st) != 0, "nothing created at the link's target");
    unlink(path);

    /* Writable by group or others. */
    put_file(dir, "apps.json", "{}", 0600);
    chmod(path, 0620);
    file_refused(&sd, "apps.json", "writable by group", "group-writable");
    chmod(path, 0606);
    file_refused(&sd, "apps.json", "writable by others", "other-writable");
    CHECK(strcmp(file_text(dir, "apps.json"), "{}") == 0, "left as it was");
    unlink(path);

    /* Not a regular file: a FIFO must not hang the read. */
    CHECK(mkfifo(path, 0600) == 0, "mkfifo");
    file_refused(&sd, "apps.json", "FIFO, not a regular file", "fifo");
    unlink(path);

    /* Readable by others only: tightened to 0600, as the directory is to 0700. */
    put_file(dir, "apps.json", "{}", 0600);
    chmod(path, 0644);
    tok = state_read(&sd, "apps.json", 100, NULL, err, sizeof(err));
    CHECK(tok && strcmp(tok, "{}") == 0, "readable by others: still read: %s", err);
    free(tok);
    CHECK(file_mode(dir, "apps.json") == 0600, "tightened to %o", (unsigned)file_mode(dir, "apps.json"));
    unlink(path);

    /* Owned by someone else: a token planted by nobody is never used. */
    if (geteuid() == 0) {
        snprintf(want_uid, sizeof(want_uid), "not by you (uid %u)", (unsigned)geteuid());
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
            put_file(dir, names[i], "planted by nobody", 0600);
            snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
            CHECK(chown(path, 65534, 65534) == 0, "chown: %s", strerror(errno));
            file_refused(&sd, names[i], "owned by uid 65534", "foreign-owned");
            file_refused(&sd, names[i], want_uid, "foreign-owned");
            CHECK(stat(path, &st) == 0 && st.st_uid == 65534 &&
                      strcmp(file_text(dir, names[i]), "planted by nobody") == 0,
                  "%s: the planted file is left as it was", names[i]);
        }
        err[0] = '\0';
        tok = state_token(&sd, &created, err, sizeof(err));
        CHECK(tok == NULL && strstr(err, "owned by uid 65534"), "planted token refused: %s", err);
        free(tok);
    } else {
        printf("  (foreign-owned files: needs root, skipped)\n");
    }
    state_dir_close(&sd);
    rm_rf(top);
}

/* Temporary names seen through inotify while writing. */
static int temp_names_seen(const char *dir, struct state_dir *sd, int n, char names[][64])
{
    char buf[65536] __attribute__((aligned(__alignof__(struct inotify_event))));
    char err[512];
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC), seen = 0;
    ssize_t len;

    if (fd < 0 || inotify_add_watch(fd, dir, IN_CREATE) < 0) {
        perror("inotify");
        exit(2);
    }
    for (int i = 0; i < n; i++)
        CHECK(state_write_atomic(sd, "apps.json", "{}", 2, err, sizeof(err)) == 0, "%s", err);
    len = read(fd, buf, sizeof(buf));
    for (char *p = buf; len > 0 && p < buf + len;) {
        struct inotify_event *ev = (struct inotify_event *)(void *)p;
        if (ev->len && seen < n)
            snprintf(names[seen++], 64, "%s", ev->name);
        p += sizeof(*ev) + ev->len;
    }
    close(fd);
    return seen;
}

static unsigned char fixed_byte = 0xab;
static int fixed_calls;

/* Same bytes every time: every temporary name is the same guessable one. */
static int fixed_random(void *buf, size_t len)
{
    fixed_calls++;
    memset(buf, fixed_byte, len);
    return 0;
}

/* The guessable name once, then fresh ones. */
static int fixed_once_random(void *buf, size_t len)
{
    fixed_calls++;
    memset(buf, fixed_calls == 1 ? fixed_byte : (unsigned char)fixed_calls, len);
    return 0;
}

void test_state_temp_names(void)
{
    const char *top = temp_dir();
    char dir[512], outside[1024], path[1024], planted[128], names[20][64], pidname[64];
    struct state_dir sd;
    struct stat st;
    char err[512] = "";
    int n;

    snprintf(dir, sizeof(dir), "%s/state", top);
    open_dir(&sd, dir);
    snprintf(outside, sizeof(outside), "%s/victim", top);
    put_file(top, "victim", "outside file", 0600);

    /* Unpredictable: 20 writes, 20 different names, none the old
     * ".NAME.tmp.PID", each with 16 random hex digits. */
    n = temp_names_seen(dir, &sd, 20, names);
    CHECK(n == 20, "saw %d temporary names", n);
    snprintf(pidname, sizeof(pidname), ".apps.json.tmp.%ld", (long)getpid());
    for (int i = 0; i < n; i++) {
        const char *r = names[i] + strlen(".apps.json.tmp.");
        CHECK(strncmp(names[i], ".apps.json.tmp.", 15) == 0, "name %s", names[i]);
        CHECK(strcmp(names[i], pidname) != 0, "not the pid name");
        CHECK(strlen(r) == 16 && strspn(r, "0123456789abcdef") == 16, "16 hex digits: %s", r);
        for (int j = 0; j < i; j++)
            CHECK(strcmp(names[i], names[j]) != 0, "names %d and %d equal: %s", i, j, names[i]);
    }
    CHECK(count_entries(dir) == 1, "only apps.json left");

    /* The old predictable name, planted as a link: not followed. */
    snprintf(path, sizeof(path), "%s/%s", dir, pidname);
    CHECK(symlink(outside, path) == 0, "symlink");
    CHECK(state_write_atomic(&sd, "apps.json", "new", 3, err, sizeof(err)) == 0, "%s", err);
    CHECK(strcmp(file_text(top, "victim"), "outside file") == 0, "outside file unchanged");
    CHECK(strcmp(file_text(dir, "apps.json"), "new") == 0, "apps.json written");
    CHECK(lstat(path, &st) == 0 && S_ISLNK(st.st_mode), "planted link left alone");
    unlink(path);

    /* Created exclusively: when the name we draw is already there (a link or
     * a file), it is neither followed nor truncated; a fresh name is drawn. */
    snprintf(planted, sizeof(planted), ".apps.json.tmp.abababababababab");
    snprintf(path, sizeof(path), "%s/%s", dir, planted);
    CHECK(symlink(outside, path) == 0, "symlink");
    state_set_random_for_tests(fixed_once_random);
    fixed_calls = 0;
    CHECK(state_write_atomic(&sd, "apps.json", "after-link", 10, err, sizeof(err)) == 0, "%s", err);
    CHECK(fixed_calls == 2, "a second name was drawn (%d)", fixed_calls);
    CHECK(strcmp(file_text(top, "victim"), "outside file") == 0, "link target unchanged");
    CHECK(lstat(path, &st) == 0 && S_ISLNK(st.st_mode), "planted link left alone");
    CHECK(strcmp(file_text(dir, "apps.json"), "after-link") == 0, "written under a fresh name");
    unlink(path);

    put_file(dir, planted, "planted file", 0600);
    fixed_calls = 0;
    CHECK(state_write_atomic(&sd, "apps.json", "after-file", 10, err, sizeof(err)) == 0, "%s", err);
    CHECK(strcmp(file_text(dir, planted), "planted file") == 0, "planted file not truncated");
    unlink(path);

    /* Every name taken: the write fails, saying so, and changes nothing. */
    CHECK(symlink(outside, path) == 0, "symlink");
    state_set_random_for_tests(fixed_random);
    err[0] = '\0';
    CHECK(state_write_atomic(&sd, "apps.json", "never", 5, err, sizeof(err)) == -1,
          "fails when every temporary name is taken");
    CHECK(strstr(err, "temporary") && strstr(err, "apps.json"), "message: %s", err);
    CHECK(strcmp(file_text(dir, "apps.json"), "after-file") == 0, "apps.json unchanged");
    CHECK(strcmp(file_text(top, "victim"), "outside file") == 0, "link target unchanged");
    CHECK(count_entries(dir) == 2, "only apps.json and the planted link: %d", count_entries(dir));
    state_set_random_for_tests(NULL);
    state_dir_close(&sd);
    rm_rf(top);
}

static int is_hex64(const char *s)
{
    if (!s || strlen(s) != 64)
        return 0;
    for (const char *p = s; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return 0;
    return 1;
}

void test_state_token(void)
{
    const char *dir = temp_dir();
    struct state_dir sd, sd2;
    char err[512] = "";
    char *t1, *t2;
    int created = -1;
    mode_t um = umask(0);   /* the token must be 0600 even with a permissive umask */

    open_dir(&sd, dir);
    t1 = state_token(&sd, &created, err, sizeof(err));
    CHECK(t1 && created == 1, "new token: %s", err);
    CHECK(is_hex64(t1), "64 hex digits: %s", t1 ? t1 : "NULL");
    CHECK(file_mode(dir, "token") == 0600, "token mode %o", (unsigned)file_mode(dir, "token"));
    CHECK(file_text(dir, "token") && t1 && strcmp(file_text(dir, "token"), t1) == 0,
          "token file holds the token");
    t2 = state_token(&sd, &created, err, sizeof(err));
    CHECK(t2 && created == 0 && t1 && strcmp(t1, t2) == 0, "same token read back");
    free(t1);
    free(t2);
    umask(um);

    /* A second directory gets a different token. */
    {
        char dir2[512];
        snprintf(dir2, sizeof(dir2), "%s/other", dir);
        open_dir(&sd2, dir2);
        t1 = state_token(&sd, &created, err, sizeof(err));
        t2 = state_token(&sd2, &created, err, sizeof(err));
        CHECK(t1 && t2 && strcmp(t1, t2) != 0 && created == 1, "tokens are random");
        free(t1);
        free(t2);
        state_dir_close(&sd2);
    }

    /* A token written by hand: trailing newline and spaces are trimmed. */
    put_file(dir, "token", "my-secret \r\n", 0600);
    t1 = state_token(&sd, &created, err, sizeof(err));
    CHECK(t1 && created == 0 && strcmp(t1, "my-secret") == 0, "trimmed: [%s]", t1 ? t1 : "NULL");
    free(t1);

    put_file(dir, "token", "\n", 0600);
    err[0] = '\0';
    t1 = state_token(&sd, &created, err, sizeof(err));
    CHECK(t1 == NULL && err[0] != '\0', "blank token file refused");
    free(t1);
    CHECK(file_text(dir, "token") && strcmp(file_text(dir, "token"), "\n") == 0,
          "blank token file left alone");

    put_file(dir, "token", "", 0600);
    err[0] = '\0';
    t1 = state_token(&sd, &created, err, sizeof(err));
    CHECK(t1 == NULL && err[0] != '\0', "empty token file refused");
    free(t1);

    {
        char *big = malloc(2000);
        memset(big, 'k', 1999);
        big[1999] = '\0';
        put_file(dir, "token", big, 0600);
        err[0] = '\0';
        t1 = state_token(&sd, &created, err, sizeof(err));
        CHECK(t1 == NULL && err[0] != '\0', "token file over 1024 bytes refused");
        free(t1);
        free(big);
    }
    state_dir_close(&sd);
    rm_rf(dir);
}

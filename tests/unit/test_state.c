/* test_state.c - state.c in a temporary directory: atomic replacement, reads
 * with a size limit, the token file and its permissions, and failures that must
 * leave the old file as it was.
 *
 * Tests usually run as root, where permission bits do not stop writes, so the
 * failures are made in ways that work for root too: RLIMIT_FSIZE (write fails
 * with EFBIG, like a full disk), a directory where the file should go (rename
 * fails), a missing directory. The read-only directory case runs only when not
 * root. */

#include "unit.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

void test_state_ensure_dir(void)
{
    const char *top = temp_dir();
    char dir[512], err[300] = "";
    struct stat st;

    snprintf(dir, sizeof(dir), "%s/state", top);
    CHECK(state_ensure_dir(dir, err, sizeof(err)) == 0, "create: %s", err);
    CHECK(stat(dir, &st) == 0 && S_ISDIR(st.st_mode), "is a directory");
    CHECK((st.st_mode & 0777) == 0700, "mode %o", st.st_mode & 0777);
    CHECK(state_ensure_dir(dir, err, sizeof(err)) == 0, "exists already: %s", err);

    chmod(dir, 0755);
    CHECK(state_ensure_dir(dir, err, sizeof(err)) == 0, "loose mode: %s", err);
    CHECK(stat(dir, &st) == 0 && (st.st_mode & 0777) == 0700, "restricted to %o", st.st_mode & 0777);

    put_file(top, "plain", "x", 0600);
    snprintf(dir, sizeof(dir), "%s/plain", top);
    err[0] = '\0';
    CHECK(state_ensure_dir(dir, err, sizeof(err)) == -1, "a file is not a state directory");
    CHECK(err[0] != '\0', "with a reason");

    snprintf(dir, sizeof(dir), "%s/missing/state", top);
    err[0] = '\0';
    CHECK(state_ensure_dir(dir, err, sizeof(err)) == -1, "parent missing");
    CHECK(err[0] != '\0', "with a reason");
    rm_rf(top);
}

void test_state_write_read(void)
{
    const char *dir = temp_dir();
    char err[300] = "";
    char *got;
    size_t len = 99;
    static const char bin[] = "a\0b\nc";

    CHECK(state_write_atomic(dir, "apps.json", "{\"apps\":[]}", 11, err, sizeof(err)) == 0, "%s", err);
    CHECK(file_text(dir, "apps.json") && strcmp(file_text(dir, "apps.json"), "{\"apps\":[]}") == 0,
          "contents written");
    CHECK(file_mode(dir, "apps.json") == 0600, "mode %o", (unsigned)file_mode(dir, "apps.json"));
    CHECK(count_entries(dir) == 1, "no temporary file left: %d entries", count_entries(dir));

    /* Replacing: longer then shorter (no stale tail from the old file). */
    CHECK(state_write_atomic(dir, "apps.json", "0123456789abcdef", 16, err, sizeof(err)) == 0, "%s", err);
    CHECK(state_write_atomic(dir, "apps.json", "xy", 2, err, sizeof(err)) == 0, "%s", err);
    CHECK(file_text(dir, "apps.json") && strcmp(file_text(dir, "apps.json"), "xy") == 0,
          "replaced exactly");
    CHECK(count_entries(dir) == 1, "still one file");

    got = state_read(dir, "apps.json", 100, &len, err, sizeof(err));
    CHECK(got && len == 2 && strcmp(got, "xy") == 0, "read back");
    free(got);

    /* Empty and binary contents. */
    CHECK(state_write_atomic(dir, "empty", "", 0, err, sizeof(err)) == 0, "%s", err);
    got = state_read(dir, "empty", 100, &len, err, sizeof(err));
    CHECK(got && len == 0 && got[0] == '\0', "empty file reads as \"\"");
    free(got);
    CHECK(state_write_atomic(dir, "bin", bin, 5, err, sizeof(err)) == 0, "%s", err);
    got = state_read(dir, "bin", 5, &len, err, sizeof(err));
    CHECK(got && len == 5 && memcmp(got, bin, 5) == 0 && got[5] == '\0', "binary exact");
    free(got);
    got = state_read(dir, "bin", 5, NULL, err, sizeof(err));
    CHECK(got != NULL, "lenp may be NULL");
    free(got);
    rm_rf(dir);
}

void test_state_write_failures(void)
{
    const char *dir = temp_dir();
    char err[300], path[512];
    struct rlimit old, lim;
    const char *t;

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
        r = state_write_atomic(dir, "apps.json", big, 100000, err, sizeof(err));
        setrlimit(RLIMIT_FSIZE, &old);
        CHECK(r == -1, "write beyond RLIMIT_FSIZE fails");
        CHECK(err[0] != '\0', "with a reason");
        t = file_text(dir, "apps.json");
        CHECK(t && strcmp(t, "old contents") == 0, "old file intact: %s", t ? t : "(missing)");
        CHECK(count_entries(dir) == 1, "temporary file removed: %d entries", count_entries(dir));
        free(big);
    }

    /* The target is a directory: rename fails, the temporary file goes away. */
    snprintf(path, sizeof(path), "%s/token", dir);
    mkdir(path, 0700);
    err[0] = '\0';
    CHECK(state_write_atomic(dir, "token", "abc", 3, err, sizeof(err)) == -1,
          "rename onto a directory fails");
    CHECK(err[0] != '\0', "with a reason");
    CHECK(count_entries(dir) == 2, "only apps.json and token/: %d entries", count_entries(dir));
    {
        char *tok;
        int created = 7;
        err[0] = '\0';
        tok = state_token(dir, &created, err, sizeof(err));
        CHECK(tok == NULL && err[0] != '\0', "state_token with token/ a directory: %s", err);
        free(tok);
    }

    /* A directory that does not exist. */
    snprintf(path, sizeof(path), "%s/nope", dir);
    err[0] = '\0';
    CHECK(state_write_atomic(path, "x", "abc", 3, err, sizeof(err)) == -1, "missing dir");
    CHECK(err[0] != '\0', "with a reason");

    /* A path too long for PATH_MAX. */
    {
        char *longname = malloc(5000);
        memset(longname, 'L', 4999);
        longname[4999] = '\0';
        err[0] = '\0';
        CHECK(state_write_atomic(dir, longname, "abc", 3, err, sizeof(err)) == -1, "long name");
        CHECK(err[0] != '\0', "with a reason");
        CHECK(state_read(dir, longname, 10, NULL, err, sizeof(err)) == NULL, "read long name");
        free(longname);
    }

    /* Read-only directory: only meaningful when permissions apply to us. */
    if (geteuid() != 0) {
        chmod(dir, 0500);
        err[0] = '\0';
        CHECK(state_write_atomic(dir, "apps.json", "new", 3, err, sizeof(err)) == -1,
              "read-only dir fails");
        CHECK(err[0] != '\0', "with a reason");
        chmod(dir, 0700);
        t = file_text(dir, "apps.json");
        CHECK(t && strcmp(t, "old contents") == 0, "old file intact after read-only dir");
    }
    rm_rf(dir);
}

void test_state_read_limits(void)
{
    const char *dir = temp_dir();
    char err[300] = "x";
    char *got;
    size_t len = 0;

    errno = 0;
    got = state_read(dir, "missing", 100, &len, err, sizeof(err));
    CHECK(got == NULL && errno == ENOENT, "missing: errno %d", errno);
    CHECK(err[0] == '\0', "missing is not an error message: %s", err);

    put_file(dir, "ten", "0123456789", 0600);
    got = state_read(dir, "ten", 10, &len, err, sizeof(err));
    CHECK(got && len == 10 && strcmp(got, "0123456789") == 0, "exactly maxlen");
    free(got);
    err[0] = '\0';
    got = state_read(dir, "ten", 9, &len, err, sizeof(err));
    CHECK(got == NULL && err[0] != '\0', "over maxlen refused");
    free(got);
    err[0] = '\0';
    got = state_read(dir, "ten", 0, &len, err, sizeof(err));
    CHECK(got == NULL && err[0] != '\0', "maxlen 0 refuses a non-empty file");
    free(got);

    /* A directory where the file should be. */
    {
        char sub[512];
        snprintf(sub, sizeof(sub), "%s/sub", dir);
        mkdir(sub, 0700);
        err[0] = '\0';
        got = state_read(dir, "sub", 100, &len, err, sizeof(err));
        CHECK(got == NULL && err[0] != '\0', "reading a directory is an error: %s", err);
        free(got);
    }
    rm_rf(dir);
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
    char err[300] = "";
    char *t1, *t2;
    int created = -1;
    mode_t um = umask(0);   /* the token must be 0600 even with a permissive umask */

    t1 = state_token(dir, &created, err, sizeof(err));
    CHECK(t1 && created == 1, "new token: %s", err);
    CHECK(is_hex64(t1), "64 hex digits: %s", t1 ? t1 : "NULL");
    CHECK(file_mode(dir, "token") == 0600, "token mode %o", (unsigned)file_mode(dir, "token"));
    CHECK(file_text(dir, "token") && t1 && strcmp(file_text(dir, "token"), t1) == 0,
          "token file holds the token");
    t2 = state_token(dir, &created, err, sizeof(err));
    CHECK(t2 && created == 0 && t1 && strcmp(t1, t2) == 0, "same token read back");
    free(t1);
    free(t2);
    umask(um);

    /* A second directory gets a different token. */
    {
        char dir2[512];
        snprintf(dir2, sizeof(dir2), "%s/other", dir);
        mkdir(dir2, 0700);
        t1 = state_token(dir, &created, err, sizeof(err));
        t2 = state_token(dir2, &created, err, sizeof(err));
        CHECK(t1 && t2 && strcmp(t1, t2) != 0 && created == 1, "tokens are random");
        free(t1);
        free(t2);
    }

    /* A token written by hand: trailing newline and spaces are trimmed. */
    put_file(dir, "token", "my-secret \r\n", 0600);
    t1 = state_token(dir, &created, err, sizeof(err));
    CHECK(t1 && created == 0 && strcmp(t1, "my-secret") == 0, "trimmed: [%s]", t1 ? t1 : "NULL");
    free(t1);

    put_file(dir, "token", "\n", 0600);
    err[0] = '\0';
    t1 = state_token(dir, &created, err, sizeof(err));
    CHECK(t1 == NULL && err[0] != '\0', "blank token file refused");
    free(t1);
    CHECK(file_text(dir, "token") && strcmp(file_text(dir, "token"), "\n") == 0,
          "blank token file left alone");

    put_file(dir, "token", "", 0600);
    err[0] = '\0';
    t1 = state_token(dir, &created, err, sizeof(err));
    CHECK(t1 == NULL && err[0] != '\0', "empty token file refused");
    free(t1);

    {
        char *big = malloc(2000);
        memset(big, 'k', 1999);
        big[1999] = '\0';
        put_file(dir, "token", big, 0600);
        err[0] = '\0';
        t1 = state_token(dir, &created, err, sizeof(err));
        CHECK(t1 == NULL && err[0] != '\0', "token file over 1024 bytes refused");
        free(t1);
        free(big);
    }
    rm_rf(dir);
}

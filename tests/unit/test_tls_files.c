/* test_tls_files.c - the files tls.c reads and writes: the state directory's
 * tls.crt/tls.key (through the checked descriptor, loaded from memory), the
 * administrator's --cert/--key (by path, a key readable by everyone refused),
 * and proxy_private's known_hosts (no links, nobody else's, not writable by
 * others). Runs in temporary directories; the foreign-owner cases need root. */

#include "unit.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "state.h"
#include "tls.h"

static char top[256];

static void make_top(void)
{
    const char *base = getenv("TMPDIR");

    snprintf(top, sizeof(top), "%s/test_tls_files.XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(top)) {
        perror("mkdtemp");
        exit(2);
    }
}

static void rm_top(void)
{
    char cmd[300];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", top);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", top);
}

static void put(const char *path, const char *data, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

    if (fd < 0 || write(fd, data, strlen(data)) != (ssize_t)strlen(data) || fchmod(fd, mode) != 0 ||
        close(fd) != 0) {
        perror(path);
        exit(2);
    }
}

/* The whole file (static buffer) or NULL. */
static const char *text(const char *path)
{
    static char buf[16384];
    int fd = open(path, O_RDONLY);
    ssize_t n;

    if (fd < 0)
        return NULL;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n < 0)
        return NULL;
    buf[n] = '\0';
    return buf;
}

/* tls_server_ctx for dir (or for cert/key files); NULL with err. */
static SSL_CTX *server_ctx(const char *dir, const char *cert, const char *key, char fp[TLS_FP_LEN],
                           int *made, char *err, size_t errlen)
{
    struct state_dir sd = {.fd = -1};
    SSL_CTX *ctx = NULL;

    err[0] = '\0';
    if (state_dir_open(&sd, dir, err, errlen) == 0)
        ctx = tls_server_ctx(&sd, cert, key, fp, made, err, errlen);
    state_dir_close(&sd);
    return ctx;
}

void test_tls_state_files(void)
{
    char dir[512], path[1024], outside[1024], err[600], fp1[TLS_FP_LEN], fp2[TLS_FP_LEN];
    char *saved_key;
    struct stat st;
    SSL_CTX *ctx;
    int made = -1;

    make_top();
    snprintf(dir, sizeof(dir), "%s/state", top);

    /* First start: made, 0600; second start: the same certificate. */
    ctx = server_ctx(dir, NULL, NULL, fp1, &made, err, sizeof(err));
    CHECK(ctx && made == 1, "made: %s", err);
    SSL_CTX_free(ctx);
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, i ? "tls.crt" : "tls.key");
        CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600, "%s mode %o", path,
              (unsigned)(st.st_mode & 0777));
    }
    ctx = server_ctx(dir, NULL, NULL, fp2, &made, err, sizeof(err));
    CHECK(ctx && made == 0 && strcmp(fp1, fp2) == 0, "loaded again: %s", err);
    SSL_CTX_free(ctx);

    /* tls.key replaced by a link to a key of ours elsewhere: refused, not
     * followed, not replaced by a new one. */
    snprintf(path, sizeof(path), "%s/tls.key", dir);
    snprintf(outside, sizeof(outside), "%s/outside.key", top);
    saved_key = strdup(text(path));
    CHECK(rename(path, outside) == 0, "move the key out");
    CHECK(symlink(outside, path) == 0, "symlink");
    ctx = server_ctx(dir, NULL, NULL, fp2, &made, err, sizeof(err));
    CHECK(!ctx && strstr(err, "tls.key is a symbolic link"), "linked key refused: %s", err);
    SSL_CTX_free(ctx);
    CHECK(lstat(path, &st) == 0 && S_ISLNK(st.st_mode), "link left alone");
    CHECK(text(outside) && strcmp(text(outside), saved_key) == 0, "outside key unchanged");
    unlink(path);
    CHECK(rename(outside, path) == 0, "key back");

    /* tls.crt writable by others: refused. */
    snprintf(path, sizeof(path), "%s/tls.crt", dir);
    chmod(path, 0666);
    ctx = server_ctx(dir, NULL, NULL, fp2, &made, err, sizeof(err));
    CHECK(!ctx && strstr(err, "tls.crt is writable by group and others"), "writable crt: %s", err);
    SSL_CTX_free(ctx);
    chmod(path, 0600);

    /* Owned by someone else. */
    if (geteuid() == 0) {
        snprintf(path, sizeof(path), "%s/tls.key", dir);
        CHECK(chown(path, 65534, 65534) == 0, "chown");
        ctx = server_ctx(dir, NULL, NULL, fp2, &made, err, sizeof(err));
        CHECK(!ctx && strstr(err, "tls.key is owned by uid 65534"), "foreign key: %s", err);
        SSL_CTX_free(ctx);
        CHECK(chown(path, 0, 0) == 0, "chown back");
    }

    /* A damaged certificate is named. */
    snprintf(path, sizeof(path), "%s/tls.crt", dir);
    put(path, "not a certificate\n", 0600);
    ctx = server_ctx(dir, NULL, NULL, fp2, &made, err, sizeof(err));
    CHECK(!ctx && strstr(err, "cannot load certificate") && strstr(err, "tls.crt"),
          "damaged crt: %s", err);
    SSL_CTX_free(ctx);
    free(saved_key);
    rm_top();
}

void test_tls_user_files(void)
{
    char dir[512], crt[1024], key[1024], path[1024], link[1024], err[600], fp[TLS_FP_LEN],
        fp_state[TLS_FP_LEN], *pem = NULL;
    STACK_OF(X509) *chain = NULL;
    SSL_CTX *ctx;
    int made = 0;

    make_top();
    snprintf(dir, sizeof(dir), "%s/state", top);
    ctx = server_ctx(dir, NULL, NULL, fp_state, &made, err, sizeof(err));
    CHECK(ctx != NULL, "%s", err);
    SSL_CTX_free(ctx);
    /* Copies of the made pair, as an administrator's files. */
    snprintf(crt, sizeof(crt), "%s/my.crt", top);
    snprintf(key, sizeof(key), "%s/my.key", top);
    snprintf(path, sizeof(path), "%s/tls.crt", dir);
    pem = strdup(text(path));
    put(crt, pem, 0644);
    snprintf(path, sizeof(path), "%s/tls.key", dir);
    put(key, text(path), 0600);

    ctx = server_ctx(dir, crt, key, fp, &made, err, sizeof(err));
    CHECK(ctx && made == 0 && strcmp(fp, fp_state) == 0, "0600 key: %s", err);
    SSL_CTX_free(ctx);

    /* Readable by its group: accepted (with a warning in the log). */
    chmod(key, 0640);
    ctx = server_ctx(dir, crt, key, fp, &made, err, sizeof(err));
    CHECK(ctx != NULL, "0640 key: %s", err);
    SSL_CTX_free(ctx);

    /* Readable by everyone: refused, saying how to fix it. */
    chmod(key, 0644);
    ctx = server_ctx(dir, crt, key, fp, &made, err, sizeof(err));
    CHECK(!ctx && strstr(err, "readable by every user") && strstr(err, "chmod 600") &&
              strstr(err, key),
          "0644 key: %s", err);
    SSL_CTX_free(ctx);

    /* Writable by group: refused (key or certificate). */
    chmod(key, 0620);
    ctx = server_ctx(dir, crt, key, fp, &made, err, sizeof(err));
    CHECK(!ctx && strstr(err, "writable by its group"), "0620 key: %s", err);
    SSL_CTX_free(ctx);
    chmod(key, 0600);
    chmod(crt, 0646);
    ctx = server_ctx(dir, crt, key, fp, &made, err, sizeof(err));
    CHECK(!ctx && strstr(err, "certificate file") && strstr(err, "writable by others"),
          "0646 crt: %s", err);
    SSL_CTX_free(ctx);
    chmod(crt, 0644);

    /* A link the administrator chose is followed (letsencrypt's live/). */
    snprintf(link, sizeof(link), "%s/live.key", top);
    CHECK(symlink(key, link) == 0, "symlink");
    ctx = server_ctx(dir, crt, link, fp, &made, err, sizeof(err));
    CHECK(ctx != NULL, "key through a link: %s", err);
    SSL_CTX_free(ctx);

    /* A chain: leaf first, then more certificates (here the same one again). */
    {
        size_t n = strlen(pem);
        char *two = malloc(2 * n + 1);
        memcpy(two, pem, n);
        memcpy(two + n, pem, n + 1);
        put(crt, two, 0644);
        free(two);
        ctx = server_ctx(dir, crt, key, fp, &made, err, sizeof(err));
        CHECK(ctx && strcmp(fp, fp_state) == 0, "chain: %s", err);
        CHECK(ctx && SSL_CTX_get0_chain_certs(ctx, &chain) == 1 && chain &&
                  sk_X509_num(chain) == 1,
              "one chain certificate after the leaf");
        SSL_CTX_free(ctx);
    }

    /* A key that does not match. */
    {
        char other[512];
        snprintf(other, sizeof(other), "%s/other", top);
        ctx = server_ctx(other, NULL, NULL, fp, &made, err, sizeof(err));
        SSL_CTX_free(ctx);
        snprintf(path, sizeof(path), "%s/tls.key", other);
        ctx = server_ctx(dir, crt, path, fp, &made, err, sizeof(err));
        CHECK(!ctx && strstr(err, "does not match"), "mismatched key: %s", err);
        SSL_CTX_free(ctx);
    }
    free(pem);
    rm_top();
}

void test_tls_known_hosts_file(void)
{
    char kh[1024], target[1024], err[600], old[TLS_FP_LEN];
    static const char fp_a[] = "AA:AA", fp_b[] = "BB:BB";
    struct stat st;

    make_top();
    snprintf(kh, sizeof(kh), "%s/cfg/known_hosts", top);
    CHECK(tls_known_hosts_check(kh, "h:1", fp_a, old, err, sizeof(err)) == 0, "learned: %s", err);
    CHECK(stat(kh, &st) == 0 && (st.st_mode & 0777) == 0600, "made 0600");
    CHECK(tls_known_hosts_check(kh, "h:1", fp_a, old, err, sizeof(err)) == 1, "known: %s", err);
    CHECK(tls_known_hosts_check(kh, "h:1", fp_b, old, err, sizeof(err)) == -1 &&
              strstr(err, "CHANGED") && strcmp(old, fp_a) == 0,
          "changed: %s", err);

    /* Writable by others: someone could have planted a line. */
    chmod(kh, 0622);
    CHECK(tls_known_hosts_check(kh, "h:1", fp_a, old, err, sizeof(err)) == -1 &&
              strstr(err, "writable by group and others") && strstr(err, "refusing"),
          "0622: %s", err);
    chmod(kh, 0620);
    CHECK(tls_known_hosts_check(kh, "h:1", fp_a, old, err, sizeof(err)) == -1 &&
              strstr(err, "writable by its group"),
          "0620: %s", err);
    chmod(kh, 0644);
    CHECK(tls_known_hosts_check(kh, "h:1", fp_a, old, err, sizeof(err)) == 1,
          "readable by others is fine: %s", err);

    /* Owned by someone else. */
    if (geteuid() == 0) {
        CHECK(chown(kh, 65534, 65534) == 0, "chown");
        CHECK(tls_known_hosts_check(kh, "h:1", fp_a, old, err, sizeof(err)) == -1 &&
                  strstr(err, "owned by uid 65534"),
              "foreign: %s", err);
        CHECK(chown(kh, 0, 0) == 0, "chown back");
    }

    /* A symbolic link: refused, whether its target exists or not; nothing is
     * created or appended through it. */
    snprintf(target, sizeof(target), "%s/elsewhere", top);
    put(target, "h:2 CC:CC\n", 0600);
    unlink(kh);
    CHECK(symlink(target, kh) == 0, "symlink");
    CHECK(tls_known_hosts_check(kh, "h:2", "CC:CC", old, err, sizeof(err)) == -1 &&
              strstr(err, "symbolic link"),
          "link: %s", err);
    CHECK(tls_known_hosts_check(kh, "h:3", fp_a, old, err, sizeof(err)) == -1, "link, new host");
    CHECK(strcmp(text(target), "h:2 CC:CC\n") == 0, "nothing appended through the link");
    unlink(target);
    CHECK(tls_known_hosts_check(kh, "h:3", fp_a, old, err, sizeof(err)) == -1 &&
              strstr(err, "symbolic link"),
          "dangling link: %s", err);
    CHECK(lstat(target, &st) != 0, "the dangling link's target was not created");
    rm_top();
}

/* test_config.c - config.c: the "key = value" splitter with its limits and
 * file:line errors, config_bool, config_long, and the token file's mode checks. */

#include "unit.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"

static int parse(const char *text, struct config *c, char *err, size_t errlen)
{
    return config_parse(text, strlen(text), "t.conf", c, err, errlen);
}

void test_config_parse(void)
{
    struct config c;
    char err[256];
    int r;

    r = parse("# comment\n\n  max-conns = 100  \n\tlog-level=debug\r\n"
              "register = a:1:h:2\nregister = b:3:h:4\nempty =\n  # indented comment\n"
              "token-file = /etc/my secret file\nlast = no newline", &c, err, sizeof(err));
    CHECK(r == 0, "valid file refused: %s", err);
    CHECK(c.n == 7, "7 settings, got %d", c.n);
    if (r == 0 && c.n == 7) {
        CHECK(strcmp(c.entries[0].key, "max-conns") == 0 && strcmp(c.entries[0].value, "100") == 0
              && c.entries[0].line == 3, "line 3: %s=%s@%d", c.entries[0].key,
              c.entries[0].value, c.entries[0].line);
        CHECK(strcmp(c.entries[1].key, "log-level") == 0 &&
              strcmp(c.entries[1].value, "debug") == 0 && c.entries[1].line == 4,
              "CRLF and tab: '%s'", c.entries[1].value);
        CHECK(strcmp(c.entries[3].value, "b:3:h:4") == 0 && c.entries[3].line == 6, "repeat");
        CHECK(strcmp(c.entries[4].key, "empty") == 0 && c.entries[4].value[0] == '\0',
              "empty value: '%s'", c.entries[4].value);
        CHECK(strcmp(c.entries[5].value, "/etc/my secret file") == 0, "inner blanks kept: '%s'",
              c.entries[5].value);
        CHECK(strcmp(c.entries[6].value, "no newline") == 0 && c.entries[6].line == 10,
              "last line without LF: '%s' @%d", c.entries[6].value, c.entries[6].line);
    }
    config_free(&c);

    r = parse("", &c, err, sizeof(err));
    CHECK(r == 0 && c.n == 0, "empty file");
    config_free(&c);

    {
        static const struct {
            const char *text;
            const char *err;
        } bad[] = {
            {"a = 1\nnovalue\n", "t.conf:2: expected '=' after the key"},
            {"a = 1\n\nKEY = 1\n", "t.conf:3: expected 'key = value'"},
            {"= 1\n", "t.conf:1: expected 'key = value'"},
            {"a.b = 1\n", "t.conf:1: expected 'key = value'"},
            {"a = 1\nb = x\001y\n", "t.conf:2: a control byte"},
            {"a = x\ry\n", "t.conf:1: a CR inside the line"},
            {"a = 1\n--max-conns = 2\n", "t.conf:2: expected 'key = value'"},
            {"abcdefghijabcdefghijabcdefghijabc = 1\n", "t.conf:1: key too long"},
            {"a = 1\nb = 2\x7f\n", "t.conf:2: a control byte"},
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
            err[0] = '\0';
            r = parse(bad[i].text, &c, err, sizeof(err));
            CHECK(r == -1 && strncmp(err, bad[i].err, strlen(bad[i].err)) == 0,
                  "bad case %zu: r=%d err='%s', expected '%s'", i, r, err, bad[i].err);
            CHECK(c.n == 0 && !c.entries && !c.text, "case %zu: not emptied", i);
            config_free(&c);
        }
    }
    {
        char nul[] = "a = 1\nb = x\0y\n";
        r = config_parse(nul, sizeof(nul) - 1, "t.conf", &c, err, sizeof(err));
        CHECK(r == -1 && strstr(err, "t.conf:2: a NUL byte"), "NUL: %s", err);
        config_free(&c);
    }
}

void test_config_limits(void)
{
    struct config c;
    char err[256];
    char *big = malloc(CONFIG_MAX_BYTES + 2);
    size_t n;
    int r;

    if (!big) {
        CHECK(0, "out of memory");
        return;
    }
    /* A line of exactly CONFIG_LINE_MAX bytes is fine, one more is not. */
    n = (size_t)snprintf(big, CONFIG_MAX_BYTES, "k = ");
    memset(big + n, 'v', CONFIG_LINE_MAX - n);
    big[CONFIG_LINE_MAX] = '\n';
    r = config_parse(big, CONFIG_LINE_MAX + 1, "t.conf", &c, err, sizeof(err));
    CHECK(r == 0 && c.n == 1 && strlen(c.entries[0].value) == CONFIG_LINE_MAX - n,
          "line of %d bytes: %s", CONFIG_LINE_MAX, err);
    config_free(&c);
    big[CONFIG_LINE_MAX] = 'v';
    big[CONFIG_LINE_MAX + 1] = '\n';
    r = config_parse(big, CONFIG_LINE_MAX + 2, "t.conf", &c, err, sizeof(err));
    CHECK(r == -1 && strstr(err, "t.conf:1: line longer than"), "long line: %s", err);
    config_free(&c);

    /* Entries: CONFIG_MAX_ENTRIES fine, one more refused with its line. */
    n = 0;
    for (int i = 0; i <= CONFIG_MAX_ENTRIES; i++)
        n += (size_t)snprintf(big + n, CONFIG_MAX_BYTES - n, "k%d = %d\n", i, i);
    r = config_parse(big, n - (size_t)snprintf(NULL, 0, "k%d = %d\n", CONFIG_MAX_ENTRIES,
                                               CONFIG_MAX_ENTRIES),
                     "t.conf", &c, err, sizeof(err));
    CHECK(r == 0 && c.n == CONFIG_MAX_ENTRIES, "%d settings: %s", CONFIG_MAX_ENTRIES, err);
    config_free(&c);
    r = config_parse(big, n, "t.conf", &c, err, sizeof(err));
    CHECK(r == -1 && strstr(err, "t.conf:257: more than 256 settings"), "too many: %s", err);
    config_free(&c);

    /* Lines: comments count too. */
    memset(big, '\n', CONFIG_MAX_LINES + 1);
    r = config_parse(big, CONFIG_MAX_LINES, "t.conf", &c, err, sizeof(err));
    CHECK(r == 0 && c.n == 0, "%d empty lines: %s", CONFIG_MAX_LINES, err);
    config_free(&c);
    r = config_parse(big, CONFIG_MAX_LINES + 1, "t.conf", &c, err, sizeof(err));
    CHECK(r == -1 && strstr(err, "t.conf:2001: more than 2000 lines"), "too many lines: %s", err);
    config_free(&c);

    /* Size. */
    memset(big, '#', CONFIG_MAX_BYTES + 1);
    r = config_parse(big, CONFIG_MAX_BYTES + 1, "t.conf", &c, err, sizeof(err));
    CHECK(r == -1 && strstr(err, "t.conf: larger than"), "too big: %s", err);
    config_free(&c);
    free(big);

    CHECK(config_bool("yes") == 1 && config_bool("TRUE") == 1 && config_bool("on") == 1 &&
          config_bool("1") == 1, "true values");
    CHECK(config_bool("no") == 0 && config_bool("False") == 0 && config_bool("off") == 0 &&
          config_bool("0") == 0, "false values");
    CHECK(config_bool("") == -1 && config_bool("2") == -1 && config_bool("yess") == -1, "others");
    {
        long v = 7;
        CHECK(config_long("5", 5, 3600, &v) == 0 && v == 5, "the low bound");
        CHECK(config_long("3600", 5, 3600, &v) == 0 && v == 3600, "the high bound");
        CHECK(config_long("4", 5, 3600, &v) == -1 && config_long("3601", 5, 3600, &v) == -1 &&
              v == 3600, "out of range, *out untouched");
        CHECK(config_long("", 0, 9, &v) == -1 && config_long("1x", 0, 9, &v) == -1 &&
              config_long("99999999999999999999", 0, 9, &v) == -1, "not a number");
    }
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    int fd;

    unlink(path);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text))
        CHECK(0, "cannot write %s", path);
    if (fd >= 0) {
        fchmod(fd, mode);
        close(fd);
    }
}

void test_config_files(void)
{
    char dir[] = "/tmp/unit-config-XXXXXX", path[256], out[300], err[512];
    struct config c;
    int r;

    if (!mkdtemp(dir)) {
        CHECK(0, "mkdtemp");
        return;
    }
    snprintf(path, sizeof(path), "%s/tok", dir);

    write_file(path, "  s3cret-token \nsecond line ignored\n", 0600);
    r = config_read_secret(path, out, sizeof(out), err, sizeof(err));
    CHECK(r == 0 && strcmp(out, "s3cret-token") == 0, "token file: r=%d '%s' %s", r, out, err);
    write_file(path, "s3cret\r\n", 0400);
    r = config_read_secret(path, out, sizeof(out), err, sizeof(err));
    CHECK(r == 0 && strcmp(out, "s3cret") == 0, "0400 and CRLF: %s", err);

    write_file(path, "s3cret\n", 0640);
    r = config_read_secret(path, out, sizeof(out), err, sizeof(err));
    CHECK(r == -1 && strstr(err, "its group") && strstr(err, "chmod 600") && out[0] == '\0',
          "group-readable accepted: %s", err);
    CHECK(!strstr(err, "s3cret"), "the secret is in the message: %s", err);
    write_file(path, "s3cret\n", 0604);
    r = config_read_secret(path, out, sizeof(out), err, sizeof(err));
    CHECK(r == -1 && strstr(err, "other users"), "world-readable accepted: %s", err);
    write_file(path, "s3cret\n", 0620);
    r = config_read_secret(path, out, sizeof(out), err, sizeof(err));
    CHECK(r == -1, "group-writable accepted: %s", err);

    write_file(path, "\n", 0600);
    r = config_read_secret(path, out, sizeof(out), err, sizeof(err));
    CHECK(r == -1 && strstr(err, "empty"), "empty token: %s", err);
    write_file(path, "a b\n", 0600);
    r = config_read_secret(path, out, sizeof(out), err, sizeof(err));
    CHECK(r == -1 && strstr(err, "blank or control"), "token with a blank: %s", err);
    write_file(path, "0123456789\n", 0600);
    r = config_read_secret(path, out, 8, err, sizeof(err));
    CHECK(r == -1 && strstr(err, "longer than 7"), "long token: %s", err);
    r = config_read_secret(dir, out, sizeof(out), err, sizeof(err));
    CHECK(r == -1 && strstr(err, "not a regular file"), "a directory: %s", err);
    unlink(path);
    r = config_read_secret(path, out, sizeof(out), err, sizeof(err));
    CHECK(r == -1 && strstr(err, path), "missing file: %s", err);

    snprintf(path, sizeof(path), "%s/x.conf", dir);
    write_file(path, "a = 1\n\nb = 2\nbad line\n", 0644);
    r = config_load(path, &c, err, sizeof(err));
    CHECK(r == -1 && strstr(err, path) && strstr(err, ":4: "), "file:line of a file: %s", err);
    config_free(&c);
    write_file(path, "a = 1\n", 0644);
    r = config_load(path, &c, err, sizeof(err));
    CHECK(r == 0 && c.n == 1 && (c.mode & 0777) == 0644, "load: %s", err);
    config_free(&c);
    unlink(path);
    rmdir(dir);
}

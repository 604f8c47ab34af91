/* config.c - configuration files: split "key = value" lines within explicit
 * limits (see config.h), and read secret files with their mode checked. */

#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

void config_free(struct config *c)
{
    if (!c)
        return;
    free(c->text);
    free(c->entries);
    c->text = NULL;
    c->entries = NULL;
    c->n = 0;
}

static int is_blank(char ch)
{
    return ch == ' ' || ch == '\t';
}

static int is_key_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-';
}

/* Error "PATH:LINE: ..." (line > 0) or "PATH: ...". */
static void set_err(char *err, size_t errlen, const char *path, int line, const char *msg)
{
    if (line > 0)
        snprintf(err, errlen, "%s:%d: %s", path, line, msg);
    else
        snprintf(err, errlen, "%s: %s", path, msg);
}

/* One line, s[0..n) without its LF, cut in place (the copy is ours). 1 when
 * it holds a setting (*key, *val set), 0 when blank or a comment, -1 with msg. */
static int parse_line(char *s, size_t n, char **key, char **val, const char **msg)
{
    size_t i = 0, k, v, e;

    if (n > 0 && s[n - 1] == '\r')
        n--;
    for (size_t j = 0; j < n; j++) {
        unsigned char ch = (unsigned char)s[j];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f) {
            *msg = ch == '\r' ? "a CR inside the line" : "a control byte in the line";
            return -1;
        }
    }
    while (i < n && is_blank(s[i]))
        i++;
    if (i == n || s[i] == '#')
        return 0;
    if (s[i] == '-') {
        *msg = "expected 'key = value', the key without the option's leading '--'";
        return -1;
    }
    k = i;
    while (i < n && is_key_char(s[i]))
        i++;
    if (i == k) {
        *msg = "expected 'key = value' (a key is made of a-z, 0-9 and '-')";
        return -1;
    }
    if (i - k > CONFIG_KEY_MAX) {
        *msg = "key too long";
        return -1;
    }
    e = i;
    while (i < n && is_blank(s[i]))
        i++;
    if (i == n || s[i] != '=') {
        *msg = i < n && !is_key_char(s[i]) && s[i] != '='
                   ? "expected 'key = value' (a key is made of a-z, 0-9 and '-')"
                   : "expected '=' after the key";
        return -1;
    }
    i++;
    while (i < n && is_blank(s[i]))
        i++;
    v = i;
    while (n > v && is_blank(s[n - 1]))
        n--;
    s[e] = '\0';
    s[n] = '\0';
    *key = s + k;
    *val = s + v;
    return 1;
}

int config_parse(const char *text, size_t len, const char *path, struct config *c, char *err,
                 size_t errlen)
{
    size_t pos = 0;
    int line = 0;
    char msg[96];

    memset(c, 0, sizeof(*c));
    snprintf(c->path, sizeof(c->path), "%s", path ? path : "(config)");
    if (len > CONFIG_MAX_BYTES) {
        snprintf(msg, sizeof(msg), "larger than %d bytes", CONFIG_MAX_BYTES);
        set_err(err, errlen, c->path, 0, msg);
        return -1;
    }
    c->text = malloc(len + 1);
    c->entries = calloc(CONFIG_MAX_ENTRIES, sizeof(*c->entries));
    if (!c->text || !c->entries) {
        set_err(err, errlen, c->path, 0, "out of memory");
        goto fail;
    }
    if (len)
        memcpy(c->text, text, len);
    c->text[len] = '\0';
    while (pos < len) {
        char *s = c->text + pos, *nl = memchr(s, '\n', len - pos), *key = NULL, *val = NULL;
        size_t n = nl ? (size_t)(nl - s) : len - pos;
        const char *why = NULL;
        int r;

        line++;
        if (line > CONFIG_MAX_LINES) {
            snprintf(msg, sizeof(msg), "more than %d lines", CONFIG_MAX_LINES);
            set_err(err, errlen, c->path, line, msg);
            goto fail;
        }
        if (n > (size_t)CONFIG_LINE_MAX + (n > 0 && s[n - 1] == '\r')) {
            snprintf(msg, sizeof(msg), "line longer than %d bytes", CONFIG_LINE_MAX);
            set_err(err, errlen, c->path, line, msg);
            goto fail;
        }
        if (memchr(s, '\0', n)) {
            set_err(err, errlen, c->path, line, "a NUL byte in the line");
            goto fail;
        }
        pos += n + (nl ? 1 : 0);
        r = parse_line(s, n, &key, &val, &why);
        if (r < 0) {
            set_err(err, errlen, c->path, line, why);
            goto fail;
        }
        if (r == 0)
            continue;
        if (c->n >= CONFIG_MAX_ENTRIES) {
            snprintf(msg, sizeof(msg), "more than %d settings", CONFIG_MAX_ENTRIES);
            set_err(err, errlen, c->path, line, msg);
            goto fail;
        }
        memcpy(c->entries[c->n].key, key, strlen(key) + 1);
        c->entries[c->n].value = val;
        c->entries[c->n].line = line;
        c->n++;
    }
    return 0;
fail:
    config_free(c);
    return -1;
}

/* Read all of fd (a regular file of at most max bytes) into a new buffer. */
static char *read_small_file(int fd, size_t max, size_t *len, const char *path, char *err,
                             size_t errlen, struct stat *st)
{
    char *buf = NULL;
    size_t got = 0;

    if (fstat(fd, st) != 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    if (!S_ISREG(st->st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        return NULL;
    }
    if (st->st_size < 0 || (size_t)st->st_size > max) {
        snprintf(err, errlen, "%s: larger than %zu bytes", path, max);
        return NULL;
    }
    buf = malloc(max + 1);
    if (!buf) {
        snprintf(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    for (;;) {
        ssize_t r = read(fd, buf + got, max + 1 - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(err, errlen, "%s: %s", path, strerror(errno));
            free(buf);
            return NULL;
        }
        if (r == 0)
            break;
        got += (size_t)r;
        if (got > max) {
            snprintf(err, errlen, "%s: larger than %zu bytes", path, max);
            free(buf);
            return NULL;
        }
    }
    buf[got] = '\0';
    *len = got;
    return buf;
}

int config_load(const char *path, struct config *c, char *err, size_t errlen)
{
    struct stat st;
    size_t len = 0;
    char *text;
    int fd, rc;

    memset(c, 0, sizeof(*c));
    /* O_NONBLOCK: a FIFO put there cannot hang the start or a reload. */
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    text = read_small_file(fd, CONFIG_MAX_BYTES, &len, path, err, errlen, &st);
    close(fd);
    if (!text)
        return -1;
    rc = config_parse(text, len, path, c, err, errlen);
    free(text);
    if (rc == 0)
        c->mode = (int)st.st_mode;
    return rc;
}

int config_long(const char *v, long lo, long hi, long *out)
{
    char *end;
    long n;

    errno = 0;
    n = strtol(v, &end, 10);
    if (errno || end == v || *end || n < lo || n > hi)
        return -1;
    *out = n;
    return 0;
}

int config_bool(const char *v)
{
    static const char *const yes[] = {"yes", "true", "on", "1"};
    static const char *const no[] = {"no", "false", "off", "0"};

    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(v, yes[i]) == 0)
            return 1;
        if (strcasecmp(v, no[i]) == 0)
            return 0;
    }
    return -1;
}

#define SECRET_FILE_MAX 4096

int config_read_secret(const char *path, char *out, size_t cap, char *err, size_t errlen)
{
    struct stat st;
    size_t len = 0, a = 0, b;
    char *text = NULL;
    int fd, rc = -1;

    out[0] = '\0';
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        snprintf(err, errlen, "token file %s: %s", path, strerror(errno));
        return -1;
    }
    text = read_small_file(fd, SECRET_FILE_MAX, &len, path, err, errlen, &st);
    close(fd);
    if (!text)
        goto out;
    if (st.st_uid != geteuid() && st.st_uid != 0) {
        snprintf(err, errlen, "token file %s belongs to uid %u, not to you (uid %u) or root: "
                 "refusing it", path, (unsigned)st.st_uid, (unsigned)geteuid());
        goto out;
    }
    if (st.st_mode & 0066) {
        snprintf(err, errlen, "token file %s is open to %s (mode %03o): refusing it; "
                 "chmod 600 %s", path, st.st_mode & 0006 ? "other users" : "its group",
                 (unsigned)(st.st_mode & 0777), path);
        goto out;
    }
    b = 0;
    while (b < len && text[b] != '\n')
        b++;
    while (a < b && (text[a] == ' ' || text[a] == '\t'))
        a++;
    while (b > a && (text[b - 1] == ' ' || text[b - 1] == '\t' || text[b - 1] == '\r'))
        b--;
    if (b == a) {
        snprintf(err, errlen, "token file %s: the first line is empty", path);
        goto out;
    }
    for (size_t i = a; i < b; i++) {
        unsigned char ch = (unsigned char)text[i];
        if (ch < 0x21 || ch == 0x7f) {
            snprintf(err, errlen, "token file %s: the token holds a blank or control byte", path);
            goto out;
        }
    }
    if (b - a >= cap) {
        snprintf(err, errlen, "token file %s: the token is longer than %zu bytes", path, cap - 1);
        goto out;
    }
    memcpy(out, text + a, b - a);
    out[b - a] = '\0';
    rc = 0;
out:
    if (text) {
        /* The secret's copy goes before the buffer does. */
        memset(text, 0, len);
        free(text);
    }
    return rc;
}

const struct config_option *config_option(const struct config_option *opts, const char *name)
{
    for (; opts->name; opts++)
        if (strcmp(opts->name, name) == 0)
            return opts;
    return NULL;
}

const char *config_find_arg(int argc, char **argv, const struct config_option *opts,
                            const char *name)
{
    const char *found = NULL;

    for (int i = 1; i < argc; i++) {
        const struct config_option *o;
        if (strncmp(argv[i], "--", 2) != 0)
            continue;
        o = config_option(opts, argv[i] + 2);
        if (!o || !o->takes_value)
            continue;
        if (i + 1 >= argc)
            break;
        if (strcmp(o->name, name) == 0)
            found = argv[i + 1];
        i++;
    }
    return found;
}

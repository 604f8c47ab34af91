#ifndef CONFIG_H
#define CONFIG_H

/* Configuration files (/etc/proxy_public.conf, /etc/proxy_private.conf).
 *
 * The format, one setting a line:
 *
 *     # a comment (only at the start of a line, after optional blanks)
 *     key = value
 *
 * A key is a command-line option without its leading "--" ([a-z0-9-], at most
 * CONFIG_KEY_MAX characters); the value is the rest of the line after '=', with
 * the blanks (spaces, tabs) around it removed; there is no quoting. Blank
 * lines are ignored; a CR before the LF is dropped. Keys may repeat (the
 * caller decides what a repeat means). Which keys exist and what their values
 * mean is for the caller (proxy_public.c, proxy_private.c); this file only
 * splits the text, within explicit limits, and names file and line in every
 * error.
 *
 * The file is untrusted input like any other: at most CONFIG_MAX_BYTES,
 * CONFIG_MAX_LINES lines of at most CONFIG_LINE_MAX bytes, CONFIG_MAX_ENTRIES
 * settings; no NUL or other control bytes but tab. The parser is not
 * recursive and keeps nothing large on the stack (it runs on the signal
 * thread's stack at a reload); fuzz/fuzz_config.c checks it there. */

#include <stddef.h>

#define CONFIG_MAX_BYTES (64 * 1024)
#define CONFIG_MAX_LINES 2000
#define CONFIG_LINE_MAX 1024
#define CONFIG_MAX_ENTRIES 256
#define CONFIG_KEY_MAX 32
#define CONFIG_PATH_MAX 512

struct config_entry {
    char key[CONFIG_KEY_MAX + 1];
    const char *value;          /* into config.text, NUL-terminated */
    int line;                   /* 1-based */
};

struct config {
    char path[CONFIG_PATH_MAX];  /* for messages */
    char *text;                 /* a private copy, cut into values */
    struct config_entry *entries;
    int n;
    int mode;                   /* st_mode of the file (config_load), 0 for text */
};

/* Split len bytes of text (named path in errors) into c (which the caller
 * then frees with config_free). 0, or -1 with err "PATH:LINE: what is wrong"
 * (or "PATH: ..." for the whole file) and c empty. */
int config_parse(const char *text, size_t len, const char *path, struct config *c, char *err,
                 size_t errlen);

/* Read and parse the file at path: a regular file of at most
 * CONFIG_MAX_BYTES. 0, or -1 with err naming the file. */
int config_load(const char *path, struct config *c, char *err, size_t errlen);

void config_free(struct config *c);

/* Parse a boolean value: yes/no, true/false, on/off, 1/0. 1, 0, or -1. */
int config_bool(const char *v);

/* Parse a whole decimal number from lo to hi into *out: 0, or -1 (and *out
 * untouched) when v is not one. */
int config_long(const char *v, long lo, long hi, long *out);

/* Read a secret (a token) from the file at path into out (cap bytes, NUL
 * included): the first line, blanks around it removed; it must not be empty,
 * must fit, and hold no control bytes. The file must be a regular file owned
 * by us or root and readable or writable by nobody else (no group or other
 * bits at all: `chmod 600`). 0, or -1 with err naming the file and the fix. */
int config_read_secret(const char *path, char *out, size_t cap, char *err, size_t errlen);

/* Options of a program, for config_find_option() and config_option(). */
struct config_option {
    const char *name;           /* without "--"; also the key in a config file */
    int takes_value;            /* 0: a flag (in a file: key = yes|no) */
    int file_only;              /* a key for what the command line gives by position */
};

/* The entry of opts named name, or NULL. */
const struct config_option *config_option(const struct config_option *opts, const char *name);

/* The value of the last `--name VALUE` in argv, skipping the values of the
 * options of opts that take one (so `--token --config` is a token); NULL when
 * absent or without a value. */
const char *config_find_arg(int argc, char **argv, const struct config_option *opts,
                            const char *name);

#endif

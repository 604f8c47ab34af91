#ifndef TOKENS_H
#define TOKENS_H

/* Scoped tokens of the public side. The admin token (STATE_DIR/token, or
 * --token) may do everything; the admin creates further tokens, each with a
 * label and a scope: the private proxy names it may connect as, the public
 * ports its apps may use, at most how many apps and connections. They are
 * kept in STATE_DIR/tokens.json as SHA-256 hashes, never in clear: a token
 * is 32 random bytes, so a plain hash is as strong as a slow one. */

#include <jansson.h>
#include <stddef.h>
#include <time.h>

#include "packet.h"

struct state_dir;

#define TOKENS_MAX 256              /* scoped tokens on one server */
#define TOKEN_ID_LEN 12             /* hex digits of a token's id */
#define TOKEN_LABEL_MAX 64
#define TOKEN_PRIVATES_MAX 16       /* names (or NAME* prefixes) of a scope */
#define TOKEN_RANGES_MAX 8          /* port ranges of a scope */
#define TOKEN_MAX_APPS_LIMIT 1024
#define TOKEN_MAX_CONNS_LIMIT 100000

struct token_scope {
    char id[TOKEN_ID_LEN + 1];
    char label[TOKEN_LABEL_MAX + 1];
    char privates[TOKEN_PRIVATES_MAX][PKT_NAME_MAX + 2]; /* a name, or a prefix and '*' */
    int nprivates;
    struct {
        int lo, hi;
    } ports[TOKEN_RANGES_MAX];
    int nranges;
    char ports_text[128];           /* as given, for messages */
    unsigned max_apps, max_conns;
    time_t created;
};

/* Who sent a request or opened a tunnel: the admin, or a scoped token. */
struct principal {
    int admin;
    struct token_scope scope;       /* a copy, when not admin */
};

/* Load STATE_DIR/tokens.json (missing: no scoped tokens). sd stays the
 * caller's and open. 0, or -1 with err (the file is left untouched). */
int tokens_init(const struct state_dir *sd, char *err, size_t errlen);

/* Is given (len bytes) a scoped token? 1 with its scope in *out, else 0.
 * Compares against every token's hash whatever matches, in constant time. */
int tokens_lookup(const char *given, size_t len, struct token_scope *out);
/* The scope of token id now: 1 (copied to *out, which may be NULL), or 0 when
 * it was revoked meanwhile. */
int tokens_get(const char *id, struct token_scope *out);

/* POST /tokens: a new token from the JSON request. Returns an HTTP status
 * (201, 400, 409 too many, 500 not saved) with *answer (a new reference: the
 * token in clear, shown once, and its scope) or err. */
int tokens_create(json_t *req, json_t **answer, char *err, size_t errlen);
/* 200, 404 or 500. */
int tokens_revoke(const char *id, char *err, size_t errlen);
/* {"tokens": [...]}: every token's id, label and scope, never a hash. */
json_t *tokens_list(void);
/* The scope in obj (a POST /tokens body or a stored entry) into *s; its id,
 * created time and hash are the caller's. 0, or -1 with err naming the
 * member. */
int token_scope_from_json(json_t *obj, struct token_scope *s, char *err, size_t errlen);
/* One token's scope as /tokens shows it. */
json_t *token_scope_json(const struct token_scope *s);

/* Scope checks. */
int scope_allows_private(const struct token_scope *s, const char *name);
int scope_allows_port(const struct token_scope *s, int port);
/* "a, b, c*" for messages. */
void scope_privates_text(const struct token_scope *s, char *out, size_t cap);

/* "admin" or "token:ID(LABEL)" for logs; the label is escaped. */
const char *principal_who(const struct principal *p, char *buf, size_t cap);
/* The owner id apps get: "" for the admin. */
const char *principal_owner(const struct principal *p);

void tokens_shutdown(void);

#endif

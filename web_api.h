#ifndef WEB_API_H
#define WEB_API_H

/* The public side's web port, served by CivetWeb: the HTTP API of docs/API.md,
 * /metrics, and the page embedded from web/. */

#include <stddef.h>

int web_start(const char *bind_addr, int port, const char *token, char *err, size_t errlen);
void web_stop(void);

/* Constant-time comparison of a presented secret with the expected one. */
int web_token_equal(const char *given, size_t given_len, const char *expected);

#endif

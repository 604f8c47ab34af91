#ifndef JSON_DEPTH_H
#define JSON_DEPTH_H

/* A bound on the nesting of JSON text, checked before a recursive parser sees
 * it. Jansson's json_loadb() recurses once per array or object level (it
 * allows 2048), and on a small thread stack (CivetWeb's workers have 100 KiB)
 * a body nested about a thousand deep overflows it. */

#include <stddef.h>

/* 1 when no array or object in buf[0..len) is nested deeper than max_depth
 * levels ("{}" and "[1]" are depth 1, a bare scalar is 0), else 0.
 *
 * Not a validator: it only counts '[' and '{' against ']' and '}' outside
 * strings (a string runs from '"' to the next '"' that is not escaped by a
 * backslash; NUL bytes are ordinary bytes). For any text Jansson's recursion
 * is never deeper than the depth counted here, so max_depth also bounds it.
 * Closers without an opener (invalid JSON) do not lower the count below 0.
 * Non-recursive, no allocation, reads each byte once. */
int json_depth_ok(const char *buf, size_t len, unsigned max_depth);

#endif

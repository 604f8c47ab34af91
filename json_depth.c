/* json_depth.c - nesting bound for JSON text before it is parsed (see json_depth.h). */

#include "json_depth.h"

int json_depth_ok(const char *buf, size_t len, unsigned max_depth)
{
    unsigned depth = 0;
    int in_string = 0;

    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)buf[i];
        if (in_string) {
            if (ch == '\\')
                i++;            /* the escaped byte, whatever it is, cannot end the string */
            else if (ch == '"')
                in_string = 0;
            continue;
        }
        switch (ch) {
        case '"':
            in_string = 1;
            break;
        case '[':
        case '{':
            if (depth >= max_depth)
                return 0;
            depth++;
            break;
        case ']':
        case '}':
            if (depth > 0)
                depth--;
            break;
        default:
            break;
        }
    }
    return 1;
}

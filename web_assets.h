#ifndef WEB_ASSETS_H
#define WEB_ASSETS_H
#include <stddef.h>

/* Files of web/, embedded at build time by tools/embed_web.sh. */
struct web_asset {
    const char *path;          /* "/index.html" */
    const char *mime;
    const unsigned char *data;
    size_t len;
};

extern const struct web_asset web_assets[];
extern const size_t web_assets_count;

#endif

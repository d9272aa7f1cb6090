/*
 * The web page (SPEC section 10): pkg/ui/index.html, app.js and app.css,
 * embedded in the binary at build time and served by the agent and the
 * aggregator at /, /ui/app.js and /ui/app.css. The page reads the same HTTP
 * API as every other client, with the same bearer token; nothing it needs is
 * fetched from outside the binary.
 */
#ifndef EBPF_MONITOR_UI_H
#define EBPF_MONITOR_UI_H

#include <stddef.h>

#include "http_server.h"

/* One embedded file: its route, its Content-Type, and its bytes (static storage). */
struct ui_asset {
    const char *route;
    const char *content_type;
    const char *data;
    size_t len;
};

/* The embedded files, in route order; *n gets their number. */
const struct ui_asset *ui_assets(size_t *n);

/* Registers a GET route for each embedded file. Call before http_server_start(). 0 or -errno. */
int ui_register(struct http_server *s);

#endif

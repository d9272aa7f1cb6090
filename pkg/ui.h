/*
 * The web page (SPEC section 10): pkg/ui/index.html, app.js and app.css,
 * embedded in the binary at build time and served by the agent and the
 * aggregator at /, /ui/app.js and /ui/app.css. The page reads the same HTTP
 * API as every other client, with the same bearer token; nothing it needs is
 * fetched from outside the binary.
 *
 * Each file is embedded twice: as it is, and gzipped at build time (gzip -9 -n,
 * mk/install.mk). A request whose Accept-Encoding names gzip gets the gzipped
 * bytes with Content-Encoding: gzip; every answer says Vary: Accept-Encoding.
 * Each form has a strong ETag from a SHA-256 of its bytes. The page (/) is sent
 * with Cache-Control: no-cache, so a browser revalidates it (If-None-Match →
 * 304 without a body) and an upgraded binary's page is never mixed with an
 * older cached one. It names app.js and app.css with ?v=<their ETag's digits>
 * (added at build time); under that URL they are cached for a year
 * (immutable), under any other they are no-cache like the page.
 *
 * The page goes with a Content-Security-Policy that lets it run only its own
 * script and style, load and connect only to its own origin, and be framed by
 * no one: should an event's text ever reach the DOM as markup, a browser
 * would still run nothing of it. So the files hold no inline script or style
 * (the page sets styles only through the CSSOM).
 */
#define UI_CONTENT_SECURITY_POLICY                                                                 \
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "              \
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
#ifndef EBPF_MONITOR_UI_H
#define EBPF_MONITOR_UI_H

#include <stddef.h>

#include "http_server.h"

/*
 * One embedded file: its route, its Content-Type, its bytes (static storage),
 * gzipped too. The page's bytes are the built index.html (versioned URLs).
 */
struct ui_asset {
    const char *route;
    const char *content_type;
    const char *data;
    size_t len;
    const char *gz_data;
    size_t gz_len;
    char etag[24];    /* "<16 hex digits>" of data, quotes included */
    char gz_etag[28]; /* "<16 hex digits>-gz" of gz_data */
};

/* The embedded files, in route order; *n gets their number. */
const struct ui_asset *ui_assets(size_t *n);

/*
 * Whether an If-None-Match header value (len bytes, any bytes: a list of entity
 * tags, weak ones compared weakly, or *) names etag (NUL-terminated, quotes
 * included). 1 or 0.
 */
int ui_etag_matches(const char *inm, size_t len, const char *etag);

/* Registers a GET route for each embedded file. Call before http_server_start(). 0 or -errno. */
int ui_register(struct http_server *s);

#endif

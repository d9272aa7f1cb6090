/*
 * Serves the web page. Like pkg/openapi.c, the assembler's .incbin copies each
 * file of pkg/ui/ into .rodata when this file is compiled (from the repository
 * root), and its gzipped copy from UI_GEN_DIR (made by mk/install.mk, which also
 * makes this object depend on all of them). index.html comes from UI_GEN_DIR
 * too: pkg/ui/index.html with the files' URLs versioned (?v=<ETag>).
 */
#include "ui.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <openssl/sha.h>

#ifndef UI_DIR
#define UI_DIR "pkg/ui/"
#endif
#ifndef UI_GEN_DIR
#define UI_GEN_DIR "build/gen/ui/"
#endif

/* Embeds file between the symbols ui_<sym>_begin and ui_<sym>_end. */
#define UI_INCBIN(sym, file)                                                                       \
    __asm__(".pushsection .rodata,\"a\"\n"                                                         \
            ".balign 16\n"                                                                         \
            ".hidden ui_" #sym "_begin\n"                                                          \
            ".hidden ui_" #sym "_end\n"                                                            \
            "ui_" #sym "_begin:\n"                                                                 \
            ".incbin \"" file "\"\n"                                                               \
            "ui_" #sym "_end:\n"                                                                   \
            ".byte 0\n"                                                                            \
            ".popsection\n");                                                                      \
    extern const char ui_##sym##_begin[], ui_##sym##_end[]

UI_INCBIN(html, UI_GEN_DIR "index.html");
UI_INCBIN(js, UI_DIR "app.js");
UI_INCBIN(css, UI_DIR "app.css");
UI_INCBIN(html_gz, UI_GEN_DIR "index.html.gz");
UI_INCBIN(js_gz, UI_GEN_DIR "app.js.gz");
UI_INCBIN(css_gz, UI_GEN_DIR "app.css.gz");

#define UI_SPAN(sym) ui_##sym##_begin, (size_t)(ui_##sym##_end - ui_##sym##_begin)

static struct ui_asset assets[3];
static pthread_once_t assets_once = PTHREAD_ONCE_INIT;

/* "<the first 8 bytes of the SHA-256 of data, in hex><suffix>", quotes included. */
static void etag_of(const char *data, size_t len, const char *suffix, char *out, size_t outlen)
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    char hex[17];

    SHA256((const unsigned char *)data, len, md);
    for (int i = 0; i < 8; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    snprintf(out, outlen, "\"%s%s\"", hex, suffix);
}

static void assets_init(void)
{
    /* Filled here, not statically: the sizes are link-time differences. */
    assets[0] = (struct ui_asset){"/", "text/html; charset=utf-8", UI_SPAN(html), UI_SPAN(html_gz)};
    assets[1] = (struct ui_asset){"/ui/app.js", "text/javascript; charset=utf-8", UI_SPAN(js),
                                  UI_SPAN(js_gz)};
    assets[2] =
        (struct ui_asset){"/ui/app.css", "text/css; charset=utf-8", UI_SPAN(css), UI_SPAN(css_gz)};
    for (size_t i = 0; i < sizeof(assets) / sizeof(assets[0]); i++) {
        struct ui_asset *a = &assets[i];
        etag_of(a->data, a->len, "", a->etag, sizeof(a->etag));
        etag_of(a->gz_data, a->gz_len, "-gz", a->gz_etag, sizeof(a->gz_etag));
    }
}

const struct ui_asset *ui_assets(size_t *n)
{
    pthread_once(&assets_once, assets_init);
    *n = sizeof(assets) / sizeof(assets[0]);
    return assets;
}

int ui_etag_matches(const char *inm, size_t len, const char *etag)
{
    size_t elen = strlen(etag);

    for (size_t i = 0; i < len;) {
        while (i < len && (inm[i] == ' ' || inm[i] == ',' || inm[i] == '\t'))
            i++;
        size_t start = i;
        while (i < len && inm[i] != ',')
            i++;
        size_t end = i;
        while (end > start && (inm[end - 1] == ' ' || inm[end - 1] == '\t'))
            end--;
        const char *t = inm + start;
        size_t tlen = end - start;
        if (tlen >= 2 && t[0] == 'W' && t[1] == '/') { /* weak comparison, RFC 9110 13.1.2 */
            t += 2;
            tlen -= 2;
        }
        if ((tlen == 1 && t[0] == '*') || (tlen == elen && memcmp(t, etag, elen) == 0))
            return 1;
    }
    return 0;
}

/*
 * A query string is looked at only for the version of app.js and app.css; any
 * other is ignored: the page keeps its view and filters in the URL fragment,
 * which never reaches the server, but a link with a query still opens the page.
 */
static void handle_asset(void *ctx, const struct http_request *req, struct http_response *res)
{
    const struct ui_asset *a = ctx;
    const char *etag = req->accepts_gzip ? a->gz_etag : a->etag;

    res->content_type = a->content_type;
    if (a->route[1] == '\0')
        res->content_security_policy = UI_CONTENT_SECURITY_POLICY;
    /* ?v=<the ETag's digits>, as index.html names the files: this URL is this content for good. */
    size_t vlen = strlen(a->etag) - 2;
    if (a->route[1] != '\0' && req->query_len == 2 + vlen && memcmp(req->query, "v=", 2) == 0 &&
        memcmp(req->query + 2, a->etag + 1, vlen) == 0)
        res->cache_control = "public, max-age=31536000, immutable";
    else
        res->cache_control = "no-cache";
    res->etag = etag;
    res->vary_encoding = true;
    if (req->if_none_match != NULL &&
        ui_etag_matches(req->if_none_match, req->if_none_match_len, etag)) {
        res->status = 304;
        return;
    }
    if (req->accepts_gzip) {
        res->content_encoding = "gzip";
        buf_append(&res->body, a->gz_data, a->gz_len);
    } else {
        buf_append(&res->body, a->data, a->len);
    }
}

int ui_register(struct http_server *s)
{
    size_t n;
    const struct ui_asset *a = ui_assets(&n);
    int rc = 0;

    for (size_t i = 0; i < n; i++)
        rc |= http_server_route(s, a[i].route, handle_asset, (void *)&a[i]);
    return rc;
}

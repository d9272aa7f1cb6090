/*
 * Serves the web page. Like pkg/openapi.c, the assembler's .incbin copies each
 * file of pkg/ui/ into .rodata when this file is compiled (from the repository
 * root); mk/install.mk makes this object depend on those files.
 */
#include "ui.h"

#ifndef UI_DIR
#define UI_DIR "pkg/ui/"
#endif

/* Embeds UI_DIR file between the symbols ui_<sym>_begin and ui_<sym>_end. */
#define UI_INCBIN(sym, file)                                                                       \
    __asm__(".pushsection .rodata,\"a\"\n"                                                         \
            ".balign 16\n"                                                                         \
            ".hidden ui_" #sym "_begin\n"                                                          \
            ".hidden ui_" #sym "_end\n"                                                            \
            "ui_" #sym "_begin:\n"                                                                 \
            ".incbin \"" UI_DIR file "\"\n"                                                        \
            "ui_" #sym "_end:\n"                                                                   \
            ".byte 0\n"                                                                            \
            ".popsection\n");                                                                      \
    extern const char ui_##sym##_begin[], ui_##sym##_end[]

UI_INCBIN(html, "index.html");
UI_INCBIN(js, "app.js");
UI_INCBIN(css, "app.css");

static struct ui_asset assets[3];

const struct ui_asset *ui_assets(size_t *n)
{
    /* Filled here, not statically: the sizes are link-time differences. */
    assets[0] = (struct ui_asset){"/", "text/html; charset=utf-8", ui_html_begin,
                                  (size_t)(ui_html_end - ui_html_begin)};
    assets[1] = (struct ui_asset){"/ui/app.js", "text/javascript; charset=utf-8", ui_js_begin,
                                  (size_t)(ui_js_end - ui_js_begin)};
    assets[2] = (struct ui_asset){"/ui/app.css", "text/css; charset=utf-8", ui_css_begin,
                                  (size_t)(ui_css_end - ui_css_begin)};
    *n = sizeof(assets) / sizeof(assets[0]);
    return assets;
}

/*
 * Any query string is ignored: the page keeps its view and filters in the URL
 * fragment, which never reaches the server, but a link with a query still
 * opens the page.
 */
static void handle_asset(void *ctx, const struct http_request *req, struct http_response *res)
{
    const struct ui_asset *a = ctx;

    res->content_type = a->content_type;
    buf_append(&res->body, a->data, a->len);
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

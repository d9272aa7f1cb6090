/*
 * Serves docs/openapi.json. The assembler's .incbin copies the file into
 * .rodata when this file is compiled (from the repository root, like every
 * object), so the binary carries the description of the API it implements;
 * mk/install.mk makes this object depend on the JSON file.
 */
#include "openapi.h"

#ifndef OPENAPI_JSON
#define OPENAPI_JSON "docs/openapi.json"
#endif

__asm__(".pushsection .rodata,\"a\"\n"
        ".balign 16\n"
        ".hidden openapi_json_begin\n"
        ".hidden openapi_json_end\n"
        "openapi_json_begin:\n"
        ".incbin \"" OPENAPI_JSON "\"\n"
        "openapi_json_end:\n"
        ".byte 0\n"
        ".popsection\n");

extern const char openapi_json_begin[], openapi_json_end[];

const char *openapi_document(size_t *len)
{
    *len = (size_t)(openapi_json_end - openapi_json_begin);
    return openapi_json_begin;
}

static void handle_openapi(void *ctx, const struct http_request *req, struct http_response *res)
{
    if (http_refuse_params(req, res))
        return;
    size_t len;
    const char *doc = openapi_document(&len);
    buf_append(&res->body, doc, len);
}

int openapi_register(struct http_server *s)
{
    return http_server_route(s, OPENAPI_ROUTE, handle_openapi, NULL);
}

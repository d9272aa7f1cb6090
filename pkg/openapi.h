/*
 * The OpenAPI 3 description of the HTTP API (docs/openapi.json), embedded in
 * the binary at build time and served by the agent and the aggregator at
 * GET /api/openapi.json. One document describes both programs; each
 * operation says which serves it.
 */
#ifndef EBPF_MONITOR_OPENAPI_H
#define EBPF_MONITOR_OPENAPI_H

#include <stddef.h>

#include "http_server.h"

#define OPENAPI_ROUTE "/api/openapi.json"

/* The embedded document: static storage, len bytes, NUL-terminated. */
const char *openapi_document(size_t *len);

/* Registers GET /api/openapi.json on s. Call before http_server_start(). 0 or -errno. */
int openapi_register(struct http_server *s);

#endif

/*
 * The HTTP API server (h2o, evloop) shared by the agent and the aggregator.
 *
 * One thread ("http") runs the h2o event loop. Routes are exact paths served
 * for GET (other methods get 405). Handlers run on that thread and fill a
 * response synchronously. Bearer-token auth (API_TOKEN) guards /api/...;
 * TLS is served when a certificate and key are configured.
 *
 * Server-Sent Events: one stream path; each client's filters are parsed with
 * query_parse(stream=true); http_server_publish() hands events from any thread
 * to the loop thread, which writes "data: <json>\n\n" to each matching client.
 * Per-client output is bounded; what a slow client misses is counted.
 */
#ifndef EBPF_MONITOR_HTTP_SERVER_H
#define EBPF_MONITOR_HTTP_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "event.h"

struct http_server;

struct http_server_config {
    const char *listen_addr; /* ":8080", "127.0.0.1:8080", "[::1]:8080" */
    const char *api_token;   /* NULL = no auth */
    const char *tls_cert;    /* PEM paths; both or neither */
    const char *tls_key;
    size_t stream_client_buffer; /* bytes queued per SSE client before events are dropped */
    unsigned max_stream_clients;
};

struct http_request {
    const char *path; /* without the query string */
    size_t path_len;
    const char *query; /* raw, still percent-encoded, without '?'; "" when absent */
    size_t query_len;
};

struct http_response {
    int status;               /* default 200 */
    const char *content_type; /* default "application/json" */
    struct buf body;
};

typedef void (*http_handler_fn)(void *ctx, const struct http_request *req,
                                struct http_response *res);

/* Creates the server and binds the listening socket; NULL with a message in err on failure. */
struct http_server *http_server_new(const struct http_server_config *cfg, char *err, size_t errlen);
/* The bound TCP port (useful with port 0, which picks a free one). */
int http_server_port(struct http_server *s);
/* Registers a GET route for an exact path. Call before http_server_start(). */
int http_server_route(struct http_server *s, const char *path, http_handler_fn fn, void *ctx);
/* Serves SSE at path. Call before http_server_start(). */
int http_server_stream(struct http_server *s, const char *path);
/* Starts the loop thread. 0 or -errno. */
int http_server_start(struct http_server *s);
/*
 * Calls fn(ctx, clients) on the loop thread each time the number of stream
 * clients changes: after a client is added (before its first byte is sent)
 * and after one leaves. Lets a caller feed the stream only while someone
 * listens. Call before http_server_start().
 */
typedef void (*http_stream_clients_fn)(void *ctx, uint64_t clients);
void http_server_on_stream_clients(struct http_server *s, http_stream_clients_fn fn, void *ctx);
/* Thread-safe: queues a copy of e for every matching stream client. */
void http_server_publish(struct http_server *s, const struct event *e);
/* Stops the loop thread and frees everything. */
void http_server_free(struct http_server *s);

/* Helper for handlers: sets status and body to {"error":"<msg>"}. */
void http_response_error(struct http_response *res, int status, const char *msg);

struct http_server_stats {
    uint64_t requests;
    uint64_t stream_clients;  /* connected now */
    uint64_t stream_sent;     /* events written to clients */
    uint64_t stream_dropped;  /* events a slow client missed */
    uint64_t publish_dropped; /* events not handed to the loop thread (queue full) */
};
void http_server_get_stats(struct http_server *s, struct http_server_stats *out);

#endif

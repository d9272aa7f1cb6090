/*
 * The HTTP API server (h2o, evloop) shared by the agent and the aggregator.
 *
 * One thread ("http") runs the h2o event loop. Routes are exact paths served
 * for GET and HEAD (other methods get 405, with Allow: GET, HEAD). Handlers run on that thread and
 * fill a response synchronously, or defer it and complete it later from any thread. Bearer-token
 * auth (API_TOKEN) guards /api/...; TLS is served when a certificate and key are configured.
 *
 * Server-Sent Events: one stream path; each client's filters are parsed with
 * query_parse(stream=true); http_server_publish() hands events from any thread
 * to the loop thread, which writes "data: <json>\n\n" to each matching client,
 * after ": connected" and "retry: HTTP_STREAM_RETRY_MS" (EventSource's reconnect delay).
 * Per-client output is bounded; what a slow client misses is counted.
 *
 * Resuming: every event goes out with "id: <ts>-<id>" (its sort key, the text of
 * a query_cursor) when that key is later than any the client had, so the id a
 * client last received is the newest position it has seen. A client that comes
 * back with it (the Last-Event-ID header or ?last_event_id=) first gets, from
 * the replay function, the stored events after that position (at most
 * HTTP_REPLAY_MAX, oldest first), then the live ones. Live events are held from
 * the moment it connects and the history is asked HTTP_REPLAY_SETTLE_MS later,
 * so the two overlap; what both hold is sent once. What cannot be replayed is
 * said in a comment (": missing ..."), never dropped silently.
 */
#ifndef EBPF_MONITOR_HTTP_SERVER_H
#define EBPF_MONITOR_HTTP_SERVER_H

#include <stdbool.h>
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
    bool accepts_gzip;         /* Accept-Encoding names gzip */
    const char *if_none_match; /* the If-None-Match header, NULL when absent */
    size_t if_none_match_len;
};

struct http_response {
    int status;               /* default 200 */
    const char *content_type; /* default "application/json" */
    struct buf body;
    void *server_private; /* the server's; NULL outside a served request */
    /*
     * Optional headers (static storage), for responses answered at once:
     * Cache-Control (NULL = "no-store"), ETag, Content-Encoding,
     * Content-Security-Policy (a page's); vary_encoding adds "Vary:
     * Accept-Encoding" (the body depends on that request header). Every
     * response says "X-Content-Type-Options: nosniff".
     */
    const char *cache_control;
    const char *content_security_policy;
    const char *etag;
    const char *content_encoding;
    bool vary_encoding;
};

/*
 * What one Accept-Encoding value says of gzip (RFC 9110 12.5.3; x-gzip is its alias, codings
 * and parameter names are case-insensitive, a parameter's value may be a quoted string): 0 when
 * an element refuses it (q=0, a q that is no qvalue, or a malformed element naming gzip), else
 * 1 when one takes it, else -1 (it is not named; "*" does not name it). A request with several
 * Accept-Encoding headers takes gzip when one says 1 and none says 0. The server decides
 * accepts_gzip with it; declared for the tests and the fuzz target.
 */
int http_accept_encoding_gzip(const char *value, size_t len);

typedef void (*http_handler_fn)(void *ctx, const struct http_request *req,
                                struct http_response *res);

/* Creates the server and binds the listening socket; NULL with a message in err on failure. */
struct http_server *http_server_new(const struct http_server_config *cfg, char *err, size_t errlen);
/* The bound TCP port (useful with port 0, which picks a free one). */
int http_server_port(struct http_server *s);
/* Registers a GET (and HEAD) route for an exact path. Call before http_server_start(). */
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
/*
 * Thread-safe: a comment line (": text") to every stream client, in order with the events;
 * with persist, every client that connects later hears it too, after ": connected", until the
 * next notice. For what clients should know of the stream itself (its source is down).
 */
void http_server_stream_notice(struct http_server *s, const char *text, bool persist);
/*
 * A replay: the stored events after a resumed client's position. events are malloc'ed, newest
 * first, each released with event_clear() by the server; total_count counts every match.
 */
struct http_replay {
    struct event *events;
    size_t count;
    uint64_t total_count;
    bool has_next; /* more matched than the limit */
};
#define HTTP_REPLAY_MAX       1000 /* events a resumed client is sent from the history */
#define HTTP_REPLAY_SETTLE_MS 500  /* how long live events are held before the history is asked */
/* The stream's "retry:", sent first: how long EventSource waits before it reconnects. */
#define HTTP_STREAM_RETRY_MS 1000
/*
 * Runs the /api/events query q (parsed from qs, which has since, until and limit) on a thread
 * of the server's own, never the loop's: it may block. Fills out; 0, or a negative errno
 * (-EHOSTUNREACH: part of the history did not answer); what out holds is sent either way.
 */
struct query;
typedef int (*http_replay_fn)(void *ctx, const char *qs, size_t qslen, const struct query *q,
                              struct http_replay *out);
/* Where a resumed stream's history comes from. Call before http_server_start(). */
void http_server_on_stream_replay(struct http_server *s, http_replay_fn fn, void *ctx);
/* Thread-safe: queues a copy of e for every matching stream client. */
void http_server_publish(struct http_server *s, const struct event *e);
/* Stops the loop thread and frees everything. */
void http_server_free(struct http_server *s);

/*
 * Deferred responses: a handler that must wait (e.g. for other replicas) calls
 * http_response_defer(res) and returns at once; the loop thread goes on
 * serving. Later, from any thread, http_deferred_complete() hands the response
 * to the loop thread, which sends it.
 *
 * Ownership: the struct http_deferred belongs to the server. The caller holds
 * the handle from defer until it calls http_deferred_complete() exactly once
 * (never touching it afterwards); the loop thread frees it when the completion
 * arrives. The request's memory pool holds only a small anchor pointing at the
 * deferred: if the request is disposed first (connection closed by h2o), the
 * anchor's dispose marks the deferred orphaned, and the completion is dropped
 * and counted (deferred_dropped) without touching the request. A client seen
 * to have closed its socket at completion is counted as dropped too (the
 * response is still handed to h2o, which then closes the connection). Every
 * deferred must be
 * completed before http_server_free(); completions still queued then are
 * handled by it.
 *
 * http_response_defer: loop thread, inside the handler only. Returns NULL when
 * res is not a served request's (answer synchronously then) or out of memory.
 * After it returns non-NULL, whatever the handler puts in res is ignored.
 */
struct http_deferred;
struct http_deferred *http_response_defer(struct http_response *res);
/*
 * Any thread. content_type: NULL = "application/json" (copied). body: its
 * bytes are taken (body is left empty and initialised); NULL = empty body.
 * An out-of-memory body becomes a 500.
 */
void http_deferred_complete(struct http_deferred *d, int status, const char *content_type,
                            struct buf *body);

/* Helper for handlers: sets status and body to {"error":"<msg>"}. */
void http_response_error(struct http_response *res, int status, const char *msg);
/* For a route that takes no parameters: false, or true with a 400 naming the first one given. */
bool http_refuse_params(const struct http_request *req, struct http_response *res);

struct http_server_stats {
    uint64_t requests;
    uint64_t stream_clients;   /* connected now */
    uint64_t stream_sent;      /* events written to clients' connections */
    uint64_t stream_dropped;   /* events a slow client missed, or left queued when it went */
    uint64_t stream_queued;    /* events waiting in clients' buffers now */
    uint64_t publish_dropped;  /* events not handed to the loop thread (queue full) */
    uint64_t deferred_pending; /* deferred responses not completed yet */
    uint64_t deferred_dropped; /* completions whose client had gone away */
};
void http_server_get_stats(struct http_server *s, struct http_server_stats *out);

#endif

/*
 * The HTTP API server: an h2o (evloop) loop on its own thread serving exact-path
 * GET and HEAD routes, bearer-token auth for every /api/ path, optional TLS, and one Server-Sent
 * Events stream fed by http_server_publish().
 *
 * Threads: everything h2o touches (sockets, requests, stream clients) belongs
 * to the "http" thread. Other threads talk to it only through h2o's
 * multithread queue (published events, deferred responses' completions, the
 * stop request) and read the stats
 * counters, which are atomics.
 */
#include "http_server.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include <h2o.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>

#include "clock.h"
#include "errmsg.h"
#include "event_json.h"
#include "h2o_shim.h"
#include "netaddr.h"
#include "query.h"

#define HTTP_STREAM_CLIENT_BUFFER_DEFAULT (1u << 20)
#define HTTP_MAX_STREAM_CLIENTS_DEFAULT   64
#define HTTP_PUBLISH_QUEUE_MAX            65536
#define HTTP_KEEPALIVE_MS                 15000
#define HTTP_REAP_MS                      1000 /* how soon a stream client that left stops counting */
#define HTTP_GZIP_MIN                     1024 /* bytes: smaller bodies go as they are */
/* Events stamped before a stream's `until` may still be on their way (an agent's batch). */
#define HTTP_UNTIL_TICK_MS     250
#define HTTP_SHUTDOWN_GRACE_MS 2000
#define HTTP_MAX_REQUEST_BODY  16384

struct http_route {
    char *path;
    size_t path_len;
    http_handler_fn fn; /* NULL for the stream route */
    void *ctx;
};

/* The h2o handler is embedded so on_req can find the server. */
struct http_h2o_handler {
    h2o_handler_t super;
    struct http_server *srv;
};

/* One connected SSE client; lives in its request's memory pool. */
struct stream_client {
    h2o_generator_t super;
    struct http_server *srv;
    h2o_req_t *req;
    h2o_linklist_t link;
    struct query q;
    struct buf pending;  /* queued, not yet handed to h2o */
    struct buf inflight; /* handed to h2o_send, waiting for proceed */
    bool sending;
    bool finishing;  /* send the final chunk at the next proceed */
    bool done;       /* final sent or connection gone: never send again */
    uint64_t missed; /* events dropped since the last ": dropped" notice */
    /* Events in pending and in inflight: counted sent once h2o has written them, dropped
     * when the client goes away first. */
    uint64_t pending_events, inflight_events;
    /* The newest key sent: the id a reconnect resumes after (see http_server.h). */
    bool has_mark;
    struct query_cursor mark;
    /* Resuming: live events wait in held until the replay is in. */
    bool resuming;
    struct event *held;
    size_t nheld;
    h2o_timeout_entry_t settle_entry;
    struct replay_job *job; /* asked, not answered yet */
    char *qs;               /* the request's raw query string (its pool's) */
    size_t qslen;
};

/* A replay running on its own thread; the loop thread frees it when its answer arrives. */
struct replay_job {
    h2o_multithread_message_t super;
    struct http_server *srv;
    struct stream_client *client; /* loop thread: NULL once the client went away */
    struct query q;
    struct buf qs;
    int rc;
    struct http_replay r;
    bool past_until; /* the client's position is past the stream's until: nothing to replay */
};

/* An accepted connection, tracked so shutdown can close what is still open. */
struct http_conn {
    h2o_linklist_t link;
    h2o_socket_t *sock;
    struct http_server *srv;
};

struct publish_msg {
    h2o_multithread_message_t super;
    struct event ev;
    char *notice;        /* not NULL: a notice (http_server_stream_notice()), no event */
    bool notice_persist; /* new clients get it too */
};

/*
 * A response a handler deferred. malloc'ed; freed by the loop thread when its
 * completion arrives. req is loop-thread state: NULL once the request's pool
 * was disposed (the client went away), so the completion is dropped.
 */
struct http_deferred {
    h2o_multithread_message_t super; /* the completion message */
    struct http_server *srv;
    h2o_req_t *req;
    struct deferred_anchor *anchor;
    int status;
    char *content_type;
    struct buf body;
    bool oom;
    bool accepts_gzip; /* the request's Accept-Encoding names gzip */
};

/* Lives in the request's pool: its dispose marks the deferred orphaned. */
struct deferred_anchor {
    struct http_deferred *d;
};

/* What http_response_defer finds behind http_response.server_private. */
struct deferred_slot {
    struct http_server *srv;
    h2o_req_t *req;
    struct http_deferred *d;
    bool accepts_gzip;
};

struct http_server {
    char *listen_addr;
    char *api_token;
    unsigned char token_hash[SHA256_DIGEST_LENGTH];
    size_t stream_client_buffer;
    unsigned max_stream_clients;

    struct http_route *routes;
    size_t nroutes;

    h2o_globalconf_t config;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    SSL_CTX *ssl_ctx;
    h2o_evloop_t *loop;
    int listen_fd;
    int port;
    h2o_socket_t *listener;
    h2o_multithread_receiver_t publish_receiver;
    h2o_multithread_receiver_t stop_receiver;
    h2o_multithread_receiver_t deferred_receiver;
    h2o_multithread_message_t stop_msg;
    h2o_timeout_t keepalive_timeout;
    h2o_timeout_entry_t keepalive_entry;
    /* Linked while a stream has an `until`: ends those past it. */
    h2o_timeout_t until_timeout;
    h2o_timeout_entry_t until_entry;
    /* Linked while there are stream clients: ends those whose client left. */
    h2o_timeout_t reap_timeout;
    h2o_timeout_entry_t reap_entry;
    /* Resumed clients wait HTTP_REPLAY_SETTLE_MS before their replay is asked. */
    h2o_timeout_t settle_timeout;
    h2o_multithread_receiver_t replay_receiver;
    http_replay_fn replay;
    void *replay_ctx;
    uint64_t replays_running; /* jobs whose thread has not finished */

    h2o_linklist_t stream_clients; /* struct stream_client */
    h2o_linklist_t conns;          /* struct http_conn */
    size_t nconns;
    struct buf scratch; /* one event's SSE frame, encoded once per publish */
    http_stream_clients_fn on_clients;
    void *on_clients_ctx;

    pthread_t thread;
    bool started;
    bool stopping;    /* loop thread only */
    char notice[256]; /* loop thread only: what a new stream client hears after ": connected" */

    /* Read from any thread. */
    uint64_t requests;
    uint64_t nstream_clients;
    uint64_t stream_sent;
    uint64_t stream_dropped;
    uint64_t stream_queued;
    uint64_t publish_dropped;
    uint64_t publish_pending;
    uint64_t deferred_pending;
    uint64_t deferred_dropped;
};

static void stat_add(uint64_t *v, int64_t d)
{
    __atomic_add_fetch(v, (uint64_t)d, __ATOMIC_RELAXED);
}

static uint64_t stat_get(const uint64_t *v)
{
    return __atomic_load_n(v, __ATOMIC_RELAXED);
}

void http_response_error(struct http_response *res, int status, const char *msg)
{
    res->status = status;
    res->content_type = NULL;
    buf_reset(&res->body);
    buf_puts(&res->body, "{\"error\":");
    buf_json_cstr(&res->body, msg);
    buf_putc(&res->body, '}');
}

bool http_refuse_params(const struct http_request *req, struct http_response *res)
{
    char msg[200];
    size_t start = 0, n;

    /* Empty segments ("?&", a trailing '&') are no parameters, as on the query routes. */
    while (start < req->query_len && req->query[start] == '&')
        start++;
    if (start == req->query_len)
        return false;
    n = start;
    while (n < req->query_len && req->query[n] != '=' && req->query[n] != '&')
        n++;
    n -= start;
    char quoted[QUERY_ERR_VALUE_MAX + 4];
    snprintf(msg, sizeof(msg), "unknown query parameter '%s' (%.*s takes no parameters)",
             query_quote(req->query + start, n, quoted),
             (int)(req->path_len < 64 ? req->path_len : 64), req->path);
    http_response_error(res, 400, msg);
    return true;
}

static const char *status_reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 204:
        return "No Content";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Payload Too Large";
    case 429:
        return "Too Many Requests";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "";
    }
}

/* ---- plain responses ---- */

static void send_response(h2o_req_t *req, int status, const char *content_type, const char *body,
                          size_t len);

/*
 * body gzipped into req's pool, for a client that takes gzip: a page of
 * events compresses about tenfold. Only worth it past HTTP_GZIP_MIN bytes,
 * and never over an encoding the handler chose. False (send it as it is)
 * otherwise, or when compressing fails.
 */
static bool gzip_body(h2o_req_t *req, const char *body, size_t len, h2o_iovec_t *out)
{
    z_stream z = {0};

    if (len < HTTP_GZIP_MIN ||
        h2o_find_header(&req->res.headers, H2O_TOKEN_CONTENT_ENCODING, -1) != -1)
        return false;
    /* Level 1: the loop thread compresses, and most of the gain is in the first level. */
    if (deflateInit2(&z, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return false;
    size_t cap = deflateBound(&z, len);
    out->base = h2o_mem_alloc_pool(&req->pool, cap);
    z.next_in = (Bytef *)body;
    z.avail_in = (uInt)len;
    z.next_out = (Bytef *)out->base;
    z.avail_out = (uInt)cap;
    int rc = len <= UINT_MAX && cap <= UINT_MAX ? deflate(&z, Z_FINISH) : Z_STREAM_ERROR;
    out->len = cap - z.avail_out;
    deflateEnd(&z);
    if (rc != Z_STREAM_END)
        return false;
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_ENCODING, NULL,
                   H2O_STRLIT("gzip"));
    return true;
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* A qvalue (RFC 9110 12.4.2: "0" to "1" with up to three decimals) that is not zero. */
static bool qvalue_nonzero(const char *v, size_t len)
{
    bool nonzero = false;

    if (len == 0 || (v[0] != '0' && v[0] != '1') || len > 5)
        return false;
    if (len > 1 && v[1] != '.')
        return false;
    for (size_t i = 2; i < len; i++) {
        if (!isdigit((unsigned char)v[i]) || (v[0] == '1' && v[i] != '0'))
            return false;
        nonzero |= v[i] != '0';
    }
    return v[0] == '1' || nonzero;
}

/*
 * Just past the quoted-string opening at p (RFC 9110 5.6.4: a backslash escapes the byte after
 * it), or NULL when it is not closed.
 */
static const char *quoted_string_end(const char *p, const char *end)
{
    for (p++; p < end; p++) {
        if (*p == '"')
            return p + 1;
        if (*p == '\\' && ++p == end)
            break;
    }
    return NULL;
}

/* The end of the list element at p: its first comma outside a quoted string, else end. */
static const char *list_element_end(const char *p, const char *end)
{
    while (p < end && *p != ',') {
        if (*p == '"') {
            p = quoted_string_end(p, end);
            if (p == NULL)
                return end;
        } else {
            p++;
        }
    }
    return p;
}

/*
 * One Accept-Encoding element, "coding *( OWS ; OWS name = value )", a value a token or a
 * quoted string: 1 when it takes gzip (its alias x-gzip too, any case) with a q other than 0,
 * 0 when it names gzip and refuses it (q=0, a q that is no qvalue, or a malformed parameter
 * such as a quote outside a value: the plain body always works), -1 otherwise.
 */
static int accept_element_gzip(const char *p, const char *end)
{
    const char *tok;
    int take;

    while (p < end && is_ows(*p))
        p++;
    for (tok = p; p < end && *p != ';' && !is_ows(*p); p++)
        ;
    if (!h2o_lcstris(tok, p - tok, H2O_STRLIT("gzip")) &&
        !h2o_lcstris(tok, p - tok, H2O_STRLIT("x-gzip")))
        return -1;
    take = 1;
    while (p < end) {
        const char *name, *val;
        size_t name_len;

        while (p < end && is_ows(*p))
            p++;
        if (p == end)
            break;
        if (*p++ != ';')
            return 0;
        while (p < end && is_ows(*p))
            p++;
        for (name = p; p < end && *p != '=' && *p != ';' && *p != '"' && !is_ows(*p); p++)
            ;
        name_len = p - name;
        while (p < end && is_ows(*p))
            p++;
        val = p;
        if (p < end && *p == '=') {
            val = ++p;
            if (p < end && *p == '"') {
                p = quoted_string_end(p, end);
                if (p == NULL)
                    return 0;
            } else {
                while (p < end && *p != ';' && *p != '"' && !is_ows(*p))
                    p++;
            }
        }
        if (h2o_lcstris(name, name_len, H2O_STRLIT("q")) && !qvalue_nonzero(val, p - val))
            take = 0;
    }
    return take;
}

int http_accept_encoding_gzip(const char *value, size_t len)
{
    const char *p = value, *end = value + len;
    int named = -1;

    while (p < end) {
        const char *elem_end = list_element_end(p, end);
        int take = accept_element_gzip(p, elem_end);

        if (take == 0)
            return 0;
        if (take == 1)
            named = 1;
        p = elem_end < end ? elem_end + 1 : end;
    }
    return named;
}

/*
 * Whether the request takes a gzipped body: an Accept-Encoding element names gzip with a
 * q other than 0 ("gzip;q=1.0" as well as "gzip"), and none refuses it ("gzip;q=0").
 */
static bool request_accepts_gzip(const h2o_req_t *req)
{
    bool named = false;
    ssize_t i = -1;

    while ((i = h2o_find_header(&req->headers, H2O_TOKEN_ACCEPT_ENCODING, i)) != -1) {
        const h2o_iovec_t *v = &req->headers.entries[i].value;
        int take = http_accept_encoding_gzip(v->base, v->len);

        if (take == 0)
            return false;
        named |= take == 1;
    }
    return named;
}

/*
 * A response that may be gzipped: whether it is depends on the request, so
 * it varies on Accept-Encoding either way.
 */
static void send_compressible(h2o_req_t *req, bool accepts_gzip, int status,
                              const char *content_type, const char *body, size_t len)
{
    h2o_iovec_t z;

    if (len >= HTTP_GZIP_MIN && h2o_find_header(&req->res.headers, H2O_TOKEN_VARY, -1) == -1)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_VARY, NULL,
                       H2O_STRLIT("Accept-Encoding"));
    if (accepts_gzip && gzip_body(req, body, len, &z)) {
        body = z.base;
        len = z.len;
    }
    send_response(req, status, content_type, body, len);
}

/* On every response: a browser takes a body for its Content-Type only (an event's text served
 * as JSON is never run as a script or a page). */
static void add_nosniff(h2o_req_t *req)
{
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-content-type-options"), 0,
                          NULL, H2O_STRLIT("nosniff"));
}

static void send_response(h2o_req_t *req, int status, const char *content_type, const char *body,
                          size_t len)
{
    add_nosniff(req);
    req->res.status = status;
    req->res.reason = status_reason(status);
    req->res.content_length = len;
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, content_type,
                   strlen(content_type));
    /* A handler may have chosen its own (add_handler_headers); everything else is never cached. */
    if (h2o_find_header(&req->res.headers, H2O_TOKEN_CACHE_CONTROL, -1) == -1)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL,
                       H2O_STRLIT("no-store"));
    h2o_send_inline(req, body, len);
}

/* The optional headers a handler set in its http_response. */
static void add_handler_headers(h2o_req_t *req, const struct http_response *res)
{
    if (res->cache_control != NULL)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL,
                       res->cache_control, strlen(res->cache_control));
    if (res->etag != NULL)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ETAG, NULL, res->etag,
                       strlen(res->etag));
    if (res->content_encoding != NULL)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_ENCODING, NULL,
                       res->content_encoding, strlen(res->content_encoding));
    if (res->vary_encoding)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_VARY, NULL,
                       H2O_STRLIT("Accept-Encoding"));
    if (res->content_security_policy != NULL)
        h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("content-security-policy"),
                              0, NULL, res->content_security_policy,
                              strlen(res->content_security_policy));
}

static void send_error(h2o_req_t *req, int status, const char *msg)
{
    struct http_response res = {0};

    buf_init(&res.body);
    http_response_error(&res, status, msg);
    if (res.body.oom)
        send_response(req, 500, "application/json", H2O_STRLIT("{\"error\":\"out of memory\"}"));
    else
        send_response(req, status, "application/json", res.body.data, res.body.len);
    buf_free(&res.body);
}

/* ---- SSE stream ---- */

static void stream_flush(struct stream_client *c);

static void stream_held_free(struct stream_client *c)
{
    for (size_t i = 0; i < c->nheld; i++)
        event_clear(&c->held[i]);
    free(c->held);
    c->held = NULL;
    c->nheld = 0;
}

/* The sort key of e: what its SSE id says. */
static struct query_cursor stream_key(const struct event *e)
{
    return (struct query_cursor){.timestamp_ns = e->timestamp_ns, .id = e->id};
}

/* True when key a is later than b in the history's order. */
static bool stream_key_later(const struct query_cursor *a, const struct query_cursor *b)
{
    return query_cmp_newest_first(a->timestamp_ns, a->id, b->timestamp_ns, b->id) < 0;
}

/* "id: <key>\ndata: <json>\n\n" into b (reset first); *data_at is where "data:" begins. */
static void stream_frame(struct buf *b, const struct event *e, size_t *data_at)
{
    char id[QUERY_CURSOR_LEN];
    struct query_cursor k = stream_key(e);

    query_cursor_format(&k, id);
    buf_reset(b);
    buf_printf(b, "id: %s\n", id);
    *data_at = b->len;
    buf_puts(b, "data: ");
    event_json_write(b, e);
    buf_puts(b, "\n\n");
}

static void stream_note_missed(struct stream_client *c)
{
    if (c->missed == 0)
        return;
    buf_printf(&c->pending, ": dropped %llu\n\n", (unsigned long long)c->missed);
    c->missed = 0;
}

static void stream_send_final(struct stream_client *c)
{
    c->done = true;
    c->sending = true;
    h2o_send(c->req, NULL, 0, H2O_SEND_STATE_FINAL);
}

static void stream_flush(struct stream_client *c)
{
    struct buf tmp;
    h2o_iovec_t v;

    if (c->done || c->sending)
        return;
    if (c->finishing) {
        stream_send_final(c);
        return;
    }
    if (c->pending.len == 0)
        return;
    /* Swap so new events queue while h2o owns the old bytes. */
    tmp = c->inflight;
    c->inflight = c->pending;
    c->pending = tmp;
    buf_reset(&c->pending);
    c->inflight_events = c->pending_events;
    c->pending_events = 0;
    v = h2o_iovec_init(c->inflight.data, c->inflight.len);
    c->sending = true;
    h2o_send(c->req, &v, 1, H2O_SEND_STATE_IN_PROGRESS);
}

static void stream_on_proceed(h2o_generator_t *gen, h2o_req_t *req)
{
    struct stream_client *c = (struct stream_client *)gen;

    c->sending = false;
    buf_reset(&c->inflight);
    stat_add(&c->srv->stream_sent, c->inflight_events);
    stat_add(&c->srv->stream_queued, -(int64_t)c->inflight_events);
    c->inflight_events = 0;
    stream_note_missed(c);
    stream_flush(c);
}

static void stream_clients_changed(struct http_server *s)
{
    if (s->on_clients != NULL)
        s->on_clients(s->on_clients_ctx, stat_get(&s->nstream_clients));
}

static void stream_detach(struct stream_client *c)
{
    if (h2o_linklist_is_linked(&c->link)) {
        h2o_linklist_unlink(&c->link);
        stat_add(&c->srv->nstream_clients, -1);
        stream_clients_changed(c->srv);
    }
}

/* Sends what the stream holds, then its end; the client no longer counts as one. */
static void stream_end(struct stream_client *c)
{
    stream_detach(c);
    c->finishing = true;
    stream_flush(c);
}

/* What a client leaves unwritten when it goes is dropped (before it stops counting as a
 * client, so the statistics never show it gone with events still queued). */
static void stream_abandon(struct stream_client *c)
{
    stat_add(&c->srv->stream_dropped, c->pending_events + c->inflight_events);
    stat_add(&c->srv->stream_queued, -(int64_t)(c->pending_events + c->inflight_events));
    c->pending_events = c->inflight_events = 0;
}

/* The connection went away before the final chunk. */
static void stream_on_stop(h2o_generator_t *gen, h2o_req_t *req)
{
    struct stream_client *c = (struct stream_client *)gen;

    c->done = true;
    stream_abandon(c);
    stream_detach(c);
}

/* Pool dispose: the request is gone and h2o holds none of our bytes. */
static void stream_on_dispose(void *p)
{
    struct stream_client *c = p;

    stream_abandon(c);
    stream_detach(c);
    buf_free(&c->pending);
    buf_free(&c->inflight);
    stream_held_free(c);
    if (h2o_timeout_is_linked(&c->settle_entry))
        h2o_timeout_unlink(&c->settle_entry);
    if (c->job != NULL)
        c->job->client = NULL; /* its answer is dropped when it comes */
}

static void stream_enqueue(struct stream_client *c, const char *data, size_t len)
{
    struct http_server *s = c->srv;

    if (c->done || c->finishing)
        return;
    if (c->pending.len + c->inflight.len + len > s->stream_client_buffer) {
        c->missed++;
        stat_add(&s->stream_dropped, 1);
        return;
    }
    stream_note_missed(c);
    buf_append(&c->pending, data, len);
    if (c->pending.oom) {
        /* Keep the stream well-formed: forget what was pending, this one included, counted
         * missed. */
        buf_free(&c->pending);
        buf_init(&c->pending);
        c->missed += c->pending_events + 1;
        stat_add(&s->stream_dropped, c->pending_events + 1);
        stat_add(&s->stream_queued, -(int64_t)c->pending_events);
        c->pending_events = 0;
        return;
    }
    c->pending_events++;
    stat_add(&s->stream_queued, 1);
    stream_flush(c);
}

/* An event framed by stream_frame(): with its id when it is the newest c has had, so the id
 * a client keeps never goes back (events may arrive out of order). */
static void stream_enqueue_event(struct stream_client *c, const struct event *e, const char *frame,
                                 size_t len, size_t data_at)
{
    struct query_cursor k = stream_key(e);

    if (!c->has_mark || stream_key_later(&k, &c->mark)) {
        c->mark = k;
        c->has_mark = true;
        stream_enqueue(c, frame, len);
    } else {
        stream_enqueue(c, frame + data_at, len - data_at);
    }
}

/* Resuming: a live event waits for the replay (up to HTTP_REPLAY_MAX, then it is missed). */
static void stream_hold(struct stream_client *c, const struct event *e)
{
    if (c->held == NULL)
        c->held = calloc(HTTP_REPLAY_MAX, sizeof(*c->held));
    if (c->held == NULL || c->nheld == HTTP_REPLAY_MAX || event_copy(&c->held[c->nheld], e) != 0) {
        c->missed++;
        stat_add(&c->srv->stream_dropped, 1);
        return;
    }
    c->nheld++;
}

static bool client_gone(h2o_req_t *req);

/*
 * Ends the streams whose client has left: h2o notices a closed connection
 * only at its next write (a keepalive every HTTP_KEEPALIVE_MS), and until
 * then it holds one of max_stream_clients and counts in stream.clients. Run
 * every HTTP_REAP_MS, and when a new client finds them all taken.
 */
static void stream_reap_gone(struct http_server *s)
{
    h2o_linklist_t *node, *next;

    for (node = s->stream_clients.next; node != &s->stream_clients; node = next) {
        struct stream_client *c = H2O_STRUCT_FROM_MEMBER(struct stream_client, link, node);

        next = node->next;
        if (!c->done && !c->finishing && client_gone(c->req))
            stream_end(c);
    }
}

static int stream_resume_point(h2o_req_t *req, struct query *q, char *err, size_t errlen);
static void on_settle(h2o_timeout_entry_t *entry);

static void serve_stream(struct http_server *s, h2o_req_t *req, const char *qs, size_t qslen)
{
    struct stream_client *c;
    char err[256];
    struct query q;

    if (query_parse(&q, qs, qslen, true, err, sizeof(err)) != 0 ||
        stream_resume_point(req, &q, err, sizeof(err)) != 0) {
        send_error(req, 400, err);
        return;
    }
    uint64_t now = clock_realtime_ns();
    if (q.until_ns != UINT64_MAX && q.until_ns < now) {
        send_error(req, 400, "invalid 'until': in the past, and a stream sends only new events");
        return;
    }
    if (stat_get(&s->nstream_clients) >= s->max_stream_clients)
        stream_reap_gone(s);
    if (stat_get(&s->nstream_clients) >= s->max_stream_clients) {
        send_error(req, 503, "too many stream clients");
        return;
    }
    if (h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD"))) {
        send_response(req, 200, "text/event-stream", "", 0);
        return;
    }

    c = h2o_mem_alloc_shared(&req->pool, sizeof(*c), stream_on_dispose);
    memset(c, 0, sizeof(*c));
    c->super.proceed = stream_on_proceed;
    c->super.stop = stream_on_stop;
    c->srv = s;
    c->req = req;
    c->q = q;
    buf_init(&c->pending);
    buf_init(&c->inflight);
    if (q.has_last_event_id) {
        /* Nothing older than what the client had gets an id. */
        c->has_mark = true;
        c->mark = q.last_event_id;
    }
    if (q.has_last_event_id && s->replay != NULL) {
        c->qs = h2o_mem_alloc_pool(&req->pool, qslen + 1);
        memcpy(c->qs, qs, qslen);
        c->qs[qslen] = '\0';
        c->qslen = qslen;
        c->resuming = true;
        c->settle_entry.cb = on_settle;
        h2o_timeout_link(s->ctx.loop, &s->settle_timeout, &c->settle_entry);
    }
    if (q.until_ns != UINT64_MAX && !h2o_timeout_is_linked(&s->until_entry))
        h2o_timeout_link(s->ctx.loop, &s->until_timeout, &s->until_entry);
    if (!h2o_timeout_is_linked(&s->reap_entry))
        h2o_timeout_link(s->ctx.loop, &s->reap_timeout, &s->reap_entry);
    h2o_linklist_insert(&s->stream_clients, &c->link);
    stat_add(&s->nstream_clients, 1);
    stream_clients_changed(s);

    req->res.status = 200;
    req->res.reason = "OK";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                   H2O_STRLIT("text/event-stream"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL,
                   H2O_STRLIT("no-store"));
    /* Tell reverse proxies (nginx) not to buffer the stream. */
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-accel-buffering"), 0, NULL,
                          H2O_STRLIT("no"));
    add_nosniff(req);
    h2o_start_response(req, &c->super);
    buf_puts(&c->pending, ": connected\n\n");
    /* EventSource waits this long before it reconnects, not its own default (3 s in Chromium,
     * 5 s in Firefox): a shorter gap is fewer events to replay, and fewer missed beyond it. */
    buf_printf(&c->pending, "retry: %d\n\n", HTTP_STREAM_RETRY_MS);
    if (s->notice[0])
        buf_printf(&c->pending, ": %s\n\n", s->notice);
    stream_flush(c);
}

static void stream_fanout(struct http_server *s, const struct event *e)
{
    h2o_linklist_t *node, *next;
    bool encoded = false;
    size_t data_at = 0;

    for (node = s->stream_clients.next; node != &s->stream_clients; node = next) {
        struct stream_client *c = H2O_STRUCT_FROM_MEMBER(struct stream_client, link, node);

        next = node->next; /* a send may fail and detach c */
        if (!query_match(&c->q, e))
            continue;
        if (c->resuming) {
            stream_hold(c, e);
            continue;
        }
        if (!encoded) {
            stream_frame(&s->scratch, e, &data_at);
            if (s->scratch.oom) {
                buf_free(&s->scratch);
                buf_init(&s->scratch);
                return;
            }
            encoded = true;
        }
        stream_enqueue_event(c, e, s->scratch.data, s->scratch.len, data_at);
    }
}

/* ---- resuming a stream ---- */

/* The 400 of a resume point that is no event's position; what names where it came from. */
static int stream_resume_refuse(const char *what, const char *v, size_t len, const char *why,
                                char *err, size_t errlen)
{
    char quoted[QUERY_ERR_VALUE_MAX + 4];

    errmsg_set(err, errlen, "invalid %s: \"%s\" (%s%s)", what, query_quote(v, len, quoted), why,
               QUERY_EVENT_ID_FORMAT);
    return -EINVAL;
}

/* No event is stamped this far ahead (the history refuses them): not an id a stream sent, and
 * kept it would withhold the id: of every event until the clock caught up. */
static bool stream_resume_ahead(const struct query_cursor *k, uint64_t now)
{
    return k->timestamp_ns > now + EVENT_MAX_AHEAD_NS;
}

#define STREAM_RESUME_AHEAD "later than any event: more than 1 h ahead of this server's clock; "

/*
 * The position a client resumes after: the later of Last-Event-ID and ?last_event_id. The
 * header is a singleton, trimmed of the white space around it like any field value (RFC 9110
 * section 5.5); empty, it is absent (EventSource sends none once an id: line was empty).
 */
static int stream_resume_point(h2o_req_t *req, struct query *q, char *err, size_t errlen)
{
    ssize_t h = h2o_find_header_by_str(&req->headers, H2O_STRLIT("last-event-id"), -1);
    uint64_t now = clock_realtime_ns();
    struct query_cursor k;
    char id[QUERY_CURSOR_LEN];

    if (q->has_last_event_id && stream_resume_ahead(&q->last_event_id, now)) {
        query_cursor_format(&q->last_event_id, id);
        return stream_resume_refuse("'last_event_id'", id, strlen(id), STREAM_RESUME_AHEAD, err,
                                    errlen);
    }
    if (h == -1)
        return 0;
    if (h2o_find_header_by_str(&req->headers, H2O_STRLIT("last-event-id"), h) != -1) {
        errmsg_set(err, errlen,
                   "invalid 'Last-Event-ID' header: given more than once (send it "
                   "once: the id: of the last event received)");
        return -EINVAL;
    }
    const char *v = req->headers.entries[h].value.base;
    size_t len = req->headers.entries[h].value.len;
    query_trim(&v, &len);
    if (len == 0)
        return 0;
    if (query_cursor_parse(&k, v, len) < 0)
        return stream_resume_refuse("'Last-Event-ID' header", v, len, "", err, errlen);
    if (stream_resume_ahead(&k, now))
        return stream_resume_refuse("'Last-Event-ID' header", v, len, STREAM_RESUME_AHEAD, err,
                                    errlen);
    if (!q->has_last_event_id || stream_key_later(&k, &q->last_event_id))
        q->last_event_id = k;
    q->has_last_event_id = true;
    return 0;
}

/* A replay's thread: asks the history, hands the answer to the loop thread. */
static void *replay_main(void *arg)
{
    struct replay_job *j = arg;
    struct http_server *s = j->srv;

    pthread_setname_np(pthread_self(), "http-replay");
    j->rc = s->replay(s->replay_ctx, j->qs.data, j->qs.len, &j->q, &j->r);
    h2o_multithread_send_message(&s->replay_receiver, &j->super);
    stat_add(&s->replays_running, -1);
    return NULL;
}

static void replay_job_free(struct replay_job *j)
{
    for (size_t i = 0; i < j->r.count; i++)
        event_clear(&j->r.events[i]);
    free(j->r.events);
    buf_free(&j->qs);
    free(j);
}

/* Whether the replay (newest first) holds key k. */
static bool replay_holds(const struct http_replay *r, const struct query_cursor *k)
{
    size_t lo = 0, hi = r->count;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int cmp = query_cmp_newest_first(r->events[mid].timestamp_ns, r->events[mid].id,
                                         k->timestamp_ns, k->id);
        if (cmp == 0)
            return true;
        if (cmp < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

/* What the client is told of the events its replay cannot give. */
static void replay_say_missing(struct stream_client *c, const struct replay_job *j)
{
    char id[QUERY_CURSOR_LEN];

    if (j->past_until)
        return;
    query_cursor_format(&c->q.last_event_id, id);
    if (j->rc < 0)
        buf_printf(
            &c->pending,
            ": missing: the events after %s could not all be replayed (%s); some may be "
            "missing\n\n",
            id, j->rc == -EHOSTUNREACH ? "part of the history did not answer" : strerror(-j->rc));
    else if (j->r.has_next)
        buf_printf(&c->pending,
                   ": missing %" PRIu64 " events after %s: a resumed stream replays at most the "
                   "%d newest\n\n",
                   j->r.total_count - j->r.count, id, HTTP_REPLAY_MAX);
    else if (!replay_holds(&j->r, &c->q.last_event_id))
        buf_printf(&c->pending,
                   ": missing: the history no longer holds %s; events after it that it no longer "
                   "holds either are missing, how many is not known\n\n",
                   id);
}

/* Loop thread: the replay's events after the client's position, then the held live ones
 * the replay did not have; from then on the client is live. */
static void replay_finish(struct stream_client *c, struct replay_job *j)
{
    struct http_server *s = c->srv;
    size_t data_at;

    c->job = NULL;
    c->resuming = false;
    replay_say_missing(c, j);
    for (size_t i = j->r.count; i-- > 0;) {
        const struct event *e = &j->r.events[i];
        struct query_cursor k = stream_key(e);
        if (!stream_key_later(&k, &c->q.last_event_id) || !query_match(&c->q, e))
            continue;
        stream_frame(&s->scratch, e, &data_at);
        if (!s->scratch.oom)
            stream_enqueue_event(c, e, s->scratch.data, s->scratch.len, data_at);
    }
    for (size_t i = 0; i < c->nheld; i++) {
        struct query_cursor k = stream_key(&c->held[i]);
        if (replay_holds(&j->r, &k))
            continue;
        stream_frame(&s->scratch, &c->held[i], &data_at);
        if (!s->scratch.oom)
            stream_enqueue_event(c, &c->held[i], s->scratch.data, s->scratch.len, data_at);
    }
    if (s->scratch.oom) {
        buf_free(&s->scratch);
        buf_init(&s->scratch);
    }
    stream_held_free(c);
    stream_flush(c);
}

static void on_replay_messages(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    struct http_server *s = H2O_STRUCT_FROM_MEMBER(struct http_server, replay_receiver, receiver);

    while (!h2o_linklist_is_empty(messages)) {
        struct replay_job *j =
            H2O_STRUCT_FROM_MEMBER(struct replay_job, super.link, messages->next);

        h2o_linklist_unlink(&j->super.link);
        if (j->client != NULL && !s->stopping)
            replay_finish(j->client, j);
        else if (j->client != NULL)
            j->client->job = NULL;
        replay_job_free(j);
    }
}

/* Live events have been held a while: ask the history (on a thread: it may block). */
static void on_settle(h2o_timeout_entry_t *entry)
{
    struct stream_client *c = H2O_STRUCT_FROM_MEMBER(struct stream_client, settle_entry, entry);
    struct http_server *s = c->srv;
    struct replay_job *j = calloc(1, sizeof(*j));
    char err[256];
    pthread_t t;
    pthread_attr_t attr;

    if (j == NULL)
        goto fail;
    j->srv = s;
    j->client = c;
    buf_init(&j->qs);
    uint64_t since = c->q.last_event_id.timestamp_ns;
    if (since >= QUERY_TIME_NS_IMPLAUSIBLE_FROM && since < QUERY_TIME_NS_IMPLAUSIBLE_TO)
        since = 0; /* not a time a parser takes: ask from the start, the key filters */
    if (since < c->q.since_ns)
        since = c->q.since_ns;
    if (since > c->q.until_ns) {
        /* No stored event the stream would send lies after the client's position. */
        j->past_until = true;
        replay_finish(c, j);
        replay_job_free(j);
        return;
    }
    query_replay_string(c->qs, c->qslen, since, c->q.until_ns, HTTP_REPLAY_MAX, &j->qs);
    if (j->qs.oom || query_parse(&j->q, j->qs.data, j->qs.len, false, err, sizeof(err)) < 0)
        goto fail;
    c->job = j;
    stat_add(&s->replays_running, 1);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&t, &attr, replay_main, j);
    pthread_attr_destroy(&attr);
    if (rc == 0)
        return;
    stat_add(&s->replays_running, -1);
fail:
    if (j == NULL) {
        struct replay_job none = {.rc = -ENOMEM};
        replay_finish(c, &none);
        return;
    }
    j->rc = j->rc < 0 ? j->rc : -ENOMEM;
    replay_finish(c, j);
    replay_job_free(j);
}

/* Loop thread: a notice to every stream client, and to the new ones while it persists. */
static void stream_notice_fanout(struct http_server *s, const char *text, bool persist)
{
    h2o_linklist_t *node, *next;

    snprintf(s->notice, sizeof(s->notice), "%s", persist ? text : "");
    if (s->stopping)
        return;
    for (node = s->stream_clients.next; node != &s->stream_clients; node = next) {
        struct stream_client *c = H2O_STRUCT_FROM_MEMBER(struct stream_client, link, node);

        next = node->next; /* a send may fail and detach c */
        buf_printf(&c->pending, ": %s\n\n", text);
        stream_flush(c);
    }
}

static void on_publish_messages(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    struct http_server *s = H2O_STRUCT_FROM_MEMBER(struct http_server, publish_receiver, receiver);

    while (!h2o_linklist_is_empty(messages)) {
        struct publish_msg *m =
            H2O_STRUCT_FROM_MEMBER(struct publish_msg, super.link, messages->next);

        h2o_linklist_unlink(&m->super.link);
        if (m->notice) {
            stream_notice_fanout(s, m->notice, m->notice_persist);
            free(m->notice);
            free(m);
            continue;
        }
        stat_add(&s->publish_pending, -1);
        if (!s->stopping)
            stream_fanout(s, &m->ev);
        event_clear(&m->ev);
        free(m);
    }
}

void http_server_stream_notice(struct http_server *s, const char *text, bool persist)
{
    struct publish_msg *m = calloc(1, sizeof(*m));

    if (m == NULL || (m->notice = strdup(text)) == NULL) {
        free(m); /* out of memory: the notice is lost, nothing else */
        return;
    }
    m->notice_persist = persist;
    h2o_multithread_send_message(&s->publish_receiver, &m->super);
}

void http_server_publish(struct http_server *s, const struct event *e)
{
    struct publish_msg *m;

    /* The common case on a node nobody is watching: no copy, no wakeup. */
    if (stat_get(&s->nstream_clients) == 0)
        return;
    if (__atomic_add_fetch(&s->publish_pending, 1, __ATOMIC_RELAXED) > HTTP_PUBLISH_QUEUE_MAX)
        goto drop;
    m = malloc(sizeof(*m));
    if (m == NULL)
        goto drop;
    memset(m, 0, sizeof(*m)); /* h2o asserts the link is unlinked (zeroed) */
    if (event_copy(&m->ev, e) != 0) {
        free(m);
        goto drop;
    }
    h2o_multithread_send_message(&s->publish_receiver, &m->super);
    return;
drop:
    stat_add(&s->publish_pending, -1);
    stat_add(&s->publish_dropped, 1);
}

static void on_keepalive(h2o_timeout_entry_t *entry)
{
    struct http_server *s = H2O_STRUCT_FROM_MEMBER(struct http_server, keepalive_entry, entry);
    h2o_linklist_t *node, *next;

    /* Comments keep proxies from timing the stream out and reveal dead clients. */
    for (node = s->stream_clients.next; node != &s->stream_clients; node = next) {
        struct stream_client *c = H2O_STRUCT_FROM_MEMBER(struct stream_client, link, node);

        next = node->next;
        if (c->pending.len + c->inflight.len == 0) {
            buf_puts(&c->pending, ": keepalive\n\n");
            stream_flush(c);
        }
    }
    h2o_timeout_link(s->ctx.loop, &s->keepalive_timeout, &s->keepalive_entry);
}

/*
 * Ends the streams whose `until` is QUERY_STREAM_UNTIL_GRACE_MS past (events
 * stamped before it may still be on their way); ticks while any has one.
 */
static void on_until_tick(h2o_timeout_entry_t *entry)
{
    struct http_server *s = H2O_STRUCT_FROM_MEMBER(struct http_server, until_entry, entry);
    uint64_t now = clock_realtime_ns(), grace = QUERY_STREAM_UNTIL_GRACE_MS * 1000000ull;
    h2o_linklist_t *node, *next;
    bool more = false;

    for (node = s->stream_clients.next; node != &s->stream_clients; node = next) {
        struct stream_client *c = H2O_STRUCT_FROM_MEMBER(struct stream_client, link, node);

        next = node->next;
        if (c->q.until_ns == UINT64_MAX)
            continue;
        if (c->q.until_ns < now - grace)
            stream_end(c);
        else
            more = true;
    }
    if (more)
        h2o_timeout_link(s->ctx.loop, &s->until_timeout, &s->until_entry);
}

/* Ticks while there are stream clients (one recv() each): see stream_reap_gone. */
static void on_reap_tick(h2o_timeout_entry_t *entry)
{
    struct http_server *s = H2O_STRUCT_FROM_MEMBER(struct http_server, reap_entry, entry);

    stream_reap_gone(s);
    if (!h2o_linklist_is_empty(&s->stream_clients))
        h2o_timeout_link(s->ctx.loop, &s->reap_timeout, &s->reap_entry);
}

/* ---- request dispatch ---- */

static bool path_is_api(const h2o_iovec_t *path)
{
    return path->len >= 5 && memcmp(path->base, "/api/", 5) == 0;
}

/* Constant time over the token: compares digests, so neither content nor length leaks. */
static bool auth_ok(struct http_server *s, h2o_req_t *req)
{
    unsigned char got[SHA256_DIGEST_LENGTH];
    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_AUTHORIZATION, -1);
    h2o_iovec_t v;

    if (i == -1)
        return false;
    v = req->headers.entries[i].value;
    if (v.len < 7 || !h2o_lcstris(v.base, 7, H2O_STRLIT("bearer ")))
        return false;
    size_t skip = 7; /* the scheme and one or more spaces (RFC 9110) */
    while (skip < v.len && v.base[skip] == ' ')
        skip++;
    SHA256((const unsigned char *)v.base + skip, v.len - skip, got);
    return CRYPTO_memcmp(got, s->token_hash, sizeof(got)) == 0;
}

static const struct http_route *route_find(struct http_server *s, const h2o_iovec_t *path)
{
    for (size_t i = 0; i < s->nroutes; i++) {
        if (s->routes[i].path_len == path->len &&
            memcmp(s->routes[i].path, path->base, path->len) == 0)
            return &s->routes[i];
    }
    return NULL;
}

/*
 * The path req names. An absolute-form request target ("GET
 * http://host/path", which a server must accept, RFC 9112 section 3.2.2) is
 * kept whole by h2o, normalized as "/http://host/path": its path is after the
 * authority.
 */
static h2o_iovec_t origin_path(const h2o_req_t *req)
{
    h2o_iovec_t p = req->path_normalized;
    size_t i = 1;

    if (req->path.len == 0 || req->path.base[0] == '/')
        return p;
    while (i < p.len && (isalnum((unsigned char)p.base[i]) || p.base[i] == '+' ||
                         p.base[i] == '-' || p.base[i] == '.'))
        i++;
    if (i == 1 || p.len - i < 3 || memcmp(p.base + i, "://", 3) != 0)
        return p;
    const char *end = p.base + p.len, *host = p.base + i + 3;
    const char *slash = memchr(host, '/', (size_t)(end - host));
    return slash != NULL ? h2o_iovec_init(slash, (size_t)(end - slash))
                         : h2o_iovec_init(H2O_STRLIT("/"));
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    struct http_server *s = ((struct http_h2o_handler *)self)->srv;
    const h2o_iovec_t path = origin_path(req);
    const struct http_route *r;
    const char *qs = "";
    size_t qslen = 0;

    stat_add(&s->requests, 1);
    if (s->api_token != NULL && path_is_api(&path) && !auth_ok(s, req)) {
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_WWW_AUTHENTICATE, NULL,
                       H2O_STRLIT("Bearer"));
        send_error(req, 401, "missing or invalid bearer token");
        return 0;
    }
    r = route_find(s, &path);
    if (r == NULL) {
        send_error(req, 404, "not found");
        return 0;
    }
    if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET")) &&
        !h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD"))) {
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL,
                       H2O_STRLIT("GET, HEAD"));
        send_error(req, 405, "method not allowed");
        return 0;
    }
    if (req->query_at != SIZE_MAX) {
        qs = req->path.base + req->query_at + 1;
        qslen = req->path.len - req->query_at - 1;
    }
    if (r->fn == NULL) {
        serve_stream(s, req, qs, qslen);
        return 0;
    }

    struct http_request hreq = {
        .path = path.base,
        .path_len = path.len,
        .query = qs,
        .query_len = qslen,
        .accepts_gzip = request_accepts_gzip(req),
    };
    ssize_t inm = h2o_find_header(&req->headers, H2O_TOKEN_IF_NONE_MATCH, -1);
    if (inm != -1) {
        hreq.if_none_match = req->headers.entries[inm].value.base;
        hreq.if_none_match_len = req->headers.entries[inm].value.len;
    }
    struct deferred_slot slot = {.srv = s, .req = req, .accepts_gzip = hreq.accepts_gzip};
    struct http_response res = {.status = 200, .server_private = &slot};

    buf_init(&res.body);
    r->fn(r->ctx, &hreq, &res);
    if (slot.d != NULL) {
        /* Answered later by http_deferred_complete; h2o keeps the request open. */
        buf_free(&res.body);
        return 0;
    }
    if (res.body.oom) {
        send_response(req, 500, "application/json", H2O_STRLIT("{\"error\":\"out of memory\"}"));
    } else {
        add_handler_headers(req, &res);
        send_compressible(req, hreq.accepts_gzip, res.status > 0 ? res.status : 200,
                          res.content_type != NULL ? res.content_type : "application/json",
                          res.body.data != NULL ? res.body.data : "", res.body.len);
    }
    buf_free(&res.body);
    return 0;
}

/* ---- deferred responses ---- */

static void deferred_anchor_dispose(void *p)
{
    struct deferred_anchor *an = p;

    if (an->d != NULL) {
        an->d->req = NULL;
        an->d->anchor = NULL;
    }
}

struct http_deferred *http_response_defer(struct http_response *res)
{
    struct deferred_slot *slot = res->server_private;
    struct http_deferred *d;
    struct deferred_anchor *an;

    if (slot == NULL)
        return NULL;
    if (slot->d != NULL)
        return slot->d;
    if ((d = calloc(1, sizeof(*d))) == NULL)
        return NULL;
    an = h2o_mem_alloc_shared(&slot->req->pool, sizeof(*an), deferred_anchor_dispose);
    an->d = d;
    d->srv = slot->srv;
    d->req = slot->req;
    d->anchor = an;
    d->accepts_gzip = slot->accepts_gzip;
    buf_init(&d->body);
    slot->d = d;
    stat_add(&slot->srv->deferred_pending, 1);
    return d;
}

void http_deferred_complete(struct http_deferred *d, int status, const char *content_type,
                            struct buf *body)
{
    d->status = status > 0 ? status : 200;
    if (content_type != NULL && (d->content_type = strdup(content_type)) == NULL)
        d->oom = true; /* the body would be mislabelled */
    if (body != NULL) {
        d->body = *body;
        buf_init(body);
    }
    /* h2o asserts the link is unlinked. */
    memset(&d->super, 0, sizeof(d->super));
    h2o_multithread_send_message(&d->srv->deferred_receiver, &d->super);
}

/*
 * HTTP/1 in h2o stops reading while a request is in progress, so it notices a
 * client that left only when the response is written: look at the socket.
 */
static bool client_gone(h2o_req_t *req)
{
    h2o_socket_t *sock = req->conn->callbacks->get_socket != NULL
                             ? req->conn->callbacks->get_socket(req->conn)
                             : NULL;
    char b;

    if (sock == NULL)
        return false;
    ssize_t n = recv(h2o_socket_get_fd(sock), &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

static void deferred_finish(struct http_server *s, struct http_deferred *d)
{
    if (d->req == NULL) {
        stat_add(&s->deferred_dropped, 1);
    } else {
        d->anchor->d = NULL; /* the request may now go away on its own */
        /* Still sent: writing is how h2o finds out and closes the connection. */
        if (client_gone(d->req))
            stat_add(&s->deferred_dropped, 1);
        if (d->oom || d->body.oom)
            send_response(d->req, 500, "application/json",
                          H2O_STRLIT("{\"error\":\"out of memory\"}"));
        else
            send_compressible(d->req, d->accepts_gzip, d->status,
                              d->content_type != NULL ? d->content_type : "application/json",
                              d->body.data != NULL ? d->body.data : "", d->body.len);
    }
    stat_add(&s->deferred_pending, -1);
    buf_free(&d->body);
    free(d->content_type);
    free(d);
}

static void on_deferred_messages(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    struct http_server *s = H2O_STRUCT_FROM_MEMBER(struct http_server, deferred_receiver, receiver);

    while (!h2o_linklist_is_empty(messages)) {
        struct http_deferred *d =
            H2O_STRUCT_FROM_MEMBER(struct http_deferred, super.link, messages->next);

        h2o_linklist_unlink(&d->super.link);
        deferred_finish(s, d);
    }
}

/* ---- connections ---- */

static void on_conn_close(void *data)
{
    struct http_conn *c = data;

    h2o_linklist_unlink(&c->link);
    c->srv->nconns--;
    free(c);
}

static void on_accept(h2o_socket_t *listener, const char *err)
{
    struct http_server *s = listener->data;
    struct http_conn *c;
    h2o_socket_t *sock;

    if (err != NULL || s->stopping)
        return;
    if ((sock = h2o_evloop_socket_accept(listener)) == NULL)
        return;
    if ((c = calloc(1, sizeof(*c))) == NULL) {
        h2o_socket_close(sock);
        return;
    }
    c->sock = sock;
    c->srv = s;
    h2o_linklist_insert(&s->conns, &c->link);
    s->nconns++;
    sock->on_close.cb = on_conn_close;
    sock->on_close.data = c;
    h2o_accept(&s->accept_ctx, sock);
}

/* ---- listen address ---- */

static int parse_listen_addr(const char *addr, char *host, size_t hostlen, int *port)
{
    long p;

    if (netaddr_split(addr, strlen(addr), host, hostlen, &p) != 0 || p < 0)
        return -EINVAL;
    *port = (int)p;
    return 0;
}

static int bind_one(const struct sockaddr *sa, socklen_t salen, bool dual_stack)
{
    int fd, one = 1, zero = 0;

    fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0)
        goto fail;
    if (dual_stack && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero)) != 0)
        goto fail;
    if (bind(fd, sa, salen) != 0 || listen(fd, SOMAXCONN) != 0)
        goto fail;
    return fd;
fail:;
    int e = errno;
    close(fd);
    return -e;
}

static int listen_on(const char *addr, int *out_port, char *err, size_t errlen)
{
    char host[256];
    char portstr[8];
    int port, fd;
    struct addrinfo hints = {0}, *res = NULL;
    union {
        struct sockaddr sa;
        struct sockaddr_in in;
        struct sockaddr_in6 in6;
        struct sockaddr_storage ss;
    } bound;
    socklen_t blen = sizeof(bound);

    if (parse_listen_addr(addr, host, sizeof(host), &port) != 0) {
        errmsg_set(
            err, errlen,
            "listen on %s (LISTEN_ADDR): invalid address (want \":8080\", \"127.0.0.1:8080\" or "
            "\"[::1]:8080\")",
            addr);
        return -EINVAL;
    }
    if (host[0] == '\0') {
        /* All interfaces: one dual-stack socket when IPv6 exists, else IPv4. */
        struct sockaddr_in6 in6 = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
        struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(port)};

        in6.sin6_addr = in6addr_any;
        in.sin_addr.s_addr = htonl(INADDR_ANY);
        fd = bind_one((struct sockaddr *)&in6, sizeof(in6), true);
        if (fd == -EAFNOSUPPORT || fd == -EADDRNOTAVAIL || fd == -EPROTONOSUPPORT)
            fd = bind_one((struct sockaddr *)&in, sizeof(in), false);
    } else {
        int rc;

        snprintf(portstr, sizeof(portstr), "%d", port);
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
        rc = getaddrinfo(host, portstr, &hints, &res);
        if (rc != 0) {
            errmsg_set(err, errlen, "listen on %s (LISTEN_ADDR): %s", addr, gai_strerror(rc));
            return -EINVAL;
        }
        fd = bind_one(res->ai_addr, res->ai_addrlen, false);
        freeaddrinfo(res);
    }
    if (fd < 0) {
        errmsg_set(err, errlen, "listen on %s (LISTEN_ADDR): %s", addr, strerror(-fd));
        return fd;
    }
    if (getsockname(fd, &bound.sa, &blen) != 0) {
        int e = errno;
        close(fd);
        errmsg_set(err, errlen, "listen on %s: getsockname: %s", addr, strerror(e));
        return -e;
    }
    *out_port = ntohs(bound.sa.sa_family == AF_INET6 ? bound.in6.sin6_port : bound.in.sin_port);
    return fd;
}

/* ---- TLS ---- */

static void ssl_error_string(char *out, size_t len)
{
    unsigned long e = ERR_get_error();

    if (e == 0)
        snprintf(out, len, "unknown error");
    else
        ERR_error_string_n(e, out, len);
    ERR_clear_error();
}

static SSL_CTX *tls_setup(const char *cert, const char *key, char *err, size_t errlen)
{
    char why[256];
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

    if (ctx == NULL) {
        ssl_error_string(why, sizeof(why));
        errmsg_set(err, errlen, "TLS: %s", why);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        ssl_error_string(why, sizeof(why));
        errmsg_set(err, errlen, "TLS certificate %s: %s", cert, why);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        ssl_error_string(why, sizeof(why));
        errmsg_set(err, errlen, "TLS key %s: %s", key, why);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ssl_error_string(why, sizeof(why));
        errmsg_set(err, errlen, "TLS key %s does not match certificate %s: %s", key, cert, why);
        goto fail;
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

/* ---- lifecycle ---- */

static void on_stop_message(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    struct http_server *s = H2O_STRUCT_FROM_MEMBER(struct http_server, stop_receiver, receiver);

    while (!h2o_linklist_is_empty(messages))
        h2o_linklist_unlink(messages->next);
    s->stopping = true;
}

struct http_server *http_server_new(const struct http_server_config *cfg, char *err, size_t errlen)
{
    struct http_server *s;
    h2o_hostconf_t *hostconf;
    h2o_pathconf_t *pathconf;
    struct http_h2o_handler *handler;
    const char *addr = cfg->listen_addr != NULL ? cfg->listen_addr : ":8080";
    struct sigaction old;

    /* A client closing mid-write must not kill the process. */
    if (sigaction(SIGPIPE, NULL, &old) == 0 && old.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);

    if ((cfg->tls_cert == NULL) != (cfg->tls_key == NULL)) {
        errmsg_set(err, errlen, "TLS needs both a certificate and a key (TLS_CERT, TLS_KEY)");
        return NULL;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        errmsg_set(err, errlen, "http server: out of memory");
        return NULL;
    }
    s->listen_fd = -1;
    s->stream_client_buffer = cfg->stream_client_buffer != 0 ? cfg->stream_client_buffer
                                                             : HTTP_STREAM_CLIENT_BUFFER_DEFAULT;
    s->max_stream_clients =
        cfg->max_stream_clients != 0 ? cfg->max_stream_clients : HTTP_MAX_STREAM_CLIENTS_DEFAULT;
    h2o_linklist_init_anchor(&s->stream_clients);
    h2o_linklist_init_anchor(&s->conns);
    buf_init(&s->scratch);
    s->listen_addr = strdup(addr);
    if (s->listen_addr == NULL)
        goto oom;
    if (cfg->api_token != NULL && cfg->api_token[0] != '\0') {
        s->api_token = strdup(cfg->api_token);
        if (s->api_token == NULL)
            goto oom;
        SHA256((const unsigned char *)s->api_token, strlen(s->api_token), s->token_hash);
    }
    if (cfg->tls_cert != NULL) {
        s->ssl_ctx = tls_setup(cfg->tls_cert, cfg->tls_key, err, errlen);
        if (s->ssl_ctx == NULL)
            goto fail;
    }
    s->listen_fd = listen_on(addr, &s->port, err, errlen);
    if (s->listen_fd < 0)
        goto fail;

    h2o_config_init(&s->config);
    s->config.max_request_entity_size = HTTP_MAX_REQUEST_BODY;
    s->config.server_name = h2o_iovec_init(H2O_STRLIT("ebpf-monitor"));
    hostconf = h2o_config_register_host(&s->config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    /* One catch-all path; exact routing happens in on_req. */
    pathconf = h2o_config_register_path(hostconf, "/", 0);
    handler = (struct http_h2o_handler *)h2o_create_handler(pathconf, sizeof(*handler));
    handler->super.on_req = on_req;
    handler->srv = s;

    s->loop = h2o_evloop_create();
    h2o_context_init(&s->ctx, s->loop, &s->config);
    s->accept_ctx.ctx = &s->ctx;
    s->accept_ctx.hosts = s->config.hosts;
    s->accept_ctx.ssl_ctx = s->ssl_ctx;
    h2o_multithread_register_receiver(s->ctx.queue, &s->publish_receiver, on_publish_messages);
    h2o_multithread_register_receiver(s->ctx.queue, &s->stop_receiver, on_stop_message);
    h2o_multithread_register_receiver(s->ctx.queue, &s->deferred_receiver, on_deferred_messages);
    h2o_multithread_register_receiver(s->ctx.queue, &s->replay_receiver, on_replay_messages);
    h2o_timeout_init(s->loop, &s->settle_timeout, HTTP_REPLAY_SETTLE_MS);
    h2o_timeout_init(s->loop, &s->keepalive_timeout, HTTP_KEEPALIVE_MS);
    s->keepalive_entry.cb = on_keepalive;
    h2o_timeout_link(s->loop, &s->keepalive_timeout, &s->keepalive_entry);
    h2o_timeout_init(s->loop, &s->until_timeout, HTTP_UNTIL_TICK_MS);
    s->until_entry.cb = on_until_tick;
    h2o_timeout_init(s->loop, &s->reap_timeout, HTTP_REAP_MS);
    s->reap_entry.cb = on_reap_tick;

    s->listener = h2o_evloop_socket_create(s->loop, s->listen_fd, H2O_SOCKET_FLAG_DONT_READ);
    s->listener->data = s;
    h2o_socket_read_start(s->listener, on_accept);
    return s;

oom:
    errmsg_set(err, errlen, "http server: out of memory");
fail:
    if (s->listen_fd >= 0)
        close(s->listen_fd);
    if (s->ssl_ctx != NULL)
        SSL_CTX_free(s->ssl_ctx);
    buf_free(&s->scratch);
    free(s->api_token);
    free(s->listen_addr);
    free(s);
    return NULL;
}

int http_server_port(struct http_server *s)
{
    return s->port;
}

static int add_route(struct http_server *s, const char *path, http_handler_fn fn, void *ctx)
{
    struct http_route *r;
    h2o_iovec_t p = h2o_iovec_init(path, strlen(path));

    if (s->started || path[0] != '/')
        return -EINVAL;
    if (route_find(s, &p) != NULL)
        return -EEXIST;
    r = realloc(s->routes, (s->nroutes + 1) * sizeof(*r));
    if (r == NULL)
        return -ENOMEM;
    s->routes = r;
    r = &s->routes[s->nroutes];
    r->path = strdup(path);
    if (r->path == NULL)
        return -ENOMEM;
    r->path_len = p.len;
    r->fn = fn;
    r->ctx = ctx;
    s->nroutes++;
    return 0;
}

int http_server_route(struct http_server *s, const char *path, http_handler_fn fn, void *ctx)
{
    if (fn == NULL)
        return -EINVAL;
    return add_route(s, path, fn, ctx);
}

int http_server_stream(struct http_server *s, const char *path)
{
    return add_route(s, path, NULL, NULL);
}

void http_server_on_stream_replay(struct http_server *s, http_replay_fn fn, void *ctx)
{
    s->replay = fn;
    s->replay_ctx = ctx;
}

void http_server_on_stream_clients(struct http_server *s, http_stream_clients_fn fn, void *ctx)
{
    s->on_clients = fn;
    s->on_clients_ctx = ctx;
}

static void loop_teardown(struct http_server *s);

static void *loop_main(void *arg)
{
    struct http_server *s = arg;

    pthread_setname_np(pthread_self(), "http");
    while (!s->stopping)
        h2o_evloop_run(s->loop, INT32_MAX);
    loop_teardown(s);
    return NULL;
}

int http_server_start(struct http_server *s)
{
    int rc;

    if (s->started)
        return -EALREADY;
    rc = pthread_create(&s->thread, NULL, loop_main, s);
    if (rc != 0)
        return -rc;
    s->started = true;
    return 0;
}

/*
 * Closes every connection so the loop can be destroyed: streams get their
 * final chunk, then every socket is shut down, which makes h2o see EOF or a
 * write error and close it through its normal path.
 */
static bool close_connections(struct http_server *s)
{
    h2o_linklist_t *node, *next;
    uint64_t deadline;

    h2o_shim_request_http1_shutdown(&s->ctx);
    for (node = s->stream_clients.next; node != &s->stream_clients; node = next) {
        struct stream_client *c = H2O_STRUCT_FROM_MEMBER(struct stream_client, link, node);

        next = node->next;
        stream_end(c);
    }
    for (node = s->conns.next; node != &s->conns; node = node->next) {
        struct http_conn *c = H2O_STRUCT_FROM_MEMBER(struct http_conn, link, node);

        shutdown(h2o_socket_get_fd(c->sock), SHUT_RDWR);
    }
    deadline = clock_monotonic_ns() + HTTP_SHUTDOWN_GRACE_MS * 1000000ull;
    while (s->nconns > 0 && clock_monotonic_ns() < deadline)
        h2o_evloop_run(s->loop, 10);
    return s->nconns == 0;
}

/* Runs on the thread that owns the loop (h2o's buffers are per-thread). */
static void loop_teardown(struct http_server *s)
{
    bool clean;

    s->stopping = true;
    h2o_socket_read_stop(s->listener);
    h2o_socket_close(s->listener);
    /* Completions already queued: answer them before the connections close. */
    h2o_shim_receiver_flush(&s->deferred_receiver);
    clean = close_connections(s);
    h2o_timeout_unlink(&s->keepalive_entry);
    h2o_timeout_dispose(s->loop, &s->keepalive_timeout);
    h2o_timeout_unlink(&s->until_entry);
    h2o_timeout_dispose(s->loop, &s->until_timeout);
    h2o_timeout_unlink(&s->reap_entry);
    h2o_timeout_dispose(s->loop, &s->reap_timeout);
    /* Replays still asking: their answers are dropped, but their threads must be done. */
    while (stat_get(&s->replays_running) > 0)
        usleep(10000);
    h2o_shim_receiver_flush(&s->replay_receiver);
    h2o_multithread_unregister_receiver(s->ctx.queue, &s->replay_receiver);
    h2o_timeout_dispose(s->loop, &s->settle_timeout);

    /* Events published but never delivered. */
    h2o_shim_receiver_flush(&s->publish_receiver);
    h2o_multithread_unregister_receiver(s->ctx.queue, &s->publish_receiver);
    h2o_multithread_unregister_receiver(s->ctx.queue, &s->stop_receiver);
    h2o_shim_receiver_flush(&s->deferred_receiver);
    h2o_multithread_unregister_receiver(s->ctx.queue, &s->deferred_receiver);
    if (!clean) {
        /* h2o cannot free a loop that still holds a connection. */
        fprintf(stderr, "http server %s: %zu connection(s) did not close; leaking the loop\n",
                s->listen_addr, s->nconns);
        return;
    }
    h2o_context_dispose(&s->ctx);
    h2o_evloop_destroy(s->loop);
    h2o_config_dispose(&s->config);
    /* Socket buffers h2o keeps for reuse in this thread's cache die with the thread. */
    h2o_shim_free_socket_buffers();
}

void http_server_free(struct http_server *s)
{
    if (s == NULL)
        return;
    if (s->started) {
        memset(&s->stop_msg, 0, sizeof(s->stop_msg)); /* h2o asserts the link is unlinked */
        h2o_multithread_send_message(&s->stop_receiver, &s->stop_msg);
        pthread_join(s->thread, NULL);
    } else {
        loop_teardown(s);
    }
    if (s->ssl_ctx != NULL)
        SSL_CTX_free(s->ssl_ctx);
    for (size_t i = 0; i < s->nroutes; i++)
        free(s->routes[i].path);
    free(s->routes);
    buf_free(&s->scratch);
    free(s->api_token);
    free(s->listen_addr);
    free(s);
}

void http_server_get_stats(struct http_server *s, struct http_server_stats *out)
{
    out->requests = stat_get(&s->requests);
    out->stream_clients = stat_get(&s->nstream_clients);
    out->stream_sent = stat_get(&s->stream_sent);
    out->stream_dropped = stat_get(&s->stream_dropped);
    out->stream_queued = stat_get(&s->stream_queued);
    out->publish_dropped = stat_get(&s->publish_dropped);
    out->deferred_pending = stat_get(&s->deferred_pending);
    out->deferred_dropped = stat_get(&s->deferred_dropped);
}

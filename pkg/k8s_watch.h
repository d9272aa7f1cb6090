/*
 * LIST + WATCH of one Kubernetes collection, the way client-go's informers
 * do it, shared by the agent's pod watch (k8s.c) and the aggregator's
 * Services and EndpointSlices watches (k8s_services.c).
 *
 * A thread of its own LISTs the collection (paged), then WATCHes from the
 * list's resourceVersion; an expired watch (410 Gone, as an HTTP status or
 * an ERROR event) re-lists, other failures reconnect with exponential
 * backoff. What the objects mean is the owner's business: the watcher hands
 * each listed item and each watch event to callbacks, on its thread, and
 * the owner keeps its own state under its own lock. It also offers one-off
 * GETs (the pod watch reads Jobs) on a second connection from its tick
 * callback, while a watch stream is open.
 */
#ifndef EBPF_MONITOR_K8S_WATCH_H
#define EBPF_MONITOR_K8S_WATCH_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "buf.h"

/*
 * A JSON string's text, or NULL when v is no string or holds a NUL: the API
 * server's JSON may carry \u0000 in any string (Go writes a NUL so), and a
 * name or address cut at it would be a wrong one. Documents are parsed with
 * JSON_ALLOW_NUL, so such a string costs only itself.
 */
static inline const char *k8s_json_text(json_t *v)
{
    const char *s = json_string_value(v);
    return s && strlen(s) == json_string_length(v) ? s : NULL;
}

#define K8S_TOKEN_PATH "/var/run/secrets/kubernetes.io/serviceaccount/token"
#define K8S_CA_PATH    "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"

/* Where the API server is and how to talk to it (0 / NULL: the defaults). */
struct k8s_conn_options {
    /* NULL: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT; with neither, no
     * API server (the watch never starts). http:// is accepted. */
    const char *api_url;
    const char *token_path;      /* NULL: K8S_TOKEN_PATH; "": send no token. Re-read per request. */
    const char *ca_path;         /* NULL: K8S_CA_PATH; "": the system's CA store */
    unsigned backoff_min_ms;     /* reconnect delay after an error, doubling; 0: 250 */
    unsigned backoff_max_ms;     /* 0: 30000 */
    unsigned watch_timeout_s;    /* the server ends each watch after this; 0: 300 */
    unsigned connect_timeout_ms; /* 0: 5000 */
};

/* What the owner is told, on the watch thread. ctx is the owner's. */
struct k8s_watch_ops {
    const char *list_kind; /* "PodList", for messages */
    /* Appends the collection's URL up to and including '?' or '&' (selectors). */
    void (*url)(void *ctx, const char *api_url, struct buf *u);
    void (*list_begin)(void *ctx); /* a LIST starts (may be NULL) */
    void (*list_item)(void *ctx, json_t *item);
    /* The whole collection was listed: whatever the LIST did not hold is gone (may be NULL). */
    void (*list_end)(void *ctx);
    /* ADDED, MODIFIED, DELETED or BOOKMARK, with its object. */
    void (*event)(void *ctx, const char *type, json_t *object);
    void (*tick)(void *ctx); /* after a LIST, and between reads of a watch (may be NULL) */
};

struct k8s_watch_stats {
    uint64_t api_errors;   /* failed LIST/WATCH requests and ERROR watch events */
    uint64_t lists;        /* completed LISTs */
    uint64_t relists;      /* LISTs after the first (expired watch or reconnect) */
    uint64_t watch_events; /* ADDED/MODIFIED/DELETED/BOOKMARK applied */
    bool connected;        /* the last LIST/WATCH request succeeded */
    char last_error[256];  /* the most recent error, "" when none happened yet */
};

struct k8s_watch;

/*
 * NULL and *err = -EINVAL (an api_url that is not http(s)://), -EIO (curl)
 * or -ENOMEM. Without an API server it still succeeds (k8s_watch_enabled()
 * is false and start does nothing).
 */
struct k8s_watch *k8s_watch_new(const struct k8s_conn_options *o, const struct k8s_watch_ops *ops,
                                void *ctx, int *err);
bool k8s_watch_enabled(const struct k8s_watch *w);
/* Starts the thread, named name. 0 or -errno. */
int k8s_watch_start(struct k8s_watch *w, const char *name);
/* Stops the thread (interrupting a request in flight) and frees. */
void k8s_watch_free(struct k8s_watch *w);
/* True once k8s_watch_free() began: a tick should return at once. */
bool k8s_watch_stopping(struct k8s_watch *w);

void k8s_watch_get_stats(struct k8s_watch *w, struct k8s_watch_stats *out);
/* Keeps msg as last_error without counting an API error (a failed side request). */
void k8s_watch_note_error(struct k8s_watch *w, const char *msg);

/*
 * A GET of url (from the tick callback: the second connection) into body,
 * at most max bytes. 0, or -1 with the reason in err.
 */
int k8s_watch_get(struct k8s_watch *w, const char *url, size_t max, struct buf *body, char *err,
                  size_t errlen);

/*
 * Applies bytes as if the API server had sent them, without any request: a
 * list page (watch false) or a chunk of a watch stream, one JSON event per
 * line (watch true; an unfinished last line is dropped). For tests and fuzz
 * targets; the watch thread goes through the same code. 0, -ESTALE for a 410
 * watch ERROR, or -EINVAL with err set.
 */
int k8s_watch_feed(struct k8s_watch *w, bool watch, const char *data, size_t len, char *err,
                   size_t errlen);

/* The API server's base URL in use (no trailing '/'), NULL without one. */
const char *k8s_watch_api_url(const struct k8s_watch *w);

#endif

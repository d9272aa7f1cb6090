/*
 * LIST + WATCH of one Kubernetes collection on a thread of its own (see
 * k8s_watch.h). HTTP through a curl multi handle, so k8s_watch_free() can
 * interrupt a request in flight; a second multi handle serves the owner's
 * one-off GETs while a watch streams.
 */
#include "k8s_watch.h"

#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "errmsg.h"

#define K8S_LIST_PAGE      500
#define K8S_LIST_MAX_BYTES (256u << 20) /* one LIST page; 500 pods are a few MB */
#define K8S_LINE_MAX_BYTES (16u << 20)  /* one watch event */
#define K8S_ERROR_BODY_MAX 4096
#define K8S_GET_TIMEOUT_MS 10000

struct k8s_watch {
    /* configuration, immutable after k8s_watch_new */
    char *api_url; /* NULL: no API server */
    char *token_path, *ca_path;
    unsigned backoff_min_ms, backoff_max_ms, watch_timeout_s, connect_timeout_ms;
    const struct k8s_watch_ops *ops;
    void *ctx;

    /* the watch thread */
    pthread_t thread;
    bool started;
    atomic_bool stop;
    CURLM *multi;
    CURLM *get_multi; /* the owner's GETs, made while the watch's transfer is open */
    char rv[128];     /* resourceVersion to watch from; watch thread only */

    pthread_mutex_t lock; /* stats, and the stop wake-up */
    pthread_cond_t wake;
    struct k8s_watch_stats stats;
    char logged_error[sizeof(((struct k8s_watch_stats *)0)->last_error)]; /* "" when working */
    char name[32];       /* what it watches, for the log ("pods") */
    char log_prefix[32]; /* the program ("ebpf-agent") */
};

/* ---- errors and stats ---- */

/*
 * Each failure is counted; the log gets a line when the watch fails after
 * working or with another reason than the last one it logged, and one when
 * it works again: a retry loop on the same error says it once.
 */
static void set_error(struct k8s_watch *w, const char *msg)
{
    pthread_mutex_lock(&w->lock);
    bool news = w->stats.connected || strcmp(w->logged_error, msg) != 0;
    snprintf(w->stats.last_error, sizeof(w->stats.last_error), "%s", msg);
    w->stats.api_errors++;
    w->stats.connected = false;
    if (news)
        snprintf(w->logged_error, sizeof(w->logged_error), "%s", msg);
    pthread_mutex_unlock(&w->lock);
    if (news)
        fprintf(stderr, "%s: Kubernetes API (%s): %s (retrying)\n", w->log_prefix, w->name, msg);
}

static void set_connected(struct k8s_watch *w, bool on)
{
    pthread_mutex_lock(&w->lock);
    bool back = on && w->logged_error[0];
    w->stats.connected = on;
    if (back)
        w->logged_error[0] = '\0';
    pthread_mutex_unlock(&w->lock);
    if (back)
        fprintf(stderr, "%s: Kubernetes API (%s): working again\n", w->log_prefix, w->name);
}

void k8s_watch_note_error(struct k8s_watch *w, const char *msg)
{
    pthread_mutex_lock(&w->lock);
    snprintf(w->stats.last_error, sizeof(w->stats.last_error), "%s", msg);
    pthread_mutex_unlock(&w->lock);
}

void k8s_watch_get_stats(struct k8s_watch *w, struct k8s_watch_stats *out)
{
    pthread_mutex_lock(&w->lock);
    *out = w->stats;
    pthread_mutex_unlock(&w->lock);
}

bool k8s_watch_enabled(const struct k8s_watch *w)
{
    return w->api_url != NULL;
}

const char *k8s_watch_api_url(const struct k8s_watch *w)
{
    return w->api_url;
}

bool k8s_watch_stopping(struct k8s_watch *w)
{
    return atomic_load(&w->stop);
}

static const char *json_str(json_t *obj, const char *key)
{
    return k8s_json_text(json_object_get(obj, key));
}

/* "HTTP 403: pods is forbidden: ..." from a Status body, or its first bytes. */
static void status_message(long http, const struct buf *body, char *out, size_t len)
{
    json_t *st = body->len ? json_loadb(body->data, body->len, JSON_ALLOW_NUL, NULL) : NULL;
    const char *msg = st ? json_str(st, "message") : NULL;
    if (msg)
        snprintf(out, len, "HTTP %ld: %s", http, msg);
    else
        snprintf(out, len, "HTTP %ld: %.*s", http, (int)(body->len > 200 ? 200 : body->len),
                 body->len ? body->data : "");
    json_decref(st);
}

/* ---- HTTP ---- */

enum req_kind { REQ_LIST, REQ_WATCH, REQ_GET };

enum req_outcome {
    OUT_OK,      /* complete (LIST) or ended by the server (WATCH) */
    OUT_EXPIRED, /* 410 Gone: resourceVersion too old, re-list */
    OUT_ERROR,   /* anything else; err says what */
    OUT_STOPPED, /* k8s_watch_free() interrupted it */
};

struct req {
    struct k8s_watch *w;
    CURL *h;
    enum req_kind kind;
    size_t max;      /* LIST/GET body bound */
    struct buf body; /* LIST body, watch partial line, or error body */
    long status;
    enum req_outcome abort; /* set by the watch parser to end the transfer */
    unsigned events;
    bool connected;
    char err[200];
    char curl_err[CURL_ERROR_SIZE];
};

static void apply_watch_line(struct req *r, const char *line, size_t len)
{
    struct k8s_watch *w = r->w;
    json_error_t jerr;
    json_t *ev = json_loadb(line, len, JSON_ALLOW_NUL, &jerr);
    const char *type = ev ? json_str(ev, "type") : NULL;
    json_t *obj = ev ? json_object_get(ev, "object") : NULL;

    if (!type || !json_is_object(obj)) {
        snprintf(r->err, sizeof(r->err), "bad watch event: %s", ev ? "no type/object" : jerr.text);
        r->abort = OUT_ERROR;
        goto out;
    }
    if (strcmp(type, "ERROR") == 0) {
        /* The object is a Status; 410 means our resourceVersion is gone. */
        json_int_t code = json_integer_value(json_object_get(obj, "code"));
        const char *msg = json_str(obj, "message");
        snprintf(r->err, sizeof(r->err), "watch ERROR %lld: %s", (long long)code,
                 msg ? msg : "(no message)");
        r->abort = code == 410 ? OUT_EXPIRED : OUT_ERROR;
        goto out;
    }
    const char *rv = json_str(json_object_get(obj, "metadata"), "resourceVersion");
    if (rv && strlen(rv) < sizeof(w->rv))
        strcpy(w->rv, rv);
    if (strcmp(type, "ADDED") == 0 || strcmp(type, "MODIFIED") == 0 ||
        strcmp(type, "DELETED") == 0 || strcmp(type, "BOOKMARK") == 0)
        w->ops->event(w->ctx, type, obj);
    pthread_mutex_lock(&w->lock);
    w->stats.watch_events++;
    pthread_mutex_unlock(&w->lock);
    r->events++;
out:
    json_decref(ev);
}

static size_t watch_consume(struct req *r, const char *data, size_t len);

static size_t on_body(char *data, size_t size, size_t n, void *ud)
{
    struct req *r = ud;
    size_t len = size * n;

    if (atomic_load(&r->w->stop))
        return 0;
    if (!r->status)
        curl_easy_getinfo(r->h, CURLINFO_RESPONSE_CODE, &r->status);
    if (r->status != 200) {
        /* keep the start of an error body for the message */
        if (r->body.len < K8S_ERROR_BODY_MAX)
            buf_append(&r->body, data, len);
        return len;
    }
    if (r->kind == REQ_WATCH)
        return watch_consume(r, data, len);
    buf_append(&r->body, data, len);
    if (r->body.oom)
        return 0;
    if (r->body.len > r->max) {
        snprintf(r->err, sizeof(r->err), "response over %zu bytes", r->max);
        r->abort = OUT_ERROR;
        return 0;
    }
    return len;
}

/* WATCH: one JSON object per line, applied as each line completes. 0 ends the transfer. */
static size_t watch_consume(struct req *r, const char *data, size_t len)
{
    buf_append(&r->body, data, len);
    if (r->body.oom)
        return 0;
    size_t start = 0;
    for (;;) {
        char *nl = memchr(r->body.data + start, '\n', r->body.len - start);
        if (!nl)
            break;
        size_t end = (size_t)(nl - r->body.data);
        if (end > start)
            apply_watch_line(r, r->body.data + start, end - start);
        start = end + 1;
        if (r->abort != OUT_OK)
            return 0;
    }
    memmove(r->body.data, r->body.data + start, r->body.len - start);
    r->body.len -= start;
    r->body.data[r->body.len] = '\0';
    if (r->body.len > K8S_LINE_MAX_BYTES) {
        snprintf(r->err, sizeof(r->err), "watch event over %u bytes", K8S_LINE_MAX_BYTES);
        r->abort = OUT_ERROR;
        return 0;
    }
    return len;
}

static char *read_token(const char *path)
{
    FILE *f;
    char *tok = NULL;
    size_t cap = 0;
    ssize_t n;

    if (!path || !*path || !(f = fopen(path, "re")))
        return NULL;
    n = getdelim(&tok, &cap, '\0', f);
    fclose(f);
    if (n <= 0) {
        free(tok);
        return NULL;
    }
    while (n > 0 && (tok[n - 1] == '\n' || tok[n - 1] == '\r' || tok[n - 1] == ' '))
        tok[--n] = '\0';
    return tok;
}

/*
 * Runs one GET on multi to completion (or until stopped); r->status and
 * r->err say how it went. While a watch streams, the owner's tick runs
 * between reads (its GETs go through the other multi handle).
 */
static enum req_outcome http_get(struct k8s_watch *w, CURLM *multi, struct req *r, const char *url)
{
    struct curl_slist *hdrs = curl_slist_append(NULL, "Accept: application/json");
    char *token = read_token(w->token_path);
    enum req_outcome out = OUT_ERROR;
    CURLcode res = CURLE_OK;

    if (token) {
        struct buf auth;
        buf_init(&auth);
        buf_printf(&auth, "Authorization: Bearer %s", token);
        if (!auth.oom)
            hdrs = curl_slist_append(hdrs, auth.data);
        buf_free(&auth);
        free(token);
    }
    r->h = curl_easy_init();
    if (!r->h || !hdrs) {
        snprintf(r->err, sizeof(r->err), "out of memory");
        goto done;
    }
    curl_easy_setopt(r->h, CURLOPT_URL, url);
    curl_easy_setopt(r->h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(r->h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(r->h, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(r->h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(r->h, CURLOPT_ERRORBUFFER, r->curl_err);
    curl_easy_setopt(r->h, CURLOPT_CONNECTTIMEOUT_MS, (long)w->connect_timeout_ms);
    curl_easy_setopt(r->h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(r->h, CURLOPT_ACCEPT_ENCODING, "");
    if (w->ca_path && *w->ca_path)
        curl_easy_setopt(r->h, CURLOPT_CAINFO, w->ca_path);
    /* A watch ends server-side after timeoutSeconds; a silent, dead connection
     * must not hold us much longer than that. */
    if (r->kind == REQ_WATCH)
        curl_easy_setopt(r->h, CURLOPT_TIMEOUT_MS, (long)(w->watch_timeout_s + 30) * 1000L);
    else
        curl_easy_setopt(r->h, CURLOPT_TIMEOUT_MS,
                         r->kind == REQ_GET ? (long)K8S_GET_TIMEOUT_MS : 120000L);

    curl_multi_add_handle(multi, r->h);
    int running = 1;
    while (running && !atomic_load(&w->stop)) {
        CURLMcode mc = curl_multi_perform(multi, &running);
        if (r->kind == REQ_WATCH && w->ops->tick)
            w->ops->tick(w->ctx);
        if (r->kind == REQ_WATCH && !r->connected) {
            /* A watch may be quiet for minutes: it is up once the server says 200. */
            long code = 0;
            curl_easy_getinfo(r->h, CURLINFO_RESPONSE_CODE, &code);
            if (code == 200) {
                r->connected = true;
                set_connected(w, true);
            }
        }
        if (mc == CURLM_OK && running)
            mc = curl_multi_poll(multi, NULL, 0, 1000, NULL);
        if (mc != CURLM_OK) {
            snprintf(r->err, sizeof(r->err), "%s", curl_multi_strerror(mc));
            break;
        }
    }
    CURLMsg *msg;
    int left;
    bool finished = false;
    while ((msg = curl_multi_info_read(multi, &left)) != NULL) {
        if (msg->msg == CURLMSG_DONE && msg->easy_handle == r->h) {
            res = msg->data.result;
            finished = true;
        }
    }
    curl_multi_remove_handle(multi, r->h);
    if (atomic_load(&w->stop)) {
        out = OUT_STOPPED;
        goto done;
    }
    curl_easy_getinfo(r->h, CURLINFO_RESPONSE_CODE, &r->status);
    if (r->abort != OUT_OK) {
        out = r->abort;
    } else if (!finished) {
        if (!r->err[0])
            snprintf(r->err, sizeof(r->err), "transfer did not finish");
    } else if (res != CURLE_OK) {
        /* the error buffer has the detail ("SSL certificate problem: ...") */
        snprintf(r->err, sizeof(r->err), "%.180s",
                 r->curl_err[0] ? r->curl_err : curl_easy_strerror(res));
    } else if (r->status == 410) {
        status_message(r->status, &r->body, r->err, sizeof(r->err));
        out = OUT_EXPIRED;
    } else if (r->status != 200) {
        status_message(r->status, &r->body, r->err, sizeof(r->err));
    } else {
        out = OUT_OK;
    }
done:
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(r->h);
    r->h = NULL;
    return out;
}

int k8s_watch_get(struct k8s_watch *w, const char *url, size_t max, struct buf *body, char *err,
                  size_t errlen)
{
    struct req r = {.w = w, .kind = REQ_GET, .max = max};
    int rc = -1;

    buf_init(&r.body);
    if (http_get(w, w->get_multi, &r, url) == OUT_OK) {
        buf_reset(body);
        buf_append(body, r.body.data ? r.body.data : "", r.body.len);
        rc = body->oom ? -1 : 0;
    }
    if (rc < 0)
        errmsg_set(err, errlen, "GET %s: %s", url, r.err[0] ? r.err : "out of memory");
    buf_free(&r.body);
    return rc;
}

/* ---- LIST and WATCH ---- */

/* One list page to the owner; cont gets its continue token. 0, or -EINVAL with err set. */
static int list_apply(struct k8s_watch *w, const char *body, size_t len, char *cont, size_t contlen,
                      char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *list = json_loadb(body, len, JSON_ALLOW_NUL, &jerr);
    json_t *items = json_object_get(list, "items");
    json_t *meta = json_object_get(list, "metadata");
    const char *rv = json_str(meta, "resourceVersion");
    const char *c = json_str(meta, "continue");
    int rc = 0;

    if (!json_is_array(items) || !rv) {
        errmsg_set(err, errlen, "LIST: not a %s: %s", w->ops->list_kind,
                   list ? "no items/resourceVersion" : jerr.text);
        rc = -EINVAL;
    } else {
        size_t i;
        json_t *item;
        snprintf(w->rv, sizeof(w->rv), "%s", rv);
        if (c)
            snprintf(cont, contlen, "%s", c);
        json_array_foreach(items, i, item)
        {
            w->ops->list_item(w->ctx, item);
        }
    }
    json_decref(list);
    return rc;
}

int k8s_watch_feed(struct k8s_watch *w, bool watch, const char *data, size_t len, char *err,
                   size_t errlen)
{
    char cont[1024] = "";
    if (!watch)
        return list_apply(w, data, len, cont, sizeof(cont), err, errlen);
    struct req r = {.w = w, .kind = REQ_WATCH, .status = 200};
    buf_init(&r.body);
    size_t used = watch_consume(&r, data, len);
    buf_free(&r.body);
    if (used == len)
        return 0;
    errmsg_set(err, errlen, "%s", r.err[0] ? r.err : "out of memory");
    return r.abort == OUT_EXPIRED ? -ESTALE : -EINVAL;
}

static enum req_outcome do_list(struct k8s_watch *w, char *err, size_t errlen)
{
    char cont[1024] = "";
    enum req_outcome out;

    if (w->ops->list_begin)
        w->ops->list_begin(w->ctx);
    do {
        struct req r = {.w = w, .kind = REQ_LIST, .max = K8S_LIST_MAX_BYTES};
        struct buf url;
        buf_init(&url);
        buf_init(&r.body);
        w->ops->url(w->ctx, w->api_url, &url);
        buf_printf(&url, "limit=%d", K8S_LIST_PAGE);
        if (cont[0]) {
            char *c = curl_easy_escape(NULL, cont, 0);
            buf_printf(&url, "&continue=%s", c ? c : "");
            curl_free(c);
        }
        out = url.oom ? OUT_ERROR : http_get(w, w->multi, &r, url.data);
        if (url.oom)
            snprintf(r.err, sizeof(r.err), "out of memory");
        cont[0] = '\0';
        if (out == OUT_OK &&
            list_apply(w, r.body.data, r.body.len, cont, sizeof(cont), r.err, sizeof(r.err)) < 0)
            out = OUT_ERROR;
        if (out != OUT_OK)
            errmsg_set(err, errlen, "LIST %s: %s", url.data ? url.data : "", r.err);
        buf_free(&url);
        buf_free(&r.body);
    } while (out == OUT_OK && cont[0]);

    if (out != OUT_OK)
        return out;
    if (w->ops->list_end)
        w->ops->list_end(w->ctx);
    pthread_mutex_lock(&w->lock);
    if (w->stats.lists++ > 0)
        w->stats.relists++;
    w->stats.connected = true;
    pthread_mutex_unlock(&w->lock);
    return OUT_OK;
}

static enum req_outcome do_watch(struct k8s_watch *w, unsigned *events, char *err, size_t errlen)
{
    struct req r = {.w = w, .kind = REQ_WATCH};
    struct buf url;
    enum req_outcome out;

    buf_init(&url);
    buf_init(&r.body);
    w->ops->url(w->ctx, w->api_url, &url);
    buf_printf(&url, "watch=1&allowWatchBookmarks=true&resourceVersion=%s&timeoutSeconds=%u", w->rv,
               w->watch_timeout_s);
    out = url.oom ? OUT_ERROR : http_get(w, w->multi, &r, url.data);
    *events = r.events;
    if (out != OUT_OK && out != OUT_STOPPED)
        errmsg_set(err, errlen, "WATCH %s: %s", url.data ? url.data : "", r.err);
    buf_free(&url);
    buf_free(&r.body);
    return out;
}

/* Sleeps ms unless k8s_watch_free() wakes us first. */
static void pause_ms(struct k8s_watch *w, unsigned ms)
{
    struct timespec ts = clock_deadline_ms(ms);
    pthread_mutex_lock(&w->lock);
    while (!atomic_load(&w->stop))
        if (pthread_cond_timedwait(&w->wake, &w->lock, &ts) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&w->lock);
}

static void *watch_thread(void *arg)
{
    struct k8s_watch *w = arg;
    unsigned backoff = w->backoff_min_ms;
    bool need_list = true;
    char err[sizeof(w->stats.last_error)];

    while (!atomic_load(&w->stop)) {
        enum req_outcome out;
        unsigned events = 0;
        bool listing = need_list;
        err[0] = '\0';
        if (listing) {
            out = do_list(w, err, sizeof(err));
            if (out == OUT_OK && w->ops->tick)
                w->ops->tick(w->ctx);
        } else {
            out = do_watch(w, &events, err, sizeof(err));
            if (out == OUT_OK || out == OUT_EXPIRED || events > 0)
                set_connected(w, true);
        }
        if (out == OUT_STOPPED)
            break;
        if (out == OUT_OK) {
            need_list = false;
            if (listing || events > 0) {
                backoff = w->backoff_min_ms;
                continue;
            }
            /* The server ended a watch without a single event (its timeout, or
             * a proxy that cuts idle streams): re-watch, but never in a spin. */
            pause_ms(w, w->backoff_min_ms);
            continue;
        }
        if (out == OUT_EXPIRED) {
            /* Expected when we fell behind: not an API error; re-list at once. */
            k8s_watch_note_error(w, err);
            need_list = true;
            backoff = w->backoff_min_ms;
            continue;
        }
        /* Re-watch from the same resourceVersion; if that is gone, the
         * server answers 410 and we re-list then. */
        if (events > 0)
            backoff = w->backoff_min_ms;
        set_error(w, err);
        pause_ms(w, backoff);
        backoff = backoff * 2 > w->backoff_max_ms ? w->backoff_max_ms : backoff * 2;
    }
    return NULL;
}

/* ---- lifecycle ---- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;
static void curl_init(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static char *default_api_url(void)
{
    const char *host = getenv("KUBERNETES_SERVICE_HOST");
    const char *port = getenv("KUBERNETES_SERVICE_PORT");
    char *url = NULL;
    if (!host || !*host)
        return NULL;
    if (!port || !*port)
        port = "443";
    /* IPv6 service addresses need brackets in a URL */
    if (asprintf(&url, strchr(host, ':') ? "https://[%s]:%s" : "https://%s:%s", host, port) < 0)
        return NULL;
    return url;
}

static void watch_destroy(struct k8s_watch *w)
{
    if (w->multi)
        curl_multi_cleanup(w->multi);
    if (w->get_multi)
        curl_multi_cleanup(w->get_multi);
    free(w->api_url);
    free(w->token_path);
    free(w->ca_path);
    free(w);
}

struct k8s_watch *k8s_watch_new(const struct k8s_conn_options *opts,
                                const struct k8s_watch_ops *ops, void *ctx, int *err)
{
    struct k8s_conn_options o = opts ? *opts : (struct k8s_conn_options){0};
    struct k8s_watch *w = calloc(1, sizeof(*w));
    int rc = -ENOMEM;

    if (!w)
        goto fail;
    w->ops = ops;
    w->ctx = ctx;
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK) {
        rc = -EIO;
        goto fail;
    }
    if (o.api_url && *o.api_url) {
        size_t n = strlen(o.api_url);
        if (strncmp(o.api_url, "http://", 7) != 0 && strncmp(o.api_url, "https://", 8) != 0) {
            rc = -EINVAL;
            goto fail;
        }
        while (n > 0 && o.api_url[n - 1] == '/')
            n--;
        if (!(w->api_url = strndup(o.api_url, n)))
            goto fail;
    } else {
        w->api_url = default_api_url();
        if (!w->api_url)
            snprintf(w->stats.last_error, sizeof(w->stats.last_error),
                     "no API server: KUBERNETES_SERVICE_HOST is not set and no API URL given");
    }
    w->token_path = strdup(o.token_path ? o.token_path : K8S_TOKEN_PATH);
    w->ca_path = strdup(o.ca_path ? o.ca_path : K8S_CA_PATH);
    w->backoff_min_ms = o.backoff_min_ms ? o.backoff_min_ms : 250;
    w->backoff_max_ms = o.backoff_max_ms ? o.backoff_max_ms : 30000;
    if (w->backoff_max_ms < w->backoff_min_ms)
        w->backoff_max_ms = w->backoff_min_ms;
    w->watch_timeout_s = o.watch_timeout_s ? o.watch_timeout_s : 300;
    w->connect_timeout_ms = o.connect_timeout_ms ? o.connect_timeout_ms : 5000;
    w->multi = curl_multi_init();
    w->get_multi = curl_multi_init();
    if (!w->token_path || !w->ca_path || !w->multi || !w->get_multi)
        goto fail;
    pthread_mutex_init(&w->lock, NULL);
    clock_cond_init(&w->wake);
    return w;

fail:
    if (w)
        watch_destroy(w);
    if (err)
        *err = rc;
    return NULL;
}

int k8s_watch_start(struct k8s_watch *w, const char *name)
{
    int rc;
    if (!w->api_url || w->started)
        return 0;
    snprintf(w->name, sizeof(w->name), "%s", name);
    snprintf(w->log_prefix, sizeof(w->log_prefix), "%s", program_invocation_short_name);
    rc = pthread_create(&w->thread, NULL, watch_thread, w);
    if (rc)
        return -rc;
    pthread_setname_np(w->thread, name);
    w->started = true;
    return 0;
}

void k8s_watch_free(struct k8s_watch *w)
{
    if (!w)
        return;
    if (w->started) {
        atomic_store(&w->stop, true);
        curl_multi_wakeup(w->multi);
        curl_multi_wakeup(w->get_multi);
        pthread_mutex_lock(&w->lock);
        pthread_cond_broadcast(&w->wake);
        pthread_mutex_unlock(&w->lock);
        pthread_join(w->thread, NULL);
    }
    pthread_cond_destroy(&w->wake);
    pthread_mutex_destroy(&w->lock);
    watch_destroy(w);
}

/* A fake Kubernetes API server for pods; see k8s_api_server.h. */
#include "k8s_api_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <jansson.h>

#include "buf.h"
#include "testutil.h"

/* One client connection, plain or TLS. */
struct kas_conn {
    struct kas *s;
    int fd;
    SSL *ssl;
    char path[1024];
};

/* True when the request path (with its query) is of the collection path. */
static bool of_collection(const char *req, const char *path)
{
    size_t n = strlen(path);
    return strncmp(req, path, n) == 0 && (req[n] == '?' || req[n] == '\0');
}

static void send_all(struct kas_conn *c, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n =
            c->ssl ? SSL_write(c->ssl, data, (int)len) : send(c->fd, data, len, MSG_NOSIGNAL);
        if (n <= 0)
            return; /* the client went away; the test decides whether that matters */
        data += n;
        len -= (size_t)n;
    }
}

static ssize_t conn_recv(struct kas_conn *c, char *buf, size_t len)
{
    return c->ssl ? SSL_read(c->ssl, buf, (int)len) : recv(c->fd, buf, len, 0);
}

void kas_respond(struct kas_conn *c, int status, const char *reason, const char *body)
{
    char head[256];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                     status, reason, strlen(body));
    send_all(c, head, (size_t)n);
    send_all(c, body, strlen(body));
}

void kas_stream_begin(struct kas_conn *c)
{
    static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                               "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    send_all(c, head, sizeof(head) - 1);
}

static void send_chunk(struct kas_conn *c, const char *data, size_t len)
{
    char size[32];
    int n = snprintf(size, sizeof(size), "%zx\r\n", len);
    send_all(c, size, (size_t)n);
    send_all(c, data, len);
    send_all(c, "\r\n", 2);
}

/* One watch event: a chunk holding one JSON object and its newline. */
void kas_stream_event(struct kas_conn *c, const char *type, const char *object)
{
    struct buf b;
    buf_init(&b);
    buf_printf(&b, "{\"type\":\"%s\",\"object\":%s}\n", type, object);
    send_chunk(c, b.data, b.len);
    buf_free(&b);
}

void kas_stream_end(struct kas_conn *c)
{
    send_all(c, "0\r\n\r\n", 5);
}

static bool stopping(struct kas *s)
{
    pthread_mutex_lock(&s->lock);
    bool stop = s->stopping;
    pthread_mutex_unlock(&s->lock);
    return stop;
}

/* The client sends nothing else on a watch, so anything readable means it is closing. */
static bool client_gone(struct kas_conn *c, int timeout_ms)
{
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    char b[256];
    return poll(&p, 1, timeout_ms) > 0 && conn_recv(c, b, sizeof(b)) <= 0;
}

void kas_hold(struct kas *s, struct kas_conn *c)
{
    while (!stopping(s) && !client_gone(c, 20))
        ;
}

/* ---- the built-in pod server ---- */

void kas_set_list(struct kas *s, const char *body)
{
    char *copy = strdup(body);
    pthread_mutex_lock(&s->lock);
    free(s->list_body);
    s->list_body = copy;
    pthread_mutex_unlock(&s->lock);
}

int kas_set_list_for(struct kas *s, const char *path, const char *body)
{
    char *b = strdup(body);
    int rc = 0;
    pthread_mutex_lock(&s->lock);
    int i = 0;
    while (i < s->ncoll && strcmp(s->coll_paths[i], path) != 0)
        i++;
    if (!b || (i == s->ncoll && i == KAS_MAX_COLLECTIONS)) {
        rc = !b ? -ENOMEM : -ENOSPC;
        free(b);
    } else {
        if (i == s->ncoll) {
            s->coll_paths[s->ncoll++] = strdup(path);
            s->coll_lists[i] = NULL;
        }
        free(s->coll_lists[i]);
        s->coll_lists[i] = b;
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

int kas_push(struct kas *s, const char *type, unsigned long rv, const char *object)
{
    return kas_push_to(s, NULL, type, rv, object);
}

int kas_push_to(struct kas *s, const char *path, const char *type, unsigned long rv,
                const char *object)
{
    char *line = NULL, *p = path ? strdup(path) : NULL;
    if ((path && !p) || asprintf(&line, "{\"type\":\"%s\",\"object\":%s}\n", type, object) < 0) {
        free(p);
        return -ENOMEM;
    }
    pthread_mutex_lock(&s->lock);
    if (s->nevents == KAS_MAX_EVENTS) {
        pthread_mutex_unlock(&s->lock);
        free(line);
        free(p);
        return -ENOSPC;
    }
    s->events[s->nevents++] = (struct kas_event){.rv = rv, .line = line, .path = p};
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    return 0;
}

/* Streams the events newer than the watch's resourceVersion, as they come. */
static void serve_watch(struct kas *s, struct kas_conn *c)
{
    const char *p = strstr(c->path, "resourceVersion=");
    unsigned long from = p ? strtoul(p + 16, NULL, 10) : 0;
    int next = 0;

    kas_stream_begin(c);
    pthread_mutex_lock(&s->lock);
    int opened_at = s->nevents; /* events pushed from here on are live for this watch */
    s->open_watches++;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    for (;;) {
        char *lines[KAS_MAX_EVENTS];
        int n = 0;
        pthread_mutex_lock(&s->lock);
        bool stop = s->stopping;
        for (; next < s->nevents; next++)
            if ((!s->events[next].path || of_collection(c->path, s->events[next].path)) &&
                (s->events[next].rv > from || (s->events[next].rv == 0 && next >= opened_at)))
                lines[n++] = strdup(s->events[next].line);
        pthread_mutex_unlock(&s->lock);
        for (int i = 0; i < n; i++) {
            if (lines[i])
                send_chunk(c, lines[i], strlen(lines[i]));
            free(lines[i]);
        }
        if (stop || client_gone(c, 20))
            break;
    }
    pthread_mutex_lock(&s->lock);
    s->open_watches--;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

/*
 * The node a pod LIST asks for (fieldSelector=spec.nodeName=<node>, with the
 * '=' percent-encoded or not) into node; false when it asks for no node.
 */
static bool node_selector(const char *path, char *node, size_t len)
{
    const char *q = strchr(path, '?');
    for (const char *p = q; p && *p; p = strchr(p + 1, '&')) {
        const char *v = p + 1;
        if (strncmp(v, "fieldSelector=spec.nodeName", 27) != 0)
            continue;
        v += 27;
        if (strncmp(v, "%3D", 3) == 0 || strncmp(v, "%3d", 3) == 0)
            v += 3;
        else if (*v == '=')
            v++;
        else
            continue;
        size_t n = strcspn(v, "&");
        if (n == 0 || n >= len)
            return false;
        memcpy(node, v, n);
        node[n] = '\0';
        return true;
    }
    return false;
}

/* The list with only the items whose spec.nodeName is node (malloc'd), or NULL. */
static char *list_of_node(const char *list, const char *node)
{
    json_t *doc = json_loads(list, 0, NULL);
    json_t *items = json_object_get(doc, "items"), *keep = json_array(), *it;
    size_t i;
    json_array_foreach(items, i, it)
    {
        const char *nn =
            json_string_value(json_object_get(json_object_get(it, "spec"), "nodeName"));
        if (nn && strcmp(nn, node) == 0)
            json_array_append(keep, it);
    }
    char *out = NULL;
    if (doc && json_object_set_new(doc, "items", keep) == 0)
        out = json_dumps(doc, JSON_COMPACT);
    else
        json_decref(keep);
    json_decref(doc);
    return out;
}

void kas_serve_pods(struct kas *s, struct kas_conn *c, enum kas_req_kind kind, int n)
{
    if (kind == KAS_WATCH) {
        serve_watch(s, c);
        return;
    }
    pthread_mutex_lock(&s->lock);
    const char *list = s->list_body;
    for (int i = 0; i < s->ncoll; i++)
        if (of_collection(c->path, s->coll_paths[i]))
            list = s->coll_lists[i];
    char node[256];
    /* The pod list, for one node as the API server answers fieldSelector=spec.nodeName. */
    bool pods = list == s->list_body && node_selector(c->path, node, sizeof(node));
    char *body = list ? (pods ? list_of_node(list, node) : strdup(list)) : NULL;
    pthread_mutex_unlock(&s->lock);
    if (body)
        kas_respond(c, 200, "OK", body);
    else
        kas_respond(c, 500, "Internal Server Error", "{\"kind\":\"Status\",\"code\":500}");
    free(body);
}

int kas_add_object(struct kas *s, const char *path, const char *body)
{
    char *p = strdup(path), *b = strdup(body);
    pthread_mutex_lock(&s->lock);
    if (!p || !b || s->nobjects == KAS_MAX_OBJECTS) {
        pthread_mutex_unlock(&s->lock);
        free(p);
        free(b);
        return !p || !b ? -ENOMEM : -ENOSPC;
    }
    s->object_paths[s->nobjects] = p;
    s->objects[s->nobjects++] = b;
    pthread_mutex_unlock(&s->lock);
    return 0;
}

/* A GET of another path: an object added for it, else 404 as the API server says it. */
static void serve_object(struct kas *s, struct kas_conn *c)
{
    char *body = NULL;
    pthread_mutex_lock(&s->lock);
    s->gets++;
    for (int i = 0; i < s->nobjects && !body; i++)
        if (strcmp(s->object_paths[i], c->path) == 0)
            body = strdup(s->objects[i]);
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    if (body)
        kas_respond(c, 200, "OK", body);
    else
        kas_respond(c, 404, "Not Found",
                    "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},"
                    "\"status\":\"Failure\",\"message\":\"not found\",\"reason\":"
                    "\"NotFound\",\"code\":404}");
    free(body);
}

/* ---- connections ---- */

static void *conn_main(void *arg)
{
    struct kas_conn *c = arg;
    struct kas *s = c->s;
    char req[8192];
    size_t len = 0;

    if (s->tls) {
        c->ssl = SSL_new(s->tls);
        SSL_set_fd(c->ssl, c->fd);
        if (SSL_accept(c->ssl) != 1) {
            pthread_mutex_lock(&s->lock);
            s->tls_failures++;
            pthread_cond_broadcast(&s->cond);
            pthread_mutex_unlock(&s->lock);
            goto out;
        }
    }
    while (len < sizeof(req) - 1) {
        ssize_t n = conn_recv(c, req + len, sizeof(req) - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        req[len] = '\0';
        if (strstr(req, "\r\n\r\n"))
            break;
    }
    req[len] = '\0';
    sscanf(req, "GET %1023s", c->path);
    pthread_mutex_lock(&s->lock);
    bool collection = strncmp(c->path, "/api/v1/pods?", 13) == 0;
    for (int i = 0; i < s->ncoll && !collection; i++)
        collection = of_collection(c->path, s->coll_paths[i]) && strchr(c->path, '?');
    pthread_mutex_unlock(&s->lock);
    enum kas_req_kind kind = !collection                  ? KAS_OTHER
                             : strstr(c->path, "watch=1") ? KAS_WATCH
                                                          : KAS_LIST;
    int n = 0;
    pthread_mutex_lock(&s->lock);
    const char *auth = strcasestr(req, "\r\nAuthorization: ");
    if (auth)
        sscanf(auth + 2, "%*s %511[^\r]", s->auth);
    if (kind == KAS_LIST) {
        n = ++s->lists;
        if (n <= 8)
            snprintf(s->list_paths[n - 1], sizeof(s->list_paths[0]), "%s", c->path);
    } else if (kind == KAS_WATCH) {
        n = ++s->watches;
        if (n <= 8)
            snprintf(s->watch_paths[n - 1], sizeof(s->watch_paths[0]), "%s", c->path);
    }
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);

    if (kind == KAS_OTHER)
        serve_object(s, c);
    else
        s->handler(s, c, kind, n);
out:
    if (c->ssl) {
        SSL_shutdown(c->ssl);
        SSL_free(c->ssl);
    }
    close(c->fd);
    free(c);
    return NULL;
}

static void *accept_main(void *arg)
{
    struct kas *s = arg;
    for (;;) {
        int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return NULL; /* shutdown() by kas_stop */
        }
        struct kas_conn *c = calloc(1, sizeof(*c));
        pthread_mutex_lock(&s->lock);
        if (!c || s->nconns == KAS_MAX_CONNS || s->stopping) {
            pthread_mutex_unlock(&s->lock);
            close(fd);
            free(c);
            continue;
        }
        c->s = s;
        c->fd = fd;
        if (pthread_create(&s->conns[s->nconns], NULL, conn_main, c) == 0) {
            s->nconns++;
        } else {
            close(fd);
            free(c);
        }
        pthread_mutex_unlock(&s->lock);
    }
}

int kas_start(struct kas *s, kas_handler h, SSL_CTX *tls)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    int rc;

    memset(s, 0, sizeof(*s));
    signal(SIGPIPE, SIG_IGN);
    s->handler = h;
    s->tls = tls;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s->lfd < 0)
        return -errno;
    if (bind(s->lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(s->lfd, 16) != 0 ||
        getsockname(s->lfd, (struct sockaddr *)&sa, &sl) != 0) {
        rc = -errno;
        close(s->lfd);
        return rc;
    }
    s->port = ntohs(sa.sin_port);
    rc = pthread_create(&s->accept_thr, NULL, accept_main, s);
    if (rc) {
        close(s->lfd);
        return -rc;
    }
    return 0;
}

void kas_stop(struct kas *s)
{
    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    shutdown(s->lfd, SHUT_RDWR);
    pthread_join(s->accept_thr, NULL);
    close(s->lfd);
    for (int i = 0; i < s->nconns; i++)
        pthread_join(s->conns[i], NULL);
    SSL_CTX_free(s->tls);
    s->tls = NULL;
    free(s->list_body);
    s->list_body = NULL;
    for (int i = 0; i < s->nevents; i++) {
        free(s->events[i].line);
        free(s->events[i].path);
    }
    s->nevents = 0;
    for (int i = 0; i < s->ncoll; i++) {
        free(s->coll_paths[i]);
        free(s->coll_lists[i]);
    }
    s->ncoll = 0;
    for (int i = 0; i < s->nobjects; i++) {
        free(s->object_paths[i]);
        free(s->objects[i]);
    }
    s->nobjects = 0;
}

bool kas_wait(struct kas *s, int lists, int watches, int timeout_ms)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&s->lock);
    while (s->lists < lists || s->watches < watches) {
        if (pthread_cond_timedwait(&s->cond, &s->lock, &dl) == ETIMEDOUT)
            break;
    }
    bool ok = s->lists >= lists && s->watches >= watches;
    pthread_mutex_unlock(&s->lock);
    return ok;
}

/* ---- API objects ---- */

char *kas_read_fixture(const char *name)
{
    char rel[512];
    snprintf(rel, sizeof(rel), "tests/fixtures/k8s/%s", name);
    return tu_read_file(tu_repo_path(rel));
}

char *kas_pod_json(const char *uid, const char *name, const char *ns, const char *node,
                   const char *rv, const char *container_id)
{
    char *s = NULL;
    if (asprintf(&s,
                 "{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"metadata\":{\"name\":\"%s\","
                 "\"namespace\":\"%s\",\"uid\":\"%s\",\"resourceVersion\":\"%s\","
                 "\"creationTimestamp\":\"2024-05-01T10:00:00Z\",\"labels\":{\"app\":\"%s\"}},"
                 "\"spec\":{\"containers\":[{\"name\":\"main\",\"image\":\"busybox:1.36\"}],"
                 "\"nodeName\":\"%s\"},"
                 "\"status\":{\"phase\":\"Running\",\"podIP\":\"10.244.1.30\","
                 "\"containerStatuses\":[{\"name\":\"main\",\"ready\":true,\"restartCount\":0,"
                 "\"image\":\"docker.io/library/busybox:1.36\","
                 "\"containerID\":\"containerd://%s\",\"started\":true,"
                 "\"state\":{\"running\":{\"startedAt\":\"2024-05-01T10:00:02Z\"}}}]}}",
                 name, ns, uid, rv, name, node, container_id ? container_id : "") < 0)
        return NULL;
    return s;
}

char *kas_pod_object(const struct kas_pod *p)
{
    struct buf b;
    buf_init(&b);
    buf_printf(&b,
               "{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"metadata\":{\"name\":\"%s\","
               "\"namespace\":\"%s\",\"uid\":\"%s\",\"resourceVersion\":\"%s\","
               "\"creationTimestamp\":\"2024-05-01T10:00:00Z\",\"labels\":{%s}",
               p->name, p->ns, p->uid, p->rv ? p->rv : "1", p->labels ? p->labels : "");
    if (p->owner_kind)
        buf_printf(&b,
                   ",\"ownerReferences\":[{\"apiVersion\":\"%s\",\"kind\":\"%s\","
                   "\"name\":\"%s\",\"uid\":\"%s\",\"controller\":true,"
                   "\"blockOwnerDeletion\":true}]",
                   strcmp(p->owner_kind, "Job") == 0 ? "batch/v1" : "apps/v1", p->owner_kind,
                   p->owner_name, p->owner_uid ? p->owner_uid : "");
    buf_printf(&b,
               "},\"spec\":{\"containers\":[{\"name\":\"main\",\"image\":\"busybox:1.36\"}],"
               "\"nodeName\":\"%s\"%s},\"status\":{\"phase\":\"%s\"",
               p->node, p->host_network ? ",\"hostNetwork\":true" : "",
               p->phase ? p->phase : "Running");
    if (p->ips[0]) {
        buf_printf(&b, ",\"podIP\":\"%s\",\"podIPs\":[", p->ips[0]);
        for (int i = 0; i < 2 && p->ips[i]; i++)
            buf_printf(&b, "%s{\"ip\":\"%s\"}", i ? "," : "", p->ips[i]);
        buf_putc(&b, ']');
    }
    buf_printf(&b,
               ",\"containerStatuses\":[{\"name\":\"main\",\"ready\":true,\"restartCount\":0,"
               "\"image\":\"docker.io/library/busybox:1.36\","
               "\"containerID\":\"containerd://%s\",\"started\":true,"
               "\"state\":{\"running\":{\"startedAt\":\"2024-05-01T10:00:02Z\"}}}]}}",
               p->container_id ? p->container_id : "");
    if (b.oom) {
        buf_free(&b);
        return NULL;
    }
    return b.data;
}

char *kas_job_json(const char *ns, const char *name, const char *uid, const char *cronjob)
{
    struct buf b;
    buf_init(&b);
    buf_printf(&b,
               "{\"kind\":\"Job\",\"apiVersion\":\"batch/v1\",\"metadata\":{\"name\":\"%s\","
               "\"namespace\":\"%s\",\"uid\":\"%s\",\"resourceVersion\":\"77\"",
               name, ns, uid);
    if (cronjob)
        buf_printf(&b,
                   ",\"labels\":{\"batch.kubernetes.io/job-name\":\"%s\"},"
                   "\"ownerReferences\":[{\"apiVersion\":\"batch/v1\",\"kind\":\"CronJob\","
                   "\"name\":\"%s\",\"uid\":\"0b1c2d3e-4f50-4a61-8b72-c3d4e5f60718\","
                   "\"controller\":true,\"blockOwnerDeletion\":true}]",
                   name, cronjob);
    buf_puts(&b, "},\"spec\":{\"completions\":1,\"parallelism\":1,\"backoffLimit\":6},"
                 "\"status\":{\"active\":1,\"startTime\":\"2024-05-01T10:00:00Z\"}}");
    if (b.oom) {
        buf_free(&b);
        return NULL;
    }
    return b.data;
}

char *kas_pod_list(const char *rv, const char *const *items, int n)
{
    struct buf b;
    buf_init(&b);
    buf_printf(&b,
               "{\"kind\":\"PodList\",\"apiVersion\":\"v1\",\"metadata\":"
               "{\"resourceVersion\":\"%s\"},\"items\":[",
               rv);
    for (int i = 0; i < n; i++)
        buf_printf(&b, "%s%s", i ? "," : "", items[i]);
    buf_puts(&b, "]}");
    if (b.oom) {
        buf_free(&b);
        return NULL;
    }
    return b.data;
}

char *kas_status_410(void)
{
    return strdup("{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},"
                  "\"status\":\"Failure\",\"message\":\"too old resource version: 123456 "
                  "(130000)\",\"reason\":\"Expired\",\"code\":410}");
}

SSL_CTX *kas_tls_context(const char *ca_file)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    X509V3_CTX v3;
    SSL_CTX *ctx = NULL;
    FILE *f = NULL;
    static const struct {
        int nid;
        const char *value;
    } exts[] = {{NID_basic_constraints, "critical,CA:TRUE"},
                {NID_subject_alt_name, "IP:127.0.0.1,DNS:kubernetes.default.svc"}};

    if (!key || !x)
        goto out;
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"kube-apiserver",
                               -1, -1, 0);
    X509_set_issuer_name(x, name);
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    for (size_t i = 0; i < 2; i++) {
        X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, exts[i].nid, exts[i].value);
        if (!ext)
            goto out;
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
    }
    if (X509_sign(x, key, EVP_sha256()) <= 0)
        goto out;

    f = fopen(ca_file, "w");
    if (!f || !PEM_write_X509(f, x))
        goto out;
    if (fclose(f) != 0) {
        f = NULL;
        goto out;
    }
    f = NULL;

    ctx = SSL_CTX_new(TLS_server_method());
    if (ctx && (SSL_CTX_use_certificate(ctx, x) != 1 || SSL_CTX_use_PrivateKey(ctx, key) != 1)) {
        SSL_CTX_free(ctx);
        ctx = NULL;
    }
out:
    if (f)
        fclose(f);
    X509_free(x);
    EVP_PKEY_free(key);
    return ctx;
}

/* ---- Services and EndpointSlices ---- */

char *kas_service_json(const char *ns, const char *name, const char *rv, const char *ip, int port)
{
    char *s = NULL;
    if (asprintf(&s,
                 "{\"kind\":\"Service\",\"apiVersion\":\"v1\",\"metadata\":{\"name\":"
                 "\"%s\",\"namespace\":\"%s\",\"uid\":\"svc-%s\",\"resourceVersion\":"
                 "\"%s\",\"creationTimestamp\":\"2026-11-30T10:00:00Z\",\"labels\":"
                 "{\"app\":\"%s\"}},\"spec\":{\"type\":\"ClusterIP\",\"clusterIP\":"
                 "\"%s\",\"clusterIPs\":[\"%s\"],\"ipFamilies\":[\"IPv4\"],"
                 "\"ipFamilyPolicy\":\"SingleStack\",\"ports\":[{\"name\":\"http\","
                 "\"protocol\":\"TCP\",\"port\":%d,\"targetPort\":8080}],"
                 "\"selector\":{\"app\":\"%s\"},\"sessionAffinity\":\"None\","
                 "\"internalTrafficPolicy\":\"Cluster\"},\"status\":{\"loadBalancer\":{}}}",
                 name, ns, name, rv, name, ip, ip, port, name) < 0)
        return NULL;
    return s;
}

char *kas_slice_json(const char *ns, const char *service, const char *rv, const char *ip,
                     const struct kas_pod *pod)
{
    char *s = NULL;
    if (asprintf(&s,
                 "{\"kind\":\"EndpointSlice\",\"apiVersion\":\"discovery.k8s.io/v1\","
                 "\"metadata\":{\"name\":\"%s-x7k2p\",\"generateName\":\"%s-\","
                 "\"namespace\":\"%s\",\"uid\":\"eps-%s\",\"resourceVersion\":\"%s\","
                 "\"labels\":{\"kubernetes.io/service-name\":\"%s\","
                 "\"endpointslice.kubernetes.io/managed-by\":"
                 "\"endpointslice-controller.k8s.io\"},\"ownerReferences\":[{\"apiVersion\":"
                 "\"v1\",\"kind\":\"Service\",\"name\":\"%s\",\"uid\":\"svc-%s\","
                 "\"controller\":true,\"blockOwnerDeletion\":true}]},\"addressType\":"
                 "\"IPv4\",\"endpoints\":[{\"addresses\":[\"%s\"],\"conditions\":"
                 "{\"ready\":true,\"serving\":true,\"terminating\":false},\"nodeName\":"
                 "\"%s\",\"targetRef\":{\"kind\":\"Pod\",\"namespace\":\"%s\","
                 "\"name\":\"%s\",\"uid\":\"%s\"}}],\"ports\":[{\"name\":\"http\","
                 "\"protocol\":\"TCP\",\"port\":8080}]}",
                 service, service, ns, service, rv, service, service, service, ip, pod->node,
                 pod->ns, pod->name, pod->uid) < 0)
        return NULL;
    return s;
}

char *kas_list_json(const char *kind, const char *api_version, const char *rv, const char *items)
{
    char *s = NULL;
    if (asprintf(&s,
                 "{\"kind\":\"%s\",\"apiVersion\":\"%s\",\"metadata\":"
                 "{\"resourceVersion\":\"%s\"},\"items\":[%s]}",
                 kind, api_version, rv, items) < 0)
        return NULL;
    return s;
}

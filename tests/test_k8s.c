/*
 * Tests for pkg/k8s against a small HTTP server on loopback that answers as
 * the Kubernetes API server does: a PodList (tests/fixtures/k8s/podlist.json
 * is one in the API's format) and watch streams (chunked, one watch event per
 * line). Covers LIST then WATCH, the bearer token, pods added and deleted in
 * the watch (tombstones), expired watches (an ERROR event with a 410 Status,
 * and an HTTP 410) that must re-list, bookmarks, API errors, an unreachable
 * API server, and enrichment of events from real processes in real kubepods
 * cgroups.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "buf.h"
#include "cgroup.h"
#include "event.h"
#include "fixtures/k8s/kubepods.h"
#include "intern.h"
#include "k8s.h"

#define NODE  "node-1"
#define TOKEN "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.test-token"

/* The fixture's pods */
#define WEB_UID    "5f0c3f6e-2b6d-4d5a-9d0e-8a1b2c3d4e5f"
#define REDIS_UID  "c2a4e6f8-1b3d-4f5a-8c7e-9d0b1a2c3e4f"
#define PROXY_UID  "8e1d2c3b-4a59-4687-b9a0-c1d2e3f4a5b6"
#define PROXY_HASH "3b2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d"

/* ---- a tiny API server ---- */

enum req_kind { REQ_LIST, REQ_WATCH, REQ_OTHER };

struct srv;
/* One client connection, plain or TLS. */
struct conn {
    struct srv *s;
    int fd;
    SSL *ssl;
};
/* Answers the n-th (from 1) request of its kind; the server closes the connection after. */
typedef void (*srv_handler)(struct srv *s, struct conn *c, enum req_kind kind, int n);

#define SRV_MAX_CONNS 64

struct srv {
    int lfd, port;
    SSL_CTX *tls; /* NULL: plain HTTP */
    pthread_t accept_thr;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stopping;
    int lists, watches, tls_failures;
    char list_paths[8][1024], watch_paths[8][1024];
    char auth[512];
    srv_handler handler;
    pthread_t conns[SRV_MAX_CONNS];
    int nconns;
};

static void send_all(struct conn *c, const char *data, size_t len)
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

static ssize_t conn_recv(struct conn *c, char *buf, size_t len)
{
    return c->ssl ? SSL_read(c->ssl, buf, (int)len) : recv(c->fd, buf, len, 0);
}

static void respond(struct conn *c, int status, const char *reason, const char *body)
{
    char head[256];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                     status, reason, strlen(body));
    send_all(c, head, (size_t)n);
    send_all(c, body, strlen(body));
}

static void stream_begin(struct conn *c)
{
    static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                               "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    send_all(c, head, sizeof(head) - 1);
}

/* One watch event: a chunk holding one JSON object and its newline. */
static void stream_event(struct conn *c, const char *type, const char *object)
{
    struct buf b;
    buf_init(&b);
    buf_printf(&b, "{\"type\":\"%s\",\"object\":%s}\n", type, object);
    char size[32];
    int n = snprintf(size, sizeof(size), "%zx\r\n", b.len);
    send_all(c, size, (size_t)n);
    send_all(c, b.data, b.len);
    send_all(c, "\r\n", 2);
    buf_free(&b);
}

static void stream_end(struct conn *c)
{
    send_all(c, "0\r\n\r\n", 5);
}

/* Keeps a watch open until the test ends or the client hangs up (it sends
 * nothing else on a watch, so anything readable means it is closing). */
static void hold(struct srv *s, struct conn *c)
{
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    for (;;) {
        pthread_mutex_lock(&s->lock);
        bool stop = s->stopping;
        pthread_mutex_unlock(&s->lock);
        if (stop)
            return;
        char b[256];
        if (poll(&p, 1, 20) > 0 && conn_recv(c, b, sizeof(b)) <= 0)
            return;
    }
}

static void *conn_main(void *arg)
{
    struct conn *c = arg;
    struct srv *s = c->s;
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
    char path[1024] = "";
    sscanf(req, "GET %1023s", path);
    enum req_kind kind = strncmp(path, "/api/v1/pods?", 13) != 0 ? REQ_OTHER
                         : strstr(path, "watch=1")               ? REQ_WATCH
                                                                 : REQ_LIST;
    int n = 0;
    pthread_mutex_lock(&s->lock);
    const char *auth = strcasestr(req, "\r\nAuthorization: ");
    if (auth)
        sscanf(auth + 2, "%*s %511[^\r]", s->auth);
    if (kind == REQ_LIST) {
        n = ++s->lists;
        if (n <= 8)
            snprintf(s->list_paths[n - 1], sizeof(s->list_paths[0]), "%s", path);
    } else if (kind == REQ_WATCH) {
        n = ++s->watches;
        if (n <= 8)
            snprintf(s->watch_paths[n - 1], sizeof(s->watch_paths[0]), "%s", path);
    }
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);

    if (kind == REQ_OTHER)
        respond(c, 404, "Not Found", "{}");
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
    struct srv *s = arg;
    for (;;) {
        int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            return NULL; /* shutdown() by srv_stop */
        struct conn *c = calloc(1, sizeof(*c));
        c->s = s;
        c->fd = fd;
        pthread_mutex_lock(&s->lock);
        if (s->nconns == SRV_MAX_CONNS || s->stopping) {
            pthread_mutex_unlock(&s->lock);
            close(fd);
            free(c);
            continue;
        }
        pthread_create(&s->conns[s->nconns++], NULL, conn_main, c);
        pthread_mutex_unlock(&s->lock);
    }
}

static void srv_start_tls(struct srv *s, srv_handler h, SSL_CTX *tls)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);

    memset(s, 0, sizeof(*s));
    signal(SIGPIPE, SIG_IGN);
    s->handler = h;
    s->tls = tls;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(s->lfd, 0);
    cr_assert_eq(bind(s->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    cr_assert_eq(listen(s->lfd, 16), 0);
    cr_assert_eq(getsockname(s->lfd, (struct sockaddr *)&sa, &sl), 0);
    s->port = ntohs(sa.sin_port);
    cr_assert_eq(pthread_create(&s->accept_thr, NULL, accept_main, s), 0);
}

static void srv_start(struct srv *s, srv_handler h)
{
    srv_start_tls(s, h, NULL);
}

static void srv_stop(struct srv *s)
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
}

/*
 * A TLS context for 127.0.0.1 with a fresh self-signed certificate, written
 * to ca_file as the CA the client must trust (as the service account's
 * ca.crt is for the real API server).
 */
static SSL_CTX *tls_context(const char *ca_file)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    X509V3_CTX v3;
    cr_assert(key && x);
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
    static const struct {
        int nid;
        const char *value;
    } exts[] = {{NID_basic_constraints, "critical,CA:TRUE"},
                {NID_subject_alt_name, "IP:127.0.0.1,DNS:kubernetes.default.svc"}};
    for (size_t i = 0; i < 2; i++) {
        X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, exts[i].nid, exts[i].value);
        cr_assert_not_null(ext);
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
    }
    cr_assert_gt(X509_sign(x, key, EVP_sha256()), 0);

    FILE *f = fopen(ca_file, "w");
    cr_assert_not_null(f);
    cr_assert(PEM_write_X509(f, x));
    fclose(f);

    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    cr_assert_not_null(ctx);
    cr_assert_eq(SSL_CTX_use_certificate(ctx, x), 1);
    cr_assert_eq(SSL_CTX_use_PrivateKey(ctx, key), 1);
    X509_free(x);
    EVP_PKEY_free(key);
    return ctx;
}

/* Waits until the server has seen at least lists LISTs and watches WATCHes. */
static void srv_wait(struct srv *s, int lists, int watches)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 10;
    pthread_mutex_lock(&s->lock);
    while (s->lists < lists || s->watches < watches) {
        if (pthread_cond_timedwait(&s->cond, &s->lock, &dl) == ETIMEDOUT)
            break;
    }
    int l = s->lists, w = s->watches;
    pthread_mutex_unlock(&s->lock);
    cr_assert(l >= lists && w >= watches, "server saw %d lists, %d watches; wanted %d, %d", l, w,
              lists, watches);
}

/* ---- API objects ---- */

static char *read_fixture(const char *name)
{
    char path[512];
    const char *file = __FILE__;
    const char *slash = strrchr(file, '/');
    snprintf(path, sizeof(path), "%.*s/fixtures/k8s/%s", slash ? (int)(slash - file) : 1,
             slash ? file : ".", name);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "open %s: %s", path, strerror(errno));
    char *data = NULL;
    size_t cap = 0;
    cr_assert_gt(getdelim(&data, &cap, '\0', f), 0);
    fclose(f);
    return data;
}

/* A Pod as the API serves it in watch events (kind/apiVersion set). */
static char *pod_json(const char *uid, const char *name, const char *ns, const char *rv,
                      const char *container_id)
{
    char *s = NULL;
    cr_assert_gt(
        asprintf(&s,
                 "{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"metadata\":{\"name\":\"%s\","
                 "\"namespace\":\"%s\",\"uid\":\"%s\",\"resourceVersion\":\"%s\","
                 "\"creationTimestamp\":\"2024-05-01T10:00:00Z\",\"labels\":{\"app\":\"%s\"}},"
                 "\"spec\":{\"containers\":[{\"name\":\"main\",\"image\":\"busybox:1.36\"}],"
                 "\"nodeName\":\"" NODE "\"},"
                 "\"status\":{\"phase\":\"Running\",\"podIP\":\"10.244.1.30\","
                 "\"containerStatuses\":[{\"name\":\"main\",\"ready\":true,\"restartCount\":0,"
                 "\"image\":\"docker.io/library/busybox:1.36\","
                 "\"containerID\":\"containerd://%s\",\"started\":true,"
                 "\"state\":{\"running\":{\"startedAt\":\"2024-05-01T10:00:02Z\"}}}]}}",
                 name, ns, uid, rv, name, container_id ? container_id : ""),
        0);
    return s;
}

/* A PodList of the given pods (items as a list serves them: no kind/apiVersion). */
static char *pod_list(const char *rv, const char *const *items, int n)
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
    cr_assert_not(b.oom);
    return b.data;
}

static char *status_410(void)
{
    return strdup("{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},"
                  "\"status\":\"Failure\",\"message\":\"too old resource version: 123456 "
                  "(130000)\",\"reason\":\"Expired\",\"code\":410}");
}

/* ---- the client under test ---- */

static char token_path[64];
static char ca_path[64]; /* "" for plain HTTP */

static void write_token(void)
{
    snprintf(token_path, sizeof(token_path), "/tmp/k8s-test-token-%d", getpid());
    FILE *f = fopen(token_path, "w");
    cr_assert_not_null(f);
    fprintf(f, "%s\n", TOKEN);
    fclose(f);
}

static struct k8s *start_client(struct srv *s, unsigned ttl_ms)
{
    char url[64];
    int err = 0;
    snprintf(url, sizeof(url), "%s://127.0.0.1:%d/", s->tls ? "https" : "http", s->port);
    write_token();
    struct k8s_options o = {.api_url = url,
                            .token_path = token_path,
                            .ca_path = ca_path,
                            .node_name = NODE,
                            .tombstone_ttl_ms = ttl_ms,
                            .backoff_min_ms = 10,
                            .backoff_max_ms = 50};
    struct k8s *k = k8s_new(&o, &err);
    cr_assert_not_null(k, "k8s_new: %s", strerror(-err));
    cr_assert_eq(k8s_start(k), 0);
    return k;
}

static void stop_all(struct k8s *k, struct srv *s)
{
    k8s_free(k);
    srv_stop(s);
    unlink(token_path);
    if (ca_path[0])
        unlink(ca_path);
}

/* Polls the cache: the watch thread applies events asynchronously. */
static bool wait_pod(struct k8s *k, const char *uid, bool deleted, struct k8s_pod *out)
{
    for (int i = 0; i < 5000; i++) {
        if (k8s_pod_cache_lookup(k, uid, out) && out->deleted == deleted)
            return true;
        usleep(1000);
    }
    return false;
}

static void expect_pod_as(struct k8s *k, const char *key, const char *uid, const char *name,
                          const char *ns)
{
    struct k8s_pod p;
    cr_assert(wait_pod(k, key, false, &p), "pod %s never resolved", key);
    cr_assert_str_eq(p.uid, uid);
    cr_assert_str_eq(p.name, name);
    cr_assert_str_eq(p.namespace, ns);
    cr_assert_str_eq(p.node, NODE);
    cr_assert_eq(p.name, intern(name), "interned");
}

static void expect_pod(struct k8s *k, const char *uid, const char *name, const char *ns)
{
    expect_pod_as(k, uid, uid, name, ns);
}

/* ---- LIST, WATCH, token ---- */

#define ADDED_UID "11111111-2222-4333-8444-555555555555"

static void h_list_then_watch(struct srv *s, struct conn *fd, enum req_kind kind, int n)
{
    if (kind == REQ_LIST) {
        char *body = read_fixture("podlist.json");
        respond(fd, 200, "OK", body);
        free(body);
        return;
    }
    char *added = pod_json(ADDED_UID, "job-abc12", "batch", "123460", NULL);
    stream_begin(fd);
    stream_event(fd, "ADDED", added);
    stream_event(fd, "BOOKMARK",
                 "{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"metadata\":"
                 "{\"resourceVersion\":\"123470\"}}");
    free(added);
    hold(s, fd);
}

Test(k8s, list_then_watch_with_bearer_token)
{
    struct srv s;
    srv_start(&s, h_list_then_watch);
    struct k8s *k = start_client(&s, 0);
    cr_assert_str_eq(k8s_node_name(k), NODE);

    expect_pod(k, WEB_UID, "web-7d9c6b8f5d-x2k8p", "shop");
    expect_pod(k, REDIS_UID, "redis-0", "cache");
    expect_pod(k, ADDED_UID, "job-abc12", "batch");
    /* a static pod is found by the kubelet's UID its cgroups carry, too */
    expect_pod(k, PROXY_UID, "kube-proxy-node-1", "kube-system");
    expect_pod_as(k, PROXY_HASH, PROXY_UID, "kube-proxy-node-1", "kube-system");

    struct k8s_pod p;
    struct k8s_stats before;
    k8s_get_stats(k, &before);
    cr_assert_eq(k8s_pod_cache_lookup(k, "00000000-0000-4000-8000-000000000000", &p), 0);

    srv_wait(&s, 1, 1);
    pthread_mutex_lock(&s.lock);
    cr_assert_str_eq(s.auth, "Bearer " TOKEN);
    cr_assert_str_eq(s.list_paths[0],
                     "/api/v1/pods?fieldSelector=spec.nodeName%3D" NODE "&limit=500");
    cr_assert_str_eq(s.watch_paths[0],
                     "/api/v1/pods?fieldSelector=spec.nodeName%3D" NODE
                     "&watch=1&allowWatchBookmarks=true&resourceVersion=123456&timeoutSeconds=300");
    pthread_mutex_unlock(&s.lock);

    struct k8s_stats st;
    for (int i = 0; i < 5000; i++) {
        k8s_get_stats(k, &st);
        if (st.watch_events >= 2)
            break;
        usleep(1000);
    }
    cr_assert(st.connected);
    cr_assert_eq(st.lists, 1);
    cr_assert_eq(st.relists, 0);
    cr_assert_eq(st.api_errors, 0);
    cr_assert_eq(st.watch_events, 2);
    cr_assert_eq(st.pods_cached, 4);
    cr_assert_eq(st.pods_deleted, 0);
    cr_assert_eq(st.misses, before.misses + 1);
    cr_assert_eq(st.lookups, before.lookups + 1);
    cr_assert_str_eq(st.last_error, "");
    stop_all(k, &s);
}

/* ---- bookmarks: a watch the server ends resumes from the last resourceVersion ---- */

static void h_bookmark(struct srv *s, struct conn *fd, enum req_kind kind, int n)
{
    if (kind == REQ_LIST) {
        char *body = pod_list("500", NULL, 0);
        respond(fd, 200, "OK", body);
        free(body);
        return;
    }
    stream_begin(fd);
    if (n == 1) {
        stream_event(fd, "BOOKMARK",
                     "{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"metadata\":"
                     "{\"resourceVersion\":\"555\"}}");
        stream_end(fd); /* timeoutSeconds elapsed */
        return;
    }
    hold(s, fd);
}

Test(k8s, rewatch_resumes_from_bookmark_without_relist)
{
    struct srv s;
    srv_start(&s, h_bookmark);
    struct k8s *k = start_client(&s, 0);
    srv_wait(&s, 1, 2);
    pthread_mutex_lock(&s.lock);
    cr_assert(strstr(s.watch_paths[1], "&resourceVersion=555&"), "%s", s.watch_paths[1]);
    cr_assert_eq(s.lists, 1);
    pthread_mutex_unlock(&s.lock);
    stop_all(k, &s);
}

/* ---- tombstones ---- */

#define SHORT_UID "99999999-8888-4777-8666-555555555555"
static char short_cid[65] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

static void h_short_lived(struct srv *s, struct conn *fd, enum req_kind kind, int n)
{
    if (kind == REQ_LIST) {
        char *body = pod_list("700", NULL, 0);
        respond(fd, 200, "OK", body);
        free(body);
        return;
    }
    char *a = pod_json(SHORT_UID, "migrate-x7k2p", "jobs", "701", short_cid);
    char *d = pod_json(SHORT_UID, "migrate-x7k2p", "jobs", "703", short_cid);
    stream_begin(fd);
    stream_event(fd, "ADDED", a);
    stream_event(fd, "MODIFIED", a);
    stream_event(fd, "DELETED", d);
    free(a);
    free(d);
    hold(s, fd);
}

Test(k8s, deleted_pod_is_still_named_until_its_tombstone_expires)
{
    struct srv s;
    struct k8s_pod p;
    srv_start(&s, h_short_lived);
    struct k8s *k = start_client(&s, 400);

    cr_assert(wait_pod(k, SHORT_UID, true, &p), "DELETED never applied");
    cr_assert_str_eq(p.name, "migrate-x7k2p");
    cr_assert_str_eq(p.namespace, "jobs");
    struct k8s_stats st;
    k8s_get_stats(k, &st);
    cr_assert_eq(st.pods_deleted, 1);

    /* After the TTL the pod is forgotten. */
    bool gone = false;
    for (int i = 0; i < 5000 && !gone; i++) {
        gone = !k8s_pod_cache_lookup(k, SHORT_UID, &p);
        if (!gone)
            usleep(1000);
    }
    cr_assert(gone, "tombstone outlived its TTL");
    k8s_get_stats(k, &st);
    cr_assert_eq(st.expired, 1);
    cr_assert_eq(st.pods_cached, 0);
    stop_all(k, &s);
}

/* The process's last event is enriched after the API server said the pod is gone. */
Test(k8s, event_after_pod_deletion_is_attributed)
{
    char root[KP_ROOT_MAX], rel[KP_REL_MAX], suid[37];
    kp_root_or_skip(root, sizeof(root));
    kp_random_container_id(short_cid);
    kp_systemd_uid(SHORT_UID, suid);
    snprintf(rel, sizeof(rel),
             "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod%s.slice/"
             "cri-containerd-%s.scope",
             suid, short_cid);
    struct kp_proc proc;
    kp_start(&proc, root, rel);
    struct cgroup_resolver *cg = cgroup_resolver_new(NULL, NULL);
    cr_assert_not_null(cg);

    struct srv s;
    struct k8s_pod p;
    srv_start(&s, h_short_lived);
    struct k8s *k = start_client(&s, 0);
    cr_assert(wait_pod(k, SHORT_UID, true, &p), "DELETED never applied");

    struct event e = {.type = EVENT_EXIT, .pid = (uint32_t)proc.pid, .cgroup_id = proc.cgroup_id};
    int rc = k8s_enrich(k, cg, &e);
    kp_stop(&proc);
    cr_assert_eq(rc, 1);
    cr_assert_str_eq(e.k8s.pod_name, "migrate-x7k2p");
    cr_assert_str_eq(e.k8s.namespace, "jobs");
    cr_assert_str_eq(e.k8s.pod_uid, SHORT_UID);
    cr_assert_str_eq(e.k8s.container_id, short_cid);
    cr_assert_str_eq(e.k8s.node_name, NODE);

    stop_all(k, &s);
    cgroup_resolver_free(cg);
}

/* ---- expired watches ---- */

#define LATE_UID "abcdef01-2345-4678-89ab-cdef01234567"

static void list_for_relist(struct conn *fd, int n)
{
    char *web = pod_json(WEB_UID, "web-7d9c6b8f5d-x2k8p", "shop", "100", NULL);
    char *late = pod_json(LATE_UID, "late-1", "shop", "190", NULL);
    const char *first[] = {web};
    const char *second[] = {late}; /* web was deleted while we were not watching */
    char *body = n == 1 ? pod_list("100", first, 1) : pod_list("200", second, 1);
    respond(fd, 200, "OK", body);
    free(body);
    free(web);
    free(late);
}

static void h_expired_event(struct srv *s, struct conn *fd, enum req_kind kind, int n)
{
    if (kind == REQ_LIST) {
        list_for_relist(fd, n);
        return;
    }
    stream_begin(fd);
    if (n == 1) {
        char *st = status_410();
        stream_event(fd, "ERROR", st);
        free(st);
    }
    hold(s, fd);
}

static void h_expired_http(struct srv *s, struct conn *fd, enum req_kind kind, int n)
{
    if (kind == REQ_LIST) {
        list_for_relist(fd, n);
        return;
    }
    if (n == 1) {
        char *st = status_410();
        respond(fd, 410, "Gone", st);
        free(st);
        return;
    }
    stream_begin(fd);
    hold(s, fd);
}

static void check_relist(srv_handler h)
{
    struct srv s;
    struct k8s_pod p;
    srv_start(&s, h);
    struct k8s *k = start_client(&s, 0);

    srv_wait(&s, 2, 2);
    expect_pod(k, LATE_UID, "late-1", "shop");
    /* gone from the new list: kept as a tombstone, still named */
    cr_assert(wait_pod(k, WEB_UID, true, &p));
    cr_assert_str_eq(p.name, "web-7d9c6b8f5d-x2k8p");

    pthread_mutex_lock(&s.lock);
    cr_assert_eq(s.lists, 2);
    cr_assert(strstr(s.watch_paths[0], "&resourceVersion=100&"), "%s", s.watch_paths[0]);
    cr_assert(strstr(s.watch_paths[1], "&resourceVersion=200&"), "%s", s.watch_paths[1]);
    pthread_mutex_unlock(&s.lock);

    struct k8s_stats st;
    k8s_get_stats(k, &st);
    cr_assert_eq(st.lists, 2);
    cr_assert_eq(st.relists, 1);
    cr_assert_eq(st.api_errors, 0, "an expired watch is routine, not an API error");
    cr_assert(strstr(st.last_error, "too old resource version"), "%s", st.last_error);
    stop_all(k, &s);
}

Test(k8s, error_event_410_relists)
{
    check_relist(h_expired_event);
}

Test(k8s, http_410_relists)
{
    check_relist(h_expired_http);
}

/* ---- API errors ---- */

static void h_forbidden(struct srv *s, struct conn *fd, enum req_kind kind, int n)
{
    respond(fd, 403, "Forbidden",
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\","
            "\"message\":\"pods is forbidden: User \\\"system:serviceaccount:monitoring:"
            "default\\\" cannot list resource \\\"pods\\\" in API group \\\"\\\" at the "
            "cluster scope\",\"reason\":\"Forbidden\",\"details\":{\"kind\":\"pods\"},"
            "\"code\":403}");
}

Test(k8s, api_error_is_reported_and_retried)
{
    struct srv s;
    srv_start(&s, h_forbidden);
    struct k8s *k = start_client(&s, 0);
    srv_wait(&s, 3, 0); /* retried with backoff */
    struct k8s_stats st;
    for (int i = 0; i < 5000; i++) {
        k8s_get_stats(k, &st);
        if (st.api_errors >= 2)
            break;
        usleep(1000);
    }
    cr_assert_geq(st.api_errors, 2);
    cr_assert_not(st.connected);
    cr_assert(strstr(st.last_error, "HTTP 403: pods is forbidden"), "%s", st.last_error);
    cr_assert_eq(st.lists, 0);
    stop_all(k, &s);
}

/* ---- no API server ---- */

Test(k8s, unreachable_api_server_still_attributes_from_cgroups)
{
    char root[KP_ROOT_MAX], rel[KP_REL_MAX], uid[37], cid[65], url[64];
    kp_root_or_skip(root, sizeof(root));
    kp_random_uid(uid);
    kp_random_container_id(cid);
    snprintf(rel, sizeof(rel), "kubepods/burstable/pod%s/%s", uid, cid);
    struct kp_proc proc;
    kp_start(&proc, root, rel);

    /* a loopback port with nothing listening */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    close(fd);
    snprintf(url, sizeof(url), "https://127.0.0.1:%d", ntohs(sa.sin_port));

    struct k8s_options o = {
        .api_url = url, .node_name = NODE, .backoff_min_ms = 10, .backoff_max_ms = 20};
    struct k8s *k = k8s_new(&o, NULL);
    cr_assert_not_null(k);
    cr_assert_eq(k8s_start(k), 0);
    struct cgroup_resolver *cg = cgroup_resolver_new(NULL, NULL);
    cr_assert_not_null(cg);

    struct event e = {.type = EVENT_EXEC, .pid = (uint32_t)proc.pid, .cgroup_id = proc.cgroup_id};
    int rc = k8s_enrich(k, cg, &e);
    kp_stop(&proc);
    cr_assert_eq(rc, 1);
    cr_assert_str_eq(e.k8s.pod_uid, uid);
    cr_assert_str_eq(e.k8s.container_id, cid);
    cr_assert_str_eq(e.k8s.node_name, NODE);
    cr_assert_null(e.k8s.pod_name);
    cr_assert_null(e.k8s.namespace);

    struct k8s_stats st;
    for (int i = 0; i < 5000; i++) {
        k8s_get_stats(k, &st);
        if (st.api_errors >= 1)
            break;
        usleep(1000);
    }
    cr_assert_not(st.connected);
    cr_assert_geq(st.api_errors, 1);
    cr_assert(strstr(st.last_error, url) && strstr(st.last_error, "onnect"), "%s", st.last_error);
    k8s_free(k);
    cgroup_resolver_free(cg);
}

Test(k8s, without_any_api_server_config)
{
    unsetenv("KUBERNETES_SERVICE_HOST");
    setenv("NODE_NAME", "node-from-env", 1);
    struct k8s *k = k8s_new(NULL, NULL);
    cr_assert_not_null(k);
    cr_assert_eq(k8s_start(k), 0);
    cr_assert_str_eq(k8s_node_name(k), "node-from-env");
    struct k8s_stats st;
    k8s_get_stats(k, &st);
    cr_assert_not(st.connected);
    cr_assert(strstr(st.last_error, "KUBERNETES_SERVICE_HOST"), "%s", st.last_error);

    /* host processes get nothing, with or without a resolver */
    struct event e = {.cgroup_id = 1, .k8s.pod_name = "stale"};
    cr_assert_eq(k8s_enrich(k, NULL, &e), 0);
    cr_assert_null(e.k8s.pod_name);
    k8s_free(k);

    int err = 0;
    struct k8s_options bad = {.api_url = "ftp://example"};
    cr_assert_null(k8s_new(&bad, &err));
    cr_assert_eq(err, -EINVAL);
}

/* ---- both halves: a real process in a real pod cgroup, named by the API ---- */

#define REAL_UID "7c6b5a49-3827-4160-9f8e-7d6c5b4a3928"
static char real_cid[65];

static void h_real_pod(struct srv *s, struct conn *fd, enum req_kind kind, int n)
{
    if (kind == REQ_LIST) {
        char *pod = pod_json(REAL_UID, "api-5b7f9d-qk2lz", "payments", "42", real_cid);
        const char *items[] = {pod};
        char *body = pod_list("42", items, 1);
        respond(fd, 200, "OK", body);
        free(body);
        free(pod);
        return;
    }
    stream_begin(fd);
    hold(s, fd);
}

Test(k8s, real_process_in_pod_cgroup_is_fully_attributed)
{
    char root[KP_ROOT_MAX], rel[KP_REL_MAX], host_rel[64];
    kp_root_or_skip(root, sizeof(root));
    kp_random_container_id(real_cid);
    snprintf(rel, sizeof(rel), "kubepods/besteffort/pod%s/%s", REAL_UID, real_cid);
    snprintf(host_rel, sizeof(host_rel), "ebpf-monitor-k8s-test-%d/app", getpid());

    struct srv s;
    srv_start(&s, h_real_pod);
    struct k8s *k = start_client(&s, 0);
    struct cgroup_resolver *cg = cgroup_resolver_new(NULL, NULL);
    cr_assert_not_null(cg);
    expect_pod(k, REAL_UID, "api-5b7f9d-qk2lz", "payments");

    struct kp_proc pod_proc, host_proc;
    kp_start(&pod_proc, root, rel);
    kp_start(&host_proc, root, host_rel);
    struct event e = {
        .type = EVENT_CONNECTION, .pid = (uint32_t)pod_proc.pid, .cgroup_id = pod_proc.cgroup_id};
    struct event h = {
        .type = EVENT_CONNECTION, .pid = (uint32_t)host_proc.pid, .cgroup_id = host_proc.cgroup_id};
    int rc = k8s_enrich(k, cg, &e);
    int hrc = k8s_enrich(k, cg, &h);
    kp_stop(&pod_proc);
    kp_stop(&host_proc);

    cr_assert_eq(rc, 1);
    cr_assert_str_eq(e.k8s.pod_name, "api-5b7f9d-qk2lz");
    cr_assert_str_eq(e.k8s.namespace, "payments");
    cr_assert_str_eq(e.k8s.pod_uid, REAL_UID);
    cr_assert_str_eq(e.k8s.container_id, real_cid);
    cr_assert_str_eq(e.k8s.node_name, NODE);

    cr_assert_eq(hrc, 0);
    cr_assert_null(h.k8s.node_name);
    cr_assert_null(h.k8s.pod_name);
    cr_assert_null(h.k8s.namespace);
    cr_assert_null(h.k8s.pod_uid);
    cr_assert_null(h.k8s.container_id);

    stop_all(k, &s);
    cgroup_resolver_free(cg);
}

/* ---- HTTPS, as in a cluster ---- */

Test(k8s, https_with_the_service_account_ca)
{
    struct srv s;
    snprintf(ca_path, sizeof(ca_path), "/tmp/k8s-test-ca-%d.crt", getpid());
    srv_start_tls(&s, h_list_then_watch, tls_context(ca_path));
    struct k8s *k = start_client(&s, 0);
    expect_pod(k, WEB_UID, "web-7d9c6b8f5d-x2k8p", "shop");
    expect_pod(k, ADDED_UID, "job-abc12", "batch");
    srv_wait(&s, 1, 1);
    pthread_mutex_lock(&s.lock);
    cr_assert_str_eq(s.auth, "Bearer " TOKEN);
    cr_assert_eq(s.tls_failures, 0);
    pthread_mutex_unlock(&s.lock);
    stop_all(k, &s);
}

Test(k8s, https_refuses_a_server_the_ca_did_not_sign)
{
    struct srv s;
    char server_ca[64];
    snprintf(server_ca, sizeof(server_ca), "/tmp/k8s-test-other-ca-%d.crt", getpid());
    srv_start_tls(&s, h_list_then_watch, tls_context(server_ca));
    /* the client trusts a different CA than the one that signed the server */
    snprintf(ca_path, sizeof(ca_path), "/tmp/k8s-test-ca-%d.crt", getpid());
    SSL_CTX_free(tls_context(ca_path));
    struct k8s *k = start_client(&s, 0);

    struct k8s_stats st;
    for (int i = 0; i < 5000; i++) {
        k8s_get_stats(k, &st);
        if (st.api_errors >= 1)
            break;
        usleep(1000);
    }
    cr_assert_geq(st.api_errors, 1);
    cr_assert_not(st.connected);
    cr_assert(strstr(st.last_error, "certificate"), "%s", st.last_error);
    pthread_mutex_lock(&s.lock);
    cr_assert_eq(s.lists, 0);
    cr_assert_str_eq(s.auth, "", "the token went to an unverified server");
    pthread_mutex_unlock(&s.lock);
    stop_all(k, &s);
    unlink(server_ca);
}

/* ---- reconnecting ---- */

static void h_watch_fails_once(struct srv *s, struct conn *c, enum req_kind kind, int n)
{
    if (kind == REQ_LIST) {
        char *body = pod_list("900", NULL, 0);
        respond(c, 200, "OK", body);
        free(body);
        return;
    }
    if (n == 1) {
        respond(c, 500, "Internal Server Error",
                "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"status\":\"Failure\","
                "\"message\":\"etcdserver: request timed out\",\"code\":500}");
        return;
    }
    stream_begin(c); /* a quiet, healthy watch */
    hold(s, c);
}

Test(k8s, watch_error_reconnects_and_a_quiet_watch_counts_as_connected)
{
    struct srv s;
    srv_start(&s, h_watch_fails_once);
    struct k8s *k = start_client(&s, 0);
    srv_wait(&s, 1, 2);
    struct k8s_stats st;
    for (int i = 0; i < 5000; i++) {
        k8s_get_stats(k, &st);
        if (st.connected && st.api_errors == 1)
            break;
        usleep(1000);
    }
    cr_assert(st.connected);
    cr_assert_eq(st.api_errors, 1);
    cr_assert(strstr(st.last_error, "HTTP 500: etcdserver: request timed out"), "%s",
              st.last_error);
    pthread_mutex_lock(&s.lock);
    cr_assert_eq(s.lists, 1, "a failed watch resumes from its resourceVersion, no re-list");
    cr_assert(strstr(s.watch_paths[1], "&resourceVersion=900&"), "%s", s.watch_paths[1]);
    pthread_mutex_unlock(&s.lock);
    stop_all(k, &s);
}

/*
 * Tests for pkg/k8s against a small HTTP server on loopback that answers as
 * the Kubernetes API server does (tests/helpers/k8s_api_server.c): a PodList
 * (tests/fixtures/k8s/podlist.json is one in the API's format) and watch
 * streams (chunked, one watch event per line). Covers LIST then WATCH, the
 * bearer token, pods added and deleted in the watch (tombstones), expired
 * watches (an ERROR event with a 410 Status, and an HTTP 410) that must
 * re-list, bookmarks, API errors, an unreachable API server, and enrichment
 * of events from real processes in real kubepods cgroups.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cgroup.h"
#include "event.h"
#include "fixtures/k8s/kubepods.h"
#include "intern.h"
#include "k8s.h"
#include "k8s_api_server.h"

#define NODE  "node-1"
#define TOKEN "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.test-token"

/* The fixture's pods */
#define WEB_UID    "5f0c3f6e-2b6d-4d5a-9d0e-8a1b2c3d4e5f"
#define REDIS_UID  "c2a4e6f8-1b3d-4f5a-8c7e-9d0b1a2c3e4f"
#define PROXY_UID  "8e1d2c3b-4a59-4687-b9a0-c1d2e3f4a5b6"
#define PROXY_HASH "3b2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d"

/*
 * The fake API server is tests/helpers/k8s_api_server.c; these wrappers fail
 * the test when it cannot do its part.
 */

static void srv_start_tls(struct kas *s, kas_handler h, SSL_CTX *tls)
{
    int rc = kas_start(s, h, tls);
    cr_assert_eq(rc, 0, "fake API server: %s", strerror(-rc));
}

static void srv_start(struct kas *s, kas_handler h)
{
    srv_start_tls(s, h, NULL);
}

/* Waits until the server has seen at least lists LISTs and watches WATCHes. */
static void srv_wait(struct kas *s, int lists, int watches)
{
    bool ok = kas_wait(s, lists, watches, 10000);
    pthread_mutex_lock(&s->lock);
    int l = s->lists, w = s->watches;
    pthread_mutex_unlock(&s->lock);
    cr_assert(ok, "server saw %d lists, %d watches; wanted %d, %d", l, w, lists, watches);
}

static SSL_CTX *tls_context(const char *ca_file)
{
    SSL_CTX *ctx = kas_tls_context(ca_file);
    cr_assert_not_null(ctx, "cannot make a TLS context and CA file %s", ca_file);
    return ctx;
}

/* ---- API objects ---- */

static char *read_fixture(const char *name)
{
    char *data = kas_read_fixture(name);
    cr_assert_not_null(data, "cannot read fixture %s", name);
    return data;
}

/* A Pod on this node as the API serves it in watch events. */
static char *pod_json(const char *uid, const char *name, const char *ns, const char *rv,
                      const char *container_id)
{
    char *s = kas_pod_json(uid, name, ns, NODE, rv, container_id);
    cr_assert_not_null(s);
    return s;
}

static char *pod_list(const char *rv, const char *const *items, int n)
{
    char *s = kas_pod_list(rv, items, n);
    cr_assert_not_null(s);
    return s;
}

static char *status_410(void)
{
    char *s = kas_status_410();
    cr_assert_not_null(s);
    return s;
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

static struct k8s *start_client(struct kas *s, unsigned ttl_ms)
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

static void stop_all(struct k8s *k, struct kas *s)
{
    k8s_free(k);
    kas_stop(s);
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

static void h_list_then_watch(struct kas *s, struct kas_conn *fd, enum kas_req_kind kind, int n)
{
    if (kind == KAS_LIST) {
        char *body = read_fixture("podlist.json");
        kas_respond(fd, 200, "OK", body);
        free(body);
        return;
    }
    char *added = pod_json(ADDED_UID, "job-abc12", "batch", "123460", NULL);
    kas_stream_begin(fd);
    kas_stream_event(fd, "ADDED", added);
    kas_stream_event(fd, "BOOKMARK",
                     "{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"metadata\":"
                     "{\"resourceVersion\":\"123470\"}}");
    free(added);
    kas_hold(s, fd);
}

Test(k8s, list_then_watch_with_bearer_token)
{
    struct kas s;
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

/* ---- a NUL in the API server's JSON costs only the string that holds it ---- */

#define NUL_UID      "22222222-3333-4444-8555-666666666666"
#define NUL2_UID     "33333333-4444-4555-8666-777777777777"
#define BAD_UID      "44444444-5555-4666-8777-888888888888"
#define NUL_LATE_UID "55555555-6666-4777-8888-999999999999"

/* The pod with `"annotations":{"note":"before\u0000after"}` in its metadata (or its name cut
 * by a NUL, `name_nul`), as Go's encoder writes a NUL. */
static char *pod_with_nul(const char *uid, const char *name, const char *rv, bool name_nul)
{
    char *p = pod_json(uid, name, "shop", rv, NULL), *out = NULL;
    const char *at = strstr(p, "\"metadata\":{") + strlen("\"metadata\":{");
    if (name_nul) {
        char *n = strstr(p, name);
        cr_assert(
            asprintf(&out, "%.*s\\u0000x%s", (int)(n + strlen(name) - p), p, n + strlen(name)) > 0);
    } else {
        cr_assert(asprintf(&out, "%.*s\"annotations\":{\"note\":\"before\\u0000after\"},%s",
                           (int)(at - p), p, at) > 0);
    }
    free(p);
    return out;
}

static void h_nul(struct kas *s, struct kas_conn *fd, enum kas_req_kind kind, int n)
{
    if (kind == KAS_LIST) {
        char *items[] = {pod_with_nul(NUL_UID, "annotated-0", "10", false),
                         pod_json(WEB_UID, "web-7d9c6b8f5d-x2k8p", "shop", "11", NULL),
                         pod_with_nul(BAD_UID, "nul-name", "12", true)};
        char *body = pod_list("12", (const char *const *)items, 3);
        kas_respond(fd, 200, "OK", body);
        free(body);
        for (int i = 0; i < 3; i++)
            free(items[i]);
        return;
    }
    char *nul = pod_with_nul(NUL2_UID, "annotated-1", "13", false);
    char *late = pod_json(NUL_LATE_UID, "after-nul", "shop", "14", NULL);
    kas_stream_begin(fd);
    kas_stream_event(fd, "ADDED", nul);
    kas_stream_event(fd, "ADDED", late);
    free(nul);
    free(late);
    kas_hold(s, fd);
}

Test(k8s, a_nul_in_a_string_costs_only_that_string)
{
    struct kas s;
    srv_start(&s, h_nul);
    struct k8s *k = start_client(&s, 0);
    /* Listed and watched, annotated with a NUL or not: every pod is learned. */
    expect_pod(k, NUL_UID, "annotated-0", "shop");
    expect_pod(k, WEB_UID, "web-7d9c6b8f5d-x2k8p", "shop");
    expect_pod(k, NUL2_UID, "annotated-1", "shop");
    expect_pod(k, NUL_LATE_UID, "after-nul", "shop");
    /* A name cut by a NUL is no name: the pod is not named "nul-name". */
    struct k8s_pod p;
    if (k8s_pod_cache_lookup(k, BAD_UID, &p) == 1)
        cr_expect(p.name == NULL || strcmp(p.name, "nul-name") != 0, "named %s", p.name);
    struct k8s_stats st;
    k8s_get_stats(k, &st);
    cr_expect_eq(st.relists, 0, "the watch never failed: %s", st.last_error);
    stop_all(k, &s);
}

/* ---- bookmarks: a watch the server ends resumes from the last resourceVersion ---- */

static void h_bookmark(struct kas *s, struct kas_conn *fd, enum kas_req_kind kind, int n)
{
    if (kind == KAS_LIST) {
        char *body = pod_list("500", NULL, 0);
        kas_respond(fd, 200, "OK", body);
        free(body);
        return;
    }
    kas_stream_begin(fd);
    if (n == 1) {
        kas_stream_event(fd, "BOOKMARK",
                         "{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"metadata\":"
                         "{\"resourceVersion\":\"555\"}}");
        kas_stream_end(fd); /* timeoutSeconds elapsed */
        return;
    }
    kas_hold(s, fd);
}

Test(k8s, rewatch_resumes_from_bookmark_without_relist)
{
    struct kas s;
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

static void h_short_lived(struct kas *s, struct kas_conn *fd, enum kas_req_kind kind, int n)
{
    if (kind == KAS_LIST) {
        char *body = pod_list("700", NULL, 0);
        kas_respond(fd, 200, "OK", body);
        free(body);
        return;
    }
    char *a = pod_json(SHORT_UID, "migrate-x7k2p", "jobs", "701", short_cid);
    char *d = pod_json(SHORT_UID, "migrate-x7k2p", "jobs", "703", short_cid);
    kas_stream_begin(fd);
    kas_stream_event(fd, "ADDED", a);
    kas_stream_event(fd, "MODIFIED", a);
    kas_stream_event(fd, "DELETED", d);
    free(a);
    free(d);
    kas_hold(s, fd);
}

Test(k8s, deleted_pod_is_still_named_until_its_tombstone_expires)
{
    struct kas s;
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

    struct kas s;
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
    /* Its addresses may be a new pod's already: the event does not claim them. */
    cr_assert_null(e.k8s.ips, "k8s_ips %s", e.k8s.ips);
    cr_assert(p.ips, "the pod had addresses");

    stop_all(k, &s);
    cgroup_resolver_free(cg);
}

/* ---- expired watches ---- */

#define LATE_UID "abcdef01-2345-4678-89ab-cdef01234567"

static void list_for_relist(struct kas_conn *fd, int n)
{
    char *web = pod_json(WEB_UID, "web-7d9c6b8f5d-x2k8p", "shop", "100", NULL);
    char *late = pod_json(LATE_UID, "late-1", "shop", "190", NULL);
    const char *first[] = {web};
    const char *second[] = {late}; /* web was deleted while we were not watching */
    char *body = n == 1 ? pod_list("100", first, 1) : pod_list("200", second, 1);
    kas_respond(fd, 200, "OK", body);
    free(body);
    free(web);
    free(late);
}

static void h_expired_event(struct kas *s, struct kas_conn *fd, enum kas_req_kind kind, int n)
{
    if (kind == KAS_LIST) {
        list_for_relist(fd, n);
        return;
    }
    kas_stream_begin(fd);
    if (n == 1) {
        char *st = status_410();
        kas_stream_event(fd, "ERROR", st);
        free(st);
    }
    kas_hold(s, fd);
}

static void h_expired_http(struct kas *s, struct kas_conn *fd, enum kas_req_kind kind, int n)
{
    if (kind == KAS_LIST) {
        list_for_relist(fd, n);
        return;
    }
    if (n == 1) {
        char *st = status_410();
        kas_respond(fd, 410, "Gone", st);
        free(st);
        return;
    }
    kas_stream_begin(fd);
    kas_hold(s, fd);
}

static void check_relist(kas_handler h)
{
    struct kas s;
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

static void h_forbidden(struct kas *s, struct kas_conn *fd, enum kas_req_kind kind, int n)
{
    kas_respond(fd, 403, "Forbidden",
                "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\","
                "\"message\":\"pods is forbidden: User \\\"system:serviceaccount:monitoring:"
                "default\\\" cannot list resource \\\"pods\\\" in API group \\\"\\\" at the "
                "cluster scope\",\"reason\":\"Forbidden\",\"details\":{\"kind\":\"pods\"},"
                "\"code\":403}");
}

Test(k8s, api_error_is_reported_and_retried)
{
    struct kas s;
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

static void h_real_pod(struct kas *s, struct kas_conn *fd, enum kas_req_kind kind, int n)
{
    if (kind == KAS_LIST) {
        char *pod = pod_json(REAL_UID, "api-5b7f9d-qk2lz", "payments", "42", real_cid);
        const char *items[] = {pod};
        char *body = pod_list("42", items, 1);
        kas_respond(fd, 200, "OK", body);
        free(body);
        free(pod);
        return;
    }
    kas_stream_begin(fd);
    kas_hold(s, fd);
}

Test(k8s, real_process_in_pod_cgroup_is_fully_attributed)
{
    char root[KP_ROOT_MAX], rel[KP_REL_MAX], host_rel[64];
    kp_root_or_skip(root, sizeof(root));
    kp_random_container_id(real_cid);
    snprintf(rel, sizeof(rel), "kubepods/besteffort/pod%s/%s", REAL_UID, real_cid);
    snprintf(host_rel, sizeof(host_rel), "ebpf-monitor-k8s-test-%d/app", getpid());

    struct kas s;
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
    struct kas s;
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
    struct kas s;
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

static void h_watch_fails_once(struct kas *s, struct kas_conn *c, enum kas_req_kind kind, int n)
{
    if (kind == KAS_LIST) {
        char *body = pod_list("900", NULL, 0);
        kas_respond(c, 200, "OK", body);
        free(body);
        return;
    }
    if (n == 1) {
        kas_respond(c, 500, "Internal Server Error",
                    "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"status\":\"Failure\","
                    "\"message\":\"etcdserver: request timed out\",\"code\":500}");
        return;
    }
    kas_stream_begin(c); /* a quiet, healthy watch */
    kas_hold(s, c);
}

Test(k8s, watch_error_reconnects_and_a_quiet_watch_counts_as_connected)
{
    struct kas s;
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

/* ---- identity: workload, app label, IPs ---- */

/* A client fed by k8s_feed() only: no API server, so a Job is never read. */
static struct k8s *feed_client(unsigned ttl_ms)
{
    unsetenv("KUBERNETES_SERVICE_HOST");
    struct k8s_options o = {.node_name = NODE, .tombstone_ttl_ms = ttl_ms};
    struct k8s *k = k8s_new(&o, NULL);
    cr_assert_not_null(k);
    return k;
}

static void feed_pod(struct k8s *k, const char *type, const struct kas_pod *p)
{
    char *obj = kas_pod_object(p), *line = NULL, err[256] = "";
    cr_assert_not_null(obj);
    cr_assert_geq(asprintf(&line, "{\"type\":\"%s\",\"object\":%s}\n", type, obj), 0);
    int rc = k8s_feed(k, true, line, strlen(line), err, sizeof(err));
    cr_assert_eq(rc, 0, "%s", err);
    free(line);
    free(obj);
}

static struct k8s_pod cached(struct k8s *k, const char *uid)
{
    struct k8s_pod p;
    cr_assert(k8s_pod_cache_lookup(k, uid, &p), "pod %s not cached", uid);
    return p;
}

static void expect_workload(struct k8s *k, const struct kas_pod *p, const char *workload,
                            const char *kind)
{
    feed_pod(k, "ADDED", p);
    struct k8s_pod got = cached(k, p->uid);
    cr_expect_str_eq(got.workload, workload, "%s", p->name);
    cr_expect_str_eq(got.workload_kind, kind, "%s", p->name);
}

#define UID(n) "00000000-0000-4000-8000-00000000000" #n

Test(k8s_identity, workload_from_the_controller_owner_reference)
{
    struct k8s *k = feed_client(0);
    /* the Deployment controller names its ReplicaSets <deployment>-<pod-template-hash> */
    expect_workload(k,
                    &(struct kas_pod){UID(1), "web-7d9c6b8f5d-x2k8p", "shop", NODE,
                                      .labels = "\"pod-template-hash\":\"7d9c6b8f5d\"",
                                      .owner_kind = "ReplicaSet", .owner_name = "web-7d9c6b8f5d"},
                    "web", "Deployment");
    /* a ReplicaSet of its own: no hash label, or a name that is not <x>-<hash> */
    expect_workload(k,
                    &(struct kas_pod){UID(2), "rs-abcde", "shop", NODE, .owner_kind = "ReplicaSet",
                                      .owner_name = "rs"},
                    "rs", "ReplicaSet");
    expect_workload(k,
                    &(struct kas_pod){UID(3), "webx7d9c6b8f5d-q", "shop", NODE,
                                      .labels = "\"pod-template-hash\":\"7d9c6b8f5d\"",
                                      .owner_kind = "ReplicaSet", .owner_name = "webx7d9c6b8f5d"},
                    "webx7d9c6b8f5d", "ReplicaSet");
    expect_workload(k,
                    &(struct kas_pod){UID(4), "-7d9c6b8f5d-q", "shop", NODE,
                                      .labels = "\"pod-template-hash\":\"7d9c6b8f5d\"",
                                      .owner_kind = "ReplicaSet", .owner_name = "-7d9c6b8f5d"},
                    "-7d9c6b8f5d", "ReplicaSet");
    expect_workload(k,
                    &(struct kas_pod){UID(5), "redis-0", "cache", NODE, .owner_kind = "StatefulSet",
                                      .owner_name = "redis"},
                    "redis", "StatefulSet");
    expect_workload(k,
                    &(struct kas_pod){UID(6), "fluent-bit-4xk2p", "logging", NODE,
                                      .owner_kind = "DaemonSet", .owner_name = "fluent-bit"},
                    "fluent-bit", "DaemonSet");
    /* without an API server the Job cannot be read: it stays a Job */
    expect_workload(k,
                    &(struct kas_pod){UID(7), "migrate-x7k2p", "jobs", NODE, .owner_kind = "Job",
                                      .owner_name = "migrate",
                                      .owner_uid = "6f1c2a3b-0001-4c5d-8e9f-0000000000aa"},
                    "migrate", "Job");
    /* no controller: the pod is its own workload */
    expect_workload(k, &(struct kas_pod){UID(8), "debug", "default", NODE}, "debug", "Pod");
    /* any other controller: that kind and name (static pods: their Node) */
    expect_workload(k,
                    &(struct kas_pod){UID(9), "kube-proxy-node-1", "kube-system", NODE,
                                      .owner_kind = "Node", .owner_name = "node-1"},
                    "node-1", "Node");
    k8s_free(k);
}

Test(k8s_identity, an_owner_that_is_not_the_controller_is_not_the_workload)
{
    struct k8s *k = feed_client(0);
    const char *pod =
        "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"p\",\"namespace\":\"n\","
        "\"uid\":\"" UID(1) "\",\"ownerReferences\":[{\"kind\":\"ReplicaSet\",\"name\":\"rs\","
                            "\"uid\":\"x\"}]},\"spec\":{\"nodeName\":\"" NODE "\"}}}\n";
    char err[256] = "";
    cr_assert_eq(k8s_feed(k, true, pod, strlen(pod), err, sizeof(err)), 0, "%s", err);
    struct k8s_pod p = cached(k, UID(1));
    cr_expect_str_eq(p.workload, "p");
    cr_expect_str_eq(p.workload_kind, "Pod");
    k8s_free(k);
}

Test(k8s_identity, app_label_prefers_the_recommended_label)
{
    struct k8s *k = feed_client(0);
    feed_pod(k, "ADDED",
             &(struct kas_pod){UID(1), "a", "n", NODE,
                               .labels = "\"app\":\"legacy\",\"app.kubernetes.io/name\":\"shop\""});
    feed_pod(k, "ADDED", &(struct kas_pod){UID(2), "b", "n", NODE, .labels = "\"app\":\"legacy\""});
    feed_pod(k, "ADDED", &(struct kas_pod){UID(3), "c", "n", NODE, .labels = "\"tier\":\"x\""});
    cr_expect_str_eq(cached(k, UID(1)).app, "shop");
    cr_expect_str_eq(cached(k, UID(2)).app, "legacy");
    cr_expect_null(cached(k, UID(3)).app);
    k8s_free(k);
}

Test(k8s_identity, pod_ips_from_podIPs_or_podIP)
{
    struct k8s *k = feed_client(0);
    feed_pod(k, "ADDED",
             &(struct kas_pod){UID(1), "dual", "n", NODE,
                               .ips = {"10.244.1.5", "fd00:10:244:1:0:0:0:5"}});
    feed_pod(k, "ADDED", &(struct kas_pod){UID(2), "none", "n", NODE});
    feed_pod(k, "ADDED", &(struct kas_pod){UID(3), "bad", "n", NODE, .ips = {"10.244.1.999"}});
    cr_expect_str_eq(cached(k, UID(1)).ips, "10.244.1.5,fd00:10:244:1::5");
    cr_expect_null(cached(k, UID(2)).ips);
    cr_expect_null(cached(k, UID(3)).ips, "not an address");

    /* an older API server: status.podIP only */
    const char *old =
        "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"old\","
        "\"namespace\":\"n\",\"uid\":\"" UID(4) "\"},\"spec\":{\"hostNetwork\":true},"
                                                "\"status\":{\"podIP\":\"10.0.0.9\"}}}\n";
    char err[256] = "";
    cr_assert_eq(k8s_feed(k, true, old, strlen(old), err, sizeof(err)), 0, "%s", err);
    struct k8s_pod p = cached(k, UID(4));
    cr_expect_str_eq(p.ips, "10.0.0.9");
    cr_expect(p.host_network);
    cr_expect_not(cached(k, UID(1)).host_network);
    k8s_free(k);
}

/* ---- the IP index: peers ---- */

static const char *peer_of(struct k8s *k, const char *ip)
{
    uint8_t a[16] = {0};
    struct event_peer peer = {0};
    unsigned family = EVENT_FAMILY_IPV6;
    if (inet_pton(AF_INET, ip, a) == 1)
        family = EVENT_FAMILY_IPV4;
    else
        cr_assert_eq(inet_pton(AF_INET6, ip, a), 1, "%s", ip);
    if (!k8s_peer_lookup(k, family, a, &peer))
        return NULL;
    cr_assert_not_null(peer.pod);
    return peer.pod;
}

Test(k8s_identity, an_address_one_live_pod_holds_names_it)
{
    struct k8s *k = feed_client(0);
    feed_pod(k, "ADDED",
             &(struct kas_pod){UID(1), "web-7d9c6b8f5d-x2k8p", "shop", NODE,
                               .labels = "\"pod-template-hash\":\"7d9c6b8f5d\"",
                               .owner_kind = "ReplicaSet", .owner_name = "web-7d9c6b8f5d",
                               .ips = {"10.244.1.5", "fd00::5"}});
    uint8_t a[16];
    struct event_peer peer = {.service = "kept"};
    inet_pton(AF_INET, "10.244.1.5", a);
    cr_assert_eq(k8s_peer_lookup(k, EVENT_FAMILY_IPV4, a, &peer), 1);
    cr_expect_str_eq(peer.pod, "web-7d9c6b8f5d-x2k8p");
    cr_expect_str_eq(peer.namespace, "shop");
    cr_expect_str_eq(peer.workload, "web");
    cr_expect_str_eq(peer.workload_kind, "Deployment");
    cr_expect_str_eq(peer.node, NODE);
    cr_expect_str_eq(peer.service, "kept", "fields the index does not know are left alone");

    cr_expect_str_eq(peer_of(k, "fd00::5"), "web-7d9c6b8f5d-x2k8p");
    cr_expect_str_eq(peer_of(k, "::ffff:10.244.1.5"), "web-7d9c6b8f5d-x2k8p", "v4-mapped");
    cr_expect_null(peer_of(k, "10.244.1.6"));
    cr_expect_null(peer_of(k, "fd00::6"));

    struct k8s_stats st;
    k8s_get_stats(k, &st);
    cr_expect_eq(st.peer_lookups, 5);
    cr_expect_eq(st.peer_hits, 3);
    cr_expect_eq(st.peer_ambiguous, 0);
    k8s_free(k);
}

/* A completed pod (a Job's, phase Succeeded or Failed) may keep its addresses in the object;
 * they are the running pod's that has them now, which alone is named. */
Test(k8s_identity, a_completed_pod_claims_no_address)
{
    struct k8s *k = feed_client(0);
    feed_pod(k, "ADDED",
             &(struct kas_pod){UID(1), "report-28374650-abcde", "jobs", NODE, .owner_kind = "Job",
                               .owner_name = "report-28374650", .ips = {"10.244.1.11"},
                               .phase = "Succeeded"});
    feed_pod(k, "ADDED",
             &(struct kas_pod){UID(2), "migrate-x", "jobs", NODE, .ips = {"10.244.1.12"},
                               .phase = "Failed"});
    feed_pod(
        k, "ADDED",
        &(struct kas_pod){UID(3), "web-7d4b9c8f5d-r2d2x", "shop", NODE, .ips = {"10.244.1.11"}});
    cr_expect_str_eq(peer_of(k, "10.244.1.11"), "web-7d4b9c8f5d-r2d2x");
    cr_expect_null(peer_of(k, "10.244.1.12"));
    cr_expect_null(cached(k, UID(1)).ips);
    struct k8s_stats st;
    k8s_get_stats(k, &st);
    cr_expect_eq(st.peer_ambiguous, 0);
    k8s_free(k);
}

Test(k8s_identity, a_dns_answer_names_the_pod_its_addresses_are)
{
    struct k8s *k = feed_client(0);
    feed_pod(k, "ADDED",
             &(struct kas_pod){UID(1), "db-0", "shop", NODE, .owner_kind = "StatefulSet",
                               .owner_name = "db", .ips = {"10.244.1.5", "fd00::5"}});
    static const char answers[] = "db-0.db.shop.svc.cluster.local\0"
                                  "10.244.1.5";
    static const char elsewhere[] = "10.244.1.5\0"
                                    "10.244.9.9"; /* the second is no pod of this node */
    struct event e = {
        .type = EVENT_DNS, .status = EVENT_STATUS_ANSWERED, .family = EVENT_FAMILY_IPV4};
    e.u.dns.answers = (char *)answers;
    e.u.dns.answers_len = sizeof(answers);
    k8s_enrich(k, NULL, &e);
    cr_expect_str_eq(e.peer.pod, "db-0");
    cr_expect_str_eq(e.peer.workload, "db");
    cr_expect_str_eq(e.peer.workload_kind, "StatefulSet");
    cr_expect_str_eq(e.peer.node, NODE);

    struct event other = e;
    memset(&other.peer, 0, sizeof(other.peer));
    other.u.dns.answers = (char *)elsewhere;
    other.u.dns.answers_len = sizeof(elsewhere);
    k8s_enrich(k, NULL, &other);
    cr_expect_null(other.peer.pod, "one address is not known here: the aggregator's to name");
    cr_expect_null(other.peer.workload);
    k8s_free(k);
}

Test(k8s_identity, an_address_several_pods_share_names_no_one)
{
    struct k8s *k = feed_client(0);
    /* two hostNetwork pods: both have the node's address */
    feed_pod(k, "ADDED",
             &(struct kas_pod){UID(1), "kube-proxy", "kube-system", NODE, .host_network = true,
                               .ips = {"192.0.2.10"}});
    feed_pod(k, "ADDED",
             &(struct kas_pod){UID(2), "node-exporter", "monitoring", NODE, .host_network = true,
                               .ips = {"192.0.2.10"}});
    cr_expect_null(peer_of(k, "192.0.2.10"));
    /* one hostNetwork pod alone still shares the address with the node */
    feed_pod(k, "ADDED",
             &(struct kas_pod){UID(3), "cilium", "kube-system", NODE, .host_network = true,
                               .ips = {"2001:db8::10"}});
    cr_expect_null(peer_of(k, "2001:db8::10"));
    struct k8s_stats st;
    k8s_get_stats(k, &st);
    cr_expect_eq(st.peer_ambiguous, 2);
    cr_expect_eq(st.peer_hits, 0);
    k8s_free(k);
}

Test(k8s_identity, a_deleted_pods_address_names_no_one_and_a_reused_one_waits_for_its_tombstone)
{
    struct k8s *k = feed_client(300);
    struct kas_pod old = {UID(1), "old", "n", NODE, .ips = {"10.244.1.7"}};
    struct kas_pod fresh = {UID(2), "fresh", "n", NODE, .ips = {"10.244.1.7"}};
    feed_pod(k, "ADDED", &old);
    cr_expect_str_eq(peer_of(k, "10.244.1.7"), "old");
    feed_pod(k, "DELETED", &old);
    cr_expect_null(peer_of(k, "10.244.1.7"), "a deleted pod is no peer");

    /* the address comes back with another pod while the old one is a tombstone */
    feed_pod(k, "ADDED", &fresh);
    cr_expect_null(peer_of(k, "10.244.1.7"), "old or fresh: not known for sure");
    struct k8s_stats st;
    k8s_get_stats(k, &st);
    cr_expect_eq(st.peer_ambiguous, 1);

    /* once the tombstone has expired, the address is the new pod's alone */
    bool named = false;
    for (int i = 0; i < 2000 && !named; i++) {
        const char *p = peer_of(k, "10.244.1.7");
        named = p && strcmp(p, "fresh") == 0;
        if (!named)
            usleep(1000);
    }
    cr_expect(named, "the new pod never named after the old one's TTL");

    /* a pod whose addresses change is indexed by its new ones only */
    fresh.ips[0] = "10.244.1.8";
    feed_pod(k, "MODIFIED", &fresh);
    cr_expect_null(peer_of(k, "10.244.1.7"));
    cr_expect_str_eq(peer_of(k, "10.244.1.8"), "fresh");
    k8s_free(k);
}

static void expect_peer(struct k8s *k, struct event *e, const char *pod)
{
    k8s_enrich(k, NULL, e);
    if (pod)
        cr_expect_str_eq(e->peer.pod, pod, "event type %u", e->type);
    else
        cr_expect_null(e->peer.pod, "event type %u", e->type);
}

Test(k8s_identity, enrich_names_the_other_side_of_each_event)
{
    struct k8s *k = feed_client(0);
    feed_pod(k, "ADDED", &(struct kas_pod){UID(1), "client", "n", NODE, .ips = {"10.244.1.1"}});
    feed_pod(k, "ADDED", &(struct kas_pod){UID(2), "server", "n", NODE, .ips = {"10.244.1.2"}});
    struct event e = {.family = EVENT_FAMILY_IPV4};
    inet_pton(AF_INET, "10.244.1.1", e.saddr); /* source = the client, always */
    inet_pton(AF_INET, "10.244.1.2", e.daddr);

    e.type = EVENT_CONNECTION;
    expect_peer(k, &e, "server");
    cr_expect_str_eq(e.peer.namespace, "n");
    cr_expect_str_eq(e.peer.workload, "server");
    cr_expect_str_eq(e.peer.workload_kind, "Pod");
    cr_expect_str_eq(e.peer.node, NODE);
    memset(&e.peer, 0, sizeof(e.peer));
    e.type = EVENT_ACCEPT;
    expect_peer(k, &e, "client");
    memset(&e.peer, 0, sizeof(e.peer));
    e.type = EVENT_CLOSE;
    e.u.close.role = EVENT_ROLE_CLIENT;
    expect_peer(k, &e, "server");
    memset(&e.peer, 0, sizeof(e.peer));
    e.u.close.role = EVENT_ROLE_SERVER;
    expect_peer(k, &e, "client");
    memset(&e.peer, 0, sizeof(e.peer));
    e.type = EVENT_EXEC;
    expect_peer(k, &e, NULL);
    e.type = EVENT_CONNECTION;
    e.family = EVENT_FAMILY_NONE;
    expect_peer(k, &e, NULL);
    k8s_free(k);
}

/* ---- a Job's CronJob, read from the API server ---- */

#define CRON_JOB_UID  "6f1c2a3b-0001-4c5d-8e9f-0000000000c1"
#define PLAIN_JOB_UID "6f1c2a3b-0001-4c5d-8e9f-0000000000c2"
#define GONE_JOB_UID  "6f1c2a3b-0001-4c5d-8e9f-0000000000c3"
#define OTHER_JOB_UID "6f1c2a3b-0001-4c5d-8e9f-0000000000c4"

static void h_job_pods(struct kas *s, struct kas_conn *c, enum kas_req_kind kind, int n)
{
    if (kind == KAS_LIST) {
        const struct kas_pod pods[] = {
            {UID(1), "report-28934160-abcde", "batch", NODE, "10", .owner_kind = "Job",
             .owner_name = "report-28934160", .owner_uid = CRON_JOB_UID},
            {UID(2), "report-28934160-fghij", "batch", NODE, "11", .owner_kind = "Job",
             .owner_name = "report-28934160", .owner_uid = CRON_JOB_UID},
            {UID(3), "migrate-x7k2p", "batch", NODE, "12", .owner_kind = "Job",
             .owner_name = "migrate", .owner_uid = PLAIN_JOB_UID},
            {UID(4), "gone-q2w3e", "batch", NODE, "13", .owner_kind = "Job", .owner_name = "gone",
             .owner_uid = GONE_JOB_UID},
            /* a Job of that name exists, but it is another one (recreated) */
            {UID(5), "renamed-r4t5y", "batch", NODE, "14", .owner_kind = "Job",
             .owner_name = "nightly", .owner_uid = OTHER_JOB_UID},
        };
        char *items[5];
        for (int i = 0; i < 5; i++)
            cr_assert_not_null(items[i] = kas_pod_object(&pods[i]));
        char *body = pod_list("20", (const char *const *)items, 5);
        kas_respond(c, 200, "OK", body);
        free(body);
        for (int i = 0; i < 5; i++)
            free(items[i]);
        return;
    }
    kas_stream_begin(c);
    kas_hold(s, c);
}

static void add_job(struct kas *s, const char *name, const char *uid, const char *cronjob)
{
    char path[256];
    char *job = kas_job_json("batch", name, uid, cronjob);
    cr_assert_not_null(job);
    snprintf(path, sizeof(path), "/apis/batch/v1/namespaces/batch/jobs/%s", name);
    cr_assert_eq(kas_add_object(s, path, job), 0);
    free(job);
}

Test(k8s_identity, a_job_pod_is_its_cronjobs_and_a_job_that_cannot_be_read_stays_a_job)
{
    struct kas s;
    srv_start(&s, h_job_pods);
    add_job(&s, "report-28934160", CRON_JOB_UID, "report");
    add_job(&s, "migrate", PLAIN_JOB_UID, NULL);
    add_job(&s, "nightly", "6f1c2a3b-0001-4c5d-8e9f-0000000000ff", "nightly-cron");
    struct k8s *k = start_client(&s, 0);

    struct k8s_stats st;
    for (int i = 0; i < 5000; i++) {
        k8s_get_stats(k, &st);
        if (st.job_lookups >= 4)
            break;
        usleep(1000);
    }
    cr_assert_eq(st.job_lookups, 4, "one GET per Job, not per pod");
    cr_expect_eq(st.job_errors, 2, "the 404 and the Job of another UID");
    cr_expect(strstr(st.last_error, "jobs/"), "%s", st.last_error);

    struct {
        const char *uid, *workload, *kind;
    } want[] = {{UID(1), "report", "CronJob"},
                {UID(2), "report", "CronJob"},
                {UID(3), "migrate", "Job"},
                {UID(4), "gone", "Job"},
                {UID(5), "nightly", "Job"}};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        struct k8s_pod p = cached(k, want[i].uid);
        cr_expect_str_eq(p.workload, want[i].workload, "%s", p.name);
        cr_expect_str_eq(p.workload_kind, want[i].kind, "%s", p.name);
    }
    pthread_mutex_lock(&s.lock);
    cr_expect_eq(s.gets, 4);
    pthread_mutex_unlock(&s.lock);
    stop_all(k, &s);
}

/*
 * A deleted pod's addresses are queued for the bus (k8s_take_gone), oldest first (a re-list
 * that no longer holds a pod goes through the same cache_mark_deleted); a pod without
 * addresses is not, and a full queue loses its oldest, counted.
 */
Test(k8s_identity, deleted_pods_are_queued_for_the_aggregators)
{
    struct k8s *k = feed_client(300);
    struct kas_pod a = {UID(1), "web-a", "shop", NODE, .ips = {"10.244.1.7", "fd00::7"}};
    struct kas_pod b = {UID(2), "web-b", "shop", NODE, .ips = {"10.244.1.8"}};
    struct kas_pod bare = {UID(3), "pending", "shop", NODE};
    struct peers_pod out[4];

    feed_pod(k, "ADDED", &a);
    feed_pod(k, "ADDED", &b);
    feed_pod(k, "ADDED", &bare);
    cr_assert_eq(k8s_take_gone(k, out, 4), 0, "nothing deleted yet");
    uint64_t before = (uint64_t)time(NULL) * 1000000000ull;
    feed_pod(k, "DELETED", &a);
    feed_pod(k, "DELETED", &bare);
    feed_pod(k, "DELETED", &a); /* a repeat changes nothing */
    /* Deleted after its sandbox went: the final object lists no IP, the cached ones go out. */
    struct kas_pod b_gone = {UID(2), "web-b", "shop", NODE};
    feed_pod(k, "DELETED", &b_gone);

    cr_assert_eq(k8s_take_gone(k, out, 1), 1, "at most max");
    cr_assert_str_eq(out[0].pod, "web-a");
    cr_assert_str_eq(out[0].namespace, "shop");
    cr_assert_str_eq(out[0].uid, UID(1));
    cr_assert_str_eq(out[0].node, NODE);
    cr_assert_eq(out[0].n_ips, 2);
    cr_assert_eq(out[0].family[0], EVENT_FAMILY_IPV4);
    cr_assert_eq(out[0].family[1], EVENT_FAMILY_IPV6);
    cr_assert_geq(out[0].gone_ns, before, "realtime, as the aggregators' clocks");
    cr_assert_lt(out[0].gone_ns, before + 60 * 1000000000ull);
    cr_assert_eq(k8s_take_gone(k, out, 4), 1);
    cr_assert_str_eq(out[0].pod, "web-b");
    cr_assert_eq(out[0].n_ips, 1, "the addresses it had");
    cr_assert_eq(k8s_take_gone(k, out, 4), 0);

    for (int i = 0; i < K8S_GONE_MAX + 2; i++) {
        char uid[64], name[32];
        snprintf(uid, sizeof(uid), "10000000-0000-4000-8000-%012d", i);
        snprintf(name, sizeof(name), "p-%d", i);
        struct kas_pod p = {uid, name, "shop", NODE, .ips = {"10.244.9.9"}};
        feed_pod(k, "ADDED", &p);
        feed_pod(k, "DELETED", &p);
    }
    struct k8s_stats st;
    k8s_get_stats(k, &st);
    cr_assert_eq(st.deletions, 2 + K8S_GONE_MAX + 2);
    cr_assert_eq(st.deletions_dropped, 2);
    cr_assert_eq(k8s_take_gone(k, out, 1), 1);
    cr_assert_str_eq(out[0].pod, "p-2", "the oldest two were lost");
    k8s_free(k);
}

static bool has_uid(const char *const *uids, int n, const char *uid)
{
    for (int i = 0; i < n; i++)
        if (uids[i] == intern(uid))
            return true;
    return false;
}

/*
 * The node's pods for the aggregators (k8s_take_present): none before the
 * first LIST completed, then every pod the cache holds (a static pod by both
 * its UIDs), once; more than the list may carry gives none.
 */
Test(k8s, the_nodes_pods_are_handed_out_once_after_the_first_list)
{
    const char *uids[8];
    uint64_t at = 0;
    struct k8s *nolist = feed_client(0);
    cr_assert_eq(k8s_take_present(nolist, uids, 8, &at), -EAGAIN, "never listed");
    k8s_free(nolist);

    struct kas s;
    srv_start(&s, h_list_then_watch);
    struct k8s *k = start_client(&s, 0);
    expect_pod(k, ADDED_UID, "job-abc12", "batch"); /* the LIST and the watch's ADDED applied */
    uint64_t before = (uint64_t)time(NULL) * 1000000000ull;
    int n = k8s_take_present(k, uids, 8, &at);
    cr_assert_eq(n, 5, "%d", n);
    cr_assert(has_uid(uids, n, WEB_UID) && has_uid(uids, n, REDIS_UID) &&
              has_uid(uids, n, PROXY_UID) && has_uid(uids, n, PROXY_HASH) &&
              has_uid(uids, n, ADDED_UID));
    cr_assert_geq(at, before, "realtime, as the aggregators' clocks");
    cr_assert_lt(at, before + 60 * 1000000000ull);
    cr_assert_eq(k8s_take_present(k, uids, 8, &at), -EALREADY, "once");

    struct k8s *small = start_client(&s, 0);
    expect_pod(small, ADDED_UID, "job-abc12", "batch");
    cr_assert_eq(k8s_take_present(small, uids, 4, &at), -E2BIG);
    cr_assert_eq(k8s_take_present(small, uids, 8, &at), -EALREADY, "not asked again");
    k8s_free(small);
    stop_all(k, &s);
}

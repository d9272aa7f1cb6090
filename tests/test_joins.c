/*
 * Tests for pkg/joins: the client's connection to a ClusterIP joined with the
 * backend's accept of the same client address and port, in either order
 * within the window; out of time, two backends, or a full queue leave it
 * unjoined and counted by reason; the bounds; the announcement codec.
 */
#include "joins.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "intern.h"
#include "k8s_services.h"

#define SEC    1000000000ull
#define T0     (1795698266ull * SEC)
#define WINDOW (2 * SEC)

static struct event client_conn(const char *ip, uint16_t port)
{
    struct event e = {.type = EVENT_CONNECTION, .family = EVENT_FAMILY_IPV4, .protocol = 6};
    cr_assert_eq(inet_pton(AF_INET, ip, e.saddr), 1);
    cr_assert_eq(inet_pton(AF_INET, "10.96.0.10", e.daddr), 1);
    e.sport = port;
    e.dport = 80;
    e.peer.service = intern("shop/web");
    e.u.conn.error = NULL;
    return e;
}

static struct joins_half half(const char *ip, uint16_t port, const char *pod, uint64_t ts)
{
    struct event acc = {.type = EVENT_ACCEPT, .family = EVENT_FAMILY_IPV4, .protocol = 6};
    cr_assert_eq(inet_pton(AF_INET, ip, acc.saddr), 1);
    acc.sport = port;
    struct joins_half h = {.ts_ns = ts};
    cr_assert(joins_event_key(&acc, &h.key));
    h.backend = (struct event_peer){.pod = intern(pod),
                                    .namespace = intern("shop"),
                                    .workload = intern("web"),
                                    .workload_kind = intern("Deployment"),
                                    .node = intern("node-b")};
    return h;
}

Test(joins, a_held_connection_joins_the_server_half_that_comes_later)
{
    struct joins *j = joins_new(64, 16, WINDOW);
    struct event e = client_conn("10.1.0.5", 40001), out[4];

    cr_assert(joins_hold(j, &e, T0));
    cr_assert_eq(e.type, 0, "moved out");
    cr_assert_eq(joins_release(j, T0 + 1, out, 4), 0, "still waiting");
    struct joins_half h = half("10.1.0.5", 40001, "web-1", T0 + 2);
    joins_add_half(j, &h, T0 + 2);
    cr_assert_eq(joins_release(j, T0 + 3, out, 4), 1);
    cr_assert_str_eq(out[0].peer.pod, "web-1");
    cr_assert_str_eq(out[0].peer.node, "node-b");
    cr_assert_str_eq(out[0].peer.service, "shop/web", "kept");
    struct joins_stats st;
    joins_get_stats(j, &st);
    cr_assert_eq(st.joined, 1);
    cr_assert_eq(st.held, 0);
    event_clear(&out[0]);
    joins_free(j);
}

Test(joins, a_server_half_first_joins_at_once_other_ports_do_not)
{
    struct joins *j = joins_new(64, 16, WINDOW);
    struct joins_half h = half("10.1.0.5", 40001, "web-1", T0);
    struct event a = client_conn("10.1.0.5", 40001), b = client_conn("10.1.0.5", 40002), out[4];

    joins_add_half(j, &h, T0);
    cr_assert(joins_hold(j, &a, T0 + 1));
    cr_assert(joins_hold(j, &b, T0 + 1));
    size_t n = joins_release(j, T0 + 2, out, 4);
    cr_assert_eq(n, 1);
    cr_assert_eq(out[0].sport, 40001);
    cr_assert_str_eq(out[0].peer.pod, "web-1");
    event_clear(&out[0]);
    n = joins_release(j, T0 + 1 + WINDOW, out, 4);
    cr_assert_eq(n, 1, "out of time");
    cr_assert_eq(out[0].sport, 40002);
    cr_assert_null(out[0].peer.pod);
    struct joins_stats st;
    joins_get_stats(j, &st);
    cr_assert_eq(st.unjoined[JOINS_NO_SERVER_HALF], 1);
    event_clear(&out[0]);
    joins_free(j);
}

Test(joins, two_backends_for_one_client_address_join_neither)
{
    struct joins *j = joins_new(64, 16, WINDOW);
    struct joins_half h1 = half("10.1.0.5", 40001, "web-1", T0);
    struct joins_half h2 = half("10.1.0.5", 40001, "web-2", T0 + 1);
    struct event e = client_conn("10.1.0.5", 40001), out[1];

    joins_add_half(j, &h1, T0);
    joins_add_half(j, &h2, T0 + 1);
    cr_assert(joins_hold(j, &e, T0 + 2));
    cr_assert_eq(joins_release(j, T0 + 3, out, 1), 1);
    cr_assert_null(out[0].peer.pod);
    struct joins_stats st;
    joins_get_stats(j, &st);
    cr_assert_eq(st.unjoined[JOINS_SEVERAL], 1);
    /* An old half is no candidate: after the window the port's next connection joins. */
    struct joins_half h3 = half("10.1.0.5", 40001, "web-3", T0 + 10 * SEC);
    joins_add_half(j, &h3, T0 + 10 * SEC);
    struct event e2 = client_conn("10.1.0.5", 40001);
    cr_assert(joins_hold(j, &e2, T0 + 10 * SEC));
    event_clear(&out[0]);
    cr_assert_eq(joins_release(j, T0 + 10 * SEC + 1, out, 1), 1);
    cr_assert_str_eq(out[0].peer.pod, "web-3");
    event_clear(&out[0]);
    joins_free(j);
}

Test(joins, bounds_are_counted)
{
    struct joins *j = joins_new(16, 1, WINDOW);
    struct event a = client_conn("10.1.0.5", 1), b = client_conn("10.1.0.5", 2);
    cr_assert(joins_hold(j, &a, T0));
    cr_assert_not(joins_hold(j, &b, T0), "queue full");
    cr_assert_eq(b.sport, 2, "left to the caller");
    for (int i = 0; i < 40; i++) {
        struct joins_half h = half("10.1.0.9", (uint16_t)(1000 + i), "web-1", T0);
        joins_add_half(j, &h, T0);
    }
    struct joins_stats st;
    joins_get_stats(j, &st);
    cr_assert_eq(st.unjoined[JOINS_HELD_FULL], 1);
    cr_assert_eq(st.halves, 16);
    cr_assert_eq(st.halves_evicted, 24);
    joins_free(j); /* frees the held event */
}

/* Service shop/web: ClusterIP 10.96.0.10 port 80, backed by 10.1.0.7 (pod web-1 on node-b). */
static struct k8s_services *web_service(void)
{
    static const char services[] =
        "{\"kind\":\"ServiceList\",\"apiVersion\":\"v1\",\"metadata\":{\"resourceVersion\":\"1\"},"
        "\"items\":[{\"metadata\":{\"name\":\"web\",\"namespace\":\"shop\"},\"spec\":"
        "{\"clusterIP\":\"10.96.0.10\",\"ports\":[{\"port\":80,\"protocol\":\"TCP\"}]}}]}";
    static const char slices[] =
        "{\"kind\":\"EndpointSliceList\",\"apiVersion\":\"discovery.k8s.io/v1\",\"metadata\":"
        "{\"resourceVersion\":\"1\"},\"items\":[{\"metadata\":{\"name\":\"web-x\",\"namespace\":"
        "\"shop\",\"labels\":{\"kubernetes.io/service-name\":\"web\"}},\"addressType\":\"IPv4\","
        "\"endpoints\":[{\"addresses\":[\"10.1.0.7\"]}],\"ports\":[{\"port\":8080}]}]}";
    char err[256];
    int rc = 0;
    unsetenv("KUBERNETES_SERVICE_HOST");
    struct k8s_services *s = k8s_services_new(NULL, 16, &rc);
    cr_assert_not_null(s);
    cr_assert_eq(k8s_services_feed(s, false, false, services, strlen(services), err, sizeof(err)),
                 0, "%s", err);
    cr_assert_eq(k8s_services_feed(s, true, false, slices, strlen(slices), err, sizeof(err)), 0,
                 "%s", err);
    return s;
}

struct announced {
    int calls;
    struct joins_half h[4];
    size_t n;
};

static void record_announce(void *ctx, const struct joins_half *h, size_t n)
{
    struct announced *a = ctx;
    a->calls++;
    for (size_t i = 0; i < n && a->n < 4; i++)
        a->h[a->n++] = h[i];
}

/* The accept by web-1 (10.1.0.7:8080, the backend of shop/web) of a client at ip:port. */
static struct event backend_accept(const char *ip, uint16_t port)
{
    struct event e = {.type = EVENT_ACCEPT, .family = EVENT_FAMILY_IPV4, .protocol = 6};
    cr_assert_eq(inet_pton(AF_INET, ip, e.saddr), 1);
    cr_assert_eq(inet_pton(AF_INET, "10.1.0.7", e.daddr), 1);
    e.sport = port;
    e.dport = 8080;
    e.k8s.pod_name = intern("web-1");
    e.k8s.namespace = intern("shop");
    e.k8s.workload = intern("web");
    e.k8s.workload_kind = intern("Deployment");
    e.k8s.node_name = intern("node-b");
    return e;
}

Test(joins, a_batch_holds_client_halves_and_announces_server_halves)
{
    struct k8s_services *svc = web_service();
    struct joins *j = joins_new(64, 16, WINDOW);
    struct event ev[5], out[4];

    /* 0: to the ClusterIP, backend unknown: held. 1: the backend's accept of it. 2: to the
     * ClusterIP with its peer pod known: kept. 3: to an address no Service has: kept. 4: an
     * accept of a pod that backs no Service: kept, no half. */
    ev[0] = client_conn("10.1.0.5", 40001);
    ev[1] = backend_accept("10.1.0.5", 40001);
    ev[2] = client_conn("10.1.0.6", 40002);
    ev[2].peer.pod = intern("web-1");
    ev[3] = client_conn("10.1.0.6", 40003);
    cr_assert_eq(inet_pton(AF_INET, "10.2.0.1", ev[3].daddr), 1);
    ev[4] = ev[1];
    cr_assert_eq(inet_pton(AF_INET, "10.1.0.8", ev[4].daddr), 1);
    ev[4].k8s.pod_name = intern("other-1");

    uint8_t sides[5];
    k8s_services_enrich(svc, ev, 5, true, sides);
    cr_assert_eq(sides[0], K8S_SIDE_TO_CLUSTER_IP);
    cr_assert_eq(sides[1], K8S_SIDE_BACKEND);
    cr_assert_eq(sides[2], K8S_SIDE_TO_CLUSTER_IP);
    cr_assert_eq(sides[3], K8S_SIDE_NONE);
    cr_assert_eq(sides[4], K8S_SIDE_NONE);
    struct announced a = {0};
    size_t n = joins_batch(j, sides, ev, 5, T0, record_announce, &a);
    cr_assert_eq(n, 4, "the connection to the ClusterIP is held");
    cr_assert_eq(ev[0].type, EVENT_ACCEPT, "in order: the accept moved up");
    cr_assert_eq(ev[1].sport, 40002);
    cr_assert_eq(ev[2].sport, 40003);
    cr_assert_str_eq(ev[3].k8s.pod_name, "other-1");
    cr_assert_eq(a.calls, 1);
    cr_assert_eq(a.n, 1);
    cr_assert_eq(a.h[0].key.port, 40001);
    cr_assert_str_eq(a.h[0].backend.pod, "web-1");
    cr_assert_str_eq(a.h[0].backend.node, "node-b");

    cr_assert_eq(joins_release(j, T0 + 1, out, 4), 1);
    cr_assert_eq(out[0].sport, 40001);
    cr_assert_str_eq(out[0].peer.pod, "web-1");
    cr_assert_str_eq(out[0].peer.workload, "web");
    event_clear(&out[0]);
    joins_free(j);
    k8s_services_free(svc);
}

/* The backend's accept before the client's connection (same batch or an earlier one). */
Test(joins, a_client_half_whose_server_half_is_here_joins_in_its_batch)
{
    struct k8s_services *svc = web_service();
    struct joins *j = joins_new(64, 16, WINDOW);
    struct event ev[2];

    ev[0] = backend_accept("10.1.0.9", 40009);
    ev[1] = client_conn("10.1.0.9", 40009);
    uint8_t sides[2];
    k8s_services_enrich(svc, ev, 2, true, sides);
    struct announced a = {0};
    cr_assert_eq(joins_batch(j, sides, ev, 2, T0, record_announce, &a), 2, "nothing held");
    cr_assert_str_eq(ev[1].peer.pod, "web-1");
    cr_assert_str_eq(ev[1].peer.node, "node-b");
    struct joins_stats st;
    joins_get_stats(j, &st);
    cr_assert_eq(st.joined, 1);
    cr_assert_eq(st.held, 0);
    /* A second backend for the same client address within the window: neither is named. */
    ev[0].k8s.pod_name = intern("web-2");
    ev[1] = client_conn("10.1.0.9", 40009);
    k8s_services_enrich(svc, ev, 2, true, sides);
    cr_assert_eq(joins_batch(j, sides, ev, 2, T0 + 1, record_announce, &a), 2);
    cr_assert_null(ev[1].peer.pod);
    joins_get_stats(j, &st);
    cr_assert_eq(st.unjoined[JOINS_SEVERAL], 1);
    cr_assert_eq(a.n, 2);
    joins_free(j);
    k8s_services_free(svc);
}

Test(joins, announcements_round_trip_and_hostile_ones_are_refused)
{
    struct joins_half in[2] = {half("10.1.0.5", 40001, "web-1", T0),
                               half("10.1.0.6", 40002, "web-2", T0 + 1)};
    in[1].backend.workload = NULL;
    struct buf b;
    buf_init(&b);
    joins_announce_write(&b, "0123456789abcdef", in, 2);
    struct joins_half out[2];
    char replica[17], err[256];
    cr_assert_eq(
        joins_announce_parse(b.data, b.len, replica, sizeof(replica), out, 2, err, sizeof(err)), 2,
        "%s: %s", err, b.data);
    cr_assert_str_eq(replica, "0123456789abcdef");
    cr_assert(memcmp(&out[0].key, &in[0].key, sizeof(in[0].key)) == 0);
    cr_assert_eq(out[1].backend.pod, in[1].backend.pod);
    cr_assert_null(out[1].backend.workload);
    cr_assert_eq(out[1].ts_ns, T0 + 1);
    buf_free(&b);

    static const char *bad[] = {
        "x",
        "{\"replica\":\"r\"}",
        "{\"replica\":\"r\",\"halves\":[{\"ip\":\"10.0.0.1\",\"port\":70000,\"protocol\":6,"
        "\"ts_ns\":1,\"pod\":\"p\",\"namespace\":\"n\"}]}",
        "{\"replica\":\"r\",\"halves\":[{\"ip\":\"nope\",\"port\":1,\"protocol\":6,"
        "\"ts_ns\":1,\"pod\":\"p\",\"namespace\":\"n\"}]}",
        "{\"replica\":\"r\",\"halves\":[{\"ip\":\"10.0.0.1\",\"port\":1,\"protocol\":6,"
        "\"ts_ns\":1,\"namespace\":\"n\"}]}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        cr_assert_eq(joins_announce_parse(bad[i], strlen(bad[i]), replica, sizeof(replica), out, 2,
                                          err, sizeof(err)),
                     -EINVAL, "accepted %s", bad[i]);
        cr_assert_neq(err[0], '\0');
    }
}

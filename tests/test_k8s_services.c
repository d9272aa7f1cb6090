/*
 * Tests for pkg/k8s_services: ServiceList and EndpointSliceList pages and
 * watch events in the API server's format (as kubectl get -o json shows
 * them) into the address -> Service index: a ClusterIP names its Service on
 * its ports only, a backend on any port, an address backing two Services
 * names neither, deletions and re-lists forget, and enrichment fills only
 * an empty peer_service of the peer side.
 */
#include "k8s_services.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "intern.h"

static const char *SERVICES =
    "{\"kind\":\"ServiceList\",\"apiVersion\":\"v1\",\"metadata\":{\"resourceVersion\":\"100\"},"
    "\"items\":["
    "{\"metadata\":{\"name\":\"web\",\"namespace\":\"shop\",\"uid\":\"u1\","
    "\"resourceVersion\":\"90\",\"labels\":{\"app\":\"web\"}},"
    "\"spec\":{\"type\":\"ClusterIP\",\"clusterIP\":\"10.96.0.10\",\"clusterIPs\":[\"10.96.0.10\","
    "\"fd00:96::10\"],\"ipFamilies\":[\"IPv4\",\"IPv6\"],\"ports\":[{\"name\":\"http\","
    "\"protocol\":\"TCP\",\"port\":80,\"targetPort\":8080}],\"selector\":{\"app\":\"web\"}},"
    "\"status\":{\"loadBalancer\":{}}},"
    "{\"metadata\":{\"name\":\"dns\",\"namespace\":\"kube-system\",\"uid\":\"u2\"},"
    "\"spec\":{\"clusterIP\":\"10.96.0.53\",\"ports\":[{\"port\":53,\"protocol\":\"UDP\"},"
    "{\"port\":53}]}},"
    "{\"metadata\":{\"name\":\"db\",\"namespace\":\"shop\",\"uid\":\"u3\"},"
    "\"spec\":{\"clusterIP\":\"None\",\"clusterIPs\":[\"None\"],\"ports\":[{\"port\":5432}]}},"
    "{\"metadata\":{\"name\":\"ext\",\"namespace\":\"shop\",\"uid\":\"u4\"},"
    "\"spec\":{\"type\":\"ExternalName\",\"externalName\":\"example.com\"}}"
    "]}";

static const char *SLICES =
    "{\"kind\":\"EndpointSliceList\",\"apiVersion\":\"discovery.k8s.io/v1\","
    "\"metadata\":{\"resourceVersion\":\"200\"},\"items\":["
    "{\"metadata\":{\"name\":\"web-abc12\",\"namespace\":\"shop\",\"labels\":"
    "{\"kubernetes.io/service-name\":\"web\",\"endpointslice.kubernetes.io/managed-by\":"
    "\"endpointslice-controller.k8s.io\"},\"ownerReferences\":[{\"apiVersion\":\"v1\","
    "\"kind\":\"Service\",\"name\":\"web\",\"uid\":\"u1\",\"controller\":true}]},"
    "\"addressType\":\"IPv4\",\"endpoints\":[{\"addresses\":[\"10.1.0.5\"],\"conditions\":"
    "{\"ready\":true,\"serving\":true,\"terminating\":false},\"nodeName\":\"node-a\","
    "\"targetRef\":{\"kind\":\"Pod\",\"namespace\":\"shop\",\"name\":\"web-1\",\"uid\":\"p1\"}},"
    "{\"addresses\":[\"10.1.0.6\"],\"conditions\":{\"ready\":false}}],"
    "\"ports\":[{\"name\":\"http\",\"protocol\":\"TCP\",\"port\":8080}]},"
    "{\"metadata\":{\"name\":\"web-canary-x\",\"namespace\":\"shop\",\"labels\":"
    "{\"kubernetes.io/service-name\":\"web-canary\"}},\"addressType\":\"IPv4\","
    "\"endpoints\":[{\"addresses\":[\"10.1.0.6\"]}]},"
    "{\"metadata\":{\"name\":\"db-q\",\"namespace\":\"shop\",\"labels\":"
    "{\"kubernetes.io/service-name\":\"db\"}},\"addressType\":\"IPv4\","
    "\"endpoints\":[{\"addresses\":[\"10.2.0.7\"]}]},"
    "{\"metadata\":{\"name\":\"fq\",\"namespace\":\"shop\",\"labels\":"
    "{\"kubernetes.io/service-name\":\"ext\"}},\"addressType\":\"FQDN\","
    "\"endpoints\":[{\"addresses\":[\"example.com\"]}]}"
    "]}";

/* An index fed a ServiceList and (slices not NULL) an EndpointSliceList, as listed. */
static struct k8s_services *open_fed_with(const char *services, const char *slices)
{
    char err[256];
    int rc = 0;
    unsetenv("KUBERNETES_SERVICE_HOST");
    struct k8s_services *s = k8s_services_new(NULL, 64, &rc);
    cr_assert_not_null(s, "rc %d", rc);
    cr_assert_eq(k8s_services_feed(s, false, false, services, strlen(services), err, sizeof(err)),
                 0, "%s", err);
    if (slices)
        cr_assert_eq(k8s_services_feed(s, true, false, slices, strlen(slices), err, sizeof(err)), 0,
                     "%s", err);
    return s;
}

static struct k8s_services *open_fed(void)
{
    return open_fed_with(SERVICES, SLICES);
}

static enum k8s_services_result look(struct k8s_services *s, const char *ip, uint16_t port,
                                     uint8_t proto, const char **svc)
{
    uint8_t a[16] = {0};
    unsigned fam = EVENT_FAMILY_IPV4;
    if (inet_pton(AF_INET, ip, a) != 1) {
        cr_assert_eq(inet_pton(AF_INET6, ip, a), 1);
        fam = EVENT_FAMILY_IPV6;
    }
    *svc = NULL;
    return k8s_services_lookup(s, fam, a, port, proto, svc);
}

Test(k8s_services, cluster_ips_name_their_service_on_their_ports)
{
    struct k8s_services *s = open_fed();
    const char *svc;

    cr_assert_eq(look(s, "10.96.0.10", 80, IPPROTO_TCP, &svc), K8S_SVC_CLUSTER_IP);
    cr_assert_str_eq(svc, "shop/web");
    cr_assert_eq(look(s, "fd00:96::10", 80, IPPROTO_TCP, &svc), K8S_SVC_CLUSTER_IP);
    cr_assert_eq(look(s, "10.96.0.10", 81, IPPROTO_TCP, &svc), K8S_SVC_MISS, "not its port");
    cr_assert_eq(look(s, "10.96.0.10", 80, IPPROTO_UDP, &svc), K8S_SVC_MISS, "not its protocol");
    cr_assert_eq(look(s, "10.96.0.53", 53, IPPROTO_UDP, &svc), K8S_SVC_CLUSTER_IP);
    cr_assert_eq(look(s, "10.96.0.53", 53, IPPROTO_TCP, &svc), K8S_SVC_CLUSTER_IP,
                 "protocol defaults to TCP");
    cr_assert_str_eq(svc, "kube-system/dns");
    struct k8s_services_stats st;
    k8s_services_get_stats(s, &st);
    cr_assert_eq(st.services, 4);
    cr_assert_eq(st.slices, 4);
    k8s_services_free(s);
}

/* A NUL in one Service's annotation (Go writes \u0000) costs neither the list nor the others;
 * a clusterIP cut by a NUL is no address. */
Test(k8s_services, a_nul_in_a_string_costs_only_that_string)
{
    static const char *list =
        "{\"kind\":\"ServiceList\",\"apiVersion\":\"v1\",\"metadata\":{\"resourceVersion\":"
        "\"100\"},\"items\":["
        "{\"metadata\":{\"name\":\"legacy\",\"namespace\":\"shop\",\"uid\":\"u9\","
        "\"annotations\":{\"note\":\"before\\u0000after\"}},"
        "\"spec\":{\"clusterIP\":\"10.96.0.90\",\"ports\":[{\"port\":80}]}},"
        "{\"metadata\":{\"name\":\"cut\",\"namespace\":\"shop\",\"uid\":\"u8\"},"
        "\"spec\":{\"clusterIP\":\"10.96.0.8\\u00001\",\"ports\":[{\"port\":80}]}},"
        "{\"metadata\":{\"name\":\"web\",\"namespace\":\"shop\",\"uid\":\"u1\"},"
        "\"spec\":{\"clusterIP\":\"10.96.0.10\",\"ports\":[{\"port\":80}]}}]}";
    struct k8s_services *s = open_fed_with(list, NULL);
    const char *svc;
    cr_assert_eq(look(s, "10.96.0.10", 80, IPPROTO_TCP, &svc), K8S_SVC_CLUSTER_IP);
    cr_assert_str_eq(svc, "shop/web");
    cr_assert_eq(look(s, "10.96.0.90", 80, IPPROTO_TCP, &svc), K8S_SVC_CLUSTER_IP);
    cr_assert_str_eq(svc, "shop/legacy");
    cr_assert_neq(look(s, "10.96.0.8", 80, IPPROTO_TCP, &svc), K8S_SVC_CLUSTER_IP,
                  "an address cut at its NUL");
    k8s_services_free(s);
}

Test(k8s_services, backends_name_their_one_service_and_shared_ones_name_none)
{
    struct k8s_services *s = open_fed();
    const char *svc;

    cr_assert_eq(look(s, "10.1.0.5", 8080, IPPROTO_TCP, &svc), K8S_SVC_BACKEND);
    cr_assert_str_eq(svc, "shop/web");
    cr_assert_eq(look(s, "10.1.0.5", 40000, IPPROTO_TCP, &svc), K8S_SVC_BACKEND, "any port");
    cr_assert_eq(look(s, "10.2.0.7", 5432, IPPROTO_TCP, &svc), K8S_SVC_BACKEND, "headless");
    cr_assert_str_eq(svc, "shop/db");
    cr_assert_eq(look(s, "10.1.0.6", 8080, IPPROTO_TCP, &svc), K8S_SVC_AMBIGUOUS);
    cr_assert_null(svc);
    cr_assert_eq(look(s, "10.9.9.9", 80, IPPROTO_TCP, &svc), K8S_SVC_MISS);
    k8s_services_free(s);
}

Test(k8s_services, watch_events_and_relists_change_the_index)
{
    struct k8s_services *s = open_fed();
    const char *svc;
    char err[256];

    const char *ev =
        "{\"type\":\"DELETED\",\"object\":{\"metadata\":{\"name\":\"web-canary-x\",\"namespace\":"
        "\"shop\",\"resourceVersion\":\"201\",\"labels\":{\"kubernetes.io/service-name\":"
        "\"web-canary\"}},\"addressType\":\"IPv4\",\"endpoints\":[]}}\n"
        "{\"type\":\"BOOKMARK\",\"object\":{\"kind\":\"EndpointSlice\",\"metadata\":"
        "{\"resourceVersion\":\"202\"}}}\n";
    cr_assert_eq(k8s_services_feed(s, true, true, ev, strlen(ev), err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(look(s, "10.1.0.6", 8080, IPPROTO_TCP, &svc), K8S_SVC_BACKEND,
                 "only web is left behind 10.1.0.6");
    cr_assert_str_eq(svc, "shop/web");

    const char *mod = "{\"type\":\"MODIFIED\",\"object\":{\"metadata\":{\"name\":\"web\","
                      "\"namespace\":\"shop\",\"resourceVersion\":\"101\"},\"spec\":{"
                      "\"clusterIP\":\"10.96.0.11\",\"ports\":[{\"port\":443}]}}}\n";
    cr_assert_eq(k8s_services_feed(s, false, true, mod, strlen(mod), err, sizeof(err)), 0, "%s",
                 err);
    cr_assert_eq(look(s, "10.96.0.10", 80, IPPROTO_TCP, &svc), K8S_SVC_MISS);
    cr_assert_eq(look(s, "10.96.0.11", 443, IPPROTO_TCP, &svc), K8S_SVC_CLUSTER_IP);

    const char *gone = "{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"code\":410,"
                       "\"message\":\"too old resource version\"}}\n";
    cr_assert_eq(k8s_services_feed(s, false, true, gone, strlen(gone), err, sizeof(err)), -ESTALE);
    const char *bad = "{\"items\":3}";
    cr_assert_eq(k8s_services_feed(s, false, false, bad, strlen(bad), err, sizeof(err)), -EINVAL);
    cr_assert(strstr(err, "ServiceList") != NULL, "%s", err);
    k8s_services_free(s);
}

Test(k8s_services, the_bound_refuses_and_counts)
{
    char err[256];
    int rc = 0;
    unsetenv("KUBERNETES_SERVICE_HOST");
    struct k8s_services *s = k8s_services_new(NULL, 2, &rc);
    cr_assert_not_null(s);
    cr_assert_eq(k8s_services_feed(s, false, false, SERVICES, strlen(SERVICES), err, sizeof(err)),
                 0, "%s", err);
    struct k8s_services_stats st;
    k8s_services_get_stats(s, &st);
    cr_assert_eq(st.services, 2);
    cr_assert_eq(st.refused, 2);
    k8s_services_free(s);
}

static struct event conn(enum event_type t, const char *src, uint16_t sport, const char *dst,
                         uint16_t dport)
{
    struct event e = {.type = t, .family = EVENT_FAMILY_IPV4, .protocol = IPPROTO_TCP};
    inet_pton(AF_INET, src, e.saddr);
    inet_pton(AF_INET, dst, e.daddr);
    e.sport = sport;
    e.dport = dport;
    return e;
}

Test(k8s_services, enrich_fills_the_peer_sides_empty_service)
{
    struct k8s_services *s = open_fed();
    struct event ev[4] = {
        conn(EVENT_CONNECTION, "10.1.0.9", 40000, "10.96.0.10", 80), /* to the ClusterIP */
        conn(EVENT_ACCEPT, "10.2.0.7", 40001, "10.1.0.5", 8080),     /* from db's backend */
        conn(EVENT_CONNECTION, "10.1.0.9", 40002, "10.96.0.10", 80), /* already named */
        conn(EVENT_EXEC, "10.1.0.9", 0, "10.96.0.10", 80),
    };
    ev[2].peer.service = intern("agent/said");
    k8s_services_enrich(s, ev, 4, true, NULL);
    cr_assert_str_eq(ev[0].peer.service, "shop/web");
    cr_assert_str_eq(ev[1].peer.service, "shop/db");
    cr_assert_str_eq(ev[2].peer.service, "agent/said");
    cr_assert_null(ev[3].peer.service);
    struct k8s_services_stats st;
    k8s_services_get_stats(s, &st);
    cr_assert_eq(st.lookups, 2);
    cr_assert_eq(st.results[K8S_SVC_CLUSTER_IP], 1);
    cr_assert_eq(st.results[K8S_SVC_BACKEND], 1);
    k8s_services_free(s);
}

/* An answered dns event with the NUL-separated answers a (len bytes). */
static struct event dns_answer(const char *a, size_t len)
{
    struct event e = conn(EVENT_DNS, "10.1.0.9", 40000, "10.96.0.53", 53);
    e.protocol = IPPROTO_UDP;
    e.status = EVENT_STATUS_ANSWERED;
    e.u.dns.answers = (char *)a;
    e.u.dns.answers_len = (uint32_t)len;
    return e;
}

Test(k8s_services, a_dns_answer_names_the_service_all_its_addresses_are)
{
    struct k8s_services *s = open_fed();
    static const char cluster_ip[] = "10.96.0.10";        /* web's ClusterIP: any port */
    static const char dual[] = "10.96.0.10\0fd00:96::10"; /* both of web's ClusterIPs */
    static const char headless[] = "db.shop.svc\0"
                                   "10.2.0.7"; /* a CNAME, then db's backend */
    static const char mixed[] = "10.96.0.10\0"
                                "10.2.0.7";  /* web and db: no one Service */
    static const char shared[] = "10.1.0.6"; /* backs two Services */
    struct event ev[] = {
        dns_answer(cluster_ip, sizeof(cluster_ip)), dns_answer(dual, sizeof(dual)),
        dns_answer(headless, sizeof(headless)),     dns_answer(mixed, sizeof(mixed)),
        dns_answer(shared, sizeof(shared)),
    };
    k8s_services_enrich(s, ev, 5, true, NULL);
    cr_assert_str_eq(ev[0].peer.service, "shop/web");
    cr_assert_str_eq(ev[1].peer.service, "shop/web");
    cr_assert_str_eq(ev[2].peer.service, "shop/db");
    cr_assert_null(ev[3].peer.service);
    cr_assert_null(ev[4].peer.service);
    struct k8s_services_stats st;
    k8s_services_get_stats(s, &st);
    cr_assert_eq(st.lookups, 5, "one per event");
    cr_assert_eq(st.results[K8S_SVC_AMBIGUOUS], 1);
    k8s_services_free(s);
}

/*
 * The join's sides: a connection to a ClusterIP on its port waits for its
 * backend's accept, and an accept on a backend is a server half; a connect
 * that failed (refused, timed out) reached no backend, so it is no client
 * half: holding it would only delay it and count it as unjoined.
 */
Test(k8s_services, a_failed_connect_to_a_cluster_ip_is_no_client_half)
{
    struct k8s_services *s = open_fed();
    struct event ev[4] = {
        conn(EVENT_CONNECTION, "10.1.0.9", 40000, "10.96.0.10", 80),
        conn(EVENT_CONNECTION, "10.1.0.9", 40001, "10.96.0.10", 80),
        conn(EVENT_CONNECTION, "10.1.0.9", 40002, "10.96.0.10", 80),
        conn(EVENT_ACCEPT, "10.1.0.9", 40003, "10.1.0.5", 8080),
    };
    uint8_t sides[4];
    ev[0].status = EVENT_STATUS_ESTABLISHED;
    ev[1].status = EVENT_STATUS_FAILED;
    ev[2].status = EVENT_STATUS_FAILED;
    ev[3].k8s.pod_name = intern("web-1");
    k8s_services_enrich(s, ev, 4, false, sides);
    cr_assert_eq(sides[0], K8S_SIDE_TO_CLUSTER_IP);
    cr_assert_eq(sides[1], K8S_SIDE_NONE, "a refused connect waits for no accept");
    cr_assert_eq(sides[2], K8S_SIDE_NONE);
    cr_assert_eq(sides[3], K8S_SIDE_BACKEND);
    cr_assert_str_eq(ev[1].peer.service, "shop/web", "still named by its ClusterIP");
    k8s_services_free(s);
}

/* A shared-address oracle for the test: 10.1.0.5 is a node's address. */
static bool node_address(void *ctx, unsigned family, const uint8_t addr[16])
{
    uint8_t node[4];
    inet_pton(AF_INET, "10.1.0.5", node);
    (*(int *)ctx)++;
    return family == EVENT_FAMILY_IPV4 && memcmp(addr, node, 4) == 0;
}

/*
 * A Service backed by a hostNetwork pod lists the node's address, which
 * every host process and hostNetwork pod on that node shares: a peer there
 * (here on a port the Service does not even use) names no Service, while
 * the ClusterIP still does, and the accepting backend is still a join half.
 */
Test(k8s_services, a_shared_node_address_names_no_service_as_a_backend)
{
    struct k8s_services *s = open_fed();
    int asked = 0;
    struct event ev[4] = {
        conn(EVENT_CONNECTION, "10.1.0.9", 40000, "10.1.0.5", 22),   /* something else there */
        conn(EVENT_ACCEPT, "10.1.0.5", 40001, "10.1.0.9", 8080),     /* from the node */
        conn(EVENT_CONNECTION, "10.1.0.9", 40002, "10.96.0.10", 80), /* the ClusterIP */
        conn(EVENT_ACCEPT, "10.1.0.9", 40003, "10.1.0.5", 8080),     /* the backend accepting */
    };
    uint8_t sides[4];
    ev[3].k8s.pod_name = intern("node-exporter-x");
    k8s_services_set_shared(s, node_address, &asked);
    k8s_services_enrich(s, ev, 4, true, sides);
    cr_assert_null(ev[0].peer.service, "named %s from a node's address", ev[0].peer.service);
    cr_assert_null(ev[1].peer.service, "named %s from a node's address", ev[1].peer.service);
    cr_assert_str_eq(ev[2].peer.service, "shop/web");
    cr_assert_null(ev[3].peer.service, "its peer 10.1.0.9 backs nothing");
    cr_assert_eq(sides[3], K8S_SIDE_BACKEND);
    cr_assert_gt(asked, 0);
    struct k8s_services_stats st;
    k8s_services_get_stats(s, &st);
    cr_assert_eq(st.results[K8S_SVC_AMBIGUOUS], 2);
    /* Without the oracle the old answer stands: the address backs shop/web. */
    struct event again = conn(EVENT_CONNECTION, "10.1.0.9", 40004, "10.1.0.5", 22);
    k8s_services_set_shared(s, NULL, NULL);
    k8s_services_enrich(s, &again, 1, false, NULL);
    cr_assert_str_eq(again.peer.service, "shop/web");
    k8s_services_free(s);
}

/*
 * Tests for pkg/peers: the cluster-wide IP -> pod map. Naming a peer from a
 * single valid claim, never from an ambiguous, hostNetwork or stale one; IP
 * reuse on a node (the newer pod ends the older after grace); the bound and
 * its eviction counter; enrichment that never overwrites the agent's
 * answer; pods taken from decoded events; the announcement codec against
 * hostile input; and concurrent use (run under TSan by make test).
 */
#include "event.h"
#include "intern.h"
#include "peers.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define SEC   1000000000ull
#define T0    (1795698266ull * SEC)
#define TTL   (60 * SEC)
#define GRACE (5 * SEC)

static struct peers_pod pod(const char *node, const char *ns, const char *name, const char *ip,
                            uint64_t seen)
{
    struct peers_pod p = {.node = intern(node),
                          .namespace = intern(ns),
                          .pod = intern(name),
                          .uid = intern(name), /* distinct per pod is all that matters */
                          .workload = intern(name),
                          .workload_kind = intern("Deployment"),
                          .seen_ns = seen};
    if (inet_pton(AF_INET, ip, p.ip[0]) == 1)
        p.family[0] = EVENT_FAMILY_IPV4;
    else {
        cr_assert_eq(inet_pton(AF_INET6, ip, p.ip[0]), 1, "bad test address %s", ip);
        p.family[0] = EVENT_FAMILY_IPV6;
    }
    p.n_ips = 1;
    return p;
}

static enum peers_result look(struct peers *p, const char *ip, uint64_t now, struct event_peer *out)
{
    uint8_t a[16] = {0};
    unsigned fam = EVENT_FAMILY_IPV4;
    if (inet_pton(AF_INET, ip, a) != 1) {
        cr_assert_eq(inet_pton(AF_INET6, ip, a), 1);
        fam = EVENT_FAMILY_IPV6;
    }
    memset(out, 0, sizeof(*out));
    return peers_lookup(p, fam, a, now, out);
}

Test(peers, one_live_pod_is_named_with_its_node_and_workload)
{
    struct peers *p = peers_new(64, TTL, GRACE);
    struct peers_pod a = pod("node-a", "shop", "web-1", "10.1.0.5", T0);
    struct event_peer out;

    cr_assert(peers_observe(p, &a), "a new pod is announced");
    cr_assert_eq(look(p, "10.1.0.5", T0 + SEC, &out), PEERS_HIT);
    cr_assert_str_eq(out.pod, "web-1");
    cr_assert_str_eq(out.namespace, "shop");
    cr_assert_str_eq(out.node, "node-a");
    cr_assert_str_eq(out.workload_kind, "Deployment");
    cr_assert_eq(look(p, "10.1.0.6", T0 + SEC, &out), PEERS_MISS);
    cr_assert_null(out.pod);

    struct peers_stats st;
    peers_get_stats(p, &st);
    cr_assert_eq(st.lookups, 2);
    cr_assert_eq(st.results[PEERS_HIT], 1);
    cr_assert_eq(st.results[PEERS_MISS], 1);
    cr_assert_eq(st.entries, 1);
    peers_free(p);
}

Test(peers, ipv6_addresses_are_keys_of_their_own)
{
    struct peers *p = peers_new(64, TTL, GRACE);
    struct peers_pod a = pod("node-a", "shop", "web-6", "fd00::10:5", T0);
    struct event_peer out;

    peers_observe(p, &a);
    cr_assert_eq(look(p, "fd00::10:5", T0, &out), PEERS_HIT);
    cr_assert_str_eq(out.pod, "web-6");
    cr_assert_eq(look(p, "fd00::10:6", T0, &out), PEERS_MISS);
    peers_free(p);
}

Test(peers, two_live_pods_on_two_nodes_make_the_address_ambiguous)
{
    struct peers *p = peers_new(64, TTL, GRACE);
    struct peers_pod a = pod("node-a", "shop", "web-1", "10.9.0.1", T0);
    struct peers_pod b = pod("node-b", "shop", "db-1", "10.9.0.1", T0 + SEC);
    struct event_peer out;

    peers_observe(p, &a);
    peers_observe(p, &b);
    cr_assert_eq(look(p, "10.9.0.1", T0 + 2 * SEC, &out), PEERS_AMBIGUOUS);
    cr_assert_null(out.pod, "an ambiguous address names nobody");
    peers_free(p);
}

Test(peers, host_network_pods_are_never_named)
{
    struct peers *p = peers_new(64, TTL, GRACE);
    struct peers_pod h = pod("node-a", "kube-system", "kube-proxy-x", "192.168.1.10", T0);
    struct event_peer out;

    h.host_network = true;
    peers_observe(p, &h);
    cr_assert_eq(look(p, "192.168.1.10", T0, &out), PEERS_HOST_NETWORK);
    cr_assert_null(out.pod);
    /* A second hostNetwork pod on the node does not end the first. */
    struct peers_pod h2 = pod("node-a", "monitoring", "node-exporter-y", "192.168.1.10", T0 + SEC);
    h2.host_network = true;
    peers_observe(p, &h2);
    cr_assert_eq(look(p, "192.168.1.10", T0 + 2 * SEC, &out), PEERS_HOST_NETWORK);
    peers_free(p);
}

/* What peers_host_network says of an address: a node's only while a hostNetwork pod claims it. */
Test(peers, a_host_network_address_is_known_as_shared_while_claimed)
{
    struct peers *p = peers_new(64, TTL, GRACE);
    struct peers_pod h = pod("node-a", "monitoring", "node-exporter-x", "192.168.1.10", T0);
    struct peers_pod web = pod("node-a", "shop", "web-1", "10.1.0.5", T0);
    uint8_t node_ip[16] = {0}, pod_ip[16] = {0}, other[16] = {0};

    h.host_network = true;
    peers_observe(p, &h);
    peers_observe(p, &web);
    inet_pton(AF_INET, "192.168.1.10", node_ip);
    inet_pton(AF_INET, "10.1.0.5", pod_ip);
    inet_pton(AF_INET, "10.9.9.9", other);
    cr_assert(peers_host_network(p, EVENT_FAMILY_IPV4, node_ip, T0 + SEC));
    cr_assert_not(peers_host_network(p, EVENT_FAMILY_IPV4, pod_ip, T0 + SEC));
    cr_assert_not(peers_host_network(p, EVENT_FAMILY_IPV4, other, T0 + SEC));
    /* Past its lifetime and grace the claim says nothing any more. */
    cr_assert_not(peers_host_network(p, EVENT_FAMILY_IPV4, node_ip, T0 + TTL + GRACE + SEC));
    struct peers_stats st;
    peers_get_stats(p, &st);
    cr_assert_eq(st.lookups, 0, "not counted as lookups");
    peers_free(p);
}

Test(peers, a_reused_address_names_the_new_pod_after_the_grace)
{
    struct peers *p = peers_new(64, TTL, GRACE);
    struct peers_pod old = pod("node-a", "shop", "web-old", "10.1.0.7", T0);
    struct peers_pod neu = pod("node-a", "shop", "web-new", "10.1.0.7", T0 + 10 * SEC);
    struct event_peer out;

    peers_observe(p, &old);
    cr_assert_eq(look(p, "10.1.0.7", T0 + 9 * SEC, &out), PEERS_HIT);
    cr_assert_str_eq(out.pod, "web-old");
    peers_observe(p, &neu);
    /* Within the grace both are valid: events in flight may be the old pod's. */
    cr_assert_eq(look(p, "10.1.0.7", T0 + 10 * SEC + GRACE, &out), PEERS_AMBIGUOUS);
    cr_assert_eq(look(p, "10.1.0.7", T0 + 10 * SEC + GRACE + 1, &out), PEERS_HIT);
    cr_assert_str_eq(out.pod, "web-new");
    /* A late report of the old pod (an older batch) does not bring it back. */
    old.seen_ns = T0 + 11 * SEC;
    peers_observe(p, &old);
    cr_assert_eq(look(p, "10.1.0.7", T0 + 20 * SEC, &out), PEERS_HIT);
    cr_assert_str_eq(out.pod, "web-new");
    peers_free(p);
}

Test(peers, reports_arriving_out_of_order_end_the_older_pod_anyway)
{
    struct peers *p = peers_new(64, TTL, GRACE);
    struct peers_pod neu = pod("node-a", "shop", "web-new", "10.1.0.8", T0 + 10 * SEC);
    struct peers_pod old = pod("node-a", "shop", "web-old", "10.1.0.8", T0);
    struct event_peer out;

    peers_observe(p, &neu); /* announced first by one replica ... */
    peers_observe(p, &old); /* ... the older report by another, later */
    cr_assert_eq(look(p, "10.1.0.8", T0 + 10 * SEC + GRACE + 1, &out), PEERS_HIT);
    cr_assert_str_eq(out.pod, "web-new");
    peers_free(p);
}

Test(peers, a_pod_its_node_stopped_reporting_goes_stale)
{
    struct peers *p = peers_new(64, TTL, GRACE);
    struct peers_pod a = pod("node-a", "shop", "web-1", "10.1.0.9", T0);
    struct event_peer out;

    peers_observe(p, &a);
    cr_assert_eq(look(p, "10.1.0.9", T0 + TTL + GRACE, &out), PEERS_HIT, "valid through grace");
    cr_assert_eq(look(p, "10.1.0.9", T0 + TTL + GRACE + 1, &out), PEERS_STALE);
    cr_assert_null(out.pod);
    /* Long after, the claim is removed: nothing left to say about the address. */
    cr_assert_eq(look(p, "10.1.0.9", T0 + 2 * TTL + GRACE + 1, &out), PEERS_STALE);
    cr_assert_eq(look(p, "10.1.0.9", T0 + 2 * TTL + GRACE + 2, &out), PEERS_MISS);
    struct peers_stats st;
    peers_get_stats(p, &st);
    cr_assert_eq(st.expired, 1);
    cr_assert_eq(st.entries, 0);
    cr_assert_eq(st.results[PEERS_STALE], 2);
    peers_free(p);
}

Test(peers, refreshes_are_announced_once_per_quarter_ttl)
{
    struct peers *p = peers_new(64, TTL, GRACE);
    struct peers_pod a = pod("node-a", "shop", "web-1", "10.1.1.1", T0);

    cr_assert(peers_observe(p, &a));
    a.seen_ns = T0 + TTL / 4 - 1;
    cr_assert_not(peers_observe(p, &a), "unchanged and recently announced");
    a.seen_ns = T0 + TTL / 4;
    cr_assert(peers_observe(p, &a), "due again so other replicas keep it alive");
    a.seen_ns += 1;
    a.workload = intern("other-workload");
    cr_assert(peers_observe(p, &a), "a change is announced at once");
    peers_free(p);
}

Test(peers, the_bound_evicts_the_least_recently_seen_and_counts_it)
{
    struct peers *p = peers_new(4, TTL, GRACE);
    char name[32], ip[32];
    struct event_peer out;

    for (int i = 0; i < 6; i++) {
        snprintf(name, sizeof(name), "pod-%d", i);
        snprintf(ip, sizeof(ip), "10.2.0.%d", i + 1);
        struct peers_pod a = pod("node-a", "ns", name, ip, T0 + (uint64_t)i);
        peers_observe(p, &a);
        if (i == 3) { /* pod-0 seen again: pod-1 becomes the oldest */
            struct peers_pod again = pod("node-a", "ns", "pod-0", "10.2.0.1", T0 + 4);
            peers_observe(p, &again);
        }
    }
    struct peers_stats st;
    peers_get_stats(p, &st);
    cr_assert_eq(st.entries, 4);
    cr_assert_eq(st.evicted, 2);
    cr_assert_eq(look(p, "10.2.0.1", T0 + 10, &out), PEERS_HIT);
    cr_assert_eq(look(p, "10.2.0.2", T0 + 10, &out), PEERS_MISS);
    cr_assert_eq(look(p, "10.2.0.3", T0 + 10, &out), PEERS_MISS);
    cr_assert_eq(look(p, "10.2.0.6", T0 + 10, &out), PEERS_HIT);
    peers_free(p);
}

static struct event conn_event(enum event_type type, const char *src, const char *dst)
{
    struct event e = {.type = type, .family = EVENT_FAMILY_IPV4, .node = intern("node-b")};
    cr_assert_eq(inet_pton(AF_INET, src, e.saddr), 1);
    cr_assert_eq(inet_pton(AF_INET, dst, e.daddr), 1);
    return e;
}

Test(peers, enrich_names_the_peer_side_and_keeps_what_the_agent_filled)
{
    struct peers *p = peers_new(64, TTL, GRACE);
    struct peers_pod a = pod("node-a", "shop", "client-1", "10.1.0.1", T0);
    struct peers_pod b = pod("node-b", "shop", "server-1", "10.2.0.1", T0);
    peers_observe(p, &a);
    peers_observe(p, &b);

    struct event ev[6] = {
        conn_event(EVENT_ACCEPT, "10.1.0.1", "10.2.0.1"),     /* peer = source */
        conn_event(EVENT_CONNECTION, "10.1.0.1", "10.2.0.1"), /* peer = destination */
        conn_event(EVENT_CLOSE, "10.1.0.1", "10.2.0.1"),      /* server side */
        conn_event(EVENT_ACCEPT, "10.1.0.1", "10.2.0.1"),     /* the agent named it already */
        conn_event(EVENT_EXEC, "10.1.0.1", "10.2.0.1"),       /* no peer */
        conn_event(EVENT_CLOSE, "10.1.0.1", "10.2.0.1"),      /* no role: not looked up */
    };
    ev[2].u.close.role = EVENT_ROLE_SERVER;
    ev[3].peer.pod = intern("agent-says");
    peers_enrich(p, ev, 6, T0 + SEC, true);

    cr_assert_str_eq(ev[0].peer.pod, "client-1");
    cr_assert_str_eq(ev[0].peer.node, "node-a");
    cr_assert_str_eq(ev[1].peer.pod, "server-1");
    cr_assert_str_eq(ev[2].peer.pod, "client-1");
    cr_assert_str_eq(ev[3].peer.pod, "agent-says");
    cr_assert_null(ev[3].peer.namespace, "the agent's event is left as it was");
    cr_assert_null(ev[4].peer.pod);
    cr_assert_null(ev[5].peer.pod);
    struct peers_stats st;
    peers_get_stats(p, &st);
    cr_assert_eq(st.lookups, 3);
    cr_assert_eq(st.results[PEERS_HIT], 3);

    struct event again = conn_event(EVENT_ACCEPT, "10.1.0.1", "10.2.0.1");
    peers_enrich(p, &again, 1, T0 + SEC, false);
    cr_assert_str_eq(again.peer.pod, "client-1");
    peers_get_stats(p, &st);
    cr_assert_eq(st.lookups, 3, "an uncounted look leaves the counters");
    peers_free(p);
}

/* An answered dns event whose answers are the n NUL-separated strings in a. */
static struct event dns_event(const char *a, size_t len)
{
    struct event e = {.type = EVENT_DNS,
                      .status = EVENT_STATUS_ANSWERED,
                      .family = EVENT_FAMILY_IPV4,
                      .protocol = 17,
                      .dport = 53};
    e.u.dns.answers = (char *)a;
    e.u.dns.answers_len = (uint32_t)len;
    inet_pton(AF_INET, "10.96.0.10", e.daddr); /* the server: never the peer */
    return e;
}

Test(peers, a_dns_answer_names_what_all_its_addresses_agree_on)
{
    struct peers *p = peers_new(64, TTL, GRACE);
    struct peers_pod a = pod("node-a", "shop", "web-1", "10.1.0.5", T0);
    struct peers_pod b = pod("node-b", "shop", "web-2", "10.1.0.6", T0);
    struct peers_pod c = pod("node-b", "bank", "db-0", "fd00::7", T0);
    struct peers_pod d = pod("node-b", "bank", "web-9", "10.3.0.9", T0);
    d.workload = a.workload; /* a workload of that name in another namespace */
    b.workload = a.workload; /* two pods of one workload */
    peers_observe(p, &a);
    peers_observe(p, &b);
    peers_observe(p, &c);
    peers_observe(p, &d);
    static const char one[] = "web.shop.svc\0"
                              "10.1.0.5"; /* a CNAME, then one pod */
    static const char same_workload[] = "10.1.0.5\0"
                                        "10.1.0.6"; /* two pods of web-1's workload */
    static const char two_namespaces[] = "10.1.0.5\0fd00::7";
    static const char one_unknown[] = "10.1.0.5\0"
                                      "192.0.2.1";
    static const char names_only[] = "a.example\0b.example";
    static const char same_name[] = "10.1.0.5\0"
                                    "10.3.0.9"; /* web-1's workload name in two namespaces */
    struct event ev[] = {
        dns_event(one, sizeof(one)),
        dns_event(same_workload, sizeof(same_workload)),
        dns_event(two_namespaces, sizeof(two_namespaces)),
        dns_event(one_unknown, sizeof(one_unknown)),
        dns_event(names_only, sizeof(names_only)),
        dns_event(one, sizeof(one)),
        dns_event(same_name, sizeof(same_name)),
    };
    ev[5].status = EVENT_STATUS_TIMEOUT; /* answers mean nothing then */
    peers_enrich(p, ev, 7, T0 + SEC, true);

    cr_assert_str_eq(ev[0].peer.pod, "web-1");
    cr_assert_str_eq(ev[0].peer.namespace, "shop");
    cr_assert_str_eq(ev[0].peer.node, "node-a");
    cr_assert_null(ev[1].peer.pod, "two pods: no one pod");
    cr_assert_null(ev[1].peer.node);
    cr_assert_str_eq(ev[1].peer.workload, "web-1");
    cr_assert_str_eq(ev[1].peer.namespace, "shop");
    cr_assert_str_eq(ev[1].peer.workload_kind, "Deployment");
    cr_assert_null(ev[2].peer.namespace, "two namespaces: nothing");
    cr_assert_null(ev[2].peer.workload);
    cr_assert_null(ev[2].peer.workload_kind, "a kind alone says nothing");
    cr_assert_null(ev[2].peer.node, "a node alone neither");
    cr_assert_null(ev[2].peer.pod);
    cr_assert_null(ev[3].peer.pod, "an address nobody holds: not named");
    cr_assert_null(ev[3].peer.workload);
    cr_assert_null(ev[4].peer.workload, "names are not looked up");
    cr_assert_null(ev[5].peer.pod, "a timeout has no answer");
    cr_assert_null(ev[6].peer.workload, "a workload is its namespace's");
    cr_assert_null(ev[6].peer.workload_kind);

    struct peers_stats st;
    peers_get_stats(p, &st);
    cr_assert_eq(st.lookups, 5, "events with addresses are counted once each");
    cr_assert_eq(st.results[PEERS_HIT], 4);
    cr_assert_eq(st.results[PEERS_MISS], 1);
    peers_free(p);
}

Test(peers, pods_come_from_the_events_pod_table_attribution)
{
    struct event ev[4] = {0};
    for (int i = 0; i < 4; i++) {
        ev[i].type = EVENT_CONNECTION;
        ev[i].node = intern("node-a");
        ev[i].k8s.pod_name = intern("web-1");
        ev[i].k8s.namespace = intern("shop");
        ev[i].k8s.pod_uid = intern("uid-1");
        ev[i].k8s.ips = intern("10.1.0.5,fd00::5");
        ev[i].k8s.workload = intern("web");
    }
    ev[2].k8s.pod_name = intern("web-2");
    ev[2].k8s.pod_uid = intern("uid-2");
    ev[2].k8s.ips = intern("10.1.0.6");
    ev[3].k8s.ips = NULL; /* inline attribution without addresses: not a claim */
    ev[3].k8s.pod_name = intern("web-3");

    struct peers_pod out[8];
    size_t n = peers_pods_from_events(ev, 4, T0, out, 8);
    cr_assert_eq(n, 2);
    cr_assert_str_eq(out[0].pod, "web-1");
    cr_assert_str_eq(out[0].node, "node-a", "the event's node when k8s_node_name is empty");
    cr_assert_eq(out[0].n_ips, 2);
    cr_assert_eq(out[0].family[1], EVENT_FAMILY_IPV6);
    cr_assert_eq(out[1].n_ips, 1);
    cr_assert_eq(out[1].seen_ns, T0);
    cr_assert_eq(peers_pods_from_events(ev, 4, T0, out, 1), 1, "bounded by max");
}

Test(peers, announcements_round_trip)
{
    struct peers_pod in[2] = {pod("node-a", "shop", "web-1", "10.1.0.5", T0),
                              pod("node-b", "shop", "db-0", "fd00::7", T0 + 1)};
    in[1].host_network = true;
    in[1].workload = NULL;
    struct buf b;
    buf_init(&b);
    peers_announce_write(&b, "0123456789abcdef", in, 2);

    struct peers_pod out[4];
    char replica[17], err[256];
    int n = peers_announce_parse(b.data, b.len, replica, sizeof(replica), out, 4, err, sizeof(err));
    cr_assert_eq(n, 2, "%s: %s", err, b.data);
    cr_assert_str_eq(replica, "0123456789abcdef");
    cr_assert_eq(out[0].pod, in[0].pod, "interned: the same pointer");
    cr_assert_eq(out[0].seen_ns, T0);
    cr_assert_eq(memcmp(out[0].ip[0], in[0].ip[0], 4), 0);
    cr_assert(out[1].host_network);
    cr_assert_null(out[1].workload);
    cr_assert_eq(out[1].family[0], EVENT_FAMILY_IPV6);
    cr_assert_eq(memcmp(out[1].ip[0], in[1].ip[0], 16), 0);
    cr_assert_eq(
        peers_announce_parse(b.data, b.len, replica, sizeof(replica), out, 1, err, sizeof(err)),
        -EINVAL, "more pods than room");
    buf_free(&b);
}

Test(peers, malformed_announcements_are_refused_with_a_reason)
{
    static const char *bad[] = {
        "",
        "not json",
        "[]",
        "{\"replica\":1,\"pods\":[]}",
        "{\"replica\":\"r\"}",
        "{\"replica\":\"r\",\"pods\":[1]}",
        "{\"replica\":\"r\",\"pods\":[{\"node\":\"a\",\"namespace\":\"n\",\"seen_ns\":1,"
        "\"ips\":[\"10.0.0.1\"]}]}", /* no pod */
        "{\"replica\":\"r\",\"pods\":[{\"node\":\"a\",\"namespace\":\"n\",\"pod\":\"p\","
        "\"seen_ns\":1,\"ips\":[\"10.0.0.300\"]}]}",
        "{\"replica\":\"r\",\"pods\":[{\"node\":\"a\",\"namespace\":\"n\",\"pod\":\"p\","
        "\"seen_ns\":-1,\"ips\":[\"10.0.0.1\"]}]}",
        "{\"replica\":\"r\",\"pods\":[{\"node\":\"a\",\"namespace\":\"n\",\"pod\":\"p\","
        "\"seen_ns\":1,\"ips\":[]}]}",
        "{\"replica\":\"r\",\"pods\":[{\"node\":\"a\",\"namespace\":\"n\",\"pod\":\"p\","
        "\"seen_ns\":1,\"host_network\":\"yes\",\"ips\":[\"10.0.0.1\"]}]}",
        "{\"replica\":\"r\",\"pods\":[{\"node\":\"\\u0000\",\"namespace\":\"n\",\"pod\":\"p\","
        "\"seen_ns\":1,\"ips\":[\"10.0.0.1\"]}]}",
        "{\"replica\":\"r\",\"pods\":[{\"node\":\"\xff\xfe\",\"namespace\":\"n\",\"pod\":\"p\","
        "\"seen_ns\":1,\"ips\":[\"10.0.0.1\"]}]}",
        "{\"replica\":\"r\",\"replica\":\"s\",\"pods\":[]}",
    };
    struct peers_pod out[4];
    char replica[17], err[256];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        int rc = peers_announce_parse(bad[i], strlen(bad[i]), replica, sizeof(replica), out, 4, err,
                                      sizeof(err));
        cr_assert_eq(rc, -EINVAL, "accepted: %s", bad[i]);
        cr_assert_neq(err[0], '\0', "no reason for: %s", bad[i]);
    }
}

/* What an agent sends when it sees the pod deleted. */
static struct peers_pod gone(struct peers_pod p, uint64_t at)
{
    p.seen_ns = p.gone_ns = at;
    return p;
}

Test(peers, a_deleted_pod_is_named_for_the_grace_then_never)
{
    struct peers *p = peers_new(64, TTL, GRACE);
    struct peers_pod a = pod("node-a", "shop", "web-1", "10.1.0.5", T0);
    struct peers_pod gone_a = gone(a, T0 + 10 * SEC);
    struct event_peer out;

    peers_observe(p, &a);
    cr_assert(peers_observe(p, &gone_a), "a deletion that ends a claim is announced");
    cr_assert_not(peers_observe(p, &gone_a), "the same deletion again changes nothing");
    cr_assert_eq(look(p, "10.1.0.5", T0 + 10 * SEC + GRACE, &out), PEERS_HIT,
                 "events in flight from before the deletion");
    cr_assert_str_eq(out.pod, "web-1");
    cr_assert_eq(look(p, "10.1.0.5", T0 + 10 * SEC + GRACE + 1, &out), PEERS_STALE,
                 "well before PEER_TTL: the pod is gone");
    cr_assert_null(out.pod);
    /* Its node still reporting it (a batch from before the deletion) does not revive it. */
    a.seen_ns = T0 + 11 * SEC;
    peers_observe(p, &a);
    cr_assert_eq(look(p, "10.1.0.5", T0 + 11 * SEC + GRACE, &out), PEERS_STALE);

    struct peers_stats st;
    peers_get_stats(p, &st);
    cr_assert_eq(st.gone, 1);
    cr_assert_eq(st.entries, 1);
    peers_free(p);
}

/*
 * A replica that has just started gets every claim another holds: applied
 * there, the live ones name their pods, a deleted one names no one (and a
 * late report cannot revive it), and long-expired ones are left out. In
 * pieces of any size, each claim once.
 */
Test(peers, a_dump_gives_a_new_replica_the_claims_held)
{
    struct peers *p = peers_new(64, TTL, GRACE), *fresh = peers_new(64, TTL, GRACE);
    struct peers_pod a = pod("node-a", "shop", "web-1", "10.1.0.5", T0);
    struct peers_pod b = pod("node-b", "shop", "db-0", "fd00::7", T0 + SEC);
    struct peers_pod c = pod("node-b", "shop", "old-0", "10.2.0.9", T0);
    struct peers_pod d = pod("node-c", "shop", "long-gone", "10.3.0.1", T0 - 10 * TTL);
    peers_observe(p, &d);
    peers_observe(p, &a);
    peers_observe(p, &b);
    peers_observe(p, &c);
    struct peers_pod c_gone = gone(c, T0 + 2 * SEC);
    peers_observe(p, &c_gone);

    uint64_t now = T0 + 3 * SEC + GRACE;
    struct peers_pod out[2];
    uint32_t cursor = 0;
    size_t n, total = 0;
    while ((n = peers_dump(p, now, &cursor, out, 2)) > 0) {
        cr_assert_leq(n, 2);
        for (size_t i = 0; i < n; i++) {
            cr_assert_eq(out[i].n_ips, 1);
            cr_assert_neq(out[i].pod, d.pod, "an expired claim is dumped");
            cr_assert_eq(out[i].gone_ns, out[i].pod == c.pod ? T0 + 2 * SEC : 0);
            peers_observe(fresh, &out[i]);
        }
        total += n;
    }
    cr_assert_eq(total, 3);
    cr_assert_eq(peers_dump(p, now, &cursor, out, 2), 0, "done stays done");

    struct event_peer o;
    cr_assert_eq(look(fresh, "10.1.0.5", now, &o), PEERS_HIT);
    cr_assert_str_eq(o.pod, "web-1");
    cr_assert_str_eq(o.node, "node-a");
    cr_assert_str_eq(o.workload_kind, "Deployment");
    cr_assert_eq(look(fresh, "fd00::7", now, &o), PEERS_HIT);
    cr_assert_str_eq(o.pod, "db-0");
    cr_assert_neq(look(fresh, "10.2.0.9", now, &o), PEERS_HIT, "the deleted pod is named");
    c.seen_ns = T0 + 3 * SEC; /* a late report from before the deletion */
    peers_observe(fresh, &c);
    cr_assert_neq(look(fresh, "10.2.0.9", now, &o), PEERS_HIT, "a late report revived it");
    cr_assert_eq(look(fresh, "10.3.0.1", now, &o), PEERS_MISS);
    peers_free(p);
    peers_free(fresh);
}

/*
 * A workload runs while a pod of it names its address: deleted (past the grace), quiet for
 * the TTL, or never reported, it does not. A bare pod is its own workload.
 */
Test(peers, a_workload_runs_while_a_pod_of_it_names_its_address)
{
    struct peers *p = peers_new(64, TTL, GRACE);
    struct peers_pod a = pod("node-a", "shop", "web-1", "10.1.0.5", T0);
    struct peers_pod b = pod("node-b", "shop", "web-2", "10.1.0.6", T0);
    struct peers_pod bare = pod("node-b", "shop", "debug", "10.1.0.7", T0);
    a.workload = b.workload = intern("web");
    bare.workload = NULL;
    const char *shop = intern("shop"), *web = intern("web");

    cr_assert_not(peers_workload_alive(p, shop, web, T0), "nothing reported yet");
    peers_observe(p, &a);
    peers_observe(p, &b);
    peers_observe(p, &bare);
    cr_assert(peers_workload_alive(p, shop, web, T0 + 2 * SEC));
    cr_assert(peers_workload_alive(p, shop, intern("debug"), T0 + 2 * SEC), "a bare pod");
    cr_assert_not(peers_workload_alive(p, intern("other"), web, T0 + 2 * SEC));
    cr_assert_not(peers_workload_alive(p, shop, intern("db"), T0 + 2 * SEC));

    /* One of its two pods deleted: it still runs; both: not after the grace. */
    struct peers_pod gone_a = gone(a, T0 + 10 * SEC), gone_b = gone(b, T0 + 10 * SEC);
    peers_observe(p, &gone_a);
    cr_assert(peers_workload_alive(p, shop, web, T0 + 12 * SEC + GRACE));
    peers_observe(p, &gone_b);
    cr_assert(peers_workload_alive(p, shop, web, T0 + 10 * SEC + GRACE), "within the grace");
    cr_assert_not(peers_workload_alive(p, shop, web, T0 + 12 * SEC + GRACE));

    /* Quiet for the TTL (and the grace): the bare pod no longer runs either. */
    cr_assert(peers_workload_alive(p, shop, intern("debug"), T0 + TTL));
    cr_assert_not(peers_workload_alive(p, shop, intern("debug"), T0 + TTL + GRACE + 2 * SEC));
    peers_free(p);
}

/* Replica 1 applied the deletion and announced it before replica 2 saw the pod at all. */
Test(peers, a_deletion_before_the_pods_report_keeps_it_ended)
{
    struct peers *p = peers_new(64, TTL, GRACE);
    struct peers_pod a = pod("node-a", "shop", "web-1", "10.1.0.5", T0);
    struct peers_pod gone_a = gone(a, T0 + 10 * SEC);
    struct peers_pod b = pod("node-a", "shop", "web-2", "10.1.0.5", T0 + 12 * SEC);
    struct event_peer out;

    cr_assert(peers_observe(p, &gone_a));
    cr_assert_eq(look(p, "10.1.0.5", T0 + 10 * SEC, &out), PEERS_STALE,
                 "a deletion alone never names a pod");
    peers_observe(p, &a); /* the late batch */
    cr_assert_eq(look(p, "10.1.0.5", T0 + 10 * SEC + GRACE + 1, &out), PEERS_STALE);
    /* The pod that got the address next is named, and the deleted one's claim, first seen
     * only through its deletion, never ends it. */
    peers_observe(p, &b);
    cr_assert_eq(look(p, "10.1.0.5", T0 + 13 * SEC + GRACE, &out), PEERS_HIT);
    cr_assert_str_eq(out.pod, "web-2");
    cr_assert_eq(look(p, "10.1.0.5", T0 + 12 * SEC + TTL, &out), PEERS_HIT);
    peers_free(p);
}

/* A deletion from another node's agent for an address reused across nodes ends only its pod. */
Test(peers, a_deletion_ends_only_its_own_pods_claims)
{
    struct peers *p = peers_new(64, TTL, GRACE);
    struct peers_pod a = pod("node-a", "shop", "web-1", "10.1.0.5", T0);
    struct peers_pod b = pod("node-b", "shop", "web-9", "10.1.0.5", T0 + 20 * SEC);
    struct peers_pod gone_a = gone(a, T0 + 10 * SEC);
    struct event_peer out;

    peers_observe(p, &a);
    peers_observe(p, &b);
    cr_assert_eq(look(p, "10.1.0.5", T0 + 21 * SEC, &out), PEERS_AMBIGUOUS,
                 "two nodes' pods on one address, both valid");
    peers_observe(p, &gone_a);
    cr_assert_eq(look(p, "10.1.0.5", T0 + 10 * SEC + GRACE + 1, &out), PEERS_HIT);
    cr_assert_str_eq(out.pod, "web-9");
    cr_assert_str_eq(out.node, "node-b");
    peers_free(p);
}

/* A deletion (crafted: a made-up pod, far ahead) neither names anyone nor spoils a live claim. */
Test(peers, a_deletion_of_a_pod_never_reported_names_no_one)
{
    struct peers *p = peers_new(64, TTL, GRACE);
    struct peers_pod live = pod("node-a", "shop", "client-a", "10.1.0.10", T0);
    struct peers_pod ghost = gone(pod("evil", "evil", "ghost", "10.2.0.50", T0), T0 + 864000 * SEC);
    struct peers_pod shadow =
        gone(pod("evil", "evil", "shadow", "10.1.0.10", T0), T0 + 864000 * SEC);
    struct event_peer out;

    peers_observe(p, &live);
    peers_observe(p, &ghost);
    peers_observe(p, &shadow);
    cr_assert_eq(look(p, "10.2.0.50", T0 + SEC, &out), PEERS_STALE);
    cr_assert_null(out.pod);
    cr_assert_eq(look(p, "10.1.0.10", T0 + SEC, &out), PEERS_HIT);
    cr_assert_str_eq(out.pod, "client-a");
    peers_free(p);
}

Test(peers, deletions_round_trip_in_the_batch_header_and_announcements)
{
    struct peers_pod in[2] = {gone(pod("node-a", "shop", "web-1", "10.1.0.5", T0), T0 + 3),
                              gone(pod("node-a", "shop", "db-0", "fd00::7", T0), T0 + 4)};
    in[1].uid = NULL;
    struct peers_pod out[PEERS_GONE_MAX_PODS + 1];
    char err[256], replica[17];
    struct buf b;

    buf_init(&b);
    peers_gone_write(&b, in, 2);
    cr_assert_null(memchr(b.data, '\n', b.len), "a header value holds no line break");
    int n = peers_gone_parse(b.data, b.len, out, PEERS_GONE_MAX_PODS, err, sizeof(err));
    cr_assert_eq(n, 2, "%s: %.*s", err, (int)b.len, b.data);
    cr_assert_eq(out[0].gone_ns, T0 + 3);
    cr_assert_eq(out[0].pod, in[0].pod);
    cr_assert_null(out[1].uid);
    cr_assert_eq(out[1].gone_ns, T0 + 4);
    cr_assert_eq(memcmp(out[1].ip[0], in[1].ip[0], 16), 0);
    buf_reset(&b);

    /* Replicas pass deletions on in their announcements. */
    peers_announce_write(&b, "r1", in, 2);
    n = peers_announce_parse(b.data, b.len, replica, sizeof(replica), out, 4, err, sizeof(err));
    cr_assert_eq(n, 2, "%s", err);
    cr_assert_eq(out[0].gone_ns, T0 + 3);
    buf_reset(&b);
    struct peers_pod live = pod("node-a", "shop", "web-1", "10.1.0.5", T0);
    peers_announce_write(&b, "r1", &live, 1);
    cr_assert_eq(
        peers_announce_parse(b.data, b.len, replica, sizeof(replica), out, 4, err, sizeof(err)), 1);
    cr_assert_eq(out[0].gone_ns, 0, "a live pod has no gone_ns");
    cr_assert_eq(peers_gone_parse(b.data, b.len, out, 4, err, sizeof(err)), -EINVAL,
                 "a pod without gone_ns is no deletion");
    buf_reset(&b);

    struct peers_pod many[PEERS_GONE_MAX_PODS + 1];
    for (size_t i = 0; i < PEERS_GONE_MAX_PODS + 1; i++)
        many[i] = in[0];
    peers_gone_write(&b, many, PEERS_GONE_MAX_PODS + 1);
    cr_assert_eq(peers_gone_parse(b.data, b.len, out, PEERS_GONE_MAX_PODS + 1, err, sizeof(err)),
                 -EINVAL, "more than PEERS_GONE_MAX_PODS");
    buf_free(&b);

    static const char *bad[] = {
        "",
        "[]",
        "{\"pods\":{}}",
        "{\"pods\":[{\"node\":\"a\",\"namespace\":\"n\",\"pod\":\"p\",\"seen_ns\":1,"
        "\"gone_ns\":0,\"ips\":[\"10.0.0.1\"]}]}",
        "{\"pods\":[{\"node\":\"a\",\"namespace\":\"n\",\"pod\":\"p\",\"seen_ns\":1,"
        "\"gone_ns\":\"5\",\"ips\":[\"10.0.0.1\"]}]}",
        "{\"pods\":[{\"node\":\"a\",\"namespace\":\"n\",\"pod\":\"p\",\"seen_ns\":1,"
        "\"gone_ns\":-5,\"ips\":[\"10.0.0.1\"]}]}",
        "{\"pods\":[{\"namespace\":\"n\",\"pod\":\"p\",\"seen_ns\":1,"
        "\"gone_ns\":5,\"ips\":[\"10.0.0.1\"]}]}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        cr_assert_eq(peers_gone_parse(bad[i], strlen(bad[i]), out, 4, err, sizeof(err)), -EINVAL,
                     "accepted: %s", bad[i]);
        cr_assert_neq(err[0], '\0', "no reason for: %s", bad[i]);
    }
}

struct worker {
    struct peers *p;
    int id;
};

static void *hammer(void *arg)
{
    struct worker *w = arg;
    char name[32], ip[32];
    struct event_peer out;

    for (int i = 0; i < 2000; i++) {
        snprintf(name, sizeof(name), "p-%d-%d", w->id, i % 50);
        snprintf(ip, sizeof(ip), "10.%d.0.%d", w->id, i % 50);
        struct peers_pod a = pod("node-x", "ns", name, ip, T0 + (uint64_t)i);
        peers_observe(w->p, &a);
        look(w->p, ip, T0 + (uint64_t)i, &out);
    }
    return NULL;
}

Test(peers, concurrent_observers_and_readers)
{
    struct peers *p = peers_new(64, TTL, GRACE);
    pthread_t t[3];
    struct worker w[3];
    for (int i = 0; i < 3; i++) {
        w[i] = (struct worker){p, i + 1};
        pthread_create(&t[i], NULL, hammer, &w[i]);
    }
    for (int i = 0; i < 3; i++)
        pthread_join(t[i], NULL);
    struct peers_stats st;
    peers_get_stats(p, &st);
    cr_assert_eq(st.lookups, 6000);
    cr_assert_eq(st.entries, 64);
    cr_assert_eq(st.results[PEERS_HIT] + st.results[PEERS_MISS], 6000);
    peers_free(p);
}

/*
 * A new agent instance's pod list ends, at its time, the claims of its node's
 * pods it lacks and that were seen before it; a listed pod, a pod of another
 * node, and one first seen after the list are left alone. The ended claims
 * come back as deletions to announce.
 */
Test(peers, a_nodes_pod_list_ends_the_claims_of_pods_it_lacks)
{
    struct peers *p = peers_new(16, 600 * SEC, 1 * SEC);
    struct peers_pod gone_pod = pod("node-a", "shop", "old", "10.1.0.5", 10 * SEC);
    struct peers_pod kept = pod("node-a", "shop", "kept", "10.1.0.6", 10 * SEC);
    struct peers_pod other = pod("node-b", "shop", "other", "10.2.0.5", 10 * SEC);
    struct peers_pod late = pod("node-a", "shop", "late", "10.1.0.7", 30 * SEC);
    struct peers_pod out[8];
    struct event_peer who;

    gone_pod.uid = intern("uid-old");
    kept.uid = intern("uid-kept");
    other.uid = intern("uid-other");
    late.uid = intern("uid-late");
    peers_observe(p, &gone_pod);
    peers_observe(p, &kept);
    peers_observe(p, &other);
    peers_observe(p, &late);
    const char *listed[] = {intern("uid-kept"), intern("uid-elsewhere")};
    size_t k = peers_node_present(p, intern("node-a"), listed, 2, 20 * SEC, 21 * SEC, out, 8);
    cr_assert_eq(k, 1);
    cr_assert_eq(out[0].pod, intern("old"));
    cr_assert_eq(out[0].gone_ns, 20 * SEC);
    cr_assert_eq(out[0].n_ips, 1);
    cr_assert_eq(look(p, "10.1.0.5", 20 * SEC + SEC / 2, &who), PEERS_HIT, "named for the grace");
    cr_assert_eq(look(p, "10.1.0.5", 22 * SEC, &who), PEERS_STALE, "then never");
    cr_assert_eq(look(p, "10.1.0.6", 22 * SEC, &who), PEERS_HIT);
    cr_assert_eq(look(p, "10.2.0.5", 22 * SEC, &who), PEERS_HIT);
    cr_assert_eq(look(p, "10.1.0.7", 32 * SEC, &who), PEERS_HIT);
    struct peers_stats st;
    peers_get_stats(p, &st);
    cr_assert_eq(st.gone, 1);

    /* A late report of the old pod does not revive it; a second list ends nothing more. */
    gone_pod.seen_ns = 23 * SEC;
    peers_observe(p, &gone_pod);
    cr_assert_eq(look(p, "10.1.0.5", 23 * SEC, &who), PEERS_STALE);
    cr_assert_eq(peers_node_present(p, intern("node-a"), listed, 2, 25 * SEC, 26 * SEC, out, 8), 0,
                 "the old claim ended already, the late one was first seen after");
    /* A list after the late pod's report ends it, announced or not (no room here); but not a
     * second list of the node within a second, which is skipped. */
    cr_assert_eq(peers_node_present(p, intern("node-a"), listed, 2, 40 * SEC, 26 * SEC + 1, out, 8),
                 0);
    peers_get_stats(p, &st);
    cr_assert_eq(st.lists_skipped, 1);
    cr_assert_eq(look(p, "10.1.0.7", 32 * SEC, &who), PEERS_HIT, "nothing ended");
    cr_assert_eq(peers_node_present(p, intern("node-b"), listed, 2, 40 * SEC, 26 * SEC + 2, out, 8),
                 1, "another node's list is its own");
    cr_assert_eq(peers_node_present(p, intern("node-a"), listed, 2, 40 * SEC, 27 * SEC, out, 0), 0);
    cr_assert_eq(look(p, "10.1.0.7", 42 * SEC, &who), PEERS_STALE);
    peers_get_stats(p, &st);
    cr_assert_eq(st.gone, 3);
    cr_assert_eq(st.lists, 4);
    cr_assert_eq(st.lists_skipped, 1);
    peers_free(p);
}

Test(peers, pod_lists_round_trip_and_malformed_ones_are_refused)
{
    const char *uids[] = {intern("u-1"), intern("a \"quoted\" \xc3\xa9 uid")}, *back[4];
    uint64_t at = 0;
    char err[256];
    struct buf b;

    buf_init(&b);
    peers_present_write(&b, 42, uids, 2);
    cr_assert_eq(peers_present_parse(b.data, b.len, &at, back, 4, err, sizeof(err)), 2, "%s", err);
    cr_assert_eq(at, 42);
    cr_assert_eq(back[0], uids[0]);
    cr_assert_eq(back[1], uids[1]);
    cr_assert_eq(peers_present_parse(b.data, b.len, &at, back, 1, err, sizeof(err)), -EINVAL,
                 "more than max");
    buf_free(&b);
    static const char *bad[] = {"",
                                "[]",
                                "{\"at_ns\":1}",
                                "{\"at_ns\":\"1\",\"uids\":[]}",
                                "{\"at_ns\":1,\"uids\":[null]}",
                                "{\"at_ns\":1,\"uids\":[\"\\u0000\"]}",
                                "{\"at_ns\":1,\"uids\":[\"\xff\"]}",
                                "{\"at_ns\":1,\"at_ns\":2,\"uids\":[]}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        cr_assert_eq(peers_present_parse(bad[i], strlen(bad[i]), &at, back, 4, err, sizeof(err)),
                     -EINVAL, "accepted %s", bad[i]);
        cr_assert_neq(err[0], '\0');
    }
}

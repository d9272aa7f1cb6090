/*
 * Fuzz target: a replica's pod announcement (pkg/peers.c), which anyone who
 * can publish on the control subjects can send, and the same input as the
 * deleted pods an agent sends in a batch header (peers_gone_parse), and as
 * the pod list it sends once (peers_present_parse), which anyone who can
 * publish batches can. Whatever parses is applied to a small map and looked
 * up, and writing it back and parsing again gives the same pods. ASan/UBSan
 * watch it all.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "intern.h"
#include "peers.h"

#define FUZZ_TARGET "fuzz_peers"
#include "fuzz_check.h"

static bool same_pod(const struct peers_pod *a, const struct peers_pod *b)
{
    return a->pod == b->pod && a->node == b->node && a->n_ips == b->n_ips &&
           a->seen_ns == b->seen_ns && a->gone_ns == b->gone_ns &&
           memcmp(a->ip, b->ip, sizeof(a->ip)) == 0;
}

static void gone_header(const uint8_t *data, size_t size)
{
    static struct peers_pod pods[PEERS_GONE_MAX_PODS], again[PEERS_GONE_MAX_PODS];
    char err[256];
    int n = peers_gone_parse((const char *)data, size, pods, PEERS_GONE_MAX_PODS, err, sizeof(err));
    if (n < 0)
        return;
    CHECK(n <= PEERS_GONE_MAX_PODS, "%d deleted pods", n);
    struct peers *p = peers_new(4, 60000000000ull, 5000000000ull);
    CHECK(p != NULL, "peers_new");
    for (int i = 0; i < n; i++) {
        CHECK(pods[i].gone_ns > 0, "deleted pod %d without gone_ns", i);
        peers_observe(p, &pods[i]);
        struct event_peer out = {0};
        peers_lookup(p, pods[i].family[0], pods[i].ip[0], pods[i].gone_ns, &out);
    }
    peers_free(p);
    struct buf b;
    buf_init(&b);
    peers_gone_write(&b, pods, (size_t)n);
    CHECK(memchr(b.data, '\n', b.len) == NULL && memchr(b.data, '\r', b.len) == NULL,
          "a header value with a line break");
    int m = peers_gone_parse(b.data, b.len, again, PEERS_GONE_MAX_PODS, err, sizeof(err));
    CHECK(m == n, "round trip: %d of %d deleted pods (%s)", m, n, err);
    for (int i = 0; i < n; i++)
        CHECK(same_pod(&again[i], &pods[i]), "deleted pod %d differs after a round trip", i);
    buf_free(&b);
}

/* The pod list: it ends the claims of a small map's pods it lacks, and only those. */
static void present_header(const uint8_t *data, size_t size)
{
    static const char *uids[PEERS_PRESENT_MAX_PODS], *again[PEERS_PRESENT_MAX_PODS];
    uint64_t at = 0, at2 = 0;
    char err[256];
    int n = peers_present_parse((const char *)data, size, &at, uids, PEERS_PRESENT_MAX_PODS, err,
                                sizeof(err));
    if (n < 0)
        return;
    CHECK(n <= PEERS_PRESENT_MAX_PODS && at > 0, "%d pods at %llu", n, (unsigned long long)at);
    struct peers *p = peers_new(4, 60000000000ull, 5000000000ull);
    CHECK(p != NULL, "peers_new");
    struct peers_pod pod = {.node = intern("n"),
                            .namespace = intern("ns"),
                            .pod = intern("p"),
                            .uid = intern("u"),
                            .n_ips = 1,
                            .family = {EVENT_FAMILY_IPV4},
                            .ip = {{10, 0, 0, 1}},
                            .seen_ns = 1};
    bool listed = false;
    for (int i = 0; i < n; i++)
        listed |= uids[i] == pod.uid;
    peers_observe(p, &pod);
    struct peers_pod ended[4];
    size_t k = peers_node_present(p, pod.node, uids, (size_t)n, at, 1, ended, 4);
    CHECK(k == (listed || at <= 1 ? 0u : 1u), "%zu claims ended (listed: %d, at %llu)", k, listed,
          (unsigned long long)at);
    CHECK(k == 0 || (ended[0].uid == pod.uid && ended[0].gone_ns == at), "the ended claim");
    peers_free(p);
    struct buf b;
    buf_init(&b);
    peers_present_write(&b, at, uids, (size_t)n);
    CHECK(memchr(b.data, '\n', b.len) == NULL && memchr(b.data, '\r', b.len) == NULL,
          "a header value with a line break");
    int m =
        peers_present_parse(b.data, b.len, &at2, again, PEERS_PRESENT_MAX_PODS, err, sizeof(err));
    CHECK(m == n && at2 == at, "round trip: %d of %d pods (%s)", m, n, err);
    for (int i = 0; i < n; i++)
        CHECK(again[i] == uids[i], "uid %d differs after a round trip", i);
    buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct peers_pod pods[PEERS_ANNOUNCE_MAX_PODS], again[PEERS_ANNOUNCE_MAX_PODS];
    char replica[17], err[256];
    gone_header(data, size);
    present_header(data, size);
    int n = peers_announce_parse((const char *)data, size, replica, sizeof(replica), pods,
                                 PEERS_ANNOUNCE_MAX_PODS, err, sizeof(err));
    if (n < 0)
        return 0;
    CHECK(n <= PEERS_ANNOUNCE_MAX_PODS, "%d pods", n);

    struct peers *p = peers_new(8, 60000000000ull, 5000000000ull);
    CHECK(p != NULL, "peers_new");
    for (int i = 0; i < n; i++) {
        CHECK(pods[i].node && pods[i].namespace && pods[i].pod && pods[i].n_ips > 0,
              "pod %d incomplete", i);
        peers_observe(p, &pods[i]);
        struct event_peer out = {0};
        peers_lookup(p, pods[i].family[0], pods[i].ip[0], pods[i].seen_ns, &out);
    }
    struct peers_stats st;
    peers_get_stats(p, &st);
    CHECK(st.entries <= 8, "%llu entries over the bound", (unsigned long long)st.entries);
    peers_free(p);

    struct buf b;
    buf_init(&b);
    peers_announce_write(&b, replica, pods, (size_t)n);
    int m = peers_announce_parse(b.data, b.len, NULL, 0, again, PEERS_ANNOUNCE_MAX_PODS, err,
                                 sizeof(err));
    CHECK(m == n, "round trip: %d of %d pods (%s)", m, n, err);
    for (int i = 0; i < n; i++)
        CHECK(same_pod(&again[i], &pods[i]), "pod %d differs after a round trip", i);
    buf_free(&b);
    return 0;
}

/*
 * Fuzz target: a replica's pod announcement (pkg/peers.c), which anyone who
 * can publish on the control subjects can send. Whatever parses is applied
 * to a small map and looked up, and writing it back and parsing again gives
 * the same pods. ASan/UBSan watch it all.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "peers.h"

#define FUZZ_TARGET "fuzz_peers"
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct peers_pod pods[PEERS_ANNOUNCE_MAX_PODS], again[PEERS_ANNOUNCE_MAX_PODS];
    char replica[17], err[256];
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
        CHECK(again[i].pod == pods[i].pod && again[i].node == pods[i].node &&
                  again[i].n_ips == pods[i].n_ips && again[i].seen_ns == pods[i].seen_ns &&
                  memcmp(again[i].ip, pods[i].ip, sizeof(pods[i].ip)) == 0,
              "pod %d differs after a round trip", i);
    buf_free(&b);
    return 0;
}

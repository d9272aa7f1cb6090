/*
 * The Kubernetes API server's answers, hostile: the first byte chooses a
 * PodList page or a watch stream, the rest is the body. Whatever is applied
 * must leave the pod cache and its IP index consistent: every lookup
 * answers, a named peer is a whole one, and the cache stays within its bound.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "event.h"
#include "k8s.h"

static struct k8s *k;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!k) {
        struct k8s_options o = {.api_url = "http://127.0.0.1:1", .max_pods = 64};
        int err = 0;
        if (!(k = k8s_new(&o, &err)))
            abort();
    }
    if (size < 1)
        return 0;
    char err[256];
    k8s_feed(k, data[0] & 1, (const char *)data + 1, size - 1, err, sizeof(err));
    struct k8s_stats st;
    k8s_get_stats(k, &st);
    if (st.pods_cached > 64)
        abort();
    struct k8s_pod pod;
    k8s_pod_cache_lookup(k, "6f1c2a3b-0001-4c5d-8e9f-000000001eef", &pod);
    /* the seeds' pod addresses, and the last 16 input bytes as one */
    static const uint8_t v4[][16] = {{10, 244, 1, 5}, {10, 244, 1, 6}, {10, 244, 1, 1}};
    struct event_peer peer = {0};
    for (size_t i = 0; i < sizeof(v4) / sizeof(v4[0]); i++)
        if (k8s_peer_lookup(k, EVENT_FAMILY_IPV4, v4[i], &peer) && !peer.pod)
            abort();
    if (size >= 17 && k8s_peer_lookup(k, EVENT_FAMILY_IPV6, data + size - 16, &peer) && !peer.pod)
        abort();
    return 0;
}

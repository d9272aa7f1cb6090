/*
 * Services and EndpointSlices from the Kubernetes API server, hostile: the
 * first byte chooses Services or EndpointSlices and a list page or a watch
 * stream, the rest is the body. Whatever is applied must leave the index
 * consistent: every lookup answers, a named Service is "namespace/name",
 * and the objects stay within their bound.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "k8s_services.h"

static struct k8s_services *s;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!s) {
        struct k8s_conn_options o = {.api_url = "http://127.0.0.1:1"};
        int err = 0;
        if (!(s = k8s_services_new(&o, 32, &err)))
            abort();
    }
    if (size < 1)
        return 0;
    char err[256];
    k8s_services_feed(s, data[0] & 1, data[0] & 2, (const char *)data + 1, size - 1, err,
                      sizeof(err));
    struct k8s_services_stats st;
    k8s_services_get_stats(s, &st);
    if (st.services > 32 || st.slices > 32)
        abort();
    static const uint8_t v4[][16] = {{10, 96, 0, 10}, {10, 1, 0, 5}, {10, 1, 0, 6}};
    for (size_t i = 0; i < sizeof(v4) / sizeof(v4[0]); i++) {
        const char *svc = NULL;
        enum k8s_services_result r = k8s_services_lookup(s, EVENT_FAMILY_IPV4, v4[i], 80, 6, &svc);
        if ((r == K8S_SVC_CLUSTER_IP || r == K8S_SVC_BACKEND) && (!svc || !strchr(svc, '/')))
            abort();
    }
    return 0;
}

/*
 * Kubernetes Services for the aggregator: which Service an address is, so a
 * connection to a ClusterIP:port, or to or from a Service's backend pod,
 * gets peer_service ("namespace/name").
 *
 * Two LIST + WATCHes (k8s_watch.c, one thread each): Services (their
 * ClusterIPs and ports; headless and ExternalName Services have none) and
 * EndpointSlices (their endpoints' addresses, tied to the Service by the
 * kubernetes.io/service-name label). An address backing two Services names
 * neither: never a guess. Objects are bounded (max_objects Services plus
 * as many EndpointSlices, at most K8S_SERVICES_MAX_ADDRS addresses each);
 * what does not fit is refused and counted.
 *
 * Threads: lookups from any thread; the watches' callbacks on their own.
 */
#ifndef EBPF_MONITOR_K8S_SERVICES_H
#define EBPF_MONITOR_K8S_SERVICES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "event.h"
#include "k8s_watch.h"

#define K8S_SERVICES_MAX_ADDRS 2048 /* per EndpointSlice (the API allows 1000 endpoints) */
#define K8S_SERVICES_MAX_PORTS 32   /* per Service, more are not matched */

enum k8s_services_result {
    K8S_SVC_MISS = 0,
    K8S_SVC_CLUSTER_IP, /* the address is a Service's ClusterIP and the port one of its ports */
    K8S_SVC_BACKEND,    /* the address is an endpoint of exactly one Service */
    K8S_SVC_AMBIGUOUS,  /* an endpoint of several Services: not named */
    K8S_SVC_RESULT_COUNT,
};

struct k8s_services_stats {
    uint64_t services; /* Services held */
    uint64_t slices;   /* EndpointSlices held */
    uint64_t refused;  /* objects not kept: over the bound */
    uint64_t lookups;  /* connection/accept/close events looked up */
    uint64_t results[K8S_SVC_RESULT_COUNT];
    struct k8s_watch_stats services_watch, slices_watch;
};

struct k8s_services;

/*
 * max_objects: Services kept (and as many EndpointSlices). NULL with *err
 * (-EINVAL for a bad API URL, -ENOMEM, -EIO). Without an API server it
 * still succeeds and names nothing.
 */
struct k8s_services *k8s_services_new(const struct k8s_conn_options *o, size_t max_objects,
                                      int *err);
/* Starts both watches ("k8s-services", "k8s-slices"). 0 or -errno. */
int k8s_services_start(struct k8s_services *s);
/* Whether s has an API server to ask (K8S_API_URL, or KUBERNETES_SERVICE_HOST in a pod). */
bool k8s_services_has_api(const struct k8s_services *s);
void k8s_services_free(struct k8s_services *s);

/*
 * The Service for an address (family an enum event_family), port and IP
 * protocol: a ClusterIP matches only on one of its ports; a backend on any
 * port. *service (interned "namespace/name") is set on CLUSTER_IP and
 * BACKEND. Not counted.
 */
enum k8s_services_result k8s_services_lookup(struct k8s_services *s, unsigned family,
                                             const uint8_t addr[16], uint16_t port,
                                             uint8_t protocol, const char **service);

/* What the ClusterIP join (pkg/joins) needs to know of an event's addresses. */
enum k8s_services_side {
    K8S_SIDE_NONE = 0,
    K8S_SIDE_TO_CLUSTER_IP, /* a client side (connection, client close) to a ClusterIP:port */
    K8S_SIDE_BACKEND,       /* a server side (accept, server close) on an address that backs
                               exactly one Service */
};

/*
 * Fills peer.service of events[0..n) (connection, accept, close) whose
 * peer_service is empty: the destination of a client side, the source of a
 * server side. count: false to leave the counters alone (a second look at
 * events already counted). sides (n entries, or NULL): each event's enum
 * k8s_services_side, found in the same pass.
 */
void k8s_services_enrich(struct k8s_services *s, struct event *events, size_t n, bool count,
                         uint8_t *sides);

/*
 * Says whether an address is shared (a node's, which hostNetwork pods and
 * every host process use): such an address names no Service by being a
 * backend when it is a peer's, since whatever else listens there or connects
 * from there would be named too; counted as ambiguous. A ClusterIP on its
 * port, and the server side of the ClusterIP join (the accepting pod is
 * known), are unaffected. fn is called under s's lock, from enrich.
 */
typedef bool (*k8s_services_shared_fn)(void *ctx, unsigned family, const uint8_t addr[16]);
void k8s_services_set_shared(struct k8s_services *s, k8s_services_shared_fn fn, void *ctx);

void k8s_services_get_stats(struct k8s_services *s, struct k8s_services_stats *out);

/*
 * Applies a ServiceList/EndpointSliceList page (watch false) or watch
 * stream bytes (watch true), as the watches do. For tests and the fuzz
 * target. 0, -ESTALE, or -EINVAL with err set.
 */
int k8s_services_feed(struct k8s_services *s, bool slices, bool watch, const char *data, size_t len,
                      char *err, size_t errlen);

#endif

/*
 * Kubernetes workload attribution: which pod made an event.
 *
 * The event's cgroup id gives the pod UID and container id (cgroup.h); this
 * module adds the pod's name and namespace from the API server. A thread
 * ("k8s-watch") LISTs the pods bound to this node, then WATCHes from the
 * list's resourceVersion; an expired watch (410 Gone, as an HTTP status or an
 * ERROR event) re-lists, other failures reconnect with exponential backoff.
 * Pods go into a bounded cache keyed by UID that keeps deleted pods for
 * tombstone_ttl_ms, so events enriched after a short-lived pod is gone still
 * name it. Static pods are also found by their kubelet UID (the mirror pod's
 * kubernetes.io/config.mirror annotation), which is what their cgroups carry.
 *
 * Each pod also gives its IPs (status.podIPs), hostNetwork, app label and
 * workload: the controller owner reference, followed from a ReplicaSet to
 * its Deployment (by the pod-template-hash naming rule) and from a Job to
 * its CronJob (a GET of the Job, cached; a Job that cannot be read stays a
 * Job). An IP -> pod index over the cache names the peer of a connection,
 * accept or close when exactly one live, non-hostNetwork pod holds the
 * address; an address several pods share (hostNetwork, a reused IP whose
 * old pod is still a tombstone) names no one.
 *
 * When the API server is unreachable, enrichment still fills the pod UID,
 * container id and node name, and k8s_get_stats() says why it is not
 * connected. Lookups are thread-safe.
 */
#ifndef EBPF_MONITOR_K8S_H
#define EBPF_MONITOR_K8S_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cgroup.h"
#include "event.h"
#include "k8s_watch.h" /* K8S_TOKEN_PATH, K8S_CA_PATH */
#include "peers.h"

struct k8s_options {
    /* NULL: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT; with neither,
     * no API server is used (attribution from cgroups only). http:// is accepted. */
    const char *api_url;
    const char *token_path;      /* NULL: K8S_TOKEN_PATH; "": send no token. Re-read per request. */
    const char *ca_path;         /* NULL: K8S_CA_PATH; "": the system's CA store */
    const char *node_name;       /* NULL: $NODE_NAME; unset: watch every pod in the cluster */
    unsigned tombstone_ttl_ms;   /* how long deleted pods stay named; 0: 300000 */
    size_t max_pods;             /* cache bound, live + deleted; 0: 4096 */
    unsigned backoff_min_ms;     /* reconnect delay after an error, doubling; 0: 250 */
    unsigned backoff_max_ms;     /* 0: 30000 */
    unsigned watch_timeout_s;    /* the server ends each watch after this; 0: 300 */
    unsigned connect_timeout_ms; /* 0: 5000 */
};

#define K8S_POD_IPS_MAX 2 /* status.podIPs: one per family */

/* A cached pod; strings interned. */
struct k8s_pod {
    const char *uid;
    const char *name;
    const char *namespace;
    const char *node;          /* spec.nodeName; NULL when not yet scheduled */
    const char *workload;      /* the controller's workload; NULL while its Job is being read */
    const char *workload_kind; /* "Deployment", "StatefulSet", ..., "Pod" without a controller */
    const char *app;           /* app.kubernetes.io/name, else app label; NULL when neither */
    const char *ips;           /* status.podIPs as "10.1.0.5,fd00::5"; NULL when none */
    bool host_network;         /* spec.hostNetwork: its IPs are the node's */
    bool deleted;              /* a tombstone: DELETED (or gone from a re-list) within the TTL */
};

struct k8s_stats {
    uint64_t pods_cached;    /* entries now, live + deleted */
    uint64_t pods_deleted;   /* tombstones now */
    uint64_t evicted;        /* pods dropped to stay within max_pods */
    uint64_t expired;        /* tombstones dropped after their TTL */
    uint64_t lookups;        /* pod cache lookups (one per enriched pod event) */
    uint64_t misses;         /* lookups of a UID the cache did not know */
    uint64_t api_errors;     /* failed LIST/WATCH requests and ERROR watch events */
    uint64_t lists;          /* completed LISTs */
    uint64_t relists;        /* LISTs after the first (expired watch or reconnect) */
    uint64_t watch_events;   /* ADDED/MODIFIED/DELETED/BOOKMARK applied */
    uint64_t job_lookups;    /* GETs of a pod's Job, to find its CronJob */
    uint64_t job_errors;     /* of which failed: the pods say kind Job */
    uint64_t jobs_evicted;   /* cached Jobs dropped to stay within max_pods */
    uint64_t peer_lookups;   /* peer addresses looked up (connection, accept, close) */
    uint64_t peer_hits;      /* of which named a pod */
    uint64_t peer_ambiguous; /* of which several pods (or a hostNetwork pod) held the address */
    uint64_t deletions;      /* pods with addresses deleted: queued for the bus (k8s_take_gone) */
    uint64_t deletions_dropped; /* of which lost from a full queue (K8S_GONE_MAX) */
    bool connected;             /* the last LIST/WATCH request succeeded */
    char last_error[256];       /* the most recent error, "" when none happened yet */
};

struct k8s;

/*
 * Returns NULL and sets *err (-EINVAL for a bad option, -ENOMEM). Without an
 * API server (no api_url and no KUBERNETES_SERVICE_HOST) it still succeeds:
 * k8s_enrich() then attributes from cgroups only.
 */
struct k8s *k8s_new(const struct k8s_options *opts, int *err);
/* Starts the "k8s-watch" thread (nothing to start without an API server). 0 or -errno. */
int k8s_start(struct k8s *k);
/* Whether k has an API server to ask (K8S_API_URL, or KUBERNETES_SERVICE_HOST in a pod). */
bool k8s_has_api(const struct k8s *k);
/* Stops the thread (interrupting a request in flight) and frees everything. */
void k8s_free(struct k8s *k);

/* The node name in use (interned), NULL when unknown. */
const char *k8s_node_name(const struct k8s *k);

/* Copies the cached pod with this UID (or static pod kubelet UID). Returns 1, or 0 when unknown. */
int k8s_pod_cache_lookup(struct k8s *k, const char *uid, struct k8s_pod *out);

/*
 * Names the pod that alone holds addr (family an enum event_family, the
 * address as struct event keeps it; v4-mapped IPv6 is IPv4): fills out's
 * pod, namespace, workload, workload_kind and node (the rest untouched) and
 * returns 1. Returns 0 when no live pod holds it, or when several pods do, or
 * a hostNetwork pod does (never a guess). Counted in the stats.
 */
int k8s_peer_lookup(struct k8s *k, unsigned family, const uint8_t addr[16], struct event_peer *out);

/*
 * Fills e->k8s from e->cgroup_id: pod UID and container id from the cgroup,
 * node name, and the pod's name, namespace, workload, app, IPs and
 * hostNetwork when the cache knows the pod. Host processes get nothing
 * (e->k8s zeroed). With k, the peer of a connection (its destination), an
 * accept (its source) or a close (the other side of its role) goes into
 * e->peer when k8s_peer_lookup() names it, for pods and host processes
 * alike. k may be NULL (cgroup fields only).
 * Returns 1 for a pod's process, 0 for a host process or unknown cgroup,
 * -EAGAIN when the cgroup walk was rate-limited, or another negative errno.
 */
int k8s_enrich(struct k8s *k, struct cgroup_resolver *cg, struct event *e);

void k8s_get_stats(struct k8s *k, struct k8s_stats *out);

/*
 * The pods seen deleted (a DELETED watch event, or gone from a re-list) that
 * had addresses, for the agent to send with its batches so the aggregators
 * stop naming a pod whose address a new pod may get: takes up to max, oldest
 * first, as peers pods with gone_ns (realtime) set. The queue holds
 * K8S_GONE_MAX; a full one loses its oldest (deletions_dropped).
 */
#define K8S_GONE_MAX 1024
size_t k8s_take_gone(struct k8s *k, struct peers_pod *out, size_t max);

/*
 * The UIDs (interned) of the pods of this node the cache holds, once per
 * process, after the first complete LIST: at most max into uids, *at_ns the
 * time taken (realtime). With them the aggregators end the claims of pods
 * deleted while no agent watched the node (peers_node_present()). Returns the
 * count; -EAGAIN before the first LIST completed (or without a node name);
 * -EALREADY once taken; -E2BIG (taken: not asked again) when the node's pods
 * are more than max or the cache had to leave a live one out (max_pods), so
 * no complete list can be given.
 */
int k8s_take_present(struct k8s *k, const char **uids, size_t max, uint64_t *at_ns);

/*
 * Applies bytes as if the API server had sent them, without any request:
 * a PodList page (watch false) or a chunk of a watch stream, one JSON event
 * per line (watch true; an unfinished last line is dropped). For tests and
 * the fuzz target; the watch thread goes through the same code. 0, -ESTALE
 * for a 410 watch ERROR, or -EINVAL with err set.
 */
int k8s_feed(struct k8s *k, bool watch, const char *data, size_t len, char *err, size_t errlen);

#endif

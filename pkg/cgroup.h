/*
 * cgroup v2 id -> Kubernetes pod UID and container id.
 *
 * Events carry the cgroup v2 id of the task (bpf_get_current_cgroup_id(), the
 * kernfs node id, which on 64-bit equals the inode number of the cgroup's
 * directory). The resolver finds the directory with that inode under the
 * kubelet's subtrees (kubepods*), and parses the path for both cgroup drivers
 * and the containerd, CRI-O and Docker naming schemes:
 *
 *   systemd:  kubepods.slice/kubepods-burstable.slice/
 *             kubepods-burstable-pod<uid with '_'>.slice/cri-containerd-<id>.scope
 *             (also crio-<id>.scope, docker-<id>.scope)
 *   cgroupfs: kubepods/burstable/pod<uid>/<id>   (guaranteed: kubepods/pod<uid>/<id>;
 *             CRI-O: crio-<id>)
 *
 * The container id is reported as the bare 64-hex id, whatever the runtime:
 * the cgroupfs driver's names do not say which runtime made them, so a bare
 * id is the one form available for every driver (Kubernetes' containerID
 * status field is "<runtime>://<this id>").
 *
 * Results (including "not a pod") are kept in a bounded LRU cache; cgroup ids
 * are never reused, so cached results never go stale. A miss walks the
 * kubepods subtrees, unless the last walk started after the moment the
 * cgroup is known to have existed: that walk already saw it, so it is not a
 * pod's. New containers are thus found at their first event, and host
 * cgroups cost one walk each at most. Thread-safe.
 */
#ifndef EBPF_MONITOR_CGROUP_H
#define EBPF_MONITOR_CGROUP_H

#include <stddef.h>
#include <stdint.h>

#define CGROUP_CONTAINER_ID_LEN 64

/* What a cgroup says about the pod it belongs to; both strings interned, NULL when unknown. */
struct cgroup_pod {
    const char *pod_uid;      /* "0b7d4a2e-...", dashes as in metadata.uid */
    const char *container_id; /* 64 hex chars; NULL for the pod-level cgroup itself */
};

/*
 * Parses a cgroup path (relative to the cgroup v2 root, with or without a
 * leading '/'). Returns 1 and fills out when the path is inside a kubepods pod
 * cgroup, 0 when it is not (out zeroed), -ENOMEM when interning failed.
 */
int cgroup_parse_path(const char *path, struct cgroup_pod *out);

/*
 * Finds the cgroup v2 mount point from /proc/self/mountinfo: /sys/fs/cgroup
 * when it is cgroup2, else /sys/fs/cgroup/unified (hybrid hosts), else the
 * first cgroup2 mount. Returns 0, -ENOENT when there is none, -ENAMETOOLONG.
 */
int cgroup_v2_root(char *buf, size_t len);

struct cgroup_resolver_options {
    const char *root; /* cgroup v2 mount; NULL = detect with cgroup_v2_root() */
    size_t cache_max; /* cached ids; 0 = 8192 */
};

struct cgroup_resolver_stats {
    uint64_t lookups;
    uint64_t hits;
    uint64_t misses;                /* lookups not answered by the cache */
    uint64_t evictions;             /* cache entries dropped to stay within cache_max */
    uint64_t scans;                 /* walks of the kubepods subtrees */
    uint64_t answered_by_last_walk; /* misses answered "not a pod" without a new walk */
    uint64_t cached;                /* entries in the cache now */
};

struct cgroup_resolver;

/* Returns NULL and sets *err (-ENOENT: no cgroup v2 mount, -ENOMEM). */
struct cgroup_resolver *cgroup_resolver_new(const struct cgroup_resolver_options *opts, int *err);
void cgroup_resolver_free(struct cgroup_resolver *r);
/* The cgroup v2 root in use; owned by the resolver. */
const char *cgroup_resolver_root(const struct cgroup_resolver *r);

/*
 * Resolves a cgroup id. existed_ns is a CLOCK_REALTIME time at which the
 * cgroup is known to have existed (the event's timestamp), 0 when unknown
 * (a miss then always walks). Returns 1 with out filled for a pod's cgroup,
 * 0 for any other cgroup (host processes, or an id that no longer exists;
 * out zeroed), or a negative errno.
 */
int cgroup_resolve(struct cgroup_resolver *r, uint64_t cgroup_id, uint64_t existed_ns,
                   struct cgroup_pod *out);

void cgroup_resolver_get_stats(struct cgroup_resolver *r, struct cgroup_resolver_stats *out);

#endif

/*
 * Tests for pkg/cgroup: the kubelet's cgroup names for both drivers and all
 * three runtimes, parsed from strings and resolved for real processes moved
 * into real kubepods-style cgroups on this machine; host cgroups resolve to
 * nothing; the cache stays within its bound and counts what it did.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <linux/magic.h>
#include <stdio.h>
#include <time.h>
#include <string.h>
#include <sys/statfs.h>

#include "cgroup.h"
#include "fixtures/k8s/kubepods.h"
#include "intern.h"

#define UID_DASH   "0b7d4a2e-1f3c-4c55-9a2e-6f7b8c9d0e1f"
#define UID_UNDER  "0b7d4a2e_1f3c_4c55_9a2e_6f7b8c9d0e1f"
#define CID        "4f1c2a0b9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b"
#define STATIC_UID "6d3c0a9f1b2e4d5c8a7b6c5d4e3f2a1b"

static void expect_pod(const char *path, const char *uid, const char *cid)
{
    struct cgroup_pod pod;
    cr_assert_eq(cgroup_parse_path(path, &pod), 1, "%s", path);
    cr_assert_str_eq(pod.pod_uid, uid, "%s", path);
    cr_assert_eq(pod.pod_uid, intern(uid), "pod uid is interned");
    if (cid) {
        cr_assert_not_null(pod.container_id, "%s", path);
        cr_assert_str_eq(pod.container_id, cid, "%s", path);
    } else {
        cr_assert_null(pod.container_id, "%s", path);
    }
}

static void expect_host(const char *path)
{
    struct cgroup_pod pod = {.pod_uid = "x"};
    cr_assert_eq(cgroup_parse_path(path, &pod), 0, "%s", path);
    cr_assert_null(pod.pod_uid);
    cr_assert_null(pod.container_id);
}

Test(cgroup_parse, systemd_driver_all_runtimes)
{
    expect_pod("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" UID_UNDER
               ".slice/cri-containerd-" CID ".scope",
               UID_DASH, CID);
    expect_pod("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" UID_UNDER
               ".slice/crio-" CID ".scope",
               UID_DASH, CID);
    expect_pod("kubepods.slice/kubepods-pod" UID_UNDER ".slice/docker-" CID ".scope", UID_DASH,
               CID);
    /* kind nests the kubelet's slices one level down, with their own prefix */
    expect_pod("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
               "kubelet-kubepods-besteffort-pod" UID_UNDER ".slice/cri-containerd-" CID ".scope",
               UID_DASH, CID);
}

Test(cgroup_parse, cgroupfs_driver_all_qos_classes)
{
    expect_pod("/kubepods/burstable/pod" UID_DASH "/" CID, UID_DASH, CID);
    expect_pod("/kubepods/besteffort/pod" UID_DASH "/" CID, UID_DASH, CID);
    expect_pod("/kubepods/pod" UID_DASH "/" CID, UID_DASH, CID);
    expect_pod("/kubepods/burstable/pod" UID_DASH "/crio-" CID, UID_DASH, CID);
}

Test(cgroup_parse, pod_level_nested_and_static_pods)
{
    /* the pod's own cgroup: a pod, no container */
    expect_pod("/kubepods/burstable/pod" UID_DASH, UID_DASH, NULL);
    expect_pod("/kubepods.slice/kubepods-pod" UID_UNDER ".slice", UID_DASH, NULL);
    /* CRI-O's monitor process lives beside the container, not in it */
    expect_pod("/kubepods.slice/kubepods-pod" UID_UNDER ".slice/crio-conmon-" CID ".scope",
               UID_DASH, NULL);
    /* cgroups a container creates inside itself belong to that container */
    expect_pod("/kubepods.slice/kubepods-pod" UID_UNDER ".slice/cri-containerd-" CID
               ".scope/init.scope",
               UID_DASH, CID);
    /* static pods: the kubelet's UID is 32 hex chars without dashes */
    expect_pod("/kubepods/burstable/pod" STATIC_UID "/" CID, STATIC_UID, CID);
    /* upper-case hex is normalised to Kubernetes' lower case */
    expect_pod("/kubepods/pod0B7D4A2E-1F3C-4C55-9A2E-6F7B8C9D0E1F/" CID, UID_DASH, CID);
}

Test(cgroup_parse, host_cgroups_are_not_pods)
{
    expect_host("/");
    expect_host("");
    expect_host("/user.slice/user-0.slice/session-1.scope");
    expect_host("/system.slice/docker-" CID ".scope"); /* a container, not a pod */
    expect_host("/system.slice/containerd.service");
    expect_host("/pod" UID_DASH "/" CID);                 /* no kubepods above it */
    expect_host("/kubepods/burstable");                   /* QoS level, no pod */
    expect_host("/kubepods/burstable/podnot-a-uid/" CID); /* malformed UID */
    expect_host("/kubepods.slice/kubepods-burstable.slice");
}

Test(cgroup_root, detects_the_cgroup2_mount)
{
    char root[KP_ROOT_MAX];
    struct statfs sf;
    int rc = cgroup_v2_root(root, sizeof(root));
    if (rc == -ENOENT)
        cr_skip_test("no cgroup v2 mount here");
    cr_assert_eq(rc, 0);
    cr_assert_eq(statfs(root, &sf), 0, "statfs %s: %s", root, strerror(errno));
    cr_assert_eq(sf.f_type, CGROUP2_SUPER_MAGIC, "%s is not cgroup2", root);
    cr_assert_eq(cgroup_v2_root(root, 4), -ENAMETOOLONG);
}

static struct cgroup_resolver *new_resolver(const char *root, size_t cache_max)
{
    struct cgroup_resolver_options o = {.root = root, .cache_max = cache_max};
    int err = 0;
    struct cgroup_resolver *r = cgroup_resolver_new(&o, &err);
    cr_assert_not_null(r, "cgroup_resolver_new: %s", strerror(-err));
    return r;
}

/* A real process in a real cgroup named as the given driver/runtime would. */
static void check_real(const char *root, struct cgroup_resolver *r, const char *rel,
                       const char *uid, const char *cid)
{
    struct kp_proc p;
    struct cgroup_pod pod;
    kp_start(&p, root, rel);
    int rc = cgroup_resolve(r, p.cgroup_id, 0, &pod);
    kp_stop(&p);
    cr_assert_eq(rc, 1, "%s (id %llu): %d", rel, (unsigned long long)p.cgroup_id, rc);
    cr_assert_str_eq(pod.pod_uid, uid);
    if (cid)
        cr_assert_str_eq(pod.container_id, cid);
    else
        cr_assert_null(pod.container_id);
}

Test(cgroup_resolve, systemd_driver_real_processes)
{
    char root[KP_ROOT_MAX], uid[37], suid[37], cid[65], rel[KP_REL_MAX];
    kp_root_or_skip(root, sizeof(root));
    struct cgroup_resolver *r = new_resolver(NULL, 0);
    cr_assert_str_eq(cgroup_resolver_root(r), root);

    static const char *const scopes[] = {"cri-containerd-%s.scope", "crio-%s.scope",
                                         "docker-%s.scope"};
    for (size_t i = 0; i < 3; i++) {
        char leaf[128];
        kp_random_uid(uid);
        kp_systemd_uid(uid, suid);
        kp_random_container_id(cid);
        snprintf(leaf, sizeof(leaf), scopes[i], cid);
        snprintf(rel, sizeof(rel),
                 "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod%s.slice/%s",
                 suid, leaf);
        check_real(root, r, rel, uid, cid);
    }
    cgroup_resolver_free(r);
}

Test(cgroup_resolve, cgroupfs_driver_real_processes)
{
    char root[KP_ROOT_MAX], uid[37], cid[65], rel[KP_REL_MAX];
    kp_root_or_skip(root, sizeof(root));
    struct cgroup_resolver *r = new_resolver(NULL, 0);

    static const char *const layouts[] = {"kubepods/burstable/pod%s/%s", "kubepods/pod%s/%s",
                                          "kubepods/besteffort/pod%s/crio-%s"};
    for (size_t i = 0; i < 3; i++) {
        kp_random_uid(uid);
        kp_random_container_id(cid);
        snprintf(rel, sizeof(rel), layouts[i], uid, cid);
        check_real(root, r, rel, uid, cid);
    }
    /* a process in the pod's own cgroup: the pod, but no container */
    kp_random_uid(uid);
    snprintf(rel, sizeof(rel), "kubepods/burstable/pod%s", uid);
    check_real(root, r, rel, uid, NULL);
    cgroup_resolver_free(r);
}

Test(cgroup_resolve, host_processes_resolve_to_nothing)
{
    char root[KP_ROOT_MAX], rel[64];
    struct cgroup_pod pod;
    kp_root_or_skip(root, sizeof(root));
    struct cgroup_resolver *r = new_resolver(NULL, 0);

    struct kp_proc p;
    snprintf(rel, sizeof(rel), "ebpf-monitor-test-%d.slice/app.scope", getpid());
    kp_start(&p, root, rel);
    int rc = cgroup_resolve(r, p.cgroup_id, 0, &pod);
    kp_stop(&p);
    cr_assert_eq(rc, 0);
    cr_assert_null(pod.pod_uid);
    cr_assert_null(pod.container_id);

    /* the root cgroup, and an id that names no cgroup at all */
    cr_assert_eq(cgroup_resolve(r, kp_cgroup_id(root), 0, &pod), 0);
    cr_assert_eq(cgroup_resolve(r, UINT64_MAX - 7, 0, &pod), 0);

    /* answered from the cache the second time: no walk per host event */
    struct cgroup_resolver_stats st;
    cgroup_resolver_get_stats(r, &st);
    uint64_t scans = st.scans;
    cr_assert_eq(cgroup_resolve(r, p.cgroup_id, 0, &pod), 0);
    cgroup_resolver_get_stats(r, &st);
    cr_assert_eq(st.scans, scans);
    cr_assert_eq(st.hits, 1);
    cgroup_resolver_free(r);
}

Test(cgroup_resolve, cache_is_bounded_and_counted)
{
    enum { N = 6, CAP = 4 };
    char root[KP_ROOT_MAX], uid[N][37], cid[N][65];
    struct {
        char rel[KP_REL_MAX];
    } c[N];
    uint64_t ids[N];
    struct cgroup_pod pod;
    kp_root_or_skip(root, sizeof(root));
    struct cgroup_resolver *r = new_resolver(NULL, CAP);

    for (int i = 0; i < N; i++) {
        kp_random_uid(uid[i]);
        kp_random_container_id(cid[i]);
        char rel[KP_REL_MAX], dir[KP_PATH_MAX];
        snprintf(rel, sizeof(rel), "kubepods/burstable/pod%s/%s", uid[i], cid[i]);
        memcpy(c[i].rel, rel, sizeof(rel));
        kp_mkdirs(root, rel);
        snprintf(dir, sizeof(dir), "%s/%s", root, rel);
        ids[i] = kp_cgroup_id(dir);
    }
    /* every answer is right however much the cache had to evict */
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < N; i++) {
            cr_assert_eq(cgroup_resolve(r, ids[i], 0, &pod), 1);
            cr_assert_str_eq(pod.pod_uid, uid[i]);
            cr_assert_str_eq(pod.container_id, cid[i]);
        }
    }
    /* the most recent answer is a hit */
    struct cgroup_resolver_stats before, after;
    cgroup_resolver_get_stats(r, &before);
    cr_assert_eq(cgroup_resolve(r, ids[N - 1], 0, &pod), 1);
    cgroup_resolver_get_stats(r, &after);
    cr_assert_eq(after.hits, before.hits + 1);
    cr_assert_eq(after.misses, before.misses);

    cr_assert_eq(after.cached, CAP);
    cr_assert_geq(after.evictions, N - CAP);
    cr_assert_eq(after.lookups, 2 * N + 1);
    cr_assert_eq(after.hits + after.misses, after.lookups);
    cr_assert_eq(after.scans, after.misses, "rescan interval 0: a walk per miss");
    for (int i = 0; i < N; i++)
        kp_rmdirs(root, c[i].rel);
    cgroup_resolver_free(r);
}

static uint64_t realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* A container created after the last walk is found at its first event; an id
 * that existed before the last walk began is answered by that walk. */
Test(cgroup_resolve, new_cgroups_walk_at_once_old_ones_do_not)
{
    char root[KP_ROOT_MAX], uid[37], cid[65], rel[KP_REL_MAX], dir[KP_PATH_MAX];
    struct cgroup_pod pod;
    kp_root_or_skip(root, sizeof(root));
    struct cgroup_resolver *r = new_resolver(NULL, 0);

    uint64_t before_first_walk = realtime_ns();
    cr_assert_eq(cgroup_resolve(r, UINT64_MAX - 9, realtime_ns(), &pod), 0);
    kp_random_uid(uid);
    kp_random_container_id(cid);
    snprintf(rel, sizeof(rel), "kubepods/pod%s/%s", uid, cid);
    kp_mkdirs(root, rel);
    snprintf(dir, sizeof(dir), "%s/%s", root, rel);
    cr_assert_eq(cgroup_resolve(r, kp_cgroup_id(dir), realtime_ns(), &pod), 1);
    cr_assert_str_eq(pod.pod_uid, uid);
    cr_assert_str_eq(pod.container_id, cid);

    struct cgroup_resolver_stats st;
    cgroup_resolver_get_stats(r, &st);
    cr_assert_eq(st.scans, 2, "the new container needed its own walk");
    cr_assert_eq(cgroup_resolve(r, UINT64_MAX - 11, before_first_walk, &pod), 0);
    cgroup_resolver_get_stats(r, &st);
    cr_assert_eq(st.scans, 2, "an id older than the last walk needs no walk");
    cr_assert_eq(st.answered_by_last_walk, 1);
    kp_rmdirs(root, rel);
    cgroup_resolver_free(r);
}

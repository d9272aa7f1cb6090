/*
 * cgroup v2 id -> pod UID and container id: path parsing, mount detection,
 * the kubepods walk and the bounded LRU cache in front of it. See cgroup.h.
 */
#include "cgroup.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "intern.h"

#define CGROUP_CACHE_DEFAULT 8192
#define WALK_MAX_DEPTH       12        /* kubepods/qos/pod/container/nested... */
#define WALK_MAX_DIRS        (1 << 17) /* a walk never takes unbounded time */
#define NIL                  UINT32_MAX

/* ---- path parsing ---- */

static bool is_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isxdigit((unsigned char)s[i]))
            return false;
    return true;
}

/*
 * A pod UID as the kubelet writes it: a UUID (systemd escapes its '-' as '_'),
 * or 32 bare hex chars for static pods (their UID is a hash of the manifest).
 * Writes the canonical form (dashes, lower case) to out (>= 37 bytes).
 */
static bool parse_uid(const char *s, size_t n, char *out)
{
    size_t hex = 0;
    if (n < 32 || n > 36)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (isxdigit((unsigned char)c)) {
            out[i] = (char)tolower((unsigned char)c);
            hex++;
        } else if (c == '_' || c == '-') {
            out[i] = '-';
        } else {
            return false;
        }
    }
    out[n] = '\0';
    return hex == 32;
}

static bool has_suffix(const char *s, size_t n, const char *suffix, size_t *stem)
{
    size_t m = strlen(suffix);
    if (n < m || memcmp(s + n - m, suffix, m) != 0)
        return false;
    *stem = n - m;
    return true;
}

/* "pod<uid>" (cgroupfs) or "...-pod<uid_with_underscores>.slice" (systemd). */
static bool parse_pod_component(const char *s, size_t n, char *uid)
{
    size_t stem;
    if (n > 3 && memcmp(s, "pod", 3) == 0 && parse_uid(s + 3, n - 3, uid))
        return true;
    if (!has_suffix(s, n, ".slice", &stem))
        return false;
    for (size_t i = stem; i >= 4; i--) {
        if (memcmp(s + i - 4, "-pod", 4) == 0)
            return parse_uid(s + i, stem - i, uid);
    }
    return false;
}

/*
 * "<64hex>", "crio-<64hex>", or "<runtime>-<64hex>.scope" (cri-containerd-,
 * crio-, docker-). CRI-O's "crio-conmon-<id>.scope" holds the monitor, not
 * the container, so it stays pod-level.
 */
static bool parse_container_component(const char *s, size_t n, char *id)
{
    size_t stem = n;
    (void)has_suffix(s, n, ".scope", &stem);
    if (stem < CGROUP_CONTAINER_ID_LEN)
        return false;
    const char *hex = s + stem - CGROUP_CONTAINER_ID_LEN;
    if (!is_hex(hex, CGROUP_CONTAINER_ID_LEN))
        return false;
    if (hex != s && hex[-1] != '-')
        return false;
    if (memmem(s, (size_t)(hex - s), "conmon", 6))
        return false;
    for (size_t i = 0; i < CGROUP_CONTAINER_ID_LEN; i++)
        id[i] = (char)tolower((unsigned char)hex[i]);
    id[CGROUP_CONTAINER_ID_LEN] = '\0';
    return true;
}

int cgroup_parse_path(const char *path, struct cgroup_pod *out)
{
    char uid[40], cid[CGROUP_CONTAINER_ID_LEN + 1];
    bool kubepods = false, pod = false, container = false;
    const char *p = path;

    memset(out, 0, sizeof(*out));
    while (*p) {
        while (*p == '/')
            p++;
        const char *end = strchrnul(p, '/');
        size_t n = (size_t)(end - p);
        if (n == 0)
            break;
        if (!kubepods) {
            /* kubepods, kubepods.slice, kind's kubelet-kubepods.slice */
            kubepods = memmem(p, n, "kubepods", 8) != NULL;
        } else if (!pod) {
            pod = parse_pod_component(p, n, uid);
        } else {
            /* Only the level right below the pod names the container;
             * deeper cgroups (created inside the container) belong to it. */
            container = parse_container_component(p, n, cid);
            break;
        }
        p = end;
    }
    if (!pod)
        return 0;
    out->pod_uid = intern(uid);
    out->container_id = container ? intern(cid) : NULL;
    if (!out->pod_uid || (container && !out->container_id)) {
        memset(out, 0, sizeof(*out));
        return -ENOMEM;
    }
    return 1;
}

/* ---- mount detection ---- */

/* mountinfo escapes space, tab, newline and backslash as \ooo. */
static void unescape_octal(char *s)
{
    char *w = s;
    for (char *r = s; *r;) {
        if (r[0] == '\\' && r[1] >= '0' && r[1] <= '7' && r[2] >= '0' && r[2] <= '7' &&
            r[3] >= '0' && r[3] <= '7') {
            *w++ = (char)((r[1] - '0') * 64 + (r[2] - '0') * 8 + (r[3] - '0'));
            r += 4;
        } else {
            *w++ = *r++;
        }
    }
    *w = '\0';
}

int cgroup_v2_root(char *buf, size_t len)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    char *line = NULL, first[PATH_MAX] = "";
    size_t cap = 0;
    int found = 0; /* 2: /sys/fs/cgroup, 1: /sys/fs/cgroup/unified */

    if (!f)
        return -errno;
    while (getline(&line, &cap, f) > 0) {
        /* id parent major:minor root mountpoint options [optional...] - fstype source super */
        char *sep = strstr(line, " - ");
        char mnt[PATH_MAX], fstype[64];
        if (!sep || sscanf(sep + 3, "%63s", fstype) != 1 || strcmp(fstype, "cgroup2") != 0)
            continue;
        if (sscanf(line, "%*s %*s %*s %*s %4095s", mnt) != 1)
            continue;
        unescape_octal(mnt);
        if (strcmp(mnt, "/sys/fs/cgroup") == 0) {
            snprintf(first, sizeof(first), "%s", mnt);
            found = 2;
        } else if (strcmp(mnt, "/sys/fs/cgroup/unified") == 0 && found < 2) {
            snprintf(first, sizeof(first), "%s", mnt);
            found = 1;
        } else if (!first[0]) {
            snprintf(first, sizeof(first), "%s", mnt);
        }
    }
    free(line);
    fclose(f);
    if (!first[0])
        return -ENOENT;
    if (strlen(first) >= len)
        return -ENAMETOOLONG;
    strcpy(buf, first);
    return 0;
}

/* ---- resolver ---- */

struct cache_entry {
    uint64_t id;
    struct cgroup_pod pod; /* both NULL: not a pod cgroup */
    uint32_t hnext;        /* hash chain */
    uint32_t prev, next;   /* LRU list, head = most recent */
};

struct cgroup_resolver {
    char *root;
    pthread_mutex_t lock;
    struct cache_entry *entries;
    uint32_t *buckets;
    uint32_t nbuckets_mask;
    uint32_t cap, used;
    uint32_t head, tail;
    uint64_t last_scan_start_ns; /* CLOCK_REALTIME when the last walk began */
    bool scanned;
    struct cgroup_resolver_stats stats;
};

static uint32_t bucket_of(const struct cgroup_resolver *r, uint64_t id)
{
    id ^= id >> 33;
    id *= 0xff51afd7ed558ccdull;
    id ^= id >> 33;
    return (uint32_t)id & r->nbuckets_mask;
}

static void lru_unlink(struct cgroup_resolver *r, uint32_t i)
{
    struct cache_entry *e = &r->entries[i];
    if (e->prev != NIL)
        r->entries[e->prev].next = e->next;
    else
        r->head = e->next;
    if (e->next != NIL)
        r->entries[e->next].prev = e->prev;
    else
        r->tail = e->prev;
}

static void lru_push_front(struct cgroup_resolver *r, uint32_t i)
{
    struct cache_entry *e = &r->entries[i];
    e->prev = NIL;
    e->next = r->head;
    if (r->head != NIL)
        r->entries[r->head].prev = i;
    r->head = i;
    if (r->tail == NIL)
        r->tail = i;
}

static uint32_t cache_find(struct cgroup_resolver *r, uint64_t id)
{
    for (uint32_t i = r->buckets[bucket_of(r, id)]; i != NIL; i = r->entries[i].hnext)
        if (r->entries[i].id == id)
            return i;
    return NIL;
}

static void hash_unlink(struct cgroup_resolver *r, uint32_t i)
{
    uint32_t *link = &r->buckets[bucket_of(r, r->entries[i].id)];
    while (*link != i)
        link = &r->entries[*link].hnext;
    *link = r->entries[i].hnext;
}

static void cache_put(struct cgroup_resolver *r, uint64_t id, const struct cgroup_pod *pod)
{
    uint32_t i = cache_find(r, id);
    if (i != NIL) {
        r->entries[i].pod = *pod;
        lru_unlink(r, i);
        lru_push_front(r, i);
        return;
    }
    if (r->used < r->cap) {
        i = r->used++;
    } else {
        i = r->tail;
        lru_unlink(r, i);
        hash_unlink(r, i);
        r->stats.evictions++;
    }
    uint32_t b = bucket_of(r, id);
    r->entries[i] = (struct cache_entry){.id = id, .pod = *pod, .hnext = r->buckets[b]};
    r->buckets[b] = i;
    lru_push_front(r, i);
}

struct walk {
    struct cgroup_resolver *r;
    uint64_t target;
    bool found;
    struct cgroup_pod target_pod;
    unsigned dirs;
    char path[PATH_MAX]; /* relative to the root */
};

/* Is a directory on the way to (or inside) the kubelet's cgroups? */
static bool walk_interesting(const char *name, unsigned depth)
{
    if (strstr(name, "kubepods"))
        return true;
    /* kind and some distributions put kubepods under a kubelet slice */
    return depth == 0 && strstr(name, "kubelet") != NULL;
}

static void walk_dir(struct walk *w, int fd, size_t plen, unsigned depth, bool inside)
{
    DIR *d = fdopendir(fd);
    struct dirent *de;

    if (!d) {
        close(fd);
        return;
    }
    while ((de = readdir(d)) != NULL && w->dirs < WALK_MAX_DIRS) {
        struct stat st;
        if (de->d_type != DT_DIR && de->d_type != DT_UNKNOWN)
            continue;
        if (de->d_name[0] == '.')
            continue;
        bool in = inside || strstr(de->d_name, "kubepods") != NULL;
        if (!in && !walk_interesting(de->d_name, depth))
            continue;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISDIR(st.st_mode))
            continue;
        size_t nlen = strlen(de->d_name);
        if (plen + 1 + nlen >= sizeof(w->path))
            continue;
        w->dirs++;
        w->path[plen] = '/';
        memcpy(w->path + plen + 1, de->d_name, nlen + 1);

        if (in) {
            struct cgroup_pod pod = {0};
            if (cgroup_parse_path(w->path, &pod) == 1)
                cache_put(w->r, (uint64_t)st.st_ino, &pod);
            if ((uint64_t)st.st_ino == w->target) {
                w->found = true;
                w->target_pod = pod;
            }
        }
        if (depth + 1 < WALK_MAX_DEPTH) {
            int sub = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (sub >= 0)
                walk_dir(w, sub, plen + 1 + nlen, depth + 1, in);
        }
        w->path[plen] = '\0';
    }
    closedir(d);
}

struct cgroup_resolver *cgroup_resolver_new(const struct cgroup_resolver_options *opts, int *err)
{
    struct cgroup_resolver_options o = opts ? *opts : (struct cgroup_resolver_options){0};
    struct cgroup_resolver *r = calloc(1, sizeof(*r));
    char root[PATH_MAX];
    int rc = 0;

    if (!r) {
        rc = -ENOMEM;
        goto fail;
    }
    if (o.root) {
        snprintf(root, sizeof(root), "%s", o.root);
    } else if ((rc = cgroup_v2_root(root, sizeof(root))) < 0) {
        goto fail;
    }
    r->cap = (uint32_t)(o.cache_max ? o.cache_max : CGROUP_CACHE_DEFAULT);
    uint32_t nb = 1;
    while (nb < r->cap)
        nb <<= 1;
    r->nbuckets_mask = nb - 1;
    r->root = strdup(root);
    r->entries = calloc(r->cap, sizeof(*r->entries));
    r->buckets = malloc(nb * sizeof(*r->buckets));
    if (!r->root || !r->entries || !r->buckets) {
        rc = -ENOMEM;
        goto fail;
    }
    memset(r->buckets, 0xff, nb * sizeof(*r->buckets));
    r->head = r->tail = NIL;
    pthread_mutex_init(&r->lock, NULL);
    return r;

fail:
    if (r) {
        free(r->root);
        free(r->entries);
        free(r->buckets);
        free(r);
    }
    if (err)
        *err = rc;
    return NULL;
}

void cgroup_resolver_free(struct cgroup_resolver *r)
{
    if (!r)
        return;
    pthread_mutex_destroy(&r->lock);
    free(r->root);
    free(r->entries);
    free(r->buckets);
    free(r);
}

const char *cgroup_resolver_root(const struct cgroup_resolver *r)
{
    return r->root;
}

int cgroup_resolve(struct cgroup_resolver *r, uint64_t cgroup_id, uint64_t existed_ns,
                   struct cgroup_pod *out)
{
    int rc;

    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&r->lock);
    r->stats.lookups++;
    uint32_t i = cache_find(r, cgroup_id);
    if (i != NIL) {
        r->stats.hits++;
        *out = r->entries[i].pod;
        lru_unlink(r, i);
        lru_push_front(r, i);
        rc = out->pod_uid ? 1 : 0;
        goto out;
    }
    r->stats.misses++;
    /* The last walk began after this cgroup existed and did not find it
     * under kubepods: it is not a pod's. */
    if (r->scanned && existed_ns && r->last_scan_start_ns >= existed_ns) {
        struct cgroup_pod none = {0};
        r->stats.answered_by_last_walk++;
        cache_put(r, cgroup_id, &none);
        rc = 0;
        goto out;
    }
    uint64_t now = clock_realtime_ns();
    int fd = open(r->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        rc = -errno;
        goto out;
    }
    /* The walk runs under the lock: a second miss waits for it rather than
     * starting its own, and then finds its answer in the cache. */
    struct walk *w = calloc(1, sizeof(*w));
    if (!w) {
        close(fd);
        rc = -ENOMEM;
        goto out;
    }
    w->r = r;
    w->target = cgroup_id;
    walk_dir(w, fd, 0, 0, false);
    r->stats.scans++;
    r->scanned = true;
    r->last_scan_start_ns = now;
    /* Not found: a host cgroup (or one already gone); remember that too so
     * host processes do not cause a walk per event. */
    cache_put(r, cgroup_id, &w->target_pod);
    *out = w->target_pod;
    rc = out->pod_uid ? 1 : 0;
    free(w);
out:
    pthread_mutex_unlock(&r->lock);
    return rc;
}

void cgroup_resolver_get_stats(struct cgroup_resolver *r, struct cgroup_resolver_stats *out)
{
    pthread_mutex_lock(&r->lock);
    *out = r->stats;
    out->cached = r->used;
    pthread_mutex_unlock(&r->lock);
}

/*
 * BPF-side helpers shared by every program: the ring buffer and statistics
 * maps (user space creates one of each and hands it to every object, so all
 * programs share them), record reservation with loss accounting, and the
 * process attribution of the current task.
 */
#ifndef EBPF_MONITOR_BPF_COMMON_BPF_H
#define EBPF_MONITOR_BPF_COMMON_BPF_H

#include <bpf/bpf_endian.h>

#include "common.h"

#define AF_INET  2
#define AF_INET6 10

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 256 * 1024); /* replaced by the shared map at load */
} events SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, SLOT_COUNT);
    __type(key, __u32);
    __type(value, struct prog_stats);
} stats SEC(".maps");

static __always_inline struct prog_stats *slot_stats(__u32 slot)
{
    return bpf_map_lookup_elem(&stats, &slot);
}

/* Reserves a record; counts it as an event or, when the ring is full, as a kernel-side loss. */
static __always_inline void *record_reserve(__u32 slot, __u64 size)
{
    void *r = bpf_ringbuf_reserve(&events, size, 0);
    struct prog_stats *s = slot_stats(slot);

    if (s) {
        if (r)
            __sync_fetch_and_add(&s->events, 1);
        else
            __sync_fetch_and_add(&s->drops, 1);
    }
    return r;
}

/*
 * Reader wakeups. Waking the reader is an irq_work (an IPI: microseconds in a
 * VM) plus a remote task wakeup, many times the cost of the record itself; by
 * default the kernel does it for every record submitted while the reader is
 * caught up, i.e. for nearly every record at low and moderate rates. So the
 * reader polls on a short timer (CAPTURE_POLL_MAX_MS in cmd/agent/capture.c)
 * and records wake it only when a quarter of the ring is waiting, which
 * keeps a burst from filling the ring between two polls.
 */
/* A quarter of the shared ring's size, set by user space before load (it made the ring); 0:
 * asked of the ring at each record. */
const volatile __u32 ringbuf_wakeup_bytes = 0;

/* The wakeup flag of a record: the reader is woken once wakeup bytes (0: a quarter of the
 * ring) wait, counting adding bytes still to be added to the ring. */
static __always_inline __u64 record_wakeup(__u64 wakeup, __u64 adding)
{
    if (!wakeup)
        wakeup = bpf_ringbuf_query(&events, BPF_RB_RING_SIZE) / 4;
    if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) + adding >= wakeup)
        return BPF_RB_FORCE_WAKEUP;
    return BPF_RB_NO_WAKEUP;
}

/* Submits r, waking the reader once wakeup bytes wait (0: a quarter of the ring). */
static __always_inline void record_submit_wakeup(void *r, __u64 wakeup)
{
    bpf_ringbuf_submit(r, record_wakeup(wakeup, 0));
}

static __always_inline void record_submit(void *r)
{
    record_submit_wakeup(r, ringbuf_wakeup_bytes);
}

/*
 * A record of a kind a process can make as fast as it makes syscalls, paying nothing else
 * (a UDP connect() sends no packet): reserved only while the ring is less than half full, so
 * that such a flood, when the reader falls behind, leaves the other half to every other kind
 * of record. Refused, it counts as record_reserve() counts a full ring (drops). *waiting: the
 * bytes the ring held, for record_submit_bulk() (one query of the ring for both).
 */
static __always_inline void *record_reserve_bulk(__u32 slot, __u64 size, __u64 *waiting)
{
    __u64 half = ringbuf_wakeup_bytes ? 2 * (__u64)ringbuf_wakeup_bytes
                                      : bpf_ringbuf_query(&events, BPF_RB_RING_SIZE) / 2;
    struct prog_stats *s;

    *waiting = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
    if (*waiting + size <= half)
        return record_reserve(slot, size);
    s = slot_stats(slot);
    if (s)
        __sync_fetch_and_add(&s->drops, 1);
    return NULL;
}

/* Submits a record_reserve_bulk() one, waking the reader as record_submit() does, from the
 * bytes the ring held at its reservation and the record's own (with the ring's header). */
static __always_inline void record_submit_bulk(void *r, __u64 waiting, __u64 size)
{
    __u64 wakeup = ringbuf_wakeup_bytes;

    if (!wakeup)
        wakeup = bpf_ringbuf_query(&events, BPF_RB_RING_SIZE) / 4;
    bpf_ringbuf_submit(r, waiting + ((size + 8 + 7) & ~7ull) >= wakeup ? BPF_RB_FORCE_WAKEUP
                                                                       : BPF_RB_NO_WAKEUP);
}

/*
 * A record of variable length, built elsewhere (size bytes at data, bounded by the caller),
 * copied into the ring and counted as record_reserve() counts. What a record reserves sets
 * where the next one starts: the ring's lines a large, mostly unused reservation skips are
 * new ones for the next record to write (cache misses the next program pays, whatever its
 * hook). 8: the ring's own header of a record, and its rounding.
 */
static __always_inline void record_output(__u32 slot, void *data, __u64 size)
{
    long err = bpf_ringbuf_output(&events, data, size,
                                  record_wakeup(ringbuf_wakeup_bytes, (size + 8 + 7) & ~7ull));
    struct prog_stats *s = slot_stats(slot);

    if (s) {
        if (!err)
            __sync_fetch_and_add(&s->events, 1);
        else
            __sync_fetch_and_add(&s->drops, 1);
    }
}

#define RATE_NSEC 1000000000ull

/*
 * A per-CPU token bucket in nanosecond-tokens (one record costs RATE_NSEC;
 * the refill is rate per nanosecond, one second of burst), for the storms a
 * program must not let fill the shared ring buffer (drops, DNS).
 */
struct rate_bucket {
    __u64 tokens;
    __u64 last_ns;
    __u64 suppressed; /* since the last emitted record on this CPU */
};

/* True when a record may be emitted; otherwise counts it as suppressed (in b and in slot's
 * statistics). rate 0 = no limit. */
static __always_inline bool rate_bucket_take(struct rate_bucket *b, __u32 rate, __u32 slot,
                                             __u64 now)
{
    __u64 cap = (__u64)rate * RATE_NSEC;
    __u64 elapsed = now - b->last_ns;

    if (rate == 0)
        return true;
    if (b->last_ns == 0 || elapsed > RATE_NSEC)
        elapsed = RATE_NSEC;
    b->last_ns = now;
    b->tokens += elapsed * rate;
    if (b->tokens > cap)
        b->tokens = cap;
    if (b->tokens < RATE_NSEC) {
        struct prog_stats *s = slot_stats(slot);

        b->suppressed++;
        if (s)
            __sync_fetch_and_add(&s->suppressed, 1);
        return false;
    }
    b->tokens -= RATE_NSEC;
    return true;
}

/*
 * CAPTURE_CGROUP: only tasks and sockets inside one cgroup v2 subtree are
 * captured. User space sets these before load (the subtree's id, which is
 * its directory's inode number, and its depth below the root); with the
 * filter off the verifier prunes every check below, so it costs nothing.
 */
const volatile bool capture_cgroup_only = false;
const volatile __u64 capture_cgroup_id = 0;
const volatile __u32 capture_cgroup_level = 0;

struct cgroup___ids {
    __u64 ancestor_ids[0];
} __attribute__((preserve_access_index));

/* The current task is inside the subtree (process context only). */
static __always_inline bool task_captured(void)
{
    if (!capture_cgroup_only)
        return true;
    return bpf_get_current_ancestor_cgroup_id(capture_cgroup_level) == capture_cgroup_id;
}

/*
 * The cgroup a socket is charged to: the one its creator was in (an accepted
 * connection inherits its listener's). A connection still in its handshake
 * is a request socket: its listener's cgroup counts. A TIME_WAIT socket
 * keeps none: NULL. Kernels before 5.15 keep no pointer (a program that
 * reaches this there fails to load; guard with SOCK_CGROUP_KNOWN()).
 */
#define SOCK_CGROUP_KNOWN() bpf_core_field_exists(((struct sock *)0)->sk_cgrp_data.cgroup)

static __always_inline struct cgroup *sock_cgroup(const struct sock *sk)
{
    int state;

    if (!sk)
        return NULL;
    state = BPF_CORE_READ(sk, __sk_common.skc_state);
    if (state == TCP_TIME_WAIT)
        return NULL;
    if (state == TCP_NEW_SYN_RECV)
        sk = BPF_CORE_READ((struct request_sock *)sk, __req_common.skc_listener);
    if (!sk)
        return NULL;
    return BPF_CORE_READ(sk, sk_cgrp_data.cgroup);
}

/*
 * The socket's cgroup is inside the subtree: for hooks that run in softirq,
 * where the current task is whoever was interrupted. A TIME_WAIT socket is
 * not captured.
 */
static __always_inline bool cgroup_captured(struct cgroup *cg);

static __always_inline bool sock_captured(const struct sock *sk)
{
    if (!capture_cgroup_only)
        return true;
    return cgroup_captured(sock_cgroup(sk));
}

/* The cgroup (NULL: none) is inside the subtree (when one is captured). */
static __always_inline bool cgroup_captured(struct cgroup *cg)
{
    struct cgroup *anc = NULL;

    if (!capture_cgroup_only)
        return true;
    if (!cg || BPF_CORE_READ(cg, level) < (int)capture_cgroup_level)
        return false;
    if (!bpf_core_field_exists(cg->ancestors)) {
        /* Before 6.0 a cgroup kept its ancestors' ids rather than pointers. */
        __u64 id = 0;

        bpf_core_read(&id, sizeof(id),
                      &((struct cgroup___ids *)cg)->ancestor_ids[capture_cgroup_level]);
        return id == capture_cgroup_id;
    }
    if (bpf_core_read(&anc, sizeof(anc), &cg->ancestors[capture_cgroup_level]) || !anc)
        return false;
    return BPF_CORE_READ(anc, kn, id) == capture_cgroup_id;
}

/*
 * Whether the current task's fields can be read as plain loads through its
 * BTF pointer (bpf_get_current_task_btf(), 5.11+) rather than with helper
 * calls: each call costs tens of ns on hosts whose every kernel return goes
 * through a speculation-mitigation thunk. Objects that need 5.11+ anyway
 * define RECORD_HDR_TASK_BTF; the others ask the running kernel's BTF at
 * load (a CO-RE relocation: the verifier then sees a constant and drops the
 * branch the kernel cannot take). Tracing programs only: which program
 * types may call the helper differs (bpf/dns.bpf.c probes it).
 */
#ifdef RECORD_HDR_TASK_BTF
#define TASK_BTF_USABLE() true
#else
/* Set before load by a test, so the helper form is run on a kernel that has the other too. */
const volatile bool task_helpers_only = false;
#define TASK_BTF_USABLE()                                                                          \
    (!task_helpers_only &&                                                                         \
     bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_get_current_task_btf))
#endif

/* What bpf_get_current_cgroup_id() returns for task: its default hierarchy's cgroup's id. */
static __always_inline __u64 task_cgroup_id_btf(const struct task_struct *task)
{
    return task->cgroups->dfl_cgrp->kn->id;
}

/* task->comm (a BTF pointer's) into h->comm as two words: the kernel keeps it NUL-padded to
 * its end, as the helpers' copies are. Stored as words (h->comm is 8-aligned in the record):
 * a memcpy to a char array is stored byte by byte. */
static __always_inline void hdr_comm_btf(struct record_hdr *h, const struct task_struct *task)
{
    _Static_assert(sizeof(h->comm) == 16 && sizeof(task->comm) == 16, "comm is two words");
    _Static_assert(__builtin_offsetof(struct record_hdr, comm) % 8 == 0, "comm is 8-aligned");
    const __u64 *comm = (const __u64 *)task->comm;
    __u64 *dst = (__u64 *)h->comm;

    dst[0] = comm[0];
    dst[1] = comm[1];
}

/*
 * h's pid, ppid, uid and command from the current task, a BTF pointer: plain
 * loads. The pid is its tgid and the uid its cred's (a kuid is the initial
 * namespace's value, what bpf_get_current_uid_gid() reports).
 */
static __always_inline void hdr_task_btf(struct record_hdr *h, const struct task_struct *task)
{
    h->pid = task->tgid;
    h->ppid = task->real_parent->tgid;
    h->uid = task->cred->uid.val;
    hdr_comm_btf(h, task);
}

/* The same with helper calls, for kernels without bpf_get_current_task_btf(). */
static __always_inline void hdr_task_helpers(struct record_hdr *h)
{
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();

    h->pid = bpf_get_current_pid_tgid() >> 32;
    h->ppid = BPF_CORE_READ(task, real_parent, tgid);
    h->uid = (__u32)bpf_get_current_uid_gid();
    bpf_get_current_comm(h->comm, sizeof(h->comm));
}

/*
 * Attributes a record to the current task (process context only). cur: the
 * current task as a BTF pointer where the caller has it already (a
 * tracepoint's argument, or bpf_get_current_task_btf() taken once for the
 * whole run), which spares a helper call; NULL: asked for here.
 */
static __always_inline void record_hdr_of(struct record_hdr *h, __u32 kind,
                                          const struct task_struct *cur)
{
    h->kind = kind;
    h->ts_ns = bpf_ktime_get_boot_ns();
    if (TASK_BTF_USABLE()) {
        const struct task_struct *task = cur ? cur : bpf_get_current_task_btf();

        h->cgroup_id = task_cgroup_id_btf(task);
        hdr_task_btf(h, task);
    } else {
        h->cgroup_id = bpf_get_current_cgroup_id();
        hdr_task_helpers(h);
    }
}

static __always_inline void record_hdr_current(struct record_hdr *h, __u32 kind)
{
    record_hdr_of(h, kind, NULL);
}

#endif

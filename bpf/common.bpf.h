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
static __always_inline void record_submit(void *r)
{
    __u64 flags = BPF_RB_NO_WAKEUP;

    if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >=
        bpf_ringbuf_query(&events, BPF_RB_RING_SIZE) / 4)
        flags = BPF_RB_FORCE_WAKEUP;
    bpf_ringbuf_submit(r, flags);
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
 * Attributes a record to the current task (process context only). With
 * RECORD_HDR_TASK_BTF (objects that need 5.11+ anyway) the task is a BTF
 * pointer and its fields are plain loads rather than helper calls.
 */
static __always_inline void record_hdr_current(struct record_hdr *h, __u32 kind)
{
#ifdef RECORD_HDR_TASK_BTF
    struct task_struct *task = bpf_get_current_task_btf();
#else
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
#endif

    h->kind = kind;
    h->pid = bpf_get_current_pid_tgid() >> 32;
#ifdef RECORD_HDR_TASK_BTF
    h->ppid = task->real_parent->tgid;
#else
    h->ppid = BPF_CORE_READ(task, real_parent, tgid);
#endif
    h->uid = (__u32)bpf_get_current_uid_gid();
    h->ts_ns = bpf_ktime_get_boot_ns();
    h->cgroup_id = bpf_get_current_cgroup_id();
    bpf_get_current_comm(h->comm, sizeof(h->comm));
}

#endif

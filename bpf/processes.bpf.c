// SPDX-License-Identifier: GPL-2.0
/*
 * Processes: exec (filename and a bounded copy of argv, taken in the kernel)
 * and exit of a whole process (its last thread) with exit code and lifetime.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "process_events.h"
#include "common.bpf.h"

char LICENSE[] SEC("license") = "GPL";

/*
 * Where an exec record is put together before it is copied into the ring,
 * only as long as its argv (EXEC_RECORD_SIZE): most command lines are a
 * few dozen bytes of the 1 KiB room, and a full-size reservation per exec
 * made every record after it start on lines of the ring no record had
 * written yet (cache misses the next record's program paid; an exit record
 * cost twice as much after a full-size exec record as after a short one).
 * Per CPU: the program does not run twice at once on one CPU.
 */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct exec_record);
} exec_scratch SEC(".maps");

SEC("tp_btf/sched_process_exec")
int BPF_PROG(tp_btf__sched_process_exec, struct task_struct *p, pid_t old_pid,
             struct linux_binprm *bprm)
{
    struct exec_record *r;
    unsigned long arg_start, arg_end;
    __u32 zero = 0;
    __u64 len;

    if (!task_captured())
        return 0;
    r = bpf_map_lookup_elem(&exec_scratch, &zero);
    if (!r)
        return 0;
    record_hdr_of(&r->hdr, RECORD_EXEC, p); /* p is the current task */
    /* p and bprm are BTF pointers: their fields are plain loads, not helper calls. */
    /* The new image's credentials are committed by now (begin_new_exec()): a set-user-ID
     * bit has taken effect. Read through p in either task-reader form, as p->mm below: no
     * helper gives an euid, and p is a BTF pointer wherever tp_btf loads. */
    r->euid = p->cred->euid.val;
    long n = bpf_probe_read_kernel_str(r->filename, sizeof(r->filename), bprm->filename);
    r->filename_truncated = 0;
    r->pad[0] = r->pad[1] = 0;
    if (n < 0) {
        r->filename[0] = '\0';
    } else if (n == sizeof(r->filename)) { /* full: the path ends here or goes on */
        char next = 0;
        if (bpf_probe_read_kernel(&next, 1, bprm->filename + sizeof(r->filename) - 1) == 0 && next)
            r->filename_truncated = 1;
    }

    /* The new image's argv is in place in the new mm by now. */
    arg_start = p->mm->arg_start;
    arg_end = p->mm->arg_end;
    len = arg_end > arg_start ? arg_end - arg_start : 0;
    r->args_truncated = len > RECORD_ARGS_MAX;
    if (len > RECORD_ARGS_MAX)
        len = RECORD_ARGS_MAX;
    barrier_var(len);
    if (len > RECORD_ARGS_MAX)
        len = 0; /* unreachable; keeps the verifier's bound on len */
    if (bpf_probe_read_user(r->args, len, (void *)arg_start))
        len = 0;
    r->args_len = len;
    record_output(SLOT_SCHED_PROCESS_EXEC, r, EXEC_RECORD_SIZE(len));
    return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(tp_btf__sched_process_exit, struct task_struct *p)
{
    struct exit_record *r;
    struct task_struct *leader;

    /* Threads exit one by one; the process is gone when the last one leaves. */
    if (p->signal->live.counter != 0 || !task_captured())
        return 0;

    r = record_reserve(SLOT_SCHED_PROCESS_EXIT, sizeof(*r));
    if (!r)
        return 0;
    record_hdr_of(&r->hdr, RECORD_EXIT, p); /* p is the current task */
    /* p is a BTF pointer: its fields are plain loads, not helper calls. */
    leader = p->group_leader;
    if (TASK_BTF_USABLE()) {
        if (leader != p)
            hdr_comm_btf(&r->hdr, leader);
    } else {
        bpf_probe_read_kernel_str(&r->hdr.comm, sizeof(r->hdr.comm), leader->comm);
    }
    r->exit_code = p->exit_code;
    r->pad = 0;
    r->duration_ns = r->hdr.ts_ns - leader->start_boottime;
    record_submit(r);
    return 0;
}

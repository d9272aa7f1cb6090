// SPDX-License-Identifier: GPL-2.0
/*
 * Empty programs on the agent's hooks, for scripts/bench-agent.sh: attached
 * after the agent's own, each run shows what the BPF run-time statistics
 * (two clock reads around every run) and the call cost by themselves, so the
 * agent's program's own cost is its figure minus this one.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

#define EMPTY(hook)                                                                                \
    SEC("tp_btf/" #hook)                                                                           \
    int empty_##hook(void *ctx)                                                                    \
    {                                                                                              \
        return 0;                                                                                  \
    }

EMPTY(sys_exit)
EMPTY(inet_sock_set_state)
EMPTY(tcp_destroy_sock)
EMPTY(tcp_send_reset)
EMPTY(tcp_receive_reset)
EMPTY(kfree_skb)
EMPTY(sched_process_exec)
EMPTY(sched_process_exit)
EMPTY(io_uring_complete) /* left out where the kernel lacks it (bench_empty_progs) */

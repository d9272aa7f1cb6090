// SPDX-License-Identifier: GPL-2.0
/*
 * Empty programs on the device-level packet tracepoints, for
 * scripts/bench-dns.sh: the other hook that sees every packet of the node
 * without kprobes or tracefs (every transmit, net_dev_queue, and every
 * receive, netif_receive_skb, on every device). Their cost against the empty
 * cgroup_skb programs' is the floor of a DNS capture at either place.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

SEC("tp_btf/net_dev_queue")
int empty_net_dev_queue(void *ctx)
{
    return 0;
}

SEC("tp_btf/netif_receive_skb")
int empty_netif_receive_skb(void *ctx)
{
    return 0;
}

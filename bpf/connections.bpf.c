// SPDX-License-Identifier: GPL-2.0
/*
 * Connections: outbound TCP connects with their outcome and latency, UDP
 * connect() calls, and inbound TCP connections accepted by a process.
 * Tracepoints only (tp_btf), so neither kprobes nor tracefs are needed.
 * The programs are in connections.h (shared with connections_compat.bpf.c).
 */
/* Needs 6.2+ (bpf_rdonly_cast) anyway: the task helper of 5.11 is fine. */
#define RECORD_HDR_TASK_BTF 1

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "net_events.h"
#include "common.bpf.h"

char LICENSE[] SEC("license") = "GPL";

#include "connections.h"

// SPDX-License-Identifier: GPL-2.0
/*
 * The connection programs for kernels without the bpf_rdonly_cast kfunc
 * (before 6.2): the same programs as connections.bpf.c, reading the socket
 * behind a file descriptor with helper calls (see connections.h).
 */
#define CONNECTIONS_COMPAT 1

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "net_events.h"
#include "common.bpf.h"

char LICENSE[] SEC("license") = "GPL";

#include "connections.h"

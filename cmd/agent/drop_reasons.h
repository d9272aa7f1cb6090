/*
 * Names of the kernel's packet drop reasons, read at run time from the
 * running kernel's BTF (enum skb_drop_reason), so they always match the
 * kernel: "NO_SOCKET" for SKB_DROP_REASON_NO_SOCKET.
 */
#ifndef EBPF_MONITOR_DROP_REASONS_H
#define EBPF_MONITOR_DROP_REASONS_H

#include <stddef.h>
#include <stdint.h>

struct btf;
struct drop_reasons;

/* Reads enum skb_drop_reason from btf (the kernel's, from btf__load_vmlinux_btf(); the caller
 * keeps it); NULL with errno set when the enum is missing (ENOENT) or on ENOMEM. */
struct drop_reasons *drop_reasons_from_btf(const struct btf *btf);
void drop_reasons_free(struct drop_reasons *dr);

/* The interned name of code without the SKB_DROP_REASON_ / SKB_ prefix, or NULL if unknown. */
const char *drop_reasons_name(const struct drop_reasons *dr, uint32_t code);

/* Number of reasons known. */
size_t drop_reasons_count(const struct drop_reasons *dr);

#endif

/*
 * Kernel symbol lookup from /proc/kallsyms: turns a kernel text address (a
 * drop location) into "symbol+0xoff", the form perf and bpftrace print.
 */
#ifndef EBPF_MONITOR_KSYMS_H
#define EBPF_MONITOR_KSYMS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct ksyms;

/* Loads the text symbols of path (normally "/proc/kallsyms"); NULL with errno set on failure
 * (EPERM when addresses are hidden from this process). Free with ksyms_free(). */
struct ksyms *ksyms_load(const char *path);
/* The same from an open stream of kallsyms lines (the caller closes it). */
struct ksyms *ksyms_load_stream(FILE *f);
void ksyms_free(struct ksyms *ks);

/* Writes "symbol+0xoff" (or "symbol [module]+0xoff") for addr into buf; returns buf, or NULL
 * when addr lies outside every known symbol. */
const char *ksyms_format(const struct ksyms *ks, uint64_t addr, char *buf, size_t len);

/* Number of symbols loaded. */
size_t ksyms_count(const struct ksyms *ks);

#endif

/*
 * Ring buffer records of processes.bpf.c: exec (filename and a bounded copy of
 * argv) and whole-process exit.
 */
#ifndef EBPF_MONITOR_BPF_PROCESS_EVENTS_H
#define EBPF_MONITOR_BPF_PROCESS_EVENTS_H

#include "common.h"

/* Same bounds as pkg/event.h (EVENT_FILENAME_MAX, EVENT_ARGS_MAX); powers of two. */
#define RECORD_FILENAME_MAX 256
#define RECORD_ARGS_MAX     1024

/* An exec record ends with its argv: it is EXEC_RECORD_SIZE(args_len) bytes long. */
struct exec_record {
    struct record_hdr hdr;
    __u32 args_len;          /* bytes of args copied: NUL-separated argv */
    __u32 euid;              /* the new image's effective uid (hdr.uid is the real one) */
    __u8 args_truncated;     /* argv was longer than RECORD_ARGS_MAX */
    __u8 filename_truncated; /* the path was longer than RECORD_FILENAME_MAX - 1 bytes */
    __u8 pad[2];
    char filename[RECORD_FILENAME_MAX];
    char args[RECORD_ARGS_MAX];
};

#define EXEC_RECORD_SIZE(args_len) (__builtin_offsetof(struct exec_record, args) + (args_len))

struct exit_record {
    struct record_hdr hdr;
    __u32 exit_code; /* raw task->exit_code: (code << 8) | signal */
    __u32 pad;
    __u64 duration_ns; /* process lifetime */
};

#endif

/*
 * CHECK(cond, fmt, ...): a fuzz target's own invariant. When it does not
 * hold, the message goes to stderr after the target's name (FUZZ_TARGET,
 * defined before this is included) and the process aborts, which libFuzzer
 * reports as a finding with its input.
 */
#ifndef EBPF_MONITOR_FUZZ_CHECK_H
#define EBPF_MONITOR_FUZZ_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, FUZZ_TARGET ": " __VA_ARGS__);                                         \
            fputc('\n', stderr);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#endif

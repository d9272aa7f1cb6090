/*
 * Clocks in one place: nanoseconds on a given clock, and absolute deadlines
 * for pthread_cond_timedwait on condition variables whose clock is
 * CLOCK_MONOTONIC (set with clock_cond_init()).
 */
#ifndef EBPF_MONITOR_CLOCK_H
#define EBPF_MONITOR_CLOCK_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

static inline uint64_t clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Wall clock, for timestamps users see. */
static inline uint64_t clock_realtime_ns(void)
{
    return clock_ns(CLOCK_REALTIME);
}

/* Monotonic clock, for intervals and timeouts. */
static inline uint64_t clock_monotonic_ns(void)
{
    return clock_ns(CLOCK_MONOTONIC);
}

/* The CLOCK_MONOTONIC instant ms milliseconds from now, as a timespec for
 * pthread_cond_timedwait on a condition variable made by clock_cond_init(). */
static inline struct timespec clock_deadline_ms(uint64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t ns = (uint64_t)ts.tv_nsec + (ms % 1000) * 1000000ull;
    ts.tv_sec += (time_t)(ms / 1000 + ns / 1000000000ull);
    ts.tv_nsec = (long)(ns % 1000000000ull);
    return ts;
}

/* A condition variable that times out on CLOCK_MONOTONIC, so a wall-clock
 * step never shortens or stretches a wait. */
static inline int clock_cond_init(pthread_cond_t *cond)
{
    pthread_condattr_t attr;
    int rc = pthread_condattr_init(&attr);
    if (rc == 0)
        rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    if (rc == 0)
        rc = pthread_cond_init(cond, &attr);
    pthread_condattr_destroy(&attr);
    return rc;
}

#endif

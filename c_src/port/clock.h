/*
 * The two clocks of the port program: wall-clock milliseconds (entries'
 * expiry times) and monotonic nanoseconds (the deadlines of slices).
 */
#ifndef GN_PORT_CLOCK_H
#define GN_PORT_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline int64_t gn_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline uint64_t gn_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#endif

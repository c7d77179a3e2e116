/*
 * The clocks of the port program: wall-clock milliseconds (entries'
 * expiry times; in a replicated program, the group's) and monotonic
 * nanoseconds (the deadlines of slices).
 */
#ifndef GN_PORT_CLOCK_H
#define GN_PORT_CLOCK_H

#include <stdint.h>
#include <time.h>

/* A replicated program's clock: the group's, which raft.c sets as it
 * applies entries (each carries its proposer's clock), so that every member
 * expires entries at the same point of the log; 0 outside one. */
extern int64_t gn_group_ms;

/* This machine's clock. */
static inline int64_t gn_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The clock entries expire by. */
static inline int64_t gn_now_ms(void)
{
    return gn_group_ms ? gn_group_ms : gn_wall_ms();
}

static inline uint64_t gn_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#endif

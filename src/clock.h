/*
 * clock.h - loop.time(): CLOCK_MONOTONIC in seconds, the same clock and
 * origin as time.monotonic(), so values from the two can be mixed.
 */
#ifndef GH_CLOCK_H
#define GH_CLOCK_H

#include <time.h>

static inline double
gh_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#endif /* GH_CLOCK_H */

/*
 * Timing and statistics shared by the benchmark programs: a monotonic clock in
 * microseconds and the median and 90th percentile of a set of samples. Header-only,
 * static functions: each benchmark is one program.
 */
#ifndef PROVHSM_BENCH_STATS_H
#define PROVHSM_BENCH_STATS_H

#include <stdlib.h>
#include <time.h>

static inline double bench_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static inline int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sorts the samples (runs >= 1) and returns their median and 90th percentile. */
static inline void bench_stats(double *samples, int runs, double *median, double *p90)
{
    qsort(samples, (size_t)runs, sizeof(double), bench_cmp_double);
    *median = runs % 2 ? samples[runs / 2] : (samples[runs / 2 - 1] + samples[runs / 2]) / 2;
    *p90 = samples[(size_t)((double)(runs - 1) * 0.9)];
}

#endif

/* Thread policy of the OpenMP kernels (included by merge.pyx and spmv.pyx; each module keeps its own copy).
 *
 * mmsb_threads() is the number of threads a parallel kernel uses now: the configured maximum (MMSB_THREADS,
 * set by mmsb._kernels through set_threads(); before that omp_get_max_threads()), lowered while the machine is
 * busy. "Busy" is read from the run queue in /proc/loadavg (field 4, "running/total", which counts the reading
 * thread itself): with r tasks runnable on a machine of c CPUs, r - 1 of them belong to others, and the kernel
 * takes at most c - (r - 1) threads, never fewer than one. The file is re-read at most every
 * MMSB_THREADS_RECHECK_NS (a few microseconds each time); where it cannot be read the maximum is used.
 *
 * mmsb_threads_dynamic() is the count for a single pass whose work is taken in dynamic or guided chunks (the pull
 * SpMV, scatter, masked merge): while the machine is busy it takes one thread more than the free CPUs (still at
 * most the maximum). A thread that shares a CPU with another task then only takes fewer chunks, nobody waits for
 * it, and the kernel keeps its fair share of that CPU: with one busy process on two CPUs, two threads get about
 * 4/3 of a CPU where one thread gets one. Kernels with many barriers (the parallel closure's rounds) keep
 * mmsb_threads(): there a descheduled thread stalls every round.
 *
 * mmsb_threads_spread() is called by the threads of such a pass, at its start or in each chunk (it checks once
 * per thread and pass). While the machine is busy there is no idle CPU to wake a worker on, and the scheduler
 * tends to wake it on the CPU of the thread that started the pass: the two then split one CPU while the
 * competitor keeps the other to itself, and the pass runs at one thread's speed. A worker that finds itself there
 * moves to another CPU of its affinity mask and gets the mask back at once (a move, not a pin: the scheduler is
 * free to place it anywhere afterwards). On a quiet machine it costs one comparison. Linux only.
 */
#ifndef MMSB_THREADS_H
#define MMSB_THREADS_H

#include <fcntl.h>
#ifdef __linux__
#include <sched.h>
#endif
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define MMSB_THREADS_RECHECK_NS 20000000LL

static int mmsb_thr_max = 0;        /* 0: not configured, use omp_get_max_threads() */
static int mmsb_thr_cpus = 0;       /* CPUs of the whole machine (the run queue counts all of them) */
static int mmsb_thr_adapt = 1;      /* lower the count while others keep CPUs busy */
static int mmsb_thr_cached = 0;
static long long mmsb_thr_next = 0;
#ifdef __linux__
static int mmsb_thr_spread_cpu = -1;   /* CPU of the thread that started the pass while busy; -1: no spreading */
static int mmsb_thr_pass = 0;          /* counts the passes started while busy */
static __thread int mmsb_thr_pass_seen = -1;   /* the last pass this thread checked its CPU in */
#endif

static int mmsb_threads_configured(void)
{
    int n = mmsb_thr_max;
#ifdef _OPENMP
    if (n <= 0)
        n = omp_get_max_threads();
#else
    n = 1;
#endif
    return n < 1 ? 1 : n;
}

static void mmsb_threads_set(int max_threads, int cpus, int adapt)
{
    mmsb_thr_max = max_threads;
    mmsb_thr_cpus = cpus;
    mmsb_thr_adapt = adapt;
    mmsb_thr_next = 0;
}

/* runnable tasks on the machine (including the caller), or -1 when unknown */
static int mmsb_threads_running(void)
{
    char buf[128];
    ssize_t len;
    int fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
    char *p;
    int field = 0;
    if (fd < 0)
        return -1;
    len = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (len <= 0)
        return -1;
    buf[len] = 0;
    for (p = buf; *p && field < 3; p++)
        if (*p == ' ')
            field++;
    if (field < 3 || *p < '0' || *p > '9')
        return -1;
    return (int)strtol(p, NULL, 10);
}

/* CPUs not kept busy by other tasks (at least 1; the maximum n where unknown or adaptation is off) */
static int mmsb_threads_free(int n)
{
    struct timespec ts;
    long long now;
    int running, free_cpus;
    if (n == 1 || !mmsb_thr_adapt || mmsb_thr_cpus <= 0)
        return n;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    now = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    if (now < mmsb_thr_next && mmsb_thr_cached > 0)
        return mmsb_thr_cached;
    running = mmsb_threads_running();
    free_cpus = running <= 0 ? n : mmsb_thr_cpus - (running - 1);
    if (free_cpus < 1)
        free_cpus = 1;
    mmsb_thr_cached = free_cpus;
    mmsb_thr_next = now + MMSB_THREADS_RECHECK_NS;
    return free_cpus;
}

static int mmsb_threads(void)
{
    int n = mmsb_threads_configured(), free_cpus = mmsb_threads_free(n);
    return free_cpus < n ? free_cpus : n;
}

static int mmsb_threads_dynamic(void)
{
    int n = mmsb_threads_configured(), free_cpus = mmsb_threads_free(n);
#ifdef __linux__
    if (free_cpus < n) {
        mmsb_thr_spread_cpu = sched_getcpu();
        mmsb_thr_pass++;
    } else {
        mmsb_thr_spread_cpu = -1;
    }
#endif
    return free_cpus < n ? free_cpus + 1 : n;
}

static void mmsb_threads_spread(void)
{
#if defined(__linux__) && defined(_OPENMP)
    cpu_set_t mask, others;
    int cpu = mmsb_thr_spread_cpu;
    if (cpu < 0 || mmsb_thr_pass_seen == mmsb_thr_pass)
        return;
    mmsb_thr_pass_seen = mmsb_thr_pass;
    if (omp_get_thread_num() == 0 || sched_getcpu() != cpu)
        return;
    if (sched_getaffinity(0, sizeof(mask), &mask) != 0 || !CPU_ISSET(cpu, &mask))
        return;
    others = mask;
    CPU_CLR(cpu, &others);
    if (CPU_COUNT(&others) == 0 || sched_setaffinity(0, sizeof(others), &others) != 0)
        return;
    sched_setaffinity(0, sizeof(mask), &mask);
#endif
}

#endif

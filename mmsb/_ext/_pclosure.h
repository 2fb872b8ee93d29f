/* Parallel (min, plus) closure for positive weights: a bulk-synchronous bucketed Bellman-Ford (delta-stepping
 * without the light/heavy split), included by spmv.pyx.
 *
 * Bucket b holds the entries whose value lies in [base + b delta, base + (b + 1) delta). Buckets are settled in
 * increasing order; within one, rounds run until no entry falls back into it: a round gathers every thread's
 * local list of the bucket into one array, then all threads relax the out-edges of its entries (dynamic chunks),
 * lowering targets with an atomic compare-and-swap minimum and appending each improved target to their own local
 * list of its new bucket. Values only ever decrease to a value some path realises, so the result is the least
 * fixpoint, bit for bit the serial kernel's (the order of relaxations changes the work done, not the values).
 *
 * Outputs the kernel allocates (the work array, the change marks) are first touched by the threads that use them.
 * Status codes: 0 ok, 1 bad index, 2 out of memory (the caller's ST_* values).
 */
#ifndef MMSB_PCLOSURE_H
#define MMSB_PCLOSURE_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define MMSB_PC_MAX_THREADS 256
#define MMSB_PC_CHUNK 64

typedef struct {
    int64_t *ids;
    int64_t size;
    int64_t cap;
} mmsb_pc_vec;

typedef struct {              /* one thread's shared slot, padded to its own cache lines (no false sharing) */
    int64_t count;            /* entries of its list for the current bucket */
    int64_t next;             /* its nearest non-empty bucket after the current one, or -1 */
    int64_t offset;
    char pad[64 - 3 * sizeof(int64_t)];
} mmsb_pc_slot;

static int mmsb_pc_push(mmsb_pc_vec *v, int64_t id)
{
    if (v->size == v->cap) {
        int64_t cap = v->cap ? v->cap * 2 : 256;
        int64_t *p = (int64_t *)realloc(v->ids, (size_t)cap * sizeof(int64_t));
        if (p == NULL)
            return -1;
        v->ids = p;
        v->cap = cap;
    }
    v->ids[v->size++] = id;
    return 0;
}

#ifdef _OPENMP
#define MMSB_PC_TEAM(tid, nt) do { (tid) = omp_get_thread_num(); (nt) = omp_get_num_threads(); } while (0)
#else
#define MMSB_PC_TEAM(tid, nt) do { (tid) = 0; (nt) = 1; } while (0)
#endif

/* the bucket of value v, clamped to [cur, cur + nb - 1] (rounding, or a value beyond the window, stays valid) */
static inline int64_t mmsb_pc_bucket(double v, double base, double delta, int64_t cur, int64_t nb)
{
    double q = (v - base) / delta;
    if (!(q >= (double)cur))
        return cur;
    if (q >= (double)(cur + nb - 1))
        return cur + nb - 1;
    return (int64_t)q;
}

#define MMSB_PC_DEFINE(T, IT, NAME)                                                                                \
static inline int NAME##_lower(T *p, T val, T *before)                                                          \
{                                                                                                                \
    T old;                                                                                                       \
    __atomic_load(p, &old, __ATOMIC_RELAXED);                                                                    \
    while (val < old) {                                                                                          \
        if (__atomic_compare_exchange(p, &old, &val, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {                   \
            *before = old;                                                                                       \
            return 1;                                                                                            \
        }                                                                                                        \
    }                                                                                                            \
    return 0;                                                                                                    \
}                                                                                                                \
                                                                                                                 \
static int NAME(const int64_t *indptr, const IT *indices, const T *data,     int64_t nnz, T *x, int64_t n,      \
                const int64_t *frontier, int64_t count, T zero, double base, double delta, int64_t nb,           \
                int nthreads, uint8_t *mark, int64_t **changed_out, int64_t *nchanged_out)                      \
{                                                                                                                \
    mmsb_pc_slot slots[MMSB_PC_MAX_THREADS];                                                                     \
    mmsb_pc_vec *local, *chg;                                                                                    \
    int64_t *work = NULL, work_cap = 0, total_changed = 0;                                                       \
    int64_t *stamp;                                                                                              \
    int status = 0, t;                                                                                           \
    int64_t b;                                                                                                   \
    if (nthreads < 1)                                                                                            \
        nthreads = 1;                                                                                            \
    if (nthreads > MMSB_PC_MAX_THREADS)                                                                          \
        nthreads = MMSB_PC_MAX_THREADS;                                                                          \
    local = (mmsb_pc_vec *)calloc((size_t)nthreads * (size_t)nb, sizeof(mmsb_pc_vec));                           \
    chg = (mmsb_pc_vec *)calloc((size_t)nthreads, sizeof(mmsb_pc_vec));                                          \
    stamp = (int64_t *)malloc((size_t)(n ? n : 1) * sizeof(int64_t));                                            \
    if (local == NULL || chg == NULL || stamp == NULL) {                                                         \
        free(local); free(chg); free(stamp);                                                                     \
        return 2;                                                                                                \
    }                                                                                                            \
    _Pragma("omp parallel num_threads(nthreads)")                                                                \
    {                                                                                                            \
        int tid = 0, nt = 1, tt, failed = 0;                                                                     \
        int64_t cur = 0, round = 0, total, i2, k, j, i, ks, ke, bi, bb;                                          \
        mmsb_pc_vec *mine;                                                                                       \
        T v, nv, before;                                                                                         \
        MMSB_PC_TEAM(tid, nt);                                                                                   \
        mine = local + (int64_t)tid * nb;                                                                        \
        _Pragma("omp for schedule(static)")                                                                      \
        for (i2 = 0; i2 < n; i2++)                                                                               \
            stamp[i2] = -1;                                                                                      \
        _Pragma("omp for schedule(static)")                                                                      \
        for (i2 = 0; i2 < count; i2++) {                                                                         \
            j = frontier[i2];                                                                                    \
            v = x[j];                                                                                            \
            if (v == zero)                                                                                       \
                continue;                                                                                        \
            bi = mmsb_pc_bucket((double)v, base, delta, 0, nb);                                                  \
            if (mmsb_pc_push(&mine[bi % nb], j))                                                                 \
                failed = 2;                                                                                      \
        }                                                                                                        \
        for (;;) {                                                                                               \
            /* publish this thread's share of the current bucket and its nearest later bucket */                 \
            slots[tid].count = mine[cur % nb].size;                                                              \
            slots[tid].next = -1;                                                                                \
            for (bb = 1; bb < nb; bb++)                                                                          \
                if (mine[(cur + bb) % nb].size) {                                                                \
                    slots[tid].next = cur + bb;                                                                  \
                    break;                                                                                       \
                }                                                                                                \
            if (failed) {                                                                                        \
                _Pragma("omp atomic write")                                                                      \
                status = failed;                                                                                 \
            }                                                                                                    \
            _Pragma("omp barrier")                                                                               \
            if (__atomic_load_n(&status, __ATOMIC_RELAXED) != 0)                                                 \
                break;                                                                                           \
            total = 0;                                                                                           \
            for (tt = 0; tt < nt; tt++) {                                                                        \
                if (tt == tid)                                                                                   \
                    slots[tid].offset = total;                                                                   \
                total += slots[tt].count;                                                                        \
            }                                                                                                    \
            if (total == 0) {                                                                                    \
                int64_t nxt = -1;                                                                                \
                for (tt = 0; tt < nt; tt++)                                                                      \
                    if (slots[tt].next >= 0 && (nxt < 0 || slots[tt].next < nxt))                                \
                        nxt = slots[tt].next;                                                                    \
                _Pragma("omp barrier")                                                                           \
                if (nxt < 0)                                                                                     \
                    break;                                                                                       \
                cur = nxt;                                                                                       \
                continue;                                                                                        \
            }                                                                                                    \
            _Pragma("omp single")                                                                                \
            {                                                                                                    \
                if (total > work_cap) {                                                                          \
                    free(work);                                                                                  \
                    work_cap = total + total / 2;                                                                \
                    work = (int64_t *)malloc((size_t)work_cap * sizeof(int64_t));                                \
                    if (work == NULL) {                                                                          \
                        work_cap = 0;                                                                            \
                        status = 2;                                                                              \
                    }                                                                                            \
                }                                                                                                \
            }                                                                                                    \
            if (status != 0)                                                                                     \
                break;                                                                                           \
            if (mine[cur % nb].size)                                                                             \
                memcpy(work + slots[tid].offset, mine[cur % nb].ids,                                             \
                       (size_t)mine[cur % nb].size * sizeof(int64_t));                                           \
            mine[cur % nb].size = 0;                                                                             \
            round++;                                                                                             \
            _Pragma("omp barrier")                                                                               \
            _Pragma("omp for schedule(dynamic, MMSB_PC_CHUNK)")                                                  \
            for (i2 = 0; i2 < total; i2++) {                                                                     \
                j = work[i2];                                                                                    \
                if (__atomic_exchange_n(&stamp[j], round, __ATOMIC_RELAXED) == round)                            \
                    continue;                                                                                    \
                __atomic_load(&x[j], &v, __ATOMIC_RELAXED);                                                      \
                if (v == zero)                                                                                   \
                    continue;                                                                                    \
                bi = mmsb_pc_bucket((double)v, base, delta, cur, nb);                                            \
                if (bi > cur) {                 /* parked beyond the window at the start: move it on */          \
                    if (mmsb_pc_push(&mine[bi % nb], j))                                                         \
                        failed = 2;                                                                              \
                    continue;                                                                                    \
                }                                                                                                \
                ks = indptr[j];                                                                                  \
                ke = indptr[j + 1];                                                                              \
                if (ks < 0 || ke > nnz || ks > ke) {                                                             \
                    failed = 1;                                                                                  \
                    continue;                                                                                    \
                }                                                                                                \
                for (k = ks; k < ke; k++) {                                                                      \
                    i = indices[k];                                                                              \
                    if ((uint64_t)i >= (uint64_t)n) {                                                            \
                        failed = 1;                                                                              \
                        break;                                                                                   \
                    }                                                                                            \
                    nv = (T)(data[k] + v);                                                                       \
                    if (!NAME##_lower(&x[i], nv, &before))                                                       \
                        continue;                                                                                \
                    if (!__atomic_exchange_n(&mark[i], (uint8_t)1, __ATOMIC_RELAXED))                            \
                        if (mmsb_pc_push(&chg[tid], i))                                                          \
                            failed = 2;                                                                          \
                    bi = mmsb_pc_bucket((double)nv, base, delta, cur, nb);                                       \
                    if (mmsb_pc_push(&mine[bi % nb], i))                                                         \
                        failed = 2;                                                                              \
                }                                                                                                \
            }                                                                                                    \
            if (failed) {                                                                                        \
                _Pragma("omp atomic write")                                                                      \
                status = failed;                                                                                 \
                failed = 0;                                                                                      \
            }                                                                                                    \
        }                                                                                                        \
        _Pragma("omp atomic")                                                                                    \
        total_changed += chg[tid].size;                                                                          \
    }                                                                                                            \
    if (status == 0) {                                                                                           \
        int64_t pos = 0;                                                                                         \
        int64_t *out = (int64_t *)malloc((size_t)(total_changed ? total_changed : 1) * sizeof(int64_t));         \
        if (out == NULL) {                                                                                       \
            status = 2;                                                                                          \
        } else {                                                                                                 \
            for (t = 0; t < nthreads; t++) {                                                                     \
                if (chg[t].size)                                                                                 \
                    memcpy(out + pos, chg[t].ids, (size_t)chg[t].size * sizeof(int64_t));                       \
                pos += chg[t].size;                                                                              \
            }                                                                                                    \
            *changed_out = out;                                                                                  \
            *nchanged_out = total_changed;                                                                       \
        }                                                                                                        \
    }                                                                                                            \
    for (t = 0; t < nthreads; t++) {                                                                             \
        free(chg[t].ids);                                                                                        \
        for (b = 0; b < nb; b++)                                                                                 \
            free(local[(int64_t)t * nb + b].ids);                                                                \
    }                                                                                                            \
    free(local); free(chg); free(stamp); free(work);                                                             \
    return status;                                                                                               \
}


MMSB_PC_DEFINE(double, int64_t, mmsb_pclosure_f64)
MMSB_PC_DEFINE(float, int64_t, mmsb_pclosure_f32)
MMSB_PC_DEFINE(double, int32_t, mmsb_pclosure_f64_i32)
MMSB_PC_DEFINE(float, int32_t, mmsb_pclosure_f32_i32)

#endif

/* One row of the float (plus, times) pull SpMV in eight interleaved partial sums (included by spmv.pyx).
 *
 * Row i's stored entries k = ks, ks + 1, ... go round-robin to eight lanes: lane l sums, in order, the products
 * data[k] * x[indices[k]] with (k - ks) % 8 == l and x[indices[k]] != 0 (zero annihilates: the entry is skipped).
 * The lanes start at +0.0 and are combined as ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)). Eight
 * independent sums break the dependency chain of one accumulator and let the AVX-512 build gather eight x at a
 * time (mmsb_rowsum_vector_f64_i32 below); the scalar code computes the very same lanes, so every SIMD level, thread
 * count and the numpy twin (mmsb/_ref/spmv.py) give the same value bit for bit. (Adding +0.0 for a skipped entry
 * equals skipping it: a lane that starts at +0.0 never becomes -0.0 under round-to-nearest.)
 *
 * Each row function returns 1 when the row's range or one of its column indices is out of bounds (x is never
 * read out of range: a bad index is clamped to 0 for the load, then reported), else 0 and the value in *out.
 * Neither code prefetches x: the eight independent lanes already keep loads in flight, and a prefetch of x a few
 * dozen entries ahead made the scalar code 13-20 % slower (16-core host at 2 and 16 threads, 2-core VM at 1 and 2).
 */
#ifndef MMSB_SPMV_SUM_H
#define MMSB_SPMV_SUM_H

#include <stddef.h>
#include <stdint.h>

#include "_threads.h"
#if defined(__AVX512F__) && defined(__AVX512VL__)
#include <immintrin.h>
#define MMSB_SUM_VECTOR 1
#else
#define MMSB_SUM_VECTOR 0
#endif

/* 1: the AVX-512 build gathers eight x per instruction for float64 rows with int32 indices (same result) */
static int mmsb_sum_vector = MMSB_SUM_VECTOR;

#define MMSB_SUM_LANE(REAL, l)                                                                                    \
    {                                                                                                             \
        uint64_t j_ = (uint64_t)(int64_t)indices[k + (l)];                                                        \
        REAL xv_, p_;                                                                                             \
        bad |= j_ >= (uint64_t)nx;                                                                                \
        xv_ = x[j_ < (uint64_t)nx ? j_ : 0];                                                                      \
        p_ = data[k + (l)] * xv_;                                                                                 \
        s##l += xv_ != 0 ? p_ : (REAL)0;                                                                          \
    }

#define MMSB_DEFINE_ROWSUM_SCALAR(NAME, REAL, INDEX)                                                              \
    static inline int NAME(const int64_t *indptr, const INDEX *indices, const REAL *data, const REAL *x,         \
                           int64_t i, int64_t nnz, int64_t nx, REAL *out)                                         \
    {                                                                                                             \
        int64_t ks = indptr[i], ke = indptr[i + 1], k, r;                                                         \
        REAL s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;                                      \
        uint64_t bad = 0;                                                                                         \
        if (ks < 0 || ke > nnz || ks > ke || (nx == 0 && ke > ks))                                                \
            return 1;                                                                                             \
        for (k = ks; k + 8 <= ke; k += 8) {                                                                       \
            MMSB_SUM_LANE(REAL, 0) MMSB_SUM_LANE(REAL, 1) MMSB_SUM_LANE(REAL, 2) MMSB_SUM_LANE(REAL, 3)           \
            MMSB_SUM_LANE(REAL, 4) MMSB_SUM_LANE(REAL, 5) MMSB_SUM_LANE(REAL, 6) MMSB_SUM_LANE(REAL, 7)           \
        }                                                                                                         \
        r = ke - k;                                                                                               \
        if (r > 0) MMSB_SUM_LANE(REAL, 0)                                                                         \
        if (r > 1) MMSB_SUM_LANE(REAL, 1)                                                                         \
        if (r > 2) MMSB_SUM_LANE(REAL, 2)                                                                         \
        if (r > 3) MMSB_SUM_LANE(REAL, 3)                                                                         \
        if (r > 4) MMSB_SUM_LANE(REAL, 4)                                                                         \
        if (r > 5) MMSB_SUM_LANE(REAL, 5)                                                                         \
        if (r > 6) MMSB_SUM_LANE(REAL, 6)                                                                         \
        if (bad)                                                                                                  \
            return 1;                                                                                             \
        *out = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7));                                                 \
        return 0;                                                                                                 \
    }

MMSB_DEFINE_ROWSUM_SCALAR(mmsb_rowsum_f64_i32, double, int32_t)
MMSB_DEFINE_ROWSUM_SCALAR(mmsb_rowsum_f64_i64, double, int64_t)
MMSB_DEFINE_ROWSUM_SCALAR(mmsb_rowsum_f32_i32, float, int32_t)
MMSB_DEFINE_ROWSUM_SCALAR(mmsb_rowsum_f32_i64, float, int64_t)

#if MMSB_SUM_VECTOR
/* the eight lanes of s combined as ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)): each step adds lanes that
 * the shuffle swapped, and IEEE addition is commutative, so every lane ends with exactly that value */
static inline double mmsb_sum_tree512(__m512d s)
{
    s = _mm512_add_pd(s, _mm512_permute_pd(s, 0x55));
    s = _mm512_add_pd(s, _mm512_permutex_pd(s, 0x4E));
    s = _mm512_add_pd(s, _mm512_shuffle_f64x2(s, s, 0x4E));
    return _mm512_cvtsd_f64(s);
}

static inline int mmsb_rowsum_vector_f64_i32(const int64_t *indptr, const int32_t *indices, const double *data,
                                             const double *x, int64_t i, int64_t nnz, int64_t nx, double *out)
{
    int64_t ks = indptr[i], ke = indptr[i + 1], k;
    const __m512d zero = _mm512_setzero_pd();
    const __m256i limit = _mm256_set1_epi32((int32_t)nx), top = _mm256_set1_epi32((int32_t)(nx - 1));
    __m512d s = zero, xv;
    __m256i j;
    __mmask8 bad = 0, m, nz;
    if (ks < 0 || ke > nnz || ks > ke || (nx == 0 && ke > ks))
        return 1;
    for (k = ks; k + 8 <= ke; k += 8) {
        j = _mm256_loadu_si256((const __m256i *)(indices + k));
        bad |= _mm256_cmpge_epu32_mask(j, limit);        /* negative indices are huge unsigned */
        j = _mm256_min_epu32(j, top);
        xv = _mm512_i32gather_pd(j, x, 8);
        nz = _mm512_cmp_pd_mask(xv, zero, _CMP_NEQ_UQ);
        s = _mm512_mask_add_pd(s, nz, s, _mm512_mul_pd(_mm512_loadu_pd(data + k), xv));
    }
    if (k < ke) {
        m = (__mmask8)((1u << (ke - k)) - 1u);
        j = _mm256_maskz_loadu_epi32(m, indices + k);
        bad |= _mm256_mask_cmpge_epu32_mask(m, j, limit);
        j = _mm256_min_epu32(j, top);
        xv = _mm512_mask_i32gather_pd(zero, m, j, x, 8);
        nz = _mm512_mask_cmp_pd_mask(m, xv, zero, _CMP_NEQ_UQ);
        s = _mm512_mask_add_pd(s, nz, s, _mm512_mul_pd(_mm512_maskz_loadu_pd(m, data + k), xv));
    }
    if (bad)
        return 1;
    *out = mmsb_sum_tree512(s);
    return 0;
}
#endif

/* All rows (rows == NULL) or rows[0..count-1] on nthreads OpenMP threads; the number of bad rows. With
 * old != NULL, old[i] receives y[i] before it is overwritten and *moved the number of rows whose value changed
 * (NaN equal to NaN, -0.0 equal to +0.0: as mmsb.propagate.changed_positions). */
#define MMSB_DEFINE_SPMV_SUM(NAME, ROW, REAL, INDEX)                                                              \
    static int NAME(const int64_t *indptr, const INDEX *indices, const REAL *data, const REAL *x, REAL *y,        \
                    const int64_t *rows, int64_t count, int64_t nnz, int64_t nx, int nthreads,                   \
                    REAL *old, int64_t *moved)                                                                    \
    {                                                                                                             \
        int64_t r, i, changed = 0;                                                                                \
        int bad = 0;                                                                                              \
        REAL v, o;                                                                                                \
        _Pragma("omp parallel num_threads(nthreads) reduction(+:bad, changed) private(i, v, o)")                 \
        {                                                                                                         \
            mmsb_threads_spread();                                                                                \
            _Pragma("omp for schedule(guided)")                                                                   \
            for (r = 0; r < count; r++) {                                                                         \
                i = rows == NULL ? r : rows[r];                                                                   \
                if (ROW(indptr, indices, data, x, i, nnz, nx, &v)) {                                              \
                    bad++;                                                                                        \
                    continue;                                                                                     \
                }                                                                                                 \
                if (old != NULL) {                                                                                \
                    o = y[i];                                                                                     \
                    old[i] = o;                                                                                   \
                    changed += v != o && (v == v || o == o);                                                      \
                }                                                                                                 \
                y[i] = v;                                                                                         \
            }                                                                                                     \
        }                                                                                                         \
        if (moved != NULL)                                                                                        \
            *moved = changed;                                                                                     \
        return bad;                                                                                               \
    }

MMSB_DEFINE_SPMV_SUM(mmsb_spmv_scalar_f64_i32, mmsb_rowsum_f64_i32, double, int32_t)
#if MMSB_SUM_VECTOR
MMSB_DEFINE_SPMV_SUM(mmsb_spmv_vector_f64_i32, mmsb_rowsum_vector_f64_i32, double, int32_t)
#endif
MMSB_DEFINE_SPMV_SUM(mmsb_spmv_sum_f64_i64, mmsb_rowsum_f64_i64, double, int64_t)
MMSB_DEFINE_SPMV_SUM(mmsb_spmv_sum_f32_i32, mmsb_rowsum_f32_i32, float, int32_t)
MMSB_DEFINE_SPMV_SUM(mmsb_spmv_sum_f32_i64, mmsb_rowsum_f32_i64, float, int64_t)

static int mmsb_spmv_sum_f64_i32(const int64_t *indptr, const int32_t *indices, const double *data, const double *x,
                                 double *y, const int64_t *rows, int64_t count, int64_t nnz, int64_t nx,
                                 int nthreads, double *old, int64_t *moved)
{
#if MMSB_SUM_VECTOR
    if (mmsb_sum_vector && nx <= INT32_MAX)     /* (one check per call: a check per row costs an inlined loop) */
        return mmsb_spmv_vector_f64_i32(indptr, indices, data, x, y, rows, count, nnz, nx, nthreads, old, moved);
#endif
    return mmsb_spmv_scalar_f64_i32(indptr, indices, data, x, y, rows, count, nnz, nx, nthreads, old, moved);
}

/* turn the gather path on or off (a no-op where it was not built); returns whether it is on */
static int mmsb_sum_set_vector(int on)
{
    mmsb_sum_vector = MMSB_SUM_VECTOR && on;
    return mmsb_sum_vector;
}

#endif

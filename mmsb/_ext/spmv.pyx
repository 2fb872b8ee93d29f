"""Compiled semiring sparse kernels: pull SpMV, sparse push (saxpy) and semi-naive closure over CSR matrices.

Every function has a pure-numpy twin with the same API and results in ``mmsb._ref.spmv``; both take their
argument checks from the neutral module ``mmsb._validate``. A semiring is given by its op codes ``add_op`` /
``mul_op`` (those of ``mmsb._ops``) and its ``zero``; ``(A ⊗ x)[i] = ⊕_j A[i, j] ⊗ x[j]`` with A's value on the
left of ⊗, and entries ``x[j] == zero`` are skipped. Bool arrays are handled as uint8 views (or -> max, and -> min).

Array lengths, op codes, ``rows`` / ``idx`` / ``frontier`` entries and the zero are validated before any memory
is touched. The matrix's ``indices`` are bounds-checked while the loops run (memory is never read out of
range); a bad index raises ValueError afterwards, when outputs may already be partly updated.
"""
import numpy as np
cimport numpy as cnp

from cython.parallel cimport prange
from libc.math cimport signbit
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from libc.stdlib cimport calloc, free, malloc

from mmsb._ext._heap cimport IdList, better, heap_pop, heap_push, push_id
from mmsb._ext._types cimport OP_MAX, OP_MIN, OP_PLUS, OP_TIMES, apply_op, index_t, numeric_t

from mmsb._validate import closure_args, push_args, spmv_args, spmv_old_out

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define MMSB_SPMV_PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 1)
    #else
    #define MMSB_SPMV_PREFETCH(p) ((void)0)
    #endif
    """
    void MMSB_SPMV_PREFETCH(const void *p) noexcept nogil

cdef extern from "_spmv_sum.h":
    int mmsb_spmv_sum_f64_i32(const int64_t *indptr, const int32_t *indices, const double *data, const double *x,
                              double *y, const int64_t *rows, int64_t count, int64_t nnz, int64_t nx,
                              int nthreads, double *old,
                              int64_t *moved) noexcept nogil
    int mmsb_spmv_sum_f64_i64(const int64_t *indptr, const int64_t *indices, const double *data, const double *x,
                              double *y, const int64_t *rows, int64_t count, int64_t nnz, int64_t nx,
                              int nthreads, double *old,
                              int64_t *moved) noexcept nogil
    int mmsb_spmv_sum_f32_i32(const int64_t *indptr, const int32_t *indices, const float *data, const float *x,
                              float *y, const int64_t *rows, int64_t count, int64_t nnz, int64_t nx,
                              int nthreads, float *old,
                              int64_t *moved) noexcept nogil
    int mmsb_spmv_sum_f32_i64(const int64_t *indptr, const int64_t *indices, const float *data, const float *x,
                              float *y, const int64_t *rows, int64_t count, int64_t nnz, int64_t nx,
                              int nthreads, float *old,
                              int64_t *moved) noexcept nogil
    int mmsb_sum_set_vector(int on) noexcept nogil

cdef extern from "_threads.h":
    int mmsb_threads() noexcept nogil
    int mmsb_threads_dynamic() noexcept nogil
    void mmsb_threads_spread() noexcept nogil
    void mmsb_threads_set(int max_threads, int cpus, int adapt) noexcept nogil

cdef extern from "_pclosure.h":
    int mmsb_pclosure_f64(const int64_t *indptr, const int64_t *indices, const double *data, int64_t nnz,
                          double *x, int64_t n, const int64_t *frontier, int64_t count, double zero, double base,
                          double delta, int64_t nb, int nthreads, uint8_t *mark, int64_t **changed_out,
                          int64_t *nchanged_out) noexcept nogil
    int mmsb_pclosure_f32(const int64_t *indptr, const int64_t *indices, const float *data, int64_t nnz,
                          float *x, int64_t n, const int64_t *frontier, int64_t count, float zero, double base,
                          double delta, int64_t nb, int nthreads, uint8_t *mark, int64_t **changed_out,
                          int64_t *nchanged_out) noexcept nogil
    int mmsb_pclosure_f64_i32(const int64_t *indptr, const int32_t *indices, const double *data, int64_t nnz,
                              double *x, int64_t n, const int64_t *frontier, int64_t count, double zero,
                              double base, double delta, int64_t nb, int nthreads, uint8_t *mark,
                              int64_t **changed_out, int64_t *nchanged_out) noexcept nogil
    int mmsb_pclosure_f32_i32(const int64_t *indptr, const int32_t *indices, const float *data, int64_t nnz,
                              float *x, int64_t n, const int64_t *frontier, int64_t count, float zero,
                              double base, double delta, int64_t nb, int nthreads, uint8_t *mark,
                              int64_t **changed_out, int64_t *nchanged_out) noexcept nogil

ctypedef fused hot_t:
    float
    double
    uint8_t

# value dtypes whose kernels also take int32 column indices (others widen them to int64 first)
_HOT = frozenset((np.dtype(np.float64), np.dtype(np.float32), np.dtype(np.uint8)))

cnp.import_array()


cdef bint _plain(object a, int typenum, bint writable):
    """Whether ``a`` is a 1-d, C-contiguous, native-order numpy array of ``typenum`` (and writable if asked)."""
    if not cnp.PyArray_Check(a):
        return False
    cdef cnp.ndarray arr = <cnp.ndarray>a
    return (cnp.PyArray_TYPE(arr) == typenum and cnp.PyArray_NDIM(arr) == 1 and cnp.PyArray_IS_C_CONTIGUOUS(arr)
            and cnp.PyArray_ISNOTSWAPPED(arr) and (not writable or cnp.PyArray_ISWRITEABLE(arr)))


cdef tuple _closure_args_plain(indptr_t, indices_t, data_t, x, frontier, int add_op, int mul_op, zero, old_out):
    """The checks of ``closure_args`` made in C for arguments already in the form it returns them (float x, data
    of x's dtype, int64 indptr and frontier, int32 or int64 indices, a Python or numpy float zero); None where the
    general check (``mmsb._validate``, which converts and explains) must run. Raises ValueError as it would."""
    if (add_op != OP_MIN and add_op != OP_MAX) or not OP_PLUS <= mul_op <= OP_MAX or not cnp.PyArray_Check(x):
        return None
    cdef int xt = cnp.PyArray_TYPE(<cnp.ndarray>x)
    if xt != cnp.NPY_FLOAT64 and xt != cnp.NPY_FLOAT32:
        return None
    if not (_plain(x, xt, True) and _plain(data_t, xt, False) and _plain(indptr_t, cnp.NPY_INT64, False)
            and _plain(frontier, cnp.NPY_INT64, False)
            and (_plain(indices_t, cnp.NPY_INT32, False) or _plain(indices_t, cnp.NPY_INT64, False))
            and (old_out is None or _plain(old_out, xt, True))):
        return None
    zt = type(zero)
    if zt is not float and zt is not np.float64 and zt is not np.float32:
        return None
    cdef cnp.ndarray ip = <cnp.ndarray>indptr_t
    cdef cnp.ndarray fr = <cnp.ndarray>frontier
    cdef Py_ssize_t np1 = cnp.PyArray_DIM(ip, 0), nnz = cnp.PyArray_DIM(<cnp.ndarray>indices_t, 0)
    if np1 < 1:
        raise ValueError("indptr_t must have at least one entry")
    if nnz != cnp.PyArray_DIM(<cnp.ndarray>data_t, 0):
        raise ValueError(f"indices_t and data_t differ in length ({nnz} != {cnp.PyArray_DIM(<cnp.ndarray>data_t, 0)})")
    cdef const int64_t *p = <const int64_t *>cnp.PyArray_DATA(ip)
    if p[0] != 0 or p[np1 - 1] != nnz:
        raise ValueError(f"indptr_t must start at 0 and end at len(indices_t) = {nnz}")
    cdef Py_ssize_t n = np1 - 1, k, nf = cnp.PyArray_DIM(fr, 0)
    if cnp.PyArray_DIM(<cnp.ndarray>x, 0) != n:
        raise ValueError(f"x has length {cnp.PyArray_DIM(<cnp.ndarray>x, 0)}, expected {n} (the matrix must be "
                         "square)")
    cdef const int64_t *f = <const int64_t *>cnp.PyArray_DATA(fr)
    for k in range(nf):
        if f[k] < 0 or f[k] >= n:
            raise ValueError(f"frontier entries must lie in [0, {n})")
    if old_out is not None and cnp.PyArray_DIM(<cnp.ndarray>old_out, 0) != n:
        raise ValueError(f"old_out has length {cnp.PyArray_DIM(<cnp.ndarray>old_out, 0)}, expected {n}")
    z = np.empty(1, dtype=x.dtype)
    z[0] = zero
    return indptr_t, indices_t, data_t, x, frontier, z, old_out, n


def _wide(indices):
    """int64 column indices for the kernels specialised on int64 only."""
    return indices if indices.dtype == np.int64 else indices.astype(np.int64)


# a (min, plus) closure runs in parallel (bucketed Bellman-Ford, mmsb/_ext/_pclosure.h) from this many frontier
# entries on a graph of at least PAR_CLOSURE_N vertices, when more than one thread is free; smaller waves stay serial.
# An incremental wave (old values asked for) goes parallel only from 1 / PAR_CLOSURE_INCREMENTAL of the vertices: a
# scattered frontier settles a small region, where the serial kernel is several times faster (and the parallel one
# would copy every value to report the old ones)
PAR_CLOSURE_FRONTIER = 256
PAR_CLOSURE_N = 1 << 18
PAR_CLOSURE_INCREMENTAL = 16
# bucket width of the parallel closure, in units of the smallest weight (wider: fewer rounds, more re-relaxation)
PAR_CLOSURE_DELTA = 2.0

__all__ = ["spmv", "push", "closure", "set_threads", "threads"]


def set_threads(int max_threads, int cpus, bint adapt=True):
    """Configure the thread policy: at most ``max_threads`` threads (0: OpenMP's default), ``cpus`` on the machine,
    ``adapt``: use fewer while other processes keep the CPUs busy."""
    mmsb_threads_set(max_threads, cpus, adapt)


def threads():
    """The number of threads a parallel kernel of this module would use now."""
    return mmsb_threads()

cdef int _gather_ahead = 24     # stored entries ahead whose x is prefetched in the pull SpMV (0: none)


def set_gather_ahead(int entries):
    """Set how many stored entries ahead the pull SpMV's scalar loops prefetch x (0: no prefetch); returns the
    old value. The float (plus, times) sums do not prefetch (mmsb/_ext/_spmv_sum.h)."""
    global _gather_ahead
    old = _gather_ahead
    _gather_ahead = max(0, entries)
    return old


def set_vector_gather(bint on):
    """Let the float (plus, times) pull SpMV gather eight x per AVX-512 instruction (float64, int32 indices; the
    default where this module was built for AVX-512) or use its scalar loop; the values are the same bit for bit.
    Returns whether the vector path is on (always False at the levels built without AVX-512)."""
    return bool(mmsb_sum_set_vector(on))

cdef enum:
    ST_OK = 0
    ST_BAD_INDEX = 1
    ST_NO_MEMORY = 2
    ST_NO_CONVERGENCE = 3


cdef struct IndexBuf:
    IdList ids
    uint8_t *mark
    Py_ssize_t n


cdef int _buf_init(IndexBuf *buf, Py_ssize_t n) noexcept:
    """An empty set of indices in [0, n) (a calloc'd bitmap plus a growable list); -1 when out of memory."""
    buf.ids.ptr = NULL
    buf.ids.size = buf.ids.cap = 0
    buf.n = n
    buf.mark = <uint8_t *>calloc(n if n else 1, sizeof(uint8_t))
    return -1 if buf.mark == NULL else 0


cdef inline int _buf_add(IndexBuf *buf, int64_t value) noexcept nogil:
    """Add value (once); -1 when out of memory."""
    if buf.mark[value]:
        return 0
    if push_id(&buf.ids, value):
        return -1
    buf.mark[value] = 1
    return 0


cdef object _buf_sorted(IndexBuf *buf):
    """The entries of buf as a new sorted int64 array (a bitmap scan when dense, a sort otherwise); frees buf."""
    try:
        if buf.ids.size == 0:
            return np.empty(0, dtype=np.int64)
        if buf.ids.size > (buf.n >> 5):
            return np.flatnonzero(np.asarray(<uint8_t[:buf.n]> buf.mark)).astype(np.int64, copy=False)
        return np.sort(np.asarray(<int64_t[:buf.ids.size]> buf.ids.ptr))
    finally:
        free(buf.ids.ptr)
        free(buf.mark)
        buf.ids.ptr = NULL
        buf.mark = NULL
        buf.ids.size = buf.ids.cap = 0


cdef object _raise_status(int status):
    """Translate a kernel status into an exception."""
    if status == ST_BAD_INDEX:
        raise ValueError("matrix indices/indptr out of range or not non-decreasing")
    if status == ST_NO_MEMORY:
        raise MemoryError("spmv kernel: out of memory")
    if status == ST_NO_CONVERGENCE:
        raise ValueError("closure does not converge")


# ---------------------------------------------------------------------------------------------------- spmv

cdef inline int _row(const int64_t *indptr, const index_t *indices, const numeric_t *data, const numeric_t *x,
                     numeric_t *y, int64_t i, int64_t nnz, int64_t nx, int add_op, int mul_op,
                     numeric_t zero) noexcept nogil:
    """y[i] = zero ⊕ (⊕_k data[k] ⊗ x[indices[k]]) over row i; 1 on a bad index (y[i] untouched).

    The gather of x is bound by memory latency: x[indices[k + _gather_ahead]] is prefetched (rows are contiguous
    in indices, so this runs ahead into the next rows too; 0 turns it off)."""
    cdef int64_t k, j, jp
    cdef int64_t ks = indptr[i]
    cdef int64_t ke = indptr[i + 1]
    cdef numeric_t acc = zero
    cdef numeric_t xv
    if ks < 0 or ke > nnz or ks > ke:
        return 1
    for k in range(ks, ke):
        if _gather_ahead and k + _gather_ahead < nnz:
            jp = indices[k + _gather_ahead]
            if <uint64_t>jp < <uint64_t>nx:
                MMSB_SPMV_PREFETCH(&x[jp])
        j = indices[k]
        if <uint64_t>j >= <uint64_t>nx:
            return 1
        xv = x[j]
        if xv != zero:
            acc = apply_op(add_op, acc, apply_op(mul_op, data[k], xv))
    y[i] = acc
    return 0


cdef int _spmv_sum(const int64_t *indptr, const index_t *indices, const numeric_t *data, const numeric_t *x,
                   numeric_t *y, const int64_t *rows, int64_t count, int64_t nnz, int64_t nx, int nthreads,
                   numeric_t *old, int64_t *moved) noexcept nogil:
    """Float (plus, times) rows in eight interleaved partial sums each (mmsb/_ext/_spmv_sum.h), the same value at
    every SIMD level; the number of bad rows (other types are not summed here: -1)."""
    if numeric_t is double:
        if index_t is int32_t:
            return mmsb_spmv_sum_f64_i32(indptr, indices, data, x, y, rows, count, nnz, nx, nthreads,
                                         old, moved)
        return mmsb_spmv_sum_f64_i64(indptr, indices, data, x, y, rows, count, nnz, nx, nthreads,
                                     old, moved)
    elif numeric_t is float:
        if index_t is int32_t:
            return mmsb_spmv_sum_f32_i32(indptr, indices, data, x, y, rows, count, nnz, nx, nthreads,
                                         old, moved)
        return mmsb_spmv_sum_f32_i64(indptr, indices, data, x, y, rows, count, nnz, nx, nthreads,
                                     old, moved)
    return -1


cdef inline int _row_old(const int64_t *indptr, const index_t *indices, const numeric_t *data, const numeric_t *x,
                         numeric_t *y, int64_t i, int64_t nnz, int64_t nx, int add_op, int mul_op, numeric_t zero,
                         numeric_t *old, int64_t *moved) noexcept nogil:
    """``_row``, keeping y[i]'s old value in old[i] (when old is not NULL) and counting a change in moved[0]."""
    cdef numeric_t o
    cdef numeric_t v
    if old == NULL:
        return _row(indptr, indices, data, x, y, i, nnz, nx, add_op, mul_op, zero)
    o = y[i]
    if _row(indptr, indices, data, x, y, i, nnz, nx, add_op, mul_op, zero):
        return 1
    v = y[i]
    old[i] = o
    if v != o and (v == v or o == o):
        moved[0] += 1
    return 0


cdef int _spmv_kernel(const int64_t *indptr, const index_t *indices, const numeric_t *data,
                      const numeric_t *x, numeric_t *y, const int64_t *rows, int64_t count, int64_t nnz,
                      int64_t nx, int add_op, int mul_op, numeric_t zero, bint lanes, int nthreads,
                      numeric_t *old, int64_t *moved) noexcept nogil:
    """Rows 0..count-1 (or rows[0..count-1]) in parallel; the common semirings get constant-folded loops, the
    float (plus, times) one (``lanes``) eight partial sums per row. With ``old`` (all rows only), old[i] receives
    y[i]'s value before and moved[0] the number of rows whose value changed (NaN equal to NaN)."""
    cdef int64_t r, i
    cdef int bad = 0
    cdef int64_t changed = 0, one
    if lanes:
        bad = _spmv_sum(indptr, indices, data, x, y, rows, count, nnz, nx, nthreads, old, moved)
        if bad >= 0:
            return ST_BAD_INDEX if bad else ST_OK
        bad = 0
    for r in prange(count, schedule="guided", num_threads=nthreads):
        mmsb_threads_spread()
        i = r if rows == NULL else rows[r]
        one = 0
        if add_op == OP_PLUS and mul_op == OP_TIMES:
            bad += _row_old(indptr, indices, data, x, y, i, nnz, nx, OP_PLUS, OP_TIMES, zero, old, &one)
        elif add_op == OP_MIN and mul_op == OP_PLUS:
            bad += _row_old(indptr, indices, data, x, y, i, nnz, nx, OP_MIN, OP_PLUS, zero, old, &one)
        elif add_op == OP_MAX and mul_op == OP_PLUS:
            bad += _row_old(indptr, indices, data, x, y, i, nnz, nx, OP_MAX, OP_PLUS, zero, old, &one)
        elif add_op == OP_MAX and mul_op == OP_TIMES:
            bad += _row_old(indptr, indices, data, x, y, i, nnz, nx, OP_MAX, OP_TIMES, zero, old, &one)
        elif add_op == OP_MAX and mul_op == OP_MIN:
            bad += _row_old(indptr, indices, data, x, y, i, nnz, nx, OP_MAX, OP_MIN, zero, old, &one)
        elif add_op == OP_MIN and mul_op == OP_MAX:
            bad += _row_old(indptr, indices, data, x, y, i, nnz, nx, OP_MIN, OP_MAX, zero, old, &one)
        else:
            bad += _row_old(indptr, indices, data, x, y, i, nnz, nx, add_op, mul_op, zero, old, &one)
        changed += one
    if moved != NULL:
        moved[0] = changed
    return ST_BAD_INDEX if bad else ST_OK


cdef object _spmv_run(const int64_t[::1] indptr, const index_t[::1] indices, const numeric_t[::1] data,
                      const numeric_t[::1] x, numeric_t[::1] y, const int64_t[::1] rows, bint all_rows,
                      int add_op, int mul_op, const numeric_t[::1] zero, int nthreads, numeric_t[::1] old_out):
    """spmv on validated arguments; the number of changed rows when ``old_out`` is not empty."""
    cdef int status
    cdef const int64_t *rows_ptr = NULL
    cdef int64_t count = y.shape[0] if all_rows else rows.shape[0]
    cdef bint lanes = False
    cdef numeric_t *old = &old_out[0] if old_out.shape[0] else NULL
    cdef int64_t moved = 0
    if count == 0:
        return 0
    if not all_rows:
        rows_ptr = &rows[0]
    if numeric_t is double or numeric_t is float:
        lanes = add_op == OP_PLUS and mul_op == OP_TIMES and zero[0] == 0 and not signbit(zero[0])
    with nogil:
        status = _spmv_kernel(&indptr[0], &indices[0] if indices.shape[0] else NULL,
                              &data[0] if data.shape[0] else NULL, &x[0] if x.shape[0] else NULL, &y[0],
                              rows_ptr, count, indices.shape[0], x.shape[0], add_op, mul_op, zero[0], lanes,
                              nthreads, old, &moved)
    _raise_status(status)
    return moved


def _spmv_typed(const int64_t[::1] indptr, const int64_t[::1] indices, const numeric_t[::1] data,
                const numeric_t[::1] x, numeric_t[::1] y, const int64_t[::1] rows, bint all_rows,
                int add_op, int mul_op, const numeric_t[::1] zero, int nthreads, numeric_t[::1] old_out):
    """Typed entry point of spmv, int64 column indices."""
    return _spmv_run(indptr, indices, data, x, y, rows, all_rows, add_op, mul_op, zero, nthreads, old_out)


def _spmv_typed32(const int64_t[::1] indptr, const int32_t[::1] indices, const hot_t[::1] data,
                  const hot_t[::1] x, hot_t[::1] y, const int64_t[::1] rows, bint all_rows,
                  int add_op, int mul_op, const hot_t[::1] zero, int nthreads, hot_t[::1] old_out):
    """Typed entry point of spmv, int32 column indices."""
    return _spmv_run(indptr, indices, data, x, y, rows, all_rows, add_op, mul_op, zero, nthreads, old_out)


def spmv(indptr, indices, data, x, y, int add_op, int mul_op, zero, rows=None, int nthreads=0, old_out=None):
    """Pull SpMV ``y[i] = zero ⊕ (⊕_k data[k] ⊗ x[indices[k]])`` for all rows, or only the int64 ``rows``.

    ``(indptr, indices, data)`` is A in CSR form (int64 index arrays); ``x`` has one entry per column and ``y``
    one per row (``len(indptr) - 1``); ``y`` is written in place and rows not listed are left untouched.
    Entries with ``x[j] == zero`` are skipped. Rows run in parallel, in guided chunks, on ``nthreads`` OpenMP
    threads (0: the thread policy's count for such work, ``mmsb_threads_dynamic`` in _threads.h). Float
    (plus, times) with zero +0.0 sums each row in eight interleaved partial sums (entry k of a row starting at ks
    goes to lane (k - ks) % 8; the lanes are added as ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))), the
    same value at every SIMD level and in the twin;
    other semirings fold the row in order.
    ``old_out`` (an array like ``y``; only with ``rows=None``) receives y's values before the call, in the same
    pass; the call then returns the number of rows whose value changed (NaN equal to NaN, -0.0 to +0.0), else
    None.
    """
    indptr, indices, data, x, y, rows, z, n = spmv_args(indptr, indices, data, x, y, add_op, mul_op, zero, rows)
    old = spmv_old_out(old_out, y, rows)
    sel = np.empty(1, dtype=np.int64) if rows is None else rows
    if nthreads <= 0:
        nthreads = mmsb_threads_dynamic()
    keep = y[:0] if old is None else old
    if indices.dtype == np.int32 and y.dtype in _HOT:
        moved = _spmv_typed32(indptr, indices, data, x, y, sel, rows is None, add_op, mul_op, z, nthreads, keep)
    else:
        moved = _spmv_typed(indptr, _wide(indices), data, x, y, sel, rows is None, add_op, mul_op, z, nthreads,
                            keep)
    return None if old is None else moved


# ---------------------------------------------------------------------------------------------------- push

cdef int _push_kernel(const int64_t *indptr_t, const index_t *indices_t, const numeric_t *data_t,
                      int64_t nnz, const int64_t *idx, const numeric_t *vals, int64_t count, numeric_t *y,
                      int64_t ny, int add_op, int mul_op, numeric_t zero, IndexBuf *changed) noexcept nogil:
    """Sequential saxpy over the given columns, recording every entry of y that changes."""
    cdef int64_t r, j, k, i, ks, ke
    cdef numeric_t v, old, new
    for r in range(count):
        v = vals[r]
        if v == zero:
            continue
        j = idx[r]
        ks = indptr_t[j]
        ke = indptr_t[j + 1]
        if ks < 0 or ke > nnz or ks > ke:
            return ST_BAD_INDEX
        for k in range(ks, ke):
            i = indices_t[k]
            if <uint64_t>i >= <uint64_t>ny:
                return ST_BAD_INDEX
            old = y[i]
            new = apply_op(add_op, old, apply_op(mul_op, data_t[k], v))
            if new != old:
                y[i] = new
                if _buf_add(changed, i):
                    return ST_NO_MEMORY
    return ST_OK


cdef _push_run(const int64_t[::1] indptr_t, const index_t[::1] indices_t, const numeric_t[::1] data_t,
               const int64_t[::1] idx, const numeric_t[::1] vals, numeric_t[::1] y, int add_op, int mul_op,
               const numeric_t[::1] zero):
    """push on validated arguments."""
    cdef int status = ST_OK
    cdef IndexBuf changed
    if _buf_init(&changed, y.shape[0]):
        raise MemoryError("spmv kernel: out of memory")
    if idx.shape[0] and y.shape[0]:
        with nogil:
            status = _push_kernel(&indptr_t[0], &indices_t[0] if indices_t.shape[0] else NULL,
                                  &data_t[0] if data_t.shape[0] else NULL, indices_t.shape[0], &idx[0],
                                  &vals[0], idx.shape[0], &y[0], y.shape[0], add_op, mul_op, zero[0],
                                  &changed)
    out = _buf_sorted(&changed)
    _raise_status(status)
    return out


def _push_typed(const int64_t[::1] indptr_t, const int64_t[::1] indices_t, const numeric_t[::1] data_t,
                const int64_t[::1] idx, const numeric_t[::1] vals, numeric_t[::1] y, int add_op, int mul_op,
                const numeric_t[::1] zero):
    """Typed entry point of push, int64 indices."""
    return _push_run(indptr_t, indices_t, data_t, idx, vals, y, add_op, mul_op, zero)


def _push_typed32(const int64_t[::1] indptr_t, const int32_t[::1] indices_t, const hot_t[::1] data_t,
                  const int64_t[::1] idx, const hot_t[::1] vals, hot_t[::1] y, int add_op, int mul_op,
                  const hot_t[::1] zero):
    """Typed entry point of push, int32 indices."""
    return _push_run(indptr_t, indices_t, data_t, idx, vals, y, add_op, mul_op, zero)


def push(indptr_t, indices_t, data_t, idx, vals, y, int add_op, int mul_op, zero):
    """Sparse push (saxpy) with the transposed matrix: ``y[i] = y[i] ⊕ (A[i, j] ⊗ v)`` for each ``(j, v)``.

    ``(indptr_t, indices_t, data_t)`` is Aᵀ in CSR form (row j lists the ``(i, A[i, j])``); ``idx`` / ``vals``
    is the sparse vector. Pairs with ``v == zero`` are skipped; ``y[i]`` is written only when its value changes.
    Returns the sorted unique int64 array of the changed entries of ``y``.
    """
    indptr_t, indices_t, data_t, idx, vals, y, z = push_args(indptr_t, indices_t, data_t, idx, vals, y, add_op,
                                                             mul_op, zero)
    if indices_t.dtype == np.int32 and y.dtype in _HOT:
        return _push_typed32(indptr_t, indices_t, data_t, idx, vals, y, add_op, mul_op, z)
    return _push_typed(indptr_t, _wide(indices_t), data_t, idx, vals, y, add_op, mul_op, z)


# ------------------------------------------------------------------------------------------------- closure

cdef inline int _relax(numeric_t *x, int64_t i, int64_t n, numeric_t w, numeric_t v, int add_op, int mul_op,
                       IndexBuf *changed, numeric_t *old_out) noexcept nogil:
    """x[i] = x[i] ⊕ (w ⊗ v), recording i (and its first old value) when it changes.

    Returns 1 when x[i] changed, 0 when not, -1 for an index out of range, -2 when out of memory."""
    cdef numeric_t old, new
    if <uint64_t>i >= <uint64_t>n:
        return -1
    old = x[i]
    new = apply_op(add_op, old, apply_op(mul_op, w, v))
    if new == old:
        return 0
    if old_out != NULL and not changed.mark[i]:
        old_out[i] = old
    x[i] = new
    return -2 if _buf_add(changed, i) else 1


cdef int _closure_kernel(const int64_t *indptr_t, const index_t *indices_t, const numeric_t *data_t,
                         int64_t nnz, numeric_t *x, int64_t n, const int64_t *frontier, int64_t count,
                         int add_op, int mul_op, numeric_t zero, IndexBuf *changed,
                         numeric_t *old_out) noexcept nogil:
    """Label-setting (binary heap) while every improvement is no better than the popped value, then FIFO.

    The heap phase is Dijkstra's order for monotone semirings ((min, plus) with weights >= 0, (max, min),
    (min, max), ...); the first improvement that beats the value being pushed proves the order invalid, and
    the remaining work continues as a FIFO label-correcting worklist (with an in-queue bitmap) whose rounds
    are capped at n + 1. One loop: only where an entry is popped from and pushed to switches.
    """
    cdef bint maxfirst = add_op == OP_MAX
    cdef numeric_t *hkeys = NULL
    cdef int64_t *hids = NULL
    cdef Py_ssize_t hsize = 0, hcap = 0, h
    cdef uint8_t *inq = NULL
    cdef int64_t *queue = NULL
    cdef int64_t head = 0, qlen = 0, in_round = 0, rounds = 0
    cdef int64_t r, j, k, i, ks, ke
    cdef numeric_t v, new
    cdef bint ordered = True, from_heap
    cdef int status = ST_OK, rc
    for r in range(count):
        j = frontier[r]
        if x[j] != zero and heap_push(&hkeys, &hids, &hsize, &hcap, x[j], j, maxfirst):
            status = ST_NO_MEMORY
            break
    while status == ST_OK:
        if ordered:                                 # Dijkstra's order, while it holds
            if not hsize:
                break
            j = hids[0]
            v = hkeys[0]
            heap_pop(hkeys, hids, &hsize, maxfirst)
            if hsize:
                MMSB_SPMV_PREFETCH(&indptr_t[hids[0]])
                MMSB_SPMV_PREFETCH(&x[hids[0]])
            if v != x[j]:
                continue
        else:
            if queue == NULL:                       # the order broke: the heap's live entries start the FIFO
                inq = <uint8_t *>calloc(n, sizeof(uint8_t))
                queue = <int64_t *>malloc(n * sizeof(int64_t))
                if inq == NULL or queue == NULL:
                    status = ST_NO_MEMORY
                    break
                for h in range(hsize):
                    j = hids[h]
                    if hkeys[h] == x[j] and not inq[j]:
                        inq[j] = 1
                        queue[qlen] = j
                        qlen += 1
                hsize = 0
            if not qlen:
                break
            if in_round == 0:
                rounds += 1
                if rounds > n + 1:
                    status = ST_NO_CONVERGENCE
                    break
                in_round = qlen
            j = queue[head]
            head = head + 1 if head + 1 < n else 0
            qlen -= 1
            in_round -= 1
            inq[j] = 0
            v = x[j]
        if v == zero:
            continue
        from_heap = ordered                          # (the row pushes to where j came from)
        ks = indptr_t[j]
        ke = indptr_t[j + 1]
        if ks < 0 or ke > nnz or ks > ke:
            status = ST_BAD_INDEX
            break
        for k in range(ks, ke):
            i = indices_t[k]
            rc = _relax(x, i, n, data_t[k], v, add_op, mul_op, changed, old_out)
            if rc == 0:
                continue
            if rc < 0:
                status = ST_BAD_INDEX if rc == -1 else ST_NO_MEMORY
                break
            if from_heap:
                new = x[i]
                if heap_push(&hkeys, &hids, &hsize, &hcap, new, i, maxfirst):
                    status = ST_NO_MEMORY
                    break
                if better(new, v, maxfirst):
                    ordered = False
            elif not inq[i]:
                inq[i] = 1
                r = head + qlen
                queue[r if r < n else r - n] = i
                qlen += 1
        if ordered and hsize:
            ks = indptr_t[hids[0]]
            if 0 <= ks < nnz:
                MMSB_SPMV_PREFETCH(&indices_t[ks])
                MMSB_SPMV_PREFETCH(&data_t[ks])
    free(hkeys)
    free(hids)
    free(inq)
    free(queue)
    return status


cdef int _closure_buckets(const int64_t *indptr_t, const index_t *indices_t, const numeric_t *data_t,
                          int64_t nnz, numeric_t *x, int64_t n, const int64_t *frontier, int64_t count,
                          int add_op, int mul_op, numeric_t zero, double wmin, double wmax,
                          IndexBuf *changed, numeric_t *old_out, bint *disordered) noexcept nogil:
    """Dial's bucket queue for (min, plus) with every weight in [wmin, wmax], wmin > 0.

    Bucket b holds the entries whose value lies in [base + b wmin, base + (b + 1) wmin): an entry popped from
    bucket b can only improve others into buckets > b, so each bucket is settled in any order (no heap, no log
    factor). ``frontier`` must be sorted by value. ``disordered`` is set if a value ever falls outside the
    window (integer wrap-around): the caller then finishes with the general kernel.
    """
    cdef int64_t nb = <int64_t>(wmax / wmin) + 2
    cdef IdList *bk = <IdList *>calloc(nb, sizeof(IdList))
    cdef IdList *b
    cdef double base, inv
    cdef int64_t cur = 0, fi = 0, pending = 0, bi, j, i, k, ks, ke
    cdef Py_ssize_t q
    cdef numeric_t v
    cdef int status = ST_OK, rc
    if bk == NULL:
        return ST_NO_MEMORY
    inv = 1.0 / wmin
    base = <double>x[frontier[0]]
    while status == ST_OK:
        while fi < count and <int64_t>((<double>x[frontier[fi]] - base) * inv) <= cur:
            if push_id(&bk[cur % nb], frontier[fi]):
                status = ST_NO_MEMORY
                break
            pending += 1
            fi += 1
        if status != ST_OK:
            break
        if pending == 0:
            if fi >= count:
                break
            cur = <int64_t>((<double>x[frontier[fi]] - base) * inv)
            continue
        b = &bk[cur % nb]
        q = 0
        while q < b.size and status == ST_OK:
            j = b.ptr[q]
            q += 1
            v = x[j]
            if v == zero or <int64_t>((<double>v - base) * inv) != cur:
                continue
            ks = indptr_t[j]
            ke = indptr_t[j + 1]
            if ks < 0 or ke > nnz or ks > ke:
                status = ST_BAD_INDEX
                break
            for k in range(ks, ke):
                i = indices_t[k]
                rc = _relax(x, i, n, data_t[k], v, OP_MIN, OP_PLUS, changed, old_out)
                if rc == 0:
                    continue
                if rc < 0:
                    status = ST_BAD_INDEX if rc == -1 else ST_NO_MEMORY
                    break
                bi = <int64_t>((<double>x[i] - base) * inv)
                if bi < cur or bi >= cur + nb:
                    disordered[0] = True
                    continue
                if push_id(&bk[bi % nb], i):
                    status = ST_NO_MEMORY
                    break
                pending += 1
        pending -= b.size
        b.size = 0
        cur += 1
    for k in range(nb):
        free(bk[k].ptr)
    free(bk)
    return status


cdef _closure_run(const int64_t[::1] indptr_t, const index_t[::1] indices_t, const numeric_t[::1] data_t,
                  numeric_t[::1] x, const int64_t[::1] frontier, int add_op, int mul_op,
                  const numeric_t[::1] zero, numeric_t[::1] old_out, double wmin, double wmax):
    """closure on validated arguments (wmin > 0 selects the bucket queue)."""
    cdef int status = ST_OK
    cdef IndexBuf changed
    cdef numeric_t *old_ptr = &old_out[0] if old_out.shape[0] else NULL
    cdef bint disordered = False
    cdef const int64_t[::1] again
    if _buf_init(&changed, x.shape[0]):
        raise MemoryError("spmv kernel: out of memory")
    if frontier.shape[0] and x.shape[0]:
        with nogil:
            if wmin > 0:
                status = _closure_buckets(&indptr_t[0], &indices_t[0] if indices_t.shape[0] else NULL,
                                          &data_t[0] if data_t.shape[0] else NULL, indices_t.shape[0], &x[0],
                                          x.shape[0], &frontier[0], frontier.shape[0], add_op, mul_op, zero[0],
                                          wmin, wmax, &changed, old_ptr, &disordered)
            else:
                status = _closure_kernel(&indptr_t[0], &indices_t[0] if indices_t.shape[0] else NULL,
                                         &data_t[0] if data_t.shape[0] else NULL, indices_t.shape[0], &x[0],
                                         x.shape[0], &frontier[0], frontier.shape[0], add_op, mul_op, zero[0],
                                         &changed, old_ptr)
        if disordered and status == ST_OK:
            # values left the bucket window (wrap-around): converge from everything touched, generally
            again = np.concatenate([np.asarray(frontier), np.asarray(<int64_t[:changed.ids.size]> changed.ids.ptr)])
            with nogil:
                status = _closure_kernel(&indptr_t[0], &indices_t[0] if indices_t.shape[0] else NULL,
                                         &data_t[0] if data_t.shape[0] else NULL, indices_t.shape[0], &x[0],
                                         x.shape[0], &again[0], again.shape[0], add_op, mul_op, zero[0],
                                         &changed, old_ptr)
    out = _buf_sorted(&changed)
    _raise_status(status)
    return out


def _closure_typed(const int64_t[::1] indptr_t, const int64_t[::1] indices_t, const numeric_t[::1] data_t,
                   numeric_t[::1] x, const int64_t[::1] frontier, int add_op, int mul_op,
                   const numeric_t[::1] zero, numeric_t[::1] old_out, double wmin, double wmax):
    """Typed entry point of closure, int64 indices."""
    return _closure_run(indptr_t, indices_t, data_t, x, frontier, add_op, mul_op, zero, old_out, wmin, wmax)


def _closure_typed32(const int64_t[::1] indptr_t, const int32_t[::1] indices_t, const hot_t[::1] data_t,
                     hot_t[::1] x, const int64_t[::1] frontier, int add_op, int mul_op,
                     const hot_t[::1] zero, hot_t[::1] old_out, double wmin, double wmax):
    """Typed entry point of closure, int32 indices."""
    return _closure_run(indptr_t, indices_t, data_t, x, frontier, add_op, mul_op, zero, old_out, wmin, wmax)


ctypedef fused real_t:
    float
    double


def _closure_parallel(const int64_t[::1] indptr_t, const index_t[::1] indices_t, const real_t[::1] data_t,
                      real_t[::1] x, const int64_t[::1] frontier, const real_t[::1] zero, real_t[::1] old_out,
                      double wmin, double wmax, int nthreads):
    """Typed entry point of the parallel (min, plus) closure (validated; weights in [wmin, wmax], wmin > 0)."""
    cdef IndexBuf changed
    cdef int status = ST_OK
    cdef int64_t *ids = NULL
    cdef int64_t nids = 0, k
    cdef double base = <double>x[frontier[0]]
    cdef double delta = wmin * PAR_CLOSURE_DELTA
    cdef int64_t nb = <int64_t>(wmax / delta) + 2
    cdef real_t[::1] before
    if _buf_init(&changed, x.shape[0]):
        raise MemoryError("spmv kernel: out of memory")
    if old_out.shape[0]:
        before = np.array(x, copy=True)
    with nogil:
        if real_t is double and index_t is int64_t:
            status = mmsb_pclosure_f64(&indptr_t[0], &indices_t[0] if indices_t.shape[0] else NULL,
                                       &data_t[0] if data_t.shape[0] else NULL, indices_t.shape[0], &x[0],
                                       x.shape[0], &frontier[0], frontier.shape[0], zero[0], base, delta, nb,
                                       nthreads, changed.mark, &ids, &nids)
        elif real_t is double:
            status = mmsb_pclosure_f64_i32(&indptr_t[0], &indices_t[0] if indices_t.shape[0] else NULL,
                                           &data_t[0] if data_t.shape[0] else NULL, indices_t.shape[0], &x[0],
                                           x.shape[0], &frontier[0], frontier.shape[0], zero[0], base, delta, nb,
                                           nthreads, changed.mark, &ids, &nids)
        elif index_t is int64_t:
            status = mmsb_pclosure_f32(&indptr_t[0], &indices_t[0] if indices_t.shape[0] else NULL,
                                       &data_t[0] if data_t.shape[0] else NULL, indices_t.shape[0], &x[0],
                                       x.shape[0], &frontier[0], frontier.shape[0], zero[0], base, delta, nb,
                                       nthreads, changed.mark, &ids, &nids)
        else:
            status = mmsb_pclosure_f32_i32(&indptr_t[0], &indices_t[0] if indices_t.shape[0] else NULL,
                                           &data_t[0] if data_t.shape[0] else NULL, indices_t.shape[0], &x[0],
                                           x.shape[0], &frontier[0], frontier.shape[0], zero[0], base, delta, nb,
                                           nthreads, changed.mark, &ids, &nids)
        if status == ST_OK and old_out.shape[0]:
            for k in range(nids):
                old_out[ids[k]] = before[ids[k]]
    changed.ids.ptr = ids
    changed.ids.size = changed.ids.cap = nids
    out = _buf_sorted(&changed)
    _raise_status(status)
    return out


def closure(indptr_t, indices_t, data_t, x, frontier, int add_op, int mul_op, zero, old_out=None,
            weight_range=None, int nthreads=0):
    """Semi-naive least fixpoint ``x[i] = x[i] ⊕ (A[i, j] ⊗ x[j])`` for an idempotent ⊕ (min or max).

    ``(indptr_t, indices_t, data_t)`` is Aᵀ in CSR form (A square); ``x`` holds the current values (sources
    included) and is updated in place; ``frontier`` lists the entries whose value just improved (all ``j`` with
    ``x[j] != zero`` to start from scratch). Uses Dijkstra's order (binary heap) while it is valid and a FIFO
    worklist otherwise. Returns the sorted unique int64 array of the entries changed during the call. Raises
    ``ValueError("closure does not converge")`` after more than ``n + 1`` FIFO rounds (e.g. a negative cycle);
    ``x`` then holds the values reached so far.
    ``old_out`` (an array like ``x``), if given, receives at each changed entry its value before the call.
    ``weight_range=(wmin, wmax)``, the range of the stored weights, lets (min, plus) with ``wmin > 0`` use Dial's
    bucket queue instead of the heap (the same result, faster), and, on float pages for a large wave
    (``PAR_CLOSURE_FRONTIER`` entries, ``PAR_CLOSURE_N`` vertices), a parallel bucketed Bellman-Ford on
    ``nthreads`` threads (0: the thread policy's count); the values are the same bit for bit.
    """
    args = _closure_args_plain(indptr_t, indices_t, data_t, x, frontier, add_op, mul_op, zero, old_out)
    if args is None:
        args = closure_args(indptr_t, indices_t, data_t, x, frontier, add_op, mul_op, zero, old_out)
    indptr_t, indices_t, data_t, x, frontier, z, old_out, n = args
    if old_out is None:
        old_out = np.empty(0, dtype=x.dtype)
    wmin = wmax = 0.0
    if weight_range is not None and add_op == OP_MIN and mul_op == OP_PLUS and frontier.size:
        lo, hi = float(weight_range[0]), float(weight_range[1])
        vals = x[frontier]
        live = vals != z[0]
        if 0 < lo and hi < float("inf") and hi / lo < 2 ** 20 and (x.dtype.kind != "f" or
                                                                   np.isfinite(vals[live]).all()):
            wmin, wmax = lo, hi
            frontier = np.ascontiguousarray(frontier[live][np.argsort(vals[live], kind="stable")])
            if not frontier.size:
                return np.empty(0, dtype=np.int64)
            if nthreads <= 0:
                nthreads = mmsb_threads()
            if (x.dtype.kind == "f" and nthreads > 1 and frontier.size >= PAR_CLOSURE_FRONTIER
                    and n >= PAR_CLOSURE_N
                    and (not old_out.shape[0] or frontier.size * PAR_CLOSURE_INCREMENTAL >= n)):
                return _closure_parallel(indptr_t, indices_t, data_t, x, frontier, z, old_out, wmin, wmax,
                                         nthreads)
    if indices_t.dtype == np.int32 and x.dtype in _HOT:
        return _closure_typed32(indptr_t, indices_t, data_t, x, frontier, add_op, mul_op, z, old_out, wmin, wmax)
    return _closure_typed(indptr_t, _wide(indices_t), data_t, x, frontier, add_op, mul_op, z, old_out, wmin,
                          wmax)

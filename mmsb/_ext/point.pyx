# cython: language_level=3
"""Compiled point-wave kernels: one ``link`` step for a commit that changed a few source positions, fused.

:func:`entry_keys` turns a few matrix entries into sorted flat keys with duplicates folded.
:func:`apply_few` merges a few sparse values into a float64 page (the merge kernel's ``apply_normalized`` without
its per-call dtype dispatch). The engine's general link step costs about thirty numpy calls, whatever the size of the change. For a change of a
few source positions on float64 pages, :func:`link_push` does the same step in one call: the candidate rows, their
old values, the push ``y ⊕= A ⊗ d``, the rounding-error bounds of difference propagation and the rows that changed.
It returns None, having touched nothing, whenever the general step is needed (a worsened value under an
idempotent ⊕, a non-finite value, another dtype). Twin: :mod:`mmsb._ref.point` (same API, same results).
"""
import numpy as np
cimport numpy as cnp
from libc.float cimport DBL_EPSILON
from libc.math cimport fabs, isfinite
from libc.stdint cimport int32_t, int64_t, uint8_t
from libc.stdlib cimport free, malloc, qsort
from libc.string cimport memmove, memset
from cython.parallel cimport prange

from mmsb._ext._types cimport OP_MAX, OP_MIN, OP_PLUS, OP_TIMES, apply_op

cdef extern from "_threads.h":
    int mmsb_threads() noexcept nogil
    int mmsb_threads_dynamic() noexcept nogil
    void mmsb_threads_spread() noexcept nogil
    void mmsb_threads_set(int max_threads, int cpus, int adapt) noexcept nogil

cnp.import_array()

__all__ = ["apply_few", "entry_keys", "entry_push", "link_push", "set_parallel_min", "set_threads", "threads"]


cdef int _cmp_i64(const void *a, const void *b) noexcept nogil:
    cdef int64_t x = (<const int64_t *>a)[0]
    cdef int64_t y = (<const int64_t *>b)[0]
    return (x > y) - (x < y)


cdef inline Py_ssize_t _find(const int64_t *rows, Py_ssize_t n, int64_t i) noexcept nogil:
    """Position of ``i`` in the sorted ``rows[:n]`` (it is there)."""
    cdef Py_ssize_t lo = 0, hi = n - 1, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if rows[mid] < i:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline int64_t _index(const void *p, bint wide, Py_ssize_t k) noexcept nogil:
    return (<const int64_t *>p)[k] if wide else <int64_t>(<const int32_t *>p)[k]


cdef object _array(object a, str what, int typenum, bint writable=False):
    """``a`` checked to be a contiguous 1-d numpy array of ``typenum`` (int64 or float64)."""
    if not cnp.PyArray_Check(a):
        raise TypeError(f"point kernel: {what} must be a numpy array")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if not cnp.PyArray_EquivTypenums(cnp.PyArray_TYPE(arr), typenum) or cnp.PyArray_NDIM(arr) != 1 \
            or not cnp.PyArray_IS_C_CONTIGUOUS(arr) or not cnp.PyArray_ISNOTSWAPPED(arr):
        kind = "int64" if typenum == cnp.NPY_INT64 else "float64"
        raise TypeError(f"point kernel: {what} must be a contiguous 1-d {kind} array in native byte order")
    if writable and not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"point kernel: {what} is read-only")
    return arr


cdef bint _overlap(cnp.ndarray a, object b):
    """Whether the memory of ``a`` and of the array ``b`` (None: no array) overlap."""
    if b is None:
        return False
    cdef cnp.ndarray o = <cnp.ndarray>b
    cdef char *p = <char *>cnp.PyArray_DATA(a)
    cdef char *q = <char *>cnp.PyArray_DATA(o)
    return p < q + cnp.PyArray_NBYTES(o) and q < p + cnp.PyArray_NBYTES(a)


cdef _check_apart(cnp.ndarray out, tuple inputs, str fn):
    """Refuse an output array that shares memory with an input (a write would change what was checked)."""
    for a in inputs:
        if _overlap(out, a):
            raise ValueError(f"{fn}: an output array shares memory with an input")


cdef object _outputs(cnp.ndarray a_y, object err, tuple inputs, str fn):
    """The rounding bounds ``err`` of a push into ``y`` checked (None: none; else a writable contiguous float64
    array, one entry per row of ``y``), and neither output sharing memory with an input or with the other.
    Returns the bounds array or None."""
    if err is None:
        _check_apart(a_y, inputs, fn)
        return None
    cdef cnp.ndarray a_err = _array(err, "err", cnp.NPY_FLOAT64, True)
    if cnp.PyArray_DIM(a_err, 0) != cnp.PyArray_DIM(a_y, 0):
        raise ValueError(f"{fn}: err has {cnp.PyArray_DIM(a_err, 0)} entries, y has {cnp.PyArray_DIM(a_y, 0)}")
    _check_apart(a_y, inputs + (a_err,), fn)
    _check_apart(a_err, inputs + (a_y,), fn)
    return a_err


def link_push(indptr_t, indices_t, data_t, idx, new, old, y, err, int add_op, int mul_op, double tol):
    """One link step ``y ⊕= A ⊗ Δx`` for the changed source positions ``idx`` (sorted, unique), fused.

    ``(indptr_t, indices_t, data_t)`` is Aᵀ in CSR form (int64 / int32 or int64 / float64); ``new`` and ``old``
    are the source values at ``idx`` after and before the commit (float64); ``y`` (float64) is updated in place.
    Under ``add_op`` = plus the differences ``new - old`` are pushed and, when ``err`` (float64, per-row bounds) is
    given, each candidate row's rounding bound grows by ``(k + 2) u (|y_before| + Σ_j |A[i, j]| (|new_j| + |old_j|))``;
    a row whose bound exceeds ``tol * |y|`` (or that is not finite) is "bad": it must be recomputed. Under min or
    max every new value must be at least as good as the old one (``old ⊕ new == new``), and ``new`` is pushed.

    Returns None (nothing touched) when the general step is needed: a non-finite value, a worsened value under an
    idempotent ⊕, or an ⊕ other than plus/min/max. Else ``(rows, before, bad)``: with ``bad`` None, the sorted
    rows of ``y`` that changed and their old values; otherwise every candidate row, its old value and a uint8 mask
    of the bad rows (whose bounds were left unchanged in ``err``).
    """
    cdef cnp.ndarray a_ptr = _array(indptr_t, "indptr_t", cnp.NPY_INT64)
    cdef cnp.ndarray a_idx = _array(idx, "idx", cnp.NPY_INT64)
    cdef cnp.ndarray a_data = _array(data_t, "data_t", cnp.NPY_FLOAT64)
    cdef cnp.ndarray a_new = _array(new, "new", cnp.NPY_FLOAT64)
    cdef cnp.ndarray a_old = _array(old, "old", cnp.NPY_FLOAT64)
    cdef cnp.ndarray a_y = _array(y, "y", cnp.NPY_FLOAT64, True)
    cdef cnp.ndarray a_err
    cdef cnp.ndarray a_ind
    cdef bint wide
    if not cnp.PyArray_Check(indices_t):
        raise TypeError("link_push: indices_t must be a numpy array")
    a_ind = <cnp.ndarray>indices_t
    if cnp.PyArray_EquivTypenums(cnp.PyArray_TYPE(a_ind), cnp.NPY_INT64):
        wide = True
    elif cnp.PyArray_EquivTypenums(cnp.PyArray_TYPE(a_ind), cnp.NPY_INT32):
        wide = False
    else:
        raise TypeError("link_push: indices_t must be int32 or int64")
    if cnp.PyArray_NDIM(a_ind) != 1 or not cnp.PyArray_IS_C_CONTIGUOUS(a_ind):
        raise TypeError("link_push: indices_t must be a contiguous 1-d array")
    cdef Py_ssize_t k = cnp.PyArray_DIM(a_idx, 0)
    cdef Py_ssize_t ncols = cnp.PyArray_DIM(a_ptr, 0) - 1
    cdef Py_ssize_t ny = cnp.PyArray_DIM(a_y, 0)
    cdef Py_ssize_t nnz = min(cnp.PyArray_DIM(a_ind, 0), cnp.PyArray_DIM(a_data, 0))
    if ncols < 0:
        raise ValueError("link_push: indptr_t is empty")
    if cnp.PyArray_DIM(a_new, 0) != k or cnp.PyArray_DIM(a_old, 0) != k:
        raise ValueError(f"link_push: {k} positions but {cnp.PyArray_DIM(a_new, 0)} new and "
                         f"{cnp.PyArray_DIM(a_old, 0)} old values")
    a_err = _outputs(a_y, err, (a_ptr, a_ind, a_data, a_idx, a_new, a_old), "link_push")
    cdef bint track = a_err is not None
    cdef double *e = <double *>cnp.PyArray_DATA(a_err) if track else NULL
    if add_op != OP_PLUS and add_op != OP_MIN and add_op != OP_MAX:
        return None
    if mul_op < OP_PLUS or mul_op > OP_MAX:
        raise ValueError(f"link_push: unknown mul_op {mul_op}")
    if add_op != OP_PLUS:
        track = False

    cdef const int64_t *ptr = <const int64_t *>cnp.PyArray_DATA(a_ptr)
    cdef const int64_t *cols = <const int64_t *>cnp.PyArray_DATA(a_idx)
    cdef const void *ind = cnp.PyArray_DATA(a_ind)
    cdef const double *data = <const double *>cnp.PyArray_DATA(a_data)
    cdef const double *nw = <const double *>cnp.PyArray_DATA(a_new)
    cdef const double *od = <const double *>cnp.PyArray_DATA(a_old)
    cdef double *yv = <double *>cnp.PyArray_DATA(a_y)
    cdef Py_ssize_t c, p, q, total = 0, ncand
    cdef int64_t j, i, s, t
    cdef double v, a, u = DBL_EPSILON / 2
    # every length and index first: nothing is touched before they all hold
    for c in range(k):
        j = cols[c]
        if j < 0 or j >= ncols:
            raise ValueError(f"link_push: position {j} out of range [0, {ncols})")
        s, t = ptr[j], ptr[j + 1]
        if s < 0 or t < s or t > nnz:
            raise ValueError(f"link_push: column {j} spans entries [{s}, {t}) of {nnz}")
        total += t - s
    for c in range(k):
        if not (isfinite(nw[c]) and isfinite(od[c])):
            return None
        if add_op != OP_PLUS and apply_op(add_op, od[c], nw[c]) != nw[c]:
            return None                     # a worsened value: the rows it fed must be recomputed
    cdef int64_t *rows = <int64_t *>malloc(max(total, 1) * sizeof(int64_t))
    cdef double *mag = NULL
    if rows == NULL:
        raise MemoryError()
    cdef bint ordered = True
    q = 0
    for c in range(k):
        j = cols[c]
        for p in range(ptr[j], ptr[j + 1]):
            i = _index(ind, wide, p)
            if i < 0 or i >= ny:
                free(rows)
                raise ValueError(f"link_push: row index {i} out of range [0, {ny})")
            if q and rows[q - 1] >= i:
                ordered = False
            rows[q] = i
            q += 1
    if not ordered:
        qsort(rows, total, sizeof(int64_t), _cmp_i64)
        ncand = 0
        for p in range(total):
            if ncand == 0 or rows[ncand - 1] != rows[p]:
                rows[ncand] = rows[p]
                ncand += 1
    else:
        ncand = total
    cdef double *before = <double *>malloc(max(ncand, 1) * sizeof(double))
    if before == NULL:
        free(rows)
        raise MemoryError()
    for p in range(ncand):
        before[p] = yv[rows[p]]
    if track:
        mag = <double *>malloc(max(ncand, 1) * sizeof(double))
        if mag == NULL:
            free(rows)
            free(before)
            raise MemoryError()
        for p in range(ncand):
            mag[p] = 0.0
    # the push, column by column (the order of the general step's kernel)
    q = 0
    for c in range(k):
        j = cols[c]
        v = nw[c] - od[c] if add_op == OP_PLUS else nw[c]
        for p in range(ptr[j], ptr[j + 1]):
            i = _index(ind, wide, p)
            a = data[p]
            yv[i] = apply_op(add_op, yv[i], apply_op(mul_op, a, v))
            if track:
                if ordered:
                    mag[q] = mag[q] + fabs(a) * (fabs(nw[c]) + fabs(od[c]))
                    q += 1
                else:
                    t = _find(rows, ncand, i)
                    mag[t] = mag[t] + fabs(a) * (fabs(nw[c]) + fabs(od[c]))
    cdef cnp.ndarray bad = None
    cdef uint8_t *bv = NULL
    cdef Py_ssize_t nbad = 0, nout
    cdef double bound, scale = (k + 2) * u
    if add_op == OP_PLUS:
        bv = <uint8_t *>malloc(max(ncand, 1))
        if bv == NULL:
            free(rows)
            free(before)
            free(mag)
            raise MemoryError()
        for p in range(ncand):
            i = rows[p]
            bv[p] = 0
            if track:
                bound = e[i] + scale * (fabs(before[p]) + mag[p])
                if bound <= tol * fabs(yv[i]) and isfinite(yv[i]):
                    e[i] = bound
                else:
                    bv[p] = 1
                    nbad += 1
            elif not isfinite(yv[i]):
                bv[p] = 1
                nbad += 1
    free(mag)
    if nbad:                                # every candidate row, with the mask of the bad ones
        nout = ncand
    else:                                   # the rows that changed
        nout = 0
        for p in range(ncand):
            if yv[rows[p]] != before[p]:
                rows[nout] = rows[p]
                before[nout] = before[p]
                nout += 1
    cdef cnp.npy_intp dim = nout
    cdef cnp.ndarray out_rows = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_INT64, 0)
    cdef cnp.ndarray out_before = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_FLOAT64, 0)
    cdef int64_t *orow = <int64_t *>cnp.PyArray_DATA(out_rows)
    cdef double *obef = <double *>cnp.PyArray_DATA(out_before)
    cdef uint8_t *obad
    for p in range(nout):
        orow[p] = rows[p]
        obef[p] = before[p]
    if nbad:
        bad = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_UINT8, 0)
        obad = <uint8_t *>cnp.PyArray_DATA(bad)
        for p in range(nout):
            obad[p] = bv[p]
    free(rows)
    free(before)
    free(bv)
    return out_rows, out_before, bad


def apply_few(page, idx, vals, int op):
    """Merge ``vals`` at the sorted, unique positions ``idx`` into the float64 array ``page`` in place: assigned
    (``op`` = -1) or ``page[i] = op(page[i], v)``. Returns ``(old, changed, count)``: the values before, a uint8
    mask of the positions whose value changed (NaN to NaN counts as unchanged) and how many did. Every index is
    checked first."""
    cdef cnp.ndarray a_page = _array(page, "page", cnp.NPY_FLOAT64, True)
    cdef cnp.ndarray a_idx = _array(idx, "idx", cnp.NPY_INT64)
    cdef cnp.ndarray a_vals = _array(vals, "vals", cnp.NPY_FLOAT64)
    cdef Py_ssize_t n = cnp.PyArray_DIM(a_idx, 0), size = cnp.PyArray_DIM(a_page, 0), c
    if cnp.PyArray_DIM(a_vals, 0) != n:
        raise ValueError(f"apply_few: {n} positions but {cnp.PyArray_DIM(a_vals, 0)} values")
    if op < -1 or op > OP_MAX:
        raise ValueError(f"apply_few: unknown op {op}")
    _check_apart(a_page, (a_idx, a_vals), "apply_few")
    cdef const int64_t *ix = <const int64_t *>cnp.PyArray_DATA(a_idx)
    cdef const double *v = <const double *>cnp.PyArray_DATA(a_vals)
    cdef double *y = <double *>cnp.PyArray_DATA(a_page)
    for c in range(n):
        if ix[c] < 0 or ix[c] >= size:
            raise ValueError(f"apply_few: position {ix[c]} out of range [0, {size})")
    cdef cnp.npy_intp dim = n
    cdef cnp.ndarray old = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_FLOAT64, 0)
    cdef cnp.ndarray changed = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_UINT8, 0)
    cdef double *o = <double *>cnp.PyArray_DATA(old)
    cdef uint8_t *ch = <uint8_t *>cnp.PyArray_DATA(changed)
    cdef double a, b
    cdef Py_ssize_t count = 0
    for c in range(n):
        a = y[ix[c]]
        b = apply_op(op, a, v[c])
        o[c] = a
        y[ix[c]] = b
        ch[c] = (b != a) and not (b != b and a != a)
        count += ch[c]
    return old, changed, count


def entry_keys(rows, cols, vals, int64_t nrows, int64_t ncols, int fold_op):
    """The flat keys ``row * ncols + col`` of a few matrix entries, sorted, with duplicates folded in the order
    given (``fold_op`` -1: the last value wins; else folded with that op), and their float64 values.

    ``rows`` / ``cols``: int64 arrays of one length; ``vals``: float64 of that length. Returns ``(keys, values)``,
    or None (nothing computed) when an index is out of range or the lengths differ: the caller's general path then
    raises the error that names the entry."""
    cdef cnp.ndarray a_r = _array(rows, "rows", cnp.NPY_INT64)
    cdef cnp.ndarray a_c = _array(cols, "cols", cnp.NPY_INT64)
    cdef cnp.ndarray a_v = _array(vals, "vals", cnp.NPY_FLOAT64)
    cdef Py_ssize_t k = cnp.PyArray_DIM(a_r, 0), p, q, nout
    if cnp.PyArray_DIM(a_c, 0) != k or cnp.PyArray_DIM(a_v, 0) != k:
        return None
    if fold_op < -1 or fold_op > OP_MAX:
        raise ValueError(f"entry_keys: unknown op {fold_op}")
    cdef const int64_t *r = <const int64_t *>cnp.PyArray_DATA(a_r)
    cdef const int64_t *c = <const int64_t *>cnp.PyArray_DATA(a_c)
    cdef const double *v = <const double *>cnp.PyArray_DATA(a_v)
    for p in range(k):
        if r[p] < 0 or r[p] >= nrows or c[p] < 0 or c[p] >= ncols:
            return None
    cdef cnp.npy_intp dim = k
    cdef cnp.ndarray keys = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_INT64, 0)
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_FLOAT64, 0)
    cdef int64_t *kk = <int64_t *>cnp.PyArray_DATA(keys)
    cdef double *ov = <double *>cnp.PyArray_DATA(out)
    cdef int64_t key
    cdef double val
    for p in range(k):                          # insertion sort: stable, so duplicates keep their order
        key = r[p] * ncols + c[p]
        val = v[p]
        q = p
        while q > 0 and kk[q - 1] > key:
            kk[q] = kk[q - 1]
            ov[q] = ov[q - 1]
            q -= 1
        kk[q] = key
        ov[q] = val
    nout = 0
    for p in range(k):
        if nout and kk[nout - 1] == kk[p]:
            ov[nout - 1] = apply_op(fold_op, ov[nout - 1], ov[p])
        else:
            kk[nout] = kk[p]
            ov[nout] = ov[p]
            nout += 1
    if nout == k:
        return keys, out
    return keys[:nout].copy(), out[:nout].copy()


cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define MMSB_POINT_PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 1)
    #else
    #define MMSB_POINT_PREFETCH(p) ((void)0)
    #endif
    """
    void MMSB_POINT_PREFETCH(const void *p) noexcept nogil

cdef enum:
    PUSH_AHEAD = 16         # entry_push: entries ahead whose x, y and bound lines are prefetched


cdef struct PushPart:
    # one part of a threaded entry_push: the keys [lo, hi) (whole rows), its outputs written from lo on
    Py_ssize_t lo
    Py_ssize_t hi
    Py_ssize_t nt           # rows touched
    Py_ssize_t nbad         # of them bad
    Py_ssize_t nchg         # of them changed (when none is bad: what is returned)
    bint wrong              # a key out of order or out of range (the serial check then says which)


cdef inline int64_t _row_of(int64_t key, int64_t ncols, double inv) noexcept nogil:
    """``key // ncols`` for ``0 <= key``, ``ncols > 0``: one multiply and a correction below 2**52 (exact: the
    float quotient is off by less than one), the integer division above."""
    cdef int64_t r
    if key >= (<int64_t>1 << 52):
        return key // ncols
    r = <int64_t>(<double>key * inv)
    if r * ncols > key:
        r -= 1
    elif (r + 1) * ncols <= key:
        r += 1
    return r


cdef void _push_check(const int64_t *ks, int64_t *own, int64_t ncols, Py_ssize_t ny, PushPart *part) noexcept nogil:
    """The keys of ``part`` strictly increasing (the first against the key before it) and in range; their rows into
    ``own``. Sets ``part.wrong`` on the first that is not."""
    cdef Py_ssize_t q
    cdef int64_t prev = ks[part.lo - 1] if part.lo > 0 else -1
    cdef double inv = 1.0 / <double>ncols if ncols > 0 else 0.0
    for q in range(part.lo, part.hi):
        if ks[q] <= prev or ks[q] < 0:
            part.wrong = True
            return
        prev = ks[q]
        own[q] = _row_of(prev, ncols, inv)
        if own[q] >= ny:
            part.wrong = True
            return


cdef void _push_part(const int64_t *ks, const int64_t *own, const double *od, const double *nw, const double *xv,
                     double *yv, double *e, bint track, int64_t ncols, int mul_op, double zero, double tol,
                     int64_t *rows, double *before, double *after, uint8_t *bv, PushPart *part) noexcept nogil:
    """entry_push's push over the keys of ``part`` (whole rows of ``y``): every touched row, its value before and
    after and whether it is bad, written from ``part.lo`` on; the counts into ``part``."""
    cdef Py_ssize_t q = part.lo, p, hi = part.hi, nt = part.lo, nbad = 0, nchg = 0, cnt
    cdef int64_t i, c
    cdef double u = DBL_EPSILON / 2, b, acc, mag, tn, to, bound
    while q < hi:
        i = own[q]
        b = yv[i]
        acc = b
        mag = 0.0
        cnt = 0
        while q < hi and own[q] == i:
            if q + PUSH_AHEAD < hi:
                p = q + PUSH_AHEAD
                MMSB_POINT_PREFETCH(&xv[ks[p] - own[p] * ncols])
                MMSB_POINT_PREFETCH(&yv[own[p]])
                if track:
                    MMSB_POINT_PREFETCH(&e[own[p]])
            c = ks[q] - i * ncols
            tn = apply_op(mul_op, nw[q], xv[c]) if nw[q] != zero else 0.0
            to = apply_op(mul_op, od[q], xv[c]) if od[q] != zero else 0.0
            acc = acc + (tn - to)
            mag = mag + fabs(tn) + fabs(to)
            cnt += 1
            q += 1
        yv[i] = acc
        rows[nt] = i
        before[nt] = b
        after[nt] = acc
        bv[nt] = 0
        if not isfinite(acc):
            bv[nt] = 1
            nbad += 1
        elif track:
            bound = e[i] + (cnt + 2) * u * (fabs(b) + mag)
            if bound <= tol * fabs(acc):
                e[i] = bound
            else:
                bv[nt] = 1
                nbad += 1
        if acc != b:
            nchg += 1
        nt += 1
    part.nt = nt - part.lo
    part.nbad = nbad
    part.nchg = nchg


cdef enum:
    PUSH_MAX_PARTS = 256    # parts of a threaded entry_push (several per thread, taken dynamically)
    PUSH_SPLIT = 4          # parts per thread

cdef Py_ssize_t _push_par_min = 1 << 14


def set_threads(int max_threads, int cpus, bint adapt=True):
    """Configure the thread policy: at most ``max_threads`` threads (0: OpenMP's default), ``cpus`` on the machine,
    ``adapt``: use fewer while other processes keep the CPUs busy (see mmsb/_ext/_threads.h)."""
    mmsb_threads_set(max_threads, cpus, adapt)


def threads():
    """The number of threads a parallel kernel of this module would use now."""
    return mmsb_threads()


def set_parallel_min(Py_ssize_t n):
    """The number of keys from which ``entry_push`` runs on several threads (default 2**14); returns the previous
    one. The result does not depend on it (tests lower it to run the threaded path on small inputs)."""
    global _push_par_min
    cdef Py_ssize_t was = _push_par_min
    _push_par_min = n if n > 1 else 1
    return was


cdef void _push_cut(const int64_t *own, Py_ssize_t n, PushPart *parts, int nparts) noexcept nogil:
    """Cut the keys [0, n) into ``nparts`` parts of about equal size, each ending at a row boundary (by ``own``)."""
    cdef int t
    cdef Py_ssize_t b, prev = 0
    for t in range(nparts):
        parts[t].lo = prev
        b = n * (t + 1) // nparts
        if b < prev:
            b = prev
        while 0 < b < n and own[b] == own[b - 1]:
            b += 1
        parts[t].hi = b
        prev = b


def entry_push(keys, old, new, int64_t ncols, x, y, err, int mul_op, double zero, double tol, bint after=False):
    """One link step ``y += (A' - A) ⊗ x`` after entries of A changed (float64 pages, ⊕ = plus), fused.

    ``keys`` are the changed entries' flat positions ``row * ncols + col`` (strictly increasing), ``old`` and
    ``new`` their values before and after (float64; ``zero``, ⊕'s zero, is an absent entry and contributes
    nothing), ``x`` the source (``ncols`` values), ``y`` the target (updated in place). Each touched row ``i`` gets
    ``y[i] + Σ_k (new_k ⊗ x[c_k] - old_k ⊗ x[c_k])``, summed in key order, and, when ``err`` (per-row bounds) is
    given, its rounding bound grows by ``(k_i + 2) u (|y_before| + Σ_k |new_k ⊗ x[c_k]| + |old_k ⊗ x[c_k]|)`` over
    its ``k_i`` changed entries; a row whose bound exceeds ``tol * |y|``, or whose value is not finite, is "bad":
    it must be recomputed (its bound is left unchanged).

    Returns ``(rows, before, bad)``: with ``bad`` None, the sorted rows of ``y`` that changed and their old values;
    otherwise every touched row, its old value and a uint8 mask of the bad rows. ``after=True`` appends the rows'
    values after the push (``y[rows]``). Every argument is checked before anything is written.

    From :func:`set_parallel_min` keys on (2**14 by default) the keys are cut at row boundaries into parts that
    OpenMP threads push (the thread policy of mmsb/_ext/_threads.h, :func:`set_threads`): each row is summed by one
    thread in key order, so the results are those of one thread, bit for bit.
    """
    cdef cnp.ndarray a_keys = _array(keys, "keys", cnp.NPY_INT64)
    cdef cnp.ndarray a_old = _array(old, "old", cnp.NPY_FLOAT64)
    cdef cnp.ndarray a_new = _array(new, "new", cnp.NPY_FLOAT64)
    cdef cnp.ndarray a_x = _array(x, "x", cnp.NPY_FLOAT64)
    cdef cnp.ndarray a_y = _array(y, "y", cnp.NPY_FLOAT64, True)
    cdef cnp.ndarray a_err
    cdef Py_ssize_t n = cnp.PyArray_DIM(a_keys, 0), ny = cnp.PyArray_DIM(a_y, 0)
    if cnp.PyArray_DIM(a_old, 0) != n or cnp.PyArray_DIM(a_new, 0) != n:
        raise ValueError(f"entry_push: {n} keys but {cnp.PyArray_DIM(a_old, 0)} old and "
                         f"{cnp.PyArray_DIM(a_new, 0)} new values")
    if ncols < 0 or cnp.PyArray_DIM(a_x, 0) != ncols:
        raise ValueError(f"entry_push: x has {cnp.PyArray_DIM(a_x, 0)} values, the matrix {ncols} columns")
    if n and ncols == 0:
        raise ValueError("entry_push: keys given for a matrix of no columns")
    if mul_op < OP_PLUS or mul_op > OP_MAX:
        raise ValueError(f"entry_push: unknown mul_op {mul_op}")
    a_err = _outputs(a_y, err, (a_keys, a_old, a_new, a_x), "entry_push")
    cdef bint track = a_err is not None
    cdef double *e = <double *>cnp.PyArray_DATA(a_err) if track else NULL
    cdef const int64_t *ks = <const int64_t *>cnp.PyArray_DATA(a_keys)
    cdef const double *od = <const double *>cnp.PyArray_DATA(a_old)
    cdef const double *nw = <const double *>cnp.PyArray_DATA(a_new)
    cdef const double *xv = <const double *>cnp.PyArray_DATA(a_x)
    cdef double *yv = <double *>cnp.PyArray_DATA(a_y)
    cdef Py_ssize_t q, p, nt = 0, nbad = 0, nchg = 0, nout
    cdef int64_t prev = -1
    cdef int nparts = 1, t, nthreads = 1
    cdef bint wrong = False
    cdef cnp.ndarray out_rows, out_before, out_after, bad
    cdef int64_t *rows
    cdef double *before
    cdef double *aft
    cdef uint8_t *bv
    cdef PushPart one
    cdef PushPart *parts = &one
    cdef cnp.npy_intp dim = n
    cdef cnp.ndarray owner = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_INT64, 0)
    cdef int64_t *own = <int64_t *>cnp.PyArray_DATA(owner)
    if n >= _push_par_min and n >= 2:
        nthreads = mmsb_threads_dynamic()
        if nthreads > 1:
            nparts = nthreads * PUSH_SPLIT
            if nparts > PUSH_MAX_PARTS:
                nparts = PUSH_MAX_PARTS
            if nparts > n:
                nparts = <int>n
    if nparts > 1:
        parts = <PushPart *>malloc(nparts * sizeof(PushPart))
        if parts == NULL:
            raise MemoryError("entry_push: out of memory")
    try:
        memset(parts, 0, nparts * sizeof(PushPart))
        for t in range(nparts):             # (even cuts for the checks; rows are cut below, once known)
            parts[t].lo = n * t // nparts
            parts[t].hi = n * (t + 1) // nparts
        if nparts > 1:
            for t in prange(nparts, nogil=True, num_threads=nthreads, schedule="dynamic", chunksize=1):
                mmsb_threads_spread()
                _push_check(ks, own, ncols, ny, &parts[t])
        else:
            with nogil:
                _push_check(ks, own, ncols, ny, parts)
        for t in range(nparts):
            wrong = wrong or parts[t].wrong
        if wrong:                           # the first key that is wrong, named (nothing was written)
            for q in range(n):
                if ks[q] <= prev:
                    raise ValueError(f"entry_push: keys must be strictly increasing (key {ks[q]} after {prev})")
                prev = ks[q]
                if prev < 0 or prev // ncols >= ny:
                    raise ValueError(f"entry_push: key {prev} out of range for {ny} rows of {ncols} columns")
            raise ValueError("entry_push: keys out of order or out of range")     # (not reached: the same checks)
        out_rows = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_INT64, 0)
        out_before = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_FLOAT64, 0)
        out_after = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_FLOAT64, 0)
        bad = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_UINT8, 0)
        rows = <int64_t *>cnp.PyArray_DATA(out_rows)
        before = <double *>cnp.PyArray_DATA(out_before)
        aft = <double *>cnp.PyArray_DATA(out_after)
        bv = <uint8_t *>cnp.PyArray_DATA(bad)
        if nparts > 1:
            with nogil:
                _push_cut(own, n, parts, nparts)
            for t in prange(nparts, nogil=True, num_threads=nthreads, schedule="dynamic", chunksize=1):
                mmsb_threads_spread()
                _push_part(ks, own, od, nw, xv, yv, e, track, ncols, mul_op, zero, tol, rows, before, aft, bv,
                           &parts[t])
        else:
            with nogil:
                _push_part(ks, own, od, nw, xv, yv, e, track, ncols, mul_op, zero, tol, rows, before, aft, bv,
                           parts)
        for t in range(nparts):
            nbad += parts[t].nbad
            nchg += parts[t].nchg
        with nogil:                         # the parts' outputs one after another: every touched row, or those
            for t in range(nparts):         # that changed when none is bad
                if nbad or parts[t].nchg == parts[t].nt:
                    if nt != parts[t].lo:
                        memmove(&rows[nt], &rows[parts[t].lo], parts[t].nt * sizeof(int64_t))
                        memmove(&before[nt], &before[parts[t].lo], parts[t].nt * sizeof(double))
                        memmove(&aft[nt], &aft[parts[t].lo], parts[t].nt * sizeof(double))
                        memmove(&bv[nt], &bv[parts[t].lo], parts[t].nt * sizeof(uint8_t))
                    nt += parts[t].nt
                else:
                    for p in range(parts[t].lo, parts[t].lo + parts[t].nt):
                        if aft[p] != before[p]:
                            rows[nt] = rows[p]
                            before[nt] = before[p]
                            aft[nt] = aft[p]
                            nt += 1
    finally:
        if parts != &one:
            free(parts)
    if nbad:
        got = (out_rows[:nt], out_before[:nt], bad[:nt])
    else:
        got = (out_rows[:nt], out_before[:nt], None)
    return got + (out_after[:nt],) if after else got

# cython: language_level=3
"""Packed dense deltas: a dense delta keeps the masked entries of a page-shaped array, in order. These kernels
pack such values and merge them into a page without expanding them back to the page's shape.

Arrays are 1-D and C-contiguous; masks are uint8 (bool views); values have the page's kernel dtype (bool as uint8).
Work is split into fixed chunks whose offsets into the packed values come from a count of the mask per chunk, so
that both passes run in parallel. The pure-numpy twin is ``mmsb._ref.packed``.
"""
import numpy as np

from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint8_t
from libc.stdlib cimport free, malloc

from mmsb._ext._types cimport (OP_ASSIGN, OP_MAX, OP_MIN, OP_PLUS, OP_TIMES, numeric_t, op_max, op_min, op_plus,
                               op_times, valid_op)

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int mmsb_packed_threads(void) { return omp_get_max_threads(); }
    #else
    static int mmsb_packed_threads(void) { return 1; }
    #endif
    """
    int mmsb_packed_threads() noexcept nogil

cdef enum:
    CHUNK = 65536


cdef int _threads(Py_ssize_t n) noexcept nogil:
    cdef int t = mmsb_packed_threads()
    if n < 8 * CHUNK or t < 1:
        return 1
    return t


cdef void _counts(const uint8_t[::1] mask, int64_t[::1] starts, int nthreads) noexcept nogil:
    """starts[c] = number of set mask entries before chunk c (starts has nchunks + 1 entries)."""
    cdef Py_ssize_t n = mask.shape[0], nchunks = starts.shape[0] - 1, c, i, lo, hi
    cdef int64_t s
    for c in prange(nchunks, num_threads=nthreads, schedule="static", nogil=True):
        lo = c * CHUNK
        hi = lo + CHUNK
        if hi > n:
            hi = n
        s = 0
        for i in range(lo, hi):
            s = s + (mask[i] != 0)
        starts[c + 1] = s
    starts[0] = 0
    for c in range(nchunks):
        starts[c + 1] += starts[c]


cdef Py_ssize_t _last_set(const uint8_t *mask, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """One past the last set entry of mask[lo:hi] (lo when there is none)."""
    while hi > lo and not mask[hi - 1]:
        hi -= 1
    return hi


cdef void _pack_range(const numeric_t *values, const uint8_t *mask, numeric_t *out, Py_ssize_t lo, Py_ssize_t hi,
                      int64_t k) noexcept nogil:
    """Branchless: every entry is written at the next free slot, which a later set entry overwrites unless the
    entry was set itself; the loop ends at the chunk's last set entry, so no write leaves the chunk's slots."""
    cdef Py_ssize_t i
    hi = _last_set(mask, lo, hi)
    for i in range(lo, hi):
        out[k] = values[i]
        k += mask[i] != 0


def pack(const numeric_t[::1] values, const uint8_t[::1] mask, numeric_t[::1] out):
    """Write ``values[mask]`` into ``out`` (at least ``count_nonzero(mask)`` entries); returns that count."""
    cdef Py_ssize_t n = values.shape[0], nchunks, c, lo, hi
    cdef int nthreads
    if mask.shape[0] != n:
        raise ValueError(f"values has {n} entries but mask has {mask.shape[0]}")
    nchunks = (n + CHUNK - 1) // CHUNK
    starts = np.zeros(nchunks + 1, dtype=np.int64)
    cdef int64_t[::1] st = starts
    nthreads = _threads(n)
    _counts(mask, st, nthreads)
    cdef int64_t total = st[nchunks]
    if out.shape[0] < total:
        raise ValueError(f"out has {out.shape[0]} entries, {total} are needed")
    if total == 0:
        return 0
    with nogil:
        for c in prange(nchunks, num_threads=nthreads, schedule="static"):
            lo = c * CHUNK
            hi = lo + CHUNK
            if hi > n:
                hi = n
            _pack_range(&values[0], &mask[0], &out[0], lo, hi, st[c])
    return total


cdef void _expand(const uint8_t *mask, const numeric_t *packed, numeric_t *tmp, Py_ssize_t lo, Py_ssize_t hi,
                  int64_t k) noexcept nogil:
    """tmp[i - lo] = the packed value of entry i where mask[i] is set (anything elsewhere); branchless, ending at
    the chunk's last set entry so that the packed index never passes the chunk's own values."""
    cdef Py_ssize_t i
    hi = _last_set(mask, lo, hi)
    for i in range(lo, hi):
        tmp[i - lo] = packed[k]
        k += mask[i] != 0


cdef void _select(numeric_t *page, const uint8_t *mask, const numeric_t *tmp, Py_ssize_t n, int op) noexcept nogil:
    """page[i] = op(page[i], tmp[i]) where mask[i]: one loop per op, a select per element, so that gcc
    vectorises it."""
    cdef Py_ssize_t i
    cdef numeric_t a, r
    if op == OP_PLUS:
        for i in range(n):
            a = page[i]
            r = op_plus(a, tmp[i])
            page[i] = r if mask[i] else a
    elif op == OP_TIMES:
        for i in range(n):
            a = page[i]
            r = op_times(a, tmp[i])
            page[i] = r if mask[i] else a
    elif op == OP_MIN:
        for i in range(n):
            a = page[i]
            r = op_min(a, tmp[i])
            page[i] = r if mask[i] else a
    elif op == OP_MAX:
        for i in range(n):
            a = page[i]
            r = op_max(a, tmp[i])
            page[i] = r if mask[i] else a
    else:
        for i in range(n):
            a = page[i]
            r = tmp[i]
            page[i] = r if mask[i] else a


cdef void _merge_chunk(numeric_t *page, const uint8_t *mask, const numeric_t *packed, Py_ssize_t lo,
                       Py_ssize_t hi, int64_t k, int op) noexcept nogil:
    cdef numeric_t *tmp = <numeric_t *>malloc(CHUNK * sizeof(numeric_t))
    cdef Py_ssize_t i
    if tmp == NULL:                 # no scratch memory: the same result element by element
        for i in range(lo, hi):
            if mask[i]:
                _select(&page[i], &mask[i], &packed[k], 1, op)
                k += 1
        return
    _expand(mask, packed, tmp, lo, hi, k)
    _select(&page[lo], &mask[lo], tmp, hi - lo, op)
    free(tmp)


def merge_packed(numeric_t[::1] page, const uint8_t[::1] mask, const numeric_t[::1] packed, int op):
    """In place: for the i-th set entry of ``mask`` at position p, ``page[p] = op(page[p], packed[i])``.

    ``packed`` must hold exactly ``count_nonzero(mask)`` entries.
    """
    cdef Py_ssize_t n = page.shape[0], nchunks, c, lo, hi
    cdef int nthreads
    if not valid_op(op):
        raise ValueError(f"unknown op code {op}")
    if mask.shape[0] != n:
        raise ValueError(f"page has {n} entries but mask has {mask.shape[0]}")
    nchunks = (n + CHUNK - 1) // CHUNK
    starts = np.zeros(nchunks + 1, dtype=np.int64)
    cdef int64_t[::1] st = starts
    nthreads = _threads(n)
    _counts(mask, st, nthreads)
    if st[nchunks] != packed.shape[0]:
        raise ValueError(f"mask selects {st[nchunks]} entries but {packed.shape[0]} values were given")
    if packed.shape[0] == 0:
        return None
    with nogil:
        for c in prange(nchunks, num_threads=nthreads, schedule="static"):
            lo = c * CHUNK
            hi = lo + CHUNK
            if hi > n:
                hi = n
            _merge_chunk(&page[0], &mask[0], &packed[0], lo, hi, st[c], op)
    return None

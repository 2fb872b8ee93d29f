"""Compiled delta-merge kernels: merge sparse or masked deltas into 1-D pages with an op.

Every function has a pure-numpy twin with the same API and results in ``mmsb._ref.merge``. Ops are the codes of
``mmsb._ops`` (``OP_ASSIGN``, ``OP_PLUS``, ``OP_TIMES``, ``OP_MIN``, ``OP_MAX``); min/max keep the page value when
the update is NaN (``b < a ? b : a``). Bool arrays are handled as uint8 views; callers map or -> max, and -> min.
"""
import numpy as np

from cython.parallel cimport parallel, prange, threadid
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from mmsb._ext._types cimport (OP_ASSIGN, OP_MAX, OP_MIN, OP_PLUS, OP_TIMES, apply_op, numeric_t, op_max,
                               op_min, op_plus, op_times, valid_op)

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    /* far: into L2 only (prefetcht2), so that many misses can be in flight without holding L1 fill buffers;
       near: into L1 (prefetcht0), shortly before the read-modify-write */
    #define MMSB_PREFETCH_FAR(p) __builtin_prefetch((const void *)(p), 0, 1)
    #define MMSB_PREFETCH_NEAR(p) __builtin_prefetch((const void *)(p), 0, 3)
    #else
    #define MMSB_PREFETCH_FAR(p) ((void)0)
    #define MMSB_PREFETCH_NEAR(p) ((void)0)
    #endif
    #ifdef _OPENMP
    #include <omp.h>
    static int mmsb_merge_claim(int *flags, int p) {
        int old;
        #pragma omp atomic capture
        { old = flags[p]; flags[p] = 1; }
        return old == 0;
    }
    #else
    static int mmsb_merge_claim(int *flags, int p) { if (flags[p]) return 0; flags[p] = 1; return 1; }
    #endif
    """
    void MMSB_PREFETCH_FAR(const void *p) noexcept nogil
    void MMSB_PREFETCH_NEAR(const void *p) noexcept nogil
    int mmsb_merge_claim(int *flags, int p) noexcept nogil

cdef extern from "_threads.h":
    int mmsb_threads() noexcept nogil
    int mmsb_threads_dynamic() noexcept nogil
    void mmsb_threads_spread() noexcept nogil
    void mmsb_threads_set(int max_threads, int cpus, int adapt) noexcept nogil

cdef enum:
    PREFETCH_FAR = 128      # updates ahead, into L2: random updates of a large page are bound by misses in flight
    PREFETCH_NEAR = 16      # updates ahead, into L1
    SCATTER_BLOCK = 4096
    PAR_UPDATES = 1 << 15
    PAR_ELEMENTS = 1 << 16
    MAX_PARTS = 64
    SORTED_SPLIT = 4        # chunks per thread for sorted scatter (taken dynamically: a stalled thread delays less)
    MASK_CHUNK = 1 << 16
    COPY_PIECE = 1 << 20    # bytes per piece of copy_into


cdef inline int _parts() noexcept nogil:
    """Threads for one kernel call: the thread policy's count now for work taken in dynamic chunks
    (mmsb/_ext/_threads.h), at most MAX_PARTS."""
    cdef int p = mmsb_threads_dynamic()
    if p < 1:
        return 1
    return p if p < MAX_PARTS else MAX_PARTS


def set_threads(int max_threads, int cpus, bint adapt=True):
    """Configure the thread policy: at most ``max_threads`` threads (0: OpenMP's default), ``cpus`` on the machine,
    ``adapt``: use fewer while other processes keep the CPUs busy."""
    mmsb_threads_set(max_threads, cpus, adapt)


def threads():
    """The number of threads a parallel kernel of this module would use now."""
    return mmsb_threads()


cdef void _scatter_range(numeric_t *page, const int64_t *index, const numeric_t *values, Py_ssize_t n,
                         int64_t lo, int64_t hi, int op) noexcept nogil:
    """Apply, in order, the updates k in [0, n) whose index lies in [lo, hi).

    Works in blocks: a branchless pass collects the positions that fall in range, then a prefetching pass applies
    them (a data-dependent branch per update would mispredict half of the time).
    """
    cdef Py_ssize_t start, stop, k
    cdef int c, q
    cdef int64_t i
    cdef uint64_t width = <uint64_t>(hi - lo)
    cdef int32_t pos[SCATTER_BLOCK]
    start = 0
    while start < n:
        stop = start + SCATTER_BLOCK
        if stop > n:
            stop = n
        c = 0
        for k in range(start, stop):
            pos[c] = <int32_t>(k - start)
            c += <uint64_t>(index[k] - lo) < width
        if op == OP_PLUS:
            _apply_picked_plus(page, index + start, values + start, pos, c)
        elif op == OP_MIN:
            _apply_picked_min(page, index + start, values + start, pos, c)
        else:
            for q in range(c):
                if q + PREFETCH_FAR < c:
                    MMSB_PREFETCH_FAR(page + index[start + pos[q + PREFETCH_FAR]])
                if q + PREFETCH_NEAR < c:
                    MMSB_PREFETCH_NEAR(page + index[start + pos[q + PREFETCH_NEAR]])
                k = start + pos[q]
                i = index[k]
                page[i] = apply_op(op, page[i], values[k])
        start = stop


cdef inline void _apply_picked_plus(numeric_t *page, const int64_t *index, const numeric_t *values,
                                    const int32_t *pos, int c) noexcept nogil:
    """The picked updates of one block with ⊕ = plus (the op fixed at compile time: no dispatch per update)."""
    cdef int q
    cdef int64_t i
    for q in range(c):
        if q + PREFETCH_FAR < c:
            MMSB_PREFETCH_FAR(page + index[pos[q + PREFETCH_FAR]])
        if q + PREFETCH_NEAR < c:
            MMSB_PREFETCH_NEAR(page + index[pos[q + PREFETCH_NEAR]])
        i = index[pos[q]]
        page[i] = op_plus(page[i], values[pos[q]])


cdef inline void _apply_picked_min(numeric_t *page, const int64_t *index, const numeric_t *values,
                                   const int32_t *pos, int c) noexcept nogil:
    """The picked updates of one block with ⊕ = min."""
    cdef int q
    cdef int64_t i
    for q in range(c):
        if q + PREFETCH_FAR < c:
            MMSB_PREFETCH_FAR(page + index[pos[q + PREFETCH_FAR]])
        if q + PREFETCH_NEAR < c:
            MMSB_PREFETCH_NEAR(page + index[pos[q + PREFETCH_NEAR]])
        i = index[pos[q]]
        page[i] = op_min(page[i], values[pos[q]])


cdef void _scatter_all(numeric_t *page, const int64_t *index, const numeric_t *values, Py_ssize_t start,
                       Py_ssize_t stop, int op) noexcept nogil:
    """Apply the updates k in [start, stop), in order, with no range filter."""
    cdef Py_ssize_t k
    cdef int64_t i
    for k in range(start, stop):
        if k + PREFETCH_FAR < stop:
            MMSB_PREFETCH_FAR(page + index[k + PREFETCH_FAR])
        if k + PREFETCH_NEAR < stop:
            MMSB_PREFETCH_NEAR(page + index[k + PREFETCH_NEAR])
        i = index[k]
        page[i] = apply_op(op, page[i], values[k])


cdef void _scatter_kernel(numeric_t[::1] page, const int64_t[::1] index, const numeric_t[::1] values, int op,
                          bint is_sorted) noexcept nogil:
    cdef Py_ssize_t n = index.shape[0], size = page.shape[0]
    cdef int parts = _parts(), p, t
    cdef Py_ssize_t c, cut, chunks
    cdef Py_ssize_t bounds[MAX_PARTS * SORTED_SPLIT + 1]
    cdef int claimed[MAX_PARTS]
    cdef int j
    cdef int64_t lo, hi
    if n == 0:
        return
    if parts == 1 or n < PAR_UPDATES or size < PAR_ELEMENTS:
        _scatter_all(&page[0], &index[0], &values[0], 0, n, op)
        return
    if is_sorted:
        # contiguous chunks of updates, each cut moved forward to a run boundary so equal indices stay together;
        # several chunks per thread, taken dynamically
        chunks = parts * SORTED_SPLIT
        bounds[0] = 0
        for p in range(1, chunks):
            cut = (n * p) // chunks
            if cut < bounds[p - 1]:
                cut = bounds[p - 1]
            while 0 < cut < n and index[cut] == index[cut - 1]:
                cut += 1
            bounds[p] = cut
        bounds[chunks] = n
        with parallel(num_threads=parts):
            mmsb_threads_spread()
            for c in prange(chunks, schedule='dynamic'):
                _scatter_all(&page[0], &index[0], &values[0], bounds[c], bounds[c + 1], op)
        return
    # the page is cut into one slice per thread; a thread claims a slice (an atomic flag; its own first, then any
    # left), scans all updates and applies, in order, those that fall in it: per-element order is kept and no
    # atomics are needed on the page. Claiming lets one thread do all the work when the other is not scheduled.
    # (More slices than threads would balance better under load, but each slice costs a full scan of the index.)
    for c in range(parts):
        claimed[c] = 0
    with parallel(num_threads=parts):
        mmsb_threads_spread()
        t = threadid()
        for j in range(parts):
            p = (t + j) % parts
            if mmsb_merge_claim(&claimed[0], p):
                lo = (<int64_t>size * p) // parts
                hi = (<int64_t>size * (p + 1)) // parts
                _scatter_range(&page[0], &index[0], &values[0], n, lo, hi, op)


cdef void _masked_range(numeric_t *page, const uint8_t *mask, const numeric_t *values, Py_ssize_t start,
                        Py_ssize_t stop, int op) noexcept nogil:
    """Branchless select per element, one loop per op so that gcc vectorises it."""
    cdef Py_ssize_t i
    cdef numeric_t a, r
    if op == OP_PLUS:
        for i in range(start, stop):
            a = page[i]
            r = op_plus(a, values[i])
            page[i] = r if mask[i] else a
    elif op == OP_TIMES:
        for i in range(start, stop):
            a = page[i]
            r = op_times(a, values[i])
            page[i] = r if mask[i] else a
    elif op == OP_MIN:
        for i in range(start, stop):
            a = page[i]
            r = op_min(a, values[i])
            page[i] = r if mask[i] else a
    elif op == OP_MAX:
        for i in range(start, stop):
            a = page[i]
            r = op_max(a, values[i])
            page[i] = r if mask[i] else a
    else:
        for i in range(start, stop):
            a = page[i]
            r = values[i]
            page[i] = r if mask[i] else a


cdef void _masked_kernel(numeric_t[::1] page, const uint8_t[::1] mask, const numeric_t[::1] values,
                         int op) noexcept nogil:
    cdef Py_ssize_t n = page.shape[0], nchunks, c, start, stop
    cdef int parts = _parts()
    if n == 0:
        return
    if parts == 1 or n < 4 * MASK_CHUNK:
        _masked_range(&page[0], &mask[0], &values[0], 0, n, op)
        return
    nchunks = (n + MASK_CHUNK - 1) // MASK_CHUNK
    with parallel(num_threads=parts):
        mmsb_threads_spread()
        for c in prange(nchunks, schedule='dynamic'):
            start = c * MASK_CHUNK
            stop = start + MASK_CHUNK
            if stop > n:
                stop = n
            _masked_range(&page[0], &mask[0], &values[0], start, stop, op)


cdef inline int64_t _moved(numeric_t a, numeric_t r) noexcept nogil:
    """1 where ``r`` differs from ``a`` (NaN -> NaN and -0.0 <-> +0.0 count as unchanged)."""
    if numeric_t is float or numeric_t is double:
        return (r != a) and not (r != r and a != a)
    return r != a


cdef int64_t _dense_range(numeric_t *page, const numeric_t *values, numeric_t *old, Py_ssize_t start,
                          Py_ssize_t stop, int op) noexcept nogil:
    """Positions [start, stop) of merge_dense; the number that changed."""
    cdef Py_ssize_t i
    cdef int64_t changed = 0
    cdef numeric_t a, r
    if op == OP_ASSIGN:
        for i in range(start, stop):
            a = page[i]
            r = values[i]
            old[i] = a
            page[i] = r
            changed += _moved(a, r)
    else:
        for i in range(start, stop):
            a = page[i]
            r = apply_op(op, a, values[i])
            old[i] = a
            page[i] = r
            changed += _moved(a, r)
    return changed


cdef int64_t _dense_kernel(numeric_t[::1] page, const numeric_t[::1] values, numeric_t[::1] old,
                           int op) noexcept nogil:
    cdef Py_ssize_t n = page.shape[0], nchunks, c, start, stop
    cdef int parts = _parts()
    cdef int64_t changed = 0
    if n == 0:
        return 0
    if parts == 1 or n < 4 * MASK_CHUNK:
        return _dense_range(&page[0], &values[0], &old[0], 0, n, op)
    nchunks = (n + MASK_CHUNK - 1) // MASK_CHUNK
    for c in prange(nchunks, num_threads=parts, schedule='static'):
        mmsb_threads_spread()
        start = c * MASK_CHUNK
        stop = start + MASK_CHUNK
        if stop > n:
            stop = n
        changed += _dense_range(&page[0], &values[0], &old[0], start, stop, op)
    return changed


cdef Py_ssize_t _combine_sorted(int64_t[::1] index, numeric_t[::1] values, int op) noexcept nogil:
    """Fold runs of equal indices in place (in order); returns the number of unique indices."""
    cdef Py_ssize_t n = index.shape[0], k, m = 0
    if n == 0:
        return 0
    for k in range(1, n):
        if index[k] == index[m]:
            values[m] = apply_op(op, values[m], values[k])
        else:
            m += 1
            index[m] = index[k]
            values[m] = values[k]
    return m + 1


cdef int _order(const int64_t[::1] index) noexcept nogil:
    """2 if strictly increasing, 1 if non-decreasing, 0 otherwise."""
    cdef Py_ssize_t k, n = index.shape[0]
    cdef int result = 2
    for k in range(1, n):
        if index[k] < index[k - 1]:
            return 0
        if index[k] == index[k - 1]:
            result = 1
    return result


cdef Py_ssize_t _union(const int64_t[::1] ia, const numeric_t[::1] va, const int64_t[::1] ib,
                       const numeric_t[::1] vb, int64_t[::1] io, numeric_t[::1] vo, int op) noexcept nogil:
    cdef Py_ssize_t na = ia.shape[0], nb = ib.shape[0], a = 0, b = 0, m = 0
    while a < na and b < nb:
        if ia[a] < ib[b]:
            io[m] = ia[a]
            vo[m] = va[a]
            a += 1
        elif ib[b] < ia[a]:
            io[m] = ib[b]
            vo[m] = vb[b]
            b += 1
        else:
            io[m] = ia[a]
            vo[m] = apply_op(op, va[a], vb[b])
            a += 1
            b += 1
        m += 1
    while a < na:
        io[m] = ia[a]
        vo[m] = va[a]
        a += 1
        m += 1
    while b < nb:
        io[m] = ib[b]
        vo[m] = vb[b]
        b += 1
        m += 1
    return m


cdef void _apply_kernel(numeric_t[::1] page, const int64_t[::1] index, const numeric_t[::1] values,
                        numeric_t[::1] old, uint8_t[::1] changed, int op) noexcept nogil:
    cdef Py_ssize_t k, n = index.shape[0]
    cdef int64_t i
    cdef numeric_t a, r
    for k in range(n):
        if k + PREFETCH_FAR < n:
            MMSB_PREFETCH_FAR(&page[0] + index[k + PREFETCH_FAR])
        if k + PREFETCH_NEAR < n:
            MMSB_PREFETCH_NEAR(&page[0] + index[k + PREFETCH_NEAR])
        i = index[k]
        a = page[i]
        r = apply_op(op, a, values[k])
        page[i] = r
        old[k] = a
        if numeric_t is float or numeric_t is double:
            changed[k] = (r != a) and not (r != r and a != a)  # NaN -> NaN is no change
        else:
            changed[k] = r != a


def _scatter(numeric_t[::1] page, const int64_t[::1] index, const numeric_t[::1] values, int op,
             bint is_sorted):
    with nogil:
        _scatter_kernel(page, index, values, op, is_sorted)


def _masked(numeric_t[::1] page, const uint8_t[::1] mask, const numeric_t[::1] values, int op):
    with nogil:
        _masked_kernel(page, mask, values, op)


def _dense(numeric_t[::1] page, const numeric_t[::1] values, numeric_t[::1] old, int op):
    cdef int64_t changed
    with nogil:
        changed = _dense_kernel(page, values, old, op)
    return changed


def _combine(int64_t[::1] index, numeric_t[::1] values, int op):
    cdef Py_ssize_t m
    with nogil:
        m = _combine_sorted(index, values, op)
    return m


def _merge(const int64_t[::1] ia, const numeric_t[::1] va, const int64_t[::1] ib, const numeric_t[::1] vb,
           int64_t[::1] io, numeric_t[::1] vo, int op):
    cdef Py_ssize_t m
    with nogil:
        m = _union(ia, va, ib, vb, io, vo, op)
    return m


def _apply(numeric_t[::1] page, const int64_t[::1] index, const numeric_t[::1] values, numeric_t[::1] old,
           uint8_t[::1] changed, int op):
    with nogil:
        _apply_kernel(page, index, values, old, changed, op)


cdef enum:
    RADIX_BITS = 11         # digit width of the radix sort (2048 buckets: the counts stay in L1)
    RADIX_MIN = 256         # fewer keys than this: numpy's stable argsort


cdef int _radix_sort(const int64_t *keys, Py_ssize_t n, int64_t *out_keys, int64_t *perm) noexcept nogil:
    """Stable LSD radix sort of ``keys[:n]``: ``out_keys`` the keys in order, ``perm`` their positions in ``keys``.

    The keys are offset by their minimum and only the digits of the span are sorted (balanced digits of at most
    RADIX_BITS bits): flat positions of a matrix take 3-4 passes. Returns -1 when out of memory, else 0."""
    cdef Py_ssize_t i, b
    cdef int64_t lo = keys[0], hi = keys[0]
    cdef uint64_t span, d
    cdef int bits = 0, passes, width, shift, ps
    cdef uint64_t mask
    cdef Py_ssize_t counts[1 << RADIX_BITS]
    cdef Py_ssize_t total, c
    for i in range(1, n):
        if keys[i] < lo:
            lo = keys[i]
        elif keys[i] > hi:
            hi = keys[i]
    span = <uint64_t>hi - <uint64_t>lo
    while bits < 64 and (span >> bits) != 0:
        bits += 1
    if bits == 0:
        for i in range(n):
            out_keys[i] = keys[i]
            perm[i] = i
        return 0
    passes = (bits + RADIX_BITS - 1) // RADIX_BITS
    width = (bits + passes - 1) // passes
    mask = (<uint64_t>1 << width) - 1
    cdef uint64_t *ka = <uint64_t *>malloc(n * sizeof(uint64_t))
    cdef uint64_t *kb = <uint64_t *>malloc(n * sizeof(uint64_t))
    cdef int64_t *pb = <int64_t *>malloc(n * sizeof(int64_t))
    cdef uint64_t *ksrc
    cdef uint64_t *kdst
    cdef uint64_t *kt
    cdef int64_t *psrc
    cdef int64_t *pdst
    cdef int64_t *pt
    if ka == NULL or kb == NULL or pb == NULL:
        free(ka)
        free(kb)
        free(pb)
        return -1
    for i in range(n):
        ka[i] = <uint64_t>keys[i] - <uint64_t>lo
        perm[i] = i
    # ping-pong between (ka, perm) and (kb, pb); the last pass lands in perm when the pass count is even
    ksrc, kdst = ka, kb
    if passes % 2:
        psrc, pdst = pb, perm
        for i in range(n):
            pb[i] = i
    else:
        psrc, pdst = perm, pb
    for ps in range(passes):
        shift = ps * width
        memset(counts, 0, sizeof(counts))
        for i in range(n):
            counts[(ksrc[i] >> shift) & mask] += 1
        total = 0
        for b in range(<Py_ssize_t>1 << width):
            c = counts[b]
            counts[b] = total
            total += c
        for i in range(n):
            d = (ksrc[i] >> shift) & mask
            kdst[counts[d]] = ksrc[i]
            pdst[counts[d]] = psrc[i]
            counts[d] += 1
        kt = ksrc
        ksrc = kdst
        kdst = kt
        pt = psrc
        psrc = pdst
        pdst = pt
    for i in range(n):
        out_keys[i] = <int64_t>(ksrc[i] + <uint64_t>lo)
    free(ka)
    free(kb)
    free(pb)
    return 0


def _radix_argsort(const int64_t[::1] index):
    """``(sorted keys, permutation)`` of ``index`` by the stable radix sort (the permutation of a stable argsort)."""
    cdef Py_ssize_t n = index.shape[0]
    out = np.empty(n, dtype=np.int64)
    perm = np.empty(n, dtype=np.int64)
    cdef int64_t[::1] o = out
    cdef int64_t[::1] p = perm
    cdef int status = 0
    if n:
        with nogil:
            status = _radix_sort(&index[0], n, &o[0], &p[0])
    if status:
        raise MemoryError()
    return out, perm


def sort_keys(const int64_t[::1] index):
    """``(sorted keys, permutation)`` of ``index``, the permutation that of a stable argsort.

    When the span of the keys and the count fit 64 bits together (flat positions of a matrix delta do), each key
    becomes ``(key - min) << b | position`` and numpy's (vectorised) sort of those integers is stable by
    construction; otherwise the radix sort."""
    cdef Py_ssize_t n = index.shape[0], i
    cdef int64_t lo, hi
    cdef uint64_t span
    cdef int bits = 0, pbits = 0
    if n == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    lo = hi = index[0]
    for i in range(1, n):
        if index[i] < lo:
            lo = index[i]
        elif index[i] > hi:
            hi = index[i]
    span = <uint64_t>hi - <uint64_t>lo
    while bits < 64 and (span >> bits) != 0:
        bits += 1
    while pbits < 64 and (<uint64_t>(n - 1) >> pbits) != 0:
        pbits += 1
    if bits + pbits > 63:
        return _radix_argsort(index)
    packed = np.empty(n, dtype=np.int64)
    cdef int64_t[::1] pk = packed
    with nogil:
        for i in range(n):
            pk[i] = <int64_t>(((<uint64_t>index[i] - <uint64_t>lo) << pbits) | <uint64_t>i)
    packed.sort()
    out = np.empty(n, dtype=np.int64)
    perm = np.empty(n, dtype=np.int64)
    cdef int64_t[::1] o = out
    cdef int64_t[::1] p = perm
    cdef uint64_t low = (<uint64_t>1 << pbits) - 1
    with nogil:
        for i in range(n):
            o[i] = <int64_t>((<uint64_t>pk[i] >> pbits) + <uint64_t>lo)
            p[i] = <int64_t>(<uint64_t>pk[i] & low)
    return out, perm


def _is_ordered(const int64_t[::1] index):
    return _order(index)


cdef object _check_op(object op):
    cdef int code
    try:
        code = op
    except (TypeError, OverflowError):
        raise ValueError(f"unknown op {op!r}") from None
    if not valid_op(code):
        raise ValueError(f"unknown op {op!r}")
    return code


cdef object _as_kernel(object arr, str name):
    """A 1-D C-contiguous numeric array, bool viewed as uint8."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, not {type(arr).__name__}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        arr = arr.view(np.uint8)
    return arr


cdef object _as_index(object index, str name):
    index = np.asarray(index)
    if index.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {index.shape}")
    if index.dtype != np.int64:
        if index.size and index.dtype.kind not in "iu":
            raise ValueError(f"{name} must be an integer array, got {index.dtype}")
        index = index.astype(np.int64)
    return np.ascontiguousarray(index)


cdef object _same_dtype(object a, object b, str na, str nb):
    if a.dtype != b.dtype:
        raise ValueError(f"{nb} dtype {b.dtype} does not match {na} dtype {a.dtype}")


def scatter(page, index, values, op, is_sorted=False):
    """In place, in input order: ``page[index[k]] = op(page[index[k]], values[k])``.

    ``page`` is 1-D C-contiguous, ``index`` int64 within range (checked by the caller), ``values`` of page's dtype
    and index's length. ``OP_ASSIGN``: the last occurrence wins. ``is_sorted=True`` promises a non-decreasing index.
    Runs without the GIL; large unsorted deltas are split by page slice across OpenMP threads.
    """
    cdef int code = _check_op(op)
    page = _as_kernel(page, "page")
    index = _as_index(index, "index")
    values = _as_kernel(np.asarray(values), "values")
    if index.shape[0] != values.shape[0]:
        raise ValueError(f"index has {index.shape[0]} entries but values has {values.shape[0]}")
    _same_dtype(page, values, "page", "values")
    if index.shape[0] == 0:
        return None
    _scatter(page, index, np.ascontiguousarray(values), code, bool(is_sorted))
    return None


def masked_merge(page, mask, values, op):
    """In place: where ``mask[i]``, ``page[i] = op(page[i], values[i])``.

    All arrays 1-D of one length; ``mask`` is uint8 or bool, ``values`` of page's dtype.
    """
    cdef int code = _check_op(op)
    page = _as_kernel(page, "page")
    mask = _as_kernel(np.asarray(mask), "mask")
    values = _as_kernel(np.asarray(values), "values")
    if mask.dtype != np.uint8:
        raise ValueError(f"mask must be bool or uint8, got {mask.dtype}")
    if mask.shape[0] != page.shape[0] or values.shape[0] != page.shape[0]:
        raise ValueError(f"page, mask and values lengths differ: {page.shape[0]}, {mask.shape[0]}, "
                         f"{values.shape[0]}")
    _same_dtype(page, values, "page", "values")
    if page.shape[0] == 0:
        return None
    _masked(page, np.ascontiguousarray(mask), np.ascontiguousarray(values), code)
    return None


def merge_dense(page, values, op, old_out):
    """In place, every position: ``page[i] = op(page[i], values[i])`` (``OP_ASSIGN``: ``values[i]``), the value
    before going to ``old_out[i]``; returns the number of positions whose value changed (NaN -> NaN and
    -0.0 <-> +0.0 count as unchanged). ``page``, ``values`` and ``old_out`` are 1-D of one length and dtype and
    share no memory. Large pages run in chunks on OpenMP threads.
    """
    cdef int code = _check_op(op)
    page = _as_kernel(page, "page")
    values = _as_kernel(np.asarray(values), "values")
    old_out = _as_kernel(old_out, "old_out")
    if values.shape[0] != page.shape[0] or old_out.shape[0] != page.shape[0]:
        raise ValueError(f"page, values and old_out lengths differ: {page.shape[0]}, {values.shape[0]}, "
                         f"{old_out.shape[0]}")
    _same_dtype(page, values, "page", "values")
    _same_dtype(page, old_out, "page", "old_out")
    if not (page.flags.writeable and old_out.flags.writeable):
        raise ValueError("page and old_out must be writable")
    if np.may_share_memory(page, values) or np.may_share_memory(page, old_out) \
            or np.may_share_memory(values, old_out):
        raise ValueError("page, values and old_out must not share memory")
    if page.shape[0] == 0:
        return 0
    return _dense(page, np.ascontiguousarray(values), old_out, code)


cdef void _copy_bytes(uint8_t *dst, const uint8_t *src, Py_ssize_t n) noexcept nogil:
    """memcpy of ``n`` bytes, in COPY_PIECE pieces on the thread policy's threads when there are several."""
    cdef Py_ssize_t npieces, c, start, stop
    cdef int parts = _parts()
    if parts == 1 or n < 4 * COPY_PIECE:
        memcpy(dst, src, n)
        return
    npieces = (n + COPY_PIECE - 1) // COPY_PIECE
    for c in prange(npieces, num_threads=parts, schedule='static'):
        mmsb_threads_spread()
        start = c * COPY_PIECE
        stop = start + COPY_PIECE
        if stop > n:
            stop = n
        memcpy(dst + start, src + start, stop - start)


def copy_into(dst, src):
    """``dst[...] = src`` for two C-contiguous arrays of one dtype and size that share no memory (any dtype
    without Python objects: the bytes are copied). Large arrays are copied in pieces on OpenMP threads: the copy
    of a page that a checkpoint takes while commits wait."""
    cdef const uint8_t[::1] s
    cdef uint8_t[::1] d
    _check_copy(dst, src)
    if dst.nbytes == 0:
        return
    d = dst.reshape(-1).view(np.uint8)
    s = src.reshape(-1).view(np.uint8)
    with nogil:
        _copy_bytes(&d[0], &s[0], d.shape[0])


cdef _check_copy(object dst, object src):
    for arr, name in ((dst, "dst"), (src, "src")):
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"{name} must be a numpy array, not {type(arr).__name__}")
        if not arr.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
    if dst.dtype != src.dtype:
        raise ValueError(f"dst and src dtypes differ: {dst.dtype} and {src.dtype}")
    if dst.dtype.hasobject:
        raise TypeError(f"cannot copy the bytes of dtype {dst.dtype}: it holds Python objects")
    if dst.size != src.size:
        raise ValueError(f"dst and src sizes differ: {dst.size} and {src.size}")
    if not dst.flags.writeable:
        raise ValueError("dst must be writable")
    if np.may_share_memory(dst, src):
        raise ValueError("dst and src must not share memory")


def normalize(index, values, op):
    """Return new ``(index_out, values_out)``: sorted unique int64 indices, duplicates folded with op in input
    order (``OP_ASSIGN``: last occurrence wins). The inputs are not modified."""
    cdef int code = _check_op(op)
    cdef int order
    index = _as_index(index, "index")
    values = np.asarray(values)
    dtype = values.dtype
    values = _as_kernel(values, "values")
    if index.shape[0] != values.shape[0]:
        raise ValueError(f"index has {index.shape[0]} entries but values has {values.shape[0]}")
    order = _is_ordered(index) if index.shape[0] else 2
    if order == 2:
        return index.copy(), values.copy().view(dtype)
    if order == 1:
        idx = index.copy()
        val = np.array(values, copy=True, order="C")
    else:
        if index.shape[0] >= RADIX_MIN:
            idx, perm = sort_keys(index)
        else:
            perm = np.argsort(index, kind="stable")
            idx = index[perm]
        val = values[perm]
    m = _combine(idx, val, code)
    if m < idx.shape[0]:
        idx = idx[:m].copy()
        val = val[:m].copy()
    return idx, val.view(dtype)


def merge_sparse(idx_a, val_a, idx_b, val_b, op):
    """Sorted union of two normalized sparse deltas; where both hold an index the value is ``op(a, b)``
    (``OP_ASSIGN``: b wins). Returns new ``(index, values)``."""
    cdef int code = _check_op(op)
    idx_a = _as_index(idx_a, "idx_a")
    idx_b = _as_index(idx_b, "idx_b")
    val_a = np.asarray(val_a)
    dtype = val_a.dtype
    val_a = _as_kernel(val_a, "val_a")
    val_b = _as_kernel(np.asarray(val_b), "val_b")
    if idx_a.shape[0] != val_a.shape[0]:
        raise ValueError(f"idx_a has {idx_a.shape[0]} entries but val_a has {val_a.shape[0]}")
    if idx_b.shape[0] != val_b.shape[0]:
        raise ValueError(f"idx_b has {idx_b.shape[0]} entries but val_b has {val_b.shape[0]}")
    _same_dtype(val_a, val_b, "val_a", "val_b")
    n = idx_a.shape[0] + idx_b.shape[0]
    io = np.empty(n, dtype=np.int64)
    vo = np.empty(n, dtype=val_a.dtype)
    if n == 0:
        return io, vo.view(dtype)
    m = _merge(idx_a, np.ascontiguousarray(val_a), idx_b, np.ascontiguousarray(val_b), io, vo, code)
    if m < n:
        io = io[:m].copy()
        vo = vo[:m].copy()
    return io, vo.view(dtype)


def apply_normalized(page, index, values, op):
    """Apply a normalized sparse delta in place and return ``(old_values, changed)``.

    ``old_values`` is ``page[index]`` before the update; ``changed`` (uint8) is 1 where the new value differs
    from the old one (NaN -> NaN counts as unchanged).
    """
    cdef int code = _check_op(op)
    dtype = page.dtype if isinstance(page, np.ndarray) else None
    page = _as_kernel(page, "page")
    index = _as_index(index, "index")
    values = _as_kernel(np.asarray(values), "values")
    if index.shape[0] != values.shape[0]:
        raise ValueError(f"index has {index.shape[0]} entries but values has {values.shape[0]}")
    _same_dtype(page, values, "page", "values")
    n = index.shape[0]
    old = np.empty(n, dtype=page.dtype)
    changed = np.zeros(n, dtype=np.uint8)
    if n:
        _apply(page, index, np.ascontiguousarray(values), old, changed, code)
    return old.view(dtype), changed

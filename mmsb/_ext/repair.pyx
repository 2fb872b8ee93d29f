# cython: language_level=3
"""Compiled matrix-page kernels: entry lookup in a CSR with free slots, and the repair of a closure after entries
of its matrix changed, in one call per change set.

Every function has a pure-numpy twin with the same API and results in ``mmsb._ref.repair``; both take their argument
checks from ``mmsb._validate``. A semiring is given by its op codes (those of ``mmsb._ops``; ⊕ min or max for a
closure) and its ``zero``; bool arrays are handled as uint8 views (or -> max, and -> min).

``repair`` is the dynamic shortest-path repair of Ramalingam and Reps over any idempotent ⊕ with its own order: the
values that were tight through a worsened entry (``y[i] == old ⊗ y[j]``), and transitively those tight through
them, are reset to their source value, pulled from their neighbours, and the closure then converges from them and
from the heads of the improved entries. Its scratch (a bitmap and an old-value array, both the length of ``y``) is
the caller's, kept between calls, so that a small change touches no more memory than its region.

The entry points that run on every commit (``update``, ``repair``, ``reach``) check their arrays with C-level
tests and hand the kernels raw pointers through one typed dispatch (no typed memoryviews, whose per-argument
set-up dominated a small change's cost); arrays they cannot take as they are go through ``mmsb._validate`` first.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memmove, memset
from cython.parallel cimport prange

from mmsb._ext._heap cimport IdList, better, heap_pop, heap_push, push_id
from mmsb._ext._types cimport OP_MAX, apply_op, index_t, numeric_t

from mmsb._validate import assign_args, locate_args, reach_args, reach_build_args, repair_args, update_args

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define MMSB_REPAIR_PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 1)
    #else
    #define MMSB_REPAIR_PREFETCH(p) ((void)0)
    #endif
    """
    void MMSB_REPAIR_PREFETCH(const void *p) noexcept nogil

cdef extern from "_threads.h":
    int mmsb_threads() noexcept nogil
    int mmsb_threads_dynamic() noexcept nogil
    void mmsb_threads_spread() noexcept nogil
    void mmsb_threads_set(int max_threads, int cpus, int adapt) noexcept nogil

cnp.import_array()

__all__ = ["assign", "locate", "reach", "reach_build", "repair", "set_parallel_min", "set_threads", "threads",
           "update"]

cdef enum:
    AHEAD_ROW = 32      # update: keys ahead whose indptr entry is prefetched ...
    AHEAD_ENTRY = 12    # ... and keys ahead whose row's first index and value are (their indptr line is in by then)

cdef enum:
    ST_OK = 0
    ST_BAD_INDEX = 1
    ST_NO_MEMORY = 2
    ST_NO_CONVERGENCE = 3
    ST_TOO_LARGE = 4
    ST_NAN = 5

# bits of the caller's mark array (all clear between calls)
cdef enum:
    M_REGION = 1        # in the repair region
    M_TOUCHED = 2       # its value before the call is in old_out
    M_QUEUED = 4        # in the FIFO worklist
    M_FRONT = 8         # in the initial frontier

# element types of the value arrays (numeric_t), as _elem gives them; -1: none the kernels take
cdef enum:
    E_I8 = 0
    E_I16 = 1
    E_I32 = 2
    E_I64 = 3
    E_U8 = 4
    E_U16 = 5
    E_U32 = 6
    E_U64 = 7
    E_F32 = 8
    E_F64 = 9

cdef object _GENERIC = np.generic


cdef inline int _elem_of(int typenum, Py_ssize_t size) noexcept:
    """The element type of numpy type ``typenum`` of ``size`` bytes (bool as uint8), -1 when the kernels have none
    for it."""
    cdef int lg = 0 if size == 1 else 1 if size == 2 else 2 if size == 4 else 3 if size == 8 else -1
    if lg < 0:
        return -1
    if typenum == cnp.NPY_DOUBLE:
        return E_F64
    if typenum == cnp.NPY_FLOAT:
        return E_F32
    if typenum == cnp.NPY_BOOL:
        return E_U8
    if cnp.PyTypeNum_ISSIGNED(typenum):
        return E_I8 + lg
    if cnp.PyTypeNum_ISUNSIGNED(typenum):
        return E_U8 + lg
    return -1


cdef inline Py_ssize_t _elem_size(int elem) noexcept:
    """Bytes of an element of type ``elem``."""
    return 1 << (elem & 3) if elem < E_F32 else 4 if elem == E_F32 else 8


cdef inline int _elem(cnp.ndarray a) noexcept:
    """The element type of ``a`` (see ``_elem_of``)."""
    return _elem_of(cnp.PyArray_TYPE(a), cnp.PyArray_ITEMSIZE(a))


cdef inline bint _arr(object a, int elem, bint writable=False) noexcept:
    """``a`` is a 1-D, C-contiguous, aligned, native-order ndarray of element type ``elem`` (-1: any the kernels
    take), writable when asked: what the kernels read through a raw pointer. C-level checks only (no attribute
    look-ups: a call pays for them on every commit)."""
    if not cnp.PyArray_Check(a):
        return False
    cdef cnp.ndarray arr = <cnp.ndarray>a
    cdef int e = _elem(arr)
    return (cnp.PyArray_NDIM(arr) == 1 and cnp.PyArray_IS_C_CONTIGUOUS(arr) and cnp.PyArray_ISALIGNED(arr)
            and cnp.PyArray_ISNOTSWAPPED(arr) and e >= 0 and (elem < 0 or e == elem)
            and (not writable or cnp.PyArray_ISWRITEABLE(arr)))


cdef inline bint _index_arr(object a) noexcept:
    """``a`` qualifies for ``_arr`` as int32 or int64 (a CSR's column indices)."""
    return _arr(a, E_I32) or _arr(a, E_I64)


cdef inline Py_ssize_t _len(object a) noexcept:
    return cnp.PyArray_DIM(<cnp.ndarray>a, 0)


cdef inline void *_ptr(object a) noexcept:
    return cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline bint _csr_ok(object indptr, object indices, object data, Py_ssize_t nrows) noexcept:
    """The O(1) CSR checks on arrays that passed ``_arr``: nrows + 1 row pointers from 0 to len(indices) ==
    len(data)."""
    cdef const int64_t *p = <const int64_t *>_ptr(indptr)
    return (nrows >= 0 and _len(indptr) == nrows + 1 and _len(indices) == _len(data) and p[0] == 0
            and p[nrows] == _len(indices))


cdef inline void _release(void *p) noexcept nogil:
    free(p)


cdef inline object _empty(Py_ssize_t size, int typenum):
    cdef cnp.npy_intp dim = size
    return cnp.PyArray_EMPTY(1, &dim, typenum, 0)


cdef inline object _zeros(Py_ssize_t size, int typenum):
    cdef cnp.npy_intp dim = size
    return cnp.PyArray_ZEROS(1, &dim, typenum, 0)


cdef bint _scalar_into(object x, int elem, void *out):
    """Copy the numpy scalar ``x`` into ``out`` when its element type is ``elem``; False (nothing written) when
    it is another type or not a numpy scalar (the checked path then converts it)."""
    cdef cnp.dtype d
    if not isinstance(x, _GENERIC):
        return False
    d = cnp.PyArray_DescrFromScalar(x)
    if _elem_of(d.type_num, d.itemsize) != elem:
        return False
    cnp.PyArray_ScalarAsCtype(x, out)
    return True


cdef bint _fast_consts(object zero, object free, int elem, char *out):
    """``[zero, free]`` (``free`` None: zero twice) written into ``out`` (16 bytes) in the element type ``elem``
    when both are numpy scalars of that type (bool for uint8); False otherwise."""
    return (_scalar_into(zero, elem, out)
            and _scalar_into(zero if free is None else free, elem, out + _elem_size(elem)))


#: the status codes ``repair`` returns (the others raise)
OK = ST_OK
TOO_LARGE = ST_TOO_LARGE
NAN_ENTRY = ST_NAN


cdef inline bint _float_nan(numeric_t v) noexcept nogil:
    if numeric_t is float or numeric_t is double:
        return v != v
    else:
        return False


# ----------------------------------------------------------------------------------------------------- locate

cdef inline int64_t _find(const int64_t *indptr, const index_t *indices, const numeric_t *data, int64_t r,
                          int64_t c, bint has_free, numeric_t free_val) noexcept nogil:
    """Position of the entry (r, c): a live one first, else the last free slot of that column; -1 when none."""
    cdef int64_t p, spare = -1
    for p in range(indptr[r], indptr[r + 1]):
        if indices[p] == c:
            if has_free and data[p] == free_val:
                spare = p
            else:
                return p
    return spare


cdef int _locate_kernel(const int64_t *indptr, const index_t *indices, const numeric_t *data, int64_t nrows,
                        int64_t nnz, const int64_t *rows, const int64_t *cols, int64_t count, bint has_free,
                        numeric_t free_val, numeric_t zero, numeric_t *out, int64_t *pos) noexcept nogil:
    cdef int64_t k, r, p
    for k in range(count):
        r = rows[k]
        if <uint64_t>r >= <uint64_t>nrows or indptr[r] < 0 or indptr[r + 1] > nnz or indptr[r] > indptr[r + 1]:
            return ST_BAD_INDEX
        p = _find(indptr, indices, data, r, cols[k], has_free, free_val)
        pos[k] = p
        out[k] = data[p] if p >= 0 else zero
    return ST_OK


def _locate_typed(const int64_t[::1] indptr, const index_t[::1] indices, const numeric_t[::1] data,
                  const int64_t[::1] rows, const int64_t[::1] cols, bint has_free, const numeric_t[::1] consts,
                  numeric_t[::1] out, int64_t[::1] pos):
    """Typed entry point of locate (``consts`` = [zero, free])."""
    cdef int status
    if rows.shape[0] == 0:
        return
    with nogil:
        status = _locate_kernel(&indptr[0], &indices[0] if indices.shape[0] else NULL,
                                &data[0] if data.shape[0] else NULL, indptr.shape[0] - 1, indices.shape[0],
                                &rows[0], &cols[0], rows.shape[0], has_free, consts[1], consts[0], &out[0],
                                &pos[0])
    _raise_status(status)


def locate(indptr, indices, data, rows, cols, zero, free=None):
    """``(values, positions)`` of the entries ``(rows[k], cols[k])`` of a CSR matrix.

    A position indexes ``indices`` / ``data``; -1 where row ``rows[k]`` has no slot of column ``cols[k]`` (the
    value is then ``zero``). ``free``: the value of a free slot (None: every slot is an entry); a live entry wins
    over a free slot of the same column, and of several free slots the last one is given.
    """
    indptr, indices, data, rows, cols, consts, has_free = locate_args(indptr, indices, data, rows, cols, zero, free)
    out = np.empty(rows.size, dtype=data.dtype)
    pos = np.empty(rows.size, dtype=np.int64)
    _locate_typed(indptr, indices, data, rows, cols, has_free, consts, out, pos)
    return out, pos


cdef int _assign_find(const int64_t *indptr, index_t *indices, numeric_t *data, int64_t nrows, int64_t ncols,
                      int64_t nnz, const int64_t *rows, const int64_t *cols, const numeric_t *vals,
                      const uint8_t *present, int64_t *pos, bint located, int64_t lo, int64_t hi, bint has_free,
                      numeric_t free_val, uint8_t *miss, int64_t *nmiss) noexcept nogil:
    """The first two passes of ``_assign_kernel`` over the changes [lo, hi): their entries found (or their
    positions checked), then set or freed where found."""
    cdef int64_t k, r, p, s
    for k in range(lo, hi):
        if not located:
            if k + AHEAD_ROW < hi and <uint64_t>rows[k + AHEAD_ROW] < <uint64_t>nrows:
                MMSB_REPAIR_PREFETCH(&indptr[rows[k + AHEAD_ROW]])
            if k + AHEAD_ENTRY < hi and <uint64_t>rows[k + AHEAD_ENTRY] < <uint64_t>nrows:
                s = indptr[rows[k + AHEAD_ENTRY]]
                if 0 <= s < nnz:
                    MMSB_REPAIR_PREFETCH(&indices[s])
                    MMSB_REPAIR_PREFETCH(&data[s])
        r = rows[k]
        if <uint64_t>r >= <uint64_t>nrows or indptr[r] < 0 or indptr[r + 1] > nnz or indptr[r] > indptr[r + 1] \
                or <uint64_t>cols[k] >= <uint64_t>ncols:
            return ST_BAD_INDEX
        if located:
            if pos[k] < -1 or pos[k] >= nnz:
                return ST_BAD_INDEX
        else:
            pos[k] = _find(indptr, indices, data, r, cols[k], has_free, free_val)
    for k in range(lo, hi):
        if k + AHEAD_ENTRY < hi and 0 <= pos[k + AHEAD_ENTRY] < nnz:
            MMSB_REPAIR_PREFETCH(&data[pos[k + AHEAD_ENTRY]])
        p = pos[k]
        miss[k] = 0
        if p < 0:
            continue
        if present[k]:
            data[p] = vals[k]
        elif has_free:
            data[p] = free_val
        else:
            miss[k] = 1
            nmiss[0] += 1
    return ST_OK


cdef void _assign_insert(const int64_t *indptr, index_t *indices, numeric_t *data, const int64_t *rows,
                         const int64_t *cols, const numeric_t *vals, const uint8_t *present, const int64_t *pos,
                         int64_t lo, int64_t hi, bint has_free, numeric_t free_val, uint8_t *miss, int64_t *nmiss,
                         bint *claimed) noexcept nogil:
    """The last pass of ``_assign_kernel`` over the changes [lo, hi): insertions into free slots, in order."""
    cdef int64_t k, r, p, q
    for k in range(lo, hi):
        if pos[k] >= 0 or not present[k]:
            continue
        r = rows[k]
        p = -1
        if has_free:
            for q in range(indptr[r], indptr[r + 1]):
                if data[q] == free_val:
                    p = q
                    break
        if p >= 0:
            indices[p] = <index_t>cols[k]
            data[p] = vals[k]
            claimed[0] = True
        else:
            miss[k] = 1
            nmiss[0] += 1


cdef int _assign_kernel(const int64_t *indptr, index_t *indices, numeric_t *data, int64_t nrows, int64_t ncols,
                        int64_t nnz, const int64_t *rows, const int64_t *cols, const numeric_t *vals, const uint8_t *present,
                        int64_t *pos, bint located, int64_t count, bint has_free, numeric_t free_val,
                        uint8_t *miss, int64_t *nmiss, bint *claimed) noexcept nogil:
    """Entries found first (set, or freed), then insertions into free slots (those just freed included). The rows
    are taken in the caller's order (random in a transpose): the lines of the entries ahead are prefetched."""
    cdef int status = _assign_find(indptr, indices, data, nrows, ncols, nnz, rows, cols, vals, present, pos, located,
                                   0, count, has_free, free_val, miss, nmiss)
    if status != ST_OK:
        return status
    _assign_insert(indptr, indices, data, rows, cols, vals, present, pos, 0, count, has_free, free_val, miss, nmiss,
                   claimed)
    return ST_OK


def _assign_typed(const int64_t[::1] indptr, index_t[::1] indices, numeric_t[::1] data, int64_t ncols,
                  const int64_t[::1] rows,
                  const int64_t[::1] cols, const numeric_t[::1] vals, const uint8_t[::1] present, int64_t[::1] pos,
                  bint located, bint has_free, const numeric_t[::1] consts, uint8_t[::1] miss):
    """Typed entry point of assign (``consts`` = [zero, free])."""
    cdef int status
    cdef int64_t nmiss = 0
    cdef bint claimed = False
    if rows.shape[0] == 0:
        return 0, False
    with nogil:
        status = _assign_kernel(&indptr[0], &indices[0] if indices.shape[0] else NULL,
                                &data[0] if data.shape[0] else NULL, indptr.shape[0] - 1, ncols, indices.shape[0],
                                &rows[0], &cols[0], &vals[0], &present[0], &pos[0], located, rows.shape[0],
                                has_free, consts[1], &miss[0], &nmiss, &claimed)
    _raise_status(status)
    return nmiss, claimed


def assign(indptr, indices, data, ncols, rows, cols, vals, present, pos=None, free=None):
    """Set ``A[rows[k], cols[k]] = vals[k]`` (A has ``ncols`` columns) where ``present[k]``, remove the entry elsewhere, in place.

    The pairs are unique; ``pos`` are their positions from ``locate`` (None: located here). With free slots
    (``free`` not None) a removed entry becomes a free slot (its value ``free``) and an insertion takes the first
    free slot of its row; without, every removal and insertion is left undone. Returns ``(misses, claimed,
    positions, miss)``: how many changes were left undone (``miss`` marks them: an insertion into a row with no
    free slot, or a structural change without free slots), whether a free slot was taken (the row's column order
    may be broken), and the positions found (-1: none).
    """
    indptr, indices, data, rows, cols, vals, present, pos, located, consts, has_free = assign_args(
        indptr, indices, data, rows, cols, vals, present, pos, free)
    miss = np.empty(rows.size, dtype=np.uint8)
    nmiss, claimed = _assign_typed(indptr, indices, data, ncols, rows, cols, vals, present, pos, located, has_free,
                                   consts, miss)
    return nmiss, claimed, pos, miss.view(np.bool_)


cdef struct UpdPart:
    # one part of an update call: its changes [lo, hi) (whole rows of A), those that changed written from lo on
    int64_t lo
    int64_t hi
    int64_t m               # changes kept
    int64_t nmiss           # changes left undone (assign)
    int status
    bint unsorted           # a key not above the one before it (the call then runs as one part)
    bint in_place           # every kept change was set in place
    bint claimed            # a free slot was taken (assign)
    double stats[5]         # as the call's


cdef enum:
    UPD_MAX_PARTS = 256     # parts of a threaded update (several per thread, taken dynamically)
    UPD_SPLIT = 4           # parts per thread

cdef int64_t _update_par_min = 1 << 14


def set_threads(int max_threads, int cpus, bint adapt=True):
    """Configure the thread policy: at most ``max_threads`` threads (0: OpenMP's default), ``cpus`` on the machine,
    ``adapt``: use fewer while other processes keep the CPUs busy (see mmsb/_ext/_threads.h)."""
    mmsb_threads_set(max_threads, cpus, adapt)


def threads():
    """The number of threads a parallel kernel of this module would use now."""
    return mmsb_threads()


def set_parallel_min(int64_t n):
    """The number of keys from which ``update`` runs on several threads (default 2**14); returns the previous one.
    The result does not depend on it (tests lower it to run the threaded path on small inputs)."""
    global _update_par_min
    cdef int64_t was = _update_par_min
    _update_par_min = n if n > 1 else 1
    return was


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


cdef void _update_rows(int64_t nrows, int64_t ncols, const int64_t *keys, int64_t *rows, UpdPart *part) noexcept nogil:
    """The keys of ``part`` in range (else its status says so), their rows into ``rows``, whether they increase."""
    cdef int64_t k, total = nrows * ncols
    cdef double inv = 1.0 / <double>ncols if ncols > 0 else 0.0
    for k in range(part.lo, part.hi):
        if <uint64_t>keys[k] >= <uint64_t>total:
            part.status = ST_BAD_INDEX
            return
        rows[k] = _row_of(keys[k], ncols, inv)
        if k > 0 and keys[k] <= keys[k - 1]:
            part.unsorted = True


cdef void _update_part(const int64_t *indptr, index_t *indices, numeric_t *data, int64_t ncols, int64_t nnz,
                       const int64_t *indptr_t, int64_t nnz_t, bint has_t, const int64_t *keys,
                       const numeric_t *vals, int op, numeric_t zero, bint has_free, numeric_t free_val, int64_t *idx,
                       int64_t *rows, int64_t *cols, numeric_t *old, numeric_t *new, int64_t *pos, uint8_t *present,
                       UpdPart *part) noexcept nogil:
    """One pass over the keys of ``part`` (their rows known): locate, merge (assign or ``op``), keep what changed
    (written from ``part.lo`` on, ``part.m`` of them) and set a changed value of a stored entry in place at once;
    insertions and removals are left to the assign kernel. Then the transpose's rows of the kept changes checked.
    A malformed row stops it with ``part.status`` set (what it set in place is then taken back by the caller)."""
    cdef int64_t k, r, c, p, s, m = part.lo, hi = part.hi
    cdef numeric_t o, v
    cdef double *stats = part.stats
    part.in_place = True
    for k in range(part.lo, hi):
        if k + AHEAD_ROW < hi:
            MMSB_REPAIR_PREFETCH(&indptr[rows[k + AHEAD_ROW]])
        if k + AHEAD_ENTRY < hi:
            s = indptr[rows[k + AHEAD_ENTRY]]
            if 0 <= s < nnz:
                MMSB_REPAIR_PREFETCH(&indices[s])
                MMSB_REPAIR_PREFETCH(&data[s])
        r = rows[k]
        c = keys[k] - r * ncols
        if indptr[r] < 0 or indptr[r + 1] > nnz or indptr[r] > indptr[r + 1]:
            part.status = ST_BAD_INDEX
            break
        p = _find(indptr, indices, data, r, c, has_free, free_val)
        o = data[p] if p >= 0 else zero
        v = vals[k] if op < 0 else apply_op(op, o, vals[k])
        if v == o or (_float_nan(v) and _float_nan(o)):
            continue
        idx[m] = keys[k]
        rows[m] = r
        cols[m] = c
        old[m] = o
        new[m] = v
        pos[m] = p
        present[m] = v != zero
        if p >= 0 and present[m]:
            data[p] = v
        else:
            part.in_place = False
        if present[m] and not (has_free and v == free_val):
            stats[4] += 1
            if _float_nan(v):
                stats[2] = 1
            else:
                if <double>v < stats[0]:
                    stats[0] = <double>v
                if <double>v > stats[1]:
                    stats[1] = <double>v
                if numeric_t is float or numeric_t is double:
                    if v - v != 0:
                        stats[3] = 1
        m += 1
    part.m = m - part.lo
    if part.status == ST_OK and has_t:      # (the transpose's rows checked too: A changes only when both can)
        for k in range(part.lo, m):
            c = cols[k]
            if indptr_t[c] < 0 or indptr_t[c + 1] > nnz_t or indptr_t[c] > indptr_t[c + 1]:
                part.status = ST_BAD_INDEX
                break


cdef void _cut_rows(const int64_t *rows, int64_t count, UpdPart *parts, int nparts) noexcept nogil:
    """Cut [0, count) into ``nparts`` parts of about equal size, each ending at a change of ``rows``."""
    cdef int t
    cdef int64_t b, prev = 0
    for t in range(nparts):
        parts[t].lo = prev
        b = count * (t + 1) // nparts
        if b < prev:
            b = prev
        while 0 < b < count and rows[b] == rows[b - 1]:
            b += 1
        parts[t].hi = b
        prev = b


cdef void _even(int64_t count, UpdPart *parts, int nparts) noexcept nogil:
    """Cut [0, count) into ``nparts`` parts of about equal size; their counters cleared."""
    cdef int t
    memset(parts, 0, nparts * sizeof(UpdPart))
    for t in range(nparts):
        parts[t].lo = count * t // nparts
        parts[t].hi = count * (t + 1) // nparts


cdef int _update_kernel(const int64_t *indptr, index_t *indices, numeric_t *data, int64_t nrows, int64_t ncols,
                        int64_t nnz, const int64_t *indptr_t, index_t *indices_t, numeric_t *data_t, int64_t nnz_t,
                        bint has_t, const int64_t *keys, const numeric_t *vals, int64_t count, int op,
                        numeric_t zero, bint has_free, numeric_t free_val, int64_t *idx, int64_t *rows,
                        int64_t *cols, numeric_t *old, numeric_t *new, int64_t *pos, uint8_t *present,
                        int64_t *pos_t, uint8_t *miss, uint8_t *miss_t, int64_t *moved, int64_t *counts,
                        double *stats) noexcept nogil:
    """locate, merge (assign or ``op``), keep what changed, set in A and in its transpose; stats: the range of the
    stored values and whether one is NaN / not finite.

    From ``_update_par_min`` increasing keys on, the passes run on OpenMP threads: the keys are cut into parts at
    row boundaries of A, so that no two threads touch a row of A, and the parts' outputs are put together in key
    order (as one thread writes them); in the transpose (rows shared between parts) the entries are found and set
    in parallel (each change has its own slot) and insertions into free slots are made in order by one thread."""
    cdef int64_t k, m = 0, off
    cdef int status = ST_OK, t, nparts = 1, nthreads = 1
    cdef bint claimed = False, in_place = True, unsorted = False
    cdef UpdPart one
    cdef UpdPart *parts = &one
    cdef size_t es = sizeof(numeric_t)
    if nrows < 0 or ncols < 0:
        return ST_BAD_INDEX
    if count >= _update_par_min and count >= 2:
        nthreads = mmsb_threads_dynamic()
        if nthreads > 1:
            nparts = nthreads * UPD_SPLIT
            if nparts > UPD_MAX_PARTS:
                nparts = UPD_MAX_PARTS
            if nparts > count:
                nparts = <int>count
            parts = <UpdPart *>malloc(nparts * sizeof(UpdPart))
            if parts == NULL:
                parts = &one
                nparts = 1
    # the rows first (rows[m] is written only for m <= k, after rows[k] was read): the main pass prefetches the
    # CSR lines of the keys ahead of it, so that a large change keeps many misses in flight
    _even(count, parts, nparts)
    if nparts > 1:
        for t in prange(nparts, num_threads=nthreads, schedule="dynamic", chunksize=1):
            mmsb_threads_spread()
            _update_rows(nrows, ncols, keys, rows, &parts[t])
    else:
        _update_rows(nrows, ncols, keys, rows, parts)
    for t in range(nparts):
        if parts[t].status != ST_OK:
            status = parts[t].status
        unsorted = unsorted or parts[t].unsorted
    if status == ST_OK:
        if unsorted and nparts > 1:         # keys out of order: one part (rows are not cut apart then)
            nparts = 1
            _even(count, parts, 1)
        elif nparts > 1:
            _cut_rows(rows, count, parts, nparts)
        for t in range(nparts):
            parts[t].stats[0], parts[t].stats[1] = stats[0], stats[1]
            parts[t].stats[2], parts[t].stats[3], parts[t].stats[4] = 0, 0, 0
        if nparts > 1:
            for t in prange(nparts, num_threads=nthreads, schedule="dynamic", chunksize=1):
                mmsb_threads_spread()
                _update_part(indptr, indices, data, ncols, nnz, indptr_t, nnz_t, has_t, keys, vals, op, zero,
                             has_free, free_val, idx, rows, cols, old, new, pos, present, &parts[t])
        else:
            _update_part(indptr, indices, data, ncols, nnz, indptr_t, nnz_t, has_t, keys, vals, op, zero, has_free,
                         free_val, idx, rows, cols, old, new, pos, present, parts)
        for t in range(nparts):
            if parts[t].status != ST_OK:
                status = parts[t].status
        if status != ST_OK:                 # nothing changes: the values set in place are taken back, newest first
            for t in range(nparts - 1, -1, -1):
                for k in range(parts[t].lo + parts[t].m - 1, parts[t].lo - 1, -1):
                    if pos[k] >= 0 and present[k]:
                        data[pos[k]] = old[k]
    if status != ST_OK:
        if parts != &one:
            free(parts)
        moved[0] = 0
        return status
    off = 0                                 # the parts' kept changes one after another, in key order
    for t in range(nparts):
        if off != parts[t].lo and parts[t].m:
            k = parts[t].lo
            memmove(&idx[off], &idx[k], parts[t].m * sizeof(int64_t))
            memmove(&rows[off], &rows[k], parts[t].m * sizeof(int64_t))
            memmove(&cols[off], &cols[k], parts[t].m * sizeof(int64_t))
            memmove(&pos[off], &pos[k], parts[t].m * sizeof(int64_t))
            memmove(&old[off], &old[k], parts[t].m * es)
            memmove(&new[off], &new[k], parts[t].m * es)
            memmove(&present[off], &present[k], parts[t].m * sizeof(uint8_t))
        parts[t].lo = off
        parts[t].hi = off + parts[t].m
        off += parts[t].m
        in_place = in_place and parts[t].in_place
        if parts[t].stats[0] < stats[0]:
            stats[0] = parts[t].stats[0]
        if parts[t].stats[1] > stats[1]:
            stats[1] = parts[t].stats[1]
        if parts[t].stats[2]:
            stats[2] = 1
        if parts[t].stats[3]:
            stats[3] = 1
        stats[4] += parts[t].stats[4]
    m = off
    moved[0] = m
    if not in_place:
        # the rest (its positions were found in valid rows above; the values set in place are set again); the
        # parts keep whole rows of A, so each makes its own insertions
        if nparts > 1:
            for t in prange(nparts, num_threads=nthreads, schedule="dynamic", chunksize=1):
                mmsb_threads_spread()
                parts[t].status = _assign_find(indptr, indices, data, nrows, ncols, nnz, rows, cols, new, present,
                                               pos, True, parts[t].lo, parts[t].hi, has_free, free_val, miss,
                                               &parts[t].nmiss)
                if parts[t].status == ST_OK:
                    _assign_insert(indptr, indices, data, rows, cols, new, present, pos, parts[t].lo, parts[t].hi,
                                   has_free, free_val, miss, &parts[t].nmiss, &parts[t].claimed)
            for t in range(nparts):
                if parts[t].status != ST_OK:
                    status = parts[t].status
                counts[0] += parts[t].nmiss
                claimed = claimed or parts[t].claimed
        else:
            status = _assign_kernel(indptr, indices, data, nrows, ncols, nnz, rows, cols, new, present, pos, True, m,
                                    has_free, free_val, miss, &counts[0], &claimed)
    if status != ST_OK:
        for k in range(m - 1, -1, -1):      # nothing changes: the values set in place are taken back, newest first
            if pos[k] >= 0 and present[k]:
                data[pos[k]] = old[k]
        moved[0] = 0
    elif m > 0:
        counts[1] = claimed
        if not has_t:
            for k in range(m):
                pos_t[k] = -1
        else:
            claimed = False
            if nparts > 1 and m >= 2:
                if nparts > m:
                    nparts = <int>m
                _even(m, parts, nparts)
                for t in prange(nparts, num_threads=nthreads, schedule="dynamic", chunksize=1):
                    mmsb_threads_spread()
                    parts[t].status = _assign_find(indptr_t, indices_t, data_t, ncols, nrows, nnz_t, cols, rows, new,
                                                   present, pos_t, False, parts[t].lo, parts[t].hi, has_free,
                                                   free_val, miss_t, &parts[t].nmiss)
                for t in range(nparts):
                    if parts[t].status != ST_OK:
                        status = parts[t].status
                    counts[2] += parts[t].nmiss
                if status == ST_OK:         # insertions in order: they share the transpose's rows
                    _assign_insert(indptr_t, indices_t, data_t, cols, rows, new, present, pos_t, 0, m, has_free,
                                   free_val, miss_t, &counts[2], &claimed)
            else:
                status = _assign_kernel(indptr_t, indices_t, data_t, ncols, nrows, nnz_t, cols, rows, new, present,
                                        pos_t, False, m, has_free, free_val, miss_t, &counts[2], &claimed)
            counts[3] = claimed
    if parts != &one:
        free(parts)
    return status


cdef struct UpdateCall:
    # A and its transpose (has_t), the entries, the merge
    const int64_t *indptr
    void *indices
    void *data
    int64_t nrows
    int64_t ncols
    int64_t nnz
    const int64_t *indptr_t
    void *indices_t
    void *data_t
    int64_t nnz_t
    bint has_t
    const int64_t *keys
    const void *vals
    int64_t count
    int op
    const void *consts          # [zero, free] in the element type
    bint has_free
    # out: the entries that changed (capacity count), the counts, the stats (see update)
    int64_t *idx
    int64_t *rows
    int64_t *cols
    void *old
    void *new
    int64_t *pos
    uint8_t *present
    int64_t *pos_t
    uint8_t *miss
    uint8_t *miss_t
    int64_t moved
    int64_t counts[4]
    double stats[5]


cdef int _update_call(numeric_t *elem, index_t *width, UpdateCall *a) noexcept nogil:
    """_update_kernel on the call's arrays, typed (``elem`` and ``width`` only pick the types)."""
    cdef const numeric_t *consts = <const numeric_t *>a.consts
    return _update_kernel(a.indptr, <index_t *>a.indices, <numeric_t *>a.data, a.nrows, a.ncols, a.nnz, a.indptr_t,
                          <index_t *>a.indices_t, <numeric_t *>a.data_t, a.nnz_t, a.has_t, a.keys,
                          <const numeric_t *>a.vals, a.count, a.op, consts[0], a.has_free, consts[1], a.idx, a.rows,
                          a.cols, <numeric_t *>a.old, <numeric_t *>a.new, a.pos, a.present, a.pos_t, a.miss,
                          a.miss_t, &a.moved, a.counts, a.stats)


def update(indptr, indices, data, ncols, keys, vals, op, zero, free=None, indptr_t=None, indices_t=None,
           data_t=None):
    """Merge the entries ``keys`` (flat positions ``row * ncols + col``, unique) of a CSR matrix A with ``vals``
    (``op`` -1: assign, else the kernel op of ⊕), in place in A and in its transpose when given.

    A value equal to ``zero`` removes the entry (see ``assign``: ``free`` is the value of A's free slots, None
    when it has none). Returns None when no entry changes, else ``(idx, rows, cols, old, new, present, pos, pos_t,
    miss, miss_t, misses, claimed, misses_t, claimed_t, stats)``: the entries that changed (flat, row, column),
    their values before and after (in the dtype of ``data``: bool stays bool), ``new != zero``, their positions in A before the change (-1: none) and in the
    transpose, the changes left undone in A and in the transpose and their counts (see ``assign``), whether a
    free slot was taken in each, and ``(lo, hi, any NaN, any ±inf, count)`` of the stored new values (lo and hi
    over those not NaN: inf and -inf when none).

    Raises ``ValueError`` with A and its transpose unchanged on a key out of range, on a malformed row of A or of
    the transpose that a change touches (all checked before anything is written), and on a transpose whose
    dtypes differ from A's (the two are changed by one typed kernel: see ``mmsb.csr.index_dtype``).

    From :func:`set_parallel_min` increasing keys on (2**14 by default) the work runs on OpenMP threads (the thread
    policy of mmsb/_ext/_threads.h, :func:`set_threads`), in parts cut at row boundaries of A; the results are
    those of one thread, bit for bit and in the same order.
    """
    cdef UpdateCall a
    cdef int status, elem, typenum
    cdef bint wide, fast = False
    cdef Py_ssize_t count, m
    cdef char cbuf[16]
    if not 0 <= ncols < 1 << 62:
        raise ValueError(f"ncols must lie in [0, 2**62), got {ncols}")
    has_t = indptr_t is not None
    consts = None
    typenum = cnp.PyArray_TYPE(<cnp.ndarray>data) if cnp.PyArray_Check(data) else cnp.NPY_NOTYPE
    if (_arr(indptr, E_I64) and _index_arr(indices) and _arr(data, -1, True) and cnp.PyArray_ISWRITEABLE(indices)
            and _arr(keys, E_I64) and _arr(vals, _elem(data)) and _len(keys) == _len(vals)
            and (op == -1 or 0 <= op <= 3) and _csr_ok(indptr, indices, data, _len(indptr) - 1)):
        nrows = _len(indptr) - 1
        if not has_t or (_arr(indptr_t, E_I64) and _arr(indices_t, _elem(indices), True)
                         and _arr(data_t, _elem(data), True) and _csr_ok(indptr_t, indices_t, data_t, ncols)):
            fast = _fast_consts(zero, free, _elem(<cnp.ndarray>data), cbuf)
    if fast:
        has_free = free is not None
        if not has_t:
            indptr_t, indices_t, data_t = indptr, indices, data
    else:
        (indptr, indices, data, indptr_t, indices_t, data_t, has_t, keys, vals, nrows, consts,
         has_free) = update_args(indptr, indices, data, ncols, keys, vals, op, zero, free, indptr_t, indices_t,
                                 data_t)
    count = _len(keys)
    if count == 0:
        return None
    elem = _elem(data)
    wide = cnp.PyArray_ITEMSIZE(<cnp.ndarray>indices) == 8
    idx, rows, cols = _empty(count, cnp.NPY_INT64), _empty(count, cnp.NPY_INT64), _empty(count, cnp.NPY_INT64)
    pos, pos_t = _empty(count, cnp.NPY_INT64), _empty(count, cnp.NPY_INT64)
    old, new = _empty(count, typenum), _empty(count, typenum)
    present, miss, miss_t = _zeros(count, cnp.NPY_BOOL), _zeros(count, cnp.NPY_BOOL), _zeros(count, cnp.NPY_BOOL)
    a.indptr, a.indices, a.data = <const int64_t *>_ptr(indptr), _ptr(indices), _ptr(data)
    a.nrows, a.ncols, a.nnz = nrows, ncols, _len(indices)
    a.indptr_t, a.indices_t, a.data_t = <const int64_t *>_ptr(indptr_t), _ptr(indices_t), _ptr(data_t)
    a.nnz_t, a.has_t = _len(indices_t) if has_t else 0, has_t
    a.keys, a.vals, a.count, a.op = <const int64_t *>_ptr(keys), _ptr(vals), count, op
    a.consts, a.has_free = <void *>cbuf if fast else _ptr(consts), has_free
    a.idx, a.rows, a.cols = <int64_t *>_ptr(idx), <int64_t *>_ptr(rows), <int64_t *>_ptr(cols)
    a.old, a.new, a.pos, a.pos_t = _ptr(old), _ptr(new), <int64_t *>_ptr(pos), <int64_t *>_ptr(pos_t)
    a.present, a.miss, a.miss_t = <uint8_t *>_ptr(present), <uint8_t *>_ptr(miss), <uint8_t *>_ptr(miss_t)
    a.moved = 0
    memset(a.counts, 0, sizeof(a.counts))
    a.stats[0], a.stats[1], a.stats[2], a.stats[3], a.stats[4] = np.inf, -np.inf, 0.0, 0.0, 0.0
    with nogil:
        status = _dispatch(K_UPDATE, elem, wide, &a)
    _raise_status(status)
    m = a.moved
    if m == 0:
        return None
    if m < count:
        idx, rows, cols, pos, pos_t = idx[:m], rows[:m], cols[:m], pos[:m], pos_t[:m]
        old, new, present, miss, miss_t = old[:m], new[:m], present[:m], miss[:m], miss_t[:m]
    return (idx, rows, cols, old, new, present, pos, pos_t, miss, miss_t, int(a.counts[0]), bool(a.counts[1]),
            int(a.counts[2]), bool(a.counts[3]),
            (float(a.stats[0]), float(a.stats[1]), bool(a.stats[2]), bool(a.stats[3]), int(a.stats[4])))


# ----------------------------------------------------------------------------------------------------- repair

cdef struct Queue:
    int64_t *ptr
    Py_ssize_t head
    Py_ssize_t size
    Py_ssize_t cap


cdef int _queue_push(Queue *q, int64_t value) noexcept nogil:
    """Append to the circular FIFO (grown by doubling); -1 when out of memory."""
    cdef Py_ssize_t cap, k
    cdef int64_t *p
    if q.size == q.cap:
        cap = q.cap * 2 if q.cap else 256
        p = <int64_t *>malloc(cap * sizeof(int64_t))
        if p == NULL:
            return -1
        for k in range(q.size):
            p[k] = q.ptr[(q.head + k) % q.cap]
        free(q.ptr)
        q.ptr = p
        q.head = 0
        q.cap = cap
    q.ptr[(q.head + q.size) % q.cap] = value
    q.size += 1
    return 0


cdef inline int _touch(numeric_t *y, numeric_t *old_out, uint8_t *mark, IdList *touched, int64_t i) noexcept nogil:
    """Record y[i]'s value before the call (once); -1 when out of memory (mark[i] then left as it was)."""
    if mark[i] & M_TOUCHED:
        return 0
    if push_id(touched, i):
        return -1
    mark[i] |= M_TOUCHED
    old_out[i] = y[i]
    return 0


cdef int _converge(const int64_t *indptr_t, const index_t *indices_t, const numeric_t *data_t, int64_t nnz,
                   numeric_t *y, int64_t n, const IdList *front, int add_op, int mul_op, numeric_t zero,
                   uint8_t *mark, numeric_t *old_out, IdList *touched) noexcept nogil:
    """Semi-naive closure from ``front``: a binary heap (Dijkstra's order) while every improvement is no better
    than the value being pushed, then a FIFO worklist capped at n + 1 rounds (as ``spmv.closure``); one loop,
    the worklist it pops from switching once."""
    cdef bint maxfirst = add_op == OP_MAX
    cdef numeric_t *hkeys = NULL
    cdef int64_t *hids = NULL
    cdef Py_ssize_t hsize = 0, hcap = 0, h
    cdef Queue q
    cdef int64_t in_round = 0, rounds = 0
    cdef int64_t r, j, k, i, ks, ke
    cdef numeric_t v, cur, new
    cdef bint ordered = True, from_heap
    cdef int status = ST_OK
    q.ptr = NULL
    q.head = q.size = q.cap = 0
    for r in range(front.size):
        j = front.ptr[r]
        if y[j] != zero and heap_push(&hkeys, &hids, &hsize, &hcap, y[j], j, maxfirst):
            status = ST_NO_MEMORY
            break
    while status == ST_OK:
        if ordered:                                 # Dijkstra's order, while it holds
            if not hsize:
                break
            j = hids[0]
            v = hkeys[0]
            heap_pop(hkeys, hids, &hsize, maxfirst)
            if v != y[j]:
                continue
        else:
            if hkeys != NULL:                       # the order broke: the heap's live entries join the FIFO
                for h in range(hsize):
                    j = hids[h]
                    if hkeys[h] == y[j] and not (mark[j] & M_QUEUED):
                        if _queue_push(&q, j):
                            status = ST_NO_MEMORY
                            break
                        mark[j] |= M_QUEUED
                free(hkeys)
                free(hids)
                hkeys = NULL
                hids = NULL
                hsize = 0
                if status != ST_OK:
                    break
            if not q.size:
                break
            if in_round == 0:
                rounds += 1
                if rounds > n + 1:
                    status = ST_NO_CONVERGENCE
                    break
                in_round = q.size
            j = q.ptr[q.head]
            q.head = q.head + 1 if q.head + 1 < q.cap else 0
            q.size -= 1
            in_round -= 1
            mark[j] &= ~M_QUEUED
            v = y[j]
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
            if <uint64_t>i >= <uint64_t>n:
                status = ST_BAD_INDEX
                break
            cur = y[i]
            new = apply_op(add_op, cur, apply_op(mul_op, data_t[k], v))
            if new == cur:
                continue
            if _touch(y, old_out, mark, touched, i):
                status = ST_NO_MEMORY
                break
            y[i] = new
            if from_heap:
                if heap_push(&hkeys, &hids, &hsize, &hcap, new, i, maxfirst):
                    status = ST_NO_MEMORY
                    break
                if better(new, v, maxfirst):
                    ordered = False
            elif not (mark[i] & M_QUEUED):
                if _queue_push(&q, i):
                    status = ST_NO_MEMORY
                    break
                mark[i] |= M_QUEUED
    free(hkeys)
    free(hids)
    free(q.ptr)
    return status


cdef void _sort_ids(int64_t *a, int64_t *tmp, Py_ssize_t count, int64_t n) noexcept nogil:
    """Sort ids in [0, n) ascending: insertion sort when few, else an LSD radix sort (11-bit digits) via tmp."""
    cdef Py_ssize_t i, j, k
    cdef int64_t v, shift
    cdef int64_t counts[2048]
    cdef int64_t *src = a
    cdef int64_t *dst = tmp
    cdef int64_t *sw
    if count <= 32:
        for i in range(1, count):
            v = a[i]
            j = i - 1
            while j >= 0 and a[j] > v:
                a[j + 1] = a[j]
                j -= 1
            a[j + 1] = v
        return
    shift = 0
    while shift == 0 or (n - 1) >> shift:
        memset(counts, 0, sizeof(counts))
        for i in range(count):
            counts[(src[i] >> shift) & 2047] += 1
        j = 0
        for k in range(2048):
            v = counts[k]
            counts[k] = j
            j += v
        for i in range(count):
            k = (src[i] >> shift) & 2047
            dst[counts[k]] = src[i]
            counts[k] += 1
        sw = src
        src = dst
        dst = sw
        shift += 11
    if src != a:
        for i in range(count):
            a[i] = src[i]


cdef int _repair_kernel(const int64_t *indptr, const index_t *indices, const numeric_t *data,
                        int64_t nnz, const int64_t *indptr_t, const index_t *indices_t, const numeric_t *data_t,
                        int64_t nnz_t, numeric_t *y, const numeric_t *src, int64_t n, const int64_t *keys,
                        const numeric_t *old, int64_t count, int add_op, int mul_op, numeric_t zero,
                        bint has_free, numeric_t free_val, int64_t limit, uint8_t *mark, numeric_t *old_out,
                        IdList *region, IdList *front, IdList *touched) noexcept nogil:
    """The repair on validated arguments (see ``repair``); region, front and touched come back filled."""
    cdef bint maxfirst = add_op == OP_MAX
    cdef bint worse_tight = False, better
    cdef int64_t k, r, c, p, j, i, ks, ke
    cdef Py_ssize_t q
    cdef numeric_t w, nw, yj
    cdef numeric_t *pulled
    # 1. the changed entries: their new weight, improved or not, tight under the old weight or not
    for k in range(count):
        if <uint64_t>keys[k] >= <uint64_t>(n * n):
            return ST_BAD_INDEX
        r = keys[k] // n
        c = keys[k] - r * n
        if indptr[r] < 0 or indptr[r + 1] > nnz or indptr[r] > indptr[r + 1]:
            return ST_BAD_INDEX
        p = _find(indptr, indices, data, r, c, has_free, free_val)
        nw = data[p] if p >= 0 else zero
        if _float_nan(nw):
            return ST_NAN
        w = old[k]
        if apply_op(add_op, w, nw) == nw:              # improved (or equal): push from its head
            if not (mark[c] & M_FRONT):
                if push_id(front, c):
                    return ST_NO_MEMORY
                mark[c] |= M_FRONT
            better = True
        else:
            better = False
        yj = y[c]
        if yj != zero and w != zero and apply_op(mul_op, w, yj) == y[r]:
            worse_tight = worse_tight or not better
            if not (mark[r] & M_REGION):
                if push_id(region, r):
                    return ST_NO_MEMORY
                mark[r] |= M_REGION
    if not worse_tight:                                # no value depended on a worsened entry
        for q in range(region.size):
            mark[region.ptr[q]] &= ~M_REGION
        region.size = 0
    # 2. the region: every value tight through a region member, transitively (under the new weights)
    q = 0
    while q < region.size:
        if limit >= 0 and region.size > limit:
            return ST_TOO_LARGE
        j = region.ptr[q]
        q += 1
        yj = y[j]
        if yj == zero:
            continue
        ks = indptr_t[j]
        ke = indptr_t[j + 1]
        if ks < 0 or ke > nnz_t or ks > ke:
            return ST_BAD_INDEX
        for p in range(ks, ke):
            i = indices_t[p]
            if <uint64_t>i >= <uint64_t>n:
                return ST_BAD_INDEX
            if mark[i] & M_REGION:
                continue
            w = data_t[p]
            if w != zero and apply_op(mul_op, w, yj) == y[i]:
                if push_id(region, i):
                    return ST_NO_MEMORY
                mark[i] |= M_REGION
    if limit >= 0 and region.size > limit:
        return ST_TOO_LARGE
    if region.size == 0:
        return _converge(indptr_t, indices_t, data_t, nnz_t, y, n, front, add_op, mul_op, zero, mark, old_out,
                         touched)
    # 3. reset the region to its sources, then pull every member from its neighbours (all read after the reset)
    pulled = <numeric_t *>malloc(<size_t>region.size * sizeof(numeric_t)) if region.size > 0 else NULL
    if pulled == NULL:
        return ST_NO_MEMORY
    for q in range(region.size):
        j = region.ptr[q]
        if _touch(y, old_out, mark, touched, j):
            free(pulled)
            return ST_NO_MEMORY
        y[j] = src[j]
    for q in range(region.size):
        j = region.ptr[q]
        w = zero
        if indptr[j] < 0 or indptr[j + 1] > nnz or indptr[j] > indptr[j + 1]:
            free(pulled)
            return ST_BAD_INDEX
        for p in range(indptr[j], indptr[j + 1]):
            i = indices[p]
            if <uint64_t>i >= <uint64_t>n:
                free(pulled)
                return ST_BAD_INDEX
            yj = y[i]
            if yj != zero:
                w = apply_op(add_op, w, apply_op(mul_op, data[p], yj))
        pulled[q] = w
    for q in range(region.size):
        j = region.ptr[q]
        y[j] = apply_op(add_op, y[j], pulled[q])
        if not (mark[j] & M_FRONT):
            if push_id(front, j):
                free(pulled)
                return ST_NO_MEMORY
            mark[j] |= M_FRONT
    free(pulled)
    # 4. converge from the region and the heads of the improved entries
    return _converge(indptr_t, indices_t, data_t, nnz_t, y, n, front, add_op, mul_op, zero, mark, old_out,
                     touched)


cdef struct RepairCall:
    # A, its transpose, the closure, the changed entries, the semiring, the scratch (see repair)
    const int64_t *indptr
    const void *indices
    const void *data
    int64_t nnz
    const int64_t *indptr_t
    const void *indices_t
    const void *data_t
    int64_t nnz_t
    void *y
    const void *src
    int64_t n
    const int64_t *keys
    const void *old
    int64_t count
    int add_op
    int mul_op
    const void *consts          # [zero, free] in the element type
    bint has_free
    int64_t limit
    uint8_t *mark
    void *old_out
    # out: the positions of y that changed (sorted, in touched.ptr[:moved]), their values before (olds, malloc'd),
    # the region's size, whether a new value is NaN or ±inf
    IdList touched
    void *olds
    int64_t moved
    int64_t nregion
    bint nonfinite


cdef int _repair_call(numeric_t *elem, index_t *width, RepairCall *a) noexcept nogil:
    """The repair on the call's arrays, typed (``elem`` and ``width`` only pick the types); the marks are left
    clear, the changed positions sorted and compacted in ``a.touched`` with their old values in ``a.olds``."""
    cdef IdList region, front
    cdef const numeric_t *consts = <const numeric_t *>a.consts
    cdef numeric_t *y = <numeric_t *>a.y
    cdef numeric_t *old_out = <numeric_t *>a.old_out
    cdef numeric_t *olds = NULL
    cdef int64_t *tmp = NULL
    cdef numeric_t u, v
    cdef Py_ssize_t q, t, moved = 0
    cdef int64_t i
    cdef int status
    region.ptr = front.ptr = NULL
    region.size = front.size = region.cap = front.cap = 0
    status = _repair_kernel(a.indptr, <const index_t *>a.indices, <const numeric_t *>a.data, a.nnz, a.indptr_t,
                            <const index_t *>a.indices_t, <const numeric_t *>a.data_t, a.nnz_t, y,
                            <const numeric_t *>a.src, a.n, a.keys, <const numeric_t *>a.old, a.count, a.add_op,
                            a.mul_op, consts[0], a.has_free, consts[1], a.limit, a.mark, old_out, &region, &front,
                            &a.touched)
    t = a.touched.size
    for q in range(region.size):
        a.mark[region.ptr[q]] = 0
    for q in range(front.size):
        a.mark[front.ptr[q]] = 0
    for q in range(t):
        a.mark[a.touched.ptr[q]] = 0
    a.nregion = region.size
    free(region.ptr)
    free(front.ptr)
    if status != ST_OK or t == 0:
        return status
    tmp = <int64_t *>malloc(<size_t>t * sizeof(int64_t))
    olds = <numeric_t *>malloc(<size_t>t * sizeof(numeric_t))
    if tmp == NULL or olds == NULL:
        free(tmp)
        free(olds)
        return ST_NO_MEMORY
    _sort_ids(a.touched.ptr, tmp, t, a.n)
    free(tmp)
    for q in range(t):
        i = a.touched.ptr[q]
        u = y[i]
        v = old_out[i]
        if u != v and not (_float_nan(u) and _float_nan(v)):
            a.touched.ptr[moved] = i
            olds[moved] = v
            moved += 1
            if numeric_t is float or numeric_t is double:
                if u - u != 0:
                    a.nonfinite = True
    a.olds = olds
    a.moved = moved
    return ST_OK


def repair(indptr, indices, data, indptr_t, indices_t, data_t, y, src, keys, old, add_op, mul_op, zero,
           free=None, limit=-1, mark=None, old_out=None):
    """Repair the closure ``y = src ⊕ A ⊗ y`` (⊕ min or max) after the entries ``keys`` of A changed.

    ``(indptr, indices, data)`` is A (n x n) in CSR form, already holding the new entries, and
    ``(indptr_t, indices_t, data_t)`` its transpose; ``y`` holds the closure under the old entries and is updated
    in place; ``src`` the sources. ``keys`` are the flat positions ``row * n + col`` of the changed entries (unique)
    and ``old`` their values before (``zero`` where absent); ``free`` the value of A's free slots (None: none).

    The values tight through an entry under its old value (``y[r] == old ⊗ y[c]``, ``y[c] != zero``), when one
    of those entries got worse, and then every value tight through a value already in that region, are reset to
    ``src``, pulled from their neighbours, and the closure converges from them and from the heads ``c`` of the
    entries that improved. ``mark`` (uint8, length n, all zero, left all zero, also when the call raises) and
    ``old_out`` (like ``y``) are scratch, kept by the caller (allocated here when None).

    Returns ``(status, idx, old_values, region_size, nonfinite)``: ``status`` is ``OK``, with the sorted
    positions of ``y`` that changed, their values before (in ``y``'s dtype: bool stays bool) and whether a new one is NaN or ±inf; ``TOO_LARGE`` (the
    region would exceed ``limit`` values, -1: no limit), or ``NAN_ENTRY`` (a changed entry is NaN now), both with
    ``y`` untouched and ``idx`` None. Raises ``ValueError("closure does not converge")`` after more than n + 1
    FIFO rounds (``y`` then partly updated).
    """
    cdef RepairCall a
    cdef int status, elem = -1
    cdef int typenum = cnp.PyArray_TYPE(<cnp.ndarray>y) if cnp.PyArray_Check(y) else cnp.NPY_NOTYPE
    cdef bint wide, fast = False
    cdef Py_ssize_t n
    cdef char cbuf[16]
    consts = None
    if _arr(y, -1, True):
        elem = _elem(<cnp.ndarray>y)
        n = _len(y)
        if (_arr(indptr, E_I64) and _arr(indptr_t, E_I64) and _index_arr(indices)
                and _arr(indices_t, _elem(<cnp.ndarray>indices)) and _arr(data, elem) and _arr(data_t, elem)
                and _arr(src, elem) and _arr(keys, E_I64) and _arr(old, elem) and _arr(mark, E_U8, True)
                and _arr(old_out, elem, True) and (add_op == 2 or add_op == 3) and 0 <= mul_op <= 3
                and _len(src) == n and _len(mark) == n and _len(old_out) == n and _len(old) == _len(keys)
                and _csr_ok(indptr, indices, data, n) and _csr_ok(indptr_t, indices_t, data_t, n)):
            fast = _fast_consts(zero, free, elem, cbuf)
    if fast:
        has_free = free is not None
    else:
        (indptr, indices, data, indptr_t, indices_t, data_t, y, src, keys, old, consts, has_free, mark,
         old_out) = repair_args(indptr, indices, data, indptr_t, indices_t, data_t, y, src, keys, old, add_op,
                                mul_op, zero, free, mark, old_out)
        if indices.dtype != indices_t.dtype:
            indices, indices_t = indices.astype(np.int64), indices_t.astype(np.int64)
        elem = _elem(<cnp.ndarray>y)
    wide = cnp.PyArray_ITEMSIZE(<cnp.ndarray>indices) == 8
    a.indptr, a.indices, a.data, a.nnz = <const int64_t *>_ptr(indptr), _ptr(indices), _ptr(data), _len(indices)
    a.indptr_t, a.indices_t, a.data_t = <const int64_t *>_ptr(indptr_t), _ptr(indices_t), _ptr(data_t)
    a.nnz_t, a.y, a.src, a.n = _len(indices_t), _ptr(y), _ptr(src), _len(y)
    a.keys, a.old, a.count = <const int64_t *>_ptr(keys), _ptr(old), _len(keys)
    a.add_op, a.mul_op, a.has_free, a.limit = add_op, mul_op, has_free, limit
    a.consts = <void *>cbuf if fast else _ptr(consts)
    a.mark, a.old_out = <uint8_t *>_ptr(mark), _ptr(old_out)
    a.touched.ptr, a.touched.size, a.touched.cap = NULL, 0, 0
    a.olds, a.moved, a.nregion, a.nonfinite = NULL, 0, 0, False
    try:
        with nogil:
            status = _dispatch(K_REPAIR, elem, wide, &a)
        if status in (ST_TOO_LARGE, ST_NAN):
            return status, None, None, 0, False
        _raise_status(status)
        idx = _empty(a.moved, cnp.NPY_INT64)
        olds = _empty(a.moved, typenum)
        if a.moved:
            memcpy(_ptr(idx), a.touched.ptr, <size_t>a.moved * sizeof(int64_t))
            memcpy(_ptr(olds), a.olds, <size_t>a.moved * cnp.PyArray_ITEMSIZE(<cnp.ndarray>y))
    finally:                                # (``free`` is the argument here)
        _release(a.touched.ptr)
        _release(a.olds)
    return ST_OK, idx, olds, a.nregion, a.nonfinite


# ------------------------------------------------------------------------------------------------ typed dispatch

cdef enum:
    K_UPDATE = 0
    K_REPAIR = 1


cdef int _run(int kernel, numeric_t *elem, index_t *width, void *call) noexcept nogil:
    """One kernel's typed entry (``elem`` and ``width`` only pick the types)."""
    if kernel == K_UPDATE:
        return _update_call(elem, width, <UpdateCall *>call)
    return _repair_call(elem, width, <RepairCall *>call)


cdef int _run_elem(int kernel, int elem, index_t *width, void *call) noexcept nogil:
    if elem == E_F64:
        return _run(kernel, <double *>NULL, width, call)
    if elem == E_F32:
        return _run(kernel, <float *>NULL, width, call)
    if elem == E_I64:
        return _run(kernel, <int64_t *>NULL, width, call)
    if elem == E_I32:
        return _run(kernel, <int32_t *>NULL, width, call)
    if elem == E_I16:
        return _run(kernel, <int16_t *>NULL, width, call)
    if elem == E_I8:
        return _run(kernel, <int8_t *>NULL, width, call)
    if elem == E_U64:
        return _run(kernel, <uint64_t *>NULL, width, call)
    if elem == E_U32:
        return _run(kernel, <uint32_t *>NULL, width, call)
    if elem == E_U16:
        return _run(kernel, <uint16_t *>NULL, width, call)
    if elem == E_U8:
        return _run(kernel, <uint8_t *>NULL, width, call)
    return ST_BAD_INDEX


cdef int _dispatch(int kernel, int elem, bint wide, void *call) noexcept nogil:
    """Run ``kernel`` on ``call`` typed for the element type ``elem`` and int64 (``wide``) or int32 indices."""
    if wide:
        return _run_elem(kernel, elem, <int64_t *>NULL, call)
    return _run_elem(kernel, elem, <int32_t *>NULL, call)


cdef object _raise_status(int status):
    """Translate a kernel status into an exception."""
    if status == ST_BAD_INDEX:
        raise ValueError("matrix indices/indptr or entry keys out of range")
    if status == ST_NO_MEMORY:
        raise MemoryError("repair kernel: out of memory")
    if status == ST_NO_CONVERGENCE:
        raise ValueError("closure does not converge")


# ------------------------------------------------------------------------------------------------ reachability

ctypedef fused level_t:
    int32_t
    int64_t

# bits of the caller's mark array in reach (all clear between calls)
cdef enum:
    R_CAND = 1          # queued as a candidate whose level may rise
    R_AFFECTED = 2      # lost every support: its level rises
    R_TOUCHED = 4       # its value before the call is in old_out
    R_PULL = 8          # in the pull list


cdef inline level_t _level_inf(level_t *lev) noexcept nogil:
    """The level of an unreached vertex: the largest value of the level type."""
    if level_t is int32_t:
        return <int32_t>0x7FFFFFFF
    else:
        return <int64_t>0x7FFFFFFFFFFFFFFF


cdef inline bint _row_ok(const int64_t *indptr, int64_t r, int64_t nnz) noexcept nogil:
    return indptr[r] >= 0 and indptr[r + 1] <= nnz and indptr[r] <= indptr[r + 1]


cdef int _reach_touch(uint8_t *y, uint8_t *old_out, uint8_t *mark, IdList *touched, int64_t i) noexcept nogil:
    """Record y[i]'s value before the call (once); -1 when out of memory (mark[i] then left as it was)."""
    if mark[i] & R_TOUCHED:
        return 0
    if push_id(touched, i):
        return -1
    mark[i] |= R_TOUCHED
    old_out[i] = y[i]
    return 0


cdef struct LevelQueue:
    IdList init         # level * n + id of the entries given before the first pop (sorted then)
    IdList gen          # level * n + id of the entries pushed while popping (their levels never decrease)
    Py_ssize_t hi       # next of init
    Py_ssize_t hg       # next of gen
    bint bad            # a key that decodes outside [0, n): the levels given were not levels


cdef int _lq_sort(LevelQueue *lq, int64_t n) noexcept nogil:
    """Sort the initial entries (radix, by level then id) and start popping; -1 when out of memory."""
    cdef Py_ssize_t k
    cdef int64_t top = 0
    cdef int64_t *tmp
    lq.hi = lq.hg = 0
    lq.gen.size = 0
    if lq.init.size <= 1:
        return 0
    for k in range(lq.init.size):
        if lq.init.ptr[k] > top:
            top = lq.init.ptr[k]
    tmp = <int64_t *>malloc(<size_t>lq.init.size * sizeof(int64_t))
    if tmp == NULL:
        return -1
    _sort_ids(lq.init.ptr, tmp, lq.init.size, top + 1)
    free(tmp)
    return 0


cdef inline bint _lq_pop(LevelQueue *lq, int64_t n, int64_t *level, int64_t *v) noexcept nogil:
    """The entry of lowest level (initial ones first on a tie); False when both lists are spent."""
    cdef int64_t key
    if lq.hi < lq.init.size and (lq.hg >= lq.gen.size or lq.init.ptr[lq.hi] // n <= lq.gen.ptr[lq.hg] // n):
        key = lq.init.ptr[lq.hi]
        lq.hi += 1
    elif lq.hg < lq.gen.size:
        key = lq.gen.ptr[lq.hg]
        lq.hg += 1
    else:
        return False
    if key < 0:                     # (a negative level given in: never index with what it decodes to)
        lq.bad = True
        return False
    level[0] = key // n
    v[0] = key - level[0] * n
    return True


cdef int _reach_kernel(const int64_t *indptr, const index_t *indices, const uint8_t *data, int64_t nnz,
                       const int64_t *indptr_t, const index_t *indices_t, const uint8_t *data_t, int64_t nnz_t,
                       const uint8_t *src, level_t *lev, int64_t n, const int64_t *keys, const uint8_t *old,
                       int64_t count, const int64_t *points, int64_t npoints, uint8_t *y, uint8_t *mark,
                       uint8_t *old_out, IdList *cand, IdList *region, IdList *pulls, IdList *touched,
                       LevelQueue *lq) noexcept nogil:
    """The level repair on validated arguments (see ``reach``); the lists come back filled (their marks set).
    Levels are below n, so ``level * n + id`` fits in int64 and orders by level. Only a value whose level goes
    to or from unreached can change, so only those are touched (a finite level lowered leaves y as it was)."""
    cdef level_t INF = _level_inf(lev)
    cdef int64_t k, r, c, p, u, w, v, l, t
    cdef Py_ssize_t q
    cdef bint now, was, supported
    # 1. candidates: heads of removed supporting entries, sources switched off; heads of new entries to pull
    lq.init.size = 0
    for k in range(count):
        if <uint64_t>keys[k] >= <uint64_t>(n * n):
            return ST_BAD_INDEX
        r = keys[k] // n
        c = keys[k] - r * n
        if not _row_ok(indptr, r, nnz):
            return ST_BAD_INDEX
        p = _find(indptr, indices, data, r, c, True, <uint8_t>0)
        now = p >= 0 and data[p] != 0
        was = old[k] != 0
        if now == was:
            continue
        if now:                                        # a new entry c -> r: r may get a lower level
            if not src[r] and not (mark[r] & R_PULL):
                if push_id(pulls, r):
                    return ST_NO_MEMORY
                mark[r] |= R_PULL
        elif lev[c] != INF and lev[r] != INF and lev[r] == lev[c] + 1 and not src[r] \
                and not (mark[r] & R_CAND):
            if push_id(cand, r):
                return ST_NO_MEMORY
            mark[r] |= R_CAND
            if push_id(&lq.init, <int64_t>lev[r] * n + r):
                return ST_NO_MEMORY
    for k in range(npoints):
        v = points[k]
        if <uint64_t>v >= <uint64_t>n:
            return ST_BAD_INDEX
        if src[v]:
            if lev[v] != 0 and not (mark[v] & R_PULL):
                if push_id(pulls, v):
                    return ST_NO_MEMORY
                mark[v] |= R_PULL
        elif lev[v] == 0 and not (mark[v] & R_CAND):
            if push_id(cand, v):
                return ST_NO_MEMORY
            mark[v] |= R_CAND
            if push_id(&lq.init, v):
                return ST_NO_MEMORY
    # 2. in level order: a candidate with no unaffected in-neighbour one level below is affected, and so become
    #    candidates its out-neighbours one level above (their other supports are all decided by then)
    if _lq_sort(lq, n):
        return ST_NO_MEMORY
    lq.bad = False
    while _lq_pop(lq, n, &l, &v):
        if not _row_ok(indptr, v, nnz):
            return ST_BAD_INDEX
        supported = src[v] != 0
        if not supported and l > 0:
            for p in range(indptr[v], indptr[v + 1]):
                u = indices[p]
                if <uint64_t>u >= <uint64_t>n:
                    return ST_BAD_INDEX
                if data[p] != 0 and lev[u] == l - 1 and not (mark[u] & R_AFFECTED):
                    supported = True
                    break
        if supported:
            continue
        mark[v] |= R_AFFECTED
        if push_id(region, v):
            return ST_NO_MEMORY
        if not _row_ok(indptr_t, v, nnz_t):
            return ST_BAD_INDEX
        for p in range(indptr_t[v], indptr_t[v + 1]):
            w = indices_t[p]
            if <uint64_t>w >= <uint64_t>n:
                return ST_BAD_INDEX
            if data_t[p] != 0 and lev[w] == l + 1 and not src[w] and not (mark[w] & R_CAND):
                if push_id(cand, w):
                    return ST_NO_MEMORY
                mark[w] |= R_CAND
                if push_id(&lq.gen, (l + 1) * n + w):
                    return ST_NO_MEMORY
    if lq.bad:
        return ST_BAD_INDEX
    # 3. the affected lose their level; they and the other pull targets take one from their in-neighbours
    for q in range(region.size):
        v = region.ptr[q]
        if _reach_touch(y, old_out, mark, touched, v):
            return ST_NO_MEMORY
        lev[v] = INF
        if not (mark[v] & R_PULL):
            if push_id(pulls, v):
                return ST_NO_MEMORY
            mark[v] |= R_PULL
    lq.init.size = 0
    for q in range(pulls.size):
        v = pulls.ptr[q]
        if src[v]:
            t = 0
        else:
            t = INF
            if not _row_ok(indptr, v, nnz):
                return ST_BAD_INDEX
            for p in range(indptr[v], indptr[v + 1]):
                u = indices[p]
                if <uint64_t>u >= <uint64_t>n:
                    return ST_BAD_INDEX
                if data[p] != 0 and lev[u] != INF and lev[u] + 1 < t:
                    t = lev[u] + 1
        if t < lev[v]:
            if (lev[v] == INF and _reach_touch(y, old_out, mark, touched, v)) or push_id(&lq.init, t * n + v):
                return ST_NO_MEMORY
            lev[v] = <level_t>t
    # 4. breadth first from the lowered levels, in level order
    if _lq_sort(lq, n):
        return ST_NO_MEMORY
    lq.bad = False
    while _lq_pop(lq, n, &l, &v):
        if l != lev[v]:
            continue
        if not _row_ok(indptr_t, v, nnz_t):
            return ST_BAD_INDEX
        for p in range(indptr_t[v], indptr_t[v + 1]):
            w = indices_t[p]
            if <uint64_t>w >= <uint64_t>n:
                return ST_BAD_INDEX
            if data_t[p] != 0 and l + 1 < lev[w]:
                if (lev[w] == INF and _reach_touch(y, old_out, mark, touched, w)) \
                        or push_id(&lq.gen, (l + 1) * n + w):
                    return ST_NO_MEMORY
                lev[w] = <level_t>(l + 1)
    if lq.bad:
        return ST_BAD_INDEX
    return ST_OK


cdef int _reach_build_kernel(const int64_t *indptr_t, const index_t *indices_t, const uint8_t *data_t,
                             int64_t nnz_t, const uint8_t *src, level_t *lev, int64_t n,
                             int64_t *queue) noexcept nogil:
    """Breadth first from every source: ``lev`` the hop count (the largest level value where unreached)."""
    cdef level_t INF = _level_inf(lev)
    cdef int64_t head = 0, tail = 0, v, w, p
    cdef level_t l
    for v in range(n):
        if src[v]:
            lev[v] = 0
            queue[tail] = v
            tail += 1
        else:
            lev[v] = INF
    while head < tail:
        v = queue[head]
        head += 1
        l = lev[v] + 1
        if not _row_ok(indptr_t, v, nnz_t):
            return ST_BAD_INDEX
        for p in range(indptr_t[v], indptr_t[v + 1]):
            w = indices_t[p]
            if <uint64_t>w >= <uint64_t>n:
                return ST_BAD_INDEX
            if data_t[p] != 0 and lev[w] == INF:
                lev[w] = l
                queue[tail] = w
                tail += 1
    return ST_OK


cdef object _reach_changes(uint8_t[::1] y, level_t[::1] lev):
    """Set y to (level reached) everywhere; the sorted positions that changed and their values before."""
    cdef level_t INF = _level_inf(&lev[0]) if lev.shape[0] else 0
    cdef Py_ssize_t i, m = 0, n = y.shape[0]
    cdef uint8_t a
    cdef int64_t[::1] idx_v
    cdef uint8_t[::1] old_v
    with nogil:
        for i in range(n):
            if y[i] != (lev[i] != INF):
                m += 1
    idx = np.empty(m, dtype=np.int64)
    olds = np.empty(m, dtype=np.uint8)
    if m:
        idx_v = idx
        old_v = olds
        m = 0
        with nogil:
            for i in range(n):
                a = lev[i] != INF
                if y[i] != a:
                    idx_v[m] = i
                    old_v[m] = y[i]
                    y[i] = a
                    m += 1
    return idx, olds


def _reach_build_typed(const int64_t[::1] indptr_t, const index_t[::1] indices_t, const uint8_t[::1] data_t,
                       uint8_t[::1] y, const uint8_t[::1] src, level_t[::1] lev):
    """Typed entry point of reach_build."""
    cdef int64_t n = y.shape[0]
    cdef int status
    cdef int64_t *queue
    if n == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.uint8)
    queue = <int64_t *>malloc(<size_t>n * sizeof(int64_t))
    if queue == NULL:
        raise MemoryError("reach_build: out of memory")
    try:
        with nogil:
            status = _reach_build_kernel(&indptr_t[0], &indices_t[0] if indices_t.shape[0] else NULL,
                                         &data_t[0] if data_t.shape[0] else NULL, indices_t.shape[0], &src[0],
                                         &lev[0], n, queue)
    finally:
        free(queue)
    _raise_status(status)
    return _reach_changes(y, lev)


def reach_build(indptr_t, indices_t, data_t, y, src, level):
    """Build the levels of the reachability closure ``y = src ∨ A ∧ y`` (bool) from scratch: one breadth-first
    search from the sources over ``A``'s transpose ``(indptr_t, indices_t, data_t)`` (an entry is an edge when it
    is True: free slots and explicit False are none).

    ``level`` (int32 or int64, length n) receives the hop count of every vertex from the nearest source (0 at a
    source, the dtype's largest value where unreached), and ``y`` becomes ``level != unreached``. Returns
    ``(idx, old_values)``: the sorted positions of ``y`` that changed and their values before (uint8). Raises
    ``ValueError`` on malformed arguments (with ``y`` untouched).
    """
    indptr_t, indices_t, data_t, y, src, level = reach_build_args(indptr_t, indices_t, data_t, y, src, level)
    return _reach_build_typed(indptr_t, indices_t, data_t, y, src, level)


cdef struct ReachCall:
    # A, its transpose, the sources, the levels, the changes, the closure, the scratch (see reach)
    const int64_t *indptr
    const void *indices
    const uint8_t *data
    int64_t nnz
    const int64_t *indptr_t
    const void *indices_t
    const uint8_t *data_t
    int64_t nnz_t
    const uint8_t *src
    void *level
    int64_t n
    const int64_t *keys
    const uint8_t *old
    int64_t count
    const int64_t *points
    int64_t npoints
    uint8_t *y
    uint8_t *mark
    uint8_t *old_out
    # out: the positions of y that changed (sorted, in touched.ptr[:moved]), their values before (olds, malloc'd),
    # how many vertices were affected
    IdList touched
    uint8_t *olds
    int64_t moved
    int64_t nregion


cdef int _reach_call(index_t *width, level_t *lw, ReachCall *a) noexcept nogil:
    """The level repair on the call's arrays, typed (``width`` and ``lw`` only pick the index and level types); the
    marks are left clear, y set where a level went to or from unreached, those positions sorted and compacted in
    ``a.touched`` with their old values in ``a.olds``."""
    cdef IdList cand, region, pulls
    cdef LevelQueue lq
    cdef level_t *lev = <level_t *>a.level
    cdef level_t INF = _level_inf(lev)
    cdef int64_t *tmp = NULL
    cdef Py_ssize_t q, t, moved = 0
    cdef int64_t i
    cdef uint8_t u
    cdef int status
    cand.ptr = region.ptr = pulls.ptr = NULL
    cand.size = region.size = pulls.size = cand.cap = region.cap = pulls.cap = 0
    lq.init.ptr = lq.gen.ptr = NULL
    lq.init.size = lq.gen.size = lq.init.cap = lq.gen.cap = 0
    status = _reach_kernel(a.indptr, <const index_t *>a.indices, a.data, a.nnz, a.indptr_t,
                           <const index_t *>a.indices_t, a.data_t, a.nnz_t, a.src, lev, a.n, a.keys, a.old, a.count,
                           a.points, a.npoints, a.y, a.mark, a.old_out, &cand, &region, &pulls, &a.touched, &lq)
    t = a.touched.size
    for q in range(cand.size):
        a.mark[cand.ptr[q]] = 0
    for q in range(pulls.size):
        a.mark[pulls.ptr[q]] = 0
    for q in range(t):
        a.mark[a.touched.ptr[q]] = 0
    a.nregion = region.size
    free(cand.ptr)
    free(region.ptr)
    free(pulls.ptr)
    free(lq.init.ptr)
    free(lq.gen.ptr)
    if status != ST_OK or t == 0:
        return status
    tmp = <int64_t *>malloc(<size_t>t * sizeof(int64_t))
    a.olds = <uint8_t *>malloc(<size_t>t)
    if tmp == NULL or a.olds == NULL:
        free(tmp)
        return ST_NO_MEMORY
    _sort_ids(a.touched.ptr, tmp, t, a.n)
    free(tmp)
    for q in range(t):
        i = a.touched.ptr[q]
        u = lev[i] != INF
        if u != a.old_out[i]:
            a.y[i] = u
            a.touched.ptr[moved] = i
            a.olds[moved] = a.old_out[i]
            moved += 1
    a.moved = moved
    return ST_OK


cdef int _reach_dispatch(bint wide, bint wide_level, ReachCall *a) noexcept nogil:
    """Run the level repair typed for int64 (``wide``) or int32 indices and int64 or int32 levels."""
    if wide:
        if wide_level:
            return _reach_call(<int64_t *>NULL, <int64_t *>NULL, a)
        return _reach_call(<int64_t *>NULL, <int32_t *>NULL, a)
    if wide_level:
        return _reach_call(<int32_t *>NULL, <int64_t *>NULL, a)
    return _reach_call(<int32_t *>NULL, <int32_t *>NULL, a)


def reach(indptr, indices, data, indptr_t, indices_t, data_t, y, src, level, keys, old, points, mark=None,
          old_out=None):
    """Repair the reachability closure ``y = src ∨ A ∧ y`` (bool, ⊕ or, ⊗ and) and its levels after entries of A
    and sources changed: the dynamic breadth-first search of Ramalingam and Reps on unit weights.

    ``(indptr, indices, data)`` is A (n x n, CSR, an entry ``A[r, c]`` True is an edge c -> r), already holding
    the new entries, and ``(indptr_t, indices_t, data_t)`` its transpose; ``src`` holds the new sources. ``level``
    (see ``reach_build``) holds the levels under the old entries and sources and ``y`` the closure they give;
    both are updated in place. ``keys`` are the flat positions ``r * n + c`` of the changed entries and ``old``
    their values before; ``points`` the positions whose source value changed.

    A vertex at level L > 0 is supported by an in-neighbour at level L - 1. A removed entry matters only when it
    was such a support; a vertex left without support (and a source switched off) is affected, and so are, in
    level order, the out-neighbours one level above it that lose their last unaffected support. Only the
    affected vertices are reset; they, the heads of new entries and the new sources take a level from their
    in-neighbours, and a breadth-first search in level order lowers the levels from there. A vertex is reachable
    iff its level is finite.

    ``mark`` (uint8, length n, all zero, left all zero, also when the call raises) and ``old_out`` (uint8, length n)
    are scratch kept by the caller (allocated when None). Returns ``(idx, old_values, region)``: the sorted positions of ``y`` that
    changed, their values before (uint8) and how many vertices were affected. Raises ``ValueError`` on malformed
    arguments or out-of-range indices, keys or points; ``y`` is then untouched and ``level`` must be rebuilt.
    """
    if not (_arr(y, E_U8, True) and _arr(src, E_U8) and _arr(data, E_U8) and _arr(data_t, E_U8) and _arr(old, E_U8)
            and _arr(indptr, E_I64) and _arr(indptr_t, E_I64) and _arr(keys, E_I64) and _arr(points, E_I64)
            and _index_arr(indices) and _arr(indices_t, _elem(<cnp.ndarray>indices)) and _arr(mark, E_U8, True)
            and _arr(old_out, E_U8, True) and (_arr(level, E_I64, True) or _arr(level, E_I32, True))
            and _len(y) < 0x7FFFFFFF and _len(src) == _len(y) == _len(mark) == _len(old_out) == _len(level)
            and _len(old) == _len(keys) and _csr_ok(indptr, indices, data, _len(y))
            and _csr_ok(indptr_t, indices_t, data_t, _len(y))):
        (indptr, indices, data, indptr_t, indices_t, data_t, y, src, level, keys, old, points, mark,
         old_out) = reach_args(indptr, indices, data, indptr_t, indices_t, data_t, y, src, level, keys, old,
                               points, mark, old_out)
        if indices.dtype != indices_t.dtype:
            indices, indices_t = indices.astype(np.int64), indices_t.astype(np.int64)
    cdef ReachCall a
    cdef int status
    cdef bint wide, wide_level
    if _len(y) == 0:
        if _len(keys) or _len(points):
            raise ValueError("matrix indices/indptr or entry keys out of range")
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.uint8), 0
    a.indptr, a.indices, a.data, a.nnz = <const int64_t *>_ptr(indptr), _ptr(indices), <uint8_t *>_ptr(data), \
        _len(indices)
    a.indptr_t, a.indices_t, a.data_t = <const int64_t *>_ptr(indptr_t), _ptr(indices_t), <uint8_t *>_ptr(data_t)
    a.nnz_t, a.src, a.level, a.n = _len(indices_t), <uint8_t *>_ptr(src), _ptr(level), _len(y)
    a.keys, a.old, a.count = <const int64_t *>_ptr(keys), <uint8_t *>_ptr(old), _len(keys)
    a.points, a.npoints = <const int64_t *>_ptr(points), _len(points)
    a.y, a.mark, a.old_out = <uint8_t *>_ptr(y), <uint8_t *>_ptr(mark), <uint8_t *>_ptr(old_out)
    a.touched.ptr, a.touched.size, a.touched.cap = NULL, 0, 0
    a.olds, a.moved, a.nregion = NULL, 0, 0
    wide = cnp.PyArray_ITEMSIZE(<cnp.ndarray>indices) == 8
    wide_level = cnp.PyArray_ITEMSIZE(<cnp.ndarray>level) == 8
    try:
        with nogil:
            status = _reach_dispatch(wide, wide_level, &a)
        _raise_status(status)
        idx = _empty(a.moved, cnp.NPY_INT64)
        olds = _empty(a.moved, cnp.NPY_UINT8)
        if a.moved:
            memcpy(_ptr(idx), a.touched.ptr, <size_t>a.moved * sizeof(int64_t))
            memcpy(_ptr(olds), a.olds, <size_t>a.moved)
    finally:
        _release(a.touched.ptr)
        _release(a.olds)
    return idx, olds, a.nregion
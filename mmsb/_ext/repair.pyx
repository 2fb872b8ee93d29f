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
"""
import numpy as np

from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memset

from mmsb._ext._types cimport OP_MAX, apply_op, index_t, numeric_t

from mmsb._validate import assign_args, locate_args, reach_args, reach_build_args, repair_args, update_args

__all__ = ["assign", "locate", "reach", "reach_build", "repair", "update"]

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

cdef object _I64 = np.dtype(np.int64)
cdef object _I32 = np.dtype(np.int32)
cdef object _U8 = np.dtype(np.uint8)
cdef object _BOOL = np.dtype(np.bool_)


cdef inline bint _vec(object a, object dtype):
    """a is a 1-D C-contiguous ndarray of dtype (None: any)."""
    return type(a) is np.ndarray and (dtype is None or a.dtype == dtype) and a.ndim == 1 and a.flags.c_contiguous


cdef inline bint _csr_ok(object indptr, object indices, object data, Py_ssize_t nrows):
    """The O(1) CSR checks: nrows + 1 row pointers from 0 to len(indices) == len(data)."""
    return (indptr.shape[0] == nrows + 1 and indices.shape[0] == data.shape[0] and indptr[0] == 0
            and indptr[nrows] == indices.shape[0])


cdef object _fast_consts(object zero, object free, object dtype):
    """[zero, free] in dtype when both are numpy scalars of that dtype (bool for a uint8 view), else None."""
    cdef object f = zero if free is None else free
    if not (isinstance(zero, np.generic) and isinstance(f, np.generic)):
        return None
    if not ((zero.dtype == dtype or (zero.dtype == _BOOL and dtype == _U8))
            and (f.dtype == dtype or (f.dtype == _BOOL and dtype == _U8))):
        return None
    return np.array([zero, f], dtype=dtype)


#: the status codes ``repair`` returns (the others raise)
OK = ST_OK
TOO_LARGE = ST_TOO_LARGE
NAN_ENTRY = ST_NAN


cdef struct IdList:
    int64_t *ptr
    Py_ssize_t size
    Py_ssize_t cap


cdef inline int _push_id(IdList *lst, int64_t value) noexcept nogil:
    """Append value; -1 when out of memory."""
    cdef Py_ssize_t cap
    cdef int64_t *p
    if lst.size == lst.cap:
        cap = lst.cap * 2 if lst.cap else 64
        p = <int64_t *>realloc(lst.ptr, cap * sizeof(int64_t))
        if p == NULL:
            return -1
        lst.ptr = p
        lst.cap = cap
    lst.ptr[lst.size] = value
    lst.size += 1
    return 0


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


cdef int _assign_kernel(const int64_t *indptr, index_t *indices, numeric_t *data, int64_t nrows, int64_t ncols,
                        int64_t nnz, const int64_t *rows, const int64_t *cols, const numeric_t *vals, const uint8_t *present,
                        int64_t *pos, bint located, int64_t count, bint has_free, numeric_t free_val,
                        uint8_t *miss, int64_t *nmiss, bint *claimed) noexcept nogil:
    """Entries found first (set, or freed), then insertions into free slots (those just freed included)."""
    cdef int64_t k, r, p, q
    for k in range(count):
        r = rows[k]
        if <uint64_t>r >= <uint64_t>nrows or indptr[r] < 0 or indptr[r + 1] > nnz or indptr[r] > indptr[r + 1] \
                or <uint64_t>cols[k] >= <uint64_t>ncols:
            return ST_BAD_INDEX
        if located:
            if pos[k] < -1 or pos[k] >= nnz:
                return ST_BAD_INDEX
        else:
            pos[k] = _find(indptr, indices, data, r, cols[k], has_free, free_val)
    for k in range(count):
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
    for k in range(count):
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


cdef int _update_kernel(const int64_t *indptr, index_t *indices, numeric_t *data, int64_t nrows, int64_t ncols,
                        int64_t nnz, const int64_t *indptr_t, index_t *indices_t, numeric_t *data_t, int64_t nnz_t,
                        bint has_t, const int64_t *keys, const numeric_t *vals, int64_t count, int op,
                        numeric_t zero, bint has_free, numeric_t free_val, int64_t *idx, int64_t *rows,
                        int64_t *cols, numeric_t *old, numeric_t *new, int64_t *pos, uint8_t *present,
                        int64_t *pos_t, uint8_t *miss, uint8_t *miss_t, int64_t *moved, int64_t *counts,
                        double *stats) noexcept nogil:
    """locate, merge (assign or ``op``), keep what changed, set in A and in its transpose; stats: the range of the
    stored values and whether one is NaN / not finite."""
    cdef int64_t k, r, c, p, m = 0
    cdef numeric_t o, v
    cdef int status
    cdef bint claimed = False
    for k in range(count):
        if <uint64_t>keys[k] >= <uint64_t>(nrows * ncols):
            return ST_BAD_INDEX
        r = keys[k] // ncols
        c = keys[k] - r * ncols
        if r < 0 or r >= nrows or indptr[r] < 0 or indptr[r + 1] > nnz or indptr[r] > indptr[r + 1]:
            return ST_BAD_INDEX
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
    moved[0] = m
    if m == 0:
        return ST_OK
    status = _assign_kernel(indptr, indices, data, nrows, ncols, nnz, rows, cols, new, present, pos, True, m,
                            has_free, free_val, miss, &counts[0], &claimed)
    counts[1] = claimed
    if not has_t:
        for k in range(m):
            pos_t[k] = -1
    if status != ST_OK or not has_t:
        return status
    claimed = False
    status = _assign_kernel(indptr_t, indices_t, data_t, ncols, nrows, nnz_t, cols, rows, new, present, pos_t, False,
                            m, has_free, free_val, miss_t, &counts[2], &claimed)
    counts[3] = claimed
    return status


def _update_typed(const int64_t[::1] indptr, index_t[::1] indices, numeric_t[::1] data, const int64_t[::1] indptr_t,
                  index_t[::1] indices_t, numeric_t[::1] data_t, bint has_t, const int64_t[::1] keys,
                  const numeric_t[::1] vals, int64_t nrows, int64_t ncols, int op, const numeric_t[::1] consts,
                  bint has_free, int64_t[::1] idx, int64_t[::1] rows, int64_t[::1] cols, numeric_t[::1] old,
                  numeric_t[::1] new, int64_t[::1] pos, uint8_t[::1] present, int64_t[::1] pos_t, uint8_t[::1] miss,
                  uint8_t[::1] miss_t, int64_t[::1] counts, double[::1] stats):
    """Typed entry point of update; returns how many entries changed."""
    cdef int status
    cdef int64_t moved = 0
    if keys.shape[0] == 0:
        return 0
    with nogil:
        status = _update_kernel(&indptr[0], &indices[0] if indices.shape[0] else NULL,
                                &data[0] if data.shape[0] else NULL, nrows, ncols, indices.shape[0], &indptr_t[0],
                                &indices_t[0] if indices_t.shape[0] else NULL,
                                &data_t[0] if data_t.shape[0] else NULL, indices_t.shape[0], has_t, &keys[0],
                                &vals[0], keys.shape[0], op, consts[0], has_free, consts[1], &idx[0], &rows[0],
                                &cols[0], &old[0], &new[0], &pos[0], &present[0], &pos_t[0], &miss[0], &miss_t[0],
                                &moved, &counts[0], &stats[0])
    _raise_status(status)
    return moved


def update(indptr, indices, data, ncols, keys, vals, op, zero, free=None, indptr_t=None, indices_t=None,
           data_t=None):
    """Merge the entries ``keys`` (flat positions ``row * ncols + col``, unique) of a CSR matrix A with ``vals``
    (``op`` -1: assign, else the kernel op of ⊕), in place in A and in its transpose when given.

    A value equal to ``zero`` removes the entry (see ``assign``: ``free`` is the value of A's free slots, None
    when it has none). Returns None when no entry changes, else ``(idx, rows, cols, old, new, present, pos, pos_t,
    miss, miss_t, misses, claimed, misses_t, claimed_t, stats)``: the entries that changed (flat, row, column),
    their values before and after, ``new != zero``, their positions in A before the change (-1: none) and in the
    transpose, the changes left undone in A and in the transpose and their counts (see ``assign``), whether a
    free slot was taken in each, and ``(lo, hi, any NaN, any ±inf, count)`` of the stored new values (lo and hi
    over those not NaN: inf and -inf when none).
    """
    if not 0 <= ncols < 1 << 62:
        raise ValueError(f"ncols must lie in [0, 2**62), got {ncols}")
    has_t = indptr_t is not None
    consts = None
    if (_vec(indptr, _I64) and _vec(indices, None) and (indices.dtype == _I32 or indices.dtype == _I64)
            and _vec(data, None) and data.flags.writeable and indices.flags.writeable and _vec(keys, _I64)
            and _vec(vals, data.dtype) and keys.shape[0] == vals.shape[0] and (op == -1 or 0 <= op <= 3)
            and _csr_ok(indptr, indices, data, indptr.shape[0] - 1)):
        nrows = indptr.shape[0] - 1
        if not has_t or (_vec(indptr_t, _I64) and _vec(indices_t, indices.dtype) and _vec(data_t, data.dtype)
                         and data_t.flags.writeable and indices_t.flags.writeable
                         and _csr_ok(indptr_t, indices_t, data_t, ncols)):
            consts = _fast_consts(zero, free, data.dtype)
    if consts is not None:
        has_free = free is not None
        if not has_t:
            indptr_t, indices_t, data_t = np.zeros(1, dtype=np.int64), indices[:0], data[:0]
    else:
        (indptr, indices, data, indptr_t, indices_t, data_t, has_t, keys, vals, nrows, consts,
         has_free) = update_args(indptr, indices, data, ncols, keys, vals, op, zero, free, indptr_t, indices_t,
                                 data_t)
    k = keys.shape[0]
    ints = np.empty((5, k), dtype=np.int64)            # idx, rows, cols, pos, pos_t
    values = np.empty((2, k), dtype=data.dtype)         # old, new
    flags = np.zeros((3, k), dtype=np.uint8)            # present, miss, miss_t
    counts = np.zeros(4, dtype=np.int64)
    stats = np.array([np.inf, -np.inf, 0.0, 0.0, 0.0])
    idx, rows, cols, pos, pos_t = ints[0], ints[1], ints[2], ints[3], ints[4]
    old, new = values[0], values[1]
    present, miss, miss_t = flags[0], flags[1], flags[2]
    m = _update_typed(indptr, indices, data, indptr_t, indices_t, data_t, has_t, keys, vals, nrows, ncols, op,
                      consts, has_free, idx, rows, cols, old, new, pos, present, pos_t, miss, miss_t, counts, stats)
    if not m:
        return None
    if m < k:
        idx, rows, cols, pos, pos_t = idx[:m], rows[:m], cols[:m], pos[:m], pos_t[:m]
        old, new, present, miss, miss_t = old[:m], new[:m], present[:m], miss[:m], miss_t[:m]
    return (idx, rows, cols, old, new, present.view(np.bool_), pos, pos_t, miss.view(np.bool_),
            miss_t.view(np.bool_), int(counts[0]), bool(counts[1]), int(counts[2]), bool(counts[3]),
            (float(stats[0]), float(stats[1]), bool(stats[2]), bool(stats[3]), int(stats[4])))


# ----------------------------------------------------------------------------------------------------- repair

cdef inline bint _better(numeric_t a, numeric_t b, bint maxfirst) noexcept nogil:
    """a strictly better than b for the ⊕ order (larger for max, smaller for min)."""
    return a > b if maxfirst else a < b


cdef int _heap_push(numeric_t **keys, int64_t **ids, Py_ssize_t *size, Py_ssize_t *cap, numeric_t key,
                    int64_t ident, bint maxfirst) noexcept nogil:
    """Insert (key, ident) into the binary heap ordered by _better; -1 when out of memory."""
    cdef Py_ssize_t pos, parent, newcap
    cdef numeric_t *nk
    cdef int64_t *ni
    if size[0] == cap[0]:
        newcap = cap[0] * 2 if cap[0] else 256
        nk = <numeric_t *>realloc(keys[0], newcap * sizeof(numeric_t))
        if nk == NULL:
            return -1
        keys[0] = nk
        ni = <int64_t *>realloc(ids[0], newcap * sizeof(int64_t))
        if ni == NULL:
            return -1
        ids[0] = ni
        cap[0] = newcap
    nk = keys[0]
    ni = ids[0]
    pos = size[0]
    size[0] += 1
    while pos > 0:
        parent = (pos - 1) >> 1
        if not _better(key, nk[parent], maxfirst):
            break
        nk[pos] = nk[parent]
        ni[pos] = ni[parent]
        pos = parent
    nk[pos] = key
    ni[pos] = ident
    return 0


cdef void _heap_pop(numeric_t *keys, int64_t *ids, Py_ssize_t *size, bint maxfirst) noexcept nogil:
    """Remove the top of the heap."""
    cdef Py_ssize_t n = size[0] - 1
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t child
    cdef numeric_t key = keys[n]
    cdef int64_t ident = ids[n]
    size[0] = n
    while True:
        child = 2 * pos + 1
        if child >= n:
            break
        if child + 1 < n and _better(keys[child + 1], keys[child], maxfirst):
            child += 1
        if not _better(keys[child], key, maxfirst):
            break
        keys[pos] = keys[child]
        ids[pos] = ids[child]
        pos = child
    if n > 0:
        keys[pos] = key
        ids[pos] = ident


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
    """Record y[i]'s value before the call (once); -1 when out of memory."""
    if mark[i] & M_TOUCHED:
        return 0
    mark[i] |= M_TOUCHED
    old_out[i] = y[i]
    return _push_id(touched, i)


cdef int _converge(const int64_t *indptr_t, const index_t *indices_t, const numeric_t *data_t, int64_t nnz,
                   numeric_t *y, int64_t n, const IdList *front, int add_op, int mul_op, numeric_t zero,
                   uint8_t *mark, numeric_t *old_out, IdList *touched) noexcept nogil:
    """Semi-naive closure from ``front``: a binary heap (Dijkstra's order) while every improvement is no better
    than the value being pushed, then a FIFO worklist capped at n + 1 rounds (as ``spmv.closure``)."""
    cdef bint maxfirst = add_op == OP_MAX
    cdef numeric_t *hkeys = NULL
    cdef int64_t *hids = NULL
    cdef Py_ssize_t hsize = 0, hcap = 0, h
    cdef Queue q
    cdef int64_t in_round = 0, rounds = 0
    cdef int64_t r, j, k, i, ks, ke
    cdef numeric_t v, cur, new
    cdef bint ordered = True
    cdef int status = ST_OK
    q.ptr = NULL
    q.head = q.size = q.cap = 0
    for r in range(front.size):
        j = front.ptr[r]
        if y[j] != zero and _heap_push(&hkeys, &hids, &hsize, &hcap, y[j], j, maxfirst):
            status = ST_NO_MEMORY
            break
    while status == ST_OK and ordered and hsize:
        j = hids[0]
        v = hkeys[0]
        _heap_pop(hkeys, hids, &hsize, maxfirst)
        if v != y[j] or v == zero:
            continue
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
            if _touch(y, old_out, mark, touched, i) or _heap_push(&hkeys, &hids, &hsize, &hcap, new, i, maxfirst):
                status = ST_NO_MEMORY
                break
            y[i] = new
            if _better(new, v, maxfirst):
                ordered = False
    if status == ST_OK:
        for h in range(hsize):
            j = hids[h]
            if hkeys[h] == y[j] and not (mark[j] & M_QUEUED):
                mark[j] |= M_QUEUED
                if _queue_push(&q, j):
                    status = ST_NO_MEMORY
                    break
    free(hkeys)
    free(hids)
    while status == ST_OK and q.size:
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
            if not (mark[i] & M_QUEUED):
                mark[i] |= M_QUEUED
                if _queue_push(&q, i):
                    status = ST_NO_MEMORY
                    break
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
                mark[c] |= M_FRONT
                if _push_id(front, c):
                    return ST_NO_MEMORY
            better = True
        else:
            better = False
        yj = y[c]
        if yj != zero and w != zero and apply_op(mul_op, w, yj) == y[r]:
            worse_tight = worse_tight or not better
            if not (mark[r] & M_REGION):
                mark[r] |= M_REGION
                if _push_id(region, r):
                    return ST_NO_MEMORY
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
                mark[i] |= M_REGION
                if _push_id(region, i):
                    return ST_NO_MEMORY
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
            mark[j] |= M_FRONT
            if _push_id(front, j):
                free(pulled)
                return ST_NO_MEMORY
    free(pulled)
    # 4. converge from the region and the heads of the improved entries
    return _converge(indptr_t, indices_t, data_t, nnz_t, y, n, front, add_op, mul_op, zero, mark, old_out,
                     touched)


cdef object _repair_run(const int64_t[::1] indptr, const index_t[::1] indices, const numeric_t[::1] data,
                        const int64_t[::1] indptr_t, const index_t[::1] indices_t, const numeric_t[::1] data_t,
                        numeric_t[::1] y, const numeric_t[::1] src, const int64_t[::1] keys,
                        const numeric_t[::1] old, int add_op, int mul_op, const numeric_t[::1] consts,
                        bint has_free, int64_t limit, uint8_t[::1] mark, numeric_t[::1] old_out, dtype):
    cdef IdList region, front, touched
    cdef int status
    cdef Py_ssize_t q, t, moved = 0
    cdef int64_t n = y.shape[0], i
    cdef int64_t *tmp = NULL
    cdef numeric_t a, b
    cdef int64_t[::1] idx_v
    cdef numeric_t[::1] old_v
    cdef bint nonfinite = False
    region.ptr = front.ptr = touched.ptr = NULL
    region.size = front.size = touched.size = 0
    region.cap = front.cap = touched.cap = 0
    try:
        with nogil:
            status = _repair_kernel(&indptr[0], &indices[0] if indices.shape[0] else NULL,
                                    &data[0] if data.shape[0] else NULL, indices.shape[0], &indptr_t[0],
                                    &indices_t[0] if indices_t.shape[0] else NULL,
                                    &data_t[0] if data_t.shape[0] else NULL, indices_t.shape[0],
                                    &y[0] if n else NULL, &src[0] if n else NULL, n,
                                    &keys[0] if keys.shape[0] else NULL, &old[0] if old.shape[0] else NULL,
                                    keys.shape[0], add_op, mul_op, consts[0], has_free, consts[1], limit,
                                    &mark[0] if n else NULL, &old_out[0] if n else NULL, &region, &front,
                                    &touched)
        t = touched.size
        idx = np.empty(t, dtype=np.int64)
        olds = np.empty(t, dtype=dtype)
        if status == ST_OK and t:
            idx_v = idx
            old_v = olds
            with nogil:
                tmp = <int64_t *>malloc(<size_t>t * sizeof(int64_t))
                if tmp == NULL:
                    status = ST_NO_MEMORY
                else:
                    _sort_ids(touched.ptr, tmp, t, n)
                    for q in range(t):
                        i = touched.ptr[q]
                        a = y[i]
                        b = old_out[i]
                        if a != b and not (_float_nan(a) and _float_nan(b)):
                            idx_v[moved] = i
                            old_v[moved] = b
                            moved += 1
                            if numeric_t is float or numeric_t is double:
                                if a - a != 0:
                                    nonfinite = True
                    free(tmp)
        nregion = region.size
    finally:
        for q in range(region.size):
            mark[region.ptr[q]] = 0
        for q in range(front.size):
            mark[front.ptr[q]] = 0
        for q in range(touched.size):
            mark[touched.ptr[q]] = 0
        free(region.ptr)
        free(front.ptr)
        free(touched.ptr)
    if status in (ST_TOO_LARGE, ST_NAN):
        return status, None, None, 0, False
    _raise_status(status)
    return ST_OK, idx[:moved], olds[:moved], nregion, nonfinite


def _repair_typed(const int64_t[::1] indptr, const int64_t[::1] indices, const numeric_t[::1] data,
                  const int64_t[::1] indptr_t, const int64_t[::1] indices_t, const numeric_t[::1] data_t,
                  numeric_t[::1] y, const numeric_t[::1] src, const int64_t[::1] keys, const numeric_t[::1] old,
                  int add_op, int mul_op, const numeric_t[::1] consts, bint has_free, int64_t limit,
                  uint8_t[::1] mark, numeric_t[::1] old_out, dtype):
    """Typed entry point of repair, int64 column indices."""
    return _repair_run(indptr, indices, data, indptr_t, indices_t, data_t, y, src, keys, old, add_op, mul_op,
                       consts, has_free, limit, mark, old_out, dtype)


def _repair_typed32(const int64_t[::1] indptr, const int32_t[::1] indices, const numeric_t[::1] data,
                    const int64_t[::1] indptr_t, const int32_t[::1] indices_t, const numeric_t[::1] data_t,
                    numeric_t[::1] y, const numeric_t[::1] src, const int64_t[::1] keys, const numeric_t[::1] old,
                    int add_op, int mul_op, const numeric_t[::1] consts, bint has_free, int64_t limit,
                    uint8_t[::1] mark, numeric_t[::1] old_out, dtype):
    """Typed entry point of repair, int32 column indices."""
    return _repair_run(indptr, indices, data, indptr_t, indices_t, data_t, y, src, keys, old, add_op, mul_op,
                       consts, has_free, limit, mark, old_out, dtype)


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
    entries that improved. ``mark`` (uint8, length n, all zero, left all zero) and ``old_out`` (like ``y``) are
    scratch, kept by the caller (allocated here when None).

    Returns ``(status, idx, old_values, region_size, nonfinite)``: ``status`` is ``OK``, with the sorted
    positions of ``y`` that changed, their values before and whether a new one is NaN or ±inf; ``TOO_LARGE`` (the region would exceed ``limit`` values, -1: no limit),
    or ``NAN_ENTRY`` (a changed entry is NaN now), both with ``y`` untouched and ``idx`` None. Raises
    ``ValueError("closure does not converge")`` after more than n + 1 FIFO rounds (``y`` then partly updated).
    """
    consts = None
    if (_vec(y, None) and y.flags.writeable and _vec(indptr, _I64) and _vec(indptr_t, _I64)
            and _vec(indices, None) and _vec(indices_t, indices.dtype) and (indices.dtype == _I32
                                                                           or indices.dtype == _I64)
            and _vec(data, y.dtype) and _vec(data_t, y.dtype) and _vec(src, y.dtype) and _vec(keys, _I64)
            and _vec(old, y.dtype) and _vec(mark, _U8) and mark.flags.writeable and _vec(old_out, y.dtype)
            and old_out.flags.writeable and (add_op == 2 or add_op == 3) and 0 <= mul_op <= 3
            and src.shape[0] == y.shape[0] == mark.shape[0] == old_out.shape[0] and old.shape[0] == keys.shape[0]
            and _csr_ok(indptr, indices, data, y.shape[0]) and _csr_ok(indptr_t, indices_t, data_t, y.shape[0])):
        consts = _fast_consts(zero, free, y.dtype)
    if consts is not None:
        has_free = free is not None
    else:
        (indptr, indices, data, indptr_t, indices_t, data_t, y, src, keys, old, consts, has_free, mark,
         old_out) = repair_args(indptr, indices, data, indptr_t, indices_t, data_t, y, src, keys, old, add_op,
                                mul_op, zero, free, mark, old_out)
    if indices.dtype == np.int32 and indices_t.dtype == np.int32:
        return _repair_typed32(indptr, indices, data, indptr_t, indices_t, data_t, y, src, keys, old, add_op,
                               mul_op, consts, has_free, limit, mark, old_out, y.dtype)
    return _repair_typed(indptr, _wide(indices), data, indptr_t, _wide(indices_t), data_t, y, src, keys, old,
                         add_op, mul_op, consts, has_free, limit, mark, old_out, y.dtype)


def _wide(indices):
    return indices if indices.dtype == np.int64 else indices.astype(np.int64)


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
    """Record y[i]'s value before the call (once); -1 when out of memory."""
    if mark[i] & R_TOUCHED:
        return 0
    mark[i] |= R_TOUCHED
    old_out[i] = y[i]
    return _push_id(touched, i)


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
                mark[r] |= R_PULL
                if _push_id(pulls, r):
                    return ST_NO_MEMORY
        elif lev[c] != INF and lev[r] != INF and lev[r] == lev[c] + 1 and not src[r] \
                and not (mark[r] & R_CAND):
            mark[r] |= R_CAND
            if _push_id(cand, r) or _push_id(&lq.init, <int64_t>lev[r] * n + r):
                return ST_NO_MEMORY
    for k in range(npoints):
        v = points[k]
        if <uint64_t>v >= <uint64_t>n:
            return ST_BAD_INDEX
        if src[v]:
            if lev[v] != 0 and not (mark[v] & R_PULL):
                mark[v] |= R_PULL
                if _push_id(pulls, v):
                    return ST_NO_MEMORY
        elif lev[v] == 0 and not (mark[v] & R_CAND):
            mark[v] |= R_CAND
            if _push_id(cand, v) or _push_id(&lq.init, v):
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
        if _push_id(region, v):
            return ST_NO_MEMORY
        if not _row_ok(indptr_t, v, nnz_t):
            return ST_BAD_INDEX
        for p in range(indptr_t[v], indptr_t[v + 1]):
            w = indices_t[p]
            if <uint64_t>w >= <uint64_t>n:
                return ST_BAD_INDEX
            if data_t[p] != 0 and lev[w] == l + 1 and not src[w] and not (mark[w] & R_CAND):
                mark[w] |= R_CAND
                if _push_id(cand, w) or _push_id(&lq.gen, (l + 1) * n + w):
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
            mark[v] |= R_PULL
            if _push_id(pulls, v):
                return ST_NO_MEMORY
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
            if (lev[v] == INF and _reach_touch(y, old_out, mark, touched, v)) or _push_id(&lq.init, t * n + v):
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
                        or _push_id(&lq.gen, (l + 1) * n + w):
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


def _reach_typed(const int64_t[::1] indptr, const index_t[::1] indices, const uint8_t[::1] data,
                 const int64_t[::1] indptr_t, const index_t[::1] indices_t, const uint8_t[::1] data_t,
                 uint8_t[::1] y, const uint8_t[::1] src, level_t[::1] lev, const int64_t[::1] keys,
                 const uint8_t[::1] old, const int64_t[::1] points, uint8_t[::1] mark, uint8_t[::1] old_out):
    """Typed entry point of reach."""
    cdef IdList cand, region, pulls, touched
    cdef LevelQueue lq
    cdef int status
    cdef Py_ssize_t q, t, moved = 0
    cdef int64_t n = y.shape[0], i
    cdef int64_t *tmp = NULL
    cdef uint8_t a
    cdef level_t INF
    cdef int64_t[::1] idx_v
    cdef uint8_t[::1] old_v
    if n == 0:
        if keys.shape[0] or points.shape[0]:
            raise ValueError("matrix indices/indptr or entry keys out of range")
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.uint8), 0
    INF = _level_inf(&lev[0])
    cand.ptr = region.ptr = pulls.ptr = touched.ptr = NULL
    cand.size = region.size = pulls.size = touched.size = 0
    cand.cap = region.cap = pulls.cap = touched.cap = 0
    lq.init.ptr = lq.gen.ptr = NULL
    lq.init.size = lq.gen.size = lq.init.cap = lq.gen.cap = 0
    try:
        with nogil:
            status = _reach_kernel(&indptr[0], &indices[0] if indices.shape[0] else NULL,
                                   &data[0] if data.shape[0] else NULL, indices.shape[0], &indptr_t[0],
                                   &indices_t[0] if indices_t.shape[0] else NULL,
                                   &data_t[0] if data_t.shape[0] else NULL, indices_t.shape[0], &src[0], &lev[0],
                                   n, &keys[0] if keys.shape[0] else NULL, &old[0] if old.shape[0] else NULL,
                                   keys.shape[0], &points[0] if points.shape[0] else NULL, points.shape[0],
                                   &y[0], &mark[0], &old_out[0], &cand, &region, &pulls, &touched, &lq)
        t = touched.size
        idx = np.empty(t, dtype=np.int64)
        olds = np.empty(t, dtype=np.uint8)
        if status == ST_OK and t:
            idx_v = idx
            old_v = olds
            with nogil:
                tmp = <int64_t *>malloc(<size_t>t * sizeof(int64_t))
                if tmp == NULL:
                    status = ST_NO_MEMORY
                else:
                    _sort_ids(touched.ptr, tmp, t, n)
                    for q in range(t):
                        i = touched.ptr[q]
                        a = lev[i] != INF
                        if a != old_out[i]:
                            y[i] = a
                            idx_v[moved] = i
                            old_v[moved] = old_out[i]
                            moved += 1
                    free(tmp)
        nregion = region.size
    finally:
        for q in range(cand.size):
            mark[cand.ptr[q]] = 0
        for q in range(pulls.size):
            mark[pulls.ptr[q]] = 0
        for q in range(touched.size):
            mark[touched.ptr[q]] = 0
        free(cand.ptr)
        free(region.ptr)
        free(pulls.ptr)
        free(touched.ptr)
        free(lq.init.ptr)
        free(lq.gen.ptr)
    _raise_status(status)
    return idx[:moved], olds[:moved], nregion


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

    ``mark`` (uint8, length n, all zero, left all zero) and ``old_out`` (uint8, length n) are scratch kept by the
    caller (allocated when None). Returns ``(idx, old_values, region)``: the sorted positions of ``y`` that
    changed, their values before (uint8) and how many vertices were affected. Raises ``ValueError`` on malformed
    arguments or out-of-range indices, keys or points; ``y`` is then untouched and ``level`` must be rebuilt.
    """
    if not (_vec(y, _U8) and y.flags.writeable and _vec(src, _U8) and _vec(data, _U8) and _vec(data_t, _U8)
            and _vec(old, _U8) and _vec(indptr, _I64) and _vec(indptr_t, _I64) and _vec(keys, _I64)
            and _vec(points, _I64) and _vec(indices, None) and _vec(indices_t, indices.dtype)
            and (indices.dtype == _I32 or indices.dtype == _I64) and _vec(mark, _U8) and mark.flags.writeable
            and _vec(old_out, _U8) and old_out.flags.writeable
            and (_vec(level, _I64) or _vec(level, _I32)) and level.flags.writeable and y.shape[0] < 0x7FFFFFFF
            and src.shape[0] == y.shape[0] == mark.shape[0] == old_out.shape[0] == level.shape[0]
            and old.shape[0] == keys.shape[0] and _csr_ok(indptr, indices, data, y.shape[0])
            and _csr_ok(indptr_t, indices_t, data_t, y.shape[0])):
        (indptr, indices, data, indptr_t, indices_t, data_t, y, src, level, keys, old, points, mark,
         old_out) = reach_args(indptr, indices, data, indptr_t, indices_t, data_t, y, src, level, keys, old,
                               points, mark, old_out)
    return _reach_typed(indptr, indices, data, indptr_t, indices_t, data_t, y, src, level, keys, old, points,
                        mark, old_out)

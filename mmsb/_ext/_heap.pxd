# cython: language_level=3
"""Worklist helpers shared by the compiled closure kernels (``spmv`` and ``repair``): a growable list of ids and a
binary heap of ``(value, id)`` ordered by a semiring's ⊕ (min or max first).

All are ``inline`` and ``nogil``; a helper that allocates returns -1 when out of memory (what it held is kept, and
the caller frees it).
"""
from libc.stdint cimport int64_t
from libc.stdlib cimport realloc

from mmsb._ext._types cimport numeric_t


cdef struct IdList:
    int64_t *ptr
    Py_ssize_t size
    Py_ssize_t cap


cdef inline int push_id(IdList *lst, int64_t value) noexcept nogil:
    """Append ``value``, growing the list geometrically; -1 when out of memory."""
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


cdef inline bint better(numeric_t a, numeric_t b, bint maxfirst) noexcept nogil:
    """``a`` strictly better than ``b`` for the ⊕ order (larger for max, smaller for min)."""
    return a > b if maxfirst else a < b


cdef inline int heap_push(numeric_t **keys, int64_t **ids, Py_ssize_t *size, Py_ssize_t *cap, numeric_t key,
                          int64_t ident, bint maxfirst) noexcept nogil:
    """Insert ``(key, ident)`` into the binary heap ``keys`` / ``ids`` (grown by doubling); -1 when out of
    memory."""
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
        if not better(key, nk[parent], maxfirst):
            break
        nk[pos] = nk[parent]
        ni[pos] = ni[parent]
        pos = parent
    nk[pos] = key
    ni[pos] = ident
    return 0


cdef inline void heap_pop(numeric_t *keys, int64_t *ids, Py_ssize_t *size, bint maxfirst) noexcept nogil:
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
        if child + 1 < n and better(keys[child + 1], keys[child], maxfirst):
            child += 1
        if not better(keys[child], key, maxfirst):
            break
        keys[pos] = keys[child]
        ids[pos] = ids[child]
        pos = child
    if n > 0:
        keys[pos] = key
        ids[pos] = ident

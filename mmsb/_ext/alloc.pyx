"""Page allocator: power-of-two size classes carved from large 64-byte aligned arenas, a freelist per class.

Arenas are reserved lazily. Requests above ``max_class`` get their own block. Handles are ints that encode a slot
and a generation, so a stale, freed or unknown handle is detected. ``view`` returns a zero-copy numpy array whose
base keeps the arena (or own block) alive: memory behind a view never dangles, even after ``free`` or after the
allocator is gone. The pure-numpy twin with the same API is ``mmsb._ref.alloc``.

Own blocks of 1 MiB or more go, once nothing references them any more, to a process-wide block cache (up to
``block_cache_limit()`` bytes, oldest evicted first) instead of back to the C library, their pages marked
reclaimable (``MADV_FREE``); a later block of about the same size (at most 1/8 larger) takes one from there, so
reloading a store does not pay the page faults of fresh memory again.
"""
import time

import numpy as np

cimport numpy as cnp
from cpython.ref cimport Py_INCREF

cnp.import_array()

cdef extern from "numpy/arrayobject.h":
    object PyArray_NewFromDescr(void *subtype, cnp.dtype descr, int nd, cnp.npy_intp *dims, cnp.npy_intp *strides,
                                void *data, int flags, object obj)

from cpython.buffer cimport PyBUF_WRITABLE
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint32_t
from libc.stdlib cimport free, realloc

cdef extern from *:
    """
    #include <stdlib.h>
    #ifdef _WIN32
    #include <malloc.h>
    static void *mmsb_aligned_alloc(size_t n) { return _aligned_malloc(n ? n : 64, n >= 65536 ? 4096 : 64); }
    static void mmsb_aligned_free(void *p) { _aligned_free(p); }
    #else
    /* 64-byte aligned; blocks of 64 KiB or more (arenas, large pages) on a 4 KiB boundary, so that their
       page-sized pieces can go to disk with O_DIRECT */
    static void *mmsb_aligned_alloc(size_t n) {
        void *p = NULL;
        if (posix_memalign(&p, n >= 65536 ? 4096 : 64, n ? n : 64) != 0) return NULL;
        return p;
    }
    static void mmsb_aligned_free(void *p) { free(p); }
    #endif
    """
    void *mmsb_aligned_alloc(size_t n) nogil
    void mmsb_aligned_free(void *p) nogil

cdef extern from *:
    """
    /* A tiny test-and-set spin lock: critical sections are a few C statements, never Python code. */
    #if defined(_MSC_VER)
    #include <windows.h>
    static int mmsb_try_lock(volatile long *l) { return InterlockedExchange(l, 1) == 0; }
    static void mmsb_unlock(volatile long *l) { InterlockedExchange(l, 0); }
    static void mmsb_lock_wait(volatile long *l) { while (!mmsb_try_lock(l)) SwitchToThread(); }
    #else
    #include <sched.h>
    static int mmsb_try_lock(volatile long *l) { return __atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE) == 0; }
    static void mmsb_unlock(volatile long *l) { __atomic_store_n(l, 0, __ATOMIC_RELEASE); }
    static void mmsb_lock_wait(volatile long *l) {
        while (!mmsb_try_lock(l)) {
            while (__atomic_load_n(l, __ATOMIC_RELAXED)) sched_yield();
        }
    }
    #endif
    """
    bint mmsb_try_lock(volatile long *l) noexcept nogil
    void mmsb_unlock(volatile long *l) noexcept nogil
    void mmsb_lock_wait(volatile long *l) noexcept nogil

cdef extern from *:
    """
    /* Process-wide cache of freed own blocks: a short FIFO of (pointer, capacity), guarded by a spin lock. */
    #if !defined(_WIN32)
    #include <sys/mman.h>
    #include <unistd.h>
    #endif
    #include <stdint.h>
    #include <string.h>
    #define MMSB_CACHE_SLOTS 256
    #define MMSB_CACHE_MIN ((size_t)1 << 20)
    static char *mmsb_cache_p[MMSB_CACHE_SLOTS];
    static size_t mmsb_cache_n[MMSB_CACHE_SLOTS];
    static int mmsb_cache_len = 0;
    static size_t mmsb_cache_bytes = 0;
    static size_t mmsb_cache_limit = 0;
    static long long mmsb_cache_hits = 0, mmsb_cache_misses = 0, mmsb_cache_evictions = 0;
    static volatile long mmsb_cache_lock = 0;

    /* Mark the whole pages inside [p, p + n) reclaimable: kept as they are unless memory runs short. */
    static void mmsb_cache_lazy_free(char *p, size_t n) {
    #if defined(MADV_FREE)
        uintptr_t ps = (uintptr_t)sysconf(_SC_PAGESIZE);
        uintptr_t a = ((uintptr_t)p + ps - 1) & ~(ps - 1);
        uintptr_t b = ((uintptr_t)p + n) & ~(ps - 1);
        if (b > a) madvise((void *)a, (size_t)(b - a), MADV_FREE);
    #else
        (void)p; (void)n;
    #endif
    }

    static void mmsb_cache_drop(int i) {          /* lock held */
        mmsb_cache_bytes -= mmsb_cache_n[i];
        memmove(mmsb_cache_p + i, mmsb_cache_p + i + 1, (size_t)(mmsb_cache_len - i - 1) * sizeof(char *));
        memmove(mmsb_cache_n + i, mmsb_cache_n + i + 1, (size_t)(mmsb_cache_len - i - 1) * sizeof(size_t));
        mmsb_cache_len--;
    }

    /* A cached block of n to n + n/8 bytes (the smallest such), or NULL; *cap receives its capacity. */
    static char *mmsb_cache_take(size_t n, size_t *cap) {
        char *p = NULL;
        int i, best = -1;
        if (n < MMSB_CACHE_MIN) return NULL;
        mmsb_lock_wait(&mmsb_cache_lock);
        for (i = 0; i < mmsb_cache_len; i++) {
            size_t c = mmsb_cache_n[i];
            if (c >= n && c - n <= n / 8 && (best < 0 || c < mmsb_cache_n[best])) best = i;
        }
        if (best >= 0) {
            p = mmsb_cache_p[best];
            *cap = mmsb_cache_n[best];
            mmsb_cache_drop(best);
            mmsb_cache_hits++;
        } else {
            mmsb_cache_misses++;
        }
        mmsb_unlock(&mmsb_cache_lock);
        return p;
    }

    /* Evict oldest blocks until `need` more bytes fit under the limit (and a slot is free when need > 0);
       the evicted blocks are freed after the lock is released. */
    static void mmsb_cache_shrink(size_t limit, size_t need) {
        char *gone[MMSB_CACHE_SLOTS];
        int k, ng = 0;
        mmsb_lock_wait(&mmsb_cache_lock);
        mmsb_cache_limit = limit;
        while (mmsb_cache_len > 0 && (mmsb_cache_bytes + need > limit ||
                                      (need > 0 && mmsb_cache_len == MMSB_CACHE_SLOTS))) {
            gone[ng++] = mmsb_cache_p[0];
            mmsb_cache_drop(0);
            mmsb_cache_evictions++;
        }
        mmsb_unlock(&mmsb_cache_lock);
        for (k = 0; k < ng; k++) mmsb_aligned_free(gone[k]);
    }

    /* Keep a block nothing references any more: 1 if cached (the caller must not free it), 0 if not. */
    static int mmsb_cache_put(char *p, size_t n) {
        char *gone[MMSB_CACHE_SLOTS];
        int k, ng = 0, kept = 0;
        if (n < MMSB_CACHE_MIN || n > mmsb_cache_limit) return 0;   /* re-checked under the lock */
        mmsb_cache_lazy_free(p, n);               /* before it is visible to another thread */
        mmsb_lock_wait(&mmsb_cache_lock);
        if (n <= mmsb_cache_limit) {
            while (mmsb_cache_len > 0 && (mmsb_cache_bytes + n > mmsb_cache_limit ||
                                          mmsb_cache_len == MMSB_CACHE_SLOTS)) {
                gone[ng++] = mmsb_cache_p[0];
                mmsb_cache_drop(0);
                mmsb_cache_evictions++;
            }
            mmsb_cache_p[mmsb_cache_len] = p;
            mmsb_cache_n[mmsb_cache_len] = n;
            mmsb_cache_len++;
            mmsb_cache_bytes += n;
            kept = 1;
        }
        mmsb_unlock(&mmsb_cache_lock);
        for (k = 0; k < ng; k++) mmsb_aligned_free(gone[k]);
        return kept;
    }

    static void mmsb_cache_counts(long long *out) {
        mmsb_lock_wait(&mmsb_cache_lock);
        out[0] = (long long)mmsb_cache_bytes; out[1] = mmsb_cache_len; out[2] = (long long)mmsb_cache_limit;
        out[3] = mmsb_cache_hits; out[4] = mmsb_cache_misses; out[5] = mmsb_cache_evictions;
        mmsb_unlock(&mmsb_cache_lock);
    }
    """
    char *mmsb_cache_take(size_t n, size_t *cap) noexcept nogil
    int mmsb_cache_put(char *p, size_t n) noexcept nogil
    void mmsb_cache_shrink(size_t limit, size_t need) noexcept nogil
    void mmsb_cache_counts(long long *out) noexcept nogil

cdef enum:
    MAX_CLASSES = 48
    ST_EMPTY = 0
    ST_USED = 1
    ST_FREE = 2

ctypedef struct Entry:
    char *ptr          # start of the block
    int64_t nbytes     # bytes requested by the current allocation
    int32_t next       # next slot in a class freelist or in the empty-slot list, -1 ends it
    uint32_t gen       # generation, part of the handle; bumped on every free
    int32_t region     # arena number, -1 for an own block
    int16_t cls        # size class, -1 for an own block
    uint8_t state      # ST_EMPTY, ST_USED or ST_FREE


cdef class _Region:
    """One arena or own block of 64-byte aligned memory, released (or, when large, handed to the block cache)
    when the last reference goes away."""
    cdef char *ptr
    cdef Py_ssize_t size
    cdef size_t cap
    cdef Py_ssize_t _shape[1]
    cdef Py_ssize_t _strides[1]

    def __cinit__(self, Py_ssize_t size):
        cdef size_t cap = <size_t>size
        self.ptr = mmsb_cache_take(<size_t>size, &cap)
        if self.ptr == NULL:
            self.ptr = <char *>mmsb_aligned_alloc(<size_t>size)
            cap = <size_t>size
        if self.ptr == NULL:
            raise MemoryError(f"cannot allocate {size} bytes")
        self.size = size
        self.cap = cap
        self._shape[0] = size
        self._strides[0] = 1

    def __dealloc__(self):
        if self.ptr != NULL:
            if not mmsb_cache_put(self.ptr, self.cap):
                mmsb_aligned_free(self.ptr)
            self.ptr = NULL

    def __getbuffer__(self, Py_buffer *buf, int flags):
        buf.buf = self.ptr
        buf.obj = self
        buf.len = self.size
        buf.readonly = 0
        buf.itemsize = 1
        buf.format = b"B"
        buf.ndim = 1
        buf.shape = self._shape
        buf.strides = self._strides
        buf.suboffsets = NULL
        buf.internal = NULL

    def __releasebuffer__(self, Py_buffer *buf):
        pass

    def __len__(self):
        return self.size


cdef object _array_over(object region, Py_ssize_t offset, object dt, tuple shp):
    """One writable C-contiguous ndarray over region's memory at offset, whose base keeps region alive."""
    cdef cnp.npy_intp dims[32]
    cdef int nd = len(shp)
    cdef int k
    cdef cnp.dtype descr = <cnp.dtype>dt
    if nd > 32:
        raise ValueError(f"too many dimensions: {nd}")
    for k in range(nd):
        dims[k] = shp[k]
    Py_INCREF(descr)                       # PyArray_NewFromDescr steals a reference to the descriptor
    arr = PyArray_NewFromDescr(<void *>np.ndarray, descr, nd, dims, NULL,
                                   <void *>((<_Region>region).ptr + offset), cnp.NPY_ARRAY_CARRAY, None)
    cnp.set_array_base(arr, region)
    return arr


cdef class Allocator:
    """Size-class page allocator. Thread-safe; see the module docstring."""
    cdef readonly Py_ssize_t arena_bytes, min_class, max_class
    cdef int n_classes
    cdef Entry *entries
    cdef int32_t n_entries, cap_entries, empty_head
    cdef int32_t free_head[MAX_CLASSES]
    cdef int64_t cls_used[MAX_CLASSES]
    cdef int64_t cls_free[MAX_CLASSES]
    cdef list arenas
    cdef dict own
    cdef char *cur
    cdef Py_ssize_t cur_left
    cdef int64_t allocations, frees, bytes_in_use, bytes_reserved, high_water, reuse_hits, lock_waits
    cdef volatile long lock

    def __cinit__(self, Py_ssize_t arena_bytes=64 * 2 ** 20, Py_ssize_t min_class=64,
                  Py_ssize_t max_class=2 ** 20):
        cdef int i
        if min_class < 1 or min_class & (min_class - 1):
            raise ValueError(f"min_class must be a power of two, got {min_class}")
        if max_class < min_class or max_class & (max_class - 1):
            raise ValueError(f"max_class must be a power of two >= min_class, got {max_class}")
        if arena_bytes < max_class:
            raise ValueError(f"arena_bytes ({arena_bytes}) must be at least max_class ({max_class})")
        self.arena_bytes = arena_bytes
        self.min_class = min_class
        self.max_class = max_class
        self.n_classes = 1
        while (min_class << (self.n_classes - 1)) < max_class:
            self.n_classes += 1
        if self.n_classes > MAX_CLASSES:
            raise ValueError("too many size classes")
        for i in range(MAX_CLASSES):
            self.free_head[i] = -1
            self.cls_used[i] = 0
            self.cls_free[i] = 0
        self.empty_head = -1
        self.arenas = []
        self.own = {}
        self.lock = 0

    def __dealloc__(self):
        if self.entries != NULL:
            free(self.entries)

    cdef inline void _acquire(self) noexcept:
        if not mmsb_try_lock(&self.lock):
            with nogil:
                mmsb_lock_wait(&self.lock)
            self.lock_waits += 1

    cdef inline void _release(self) noexcept:
        mmsb_unlock(&self.lock)

    cdef inline int _class_of(self, Py_ssize_t nbytes) noexcept:
        cdef int c = 0
        while (self.min_class << c) < nbytes:
            c += 1
        return c

    cdef int32_t _new_slot(self) noexcept:
        """A slot with no block (reused or appended); -1 when out of memory. Lock held."""
        cdef int32_t slot
        cdef int32_t cap
        cdef Entry *grown
        if self.empty_head >= 0:
            slot = self.empty_head
            self.empty_head = self.entries[slot].next
            return slot
        if self.n_entries == self.cap_entries:
            cap = self.cap_entries * 2 if self.cap_entries else 1024
            grown = <Entry *>realloc(self.entries, <size_t>cap * sizeof(Entry))
            if grown == NULL:
                return -1
            self.entries = grown
            self.cap_entries = cap
        slot = self.n_entries
        self.n_entries += 1
        self.entries[slot].gen = 1
        return slot

    cdef inline void _account(self, int64_t size) noexcept:
        self.allocations += 1
        self.bytes_in_use += size
        if self.bytes_in_use > self.high_water:
            self.high_water = self.bytes_in_use

    cdef int64_t _take(self, int cls, Py_ssize_t nbytes) noexcept:
        """Handle of a block of class cls, or -1 when the current arena is exhausted, -2 when out of memory.
        Lock held."""
        cdef int32_t slot = self.free_head[cls]
        cdef Py_ssize_t size = self.min_class << cls
        cdef Entry *e
        if slot >= 0:
            e = &self.entries[slot]
            self.free_head[cls] = e.next
            self.cls_free[cls] -= 1
            self.reuse_hits += 1
        else:
            if self.cur == NULL or self.cur_left < size:
                return -1
            slot = self._new_slot()
            if slot < 0:
                return -2
            e = &self.entries[slot]
            e.ptr = self.cur
            e.region = <int32_t>(len(self.arenas) - 1)
            e.cls = <int16_t>cls
            self.cur += size
            self.cur_left -= size
        e.state = ST_USED
        e.nbytes = nbytes
        e.next = -1
        self.cls_used[cls] += 1
        self._account(size)
        return (<int64_t>e.gen << 32) | slot

    cdef int64_t _alloc(self, Py_ssize_t nbytes) except -1:
        cdef int cls
        cdef int64_t handle
        cdef int32_t slot
        cdef _Region region
        cdef Entry *e
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        if nbytes <= self.max_class:
            cls = self._class_of(nbytes)
            self._acquire()
            handle = self._take(cls, nbytes)
            self._release()
            if handle >= 0:
                return handle
            while handle == -1:
                region = _Region(self.arena_bytes)
                self._acquire()
                self.arenas.append(region)
                self.bytes_reserved += self.arena_bytes
                self.cur = region.ptr
                self.cur_left = self.arena_bytes
                handle = self._take(cls, nbytes)
                self._release()
            if handle < 0:
                raise MemoryError("cannot grow the allocator's block table")
            return handle
        region = _Region(nbytes)
        self._acquire()
        slot = self._new_slot()
        if slot < 0:
            self._release()
            raise MemoryError("cannot grow the allocator's block table")
        self.own[slot] = region
        e = &self.entries[slot]
        e.ptr = region.ptr
        e.nbytes = nbytes
        e.next = -1
        e.region = -1
        e.cls = -1
        e.state = ST_USED
        self.bytes_reserved += nbytes
        self._account(nbytes)
        handle = (<int64_t>e.gen << 32) | slot
        self._release()
        return handle

    cdef Entry *_lookup(self, int64_t handle) noexcept:
        """The in-use entry of handle, or NULL. Lock held."""
        cdef int64_t slot = handle & 0xFFFFFFFF
        cdef Entry *e
        if handle < 0 or slot >= self.n_entries:
            return NULL
        e = &self.entries[slot]
        if e.state != ST_USED or e.gen != <uint32_t>(handle >> 32):
            return NULL
        return e

    cdef tuple _placement(self, Entry *e, int64_t h):
        """(region, offset) of the in-use entry ``e`` of handle ``h``. Lock held."""
        if e.region >= 0:
            region = self.arenas[e.region]
        else:
            region = self.own[<int32_t>(h & 0xFFFFFFFF)]
        return region, <Py_ssize_t>(e.ptr - (<_Region>region).ptr)

    cdef int _free(self, int64_t handle) except -1:
        cdef Entry *e
        cdef int32_t slot = <int32_t>(handle & 0xFFFFFFFF)
        cdef object region = None
        cdef int cls
        self._acquire()
        e = self._lookup(handle)
        if e == NULL:
            self._release()
            raise ValueError(f"unknown or already freed handle {handle}")
        e.gen += 1
        self.frees += 1
        if e.cls >= 0:
            cls = e.cls
            e.state = ST_FREE
            e.next = self.free_head[cls]
            self.free_head[cls] = slot
            self.cls_used[cls] -= 1
            self.cls_free[cls] += 1
            self.bytes_in_use -= self.min_class << cls
        else:
            e.state = ST_EMPTY
            e.ptr = NULL
            e.next = self.empty_head
            self.empty_head = slot
            self.bytes_in_use -= e.nbytes
            self.bytes_reserved -= e.nbytes
            region = self.own.pop(slot)
        self._release()
        return 0

    def alloc(self, nbytes):
        """Reserve a block of at least ``nbytes`` bytes (64-byte aligned) and return its handle (an int)."""
        return self._alloc(nbytes)

    def free(self, handle):
        """Release a block; a freed, stale or unknown handle raises ValueError. Existing views stay valid."""
        try:
            h = int(handle)
        except (TypeError, ValueError):
            raise ValueError(f"unknown handle {handle!r}") from None
        if h < 0 or h >= 2 ** 63:
            raise ValueError(f"unknown handle {handle!r}")
        self._free(h)

    def view(self, handle, dtype, shape):
        """A writable, C-contiguous, zero-copy array over the block; it keeps the memory alive."""
        cdef Entry *e
        cdef Py_ssize_t offset, nbytes
        dt = np.dtype(dtype)
        if dt.hasobject:
            raise TypeError("object dtypes cannot be placed in allocator blocks")
        if type(shape) is tuple and all(type(s) is int for s in shape):
            shp = shape
        else:
            shp = (int(shape),) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)
        if any(s < 0 for s in shp):
            raise ValueError(f"negative dimension in shape {shp}")
        count = 1
        for s in shp:
            count *= s
        try:
            h = int(handle)
        except (TypeError, ValueError):
            raise ValueError(f"unknown handle {handle!r}") from None
        self._acquire()
        e = self._lookup(h) if 0 <= h < 2 ** 63 else NULL
        if e == NULL:
            self._release()
            raise ValueError(f"unknown or freed handle {handle!r}")
        nbytes = e.nbytes
        region, offset = self._placement(e, h)
        self._release()
        if count * dt.itemsize > nbytes:
            raise ValueError(f"shape {shp} of {dt} needs {count * dt.itemsize} bytes, block has {nbytes}")
        return _array_over(region, offset, dt, shp)

    def alloc_view(self, Py_ssize_t nbytes, dtype, tuple shape):
        """``alloc(nbytes)`` and ``view(handle, dtype, shape)`` in one call: returns ``(handle, array)``.

        ``dtype`` is a numpy dtype, ``shape`` a tuple of ints; the view must fit in ``nbytes`` (checked before
        anything is allocated).
        """
        cdef Py_ssize_t offset
        cdef int64_t h
        if not isinstance(dtype, np.dtype):
            dtype = np.dtype(dtype)
        if dtype.hasobject:
            raise TypeError("object dtypes cannot be placed in allocator blocks")
        count = 1                                   # Python ints: no overflow on huge shapes
        for d in shape:
            if d < 0:
                raise ValueError(f"negative dimension in shape {shape}")
            count *= int(d)
        if count * dtype.itemsize > nbytes:
            raise ValueError(f"shape {shape} of {dtype} needs {count * dtype.itemsize} bytes, block has {nbytes}")
        h = self._alloc(nbytes)
        try:
            self._acquire()
            region, offset = self._placement(self._lookup(h), h)
            self._release()
            return h, _array_over(region, offset, dtype, shape)
        except BaseException:
            self._free(h)
            raise

    def stats(self):
        """Counters and per-class figures (class size -> in_use, free, bytes_in_use, bytes_reserved)."""
        cdef int c
        cdef int64_t size
        cdef int64_t used[MAX_CLASSES]
        cdef int64_t freed[MAX_CLASSES]
        cdef int64_t counters[8]
        self._acquire()
        for c in range(self.n_classes):
            used[c] = self.cls_used[c]
            freed[c] = self.cls_free[c]
        counters[0] = self.allocations
        counters[1] = self.frees
        counters[2] = self.bytes_in_use
        counters[3] = self.bytes_reserved
        counters[4] = self.high_water
        counters[5] = self.reuse_hits
        counters[6] = self.lock_waits
        counters[7] = len(self.arenas)
        n_own = len(self.own)
        self._release()
        classes = {}
        for c in range(self.n_classes):
            size = self.min_class << c
            classes[size] = {"in_use": used[c], "free": freed[c], "bytes_in_use": used[c] * size,
                             "bytes_reserved": (used[c] + freed[c]) * size}
        return {"allocations": counters[0], "frees": counters[1], "bytes_in_use": counters[2],
                "bytes_reserved": counters[3], "high_water": counters[4], "reuse_hits": counters[5],
                "lock_waits": counters[6], "arenas": counters[7], "own_blocks": n_own, "classes": classes}

    def bench_cycle(self, Py_ssize_t n, Py_ssize_t nbytes):
        """Run n alloc+free cycles of nbytes in C and return nanoseconds per cycle."""
        cdef Py_ssize_t i
        cdef int64_t h
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")
        self._free(self._alloc(nbytes))
        t0 = time.perf_counter_ns()
        for i in range(n):
            h = self._alloc(nbytes)
            self._free(h)
        return (time.perf_counter_ns() - t0) / n


def block_cache_limit(nbytes=None):
    """The block cache's limit in bytes; with ``nbytes``, set it first (0 turns the cache off and empties it;
    lowering it evicts the oldest blocks). Default: ``MMSB_BLOCK_CACHE`` as set by ``mmsb.memory``."""
    cdef long long c[6]
    if nbytes is not None:
        n = int(nbytes)
        if n < 0:
            raise ValueError(f"block cache limit must be >= 0, got {nbytes!r}")
        mmsb_cache_shrink(<size_t>n, 0)
    mmsb_cache_counts(c)
    return int(c[2])


def block_cache_clear():
    """Free every cached block (the limit stays)."""
    cdef long long c[6]
    mmsb_cache_counts(c)
    mmsb_cache_shrink(0, 0)
    mmsb_cache_shrink(<size_t>c[2], 0)


def block_cache_stats():
    """``{"bytes", "blocks", "limit", "hits", "misses", "evictions"}`` of the process-wide block cache."""
    cdef long long c[6]
    mmsb_cache_counts(c)
    return {"bytes": int(c[0]), "blocks": int(c[1]), "limit": int(c[2]), "hits": int(c[3]), "misses": int(c[4]),
            "evictions": int(c[5])}

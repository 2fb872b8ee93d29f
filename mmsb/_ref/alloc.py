"""Pure-numpy twin of ``mmsb._ext.alloc``: the same size-class allocator, arenas held as numpy byte arrays.

Views are slices of the arena (or own-block) array, so their base keeps that memory alive.
"""
from __future__ import annotations

import threading
import time

import numpy as np

__all__ = ["Allocator", "block_cache_clear", "block_cache_limit", "block_cache_stats"]

_EMPTY, _USED, _FREE = 0, 1, 2
_ALIGN = 64


def _aligned_bytes(nbytes: int) -> np.ndarray:
    """A 64-byte aligned uint8 array of nbytes."""
    raw = np.empty(max(nbytes, 1) + _ALIGN, dtype=np.uint8)
    start = (-raw.ctypes.data) % _ALIGN
    return raw[start:start + nbytes]


class Allocator:
    """Size-class page allocator (see ``mmsb._ext.alloc.Allocator``). Thread-safe."""

    def __init__(self, arena_bytes: int = 64 * 2 ** 20, min_class: int = 64, max_class: int = 2 ** 20):
        if min_class < 1 or min_class & (min_class - 1):
            raise ValueError(f"min_class must be a power of two, got {min_class}")
        if max_class < min_class or max_class & (max_class - 1):
            raise ValueError(f"max_class must be a power of two >= min_class, got {max_class}")
        if arena_bytes < max_class:
            raise ValueError(f"arena_bytes ({arena_bytes}) must be at least max_class ({max_class})")
        self.arena_bytes = arena_bytes
        self.min_class = min_class
        self.max_class = max_class
        self._n_classes = (max_class // min_class).bit_length()
        self._lock = threading.Lock()
        # per slot: [state, gen, region (arena number or -1), offset, cls (-1 own), nbytes]
        self._slots: list[list[int]] = []
        self._empty: list[int] = []
        self._freelists: list[list[int]] = [[] for _ in range(self._n_classes)]
        self._used = [0] * self._n_classes
        self._arenas: list[np.ndarray] = []
        self._own: dict[int, np.ndarray] = {}
        self._cur_off = 0
        self._cur_left = 0
        self._counters = dict.fromkeys(("allocations", "frees", "bytes_in_use", "bytes_reserved", "high_water",
                                        "reuse_hits", "lock_waits"), 0)

    def _acquire(self) -> None:
        if not self._lock.acquire(blocking=False):
            self._lock.acquire()
            self._counters["lock_waits"] += 1

    def _class_of(self, nbytes: int) -> int:
        c = 0
        while (self.min_class << c) < nbytes:
            c += 1
        return c

    def _new_slot(self) -> int:
        if self._empty:
            return self._empty.pop()
        self._slots.append([_EMPTY, 1, -1, 0, -1, 0])
        return len(self._slots) - 1

    def _account(self, size: int) -> None:
        c = self._counters
        c["allocations"] += 1
        c["bytes_in_use"] += size
        c["high_water"] = max(c["high_water"], c["bytes_in_use"])

    def alloc(self, nbytes: int) -> int:
        """Reserve a block of at least ``nbytes`` bytes (64-byte aligned) and return its handle (an int)."""
        nbytes = int(nbytes)
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        if nbytes > self.max_class:
            region = _aligned_bytes(nbytes)
            self._acquire()
            try:
                slot = self._new_slot()
                self._own[slot] = region
                entry = self._slots[slot]
                entry[0], entry[2], entry[3], entry[4], entry[5] = _USED, -1, 0, -1, nbytes
                self._counters["bytes_reserved"] += nbytes
                self._account(nbytes)
                return (entry[1] << 32) | slot
            finally:
                self._lock.release()
        cls = self._class_of(nbytes)
        size = self.min_class << cls
        self._acquire()
        try:
            if self._freelists[cls]:
                slot = self._freelists[cls].pop()
                self._counters["reuse_hits"] += 1
            else:
                if self._cur_left < size:
                    self._arenas.append(_aligned_bytes(self.arena_bytes))
                    self._counters["bytes_reserved"] += self.arena_bytes
                    self._cur_off, self._cur_left = 0, self.arena_bytes
                slot = self._new_slot()
                entry = self._slots[slot]
                entry[2], entry[3], entry[4] = len(self._arenas) - 1, self._cur_off, cls
                self._cur_off += size
                self._cur_left -= size
            entry = self._slots[slot]
            entry[0], entry[5] = _USED, nbytes
            self._used[cls] += 1
            self._account(size)
            return (entry[1] << 32) | slot
        finally:
            self._lock.release()

    def _lookup(self, handle) -> list[int]:
        try:
            h = int(handle)
        except (TypeError, ValueError):
            raise ValueError(f"unknown handle {handle!r}") from None
        slot = h & 0xFFFFFFFF
        if h < 0 or h >= 2 ** 63 or slot >= len(self._slots):
            raise ValueError(f"unknown or freed handle {handle!r}")
        entry = self._slots[slot]
        if entry[0] != _USED or entry[1] != h >> 32:
            raise ValueError(f"unknown or freed handle {handle!r}")
        return entry

    def free(self, handle) -> None:
        """Release a block; a freed, stale or unknown handle raises ValueError. Existing views stay valid."""
        self._acquire()
        try:
            entry = self._lookup(handle)
            slot = int(handle) & 0xFFFFFFFF
            entry[1] += 1
            self._counters["frees"] += 1
            cls = entry[4]
            if cls >= 0:
                entry[0] = _FREE
                self._freelists[cls].append(slot)
                self._used[cls] -= 1
                self._counters["bytes_in_use"] -= self.min_class << cls
            else:
                entry[0] = _EMPTY
                self._counters["bytes_in_use"] -= entry[5]
                self._counters["bytes_reserved"] -= entry[5]
                del self._own[slot]
                self._empty.append(slot)
        finally:
            self._lock.release()

    def view(self, handle, dtype, shape) -> np.ndarray:
        """A writable, C-contiguous, zero-copy array over the block; it keeps the memory alive."""
        dt = np.dtype(dtype)
        if dt.hasobject:
            raise TypeError("object dtypes cannot be placed in allocator blocks")
        shp = (int(shape),) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)
        if any(s < 0 for s in shp):
            raise ValueError(f"negative dimension in shape {shp}")
        count = 1
        for s in shp:
            count *= s
        self._acquire()
        try:
            entry = self._lookup(handle)
            region = self._arenas[entry[2]] if entry[4] >= 0 else self._own[int(handle) & 0xFFFFFFFF]
            offset, nbytes = entry[3], entry[5]
        finally:
            self._lock.release()
        need = count * dt.itemsize
        if need > nbytes:
            raise ValueError(f"shape {shp} of {dt} needs {need} bytes, block has {nbytes}")
        return region[offset:offset + need].view(dt).reshape(shp)

    def alloc_view(self, nbytes: int, dtype, shape: tuple) -> tuple[int, np.ndarray]:
        """``alloc(nbytes)`` and ``view(handle, dtype, shape)`` in one call: returns ``(handle, array)``.

        ``dtype`` is a numpy dtype, ``shape`` a tuple of ints; the view must fit in ``nbytes`` (checked before
        anything is allocated).
        """
        dt = np.dtype(dtype)
        if dt.hasobject:
            raise TypeError("object dtypes cannot be placed in allocator blocks")
        shp = tuple(int(s) for s in shape)
        if any(s < 0 for s in shp):
            raise ValueError(f"negative dimension in shape {shp}")
        count = 1
        for s in shp:
            count *= s
        if count * dt.itemsize > nbytes:
            raise ValueError(f"shape {shp} of {dt} needs {count * dt.itemsize} bytes, block has {nbytes}")
        h = self.alloc(nbytes)
        try:
            return h, self.view(h, dt, shp)
        except BaseException:
            self.free(h)
            raise

    def stats(self) -> dict:
        """Counters and per-class figures (class size -> in_use, free, bytes_in_use, bytes_reserved)."""
        self._acquire()
        try:
            out = dict(self._counters)
            out["arenas"] = len(self._arenas)
            out["own_blocks"] = len(self._own)
            classes = {}
            for c in range(self._n_classes):
                size = self.min_class << c
                used, free = self._used[c], len(self._freelists[c])
                classes[size] = {"in_use": used, "free": free, "bytes_in_use": used * size,
                                 "bytes_reserved": (used + free) * size}
            out["classes"] = classes
            return out
        finally:
            self._lock.release()

    def bench_cycle(self, n: int, nbytes: int) -> float:
        """Run n alloc+free cycles of nbytes and return nanoseconds per cycle (a Python loop here)."""
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")
        self.free(self.alloc(nbytes))
        t0 = time.perf_counter_ns()
        for _ in range(n):
            self.free(self.alloc(nbytes))
        return (time.perf_counter_ns() - t0) / n


_CACHE_LIMIT = [0]


def block_cache_limit(nbytes: int | None = None) -> int:
    """Same API as ``mmsb._ext.alloc.block_cache_limit``; the twin keeps no block cache (numpy owns its memory),
    so the limit is only recorded."""
    if nbytes is not None:
        n = int(nbytes)
        if n < 0:
            raise ValueError(f"block cache limit must be >= 0, got {nbytes!r}")
        _CACHE_LIMIT[0] = n
    return _CACHE_LIMIT[0]


def block_cache_clear() -> None:
    """Nothing to free: the twin keeps no block cache."""


def block_cache_stats() -> dict[str, int]:
    """The same keys as the compiled allocator's; always empty here."""
    return {"bytes": 0, "blocks": 0, "limit": _CACHE_LIMIT[0], "hits": 0, "misses": 0, "evictions": 0}

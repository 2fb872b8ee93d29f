"""Reusable arrays for the old values that only one commit needs.

A whole-page write or a full recompute keeps the page's values from before the commit: its undo step restores
them if the commit fails, and its :class:`~mmsb.propagate.Change` hands them to the pages downstream. Once the
commit is over nothing needs them (unless something keeps the Change: a deferred wave queues it). A fresh array
of a large page costs a page fault per 4 KiB on first touch, as much as the copy itself, so the commit pipeline
lends its :class:`UndoLog <mmsb.propagate.UndoLog>` a :class:`ScratchPool`: arrays that stay faulted in and are
lent again.

An array is lent again only while nothing but the pool references it (CPython reference counts): a Change queued
by a deferred wave, an undo step of a commit still in flight (a nested or a concurrent one), a view of it or a
traceback that holds one all keep it from being lent, and the caller then gets a fresh array. Reuse can
therefore never overwrite old values that anyone can still read.
"""
from __future__ import annotations

import sys
import threading

import numpy as np

MAX_BYTES = 1 << 28
"""A pool keeps at most this many bytes of arrays (larger requests get fresh arrays, which are not kept)."""

PER_SHAPE = 4
"""A pool keeps at most this many arrays of one shape and dtype (one per page a commit copies at once)."""


def _refcounts(arrays: list) -> list[int]:
    """The reference counts of ``arrays``' items as seen from here (the list, the loop variable, the call)."""
    out = []
    for a in arrays:
        out.append(sys.getrefcount(a))
    return out


_IDLE = _refcounts([np.empty(0)])[0] if hasattr(sys, "getrefcount") else -1
"""The count of an array that only the pool's list references (-1: no reference counts here, never reuse)."""


class ScratchPool:
    """Uninitialised arrays lent by shape and dtype, each again once nothing but the pool references it."""

    def __init__(self, max_bytes: int = MAX_BYTES, per_shape: int = PER_SHAPE) -> None:
        self.max_bytes = max_bytes
        self.per_shape = per_shape
        self._arrays: dict[tuple, list[np.ndarray]] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def take(self, like: np.ndarray) -> np.ndarray:
        """An uninitialised C-contiguous array of ``like``'s shape and dtype that nobody else references."""
        key = (like.shape, like.dtype)
        with self._lock:
            arrays = self._arrays.get(key)
            if arrays:
                for a, refs in zip(arrays, _refcounts(arrays)):
                    if refs <= _IDLE:
                        return a
            out = np.empty(like.shape, dtype=like.dtype)
            if self._bytes + out.nbytes <= self.max_bytes and (arrays is None or len(arrays) < self.per_shape):
                self._arrays.setdefault(key, []).append(out)
                self._bytes += out.nbytes
            return out

    @property
    def nbytes(self) -> int:
        """Bytes the pool keeps."""
        return self._bytes

    def clear(self) -> None:
        """Drop every array (those still lent stay valid for whoever holds them)."""
        with self._lock:
            self._arrays.clear()
            self._bytes = 0

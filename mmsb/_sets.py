"""Sorted-set helpers for int64 position arrays (sort + diff; several times faster than np.unique here)."""
from __future__ import annotations

import numpy as np


def unique(a: np.ndarray) -> np.ndarray:
    """Sorted unique values of a 1-D integer array."""
    if a.size < 2:
        return np.array(a, copy=True)
    s = np.sort(a)
    keep = np.empty(s.size, dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def unique_first(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique values and, for each, the position of its first occurrence in ``a``."""
    order = np.argsort(a, kind="stable")
    s = a[order]
    keep = np.empty(s.size, dtype=bool)
    if s.size:
        keep[0] = True
        np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep], order[keep]

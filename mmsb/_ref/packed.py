"""Pure-numpy twin of :mod:`mmsb._ext.packed` (same API, same results)."""
from __future__ import annotations

import numpy as np

from mmsb._ref.merge import _binop, _check_op


def pack(values: np.ndarray, mask: np.ndarray, out: np.ndarray) -> int:
    """Write ``values[mask]`` into ``out`` (at least ``count_nonzero(mask)`` entries); returns that count."""
    m = np.asarray(mask).view(np.bool_)
    if m.shape[0] != values.shape[0]:
        raise ValueError(f"values has {values.shape[0]} entries but mask has {m.shape[0]}")
    total = int(np.count_nonzero(m))
    if out.shape[0] < total:
        raise ValueError(f"out has {out.shape[0]} entries, {total} are needed")
    out[:total] = values[m]
    return total


def merge_packed(page: np.ndarray, mask: np.ndarray, packed: np.ndarray, op: int) -> None:
    """In place: for the i-th set entry of ``mask`` at position p, ``page[p] = op(page[p], packed[i])``."""
    code = _check_op(op)
    m = np.asarray(mask).view(np.bool_)
    if m.shape[0] != page.shape[0]:
        raise ValueError(f"page has {page.shape[0]} entries but mask has {m.shape[0]}")
    pos = np.flatnonzero(m)
    if pos.size != packed.shape[0]:
        raise ValueError(f"mask selects {pos.size} entries but {packed.shape[0]} values were given")
    if pos.size:
        page[pos] = _binop(code, page[pos], packed)

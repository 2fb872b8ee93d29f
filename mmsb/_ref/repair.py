"""Pure-numpy twins of the matrix-page kernels in ``mmsb._ext.repair`` (same API, same results).

A matrix is given in CSR form by ``indptr`` / ``indices`` / ``data`` (and, for ``repair``, its transpose); a
semiring by its op codes (those of ``mmsb._ops``) and its ``zero``. Bool arrays are handled as uint8 views; the
values ``repair`` and ``update`` give back are in the dtype of the array given (bool stays bool).
"""
from __future__ import annotations

import numpy as np

from mmsb._ops import OP_MAX, OP_MIN
from mmsb._ref.spmv import _UFUNCS, closure, spmv
from mmsb._validate import locate_args, reach_args, reach_build_args, repair_args

__all__ = ["assign", "locate", "reach", "reach_build", "repair", "set_parallel_min", "set_threads", "threads",
           "update"]

OK = 0
TOO_LARGE = 4
NAN_ENTRY = 5


def _expand(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """The positions ``starts[k] .. starts[k] + lens[k] - 1`` of every segment, concatenated."""
    total = int(lens.sum())
    return np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(total, dtype=np.int64)


def _nan(a: np.ndarray) -> np.ndarray:
    """Where ``a`` is NaN (nowhere for integers)."""
    return np.isnan(a) if a.dtype.kind == "f" else np.zeros(a.shape, dtype=bool)


def _as(values: np.ndarray, dtype) -> np.ndarray:
    """Values computed on the kernels' view returned in the dtype given (bool, viewed as uint8, stays bool)."""
    return values.view(dtype) if dtype == np.bool_ and values.dtype == np.uint8 else values


def _bad_rows(indptr: np.ndarray, rows: np.ndarray, nnz: int) -> bool:
    n = indptr.size - 1
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        return True
    s, e = indptr[rows], indptr[rows + 1]
    return bool(((s < 0) | (e > nnz) | (s > e)).any())


def _find(indptr, indices, data, rows, cols, has_free, free_val):
    """Positions of the entries (a live one first, else the last free slot of the column; -1 when none)."""
    k = rows.size
    pos = np.full(k, -1, dtype=np.int64)
    starts = indptr[rows]
    lens = indptr[rows + 1] - starts
    if not k or not int(lens.sum()):
        return pos
    offs = _expand(starts, lens)
    owner = np.repeat(np.arange(k, dtype=np.int64), lens)
    hit = indices[offs] == np.repeat(cols, lens)
    if has_free:
        spare = hit & (data[offs] == free_val)
        pos[owner[spare]] = offs[spare]         # (of several, the last: fancy assignment keeps the last)
        hit &= ~spare
    live_owner, live_offs = owner[hit], offs[hit]
    first = np.ones(live_owner.size, dtype=bool)
    first[1:] = live_owner[1:] != live_owner[:-1]
    pos[live_owner[first]] = live_offs[first]
    return pos


def locate(indptr, indices, data, rows, cols, zero, free=None):
    """``(values, positions)`` of the entries ``(rows[k], cols[k])`` of a CSR matrix (see the compiled one)."""
    indptr, indices, data, rows, cols, consts, has_free = locate_args(indptr, indices, data, rows, cols, zero, free)
    if _bad_rows(indptr, rows, indices.size):
        raise ValueError("matrix indices/indptr or entry keys out of range")
    pos = _find(indptr, indices, data, rows, cols, has_free, consts[1])
    out = np.full(rows.size, consts[0], dtype=data.dtype)
    f = pos >= 0
    out[f] = data[pos[f]]
    return out, pos


def _op(code, a, b):
    """``code(a, b)`` elementwise as the kernels compute it (min/max: ``b`` when strictly better, else ``a``)."""
    if code == OP_MIN:
        return np.where(b < a, b, a)
    if code == OP_MAX:
        return np.where(b > a, b, a)
    with np.errstate(all="ignore"):
        return _UFUNCS[code](a, b).astype(a.dtype, copy=False)


def _region(indptr_t, indices_t, data_t, y, seeds, mul_op, zero, limit):
    """``seeds`` and every value tight through a member (``y[i] == A[i, j] ⊗ y[j]``, ``y[j] != zero``),
    transitively; None once larger than ``limit``."""
    n = y.size
    mark = np.zeros(n, dtype=bool)
    mark[seeds] = True
    frontier = seeds
    size = seeds.size
    while frontier.size:
        if 0 <= limit < size:
            return None
        frontier = frontier[y[frontier] != zero]
        starts = indptr_t[frontier]
        lens = indptr_t[frontier + 1] - starts
        offs = _expand(starts, lens)
        tgt = indices_t[offs]
        if tgt.size and (tgt.min() < 0 or tgt.max() >= n):
            raise ValueError("matrix indices/indptr or entry keys out of range")
        w = data_t[offs]
        tight = (w != zero) & (_op(mul_op, w, np.repeat(y[frontier], lens)) == y[tgt])
        tgt = np.unique(tgt[tight & ~mark[tgt]])
        mark[tgt] = True
        size += tgt.size
        frontier = tgt
    if 0 <= limit < size:
        return None
    return np.flatnonzero(mark).astype(np.int64)


def repair(indptr, indices, data, indptr_t, indices_t, data_t, y, src, keys, old, add_op, mul_op, zero,
           free=None, limit=-1, mark=None, old_out=None):
    """Repair the closure ``y = src ⊕ A ⊗ y`` after the entries ``keys`` of A changed (see the compiled one)."""
    out_dt = getattr(y, "dtype", None)
    (indptr, indices, data, indptr_t, indices_t, data_t, y, src, keys, old, consts, has_free, mark,
     old_out) = repair_args(indptr, indices, data, indptr_t, indices_t, data_t, y, src, keys, old, add_op, mul_op,
                            zero, free, mark, old_out)
    n = y.size
    z = consts[0]
    if keys.size and (keys.min() < 0 or keys.max() >= n * n):
        raise ValueError("matrix indices/indptr or entry keys out of range")
    rows, cols = np.divmod(keys, n) if n else (keys, keys)
    if _bad_rows(indptr, rows, indices.size):
        raise ValueError("matrix indices/indptr or entry keys out of range")
    pos = _find(indptr, indices, data, rows, cols, has_free, consts[1])
    new = np.where(pos >= 0, data[np.maximum(pos, 0)] if data.size else z, z).astype(y.dtype)
    if new.dtype.kind == "f" and np.isnan(new).any():
        return NAN_ENTRY, None, None, 0, False
    better = _op(add_op, old, new) == new
    yc = y[cols]
    tight = (yc != z) & (old != z) & (_op(mul_op, old, yc) == y[rows])
    region = np.empty(0, dtype=np.int64)
    if (tight & ~better).any():
        region = _region(indptr_t, indices_t, data_t, y, np.unique(rows[tight]), mul_op, z, limit)
        if region is None:
            return TOO_LARGE, None, None, 0, False
    before = y.copy()
    if region.size:
        y[region] = src[region]
        pulled = np.empty_like(y)
        spmv(indptr, indices, data, y, pulled, add_op, mul_op, z, rows=region)
        y[region] = _op(add_op, y[region], pulled[region])
    frontier = np.unique(np.concatenate([region, cols[better]]))
    closure(indptr_t, indices_t, data_t, y, frontier, add_op, mul_op, z)
    moved = (y != before) & ~(_nan(y) & _nan(before))
    idx = np.flatnonzero(moved).astype(np.int64)
    old_out[idx] = before[idx]
    nonfinite = bool(y.dtype.kind == "f" and not np.isfinite(y[idx]).all())
    return OK, idx, _as(before[idx], out_dt), int(region.size), nonfinite


def assign(indptr, indices, data, ncols, rows, cols, vals, present, pos=None, free=None):
    """Set entries in place, free slots taken for insertions (see the compiled one)."""
    from mmsb._validate import assign_args

    indptr, indices, data, rows, cols, vals, present, pos, located, consts, has_free = assign_args(
        indptr, indices, data, rows, cols, vals, present, pos, free)
    present = present.view(np.bool_)
    free_val = consts[1]
    if _bad_rows(indptr, rows, indices.size) or (cols.size and (cols.min() < 0 or cols.max() >= ncols)) \
            or (located and pos.size and (pos.min() < -1 or pos.max() >= indices.size)):
        raise ValueError("matrix indices/indptr or entry keys out of range")
    if not located:
        pos = _find(indptr, indices, data, rows, cols, has_free, free_val)
    miss = np.zeros(rows.size, dtype=bool)
    found = pos >= 0
    keep = found & present
    data[pos[keep]] = vals[keep]
    gone = found & ~present
    if has_free:
        data[pos[gone]] = free_val
    else:
        miss |= gone
    claimed = False
    for k in np.flatnonzero(~found & present):
        r = rows[k]
        slots = np.flatnonzero(data[indptr[r]:indptr[r + 1]] == free_val) if has_free else ()
        if len(slots):
            p = indptr[r] + slots[0]
            indices[p] = cols[k]
            data[p] = vals[k]
            claimed = True
        else:
            miss[k] = True
    return int(miss.sum()), claimed, pos, miss


def update(indptr, indices, data, ncols, keys, vals, op, zero, free=None, indptr_t=None, indices_t=None,
           data_t=None):
    """Merge entries into a CSR matrix and its transpose, in place (see the compiled one)."""
    from mmsb._validate import update_args

    out_dt = getattr(data, "dtype", None)
    (indptr, indices, data, indptr_t, indices_t, data_t, has_t, keys, vals, nrows, consts,
     has_free) = update_args(indptr, indices, data, ncols, keys, vals, op, zero, free, indptr_t, indices_t, data_t)
    z, free_val = consts
    if keys.size and (keys.min() < 0 or keys.max() >= nrows * ncols):
        raise ValueError("matrix indices/indptr or entry keys out of range")
    rows, cols = np.divmod(keys, ncols) if ncols else (keys, keys)
    if _bad_rows(indptr, rows, indices.size):
        raise ValueError("matrix indices/indptr or entry keys out of range")
    pos = _find(indptr, indices, data, rows, cols, has_free, free_val)
    old = np.where(pos >= 0, data[np.maximum(pos, 0)] if data.size else z, z).astype(data.dtype)
    new = vals.copy() if op < 0 else _op(op, old, vals)
    keep = (new != old) & ~(_nan(new) & _nan(old))
    if not keep.any():
        return None
    idx, rows, cols, old, new, pos = keys[keep], rows[keep], cols[keep], old[keep], new[keep], pos[keep]
    present = new != z
    stored = new[present & ~(has_free & (new == free_val))]
    real = stored.astype(np.float64)
    num = real[~np.isnan(real)]
    stats = (float(num.min()) if num.size else np.inf, float(num.max()) if num.size else -np.inf,
             bool(num.size < real.size), bool(np.isinf(num).any()), int(real.size))
    if has_t and _bad_rows(indptr_t, cols, indices_t.size):     # (checked before A changes)
        raise ValueError("matrix indices/indptr or entry keys out of range")
    misses, claimed, _, miss = assign(indptr, indices, data, ncols, rows, cols, new, present, pos,
                                      free_val if has_free else None)
    misses_t, claimed_t, pos_t, miss_t = 0, False, np.full(idx.size, -1, dtype=np.int64), np.zeros(idx.size, bool)
    if has_t:
        misses_t, claimed_t, pos_t, miss_t = assign(indptr_t, indices_t, data_t, nrows, cols, rows, new, present,
                                                    None, free_val if has_free else None)
    return (idx, rows, cols, _as(old, out_dt), _as(new, out_dt), present, pos, pos_t, miss, miss_t, misses, claimed,
            misses_t, claimed_t, stats)


def _unreached(level: np.ndarray) -> int:
    """The level of an unreached vertex: the largest value of the level dtype."""
    return int(np.iinfo(level.dtype).max)


def _out_edges(indptr_t, indices_t, data_t, frontier, n):
    """``(tails, heads)`` of the edges (True entries of the transpose's rows ``frontier``), indices checked."""
    if frontier.size and _bad_rows(indptr_t, frontier, indices_t.size):
        raise ValueError("matrix indices/indptr or entry keys out of range")
    starts = indptr_t[frontier]
    lens = indptr_t[frontier + 1] - starts
    offs = _expand(starts, lens)
    heads = indices_t[offs].astype(np.int64)
    if heads.size and (heads.min() < 0 or heads.max() >= n):
        raise ValueError("matrix indices/indptr or entry keys out of range")
    live = data_t[offs] != 0
    return np.repeat(frontier, lens)[live], heads[live]


def _levels(indptr_t, indices_t, data_t, src, level):
    """Breadth first from the sources, one level at a time: the hop counts into ``level``."""
    n = src.size
    lev = np.full(n, _unreached(level), dtype=level.dtype)
    frontier = np.flatnonzero(src).astype(np.int64)
    lev[frontier] = 0
    depth = 0
    while frontier.size:
        depth += 1
        _, heads = _out_edges(indptr_t, indices_t, data_t, frontier, n)
        heads = np.unique(heads[lev[heads] == _unreached(level)])
        lev[heads] = depth
        frontier = heads
    level[:] = lev


def _set_reached(y, level):
    """y = (level reached); the sorted positions that changed and their values before."""
    now = (level != _unreached(level)).view(np.uint8)
    idx = np.flatnonzero(now != y).astype(np.int64)
    olds = y[idx].copy()
    y[idx] = now[idx]
    return idx, olds


def reach_build(indptr_t, indices_t, data_t, y, src, level):
    """Build the levels of the reachability closure from scratch (see the compiled one)."""
    indptr_t, indices_t, data_t, y, src, level = reach_build_args(indptr_t, indices_t, data_t, y, src, level)
    lev = level.copy()
    _levels(indptr_t, indices_t, data_t, src, lev)
    level[:] = lev
    return _set_reached(y, level)


def _affected(indptr_t, indices_t, data_t, src, level):
    """The vertices whose old level no chain of supports from a source holds up any more: a vertex is held up
    when it is a source, or when a held-up in-neighbour (under the new entries) sits one level below it."""
    n = src.size
    inf = _unreached(level)
    finite = level != inf
    held = src.astype(bool)
    order = np.argsort(level, kind="stable")
    bounds = np.searchsorted(level[order], np.arange(int(level[finite].max()) + 2 if finite.any() else 0))
    for depth in range(bounds.size - 1):
        at = order[bounds[depth]:bounds[depth + 1]]
        frontier = at[held[at]].astype(np.int64)
        _, heads = _out_edges(indptr_t, indices_t, data_t, frontier, n)
        held[heads[level[heads] == depth + 1]] = True
    return np.flatnonzero(finite & ~held)


def reach(indptr, indices, data, indptr_t, indices_t, data_t, y, src, level, keys, old, points, mark=None,
          old_out=None):
    """Repair the reachability closure and its levels after entries and sources changed (see the compiled one):
    here the affected vertices are found level by level and the levels rebuilt by a breadth-first search."""
    (indptr, indices, data, indptr_t, indices_t, data_t, y, src, level, keys, old, points, mark,
     old_out) = reach_args(indptr, indices, data, indptr_t, indices_t, data_t, y, src, level, keys, old, points,
                           mark, old_out)
    n = y.size
    if (keys.size and (keys.min() < 0 or keys.max() >= n * n)) or \
            (points.size and (points.min() < 0 or points.max() >= n)):
        raise ValueError("matrix indices/indptr or entry keys out of range")
    if _bad_rows(indptr, np.arange(n, dtype=np.int64), indices.size) or \
            (indices.size and (indices.min() < 0 or indices.max() >= n)):
        raise ValueError("matrix indices/indptr or entry keys out of range")
    region = _affected(indptr_t, indices_t, data_t, src, level)
    lev = level.copy()
    _levels(indptr_t, indices_t, data_t, src, lev)
    level[:] = lev
    idx, olds = _set_reached(y, level)
    old_out[idx] = olds
    return idx, olds, int(region.size)


def set_threads(max_threads: int, cpus: int, adapt: bool = True) -> None:
    """Accepted for parity with the compiled module (the twin is single-threaded)."""


def threads() -> int:
    """The twin runs on one thread."""
    return 1


def set_parallel_min(n: int) -> int:
    """Accepted for parity with the compiled module (the twin is single-threaded); returns the value it was given
    before (2**14 at first)."""
    global _PAR_MIN
    was, _PAR_MIN = _PAR_MIN, max(1, int(n))
    return was


_PAR_MIN = 1 << 14

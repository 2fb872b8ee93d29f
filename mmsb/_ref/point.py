"""Pure-numpy twin of the point-wave kernel in ``mmsb._ext.point`` (same API, same results)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from mmsb._ops import OP_MAX, OP_MIN, OP_PLUS, OP_TIMES

__all__ = ["apply_few", "entry_keys", "entry_push", "link_push", "set_parallel_min", "set_threads", "threads"]

_UFUNCS = {OP_PLUS: np.add, OP_TIMES: np.multiply, OP_MIN: np.minimum, OP_MAX: np.maximum}


def _array(a: object, what: str, dtype: type, writable: bool = False) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"point kernel: {what} must be a numpy array")
    if a.dtype != dtype or a.ndim != 1 or not a.flags.c_contiguous or not a.dtype.isnative:
        raise TypeError(f"point kernel: {what} must be a contiguous 1-d {np.dtype(dtype).name} array in native "
                        "byte order")
    if writable and not a.flags.writeable:
        raise ValueError(f"point kernel: {what} is read-only")
    return a


def _check_apart(out: np.ndarray, inputs: tuple, fn: str) -> None:
    """Refuse an output array that shares memory with an input (a write would change what was checked)."""
    for a in inputs:
        if a is not None and np.may_share_memory(out, a):
            raise ValueError(f"{fn}: an output array shares memory with an input")


def _outputs(yv: np.ndarray, err, inputs: tuple, fn: str):
    """The rounding bounds ``err`` checked as the compiled kernels check them (None: none); returns the array."""
    if err is None:
        _check_apart(yv, inputs, fn)
        return None
    e = _array(err, "err", np.float64, True)
    if e.size != yv.size:
        raise ValueError(f"{fn}: err has {e.size} entries, y has {yv.size}")
    _check_apart(yv, inputs + (e,), fn)
    _check_apart(e, inputs + (yv,), fn)
    return e


def apply_few(page, idx, vals, op: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge ``vals`` at the sorted, unique positions ``idx`` into the float64 ``page`` in place (see the compiled
    kernel): ``(old, changed, count)``."""
    y = _array(page, "page", np.float64, True)
    ix = _array(idx, "idx", np.int64)
    v = _array(vals, "vals", np.float64)
    if v.size != ix.size:
        raise ValueError(f"apply_few: {ix.size} positions but {v.size} values")
    if op < -1 or op > OP_MAX:
        raise ValueError(f"apply_few: unknown op {op}")
    _check_apart(y, (ix, v), "apply_few")
    bad = (ix < 0) | (ix >= y.size)
    if bad.any():
        raise ValueError(f"apply_few: position {int(ix[bad][0])} out of range [0, {y.size})")
    old = y[ix]
    if op == -1:
        new = v.copy()
    elif op == OP_MIN:
        new = np.where(v < old, v, old)
    elif op == OP_MAX:
        new = np.where(v > old, v, old)
    else:
        new = _UFUNCS[op](old, v)
    y[ix] = new
    changed = (new != old) & ~(np.isnan(new) & np.isnan(old))
    return old, changed.astype(np.uint8), int(np.count_nonzero(changed))


def link_push(indptr_t, indices_t, data_t, idx, new, old, y, err, add_op: int, mul_op: int,
              tol: float) -> Optional[tuple]:
    """One link step ``y ⊕= A ⊗ Δx`` for the changed source positions ``idx``, fused (see the compiled kernel)."""
    ptr = _array(indptr_t, "indptr_t", np.int64)
    cols = _array(idx, "idx", np.int64)
    data = _array(data_t, "data_t", np.float64)
    nw = _array(new, "new", np.float64)
    od = _array(old, "old", np.float64)
    yv = _array(y, "y", np.float64, True)
    if not isinstance(indices_t, np.ndarray) or indices_t.dtype not in (np.int32, np.int64):
        raise TypeError("link_push: indices_t must be int32 or int64")
    if indices_t.ndim != 1 or not indices_t.flags.c_contiguous:
        raise TypeError("link_push: indices_t must be a contiguous 1-d array")
    k, ncols, ny = cols.size, ptr.size - 1, yv.size
    nnz = min(indices_t.size, data.size)
    if ncols < 0:
        raise ValueError("link_push: indptr_t is empty")
    if nw.size != k or od.size != k:
        raise ValueError(f"link_push: {k} positions but {nw.size} new and {od.size} old values")
    e = _outputs(yv, err, (ptr, indices_t, data, cols, nw, od), "link_push")
    track = e is not None
    if add_op not in (OP_PLUS, OP_MIN, OP_MAX):
        return None
    if mul_op not in _UFUNCS:
        raise ValueError(f"link_push: unknown mul_op {mul_op}")
    track = track and add_op == OP_PLUS
    add, mul = _UFUNCS[add_op], _UFUNCS[mul_op]
    bad_col = (cols < 0) | (cols >= ncols)
    if bad_col.any():
        raise ValueError(f"link_push: position {int(cols[bad_col][0])} out of range [0, {ncols})")
    starts, ends = ptr[cols], ptr[cols + 1]
    broken = (starts < 0) | (ends < starts) | (ends > nnz)
    if broken.any():
        c = int(np.flatnonzero(broken)[0])
        raise ValueError(f"link_push: column {int(cols[c])} spans entries [{int(starts[c])}, {int(ends[c])}) of "
                         f"{nnz}")
    if not (np.isfinite(nw).all() and np.isfinite(od).all()):
        return None
    if add_op != OP_PLUS and (add(od, nw) != nw).any():
        return None
    lens = ends - starts
    pos = np.concatenate([np.arange(s, t, dtype=np.int64) for s, t in zip(starts, ends)]) if k \
        else np.empty(0, dtype=np.int64)
    rows_all = indices_t[pos].astype(np.int64)
    if rows_all.size and (rows_all.min() < 0 or rows_all.max() >= ny):
        r = rows_all[(rows_all < 0) | (rows_all >= ny)][0]
        raise ValueError(f"link_push: row index {int(r)} out of range [0, {ny})")
    rows = np.unique(rows_all)
    before = yv[rows].copy()
    vals = nw - od if add_op == OP_PLUS else nw.copy()
    mag = np.zeros(rows.size)
    owner = np.repeat(np.arange(k), lens)
    at = np.searchsorted(rows, rows_all)
    for q in range(pos.size):                   # column by column, in the compiled kernel's order
        i, a, c = rows_all[q], data[pos[q]], owner[q]
        yv[i] = add(yv[i], mul(a, vals[c]))
        if track:
            mag[at[q]] = mag[at[q]] + abs(a) * (abs(nw[c]) + abs(od[c]))
    if add_op == OP_PLUS:
        after = yv[rows]
        if track:
            bound = e[rows] + ((k + 2) * (float(np.finfo(np.float64).eps) / 2)) * (np.abs(before) + mag)
            ok = (bound <= tol * np.abs(after)) & np.isfinite(after)
            e[rows[ok]] = bound[ok]
        else:
            ok = np.isfinite(after)
        if not ok.all():
            return rows, before, (~ok).astype(np.uint8)
    changed = yv[rows] != before
    return rows[changed], before[changed], None


def entry_keys(rows, cols, vals, nrows: int, ncols: int, fold_op: int) -> Optional[tuple]:
    """The sorted flat keys of a few matrix entries with duplicates folded in order (see the compiled kernel);
    None when an index is out of range or the lengths differ."""
    r = _array(rows, "rows", np.int64)
    c = _array(cols, "cols", np.int64)
    v = _array(vals, "vals", np.float64)
    if c.size != r.size or v.size != r.size:
        return None
    if fold_op < -1 or fold_op > OP_MAX:
        raise ValueError(f"entry_keys: unknown op {fold_op}")
    if r.size and (r.min() < 0 or r.max() >= nrows or c.min() < 0 or c.max() >= ncols):
        return None
    keys = r * ncols + c
    order = np.argsort(keys, kind="stable")
    keys, v = keys[order], v[order]
    out_k: list = []
    out_v: list = []
    for key, val in zip(keys.tolist(), v.tolist()):
        if out_k and out_k[-1] == key:
            prev = out_v[-1]
            out_v[-1] = {-1: val, OP_PLUS: prev + val, OP_TIMES: prev * val,
                         OP_MIN: val if val < prev else prev, OP_MAX: val if val > prev else prev}[fold_op]
        else:
            out_k.append(key)
            out_v.append(val)
    return np.array(out_k, dtype=np.int64), np.array(out_v, dtype=np.float64)


#: ⊗ as the kernels apply it: min and max ignore a NaN second operand (``b if b < a else a``)
_KERNEL_MUL = {OP_MIN: lambda a, b: np.where(b < a, b, a), OP_MAX: lambda a, b: np.where(b > a, b, a)}


def entry_push(keys, old, new, ncols: int, x, y, err, mul_op: int, zero: float, tol: float,
               after: bool = False) -> tuple:
    """One link step ``y += (A' - A) ⊗ x`` after entries of A changed, fused (see the compiled kernel)."""
    ks = _array(keys, "keys", np.int64)
    od = _array(old, "old", np.float64)
    nw = _array(new, "new", np.float64)
    xv = _array(x, "x", np.float64)
    yv = _array(y, "y", np.float64, True)
    n, ny = ks.size, yv.size
    if od.size != n or nw.size != n:
        raise ValueError(f"entry_push: {n} keys but {od.size} old and {nw.size} new values")
    if ncols < 0 or xv.size != ncols:
        raise ValueError(f"entry_push: x has {xv.size} values, the matrix {ncols} columns")
    if n and ncols == 0:
        raise ValueError("entry_push: keys given for a matrix of no columns")
    if mul_op not in _UFUNCS:
        raise ValueError(f"entry_push: unknown mul_op {mul_op}")
    e = _outputs(yv, err, (ks, od, nw, xv), "entry_push")
    track = e is not None
    if n:
        prev = np.r_[-1, ks[:-1]]
        wrong = np.flatnonzero(ks <= prev)
        if wrong.size:
            q = int(wrong[0])
            raise ValueError(f"entry_push: keys must be strictly increasing (key {int(ks[q])} after {int(prev[q])})")
        out = np.flatnonzero((ks < 0) | (ks // ncols >= ny))
        if out.size:
            raise ValueError(f"entry_push: key {int(ks[out[0]])} out of range for {ny} rows of {ncols} columns")
    own, c = np.divmod(ks, max(ncols, 1))
    mul = _KERNEL_MUL.get(mul_op, _UFUNCS[mul_op])
    with np.errstate(all="ignore"):
        tn = np.where(nw != zero, mul(nw, xv[c]), 0.0)
        to = np.where(od != zero, mul(od, xv[c]), 0.0)
    start = np.r_[True, own[1:] != own[:-1]] if n else np.zeros(0, dtype=bool)
    first = np.flatnonzero(start)
    rows = own[first]
    cnt = np.diff(np.r_[first, n])
    before = yv[rows].copy()
    acc = before.copy()
    mag = np.zeros(rows.size)
    rank = np.arange(n) - np.repeat(first, cnt)
    with np.errstate(all="ignore"):
        for j in range(int(cnt.max()) if n else 0):      # the j-th changed entry of every row, in key order
            at = rank == j
            g = np.repeat(np.arange(rows.size), cnt)[at]
            acc[g] = acc[g] + (tn[at] - to[at])
            mag[g] = mag[g] + np.abs(tn[at]) + np.abs(to[at])
    yv[rows] = acc
    bad = ~np.isfinite(acc)
    if track:
        with np.errstate(all="ignore"):
            bound = e[rows] + (cnt + 2) * (float(np.finfo(np.float64).eps) / 2) * (np.abs(before) + mag)
        bad |= ~(bound <= tol * np.abs(acc))
        e[rows[~bad]] = bound[~bad]
    if bad.any():
        got = (rows, before, bad.astype(np.uint8))
        return got + (acc,) if after else got
    changed = acc != before
    got = (rows[changed], before[changed], None)
    return got + (acc[changed],) if after else got


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

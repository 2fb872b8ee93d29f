"""Pure-numpy twins of the delta-merge kernels in ``mmsb._ext.merge`` (same API, same results).

Ops are the codes of ``mmsb._ops``; min/max keep the page value when the update is NaN (``b < a ? b : a``), and
integer plus/times wrap. Bool arrays are handled as uint8 views; callers map or -> max, and -> min.
"""
from __future__ import annotations

import numpy as np

from mmsb._ops import OP_ASSIGN, OP_MAX, OP_MIN, OP_PLUS, OP_TIMES

_UFUNCS = {OP_PLUS: np.add, OP_TIMES: np.multiply, OP_MIN: np.minimum, OP_MAX: np.maximum}

__all__ = ["scatter", "masked_merge", "merge_dense", "copy_into", "normalize", "merge_sparse", "apply_normalized",
           "sort_keys"]


def _check_op(op) -> int:
    try:
        code = int(op)
    except (TypeError, ValueError):
        raise ValueError(f"unknown op {op!r}") from None
    if code != op or code not in (OP_ASSIGN, OP_PLUS, OP_TIMES, OP_MIN, OP_MAX):
        raise ValueError(f"unknown op {op!r}")
    return code


def _as_kernel(arr, name: str) -> np.ndarray:
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, not {type(arr).__name__}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr.view(np.uint8) if arr.dtype == np.bool_ else arr


def _as_index(index, name: str) -> np.ndarray:
    index = np.asarray(index)
    if index.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {index.shape}")
    if index.dtype != np.int64:
        if index.size and index.dtype.kind not in "iu":
            raise ValueError(f"{name} must be an integer array, got {index.dtype}")
        index = index.astype(np.int64)
    return index


def _same_dtype(a: np.ndarray, b: np.ndarray, na: str, nb: str) -> None:
    if a.dtype != b.dtype:
        raise ValueError(f"{nb} dtype {b.dtype} does not match {na} dtype {a.dtype}")


def _binop(op: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise op(a, b) with the kernels' semantics."""
    if op == OP_PLUS:
        return np.add(a, b)
    if op == OP_TIMES:
        return np.multiply(a, b)
    if op == OP_MIN:
        return np.where(b < a, b, a)
    if op == OP_MAX:
        return np.where(b > a, b, a)
    return b.copy()


def _not_nan(values: np.ndarray) -> np.ndarray | None:
    """Mask of the non-NaN entries of a float array (None for integers or when there is no NaN)."""
    if values.dtype.kind != "f":
        return None
    keep = ~np.isnan(values)
    return None if keep.all() else keep


def _fold_at(code: int, target: np.ndarray, pos: np.ndarray, vals: np.ndarray) -> None:
    """``ufunc.at(target, pos, vals)``: each ``target[pos[k]] = op(target[pos[k]], vals[k])`` in input order, with
    min/max keeping the earlier of two equal values like the kernels' ``b < a ? b : a``. numpy's minimum and
    maximum may return either zero when 0.0 meets -0.0; a zero result is the first zero in the sequence."""
    if code not in (OP_MIN, OP_MAX) or target.dtype.kind != "f" or pos.shape[0] == 0:
        _UFUNCS[code].at(target, pos, vals)
        return
    u = np.unique(pos)
    before = target[u]
    _UFUNCS[code].at(target, pos, vals)
    hit = target[u] == 0
    if not hit.any():
        return
    keep = hit & (before == 0)
    target[u[keep]] = before[keep]
    z = (hit & ~keep)[np.searchsorted(u, pos)] & (vals == 0)
    if z.any():
        zp, zv = pos[z], vals[z]
        _, first = np.unique(zp, return_index=True)
        target[zp[first]] = zv[first]


def _last_occurrence(index: np.ndarray) -> np.ndarray:
    """Positions of the last occurrence of each distinct index, in index order."""
    rev = index[::-1]
    _, first = np.unique(rev, return_index=True)
    return index.shape[0] - 1 - first


def scatter(page, index, values, op, is_sorted=False) -> None:
    """In place, in input order: ``page[index[k]] = op(page[index[k]], values[k])``.

    ``OP_ASSIGN``: the last occurrence wins. ``is_sorted`` is accepted for API parity and ignored.
    """
    code = _check_op(op)
    page = _as_kernel(page, "page")
    index = _as_index(index, "index")
    values = _as_kernel(np.asarray(values), "values")
    if index.shape[0] != values.shape[0]:
        raise ValueError(f"index has {index.shape[0]} entries but values has {values.shape[0]}")
    _same_dtype(page, values, "page", "values")
    if index.shape[0] == 0:
        return None
    if code == OP_ASSIGN:
        last = _last_occurrence(index)
        page[index[last]] = values[last]
        return None
    if code in (OP_MIN, OP_MAX):
        keep = _not_nan(values)
        if keep is not None:
            index, values = index[keep], values[keep]
    _fold_at(code, page, index, values)
    return None


def masked_merge(page, mask, values, op) -> None:
    """In place: where ``mask[i]``, ``page[i] = op(page[i], values[i])``."""
    code = _check_op(op)
    page = _as_kernel(page, "page")
    mask = _as_kernel(np.asarray(mask), "mask")
    values = _as_kernel(np.asarray(values), "values")
    if mask.dtype != np.uint8:
        raise ValueError(f"mask must be bool or uint8, got {mask.dtype}")
    if mask.shape[0] != page.shape[0] or values.shape[0] != page.shape[0]:
        raise ValueError(f"page, mask and values lengths differ: {page.shape[0]}, {mask.shape[0]}, "
                         f"{values.shape[0]}")
    _same_dtype(page, values, "page", "values")
    where = mask.view(np.bool_)
    if code == OP_ASSIGN:
        np.copyto(page, values, where=where)
        return None
    if code in (OP_MIN, OP_MAX):
        np.copyto(page, _binop(code, page, values), where=where)
        return None
    _UFUNCS[code](page, values, out=page, where=where)
    return None


def merge_dense(page, values, op, old_out) -> int:
    """In place, every position: ``page[i] = op(page[i], values[i])`` (``OP_ASSIGN``: ``values[i]``), the value
    before going to ``old_out[i]``; returns the number of positions whose value changed (NaN -> NaN and
    -0.0 <-> +0.0 count as unchanged)."""
    code = _check_op(op)
    page = _as_kernel(page, "page")
    values = _as_kernel(np.asarray(values), "values")
    old_out = _as_kernel(old_out, "old_out")
    if values.shape[0] != page.shape[0] or old_out.shape[0] != page.shape[0]:
        raise ValueError(f"page, values and old_out lengths differ: {page.shape[0]}, {values.shape[0]}, "
                         f"{old_out.shape[0]}")
    _same_dtype(page, values, "page", "values")
    _same_dtype(page, old_out, "page", "old_out")
    if not (page.flags.writeable and old_out.flags.writeable):
        raise ValueError("page and old_out must be writable")
    if np.may_share_memory(page, values) or np.may_share_memory(page, old_out) \
            or np.may_share_memory(values, old_out):
        raise ValueError("page, values and old_out must not share memory")
    np.copyto(old_out, page)
    with np.errstate(over="ignore", invalid="ignore"):
        page[...] = _binop(code, old_out, values)
    moved = page != old_out
    if page.dtype.kind == "f":
        moved &= ~(np.isnan(page) & np.isnan(old_out))
    return int(np.count_nonzero(moved))


def sort_keys(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sorted keys, permutation)`` of the int64 ``index``, the permutation that of a stable argsort (twin of the
    compiled packed sort)."""
    perm = np.argsort(index, kind="stable")
    return index[perm], perm


_radix_argsort = sort_keys     # (the compiled radix sort gives the same results)


def copy_into(dst, src) -> None:
    """``dst[...] = src`` for two C-contiguous arrays of one dtype and size that share no memory (any dtype
    without Python objects)."""
    for arr, name in ((dst, "dst"), (src, "src")):
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"{name} must be a numpy array, not {type(arr).__name__}")
        if not arr.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
    if dst.dtype != src.dtype:
        raise ValueError(f"dst and src dtypes differ: {dst.dtype} and {src.dtype}")
    if dst.dtype.hasobject:
        raise TypeError(f"cannot copy the bytes of dtype {dst.dtype}: it holds Python objects")
    if dst.size != src.size:
        raise ValueError(f"dst and src sizes differ: {dst.size} and {src.size}")
    if not dst.flags.writeable:
        raise ValueError("dst must be writable")
    if np.may_share_memory(dst, src):
        raise ValueError("dst and src must not share memory")
    np.copyto(dst.reshape(-1), src.reshape(-1))


def normalize(index, values, op) -> tuple[np.ndarray, np.ndarray]:
    """Return new ``(index_out, values_out)``: sorted unique int64 indices, duplicates folded with op in input
    order (``OP_ASSIGN``: last occurrence wins). The inputs are not modified."""
    code = _check_op(op)
    index = _as_index(index, "index")
    values = np.asarray(values)
    dtype = values.dtype
    values = _as_kernel(values, "values")
    if index.shape[0] != values.shape[0]:
        raise ValueError(f"index has {index.shape[0]} entries but values has {values.shape[0]}")
    n = index.shape[0]
    if n == 0:
        return index.copy(), values.copy().view(dtype)
    perm = np.argsort(index, kind="stable")
    sidx = index[perm]
    sval = values[perm]
    start = np.empty(n, dtype=bool)
    start[0] = True
    np.not_equal(sidx[1:], sidx[:-1], out=start[1:])
    starts = np.flatnonzero(start)
    out_idx = sidx[starts]
    if code == OP_ASSIGN:
        ends = np.append(starts[1:], n) - 1
        return out_idx, sval[ends].view(dtype)
    out_val = sval[starts].copy()
    rest = ~start
    if rest.any():
        group = np.cumsum(start) - 1
        ridx, rval = group[rest], sval[rest]
        if code in (OP_MIN, OP_MAX):
            keep = _not_nan(rval)
            if keep is not None:
                ridx, rval = ridx[keep], rval[keep]
        _fold_at(code, out_val, ridx, rval)
    return out_idx, out_val.view(dtype)


def merge_sparse(idx_a, val_a, idx_b, val_b, op) -> tuple[np.ndarray, np.ndarray]:
    """Sorted union of two normalized sparse deltas; where both hold an index the value is ``op(a, b)``
    (``OP_ASSIGN``: b wins). Returns new ``(index, values)``."""
    code = _check_op(op)
    idx_a = _as_index(idx_a, "idx_a")
    idx_b = _as_index(idx_b, "idx_b")
    val_a = np.asarray(val_a)
    dtype = val_a.dtype
    val_a = _as_kernel(val_a, "val_a")
    val_b = _as_kernel(np.asarray(val_b), "val_b")
    if idx_a.shape[0] != val_a.shape[0]:
        raise ValueError(f"idx_a has {idx_a.shape[0]} entries but val_a has {val_a.shape[0]}")
    if idx_b.shape[0] != val_b.shape[0]:
        raise ValueError(f"idx_b has {idx_b.shape[0]} entries but val_b has {val_b.shape[0]}")
    _same_dtype(val_a, val_b, "val_a", "val_b")
    idx = np.union1d(idx_a, idx_b).astype(np.int64, copy=False)
    val = np.empty(idx.shape[0], dtype=val_a.dtype)
    pa = np.searchsorted(idx, idx_a)
    pb = np.searchsorted(idx, idx_b)
    in_a = np.zeros(idx.shape[0], dtype=bool)
    in_a[pa] = True
    val[pa] = val_a
    both = in_a[pb]
    val[pb[~both]] = val_b[~both]
    if both.any():
        val[pb[both]] = _binop(code, val[pb[both]], val_b[both])
    return idx, val.view(dtype)


def apply_normalized(page, index, values, op) -> tuple[np.ndarray, np.ndarray]:
    """Apply a normalized sparse delta in place and return ``(old_values, changed)``.

    ``old_values`` is ``page[index]`` before the update; ``changed`` (uint8) is 1 where the new value differs
    from the old one (NaN -> NaN counts as unchanged).
    """
    code = _check_op(op)
    dtype = page.dtype if isinstance(page, np.ndarray) else None
    page = _as_kernel(page, "page")
    index = _as_index(index, "index")
    values = _as_kernel(np.asarray(values), "values")
    if index.shape[0] != values.shape[0]:
        raise ValueError(f"index has {index.shape[0]} entries but values has {values.shape[0]}")
    _same_dtype(page, values, "page", "values")
    old = page[index]
    new = _binop(code, old, values)
    page[index] = new
    changed = new != old
    if page.dtype.kind == "f":
        changed &= ~(np.isnan(new) & np.isnan(old))
    return old.view(dtype), changed.view(np.uint8)


def set_threads(max_threads: int, cpus: int, adapt: bool = True) -> None:
    """Accepted for parity with the compiled module (the twin is single-threaded)."""


def threads() -> int:
    """The twin runs on one thread."""
    return 1

"""Argument checks shared by the compiled sparse kernels (mmsb._ext.spmv) and their numpy twins (mmsb._ref.spmv).

Pure Python and numpy, importing neither implementation: each kernel validates its arguments with these before any
memory is touched. A semiring is given by op codes (``mmsb._ops``) and its ``zero``; bool arrays are viewed as uint8.
"""
from __future__ import annotations

import numpy as np

from mmsb._ops import OP_MAX, OP_MIN, OP_PLUS, OP_TIMES

__all__ = ["KNOWN_OPS", "VALUE_DTYPES", "check_ops", "index_array", "indices_array", "value_array", "same_dtype", "zero_array",
           "check_csr", "check_structure", "check_range"]

KNOWN_OPS = frozenset((OP_PLUS, OP_TIMES, OP_MIN, OP_MAX))
VALUE_DTYPES = frozenset(np.dtype(t) for t in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                                               "uint64", "float32", "float64"))


def check_ops(add_op, mul_op, idempotent=False):
    """Validate the op codes (ValueError); ``idempotent`` requires ⊕ to be min or max."""
    for name, op in (("add_op", add_op), ("mul_op", mul_op)):
        if op not in KNOWN_OPS:
            raise ValueError(f"{name}: unknown op code {op!r} (expected one of {sorted(KNOWN_OPS)})")
    if idempotent and add_op not in (OP_MIN, OP_MAX):
        raise ValueError(f"closure needs an idempotent add_op (min or max), got {add_op!r}")


def index_array(a, name):
    """A 1-D C-contiguous int64 array made from an integer array-like (ValueError otherwise)."""
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind not in "iu" and not (arr.size == 0 and arr.dtype.kind in "fb"):
        raise ValueError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} has entries beyond the int64 range")
    return np.ascontiguousarray(arr, dtype=np.int64)


def indices_array(a, name):
    """A CSR's column indices: 1-D C-contiguous int32 (kept as given) or int64 (anything else integer)."""
    arr = np.asarray(a)
    if arr.dtype == np.int32 and arr.ndim == 1:
        return np.ascontiguousarray(arr)
    return index_array(arr, name)


def value_array(a, name, out=False):
    """A 1-D value array of a supported dtype (bool viewed as uint8); ``out`` arrays are used in place."""
    if out:
        if not isinstance(a, np.ndarray):
            raise ValueError(f"{name} must be a numpy array (it is written in place)")
        if a.ndim != 1 or not a.flags.c_contiguous or not a.flags.writeable:
            raise ValueError(f"{name} must be a writable, C-contiguous 1-D array")
        arr = a
    else:
        arr = np.ascontiguousarray(a)
        if arr.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        arr = arr.view(np.uint8)
    if arr.dtype not in VALUE_DTYPES:
        raise ValueError(f"{name}: unsupported dtype {arr.dtype}")
    return arr


def same_dtype(ref, **arrays):
    """The arrays converted to ref's dtype when safe; ValueError when their dtypes differ otherwise."""
    out = []
    for name, arr in arrays.items():
        if arr.dtype != ref.dtype:
            if arr.size == 0 or np.can_cast(arr.dtype, ref.dtype, "safe"):
                arr = arr.astype(ref.dtype)
            else:
                raise ValueError(f"{name} has dtype {arr.dtype}, expected {ref.dtype}")
        out.append(arr)
    return out


def zero_array(zero, dtype):
    """The semiring zero as a 1-element array of dtype; ±inf map to the integer max/min (ValueError if unfit)."""
    z = np.asarray(zero)
    if z.ndim != 0:
        raise ValueError(f"zero must be a scalar, got shape {z.shape}")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if z.dtype.kind == "f":
            zf = float(z)
            if zf == np.inf:
                return np.array([info.max], dtype=dtype)
            if zf == -np.inf:
                return np.array([info.min], dtype=dtype)
            if not zf.is_integer():
                raise ValueError(f"zero {zero!r} is not representable as {dtype}")
            zi = int(zf)
        elif z.dtype.kind in "iub":
            zi = int(z)
        else:
            raise ValueError(f"zero {zero!r} is not representable as {dtype}")
        if not info.min <= zi <= info.max:
            raise ValueError(f"zero {zero!r} is out of range for {dtype}")
        return np.array([zi], dtype=dtype)
    if z.dtype.kind not in "iufb":
        raise ValueError(f"zero {zero!r} is not representable as {dtype}")
    return np.array([z], dtype=dtype)


def check_csr(indptr, indices, data, sfx):
    """Validate CSR lengths (O(1)); returns the number of rows. ``sfx`` suffixes the argument names."""
    if indptr.size < 1:
        raise ValueError(f"indptr{sfx} must have at least one entry")
    if indices.size != data.size:
        raise ValueError(f"indices{sfx} and data{sfx} differ in length ({indices.size} != {data.size})")
    if indptr[0] != 0 or indptr[-1] != indices.size:
        raise ValueError(f"indptr{sfx} must start at 0 and end at len(indices{sfx}) = {indices.size}")
    return indptr.size - 1


def check_structure(indptr, indices, ncols, sfx):
    """Full CSR check (O(n + nnz)): indptr non-decreasing, indices in [0, ncols)."""
    if indptr.size > 1 and np.any(np.diff(indptr) < 0):
        raise ValueError(f"indptr{sfx} is not non-decreasing")
    if indices.size and (indices.min() < 0 or indices.max() >= ncols):
        raise ValueError(f"indices{sfx} out of range [0, {ncols})")


def check_range(arr, n, name):
    """All entries of an int64 array lie in [0, n)."""
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ValueError(f"{name} entries must lie in [0, {n})")


def spmv_args(indptr, indices, data, x, y, add_op, mul_op, zero, rows, structure: bool = False):
    """The checked arguments of ``spmv``: ``(indptr, indices, data, x, y, rows or None, zero array, n)``.
    ``structure``: also check every stored column index (the numpy twin; the kernel checks them as it goes)."""
    check_ops(add_op, mul_op)
    indptr = index_array(indptr, "indptr")
    indices = indices_array(indices, "indices")
    x = value_array(x, "x")
    y = value_array(y, "y", out=True)
    data = value_array(data, "data")
    data, x = same_dtype(y, data=data, x=x)
    n = check_csr(indptr, indices, data, "")
    if y.size != n:
        raise ValueError(f"y has length {y.size}, expected {n} (= len(indptr) - 1)")
    if rows is not None:
        rows = index_array(rows, "rows")
        check_range(rows, n, "rows")
    if structure:
        check_structure(indptr, indices, x.size, "")
    return indptr, indices, data, x, y, rows, zero_array(zero, y.dtype), n


def spmv_old_out(old_out, y, rows):
    """The checked ``old_out`` of ``spmv`` (an array like ``y``, for a call over every row), or None."""
    if old_out is None:
        return None
    if rows is not None:
        raise ValueError("old_out is only supported for a product over every row (rows=None)")
    old_out = value_array(old_out, "old_out", out=True)
    if old_out.dtype != y.dtype or old_out.size != y.size:
        raise ValueError(f"old_out must have y's dtype {y.dtype} and length {y.size}, got {old_out.dtype} and "
                         f"{old_out.size}")
    return old_out


def push_args(indptr_t, indices_t, data_t, idx, vals, y, add_op, mul_op, zero, structure: bool = False):
    """The checked arguments of ``push``: ``(indptr_t, indices_t, data_t, idx, vals, y, zero array)``."""
    check_ops(add_op, mul_op)
    indptr_t = index_array(indptr_t, "indptr_t")
    indices_t = indices_array(indices_t, "indices_t")
    y = value_array(y, "y", out=True)
    data_t = value_array(data_t, "data_t")
    vals = value_array(vals, "vals")
    idx = index_array(idx, "idx")
    data_t, vals = same_dtype(y, data_t=data_t, vals=vals)
    ncols = check_csr(indptr_t, indices_t, data_t, "_t")
    if idx.size != vals.size:
        raise ValueError(f"idx and vals differ in length ({idx.size} != {vals.size})")
    check_range(idx, ncols, "idx")
    if structure:
        check_structure(indptr_t, indices_t, y.size, "_t")
    return indptr_t, indices_t, data_t, idx, vals, y, zero_array(zero, y.dtype)


def closure_args(indptr_t, indices_t, data_t, x, frontier, add_op, mul_op, zero, old_out,
                 structure: bool = False):
    """The checked arguments of ``closure``: ``(indptr_t, indices_t, data_t, x, frontier, zero array, old_out or
    None, n)``."""
    check_ops(add_op, mul_op, idempotent=True)
    indptr_t = index_array(indptr_t, "indptr_t")
    indices_t = indices_array(indices_t, "indices_t")
    x = value_array(x, "x", out=True)
    data_t = value_array(data_t, "data_t")
    (data_t,) = same_dtype(x, data_t=data_t)
    frontier = index_array(frontier, "frontier")
    n = check_csr(indptr_t, indices_t, data_t, "_t")
    if x.size != n:
        raise ValueError(f"x has length {x.size}, expected {n} (the matrix must be square)")
    check_range(frontier, n, "frontier")
    if old_out is not None:
        old_out = value_array(old_out, "old_out", out=True)
        (old_out,) = same_dtype(x, old_out=old_out)
        if old_out.size != n:
            raise ValueError(f"old_out has length {old_out.size}, expected {n}")
    if structure:
        check_structure(indptr_t, indices_t, n, "_t")
    return indptr_t, indices_t, data_t, x, frontier, zero_array(zero, x.dtype), old_out, n


def _consts(zero, free, dtype):
    """``[zero, free]`` as an array of dtype (free: zero when None) and whether there is a free-slot value."""
    z = zero_array(zero, dtype)
    if free is None:
        return np.array([z[0], z[0]], dtype=dtype), False
    return np.array([z[0], zero_array(free, dtype)[0]], dtype=dtype), True


def locate_args(indptr, indices, data, rows, cols, zero, free):
    """The checked arguments of ``repair.locate``: ``(indptr, indices, data, rows, cols, [zero, free], has_free)``."""
    indptr = index_array(indptr, "indptr")
    indices = indices_array(indices, "indices")
    data = value_array(data, "data")
    rows = index_array(rows, "rows")
    cols = index_array(cols, "cols")
    check_csr(indptr, indices, data, "")
    if rows.size != cols.size:
        raise ValueError(f"rows and cols differ in length ({rows.size} != {cols.size})")
    consts, has_free = _consts(zero, free, data.dtype)
    return indptr, indices, data, rows, cols, consts, has_free


def repair_args(indptr, indices, data, indptr_t, indices_t, data_t, y, src, keys, old, add_op, mul_op, zero, free,
                mark, old_out):
    """The checked arguments of ``repair.repair`` (scratch arrays allocated when None)."""
    check_ops(add_op, mul_op, idempotent=True)
    indptr = index_array(indptr, "indptr")
    indices = indices_array(indices, "indices")
    indptr_t = index_array(indptr_t, "indptr_t")
    indices_t = indices_array(indices_t, "indices_t")
    y = value_array(y, "y", out=True)
    data, data_t, src, old = same_dtype(y, data=value_array(data, "data"), data_t=value_array(data_t, "data_t"),
                                        src=value_array(src, "src"), old=value_array(old, "old"))
    keys = index_array(keys, "keys")
    n = y.size
    for sfx, ip, ix, dv in (("", indptr, indices, data), ("_t", indptr_t, indices_t, data_t)):
        if check_csr(ip, ix, dv, sfx) != n:
            raise ValueError(f"indptr{sfx} has {ip.size - 1} rows, expected {n} (the length of y; A is square)")
    if src.size != n:
        raise ValueError(f"src has length {src.size}, expected {n}")
    if old.size != keys.size:
        raise ValueError(f"keys and old differ in length ({keys.size} != {old.size})")
    if mark is None:
        mark = np.zeros(n, dtype=np.uint8)
    elif not (isinstance(mark, np.ndarray) and mark.dtype == np.uint8 and mark.ndim == 1 and mark.size == n
              and mark.flags.c_contiguous and mark.flags.writeable):
        raise ValueError(f"mark must be a writable, C-contiguous uint8 array of length {n}")
    if old_out is None:
        old_out = np.empty_like(y)
    else:
        old_out = value_array(old_out, "old_out", out=True)
        if old_out.dtype != y.dtype or old_out.size != n:
            raise ValueError(f"old_out must be a {y.dtype} array of length {n}")
    consts, has_free = _consts(zero, free, y.dtype)
    return indptr, indices, data, indptr_t, indices_t, data_t, y, src, keys, old, consts, has_free, mark, old_out



def _bool_array(a, name, out=False):
    """A 1-D bool array viewed as uint8 (uint8 accepted as it is); ``out`` arrays are used in place."""
    arr = value_array(a, name, out=out)
    if arr.dtype != np.uint8:
        raise ValueError(f"{name} must be a bool (or uint8) array, got dtype {arr.dtype}")
    return arr


_REACH_MAX = 3037000499        # the largest n with n * n (flat entry keys, level * n + id) within int64


def level_array(level, n):
    """The level array of a reachability closure: writable, C-contiguous int32 or int64 of length ``n``, with
    room above every level (int32 only while ``n < 2**31 - 1``)."""
    if not (isinstance(level, np.ndarray) and level.dtype in (np.int32, np.int64) and level.ndim == 1
            and level.flags.c_contiguous and level.flags.writeable):
        raise ValueError("level must be a writable, C-contiguous int32 or int64 array")
    if level.size != n:
        raise ValueError(f"level has length {level.size}, expected {n}")
    if level.dtype == np.int32 and n >= np.iinfo(np.int32).max:
        raise ValueError(f"an int32 level array cannot hold the levels of {n} vertices; use int64")
    if n > _REACH_MAX:
        raise ValueError(f"reachability levels support at most {_REACH_MAX} vertices, got {n}")
    return level


def reach_build_args(indptr_t, indices_t, data_t, y, src, level):
    """The checked arguments of ``repair.reach_build``: ``(indptr_t, indices_t, data_t, y, src, level)``."""
    indptr_t = index_array(indptr_t, "indptr_t")
    indices_t = indices_array(indices_t, "indices_t")
    data_t = _bool_array(data_t, "data_t")
    y = _bool_array(y, "y", out=True)
    src = _bool_array(src, "src")
    n = y.size
    if check_csr(indptr_t, indices_t, data_t, "_t") != n:
        raise ValueError(f"indptr_t has {indptr_t.size - 1} rows, expected {n} (the length of y; A is square)")
    if src.size != n:
        raise ValueError(f"src has length {src.size}, expected {n}")
    return indptr_t, indices_t, data_t, y, src, level_array(level, n)


def reach_args(indptr, indices, data, indptr_t, indices_t, data_t, y, src, level, keys, old, points, mark,
               old_out):
    """The checked arguments of ``repair.reach`` (scratch arrays allocated when None)."""
    indptr_t, indices_t, data_t, y, src, level = reach_build_args(indptr_t, indices_t, data_t, y, src, level)
    indptr = index_array(indptr, "indptr")
    indices = indices_array(indices, "indices")
    data = _bool_array(data, "data")
    n = y.size
    if check_csr(indptr, indices, data, "") != n:
        raise ValueError(f"indptr has {indptr.size - 1} rows, expected {n} (the length of y; A is square)")
    if indices.dtype != indices_t.dtype:
        indices, indices_t = indices.astype(np.int64), indices_t.astype(np.int64)
    keys = index_array(keys, "keys")
    old = _bool_array(old, "old")
    if old.size != keys.size:
        raise ValueError(f"keys and old differ in length ({keys.size} != {old.size})")
    points = index_array(points, "points")
    if mark is None:
        mark = np.zeros(n, dtype=np.uint8)
    elif not (isinstance(mark, np.ndarray) and mark.dtype == np.uint8 and mark.ndim == 1 and mark.size == n
              and mark.flags.c_contiguous and mark.flags.writeable):
        raise ValueError(f"mark must be a writable, C-contiguous uint8 array of length {n}")
    old_out = np.empty(n, dtype=np.uint8) if old_out is None else _bool_array(old_out, "old_out", out=True)
    if old_out.size != n:
        raise ValueError(f"old_out must have length {n}")
    return (indptr, indices, data, indptr_t, indices_t, data_t, y, src, level, keys, old, points, mark,
            old_out)

def assign_args(indptr, indices, data, rows, cols, vals, present, pos, free):
    """The checked arguments of ``repair.assign``: ``(indptr, indices, data, rows, cols, vals, present, pos,
    located, [zero, free], has_free)``; ``indices`` and ``data`` are written in place."""
    indptr = index_array(indptr, "indptr")
    if not (isinstance(indices, np.ndarray) and indices.dtype in (np.int32, np.int64)):
        raise ValueError("indices must be an int32 or int64 numpy array (it is written in place)")
    indices = value_array(indices, "indices", out=True)
    data = value_array(data, "data", out=True)
    rows = index_array(rows, "rows")
    cols = index_array(cols, "cols")
    (vals,) = same_dtype(data, vals=value_array(vals, "vals"))
    present = np.ascontiguousarray(present)
    if present.dtype != np.bool_:
        raise ValueError(f"present must be a bool array, got dtype {present.dtype}")
    check_csr(indptr, indices, data, "")
    if not rows.size == cols.size == vals.size == present.size:
        raise ValueError("rows, cols, vals and present differ in length")
    located = pos is not None
    pos = index_array(pos, "pos").copy() if located else np.empty(rows.size, dtype=np.int64)
    if pos.size != rows.size:
        raise ValueError(f"pos has length {pos.size}, expected {rows.size}")
    consts, has_free = _consts(data.dtype.type(0), free, data.dtype)
    return indptr, indices, data, rows, cols, vals, present.view(np.uint8), pos, located, consts, has_free


def update_args(indptr, indices, data, ncols, keys, vals, op, zero, free, indptr_t, indices_t, data_t):
    """The checked arguments of ``repair.update``: A (written in place), its transpose or empty arrays, whether it
    is given, the keys, the values, the number of rows, ``[zero, free]`` and whether there are free slots."""
    if op != -1 and op not in KNOWN_OPS:
        raise ValueError(f"op: unknown op code {op!r}")
    indptr = index_array(indptr, "indptr")
    indices = value_array(indices, "indices", out=True)
    data = value_array(data, "data", out=True)
    if indices.dtype not in (np.int32, np.int64):
        raise ValueError(f"indices must be int32 or int64, got {indices.dtype}")
    nrows = check_csr(indptr, indices, data, "")
    has_t = indptr_t is not None
    if has_t:
        indptr_t = index_array(indptr_t, "indptr_t")
        indices_t = value_array(indices_t, "indices_t", out=True)
        data_t = value_array(data_t, "data_t", out=True)
        if indices_t.dtype != indices.dtype or data_t.dtype != data.dtype:
            raise ValueError("the transpose must have the dtypes of the matrix")
        if check_csr(indptr_t, indices_t, data_t, "_t") != ncols:
            raise ValueError(f"indptr_t has {indptr_t.size - 1} rows, expected {ncols}")
    else:
        indptr_t, indices_t, data_t = np.zeros(1, dtype=np.int64), indices[:0], data[:0]
    keys = index_array(keys, "keys")
    (vals,) = same_dtype(data, vals=value_array(vals, "vals"))
    if vals.size != keys.size:
        raise ValueError(f"keys and vals differ in length ({keys.size} != {vals.size})")
    consts, has_free = _consts(zero, free, data.dtype)
    return indptr, indices, data, indptr_t, indices_t, data_t, has_t, keys, vals, nrows, consts, has_free

"""Pure-numpy twins of the semiring sparse kernels in ``mmsb._ext.spmv`` (same API, same results).

A matrix is given in CSR form by ``indptr`` / ``indices`` (int64) and ``data``; a semiring by its op codes
``add_op`` / ``mul_op`` (those of ``mmsb._ops``) and its ``zero``. ``(A ⊗ x)[i] = ⊕_j A[i, j] ⊗ x[j]`` with A's
value on the left of ⊗; entries ``x[j] == zero`` are skipped (zero annihilates ⊗). Bool arrays are handled as
uint8 views (the caller maps or -> max, and -> min). Integer plus/times wrap like numpy.

``push`` and ``closure`` take the *transposed* matrix in CSR form: row j of ``(indptr_t, indices_t, data_t)``
lists the entries ``(i, A[i, j])`` of column j of A.
"""
from __future__ import annotations

import numpy as np

from mmsb._ops import OP_MAX, OP_MIN, OP_PLUS, OP_TIMES

__all__ = ["spmv", "push", "closure"]

_UFUNCS = {OP_PLUS: np.add, OP_TIMES: np.multiply, OP_MIN: np.minimum, OP_MAX: np.maximum}
_DTYPES = frozenset(np.dtype(t) for t in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                                           "uint64", "float32", "float64"))
_EMPTY = np.empty(0, dtype=np.int64)


def _check_ops(add_op, mul_op, idempotent=False):
    """Validate the op codes (ValueError); ``idempotent`` requires ⊕ to be min or max."""
    for name, op in (("add_op", add_op), ("mul_op", mul_op)):
        if op not in _UFUNCS:
            raise ValueError(f"{name}: unknown op code {op!r} (expected one of {sorted(_UFUNCS)})")
    if idempotent and add_op not in (OP_MIN, OP_MAX):
        raise ValueError(f"closure needs an idempotent add_op (min or max), got {add_op!r}")


def _index_array(a, name):
    """A 1-D C-contiguous int64 array made from an integer array-like (ValueError otherwise)."""
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind not in "iu" and not (arr.size == 0 and arr.dtype.kind in "fb"):
        raise ValueError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} has entries beyond the int64 range")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _value_array(a, name, out=False):
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
    if arr.dtype not in _DTYPES:
        raise ValueError(f"{name}: unsupported dtype {arr.dtype}")
    return arr


def _same_dtype(ref, **arrays):
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


def _zero(zero, dtype):
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


def _check_csr(indptr, indices, data, sfx):
    """Validate CSR lengths (O(1)); returns the number of rows. ``sfx`` suffixes the argument names."""
    if indptr.size < 1:
        raise ValueError(f"indptr{sfx} must have at least one entry")
    if indices.size != data.size:
        raise ValueError(f"indices{sfx} and data{sfx} differ in length ({indices.size} != {data.size})")
    if indptr[0] != 0 or indptr[-1] != indices.size:
        raise ValueError(f"indptr{sfx} must start at 0 and end at len(indices{sfx}) = {indices.size}")
    return indptr.size - 1


def _check_structure(indptr, indices, ncols, sfx):
    """Full CSR check (O(n + nnz)): indptr non-decreasing, indices in [0, ncols)."""
    if indptr.size > 1 and np.any(np.diff(indptr) < 0):
        raise ValueError(f"indptr{sfx} is not non-decreasing")
    if indices.size and (indices.min() < 0 or indices.max() >= ncols):
        raise ValueError(f"indices{sfx} out of range [0, {ncols})")


def _check_range(arr, n, name):
    """All entries of an int64 array lie in [0, n)."""
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ValueError(f"{name} entries must lie in [0, {n})")


def _gather(indptr, sel):
    """Positions k of the stored entries of rows ``sel`` (in order) and the position in ``sel`` of each."""
    starts = indptr[sel]
    lengths = indptr[sel + 1] - starts
    total = int(lengths.sum())
    owner = np.repeat(np.arange(sel.size, dtype=np.int64), lengths)
    offsets = np.cumsum(lengths) - lengths
    k = np.arange(total, dtype=np.int64) - offsets[owner] + starts[owner]
    return k, owner


def spmv(indptr, indices, data, x, y, add_op, mul_op, zero, rows=None, nthreads=0):
    """Pull SpMV ``y[i] = zero ⊕ (⊕_k data[k] ⊗ x[indices[k]])`` for all rows, or only ``rows``.

    ``y`` (length ``len(indptr) - 1``) is written in place; rows not listed are left untouched. Entries with
    ``x[j] == zero`` are skipped. ``nthreads`` is accepted for API parity (the twin is single-threaded).
    """
    _check_ops(add_op, mul_op)
    indptr = _index_array(indptr, "indptr")
    indices = _index_array(indices, "indices")
    x = _value_array(x, "x")
    y = _value_array(y, "y", out=True)
    data = _value_array(data, "data")
    data, x = _same_dtype(y, data=data, x=x)
    n = _check_csr(indptr, indices, data, "")
    if y.size != n:
        raise ValueError(f"y has length {y.size}, expected {n} (= len(indptr) - 1)")
    sel = np.arange(n, dtype=np.int64) if rows is None else _index_array(rows, "rows")
    _check_range(sel, n, "rows")
    _check_structure(indptr, indices, x.size, "")
    z = _zero(zero, y.dtype)
    k, owner = _gather(indptr, sel)
    xv = x[indices[k]]
    keep = xv != z[0]
    prod = _UFUNCS[mul_op](data[k][keep], xv[keep])
    out = np.full(sel.size, z[0], dtype=y.dtype)
    _UFUNCS[add_op].at(out, owner[keep], prod)
    y[sel] = out


def _accumulate(y, targets, contrib, add_op):
    """Apply ``y[t] = y[t] ⊕ c`` in order, only where the value changes; returns the sorted changed entries."""
    if targets.size == 0:
        return _EMPTY.copy()
    uniq, inv = np.unique(targets, return_inverse=True)
    old = y[uniq]
    new = old.copy()
    _UFUNCS[add_op].at(new, inv, contrib)
    changed = new != old
    if add_op not in (OP_MIN, OP_MAX):
        ufunc = _UFUNCS[add_op]
        for pos in np.flatnonzero(~changed):
            cur = old[pos]
            for c in contrib[inv == pos]:
                nxt = ufunc(cur, c)
                if nxt != cur:
                    changed[pos] = True
                cur = nxt
            new[pos] = cur
    y[uniq[changed]] = new[changed]
    return uniq[changed]


def push(indptr_t, indices_t, data_t, idx, vals, y, add_op, mul_op, zero):
    """Sparse push (saxpy) with the transposed matrix: ``y[i] = y[i] ⊕ (A[i, j] ⊗ v)`` for each ``(j, v)``.

    ``(indptr_t, indices_t, data_t)`` is Aᵀ in CSR form (row j lists the ``(i, A[i, j])``). Pairs with
    ``v == zero`` are skipped; ``y[i]`` is written only when its value changes. Returns the sorted unique int64
    array of the changed entries of ``y``.
    """
    _check_ops(add_op, mul_op)
    indptr_t = _index_array(indptr_t, "indptr_t")
    indices_t = _index_array(indices_t, "indices_t")
    y = _value_array(y, "y", out=True)
    data_t = _value_array(data_t, "data_t")
    vals = _value_array(vals, "vals")
    idx = _index_array(idx, "idx")
    data_t, vals = _same_dtype(y, data_t=data_t, vals=vals)
    ncols = _check_csr(indptr_t, indices_t, data_t, "_t")
    if idx.size != vals.size:
        raise ValueError(f"idx and vals differ in length ({idx.size} != {vals.size})")
    _check_range(idx, ncols, "idx")
    _check_structure(indptr_t, indices_t, y.size, "_t")
    z = _zero(zero, y.dtype)
    keep = vals != z[0]
    idx, vals = idx[keep], vals[keep]
    k, owner = _gather(indptr_t, idx)
    contrib = _UFUNCS[mul_op](data_t[k], vals[owner])
    return _accumulate(y, indices_t[k], contrib, add_op)


def closure(indptr_t, indices_t, data_t, x, frontier, add_op, mul_op, zero, old_out=None, weight_range=None):
    """Semi-naive least fixpoint ``x[i] = x[i] ⊕ (A[i, j] ⊗ x[j])`` for an idempotent ⊕ (min or max).

    ``x`` holds the current values (sources included) and is updated in place; ``frontier`` lists the entries
    whose value just improved (all ``j`` with ``x[j] != zero`` to start from scratch). Aᵀ is given in CSR form.
    Returns the sorted unique int64 array of the entries changed during the call. Raises
    ``ValueError("closure does not converge")`` after more than ``n + 1`` rounds (e.g. a negative cycle);
    ``x`` then holds the values reached so far. ``old_out`` (an array like ``x``) receives, at each changed
    entry, its value before the call. ``weight_range`` (the compiled kernel's bucket-queue hint) changes
    nothing here.
    """
    _check_ops(add_op, mul_op, idempotent=True)
    indptr_t = _index_array(indptr_t, "indptr_t")
    indices_t = _index_array(indices_t, "indices_t")
    x = _value_array(x, "x", out=True)
    data_t = _value_array(data_t, "data_t")
    (data_t,) = _same_dtype(x, data_t=data_t)
    frontier = _index_array(frontier, "frontier")
    n = _check_csr(indptr_t, indices_t, data_t, "_t")
    if x.size != n:
        raise ValueError(f"x has length {x.size}, expected {n} (the matrix must be square)")
    _check_range(frontier, n, "frontier")
    _check_structure(indptr_t, indices_t, n, "_t")
    z = _zero(zero, x.dtype)[0]
    mul = _UFUNCS[mul_op]
    before = x.copy() if old_out is not None else None
    changed = []
    front = np.unique(frontier)
    rounds = 0
    while True:
        front = front[x[front] != z]
        if front.size == 0:
            break
        rounds += 1
        if rounds > n + 1:
            raise ValueError("closure does not converge")
        k, owner = _gather(indptr_t, front)
        contrib = mul(data_t[k], x[front][owner])
        front = _accumulate(x, indices_t[k], contrib, add_op)
        changed.append(front)
    if not changed:
        return _EMPTY.copy()
    out = np.unique(np.concatenate(changed))
    if old_out is not None:
        old_out[out] = before[out]
    return out

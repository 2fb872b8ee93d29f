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
from mmsb._validate import closure_args, push_args, spmv_args, spmv_old_out

__all__ = ["spmv", "push", "closure", "set_threads", "threads"]

_UFUNCS = {OP_PLUS: np.add, OP_TIMES: np.multiply, OP_MIN: np.minimum, OP_MAX: np.maximum}
_EMPTY = np.empty(0, dtype=np.int64)


def _gather(indptr, sel):
    """Positions k of the stored entries of rows ``sel`` (in order) and the position in ``sel`` of each."""
    starts = indptr[sel]
    lengths = indptr[sel + 1] - starts
    total = int(lengths.sum())
    owner = np.repeat(np.arange(sel.size, dtype=np.int64), lengths)
    offsets = np.cumsum(lengths) - lengths
    k = np.arange(total, dtype=np.int64) - offsets[owner] + starts[owner]
    return k, owner


LANES = 8
_LANED_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))
"""Partial sums per row of the float (plus, times) pull SpMV (mmsb/_ext/_spmv_sum.h)."""


def _laned(dtype, add_op, mul_op, zero) -> bool:
    """True where the pull SpMV sums a row in ``LANES`` partial sums: float (plus, times) with zero +0.0."""
    return (dtype in _LANED_DTYPES and add_op == OP_PLUS and mul_op == OP_TIMES and zero == 0
            and not np.signbit(zero))


def spmv(indptr, indices, data, x, y, add_op, mul_op, zero, rows=None, nthreads=0, old_out=None):
    """Pull SpMV ``y[i] = zero ⊕ (⊕_k data[k] ⊗ x[indices[k]])`` for all rows, or only ``rows``.

    ``y`` (length ``len(indptr) - 1``) is written in place; rows not listed are left untouched. Entries with
    ``x[j] == zero`` are skipped. ``nthreads`` is accepted for API parity (the twin is single-threaded).
    Float (plus, times) with zero +0.0 sums each row in ``LANES`` interleaved partial sums, as the compiled kernel
    does (entry k of a row starting at ks goes to lane (k - ks) % 8; the lanes are added as
    ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))): the same value bit for bit.
    ``old_out`` (an array like ``y``; only with ``rows=None``) receives y's values before the call; the call then
    returns the number of rows whose value changed (NaN equal to NaN, -0.0 to +0.0), else None.
    """
    indptr, indices, data, x, y, rows, z, n = spmv_args(indptr, indices, data, x, y, add_op, mul_op, zero, rows,
                                                        structure=True)
    old = spmv_old_out(old_out, y, rows)
    if old is not None:
        old[:] = y
        _spmv(indptr, indices, data, x, y, add_op, mul_op, z, n, None)
        moved = y != old
        if y.dtype.kind == "f":
            moved &= ~(np.isnan(y) & np.isnan(old))
        return int(np.count_nonzero(moved))
    _spmv(indptr, indices, data, x, y, add_op, mul_op, z, n, rows)
    return None


def _spmv(indptr, indices, data, x, y, add_op, mul_op, z, n, rows) -> None:
    """spmv on checked arguments."""
    sel = np.arange(n, dtype=np.int64) if rows is None else rows
    k, owner = _gather(indptr, sel)
    xv = x[indices[k]]
    keep = xv != z[0]
    prod = _UFUNCS[mul_op](data[k][keep], xv[keep])
    if _laned(y.dtype, add_op, mul_op, z[0]):
        lane = (k - indptr[sel][owner])[keep] % LANES
        sums = np.zeros(sel.size * LANES, dtype=y.dtype)
        np.add.at(sums, owner[keep] * LANES + lane, prod)
        s = sums.reshape(sel.size, LANES)
        with np.errstate(invalid="ignore", over="ignore"):      # inf + -inf is NaN, as in the kernel
            y[sel] = ((s[:, 0] + s[:, 1]) + (s[:, 2] + s[:, 3])) + ((s[:, 4] + s[:, 5]) + (s[:, 6] + s[:, 7]))
        return
    owner = owner[keep]
    if add_op in (OP_MIN, OP_MAX) and prod.dtype.kind == "f":
        real = ~np.isnan(prod)      # min/max ignore a NaN candidate, as the kernels' comparison does
        prod, owner = prod[real], owner[real]
    out = np.full(sel.size, z[0], dtype=y.dtype)
    _UFUNCS[add_op].at(out, owner, prod)
    y[sel] = out


def _accumulate(y, targets, contrib, add_op):
    """Apply ``y[t] = y[t] ⊕ c`` in order, only where the value changes; returns the sorted changed entries."""
    if add_op in (OP_MIN, OP_MAX) and contrib.dtype.kind == "f":
        real = ~np.isnan(contrib)   # a NaN candidate never wins a min or a max (as in the kernels)
        targets, contrib = targets[real], contrib[real]
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
    indptr_t, indices_t, data_t, idx, vals, y, z = push_args(indptr_t, indices_t, data_t, idx, vals, y, add_op,
                                                             mul_op, zero, structure=True)
    keep = vals != z[0]
    idx, vals = idx[keep], vals[keep]
    k, owner = _gather(indptr_t, idx)
    contrib = _UFUNCS[mul_op](data_t[k], vals[owner])
    return _accumulate(y, indices_t[k], contrib, add_op)


def closure(indptr_t, indices_t, data_t, x, frontier, add_op, mul_op, zero, old_out=None, weight_range=None,
            nthreads=0):
    """Semi-naive least fixpoint ``x[i] = x[i] ⊕ (A[i, j] ⊗ x[j])`` for an idempotent ⊕ (min or max).

    ``x`` holds the current values (sources included) and is updated in place; ``frontier`` lists the entries
    whose value just improved (all ``j`` with ``x[j] != zero`` to start from scratch). Aᵀ is given in CSR form.
    Returns the sorted unique int64 array of the entries changed during the call. Raises
    ``ValueError("closure does not converge")`` after more than ``n + 1`` rounds (e.g. a negative cycle);
    ``x`` then holds the values reached so far. ``old_out`` (an array like ``x``) receives, at each changed
    entry, its value before the call. ``weight_range`` and ``nthreads`` (the compiled kernel's hints) change
    nothing here.
    """
    indptr_t, indices_t, data_t, x, frontier, z, old_out, n = closure_args(indptr_t, indices_t, data_t, x, frontier,
                                                                          add_op, mul_op, zero, old_out,
                                                                          structure=True)
    z = z[0]
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


def set_gather_ahead(entries: int) -> int:
    """Accepted for parity with the compiled module (the twin does not prefetch); returns 0."""
    return 0


def set_vector_gather(on: bool) -> bool:
    """Accepted for parity with the compiled module (the twin has no vector path); returns False."""
    return False


def set_threads(max_threads: int, cpus: int, adapt: bool = True) -> None:
    """Accepted for parity with the compiled module (the twin is single-threaded)."""


def threads() -> int:
    """The twin runs on one thread."""
    return 1

"""CSR matrices in the kernels' layout (int32 or int64 column indices, the page dtype), their transposes, and entry
updates.

A rule's matrix is a :class:`CSR`. A matrix page's is one too, and it changes entry by entry
(:meth:`CSR.set_entries`): a changed value is written in place (in the matrix and in its transpose, when that was
built), and under a selective ⊕ (min, max, or) a removed entry becomes a *free slot* holding ⊕'s zero, which every
kernel treats as absent (``zero ⊗ x`` never wins a min or a max), and which a later insertion into the same row
reuses. Rows get a little slack when they are rebuilt, so that insertions rarely move the arrays. Under other ⊕
(plus) a stored value is a value even when it is zero, so a removal or an insertion rebuilds the arrays.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from mmsb import _kernels
from mmsb.errors import InvalidDeltaError
from mmsb.semiring import _kview


_NARROW = frozenset((np.dtype(np.float64), np.dtype(np.float32), np.dtype(np.bool_)))


#: the dimensions below which int32 column indices are used
INT32_DIMS = 2**31 - 1


def index_dtype(shape: tuple | int, dtype: Any) -> np.dtype:
    """The column-index dtype of a CSR of ``shape`` (rows, columns; an int: the size of a square matrix) with
    values of ``dtype``: int32 where the kernels are specialised for it (float64, float32, bool: a third less
    memory traffic than int64) and both dimensions fit, int64 otherwise.

    Both dimensions, not only the columns: a matrix and its transpose (whose column indices are the matrix's rows)
    then get the same dtype, which the kernels that change the pair in one call (``repair.update``) require."""
    dims = (shape, shape) if isinstance(shape, (int, np.integer)) else tuple(shape)
    fits = max(dims, default=0) < INT32_DIMS
    return np.dtype(np.int32) if fits and np.dtype(dtype) in _NARROW else np.dtype(np.int64)


@dataclass
class CSR:
    """A CSR matrix (int64 ``indptr``; ``indices`` of :func:`index_dtype`) and its transpose (for push), both in the
    page dtype."""

    shape: tuple
    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    _t: Optional["CSR"] = field(default=None, repr=False)
    _range: Optional[tuple] = field(default=None, repr=False)
    _abs_t: Optional["CSR"] = field(default=None, repr=False)
    _finite: Optional[tuple] = field(default=None, repr=False)
    #: the value of a free slot (⊕'s zero) when the matrix keeps free slots, else None (every slot is an entry)
    free: Any = None
    #: whether the column indices of every row are in increasing order (slot reuse breaks it)
    ordered: bool = True
    #: bumped by every entry update (device copies of the matrix compare it)
    version: int = 0

    @property
    def nnz(self) -> int:
        """Stored entries (free slots not counted)."""
        if self.free is None:
            return int(self.data.size)
        return int(np.count_nonzero(self._live()))

    def _live(self) -> np.ndarray:
        return np.ones(self.data.size, dtype=bool) if self.free is None else self.data != self.free

    @property
    def weight_range(self) -> tuple:
        """(min, max) of the stored values as floats ((0, 0) when empty); computed once, then only widened by
        entry updates (a wider range is still a valid bound for the bucketed closure)."""
        if self._range is None:
            d = self.data if self.free is None else self.data[self._live()]
            if not d.size or d.dtype.kind not in "iuf":
                return (0.0, 0.0)               # (not kept: the first stored values set the range)
            self._range = (float(d.min()), float(d.max()))
        return self._range

    @property
    def T(self) -> "CSR":
        """The transpose (column j lists the rows i with a stored A[i, j]); computed once."""
        if self._t is None:
            n, m = self.shape
            rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(self.indptr))
            order = np.argsort(self.indices, kind="stable")
            indptr_t = np.zeros(m + 1, dtype=np.int64)
            np.cumsum(np.bincount(self.indices, minlength=m), out=indptr_t[1:])
            self._t = CSR((m, n), indptr_t, rows[order].astype(self._t_index_dtype()), self.data[order],
                          free=self.free)
            self._t._t = self
        return self._t

    def _t_index_dtype(self) -> np.dtype:
        """The transpose's column-index dtype: the matrix's own (the pair must agree, see :func:`index_dtype`), or
        int64 where int32 cannot hold the matrix's row numbers."""
        own = np.dtype(self.indices.dtype)
        return own if own == np.int64 or self.shape[0] < INT32_DIMS else np.dtype(np.int64)

    @property
    def abs_T(self) -> "CSR":
        """The transpose with ``|A[i, j]|`` as values (magnitude bounds for difference propagation); computed once."""
        if self._abs_t is None:
            t = self.T
            if t.free is None:
                self._abs_t = CSR(t.shape, t.indptr, t.indices, np.abs(t.data))
            else:                   # free slots (⊕'s zero, maybe -inf) must not turn into stored magnitudes
                r, c, v = _entries(t)
                self._abs_t = build_csr(t.shape, r, c, np.abs(v))
        return self._abs_t

    @property
    def has_nan(self) -> bool:
        """Whether a stored value is NaN; computed once."""
        return self._finite_flags()[0]

    @property
    def has_nonfinite(self) -> bool:
        """Whether a stored value is ±inf or NaN; computed once."""
        return self._finite_flags()[1]

    def _finite_flags(self) -> tuple:
        if self._finite is None:
            d = self.data if self.free is None else self.data[self._live()]
            if d.dtype.kind == "f" and d.size:
                self._finite = (bool(np.isnan(d).any()), not bool(np.isfinite(d).all()))
            else:
                self._finite = (False, False)
        return self._finite

    def column_entries(self, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The stored entries of the columns ``cols``: ``(k, rows, values)``, where ``k`` indexes ``cols``."""
        t = self.T
        starts, lens = t.indptr[cols], t.indptr[cols + 1] - t.indptr[cols]
        total = int(lens.sum())
        if not total:
            empty = np.empty(0, dtype=np.int64)
            return empty, empty, t.data[:0]
        offs = np.repeat(starts - np.cumsum(np.r_[0, lens[:-1]]), lens) + np.arange(total)
        k = np.repeat(np.arange(cols.size, dtype=np.int64), lens)
        if self.free is not None:
            live = t.data[offs] != self.free
            k, offs = k[live], offs[live]
        return k, t.indices[offs], t.data[offs]

    def column_rows(self, cols: np.ndarray) -> np.ndarray:
        """Sorted unique rows i with a stored A[i, j] for some j in ``cols``."""
        t = self.T
        if cols.size == 1 and t.ordered and t.free is None:
            # one column of the transpose: its rows are sorted and unique (with free slots they are not: a row's
            # spare slot may carry the column of one of its entries)
            j = cols[0]
            return t.indices[t.indptr[j]:t.indptr[j + 1]].astype(np.int64)
        starts, ends = t.indptr[cols], t.indptr[cols + 1]
        lens = ends - starts
        total = int(lens.sum())
        if total == 0:
            return np.empty(0, dtype=np.int64)
        offs = np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(total)
        rows = t.indices[offs]
        if total * 8 >= self.shape[0]:  # dense enough: a row bitmap is O(n), far faster than np.unique's hashing
            mark = np.zeros(self.shape[0], dtype=bool)
            mark[rows] = True
            return np.flatnonzero(mark).astype(np.int64, copy=False)
        rows = rows.astype(np.int64)
        rows.sort()
        keep = np.empty(rows.size, dtype=bool)
        keep[0] = True
        np.not_equal(rows[1:], rows[:-1], out=keep[1:])
        return rows[keep]


def as_csr(matrix: Any, shape: tuple, dtype: np.dtype, what: str) -> CSR:
    """Convert a scipy.sparse matrix/array, an object with CSR arrays, or a dense ndarray to :class:`CSR`.

    Stored entries are values (even a stored 0); duplicates are summed as scipy does; every entry of a dense
    ndarray is stored.
    """
    if hasattr(matrix, "tocsr") and hasattr(matrix, "format"):
        m = matrix.tocsr(copy=True)
        m.sum_duplicates()
        indptr, indices, data, mshape = m.indptr, m.indices, m.data, m.shape
    elif all(hasattr(matrix, a) for a in ("indptr", "indices", "data", "shape")):
        indptr, indices, data, mshape = matrix.indptr, matrix.indices, matrix.data, matrix.shape
    else:
        dense = np.asarray(matrix)
        if dense.ndim != 2:
            raise InvalidDeltaError(f"{what}: matrix must be 2-D, got shape {dense.shape}")
        n, m = dense.shape
        indptr = np.arange(0, n * m + 1, max(m, 1), dtype=np.int64)[: n + 1] if m else np.zeros(n + 1, np.int64)
        indices = np.tile(np.arange(m, dtype=np.int64), n)
        data, mshape = dense.ravel(), dense.shape
    if tuple(mshape) != tuple(shape):
        hint = "" if what.startswith("matrix") else " (dst.size, src.size)"
        raise InvalidDeltaError(f"{what}: matrix has shape {tuple(mshape)}, expected {tuple(shape)}{hint}")
    data = np.asarray(data)
    if data.dtype.kind not in "biuf":
        raise InvalidDeltaError(f"{what}: matrix values must be numeric, got {data.dtype}")
    cast = data.astype(dtype)
    if dtype.kind in "iub" and data.dtype.kind == "f" and not np.array_equal(cast, data):
        raise InvalidDeltaError(f"{what}: matrix values do not fit the page dtype {dtype}")
    indptr = np.ascontiguousarray(indptr, dtype=np.int64)
    indices = np.asarray(indices)
    n, m = shape
    if indptr.size != n + 1 or indptr[0] != 0 or indptr[-1] != indices.size or np.any(np.diff(indptr) < 0):
        raise InvalidDeltaError(f"{what}: malformed CSR indptr")
    if indices.dtype.kind not in "iu" or (indices.size and (indices.min() < 0 or indices.max() >= m)):
        raise InvalidDeltaError(f"{what}: CSR column index out of range")
    indices = np.ascontiguousarray(indices, dtype=index_dtype((n, m), dtype))
    return CSR((n, m), indptr, indices, np.ascontiguousarray(cast))


def _expand(starts: np.ndarray, lens: np.ndarray, total: int) -> np.ndarray:
    """The positions ``starts[k] .. starts[k] + lens[k] - 1`` of every segment, concatenated."""
    return np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(total, dtype=np.int64)


def _slack(counts: np.ndarray) -> np.ndarray:
    """Free slots a rebuilt row keeps for later insertions: one, plus an eighth of its entries."""
    return 1 + (counts >> 3)


def build_csr(shape: tuple, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, free: Any = None,
              slack: bool = False) -> CSR:
    """A CSR of the entries ``(rows, cols, vals)`` (pairs unique), rows in column order. ``free`` (a selective
    ⊕'s zero) marks free slots; with ``slack`` every row also gets some (column ``row % ncols``, value ``free``)
    for later insertions. A matrix starts exact and gets slack the first time an insertion finds a row full."""
    n, m = shape
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    if rows.size > 1:
        key = rows * max(m, 1) + cols
        if not bool((key[1:] > key[:-1]).all()):          # (entries given in order need no sort)
            order = np.argsort(key, kind="stable")
            rows, cols, vals = rows[order], cols[order], vals[order]
    counts = np.bincount(rows, minlength=n).astype(np.int64)
    cap = counts + _slack(counts) if free is not None and slack and m else counts
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(cap, out=indptr[1:])
    total = int(indptr[-1])
    if cap is counts:                                    # (its own arrays: entries change in place later)
        return CSR((n, m), indptr, np.array(cols, dtype=index_dtype((n, m), vals.dtype)), np.array(vals), free=free)
    indices = np.repeat((np.arange(n, dtype=np.int64) % m).astype(index_dtype((n, m), vals.dtype)), cap)
    data = np.full(total, free, dtype=vals.dtype)
    gap = cap - counts                                   # each row's entries first, then its free slots
    pos = np.arange(rows.size, dtype=np.int64) + np.repeat(np.cumsum(gap) - gap, counts)
    indices[pos] = cols
    data[pos] = vals
    return CSR((n, m), indptr, indices, data, free=free)


def _entries(A: CSR) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stored entries of ``A`` as ``(rows, cols, vals)`` (free slots left out)."""
    rows = np.repeat(np.arange(A.shape[0], dtype=np.int64), np.diff(A.indptr))
    if A.free is None:
        return rows, A.indices.copy(), A.data.copy()
    live = A.data != A.free
    return rows[live], A.indices[live], A.data[live]


def _locate(A: CSR, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Positions of ``A[rows[k], cols[k]]`` in ``A.indices``/``A.data``; -1 where row ``rows[k]`` has no slot of
    that column. A live entry wins over a free slot of the same column."""
    return locate(A, rows, cols, _zero_of(A))[1]


def _zero_of(A: CSR) -> Any:
    return A.free if A.free is not None else A.data.dtype.type(0)


def _set(A: CSR, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, present: np.ndarray,
         pos: Optional[np.ndarray] = None) -> tuple:
    """Set ``A[rows[k], cols[k]] = vals[k]`` where ``present[k]``, remove it elsewhere, in place where it can (one
    call of the ``assign`` kernel; ``pos``: the positions from :func:`locate`, when known). Returns the kernel's
    ``(misses, claimed, positions, miss)``: :func:`_settle` makes the changes it could not."""
    return _kernels.repair.assign(A.indptr, A.indices, _kview(A.data), A.shape[1], rows, cols, _kview(vals), present,
                                  pos, A.free)


def _settle(A: CSR, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, done: tuple) -> bool:
    """Finish an entry update of ``A`` that the kernels made in place where they could (``done``: ``(misses,
    claimed, positions, miss)``): rebuild the arrays for the changes left undone. True when rebuilt."""
    misses, claimed, pos, miss = done
    A.version += 1
    if claimed:
        A.ordered = False
    if not misses:
        return False
    if A.free is None:                                  # every slot is an entry: rebuild without and with them
        gone = miss & (pos >= 0)
        ins = miss & ~gone
        r, c, v = _entries_without(A, pos[gone])
        _adopt(A, build_csr(A.shape, np.concatenate([r, rows[ins]]), np.concatenate([c, cols[ins]]),
                            np.concatenate([v, vals[ins]])))
        return True
    r, c, v = _entries(A)                               # rows with no free slot left: rebuild with slack
    _adopt(A, build_csr(A.shape, np.concatenate([r, rows[miss]]), np.concatenate([c, cols[miss]]),
                        np.concatenate([v, vals[miss]]), free=A.free, slack=True))
    return True


def _entries_without(A: CSR, drop: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = np.repeat(np.arange(A.shape[0], dtype=np.int64), np.diff(A.indptr))
    keep = np.ones(A.data.size, dtype=bool)
    keep[drop] = False
    return rows[keep], A.indices[keep], A.data[keep]


def _adopt(A: CSR, B: CSR) -> None:
    """Make ``A`` hold ``B``'s arrays (the object stays, so that rules keep it); caches start over."""
    A.indptr, A.indices, A.data, A.ordered = B.indptr, B.indices, B.data, True
    A._range = A._finite = A._abs_t = None


def _widen(A: CSR, vals: np.ndarray) -> None:
    """Keep the cached range and finiteness flags true bounds after ``vals`` were stored (values equal to a free
    slot's are not entries)."""
    if A.free is not None:
        vals = vals[vals != A.free]
    if not vals.size:
        _widen_by(A, (np.inf, -np.inf, False, False, 0))
        return
    real = vals.astype(np.float64) if vals.dtype.kind in "iuf" else np.zeros(0)
    num = real[~np.isnan(real)] if vals.dtype.kind == "f" else real
    _widen_by(A, (float(num.min()) if num.size else np.inf, float(num.max()) if num.size else -np.inf,
                  num.size < real.size, bool(np.isinf(num).any()), int(vals.size)))


def _widen_by(A: CSR, stats: tuple) -> None:
    """:func:`_widen` from ``(lo, hi, any NaN, any ±inf, count)`` of the stored values (lo, hi over those not NaN)."""
    lo, hi, nan, inf, count = stats
    if A._finite is not None and A._finite != (False, False):
        A._finite = None                        # a NaN or inf may just have been overwritten: look again when asked
    if not count:
        return
    if A._range is not None and A.data.dtype.kind in "iuf" and lo <= hi:
        A._range = (min(A._range[0], lo), max(A._range[1], hi))
    if A._finite is not None and A.data.dtype.kind == "f":
        A._finite = (A._finite[0] or nan, A._finite[1] or nan or inf)


def set_entries(A: CSR, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, present: np.ndarray,
                pos: Optional[np.ndarray] = None) -> None:
    """Change entries of ``A`` and of its transpose (when built): ``A[rows[k], cols[k]] = vals[k]`` where
    ``present[k]``, the entry removed elsewhere. ``(rows, cols)`` pairs are unique; ``vals`` has A's dtype;
    ``pos`` (optional) are their positions in A from :func:`locate`."""
    done = _set(A, rows, cols, vals, present, pos)
    done_t = _set(A._t, cols, rows, vals, present) if A._t is not None else None
    settle_entries(A, rows, cols, vals, done, done_t, vals[present])


def settle_entries(A: CSR, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, done: tuple,
                   done_t: Optional[tuple], stored: Any) -> None:
    """The bookkeeping after the kernels changed entries of ``A`` (``done``) and of its transpose (``done_t``)
    in place: rebuilds for what they could not change in place, versions, the cached range and finiteness flags
    (``stored``: the values stored, or their ``(lo, hi, any NaN, any ±inf, count)``), the magnitude transpose."""
    stats = stored if isinstance(stored, tuple) else None
    moved = _settle(A, rows, cols, vals, done)
    if not moved:
        _widen_by(A, stats) if stats is not None else _widen(A, stored)
    t = A._t
    if t is None:
        return
    t_moved = _settle(t, cols, rows, vals, done_t)
    if not t_moved:
        _widen_by(t, stats) if stats is not None else _widen(t, stored)
    if moved or t_moved or A._abs_t is None or t.free is not None:
        A._abs_t = None
        return
    pos = _locate(t, cols, rows)
    A._abs_t.data[pos[pos >= 0]] = np.abs(t.data[pos[pos >= 0]])


def locate(A: CSR, rows: np.ndarray, cols: np.ndarray, zero: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(A[rows[k], cols[k]], their positions)``: ``zero`` and -1 where there is no entry or free slot."""
    vals, pos = _kernels.repair.locate(A.indptr, A.indices, _kview(A.data), rows, cols,
                                       _kview(np.array([zero], dtype=A.data.dtype))[0], A.free)
    return vals.view(A.data.dtype), pos


def get_entries(A: CSR, rows: np.ndarray, cols: np.ndarray, zero: Any) -> np.ndarray:
    """``A[rows[k], cols[k]]`` (``zero`` where there is no entry)."""
    return locate(A, rows, cols, zero)[0]

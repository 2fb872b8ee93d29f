"""Rules: how a derived page depends on others (``link``, ``derive``, ``closure``), and their CSR matrices."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from mmsb.delta import SchemaOp
from mmsb.errors import InvalidDeltaError


@dataclass
class CSR:
    """A CSR matrix with int64 indices and its transpose (for push), both in the page dtype."""

    shape: tuple
    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    _t: Optional["CSR"] = field(default=None, repr=False)
    _range: Optional[tuple] = field(default=None, repr=False)
    _abs_t: Optional["CSR"] = field(default=None, repr=False)
    _finite: Optional[tuple] = field(default=None, repr=False)

    @property
    def nnz(self) -> int:
        return int(self.data.size)

    @property
    def weight_range(self) -> tuple:
        """(min, max) of the stored values as floats ((0, 0) when empty); computed once."""
        if self._range is None:
            d = self.data
            self._range = (float(d.min()), float(d.max())) if d.size and d.dtype.kind in "iuf" else (0.0, 0.0)
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
            self._t = CSR((m, n), indptr_t, rows[order], self.data[order])
            self._t._t = self
        return self._t

    @property
    def abs_T(self) -> "CSR":
        """The transpose with ``|A[i, j]|`` as values (magnitude bounds for difference propagation); computed once."""
        if self._abs_t is None:
            t = self.T
            self._abs_t = CSR(t.shape, t.indptr, t.indices, np.abs(t.data))
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
            d = self.data
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
        return np.repeat(np.arange(cols.size, dtype=np.int64), lens), t.indices[offs], t.data[offs]

    def column_rows(self, cols: np.ndarray) -> np.ndarray:
        """Sorted unique rows i with a stored A[i, j] for some j in ``cols``."""
        t = self.T
        if cols.size == 1:                  # one column of the transpose: its rows are sorted and unique
            j = cols[0]
            return t.indices[t.indptr[j]:t.indptr[j + 1]].copy()
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
        raise InvalidDeltaError(f"{what}: matrix has shape {tuple(mshape)}, expected {tuple(shape)} "
                                "(dst.size, src.size)")
    data = np.asarray(data)
    if data.dtype.kind not in "biuf":
        raise InvalidDeltaError(f"{what}: matrix values must be numeric, got {data.dtype}")
    cast = data.astype(dtype)
    if dtype.kind in "iub" and data.dtype.kind == "f" and not np.array_equal(cast, data):
        raise InvalidDeltaError(f"{what}: matrix values do not fit the page dtype {dtype}")
    indptr = np.ascontiguousarray(indptr, dtype=np.int64)
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    n, m = shape
    if indptr.size != n + 1 or indptr[0] != 0 or indptr[-1] != indices.size or np.any(np.diff(indptr) < 0):
        raise InvalidDeltaError(f"{what}: malformed CSR indptr")
    if indices.size and (indices.min() < 0 or indices.max() >= m):
        raise InvalidDeltaError(f"{what}: CSR column index out of range")
    return CSR((n, m), indptr, indices, np.ascontiguousarray(cast))


@dataclass
class Rule:
    """One rule into ``dst``. ``kind`` is ``link``, ``derive`` or ``closure``."""

    id: int
    kind: str
    dst: str
    srcs: list
    semiring: Any = None
    matrix: Optional[CSR] = None
    fn: Optional[Callable] = None
    fn_name: Optional[str] = None

    @property
    def active(self) -> bool:
        return self.kind != "derive" or self.fn is not None

    def to_schema(self) -> SchemaOp:
        """The rule as a log/checkpoint record (matrices as arrays, functions by name, never pickled)."""
        payload = {"id": self.id, "kind": self.kind, "dst": self.dst, "srcs": list(self.srcs),
                   "semiring": self.semiring.name if self.semiring is not None else None,
                   "function": self.fn_name}
        arrays = {}
        if self.matrix is not None:
            payload["shape"] = list(self.matrix.shape)
            arrays = {"indptr": self.matrix.indptr, "indices": self.matrix.indices, "data": self.matrix.data}
        return SchemaOp("rule_added", payload, arrays)

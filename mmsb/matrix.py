"""Matrix pages: a page whose value is a sparse matrix, changed entry by entry, that rules read.

A :class:`MatrixPage` is a page everywhere (the mapping, the log, checkpoints, ``at(e)``, transactions). Its
positions are its entries, numbered ``row * ncols + col``: a matrix delta is a sparse :class:`~mmsb.delta.Delta`
over those flat positions, so the log, the conflict history and replay handle it as they handle any page. An
absent entry is the semiring's ⊕-zero, and assigning ⊕-zero removes an entry.

The entries are kept in the kernels' CSR layout (:mod:`mmsb.csr`), and a rule over the matrix reads that CSR (or a
*view* of it in the rule's semiring and dtype, kept in step by the page), so a matrix delta costs the entries it
changes, not the matrix. :class:`MatrixBackend` is the page kind's backend: the commit pipeline, replay and reads
reach it through :func:`mmsb.devices.backend_of`, as they reach a device's.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from mmsb import _kernels, _ops
from mmsb import csr as _csr
from mmsb.csr import CSR
from mmsb.delta import SchemaOp
from mmsb.devices import DeviceBackend
from mmsb.errors import DeviceError, InvalidDeltaError
from mmsb.log.records import MAX_ELEMS
from mmsb.pages import Page
from mmsb.propagate import Change, changed_positions
from mmsb.semiring import Semiring

if TYPE_CHECKING:  # pragma: no cover
    from mmsb.buffer import Buffer
    from mmsb.delta import Delta
    from mmsb.propagate import UndoLog

#: the largest number of positions (rows x cols) a matrix page may have: flat positions stay exact in int64
MAX_POSITIONS = MAX_ELEMS      # a matrix's flat positions are a log record's element bound


def selective(sr: Semiring, dtype: np.dtype) -> bool:
    """Whether a free slot holding ⊕'s zero is exactly an absent entry in the kernels, so that entries can be
    removed and inserted in place: ⊕ picks one of its operands (min, max, or) and ``zero ⊗ x`` never wins it.

    That holds when ⊗ is min or max (max_min, min_max), for bool pages (or_and), and for ⊗ = plus on floats
    (``±inf + x`` stays ±inf). It fails for ⊗ = plus on integers (the zero is the dtype's max or min:
    ``INT_MAX + x`` overflows, or is a finite value for x < 0) and for ⊗ = times (max_times: ``0 * x`` beats a
    negative value): those matrices rebuild their arrays on a structural change instead."""
    dtype = np.dtype(dtype)
    codes = sr.codes_for(dtype)
    if codes is None or codes[0] not in (_ops.OP_MIN, _ops.OP_MAX):
        return False
    if dtype.kind == "b" or codes[1] in (_ops.OP_MIN, _ops.OP_MAX):
        return True
    return codes[1] == _ops.OP_PLUS and dtype.kind == "f"


class MatrixPage(Page):
    """A page holding a sparse matrix of ``shape`` ``(nrows, ncols)``. Read it with :meth:`read` (a
    ``scipy.sparse.csr_array`` copy); write it with ``buf.write(M, values, index=(rows, cols))`` or a scipy
    sparse delta; give it to ``buf.link`` / ``buf.closure`` so that its later changes update their targets."""

    __slots__ = ("csr", "zero", "_views", "_mspill")

    kind = "matrix"

    def __init__(self, buf: "Buffer", name: str, shape: tuple, dtype: np.dtype, semiring: Semiring,
                 metadata: Optional[dict], epoch: int, zero: Any, csr: CSR):
        super().__init__(buf, name, shape, dtype, semiring, "cpu", metadata, epoch)
        self.zero = zero
        self.csr = csr
        self._views: dict = {}
        self._mspill: Any = None        # a memory.MatrixSpill while spilled under memory_limit (mmsb.spill)

    @property
    def backend(self) -> "MatrixBackend":
        return MATRIX

    @property
    def nnz(self) -> int:
        """The number of stored entries."""
        if self._mspill is not None:
            return self._mspill.nnz
        return self.csr.nnz

    @property
    def nbytes(self) -> int:
        """Bytes of the page's own CSR arrays, free slots included (its transpose and the views kept for rules in
        other semirings not counted: :attr:`memory_bytes` counts everything)."""
        if self._mspill is not None:
            return self._mspill.page_nbytes
        a = self.csr
        return int(a.indptr.nbytes + a.indices.nbytes + a.data.nbytes)

    @property
    def memory_bytes(self) -> int:
        """Bytes the matrix holds in memory now, as ``memory_limit`` counts them: its CSR (free slots included),
        its transpose and magnitude transpose once built, and the views kept for rules in other semirings with
        their transposes; 0 while it is spilled."""
        from mmsb.spill import held_bytes

        return 0 if self._mspill is not None else held_bytes(self)

    def use(self) -> None:
        """The engine is about to run a rule that reads this matrix: under ``memory_limit``, reload it if it was
        spilled and make it the most recently used page (without a limit: one attribute check)."""
        mm = self._buf._memory
        if mm.limit is not None:
            mm.use_matrix(self)

    def read(self, index: Any = None) -> Any:
        """A ``scipy.sparse.csr_array`` copy of the matrix, or with ``index=(rows, cols)`` the values of those
        entries (⊕-zero where absent), as of the last commit."""
        return super().read(index)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.read().toarray()
        return out if dtype is None else out.astype(dtype, copy=False)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return (f"MatrixPage({self.name!r}, shape={self.shape}, nnz={self.nnz}, dtype={self.dtype.name}, "
                f"semiring={self.semiring.name}, epoch={self.epoch})")

    # -- entries --------------------------------------------------------------------------------------------
    def keys(self, index: Any) -> np.ndarray:
        """Flat positions ``row * ncols + col`` of ``index = (rows, cols)``; InvalidDeltaError names the matrix."""
        rows, cols = entry_index(self, index, copy=False)
        keys = rows * self.shape[1]
        keys += cols
        return keys

    def view(self, sr: Semiring, dtype: np.dtype) -> CSR:
        """The matrix as a rule in semiring ``sr`` over pages of ``dtype`` reads it: the page's own CSR when both
        match, else a view in that algebra (absent entries are ``sr``'s zero), kept in step with the page."""
        dtype = np.dtype(dtype)
        if sr is self.semiring and dtype == self.dtype:
            return self.csr
        key = (sr.name, dtype.str)
        v = self._views.get(key)
        if v is None:
            rows, cols, vals = _csr._entries(self.csr)
            zero = sr.zero_for(dtype)
            v = _csr.build_csr(self.shape, rows, cols, vals.astype(dtype),
                               free=zero if selective(sr, dtype) else None)
            self._views[key] = (v, sr, zero)
            return v
        return v[0]

    def set(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, pos: Optional[np.ndarray] = None) -> None:
        """Set entries (``vals`` in the page dtype; ⊕-zero removes one) in the page and in every view (``pos``:
        their positions in the page's CSR, when just located)."""
        present = vals != self.zero
        _csr.set_entries(self.csr, rows, cols, vals, present, pos)
        for v, _, _ in self._views.values():
            _csr.set_entries(v, rows, cols, vals.astype(v.data.dtype), present)

    def get(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Values of the entries (⊕-zero where absent)."""
        return _csr.get_entries(self.csr, rows, cols, self.zero)

    def to_schema(self) -> SchemaOp:
        """The page as a ``matrix_created`` record (its description and its entries as flat keys and values). A
        spilled matrix's entries are read from its spill file: it stays spilled."""
        rows, cols, vals = _csr._entries(self.csr if self._mspill is None else self._buf._memory.spilled_csr(self))
        keys = rows * self.shape[1] + cols
        order = np.argsort(keys, kind="stable")
        return SchemaOp("matrix_created", matrix_payload(self.name, self.shape, self.dtype, self.semiring.name,
                                                          self._metadata, self.epoch),
                        {"keys": keys[order], "values": np.ascontiguousarray(vals[order])})


def matrix_payload(name: str, shape: tuple, dtype: np.dtype, semiring: str, metadata: Optional[dict],
                   epoch: Optional[int] = None) -> dict:
    pl = {"name": name, "shape": list(shape), "dtype": np.dtype(dtype).str, "semiring": semiring,
          "metadata": metadata or None}
    if epoch is not None:
        pl["epoch"] = int(epoch)
    return pl


def entry_index(page: MatrixPage, index: Any, copy: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``index = (rows, cols)`` as two int64 arrays, checked against the matrix's shape (``copy=False``: the
    caller's arrays themselves where they are int64 already, for a caller that only reads them)."""
    n, m = page.shape
    name = page.name
    if not isinstance(index, tuple) or len(index) != 2:
        raise InvalidDeltaError(f"matrix {name!r}: index must be (rows, cols), got {type(index).__name__}")
    out = []
    for what, arr, bound in (("row", index[0], n), ("column", index[1], m)):
        a = np.asarray(arr)
        if a.dtype.kind not in "iu" and not (a.size == 0 and a.dtype.kind == "f"):
            raise InvalidDeltaError(f"matrix {name!r}: {what} indices must be integers, got dtype {a.dtype}")
        a = np.array(a.reshape(-1), dtype=np.int64) if copy else np.asarray(a.reshape(-1), dtype=np.int64)
        if a.size:
            lo, hi = int(a.min()), int(a.max())
            if lo < 0 or hi >= bound:
                bad = lo if lo < 0 else hi
                raise InvalidDeltaError(f"matrix {name!r}: {what} index {bad} out of range [0, {bound}) "
                                        f"(shape {page.shape})")
        out.append(a)
    if out[0].size != out[1].size:
        raise InvalidDeltaError(f"matrix {name!r}: {out[0].size} row indices but {out[1].size} column indices")
    return out[0], out[1]


def initial_entries(data: Any, shape: tuple, dtype: np.dtype, zero: Any, name: str) \
        -> tuple[np.ndarray, np.ndarray]:
    """Flat keys (sorted, unique) and values of a matrix page's initial ``data`` (a scipy sparse matrix or array,
    or a dense ndarray); entries equal to ⊕'s zero are not stored."""
    from mmsb.csr import as_csr

    if data is None:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=dtype)
    A = as_csr(data, shape, dtype, f"matrix {name!r}")
    rows, cols, vals = _csr._entries(A)
    keep = vals != zero
    keys = rows[keep] * shape[1] + cols[keep]
    vals = vals[keep]
    if keys.size > 1 and not bool((keys[1:] > keys[:-1]).all()):
        order = np.argsort(keys, kind="stable")
        keys, vals = keys[order], vals[order]
    return keys, np.ascontiguousarray(vals)


def csr_from_keys(shape: tuple, keys: np.ndarray, vals: np.ndarray, sr: Semiring, zero: Any) -> CSR:
    """The page CSR of flat ``keys`` (unique) and ``vals``."""
    rows, cols = np.divmod(keys, shape[1]) if shape[1] else (keys, keys)
    return _csr.build_csr(shape, rows, cols, vals, free=zero if selective(sr, vals.dtype) else None)


def check_shape(shape: Any, name: str) -> tuple:
    """A matrix page's shape: two non-negative ints whose product fits :data:`MAX_POSITIONS`."""
    try:
        n, m = (int(s) for s in shape)
        bad = any(int(s) != s for s in shape)
    except (TypeError, ValueError):
        raise InvalidDeltaError(f"matrix {name!r}: shape must be (nrows, ncols), got {shape!r}") from None
    if bad or n < 0 or m < 0:
        raise InvalidDeltaError(f"matrix {name!r}: shape must be two non-negative integers, got {shape!r}")
    if n * m > MAX_POSITIONS:
        raise InvalidDeltaError(f"matrix {name!r}: shape {(n, m)} has more than 2**48 positions")
    return (n, m)


class MatrixBackend(DeviceBackend):
    """Where matrix pages' entries live (host memory, CSR) and how deltas and reads run on them."""

    family = "matrix"

    def apply_delta(self, buf: "Buffer", page: "Page", delta: "Delta", undo: Optional["UndoLog"]) \
            -> Optional["Change"]:
        """Merge ``delta`` (flat positions) into the matrix; the entries that changed and their old values.

        Under a built-in semiring one kernel call locates the entries, merges them, keeps those that change and
        sets them in the page's CSR and in its transpose; views in other semirings follow here."""
        assert isinstance(page, MatrixPage)
        mm = buf._memory
        if mm.limit is not None:
            mm.use_matrix(page)
        idx, vals = delta.sparse()
        codes = page.semiring.codes_for(page.dtype)
        if delta.accumulate and codes is None:
            return self._apply_numpy(page, idx, vals, undo)
        A = page.csr
        t = A._t
        got = _kernels.repair.update(A.indptr, A.indices, A.data, page.shape[1], idx,
                                     np.asarray(vals, dtype=page.dtype),
                                     codes[0] if delta.accumulate else _ops.OP_ASSIGN, page.zero, A.free,
                                     *((t.indptr, t.indices, t.data) if t is not None else ()))
        if got is None:
            return None
        idx, rows, cols, old, new, present, pos, pos_t, miss, miss_t, misses, claimed, misses_t, claimed_t, \
            stats = got
        if undo is not None:                    # a failure in what follows is rolled back too
            undo.action(lambda: page.set(rows, cols, old))
        _csr.settle_entries(A, rows, cols, new, (misses, claimed, pos, miss),
                            (misses_t, claimed_t, pos_t, miss_t) if t is not None else None, stats)
        for v, _, _ in page._views.values():
            _csr.set_entries(v, rows, cols, new.astype(v.data.dtype), present)
        return Change(idx, old, new)

    @staticmethod
    def _apply_numpy(page: MatrixPage, idx: np.ndarray, vals: np.ndarray, undo: Optional["UndoLog"]) \
            -> Optional["Change"]:
        """An accumulating delta under a semiring the kernels do not know: ⊕ in numpy, then the entries set."""
        rows, cols = np.divmod(idx, page.shape[1])
        old, pos = _csr.locate(page.csr, rows, cols, page.zero)
        new = page.semiring.add_arrays(old, vals)
        moved = changed_positions(new, old)
        if not moved.any():
            return None
        if not moved.all():
            idx, rows, cols, old, new, pos = idx[moved], rows[moved], cols[moved], old[moved], new[moved], pos[moved]
        new = np.asarray(new, dtype=page.dtype)
        if undo is not None:                    # first: a failure inside set() is rolled back too
            undo.action(lambda: page.set(rows, cols, old))
        page.set(rows, cols, new, pos)
        return Change(idx, old, new)

    def values_at(self, buf: "Buffer", page: "Page", idx: np.ndarray) -> np.ndarray:
        page.use()
        rows, cols = np.divmod(idx, page.shape[1])
        return page.get(rows, cols)

    def read(self, buf: "Buffer", page: "Page", index: Any) -> Any:
        page.use()
        if index is not None:
            rows, cols = entry_index(page, index)
            return page.get(rows, cols)
        try:
            import scipy.sparse as sp
        except ImportError:                         # pragma: no cover - scipy is in the test and bench extras
            raise ImportError(f"matrix {page.name!r}: read() returns a scipy.sparse.csr_array; install scipy, "
                              "or read entries with read(index=(rows, cols))") from None
        rows, cols, vals = _csr._entries(page.csr)
        out = sp.csr_array((vals, (rows, cols)), shape=page.shape)
        out.sort_indices()
        return out

    def move(self, buf: "Buffer", page: "Page", device: str) -> None:
        raise DeviceError(f"matrix {page.name!r}: matrix pages live in host memory; the rules that read them run "
                          "where their target pages are")

    def host_copy(self, page: "Page") -> np.ndarray:
        raise DeviceError(f"matrix {page.name!r} has no dense host copy; read() it")


MATRIX = MatrixBackend()


def new_page(buf: "Buffer", op: SchemaOp, epoch: int) -> MatrixPage:
    """The matrix page a ``matrix_created`` record describes (its arrays validated first)."""
    from mmsb import semirings

    pl = op.payload
    dt = np.dtype(pl["dtype"])
    shape = (int(pl["shape"][0]), int(pl["shape"][1]))
    sr = semirings.get(pl["semiring"])
    zero = sr.zero_for(dt)
    keys, vals = op.arrays.get("keys"), op.arrays.get("values")
    total = math.prod(shape)
    if keys is None or vals is None or keys.dtype != np.int64 or vals.dtype != dt or keys.size != vals.size or \
            (keys.size and (int(keys.min()) < 0 or int(keys.max()) >= total
                            or not bool((keys[1:] > keys[:-1]).all()))):
        from mmsb.errors import CorruptionError

        raise CorruptionError(f"matrix {pl['name']!r}: its entries do not fit it", what="matrix entries")
    page = MatrixPage(buf, pl["name"], shape, dt, sr, pl.get("metadata"), int(pl.get("epoch", epoch)), zero,
                      csr_from_keys(shape, keys, vals, sr, zero))
    buf._memory.track_matrix(page)          # (a rolled-back creation releases it again)
    return page

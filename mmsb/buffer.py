"""The :class:`Buffer`: a mapping of named pages, the commit path, rules and propagation, history."""
from __future__ import annotations

import functools
import json
import math
import operator
import threading
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from mmsb import _kernels, _ops, devices, engines, semirings
from mmsb.commit import BufferLock, CommitPipeline
from mmsb.delta import Delta, SchemaOp, Txn, full_mask, is_full_mask
from mmsb.errors import (ClosedError, ConflictError, CorruptionError, DependencyError, DeviceError, HistoryError,
                         InvalidDeltaError, LogPoisonedError, MemoryBudgetError, MMSBError, PageExistsError, PageNotFoundError, ReadOnlyError,
                         SemiringError)
from mmsb.graph import Graph
from mmsb.memory import MemoryManager
from mmsb.observe import observed, report
from mmsb.pages import Page
from mmsb.propagate import Change, UndoLog
from mmsb.rules import Rule, as_csr
from mmsb.semiring import Semiring, _kview
from mmsb.txn import Transaction
from mmsb._validate import VALUE_DTYPES

PageLike = Union[str, Page]
_observed = observed


class Buffer:
    """A paged, semiring-algebraic state buffer. Create one with :func:`mmsb.open`.

    A mapping ``name -> Page`` in creation order. Every change is a delta committed at a new epoch, merged with
    the page's semiring, logged, and propagated along the rules (eagerly, or on :meth:`propagate`).
    """

    def __init__(self, *, log: Any, store: Any = None, readonly: bool = False, propagation: str = "eager",
                 memory_limit: Optional[int] = None, spill_dir: Optional[str] = None, device: str = "cpu",
                 functions: Optional[dict] = None, cluster: Any = None, view_of: Optional["Buffer"] = None):
        if propagation not in ("eager", "deferred"):
            raise ValueError(f"propagation must be 'eager' or 'deferred', got {propagation!r}")
        self._log = log
        self._store = store
        self._readonly = readonly
        self._device = device
        self._pages: dict[str, Page] = {}
        self._graph = Graph(self._pages)
        self._memory = MemoryManager(memory_limit, spill_dir)
        self._pipe = CommitPipeline(self, eager=propagation == "eager")
        self._locked_cm = self._pipe.lock
        self._lock = self._locked_cm.rlock
        self._local = threading.local()
        self._blocks_open = 0               # batch/transaction blocks open in any thread (0: skip the lookup)
        self._blocks_lock = threading.Lock()
        self._closed = False
        self._functions: dict[str, Callable] = dict(functions or {})
        self._open_txns: list[Transaction] = []
        self._snapshots: dict[int, tuple] = {}
        self._horizon = 0
        self._view_of = view_of
        self._pending_rules: dict[int, Rule] = {}
        self._engine, self._cluster = engines.create(self, cluster)
        if self._cluster is not None:
            self._pipe.after_commit.append(self._cluster.after_commit)
        if store is not None and hasattr(store, "after_commit"):
            self._pipe.after_commit.append(functools.partial(store.after_commit, self))   # automatic checkpoints

    # -- mapping ----------------------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Page:
        return self._page(name)

    def __contains__(self, name: object) -> bool:
        return (name.name if isinstance(name, Page) else name) in self._pages

    def __len__(self) -> int:
        return len(self._pages)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._pages))

    def keys(self) -> list[str]:
        return list(self._pages)

    def values(self) -> list[Page]:
        return list(self._pages.values())

    def items(self) -> list[tuple[str, Page]]:
        return list(self._pages.items())

    def __repr__(self) -> str:
        where = self._store.root if self._store is not None else "memory"
        state = "closed" if self._closed else ("read-only" if self._readonly else "read-write")
        return f"<mmsb.Buffer {where} {state} pages={len(self._pages)} epoch={self._pipe.epoch}>"

    def __enter__(self) -> "Buffer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def epoch(self) -> int:
        """The epoch of the last commit (0 for a new buffer)."""
        return self._pipe.epoch

    @property
    def _epoch(self) -> int:
        return self._pipe.epoch

    @property
    def _txid(self) -> int:
        return self._pipe.txid

    @_txid.setter
    def _txid(self, value: int) -> None:
        self._pipe.txid = int(value)

    @property
    def _counters(self) -> dict:
        return self._pipe.counters

    @property
    def graph(self) -> Graph:
        """The dependency DAG."""
        return self._graph

    @property
    def log(self) -> "LogView":
        """The committed history: ``query`` and ``stats``."""
        return LogView(self)

    @property
    def readonly(self) -> bool:
        return self._readonly

    @property
    def path(self) -> Optional[str]:
        return self._store.root if self._store is not None else None

    # -- internals used by pages and transactions -------------------------------------------------------------
    def _page(self, p: PageLike) -> Page:
        self._check_open()
        name = p.name if isinstance(p, Page) else p
        page = self._pages.get(name) if isinstance(name, str) else None
        if page is None or (isinstance(p, Page) and page is not p):
            raise PageNotFoundError(f"no page named {name!r}")
        return page

    def _array_of(self, name: str) -> np.ndarray:
        return self._memory.array(self._pages[name])


    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the buffer is closed")
        if self._log.poisoned is not None:      # the state may hold a commit that never became durable
            raise LogPoisonedError(f"the buffer's log is poisoned ({self._log.poisoned}); its state may hold a "
                                   "commit that never became durable: reopen the store")

    def _check_writable(self) -> None:
        self._check_open()
        if self._readonly:
            raise ReadOnlyError("this buffer is read-only" + (" (a view of a past epoch)" if self._view_of else ""))

    def _locked(self) -> "BufferLock":
        """The buffer lock as a context manager that counts waits."""
        return self._locked_cm

    def _read(self, page: Page, index: Any = None) -> np.ndarray:
        with self._locked():
            self._check_open()
            if self._pages.get(page.name) is not page:
                raise PageNotFoundError(f"page {page.name!r} is no longer in the buffer (dropped)")
            return devices.backend_of(page).read(self, page, index)

    def _read_device(self, page: Page) -> Any:
        with self._locked():
            self._check_open()
            return devices.backend_of(page).read_device(self, page)

    def _index(self, page: Page, index: Any) -> np.ndarray:
        idx = np.asarray(index)
        if idx.dtype.kind not in "iu":
            raise InvalidDeltaError(f"page {page.name!r}: index must be integer, got dtype {idx.dtype}")
        idx = idx.astype(np.int64, copy=False)
        if idx.size and (idx.min() < 0 or idx.max() >= page.size):
            raise InvalidDeltaError(f"page {page.name!r}: index out of range [0, {page.size})")
        return idx

    def _pin(self, page: Page, step: int) -> None:
        with self._locked():
            if step > 0:                        # pinned pages are resident: a spilled one comes back now
                if page.kind == "matrix":
                    page.use()
                else:
                    self._memory.array(page)
            page._pins += step

    def _move(self, page: Page, device: str) -> None:
        device = devices.normalize(device)
        if device == page.device:
            return
        with self._locked():
            devices.backend_of(page).move(self, page, device)

    def _place_pages(self) -> None:
        """Put every page on the buffer's default device (after a store's state was recovered on the CPU)."""
        if self._device != "cpu":
            for page in list(self._pages.values()):
                self._move(page, self._device)

    # -- pages ------------------------------------------------------------------------------------------------
    @_observed
    def create_page(self, name: str, shape: Union[int, Sequence[int]], dtype: Any = "float64",
                    semiring: Union[str, Semiring] = "plus_times", fill: Any = None, device: Optional[str] = None,
                    metadata: Optional[dict] = None, shards: Any = None) -> Page:
        """Create a page filled with ``fill`` (default: the semiring's zero) and commit it as an epoch.

        ``shards`` (a buffer opened with ``cluster=``): split the page into that many contiguous blocks owned by
        the Dask workers (``"auto"``: one per worker); see :mod:`mmsb.dask.sharding`. Ignored without a cluster."""
        self._check_writable()
        _check_name(name)
        shape_t = _shape(shape, name)
        dt = _dtype(dtype, name)
        sr = semirings.get(semiring)
        if fill is None:
            fill_v = _zero_for(sr, dt, name)
        else:
            sr.check_dtype(dt, name)
            f = np.asarray(fill)
            if f.ndim or f.dtype.kind not in "biuf" or not _castable(fill, f, dt):
                raise InvalidDeltaError(f"page {name!r}: fill {fill!r} is not a scalar castable to {dt}")
            fill_v = f.astype(dt)[()]
            if dt.kind in "iub" and f.dtype.kind in "iu" and int(fill_v) != int(f):
                raise InvalidDeltaError(f"page {name!r}: fill {fill!r} does not fit in {dt}")
            if sr.idempotent and dt.kind == "f" and np.isnan(fill_v):
                raise InvalidDeltaError(f"page {name!r}: NaN is not allowed on a page whose ⊕ is idempotent "
                                        f"({sr.name})")
        if device is None and self._device == "cpu":
            dev = "cpu"
        else:
            try:
                dev = devices.normalize(device or self._device)
            except DeviceError as exc:
                raise DeviceError(f"page {name!r}: {exc}") from None
        meta = _json_metadata(metadata, name)
        if shards is not None:                          # sharded pages (mmsb.dask): recorded in the metadata
            meta = _sharded_meta(meta, shards, math.prod(shape_t), name, self._cluster is not None)
        op = SchemaOp("page_created", {"name": name, "shape": list(shape_t), "dtype": dt.str,
                                       "semiring": sr.name, "device": dev, "metadata": meta},
                      {"fill": np.array([fill_v], dtype=dt)})
        with self._locked():
            if name in self._pages:
                raise PageExistsError(f"a page named {name!r} already exists")
            self._pipe.commit([op])
            page = self._pages[name]
        if dev != "cpu":
            self._move(page, dev)
        return page

    @_observed
    def create_matrix(self, name: str, shape: Sequence[int], dtype: Any = "float64",
                      semiring: Union[str, Semiring] = "plus_times", data: Any = None, device: Optional[str] = None,
                      metadata: Optional[dict] = None, shards: Any = None) -> Page:
        """Create a matrix page of ``shape`` ``(nrows, ncols)`` holding ``data`` (a scipy sparse matrix or array,
        or a dense ndarray; default: no entries) and commit it as an epoch.

        Its entries change with ``buf.write(M, values, index=(rows, cols))`` or a scipy sparse delta (assigning
        the semiring's zero removes an entry); ``buf.link`` / ``buf.closure`` over it follow those changes.
        ``shards``: row blocks owned by the Dask workers, as for :meth:`create_page`."""
        from mmsb.matrix import check_shape, initial_entries, matrix_payload

        self._check_writable()
        _check_name(name)
        shape_t = check_shape(shape, name)
        dt = _dtype(dtype, name)
        if dt not in VALUE_DTYPES and dt != np.bool_:
            raise InvalidDeltaError(f"matrix {name!r}: dtype {dt} has no matrix kernels; use a bool, integer, "
                                    "float32 or float64 matrix")
        sr = semirings.get(semiring)
        zero = _zero_for(sr, dt, name)
        if device is not None and devices.normalize(device) != "cpu":
            raise DeviceError(f"matrix {name!r}: matrix pages live in host memory (device={device!r}); the rules "
                              "that read them run where their target pages are")
        keys, vals = initial_entries(data, shape_t, dt, zero, name)
        if sr.idempotent and dt.kind == "f" and np.isnan(vals).any():
            raise InvalidDeltaError(f"matrix {name!r}: NaN is not allowed in a matrix whose ⊕ is idempotent "
                                    f"({sr.name})")
        meta = _json_metadata(metadata, name)
        if shards is not None:                          # sharded pages (mmsb.dask): recorded in the metadata
            meta = _sharded_meta(meta, shards, shape_t[0], name, self._cluster is not None)
        op = SchemaOp("matrix_created", matrix_payload(name, shape_t, dt, sr.name, meta),
                      {"keys": keys, "values": vals})
        with self._locked():
            if name in self._pages:
                raise PageExistsError(f"a page named {name!r} already exists")
            self._pipe.commit([op])
            return self._pages[name]

    @_observed
    def drop_page(self, p: PageLike, cascade: bool = False) -> int:
        """Drop a page. Rules reading it are dropped too when ``cascade``; otherwise they make it an error."""
        self._check_writable()
        with self._locked():
            page = self._page(p)
            readers = self._graph.rules_from(page.name)
            if readers and not cascade:
                deps = sorted({r.dst for r in readers})
                raise DependencyError(f"page {page.name!r} has dependents {deps}; drop them first or pass "
                                      "cascade=True")
            ops = [SchemaOp("rule_removed", {"id": r.id, "dst": r.dst})
                   for r in readers + self._graph.rules_into(page.name)]
            ops.append(SchemaOp("page_dropped", {"name": page.name}))
            epoch = self._pipe.commit(ops)
            self._pipe.scratch.clear()          # (arrays shaped for the pages written so far: free them with a page)
            return epoch

    # -- writes -----------------------------------------------------------------------------------------------
    def write(self, p: PageLike, values: Any, index: Any = None, mask: Any = None, accumulate: bool = False,
              source: Optional[str] = None, metadata: Optional[dict] = None) -> Optional[int]:
        """Write one delta: sparse (``index``), dense (``mask``) or the whole page; assign or ``accumulate``.

        Returns the epoch of its commit, or None inside :meth:`batch` or a transaction block.
        """
        try:                                    # (observed as the decorator does, without its frame on every write)
            if self._closed or self._readonly or self._log.poisoned is not None:
                self._check_writable()          # (raises the error that says which)
            page = self._pages.get(p) if type(p) is str else self._pages.get(p.name) if isinstance(p, Page) else None
            if page is None or (page is not p and type(p) is not str):
                page = self._page(p)            # (a page of another name form, or PageNotFoundError)
            delta = self._prepare(page, values, index, mask, accumulate, source, metadata)
            if self._blocks_open:               # the innermost batch or transaction block of this thread, if any
                stack = getattr(self._local, "stack", None)
                if stack:
                    stack[-1].ops.append(delta)
                    return None
            return self._pipe.commit([delta])
        except MMSBError as exc:
            report(exc, "write", self)
            raise

    def _prepare(self, page: Page, values: Any, index: Any, mask: Any, accumulate: bool, source: Optional[str],
                 metadata: Optional[dict]) -> Delta:
        """Validate a delta against its page and take its own copy of the data; InvalidDeltaError names the page.

        A sparse delta keeps its indices in the order given (``Delta.normalized`` says whether they are already
        sorted and unique); the commit pipeline sorts and folds them where it needs the changed positions. A
        dense delta keeps the masked values packed, in order.
        """
        name = page.name
        if page.kind == "matrix":
            return self._prepare_matrix(page, values, index, mask, accumulate, source, metadata)
        if self._graph.is_derived(name):
            raise InvalidDeltaError(f"page {name!r} is derived (the target of rules); write to its inputs")
        if index is not None and mask is not None:
            raise InvalidDeltaError(f"page {name!r}: give index or mask, not both")
        dt = page.dtype
        # a Python float to a float page needs no checks (numpy's "same_kind" rule takes it)
        vals = values if type(values) is float and dt.kind == "f" else _value_array(values, dt, "page", name)
        meta = None if metadata is None else _json_metadata(metadata, name)
        if index is not None:
            one = type(index) is list and len(index) == 1 and type(index[0]) is int
            if one:
                lo = hi = index[0]              # one Python int: checked as it is, then the delta's own array
                n = 1
            else:
                idx = np.asarray(index)
                if idx.dtype.kind not in "iu" and not (idx.size == 0 and idx.dtype.kind == "f"):
                    raise InvalidDeltaError(f"page {name!r}: index must be integer, got dtype {idx.dtype}")
                # the delta's own int64 copy (an array numpy built here from a list or tuple already is one; any
                # other array may share the caller's memory)
                idx = idx.reshape(-1).astype(np.int64, copy=not isinstance(index, (list, tuple)))
                n = idx.size
                if n:
                    lo, hi = (int(idx[0]), int(idx[0])) if n == 1 else (int(idx.min()), int(idx.max()))
            if n:
                if lo < 0:
                    raise InvalidDeltaError(f"page {name!r}: negative index {lo} (indices lie in [0, {page.size}))")
                if hi >= page.size:
                    raise InvalidDeltaError(f"page {name!r}: index {hi} out of range [0, {page.size})")
            if one:
                idx = np.empty(1, _I64)         # (empty, then set: half the time of np.array on a list)
                idx[0] = lo
            if type(vals) is float:
                if n == 1:
                    v, vals = vals, np.empty(1, dt)
                    vals[0] = v
                else:
                    vals = np.full(n, vals, dtype=dt)
            elif vals.ndim == 0:
                vals = np.array(vals, dtype=dt, ndmin=1) if n == 1 else np.full(n, vals, dtype=dt)
            else:
                if vals.ndim != 1 and vals.size == n:
                    vals = vals.reshape(-1)
                if vals.ndim != 1 or vals.size != n:
                    raise InvalidDeltaError(f"page {name!r}: {n} indices but values of shape {vals.shape}")
                vals = np.array(vals, dtype=dt)
            if dt.kind == "f" and page.semiring.idempotent and np.isnan(vals).any():
                self._check_nan(page, vals)         # (raises)
            codes = page.ops
            if accumulate and codes is None:
                idx, vals = page.semiring.reduce_duplicates(idx, vals)
                ordered = True
            else:
                ordered = n < 2 or bool((idx[1:] > idx[:-1]).all())
            # (positional: the fields in order, page values index mask accumulate source metadata derived epoch
            # normalized fold_op; keywords cost a dataclass __init__ about half as much again)
            d = Delta(name, vals, idx, None, bool(accumulate), source, meta, False, None, ordered,
                      codes[0] if (accumulate and codes) else _ops.OP_ASSIGN)
            return d if ordered or n > _RAW_MIN else d.normalize()
        if type(vals) is float:
            vals = np.asarray(vals, dtype=dt)
        if vals.ndim == 0:
            vals = np.full(page.shape, vals, dtype=dt)
        if vals.shape != page.shape:
            raise InvalidDeltaError(f"page {name!r}: values of shape {vals.shape}, page has shape {page.shape}")
        if mask is None:
            m = full_mask(page.size)
            packed = np.array(vals.reshape(-1), dtype=dt)
        else:
            m = np.asarray(mask)
            if m.dtype != np.bool_:
                raise InvalidDeltaError(f"page {name!r}: mask must be a bool array, got dtype {m.dtype}")
            if m.shape != page.shape:
                raise InvalidDeltaError(f"page {name!r}: mask of shape {m.shape}, page has shape {page.shape}")
            m = m.reshape(-1).copy()
            flat = np.ascontiguousarray(vals.reshape(-1))
            packed = np.empty(int(np.count_nonzero(m)), dtype=flat.dtype)
            _kernels.packed.pack(_kview(flat), m.view(np.uint8), _kview(packed))
            if packed.dtype != dt:
                packed = packed.astype(dt)
        self._check_nan(page, packed)
        return Delta(name, packed, mask=m, accumulate=bool(accumulate), source=source, metadata=meta)

    def _prepare_matrix(self, page: Page, values: Any, index: Any, mask: Any, accumulate: bool,
                        source: Optional[str], metadata: Optional[dict]) -> Delta:
        """A matrix delta: ``values`` at ``index=(rows, cols)``, a scipy sparse delta of the matrix's shape (its
        stored entries), or a dense array of its shape (every entry); as a sparse delta over flat positions."""
        name = page.name
        n, m = page.shape
        if mask is not None:
            raise InvalidDeltaError(f"matrix {name!r}: write entries with index=(rows, cols) or a scipy sparse "
                                    "delta, not a mask")
        few = self._few_entries(page, values, index, accumulate, source, metadata)
        if few is not None:
            return few
        if index is None and hasattr(values, "tocoo") and hasattr(values, "format"):
            if tuple(values.shape) != (n, m):
                raise InvalidDeltaError(f"matrix {name!r}: a sparse delta of shape {tuple(values.shape)}, the "
                                        f"matrix has shape {(n, m)}")
            coo = values.tocoo(copy=True)
            coo.sum_duplicates()                        # the matrix scipy represents, as create_matrix takes it
            index, values = (np.asarray(coo.row), np.asarray(coo.col)), np.asarray(coo.data)
        if index is None:
            dense = np.asarray(values)
            if dense.shape != (n, m):
                raise InvalidDeltaError(f"matrix {name!r}: values of shape {dense.shape}; give index=(rows, cols), "
                                        f"a scipy sparse delta, or a dense array of shape {(n, m)}")
            if dense.size > 1 << 26:
                raise InvalidDeltaError(f"matrix {name!r}: a dense write of {dense.size} entries is too large; "
                                        "write a scipy sparse delta")
            keys = np.arange(n * m, dtype=np.int64)
            values = dense.reshape(-1)
        else:
            keys = page.keys(index)
        vals = _value_array(values, page.dtype, "matrix", name)
        dt = page.dtype
        k = keys.size
        if vals.ndim == 0:
            vals = np.full(k, vals, dtype=dt)
        elif vals.size == k:
            vals = vals.reshape(-1)
        if vals.ndim != 1 or vals.size != k:
            raise InvalidDeltaError(f"matrix {name!r}: {k} entries but values of shape {vals.shape}")
        vals = np.array(vals, dtype=dt)
        if page.semiring.idempotent and dt.kind == "f" and np.isnan(vals).any():
            raise InvalidDeltaError(f"matrix {name!r}: NaN is not allowed in a matrix whose ⊕ is idempotent "
                                    f"({page.semiring.name})")
        meta = None if metadata is None else _json_metadata(metadata, name)
        codes = page.semiring.codes_for(dt)
        if accumulate and codes is None:
            keys, vals = page.semiring.reduce_duplicates(keys, vals)
        d = Delta(name, vals, index=keys, accumulate=bool(accumulate), source=source, metadata=meta,
                  normalized=False, fold_op=codes[0] if (accumulate and codes) else _ops.OP_ASSIGN)
        return d.normalize()

    @staticmethod
    def _few_entries(page: Page, values: Any, index: Any, accumulate: bool, source: Optional[str],
                     metadata: Optional[dict]) -> Optional[Delta]:
        """A float64 matrix delta of a few entries given as int64 arrays: keys, sort and duplicate folding in one
        point-kernel call. None where the general path must run (it also raises the errors)."""
        # (dtypes compared by identity with numpy's own: any other dtype object takes the general path)
        if type(index) is not tuple or len(index) != 2 or page.dtype is not _F64 or metadata is not None:
            return None
        rows, cols = index
        if type(rows) is not np.ndarray or type(cols) is not np.ndarray or rows.dtype is not _I64 \
                or cols.dtype is not _I64 or rows.size > _FEW_ENTRIES or rows.ndim != 1 or cols.ndim != 1:
            return None
        codes = page.semiring.codes_for(page.dtype) if accumulate else None
        if accumulate and codes is None:
            return None
        if type(values) is np.ndarray and values.dtype is _F64 and values.ndim == 1:
            vals = values
        elif type(values) is float or (type(values) is int and -(1 << 63) <= values < 1 << 63):
            vals = np.full(rows.size, values, dtype=np.float64)
        else:
            return None
        op = codes[0] if accumulate else _ops.OP_ASSIGN
        got = _kernels.point.entry_keys(np.ascontiguousarray(rows), np.ascontiguousarray(cols),
                                        np.ascontiguousarray(vals), page.shape[0], page.shape[1], op)
        if got is None:
            return None
        keys, vals = got
        if page.semiring.idempotent:
            # (the sum is NaN when a value is: a C loop, cheaper than two ufunc calls on a few values)
            if math.isnan(sum(vals.tolist())) and np.isnan(vals).any():
                return None
        return Delta(page.name, vals, index=keys, accumulate=bool(accumulate), source=source, fold_op=op)

    @staticmethod
    def _check_nan(page: Page, vals: np.ndarray) -> None:
        if page.semiring.idempotent and vals.dtype.kind == "f" and np.isnan(vals).any():
            raise InvalidDeltaError(f"page {page.name!r}: NaN is not allowed on a page whose ⊕ is idempotent "
                                    f"({page.semiring.name})")

    # -- batches and transactions -----------------------------------------------------------------------------
    def _current(self) -> Optional[Transaction]:
        stack = getattr(self._local, "stack", None)
        return stack[-1] if stack else None

    def _push_current(self, tx: Transaction) -> None:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        self._local.stack.append(tx)
        with self._blocks_lock:
            self._blocks_open += 1

    def _pop_current(self, tx: Transaction) -> None:
        stack = getattr(self._local, "stack", [])
        if stack and stack[-1] is tx:
            stack.pop()
            with self._blocks_lock:
                self._blocks_open -= 1

    @contextmanager
    def batch(self) -> Iterator[Transaction]:
        """Many writes, one commit, one propagation wave. An exception inside the block commits nothing."""
        self._check_writable()
        tx = Transaction(self, track_reads=False)
        with tx:
            yield tx

    @_observed
    def transaction(self, intents: Optional[Iterable] = None) -> Transaction:
        """An optimistic transaction; ``intents`` = [(page, index or None), ...] reserves regions up front."""
        self._check_writable()
        return Transaction(self, intents)

    def _txn_open(self, tx: Transaction) -> None:
        with self._locked():
            for other in self._open_txns:
                hit = tx.intents_overlap(other)
                if hit is not None:
                    self._counters["conflicts"] += 1
                    raise ConflictError(f"intents overlap those of another open transaction on {hit}")
            self._open_txns.append(tx)
            if tx.track_reads or tx.intents:
                self._pipe.track(+1)

    def _txn_close(self, tx: Transaction) -> None:
        with self._locked():
            if tx in self._open_txns:
                self._open_txns.remove(tx)
                if tx.track_reads or tx.intents:
                    self._pipe.track(-1)
            if tx.state == "aborted":
                self._counters["aborts"] += 1
            self._pipe.history.trim(min((t.start_epoch for t in self._open_txns if t.track_reads or t.intents),
                                        default=None))

    def _read_in_txn(self, page: Page, index: Any, tx: Transaction) -> np.ndarray:
        if page.kind == "matrix":
            return self._read_matrix_in_txn(page, index, tx)
        with self._locked():
            if page.backend is not None:            # a page of another kind (sharded: mmsb.dask) reads itself
                arr = np.array(page.backend.read(self, page, None)).reshape(-1)
            else:
                arr = self._memory.array(page).copy()
        for d in tx.ops:
            if d.page == page.name:
                idx, vals = d.normalize().sparse()
                if d.accumulate:
                    page.semiring.accumulate(arr, idx, vals)
                else:
                    arr[idx] = vals
        if index is None:
            return arr.reshape(page.shape)
        return arr[self._index(page, index)]

    def _read_matrix_in_txn(self, page: Page, index: Any, tx: Transaction) -> Any:
        """A matrix page as ``tx`` sees it: its committed entries with the transaction's own writes merged."""
        from mmsb.matrix import MATRIX

        mine = [d for d in tx.ops if d.page == page.name]
        if index is None and not mine:
            return self._read(page, None)
        if index is None:                          # the whole matrix: its entries with the writes merged
            cur = self._read(page, None).tocoo()
            m = page.shape[1]
            keys = cur.row.astype(np.int64) * m + cur.col
            vals = np.asarray(cur.data)
            for d in mine:
                idx, dv = d.normalize().sparse()
                every = np.union1d(keys, idx)
                merged = np.full(every.size, page.zero, dtype=page.dtype)
                merged[np.searchsorted(every, keys)] = vals
                pos = np.searchsorted(every, idx)
                merged[pos] = page.semiring.add_arrays(merged[pos], dv) if d.accumulate else dv
                keep = merged != page.zero
                keys, vals = every[keep], merged[keep]
            import scipy.sparse as sp

            rows, cols = np.divmod(keys, m)
            return sp.csr_array((vals, (rows, cols)), shape=page.shape)
        keys = page.keys(index)
        with self._locked():
            vals = MATRIX.values_at(self, page, keys)
        for d in mine:
            idx, dv = d.normalize().sparse()
            pos = np.searchsorted(idx, keys)
            pos = np.minimum(pos, max(idx.size - 1, 0))
            hit = idx[pos] == keys if idx.size else np.zeros(keys.size, dtype=bool)
            if d.accumulate:
                vals[hit] = page.semiring.add_arrays(vals[hit], dv[pos[hit]])
            else:
                vals[hit] = dv[pos[hit]]
        return vals

    # -- schema operations (applied by the commit pipeline and by replay) ---------------------------------------
    def _apply_schema(self, op: SchemaOp, c: Any = None) -> None:
        """Apply a schema operation; ``c`` is the pipeline's commit in flight (its undo log, forced pages and
        pages to release), or None when replaying the log."""
        kind, pl = op.kind, op.payload
        undo = c            # (the commit in flight is its undo log)
        if kind in ("page_created", "matrix_created") and self._cluster is not None \
                and (pl.get("metadata") or {}).get("shards") is not None:
            self._cluster.create_sharded(op, c)     # sharded page (mmsb.dask): its blocks live on the workers
            return
        if kind == "page_created":
            dt = np.dtype(pl["dtype"])
            page = Page(self, pl["name"], tuple(pl["shape"]), dt, semirings.get(pl["semiring"]), "cpu",
                        pl.get("metadata"), self._pipe.epoch + 1)
            try:
                self._memory.allocate(page, op.arrays["fill"][0])
            except MemoryError as exc:
                if isinstance(exc, MMSBError):
                    raise
                raise MemoryBudgetError(f"page {page.name!r}: cannot allocate {page.nbytes:,} bytes for shape "
                                        f"{page.shape} of {dt}") from exc
            self._pages[page.name] = page
            self._graph.add_node(page.name)
            if undo is not None:
                undo.action(lambda: self._forget_page(page))
        elif kind == "matrix_created":
            from mmsb.matrix import new_page

            page = new_page(self, op, self._pipe.epoch + 1)
            self._pages[page.name] = page
            self._graph.add_node(page.name)
            if undo is not None:
                undo.action(lambda: self._forget_page(page))
        elif kind == "page_dropped":
            page = self._pages.pop(pl["name"])
            self._graph.remove_node(page.name)
            self._forget_pending(page.name, undo)
            if c is not None:
                c.changes.pop(page.name, None)
                c.force.discard(page.name)
            if undo is None:
                self._memory.release(page)
            else:
                def restore(page: Page = page) -> None:
                    self._pages[page.name] = page
                    self._graph.add_node(page.name)
                undo.action(restore)
                c.released.append(page)
        elif kind == "rule_added":
            rule = self._rule_from_schema(op)
            self._graph.add_rule(rule)
            if undo is not None:
                undo.action(lambda rid=rule.id: self._graph.remove_rule(rid))
            if c is not None:
                c.force.add(rule.dst)
        elif kind == "rule_removed":
            rule = self._graph.remove_rule(pl["id"])
            if undo is not None:
                undo.action(lambda rule=rule: self._graph.add_rule(rule))
            if c is not None and self._graph.rules_into(rule.dst):
                c.force.add(rule.dst)           # dst stays a function of the rules left: recompute it
        else:
            raise InvalidDeltaError(f"unknown schema operation {kind!r}")

    def _forget_pending(self, name: str, undo: Optional[UndoLog]) -> None:
        """A dropped page leaves the deferred queue (restored by ``undo``)."""
        pending = self._pipe.pending
        if name in pending.changes or name in pending.force:
            ch, forced = pending.changes.get(name), name in pending.force

            def restore() -> None:
                if ch is not None:
                    pending.changes[name] = ch
                if forced:
                    pending.force.add(name)

            pending.forget_page(name)
            if undo is not None:
                undo.action(restore)

    def _forget_page(self, page: Page) -> None:
        self._pages.pop(page.name, None)
        self._graph.remove_node(page.name)
        self._memory.release(page)

    # -- rules ------------------------------------------------------------------------------------------------
    def _rule_semiring(self, dst: Page, semiring: Any) -> Semiring:
        sr = dst.semiring if semiring is None else semirings.get(semiring)
        sr.check_dtype(dst.dtype, dst.name)
        return sr

    def _check_new_rule(self, dst: Page, kind: str) -> None:
        if dst.kind == "matrix":
            raise InvalidDeltaError(f"matrix {dst.name!r} cannot be the target of a rule; write its entries")
        existing = self._graph.rules_into(dst.name)
        if existing and (kind != "link" or existing[0].kind != "link"):
            raise InvalidDeltaError(f"page {dst.name!r} already has a {existing[0].kind} rule; a page is computed "
                                    "by one or more links, or one derive, or one closure")

    @_observed
    def link(self, dst: PageLike, src: PageLike, matrix: Any, semiring: Any = None) -> int:
        """dst = A ⊗ src (several links into one dst are ⊕-combined); commits and returns the epoch."""
        self._check_writable()
        with self._locked():
            d, s = self._page(dst), self._page(src)
            self._check_new_rule(d, "link")
            sr = self._rule_semiring(d, semiring)
            others = self._graph.rules_into(d.name)
            if others and others[0].semiring.name != sr.name:
                raise SemiringError(f"links into page {d.name!r} use semiring {others[0].semiring.name!r}; "
                                    f"a link with {sr.name!r} cannot be ⊕-combined with them")
            self._check_src_dtype(d, s)
            A, srcs, mp = self._rule_matrix(matrix, (d.size, s.size), d, sr, f"link {d.name!r} <- {s.name!r}")
            rule = Rule(self._graph.next_rule_id(), "link", d.name, [s.name] + srcs, sr, A, matrix_page=mp)
            return self._add_rule(rule)

    @_observed
    def closure(self, dst: PageLike, src: PageLike, matrix: Any, semiring: Any = None) -> int:
        """dst = least fixpoint of x = src ⊕ A ⊗ x; commits and returns the epoch."""
        self._check_writable()
        with self._locked():
            d, s = self._page(dst), self._page(src)
            self._check_new_rule(d, "closure")
            sr = self._rule_semiring(d, semiring)
            if not sr.idempotent and not sr.convergence_bound:
                raise SemiringError(f"closure on page {d.name!r}: semiring {sr.name!r} is not idempotent and "
                                    "declares no convergence bound, so the fixpoint may not exist")
            if d.size != s.size:
                raise InvalidDeltaError(f"closure {d.name!r} <- {s.name!r}: pages must have the same size "
                                        f"({d.size} != {s.size})")
            self._check_src_dtype(d, s)
            A, srcs, mp = self._rule_matrix(matrix, (d.size, d.size), d, sr, f"closure {d.name!r} <- {s.name!r}")
            rule = Rule(self._graph.next_rule_id(), "closure", d.name, [s.name] + srcs, sr, A, matrix_page=mp)
            return self._add_rule(rule)

    def _rule_matrix(self, matrix: Any, shape: tuple, d: Page, sr: Semiring, what: str) \
            -> tuple[Any, list, Optional[str]]:
        """A rule's matrix: ``(CSR, extra sources, matrix page name)``. A matrix page (or its name) is read live
        (its later writes update the rule's target); anything else is converted and kept with the rule."""
        page = matrix if isinstance(matrix, Page) else (self._pages.get(matrix) if isinstance(matrix, str) else None)
        if isinstance(matrix, str) and page is None:
            raise PageNotFoundError(f"{what}: no matrix page named {matrix!r}")
        if page is None:
            return as_csr(matrix, shape, d.dtype, what), [], None
        page = self._page(page)
        if page.kind != "matrix":
            raise InvalidDeltaError(f"{what}: page {page.name!r} is not a matrix page (create it with "
                                    "buf.create_matrix)")
        if tuple(page.shape) != tuple(shape):
            raise InvalidDeltaError(f"{what}: matrix {page.name!r} has shape {page.shape}, expected {shape} "
                                    "(dst.size, src.size)")
        if not np.can_cast(page.dtype, d.dtype, "same_kind"):
            raise InvalidDeltaError(f"{what}: matrix {page.name!r} of {page.dtype} does not cast to {d.dtype}")
        return page.view(sr, d.dtype), [page.name], page.name

    @_observed
    def derive(self, dst: PageLike, inputs: Sequence[PageLike], fn: Union[Callable, str]) -> int:
        r"""dst = fn(\*input arrays), recomputed when an input changes; commits and returns the epoch.

        ``fn`` is a callable or the name of a function given to :meth:`register_function`. A store records the
        function by name; register it again after reopening (or pass ``functions=`` to :func:`mmsb.open`).
        """
        self._check_writable()
        with self._locked():
            d = self._page(dst)
            ins = [self._page(p).name for p in inputs]
            mats = [n for n in ins if self._pages[n].kind == "matrix"]
            if mats:
                raise InvalidDeltaError(f"derive for page {d.name!r}: {mats[0]!r} is a matrix page; a derive "
                                        "function reads array pages")
            if not ins:
                raise InvalidDeltaError(f"derive for page {d.name!r} needs at least one input")
            self._check_new_rule(d, "derive")
            if isinstance(fn, str):
                name, func = fn, self._functions.get(fn)
                if func is None:
                    raise MMSBError(f"no function registered as {fn!r}; call buf.register_function first")
            elif callable(fn):
                func = fn
                name = next((k for k, v in self._functions.items() if v is fn), None)
                if name is None:
                    name = getattr(fn, "__module__", "?") + ":" + getattr(fn, "__qualname__", repr(fn))
            else:
                raise InvalidDeltaError(f"derive for page {d.name!r}: fn must be callable or a registered name")
            rule = Rule(self._graph.next_rule_id(), "derive", d.name, ins, None, None, func, name)
            return self._add_rule(rule)

    def register_function(self, name: str, fn: Callable) -> None:
        """Register ``fn`` under ``name``; derive rules recorded with that name are re-bound to it."""
        if not callable(fn):
            raise TypeError(f"register_function({name!r}): fn must be callable")
        with self._locked():
            self._functions[name] = fn
            for r in self._graph.rules():
                if r.kind == "derive" and r.fn_name == name:
                    r.fn = fn

    @_observed
    def unlink(self, dst: PageLike, src: Optional[PageLike] = None) -> int:
        """Remove the rules into ``dst`` (only those reading ``src`` if given); dst keeps its values."""
        self._check_writable()
        with self._locked():
            d = self._page(dst)
            rules = self._graph.rules_into(d.name)
            if src is not None:
                s = self._page(src).name
                rules = [r for r in rules if s in r.srcs]
            if not rules:
                raise InvalidDeltaError(f"page {d.name!r} has no such rule")
            return self._pipe.commit([SchemaOp("rule_removed", {"id": r.id, "dst": r.dst}) for r in rules])

    def _check_src_dtype(self, d: Page, s: Page) -> None:
        if s.kind == "matrix":
            raise InvalidDeltaError(f"rule {d.name!r} <- {s.name!r}: {s.name!r} is a matrix page; pass it as the "
                                    "rule's matrix")
        if not np.can_cast(s.dtype, d.dtype, "same_kind"):
            raise InvalidDeltaError(f"rule {d.name!r} <- {s.name!r}: {s.dtype} does not cast to {d.dtype}")

    def _add_rule(self, rule: Rule) -> int:
        self._graph.add_rule(rule)            # CycleError here leaves the graph unchanged
        self._graph.remove_rule(rule.id)
        self._pending_rules[rule.id] = rule
        try:
            return self._pipe.commit([rule.to_schema()])
        finally:
            self._pending_rules.pop(rule.id, None)

    def _rule_from_schema(self, op: SchemaOp) -> Rule:
        pl = op.payload
        if pl["id"] in self._pending_rules:
            return self._pending_rules.pop(pl["id"])
        sr = semirings.get(pl["semiring"]) if pl.get("semiring") else None
        matrix = None
        if pl.get("matrix_page"):
            M = self._pages.get(pl["matrix_page"])
            if M is None or M.kind != "matrix" or pl["dst"] not in self._pages:
                raise CorruptionError(f"rule into page {pl['dst']!r} reads matrix {pl['matrix_page']!r}, which is "
                                      "not a matrix page of the store", what="rule")
            matrix = M.view(sr, self._pages[pl["dst"]].dtype)
        elif "shape" in pl:
            from mmsb.rules import CSR

            matrix = CSR(tuple(pl["shape"]), op.arrays["indptr"], op.arrays["indices"], op.arrays["data"])
        fn = self._functions.get(pl["function"]) if pl.get("function") else None
        if pl["kind"] == "derive" and fn is None:
            warnings.warn(f"derive rule for page {pl['dst']!r} is inactive until its function "
                          f"{pl['function']!r} is registered (buf.register_function)", RuntimeWarning,
                          stacklevel=3)
        return Rule(pl["id"], pl["kind"], pl["dst"], list(pl["srcs"]), sr, matrix, fn, pl.get("function"),
                    pl.get("matrix_page"))

    # -- propagation ------------------------------------------------------------------------------------------
    @_observed
    def propagate(self) -> int:
        """Run one wave for every change queued in deferred mode; commits it and returns the epoch."""
        self._check_writable()
        with self._locked():
            if self._pipe.eager and not self._pipe.pending:
                return self._pipe.epoch
            return self._pipe.commit([], propagate=True)

    # -- history ----------------------------------------------------------------------------------------------
    @_observed
    def checkpoint(self, compress: Optional[bool] = None) -> int:
        """Write a full snapshot at the current epoch (history is kept); returns the epoch.

        ``compress`` (stores only): True tries blosc2 on every 16 MiB chunk of every page (kept where it saves
        >= 20%), False writes raw chunks; None follows ``mmsb.checkpoint.checkpoint_compression()`` (env
        ``MMSB_CHECKPOINT_COMPRESS`` = on/off/auto, default on; auto compresses only on machines with 4 or more
        cores, where decoding keeps up with a raw read from a warm page cache)."""
        self._check_writable()
        with self._locked():
            if self._store is not None:
                self._store.checkpoint(self, compress)
            else:
                self._snapshots[self._pipe.epoch] = self._snapshot()
            return self._pipe.epoch

    def _snapshot(self, copy: bool = True) -> tuple:
        """``(epoch, [(meta, array)], rules)``; ``copy=False`` gives live views (only under the buffer lock)."""
        pages = []
        matrices = []
        for p in self._pages.values():
            if p.kind == "matrix":
                matrices.append(p.to_schema())
                continue
            if p.backend is not None:               # a page of another kind (sharded: mmsb.dask) copies itself
                pages.append((self._page_meta(p), p.backend.host_copy(p).reshape(p.shape)))
                continue
            arr = self._memory.array(p).reshape(p.shape)       # (a reload may spill a page read before)
            pages.append((self._page_meta(p), arr.copy() if copy else arr))
        rules = matrices + [r.to_schema() for r in self._graph.rules()]
        return self._pipe.epoch, pages, rules

    @staticmethod
    def _page_meta(p: Page) -> dict:
        return {"name": p.name, "shape": list(p.shape), "dtype": p.dtype.str, "semiring": p.semiring.name,
                "device": p.device, "metadata": p._metadata if p._metadata is not None else {}, "epoch": p.epoch}

    @_observed
    def at(self, epoch: int) -> "Buffer":
        """A read-only view of the state at ``epoch``: the newest snapshot at or before it (a checkpoint of a
        store, or one kept in memory) and the log replayed up to ``epoch``."""
        self._check_open()
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)):
            raise HistoryError(f"an epoch is an integer, got {epoch!r}")
        epoch = int(epoch)
        with self._locked():
            if epoch > self._pipe.epoch or epoch < 0:
                raise HistoryError(f"epoch {epoch} is not in the history (0..{self._pipe.epoch})")
            if epoch < self._horizon:
                raise HistoryError(f"epoch {epoch} is before the kept history horizon {self._horizon} "
                                   "(removed by compact)")
            return self._view(epoch)

    def _view(self, epoch: int) -> "Buffer":
        """The read-only view at ``epoch`` (checked by the caller): newest snapshot at or before it + log replay."""
        with self._locked():
            base = self._store.snapshot_at(epoch) if self._store is not None else self._memory_snapshot_at(epoch)
            fns = {r.fn_name: r.fn for r in self._graph.rules() if r.fn is not None and r.fn_name}
            view = Buffer(log=_NullLog(), readonly=True, view_of=self, functions={**fns, **self._functions})
            start = 0
            if base is not None:
                view._load_snapshot(*base)
                start = base[0]
            for txn in self._log.txns(since=start, until=epoch):
                view._replay(txn)
            view._recompute_sharded()
            return view

    def _memory_snapshot_at(self, epoch: int) -> Optional[tuple]:
        """The newest in-memory snapshot at or before ``epoch`` (``checkpoint()`` of a buffer without a store)."""
        base = max((e for e in self._snapshots if e <= epoch), default=None)
        return None if base is None else self._snapshots[base]

    def _recompute_sharded(self) -> None:
        """Derived pages created with ``shards=`` on a cluster log no derived deltas (:mod:`mmsb.dask.sharding`
        recomputes them from the logged inputs): after a log replay (reopen, ``at(e)``) recompute them here."""
        force = {n for n, p in self._pages.items() if p._metadata and p._metadata.get("shards") is not None
                 and self._graph.rules_into(n) and all(r.active for r in self._graph.rules_into(n))}
        if not force:
            return
        if self._pipe.eager:                 # an eager buffer queued nothing: the replayed queue is only this gap
            self._pipe.pending.take(UndoLog())
        try:
            self._engine.wave({}, UndoLog(), force)
        except MMSBError as exc:
            warnings.warn(f"sharded pages {sorted(force)} could not be recomputed after replay: {exc}",
                          RuntimeWarning, stacklevel=2)

    def _load_snapshot(self, epoch: int, pages: list, rules: list, blocks: Any = None) -> None:
        """Install a validated snapshot; arrays that ``blocks`` (a memory.BlockLoader) handed out become the
        pages' storage as they are (no copy), the rest are copied; blocks not taken are freed."""
        try:
            for meta, arr in pages:
                dt = np.dtype(meta["dtype"])
                page = Page(self, meta["name"], tuple(meta["shape"]), dt, semirings.get(meta["semiring"]),
                            "cpu", meta.get("metadata"), meta.get("epoch", epoch))
                blk = blocks.take(arr) if blocks is not None else None
                if blk is not None and blk[1].dtype == dt and blk[1].size == page.size:
                    self._memory.adopt(page, *blk)
                else:
                    try:                            # copy out of the loader's block before freeing it
                        self._memory.allocate(page, None)
                        self._memory.array(page)[...] = np.asarray(arr).reshape(-1)
                    finally:
                        if blk is not None:
                            self._memory.allocator.free(blk[0])
                self._pages[page.name] = page
                self._graph.add_node(page.name)
        finally:
            if blocks is not None:
                blocks.discard()
        for op in rules:
            if op.kind == "matrix_created":
                self._apply_schema(op, None)
            else:
                self._graph.add_rule(self._rule_from_schema(op))
        self._pipe.epoch = epoch

    def _replay(self, txn: Txn) -> None:
        """Apply a committed transaction as recorded (no propagation, no logging).

        The deferred queue follows the log: a transaction with user changes and no derived deltas leaves its
        changes (and the targets of rules it added) pending, as the buffer that committed it may have; a
        transaction with derived deltas ran a wave, which took everything pending. (An eager commit whose wave
        changed nothing is queued too: recomputing it again is a no-op.)
        """
        pipe = self._pipe
        track = self._view_of is None
        changes: dict[str, Change] = {}
        force: set[str] = set()
        derived = False
        for op in txn.ops:
            if type(op) is Delta:
                page = self._logged_target(op, txn.epoch)
                op.normalize()
                ch = devices.backend_of(page).apply_delta(self, page, op, None)
                page.epoch = txn.epoch
                if op.derived:
                    derived = True
                elif track and ch is not None:
                    changes[page.name] = changes[page.name].merged_after(ch) if page.name in changes else ch
            else:
                pipe.epoch = txn.epoch - 1
                self._apply_schema(op, None)
                if op.kind == "rule_added" or (op.kind == "rule_removed"
                                               and self._graph.rules_into(op.payload["dst"])):
                    force.add(op.payload["dst"])
                elif op.kind == "page_dropped":
                    changes.pop(op.payload["name"], None)
                    force.discard(op.payload["name"])
        if track:
            if derived or (not txn.ops):
                pipe.pending.changes.clear()
                pipe.pending.force.clear()
            if not derived and (changes or force):
                pipe.pending.add(changes, {n for n in force if n in self._pages}, UndoLog(),
                                 self._graph.has_rules_from)
        pipe.replayed(txn.epoch, txn.txid)

    def _logged_target(self, d: Delta, epoch: int) -> Page:
        """The page a logged delta changes, once its record is found consistent with that page (its checksum
        only shows that the bytes are the ones written): CorruptionError otherwise, before any memory is
        touched."""
        page = self._pages.get(d.page) if isinstance(d.page, str) else None
        why = None
        if page is None:
            why = "no such page"
        elif page.device == "cpu" and d.values.dtype != page.dtype:
            why = f"values of dtype {d.values.dtype}, page has {page.dtype}"
        elif d.mask is not None:
            if d.mask.size != page.size:
                why = f"mask of {d.mask.size} entries, page has {page.size}"
            elif d.values.size != (page.size if is_full_mask(d.mask) else int(np.count_nonzero(d.mask))):
                why = "value count does not match the mask"
        elif d.index is not None:
            idx = d.index
            if idx.size != d.values.size:
                why = "value count does not match the index"
            elif idx.size and (int(idx.min()) < 0 or int(idx.max()) >= page.size):
                why = f"index outside [0, {page.size})"
        else:
            why = "neither index nor mask"
        if why is not None:
            raise CorruptionError(f"log: the delta of epoch {epoch} to page {d.page!r} does not fit it ({why})",
                                  what="delta")
        return page

    @_observed
    def compact(self, keep: int = 0) -> int:
        """Checkpoint, then drop history older than ``keep`` epochs before now; returns the new horizon."""
        self._check_writable()
        with self._locked():
            if self._store is not None:
                self._horizon = self._store.compact(self, keep)
            else:
                self._snapshots[self._pipe.epoch] = self._snapshot()
                target = self._pipe.epoch - max(0, int(keep))
                base = max(e for e in self._snapshots if e <= max(target, min(self._snapshots)))
                self._snapshots = {e: s for e, s in self._snapshots.items() if e >= base}
                self._log.drop_segments_before(base)
                self._horizon = base
            return self._horizon

    # -- stats and lifecycle ----------------------------------------------------------------------------------
    def stats(self) -> dict:
        """Nested figures: allocator, log, propagation, memory, device, transactions."""
        self._log.index_skipped()                  # read segments skipped at open before taking the lock
        with self._locked():
            out = {
                "epoch": self._pipe.epoch,
                "pages": len(self._pages),
                "kernels": _kernels.KIND,
                "allocator": self._memory.allocator.stats(),
                "log": self._log.stats(),
                "propagation": self._engine.stats.as_dict(),
                "memory": self._memory.stats(),
                "device": {("gpu" if fam == "cuda" else fam): b.stats(self)
                           for fam, b in devices.loaded().items()},
                "transactions": dict(self._counters, open=len(self._open_txns)),
            }
            if self._store is not None:
                out["store"] = self._store.stats()
            if self._cluster is not None:
                out["cluster"] = self._cluster.stats()
            return out

    def close(self) -> None:
        """Flush and close the log, release the store lock and free page memory. Idempotent."""
        if self._closed:
            return
        with self._locked():
            if self._closed:
                return
            try:
                try:
                    self._log.close()
                finally:            # a failed final fsync must still release the writer lock
                    if self._store is not None:
                        self._store.close()
            finally:
                self._closed = True
                for p in list(self._pages.values()):
                    self._memory.release(p)
                self._pipe.scratch.clear()
                self._memory.close()
                if self._cluster is not None:
                    self._cluster.close()

    def __del__(self) -> None:
        try:
            if not self._closed and self._view_of is None:
                self.close()
        except Exception:
            pass


class LogView:
    """``buf.log``: query committed deltas and log figures."""

    def __init__(self, buf: Buffer):
        self._buf = buf

    def query(self, page: Optional[PageLike] = None, since: Optional[int] = None, until: Optional[int] = None,
              source: Optional[str] = None) -> Iterator[Delta]:
        """Data deltas (user and derived) in log order, filtered by page, epoch range (since, until] and source."""
        name = page.name if isinstance(page, Page) else page
        for txn in self._buf._log.data_txns(since=since, until=until):      # skips compact page creations
            for op in txn.ops:
                if isinstance(op, Delta) and (name is None or op.page == name) and \
                        (source is None or op.source == source):
                    yield op.normalize()

    def stats(self) -> dict:
        return self._buf._log.stats()


class _NullLog:
    """The log of a read-only view: nothing to append."""

    keeps_deltas = False
    poisoned = None

    def txns(self, since: Optional[int] = None, until: Optional[int] = None) -> Iterator[Txn]:
        return iter(())

    data_txns = txns

    def index_skipped(self) -> None:
        return None

    def append(self, txn: Txn) -> int:
        raise ReadOnlyError("a view of a past epoch is read-only")

    def sync(self, token: int) -> None:
        return None

    def stats(self) -> dict:
        return {}

    def close(self) -> None:
        return None

    def drop_segments_before(self, epoch: int) -> int:
        return 0


#: a sparse delta of more entries than this is kept in the order given until something needs it sorted
_RAW_MIN = 4096
_FEW_ENTRIES = 64          # a matrix delta of at most this many entries takes the point kernel (_few_entries)
_F64, _I64 = np.dtype(np.float64), np.dtype(np.int64)

_SHAPES: dict = {}


#: the longest page name, in UTF-8 bytes (log records store names with a 16-bit length)
MAX_NAME_BYTES = 4096


def _check_name(name: Any) -> None:
    """A page name: a non-empty str without '/' or NUL, valid UTF-8 of at most MAX_NAME_BYTES bytes."""
    if not isinstance(name, str) or not name or "/" in name or "\0" in name:
        raise InvalidDeltaError(f"a page name must be a non-empty string without '/', got {name!r}")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidDeltaError(f"page name {name!r} is not valid Unicode text ({exc.reason})") from None
    if size > MAX_NAME_BYTES:
        raise InvalidDeltaError(f"page name {name[:40]!r}... is {size:,} bytes long in UTF-8; at most "
                                f"{MAX_NAME_BYTES} are allowed")


def _shape(shape: Any, name: str) -> tuple:
    if type(shape) is int and shape >= 0:
        t = _SHAPES.get(shape)              # one shared tuple per common 1-D shape (pages keep it)
        if t is None:
            t = (shape,)
            if len(_SHAPES) < 4096:
                _SHAPES[shape] = t
        return t
    try:
        t = (operator.index(shape),) if np.ndim(shape) == 0 else tuple(operator.index(s) for s in shape)
    except (TypeError, ValueError) as exc:
        raise InvalidDeltaError(f"page {name!r}: bad shape {shape!r}") from exc
    if not t or any(s < 0 for s in t):
        raise InvalidDeltaError(f"page {name!r}: shape must be non-empty and non-negative, got {shape!r}")
    return t


def _value_array(values: Any, dt: np.dtype, kind: str, name: str) -> np.ndarray:
    """``values`` as an array that casts to ``dt`` under numpy's "same_kind" rule (InvalidDeltaError naming the
    ``kind`` ("page", "matrix") ``name`` otherwise)."""
    try:
        vals = np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise InvalidDeltaError(f"{kind} {name!r}: values are not an array: {exc}") from exc
    if vals.dtype.kind not in "biuf":
        raise InvalidDeltaError(f"{kind} {name!r}: values must be numeric or bool, got dtype {vals.dtype}")
    if vals.dtype != dt and not _castable(values, vals, dt):
        raise InvalidDeltaError(f"{kind} {name!r}: values of dtype {vals.dtype} cannot be cast to {dt} under the "
                                "'same_kind' rule")
    return vals


def _castable(raw: Any, arr: np.ndarray, dt: np.dtype) -> bool:
    """numpy's "same_kind" rule; Python ints (not numpy arrays/scalars) are weakly typed, as in numpy (NEP 50):
    they go to any integer dtype that holds them."""
    if arr.dtype == dt or np.can_cast(arr.dtype, dt, "same_kind"):
        return True
    if isinstance(raw, (np.ndarray, np.generic)) or arr.dtype.kind not in "iu" or dt.kind not in "iu":
        return False
    info = np.iinfo(dt)
    return arr.size == 0 or (int(arr.min()) >= info.min and int(arr.max()) <= info.max)


_DTYPES: dict = {}
_ZEROS: dict = {}


def _dtype(dtype: Any, name: str) -> np.dtype:
    """``np.dtype(dtype)`` (memoised for hashable specs such as ``"float64"``), InvalidDeltaError if unknown."""
    try:
        return _DTYPES[dtype]
    except (KeyError, TypeError):
        pass
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise InvalidDeltaError(f"page {name!r}: unknown dtype {dtype!r}") from exc
    try:
        if len(_DTYPES) < 256 and isinstance(dtype, (str, type, np.dtype)):
            _DTYPES[dtype] = dt
    except TypeError:
        pass
    return dt


def _zero_for(sr: Semiring, dt: np.dtype, name: str) -> Any:
    """``sr.zero_for(dt)`` after ``sr.check_dtype(dt, name)``, memoised per (semiring object, dtype)."""
    key = (sr, dt)
    z = _ZEROS.get(key)
    if z is None:
        sr.check_dtype(dt, name)
        z = sr.zero_for(dt)
        if len(_ZEROS) >= 1024:
            _ZEROS.clear()
        _ZEROS[key] = z
    return z


def _json_metadata(metadata: Optional[dict], name: str) -> Optional[dict]:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise InvalidDeltaError(f"page {name!r}: metadata must be a dict, got {type(metadata).__name__}")
    try:
        return json.loads(json.dumps(metadata, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidDeltaError(f"page {name!r}: metadata must be JSON-able: {exc}") from exc


def _sharded_meta(meta: Optional[dict], shards: Any, n: int, name: str, cluster: bool) -> Optional[dict]:
    """``metadata`` recording ``shards`` for a page split over a cluster's workers (mmsb.dask; ``n`` positions,
    rows for a matrix), after checking it: a positive int at most ``n``, ``"auto"``, or block boundaries
    ``[0, ..., n]``. Without a cluster the value is checked and ignored."""
    if isinstance(shards, str):
        ok = shards == "auto"
    elif isinstance(shards, (list, tuple)):
        b = list(shards)
        ok = len(b) >= 2 and all(type(x) is int for x in b) and b[0] == 0 and b[-1] == n and \
            all(x < y for x, y in zip(b, b[1:]))
        shards = b
    else:
        ok = isinstance(shards, (int, np.integer)) and not isinstance(shards, bool) and 1 <= shards <= max(n, 1)
        if ok:
            shards = int(shards)
        elif isinstance(shards, (int, np.integer)) and not isinstance(shards, bool):
            raise InvalidDeltaError(f"page {name!r}: shards={shards}; it must lie in [1, {n}] (each block holds at "
                                    f"least one of its {n} entries)")
    if not ok:
        raise InvalidDeltaError(f"page {name!r}: shards must be a positive int, 'auto' or block boundaries "
                                f"[0, ..., {n}], got {shards!r}")
    if not cluster:
        return meta
    return {**(meta or {}), "shards": shards}

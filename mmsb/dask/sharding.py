"""Sharded pages on a Dask cluster, driver side (DESIGN.md, "Sharded pages on a cluster").

A page created with ``shards=k`` on a buffer opened with ``cluster=`` is split into ``k`` contiguous blocks (a
matrix page into row blocks), each owned by one worker: the :class:`~mmsb.dask._shard_worker.ShardActor` of that
worker holds the block. The driver keeps a :class:`ShardedPage` (or :class:`ShardedMatrix`) that holds only the
description -- name, shape, dtype, semiring, the block boundaries and their owners -- and no block.

- A user delta is validated and logged by the driver as for any page; :class:`ShardedBackend` (the page kind's
  backend, as matrix pages have theirs) queues it, and the wave of its commit sends each piece to the owner of
  its block (the first superstep).
- ``page.read(index)`` asks only the owners of the blocks that hold ``index``.
- A wave over sharded pages runs in supersteps on the workers (:meth:`ShardManager.wave`): see
  :mod:`mmsb.dask._shard_worker`. The driver sends one small message per busy worker per superstep and gets back
  counts, never values.
- Durability: derived changes of sharded pages are not logged. They are recomputed from the logged inputs (the
  user deltas, the pages' creations and the rules) when a store is reopened, for ``at(e)``, and when workers are
  lost: :meth:`ShardManager.rebuild` replays the log's user deltas into fresh blocks and recomputes every derived
  sharded page in one forced wave. Closures (idempotent ⊕) and links (each row recomputed by a pull, in CSR
  order) come out bit for bit as before.
"""
from __future__ import annotations

import os
import secrets
import time
import weakref
from typing import Any, Iterable, Optional

import numpy as np

from mmsb import semirings
from mmsb.delta import SchemaOp
from mmsb.devices import DeviceBackend
from mmsb.errors import DeviceError, InvalidDeltaError, MMSBError, SemiringError
from mmsb.matrix import MatrixPage
from mmsb.pages import Page
from mmsb.propagate import Change, UndoLog

from mmsb.dask import _rpc
from mmsb.dask._errors import ClusterError
from mmsb.dask._shard_worker import ShardActor, ShardStateError, bounds_for, snapshot_block


def owners_for(k: int, workers: list) -> list:
    """Block ``b`` of ``k`` goes to ``workers[b * W // k]``: neighbouring blocks share a worker, so the cut
    between them costs no network."""
    w = len(workers)
    return [workers[(b * w) // k] for b in range(k)]


def resolve_bounds(spec: Any, n: int, nworkers: int) -> np.ndarray:
    """Block boundaries for a ``shards`` value: an int ``k``, ``"auto"`` (one block per worker) or a list of
    boundaries ``[0, ..., n]``."""
    if isinstance(spec, str):
        k = max(1, min(nworkers, n))
        return bounds_for(n, k)
    if isinstance(spec, (list, tuple)):
        return np.asarray(spec, dtype=np.int64)
    return bounds_for(n, int(spec))


class ShardInfo:
    """The driver's description of a sharded page (no block)."""

    __slots__ = ("name", "kind", "shape", "dtype", "sr", "zero", "spec", "bounds", "owners", "fill", "created",
                 "op", "mgr", "__weakref__")

    def __init__(self, mgr: "ShardManager", name: str, kind: str, shape: tuple, dtype: np.dtype, sr: Any,
                 spec: Any, bounds: np.ndarray, owners: list, fill: Any, created: int, op: Any):
        self.mgr = mgr
        self.name, self.kind, self.shape, self.dtype, self.sr = name, kind, shape, dtype, sr
        self.zero = sr.zero_for(dtype)
        self.spec, self.bounds, self.owners, self.fill = spec, bounds, owners, fill
        self.created, self.op = created, op

    @property
    def k(self) -> int:
        return int(self.bounds.size - 1)

    @property
    def ncols(self) -> int:
        return self.shape[1] if self.kind == "matrix" else 1

    def as_dict(self) -> dict:
        from mmsb.dask._worker import semiring_spec

        return {"name": self.name, "kind": self.kind, "shape": list(self.shape), "dtype": self.dtype.str,
                "semiring": semiring_spec(self.sr), "bounds": self.bounds, "owners": list(self.owners)}

    def layout(self) -> list:
        return [(int(self.bounds[b]), int(self.bounds[b + 1]), self.owners[b]) for b in range(self.k)]


class ShardedBackend(DeviceBackend):
    """Where a sharded page lives: its blocks on the workers. Deltas are queued for the owners (the commit's wave
    sends them), reads ask the owners of the blocks they need."""

    family = "shards"

    def apply_delta(self, buf: Any, page: Page, delta: Any, undo: Optional[UndoLog]) -> Optional[Change]:
        return page._sh.mgr.queue_delta(page, delta, undo)

    def values_at(self, buf: Any, page: Page, idx: np.ndarray) -> np.ndarray:
        return page._sh.mgr.read(page, idx, flat=True)

    def read(self, buf: Any, page: Page, index: Any) -> Any:
        return page._sh.mgr.read(page, index)

    def move(self, buf: Any, page: Page, device: str) -> None:
        raise DeviceError(f"page {page.name!r} is sharded over the Dask workers; it cannot move to {device!r}")

    def host_copy(self, page: Page) -> np.ndarray:
        raise MMSBError(f"page {page.name!r} is sharded over the Dask workers: checkpoint() and compact() are not "
                        "supported for sharded pages yet (automatic checkpoints skip such stores); their history is "
                        "the log")

    def stats(self, buf: Any) -> dict:
        return {}


SHARDED = ShardedBackend()


class _Sharded:
    """What a page and a matrix page whose blocks live on the workers share: their backend and their layout."""

    __slots__ = ()

    checkpointable = False

    @property
    def backend(self) -> ShardedBackend:
        return SHARDED

    @property
    def shards(self) -> list:
        """``[(start, stop, worker address)]`` of the blocks."""
        return self._sh.layout()


class ShardedPage(_Sharded, Page):
    """A page whose blocks live on the workers (see the module doc); reads and writes as any page."""

    __slots__ = ("_sh",)


class _ShardedCSR:
    """What a rule over a sharded matrix page keeps as its matrix on the driver: the shape only (the rows live
    with the blocks)."""

    def __init__(self, page: "ShardedMatrix"):
        self.shape = page.shape
        self.page = page.name
        self.nnz = 0

    def __repr__(self) -> str:
        return f"<rows of sharded matrix {self.page!r} on the workers, shape={self.shape}>"


class ShardedMatrix(_Sharded, MatrixPage):
    """A matrix page whose row blocks live on the workers (see the module doc)."""

    __slots__ = ("_sh",)

    @property
    def nnz(self) -> int:
        return self._sh.mgr.matrix_stats(self.name)["nnz"]

    @property
    def nbytes(self) -> int:
        """Bytes held on the driver: none (the rows are on the workers)."""
        return 0

    def view(self, sr: Any, dtype: Any) -> Any:
        return _ShardedCSR(self)

    def set(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> None:
        raise MMSBError(f"matrix {self.name!r} is sharded: write its entries with buf.write")

    def get(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self._sh.mgr.read(self, (rows, cols))

    def to_schema(self) -> Any:
        return SHARDED.host_copy(self)

    def __repr__(self) -> str:
        return (f"ShardedMatrix({self.name!r}, shape={self.shape}, shards={self._sh.k}, dtype={self.dtype.name}, "
                f"semiring={self.semiring.name}, epoch={self.epoch})")


class _sig:
    """What identifies an installed rule: the rule object and its function (rebound by register_function)."""

    __slots__ = ("rule", "fn")

    def __init__(self, rule: Any):
        self.rule, self.fn = rule, rule.fn

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _sig) and other.rule is self.rule and other.fn is self.fn

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)


#: the longest a call to a worker's actor may take (a step computing a large block included)
CALL_TIMEOUT_S = float(os.environ.get("MMSB_SHARD_CALL_TIMEOUT_S", "900"))


def _retryable(exc: BaseException) -> bool:
    """Whether ``exc`` says the workers (or the connections to them) failed, so that a rebuild and a second try
    may succeed: not an error an actor raised in the code it ran and sent back (even an ``OSError``, e.g. of a
    spill file), unless the actor says its own state is gone (``ShardStateError``)."""
    if _rpc.is_remote(exc):
        return isinstance(exc, ShardStateError)
    if isinstance(exc, (ShardStateError, ClusterError, OSError, TimeoutError, ConnectionError)):
        return True
    mod = type(exc).__module__ or ""
    name = type(exc).__name__
    if isinstance(exc, RuntimeError) and "Worker holding Actor was lost" in str(exc):
        return True
    return mod.startswith(("distributed", "tornado", "asyncio", "concurrent")) or name in (
        "CancelledError", "FutureCancelledError", "KilledWorker", "CommClosedError")


class ShardManager:
    """The sharded pages of one buffer on one cluster: their descriptions, the actors, and the waves."""

    max_retries = 2

    def __init__(self, engine: Any):
        self.engine = engine
        self._buf_ref = weakref.ref(engine._buf)
        self.client = engine.client
        self.id = engine.id
        self.infos: dict[str, ShardInfo] = {}
        self.actors: dict[str, Any] = {}
        self._actor_futs: dict[str, Any] = {}
        self.conns: dict[str, Any] = {}
        self._token = b""
        self._dead: set = set()                       # workers whose actor connection broke (process gone?)
        self.workers: list[str] = []
        self.installed: dict[int, Any] = {}
        self.checked: set = set()
        self.queue: list[tuple] = []
        self.lost = False
        self.step_no = 0
        self.pend: dict[tuple, int] = {}
        self.sent_to: dict[str, int] = {}
        self.dirty: dict[str, set] = {}
        self.worse: set = set()
        self.prefer: dict[str, list] = {}
        self.last_wave: Optional[dict] = None
        self.nthreads = int(os.environ.get("MMSB_SHARD_THREADS", "1"))   # kernel threads per worker
        self.counters = {"waves": 0, "supersteps": 0, "worker_calls": 0, "messages": 0, "bytes": 0,
                         "rebuilds": 0, "retries": 0, "seconds": 0.0}

    @property
    def buf(self) -> Any:
        b = self._buf_ref()
        if b is None:
            raise ClusterError("the buffer of these sharded pages is gone")
        return b

    # -- actors -----------------------------------------------------------------------------------------------
    def _check_client(self) -> None:
        status = getattr(self.client, "status", "running")
        if status not in ("running", "connecting", "newly-created"):
            raise ClusterError(f"the Dask client of this buffer is {status}: the cluster holding its sharded pages "
                               "is gone")

    def _start_actors(self) -> None:
        """One actor per worker alive now (the old ones, if any, are dropped), each connected to the driver and to
        its peers through its own socket (:mod:`mmsb.dask._rpc`)."""
        import cloudpickle

        self._check_client()
        self._drop_actors()
        self.engine._refresh_workers()
        # a worker whose process just died may still be listed by the scheduler: an actor aimed at it never starts
        workers = [w for w in self.engine._alive if w not in self._dead] or list(self.engine._alive)
        self._dead = set()
        if not workers:
            raise ClusterError("the Dask cluster has no workers")
        secure = [w for w in workers if w.split("://", 1)[0] in ("tls", "wss")]
        if secure and os.environ.get("MMSB_SHARD_PLAINTEXT") != "1":
            raise ClusterError(f"the cluster's workers use TLS ({secure[0]}), but the sharded pages' data plane "
                               "(docs/dask.md) is not encrypted: on a network you trust, allow it with "
                               "MMSB_SHARD_PLAINTEXT=1")
        token = secrets.token_bytes(32)
        conns: dict = {}
        try:
            futs = {w: self.client.submit(ShardActor, self.id, w, self.nthreads, token, actor=True, workers=[w],
                                          allow_other_workers=False, pure=False) for w in workers}
            self._actor_futs = futs                 # (released by _drop_actors if the start fails)
            actors = {w: f.result(timeout=60) for w, f in futs.items()}
            ends = {w: tuple(f.result(timeout=60)) for w, f in [(w, a.get_endpoint()) for w, a in actors.items()]}
            for w, ep in ends.items():
                conns[w] = _rpc.Conn(ep, token, "driver", CALL_TIMEOUT_S, cloudpickle.dumps)
            self._actor_futs, self.actors, self.conns = futs, actors, conns
            self._call({w: ("set_peers", (ends,)) for w in workers})
        except BaseException as exc:
            for c in conns.values():
                c.close()
            self._drop_actors()
            if isinstance(exc, ClusterError) or not isinstance(exc, Exception):
                raise
            raise ClusterError(f"cannot start the mmsb shard actors on the cluster: {type(exc).__name__}: "
                               f"{exc}") from exc
        self.workers, self._token = workers, token
        self.pend, self.sent_to, self.dirty, self.worse = {}, {w: 0 for w in workers}, {}, set()
        self.installed = {}

    def _drop_actors(self) -> None:
        for c in self.conns.values():
            c.close()                                # the actor stops serving and drops its blocks
        for f in self._actor_futs.values():
            try:
                f.release()
            except Exception:
                pass
        self._actor_futs, self.actors, self.conns = {}, {}, {}

    def _call(self, calls: dict) -> dict:
        """``{addr: (method, args)}`` on the actors, all sent before any reply is read; ``{addr: result}``. A
        remote exception is raised (with its type) once every reply is in, so the connections stay in step."""
        self._check_client()
        conns = {}
        for w in calls:
            c = self.conns.get(w)
            if c is None or c.broken or c.waiting:      # (waiting: a call was interrupted between its halves)
                raise ShardStateError(f"no usable connection to the shard actor on worker {w}")
            conns[w] = c
        out: dict = {}
        err: Optional[BaseException] = None
        sent = []
        try:
            for w, (meth, args) in calls.items():
                conns[w].send(meth, args)
                sent.append(w)
        except OSError as exc:
            self._dead.add(w)
            err = ShardStateError(f"the shard actor on worker {w} is unreachable: {exc}")
        for w in sent:
            try:
                out[w] = conns[w].recv()
            except BaseException as exc:
                if isinstance(exc, OSError) and not _rpc.is_remote(exc):     # the connection, not the actor's code
                    self._dead.add(w)
                    exc = ShardStateError(f"the shard actor on worker {w} is gone: {type(exc).__name__}: {exc}")
                err = err or exc
        self.counters["worker_calls"] += len(sent)
        if err is not None:
            raise err
        return out

    def _ensure(self) -> None:
        """Workers hold the blocks of every sharded page: rebuilt from the log if they were lost."""
        if self.engine._closed:
            raise ClusterError("the cluster connection of this buffer is closed")
        if self.lost or (self.infos and not self.actors):
            self.rebuild()
        elif not self.actors:
            self._start_actors()

    # -- pages ------------------------------------------------------------------------------------------------
    def create(self, op: Any, c: Any) -> Page:
        """A ``page_created`` / ``matrix_created`` schema record of a page with ``metadata["shards"]``: the page,
        its blocks created on the workers (``c``: the commit in flight, None when replaying the log)."""
        buf = self.buf
        pl = op.payload
        name = pl["name"]
        dt = np.dtype(pl["dtype"])
        sr = semirings.get(pl["semiring"])
        shape = tuple(int(s) for s in pl["shape"])
        kind = "matrix" if op.kind == "matrix_created" else "array"
        epoch = int(pl.get("epoch", buf._pipe.epoch + 1)) if kind == "matrix" else buf._pipe.epoch + 1
        try:
            self._ensure()
        except BaseException as exc:
            if not _retryable(exc):
                raise
            self.lost = True
            raise ClusterError(f"page {name!r}: cannot reach the Dask workers to hold its blocks: {exc}") from exc
        n = shape[0] if kind == "matrix" else int(np.prod(shape))
        spec = (pl.get("metadata") or {}).get("shards")
        bounds = resolve_bounds(spec, n, len(self.workers))
        owners = self.prefer.pop(name, None)
        if owners is None or len(owners) != bounds.size - 1 or not set(owners) <= set(self.workers):
            owners = owners_for(int(bounds.size - 1), self.workers)
        fill = op.arrays["fill"][0] if kind == "array" else None
        info = ShardInfo(self, name, kind, shape, dt, sr, spec, bounds, owners, fill, epoch, op)
        try:
            self._create_blocks(info, op)
        except BaseException as exc:
            if not _retryable(exc):
                raise
            self.lost = True
            raise ClusterError(f"page {name!r}: creating its blocks on the workers failed: "
                               f"{type(exc).__name__}: {exc}") from exc
        if kind == "matrix":
            page: Page = ShardedMatrix(buf, name, shape, dt, sr, pl.get("metadata"), epoch, info.zero, None)
        else:
            page = ShardedPage(buf, name, shape, dt, sr, "cpu", pl.get("metadata"), epoch)
        page._sh = info
        buf._pages[name] = page
        buf._graph.add_node(name)
        self.infos[name] = info
        if c is not None:
            def forget() -> None:
                buf._forget_page(page)
                if self.infos.get(name) is info:
                    del self.infos[name]
            c.action(forget)
        return page

    def _create_blocks(self, info: ShardInfo, op: Any) -> None:
        d = info.as_dict()
        calls: dict = {w: ("create", (d, {}, info.fill)) for w in self.workers}
        if info.kind == "array":
            for b, w in enumerate(info.owners):
                calls[w][1][1][b] = None
        else:
            keys, vals = op.arrays["keys"], op.arrays["values"]
            m = info.ncols
            cut = np.searchsorted(keys, info.bounds * m)
            for b, w in enumerate(info.owners):
                s, e = int(cut[b]), int(cut[b + 1])
                rows, cols = np.divmod(keys[s:e] - int(info.bounds[b]) * m, m)
                calls[w][1][1][b] = (rows, cols, vals[s:e])
        self._call(calls)

    def after_commit(self, epoch: int) -> None:
        buf = self._buf_ref()
        if buf is None:
            return
        for entry in self.queue:
            entry[4] = True                          # committed: the log holds these deltas now
        gone = []
        for name, info in list(self.infos.items()):
            page = buf._pages.get(name)
            if page is None or getattr(page, "_sh", None) is not info:
                gone.append(name)
                del self.infos[name]
            elif info.op is not None and info.created <= epoch:
                info.op = None                      # committed: the log holds its creation from now on
        if gone and self.actors and not self.lost:
            try:
                self._call({w: ("drop_pages", (list(self.infos),)) for w in self.actors})
            except Exception:
                self.lost = True

    def layout(self, name: str) -> list:
        info = self.infos.get(name)
        if info is None:
            raise KeyError(name)
        if self.lost:
            with self.buf._locked():
                self._ensure()
        return info.layout()

    # -- deltas and reads -------------------------------------------------------------------------------------
    def queue_delta(self, page: Page, delta: Any, undo: Optional[UndoLog]) -> Change:
        idx, vals = delta.sparse()
        entry = [page.name, idx, vals, bool(delta.accumulate), undo is None]   # replayed: the log holds it
        self.queue.append(entry)
        if undo is not None:
            def unqueue() -> None:
                for i in range(len(self.queue) - 1, -1, -1):
                    if self.queue[i] is entry:
                        del self.queue[i]
                        break
            undo.action(unqueue)
        return Change(idx, np.zeros(idx.size, dtype=page.dtype))

    def _route(self, entries: Iterable[tuple]) -> dict:
        """User deltas as ``{worker: [(name, block, local index or None, values, accumulate)]}``."""
        out: dict = {}
        for name, idx, vals, acc, *_ in entries:
            info = self.infos.get(name)
            if info is None:
                continue
            m = info.ncols
            cut = np.searchsorted(idx, info.bounds * m)
            for b in range(info.k):
                s, e = int(cut[b]), int(cut[b + 1])
                if s == e:
                    continue
                lo, hi = int(info.bounds[b]), int(info.bounds[b + 1])
                li = idx[s:e] - lo * m
                if info.kind == "array" and e - s == hi - lo:
                    li = None                                  # the whole block: no index to send
                out.setdefault(info.owners[b], []).append((name, b, li, vals[s:e], acc))
        return out

    def _entries(self) -> list:
        return list(self.queue)

    def flush(self) -> None:
        """Send queued deltas to their owners now (no propagation: a deferred buffer's wave runs later)."""
        if not self.queue:
            return
        self._guarded(lambda: self._run({}, [], [], self._entries(), {}))
        self.queue = []

    def read(self, page: Page, index: Any, flat: bool = False) -> Any:
        buf = self.buf
        with buf._locked():
            self._guarded(lambda: None)
            if self.queue:
                self.flush()
            info = page._sh
            if info.kind == "matrix":
                return self._read_matrix(page, info, index, flat)
            if index is None:
                parts = self._guarded(lambda: self._fetch(info, {b: None for b in range(info.k)}))
                return np.concatenate([parts[b] for b in range(info.k)]).reshape(page.shape)
            idx = index if flat else buf._index(page, index)
            idx = np.asarray(idx, dtype=np.int64).reshape(-1)
            blk = np.searchsorted(info.bounds, idx, "right") - 1
            want = {}
            for b in np.unique(blk).tolist():
                want[b] = idx[blk == b] - int(info.bounds[b])
            parts = self._guarded(lambda: self._fetch(info, want))
            out = np.empty(idx.size, dtype=info.dtype)
            for b, vals in parts.items():
                out[blk == b] = vals
            return out.reshape(np.shape(index)) if not flat and np.ndim(index) > 1 else out

    def _fetch(self, info: ShardInfo, want: dict, meth: str = "read") -> dict:
        by_w: dict = {}
        for b, idx in want.items():
            by_w.setdefault(info.owners[b], {})[b] = idx
        res = self._call({w: (meth, (info.name, parts)) for w, parts in by_w.items()})
        out = {}
        for r in res.values():
            out.update(r)
        return out

    def _read_matrix(self, page: Page, info: ShardInfo, index: Any, flat: bool) -> Any:
        m = info.ncols
        if index is None:
            import scipy.sparse as sp

            parts = self._guarded(lambda: self._fetch(info, {b: None for b in range(info.k)}, "read_matrix"))
            rows = [parts[b][0] + int(info.bounds[b]) for b in range(info.k)]
            cols = [parts[b][1] for b in range(info.k)]
            vals = [parts[b][2] for b in range(info.k)]
            out = sp.csr_array((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=info.shape)
            out.sort_indices()
            return out
        if flat:
            rows, cols = np.divmod(np.asarray(index, dtype=np.int64), m)
        else:
            from mmsb.matrix import entry_index

            rows, cols = entry_index(page, index)
        blk = np.searchsorted(info.bounds, rows, "right") - 1
        want = {}
        for b in np.unique(blk).tolist():
            sel = blk == b
            want[b] = (rows[sel] - int(info.bounds[b]), cols[sel])
        parts = self._guarded(lambda: self._fetch(info, want, "read_matrix"))
        out = np.empty(rows.size, dtype=info.dtype)
        for b, vals in parts.items():
            out[blk == b] = vals
        return out

    def matrix_stats(self, name: str) -> dict:
        """``{"nnz", "cut", "cut_fraction", "blocks": [(entries, cut entries)]}`` of a sharded matrix (the cut:
        entries whose column lies outside their row block, for a square matrix partitioned like its rows)."""
        info = self.infos[name]
        with self.buf._locked():
            self._guarded(lambda: None)
            if self.queue:
                self.flush()
            res = self._guarded(lambda: self._call({w: ("block_stats", (name,)) for w in set(info.owners)}))
        blocks: dict = {}
        for r in res.values():
            blocks.update(r)
        per = [blocks.get(b, (0, 0)) for b in range(info.k)]
        nnz = sum(p[0] for p in per)
        cut = sum(p[1] for p in per)
        return {"nnz": nnz, "cut": cut, "cut_fraction": cut / nnz if nnz else 0.0, "blocks": per}

    def _guarded(self, fn: Any) -> Any:
        """Run ``fn`` against the workers; lost workers are rebuilt (from the log) and ``fn`` tried again."""
        last = None
        for attempt in range(self.max_retries + 1):
            try:
                self._ensure()
                return fn()
            except BaseException as exc:
                if not _retryable(exc) or isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    if self.actors:
                        self.lost = True             # a step may have half run: rebuild before the next use
                    raise
                self._check_client()
                last = exc
                self.lost = True
                self.counters["retries"] += 1
        raise ClusterError(f"sharded pages: the cluster failed {self.max_retries + 1} times: "
                           f"{type(last).__name__}: {last}") from last

    # -- rules ------------------------------------------------------------------------------------------------
    def sharded_rules(self) -> list:
        g = self.buf._graph
        return [r for r in g.rules() if r.dst in self.infos or any(s in self.infos for s in r.srcs)]

    def _check_rule(self, r: Any) -> None:
        pages = [r.dst] + list(r.srcs)
        plain = [p for p in pages if p not in self.infos]
        if plain:
            raise InvalidDeltaError(f"rule {r.kind} into page {r.dst!r}: pages {sorted(set(pages) - set(plain))} "
                                    f"are sharded and {sorted(set(plain))} are not; a rule over sharded pages "
                                    "reads and writes sharded pages only (create them all with shards=)")
        dst = self.infos[r.dst]

        def aligned(name: str, what: str) -> None:
            o = self.infos[name]
            if not (np.array_equal(o.bounds, dst.bounds) and o.owners == dst.owners):
                raise InvalidDeltaError(f"rule {r.kind} into page {r.dst!r}: {what} {name!r} is not sharded like "
                                        f"{r.dst!r} (same size and shards= give the same blocks on the same "
                                        "workers)")

        if r.kind in ("link", "closure") and r.matrix_page is not None:
            aligned(r.matrix_page, "matrix")
        if r.kind == "closure":
            aligned(r.srcs[0], "source")
            sr = r.semiring
            if not sr.idempotent or sr.codes_for(dst.dtype) is None:
                raise SemiringError(f"closure on sharded page {r.dst!r}: semiring {sr.name!r} must be idempotent "
                                    "with compiled kernels (min_plus, max_plus, max_min, ...) on sharded pages")
        if r.kind == "derive":
            for s in r.srcs:
                aligned(s, "input")
            if r.fn is not None and not getattr(r.fn, "mmsb_elementwise", False):
                raise InvalidDeltaError(f"derive into sharded page {r.dst!r}: the function must be element-wise "
                                        "(it runs block by block); mark it with mmsb.dask.elementwise(fn)")

    def _rule_spec(self, r: Any) -> dict:
        from mmsb.dask._worker import semiring_spec

        return {"id": r.id, "kind": r.kind, "dst": r.dst, "srcs": list(r.srcs),
                "semiring": semiring_spec(r.semiring) if r.semiring is not None else None,
                "matrix_page": r.matrix_page, "fn": r.fn if r.kind == "derive" else None, "fn_name": r.fn_name}

    def _installs(self, rules: list) -> tuple:
        """(specs of rules to add, ids to remove, {worker: {(rid, d): plain rows}}) against what is installed."""
        live = {r.id: r for r in rules if r.active}        # an inactive derive (function not registered) waits
        removed = [rid for rid in self.installed if rid not in live or self.installed[rid] != _sig(live[rid])]
        new = [r for rid, r in live.items() if self.installed.get(rid) != _sig(r)]
        plain: dict = {}
        for r in new:
            if r.kind in ("link", "closure") and r.matrix_page is None:
                dst = self.infos[r.dst]
                A = r.matrix
                for d, w in enumerate(dst.owners):
                    lo, hi = int(dst.bounds[d]), int(dst.bounds[d + 1])
                    s, e = int(A.indptr[lo]), int(A.indptr[hi])
                    plain.setdefault(w, {})[(r.id, d)] = (A.indptr[lo:hi + 1] - s, A.indices[s:e], A.data[s:e])
        return [self._rule_spec(r) for r in new], removed, plain, new

    # -- waves ------------------------------------------------------------------------------------------------
    def active(self, changes: dict, force: Optional[set]) -> bool:
        if not self.infos and not self.queue:
            return False
        return bool(self.queue or any(n in self.infos for n in changes) or any(n in self.infos for n in force or ())
                    or self.pend_any() or any(self.dirty.values()) or self._rules_changed())

    def pend_any(self) -> bool:
        return any(v for v in self.pend.values())

    def _rules_changed(self) -> bool:
        if not self.infos:
            return False
        rules = [r for r in self.sharded_rules() if r.active]
        if len(rules) != len(self.installed):
            return True
        return any(self.installed.get(r.id) != _sig(r) for r in rules)

    def wave(self, changes: dict, undo: UndoLog, force: Optional[set]) -> tuple:
        """Run the sharded part of a wave; returns the changes and forced pages left for the other engine. The
        derived changes of sharded pages are not returned (not logged: see the module doc)."""
        force = set(force or ())
        buf = self.buf
        g = buf._graph
        rules = self.sharded_rules()
        for r in rules:
            if r.id not in self.checked or r.dst not in self.infos:
                self._check_rule(r)
                self.checked.add(r.id)
        sh_changes = [n for n in changes if n in self.infos]
        sh_force = {n for n in force if n in self.infos and g.rules_into(n)}
        rest = {n: ch for n, ch in changes.items() if n not in self.infos}
        rest_force = {n for n in force if n not in self.infos}
        affected = set(sh_force)
        for n in sh_changes + sorted(sh_force):
            affected.update(g.descendants(n))
        for pages in self.dirty.values():
            affected.update(p for p in pages if p in self.infos and g.rules_into(p))
        affected.update(p for p in self.worse if p in self.infos)
        undo.action(self._mark_lost)        # a rollback of this commit: the workers hold it, the log does not
        t0 = time.perf_counter()

        def attempt() -> None:
            forced = set(sh_force)
            specs, removed, plain, new = self._installs(rules)
            forced.update(r.dst for r in new)
            plan = self._plan(affected | forced)
            self._run(plan, specs, removed, self._entries(), plain, forced, new)

        self._guarded(attempt)
        self.queue = []
        self.counters["waves"] += 1
        self.counters["seconds"] += time.perf_counter() - t0
        return rest, rest_force

    def _plan(self, pages: set) -> dict:
        g = self.buf._graph
        plan: dict = {}
        for n in g.in_order([p for p in pages if p in self.infos and g.rules_into(p)]):
            for r in g.rules_into(n):
                if not r.active:
                    raise MMSBError(f"derive rule for page {n!r} is inactive: its function {r.fn_name!r} is not "
                                    f"registered; call buf.register_function({r.fn_name!r}, fn)")
            lv = 0
            for r in g.rules_into(n):
                for s in r.srcs:
                    lv = max(lv, plan.get(s, 0))
            plan[n] = lv + 1
        return plan

    def _mark_lost(self) -> None:
        if self.infos or self.actors:
            self.lost = True

    def _run(self, plan: dict, specs: list, removed: list, entries: list, plain: dict,
             forced: Optional[set] = None, new: Optional[list] = None) -> None:
        """One wave on the workers: install rules, step 0 (user deltas), then each level of ``plan`` until no
        worker has work left for it."""
        forced = set(forced or ())
        order = list(plan)
        levels = sorted(set(plan.values()))
        trace: list = []
        t_wave = time.perf_counter()
        if specs or removed:
            self.step_no += 1
            calls = {w: ("install", (self.step_no, specs, removed, plain.get(w, {}), plan)) for w in self.actors}
            self._reports(self._call(calls), trace, "install", time.perf_counter())
            for r in new or ():
                self.installed[r.id] = _sig(r)
            for rid in removed:
                self.installed.pop(rid, None)
        routed = self._route(entries)
        step0 = set(routed) | {w for w in self.actors if self._pending(w, 0, plan)}
        done_through = 0
        if step0:
            others_idle = not any(self._pending(w, 10 ** 9, plan) or self.dirty.get(w) for w in self.actors
                                  if w not in routed)
            plain_wave = not forced and not specs and not removed and bool(levels)
            solo = len(step0) == 1 and plain_wave and others_idle
            eager = plain_wave and not solo and not any(self.dirty.values())
            self.step_no += 1
            t = time.perf_counter()
            calls = {w: ("step", (self.step_no, plan, order, None, self.sent_to.get(w, 0), routed.get(w, []), [],
                                  solo, levels, eager)) for w in step0}
            reps = self._call(calls)
            self._reports(reps, trace, "deltas", t)
            if solo:
                dt = next(iter(reps.values())).get("done_through")
                done_through = dt or 0
        for lv in levels:
            if lv <= done_through:
                continue
            first = True
            f_lv = sorted(p for p in (forced | self.worse) if plan.get(p) == lv)
            self.worse -= set(f_lv)
            while True:
                busy = {w for w in self.actors if self._pending(w, lv, plan)
                        or any(plan.get(p) == lv for p in self.dirty.get(w, ()))}
                if first and f_lv:
                    for p in f_lv:
                        busy.update(self.infos[p].owners)
                if not busy:
                    break
                self.step_no += 1
                t = time.perf_counter()
                calls = {w: ("step", (self.step_no, plan, order, lv, self.sent_to.get(w, 0), [],
                                      f_lv if first else [], False, levels)) for w in busy}
                self._reports(self._call(calls), trace, f"level {lv}", t)
                first = False
        self.last_wave = {"supersteps": len(trace), "steps": trace, "levels": len(levels),
                          "seconds": time.perf_counter() - t_wave}

    def _pending(self, w: str, lv: int, plan: dict) -> bool:
        for (addr, page), n in self.pend.items():
            if addr == w and n > 0 and (page is None or plan.get(page, 0) <= lv):
                return True
        return False

    def _reports(self, reps: dict, trace: list, what: str, t0: float) -> None:
        nbytes = msgs = 0
        for w, rep in reps.items():
            for (addr, page), n in rep["sent"].items():
                self.pend[(addr, page)] = self.pend.get((addr, page), 0) + n
                self.sent_to[addr] = self.sent_to.get(addr, 0) + n
                msgs += n
            for page, n in rep["consumed"].items():
                self.pend[(w, page)] = self.pend.get((w, page), 0) - n
            self.dirty[w] = set(rep["dirty"])
            self.worse.update(rep["worse"])
            nbytes += rep["bytes"]
        self.counters["supersteps"] += 1
        self.counters["messages"] += msgs
        self.counters["bytes"] += nbytes
        trace.append({"what": what, "workers": len(reps), "messages": msgs, "bytes": nbytes,
                      "seconds": time.perf_counter() - t0})

    # -- recovery ---------------------------------------------------------------------------------------------
    def rebuild(self) -> None:
        """Fresh actors on the workers alive now; every block rebuilt from the log (creations and user deltas)
        and every derived sharded page recomputed (one forced wave)."""
        buf = self.buf
        self.counters["rebuilds"] += 1
        self.queue = [e for e in self.queue if not e[4]]       # the logged ones come back from the log
        self._start_actors()
        self.lost = True
        done: set = set()
        for info in self.infos.values():
            info.owners = owners_for(info.k, self.workers)
        batch: dict = {}
        size = [0]

        def send() -> None:
            if batch:
                self._call({w: ("apply_logged", (items,)) for w, items in batch.items()})
                batch.clear()
                size[0] = 0

        for txn in buf._log.txns():
            for op in txn.ops:
                kind = op.kind if isinstance(op, SchemaOp) else None
                if kind in ("page_created", "matrix_created"):
                    name = op.payload["name"]
                    info = self.infos.get(name)
                    if info is not None and txn.epoch == info.created and name not in done:
                        send()
                        self._create_blocks(info, op)
                        done.add(name)
                elif kind is None and not op.derived and op.page in done:
                    info = self.infos[op.page]
                    if txn.epoch <= info.created:
                        continue
                    op.normalize()
                    idx, vals = op.sparse()
                    for w, items in self._route([(op.page, idx, vals, bool(op.accumulate))]).items():
                        batch.setdefault(w, []).extend(items)
                        size[0] += sum(v.nbytes for it in items for v in (it[2], it[3]) if v is not None)
                    if size[0] > 64 * 2 ** 20:
                        send()
        send()
        for name, info in self.infos.items():
            if name in done:
                continue
            if info.op is None:
                raise ClusterError(f"sharded page {name!r} cannot be rebuilt: its creation (epoch {info.created}) "
                                   "is not in the log (checkpointed or compacted away)")
            self._create_blocks(info, info.op)
            done.add(name)
        rules = self.sharded_rules()
        specs, removed, plain, new = self._installs(rules)
        derived = {r.dst for r in rules}
        self._run(self._plan(derived), specs, removed, [], plain, derived, new)
        self.lost = False

    # -- stats and lifecycle ----------------------------------------------------------------------------------
    def stats(self) -> dict:
        out = dict(self.counters, pages=len(self.infos), actors=len(self.actors), lost=self.lost,
                   queued_deltas=len(self.queue))
        if self.last_wave is not None:
            out["last_wave"] = self.last_wave
        return out

    def worker_stats(self) -> dict:
        with self.buf._locked():
            return self._guarded(lambda: self._call({w: ("stats", ()) for w in self.actors}))

    def close(self) -> None:
        self._drop_actors()


def to_dask_chunks(buf: Any, page: Page) -> Any:
    """A dask array over a snapshot (taken now, on the owners) of a sharded page: one chunk per block."""
    import dask
    import dask.array as da

    mgr: ShardManager = page._sh.mgr
    info = page._sh
    with buf._locked():
        mgr._guarded(lambda: None)
        if mgr.queue:
            mgr.flush()
        keys = {w: a.key for w, a in mgr.actors.items()}
        futs = [mgr.client.submit(snapshot_block, keys[info.owners[b]], info.name, b, workers=[info.owners[b]],
                                  allow_other_workers=False, pure=False) for b in range(info.k)]
    chunks = [da.from_delayed(dask.delayed(f), shape=(int(info.bounds[b + 1] - info.bounds[b]),), dtype=info.dtype)
              for b, f in enumerate(futs)]
    arr = da.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    return arr.reshape(page.shape) if len(page.shape) > 1 else arr

"""Worker side of the distributed engine: a resident page store per buffer and the per-wave task.

Everything here runs inside a Dask worker process. The store keeps flat copies of the pages the worker owns (the
derived pages it computes) and of their inputs (mirrors), plus the rules into its pages. A wave task reuses
:class:`mmsb.propagate.Engine`'s per-page update code on that store, so the arithmetic is the in-process one.
Only this module (and what it imports from mmsb) must be importable on the workers.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Optional

import numpy as np

from mmsb.errors import MMSBError
from mmsb.graph import Graph
from mmsb.propagate import Change, Engine, UndoLog, WaveStats
from mmsb.rules import CSR, Rule

PLUGIN_NAME = "mmsb-page-store"


class StaleState(MMSBError):
    """The worker does not hold the expected copy of a buffer's pages (restarted, or never shipped)."""

    retryable = True


class WorkerStore:
    """One buffer's pages and rules resident on one worker."""

    def __init__(self, token: str):
        self.token = token
        self.arrays: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple] = {}
        self.graph = Graph()
        self.rules: dict[int, Rule] = {}
        self.engine = Engine(self.graph, self.arrays.__getitem__, self.shapes.__getitem__, lambda n: None)
        self.wave_id: Optional[str] = None
        self.pending: dict[str, Change] = {}
        self.done: dict[int, dict] = {}
        self.lock = threading.Lock()

    # -- sync messages ----------------------------------------------------------------------------------------
    def apply_sync(self, sync: dict) -> None:
        for name in sync.get("drop", ()):
            self.arrays.pop(name, None)
            self.shapes.pop(name, None)
        for rid in sync.get("rules_removed", ()):
            rule = self.rules.pop(rid, None)
            if rule is not None:
                self.graph.remove_rule(rid)
        for name, (shape, arr) in sync.get("pages", {}).items():
            a = np.asarray(arr).reshape(-1)
            if not a.flags.writeable or not a.flags.c_contiguous:
                a = np.array(a, copy=True)
            self.arrays[name] = a
            self.shapes[name] = tuple(shape)
        for name, idx, vals in sync.get("updates", ()):
            self.arrays[name][idx] = vals
        for spec in sync.get("rules_added", ()):
            rule = rule_from_spec(spec)
            for n in [rule.dst, *rule.srcs]:
                if n not in self.graph:
                    self.graph.add_node(n)
            self.rules[rule.id] = rule
            self.graph.add_rule(rule)


def _stores() -> dict:
    from distributed import get_worker

    w = get_worker()
    plugin = w.plugins.get(PLUGIN_NAME)
    if plugin is not None:
        return plugin.stores
    stores = getattr(w, "_mmsb_stores", None)
    if stores is None:
        stores = {}
        w._mmsb_stores = stores
    return stores


try:  # the plugin keeps the stores for the worker's lifetime
    from distributed.diagnostics.plugin import WorkerPlugin as _WorkerPlugin
except Exception:  # pragma: no cover - distributed missing: the module is only used on workers
    _WorkerPlugin = object


class PageStorePlugin(_WorkerPlugin):
    """Worker plugin holding ``{buffer id: WorkerStore}``; registered once per client by the driver."""

    name = PLUGIN_NAME

    def __init__(self) -> None:
        self.stores: dict[str, WorkerStore] = {}

    def setup(self, worker: Any) -> None:
        self.stores = {}

    def teardown(self, worker: Any) -> None:
        self.stores.clear()


# -- rules and semirings over the wire ------------------------------------------------------------------------
def semiring_spec(sr: Any) -> Any:
    """A semiring as it travels: its name, or (for one registered at runtime on the driver) its definition."""
    if sr is None:
        return None
    if sr.builtin or sr.provider != "runtime":
        return ("name", sr.name)
    attrs = {k: getattr(sr, k) for k in ("add", "mul", "zero", "one", "idempotent", "invertible", "terminal",
                                          "dtypes", "sub", "convergence_bound", "samples")}
    return ("def", sr.name, attrs)


def semiring_from_spec(spec: Any) -> Any:
    if spec is None:
        return None
    from mmsb import semirings
    from mmsb.errors import SemiringError
    from mmsb.semiring import Semiring

    try:
        return semirings.get(spec[1])
    except SemiringError:
        if spec[0] != "def":
            raise
    sr = Semiring(spec[1], **spec[2])
    try:
        semirings.register(sr)
    except SemiringError:  # registered meanwhile by another task of this worker
        return semirings.get(spec[1])
    return sr


def rule_spec(rule: Rule) -> tuple:
    m = rule.matrix
    mat = None if m is None else (tuple(m.shape), m.indptr, m.indices, m.data)
    return (rule.id, rule.kind, rule.dst, list(rule.srcs), semiring_spec(rule.semiring), mat, rule.fn, rule.fn_name)


def rule_from_spec(spec: tuple) -> Rule:
    rid, kind, dst, srcs, sr, mat, fn, fn_name = spec
    matrix = None if mat is None else CSR(mat[0], mat[1], mat[2], mat[3])
    return Rule(rid, kind, dst, list(srcs), semiring_from_spec(sr), matrix, fn, fn_name)


# -- tasks ----------------------------------------------------------------------------------------------------
def run_step(buf_id: str, token: str, wave_id: str, step: int, init: bool, sync: Optional[dict],
             roots: Optional[dict], order: list, force: list, deps: list, after: Any = None) -> dict:
    """One worker's pages of one superstep of a wave.

    ``sync`` brings the store up to date first (full pages, sparse updates, rules); ``roots`` are the wave's
    user changes ``{name: (idx, old)}`` this worker reads; ``deps`` are results of earlier tasks of the wave on
    other workers (``{"out": {name: (idx, old, new)}}``). Returns ``{"out": {name: (idx, old, new)}, "stats"}``.
    """
    stores = _stores()
    if init:
        store = WorkerStore(token)
        stores[buf_id] = store
    else:
        store = stores.get(buf_id)
        if store is None or store.token != token:
            raise StaleState(f"worker holds no current copy of buffer {buf_id[:8]} (token {token[:8]})")
    with store.lock:
        if store.wave_id != wave_id:
            store.wave_id, store.pending, store.done = wave_id, {}, {}
        if step in store.done:              # a retried task: answer as before, compute nothing twice
            return store.done[step]
        if sync:
            store.apply_sync(sync)
        for name, (idx, old) in (roots or {}).items():
            store.pending[name] = Change(idx, old)
        for dep in deps:
            for name, (idx, old, new) in dep["out"].items():
                arr = store.arrays.get(name)
                if arr is not None:
                    arr[idx] = new
                store.pending[name] = Change(idx, old)
        t0 = time.perf_counter()
        eng = store.engine
        before = WaveStats(**eng.stats.as_dict())
        undo = UndoLog()
        out = {}
        forced = set(force)
        for name in order:
            rules = store.graph.rules_into(name)
            if not rules:
                raise StaleState(f"worker has no rules for page {name!r}")
            inputs = {s: store.pending[s] for r in rules for s in r.srcs if s in store.pending}
            if not inputs and name not in forced:
                continue
            ch = eng.update(name, rules, inputs, name in forced, undo)
            eng.stats.pages_touched += 1
            if ch is not None and ch.idx.size:
                pending = store.pending
                pending[name] = pending[name].merged_after(ch) if name in pending else ch
                out[name] = (ch.idx, ch.old, store.arrays[name][ch.idx].copy())
        now = eng.stats.as_dict()
        stats = {k: now[k] - v for k, v in before.as_dict().items()}
        stats["seconds"] = time.perf_counter() - t0
        result = {"out": out, "stats": stats}
        store.done[step] = result
        return result


def drop_buffer(buf_id: str, dask_worker: Any = None) -> bool:
    """Forget a buffer's store on this worker (``client.run`` target)."""
    plugin = dask_worker.plugins.get(PLUGIN_NAME) if dask_worker is not None else None
    stores = plugin.stores if plugin is not None else getattr(dask_worker, "_mmsb_stores", {})
    return stores.pop(buf_id, None) is not None


def held_pages(buf_id: str, dask_worker: Any = None) -> dict:
    """``{name: array copy}`` of a buffer's pages on this worker (for tests and debugging; ``client.run``)."""
    plugin = dask_worker.plugins.get(PLUGIN_NAME) if dask_worker is not None else None
    stores = plugin.stores if plugin is not None else getattr(dask_worker, "_mmsb_stores", {})
    store = stores.get(buf_id)
    return {} if store is None else {n: a.copy() for n, a in store.arrays.items()}

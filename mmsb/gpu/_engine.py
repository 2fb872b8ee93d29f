"""Propagation for pages on a GPU: the engine's per-page update, prefetch, and CUDA-graph waves.

``update_page`` is what ``Engine.update`` calls (through the cuda backend) for a destination page on a GPU.
It produces the same :class:`~mmsb.propagate.Change` (numpy idx / old values) as the CPU engine:

* ``link`` rules (built-in or cuda_add/cuda_mul semirings): the candidate rows (those reading a changed source
  entry, from the CSR structure, or all rows for a full recompute) are recomputed by the CSR SpMV kernel on the
  device, ⊕-combined over the links, and written; the change is where they moved. For idempotent semirings this
  equals the CPU's semi-naive push bit for bit; for plus on floats it differs by rounding only (the CPU pushes
  differences, the GPU recomputes).
* ``closure`` (idempotent ⊕): improvements run the frontier loop (push with atomics) on the device; a worsened
  source resets the page to its source and reruns the loop from every non-zero entry (the same least fixpoint).
* ``derive`` rules, non-idempotent closures and semirings without GPU kernels run the CPU code on a host copy of
  the page (a RuntimeWarning names the semiring once) and upload the changed entries.

A CUDA failure moves the page to the CPU (DeviceFallbackWarning) and the CPU engine does the update.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional

import numpy as np

from mmsb._sets import unique
from mmsb.gpu import _pages as P
from mmsb.gpu import _runtime as rt
from mmsb.gpu import kernels as K

_csr_cache: "OrderedDict[tuple, tuple]" = OrderedDict()
_CACHE_MAX = 512


def device_csr(csr: Any, dev: int, dtype: np.dtype) -> K.DeviceCSR:
    """The device copy of a rule matrix (cached; the CSR object is kept alive with it). A matrix page's CSR that
    changed since its upload (its ``version`` moved) is uploaded again, whole."""
    key = (id(csr), dev, np.dtype(dtype).str)
    hit = _csr_cache.get(key)
    if hit is not None and hit[0] is csr and hit[2] == csr.version:
        _csr_cache.move_to_end(key)
        return hit[1]
    d = K.DeviceCSR(csr, dev, dtype)
    _csr_cache[key] = (csr, d, csr.version)
    while len(_csr_cache) > _CACHE_MAX:
        _csr_cache.popitem(last=False)
    return d


def _src_on(engine: Any, name: str, dev: int, dtype: np.dtype) -> Any:
    """Source page ``name`` as a CuPy array on ``dev`` in ``dtype`` (peer copy or upload as needed)."""
    cp = rt.cupy()
    page = engine.page(name)
    if page.device == "cpu":
        x = rt.to_device(engine.array(name), dev)
    elif rt.device_id(page.device) != dev:
        x = cp.empty_like(page._data)
        x.data.copy_from_device(page._data.data, page._data.nbytes)
        rt.counters["peer_copies"] += 1
    else:
        x = page._data
    return x if x.dtype == dtype else x.astype(dtype)


def prefetch(engine: Any, names: list) -> None:
    """Upload the matrices of the rules into ``names`` (GPU pages) before a wave touches them."""
    for name in names:
        page = engine.page(name, None)
        if page is None or page.device == "cpu":
            continue
        dev = rt.device_id(page.device)
        for r in engine.graph.rules_into(name):
            if r.matrix is not None and K.ops_for(r.semiring, page.dtype) is not None:
                with rt.on(dev):
                    device_csr(r.matrix, dev, page.dtype)
                    if r.kind == "closure":
                        device_csr(r.matrix.T, dev, page.dtype)
                rt.counters["prefetches"] += 1


def update_page(engine: Any, page: Any, rules: list, inputs: dict, full: bool, undo: Any) -> Any:
    """One propagation step into the GPU page ``page`` (the CPU engine's step on a host copy where the semiring
    has no GPU kernels; the CPU engine itself after a CUDA failure moved the page back)."""
    name = page.name
    buf = page._buf
    try:
        kind = rules[0].kind
        ops = K.ops_for(rules[0].semiring, page.dtype) if kind != "derive" else None
        if kind == "derive" or ops is None or (kind == "closure" and not rules[0].semiring.idempotent):
            if kind != "derive":
                P._warn_cpu(rules[0].semiring)
            return _on_host(engine, page, rules, inputs, full, undo)
        with rt.on(rt.device_id(page.device)):
            if kind == "closure":
                r = rules[0]
                if r.matrix_page is not None and r.matrix_page in inputs:
                    full = True             # its matrix changed: recompute on the device (see docs/gpu.md)
                return _closure(engine, page, r, ops, inputs.get(r.srcs[0]), full, undo)
            return _links(engine, page, rules, ops, inputs, full, undo)
    except Exception as exc:
        if not rt.is_cuda_failure(exc) or page.device == "cpu":
            raise
        P.fallback(buf, page, f"{type(exc).__name__}: {exc}")
        return engine.update(name, rules, inputs, full, undo)


def _finish(page: Any, y_new: Any, cand: Optional[np.ndarray], before: Any, ops: K.Ops, undo: Any) -> Any:
    """Write the candidate rows (all rows when cand is None) and return the Change."""
    from mmsb.propagate import Change

    cp = rt.cupy()
    moved = K.changed_mask(ops, y_new, before)
    pos = cp.flatnonzero(moved)
    if not int(pos.size):
        return None
    old = rt.to_host(before[pos]).view(page.dtype) if page.dtype == np.bool_ else rt.to_host(before[pos])
    if cand is None:
        idx = rt.to_host(pos).astype(np.int64)
        page._data = y_new if y_new.dtype == page._data.dtype else y_new.view(page._data.dtype)
    else:
        dc = rt.to_device(cand, rt.device_id(page.device))
        K._kv(page._data)[dc[pos]] = y_new[pos]
        idx = cand[rt.to_host(pos)]
    P._record(page._buf, page, idx, old, undo)
    return Change(idx, old)


def _links(engine: Any, page: Any, rules: list, ops: K.Ops, inputs: dict, full: bool, undo: Any) -> Any:
    cp = rt.cupy()
    dev = rt.device_id(page.device)
    kd = ops.kview()
    if full:
        cand = None
    else:
        parts = []
        for r in rules:
            ch = inputs.get(r.srcs[0])
            if ch is not None and ch.idx.size:
                parts.append(r.matrix.column_rows(ch.idx))
            mch = inputs.get(r.matrix_page) if r.matrix_page is not None else None
            if mch is not None and mch.idx.size:   # changed entries of its matrix page: their rows
                parts.append(unique(mch.idx // r.matrix.shape[1]))
        if not parts:
            return None
        cand = unique(np.concatenate(parts)) if len(parts) > 1 else parts[0]
        if not cand.size:
            return None
    rows_d = None if cand is None else rt.to_device(cand.astype(np.int64), dev)
    nout = page.size if cand is None else cand.size
    acc = None
    for r in rules:
        A = device_csr(r.matrix, dev, page.dtype)
        x = _src_on(engine, r.srcs[0], dev, page.dtype)
        part = cp.empty(nout, dtype=kd)
        K.spmv(ops, A, x, part, rows=rows_d, compact=True)
        if acc is None:
            acc = part
        else:
            K.combine(ops, acc, part)
    before = K._kv(page._data) if cand is None else K._kv(page._data)[rows_d]
    return _finish(page, acc, cand, before, ops, undo)


def _closure(engine: Any, page: Any, rule: Any, ops: K.Ops, ch: Any, full: bool, undo: Any) -> Any:
    from mmsb.propagate import changed_positions

    cp = rt.cupy()
    dev = rt.device_id(page.device)
    sr = rule.semiring
    zero = K.scalar(ops, ops.zero)
    y = K._kv(page._data)
    src = K._kv(_src_on(engine, rule.srcs[0], dev, page.dtype))
    At = device_csr(rule.matrix.T, dev, page.dtype)
    x = y.copy()
    reset = full
    if not full:
        if ch is None or not ch.idx.size:
            return None
        new = rt.to_host(src[rt.to_device(ch.idx, dev)]).view(page.dtype)
        old = ch.old.astype(page.dtype, copy=False)
        better = ~changed_positions(sr.add_arrays(old, new), new)
        if not better.all():
            reset = True
        else:
            imp = rt.to_device(ch.idx, dev)
            cur = x[imp]
            merged = cur.copy()
            K.combine(ops, merged, src[imp])
            moved = K.changed_mask(ops, merged, cur)
            x[imp] = merged
            frontier = imp[moved]
    if reset:
        x[...] = src
        frontier = cp.flatnonzero(x != zero).astype(np.int64)
    K.closure(ops, At, x, frontier)
    return _finish(page, x, None, y, ops, undo)


def _on_host(engine: Any, page: Any, rules: list, inputs: dict, full: bool, undo: Any) -> Any:
    """Run the CPU engine's update on a host copy of the page; upload what changed."""
    from mmsb.propagate import UndoLog

    rt.counters["cpu_fallback_ops"] += 1
    name = page.name
    y_host = P.host_copy(page)
    orig = engine.array
    engine.array = lambda n: y_host if n == name else orig(n)
    try:
        kind = rules[0].kind
        scratch = UndoLog()
        if kind == "derive":
            ch = engine._derive(name, rules[0], scratch)
        elif kind == "closure":
            ch = engine._closure(name, rules[0], inputs.get(rules[0].srcs[0]), full, scratch)
        else:
            ch = engine._links(name, rules, inputs, full, scratch)
    finally:
        engine.array = orig
    if ch is None or not ch.idx.size:
        return None
    dev = rt.device_id(page.device)
    with rt.on(dev):
        page._data[rt.to_device(ch.idx, dev)] = rt.to_device(y_host[ch.idx], dev)
    P._record(page._buf, page, ch.idx, ch.old, undo)
    return ch


# -- CUDA-graph waves -----------------------------------------------------------------------------------------
class GraphWave:
    """A steady-state propagation wave over the ``link`` rules into GPU pages, captured once as a CUDA graph.

    ``run()`` recomputes every GPU page that is the target of link rules (in topological order, full SpMV pulls
    ⊕-combined over its links) on one device with no host synchronisation. The first run records the launches
    on a capture stream into a CUDA graph; later runs replay it while the rules, shapes, dtypes and page storage
    stay the same (a change recaptures). ``mmsb.gpu.config["cuda_graphs"] = False`` (or MMSB_CUDA_GRAPHS=0) runs
    the same launches eagerly. ``commit()`` runs the wave and commits what changed as derived deltas of a new
    epoch (the log sees the same deltas as the engine would produce).
    """

    def __init__(self, buf: Any, pages: Optional[list] = None):
        self.buf = buf
        self.names = pages
        self._key: Any = None
        self._graph: Any = None
        self._stream: Any = None
        self._plan: list = []
        self.captures = 0
        self.replays = 0
        self._dev: Any = None

    def _targets(self) -> list:
        g = self.buf._graph
        order = g.topological_order()
        want = set(self.names) if self.names is not None else None
        out = []
        for n in order:
            rules = g.rules_into(n)
            if not rules or rules[0].kind != "link":
                continue
            if want is not None and n not in want:
                continue
            p = self.buf._pages[n]
            if p.device == "cpu":
                continue
            out.append((n, rules))
        return out

    def _build(self) -> tuple:
        targets = self._targets()
        key = []
        plan = []
        dev = None
        for n, rules in targets:
            p = self.buf._pages[n]
            d = rt.device_id(p.device)
            dev = d if dev is None else dev
            if d != dev:
                raise ValueError("a GraphWave runs on one device; its pages are on several")
            ops = K.ops_for(rules[0].semiring, p.dtype)
            if ops is None:
                raise ValueError(f"page {n!r}: semiring {rules[0].semiring.name!r} has no GPU kernels")
            steps = []
            for r in rules:
                s = self.buf._pages[r.srcs[0]]
                if s.device != p.device or s.dtype != p.dtype:
                    raise ValueError(f"page {n!r}: source {s.name!r} must be on {p.device} with dtype {p.dtype}")
                with rt.on(d):
                    steps.append((device_csr(r.matrix, d, p.dtype), r.srcs[0]))
                key.append((r.id, n, r.srcs[0], p.shape, p.dtype.str, r.matrix.version))
            plan.append((n, ops, steps))
        ptrs = tuple((n, self.buf._pages[n]._data.data.ptr) for n in self.buf._pages
                     if self.buf._pages[n].device != "cpu")
        return (tuple(key), ptrs), plan, dev

    def _launch_all(self, dev: int) -> None:
        for n, ops, steps in self._plan:
            y = K._kv(self.buf._pages[n]._data)
            for k, (A, s) in enumerate(steps):
                x = K._kv(self.buf._pages[s]._data)
                if k == 0:
                    K.spmv(ops, A, x, y)
                else:
                    part = self._tmp2[n]
                    K.spmv(ops, A, x, part)
                    K.combine(ops, y, part)

    def run(self) -> None:
        """Recompute the wave on the device (replaying the captured graph when possible)."""
        cp = rt.cupy()
        pages = self.buf._pages
        fast = (tuple(r.id for r in self.buf._graph.rules()),
                tuple((n, p.device, p._data.data.ptr if p.device != "cpu" and p._data is not None else 0)
                      for n, p in pages.items()))
        if fast == getattr(self, "_fastkey", None) and self._dev is not None:
            key, dev = self._key, self._dev
        else:
            key, plan, dev = self._build()
            self._fastkey, self._dev = fast, dev
        if dev is None:
            return
        with rt.on(dev):
            if key != self._key:
                self._key, self._plan, self._graph = key, plan, None
                self._tmp2 = {n: cp.empty_like(K._kv(self.buf._pages[n]._data)) for n, _, s in plan if len(s) > 1}
                for _, ops, _ in plan:           # compile every module before any capture
                    K.kernel(ops, "combine")
                    for A, _ in _:
                        K.kernel(ops, "spmv", A.itype, A.group)
                K._dummy(cp)
            if not rt.config["cuda_graphs"]:
                self._launch_all(dev)
                return
            if self._graph is None:
                self._stream = cp.cuda.Stream(non_blocking=True)
                with self._stream:
                    self._stream.begin_capture()
                    try:
                        self._launch_all(dev)
                    finally:
                        self._graph = self._stream.end_capture()
                self.captures += 1
                rt.counters["graph_captures"] += 1
            self._graph.launch(self._stream)
            self._stream.synchronize()
            self.replays += 1
            rt.counters["graph_replays"] += 1

    def commit(self) -> int:
        """Run the wave and commit what changed as derived deltas of a new epoch; returns the epoch (the current
        one when nothing changed). The commit goes through the buffer's commit pipeline."""
        buf = self.buf
        with buf._locked():
            buf._check_writable()
            if not self._targets():
                return buf.epoch
            return buf._pipe.commit([], device_wave=self._run_recorded, skip_empty=True)

    def _run_recorded(self, undo: Any) -> dict:
        """Run the wave; ``{page: Change}`` of what it changed, each recorded in ``undo``."""
        from mmsb.propagate import Change

        buf = self.buf
        targets = [n for n, _ in self._targets()]
        before = {}
        for n in targets:
            p = buf._pages[n]
            with rt.on(rt.device_id(p.device)):
                before[n] = p._data.copy()
        self.run()
        out = {}
        for n in targets:
            p = buf._pages[n]
            with rt.on(rt.device_id(p.device)):
                ops = K.ops_for(buf._graph.rules_into(n)[0].semiring, p.dtype)
                pos = rt.cupy().flatnonzero(K.changed_mask(ops, K._kv(p._data), K._kv(before[n])))
                if int(pos.size):
                    idx = rt.to_host(pos).astype(np.int64)
                    old = rt.to_host(before[n][pos])
                    out[n] = Change(idx, old)
                    undo.action(lambda p=p, b=before[n]: p._data.__setitem__(slice(None), b))
        return out

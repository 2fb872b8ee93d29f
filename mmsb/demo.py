"""``mmsb demo``: facility distances on a road-like grid, kept current incrementally in a durable store.

A grid of side x side vertices joined by two-way roads with random travel times. The road network is a matrix
page (``buf.create_matrix``); other pages hold the facility sources, the shortest travel time to the nearest
facility (a min_plus closure over the road matrix), the vertices within a travel budget (a derive) and demand
summed per district (a plus_times link). A stream of update transactions mixes new facilities, a closed facility
and changed demand with road closures, traffic jams (slower roads), faster roads and reopened roads; every one
propagates incrementally. After every transaction the distances are checked to be the fixed point of the road
network as the demo itself wrote it (numpy only); with scipy, one facility change and one road closure are also
recomputed from scratch with scipy.sparse.csgraph. Then a checkpoint, a reopen, time travel, verify and the log
figures.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

BUDGET = 60.0
DISTRICT = 50
ROAD_EVENTS = ("road closure", "traffic jam", "faster road", "road reopened")
JAM_FACTOR = 4.0          # a traffic jam makes its roads this many times slower
FAST_FACTOR = 0.25        # a faster road (an upgraded street) takes this share of the old travel time
FAR = 1e6                 # distances are capped here when changes are summed (inf - inf is not a change)


def grid_graph(side: int, rng: np.random.Generator) -> tuple:
    """Edges u -> v of a 4-neighbour grid with travel times in [1, 10): edge r is road r one way, edge r + R the
    other way back (R roads, 2R edges)."""
    a, b = grid_roads(side)
    u = np.concatenate([a, b])
    v = np.concatenate([b, a])
    w = rng.uniform(1.0, 10.0, u.size)
    return u, v, w


def grid_roads(side: int) -> tuple:
    """The two ends ``(a, b)`` of every road of the grid: first the horizontal ones, row by row
    (``(i, j) - (i, j + 1)``), then the vertical ones (``(i, j) - (i + 1, j)``)."""
    ids = np.arange(side * side, dtype=np.int64).reshape(side, side)
    a = np.concatenate([ids[:, :-1].ravel(), ids[:-1, :].ravel()])
    b = np.concatenate([ids[:, 1:].ravel(), ids[1:, :].ravel()])
    return a, b


class _CSR:
    """A minimal CSR holder (indptr/indices/data/shape), what ``create_matrix`` accepts without scipy."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, shape: tuple):
        self.indptr, self.indices, self.data, self.shape = indptr, indices, data, shape


def _csr(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple) -> tuple:
    """``(CSR holder, pos)`` built with numpy only; ``pos[k]`` is where entry k landed in its ``data``."""
    order = np.lexsort((cols, rows))
    indptr = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=shape[0]), out=indptr[1:])
    pos = np.empty_like(order)
    pos[order] = np.arange(order.size)
    return _CSR(indptr, cols[order].astype(np.int64), vals[order].astype(np.float64), shape), pos


class RoadNet:
    """The demo's own copy of the road network: travel times per edge (inf: closed), the matrix
    ``A[v, u] = time(u -> v)`` in CSR (the closure reads ``dist = facilities ⊕ A ⊗ dist``), and the changes the
    update stream makes to it. The store's matrix page is checked against this copy."""

    def __init__(self, side: int, rng: np.random.Generator):
        self.side = side
        self.n = side * side
        self.a, self.b = grid_roads(side)
        self.n_roads = self.a.size
        self.u, self.v, self.w0 = grid_graph(side, rng)
        self.w = self.w0.copy()
        self.A, self.pos = _csr(self.v, self.u, self.w, (self.n, self.n))
        ra, ca = np.divmod(self.a, side)
        rb, cb = np.divmod(self.b, side)
        self.mid = ((ra + rb) / 2.0, (ca + cb) / 2.0)      # (row, col) of each road's midpoint
        self.closures: list[np.ndarray] = []                 # roads closed together, oldest first

    @property
    def n_edges(self) -> int:
        return self.u.size

    def edges(self, roads: np.ndarray) -> np.ndarray:
        return np.concatenate([roads, roads + self.n_roads])

    def entries(self, edges: np.ndarray) -> tuple:
        """``(rows, cols)`` of the matrix entries of ``edges``."""
        return self.v[edges], self.u[edges]

    def is_open(self, roads: np.ndarray) -> np.ndarray:
        return np.isfinite(self.w[roads])

    def plan(self, kind: str, rng: np.random.Generator, near: int) -> tuple:
        """``(roads, edges, new travel times of the edges)`` of one road event close to vertex ``near`` (a
        facility, so that the change shows); nothing is changed yet."""
        side, n_h = self.side, self.side * (self.side - 1)
        fr, fc = divmod(int(near), side)
        off = max(1, side // 100) * (1 if rng.random() < 0.5 else -1)

        def clip(x: int, hi: int) -> int:
            return int(min(max(x, 0), hi))

        if kind == "road closure":           # a barrier: the roads crossing a line of side/10 vertices
            length = min(max(2, side // 10), side)
            if rng.random() < 0.5:           # the roads (i, j)-(i + 1, j) of a row of columns: a horizontal wall
                i, j0 = clip(fr + off, side - 2), clip(fc - length // 2, side - length)
                roads = n_h + i * side + np.arange(j0, j0 + length)
            else:                            # the roads (i, j)-(i, j + 1) of a column of rows: a vertical wall
                j, i0 = clip(fc + off, side - 2), clip(fr - length // 2, side - length)
                roads = np.arange(i0, i0 + length) * (side - 1) + j
            roads = roads[self.is_open(roads)]
            self.closures.append(roads)
            edges = self.edges(roads)
            return roads, edges, np.full(edges.size, np.inf)
        if kind == "road reopened":          # the oldest closure ends
            roads = self.closures.pop(0) if self.closures else np.empty(0, dtype=np.int64)
            edges = self.edges(roads)
            return roads, edges, self.w0[edges]
        if kind == "traffic jam":            # the roads within side/40 of a point get slower
            rad = max(1.0, side / 40)
            ci, cj = np.array([fr, fc]) + rng.uniform(-rad, rad, 2)
            near_c = (self.mid[0] - ci) ** 2 + (self.mid[1] - cj) ** 2 <= rad * rad
            roads = np.flatnonzero(near_c)
            factor = JAM_FACTOR
        elif kind == "faster road":          # a street of side/5 roads from the facility on gets faster
            length = min(max(2, side // 5), side - 1)
            if rng.random() < 0.5:           # along a row
                i = clip(fr + off, side - 1)
                j0 = clip(fc - length if rng.random() < 0.5 else fc, side - 1 - length)
                roads = i * (side - 1) + np.arange(j0, j0 + length)
            else:                            # along a column
                j = clip(fc + off, side - 1)
                i0 = clip(fr - length if rng.random() < 0.5 else fr, side - 1 - length)
                roads = n_h + np.arange(i0, i0 + length) * side + j
            factor = FAST_FACTOR
        else:
            raise ValueError(f"unknown road event {kind!r}")
        roads = roads[self.is_open(roads)]
        edges = self.edges(roads)
        return roads, edges, self.w[edges] * factor

    def apply(self, edges: np.ndarray, w: np.ndarray) -> None:
        self.w[edges] = w
        self.A.data[self.pos[edges]] = w


def _schedule(updates: int, roads: bool) -> list:
    """The kind of each update: new facilities on even steps, road events (closure, jam, faster road, reopened,
    in turn) on odd steps when the grid has roads, and one closed facility halfway."""
    out, r = [], 0
    for k in range(updates):
        if k == updates // 2 and k > 0:
            out.append("facility closed")
        elif k % 2 == 1 and roads:
            out.append(ROAD_EVENTS[r % len(ROAD_EVENTS)])
            r += 1
        else:
            out.append("new facility")
    return out


def fixed_point(A: _CSR, fac: np.ndarray, dist: np.ndarray) -> bool:
    """Whether ``dist == fac ⊕ A ⊗ dist`` exactly (min_plus): every vertex is a facility or one road away from a
    neighbour's distance, and no road offers better. With travel times > 0 this fixed point is unique, so it
    certifies the shortest distances without a shortest-path solver."""
    rows = getattr(A, "_rows", None)
    if rows is None:                             # the rows with entries (the layout never changes)
        rows = A._rows = np.flatnonzero(np.diff(A.indptr) > 0)
    best = np.full(dist.size, np.inf)
    if rows.size:
        best[rows] = np.minimum.reduceat(dist[A.indices] + A.data, A.indptr[rows])
    return bool(np.array_equal(dist, np.minimum(fac, best, out=best)))


@dataclass
class Step:
    k: int
    kind: str
    seconds: float
    roads: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    changed: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))   # vertices whose dist moved
    delta: np.ndarray = field(default_factory=lambda: np.empty(0))                     # by how much (capped at FAR)
    epoch: int = 0


def _within(d: np.ndarray) -> np.ndarray:
    return d <= BUDGET


def run_demo(side: int = 1000, path: Optional[str] = None, updates: int = 20, plot: Optional[str] = None,
             seed: int = 7, out=print) -> int:
    """Run the demo; returns 0 when every check agreed, 1 otherwise.

    Each phase that can take more than about a second shows a progress bar on a terminal (see
    :mod:`mmsb.progress`); ``out`` receives the header and the result table.
    """
    import mmsb
    from mmsb.cli import log_records
    from mmsb.progress import Progress, phase

    if side < 1 or updates < 0:
        raise ValueError(f"side must be >= 1 and updates >= 0, got side={side}, updates={updates}")
    rng = np.random.default_rng(seed)
    n = side * side
    tmp = None
    if path is None:
        tmp = tempfile.mkdtemp(prefix="mmsb-demo-")
        path = os.path.join(tmp, "store")
    rows: list[tuple[str, str]] = []
    ok = True
    try:
        out(f"mmsb demo: {side}x{side} grid ({n:,} vertices), store at {path}")
        with phase("build the grid graph") as ph:
            net = RoadNet(side, rng)
            districts_per_row = max(1, side // DISTRICT)
            vr, vc = np.divmod(np.arange(n), side)
            district = np.minimum(vr // DISTRICT, districts_per_row - 1) * districts_per_row + \
                np.minimum(vc // DISTRICT, districts_per_row - 1)
            n_d = districts_per_row ** 2
            D, _ = _csr(district.astype(np.int64), np.arange(n, dtype=np.int64), np.ones(n), (n_d, n))
        rows.append(("build graph", f"{net.n_roads:,} two-way roads ({net.n_edges:,} edges) in {ph.seconds:.2f} s"))

        with phase("create the store and its rules") as ph:
            buf = mmsb.open(path, mode="w", durability="flush")
            buf.register_function("within_budget", _within)
            roads = buf.create_matrix("roads", (n, n), semiring="min_plus", data=net.A,
                                      metadata={"unit": "minutes", "entry": "roads[v, u] = travel time u -> v"})
            fac = buf.create_page("facilities", n, semiring="min_plus", metadata={"unit": "minutes"})
            dist = buf.create_page("dist", n, semiring="min_plus")
            cov = buf.create_page("covered", n, dtype="bool", semiring="or_and")
            demand = buf.create_page("demand", n, semiring="plus_times")
            per_d = buf.create_page("district_demand", n_d, semiring="plus_times")
            buf.closure(dist, fac, roads)       # dist = facilities ⊕ roads ⊗ dist, following later road changes
            buf.derive(cov, [dist], "within_budget")
            buf.link(per_d, demand, D)
        rows.append(("road matrix page", f"{roads.nnz:,} entries, {roads.nbytes / 2**20:.1f} MiB, created with "
                                         f"the rules in {ph.seconds:.2f} s"))
        sources = [int(s) for s in rng.choice(n, size=max(1, n // 5000), replace=False)]
        fac_ref = np.full(n, np.inf)                 # the demo's own copy of the facilities page
        fac_ref[sources] = 0.0
        initial_sources = list(sources)
        with phase("initial closure") as ph:
            with buf.batch():
                buf.write(fac, np.zeros(len(sources)), index=np.array(sources), accumulate=True, source="initial")
                buf.write(demand, rng.integers(0, 20, n).astype("float64"), source="initial")
        e_initial = buf.epoch
        dist_initial = dist.read()
        fp_ok = fixed_point(net.A, fac_ref, dist_initial)
        rows.append(("initial closure", f"{len(sources)} facilities, all {n:,} distances in {ph.seconds:.2f} s"))

        steps: list[Step] = []
        compares: list[tuple] = []
        added: list[int] = []
        closed: list[int] = []
        fp_checks, fp_agree, entries_ok = 1, int(fp_ok), True
        change = {"facilities": np.zeros(n), "roads": np.zeros(n)}     # summed distance changes by cause
        prev = dist_initial
        cut, dist_cut = None, None               # the first road closure, for time travel
        with Progress(updates, "update stream", leave=True, unit=" txn") as bar:
            for k, kind in enumerate(_schedule(updates, side >= 4)):
                step = Step(k, kind, 0.0)
                if kind == "facility closed" and len(sources) > 1:
                    gone = sources.pop(0)
                    closed.append(gone)
                    t = time.perf_counter()
                    buf.write(fac, np.array([np.inf]), index=np.array([gone]), source="facility closed")
                    step.seconds = time.perf_counter() - t
                    fac_ref[gone] = np.inf
                elif kind in ROAD_EVENTS:
                    near = sources[int(rng.integers(0, len(sources)))]
                    ids, edges, w_new = net.plan(kind, rng, near)
                    r_idx, c_idx = net.entries(edges)
                    t = time.perf_counter()
                    if edges.size:
                        buf.write(roads, w_new, index=(r_idx, c_idx), source=kind)
                    step.seconds = time.perf_counter() - t
                    net.apply(edges, w_new)
                    step.roads = ids
                    entries_ok &= bool(np.array_equal(roads.read(index=(r_idx, c_idx)), w_new))
                else:
                    step.kind = "new facility"
                    s = int(rng.integers(0, n))
                    if fac_ref[s] == 0.0:        # already a facility: another vertex, if any is left
                        free = np.flatnonzero(fac_ref != 0.0)
                        s = int(free[rng.integers(0, free.size)]) if free.size else s
                    if fac_ref[s] != 0.0:
                        sources.append(s)
                        added.append(s)
                    t = time.perf_counter()
                    with buf.transaction() as tx:
                        tx.write(fac, np.zeros(1), index=np.array([s]), accumulate=True, source="new facility")
                        idx = rng.integers(0, n, 100)
                        tx.write(demand, rng.integers(-3, 4, 100).astype("float64"), index=idx, accumulate=True,
                                 source="demand change")
                    step.seconds = time.perf_counter() - t
                    fac_ref[s] = 0.0
                step.epoch = buf.epoch
                now = dist.read()
                step.changed = np.flatnonzero(now != prev)
                cause = "roads" if step.kind in ROAD_EVENTS else "facilities"
                step.delta = np.minimum(now[step.changed], FAR) - np.minimum(prev[step.changed], FAR)
                change[cause][step.changed] += step.delta
                fp_checks += 1
                fp_agree += fixed_point(net.A, fac_ref, now)
                if cut is None and step.kind == "road closure" and step.roads.size:
                    cut, dist_cut = step, now
                if step.kind in ("new facility", "road closure") and \
                        not any(c[0] == step.kind for c in compares) and step.changed.size:
                    c = _compare(net, fac_ref, now)
                    if c is not None:
                        compares.append((step.kind, step.seconds) + c)
                steps.append(step)
                prev = now
                bar.update()
        if updates:
            inc = np.array([s.seconds for s in steps])
            rows.append(("incremental updates", f"{updates} transactions, median {np.median(inc) * 1e3:.1f} ms, "
                                                f"max {inc.max() * 1e3:.1f} ms"))
            for kind in ("new facility", "facility closed") + ROAD_EVENTS:
                mine = [s for s in steps if s.kind == kind]
                if mine:
                    rows.append((f"  {kind}", _step_summary(mine)))
        else:
            rows.append(("incremental updates", "none (--updates 0)"))
        ok &= fp_agree == fp_checks and entries_ok
        rows.append(("fixed-point check", f"dist = facilities ⊕ roads ⊗ dist exactly in {fp_agree} of {fp_checks} "
                                          f"states (numpy, on the demo's own copy of the roads); road matrix "
                                          f"entries {'agree' if entries_ok else 'DIFFER'}"))
        if compares:
            agree = all(c[2] for c in compares)
            ok &= agree
            rows.append(("scipy csgraph recompute", "; ".join(
                f"{kind}: {_ms(t_s)} vs incremental {_ms(t_i)} ({_times(t_s / max(t_i, 1e-9))})"
                for kind, t_i, _, t_s in compares) + f"; results {'agree' if agree else 'DIFFER'}"))
        else:
            why = "no update" if not updates else "scipy not installed" if not _has_scipy() else \
                "no distance changed"
            rows.append(("scipy csgraph recompute", f"skipped ({why})"))
        expect_cov = dist.read() <= BUDGET
        cov_ok = bool(np.array_equal(cov.read(), expect_cov))
        dem = demand.read()
        agg_ok = bool(np.allclose(per_d.read(), np.bincount(district, weights=dem, minlength=n_d)))
        ok &= cov_ok and agg_ok
        rows.append(("derived pages", f"covered {int(expect_cov.sum()):,} vertices (within {BUDGET:g}); "
                                      f"district demand {'agrees' if agg_ok else 'DIFFERS'}; coverage "
                                      f"{'agrees' if cov_ok else 'DIFFERS'}"))

        with phase("checkpoint") as ph:
            buf.checkpoint()
        t_ckpt = ph.seconds
        final = dist.read()
        epoch = buf.epoch
        log = buf.log.stats()              # this session wrote the whole log: its raw/encoded figures are complete
        buf.close()
        with phase("reopen") as ph:
            buf = mmsb.open(path, mode="r", functions={"within_budget": _within})
        t_open = ph.seconds
        touched = net.edges(np.unique(np.concatenate([s.roads for s in steps] + [np.empty(0, np.int64)])))
        net_ok = bool(np.array_equal(buf["roads"].read(index=net.entries(touched)), net.w[touched])) and \
            buf["roads"].nnz == int(np.isfinite(net.w).sum())
        reopen_ok = buf.epoch == epoch and np.array_equal(buf["dist"].read(), final) and net_ok
        n_txns, n_records = log_records(buf)     # the definition mmsb info and mmsb verify use
        with phase("time travel") as ph:         # back to the first road closure, or to the initial closure
            e_past, d_past = (cut.epoch, dist_cut) if cut is not None else (e_initial, dist_initial)
            past = buf.at(e_past)
            travel_ok = bool(np.array_equal(past["dist"].read(), d_past))
            if cut is not None:                  # its roads absent then, all the others there
                r_idx, c_idx = net.entries(net.edges(cut.roads))
                travel_ok &= bool(np.all(np.isinf(past["roads"].read(index=(r_idx, c_idx)))))
                travel_ok &= past["roads"].nnz == net.n_edges - r_idx.size
        ok &= bool(reopen_ok and travel_ok)
        rows.append(("checkpoint + reopen", f"checkpoint {t_ckpt:.2f} s, reopen {t_open:.2f} s, state (pages, "
                                            f"road matrix) {'identical' if reopen_ok else 'DIFFERS'}"))
        what = f"epoch {e_past} ({'the first road closure: distances and road matrix' if cut else 'initial'})"
        rows.append(("time travel", f"{what} rebuilt in {ph.seconds:.2f} s, "
                                    f"{'identical' if travel_ok else 'DIFFERS'}"))
        buf.close()
        with phase("verify") as ph:
            report = mmsb.verify(path)
        ok &= report.ok
        rows.append(("verify", f"{'ok' if report.ok else 'PROBLEMS: ' + '; '.join(report.problems)} in "
                               f"{ph.seconds:.2f} s"))
        rows.append(("log", f"{n_txns} transactions, {n_records} records, {log.get('bytes', 0) / 2**20:.1f} MiB, "
                            f"compression {log.get('compression_ratio', 1):.1f}x"))
        if plot:
            with phase("plot"):
                rows.append(("plot", _plot(plot, dist_initial, final, side, initial_sources, added, closed, steps,
                                           change, net)))
        width = max(len(k) for k, _ in rows)
        out("")
        out(f"{'step':<{width}}  result")
        out(f"{'-' * width}  {'-' * 60}")
        for k, val in rows:
            out(f"{k:<{width}}  {val}")
        out("")
        out("all checks passed" if ok else "SOME CHECKS FAILED")
        return 0 if ok else 1
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _step_summary(steps: list) -> str:
    t = np.array([s.seconds for s in steps]) * 1e3
    changed = np.array([s.changed.size for s in steps])
    roads = sum(int(s.roads.size) for s in steps)
    what = f"{len(steps)} txn{'s' if len(steps) > 1 else ''}"
    if roads:
        what += f", {roads:,} roads"
    return f"{what}: median {np.median(t):.1f} ms; distances changed at {int(np.median(changed)):,} vertices " \
           f"(median), {int(changed.max()):,} at most"


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.0f} ms" if ms >= 100 else f"{ms:.1f} ms" if ms >= 1 else f"{ms:.2f} ms"


def _times(ratio: float) -> str:
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.2g}x"


def _has_scipy() -> bool:
    try:
        import scipy.sparse.csgraph  # noqa: F401
    except ImportError:
        return False
    return True


def _compare(net: RoadNet, fac: np.ndarray, got: np.ndarray):
    """``(agree, scipy seconds)`` of a from-scratch scipy dijkstra over the open roads; None without scipy."""
    try:
        import scipy.sparse as sp
        from scipy.sparse.csgraph import dijkstra
    except ImportError:
        return None
    A = net.A                                    # A = W.T; closed roads are inf entries, never on a shortest path
    W = sp.csr_matrix((A.data, A.indices, A.indptr), shape=A.shape).T.tocsr()
    t = time.perf_counter()
    ref = dijkstra(W, indices=np.flatnonzero(fac == 0.0), min_only=True)
    t_scipy = time.perf_counter() - t
    return bool(np.allclose(got, ref, rtol=1e-12, atol=0)), t_scipy


_ROAD_STYLE = {"road closure": dict(c="black", label="closed road"),
               "road reopened": dict(c="limegreen", label="reopened road"),
               "traffic jam": dict(c="darkorange", label=f"traffic jam ({JAM_FACTOR:g}x slower)"),
               "faster road": dict(c="deepskyblue", label=f"faster road ({1 / FAST_FACTOR:g}x faster)")}
ZOOMS = 10                # road updates shown one by one, zoomed, in the plot's second row


def _plot(path: str, before: np.ndarray, after: np.ndarray, side: int, initial: list, added: list,
          closed: list, steps: list, change: dict, net: RoadNet) -> str:
    """The distance field and what changed it.

    First row: the field before and after the update stream, the change the facility updates made and the change
    the road updates made (facilities marked: white dots initial, red triangles new, black crosses closed; on the
    road panel each road update's roads are drawn by kind, the vertices whose distance changed at that update are
    outlined, and the update's step number is written next to it). Second row, when there were road updates: the
    first of them one by one, zoomed, each with the change of distance it made at its step."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import TwoSlopeNorm
        from matplotlib.lines import Line2D
        from matplotlib.patches import Circle
    except ImportError:
        return "skipped (matplotlib not installed)"
    cap = 3 * BUDGET
    b = np.minimum(before, cap).reshape(side, side)
    a = np.minimum(after, cap).reshape(side, side)
    span = min(max(float(np.max(np.abs(c))) for c in change.values()), cap) or 1.0   # beyond 3x budget saturates
    road_steps = [s for s in steps if s.kind in ROAD_EVENTS and s.roads.size]
    zooms = road_steps[:ZOOMS]
    n_fac = sum(s.kind == "new facility" for s in steps)
    fig = plt.figure(figsize=(22.0, 9.4 if zooms else 5.9), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[5.9, 3.5]) if zooms else (fig, None)
    axes = top.subplots(1, 4)
    diverging = dict(norm=TwoSlopeNorm(0.0, -span, span))
    still_closed = np.concatenate([s.roads for s in road_steps if s.kind == "road closure"] +
                                  [np.empty(0, np.int64)])
    still_closed = still_closed[~net.is_open(still_closed)]
    panels = [(b, "before the update stream", "viridis", dict(vmin=0, vmax=cap), "minutes (capped at 3x budget)"),
              (a, f"after {len(steps)} updates ({still_closed.size} roads closed)", "viridis",
               dict(vmin=0, vmax=cap), "minutes (capped at 3x budget)"),
              (change["facilities"].reshape(side, side), f"change from {n_fac} new and {len(closed)} closed "
               "facilities", "RdBu_r", diverging, "minutes (blue: nearer, red: farther)"),
              (change["roads"].reshape(side, side), f"net change from {len(road_steps)} road updates "
               "(numbers: step)", "RdBu_r", diverging, "minutes (blue: nearer, red: farther)")]

    def mark(ax, ids, **kw):
        if len(ids):
            r, c = np.divmod(np.asarray(ids), side)
            ax.scatter(c, r, clip_on=True, zorder=3, **kw)

    size = max(12.0, 3000.0 / side)
    for k, (ax, (img, title, cmap, scale, label)) in enumerate(zip(axes, panels)):
        im = ax.imshow(img, cmap=cmap, interpolation="nearest", **scale)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        top.colorbar(im, ax=ax, shrink=0.85, pad=0.02, label=label)
        if k < 3:
            mark(ax, initial, s=size * 0.6, c="white", edgecolors="black", linewidths=0.5,
                 label="facility" if k == 0 else None)
        if k in (1, 2):
            mark(ax, added, s=size * 2, c="red", marker="^", edgecolors="white", linewidths=0.8,
                 label="new facility")
            mark(ax, closed, s=size * 4, c="black", marker="X", edgecolors="white", linewidths=0.8,
                 label="closed facility")
    dot = max(0.5, 600.0 / side)
    _roads(axes[1], net, [Step(-1, "road closure", 0.0, roads=still_closed)], dot, Circle, number=False)
    _roads(axes[3], net, road_steps, dot, Circle, outline=True)
    if zooms:
        zax = np.atleast_1d(bottom.subplots(1, ZOOMS))
        for ax, st in zip(zax, zooms):
            img = np.zeros(side * side)
            img[st.changed] = st.delta
            im = ax.imshow(img.reshape(side, side), cmap="RdBu_r", interpolation="nearest", **diverging)
            _roads(ax, net, [st], max(dot, 4.0), Circle, number=False)
            mark(ax, [f for f in initial + added if f not in closed], s=18, c="white", edgecolors="black",
                 linewidths=0.5)
            ax.set(xlim=_window(net, st, side)[1], ylim=_window(net, st, side)[0][::-1], xticks=[], yticks=[])
            ax.set_title(f"step {st.k}: {st.kind}\n{st.roads.size} roads, {st.changed.size:,} vertices changed",
                         fontsize=8)
        for ax in zax[len(zooms):]:
            ax.axis("off")
        bottom.colorbar(im, ax=list(zax[:len(zooms)]), shrink=0.85, pad=0.01,
                        label="change at that step (minutes)")
        bottom.suptitle(f"road updates one by one ({len(zooms)} of {len(road_steps)}), zoomed: the change of "
                        "distance each made", fontsize=10)
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    for kind in ROAD_EVENTS:
        if any(s.kind == kind for s in road_steps):
            style = _ROAD_STYLE[kind]
            handles.append(Line2D([], [], color=style["c"], ls="--", lw=1.2) if kind == "traffic jam" else
                           Line2D([], [], color=style["c"], ls="none", marker="s", markersize=5))
            labels.append(style["label"])
    top.legend(handles, labels, loc="outside lower center", ncol=len(labels), frameon=False)
    top.suptitle(f"travel time to the nearest facility on a {side}x{side} grid (budget {BUDGET:g} min)")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"wrote {path}"


def _roads(ax, net: RoadNet, steps: list, dot: float, Circle, outline: bool = False, number: bool = True) -> None:
    """Draw the roads of road updates on ``ax`` by kind (a jam as the outline of its disc); with ``outline``, also
    the outline of the vertices whose distance changed at each update; with ``number``, its step number."""
    side = net.side
    lim = (ax.get_xlim(), ax.get_ylim())
    for s in steps:
        if not s.roads.size:
            continue
        color = _ROAD_STYLE[s.kind]["c"]
        xs, ys = net.mid[1][s.roads], net.mid[0][s.roads]
        if s.kind == "traffic jam":
            cx, cy = float(xs.mean()), float(ys.mean())
            r = max(float(np.sqrt(((xs - cx) ** 2 + (ys - cy) ** 2).max())), 0.5)
            ax.add_patch(Circle((cx, cy), r, fill=False, ec=color, ls="--", lw=1.2, zorder=4))
        else:
            ax.scatter(xs, ys, s=dot, marker="s", linewidths=0, c=color, zorder=4)
        if outline and s.changed.size and side > 1:
            mask = np.zeros(side * side)
            mask[s.changed] = 1.0
            ax.contour(mask.reshape(side, side), levels=[0.5], colors=[color], linewidths=0.8, zorder=3)
        if number:
            ax.annotate(str(s.k), (float(xs.mean()), float(ys.mean())), xytext=(5, 5), textcoords="offset points",
                        fontsize=8, color=color, fontweight="bold", zorder=5)
    ax.set_xlim(*lim[0])                         # drawing must not widen the image's extent
    ax.set_ylim(*lim[1])


def _window(net: RoadNet, st: Step, side: int) -> tuple:
    """``((row lo, row hi), (col lo, col hi))``: a square around a road update's roads and the vertices it
    changed, padded, inside the grid."""
    r, c = np.divmod(st.changed, side)
    rows = np.concatenate([r, net.mid[0][st.roads]])
    cols = np.concatenate([c, net.mid[1][st.roads]])
    half = max(rows.max() - rows.min(), cols.max() - cols.min(), 8.0) * 0.6
    half = min(half, side / 2.0)
    out = []
    for x in (rows, cols):
        mid = (x.max() + x.min()) / 2.0
        lo = min(max(mid - half, -0.5), side - 0.5 - 2 * half)
        out.append((lo, lo + 2 * half))
    return tuple(out)

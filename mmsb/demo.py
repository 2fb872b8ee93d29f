"""``mmsb demo``: facility distances on a road-like grid, kept current incrementally in a durable store.

A grid of side x side vertices with random travel times; pages for facility sources, the shortest distance to
the nearest facility (a min_plus closure), the vertices within a travel budget (a derive), and demand summed per
district (a plus_times link). A stream of update transactions (new facilities, a closed facility, changed demand)
propagates incrementally; one update is recomputed from scratch with scipy.sparse.csgraph for comparison. Then a
checkpoint, a reopen, time travel, verify and the log figures.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Optional

import numpy as np

BUDGET = 60.0
DISTRICT = 50


def grid_graph(side: int, rng: np.random.Generator) -> tuple:
    """Edges u -> v of a 4-neighbour grid (both directions) with travel times in [1, 10)."""
    ids = np.arange(side * side, dtype=np.int64).reshape(side, side)
    right = (ids[:, :-1].ravel(), ids[:, 1:].ravel())
    down = (ids[:-1, :].ravel(), ids[1:, :].ravel())
    u = np.concatenate([right[0], right[1], down[0], down[1]])
    v = np.concatenate([right[1], right[0], down[1], down[0]])
    w = rng.uniform(1.0, 10.0, u.size)
    return u, v, w


def _csr(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple):
    """A minimal CSR holder (indptr/indices/data/shape) built with numpy only."""
    order = np.lexsort((cols, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    indptr = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=shape[0]), out=indptr[1:])

    class _M:
        pass

    m = _M()
    m.indptr, m.indices, m.data, m.shape = indptr, cols.astype(np.int64), vals, shape
    return m


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
            u, v, w = grid_graph(side, rng)
            A = _csr(v, u, w, (n, n))          # A[v, u] = travel time u -> v, so dist = sources ⊕ A ⊗ dist
            districts_per_row = max(1, side // DISTRICT)
            vr, vc = np.divmod(np.arange(n), side)
            district = np.minimum(vr // DISTRICT, districts_per_row - 1) * districts_per_row + \
                np.minimum(vc // DISTRICT, districts_per_row - 1)
            n_d = districts_per_row ** 2
            D = _csr(district.astype(np.int64), np.arange(n, dtype=np.int64), np.ones(n), (n_d, n))
        rows.append(("build graph", f"{u.size:,} edges in {ph.seconds:.2f} s"))

        with phase("create the store and its rules"):
            buf = mmsb.open(path, mode="w", durability="flush")
            buf.register_function("within_budget", _within)
            fac = buf.create_page("facilities", n, semiring="min_plus", metadata={"unit": "minutes"})
            dist = buf.create_page("dist", n, semiring="min_plus")
            cov = buf.create_page("covered", n, dtype="bool", semiring="or_and")
            demand = buf.create_page("demand", n, semiring="plus_times")
            per_d = buf.create_page("district_demand", n_d, semiring="plus_times")
            buf.closure(dist, fac, A)
            buf.derive(cov, [dist], "within_budget")
            buf.link(per_d, demand, D)
        sources = [int(s) for s in rng.choice(n, size=max(1, n // 5000), replace=False)]
        initial_sources = list(sources)
        with phase("initial closure") as ph:
            with buf.batch():
                buf.write(fac, np.zeros(len(sources)), index=np.array(sources), accumulate=True, source="initial")
                buf.write(demand, rng.integers(0, 20, n).astype("float64"), source="initial")
        e_initial = buf.epoch
        dist_initial = dist.read()
        rows.append(("initial closure", f"{len(sources)} facilities, all {n:,} distances in {ph.seconds:.2f} s"))

        inc_times, compare = [], None
        added: list[int] = []
        closed: list[int] = []
        with Progress(updates, "update stream", leave=True, unit=" txn") as bar:
            for k in range(updates):
                t = time.perf_counter()
                if k == updates // 2 and len(sources) > 1:
                    gone = sources.pop(0)
                    closed.append(gone)
                    buf.write(fac, np.array([np.inf]), index=np.array([gone]), source="closure")
                else:
                    s = int(rng.integers(0, n))
                    sources.append(s)
                    added.append(s)
                    with buf.transaction() as tx:
                        tx.write(fac, np.zeros(1), index=np.array([s]), accumulate=True, source="new facility")
                        idx = rng.integers(0, n, 100)
                        tx.write(demand, rng.integers(-3, 4, 100).astype("float64"), index=idx, accumulate=True,
                                 source="demand change")
                inc_times.append(time.perf_counter() - t)
                if k == 0:
                    compare = _compare(A, sources, dist.read(), inc_times[-1])
                bar.update()
        if updates:
            inc = np.array(inc_times)
            rows.append(("incremental updates", f"{updates} transactions, median {np.median(inc) * 1e3:.1f} ms, "
                                                f"max {inc.max() * 1e3:.1f} ms"))
        else:
            rows.append(("incremental updates", "none (--updates 0)"))
        if compare is not None:
            agree, t_scipy, t_inc = compare
            ok &= agree
            rows.append(("scipy csgraph recompute", f"{t_scipy * 1e3:.0f} ms vs incremental {t_inc * 1e3:.1f} ms "
                                                    f"({t_scipy / t_inc:.0f}x); results "
                                                    f"{'agree' if agree else 'DIFFER'}"))
        else:
            rows.append(("scipy csgraph recompute", "skipped (scipy not installed)" if updates else
                         "skipped (no update)"))
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
        reopen_ok = buf.epoch == epoch and np.array_equal(buf["dist"].read(), final)
        n_txns, n_records = log_records(buf)     # the definition mmsb info and mmsb verify use
        with phase("time travel") as ph:
            past = buf.at(e_initial)["dist"].read()
        travel_ok = np.array_equal(past, dist_initial)
        ok &= bool(reopen_ok and travel_ok)
        rows.append(("checkpoint + reopen", f"checkpoint {t_ckpt:.2f} s, reopen {t_open:.2f} s, state "
                                            f"{'identical' if reopen_ok else 'DIFFERS'}"))
        rows.append(("time travel", f"epoch {e_initial} rebuilt in {ph.seconds:.2f} s, "
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
                rows.append(("plot", _plot(plot, dist_initial, final, side, initial_sources, added, closed)))
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


def _compare(A, sources: list, got: np.ndarray, t_inc: float):
    try:
        import scipy.sparse as sp
        from scipy.sparse.csgraph import dijkstra
    except ImportError:
        return None
    n = A.shape[0]
    W = sp.csr_matrix((A.data, A.indices, A.indptr), shape=(n, n)).T.tocsr()
    t = time.perf_counter()
    ref = dijkstra(W, indices=sorted(set(sources)), min_only=True)
    t_scipy = time.perf_counter() - t
    return bool(np.allclose(got, ref, rtol=1e-12, atol=0)), t_scipy, t_inc


def _plot(path: str, before: np.ndarray, after: np.ndarray, side: int, initial: list, added: list,
          closed: list) -> str:
    """Three panels: the distance field before and after the update stream, and their difference, with the
    initial facilities (white dots), the new ones (red triangles) and the closed ones (black crosses) marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import TwoSlopeNorm
    except ImportError:
        return "skipped (matplotlib not installed)"
    cap = 3 * BUDGET
    b = np.minimum(before, cap).reshape(side, side)
    a = np.minimum(after, cap).reshape(side, side)
    diff = (np.minimum(after, 1e300) - np.minimum(before, 1e300)).reshape(side, side)
    span = min(float(np.max(np.abs(diff))), cap) or 1.0     # changes beyond 3x the budget saturate
    fig, axes = plt.subplots(1, 3, figsize=(16.5, 5.6), layout="constrained")
    panels = [(b, "before the update stream", "viridis", dict(vmin=0, vmax=cap), "minutes (capped at 3x budget)"),
              (a, f"after {len(added)} new and {len(closed)} closed facilities", "viridis", dict(vmin=0, vmax=cap),
               "minutes (capped at 3x budget)"),
              (diff, "change: after - before", "RdBu_r", dict(norm=TwoSlopeNorm(0.0, -span, span)),
               "minutes (blue: nearer, red: farther)")]

    def mark(ax, ids, **kw):
        if len(ids):
            r, c = np.divmod(np.asarray(ids), side)
            ax.scatter(c, r, clip_on=False, zorder=3, **kw)

    size = max(12.0, 3000.0 / side)
    for k, (ax, (img, title, cmap, scale, label)) in enumerate(zip(axes, panels)):
        im = ax.imshow(img, cmap=cmap, interpolation="nearest", **scale)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, shrink=0.85, pad=0.02, label=label)
        mark(ax, initial, s=size * 0.6, c="white", edgecolors="black", linewidths=0.5,
             label="facility" if k == 0 else None)
        if k > 0:
            mark(ax, added, s=size * 2, c="red", marker="^", edgecolors="white", linewidths=0.8,
                 label="new facility")
            mark(ax, closed, s=size * 4, c="black", marker="X", edgecolors="white", linewidths=0.8,
                 label="closed facility")
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), frameon=False, markerscale=1.5)
    fig.suptitle(f"travel time to the nearest facility on a {side}x{side} grid (budget {BUDGET:g} min)")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"wrote {path}"

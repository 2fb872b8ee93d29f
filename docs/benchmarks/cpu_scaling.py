"""Measure the figures of docs/benchmarks/cpu-scaling.md: thread scaling, SIMD levels, a competing process.

    python docs/benchmarks/cpu_scaling.py [--quick] [--json OUT.json] [--parts scaling,simd,load]

Every ratio is baseline time / mmsb time from this one process, the two timed alternately (best of several runs),
after checking that the results are equal. ``scaling``: SpMV (plus_times, min_plus; 1M rows, 10M nnz) at 1..N
threads against GraphBLAS at N threads and scipy, and the full (min, plus) closure build of a 1000x1000 grid from
10k sources, serial and parallel, against scipy's dijkstra. ``simd``: masked merge and scatter at every compiled
SIMD level. ``load``: each kernel ratio quiet and with one competing busy process (``while 1: pass``).
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
from scipy.sparse import csgraph

from mmsb import _kernels, _ops
from mmsb.bench import load
from mmsb.bench._common import best_of, pair
from mmsb.bench.closure import closure_build, grid
from mmsb.bench.spmv import random_graph


def machine() -> dict:
    info = {"cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "threads_cap": _kernels.THREADS,
            "simd": _kernels.SIMD, "simd_levels": _kernels.SIMD_LEVELS, "cgroup_cpus": _kernels._cgroup_cpus()}
    try:
        with open("/proc/loadavg") as fh:
            info["loadavg"] = fh.read().strip()
    except OSError:
        pass
    return info


def thread_counts() -> list[int]:
    cap = _kernels.default_threads()
    return sorted({t for t in (1, 2, 4, 8, 16, cap) if t <= cap})


def spmv_scaling(quick: bool, out: list) -> None:
    n, m = (100_000, 1_000_000) if quick else (1_000_000, 10_000_000)
    A = random_graph(n, m)
    indptr, indices, data = A.indptr.astype(np.int64), A.indices.astype(np.int64), A.data
    x = np.random.default_rng(4).random(n)
    y = np.empty(n)
    try:
        import graphblas as gb
        G, gx = gb.io.from_scipy_sparse(A), gb.Vector.from_dense(x)
    except ImportError:
        gb = None
    cap = _kernels.default_threads()
    for label, add, mul, zero in (("plus_times", _ops.OP_PLUS, _ops.OP_TIMES, 0.0),
                                  ("min_plus", _ops.OP_MIN, _ops.OP_PLUS, np.inf)):
        times = {}
        for t in thread_counts():
            _kernels.spmv.spmv(indptr, indices, data, x, y, add, mul, zero, None, t)
            times[t] = best_of(lambda: _kernels.spmv.spmv(indptr, indices, data, x, y, add, mul, zero, None, t), 7)
        ref = A @ x if label == "plus_times" else None
        if ref is not None:
            assert np.allclose(y, ref, rtol=1e-12, atol=1e-12)
        t_sc = best_of(lambda: A @ x, 5) if label == "plus_times" else None
        row = {"what": f"spmv {label} {n:,} rows {A.nnz:,} nnz", "mmsb_s": times,
               "ratio_max_vs_2": times[2] / times[cap] if 2 in times else None, "scipy_s": t_sc}
        if gb is not None:
            gb.ss.config["nthreads"] = cap
            sr = getattr(gb.semiring, label)
            got = G.mxv(gx, sr).new().to_dense(fill_value=zero)
            assert np.array_equal(y, got) if label == "min_plus" else np.allclose(y, got, rtol=1e-12, atol=1e-12)
            t_m, t_g = pair(lambda: _kernels.spmv.spmv(indptr, indices, data, x, y, add, mul, zero, None, cap),
                            lambda: G.mxv(gx, sr).new(), 7)
            row.update({"graphblas_threads": cap, "graphblas_s": t_g, "mmsb_all_s": t_m, "ratio_vs_graphblas": t_g / t_m})
        out.append(row)
        print(json.dumps(row), flush=True)


def spmv_prefetch(quick: bool, out: list) -> None:
    """SpMV on all threads at several prefetch distances (spmv.set_gather_ahead), against GraphBLAS alternately."""
    n, m = (100_000, 1_000_000) if quick else (1_000_000, 10_000_000)
    A = random_graph(n, m)
    indptr, indices, data = A.indptr.astype(np.int64), A.indices.astype(np.int64), A.data
    x = np.random.default_rng(4).random(n)
    y = np.empty(n)
    try:
        import graphblas as gb
    except ImportError:
        gb = None
    cap = _kernels.default_threads()
    if gb is not None:
        G, gx = gb.io.from_scipy_sparse(A), gb.Vector.from_dense(x)
        gb.ss.config["nthreads"] = cap
    sp = _kernels.spmv
    default = sp.set_gather_ahead(0)
    for label, add, mul, zero in (("plus_times", _ops.OP_PLUS, _ops.OP_TIMES, 0.0),
                                  ("min_plus", _ops.OP_MIN, _ops.OP_PLUS, np.inf)):
        sr = getattr(gb.semiring, label) if gb is not None else None
        for ahead in (0, 8, 24, 64):
            sp.set_gather_ahead(ahead)
            row = {"what": f"spmv {label} prefetch {ahead}"}
            for t in sorted({1, 2, cap}):
                if gb is None:
                    row[t] = (best_of(lambda: sp.spmv(indptr, indices, data, x, y, add, mul, zero, None, t), 7),)
                    continue
                t_m, t_g = pair(lambda: sp.spmv(indptr, indices, data, x, y, add, mul, zero, None, t),
                                lambda: G.mxv(gx, sr).new(), 7)
                row[t] = (t_m, t_g / t_m)
            out.append(row)
            print(json.dumps(row), flush=True)
    sp.set_gather_ahead(default)


def closure_scaling(quick: bool, out: list) -> None:
    side, nsrc = (300, 1000) if quick else (1000, 10_000)
    W = grid(side)
    src = np.sort(np.random.default_rng(12).permutation(side * side)[:nsrc]).astype(np.int64)
    build = closure_build(W, src)

    ref = csgraph.dijkstra(W, directed=True, indices=src, min_only=True)
    times = {}
    for t in thread_counts():
        assert np.array_equal(build(t), ref), t
    t_d = float("inf")
    for t in thread_counts():
        t_m, t_b = pair(lambda: build(t), lambda: csgraph.dijkstra(W, directed=True, indices=src, min_only=True), 3)
        times[t] = t_m
        t_d = min(t_d, t_b)
    row = {"what": f"full closure build {side}x{side} grid, {nsrc:,} sources", "mmsb_s": times, "dijkstra_s": t_d,
           "ratio_vs_dijkstra": {t: t_d / v for t, v in times.items()}}
    out.append(row)
    print(json.dumps(row), flush=True)


def simd_levels(quick: bool, out: list) -> None:
    page_n, upd_n = (1_000_000, 100_000) if quick else (10_000_000, 1_000_000)
    rng = np.random.default_rng(42)
    base = rng.random(page_n)
    index = rng.integers(0, page_n, upd_n, dtype=np.int64)
    values = rng.random(upd_n)
    mask = rng.random(page_n) < 0.5
    dense = rng.random(page_n)
    levels = _kernels.compiled_levels()
    sse2 = levels["sse2"].merge
    for name, fn in (("masked_merge min", lambda m, pg: m.masked_merge(pg, mask, dense, _ops.OP_MIN)),
                     ("scatter plus", lambda m, pg: m.scatter(pg, index, values, _ops.OP_PLUS, False)),
                     ("scatter min", lambda m, pg: m.scatter(pg, index, values, _ops.OP_MIN, False))):
        for level, ns in levels.items():
            if level == "sse2":
                continue
            a, b = base.copy(), base.copy()
            fn(ns.merge, a)
            fn(sse2, b)
            assert a.tobytes() == b.tobytes()
            pg = base.copy()
            t_l, t_s = pair(lambda: fn(ns.merge, pg), lambda: fn(sse2, pg), 9)
            row = {"what": f"{name} {level} vs sse2", "level_s": t_l, "sse2_s": t_s, "ratio": t_s / t_l}
            out.append(row)
            print(json.dumps(row), flush=True)


def under_load(quick: bool, out: list, cycles: int = 2) -> None:
    """Each kernel ratio quiet and beside one busy process (``mmsb bench --only load`` without its pinning)."""
    _kernels.set_threads(None, adapt=True)
    quiet, loaded = load.quiet_and_loaded(lambda: load.kernel_ratios(quick), cycles)
    for k in quiet:
        row = {"what": k, "threads_cap": _kernels.THREADS, "quiet_ratio": quiet[k], "loaded_ratio": loaded[k],
               "loaded_vs_quiet": loaded[k] / quiet[k]}
        out.append(row)
        print(json.dumps(row), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--parts", default="scaling,simd,load")
    args = ap.parse_args()
    parts = args.parts.split(",")
    out: list = [{"machine": machine()}]
    print(json.dumps(out[0]), flush=True)
    if "simd" in parts:
        simd_levels(args.quick, out)
    if "scaling" in parts:
        _kernels.set_threads(None, adapt=False)
        spmv_scaling(args.quick, out)
        closure_scaling(args.quick, out)
        _kernels.set_threads(None, adapt=True)
    if "prefetch" in parts:
        spmv_prefetch(args.quick, out)
    if "load" in parts:
        under_load(args.quick, out)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1, default=str)


if __name__ == "__main__":
    main()

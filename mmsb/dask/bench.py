"""Benchmarks of distributed propagation: per-wave overhead, closure scaling over workers, sharded pages.

Run: ``python -m mmsb.dask.bench [--n 4000000] [--parts 4] [--workers 1,2] [--waves 20]``, or for sharded pages
``python -m mmsb.dask.bench --grid [--side 4000] [--sources 100000] [--more 1000] [--workers 1,16]`` (3. below).

1. *Per-wave overhead*: a DAG of ``--chain`` link pages in ``--components`` components; each commit writes 10
   entries of one root; median milliseconds per commit in process and on a LocalCluster (2 workers).
2. *Closure scaling*: a min_plus graph of ``--n`` vertices split in ``--parts`` independent components (a
   closure page each); median seconds of a wave that improves the sources of every component (each reaching most
   of its component), in process and on LocalClusters of each ``--workers`` count (one thread per worker).
   The first wave on a cluster (shipping the pages and matrices) is reported separately.
3. *Sharded pages* (``--grid``, issue 17): one connected ``--side`` x ``--side`` grid (4-neighbour, directed both
   ways, weights uniform in [1, 10)), a min_plus closure from ``--sources`` random sources, with the source page,
   the distance page and the weight matrix all sharded (``shards`` = workers, or ``--shards``). For each
   LocalCluster size in ``--workers`` and in process: the full closure (the rule added over written sources), an
   incremental wave (``--more`` new sources), the per-wave overhead of a one-entry change (a source entry that
   changes the source page and nothing downstream, and a one-entry write to a sharded page without rules), the
   driver's RSS growth while the pages and the matrix are created (a store with ``durability="none"``, so the
   log holds the user data on disk, not in the driver), bytes and messages exchanged between workers per wave
   against the cut, supersteps and per-superstep latency. Prints one JSON object per run and a summary against
   the issue's targets.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Optional

import numpy as np


def _overhead_dag(buf: Any, components: int, chain: int, size: int, seed: int = 0) -> list[str]:
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    roots = []
    for c in range(components):
        prev = f"root{c}"
        buf.create_page(prev, size)
        roots.append(prev)
        for k in range(chain):
            name = f"c{c}_{k}"
            buf.create_page(name, size)
            A = sp.random(size, size, density=4 / size, random_state=int(rng.integers(1 << 30)), format="csr")
            buf.link(name, prev, A)
            prev = name
    return roots


def bench_overhead(client: Any, components: int = 2, chain: int = 4, size: int = 10000, commits: int = 50,
                   seed: int = 0) -> dict:
    import mmsb

    out = {}
    for label, cluster in (("in_process", None), ("cluster", client)):
        with mmsb.open(None, cluster=cluster) as buf:
            roots = _overhead_dag(buf, components, chain, size, seed)
            rng = np.random.default_rng(seed + 1)
            times = []
            for i in range(commits + 3):
                idx = rng.choice(size, 10, replace=False)
                t0 = time.perf_counter()
                buf.write(roots[i % len(roots)], rng.uniform(0, 1, 10), index=idx, accumulate=True)
                if i >= 3:  # the first commits ship the pages
                    times.append(time.perf_counter() - t0)
            out[label] = {"median_ms": 1e3 * statistics.median(times), "p90_ms": 1e3 * float(np.quantile(times, 0.9))}
            if cluster is not None:
                st = buf.stats()["cluster"]
                out[label]["tasks_per_wave"] = st["tasks"] / max(1, buf.stats()["propagation"]["waves"])
    out["overhead_ms"] = out["cluster"]["median_ms"] - out["in_process"]["median_ms"]
    out["setup"] = {"components": components, "chain": chain, "size": size, "commits": commits}
    return out


def _closure_graph(n: int, parts: int, degree: int, seed: int) -> list:
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    m = n // parts
    mats = []
    for _ in range(parts):
        e = m * degree
        u, v = rng.integers(0, m, e), rng.integers(0, m, e)
        W = sp.csr_matrix((rng.uniform(1, 10, e), (v, u)), shape=(m, m))   # W.T of edges u -> v
        mats.append(W)
    return mats


def bench_closure(mats: list, client: Optional[Any], waves: int, seed: int = 0) -> dict:
    import mmsb

    m = mats[0].shape[0]
    rng = np.random.default_rng(seed)
    with mmsb.open(None, cluster=client) as buf:
        t0 = time.perf_counter()
        for i, W in enumerate(mats):
            buf.create_page(f"s{i}", m, semiring="min_plus")
            buf.create_page(f"d{i}", m, semiring="min_plus")
            buf.closure(f"d{i}", f"s{i}", W)
        build = time.perf_counter() - t0
        times = []
        level = 1000.0
        for w in range(waves + 1):
            level /= 2                               # each wave improves every source: a wide re-relaxation
            t0 = time.perf_counter()
            with buf.batch():
                for i in range(len(mats)):
                    buf.write(f"s{i}", np.array([level]), index=rng.integers(0, m, 1), accumulate=True)
            dt = time.perf_counter() - t0
            if w == 0:
                first = dt
            else:
                times.append(dt)
        extra = {}
        if client is not None:
            st = buf.stats()["cluster"]
            extra = {"worker_compute_s": st["worker_seconds"], "wait_s": st["cluster_seconds"],
                     "tasks": st["tasks"]}
        check = float(sum(np.isfinite(buf[f"d{i}"].read()).sum() for i in range(len(mats))))
        return {"build_s": build, "first_wave_s": first, "median_wave_s": statistics.median(times),
                "reached": check, **extra}


def grid_wt(side: int, seed: int = 0) -> Any:
    """The transpose W.T (CSR) of a ``side`` x ``side`` 4-neighbour grid, both directions, weights in [1, 10)."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    ids = np.arange(side * side, dtype=np.int64).reshape(side, side)
    u = np.concatenate([ids[:, :-1].ravel(), ids[:, 1:].ravel(), ids[:-1, :].ravel(), ids[1:, :].ravel()])
    v = np.concatenate([ids[:, 1:].ravel(), ids[:, :-1].ravel(), ids[1:, :].ravel(), ids[:-1, :].ravel()])
    w = rng.uniform(1.0, 10.0, u.size)
    n = side * side
    Wt = sp.csr_matrix((w, (v, u)), shape=(n, n))           # row v lists the edges u -> v
    Wt.sort_indices()
    return Wt


def _rss() -> int:
    """This process's resident set size in bytes (Linux), after handing freed heap back to the OS."""
    from mmsb.memory import _trim_heap

    _trim_heap()
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def bench_sharded_grid(Wt: Any, sources: np.ndarray, more: np.ndarray, client: Optional[Any], shards: int,
                       overhead_writes: int, store: Optional[str]) -> dict:
    """One run of the sharded-grid workload (see the module doc) in process (``client`` None) or on a cluster."""
    import mmsb

    n = Wt.shape[0]
    out: dict = {"n": n, "edges": int(Wt.nnz), "shards": shards}
    kw = {"shards": shards} if client is not None else {}
    path = store if client is not None else None

    def open_buf() -> Any:
        if path:
            return mmsb.open(path, mode="w", cluster=client, durability="none", auto_checkpoint=False)
        return mmsb.open(None, cluster=client)

    with open_buf() as warm:                  # the same code paths once, small: imports and pools are not growth
        m = min(n, 64)
        warm.create_page("s", m, semiring="min_plus", **({"shards": min(shards, m)} if kw else {}))
        warm.create_page("d", m, semiring="min_plus", **({"shards": min(shards, m)} if kw else {}))
        warm.create_matrix("W", (m, m), semiring="min_plus", data=Wt[:m, :m],
                           **({"shards": min(shards, m)} if kw else {}))
        warm.closure("d", "s", "W")
        warm.write("s", np.zeros(1), index=[0])
    rss0 = _rss()
    t0 = time.perf_counter()
    buf = open_buf()
    try:
        src = buf.create_page("src", n, semiring="min_plus", **kw)
        dist = buf.create_page("dist", n, semiring="min_plus", **kw)
        buf.create_matrix("W", (n, n), semiring="min_plus", data=Wt, **kw)
        out["create_s"] = time.perf_counter() - t0
        rss1 = _rss()
        made = 2 * n * 8 + Wt.nnz * 16 + (n + 1) * 8           # two pages + the matrix (entries and row pointers)
        out["driver_rss_growth_bytes"] = rss1 - rss0
        out["driver_rss_growth_pct"] = 100.0 * (rss1 - rss0) / made
        out["pages_and_matrix_bytes"] = made
        t0 = time.perf_counter()
        buf.closure(dist, src, "W")                             # the rule (matrix rows indexed on the workers)
        out["rule_install_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        buf.write(src, np.zeros(sources.size), index=np.sort(sources))    # the whole closure, from nothing
        out["full_closure_s"] = time.perf_counter() - t0
        if client is not None:
            out["full_closure_wave"] = _wave_figures(buf)
        t0 = time.perf_counter()
        buf.write(src, np.zeros(more.size), index=np.sort(more), accumulate=True)
        out["incremental_s"] = time.perf_counter() - t0
        if client is not None:
            out["incremental_wave"] = _wave_figures(buf)
        check = np.random.default_rng(1).choice(n, min(n, 2000), replace=False)
        out["check_values"] = dist.read(index=check)
        # one-entry changes: src[v] set (min) to just above dist[v]: the source page changes, nothing downstream
        rng = np.random.default_rng(2)
        vs = rng.choice(n, overhead_writes, replace=False)
        dv = dist.read(index=vs)
        times = []
        for k, v in enumerate(vs):
            val = np.array([dv[k] + 1.0 + k * 1e-3])
            t0 = time.perf_counter()
            buf.write(src, val, index=[int(v)], accumulate=True)
            times.append(time.perf_counter() - t0)
        out["one_entry_closure_ms"] = {"median": 1e3 * statistics.median(times),
                                       "p90": 1e3 * float(np.quantile(times, 0.9))}
        if client is not None:
            out["one_entry_wave"] = _wave_figures(buf)
        plain = buf.create_page("plain", n, **kw)
        times = []
        for k, v in enumerate(vs):
            t0 = time.perf_counter()
            buf.write(plain, np.array([float(k + 1)]), index=[int(v)])
            times.append(time.perf_counter() - t0)
        out["one_entry_no_rule_ms"] = {"median": 1e3 * statistics.median(times),
                                       "p90": 1e3 * float(np.quantile(times, 0.9))}
        if client is not None:
            out["data_plane_ms"] = _ping_figures(buf)
            st = mmsb.dask.shard_stats(buf, "W")
            out["cut_entries"] = st["cut"]
            out["cut_fraction"] = st["cut_fraction"]
            out["driver_resident_bytes"] = buf.stats()["memory"]["resident_bytes"]
    finally:
        buf.close()
    return out


def _ping_figures(buf: Any, rounds: int = 200) -> dict:
    """Round trips over the shard actors' data plane (median ms): one actor, and every actor at once (the
    driver's fan-out: all requests sent, then all replies read), as a superstep pays them."""
    mgr = buf._cluster.engine.shards
    one = min(mgr.conns)
    out = {}
    for label, calls in (("one_worker", {one: ("ping", ())}), ("all_workers", {w: ("ping", ()) for w in mgr.conns})):
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            mgr._call(calls)
            times.append(time.perf_counter() - t0)
        out[label] = 1e3 * statistics.median(times)
    return out


def _wave_figures(buf: Any) -> dict:
    """The last sharded wave: supersteps, worker-to-worker messages and bytes, and each superstep's latency."""
    w = buf.stats()["cluster"]["shards"].get("last_wave") or {}
    steps = w.get("steps", [])
    return {"supersteps": w.get("supersteps", 0), "seconds": w.get("seconds", 0.0),
            "messages": sum(s["messages"] for s in steps), "bytes": sum(s["bytes"] for s in steps),
            "step_ms": [round(1e3 * s["seconds"], 3) for s in steps],
            "step_bytes": [s["bytes"] for s in steps], "step_workers": [s["workers"] for s in steps]}


def main_grid(args: Any) -> dict:
    import tempfile

    import distributed

    import mmsb  # noqa: F401
    import mmsb.dask  # noqa: F401

    side = args.side
    t0 = time.perf_counter()
    Wt = grid_wt(side, args.seed)
    n = side * side
    rng = np.random.default_rng(args.seed + 1)
    picks = rng.choice(n, args.sources + args.more, replace=False)
    sources, more = picks[:args.sources], picks[args.sources:]
    res: dict = {"workload": {"side": side, "n": n, "edges": int(Wt.nnz), "sources": int(args.sources),
                              "more": int(args.more), "build_graph_s": time.perf_counter() - t0},
                 "cpus": os.cpu_count(), "kernels": mmsb.kernels}
    print(json.dumps(res), flush=True)
    runs: dict = {}
    ref = None
    if not args.skip_in_process:
        runs["in_process"] = bench_sharded_grid(Wt, sources, more, None, 1, args.overhead_writes, None)
        ref = runs["in_process"].pop("check_values")
        print(json.dumps({"in_process": runs["in_process"]}, default=float), flush=True)
    for nw in [int(x) for x in args.workers.split(",") if x]:
        with tempfile.TemporaryDirectory(prefix="mmsb-grid-") as tmp, \
                distributed.LocalCluster(n_workers=nw, threads_per_worker=1, processes=True, host="127.0.0.1",
                                         dashboard_address=None, memory_limit=0) as lc, \
                distributed.Client(lc) as c:
            r = bench_sharded_grid(Wt, sources, more, c, args.shards or nw, args.overhead_writes,
                                   os.path.join(tmp, "store"))
        vals = r.pop("check_values")
        if ref is not None:
            r["equal_to_in_process"] = bool(np.array_equal(vals, ref))
        runs[f"workers_{nw}"] = r
        print(json.dumps({f"workers_{nw}": r}, default=float), flush=True)
    res["runs"] = runs
    res["summary"] = _grid_summary(runs)
    return res


def _grid_summary(runs: dict) -> dict:
    """The issue's figures from the runs (targets in brackets)."""
    sizes = sorted(int(k.split("_")[1]) for k in runs if k.startswith("workers_"))
    out: dict = {}
    if not sizes:
        return out
    big = runs[f"workers_{sizes[-1]}"]
    if len(sizes) > 1:
        one = runs[f"workers_{sizes[0]}"]
        out[f"full closure, {sizes[-1]} workers vs {sizes[0]} worker(s) [>= 8x at 16 vs 1]"] = \
            one["full_closure_s"] / big["full_closure_s"]
    if "in_process" in runs:
        out[f"full closure, {sizes[-1]} workers vs in process [>= 2x]"] = \
            runs["in_process"]["full_closure_s"] / big["full_closure_s"]
    out[f"incremental wave (+more sources) vs full closure, {sizes[-1]} workers [>= 20x]"] = \
        big["full_closure_s"] / big["incremental_s"]
    out[f"one-entry change, median ms, {sizes[-1]} workers (closure downstream) [<= 3 ms]"] = \
        big["one_entry_closure_ms"]["median"]
    out[f"one-entry change, median ms, {sizes[-1]} workers (no rule)"] = big["one_entry_no_rule_ms"]["median"]
    dp = big.get("data_plane_ms", {})
    out[f"data plane round trip, median ms: one worker / all {sizes[-1]} at once"] = \
        (round(dp.get("one_worker", 0.0), 4), round(dp.get("all_workers", 0.0), 4))
    out["driver RSS growth while pages and matrix are created, % of their bytes [<= 5 %]"] = \
        big["driver_rss_growth_pct"]
    fw = big.get("full_closure_wave", {})
    iw = big.get("incremental_wave", {})
    cut = big.get("cut_entries", 0)
    out["bytes between workers: full closure wave"] = fw.get("bytes")
    out["bytes between workers: incremental wave"] = iw.get("bytes")
    out["cut entries (cut fraction)"] = f"{cut} ({big.get('cut_fraction', 0):.5f})"
    out["bytes per cut entry: full closure wave"] = fw.get("bytes", 0) / cut if cut else None
    out["supersteps: full / incremental / one-entry"] = (fw.get("supersteps"), iw.get("supersteps"),
                                                         big.get("one_entry_wave", {}).get("supersteps"))
    eq = [runs[f"workers_{k}"].get("equal_to_in_process") for k in sizes]
    out["results equal to in process, bit for bit (per cluster run)"] = eq
    out["superstep ms: full closure wave"] = fw.get("step_ms")
    out["superstep ms: incremental wave"] = iw.get("step_ms")
    for k, v in out.items():
        print(f"{k}: {v:.3g}" if isinstance(v, float) else f"{k}: {v}")
    return out


def main(argv: Optional[list] = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m mmsb.dask.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=4_000_000, help="closure graph vertices (all components)")
    p.add_argument("--parts", type=int, default=4, help="independent closure components")
    p.add_argument("--degree", type=int, default=4, help="edges per vertex")
    p.add_argument("--waves", type=int, default=5, help="timed closure waves")
    p.add_argument("--workers", default="1,2", help="LocalCluster sizes for the closure scaling")
    p.add_argument("--commits", type=int, default=50, help="commits for the overhead benchmark")
    p.add_argument("--size", type=int, default=10000, help="page size for the overhead benchmark")
    p.add_argument("--skip-overhead", action="store_true")
    p.add_argument("--skip-closure", action="store_true")
    p.add_argument("--json", default=None, help="write the figures to this file")
    p.add_argument("--grid", action="store_true", help="the sharded-pages benchmark (one connected grid)")
    p.add_argument("--side", type=int, default=4000, help="grid side (--grid): side*side vertices")
    p.add_argument("--sources", type=int, default=100_000, help="closure sources (--grid)")
    p.add_argument("--more", type=int, default=1000, help="sources added by the incremental wave (--grid)")
    p.add_argument("--shards", type=int, default=0, help="blocks per page (--grid; default: one per worker)")
    p.add_argument("--overhead-writes", type=int, default=50, help="one-entry commits timed (--grid)")
    p.add_argument("--skip-in-process", action="store_true", help="(--grid) no in-process run")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.grid:
        res = main_grid(args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1, default=float)
        return res
    import distributed

    import mmsb

    res: dict = {"kernels": mmsb.kernels, "cpus": os.cpu_count()}

    def cluster(nw: int) -> Any:
        return distributed.LocalCluster(n_workers=nw, threads_per_worker=1, processes=True, host="127.0.0.1",
                                        dashboard_address=None)

    if not args.skip_overhead:
        with cluster(2) as lc, distributed.Client(lc) as c:
            res["overhead"] = bench_overhead(c, commits=args.commits, size=args.size)
        print(json.dumps({"overhead": res["overhead"]}, indent=1), flush=True)
    if not args.skip_closure:
        mats = _closure_graph(args.n, args.parts, args.degree, 0)
        res["closure"] = {"n": args.n, "parts": args.parts, "degree": args.degree,
                          "in_process": bench_closure(mats, None, args.waves)}
        print(json.dumps({"in_process": res["closure"]["in_process"]}), flush=True)
        for nw in [int(x) for x in args.workers.split(",") if x]:
            with cluster(nw) as lc, distributed.Client(lc) as c:
                res["closure"][f"workers_{nw}"] = bench_closure(mats, c, args.waves)
            print(json.dumps({f"workers_{nw}": res["closure"][f"workers_{nw}"]}), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit(0)

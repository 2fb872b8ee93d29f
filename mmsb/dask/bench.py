"""Benchmarks of distributed propagation: per-wave overhead, and closure scaling over workers.

Run: ``python -m mmsb.dask.bench [--n 4000000] [--parts 4] [--workers 1,2] [--waves 20]``.

1. *Per-wave overhead*: a DAG of ``--chain`` link pages in ``--components`` components; each commit writes 10
   entries of one root; median milliseconds per commit in process and on a LocalCluster (2 workers).
2. *Closure scaling*: a min_plus graph of ``--n`` vertices split in ``--parts`` independent components (a
   closure page each); median seconds of a wave that improves the sources of every component (each reaching most
   of its component), in process and on LocalClusters of each ``--workers`` count (one thread per worker).
   The first wave on a cluster (shipping the pages and matrices) is reported separately.
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
    args = p.parse_args(argv)
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

"""GPU benchmarks: ``python -m mmsb.gpu.bench [--out DIR] [--quick]``; writes gpu.json and gpu.md (see
:func:`write_report`).

Every figure is measured side by side in one run: the device copy bandwidth (the ceiling for the dense merge),
cuSPARSE (cupyx.scipy.sparse) plus_times SpMV on the same matrix, eager launches against CUDA-graph replay.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Callable

import numpy as np


def _time(cp: Any, fn: Callable, reps: int = 20, warm: int = 3) -> float:
    """Median seconds of ``fn`` on the device (CUDA events)."""
    for _ in range(warm):
        fn()
    cp.cuda.Device().synchronize()
    out = []
    for _ in range(reps):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(cp.cuda.get_elapsed_time(a, b) / 1e3)
    return float(np.median(out))


def bench_copy_and_merge(cp: Any, K: Any, n: int) -> dict:
    from mmsb import _ops

    res: dict = {}
    for dt in ("float64", "float32"):
        src = cp.random.random(n).astype(dt)
        dst = cp.empty_like(src)
        t_memcpy = _time(cp, lambda: dst.data.copy_from_device(src.data, src.nbytes))
        t_kernel = _time(cp, lambda: cp.copyto(dst, src))
        copy_bw = 2 * src.nbytes / min(t_memcpy, t_kernel)
        page = cp.random.random(n).astype(dt)
        vals = cp.random.random(n).astype(dt)
        mask = (cp.random.random(n) < 0.5).astype(cp.uint8)
        ops = K.Ops.for_codes(dt, _ops.OP_PLUS, _ops.OP_TIMES, 0.0)
        K.masked_merge(ops, page, mask, vals)
        t_merge = _time(cp, lambda: K.masked_merge(ops, page, mask, vals))
        it = np.dtype(dt).itemsize
        merge_bytes = n * (3 * it + 1)          # read page, values, mask; write page
        merge_bw = merge_bytes / t_merge
        # numpy-style baseline on the device: cupy.where
        t_where = _time(cp, lambda: cp.copyto(page, cp.where(mask.view(cp.bool_), page + vals, page)))
        res[dt] = {"n": n, "copy_GBps": copy_bw / 1e9, "memcpy_s": t_memcpy, "copy_kernel_s": t_kernel,
                   "merge_s": t_merge, "merge_GBps": merge_bw / 1e9, "merge_vs_copy": merge_bw / copy_bw,
                   "cupy_where_s": t_where}
    return res


def bench_scatter(cp: Any, K: Any, n_upd: int, n_page: int) -> dict:
    from mmsb import _ops

    res: dict = {}
    rs = cp.random.RandomState(1)
    idx = rs.randint(0, n_page, n_upd, dtype=cp.int64)
    sidx = cp.sort(idx)
    for dt, code in (("float64", _ops.OP_PLUS), ("float32", _ops.OP_PLUS), ("int64", _ops.OP_PLUS),
                     ("int32", _ops.OP_MIN), ("float64", _ops.OP_MIN), ("int8", _ops.OP_MAX)):
        page = cp.zeros(n_page, dtype=dt)
        vals = (rs.random_sample(n_upd) * 100).astype(dt)
        ops = K.Ops.for_codes(dt, code, _ops.OP_TIMES, 0)
        t = _time(cp, lambda: K.scatter(ops, page, idx, vals), reps=10)
        ts = _time(cp, lambda: K.scatter(ops, page, sidx, vals, is_sorted=True), reps=10)
        # baseline: cupyx.scatter_add (atomics) where it applies
        key = f"{dt}_{_ops.NAMES[code]}"
        res[key] = {"updates": n_upd, "page": n_page, "unsorted_s": t, "unsorted_Gupd_s": n_upd / t / 1e9,
                    "sorted_s": ts, "sorted_Gupd_s": n_upd / ts / 1e9}
        if code == _ops.OP_PLUS and dt in ("float64", "float32"):
            import cupyx

            res[key]["cupyx_scatter_add_s"] = _time(cp, lambda: cupyx.scatter_add(page, idx, vals), reps=10)
    return res


def bench_spmv(cp: Any, K: Any, rows: int, per_row: int) -> dict:
    import cupyx.scipy.sparse as csp

    from mmsb import semirings
    from mmsb.rules import CSR

    rng = np.random.default_rng(0)
    nnz = rows * per_row
    indptr = np.arange(0, nnz + 1, per_row, dtype=np.int64)
    indices = rng.integers(0, rows, nnz).astype(np.int64)
    indices.reshape(rows, per_row).sort(axis=1)
    data = rng.random(nnz) + 0.5
    A = CSR((rows, rows), indptr, indices, data)
    dA = K.DeviceCSR(A, cp.cuda.Device().id, np.dtype("float64"))
    x = cp.asarray(rng.random(rows) + 0.1)
    y = cp.empty(rows)
    M = csp.csr_matrix((cp.asarray(data), cp.asarray(indices.astype(np.int32)), cp.asarray(indptr.astype(np.int32))),
                       shape=(rows, rows))
    t_before = _time(cp, lambda: M @ x)
    out: dict = {"rows": rows, "nnz": nnz, "default_group": dA.group}
    for name in ("plus_times", "min_plus"):
        sr = semirings.get(name)
        ops = K.ops_for(sr, np.dtype("float64"))
        times = {}
        for g in (1, 2, 4, 8, 16, 32):
            times[g] = _time(cp, lambda: K.spmv(ops, dA, x, y, group=g))
        out[name] = {"default_s": times[dA.group], "by_group_s": times, "best_s": min(times.values())}
    t_after = _time(cp, lambda: M @ x)
    t_cusparse = min(t_before, t_after)          # the faster of cuSPARSE's two runs (before and after mmsb's)
    out["cusparse_plus_times_s"] = t_cusparse
    out["cusparse_runs_s"] = [t_before, t_after]
    for name in ("plus_times", "min_plus"):
        r = out[name]
        r["vs_cusparse_default"] = t_cusparse / r["default_s"]
        r["vs_cusparse_best"] = t_cusparse / r["best_s"]
    return out


def bench_graph(cp: Any, pages: int, n: int) -> dict:
    import scipy.sparse as sp

    import mmsb
    import mmsb.gpu as g

    T = sp.diags([np.full(n - 1, 0.25), np.full(n, 0.5), np.full(n - 1, 0.25)], [-1, 0, 1], format="csr")
    buf = mmsb.open(None, propagation="deferred", device="cuda:0")
    prev = buf.create_page("p0", n, "float64")
    for i in range(1, pages):
        p = buf.create_page(f"p{i}", n, "float64")
        buf.link(p, prev, T)
        prev = p
    w = g.GraphWave(buf)
    g.config["cuda_graphs"] = False
    w.run()
    t_eager = _time(cp, w.run, reps=30)
    g.config["cuda_graphs"] = True
    w.run()
    t_graph = _time(cp, w.run, reps=30)
    buf.close()
    return {"pages": pages, "page_size": n, "kernels_per_wave": pages - 1, "eager_s": t_eager, "graph_s": t_graph,
            "speedup": t_eager / t_graph, "captures": w.captures}


def bench_nccl(cp: Any, nbytes: int) -> dict:
    from mmsb.gpu import multi

    ndev = cp.cuda.runtime.getDeviceCount()
    if ndev < 2:
        return {"skipped": f"{ndev} device(s)"}
    arrays = []
    for d in range(ndev):
        with cp.cuda.Device(d):
            arrays.append(cp.ones(nbytes // 4, dtype=cp.float32))
    n = multi.nccl()
    multi.allreduce_arrays(arrays, n.NCCL_SUM)
    ts = []
    for _ in range(10):
        t0 = time.perf_counter()
        multi.allreduce_arrays(arrays, n.NCCL_SUM)
        ts.append(time.perf_counter() - t0)
    t = float(np.median(ts))
    algbw = nbytes / t
    return {"devices": ndev, "bytes": nbytes, "s": t, "algbw_GBps": algbw / 1e9,
            "busbw_GBps": algbw * 2 * (ndev - 1) / ndev / 1e9}


def main(argv: Any = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    import cupy as cp

    from mmsb.gpu import _runtime as rt
    from mmsb.gpu import kernels as K

    rt.cupy()
    q = a.quick
    res: dict = {"device": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(),
                 "cupy": cp.__version__, "command": "python -m mmsb.gpu.bench --out $OUT"}
    steps = [("merge", lambda: bench_copy_and_merge(cp, K, (1 << 22) if q else (1 << 28))),
             ("scatter", lambda: bench_scatter(cp, K, (1 << 20) if q else (1 << 24), (1 << 20) if q else (1 << 24))),
             ("spmv", lambda: bench_spmv(cp, K, (1 << 16) if q else (1 << 22), 16)),
             ("graph", lambda: bench_graph(cp, 100, 4096)),
             ("nccl", lambda: bench_nccl(cp, (1 << 24) if q else (1 << 30)))]
    for name, fn in steps:
        t0 = time.perf_counter()
        try:
            res[name] = fn()
        except Exception as exc:  # report, keep going
            res[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(name, f"{time.perf_counter() - t0:.1f}s", json.dumps(res[name], default=str), flush=True)
        cp.get_default_memory_pool().free_all_blocks()
        for p in rt._pools.values():
            p.free_all_blocks()
    paths = write_report(res, a.out)
    print("wrote", ", ".join(paths), flush=True)
    return res


def write_report(res: dict, out_dir: str) -> list[str]:
    """Write ``gpu.json`` (every figure) and ``gpu.md`` (the tables of :func:`render_markdown`) into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "gpu.json"), os.path.join(out_dir, "gpu.md")]
    with open(paths[0], "w") as f:
        json.dump(res, f, indent=1, default=str)
    with open(paths[1], "w") as f:
        f.write(render_markdown(res))
    return paths


def _num(v: Any, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else "–"


def _pct(v: Any) -> str:
    return f"**{v * 100:.0f} %**" if isinstance(v, (int, float)) else "–"


def _failed(part: Any) -> str:
    if not isinstance(part, dict):
        return "not run"
    if "error" in part:
        return f"failed: {part['error']}"
    if "skipped" in part:
        return f"skipped: {part['skipped']}"
    return ""


def render_markdown(res: dict) -> str:
    """The results of :func:`main` as Markdown tables (one section per benchmark; a failed one says why)."""
    lines = [f"# GPU benchmarks ({res.get('device', 'unknown device')})", "",
             f"CuPy {res.get('cupy', '?')}; command: `{res.get('command', 'python -m mmsb.gpu.bench')}`. Times are "
             f"medians of CUDA-event-timed repetitions after warm-up; every figure comes from this one run.", ""]

    def section(title: str, key: str) -> Any:
        lines.extend([f"## {title}", ""])
        part = res.get(key)
        why = _failed(part)
        if why:
            lines.extend([why, ""])
            return None
        return part

    merge = section("Dense masked merge vs device copy bandwidth (target ≥ 80 %)", "merge")
    if merge is not None:
        lines += ["| dtype | elements | copy GB/s | merge GB/s | merge / copy | merge ms | `cupy.where` ms |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for dt, r in merge.items():
            lines.append(f"| {dt} | {r.get('n', '–')} | {_num(r.get('copy_GBps'), '.0f')} | "
                         f"{_num(r.get('merge_GBps'), '.0f')} | {_pct(r.get('merge_vs_copy'))} | "
                         f"{_num(r.get('merge_s', 0) * 1e3, '.3f')} | {_num(r.get('cupy_where_s', 0) * 1e3, '.3f')} |")
        lines.append("")
    scatter = section("Sparse scatter-⊕ (target ≥ 10 G updates/s)", "scatter")
    if scatter is not None:
        lines += ["| dtype / ⊕ | updates | unsorted G upd/s | sorted G upd/s | mmsb unsorted ms | "
                  "cupyx.scatter_add ms |", "| --- | --- | --- | --- | --- | --- |"]
        for key, r in scatter.items():
            cx = r.get("cupyx_scatter_add_s")
            lines.append(f"| {key} | {r.get('updates', '–')} | **{_num(r.get('unsorted_Gupd_s'), '.1f')}** | "
                         f"{_num(r.get('sorted_Gupd_s'), '.1f')} | {_num(r.get('unsorted_s', 0) * 1e3, '.3f')} | "
                         f"{_num(cx * 1e3, '.3f') if cx is not None else '–'} |")
        lines.append("")
    spmv = section("CSR SpMV vs cuSPARSE plus_times (target ≥ 1x)", "spmv")
    if spmv is not None:
        lines += [f"Matrix: {spmv.get('rows', '?')} rows, {spmv.get('nnz', '?')} nnz; cuSPARSE plus_times "
                  f"{_num(spmv.get('cusparse_plus_times_s', 0) * 1e3, '.3f')} ms (best of its runs before and after "
                  f"mmsb's).", "",
                  "| semiring | mmsb ms (default group) | vs cuSPARSE | best group ms | vs cuSPARSE (best) |",
                  "| --- | --- | --- | --- | --- |"]
        for name in ("plus_times", "min_plus"):
            r = spmv.get(name, {})
            lines.append(f"| {name} | {_num(r.get('default_s', 0) * 1e3, '.3f')} | "
                         f"**{_num(r.get('vs_cusparse_default'), '.2f')}x** | "
                         f"{_num(r.get('best_s', 0) * 1e3, '.3f')} | "
                         f"{_num(r.get('vs_cusparse_best'), '.2f')}x |")
        lines.append("")
    graph = section("CUDA-graph replay of a propagation wave", "graph")
    if graph is not None:
        lines += ["| pages | page size | kernels per wave | eager ms | graph ms | speedup |",
                  "| --- | --- | --- | --- | --- | --- |",
                  f"| {graph.get('pages', '–')} | {graph.get('page_size', '–')} | "
                  f"{graph.get('kernels_per_wave', '–')} | "
                  f"{_num(graph.get('eager_s', 0) * 1e3, '.3f')} | {_num(graph.get('graph_s', 0) * 1e3, '.3f')} | "
                  f"**{_num(graph.get('speedup'), '.2f')}x** |", ""]
    nccl = section("NCCL all-reduce across the devices", "nccl")
    if nccl is not None:
        lines += ["| devices | bytes | ms | algbw GB/s | busbw GB/s |", "| --- | --- | --- | --- | --- |",
                  f"| {nccl.get('devices', '–')} | {nccl.get('bytes', '–')} | {_num(nccl.get('s', 0) * 1e3, '.2f')} | "
                  f"{_num(nccl.get('algbw_GBps'), '.1f')} | {_num(nccl.get('busbw_GBps'), '.1f')} |", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

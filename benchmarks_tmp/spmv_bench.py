"""Scratch benchmark: mmsb._ext.spmv against python-graphblas, scipy.sparse and scipy.sparse.csgraph."""
import time

import graphblas as gb
import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import dijkstra

from mmsb._ext import spmv as K
from mmsb._ops import OP_MIN, OP_PLUS, OP_TIMES

NTHREADS = 2


def best(fn, repeat=7):
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return min(out)


def interleaved(fns, repeat=15):
    """Best time of each function, alternating them so that both see the same machine load."""
    out = [[] for _ in fns]
    for _ in range(repeat):
        for slot, fn in zip(out, fns):
            t = time.perf_counter()
            fn()
            slot.append(time.perf_counter() - t)
    return [min(slot) for slot in out]


def bench_spmv(n=1_000_000, nnz=10_000_000):
    rng = np.random.default_rng(0)
    r = rng.integers(0, n, nnz)
    c = rng.integers(0, n, nnz)
    A = sp.csr_matrix((rng.random(nnz) + 0.01, (r, c)), shape=(n, n))
    A.sum_duplicates()
    A.indptr = A.indptr.astype(np.int64)
    A.indices = A.indices.astype(np.int64)
    x = rng.random(n)
    y = np.empty(n)
    gb.ss.config["nthreads"] = NTHREADS
    G = gb.Matrix.from_csr(A.indptr, A.indices, A.data, nrows=n, ncols=n)
    gx = gb.Vector.from_dense(x)
    print(f"random graph n={n:,} nnz={A.nnz:,}, {NTHREADS} threads")
    for name, add, mul, zero, sr in (("plus_times", OP_PLUS, OP_TIMES, 0.0, gb.semiring.plus_times),
                                      ("min_plus", OP_MIN, OP_PLUS, np.inf, gb.semiring.min_plus)):
        t_k, t_g, t_s = interleaved([
            lambda: K.spmv(A.indptr, A.indices, A.data, x, y, add, mul, zero, nthreads=NTHREADS),
            lambda: G.mxv(gx, sr).new(),
            lambda: A @ x])
        ref = G.mxv(gx, sr).new().to_dense(fill_value=zero)
        K.spmv(A.indptr, A.indices, A.data, x, y, add, mul, zero, nthreads=NTHREADS)
        line = (f"  {name:10s} mmsb {t_k * 1e3:7.1f} ms  graphblas {t_g * 1e3:7.1f} ms  "
                f"ratio(graphblas/mmsb) {t_g / t_k:5.2f}  allclose={np.allclose(y, ref)}")
        if name == "plus_times":
            line += f"  scipy {t_s * 1e3:7.1f} ms  ratio(scipy/mmsb) {t_s / t_k:5.2f}"
        print(line)


def grid(side, rng):
    n = side * side
    ids = np.arange(n).reshape(side, side)
    src = np.concatenate([ids[:, :-1].ravel(), ids[:, 1:].ravel(), ids[:-1, :].ravel(), ids[1:, :].ravel()])
    dst = np.concatenate([ids[:, 1:].ravel(), ids[:, :-1].ravel(), ids[1:, :].ravel(), ids[:-1, :].ravel()])
    W = sp.csr_matrix((rng.random(src.size) + 0.01, (src, dst)), shape=(n, n))
    W.indptr = W.indptr.astype(np.int64)
    W.indices = W.indices.astype(np.int64)
    return W


def bench_closure(side=1000, nsrc=10_000):
    rng = np.random.default_rng(1)
    W = grid(side, rng)
    n = W.shape[0]
    perm = rng.permutation(n)
    base_src = np.sort(perm[:nsrc])
    x0 = np.full(n, np.inf)
    x0[base_src] = 0.0
    t = time.perf_counter()
    K.closure(W.indptr, W.indices, W.data, x0, base_src, OP_MIN, OP_PLUS, np.inf)
    t_scratch = time.perf_counter() - t
    t = time.perf_counter()
    d0 = dijkstra(W, indices=base_src, min_only=True)
    t_scratch_sp = time.perf_counter() - t
    print(f"grid {side}x{side} (nnz={W.nnz:,}), {nsrc:,} sources: from scratch mmsb {t_scratch * 1e3:.0f} ms, "
          f"scipy dijkstra {t_scratch_sp * 1e3:.0f} ms, equal={np.array_equal(x0, d0)}")
    for k in (1, 10, 100, 1000):
        new = perm[nsrc:nsrc + k]
        all_src = np.concatenate([base_src, new])
        times = []
        for _ in range(5):
            x = x0.copy()
            t = time.perf_counter()
            x[new] = 0.0
            K.closure(W.indptr, W.indices, W.data, x, new, OP_MIN, OP_PLUS, np.inf)
            times.append(time.perf_counter() - t)
        t_inc = min(times)
        t_sp = best(lambda: dijkstra(W, indices=all_src, min_only=True), repeat=3)
        ref = dijkstra(W, indices=all_src, min_only=True)
        print(f"  k={k:5d}: incremental {t_inc * 1e3:8.3f} ms  scipy dijkstra {t_sp * 1e3:7.1f} ms  "
              f"speedup {t_sp / t_inc:8.1f}x  identical={np.array_equal(x, ref)}")


if __name__ == "__main__":
    bench_spmv()
    bench_closure()

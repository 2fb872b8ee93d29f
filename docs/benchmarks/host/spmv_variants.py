"""Issue #18 / #14: the float plus_times pull SpMV (1M rows, 10M nnz, int32 indices) with the AVX-512 gather path on
and off and the scalar prefetch distance, at all threads and 2 threads, against GraphBLAS mxv at as many threads;
min_plus alongside. Prints one line per variant; ratio = GraphBLAS time / mmsb time (best of 7, alternating)."""
import time

import numpy as np

import graphblas as gb
from mmsb import _kernels, _ops
from mmsb.bench.spmv import random_graph
from mmsb.csr import index_dtype

K = _kernels.spmv
n, m = 1_000_000, 10_000_000
A = random_graph(n, m)
indptr, data = A.indptr.astype(np.int64), A.data
indices = A.indices.astype(index_dtype(n, data.dtype))
x = np.random.default_rng(4).random(n)
y = np.empty(n)
G, gx = gb.io.from_scipy_sparse(A), gb.Vector.from_dense(x)
print(f"simd={_kernels.SIMD} levels={_kernels.SIMD_LEVELS} cap={_kernels.default_threads()} indices={indices.dtype} "
      f"loadavg={open('/proc/loadavg').read().strip()}", flush=True)


def best_pair(f, g, rep=7):
    a = b = float("inf")
    for _ in range(rep):
        t = time.perf_counter(); f(); a = min(a, time.perf_counter() - t)
        t = time.perf_counter(); g(); b = min(b, time.perf_counter() - t)
    return a, b


ref = A @ x
for threads in (_kernels.default_threads(), 2):
    gb.ss.config["nthreads"] = threads
    for label, add, mul, zero, sr in (("plus_times", _ops.OP_PLUS, _ops.OP_TIMES, 0.0, gb.semiring.plus_times),
                                      ("min_plus", _ops.OP_MIN, _ops.OP_PLUS, np.inf, gb.semiring.min_plus)):
        variants = [(True, 24), (False, 24), (False, 0), (False, 64)] if label == "plus_times" else [(True, 24),
                                                                                                    (True, 0)]
        for vec, ahead in variants:
            K.set_vector_gather(vec)
            K.set_gather_ahead(ahead)

            def ours():
                K.spmv(indptr, indices, data, x, y, add, mul, zero, None, threads)
            ours()
            if label == "plus_times":
                assert np.allclose(y, ref, rtol=1e-12, atol=1e-12)
            t_m, t_b = best_pair(ours, lambda: G.mxv(gx, sr).new())
            print(f"{label:10s} threads={threads:2d} vector_gather={K.set_vector_gather(vec)!s:5s} ahead={ahead:2d}  "
                  f"mmsb {t_m * 1e3:7.2f} ms  GraphBLAS {t_b * 1e3:7.2f} ms  ratio {t_b / t_m:5.2f}x", flush=True)
K.set_vector_gather(True)
K.set_gather_ahead(24)
print(f"loadavg={open('/proc/loadavg').read().strip()}")

"""#15's figure "link with 1 % of the matrix entries changed >= 5x a full GraphBLAS mxv": how close can any
implementation come? On the bench's workload (1000x1000 grid roads, 3,996,000 entries, 39,960 changed entries
per commit, row-sorted), times in one process, alternating, median and best of N:

* GraphBLAS mxv (plus_times, full, all threads it is given);
* the floor kernel (floor_kernel.pyx: locate, swap the value, y[row] += (new - old) * x[col]; nothing else) at
  1 thread and at every thread;
* mmsb: ``buf.write(M, vals, index=(rows, cols))`` with the link downstream (what the bench row times);

and the bytes each must move: the full mxv streams indptr, indices, data, x and y; the incremental update touches
at least one cache line of indptr, indices, data, x and y per changed entry. Run: python link_floor.py [N]."""
import os
import sys
import time

import numpy as np

import floor_kernel
import graphblas as gb
import mmsb
from mmsb.bench.dynamic import Roads

N = int(sys.argv[1]) if len(sys.argv) > 1 else 15
threads = len(os.sched_getaffinity(0))
rng = np.random.default_rng(16)
roads = Roads(1000, rng)
A = roads.matrix()
A.sort_indices()
n = roads.n
x = rng.random(n)
rows_all = np.repeat(np.arange(n, dtype=np.int64), np.diff(A.indptr))
cols_all = A.indices.astype(np.int64)
k = A.nnz // 100
changes = []
for _ in range(2 * N + 2):
    pick = np.sort(rng.choice(A.nnz, k, replace=False))        # row-sorted, as mmsb normalizes a delta
    changes.append((rows_all[pick], cols_all[pick], rng.uniform(1.0, 10.0, k)))

ip, ix, data = A.indptr.astype(np.int64), A.indices.astype(np.int64), A.data.copy()
y = A @ x
r, c, v = changes[0]
floor_kernel.entry_update(ip, ix, data, r, c, v, x, y, 1)
A2 = A.copy()
A2.data[:] = data
assert np.allclose(y, A2 @ x, rtol=1e-9), "floor kernel disagrees with scipy"

buf = mmsb.open(None)
xp = buf.create_page("x", n)
yp = buf.create_page("y", n)
M = buf.create_matrix("A", (n, n), data=A)
buf.write(xp, x)
buf.link(yp, xp, M)
buf.write(M, *changes[1][2:], index=changes[1][:2])

G = gb.io.from_scipy_sparse(A)
gx = gb.Vector.from_dense(x)
out = gb.Vector(float, n)


def mxv() -> None:
    out << G.mxv(gx, gb.semiring.plus_times)


def timed(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


t = {"graphblas": [], "floor 1 thread": [], f"floor {threads} threads": [], "mmsb buf.write": []}
for i in range(N):
    r, c, v = changes[2 + 2 * i]
    r2, c2, v2 = changes[3 + 2 * i]
    t["graphblas"].append(timed(mxv))
    t["floor 1 thread"].append(timed(lambda: floor_kernel.entry_update(ip, ix, data, r, c, v, x, y, 1)))
    mxv()
    t[f"floor {threads} threads"].append(
        timed(lambda: floor_kernel.entry_update(ip, ix, data, r2, c2, v2, x, y, threads)))
    mxv()
    t["mmsb buf.write"].append(timed(lambda: buf.write(M, v, index=(r, c))))
g, gb_best = np.median(t["graphblas"]), min(t["graphblas"])
print(f"machine: {os.cpu_count()} CPUs, {threads} in affinity; load {os.getloadavg()}; GraphBLAS "
      f"{gb.ss.config['nthreads']} threads; {A.nnz:,} entries, {k:,} changed; median of {N}")
print(f"{'':24s} {'median':>9s} {'best':>9s}   GraphBLAS / this: medians, bests")
for name, ts in t.items():
    m, b = np.median(ts), min(ts)
    print(f"{name:24s} {m * 1e3:6.3f} ms {b * 1e3:6.3f} ms   {g / m:6.2f}x {gb_best / b:6.2f}x")
full = (ip.nbytes + ix.nbytes + data.nbytes + x.nbytes + y.nbytes)
touched = k * 5 * 64
print(f"bytes: full mxv streams {full / 2**20:.1f} MiB; the incremental update touches >= {touched / 2**20:.1f} MiB "
      f"(5 lines of 64 B per change): at equal cost per byte the bound is {full / touched:.1f}x")

"""Bucket width of the parallel closure: the full build of a 1000x1000 grid from 10k sources at several widths."""
import json
import sys

import numpy as np

from mmsb import _kernels, _ops
from mmsb.bench._common import best_of
from mmsb.bench.closure import grid

side, nsrc = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else (1000, 10_000)
W = grid(side)
n = side * side
src = np.sort(np.random.default_rng(12).permutation(n)[:nsrc]).astype(np.int64)
ip, ix = W.indptr.astype(np.int64), W.indices.astype(np.int64)
wr = (float(W.data.min()), float(W.data.max()))
sp = _kernels.spmv


def build(t):
    x = np.full(n, np.inf)
    x[src] = 0.0
    sp.closure(ip, ix, W.data, x, src, _ops.OP_MIN, _ops.OP_PLUS, np.inf, weight_range=wr, nthreads=t)
    return x


ref = build(1)
default = sp.PAR_CLOSURE_DELTA
for delta in (1.0, 2.0, 4.0):
    sp.PAR_CLOSURE_DELTA = delta
    row = {"delta": delta}
    for t in sorted({2, 4, _kernels.default_threads()}):
        assert np.array_equal(build(t), ref)
        row[t] = best_of(lambda: build(t), 5)
    print(json.dumps(row), flush=True)
sp.PAR_CLOSURE_DELTA = default

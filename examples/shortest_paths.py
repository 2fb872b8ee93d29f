"""Incremental multi-source shortest paths with a min_plus closure, checked against scipy."""
import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import dijkstra

import mmsb

rng = np.random.default_rng(0)
n, m = 2000, 10000
W = sp.csr_matrix((rng.uniform(1, 10, m), (rng.integers(0, n, m), rng.integers(0, n, m))), shape=(n, n))
buf = mmsb.open(None)
src = buf.create_page("sources", n, semiring="min_plus")
dist = buf.create_page("dist", n, semiring="min_plus")
buf.closure(dist, src, W.T)                                     # edges u -> v of weight W[u, v]
sources = [0, 42]
buf.write(src, np.zeros(2), index=sources, accumulate=True)
buf.write(src, np.zeros(1), index=[7], accumulate=True)        # a new source: pushed incrementally
sources.append(7)
buf.write(src, [np.inf], index=[0])                             # a removed source: affected rows recomputed
sources.remove(0)
assert np.allclose(dist.read(), dijkstra(W, indices=sources, min_only=True))
print("reachable:", np.isfinite(dist.read()).sum(), "propagation:", buf.stats()["propagation"])

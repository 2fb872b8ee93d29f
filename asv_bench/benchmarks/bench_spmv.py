import numpy as np

import mmsb
from mmsb import _kernels, _ops
from mmsb.bench.spmv import random_graph

from ._util import ratio

N, M = 100_000, 1_000_000


class SpMV:
    params = ["min_plus", "plus_times"]
    param_names = ["semiring"]

    def setup(self, name):
        self.A = random_graph(N, M)
        self.indptr = self.A.indptr.astype(np.int64)
        self.indices = self.A.indices.astype(np.int64)
        self.x = np.random.default_rng(4).random(N)
        self.y = np.empty(N)
        self.ops = {"min_plus": (_ops.OP_MIN, _ops.OP_PLUS, np.inf),
                    "plus_times": (_ops.OP_PLUS, _ops.OP_TIMES, 0.0)}[name]
        try:
            import graphblas as gb
            gb.ss.config["nthreads"] = 2
            self.gb = gb
            self.G = gb.io.from_scipy_sparse(self.A)
            self.gx = gb.Vector.from_dense(self.x)
            self.gsr = getattr(gb.semiring, name)
        except ImportError:
            raise NotImplementedError("python-graphblas not installed")  # asv skips the class

    def _ours(self):
        add, mul, zero = self.ops
        _kernels.spmv.spmv(self.indptr, self.indices, self.A.data, self.x, self.y, add, mul, zero, None, 2)

    def time_mmsb_spmv(self, name):
        self._ours()

    def time_graphblas_mxv(self, name):
        self.G.mxv(self.gx, self.gsr).new()

    def track_ratio_graphblas_over_mmsb(self, name):
        return ratio(self._ours, lambda: self.G.mxv(self.gx, self.gsr).new())
    track_ratio_graphblas_over_mmsb.unit = "x"


class ScipyMatvec:
    """scipy.sparse A @ x (plus_times only), the baseline of SpMV.time_mmsb_spmv('plus_times')."""

    def setup(self):
        self.A = random_graph(N, M)
        self.x = np.random.default_rng(4).random(N)

    def time_scipy_matvec(self):
        self.A @ self.x


class LinkWrite:
    def setup(self):
        self.A = random_graph(20_000, 200_000)
        self.buf = mmsb.open(None, durability="none")
        self.src = self.buf.create_page("x", 20_000)
        dst = self.buf.create_page("y", 20_000)
        self.buf.link(dst, self.src, self.A)
        self.vals = [np.random.default_rng(5).random(20_000), np.random.default_rng(6).random(20_000)]
        self.k = 0

    def teardown(self):
        self.buf.close()

    def time_write_full_page_with_link(self):
        self.k ^= 1
        self.buf.write(self.src, self.vals[self.k])

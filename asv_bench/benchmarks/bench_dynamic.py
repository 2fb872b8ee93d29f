"""Matrix deltas (issue #15): edge changes on a matrix page under a closure and a link, 200x200 grid."""
import numpy as np

from mmsb.bench.dynamic import Closure, NetworKitSSSP, Roads

from ._util import ratio


class MatrixDeltaClosure:
    """min_plus closure over a matrix page (200x200 grid, 400 sources); one commit changes 10 roads (20 entries).

    Every timed call applies fresh changes from a pre-drawn pool (the state carries over, as in ``mmsb bench``)."""
    params = ["dec", "inc", "del", "ins"]
    param_names = ["change"]
    number = 1
    repeat = 10

    def setup(self, kind):
        rng = np.random.default_rng(15)
        self.roads = Roads(200, rng)
        self.sources = np.sort(rng.choice(self.roads.n, 400, replace=False))
        self.closure = Closure("min_plus", self.roads, self.sources)
        self.pool = [self.roads.change(kind, 10) for _ in range(200)]
        self.k = 0

    def _next(self):
        ch = self.pool[self.k % len(self.pool)]
        self.k += 1
        return ch

    def time_mmsb_commit(self, kind):
        ch = self._next()
        self.closure.apply(kind, *ch[1:])



class MatrixDeltaVsNetworKit:
    """The same commits against NetworKit's DynDijkstra given the same changes (skipped without networkit)."""
    params = ["dec", "inc", "del", "ins"]
    param_names = ["change"]
    number = 1
    repeat = 1

    def setup(self, kind):
        try:
            import networkit as nk
        except ImportError:
            raise NotImplementedError("networkit is not installed") from None
        rng = np.random.default_rng(15)            # the network of MatrixDeltaClosure: the same changes both sides
        self.roads = Roads(200, rng)
        sources = np.sort(rng.choice(self.roads.n, 400, replace=False))
        self.mm, self.nks = Closure("min_plus", self.roads, sources), NetworKitSSSP(nk, self.roads, sources)

    def track_ratio_networkit_over_mmsb(self, kind):
        pool = [self.roads.change(kind, 10) for _ in range(6)]
        it_m, it_n = iter(pool), iter(pool)
        return ratio(lambda: self.mm.apply(kind, *next(it_m)[1:]), lambda: self.nks.apply(kind, *next(it_n)[1:]),
                     6)
    track_ratio_networkit_over_mmsb.unit = "x"


class MatrixDeltaLink:
    """link y = A x over a plus_times matrix page (200x200 grid); one commit assigns 1 % of the entries."""
    number = 1
    repeat = 10

    def setup(self):
        import mmsb

        rng = np.random.default_rng(16)
        A = Roads(200, rng).matrix()
        n = A.shape[0]
        self.buf = mmsb.open(None)
        x, y = self.buf.create_page("x", n), self.buf.create_page("y", n)
        self.M = self.buf.create_matrix("A", (n, n), data=A)
        self.buf.write(x, rng.random(n))
        self.buf.link(y, x, self.M)
        rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(A.indptr))
        pick = rng.choice(A.nnz, A.nnz // 100, replace=False)
        self.index = (rows[pick], A.indices[pick].astype(np.int64))
        self.values = [rng.uniform(1.0, 10.0, pick.size) for _ in range(2)]
        self.k = 0

    def teardown(self):
        self.buf.close()

    def time_mmsb_commit(self):
        self.k ^= 1
        self.buf.write(self.M, self.values[self.k], index=self.index)

    def track_matrix_page_bytes_per_entry(self):
        return self.M.nbytes / self.M.nnz
    track_matrix_page_bytes_per_entry.unit = "bytes"

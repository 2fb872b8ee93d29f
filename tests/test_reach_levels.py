"""Reachability closures over a matrix page (issue #15): the engine keeps BFS levels for every or_and closure and
repairs them on edge insertions, deletions and source switches. Random histories are checked after every step
against scipy (``breadth_first_order`` from a super-source for the values, unweighted shortest paths for the
levels), under the compiled kernels and their numpy twins, and at past epochs via ``at(e)``."""
import os
from unittest import mock

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.sparse import csgraph

import mmsb
from mmsb import _kernels
from mmsb import errors as E
from mmsb._ref import repair as ref_repair

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KERNELS = [ref_repair] + ([_kernels.repair] if _kernels.KIND == "compiled" else [])
IDS = ["ref"] + (["compiled"] if _kernels.KIND == "compiled" else [])
OPS = ["insert", "delete", "delete", "source", "both", "accumulate", "sparse", "relink", "fail"]


def reached(D, src):
    """Reachability from the sources along c -> r for every True ``D[r, c]``: scipy's breadth_first_order from a
    super-source joined to the sources."""
    n = D.shape[0]
    r, c = np.nonzero(D)
    s = np.flatnonzero(src)
    G = sp.csr_array((np.ones(r.size + s.size), (np.r_[c, np.full(s.size, n)], np.r_[r, s])), shape=(n + 1, n + 1))
    out = np.zeros(n + 1, dtype=bool)
    out[csgraph.breadth_first_order(G, n, directed=True, return_predecessors=False)] = True
    return out[:n]


def hops(D, src):
    """The BFS level of every vertex (inf where unreached): unweighted shortest paths from the sources."""
    if not src.any():
        return np.full(D.shape[0], np.inf)
    d = csgraph.shortest_path(sp.csr_array(D.T.astype(float)), unweighted=True, indices=np.flatnonzero(src))
    return np.atleast_2d(d).min(axis=0)


class Reach:
    """A buffer with ``y = closure(s, M)`` (or_and, bool), a derive ``z`` below it that fails on demand, and the
    numpy model (D, src) it must match."""

    def __init__(self, rng, n, store=None, **kw):
        self.rng, self.n = rng, n
        self.D = rng.random((n, n)) < rng.uniform(0.03, 0.25)
        self.src = rng.random(n) < 0.15
        self.buf = mmsb.open(store, "w", **kw) if store else mmsb.open(None, **kw)
        b = self.buf
        self.M = b.create_matrix("M", (n, n), dtype="bool", semiring="or_and", data=sp.csr_array(self.D))
        self.s = b.create_page("s", n, dtype="bool", semiring="or_and")
        self.y = b.create_page("y", n, dtype="bool", semiring="or_and")
        self.z = b.create_page("z", n, dtype="bool")
        self.fail = False
        b.write(self.s, self.src)
        b.closure(self.y, self.s, self.M)
        b.derive(self.z, [self.y], self._copy)
        self.epochs = {}

    def _copy(self, y):
        if self.fail:
            raise RuntimeError("refused on purpose")
        return y

    def entries(self, k, value):
        """k random entries (rows, cols): absent ones for an insertion, mostly present ones for a deletion."""
        pool = np.flatnonzero(self.D.ravel() != value)
        if pool.size and self.rng.random() < 0.8:
            keys = self.rng.choice(pool, min(k, pool.size), replace=False)
        else:
            keys = self.rng.integers(0, self.n * self.n, k)
        return np.divmod(keys.astype(np.int64), self.n)

    def step(self, op):
        b, rng, n = self.buf, self.rng, self.n
        if op in ("insert", "delete", "accumulate"):
            r, c = self.entries(int(rng.integers(1, 5)), op != "delete")
            val = op != "delete"
            changes = bool((self.D[r, c] != val).any())
            b.write(self.M, np.full(r.size, val), index=(r, c), accumulate=op == "accumulate")
            self.D[r, c] = val
            if changes:                             # the closure keeps levels from its first matrix change on
                assert b._engine._levels["y"][0]() is not None
        elif op == "source":
            p = rng.integers(0, n, int(rng.integers(1, 4)))
            v = rng.random(p.size) < 0.5
            b.write(self.s, v, index=p)
            self.src[p] = v
        elif op == "both":                          # one commit changes the sources and the matrix
            r, c = self.entries(int(rng.integers(1, 4)), bool(rng.random() < 0.5))
            v = rng.random(r.size) < 0.5
            p = rng.integers(0, n, 2)
            pv = rng.random(2) < 0.5
            with b.batch():
                b.write(self.M, v, index=(r, c))
                b.write(self.s, pv, index=p)
            self.D[r, c] = v
            self.src[p] = pv
        elif op == "sparse":
            r, c = self.entries(int(rng.integers(1, 5)), True)
            b.write(self.M, sp.coo_array((np.ones(r.size, bool), (r, c)), shape=(n, n)))
            self.D[r, c] = True
        elif op == "relink":
            b.unlink(self.y)
            b.closure(self.y, self.s, self.M)
        elif op == "fail":              # a deletion that changes y, rolled back after the closure's step ran
            now = reached(self.D, self.src)
            for key in rng.permutation(np.flatnonzero(self.D.ravel()))[:20]:
                r, c = divmod(int(key), n)
                self.D[r, c] = False
                changes = not np.array_equal(reached(self.D, self.src), now)
                self.D[r, c] = True
                if changes:
                    self.fail = True
                    try:
                        with pytest.raises(E.MMSBError, match="refused on purpose"):
                            b.write(self.M, [False], index=([r], [c]))
                    finally:
                        self.fail = False
                    break
        self.check()
        self.epochs[b.epoch] = self.y.read().copy()

    def check(self):
        want = reached(self.D, self.src)
        np.testing.assert_array_equal(self.y.read(), want)
        np.testing.assert_array_equal(self.z.read(), want)
        np.testing.assert_array_equal(self.M.read().toarray().astype(bool), self.D)
        got = self.buf._engine._levels.get("y")
        if got is not None and got[0]() is not None:
            level = got[1]
            np.testing.assert_array_equal(np.where(level == np.iinfo(level.dtype).max, np.inf, level),
                                          hops(self.D, self.src))


@pytest.mark.parametrize("kern", KERNELS, ids=IDS)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 24), ops=st.lists(st.sampled_from(OPS), max_size=14))
@SETTINGS
def test_random_or_and_histories_equal_scipy_after_every_step(kern, seed, n, ops):
    with mock.patch.object(_kernels, "repair", kern):
        h = Reach(np.random.default_rng(seed), n)
        h.check()
        for op in ops:
            h.step(op)
        for e, want in h.epochs.items():            # time travel: every past epoch as it was
            np.testing.assert_array_equal(h.buf.at(e)["y"].read(), want)


@pytest.mark.parametrize("kern", KERNELS, ids=IDS)
def test_deferred_propagation_merges_the_changes(kern):
    """Several commits of deletions, insertions and source switches, then one ``propagate()``."""
    rng = np.random.default_rng(7)
    with mock.patch.object(_kernels, "repair", kern):
        h = Reach(rng, 20, propagation="deferred")
        h.buf.propagate()
        h.check()
        for _ in range(6):
            for op in ("delete", "insert", "source", "delete"):
                r, c = h.entries(2, op != "delete")
                if op == "source":
                    p = rng.integers(0, 20, 2)
                    h.buf.write(h.s, [True, False], index=p)
                    h.src[p] = [True, False]
                else:
                    h.buf.write(h.M, np.full(r.size, op == "insert"), index=(r, c))
                    h.D[r, c] = op == "insert"
            h.buf.propagate()
            h.check()


def _grid(side):
    """A side x side grid, edges both ways between 4-neighbours: D[r, c] for c -> r."""
    ids = np.arange(side * side).reshape(side, side)
    u = np.r_[ids[:, :-1].ravel(), ids[:-1, :].ravel()]
    v = np.r_[ids[:, 1:].ravel(), ids[1:, :].ravel()]
    D = np.zeros((side * side,) * 2, dtype=bool)
    D[v, u] = D[u, v] = True
    return D, u, v


def test_a_closed_road_repairs_only_what_it_affects():
    """Under or_and every reachable value is 'tight' through every edge into it; the levels make a deletion cost
    the values it really affects: a closed road on a 40x40 grid repairs a handful of rows, not the grid."""
    side = 40
    D, u, v = _grid(side)
    n = side * side
    buf = mmsb.open(None)
    M = buf.create_matrix("M", (n, n), dtype="bool", semiring="or_and", data=sp.csr_array(D))
    s = buf.create_page("s", n, dtype="bool", semiring="or_and")
    y = buf.create_page("y", n, dtype="bool", semiring="or_and")
    src = np.zeros(n, dtype=bool)
    src[[0, n // 2 + side // 2, n - 1]] = True
    buf.write(s, src)
    buf.closure(y, s, M)
    buf.write(M, [False, False], index=([v[0], u[0]], [u[0], v[0]]))     # builds the levels (one BFS)
    rows = []
    for k in (100, 900, 1500):
        before = buf.stats()["propagation"]["rows_recomputed"]
        buf.write(M, [False, False], index=([v[k], u[k]], [u[k], v[k]]))
        D[v[k], u[k]] = D[u[k], v[k]] = False
        rows.append(buf.stats()["propagation"]["rows_recomputed"] - before)
        np.testing.assert_array_equal(y.read(), reached(D, src))
    assert max(rows) <= 2 * side, rows                  # (a recompute: 1600 rows)
    # a cut that disconnects a corner: the corner's values go, and only the corner is repaired
    corner = [(0, 1), (0, side)]
    D[0, 1] = D[1, 0] = D[0, side] = D[side, 0] = True
    buf.write(M, [True] * 4, index=([0, 1, 0, side], [1, 0, side, 0]))
    src[0] = False
    buf.write(s, [False], index=[0])
    np.testing.assert_array_equal(y.read(), reached(D, src))
    for a, b in corner:
        D[a, b] = D[b, a] = False
    buf.write(M, [False] * 4, index=([0, 1, 0, side], [1, 0, side, 0]))
    np.testing.assert_array_equal(y.read(), reached(D, src))
    assert not y.read()[0]


def test_levels_are_dropped_with_the_rule_and_rebuilt_after_reopen(tmp_path):
    rng = np.random.default_rng(3)
    path = os.fspath(tmp_path / "store")
    h = Reach(rng, 15, store=path)
    for op in ("delete", "insert", "source", "delete"):
        h.step(op)
    eng = h.buf._engine
    assert "y" in eng._levels                    # kept after the first matrix change
    h.buf.unlink(h.y)
    import gc
    gc.collect()
    assert "y" not in eng._levels                # gone with the rule
    h.buf.closure(h.y, h.s, h.M)
    h.step("insert")
    h.buf.close()
    buf = mmsb.open(path, functions={f"{__name__}:Reach._copy": lambda y: y})
    D, src = h.D, h.src
    np.testing.assert_array_equal(buf["y"].read(), reached(D, src))
    r, c = np.nonzero(D)
    a, b = np.nonzero(~D)
    buf.write(buf["M"], [False, True], index=([r[0], a[0]], [c[0], b[0]]))
    D[r[0], c[0]] = False
    D[a[0], b[0]] = True
    np.testing.assert_array_equal(buf["y"].read(), reached(D, src))
    buf.write(buf["M"], [False], index=([a[0]], [b[0]]))      # (the levels exist from a wave's matrix step on)
    D[a[0], b[0]] = False
    np.testing.assert_array_equal(buf["y"].read(), reached(D, src))
    level = buf._engine._levels["y"][1]
    np.testing.assert_array_equal(np.where(level == np.iinfo(level.dtype).max, np.inf, level), hops(D, src))
    buf.close()


# ------------------------------------------------------- the kernel's repair against a BFS from scratch (scipy)

def _family(rng, family, n):
    """A bool adjacency ``D[r, c]`` (edge c -> r): a random graph, a path with shortcuts, a random tree with a few
    extra edges, or a two-way grid (the last three with deep levels, where a removed support cascades)."""
    D = np.zeros((n, n), dtype=bool)
    if family == "random":
        D = rng.random((n, n)) < rng.uniform(0.02, 0.2)
    elif family == "path":
        D[np.arange(1, n), np.arange(n - 1)] = True
        k = int(rng.integers(0, n // 4 + 1))
        D[rng.integers(0, n, k), rng.integers(0, n, k)] = True
    elif family == "tree":
        parent = np.array([int(rng.integers(0, v)) for v in range(1, n)], dtype=np.int64)
        D[np.arange(1, n), parent] = True
        k = int(rng.integers(0, n // 5 + 1))
        D[rng.integers(0, n, k), rng.integers(0, n, k)] = True
    else:
        side = max(int(np.sqrt(n)), 1)
        ids = np.arange(side * side).reshape(side, side)
        for a, b in ((ids[:, :-1], ids[:, 1:]), (ids[:-1, :], ids[1:, :])):
            D[b.ravel(), a.ravel()] = True
            D[a.ravel(), b.ravel()] = True
    return D


def _csr(D, ghosts, index_t):
    """``D`` in CSR form (int64 row pointers, ``index_t`` indices, uint8 values) with the removed entries
    ``ghosts`` kept as explicit False slots (as a matrix page keeps them), and its transpose."""
    n = D.shape[0]
    r, c = np.nonzero(D | ghosts)
    A = sp.csr_array((D[r, c].astype(np.uint8), (r, c)), shape=(n, n))
    T = sp.csr_array((D[r, c].astype(np.uint8), (c, r)), shape=(n, n))
    out = []
    for M in (A, T):
        M.has_canonical_format = False
        M.sort_indices()
        out += [M.indptr.astype(np.int64), M.indices.astype(index_t), M.data.astype(np.uint8)]
    return out


def _affected(D, src, level):
    """The vertices that lose their level: a finite old level and no chain of supports (edges c -> r of the new
    graph with ``level[r] == level[c] + 1`` under the old levels) from a new source, found by scipy's
    breadth_first_order from a super-source over the support edges."""
    n = D.shape[0]
    inf = np.iinfo(level.dtype).max
    r, c = np.nonzero(D)
    sup = (level[r] != inf) & (level[c] != inf) & (level[r].astype(np.int64) == level[c].astype(np.int64) + 1)
    s = np.flatnonzero(src)
    G = sp.csr_array((np.ones(int(sup.sum()) + s.size), (np.r_[c[sup], np.full(s.size, n)], np.r_[r[sup], s])),
                     shape=(n + 1, n + 1))
    held = np.zeros(n + 1, dtype=bool)
    held[csgraph.breadth_first_order(G, n, directed=True, return_predecessors=False)] = True
    return np.flatnonzero((level != inf) & ~held[:n])


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 60),
       family=st.sampled_from(["random", "path", "tree", "grid"]),
       mode=st.sampled_from(["delete", "insert", "mixed", "sources"]), wide_index=st.booleans(),
       wide_level=st.booleans(), steps=st.integers(1, 8))
@SETTINGS
def test_compiled_reach_repairs_levels_as_a_fresh_bfs_finds_them(seed, n, family, mode, wide_index, wide_level,
                                                                  steps):
    """The kernel's level repair (not the twin, which rebuilds its levels), step after step of edge removals
    (supports preferred: deep cascades), insertions and source switches: the levels equal scipy's unweighted
    shortest paths from the sources, y its breadth_first_order reachability, the affected count the vertices
    left without a chain of supports, the changes reported those of y, the scratch clear after every call."""
    kern = _kernels.repair
    rng = np.random.default_rng(seed)
    D = _family(rng, family, n)
    src = np.zeros(n, dtype=bool)
    src[rng.choice(n, size=int(rng.integers(1, 3)), replace=False)] = True
    index_t, level_t = (np.int64 if wide_index else np.int32), (np.int64 if wide_level else np.int32)
    ghosts = np.zeros((n, n), dtype=bool)
    y, level = np.zeros(n, np.uint8), np.zeros(n, level_t)
    _, _, _, ipt, ixt, dvt = _csr(D, ghosts, index_t)
    kern.reach_build(ipt, ixt, dvt, y, src, level)
    mark, old_out = np.zeros(n, np.uint8), np.empty(n, np.uint8)
    for _ in range(steps):
        inf = np.iinfo(level_t).max
        r, c = np.nonzero(D)
        keys = []
        if mode in ("delete", "mixed") and r.size:
            sup = np.flatnonzero((level[r] != inf) & (level[r].astype(np.int64) == level[c].astype(np.int64) + 1))
            pool = sup if sup.size and rng.random() < 0.7 else np.arange(r.size)
            pick = rng.choice(pool, size=min(int(rng.integers(1, 4)), pool.size), replace=False)
            keys += (r[pick] * n + c[pick]).tolist()
        if mode in ("insert", "mixed"):
            k = int(rng.integers(1, 4))
            keys += (rng.integers(0, n, k) * n + rng.integers(0, n, k)).tolist()
        keys = np.unique(np.array(keys, dtype=np.int64))
        kr, kc = np.divmod(keys, n)
        old = D[kr, kc].copy()
        if mode == "insert":
            D[kr, kc] = True
        elif mode == "mixed":
            D[kr, kc] = ~old
        else:
            D[kr, kc] = False
        ghosts |= ~D & (ghosts | np.isin(np.arange(n * n), keys[old]).reshape(n, n))
        points = np.zeros(0, np.int64)
        if mode == "sources" or rng.random() < 0.3:
            points = rng.integers(0, n, int(rng.integers(1, 3))).astype(np.int64)
            src[points] = rng.random(points.size) < 0.5
        want_region = _affected(D, src, level)
        y0 = y.copy()
        idx, olds, region = kern.reach(*_csr(D, ghosts, index_t), y, src, level, keys, old.astype(np.uint8), points,
                                       mark, old_out)
        assert not mark.any()
        want = hops(D, src)
        got = np.where(level == inf, np.inf, level.astype(np.float64))
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(y.astype(bool), reached(D, src))
        np.testing.assert_array_equal(idx, np.flatnonzero(y != y0))
        np.testing.assert_array_equal(olds, y0[idx])
        assert region == want_region.size

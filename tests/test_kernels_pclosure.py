"""The parallel (min, plus) closure (mmsb/_ext/_pclosure.h) equals the serial kernel and the numpy twin bit for bit."""
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.sparse.csgraph import dijkstra

from mmsb import _kernels
from mmsb._ops import OP_MIN, OP_PLUS
from mmsb._ref import spmv as ref

LEVELS = {level: ns.spmv for level, ns in _kernels.compiled_levels().items()}
LEVEL_IDS = sorted(LEVELS) or [pytest.param("none", marks=pytest.mark.skip(reason="compiled kernels not built"))]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def forced(request):
    """Lower the size thresholds so that every wave takes the parallel kernel (restored afterwards)."""
    mods = list(LEVELS.values())
    saved = [(m.PAR_CLOSURE_FRONTIER, m.PAR_CLOSURE_N) for m in mods]
    for m in mods:
        m.PAR_CLOSURE_FRONTIER, m.PAR_CLOSURE_N = 1, 0
    yield
    for m, (f, n) in zip(mods, saved):
        m.PAR_CLOSURE_FRONTIER, m.PAR_CLOSURE_N = f, n


def _graph(rng, n, density, dtype, lo, hi):
    W = sp.random(n, n, density=density, random_state=rng, format="csr",
                  data_rvs=lambda k: lo + (hi - lo) * rng.random(k))
    W.setdiag(0)
    W.eliminate_zeros()
    W = sp.csr_array(W.astype(dtype))
    W.sort_indices()
    return W


def _run(kern, W, x, frontier, nthreads, with_old, index_dtype=np.int64):
    old = np.full(x.size, -1, dtype=x.dtype) if with_old else None
    wr = (float(W.data.min()), float(W.data.max())) if W.nnz else None
    ch = kern.closure(W.indptr.astype(np.int64), W.indices.astype(index_dtype), W.data, x, frontier, OP_MIN,
                      OP_PLUS, np.inf, old_out=old, weight_range=wr, nthreads=nthreads)
    return ch, old


@pytest.mark.parametrize("level", LEVEL_IDS)
@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(2, 400), st.floats(0.0, 0.05), st.integers(1, 40),
       st.sampled_from(["float64", "float32"]), st.sampled_from([(1.0, 10.0), (0.1, 0.3), (1.0, 1.0)]),
       st.sampled_from([2, 3, 8]), st.booleans())
def test_parallel_closure_equals_serial_and_twin(forced, level, seed, n, density, nsrc, dtype, wrange, nthreads,
                                                 incremental):
    kern = LEVELS[level]
    rng = np.random.default_rng(seed)
    W = _graph(rng, n, density, dtype, *wrange)
    if W.nnz == 0:
        return
    x0 = np.full(n, np.inf, dtype=dtype)
    src = rng.choice(n, min(nsrc, n), replace=False)
    x0[src] = (rng.random(src.size) * 5).astype(dtype)
    frontier = np.sort(src).astype(np.int64)
    if incremental:     # from a fixpoint: lower a few entries and converge again
        ref.closure(W.indptr, W.indices, W.data, x0, frontier, OP_MIN, OP_PLUS, np.inf)
        frontier = np.sort(rng.choice(n, min(5, n), replace=False)).astype(np.int64)
        x0[frontier] = np.minimum(x0[frontier], (rng.random(frontier.size) * 3).astype(dtype))
    runs = {}
    for name, k, nt, idt in (("twin", ref, 1, np.int64), ("serial", kern, 1, np.int64),
                             ("parallel", kern, nthreads, np.int64), ("parallel int32", kern, nthreads, np.int32)):
        x = x0.copy()
        ch, old = _run(k, W, x, frontier, nt, True, idt)
        runs[name] = (x, ch, old)
    x_t, ch_t, old_t = runs["twin"]
    for name in ("serial", "parallel", "parallel int32"):
        x, ch, old = runs[name]
        assert x.tobytes() == x_t.tobytes(), name
        np.testing.assert_array_equal(ch, ch_t)
        assert old[ch].tobytes() == old_t[ch_t].tobytes()
        assert np.all(old[np.setdiff1d(np.arange(n), ch)] == -1)    # untouched elsewhere


@pytest.mark.parametrize("level", LEVEL_IDS)
def test_parallel_closure_grid_equals_dijkstra(forced, level):
    kern = LEVELS[level]
    from mmsb.bench.closure import grid
    W = grid(60, seed=3)
    rng = np.random.default_rng(4)
    src = np.sort(rng.choice(W.shape[0], 50, replace=False)).astype(np.int64)
    x = np.full(W.shape[0], np.inf)
    x[src] = 0.0
    ch, _ = _run(kern, W, x, src, 4, False)
    np.testing.assert_array_equal(x, dijkstra(W, directed=True, indices=src, min_only=True))
    np.testing.assert_array_equal(ch, np.setdiff1d(np.arange(W.shape[0]), src))


@pytest.mark.parametrize("level", LEVEL_IDS)
def test_parallel_closure_bad_index_raises(forced, level):
    kern = LEVELS[level]
    indptr = np.array([0, 1, 2], dtype=np.int64)
    indices = np.array([1, 7], dtype=np.int64)        # 7 is out of range
    x = np.array([0.0, np.inf])
    with pytest.raises(ValueError, match="out of range"):
        kern.closure(indptr, indices, np.array([1.0, 1.0]), x, np.array([0, 1]), OP_MIN, OP_PLUS, np.inf,
                     weight_range=(1.0, 1.0), nthreads=2)

"""Semiring sparse kernels: the compiled module equals its numpy twin, and both equal independent references."""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.sparse.csgraph import bellman_ford, breadth_first_order, dijkstra

from mmsb._ops import OP_MAX, OP_MIN, OP_PLUS, OP_TIMES
from mmsb._ref import spmv as ref
from mmsb._validate import zero_array

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# name -> (add_op, mul_op, zero as a float (±inf mapped per dtype), dtypes, value range)
SEMIRINGS = {
    "plus_times": (OP_PLUS, OP_TIMES, 0.0, ("float64", "float32", "int64", "int32", "uint8"), (-5, 5)),
    "min_plus": (OP_MIN, OP_PLUS, np.inf, ("float64", "float32", "int64", "int16", "uint32"), (0, 20)),
    "max_plus": (OP_MAX, OP_PLUS, -np.inf, ("float64", "int32", "int8"), (-20, 20)),
    "max_times": (OP_MAX, OP_TIMES, 0.0, ("float64", "float32", "uint16", "int64"), (0, 9)),
    "max_min": (OP_MAX, OP_MIN, -np.inf, ("float64", "int32", "uint64"), (-20, 20)),
    "min_max": (OP_MIN, OP_MAX, np.inf, ("float32", "int64", "uint8"), (-20, 20)),
    "or_and": (OP_MAX, OP_MIN, 0, ("uint8",), (0, 1)),
}
CASES = [(name, dt) for name, spec in SEMIRINGS.items() for dt in spec[3]]
UFUNC = {OP_PLUS: np.add, OP_TIMES: np.multiply, OP_MIN: np.minimum, OP_MAX: np.maximum}


def _levels():
    """The compiled SIMD levels built and runnable here (none under MMSB_PUREPYTHON=1)."""
    from mmsb import _kernels
    return {level: ns.spmv for level, ns in _kernels.compiled_levels().items()}


LEVELS = _levels()
EXT_LEVELS = sorted(LEVELS) or [pytest.param("none", marks=pytest.mark.skip(reason="compiled kernels not built"))]


@pytest.fixture(scope="module", params=["ref"] + sorted(LEVELS))
def kern(request):
    """The twin, or the compiled module of one SIMD level."""
    if request.param == "ref":
        return ref
    return LEVELS[request.param]


def ext_module(level):
    return LEVELS[level]


def zero_of(name, dtype):
    return zero_array(SEMIRINGS[name][2], np.dtype(dtype))[0]


def values(rng, name, dtype, size):
    lo, hi = SEMIRINGS[name][4]
    lo = max(lo, 0) if np.dtype(dtype).kind == "u" else lo
    return rng.integers(lo, hi + 1, size).astype(dtype)


def random_csr(rng, n, m, density, name, dtype):
    """A CSR matrix with int64 index arrays (stored entries may hold the value 0)."""
    nnz = int(rng.binomial(n * m, density))
    flat = rng.choice(n * m, size=nnz, replace=False) if n * m else np.empty(0, np.int64)
    rows, cols = np.divmod(flat, m) if m else (flat, flat)
    A = sp.csr_matrix((values(rng, name, dtype, nnz), (rows, cols)), shape=(n, m), dtype=dtype)
    A.sort_indices()
    return A.indptr.astype(np.int64), A.indices.astype(np.int64), A.data.copy(), A


def dense_spmv(A, x, name):
    """np.where(stored, A, zero) combined per semiring (entries with x == zero skipped)."""
    add, mul, _, _, _ = SEMIRINGS[name]
    z = zero_of(name, x.dtype)
    stored = A.copy()
    stored.data = np.ones_like(stored.data, dtype=bool)
    mask = stored.toarray().astype(bool) & (x != z)[None, :]
    prod = UFUNC[mul](A.toarray(), x[None, :])
    return UFUNC[add].reduce(np.where(mask, prod, z), axis=1, initial=z).astype(x.dtype)


params = st.tuples(st.sampled_from(CASES), st.integers(0, 2**32 - 1), st.integers(0, 12), st.integers(0, 12),
                   st.floats(0.0, 0.7))


@SETTINGS
@given(params, st.booleans())
def test_spmv_twin_matches_dense_reference(p, subset):
    (name, dtype), seed, n, m, density = p
    rng = np.random.default_rng(seed)
    indptr, indices, data, A = random_csr(rng, n, m, density, name, dtype)
    x = values(rng, name, dtype, m)
    z = zero_of(name, dtype)
    x[rng.random(m) < 0.2] = z
    y = values(rng, name, dtype, n)
    before = y.copy()
    rows = np.flatnonzero(rng.random(n) < 0.5) if subset else None
    add, mul = SEMIRINGS[name][:2]
    ref.spmv(indptr, indices, data, x, y, add, mul, SEMIRINGS[name][2], rows=rows)
    expect = dense_spmv(A, x, name)
    sel = np.arange(n) if rows is None else rows
    untouched = np.setdiff1d(np.arange(n), sel)
    np.testing.assert_array_equal(y[untouched], before[untouched])
    if np.dtype(dtype).kind == "f" and name == "plus_times":
        np.testing.assert_allclose(y[sel], expect[sel], rtol=1e-5, atol=1e-4)
    else:
        np.testing.assert_array_equal(y[sel], expect[sel])


@pytest.mark.parametrize("level", EXT_LEVELS)
@SETTINGS
@given(params, st.booleans(), st.sampled_from([0, 1, 2]), st.booleans())
def test_spmv_compiled_matches_twin(level, p, subset, nthreads, narrow):
    """... with int64 or int32 column indices (``narrow``) on the compiled side."""
    ext = ext_module(level)
    (name, dtype), seed, n, m, density = p
    rng = np.random.default_rng(seed)
    indptr, indices, data, _ = random_csr(rng, n, m, density, name, dtype)
    x = values(rng, name, dtype, m)
    x[rng.random(m) < 0.2] = zero_of(name, dtype)
    y0 = values(rng, name, dtype, n)
    rows = rng.integers(0, n, rng.integers(0, n + 1)) if subset and n else None
    add, mul, zero = SEMIRINGS[name][:3]
    y_ref, y_ext = y0.copy(), y0.copy()
    ref.spmv(indptr, indices, data, x, y_ref, add, mul, zero, rows=rows)
    ext.spmv(indptr, indices.astype(np.int32) if narrow else indices, data, x, y_ext, add, mul, zero, rows=rows,
             nthreads=nthreads)
    np.testing.assert_array_equal(y_ext, y_ref)


def lane_sum_row(data, xs):
    """The documented float (plus, times) row value, in Python floats of the row's dtype: entry k goes to lane
    k % 8 (x == 0 skipped), each lane summed in order, the lanes added as ((s0+s1)+(s2+s3))+((s4+s5)+(s6+s7))."""
    t = data.dtype.type
    s = [t(0)] * 8
    for k, (a, xv) in enumerate(zip(data, xs)):
        if xv != 0:
            s[k % 8] = t(s[k % 8] + t(a * xv))
    return t(t(t(s[0] + s[1]) + t(s[2] + s[3])) + t(t(s[4] + s[5]) + t(s[6] + s[7])))


@pytest.mark.parametrize("vector", [True, False])
@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(0, 40), st.integers(1, 60), st.sampled_from(["float64", "float32"]),
       st.booleans(), st.booleans(), st.sampled_from([0, 1, 2]))
def test_spmv_plus_times_float_lanes_bit_for_bit(kern, vector, seed, n, m, dtype, narrow, specials, nthreads):
    """Float (plus, times): the twin and every SIMD level (vector gathers on or off, int32 or int64 indices, any
    thread count) give the documented eight-lane sum bit for bit (signed zeros included), on rows of 0 to 60
    real-valued entries with zeros (skipped, even against inf) and, with ``specials``, inf and NaN."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(0, m + 1, n)
    indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    indices = np.concatenate([np.sort(rng.choice(m, k, replace=False)) for k in lens] or [[]]).astype(np.int64)
    data = (rng.standard_normal(indices.size) * 10.0 ** rng.integers(-3, 4, indices.size)).astype(dtype)
    x = rng.standard_normal(m).astype(dtype)
    x[rng.random(m) < 0.2] = 0
    if specials:
        data[rng.random(data.size) < 0.05] = np.inf
        x[rng.random(m) < 0.05] = np.nan
    if kern is not ref:
        kern.set_vector_gather(vector)
    try:
        y = np.full(n, 7, dtype=dtype)
        with np.errstate(invalid="ignore", over="ignore"):
            kern.spmv(indptr, indices.astype(np.int32) if narrow else indices, data, x, y, OP_PLUS, OP_TIMES, 0.0,
                      nthreads=nthreads)
            expect = np.array([lane_sum_row(data[indptr[i]:indptr[i + 1]], x[indices[indptr[i]:indptr[i + 1]]])
                               for i in range(n)], dtype=dtype)
    finally:
        if kern is not ref:
            kern.set_vector_gather(True)
    nan = np.isnan(expect)
    np.testing.assert_array_equal(np.isnan(y), nan)
    assert y[~nan].tobytes() == expect[~nan].tobytes()      # bit for bit (a NaN's payload is not compared)


@pytest.mark.parametrize("level", EXT_LEVELS)
@pytest.mark.parametrize("vector", [True, False])
@pytest.mark.parametrize("bad", [-1, 9, 2**31 - 1])
def test_spmv_plus_times_lanes_reject_a_bad_index(level, vector, bad):
    """A bad column index anywhere in a long row (the vector blocks or the tail) raises and reads nothing."""
    ext = ext_module(level)
    indptr = np.array([0, 11, 22], dtype=np.int64)
    for pos in (3, 10, 20):
        indices = np.tile(np.arange(9, dtype=np.int32), 3)[:22].copy()
        indices[pos] = bad
        ext.set_vector_gather(vector)
        try:
            with pytest.raises(ValueError, match="out of range"):
                ext.spmv(indptr, indices, np.ones(22), np.ones(9), np.zeros(2), OP_PLUS, OP_TIMES, 0.0)
        finally:
            ext.set_vector_gather(True)


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(1, 30), st.integers(1, 30), st.sampled_from(["float64", "float32"]))
def test_spmv_plus_times_equals_scipy(kern, seed, n, m, dtype):
    rng = np.random.default_rng(seed)
    A = sp.random(n, m, density=0.3, format="csr", dtype=dtype, random_state=rng)
    x = rng.standard_normal(m).astype(dtype)
    y = np.full(n, 7, dtype=dtype)
    kern.spmv(A.indptr, A.indices, A.data, x, y, OP_PLUS, OP_TIMES, 0.0)
    np.testing.assert_allclose(y, A @ x, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("level", EXT_LEVELS)
@SETTINGS
@given(params, st.booleans())
def test_push_compiled_matches_twin_and_definition(level, p, narrow):
    (name, dtype), seed, n, m, density = p
    rng = np.random.default_rng(seed)
    # A is (n, m); push takes A.T in CSR form, i.e. the CSR of an (m, n) matrix.
    indptr_t, indices_t, data_t, AT = random_csr(rng, m, n, density, name, dtype)
    z = zero_of(name, dtype)
    idx = rng.integers(0, m, rng.integers(0, m + 1)) if m else np.empty(0, np.int64)
    vals = values(rng, name, dtype, idx.size)
    vals[rng.random(idx.size) < 0.2] = z
    y0 = values(rng, name, dtype, n)
    add, mul, zero = SEMIRINGS[name][:3]
    y_ref = y0.copy()
    ch_ref = ref.push(indptr_t, indices_t, data_t, idx, vals, y_ref, add, mul, zero)
    assert ch_ref.dtype == np.int64
    np.testing.assert_array_equal(ch_ref, np.unique(ch_ref))
    if add in (OP_MIN, OP_MAX):
        # definition: y ⊕ (A ⊗ v) with v the (⊕-combined) sparse vector; changed = where the value moved.
        v = np.full(m, z, dtype=dtype)
        UFUNC[add].at(v, idx, vals)
        expect = np.asarray(UFUNC[add](y0, dense_spmv(AT.T.tocsr(), v, name)), dtype=dtype)
        np.testing.assert_array_equal(y_ref, expect)
        np.testing.assert_array_equal(ch_ref, np.flatnonzero(expect != y0))
    ext = ext_module(level)
    y_ext = y0.copy()
    ch_ext = ext.push(indptr_t, indices_t.astype(np.int32) if narrow else indices_t, data_t, idx, vals, y_ext, add,
                      mul, zero)
    np.testing.assert_array_equal(y_ext, y_ref)
    np.testing.assert_array_equal(ch_ext, ch_ref)


def random_graph(rng, n, density, lo, hi, dtype="float64"):
    """W[u, v] = weight of edge u -> v, weights in [lo, hi] (no self loops), CSR with int64 indices."""
    mask = (rng.random((n, n)) < density) & ~np.eye(n, dtype=bool)
    u, v = np.nonzero(mask)
    W = sp.csr_matrix((rng.integers(lo, hi + 1, u.size).astype(dtype), (u, v)), shape=(n, n))
    W.indptr = W.indptr.astype(np.int64)
    W.indices = W.indices.astype(np.int64)
    return W


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(1, 40), st.floats(0.0, 0.3), st.integers(1, 5),
       st.sampled_from(["float64", "int64"]))
def test_closure_min_plus_equals_dijkstra_and_incremental(kern, seed, n, density, nsrc, dtype):
    rng = np.random.default_rng(seed)
    W = random_graph(rng, n, density, 1, 9, dtype)
    z = zero_of("min_plus", dtype)
    sources = rng.choice(n, min(nsrc, n), replace=False)
    first, later = sources[: max(1, sources.size // 2)], sources[max(1, sources.size // 2):]
    # x = closure of A = W.T; push uses A's transpose = W in CSR.
    x = np.full(n, z, dtype=dtype)
    x[first] = 0
    ch1 = kern.closure(W.indptr, W.indices, W.data, x, first, OP_MIN, OP_PLUS, np.inf)
    expect1 = dijkstra(W, indices=first, min_only=True)
    np.testing.assert_array_equal(np.where(x == z, np.inf, x.astype(float)), expect1)
    np.testing.assert_array_equal(ch1, np.setdiff1d(np.flatnonzero(np.isfinite(expect1)), first))
    x[later] = 0
    kern.closure(W.indptr, W.indices, W.data, x, later, OP_MIN, OP_PLUS, np.inf)
    scratch = np.full(n, z, dtype=dtype)
    scratch[sources] = 0
    kern.closure(W.indptr, W.indices, W.data, scratch, np.flatnonzero(scratch != z), OP_MIN, OP_PLUS, np.inf)
    np.testing.assert_array_equal(x, scratch)
    np.testing.assert_array_equal(np.where(x == z, np.inf, x.astype(float)),
                                  dijkstra(W, indices=sources, min_only=True))


@pytest.mark.parametrize("level", EXT_LEVELS)
@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(1, 60), st.floats(0.0, 0.3), st.integers(1, 6),
       st.sampled_from(["float64", "float32", "int64"]), st.sampled_from([1.0, 0.25, 3.0]))
def test_closure_bucket_queue_equals_heap_and_dijkstra(level, seed, n, density, nsrc, dtype, scale):
    """(min, plus) with a weight range > 0 takes Dial's bucket queue: the same values, changed entries and old
    values as the heap path and the twin, and dijkstra's distances; incrementally from a fixpoint too."""
    ext = ext_module(level)
    rng = np.random.default_rng(seed)
    W = random_graph(rng, n, density, 1, 9, dtype)
    if dtype != "int64":
        W.data = (W.data * scale).astype(dtype)
    if not W.nnz:
        return
    z = zero_of("min_plus", dtype)
    wr = (float(W.data.min()), float(W.data.max()))
    sources = rng.choice(n, min(nsrc, n), replace=False)
    first, later = sources[: max(1, sources.size // 2)], sources[max(1, sources.size // 2):]
    runs = []
    for mod, hint in ((ext, wr), (ext, None), (ref, None)):
        x = np.full(n, z, dtype=dtype)
        x[first] = 0
        mod.closure(W.indptr, W.indices, W.data, x, first, OP_MIN, OP_PLUS, np.inf, None, hint)
        x[later] = 0
        before = x.copy()
        old = np.zeros(n, dtype=dtype)
        ch = mod.closure(W.indptr, W.indices, W.data, x, later, OP_MIN, OP_PLUS, np.inf, old, hint)
        runs.append((x, ch, old[ch], before[ch]))
    for x, ch, old, before in runs:
        np.testing.assert_array_equal(x, runs[1][0])
        np.testing.assert_array_equal(ch, runs[1][1])
        np.testing.assert_array_equal(old, before)
    got = np.where(runs[0][0] == z, np.inf, runs[0][0].astype(np.float64))
    expect = dijkstra(W.astype(np.float64), indices=sources, min_only=True)
    np.testing.assert_allclose(got, expect, rtol=1e-6 if dtype == "float32" else 0)


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(1, 40), st.floats(0.0, 0.3), st.integers(1, 4), st.booleans())
def test_closure_or_and_equals_bfs(kern, seed, n, density, nsrc, as_bool):
    rng = np.random.default_rng(seed)
    W = random_graph(rng, n, density, 1, 1, "uint8")
    sources = rng.choice(n, min(nsrc, n), replace=False)
    x = np.zeros(n, dtype=bool if as_bool else np.uint8)
    x[sources] = 1
    kern.closure(W.indptr, W.indices, W.data.astype(x.dtype), x, sources, OP_MAX, OP_MIN, 0)
    reach = np.zeros(n, dtype=bool)
    for s in sources:
        reach[breadth_first_order(W, s, return_predecessors=False)] = True
    np.testing.assert_array_equal(x.astype(bool), reach)


@pytest.mark.parametrize("level", EXT_LEVELS)
@SETTINGS
@given(st.sampled_from(["min_plus", "max_plus", "max_times", "max_min", "min_max", "or_and"]),
       st.integers(0, 2**32 - 1), st.integers(1, 30), st.floats(0.0, 0.3), st.booleans(), st.booleans())
def test_closure_compiled_matches_twin(level, name, seed, n, density, dag, narrow):
    ext = ext_module(level)
    rng = np.random.default_rng(seed)
    add, mul, zero = SEMIRINGS[name][:3]
    dtype = SEMIRINGS[name][3][0]
    lo, hi = SEMIRINGS[name][4]
    if name == "max_plus":
        lo, hi = (-9, 9) if dag else (-9, 0)      # a positive cycle would not converge
    elif name == "min_plus" and dag:
        lo, hi = -9, 9                             # negative weights: FIFO worklist
    elif name == "max_times":
        lo, hi = 0, 1
    W = random_graph(rng, n, density, lo, hi, dtype)
    if dag:
        W = sp.triu(W, k=1, format="csr")
        W.indptr, W.indices = W.indptr.astype(np.int64), W.indices.astype(np.int64)
    z = zero_of(name, dtype)
    x0 = values(rng, name, dtype, n)
    x0[rng.random(n) < 0.5] = z
    for frontier in (np.flatnonzero(x0 != z), rng.integers(0, n, 3)):
        xr, xe = x0.copy(), x0.copy()
        chr_ = ref.closure(W.indptr, W.indices, W.data, xr, frontier, add, mul, zero)
        che = ext.closure(W.indptr, W.indices.astype(np.int32) if narrow else W.indices, W.data, xe, frontier, add,
                          mul, zero)
        np.testing.assert_array_equal(xe, xr)
        np.testing.assert_array_equal(che, chr_)


@pytest.mark.parametrize("negative_weights", [False, True])
def test_closure_min_plus_matches_bellman_ford(kern, negative_weights):
    rng = np.random.default_rng(3)
    W = random_graph(rng, 60, 0.08, 1, 9)
    if negative_weights:
        W = sp.triu(W, k=1, format="csr")
        W.data -= 4.0
        W.indptr, W.indices = W.indptr.astype(np.int64), W.indices.astype(np.int64)
    x = np.full(60, np.inf)
    x[[0, 5]] = 0.0
    kern.closure(W.indptr, W.indices, W.data, x, [0, 5], OP_MIN, OP_PLUS, np.inf)
    expect = bellman_ford(W, indices=[0, 5]).min(axis=0)
    np.testing.assert_array_equal(x, expect)


def test_closure_negative_cycle_raises(kern):
    W = sp.csr_matrix(np.array([[0, 1.0, 0], [0, 0, -2.0], [0.5, 0, 0]]))
    W.indptr, W.indices = W.indptr.astype(np.int64), W.indices.astype(np.int64)
    x = np.array([0.0, np.inf, np.inf])
    with pytest.raises(ValueError, match="closure does not converge"):
        kern.closure(W.indptr, W.indices, W.data, x, [0], OP_MIN, OP_PLUS, np.inf)


def test_validation(kern):
    indptr = np.array([0, 1, 2], dtype=np.int64)
    indices = np.array([1, 0], dtype=np.int64)
    data = np.array([1.0, 2.0])
    x = np.array([1.0, 2.0])
    y = np.zeros(2)
    with pytest.raises(ValueError):
        kern.spmv(indptr, indices, data, x, y, 7, OP_TIMES, 0.0)
    with pytest.raises(ValueError):
        kern.spmv(indptr, indices, data, x, np.zeros(3), OP_PLUS, OP_TIMES, 0.0)
    with pytest.raises(ValueError):
        kern.spmv(indptr, indices, data[:1], x, y, OP_PLUS, OP_TIMES, 0.0)
    with pytest.raises(ValueError):
        kern.spmv(indptr, indices, data, x, y, OP_PLUS, OP_TIMES, 0.0, rows=np.array([2]))
    with pytest.raises(ValueError):
        kern.spmv(indptr, indices, data, x.astype(np.int32), y.astype(np.int32), OP_PLUS, OP_TIMES, 0)
    with pytest.raises(ValueError):
        kern.spmv(indptr, indices, data, x, y.astype(np.float32), OP_PLUS, OP_TIMES, 0.0)
    ro = np.zeros(2)
    ro.flags.writeable = False
    with pytest.raises(ValueError):
        kern.spmv(indptr, indices, data, x, ro, OP_PLUS, OP_TIMES, 0.0)
    with pytest.raises(ValueError):
        kern.push(indptr, indices, data, np.array([2]), np.array([1.0]), y, OP_MIN, OP_PLUS, np.inf)
    with pytest.raises(ValueError):
        kern.push(indptr, indices, data, np.array([0, 1]), np.array([1.0]), y, OP_MIN, OP_PLUS, np.inf)
    with pytest.raises(ValueError):
        kern.closure(indptr, indices, data, y, [0], OP_PLUS, OP_TIMES, 0.0)
    with pytest.raises(ValueError):
        kern.closure(indptr, indices, data, y, [-1], OP_MIN, OP_PLUS, np.inf)
    with pytest.raises(ValueError):
        kern.closure(indptr, indices, data, np.zeros(3), [0], OP_MIN, OP_PLUS, np.inf)
    with pytest.raises(ValueError):
        kern.spmv(indptr, indices, data.astype(np.int8), x.astype(np.int8), y.astype(np.int8), OP_MIN,
                  OP_PLUS, 1000)
    np.testing.assert_array_equal(y, 0.0)
    # indices out of range are caught while the loop runs (the compiled output may then be partly written)
    with pytest.raises(ValueError):
        kern.spmv(indptr, np.array([1, 5]), data, x, y.copy(), OP_PLUS, OP_TIMES, 0.0)
    with pytest.raises(ValueError):
        kern.push(indptr, np.array([1, 5]), data, np.array([1]), np.array([1.0]), y.copy(), OP_MIN, OP_PLUS,
                  np.inf)
    with pytest.raises(ValueError):
        kern.closure(indptr, np.array([1, 5]), data, y.copy(), [1], OP_MIN, OP_PLUS, np.inf)


def test_integer_zero_maps_infinity(kern):
    indptr = np.array([0, 2, 2], dtype=np.int64)
    indices = np.array([0, 1], dtype=np.int64)
    data = np.array([3, 4], dtype=np.int32)
    x = np.array([1, np.iinfo(np.int32).max], dtype=np.int32)
    y = np.zeros(2, dtype=np.int32)
    kern.spmv(indptr, indices, data, x, y, OP_MIN, OP_PLUS, np.inf)
    np.testing.assert_array_equal(y, [4, np.iinfo(np.int32).max])


@SETTINGS
@given(params, st.sampled_from([0, 1, 2]), st.booleans())
def test_spmv_old_out_keeps_old_values_and_counts_changes(kern, p, nthreads, narrow):
    """``old_out``: y's values before the call, the same y as without it, and the number of rows that changed
    (NaN equal to NaN) as numpy counts it."""
    (name, dtype), seed, n, m, density = p
    rng = np.random.default_rng(seed)
    indptr, indices, data, _ = random_csr(rng, n, m, density, name, dtype)
    x = values(rng, name, dtype, m)
    x[rng.random(m) < 0.2] = zero_of(name, dtype)
    add, mul, zero = SEMIRINGS[name][:3]
    y0 = values(rng, name, dtype, n)
    if n and rng.random() < 0.5:
        y_plain = y0.copy()
        kern.spmv(indptr, indices, data, x, y_plain, add, mul, zero)
        y0[: n // 2] = y_plain[: n // 2]                 # some rows already hold their new value
    y_plain, y = y0.copy(), y0.copy()
    kern.spmv(indptr, indices, data, x, y_plain, add, mul, zero, nthreads=nthreads)
    old = np.full(n, 3, dtype=dtype)
    moved = kern.spmv(indptr, indices.astype(np.int32) if narrow else indices, data, x, y, add, mul, zero,
                      nthreads=nthreads, old_out=old)
    np.testing.assert_array_equal(old, y0)
    np.testing.assert_array_equal(y, y_plain)
    diff = y != y0
    if y.dtype.kind == "f":
        diff &= ~(np.isnan(y) & np.isnan(y0))
    assert moved == int(np.count_nonzero(diff))


def test_spmv_old_out_validation(kern):
    indptr = np.array([0, 1, 2], dtype=np.int64)
    indices = np.array([1, 0], dtype=np.int64)
    data, x, y = np.array([1.0, 2.0]), np.array([1.0, 2.0]), np.zeros(2)
    for bad in (np.zeros(3), np.zeros(2, dtype=np.float32), [0.0, 0.0]):
        with pytest.raises(ValueError, match="old_out"):
            kern.spmv(indptr, indices, data, x, y, OP_PLUS, OP_TIMES, 0.0, old_out=bad)
    with pytest.raises(ValueError, match="rows=None"):
        kern.spmv(indptr, indices, data, x, y, OP_PLUS, OP_TIMES, 0.0, rows=np.array([0]), old_out=np.zeros(2))
    np.testing.assert_array_equal(y, [0.0, 0.0])         # nothing was written

"""Matrix-page kernels (mmsb._ext.repair): the compiled module equals its numpy twin, and both equal independent
references (a dict model of the matrix, scipy's shortest paths, a closure recomputed from scratch)."""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.sparse.csgraph import dijkstra, shortest_path

from mmsb import _kernels
from mmsb._ops import OP_ASSIGN, OP_MAX, OP_MIN, OP_PLUS
from mmsb._ref import repair as ref
from mmsb._ref import spmv as ref_spmv

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KERNELS = [ref] + ([_kernels.repair] if _kernels.KIND == "compiled" else [])
IDS = ["ref"] + (["compiled"] if _kernels.KIND == "compiled" else [])


def slotted(rng, n, m, density, free):
    """A CSR (int64 indptr, int32 indices) whose rows hold live entries and free slots (value ``free``), the
    free slots sometimes carrying the column of a live entry of their row; and its dict model."""
    rows, cols, vals = [], [], []
    model = {}
    indptr = [0]
    for r in range(n):
        live = rng.choice(m, size=int(rng.binomial(m, density)), replace=False) if m else []
        slots = [(int(c), float(rng.integers(1, 9))) for c in live]
        for c, v in slots:
            model[(r, c)] = v
        for _ in range(int(rng.integers(0, 3))):
            c = int(slots[0][0]) if slots and rng.random() < 0.3 else int(rng.integers(0, m))
            slots.append((c, free))
        rng.shuffle(slots)
        for c, v in slots:
            rows.append(r)
            cols.append(c)
            vals.append(v)
        indptr.append(len(cols))
    return (np.array(indptr, dtype=np.int64), np.array(cols, dtype=np.int32), np.array(vals, dtype=np.float64),
            model)


def model_of(indptr, indices, data, free):
    out = {}
    for r in range(indptr.size - 1):
        for p in range(indptr[r], indptr[r + 1]):
            if free is None or data[p] != free:
                assert (r, int(indices[p])) not in out, "a live entry stored twice"
                out[(r, int(indices[p]))] = float(data[p])
    return out


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 12), m=st.integers(1, 12))
@SETTINGS
def test_locate_matches_the_dict_model_and_the_twin(seed, n, m):
    rng = np.random.default_rng(seed)
    indptr, indices, data, model = slotted(rng, n, m, 0.3, np.inf)
    k = int(rng.integers(0, 15))
    rows, cols = rng.integers(0, n, k), rng.integers(0, m, k)
    got = [kern.locate(indptr, indices, data, rows, cols, np.inf, np.inf) for kern in KERNELS]
    want = np.array([model.get((int(r), int(c)), np.inf) for r, c in zip(rows, cols)])
    for vals, pos in got:
        np.testing.assert_array_equal(vals, want)
        live = np.isfinite(want)
        np.testing.assert_array_equal(data[pos[live]], want[live])
        np.testing.assert_array_equal(indices[pos[pos >= 0]], cols[pos >= 0])
    np.testing.assert_array_equal(got[0][1], got[-1][1])


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 10), m=st.integers(1, 10), slots=st.booleans(),
       accumulate=st.booleans(), scalar=st.booleans())
@SETTINGS
def test_update_matches_the_dict_model_and_the_twin(seed, n, m, slots, accumulate, scalar):
    rng = np.random.default_rng(seed)
    free = (np.float64(np.inf) if scalar else np.inf) if slots else None
    indptr, indices, data, model = slotted(rng, n, m, 0.4, np.inf)
    if not slots:                                   # every slot an entry: the live ones only
        rc = sorted(model)
        indptr = np.searchsorted([r for r, _ in rc], np.arange(n + 1)).astype(np.int64)
        indices = np.array([c for _, c in rc], dtype=np.int32)
        data = np.array([model[e] for e in rc], dtype=np.float64)
    T = sp.csr_array((data, indices, indptr), shape=(n, m)).T.tocsr() if not slots else None
    k = int(rng.integers(0, 12))
    keys = np.unique(rng.integers(0, n * m, k)).astype(np.int64)
    vals = np.where(rng.random(keys.size) < 0.3, np.inf, rng.integers(1, 9, keys.size)).astype(np.float64)
    results = []
    for kern in KERNELS:
        ip, ix, dv = indptr.copy(), indices.copy(), data.copy()
        extra = () if T is None else (T.indptr.astype(np.int64), T.indices.astype(np.int32), T.data.copy())
        got = kern.update(ip, ix, dv, m, keys, vals, OP_MIN if accumulate else OP_ASSIGN,
                          np.float64(np.inf) if scalar else np.inf, free, *extra)
        results.append((got, ip, ix, dv, extra))
    want = dict(model)
    changed = []
    for key, v in zip(keys.tolist(), vals.tolist()):
        r, c = divmod(key, m)
        old = want.get((r, c), np.inf)
        new = min(old, v) if accumulate else v
        if new != old:
            changed.append((key, old, new))
            if new == np.inf:
                want.pop((r, c), None)
            else:
                want[(r, c)] = new
    for got, ip, ix, dv, extra in results:
        if not changed:
            assert got is None
            continue
        idx, _, _, old, new = got[:5]
        assert idx.tolist() == [c[0] for c in changed]
        assert old.tolist() == [c[1] for c in changed] and new.tolist() == [c[2] for c in changed]
        misses, miss = got[10], got[8]
        if not misses:
            assert model_of(ip, ix, dv, free) == want
        else:                                       # the undone changes are exactly what the model lacks
            assert not miss[~miss].any() and int(miss.sum()) == misses
    if len(results) == 2 and results[0][0] is not None:
        a, b = results[0][0], results[1][0]
        for x, y in zip(a[:10], b[:10]):
            np.testing.assert_array_equal(x, y)
        assert a[10:] == b[10:]
        np.testing.assert_array_equal(results[0][3], results[1][3])


def _grid_closure(rng, n, density, sr):
    W = sp.random(n, n, density=density, random_state=rng, format="csr")
    W.data = rng.integers(1, 10, W.nnz).astype(np.float64)
    src_idx = rng.choice(n, max(1, n // 6), replace=False)
    return W, src_idx


def _closure_of(A, src, add_op, mul_op, zero):
    """The closure y = src ⊕ A ⊗ y recomputed from scratch with the twin."""
    T = A.T.tocsr()
    T.sort_indices()
    y = src.copy()
    ref_spmv.closure(T.indptr.astype(np.int64), T.indices.astype(np.int64), T.data, y,
                     np.flatnonzero(y != zero).astype(np.int64), add_op, mul_op, zero)
    return y


@pytest.mark.parametrize("semiring", ["min_plus", "max_min"])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 30), limit=st.sampled_from([-1, 3]), scalar=st.booleans())
@SETTINGS
def test_repair_equals_a_recompute_and_the_twin(semiring, seed, n, limit, scalar):
    rng = np.random.default_rng(seed)
    add_op, mul_op, zero = (OP_MIN, OP_PLUS, np.inf) if semiring == "min_plus" else (OP_MAX, OP_MIN, -np.inf)
    W, src_idx = _grid_closure(rng, n, rng.uniform(0.05, 0.3), semiring)
    A = W.T.tocsr()
    src = np.full(n, zero)
    src[src_idx] = 0.0 if semiring == "min_plus" else np.inf
    Ad = np.where(A.toarray() != 0, A.toarray(), zero)
    y0 = _closure_of(sp.csr_array(np.where(Ad != zero, Ad, 0)), src, add_op, mul_op, zero)
    k = int(rng.integers(1, 7))
    keys = np.unique(rng.integers(0, n * n, k)).astype(np.int64)
    r, c = np.divmod(keys, n)
    old = Ad[r, c].copy()
    Ad[r, c] = np.where(rng.random(keys.size) < 0.3, zero, rng.integers(1, 10, keys.size).astype(float))
    A2 = sp.csr_array(np.where(Ad != zero, Ad, 0))
    A2.sort_indices()
    T2 = A2.T.tocsr()
    T2.sort_indices()
    want = _closure_of(A2, src, add_op, mul_op, zero)
    if semiring == "min_plus":                      # and an independent reference
        np.testing.assert_array_equal(want, dijkstra(A2.T.tocsr(), indices=src_idx, min_only=True))
    outs = []
    for kern in KERNELS:
        y = y0.copy()
        mark = np.zeros(n, dtype=np.uint8)
        # (a numpy scalar zero takes the compiled kernel's unchecked path, a Python float its checked one)
        got = kern.repair(A2.indptr.astype(np.int64), A2.indices.astype(np.int32), A2.data,
                          T2.indptr.astype(np.int64), T2.indices.astype(np.int32), T2.data, y, src, keys, old,
                          add_op, mul_op, np.float64(zero) if scalar else zero, None, limit, mark,
                          np.empty_like(y))
        assert not mark.any()                       # the scratch comes back clear
        status, idx, olds, nregion, nonfinite = got
        if status == kern.TOO_LARGE:
            assert nregion == 0 and idx is None
            np.testing.assert_array_equal(y, y0)    # untouched
        else:
            assert status == kern.OK
            np.testing.assert_array_equal(y, want)
            exp = np.flatnonzero(want != y0)
            np.testing.assert_array_equal(idx, exp)
            np.testing.assert_array_equal(olds, y0[exp])
            assert nonfinite == bool(not np.isfinite(want[exp]).all())
            assert limit < 0 or nregion <= limit
        outs.append((status, nregion))
    assert outs[0] == outs[-1]


@pytest.mark.parametrize("kern", KERNELS, ids=IDS)
def test_repair_reports_a_nan_entry_and_changes_nothing(kern):
    A = sp.csr_array(np.array([[0.0, np.nan], [1.0, 0.0]]))
    T = A.T.tocsr()
    y = np.array([0.0, 1.0])
    got = kern.repair(A.indptr.astype(np.int64), A.indices.astype(np.int64), A.data, T.indptr.astype(np.int64),
                      T.indices.astype(np.int64), T.data, y, np.array([0.0, np.inf]), np.array([1]),
                      np.array([2.0]), OP_MIN, OP_PLUS, np.inf)
    assert got[0] == kern.NAN_ENTRY and got[1] is None
    np.testing.assert_array_equal(y, [0.0, 1.0])


@pytest.mark.parametrize("kern", KERNELS, ids=IDS)
def test_repair_of_a_negative_cycle_raises(kern):
    A = sp.csr_array(np.array([[0.0, -2.0], [1.0, 0.0]]))      # 0 -> 1 (1.0), 1 -> 0 (-2.0): a negative cycle
    T = A.T.tocsr()
    y = np.array([0.0, 1.0])
    with pytest.raises(ValueError, match="converge"):
        kern.repair(A.indptr.astype(np.int64), A.indices.astype(np.int64), A.data, T.indptr.astype(np.int64),
                    T.indices.astype(np.int64), T.data, y, np.array([0.0, np.inf]), np.array([1]),
                    np.array([np.inf]), OP_MIN, OP_PLUS, np.inf)


@pytest.mark.parametrize("dtype", ["float64", "float32", "int64", "int32", "int16", "uint8", "bool"])
def test_update_and_repair_take_every_dtype_and_give_its_values_back_in_it(dtype):
    """A path 0 -> 1 -> 2 -> 3 (A[i + 1, i] = 1, every row with a free slot) under min_plus on floats and max_min
    on integers and bool (the semirings whose free slots are absent entries there): the entry 1 -> 2 is removed,
    then put back. Each step gives the closure worked out by hand, in the dtype given, in both implementations,
    with a numpy scalar zero (the compiled unchecked path) and a Python one (its checked path)."""
    dt = np.dtype(dtype)
    one = dt.type(1)
    if dt.kind == "f":
        add_op, mul_op, zero, top = OP_MIN, OP_PLUS, dt.type(np.inf), dt.type(0)
        full, cut = np.array([0, 1, 2, 3], dtype=dt), np.array([0, 1, zero, zero], dtype=dt)
    else:
        lo, hi = (False, True) if dt.kind == "b" else (np.iinfo(dt).min, np.iinfo(dt).max)
        add_op, mul_op, zero, top = OP_MAX, OP_MIN, dt.type(lo), dt.type(hi)
        full, cut = np.array([top, one, one, one], dtype=dt), np.array([top, one, zero, zero], dtype=dt)
    src = np.array([top, zero, zero, zero], dtype=dt)
    for kern in KERNELS:
        for given_zero in (zero, zero.item()):
            indptr, indices = np.array([0, 1, 3, 5, 7], np.int64), np.array([0, 0, 0, 1, 1, 2, 2], np.int32)
            data = np.array([zero, one, zero, one, zero, one, zero], dtype=dt)
            t_ptr, t_ind = np.array([0, 2, 4, 6, 7], np.int64), np.array([1, 1, 2, 2, 3, 3, 3], np.int32)
            t_data = np.array([one, zero, one, zero, one, zero, zero], dtype=dt)
            y = full.copy()
            for value, want in ((zero, cut), (one, full)):
                got = kern.update(indptr, indices, data, 4, np.array([2 * 4 + 1]), np.array([value], dtype=dt),
                                  OP_ASSIGN, given_zero, given_zero, t_ptr, t_ind, t_data)
                was = one if value == zero else zero
                assert got[3].dtype == dt and got[4].dtype == dt and (got[3][0], got[4][0]) == (was, value)
                before = y.copy()
                status, idx, olds, _, _ = kern.repair(indptr, indices, data, t_ptr, t_ind, t_data, y, src, got[0],
                                                      got[3], add_op, mul_op, given_zero, given_zero)
                assert status == kern.OK and y.dtype == dt and olds.dtype == dt
                np.testing.assert_array_equal(y, want)
                np.testing.assert_array_equal(idx, np.flatnonzero(y != before))
                np.testing.assert_array_equal(olds, before[idx])


@pytest.mark.parametrize("kern", KERNELS, ids=IDS)
def test_kernels_refuse_bad_arguments(kern):
    ip, ix, dv = np.array([0, 1, 2], np.int64), np.array([1, 0], np.int64), np.array([1.0, 2.0])
    with pytest.raises(ValueError):
        kern.locate(ip, ix, dv, np.array([2]), np.array([0]), np.inf)          # row out of range
    with pytest.raises(ValueError):
        kern.update(ip, ix.copy(), dv.copy(), 2, np.array([4]), np.array([1.0]), OP_ASSIGN, np.inf)  # key
    with pytest.raises(ValueError):
        kern.assign(ip, ix.copy(), dv.copy(), 2, np.array([0]), np.array([5]), np.array([1.0]),
                    np.array([True]))                                          # column out of range
    with pytest.raises(ValueError):
        kern.repair(ip, ix, dv, ip, ix, dv, np.zeros(3), np.zeros(3), np.array([0]), np.array([1.0]), OP_MIN,
                    OP_PLUS, np.inf)                                           # y of the wrong length
    with pytest.raises(ValueError):
        kern.repair(ip, ix, dv, ip, ix, dv, np.zeros(2), np.zeros(2), np.array([0]), np.array([1.0]), OP_PLUS,
                    OP_PLUS, np.inf)                                           # ⊕ not idempotent


# ------------------------------------------------------------------------------------------------ reachability

def _bfs_levels(D, src):
    """Hop counts from the nearest source along the edges c -> r of the bool matrix ``D[r, c]`` (scipy's
    unweighted shortest paths from every source; inf where unreached)."""
    n = D.shape[0]
    if not src.any():
        return np.full(n, np.inf)
    d = shortest_path(sp.csr_array(D.T.astype(np.float64)), unweighted=True, directed=True,
                      indices=np.flatnonzero(src))
    return np.atleast_2d(d).min(axis=0)


def _bool_csr(rng, D, slots):
    """``D`` in CSR form (int64 indptr, int32 indices, bool data as uint8), with free slots (False entries, some
    on the column of a live entry of their row) when ``slots``."""
    indptr, cols, vals = [0], [], []
    n = D.shape[0]
    for r in range(n):
        row = [(int(c), 1) for c in np.flatnonzero(D[r])]
        if slots:
            for _ in range(int(rng.integers(0, 3))):
                row.append((row[0][0] if row and rng.random() < 0.3 else int(rng.integers(0, n)), 0))
            rng.shuffle(row)
        cols += [c for c, _ in row]
        vals += [v for _, v in row]
        indptr.append(len(cols))
    return np.array(indptr, np.int64), np.array(cols, np.int32), np.array(vals, np.uint8)


def _level_of(level):
    return np.where(level == np.iinfo(level.dtype).max, np.inf, level.astype(np.float64))


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 25), slots=st.booleans(),
       wide=st.booleans(), steps=st.integers(1, 6))
@SETTINGS
def test_reach_keeps_bfs_levels_through_a_history_and_equals_the_twin(seed, n, slots, wide, steps):
    """A history of entry insertions, removals and source switches: after every step the levels equal scipy's
    unweighted shortest paths from the sources, y their reachability, the changes reported are exactly those of
    y, the scratch comes back clear, and the compiled kernel and the twin agree (affected counts included)."""
    rng = np.random.default_rng(seed)
    D = rng.random((n, n)) < rng.uniform(0.02, 0.3)
    src = rng.random(n) < rng.uniform(0.0, 0.3)
    ldt = np.int64 if wide else np.int32
    state = []
    for kern in KERNELS:
        y, level = np.zeros(n, np.uint8), np.zeros(n, ldt)
        ip, ix, dv = _bool_csr(np.random.default_rng(seed), D, slots)
        T = sp.csr_array((dv, ix, ip), shape=(n, n)).T.tocsr()
        idx, olds = kern.reach_build(T.indptr.astype(np.int64), T.indices.astype(np.int32), T.data, y, src, level)
        np.testing.assert_array_equal(_level_of(level), _bfs_levels(D, src))
        np.testing.assert_array_equal(idx, np.flatnonzero(y))       # (y started all False)
        np.testing.assert_array_equal(olds, np.zeros(idx.size, np.uint8))
        state.append((y, level))
    for _ in range(steps):
        k = int(rng.integers(0, 8))
        keys = np.unique(rng.integers(0, n * n, k)).astype(np.int64)
        r, c = np.divmod(keys, n)
        old = D[r, c].copy()
        D[r, c] = rng.random(keys.size) < 0.4
        points = rng.integers(0, n, int(rng.integers(0, 3))).astype(np.int64)     # duplicates allowed
        src[points] = rng.random(points.size) < 0.5
        want = _bfs_levels(D, src)
        ip, ix, dv = _bool_csr(rng, D, slots)
        T = sp.csr_array((dv, ix, ip), shape=(n, n)).T.tocsr()
        regions = []
        for kern, (y, level) in zip(KERNELS, state):
            y0 = y.copy()
            mark = np.zeros(n, np.uint8)
            idx, olds, region = kern.reach(ip, ix, dv, T.indptr.astype(np.int64), T.indices.astype(np.int32),
                                           T.data, y, src, level, keys, old, points, mark, np.empty(n, np.uint8))
            assert not mark.any()
            np.testing.assert_array_equal(_level_of(level), want)
            np.testing.assert_array_equal(y, np.isfinite(want))
            np.testing.assert_array_equal(idx, np.flatnonzero(y != y0))
            np.testing.assert_array_equal(olds, y0[idx])
            regions.append(region)
        assert regions[0] == regions[-1]


def test_reach_region_is_what_the_deletion_affects():
    """On a path 0 -> 1 -> ... -> 9 with a second route 0 -> 5, removing 3 -> 4 raises only 4 (5 keeps level 1);
    removing 0 -> 1 then raises 1, 2, 3 (4 is reached from 5 no more: no edge 5 -> 4)."""
    n = 10
    D = np.zeros((n, n), bool)
    D[np.arange(1, n), np.arange(n - 1)] = True
    D[5, 0] = True
    src = np.zeros(n, bool)
    src[0] = True
    for kern in KERNELS:
        Dk = D.copy()
        y, level = np.zeros(n, bool), np.zeros(n, np.int32)
        A = sp.csr_array(Dk)
        T = A.T.tocsr()
        kern.reach_build(T.indptr.astype(np.int64), T.indices, T.data, y, src, level)
        assert level.tolist() == [0, 1, 2, 3, 4, 1, 2, 3, 4, 5]
        for (r, c), moved, region in (((4, 3), [4], 1), ((1, 0), [1, 2, 3], 3)):
            Dk[r, c] = False
            A = sp.csr_array(Dk)
            T = A.T.tocsr()
            idx, _, got = kern.reach(A.indptr.astype(np.int64), A.indices, A.data, T.indptr.astype(np.int64),
                                     T.indices, T.data, y, src, level, [r * n + c], [True], [])
            assert idx.tolist() == moved and got == region
        np.testing.assert_array_equal(_level_of(level), _bfs_levels(Dk, src))


@pytest.mark.parametrize("kern", KERNELS, ids=IDS)
def test_reach_refuses_bad_arguments_and_leaves_y_alone(kern):
    A = sp.csr_array(np.array([[False, True], [True, False]]))
    ip, ix, dv = A.indptr.astype(np.int64), A.indices.astype(np.int64), A.data
    src = np.array([True, False])
    y, level = np.zeros(2, bool), np.zeros(2, np.int32)
    kern.reach_build(ip, ix, dv, y, src, level)
    assert y.tolist() == [True, True] and level.tolist() == [0, 1]
    bad = [
        {"level": np.zeros(3, np.int32)},                      # level of the wrong length
        {"level": np.zeros(2, np.float64)},                    # level not an integer array
        {"y": np.zeros(3, bool)},                              # y of the wrong length
        {"src": np.zeros(3, bool)},                            # src of the wrong length
        {"y": np.zeros(2, np.float64)},                        # y not bool
        {"keys": [4]},                                         # key out of range (n * n = 4)
        {"keys": [1, 2]},                                      # keys and old differ in length
        {"points": [2]},                                       # source position out of range
        {"points": [-1]},
        {"mark": np.zeros(3, np.uint8)},                       # scratch of the wrong length
        {"ip": np.array([0, 1, 3], np.int64)},                 # indptr past the end of indices
    ]
    for change in bad:
        args = {"ip": ip, "ix": ix, "dv": dv, "y": y, "src": src, "level": level.copy(), "keys": [1],
                "old": [True], "points": [], "mark": None}
        args.update(change)
        before = args["y"].copy()
        with pytest.raises(ValueError):
            kern.reach(args["ip"], args["ix"], args["dv"], ip, ix, dv, args["y"], args["src"], args["level"],
                       args["keys"], args["old"], args["points"], args["mark"])
        np.testing.assert_array_equal(args["y"], before)
    with pytest.raises(ValueError):
        kern.reach_build(ip, ix, dv, y, src, np.zeros(1, np.int64))
    with pytest.raises(ValueError):
        kern.reach_build(ip, np.array([2, 0], np.int64), dv, np.zeros(2, bool), src, np.zeros(2, np.int32))
    assert y.tolist() == [True, True]


@pytest.mark.parametrize("kern", KERNELS)
def test_update_refuses_a_negative_column_count(kern):
    indptr, indices, data = np.array([0, 1, 2]), np.array([0, 1]), np.array([1.0, 2.0])
    with pytest.raises(ValueError):
        kern.update(indptr, indices, data, -1, np.array([10 ** 15]), np.array([5.0]), -1, np.float64(0))
    np.testing.assert_array_equal(data, [1.0, 2.0])


def test_a_matrix_of_a_dtype_without_kernels_is_refused_at_creation():
    import mmsb
    from mmsb.errors import InvalidDeltaError

    buf = mmsb.open(None)
    with pytest.raises(InvalidDeltaError, match="no matrix kernels"):
        buf.create_matrix("M", (3, 3), dtype=np.longdouble)
    assert "M" not in buf


# ------------------------------------------------------------------------------------ index dtypes, validation

def test_a_matrix_and_its_transpose_get_one_index_dtype():
    """The index dtype depends on both dimensions, so that a matrix with one dimension of 2**31 - 1 or more and
    its transpose agree (``update`` changes the pair in one call and requires it)."""
    from mmsb.csr import index_dtype

    big = 2**31 - 1
    for dtype in ("float64", "float32", "bool", "int64", "uint8"):
        for shape in ((3, big), (3, big + 1), (big, 3), (3, big - 1), (5, 7), (0, 0)):
            assert index_dtype(shape, dtype) == index_dtype(shape[::-1], dtype)
        assert index_dtype((3, big), dtype) == np.int64
        assert index_dtype(5, dtype) == index_dtype((5, 5), dtype)
    assert index_dtype((3, big - 1), "float64") == np.int32
    assert index_dtype((3, big), "float64") == np.int64
    assert index_dtype((5, 7), "int64") == np.int64


def test_a_transpose_keeps_the_matrix_index_dtype_and_update_takes_the_pair():
    """A CSR whose indices are int64 (as one with a dimension past int32 has) gets a transpose with int64
    indices too, and ``update`` changes both (a small matrix stands for the large one: only the dtypes matter)."""
    from mmsb.csr import CSR

    dense = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 2.0], [3.0, 0.0, 4.0]])
    S = sp.csr_array(dense)
    A = CSR((3, 3), S.indptr.astype(np.int64), S.indices.astype(np.int64), S.data.copy())
    T = A.T
    assert T.indices.dtype == A.indices.dtype == np.int64
    got = _kernels.repair.update(A.indptr, A.indices, A.data, 3, np.array([1 * 3 + 2]), np.array([7.0]),
                                 OP_ASSIGN, np.float64(0), None, T.indptr, T.indices, T.data)
    assert got is not None and got[10] == 0 and got[12] == 0          # no misses: both changed in place
    dense[1, 2] = 7.0
    np.testing.assert_array_equal(sp.csr_array((A.data, A.indices, A.indptr), shape=(3, 3)).toarray(), dense)
    np.testing.assert_array_equal(sp.csr_array((T.data, T.indices, T.indptr), shape=(3, 3)).toarray(), dense.T)


def _pair(index_t=np.int32):
    """A = [[0, 1, 0], [0, 0, 2], [3, 0, 0]] in CSR and its transpose (indices of ``index_t``)."""
    A = (np.array([0, 1, 2, 3], np.int64), np.array([1, 2, 0], np.int32), np.array([1.0, 2.0, 3.0]))
    T = (np.array([0, 1, 2, 3], np.int64), np.array([2, 0, 1], index_t), np.array([3.0, 1.0, 2.0]))
    return A, T


@pytest.mark.parametrize("kern", KERNELS, ids=IDS)
def test_update_refuses_mixed_index_dtypes_and_changes_nothing(kern):
    (ip, ix, dv), (ipt, ixt, dvt) = _pair(np.int64)
    before = [a.copy() for a in (ix, dv, ixt, dvt)]
    with pytest.raises(ValueError, match="dtypes of the matrix"):
        kern.update(ip, ix, dv, 3, np.array([1]), np.array([5.0]), OP_ASSIGN, np.float64(0), None, ipt, ixt, dvt)
    for a, b in zip((ix, dv, ixt, dvt), before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kern", KERNELS, ids=IDS)
@pytest.mark.parametrize("free", [None, np.inf])
def test_update_checks_the_transpose_before_changing_the_matrix(kern, free):
    """A transpose whose row of a changed column is malformed (it starts past its end; the row pointers still
    start at 0 and end at its length) is refused before the matrix changes, by the kernel and its twin."""
    (ip, ix, dv), (ipt, ixt, dvt) = _pair()
    if free is not None:
        dv, dvt = dv.copy(), dvt.copy()
    ipt = np.array([0, 2, 1, 3], np.int64)              # row 1 of the transpose (column 1 of A): [2, 1)
    before = [a.copy() for a in (ix, dv, ixt, dvt)]
    for key, val in ((0 * 3 + 1, 5.0), (2 * 3 + 1, 6.0)):  # a change in place, an insertion (column 1 both)
        with pytest.raises(ValueError, match="out of range"):
            kern.update(ip, ix, dv, 3, np.array([key]), np.array([val]), OP_ASSIGN, np.float64(np.inf)
                        if free is not None else np.float64(0), free, ipt, ixt, dvt)
        for a, b in zip((ix, dv, ixt, dvt), before):
            np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------- out of memory

_OOM_SCRIPT = r"""
import json, resource, sys
import numpy as np
from mmsb import _kernels

rep = _kernels.repair
n = 1 << 21
ids = np.arange(n, dtype=np.int64)
# the chain 0 -> 1 -> ... -> n-1 (A[i + 1, i]): row i of A holds column i - 1, row i of A.T column i + 1
ip = np.r_[0, np.arange(n, dtype=np.int64)]
ix = np.arange(n - 1, dtype=np.int32)
ipt = np.r_[np.arange(n, dtype=np.int64), n - 1]
ixt = np.arange(1, n, dtype=np.int32)
src = np.full(n, np.inf)
src[0] = 0.0
bsrc = np.zeros(n, np.uint8)
bsrc[0] = 1
mark = np.zeros(n, np.uint8)
old_out = np.empty(n)
bold_out = np.empty(n, np.uint8)
# the entry 1 <- 0 removed (stored as a free slot, inf / False): everything downstream is in the region
dv = np.ones(n - 1)
dv[0] = np.inf
bdv = np.ones(n - 1, np.uint8)
bdv[0] = 0


def vm_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024


def attempt(kind, budget):
    y = ids.astype(np.float64)
    by, lev = np.ones(n, np.uint8), ids.astype(np.int32)
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + budget, hard))
    err = ""
    try:
        if kind == "repair":
            rep.repair(ip, ix, dv, ipt, ixt, dv, y, src, np.array([n]), np.array([1.0]), 2, 0, np.inf, np.inf,
                       -1, mark, old_out)
        else:
            rep.reach(ip, ix, bdv, ipt, ixt, bdv, by, bsrc, lev, np.array([n]), np.array([1], np.uint8),
                      np.zeros(0, np.int64), mark, bold_out)
    except MemoryError as exc:
        err = str(exc) or "MemoryError"
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
    return {"kind": kind, "budget": budget, "error": err, "marks_left": int(np.count_nonzero(mark))}


out = [attempt(kind, 1 << b) for kind in ("repair", "reach") for b in range(16, 28)]
print(json.dumps(out))
"""


@pytest.mark.skipif(_kernels.KIND != "compiled", reason="the compiled kernels' own allocations")
def test_out_of_memory_in_the_kernels_leaves_the_marks_clear():
    """A repair (and a reach) whose worklists cannot grow under an address-space limit raises MemoryError with
    the caller's ``mark`` scratch all clear (a subprocess, so that the limit touches no other test)."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", _OOM_SCRIPT], capture_output=True, text=True, env=env, timeout=300,
                         check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    for kind in ("repair", "reach"):
        in_kernel = [g for g in got if g["kind"] == kind and "out of memory" in g["error"]]
        assert in_kernel, f"{kind}: no limit made the kernel run out of memory: {got}"
    assert all(g["marks_left"] == 0 for g in got), [g for g in got if g["marks_left"]]


@pytest.mark.parametrize("kern", KERNELS, ids=lambda k: k.__name__)
def test_update_refuses_an_empty_row_pointer(kern):
    """An ``indptr`` with no entry is no CSR: refused before anything is read (the words around an empty view are
    not the matrix's)."""
    base = np.zeros(4, np.int64)
    for key in (1, 3 * 10**9):
        with pytest.raises(ValueError):
            kern.update(base[2:2], np.empty(0, np.int32), np.empty(0), 3, np.array([key]), np.array([1.0]), -1,
                        np.float64(0))


@pytest.mark.parametrize("kern", KERNELS, ids=lambda k: k.__name__)
def test_update_error_takes_back_a_repeated_key(kern):
    """Keys should be unique; a repeated one, refused later by a malformed transpose, still leaves A as it was."""
    A = sp.csr_array(np.array([[1.0, 0.0], [0.0, 0.0]]))
    ip, ind, d = A.indptr.astype(np.int64), A.indices.copy(), A.data.copy()
    with pytest.raises(ValueError):
        kern.update(ip, ind, d, 2, np.array([0, 0]), np.array([5.0, 7.0]), -1, np.float64(0),
                    indptr_t=np.array([0, 0, 5]), indices_t=ind.copy(), data_t=d.copy())
    np.testing.assert_array_equal(d, [1.0])

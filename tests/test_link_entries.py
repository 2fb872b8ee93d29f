"""A link over a matrix page after entries changed: the fused difference push (``point.entry_push``) equals its
numpy twin and a dense numpy reference, validates before it writes, keeps the rounding-error bounds of difference
propagation, and the engine's link over matrix-page histories equals a scipy recompute at every epoch. Also the
stable key sort behind ``merge.normalize`` (packed sort, radix sort) against numpy's stable argsort."""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mmsb
from mmsb import propagate
from mmsb._ops import OP_ASSIGN, OP_MAX, OP_MIN, OP_PLUS, OP_TIMES
from mmsb._ref import merge as ref_merge
from mmsb._ref import point as ref
from mmsb._ref import repair as ref_repair

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOL = propagate.REL_TOL
U = np.finfo(np.float64).eps / 2


def _compiled(name):
    from mmsb import _kernels
    return getattr(_kernels, name) if _kernels.KIND == "compiled" else None


KERNELS = [pytest.param(ref, id="ref")] + ([pytest.param(_compiled("point"), id="compiled")]
                                           if _compiled("point") else [])


def _case(seed, nr, nc, k, special=False):
    """Changed entries of an nr x nc matrix (sorted unique keys; 0 = absent), a source, a target, bounds."""
    rng = np.random.default_rng(seed)
    k = min(k, nr * nc)
    keys = np.sort(rng.choice(nr * nc, k, replace=False)).astype(np.int64)
    pick = [0.0, 1.5, -2.0, 3.25, 7.0] + ([np.inf, 1e20, np.nan] if special else [])
    old = rng.choice(pick, k)
    new = rng.choice(pick, k)
    same = new == old
    new[same] = old[same] + 1.0                  # (changed entries: a NaN stays a NaN + 1)
    x = np.round(rng.uniform(-5, 5, nc), 2)
    if special and nc:
        x[rng.integers(0, nc)] = rng.choice([np.inf, np.nan, 1e300])
    y = np.round(rng.uniform(-50, 50, nr), 1)
    err = TOL * np.abs(y) * rng.uniform(0, 1, nr)
    return keys, old, new, x, y, err


def _dense_reference(keys, old, new, nr, nc, x, y):
    """y + (A' - A) x over the changed entries by a dense matrix of differences (exact for these small values)."""
    D = np.zeros((nr, nc))
    rows, cols = np.divmod(keys, nc)
    D[rows, cols] = new - old
    return y + D @ x, np.unique(rows)


@pytest.mark.parametrize("kern", KERNELS)
@SETTINGS
@given(seed=st.integers(0, 10_000), nr=st.integers(1, 30), nc=st.integers(1, 30), k=st.integers(0, 60),
       track=st.booleans())
def test_entry_push_matches_numpy(kern, seed, nr, nc, k, track):
    keys, old, new, x, y, err = _case(seed, nr, nc, k)
    expect, touched = _dense_reference(keys, old, new, nr, nc, x, y)
    y0, e0 = y.copy(), err.copy()
    rows, before, bad = kern.entry_push(keys, old, new, nc, x, y, err if track else None, OP_TIMES, 0.0, TOL)
    if bad is None:
        np.testing.assert_allclose(y, expect, rtol=1e-12, atol=1e-9)
        moved = touched[y[touched] != y0[touched]]
        np.testing.assert_array_equal(rows, moved)
        np.testing.assert_array_equal(before, y0[moved])
    else:
        np.testing.assert_array_equal(rows, touched)
        np.testing.assert_array_equal(before, y0[touched])
        ok = ~bad.view(np.bool_)
        np.testing.assert_allclose(y[touched[ok]], expect[touched[ok]], rtol=1e-12, atol=1e-9)
    untouched = np.setdiff1d(np.arange(nr), touched)
    np.testing.assert_array_equal(y[untouched], y0[untouched])
    if track:
        # a good row's bound grew by at least the rounding of its terms; a bad row's is unchanged
        np.testing.assert_array_equal(err[untouched], e0[untouched])
        assert (err[touched] >= e0[touched]).all()
        if bad is not None:
            b = touched[bad.view(np.bool_)]
            np.testing.assert_array_equal(err[b], e0[b])


@pytest.mark.skipif(_compiled("point") is None, reason="compiled kernels not built")
@SETTINGS
@given(seed=st.integers(0, 10_000), nr=st.integers(1, 25), nc=st.integers(1, 25), k=st.integers(0, 50),
       track=st.booleans(), special=st.booleans(), mul=st.sampled_from([OP_PLUS, OP_TIMES, OP_MIN, OP_MAX]),
       zero=st.sampled_from([0.0, np.inf]))
def test_compiled_equals_twin(seed, nr, nc, k, track, special, mul, zero):
    keys, old, new, x, y, err = _case(seed, nr, nc, k, special)
    if zero == np.inf:                           # ⊕'s zero as absent: an entry equal to it contributes nothing
        old[old == 0.0] = np.inf
    outs = []
    for kern in (ref, _compiled("point")):
        yy, ee = y.copy(), err.copy()
        with np.errstate(all="ignore"):
            got = kern.entry_push(keys, old, new, nc, x, yy, ee if track else None, mul, zero, TOL)
        outs.append((got, yy, ee))
    (g1, y1, e1), (g2, y2, e2) = outs
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(e1, e2)
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kern", KERNELS)
def test_entry_push_bound_flags_cancellation(kern):
    """An entry 1e20 -> 1 against a large y: the difference loses y's digits, the bound says so, the row is bad
    and its bound is left as it was; a small change of a small row stays good and its bound grows exactly by
    (k + 2) u (|y| + Σ |terms|)."""
    y = np.array([1e20 * 2.0 + 3.0, 4.0])
    err = np.array([0.0, 1e-12])
    keys = np.array([0, 3], dtype=np.int64)          # (0, 0) and (1, 1) of a 2 x 2 matrix
    old, new, x = np.array([1e20, 1.0]), np.array([1.0, 2.0]), np.array([2.0, 3.0])
    rows, before, bad = kern.entry_push(keys, old, new, 2, x, y, err, OP_TIMES, 0.0, TOL)
    np.testing.assert_array_equal(rows, [0, 1])
    np.testing.assert_array_equal(before, [2e20 + 3.0, 4.0])
    assert bad.tolist() == [1, 0]
    assert err[0] == 0.0
    assert y[1] == 4.0 + (6.0 - 3.0)
    assert err[1] == 1e-12 + 3 * U * (4.0 + 6.0 + 3.0)


@pytest.mark.parametrize("kern", KERNELS)
def test_entry_push_validates_before_touching_memory(kern):
    y, err = np.ones(3), np.zeros(3)
    x = np.ones(2)
    good = (np.array([0, 3], dtype=np.int64), np.array([1.0, 2.0]), np.array([2.0, 3.0]))
    bad_calls = [
        ((np.array([3, 0], dtype=np.int64),) + good[1:], 2, x, ValueError),           # not increasing
        ((np.array([3, 3], dtype=np.int64),) + good[1:], 2, x, ValueError),           # duplicate
        ((np.array([0, 6], dtype=np.int64),) + good[1:], 2, x, ValueError),           # row 3 of 3 rows
        ((np.array([-1, 3], dtype=np.int64),) + good[1:], 2, x, ValueError),          # negative
        ((good[0], good[1][:1], good[2]), 2, x, ValueError),                         # lengths
        (good, 3, x, ValueError),                                                    # x is not ncols long
        ((good[0].astype(np.int32),) + good[1:], 2, x, TypeError),                   # dtype
    ]
    for (keys, old, new), nc, xx, exc in bad_calls:
        with pytest.raises(exc):
            kern.entry_push(keys, old, new, nc, xx, y, err, OP_TIMES, 0.0, TOL)
        np.testing.assert_array_equal(y, 1.0)
        np.testing.assert_array_equal(err, 0.0)
    with pytest.raises(ValueError):
        kern.entry_push(*good, 2, x, y, y, OP_TIMES, 0.0, TOL)                        # err is y
    with pytest.raises(ValueError):
        kern.entry_push(*good, 2, y[:2], y, err, OP_TIMES, 0.0, TOL)                  # x shares y's memory
    with pytest.raises(ValueError):
        kern.entry_push(*good, 2, x, y, err, 9, 0.0, TOL)                             # unknown ⊗
    np.testing.assert_array_equal(y, 1.0)


# -- the engine ---------------------------------------------------------------------------------------------------

def _history(seed, nd, ns, steps, page_dtype="float64", m_sr="plus_times", integers=True):
    """Random commits to a plus_times link over a matrix page: entry changes, inserts, deletes, accumulates, some
    source writes and mixed batches; y checked against scipy after each step and at every epoch by at(e)."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(page_dtype)
    mzero = 0.0 if m_sr == "plus_times" else np.inf

    def draw(k):
        v = rng.integers(-4, 6, k).astype(float) if integers else rng.uniform(-4, 6, k)
        v[v == 0] = 1.0
        return v

    A = np.zeros((nd, ns))
    mask = rng.random((nd, ns)) < 0.3
    A[mask] = draw(int(mask.sum()))
    x = draw(ns)
    refs = {}
    with mmsb.open(None) as buf:
        src = buf.create_page("x", ns)
        dst = buf.create_page("y", nd)
        data = np.where(A != 0, A, mzero).astype(dt)
        M = buf.create_matrix("M", (nd, ns), dtype=dt, semiring=m_sr, data=data)
        buf.write(src, x)
        buf.link(dst, src, M)
        refs[buf.epoch] = A @ x
        for _ in range(steps):
            op = rng.choice(["change", "insert", "delete", "accumulate", "source", "both"])
            k = int(rng.integers(1, max(2, nd * ns // 3)))
            r, c = rng.integers(0, nd, k), rng.integers(0, ns, k)
            if op == "accumulate" and m_sr == "plus_times":
                v = draw(k)
                buf.write(M, v.astype(dt), index=(r, c), accumulate=True)
                np.add.at(A, (r, c), v.astype(dt).astype(float))
            elif op in ("change", "insert", "delete", "accumulate"):
                v = np.zeros(k) if op == "delete" else draw(k)
                if op == "change":
                    live = np.argwhere(A != 0)
                    if live.size:
                        pick = live[rng.integers(0, len(live), k)]
                        r, c = pick[:, 0], pick[:, 1]
                buf.write(M, np.where(v == 0, mzero, v).astype(dt), index=(r, c))
                for i, j, w in zip(r, c, v):             # in order: the last write of an entry wins
                    A[i, j] = w
            else:
                j = rng.integers(0, ns, 2)
                v = draw(2)
                if op == "both":                          # a source and an entry in one commit
                    w = draw(1).astype(dt)
                    with buf.batch():
                        buf.write(src, v, index=j)
                        buf.write(M, w, index=([int(r[0])], [int(c[0])]))
                    A[r[0], c[0]] = float(w[0])
                else:
                    buf.write(src, v, index=j)
                x[j] = v
            expect = A @ x
            if integers:
                np.testing.assert_array_equal(dst.read(), expect)
            else:
                np.testing.assert_allclose(dst.read(), expect, rtol=1e-9, atol=1e-9)
            refs[buf.epoch] = expect
        for e, expect in refs.items():
            np.testing.assert_allclose(buf.at(e)["y"].read(), expect, rtol=1e-9, atol=1e-9)


@pytest.fixture
def pushed(monkeypatch):
    """Counts the engine's calls of the fused entry push (whichever kernel set is loaded)."""
    calls = []
    kernel = propagate._kernels.point.entry_push

    def spy(*args):
        calls.append(args[0].size)
        return kernel(*args)

    monkeypatch.setattr(propagate._kernels.point, "entry_push", spy)
    return calls


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("integers", [True, False])
def test_link_over_matrix_history_equals_recompute(seed, integers, pushed):
    _history(seed, 9, 7, 25, integers=integers)
    assert pushed                                   # the matrix changes went through the fused push


@pytest.mark.parametrize("page_dtype,m_sr", [("float32", "plus_times"), ("float64", "min_plus")])
def test_link_over_a_view_of_the_matrix_equals_recompute(page_dtype, m_sr, pushed):
    """The rule reads the matrix as a view (another dtype, or another semiring whose zero marks absent entries):
    the pushed differences are the view's."""
    for seed in range(3):
        _history(100 + seed, 8, 6, 20, page_dtype=page_dtype, m_sr=m_sr)
    assert pushed


def test_link_push_recomputes_a_row_that_cancels(pushed):
    """An entry 1e20 -> 0.5 under a row worth about 1e20: the difference alone would leave that row wrong by
    rounding; the bound sends it to a recompute, and the result is exact."""
    with mmsb.open(None) as buf:
        x = buf.create_page("x", 3)
        y = buf.create_page("y", 2)
        A = sp.csr_array(np.array([[1e20, 1.0, 3.0], [0.0, 2.0, 0.0]]))
        M = buf.create_matrix("M", (2, 3), data=A)
        buf.write(x, np.array([1.0, 1.0, 1.0]))
        buf.link(y, x, M)
        before = buf.stats()["propagation"]["rows_recomputed"]
        buf.write(M, np.array([0.5, 5.0]), index=([0, 1], [0, 1]))
        assert y.read().tolist() == [4.5, 5.0]
        assert buf.stats()["propagation"]["rows_recomputed"] - before == 1
        buf.write(M, np.array([np.inf]), index=([1], [1]))
        assert y.read().tolist() == [4.5, np.inf]
        buf.write(M, np.array([7.0]), index=([1], [1]))          # inf -> 7: a non-finite row is recomputed
        assert y.read().tolist() == [4.5, 7.0]
    assert len(pushed) == 3


# -- the key sort ---------------------------------------------------------------------------------------------------

MERGE = _compiled("merge")
MERGES = [pytest.param(ref_merge, id="ref")] + ([pytest.param(MERGE, id="compiled")] if MERGE else [])


@pytest.mark.parametrize("kern", MERGES)
@SETTINGS
@given(seed=st.integers(0, 10_000), n=st.integers(0, 3000), span=st.sampled_from([1, 2, 300, 10**6, 2**40, 2**62]),
       neg=st.booleans())
def test_stable_sorts_equal_numpy_stable_argsort(kern, seed, n, span, neg):
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, span, n, dtype=np.int64) - (span // 2 if neg else 0)
    perm = np.argsort(keys, kind="stable")
    for fn in (kern.sort_keys, kern._radix_argsort):
        out, p = fn(keys)
        np.testing.assert_array_equal(p, perm)
        np.testing.assert_array_equal(out, keys[perm])


@pytest.mark.parametrize("kern", MERGES)
def test_stable_sorts_take_the_extremes_of_int64(kern):
    big, small = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    keys = np.array([big, small, 0, -1, big, 5, small] * 50, dtype=np.int64)
    perm = np.argsort(keys, kind="stable")
    for fn in (kern.sort_keys, kern._radix_argsort):
        out, p = fn(keys)
        np.testing.assert_array_equal(p, perm)
        np.testing.assert_array_equal(out, keys[perm])


@pytest.mark.skipif(MERGE is None, reason="compiled kernels not built")
@SETTINGS
@given(seed=st.integers(0, 10_000), n=st.integers(200, 5000), span=st.sampled_from([50, 10**5, 2**50, 2**62]),
       op=st.sampled_from([OP_ASSIGN, OP_PLUS, OP_MIN, OP_MAX]))
def test_normalize_of_many_keys_equals_twin(seed, n, span, op):
    """Enough keys for the compiled sort path, duplicates folded in input order, as the twin folds them."""
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, span, n, dtype=np.int64)
    vals = rng.uniform(-5, 5, n)
    i1, v1 = MERGE.normalize(keys, vals, op)
    i2, v2 = ref_merge.normalize(keys, vals, op)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(v1, v2)


@pytest.mark.parametrize("kern", [pytest.param(ref_repair, id="ref")] + (
    [pytest.param(_compiled("repair"), id="compiled")] if _compiled("repair") else []))
def test_update_of_stored_values_changes_nothing_when_a_later_row_is_malformed(kern):
    """The update kernel sets changed values of stored entries in place as it finds them; a malformed row met
    later takes them back: the error changes nothing."""
    indptr = np.array([0, 2, 1, 3], dtype=np.int64)           # row 1 ends before it starts
    indices = np.array([0, 1, 2], dtype=np.int32)
    data = np.array([1.0, 2.0, 3.0])
    with pytest.raises(ValueError):
        kern.update(indptr, indices, data, 3, np.array([0, 1, 4], dtype=np.int64), np.array([5.0, 6.0, 7.0]),
                    OP_ASSIGN, 0.0, None)
    np.testing.assert_array_equal(data, [1.0, 2.0, 3.0])


@pytest.mark.parametrize("kern", [pytest.param(ref_repair, id="ref")] + (
    [pytest.param(_compiled("repair"), id="compiled")] if _compiled("repair") else []))
@SETTINGS
@given(seed=st.integers(0, 10_000), n=st.integers(1, 40), k=st.integers(0, 200), removals=st.booleans())
def test_update_in_place_and_structural_changes_equal_a_dense_model(kern, seed, n, k, removals):
    """Value changes of stored entries (set in place in one pass), mixed or not with insertions and removals
    (left to the assign kernel), against a dense numpy model; the returned changes list exactly the entries
    whose value moved, with their old and new values."""
    rng = np.random.default_rng(seed)
    dense = np.where(rng.random((n, n)) < 0.3, rng.integers(1, 9, (n, n)).astype(float), 0.0)
    A = sp.csr_array(dense)
    indptr, indices, data = A.indptr.astype(np.int64), A.indices.astype(np.int32), A.data.copy()
    keys = np.unique(rng.integers(0, n * n, k)).astype(np.int64)
    r, c = np.divmod(keys, n)
    vals = rng.integers(0 if removals else 1, 9, keys.size).astype(float)
    if not removals:                                  # stored entries only: the in-place path
        stored = dense[r, c] != 0
        keys, r, c, vals = keys[stored], r[stored], c[stored], vals[stored]
    before = dense.copy()
    got = kern.update(indptr, indices, data, n, keys, vals, OP_ASSIGN, 0.0, None)
    moved = before[r, c] != vals
    if not moved.any():
        assert got is None
        return
    idx, _, _, old, new = got[:5]
    np.testing.assert_array_equal(idx, keys[moved])
    np.testing.assert_array_equal(old, before[r, c][moved])
    np.testing.assert_array_equal(new, vals[moved])
    misses = got[10]
    if not misses:                                    # every change made in place: the arrays hold the model
        dense[r, c] = vals
        rebuilt = sp.csr_array((data, indices, indptr), shape=(n, n)).toarray()
        np.testing.assert_array_equal(rebuilt, dense)


def test_a_view_that_stores_the_rules_zero_is_recomputed():
    """A plus_times link over a min_plus matrix page: a stored 0.0 is an entry of the view (0 ⊗ inf is NaN), which
    the entry push would skip; the touched rows are recomputed instead."""
    b = mmsb.open(None)
    x = b.create_page("x", 2)
    b.write(x, np.array([np.inf, 1.0]))
    M = b.create_matrix("M", (2, 2), semiring="min_plus",
                        data=sp.csr_array((np.array([1.0, 1.0]), ([0, 1], [1, 1])), shape=(2, 2)))
    y = b.create_page("y", 2)
    b.link(y, x, M, semiring="plus_times")
    one = np.array([0], dtype=np.int64)
    b.write(M, 2.0, index=(one, one + 1))
    b.write(M, 0.0, index=(one, one))
    with np.errstate(invalid="ignore"):
        expect = [0.0 * np.inf + 2.0 * 1.0, 1.0 * 1.0]       # the view's stored entries times x, by hand
    np.testing.assert_array_equal(y.read(), expect)

"""The fused point-wave link kernel: compiled equals its numpy twin, both equal a numpy reference, and the engine's
few-position link step gives the same pages as its general step."""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mmsb
from mmsb import propagate
from mmsb._ops import OP_MAX, OP_MIN, OP_PLUS, OP_TIMES
from mmsb._ref import point as ref

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
UFUNC = {OP_PLUS: np.add, OP_TIMES: np.multiply, OP_MIN: np.minimum, OP_MAX: np.maximum}
SEMIRINGS = {"plus_times": (OP_PLUS, OP_TIMES), "min_plus": (OP_MIN, OP_PLUS), "max_min": (OP_MAX, OP_MIN),
             "max_times": (OP_MAX, OP_TIMES)}


def _compiled():
    from mmsb import _kernels
    return _kernels.point if _kernels.KIND == "compiled" else None


KERNELS = [pytest.param(ref, id="ref")] + ([pytest.param(_compiled(), id="compiled")] if _compiled() else [])


def _case(seed, n, m, density, k, sr, wide):
    rng = np.random.default_rng(seed)
    A = sp.random(n, m, density=density, random_state=seed, format="csr") * 4 + 0.0
    A.data = np.round(A.data, 2) + 0.5
    t = A.T.tocsr()
    t.sort_indices()
    indices = t.indices.astype(np.int64 if wide else np.int32)
    idx = np.sort(rng.choice(m, size=min(k, m), replace=False)).astype(np.int64)
    y = np.round(rng.uniform(0, 50, n), 1)
    old = np.round(rng.uniform(0, 20, idx.size), 1)
    new = old.copy()
    add = SEMIRINGS[sr][0]
    if add == OP_MIN:
        new = old - np.round(rng.uniform(0, 5, idx.size), 1)
    elif add == OP_MAX:
        new = old + np.round(rng.uniform(0, 5, idx.size), 1)
    else:
        new = np.round(rng.uniform(-20, 20, idx.size), 1)
    return A, (t.indptr.astype(np.int64), indices, t.data.astype(np.float64)), idx, new, old, y


def _reference(A, idx, new, old, y, sr):
    """y ⊕= A ⊗ d by dense numpy, d the difference (plus) or the new values (min/max)."""
    add, mul = (UFUNC[c] for c in SEMIRINGS[sr])
    out = y.copy()
    d = new - old if SEMIRINGS[sr][0] == OP_PLUS else new
    dense = A.toarray()
    for c, j in enumerate(idx):
        rows = np.flatnonzero(dense[:, j] != 0)
        out[rows] = add(out[rows], mul(dense[rows, j], d[c]))
    return out


@pytest.mark.parametrize("kern", KERNELS)
@SETTINGS
@given(seed=st.integers(0, 10_000), n=st.integers(1, 40), m=st.integers(1, 40), k=st.integers(1, 6),
       sr=st.sampled_from(sorted(SEMIRINGS)), wide=st.booleans())
def test_link_push_matches_numpy(kern, seed, n, m, k, sr, wide):
    A, (ptr, ind, data), idx, new, old, y0 = _case(seed, n, m, 0.2, k, sr, wide)
    add, mul = SEMIRINGS[sr]
    y = y0.copy()
    err = np.zeros(n) if add == OP_PLUS else None
    got = kern.link_push(ptr, ind, data, idx, new, old, y, err, add, mul, 1e-10)
    assert got is not None
    rows, before, bad = got
    expect = _reference(A, idx, new, old, y0, sr)
    np.testing.assert_allclose(y, expect, rtol=1e-12)
    if bad is None:
        moved = np.flatnonzero(y != y0)
        np.testing.assert_array_equal(rows, moved)
        np.testing.assert_array_equal(before, y0[moved])
    else:
        assert rows.dtype == np.int64 and np.all(np.diff(rows) > 0)
        np.testing.assert_array_equal(before, y0[rows])


@SETTINGS
@given(seed=st.integers(0, 10_000), n=st.integers(1, 30), m=st.integers(1, 30), k=st.integers(1, 5),
       sr=st.sampled_from(sorted(SEMIRINGS)), wide=st.booleans())
def test_compiled_equals_twin(seed, n, m, k, sr, wide):
    ext = _compiled()
    if ext is None:
        pytest.skip("compiled kernels not built")
    _, (ptr, ind, data), idx, new, old, y0 = _case(seed, n, m, 0.3, k, sr, wide)
    add, mul = SEMIRINGS[sr]
    outs = []
    for kern in (ref, ext):
        y = y0.copy()
        err = np.full(n, 1e-9) if add == OP_PLUS else None
        got = kern.link_push(ptr, ind, data, idx, new, old, y, err, add, mul, 1e-10)
        outs.append((got, y, err))
    (g1, y1, e1), (g2, y2, e2) = outs
    np.testing.assert_array_equal(y1, y2)
    if e1 is not None:
        np.testing.assert_array_equal(e1, e2)
    for a, b in zip(g1, g2):
        if a is None:
            assert b is None
        else:
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kern", KERNELS)
def test_link_push_declines_and_touches_nothing(kern):
    ptr = np.array([0, 1, 2], dtype=np.int64)
    ind = np.array([0, 1], dtype=np.int64)
    data = np.array([1.0, 2.0])
    y = np.array([3.0, 4.0])
    idx = np.array([0], dtype=np.int64)
    # a worsened value under min, a non-finite value, an ⊕ without a kernel op: None, y as it was
    assert kern.link_push(ptr, ind, data, idx, np.array([5.0]), np.array([1.0]), y, None, OP_MIN, OP_PLUS,
                          1e-10) is None
    assert kern.link_push(ptr, ind, data, idx, np.array([np.inf]), np.array([1.0]), y, np.zeros(2), OP_PLUS,
                          OP_TIMES, 1e-10) is None
    assert kern.link_push(ptr, ind, data, idx, np.array([2.0]), np.array([1.0]), y, None, -1, OP_TIMES,
                          1e-10) is None
    np.testing.assert_array_equal(y, [3.0, 4.0])


@pytest.mark.parametrize("kern", KERNELS)
def test_link_push_validates_before_touching_memory(kern):
    ptr = np.array([0, 1, 2], dtype=np.int64)
    y = np.array([3.0, 4.0])
    one, dat = np.array([1.0]), np.array([1.0, 2.0])
    with pytest.raises(ValueError, match="out of range"):
        kern.link_push(ptr, np.array([0, 7], dtype=np.int64), dat, np.array([1], dtype=np.int64), one,
                       np.array([0.0]), y, None, OP_PLUS, OP_TIMES, 1e-10)
    with pytest.raises(ValueError, match="out of range"):
        kern.link_push(ptr, np.array([0, 1], dtype=np.int64), dat, np.array([2], dtype=np.int64), one,
                       np.array([0.0]), y, None, OP_PLUS, OP_TIMES, 1e-10)
    with pytest.raises(ValueError, match="spans entries"):
        kern.link_push(np.array([0, 9, 9], dtype=np.int64), np.array([0, 1], dtype=np.int64), dat,
                       np.array([0], dtype=np.int64), one, np.array([0.0]), y, None, OP_PLUS, OP_TIMES, 1e-10)
    with pytest.raises(TypeError):
        kern.link_push(ptr, np.array([0, 1], dtype=np.int16), dat, np.array([0], dtype=np.int64), one,
                       np.array([0.0]), y, None, OP_PLUS, OP_TIMES, 1e-10)
    np.testing.assert_array_equal(y, [3.0, 4.0])


@pytest.mark.parametrize("sr", ["plus_times", "min_plus", "max_min"])
def test_engine_few_position_step_equals_general_step(sr, monkeypatch):
    """The same random single- and few-entry writes through a link, with the fused step and without it."""
    n = 300
    rng = np.random.default_rng(7)
    A = sp.random(n, n, density=0.02, random_state=3, format="csr")
    A.data = np.round(A.data * 9, 2) + 0.25
    writes = [(rng.choice(n, size=int(rng.integers(1, 5)), replace=False), np.round(rng.uniform(0, 30, 4), 1))
              for _ in range(60)]
    x0 = np.round(rng.uniform(0, 30, n), 1) if sr != "min_plus" else np.full(n, 40.0)
    pages = []
    fused = []
    kernel = propagate._kernels.point.link_push

    def spy(*args):
        got = kernel(*args)
        fused.append(got is not None)
        return got

    monkeypatch.setattr(propagate._kernels.point, "link_push", spy)
    for few in (propagate._FEW, 0):
        monkeypatch.setattr(propagate, "_FEW", few)
        with mmsb.open(None) as buf:
            x = buf.create_page("x", n, semiring=sr)
            y = buf.create_page("y", n, semiring=sr)
            buf.write(x, x0)
            buf.link(y, x, A)
            for idx, vals in writes:
                buf.write(x, vals[:idx.size], index=idx, accumulate=(sr == "plus_times"))
            past = buf.at(buf.epoch - 3)
            pages.append((x.read().copy(), y.read().copy(), past["y"].read().copy()))
    assert any(fused)                           # the fused step ran (and declined where it must)
    (x1, y1, h1), (x2, y2, h2) = pages
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_allclose(y1, y2, rtol=1e-12)
    np.testing.assert_allclose(h1, h2, rtol=1e-12)
    with np.errstate(all="ignore"):
        add = {"plus_times": None, "min_plus": (np.min, np.add), "max_min": (np.max, np.minimum)}[sr]
    dense = A.toarray()
    if add is None:
        np.testing.assert_allclose(y1, dense @ x1, rtol=1e-9)
    else:
        red, mul = add
        expect = np.array([red(mul(dense[i, dense[i] != 0], x1[dense[i] != 0]), initial=np.inf if red is np.min
                               else -np.inf) for i in range(n)])
        np.testing.assert_array_equal(y1, expect)


@pytest.mark.parametrize("kern", KERNELS)
@SETTINGS
@given(seed=st.integers(0, 10_000), n=st.integers(1, 50), k=st.integers(0, 8),
       op=st.sampled_from([-1, OP_PLUS, OP_TIMES, OP_MIN, OP_MAX]), nan=st.booleans())
def test_apply_few_matches_numpy(kern, seed, n, k, op, nan):
    rng = np.random.default_rng(seed)
    page = np.round(rng.uniform(-5, 5, n), 1)
    idx = np.sort(rng.choice(n, size=min(k, n), replace=False)).astype(np.int64)
    vals = np.round(rng.uniform(-5, 5, idx.size), 1)
    if nan and idx.size:
        page[idx[0]] = np.nan
        vals[-1] = np.nan
    before = page.copy()
    old, changed, count = kern.apply_few(page, idx, vals, op)
    ref_new = before[idx].copy()
    for c, i in enumerate(idx):                 # an independent loop over the merge's definition
        a, b = before[i], vals[c]
        ref_new[c] = {-1: b, OP_PLUS: a + b, OP_TIMES: a * b, OP_MIN: b if b < a else a,
                      OP_MAX: b if b > a else a}[op]
    expect = before.copy()
    expect[idx] = ref_new
    np.testing.assert_array_equal(page, expect)
    np.testing.assert_array_equal(old, before[idx])
    same = (ref_new == before[idx]) | (np.isnan(ref_new) & np.isnan(before[idx]))
    np.testing.assert_array_equal(changed, (~same).astype(np.uint8))
    assert count == int((~same).sum())


@pytest.mark.parametrize("kern", KERNELS)
def test_apply_few_checks_positions_first(kern):
    page = np.zeros(3)
    with pytest.raises(ValueError, match="out of range"):
        kern.apply_few(page, np.array([0, 3], dtype=np.int64), np.array([1.0, 1.0]), OP_PLUS)
    with pytest.raises(ValueError):
        kern.apply_few(page, np.array([0], dtype=np.int64), np.array([1.0, 1.0]), OP_PLUS)
    with pytest.raises(TypeError):
        kern.apply_few(page.astype(np.float32), np.array([0], dtype=np.int64), np.array([1.0]), OP_PLUS)
    np.testing.assert_array_equal(page, [0.0, 0.0, 0.0])


@pytest.mark.parametrize("kern", KERNELS)
@SETTINGS
@given(seed=st.integers(0, 10_000), k=st.integers(0, 40), nrows=st.integers(1, 6), ncols=st.integers(1, 6),
       op=st.sampled_from([-1, OP_PLUS, OP_TIMES, OP_MIN, OP_MAX]))
def test_entry_keys_sort_and_fold_in_order(kern, seed, k, nrows, ncols, op):
    rng = np.random.default_rng(seed)
    r = rng.integers(0, nrows, k).astype(np.int64)
    c = rng.integers(0, ncols, k).astype(np.int64)
    v = np.round(rng.uniform(-5, 5, k), 1)
    keys, vals = kern.entry_keys(r, c, v, nrows, ncols, op)
    folded: dict = {}                           # an independent model: a dict folded in the order given
    for key, val in zip((r * ncols + c).tolist(), v.tolist()):
        if key in folded:
            prev = folded[key]
            val = {-1: val, OP_PLUS: prev + val, OP_TIMES: prev * val, OP_MIN: min(prev, val),
                   OP_MAX: max(prev, val)}[op]
        folded[key] = val
    np.testing.assert_array_equal(keys, sorted(folded))
    np.testing.assert_array_equal(vals, [folded[key] for key in sorted(folded)])


@pytest.mark.parametrize("kern", KERNELS)
def test_entry_keys_declines_bad_entries(kern):
    one = np.array([0], dtype=np.int64)
    assert kern.entry_keys(np.array([3], dtype=np.int64), one, np.array([1.0]), 3, 3, -1) is None
    assert kern.entry_keys(one, np.array([-1], dtype=np.int64), np.array([1.0]), 3, 3, -1) is None
    assert kern.entry_keys(one, one, np.array([1.0, 2.0]), 3, 3, -1) is None


@pytest.mark.parametrize("accumulate", [False, True])
def test_small_matrix_writes_equal_the_general_path(accumulate, monkeypatch):
    """Matrix deltas of a few entries (keys by the point kernel) give the pages, history and log of the general
    path, duplicates and ⊕-zero removals included."""
    from mmsb import buffer as buffer_mod

    n = 40
    rng = np.random.default_rng(5)
    writes = []
    for _ in range(50):
        k = int(rng.integers(1, 12))
        rows = rng.integers(0, n, k).astype(np.int64)
        cols = rng.integers(0, n, k).astype(np.int64)
        vals = np.round(rng.uniform(0.5, 9, k), 1)
        vals[rng.random(k) < 0.2] = np.inf               # a removed road
        writes.append((rows, cols, vals))
    runs = []
    for few in (buffer_mod._FEW_ENTRIES, 0):
        monkeypatch.setattr(buffer_mod, "_FEW_ENTRIES", few)
        with mmsb.open(None) as buf:
            src = buf.create_page("src", n, semiring="min_plus")
            dist = buf.create_page("dist", n, semiring="min_plus")
            W = buf.create_matrix("W", (n, n), semiring="min_plus")
            buf.write(src, 0.0, index=[0, 7])
            buf.closure(dist, src, W)
            for rows, cols, vals in writes:
                buf.write(W, vals, index=(rows, cols), accumulate=accumulate)
            runs.append((dist.read().copy(), W.read().toarray(),
                         [(d.epoch, d.page, d.index.tolist(), d.values.tolist()) for d in buf.log.query(page=W)]))
    (d1, w1, l1), (d2, w2, l2) = runs
    np.testing.assert_array_equal(d1, d2)
    np.testing.assert_array_equal(w1, w2)
    assert l1 == l2


@pytest.mark.parametrize("kern", KERNELS)
def test_kernels_refuse_outputs_that_overlap_inputs_and_foreign_byte_order(kern):
    a = np.zeros(4)
    ix = a[0:2].view(np.int64)
    ix[:] = [1, 2]
    with pytest.raises(ValueError, match="shares memory"):
        kern.apply_few(a, ix, np.array([1.0, 5.0]), -1)
    with pytest.raises(TypeError, match="byte order"):
        kern.apply_few(np.zeros(4, dtype=">f8"), np.array([1], dtype=np.int64), np.array([1.0]), -1)
    ptr = np.array([0, 1, 2], dtype=np.int64)
    y = np.zeros(4)
    with pytest.raises(ValueError, match="shares memory"):
        kern.link_push(ptr, np.array([0, 1], dtype=np.int64), y[:2], np.array([0], dtype=np.int64),
                       np.array([1.0]), np.array([0.0]), y, None, OP_PLUS, OP_TIMES, 1e-10)
    with pytest.raises(ValueError, match="out of range"):      # ranges are checked before anything declines
        kern.link_push(ptr, np.array([0, 1], dtype=np.int64), np.array([1.0, 1.0]),
                       np.array([0, 99], dtype=np.int64), np.array([np.nan, 1.0]), np.array([0.0, 0.0]),
                       np.zeros(2), None, OP_MIN, OP_PLUS, 1e-10)

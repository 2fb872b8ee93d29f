"""Exactness of propagation: the reproducers of issue #14's list and the engine-side API gaps of #16.6.

Every expectation is independent of mmsb: numpy products, exact rational sums (fractions), or a value worked out
by hand in the comment next to it. Each test also checks that a refused commit changed nothing (values, epoch,
rules, log).
"""
import math
from fractions import Fraction

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mmsb
from mmsb import errors as E



def state(buf):
    """Everything a refused commit must leave as it was."""
    return (buf.epoch, {n: buf[n].read().copy() for n in buf}, buf.graph.to_text(),
            sum(1 for _ in buf.log.query()))


def assert_state(buf, want):
    got = state(buf)
    assert got[0] == want[0]
    assert list(got[1]) == list(want[1])
    for n in want[1]:
        np.testing.assert_array_equal(got[1][n], want[1][n])
    assert got[2] == want[2]
    assert got[3] == want[3]


# -- deferred mode (buffer.py) ----------------------------------------------------------------------------------
def test_deferred_drop_of_a_page_with_a_pending_rule_keeps_propagate_working():
    b = mmsb.open(None, propagation="deferred")
    a = b.create_page("a", 3)
    c = b.create_page("c", 3)
    b.derive(c, [a], lambda x: x + 1)
    b.drop_page("c")
    b.propagate()                                   # raised PageNotFoundError('c'), then on every later call
    d = b.create_page("d", 3)
    b.derive(d, [a], lambda x: x * 2)
    b.write(a, [1.0, 2.0, 3.0])
    b.propagate()
    np.testing.assert_array_equal(d.read(), [2.0, 4.0, 6.0])


def test_deferred_written_page_that_becomes_a_target_updates_downstream():
    b = mmsb.open(None, propagation="deferred")
    z = b.create_page("z", 1)
    x = b.create_page("x", 1, semiring="min_plus")
    y = b.create_page("y", 1, semiring="min_plus")
    b.write(x, [1.0])
    b.link(y, x, np.zeros((1, 1)))
    b.propagate()
    assert y.read()[0] == 1.0                       # y = min(0 + x) = 1
    b.write(x, [5.0])
    b.derive(x, [z], lambda v: v + 3)
    b.propagate()
    assert x.read()[0] == 3.0                       # x = z + 3 = 0 + 3
    assert y.read()[0] == 3.0                       # y = 0 + x = 3 (was left at 1)
    b.write(z, [-1.0])
    b.propagate()
    assert (x.read()[0], y.read()[0]) == (2.0, 2.0)
    assert b.at(b.epoch)["y"].read()[0] == 2.0      # the logged derived deltas replay to the same state


def test_deferred_reopen_before_propagate_keeps_the_pending_evaluation(tmp_path):
    path = str(tmp_path / "st")
    A = np.array([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0]])
    with mmsb.open(path, propagation="deferred") as b:
        x = b.create_page("x", 3)
        y = b.create_page("y", 2)
        b.link(y, x, A)
        b.propagate()
        b.write(x, [1.0, 2.0, 3.0])                 # pending when the store closes
    with mmsb.open(path, propagation="deferred") as b:
        b.propagate()
        np.testing.assert_array_equal(b["y"].read(), A @ b["x"].read())    # [5, 6]
        b.write("x", [5.0], index=[1])
        b.propagate()
        np.testing.assert_array_equal(b["y"].read(), A @ b["x"].read())    # [5, 15]


def test_deferred_reopen_with_a_pending_new_rule(tmp_path):
    path = str(tmp_path / "st")
    with mmsb.open(path, propagation="deferred") as b:
        x = b.create_page("x", 3)
        y = b.create_page("y", 3)
        b.write(x, [1.0, 2.0, 3.0])
        b.link(y, x, 2 * np.eye(3))                 # rule added, dst dirty, not evaluated
    with mmsb.open(path, propagation="deferred") as b:
        b.propagate()
        np.testing.assert_array_equal(b["y"].read(), [2.0, 4.0, 6.0])


# -- closures that do not converge --------------------------------------------------------------------------------
NEG_CYCLE = sp.csr_array(([-1.0, -1.0], ([0, 1], [1, 0])), shape=(2, 2))     # 0 <-> 1 with weight -1 each way


@pytest.mark.parametrize("mode", ["eager", "deferred"])
def test_closure_negative_cycle_refused_when_the_rule_is_made(mode):
    b = mmsb.open(None, propagation=mode)
    s = b.create_page("s", 2, semiring="min_plus")
    d = b.create_page("d", 2, semiring="min_plus")
    b.write(s, [0.0, np.inf])
    if mode == "deferred":
        b.closure(d, s, NEG_CYCLE)                  # evaluated by propagate()
        before = state(b)
        with pytest.raises(E.SemiringError, match="'d'.*converge"):
            b.propagate()
        assert_state(b, before)
        return
    before = state(b)
    with pytest.raises(E.SemiringError, match="'d'.*converge"):
        b.closure(d, s, NEG_CYCLE)
    assert_state(b, before)                         # d = [inf, inf]; no rule; no epoch
    assert not b.graph.is_derived("d")
    np.testing.assert_array_equal(d.read(), [np.inf, np.inf])


@pytest.mark.parametrize("durable", [False, True])
def test_closure_negative_cycle_refused_from_a_later_write(tmp_path, durable):
    b = mmsb.open(str(tmp_path / "st") if durable else None)
    s = b.create_page("s", 3, semiring="min_plus")
    d = b.create_page("d", 3, semiring="min_plus")
    W = sp.csr_array(([-1.0, -1.0, 2.0], ([0, 1, 2], [1, 0, 0])), shape=(3, 3))
    b.closure(d, s, W)                               # s all inf: nothing reaches the cycle yet
    b.write(s, [4.0], index=[2])                     # 2 only reaches itself (W[2, 0] is the edge 0 -> 2)
    np.testing.assert_array_equal(d.read(), [np.inf, np.inf, 4.0])
    before = state(b)
    for how in ("sparse", "dense", "accumulate"):
        with pytest.raises(E.SemiringError, match="'d'.*converge"):
            if how == "sparse":
                b.write(s, [0.0], index=[0])
            elif how == "dense":
                b.write(s, [0.0, 5.0, 4.0])
            else:
                b.write(s, [7.0], index=[1], accumulate=True)
        assert_state(b, before)
    if durable:
        b.close()
        with mmsb.open(str(tmp_path / "st"), mode="r") as r:
            np.testing.assert_array_equal(r["d"].read(), [np.inf, np.inf, 4.0])
            np.testing.assert_array_equal(r["s"].read(), [np.inf, np.inf, 4.0])


def test_closure_failed_incremental_run_restores_every_entry_it_touched():
    """The failing run takes the incremental path (a seeded frontier) and rewrites entries an earlier write set."""
    edges = [(5, 0, 1.0), (0, 1, 1.0), (2, 3, 1.0), (3, 4, 1.0), (4, 2, -5.0), (3, 0, 1.0)]   # u -> v, weight
    u, v, w = zip(*edges)
    A = sp.csr_array((w, (v, u)), shape=(6, 6))      # A = W.T
    b = mmsb.open(None)
    s = b.create_page("s", 6, semiring="min_plus")
    d = b.create_page("d", 6, semiring="min_plus")
    b.closure(d, s, A)
    b.write(s, [0.0], index=[5])
    np.testing.assert_array_equal(d.read(), [1.0, 2.0, np.inf, np.inf, np.inf, 0.0])   # 5 -> 0 -> 1
    before = state(b)
    with pytest.raises(E.SemiringError, match="converge"):
        b.write(s, [0.0], index=[2])                # 2 -> 3 -> 4 -> 2 weighs -3, and 3 -> 0 leaks it out
    assert_state(b, before)
    b.write(s, [0.5], index=[1])
    np.testing.assert_array_equal(d.read(), [1.0, 0.5, np.inf, np.inf, np.inf, 0.0])


# -- bool pages under plus_times ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["eager", "deferred"])
def test_bool_plus_times_link_is_computed_as_numpy_bool_matmul(mode):
    rng = np.random.default_rng(7)
    b = mmsb.open(None, propagation=mode)
    x = b.create_page("x", 6, dtype=bool)
    y = b.create_page("y", 4, dtype=bool)
    assert x.semiring.name == "plus_times"
    A = rng.random((4, 6)) < 0.4
    b.link(y, x, sp.csr_array(A))
    for step in range(20):
        idx = rng.integers(0, 6, 3)
        b.write(x, rng.random(3) < 0.5, index=idx, accumulate=bool(step % 2))
        if mode == "deferred":
            b.propagate()
        np.testing.assert_array_equal(y.read(), A @ x.read())           # numpy: or of ands on bools


# -- NaN under an idempotent ⊕ -------------------------------------------------------------------------------------
def test_nan_through_a_link_into_min_plus_is_refused_in_both_kernels():
    b = mmsb.open(None)
    x = b.create_page("x", 2)                        # plus_times: NaN is a legal value here
    y = b.create_page("y", 1, semiring="min_plus")
    b.link(y, x, np.array([[1.0, 1.0]]))
    b.write(x, [3.0, 5.0])
    assert y.read()[0] == 4.0                        # min(3 + 1, 5 + 1)
    before = state(b)
    with pytest.raises(E.InvalidDeltaError, match="NaN.*'y'.*'x'"):
        b.write(x, [np.nan, 5.0])                    # compiled gave 6, the numpy twin nan
    assert_state(b, before)
    with pytest.raises(E.InvalidDeltaError, match="'y'.*'x'"):
        b.write(x, [np.nan], index=[1])
    assert_state(b, before)


def test_nan_source_refused_when_the_rule_is_made():
    b = mmsb.open(None)
    x = b.create_page("x", 2)
    y = b.create_page("y", 1, semiring="min_plus")
    b.write(x, [np.nan, 5.0])
    before = state(b)
    with pytest.raises(E.InvalidDeltaError, match="'y'.*'x'"):
        b.link(y, x, np.array([[1.0, 1.0]]))
    assert_state(b, before)
    b.link(y, x, sp.csr_array(([1.0], ([0], [1])), shape=(1, 2)))     # column 0 not stored: no NaN enters
    assert y.read()[0] == 6.0


def test_nan_matrix_entry_refused_under_idempotent_rule():
    b = mmsb.open(None)
    x = b.create_page("x", 2, semiring="max_plus")
    y = b.create_page("y", 1, semiring="max_plus")
    before = state(b)
    with pytest.raises(E.InvalidDeltaError, match="'y'"):
        b.link(y, x, np.array([[np.nan, 1.0]]))
    assert_state(b, before)


@pytest.mark.parametrize("sr,xv,a", [("min_plus", -np.inf, np.inf),       # -inf + inf
                                     ("max_plus", np.inf, -np.inf),       # inf + -inf
                                     ("max_times", np.inf, 0.0)])         # inf * 0
def test_nan_products_of_infinities_are_refused(sr, xv, a):
    b = mmsb.open(None)
    x = b.create_page("x", 2, semiring=sr)
    y = b.create_page("y", 1, semiring=sr)
    b.link(y, x, np.array([[a, 1.0]]))
    b.write(x, [2.0, 5.0])
    before = state(b)
    with pytest.raises(E.InvalidDeltaError, match="'y'.*'x'"):
        b.write(x, [xv], index=[0])
    assert_state(b, before)


def test_nan_into_a_closure_is_refused():
    b = mmsb.open(None)
    s = b.create_page("s", 3)                        # plus_times source: may hold NaN
    d = b.create_page("d", 3, semiring="min_plus")
    A = sp.csr_array(([1.0, np.inf], ([1, 2], [0, 1])), shape=(3, 3))   # 0 -> 1 (1), 1 -> 2 (inf)
    b.closure(d, s, A, semiring="min_plus")
    b.write(s, [1.0, 9.0, 9.0])
    np.testing.assert_array_equal(d.read(), [1.0, 2.0, 9.0])
    before = state(b)
    with pytest.raises(E.InvalidDeltaError, match="'d'.*'s'"):
        b.write(s, [np.nan], index=[2])
    assert_state(b, before)
    with pytest.raises(E.InvalidDeltaError, match="'d'"):
        b.write(s, [-np.inf], index=[1])             # -inf reaches the stored inf edge: -inf + inf
    assert_state(b, before)


def test_derive_returning_nan_into_an_idempotent_page_is_refused():
    b = mmsb.open(None)
    a = b.create_page("a", 3)
    m = b.create_page("m", 3, semiring="min_plus")
    p = b.create_page("p", 3)                        # plus_times: NaN allowed
    b.derive(m, [a], lambda v: np.sqrt(v))
    b.derive(p, [a], lambda v: np.sqrt(v))
    b.write(a, [1.0, 4.0, 9.0])
    np.testing.assert_array_equal(m.read(), [1.0, 2.0, 3.0])
    before = state(b)
    with np.errstate(invalid="ignore"):
        with pytest.raises(E.InvalidDeltaError, match="'m'.*NaN"):
            b.write(a, [-1.0], index=[0])
    assert_state(b, before)
    b2 = mmsb.open(None)
    a2 = b2.create_page("a", 3)
    p2 = b2.create_page("p", 3)
    b2.derive(p2, [a2], lambda v: np.sqrt(v))
    with np.errstate(invalid="ignore"):
        b2.write(a2, [-1.0, 4.0, 9.0])
    assert np.isnan(p2.read()[0]) and p2.read()[1] == 2.0


# -- cancellation under plus ------------------------------------------------------------------------------------------
def test_cancellation_issue_example():
    b = mmsb.open(None)
    x = b.create_page("x", 1)
    y = b.create_page("y", 1)
    b.link(y, x, np.array([[3.0]]))
    b.write(x, [1e20])
    b.write(x, [1.0])
    assert y.read()[0] == 3.0                        # was 0 (3e20 + 3 * (1 - 1e20) = 0 in floats)


def test_cancellation_sparse_row_with_other_columns():
    b = mmsb.open(None)
    x = b.create_page("x", 40)
    y = b.create_page("y", 2)
    A = sp.csr_array(([3.0, 1.0, 2.0], ([0, 0, 1], [0, 1, 1])), shape=(2, 40))
    b.link(y, x, A)
    b.write(x, [1e20, 1.0], index=[0, 1])
    b.write(x, [1.0], index=[0])
    np.testing.assert_array_equal(y.read(), [4.0, 2.0])          # 3 * 1 + 1 * 1, 2 * 1


MAGNITUDES = st.sampled_from([0.0, 1e-8, 1e-3, 1.0, 3.0, 1e3, 1e8, 1e16, 1e20, 1e300])


def _exact(A, x):
    """Row sums of A * x in exact rational arithmetic (products and sums unrounded)."""
    out = []
    for i in range(A.shape[0]):
        total = Fraction(0)
        for j in range(A.shape[1]):
            if A[i, j] != 0:
                total += Fraction(float(A[i, j])) * Fraction(float(x[j]))
        out.append(total)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_incremental_plus_stays_within_tolerance_of_a_recompute(data):
    """Stated tolerance: |y - exact| <= 1e-9 |exact| + (k + 2) eps (|A| @ |x|) per row (k = stored entries in the
    row), i.e. the incremental result is as good as a recompute, over adversarial magnitudes and signs."""
    n, m = 5, 3
    mant = st.floats(min_value=0.5, max_value=2.0, allow_nan=False)
    sign = st.sampled_from([-1.0, 1.0])
    stored = np.array(data.draw(st.lists(st.booleans(), min_size=m * n, max_size=m * n))).reshape(m, n)
    A = np.zeros((m, n))
    for i, j in zip(*np.nonzero(stored)):
        A[i, j] = data.draw(sign) * data.draw(mant) * data.draw(st.sampled_from([1e-3, 1.0, 3.0, 1e3]))
    b = mmsb.open(None)
    x = b.create_page("x", n)
    y = b.create_page("y", m)
    b.link(y, x, sp.csr_array(A) if data.draw(st.booleans()) else A)
    steps = data.draw(st.integers(1, 12))
    for _ in range(steps):
        k = data.draw(st.integers(1, 2))
        idx = data.draw(st.lists(st.integers(0, n - 1), min_size=k, max_size=k, unique=True))
        vals = [data.draw(sign) * data.draw(mant) * data.draw(MAGNITUDES) for _ in idx]
        b.write(x, vals, index=idx, accumulate=data.draw(st.booleans()))
        xv = x.read()
        if not np.isfinite(xv).all():
            continue
        exact = _exact(A, xv)
        got = y.read()
        nnz = stored.sum(axis=1)
        scale = np.abs(A) @ np.abs(xv)
        for i in range(m):
            if not math.isfinite(scale[i]):
                continue
            err = abs(Fraction(float(got[i])) - exact[i])
            tol = Fraction(1e-9) * abs(exact[i]) + Fraction(float((nnz[i] + 2) * np.finfo(float).eps * scale[i]))
            assert err <= tol, (i, got[i], float(exact[i]), A, xv)


# -- foreign exceptions during propagation (#16.6) ------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["eager", "deferred"])
@pytest.mark.parametrize("durable", [False, True])
def test_derive_function_error_is_wrapped_and_rolled_back(tmp_path, mode, durable):
    def picky(v):
        if v[0] > 10:
            raise ZeroDivisionError("too big")
        return v * 2

    b = mmsb.open(str(tmp_path / "st") if durable else None, propagation=mode)
    a = b.create_page("a", 2)
    c = b.create_page("c", 2)
    e_ = b.create_page("e", 2)
    b.derive(c, [a], picky)
    b.derive(e_, [c], lambda v: v + 1)
    b.write(a, [1.0, 2.0])
    b.propagate()
    np.testing.assert_array_equal(e_.read(), [3.0, 5.0])
    before = state(b)
    with pytest.raises(E.PropagationError, match="'c'.*picky.*ZeroDivisionError") as info:
        b.write(a, [11.0], index=[0])
        b.propagate()
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    assert info.value.page == "c" and info.value.rule == "derive"
    if mode == "eager":
        assert_state(b, before)
    else:                                            # the write committed; the wave was rolled back
        np.testing.assert_array_equal(c.read(), [2.0, 4.0])
        np.testing.assert_array_equal(e_.read(), [3.0, 5.0])
        b.write(a, [1.5], index=[0])
        b.propagate()
        np.testing.assert_array_equal(e_.read(), [4.0, 5.0])
    b.close()


@pytest.fixture
def touchy_semiring():
    """A plugin-style min_plus (numpy path, no kernel codes) whose ⊕ raises on a poison value."""
    def add(a, b):
        a, b = np.asarray(a), np.asarray(b)
        if np.any(a == 666.0) or np.any(b == 666.0):
            raise RuntimeError("poison value 666")
        return np.minimum(a, b)

    sr = mmsb.Semiring("touchy_min_plus", add, np.add, np.inf, 0.0, idempotent=True)
    mmsb.semirings.register(sr)
    yield sr
    mmsb.semirings.unregister("touchy_min_plus")


@pytest.mark.parametrize("kind", ["link", "closure"])
def test_plugin_semiring_error_is_wrapped_and_rolled_back(touchy_semiring, kind):
    b = mmsb.open(None)
    x = b.create_page("x", 3, semiring="touchy_min_plus")
    y = b.create_page("y", 3, semiring="touchy_min_plus")
    A = sp.csr_array(([1.0, 1.0], ([1, 2], [0, 1])), shape=(3, 3))
    getattr(b, kind)(y, x, A)
    b.write(x, [1.0, 7.0, 9.0])
    want = [1.0, 2.0, 3.0] if kind == "closure" else [np.inf, 2.0, 8.0]
    np.testing.assert_array_equal(y.read(), want)
    before = state(b)
    with pytest.raises(E.PropagationError, match="'y'.*touchy_min_plus.*RuntimeError") as info:
        b.write(x, [665.0], index=[1], accumulate=False)     # 665 + 1 = 666 reaches ⊕ downstream
    assert isinstance(info.value.__cause__, RuntimeError)
    assert_state(b, before)


# -- buffer-side API gaps (#16.6) -------------------------------------------------------------------------------------
def test_create_page_nan_fill_on_idempotent_page_refused():
    b = mmsb.open(None)
    e = b.epoch
    with pytest.raises(E.InvalidDeltaError, match="'a'"):
        b.create_page("a", 3, semiring="min_plus", fill=np.nan)
    assert "a" not in b and b.epoch == e


def test_create_page_fractional_shape_refused():
    b = mmsb.open(None)
    with pytest.raises(E.InvalidDeltaError, match="'s'"):
        b.create_page("s", 2.7)
    assert "s" not in b and b.epoch == 0


def test_create_page_fill_out_of_dtype_range_refused():
    b = mmsb.open(None)
    with pytest.raises(E.InvalidDeltaError, match="'i'"):
        b.create_page("i", 3, dtype="int8", fill=1000)      # gave -24
    assert "i" not in b and b.epoch == 0


def test_create_page_too_large_is_an_mmsb_error():
    b = mmsb.open(None)
    with pytest.raises(E.MMSBError, match="'big'"):
        b.create_page("big", 10 ** 15)
    assert "big" not in b and b.epoch == 0


def test_overlong_page_name_refused_on_a_store(tmp_path):
    with mmsb.open(str(tmp_path / "st")) as b:
        with pytest.raises(E.InvalidDeltaError):
            b.create_page("n" * 70_000, 2)
        assert len(b) == 0
        p = b.create_page("ok", 2)
        b.write(p, [1.0, 2.0])
    with mmsb.open(str(tmp_path / "st"), mode="r") as r:
        np.testing.assert_array_equal(r["ok"].read(), [1.0, 2.0])


@pytest.mark.parametrize("durable", [False, True])
def test_lone_surrogate_page_name_refused(tmp_path, durable):
    b = mmsb.open(str(tmp_path / "st") if durable else None)
    with pytest.raises(E.InvalidDeltaError):
        b.create_page("a\udc80b", 2)
    assert len(b) == 0 and b.epoch == 0
    b.close()


def test_at_with_a_non_integer_epoch_is_a_history_error():
    b = mmsb.open(None)
    b.create_page("a", 1)
    with pytest.raises(E.HistoryError):
        b.at("x")

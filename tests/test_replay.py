"""Hypothesis properties: delta merge, accumulate vs numpy ufunc.at, replay to any epoch, semiring laws."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mmsb
from mmsb import _kernels, _ops
from mmsb.semiring import _kview
from mmsb.testing import check_semiring

SETTINGS = settings(max_examples=25, deadline=None)
ADD_UFUNC = {"plus_times": np.add, "min_plus": np.minimum, "max_plus": np.maximum, "max_times": np.maximum,
             "max_min": np.maximum, "min_max": np.minimum, "or_and": np.logical_or}
CASES = [(sr, dt) for sr in ADD_UFUNC for dt in (("bool",) if sr == "or_and" else ("int32", "uint8", "float64"))]
CASES += [("min_plus", "bool"), ("plus_times", "int8")]
N = 12


def values_for(dt, n):
    dt = np.dtype(dt)
    if dt.kind == "b":
        elems = st.booleans()
    elif dt.kind == "u":
        elems = st.integers(0, 200)
    elif dt.kind == "i":
        elems = st.integers(-100, 100)
    else:
        elems = st.integers(-40, 40).map(lambda k: k / 4)      # exact in binary: order of ⊕ does not matter
    return st.lists(elems, min_size=n, max_size=n).map(lambda xs: np.array(xs, dtype=dt))


@st.composite
def sparse_delta(draw, dt):
    n = draw(st.integers(0, 10))
    idx = np.array(draw(st.lists(st.integers(0, N - 1), min_size=n, max_size=n)), dtype=np.int64)
    return idx, draw(values_for(dt, n))


@pytest.mark.parametrize("sr, dt", CASES)
def test_accumulate_equals_ufunc_at(sr, dt):
    @SETTINGS
    @given(init=values_for(dt, N), deltas=st.lists(sparse_delta(dt), min_size=1, max_size=4))
    def run(init, deltas):
        ufunc = ADD_UFUNC[sr] if dt != "bool" else (np.logical_or if ADD_UFUNC[sr] in (np.add, np.maximum,
                                                                                        np.logical_or)
                                                    else np.logical_and)
        buf = mmsb.open(None)
        p = buf.create_page("p", N, dtype=dt, semiring=sr)
        buf.write(p, init)
        ref = init.copy()
        arr = init.copy()
        for idx, vals in deltas:
            buf.write(p, vals, index=idx, accumulate=True)
            with np.errstate(over="ignore"):
                ufunc.at(ref, idx, vals)
                p.semiring.accumulate(arr, idx, vals)
        np.testing.assert_array_equal(p.read(), ref)
        np.testing.assert_array_equal(arr, ref)
        buf.close()

    run()


@pytest.mark.parametrize("sr, dt", CASES)
def test_a_then_b_equals_merge(sr, dt):
    @SETTINGS
    @given(init=values_for(dt, N), a=sparse_delta(dt), b=sparse_delta(dt), accumulate=st.booleans())
    def run(init, a, b, accumulate):
        sring = mmsb.semirings.get(sr)
        op = sring.codes_for(np.dtype(dt))[0] if accumulate else _ops.OP_ASSIGN
        na = _kernels.merge.normalize(a[0], _kview(a[1]), op)
        nb = _kernels.merge.normalize(b[0], _kview(b[1]), op)
        idx, vals = _kernels.merge.merge_sparse(na[0], na[1], nb[0], nb[1], op)
        vals = vals.view(np.dtype(dt))
        buf = mmsb.open(None)
        p = buf.create_page("p", N, dtype=dt, semiring=sr)
        q = buf.create_page("q", N, dtype=dt, semiring=sr)
        r = buf.create_page("r", N, dtype=dt, semiring=sr)
        for page in (p, q, r):
            buf.write(page, init)
        with np.errstate(over="ignore"):
            buf.write(p, a[1], index=a[0], accumulate=accumulate)
            buf.write(p, b[1], index=b[0], accumulate=accumulate)
            buf.write(q, vals, index=idx, accumulate=accumulate)
            # the public path: both deltas in one write (duplicates ⊕-combined / last wins)
            buf.write(r, np.concatenate([a[1], b[1]]), index=np.concatenate([a[0], b[0]]), accumulate=accumulate)
        np.testing.assert_array_equal(p.read(), q.read())
        np.testing.assert_array_equal(p.read(), r.read())
        buf.close()

    run()


PAGES = [("f", "float64", "min_plus", (3, 4)), ("i", "int64", "plus_times", (12,)),
         ("b", "bool", "or_and", (2, 6)), ("u", "uint16", "max_plus", (12,))]


@st.composite
def history(draw):
    ops = []
    for _ in range(draw(st.integers(1, 12))):
        k = draw(st.integers(0, len(PAGES) - 1))
        name, dt, sr, shape = PAGES[k]
        kind = draw(st.sampled_from(["sparse", "dense", "whole", "batch"]))
        acc = draw(st.booleans())
        if kind == "sparse":
            d = draw(sparse_delta(dt))
            ops.append((name, d[1], dict(index=d[0], accumulate=acc)))
        else:
            vals = draw(values_for(dt, 12)).reshape(shape)
            mask = np.array(draw(st.lists(st.booleans(), min_size=12, max_size=12))).reshape(shape)
            kw = dict(mask=mask, accumulate=acc) if kind != "whole" else dict(accumulate=acc)
            ops.append((name, vals, kw) if kind != "batch" else ("*batch*", (name, vals, kw), None))
    return ops


@SETTINGS
@given(ops=history(), compact_at=st.integers(0, 14))
def test_replay_to_any_epoch(ops, compact_at):
    buf = mmsb.open(None)
    for name, dt, sr, shape in PAGES:
        buf.create_page(name, shape, dtype=dt, semiring=sr)
    buf.create_page("sum", 3, dtype="int64")
    buf.link("sum", "i", np.ones((3, 12), dtype=np.int64))
    recorded = {buf.epoch: {n: buf[n].read() for n in buf}}
    for k, (name, vals, kw) in enumerate(ops):
        with np.errstate(over="ignore"):
            if name == "*batch*":
                with buf.batch():
                    buf.write(vals[0], vals[1], **vals[2])
                    buf.write("i", 1, index=[k % 12], accumulate=True)
            else:
                buf.write(name, vals, **kw)
        if k == compact_at:
            buf.checkpoint()
        recorded[buf.epoch] = {n: buf[n].read() for n in buf}
    for e in range(buf.epoch + 1):
        view = buf.at(e)
        want = recorded.get(e)
        if want is None:                # a schema epoch before the first data write
            continue
        assert list(view) == list(want)
        for n, arr in want.items():
            np.testing.assert_array_equal(view[n].read(), arr, err_msg=f"{n} at epoch {e}")
    np.testing.assert_array_equal(buf["sum"].read(), np.full(3, buf["i"].read().sum()))
    buf.close()


@pytest.mark.parametrize("sr, dt", [(sr, None) for sr in ADD_UFUNC] + [("plus_times", "int64"),
                                                                       ("max_min", "float32"),
                                                                       ("plus_times", "int32")])
def test_semiring_laws_random_values(sr, dt):
    check_semiring(mmsb.semirings.get(sr), dtype=dt, max_examples=30)

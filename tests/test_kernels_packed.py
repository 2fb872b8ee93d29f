"""Packed dense-delta kernels: compiled (mmsb._ext.packed) == numpy twin (mmsb._ref.packed) == a numpy oracle."""
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmsb._ops import OP_ASSIGN, OP_MAX, OP_MIN, OP_PLUS, OP_TIMES
from mmsb._ref import packed as ref

DTYPES = ["int8", "int32", "int64", "uint8", "uint64", "float32", "float64", "bool"]
ORACLE = {OP_PLUS: np.add, OP_TIMES: np.multiply}
SETTINGS = settings(max_examples=60, deadline=None)


def _impls():
    out = [ref]
    if os.environ.get("MMSB_PUREPYTHON") != "1":
        from mmsb._ext import packed as ext
        out.append(ext)
    return out


IMPLS = _impls()


def _kview(a):
    return a.view(np.uint8) if a.dtype == np.bool_ else a


def _oracle(page, mask, vals, op):
    out = page.copy()
    pos = np.flatnonzero(mask)
    for k, p in enumerate(pos):             # element by element: the definition, not a vectorised copy of it
        a, b = out[p], vals[k]
        if op == OP_ASSIGN:
            out[p] = b
        elif op == OP_MIN:
            out[p] = b if b < a else a
        elif op == OP_MAX:
            out[p] = b if b > a else a
        else:
            with np.errstate(over="ignore"):
                out[p] = ORACLE[op](np.array([a]), np.array([b]))[0]
    return out


@st.composite
def cases(draw):
    dt = np.dtype(draw(st.sampled_from(DTYPES)))
    n = draw(st.sampled_from([0, 1, 7, 100, 65536 * 8 + 3]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    mask = rng.random(n) < density
    if dt == np.bool_:
        page, vals = rng.random(n) < 0.5, rng.random(n) < 0.5
        op = draw(st.sampled_from([OP_ASSIGN, OP_MIN, OP_MAX]))
    else:
        page = rng.integers(0, 100, n).astype(dt)
        vals = rng.integers(0, 100, n).astype(dt)
        if dt.kind == "f" and n:
            vals[rng.integers(0, n, 3)] = np.inf
        op = draw(st.sampled_from([OP_ASSIGN, OP_PLUS, OP_TIMES, OP_MIN, OP_MAX]))
    return page, mask, vals, op


@pytest.mark.parametrize("impl", IMPLS, ids=lambda m: m.__name__)
@SETTINGS
@given(cases())
def test_pack_is_boolean_selection(impl, case):
    _, mask, vals, _ = case
    out = np.empty(int(mask.sum()) + 2, dtype=vals.dtype)
    count = impl.pack(_kview(vals), mask.view(np.uint8), _kview(out))
    assert count == int(mask.sum())
    np.testing.assert_array_equal(out[:count], vals[mask])


@pytest.mark.parametrize("impl", IMPLS, ids=lambda m: m.__name__)
@SETTINGS
@given(cases())
def test_merge_packed_matches_the_definition(impl, case):
    page, mask, vals, op = case
    packed = vals[mask]
    want = _oracle(page, mask, packed, op) if page.size <= 1000 else None
    got = page.copy()
    impl.merge_packed(_kview(got), mask.view(np.uint8), _kview(packed), op)
    twin = page.copy()
    ref.merge_packed(_kview(twin), mask.view(np.uint8), _kview(packed), op)
    np.testing.assert_array_equal(got, twin)
    if want is not None:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("impl", IMPLS, ids=lambda m: m.__name__)
def test_lengths_are_checked(impl):
    page = np.zeros(10)
    mask = np.zeros(10, dtype=np.uint8)
    mask[:3] = 1
    with pytest.raises(ValueError):
        impl.merge_packed(page, mask, np.zeros(2), OP_PLUS)          # 3 selected, 2 given
    with pytest.raises(ValueError):
        impl.merge_packed(page, mask[:9], np.zeros(3), OP_PLUS)
    with pytest.raises(ValueError):
        impl.pack(page, mask, np.zeros(2))                           # out too short
    with pytest.raises(ValueError):
        impl.merge_packed(page, mask, np.zeros(3), 99)

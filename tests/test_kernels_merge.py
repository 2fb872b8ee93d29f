"""Delta-merge kernels: compiled (mmsb._ext.merge) == numpy twin (mmsb._ref.merge) == an independent oracle."""
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmsb._ops import OP_ASSIGN, OP_MAX, OP_MIN, OP_PLUS, OP_TIMES
from mmsb._ref import merge as ref

DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32", "float64", "bool"]
OPS = [OP_ASSIGN, OP_PLUS, OP_TIMES, OP_MIN, OP_MAX]
BOOL_OPS = [OP_ASSIGN, OP_MIN, OP_MAX]
ORACLE_UFUNC = {OP_PLUS: np.add, OP_TIMES: np.multiply, OP_MIN: np.minimum, OP_MAX: np.maximum}
SETTINGS = settings(max_examples=40, deadline=None)


PURE = os.environ.get("MMSB_PUREPYTHON") == "1"


def _impls():
    out = [ref]
    if PURE:
        return out
    from mmsb import _kernels
    out.extend(ns.merge for ns in _kernels.compiled_levels().values())   # every SIMD level built and runnable
    return out


IMPLS = _impls()


@pytest.fixture(scope="module")
def ext():
    if PURE:
        pytest.skip("MMSB_PUREPYTHON=1")
    return pytest.importorskip("mmsb._ext.merge")


@st.composite
def cases(draw, max_size=40, max_updates=60):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    op = draw(st.sampled_from(BOOL_OPS if dtype == np.bool_ else OPS))
    size = draw(st.integers(1, max_size))
    n = draw(st.integers(0, max_updates))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    if dtype == np.bool_:
        page, values = rng.random(size) < 0.5, rng.random(n) < 0.5
    elif dtype.kind == "f":
        page = (rng.standard_normal(size) * 4).round(1).astype(dtype)
        values = (rng.standard_normal(n) * 4).round(1).astype(dtype)
    else:
        info = np.iinfo(dtype)
        page = rng.integers(info.min, info.max, size, dtype=dtype, endpoint=True)
        values = rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
    index = rng.integers(0, min(size, draw(st.integers(1, max_size))), n).astype(np.int64)
    return page, index, values, op


def _oracle_scatter(page, index, values, op):
    out = page.copy()
    if op == OP_ASSIGN:
        for i, v in zip(index, values):
            out[i] = v
    else:
        ufunc = ORACLE_UFUNC[op]
        if out.dtype == np.bool_:
            ufunc = {OP_MIN: np.logical_and, OP_MAX: np.logical_or}[op]
        ufunc.at(out, index, values)
    return out


def _eq(a, b):
    np.testing.assert_array_equal(a, b)
    assert a.dtype == b.dtype


@SETTINGS
@given(cases(), st.booleans())
def test_scatter_matches_oracle(case, sort):
    page, index, values, op = case
    if sort:
        order = np.argsort(index, kind="stable")
        index, values = index[order], values[order]
    expected = _oracle_scatter(page, index, values, op)
    for impl in IMPLS:
        got = page.copy()
        idx_before, val_before = index.copy(), values.copy()
        impl.scatter(got, index, values, op, is_sorted=sort)
        _eq(got, expected)
        _eq(index, idx_before)
        _eq(values, val_before)


@SETTINGS
@given(cases(), st.integers(0, 2 ** 32 - 1))
def test_masked_merge_matches_oracle(case, seed):
    page, _, _, op = case
    rng = np.random.default_rng(seed)
    mask = rng.random(page.shape[0]) < 0.5
    values = rng.permutation(page)
    expected = page.copy()
    for i in np.flatnonzero(mask):
        expected[i:i + 1] = _oracle_scatter(page[i:i + 1], np.zeros(1, np.int64), values[i:i + 1], op)
    for impl in IMPLS:
        got = page.copy()
        impl.masked_merge(got, mask, values, op)
        _eq(got, expected)
        got = page.copy()
        impl.masked_merge(got, mask.view(np.uint8), values, op)
        _eq(got, expected)


@SETTINGS
@given(cases())
def test_normalize_then_apply_equals_scatter(case):
    page, index, values, op = case
    expected = _oracle_scatter(page, index, values, op)
    results = []
    for impl in IMPLS:
        idx_before, val_before = index.copy(), values.copy()
        nidx, nval = impl.normalize(index, values, op)
        _eq(index, idx_before)
        _eq(values, val_before)
        assert nidx.dtype == np.int64 and nval.dtype == values.dtype
        assert np.all(np.diff(nidx) > 0)
        np.testing.assert_array_equal(nidx, np.unique(index))
        got = page.copy()
        old, changed = impl.apply_normalized(got, nidx, nval, op)
        if op == OP_ASSIGN:
            _eq(got, expected)
        else:
            # folding duplicates first regroups the op, which is exact for min/max/integers only
            fold_exact = op in (OP_MIN, OP_MAX) or page.dtype.kind != "f"
            if fold_exact:
                _eq(got, expected)
        _eq(old, page[nidx])
        _eq(changed, (got[nidx] != old).astype(np.uint8))
        results.append((nidx, nval, got, old, changed))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            _eq(a, b)


@SETTINGS
@given(cases(), cases())
def test_merge_sparse_equals_sequential(case_a, case_b):
    page, index_a, values_a, op = case_a
    _, index_b, values_b, _ = case_b
    values_b = np.resize(values_a if values_a.size else page, index_b.shape[0]).astype(page.dtype)
    index_b = index_b % page.shape[0]
    outs = []
    for impl in IMPLS:
        ia, va = impl.normalize(index_a, values_a, op)
        ib, vb = impl.normalize(index_b, values_b, op)
        idx, val = impl.merge_sparse(ia, va, ib, vb, op)
        assert np.all(np.diff(idx) > 0)
        np.testing.assert_array_equal(idx, np.union1d(ia, ib))
        seq = page.copy()
        impl.apply_normalized(seq, ia, va, op)
        impl.apply_normalized(seq, ib, vb, op)
        merged = page.copy()
        impl.apply_normalized(merged, idx, val, op)
        if op in (OP_ASSIGN, OP_MIN, OP_MAX) or page.dtype.kind != "f":
            _eq(merged, seq)
        outs.append((idx, val))
    for other in outs[1:]:
        _eq(outs[0][0], other[0])
        _eq(outs[0][1], other[1])


@pytest.mark.parametrize("dtype", ["int8", "int32", "int64", "uint16", "uint64"])
def test_integer_wraps_like_numpy(dtype):
    info = np.iinfo(dtype)
    for op, ufunc in [(OP_PLUS, np.add), (OP_TIMES, np.multiply)]:
        page = np.array([info.max, info.min, info.max], dtype=dtype)
        index = np.array([0, 1, 2, 2], dtype=np.int64)
        values = np.array([info.max, info.max, 3, info.max], dtype=dtype)
        expected = page.copy()
        ufunc.at(expected, index, values)
        for impl in IMPLS:
            got = page.copy()
            impl.scatter(got, index, values, op)
            _eq(got, expected)


def test_nan_handling():
    for impl in IMPLS:
        page = np.array([np.nan, 1.0, 2.0])
        old, changed = impl.apply_normalized(page, np.array([0, 1, 2]), np.array([np.nan, 1.0, 3.0]), OP_ASSIGN)
        assert changed.tolist() == [0, 0, 1]
        page = np.array([1.0, 2.0])
        impl.scatter(page, np.array([0, 1]), np.array([np.nan, 0.5]), OP_MIN)
        assert page.tolist() == [1.0, 0.5]


@pytest.mark.parametrize("impl", IMPLS, ids=lambda m: m.__name__)
def test_validation(impl):
    page = np.zeros(4)
    with pytest.raises(ValueError):
        impl.scatter(page, np.array([0, 1]), np.array([1.0]), OP_PLUS)
    with pytest.raises(ValueError):
        impl.scatter(page, np.array([0]), np.array([1.0]), 7)
    with pytest.raises(ValueError):
        impl.scatter(page, np.array([0]), np.array([1], dtype=np.int64), OP_PLUS)
    with pytest.raises(ValueError):
        impl.masked_merge(page, np.ones(3, bool), np.ones(4), OP_PLUS)
    with pytest.raises(ValueError):
        impl.masked_merge(page, np.ones(4, bool), np.ones(4), 5)
    with pytest.raises(ValueError):
        impl.normalize(np.array([0, 1]), np.array([1.0]), OP_PLUS)
    with pytest.raises(ValueError):
        impl.merge_sparse(np.array([0]), np.array([1.0]), np.array([1, 2]), np.array([1.0]), OP_PLUS)
    with pytest.raises(ValueError):
        impl.apply_normalized(page, np.array([0]), np.array([1.0]), -2)
    assert page.tolist() == [0.0] * 4


@pytest.mark.parametrize("impl", IMPLS, ids=lambda m: m.__name__)
def test_empty(impl):
    page = np.arange(3.0)
    impl.scatter(page, np.empty(0, np.int64), np.empty(0), OP_PLUS)
    impl.masked_merge(np.empty(0), np.empty(0, bool), np.empty(0), OP_MIN)
    idx, val = impl.normalize(np.empty(0, np.int64), np.empty(0, np.float32), OP_MIN)
    assert idx.dtype == np.int64 and val.dtype == np.float32 and idx.size == val.size == 0
    idx, val = impl.merge_sparse(np.empty(0, np.int64), np.empty(0), np.array([2]), np.array([5.0]), OP_PLUS)
    assert idx.tolist() == [2] and val.tolist() == [5.0]
    old, changed = impl.apply_normalized(page, np.empty(0, np.int64), np.empty(0), OP_PLUS)
    assert old.size == 0 and changed.dtype == np.uint8
    assert page.tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", ["float64", "int32", "uint8"])
@pytest.mark.parametrize("sort", [False, True])
def test_large_parallel_paths(ext, op, dtype, sort):
    rng = np.random.default_rng(op + 10)
    size, n = 300_000, 100_000
    page = (rng.random(size) * 100).astype(dtype)
    index = rng.integers(0, size, n)
    if sort:
        index.sort()
    values = (rng.random(n) * 100).astype(dtype)
    expected = page.copy()
    ref.scatter(expected, index, values, op)
    got = page.copy()
    ext.scatter(got, index, values, op, is_sorted=sort)
    _eq(got, expected)
    mask = rng.random(size) < 0.3
    vals = (rng.random(size) * 100).astype(dtype)
    expected, got = page.copy(), page.copy()
    ref.masked_merge(expected, mask, vals, op)
    ext.masked_merge(got, mask, vals, op)
    _eq(got, expected)


@pytest.mark.parametrize("op", [OP_ASSIGN, OP_PLUS, OP_MIN, OP_MAX])
@pytest.mark.parametrize("n", [32_768, 8 * 4096 + 123, 100_003])
def test_large_unsorted_keeps_input_order_bitwise(ext, op, n):
    """The prefetching, two-thread scatter applies duplicates in input order, across blocks and the thread split:
    heavy duplicates, NaN, ±inf and ±0 come out bit for bit as in the sequential reference."""
    rng = np.random.default_rng(n + op)
    size = 70_001                                   # above the parallel threshold; the split falls at ~35_000
    hot = np.r_[np.arange(34_990, 35_010), rng.integers(0, size, 40)]
    index = np.where(rng.random(n) < 0.7, rng.choice(hot, n), rng.integers(0, size, n)).astype(np.int64)
    values = rng.choice(np.array([0.0, -0.0, np.nan, 1.0, -1.0, np.inf, -np.inf, 2.5]), n)
    if op == OP_PLUS:
        values = np.where(np.isnan(values) | np.isinf(values), 0.5, values)
    page = rng.choice(np.array([0.0, -0.0, 1.0, np.nan]), size)
    expected, got = page.copy(), page.copy()
    with np.errstate(invalid="ignore"):             # numpy warns on NaN pages; NaN is a legal value here
        ref.scatter(expected, index, values, op)
    ext.scatter(got, index, values, op)
    if op == OP_PLUS:            # same order of additions here, so even plus is exact
        np.testing.assert_array_equal(got, expected)
    assert got.tobytes() == expected.tobytes()


def test_parallel_scatter_with_a_smaller_team(ext):
    """The unsorted parallel scatter cuts the page into one slice per requested thread; a team smaller than asked
    for (OMP_THREAD_LIMIT) still applies every slice, each exactly once."""
    import subprocess
    import sys

    code = ("import numpy as np\n"
            "from mmsb._ext import merge\n"
            "from mmsb._ref import merge as ref\n"
            "rng = np.random.default_rng(5)\n"
            "page = rng.random(200_000); idx = rng.integers(0, 200_000, 80_000); val = rng.random(80_000)\n"
            "for op in (0, 1, 3):\n"
            "    a, b = page.copy(), page.copy()\n"
            "    merge.scatter(a, idx, val, op); ref.scatter(b, idx, val, op)\n"
            "    assert a.tobytes() == b.tobytes(), op\n"
            "print('ok')\n")
    env = dict(os.environ, OMP_NUM_THREADS="4", OMP_THREAD_LIMIT="1", OMP_DYNAMIC="false")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def _seq(op, a, b):
    """The kernels' rule, one step: min/max keep ``a`` unless ``b`` is strictly better (so ties keep the first)."""
    if op == OP_MIN:
        return b if b < a else a
    return b if b > a else a


@pytest.mark.parametrize("impl", IMPLS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("op", [OP_MIN, OP_MAX])
def test_signed_zero_ties_keep_the_first_value(impl, op):
    """0.0 and -0.0 compare equal: scatter, masked merge, normalize and apply keep the earlier of the two, bit for
    bit as a sequential Python fold with ``b < a ? b : a`` does (numpy's minimum/maximum may pick either)."""
    rng = np.random.default_rng(op)
    for _ in range(200):
        n, m = 6, 10
        page = rng.choice(np.array([0.0, -0.0, 1.0, -1.0]), n)
        index = rng.integers(0, n, m).astype(np.int64)
        values = rng.choice(np.array([0.0, -0.0, 2.0, -2.0, np.nan]), m)
        want = page.copy()
        for i, v in zip(index, values):
            want[i] = _seq(op, want[i], v)
        got = page.copy()
        impl.scatter(got, index, values, op)
        assert got.tobytes() == want.tobytes()

        mask = rng.random(n) < 0.5
        mvals = rng.choice(np.array([0.0, -0.0, np.nan]), n)
        want = np.array([_seq(op, a, b) if k else a for a, b, k in zip(page, mvals, mask)])
        got = page.copy()
        impl.masked_merge(got, mask, mvals, op)
        assert got.tobytes() == want.tobytes()

        idx, vals = impl.normalize(index, values, op)
        folded = {}
        for i, v in zip(index.tolist(), values):
            folded[i] = _seq(op, folded[i], v) if i in folded else v
        assert idx.tolist() == sorted(folded)
        assert vals.tobytes() == np.array([folded[i] for i in sorted(folded)]).tobytes()


def _dense_case(page, seed, nan):
    """Values for every position of ``page`` (some equal to the page's, NaN and signed zeros where asked)."""
    rng = np.random.default_rng(seed)
    values = rng.permutation(page)
    same = rng.random(page.shape[0]) < 0.3
    values[same] = page[same]
    if nan and page.dtype.kind == "f":
        page, values = page.copy(), values.copy()
        page[rng.random(page.shape[0]) < 0.2] = np.nan
        values[rng.random(page.shape[0]) < 0.2] = np.nan
        values[rng.random(page.shape[0]) < 0.1] = -0.0
    return page, values


def _oracle_moved(new, old):
    moved = new != old
    if new.dtype.kind == "f":
        moved &= ~(np.isnan(new) & np.isnan(old))
    return int(np.count_nonzero(moved))


@settings(max_examples=150, deadline=None)
@given(cases(), st.integers(0, 2 ** 32 - 1), st.booleans())
def test_merge_dense_matches_oracle(case, seed, nan):
    page, _, _, op = case
    page, values = _dense_case(page, seed, nan)
    expected = page.copy()
    for i, (a, v) in enumerate(zip(page, values)):
        if op == OP_MIN:                # the update wins only where it is smaller (a NaN update never does)
            expected[i] = v if v < a else a
        elif op == OP_MAX:
            expected[i] = v if v > a else a
        else:
            expected[i:i + 1] = _oracle_scatter(page[i:i + 1], np.zeros(1, np.int64), values[i:i + 1], op)
    for impl in IMPLS:
        got, old = page.copy(), np.empty_like(page)
        count = impl.merge_dense(got, values, op, old)
        _eq(got, expected)
        assert old.tobytes() == page.tobytes()                    # bit for bit (NaN payloads, -0.0)
        assert count == _oracle_moved(expected, page)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", ["float64", "int32", "uint8", "bool"])
def test_merge_dense_large_parallel_path(ext, op, dtype):
    if dtype == "bool" and op not in BOOL_OPS:
        pytest.skip("bool pages take assign, min and max")
    rng = np.random.default_rng(7)
    n = 8 * 65536 + 321                                           # several chunks and a ragged end
    page = (rng.random(n) < 0.5) if dtype == "bool" else rng.integers(0, 100, n).astype(dtype)
    page, values = _dense_case(page, 3, nan=True)
    want, want_old = page.copy(), np.empty_like(page)
    count = ref.merge_dense(want, values, op, want_old)
    got, old = page.copy(), np.empty_like(page)
    assert ext.merge_dense(got, values, op, old) == count
    _eq(got, want)
    assert old.tobytes() == page.tobytes()


@pytest.mark.parametrize("impl", IMPLS, ids=lambda m: m.__name__)
def test_merge_dense_validation(impl):
    page = np.zeros(4)
    for bad, match in (((page, np.zeros(3), OP_ASSIGN, np.zeros(4)), "lengths differ"),
                       ((page, np.zeros(4, np.float32), OP_ASSIGN, np.zeros(4)), "dtype"),
                       ((page, np.zeros(4), OP_ASSIGN, np.zeros(4, np.int64)), "dtype"),
                       ((page, np.zeros(4), 9, np.zeros(4)), "unknown op"),
                       ((page, page[::-1], OP_ASSIGN, np.zeros(4)), "share memory"),
                       ((page, np.zeros(4), OP_ASSIGN, page), "share memory")):
        with pytest.raises(ValueError, match=match):
            impl.merge_dense(*bad)
    ro = np.zeros(4)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        impl.merge_dense(ro, np.zeros(4), OP_ASSIGN, np.zeros(4))
    np.testing.assert_array_equal(page, 0.0)                      # refused calls change nothing
    assert impl.merge_dense(np.zeros(0), np.zeros(0), OP_PLUS, np.zeros(0)) == 0


COPY_DTYPES = DTYPES + ["complex128", "float16", "datetime64[ns]", "V3", [("a", "<i4"), ("b", "<f8")]]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(COPY_DTYPES), st.lists(st.integers(0, 7), min_size=0, max_size=3),
       st.integers(0, 2 ** 32 - 1))
def test_copy_into_copies_every_byte(dtype, shape, seed):
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    raw = np.random.default_rng(seed).integers(0, 256, n * dtype.itemsize, dtype=np.uint8)
    src = raw.view(dtype).reshape(shape)
    for impl in IMPLS:
        dst = np.zeros(shape, dtype)
        impl.copy_into(dst, src)
        assert dst.tobytes() == raw.tobytes()                     # bit for bit: NaN payloads, padding bytes
        assert src.tobytes() == raw.tobytes()


@pytest.mark.parametrize("dtype", ["float64", "int16", "bool"])
def test_copy_into_large_parallel_path(dtype):
    n = (9 * 2 ** 20 + 4097) // np.dtype(dtype).itemsize         # several 1 MiB pieces and a ragged end
    src = np.random.default_rng(5).integers(0, 256, n * np.dtype(dtype).itemsize, dtype=np.uint8).view(dtype)
    src.flags.writeable = False                                   # (a page may be a read-only mapping)
    for impl in IMPLS:
        dst = np.empty_like(src)
        impl.copy_into(dst, src)
        assert dst.tobytes() == src.tobytes()


@pytest.mark.parametrize("impl", IMPLS, ids=lambda m: m.__name__)
def test_copy_into_validation(impl):
    dst = np.zeros(4)
    src = np.arange(4.0)
    for bad, err, match in (((dst, np.zeros(3)), ValueError, "sizes differ"),
                            ((dst, src.astype(np.float32)), ValueError, "dtypes differ"),
                            ((dst, src.reshape(2, 2).T), ValueError, "C-contiguous"),
                            ((np.zeros(8)[::2], src), ValueError, "C-contiguous"),
                            ((dst, dst), ValueError, "share memory"),
                            ((dst, [0.0, 1.0, 2.0, 3.0]), TypeError, "numpy array"),
                            ((np.zeros(2, object), np.zeros(2, object)), TypeError, "Python objects")):
        with pytest.raises(err, match=match):
            impl.copy_into(*bad)
    ro = np.zeros(4)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        impl.copy_into(ro, src)
    np.testing.assert_array_equal(dst, 0.0)                       # refused calls change nothing
    impl.copy_into(np.zeros(0), np.zeros(0))

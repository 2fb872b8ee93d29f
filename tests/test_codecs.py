"""Codecs: compiled kernels == numpy twin byte for byte, round trips, and hostile input -> CorruptionError only."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck
from hypothesis.extra import numpy as hnp

from mmsb._ref import codecs as ref
from mmsb.errors import CorruptionError

try:
    from mmsb._ext import codecs as ext
except ImportError:  # pragma: no cover
    ext = None

IMPLS = [ref] + ([ext] if ext is not None else [])
needs_ext = pytest.mark.skipif(ext is None, reason="compiled codecs not built")
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

sorted_idx = st.one_of(
    st.lists(st.integers(0, 2000), max_size=300),
    st.lists(st.integers(-2**63, 2**63 - 1), max_size=40),
    st.lists(st.integers(0, 3), max_size=300),
).map(lambda xs: np.array(sorted(xs), dtype=np.int64))
masks = st.one_of(
    hnp.arrays(np.bool_, st.integers(0, 600)),
    st.lists(st.tuples(st.booleans(), st.integers(1, 300)), max_size=20).map(
        lambda runs: np.concatenate([np.full(k, v) for v, k in runs]).astype(bool) if runs else np.zeros(0, bool)),
)


@needs_ext
@FAST
@given(sorted_idx)
def test_index_identical_and_round_trip(idx):
    a, b = ext.encode_index(idx), ref.encode_index(idx)
    assert a == b
    for impl in IMPLS:
        np.testing.assert_array_equal(impl.decode_index(a, idx.size), idx)


@needs_ext
@FAST
@given(sorted_idx)
def test_index_identical_for_every_layout_the_caller_may_pass(idx):
    """The compiled encoder takes a contiguous native int64 array as it is and converts anything else: a strided
    view, a 2-d array, another integer dtype, big-endian int64 and a list all give the numpy twin's bytes."""
    want = ref.encode_index(idx)
    wide = np.repeat(idx, 2)
    forms = [idx, wide[::2], idx.reshape(1, -1), idx.astype(">i8"), idx.tolist()]
    if idx.size == 0 or (idx.min() >= -2**31 and idx.max() < 2**31):
        forms.append(idx.astype(np.int32))
    for form in forms:
        assert ext.encode_index(form) == want


@needs_ext
@FAST
@given(masks)
def test_mask_identical_and_round_trip(m):
    assert ext.encode_mask_rle(m) == ref.encode_mask_rle(m)
    assert ext.encode_bitpack(m) == ref.encode_bitpack(m)
    for impl in IMPLS:
        np.testing.assert_array_equal(impl.decode_mask_rle(ref.encode_mask_rle(m), m.size), m)
        np.testing.assert_array_equal(impl.decode_bitpack(ref.encode_bitpack(m), m.size), m)


def test_index_extremes_and_minimal_width():
    for impl in IMPLS:
        idx = np.array([-2**63, 2**63 - 1], dtype=np.int64)
        np.testing.assert_array_equal(impl.decode_index(impl.encode_index(idx), 2), idx)
        enc = impl.encode_index(np.arange(0, 1000, 3))
        assert enc[0] == 2  # gaps of 3 need 2 bits
        with pytest.raises(ValueError):
            impl.encode_index(np.array([3, 1]))
        assert impl.encode_index(np.zeros(0, np.int64)) == b""


def test_large_mask_rle_is_small():
    m = np.zeros(10**6, bool)
    m[1000:2000] = True
    for impl in IMPLS:
        enc = impl.encode_mask_rle(m)
        assert len(enc) < 10
        np.testing.assert_array_equal(impl.decode_mask_rle(enc, m.size), m)


def _decoders(impl):
    return [impl.decode_index, impl.decode_mask_rle, impl.decode_bitpack]


@FAST
@given(st.binary(max_size=64), st.integers(0, 600))
def test_random_bytes_raise_only_corruption(buf, n):
    for impl in IMPLS:
        for dec in _decoders(impl):
            try:
                out = dec(buf, n)
            except CorruptionError:
                continue
            assert len(out) == n


@FAST
@given(sorted_idx, masks, st.data())
def test_mutated_encodings_raise_only_corruption(idx, m, data):
    for enc, n, kind in ((ref.encode_index(idx), idx.size, 0), (ref.encode_mask_rle(m), m.size, 1),
                         (ref.encode_bitpack(m), m.size, 2)):
        if not enc:
            continue
        b = bytearray(enc)
        op = data.draw(st.sampled_from(["flip", "cut", "extend", "n"]))
        if op == "flip":
            i = data.draw(st.integers(0, len(b) - 1))
            b[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            b = b[:data.draw(st.integers(0, len(b) - 1))]
        elif op == "extend":
            b += data.draw(st.binary(min_size=1, max_size=8))
        else:
            n = data.draw(st.integers(0, 2 * n + 10))
        results = []
        for impl in IMPLS:
            try:
                results.append(_decoders(impl)[kind](bytes(b), n))
            except CorruptionError:
                results.append(None)
        # both implementations agree on accept / reject and on the result
        assert (results[0] is None) == (results[-1] is None)
        if results[0] is not None:
            np.testing.assert_array_equal(results[0], results[-1])


def test_negative_count_and_huge_count_rejected_without_allocating():
    for impl in IMPLS:
        for dec in _decoders(impl):
            with pytest.raises(CorruptionError):
                dec(b"\x01\x02", -1)
            with pytest.raises(CorruptionError):
                dec(b"\x01" + b"\x00" * 9, 2**60)


# ------------------------------------------------------------------ mmsb.codecs interface

from mmsb import codecs as C  # noqa: E402

DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
          "float32", "float64", "complex64", "complex128"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_values_round_trip(dtype):
    rng = np.random.default_rng(1)
    for arr in (np.zeros(5000, dtype), (rng.random(3000) * 100).astype(dtype), np.zeros(0, dtype),
                np.ones(7, dtype)):
        cid, data = C.encode_values(arr)
        out = C.decode_values(cid, data, C.dtype_str(arr.dtype), arr.size)
        np.testing.assert_array_equal(out, arr)
        assert out.dtype == arr.dtype
    cid, data = C.encode_values(np.zeros(100000))
    assert cid == C.BLOSC2 and len(data) < 1000


def test_values_inf_nan():
    a = np.array([np.inf, -np.inf, np.nan, 0.0] * 100)
    cid, data = C.encode_values(a)
    np.testing.assert_array_equal(C.decode_values(cid, data, "<f8", a.size), a)


def test_index_and_mask_choose_smallest():
    cid, data = C.encode_index(np.arange(10000))
    assert cid == C.INDEX_DELTA_PACK and len(data) < 2000
    np.testing.assert_array_equal(C.decode_index(cid, data, 10000), np.arange(10000))
    cid, data = C.encode_index(np.array([5, 1, 3]))  # unsorted -> raw
    assert cid == C.RAW
    np.testing.assert_array_equal(C.decode_index(cid, data, 3), [5, 1, 3])
    m = np.zeros(100000, bool)
    m[5] = True
    cid, data = C.encode_mask(m)
    assert cid == C.MASK_RLE
    m = np.random.default_rng(0).random(1000) < 0.5
    cid, data = C.encode_mask(m)
    assert cid == C.MASK_BITPACK
    np.testing.assert_array_equal(C.decode_mask(cid, data, m.size), m)


@FAST
@given(st.integers(0, 6), st.binary(max_size=200), st.integers(0, 300),
       st.sampled_from(["<f8", "|b1", "<i4", "<u2", "<c16"]))
def test_interface_decoders_raise_only_corruption(cid, buf, n, dt):
    for fn in (lambda: C.decode_index(cid, buf, n), lambda: C.decode_mask(cid, buf, n),
               lambda: C.decode_values(cid, buf, dt, n)):
        try:
            fn()
        except CorruptionError:
            pass


@FAST
@given(st.data())
def test_mutated_blosc_raises_only_corruption(data):
    arr = np.cumsum(np.ones(2000))
    cid, enc = C.encode_values(arr)
    assert cid == C.BLOSC2
    b = bytearray(enc)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(b) - 1))
        b[i] ^= data.draw(st.integers(1, 255))
    try:
        out = C.decode_values(cid, bytes(b), "<f8", arr.size)
        assert out.size == arr.size
    except CorruptionError:
        pass


def test_bad_dtype_is_corruption():
    with pytest.raises(CorruptionError):
        C.decode_values(C.RAW, b"", "|O", 0)

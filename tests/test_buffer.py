"""The in-memory buffer: pages, the mapping API, writes, epochs, batches, history, stats and lifecycle."""
import json

import numpy as np
import pytest

import mmsb
from mmsb import errors as E

INTS = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
FLOATS = ["float16", "float32", "float64"]
ALL_DTYPES = INTS + FLOATS + ["bool"]
BUILTINS = ["plus_times", "min_plus", "max_plus", "max_times", "max_min", "min_max", "or_and"]
ZERO = {"plus_times": 0.0, "min_plus": np.inf, "max_plus": -np.inf, "max_times": 0.0, "max_min": -np.inf,
        "min_max": np.inf, "or_and": False}


def expected_scalar(v, dtype):
    """An independent statement of how zeros/ones map onto a dtype (±inf -> integer max/min, bool)."""
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return bool(v > 0) if np.isinf(v) else bool(v)
    if dt.kind in "iu" and np.isinf(v):
        return np.iinfo(dt).max if v > 0 else np.iinfo(dt).min
    return dt.type(v)


def state(buf):
    """Everything a failed call must leave alone."""
    return (buf.epoch, list(buf), {n: buf[n].read() for n in buf}, {n: buf[n].epoch for n in buf},
            [(d.page, d.epoch) for d in buf.log.query()], buf.stats()["log"]["transactions"],
            buf.graph.to_dot())


def assert_same_state(a, b):
    assert a[0] == b[0] and a[1] == b[1] and a[3] == b[3] and a[4] == b[4] and a[5] == b[5] and a[6] == b[6]
    assert a[2].keys() == b[2].keys()
    for k in a[2]:
        np.testing.assert_array_equal(a[2][k], b[2][k])


def check_error(buf, fn, exc, builtin=None, names=()):
    """``fn()`` raises ``exc`` (and ``builtin``), its message names ``names``, and the buffer is unchanged."""
    before = state(buf)
    with pytest.raises(exc) as info:
        fn()
    assert isinstance(info.value, E.MMSBError)
    if builtin is not None:
        assert isinstance(info.value, builtin)
    for n in names:
        assert repr(n) in str(info.value) or n in str(info.value), str(info.value)
    assert_same_state(before, state(buf))
    return info.value


@pytest.fixture
def buf():
    b = mmsb.open(None)
    yield b
    b.close()


# -- create_page -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, expect", [(5, (5,)), ((5,), (5,)), ((2, 3), (2, 3)), ((2, 3, 4), (2, 3, 4)),
                                           ([1, 1, 1, 2], (1, 1, 1, 2)), (np.int64(3), (3,)), (0, (0,))])
def test_create_page_shapes(buf, shape, expect):
    p = buf.create_page("p", shape)
    assert p.shape == expect and p.size == int(np.prod(expect)) and p.ndim == len(expect)
    assert p.read().shape == expect
    assert np.asarray(p).shape == expect
    assert p.dtype == np.dtype("float64") and p.semiring is mmsb.semirings.get("plus_times")
    assert p.name == "p" and p.device == "cpu" and p.epoch == buf.epoch == 1


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("sr", BUILTINS)
def test_create_page_dtypes_default_fill(buf, dtype, sr):
    if sr == "or_and" and dtype != "bool":
        check_error(buf, lambda: buf.create_page("p", 4, dtype=dtype, semiring=sr), E.SemiringError, ValueError,
                    ["p"])
        return
    p = buf.create_page("p", (2, 2), dtype=dtype, semiring=sr)
    assert p.dtype == np.dtype(dtype) and p.semiring.name == sr
    got = p.read()
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, np.full((2, 2), expected_scalar(ZERO[sr], dtype), dtype=dtype))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_create_page_explicit_fill(buf, dtype):
    fill = True if dtype == "bool" else 3
    p = buf.create_page("p", 3, dtype=dtype, fill=fill, semiring="max_min")
    np.testing.assert_array_equal(p.read(), np.full(3, fill, dtype=dtype))


def test_create_page_metadata_json(buf):
    meta = {"unit": "s", "n": 3, "xs": [1.5, None, True], "nested": {"a": "b"}}
    p = buf.create_page("p", 2, metadata=meta)
    assert p.metadata == meta
    json.dumps(p.metadata)
    assert buf.create_page("q", 2).metadata == {}


@pytest.mark.parametrize("kwargs, exc, builtin", [
    (dict(name="", shape=3), E.InvalidDeltaError, ValueError),
    (dict(name="a/b", shape=3), E.InvalidDeltaError, ValueError),
    (dict(name=7, shape=3), E.InvalidDeltaError, ValueError),
    (dict(name="x", shape=-1), E.InvalidDeltaError, ValueError),
    (dict(name="x", shape=(2, -3)), E.InvalidDeltaError, ValueError),
    (dict(name="x", shape=()), E.InvalidDeltaError, ValueError),
    (dict(name="x", shape="abc"), E.InvalidDeltaError, ValueError),
    (dict(name="x", shape=3, dtype="no-such-dtype"), E.InvalidDeltaError, ValueError),
    (dict(name="x", shape=3, dtype="complex128"), E.SemiringError, ValueError),
    (dict(name="x", shape=3, dtype="U4"), E.SemiringError, ValueError),
    (dict(name="x", shape=3, dtype="float64", semiring="or_and"), E.SemiringError, ValueError),
    (dict(name="x", shape=3, semiring="no_such_semiring"), E.SemiringError, ValueError),
    (dict(name="x", shape=3, device="tpu:0"), E.DeviceError, RuntimeError),
    (dict(name="x", shape=3, metadata={"a": object()}), E.InvalidDeltaError, ValueError),
    (dict(name="x", shape=3, metadata={"a": float("nan")}), E.InvalidDeltaError, ValueError),
    (dict(name="x", shape=3, metadata=[1, 2]), E.InvalidDeltaError, ValueError),
    (dict(name="x", shape=3, dtype="int32", fill=1.5), E.InvalidDeltaError, ValueError),
    (dict(name="x", shape=3, fill=[1, 2, 3]), E.InvalidDeltaError, ValueError),
])
def test_create_page_errors(buf, kwargs, exc, builtin):
    buf.create_page("keep", 2)
    name = kwargs["name"]
    names = ["x"] if name == "x" and exc is not E.SemiringError or "dtype" in kwargs else []
    if kwargs.get("semiring") == "no_such_semiring":
        names = ["no_such_semiring"]
    check_error(buf, lambda: buf.create_page(**kwargs), exc, builtin, names)
    assert "x" not in buf


def test_create_page_exists(buf):
    buf.create_page("p", 2)
    check_error(buf, lambda: buf.create_page("p", 3), E.PageExistsError, None, ["p"])


# -- mapping ---------------------------------------------------------------------------------------------------
def test_mapping_api(buf):
    names = ["c", "a", "b"]
    pages = [buf.create_page(n, 2) for n in names]
    assert list(buf) == names and buf.keys() == names and len(buf) == 3
    for n, p in zip(names, pages):
        assert buf[n] is p and n in buf and p in buf
    assert "zz" not in buf and 3 not in buf
    with pytest.raises(E.PageNotFoundError) as info:
        buf["zz"]
    assert isinstance(info.value, KeyError) and "zz" in str(info.value)
    assert [k for k, _ in buf.items()] == names and buf.values() == pages


# -- drop_page -------------------------------------------------------------------------------------------------
def test_drop_page(buf):
    p = buf.create_page("p", 2)
    buf.create_page("q", 2)
    e = buf.drop_page(p)
    assert e == buf.epoch == 3 and list(buf) == ["q"] and "p" not in buf
    check_error(buf, lambda: buf["p"], E.PageNotFoundError, KeyError, ["p"])
    check_error(buf, lambda: buf.drop_page("p"), E.PageNotFoundError, KeyError, ["p"])
    # the name can be reused and the new page starts from its fill
    p2 = buf.create_page("p", 3, fill=2.0)
    np.testing.assert_array_equal(p2.read(), [2.0, 2.0, 2.0])
    buf.drop_page("q")
    assert list(buf) == ["p"]


def test_drop_page_with_dependents(buf):
    src = buf.create_page("src", 3)
    dst = buf.create_page("dst", 3)
    other = buf.create_page("other", 3)
    buf.link(dst, src, np.eye(3))
    buf.derive(other, [dst], lambda x: x * 2)
    buf.write(src, [1.0, 2.0, 3.0])
    err = check_error(buf, lambda: buf.drop_page(src), E.DependencyError, ValueError, ["src"])
    assert "dst" in str(err)
    buf.drop_page(src, cascade=True)
    assert list(buf) == ["dst", "other"]
    assert buf.graph.parents("dst") == [] and not buf.graph.is_derived("dst")
    np.testing.assert_array_equal(dst.read(), [1.0, 2.0, 3.0])   # keeps its values, writable now
    buf.write(dst, [5.0], index=[0])
    np.testing.assert_array_equal(other.read(), [10.0, 4.0, 6.0])
    # dropping a derived page removes the rules into it
    buf.drop_page(other)
    assert buf.graph.children("dst") == []


# -- writes ----------------------------------------------------------------------------------------------------
def test_write_sparse_dense_whole_assign_accumulate(buf):
    p = buf.create_page("p", (2, 3))
    ref = np.zeros(6)
    e = buf.write(p, [1.0, 2.0], index=[4, 1])
    ref[[4, 1]] = [1.0, 2.0]
    assert e == buf.epoch == 2 and p.epoch == 2
    buf.write(p, [1.0, 1.0, 5.0], index=[4, 4, 0], accumulate=True)     # duplicates ⊕-combined
    ref[4] += 2.0
    ref[0] += 5.0
    buf.write(p, [7.0, 8.0, 9.0], index=[2, 2, 2])                       # assign: last occurrence wins
    ref[2] = 9.0
    m = np.array([[True, False, False], [False, False, True]])
    vals = np.arange(6.0).reshape(2, 3) + 100
    buf.write(p, vals, mask=m)
    ref[m.ravel()] = vals.ravel()[m.ravel()]
    buf.write(p, vals, mask=m, accumulate=True)
    ref[m.ravel()] += vals.ravel()[m.ravel()]
    buf.write(p, np.ones((2, 3)), accumulate=True)
    ref += 1
    np.testing.assert_array_equal(p.read(), ref.reshape(2, 3))
    buf.write(p, np.full((2, 3), -1.0))
    np.testing.assert_array_equal(p.read(), np.full((2, 3), -1.0))
    assert buf.epoch == 8


def test_write_scalar_broadcast(buf):
    p = buf.create_page("p", (2, 2), dtype="int32")
    buf.write(p, 4)
    np.testing.assert_array_equal(p.read(), np.full((2, 2), 4))
    buf.write(p, 1, index=[0, 3], accumulate=True)
    np.testing.assert_array_equal(p.read().ravel(), [5, 4, 4, 5])
    buf.write(p, 9, mask=np.array([[False, True], [False, False]]))
    np.testing.assert_array_equal(p.read().ravel(), [5, 9, 4, 5])


@pytest.mark.parametrize("sr", ["min_plus", "max_plus", "max_times", "max_min", "min_max", "plus_times"])
def test_write_accumulate_semiring(buf, sr):
    rng = np.random.default_rng(1)
    p = buf.create_page("p", 10, semiring=sr, fill=0.5)
    ref = np.full(10, 0.5)
    ufunc = {"plus_times": np.add, "max_times": np.maximum}.get(sr, np.minimum if sr.startswith("min") else
                                                                  np.maximum)
    for _ in range(5):
        idx = rng.integers(0, 10, 7)
        vals = rng.integers(0, 8, 7).astype(float) / 4
        buf.write(p, vals, index=idx, accumulate=True)
        ufunc.at(ref, idx, vals)
    np.testing.assert_array_equal(p.read(), ref)


@pytest.mark.parametrize("page_dt, vals, ok", [
    ("float64", np.array([1, 2], dtype=np.int64), True),
    ("float32", np.array([1.0, 2.0], dtype=np.float64), True),
    ("int8", np.array([1, 2], dtype=np.int64), True),
    ("int32", np.array([True, False]), True),
    ("uint8", np.array([1, 2], dtype=np.int16), False),
    ("int32", np.array([1.0, 2.0]), False),
    ("int64", np.array([1, 2], dtype=np.uint64), True),
    ("bool", np.array([1, 0], dtype=np.int8), False),
    ("bool", np.array([1.0, 0.0]), False),
    ("float64", np.array([1 + 1j, 2]), False),
    ("float64", np.array(["a", "b"]), False),
    # Python ints are weakly typed (as in numpy): they go to any integer dtype that holds them (regression)
    ("uint8", [1, 2], True),
    ("uint64", [1, 2 ** 40], True),
    ("int8", [-128, 127], True),
    ("uint8", [1, 300], False),
    ("uint16", [-1, 2], False),
    ("bool", [1, 0], False),
])
def test_write_same_kind_casting(buf, page_dt, vals, ok):
    sr = "or_and" if page_dt == "bool" else "plus_times"
    p = buf.create_page("p", 2, dtype=page_dt, semiring=sr)
    if ok:
        buf.write(p, vals, index=[0, 1])
        np.testing.assert_array_equal(p.read(), np.asarray(vals).astype(page_dt))
        assert p.read().dtype == np.dtype(page_dt)
    else:
        check_error(buf, lambda: buf.write(p, vals, index=[0, 1]), E.InvalidDeltaError, ValueError, ["p"])
        check_error(buf, lambda: buf.write(p, vals), E.InvalidDeltaError, ValueError, ["p"])


@pytest.mark.parametrize("sr", ["min_plus", "max_plus", "max_times", "max_min", "min_max"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nan_rejected_on_idempotent(buf, sr, dtype):
    p = buf.create_page("p", 3, dtype=dtype, semiring=sr)
    for kw in (dict(index=[1]), dict(index=[1], accumulate=True), dict(mask=np.array([False, True, False])),
               {}):
        vals = [np.nan] if "index" in kw else np.array([1.0, np.nan, 2.0])
        err = check_error(buf, lambda: buf.write(p, vals, **kw), E.InvalidDeltaError, ValueError, ["p"])
        assert "NaN" in str(err)
    # NaN outside the mask does not count? It is in the values array but not masked: only masked entries count
    buf.write(p, np.array([1.0, np.nan, 2.0]), mask=np.array([True, False, True]))
    assert np.isnan(p.read()).sum() == 0


def test_nan_allowed_on_plus_times_and_inf_legal(buf):
    p = buf.create_page("p", 3)
    buf.write(p, [np.nan], index=[1])
    assert np.isnan(p.read()[1])
    q = buf.create_page("q", 3, semiring="min_plus", fill=1.0)
    buf.write(q, [np.inf, -np.inf], index=[0, 2])
    np.testing.assert_array_equal(q.read(), [np.inf, 1.0, -np.inf])
    buf.write(q, [-np.inf], index=[1], accumulate=True)
    np.testing.assert_array_equal(q.read(), [np.inf, -np.inf, -np.inf])
    r = buf.create_page("r", 2, semiring="max_plus")
    buf.write(r, [np.inf, -np.inf])
    np.testing.assert_array_equal(r.read(), [np.inf, -np.inf])


@pytest.mark.parametrize("call", [
    lambda b, p: b.write(p, [1.0], index=[6]),
    lambda b, p: b.write(p, [1.0], index=[-1]),
    lambda b, p: b.write(p, [1.0, 2.0], index=[0, 99]),
    lambda b, p: b.write(p, [1.0], index=[1.0]),
    lambda b, p: b.write(p, [1.0], index=np.array([0.5])),
    lambda b, p: b.write(p, [1.0], index=["a"]),
    lambda b, p: b.write(p, [1.0, 2.0], index=[0]),
    lambda b, p: b.write(p, [1.0], index=[0, 1]),
    lambda b, p: b.write(p, np.ones((2, 3)), index=[0, 1]),
    lambda b, p: b.write(p, np.ones((2, 3)), mask=np.ones(6, bool)),
    lambda b, p: b.write(p, np.ones((2, 3)), mask=np.ones((3, 2), bool)),
    lambda b, p: b.write(p, np.ones((2, 3)), mask=np.ones((2, 3), int)),
    lambda b, p: b.write(p, np.ones((2, 3)), mask=np.ones((2, 3), float)),
    lambda b, p: b.write(p, np.ones(6), mask=np.ones((2, 3), bool)),
    lambda b, p: b.write(p, np.ones(6)),
    lambda b, p: b.write(p, np.ones((3, 2))),
    lambda b, p: b.write(p, [1.0], index=[0], mask=np.ones((2, 3), bool)),
    lambda b, p: b.write(p, [object()], index=[0]),
    lambda b, p: b.write(p, [1.0], index=[0], metadata={"x": object()}),
])
def test_write_errors(buf, call):
    p = buf.create_page("p", (2, 3), fill=1.0)
    buf.write(p, [2.0], index=[3])
    check_error(buf, lambda: call(buf, p), E.InvalidDeltaError, ValueError, ["p"])


def test_write_unknown_page(buf):
    buf.create_page("p", 2)
    check_error(buf, lambda: buf.write("nope", 1.0), E.PageNotFoundError, KeyError, ["nope"])
    other = mmsb.open(None)
    q = other.create_page("p", 2)
    check_error(buf, lambda: buf.write(q, 1.0), E.PageNotFoundError, KeyError, ["p"])
    other.close()


def test_empty_sparse_write(buf):
    p = buf.create_page("p", 3, fill=1.0)
    e = buf.write(p, [], index=[])
    assert e == buf.epoch
    np.testing.assert_array_equal(p.read(), [1.0, 1.0, 1.0])


# -- epochs, batch -----------------------------------------------------------------------------------------------
def test_epochs_and_page_epoch(buf):
    assert buf.epoch == 0
    a = buf.create_page("a", 2)
    b = buf.create_page("b", 2)
    assert (a.epoch, b.epoch, buf.epoch) == (1, 2, 2)
    assert buf.write(a, 1.0) == 3
    assert (a.epoch, b.epoch) == (3, 2)
    assert buf.write(b, 1.0, index=[0]) == 4
    assert (a.epoch, b.epoch) == (3, 4)


def test_batch_one_epoch(buf):
    a = buf.create_page("a", 3)
    b = buf.create_page("b", 3, dtype="int64", semiring="max_plus")
    with buf.batch():
        assert buf.write(a, 1.0) is None
        assert buf.write(a, [2.0], index=[1], accumulate=True) is None
        assert buf.write(b, [5, 7], index=[0, 0], accumulate=True) is None
        assert buf.epoch == 2
    assert buf.epoch == 3 and a.epoch == 3 and b.epoch == 3
    np.testing.assert_array_equal(a.read(), [1.0, 3.0, 1.0])
    assert b.read()[0] == 7
    assert {d.epoch for d in buf.log.query()} == {3}
    assert len(list(buf.log.query())) == 3


def test_batch_exception_commits_nothing(buf):
    a = buf.create_page("a", 3)
    buf.write(a, 1.0)
    before = state(buf)
    with pytest.raises(RuntimeError):
        with buf.batch():
            buf.write(a, 5.0)
            raise RuntimeError("boom")
    assert_same_state(before, state(buf))
    with pytest.raises(E.InvalidDeltaError):
        with buf.batch():
            buf.write(a, 5.0)
            buf.write(a, [1.0], index=[10])
    assert_same_state(before, state(buf))


# -- reads -------------------------------------------------------------------------------------------------------
def test_read_and_asarray(buf):
    p = buf.create_page("p", (2, 3), dtype="int16")
    buf.write(p, np.arange(6, dtype=np.int16).reshape(2, 3))
    np.testing.assert_array_equal(p.read([5, 0, 5]), [5, 0, 5])
    arr = np.asarray(p)
    assert arr.dtype == np.int16 and arr.shape == (2, 3)
    np.testing.assert_array_equal(arr, np.arange(6).reshape(2, 3))
    assert np.asarray(p, dtype=np.float64).dtype == np.float64
    arr[0, 0] = 99          # a copy: the page does not change
    assert p.read()[0, 0] == 0
    for bad in ([6], [-1], [0.5]):
        with pytest.raises(E.InvalidDeltaError, match="'p'"):
            p.read(bad)


# -- the log -----------------------------------------------------------------------------------------------------
def test_log_query_deltas(buf):
    a = buf.create_page("a", 4)                                         # 1
    b = buf.create_page("b", 4, semiring="min_plus")                    # 2
    buf.write(a, [1.0, 2.0], index=[3, 1], source="s1")                 # 3
    buf.write(b, [1.0, 2.0, 3.0, 4.0], mask=np.array([1, 0, 1, 1], bool), accumulate=True)   # 4
    buf.write(a, 7.0, source="s2", metadata={"why": "test"})            # 5
    ds = list(buf.log.query())
    assert [d.epoch for d in ds] == [3, 4, 5] and all(isinstance(d, mmsb.Delta) for d in ds)
    d3, d4, d5 = ds
    assert d3.page == "a" and d3.kind == "sparse" and not d3.accumulate and d3.source == "s1" and not d3.derived
    np.testing.assert_array_equal(d3.index, [1, 3])
    np.testing.assert_array_equal(d3.values, [2.0, 1.0])
    assert d3.index.dtype == np.int64 and d3.nnz == 2
    assert d4.kind == "dense" and d4.accumulate and d4.nnz == 3
    idx, vals = d4.sparse()
    np.testing.assert_array_equal(idx, [0, 2, 3])
    np.testing.assert_array_equal(vals, [1.0, 3.0, 4.0])
    assert d5.metadata == {"why": "test"} and d5.nnz == 4
    assert [d.epoch for d in buf.log.query(page="a")] == [3, 5]
    assert [d.epoch for d in buf.log.query(page=b)] == [4]
    assert [d.epoch for d in buf.log.query(since=3)] == [4, 5]
    assert [d.epoch for d in buf.log.query(until=4)] == [3, 4]
    assert [d.epoch for d in buf.log.query(since=3, until=4)] == [4]
    assert [d.epoch for d in buf.log.query(source="s2")] == [5]
    assert [d.epoch for d in buf.log.query(page="b", source="s1")] == []
    assert list(buf.log.query(since=5)) == []
    assert isinstance(buf.log.stats(), dict)


# -- history -----------------------------------------------------------------------------------------------------
def test_at_epochs(buf):
    p = buf.create_page("p", 3)
    snaps = {buf.epoch: p.read()}
    for k in range(4):
        buf.write(p, [float(k)], index=[k % 3], accumulate=k % 2 == 1)
        snaps[buf.epoch] = p.read()
    q = buf.create_page("q", 2)
    for e, want in snaps.items():
        v = buf.at(e)
        assert v.epoch == e and v.readonly and list(v) == ["p"]
        np.testing.assert_array_equal(v["p"].read(), want)
    v0 = buf.at(0)
    assert len(v0) == 0 and v0.epoch == 0
    v = buf.at(buf.epoch)
    assert list(v) == ["p", "q"]
    np.testing.assert_array_equal(v["q"].read(), q.read())
    v = buf.at(2)
    for fn in (lambda: v.write("p", 1.0), lambda: v.create_page("z", 1), lambda: v.drop_page("p"),
               lambda: v.checkpoint(), lambda: v.link("p", "p", np.eye(3))):
        with pytest.raises(E.ReadOnlyError) as info:
            fn()
        assert isinstance(info.value, PermissionError)
    before = state(buf)
    for bad in (-1, buf.epoch + 1, 10 ** 6):
        with pytest.raises(E.HistoryError) as info:
            buf.at(bad)
        assert isinstance(info.value, ValueError)
    assert_same_state(before, state(buf))


def test_checkpoint_and_compact(buf):
    p = buf.create_page("p", 3)
    for k in range(5):
        buf.write(p, [float(k)], index=[k % 3], accumulate=True)
    states = {e: buf.at(e)["p"].read() for e in range(1, buf.epoch + 1)}
    assert buf.checkpoint() == buf.epoch == 6
    for e, want in states.items():                # checkpoint keeps history
        np.testing.assert_array_equal(buf.at(e)["p"].read(), want)
    buf.write(p, 10.0)
    states[7] = p.read()
    horizon = buf.compact(keep=1)
    assert horizon <= 6
    for e in range(horizon, 8):
        np.testing.assert_array_equal(buf.at(e)["p"].read(), states[e])
    with pytest.raises(E.HistoryError):
        buf.at(horizon - 1)
    horizon = buf.compact()
    assert horizon == buf.epoch == 7
    with pytest.raises(E.HistoryError):
        buf.at(6)
    np.testing.assert_array_equal(buf.at(7)["p"].read(), states[7])
    buf.write(p, [1.0], index=[0], accumulate=True)
    np.testing.assert_array_equal(buf.at(8)["p"].read(), p.read())
    assert [d.epoch for d in buf.log.query(since=7)] == [8]


# -- stats, pin, lifecycle ---------------------------------------------------------------------------------------
def test_stats_keys(buf):
    p = buf.create_page("p", 3)
    buf.write(p, 1.0)
    s = buf.stats()
    for key in ("allocator", "log", "propagation", "memory", "device", "transactions"):
        assert isinstance(s[key], dict), key
    for key in ("resident_bytes", "spilled_bytes", "evictions", "reloads"):
        assert key in s["memory"]
    assert s["transactions"]["commits"] == 2
    assert s["kernels"] == mmsb.kernels
    json.dumps(s, default=str)


def test_pin(buf):
    p = buf.create_page("p", 3)
    with p.pin() as pinned:
        assert pinned is p
        buf.write(p, 2.0)
    np.testing.assert_array_equal(p.read(), [2.0, 2.0, 2.0])
    assert p._pins == 0


def test_close_then_use():
    buf = mmsb.open(None)
    p = buf.create_page("p", 3)
    buf.write(p, 1.0)
    buf.close()
    buf.close()                                   # idempotent
    for fn in (lambda: buf["p"], lambda: buf.write("p", 1.0), lambda: buf.create_page("q", 1),
               lambda: p.read(), lambda: np.asarray(p), lambda: buf.at(1), lambda: buf.checkpoint(),
               lambda: buf.drop_page("p"), lambda: buf.batch().__enter__(), lambda: buf.propagate()):
        with pytest.raises(E.ClosedError) as info:
            fn()
        assert isinstance(info.value, ValueError)


def test_context_manager():
    with mmsb.open(None) as buf:
        p = buf.create_page("p", 2)
        buf.write(p, 3.0)
        assert isinstance(buf, mmsb.Buffer)
    with pytest.raises(E.ClosedError):
        buf.write("p", 1.0)
    with pytest.raises(E.ClosedError):
        p.read()


def test_whole_page_writes_share_one_read_only_mask():
    """Whole-page deltas share a read-only all-True mask (no per-delta mask): the log keeps them right, nobody can
    write through it, and pages above 2^20 entries get masks of their own."""
    from mmsb.delta import full_mask, is_full_mask

    buf = mmsb.open(None)
    p = buf.create_page("p", 64)
    q = buf.create_page("q", 64)
    rng = np.random.default_rng(1)
    a, b = rng.random(64), rng.random(64)
    buf.write(p, a)
    buf.write(q, b, accumulate=True)
    d1, d2 = [d for d in buf.log.query() if d.page in ("p", "q")][-2:]
    assert d1.mask is d2.mask and is_full_mask(d1.mask) and d1.mask.all()
    with pytest.raises(ValueError):
        d1.mask[0] = False
    with pytest.raises(ValueError):
        d1.mask.flags.writeable = True                      # a view of a read-only base: stays read-only
    idx, vals = d1.sparse()
    np.testing.assert_array_equal(idx, np.arange(64))
    np.testing.assert_array_equal(vals, a)
    np.testing.assert_array_equal(buf.at(d1.epoch)["p"].read(), a)
    np.testing.assert_array_equal(q.read(), b)                 # accumulate onto zeros (plus_times)
    big = full_mask((1 << 20) + 1)
    assert big.flags.writeable and big.all() and not is_full_mask(big)


@pytest.mark.parametrize("n", [64, (1 << 20) + 3])
def test_whole_page_assign_copy_path_matches_the_kernel(n, monkeypatch):
    """A whole-page assignment that no rule reads takes two copies instead of the per-element kernel: the page,
    its history (at()), a rollback after a failed log write and a page that a rule reads all come out as a
    numpy model says."""
    from mmsb import _kernels

    rng = np.random.default_rng(n)
    calls = []
    real = _kernels.merge.apply_normalized

    def spy(*a):
        calls.append(1)
        return real(*a)

    monkeypatch.setattr(_kernels.merge, "apply_normalized", spy)
    buf = mmsb.open(None)
    p = buf.create_page("p", n, dtype="float32")
    a, b = rng.random(n), rng.integers(0, 1000, n).astype(float)   # b, c: integers, so that the link's
    e1 = buf.write(p, a)                                             # incremental update is exact
    buf.write(p, b)
    assert calls == []                                      # copy path: no kernel call
    np.testing.assert_array_equal(p.read(), b.astype(np.float32))
    np.testing.assert_array_equal(buf.at(e1)["p"].read(), a.astype(np.float32))

    def broken(txn, commit=True):
        raise OSError(5, "EIO")

    monkeypatch.setattr(buf._log, "append", broken)
    with pytest.raises(OSError):
        buf.write(p, rng.random(n))
    monkeypatch.undo()
    np.testing.assert_array_equal(p.read(), b.astype(np.float32))   # rolled back

    monkeypatch.setattr(_kernels.merge, "apply_normalized", spy)
    q = buf.create_page("q", n, dtype="float32")
    import scipy.sparse as sp

    buf.link(q, p, sp.eye(n, format="csr", dtype=np.float32) * 2)   # a rule reads p now: its changed
    c = b.copy()                                                     # positions are computed and pushed
    c[: n // 2] = rng.integers(0, 1000, n // 2)
    e = buf.write(p, c)
    np.testing.assert_array_equal(q.read(), 2 * c.astype(np.float32))
    moved = np.flatnonzero(c.astype(np.float32) != b.astype(np.float32))
    (derived,) = list(buf.log.query(page=q, since=e - 1))
    np.testing.assert_array_equal(derived.index, moved)             # only the rows that changed


def test_whole_page_assignment_commit_matches_the_general_path(tmp_path, monkeypatch):
    """Writes nobody reads take the pipeline's strategies (log first and merge in place; whole-page overwrite
    by two copies): state, epochs, counters and the logged transactions are the same as through the general
    path with the merge kernel, for every write pattern around them."""
    from mmsb import commit
    from mmsb.devices import CPUBackend

    rng = np.random.default_rng(7)
    script = []
    for k in range(40):
        kind = rng.integers(0, 4)
        v = rng.integers(0, 100, 32).astype(float)
        script.append((kind, int(rng.integers(0, 3)), v, rng.integers(0, 32, 5)))

    def run(root, fast):
        calls = []
        real_overwrite, real_blind = CPUBackend.overwrite, commit.CommitPipeline._blind

        def spy_overwrite(self, buf, page, values, undo):
            calls.append(page.name)
            return real_overwrite(self, buf, page, values, undo)

        def spy_blind(self, ops):
            out = real_blind(self, ops)
            if out is not None:
                calls.extend(op.page for op in ops)
            return out

        monkeypatch.setattr(CPUBackend, "overwrite", spy_overwrite)
        monkeypatch.setattr(commit.CommitPipeline, "_blind", spy_blind)
        if not fast:                                    # the pipeline never picks a strategy
            monkeypatch.setattr(commit, "covers_page", lambda mask: False)
            monkeypatch.setattr(commit.CommitPipeline, "_blind", lambda self, ops: None)
        with mmsb.open(root, "w") as buf:
            for i in range(3):
                buf.create_page(f"p{i}", 32)
            buf.create_page("q", 32)
            import scipy.sparse as sp
            buf.link("q", "p2", sp.eye(32, format="csr"))           # p2 is read by a rule: never the short path
            for kind, i, v, idx in script:
                name = f"p{i}"
                if kind == 0:
                    buf.write(name, v)
                elif kind == 1:
                    buf.write(name, v[:5], index=idx)
                elif kind == 2:
                    buf.write(name, v, accumulate=True)
                else:
                    with buf.batch():
                        buf.write(name, v)
                        buf.write("p0", v[::-1].copy())
            state = {n: buf[n].read() for n in buf}
            epochs = {n: buf[n].epoch for n in buf}
            counters = buf.stats()["transactions"]
            txns = [(t.epoch, t.txid, [(d.page, d.values.tolist(), None if d.mask is None else d.mask.tolist(),
                                        None if d.index is None else d.index.tolist(), d.accumulate, d.derived)
                                       for d in t.ops if hasattr(d, "values")]) for t in buf._log.txns()]
        monkeypatch.undo()
        return state, epochs, counters, txns, calls

    fast = run(tmp_path / "fast", True)
    slow = run(tmp_path / "slow", False)
    assert fast[4] and set(fast[4]) <= {"p0", "p1", "p2"}
    for name in fast[0]:
        np.testing.assert_array_equal(fast[0][name], slow[0][name])
    assert fast[1:4] == slow[1:4]
    with mmsb.open(tmp_path / "fast", "r") as again:                  # and it reopens to the same state
        for name, v in fast[0].items():
            np.testing.assert_array_equal(again[name].read(), v)

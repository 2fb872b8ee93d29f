"""create_page on an in-memory buffer: the compact history record, replay, atomicity, shared page/graph nodes."""
import numpy as np
import pytest

import mmsb
from mmsb import errors as E
from mmsb.delta import SchemaOp
from mmsb.log.memory import MemoryLog

NAN_PAYLOAD = np.array([0x7FF8_0000_DEAD_BEEF], dtype=np.uint64).view(np.float64)[0]

# (name, shape, dtype, semiring, fill): NaN with a payload and -0.0 must come back bit for bit
SPECS = [("a", 4, "float64", "plus_times", None), ("b", (2, 3), "int32", "min_plus", None),
         ("c", 3, "float32", "max_plus", -0.0), ("d", 5, "float64", "plus_times", NAN_PAYLOAD),
         ("e", 1, "bool", "or_and", True), ("f", 0, "uint8", "max_min", 7), ("g", 4, "float64", "plus_times", None)]


def expected_fill(dtype, semiring, fill):
    """Independent statement of the fill a page is created with (the semiring's zero on the dtype by default)."""
    dt = np.dtype(dtype)
    if fill is not None:
        return np.array([fill]).astype(dt)
    zero = {"plus_times": 0, "min_plus": np.inf, "max_plus": -np.inf, "or_and": False, "max_min": -np.inf}[semiring]
    if dt.kind in "iu" and np.isinf(zero):
        return np.array([np.iinfo(dt).max if zero > 0 else np.iinfo(dt).min], dtype=dt)
    return np.array([zero]).astype(dt)


def schema_ops(buf):
    return [(t.epoch, op) for t in buf._log.txns() for op in t.ops if isinstance(op, SchemaOp)]


def create_all(buf):
    for name, shape, dtype, sr, fill in SPECS:
        buf.create_page(name, shape, dtype=dtype, semiring=sr, fill=fill)


def test_history_records_each_creation_as_logged():
    with mmsb.open(None) as buf:
        assert type(buf._log) is MemoryLog
        create_all(buf)
        ops = schema_ops(buf)
        assert [e for e, _ in ops] == list(range(1, len(SPECS) + 1))
        for (epoch, op), (name, shape, dtype, sr, fill) in zip(ops, SPECS):
            assert op.kind == "page_created"
            assert op.payload == {"name": name, "shape": list(np.atleast_1d(shape)) if shape != 0 else [0],
                                  "dtype": np.dtype(dtype).str, "semiring": sr, "device": "cpu",
                                  "metadata": None}
            assert list(op.arrays) == ["fill"]
            want = expected_fill(dtype, sr, fill)
            assert op.arrays["fill"].dtype == want.dtype
            assert op.arrays["fill"].tobytes() == want.tobytes()
            assert buf[name].epoch == epoch
        assert buf.stats()["log"]["transactions"] == len(SPECS)
        assert list(buf.log.query()) == []


def test_history_matches_a_durable_store(tmp_path):
    """The in-memory history rebuilds the same schema operations a store's log decodes."""
    with mmsb.open(None) as mem, mmsb.open(str(tmp_path / "s"), mode="w", durability="none") as disk:
        create_all(mem)
        create_all(disk)
        a, b = schema_ops(mem), schema_ops(disk)
        assert len(a) == len(b) == len(SPECS)
        for (ea, oa), (eb, ob) in zip(a, b):
            assert ea == eb and oa.kind == ob.kind and oa.payload == ob.payload
            assert oa.arrays["fill"].dtype == ob.arrays["fill"].dtype
            assert oa.arrays["fill"].tobytes() == ob.arrays["fill"].tobytes()


def test_replay_through_creations_drops_and_writes():
    with mmsb.open(None) as buf:
        snaps = {0: {}}

        def snap():
            snaps[buf.epoch] = {n: buf[n].read() for n in buf}

        for k in range(30):
            buf.create_page(f"p{k}", 3, dtype="float64" if k % 3 else "int64",
                            semiring="plus_times" if k % 2 else "min_plus")
            snap()
            if k % 4 == 0:
                buf.write(f"p{k}", [k + 1], index=[k % 3], accumulate=True)
                snap()
            if k % 5 == 4:
                buf.drop_page(f"p{k - 1}")
                snap()
                buf.create_page(f"p{k - 1}", 2, metadata={"again": k})     # same name, full record
                snap()
        deltas = list(buf.log.query())
        assert [d.page for d in deltas] == [f"p{k}" for k in range(30) if k % 4 == 0]
        assert [d.epoch for d in buf.log.query(since=10, until=30)] == \
            [d.epoch for d in deltas if 10 < d.epoch <= 30]
        for e, want in snaps.items():
            v = buf.at(e)
            assert list(v) == list(want)
            for n, arr in want.items():
                np.testing.assert_array_equal(v[n].read(), arr)
                assert v[n].read().dtype == arr.dtype
        assert buf.at(buf.epoch)["p3"].metadata == {"again": 4}
        assert buf["p0"].metadata == {}


def test_compact_then_replay():
    with mmsb.open(None) as buf:
        for k in range(10):
            buf.create_page(f"p{k}", 2)
        horizon = buf.compact()
        assert horizon == 10
        for k in range(10, 15):
            buf.create_page(f"p{k}", 2, fill=float(k))
        v = buf.at(14)
        assert list(v) == [f"p{k}" for k in range(14)]
        np.testing.assert_array_equal(v["p13"].read(), [13.0, 13.0])
        with pytest.raises(E.HistoryError):
            buf.at(5)


def test_failed_log_append_changes_nothing(monkeypatch):
    with mmsb.open(None) as buf:
        buf.create_page("a", 4)
        alloc_before = buf.stats()["allocator"]["bytes_in_use"]
        epoch, dot = buf.epoch, buf.graph.to_dot()

        def boom(*args, **kwargs):
            raise OSError("log is full")

        monkeypatch.setattr(buf._log, "append_page_created", boom)
        with pytest.raises(OSError):
            buf.create_page("b", 4)
        assert list(buf) == ["a"] and "b" not in buf and buf.epoch == epoch
        assert buf.graph.to_dot() == dot and "b" not in buf.graph
        assert buf.stats()["allocator"]["bytes_in_use"] == alloc_before
        monkeypatch.undo()
        b = buf.create_page("b", 4)
        assert b.epoch == epoch + 1 and buf.graph.names() == ["a", "b"]
        assert [e for e, _ in schema_ops(buf)] == [1, 2]


def test_duplicate_and_closed():
    buf = mmsb.open(None)
    buf.create_page("a", 4)
    with pytest.raises(E.PageExistsError):
        buf.create_page("a", 8)
    assert buf.epoch == 1 and buf["a"].shape == (4,)
    buf.close()
    with pytest.raises(E.ClosedError):
        buf.create_page("b", 4)


def test_pages_and_graph_share_nodes():
    with mmsb.open(None) as buf:
        for n in "abc":
            buf.create_page(n, 3)
        buf.link("c", "a", np.eye(3))
        assert buf.graph.names() == ["a", "b", "c"] and buf.graph.parents("c") == ["a"]
        buf.drop_page("b")
        assert buf.graph.names() == ["a", "c"] and "b" not in buf.graph
        with pytest.raises(E.PageNotFoundError):
            buf.graph.children("b")
        assert buf.graph.topological_order() == ["a", "c"]
        buf.create_page("b", 3)
        assert buf.graph.topological_order() == ["a", "c", "b"]


def test_metadata_default_is_a_dict_that_keeps_changes():
    with mmsb.open(None) as buf:
        p = buf.create_page("a", 2)
        assert p.metadata == {}
        p.metadata["k"] = 1
        assert buf["a"].metadata == {"k": 1}
        q = buf.create_page("b", 2, metadata={"x": [1, 2]})
        assert q.metadata == {"x": [1, 2]}
        (op,) = [op for e, op in schema_ops(buf) if op.payload["name"] == "b"]
        assert op.payload["metadata"] == {"x": [1, 2]}

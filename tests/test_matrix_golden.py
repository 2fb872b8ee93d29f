"""The golden matrix store written by tests/golden/make_golden_matrix.py (matrix_v1: "matrix_created" schema
records in the log and in a checkpoint, matrix deltas over flat positions) must keep opening to exactly the
recorded state, read-only and with mode "a", at every recorded epoch, and must verify. Its raw records must keep
decoding to the operations worked out by hand below, so that a format change cannot silently break old stores."""
import json
import os
import shutil

import numpy as np
import pytest

import mmsb
from mmsb import checkpoint as C
from mmsb.delta import Delta, SchemaOp
from mmsb.log import records as R
from mmsb.log import segment as S

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
NAME = "matrix_v1"
with open(os.path.join(HERE, f"expected_{NAME}.json")) as _fh:
    META = json.load(_fh)
INF = np.inf


@pytest.fixture
def copy(tmp_path):
    root = str(tmp_path / NAME)
    shutil.copytree(os.path.join(HERE, NAME), root)      # never open the committed files themselves
    return root


def dense(buf, name):
    """A matrix page as a dense array, absent entries = its ⊕-zero."""
    M = buf[name]
    zero = {"min_plus": INF, "plus_times": 0, "or_and": False}[M.semiring.name]
    out = np.full(M.shape, zero, dtype=M.dtype)
    c = M.read().tocoo()
    out[c.row, c.col] = c.data
    return out


def check_state(buf, e):
    want = META["states"][str(e)]
    assert sorted(buf) == sorted(want)
    for name, w in want.items():
        p = buf[name]
        if "rows" in w:
            c = p.read().tocoo()
            order = np.lexsort((c.col, c.row))
            assert c.data.dtype.str == w["dtype"], name
            assert c.row[order].tolist() == w["rows"] and c.col[order].tolist() == w["cols"], (name, e)
            assert c.data[order].tolist() == w["vals"], (name, e)
        else:
            a = p.read()
            assert a.dtype.str == w["dtype"], name
            assert a.tolist() == w["values"], (name, e)


def check_derived(buf):
    """The derived pages agree with a numpy recompute from the matrices read back."""
    W, P, Rm = dense(buf, "W"), dense(buf, "P"), dense(buf, "R")
    s, x, b = buf["s"].read(), buf["x"].read(), buf["b"].read()
    lk = (W + s[None, :]).min(axis=1)
    np.testing.assert_array_equal(buf["lk"].read(), lk)
    d = s.copy()
    for _ in range(8):
        d = np.minimum(s, (W + d[None, :]).min(axis=1))
    np.testing.assert_array_equal(buf["d"].read(), d)
    np.testing.assert_array_equal(buf["y"].read(), P.astype(np.int64) @ x.astype(np.int64))
    rb = b.copy()
    for _ in range(6):
        rb = b | (Rm & rb[None, :]).any(axis=1)
    np.testing.assert_array_equal(buf["rb"].read(), rb)


def test_golden_matrix_small():
    size = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(os.path.join(HERE, NAME)) for n in ns)
    assert size < 20_000


def test_golden_matrix_verify(copy):
    rep = mmsb.verify(copy)
    assert rep.ok, rep.problems
    assert rep.checkpoints == [META["checkpoint"]]


@pytest.mark.parametrize("mode", ["r", "a"])
def test_golden_matrix_state_and_history(copy, mode):
    with mmsb.open(copy, mode) as buf:
        assert buf.epoch == META["final_epoch"]
        check_state(buf, META["final_epoch"])
        check_derived(buf)
        for name, m in META["matrices"].items():
            M = buf[name]
            assert M.kind == "matrix" and list(M.shape) == m["shape"] and str(M.dtype) == m["dtype"]
            assert M.semiring.name == m["semiring"] and M.metadata == (m["metadata"] or {})
        for dst, srcs in META["rules"].items():
            assert sorted(buf.graph.parents(dst)) == sorted(srcs)
        for e in META["epochs"]:                         # every recorded epoch, across the checkpoint
            view = buf.at(e)
            check_state(view, e)
            check_derived(view)
        if mode == "a":                                  # the rules still follow matrix deltas
            buf.write("W", [1.5], index=([1], [0]))
            buf.write("R", [True], index=([0], [3]))
            buf.write("P", np.array([2], dtype=np.int32), index=([1], [2]), accumulate=True)
            check_derived(buf)
            np.testing.assert_array_equal(buf["d"].read(), [0, 1.5, 1, 4, 4.25, 7.25])
    rep = mmsb.verify(copy)
    assert rep.ok, rep.problems


def _ops(root, base):
    res = S.scan_segment(os.path.join(root, "log", S.segment_name(base)))
    assert res.error is None
    return [(rec.epoch, R.decode_op(rec.rtype, rec.payload, rec.epoch)) for rec in res.records
            if rec.rtype in (R.DELTA, R.SCHEMA)]


def test_golden_matrix_records_decode_exactly():
    """The "matrix_created" records and the first matrix deltas, decoded from the committed log; every expected
    value below is worked out by hand from make_golden_matrix.py."""
    ops = _ops(os.path.join(HERE, NAME), 1)
    created = {op.payload["name"]: (e, op) for e, op in ops
               if isinstance(op, SchemaOp) and op.kind == "matrix_created"}
    assert sorted(created) == ["P", "R", "W"]
    e, W = created["W"]
    assert e == 4
    assert {k: v for k, v in W.payload.items() if k != "epoch"} == {
        "name": "W", "shape": [6, 6], "dtype": "<f8", "semiring": "min_plus", "metadata": {"unit": "minutes"}}
    assert sorted(W.arrays) == ["keys", "values"]
    assert W.arrays["keys"].dtype == np.int64 and W.arrays["values"].dtype == np.float64
    # entries (1,0)=1, (2,1)=2, (3,0)=4, (3,2)=0.5, (5,4)=3 at flat keys row * 6 + col
    assert W.arrays["keys"].tolist() == [6, 13, 18, 20, 34]
    assert W.arrays["values"].tolist() == [1.0, 2.0, 4.0, 0.5, 3.0]
    _, P = created["P"]
    assert P.payload["dtype"] == "<i4" and P.payload["shape"] == [3, 5] and P.payload["semiring"] == "plus_times"
    assert P.arrays["keys"].tolist() == [0, 2, 6, 9, 13] and P.arrays["values"].dtype == np.int32
    assert P.arrays["values"].tolist() == [1, 2, 3, -1, 4]            # a dense array: its zeros are not stored
    _, Rm = created["R"]
    assert Rm.payload["dtype"] == "|b1" and Rm.payload["semiring"] == "or_and"
    assert Rm.arrays["keys"].tolist() == [4, 9] and Rm.arrays["values"].tolist() == [True, True]
    # matrix deltas: sparse deltas on the matrix page over flat keys (user ones, not derived)
    wd = [(e, op) for e, op in ops if isinstance(op, Delta) and op.page == "W" and not op.derived]
    (e1, d1), (e2, d2) = wd[:2]
    assert e1 == 18 and not d1.accumulate and d1.source == "golden"
    idx, vals = d1.sparse()
    assert idx.tolist() == [20, 27] and vals.tolist() == [INF, 0.25]   # remove (3,2), add (4,3) = 0.25
    assert e2 == 19 and d2.accumulate
    idx, vals = d2.sparse()
    assert idx.tolist() == [6, 33] and vals.tolist() == [0.5, 7.0]     # duplicates ⊕-combined (min)
    # the derived closure delta of epoch 18: d[3] 2.5 -> 4 (0 -> 1 -> 2 -> 3 cut; 0 -> 3 is 4), d[4] inf -> 4.25
    # (3 -> 4 added), d[5] inf -> 7.25 (4 -> 5 of weight 3)
    dd = [op for e, op in ops if isinstance(op, Delta) and op.page == "d" and e == 18]
    assert len(dd) == 1 and dd[0].derived
    idx, vals = dd[0].sparse()
    assert dict(zip(idx.tolist(), vals.tolist())) == {3: 4.0, 4: 4.25, 5: 7.25}


def test_golden_matrix_checkpoint_holds_matrix_records():
    """The checkpoint at epoch 19 holds the matrix pages as "matrix_created" records at the head of its rules,
    with their entries at that epoch (worked out by hand), and no dense page for them."""
    snap = C.load_checkpoint(os.path.join(HERE, NAME), epoch=META["checkpoint"])
    assert sorted(m["name"] for m, _ in snap.pages) == ["b", "d", "lk", "rb", "s", "x", "y"]
    kinds = [op.kind for op in snap.rules]
    assert kinds[:3] == ["matrix_created"] * 3 and set(kinds[3:]) == {"rule_added"}
    W = snap.rules[0]
    assert W.payload["name"] == "W" and W.payload["epoch"] == 19
    # (1,0) 1 -> min(1, 0.5); (3,2) removed; (4,3) = 0.25 added; (5,3) = min(7, 7) added
    assert W.arrays["keys"].tolist() == [6, 13, 18, 27, 33, 34]
    assert W.arrays["values"].tolist() == [0.5, 2.0, 4.0, 0.25, 7.0, 3.0]
    assert [op.payload["name"] for op in snap.rules[:3]] == ["W", "P", "R"]
    rules = {op.payload["dst"]: op.payload for op in snap.rules[3:]}
    assert rules["d"]["matrix_page"] == "W" and rules["d"]["kind"] == "closure"
    assert rules["y"]["matrix_page"] == "P" and rules["y"]["kind"] == "link"


def test_golden_matrix_flipped_byte_in_a_matrix_record_is_detected(copy):
    """A flipped byte inside the "matrix_created" record of W is reported by verify, and reading history through
    it raises CorruptionError (never a wrong matrix)."""
    seg = os.path.join(copy, "log", S.segment_name(1))
    res = S.scan_segment(seg)
    rec = next(r for r in res.records if r.rtype == R.SCHEMA and r.epoch == 4)
    pos = rec.end - 12                                   # inside the payload (its entry values)
    data = bytearray(open(seg, "rb").read())
    data[pos] ^= 0x40
    open(seg, "wb").write(bytes(data))
    rep = mmsb.verify(copy)
    assert not rep.ok and rep.problems
    try:
        buf = mmsb.open(copy, "r")
    except mmsb.errors.CorruptionError:
        return                                           # refusing the store is fine too
    with buf:
        check_state(buf, META["final_epoch"])            # the checkpoint and the tail after it are intact
        with pytest.raises(mmsb.errors.CorruptionError):
            buf.at(14)

"""verify(): a clean store is ok; every kind of damage is a problem; verify never modifies anything."""
import os
import warnings

import numpy as np

from mmsb import checkpoint as C
from mmsb import identity as ID
from mmsb import spill as SP
from mmsb.delta import Delta, SchemaOp, Txn
from mmsb.log import DurableLog
from mmsb.log.segment import iter_segments
from mmsb.manifest import new_manifest
from mmsb.verification import verify


def make_store(root):
    os.makedirs(root, exist_ok=True)
    info = ID.write_store_file(root, version=2)
    man = new_manifest(root, info["store_id"])
    open(os.path.join(root, "LOCK"), "wb").close()
    with DurableLog(root, segment_bytes=1500, manifest=man) as log:
        created = SchemaOp("page_created", {"name": "p", "shape": [40], "dtype": "<f8", "semiring": "plus_times",
                                            "device": "cpu", "metadata": None}, {"fill": np.zeros(1)})
        for e in range(1, 11):
            log.append(Txn(e, e, ([created] if e == 1 else []) + [Delta("p", np.arange(40.0) * e,
                                                                        index=np.arange(40))]))
        log.mark_checkpoint(10)
    path = C.write_checkpoint(root, 10, [({"name": "p"}, np.arange(40.0))], [],
                              extra={"store_id": info["store_id"]})
    man.add_checkpoint(10, C.checkpoint_digest(path))
    os.makedirs(os.path.join(root, "spill"), exist_ok=True)
    SP.write_blob_file(os.path.join(root, "spill", "p.blob"), np.arange(100.0), {"name": "p"})


def snapshot(root):
    out = {}
    for d, _, fs in os.walk(root):
        for f in fs:
            p = os.path.join(d, f)
            out[p] = open(p, "rb").read()
    return out


def test_clean_store_ok(tmp_path):
    root = str(tmp_path / "s")
    make_store(root)
    before = snapshot(root)
    rep = verify(root)
    assert rep.ok, rep.problems
    assert rep.checkpoints == [10] and not rep.torn_tail
    assert rep.records_checked >= 21 and rep.files_checked >= 4
    assert '"ok": true' in rep.to_json()
    assert snapshot(root) == before


def test_problems_detected(tmp_path):
    root = str(tmp_path / "s")
    make_store(root)
    segs = iter_segments(os.path.join(root, "log"))
    last = segs[-1][1]
    data = open(last, "rb").read()
    # torn tail
    open(last, "wb").write(data[:-5])
    rep = verify(root)
    assert not rep.ok and rep.torn_tail
    # non-zero garbage after the last record
    open(last, "wb").write(data + b"\x01\x02\x03")
    assert not verify(root).ok
    # zero padding after the last record is only a note
    open(last, "wb").write(data + b"\0" * 16)
    rep = verify(root)
    assert rep.ok and rep.notes
    open(last, "wb").write(data)
    # a flipped byte in an older segment
    first = segs[0][1]
    fd = open(first, "rb").read()
    b = bytearray(fd)
    b[60] ^= 1
    open(first, "wb").write(b)
    assert not verify(root).ok
    open(first, "wb").write(fd)
    assert verify(root).ok
    # spill, checkpoint, STORE, unknown files
    for rel in ("spill/p.blob", f"checkpoints/{10:020d}.ckpt", "STORE"):
        p = os.path.join(root, rel)
        orig = open(p, "rb").read()
        b = bytearray(orig)
        b[len(b) // 2] ^= 0x40
        open(p, "wb").write(b)
        rep = verify(root)
        assert not rep.ok and any(rel.split("/")[-1] in x for x in rep.problems), rep.problems
        open(p, "wb").write(orig)
    open(os.path.join(root, "junk"), "wb").write(b"x")
    assert not verify(root).ok
    os.unlink(os.path.join(root, "junk"))
    open(os.path.join(root, "log", "junk.seg"), "wb").write(b"x")
    assert not verify(root).ok
    os.unlink(os.path.join(root, "log", "junk.seg"))
    assert verify(root).ok


def test_verify_after_torn_repair(tmp_path):
    root = str(tmp_path / "s")
    make_store(root)
    last = iter_segments(os.path.join(root, "log"))[-1][1]
    data = open(last, "rb").read()
    open(last, "wb").write(data + b"\x07" * 11)
    assert not verify(root).ok
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        DurableLog(root).close()
    assert verify(root).ok


def test_missing_store_dir(tmp_path):
    assert not verify(tmp_path / "nothing").ok
